"""The Engine's KV cache: transformers' DynamicCache grows with `torch.cat` (a copy of the whole cache per
token); `SlotCache` writes into a preallocated buffer that doubles when full, and does the row surgery
continuous batching needs (select, merge, crop the padding every row shares)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

MIN_CACHE_CAPACITY = 64  # first KV buffer length; it doubles when full


def _left_pad(x: torch.Tensor, n: int) -> torch.Tensor:
    return F.pad(x, (0, 0, n, 0)) if n > 0 else x  # F.pad copies even when n is 0


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
            ka, va = _left_pad(la.keys, tb - ta), _left_pad(la.values, tb - ta)
            kb, vb = _left_pad(lb.keys, ta - tb), _left_pad(lb.values, ta - tb)
            lo.dtype, lo.device, lo.is_initialized = ka.dtype, ka.device, True
            lo._set(torch.cat([ka, kb]), torch.cat([va, vb]))
        sa, sb = a.row_state(), b.row_state()
        for k in sa.keys() & sb.keys():
            setattr(out, k, torch.cat([sa[k], sb[k]]))
        return out
