"""The model, both architectures: parity with transformers' native nanochat (classic), the depth rule,
nanochat's init, optimizer groups and FLOPs accounting, cached decode, packing, training plumbing, errors."""

import math

import pytest
import torch
from test_model_reference import randomize

from nanochat_hf import NanoChatConfig, NanoChatForCausalLM
from nanochat_hf.modeling import CACHE_ARG


def tiny(arch, **kw):
    kw = {"vocab_size": 300, "max_position_embeddings": 32, "head_dim": 16, "aspect_ratio": 32,
          "num_key_value_heads": 2, **kw}
    return NanoChatConfig.from_depth(kw.pop("depth", 3), arch=arch, **kw)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("depth,width,heads", [(12, 768, 6), (20, 1280, 10), (24, 1536, 12),
                                               (26, 1664, 13), (32, 2048, 16)])
def test_depth_rule_table(depth, width, heads):
    """nanochat's miniseries sizes: width = ceil(64 depth / 128) * 128, heads of 128."""
    for arch in ("classic", "modern"):
        c = NanoChatConfig.from_depth(depth, arch=arch, vocab_size=32768, max_position_embeddings=2048)
        assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (width, heads, heads, 128)
        assert c.intermediate_size == 4 * width and c.num_hidden_layers == depth and c.arch == arch


def test_modern_windows_and_vocab_padding():
    c = NanoChatConfig.from_depth(6, arch="modern", vocab_size=32770, max_position_embeddings=2048)
    assert c.short_window == 512 and c.window_sizes == [512, 512, 512, 2048, 512, 2048]  # SSSL tiled, last L
    assert c.padded_vocab_size == 32832 and c.rope_parameters["rope_theta"] == 100000
    assert NanoChatConfig.from_depth(4, arch="modern", max_position_embeddings=1000).short_window == 256
    classic = NanoChatConfig.from_depth(4, arch="classic", vocab_size=32770)
    assert classic.padded_vocab_size == 32770 and classic.rope_parameters["rope_theta"] == 10000


@pytest.mark.parametrize("kwargs,needle", [
    (dict(hidden_size=100, num_attention_heads=3), "not divisible by num_attention_heads"),
    (dict(hidden_size=96, num_attention_heads=6, num_key_value_heads=4), "must divide num_attention_heads"),
    (dict(hidden_size=96, num_attention_heads=6, window_pattern="SSX"), "only use the letters S"),
    (dict(hidden_size=96, num_attention_heads=6, head_dim=32), "head_dim 32 x num_attention_heads 6"),
    (dict(arch="gpt2"), "arch must be one of"),
    (dict(vocab_size=0), "vocab_size must be a positive integer"),
    (dict(hidden_act="gelu"), "ReLU^2"),
])
def test_bad_config_is_one_line_error(kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace("^", r"\^")) as err:
        NanoChatConfig(**kwargs)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- classic == native


def test_classic_matches_native_transformers_model(tmp_path):
    """Same names, same logits, same greedy tokens as transformers.NanoChatForCausalLM."""
    from transformers import NanoChatForCausalLM as Native

    model = randomize(NanoChatForCausalLM(tiny("classic", bos_token_id=0, eos_token_id=1))).eval()
    model.save_pretrained(tmp_path)
    native = Native.from_pretrained(tmp_path).eval()
    assert set(native.state_dict()) == set(model.state_dict())
    idx = torch.randint(0, 300, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (native(idx).logits - model(idx).logits).abs().max() <= 1e-5
        a = native.generate(idx[:1, :4], max_new_tokens=12, do_sample=False)
        b = model.generate(idx[:1, :4], max_new_tokens=12, do_sample=False)
    assert torch.equal(a, b)


def test_classic_init_is_nanochat_october():
    model = NanoChatForCausalLM(NanoChatConfig.from_depth(4, arch="classic", vocab_size=512, head_dim=64,
                                                          max_position_embeddings=64))
    d = model.config.hidden_size
    layer = model.model.layers[0]
    assert abs(model.model.embed_tokens.weight.std().item() - 1.0) < 0.05
    assert model.lm_head.weight.abs().max() == 0
    assert layer.self_attn.o_proj.weight.abs().max() == 0 and layer.mlp.fc2.weight.abs().max() == 0
    assert abs(layer.self_attn.q_proj.weight.std().item() - d**-0.5) < 0.1 * d**-0.5
    # fc1 is (4d, d): std = 1/sqrt(d) * min(1, sqrt(4)) = 1/sqrt(d)
    assert abs(layer.mlp.fc1.weight.std().item() - d**-0.5) < 0.1 * d**-0.5
    # fc2 would be (d, 4d): 1/sqrt(4d) * sqrt(1/4); zero anyway. No parameter left at PyTorch's default.


def test_from_pretrained_does_not_reinitialise(tmp_path):
    for arch in ("classic", "modern"):
        model = randomize(NanoChatForCausalLM(tiny(arch)), seed=3)
        model.save_pretrained(tmp_path / arch)
        loaded = NanoChatForCausalLM.from_pretrained(tmp_path / arch)
        for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
            assert torch.equal(a, b), n


def test_auto_classes_resolve_both(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    for arch in ("classic", "modern"):
        NanoChatForCausalLM(tiny(arch)).save_pretrained(tmp_path / arch)
        assert isinstance(AutoConfig.from_pretrained(tmp_path / arch), NanoChatConfig)
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / arch)
        assert type(loaded) is NanoChatForCausalLM and loaded.config.arch == arch
        assert isinstance(AutoModelForCausalLM.from_config(tiny(arch)), NanoChatForCausalLM)


# ----------------------------------------------------------------------------- accounting


@pytest.mark.parametrize("arch", ["classic", "modern"])
def test_param_groups_cover_every_parameter_once(arch):
    model = NanoChatForCausalLM(tiny(arch))
    groups = model.param_groups()
    assert set(groups) == {"embedding", "unembedding", "matrix", "scalar"}
    flat = [id(p) for ps in groups.values() for p in ps]
    assert len(flat) == len(set(flat)) == len(list(model.parameters()))
    assert all(p.ndim == 2 for p in groups["matrix"])
    assert groups["unembedding"] == [model.lm_head.weight]
    n_emb = 1 + (len(model.model.value_embeds) if arch == "modern" else 0)
    assert len(groups["embedding"]) == n_emb
    assert len(groups["scalar"]) == (5 if arch == "modern" else 0)


def test_flops_and_scaling_params_follow_nanochat():
    """d20 numbers by hand: 6 x matmul weights + 12 h q min(window, T) per layer; scaling = blocks + head."""
    for arch in ("classic", "modern"):
        with torch.device("meta"):
            model = NanoChatForCausalLM(NanoChatConfig.from_depth(20, arch=arch, vocab_size=32768))
        d, L, V, T = 1280, 20, 32768, 2048
        block = 12 * d * d  # q, k, v, o (4 d^2) + fc1, fc2 (8 d^2)
        if arch == "classic":
            matmul = L * block + V * d
            attn = L * 12 * d * T
            scaling = L * block + V * d
        else:
            ve_layers = L // 2  # alternating, last included
            gates = ve_layers * 12 * 10 + 24
            matmul = L * block + V * d + gates
            windows = [512 if i % 4 != 3 else T for i in range(L)]  # ceil(2048/4/128)*128
            windows[-1] = T
            attn = sum(12 * d * w for w in windows)
            scaling = L * block + ve_layers * 12 * 10 + V * d
            counts = model.num_params_by_group()
            assert counts["value_embeds"] == ve_layers * V * d and counts["scalars"] == 2 * L + 24 + 2
            assert counts["total"] == sum(p.numel() for p in model.parameters())
        assert model.estimate_flops() == 6 * matmul + attn
        assert model.num_scaling_params() == scaling


# ----------------------------------------------------------------------------- decode, packing, training


@pytest.mark.parametrize("arch", ["classic", "modern"])
def test_cached_decode_equals_full_forward(arch):
    model = randomize(NanoChatForCausalLM(tiny(arch, short_window=4))).double().eval()
    idx = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(idx).logits
        out = model(idx[:, :5], use_cache=True)
        steps = [out.logits]
        for t in range(5, 12):  # past the short window (4): the sliding cache layers drop old keys
            out = model(idx[:, t:t + 1], cache=out[CACHE_ARG], use_cache=True)
            steps.append(out.logits)
        assert (torch.cat(steps, 1) - full).abs().max() < 1e-10
        # generate() with the cache vs a cache-free greedy loop
        gen = model.generate(idx[:1, :5], max_new_tokens=8, do_sample=False)
        ids = idx[:1, :5]
        for _ in range(8):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(gen, ids)


@pytest.mark.parametrize("arch", ["classic", "modern"])
def test_left_padded_batch_generates_like_single_rows(arch):
    model = randomize(NanoChatForCausalLM(tiny(arch, short_window=4, pad_token_id=0))).double().eval()
    a, b = torch.randint(1, 300, (7,)), torch.randint(1, 300, (4,))
    batch = torch.stack([a, torch.cat([torch.zeros(3, dtype=torch.long), b])])
    mask = (torch.arange(7)[None] >= torch.tensor([[0], [3]])).long()
    with torch.no_grad():
        both = model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False)
        alone = model.generate(b[None], max_new_tokens=6, do_sample=False)
    assert torch.equal(both[1, 7:], alone[0, 4:])


@pytest.mark.parametrize("arch", ["classic", "modern"])
def test_packed_documents_do_not_attend_across(arch):
    """Two BOS-led documents in one row with restarting position_ids == each document on its own."""
    model = randomize(NanoChatForCausalLM(tiny(arch, short_window=4))).double().eval()
    g = torch.Generator().manual_seed(4)
    d1, d2 = torch.randint(1, 300, (9,), generator=g), torch.randint(1, 300, (7,), generator=g)
    d1[0] = d2[0] = 0  # BOS
    row = torch.cat([d1, d2])[None]
    pos = torch.cat([torch.arange(9), torch.arange(7)])[None]
    with torch.no_grad():
        packed = model(row, position_ids=pos).logits[0]
        alone1, alone2 = model(d1[None]).logits[0], model(d2[None]).logits[0]
        assert (packed[:9] - alone1).abs().max() < 1e-10
        assert (packed[9:] - alone2).abs().max() < 1e-10
        # and without the position ids, the second document does see the first (the test can fail)
        assert (model(row).logits[0, 9:] - alone2).abs().max() > 1e-3


def test_labels_are_shifted_and_ignore_minus_100():
    model = randomize(NanoChatForCausalLM(tiny("modern")), scale=0.1)
    idx = torch.randint(0, 300, (2, 12))
    labels = idx.clone()
    labels[:, :4] = -100
    out = model(idx, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 300), labels[:, 1:].reshape(-1),
                                                 ignore_index=-100)
    assert torch.allclose(out.loss, expected, atol=1e-6)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("arch", ["classic", "modern"])
def test_gradient_checkpointing_gives_same_gradients(arch):
    idx = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(5))
    grads = []
    for checkpointing in (False, True):
        model = randomize(NanoChatForCausalLM(tiny(arch, short_window=4)), scale=0.1).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(idx, labels=idx).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n


def test_modern_init_is_nanochat_2026():
    cfg = NanoChatConfig.from_depth(4, arch="modern", vocab_size=500, head_dim=64, max_position_embeddings=64)
    model = NanoChatForCausalLM(cfg)
    m, d = model.model, cfg.hidden_size
    s = math.sqrt(3) / math.sqrt(d)
    assert model.config.padded_vocab_size == 512 and m.embed_tokens.weight.shape[0] == 512
    assert abs(m.embed_tokens.weight.std().item() - 0.8) < 0.05
    assert abs(model.lm_head.weight.std().item() - 0.001) < 1e-4
    for layer in m.layers:
        q, fc1 = layer.self_attn.q_proj.weight, layer.mlp.fc1.weight
        assert q.abs().max() <= s and q.abs().max() > 0.9 * s  # uniform with std 1/sqrt(d)
        assert fc1.abs().max() <= 0.4 * s and fc1.abs().max() > 0.35 * s
        assert layer.self_attn.o_proj.weight.abs().max() == 0 and layer.mlp.fc2.weight.abs().max() == 0
    for ve in m.value_embeds.values():
        assert ve.weight.abs().max() <= s
    assert sorted(m.value_embeds) == ["1", "3"]  # alternating, last layer included
    assert torch.allclose(m.resid_lambdas, torch.tensor([1.15, 1.15 - 0.1 / 3, 1.15 - 0.2 / 3, 1.05]))
    assert torch.allclose(m.x0_lambdas, torch.tensor([0.20, 0.15, 0.10, 0.05]))
    assert m.smear_lambda.item() == 0 and m.backout_lambda.item() == pytest.approx(0.2)
    assert 0 <= m.smear_gate.weight.min() and m.smear_gate.weight.max() <= 0.02


def test_compiles_without_graph_breaks_in_training_forward():
    """The training forward (no cache, no mask) traces as one graph: no data-dependent Python branches."""
    model = NanoChatForCausalLM(tiny("modern", short_window=4))
    model.config.use_cache = False
    idx = torch.randint(0, 300, (2, 16))
    explanation = torch._dynamo.explain(lambda x: model(x, labels=x).loss)(idx)
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_oversized_tokenizer_is_refused(tiny_tokenizer):
    from nanochat_hf.modeling import check_tokenizer_fits

    with pytest.raises(ValueError, match=r"tokenizer has \d+ tokens but the model's vocab_size is 300"):
        check_tokenizer_fits(tiny("modern"), tiny_tokenizer)
    check_tokenizer_fits(tiny("modern", vocab_size=len(tiny_tokenizer)), tiny_tokenizer)
