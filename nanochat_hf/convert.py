"""Import artefacts of the original karpathy/nanochat into Hugging Face formats.

    nanochat-hf convert tokenizer PATH/tokenizer.pkl --output DIR
    nanochat-hf convert checkpoint NANOCHAT_DIR [--step N] --output DIR

`tokenizer`: a pickled tiktoken encoding -> a `PreTrainedTokenizerFast` folder with identical ids.
`checkpoint`: `model_<step>.pt` + `meta_<step>.json` (+ `tokenizer.pkl`) -> a Hub-ready model folder.
"""

from __future__ import annotations

import argparse
import sys

from nanochat_hf.errors import run_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nanochat-hf convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    tok = sub.add_parser("tokenizer", help="import a nanochat tokenizer.pkl (tiktoken encoding)")
    tok.add_argument("path", help="path to tokenizer.pkl (or the folder holding it)")
    tok.add_argument("--output", required=True, help="output folder")
    ckpt = sub.add_parser("checkpoint", help="import a nanochat checkpoint folder (model_*.pt, meta_*.json)")
    ckpt.add_argument("path", help="folder with model_<step>.pt and meta_<step>.json")
    ckpt.add_argument("--step", type=int, default=None, help="which step to import (default: the latest)")
    ckpt.add_argument("--tokenizer", default=None, help="tokenizer.pkl to import alongside (default: "
                                                        "PATH/tokenizer.pkl if present)")
    ckpt.add_argument("--output", required=True, help="output folder")
    args = parser.parse_args(argv)
    return run_main(f"nanochat-hf convert {args.what}", lambda: _run(args))


def _run(args) -> None:
    if args.what == "tokenizer":
        from nanochat_hf.tokenization import convert_tiktoken_tokenizer

        convert_tiktoken_tokenizer(args.path, args.output)
    else:
        from nanochat_hf.conversion import convert_nanochat_checkpoint

        convert_nanochat_checkpoint(args.path, args.output, step=args.step, tokenizer_path=args.tokenizer)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    sys.exit(main())
