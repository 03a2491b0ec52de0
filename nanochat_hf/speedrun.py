"""The speedrun: one command from raw text to a chat model, with a report card.

    nanochat-hf speedrun --preset tiny              # offline, 2-core CPU, ~15 minutes
    nanochat-hf speedrun --preset smoke             # the same path in ~3 minutes (CI)
    nanochat-hf speedrun --preset d24 --num-gpus 8  # 8xH100: GPT-2 tier (see recipes/speedrun.sh)

Stages, in order, each a separate process (the stage modules are the real entry points;
this file only sequences them, as nanochat's `speedrun.sh` does):

    tokenizer -> pretrain -> base eval -> mid -> sft -> rl -> chat eval -> report -> (push)

Every stage writes into the run folder (`--output`, default `runs/<preset>`). A killed speedrun (SIGKILL at
any moment) continues with the same command: `stages.json` (written atomically) marks a stage done only once
it ended well, so a re-run skips those, resumes an unfinished stage from its newest `checkpoint-<step>/` with
its own resume flag and starts one that left none afresh. It also records each stage's status, wall and CPU
time and how it got done (fresh / resumed / completed before), for the report card.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nanochat_hf.checkpoints import latest_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPES_DIR = REPO_ROOT / "recipes"
CHAT_STAGES = ("mid", "sft", "rl")  # each runs nanochat_hf.<sft|rl> with recipes/<tier>/<stage>.yaml
RESUME = ("--resume_from_checkpoint", "latest")  # every training stage's flag (nanochat_hf.checkpoints)
OFFLINE_EVAL_DATA = Path(__file__).resolve().parent / "evaluation" / "data"
TOKENIZER_SHARDS = 8  # the Hub shards (~2B characters) the tokenizer trains on; the rest download behind it


@dataclass
class Preset:
    """What differs between tiers; everything else lives in recipes/<recipe_dir>/*.yaml. The defaults are
    the GPU tiers': nanochat's depths on an 8xH100 node, full evaluation."""

    recipe_dir: str
    gpu: bool = True
    vocab_size: int = 32768
    tokenizer_max_chars: int = 2_000_000_000
    eval_max_per_task: int = -1  # -1 = full evaluation
    # Offline CPU tiers evaluate on the small data shipped in nanochat_hf/evaluation/data/ (the
    # 18 CORE tasks whose data is public here, 100 rows each; ARC in chat format); GPU tiers use the
    # full DCLM bundle and the Hub datasets.
    base_tasks: str = "core,bpb"
    chat_tasks: str = "chatcore"
    chat_max_per_task: int | None = None  # None = eval_max_per_task
    # CORE prompts: "auto" scores as nanochat does (RoPE models see whole prompts, thousands of tokens for
    # few-shot BoolQ); the CPU tiers crop to the 256-token training context, 10x faster, and say so.
    max_context: str = "auto"
    data_shards: int = 0  # GPU tiers: Hub shards to download before pretraining (~55M tokens each)
    overrides: dict[str, list[str]] = field(default_factory=dict)  # stage -> extra flags on top of the recipe


SMOKE_CHAT = ["--max_steps", "10", "--per_device_train_batch_size", "8", "--save_steps", "5",
              "--chatcore_max_new_tokens", "64"]
PRESETS: dict[str, Preset] = {
    # smoke: the whole path with the smallest sizes, for CI (minutes on 2 cores).
    "smoke": Preset(
        recipe_dir="tiny", gpu=False, vocab_size=1024, tokenizer_max_chars=300_000, eval_max_per_task=16,
        base_tasks="arc_easy,copa,piqa,winograd,lambada_openai,bpb", chat_tasks="ARC-Easy,SpellingBee",
        chat_max_per_task=4, max_context="trained",
        overrides={
            # Checkpoints in every training stage, so a killed smoke run resumes as a long one does.
            "pretrain": ["--depth", "2", "--num_iterations", "30", "--eval_every", "-1", "--eval_tokens", "16384",
                         "--save_every", "10"],
            "mid": SMOKE_CHAT, "sft": SMOKE_CHAT,
            "rl": ["--max_steps", "2", "--per_device_train_batch_size", "8", "--save_steps", "1",
                   "--num_generations", "4", "--max_completion_length", "32", "--synthetic_train_size", "64",
                   "--synthetic_test_size", "8", "--eval_examples", "4"],
        },
    ),
    # tiny: the student-laptop run, fully offline on the embedded corpus (~15 minutes on 2 cores).
    # Arithmetic (held-out calculator problems) is what RL moves offline: 100 problems, enough to see +0.10.
    "tiny": Preset(recipe_dir="tiny", gpu=False, vocab_size=4096, eval_max_per_task=50, max_context="trained",
                   chat_tasks="ARC-Easy,ARC-Challenge,SpellingBee,HumanEval,Arithmetic", chat_max_per_task=100),
    "d20": Preset(recipe_dir="d20", data_shards=120),
    "d24": Preset(recipe_dir="d24", data_shards=170),
    "d26": Preset(recipe_dir="d26", data_shards=240),
    "d32": Preset(recipe_dir="d32", data_shards=500),
}


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Stage:
    """One step of the speedrun. A stage with `resume` flags writes `checkpoint-<step>/` folders into
    `output`; when one is there and the stage is not done, the flags go on its last command."""

    name: str
    commands: list[list[str]]
    output: Path | None = None
    resume: tuple[str, ...] = ()
    always: bool = False  # run again even when done (the report, the push)
    background: bool = False  # its last command runs on behind the next stage, which it must end before


def _check_trackers(report_to: str) -> None:
    """A misspelt tracker fails now, in one line, not in pretraining after the tokenizer has trained."""
    from accelerate.utils import LoggerType

    known = ["none", *(t.value for t in LoggerType)]
    unknown = [t for t in (s.strip() for s in report_to.split(",")) if t and t not in known]
    if unknown:
        raise ValueError(f"--report-to {report_to!r}: unknown tracker(s) {unknown}; choose from {', '.join(known)}")


def _die_with_parent(parent: int):
    """For Linux stage processes: the kernel SIGKILLs the stage when the speedrun dies, so a killed
    speedrun never leaves a stage writing into the run folder that its re-run is about to use."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the forked child only calls it

    def arm() -> None:
        prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the speedrun died between fork and prctl
            os._exit(1)

    return arm


class Speedrun:
    def __init__(self, preset_name: str, run_dir: Path, num_gpus: int, data: str | None,
                 push_to_hub: str | None, dry_run: bool, report_to: str | None = None):
        if preset_name not in PRESETS:
            raise ValueError(f"unknown preset {preset_name!r}; choose one of {', '.join(PRESETS)}")
        self.name, self.preset, self.run, self.num_gpus = preset_name, PRESETS[preset_name], run_dir, num_gpus
        # GPU tiers pretrain on the Hub shards (nanochat's default, ClimbMix) unless told otherwise.
        self.data = data or ("climbmix" if self.preset.gpu else None)
        self.push_to_hub, self.dry_run, self.report_to = push_to_hub, dry_run, report_to
        if report_to:
            _check_trackers(report_to)
        self.state_path = run_dir / "stages.json"
        # Offline CPU tiers evaluate on the shipped data; GPU tiers on the DCLM bundle and the Hub datasets.
        self.eval_bundle = None if self.preset.gpu else OFFLINE_EVAL_DATA / "eval_bundle_mini"
        self._check_tasks()
        self.state = self._load_state()

    def _check_tasks(self) -> None:
        """The eval stages' --tasks resolve as `nanochat-hf eval` resolves them: a wrong name fails now, not
        after pretraining."""
        from nanochat_hf.evaluation import core, run

        labels = core.known_labels(self.eval_bundle)
        for spec in (self.preset.base_tasks, self.preset.chat_tasks):
            run.resolve_tasks(spec, labels)

    # ------------------------------------------------------------------ bookkeeping

    def _load_state(self) -> dict:
        try:
            state = json.loads(self.state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            state = {}
        state.update(preset=self.name, num_gpus=self.num_gpus if self.preset.gpu else 0, hardware=self._hardware())
        state.setdefault("stages", {})
        return state

    def _hardware(self) -> str:
        return f"{self.num_gpus} GPU(s)" if self.preset.gpu else f"CPU ({os.cpu_count()} cores)"

    def _save_state(self) -> None:
        """stages.json is the completion marker of every stage: written whole or not at all (a dry run writes none)."""
        if self.dry_run:
            return
        self.run.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(self.state, indent=2))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.state_path)  # atomic: a kill never leaves a torn stages.json

    def recipe(self, name: str) -> str:
        path = RECIPES_DIR / self.preset.recipe_dir / f"{name}.yaml"
        if not path.exists():
            raise FileNotFoundError(f"recipe {path} not found; the speedrun runs from a clone of the "
                                    "repository (pip install -e .)")
        return str(path)

    # ------------------------------------------------------------------ launching

    def python_module(self, module: str, args: list[str], distributed: bool = False) -> list[str]:
        """`accelerate launch` on GPU tiers (one process per GPU), plain python on CPU."""
        if self.preset.gpu and distributed:
            name = "multi_gpu.yaml" if self.num_gpus > 1 else "single_gpu.yaml"
            config = RECIPES_DIR / "accelerate_configs" / name
            return ["accelerate", "launch", "--config_file", str(config), "--num_processes",
                    str(self.num_gpus), "-m", module, *args]
        return [sys.executable, "-m", module, *args]

    def execute(self, stage: Stage):
        """Run `stage` unless it is done; a `background` stage returns the wait that ends it (else None)."""
        info = self.state["stages"].get(stage.name, {})
        if info.get("status") == "done" and not stage.always:
            print(f"[speedrun] {stage.name}: already done, skipping")
            # what an earlier invocation did (its times, the checkpoint it resumed from) stays on record
            self.state["stages"][stage.name] = {**info, "run": "completed before"}
            self._save_state()
            return None
        # the checkpoint the stage's resume flag picks (its partial folders, skipped, are the stage's to report)
        checkpoint = latest_checkpoint(stage.output, lambda msg: None) if stage.resume and stage.output else None
        commands, how = stage.commands, {"run": "fresh"}
        if checkpoint is not None:
            commands = [*commands[:-1], [*commands[-1], *stage.resume]]
            how = {"run": "resumed", "resumed_from": checkpoint.name}
            print(f"[speedrun] {stage.name}: resuming from {checkpoint}")
        t0, cpu0 = time.time(), _children_cpu_seconds()
        # time spent in a failed attempt is kept: its retry adds to it (a killed attempt's is unknown)
        previous = info.get("seconds", 0.0) if info.get("status", "").startswith("failed") else 0.0

        def record(returncode: int) -> None:
            seconds = previous + time.time() - t0
            if returncode != 0:
                self.state["stages"][stage.name] = {"status": f"failed (exit {returncode})", **how, "seconds": seconds}
                self._save_state()
                raise SystemExit(f"[speedrun] stage {stage.name} failed (exit {returncode}); "
                                 "fix it and re-run the same command to continue")
            # CPU seconds next to wall seconds: on a shared machine wall time lies, CPU time much less (a
            # background stage's include the stage it ran behind: children count once waited for).
            self.state["stages"][stage.name] = {"status": "done", **how, "seconds": seconds,
                                                "cpu_seconds": round(_children_cpu_seconds() - cpu0, 1)}
            self._save_state()  # the stage's completion marker

        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        if stage.background and not self.dry_run:  # its place in stages.json: the order the stages run in
            self.state["stages"][stage.name] = {**info, "status": "running", **how}
        for i, cmd in enumerate(commands):
            behind = stage.background and i == len(commands) - 1
            print(f"[speedrun] {stage.name}: $ {shlex.join(cmd)}{' &' if behind else ''}", flush=True)
            if self.dry_run:
                continue
            if behind:
                proc = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent(os.getpid()))
                return lambda: record(proc.wait())
            result = subprocess.run(cmd, env=env, preexec_fn=_die_with_parent(os.getpid()))
            if result.returncode != 0:
                record(result.returncode)
        if not self.dry_run:
            record(0)
        return None

    # ------------------------------------------------------------------ the stages

    def stages(self):
        run, p = self.run, self.preset
        tok_dir = run / "tokenizer"
        data_args = ["--data", self.data] if self.data else []  # the tokenizer and pretraining read alike
        if p.data_shards and self.data in ("climbmix", "fineweb-edu"):
            # The tokenizer's shards first, then the rest in the background while it trains. `data download`
            # resumes by itself (finished, checksummed shards are kept): an interrupted one runs again.
            download = ["download", "--dataset", self.data, "-n"]
            yield Stage("data", [
                self.python_module("nanochat_hf.dataset", [*download, str(min(TOKENIZER_SHARDS, p.data_shards))]),
                self.python_module("nanochat_hf.dataset", [*download, str(p.data_shards), "-w", "8"]),
            ], background=True)
        yield Stage("tokenizer", [
            self.python_module("nanochat_hf.tokenization", ["train", *data_args, "--vocab-size", str(p.vocab_size),
                                                            "--max-chars", str(p.tokenizer_max_chars),
                                                            "--output", str(tok_dir)]),
            self.python_module("nanochat_hf.tokenization", ["eval", str(tok_dir), *data_args,
                                                            "--output", str(tok_dir / "tokenizer_eval.json")]),
        ])
        base = run / "base"
        trackers = ["--report_to", self.report_to] if self.report_to else []
        pretrain = ["--config", self.recipe("pretrain"), "--tokenizer", str(tok_dir), "--output_dir", str(base),
                    *data_args, *trackers, *p.overrides.get("pretrain", [])]
        yield Stage("pretrain", [self.python_module("nanochat_hf.pretrain", pretrain, distributed=True)],
                    output=base, resume=RESUME)
        yield self._eval_stage("base_eval", base, p.base_tasks, "base", p.eval_max_per_task)
        previous = base
        for stage in CHAT_STAGES:
            out = run / stage
            module = "nanochat_hf.rl" if stage == "rl" else "nanochat_hf.sft"
            yield Stage(stage, [
                self.python_module(module, ["--config", self.recipe(stage), "--model_name_or_path", str(previous),
                                            "--output_dir", str(out), *p.overrides.get(stage, [])], distributed=True),
            ], output=out, resume=RESUME)
            previous = out
        for stage in CHAT_STAGES:
            yield self._eval_stage(f"{stage}_eval", run / stage, p.chat_tasks, stage,
                                   p.chat_max_per_task or p.eval_max_per_task)
        yield Stage("report", [self.python_module("nanochat_hf.report", ["--run", str(run)])], always=True)
        if self.push_to_hub:
            final = next((s for s in ("rl", "sft", "mid", "base") if (run / s / "config.json").exists()), "base")
            yield Stage("push", [self.python_module("nanochat_hf.hub", ["--run", str(run), "--stage", final,
                                                                        "--repo-id", self.push_to_hub])], always=True)

    def _eval_stage(self, name: str, model_dir: Path, tasks: str, label: str, max_per_task: int) -> Stage:
        args = ["--model", str(model_dir), "--tasks", tasks, "--output", str(self.run / "eval" / f"{label}.json")]
        if max_per_task > 0:
            args += ["--max-per-task", str(max_per_task)]
        if self.preset.max_context != "auto":
            args += ["--max-context", self.preset.max_context]
        if self.eval_bundle is not None:
            args += ["--bundle", str(self.eval_bundle), "--chat-data", str(OFFLINE_EVAL_DATA / "chat")]
        return Stage(name, [self.python_module("nanochat_hf.evaluation.run", args)])

    def plan(self) -> str:
        """`nanochat-hf plan --preset <preset> --num-gpus N` (H100 for the GPU tiers)."""
        from nanochat_hf import plan

        world = self.num_gpus if self.preset.gpu else 1
        gpu = (plan.detect_gpu() or plan.GPUS["h100"]) if self.preset.gpu else None
        return plan.render(plan.plan_preset(self.name, world), gpu)

    def go(self) -> None:
        print(f"[speedrun] preset {self.name} -> {self.run} ({self._hardware()})")
        if self.dry_run or self.preset.gpu:  # what the run will take, before it spends anything
            print(self.plan())
        self.run.mkdir(parents=True, exist_ok=True)
        self._save_state()
        waiting = None  # a background stage ends before the stage after the one it runs behind
        for stage in self.stages():
            finish = self.execute(stage)
            if waiting is not None:
                waiting()
            waiting = finish
        print(f"[speedrun] done: {self.run / 'report.md'}")
        print(f"[speedrun] chat with it: nanochat-hf chat --model {self.run / 'rl'} -p \"What is 12*7?\"")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nanochat-hf speedrun", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", choices=list(PRESETS), help="tier: tiny/smoke on CPU, d20..d32 "
                        "on 8 GPUs")
    parser.add_argument("--output", default=None, help="run folder (default: runs/<preset>)")
    parser.add_argument("--num-gpus", type=int, default=8, help="GPUs for the GPU tiers (accelerate launch "
                        "--num_processes)")
    parser.add_argument("--data", default=None, help="pretraining text: folder/file of parquet/jsonl/txt or a Hub "
                                                     "dataset (default: embedded corpus on CPU tiers)")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="push the final model to USER/NAME at "
                        "the end")
    parser.add_argument("--report-to", default=None, help="pretraining's trackers (wandb, trackio, tensorboard; "
                        "default: the recipe's)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    args = parser.parse_args(argv)
    try:
        run = Speedrun(args.preset, Path(args.output or f"runs/{args.preset}"), args.num_gpus, args.data,
                       args.push_to_hub, args.dry_run, args.report_to)
        run.go()
    except (FileNotFoundError, ValueError) as err:
        print(f"nanochat-hf speedrun: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
