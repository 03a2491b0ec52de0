"""Pretraining throughput: the whole loop against the bare model step, and the data loader against the GPU.

    python benchmarks/pretrain.py                        # CPU: tiny recipe's model, embedded corpus, + data loader
    python benchmarks/pretrain.py --steps 30 --depth 4
    python benchmarks/pretrain.py --gpu                  # one GPU: d20 and d24 at their recipes' device batch

"model step": forward + backward + Muon/AdamW step on one fixed batch already in memory, i.e.
the best the loop could do. "loop": `nanochat_hf.pretrain.train` for the same model and batch,
with on-the-fly tokenisation, best-fit packing, schedules, logging and the progress bar, timed
wall-clock between the log rows of its steps. Goal: loop >= 0.9 x model step (data and
bookkeeping cost < 10%).

"data loader" (CPU mode): the BestFitLoader's tokens per CPU-second on one thread (tokenizers' encode on
its loader thread, best-fit packing), and encode alone through `tokenizers` and through the `to_tiktoken`
export, beside the tokens/s one d24 H100 rank consumes at nanochat's throughput: how many cores per GPU
the loader needs so that data never starves a GPU.

--gpu: for d20 and d24, the recipe's model, device batch, bf16, compile and fp8 (when torchao is there) on
one GPU (total batch = one micro-step, so no accumulation): tokens/s, MFU, peak memory next to
`nanochat-hf plan`'s estimate and nanochat's published figures. A device batch that runs out of memory is
halved and said. About 3-5 minutes on one H100 (compilation included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nanochat_hf import NanoChatForCausalLM, plan as planning, pretrain  # noqa: E402
from nanochat_hf.extras import available  # noqa: E402
from nanochat_hf.optim import TrainingSchedule, build_optimizer  # noqa: E402


def make_tokenizer(out: Path, vocab_size: int) -> str:
    from nanochat_hf.tokenization import save_tokenizer, train_tokenizer

    save_tokenizer(train_tokenizer(vocab_size=vocab_size, max_chars=2_000_000, progress=False), out)
    return str(out)


def model_step(cfg: pretrain.PretrainConfig, vocab: int, steps: int, warmup: int) -> dict:
    """fwd + bwd + optimizer on one fixed (B, T) batch: the loop's ceiling. Returns tokens/s, plan, peak memory."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(cfg.seed)
    model = NanoChatForCausalLM(pretrain.model_config(cfg, cfg.depth, vocab)).to(device)
    model.config.use_cache = False
    plan = pretrain.training_plan(cfg, model, vocab, world_size=1)
    notes = []
    if device == "cuda":
        model.use_fast_attention(device, torch.bfloat16, say=notes.append)
        if cfg.fp8 and available("torchao"):
            pretrain.enable_fp8(model, on_gpu=True)
        elif cfg.fp8:
            notes.append("fp8 asked for but torchao is not installed: bf16")
    opt = build_optimizer(model, weight_decay=plan["weight_decay_scaled"], batch_lr_scale=plan["batch_lr_scale"])
    sched = TrainingSchedule(opt, steps + warmup)
    fwd = torch.compile(model, dynamic=False) if device == "cuda" and cfg.compile != "false" else model
    B, T, accum = cfg.device_batch_size, cfg.max_seq_len, plan["grad_accum_steps"]
    x = torch.randint(0, vocab, (B, T + 1), device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    times = []
    for i in range(warmup + steps):
        if device == "cuda" and i == warmup:
            torch.cuda.reset_peak_memory_stats()
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
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    estimate = planning.memory_breakdown(model, B, T, 1, fsdp=False)["total"]
    return {"tokens_per_s": plan["total_batch_size"] / statistics.median(times), "plan": plan, "peak_bytes": peak,
            "estimate_bytes": estimate, "step_s": statistics.median(times), "notes": notes,
            "attention": model.config._attn_implementation}


def loop_tokens_per_sec(cfg: pretrain.PretrainConfig, warmup: int, tokens_per_step: int) -> float:
    pretrain.train(cfg)
    rows = [json.loads(r) for r in (Path(cfg.output_dir) / "logs" / pretrain.LOG_NAME).read_text().splitlines()]
    steps = [r for r in rows if "train_loss" in r]
    a, b = steps[warmup], steps[-1]  # wall clock between log rows: includes loader, logging, bar
    return (b["step"] - a["step"]) * tokens_per_step / (b["time"] - a["time"])


def _loader_worker(tok_dir: str, batch: int, seq_len: int, batches: int) -> dict:
    """One thread (the caller set TOKENIZERS_PARALLELISM=false and RAYON_NUM_THREADS=1 before any import):
    the loader's tokens per CPU-second, then encode alone both ways."""
    torch.set_num_threads(1)
    from nanochat_hf.dataloader import BestFitLoader
    from nanochat_hf.dataset import load_splits
    from nanochat_hf.tokenization import iter_documents, load_tokenizer, to_tiktoken

    tok = load_tokenizer(tok_dir)
    train, _ = load_splits(None)
    loader = BestFitLoader(train, tok, batch, seq_len, 0, 1, 1000, 128, "cpu")
    next(loader)  # the buffer's first fill
    c0 = time.process_time()  # counts the loader's background thread too
    for _ in range(batches):
        next(loader)
    loader_cpu = time.process_time() - c0
    loader.close()
    texts = list(iter_documents(None, 2_000_000, 10_000, progress=False))
    fast, tik = tok.backend_tokenizer, to_tiktoken(tok)
    best = {"tokenizers": float("inf"), "tiktoken": float("inf")}
    n_tokens = sum(len(e.ids) for e in fast.encode_batch_fast(texts, add_special_tokens=False))
    for _ in range(3):  # best of 3, alternating, so background load hits both alike
        c0 = time.process_time()
        fast.encode_batch_fast(texts, add_special_tokens=False)
        best["tokenizers"] = min(best["tokenizers"], time.process_time() - c0)
        c0 = time.process_time()
        tik.encode_ordinary_batch(texts, num_threads=1)
        best["tiktoken"] = min(best["tiktoken"], time.process_time() - c0)
    return {"loader": batches * batch * seq_len / loader_cpu, "vocab": len(tok),
            **{k: n_tokens / v for k, v in best.items()}}


def data_loader_per_core(tok_dir: str, batch: int = 16, seq_len: int = 2048, batches: int = 12) -> dict:
    """`_loader_worker` in a fresh process pinned to one thread (tokenizers reads its thread settings once)."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", RAYON_NUM_THREADS="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    spec = json.dumps([tok_dir, batch, seq_len, batches])
    res = subprocess.run([sys.executable, __file__, "--loader-worker", spec], capture_output=True, text=True, env=env,
                         timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f"data loader measurement failed: {res.stderr.strip().splitlines()[-1:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def print_data_loader(tmp: Path) -> None:
    """The loader's tokens per core beside what one d24 H100 rank consumes at nanochat's speed."""
    tok = make_tokenizer(tmp / "tok32k", 32768)
    r = data_loader_per_core(tok)
    ref = planning.NANOCHAT_THROUGHPUT[24]["tokens_per_s_per_gpu"]
    fastest = planning.NANOCHAT_D24_FASTEST_TOKENS_PER_GPU
    print(f"\n== data loader, one CPU core (embedded Shakespeare, vocab {r['vocab']:,}, rows of 16 x 2048)")
    print(f"BestFitLoader (tokenizers, packing) {r['loader']:12,.0f} tokens per CPU-second")
    print(f"encode only, tokenizers             {r['tokenizers']:12,.0f} tokens per CPU-second")
    print(f"encode only, to_tiktoken export     {r['tiktoken']:12,.0f} tokens per CPU-second")
    print(f"one d24 H100 rank at nanochat's speed consumes {ref:,} tok/s (leaderboard run 1, bf16) to "
          f"{fastest:,} tok/s (run 6, fp8)")
    for name in ("loader", "tiktoken"):
        print(f"cores per GPU to keep up ({name}): {ref / r[name]:.2f} to {fastest / r[name]:.2f}")


def gpu(depths: list[int], steps: int, warmup: int) -> int:
    if not torch.cuda.is_available():
        print("benchmarks/pretrain.py --gpu needs CUDA; run it without --gpu on a CPU", file=sys.stderr)
        return 2
    name, peak = torch.cuda.get_device_name(0), pretrain.peak_flops()
    print(f"== pretraining model step on one {name} ({peak / 1e12:,.0f} TFLOP/s bf16)")
    for depth in depths:
        cfg = pretrain.parse_args(["--config", str(REPO / "recipes" / f"d{depth}" / "pretrain.yaml")])
        batch, r = cfg.device_batch_size, None
        while batch >= 1 and r is None:
            cfg.device_batch_size, cfg.total_batch_size = batch, batch * cfg.max_seq_len  # one micro-step
            try:
                r = model_step(cfg, 32768, steps, warmup)
            except torch.OutOfMemoryError:
                print(f"d{depth}: out of memory at device batch {batch}; trying {batch // 2}")
                batch //= 2
                torch._dynamo.reset()
                torch.cuda.empty_cache()
        if r is None:
            continue
        ref = planning.NANOCHAT_THROUGHPUT[depth]
        mfu = r["plan"]["flops_per_token"] * r["tokens_per_s"] / peak
        print(f"d{depth} batch {batch} x {cfg.max_seq_len}, attention {r['attention']}, compile {cfg.compile}, "
              f"fp8 {cfg.fp8}{''.join('; ' + n for n in r['notes'])}")
        print(f"  ours      {r['tokens_per_s']:10,.0f} tok/s  MFU {mfu:6.1%}  {r['step_s'] * 1e3:7.1f} ms/micro-step  "
              f"peak {r['peak_bytes'] / 2**30:6.1f} GiB (plan's estimate {r['estimate_bytes'] / 2**30:.1f} GiB)")
        print(f"  nanochat  {ref['tokens_per_s_per_gpu']:10,.0f} tok/s  MFU {ref['mfu']:6.1%}  "
              f"({ref['source']}, per GPU of 8)")
        print(json.dumps({"depth": depth, "device_batch": batch, "tokens_per_s": round(r["tokens_per_s"]),
                          "mfu": round(mfu, 4), "peak_gib": round(r["peak_bytes"] / 2**30, 2),
                          "estimate_gib": round(r["estimate_bytes"] / 2**30, 2)}))
        torch._dynamo.reset()
        torch.cuda.empty_cache()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="one GPU: d20 and d24 at their recipes' device batch")
    p.add_argument("--depths", default="20,24", help="--gpu: recipes/d<depth>/pretrain.yaml to measure")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: train a small one)")
    p.add_argument("--config", default="recipes/tiny/pretrain.yaml", help="CPU mode: recipe for the model sizes")
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--steps", type=int, default=20, help="timed steps (--gpu: at most 20)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-loader", action="store_true", help="CPU mode: skip the data loader measurement")
    p.add_argument("--loader-worker", default=None, help=argparse.SUPPRESS)  # internal: see data_loader_per_core
    args = p.parse_args(argv)
    if args.loader_worker:
        print(json.dumps(_loader_worker(*json.loads(args.loader_worker))))
        return 0
    if args.gpu:  # bounded: compilation dominates, a few steps give a stable median
        return gpu([int(d) for d in args.depths.split(",")], min(args.steps, 20), args.warmup)
    tmp = Path(tempfile.mkdtemp(prefix="bench_pretrain_"))
    tok = args.tokenizer or make_tokenizer(tmp / "tok", 4096)
    cfg = pretrain.parse_args(["--config", args.config])
    cfg.tokenizer = tok
    if args.depth:
        cfg.depth = args.depth
    vocab = len(pretrain.load_tokenizer_and_bytes(cfg.tokenizer)[0])
    cfg.num_iterations = args.warmup + args.steps
    cfg.eval_every, cfg.save_every, cfg.sample_max_tokens = -1, -1, 1
    cfg.eval_tokens = cfg.device_batch_size * cfg.max_seq_len
    cfg.output_dir = str(tmp / "run")

    r = model_step(cfg, vocab, args.steps, args.warmup)
    model_tps, plan = r["tokens_per_s"], r["plan"]
    loop_tps = loop_tokens_per_sec(cfg, args.warmup, plan["total_batch_size"])
    print(f"\n== pretraining throughput on CPU ({torch.get_num_threads()} threads): depth {cfg.depth}, "
          f"arch {cfg.arch}, "
          f"B {cfg.device_batch_size} x T {cfg.max_seq_len}, {plan['total_batch_size']} tokens/step, "
          f"{plan['num_params'] / 1e6:.1f}M params")
    print(f"model step (fixed batch)   {model_tps:12,.0f} tokens/s")
    print(f"full loop (data + logging) {loop_tps:12,.0f} tokens/s")
    print(f"ratio loop / model step    {loop_tps / model_tps:12.3f}   (goal >= 0.9)")
    if not args.no_loader:
        print_data_loader(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
