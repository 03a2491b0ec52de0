"""Continuous batching for a server: one background thread decodes every active request together.

    scheduler = engine.scheduler(max_batch_size=32)
    request = scheduler.submit(prompt_ids, SamplingParams(max_tokens=64), on_event=callback)

Rows are left-padded to a shared cache length; new requests join between decode steps (batched prefill, then
a merge) and finished rows leave. transformers' own continuous batching cannot force tool output into a
running row, and on the modern architecture its packed cache loses the smear's per-row state (docs/serving.md).
"""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from nanochat_hf.engine import DEFAULT_MAX_BATCH, DecodeBatch, Engine, without_grad
from nanochat_hf.sampling import SamplingParams, sample
from nanochat_hf.tools import ToolState


@dataclass
class Event:
    """What a request's callback receives: a token (with its log-probability), or the end (with a reason)."""

    token: int | None = None
    logprob: float | None = None
    forced: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    prompt_logprobs: list[float | None] | None = None  # only with want_prompt_logprobs, before the first token
    error: str | None = None


@dataclass
class Request:
    prompt: list[int]
    params: SamplingParams
    on_event: Callable[[Event], None]
    want_prompt_logprobs: bool = False
    max_unread: int | None = None  # events the consumer may leave unread before the row is parked (None: any)
    cancelled: bool = False
    sent: int = 0  # events handed to on_event (scheduler thread)
    read: int = 0  # events the consumer has taken (consumer's thread, through `mark_read`)

    def cancel(self):
        """Ask the scheduler to drop this request (a client went away); its row leaves at the next step."""
        self.cancelled = True

    def mark_read(self, n: int):
        """The consumer took `n` more events; a parked row resumes once half of `max_unread` is left unread."""
        self.read += n

    @property
    def unread(self) -> int:
        return self.sent - self.read


class _Row:
    def __init__(self, request: Request, engine: Engine):
        self.request = request
        self.tool = ToolState(engine.ids, engine.tokenizer)
        self.rng = random.Random(request.params.seed)  # the request's own stream (None: seeded from the OS)
        self.left = engine.budget(len(request.prompt), request.params.max_tokens)


class Scheduler:
    """Requests arrive on a queue (`submit`, any thread); each step samples one token per row with that row's
    own parameters and random stream and calls each request's `on_event`.

    `on_event` never blocks (the thread would stall every row), so a consumer that falls behind (an HTTP
    client that stops reading) would pile up events. A request submitted with `max_unread` is parked instead
    once that many events are unread: its row leaves the batch with its cache and logits kept, costs no
    decode step, still counts against `max_batch_size` (its cache is still in memory) and rejoins when the
    consumer has read all but half of them, with the same tokens as if it had never left.
    """

    def __init__(self, engine: Engine, max_batch_size: int = DEFAULT_MAX_BATCH):
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.waiting: queue.Queue[Request] = queue.Queue()
        self.parked: list[tuple[_Row, DecodeBatch]] = []  # each parked row in a one-row batch of its own
        self.steps = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nanochat-scheduler", daemon=True)
        self._thread.start()

    def submit(self, prompt: list[int], params: SamplingParams, on_event: Callable[[Event], None],
               want_prompt_logprobs: bool = False, max_unread: int | None = None) -> Request:
        if max_unread is not None and max_unread < 1:
            raise ValueError(f"max_unread must be a positive number of events or None, got {max_unread!r}")
        request = Request(self.engine._check_prompt(prompt), params, on_event, want_prompt_logprobs, max_unread)
        self.waiting.put(request)
        return request

    def close(self):
        self._stop.set()
        self.waiting.put(None)  # wake the thread
        self._thread.join(timeout=10)

    def _emit(self, request: Request, event: Event):
        request.sent += 1
        try:
            request.on_event(event)
        except Exception:  # a broken consumer must not take the other requests down
            request.cancelled = True

    def _admit(self, batch: DecodeBatch, rows: list[_Row], block: bool):
        new: list[Request] = []
        while len(rows) + len(self.parked) + len(new) < self.max_batch_size:
            try:
                item = self.waiting.get(block=block and not new and not rows, timeout=0.1)
            except queue.Empty:
                break
            if item is None:
                break
            if item.cancelled:
                self._emit(item, Event(finish_reason="cancelled"))
                continue
            new.append(item)
        if not new:
            return
        # Requests asking for prompt log-probs are prefilled on their own (all-position logits are big).
        plain = [r for r in new if not r.want_prompt_logprobs]
        groups = ([plain] if plain else []) + [[r] for r in new if r.want_prompt_logprobs]
        for group in groups:
            try:
                logits = batch.prefill([r.prompt for r in group], want_prompt_logits=group[0].want_prompt_logprobs)
            except Exception as err:  # e.g. out of memory: fail these requests, keep serving the others
                for r in group:
                    self._emit(r, Event(finish_reason="error", error=f"{type(err).__name__}: {err}"))
                continue
            if logits is not None:
                req = group[0]
                targets = torch.tensor(req.prompt[1:], device=logits.device)[:, None]
                lp = logits[0, :-1].log_softmax(-1).gather(-1, targets)
                self._emit(req, Event(prompt_logprobs=[None] + lp.squeeze(-1).tolist()))
            rows.extend(_Row(r, self.engine) for r in group)

    def _park_and_resume(self, batch: DecodeBatch, rows: list[_Row]):
        """Parked rows whose consumer caught up rejoin (cancelled ones end); rows with `max_unread`
        events unread leave. Runs before sampling, so a parked row keeps its next-token logits."""
        still = []
        for row, alone in self.parked:
            req = row.request
            if req.cancelled:
                self._emit(req, Event(finish_reason="cancelled"))
            elif req.unread <= req.max_unread // 2:
                batch.join(alone)
                rows.append(row)
            else:
                still.append((row, alone))
        self.parked = still
        behind = [i for i, row in enumerate(rows) if row.request.max_unread is not None
                  and row.request.unread >= row.request.max_unread and not row.request.cancelled]
        for i in reversed(behind):  # from the end: each split renumbers the rows after it
            self.parked.append((rows.pop(i), batch.split([i])))

    def _loop(self):
        batch, rows = DecodeBatch(self.engine), []
        while not self._stop.is_set():
            self._park_and_resume(batch, rows)
            self._admit(batch, rows, block=True)
            if not rows:
                continue
            try:
                self._step(batch, rows)
            except Exception as err:  # never leave clients hanging: fail the active ones, start afresh
                for row in rows:
                    self._emit(row.request, Event(finish_reason="error", error=f"{type(err).__name__}: {err}"))
                batch, rows[:] = DecodeBatch(self.engine), []

    def _sample_rows(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        """One token per row with that row's parameters and random stream; batched per setting."""
        out = [0] * len(rows)
        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(rows):
            p = row.request.params
            groups.setdefault((p.temperature, p.top_k, p.top_p), []).append(i)
        for idx in groups.values():
            # each row's uniform comes from its own stream: a request's samples do not depend on its neighbours
            tokens = sample(logits[idx], rows[idx[0]].request.params, [rows[i].rng for i in idx])
            for i, t in zip(idx, tokens.tolist()):
                out[i] = t
        return out

    @without_grad
    def _step(self, batch: DecodeBatch, rows: list[_Row]):
        sampled = self._sample_rows(batch.logits, rows)
        chosen = [row.tool.next_token(t) for row, t in zip(rows, sampled)]
        chosen_ids = torch.tensor([[t] for t, _ in chosen], device=batch.logits.device)
        logprobs = batch.logits.log_softmax(-1).gather(-1, chosen_ids).squeeze(-1).tolist()
        column, keep = [], []
        for i, (row, (token, mask)) in enumerate(zip(rows, chosen)):
            req = row.request
            if req.cancelled:
                self._emit(req, Event(finish_reason="cancelled"))
                continue
            row.left -= 1
            finish = "stop" if token in self.engine.stop_ids else ("length" if row.left <= 0 else None)
            self._emit(req, Event(token=token, logprob=logprobs[i], forced=mask == 0, finish_reason=finish))
            if finish is None and req.cancelled:  # cancelled from inside its own callback
                self._emit(req, Event(finish_reason="cancelled"))
            elif finish is None:
                column.append(token)
                keep.append(i)
        rows[:] = [rows[i] for i in keep]
        batch.keep(keep)
        if rows:
            batch.step(column)
            self.steps += 1
