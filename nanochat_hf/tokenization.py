"""nanochat's BPE tokenizer, trained with `tokenizers` and saved as a transformers fast tokenizer.

    nanochat-hf tokenizer train --vocab-size 4096 --output runs/tiny/tokenizer          # embedded Shakespeare
    nanochat-hf tokenizer train --data data/shards --vocab-size 32768 --output runs/d20/tokenizer
    nanochat-hf tokenizer train --data hub:karpathy/climbmix-400b-shuffle --output runs/d20/tokenizer
    nanochat-hf tokenizer eval runs/tiny/tokenizer [--data FILE...] [--output eval.json]

`--data` reads what pretraining's `--data` reads (`nanochat_hf.dataset`). nanochat's rustbpe + tiktoken pair in
one `tokenizer.json`: byte-level BPE over chunks cut by GPT-4's split regex (numbers in groups of 1-2, not 1-3);
ids are the 256 bytes (id = byte value), the merges in learned order, then the 9 special tokens: nanochat's
layout, so its `tokenizer.pkl` imports 1:1. `tokenizer("text")` prepends `<|bos|>` as nanochat starts every
document with it; the chat template (`chat_template.jinja`, see `nanochat_hf.chat_format`) gives nanochat's
training mask. The folder loads with `AutoTokenizer.from_pretrained(DIR)` anywhere, no nanochat_hf needed.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from nanochat_hf.errors import UserError, run_main

# <|bos|> starts every document (and pads); <|assistant_end|> ends an assistant turn, a chat model's EOS; the
# assistant calls the calculator tool in <|python_start|>...<|python_end|>, its answer is forced in as <|output_*|>.
SPECIAL_TOKENS = ["<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
                  "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>"]
# GPT-4's pattern with \p{N}{1,2} instead of {1,3}: fewer number tokens wasted at small vocabularies.
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""  # noqa: E501  (one regex, kept whole)
DEFAULT_VOCAB_SIZE = 32768  # nanochat's 2**15
DEFAULT_MAX_CHARS = 2_000_000_000  # train on the first 2B characters
DEFAULT_DOC_CAP = 10_000  # crop each document to 10k characters (long docs would dominate the counts)
DEFAULT_EVAL_CHARS = 10_000_000  # `tokenizer eval` reads at most this many characters
CHAT_TEMPLATE = (Path(__file__).resolve().parent / "chat_template.jinja").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- bytes <-> ByteLevel characters
# ByteLevel BPE stores each byte as a printable unicode character (GPT-2's table, transformers'
# `bytes_to_unicode`); we need it to turn learned tokens back into bytes (token_bytes, tiktoken import).
# Imported on first use: importing transformers takes about a second, and `tokenizer --help` needs none of it.


@functools.cache
def _byte_tables() -> tuple[dict[int, str], dict[str, int]]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    to_char = bytes_to_unicode()
    return to_char, {c: b for b, c in to_char.items()}


def _to_chars(token: bytes) -> str:
    return "".join(_byte_tables()[0][b] for b in token)


def _to_bytes(token: str) -> bytes:
    return bytes(_byte_tables()[1][c] for c in token)


# ----------------------------------------------------------------------------- reading text


def _hub_documents(repo_id: str) -> Iterator[str]:
    """Stream a Hub dataset's `text` column (train split) with `datasets`, no full download."""
    from datasets import load_dataset

    for row in load_dataset(repo_id, split="train", streaming=True).select_columns(["text"]):
        yield row["text"]


def resolve_inputs(inputs: Iterable[str] | None) -> list[str | Path]:
    """Resolve `--data` values before any long work: the files pretraining reads (`dataset.list_files`) minus a
    folder's last one (nanochat's validation shard), and Hub ids ('hub:...') to stream; None: the embedded corpus."""
    from nanochat_hf.dataset import list_files

    out: list[str | Path] = []
    for item in map(str, inputs or [""]):
        if item.startswith("hub:"):
            if not item[4:]:
                raise ValueError("--data hub: needs a dataset id, e.g. hub:karpathy/climbmix-400b-shuffle")
            out.append(item)
            continue
        try:
            files = list_files(item)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err}; or stream it with --data hub:<repo_id>") from None
        out.extend(files[:-1] if len(files) > 1 else files)
    return out


def iter_documents(inputs=None, max_chars: int = DEFAULT_MAX_CHARS, doc_cap: int | None = DEFAULT_DOC_CAP,
                   progress: bool = True) -> Iterator[str]:
    """Documents cropped to `doc_cap` characters, until `max_chars` characters were yielded (as nanochat's
    tok_train)."""
    from tqdm.auto import tqdm

    from nanochat_hf.dataset import file_documents

    sources = resolve_inputs(inputs)
    total = 0
    bar = tqdm(total=max_chars if max_chars < 10**12 else None, unit="char", unit_scale=True, desc="reading text",
               disable=not progress, mininterval=0.5)
    pending = 0  # update the bar in chunks: one tqdm call per document would cost more than the reading
    try:
        for src in sources:
            for doc in _hub_documents(src[4:]) if isinstance(src, str) else file_documents(src):
                if not doc:
                    continue
                if doc_cap:
                    doc = doc[:doc_cap]
                yield doc
                total += len(doc)
                pending += len(doc)
                if pending > 1_000_000:
                    bar.update(pending)
                    pending = 0
                if total >= max_chars:
                    return
    finally:
        bar.update(pending)
        bar.close()


# ----------------------------------------------------------------------------- building the tokenizer


def _pre_tokenizer():
    """Split by the regex first, then map bytes to ByteLevel characters (its own regex off)."""
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def tokenizer_from_ranks(mergeable_ranks: dict[bytes, int], merges: list[tuple[bytes, bytes]] | None = None):
    """A `PreTrainedTokenizerFast` from tiktoken-style ranks (token bytes -> id) plus the 9 specials after them.

    `merges`: the learned merge pairs in order; if None (a tiktoken import) every split of a token
    into two lower-ranked tokens becomes a merge, ordered by the rank of the result: tiktoken merges
    the adjacent pair whose concatenation has the lowest rank, and this reproduces it (the one
    theoretical gap: two *different* splits of one token both adjacent in one chunk at once).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    ranks = sorted(mergeable_ranks.items(), key=lambda kv: kv[1])
    if [r for _, r in ranks] != list(range(len(ranks))):
        raise ValueError("token ranks must be 0..N-1 without gaps")
    if any(mergeable_ranks.get(bytes([b])) is None for b in range(256)):
        raise ValueError("the vocabulary must contain all 256 single bytes")
    if merges is None:
        merges = []
        for tok, rank in ranks:
            splits = [(tok[:i], tok[i:]) for i in range(1, len(tok))]
            splits = [(a, b) for a, b in splits
                      if mergeable_ranks.get(a, rank) < rank and mergeable_ranks.get(b, rank) < rank]
            merges.extend(sorted(splits, key=lambda ab: (mergeable_ranks[ab[0]], mergeable_ranks[ab[1]])))
    tok = Tokenizer(models.BPE(
        vocab={_to_chars(tok): rank for tok, rank in ranks},
        merges=[(_to_chars(a), _to_chars(b)) for a, b in merges],
        ignore_merges=True,  # a chunk that is itself a token maps straight to it, as in tiktoken
    ))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B:1", special_tokens=[("<|bos|>", tok.token_to_id("<|bos|>"))])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|assistant_end|>", pad_token="<|bos|>",
        extra_special_tokens=SPECIAL_TOKENS[1:], chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,  # exact round trip: never touch spaces on decode
        model_input_names=["input_ids", "attention_mask"])


def train_tokenizer(inputs=None, vocab_size: int = DEFAULT_VOCAB_SIZE, max_chars: int = DEFAULT_MAX_CHARS,
                    doc_cap: int = DEFAULT_DOC_CAP, progress: bool = True):
    """Train nanochat's BPE on `inputs` (txt/jsonl/parquet files, folders, 'hub:<id>'; None = embedded corpus)."""
    if vocab_size - len(SPECIAL_TOKENS) < 256:
        raise ValueError(f"--vocab-size {vocab_size} is too small: it needs 256 bytes + {len(SPECIAL_TOKENS)} "
                         "special tokens (>= 265)")
    if max_chars <= 0 or doc_cap <= 0:
        raise ValueError("--max-chars and --doc-cap must be positive")
    resolve_inputs(inputs)  # fail on a bad path now, not after reading half of the corpus
    return train_from_documents(iter_documents(inputs, max_chars, doc_cap, progress), vocab_size, progress)


def train_from_documents(docs: Iterable[str], vocab_size: int, progress: bool = True):
    """tokenizers' BpeTrainer over the documents -> our tokenizer (nanochat's id layout + specials).

    ~95% of the time is splitting + counting chunks (~1 us of CPU per chunk vs rustbpe's ~0.5: tokenizers tracks
    offsets); counting them ourselves first is no faster, as the trainer cannot take counts (benchmarks/tokenizer.py).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = _pre_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS), show_progress=progress,
        min_frequency=0,  # as rustbpe: merge until the vocabulary is full
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
    )
    tok.train_from_iterator(_batched(docs), trainer)
    # Renumber into nanochat's layout: bytes 0..255, then the merges in the order they were learned.
    ranks = {bytes([b]): b for b in range(256)}
    merges = []
    for m in json.loads(tok.to_str())["model"]["merges"]:
        a, b = map(_to_bytes, m if isinstance(m, list) else m.split(" "))
        merges.append((a, b))
        ranks.setdefault(a + b, len(ranks))
    return tokenizer_from_ranks(ranks, merges)


def _batched(docs: Iterable[str], size: int = 256) -> Iterator[list[str]]:
    """Lists of documents: one Python -> Rust hand-over per batch instead of per document."""
    it = iter(docs)
    while batch := list(itertools.islice(it, size)):
        yield batch


# ----------------------------------------------------------------------------- loading, saving, token bytes


def load_tokenizer(path_or_hub_id: str | os.PathLike):
    """`AutoTokenizer.from_pretrained` plus a check that the 9 nanochat special tokens are there."""
    from transformers import AutoTokenizer

    from nanochat_hf.loading import is_hub_id

    path = str(path_or_hub_id)
    local = Path(path).expanduser()
    if is_hub_id(path):
        tok = AutoTokenizer.from_pretrained(path)
    elif not local.exists():
        raise FileNotFoundError(f"tokenizer {path!r} not found; train one with `nanochat-hf tokenizer "
                                f"train --output {path}`")
    else:
        # Both files are needed: tokenizer.json holds the vocabulary, tokenizer_config.json which ids are
        # BOS / EOS / padding (without it the tokenizer loads, but with no BOS, and every row would be wrong).
        for name in ("tokenizer.json", "tokenizer_config.json"):
            if not (local / name).is_file():
                raise FileNotFoundError(f"{local / name} is missing; copy it back from where the tokenizer was saved, "
                                        f"or train one with `nanochat-hf tokenizer train --output {path}`")
        try:
            tok = AutoTokenizer.from_pretrained(str(local))
        except Exception as err:  # a truncated or hand-edited file: JSON or tokenizers errors of any type
            cause = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            raise UserError(f"{local}/tokenizer*.json cannot be read, a file is truncated or corrupt ({cause}); "
                            "save the tokenizer again") from None
    vocab = tok.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"{path} is not a nanochat tokenizer: it lacks {', '.join(missing)}; "
                         "train one with `nanochat-hf tokenizer train` or import a tokenizer.pkl with "
                         "`nanochat-hf convert tokenizer`")
    return tok


def get_token_bytes(tokenizer):
    """LongTensor[len(tokenizer)]: UTF-8 byte length of every token, 0 for special tokens (for bits per byte)."""
    import torch

    out = torch.zeros(len(tokenizer), dtype=torch.long)
    special = {tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS} | set(tokenizer.all_special_ids)
    vocab = {token: i for token, i in tokenizer.get_vocab().items() if i not in special and i < len(out)}
    # Byte-level BPE (ours, GPT-2, Llama 3, Qwen): one character per byte. Otherwise (SentencePiece-style,
    # any Hub model): "▁" is a space, <0xAB> byte-fallback pieces are one byte, the rest is UTF-8 text.
    char_to_byte = _byte_tables()[1]
    byte_level = all(ch in char_to_byte for token in vocab for ch in token)
    for token, i in vocab.items():
        if byte_level:
            out[i] = len(token)
        elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            out[i] = 1
        else:
            out[i] = len(token.replace("\u2581", " ").encode("utf-8"))
    return out


def save_tokenizer(tokenizer, output_dir: str | os.PathLike) -> Path:
    """`save_pretrained` (tokenizer.json, config, chat template) + `token_bytes.pt`."""
    import torch

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    torch.save(get_token_bytes(tokenizer), out / "token_bytes.pt")
    return out


def to_tiktoken(tokenizer, name: str = "nanochat_hf"):
    """Our tokenizer as a `tiktoken.Encoding` with the same ids (specials included), for bulk encoding: tiktoken is
    about twice as fast as `tokenizers` on the same merges (benchmarks/tokenizer.py), and it is what nanochat uses."""
    try:
        import tiktoken
    except ImportError:
        raise ValueError("exporting to tiktoken needs tiktoken: pip install tiktoken") from None
    specials = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    ranks = {_to_bytes(token): i for token, i in tokenizer.get_vocab().items() if token not in specials}
    return tiktoken.Encoding(name, pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials)


# ----------------------------------------------------------------------------- evaluation


def _reference_encodings() -> tuple[dict, list[str]]:
    """GPT-2 and GPT-4 (cl100k_base) tiktoken encodings when they load (they download once); notes otherwise."""
    encodings, notes = {}, []
    try:
        import tiktoken
    except ImportError:
        return {}, ["GPT-2/GPT-4 comparison skipped: tiktoken is not installed (pip install tiktoken)"]
    for label, name in (("gpt2", "gpt2"), ("gpt4", "cl100k_base")):
        try:
            encodings[label] = tiktoken.get_encoding(name)
        except Exception as err:  # offline and not cached: tiktoken cannot download the ranks
            notes.append(f"{label} ({name}) comparison skipped: tiktoken could not load it ({type(err).__name__})")
    return encodings, notes


def evaluate_tokenizer(tokenizer, texts: list[str]) -> dict:
    """nanochat's tok_eval in one number per tokenizer: bytes per token (higher = better compression)."""
    num_bytes = sum(len(t.encode("utf-8")) for t in texts)
    encoded = tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    num_tokens = sum(len(e.ids) for e in encoded)
    result = {"vocab_size": len(tokenizer), "num_docs": len(texts), "num_bytes": num_bytes,
              "num_tokens": num_tokens, "bytes_per_token": num_bytes / max(num_tokens, 1)}
    encodings, notes = _reference_encodings()
    for label, enc in encodings.items():
        n = sum(len(ids) for ids in enc.encode_ordinary_batch(texts))
        result[f"{label}_bytes_per_token"] = num_bytes / max(n, 1)
        result[f"ratio_vs_{label}"] = result["bytes_per_token"] / result[f"{label}_bytes_per_token"]
    result["notes"] = notes
    return result


def _print_eval(r: dict) -> None:
    print(f"{r['num_docs']} documents, {r['num_bytes']:,} bytes")
    print(f"{'tokenizer':<10} {'vocab':>8} {'tokens':>12} {'bytes/token':>12}")
    print(f"{'ours':<10} {r['vocab_size']:>8} {r['num_tokens']:>12,} {r['bytes_per_token']:>12.3f}")
    for label, vocab in (("gpt2", 50257), ("gpt4", 100277)):
        if f"{label}_bytes_per_token" in r:
            bpt = r[f"{label}_bytes_per_token"]
            print(f"{label:<10} {vocab:>8} {round(r['num_bytes'] / bpt):>12,} {bpt:>12.3f}")
    for note in r["notes"]:
        print(f"note: {note}")


# ----------------------------------------------------------------------------- CLI


def _parse_int(value: str) -> int:
    return int(float(value))  # accept 2e9 as nanochat's scripts write it


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nanochat-hf tokenizer",
                                description="Train or evaluate nanochat's BPE tokenizer.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a tokenizer and save it as a transformers tokenizer folder")
    t.add_argument("--data", "--input", dest="data", nargs="+", default=None,
                   help="as pretraining's --data: txt/jsonl/parquet files or folders (a folder's last file is "
                        "held out as validation), a downloaded dataset alias (climbmix), or hub:<dataset id> to "
                        "stream; default: embedded Shakespeare")
    t.add_argument("--vocab-size", type=_parse_int, default=DEFAULT_VOCAB_SIZE,
                   help="total vocabulary incl. 9 special tokens")
    t.add_argument("--max-chars", type=_parse_int, default=DEFAULT_MAX_CHARS,
                   help="train on at most this many characters")
    t.add_argument("--doc-cap", type=_parse_int, default=DEFAULT_DOC_CAP,
                   help="crop each document to this many characters")
    t.add_argument("--output", required=True, help="output folder")
    e = sub.add_parser("eval", help="bytes/token on texts (vs GPT-2/GPT-4 when available); writes token_bytes.pt")
    e.add_argument("path", help="tokenizer folder (or Hub id)")
    e.add_argument("--data", "--input", dest="data", nargs="+", default=None,
                   help="texts to evaluate on (as for train); default: embedded Shakespeare")
    e.add_argument("--max-chars", type=_parse_int, default=DEFAULT_EVAL_CHARS,
                   help="evaluate on at most this many characters")
    e.add_argument("--output", default=None, help="also write the results as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # A damaged input file, a tokenizer folder missing a file: one line and exit status 2 (nanochat_hf.errors).
    return run_main(f"nanochat-hf tokenizer {args.command}", lambda: _run(args))


def _run(args) -> None:
    if args.command == "train":
        t0 = time.time()
        tok = train_tokenizer(args.data, args.vocab_size, args.max_chars, args.doc_cap)
        out = save_tokenizer(tok, args.output)
        print(f"trained a {len(tok)}-token tokenizer in {time.time() - t0:.1f}s -> {out}")
        return
    tok = load_tokenizer(args.path)
    texts = list(iter_documents(args.data, args.max_chars, doc_cap=None))
    if not texts:
        raise ValueError("no text to evaluate on; check --data")
    result = evaluate_tokenizer(tok, texts)
    if Path(args.path).is_dir():
        import torch

        torch.save(get_token_bytes(tok), Path(args.path) / "token_bytes.pt")
    _print_eval(result)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
