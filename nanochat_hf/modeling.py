"""nanochat's GPT as a transformers causal LM, in both architectures (see configuration.py).

    from nanochat_hf import NanoChatConfig, NanoChatForCausalLM
    config = NanoChatConfig.from_depth(4, arch="modern", vocab_size=4096, max_position_embeddings=512)
    model = NanoChatForCausalLM(config)
    out = model(input_ids, labels=input_ids)          # labels are shifted inside, -100 ignored
    model.generate(input_ids, max_new_tokens=32)      # KV cache (and smear state) kept in the Cache object

Weight names are transformers' native `nanochat` names (`model.embed_tokens`, `model.layers.{i}.self_attn.q_proj`,
`mlp.fc1`, `lm_head`, ...). The modern architecture adds `model.value_embeds.{i}`, `self_attn.ve_gate`,
`model.resid_lambdas`, `model.x0_lambdas`, `model.smear_gate`, `model.smear_lambda`, `model.backout_lambda`.

Attention goes through transformers' attention interface: SDPA by default (sliding windows and packed
documents become a boolean mask), FlashAttention-3 from the Hub `kernels` package on CUDA+bf16
(`model.use_fast_attention()`), flex attention when asked for.

This file is copied next to modern checkpoints for `trust_remote_code=True`: only relative imports of
this package (`.configuration`), and optional dependencies imported inside try blocks.
"""

from __future__ import annotations

import inspect
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel, initialization as init
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration import NanoChatClassicConfig, NanoChatConfig, has_value_embed

FA3_KERNEL = "kernels-community/flash-attn3"  # Hub kernel used for FlashAttention-3 on Hopper/Ampere
SMEAR_CACHE_ATTR = "nanochat_prev_embedding"  # where decode keeps the previous token's embedding (for smear)
# transformers 5.24 renamed the cache argument of a model's forward and of the mask builders from
# `past_key_values` to `cache`, and generate() passes the cache under the installed version's name. This is
# that name: our forwards accept both, and every call into transformers or another model spells it so.
CACHE_ARG = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


def pop_cache(cache, kwargs: dict):
    """The cache a caller passed under either name (`past_key_values` from transformers < 5.24 or older code)."""
    legacy = kwargs.pop("past_key_values", None)
    if cache is not None and legacy is not None:
        raise ValueError("pass the cache once: as `cache` or as `past_key_values`, not both")
    return cache if cache is not None else legacy


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Weightless RMSNorm (nanochat has no norm gains), computed in fp32 like transformers' native model."""
    return F.rms_norm(x.float(), (x.size(-1),), eps=eps).to(x.dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """nanochat's RoPE on the two halves of the head: it rotates by -theta (kept for checkpoint compatibility)."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


def sdpa_fallback_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Plain SDPA with a boolean/additive mask: the reference path (and what eager means here)."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    is_causal = attention_mask is None and query.shape[2] > 1 and query.shape[2] == key.shape[2]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling,
                                         is_causal=is_causal, dropout_p=dropout)
    return out.transpose(1, 2).contiguous(), None


def long_window(config: NanoChatConfig) -> int | None:
    """The window of modern's long ("L") layers in transformers' counting (query included); None = unlimited.
    nanochat gives them a left window of the training context (`window_size=(sequence_len, 0)`): past it (long
    few-shot prompts, chats) they stop seeing the oldest tokens. The October 2025 (classic) model has none."""
    return config.max_position_embeddings + 1 if config.arch == "modern" else None


class NanoChatRotaryEmbedding(nn.Module):
    """cos/sin for the given positions (position_ids restart at 0 in each packed document), computed per call:
    there is no table to outgrow, so a forward past max_position_embeddings works."""

    def __init__(self, config: NanoChatConfig):
        super().__init__()
        self.config = config
        self.register_buffer("inv_freq", self.compute_inv_freq(config), persistent=False)

    @staticmethod
    def compute_inv_freq(config: NanoChatConfig) -> torch.Tensor:
        base = float(config.rope_parameters.get("rope_theta", 10000.0))
        dim = config.head_dim
        return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor):
        freqs = position_ids[..., None].float() * self.inv_freq.to(x.device)  # (B, T, D/2)
        return freqs.cos().to(x.dtype)[:, None], freqs.sin().to(x.dtype)[:, None]  # (B, 1, T, D/2)


class NanoChatAttention(nn.Module):
    """Causal self-attention: GQA, RoPE then QK-norm; modern adds value embeddings, QK scale and windows."""

    def __init__(self, config: NanoChatConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_kv_heads
        self.is_causal = True
        modern = config.arch == "modern"
        # nanochat multiplies Q and K by 1.2 after QK-norm; folded into the softmax scale (same logits).
        self.scaling = (config.qk_scale**2 if modern else 1.0) / math.sqrt(self.head_dim)
        self.is_sliding = config.layer_types[layer_idx] == "sliding_attention"
        # modern's long layers see the training context back, not everything (see long_window); the
        # FlashAttention path reads the window from here, the other backends from the mask.
        self.sliding_window = config.sliding_window if self.is_sliding else long_window(config)
        bias = config.attention_bias
        self.q_proj = _tag(nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias), "q_proj")
        self.k_proj = _tag(nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias), "k_proj")
        self.v_proj = _tag(nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias), "v_proj")
        self.o_proj = _tag(nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias), "o_proj")
        self.ve_gate = None
        if modern and has_value_embed(layer_idx, config.num_hidden_layers):
            self.ve_gate = _tag(nn.Linear(config.value_embed_gate_channels, self.num_kv_heads, bias=False), "ve_gate")

    def forward(self, hidden_states, position_embeddings, attention_mask=None, cache=None, value_embed=None, **kwargs):
        B, T, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(hidden_states).view(B, T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(hidden_states).view(B, T, self.num_kv_heads, self.head_dim)
        if value_embed is not None:
            # Value residual (ResFormer): a per-head gate in (0, 3) from the first channels of the input.
            gate = 3 * torch.sigmoid(self.ve_gate(hidden_states[..., : self.config.value_embed_gate_channels]))
            v = v + gate.unsqueeze(-1) * value_embed.view(B, T, self.num_kv_heads, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        cos, sin = position_embeddings
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        eps = self.config.rms_norm_eps
        q, k = rms_norm(q, eps), rms_norm(k, eps)  # QK-norm after RoPE (nanochat's order)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        impl = self.config._attn_implementation
        attention = sdpa_fallback_attention if impl in (None, "eager") else ALL_ATTENTION_FUNCTIONS[impl]
        out, weights = attention(self, q, k, v, attention_mask, scaling=self.scaling, dropout=0.0,
                                 sliding_window=self.sliding_window, **kwargs)
        return self.o_proj(out.reshape(B, T, -1)), weights


class NanoChatMLP(nn.Module):
    def __init__(self, config: NanoChatConfig):
        super().__init__()
        self.fc1 = _tag(nn.Linear(config.hidden_size, config.intermediate_size, bias=False), "fc1")
        self.fc2 = _tag(nn.Linear(config.intermediate_size, config.hidden_size, bias=False), "fc2")

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)).square())  # ReLU^2


class NanoChatDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block; GradientCheckpointingLayer recomputes it in backward when checkpointing is on."""

    def __init__(self, config: NanoChatConfig, layer_idx: int):
        super().__init__()
        self.eps = config.rms_norm_eps
        self.self_attn = NanoChatAttention(config, layer_idx)
        self.mlp = NanoChatMLP(config)

    def forward(self, hidden_states, value_embed=None, attention_mask=None, position_embeddings=None, cache=None,
                **kwargs):
        attn, _ = self.self_attn(rms_norm(hidden_states, self.eps), position_embeddings, attention_mask, cache,
                                 value_embed=value_embed, **kwargs)
        hidden_states = hidden_states + attn
        return hidden_states + self.mlp(rms_norm(hidden_states, self.eps))


class NanoChatPreTrainedModel(PreTrainedModel):
    config_class = NanoChatConfig
    config: NanoChatConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["NanoChatDecoderLayer"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    @torch.no_grad()
    def _init_weights(self, module):
        """nanochat's initialisation, per architecture (its recipe: lrs, Muon, zero-init residual branches, was tuned
        for it), not transformers' N(0, initializer_range); `transformers.initialization` skips tensors loaded from a
        checkpoint. Each tensor is initialised by the module that owns it directly (transformers skips container
        modules without direct parameters in custom code), hence the `init_role` tag on Linear/Embedding."""
        cfg = self.config
        modern = cfg.arch == "modern"
        s = math.sqrt(3) / math.sqrt(cfg.hidden_size)  # uniform bound with std 1/sqrt(d)
        role = getattr(module, "init_role", None)
        if isinstance(module, nn.Linear) and role is not None:
            w = module.weight
            if role in ("o_proj", "fc2") or (role == "lm_head" and not modern):
                init.zeros_(w)
            elif role == "lm_head":
                init.normal_(w, mean=0.0, std=0.001)
            elif role in ("ve_gate", "smear_gate"):
                init.uniform_(w, 0.0, 0.02)  # gates start slightly above neutral
            elif modern:
                bound = 0.4 * s if role == "fc1" else s
                init.uniform_(w, -bound, bound)  # uniform: same std as the normal, no outliers
            else:  # classic: https://arxiv.org/pdf/2310.17813
                fan_out, fan_in = w.shape
                init.normal_(w, mean=0.0, std=min(1.0, math.sqrt(fan_out / fan_in)) / math.sqrt(fan_in))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding) and role == "embed":
            init.normal_(module.weight, mean=0.0, std=0.8 if modern else 1.0)
        elif isinstance(module, nn.Embedding) and role == "value_embed":
            init.uniform_(module.weight, -s, s)  # like v_proj
        elif isinstance(module, NanoChatRotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq(cfg))
        elif isinstance(module, NanoChatModel) and modern:
            n = cfg.num_hidden_layers
            frac = torch.arange(n, dtype=torch.float32) / max(n - 1, 1)
            init.copy_(module.resid_lambdas, 1.15 - 0.10 * frac)  # stronger residual early, weaker deep
            init.copy_(module.x0_lambdas, 0.20 - 0.15 * frac)  # more embedding blending early
            init.zeros_(module.smear_lambda)
            init.constant_(module.backout_lambda, 0.2)


def _tag(module: nn.Module, role: str) -> nn.Module:
    module.init_role = role
    return module


class NanoChatModel(NanoChatPreTrainedModel):
    def __init__(self, config: NanoChatConfig):
        super().__init__(config)
        self.modern = config.arch == "modern"
        n = config.num_hidden_layers
        self.embed_tokens = _tag(nn.Embedding(config.padded_vocab_size, config.hidden_size), "embed")
        self.layers = nn.ModuleList([NanoChatDecoderLayer(config, i) for i in range(n)])
        self.rotary_emb = NanoChatRotaryEmbedding(config)
        self.has_sliding_layers = "sliding_attention" in config.layer_types
        if self.modern:
            kv_dim = config.num_key_value_heads * config.head_dim
            self.value_embeds = nn.ModuleDict({str(i): _tag(nn.Embedding(config.padded_vocab_size, kv_dim),
                                                            "value_embed")
                                               for i in range(n) if has_value_embed(i, n)})
            self.resid_lambdas = nn.Parameter(torch.ones(n))  # scales the residual stream entering each layer
            self.x0_lambdas = nn.Parameter(torch.zeros(n))  # mixes the (smeared) embedding back in at each layer
            self.smear_gate = _tag(nn.Linear(config.smear_gate_channels, 1, bias=False), "smear_gate")
            self.smear_lambda = nn.Parameter(torch.zeros(1))
            self.backout_lambda = nn.Parameter(torch.full((1,), 0.2))
            self.backout_layer = n // 2  # its output is subtracted (x backout_lambda) before the final norm
        self.gradient_checkpointing = False
        self.post_init()

    def _smear(self, x, position_ids, cache):
        """Add gate * previous token's embedding (a cheap bigram feature; the gate starts at 0). At decode the previous
        token lives in an earlier call, so the cache carries it; a position id of 0 (a packed document's start, a
        left-pad boundary) gets nothing from before it."""
        prev = None
        if cache is not None:
            prev = getattr(cache, SMEAR_CACHE_ATTR, None)
            if prev is not None and (prev.shape[0] != x.shape[0] or cache.get_seq_length() == 0):
                prev = None
            setattr(cache, SMEAR_CACHE_ATTR, x[:, -1:].detach())
        first = torch.zeros_like(x[:, :1]) if prev is None else prev.to(x.dtype)
        shifted = torch.cat([first, x[:, :-1]], dim=1)
        c = self.config.smear_gate_channels
        gate = self.smear_lambda.to(x.dtype) * torch.sigmoid(self.smear_gate(x[..., :c]))
        gate = gate * (position_ids != 0).unsqueeze(-1).to(x.dtype)
        return x + gate * shifted

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                use_cache=None, **kwargs) -> BaseModelOutputWithPast:
        cache = pop_cache(cache, kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if self.modern and input_ids is None:
            raise ValueError("the modern architecture needs input_ids (value embeddings are looked up by token id)")
        if use_cache is None:  # a training forward keeps no cache unless asked to
            use_cache = self.config.use_cache and not self.training
        if self.gradient_checkpointing and self.training:
            use_cache = False  # recomputation and a growing cache do not mix
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            position_ids = default_position_ids(attention_mask, cache, inputs_embeds)

        # Masks: causal (+ padding, + packed documents from position_ids resets) and the sliding one.
        # An empty cache changes nothing in the mask but would hide packed documents from transformers'
        # detection (it only looks for position_ids resets when there is no cache).
        # generate() with a static cache builds the masks itself and passes {layer type: mask}.
        if isinstance(attention_mask, dict):
            masks = attention_mask
        else:
            mask_cache = cache if cache is not None and cache.get_seq_length() > 0 else None
            mask_args = {"config": self.config, "inputs_embeds": inputs_embeds, "attention_mask": attention_mask,
                         CACHE_ARG: mask_cache, "position_ids": position_ids}
            window = long_window(self.config)
            past = cache.get_seq_length() if cache is not None else 0
            bites = window is not None and past + inputs_embeds.shape[1] > window  # only past the training length
            # keep a key only within `window` positions of its query (a transformers mask function)
            long = {"and_mask_function": lambda batch, head, q, kv: kv > q - window} if bites else {}
            masks = {"full_attention": create_causal_mask(**mask_args, **long)}
            if self.has_sliding_layers:
                masks["sliding_attention"] = create_sliding_window_causal_mask(**mask_args)
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)

        eps = self.config.rms_norm_eps
        x = rms_norm(inputs_embeds, eps)  # nanochat normalises the embedding too
        if self.modern:
            x = self._smear(x, position_ids.expand(x.shape[0], -1), cache)
        x0, x_backout = x, None
        for i, layer in enumerate(self.layers):
            value_embed = None
            if self.modern:
                x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
                if str(i) in self.value_embeds:
                    value_embed = self.value_embeds[str(i)](input_ids).to(x.dtype)
            x = layer(x, value_embed, attention_mask=masks[self.config.layer_types[i]],
                      position_embeddings=position_embeddings, cache=cache, **kwargs)
            if self.modern and i == self.backout_layer:
                x_backout = x
        if x_backout is not None:
            x = x - self.backout_lambda.to(x.dtype) * x_backout  # remove low-level features before the head
        x = rms_norm(x, eps)
        return BaseModelOutputWithPast(x, cache if use_cache else None)  # positional: the field's name moved too


def default_position_ids(attention_mask, cache, inputs_embeds) -> torch.Tensor:
    """Positions counted from each row's first real token, as `generate()` counts them: a trainer's forward over
    left-padded rows (TRL's GRPO scoring) passes none, and counted from the pads a row's BOS would sit past 0, the
    smear mixing the pad's embedding into it (log-probs not those of the unpadded sequence that was sampled)."""
    past = cache.get_seq_length() if cache is not None else 0
    length = inputs_embeds.shape[1]
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2 and not attention_mask.all():
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
    return torch.arange(past, past + length, device=inputs_embeds.device).unsqueeze(0)


class NanoChatForCausalLM(NanoChatPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {}  # nanochat never ties the head to the embedding

    def __init__(self, config: NanoChatConfig):
        super().__init__(config)
        self.model = NanoChatModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = _tag(nn.Linear(config.hidden_size, config.padded_vocab_size, bias=False), "lm_head")
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                labels=None, use_cache=None, logits_to_keep=0, return_dict=None, **kwargs) -> CausalLMOutputWithPast:
        cache = pop_cache(cache, kwargs)
        kwargs.pop("output_attentions", None)
        kwargs.pop("output_hidden_states", None)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                         inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        hidden = out.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden)[..., : self.config.vocab_size]  # drop the padded rows
        if logits.dtype in (torch.bfloat16, torch.float16):
            logits = logits.float()  # softcap and loss in fp32
        cap = self.config.final_logit_softcapping
        if cap is not None:
            logits = cap * torch.tanh(logits / cap)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss, logits, out.get(CACHE_ARG))  # positional: the field's name moved too

    # ------------------------------------------------------------------ nanochat's accounting

    def _modern_scalars(self) -> list[nn.Parameter]:
        m = self.model
        if self.config.arch != "modern":
            return []
        return [m.resid_lambdas, m.x0_lambdas, m.smear_gate.weight, m.smear_lambda, m.backout_lambda]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Optimizer groups by role: embeddings (AdamW), head (AdamW), block matrices (Muon), scalars (AdamW)."""
        m = self.model
        groups = {"embedding": [m.embed_tokens.weight], "unembedding": [self.lm_head.weight], "matrix": [],
                  "scalar": self._modern_scalars()}
        if self.config.arch == "modern":
            groups["embedding"] += [e.weight for e in m.value_embeds.values()]
        for p in m.layers.parameters():  # every 2-D weight in the blocks (q, k, v, o, fc1, fc2, ve_gate)
            groups["matrix" if p.ndim == 2 else "scalar"].append(p)
        return groups

    def num_params_by_group(self) -> dict[str, int]:
        """nanochat's (2026) parameter breakdown: wte, value_embeds, lm_head, transformer_matrices, scalars, total."""
        m = self.model
        count = lambda ps: sum(p.numel() for p in ps)  # noqa: E731
        ve = count(m.value_embeds.parameters()) if self.config.arch == "modern" else 0
        out = {"wte": m.embed_tokens.weight.numel(), "value_embeds": ve, "lm_head": self.lm_head.weight.numel(),
               "transformer_matrices": count(m.layers.parameters()), "scalars": count(self._modern_scalars())}
        out["total"] = sum(out.values())
        return out

    def num_scaling_params(self) -> int:
        """Parameters that set the token budget: block matrices + lm_head (nanochat base_train's choice)."""
        n = self.num_params_by_group()
        return n["transformer_matrices"] + n["lm_head"]

    def estimate_flops(self) -> float:
        """Training FLOPs per token: 6 x matmul weights (embeddings are lookups, excluded) plus attention,
        12 x heads x head_dim x the context each layer actually sees (its window, capped at the sequence)."""
        cfg = self.config
        matmul = sum(mod.weight.numel() for mod in self.modules() if isinstance(mod, nn.Linear))
        t = cfg.max_position_embeddings
        attn = sum(12 * cfg.num_attention_heads * cfg.head_dim * min(w, t) for w in cfg.window_sizes)
        return float(6 * matmul + attn)

    # ------------------------------------------------------------------ attention backends

    def use_fast_attention(self, device: torch.device | None = None, compute_dtype: torch.dtype | None = None,
                           say=print) -> str:
        """FlashAttention-3 (the Hub kernel, through `kernels`) on an sm80-sm90 GPU computing in bf16/fp16; SDPA
        elsewhere. A GPU that should get FA3 but cannot says why in one line (`say`) and stays correct on SDPA.
        `device` / `compute_dtype` default to the weights' (pass bf16 when autocast runs fp32 weights in bf16)."""
        param = next(self.parameters())
        device = torch.device(device) if device is not None else param.device
        dtype = compute_dtype or param.dtype
        if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
            major, minor = torch.cuda.get_device_capability(device)
            if major not in (8, 9):  # the kernel is built for Ampere / Ada / Hopper only
                say(f"FlashAttention-3 has no kernel for this GPU (sm_{major}{minor}; it needs sm_80..sm_90); "
                    "using SDPA")
            elif not _has_kernels():
                say("FlashAttention-3 needs the `kernels` package, which is not installed: "
                    "pip install 'nanochat_hf[gpu]'; using SDPA (slower with sliding windows)")
            else:
                try:
                    self.set_attn_implementation(FA3_KERNEL)
                    return FA3_KERNEL
                except Exception as err:  # no Hub access, no build for this torch/CUDA: stay correct, be slower
                    first = (str(err).strip().splitlines() or [""])[0][:200]
                    say(f"FlashAttention-3 could not load ({type(err).__name__}: {first}); using SDPA")
        self.set_attn_implementation("sdpa")
        return "sdpa"

    # ------------------------------------------------------------------ saving and loading

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' loader, with a damaged weights file or a tensor of the wrong shape reported in one line."""
        if not kwargs.get("subfolder"):
            _check_local_checkpoint(cls, pretrained_model_name_or_path, kwargs.get("config"),
                                    shapes=not kwargs.get("ignore_mismatched_sizes"))
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except Exception as err:
            text = f"{type(err).__name__}: {err}"
            if "safetensor" in text.lower() or "header" in text.lower() or "deserializ" in text.lower():
                raise ValueError(f"cannot read the weights in {pretrained_model_name_or_path} "
                                 f"({text.splitlines()[0][:200]}); the model.safetensors file is truncated or "
                                 "corrupt, re-download or re-save it") from None
            raise

    def save_pretrained(self, save_directory, *args, **kwargs):
        """classic saves as transformers' native `nanochat` (no custom code, no auto_map); modern ships its code."""
        modern = self.config.arch == "modern"
        # FSDP2 turns the instance into a subclass it generates (FSDPNanoChatForCausalLM, defined in torch):
        # transformers would name that class in auto_map and copy torch's files as the model's code. Saved as
        # the model's own class, the folder loads anywhere.
        cls = sharded_cls = type(self)
        if cls.__module__.startswith("torch.distributed"):  # FSDP2's class(FSDPModule, the model's own class)
            cls = cls.__bases__[-1]
        before = cls._auto_class  # transformers reads the class attribute
        cls._auto_class = "AutoModelForCausalLM" if modern else None
        self.config._auto_class = "AutoConfig" if modern else None
        self.__class__ = cls
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            self.__class__ = sharded_cls
            cls._auto_class = before
            self.config._auto_class = None


def _check_local_checkpoint(cls, folder, config=None, shapes: bool = True) -> None:
    """Refuse a local folder whose save did not finish (no weights file: transformers' "no file named
    model.safetensors" would read as a damaged file) or, with `shapes`, whose tensors do not have the shapes its
    config.json gives them. transformers would log a table and raise, or (ignore_mismatched_sizes) re-initialise the
    tensor at random; one line naming the tensor and the file is what a user can act on. Only the safetensors
    headers are read, and the expected shapes come from a model built on the meta device (no memory)."""
    folder = str(folder)
    if not os.path.isdir(folder):
        return  # a Hub id: transformers' own checks apply
    names = os.listdir(folder)
    if not any(n.endswith((".safetensors", ".bin", ".index.json")) for n in names):
        raise FileNotFoundError(f"{folder} has no weights (no model.safetensors); the save that wrote it did not "
                                "finish: run that stage again, or copy the whole model folder")
    files = sorted(f for f in names if f.endswith(".safetensors"))
    if not shapes or not files:
        return
    try:
        from safetensors import safe_open

        if not isinstance(config, NanoChatConfig):
            config = NanoChatConfig.from_pretrained(folder)
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}
        saved = {}
        for name in files:
            with safe_open(os.path.join(folder, name), framework="pt") as f:
                saved.update({k: (name, tuple(f.get_slice(k).get_shape())) for k in f.keys()})
    except Exception:
        return  # an unreadable config or header: the loader below reports it
    for key, (name, shape) in saved.items():
        if key in expected and shape != expected[key]:
            raise ValueError(f"{os.path.join(folder, name)}: tensor {key} has shape {list(shape)}, but config.json "
                             f"makes it {list(expected[key])}; the file is damaged or belongs to another model: "
                             "save or download the checkpoint again")


def _has_kernels() -> bool:
    """Is the `kernels` package (FlashAttention-3 from the Hub) installed? (A hidden one counts as missing.)"""
    import importlib.util

    try:
        return importlib.util.find_spec("kernels") is not None
    except ValueError:  # sys.modules["kernels"] = None
        return False


def check_tokenizer_fits(config: NanoChatConfig, tokenizer) -> None:
    """A tokenizer whose ids run past the embedding table would index out of range mid-run: refuse it now."""
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {config.vocab_size}; "
                         "use the tokenizer the model was trained with (or build the model with "
                         "vocab_size=len(tokenizer))")


def _register() -> None:
    """`AutoConfig` / `AutoModelForCausalLM` resolve both model types to these classes (classic overrides
    transformers' native mapping: same weights and logits, plus nanochat's init and accounting)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    AutoConfig.register("nanochat_modern", NanoChatConfig, exist_ok=True)
    AutoConfig.register("nanochat", NanoChatClassicConfig, exist_ok=True)
    AutoModelForCausalLM.register(NanoChatConfig, NanoChatForCausalLM, exist_ok=True)
    AutoModel.register(NanoChatConfig, NanoChatModel, exist_ok=True)
    # One model class serves both config classes; `register` insists on model.config_class, so go one level down.
    AutoModelForCausalLM._model_mapping.register(NanoChatClassicConfig, NanoChatForCausalLM, exist_ok=True)
    AutoModel._model_mapping.register(NanoChatClassicConfig, NanoChatModel, exist_ok=True)


if __name__.startswith("nanochat_hf."):  # not when transformers imports the copied file as remote code
    _register()

__all__ = ["NanoChatConfig", "NanoChatClassicConfig", "NanoChatModel", "NanoChatForCausalLM"]
