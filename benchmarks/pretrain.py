"""Pretraining throughput: the whole loop against the bare model step, side by side in one run.

    python benchmarks/pretrain.py                        # CPU: tiny recipe's model, embedded corpus
    python benchmarks/pretrain.py --steps 30 --depth 4
    python benchmarks/pretrain.py --gpu                  # GPU: d20, bf16, seq 2048, tokens/s and MFU

"model step": forward + backward + Muon/AdamW step on one fixed batch already in memory, i.e.
the best the loop could do. "loop": `nanochat_hf.pretrain.train` for the same model and batch,
with on-the-fly tokenisation, best-fit packing, schedules, logging and the progress bar, timed
wall-clock between the log rows of its steps. Goal: loop >= 0.9 x model step (data and
bookkeeping cost < 10%).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nanochat_hf import pretrain  # noqa: E402
from nanochat_hf.optim import TrainingSchedule, build_optimizer  # noqa: E402


def make_tokenizer(out: Path, vocab_size: int) -> str:
    from nanochat_hf.tokenization import save_tokenizer, train_tokenizer

    save_tokenizer(train_tokenizer(vocab_size=vocab_size, max_chars=2_000_000, progress=False), out)
    return str(out)


def model_step_tokens_per_sec(cfg: pretrain.PretrainConfig, vocab: int, steps: int, warmup: int) -> float:
    """fwd + bwd + optimizer on one fixed (B, T) batch: the loop's ceiling."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(cfg.seed)
    _, cls = pretrain.model_classes()
    model = cls(pretrain.model_config(cfg, cfg.depth, vocab)).to(device)
    model.config.use_cache = False
    plan = pretrain.training_plan(cfg, model, vocab, world_size=1)
    opt = build_optimizer(model, weight_decay=plan["weight_decay_scaled"], batch_lr_scale=plan["batch_lr_scale"])
    sched = TrainingSchedule(opt, steps + warmup)
    fwd = torch.compile(model, dynamic=False) if device == "cuda" else model
    B, T, accum = cfg.device_batch_size, cfg.max_seq_len, plan["grad_accum_steps"]
    x = torch.randint(0, vocab, (B, T + 1), device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        sched.apply(i)
        for _ in range(accum):
            with autocast:
                logits = fwd(input_ids=x[:, :-1]).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
            (loss / accum).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return plan["total_batch_size"] / statistics.median(times), plan


def loop_tokens_per_sec(cfg: pretrain.PretrainConfig, warmup: int, tokens_per_step: int) -> float:
    pretrain.train(cfg)
    rows = [json.loads(r) for r in (Path(cfg.output_dir) / "logs" / pretrain.LOG_NAME).read_text().splitlines()]
    steps = [r for r in rows if "train_loss" in r]
    a, b = steps[warmup], steps[-1]  # wall clock between log rows: includes loader, logging, bar
    return (b["step"] - a["step"]) * tokens_per_step / (b["time"] - a["time"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="d20 bf16 seq 2048 (needs CUDA)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: train a small one)")
    p.add_argument("--config", default="recipes/tiny/pretrain.yaml", help="CPU mode: recipe for the model sizes")
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_pretrain_"))
    if args.gpu:
        if not torch.cuda.is_available():
            print("--gpu needs CUDA", file=sys.stderr)
            return 2
        tok = args.tokenizer or make_tokenizer(tmp / "tok", 32768)
        cfg = pretrain.PretrainConfig(depth=args.depth or 20, max_seq_len=2048, device_batch_size=32, total_batch_size=65536,
                                      tokenizer=tok, mixed_precision="bf16", compile="true")
    else:
        tok = args.tokenizer or make_tokenizer(tmp / "tok", 4096)
        cfg = pretrain.parse_args(["--config", args.config])
        cfg.tokenizer = tok
        if args.depth:
            cfg.depth = args.depth
    vocab = len(pretrain.load_tokenizer_and_bytes(cfg.tokenizer)[0])
    cfg.num_iterations = args.warmup + args.steps
    cfg.eval_every, cfg.eval_tokens, cfg.save_every, cfg.sample_max_tokens = -1, cfg.device_batch_size * cfg.max_seq_len, -1, 1
    cfg.output_dir = str(tmp / "run")

    model_tps, plan = model_step_tokens_per_sec(cfg, vocab, args.steps, args.warmup)
    loop_tps = loop_tokens_per_sec(cfg, args.warmup, plan["total_batch_size"])
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n== pretraining throughput on {device}: depth {cfg.depth}, arch {cfg.arch}, B {cfg.device_batch_size} x T {cfg.max_seq_len}, "
          f"{plan['total_batch_size']} tokens/step, {plan['num_params'] / 1e6:.1f}M params")
    print(f"model step (fixed batch)   {model_tps:12,.0f} tokens/s")
    print(f"full loop (data + logging) {loop_tps:12,.0f} tokens/s")
    print(f"ratio loop / model step    {loop_tps / model_tps:12.3f}   (goal >= 0.9)")
    if torch.cuda.is_available():
        peak = pretrain.peak_flops()
        for name, tps in (("model step", model_tps), ("full loop", loop_tps)):
            print(f"MFU {name:<22} {100 * plan['flops_per_token'] * tps / peak:12.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
