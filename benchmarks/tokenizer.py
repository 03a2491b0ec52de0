"""Tokenizer benchmark: ours (tokenizers) vs nanochat's rustbpe + tiktoken, side by side in one run.

    python benchmarks/tokenizer.py                                   # Shakespeare + Python stdlib sources, vocab 8192
    python benchmarks/tokenizer.py --input shard_00000.parquet --vocab-size 32768 --max-chars 200e6
    RAYON_NUM_THREADS=4 python benchmarks/tokenizer.py --threads 4

Prints:
  1. training time of ours vs rustbpe on the same documents at the same vocab (goal: ratio <= 1.3),
     plus the naive `tokenizers` recipe (BpeTrainer fed the documents) for reference;
  2. bytes/token of each on held-out text (goal: ours equal or better);
  3. encode throughput of ours (`encode_batch_fast`) vs tiktoken on the SAME merges (ours
     exported to a tiktoken Encoding), same thread count (goal: ratio >= 1.0).
Needs `pip install rustbpe tiktoken` (the `[bench]` extra). Timings are best-of-N, measured in
alternation, so background load hits both sides alike.
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
import time
from pathlib import Path

# tokenizers' Rust thread pool reads this once, at first use: set it before importing tokenizers
_threads_arg = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--threads"), None)
NUM_THREADS = int(_threads_arg or os.environ.get("RAYON_NUM_THREADS") or os.cpu_count() or 1)
os.environ["RAYON_NUM_THREADS"] = str(NUM_THREADS)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

from nanochat_hf.tokenization import (  # noqa: E402
    CHAR_TO_BYTE,
    SPECIAL_TOKENS,
    SPLIT_PATTERN,
    count_chunks,
    iter_documents,
    train_from_counts,
)


def default_corpus(max_chars: int, doc_cap: int) -> list[str]:
    """Offline text with some variety: the embedded Shakespeare + the Python standard library's sources."""
    docs = list(iter_documents(None, max_chars, doc_cap, progress=False))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    total = sum(map(len, docs))
    for path in sorted(stdlib.glob("**/*.py")):
        if "site-packages" in path.parts or "test" in path.parts:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        docs += [text[i:i + doc_cap] for i in range(0, len(text), doc_cap)]  # long files -> several documents
        total += len(text)
        if total >= max_chars:
            break
    return docs


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", default=None, help="txt/jsonl/parquet files (default: Shakespeare + stdlib)")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--max-chars", type=lambda v: int(float(v)), default=12_000_000)
    p.add_argument("--doc-cap", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=NUM_THREADS, help="threads for both sides (sets RAYON_NUM_THREADS)")
    p.add_argument("--skip-naive", action="store_true", help="do not time the naive tokenizers recipe")
    args = p.parse_args()

    import rustbpe
    import tiktoken
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    docs = (list(iter_documents(args.input, args.max_chars, args.doc_cap, progress=False)) if args.input
            else default_corpus(args.max_chars, args.doc_cap))
    split = max(1, len(docs) // 10)
    train_docs, heldout = docs[:-split], docs[-split:]  # last 10% of documents: bytes/token on unseen text
    V = args.vocab_size
    print(f"corpus: {len(train_docs)} train docs ({sum(map(len, train_docs)) / 1e6:.1f}M chars), {len(heldout)} held-out; "
          f"vocab {V}; {args.threads} threads; best of {args.repeats}")

    # ---- 1. training time, alternating so that background load hits both
    def ours():
        return train_from_counts(count_chunks(train_docs, args.threads), V, progress=False)

    def rust():
        tok = rustbpe.Tokenizer()
        tok.train_from_iterator(iter(train_docs), V - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
        return tok

    def naive():
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        trainer = trainers.BpeTrainer(vocab_size=V - len(SPECIAL_TOKENS), min_frequency=0,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(train_docs, trainer)
        return tok

    ours()  # warm-up: imports (transformers) and page cache, not part of any timing
    t_ours, t_rust, t_naive = float("inf"), float("inf"), float("inf")
    for _ in range(args.repeats):
        t, tok = best_of(ours, 1)
        t_ours = min(t_ours, t)
        t, rtok = best_of(rust, 1)
        t_rust = min(t_rust, t)
        if not args.skip_naive:
            t, _ = best_of(naive, 1)
            t_naive = min(t_naive, t)
    print("\n== training time")
    print(f"rustbpe                     {t_rust:8.2f} s")
    print(f"ours (count + BpeTrainer)   {t_ours:8.2f} s   ratio {t_ours / t_rust:.2f}x rustbpe (goal <= 1.3)")
    if not args.skip_naive:
        print(f"naive tokenizers recipe     {t_naive:8.2f} s   ratio {t_naive / t_rust:.2f}x rustbpe")

    # ---- 2. bytes/token (nanochat encodes with tiktoken on rustbpe's merges)
    rust_enc = tiktoken.Encoding("rustbpe", pat_str=SPLIT_PATTERN,
                                 mergeable_ranks={bytes(k): v for k, v in rtok.get_mergeable_ranks()}, special_tokens={})
    backend = tok.backend_tokenizer
    n_bytes = sum(len(d.encode("utf-8")) for d in heldout)
    n_ours = sum(len(e.ids) for e in backend.encode_batch_fast(heldout, add_special_tokens=False))
    n_rust = sum(len(ids) for ids in rust_enc.encode_ordinary_batch(heldout, num_threads=args.threads))
    print("\n== bytes/token on held-out text (higher is better)")
    print(f"rustbpe   {n_bytes / n_rust:.4f}  ({n_rust:,} tokens)")
    print(f"ours      {n_bytes / n_ours:.4f}  ({n_ours:,} tokens)   ratio {n_rust / n_ours:.4f} (goal >= 1.0)")

    # ---- 3. encode throughput on the same merges and thread count
    ours_ranks = {bytes(CHAR_TO_BYTE[c] for c in t): i
                  for i, t in enumerate(tok.convert_ids_to_tokens(list(range(len(tok) - len(SPECIAL_TOKENS)))))}
    same_enc = tiktoken.Encoding("ours", pat_str=SPLIT_PATTERN, mergeable_ranks=ours_ranks, special_tokens={})
    assert [e.ids for e in backend.encode_batch_fast(heldout[:50], add_special_tokens=False)] == \
        same_enc.encode_ordinary_batch(heldout[:50]), "ours and tiktoken disagree on the same merges"
    n_chars = sum(map(len, docs))
    t_enc_ours = t_enc_tt = float("inf")
    for _ in range(args.repeats):
        t, _ = best_of(lambda: backend.encode_batch_fast(docs, add_special_tokens=False), 1)
        t_enc_ours = min(t_enc_ours, t)
        t, _ = best_of(lambda: same_enc.encode_ordinary_batch(docs, num_threads=args.threads), 1)
        t_enc_tt = min(t_enc_tt, t)
    print(f"\n== batch encode throughput, {len(docs)} docs, {args.threads} threads")
    print(f"tiktoken  {n_chars / t_enc_tt / 1e6:8.2f} M chars/s")
    print(f"ours      {n_chars / t_enc_ours / 1e6:8.2f} M chars/s   ratio {t_enc_tt / t_enc_ours:.2f}x tiktoken (goal >= 1.0)")


if __name__ == "__main__":
    main()
