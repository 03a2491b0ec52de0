"""Mid-training + SFT on CPU with a tiny model: loss drops, tool calls are learned, resume, Hub-ready output,
bad input."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from nanochat_hf import chat_data, sft, synthetic_tasks

MAX_LENGTH = 128
# Arithmetic with calculator calls (the skill we check) + identity; validation from other seeds.
MIXTURE = json.dumps({"train": [{"source": "arithmetic", "size": 400}, {"source": "identity"}],
                      "validation": [{"source": "arithmetic", "size": 16}]})
COMMON = ["--mixture", MIXTURE, "--max_length", str(MAX_LENGTH), "--per_device_train_batch_size", "8",
          "--per_device_eval_batch_size", "8", "--batch_lr_scale", "1.0", "--disable_tqdm", "true"]
MID_STEPS, SFT_STEPS = 30, 10  # 20 mid steps learn the tool call for some seeds only
# The quick ChatCORE subset during SFT (on the package's offline ARC rows and generated SpellingBee).
CHATCORE = ["--chatcore_every", "5", "--chatcore_examples", "4", "--chatcore_tasks", "ARC-Easy,SpellingBee",
            "--chatcore_max_new_tokens", "16"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A tiny base checkpoint folder as pretraining leaves it: model + tokenizer saved together."""
    from nanochat_hf.modeling import NanoChatConfig, NanoChatForCausalLM
    from nanochat_hf.tokenization import load_tokenizer, save_tokenizer

    tok = load_tokenizer(tiny_tokenizer_dir)
    cfg = NanoChatConfig.from_depth(2, vocab_size=len(tok), max_position_embeddings=MAX_LENGTH, head_dim=32,
                                    aspect_ratio=32, window_pattern="L")
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("base")
    NanoChatForCausalLM(cfg).save_pretrained(out)
    save_tokenizer(tok, out)
    return out


@pytest.fixture(scope="module")
def runs(base_dir, tmp_path_factory):
    """base -> mid (20 steps) -> sft (10 steps, checkpoints every 5): the pipeline's two chat stages."""
    root = tmp_path_factory.mktemp("runs")
    rc = sft.main_mid(["--model_name_or_path", str(base_dir), "--output_dir", str(root / "mid"), *COMMON,
                       "--max_steps", str(MID_STEPS), "--eval_steps", "10", "--save_steps", "1000"])
    assert rc == 0
    rc = sft.main(["--model_name_or_path", str(root / "mid"), "--output_dir", str(root / "sft"), *COMMON,
                   "--max_steps", str(SFT_STEPS), "--eval_steps", "5", "--save_steps", "5", "--save_total_limit", "3",
                   *CHATCORE])
    assert rc == 0
    return {"base": base_dir, "mid": root / "mid", "sft": root / "sft"}


def read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_validation_loss_drops_in_mid_and_sft(runs):
    mid = read_log(runs["mid"] / "logs" / "mid.jsonl")
    assert mid[0]["event"] == "start" and mid[0]["stage"] == "mid"
    assert mid[0]["sources"] == {"arithmetic": 400, "identity": len(synthetic_tasks.identity())}
    assert "truncated_rows" in mid[0]["train"]
    mid_eval = [r["eval_loss"] for r in mid if "eval_loss" in r]
    assert len(mid_eval) >= 2 and mid_eval[-1] < mid_eval[0] - 0.3
    assert max(r["step"] for r in mid) == MID_STEPS
    sft_log = read_log(runs["sft"] / "logs" / "sft.jsonl")
    sft_eval = [r["eval_loss"] for r in sft_log if "eval_loss" in r]
    # SFT starts where mid-training ended (same validation data), and keeps improving.
    assert abs(sft_eval[0] - mid_eval[-1]) < 0.5 and sft_eval[-1] < sft_eval[0]
    assert any("learning_rate" in r for r in sft_log)


def test_output_is_a_hub_ready_chat_model(runs):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out = runs["sft"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json", "token_bytes.pt"):
        assert (out / name).is_file(), name
    tok = AutoTokenizer.from_pretrained(out)
    assert "{% generation %}" in tok.chat_template
    gen = GenerationConfig.from_pretrained(out)
    assert gen.eos_token_id == tok.convert_tokens_to_ids(["<|assistant_end|>", "<|bos|>"])
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size >= len(tok)


def tool_call_rate(path, tokenizer, n=12) -> float:
    """Share of unseen arithmetic questions answered (greedy) with a well-formed calculator call."""
    from transformers import AutoModelForCausalLM

    from nanochat_hf.chat_format import render_for_completion

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    end = tokenizer.convert_tokens_to_ids("<|assistant_end|>")
    hits = 0
    for conv in synthetic_tasks.arithmetic(n, seed=987_654):
        ids = render_for_completion(tokenizer, conv[:1])
        out = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, eos_token_id=end,
                             pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(out[0, len(ids):])
        hits += bool(re.search(r"<\|python_start\|>[0-9+\-*() ]+<\|python_end\|>", text))
    return hits / n


def test_trained_model_calls_the_calculator_more_than_the_base(runs, tiny_tokenizer):
    base, chat = tool_call_rate(runs["base"], tiny_tokenizer), tool_call_rate(runs["sft"], tiny_tokenizer)
    assert chat > base
    assert chat >= 0.5


def test_kill_and_resume_matches_the_uninterrupted_run(runs, tmp_path, kill_mid_run):
    from safetensors.torch import load_file

    # The fixture's SFT run again, SIGKILLed during step 6 (after checkpoint-5 landed), then resumed.
    killed = tmp_path / "sft"
    argv = ["--model_name_or_path", str(runs["mid"]), "--output_dir", str(killed), *COMMON,
            "--max_steps", str(SFT_STEPS), "--eval_steps", "5", "--save_steps", "5", "--save_total_limit", "3",
            *CHATCORE]
    kill_mid_run("nanochat_hf.sft", argv, killed, 5)
    assert not (killed / "checkpoint-10").exists()
    assert sft.main([*argv, "--resume_from_checkpoint", "latest"]) == 0
    full, resumed = load_file(runs["sft"] / "model.safetensors"), load_file(killed / "model.safetensors")
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(resumed[k], full[k]), k
    log = read_log(killed / "logs" / "sft.jsonl")
    train_steps = [r["step"] for r in log if "loss" in r]
    assert train_steps == list(range(1, SFT_STEPS + 1))  # the killed run's steps kept once, the rest continued


def test_chatcore_subset_is_logged_during_sft_with_the_steps_loss(runs, tiny_tokenizer):
    from nanochat_hf.evaluation.chat_tasks import evaluate_chat_task
    from nanochat_hf.evaluation.run import load_model

    log = read_log(runs["sft"] / "logs" / "sft.jsonl")
    rows = [r for r in log if "chatcore" in r]
    assert [r["step"] for r in rows] == [0, 5, 10]  # step 0: the "before" of the report card
    assert all("loss" in r for r in rows[1:])  # riding on the step's own log row, which keeps its loss
    assert [r["step"] for r in log if "loss" in r] == list(range(1, SFT_STEPS + 1))
    # The last row is the final model's score: the same numbers as evaluating the saved model.
    model, tokenizer = load_model(str(runs["sft"]))
    from nanochat_hf.evaluation.chat_tasks import OFFLINE_CHAT_DATA

    data = str(OFFLINE_CHAT_DATA)
    arc = evaluate_chat_task("ARC-Easy", model, tokenizer, data, 4, max_new_tokens=16, progress=False)
    bee = evaluate_chat_task("SpellingBee", model, tokenizer, data, 4, max_new_tokens=16, progress=False)
    assert rows[-1]["chatcore/ARC-Easy"] == arc["accuracy"] and rows[-1]["chatcore/SpellingBee"] == bee["accuracy"]
    assert rows[-1]["chatcore"] == pytest.approx((arc["centered"] + bee["centered"]) / 2)
    assert rows[-1]["chatcore/ARC-Easy/n"] == arc["n"] == 4  # the report card's noise band needs it


def test_unknown_chatcore_task_is_refused(base_dir, tmp_path, capsys):
    rc = sft.main(["--model_name_or_path", str(base_dir), "--output_dir", str(tmp_path / "x"), *COMMON,
                   "--chatcore_every", "5", "--chatcore_tasks", "ARC-Easy,Trivia"])
    assert rc == 2 and "--chatcore_tasks: unknown ['Trivia']" in capsys.readouterr().err


@pytest.mark.multiprocess
def test_two_process_sft_on_cpu(base_dir, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` (gloo on CPU): both ranks train, one model is saved."""
    import os
    import subprocess
    import sys

    out = tmp_path / "sft2"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", "29541", "-m", "nanochat_hf.sft", "--model_name_or_path", str(base_dir),
           "--output_dir", str(out), *COMMON, "--per_device_train_batch_size", "4", "--max_steps", "6",
           "--eval_steps", "3", "--save_steps", "1000", "--chatcore_every", "3", "--chatcore_examples", "4",
           "--chatcore_max_new_tokens", "16"]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    log = read_log(out / "logs" / "sft.jsonl")
    assert log[0]["world_size"] == 2
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 7))
    assert [r["step"] for r in log if "chatcore" in r] == [0, 3, 6]  # logged once, by the main process
    evals = [r["eval_loss"] for r in log if "eval_loss" in r]
    assert evals[-1] < evals[0]
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 2


def test_trl_sft_cli_trains_a_classic_checkpoint(tiny_tokenizer_dir, tmp_path):
    """`trl sft --config x.yaml` (TRL's own CLI, no nanochat_hf code in the loop) on a classic checkpoint:
    transformers' native nanochat model + our tokenizer and chat template, assistant-only loss."""
    import os
    import subprocess

    from nanochat_hf.modeling import NanoChatConfig, NanoChatForCausalLM
    from nanochat_hf.tokenization import load_tokenizer, save_tokenizer

    tok = load_tokenizer(tiny_tokenizer_dir)
    cfg = NanoChatConfig.from_depth(2, arch="classic", vocab_size=len(tok), max_position_embeddings=MAX_LENGTH,
                                    head_dim=32, aspect_ratio=32)
    torch.manual_seed(0)
    NanoChatForCausalLM(cfg).save_pretrained(tmp_path / "base")
    save_tokenizer(tok, tmp_path / "base")
    (tmp_path / "data").mkdir()
    with open(tmp_path / "data" / "train.jsonl", "w") as f:  # TRL's conversational schema, plain-text turns
        for user, assistant in synthetic_tasks.arithmetic(64, seed=0):
            text = "".join(part["text"] for part in assistant["content"])
            f.write(json.dumps({"messages": [user, {"role": "assistant", "content": text}]}) + "\n")
    (tmp_path / "sft.yaml").write_text(
        f"model_name_or_path: {tmp_path / 'base'}\ndataset_name: {tmp_path / 'data'}\noutput_dir: {tmp_path / 'out'}\n"
        "max_steps: 4\nper_device_train_batch_size: 8\nmax_length: 128\nassistant_only_loss: true\npacking: false\n"
        "learning_rate: 3.0e-3\nlogging_steps: 1\nreport_to: none\nuse_cpu: true\nbf16: false\nsave_strategy: 'no'\n")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    import sys

    trl = Path(sys.executable).with_name("trl")  # the console script of this interpreter's TRL
    res = subprocess.run([str(trl) if trl.exists() else shutil.which("trl"), "sft", "--config",
                          str(tmp_path / "sft.yaml")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    losses = [float(x) for x in re.findall(r"'loss': '([0-9.]+)'", res.stdout + res.stderr)]
    assert len(losses) == 4 and losses[-1] < losses[0]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.config.model_type == "nanochat"  # transformers' own class: no trust_remote_code


def test_schedule_is_nanochats():
    # mid: flat for 80% of the run, then linear to 0; sft: init 0.8 x base, warmdown over the last half
    # (pretraining's schedule, nanochat_hf.optim, with the stage's ratios).
    from nanochat_hf.optim import lr_multiplier, muon_momentum

    assert lr_multiplier(5, 10, 0, 0.2, 0.0) == 1.0
    assert lr_multiplier(9, 10, 0, 0.2, 0.0) == pytest.approx(0.5)
    assert lr_multiplier(10, 10, 0, 0.5, 0.0) == pytest.approx(0.0)
    ramp = [muon_momentum(s, 1000, **sft.MUON_MOMENTUM) for s in (0, 150, 300, 1000)]
    assert ramp == pytest.approx([0.85, 0.90, 0.95, 0.95])  # up over 300 steps, then held to the end
    mid, s = sft.ChatArguments(stage="mid"), sft.ChatArguments(stage="sft")
    assert (mid.init_lr_frac, mid.warmdown_ratio) == (1.0, 0.2) and (s.init_lr_frac, s.warmdown_ratio) == (0.8, 0.5)
    w = torch.nn.Parameter(torch.zeros(4, 4))
    opt = torch.optim.SGD([{"params": [w], "lr": 1.0, "kind": "muon", "momentum": 0.0}])
    sched = sft.NanochatSchedule(opt, 10, 0.0, 0.5, 0.0)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:6] == [1.0] * 6 and lrs[6] < 1.0 and lrs == sorted(lrs, reverse=True)
    assert opt.param_groups[0]["momentum"] > 0.85


def test_recipes_parse(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "recipes"
    for tier in ("tiny", "d20", "d24", "d26", "d32"):
        for stage in ("mid", "sft"):
            args, cfg = sft.parse_args(["--config", str(root / tier / f"{stage}.yaml")])
            assert args.stage == stage and cfg.assistant_only_loss and cfg.packing
            chat_data.Mixture.parse(args.mixture)
    # Every YAML key is a flag: the command line overrides the recipe.
    args, cfg = sft.parse_args(["--config", str(root / "tiny" / "sft.yaml"), "--max_steps",
                                "3", "--matrix_lr", "0.01"])
    assert cfg.max_steps == 3 and args.matrix_lr == 0.01


def test_bad_input_is_refused_with_the_fix(base_dir, tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # A base checkpoint whose tokenizer has no chat tokens (e.g. a GPT-2-style BPE).
    plain = tmp_path / "plain"
    shutil.copytree(base_dir, plain)
    for f in plain.glob("tokenizer*"):
        f.unlink()
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel()
    raw.train_from_iterator(["hello world"] * 10, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=raw).save_pretrained(plain)
    assert sft.main(["--model_name_or_path", str(plain), "--output_dir", str(tmp_path / "o"), *COMMON]) == 2
    err = capsys.readouterr().err
    assert "lacks <|bos|>" in err and "nanochat-hf tokenizer train" in err

    assert sft.main(["--model_name_or_path", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "o")]) == 2
    assert "no config.json" in capsys.readouterr().err
    bad_mix = json.dumps({"train": [{"source": "arithmetic", "size": 4}, {"source": "wikipedia"}]})
    assert sft.main(["--model_name_or_path", str(base_dir), "--output_dir",
                     str(tmp_path / "o"), "--mixture", bad_mix]) == 2
    assert "unknown source 'wikipedia'" in capsys.readouterr().err
    assert sft.main(["--model_name_or_path", str(base_dir), "--output_dir", str(tmp_path / "o"),
                     "--resume_from_checkpoint", str(tmp_path / "nope")]) == 2
    assert "does not exist; pass --resume_from_checkpoint latest" in capsys.readouterr().err
