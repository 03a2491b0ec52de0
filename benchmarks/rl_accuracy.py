"""Greedy accuracy and pass@1 of chat models on the RL recipe's held-out problems, side by side.

    python benchmarks/rl_accuracy.py runs/tiny/sft runs/tiny/rl [--problems 200] [--samples 4]

What docs/rl.md's table reports: the tiny recipe's held-out arithmetic problems (the same rows as the
RL log's pass@k), each answered greedily and by `--samples` samples at temperature 1, top-k 50, with
the calculator, by the RL stage's own sampler (`rl.sample_with_tools`) and reward
(`rewards.correctness_reward`). pass@1 is the mean correctness of the samples. Seeds are fixed.
"""

import argparse
import time

import torch
from tqdm.auto import tqdm

from nanochat_hf.chat_format import render_for_completion
from nanochat_hf.engine import Engine
from nanochat_hf.loading import load_model
from nanochat_hf.rewards import correctness_reward
from nanochat_hf.rl import sample_with_tools, synthetic_rows
from nanochat_hf.synthetic_tasks import VAL_SEED_OFFSET

MAX_TOKENS = 96  # the tiny recipe's max_completion_length


def correct(engine, tokenizer, tokens, answer, n, temperature, top_k, seed) -> float:
    """The fraction of `n` tool-using completions whose `#### N` is the answer."""
    ids, _ = sample_with_tools(engine, tokens, n, MAX_TOKENS, temperature, top_k, None, seed)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return sum(correctness_reward(completions=texts, answer=[answer] * n)) / n


def accuracy(model_dir: str, rows: list[dict], samples: int) -> tuple[float, float]:
    model, tokenizer = load_model(model_dir, dtype=torch.float32)
    engine = Engine(model.eval(), tokenizer)
    greedy = sampled = 0.0
    for i, row in enumerate(tqdm(rows, desc=model_dir)):
        tokens = render_for_completion(tokenizer, [{"role": "user", "content": row["question"]}])
        greedy += correct(engine, tokenizer, tokens, row["answer"], 1, 0.0, None, seed=i)
        sampled += correct(engine, tokenizer, tokens, row["answer"], samples, 1.0, 50, seed=i)
    return greedy / len(rows), sampled / len(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="model folders (or Hub ids) to compare")
    parser.add_argument("--problems", type=int, default=200, help="held-out problems (the tiny recipe: 200)")
    parser.add_argument("--samples", type=int, default=4, help="samples per problem for pass@1")
    parser.add_argument("--max-operand", type=int, default=999, help="the recipe's synthetic_max_operand")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = synthetic_rows(args.problems, seed=VAL_SEED_OFFSET, max_operand=args.max_operand)
    print(f"{'model':40s} {'greedy':>7s} {'pass@1':>7s} {'seconds':>8s}")
    for model_dir in args.models:
        t0 = time.time()
        greedy, pass1 = accuracy(model_dir, rows, args.samples)
        print(f"{model_dir:40s} {greedy:7.3f} {pass1:7.3f} {time.time() - t0:8.0f}", flush=True)


if __name__ == "__main__":
    main()
