"""The modern (2026) architecture against the straightforward reference in test_model_reference.py:
every feature (windows, value embeddings, lambdas, smear, backout, QK scale, vocab padding) is live in the
weights, and switching each one off in both the model and the reference shows the test can fail."""

import pytest
import torch
from test_model_reference import nanochat_model_config, randomize, reference_logits, to_nanochat_state

from nanochat_hf import NanoChatConfig, NanoChatForCausalLM


def modern_model(**kw):
    kw = {"vocab_size": 90, "max_position_embeddings": 32, "head_dim": 8, "aspect_ratio": 8,
          "num_key_value_heads": 2, "short_window": 3, "window_pattern": "SL", **kw}
    cfg = NanoChatConfig.from_depth(kw.pop("depth", 4), arch="modern", **kw)  # width 32, 4 heads, 2 kv heads
    return randomize(NanoChatForCausalLM(cfg), seed=11).double().eval()


def compare(model, idx, positions=None):
    ref = reference_logits(to_nanochat_state(model), nanochat_model_config(model.config), "modern", idx,
                           short_window=model.config.short_window, positions=positions)
    with torch.no_grad():
        got = model(idx, position_ids=positions).logits
    return (got - ref).abs().max().item(), ref


IDX = torch.randint(0, 90, (2, 10), generator=torch.Generator().manual_seed(7))


def test_modern_forward_matches_reference():
    model = modern_model()
    assert model.config.padded_vocab_size == 128 and model.lm_head.weight.shape[0] == 128  # padded, sliced back
    assert model.config.layer_types == ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    err, _ = compare(model, IDX)
    assert err < 1e-5  # RoPE tables are fp32 in the model, fp64 in the reference


@pytest.mark.parametrize("feature", ["windows", "value_embeds", "lambdas", "smear", "backout", "qk_scale"])
def test_each_feature_matters_and_matches(feature):
    """Neutralise one feature in the weights/config: the model still matches the reference computed the same
    way, and its logits differ from the full model (so the full-model match above exercised the feature)."""
    model = modern_model()
    with torch.no_grad():
        full = model(IDX).logits
    m = model.model
    if feature == "windows":
        model = modern_model(short_window=64)  # a window wider than the sequence == full attention
    elif feature == "value_embeds":
        with torch.no_grad():
            for e in m.value_embeds.values():
                e.weight.zero_()
    elif feature == "lambdas":
        with torch.no_grad():
            m.resid_lambdas.fill_(1.0)
            m.x0_lambdas.zero_()
    elif feature == "smear":
        with torch.no_grad():
            m.smear_lambda.zero_()
    elif feature == "backout":
        with torch.no_grad():
            m.backout_lambda.zero_()
    elif feature == "qk_scale":
        # the reference hard-codes 1.2: compare a 1.0 model against it and expect a mismatch instead
        cfg = model.config.to_dict()
        cfg.update(qk_scale=1.0)
        cfg.pop("model_type")
        other = NanoChatForCausalLM(NanoChatConfig(**cfg)).double().eval()
        other.load_state_dict(model.state_dict())
        err, _ = compare(other, IDX)
        assert err > 1e-3
        return
    err, _ = compare(model, IDX)
    assert err < 1e-5
    with torch.no_grad():
        assert (model(IDX).logits - full).abs().max() > 1e-3


def test_packed_rows_match_reference_per_document():
    model = modern_model()
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]])
    err, ref = compare(model, IDX, positions=pos)
    assert err < 1e-5
    # the reference itself: the second row (one document) is the plain forward
    plain = reference_logits(to_nanochat_state(model), nanochat_model_config(model.config), "modern", IDX[1:],
                             short_window=3)
    assert torch.allclose(ref[1:], plain)


def test_bf16_forward_runs_and_stays_close():
    model = modern_model()
    with torch.no_grad():
        ref = model(IDX).logits
        low = model.to(torch.bfloat16)(IDX).logits
    assert low.dtype == torch.float32  # softcap and loss in fp32
    assert (low - ref).abs().max() < 0.5


def test_use_fast_attention_falls_back_on_cpu():
    model = modern_model()
    assert model.use_fast_attention() == "sdpa"
    assert model.config._attn_implementation == "sdpa"


def test_flex_and_eager_agree_with_sdpa():
    model = modern_model()
    with torch.no_grad():
        ref = model(IDX).logits
        for impl in ("eager", "flex_attention"):
            try:
                model.set_attn_implementation(impl)
            except (ValueError, ImportError) as err:  # flex may be unavailable on some builds
                pytest.skip(f"{impl}: {err}")
            assert (model(IDX).logits - ref).abs().max() < 1e-5, impl


@pytest.mark.parametrize("arch", ["modern", "classic"])
def test_generate_with_a_static_cache_gives_the_default_tokens(arch):
    """generate(cache_implementation="static") hands the model prebuilt {layer type: mask}; left padding included."""
    torch.manual_seed(0)
    cfg = NanoChatConfig.from_depth(2, arch=arch, vocab_size=300, max_position_embeddings=256, head_dim=32)
    model = NanoChatForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ids = torch.randint(0, 300, (2, 20))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    kwargs = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, cache_implementation="static", **kwargs), model.generate(ids, **kwargs))


@pytest.mark.parametrize("arch", ["classic", "modern"])
def test_left_padded_forward_scores_each_row_as_unpadded(arch):
    """A trainer's forward over left-padded rows without position ids (TRL's GRPO scores prompt + completion
    so) gives each row the log-probs of the row alone: the positions count from its first real token, so the
    smear does not pull the pad into its BOS. RL's gradient is of the same log-probs its samples were drawn from."""
    classic = NanoChatConfig.from_depth(2, arch="classic", vocab_size=90, head_dim=8, aspect_ratio=16)
    model = modern_model() if arch == "modern" else randomize(NanoChatForCausalLM(classic), seed=3).double().eval()
    short, long = IDX[0, :6], IDX[1]
    batch = torch.stack([torch.cat([torch.zeros(4, dtype=torch.long), short]), long])
    mask = torch.stack([torch.cat([torch.zeros(4, dtype=torch.long), torch.ones(6, dtype=torch.long)]),
                        torch.ones(10, dtype=torch.long)])
    with torch.no_grad():
        padded = model(batch, attention_mask=mask).logits
        alone = [model(row[None]).logits[0] for row in (short, long)]
    assert (padded[0, 4:] - alone[0]).abs().max().item() < 1e-9
    assert (padded[1] - alone[1]).abs().max().item() < 1e-9
