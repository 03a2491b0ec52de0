"""nanochat_hf.loading: the local-folder-or-Hub-id rule, the one model loader, the stop tokens every stage saves."""

import json
import pickle
from types import SimpleNamespace

import pytest
import torch

from nanochat_hf import NanoChatConfig, NanoChatForCausalLM
from nanochat_hf.loading import is_hub_id, load_model, set_generation_config
from nanochat_hf.tokenization import save_tokenizer


@pytest.fixture(scope="module")
def model_dir(tiny_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    NanoChatForCausalLM(tiny_model_config(tiny_tokenizer)).save_pretrained(out)
    save_tokenizer(tiny_tokenizer, out)
    return out


def tiny_model_config(tokenizer, vocab_size=None):
    return NanoChatConfig.from_depth(1, arch="classic", vocab_size=vocab_size or len(tokenizer),
                                     max_position_embeddings=64)


def stops(tokenizer):
    return tokenizer.convert_tokens_to_ids(["<|assistant_end|>", "<|bos|>"])


def test_is_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "base").mkdir(parents=True)
    (tmp_path / "sft").mkdir()
    assert is_hub_id("karpathy/nanochat-d32") and is_hub_id("HuggingFaceTB/SmolLM2-135M")
    assert is_hub_id("user/nanochat_d20.v2")
    assert not is_hub_id("runs/base")  # an existing folder is local, even shaped like owner/name
    assert not is_hub_id("runs/tiny/sft")  # a stage folder not written yet: two slashes, never a Hub id
    assert not is_hub_id("sft") and not is_hub_id("gpt2")  # bare names are local: Hub ids name their owner
    assert not is_hub_id(str(tmp_path / "missing"))
    for local in ("./runs/x", "../x/y", "~/x", "/abs/x", "-x/y", "x/", "/x", "a/b c", "a\\b"):
        assert not is_hub_id(local), local
    assert not is_hub_id(tmp_path)  # a PathLike


def test_load_model_on_a_folder(model_dir, tiny_tokenizer):
    model, tok = load_model(str(model_dir), device="cpu")
    assert model.dtype == torch.float32 and model.device.type == "cpu" and not model.training
    assert len(tok) == len(tiny_tokenizer)
    model, _ = load_model(model_dir, dtype="bfloat16")  # a PathLike and a dtype name
    assert model.dtype == torch.bfloat16


def test_missing_folder_and_bad_id_are_one_line_naming_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not found \(no config.json there.*Hub id like owner/name$"):
        load_model(str(tmp_path / "runs" / "tiny" / "sft"))
    with pytest.raises(FileNotFoundError, match="is not a model folder .no config.json.; pretrain one"):
        load_model(str(tmp_path), fix="pretrain one")
    # Offline or online, an id the Hub (or its cache) lacks is one line too.
    with pytest.raises(FileNotFoundError, match=r"could not load 'nobody/no-such-model' from the Hub .*owner/name$"):
        load_model("nobody/no-such-model")


def test_folder_without_weights_says_so(model_dir, tmp_path):
    (tmp_path / "config.json").write_text((model_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="has no weights .no model.safetensors.; the save"):
        NanoChatForCausalLM.from_pretrained(tmp_path)


def test_tokenizer_larger_than_the_model_is_refused(model_dir, tiny_tokenizer, tmp_path):
    NanoChatForCausalLM(tiny_model_config(tiny_tokenizer, vocab_size=300)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=rf"tokenizer has {len(tiny_tokenizer)} tokens but the model's vocab_size"):
        load_model(str(tmp_path), tokenizer=str(model_dir))


def test_set_generation_config(tiny_tokenizer):
    model = NanoChatForCausalLM(tiny_model_config(tiny_tokenizer))
    set_generation_config(model, tiny_tokenizer)
    gen, bos = model.generation_config, tiny_tokenizer.bos_token_id
    assert gen.eos_token_id == stops(tiny_tokenizer) and gen.bos_token_id == gen.pad_token_id == bos
    assert model.config.eos_token_id == stops(tiny_tokenizer) and model.config.bos_token_id == bos


# ----------------------------------------------------------------------------- every stage saves the same stops


def saved_stops(folder):
    return json.loads((folder / "generation_config.json").read_text())["eos_token_id"]


def test_pretrain_save(tiny_tokenizer, tmp_path):
    from nanochat_hf.pretrain import save_final

    model = NanoChatForCausalLM(tiny_model_config(tiny_tokenizer))
    accelerator = SimpleNamespace(unwrap_model=lambda m, **_: m, get_state_dict=lambda m: m.state_dict(),
                                  is_main_process=True, wait_for_everyone=lambda: None)
    save_final(accelerator, model, tiny_tokenizer, tmp_path)
    assert saved_stops(tmp_path) == stops(tiny_tokenizer)


def test_sft_and_mid_save(tiny_tokenizer, tmp_path):
    from nanochat_hf.sft import save_chat_model

    model = NanoChatForCausalLM(tiny_model_config(tiny_tokenizer))
    trainer = SimpleNamespace(model=model, save_model=model.save_pretrained, is_world_process_zero=lambda: True,
                              accelerator=SimpleNamespace(unwrap_model=lambda m: m, state=SimpleNamespace()))
    save_chat_model(trainer, tiny_tokenizer, tmp_path)
    assert saved_stops(tmp_path) == stops(tiny_tokenizer)


def test_rl_save(model_dir, tiny_tokenizer, tmp_path):
    from nanochat_hf.rl import load_model as rl_load_model

    args = SimpleNamespace(model_name_or_path=str(model_dir), tokenizer_name_or_path=None)
    config = SimpleNamespace(trust_remote_code=False, temperature=1.0, top_k=50)
    model, tok = rl_load_model(args, config)  # the generation config the RL run saves is set here
    assert tok.padding_side == "left"
    model.save_pretrained(tmp_path)
    assert saved_stops(tmp_path) == stops(tiny_tokenizer)
    assert json.loads((tmp_path / "generation_config.json").read_text())["do_sample"] is True


def test_conversion_save(tmp_path):
    tiktoken = pytest.importorskip("tiktoken")
    from test_conversion import MC, nanochat_state, write_checkpoint

    from nanochat_hf.conversion import convert_nanochat_checkpoint
    from nanochat_hf.tokenization import SPECIAL_TOKENS, SPLIT_PATTERN

    specials = {t: 256 + i for i, t in enumerate(SPECIAL_TOKENS)}
    enc = tiktoken.Encoding(name="rustbpe", pat_str=SPLIT_PATTERN, mergeable_ranks={bytes([i]): i for i in range(256)},
                            special_tokens=specials)
    src = write_checkpoint(tmp_path / "c", nanochat_state(MC, "classic"), MC)
    with open(src / "tokenizer.pkl", "wb") as f:
        pickle.dump(enc, f)
    out = convert_nanochat_checkpoint(src, tmp_path / "hf")
    assert saved_stops(out) == [specials["<|assistant_end|>"], specials["<|bos|>"]]
