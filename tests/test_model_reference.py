"""A straightforward re-statement of nanochat's GPT forward pass (both architectures), written from
nanochat's description with explicit loops and masks, on nanochat's own weight names. The model tests and
the conversion tests compare against it; the tests in this file check the reference itself."""

import math

import torch
import torch.nn.functional as F

VE_GATE_CHANNELS, SMEAR_CHANNELS = 12, 24


def to_nanochat_state(model) -> dict[str, torch.Tensor]:
    """Our (native transformers) names -> nanochat's names, written out by hand (independent of conversion.py)."""
    out = {}
    for name, t in model.state_dict().items():
        parts = name.split(".")
        if name == "model.embed_tokens.weight":
            key = "transformer.wte.weight"
        elif name == "lm_head.weight":
            key = "lm_head.weight"
        elif parts[1] == "layers":
            i, sub, proj = parts[2], parts[3], parts[4]
            nano = {"q_proj": "c_q", "k_proj": "c_k", "v_proj": "c_v", "o_proj": "c_proj", "ve_gate": "ve_gate",
                    "fc1": "c_fc", "fc2": "c_proj"}[proj]
            key = f"transformer.h.{i}.{'attn' if sub == 'self_attn' else 'mlp'}.{nano}.weight"
        elif parts[1] == "value_embeds":
            key = f"value_embeds.{parts[2]}.weight"
        else:  # model.resid_lambdas, model.smear_gate.weight, ...
            key = ".".join(parts[1:])
        out[key] = t.detach().clone()
    return out


def nanochat_model_config(config) -> dict:
    """nanochat's GPTConfig fields for one of our configs (what meta_<step>.json stores)."""
    cfg = {"sequence_len": config.max_position_embeddings, "vocab_size": config.vocab_size,
           "n_layer": config.num_hidden_layers, "n_head": config.num_attention_heads,
           "n_kv_head": config.num_key_value_heads, "n_embd": config.hidden_size}
    if config.arch == "modern":
        cfg["window_pattern"] = config.window_pattern
    return cfg


def _norm(x, eps=1e-6):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _rope(x, pos, base):
    """x: (T, H, D). nanochat rotates the halves by -theta: y1 = x1 cos + x2 sin, y2 = -x1 sin + x2 cos."""
    d = x.shape[-1] // 2
    inv = 1.0 / (base ** (torch.arange(0, 2 * d, 2, dtype=torch.float64) / (2 * d)))
    ang = pos[:, None].double() * inv[None]  # (T, d)
    cos, sin = ang.cos()[:, None].to(x.dtype), ang.sin()[:, None].to(x.dtype)
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], -1)


def reference_logits(state, mc, arch, idx, short_window=None, positions=None):
    """Logits (B, T, vocab) of nanochat's GPT for token ids `idx`, one sequence at a time, attention by loops.

    `positions` (optional, per row) restart at 0 at each packed document: attention and smear then stay
    inside a document, as if each document were its own row."""
    L, H, KV, C, V = mc["n_layer"], mc["n_head"], mc["n_kv_head"], mc["n_embd"], mc["vocab_size"]
    D, T_ctx = C // H, mc["sequence_len"]
    modern = arch == "modern"
    base = 100000.0 if modern else 10000.0
    if modern:
        pattern = mc.get("window_pattern", "L").upper()
        short = short_window if short_window is not None else -(-T_ctx // 4 // 128) * 128
        windows = [short if pattern[i % len(pattern)] == "S" else T_ctx for i in range(L)]
        windows[-1] = T_ctx
    else:
        windows = [None] * L  # October 2025: plain causal attention, no window at any length
    W = state
    rows = []
    for b in range(idx.shape[0]):
        ids = idx[b]
        T = ids.shape[0]
        pos = positions[b] if positions is not None else torch.arange(T)
        doc = torch.cumsum((pos == 0).long(), 0)  # document number of each token
        x = _norm(W["transformer.wte.weight"][ids])
        if modern:
            smeared = x.clone()
            for t in range(1, T):
                if pos[t] != 0:
                    g = W["smear_lambda"] * torch.sigmoid(x[t, :SMEAR_CHANNELS] @ W["smear_gate.weight"][0])
                    smeared[t] = x[t] + g * x[t - 1]
            x = smeared
        x0, x_backout = x, None
        for i in range(L):
            p = f"transformer.h.{i}."
            if modern:
                x = W["resid_lambdas"][i] * x + W["x0_lambdas"][i] * x0
            h = _norm(x)
            q = (h @ W[p + "attn.c_q.weight"].T).view(T, H, D)
            k = (h @ W[p + "attn.c_k.weight"].T).view(T, KV, D)
            v = (h @ W[p + "attn.c_v.weight"].T).view(T, KV, D)
            if modern and f"value_embeds.{i}.weight" in W:
                ve = W[f"value_embeds.{i}.weight"][ids].view(T, KV, D)
                gate = 3 * torch.sigmoid(h[:, :VE_GATE_CHANNELS] @ W[p + "attn.ve_gate.weight"].T)  # (T, KV)
                v = v + gate[..., None] * ve
            q, k = _norm(_rope(q, pos, base)), _norm(_rope(k, pos, base))
            if modern:
                q, k = q * 1.2, k * 1.2
            y = torch.zeros(T, H, D, dtype=x.dtype)
            for t in range(T):
                keys = [s for s in range(t + 1) if doc[s] == doc[t] and (windows[i] is None or t - s <= windows[i])]
                for head in range(H):
                    kvh = head // (H // KV)
                    scores = torch.stack([q[t, head] @ k[s, kvh] for s in keys]) / math.sqrt(D)
                    w = torch.softmax(scores, 0)
                    y[t, head] = sum(w[j] * v[s, kvh] for j, s in enumerate(keys))
            x = x + y.reshape(T, C) @ W[p + "attn.c_proj.weight"].T
            h = _norm(x)
            x = x + F.relu(h @ W[p + "mlp.c_fc.weight"].T).square() @ W[p + "mlp.c_proj.weight"].T
            if modern and i == L // 2:
                x_backout = x
        if modern:
            x = x - W["backout_lambda"] * x_backout
        logits = (_norm(x) @ W["lm_head.weight"].T)[:, :V]
        rows.append(15 * torch.tanh(logits / 15))
    return torch.stack(rows)


def randomize(model, seed=0, scale=0.3):
    """Non-trivial weights everywhere (nanochat's init zeroes projections and smear; tests need them live)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
        if hasattr(model.model, "resid_lambdas"):
            model.model.resid_lambdas.copy_(1.0 + 0.1 * torch.randn(model.config.num_hidden_layers, generator=g))
    return model


# ----------------------------------------------------------------------------- the reference itself


def test_reference_matches_transformers_native_nanochat():
    """The reference agrees with transformers' own classic nanochat implementation (so it is nanochat's math)."""
    from transformers import NanoChatConfig as NativeConfig, NanoChatForCausalLM as Native

    cfg = NativeConfig(vocab_size=97, hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=32)
    torch.manual_seed(0)
    native = Native(cfg).double().eval()
    with torch.no_grad():
        for p in native.parameters():
            p.normal_(0, 0.3)
    idx = torch.randint(0, 97, (2, 11))
    state = {}
    for name, t in native.state_dict().items():  # same names as ours
        state[name] = t
    fake = type("M", (), {"state_dict": lambda self: state})()
    nano = to_nanochat_state(fake)
    mc = {"sequence_len": 32, "vocab_size": 97, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 32}
    ref = reference_logits(nano, mc, "classic", idx)
    with torch.no_grad():
        got = native(idx).logits
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()  # native RoPE tables are fp32
