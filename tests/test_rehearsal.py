"""The GPU tiers rehearsed on CPU: the d20 recipes through `accelerate launch` on 2 processes.

Each stage runs its d20 recipe (recipes/d20/*.yaml) with d20's width (1280), heads (10 x 128), vocabulary
(32768), optimizer (Muon + AdamW) and schedule, bf16 autocast, under the accelerate configs of the GPU
tiers with only --num_processes 2: multi_gpu.yaml (DDP; gloo on CPU) and fsdp2.yaml (FSDP2, through
tests/fsdp_on_cpu.py, since accelerate picks FSDP on GPUs only). What changes is what a CPU cannot
afford or reach: depth 1 (with aspect ratio 1280, which keeps d20's width), 128-token rows, 2 steps,
2 rows per process, the embedded data instead of the Hub's, and the evaluations' sizes.
The pipeline chains as on a GPU node: base -> mid -> sft -> rl, once per topology.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes" / "d20"
CONFIGS = REPO / "recipes" / "accelerate_configs"
TOPOLOGIES = {"ddp": "multi_gpu", "fsdp2": "fsdp2"}  # topology -> accelerate config of the GPU tiers
DISTRIBUTED_TYPE = {"ddp": "DistributedType.MULTI_CPU", "fsdp2": "DistributedType.FSDP"}  # as run here
WIDTH, HEADS = 1280, 10
SHAPE = ["--depth", "1", "--aspect_ratio", str(WIDTH), "--max_seq_len", "128"]  # d20's width at depth 1
MIXTURE = json.dumps({"train": [{"source": "arithmetic", "size": 64}, {"source": "identity"}],
                      "validation": [{"source": "arithmetic", "size": 8}]})
CHAT = ["--mixture", MIXTURE, "--max_length", "128", "--per_device_train_batch_size", "2",
        "--per_device_eval_batch_size", "2", "--max_steps", "2", "--disable_tqdm", "true",
        "--bf16", "true"]  # what SFTConfig picks by itself on a bf16 GPU


@dataclass
class Run:
    out: Path
    output: str  # the launcher's stdout + stderr
    seconds: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(topology: str, module: str, args: list, out: Path, fsdp_on_cpu: bool = True) -> Run:
    """`accelerate launch --config_file <the tier's config> --num_processes 2 -m <module> <args>`."""
    config = CONFIGS / f"{TOPOLOGIES[topology]}.yaml"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
           "--num_processes", "2", "--main_process_port", str(free_port())]
    if topology == "fsdp2" and fsdp_on_cpu:
        cmd += [str(REPO / "tests" / "fsdp_on_cpu.py"), module]
    else:
        cmd += ["-m", module]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    res = subprocess.run(cmd + [str(a) for a in args], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=1500)
    seconds = time.perf_counter() - t0
    print(f"rehearsal {topology} {module} -> {out.name}: {seconds:.0f} s wall")
    output = res.stdout + res.stderr
    # The ranks' own exceptions first: the output ends with torchrun's summary, which names none.
    errors = [line for line in output.splitlines() if re.search(r"\w(Error|Exception): ", line)]
    assert res.returncode == 0, "\n".join(errors[-3:]) + "\n...\n" + output[-3000:]
    return Run(out, output, seconds)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_loads_as_trained(folder: Path) -> None:
    """The final folder is a Hub folder that from_pretrained loads whole: d20's width and vocabulary, every weight
    found under its own name (none re-initialised), our own class in auto_map (not one FSDP2 generated)."""
    from transformers import AutoModelForCausalLM

    import nanochat_hf.modeling  # noqa: F401  (registers the architecture, as every stage does)

    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling.NanoChatForCausalLM"
    assert not list(folder.glob("_fsdp*.py"))
    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.vocab_size) == (WIDTH, HEADS, 128, 32768)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.fixture(scope="module")
def d20_tokenizer(tmp_path_factory):
    """A tokenizer of the d20 preset's vocabulary (32768). The embedded Shakespeare alone stops at 21,951
    tokens (BPE runs out of pairs), so seeded pseudo-words give it the rest of its merges (~4 s)."""
    import random

    from nanochat_hf.speedrun import PRESETS
    from nanochat_hf.tokenization import iter_documents, save_tokenizer, train_from_documents

    rng = random.Random(0)
    words = [" ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 9)))
                      for _ in range(100)) for _ in range(200)]
    vocab_size = PRESETS["d20"].vocab_size
    tok = train_from_documents([*iter_documents(None, progress=False), *words], vocab_size, progress=False)
    assert len(tok) == vocab_size
    return save_tokenizer(tok, tmp_path_factory.mktemp("d20_tokenizer"))


def pretrain_args(tokenizer, out, *extra):
    return ["--config", RECIPES / "pretrain.yaml", "--tokenizer", tokenizer, "--data", "", "--output_dir", out,
            *SHAPE, "--device_batch_size", "2", "--total_batch_size", "512", "--num_iterations", "2",
            "--eval_tokens", "512", "--sample_max_tokens", "2", *extra]


@pytest.fixture(scope="module")
def ddp_base(d20_tokenizer, tmp_path_factory):
    """DDP, compiled (the recipe's compile: "true"), bf16: 2 steps of 2 ranks x 2 rows x 128 tokens."""
    out = tmp_path_factory.mktemp("ddp") / "base"
    return launch("ddp", "nanochat_hf.pretrain", pretrain_args(d20_tokenizer, out), out)


@pytest.fixture(scope="module")
def fsdp2_base(d20_tokenizer, tmp_path_factory):
    """FSDP2, eager, bf16, with a sharded checkpoint after step 1."""
    out = tmp_path_factory.mktemp("fsdp2") / "base"
    return launch("fsdp2", "nanochat_hf.pretrain",
                  pretrain_args(d20_tokenizer, out, "--compile", "false", "--save_every", "1"), out)


def check_pretrain_log(run: Run, topology: str) -> list[dict]:
    rows = read_jsonl(run.out / "logs" / "pretrain.jsonl")
    start = rows[0]
    assert start["world_size"] == 2 and start["distributed_type"] == DISTRIBUTED_TYPE[topology]
    assert start["mixed_precision"] == "bf16"
    assert start["config"]["window_pattern"] == "SSSL" and start["config"]["matrix_lr"] == 0.02
    assert start["plan"]["grad_accum_steps"] == 1 and start["plan"]["num_iterations"] == 2
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(r["loss"] == r["loss"] for r in steps)  # not NaN
    assert steps[0]["lrm"] == pytest.approx(1 / 40)  # the recipe's 40 warmup steps
    return steps


def test_pretrain_ddp_compiled_bf16(ddp_base):
    check_pretrain_log(ddp_base, "ddp")
    assert read_jsonl(ddp_base.out / "logs" / "pretrain.jsonl")[0]["config"]["compile"] == "true"
    assert "Mixed precision type: bf16" in ddp_base.output
    assert_loads_as_trained(ddp_base.out)


def test_pretrain_fsdp2_sharded_checkpoint_resumes_bit_identically(fsdp2_base, d20_tokenizer, tmp_path):
    steps = check_pretrain_log(fsdp2_base, "fsdp2")
    ckpt = fsdp2_base.out / "checkpoint-1"
    # SHARDED_STATE_DICT: model and optimizer state written by both ranks (torch.distributed.checkpoint).
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert sorted(p.name for p in (ckpt / part).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"], part
    resumed = tmp_path / "resumed"
    launch("fsdp2", "nanochat_hf.pretrain", pretrain_args(d20_tokenizer, resumed, "--compile", "false",
                                                          "--resume_from_checkpoint", ckpt), resumed)
    again = [r for r in read_jsonl(resumed / "logs" / "pretrain.jsonl") if "loss" in r]
    assert [r["step"] for r in again] == [2]
    assert again[0]["loss"] == steps[1]["loss"]  # bit-identical: same shards, same data position, one thread
    a, b = load_file(fsdp2_base.out / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert_loads_as_trained(fsdp2_base.out)


def test_fsdp2_config_without_the_cpu_shim_runs_as_ddp_and_says_so(tiny_tokenizer_dir, tmp_path):
    """accelerate (1.16) selects FSDP for GPU-like devices only. When this fails, accelerate runs FSDP on CPU
    itself: drop tests/fsdp_on_cpu.py and the note in nanochat_hf/distributed.py."""
    out = tmp_path / "base"
    run = launch("fsdp2", "nanochat_hf.pretrain",
                 ["--config", REPO / "recipes" / "tiny" / "pretrain.yaml", "--tokenizer", tiny_tokenizer_dir,
                  "--output_dir", out, "--depth", "1", "--max_seq_len", "64", "--device_batch_size", "2",
                  "--total_batch_size", "256", "--num_iterations", "1", "--eval_tokens", "256",
                  "--sample_max_tokens", "1"], out, fsdp_on_cpu=False)
    assert "Distributed environment: DistributedType.MULTI_CPU" in run.output
    assert "asks for FSDP, but accelerate runs FSDP on GPUs only: this run is MULTI_CPU" in run.output
    assert read_jsonl(out / "logs" / "pretrain.jsonl")[0]["distributed_type"] == "DistributedType.MULTI_CPU"


# ----------------------------------------------------------------------------- mid -> sft -> rl


@pytest.fixture(scope="module", params=list(TOPOLOGIES))
def topology(request):
    return request.param


@pytest.fixture(scope="module")
def mid(topology, request):
    base = request.getfixturevalue(f"{topology}_base").out
    out = base.parent / "mid"
    return launch(topology, "nanochat_hf.sft", ["--config", RECIPES / "mid.yaml", "--model_name_or_path", base,
                                                 "--output_dir", out, *CHAT], out)


@pytest.fixture(scope="module")
def sft(topology, mid):
    from nanochat_hf.evaluation.chat_tasks import OFFLINE_CHAT_DATA

    out = mid.out.parent / "sft"
    # The recipe's ChatCORE subset (Hub data, MMLU + ARC-Easy, 1024 rows) on the package's offline ARC rows.
    chatcore = ["--chatcore_data", OFFLINE_CHAT_DATA, "--chatcore_tasks", "ARC-Easy", "--chatcore_examples", "2"]
    return launch(topology, "nanochat_hf.sft", ["--config", RECIPES / "sft.yaml", "--model_name_or_path", mid.out,
                                                 "--output_dir", out, *CHAT, *chatcore], out)


@pytest.fixture(scope="module")
def rl(topology, sft):
    out = sft.out.parent / "rl"
    # 2 ranks x 2 rows x 2 accumulation = 8 completions a step: 2 questions x 4 samples of 16 tokens.
    args = ["--config", RECIPES / "rl.yaml", "--model_name_or_path", sft.out, "--output_dir", out,
            "--dataset_name", "synthetic", "--synthetic_train_size", "16", "--synthetic_test_size", "2",
            "--max_steps", "2", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
            "--num_generations", "4", "--max_completion_length", "16", "--eval_examples", "2",
            "--disable_tqdm", "true"]
    return launch(topology, "nanochat_hf.rl", args, out)


def check_chat_log(run: Run, stage: str, topology: str) -> list[dict]:
    rows = read_jsonl(run.out / "logs" / f"{stage}.jsonl")
    start = rows[0]
    assert start["stage"] == stage and start["world_size"] == 2
    assert start["distributed_type"] == DISTRIBUTED_TYPE[topology] and start["mixed_precision"] == "bf16"
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert any("eval_loss" in r for r in rows)
    return rows


def test_mid(mid, topology):
    check_chat_log(mid, "mid", topology)
    assert_loads_as_trained(mid.out)


def test_sft(sft, topology):
    rows = check_chat_log(sft, "sft", topology)
    assert [r["step"] for r in rows if "chatcore" in r] == [0, 2]  # the recipe's ChatCORE subset at the start and end
    assert_loads_as_trained(sft.out)


def test_grpo(rl, topology):
    assert f"[rl] Distributed environment: {DISTRIBUTED_TYPE[topology]}" in rl.output
    assert "Mixed precision type: bf16" in rl.output
    rows = read_jsonl(rl.out / "logs" / "rl.jsonl")
    steps = [r for r in rows if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    # nanochat's optimizer and schedule (rl.yaml: optimizer nanochat, lr decaying linearly to 0 over the run).
    assert steps[1]["learning_rate"] == pytest.approx(steps[0]["learning_rate"] / 2)
    assert [r["step"] for r in rows if "pass@1" in r] == [0, 2]
    assert_loads_as_trained(rl.out)
