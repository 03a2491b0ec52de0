"""KV-cache inference for nanochat_hf models, with the calculator tool and batched decoding.

    engine = Engine(model, tokenizer)                         # any HF causal LM with a KV cache
    for column, masks in engine.generate(prompt_ids, num_samples=4, max_tokens=64, temperature=0.8):
        ...                                                    # one token per sample per step
    sequences, masks = engine.generate_batch(prompt_ids, num_samples=4, max_tokens=64)

nanochat's engine semantics, on transformers' Cache API: one prefill of the prompt, then the cache is copied
into `num_samples` rows; a row stops at `<|assistant_end|>` or `<|bos|>`; when a row emits `<|python_end|>`,
the text since `<|python_start|>` goes to the safe calculator and `<|output_start|>result<|output_end|>` is
forced into that row (mask 0 = forced). The server's continuous batching is `nanochat_hf.scheduler`.

Why not `model.generate()`: it rebuilds logits processors, stopping criteria and model inputs every step, and
on a small model that Python overhead is most of the time per token. A nanochat_hf model decodes through
`decoder.FastDecoder` (`compile=True` compiles it), any other model through one forward per new column.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from nanochat_hf.decoder import FastDecoder, is_sharded
from nanochat_hf.kv_cache import SlotCache
from nanochat_hf.loading import STOP_TOKENS, load_model
from nanochat_hf.modeling import CACHE_ARG
from nanochat_hf.sampling import SamplingParams, sample
from nanochat_hf.tools import TOOL_TOKENS, ToolState

DEFAULT_MAX_BATCH = 32  # rows the scheduler decodes together


def without_grad(method):
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

    @without_grad
    def prefill(self, prompts: list[list[int]], want_prompt_logits: bool = False) -> torch.Tensor | None:
        """Prefill `prompts` together (left-padded) as new rows; returns all-position logits if asked."""
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
        self._append(cache, mask, mask.sum(-1), out.logits[:, -1, :].float())
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

    @without_grad
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

    @without_grad
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
        rng = random.Random(seed)  # one stream for the samples of this prompt (None: seeded from the OS)
        rows = [ToolState(self.ids, self.tokenizer) for _ in range(num_samples)]
        done = [False] * num_samples
        for _ in range(self.budget(len(tokens), params.max_tokens)):
            sampled = sample(batch.logits, params, [rng] * num_samples).tolist()
            column, masks = map(list, zip(*(row.next_token(t) for row, t in zip(rows, sampled))))
            done = [d or t in self.stop_ids for d, t in zip(done, column)]
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
        return results, masks  # generate() ends once every row has stopped

    def scheduler(self, max_batch_size: int = DEFAULT_MAX_BATCH):
        """A continuous-batching `nanochat_hf.scheduler.Scheduler` over this engine (its thread starts now)."""
        from nanochat_hf.scheduler import Scheduler  # it builds on this module

        return Scheduler(self, max_batch_size)


def load_engine(model_path: str, device: str | None = None, dtype: str | None = None, compile: bool = False) -> Engine:
    """Model + tokenizer from a stage's output folder or a Hub id -> Engine (bf16 on GPU, fp32 on CPU)."""
    model, tokenizer = load_model(model_path, device=device or "auto", dtype=dtype or "auto")
    return Engine(model, tokenizer, compile=compile)
