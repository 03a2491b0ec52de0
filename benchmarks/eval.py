"""CORE scoring speed: batched (ours) vs one example per forward (nanochat's core_eval loop).

    python benchmarks/eval.py [--bundle DIR] [--rows 48] [--depth 2]

Same model, same prepared examples, same scores (checked); prints examples/s for a multiple-choice
task and a language-modelling task and the ratio batched / one-at-a-time, measured side by side.
"""

import argparse
import time
from pathlib import Path

import torch

from nanochat_hf import NanoChatConfig, NanoChatForCausalLM
from nanochat_hf.evaluation import core
from nanochat_hf.tokenization import train_tokenizer

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "eval" / "eval_bundle"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bundle", default=str(FIXTURE))
    p.add_argument("--rows", type=int, default=48, help="examples per task (the fixture's rows are repeated)")
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--tasks", default="copa,arc_easy,winograd,lambada_openai")
    args = p.parse_args()
    torch.manual_seed(0)
    tok = train_tokenizer(None, vocab_size=2048, max_chars=500_000, progress=False)
    model = NanoChatForCausalLM(NanoChatConfig.from_depth(args.depth, arch="modern", vocab_size=len(tok),
                                                          max_position_embeddings=1024)).eval()
    bundle = Path(args.bundle)
    print(f"model d{args.depth} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params), "
          f"{torch.get_num_threads()} threads, batch_tokens={core.BATCH_TOKENS}")
    print(f"{'task':<16} {'type':<18} {'n':>4} {'one-at-a-time ex/s':>19} {'batched ex/s':>13} {'ratio':>6}")
    for task in core.load_tasks(bundle, args.tasks.split(",")):
        rows = core.load_task_rows(bundle, task)
        rows = (rows * (args.rows // len(rows) + 1))[:max(args.rows, task.num_fewshot + 1)]
        examples = [core.prepare_example(i, rows, task, tok, 1024) for i in range(len(rows))]
        core.score_examples(model, examples[:2], tok.bos_token_id, progress=False)  # warm-up
        t0 = time.perf_counter()
        single = core.score_examples(model, examples, tok.bos_token_id, batch_tokens=1, progress=False)
        t1 = time.perf_counter()
        batched = core.score_examples(model, examples, tok.bos_token_id, progress=False)
        t2 = time.perf_counter()
        assert single == batched, "batching changed a score"
        a, b = len(rows) / (t1 - t0), len(rows) / (t2 - t1)
        print(f"{task.label:<16} {task.task_type:<18} {len(rows):>4} {a:>19.1f} {b:>13.1f} {b / a:>5.2f}x")


if __name__ == "__main__":
    main()
