"""Pretraining data: sources and splits, BOS best-fit packing, resume, rank disjointness, bpb, download."""

import json
import math
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nanochat_hf import dataset
from nanochat_hf.dataloader import BestFitLoader
from nanochat_hf.dataset import Shard, Split, load_splits
from nanochat_hf.loss_eval import evaluate_bpb

BOS = 0


class DigitTokenizer:
    """Document "i:n" -> n copies of token i+1: every packed token says which document it came from."""

    bos_token_id = BOS

    def __call__(self, texts, add_special_tokens=False):
        out = []
        for t in texts:
            i, n = t.split(":")
            out.append([int(i) + 1] * int(n))
        return {"input_ids": out}


def synthetic_split(lengths, rows_per_group=10):
    docs = [f"{i}:{n}" for i, n in enumerate(lengths)]
    shard = Shard(Path("synthetic.txt"))
    shard._docs = docs
    groups = math.ceil(len(docs) / rows_per_group)
    split = Split([shard], [(0, g) for g in range(groups)])
    split.read = lambda unit: docs[unit * rows_per_group:(unit + 1) * rows_per_group]
    return split, docs


def reference_bestfit(lengths, B, T, buffer_size, batches, read_batch):
    """nanochat's algorithm, written naively: largest doc that fits, else crop the shortest."""
    stream = iter(enumerate(lengths))
    buf, out = [], []
    for _ in range(batches):
        rows = []
        for _ in range(B):
            row = []
            while len(row) < T + 1:
                while len(buf) < buffer_size:  # refill `read_batch` documents at a time
                    for _ in range(read_batch):
                        i, n = next(stream)
                        buf.append([BOS] + [i + 1] * n)
                remaining = T + 1 - len(row)
                fits = [d for d in buf if len(d) <= remaining]
                if fits:
                    doc = max(fits, key=len)
                    buf.remove(doc)
                    row += doc
                else:
                    doc = min(buf, key=len)
                    buf.remove(doc)
                    row += doc[:remaining]
            rows.append(row)
        out.append(torch.tensor(rows))
    return out


def test_packing_matches_bestfit_rule_and_invariants():
    lengths = random.Random(0).sample(range(1, 400), 300)  # distinct lengths: no ties
    split, _ = synthetic_split(lengths)
    B, T = 3, 64
    loader = BestFitLoader(split, DigitTokenizer(), B, T, buffer_size=8, tokenizer_batch_size=2)
    expected = reference_bestfit(lengths, B, T, buffer_size=8, batches=6, read_batch=2)
    for ref in expected:
        x, y = next(loader)
        rows = torch.cat([x, y[:, -1:]], dim=1)
        assert torch.equal(rows, ref)  # same rows as the naive best-fit with crop-the-shortest
        assert (x[:, 0] == BOS).all()  # every row starts with BOS
        assert torch.equal(x[:, 1:], y[:, :-1])  # targets are inputs shifted by one
        for row in rows.tolist():
            # No padding: the row is whole documents, only the last one may be cropped.
            starts = [k for k, t in enumerate(row) if t == BOS]
            segments = [row[a:b] for a, b in zip(starts, starts[1:] + [len(row)])]
            for seg in segments[:-1]:
                assert len(seg) == lengths[seg[1] - 1] + 1
            assert all(t == segments[-1][1] for t in segments[-1][1:])


def test_resume_continues_exactly(tmp_path):
    lengths = [random.Random(1).randint(1, 150) for _ in range(400)]
    split, _ = synthetic_split(lengths)
    a = BestFitLoader(split, DigitTokenizer(), 2, 32, buffer_size=20, tokenizer_batch_size=8)
    seen = []
    for k in range(12):
        seen.append(next(a)[0].clone())
        if k == 4:
            state = json.loads(json.dumps(a.state_dict()))  # must survive JSON
    b = BestFitLoader(split, DigitTokenizer(), 2, 32, buffer_size=20, tokenizer_batch_size=8, state=state)
    for k in range(5, 12):
        assert torch.equal(next(b)[0], seen[k])
    assert len(json.dumps(state)) < 4000  # documents by reference, not by content


def test_ranks_read_disjoint_documents():
    lengths = [5] * 200
    split, _ = synthetic_split(lengths, rows_per_group=10)
    seen = []
    for rank in range(2):
        loader = BestFitLoader(split, DigitTokenizer(), 1, 47, rank=rank, world_size=2,
                               buffer_size=4, tokenizer_batch_size=4)
        docs = set()
        for _ in range(40):  # 40 rows x 8 docs = 320 docs > one epoch of this rank (100)
            docs |= set(next(loader)[0].unique().tolist()) - {BOS}
        seen.append(docs)
    assert seen[0] and seen[1] and not (seen[0] & seen[1])
    assert seen[0] | seen[1] == set(range(1, 201))
    # Row groups r, r+W, ...: rank 0 reads groups 0, 2, 4, ... (docs 0-9, 20-29, ...).
    assert all(((d - 1) // 10) % 2 == 0 for d in seen[0])


def test_few_row_groups_are_split_by_document():
    split, _ = synthetic_split([3] * 10, rows_per_group=10)  # one row group, two ranks
    got = []
    for rank in range(2):
        loader = BestFitLoader(split, DigitTokenizer(), 1, 19, rank=rank, world_size=2, buffer_size=2,
                               tokenizer_batch_size=2, prefetch=0)
        x, y = next(loader)
        got.append(set(torch.cat([x, y], 1).unique().tolist()) - {BOS})
    assert got[0] == {1, 3, 5, 7, 9} and got[1] == {2, 4, 6, 8, 10}


# ----------------------------------------------------------------------------- sources


def _write_parquet(path, texts, row_group_size):
    pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), path, row_group_size=row_group_size)


def test_parquet_folder_last_shard_is_validation(tmp_path):
    for s in range(3):
        _write_parquet(tmp_path / f"shard_{s:05d}.parquet", [f"doc {s}-{i}" for i in range(10)], 4)
    train, val = load_splits(tmp_path)
    assert len(train) == 6 and len(val) == 3  # 3 row groups per shard
    assert val.read(0)[0] == "doc 2-0" and train.read(5)[-1] == "doc 1-9"


def test_text_and_jsonl_sources(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("\n\n".join(f"paragraph {i}\nline" for i in range(600)))
    train, val = load_splits(txt)  # 600 documents: the last 30 (5%) are validation
    assert len(train) == 3 and len(val) == 1 and train.read(0)[0] == "paragraph 0\nline"
    assert len(train.read(2)) == 570 - 512 and val.read(0)[0] == "paragraph 570\nline"
    jl = tmp_path / "b.jsonl"
    jl.write_text("\n".join(json.dumps({"text": f"t{i}"}) for i in range(300)))
    train, val = load_splits(jl)
    assert train.read(0)[:2] == ["t0", "t1"] and val.read(0) == [f"t{i}" for i in range(285, 300)]
    train, val = load_splits(None)  # embedded Shakespeare
    assert "First Citizen" in train.read(0)[0]


def test_source_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="data download"):
        load_splits(tmp_path)  # empty folder
    with pytest.raises(FileNotFoundError, match="neither a file"):
        load_splits("no/such/thing")
    _write_parquet(tmp_path / "x.parquet", ["a"] * 4, 2)
    pq.write_table(pa.table({"content": ["a"] * 4}), tmp_path / "y.parquet", row_group_size=2)
    _, val = load_splits(tmp_path)
    with pytest.raises(ValueError, match="no 'text' column"):
        val.read(0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "x"}\n{"text": "y"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1 has no 'text'"):
        load_splits(bad)
    assert dataset.main(["list", "--data", str(tmp_path / "missing")]) == 2


def test_hub_source_needs_download(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_HF_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nanochat-hf data download -n 8 --dataset climbmix"):
        load_splits("karpathy/climbmix-400b-shuffle")
    folder = tmp_path / "base_data" / "fineweb-edu"
    folder.mkdir(parents=True)
    for s in (0, 1, 1822):
        _write_parquet(folder / dataset.shard_filename(s), [f"s{s}"] * 3, 3)
    train, val = load_splits("fineweb-edu")
    assert len(train) == 2 and val.read(0) == ["s1822"] * 3


# ----------------------------------------------------------------------------- download (Hub mocked with local files)


def test_download_parallel_checksummed_retried_resumable(tmp_path, monkeypatch):
    import hashlib

    import huggingface_hub

    src = tmp_path / "hub"
    src.mkdir()
    names = [dataset.shard_filename(i) for i in (0, 1, 6542)]
    for n in names:
        _write_parquet(src / n, [n], 1)
    sums = {n: hashlib.sha256((src / n).read_bytes()).hexdigest() for n in names}
    calls = {n: 0 for n in names}

    def fake_download(repo_id, filename, repo_type, local_dir):
        assert repo_id == "karpathy/climbmix-400b-shuffle" and repo_type == "dataset"
        calls[filename] += 1
        data = (src / filename).read_bytes()
        if filename == names[1] and calls[filename] == 1:
            data = data[:-10] + b"corrupted!"  # first attempt arrives damaged: checksum must catch it
        (Path(local_dir) / filename).write_bytes(data)
        return str(Path(local_dir) / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(dataset, "_expected_checksums", lambda repo, files: {f: sums[f] for f in files})
    out = tmp_path / "shards"
    paths = dataset.download(2, "climbmix", out, num_workers=3, backoff=0.0)
    assert [p.name for p in paths] == names  # 2 train shards + the validation shard
    assert calls == {names[0]: 1, names[1]: 2, names[2]: 1}
    assert all(hashlib.sha256(p.read_bytes()).hexdigest() == sums[p.name] for p in paths)
    dataset.download(2, "climbmix", out, num_workers=3, backoff=0.0)  # resumable: nothing fetched again
    assert calls == {names[0]: 1, names[1]: 2, names[2]: 1}
    monkeypatch.setattr(dataset, "_expected_checksums", lambda repo, files: {f: "0" * 64 for f in files})
    with pytest.raises(RuntimeError, match="checksum mismatch"):
        dataset.download(1, "climbmix", tmp_path / "other", num_workers=1, backoff=0.0)


# ----------------------------------------------------------------------------- bits per byte


class FixedLogits(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.table = logits  # (V,) logits, the same at every position

    def forward(self, input_ids):
        B, T = input_ids.shape
        return type("Out", (), {"logits": self.table.expand(B, T, -1) + self.w})()


def test_bpb_matches_hand_computation():
    logits = torch.tensor([0.0, 1.0, 2.0, 3.0])
    token_bytes = torch.tensor([0, 1, 2, 3])  # token 0 is special: no bytes, not counted
    inputs = torch.zeros(2, 3, dtype=torch.long)
    targets = torch.tensor([[0, 1, 2], [3, -100, 3]])
    logp = torch.log_softmax(logits, -1)
    nats = -(logp[1] + logp[2] + logp[3] + logp[3])
    expected = nats.item() / (math.log(2) * (1 + 2 + 3 + 3))
    got = evaluate_bpb(FixedLogits(logits), [(inputs, targets)], 1, token_bytes)
    assert got == pytest.approx(expected, rel=1e-6)
