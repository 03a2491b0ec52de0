"""A feature whose optional package is missing stops with one line that names the extra to install."""

import sys
from pathlib import Path

import pytest
from test_pretrain import tiny_args

from nanochat_hf import extras, pretrain
from nanochat_hf.rl import main as rl_main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def hide(monkeypatch):
    """Make `import name` fail as if the package were not installed (sys.modules[name] = None)."""
    def _hide(*names):
        for name in names:
            for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                monkeypatch.delitem(sys.modules, loaded)
            monkeypatch.setitem(sys.modules, name, None)
    return _hide


def test_fp8_without_torchao_names_the_gpu_extra(tiny_tokenizer_dir, tmp_path, capsys, hide):
    hide("torchao")
    assert pretrain.main(tiny_args(tiny_tokenizer_dir, tmp_path / "o", "--fp8", "true")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'nanochat_hf[gpu]'" in err and "torchao" in err


def test_vllm_without_vllm_names_the_vllm_extra(tmp_path, capsys, hide):
    hide("vllm")
    recipe = str(REPO / "recipes" / "tiny" / "grpo.yaml")
    assert rl_main(["--config", recipe, "--model_name_or_path", str(tmp_path / "any"), "--output_dir", str(tmp_path),
                    "--use_vllm", "true"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'nanochat_hf[vllm]'" in err


def test_every_extra_named_is_declared_in_pyproject():
    text = (REPO / "pyproject.toml").read_text()
    for extra in set(extras.EXTRAS.values()):
        assert f"\n{extra} = [" in text, extra
    assert not extras.available("surely_not_a_module_here")
