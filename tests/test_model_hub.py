"""Saving, loading where nanochat_hf is absent, the Hub upload (mocked endpoint), damaged files."""

import ast
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from test_model_reference import randomize

from nanochat_hf import NanoChatConfig, NanoChatForCausalLM

# Runs in a fresh interpreter with nanochat_hf made unimportable (it is installed editable here, so the
# path alone would not hide it): `sys.modules[name] = None` makes every `import nanochat_hf` fail.
FRESH_LOADER = """
import sys
sys.modules["nanochat_hf"] = None
try:
    import nanochat_hf  # noqa: F401
    raise SystemExit("nanochat_hf is importable: the test would prove nothing")
except ImportError:
    pass
import torch
from transformers import AutoModelForCausalLM
for folder in sys.argv[1:]:
    remote = folder.endswith("modern")
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=remote).eval()
    expect = torch.load(folder + ".pt")
    with torch.no_grad():
        logits = model(expect["idx"]).logits
        gen = model.generate(expect["idx"][:1, :4], max_new_tokens=6, do_sample=False)
    print(type(model).__module__, (logits - expect["logits"]).abs().max().item(), torch.equal(gen, expect["gen"]))
"""


def tiny(arch, **kw):
    return NanoChatConfig.from_depth(2, arch=arch, vocab_size=300, max_position_embeddings=32, head_dim=16,
                                     aspect_ratio=32, num_key_value_heads=2, bos_token_id=0, eos_token_id=4, **kw)


def test_fresh_process_without_nanochat_hf_loads_same_logits(tmp_path):
    """classic: stock transformers (native `nanochat`); modern: trust_remote_code with the copied files."""
    folders = []
    for arch in ("classic", "modern"):
        model = randomize(NanoChatForCausalLM(tiny(arch, short_window=4)), scale=0.2).eval()
        folder = tmp_path / arch
        model.save_pretrained(folder)
        idx = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.save({"idx": idx, "logits": model(idx).logits,
                        "gen": model.generate(idx[:1, :4], max_new_tokens=6, do_sample=False)}, f"{folder}.pt")
        config = json.loads((folder / "config.json").read_text())
        files = set(os.listdir(folder))
        if arch == "classic":
            assert config["model_type"] == "nanochat" and "auto_map" not in config
            assert files == {"config.json", "model.safetensors", "generation_config.json"}
        else:
            assert config["model_type"] == "nanochat_modern"
            assert config["auto_map"] == {"AutoConfig": "configuration.NanoChatConfig",
                                          "AutoModelForCausalLM": "modeling.NanoChatForCausalLM"}
            assert {"configuration.py", "modeling.py"} <= files
        folders.append(str(folder))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TRANSFORMERS_VERBOSITY="error")
    run = subprocess.run([sys.executable, "-c", FRESH_LOADER, *folders], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [line.split() for line in run.stdout.strip().splitlines()[-2:]]
    assert lines[0][0] == "transformers.models.nanochat.modeling_nanochat"  # stock transformers, no custom code
    assert lines[1][0].startswith("transformers_modules.")  # the copied modeling.py
    for _, diff, same_tokens in lines:
        assert float(diff) <= 1e-5 and same_tokens == "True"


def test_hub_ready_folder_and_generation_config(tmp_path):
    model = NanoChatForCausalLM(tiny("modern"))
    model.save_pretrained(tmp_path)
    gen = json.loads((tmp_path / "generation_config.json").read_text())
    assert gen["bos_token_id"] == 0 and gen["eos_token_id"] == 4
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["NanoChatForCausalLM"]
    # the copied code imports nothing from nanochat_hf by absolute path
    for name in ("modeling.py", "configuration.py"):
        for node in ast.walk(ast.parse((tmp_path / name).read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level > 0 or not (node.module or "").startswith("nanochat_hf"), name
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("nanochat_hf") for a in node.names), name


def test_push_to_hub_uploads_the_folder(monkeypatch):
    from huggingface_hub import HfApi

    calls = {}

    def create_repo(self, repo_id, **kw):
        calls["repo"] = (repo_id, kw.get("private"))
        return SimpleNamespace(repo_id=repo_id)

    def create_commit(self, repo_id, operations, **kw):
        calls["files"] = {op.path_in_repo: op.path_or_fileobj for op in operations}
        calls["commit"] = (repo_id, kw.get("commit_message"))
        return SimpleNamespace(commit_url="https://hub.invalid/c/1", oid="1", pr_url=None)

    def no_card_yet(*args, **kwargs):  # what the Hub answers for a new repo: no README.md
        from huggingface_hub.errors import EntryNotFoundError

        raise EntryNotFoundError("README.md not found")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr("transformers.utils.hub.ModelCard.load", no_card_yet)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    model = NanoChatForCausalLM(tiny("modern"))
    model.push_to_hub("someone/nanochat-d2", private=True, commit_message="d2 base")
    assert calls["repo"] == ("someone/nanochat-d2", True)
    assert calls["commit"] == ("someone/nanochat-d2", "d2 base")
    assert {"config.json", "model.safetensors", "generation_config.json", "modeling.py",
            "configuration.py", "README.md"} <= set(calls["files"])


def test_truncated_safetensors_is_one_line_error(tmp_path):
    NanoChatForCausalLM(tiny("classic")).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    from transformers import AutoModelForCausalLM

    for load in (NanoChatForCausalLM.from_pretrained, AutoModelForCausalLM.from_pretrained):
        with pytest.raises(ValueError, match="truncated or corrupt") as err:
            load(tmp_path)
        assert "\n" not in str(err.value)


def test_fsdp2_sharded_model_saves_as_its_own_class(tmp_path):
    """FSDP2 turns the model into torch's generated FSDPNanoChatForCausalLM: the folder must still name
    modeling.NanoChatForCausalLM and ship our code (not torch's _fsdp_*.py), and load where nanochat_hf is absent."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    model = randomize(NanoChatForCausalLM(tiny("modern", short_window=4)), scale=0.2).eval()
    folder = tmp_path / "fsdp2_modern"
    idx = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.save({"idx": idx, "logits": model(idx).logits,
                    "gen": model.generate(idx[:1, :4], max_new_tokens=6, do_sample=False)}, f"{folder}.pt")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        sharded_cls = type(model)
        assert sharded_cls.__name__ == "FSDPNanoChatForCausalLM"
        state_dict = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        model.save_pretrained(folder, state_dict=state_dict)
        assert type(model) is sharded_cls  # still the sharded model after saving
    finally:
        dist.destroy_process_group()
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling.NanoChatForCausalLM"
    assert config["architectures"] == ["NanoChatForCausalLM"]
    files = set(os.listdir(folder))
    assert {"configuration.py", "modeling.py"} <= files and not [f for f in files if f.startswith("_fsdp")]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TRANSFORMERS_VERBOSITY="error")
    run = subprocess.run([sys.executable, "-c", FRESH_LOADER, str(folder)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    module, diff, same_tokens = run.stdout.strip().splitlines()[-1].split()
    assert module.startswith("transformers_modules.") and float(diff) <= 1e-5 and same_tokens == "True"
