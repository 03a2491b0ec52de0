"""Pretraining end to end on CPU: plan, loss goes down, 2-process DDP, kill-and-resume, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nanochat_hf import NanoChatForCausalLM, pretrain
from nanochat_hf.pretrain import PretrainConfig, training_plan

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tokenizer_dir(tiny_tokenizer_dir):
    """The session's tiny nanochat tokenizer (vocab 1024, tests/conftest.py)."""
    return tiny_tokenizer_dir


def tiny_args(tok, out, *extra):
    """depth 2, width 64, seq 64, vocab 1024: about a second per 10 steps on one core."""
    return ["--tokenizer", str(tok), "--output_dir", str(out), "--arch", "modern", "--window_pattern", "SL", "--depth",
            "2", "--aspect_ratio", "32", "--head_dim", "32", "--max_seq_len", "64", "--device_batch_size", "4",
            "--total_batch_size", "512", "--num_iterations", "16", "--eval_every", "8", "--eval_tokens", "1024",
            "--buffer_size", "64", "--warmup_steps", "2", "--matrix_lr", "0.3", "--embedding_lr", "3.0",
            "--unembedding_lr", "0.1", "--sample_max_tokens", "4", "--seed", "7", *extra]


def read_log(out):
    text = (Path(out) / "logs" / "pretrain.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_plan_follows_nanochat_rules(tokenizer_dir):
    cfg = PretrainConfig(arch="classic", depth=2, aspect_ratio=32, head_dim=32, max_seq_len=64,
                         device_batch_size=4, total_batch_size=-1, target_param_data_ratio=12)
    model = NanoChatForCausalLM(pretrain.model_config(cfg, 2, 1024))
    plan = training_plan(cfg, model, 1024, world_size=2)
    total = plan["total_batch_size"]
    assert total & (total - 1) == 0  # auto rule rounds to a power of two
    assert plan["grad_accum_steps"] == total // (4 * 64 * 2)
    assert plan["num_iterations"] == int(12 * model.num_scaling_params()) // total
    assert plan["batch_lr_scale"] == pytest.approx((total / 2**19) ** 0.5)
    cfg.total_batch_size = 1000
    with pytest.raises(ValueError, match="not a multiple of device_batch_size"):
        training_plan(cfg, model, 1024, world_size=1)
    cfg.total_batch_size, cfg.num_iterations = 512, 5
    assert training_plan(cfg, model, 1024, world_size=1)["num_iterations"] == 5


def test_one_recipe_on_any_number_of_processes():
    """The tiny recipe (16 rows x 256 tokens = its whole 4096-token batch) on 2 or 8 processes: fewer rows each."""
    from nanochat_hf.pretrain import fit_device_batch

    assert fit_device_batch(4096, 16, 256, 1) == 16
    assert fit_device_batch(4096, 16, 256, 2) == 8
    assert fit_device_batch(4096, 16, 256, 8) == 2
    assert fit_device_batch(2**19, 24, 2048, 8) == 16  # a non-power-of-2 device batch goes to a power of 2 first
    assert fit_device_batch(2**19, 32, 2048, 8) == 32  # nanochat's d20 on 8 GPUs: unchanged
    with pytest.raises(ValueError, match="nor of any smaller power-of-2"):
        fit_device_batch(4096, 16, 256, 32)  # fewer than one row per rank


def test_run_writes_hub_folder_logs_and_loss_decreases(tokenizer_dir, tmp_path):
    out = tmp_path / "base"
    assert pretrain.main(tiny_args(tokenizer_dir, out)) == 0
    rows = read_log(out)
    steps = [r for r in rows if "train_loss" in r]
    assert len(steps) == 16 and steps[-1]["loss"] < steps[0]["loss"] - 0.5
    bpbs = [r["val_bpb"] for r in rows if "val_bpb" in r and "event" not in r]
    assert len(bpbs) == 3 and bpbs[-1] < bpbs[0]  # steps 0, 8, 16
    assert sum(1 for r in rows if r.get("event") == "sample") == 7
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    x = torch.tensor([[tok.bos_token_id] + tok.encode("ROMEO:", add_special_tokens=False)])
    assert model.generate(x, max_new_tokens=3, do_sample=False).shape[1] == x.shape[1] + 3


def test_kill_and_resume_is_bit_identical(tokenizer_dir, tmp_path, kill_mid_run):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert pretrain.main(tiny_args(tokenizer_dir, ref, "--save_every", "3")) == 0
    # SIGKILLed during step 4, after checkpoint-3 landed (returncode -9, no model.safetensors yet).
    kill_mid_run("nanochat_hf.pretrain", tiny_args(tokenizer_dir, killed, "--save_every", "3"), killed, 3)
    assert pretrain.main(tiny_args(tokenizer_dir, killed, "--save_every", "3",
                                   "--resume_from_checkpoint", "latest")) == 0
    a, b = load_file(ref / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    starts = [r for r in read_log(killed) if r.get("event") == "start"]
    assert starts[-1]["resumed_from"].endswith("checkpoint-3")
    steps = [r["step"] for r in read_log(killed) if "train_loss" in r]
    assert steps == list(range(1, 17))  # what the killed run logged after its checkpoint is dropped, not doubled


def test_a_fresh_run_in_a_used_folder_starts_a_fresh_log(tokenizer_dir, tmp_path):
    """A run killed before its first checkpoint starts again from scratch (the speedrun does so): its log then
    holds each step once, not the dead run's steps followed by the new run's."""
    out = tmp_path / "base"
    for _ in range(2):
        assert pretrain.main(tiny_args(tokenizer_dir, out, "--num_iterations", "3", "--eval_every", "-1")) == 0
    rows = read_log(out)
    assert [r["step"] for r in rows if "train_loss" in r] == [1, 2, 3]
    assert sum(1 for r in rows if r.get("event") == "start") == 1


def test_partial_and_corrupt_checkpoints_are_refused(tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert pretrain.main(tiny_args(tokenizer_dir, out, "--num_iterations", "6", "--max_steps_this_run", "4")) == 0
    ckpt = out / "checkpoint-4"
    assert (ckpt / "trainer_state.json").is_file()
    assert not list(out.glob(".checkpoint-*.tmp"))  # the temporary folder was renamed away
    partial = out / "checkpoint-9"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    # Named explicitly it is refused (`latest` skips it: tests/test_checkpoint_saves.py).
    assert pretrain.main(tiny_args(tokenizer_dir, out, "--resume_from_checkpoint", str(partial))) == 2
    assert "checkpoint-9 is partial" in capsys.readouterr().err
    partial.rename(out / ".trash")
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)  # same size, different bytes
    assert pretrain.main(tiny_args(tokenizer_dir, out, "--resume_from_checkpoint", str(ckpt))) == 2
    assert "is corrupt (model.safetensors fails its sha256)" in capsys.readouterr().err


def test_bad_input_fails_fast_with_the_fix(tokenizer_dir, tmp_path, capsys):
    assert pretrain.main(tiny_args(tmp_path / "no_tok", tmp_path / "o")) == 2
    assert "nanochat-hf tokenizer train" in capsys.readouterr().err
    assert pretrain.main(tiny_args(tokenizer_dir, tmp_path / "o", "--data", str(tmp_path / "nothing"))) == 2
    assert "neither a file, a folder nor a known Hub dataset" in capsys.readouterr().err
    assert pretrain.main(tiny_args(tokenizer_dir, tmp_path / "o", "--total_batch_size", "100")) == 2
    assert "not a multiple of device_batch_size*max_seq_len*world_size" in capsys.readouterr().err
    assert pretrain.main(tiny_args(tokenizer_dir, tmp_path / "o",
                                   "--resume_from_checkpoint", str(tmp_path / "nope"))) == 2
    assert "does not exist" in capsys.readouterr().err


def test_resume_with_another_tokenizer_or_size_and_oom_are_explained(tokenizer_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert pretrain.main(tiny_args(tokenizer_dir, out, "--num_iterations", "4", "--max_steps_this_run", "2",
                                   "--eval_every", "-1")) == 0
    capsys.readouterr()
    assert pretrain.main(tiny_args(tokenizer_dir, out, "--resume_from_checkpoint", "latest", "--depth", "3")) == 2
    assert "different model/tokenizer (depth 2 vs 3" in capsys.readouterr().err

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(pretrain.F, "cross_entropy", oom)
    assert pretrain.main(tiny_args(tokenizer_dir, tmp_path / "oom", "--eval_every", "-1")) == 2
    assert "out of memory at device_batch_size=4" in capsys.readouterr().err


def test_a_compiled_model_is_saved_under_its_own_weight_names(tokenizer_dir, tmp_path):
    """compile: true (the GPU recipes' setting) wraps the model in torch.compile, whose state dict names every
    weight `_orig_mod.<name>`; the saved folder must hold the model's own names, or from_pretrained (mid-training)
    would find none of them and start from random weights."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from nanochat_hf.tokenization import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    cfg = PretrainConfig(depth=1, aspect_ratio=64, head_dim=32, max_seq_len=64)
    model = NanoChatForCausalLM(pretrain.model_config(cfg, 1, len(tok)))
    accelerator = Accelerator(cpu=True)
    compiled = accelerator.prepare(torch.compile(model))  # wrapping only: nothing is compiled before a forward
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    pretrain.save_final(accelerator, compiled, tok, tmp_path)
    loaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


@pytest.mark.multiprocess
def test_two_process_ddp_on_cpu(tokenizer_dir, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", "29533", "-m", "nanochat_hf.pretrain",
           *tiny_args(tokenizer_dir, out, "--device_batch_size", "2", "--save_every", "8")]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Num processes: 2" in res.stdout + res.stderr
    rows = read_log(out)
    start = rows[0]
    # 512 tokens = 2 x (2 ranks x 2 rows x 64)
    assert start["world_size"] == 2 and start["plan"]["grad_accum_steps"] == 2
    steps = [r for r in rows if "train_loss" in r]
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.5
    state = json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())
    ranks = state["loader_states"]
    assert [s["rank"] for s in ranks] == [0, 1]  # each rank's own loader position is saved
    # Rank-strided row groups: rank 0 holds even groups, rank 1 odd ones.
    assert all(u % 2 == 0 for _, u, _ in ranks[0]["buffer"]) and all(u % 2 == 1 for _, u, _ in ranks[1]["buffer"])
