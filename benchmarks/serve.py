"""Inference and serving speed, measured side by side in one run (CPU by default, tiny model).

    python benchmarks/serve.py                       # d4 random-weight model, 60 s load test
    python benchmarks/serve.py --duration 10         # shorter while developing
    python benchmarks/serve.py --model runs/tiny/sft # a trained model folder instead

Prints:
  1. batch-1 decode tokens/s: model.generate() (default cache) vs Engine.generate (its FastDecoder step),
     the Engine stepping through model.forward instead, and Engine(compile=True); same model, prompt,
     greedy, no early stop; best of --repeats runs each, interleaved;
  2. aggregate streamed tokens/s with 8 concurrent clients vs 1 client (`nanochat-hf serve` in a
     subprocess, clients on /generate_stream over loopback);
  3. 32 concurrent clients for --duration seconds: status codes, streams completed, p50/p99 time to
     first token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

# ----------------------------------------------------------------------------- settings
DEPTH = 4
VOCAB_SIZE = 2048
DECODE_TOKENS = 128  # batch-1 decode length
STREAM_TOKENS = 64  # max_new_tokens per streamed request
PROMPT = "Once upon a time, in a kingdom by the sea,"


def build_model_dir(out: Path, depth: int) -> Path:
    """A random-weight model + embedded-corpus tokenizer saved like a training stage saves them."""
    from nanochat_hf import NanoChatConfig, NanoChatForCausalLM
    from nanochat_hf.tokenization import save_tokenizer, train_tokenizer

    torch.manual_seed(0)
    tok = train_tokenizer(None, vocab_size=VOCAB_SIZE, max_chars=1_000_000, progress=False)
    cfg = NanoChatConfig.from_depth(depth, arch="modern", vocab_size=len(tok), max_position_embeddings=1024)
    model = NanoChatForCausalLM(cfg)
    with torch.no_grad():  # nanochat's init zeroes output projections; random weights give varied tokens
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(out)
    save_tokenizer(tok, out)
    return out


def bench_decode(model_dir: Path, repeats: int, compile: bool) -> dict:
    """Best tokens/s of each way to decode, interleaved; plus the compile time if compiled."""
    from nanochat_hf.engine import Engine, load_engine

    engine = load_engine(str(model_dir), device="cuda" if torch.cuda.is_available() else "cpu")
    model, tok = engine.model, engine.tokenizer
    prompt = tok(PROMPT)["input_ids"]
    ids = torch.tensor([prompt], device=engine.device)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    engines = {"engine": engine, "engine_forward": Engine(model, tok, fast_decode=False)}
    for e in engines.values():
        e.stop_ids = set()  # decode exactly DECODE_TOKENS tokens everywhere

    def hf():
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=DECODE_TOKENS, min_new_tokens=DECODE_TOKENS, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        return out.shape[1] - len(prompt)

    def ours(name):
        return lambda: sum(1 for _ in engines[name].generate(prompt, max_tokens=DECODE_TOKENS, temperature=0.0))

    runs = {"generate": hf, "engine": ours("engine"), "engine_forward": ours("engine_forward")}
    extra = {}
    if compile:
        engines["engine_compiled"] = Engine(model, tok, compile=True)
        engines["engine_compiled"].stop_ids = set()
        runs["engine_compiled"] = ours("engine_compiled")
        t = time.perf_counter()
        runs["engine_compiled"]()  # the first call compiles
        extra["compile_s"] = time.perf_counter() - t
    best = {name: 0.0 for name in runs}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in runs.items():
            sync()
            t = time.perf_counter()
            n = fn()
            sync()
            best[name] = max(best[name], n / (time.perf_counter() - t))
    return {**best, **extra}


# ----------------------------------------------------------------------------- the server under load


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, port: int, max_concurrent: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "nanochat_hf", "serve", "--model", str(model_dir), "--port", str(port),
           "--max-concurrent", str(max_concurrent), "--max-queue", "256", "--max-new-tokens", str(STREAM_TOKENS)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read()[-2000:]}")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not come up in 120 s")


async def one_stream(client: httpx.AsyncClient, url: str, seed: int, stats: dict):
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": STREAM_TOKENS, "do_sample": True, "temperature": 1.0,
                                             "seed": seed}}
    t0 = time.perf_counter()
    first, tokens, complete = None, 0, False
    try:
        async with client.stream("POST", f"{url}/generate_stream", json=body) as r:
            stats["status"][r.status_code] = stats["status"].get(r.status_code, 0) + 1
            if r.status_code != 200:
                await r.aread()
                return
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                if "error" in event:
                    stats["errors"] += 1
                    return
                tokens += 1
                if first is None:
                    first = time.perf_counter() - t0
                if event.get("details"):
                    complete = True
    except httpx.HTTPError as err:
        stats["status"][type(err).__name__] = stats["status"].get(type(err).__name__, 0) + 1
        return
    stats["tokens"] += tokens
    stats["complete"] += complete
    stats["incomplete"] += not complete
    if first is not None:
        stats["ttft"].append(first)


async def load(url: str, clients: int, duration: float) -> dict:
    """`clients` loops, each streaming one request after another until `duration` runs out."""
    stats = {"status": {}, "tokens": 0, "complete": 0, "incomplete": 0, "errors": 0, "ttft": []}
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300), limits=limits) as client:
        t0 = time.perf_counter()
        end = t0 + duration

        async def loop(i):
            n = 0
            while time.perf_counter() < end:
                await one_stream(client, url, seed=i * 100_003 + n, stats=stats)
                n += 1

        await asyncio.gather(*(loop(i) for i in range(clients)))
        stats["elapsed"] = time.perf_counter() - t0
    stats["tokens_per_s"] = stats["tokens"] / stats["elapsed"]
    return stats


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: a random-weight d4 built here)")
    p.add_argument("--depth", type=int, default=DEPTH)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of the 32-client load test")
    p.add_argument("--scaling-duration", type=float, default=15.0, help="seconds of the 1- and 8-client runs")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads, here and in the server (fair on a busy box)")
    p.add_argument("--skip", choices=["decode", "serve"], default=None)
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile'd "
                                                             "Engine (it compiles first)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else build_model_dir(Path(tmp) / "model", args.depth)
        print(f"model: {model_dir if args.model else f'random-weight d{args.depth} (vocab {VOCAB_SIZE})'}, "
              f"device: {'cuda' if torch.cuda.is_available() else 'cpu'}, torch threads: {args.threads}")
        if args.skip != "decode":
            best = bench_decode(model_dir, args.repeats, compile=not args.no_compile)
            g = best["generate"]
            print(f"[decode] batch-1, {DECODE_TOKENS} tokens, greedy: model.generate() {g:.1f} tok/s | "
                  f"Engine {best['engine']:.1f} tok/s ({best['engine'] / g:.2f}x) | "
                  f"Engine through model.forward {best['engine_forward']:.1f} tok/s "
                  f"({best['engine_forward'] / g:.2f}x)")
            if "engine_compiled" in best:
                print(f"[decode] Engine(compile=True) {best['engine_compiled']:.1f} tok/s "
                      f"({best['engine_compiled'] / g:.2f}x "
                      f"model.generate(), {best['engine_compiled'] / best['engine']:.2f}x eager), compiled in "
                      f"{best['compile_s']:.0f} s")
        if args.skip == "serve":
            return 0
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server(model_dir, port, max_concurrent=32)
        try:
            asyncio.run(load(url, 1, 3))  # warm-up
            one = asyncio.run(load(url, 1, args.scaling_duration))
            eight = asyncio.run(load(url, 8, args.scaling_duration))
            print(f"[scaling] streamed tokens/s: 1 client {one['tokens_per_s']:.1f} | 8 clients "
                  f"{eight['tokens_per_s']:.1f} | ratio {eight['tokens_per_s'] / one['tokens_per_s']:.2f}x")
            many = asyncio.run(load(url, 32, args.duration))
            fives = sum(v for k, v in many["status"].items() if isinstance(k, int) and k >= 500)
            print(f"[load] 32 clients x {args.duration:g} s: {many['complete']} streams complete, "
                  f"{many['incomplete']} incomplete, {many['errors']} stream errors, status {many['status']}, "
                  f"5xx {fives}, {many['tokens_per_s']:.1f} tok/s, TTFT p50 {pct(many['ttft'], 50) * 1000:.0f} ms "
                  f"p99 {pct(many['ttft'], 99) * 1000:.0f} ms")
        finally:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
