"""`nanochat-hf plan`: what a run will take before it starts, stage by stage, from the recipes themselves.

    nanochat-hf plan --preset d24 --num-gpus 8 [--gpu h100] [--mfu 0.45] [--price 3.0]
    nanochat-hf plan --config recipes/d32/pretrain.yaml --accelerate-config recipes/accelerate_configs/fsdp2.yaml
    nanochat-hf plan --config recipes/d24/sft.yaml --vocab-size 32768

Every number comes from the code that runs: recipes are read by each stage's own parser (an unknown key is
an error), pretraining's horizon, batch and accumulation by `pretrain.training_plan` on a shapes-only (meta)
model, FLOPs per token by nanochat's formula (`estimate_flops`: 6 x matmul weights + attention).

Assumptions, stated once:
  wall time   tokens x FLOPs/token / (MFU x bf16 peak x GPUs); MFU 0.45 by default (nanochat measures 0.47-0.51)
  cost        wall time x GPUs x $/GPU-hour; $3 by default (nanochat: $24/h for an 8xH100 node)
  memory      per GPU, bf16 autocast over fp32 weights: weights, gradients, DDP's gradient buckets, optimizer
              state by the real groups (Muon: momentum + factored second moment per matrix; AdamW: two
              states per embedding / head / scalar), activations and logits at the device batch (constants
              below), 1 GiB of CUDA context. FSDP2 divides the first four by the GPUs and adds the gathered
              parameters (the root unit: embeddings, value embeddings, head; two decoder layers in bf16).
Mid / SFT steps are an upper bound: one packed row holds at least one conversation, usually several.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

GIB = 2**30
DEFAULT_MFU = 0.45
DEFAULT_PRICE = 3.0  # $/GPU-hour
# Activation bytes per token, counted on CPU from the tensors autograd saves for backward (modern arch, bf16
# autocast, fp32 weights so the residual stream stays fp32; a compiled step kept ~6% less): per decoder layer
# and outside the layers (embeddings, value embeddings, norms), in multiples of d_model; logits per vocab entry
# (bf16 logits, their fp32 soft-capped copy, and the fp32 gradient that exists during backward).
ACT_PER_LAYER = 58
ACT_OUTSIDE = 14
LOGIT_BYTES = 12
CUDA_CONTEXT = 1 * GIB


# What nanochat measured on 8xH100 (bf16 peak 989 TFLOP/s per GPU), for the benchmarks to print beside ours.
NANOCHAT_THROUGHPUT = {
    # discussion #1 (Oct 2025), base_train log of d20 (classic arch, vocab 65,536, FA3, bf16): steps 2-13 at
    # ~1,076,000 tok/s for the node, dt ~487 ms per 524,288-token step, MFU ~47.5%.
    20: {"tokens_per_s_per_gpu": 134_500, "mfu": 0.475, "step_s": 0.487, "source": "nanochat d20 log, Oct 2025"},
    # dev/LEADERBOARD.md Run 1 (Jan 29 2026): 16,704 steps x 524,288 tokens in total_training_time 10,949 s,
    # total_training_flops 4.3308e19 -> 100,000 tok/s per GPU, MFU 50.0%, 0.655 s per step.
    24: {"tokens_per_s_per_gpu": 100_000, "mfu": 0.500, "step_s": 0.655,
         "source": "nanochat leaderboard run 1, Jan 2026"},
    # run1000.sh (Oct 2025), d32 with device batch 8: dt ~1,572 ms per 524,288 tokens, MFU ~50.9%.
    32: {"tokens_per_s_per_gpu": 41_700, "mfu": 0.509, "step_s": 1.572, "source": "nanochat run1000.sh log, Oct 2025"},
}
# The fastest d24 rank nanochat has run: leaderboard Run 6 (Mar 2026, fp8, ratio 8) trained for 99 minutes; at
# nanochat's horizon rule that is 5,838,471,168 tokens (our d24 plan), i.e. ~122,900 tok/s per GPU (derived).
NANOCHAT_D24_FASTEST_TOKENS_PER_GPU = 122_900


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float  # nominal memory
    peak_key: str  # key of pretrain.PEAK_FLOPS (bf16 dense)

    @property
    def peak_flops(self) -> float:
        from nanochat_hf.pretrain import PEAK_FLOPS

        return PEAK_FLOPS[self.peak_key]


GPUS = {
    "h100": GPU("H100 80GB", 80, "H100"), "h200": GPU("H200 141GB", 141, "H200"),
    "a100": GPU("A100 80GB", 80, "A100"), "a100-40": GPU("A100 40GB", 40, "A100"),
    "b200": GPU("B200 180GB", 180, "B200"), "l40s": GPU("L40S 48GB", 48, "L40S"),
    "4090": GPU("RTX 4090 24GB", 24, "4090"),
}


class PlanError(ValueError):
    """A recipe or launcher config that cannot run: reported as one line naming the file and key."""


@dataclass
class StagePlan:
    stage: str
    recipe: str
    params: int
    scaling_params: int
    flops_per_token: float
    total_batch: int  # tokens per optimizer step (chat stages: packed-row capacity)
    rows_per_step: int
    device_batch: int
    accum: int
    seq_len: int
    world: int
    steps: int | None  # None: only the data tells
    tokens: int | None
    upper_bound: bool = False  # steps / tokens are a bound, not the count
    memory: dict[str, dict[str, float]] = field(default_factory=dict)  # "DDP" / "FSDP2" -> part -> bytes
    note: str = ""
    model: object = field(default=None, repr=False)  # the meta model, for "the largest device batch that fits"


# ----------------------------------------------------------------------------- memory


def memory_breakdown(model, rows: int, seq_len: int, world: int, fsdp: bool) -> dict[str, float]:
    """Bytes per GPU by part (see the module docstring for what each part assumes)."""
    groups = model.param_groups()
    count = lambda ps: sum(p.numel() for p in ps)  # noqa: E731
    total = sum(p.numel() for p in model.parameters())
    muon = sum(4 * (p.numel() + max(p.shape)) for p in groups["matrix"])  # momentum + factored second moment
    adamw = 8 * count(groups["embedding"] + groups["unembedding"] + groups["scalar"])
    shard = world if fsdp else 1
    out = {"weights (fp32)": 4 * total / shard, "gradients (fp32)": 4 * total / shard,
           "DDP gradient buckets": 0.0 if fsdp or world == 1 else 4.0 * total,
           "Muon momentum + 2nd moment": muon / shard, "AdamW 2 states": adamw / shard, "FSDP2 gathered (bf16)": 0.0}
    if fsdp:
        layers = list(model.model.layers)
        in_layers = sum(count(layer.parameters()) for layer in layers)
        largest_layer = max(count(layer.parameters()) for layer in layers)
        out["FSDP2 gathered (bf16)"] = 2.0 * (total - in_layers) + 2 * 2.0 * largest_layer
    cfg = model.config
    tokens = rows * seq_len
    d, n_layers = cfg.hidden_size, cfg.num_hidden_layers
    out[f"activations ({rows} rows x {seq_len})"] = float(tokens * d * (ACT_PER_LAYER * n_layers + ACT_OUTSIDE))
    out["logits"] = float(tokens * cfg.vocab_size * LOGIT_BYTES)
    out["CUDA context"] = float(CUDA_CONTEXT)
    out["total"] = sum(out.values())
    return out


def largest_fitting_batch(model, seq_len: int, world: int, fsdp: bool, memory_gib: float, total_batch: int) -> int:
    """The largest power-of-2 device batch that makes whole micro-steps and fits `memory_gib` (0: none)."""
    b = 1 << max(0, (total_batch // (seq_len * world)).bit_length() - 1)
    while b >= 1:
        whole = total_batch % (b * seq_len * world) == 0
        if whole and memory_breakdown(model, b, seq_len, world, fsdp)["total"] <= memory_gib * GIB:
            return b
        b //= 2
    return 0


def _memory(model, rows, seq_len, world) -> dict[str, dict[str, float]]:
    return {"DDP": memory_breakdown(model, rows, seq_len, world, fsdp=False),
            "FSDP2": memory_breakdown(model, rows, seq_len, world, fsdp=True)}


# ----------------------------------------------------------------------------- stages


def _refuse(recipe: str, err: Exception) -> PlanError:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return PlanError(text if recipe in text else f"{recipe}: {text}")


def _meta_model(config):
    from nanochat_hf.modeling import NanoChatForCausalLM

    with torch.device("meta"):  # shapes only: no memory, no init time
        return NanoChatForCausalLM(config)


def tokenizer_vocab(path: str, recipe: str) -> int:
    """len(tokenizer) of the recipe's `tokenizer`, or a one-line refusal naming the key and the folder."""
    from nanochat_hf.tokenization import load_tokenizer

    try:
        return len(load_tokenizer(path))
    except (OSError, ValueError):
        raise PlanError(f"{recipe}: tokenizer {path!r} not found (key `tokenizer`); train it with `nanochat-hf "
                        f"tokenizer train --output {path}`, or plan with --vocab-size N") from None


def pretrain_stage(recipe: str, world: int, vocab_size: int | None = None, overrides: list[str] | None = None):
    """(StagePlan, meta model) of a pretraining recipe on `world` processes."""
    from nanochat_hf import pretrain

    try:
        cfg = pretrain.parse_args(["--config", recipe, *(overrides or [])])
    except (ValueError, FileNotFoundError) as err:
        raise _refuse(recipe, err) from None
    vocab = vocab_size or tokenizer_vocab(cfg.tokenizer, recipe)
    try:
        model = _meta_model(pretrain.model_config(cfg, cfg.depth, vocab))
        p = pretrain.training_plan(cfg, model, vocab, world)
    except ValueError as err:
        raise _refuse(recipe, err) from None
    return pretrain_plan(recipe, cfg, p, model, world), model


def pretrain_plan(recipe: str, cfg, p: dict, model, world: int) -> StagePlan:
    """StagePlan of `pretrain.training_plan`'s numbers `p` (also what a pretraining run prints at its top)."""
    note = ""
    if p["device_batch_size"] != cfg.device_batch_size:
        note = f"device_batch_size {cfg.device_batch_size} -> {p['device_batch_size']} (whole micro-steps on {world})"
    stage = StagePlan("pretrain", recipe, p["num_params"], p["num_scaling_params"], p["flops_per_token"],
                      p["total_batch_size"], p["total_batch_size"] // cfg.max_seq_len, p["device_batch_size"],
                      p["grad_accum_steps"], cfg.max_seq_len, world, p["num_iterations"], p["total_tokens"], note=note)
    stage.memory, stage.model = _memory(model, stage.device_batch, stage.seq_len, world), model
    return stage


def _chat_model(model_path: str, recipe: str, vocab_size: int | None, base_model):
    """The model a chat stage trains: its config.json if it exists, else the tier's pretraining recipe's."""
    if base_model is not None:
        return base_model
    config_file = Path(model_path) / "config.json"
    if config_file.is_file():
        from transformers import AutoConfig

        import nanochat_hf.modeling  # noqa: F401  (registers both architectures with AutoConfig)

        return _meta_model(AutoConfig.from_pretrained(model_path))
    sibling = Path(recipe).with_name("pretrain.yaml")
    if not sibling.is_file():
        raise PlanError(f"{recipe}: model_name_or_path {model_path!r} has no config.json and there is no "
                        f"{sibling} to size the model from; train the previous stage first")
    return pretrain_stage(str(sibling), 1, vocab_size)[1]


def chat_stage(recipe: str, world: int, vocab_size: int | None = None, base_model=None) -> StagePlan:
    """Mid-training or SFT (TRL SFTTrainer): packed rows of max_length, one epoch of the mixture."""
    from nanochat_hf import sft
    from nanochat_hf.chat_data import Mixture, source_rows

    try:
        chat_args, cfg = sft.parse_args(["--config", recipe])
        mixture = Mixture.parse(chat_args.mixture)
    except (ValueError, FileNotFoundError) as err:
        raise _refuse(recipe, err) from None
    model = _chat_model(chat_args.model_name_or_path, recipe, vocab_size, base_model)
    per_source = [source_rows(s) for s in mixture.train]
    rows = None if None in per_source else sum(n * s.repeat for n, s in zip(per_source, mixture.train))
    rows_per_step = cfg.per_device_train_batch_size * world * cfg.gradient_accumulation_steps
    tokens_per_step = rows_per_step * cfg.max_length
    epoch_steps = None if rows is None else math.ceil(cfg.num_train_epochs * rows / rows_per_step)
    steps = cfg.max_steps if cfg.max_steps > 0 else epoch_steps
    n = model.num_params_by_group()
    stage = StagePlan(chat_args.stage, recipe, n["total"], model.num_scaling_params(), model.estimate_flops(),
                      tokens_per_step, rows_per_step, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps,
                      cfg.max_length, world, steps, None if steps is None else steps * tokens_per_step,
                      upper_bound=cfg.max_steps <= 0, note=f"{rows:,} conversations per epoch" if rows else "")
    stage.memory, stage.model = _memory(model, stage.device_batch, stage.seq_len, world), model
    return stage


def rl_stage(recipe: str, world: int, vocab_size: int | None = None, base_model=None) -> StagePlan:
    """GRPO: per_device_train_batch_size completions per micro-step, num_generations per question."""
    from nanochat_hf import rl
    from nanochat_hf.chat_data import HUB_TRAIN_ROWS

    # GPU recipes ask for bf16, which TrainingArguments refuses on a machine without one; the plan needs neither.
    cpu_only = [] if torch.cuda.is_available() else ["--bf16", "false", "--use_cpu", "true"]
    try:
        args, cfg = rl.parse_args(["--config", recipe, *cpu_only])
    except (ValueError, FileNotFoundError) as err:
        raise _refuse(recipe, err) from None
    sequences = cfg.per_device_train_batch_size * world * cfg.gradient_accumulation_steps
    if sequences % cfg.num_generations:
        raise PlanError(f"{recipe}: per_device_train_batch_size x {world} processes x gradient_accumulation_steps = "
                        f"{sequences} completions per step is not a multiple of num_generations {cfg.num_generations}")
    known = {"synthetic": args.synthetic_train_size, "openai/gsm8k": HUB_TRAIN_ROWS["gsm8k"]}
    questions = known.get(args.dataset_name)
    if questions is not None and args.max_train_examples > 0:
        questions = min(questions, args.max_train_examples)
    epoch_steps = None if questions is None else math.ceil(cfg.num_train_epochs * questions * cfg.num_generations
                                                           / sequences)
    steps = cfg.max_steps if cfg.max_steps > 0 else epoch_steps
    model = _chat_model(args.model_name_or_path, recipe, vocab_size, base_model)
    n = model.num_params_by_group()
    return StagePlan("rl", recipe, n["total"], model.num_scaling_params(), model.estimate_flops(),
                     sequences * cfg.max_completion_length, sequences, cfg.per_device_train_batch_size,
                     cfg.gradient_accumulation_steps, cfg.max_completion_length, world, steps,
                     None if steps is None else steps * sequences * cfg.max_completion_length, upper_bound=True,
                     note=f"{sequences // cfg.num_generations} questions x {cfg.num_generations} samples per step")


STAGE_OF = {"mid": chat_stage, "sft": chat_stage, "rl": rl_stage}


def stage_of_file(path: str) -> str:
    name = Path(path).stem
    if name.startswith("pretrain"):
        return "pretrain"
    if name in STAGE_OF:
        return name
    raise PlanError(f"{path}: cannot tell the stage from the file name "
                    "(pretrain*.yaml, mid.yaml, sft.yaml, rl.yaml)")


def plan_recipe(path: str, world: int, vocab_size: int | None = None, base_model=None):
    """(StagePlan, model or None) of any recipe file, its stage told by its name."""
    stage = stage_of_file(path)
    if stage == "pretrain":
        return pretrain_stage(path, world, vocab_size)
    return STAGE_OF[stage](path, world, vocab_size, base_model), None


def plan_preset(preset: str, world: int) -> list[StagePlan]:
    """Every training stage of a speedrun preset, with the vocabulary its tokenizer stage will train."""
    from nanochat_hf.speedrun import CHAT_STAGES, PRESETS, RECIPES_DIR

    if preset not in PRESETS:
        raise PlanError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    folder = RECIPES_DIR / p.recipe_dir
    pre, model = pretrain_stage(str(folder / "pretrain.yaml"), world, p.vocab_size, p.overrides.get("pretrain"))
    chat = [STAGE_OF[name](str(folder / f"{name}.yaml"), world, p.vocab_size, model) for name in CHAT_STAGES]
    return [pre, *chat]


# ----------------------------------------------------------------------------- accelerate configs


def check_accelerate_config(path: str) -> dict:
    """Load an accelerate launcher config with accelerate's own loader (unknown keys refused), check fsdp_config
    keys against `accelerate launch`'s flags and the process counts; returns num_processes and fsdp."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    try:
        cfg = load_config_from_file(path)
    except (ValueError, FileNotFoundError, TypeError) as err:
        raise PlanError(f"{path}: {str(err).splitlines()[0]}") from None
    known = {a.dest for a in launch_command_parser()._actions}
    unknown = sorted(k for k in (cfg.fsdp_config or {}) if k not in known)
    if unknown:
        raise PlanError(f"{path}: unknown fsdp_config keys {unknown}; "
                       "`accelerate launch --help` lists the fsdp_* ones")
    kind = str(cfg.distributed_type).split(".")[-1]
    n, machines = int(cfg.num_processes), int(cfg.num_machines)
    if n < 1 or machines < 1 or n % machines:
        raise PlanError(f"{path}: num_processes {n} must be a positive multiple of num_machines {machines}")
    if kind == "NO" and n != 1:
        raise PlanError(f"{path}: distributed_type NO runs one process, but num_processes is {n}")
    fsdp = kind == "FSDP"
    if fsdp and int((cfg.fsdp_config or {}).get("fsdp_version", 1)) != 2:
        raise PlanError(f"{path}: nanochat_hf's optimizer shards with FSDP2; set fsdp_config.fsdp_version: 2")
    return {"num_processes": n, "num_machines": machines, "fsdp": fsdp, "distributed_type": kind,
            "mixed_precision": str(cfg.mixed_precision)}


# ----------------------------------------------------------------------------- the table


def _n(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not x.is_integer():
        return f"{x:.3e}"
    x = int(x)
    for unit, div in (("B", 1e9), ("M", 1e6)):
        if x >= div:
            return f"{x / div:,.2f}{unit}"
    return f"{x:,}"


def render(stages: list[StagePlan], gpu: GPU | None, mfu: float = DEFAULT_MFU, price: float = DEFAULT_PRICE,
           fsdp: bool = False) -> str:
    """The plan as a text table: one column per stage, then the pretraining memory breakdown and warnings."""
    world = stages[0].world
    if gpu is None:
        head = f"plan on {world} CPU process(es): no wall time, cost or memory check off a GPU"
    else:
        head = (f"plan on {world} x {gpu.name} ({gpu.peak_flops / 1e12:,.0f} TFLOP/s bf16), assuming MFU {mfu:.0%} "
                f"and ${price:.2f}/GPU-hour{' (FSDP2)' if fsdp else ''}")
    bound = lambda s, v: ("<= " if s.upper_bound and v != "-" else "") + v  # noqa: E731
    rows = [("recipe", [_short(s.recipe) for s in stages]),
            ("parameters total / scaling", [f"{_n(s.params)} / {_n(s.scaling_params)}" for s in stages]),
            ("FLOPs per token", [f"{s.flops_per_token:.3e}" for s in stages]),
            ("tokens", [bound(s, _n(s.tokens)) for s in stages]),
            ("steps", [bound(s, _n(s.steps)) for s in stages]),
            ("tokens per step", [f"{s.total_batch:,}" for s in stages]),
            ("rows: device x accum x GPUs",
             [f"{s.device_batch} x {s.accum} x {s.world} of {s.seq_len}" for s in stages])]
    warnings = []
    if gpu is not None:
        peak = mfu * gpu.peak_flops  # wall seconds: tokens x FLOPs per token / (MFU x peak x GPUs)
        times = [s.tokens * s.flops_per_token / (peak * s.world) if s.tokens is not None and s.stage != "rl" else None
                 for s in stages]
        rows.append((f"wall time at {mfu:.0%} MFU", [bound(s, "-" if t is None else f"{t / 3600:.2f} h")
                                                    for s, t in zip(stages, times)]))
        rows.append(("cost", [bound(s, "-" if t is None else f"${t / 3600 * s.world * price:,.0f}")
                             for s, t in zip(stages, times)]))
        for kind in ("DDP", "FSDP2"):
            rows.append((f"memory per GPU, {kind}", [_mem_cell(s, kind, gpu) for s in stages]))
        warnings = [w for s in stages for w in _fit_warnings(s, gpu, fsdp)]
    notes = [(s.stage, s.note) for s in stages if s.note]
    labels = ["", *[s.stage for s in stages]]
    table = [labels, *[[k, *v] for k, v in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(labels))]
    lines = [head] + ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
    lines += [f"  {stage}: {note}" for stage, note in notes]
    pre = next((s for s in stages if s.stage == "pretrain" and s.memory), None)
    if pre is not None and gpu is not None:
        lines.append(f"{'pretrain memory per GPU (GiB)':<36}{'DDP':>8}{'FSDP2':>8}")
        for part in pre.memory["DDP"]:
            lines.append(f"  {part:<34}{pre.memory['DDP'][part] / GIB:8.1f}{pre.memory['FSDP2'][part] / GIB:8.1f}")
    return "\n".join(lines + warnings)


def _short(path: str) -> str:
    """A recipe path as the user would type it from the repository root."""
    from nanochat_hf.speedrun import REPO_ROOT

    p = Path(path).resolve()
    return str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else path


def _mem_cell(stage: StagePlan, kind: str, gpu: GPU) -> str:
    if not stage.memory:
        return "-"
    total = stage.memory[kind]["total"] / GIB
    return f"{total:.1f} GiB" + ("" if total <= gpu.memory_gib else " (does not fit)")


def _fit_warnings(stage: StagePlan, gpu: GPU, fsdp: bool) -> list[str]:
    """One line when the device batch will not fit this GPU, naming the largest power of 2 that will."""
    kind = "FSDP2" if fsdp else "DDP"
    if not stage.memory or stage.memory[kind]["total"] <= gpu.memory_gib * GIB:
        return []
    line = (f"warning: {stage.stage} device batch {stage.device_batch} x {stage.seq_len} needs ~"
            f"{stage.memory[kind]['total'] / GIB:.0f} GiB per GPU under {kind} (estimate), more than the "
            f"{gpu.memory_gib:g} GiB of an {gpu.name}")
    total = stage.rows_per_step * stage.seq_len
    fit = largest_fitting_batch(stage.model, stage.seq_len, stage.world, fsdp, gpu.memory_gib, total)
    if not fit:
        return [f"{line}; no power-of-2 device batch fits: use FSDP2, more GPUs or a smaller depth"]
    if stage.stage == "pretrain":  # accumulation follows from total_batch_size
        return [f"{line}; the largest power of 2 that fits is {fit} (--device_batch_size {fit})"]
    accum = total // (fit * stage.seq_len * stage.world)
    return [f"{line}; the largest power of 2 that fits is {fit} "
            f"(--per_device_train_batch_size {fit} --gradient_accumulation_steps {accum})"]


def detect_gpu() -> GPU | None:
    """The GPU this process runs on, as a GPU spec (None without CUDA or for a GPU without a known peak)."""
    if not torch.cuda.is_available():
        return None
    from nanochat_hf.pretrain import PEAK_FLOPS

    name = torch.cuda.get_device_name(0)
    key = next((k for k in PEAK_FLOPS if k in name), None)
    memory = torch.cuda.get_device_properties(0).total_memory / GIB
    return GPU(name, round(memory, 1), key) if key else None


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nanochat-hf plan", description=__doc__.split("\n\n")[0],
                                    epilog=__doc__.split("\n\n", 1)[1],
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="a speedrun preset: every training stage of its recipes (d20..d32, tiny)")
    src.add_argument("--config", help="one recipe (stage from its name: pretrain*, mid, sft, rl)")
    parser.add_argument("--num-gpus", type=int, default=None,
                       help="processes (default: the accelerate config's, else 8)")
    parser.add_argument("--accelerate-config", default=None, help="launcher config: checked, and sets GPUs / FSDP2")
    parser.add_argument("--gpu", default="h100", choices=[*GPUS, "cpu"], help="GPU kind for time, cost and memory")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU, help="assumed model FLOPs utilisation (0-1)")
    parser.add_argument("--price", type=float, default=DEFAULT_PRICE, help="$ per GPU-hour")
    parser.add_argument("--vocab-size", type=int, default=None, help="instead of loading the recipe's tokenizer")
    parser.add_argument("--fsdp", action="store_true", help="warn against FSDP2 memory (default: DDP)")
    args = parser.parse_args(argv)
    try:
        if not 0 < args.mfu <= 1:
            raise PlanError(f"--mfu must be in (0, 1], got {args.mfu}")
        fsdp, world = args.fsdp, args.num_gpus
        if args.accelerate_config:
            launch = check_accelerate_config(args.accelerate_config)
            fsdp = fsdp or launch["fsdp"]
            world = world or launch["num_processes"]
        gpu = None if args.gpu == "cpu" else GPUS[args.gpu]
        world = world or (8 if gpu else 1)
        if world < 1:
            raise PlanError(f"--num-gpus must be >= 1, got {world}")
        if args.preset:
            from nanochat_hf.speedrun import PRESETS

            if args.preset in PRESETS and not PRESETS[args.preset].gpu:
                gpu, world = None, 1  # CPU presets run one process
            stages = plan_preset(args.preset, world)
        else:
            stages = [plan_recipe(args.config, world, args.vocab_size)[0]]
    except (PlanError, FileNotFoundError) as err:
        print(f"nanochat-hf plan: {err}", file=sys.stderr)
        return 2
    print(render(stages, gpu, args.mfu, args.price, fsdp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
