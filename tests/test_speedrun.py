"""The speedrun end to end: `nanochat-hf speedrun --preset smoke` on CPU, offline.

One real run of every stage at the smallest sizes (tokenizer -> pretrain -> base eval -> mid -> SFT ->
RL -> chat eval -> report), then the checks a user relies on: the report's summary table has numbers
for every stage, the final model folder loads with plain `AutoModelForCausalLM`, and a re-run skips
every finished stage.
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("speedrun") / "smoke"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run([sys.executable, "-m", "nanochat_hf", "speedrun", "--preset", "smoke", "--output", str(run)],
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
    assert 0 < stages["stages"]["pretrain"]["cpu_seconds"] <= 2 * stages["stages"]["pretrain"]["seconds"] * (os.cpu_count() or 1)
    report = (run / "report.md").read_text()
    assert "| Metric | BASE | MID | SFT | RL |" in report
    core_row = next(line for line in report.splitlines() if line.startswith("| CORE |"))
    float(core_row.split("|")[2])  # a real number for BASE, not "-"
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
        "ids = tok.apply_chat_template([{'role': 'user', 'content': 'What is 2+3?'}], add_generation_prompt=True, return_tensors='pt', return_dict=True)\n"
        "out = model.generate(**ids, max_new_tokens=8, do_sample=False)\n"
        "print('generated', out.shape[1] - ids['input_ids'].shape[1])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(run), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "generated" in result.stdout


def test_rerun_skips_finished_stages(smoke_run):
    run, _ = smoke_run
    result = subprocess.run([sys.executable, "-m", "nanochat_hf", "speedrun", "--preset", "smoke", "--output", str(run)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    for stage in ("tokenizer", "pretrain", "base_eval", "mid", "sft", "rl", "mid_eval", "sft_eval", "rl_eval"):
        assert f"[speedrun] {stage}: already done, skipping" in result.stdout
