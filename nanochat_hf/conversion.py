"""Import artefacts of the original karpathy/nanochat into Hugging Face formats.

    nanochat-hf convert tokenizer ~/.cache/nanochat/tokenizer/tokenizer.pkl --output DIR
    nanochat-hf convert checkpoint ~/.cache/nanochat/base_checkpoints/d20 --output out/d20-hf \\
        [--step N] [--tokenizer tokenizer.pkl]

`tokenizer`: a pickled tiktoken encoding -> a `PreTrainedTokenizerFast` folder with identical ids.
`checkpoint`: nanochat's `model_<step>.pt` (a state dict, its names in KEY_MAP below) + `meta_<step>.json` (its
`model_config`: sequence_len, vocab_size, n_layer, n_head, n_kv_head, n_embd, window_pattern) + `tokenizer.pkl` when
there -> a Hub-ready model folder. The architecture is read from the keys (the 2026 model adds value embeddings,
lambdas, smear and backout); every tensor is placed or the import stops with an error naming it.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import sys
from pathlib import Path

from nanochat_hf.errors import run_main

# nanochat name pattern -> our name (native transformers names for the shared part).
KEY_MAP = [
    (r"transformer\.wte\.weight", "model.embed_tokens.weight"),
    (r"transformer\.h\.(\d+)\.attn\.c_q\.weight", r"model.layers.\1.self_attn.q_proj.weight"),
    (r"transformer\.h\.(\d+)\.attn\.c_k\.weight", r"model.layers.\1.self_attn.k_proj.weight"),
    (r"transformer\.h\.(\d+)\.attn\.c_v\.weight", r"model.layers.\1.self_attn.v_proj.weight"),
    (r"transformer\.h\.(\d+)\.attn\.c_proj\.weight", r"model.layers.\1.self_attn.o_proj.weight"),
    (r"transformer\.h\.(\d+)\.attn\.ve_gate\.weight", r"model.layers.\1.self_attn.ve_gate.weight"),
    (r"transformer\.h\.(\d+)\.mlp\.c_fc\.weight", r"model.layers.\1.mlp.fc1.weight"),
    (r"transformer\.h\.(\d+)\.mlp\.c_proj\.weight", r"model.layers.\1.mlp.fc2.weight"),
    (r"lm_head\.weight", "lm_head.weight"),
    (r"value_embeds\.(\d+)\.weight", r"model.value_embeds.\1.weight"),
    (r"(resid_lambdas|x0_lambdas|smear_lambda|backout_lambda)", r"model.\1"),
    (r"smear_gate\.weight", "model.smear_gate.weight"),
]
MODERN_MARKERS = ("resid_lambdas", "x0_lambdas", "smear_lambda", "smear_gate.weight", "backout_lambda")


# ----------------------------------------------------------------------------- tokenizer.pkl


def convert_tiktoken_tokenizer(pkl_path: str | os.PathLike, output_dir: str | os.PathLike):
    """nanochat's `tokenizer.pkl` (a pickled `tiktoken.Encoding`) -> our format with identical ids."""
    from nanochat_hf.tokenization import SPECIAL_TOKENS, SPLIT_PATTERN, save_tokenizer, tokenizer_from_ranks

    path = Path(pkl_path).expanduser()
    if path.is_dir():
        path = path / "tokenizer.pkl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; pass nanochat's tokenizer.pkl (in ~/.cache/nanochat/tokenizer/)")
    try:
        import tiktoken  # noqa: F401  (unpickling needs the class)
    except ImportError:
        raise ValueError("reading tokenizer.pkl needs tiktoken: pip install tiktoken") from None
    with open(path, "rb") as f:
        enc = pickle.load(f)
    ranks = getattr(enc, "_mergeable_ranks", None)
    specials = getattr(enc, "_special_tokens", None)
    if ranks is None or specials is None:
        raise ValueError(f"{path} does not hold a tiktoken Encoding")
    if enc._pat_str != SPLIT_PATTERN:
        raise ValueError(f"{path} uses a different split pattern than nanochat's; it cannot be imported as "
                         "a nanochat tokenizer")
    expected = {t: len(ranks) + i for i, t in enumerate(SPECIAL_TOKENS)}
    if specials != expected:
        raise ValueError(f"{path} has special tokens {specials}, expected nanochat's 9 right after the "
                         f"{len(ranks)} merged tokens")
    # By hand rather than transformers' convert_tiktoken_to_fast (which needs blobfile): the same
    # builder as training, so an imported tokenizer and a trained one are the same kind of folder.
    tokenizer = tokenizer_from_ranks(dict(ranks))
    save_tokenizer(tokenizer, output_dir)
    return tokenizer


# ----------------------------------------------------------------------------- checkpoint folder


def find_step(src: Path, step: int | None) -> tuple[Path, Path, int]:
    """model_<step>.pt and meta_<step>.json (nanochat zero-pads steps to 6 digits); the latest by default."""
    found = {}
    for path in src.glob("model_*.pt"):
        m = re.fullmatch(r"model_(\d+)\.pt", path.name)
        if m:
            found[int(m.group(1))] = path
    if not found:
        raise FileNotFoundError(f"no model_<step>.pt in {src}; point at a nanochat checkpoint folder (e.g. "
                                "base_checkpoints/d20)")
    step = max(found) if step is None else step
    if step not in found:
        raise FileNotFoundError(f"no model_<step>.pt for step {step} in {src}; available steps: {sorted(found)}")
    meta = found[step].with_name(found[step].name.replace("model_", "meta_").replace(".pt", ".json"))
    if not meta.exists():
        raise FileNotFoundError(f"{meta.name} is missing next to {found[step].name}; nanochat writes both, "
                                "copy it too")
    return found[step], meta, step


def detect_arch(state: dict) -> str:
    """modern (2026) checkpoints carry the per-layer lambdas, smear and backout; October 2025 ones do not."""
    present = [k for k in MODERN_MARKERS if k in state]
    if not present and not any(k.startswith("value_embeds.") for k in state):
        return "classic"
    missing = [k for k in MODERN_MARKERS if k not in state]
    if missing:
        raise ValueError(f"checkpoint has some 2026-architecture tensors ({', '.join(present)}) but lacks "
                         f"{', '.join(missing)}; only nanochat's October 2025 and 2026 layouts can be imported")
    return "modern"


def config_from_meta(model_config: dict, arch: str):
    """The `NanoChatConfig` of nanochat's GPTConfig fields."""
    from nanochat_hf.configuration import NanoChatConfig

    missing = [k for k in ["sequence_len", "vocab_size", "n_layer", "n_head", "n_embd"] if k not in model_config]
    if missing:
        raise ValueError(f"meta json model_config lacks {missing}; it must hold nanochat's GPTConfig fields")
    n_embd, n_head = int(model_config["n_embd"]), int(model_config["n_head"])
    if n_embd % n_head:
        raise ValueError(f"meta json model_config: n_embd {n_embd} is not divisible by n_head {n_head}")
    extra = {}
    if arch == "modern":
        # Older 2026 checkpoints predate window_pattern: nanochat patches it to full context ("L").
        extra["window_pattern"] = model_config.get("window_pattern", "L")
    return NanoChatConfig(arch=arch, vocab_size=int(model_config["vocab_size"]), hidden_size=n_embd,
                          intermediate_size=4 * n_embd, num_hidden_layers=int(model_config["n_layer"]),
                          num_attention_heads=n_head, num_key_value_heads=int(model_config.get("n_kv_head", n_head)),
                          head_dim=n_embd // n_head,
                          max_position_embeddings=int(model_config["sequence_len"]), **extra)


def map_state_dict(state: dict, config) -> dict:
    """Rename every tensor; refuse any that has no place (nothing is silently dropped)."""
    import torch

    out, unplaced = {}, []
    for key, tensor in state.items():
        for pattern, target in KEY_MAP:
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, target, key)] = tensor.detach().to(torch.float32)
                break
        else:
            unplaced.append(key)
    if unplaced:
        raise ValueError(f"cannot place {len(unplaced)} checkpoint tensor(s) in a {config.arch} model: {unplaced[:5]}"
                         f"{' ...' if len(unplaced) > 5 else ''}; is this a nanochat GPT checkpoint?")
    # Dec 2025 checkpoints pad the vocabulary to 64 rows while the native classic model has exactly vocab_size;
    # the modern model always pads. Padding rows never reach the logits (they are sliced off), so both are safe.
    rows = config.padded_vocab_size
    for key, tensor in list(out.items()):
        if key in ("model.embed_tokens.weight", "lm_head.weight") or key.startswith("model.value_embeds."):
            if tensor.shape[0] > rows >= config.vocab_size:
                out[key] = tensor[:rows].clone()
            elif config.vocab_size <= tensor.shape[0] < rows:
                out[key] = torch.cat([tensor, tensor.new_zeros(rows - tensor.shape[0], *tensor.shape[1:])])
    return out


def convert_nanochat_checkpoint(src_dir, output_dir, step: int | None = None, tokenizer_path=None) -> Path:
    """nanochat checkpoint folder -> Hub-ready folder (config.json, model.safetensors, generation_config.json,
    tokenizer)."""
    import torch

    from nanochat_hf.modeling import NanoChatForCausalLM, check_tokenizer_fits

    src, out_dir = Path(src_dir), Path(output_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"checkpoint folder {src} does not exist")
    model_path, meta_path, step = find_step(src, step)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta_path} is not valid JSON ({err}); re-copy it from the nanochat run") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model_config"), dict):
        raise ValueError(f"{meta_path} has no 'model_config' object; it is not a nanochat meta file")
    try:
        state = torch.load(model_path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or not a torch file
        raise ValueError(f"cannot read {model_path} ({type(err).__name__}: {str(err).splitlines()[0]}); "
                         "the file is damaged or incomplete") from None
    if not isinstance(state, dict):
        raise ValueError(f"{model_path} does not hold a state dict")
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}  # torch.compile's wrapper prefix
    arch = detect_arch(state)
    config = config_from_meta(meta["model_config"], arch)
    weights = map_state_dict(state, config)

    with torch.device("meta"):
        model = NanoChatForCausalLM(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} tensor(s) the {arch} model needs: {missing[:5]}")
    bad = [f"{k} {tuple(weights[k].shape)} != {tuple(s)}" for k, s in expected.items() if weights[k].shape != s]
    if bad:
        raise ValueError(f"tensor shapes do not match meta json model_config: {bad[:3]}")
    model.load_state_dict(weights, strict=True, assign=True)
    model.model.rotary_emb.inv_freq = model.model.rotary_emb.compute_inv_freq(config)  # not in the checkpoint
    model.eval()

    out_dir.mkdir(parents=True, exist_ok=True)
    pkl = Path(tokenizer_path) if tokenizer_path else src / "tokenizer.pkl"
    if tokenizer_path and not pkl.exists():
        raise FileNotFoundError(f"tokenizer {pkl} does not exist")
    if pkl.exists():
        from nanochat_hf.loading import set_generation_config
        from nanochat_hf.tokenization import load_tokenizer

        convert_tiktoken_tokenizer(str(pkl), str(out_dir))
        tokenizer = load_tokenizer(str(out_dir))
        check_tokenizer_fits(config, tokenizer)
        set_generation_config(model, tokenizer)
    model.save_pretrained(out_dir)
    (out_dir / "nanochat_meta.json").write_text(json.dumps({"source": str(src.name), "step": step, **{
        k: v for k, v in meta.items() if k in ("val_bpb", "model_config", "user_config")}}, indent=2, default=str))
    print(f"imported {arch} nanochat step {step}: {sum(v.numel() for v in weights.values()):,} "
          f"parameters -> {out_dir}")
    return out_dir


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nanochat-hf convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    tok = sub.add_parser("tokenizer", help="import a nanochat tokenizer.pkl (tiktoken encoding)")
    tok.add_argument("path", help="path to tokenizer.pkl (or the folder holding it)")
    tok.add_argument("--output", required=True, help="output folder")
    ckpt = sub.add_parser("checkpoint", help="import a nanochat checkpoint folder (model_*.pt, meta_*.json)")
    ckpt.add_argument("path", help="folder with model_<step>.pt and meta_<step>.json")
    ckpt.add_argument("--step", type=int, default=None, help="which step to import (default: the latest)")
    ckpt.add_argument("--tokenizer", default=None,
                      help="tokenizer.pkl to import alongside (default: PATH/tokenizer.pkl if present)")
    ckpt.add_argument("--output", required=True, help="output folder")
    args = parser.parse_args(argv)
    return run_main(f"nanochat-hf convert {args.what}", lambda: _run(args))


def _run(args) -> None:
    if args.what == "tokenizer":
        convert_tiktoken_tokenizer(args.path, args.output)
    else:
        convert_nanochat_checkpoint(args.path, args.output, step=args.step, tokenizer_path=args.tokenizer)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    sys.exit(main())
