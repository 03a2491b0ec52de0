"""The run log of every stage (nanochat_hf.runlog) and the resume flag every stage reads (checkpoints)."""

import json

import pytest
from transformers import TrainerControl, TrainerState

from nanochat_hf.checkpoints import STATE_NAME, resume_checkpoint
from nanochat_hf.runlog import RunLog, RunLogCallback


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def killed_run_log(path):
    """A log as a run killed during step 5 leaves it: an eval at step 4, and a torn last line."""
    lines = [{"event": "start", "step": 0}, {"step": 3, "loss": 3.0}, {"step": 4, "loss": 2.0},
             {"step": 4, "val_bpb": 1.5}, {"step": 5, "loss": 1.0}]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 6, "lo')


def test_a_resumed_log_keeps_the_rows_up_to_the_checkpoint_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "logs" / "pretrain.jsonl"
    killed_run_log(path)
    log = RunLog(path)
    log.start(4, redone=("val_bpb",))  # pretraining evaluates its resume step again
    log.write(event="start", step=4)
    assert rows(path) == [{"event": "start", "step": 0}, {"step": 3, "loss": 3.0}, {"step": 4, "loss": 2.0},
                          {"event": "start", "step": 4}]
    killed_run_log(path)
    RunLog(path).start(4)  # the Trainer stages do not: step 4's rows all stay
    assert [r["step"] for r in rows(path)] == [0, 3, 4, 4]


def test_a_fresh_log_starts_empty_and_only_the_main_process_writes(tmp_path):
    path = tmp_path / "logs" / "sft.jsonl"
    killed_run_log(path)
    log = RunLog(path)
    log.start(None)
    log.write(step=1, loss=0.5, obj=tmp_path)  # what JSON cannot hold is written as its str
    assert rows(path) == [{"step": 1, "loss": 0.5, "obj": str(tmp_path)}]
    other = RunLog(tmp_path / "rank1" / "sft.jsonl", enabled=False)
    other.start(None)
    other.write(step=1)
    assert not (tmp_path / "rank1").exists()


def test_the_callback_logs_trainer_rows_with_step_epoch_and_time(tmp_path):
    path = tmp_path / "logs" / "rl.jsonl"
    killed_run_log(path)
    state, control = TrainerState(global_step=4, epoch=0.5), TrainerControl()
    callback = RunLogCallback(path, resume_step=4, header={"stage": "sft", "train": {"rows": 8}})
    callback.on_train_begin(None, state, control)
    state.global_step = 5
    callback.on_log(None, state, control, logs={"loss": 0.25, "epoch": 0.5, "table": [1, 2], "note": None})
    got = rows(path)
    assert [r["step"] for r in got] == [0, 3, 4, 4, 4, 5]
    assert got[-2] == {"step": 4, "event": "start", "stage": "sft", "train": {"rows": 8}}
    last = got[-1]
    assert set(last) == {"step", "epoch", "time", "loss", "note"} and last["loss"] == 0.25  # no list values
    assert 0 <= last["time"] < 60

    state.is_world_process_zero = False  # another rank: nothing written
    RunLogCallback(path, header={"stage": "sft"}).on_train_begin(None, state, control)
    callback.on_log(None, state, control, logs={"loss": 0.1})
    assert len(rows(path)) == 6


def checkpoint(root, step, complete=True):
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if complete:
        (folder / STATE_NAME).write_text("{}")
    return folder


@pytest.mark.parametrize("spelling", ["latest", "auto", "last", "true", "True", "LATEST"])
def test_every_resume_spelling_picks_the_newest_complete_checkpoint(tmp_path, spelling):
    checkpoint(tmp_path, 2)
    newest = checkpoint(tmp_path, 10)
    checkpoint(tmp_path, 12, complete=False)
    said = []
    assert resume_checkpoint(tmp_path, spelling, said.append) == newest
    assert said == [f"skipping {tmp_path / 'checkpoint-12'}: partial checkpoint (no {STATE_NAME}, its save "
                    "never finished)"]


def test_no_resume_no_checkpoint_yet_and_a_named_folder(tmp_path):
    for spelling in (None, "", "false", "None"):
        assert resume_checkpoint(tmp_path, spelling) is None
    said = []
    assert resume_checkpoint(tmp_path / "run", "latest", said.append) is None  # the first run of a resumable command
    assert said == [f"no checkpoint in {tmp_path / 'run'} yet: starting afresh"]
    folder = checkpoint(tmp_path, 3, complete=False)  # a folder named outright is the caller's to check
    assert resume_checkpoint(tmp_path, str(folder)) == folder
    with pytest.raises(FileNotFoundError, match="pass --resume_from_checkpoint latest or an existing"):
        resume_checkpoint(tmp_path, str(tmp_path / "checkpoint-9"))
