"""CORE as lighteval custom tasks, giving exactly `nanochat-hf eval`'s numbers.

    NANOCHAT_HF_EVAL_BUNDLE=eval_bundle/ lighteval accelerate \
        "model_name=out/base,trust_remote_code=True,override_chat_template=False,batch_size=8" \
        "core_copa|0,core_winograd|0,core_lambada_openai|0" \
        --custom-tasks nanochat_hf/evaluation/lighteval_tasks.py

Task names are `core_<label>` (always 0 lighteval shots: nanochat's few-shot examples are already in the prompt)
and `chat_<task>`; `nanochat-hf eval --tasks` takes them too. lighteval cuts inputs to its `max_length` (default:
the model's context); add `max_length=N` to the model arguments to score long prompts whole.

Why custom metrics: lighteval tokenizes context and continuation separately and sums log-probs, while nanochat
tokenizes whole prompts, finds the continuation span in token space and compares *mean* losses. So each request
carries nanochat's own token sequences: multiple choice / schema ask for the full prompts and, for each, the part
before its span (the difference is the span's log-prob); language modelling generates greedily exactly the span's
length. ChatCORE's letter tasks (`chat_arc_easy`, `chat_mmlu`, ...) score each one-token letter after the chat prompt,
whose argmax is nanochat's; the generative ones (`chat_gsm8k`, `chat_humaneval`, `chat_spellingbee`) call the
calculator mid-reply, which lighteval's stock backends do not run, so evaluate them with our Engine backend:

    lighteval custom out/sft nanochat_hf/evaluation/lighteval_model.py "chat_gsm8k|0,chat_spellingbee|0" \
        --custom-tasks nanochat_hf/evaluation/lighteval_tasks.py

Environment: NANOCHAT_HF_EVAL_BUNDLE (bundle folder), NANOCHAT_HF_CHAT_DATA (folder of chat .jsonl; default: the
Hub), NANOCHAT_HF_EVAL_TOKENIZER (default: the command line's model), NANOCHAT_HF_EVAL_MAX_PER_TASK (--max-per-task),
NANOCHAT_HF_EVAL_MAX_NEW_TOKENS (reply length of the generative tasks; nanochat's 512).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
from lighteval.metrics.metrics_sample import SampleLevelComputation
from lighteval.metrics.utils.metric_utils import SampleLevelMetric
from lighteval.tasks.lighteval_task import LightevalTaskConfig
from lighteval.tasks.requests import Doc, SamplingMethod

from nanochat_hf.dataset import data_home
from nanochat_hf.evaluation import chat_tasks, core, run

logger = logging.getLogger(__name__)
TASK_PREFIX = "core_"


def _bundle() -> Path:
    try:
        return core.resolve_bundle(os.environ.get("NANOCHAT_HF_EVAL_BUNDLE") or None)
    except FileNotFoundError as err:  # lighteval has no --bundle: the fix is the environment variable
        raise FileNotFoundError(f"{err}; under lighteval set NANOCHAT_HF_EVAL_BUNDLE=DIR instead") from None


def _max_per_task() -> int:
    return int(os.environ.get("NANOCHAT_HF_EVAL_MAX_PER_TASK", "-1"))


def _model_arg(key: str, value: str = r"[^,]+") -> str | None:
    """The value of `key=` in lighteval's model arguments on the command line, or None."""
    m = next((m for m in (re.search(rf"(?:^|,){key}=({value})", a) for a in sys.argv) if m), None)
    return m.group(1) if m else None


def _tokenizer_source() -> str:
    """The tokenizer: $NANOCHAT_HF_EVAL_TOKENIZER, else the model_name= of lighteval's model argument."""
    source = os.environ.get("NANOCHAT_HF_EVAL_TOKENIZER") or _model_arg("model_name")
    if source:
        return source
    if "custom" in sys.argv[1:3]:  # `lighteval custom MODEL lighteval_model.py TASKS`
        i = sys.argv.index("custom")
        if len(sys.argv) > i + 1:
            return sys.argv[i + 1]
    raise ValueError("set NANOCHAT_HF_EVAL_TOKENIZER to the model's folder or Hub id (no model_name= "
                     "on the command line)")


@lru_cache(maxsize=1)
def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_tokenizer_source(), trust_remote_code=True)


@lru_cache(maxsize=None)
def _task_rows(label: str) -> tuple[core.CoreTask, list[dict]]:
    bundle = _bundle()
    task = core.load_tasks(bundle, [label])[0]
    return task, core.load_task_rows(bundle, task, _max_per_task())


@lru_cache(maxsize=None)
def _prompt_crop(model: str) -> int | None:
    """`core.prompt_crop_length` for the model, within lighteval's own `max_length` (it left-cuts longer inputs
    itself, which would cut a choice's full prompt and its prefix by different amounts: crop them alike first)."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(model, trust_remote_code=True)
    except (OSError, ValueError):
        return None
    crop, max_length = core.prompt_crop_length(cfg), _model_arg("max_length", r"\d+")
    limit = int(max_length) if max_length else core.context_length(cfg)  # lighteval's default: the config's context
    if limit is not None and (crop is None or crop > limit):
        if crop is None:
            logger.warning("CORE prompts are cropped to lighteval's max_length %d; nanochat forwards them whole: "
                           "add max_length=N (e.g. 10x the context) to the model arguments", limit)
        crop = limit
    return crop


def _context_prefix(tok) -> str:
    """What lighteval feeds before our tokens: "" when the tokenizer adds BOS itself, else BOS's text."""
    bos = core.bos_id(tok)
    return "" if tok("", add_special_tokens=True)["input_ids"][:1] == [bos] else tok.convert_ids_to_tokens(bos)


@lru_cache(maxsize=None)
def _task_of(task_name: str) -> str:
    """lighteval's task name (`core_copa|0`, `chat_gsm8k|0`) -> our task (copa, GSM8K), by the rule of --tasks."""
    prefixed = task_name.split("|")[0]
    labels = core.known_labels(_bundle()) if prefixed.lower().startswith(TASK_PREFIX) else ()
    return run.resolve_task(prefixed, labels)[1]


def prompt_fn(line: dict, task_name: str) -> Doc:
    """One nanochat CORE example -> a lighteval Doc carrying nanochat's exact token sequences."""
    task, rows = _task_rows(_task_of(task_name))
    tok = _tokenizer()
    ex = core.prepare_example(int(line["idx"]), rows, task, tok, _prompt_crop(_tokenizer_source()))
    query = _context_prefix(tok)

    def decode(ids):
        return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    specific = {"spans": [e - s for s, e in zip(ex.starts, ex.ends)], "type": task.task_type,
                "tokens": [t[1:] for t in ex.tokens], "starts": [s - 1 for s in ex.starts]}
    if task.task_type == "language_modeling":
        seq, s, e = ex.tokens[0], ex.starts[0], ex.ends[0]
        return Doc(task_name=task_name, query=query + decode(seq[1:s]), choices=[decode(seq[s:e])], gold_index=0,
                   generation_size=e - s, stop_sequences=[], specific=specific)
    fulls = [decode(t[1:]) for t in ex.tokens]
    prefixes = [decode(t[1:s]) for t, s in zip(ex.tokens, ex.starts)]
    return Doc(task_name=task_name, query=query, choices=fulls + prefixes, gold_index=int(ex.gold), specific=specific)


class NanochatMeanLossChoice(SampleLevelComputation):
    """nanochat's MC/schema rule: the option whose continuation span has the lowest mean loss."""

    def compute(self, doc: Doc, model_response, **kwargs) -> float:
        n = len(doc.choices) // 2
        lps, toks = model_response.logprobs, model_response.output_tokens
        losses = []
        for i in range(n):
            full, prefix = [t for t in toks[i] if t >= 0], [t for t in toks[n + i] if t >= 0]  # -1: padding
            if full[:len(prefix)] != prefix:
                logger.warning("%s: prefix tokens differ from the full prompt's; the score may differ from nanochat's",
                               doc.task_name)
            losses.append(-(lps[i] - lps[n + i]) / doc.specific["spans"][i])
        return float(losses.index(min(losses)) == doc.gold_index)


class NanochatGreedyMatch(SampleLevelComputation):
    """nanochat's LM rule: every greedy token of the continuation is right (= greedy generation reproduces it)."""

    def compute(self, doc: Doc, model_response, **kwargs) -> float:
        seq, start = doc.specific["tokens"][0], doc.specific["starts"][0]
        want = seq[start:start + doc.specific["spans"][0]]
        if model_response.output_tokens:
            got = [int(t) for t in model_response.output_tokens[0] if t >= 0][:len(want)]
            return float(got == want)
        return float(model_response.text[0] == doc.choices[0])


core_mc_metric = SampleLevelMetric(metric_name="acc", higher_is_better=True, category=SamplingMethod.LOGPROBS,
                                   sample_level_fn=NanochatMeanLossChoice(), corpus_level_fn=np.mean)
core_lm_metric = SampleLevelMetric(metric_name="acc", higher_is_better=True, category=SamplingMethod.GENERATIVE,
                                   sample_level_fn=NanochatGreedyMatch(), corpus_level_fn=np.mean)


def _index_dataset(label: str, n: int) -> str:
    """lighteval loads a dataset per task; ours is just the row indices (the rows live in the bundle)."""
    folder = data_home() / "lighteval_core" / f"{label}-{n}"
    path = folder / "test.jsonl"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"idx": i}) + "\n" for i in range(n)))
        tmp.replace(path)
    return str(folder)


# ----------------------------------------------------------------------------- ChatCORE letter-choice tasks

CHAT_PREFIX = "chat_"  # + ChatCORE's task name in lower case, '-' as '_' (chat_arc_easy, chat_gsm8k, ...)


@lru_cache(maxsize=None)
def _chat_rows(task: str) -> list[dict]:
    return chat_tasks.load_conversations(task, os.environ.get("NANOCHAT_HF_CHAT_DATA") or None,
                                         None if _max_per_task() < 0 else _max_per_task())


def _chat_query(tok, conv: dict) -> tuple[str, list[int]]:
    """The conversation rendered up to <|assistant_start|>: (lighteval's query text, our exact token ids)."""
    from nanochat_hf.chat_format import render_for_completion

    prompt = render_for_completion(tok, conv["messages"])  # starts with BOS, ends with <|assistant_start|>
    return _context_prefix(tok) + tok.decode(prompt[1:], skip_special_tokens=False,
                                             clean_up_tokenization_spaces=False), prompt


def chat_prompt_fn(line: dict, task_name: str) -> Doc:
    """One ChatCORE multiple-choice conversation -> context up to <|assistant_start|>, the letters as choices."""
    conv = _chat_rows(_task_of(task_name))[int(line["idx"])]
    tok = _tokenizer()
    query, prompt = _chat_query(tok, conv)
    letters = list(conv["letters"])
    return Doc(task_name=task_name, query=query, choices=letters,
               gold_index=letters.index(conv["messages"][-1]["content"]),
               specific={"letter_ids": [tok.convert_tokens_to_ids(letter) for letter in letters],
                         "prompt_ids": prompt})


class NanochatLetterChoice(SampleLevelComputation):
    """nanochat's rule: the allowed letter with the highest logit at the answer position."""

    def compute(self, doc: Doc, model_response, **kwargs) -> float:
        for got, want in zip(model_response.output_tokens or [], doc.specific["letter_ids"]):
            if [t for t in got if t >= 0] != [want]:
                logger.warning("%s: a letter was not scored as its single token; the score may differ from nanochat's",
                               doc.task_name)
                break
        lps = list(model_response.logprobs)
        return float(lps.index(max(lps)) == doc.gold_index)


chat_letter_metric = SampleLevelMetric(metric_name="acc", higher_is_better=True, category=SamplingMethod.LOGPROBS,
                                       sample_level_fn=NanochatLetterChoice(), corpus_level_fn=np.mean)


def _max_new_tokens() -> int:
    return int(os.environ.get("NANOCHAT_HF_EVAL_MAX_NEW_TOKENS", str(chat_tasks.MAX_NEW_TOKENS)))


def chat_generative_prompt_fn(line: dict, task_name: str) -> Doc:
    """One GSM8K / HumanEval / SpellingBee conversation -> the prompt up to <|assistant_start|>, greedy reply;
    `specific["prompt_ids"]` carries our exact tokens, which lighteval_model.py generates from with the calculator."""
    task = _task_of(task_name)
    conv = _chat_rows(task)[int(line["idx"])]
    query, prompt = _chat_query(_tokenizer(), conv)
    return Doc(task_name=task_name, query=query, choices=[chat_tasks.reference_answer(conv) or ""], gold_index=0,
               generation_size=_max_new_tokens(), stop_sequences=[],
               specific={"prompt_ids": prompt, "row": int(line["idx"]), "task": task})


class NanochatGenerativeScore(SampleLevelComputation):
    """nanochat's rule for the reply: the answer after '####' (GSM8K, SpellingBee), or the tests passing in
    our sandbox (HumanEval) -- `chat_tasks.score_completion`, the function `nanochat-hf eval` uses."""

    def compute(self, doc: Doc, model_response, **kwargs) -> float:
        conv = _chat_rows(doc.specific["task"])[doc.specific["row"]]
        completion = model_response.text[0] if model_response.text else ""
        return float(chat_tasks.score_completion(doc.specific["task"], conv, completion))


chat_generative_metric = SampleLevelMetric(metric_name="acc", higher_is_better=True,
                                           category=SamplingMethod.GENERATIVE,
                                           sample_level_fn=NanochatGenerativeScore(), corpus_level_fn=np.mean)


def build_chat_tasks() -> list[LightevalTaskConfig]:
    configs = []
    for task in chat_tasks.CHATCORE_TASKS:
        try:
            n = len(_chat_rows(task))
        except (FileNotFoundError, ValueError, OSError) as err:  # no local file and no Hub: offer the others
            logger.warning("chat task %s unavailable: %s", task, err)
            continue
        name = CHAT_PREFIX + task.lower().replace("-", "_")
        if chat_tasks.BASELINES[task]:  # letter choice
            configs.append(_task_config(name, chat_prompt_fn, _index_dataset(name, n), chat_letter_metric))
        else:
            configs.append(_task_config(name, chat_generative_prompt_fn, _index_dataset(name, n),
                                        chat_generative_metric, _max_new_tokens()))
    return configs


# ----------------------------------------------------------------------------- the table


def build_tasks() -> list[LightevalTaskConfig]:
    bundle, configs = _bundle(), []
    for task in core.load_tasks(bundle):
        if not (bundle / "eval_data" / task.dataset_uri).is_file():
            continue  # an incomplete bundle: offer only what it has
        n = len(_task_rows(task.label)[1])
        lm = task.task_type == "language_modeling"
        configs.append(_task_config(TASK_PREFIX + task.label, prompt_fn, _index_dataset(task.label, n),
                                    core_lm_metric if lm else core_mc_metric, 64 if lm else None))
    return configs


def _task_config(name: str, prompt_function, repo: str, metric, generation_size: int | None = None):
    """A zero-shot lighteval task over one `test` split of row indices (`_index_dataset`)."""
    return LightevalTaskConfig(name=name, prompt_function=prompt_function, hf_repo=repo, hf_subset="default",
                               hf_avail_splits=["test"], evaluation_splits=["test"], few_shots_split=None,
                               few_shots_select=None, metrics=[metric], generation_size=generation_size,
                               stop_sequence=[], version=0)


TASKS_TABLE = build_tasks() + build_chat_tasks()
