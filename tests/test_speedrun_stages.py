"""The speedrun's stage sequencing, with stand-in commands (fast): a background stage (the GPU tiers' shard
download) runs behind the next stage and ends before the one after it; its failure stops the run."""

import json
import sys

import pytest

from nanochat_hf.speedrun import Speedrun, Stage


def _append(path, text: str, sleep: float = 0.0, exit_code: int = 0) -> list[str]:
    code = f"import sys, time; time.sleep({sleep}); open({str(path)!r}, 'a').write({text!r}); sys.exit({exit_code})"
    return [sys.executable, "-c", code]


def _speedrun(tmp_path, stages):
    run = Speedrun("smoke", tmp_path / "run", 1, None, None, dry_run=False)
    run.stages = lambda: iter(stages)
    return run


def test_a_background_stage_runs_behind_the_next_and_ends_before_the_one_after(tmp_path):
    order = tmp_path / "order.txt"
    run = _speedrun(tmp_path, [
        Stage("data", [_append(order, "first-shards;"), _append(order, "all-shards;", sleep=1.5)], background=True),
        Stage("tokenizer", [_append(order, "tokenizer;")]),
        Stage("pretrain", [_append(order, "pretrain;")]),
    ])
    run.go()
    assert order.read_text() == "first-shards;tokenizer;all-shards;pretrain;"
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())["stages"]
    assert list(stages) == ["data", "tokenizer", "pretrain"]  # the order they started in
    assert [s["status"] for s in stages.values()] == ["done"] * 3


def test_a_failed_background_stage_stops_the_run_before_the_next_stage(tmp_path):
    order = tmp_path / "order.txt"
    run = _speedrun(tmp_path, [
        Stage("data", [_append(order, "all-shards;", sleep=0.5, exit_code=3)], background=True),
        Stage("tokenizer", [_append(order, "tokenizer;")]),
        Stage("pretrain", [_append(order, "pretrain;")]),
    ])
    with pytest.raises(SystemExit, match="stage data failed \\(exit 3\\)"):
        run.go()
    assert order.read_text() == "tokenizer;all-shards;"
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())["stages"]
    assert stages["data"]["status"] == "failed (exit 3)" and "pretrain" not in stages


def test_report_to_goes_to_pretraining_only_and_a_misspelt_tracker_is_refused_up_front(tmp_path):
    run = Speedrun("tiny", tmp_path / "run", 1, None, None, dry_run=True, report_to="wandb,tensorboard")
    commands = {stage.name: stage.commands[-1] for stage in run.stages()}
    assert "--report_to" in commands["pretrain"]
    assert commands["pretrain"][commands["pretrain"].index("--report_to") + 1] == "wandb,tensorboard"
    assert all("--report_to" not in cmd for name, cmd in commands.items() if name != "pretrain")
    with pytest.raises(ValueError, match=r"unknown tracker\(s\) \['wandbb'\]; choose from none, all, aim"):
        Speedrun("tiny", tmp_path / "run", 1, None, None, dry_run=True, report_to="wandbb")
