"""Greedy accuracy and pass@1 of chat models on the RL recipe's held-out problems, side by side.

    python benchmarks/rl_accuracy.py runs/tiny/sft runs/tiny/rl [--problems 200] [--samples 4]

What docs/rl.md's table reports: the tiny recipe's held-out arithmetic problems (the same rows as the
RL log's pass@k), each answered greedily and by `--samples` samples at temperature 1, top-k 50, with
the calculator, by the RL stage's own sampler and reward (`rl.answers_correct`, as its pass@k). pass@1 is
the mean correctness of the samples. Seeds are fixed: question i samples with seed i.
"""

import argparse
import sys
import time
from statistics import mean

import torch
from tqdm.auto import tqdm

from nanochat_hf.chat_format import render_for_completion
from nanochat_hf.engine import Engine
from nanochat_hf.errors import run_main
from nanochat_hf.loading import load_model
from nanochat_hf.rl import answers_correct, synthetic_rows
from nanochat_hf.synthetic_tasks import VAL_SEED_OFFSET

MAX_TOKENS = 96  # the tiny recipe's max_completion_length


def accuracy(model_dir: str, rows: list[dict], samples: int) -> tuple[float, float]:
    model, tokenizer = load_model(model_dir, dtype=torch.float32)
    engine = Engine(model.eval(), tokenizer)
    greedy = sampled = 0.0
    for i, row in enumerate(tqdm(rows, desc=model_dir)):
        tokens = render_for_completion(tokenizer, [{"role": "user", "content": row["question"]}])
        greedy += mean(answers_correct(engine, tokens, row["answer"], 1, MAX_TOKENS, 0.0, None, seed=i))
        sampled += mean(answers_correct(engine, tokens, row["answer"], samples, MAX_TOKENS, 1.0, 50, seed=i))
    return greedy / len(rows), sampled / len(rows)


def compare(models: list[str], rows: list[dict], samples: int) -> None:
    print(f"{'model':40s} {'greedy':>7s} {'pass@1':>7s} {'seconds':>8s}")
    for model_dir in models:
        t0 = time.time()
        greedy, pass1 = accuracy(model_dir, rows, samples)
        print(f"{model_dir:40s} {greedy:7.3f} {pass1:7.3f} {time.time() - t0:8.0f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="model folders (or Hub ids) to compare")
    parser.add_argument("--problems", type=int, default=200, help="held-out problems (the tiny recipe: 200)")
    parser.add_argument("--samples", type=int, default=4, help="samples per problem for pass@1")
    parser.add_argument("--max-operand", type=int, default=999, help="the recipe's synthetic_max_operand")
    args = parser.parse_args()
    rows = synthetic_rows(args.problems, seed=VAL_SEED_OFFSET, max_operand=args.max_operand)
    # A wrong model folder: one line naming the fix (nanochat_hf.errors), not a traceback.
    return run_main("rl_accuracy.py", lambda: compare(args.models, rows, args.samples))


if __name__ == "__main__":
    sys.exit(main())
