"""Optional dependencies: a feature whose package is not installed stops with one line naming the extra.

    pip install 'nanochat_hf[gpu]'    # torchao (fp8 training), kernels (FlashAttention-3 from the Hub)
    pip install 'nanochat_hf[vllm]'   # vLLM generation for RL (use_vllm: true), in the range TRL supports
"""

from __future__ import annotations

import importlib
import importlib.util

EXTRAS = {"torchao": "gpu", "kernels": "gpu", "vllm": "vllm"}  # top-level module -> the extra that installs it


def install_hint(module: str) -> str:
    return f"pip install 'nanochat_hf[{EXTRAS[module.split('.')[0]]}]'"


def require(module: str, feature: str):
    """Import `module` for `feature`, or raise a one-line ValueError that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(f"{feature} needs {module.split('.')[0]}, which is not installed: "
                         f"{install_hint(module)}") from None


def available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # sys.modules[module] = None (how the tests hide a package)
        return False
