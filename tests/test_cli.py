"""The `nanochat-hf` router: every stage is listed and resolves to a function, stages get their argv."""

import re
import subprocess
import sys

import pytest

from nanochat_hf import cli

STAGES = ["data", "tokenizer", "plan", "pretrain", "mid", "sft", "rl", "eval", "chat", "serve", "report", "push",
          "convert", "speedrun"]


def test_help_lists_every_stage_in_pipeline_order():
    res = subprocess.run([sys.executable, "-m", "nanochat_hf", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    listed = re.findall(r"^ {4}(\S+)", res.stdout, flags=re.M)  # stage names; wrapped help lines are deeper
    assert listed == STAGES
    assert list(cli.STAGES) == STAGES


def test_no_arguments_prints_help_and_fails(capsys):
    assert cli.main([]) != 0
    assert "tokenizer" in capsys.readouterr().out


def test_unknown_stage_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["pretrian"])
    assert exc.value.code != 0
    assert "unknown stage 'pretrian'" in capsys.readouterr().err


def test_every_stage_resolves_to_a_function():
    for target, _ in cli.STAGES.values():
        assert callable(cli._load(target)), target


def test_missing_dependency_inside_a_stage_is_not_hidden(monkeypatch, tmp_path):
    # an ImportError of a third-party package surfaces as itself
    (tmp_path / "stage_with_bad_import.py").write_text("import package_that_is_not_installed_xyz\ndef "
                                                       "main(argv): return 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.STAGES, "report", ("stage_with_bad_import:main", "broken"))
    with pytest.raises(ModuleNotFoundError, match="package_that_is_not_installed_xyz"):
        cli.main(["report"])


def test_stage_receives_its_arguments(tmp_path):
    out = tmp_path / "tok"
    assert cli.main(["tokenizer", "train", "--vocab-size", "300", "--max-chars", "20000", "--output", str(out)]) == 0
    assert (out / "tokenizer.json").is_file()
