"""One decode step of a nanochat_hf model without the module machinery: the Engine's fast path.

    decoder = FastDecoder.for_model(model)       # None for models it does not know (they use model.forward)
    logits = decoder.step(ids, positions, cache, attention_mask)   # (B, 1) new tokens -> (B, V) logits

Why: at decode time a small model is overhead-bound. `model.forward` for one new token per row goes through
~70 nn.Module calls, config attribute hooks and mask builders: about a third of the time per token for a d4
model on CPU (benchmarks/serve.py). Here is the same arithmetic for one new position as straight-line tensor
code over the model's own Parameters (only modern's per-layer scalars are copied, re-read whenever an
optimizer updates them, so RL rollouts always see the current model). Attention is always SDPA: with one
query per row the kernels differ only in rounding. FSDP-sharded weights keep going through `model.forward`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nanochat_hf.configuration import has_value_embed
from nanochat_hf.modeling import SMEAR_CACHE_ATTR, NanoChatForCausalLM


def is_sharded(model) -> bool:
    """True for a model whose weights FSDP2 sharded (DTensors, gathered by hooks around each forward)."""
    return any(type(p.data) is not torch.Tensor for p in model.parameters())


class FastDecoder:
    """Decode-step arithmetic of a NanoChatForCausalLM (see the module docstring)."""

    def __init__(self, model: NanoChatForCausalLM):
        cfg = model.config
        m = model.model
        self.cfg = cfg
        self.modern = cfg.arch == "modern"
        self.eps = cfg.rms_norm_eps
        self.vocab_size = cfg.vocab_size
        self.cap = cfg.final_logit_softcapping
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.windows = [cfg.sliding_window if t == "sliding_attention" else None for t in cfg.layer_types]
        n = cfg.num_hidden_layers
        self.layers = []
        for i, layer in enumerate(m.layers):
            a = layer.self_attn
            ve = m.value_embeds[str(i)].weight if self.modern and has_value_embed(i, n) else None
            self.layers.append((a.q_proj, a.k_proj, a.v_proj, a.o_proj, layer.mlp.fc1.weight, layer.mlp.fc2.weight,
                                a.ve_gate.weight if a.ve_gate is not None else None, ve, a.scaling))
        self.embed = m.embed_tokens.weight
        self.head = model.lm_head.weight
        if self.modern:
            self.resid, self.x0 = m.resid_lambdas, m.x0_lambdas
            self.smear_gate = m.smear_gate.weight
            self.smear_lambda, self.backout_lambda = m.smear_lambda, m.backout_lambda
            self.backout_layer = m.backout_layer
            self.ve_channels, self.smear_channels = cfg.value_embed_gate_channels, cfg.smear_gate_channels
        self.inv_freq = m.rotary_emb.inv_freq
        self._cos = self._sin = None
        self._lambdas, self._lambdas_version = None, None
        self._step = self._decode

    def compile(self) -> "FastDecoder":
        """torch.compile the step (dynamic shapes: one graph for every batch size and cache length). The first
        calls compile (tens of seconds on a small CPU): worth it for a long-running server, not for a test."""
        self._step = torch.compile(self._decode, dynamic=True)
        return self

    def _layer_lambdas(self) -> tuple[list[float], list[float]]:
        """modern's per-layer residual / x0 mixing scalars as Python numbers, re-read when they change
        (a Parameter's version counter moves with every in-place optimizer update)."""
        version = (self.resid._version, self.x0._version)
        if version != self._lambdas_version:
            self._lambdas, self._lambdas_version = (self.resid.tolist(), self.x0.tolist()), version
        return self._lambdas

    @classmethod
    def for_model(cls, model) -> "FastDecoder | None":
        """A decoder when this model's decode step is one we reproduce exactly, else None."""
        # sharded (DTensor) weights are gathered by hooks on model.forward
        return cls(model) if isinstance(model, NanoChatForCausalLM) and not is_sharded(model) else None

    def _rotary_tables(self, dtype: torch.dtype):
        """cos/sin per position laid out for the half-swap trick below: (P, 2, D/2) each, built once."""
        if self._cos is None or self._cos.dtype != dtype:
            rows = self.cfg.max_position_embeddings  # the Engine never decodes past the model's context
            freqs = torch.arange(rows, device=self.inv_freq.device, dtype=torch.float32)[:, None] * self.inv_freq
            cos, sin = freqs.cos().to(dtype), freqs.sin().to(dtype)
            self._cos, self._sin = torch.stack([cos, cos], 1), torch.stack([sin, -sin], 1)
        return self._cos, self._sin

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # skip two no-op conversions: each is a dispatch per call
            return F.rms_norm(x, (x.shape[-1],), eps=self.eps)
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)

    @torch.inference_mode()
    def step(self, ids: torch.Tensor, positions: torch.Tensor, cache,
             attention_mask: torch.Tensor | None) -> torch.Tensor:
        """ids (B, 1), positions (B,), `cache` a transformers Cache holding every earlier position,
        attention_mask (B, T_cache + 1) with 0 on padding or None -> next-token logits (B, V) in fp32."""
        lambdas = self._layer_lambdas() if self.modern else None
        return self._step(ids, positions, cache, attention_mask, lambdas)

    def _decode(self, ids, positions, cache, attention_mask, lambdas) -> torch.Tensor:
        B = ids.shape[0]
        H, Hkv, D = self.heads, self.kv_heads, self.head_dim
        x = self._norm(F.embedding(ids, self.embed))  # (B, 1, C)
        if self.modern:  # smear: gate * the previous token's (normalised) embedding, kept on the cache
            prev = getattr(cache, SMEAR_CACHE_ATTR, None)
            setattr(cache, SMEAR_CACHE_ATTR, x)
            if prev is not None and prev.shape[0] == B:
                gate = self.smear_lambda * torch.sigmoid(F.linear(x[..., : self.smear_channels], self.smear_gate))
                x = x + (gate * (positions != 0)[:, None, None].to(x.dtype)) * prev.to(x.dtype)
        # RoPE on the two halves as x * [cos, cos] + swap_halves(x) * [sin, -sin] (nanochat's rotation,
        # exactly), applied to q and k together, then one QK-norm call for both.
        cos, sin = self._rotary_tables(x.dtype)
        cos, sin = cos[positions][:, None], sin[positions][:, None]  # (B, 1, 2, D/2)
        keep = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        x0, x_backout = x, None
        for i, (q_proj, k_proj, v_proj, o_proj, fc1, fc2, ve_gate, ve, scaling) in enumerate(self.layers):
            if self.modern:
                x = lambdas[0][i] * x + lambdas[1][i] * x0
            h = self._norm(x)
            qk = torch.cat([F.linear(h, q_proj.weight, q_proj.bias), F.linear(h, k_proj.weight, k_proj.bias)], -1)
            qk = qk.view(B, H + Hkv, 2, D // 2)
            qk = self._norm((qk * cos + qk.flip(-2) * sin).view(B, H + Hkv, 1, D))
            q, k = qk[:, :H], qk[:, H:]
            v = F.linear(h, v_proj.weight, v_proj.bias).view(B, Hkv, 1, D)  # one position: (B,1,Hkv,D) is (B,Hkv,1,D)
            if ve is not None:  # value residual with its per-head gate in (0, 3)
                gate = 3 * torch.sigmoid(F.linear(h[..., : self.ve_channels], ve_gate))  # (B, 1, Hkv)
                v = v + gate.view(B, Hkv, 1, 1) * F.embedding(ids, ve).to(x.dtype).view(B, Hkv, 1, D)
            k, v = cache.update(k, v, i)
            mask, window = keep, self.windows[i]
            if window is not None and k.shape[2] > window:  # the query sees its last `window` positions only
                k, v = k[:, :, -window:], v[:, :, -window:]
                mask = None if mask is None else mask[..., -window:]
            if Hkv != H:
                k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling)
            x = x + F.linear(y.transpose(1, 2).reshape(B, 1, H * D), o_proj.weight, o_proj.bias)
            x = x + F.linear(F.relu(F.linear(self._norm(x), fc1)).square(), fc2)
            if self.modern and i == self.backout_layer:
                x_backout = x
        if x_backout is not None:
            x = x - self.backout_lambda.to(x.dtype) * x_backout
        logits = F.linear(self._norm(x)[:, 0], self.head[: self.vocab_size]).float()
        if self.cap is not None:
            logits = self.cap * torch.tanh(logits / self.cap)
        return logits

