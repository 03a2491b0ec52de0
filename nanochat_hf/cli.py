"""`nanochat-hf`: one entry point for every stage of the pipeline.

    nanochat-hf --help
    nanochat-hf tokenizer train --vocab-size 4096 --output runs/tiny/tokenizer
    nanochat-hf speedrun --preset tiny

Each stage lives in its own module with a `main(argv) -> int` function; this file only
routes `nanochat-hf <stage> ...` to it, so `python -m nanochat_hf.<module> ...` and
`accelerate launch -m nanochat_hf.<module> ...` take exactly the same arguments.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# stage -> (module:function, one-line help). Order = the order of the pipeline.
STAGES: dict[str, tuple[str, str]] = {
    "data": ("nanochat_hf.dataset:main", "download / list pretraining shards (Hub parquet or local files)"),
    "tokenizer": ("nanochat_hf.tokenization:main", "train or evaluate the BPE tokenizer (`tokenizer train|eval`)"),
    "plan": ("nanochat_hf.plan:main", "what a preset or recipe will take: tokens, steps, time, cost, memory per GPU"),
    "pretrain": ("nanochat_hf.pretrain:main", "pretrain a base model with accelerate (Muon + AdamW)"),
    "mid": ("nanochat_hf.sft:main_mid", "mid-training with TRL SFTTrainer (conversations, tools, MC)"),
    "sft": ("nanochat_hf.sft:main", "supervised fine-tuning with TRL SFTTrainer"),
    "rl": ("nanochat_hf.rl:main", "reinforcement learning on GSM8K with TRL GRPOTrainer"),
    "eval": ("nanochat_hf.evaluation.run:main", "CORE / ChatCORE / bpb evaluation (lighteval tasks)"),
    "chat": ("nanochat_hf.chat_cli:main", "chat with a model in the terminal"),
    "serve": ("nanochat_hf.serve:main", "web chat + TGI- and OpenAI-compatible API server"),
    "report": ("nanochat_hf.report:main", "write the report card (report.md + plots) of a run"),
    "push": ("nanochat_hf.hub:main", "push a stage's model folder to the Hugging Face Hub with a model card"),
    "convert": ("nanochat_hf.conversion:main", "import an original nanochat tokenizer.pkl or checkpoint"),
    "speedrun": ("nanochat_hf.speedrun:main", "run the whole pipeline: tokenizer -> ... -> report"),
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nanochat-hf",
        description="nanochat on the Hugging Face stack. `nanochat-hf <stage> --help` for a stage's options.",
    )
    sub = parser.add_subparsers(dest="stage", metavar="<stage>")
    for name, (_, help_text) in STAGES.items():
        # add_help=False: the stage's own parser answers `--help` with its real options.
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _load(target: str):
    """The `main(argv)` a STAGES entry names; imported only when its stage runs (each pulls in its own stack)."""
    module_name, func_name = target.split(":")
    return getattr(importlib.import_module(module_name), func_name)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        parser.error(f"unknown stage {stage!r}; choose one of: {', '.join(STAGES)}")
    return int(_load(STAGES[stage][0])(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
