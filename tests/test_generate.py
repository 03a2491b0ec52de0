"""`model.generate()` decodes the same with the KV cache as without it, on whatever transformers is installed.

The cache is where transformers' conventions move under a custom model (5.24 renamed the argument
generate() passes to forward from `past_key_values` to `cache`; a forward that misses it decodes every
step without its past). So each case compares generate(use_cache=True) with generate(use_cache=False)
token by token and logit by logit: both architectures, the dynamic and the static cache, prompts with and
without left padding, sliding windows crossed, in this process and from a saved folder in a process
where nanochat_hf cannot be imported (shipped remote code for modern, transformers' native class for classic).
"""

import itertools
import json
import os
import subprocess
import sys

import pytest
from test_model_reference import randomize

from nanochat_hf import NanoChatConfig, NanoChatForCausalLM

# Shared by this process and the fresh one (which cannot import this file's package).
CHECK = '''
import torch

def prompts(padded):
    ids = torch.randint(1, 300, (2, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    if padded:
        ids[1, :5], mask[1, :5] = 0, 0
    return ids, mask

def cache_vs_no_cache(model, cache, padded):
    """(same greedy tokens, max |logit difference|) of generate() with the cache vs without it."""
    ids, mask = prompts(padded)
    kw = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None,
              output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        cached = model.generate(ids, use_cache=True, cache_implementation=cache, **kw)
        plain = model.generate(ids, use_cache=False, **kw)
    assert cached.sequences.shape[1] == 22, cached.sequences.shape
    diff = max((a - b).abs().max().item() for a, b in zip(cached.logits, plain.logits, strict=True))
    return bool(torch.equal(cached.sequences, plain.sequences)), diff
'''
_shared = {}
exec(CHECK, _shared)  # the same prompts() and cache_vs_no_cache() the fresh process runs
cache_vs_no_cache = _shared["cache_vs_no_cache"]

CASES = list(itertools.product(("dynamic", "static"), (False, True)))

FRESH = CHECK + '''
import sys, json
sys.modules["nanochat_hf"] = None  # installed editable: hiding the path would not be enough
try:
    import nanochat_hf  # noqa: F401
    raise SystemExit("nanochat_hf is importable: the test would prove nothing")
except ImportError:
    pass
from transformers import AutoModelForCausalLM
for folder in sys.argv[1:]:
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=folder.endswith("modern")).eval()
    for cache, padded in %r:
        same, diff = cache_vs_no_cache(model, cache, padded)
        print(json.dumps([folder.rsplit("/", 1)[-1], type(model).__module__, cache, padded, same, diff]))
''' % CASES


def model_for(arch):
    # short_window=4 < the 22 tokens decoded: the sliding layers drop keys mid-generation
    cfg = NanoChatConfig.from_depth(2, arch=arch, vocab_size=300, max_position_embeddings=64, head_dim=16,
                                    aspect_ratio=32, num_key_value_heads=2, short_window=4, pad_token_id=0,
                                    bos_token_id=1, eos_token_id=2)
    return randomize(NanoChatForCausalLM(cfg), scale=0.2).eval()


@pytest.mark.parametrize("arch", ["modern", "classic"])
@pytest.mark.parametrize("cache,padded", CASES)
def test_generate_with_cache_equals_without(arch, cache, padded):
    same, diff = cache_vs_no_cache(model_for(arch), cache, padded)
    assert same and diff < 1e-4, (same, diff)


def test_generate_without_the_cache_argument_is_caught():
    """The comparison fails when forward ignores the cache it is given (what transformers 5.24 did to us)."""
    model = model_for("modern")
    forward = type(model).forward

    def forgetful(self, *args, cache=None, past_key_values=None, attention_mask=None, **kw):
        return forward(self, *args, **kw)  # as if the cache (and so its mask) arrived under a name forward ignores

    type(model).forward = forgetful
    try:
        same, diff = cache_vs_no_cache(model, "dynamic", False)
    finally:
        type(model).forward = forward
    assert not same or diff > 1e-2, (same, diff)


def test_saved_folder_generates_with_cache_in_a_process_without_nanochat_hf(tmp_path):
    folders = []
    for arch in ("classic", "modern"):
        model_for(arch).save_pretrained(tmp_path / arch)
        folders.append(str(tmp_path / arch))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TRANSFORMERS_VERBOSITY="error")
    run = subprocess.run([sys.executable, "-c", FRESH, *folders], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("[")]
    assert len(rows) == 2 * len(CASES)
    for name, module, cache, padded, same, diff in rows:
        if name == "classic":
            assert module == "transformers.models.nanochat.modeling_nanochat"  # no custom code at all
        else:
            assert module.startswith("transformers_modules.")  # the modeling.py shipped in the folder
        assert same and diff < 1e-4, (name, cache, padded, same, diff)
