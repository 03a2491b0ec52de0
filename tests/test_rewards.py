"""Rewards for RL: answer extraction on GSM8K-schema rows and TRL's reward-function signature."""

import pytest

from nanochat_hf.rewards import (
    REWARD_FUNCS,
    completion_text,
    correctness_reward,
    correctness_reward_last_number,
    extract_answer,
    format_reward,
)

# Rows in GSM8K's schema (`question`, `answer` with <<calculator>> annotations and `#### N`).
GSM8K_ROWS = [
    {"question": "A baker sells 48 muffins in the morning and half as many in the afternoon. How many in total?",
     "answer": "In the afternoon he sells 48/2 = <<48/2=24>>24 muffins.\nIn total he sells 48+24 = "
               "<<48+24=72>>72.\n#### 72"},
    {"question": "Tom earns $12 an hour and works 50 minutes. How much does he earn?",
     "answer": "Per minute he earns 12/60 = $<<12/60=0.2>>0.2.\nFor 50 minutes: 0.2 x 50 = "
               "$<<0.2*50=10>>10.\n#### 10"},
    {"question": "A house costs $1,250,000 and the price falls by $50,000. What is the new price?",
     "answer": "1,250,000 - 50,000 = <<1250000-50000=1200000>>1,200,000\n#### 1,200,000"},
    {"question": "The temperature is 5 degrees and drops 12 degrees. What is it now?",
     "answer": "5 - 12 = <<5-12=-7>>-7\n#### -7"},
    {"question": "A rope of 7.5 m is cut in 3 equal pieces. How long is each?",
     "answer": "7.5 / 3 = <<7.5/3=2.5>>2.5\n#### 2.5"},
]


@pytest.mark.parametrize("row,expected", zip(GSM8K_ROWS, ["72", "10", "1200000", "-7", "2.5"]))
def test_extract_answer_from_gsm8k_solutions(row, expected):
    assert extract_answer(row["answer"]) == expected


def test_extract_answer_marker_beats_other_numbers_and_fallback_is_opt_in():
    text = "First 3 + 4 = 7, then 7 * 2 = 14.\n#### 14\nfinally 99"
    assert extract_answer(text) == "14"  # the number after ####, not the last one
    assert extract_answer("the answer is 42") is None
    assert extract_answer("the answer is 42, or 43.", fallback_last_number=True) == "43"
    assert extract_answer("no numbers here", fallback_last_number=True) is None
    assert extract_answer("#### 1,000") == "1000"


def test_correctness_reward_trl_signature_on_standard_and_conversational_completions():
    answers = [r["answer"] for r in GSM8K_ROWS[:3]]
    prompts = [[{"role": "user", "content": r["question"]}] for r in GSM8K_ROWS[:3]]
    conversational = [
        [{"role": "assistant", "content": "48/2 = 24, 48 + 24 = 72\n#### 72"}],  # right
        [{"role": "assistant", "content": "he earns 12 dollars\n#### 12"}],  # wrong
        [{"role": "assistant", "content": [{"type": "text", "text": "#### 1,200,000"}]}],  # right, list of parts
    ]
    # TRL passes every dataset column (and more) as keyword arguments.
    rewards = correctness_reward(prompts=prompts, completions=conversational, completion_ids=[[1]] * 3,
                                 answer=answers, question=[r["question"] for r in GSM8K_ROWS[:3]])
    assert rewards == [1.0, 0.0, 1.0]
    plain = ["#### 72", "the result is 10", "1200000"]
    assert correctness_reward(completions=plain, answer=answers) == [1.0, 0.0, 0.0]
    assert correctness_reward_last_number(completions=plain, answer=answers) == [1.0, 1.0, 1.0]


def test_reward_on_a_completion_with_tool_call_text():
    # What TRL decodes from a rollout with the calculator (special tokens skipped).
    completion = "Let me use the calculator: 37+45 82\n\nSo 37 + 45 = 82.\n\n#### 82"
    assert correctness_reward(completions=[completion], answer=["#### 82"]) == [1.0]
    assert correctness_reward(completions=[completion], answer=["#### 83"]) == [0.0]


def test_format_reward():
    assert format_reward(completions=["#### 5", "5",
                                      [{"role": "assistant", "content": "x #### -2.5"}]]) == [1.0, 0.0, 1.0]


def test_completion_text_and_registry():
    assert completion_text([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]) == "ab"
    assert set(REWARD_FUNCS) == {"correctness", "correctness_last_number", "format"}


def test_reward_needs_one_answer_per_completion():
    with pytest.raises(ValueError):
        correctness_reward(completions=["#### 1", "#### 2"], answer=["#### 1"])


# Replies and whether nanochat's GSM8K rule counts them right for the reference "#### 18".
VERDICTS = [
    ("so 18\n#### 18", True),
    ("#### 18 dollars", True),
    ("#### 1,8", True),          # commas dropped, as GSM8K's official grading
    ("#### 18.0", False),        # a string match: 18.0 is not 18
    ("#### 18.", False),         # the trailing dot is part of the answer
    ("#### $18", False),         # nothing numeric right after the marker
    ("####18", False),           # nanochat's marker has a space
    ("the answer is 18", False),  # no marker
    ("#### 17\n#### 18", False),  # the first marker decides
]


def test_reward_pass_at_k_eval_and_lighteval_decide_correct_the_same_way(monkeypatch):
    """One rule: the RL reward, pass@k (which calls the reward), `nanochat-hf eval` and the lighteval metric."""
    import importlib
    from pathlib import Path
    from types import SimpleNamespace

    from nanochat_hf.evaluation import chat_tasks

    # the task module lists the CORE bundle's tasks on import: point it at the test fixture (offline)
    monkeypatch.setenv("NANOCHAT_HF_EVAL_BUNDLE", str(Path(__file__).parent / "fixtures" / "eval" / "eval_bundle"))
    lighteval_tasks = importlib.import_module("nanochat_hf.evaluation.lighteval_tasks")

    reference = "9 + 9 = <<9+9=18>>18\n#### 18"
    conv = {"messages": [{"role": "user", "content": "What is 9 + 9?"},
                         {"role": "assistant", "content": [{"type": "text", "text": reference}]}]}
    monkeypatch.setattr(lighteval_tasks, "_chat_rows", lambda task: [conv])
    metric = lighteval_tasks.NanochatGenerativeScore()
    replies = [reply for reply, _ in VERDICTS]
    expected = [float(ok) for _, ok in VERDICTS]
    assert correctness_reward(completions=replies, answer=[reference] * len(replies)) == expected
    assert [float(chat_tasks.score_completion("GSM8K", conv, r)) for r in replies] == expected
    docs = [SimpleNamespace(specific={"task": "GSM8K", "row": 0}) for _ in replies]
    assert [metric.compute(d, SimpleNamespace(text=[r])) for d, r in zip(docs, replies)] == expected
