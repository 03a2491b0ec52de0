"""The report card's "what each stage moved": per stage, the metric it exists to move, before -> after,
the change with its noise band, and a verdict; a stage that did not move its metric is flagged."""

import json
import math
from pathlib import Path

import pytest

from nanochat_hf import report


def _jsonl(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def _eval(path: Path, accuracies: dict[str, float], n: int = 100):
    chance = {"ARC-Easy": 0.25}
    tasks = {t: {"accuracy": a, "centered": (a - chance.get(t, 0.0)) / (1 - chance.get(t, 0.0)), "n": n}
             for t, a in accuracies.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"tasks": tasks}))


@pytest.fixture()
def run(tmp_path):
    """A run whose stages each do something different to their metric."""
    run = tmp_path / "tiny"
    _jsonl(run / "base" / "logs" / "pretrain.jsonl", [{"step": 0, "val_bpb": 3.6}, {"step": 5, "train_loss": 4.0},
                                                      {"step": 9, "val_bpb": 2.4}])
    # mid: the calculator-call rate moves 0 -> 1 (no band at p = 0 and 1); SpellingBee 1/16 -> 2/16 is noise
    _jsonl(run / "mid" / "logs" / "mid.jsonl", [
        {"step": 0, "chatcore/Arithmetic/tool_calls": 0.0, "chatcore/Arithmetic/n": 16,
         "chatcore/SpellingBee": 0.0625, "chatcore/SpellingBee/n": 16},
        {"step": 70, "chatcore/Arithmetic/tool_calls": 1.0, "chatcore/Arithmetic/n": 16,
         "chatcore/SpellingBee": 0.125, "chatcore/SpellingBee/n": 16}])
    # SFT: Arithmetic 0.27 -> 0.85 moves; ARC-Easy is unchanged; SpellingBee falls beyond noise
    _eval(run / "eval" / "mid.json", {"ARC-Easy": 0.26, "Arithmetic": 0.27, "SpellingBee": 0.60})
    _eval(run / "eval" / "sft.json", {"ARC-Easy": 0.26, "Arithmetic": 0.85, "SpellingBee": 0.30})
    # RL: pass@1 0.55 -> 0.80 on 20 questions is within noise; Arithmetic holds, SpellingBee is lost
    _jsonl(run / "rl" / "logs" / "rl.jsonl", [{"step": 0, "pass@1": 0.55, "pass@k/n": 20}, {"step": 5, "reward": 0.5},
                                              {"step": 30, "pass@1": 0.80, "pass@k/n": 20}])
    _eval(run / "eval" / "rl.json", {"ARC-Easy": 0.27, "Arithmetic": 0.81, "SpellingBee": 0.05})
    return run


def _rows(run: Path) -> dict[tuple[str, str], report.Effect]:
    return {(e.stage, e.metric): e for e in report.stage_effects(run)}


def test_verdicts_follow_the_noise_band(run):
    rows = _rows(run)
    verdicts = {key: e.verdict for key, e in rows.items()}
    assert verdicts == {
        ("pretrain", "val bpb"): "moved",  # lower is better
        ("mid", "calculator-call rate (held-out Arithmetic)"): "moved",
        ("mid", "SpellingBee"): "within noise",
        ("sft", "chat evals (mean centered, 3 tasks)"): "moved",  # (0 + 0.58 - 0.30) / 3
        ("sft", "ARC-Easy"): "**did not move**",
        ("sft", "Arithmetic"): "moved",
        ("sft", "SpellingBee"): "**worse**",
        ("rl", "pass@1 (held-out problems)"): "within noise",
        ("rl", "ARC-Easy (should hold)"): "held",
        ("rl", "Arithmetic (should hold)"): "held",
        ("rl", "SpellingBee (should hold)"): "**worse**",
    }
    pass1 = rows[("rl", "pass@1 (held-out problems)")]
    assert pass1.band == pytest.approx(2 * math.sqrt(0.55 * 0.45 / 20 + 0.8 * 0.2 / 20))
    assert rows[("pretrain", "val bpb")].band is None


def test_card_flags_the_stage_that_did_not_move(run):
    text = report.build_report(run)
    assert "| stage | metric | before | after | change (± 2 SE) | verdict |" in text
    assert "| pretrain | val bpb | 3.6000 | 2.4000 | -1.2000 | moved |" in text
    assert "| rl | pass@1 (held-out problems) | 0.5500 | 0.8000 | +0.2500 ± 0.2855 | within noise |" in text
    assert "| sft | SpellingBee | 0.6000 | 0.3000 | -0.3000 ± 0.1342 | **worse** |" in text
    flags = [line for line in text.splitlines() if line.startswith("- **")]
    assert flags == [
        "- **sft lost** SpellingBee beyond noise.",
        "- **rl did not move** what it exists to move beyond noise (pass@1 (held-out problems): within noise).",
        "- **rl lost** SpellingBee (should hold) beyond noise.",
    ]
    assert "sqrt(p(1-p)/n)" in text


def test_a_stage_that_moved_nothing_is_flagged(run):
    _jsonl(run / "mid" / "logs" / "mid.jsonl", [
        {"step": 0, "chatcore/Arithmetic/tool_calls": 0.0, "chatcore/Arithmetic/n": 16,
         "chatcore/SpellingBee": 0.0, "chatcore/SpellingBee/n": 16},
        {"step": 70, "chatcore/Arithmetic/tool_calls": 0.0, "chatcore/Arithmetic/n": 16,
         "chatcore/SpellingBee": 0.0, "chatcore/SpellingBee/n": 16}])
    _jsonl(run / "base" / "logs" / "pretrain.jsonl", [{"step": 0, "val_bpb": 3.6}, {"step": 9, "val_bpb": 3.7}])
    rows = _rows(run)
    assert rows[("mid", "SpellingBee")].verdict == "**did not move**"
    assert rows[("pretrain", "val bpb")].verdict == "**worse**"
    flags = report.flagged_stages(list(rows.values()))
    assert flags[0] == "- **pretrain did not move** what it exists to move beyond noise (val bpb: worse)."
    assert flags[1].startswith("- **mid did not move**")


def test_missing_measurements_are_left_out_or_unjudged(tmp_path):
    """Pretraining without a step-0 eval, logs without n (older runs): no verdict made up."""
    run = tmp_path / "run"
    _jsonl(run / "base" / "logs" / "pretrain.jsonl", [{"step": 30, "val_bpb": 2.4},  # the end row repeats it
                                                      {"event": "end", "step": 30, "val_bpb": 2.4}])
    _jsonl(run / "rl" / "logs" / "rl.jsonl", [{"step": 0, "pass@1": 0.5}, {"step": 2, "pass@1": 0.6}])
    rows = _rows(run)
    assert list(rows) == [("pretrain", "val bpb"), ("rl", "pass@1 (held-out problems)")]
    assert (rows[("pretrain", "val bpb")].before, rows[("pretrain", "val bpb")].verdict) == (None, "-")
    assert rows[("rl", "pass@1 (held-out problems)")].band is None
    assert rows[("rl", "pass@1 (held-out problems)")].verdict == "moved"
    assert report.flagged_stages(list(rows.values())) == []
