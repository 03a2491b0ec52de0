"""RL stage: prompts, rollouts with the calculator (forced tokens masked), GRPO raising the reward, resume."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from nanochat_hf.rewards import correctness_reward
from nanochat_hf.rl import (
    RLArguments,
    _groups,
    load_prompts,
    main,
    make_rollout_func,
    make_vllm_rollout_func,
    parse_args,
    rl_lr_multiplier,
    synthetic_rows,
    to_prompt_dataset,
    with_tool_call_metric,
)

REPO = Path(__file__).resolve().parents[1]
MAX_OPERAND = 2  # answers from a handful of values: a 2-layer model gets some right after a short SFT
SFT_STEPS = 200  # pass@1 about 0.25 on held-out problems: room for RL to improve


def _sft(model, tokenizer, conversations, steps: int, lr: float = 1e-2, batch_size: int = 16, seed: int = 0):
    """Plain supervised training on the assistant tokens (what `nanochat-hf sft` does, minus TRL)."""
    from nanochat_hf.chat_format import render_conversation

    data = [render_conversation(tokenizer, c) for c in conversations]
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for step in range(steps):
        batch = [data[rng.randrange(len(data))] for _ in range(batch_size)]
        T = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([i + [tokenizer.pad_token_id] * (T - len(i)) for i, _ in batch])
        labels = torch.tensor([[t if m else -100 for t, m in zip(i, mk)] + [-100] * (T - len(i)) for i, mk in batch])
        for group in opt.param_groups:
            group["lr"] = lr * (1 - step / steps)
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model


def noisy_arithmetic(size: int) -> list:
    """The synthetic SFT conversations, half of them ending in a wrong `#### 0`.

    The SFT'd model then answers right or "0" about evenly: a policy with room to improve that
    GRPO can fix within a few steps (only the reward tells the two apart).
    """
    from nanochat_hf.synthetic_tasks import arithmetic

    conversations = arithmetic(size, seed=0, max_operand=MAX_OPERAND)
    for i, conv in enumerate(conversations):
        last = conv[1]["content"][-1]
        if i % 2 == 1:
            last["text"] = last["text"].rsplit("####", 1)[0] + "#### 0"
    return conversations


@pytest.fixture(scope="session")
def sft_model_dir(tiny_tokenizer_dir, tmp_path_factory):
    """A 2-layer model SFT'd on the synthetic arithmetic conversations (calculator call, `#### answer`)."""
    import nanochat_hf.modeling  # noqa: F401
    from nanochat_hf import NanoChatConfig, NanoChatForCausalLM
    from nanochat_hf.tokenization import load_tokenizer, save_tokenizer

    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    torch.manual_seed(0)
    config = NanoChatConfig.from_depth(2, vocab_size=len(tokenizer), max_position_embeddings=256,
                                       head_dim=32, aspect_ratio=32)
    model = _sft(NanoChatForCausalLM(config), tokenizer, noisy_arithmetic(2000), SFT_STEPS)
    out = tmp_path_factory.mktemp("sft_model")
    model.save_pretrained(out)
    save_tokenizer(tokenizer, out)
    return out


# ----------------------------------------------------------------------------- prompts


def test_synthetic_rows_are_gsm8k_rows_whose_reference_earns_the_reward():
    from nanochat_hf.chat_data import gsm8k_answer_to_parts
    from nanochat_hf.synthetic_tasks import arithmetic

    rows = synthetic_rows(20, seed=3, max_operand=99)
    assert all(set(r) == {"question", "answer"} and "####" in r["answer"] for r in rows)
    # The same conversations SFT trains on: GSM8K's <<expr=result>> parses back to the tool-call parts.
    assert [gsm8k_answer_to_parts(r["answer"]) for r in rows] == [c[1]["content"] for c in arithmetic(20, 3, 99)]
    answers = [r["answer"] for r in rows]
    assert correctness_reward(completions=answers, answer=answers) == [1.0] * 20
    assert synthetic_rows(5, seed=3) == synthetic_rows(5, seed=3)  # deterministic


def test_load_prompts_from_local_gsm8k_files(tmp_path):
    rows = {"train": [{"question": "Ann has 3 apples and buys 4. How many?", "answer": "3+4=<<3+4=7>>7\n#### 7"}] * 3,
            "test": [{"question": "What is 2 times 5?", "answer": "2*5=<<2*5=10>>10\n#### 10"}]}
    for split, rs in rows.items():
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps({**r, "extra": 1}) + "\n" for r in rs))
    train, test = load_prompts(RLArguments(dataset_name=str(tmp_path), dataset_config=None))
    assert len(train) == 3 and len(test) == 1
    assert set(train.column_names) == {"question", "answer", "prompt"}
    assert train[0]["prompt"] == [{"role": "user", "content": rows["train"][0]["question"]}]
    assert test[0]["answer"].endswith("#### 10")
    train, _ = load_prompts(RLArguments(dataset_name=str(tmp_path), dataset_config=None, max_train_examples=2))
    assert len(train) == 2


def test_prompt_dataset_refuses_other_schemas():
    with pytest.raises(ValueError, match="question"):
        to_prompt_dataset([{"problem": "1+1", "answer": "#### 2"}])


def test_groups_of_repeated_prompts():
    a, b = [{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]
    assert _groups([a, a, a, b, b, a]) == [(0, 3), (3, 5), (5, 6)]


# ----------------------------------------------------------------------------- rollouts with the tool


def test_rollout_forces_calculator_output_and_masks_it(sft_model_dir):
    """TRL's rollout_func contract, through our Engine: forced `<|output_start|>...<|output_end|>` has env_mask 0."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from nanochat_hf.tokenization import load_tokenizer
    from nanochat_hf.tools import run_calculator

    tokenizer = load_tokenizer(sft_model_dir)
    model = AutoModelForCausalLM.from_pretrained(sft_model_dir).train()  # as the trainer holds it
    questions = ["What is 2*2?", "Compute 1 + 2."]
    prompts = [[{"role": "user", "content": q}] for q in questions for _ in range(4)]
    trainer = SimpleNamespace(
        args=SimpleNamespace(seed=0, max_completion_length=64, temperature=0.7, top_k=50, top_p=1.0),
        processing_class=tokenizer, model_wrapped=model, accelerator=Accelerator(cpu=True),
        state=SimpleNamespace(global_step=0))
    out = make_rollout_func()(prompts, trainer)
    assert set(out) == {"prompt_ids", "completion_ids", "logprobs", "env_mask"}
    assert len(out["completion_ids"]) == len(out["env_mask"]) == len(out["prompt_ids"]) == 8
    assert model.training  # the rollout hands the model back in training mode

    ids = {n: tokenizer.convert_tokens_to_ids(n) for n in
           ("<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>", "<|assistant_end|>")}
    checked = 0
    for completion, mask in zip(out["completion_ids"], out["env_mask"]):
        assert len(completion) == len(mask)
        forced = [i for i, m in enumerate(mask) if m == 0]
        start = completion.index(ids["<|python_start|>"]) if ids["<|python_start|>"] in completion else None
        after = completion[start:] if start is not None else []
        if ids["<|python_end|>"] not in after or after.index(ids["<|python_end|>"]) == 1:
            assert forced == []  # nothing is forced without a (non-empty) tool call
            continue
        end = start + after.index(ids["<|python_end|>"])
        expression = tokenizer.decode(completion[start + 1:end])
        expected = [ids["<|output_start|>"], *tokenizer.encode(run_calculator(expression), add_special_tokens=False),
                    ids["<|output_end|>"]]
        # Right after the call: the calculator's real answer, every token of it masked out of the loss.
        assert completion[end + 1:end + 1 + len(expected)] == expected
        assert forced[: len(expected)] == list(range(end + 1, end + 1 + len(expected)))
        assert all(mask[i] == 1 for i in range(end + 1))  # the model's own tokens stay in the loss
        checked += 1
    assert checked >= 4, "the SFT'd model should call the calculator in most samples"
    # Samples that stopped end with <|assistant_end|>, kept in the loss (the model learns to stop).
    stopped = [c for c in out["completion_ids"] if len(c) < 64]
    assert stopped and all(c[-1] == ids["<|assistant_end|>"] for c in stopped)


def test_tool_calls_are_logged_through_the_reward_hook():
    """The calculator calls per completion reach TRL's metrics via `log_metric`; the reward itself is unchanged."""
    logged = []
    reward = with_tool_call_metric(correctness_reward, python_start=7)
    assert reward.__name__ == "correctness_reward"
    out = reward(completions=["#### 4", "#### 5"], answer=["4", "4"], completion_ids=[[7, 1, 7], [2]],
                 log_metric=lambda name, value: logged.append((name, value)))
    assert out == correctness_reward(completions=["#### 4", "#### 5"], answer=["4", "4"])
    assert logged == [("tools/calls_per_completion", 1.0)]


class FakeVLLM:
    """TRL's VLLMGeneration.generate contract: scripted continuations, recorded calls.

    Every sample first writes a call `6*7` and then (as vLLM would, not knowing the tool) invents an
    output `1`; given the real output back, it answers and stops.
    """

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, []
        t = tokenizer.convert_tokens_to_ids
        self.call = [t("<|python_start|>"), *tokenizer.encode("6*7", add_special_tokens=False), t("<|python_end|>")]
        self.invented = [t("<|output_start|>"), *tokenizer.encode("1", add_special_tokens=False), t("<|output_end|>")]
        self.answer = [*tokenizer.encode("#### 42", add_special_tokens=False), t("<|assistant_end|>")]

    def generate(self, prompts, images, num_generations, profiler=None):
        self.calls.append([list(p) for p in prompts])
        out = [self.answer if p[-1] == self.tokenizer.convert_tokens_to_ids("<|output_end|>") else
               self.call + self.invented + self.answer for p in prompts]
        logprobs = [[[-0.5 - j] for j in range(len(o))] for o in out]  # top-1 logprob per token, as vLLM returns
        return prompts, out, logprobs, None


@pytest.mark.parametrize("other_rank,call_sizes", [([0, 0, 0], [2, 2]), ([3, 3, 1, 0], [3, 3, 1])])
def test_vllm_rollout_runs_the_calculator_between_turns(tiny_tokenizer_dir, other_rank, call_sizes):
    """use_vllm: turns through TRL's vLLM backend (mocked: no GPU here), the calculator's answer forced in."""
    from nanochat_hf.chat_format import render_for_completion
    from nanochat_hf.tokenization import load_tokenizer

    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    vllm = FakeVLLM(tokenizer)
    # A second rank with `other_rank` samples pending at each turn: this rank pads its calls to the same
    # size, and keeps calling while that rank still generates (server mode's collective call).
    others = iter(other_rank)
    gather = lambda t: torch.cat([t, torch.tensor([next(others)])])  # noqa: E731
    trainer = SimpleNamespace(args=SimpleNamespace(max_completion_length=64), processing_class=tokenizer,
                              vllm_generation=vllm, accelerator=SimpleNamespace(gather=gather, device="cpu"))
    prompts = [[{"role": "user", "content": "What is 6 times 7?"}]] * 2
    out = make_vllm_rollout_func()(prompts, trainer)

    prompt = render_for_completion(tokenizer, prompts[0])
    real = [tokenizer.convert_tokens_to_ids("<|output_start|>"), *tokenizer.encode("42", add_special_tokens=False),
            tokenizer.convert_tokens_to_ids("<|output_end|>")]
    expected = vllm.call + real + vllm.answer  # the invented output is gone, the calculator's is in
    assert out["prompt_ids"] == [prompt, prompt]
    assert out["completion_ids"] == [expected, expected]
    assert out["env_mask"] == [[1] * len(vllm.call) + [0] * len(real) + [1] * len(vllm.answer)] * 2
    lps = out["logprobs"][0]
    assert lps[: len(vllm.call)] == [-0.5 - j for j in range(len(vllm.call))]
    assert lps[len(vllm.call):len(vllm.call) + len(real)] == [None] * len(real)  # forced: no sampling logprob
    assert lps[-len(vllm.answer):] == [-0.5 - j for j in range(len(vllm.answer))]
    # Turn 2 continues from prompt + completion so far; fillers keep both ranks' calls the same size.
    assert vllm.calls[1][0] == prompt + vllm.call + real
    assert [len(c) for c in vllm.calls] == call_sizes


def test_vllm_rollout_stops_at_the_completion_budget(tiny_tokenizer_dir):
    from nanochat_hf.tokenization import load_tokenizer

    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    vllm = FakeVLLM(tokenizer)
    budget = len(vllm.call) + 1  # room for the call and the first forced token only
    trainer = SimpleNamespace(args=SimpleNamespace(max_completion_length=budget), processing_class=tokenizer,
                              vllm_generation=vllm, accelerator=SimpleNamespace(gather=lambda t: t, device="cpu"))
    out = make_vllm_rollout_func()([[{"role": "user", "content": "6*7?"}]], trainer)
    assert out["completion_ids"] == [vllm.call + [tokenizer.convert_tokens_to_ids("<|output_start|>")]]
    assert out["env_mask"] == [[1] * len(vllm.call) + [0]]
    assert len(vllm.calls) == 1  # nothing left to generate


# ----------------------------------------------------------------------------- GRPO


def _rl_argv(model_dir, out_dir, *extra):
    return ["--config", str(REPO / "recipes/tiny/rl.yaml"), "--model_name_or_path", str(model_dir),
            "--output_dir", str(out_dir), "--synthetic_max_operand", str(MAX_OPERAND),
            "--synthetic_train_size", "400", "--synthetic_test_size", "16", "--eval_examples", "16",
            "--max_completion_length", "64", "--dataloader_num_workers", "0", *extra]


def _log(out_dir):
    return [json.loads(line) for line in (Path(out_dir) / "logs" / "rl.jsonl").read_text().splitlines()]


def test_grpo_raises_the_reward_of_an_sft_model(sft_model_dir, tmp_path):
    # The tiny recipe's optimizer (nanochat's Muon + AdamW, frozen scalars, 10 warmup steps), 8 questions x 8
    # samples a step; init_lr_frac 0.03 as 30 steps of this 2-layer model stand for the recipe's 120.
    # Measured: last 10 steps' mean reward over the first 10 +0.047 (0.253 -> 0.300), held-out pass@1
    # 0.34 -> 0.41; at 0.02 +0.030, at 0.05 +0.034 with pass@1 falling; at lr 0 (question mix alone) +0.023.
    out = tmp_path / "rl"
    rc = main(_rl_argv(sft_model_dir, out, "--max_steps", "30", "--num_generations", "8",
                       "--per_device_train_batch_size", "64", "--eval_every", "15", "--pass_k", "2",
                       "--eval_examples", "64", "--synthetic_test_size", "64", "--save_steps", "100",
                       "--init_lr_frac", "0.03"))
    assert rc == 0
    log = _log(out)
    rewards = [row["reward"] for row in log if "reward" in row]
    assert len(rewards) == 30
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    assert 0.0 < first < 0.9, f"the SFT model should be right sometimes, not always: {rewards}"
    assert last > first + 0.04, f"mean reward did not rise: first 10 steps {first:.3f}, last 10 {last:.3f}"
    # pass@k measured at the start, midway and at the end; per-function reward logged by TRL.
    passk = [row for row in log if "pass@1" in row]
    assert [row["step"] for row in passk] == [0, 15, 30]
    assert passk[-1]["pass@1"] >= passk[0]["pass@1"], passk
    assert all(0 <= row["pass@1"] <= row["pass@2"] <= 1 for row in passk)
    assert all(row["pass@k/n"] == 64 for row in passk)  # questions measured: the report card's noise band
    assert any("rewards/correctness_reward/mean" in row for row in log)
    # nanochat's optimizer follows rl_lr_multiplier (10 warmup steps, then down to 0), not the Trainer's linear.
    lrs = [row["learning_rate"] for row in log if "reward" in row]
    line = [rl_lr_multiplier(step, 30, warmup_steps=10) for step in range(30)]
    assert lrs == pytest.approx([lrs[10] / line[10] * m for m in line], rel=1e-6), lrs
    # A Hub-ready folder that loads without nanochat_hf-specific steps.
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json", "README.md"):
        assert (out / name).is_file(), name
    from nanochat_hf.tokenization import load_tokenizer

    tokenizer = load_tokenizer(out)
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tokenizer.convert_tokens_to_ids(["<|assistant_end|>", "<|bos|>"])


def test_kill_and_resume_matches_the_uninterrupted_run(sft_model_dir, tmp_path, kill_mid_run):
    from safetensors.torch import load_file

    ref, killed = tmp_path / "ref", tmp_path / "killed"
    argv = lambda out: _rl_argv(sft_model_dir, out, "--max_steps", "4", "--save_steps", "2",  # noqa: E731
                                "--num_generations", "4", "--per_device_train_batch_size", "8", "--eval_every", "0")
    assert main(argv(ref)) == 0
    full = load_file(ref / "model.safetensors")
    full_log = [r for r in _log(ref) if "reward" in r]
    # The same run SIGKILLed during step 3 (after checkpoint-2 landed), then resumed.
    kill_mid_run("nanochat_hf.rl", argv(killed), killed, 2)
    assert main(argv(killed) + ["--resume_from_checkpoint", "latest"]) == 0
    resumed = load_file(killed / "model.safetensors")
    log = [r for r in _log(killed) if "reward" in r]
    assert [r["step"] for r in log] == [1, 2, 3, 4]  # no step twice, none missing
    assert [r["reward"] for r in log] == [r["reward"] for r in full_log]  # same rollouts after the restart
    assert full.keys() == resumed.keys()
    for name, tensor in full.items():
        assert torch.equal(resumed[name], tensor), name


# ----------------------------------------------------------------------------- recipes and bad input


@pytest.mark.parametrize("tier", ["tiny", "d20", "d24", "d26", "d32"])
def test_recipes_hold_nanochats_objective(tier):
    args, config = parse_args(["--config", str(REPO / f"recipes/{tier}/rl.yaml"), "--bf16",
                               "false", "--use_cpu", "true"])
    assert (config.beta, config.num_iterations, config.loss_type, config.scale_rewards) == (0.0, 1, "dapo", "none")
    assert (config.temperature, config.top_k) == (1.0, 50)
    assert args.reward_funcs == ["correctness"] and args.use_calculator
    if tier != "tiny":
        assert config.num_generations == 16 and config.max_completion_length == 256
        assert config.generation_batch_size * 8 // config.num_generations == 16  # 16 questions/step on 8 GPUs
        assert args.dataset_name == "openai/gsm8k" and args.init_lr_frac == 0.05


def test_gpu_recipes_parse_on_a_machine_without_gpu():
    """The d20 recipe (bf16: true, no use_cpu) on a CPU-only machine: use_cpu by itself, as the SFT stage does,
    so a `--multi_gpu` CPU launch is one gloo group (the GPU-tier rehearsal, tests/test_rehearsal.py)."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the recipes run on it")
    _, config = parse_args(["--config", str(REPO / "recipes/d20/rl.yaml")])
    assert config.use_cpu and config.bf16


def test_every_flag_overrides_the_recipe():
    args, config = parse_args(["--config", str(REPO / "recipes/tiny/rl.yaml"), "--max_steps", "3",
                               "--pass_k", "2", "--reward_funcs", "correctness", "format"])
    assert config.max_steps == 3 and args.pass_k == 2 and args.reward_funcs == ["correctness", "format"]


def test_bad_input_is_one_line_error(tmp_path, sft_model_dir, capsys):
    recipe = str(REPO / "recipes/tiny/rl.yaml")
    assert main(["--config", recipe, "--model_name_or_path", str(tmp_path / "nope"),
                 "--output_dir", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["--config", recipe, "--model_name_or_path", str(sft_model_dir), "--output_dir", str(tmp_path),
                 "--reward_funcs", "vibes"]) == 2
    assert "unknown reward_funcs" in capsys.readouterr().err
    assert main(["--config", recipe, "--model_name_or_path", str(sft_model_dir), "--output_dir", str(tmp_path),
                 "--resume_from_checkpoint", str(tmp_path / "checkpoint-9")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_rl_horizon_follows_the_data_when_max_steps_is_unset():
    """max_steps <= 0: as nanochat, (questions // questions per step) * epochs, so the lr decay ends with the data."""
    from nanochat_hf.rl import rl_horizon

    recipe = ["--config", str(REPO / "recipes/tiny/rl.yaml")]
    _, config = parse_args([*recipe, "--max_steps", "-1", "--num_train_epochs", "1"])  # 32 samples / 8 each
    assert rl_horizon(config, 2000) == 500  # 4 questions per step
    _, config = parse_args(["--config", str(REPO / "recipes/d20/rl.yaml"), "--bf16", "false", "--use_cpu", "true"])
    # GSM8K's 7473 training questions; one process takes 2 per step (on 8 GPUs: 16 per step, 467 steps)
    assert config.generation_batch_size // config.num_generations == 2 and rl_horizon(config, 7473) == 3736
    _, config = parse_args([*recipe, "--max_steps", "0", "--num_train_epochs", "2",
                            "--per_device_train_batch_size", "16"])
    assert rl_horizon(config, 2000) == 2000  # 2 questions per step, two passes
    assert rl_horizon(config, 1) == 1  # never zero steps
    _, config = parse_args(recipe)
    assert rl_horizon(config, 2000) == 120  # an explicit max_steps (the recipe's) wins


def test_rl_lr_warms_up_then_decays_to_zero():
    assert [rl_lr_multiplier(s, 100) for s in (0, 50, 100)] == [1.0, 0.5, 0.0]  # nanochat: no warmup
    warm = [rl_lr_multiplier(s, 100, warmup_steps=4) for s in range(6)]
    assert warm[0] == pytest.approx(0.2) and warm[3] == pytest.approx(0.8 * 0.97)
    assert warm == sorted(warm[:5]) + warm[5:] and warm[4] == pytest.approx(0.96)  # rises to the decay line


def test_rl_accuracy_benchmark_counts_greedy_and_sampled_answers(sft_model_dir, monkeypatch):
    """benchmarks/rl_accuracy.py, which measures docs/rl.md's table: the held-out rows, scored by RL's reward."""
    import importlib.util

    from nanochat_hf.synthetic_tasks import VAL_SEED_OFFSET

    spec = importlib.util.spec_from_file_location("rl_accuracy", REPO / "benchmarks" / "rl_accuracy.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = synthetic_rows(4, seed=VAL_SEED_OFFSET, max_operand=MAX_OPERAND)
    greedy, pass1 = bench.accuracy(str(sft_model_dir), rows, samples=3)
    assert greedy * 4 == round(greedy * 4) and pass1 * 12 == pytest.approx(round(pass1 * 12))
    # A sample is counted right exactly when its `#### N` is the reference's: all right, then all wrong.
    reference = {row["question"]: row["answer"].split("####")[1].strip() for row in rows}
    for right in (True, False):
        def fake(engine, tokens, n, *args, right=right):
            question = engine.tokenizer.decode(tokens)
            number = next(v for q, v in reference.items() if q in question) if right else "99999"
            return [engine.tokenizer.encode(f"So #### {number}", add_special_tokens=False)] * n, None

        monkeypatch.setattr("nanochat_hf.rl.sample_with_tools", fake)
        assert bench.accuracy(str(sft_model_dir), rows, samples=3) == (float(right), float(right))
    # A wrong folder: one line naming the fix, exit status 2.
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "rl_accuracy.py"), str(sft_model_dir / "nope")],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [res.stderr.strip()], res.stderr
    assert "not found" in res.stderr and "pass a model folder" in res.stderr
