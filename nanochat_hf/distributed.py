"""What the training stages share about running on several processes (accelerate: DDP or FSDP2)."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def no_accelerator() -> bool:
    """True without CUDA and MPS. The TRL stages then set `use_cpu`: with it (accelerate's cpu=True)
    `accelerate launch --multi_gpu --num_processes N` forms one gloo group instead of N lone runs."""
    return not torch.cuda.is_available() and not torch.backends.mps.is_available()


def fsdp_fallback_note(accelerator) -> str | None:
    """One line when the launch asked for FSDP (fsdp2.yaml) but accelerate runs something else.

    accelerate selects FSDP only for GPU-like devices: on a CPU-only machine the same launch silently
    becomes a DDP-style group (MULTI_CPU), every rank holding the whole model.
    """
    from accelerate.utils import DistributedType

    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if not asked or accelerator.distributed_type == DistributedType.FSDP:
        return None
    return (f"note: the accelerate config asks for FSDP, but accelerate runs FSDP on GPUs only: this run is "
            f"{accelerator.distributed_type.value} (every rank holds the whole model, nothing is sharded)")


def save_trainer_model(trainer, output_dir: str | Path) -> None:
    """`trainer.save_model(output_dir)`, which also writes the weights under FSDP's SHARDED_STATE_DICT.

    With that setting (recipes/accelerate_configs/fsdp2.yaml) the Trainer shards its checkpoints and writes
    no weights at all in save_model; the final folder must still load with `from_pretrained`, so the shards
    are gathered (a collective: every rank calls this) and the main process saves them.
    """
    acc = trainer.accelerator
    plugin = getattr(acc.state, "fsdp_plugin", None)
    if plugin is None or "FULL_STATE_DICT" in str(plugin.state_dict_type):
        trainer.save_model(str(output_dir))
        return
    state_dict = acc.get_state_dict(trainer.model)
    acc.unwrap_model(trainer.model).save_pretrained(str(output_dir), state_dict=state_dict,
                                                    is_main_process=acc.is_main_process)
    acc.wait_for_everyone()
