"""`nanochat-hf eval`: CORE, ChatCORE and bits-per-byte for any causal LM.

    nanochat-hf eval --model out/base --tasks core --bundle eval_bundle/ --output core.json
    nanochat-hf eval --model out/sft --tasks chatcore --max-per-task 200 --output chat.json
    nanochat-hf eval --model openai-community/gpt2-xl --tasks core      # nanochat reports CORE 0.2565
    nanochat-hf eval --model out/base --tasks arc_easy,copa,bpb --max-per-task 100

`--tasks`: `core` (the 22 DCLM tasks of core.yaml), `chatcore` (ARC-Easy, ARC-Challenge, MMLU, GSM8K, HumanEval,
SpellingBee), `bpb`, or a comma list of task names in any case, with - or _; `arc_easy` is CORE's and `ARC-Easy` the
chat task, and a `core_` / `chat_` prefix (lighteval's names) picks a kind. `--output FILE.json` writes {"model",
"tasks": {label: {accuracy, centered, n, shots, type, seconds}}, "core", "chatcore", "bpb", "run": {...}} and a
Markdown table next to it (FILE.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import time
from pathlib import Path

import torch

from nanochat_hf.errors import run_main
from nanochat_hf.loading import load_model
from nanochat_hf.report import git_commit

from . import chat_tasks, core

BPB_SEQ_LEN = 512  # rows of the bpb evaluation (capped by the model's context)
BPB_MAX_TOKENS = 64 * 1024  # tokens of validation text scored by `bpb`
BPB_BATCH = 8


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nanochat-hf eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint folder or Hub id of any causal LM")
    p.add_argument("--tasks", default="core", help="core | chatcore | bpb | task names (any case, - or _)")
    p.add_argument("--max-per-task", type=int, default=-1, help="examples per task (-1 = all)")
    p.add_argument("--output", default=None, help="write results to this JSON file (and a .md table)")
    p.add_argument("--bundle", "--bundle-dir", dest="bundle", default=None, help="local CORE eval bundle folder")
    p.add_argument("--chat-data", default=None, help="folder with arc_easy/arc_challenge/mmlu/gsm8k .jsonl (offline)")
    p.add_argument("--bpb-text", default=None, help="text file for bpb (default: the embedded corpus's last 5%%)")
    p.add_argument("--batch-tokens", type=int, default=core.BATCH_TOKENS, help="padded tokens per CORE forward")
    p.add_argument("--max-context", type=core.parse_max_context, default="auto",
                   help="CORE prompts: auto (nanochat's rule: whole for RoPE models, last N tokens for learned "
                        "positions) | trained (crop to the model's training context) | N (keep the last N tokens)")
    p.add_argument("--max-new-tokens", type=int, default=chat_tasks.MAX_NEW_TOKENS)
    p.add_argument("--device", default=None, help="cpu | cuda | mps (default: cuda when available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--no-progress", action="store_true")
    return p


GROUPS = ("core", "chatcore", "bpb")
KIND_PREFIX = re.compile(r"(core|chat)[-_ ]", re.IGNORECASE)  # lighteval's core_copa / chat_gsm8k name a kind


def task_key(name: str) -> str:
    """How task names compare: case and separators ignored (gsm8k = GSM8K, arc-easy = ARC_Easy, human-eval)."""
    return re.sub(r"[-_ ]", "", name.strip().lower())


def resolve_task(name: str, core_labels=core.CORE_LABELS) -> tuple[str, str]:
    """One task name -> (kind, canonical name), kind "group" (core, chatcore, bpb), "core" or "chat". The exact
    name wins (`arc_easy` is CORE's, `ARC-Easy` the chat task); otherwise any spelling of exactly one name does."""
    kinds, rest = ("core", "chat"), name.strip()
    if m := KIND_PREFIX.match(rest):
        kinds, rest = (m.group(1).lower(),), rest[m.end():]
    key = task_key(rest)
    if len(kinds) == 2 and key in GROUPS:
        return "group", key
    names = {"core": list(core_labels), "chat": list(chat_tasks.BASELINES)}
    exact = [(k, n) for k in kinds for n in names[k] if n == rest]
    found = exact or [(k, n) for k in kinds for n in names[k] if task_key(n) == key]
    if len(found) == 1:
        return found[0]
    if found:
        (_, c), (_, h) = found
        raise ValueError(f"task {name!r} is both the CORE task {c} and the chat task {h}; write {c} or core_{c} for "
                         f"CORE, {h} or chat_{c} for chat")
    raise ValueError(f"unknown task {name!r}; valid names (any case, with or without - and _): {', '.join(GROUPS)}; "
                     f"CORE: {', '.join(names['core'])}; chat: {', '.join(names['chat'])}")


def resolve_tasks(spec: str, core_labels=core.CORE_LABELS) -> tuple[list[str] | None, list[str], bool]:
    """--tasks -> (CORE labels or None for all / [] for none, chat tasks, bpb?). `core_labels`: the CORE tasks
    there are (`core.known_labels`), so that a wrong name fails before any model loads or bundle downloads."""
    names = [t.strip() for t in spec.split(",") if t.strip()]
    if not names:
        raise ValueError("--tasks is empty; use core, chatcore, bpb or task names")
    core_out: list[str] | None = []
    chat, bpb = [], False
    for n in names:
        kind, name = resolve_task(n, core_labels)
        if (kind, name) == ("group", "core"):
            core_out = None
        elif (kind, name) == ("group", "chatcore"):
            chat += [t for t in chat_tasks.CHATCORE_TASKS if t not in chat]
        elif (kind, name) == ("group", "bpb"):
            bpb = True
        elif kind == "chat" and name not in chat:
            chat.append(name)
        elif kind == "core" and core_out is not None and name not in core_out:
            core_out.append(name)
    return core_out, chat, bpb


def bits_per_byte(model, tokenizer, text: str, seq_len: int = BPB_SEQ_LEN, max_tokens: int = BPB_MAX_TOKENS) -> float:
    """nanochat's bpb (loss_eval.evaluate_bpb) on a text cut into BOS-led rows of `seq_len` tokens."""
    from nanochat_hf.loss_eval import evaluate_bpb
    from nanochat_hf.tokenization import get_token_bytes

    seq_len = min(seq_len, core.model_max_seq_len(model) or seq_len)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    if len(ids) < seq_len:
        raise ValueError(f"the bpb text has {len(ids)} tokens; give at least {seq_len}")
    bos = core.bos_id(tokenizer)
    rows = [[bos] + ids[i:i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]
    data = torch.tensor(rows, dtype=torch.long)
    batches = [(data[i:i + BPB_BATCH, :-1], data[i:i + BPB_BATCH, 1:]) for i in range(0, len(rows), BPB_BATCH)]
    return evaluate_bpb(model, batches, len(batches), get_token_bytes(tokenizer))


def _default_bpb_text() -> str:
    from nanochat_hf.assets import embedded_corpus_path

    text = embedded_corpus_path().read_text(encoding="utf-8")
    return text[int(len(text) * 0.95):]  # the pretraining loader's held-out tail


def evaluate(model, tokenizer, tasks: str = "core", max_per_task: int = -1, bundle=None, chat_data=None,
             bpb_text: str | None = None, batch_tokens: int = core.BATCH_TOKENS,
             max_new_tokens: int = chat_tasks.MAX_NEW_TOKENS, progress: bool = True, model_name: str = "model",
             max_context: str | int = "auto") -> dict:
    """Run the requested tasks on an in-memory model; the result dict `--output` writes."""
    core_labels, chat, want_bpb = resolve_tasks(tasks, core.known_labels(bundle))
    started, t0 = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), time.time()
    result: dict = {"model": model_name, "tasks": {}}
    if core_labels is None or core_labels:
        out = core.evaluate_core(model, tokenizer, bundle, max_per_task, core_labels or None, batch_tokens, progress,
                                 max_context)
        result["tasks"].update(out["tasks"])
        result["core"] = out["core"]
    for task in chat:
        t1 = time.time()
        limit = max_per_task if max_per_task > 0 else None
        r = chat_tasks.evaluate_chat_task(task, model, tokenizer, chat_data, limit, max_new_tokens, progress)
        r["seconds"] = round(time.time() - t1, 3)
        result["tasks"][task] = r
    if chat:
        done = [t for t in chat_tasks.CHATCORE_TASKS if t in result["tasks"]]
        # as nanochat: ChatCORE is only defined over the full set of its tasks
        result["chatcore"] = (sum(result["tasks"][t]["centered"] for t in done) / len(done)
                              if len(done) == len(chat_tasks.CHATCORE_TASKS) else None)
    if want_bpb:
        text = Path(bpb_text).read_text(encoding="utf-8") if bpb_text else _default_bpb_text()
        result["bpb"] = bits_per_byte(model, tokenizer, text)
    result["run"] = {"model": model_name, "commit": git_commit(), "started": started,
                     "seconds": round(time.time() - t0, 3), "max_per_task": max_per_task, "tasks": tasks,
                     "max_context": max_context}
    return result


def markdown_table(result: dict) -> str:
    lines = ["| task | shots | n | accuracy | centered |", "|---|---:|---:|---:|---:|"]
    for label, r in result["tasks"].items():
        lines.append(f"| {label} | {r.get('shots', 0)} | {r['n']} | {r['accuracy']:.4f} | {r['centered']:.4f} |")
    for key in ("core", "chatcore", "bpb"):
        if result.get(key) is not None:
            lines.append(f"| **{key.upper() if key != 'bpb' else 'bpb'}** | | | | **{result[key]:.4f}** |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_main("nanochat-hf eval", lambda: _run(args))


def _run(args) -> None:
    if args.max_per_task == 0 or args.max_per_task < -1:
        raise ValueError(f"--max-per-task must be a positive number or -1 (all), got {args.max_per_task}")
    core_labels, _, _ = resolve_tasks(args.tasks, core.known_labels(args.bundle))  # a wrong name: no download
    if core_labels is None or core_labels:  # check the bundle and task names before loading the model
        bundle = core.resolve_bundle(args.bundle)
        missing = [t.label for t in core.load_tasks(bundle, core_labels or None)
                   if not (bundle / "eval_data" / t.dataset_uri).is_file()]
        if missing:
            raise FileNotFoundError(f"the bundle {bundle} lacks the data of {', '.join(missing)}; use the full bundle "
                                    f"({core.EVAL_BUNDLE_URL}) or list the other tasks with --tasks")
    model, tokenizer = load_model(args.model, args.device or "auto", args.dtype, any_model=True)
    result = evaluate(model, tokenizer, args.tasks, args.max_per_task, args.bundle, args.chat_data, args.bpb_text,
                      args.batch_tokens, args.max_new_tokens, not args.no_progress, model_name=args.model,
                      max_context=args.max_context)
    table = markdown_table(result)
    print(table)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        out.with_suffix(".md").write_text(table)
        print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    sys.exit(main())
