"""`nanochat-hf eval` end to end on a saved tiny model, and the same numbers through lighteval's own CLI."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanochat_hf.evaluation import core, run

BUNDLE = Path(__file__).parent / "fixtures" / "eval" / "eval_bundle"
CHAT = Path(__file__).parent / "fixtures" / "eval" / "chat"
TASKS_MODULE = Path(run.__file__).parent / "lighteval_tasks.py"


@pytest.fixture(scope="module")
def tiny_model_dir(tiny_tokenizer_dir, tmp_path_factory):
    from nanochat_hf import NanoChatConfig, NanoChatForCausalLM
    from nanochat_hf.tokenization import load_tokenizer, save_tokenizer

    tok = load_tokenizer(tiny_tokenizer_dir)
    torch.manual_seed(0)
    model = NanoChatForCausalLM(NanoChatConfig.from_depth(2, arch="classic", vocab_size=len(tok),
                                                          max_position_embeddings=512))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # decisive (non-uniform) predictions, so that scores are not decided by float noise
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    out = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(out)
    save_tokenizer(tok, out)
    return out


def test_cli_writes_json_and_table_equal_to_library_scores(tiny_model_dir, tmp_path):
    out = tmp_path / "res.json"
    rc = run.main(["--model", str(tiny_model_dir), "--tasks", "core,bpb", "--bundle", str(BUNDLE),
                   "--output", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res["tasks"]) == {"arc_easy", "copa", "lambada_openai", "winograd"}
    model, tok = run.load_model(str(tiny_model_dir), "cpu")
    direct = core.evaluate_core(model, tok, BUNDLE, progress=False)
    for label, r in direct["tasks"].items():
        assert res["tasks"][label]["accuracy"] == pytest.approx(r["accuracy"])
        assert res["tasks"][label]["centered"] == pytest.approx(r["centered"])
        assert res["tasks"][label]["n"] == r["n"]
    assert res["core"] == pytest.approx(direct["core"])
    assert res["model"] == str(tiny_model_dir) and res["run"]["seconds"] > 0 and "commit" in res["run"]
    assert 0 < res["bpb"] < 20  # a random model: roughly log2(vocab) bits per token spread over bytes
    table = out.with_suffix(".md").read_text()
    assert "| copa | 0 | 6 |" in table and "**CORE**" in table


def test_cli_max_per_task_and_chat_tasks(tiny_model_dir, tmp_path):
    out = tmp_path / "chat.json"
    rc = run.main(["--model", str(tiny_model_dir), "--tasks", "copa,ARC-Easy,MMLU", "--bundle", str(BUNDLE),
                   "--chat-data", str(CHAT), "--max-per-task", "2", "--output", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert {k: v["n"] for k, v in res["tasks"].items()} == {"copa": 2, "ARC-Easy": 2, "MMLU": 2}
    assert res["chatcore"] is None  # only defined over all six ChatCORE tasks, as in nanochat


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "core", "--bundle", "/nonexistent/bundle"], "not a CORE eval bundle"),
    (["--tasks", "nosuchtask"], "unknown task 'nosuchtask'"),
    (["--tasks", "arc-easy"], "both the CORE task arc_easy and the chat task ARC-Easy"),
    (["--tasks", "core", "--max-per-task", "0"], "--max-per-task"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tiny_model_dir, argv, message, capsys):
    extra = [] if "--bundle" in argv else ["--bundle", str(BUNDLE)]
    assert run.main(["--model", str(tiny_model_dir), *argv, *extra, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nanochat-hf eval: error:") and message in err and "\n" not in err


@pytest.mark.parametrize("spec, core_labels, chat", [
    ("gsm8k", [], ["GSM8K"]), ("GSM8K", [], ["GSM8K"]), ("humaneval,Human-Eval", [], ["HumanEval"]),
    ("mmlu,spelling_bee", [], ["MMLU", "SpellingBee"]), ("ARC-Easy,arc_challenge", ["arc_challenge"], ["ARC-Easy"]),
    ("arc_easy,COPA,Lambada-OpenAI", ["arc_easy", "copa", "lambada_openai"], []),
    ("chat_arc_easy,core_ARC-Challenge", ["arc_challenge"], ["ARC-Easy"]),  # lighteval's names pick the kind
    ("ChatCORE", [], ["ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee"]),
])
def test_task_names_match_in_any_case_and_spelling(spec, core_labels, chat):
    assert run.resolve_tasks(spec) == (core_labels, chat, False)
    assert run.resolve_tasks(f"{spec},BPB,Core") == (None, chat, True)


def test_unknown_task_lists_every_name_and_downloads_nothing(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NANOCHAT_HF_HOME", str(tmp_path / "empty_cache"))  # no cached bundle: DCLM's 22 labels

    def no_download(*args, **kwargs):
        raise AssertionError("a task name started a download")

    monkeypatch.setattr(core, "download_bundle", no_download)
    assert run.main(["--model", str(tiny_model_dir), "--tasks", "gsm8k,hellaswag-10shot"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nanochat-hf eval: error: unknown task 'hellaswag-10shot'") and "\n" not in err
    for name in (*core.CORE_LABELS, "core", "chatcore", "bpb", "ARC-Easy", "MMLU", "GSM8K",
                 "HumanEval", "SpellingBee"):
        assert f" {name}," in err or f" {name};" in err or err.endswith(f" {name}"), name
    # with a local bundle its core.yaml says which CORE names there are
    assert run.main(["--model", str(tiny_model_dir), "--tasks", "hellaswag", "--bundle", str(BUNDLE)]) == 2
    assert "CORE: arc_easy, copa, lambada_openai, winograd;" in capsys.readouterr().err
    # a chat task asked for in lower case runs offline, under its own name
    out = tmp_path / "gsm8k.json"
    assert run.main(["--model", str(tiny_model_dir), "--tasks", "gsm8k", "--chat-data", str(CHAT), "--max-per-task",
                     "2", "--max-new-tokens", "4", "--output", str(out), "--no-progress"]) == 0
    assert {k: v["n"] for k, v in json.loads(out.read_text())["tasks"].items()} == {"GSM8K": 2}


def test_cli_missing_model_folder(tmp_path, capsys):
    assert run.main(["--model", str(tmp_path), "--tasks", "copa", "--bundle", str(BUNDLE)]) == 2
    assert "no config.json" in capsys.readouterr().err


def run_lighteval(model_dir, tmp_path, tasks: str, backend: str = "accelerate",
                  extra_args=(), **env_vars) -> tuple[dict, str]:
    """lighteval's own CLI with our --custom-tasks module, offline: (results by task, its output).

    backend "accelerate": lighteval's transformers backend; "custom": our Engine backend (lighteval_model.py)."""
    pytest.importorskip("lighteval")
    import lighteval

    pkl = Path(lighteval.__file__).parent / "tasks" / "tasks" / "tinyBenchmarks.pkl"
    if not pkl.exists():
        pytest.skip(f"offline lighteval needs an (empty) {pkl} (it downloads one on import)")
    env = dict(os.environ, NANOCHAT_HF_EVAL_BUNDLE=str(BUNDLE), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               **env_vars)
    lighteval_bin = shutil.which("lighteval") or f"{sys.executable} -m lighteval"
    if backend == "custom":
        model_args = [str(model_dir), str(TASKS_MODULE.parent / "lighteval_model.py")]
    else:
        model_args = [f"model_name={model_dir},trust_remote_code=True,override_chat_template=False,"
                      f"batch_size=4,device=cpu,cache_dir={tmp_path / 'cache'}"]
    cmd = [*lighteval_bin.split(), backend, *model_args, tasks, "--custom-tasks", str(TASKS_MODULE),
           "--output-dir", str(tmp_path / "out"), *extra_args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next((tmp_path / "out" / "results").rglob("results_*.json")).read_text())["results"]
    return results, proc.stdout + proc.stderr


@pytest.mark.slow
def test_lighteval_cli_gives_the_same_numbers(tiny_model_dir, tmp_path):
    """lighteval's own CLI with our --custom-tasks module reproduces nanochat-hf eval's accuracies."""
    labels = ["copa", "winograd", "arc_easy"]
    results, _ = run_lighteval(tiny_model_dir, tmp_path, ",".join(f"core_{label}|0" for label in labels))
    model, tok = run.load_model(str(tiny_model_dir), "cpu")
    ours = core.evaluate_core(model, tok, BUNDLE, labels=labels, progress=False)["tasks"]
    for label in labels:
        assert results[f"core_{label}|0"]["acc"] == pytest.approx(ours[label]["accuracy"]), label


@pytest.mark.slow
def test_lighteval_cli_gives_the_same_chat_letter_scores(tiny_model_dir, tmp_path):
    """ChatCORE's ARC / MMLU through lighteval's CLI: the same accuracies as `nanochat-hf eval`'s letter argmax."""
    from nanochat_hf.evaluation import chat_tasks

    packaged = chat_tasks.OFFLINE_CHAT_DATA  # ARC-Easy / ARC-Challenge rows shipped offline
    results, output = run_lighteval(tiny_model_dir, tmp_path, "chat_arc_easy|0,chat_arc_challenge|0",
                                    NANOCHAT_HF_CHAT_DATA=str(packaged), NANOCHAT_HF_EVAL_MAX_PER_TASK="40")
    assert "was not scored as its single token" not in output
    model, tok = run.load_model(str(tiny_model_dir), "cpu")
    for name, task in (("arc_easy", "ARC-Easy"), ("arc_challenge", "ARC-Challenge")):
        ours = chat_tasks.evaluate_chat_task(task, model, tok, str(packaged), max_problems=40, progress=False)
        assert ours["n"] == 40 and 0 < ours["accuracy"] < 1
        assert results[f"chat_{name}|0"]["acc"] == pytest.approx(ours["accuracy"]), name


def test_speedrun_checks_its_eval_tasks_before_any_stage(tmp_path, monkeypatch, capsys):
    """The speedrun hands its presets' task lists to `nanochat-hf eval --tasks`: they resolve by the same rule
    (so `gsm8k` is GSM8K there too), and a wrong name stops the run before the first stage, in one line."""
    from nanochat_hf import speedrun

    for preset in speedrun.PRESETS.values():
        labels = core.known_labels(None if preset.gpu else speedrun.OFFLINE_EVAL_DATA / "eval_bundle_mini")
        for spec in (preset.base_tasks, preset.chat_tasks):
            run.resolve_tasks(spec, labels)  # raises on a name eval would refuse
    smoke = speedrun.PRESETS["smoke"]
    monkeypatch.setitem(speedrun.PRESETS, "smoke",
                        speedrun.Preset(**{**vars(smoke), "chat_tasks": "gsm8k,Spelling-Bee"}))
    assert speedrun.main(["--preset", "smoke", "--output", str(tmp_path / "ok"), "--dry-run"]) == 0
    assert "--tasks gsm8k,Spelling-Bee" in capsys.readouterr().out
    monkeypatch.setitem(speedrun.PRESETS, "smoke", speedrun.Preset(**{**vars(smoke), "chat_tasks": "gsm8k,spelling"}))
    assert speedrun.main(["--preset", "smoke", "--output", str(tmp_path / "bad"), "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("nanochat-hf speedrun: unknown task 'spelling'")
    assert "\n" not in captured.err.strip()
    assert "[speedrun] tokenizer" not in captured.out and not (tmp_path / "bad").exists()
