"""Training throughput and peak memory of the model, measured side by side in one run.

    python benchmarks/model.py                 # CPU fp32: ours (classic, modern) vs transformers' native nanochat
    python benchmarks/model.py --gpu           # CUDA bf16 d20 and d24 at their recipes' batch: tokens/s, MFU, memory

CPU: depth 4, width 256, head_dim 64, seq 512, vocab 8192; one training step = forward + backward + AdamW.
Rounds are interleaved (A, B, C, A, B, C, ...) so machine load hits every model alike; medians are printed.
Peak memory: each model trains in its own process; the step's peak is the resident-set high-water mark
(Linux VmHWM, reset just before the first step) minus what the process held then (model + optimizer state
appear during the first step, so they are included).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

import torch

DEPTH, HEAD_DIM, ASPECT, SEQ, VOCAB, BATCH = 4, 64, 64, 512, 8192, 4
H100_BF16_PEAK = 989e12  # FLOP/s, dense bf16 (nanochat's MFU denominator)


def build(kind: str, seed: int = 0, depth=DEPTH, seq=SEQ, vocab=VOCAB, head_dim=HEAD_DIM):
    from nanochat_hf import NanoChatConfig, NanoChatForCausalLM

    torch.manual_seed(seed)
    arch = "classic" if kind in ("classic", "native") else "modern"
    config = NanoChatConfig.from_depth(depth, arch=arch, vocab_size=vocab, max_position_embeddings=seq,
                                       head_dim=head_dim, aspect_ratio=ASPECT)
    ours = NanoChatForCausalLM(config)
    if kind != "native":
        return ours
    from transformers import NanoChatConfig as NativeConfig, NanoChatForCausalLM as Native

    native = Native(NativeConfig(vocab_size=vocab, hidden_size=config.hidden_size,
                                 intermediate_size=config.intermediate_size, num_hidden_layers=depth,
                                 num_attention_heads=config.num_attention_heads,
                                 num_key_value_heads=config.num_key_value_heads, head_dim=head_dim,
                                 max_position_embeddings=seq, tie_word_embeddings=False))
    native.load_state_dict(ours.state_dict())  # same weights, same names
    return native


def make_step(model, batch, seq, vocab, device="cpu"):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, vocab, (batch, seq), generator=g).to(device)

    def step():
        loss = model(input_ids=idx, labels=idx, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _memory_worker(kind, queue):
    model = build(kind).train()
    step = make_step(model, BATCH, SEQ, VOCAB)
    try:  # reset the high-water mark (VmHWM) to the current resident set
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = _proc_status_kb("VmRSS")
    for _ in range(2):
        step()
    queue.put((_proc_status_kb("VmHWM") - before) / 1024)


def peak_step_memory_mb(kind: str) -> float:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_worker, args=(kind, queue))
    proc.start()
    value = queue.get(timeout=600)
    proc.join()
    return value


def cpu(rounds: int, steps: int) -> None:
    kinds = ["native", "classic", "modern"]
    models = {k: build(k).train() for k in kinds}
    steps_fn = {k: make_step(m, BATCH, SEQ, VOCAB) for k, m in models.items()}
    for fn in steps_fn.values():  # warm-up (allocator, kernels)
        fn()
    speed = {k: [] for k in kinds}  # tokens per wall-clock second
    cpu_speed = {k: [] for k in kinds}  # tokens per CPU-second of this process: stable on a shared machine
    for _ in range(rounds):
        for k in kinds:
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps):
                steps_fn[k]()
            speed[k].append(BATCH * SEQ * steps / (time.perf_counter() - t0))
            cpu_speed[k].append(BATCH * SEQ * steps / (time.process_time() - c0))
    tps = {k: statistics.median(v) for k, v in speed.items()}
    cps = {k: statistics.median(v) for k, v in cpu_speed.items()}
    print(f"CPU fp32, depth {DEPTH}, width {models['classic'].config.hidden_size}, head_dim {HEAD_DIM}, "
          f"seq {SEQ}, vocab {VOCAB}, batch {BATCH}, {torch.get_num_threads()} threads, "
          f"{rounds} rounds x {steps} steps (median)")
    for k in kinds:
        print(f"  {k:8s} {tps[k]:9.0f} tokens/s wall, {cps[k]:9.0f} tokens/CPU-s   "
              f"(wall rounds: {', '.join(f'{v:.0f}' for v in speed[k])})")
    print(f"  classic / native  = {tps['classic'] / tps['native']:.3f}x wall, "
          f"{cps['classic'] / cps['native']:.3f}x CPU time   (goal >= 1.0)")
    print(f"  modern  / classic = {tps['modern'] / tps['classic']:.3f}x wall, "
          f"{cps['modern'] / cps['classic']:.3f}x CPU time")
    del models, steps_fn
    mem = {k: peak_step_memory_mb(k) for k in kinds}
    for k in kinds:
        print(f"  peak step memory {k:8s} {mem[k]:7.1f} MB (RSS growth over the model)")


def recipe_batch(depth: int) -> int:
    """The device batch of recipes/d<depth>/pretrain.yaml (rows of 2048 tokens)."""
    import yaml

    path = Path(__file__).resolve().parent.parent / "recipes" / f"d{depth}" / "pretrain.yaml"
    return int(yaml.safe_load(path.read_text())["device_batch_size"])


def gpu(steps: int, compile_model: bool, batch: int | None, depths=(20, 24)) -> int:
    """bf16 weights + AdamW, both architectures, at each depth's recipe batch (halved on out-of-memory)."""
    if not torch.cuda.is_available():
        print("benchmarks/model.py --gpu needs CUDA; run it without --gpu on a CPU", file=sys.stderr)
        return 2
    from nanochat_hf.plan import NANOCHAT_THROUGHPUT

    for depth in depths:
        ref = NANOCHAT_THROUGHPUT[depth]
        print(f"d{depth}: nanochat {ref['tokens_per_s_per_gpu']:,} tok/s per GPU, MFU {ref['mfu']:.1%} "
              f"({ref['source']})")
        for arch in ("classic", "modern"):
            rows = batch or recipe_batch(depth)
            while rows >= 1:
                try:
                    gpu_one(depth, arch, rows, steps, compile_model)
                    break
                except torch.OutOfMemoryError:
                    print(f"  {arch}: out of memory at batch {rows}; trying {rows // 2}")
                    rows //= 2
                    torch.cuda.empty_cache()
    return 0


def gpu_one(depth: int, arch: str, batch: int, steps: int, compile_model: bool) -> None:
    model = build(arch, depth=depth, seq=2048, vocab=32768, head_dim=128).cuda().to(torch.bfloat16).train()
    impl = model.use_fast_attention()
    flops = model.estimate_flops()
    fwd = torch.compile(model) if compile_model else model
    step = make_step(fwd, batch, 2048, 32768, device="cuda")
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    tps = batch * 2048 * steps / (time.perf_counter() - t0)
    mfu = flops * tps / H100_BF16_PEAK
    print(f"  ours {arch:7s} attn={impl} compile={compile_model} batch={batch}x2048: {tps:,.0f} tokens/s, "
          f"MFU {100 * mfu:.1f}% (flops/token {flops:.3e}), peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    del model, fwd, step
    torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="CUDA bf16 d20 and d24 throughput, MFU and peak memory")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="training steps per round (CPU) / timed steps (GPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (GPU mode)")
    parser.add_argument("--batch", type=int, default=None, help="GPU batch (rows of 2048; default: each recipe's)")
    args = parser.parse_args(argv)
    if args.gpu:
        return gpu(min(max(args.steps, 10), 30), args.compile, args.batch)
    cpu(args.rounds, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
