"""nanochat's model configuration, in the two architectures nanochat has had.

    from nanochat_hf import NanoChatConfig
    config = NanoChatConfig.from_depth(20, arch="modern", vocab_size=32768, max_position_embeddings=2048)

- classic: nanochat's October 2025 model, which transformers ships natively as `model_type: "nanochat"`.
  A classic config is saved under that model type and transformers' own field names, so stock
  transformers loads the checkpoint with no custom code.
- modern: nanochat's 2026 model (sliding windows, value embeddings, per-layer lambdas, smear,
  backout). It is saved as `model_type: "nanochat_modern"` with an `auto_map` (trust_remote_code).

This file must not import anything from nanochat_hf by absolute path: save_pretrained copies it
next to the weights for `trust_remote_code=True` loading where nanochat_hf is not installed.
"""

from __future__ import annotations

import math

from transformers import PretrainedConfig

ARCHS = ("classic", "modern")
WINDOW_CHARS = "SL"  # S = short (a quarter of the context, rounded up to 128), L = long (full context)


def has_value_embed(layer_idx: int, num_layers: int) -> bool:
    """Value embeddings sit on alternating layers, the last layer always included."""
    return layer_idx % 2 == (num_layers - 1) % 2


class NanoChatConfig(PretrainedConfig):
    """One config class for both architectures (`arch`); see the module docstring."""

    model_type = "nanochat_modern"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]  # the name moved in transformers 5.24

    def __init__(
        self,
        arch: str | None = None,  # None: "classic" for a native `nanochat` config.json, else "modern"
        vocab_size: int = 32768,
        hidden_size: int = 1280,
        intermediate_size: int | None = None,  # nanochat: 4x hidden
        num_hidden_layers: int = 20,
        num_attention_heads: int = 10,
        num_key_value_heads: int | None = None,  # None = same as heads (nanochat's default, no GQA)
        head_dim: int | None = None,  # None = hidden / heads
        max_position_embeddings: int = 2048,  # nanochat's sequence_len (training context)
        hidden_act: str = "relu2",
        rms_norm_eps: float = 1e-6,
        rope_parameters: dict | None = None,  # None = default RoPE, base 10000 (classic) / 100000 (modern)
        final_logit_softcapping: float | None = 15.0,
        attention_bias: bool = False,
        attention_dropout: float = 0.0,
        initializer_range: float = 0.02,  # unused by nanochat's init; kept for transformers' tooling
        use_cache: bool = True,
        # modern only
        window_pattern: str = "SSSL",
        short_window: int | None = None,  # None = nanochat's rule from max_position_embeddings
        qk_scale: float = 1.2,  # Q and K are each multiplied by this after QK-norm
        pad_vocab_size_to: int = 64,
        value_embed_gate_channels: int = 12,
        smear_gate_channels: int = 24,
        bos_token_id: int | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        if arch is None:
            classic = kwargs.get("model_type") == "nanochat" or type(self).model_type == "nanochat"
            arch = "classic" if classic else "modern"
        kwargs.pop("layer_types", None)  # derived by _set_layer_types
        kwargs.pop("sliding_window", None)
        self.arch = arch
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = 4 * hidden_size if intermediate_size is None else intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.head_dim = head_dim if head_dim is not None else hidden_size // max(num_attention_heads, 1)
        self.max_position_embeddings = max_position_embeddings
        self.hidden_act = hidden_act
        self.rms_norm_eps = rms_norm_eps
        if rope_parameters is None:
            rope_parameters = {"rope_type": "default", "rope_theta": 100000.0 if arch == "modern" else 10000.0}
        self.rope_parameters = dict(rope_parameters)
        self.final_logit_softcapping = final_logit_softcapping
        self.attention_bias = attention_bias
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        self.window_pattern = window_pattern
        self.qk_scale = qk_scale
        self.pad_vocab_size_to = pad_vocab_size_to
        self.value_embed_gate_channels = value_embed_gate_channels
        self.smear_gate_channels = smear_gate_channels
        self._validate()
        self._set_layer_types(short_window)
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)

    def _set_layer_types(self, short_window: int | None):
        """Per-layer attention (saved as `layer_types` for transformers' cache/mask helpers): modern follows
        `window_pattern`, the last layer always full; classic is full everywhere."""
        types = ["full_attention"] * self.num_hidden_layers
        self.short_window = self.sliding_window = None
        if self.arch == "modern":
            # nanochat's short window: a quarter of the context, rounded up to FlashAttention's 128 tile
            ctx = self.max_position_embeddings
            self.short_window = short_window if short_window is not None else -(-ctx // 4 // 128) * 128
            pattern = self.window_pattern.upper()
            types[:-1] = ["sliding_attention" if pattern[i % len(pattern)] == "S" else "full_attention"
                          for i in range(self.num_hidden_layers - 1)]
            # transformers counts the query token in `sliding_window`; nanochat's window (left, 0) does not.
            self.sliding_window = self.short_window + 1 if "sliding_attention" in types else None
        self.layer_types = types

    # ------------------------------------------------------------------ validation

    def _validate(self):
        """Bad sizes fail here, in one line, instead of as a shape error deep inside the model."""
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                             f"{self.num_attention_heads}; pick a multiple of the head count")
        if self.head_dim * self.num_attention_heads != self.hidden_size:
            raise ValueError(f"head_dim {self.head_dim} x num_attention_heads {self.num_attention_heads} != "
                             f"hidden_size {self.hidden_size}; nanochat needs width = heads x head_dim")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_key_value_heads {self.num_key_value_heads} must divide num_attention_heads "
                             f"{self.num_attention_heads} (grouped-query attention)")
        if self.hidden_act != "relu2":
            raise ValueError(f"nanochat's MLP is ReLU^2; hidden_act must be 'relu2', got {self.hidden_act!r}")
        if self.arch == "modern":
            pattern = str(self.window_pattern).upper()
            if not pattern or any(c not in WINDOW_CHARS for c in pattern):
                raise ValueError(f"window_pattern {self.window_pattern!r} may only use the letters S (short) and L "
                                 "(long)")
            if self.hidden_size < self.smear_gate_channels or self.head_dim * self.num_key_value_heads < 1 \
                    or self.hidden_size < self.value_embed_gate_channels:
                raise ValueError(f"hidden_size {self.hidden_size} is smaller than the smear/value-embedding gate "
                                 f"inputs ({self.smear_gate_channels}/{self.value_embed_gate_channels})")

    # ------------------------------------------------------------------ derived sizes

    @property
    def padded_vocab_size(self) -> int:
        """modern pads the embedding/head rows to a multiple of 64 (logits are sliced back)."""
        if self.arch != "modern" or not self.pad_vocab_size_to:
            return self.vocab_size
        return -(-self.vocab_size // self.pad_vocab_size_to) * self.pad_vocab_size_to

    @property
    def window_sizes(self) -> list[int]:
        """nanochat's per-layer left window (tokens before the query it may see)."""
        long = self.max_position_embeddings
        return [self.short_window if t == "sliding_attention" else long for t in self.layer_types]

    # ------------------------------------------------------------------ depth rule

    @classmethod
    def from_depth(cls, depth: int, arch: str = "modern", vocab_size: int = 32768, max_position_embeddings: int = 2048,
                   head_dim: int = 128, aspect_ratio: int = 64, **kwargs) -> "NanoChatConfig":
        """nanochat's scaling rule: width = ceil(depth * aspect / head_dim) * head_dim, heads = width / head_dim."""
        if depth <= 0 or head_dim <= 0 or aspect_ratio <= 0:
            raise ValueError(f"depth, head_dim and aspect_ratio must be positive, got {depth}, {head_dim}, "
                             f"{aspect_ratio}")
        width = math.ceil(depth * aspect_ratio / head_dim) * head_dim
        heads = width // head_dim
        kwargs.setdefault("num_key_value_heads", heads)
        if arch == "classic":
            target = NanoChatClassicConfig
        else:
            target = cls if cls is not NanoChatClassicConfig else NanoChatConfig
        return target(arch=arch, vocab_size=vocab_size, hidden_size=width, intermediate_size=4 * width,
                      num_hidden_layers=depth, num_attention_heads=heads, head_dim=head_dim,
                      max_position_embeddings=max_position_embeddings, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """A native `nanochat` config.json becomes a NanoChatClassicConfig (the saved model type picks the class)."""
        config_dict, _ = cls.get_config_dict(pretrained_model_name_or_path, **kwargs)
        if cls is NanoChatConfig and config_dict.get("model_type") == "nanochat":
            return NanoChatClassicConfig.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def to_dict(self):
        out = super().to_dict()
        # The saved model type follows the architecture: classic checkpoints are transformers' native `nanochat`.
        out["model_type"] = "nanochat" if self.arch == "classic" else "nanochat_modern"
        if self.arch == "classic":
            # All layers are full attention; a saved `layer_types` would make transformers' generate() hand the
            # native class {layer type: mask}, which its forward does not take (static cache).
            out.pop("layer_types", None)
        return out


class NanoChatClassicConfig(NanoChatConfig):
    """The classic architecture under transformers' native model type, so `AutoConfig` maps `nanochat` to us."""

    model_type = "nanochat"

    def __init__(self, arch: str = "classic", **kwargs):
        super().__init__(arch=arch, **kwargs)
