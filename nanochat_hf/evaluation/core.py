"""CORE: the DCLM in-context-learning benchmark, scored exactly as nanochat's `core_eval`.

    nanochat-hf eval --model out/base --tasks core [--bundle eval_bundle/] [--max-per-task 500]

The eval bundle (core.yaml, eval_meta_data.csv, eval_data/*.jsonl) is read from `--bundle DIR`, else the cache,
else downloaded from nanochat's S3. Per task, nanochat's recipe: rows shuffled with Random(1337); few-shot examples
of row i drawn with Random(1234 + i); multiple choice / schema: one prompt per option, the continuation span being
the common token prefix / suffix, the prediction the option with the lowest *mean* span loss; language modelling:
correct iff greedy argmax reproduces every continuation token; centered = (acc - b) / (1 - b), CORE = mean centered.
Unlike nanochat (one example per forward) we pack many examples into one padded batch: the same numbers, several
times faster (benchmarks/eval.py).
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from tqdm.auto import tqdm

from nanochat_hf.dataset import data_home

EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
SHUFFLE_SEED = 1337  # nanochat shuffles each task once with this seed (stable subsampling)
FEWSHOT_SEED = 1234  # few-shot examples of row i are drawn with Random(FEWSHOT_SEED + i)
BATCH_TOKENS = 8192  # padded tokens per forward pass (rows x longest row)
# The DCLM bundle's core.yaml labels, in order: task names are checked against these before any download.
CORE_LABELS = ("hellaswag_zeroshot", "jeopardy", "bigbench_qa_wikidata", "arc_easy", "arc_challenge", "copa",
               "commonsense_qa", "piqa", "openbook_qa", "lambada_openai", "hellaswag", "winograd", "winogrande",
               "bigbench_dyck_languages", "agi_eval_lsat_ar", "bigbench_cs_algorithms", "bigbench_operators",
               "bigbench_repeat_copy_logic", "squad", "coqa", "boolq", "bigbench_language_identification")
# The task types there are, and the fields a row of each must have (the DCLM bundle's schema).
ROW_FIELDS = {"multiple_choice": ("query", "choices", "gold"), "schema": ("context_options", "continuation", "gold"),
              "language_modeling": ("context", "continuation")}


# ----------------------------------------------------------------------------- the bundle


def _is_bundle(path: Path) -> bool:
    return (path / "core.yaml").is_file() and (path / "eval_meta_data.csv").is_file() and (path / "eval_data").is_dir()


def download_bundle(dest: Path, url: str = EVAL_BUNDLE_URL) -> Path:
    """Download and unzip eval_bundle.zip into `dest` (atomic: a partial download never looks complete)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        zip_path = Path(tmp) / "eval_bundle.zip"
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(zip_path, "wb") as f:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc="eval_bundle.zip") as bar:
                    while chunk := resp.read(1 << 20):
                        f.write(chunk)
                        bar.update(len(chunk))
        except OSError as err:
            raise FileNotFoundError(
                f"could not download the CORE eval bundle from {url} ({err}); offline, download eval_bundle.zip "
                f"elsewhere, unzip it and pass --bundle DIR (the folder holding core.yaml)") from None
        with zipfile.ZipFile(zip_path) as z:
            z.extractall(tmp)
        found = [p.parent for p in Path(tmp).rglob("core.yaml")]
        if not found:
            raise FileNotFoundError(f"{url} did not contain a core.yaml; is it the DCLM eval bundle?")
        shutil.move(str(found[0]), str(dest))
    return dest


def resolve_bundle(bundle: str | os.PathLike | None = None, download: bool = True) -> Path:
    """A local bundle folder: the one given, else the cached one, else a fresh download."""
    if bundle is not None:
        path = Path(bundle).expanduser()
        if not _is_bundle(path):
            raise FileNotFoundError(f"{path} is not a CORE eval bundle: expected core.yaml, eval_meta_data.csv and "
                                    f"eval_data/ inside (unzip {EVAL_BUNDLE_URL} and point --bundle at it)")
        return path
    cached = data_home() / "eval_bundle"
    if _is_bundle(cached):
        return cached
    if not download:
        raise FileNotFoundError(f"no CORE eval bundle at {cached}; pass --bundle DIR or download {EVAL_BUNDLE_URL}")
    return download_bundle(cached)


@dataclass
class CoreTask:
    label: str
    task_type: str
    dataset_uri: str
    num_fewshot: int
    delimiter: str
    random_baseline: float  # in percent, as eval_meta_data.csv writes it


def load_tasks(bundle: Path, labels: list[str] | None = None) -> list[CoreTask]:
    """The tasks of core.yaml (in its order) with their random baselines; `labels` selects a subset."""
    config = yaml.safe_load((bundle / "core.yaml").read_text(encoding="utf-8"))
    with open(bundle / "eval_meta_data.csv", encoding="utf-8") as f:
        baselines = {row["Eval Task"]: float(row["Random baseline"]) for row in csv.DictReader(f)}
    tasks = []
    for t in config["icl_tasks"]:
        if t["icl_task_type"] not in ROW_FIELDS:
            raise ValueError(f"core.yaml task {t['label']}: unknown icl_task_type {t['icl_task_type']!r}")
        if t["label"] not in baselines:
            raise ValueError(f"eval_meta_data.csv has no random baseline for {t['label']!r}")
        tasks.append(CoreTask(t["label"], t["icl_task_type"], t["dataset_uri"], int(t["num_fewshot"][0]),
                              t.get("continuation_delimiter", " "), baselines[t["label"]]))
    if labels:
        known = {t.label for t in tasks}
        unknown = [label for label in labels if label not in known]
        if unknown:
            raise ValueError(f"unknown CORE task(s) {unknown}; core.yaml has: {', '.join(sorted(known))}")
        tasks = [t for t in tasks if t.label in labels]
    return tasks


def known_labels(bundle: str | os.PathLike | None = None) -> list[str]:
    """The CORE labels there are, without downloading: the given or cached bundle's, else DCLM's (CORE_LABELS)."""
    try:
        return [t.label for t in load_tasks(resolve_bundle(bundle, download=False))]
    except FileNotFoundError:  # no bundle here yet (or a bad --bundle, reported when CORE tasks load it)
        return list(CORE_LABELS)


def load_task_rows(bundle: Path, task: CoreTask, max_per_task: int = -1) -> list[dict]:
    """The task's rows, shuffled with nanochat's seed, optionally cut to the first `max_per_task`."""
    path = bundle / "eval_data" / task.dataset_uri
    if not path.is_file():
        raise FileNotFoundError(f"CORE task {task.label}: missing {path}; the bundle is incomplete "
                                f"(download {EVAL_BUNDLE_URL} or leave the task out with --tasks)")
    from nanochat_hf.dataset import read_jsonl
    from nanochat_hf.errors import UserError

    rows, fields = [], ROW_FIELDS[task.task_type]
    for n, row in read_jsonl(path):
        missing = [k for k in fields if not isinstance(row, dict) or k not in row]
        if missing:  # refused, not skipped: a dropped row would change the score silently
            raise UserError(f"{path}:{n}: the row lacks {', '.join(map(repr, missing))} (a {task.task_type} row "
                            f"of CORE task {task.label} needs {', '.join(fields)}); fix the row or use the original "
                            "bundle")
        rows.append(row)
    random.Random(SHUFFLE_SEED).shuffle(rows)
    return rows[:max_per_task] if max_per_task > 0 else rows


def centered(accuracy: float, random_baseline_pct: float) -> float:
    b = 0.01 * random_baseline_pct
    return (accuracy - b) / (1.0 - b)


# ----------------------------------------------------------------------------- prompts (nanochat's templates)
# Each few-shot example is rendered as "<context><delimiter><answer>\n\n" ahead of the item.


def render_mc(item: dict, delim: str, fewshot: list[dict]) -> list[str]:
    prefix = "".join(f"{ex['query']}{delim}{ex['choices'][ex['gold']]}\n\n" for ex in fewshot)
    return [f"{prefix}{item['query']}{delim}{choice}" for choice in item["choices"]]


def render_schema(item: dict, delim: str, fewshot: list[dict]) -> list[str]:
    prefix = "".join(f"{ex['context_options'][ex['gold']]}{delim}{ex['continuation']}\n\n" for ex in fewshot)
    return [f"{prefix}{ctx}{delim}{item['continuation']}" for ctx in item["context_options"]]


def render_lm(item: dict, delim: str, fewshot: list[dict]) -> list[str]:
    """[prompt without the continuation (stripped, so it stays a token prefix), prompt with it]."""
    prefix = "".join(f"{ex['context'].strip()}{delim}{ex['continuation']}\n\n" for ex in fewshot)
    without = f"{prefix}{item['context'].strip()}{delim}"
    return [without.strip(), without + item["continuation"]]


def _common_length(seqs: list[list[int]], from_end: bool = False) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        j = -1 - i if from_end else i
        if any(s[j] != seqs[0][j] for s in seqs):
            return i
    return n


def bos_id(tokenizer) -> int:
    """nanochat prepends BOS to every prompt; models without a BOS (GPT-2's is its EOS) use their EOS."""
    tid = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if tid is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to start prompts with")
    return tid


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Plain text -> ids with BOS in front (no other special tokens, as nanochat's tokenizer(prompts, prepend=bos))."""
    bos = bos_id(tokenizer)
    return [[bos] + ids for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


@dataclass
class Example:
    """One scored item: its sequences and, per sequence, the [start, end) span of the continuation."""
    task_type: str
    tokens: list[list[int]]
    starts: list[int]
    ends: list[int]
    gold: int | None


def prepare_example(idx: int, rows: list[dict], task: CoreTask, tokenizer, max_seq_len: int | None) -> Example:
    item = rows[idx]
    fewshot = []
    if task.num_fewshot > 0:
        rng = random.Random(FEWSHOT_SEED + idx)
        fewshot = [rows[i] for i in rng.sample([i for i in range(len(rows)) if i != idx], task.num_fewshot)]
    if task.task_type == "multiple_choice":
        tokens = encode(tokenizer, render_mc(item, task.delimiter, fewshot))
        start = _common_length(tokens)
        starts, ends = [start] * len(tokens), [len(t) for t in tokens]
    elif task.task_type == "schema":
        tokens = encode(tokenizer, render_schema(item, task.delimiter, fewshot))
        suffix = _common_length(tokens, from_end=True)
        ends = [len(t) for t in tokens]
        starts = [e - suffix for e in ends]
    else:
        without, with_ = encode(tokenizer, render_lm(item, task.delimiter, fewshot))
        if not (len(without) < len(with_) and with_[:len(without)] == without):
            raise ValueError(f"{task.label} row {idx}: the prompt without the continuation does not tokenize as a "
                             f"prefix of the prompt with it")
        tokens, starts, ends = [with_], [len(without)], [len(with_)]
    if max_seq_len is not None:  # keep the last max_seq_len tokens, shifting the spans (nanochat's cropping)
        crop = [max(0, len(t) - max_seq_len) for t in tokens]
        tokens = [t[c:] for t, c in zip(tokens, crop)]
        starts = [s - c for s, c in zip(starts, crop)]
        ends = [e - c for e, c in zip(ends, crop)]
    return Example(task.task_type, tokens, starts, ends, item.get("gold"))


# ----------------------------------------------------------------------------- scoring


def context_length(config) -> int | None:
    """The context a model config declares (its training length; GPT-2: 1024); None = none declared."""
    for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def model_max_seq_len(model) -> int | None:
    """The model's declared context (see `context_length`; a multimodal model's text part); None = no limit known."""
    config = getattr(model, "config", None)
    return context_length(config.get_text_config() if hasattr(config, "get_text_config") else config)


def prompt_crop_length(config) -> int | None:
    """How many last tokens of a CORE prompt the model gets; None = the whole prompt.

    nanochat's own GPT declares no `max_seq_len`, so core_eval forwards long few-shot prompts (BoolQ) whole.
    RoPE rotates any position, so RoPE models (any config with `rope_parameters`) go uncropped too and a
    converted nanochat checkpoint scores nanochat's numbers; learned positions (GPT-2, OPT) have no embedding
    past their table, and those and models we cannot tell about keep their last tokens (GPT-2: 1024).
    """
    rope = isinstance(getattr(config, "rope_parameters", None), dict)
    return None if rope and getattr(config, "n_positions", None) is None else context_length(config)


def parse_max_context(value: str) -> str | int:
    """`--max-context`: "auto" (`prompt_crop_length`'s rule), "trained" (the model's context) or tokens > 0."""
    if value in ("auto", "trained"):
        return value
    if value.isdigit() and int(value) > 0:
        return int(value)
    import argparse  # the flag's parser: argparse prints this message as the one-line error

    raise argparse.ArgumentTypeError(f"must be auto, trained or a number of tokens > 0, got {value!r}")


def crop_length(model, max_context: str | int) -> int | None:
    """Tokens of a CORE prompt the model sees (None = all), for a `--max-context` value."""
    config = getattr(model, "config", None)
    if max_context == "auto":
        return prompt_crop_length(config)
    if max_context == "trained":
        return context_length(config)
    return int(max_context)


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


@torch.no_grad()
def sequence_scores(model, seqs: list[list[int]], spans: list[tuple[int, int]], pad_id: int):
    """For each sequence: (mean loss over its span [s, e), whether greedy argmax reproduces it). Rows are
    right-padded with no attention mask, as nanochat does: a causal model never sees a real token's padding."""
    ids = torch.full((len(seqs), max(len(s) for s in seqs)), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    out = model(input_ids=ids.to(model_device(model)))
    logits = out.logits if hasattr(out, "logits") else out
    results = []
    for i, (s, e) in enumerate(spans):
        lg = logits[i, s - 1:e - 1].float()
        target = ids[i, s:e].to(lg.device)
        loss = F.cross_entropy(lg, target, reduction="mean").item()
        results.append((loss, bool((lg.argmax(-1) == target).all().item())))
    return results


def score_examples(model, examples: list[Example], pad_id: int, batch_tokens: int = BATCH_TOKENS,
                   progress: bool = True, desc: str = "") -> list[bool]:
    """Correctness per example, packing whole examples into padded batches of about `batch_tokens`."""
    correct: list[bool] = []
    bar = tqdm(total=len(examples), desc=desc, disable=not progress, leave=False)
    i = 0
    while i < len(examples):
        seqs, spans, owners, width = [], [], [], 0
        while i < len(examples):
            ex = examples[i]
            new_width = max(width, *(len(t) for t in ex.tokens))
            if seqs and (len(seqs) + len(ex.tokens)) * new_width > batch_tokens:
                break
            seqs += ex.tokens
            spans += list(zip(ex.starts, ex.ends))
            owners.append(i)
            width = new_width
            i += 1
        scores = sequence_scores(model, seqs, spans, pad_id)
        k = 0
        for j in owners:
            ex = examples[j]
            mine = scores[k:k + len(ex.tokens)]
            k += len(ex.tokens)
            if ex.task_type == "language_modeling":
                correct.append(mine[0][1])
            else:
                losses = [loss for loss, _ in mine]
                correct.append(losses.index(min(losses)) == ex.gold)
        bar.update(len(owners))
    bar.close()
    return correct


def evaluate_task(model, tokenizer, rows: list[dict], task: CoreTask, batch_tokens: int = BATCH_TOKENS,
                  max_seq_len: int | None = -1, progress: bool = True) -> list[bool]:
    """Per-row correctness of one CORE task. `max_seq_len`: -1 = `prompt_crop_length`'s rule, None = never crop,
    N = keep the last N."""
    if max_seq_len == -1:
        max_seq_len = crop_length(model, "auto")
    if task.num_fewshot >= len(rows):
        raise ValueError(f"{task.label}: {task.num_fewshot}-shot needs more than {len(rows)} rows; "
                         "raise --max-per-task")
    examples = [prepare_example(i, rows, task, tokenizer, max_seq_len) for i in range(len(rows))]
    return score_examples(model, examples, bos_id(tokenizer), batch_tokens, progress, desc=task.label)


def evaluate_core(model, tokenizer, bundle: str | os.PathLike | None = None, max_per_task: int = -1,
                  labels: list[str] | None = None, batch_tokens: int = BATCH_TOKENS, progress: bool = True,
                  max_context: str | int = "auto") -> dict:
    """{"tasks": {label: {accuracy, centered, n, shots, type}}, "core": mean centered}. `max_context`: "auto"
    scores as nanochat does; "trained" crops every prompt to the training length (a fast CPU run)."""
    bundle = resolve_bundle(bundle)
    tasks = load_tasks(bundle, labels)
    results, was_training, crop = {}, getattr(model, "training", False), crop_length(model, max_context)
    model.eval()
    try:
        for task in tqdm(tasks, desc="CORE", disable=not progress):
            rows = load_task_rows(bundle, task, max_per_task)
            correct = evaluate_task(model, tokenizer, rows, task, batch_tokens, crop, progress)
            acc = sum(correct) / len(correct)
            results[task.label] = {"accuracy": acc, "centered": centered(acc, task.random_baseline), "n": len(correct),
                                   "shots": task.num_fewshot, "type": task.task_type}
    finally:
        model.train(was_training)
    core = sum(r["centered"] for r in results.values()) / len(results) if results else float("nan")
    return {"tasks": results, "core": core}
