"""BOS-aligned best-fit packing of documents into (B, T) training batches, as nanochat's loader.

    from nanochat_hf.dataset import load_splits
    from nanochat_hf.dataloader import BestFitLoader
    train, val = load_splits("climbmix")
    loader = BestFitLoader(train, tokenizer, batch_size=32, seq_len=2048, rank=0, world_size=8)
    for inputs, targets in loader: ...            # (B, T) each; targets = inputs shifted by one
    state = loader.state_dict()                   # position after the last batch yielded
    BestFitLoader(train, tokenizer, ..., state=state)   # continues exactly there

Packing: every row starts with a document's BOS; a buffer of `buffer_size` tokenised documents fills each
row of T+1 tokens with the *largest* document that still fits, and only when none fits crops the *shortest*
to fill the row exactly. No padding, and every token sees its document's BOS (nanochat loses ~35% of
tokens to crops at T=2048 and finds it worth it).

Rank r reads row groups r, r+W, r+2W, ... (disjoint; a split with fewer row groups than ranks is strided
by documents instead). The state names the row group and document being read plus the buffered documents
(by row group and index: a few KB); restoring re-reads and re-tokenises them, so a resumed run sees exactly
the batches of an uninterrupted one. Tokenisation (the Rust tokenizer, in batches of `tokenizer_batch_size`)
runs on a background thread that stays `prefetch` batches ahead of the training step.
"""

from __future__ import annotations

import bisect
import queue
import threading
from collections.abc import Iterator

import torch

from nanochat_hf.dataset import Split


def _encoder(tokenizer):
    """texts -> token id lists, without special tokens, through the fastest path available."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)  # PreTrainedTokenizerFast or tokenizers.Tokenizer
    if hasattr(backend, "encode_batch_fast"):
        return lambda texts: [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    if hasattr(backend, "encode_batch"):
        return lambda texts: [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]


def _bos_id(tokenizer) -> int:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None and hasattr(tokenizer, "token_to_id"):
        bos = tokenizer.token_to_id("<|bos|>")
    if bos is None:
        raise ValueError("the tokenizer has no BOS token; load it with nanochat_hf.tokenization.load_tokenizer")
    return int(bos)


class _Packer:
    """The single-threaded, deterministic core: cursor over row groups + document buffer."""

    def __init__(self, split: Split, encode, bos: int, batch_size: int, seq_len: int, rank: int,
                 world_size: int, buffer_size: int, tokenizer_batch_size: int, state: dict | None):
        if len(split) == 0:
            raise ValueError("the data split is empty; check --data")
        self.split, self.encode, self.bos = split, encode, bos
        self.B, self.T = batch_size, seq_len
        self.rank, self.world = rank, world_size
        self.buffer_size, self.tok_batch = buffer_size, tokenizer_batch_size
        # Few row groups (e.g. a small validation file): every rank reads every group, docs strided.
        self.doc_strided = len(split) < world_size
        self.first_unit, self.unit_step = (0, 1) if self.doc_strided else (rank, world_size)
        self.docs: dict[int, tuple[list[int], int, int]] = {}  # seq -> (tokens, unit, doc index)
        # Sorted (length, -seq): best-fit lookups by bisection; among equal lengths the last
        # key is the oldest document, so ties go to the oldest (nanochat's first-in-buffer).
        self.keys: list[tuple[int, int]] = []
        self.seq = 0
        self.epoch, self.unit, self.doc = 1, self.first_unit, 0
        self._texts: list[str] | None = None
        if state is not None:
            self._restore(state)

    # -- cursor over this rank's row groups ---------------------------------------------------

    def _read_more(self) -> None:
        """Tokenise the next `tokenizer_batch_size` documents of this rank into the buffer."""
        while True:
            if self._texts is None:
                self._texts = self.split.read(self.unit)
            docs = range(self.rank, len(self._texts), self.world) if self.doc_strided else range(len(self._texts))
            idx = [i for i in docs if i >= self.doc][: self.tok_batch]
            if idx:
                self._add([self._texts[i] for i in idx], [(self.unit, i) for i in idx])
                self.doc = idx[-1] + 1
                return
            # This row group is used up: next one, wrapping around into a new epoch.
            self.unit += self.unit_step
            if self.unit >= len(self.split):
                self.unit, self.epoch = self.first_unit, self.epoch + 1
            self.doc, self._texts = 0, None

    def _add(self, texts: list[str], refs: list[tuple[int, int]], seqs: list[int] | None = None) -> None:
        for k, (ids, (unit, d)) in enumerate(zip(self.encode(texts), refs)):
            seq = self.seq if seqs is None else seqs[k]
            tokens = [self.bos] + list(ids)
            self.docs[seq] = (tokens, unit, d)
            bisect.insort(self.keys, (len(tokens), -seq))
            self.seq = max(self.seq, seq + 1)

    def _pop(self, pos: int) -> list[int]:
        _, neg_seq = self.keys.pop(pos)
        return self.docs.pop(-neg_seq)[0]

    # -- packing -----------------------------------------------------------------------------

    def next_batch(self) -> torch.Tensor:
        cap = self.T + 1
        rows = []
        for _ in range(self.B):
            row: list[int] = []
            while len(row) < cap:
                while len(self.docs) < self.buffer_size:
                    self._read_more()
                remaining = cap - len(row)
                # Largest document that fits entirely: the last key with length <= remaining.
                i = bisect.bisect_right(self.keys, (remaining, float("inf"))) - 1
                if i >= 0:
                    row.extend(self._pop(i))
                else:  # nothing fits: crop the (oldest) shortest document to fill the row exactly
                    shortest = bisect.bisect_right(self.keys, (self.keys[0][0], float("inf"))) - 1
                    row.extend(self._pop(shortest)[:remaining])
            rows.append(row)
        return torch.tensor(rows, dtype=torch.long)

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        buffer = [[seq, self.docs[seq][1], self.docs[seq][2]] for seq in sorted(self.docs)]
        return {"epoch": self.epoch, "unit": self.unit, "doc": self.doc, "seq": self.seq,
                "rank": self.rank, "world_size": self.world, "buffer": buffer}

    def _restore(self, state: dict) -> None:
        if state.get("world_size", self.world) != self.world:
            # Different world size: positions are not comparable; restart this rank's stride
            # just after the furthest row group reached (skips at most one group per rank).
            base = state["unit"] // max(1, state["world_size"]) + 1
            self.unit = base * self.unit_step + self.first_unit if not self.doc_strided else 0
            self.epoch = state["epoch"]
            if self.unit >= len(self.split):
                self.unit, self.epoch = self.first_unit, self.epoch + 1
            return
        self.epoch, self.unit, self.doc = state["epoch"], state["unit"], state["doc"]
        # Re-read and re-tokenise the buffered documents, keeping their order (seq numbers).
        by_unit: dict[int, list[tuple[int, int]]] = {}
        for seq, unit, d in state["buffer"]:
            by_unit.setdefault(unit, []).append((seq, d))
        for unit, items in by_unit.items():
            texts = self.split.read(unit)
            self._add([texts[d] for _, d in items], [(unit, d) for _, d in items], [s for s, _ in items])
        self.seq = state["seq"]


class BestFitLoader:
    """Iterable of (inputs, targets) (B, T) LongTensors on `device`, with `state_dict()`."""

    def __init__(self, split: Split, tokenizer, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1,
                 buffer_size: int = 1000, tokenizer_batch_size: int = 128, device: str | torch.device = "cpu",
                 state: dict | None = None, prefetch: int = 2):
        self._packer = _Packer(split, _encoder(tokenizer), _bos_id(tokenizer), batch_size, seq_len, rank,
                               world_size, buffer_size, tokenizer_batch_size, state)
        self.device = torch.device(device)
        self.prefetch = prefetch
        self._state = self._packer.state_dict()
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                rows = self._packer.next_batch()
                item = (rows, self._packer.state_dict())
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as err:  # surface errors (bad data, tokenizer) in the training loop
            self._queue.put(err)

    def _next_rows(self) -> tuple[torch.Tensor, dict]:
        if self.prefetch <= 0:
            rows = self._packer.next_batch()
            return rows, self._packer.state_dict()
        if self._thread is None:
            self._queue = queue.Queue(maxsize=self.prefetch)
            self._thread = threading.Thread(target=self._produce, daemon=True, name="bestfit-loader")
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows, self._state = self._next_rows()
        if self.device.type == "cuda":  # pinned memory -> asynchronous host-to-device copy
            rows = rows.pin_memory().to(self.device, non_blocking=True)
        elif self.device.type != "cpu":
            rows = rows.to(self.device)
        return rows[:, :-1], rows[:, 1:]

    def state_dict(self) -> dict:
        """Where the next batch comes from: pass it as `state=` to a new loader to continue."""
        return self._state

    def close(self) -> None:
        # Join, not just signal: a daemon thread still inside pyarrow or the tokenizer (C++/Rust) when the
        # interpreter exits aborts the process ("terminate called without an active exception").
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=120)

    def __del__(self):
        self._stop.set()
