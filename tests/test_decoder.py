"""FastDecoder: the Engine's decode step gives the model's own logits, and the Engine's tokens do not change."""

import shutil

import pytest
import torch
import torch.nn.functional as F

from nanochat_hf import NanoChatConfig, NanoChatForCausalLM
from nanochat_hf.decoder import FastDecoder
from nanochat_hf.engine import Engine
from nanochat_hf.kv_cache import SlotCache

VOCAB = 300


def random_model(arch: str, kv_heads: int | None = None, seed: int = 0, depth: int = 4, vocab: int = VOCAB,
                 context: int = 256, head_dim: int = 32) -> NanoChatForCausalLM:
    torch.manual_seed(seed)
    extra = {"num_key_value_heads": kv_heads} if kv_heads else {}
    cfg = NanoChatConfig.from_depth(depth, arch=arch, vocab_size=vocab, max_position_embeddings=context,
                                    head_dim=head_dim, **extra)
    model = NanoChatForCausalLM(cfg).eval()
    with torch.no_grad():  # nanochat's init zeroes some projections and the smear gate; make every path count
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def decode_both(model, steps: int, seed: int = 1):
    """Prefill a left-padded batch into two caches, then decode `steps` random columns through the model's
    forward and through FastDecoder; returns the largest logit difference."""
    g = torch.Generator().manual_seed(seed)
    fast = FastDecoder.for_model(model)
    assert fast is not None
    B, T = 3, 90
    ids = torch.randint(0, VOCAB, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :20], mask[2, :5] = 0, 0  # left padding of different lengths
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    ref_cache, fast_cache = SlotCache(len(model.model.layers)), SlotCache(len(model.model.layers))
    worst = 0.0
    with torch.inference_mode():
        for cache in (ref_cache, fast_cache):
            model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
        p = pos[:, -1] + 1
        for _ in range(steps):
            new = torch.randint(0, VOCAB, (B, 1), generator=g)
            mask = F.pad(mask, (0, 1), value=1)
            ref = model(input_ids=new, attention_mask=mask, position_ids=p[:, None], past_key_values=ref_cache,
                        use_cache=True).logits[:, -1]
            got = fast.step(new, p, fast_cache, mask)
            worst = max(worst, (ref - got).abs().max().item())
            p = p + 1
    return worst


@pytest.mark.parametrize("arch,kv_heads", [("modern", None), ("classic", None), ("modern", 1)])
def test_fast_step_equals_the_model_forward(arch, kv_heads):
    # 90 prompt + 60 decoded positions: modern's short window (128 + the query) is crossed on the way.
    model = random_model(arch, kv_heads)
    assert decode_both(model, steps=60) < 1e-4


def test_the_comparison_can_fail(monkeypatch):
    """A decoder that skips one feature (the smear) must show up as a logit difference."""
    model = random_model("modern")
    with torch.no_grad():
        model.model.smear_lambda.fill_(2.0)
    orig = FastDecoder.step

    def no_smear(self, ids, positions, cache, attention_mask):
        cache.nanochat_prev_embedding = None  # forget the previous token: smear adds nothing
        return orig(self, ids, positions, cache, attention_mask)

    monkeypatch.setattr(FastDecoder, "step", no_smear)
    assert decode_both(model, steps=5) > 1e-3


def test_in_place_weight_updates_are_followed():
    """RL decodes with the model it is training: an optimizer step (in place) must change the decoder's logits."""
    model = random_model("modern")
    fast = FastDecoder.for_model(model)
    ids, pos = torch.tensor([[5]]), torch.tensor([0])
    before = fast.step(ids, pos, SlotCache(4), None)
    with torch.no_grad():
        model.model.resid_lambdas.mul_(0.5)
        model.model.layers[0].mlp.fc1.weight.mul_(2.0)
    after = fast.step(ids, pos, SlotCache(4), None)
    ref = model(input_ids=ids, position_ids=pos[:, None], past_key_values=SlotCache(4), use_cache=True).logits[:, -1]
    assert (before - after).abs().max() > 1e-3
    assert torch.allclose(after, ref, atol=1e-5)


def test_engine_tokens_are_the_same_with_and_without_the_fast_step(tiny_tokenizer):
    from nanochat_hf.chat_format import render_for_completion

    model = random_model("modern", seed=3, depth=2, vocab=len(tiny_tokenizer), head_dim=64)
    prompt = render_for_completion(tiny_tokenizer, [{"role": "user", "content": "Count the letters in strawberry."}])
    fast, slow = Engine(model, tiny_tokenizer), Engine(model, tiny_tokenizer, fast_decode=False)
    assert fast.fast is not None and slow.fast is None
    for kwargs in ({"temperature": 0.0}, {"temperature": 1.0, "top_k": 50, "seed": 3}):
        a = fast.generate_batch(prompt, num_samples=3, max_tokens=40, **kwargs)
        b = slow.generate_batch(prompt, num_samples=3, max_tokens=40, **kwargs)
        assert a == b


def test_other_models_keep_model_forward():
    from transformers import GPT2Config, GPT2LMHeadModel

    assert FastDecoder.for_model(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))) is None


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("clang++")), reason="torch.compile on CPU "
                                                                                 "needs a C++ compiler")
def test_compiled_step_gives_the_eager_tokens(tiny_tokenizer):
    """`Engine(compile=True)` (serve --compile): torch.compile of the same step, same greedy tokens."""
    from nanochat_hf.chat_format import render_for_completion

    model = random_model("modern", seed=4, depth=1, vocab=len(tiny_tokenizer), context=64, head_dim=64)
    prompt = render_for_completion(tiny_tokenizer, [{"role": "user", "content": "Hi"}])
    eager, compiled = Engine(model, tiny_tokenizer), Engine(model, tiny_tokenizer, compile=True)
    for e in (eager, compiled):
        e.stop_ids = set()
    assert compiled.fast._step is not compiled.fast._decode
    want = eager.generate_batch(prompt, max_tokens=12, temperature=0.0)
    assert compiled.generate_batch(prompt, max_tokens=12, temperature=0.0) == want
