"""Report card and Hub push on a synthetic run folder (no training needed, no Hub)."""

import json
import shutil
from pathlib import Path

import pytest

from nanochat_hf import hub, report


def _write_jsonl(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{torn")  # a killed run leaves a torn last line


@pytest.fixture()
def run_dir(tmp_path):
    run = tmp_path / "tiny"
    for stage in ("base", "sft"):
        (run / stage).mkdir(parents=True)
        (run / stage / "config.json").write_text(json.dumps({"model_type": "nanochat", "num_hidden_layers": 2,
                                                             "hidden_size": 64, "vocab_size": 512}))
        (run / stage / "model.safetensors").write_bytes(b"weights")
    (run / "base" / "checkpoints").mkdir()
    (run / "base" / "checkpoints" / "optimizer.bin").write_bytes(b"state")
    _write_jsonl(run / "base" / "logs" / "pretrain.jsonl", [
        {"step": s, "tokens": s * 1000, "train_loss": 5.0 - 0.1 * s,
         "lrm": 1.0, "tokens_per_sec": 900.0} for s in range(10)
    ] + [{"step": 9, "tokens": 9000, "val_bpb": 2.5}])
    _write_jsonl(run / "sft" / "logs" / "sft.jsonl", [{"step": s, "loss": 2.0 - 0.05 * s} for s in range(5)])
    (run / "eval").mkdir()
    (run / "eval" / "base.json").write_text(json.dumps({
        "model": "base", "tasks": {"arc_easy": {"accuracy": 0.31, "centered": 0.08, "n": 10}}, "core": 0.0123}))
    (run / "eval" / "sft.json").write_text(json.dumps({
        "model": "sft", "tasks": {"ARC-Easy": {"accuracy": 0.35}, "GSM8K": {"accuracy": 0.02}}, "chatcore": 0.05}))
    (run / "rl").mkdir()
    (run / "rl" / "config.json").write_text(json.dumps({"model_type": "nanochat_modern", "auto_map": {}}))
    (run / "eval" / "rl.json").write_text(json.dumps({
        "model": "rl",
        "tasks": {"ARC-Easy": {"accuracy": 0.4, "centered": 0.2}, "SpellingBee": {"accuracy": 0.1, "centered": 0.1}},
        "chatcore": None}))
    (run / "stages.json").write_text(json.dumps({"preset": "smoke", "num_gpus": 0, "stages": {
        "tokenizer": {"status": "done", "run": "fresh", "seconds": 0.0},
        "pretrain": {"status": "done", "run": "completed before", "resumed_from": "checkpoint-10", "seconds": 61.0,
                     "cpu_seconds": 118.4},
        "sft": {"status": "done", "run": "resumed", "resumed_from": "checkpoint-5", "seconds": 30.0}}}))
    return run


def test_report_has_summary_table_and_plots(run_dir):
    path = report.write_report(run_dir)
    text = path.read_text()
    assert "| Metric | BASE | SFT | RL |" in text
    assert "| CORE | 0.0123 | - | - |" in text
    # the base model's CORE arc_easy (completion scoring) is not the chat ARC-Easy (letter choice)
    assert "| ARC-Easy | - | 0.3500 | 0.4000 |" in text
    # a full ChatCORE as is; over a subset of the chat tasks, the mean centered score with an asterisk
    assert "| ChatCORE | - | 0.0500 | 0.1500* |" in text
    assert "ChatCORE over the chat tasks that ran" in text
    assert "Total wall time: **1m31s**" in text
    # how each stage got done: which were resumed after a kill, and from which checkpoint
    assert "| tokenizer | done | fresh | 0m00s | - |" in text
    assert "| pretrain | done | completed before (resumed from checkpoint-10) | 1m01s | 1m58s |" in text
    assert "| sft | done | resumed from checkpoint-5 | 0m30s | - |" in text
    plots = sorted(p.name for p in (run_dir / "plots").glob("*.png"))
    assert plots == ["base_loss.png", "base_lr.png", "base_tokens_per_sec.png", "base_val_bpb.png", "sft_loss.png"]
    for name in plots:
        assert f"plots/{name}" in text
        assert (run_dir / "plots" / name).read_bytes()[:4] == b"\x89PNG"


def test_report_cli_errors_on_missing_run(tmp_path, capsys):
    assert report.main(["--run", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


class LocalHub:
    """A local stand-in for the Hub API: records repos and materialises uploaded folders on disk."""

    def __init__(self, root: Path):
        self.root = root
        self.repos = {}

    def create_repo(self, repo_id, private=False, repo_type="model", exist_ok=False):
        if repo_id in self.repos and not exist_ok:
            raise RuntimeError("exists")
        self.repos[repo_id] = {"private": private}
        return f"https://hub.local/{repo_id}"

    def upload_folder(self, repo_id, folder_path, repo_type="model", commit_message=""):
        assert repo_id in self.repos, "upload before create_repo"
        shutil.copytree(folder_path, self.root / repo_id, dirs_exist_ok=True)
        self.repos[repo_id]["message"] = commit_message
        return f"https://hub.local/{repo_id}/commit/1"


def test_push_uploads_folder_card_and_report(run_dir, tmp_path):
    from huggingface_hub import ModelCard

    report.write_report(run_dir)
    local = LocalHub(tmp_path / "hub")
    url = hub.push_stage(run_dir, "sft", "alice/nanochat-tiny", private=True, api=local)
    assert url.endswith("/commit/1")
    assert local.repos["alice/nanochat-tiny"]["private"] is True
    uploaded = tmp_path / "hub" / "alice" / "nanochat-tiny"
    assert (uploaded / "config.json").exists() and (uploaded / "model.safetensors").exists()
    assert (uploaded / "report" / "report.md").exists() and (uploaded / "report" / "plots" / "sft_loss.png").exists()
    card = ModelCard.load(uploaded / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert results == {"ARC-Easy": 0.35, "GSM8K": 0.02, "ChatCORE": 0.05}
    assert "alice/nanochat-tiny" in card.text and "trust_remote_code" not in card.text
    # a modern checkpoint needs remote code, and the card says so
    rl_card = hub.build_model_card(run_dir, "rl", "alice/rl")
    assert "trust_remote_code=True" in rl_card.text


def test_push_skips_optimizer_state_and_rejects_bad_input(run_dir, tmp_path):
    local = LocalHub(tmp_path / "hub")
    hub.push_stage(run_dir, "base", "bob/base", api=local)
    assert not (tmp_path / "hub" / "bob" / "base" / "checkpoints").exists()
    with pytest.raises(FileNotFoundError, match="run the mid stage first"):
        hub.push_stage(run_dir, "mid", "bob/x", api=local)
    with pytest.raises(ValueError, match="USER/NAME"):
        hub.push_stage(run_dir, "sft", "noslash", api=local)


