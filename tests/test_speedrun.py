"""The speedrun end to end: `nanochat-hf speedrun --preset smoke` on CPU, offline.

One real run of every stage at the smallest sizes (tokenizer -> pretrain -> base eval -> mid -> SFT ->
RL -> chat eval -> report), then the checks a user relies on: the report's summary table has numbers
for every stage, the final model folder loads with plain `AutoModelForCausalLM`, a re-run skips
every finished stage, and a speedrun SIGKILLed inside stages and between them ends, re-run with the
same command, with the artefacts and weights of the uninterrupted run.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("speedrun") / "smoke"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run([sys.executable, "-m", "nanochat_hf", "speedrun", "--preset",
                             "smoke", "--output", str(run)],
                            capture_output=True, text=True, env=env, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run, result.stdout


def test_every_stage_ran_and_the_report_has_the_table(smoke_run):
    run, _ = smoke_run
    stages = json.loads((run / "stages.json").read_text())
    expected = ["tokenizer", "pretrain", "base_eval", "mid", "sft", "rl", "mid_eval", "sft_eval", "rl_eval", "report"]
    assert list(stages["stages"]) == expected
    assert all(s["status"] == "done" for s in stages["stages"].values())
    # CPU seconds of the stage's processes next to wall seconds (what a loaded machine cannot inflate)
    pre = stages["stages"]["pretrain"]
    assert 0 < pre["cpu_seconds"] <= 2 * pre["seconds"] * (os.cpu_count() or 1)
    report = (run / "report.md").read_text()
    assert "| Metric | BASE | MID | SFT | RL |" in report
    core_row = next(line for line in report.splitlines() if line.startswith("| CORE |"))
    float(core_row.split("|")[2])  # a real number for BASE, not "-"
    # The CPU tiers crop CORE prompts to the training context (speed), and the eval record says so.
    assert json.loads((run / "eval" / "base.json").read_text())["run"]["max_context"] == "trained"
    arc_row = next(line for line in report.splitlines() if line.startswith("| ARC-Easy |"))
    assert all(cell.strip() != "-" for cell in arc_row.split("|")[3:6])  # MID, SFT, RL (chat ARC)
    assert (run / "plots" / "base_loss.png").exists()
    for stage in ("base", "mid", "sft", "rl"):
        assert (run / stage / "model.safetensors").exists() and (run / stage / "tokenizer.json").exists()


def test_final_model_loads_with_plain_transformers(smoke_run):
    run, _ = smoke_run
    code = (
        "import sys; sys.modules['nanochat_hf'] = None\n"  # prove the package is not needed
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"path = {str(run / 'rl')!r}\n"
        "tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)\n"
        "model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)\n"
        "ids = tok.apply_chat_template([{'role': 'user', 'content': 'What is 2+3?'}], add_generation_prompt=True, "
        "return_tensors='pt', return_dict=True)\n"
        "out = model.generate(**ids, max_new_tokens=8, do_sample=False)\n"
        "print('generated', out.shape[1] - ids['input_ids'].shape[1])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(run), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "generated" in result.stdout


def test_rerun_skips_finished_stages(smoke_run):
    run, _ = smoke_run
    result = subprocess.run([sys.executable, "-m", "nanochat_hf", "speedrun", "--preset",
                             "smoke", "--output", str(run)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    for stage in ("tokenizer", "pretrain", "base_eval", "mid", "sft", "rl", "mid_eval", "sft_eval", "rl_eval"):
        assert f"[speedrun] {stage}: already done, skipping" in result.stdout


# ----------------------------------------------------------------------------- killed and re-run

HOLD_HOOK = Path(__file__).resolve().parent / "fixtures" / "hold_after_checkpoint"  # its sitecustomize.py
TRAINED = ("base", "mid", "sft", "rl")


def _live_in_group(pgid: int) -> list[int]:
    """Pids of the processes of a process group that still run (Linux /proc; zombies do not count)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended while we looked
        if fields[0] not in "ZX" and int(fields[2]) == pgid:
            pids.append(int(stat.parent.name))
    return pids


def _speedrun(run: Path) -> list[str]:
    return [sys.executable, "-m", "nanochat_hf", "speedrun", "--preset", "smoke", "--output", str(run)]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _scores(root: Path, stage: str) -> dict:
    """A stage's eval JSON without what names its folder or measures time (the run's date, each task's seconds)."""
    evaluation = json.loads((root / "eval" / f"{stage}.json").read_text())
    tasks = {name: {k: v for k, v in task.items() if k != "seconds"} for name, task in evaluation["tasks"].items()}
    return {**{k: v for k, v in evaluation.items() if k not in ("model", "run")}, "tasks": tasks}


def _started_at(log: Path) -> list[int]:
    """The steps at which a stage's training log says a run (the first, or a resumed one) started."""
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [row["step"] for row in rows if row.get("event") == "start"]


def _stage_status(run: Path, stage: str) -> str | None:
    try:
        return json.loads((run / "stages.json").read_text())["stages"][stage]["status"]
    except (OSError, ValueError, KeyError):
        return None


def _speedrun_killed_when(run: Path, log: Path, ready, hold_after: Path | None = None, timeout: float = 900) -> None:
    """Start the smoke speedrun; once `ready()`, SIGKILL the speedrun process alone (as `kill -9 PID` does)
    and check that the kill ended it (-9) and took its stage process with it (no orphan writes on)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if hold_after is not None:
        env.update(PYTHONPATH=os.pathsep.join([str(HOLD_HOOK), env.get("PYTHONPATH", "")]),
                   NANOCHAT_TEST_HOLD_AFTER=str(hold_after), NANOCHAT_TEST_HOLD_MARKER=str(log.with_suffix(".held")))
    with open(log, "w") as out:  # a file, not a pipe: a chatty child must never block on a full pipe
        proc = subprocess.Popen(_speedrun(run), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready(), f"the speedrun never got there:\n{log.read_text()[-3000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
        assert proc.returncode == -signal.SIGKILL, f"ended by {proc.returncode}, not SIGKILL"
        deadline = time.monotonic() + 30
        while _live_in_group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _live_in_group(proc.pid), "a stage process outlived the killed speedrun"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _live_in_group(proc.pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(2400)
def test_killed_anywhere_the_same_command_ends_with_the_uninterrupted_run(smoke_run, tmp_path):
    reference, _ = smoke_run
    run = tmp_path / "smoke"
    held = lambda name: (tmp_path / f"{name}.held").exists  # noqa: E731
    # (a) inside pretraining, in the step after checkpoint-10 (of 30)
    _speedrun_killed_when(run, tmp_path / "a.log", held("a"), hold_after=run / "base" / "checkpoint-10")
    assert not (run / "base" / "model.safetensors").exists() and _stage_status(run, "pretrain") is None
    # (b) between stages: as soon as mid's completion marker is in stages.json
    _speedrun_killed_when(run, tmp_path / "b.log", lambda: _stage_status(run, "mid") == "done")
    # (c) inside SFT (HF Trainer), in the step after checkpoint-5 (of 10)
    _speedrun_killed_when(run, tmp_path / "c.log", held("c"), hold_after=run / "sft" / "checkpoint-5")
    assert not (run / "sft" / "model.safetensors").exists()

    result = subprocess.run(_speedrun(run), capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    assert _files(run) == _files(reference)
    # One thread, fixed seeds: pretraining and SFT resume bit-identically (tests/test_pretrain.py, test_sft.py),
    # and the stages after them start from identical weights, so every model and score is the reference's.
    for stage in TRAINED:
        a, b = load_file(reference / stage / "model.safetensors"), load_file(run / stage / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage
    for stage in TRAINED:
        assert _scores(run, stage) == _scores(reference, stage), stage

    # The stages really resumed, not restarted: their own logs say so (a restart keeps one start, at step 0).
    assert _started_at(run / "base" / "logs" / "pretrain.jsonl") == [0, 10]
    assert _started_at(run / "sft" / "logs" / "sft.jsonl") == [0, 5]
    stages = json.loads((run / "stages.json").read_text())["stages"]
    assert all(info["status"] == "done" for info in stages.values())
    assert {name: info["run"] for name, info in stages.items()} == {
        "tokenizer": "completed before", "pretrain": "completed before", "base_eval": "completed before",
        "mid": "completed before", "sft": "resumed", "rl": "fresh", "mid_eval": "fresh", "sft_eval": "fresh",
        "rl_eval": "fresh", "report": "fresh"}
    report = (run / "report.md").read_text()
    assert "| pretrain | done | completed before (resumed from checkpoint-10) |" in report
    assert "| mid | done | completed before |" in report
    assert "| sft | done | resumed from checkpoint-5 |" in report
    assert "| rl | done | fresh |" in report
