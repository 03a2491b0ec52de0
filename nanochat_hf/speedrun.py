"""The speedrun: one command from raw text to a chat model, with a report card.

    nanochat-hf speedrun --preset tiny              # offline, 2-core CPU, ~15 minutes
    nanochat-hf speedrun --preset smoke             # the same path in ~3 minutes (CI)
    nanochat-hf speedrun --preset d24 --num-gpus 8  # 8xH100: GPT-2 tier (see recipes/speedrun.sh)

Stages, in order, each a separate process (the stage modules are the real entry points;
this file only sequences them, as nanochat's `speedrun.sh` does):

    tokenizer -> pretrain -> base eval -> mid -> sft -> rl -> chat eval -> report -> (push)

Every stage writes into the run folder (`--output`, default `runs/<preset>`), and a stage
whose output is complete is skipped on re-run, so a killed speedrun continues where it
stopped (pretraining itself resumes from its last checkpoint). `stages.json` records the
status and wall time of each stage for the report card.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPES_DIR = REPO_ROOT / "recipes"
CHAT_STAGES = ("mid", "sft", "rl")
OFFLINE_EVAL_DATA = Path(__file__).resolve().parent / "evaluation" / "data"


@dataclass
class Preset:
    """What differs between tiers; everything else lives in recipes/<recipe_dir>/*.yaml."""

    recipe_dir: str
    gpu: bool
    vocab_size: int
    tokenizer_max_chars: int
    eval_max_per_task: int  # -1 = full evaluation
    # Offline CPU tiers evaluate on the small data shipped in nanochat_hf/evaluation/data/ (the
    # 18 CORE tasks whose data is public here, 100 rows each; ARC in chat format); GPU tiers use the
    # full DCLM bundle and the Hub datasets.
    base_tasks: str = "core,bpb"
    chat_tasks: str = "chatcore"
    chat_max_per_task: int | None = None  # None = eval_max_per_task
    data_shards: int = 0  # GPU tiers: Hub shards to download before pretraining (~55M tokens each)
    overrides: dict[str, list[str]] = field(default_factory=dict)  # stage -> extra flags on top of the recipe


PRESETS: dict[str, Preset] = {
    # smoke: the whole path with the smallest sizes, for CI (minutes on 2 cores).
    "smoke": Preset(
        recipe_dir="tiny", gpu=False, vocab_size=1024, tokenizer_max_chars=300_000, eval_max_per_task=16,
        base_tasks="arc_easy,copa,piqa,winograd,lambada_openai,bpb", chat_tasks="ARC-Easy,SpellingBee", chat_max_per_task=4,
        overrides={
            "pretrain": ["--depth", "2", "--num_iterations", "30", "--eval_every", "-1", "--eval_tokens", "16384"],
            "mid": ["--max_steps", "10", "--per_device_train_batch_size", "8"],
            "sft": ["--max_steps", "10", "--per_device_train_batch_size", "8"],
            "rl": ["--max_steps", "2", "--per_device_train_batch_size", "8", "--num_generations", "4",
                   "--max_completion_length", "32", "--synthetic_train_size", "64", "--synthetic_test_size", "8",
                   "--eval_examples", "4"],
        },
    ),
    # tiny: the student-laptop run, fully offline on the embedded corpus (~15 minutes on 2 cores).
    # Arithmetic (held-out calculator problems) is what RL moves offline: 100 problems, enough to see +0.10.
    "tiny": Preset(recipe_dir="tiny", gpu=False, vocab_size=4096, tokenizer_max_chars=2_000_000_000, eval_max_per_task=50,
                   chat_tasks="ARC-Easy,ARC-Challenge,SpellingBee,HumanEval,Arithmetic", chat_max_per_task=100),
    # GPU tiers: nanochat's depths on an 8xH100 node; recipes carry the sizes and budgets.
    "d20": Preset(recipe_dir="d20", gpu=True, vocab_size=32768, tokenizer_max_chars=2_000_000_000, eval_max_per_task=-1, data_shards=120),
    "d24": Preset(recipe_dir="d24", gpu=True, vocab_size=32768, tokenizer_max_chars=2_000_000_000, eval_max_per_task=-1, data_shards=170),
    "d26": Preset(recipe_dir="d26", gpu=True, vocab_size=32768, tokenizer_max_chars=2_000_000_000, eval_max_per_task=-1, data_shards=240),
    "d32": Preset(recipe_dir="d32", gpu=True, vocab_size=32768, tokenizer_max_chars=2_000_000_000, eval_max_per_task=-1, data_shards=500),
}


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Speedrun:
    def __init__(self, preset_name: str, run_dir: Path, num_gpus: int, data: str | None, push_to_hub: str | None, dry_run: bool):
        if preset_name not in PRESETS:
            raise ValueError(f"unknown preset {preset_name!r}; choose one of {', '.join(PRESETS)}")
        self.name = preset_name
        self.preset = PRESETS[preset_name]
        self.run = run_dir
        self.num_gpus = num_gpus
        # GPU tiers pretrain on the Hub shards (nanochat's default, ClimbMix) unless told otherwise.
        self.data = data or ("climbmix" if self.preset.gpu else None)
        self.push_to_hub = push_to_hub
        self.dry_run = dry_run
        self.state_path = run_dir / "stages.json"
        self.state = self._load_state()

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
        if self.preset.gpu:
            return f"{self.num_gpus} GPU(s)"
        return f"CPU ({os.cpu_count()} cores)"

    def _save_state(self) -> None:
        self.run.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2))
        tmp.replace(self.state_path)  # atomic: a kill never leaves a torn stages.json

    def recipe(self, name: str) -> str:
        path = RECIPES_DIR / self.preset.recipe_dir / f"{name}.yaml"
        if not path.exists():
            raise FileNotFoundError(f"recipe {path} not found; the speedrun runs from a clone of the repository (pip install -e .)")
        return str(path)

    # ------------------------------------------------------------------ launching

    def python_module(self, module: str, args: list[str], distributed: bool = False) -> list[str]:
        """`accelerate launch` on GPU tiers (one process per GPU), plain python on CPU."""
        if self.preset.gpu and distributed:
            config = RECIPES_DIR / "accelerate_configs" / ("multi_gpu.yaml" if self.num_gpus > 1 else "single_gpu.yaml")
            return ["accelerate", "launch", "--config_file", str(config), "--num_processes", str(self.num_gpus), "-m", module, *args]
        return [sys.executable, "-m", module, *args]

    def execute(self, stage: str, commands: list[list[str]], done) -> None:
        info = self.state["stages"].get(stage, {})
        if done():
            print(f"[speedrun] {stage}: already done, skipping")
            if info.get("status") != "done":
                self.state["stages"][stage] = {"status": "done", "seconds": info.get("seconds", 0.0)}
                self._save_state()
            return
        t0, cpu0 = time.time(), _children_cpu_seconds()
        for cmd in commands:
            print(f"[speedrun] {stage}: $ {shlex.join(cmd)}", flush=True)
            if self.dry_run:
                continue
            env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
            result = subprocess.run(cmd, env=env)
            if result.returncode != 0:
                self.state["stages"][stage] = {"status": f"failed (exit {result.returncode})", "seconds": time.time() - t0}
                self._save_state()
                raise SystemExit(f"[speedrun] stage {stage} failed (exit {result.returncode}); fix it and re-run the same command to continue")
        # time spent before a kill is kept: a resumed stage adds to it
        previous = info.get("seconds", 0.0) if info.get("status", "").startswith("failed") else 0.0
        # CPU seconds next to wall seconds: on a shared machine wall time lies, CPU time much less.
        self.state["stages"][stage] = {"status": "done", "seconds": previous + time.time() - t0,
                                       "cpu_seconds": round(_children_cpu_seconds() - cpu0, 1)}
        self._save_state()

    # ------------------------------------------------------------------ the stages

    def stages(self):
        run, p = self.run, self.preset
        tok_dir = run / "tokenizer"
        data_args = ["--input", self.data] if self.data else []
        if p.data_shards and self.data in ("climbmix", "fineweb-edu"):
            # `data download` is resumable (finished, checksummed shards are kept), so it simply runs again.
            yield "data", [
                self.python_module("nanochat_hf.dataset", ["download", "-n", str(p.data_shards), "--dataset", self.data, "-w", "8"]),
            ], lambda: False
        yield "tokenizer", [
            self.python_module("nanochat_hf.tokenization", ["train", *data_args, "--vocab-size", str(p.vocab_size),
                                                            "--max-chars", str(p.tokenizer_max_chars), "--output", str(tok_dir)]),
            self.python_module("nanochat_hf.tokenization", ["eval", str(tok_dir), *data_args,
                                                            "--output", str(tok_dir / "tokenizer_eval.json")]),
        ], lambda: (tok_dir / "tokenizer_eval.json").exists()

        base = run / "base"
        resume = ["--resume_from_checkpoint", "latest"] if any(base.glob("checkpoint-*")) else []
        pretrain_data = ["--data", self.data] if self.data else []
        yield "pretrain", [
            self.python_module("nanochat_hf.pretrain", ["--config", self.recipe("pretrain"), "--tokenizer", str(tok_dir),
                                                        "--output_dir", str(base), *pretrain_data, *resume,
                                                        *p.overrides.get("pretrain", [])], distributed=True),
        ], lambda: (base / "model.safetensors").exists()

        yield from self._eval_stage("base_eval", base, p.base_tasks, "base", p.eval_max_per_task)

        previous = base
        for stage in CHAT_STAGES:
            out = run / stage
            recipe = {"mid": "mid", "sft": "sft", "rl": "grpo"}[stage]
            module = "nanochat_hf.rl" if stage == "rl" else "nanochat_hf.sft"
            yield stage, [
                self.python_module(module, ["--config", self.recipe(recipe), "--model_name_or_path", str(previous),
                                            "--output_dir", str(out), *p.overrides.get(stage, [])], distributed=True),
            ], (lambda out=out: (out / "model.safetensors").exists())
            previous = out

        for stage in CHAT_STAGES:
            yield from self._eval_stage(f"{stage}_eval", run / stage, p.chat_tasks, stage, p.chat_max_per_task or p.eval_max_per_task)

        yield "report", [self.python_module("nanochat_hf.report", ["--run", str(run)])], lambda: False
        if self.push_to_hub:
            final = next((s for s in ("rl", "sft", "mid", "base") if (run / s / "config.json").exists()), "base")
            yield "push", [self.python_module("nanochat_hf.hub", ["--run", str(run), "--stage", final, "--repo-id", self.push_to_hub])], lambda: False

    def _eval_stage(self, name: str, model_dir: Path, tasks: str, label: str, max_per_task: int):
        out = self.run / "eval" / f"{label}.json"
        args = ["--model", str(model_dir), "--tasks", tasks, "--output", str(out)]
        if max_per_task > 0:
            args += ["--max-per-task", str(max_per_task)]
        if not self.preset.gpu:
            args += ["--bundle", str(OFFLINE_EVAL_DATA / "eval_bundle_mini"), "--chat-data", str(OFFLINE_EVAL_DATA / "chat")]
        yield name, [self.python_module("nanochat_hf.evaluation.run", args)], out.exists

    def go(self) -> None:
        print(f"[speedrun] preset {self.name} -> {self.run} ({self._hardware()})")
        self.run.mkdir(parents=True, exist_ok=True)
        self._save_state()
        for stage, commands, done in self.stages():
            self.execute(stage, commands, done)
        print(f"[speedrun] done: {self.run / 'report.md'}")
        print(f"[speedrun] chat with it: nanochat-hf chat --model {self.run / 'rl'} -p \"What is 12*7?\"")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nanochat-hf speedrun", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", choices=list(PRESETS), help="tier: tiny/smoke on CPU, d20..d32 on 8 GPUs")
    parser.add_argument("--output", default=None, help="run folder (default: runs/<preset>)")
    parser.add_argument("--num-gpus", type=int, default=8, help="GPUs for the GPU tiers (accelerate launch --num_processes)")
    parser.add_argument("--data", default=None, help="pretraining text: folder/file of parquet/jsonl/txt or a Hub dataset (default: embedded corpus on CPU tiers)")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="push the final model to USER/NAME at the end")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    args = parser.parse_args(argv)
    try:
        run = Speedrun(args.preset, Path(args.output or f"runs/{args.preset}"), args.num_gpus, args.data, args.push_to_hub, args.dry_run)
        run.go()
    except (FileNotFoundError, ValueError) as err:
        print(f"nanochat-hf speedrun: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
