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
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
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
    if not logs_dir.is_dir():
        return []
    rows: list[dict] = []
    for path in sorted(logs_dir.glob("*.jsonl")):
        rows.extend(read_jsonl(path))
    return rows


CHAT_TASK_LABELS = ("ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee")


def summary_row(evaluation: dict, metric: str) -> float | None:
    """A summary-table cell. Chat tasks are matched by their exact ChatCORE labels, so a base model's
    CORE `arc_easy` (10-shot completion) is never shown as the chat ARC-Easy (letter choice)."""
    if metric == "CORE":
        return evaluation.get("core")
    if metric == "ChatCORE":
        return evaluation.get("chatcore")
    result = evaluation.get("tasks", {}).get(metric)
    return result.get("accuracy") if isinstance(result, dict) else None


def partial_chatcore(evaluation: dict) -> float | None:
    """Mean centered accuracy over the chat tasks that ran, when the full ChatCORE set did not
    (offline CPU runs have no MMLU/GSM8K data): shown in the report marked with an asterisk."""
    tasks = evaluation.get("tasks", {})
    centered = [tasks[t]["centered"] for t in CHAT_TASK_LABELS
                if isinstance(tasks.get(t), dict) and "centered" in tasks[t]]
    return sum(centered) / len(centered) if centered else None


def summary_table(run: Path) -> dict[str, dict[str, float | None]]:
    """metric -> stage -> value, for the stages that have an eval JSON."""
    table: dict[str, dict[str, float | None]] = {m: {} for m in SUMMARY_METRICS}
    for stage in MODEL_STAGES:
        evaluation = read_json(run / "eval" / f"{stage}.json")
        if not evaluation:
            continue
        for metric in SUMMARY_METRICS:
            table[metric][stage] = summary_row(evaluation, metric)
        if table["ChatCORE"][stage] is None and partial_chatcore(evaluation) is not None:
            table["ChatCORE"][stage] = PartialScore(partial_chatcore(evaluation))
    return table


class PartialScore(float):
    """A ChatCORE over a subset of its tasks; printed with an asterisk."""


# ----------------------------------------------------------------------------- what each stage moved


@dataclass
class Effect:
    """One stage's reason to exist, measured before and after it ran."""

    stage: str
    metric: str
    before: float | None
    after: float | None
    higher_is_better: bool = True

    @property
    def moved(self) -> bool | None:
        if self.before is None or self.after is None:
            return None
        return self.after > self.before if self.higher_is_better else self.after < self.before


def _first_last(rows: list[dict], key: str) -> tuple[float | None, float | None]:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return (values[0], values[-1]) if len(values) >= 2 else (None, None)


def _task(run: Path, stage: str, task: str, field: str = "accuracy") -> float | None:
    result = read_json(run / "eval" / f"{stage}.json").get("tasks", {}).get(task)
    return result.get(field) if isinstance(result, dict) else None


def stage_effects(run: Path) -> list[Effect]:
    """The metric each stage exists to move, before -> after (training logs at step 0 / the end,
    or the previous stage's eval next to this one's): pretraining lowers val bpb, mid-training
    teaches the calculator and spelling, SFT moves the chat evals, RL raises pass@1."""
    logs = {stage: stage_log(run, stage) for stage in MODEL_STAGES}
    effects = [Effect("pretrain", "val bpb", *_first_last(logs["base"], "val_bpb"), higher_is_better=False)]
    for key, label in (("chatcore/Arithmetic/tool_calls", "calculator-call rate"),
                       ("chatcore/SpellingBee", "SpellingBee")):
        effects.append(Effect("mid", label, *_first_last(logs["mid"], key)))
    mid_chat, sft_chat = (partial_chatcore(read_json(run / "eval" / f"{s}.json")) for s in ("mid", "sft"))
    effects.append(Effect("sft", "chat evals (mean centered accuracy)", mid_chat, sft_chat))
    effects.append(Effect("rl", "pass@1 (RL log, held-out problems)", *_first_last(logs["rl"], "pass@1")))
    effects.append(Effect("rl", "Arithmetic (greedy, held-out)", _task(run, "sft", "Arithmetic"),
                          _task(run, "rl", "Arithmetic")))
    return [e for e in effects if e.before is not None or e.after is not None]


def effects_table(effects: list[Effect]) -> list[str]:
    lines = ["| stage | metric | before | after | |", "|---|---|---|---|---|"]
    for e in effects:
        verdict = {True: "moved", False: "**did not move**", None: "-"}[e.moved]
        lines.append(f"| {e.stage} | {e.metric} | {_fmt(e.before)} | {_fmt(e.after)} | {verdict} |")
    return lines


# ----------------------------------------------------------------------------- environment


def environment() -> dict[str, str]:
    env = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": str(os.cpu_count()),
    }
    try:
        import torch

        env["torch"] = torch.__version__
        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            env["gpus"] = f"{len(names)}x {names[0]}"
        else:
            env["gpus"] = "none (CPU)"
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    for name in ("transformers", "accelerate", "trl", "datasets", "tokenizers", "lighteval"):
        try:
            module = __import__(name)
            env[name] = getattr(module, "__version__", "?")
        except Exception:  # lighteval may fail to import offline; the report must not
            env[name] = "not importable"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        env["git_commit"] = commit or "unknown"
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = "unknown"
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


def _add_tokens(rows: list[dict]) -> None:
    """Pretraining logs steps; the plan row gives tokens per step, so curves can be drawn over tokens."""
    per_step = next((r["plan"].get("total_batch_size") for r in rows if isinstance(r.get("plan"), dict)), None)
    if not per_step:
        return
    for row in rows:
        if isinstance(row.get("step"), int) and "tokens" not in row:
            row["tokens"] = row["step"] * per_step


def _first_key(rows: list[dict], candidates: tuple[str, ...]) -> str | None:
    for key in candidates:
        if any(isinstance(row.get(key), (int, float)) for row in rows):
            return key
    return None


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
    _add_tokens(logs["base"])
    for stage, name, title, keys in PLOTS:
        rows = logs[stage]
        key = _first_key(rows, keys)
        if key is None:
            continue
        xs, ys, x_label = _series(rows, key)
        if len(ys) < 1:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        ax.plot(xs, ys, marker="o" if len(ys) < 30 else None, linewidth=1.5)
        ax.set_title(f"{stage}: {title}")
        ax.set_xlabel(x_label)
        ax.set_ylabel(key)
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
    facts = {}
    if config:
        facts["model_type"] = config.get("model_type")
        facts["layers"] = config.get("num_hidden_layers")
        facts["width"] = config.get("hidden_size")
        facts["vocab"] = config.get("vocab_size")
    rows = stage_log(run, stage)
    for row in rows:  # pretraining: the derived plan, then the end-of-run totals
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
    env = environment()
    lines = [f"# nanochat_hf report card: `{run.name}`", ""]
    preset = stages.get("preset")
    if preset:
        lines += [f"Preset: **{preset}**", ""]

    lines += ["## Environment", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in env.items()]
    lines.append("")

    tok_eval = read_json(run / "tokenizer" / "tokenizer_eval.json")
    if tok_eval:
        lines += ["## Tokenizer", "", "| | |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in tok_eval.items() if not isinstance(v, (dict, list))]
        lines.append("")

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
        if num_gpus:
            cost = total_seconds / 3600 * num_gpus * gpu_hour_cost
            lines.append(f"Estimated cost: **${cost:,.2f}** ({num_gpus} GPUs at ${gpu_hour_cost:.2f}/GPU-hour)")
        else:
            lines.append("Estimated cost: $0 (CPU run)")
        lines.append("")

    facts = {stage: _model_facts(run, stage) for stage in MODEL_STAGES if (run / stage).is_dir()}
    if facts:
        keys = sorted({k for f in facts.values() for k in f})
        lines += ["## Models", "", "| | " + " | ".join(facts) + " |", "|---|" + "---|" * len(facts)]
        for key in keys:
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
    parser = argparse.ArgumentParser(prog="nanochat-hf report", description="Write report.md and "
                                                                            "plots for a run folder.")
    parser.add_argument("--run", required=True, help="run folder (e.g. runs/tiny)")
    parser.add_argument("--gpu-hour-cost", type=float, default=DEFAULT_GPU_HOUR_COST, help="$ per GPU-hour for the "
                                                                                           "cost line")
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
