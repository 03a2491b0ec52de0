"""Importing original nanochat checkpoints (both layouts) built here from nanochat's key layout."""

import json
import pickle

import pytest
import torch
from test_model_reference import reference_logits

from nanochat_hf.conversion import convert_nanochat_checkpoint, main as convert_main
from nanochat_hf.modeling import NanoChatForCausalLM

MC = {"sequence_len": 32, "vocab_size": 265, "n_layer": 3, "n_head": 4, "n_kv_head": 2, "n_embd": 32}


def nanochat_state(mc, arch, pad_to=None, seed=0):
    """A state dict with nanochat's GPT keys and shapes (model_<step>.pt), random values."""
    g = torch.Generator().manual_seed(seed)
    L, C, H, KV = mc["n_layer"], mc["n_embd"], mc["n_head"], mc["n_kv_head"]
    D = C // H
    rows = -(-mc["vocab_size"] // pad_to) * pad_to if pad_to else mc["vocab_size"]
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.3  # noqa: E731
    sd = {"transformer.wte.weight": r(rows, C), "lm_head.weight": r(rows, C)}
    for i in range(L):
        p = f"transformer.h.{i}."
        sd.update({p + "attn.c_q.weight": r(H * D, C), p + "attn.c_k.weight": r(KV * D, C),
                   p + "attn.c_v.weight": r(KV * D, C), p + "attn.c_proj.weight": r(C, C),
                   p + "mlp.c_fc.weight": r(4 * C, C), p + "mlp.c_proj.weight": r(C, 4 * C)})
        if arch == "modern" and i % 2 == (L - 1) % 2:
            sd[p + "attn.ve_gate.weight"] = r(KV, 12)
            sd[f"value_embeds.{i}.weight"] = r(rows, KV * D)
    if arch == "modern":
        sd.update({"resid_lambdas": 1 + r(L) / 3, "x0_lambdas": r(L), "smear_gate.weight": r(1, 24),
                   "smear_lambda": r(1), "backout_lambda": r(1)})
    return sd


def write_checkpoint(folder, sd, mc, step=1000, prefix="", dtype=None):
    folder.mkdir(parents=True, exist_ok=True)
    data = {prefix + k: (v.to(dtype) if dtype is not None and "wte" in k else v) for k, v in sd.items()}
    torch.save(data, folder / f"model_{step:06d}.pt")
    (folder / f"meta_{step:06d}.json").write_text(json.dumps({"step": step, "val_bpb": 1.23, "model_config": mc}))
    return folder


def logits_of(out_dir, idx):
    model = NanoChatForCausalLM.from_pretrained(out_dir).double().eval()
    with torch.no_grad():
        return model, model(idx).logits


IDX = torch.randint(0, 265, (2, 9), generator=torch.Generator().manual_seed(1))


def test_modern_checkpoint_with_compile_prefix_bf16_and_padding(tmp_path):
    mc = {**MC, "window_pattern": "SSL"}
    sd = nanochat_state(mc, "modern", pad_to=64)
    src = write_checkpoint(tmp_path / "d3", sd, mc, prefix="_orig_mod.", dtype=torch.bfloat16)
    write_checkpoint(src, nanochat_state(mc, "modern", pad_to=64, seed=9), mc, step=500)  # an older step
    out = convert_nanochat_checkpoint(src, tmp_path / "hf")
    model, got = logits_of(out, IDX)
    cfg = model.config
    assert cfg.arch == "modern" and cfg.window_pattern == "SSL" and cfg.padded_vocab_size == 320
    assert cfg.layer_types == ["sliding_attention", "sliding_attention", "full_attention"]
    ref_sd = {k: v.to(torch.bfloat16).double() if "wte" in k else v.double() for k, v in sd.items()}
    # the 32-token context gives a 128-token short window (nanochat's rule): wider than the sequence here
    ref = reference_logits(ref_sd, mc, "modern", IDX)
    assert (got - ref).abs().max() < 1e-5
    assert json.loads((out / "nanochat_meta.json").read_text())["step"] == 1000  # the latest step by default
    # an explicit step picks that one
    out500 = convert_nanochat_checkpoint(src, tmp_path / "hf500", step=500)
    assert (logits_of(out500, IDX)[1] - got).abs().max() > 1e-3


@pytest.mark.parametrize("pad_to", [None, 64])
def test_classic_checkpoint_becomes_native_nanochat(tmp_path, pad_to):
    """October layout (and Dec 2025's padded vocabulary, sliced to vocab_size) -> transformers' own model type."""
    sd = nanochat_state(MC, "classic", pad_to=pad_to)
    out = convert_nanochat_checkpoint(write_checkpoint(tmp_path / "c", sd, MC), tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["model_type"] == "nanochat"
    model, got = logits_of(out, IDX)
    assert model.config.arch == "classic" and model.lm_head.weight.shape[0] == 265
    ref = reference_logits({k: v.double() for k, v in sd.items()}, MC, "classic", IDX)
    assert (got - ref).abs().max() < 1e-5


def test_tokenizer_pkl_is_imported_and_sets_special_ids(tmp_path):
    tiktoken = pytest.importorskip("tiktoken")
    from nanochat_hf.tokenization import SPECIAL_TOKENS, SPLIT_PATTERN

    ranks = {bytes([i]): i for i in range(256)}  # a byte-level encoding: 256 + 9 specials = 265 ids
    specials = {t: 256 + i for i, t in enumerate(SPECIAL_TOKENS)}
    enc = tiktoken.Encoding(name="rustbpe", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    src = write_checkpoint(tmp_path / "c", nanochat_state(MC, "modern"), {**MC, "window_pattern": "L"})
    with open(src / "tokenizer.pkl", "wb") as f:
        pickle.dump(enc, f)
    out = convert_nanochat_checkpoint(src, tmp_path / "hf")
    assert (out / "tokenizer.json").exists()
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["bos_token_id"] == 256 and gen["eos_token_id"] == [260, 256]  # <|bos|>, [<|assistant_end|>, <|bos|>]
    assert json.loads((out / "config.json").read_text())["bos_token_id"] == 256
    # a tokenizer larger than the model is refused
    small = {**MC, "vocab_size": 200}
    src2 = write_checkpoint(tmp_path / "small", nanochat_state(small, "classic"), small)
    with pytest.raises(ValueError, match="tokenizer has 265 tokens but the model's vocab_size is 200"):
        convert_nanochat_checkpoint(src2, tmp_path / "hf2", tokenizer_path=src / "tokenizer.pkl")


def test_unplaceable_and_inconsistent_checkpoints_are_refused(tmp_path):
    sd = nanochat_state(MC, "modern")
    cases = {
        "extra": ({**sd, "engram.table.weight": torch.zeros(3, 3)}, MC, r"cannot place 1 .*engram\.table\.weight"),
        "partial": ({k: v for k, v in sd.items() if k not in ("smear_lambda", "smear_gate.weight", "backout_lambda")},
                    MC, "lacks smear_lambda, smear_gate.weight, backout_lambda"),
        "shapes": (sd, {**MC, "n_kv_head": 4}, "tensor shapes do not match"),
        "missing": ({k: v for k, v in sd.items() if k != "transformer.h.1.mlp.c_fc.weight"}, MC,
                    r"lacks 1 tensor\(s\).*layers\.1\.mlp\.fc1"),
        "meta": (sd, {k: v for k, v in MC.items() if k != "n_embd"}, "model_config lacks"),
    }
    for name, (state, mc, needle) in cases.items():
        src = write_checkpoint(tmp_path / name, state, mc)
        with pytest.raises(ValueError, match=needle) as err:
            convert_nanochat_checkpoint(src, tmp_path / f"{name}-hf")
        assert "\n" not in str(err.value), name
    (tmp_path / "broken" / "x").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no model_<step>.pt"):
        convert_nanochat_checkpoint(tmp_path / "broken", tmp_path / "o")
    src = write_checkpoint(tmp_path / "nometa", sd, MC)
    (src / "meta_001000.json").unlink()
    with pytest.raises(FileNotFoundError, match="meta_001000.json is missing"):
        convert_nanochat_checkpoint(src, tmp_path / "o")
    src = write_checkpoint(tmp_path / "trunc", sd, MC)
    data = (src / "model_001000.pt").read_bytes()
    (src / "model_001000.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="damaged or incomplete"):
        convert_nanochat_checkpoint(src, tmp_path / "o")


def test_cli(tmp_path, capsys):
    src = write_checkpoint(tmp_path / "c", nanochat_state(MC, "classic"), MC)
    assert convert_main(["checkpoint", str(src), "--output", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").exists()
    assert convert_main(["checkpoint", str(src), "--step", "7", "--output", str(tmp_path / "x")]) == 2
    assert "no model_<step>.pt for step 7" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["classic", "modern"])
def test_forward_past_the_training_length_is_nanochats(tmp_path, arch):
    """A 40-token forward of a 16-token-context checkpoint: RoPE rotates every position and modern's long layers
    stop at a window of the context, as nanochat's (window_size=(sequence_len, 0)); classic keeps full attention."""
    mc = {**MC, "sequence_len": 16, **({"window_pattern": "SL"} if arch == "modern" else {})}
    sd = nanochat_state(mc, arch)
    out = convert_nanochat_checkpoint(write_checkpoint(tmp_path / "c", sd, mc), tmp_path / "hf")
    idx = torch.randint(0, 265, (1, 40), generator=torch.Generator().manual_seed(2))
    _, got = logits_of(out, idx)
    ref = reference_logits({k: v.double() for k, v in sd.items()}, mc, arch, idx)
    assert (got - ref).abs().max() < 1e-5
