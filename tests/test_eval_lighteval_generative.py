"""GSM8K, HumanEval and SpellingBee through lighteval's own CLI with our Engine backend: nanochat-hf eval's numbers."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_eval_cli import BUNDLE, CHAT, run_lighteval, tiny_model_dir  # noqa: F401  (tiny_model_dir is a fixture)

from nanochat_hf.evaluation import chat_tasks, core, run
from nanochat_hf.modeling import pop_cache

ROWS, NEW_TOKENS = 4, 24  # a few rows, short replies: the parity is what is tested, not the (random) model
GENERATIVE = {"gsm8k": "GSM8K", "humaneval": "HumanEval", "spellingbee": "SpellingBee"}


def details(out_dir: Path, task: str) -> list[dict]:
    """lighteval's --save-details rows of one task (doc and model response as plain Python)."""
    import pandas as pd

    path = next((out_dir / "details").rglob(f"details_{task}|0_*.parquet"))
    return [{"specific": r["doc"]["specific"], "text": list(r["model_response"]["text"]),
             "logprobs": list(r["model_response"]["logprobs"])} for _, r in pd.read_parquet(path).iterrows()]


@pytest.mark.slow
def test_custom_backend_gives_the_same_replies_and_scores(tiny_model_dir, tmp_path):  # noqa: F811
    """`lighteval custom` with our backend: every reply, token for token, and every accuracy equal
    `nanochat-hf eval`'s (generative tasks, a ChatCORE letter task, CORE multiple choice and LM)."""
    core_labels = ["copa", "lambada_openai"]
    tasks = ",".join([*(f"chat_{t}|0" for t in [*GENERATIVE, "arc_easy"]),
                      *(f"core_{label}|0" for label in core_labels)])
    results, output = run_lighteval(tiny_model_dir, tmp_path, tasks, backend="custom", extra_args=["--save-details"],
                                    NANOCHAT_HF_CHAT_DATA=str(CHAT), NANOCHAT_HF_EVAL_MAX_PER_TASK=str(ROWS),
                                    NANOCHAT_HF_EVAL_MAX_NEW_TOKENS=str(NEW_TOKENS))
    assert "was not scored as its single token" not in output
    model, tok = run.load_model(str(tiny_model_dir), "cpu")
    for name, task in GENERATIVE.items():
        convs = chat_tasks.load_conversations(task, str(CHAT), ROWS)
        ours = chat_tasks.evaluate_chat_task(task, model, tok, str(CHAT), ROWS,
                                             max_new_tokens=NEW_TOKENS, progress=False)
        assert results[f"chat_{name}|0"]["acc"] == pytest.approx(ours["accuracy"]), name
        # The replies themselves, row by row: a backend that prompted or decoded differently shows here even
        # when a random model scores 0 both ways (test_a_wrong_prompt_changes_the_replies: it would).
        want = chat_tasks.generate_completions(model, tok, convs, NEW_TOKENS, progress=False)
        rows = details(tmp_path / "out", f"chat_{name}")
        got = {int(r["specific"]["row"]): r["text"] for r in rows}
        assert sorted(got) == list(range(len(convs))) and any(want), name
        assert [got[i] for i in range(len(convs))] == [[w] for w in want], name
    # ARC through the backend's loglikelihood: the same letter as nanochat's argmax on every row, same accuracy
    arc = chat_tasks.evaluate_chat_task("ARC-Easy", model, tok, str(CHAT), ROWS, progress=False)
    assert results["chat_arc_easy|0"]["acc"] == pytest.approx(arc["accuracy"])
    for r in details(tmp_path / "out", "chat_arc_easy"):
        prompt = [int(t) for t in r["specific"]["prompt_ids"]]
        letter_ids = [int(t) for t in r["specific"]["letter_ids"]]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt])).logits[0, -1, letter_ids]
        assert int(np.argmax(r["logprobs"])) == int(logits.argmax())
    ours = core.evaluate_core(model, tok, BUNDLE, max_per_task=ROWS, labels=core_labels, progress=False)["tasks"]
    for label in core_labels:
        assert results[f"core_{label}|0"]["acc"] == pytest.approx(ours[label]["accuracy"]), label


@pytest.fixture(scope="module")
def backend(tiny_model_dir):  # noqa: F811
    from lighteval.models.custom.custom_model import CustomModelConfig

    from nanochat_hf.evaluation.lighteval_model import NanochatEngineModel

    return NanochatEngineModel(CustomModelConfig(model_name=str(tiny_model_dir), model_definition_file_path="-"))


def _doc(task_name: str, idx: int):
    from nanochat_hf.evaluation import lighteval_tasks

    return lighteval_tasks.chat_generative_prompt_fn({"idx": idx}, f"{task_name}|0")


@pytest.fixture
def offline_rows(monkeypatch, tiny_tokenizer_dir):
    monkeypatch.setenv("NANOCHAT_HF_EVAL_BUNDLE", str(BUNDLE))  # the module builds its task table on import
    from nanochat_hf.evaluation import lighteval_tasks

    monkeypatch.setenv("NANOCHAT_HF_CHAT_DATA", str(CHAT))
    monkeypatch.setenv("NANOCHAT_HF_EVAL_MAX_PER_TASK", "3")
    monkeypatch.setenv("NANOCHAT_HF_EVAL_MAX_NEW_TOKENS", "16")
    monkeypatch.setenv("NANOCHAT_HF_EVAL_TOKENIZER", str(tiny_tokenizer_dir))
    for cached in (lighteval_tasks._chat_rows, lighteval_tasks._tokenizer):
        cached.cache_clear()
    yield lighteval_tasks
    for cached in (lighteval_tasks._chat_rows, lighteval_tasks._tokenizer):
        cached.cache_clear()


def test_generative_metric_scores_right_and_wrong_replies(offline_rows):
    """The sample metric is chat_tasks' scoring: a correct reply scores 1, a wrong one 0 (HumanEval runs its tests)."""
    from lighteval.models.model_output import ModelResponse

    metric = offline_rows.NanochatGenerativeScore()
    score = lambda doc, text: metric.compute(doc, ModelResponse(text=[text]))  # noqa: E731
    gsm = _doc("chat_gsm8k", 0)
    assert gsm.choices[0] and score(gsm, f"so the answer is\n#### {gsm.choices[0]}") == 1.0
    assert score(gsm, "#### 123456789") == 0.0 and score(gsm, "no number") == 0.0
    bee = _doc("chat_spellingbee", 1)
    assert score(bee, f"#### {bee.choices[0]}") == 1.0 and score(bee, "#### -1") == 0.0
    he = _doc("chat_humaneval", 2)
    conv = offline_rows._chat_rows("HumanEval")[2]
    solution = conv["messages"][1]["content"]  # the prompt + the canonical solution
    assert score(he, f"```python\n{solution}\n```") == 1.0
    assert score(he, f"```python\n{conv['messages'][0]['content']}\n    return None\n```") == 0.0
    # the prompt tokens the backend generates from are nanochat's rendering
    from nanochat_hf.chat_format import render_for_completion

    assert gsm.specific["prompt_ids"] == render_for_completion(offline_rows._tokenizer(),
                                                               offline_rows._chat_rows("GSM8K")[0]["messages"])


def test_backend_gives_an_empty_reply_to_a_prompt_longer_than_the_context(backend, offline_rows):
    from lighteval.tasks.requests import Doc

    fits = _doc("chat_gsm8k", 0)
    too_long = Doc(query="x", choices=[""], gold_index=0, generation_size=8,
                   specific={"prompt_ids": fits.specific["prompt_ids"] * 40})
    short, long = backend.greedy_until([fits, too_long])
    assert long.text == [""] and short.output_tokens[0]
    want, _ = backend.engine.generate_batch(fits.specific["prompt_ids"],
                                            max_tokens=fits.generation_size, temperature=0.0)
    assert short.output_tokens[0] == want[0][len(fits.specific["prompt_ids"]):]
    assert json.dumps(short.text)  # plain strings lighteval can save


def test_a_wrong_prompt_changes_the_replies(backend, offline_rows, tiny_model_dir):  # noqa: F811
    """The reply comparison of the CLI test has teeth: the backend's replies equal nanochat-hf eval's, and a
    backend that lost one prompt token (here: <|assistant_start|>) would give other replies, though both score 0."""
    model, tok = run.load_model(str(tiny_model_dir), "cpu")
    for name, task in GENERATIVE.items():
        convs = offline_rows._chat_rows(task)
        docs = [_doc(f"chat_{name}", i) for i in range(len(convs))]
        want = chat_tasks.generate_completions(model, tok, convs, 16, progress=False)
        assert [r.text for r in backend.greedy_until(docs)] == [[w] for w in want], name
        for doc in docs:
            doc.specific = {**doc.specific, "prompt_ids": doc.specific["prompt_ids"][:-1]}
        broken = [r.text[0] for r in backend.greedy_until(docs)]
        assert any(b != w for b, w in zip(broken, want) if w), name


class ReplyScript(torch.nn.Module):
    """A one-row causal LM that, after the prompt, says `plan` token by token (whatever the forced tokens are).

    It speaks the Cache API (one KV update per layer per call) like a real model, so the Engine runs it as is.
    """

    def __init__(self, prompt_len: int, plan: list[int], vocab: int):
        super().__init__()
        self.prompt_len, self.plan, self.vocab, self.seen = prompt_len, plan, vocab, 0
        self.config = type("Cfg", (), {"num_hidden_layers": 1, "max_position_embeddings": 512})()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, cache=None, logits_to_keep=0, **kwargs):
        cache = pop_cache(cache, kwargs)
        b, t = input_ids.shape
        cache.update(torch.zeros(b, 1, t, 4), torch.zeros(b, 1, t, 4), 0)
        self.seen += t
        logits = torch.full((b, t, self.vocab), -10.0)
        logits[:, :, self.plan[min(self.seen - self.prompt_len, len(self.plan) - 1)]] = 10.0
        return type("Out", (), {"logits": logits[:, -logits_to_keep:] if logits_to_keep else logits})()


def test_backend_runs_the_calculator_and_a_right_reply_scores_one(offline_rows, tiny_model_dir, monkeypatch):  # noqa: F811
    """Through the backend and the task's metric: the tool call's result is forced into the reply, and the
    reply '#### 72' to Natalia's question scores 1 (the CLI test only sees a random model's wrong replies)."""
    from lighteval.models.custom.custom_model import CustomModelConfig

    from nanochat_hf.engine import Engine
    from nanochat_hf.evaluation import lighteval_model

    tok = offline_rows._tokenizer()
    row = [chat_tasks.reference_answer(c) for c in offline_rows._chat_rows("GSM8K")].index("72")
    doc = _doc("chat_gsm8k", row)
    doc.generation_size = 64  # the fixture's 16 new tokens are too few for this reply
    sp, text = tok.convert_tokens_to_ids, lambda s: tok.encode(s, add_special_tokens=False)
    forced = [sp("<|output_start|>"), *text("72"), sp("<|output_end|>")]
    plan = [sp("<|python_start|>"), *text("48+24"), sp("<|python_end|>"), *[0] * len(forced), *text("#### 72"),
            sp("<|assistant_end|>")]
    scripted = Engine(ReplyScript(len(doc.specific["prompt_ids"]), plan, len(tok)), tok)
    monkeypatch.setattr(lighteval_model, "load_engine", lambda name: scripted)
    backend = lighteval_model.NanochatEngineModel(CustomModelConfig(model_name=str(tiny_model_dir),
                                                                    model_definition_file_path="-"))
    (reply,) = backend.greedy_until([doc])
    assert reply.text == ["<|python_start|>48+24<|python_end|><|output_start|>72<|output_end|>#### 72"]
    assert offline_rows.NanochatGenerativeScore().compute(doc, reply) == 1.0


def test_lighteval_task_names_are_eval_task_names(offline_rows, tmp_path, monkeypatch):
    """Every lighteval task name is a name `nanochat-hf eval --tasks` takes, for the same task, and the
    module's own lookups take any spelling of it, as --tasks does."""
    monkeypatch.setenv("NANOCHAT_HF_HOME", str(tmp_path))  # the index datasets the table writes
    lt = offline_rows
    names = [cfg.name for cfg in lt.build_tasks() + lt.build_chat_tasks()]
    assert {"core_copa", "chat_gsm8k", "chat_arc_easy", "chat_mmlu"} <= set(names)
    resolved = {n: run.resolve_task(n, core.known_labels(BUNDLE)) for n in names}
    assert {n: r for n, r in resolved.items() if n.startswith("core_")} == \
        {f"core_{t.label}": ("core", t.label) for t in core.load_tasks(BUNDLE)}
    assert {n: r for n, r in resolved.items() if n.startswith("chat_")} == \
        {"chat_arc_easy": ("chat", "ARC-Easy"), "chat_arc_challenge": ("chat", "ARC-Challenge"),
         "chat_mmlu": ("chat", "MMLU"), "chat_gsm8k": ("chat", "GSM8K"), "chat_humaneval": ("chat", "HumanEval"),
         "chat_spellingbee": ("chat", "SpellingBee")}
    assert [lt._task_of(f"{n}|0") for n in ("chat_GSM8K", "chat_arc-easy", "CHAT_HumanEval", "CORE_Copa")] == \
        ["GSM8K", "ARC-Easy", "HumanEval", "copa"]
    assert lt.chat_generative_prompt_fn({"idx": 1}, "chat_GSM8K|0").specific == \
        lt.chat_generative_prompt_fn({"idx": 1}, "chat_gsm8k|0").specific


def test_a_wrong_bundle_folder_names_the_environment_variable(monkeypatch, tmp_path):
    """lighteval has no --bundle flag: the one-line error names the variable the task module reads."""
    monkeypatch.setenv("NANOCHAT_HF_EVAL_BUNDLE", str(BUNDLE))
    from nanochat_hf.evaluation import lighteval_tasks

    monkeypatch.setenv("NANOCHAT_HF_EVAL_BUNDLE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} is not a CORE eval bundle.*NANOCHAT_HF_EVAL_BUNDLE=DIR"):
        lighteval_tasks._bundle()
