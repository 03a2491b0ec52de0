"""What the stages share about several processes: FSDP asked for but not run, the final save under FSDP."""

from types import SimpleNamespace

import torch
from accelerate.utils import DistributedType

from nanochat_hf.distributed import fsdp_fallback_note, save_trainer_model


def test_a_cpu_run_of_the_fsdp_config_says_it_is_not_fsdp(monkeypatch):
    multi_cpu = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --config_file fsdp2.yaml` sets
    assert "this run is MULTI_CPU" in fsdp_fallback_note(multi_cpu)
    assert fsdp_fallback_note(SimpleNamespace(distributed_type=DistributedType.FSDP)) is None
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    assert fsdp_fallback_note(multi_cpu) is None  # DDP asked, DDP run: nothing to say


def test_the_final_save_writes_weights_under_a_sharded_state_dict(tiny_tokenizer_dir, tmp_path):
    """With fsdp2.yaml's SHARDED_STATE_DICT, transformers' Trainer.save_model writes no weights at all: the
    stage's folder must still get a model.safetensors that from_pretrained loads."""
    from transformers import AutoModelForCausalLM

    from nanochat_hf.modeling import NanoChatConfig, NanoChatForCausalLM

    model = NanoChatForCausalLM(NanoChatConfig.from_depth(1, vocab_size=1024, head_dim=32, aspect_ratio=64,
                                                          max_position_embeddings=64))
    plugin = SimpleNamespace(state_dict_type="StateDictType.SHARDED_STATE_DICT")
    accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin), is_main_process=True,
                                  get_state_dict=lambda m: m.state_dict(), unwrap_model=lambda m: m,
                                  wait_for_everyone=lambda: None)
    trainer = SimpleNamespace(accelerator=accelerator, model=model,
                              save_model=lambda output_dir: None)  # what the Trainer writes there: nothing
    save_trainer_model(trainer, tmp_path)
    loaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
