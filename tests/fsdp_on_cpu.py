"""Run a stage under accelerate's FSDP2 path on a CPU-only machine (gloo), for the GPU-tier rehearsal.

    accelerate launch --config_file recipes/accelerate_configs/fsdp2.yaml --num_processes 2 \\
        tests/fsdp_on_cpu.py nanochat_hf.pretrain --config recipes/d20/pretrain.yaml ...

accelerate selects FSDP only for GPU-like devices: without this file the same launch on a CPU runs as
MULTI_CPU (DDP-style, nothing sharded; tests/test_rehearsal.py asserts that, so we learn when it
changes). torch's FSDP2 itself runs over gloo, so the one change made here is accelerate's choice:
where it picked MULTI_CPU for a launch whose config asks for FSDP, it takes FSDP, exactly as it
does on GPUs (same plugin, same mixed precision). Everything after that is the unmodified stage.
"""

import runpy
import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_accelerator_state_init = AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _accelerator_state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        # What AcceleratorState.__init__ does for MULTI_GPU when ACCELERATE_USE_FSDP is set.
        self.distributed_type = DistributedType.FSDP
        if self._mixed_precision != "no":
            fsdp_plugin.set_mixed_precision(self._mixed_precision)
        self.fsdp_plugin = fsdp_plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


if __name__ == "__main__":
    AcceleratorState.__init__ = _init_with_fsdp_on_cpu
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
