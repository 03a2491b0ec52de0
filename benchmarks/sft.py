"""SFT packing layouts side by side: TRL's padding-free single row vs our batch of packed rows.

    python benchmarks/sft.py                      # tiny model, 16 rows x 256 tokens, CPU
    python benchmarks/sft.py --depth 4 --rows 16 --max_length 512 --steps 5

Both layouts hold the same packed conversations and give the same loss (checked here); they
differ in the attention the model computes. TRL's padding-free collator concatenates the batch
into one (1, B*T) row -- ideal for flash-attention varlen kernels -- but SDPA then masks a
(B*T)^2 score matrix. Our `PackedRowsCollator` keeps (B, T) rows with position_ids restarting
per conversation: B*T^2. Prints forward+backward tokens/s of both and their ratio.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    from datasets import Dataset
    from trl.data_utils import pack_dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from nanochat_hf import synthetic_tasks
    from nanochat_hf.chat_format import messages_features, tokenize_conversations
    from nanochat_hf.modeling import NanoChatConfig, NanoChatForCausalLM
    from nanochat_hf.sft import PackedRowsCollator
    from nanochat_hf.tokenization import train_tokenizer

    tok = train_tokenizer(None, vocab_size=1024, max_chars=300_000, progress=False)
    convs = synthetic_tasks.arithmetic(args.rows * args.max_length // 40, seed=0) + synthetic_tasks.identity()
    ds = Dataset.from_dict({"messages": convs}, features=messages_features())
    ds, _ = tokenize_conversations(ds, tok, args.max_length)
    ds = ds.map(lambda r: {"labels": [t if m else -100 for t, m in zip(r["input_ids"], r["assistant_masks"])]})
    packed = pack_dataset(ds.select_columns(["input_ids", "labels"]), args.max_length, "bfd")
    rows = [packed[i] for i in range(min(args.rows, len(packed)))]
    batches = {"flat (TRL padding-free)": DataCollatorForLanguageModeling(tok.pad_token_id, padding_free=True)(rows),
               "rows (PackedRowsCollator)": PackedRowsCollator(tok.pad_token_id)(rows)}

    cfg = NanoChatConfig.from_depth(args.depth, vocab_size=len(tok), max_position_embeddings=args.max_length,
                                    head_dim=64, aspect_ratio=64, window_pattern="L")
    torch.manual_seed(0)
    model = NanoChatForCausalLM(cfg)
    tokens = sum(len(r["input_ids"]) for r in rows)
    print(f"depth {args.depth}, {len(rows)} packed rows, {tokens} tokens per step, {torch.get_num_threads()} threads")
    results = {}
    for name, batch in batches.items():
        batch = {k: v for k, v in batch.items() if k in ("input_ids", "labels", "position_ids", "attention_mask")}
        loss = model(**batch).loss  # warm-up, and the loss to compare
        loss.backward()
        model.zero_grad()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            model(**batch).loss.backward()
            model.zero_grad()
        dt = (time.perf_counter() - t0) / args.steps
        results[name] = (loss.item(), tokens / dt)
        print(f"{name:28s} loss {loss.item():.5f}   {tokens / dt:10.0f} tokens/s (forward+backward)")
    (l_flat, s_flat), (l_rows, s_rows) = results.values()
    print(f"same loss: {abs(l_flat - l_rows) < 1e-4}   rows / flat speed: {s_rows / s_flat:.2f}x")


if __name__ == "__main__":
    main()
