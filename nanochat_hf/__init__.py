"""nanochat_hf: karpathy/nanochat rebuilt on the Hugging Face stack."""

__version__ = "0.1.0"

# The model classes are imported lazily so that `nanochat-hf --help` and the tokenizer
# stage start without importing torch/transformers' model code.
_LAZY = {
    "NanoChatConfig": "nanochat_hf.modeling",  # importing modeling also registers the Auto* classes
    "NanoChatForCausalLM": "nanochat_hf.modeling",
    "NanoChatModel": "nanochat_hf.modeling",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nanochat_hf' has no attribute {name!r}")


__all__ = ["NanoChatConfig", "NanoChatForCausalLM", "NanoChatModel", "__version__"]
