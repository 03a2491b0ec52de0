"""Pretrain a base model from a tokenizer and text, as nanochat's `base_train`, with accelerate.

    accelerate launch -m nanochat_hf.pretrain --config recipes/tiny/pretrain.yaml
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml \\
        -m nanochat_hf.pretrain --config recipes/d24/pretrain.yaml --output_dir runs/d24/base
    nanochat-hf pretrain --config recipes/tiny/pretrain.yaml --num_iterations 50   # same flags

Every YAML key is a flag (`--depth 12 --device_batch_size 16 ...`); flags win over the YAML.
`--resume_from_checkpoint latest` continues the newest complete `<output_dir>/checkpoint-<step>/`.
Writes: `<output_dir>/checkpoint-<step>/` (accelerate state + loader position),
`<output_dir>/logs/pretrain.jsonl` (every metric), and at the end the Hub-ready model
(config, safetensors, generation config, tokenizer) in `<output_dir>/` itself.

What is derived from what (nanochat's recipe, muP-style transfer from a d12 reference):
  horizon     num_iterations, else target_flops / (flops/token * B), else ratio * scaling params / B
  batch B     total_batch_size tokens, or -1: 2^19 * (D / D_d12)^0.383 rounded to a power of 2
  lrs         per group, * sqrt(B / 2^19); embedding/head also * (d_model / 768)^-0.5
  Muon wd     weight_decay * sqrt(B / 2^19) * D_d12 / D, cosine to 0 over the run
  accumulation  B / (device_batch_size * max_seq_len * world_size) micro-steps per step
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from nanochat_hf.checkpoints import STATE_NAME, file_sha256, publish, resume_checkpoint, rotate, staging_dir
from nanochat_hf.errors import UserError, ensure_writable, run_main, writing
from nanochat_hf.extras import require
from nanochat_hf.recipe import arg, parse_stage_args
from nanochat_hf.runlog import RunLog

LOG_NAME = "pretrain.jsonl"
SAMPLE_PROMPTS = (  # nanochat's fixed prompts, sampled greedily at the end of pretraining
    "The capital of France is", "The chemical symbol of gold is", "If yesterday was Friday, then tomorrow will be",
    "The opposite of hot is", "The planets of the solar system are:", "My favorite color is",
    "If 5*x + 3 = 13, then x is",
)
# bf16 dense peak FLOP/s per device, for MFU (nanochat uses 989 TFLOP/s for an H100).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "GH200": 989e12, "B200": 2250e12,
              "A100": 312e12, "A800": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12, "4090": 165e12}
REFERENCE_DEPTH = 12  # hyperparameters were tuned at d12 and are transferred from there


class PretrainError(UserError):
    """A run-time problem with a known fix (out of memory, ...): reported as one line."""


@dataclass
class PretrainConfig:
    # Model
    arch: str = arg("modern", "modern (nanochat 2026) or classic (transformers' native nanochat)")
    depth: int = arg(20, "number of transformer layers: the one dial of model size")
    aspect_ratio: int = arg(64, "model_dim = depth * aspect_ratio, rounded up to head_dim")
    head_dim: int = arg(128, "attention head dimension")
    max_seq_len: int = arg(2048, "context length of the training rows")
    window_pattern: str = arg("SSSL", "sliding-window pattern tiled over layers (modern): L=full, S=a quarter of the "
                              "context")
    # Data
    tokenizer: str = arg("runs/tiny/tokenizer", "tokenizer folder or Hub id")
    data: str | None = arg(None, "file, folder, or Hub dataset (climbmix, fineweb-edu); default: embedded Shakespeare")
    buffer_size: int = arg(1000, "documents in the best-fit packing buffer")
    tokenizer_batch_size: int = arg(128, "documents tokenised per batch")
    # Training horizon (first one set wins)
    num_iterations: int = arg(-1, "optimizer steps (-1 = derive)")
    target_flops: float = arg(-1.0, "derive steps from total training FLOPs (-1 = off)")
    target_param_data_ratio: float = arg(12.0, "tokens per scaling parameter")
    # Optimization
    device_batch_size: int = arg(32, "rows per device per micro-step; lower it if out of memory")
    total_batch_size: int = arg(-1, "tokens per optimizer step (-1 = nanochat's automatic rule)")
    embedding_lr: float = 0.3
    unembedding_lr: float = 0.008
    matrix_lr: float = 0.02
    scalar_lr: float = 0.5
    weight_decay: float = 0.28
    warmup_steps: int = 40
    warmdown_ratio: float = 0.65
    final_lr_frac: float = 0.05
    momentum_warmup_steps: int = 400
    # Evaluation and logging
    eval_every: int = arg(250, "validation bpb every N steps (-1 = only at the end)")
    eval_tokens: int = arg(80 * 524288, "validation tokens per evaluation")
    sample_max_tokens: int = 16
    log_every: int = 1
    report_to: str = arg("none", "accelerate trackers: none, trackio, wandb, tensorboard (comma list)")
    run_name: str = "pretrain"
    # Runtime
    output_dir: str = "runs/tiny/base"
    save_every: int = arg(-1, "checkpoint every N steps (-1 = never; the final model is always saved)")
    save_total_limit: int = arg(-1, "keep only the newest N checkpoints (-1 = all)")
    resume_from_checkpoint: str | None = arg(None, "latest or a checkpoint folder")
    seed: int = 42
    mixed_precision: str = arg("auto", "auto (bf16 on GPU, fp32 on CPU), bf16, no")
    compile: str = arg("auto", "torch.compile: auto (on GPU), true, false")
    fp8: bool = arg(False, "FP8 matmuls via torchao (H100+ only)")
    max_steps_this_run: int = arg(-1, "stop (after saving) once this many steps ran in this process; for "
                                  "preemptible jobs and tests")


# ----------------------------------------------------------------------------- building blocks


def load_tokenizer_and_bytes(path: str):
    """(tokenizer, token_bytes): the nanochat tokenizer and the byte length of each token (for bpb)."""
    from nanochat_hf.tokenization import get_token_bytes, load_tokenizer

    try:
        tok = load_tokenizer(path)
    except FileNotFoundError:  # already names the missing file
        raise
    except OSError as err:  # a Hub id that cannot be reached or does not exist
        raise FileNotFoundError(f"tokenizer {path!r} could not be loaded ({type(err).__name__}); "
                                f"train one with `nanochat-hf tokenizer train --output {path}`") from None
    tb_file = Path(path) / "token_bytes.pt"
    if not tb_file.is_file():  # a derived file: recomputed from the vocabulary
        return tok, get_token_bytes(tok)
    try:
        token_bytes = torch.load(tb_file)
    except Exception as err:  # truncated or not a torch file: the unpickler raises all kinds
        raise UserError(f"{tb_file} cannot be read ({type(err).__name__}); delete it (it is recomputed from "
                        "tokenizer.json) or save the tokenizer again") from None
    if len(token_bytes) < len(tok):
        raise ValueError(f"{tb_file} has {len(token_bytes)} entries but the tokenizer has {len(tok)}; "
                         "re-save the tokenizer")
    return tok, token_bytes


def model_config(cfg: PretrainConfig, depth: int, vocab_size: int):
    from nanochat_hf.modeling import NanoChatConfig

    window = {"window_pattern": cfg.window_pattern} if cfg.arch == "modern" else {}
    return NanoChatConfig.from_depth(depth, arch=cfg.arch, vocab_size=vocab_size, head_dim=cfg.head_dim,
                                     max_position_embeddings=cfg.max_seq_len, aspect_ratio=cfg.aspect_ratio, **window)


def fit_device_batch(total: int, device_batch: int, seq_len: int, world_size: int) -> int:
    """The recipe's device batch, or the largest power of 2 below it that makes whole micro-steps: with more ranks
    each takes fewer rows, and the total batch (so the optimisation) stays the recipe's."""
    b = device_batch
    while b >= 1 and (total <= 0 or total % (b * seq_len * world_size)):
        b = 2 ** (b.bit_length() - 1) if b & (b - 1) else b // 2  # down to a power of 2, then halve
    if b < 1:
        raise ValueError(
            f"total_batch_size {total} is not a multiple of device_batch_size*max_seq_len*world_size = "
            f"{device_batch}*{seq_len}*{world_size} = {device_batch * seq_len * world_size}, nor of any smaller "
            "power-of-2 device batch; pick a total_batch_size that is a multiple of max_seq_len*world_size")
    return b


def training_plan(cfg: PretrainConfig, model, vocab_size: int, world_size: int) -> dict:
    """Horizon, batch size, lr/wd scaling and accumulation: nanochat's rules, as numbers."""
    from nanochat_hf.modeling import NanoChatForCausalLM
    from nanochat_hf.optim import REFERENCE_BATCH, batch_lr_scale

    n_scaling = model.num_scaling_params()
    flops_per_token = float(model.estimate_flops())
    ratio = cfg.target_param_data_ratio if cfg.target_param_data_ratio > 0 else 12.0
    target_tokens = int(ratio * n_scaling)
    with torch.device("meta"):  # the d12 reference, shapes only
        ref = NanoChatForCausalLM(model_config(cfg, REFERENCE_DEPTH, vocab_size))
    d_ref = ratio * ref.num_scaling_params()
    total = cfg.total_batch_size
    if total == -1:  # Power Lines: B_opt ~ D^0.383, anchored at 2^19 tokens for d12
        total = 2 ** round(math.log2(REFERENCE_BATCH * (target_tokens / d_ref) ** 0.383))
    device_batch = fit_device_batch(total, cfg.device_batch_size, cfg.max_seq_len, world_size)
    per_micro = device_batch * cfg.max_seq_len * world_size
    if cfg.num_iterations > 0:
        num_iterations = cfg.num_iterations
    elif cfg.target_flops > 0:
        num_iterations = round(cfg.target_flops / (flops_per_token * total))
    elif cfg.target_param_data_ratio > 0:
        num_iterations = target_tokens // total
    else:
        raise ValueError("no training horizon: set num_iterations, target_flops or target_param_data_ratio")
    if num_iterations < 1:
        raise ValueError(f"the horizon is {num_iterations} steps; raise num_iterations or target_param_data_ratio")
    lr_scale = batch_lr_scale(total)
    return {"num_scaling_params": n_scaling, "num_params": sum(p.numel() for p in model.parameters()),
            "flops_per_token": flops_per_token, "total_batch_size": total, "device_batch_size": device_batch,
            "grad_accum_steps": total // per_micro, "num_iterations": num_iterations,
            "total_tokens": total * num_iterations, "tokens_per_param": total * num_iterations / n_scaling,
            "batch_lr_scale": lr_scale, "weight_decay_scaled": cfg.weight_decay * lr_scale * (d_ref / target_tokens)}


def fp8_layer(module, name: str) -> bool:
    """Not the head (logits want bf16); only matmuls big enough to gain, both sides multiples of 16 (torchao)."""
    dims = (module.in_features, module.out_features)
    return "lm_head" not in name and min(dims) >= 128 and all(d % 16 == 0 for d in dims)


def enable_fp8(model, on_gpu: bool) -> int:
    """torchao's tensorwise fp8 training on the layers `fp8_layer` picks (nanochat's --fp8); returns their count."""
    float8 = require("torchao.float8", "--fp8 (or drop it to train in bf16)")
    if not on_gpu:
        raise ValueError("--fp8 needs an H100-class GPU; drop it on CPU")
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 9):
        raise ValueError(f"--fp8 needs fp8 tensor cores (sm_89+: H100, H200, L4, RTX 4090); this GPU is "
                         f"sm_{major}{minor}: drop --fp8 to train in bf16")
    chosen = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and fp8_layer(m, n)]
    float8.convert_to_float8_training(model, module_filter_fn=fp8_layer)
    return len(chosen)


def peak_flops() -> float:
    """bf16 peak of this GPU (inf elsewhere, so MFU reads 0)."""
    from nanochat_hf.plan import detect_gpu

    gpu = detect_gpu()
    return gpu.peak_flops if gpu is not None else float("inf")


# ----------------------------------------------------------------------------- checkpoints


def _manifest(folder: Path) -> dict[str, dict]:
    return {str(f.relative_to(folder)): {"size": f.stat().st_size, "sha256": file_sha256(f)}
            for f in sorted(folder.rglob("*")) if f.is_file() and f.name != STATE_NAME}


def verify_checkpoint(folder: Path) -> dict:
    """The checkpoint's trainer state, after checking every file against its manifest."""
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint {folder} does not exist; pass `latest` or an existing "
                                "checkpoint-<step> folder")

    def damaged(what: str) -> ValueError:
        return ValueError(f"checkpoint {folder} is {what}; delete it and resume from an older one")

    state_file = folder / STATE_NAME
    if not state_file.is_file():
        raise damaged(f"partial (no {STATE_NAME}: its save was interrupted)")
    try:
        state = json.loads(state_file.read_text())
    except json.JSONDecodeError:
        raise damaged(f"corrupt ({STATE_NAME} is not valid JSON)") from None
    for name, meta in state.get("manifest", {}).items():
        f = folder / name
        if not f.is_file() or f.stat().st_size != meta["size"]:
            raise damaged(f"corrupt ({name} is missing or truncated)")
    if os.environ.get("NANOCHAT_HF_SKIP_CHECKSUM") != "1":
        actual = _manifest(folder)
        bad = [n for n, m in state.get("manifest", {}).items() if actual.get(n, {}).get("sha256") != m["sha256"]]
        if bad:
            raise damaged(f"corrupt ({bad[0]} fails its sha256)")
    return state


def save_checkpoint(accelerator, output_dir: Path, step: int, trainer_state: dict, loader, keep: int) -> Path:
    """accelerate's save_state into a temporary folder, then one atomic rename (see nanochat_hf.checkpoints)."""
    from accelerate.utils import gather_object

    final = output_dir / f"checkpoint-{step}"
    tmp = staging_dir(final)
    main = accelerator.is_main_process
    with writing(final, undo=lambda: main and shutil.rmtree(tmp, ignore_errors=True)):
        if main and tmp.exists():
            shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        loader_states = gather_object([loader.state_dict()])  # one per rank, in rank order
        if main:
            state = dict(trainer_state, step=step, loader_states=loader_states, manifest=_manifest(tmp))
            with open(tmp / STATE_NAME, "w") as f:
                json.dump(state, f)
                f.flush()
                os.fsync(f.fileno())
            publish(tmp, final)
    if main:  # older checkpoints go only once the new one is whole
        rotate(output_dir, keep)
    accelerator.wait_for_everyone()
    return final


# ----------------------------------------------------------------------------- training


def make_accelerator(cfg: PretrainConfig):
    """The run's Accelerator (bf16 and torch.compile on a GPU unless told otherwise), its precision and trackers."""
    from accelerate import Accelerator

    from nanochat_hf.distributed import fsdp_fallback_note

    on_gpu = torch.cuda.is_available()
    mp = ("bf16" if on_gpu else "no") if cfg.mixed_precision == "auto" else cfg.mixed_precision
    use_compile = on_gpu if cfg.compile == "auto" else str(cfg.compile).lower() in ("true", "1", "yes")
    trackers = [t.strip() for t in cfg.report_to.split(",") if t.strip() and t.strip() != "none"]
    # cpu=True on a machine without CUDA: that is what makes `--multi_gpu --num_processes N`
    # form a real gloo process group instead of N independent runs.
    accelerator = Accelerator(cpu=not on_gpu, mixed_precision=mp, log_with=trackers or None,
                              project_dir=cfg.output_dir, dynamo_backend="inductor" if use_compile else "no")
    accelerator.print(accelerator.state)
    note = fsdp_fallback_note(accelerator)
    if note:
        accelerator.print(note)
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return accelerator, mp, trackers


@dataclass
class Progress:
    """What the loop carries from step to step; a checkpoint saves it and a resume restores it."""

    step: int = 0
    val_bpb: float | None = None
    min_val_bpb: float = float("inf")
    smooth_loss: float = 0.0
    train_time: float = 0.0


class PretrainRun:
    """One run: built from the config (inputs checked first), resumed if asked, trained, finished (`train`)."""

    def __init__(self, cfg: PretrainConfig):
        from accelerate.utils import DistributedType

        from nanochat_hf import plan as planning
        from nanochat_hf.dataset import load_splits

        self.cfg, self.on_gpu = cfg, torch.cuda.is_available()
        self.accelerator, self.mp, self.trackers = make_accelerator(cfg)
        acc, self.say = self.accelerator, self.accelerator.print
        # Inputs first, so bad arguments fail before any long work.
        self.output_dir = ensure_writable(cfg.output_dir)
        self.tokenizer, self.token_bytes = load_tokenizer_and_bytes(cfg.tokenizer)
        self.train_split, self.val_split = load_splits(cfg.data)
        self.resume_dir = resume_checkpoint(self.output_dir, cfg.resume_from_checkpoint, self.say)
        resume_state = verify_checkpoint(self.resume_dir) if self.resume_dir is not None else None
        self.build_model()
        self.log = RunLog(self.output_dir / "logs" / LOG_NAME, acc.is_main_process)
        # `nanochat-hf plan`'s table for this run (on a GPU: time, cost, memory)
        stage = planning.pretrain_plan("this run", cfg, self.plan, acc.unwrap_model(self.model), acc.num_processes)
        self.say(planning.render([stage], planning.detect_gpu(), fsdp=acc.distributed_type == DistributedType.FSDP))
        self.progress, loader_state = Progress(), None
        if resume_state is not None:
            loader_state = self.restore(resume_state)
        self.log.start(self.progress.step if resume_state is not None else None, redone=("val_bpb",))
        self.log.write(event="start", step=self.progress.step, config=asdict(cfg), plan=self.plan,
                       world_size=acc.num_processes, distributed_type=str(acc.distributed_type),
                       mixed_precision=self.mp, resumed_from=str(self.resume_dir) if self.resume_dir else None)
        if self.trackers:
            acc.init_trackers("nanochat_hf", config={**asdict(cfg), **self.plan},
                              init_kwargs={"wandb": {"name": cfg.run_name}})
        self.loader = self.data_loader(self.train_split, state=loader_state)
        self.gpu_peak = peak_flops() * acc.num_processes

    def build_model(self) -> None:
        """Seeded model, batch plan, optimizer and schedule, prepared by accelerate."""
        from accelerate.utils import set_seed

        from nanochat_hf.modeling import NanoChatForCausalLM, check_tokenizer_fits
        from nanochat_hf.optim import TrainingSchedule, build_optimizer

        cfg, acc, say, vocab = self.cfg, self.accelerator, self.say, len(self.tokenizer)
        set_seed(cfg.seed)
        config = model_config(cfg, cfg.depth, vocab)
        check_tokenizer_fits(config, self.tokenizer)
        model = NanoChatForCausalLM(config)
        model.config.use_cache = False
        # FlashAttention-3 on a GPU (bf16 under autocast, sliding windows); SDPA elsewhere or if it cannot load.
        compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.mp, torch.float32)
        model.use_fast_attention(acc.device, compute_dtype, say=say)
        say(f"attention: {model.config._attn_implementation}")
        plan = training_plan(cfg, model, vocab, acc.num_processes)
        if plan["device_batch_size"] != cfg.device_batch_size:
            say(f"device_batch_size {cfg.device_batch_size} -> {plan['device_batch_size']}: "
                f"{plan['total_batch_size']} tokens per step do not split into whole micro-steps of "
                f"{cfg.device_batch_size}x{cfg.max_seq_len} on {acc.num_processes} processes")
            cfg.device_batch_size = plan["device_batch_size"]
        if cfg.fp8:
            say(f"fp8: {enable_fp8(model, self.on_gpu)} linear layers train in fp8")
        optimizer = build_optimizer(model, embedding_lr=cfg.embedding_lr, unembedding_lr=cfg.unembedding_lr,
                                    matrix_lr=cfg.matrix_lr, scalar_lr=cfg.scalar_lr,
                                    weight_decay=plan["weight_decay_scaled"], batch_lr_scale=plan["batch_lr_scale"])
        self.schedule = TrainingSchedule(optimizer, plan["num_iterations"], cfg.warmup_steps, cfg.warmdown_ratio,
                                         cfg.final_lr_frac, cfg.momentum_warmup_steps)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        acc.register_for_checkpointing(self.schedule)
        self.plan = plan
        self.model_shape = {"arch": cfg.arch, "depth": cfg.depth, "hidden_size": config.hidden_size,
                            "vocab_size": vocab, "max_seq_len": cfg.max_seq_len}

    def restore(self, resume_state: dict):
        """Load the checkpoint's weights, optimizer, schedule and loop state; returns this rank's loader state."""
        acc, saved = self.accelerator, resume_state.get("model_shape", self.model_shape)
        diff = [f"{k} {saved[k]} vs {v}" for k, v in self.model_shape.items() if saved.get(k) != v]
        if diff:
            raise ValueError(f"{self.resume_dir} was trained with a different model/tokenizer ({', '.join(diff)}); "
                             "resume with the same --config, --tokenizer and size flags as that run")
        acc.load_state(str(self.resume_dir))
        self.progress = Progress(step=resume_state["step"], **resume_state["loop"])
        states = resume_state["loader_states"]
        if resume_state.get("plan", {}).get("total_batch_size") != self.plan["total_batch_size"]:
            self.say("warning: total_batch_size differs from the checkpoint's; the data position is approximate")
        self.say(f"resumed from {self.resume_dir} at step {self.progress.step}")
        return states[acc.process_index] if len(states) == acc.num_processes else states[0]

    def data_loader(self, split, **kwargs):
        from nanochat_hf.dataloader import BestFitLoader

        cfg, acc = self.cfg, self.accelerator
        return BestFitLoader(split, self.tokenizer, cfg.device_batch_size, cfg.max_seq_len, acc.process_index,
                             acc.num_processes, cfg.buffer_size, cfg.tokenizer_batch_size, acc.device, **kwargs)

    def evaluate(self) -> None:
        """Validation bpb on `eval_tokens` tokens of the validation split, logged."""
        from nanochat_hf.loss_eval import evaluate_bpb

        cfg, p, world = self.cfg, self.progress, self.accelerator.num_processes
        eval_steps = max(1, cfg.eval_tokens // (cfg.device_batch_size * cfg.max_seq_len * world))
        val_loader = self.data_loader(self.val_split, prefetch=0)
        p.val_bpb = evaluate_bpb(self.model, val_loader, eval_steps, self.token_bytes)
        p.min_val_bpb = min(p.min_val_bpb, p.val_bpb)
        self.log.write(step=p.step, val_bpb=p.val_bpb, total_training_time=p.train_time,
                       total_training_flops=self.plan["flops_per_token"] * self.plan["total_batch_size"] * p.step)
        self.accelerator.log({"val/bpb": p.val_bpb}, step=p.step)
        self.say(f"step {p.step:05d} | val bpb {p.val_bpb:.4f}")

    def optimizer_step(self) -> float:
        """One optimizer step: `grad_accum_steps` micro-batches, gradients synced only on the last one."""
        acc, accum = self.accelerator, self.plan["grad_accum_steps"]
        loss_sum = torch.zeros((), device=acc.device)
        try:
            for micro in range(accum):
                inputs, targets = next(self.loader)
                sync = contextlib.nullcontext() if micro == accum - 1 else acc.no_sync(self.model)
                with sync:
                    logits = self.model(input_ids=inputs).logits
                    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
                    acc.backward(loss / accum)
                loss_sum += loss.detach()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        except torch.OutOfMemoryError:
            cfg = self.cfg
            raise PretrainError(f"out of memory at device_batch_size={cfg.device_batch_size} x max_seq_len="
                                f"{cfg.max_seq_len}; halve --device_batch_size (gradient accumulation keeps the total "
                                f"batch of {self.plan['total_batch_size']} tokens)") from None
        return (loss_sum / accum).item()  # the host sync point of the step

    def record(self, train_loss: float, dt: float, values: dict, count_time: bool, bar) -> None:
        """A step's bookkeeping (nanochat's: EMA-smoothed loss, time counted after the first 10 steps)."""
        cfg, p, plan = self.cfg, self.progress, self.plan
        p.smooth_loss = 0.9 * p.smooth_loss + 0.1 * train_loss
        debiased = p.smooth_loss / (1 - 0.9 ** p.step)
        if count_time:
            p.train_time += dt
        tok_per_sec = plan["total_batch_size"] / dt
        mfu = 100 * plan["flops_per_token"] * tok_per_sec / self.gpu_peak
        if p.step % cfg.log_every == 0 or p.step == plan["num_iterations"]:
            row = dict(step=p.step, train_loss=debiased, loss=train_loss, lrm=values["lrm"],
                       muon_momentum=values["muon_momentum"], tokens_per_sec=tok_per_sec, mfu=mfu, dt=dt,
                       total_training_time=p.train_time, epoch=self.loader.state_dict()["epoch"], time=time.time())
            self.log.write(**row)
            self.accelerator.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=p.step)
        bar.update(1)
        bar.set_postfix(loss=f"{debiased:.4f}", tok_s=f"{tok_per_sec:,.0f}",
                        **({"mfu": f"{mfu:.1f}%"} if self.on_gpu else {}))

    def loop(self) -> None:
        """Train to num_iterations (or max_steps_this_run more steps), evaluating every eval_every and at the end."""
        from tqdm.auto import tqdm

        cfg, p, n = self.cfg, self.progress, self.plan["num_iterations"]
        start_step, steps_this_run = p.step, 0
        bar = tqdm(total=n, initial=p.step, desc="pretrain", unit="step",
                   disable=not self.accelerator.is_main_process, dynamic_ncols=True)
        self.model.train()
        while True:
            last = p.step == n
            if (cfg.eval_every > 0 and p.step % cfg.eval_every == 0) or last:
                self.evaluate()
            if last or (cfg.max_steps_this_run > 0 and steps_this_run >= cfg.max_steps_this_run):
                break
            t0 = time.perf_counter()
            values = self.schedule.apply(p.step)
            train_loss = self.optimizer_step()
            if self.on_gpu:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            p.step += 1
            steps_this_run += 1
            self.record(train_loss, dt, values, steps_this_run > 10 or n - start_step <= 10, bar)
            if cfg.save_every > 0 and p.step % cfg.save_every == 0 and p.step != n:
                self.save_checkpoint()
        bar.close()

    def save_checkpoint(self) -> None:
        p = self.progress
        state = {"plan": self.plan, "config": asdict(self.cfg), "model_shape": self.model_shape,
                 "loop": {k: v for k, v in asdict(p).items() if k != "step"}}
        save_checkpoint(self.accelerator, self.output_dir, p.step, state, self.loader, self.cfg.save_total_limit)

    def finish(self) -> dict:
        """A run stopped early leaves a checkpoint; a finished one logs its samples and saves the model."""
        acc, p = self.accelerator, self.progress
        if p.step != self.plan["num_iterations"]:  # stopped by max_steps_this_run: leave one to resume from
            self.save_checkpoint()
            summary = {"step": p.step, "finished": False, "val_bpb": p.val_bpb}
        else:
            # Samples (every rank generates: a sharded FSDP model needs all of them). Eager, not compiled: each
            # generated length is a new shape, which the compiled forward would recompile for.
            unwrapped = acc.unwrap_model(self.model, keep_torch_compile=False)
            continuations = greedy_continuations(unwrapped, self.tokenizer, self.cfg.sample_max_tokens, acc.device)
            for prompt, completion in continuations:
                self.log.write(event="sample", step=p.step, prompt=prompt, completion=completion)
                self.say(f"{prompt!r} -> {completion!r}")
            save_final(acc, self.model, self.tokenizer, self.output_dir)
            summary = {"step": p.step, "finished": True, "val_bpb": p.val_bpb, "min_val_bpb": p.min_val_bpb,
                       "total_training_time": p.train_time,
                       "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if self.on_gpu else None}
            self.log.write(event="end", **summary)
            self.say(f"done: val bpb {p.val_bpb:.4f} | training time {p.train_time / 60:.2f} min | "
                     f"model in {self.output_dir}")
        self.loader.close()
        acc.end_training()
        return summary


def train(cfg: PretrainConfig) -> dict:
    """The whole run; returns a summary (final val bpb, steps, timings)."""
    run = PretrainRun(cfg)
    run.loop()
    return run.finish()


@torch.no_grad()
def greedy_continuations(model, tokenizer, max_tokens: int, device) -> list[tuple[str, str]]:
    """Greedy continuations of nanochat's fixed prompts (BOS-prefixed, like training rows)."""
    was_training = model.training
    model.eval()
    out = []
    for prompt in SAMPLE_PROMPTS:
        ids = [tokenizer.bos_token_id] + tokenizer.encode(prompt, add_special_tokens=False)
        x = torch.tensor([ids], device=device)
        y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_tokens, do_sample=False,
                           pad_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.bos_token_id)
        out.append((prompt, tokenizer.decode(y[0, len(ids):], skip_special_tokens=True)))
    model.train(was_training)
    return out


def save_final(accelerator, model, tokenizer, output_dir: Path) -> None:
    """Hub-ready folder: config + safetensors + generation config + tokenizer (+ token_bytes.pt)."""
    from nanochat_hf.loading import set_generation_config
    from nanochat_hf.tokenization import save_tokenizer

    # The model without torch.compile's wrapper, whose state dict names every weight `_orig_mod.<name>`:
    # saved from the wrapper, from_pretrained would find none of them and start from random weights.
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    state_dict = accelerator.get_state_dict(unwrapped)  # gathers FSDP shards; a no-op copy under DDP
    if accelerator.is_main_process:
        unwrapped.config.use_cache = True
        set_generation_config(unwrapped, tokenizer)  # a base model ends a document by starting the next one
        with writing(output_dir):
            unwrapped.save_pretrained(output_dir, state_dict=state_dict, safe_serialization=True)
            save_tokenizer(tokenizer, output_dir)  # tokenizer files, chat template, token_bytes.pt
    accelerator.wait_for_everyone()


# ----------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> PretrainConfig:
    """YAML `--config` + flag overrides, the TRL way."""
    return parse_stage_args((PretrainConfig,), sys.argv[1:] if argv is None else argv)[0]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # A typo'd YAML key, a corrupt shard, a full disk: one line and exit status 2 (nanochat_hf.errors).
    return run_main("nanochat-hf pretrain", lambda: train(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
