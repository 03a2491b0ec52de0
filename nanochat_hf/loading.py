"""Loading and saving models, for every command and stage: `is_hub_id`, `load_model` (model + tokenizer, dtype,
device, the tokenizer-fits-model check) and `set_generation_config` (the stop tokens every saved folder carries).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# A Hub repo id: owner/name of letters, digits, - _ . (neither part starting with . or -).
HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*/[A-Za-z0-9_][\w.-]*", re.ASCII)
MODEL_FIX = "pass a model folder written by a training stage (e.g. runs/tiny/sft) or a Hub id like owner/name"
STOP_TOKENS = ("<|assistant_end|>", "<|bos|>")


def is_hub_id(name: str | os.PathLike) -> bool:
    """Does `name` mean a Hub repo (`owner/name`) rather than a local path? A path that exists is local; so is one
    starting with `.`, `/` or `~`, with more than one `/`, or a bare name (the Hub's own are legacy redirects)."""
    name = str(name)
    if name.startswith((".", "/", "~")) or Path(name).expanduser().exists():
        return False
    return HUB_ID.fullmatch(name) is not None


def model_source(name: str | os.PathLike, fix: str = MODEL_FIX) -> str:
    """The folder (with `~` expanded) or Hub id to load `name` from; a folder without config.json is refused,
    in one line ending with `fix`."""
    name = str(name)
    if is_hub_id(name):
        return name
    local = Path(name).expanduser()
    if not local.exists():
        raise FileNotFoundError(f"model {name} not found (no config.json there, and not a Hub id owner/name); {fix}")
    if not (local / "config.json").is_file():
        raise FileNotFoundError(f"{name} is not a model folder (no config.json); {fix}")
    return str(local)


def torch_dtype(dtype, device: str | None):
    """"auto" (or None): bf16 on a GPU that has it, else fp32; a name ("bfloat16") or a torch dtype as given."""
    import torch

    if dtype in (None, "auto"):
        cuda = str(device or "").startswith("cuda")
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def load_model(name: str | os.PathLike, device: str | None = None, dtype="auto", tokenizer=None,
               any_model: bool = False, trust_remote_code: bool = False, fix: str = MODEL_FIX):
    """(model, tokenizer) from a stage's output folder or a Hub id.

    device: "auto", a device, or None to leave the model on the CPU (trainers place it). tokenizer: a folder / Hub
    id or a loaded one, when not the model's own. any_model: any causal LM and tokenizer (evaluation; their code is
    trusted), else the tokenizer must be a nanochat one. A tokenizer larger than the model's vocabulary is refused.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nanochat_hf.modeling import check_tokenizer_fits  # the import registers our architectures
    from nanochat_hf.tokenization import load_tokenizer

    source = model_source(name, fix)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    trust_remote_code = trust_remote_code or any_model
    try:
        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
            tok_source = source if tokenizer is None else str(tokenizer)
            tokenizer = (AutoTokenizer.from_pretrained(tok_source, trust_remote_code=True) if any_model
                         else load_tokenizer(tok_source))
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype(dtype, device),
                                                     trust_remote_code=trust_remote_code)
    except OSError as err:
        if not is_hub_id(source):
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise FileNotFoundError(f"could not load {name!r} from the Hub ({first}); {fix}") from None
    if getattr(model.config, "vocab_size", None):
        check_tokenizer_fits(model.config, tokenizer)
    return (model.to(device) if device else model), tokenizer


def set_generation_config(model, tokenizer) -> None:
    """The generation config every stage saves: stop on <|assistant_end|> or <|bos|>, pad with <|bos|>.

    <|assistant_end|> closes a chat turn and <|bos|> starts the next document (where a base model ends one), so
    stopping on both means a folder generates the same way whichever stage wrote it; the ids also go into
    config.json. A tokenizer without these tokens stops on its own EOS and BOS.
    """
    from transformers import GenerationConfig

    vocab = tokenizer.get_vocab()
    stops = [vocab.get(STOP_TOKENS[0], tokenizer.eos_token_id), vocab.get(STOP_TOKENS[1], tokenizer.bos_token_id)]
    stops = list(dict.fromkeys(i for i in stops if i is not None))
    bos = vocab.get(STOP_TOKENS[1], tokenizer.bos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=stops, pad_token_id=pad)
    model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id = bos, stops, pad
