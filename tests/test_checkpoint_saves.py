"""A full disk or a read-only folder during a checkpoint save, in pretraining, SFT and RL.

The run stops with one line naming the folder and the free space (exit status 2), the previous
checkpoint is left whole, no partial `checkpoint-N` appears, and the stage's resume flag then skips a
partial folder (saying so) and finishes from the previous checkpoint. The disk is "filled" by making
`torch.save` (what accelerate and the Trainer write optimizer and RNG states with) raise ENOSPC for
every file of the second checkpoint.
"""

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from nanochat_hf import pretrain, rl, sft

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model_dir(tiny_tokenizer_dir, tmp_path_factory):
    """A tiny chat-capable model folder (config, safetensors, tokenizer with the chat template)."""
    from nanochat_hf import NanoChatConfig, NanoChatForCausalLM
    from nanochat_hf.tokenization import load_tokenizer, save_tokenizer

    tok = load_tokenizer(tiny_tokenizer_dir)
    torch.manual_seed(0)
    config = NanoChatConfig.from_depth(2, vocab_size=len(tok), max_position_embeddings=128, head_dim=32,
                                       aspect_ratio=32, window_pattern="L")
    out = tmp_path_factory.mktemp("model")
    NanoChatForCausalLM(config).save_pretrained(out)
    save_tokenizer(tok, out)
    return out


def pretrain_argv(tok, out, *extra):
    return ["--tokenizer", str(tok), "--output_dir", str(out), "--arch", "modern", "--window_pattern", "SL",
            "--depth", "2", "--aspect_ratio", "32", "--head_dim", "32", "--max_seq_len", "64",
            "--device_batch_size", "4", "--total_batch_size", "256", "--num_iterations", "6", "--eval_every", "-1",
            "--eval_tokens", "256", "--buffer_size", "64", "--sample_max_tokens", "2", "--save_every", "2", *extra]


def sft_argv(model, out, *extra):
    mixture = json.dumps({"train": [{"source": "arithmetic", "size": 48}]})
    return ["--model_name_or_path", str(model), "--output_dir", str(out), "--mixture", mixture, "--max_length", "64",
            "--per_device_train_batch_size", "4", "--max_steps", "6", "--save_steps", "2", "--eval_strategy", "no",
            "--disable_tqdm", "true", "--report_to", "none", *extra]


def rl_argv(model, out, *extra):
    return ["--config", str(REPO / "recipes/tiny/rl.yaml"), "--model_name_or_path", str(model),
            "--output_dir", str(out), "--synthetic_train_size", "64", "--synthetic_test_size", "4",
            "--max_steps", "6", "--save_steps", "2", "--num_generations", "4", "--per_device_train_batch_size", "4",
            "--max_completion_length", "8", "--eval_every", "0", "--dataloader_num_workers", "0",
            "--disable_tqdm", "true", *extra]


# stage -> (main, argv builder, resume flags)
STAGES = {
    "pretrain": (pretrain.main, pretrain_argv, ["--resume_from_checkpoint", "latest"]),
    "sft": (sft.main, sft_argv, ["--resume_from_checkpoint", "latest"]),
    "rl": (rl.main, rl_argv, ["--resume_from_checkpoint", "latest"]),
}


def fill_disk_after(first: Path, monkeypatch) -> None:
    """Every torch.save into a checkpoint folder raises ENOSPC once `first` exists."""
    real = torch.save

    def save(obj, f, *args, **kwargs):
        if first.is_dir() and isinstance(f, (str, os.PathLike)) and "checkpoint-" in Path(f).parent.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize("stage", ["pretrain", "sft", "rl"])
def test_full_disk_stops_in_one_line_and_the_run_resumes(stage, tmp_path, tiny_tokenizer_dir, model_dir,
                                                         monkeypatch, capfd):
    main, argv, resume = STAGES[stage]
    out = tmp_path / "run"
    source = tiny_tokenizer_dir if stage == "pretrain" else model_dir
    fill_disk_after(out / "checkpoint-2", monkeypatch)
    assert main(argv(source, out)) == 2
    err = capfd.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err, err[-3000:]
    assert f"could not write {out / 'checkpoint-4'}" in last and "No space left on device" in last, last
    assert " free there" in last, last
    # The previous checkpoint is whole; nothing of the failed one is left, under any name.
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-2"]
    assert not (out / "model.safetensors").exists()

    monkeypatch.undo()  # space freed; a folder left by some other interrupted copy sits at a later step
    (out / "checkpoint-9").mkdir()
    (out / "checkpoint-9" / "model.safetensors").write_bytes(b"half")
    assert main(argv(source, out, *resume)) == 0
    text = capfd.readouterr()
    assert f"skipping {out / 'checkpoint-9'}: partial checkpoint" in text.out + text.err
    assert (out / "model.safetensors").is_file()
    assert (out / "checkpoint-4" / "trainer_state.json").is_file()  # the resumed run saved past the failure
    if stage == "pretrain":
        starts = [json.loads(line) for line in (out / "logs" / "pretrain.jsonl").read_text().splitlines()]
        assert [r["resumed_from"] for r in starts if r.get("event") == "start"][-1].endswith("checkpoint-2")
    else:
        state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
        assert state["global_step"] == 4


def read_only_folders_exist() -> bool:
    """False as root (with its usual capabilities): it writes into a chmod 555 folder anyway."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o555)
        try:
            open(os.path.join(tmp, "probe"), "w").close()
            return False
        except PermissionError:
            return True
        finally:
            os.chmod(tmp, 0o755)


needs_non_root = pytest.mark.skipif(not read_only_folders_exist(), reason=f"euid {os.geteuid()} writes into "
                                    "read-only folders: chmod cannot make one unwritable here")


@needs_non_root
def test_read_only_output_folder_is_refused_before_training(tmp_path, tiny_tokenizer_dir, capfd):
    out = tmp_path / "run"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert pretrain.main(pretrain_argv(tiny_tokenizer_dir, out)) == 2
    finally:
        out.chmod(0o755)
    last = capfd.readouterr().err.strip().splitlines()[-1]
    assert f"could not write {out}" in last and "Permission denied" in last and " free there" in last, last


@needs_non_root
@pytest.mark.parametrize("stage", ["pretrain", "sft"])
def test_folder_made_read_only_mid_run_keeps_the_previous_checkpoint(stage, tmp_path, tiny_tokenizer_dir,
                                                                     model_dir, capfd):
    from torch.optim.optimizer import register_optimizer_step_post_hook

    main, argv, _ = STAGES[stage]
    out = tmp_path / "run"

    def lock(optimizer, args, kwargs):  # after checkpoint-2: the folder turns read-only
        if (out / "checkpoint-2").is_dir():
            out.chmod(0o555)

    handle = register_optimizer_step_post_hook(lock)
    try:
        assert main(argv(tiny_tokenizer_dir if stage == "pretrain" else model_dir, out)) == 2
    finally:
        handle.remove()
        out.chmod(0o755)
    last = capfd.readouterr().err.strip().splitlines()[-1]
    assert f"could not write {out / 'checkpoint-4'}" in last and "Permission denied" in last, last
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-2"]
