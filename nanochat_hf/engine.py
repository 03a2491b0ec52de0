"""KV-cache inference for nanochat_hf models, with the calculator tool and batched decoding.

    from nanochat_hf.engine import Engine
    engine = Engine(model, tokenizer)                         # any HF causal LM with a KV cache
    for column, masks in engine.generate(prompt_ids, num_samples=4, max_tokens=64, temperature=0.8):
        ...                                                    # one token per sample per step
    sequences, masks = engine.generate_batch(prompt_ids, num_samples=4, max_tokens=64)

    scheduler = engine.scheduler(max_batch_size=32)            # continuous batching for a server
    request = scheduler.submit(prompt_ids, SamplingParams(max_tokens=64), on_event=callback)

What it does (nanochat's engine semantics, on transformers' Cache API):
  * one prefill of the prompt, then the cache is copied into `num_samples` rows;
  * sampling with temperature / top-k / top-p from a seeded random stream (temperature 0 = greedy);
  * a row stops at `<|assistant_end|>` or `<|bos|>`;
  * tool use: when a row emits `<|python_end|>`, the text since `<|python_start|>` goes to the safe
    calculator and `<|output_start|>result<|output_end|>` is forced into that row (mask 0 = forced).

Why not `model.generate()`: it re-validates its arguments, rebuilds logits processors, stopping
criteria and the model inputs at every step, and the model's forward itself goes through ~70 module
calls and transformers' mask builders -- on a small model on CPU that Python overhead is most of the
time per token. Here a decode step of a nanochat_hf model is `decoder.FastDecoder.step` (the same
arithmetic as the forward for one new position, as straight-line tensor code; `compile=True` runs
it through torch.compile), any other model gets one forward over the new column, then a sampler.
The KV cache is our `SlotCache`: transformers' DynamicCache grows with `torch.cat` (a copy of the whole
cache per token); ours writes into a preallocated buffer that doubles when full, and supports the row
surgery continuous batching needs.

Why not transformers' own continuous batching (`model.generate_batch` / `ContinuousBatchingManager`,
as of transformers 5.23): it serves the classic architecture, but on the modern one it runs and gives
other tokens than `generate()` (it packs requests into one row of a paged cache; nanochat's smear
keeps the previous token's embedding per row, which the packed layout does not carry), it has no
hook to force tool-output tokens into a running sequence (so no calculator). Our scheduler (below)
left-pads rows to a shared cache length, admits new requests between decode steps (batched prefill,
then a merge), and drops finished rows.
"""

from __future__ import annotations

import functools
import math
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from nanochat_hf.decoder import FastDecoder, is_sharded
from nanochat_hf.modeling import CACHE_ARG
from nanochat_hf.tools import run_calculator

# ----------------------------------------------------------------------------- hyperparameters
DEFAULT_MAX_BATCH = 32  # rows decoded together by the scheduler
MIN_CACHE_CAPACITY = 64  # first KV buffer length; it doubles when full
STOP_TOKENS = ("<|assistant_end|>", "<|bos|>")
TOOL_TOKENS = ("<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>")  # what ToolState reads
# nanochat's message parts of a tool call: part type -> (the special token opening it, the one closing it).
TOOL_PARTS = {"python": ("<|python_start|>", "<|python_end|>"),
              "python_output": ("<|output_start|>", "<|output_end|>")}
# How a tool call reads as text, `[calculator: 12*3 = 36]`: in the terminal chat and the server's `content`.
TOOL_MARKERS = {"<|python_start|>": "[calculator: ", "<|python_end|>": "",
                "<|output_start|>": " = ", "<|output_end|>": "]"}


# ----------------------------------------------------------------------------- the KV cache


def _without_grad(method):
    """torch.inference_mode around an Engine method; torch.no_grad when the model is sharded by FSDP2.

    FSDP2 allocates the gathered weights of a sharded model on its first forward, once: allocated under
    inference_mode they are inference tensors for good, and the next training forward's gather into them
    fails (RL samples its pass@k before the first training step).
    """
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        engine = getattr(self, "engine", self)  # DecodeBatch and Scheduler hold their Engine
        with torch.no_grad() if engine.sharded else torch.inference_mode():
            return method(self, *args, **kwargs)

    return run


class SlotLayer(DynamicLayer):
    """A DynamicLayer that appends into a preallocated buffer (doubling when full) instead of torch.cat."""

    def lazy_initialization(self, key_states, value_states):
        self.dtype, self.device = key_states.dtype, key_states.device
        self._set(key_states[..., :0, :], value_states[..., :0, :])
        self.is_initialized = True

    def _set(self, keys: torch.Tensor, values: torch.Tensor, extra: int = MIN_CACHE_CAPACITY):
        """Replace the contents with (keys, values), leaving room for `extra` more positions."""
        b, h, t, d = keys.shape
        self.length = t
        self.buf_k = keys.new_empty(b, h, t + extra, d)
        self.buf_v = values.new_empty(b, h, t + extra, values.shape[-1])
        self.buf_k[..., :t, :] = keys
        self.buf_v[..., :t, :] = values
        self.keys, self.values = self.buf_k[..., :t, :], self.buf_v[..., :t, :]

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        if self.length + n > self.buf_k.shape[-2]:  # full: double the buffer (amortised O(1) per token)
            self._set(self.keys, self.values, extra=max(self.length, n, MIN_CACHE_CAPACITY))
        end = self.length + n
        self.buf_k[..., self.length:end, :] = key_states
        self.buf_v[..., self.length:end, :] = value_states
        self.length = end
        self.keys, self.values = self.buf_k[..., :end, :], self.buf_v[..., :end, :]
        return self.keys, self.values

    def batch_repeat_interleave(self, repeats: int):
        if self.is_initialized:
            self._set(self.keys.repeat_interleave(repeats, dim=0), self.values.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor):
        if self.is_initialized:
            self._set(self.keys[indices], self.values[indices])


class SlotCache(DynamicCache):
    """All layers full-length `SlotLayer`s (a sliding-window model masks the window itself, so no
    layer ever drops positions and every row's positions line up across layers for the surgery below)."""

    def __init__(self, num_layers: int):
        Cache.__init__(self, layers=[SlotLayer() for _ in range(num_layers)])

    def row_state(self) -> dict[str, torch.Tensor]:
        """Per-row tensors a model keeps on its cache object (nanochat's smear: the previous embedding)."""
        b = self.batch_size()
        return {k: v for k, v in vars(self).items() if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == b}

    def batch_size(self) -> int:
        layer = self.layers[0]
        return layer.keys.shape[0] if layer.is_initialized else 0

    def batch_repeat_interleave(self, repeats: int):
        state = self.row_state()
        super().batch_repeat_interleave(repeats)
        for k, v in state.items():
            setattr(self, k, v.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor):
        state = self.row_state()
        super().batch_select_indices(indices)
        for k, v in state.items():
            setattr(self, k, v[indices])

    def select(self, indices: torch.Tensor) -> "SlotCache":
        """A new cache holding copies of the rows `indices` (this one is left as it is)."""
        out = SlotCache(len(self.layers))
        for src, dst in zip(self.layers, out.layers):
            dst.dtype, dst.device, dst.is_initialized = src.dtype, src.device, True
            dst._set(src.keys[indices], src.values[indices])
        for k, v in self.row_state().items():
            setattr(out, k, v[indices])
        return out

    def crop_left(self, n: int):
        """Drop the first `n` positions of every row (used when they are padding in all rows)."""
        if n > 0:
            for layer in self.layers:
                layer._set(layer.keys[..., n:, :], layer.values[..., n:, :])

    @staticmethod
    def merge(a: "SlotCache", b: "SlotCache") -> "SlotCache":
        """Rows of `a` then rows of `b`, the shorter one left-padded (with zeros) to the longer length."""
        ta, tb = a.get_seq_length(), b.get_seq_length()
        out = SlotCache(len(a.layers))
        for la, lb, lo in zip(a.layers, b.layers, out.layers):
            ka, va = (F.pad(la.keys, (0, 0, tb - ta, 0)), F.pad(la.values, (0, 0, tb - ta, 0))) if tb > ta \
                else (la.keys, la.values)
            kb, vb = (F.pad(lb.keys, (0, 0, ta - tb, 0)), F.pad(lb.values, (0, 0, ta - tb, 0))) if ta > tb \
                else (lb.keys, lb.values)
            lo.dtype, lo.device, lo.is_initialized = ka.dtype, ka.device, True
            lo._set(torch.cat([ka, kb]), torch.cat([va, vb]))
        sa, sb = a.row_state(), b.row_state()
        for k in sa.keys() & sb.keys():
            setattr(out, k, torch.cat([sa[k], sb[k]]))
        return out


# ----------------------------------------------------------------------------- sampling


@dataclass
class SamplingParams:
    """How one request is decoded (validated here so every caller gets the same errors)."""

    max_tokens: int | None = None  # None: up to the model's context length
    temperature: float = 1.0  # 0 = greedy
    top_k: int | None = None  # keep the k most likely tokens (None/0: all)
    top_p: float | None = None  # keep the smallest set with probability >= p (None/1: all)
    seed: int | None = 42  # None: a random seed

    def __post_init__(self):
        if not isinstance(self.temperature, (int, float)) or math.isnan(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a number >= 0, got {self.temperature!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 0):
            raise ValueError(f"top_k must be a non-negative integer, got {self.top_k!r}")
        if self.top_p is not None and (not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """(B, V) logits -> logits with temperature applied and tokens outside top-k / top-p set to -inf."""
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_logits.softmax(dim=-1) >= top_p  # keep a token if the mass before it is < p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def draw(probs: torch.Tensor, uniforms: list[float]) -> torch.Tensor:
    """(B, V) probabilities + one uniform number in [0, 1) per row -> (B,) tokens, by inverse CDF.

    Why not torch.multinomial: the scheduler samples each row from its own seeded stream (a request's
    tokens must not depend on its neighbours), and one multinomial call per row costs ~50 us on CPU
    (8 rows: ~0.4 ms, a sixth of a d4 decode step); here every row is one cumsum + one searchsorted.
    `right=True` picks the first token whose cumulative mass exceeds u * total, so a token with
    probability 0 is never drawn (float64, so u just under 1 does not round up to the total)."""
    cdf = probs.double().cumsum(-1)
    u = torch.tensor(uniforms, dtype=cdf.dtype, device=cdf.device)[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def sample(logits: torch.Tensor, params: SamplingParams, rngs: list[random.Random]) -> torch.Tensor:
    """(B, V) -> (B,) next tokens, all rows with the same parameters, row i's uniform from `rngs[i]`
    (the same stream repeated for the samples of one request; one stream per request in the scheduler)."""
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, params.temperature, params.top_k, params.top_p).softmax(dim=-1)
    return draw(probs, [rng.random() for rng in rngs])


def make_rng(seed: int | None) -> random.Random:
    """A request's own random stream (None: seeded from the OS)."""
    return random.Random(seed)


# ----------------------------------------------------------------------------- per-row state (tool use)


class ToolState:
    """Per-row state machine of the calculator: collects the expression, queues the forced output."""

    def __init__(self, ids: dict[str, int], tokenizer):
        self.ids, self.tokenizer = ids, tokenizer
        self.forced: deque[int] = deque()
        self.in_python = False
        self.expr: list[int] = []

    def next_token(self, sampled: int) -> tuple[int, int]:
        """The token this row takes (a queued forced one wins over the sampled one) and its mask."""
        token, mask = (self.forced.popleft(), 0) if self.forced else (sampled, 1)
        if token == self.ids["<|python_start|>"]:
            self.in_python, self.expr = True, []
        elif token == self.ids["<|python_end|>"] and self.in_python:
            self.in_python = False
            if self.expr:
                result = run_calculator(self.tokenizer.decode(self.expr))
                self.forced.append(self.ids["<|output_start|>"])
                self.forced.extend(self.tokenizer.encode(result, add_special_tokens=False))
                self.forced.append(self.ids["<|output_end|>"])
            self.expr = []
        elif self.in_python:
            self.expr.append(token)
        return token, mask


# ----------------------------------------------------------------------------- a batch of rows in one cache


class DecodeBatch:
    """Rows left-padded into one SlotCache: `mask` (B, T) marks real positions, `pos` is each row's next position."""

    def __init__(self, engine: "Engine"):
        self.engine = engine
        self.cache: SlotCache | None = None
        self.mask: torch.Tensor | None = None  # (B, T) long
        self.pos: torch.Tensor | None = None  # (B,) long
        self.logits: torch.Tensor | None = None  # (B, V) next-token logits per row

    def __len__(self) -> int:
        return 0 if self.pos is None else self.pos.shape[0]

    @_without_grad
    def prefill(self, prompts: list[list[int]], want_prompt_logits: bool = False) -> torch.Tensor | None:
        """Prefill `prompts` together (left-padded) and append them as new rows; returns all-position logits if
        asked."""
        dev = self.engine.device
        t = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), t), self.engine.pad_id, dtype=torch.long, device=dev)
        mask = torch.zeros((len(prompts), t), dtype=torch.long, device=dev)
        for i, p in enumerate(prompts):
            ids[i, t - len(p):] = torch.tensor(p, dtype=torch.long, device=dev)
            mask[i, t - len(p):] = 1
        pos_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = SlotCache(self.engine.num_layers)
        padded = bool((mask == 0).any())
        out = self.engine.model(input_ids=ids, attention_mask=mask if padded else None, position_ids=pos_ids,
                                use_cache=True, logits_to_keep=0 if want_prompt_logits else 1, **{CACHE_ARG: cache})
        logits = out.logits[:, -1, :].float()
        self._append(cache, mask, mask.sum(-1), logits)
        return out.logits.float() if want_prompt_logits else None

    def _append(self, cache, mask, pos, logits):
        if self.cache is None or len(self) == 0:
            self.cache, self.mask, self.pos, self.logits = cache, mask, pos, logits
            return
        ta, tb = self.mask.shape[1], mask.shape[1]
        self.cache = SlotCache.merge(self.cache, cache)
        pad_a, pad_b = max(tb - ta, 0), max(ta - tb, 0)
        self.mask = torch.cat([F.pad(self.mask, (pad_a, 0)), F.pad(mask, (pad_b, 0))])
        self.pos = torch.cat([self.pos, pos])
        self.logits = torch.cat([self.logits, logits])

    def repeat(self, n: int):
        """Copy every row `n` times (several samples from one prefill)."""
        self.cache.batch_repeat_interleave(n)
        self.mask, self.pos = self.mask.repeat_interleave(n, 0), self.pos.repeat_interleave(n, 0)
        self.logits = self.logits.repeat_interleave(n, 0)

    def keep(self, rows: list[int]):
        """Keep only `rows` (finished or cancelled rows leave), then drop padding every row shares."""
        if len(rows) == len(self):
            return
        if not rows:
            self.cache = self.mask = self.pos = self.logits = None
            return
        idx = torch.tensor(rows, dtype=torch.long, device=self.engine.device)
        self.cache.batch_select_indices(idx)
        self.mask, self.pos, self.logits = self.mask[idx], self.pos[idx], self.logits[idx]
        self._drop_shared_padding()

    def split(self, rows: list[int]) -> "DecodeBatch":
        """Move `rows` out into a batch of their own, cache and next-token logits intact (`join` takes them back)."""
        idx = torch.tensor(rows, dtype=torch.long, device=self.engine.device)
        out = DecodeBatch(self.engine)
        out.cache = self.cache.select(idx)
        out.mask, out.pos, out.logits = self.mask[idx], self.pos[idx], self.logits[idx]
        out._drop_shared_padding()
        self.keep([i for i in range(len(self)) if i not in set(rows)])
        return out

    def join(self, other: "DecodeBatch"):
        """Append the rows of `other` (from `split`) after this batch's rows."""
        self._append(other.cache, other.mask, other.pos, other.logits)

    def _drop_shared_padding(self):
        shared_pad = int((self.mask.sum(0) == 0).long().cumprod(0).sum())
        if shared_pad:
            self.cache.crop_left(shared_pad)
            self.mask = self.mask[:, shared_pad:]

    @_without_grad
    def step(self, column: list[int]):
        """Feed one token per row; afterwards `self.logits` is the next distribution of every row."""
        dev = self.engine.device
        ids = torch.tensor(column, dtype=torch.long, device=dev).unsqueeze(1)
        self.mask = F.pad(self.mask, (0, 1), value=1)
        padded = bool((self.mask == 0).any())
        if self.engine.fast is not None:  # same arithmetic as the forward below, without its Python layers
            self.logits = self.engine.fast.step(ids, self.pos, self.cache, self.mask if padded else None)
        else:
            out = self.engine.model(input_ids=ids, attention_mask=self.mask if padded else None,
                                    position_ids=self.pos.unsqueeze(1), use_cache=True, **{CACHE_ARG: self.cache})
            self.logits = out.logits[:, -1, :].float()
        self.pos = self.pos + 1


# ----------------------------------------------------------------------------- the engine


class Engine:
    """Token-level generation for one model + tokenizer (knows the special tokens, nothing about HTTP)."""

    def __init__(self, model, tokenizer, fast_decode: bool = True, compile: bool = False):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        # Decode steps of our models skip model.forward's Python layers (decoder.py); None: model.forward.
        self.fast = FastDecoder.for_model(model) if fast_decode else None
        self.sharded = is_sharded(model)
        if compile and self.fast is not None:
            self.fast.compile()
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.num_layers = cfg.num_hidden_layers
        self.max_context = getattr(cfg, "max_position_embeddings", None) or 2048
        vocab = tokenizer.get_vocab()
        names = TOOL_TOKENS + STOP_TOKENS
        missing = [n for n in names if n not in vocab]
        if missing:
            raise ValueError(f"the tokenizer lacks {', '.join(missing)}; use a nanochat tokenizer "
                             "(nanochat_hf.tokenization)")
        self.ids = {n: vocab[n] for n in names}
        self.stop_ids = {self.ids[n] for n in STOP_TOKENS}
        self.pad_id = self.ids["<|bos|>"]

    def _check_prompt(self, tokens) -> list[int]:
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, int) for t in tokens):
            raise ValueError("tokens must be a non-empty list of ints (e.g. from render_for_completion)")
        if len(tokens) >= self.max_context:
            raise ValueError(f"prompt has {len(tokens)} tokens; the model's context is {self.max_context}")
        bad = [t for t in tokens if not 0 <= t < len(self.tokenizer)]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (0..{len(self.tokenizer) - 1})")
        return tokens

    def budget(self, prompt_len: int, max_tokens: int | None) -> int:
        """New tokens allowed: the request's limit, capped by what is left of the model's context."""
        room = self.max_context - prompt_len
        return room if max_tokens is None else min(max_tokens, room)

    @_without_grad
    def generate(self, tokens: list[int], num_samples: int = 1, max_tokens: int | None = None,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = 42) -> Iterator[tuple[list[int], list[int]]]:
        """Yield (token_column, mask_column) per step: one token per sample; mask 1 = sampled, 0 = forced."""
        params = SamplingParams(max_tokens, temperature, top_k, top_p, seed)
        tokens = self._check_prompt(tokens)
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        batch = DecodeBatch(self)
        batch.prefill([tokens])
        if num_samples > 1:
            batch.repeat(num_samples)
        rng = make_rng(seed)
        rows = [ToolState(self.ids, self.tokenizer) for _ in range(num_samples)]
        done = [False] * num_samples
        for _ in range(self.budget(len(tokens), params.max_tokens)):
            sampled = sample(batch.logits, params, [rng] * num_samples).tolist()
            column, masks = [], []
            for i, row in enumerate(rows):
                token, mask = row.next_token(sampled[i])
                column.append(token)
                masks.append(mask)
                done[i] = done[i] or token in self.stop_ids
            yield column, masks
            if all(done):
                return
            batch.step(column)

    def generate_batch(self, tokens: list[int],
                       num_samples: int = 1, **kwargs) -> tuple[list[list[int]], list[list[int]]]:
        """Full sequences (prompt + completion, without the stop token) and masks (0 on the prompt)."""
        results = [list(tokens) for _ in range(num_samples)]
        masks = [[0] * len(tokens) for _ in range(num_samples)]
        done = [False] * num_samples
        for column, mask_column in self.generate(tokens, num_samples, **kwargs):
            for i, (token, mask) in enumerate(zip(column, mask_column)):
                if done[i]:
                    continue
                if token in self.stop_ids:
                    done[i] = True
                else:
                    results[i].append(token)
                    masks[i].append(mask)
            if all(done):
                break
        return results, masks

    def scheduler(self, max_batch_size: int = DEFAULT_MAX_BATCH) -> "Scheduler":
        return Scheduler(self, max_batch_size)


# ----------------------------------------------------------------------------- continuous batching


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
    submitted: float = field(default_factory=time.monotonic)
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
        self.rng = make_rng(request.params.seed)
        self.left = engine.budget(len(request.prompt), request.params.max_tokens)


class Scheduler:
    """One background thread decodes every active request together; new requests join between steps.

    Requests arrive on a queue (`submit`, any thread); each step the thread admits waiting requests
    (up to `max_batch_size` rows; one batched prefill merged into the running cache), samples one
    token per row with that row's own parameters and random stream, calls each request's `on_event`,
    removes rows that stopped or were cancelled, and runs one forward over the remaining column.

    `on_event` never blocks (the thread would stall every row), so a consumer that falls behind, such
    as an HTTP client that stops reading, would pile up events. A request submitted with `max_unread`
    is parked instead once that many events are unread: its row leaves the batch with its cache and
    logits kept, costs no decode step, still counts against `max_batch_size` (its cache is still in
    memory) and rejoins when the consumer has read all but half of them, with the same tokens as if
    it had never left.
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
                lp = logits[0, :-1].log_softmax(-1).gather(-1,
                                                           torch.tensor(req.prompt[1:], device=logits.device)[:, None])
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

    @_without_grad
    def _step(self, batch: DecodeBatch, rows: list[_Row]):
        sampled = self._sample_rows(batch.logits, rows)
        chosen = [row.tool.next_token(t) for row, t in zip(rows, sampled)]
        logprobs = batch.logits.log_softmax(-1).gather(-1,
                                                       torch.tensor([[t] for t, _ in chosen],
                                                                    device=batch.logits.device))
        logprobs = logprobs.squeeze(-1).tolist()
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


# ----------------------------------------------------------------------------- text streaming


class StreamDecoder:
    """Token ids -> text pieces, holding back bytes of a character split across tokens.

    Each push decodes only a short window (the tokens since the last emitted piece plus the few before
    them, for context), not the whole sequence: O(1) per token, so long streams cost the same per token.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = False):
        self.tokenizer, self.skip = tokenizer, skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # window start: tokens before it are emitted and no longer needed
        self.read = 0  # tokens before it are emitted as text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def push(self, token: int) -> str:
        self.ids.append(token)
        done = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:])
        if len(text) <= len(done) or text.endswith("\ufffd"):  # nothing new, or a character still incomplete
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(done):]

    def flush(self) -> str:
        """Whatever is held back (at the end of a stream an incomplete character is shown as is)."""
        done = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return text[len(done):]


class ChatRenderer:
    """Generated token ids -> display text with the tool call made visible, streamed piece by piece.

    Plain tokens go through a StreamDecoder; a tool part's opening token becomes its TOOL_MARKERS
    (`[calculator: 12*3 = 36]`), a closing token the marker of the part it closes (a stray one closes
    nothing and shows nothing, so the brackets stay balanced), the stop tokens nothing. `kind` is the
    part the latest token belongs to: "text", "python" or "python_output".
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        vocab = tokenizer.get_vocab()
        self.opens = {vocab[start]: kind for kind, (start, _) in TOOL_PARTS.items()}
        self.closes = {vocab[end] for _, end in TOOL_PARTS.values()}
        stops = {vocab[t] for t in STOP_TOKENS if t in vocab}
        self.special = set(tokenizer.all_special_ids) | set(self.opens) | self.closes | stops
        self.kind, self.decoder = "text", StreamDecoder(tokenizer)

    def push(self, token: int) -> str:
        if token not in self.special:
            return self.decoder.push(token)
        self.decoder = StreamDecoder(self.tokenizer)  # a special token ends any pending text
        if token in self.opens:
            self.kind = self.opens[token]
            return TOOL_MARKERS[TOOL_PARTS[self.kind][0]]
        if token in self.closes:
            closed, self.kind = self.kind, "text"
            return TOOL_MARKERS[TOOL_PARTS[closed][1]] if closed in TOOL_PARTS else ""
        return ""


def parse_assistant(tokenizer, tokens: list[int]) -> list[dict]:
    """Completion ids -> nanochat message parts [{"type": "text"|"python"|"python_output", "text": ...}].

    The inverse of the chat template for an assistant turn, so a conversation with tool calls can be
    stored as messages and re-rendered exactly (the stop token, if present, is dropped).
    """
    vocab = tokenizer.get_vocab()
    kinds = {vocab[start]: kind for kind, (start, _) in TOOL_PARTS.items()}
    closers = {vocab[end] for _, end in TOOL_PARTS.values()}
    stops = {vocab[t] for t in STOP_TOKENS}
    parts, kind, buf = [], "text", []

    def flush():
        if buf or kind != "text":
            parts.append({"type": kind, "text": tokenizer.decode(buf)})
        buf.clear()

    for t in tokens:
        if t in stops:
            break
        if t in kinds:
            flush()
            kind = kinds[t]
        elif t in closers:
            flush()
            kind = "text"
        else:
            buf.append(t)
    flush()
    return parts


def load_engine(model_path: str, device: str | None = None, dtype: str | None = None, compile: bool = False) -> Engine:
    """Model + tokenizer from a stage's output folder or a Hub id -> Engine (bf16 on GPU, fp32 on CPU)."""
    from nanochat_hf.loading import load_model

    model, tokenizer = load_model(model_path, device=device or "auto", dtype=dtype or "auto")
    return Engine(model, tokenizer, compile=compile)
