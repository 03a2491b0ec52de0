"""Verifiable rewards for RL on GSM8K-style problems, as TRL reward functions.

    from nanochat_hf.rewards import correctness_reward, format_reward
    GRPOTrainer(..., reward_funcs=[correctness_reward, format_reward])

TRL calls a reward function with `completions` and every dataset column as keyword arguments (ours carry
GSM8K's `answer`, a worked solution ending in `#### 72`, read exactly as the model's completion). Correctness
is nanochat's GSM8K rule, decided in one place (`is_correct`) for the RL reward, pass@k, `nanochat-hf eval`
and the lighteval task: the number after `#### `, commas removed, equal as a string to the reference's (so
"18.0" does not count for 18, as in GSM8K's official grading). The opt-in `correctness_last_number` also
takes the last number of a reply that has no `####` (for models never taught the marker).
"""

from __future__ import annotations

import re

# nanochat's GSM8K marker (tasks/gsm8k.py): the first "#### " followed by digits, dots and commas.
ANSWER_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
# Any number in free text (for the "last number" fallback).
NUMBER_RE = re.compile(r"-?[0-9][0-9,]*(?:\.[0-9]+)?|-?\.[0-9]+")


def completion_text(completion) -> str:
    """TRL passes a string (standard prompts) or a list of messages (conversational prompts)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    texts = []
    for message in completion:
        content = message.get("content", "") if isinstance(message, dict) else message
        if isinstance(content, list):  # nanochat's list of parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        texts.append(str(content))
    return "".join(texts)


def extract_answer(text: str, fallback_last_number: bool = False) -> str | None:
    """The final answer of a solution: the number after `####`, else (optionally) the last number.

    >>> extract_answer("3 + 4 = <<3+4=7>>7\\n#### 7")
    '7'
    >>> extract_answer("so it costs $1,200 in total", fallback_last_number=True)
    '1200'
    """
    match = ANSWER_RE.search(text)
    if match:
        return match.group(1).strip().replace(",", "")
    if fallback_last_number:
        numbers = NUMBER_RE.findall(text)
        if numbers:
            return numbers[-1].replace(",", "")
    return None


def is_correct(completion: str, reference: str, fallback_last_number: bool = False) -> bool:
    """Does the reply's answer equal the reference solution's? The one rule every GSM8K-style score uses."""
    got = extract_answer(completion, fallback_last_number=fallback_last_number)
    return got is not None and got == extract_answer(reference, fallback_last_number=True)


def correctness_reward(completions, answer, fallback_last_number: bool = False, **kwargs) -> list[float]:
    """1.0 when the completion's final number equals the reference's (`answer` column), else 0.0."""
    return [float(is_correct(completion_text(c), reference, fallback_last_number))
            for c, reference in zip(completions, answer, strict=True)]


def correctness_reward_last_number(completions, answer, **kwargs) -> list[float]:
    """`correctness_reward` that also accepts the last number of the completion as its answer."""
    return correctness_reward(completions, answer, fallback_last_number=True)


def format_reward(completions, **kwargs) -> list[float]:
    """1.0 when the completion states its answer GSM8K's way (`#### <number>`), else 0.0: weighted small next to
    correctness, it only shapes the format of models that have not learnt it yet."""
    return [1.0 if ANSWER_RE.search(completion_text(c)) else 0.0 for c in completions]


# Names the recipe can use in `reward_funcs` (the same names TRL logs as `rewards/<name>/mean`).
REWARD_FUNCS = {"correctness": correctness_reward, "correctness_last_number": correctness_reward_last_number,
                "format": format_reward}
