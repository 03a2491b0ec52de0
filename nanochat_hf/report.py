"""The report card of a run: `report.md` plus PNG plots, as nanochat's `report.md`.

    nanochat-hf report --run runs/tiny [--gpu-hour-cost 3.0]

A run folder is what `nanochat-hf speedrun` (or the stages by hand) leave behind:

    runs/tiny/
      stages.json                 per-stage status, how it ran, wall time (written by speedrun)
      tokenizer/                  tokenizer files + tokenizer_eval.json
      base/  mid/  sft/  rl/      Hub-ready model folders, each with logs/<stage>.jsonl
      eval/<stage>.json           `nanochat-hf eval --output` of each stage
      report.md  plots/*.png      written here

Everything is read defensively: a stage that did not run is simply absent from the card.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

MODEL_STAGES = ("base", "mid", "sft", "rl")
# The summary table of nanochat's report card: metric label -> eval JSON task label.
SUMMARY_METRICS = ("CORE", "ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "ChatCORE")
# nanochat's cost estimate uses an 8xH100 node at ~$24/h, i.e. $3 per GPU-hour.
DEFAULT_GPU_HOUR_COST = 3.0


# ----------------------------------------------------------------------------- reading a run


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL log; a torn last line (killed run) is skipped, not fatal."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a torn or blank line
            continue
    return rows


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def stage_log(run: Path, stage: str) -> list[dict]:
    """The training log of a stage: `<stage>/logs/*.jsonl` (pretrain.jsonl for base)."""
    logs_dir = run / stage / "logs"
    return [row for path in sorted(logs_dir.glob("*.jsonl")) for row in read_jsonl(path)] if logs_dir.is_dir() else []


def summary_table(run: Path) -> dict[str, dict[str, float | None]]:
    """metric -> stage -> value, for the stages that have an eval JSON. Chat tasks are matched by their exact
    ChatCORE labels, so a base model's CORE `arc_easy` (10-shot completion) is never shown as the chat ARC-Easy."""
    from nanochat_hf.evaluation.chat_tasks import CHATCORE_TASKS

    table: dict[str, dict[str, float | None]] = {m: {} for m in SUMMARY_METRICS}
    for stage in MODEL_STAGES:
        evaluation = read_json(run / "eval" / f"{stage}.json")
        if not evaluation:
            continue
        tasks = evaluation.get("tasks", {})
        for metric in SUMMARY_METRICS:
            result = tasks.get(metric)
            table[metric][stage] = result.get("accuracy") if isinstance(result, dict) else None
        table["CORE"][stage], table["ChatCORE"][stage] = evaluation.get("core"), evaluation.get("chatcore")
        # Without the full ChatCORE set (offline CPU runs have no MMLU/GSM8K data): the mean over the chat tasks
        # that ran, printed with an asterisk.
        centered = [tasks[t]["centered"] for t in CHATCORE_TASKS if isinstance(tasks.get(t), dict)
                    and "centered" in tasks[t]]
        if table["ChatCORE"][stage] is None and centered:
            table["ChatCORE"][stage] = PartialScore(sum(centered) / len(centered))
    return table


class PartialScore(float):
    """A ChatCORE over a subset of its tasks; printed with an asterisk."""


# ----------------------------------------------------------------------------- what each stage moved


def proportion_se(p: float | None, n: int | None) -> float | None:
    """Standard error of a share p measured on n problems, sqrt(p(1-p)/n); None when n is unknown."""
    if p is None or not isinstance(n, (int, float)) or n <= 0:
        return None
    return math.sqrt(max(0.0, p * (1.0 - p)) / n)


@dataclass
class Effect:
    """One row of "what each stage moved": a metric before and after a stage ran. role "moves": what the stage
    exists to move; "holds": what it should not lose meanwhile. se_*: standard errors (None: no noise estimate)."""

    stage: str
    metric: str
    before: float | None
    after: float | None
    se_before: float | None = None
    se_after: float | None = None
    higher_is_better: bool = True
    role: str = "moves"

    @property
    def change(self) -> float | None:
        return None if self.before is None or self.after is None else self.after - self.before

    @property
    def band(self) -> float | None:
        """2 SE of the change, before and after taken as independent samples."""
        no_se = self.se_before is None or self.se_after is None
        return None if no_se else 2.0 * math.sqrt(self.se_before ** 2 + self.se_after ** 2)

    @property
    def verdict(self) -> str:
        if self.change is None:
            return "-"
        gain = self.change if self.higher_is_better else -self.change
        band = self.band or 0.0
        if gain < -band:
            return "**worse**"
        if self.role == "holds":
            return "rose" if gain > band else "held"
        if gain > band:
            return "moved"
        return "**did not move**" if gain == 0 else "within noise"


def _log_effect(stage: str, metric: str, rows: list[dict], key: str, n_key: str | None = None,
                **kwargs) -> Effect:
    """A stage's metric from its own log: the first measurement (step 0) against the last (the end); no
    "before" when it was measured at one step only (a run's end row repeats its last eval)."""
    carrying = [r for r in rows if isinstance(r.get(key), (int, float))]
    if not carrying:
        return Effect(stage, metric, None, None, **kwargs)
    once = len(carrying) < 2 or carrying[0].get("step", 0) == carrying[-1].get("step", -1)
    pair = (None if once else carrying[0]), carrying[-1]
    values = [None if r is None else r[key] for r in pair]
    ses = [proportion_se(v, r.get(n_key)) if n_key and r is not None else None for v, r in zip(values, pair)]
    return Effect(stage, metric, *values, *ses, **kwargs)


def _chat_results(run: Path, stage: str) -> dict[str, dict]:
    """The chat-task results of `eval/<stage>.json` (label -> {accuracy, centered, n, ...})."""
    from nanochat_hf.evaluation.chat_tasks import BASELINES

    tasks = read_json(run / "eval" / f"{stage}.json").get("tasks", {})
    return {t: r for t, r in tasks.items() if t in BASELINES and isinstance(r, dict) and "accuracy" in r}


def _eval_effects(run: Path, before: str, after: str, stage: str, role: str) -> list[Effect]:
    """Per chat task that both evals ran: accuracy of `eval/<before>.json` -> `eval/<after>.json`."""
    old, new = _chat_results(run, before), _chat_results(run, after)
    label = " (should hold)" if role == "holds" else ""
    return [Effect(stage, f"{task}{label}", old[task]["accuracy"], new[task]["accuracy"],
                   proportion_se(old[task]["accuracy"], old[task].get("n")),
                   proportion_se(new[task]["accuracy"], new[task].get("n")), role=role)
            for task in new if task in old]


def _mean_centered(results: dict[str, dict], tasks: list[str]) -> tuple[float, float | None]:
    """Mean centered accuracy over `tasks` and its SE (centered = (acc - chance) / (1 - chance))."""
    from nanochat_hf.evaluation.chat_tasks import BASELINES

    mean = sum(results[t]["centered"] for t in tasks) / len(tasks)
    ses = [proportion_se(results[t]["accuracy"], results[t].get("n")) for t in tasks]
    if any(se is None for se in ses):
        return mean, None
    return mean, math.sqrt(sum((se / (1.0 - BASELINES[t])) ** 2 for se, t in zip(ses, tasks))) / len(tasks)


def _chat_mean_effect(run: Path, before: str, after: str, stage: str) -> list[Effect]:
    """The chat evals as one number: mean centered accuracy over the tasks both evals ran."""
    old, new = _chat_results(run, before), _chat_results(run, after)
    tasks = [t for t in new if t in old and "centered" in old[t] and "centered" in new[t]]
    if len(tasks) < 2:
        return []
    (before_mean, before_se), (after_mean, after_se) = _mean_centered(old, tasks), _mean_centered(new, tasks)
    return [Effect(stage, f"chat evals (mean centered, {len(tasks)} tasks)", before_mean, after_mean, before_se,
                   after_se)]


def stage_effects(run: Path) -> list[Effect]:
    """The metric each stage exists to move, before -> after: pretraining lowers val bpb, mid-training teaches
    the calculator and spelling, RL raises held-out pass@1 (each from its log, step 0 and the end); SFT moves
    the chat evals (`eval/mid.json` -> `eval/sft.json`), which RL should hold (`eval/sft.json` -> `eval/rl.json`)."""
    logs = {stage: stage_log(run, stage) for stage in MODEL_STAGES}
    effects = [
        _log_effect("pretrain", "val bpb", logs["base"], "val_bpb", higher_is_better=False),
        _log_effect("mid", "calculator-call rate (held-out Arithmetic)", logs["mid"],
                    "chatcore/Arithmetic/tool_calls", "chatcore/Arithmetic/n"),
        _log_effect("mid", "SpellingBee", logs["mid"], "chatcore/SpellingBee", "chatcore/SpellingBee/n"),
        *_chat_mean_effect(run, "mid", "sft", "sft"),
        *_eval_effects(run, "mid", "sft", "sft", role="moves"),
        _log_effect("rl", "pass@1 (held-out problems)", logs["rl"], "pass@1", "pass@k/n"),
        *_eval_effects(run, "sft", "rl", "rl", role="holds"),
    ]
    return [e for e in effects if e.before is not None or e.after is not None]


def flagged_stages(effects: list[Effect]) -> list[str]:
    """One line per stage that did not move any of its metrics beyond noise, and one per stage that made
    a metric worse beyond noise (one it should hold, or one of several it exists to move)."""
    lines = []
    for stage in dict.fromkeys(e.stage for e in effects):
        rows = [e for e in effects if e.stage == stage and e.verdict != "-"]
        moves = [e for e in rows if e.role == "moves"]
        stuck = bool(moves) and not any(e.verdict == "moved" for e in moves)
        if stuck:
            detail = "; ".join(f"{e.metric}: {e.verdict.strip('*')}" for e in moves)
            lines.append(f"- **{stage} did not move** what it exists to move beyond noise ({detail}).")
        worse = [e.metric for e in rows if e.verdict == "**worse**" and not (stuck and e.role == "moves")]
        if worse:
            lines.append(f"- **{stage} lost** {', '.join(worse)} beyond noise.")
    return lines


NOISE_RULE = ("± 2 SE: twice the standard error of the change, sqrt(p(1-p)/n) for a share p of n problems, "
              "before and after taken as independent (both measure the same problems, so the band errs wide); "
              "beyond it a change counts as moved (or worse), inside it as within noise. val bpb has no band "
              "(the same held-out tokens each time); lower is better.")


def effects_table(effects: list[Effect]) -> list[str]:
    lines = ["| stage | metric | before | after | change (± 2 SE) | verdict |", "|---|---|---|---|---|---|"]
    for e in effects:
        change = "-" if e.change is None else f"{e.change:+.4f}" + ("" if e.band is None else f" ± {e.band:.4f}")
        lines.append(f"| {e.stage} | {e.metric} | {_fmt(e.before)} | {_fmt(e.after)} | {change} | {e.verdict} |")
    flags = flagged_stages(effects)
    return [*lines, "", *(flags or ["Every stage moved what it exists to move beyond noise."]), "", NOISE_RULE]


# ----------------------------------------------------------------------------- environment


def git_commit() -> str | None:
    """The short commit of this checkout, None outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, str]:
    env = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S"), "platform": platform.platform(),
           "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
           "cpu_count": str(os.cpu_count())}
    import torch

    cuda = torch.cuda.is_available()
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    env["torch"], env["gpus"] = torch.__version__, f"{len(names)}x {names[0]}" if names else "none (CPU)"
    for name in ("transformers", "accelerate", "trl", "datasets", "tokenizers", "lighteval"):
        try:
            env[name] = getattr(__import__(name), "__version__", "?")
        except Exception:  # lighteval may fail to import offline; the report must not
            env[name] = "not importable"
    env["git_commit"] = git_commit() or "unknown"
    return env


# ----------------------------------------------------------------------------- plots


def _series(rows: list[dict], key: str, x_keys=("tokens", "step", "global_step")) -> tuple[list, list, str]:
    """(x, y, x_label) for rows that carry `key`, x being the first available of x_keys."""
    xs, ys, label = [], [], "step"
    for row in rows:
        value = row.get(key)
        if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
            continue
        for x_key in x_keys:
            if isinstance(row.get(x_key), (int, float)):
                xs.append(row[x_key])
                label = x_key
                break
        else:
            xs.append(len(xs))
        ys.append(value)
    return xs, ys, label


# Which plot shows which log keys (each log names things its own way; the first found wins).
PLOTS = [
    ("base", "loss", "pretraining loss", ("train_loss", "loss")),
    ("base", "val_bpb", "validation bits per byte", ("val_bpb", "bpb")),
    ("base", "lr", "learning rate multiplier", ("lrm", "lr_multiplier", "lr", "learning_rate")),
    ("base", "tokens_per_sec", "training throughput (tokens/s)", ("tokens_per_sec", "tok_per_sec", "tokens/s")),
    ("mid", "loss", "mid-training loss", ("loss", "train_loss", "eval_loss")),
    ("sft", "loss", "SFT loss", ("loss", "train_loss", "eval_loss")),
    ("rl", "reward", "RL mean reward", ("reward", "mean_reward", "rewards/mean")),
]


def write_plots(run: Path, out_dir: Path) -> list[tuple[str, Path]]:
    """One PNG per available curve; returns (title, path) of those written."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers / CI
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    logs = {stage: stage_log(run, stage) for stage in MODEL_STAGES}
    # pretraining logs steps; its plan row gives tokens per step, so its curves can be drawn over tokens
    per_step = next((r["plan"].get("total_batch_size") for r in logs["base"] if isinstance(r.get("plan"), dict)), None)
    for row in logs["base"] if per_step else []:
        if isinstance(row.get("step"), int) and "tokens" not in row:
            row["tokens"] = row["step"] * per_step
    for stage, name, title, keys in PLOTS:
        rows = logs[stage]
        key = next((k for k in keys if any(isinstance(row.get(k), (int, float)) for row in rows)), None)
        if key is None:
            continue
        xs, ys, x_label = _series(rows, key)
        if not ys:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        ax.plot(xs, ys, marker="o" if len(ys) < 30 else None, linewidth=1.5)
        ax.set(title=f"{stage}: {title}", xlabel=x_label, ylabel=key)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{stage}_{name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append((f"{stage}: {title}", path))
    return written


# ----------------------------------------------------------------------------- the card


def _fmt(value, digits=4) -> str:
    if value is None:
        return "-"
    if isinstance(value, PartialScore):
        return f"{value:.{digits}f}*"
    if isinstance(value, float):
        return f"{value:.3e}" if abs(value) >= 1e6 else f"{value:.{digits}f}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _how_run(info: dict) -> str:
    """The stage table's `run` cell: fresh, resumed from a checkpoint, or completed by an earlier invocation."""
    how, source = info.get("run"), info.get("resumed_from")
    if how == "resumed":
        return f"resumed from {source}"
    if how == "completed before" and source:
        return f"completed before (resumed from {source})"
    return how or "-"


def _model_facts(run: Path, stage: str) -> dict:
    """Parameters and FLOPs/token from a stage's model config (no weights loaded)."""
    config = read_json(run / stage / "config.json")
    names = {"model_type": "model_type", "layers": "num_hidden_layers", "width": "hidden_size", "vocab": "vocab_size"}
    facts = {fact: config.get(key) for fact, key in names.items()} if config else {}
    for row in stage_log(run, stage):  # pretraining: the derived plan, then the end-of-run totals
        if isinstance(row.get("plan"), dict):
            for key in ("num_params", "num_scaling_params", "flops_per_token", "total_batch_size",
                        "num_iterations", "total_tokens"):
                if key in row["plan"]:
                    facts[key] = row["plan"][key]
        for key in ("total_training_time", "total_training_flops", "min_val_bpb"):
            if isinstance(row.get(key), (int, float)):
                facts[key] = row[key]
    return facts


def build_report(run: Path, gpu_hour_cost: float = DEFAULT_GPU_HOUR_COST) -> str:
    stages = read_json(run / "stages.json")
    lines = [f"# nanochat_hf report card: `{run.name}`", ""]
    if stages.get("preset"):
        lines += [f"Preset: **{stages['preset']}**", ""]
    lines += ["## Environment", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in environment().items()), ""]

    tok_eval = read_json(run / "tokenizer" / "tokenizer_eval.json")
    if tok_eval:
        lines += ["## Tokenizer", "", "| | |", "|---|---|",
                  *(f"| {k} | {_fmt(v)} |" for k, v in tok_eval.items() if not isinstance(v, (dict, list))), ""]

    timings = stages.get("stages", {})
    total_seconds = sum(s.get("seconds", 0.0) for s in timings.values() if isinstance(s, dict))
    if timings:
        lines += ["## Stages", "", "| stage | status | run | wall time | CPU time |", "|---|---|---|---|---|"]
        for name, info in timings.items():
            cells = [name, info.get("status", "?"), _how_run(info), _duration(info.get("seconds")),
                     _duration(info.get("cpu_seconds"))]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"Total wall time: **{_duration(total_seconds)}**"]
        num_gpus = int(stages.get("num_gpus", 0) or 0)
        cost = total_seconds / 3600 * num_gpus * gpu_hour_cost
        lines += [f"Estimated cost: **${cost:,.2f}** ({num_gpus} GPUs at ${gpu_hour_cost:.2f}/GPU-hour)" if num_gpus
                  else "Estimated cost: $0 (CPU run)", ""]

    facts = {stage: _model_facts(run, stage) for stage in MODEL_STAGES if (run / stage).is_dir()}
    if facts:
        lines += ["## Models", "", "| | " + " | ".join(facts) + " |", "|---|" + "---|" * len(facts)]
        for key in sorted({k for f in facts.values() for k in f}):
            lines.append(f"| {key} | " + " | ".join(_fmt(facts[s].get(key)) for s in facts) + " |")
        lines.append("")

    table = summary_table(run)
    present = [s for s in MODEL_STAGES if any(s in table[m] for m in SUMMARY_METRICS)]
    lines += ["## Summary", ""]
    if present:
        lines += ["| Metric | " + " | ".join(s.upper() for s in present) + " |", "|---|" + "---|" * len(present)]
        for metric in SUMMARY_METRICS:
            lines.append(f"| {metric} | " + " | ".join(_fmt(table[metric].get(s)) for s in present) + " |")
        if any(isinstance(v, PartialScore) for v in table["ChatCORE"].values()):
            lines += ["", "\\* ChatCORE over the chat tasks that ran (the full set needs MMLU and GSM8K data, "
                          "not available offline)."]
    else:
        lines.append("No evaluation results found (expected `eval/<stage>.json`).")
    lines.append("")

    effects = stage_effects(run)
    if effects:
        lines += ["## What each stage moved", "", *effects_table(effects), ""]

    plots = write_plots(run, run / "plots")
    if plots:
        lines += ["## Plots", ""]
        for title, path in plots:
            lines += [f"![{title}](plots/{path.name})", ""]
    return "\n".join(lines)


def write_report(run: str | Path, gpu_hour_cost: float = DEFAULT_GPU_HOUR_COST) -> Path:
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist; pass the --output of `nanochat-hf speedrun`")
    path = run / "report.md"
    path.write_text(build_report(run, gpu_hour_cost))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nanochat-hf report",
                                     description="Write report.md and plots for a run folder.")
    parser.add_argument("--run", required=True, help="run folder (e.g. runs/tiny)")
    parser.add_argument("--gpu-hour-cost", type=float, default=DEFAULT_GPU_HOUR_COST,
                        help="$ per GPU-hour for the cost line")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.run, args.gpu_hour_cost)
    except FileNotFoundError as err:
        print(f"nanochat-hf report: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
