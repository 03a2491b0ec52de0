"""A feature whose optional package is missing stops with one line that names the extra to install; the GPU-only
branches (FlashAttention-3, fp8, the compiled Muon step) pick their path and fall back as they should, shown on CPU."""

import sys
import types
from pathlib import Path

import pytest
import torch
from test_pretrain import tiny_args

from nanochat_hf import extras, modeling, optim, pretrain
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
    recipe = str(REPO / "recipes" / "tiny" / "rl.yaml")
    assert rl_main(["--config", recipe, "--model_name_or_path", str(tmp_path / "any"), "--output_dir", str(tmp_path),
                    "--use_vllm", "true"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'nanochat_hf[vllm]'" in err


def test_every_extra_named_is_declared_in_pyproject():
    text = (REPO / "pyproject.toml").read_text()
    for extra in set(extras.EXTRAS.values()):
        assert f"\n{extra} = [" in text, extra
    assert not extras.available("surely_not_a_module_here")


# ----------------------------------------------------------------------------- GPU-only branches, selected on CPU


@pytest.fixture
def tiny_model():
    from nanochat_hf import NanoChatConfig, NanoChatForCausalLM

    torch.manual_seed(0)
    return NanoChatForCausalLM(NanoChatConfig.from_depth(2, arch="modern", vocab_size=256, max_position_embeddings=64,
                                                         head_dim=32, aspect_ratio=64))


@pytest.fixture
def gpu_capability(monkeypatch):
    """Pretend torch sees a CUDA GPU of this compute capability (nothing is allocated on it)."""
    def _set(major, minor):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (major, minor))
    return _set


def _record_attention(monkeypatch, model, fail: bool = False):
    calls = []

    def fake(impl):  # transformers would fetch the Hub kernel here; record, and fail like a missing build
        calls.append(impl)
        if fail and impl == modeling.FA3_KERNEL:
            raise OSError("no build of kernels-community/flash-attn3 for this torch\nsecond line")
        model.config._attn_implementation = impl
    monkeypatch.setattr(model, "set_attn_implementation", fake)
    return calls


def test_fa3_on_hopper_without_kernels_falls_back_to_sdpa_with_one_line(tiny_model, gpu_capability, hide, monkeypatch):
    gpu_capability(9, 0)
    hide("kernels")
    calls, said = _record_attention(monkeypatch, tiny_model), []
    assert tiny_model.use_fast_attention("cuda", torch.bfloat16, say=said.append) == "sdpa"
    assert calls == ["sdpa"] and len(said) == 1
    assert "kernels" in said[0] and "pip install 'nanochat_hf[gpu]'" in said[0] and "\n" not in said[0]


def test_fa3_is_chosen_on_hopper_with_kernels_and_a_failed_load_falls_back(tiny_model, gpu_capability, monkeypatch):
    gpu_capability(9, 0)
    monkeypatch.setattr(modeling, "_has_kernels", lambda: True)
    calls, said = _record_attention(monkeypatch, tiny_model), []
    assert tiny_model.use_fast_attention("cuda", torch.bfloat16, say=said.append) == modeling.FA3_KERNEL
    assert calls == [modeling.FA3_KERNEL] and said == []
    calls, said = _record_attention(monkeypatch, tiny_model, fail=True), []
    assert tiny_model.use_fast_attention("cuda", torch.bfloat16, say=said.append) == "sdpa"
    assert calls == [modeling.FA3_KERNEL, "sdpa"] and len(said) == 1 and "second line" not in said[0]


def test_fa3_is_not_tried_off_sm80_to_sm90_nor_in_fp32_nor_on_cpu(tiny_model, gpu_capability, monkeypatch):
    monkeypatch.setattr(modeling, "_has_kernels", lambda: True)
    gpu_capability(10, 0)  # Blackwell: the kernel has no build for it
    calls, said = _record_attention(monkeypatch, tiny_model), []
    assert tiny_model.use_fast_attention("cuda", torch.bfloat16, say=said.append) == "sdpa"
    assert calls == ["sdpa"] and len(said) == 1 and "sm_100" in said[0]
    gpu_capability(9, 0)
    for device, dtype in (("cuda", torch.float32), ("cpu", torch.bfloat16)):  # not a fallback: nothing to say
        calls, said = _record_attention(monkeypatch, tiny_model), []
        assert tiny_model.use_fast_attention(device, dtype, say=said.append) == "sdpa"
        assert calls == ["sdpa"] and said == []


@pytest.fixture
def fake_torchao(monkeypatch):
    """A stand-in `torchao.float8` that records what would be converted."""
    converted = []
    float8 = types.ModuleType("torchao.float8")
    float8.convert_to_float8_training = lambda model, module_filter_fn: converted.extend(
        n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and module_filter_fn(m, n))
    monkeypatch.setitem(sys.modules, "torchao", types.ModuleType("torchao"))
    monkeypatch.setitem(sys.modules, "torchao.float8", float8)
    return converted


def test_fp8_refuses_cpu_and_pre_ada_gpus_in_one_line(fake_torchao, tiny_model, gpu_capability):
    with pytest.raises(ValueError, match="drop it on CPU"):
        pretrain.enable_fp8(tiny_model, on_gpu=False)
    gpu_capability(8, 0)  # A100: no fp8 tensor cores
    with pytest.raises(ValueError, match="sm_80") as err:
        pretrain.enable_fp8(tiny_model, on_gpu=True)
    assert "\n" not in str(err.value) and fake_torchao == []


def test_fp8_converts_block_matrices_not_the_head_nor_small_gates(fake_torchao, gpu_capability):
    from nanochat_hf import NanoChatConfig, NanoChatForCausalLM

    gpu_capability(9, 0)
    with torch.device("meta"):
        model = NanoChatForCausalLM(NanoChatConfig.from_depth(2, arch="modern", vocab_size=32768))  # width 128
    assert pretrain.enable_fp8(model, on_gpu=True) == len(fake_torchao) > 0
    assert not any("lm_head" in n or "ve_gate" in n or "smear" in n for n in fake_torchao)
    assert {n.rsplit(".", 1)[-1] for n in fake_torchao} == {"q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"}


def test_fp8_on_cpu_through_the_cli_is_one_line(fake_torchao, tiny_tokenizer_dir, tmp_path, capsys):
    assert pretrain.main(tiny_args(tiny_tokenizer_dir, tmp_path / "o", "--fp8", "true")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--fp8 needs an H100-class GPU" in err


@pytest.fixture
def fresh_muon(monkeypatch):
    """Forget any cached compiled Muon step, and make torch.compile record instead of compiling."""
    compiled = []
    monkeypatch.setattr(optim, "_compiled_direction", None)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(kw) or (lambda *a: ("compiled", fn)))
    return compiled


def test_muon_runs_eager_on_cpu_and_compiles_one_graph_on_cuda(fresh_muon, monkeypatch):
    assert optim.direction_fn(is_cuda=False) is optim._muon_direction and fresh_muon == []
    monkeypatch.setattr(optim, "available", lambda name: name == "triton")
    fn = optim.direction_fn(is_cuda=True)
    assert fn() == ("compiled", optim._muon_direction) and fresh_muon == [{"dynamic": False, "fullgraph": True}]
    assert optim.direction_fn(is_cuda=True) is fn and len(fresh_muon) == 1  # compiled once, reused
    monkeypatch.setenv("NANOCHAT_HF_COMPILE_OPTIM", "0")
    assert optim.direction_fn(is_cuda=True) is optim._muon_direction


def test_muon_on_cuda_without_triton_stays_eager_and_says_so_once(fresh_muon, hide, capsys):
    hide("triton")
    assert optim.direction_fn(is_cuda=True) is optim._muon_direction
    assert optim.direction_fn(is_cuda=True) is optim._muon_direction
    out = capsys.readouterr().out.strip()
    assert fresh_muon == [] and len(out.splitlines()) == 1 and "triton" in out
    # the CPU path of the real step is the eager one: same numbers as calling it directly
    g, m = torch.randn(2, 8, 4), torch.zeros(2, 8, 1)
    assert torch.equal(optim.muon_direction(g, m.clone(), 5, 0.9), optim._muon_direction(g, m.clone(), 5, 0.9))
