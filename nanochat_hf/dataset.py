"""Pretraining text: Hub parquet shards, local files, or the embedded Shakespeare corpus.

    nanochat-hf data download -n 8                                   # 8 train shards + the val shard
    nanochat-hf data download -n 240 --dataset fineweb-edu -w 8      # the older FineWeb-Edu shards
    nanochat-hf data list  --data climbmix                           # which shards a run would read
    nanochat-hf data show  --data path/to/folder --num 3             # peek at a few documents

A *source* (`--data` of every stage) is one of:
  - nothing / "embedded": the Shakespeare corpus shipped in the package (offline default);
  - a file: .parquet (a `text` column; its last row group is the validation split),
    .jsonl/.json (a `text` field per line) or .txt (documents separated by blank lines; the
    last 5% of documents are the validation split);
  - a folder of such files: sorted by name, the last file is the validation split (nanochat's
    convention: the last parquet shard is val);
  - a Hub dataset id or alias (`climbmix`, `fineweb-edu`, `karpathy/climbmix-400b-shuffle`):
    the shards that `data download` put in `$NANOCHAT_HF_HOME/base_data/<name>`.

Documents are read one *row group* at a time (parquet's unit; text files are cut into
pseudo row groups of `TEXT_ROWS_PER_GROUP` documents), which is the unit ranks split and
the loader resumes from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from nanochat_hf.checkpoints import file_sha256
from nanochat_hf.errors import UserError, run_main

# The Hub datasets nanochat pretrains on: repo id, index of the last shard (= validation).
HUB_DATASETS = {"climbmix": ("karpathy/climbmix-400b-shuffle", 6542),
                "fineweb-edu": ("karpathy/fineweb-edu-100b-shuffle", 1822)}
DEFAULT_DATASET = "climbmix"
TEXT_ROWS_PER_GROUP = 256  # documents per pseudo row group for .txt/.jsonl sources
VAL_FRACTION = 0.05  # a lone .txt/.jsonl file holds out its last 5% of documents as validation
DOWNLOAD_ATTEMPTS = 5
TEXT_SUFFIXES = (".parquet", ".jsonl", ".json", ".txt")


def shard_filename(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def data_home() -> Path:
    """Downloads (shards, CORE bundle, lighteval indexes) go here: $NANOCHAT_HF_HOME, default ~/.cache/nanochat_hf."""
    return Path(os.environ.get("NANOCHAT_HF_HOME", Path.home() / ".cache" / "nanochat_hf")).expanduser()


def resolve_hub_dataset(name: str) -> tuple[str, str, int]:
    """Alias or repo id -> (alias, repo_id, last shard index)."""
    for alias, (repo_id, last) in HUB_DATASETS.items():
        if name in (alias, repo_id):
            return alias, repo_id, last
    raise ValueError(f"unknown Hub dataset {name!r}; use one of {', '.join(HUB_DATASETS)} (or their repo ids)")


# ----------------------------------------------------------------------------- reading files
# Every reader of JSONL / parquet in the package goes through these two, so a damaged file is refused
# naming the file and the line or row group (never a library traceback, never rows silently dropped).


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, object]]:
    """(line number, parsed object) for every non-blank line of a JSONL file."""
    n = 0
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield n, json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{n}: not valid JSON ({err.msg}, column {err.colno}); fix or delete that line") \
            from None
    except UnicodeDecodeError:
        raise UserError(f"{path}:{n + 1}: not UTF-8 text; re-encode the file as UTF-8") from None


def read_parquet(path: str | os.PathLike, row_group: int | None = None, column: str | None = "text"):
    """The file's number of row groups (row_group=None), else that row group's `column` as a list
    (column=None: its rows as dicts)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    where = f"{path}" if row_group is None else f"{path} (row group {row_group})"
    try:
        pf = pq.ParquetFile(path)
        if row_group is None:
            return pf.num_row_groups
        if column is None:
            return pf.read_row_group(row_group).to_pylist()
        if column not in pf.schema_arrow.names:
            raise UserError(f"{path} has no {column!r} column (columns: {pf.schema_arrow.names})")
        return pf.read_row_group(row_group, columns=[column]).column(column).to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise UserError(f"{where} cannot be read, the file is truncated or corrupt ({type(err).__name__}: "
                        f"{str(err).splitlines()[0]}); download it again or remove it") from None


def file_documents(path: str | os.PathLike) -> Iterator[str]:
    """Documents of one file, streamed: parquet by row group, JSONL by line, txt split on blank lines."""
    path = Path(path)
    if path.suffix == ".parquet":
        for i in range(read_parquet(path)):
            yield from read_parquet(path, i)
    elif path.suffix == ".txt":
        text = path.read_text(encoding="utf-8", errors="replace")
        yield from (doc.strip("\n") for doc in text.split("\n\n") if doc.strip())
    else:
        for n, row in read_jsonl(path):
            if not isinstance(row, dict) or "text" not in row:
                raise UserError(f"{path}:{n} has no 'text' field; each JSONL line needs {{\"text\": ...}}")
            yield row["text"]


# ----------------------------------------------------------------------------- shards


@dataclass
class Shard:
    """One file of documents, read a row group at a time."""

    path: Path
    _docs: list[str] | None = field(default=None, repr=False)  # text files: their documents, read once

    @property
    def is_parquet(self) -> bool:
        return self.path.suffix == ".parquet"

    def _text_docs(self) -> list[str]:
        if self._docs is None:
            self._docs = list(file_documents(self.path))
        return self._docs

    @property
    def num_row_groups(self) -> int:
        if self.is_parquet:
            return read_parquet(self.path)
        return (len(self._text_docs()) + TEXT_ROWS_PER_GROUP - 1) // TEXT_ROWS_PER_GROUP

    def read_row_group(self, index: int) -> list[str]:
        if self.is_parquet:
            return read_parquet(self.path, index)
        docs = self._text_docs()
        return docs[index * TEXT_ROWS_PER_GROUP:(index + 1) * TEXT_ROWS_PER_GROUP]


@dataclass
class Split:
    """An ordered list of (shard, row group) units; the loader walks it rank-strided."""

    shards: list[Shard]
    units: list[tuple[int, int]]  # (shard index, row group index)

    def read(self, unit: int) -> list[str]:
        s, rg = self.units[unit]
        return self.shards[s].read_row_group(rg)

    def __len__(self) -> int:
        return len(self.units)


def list_files(data: str | os.PathLike | None) -> list[Path]:
    """The document files of a source (see the module docstring), sorted; the last is validation."""
    if data is None or str(data) in ("", "embedded", "shakespeare"):
        from nanochat_hf.assets import embedded_corpus_path

        return [embedded_corpus_path()]
    path = Path(data).expanduser()
    if path.is_file():
        if path.suffix not in TEXT_SUFFIXES:
            raise ValueError(f"unsupported data file {path}; use .parquet, .jsonl or .txt")
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in TEXT_SUFFIXES and not p.name.startswith("."))
        if not files:
            raise FileNotFoundError(f"no .parquet/.jsonl/.txt files in {path}; download shards with `nanochat-hf data "
                                    f"download -n 8 --dir {path}`")
        return files
    try:
        alias, repo_id, _ = resolve_hub_dataset(str(data))
    except ValueError:
        raise FileNotFoundError(f"--data {data!r} is neither a file, a folder nor a known Hub dataset "
                                f"({', '.join(HUB_DATASETS)})") from None
    folder = data_home() / "base_data" / alias
    files = sorted(folder.glob("shard_*.parquet")) if folder.is_dir() else []
    if len(files) < 2:
        raise FileNotFoundError(f"no downloaded shards of {repo_id} in {folder}; run `nanochat-hf data download -n 8 "
                                f"--dataset {alias}`")
    return files


def load_splits(data: str | os.PathLike | None) -> tuple[Split, Split]:
    """(train, val) splits of a source: the last file is val; a lone parquet file holds out its last row group,
    a lone text file its last VAL_FRACTION of documents."""
    files = list_files(data)
    shards = [Shard(p) for p in files]
    if len(shards) == 1 and not shards[0].is_parquet:
        docs = shards[0]._text_docs()
        n_val = max(1, round(VAL_FRACTION * len(docs)))
        if len(docs) - n_val < 1:
            raise ValueError(f"{files[0]} is too small to hold out validation ({len(docs)} document(s)); give it more "
                             "text or a second file")
        shards = [Shard(files[0], docs[:-n_val]), Shard(files[0], docs[-n_val:])]
    units = [(s, i) for s, shard in enumerate(shards) for i in range(shard.num_row_groups)]
    if len(shards) == 1:
        if len(units) < 2:
            raise ValueError(f"{files[0]} is too small to hold out validation (one row group); give it more "
                             "text or a second file")
        return Split(shards, units[:-1]), Split(shards, units[-1:])
    last = len(shards) - 1
    return Split(shards, [u for u in units if u[0] < last]), Split(shards, [u for u in units if u[0] == last])


# ----------------------------------------------------------------------------- download


def _expected_checksums(repo_id: str, filenames: list[str]) -> dict[str, str]:
    """sha256 of each LFS file from the Hub's metadata (one call for all shards)."""
    from huggingface_hub import HfApi

    out = {}
    for i in range(0, len(filenames), 500):
        for info in HfApi().get_paths_info(repo_id, filenames[i:i + 500], repo_type="dataset"):
            lfs = getattr(info, "lfs", None)
            if lfs is not None:
                out[info.path] = lfs.sha256 if hasattr(lfs, "sha256") else lfs["sha256"]
    return out


def download_shard(repo_id: str, filename: str, out_dir: Path, sha256: str | None,
                   attempts: int = DOWNLOAD_ATTEMPTS, backoff: float = 2.0) -> Path:
    """One shard: skip if present and verified, else hf_hub_download (resumes partial files), verify, retry."""
    from huggingface_hub import hf_hub_download

    target = out_dir / filename
    verified = out_dir / ".verified" / (filename + ".sha256")
    if target.exists() and (sha256 is None or (verified.exists() and verified.read_text().strip() == sha256)):
        return target
    last_err: Exception | None = None
    for attempt in range(1, attempts + 1):
        try:
            path = Path(hf_hub_download(repo_id, filename, repo_type="dataset", local_dir=out_dir))
            if sha256 is not None:
                got = file_sha256(path)
                if got != sha256:
                    path.unlink(missing_ok=True)
                    raise OSError(f"checksum mismatch for {filename}: expected {sha256[:12]}…, got {got[:12]}…")
                verified.parent.mkdir(parents=True, exist_ok=True)
                verified.write_text(sha256)
            return path
        except Exception as err:  # network errors, HTTP 5xx, checksum mismatch: retry with backoff
            last_err = err
            if attempt < attempts:
                time.sleep(backoff ** attempt)
    raise RuntimeError(f"failed to download {filename} from {repo_id} after {attempts} attempts: {last_err}")


def download(num_train_shards: int, dataset: str = DEFAULT_DATASET, out_dir: str | os.PathLike | None = None,
             num_workers: int = 4, verify: bool = True, backoff: float = 2.0) -> list[Path]:
    """The first `num_train_shards` shards plus the last (validation) shard, in parallel."""
    from tqdm.auto import tqdm

    alias, repo_id, last = resolve_hub_dataset(dataset)
    out = Path(out_dir) if out_dir else data_home() / "base_data" / alias
    out.mkdir(parents=True, exist_ok=True)
    n = last if num_train_shards < 0 else min(num_train_shards, last)
    names = [shard_filename(i) for i in range(n)] + [shard_filename(last)]
    checksums = _expected_checksums(repo_id, names) if verify else {}
    paths, failures = [], []
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        futures = {pool.submit(download_shard, repo_id, f, out, checksums.get(f), backoff=backoff): f for f in names}
        for fut in tqdm(as_completed(futures), total=len(futures), desc=f"downloading {alias}", unit="shard"):
            try:
                paths.append(fut.result())
            except RuntimeError as err:
                failures.append(str(err))
    if failures:
        raise RuntimeError(f"{len(failures)} shard(s) failed; re-run the same command to resume. First: {failures[0]}")
    return sorted(paths)


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nanochat-hf data", description="Download, list or peek at pretraining text.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="download Hub parquet shards (+ the validation shard)")
    d.add_argument("-n", "--num-files", type=int, default=8, help="train shards to download (-1 = all)")
    d.add_argument("--dataset", default=DEFAULT_DATASET, help=f"one of {', '.join(HUB_DATASETS)} or its repo id")
    d.add_argument("--dir", default=None, help="target folder (default $NANOCHAT_HF_HOME/base_data/<dataset>)")
    d.add_argument("-w", "--num-workers", type=int, default=4, help="parallel downloads")
    d.add_argument("--no-verify", action="store_true", help="skip the sha256 check against the Hub's LFS metadata")
    ls = sub.add_parser("list", help="list the train/val row groups of a source")
    ls.add_argument("--data", default=None, help="file, folder, Hub dataset alias/id; default: embedded corpus")
    sh = sub.add_parser("show", help="print the first documents of a source")
    sh.add_argument("--data", default=None)
    sh.add_argument("--num", type=int, default=3)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # A failed download (RuntimeError), a damaged file: one line and exit status 2 (nanochat_hf.errors).
    return run_main("nanochat-hf data", lambda: _run(args), also=(RuntimeError,))


def _run(args) -> None:
    if args.command == "download":
        paths = download(args.num_files, args.dataset, args.dir, args.num_workers, verify=not args.no_verify)
        print(f"{len(paths)} shards ready in {paths[0].parent} (the last one is validation)")
    elif args.command == "list":
        train, val = load_splits(args.data)
        for name, split in (("train", train), ("val", val)):
            files = sorted({str(split.shards[s].path) for s, _ in split.units})
            more = " ..." if len(files) > 1 else ""
            print(f"{name}: {len(split)} row groups in {len(files)} file(s): {files[0]}{more}")
    elif args.command == "show":
        train, _ = load_splits(args.data)
        for doc in train.read(0)[: args.num]:
            print(doc[:500].rstrip() + ("…" if len(doc) > 500 else ""))
            print("-" * 40)


if __name__ == "__main__":
    sys.exit(main())
