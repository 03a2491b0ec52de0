"""Verifiable rewards for RL on GSM8K-style problems, as TRL reward functions.

    from nanochat_hf.rewards import correctness_reward, format_reward
    GRPOTrainer(..., reward_funcs=[correctness_reward, format_reward])

A TRL reward function is called with `prompts`, `completions`, `completion_ids` and every
dataset column as keyword arguments, and returns one float per completion. Our datasets
carry GSM8K's `answer` column (a worked solution ending in `#### 72`), so the reference is
extracted from it exactly as from the model's completion.

nanochat's reward is exact match of the number after `####` (the official GSM8K grading:
commas removed). We compare the numbers numerically (so "72.0" == "72") and, when asked,
fall back to the last number of the completion for models that were never taught `####`.
"""

from __future__ import annotations

import math
import re

# GSM8K's answer marker; the number may carry a sign, commas and a decimal point.
ANSWER_RE = re.compile(r"####\s*\$?\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?|-?\.[0-9]+)")
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


def _clean(number: str) -> str:
    return number.replace(",", "").rstrip(".")


def extract_answer(text: str, fallback_last_number: bool = False) -> str | None:
    """The final answer of a solution: the number after `####`, else (optionally) the last number.

    >>> extract_answer("3 + 4 = <<3+4=7>>7\\n#### 7")
    '7'
    >>> extract_answer("so it costs $1,200 in total", fallback_last_number=True)
    '1200'
    """
    match = ANSWER_RE.search(text)
    if match:
        return _clean(match.group(1))
    if fallback_last_number:
        numbers = NUMBER_RE.findall(text)
        if numbers:
            return _clean(numbers[-1])
    return None


def parse_number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def answers_match(predicted: str | None, reference: str | None) -> bool:
    """Numeric equality of two extracted answers (string equality when either is not a number)."""
    if predicted is None or reference is None:
        return False
    p, r = parse_number(predicted), parse_number(reference)
    if p is None or r is None:
        return predicted.strip() == reference.strip()
    return math.isclose(p, r, rel_tol=0.0, abs_tol=1e-6 * max(1.0, abs(r)))


def correctness_reward(completions, answer, fallback_last_number: bool = False, **kwargs) -> list[float]:
    """1.0 when the completion's final number equals the reference's (`answer` column), else 0.0."""
    rewards = []
    for completion, reference in zip(completions, answer, strict=True):
        ref = extract_answer(reference, fallback_last_number=True)  # references always hold an answer
        pred = extract_answer(completion_text(completion), fallback_last_number=fallback_last_number)
        rewards.append(1.0 if answers_match(pred, ref) else 0.0)
    return rewards


def correctness_reward_last_number(completions, answer, **kwargs) -> list[float]:
    """`correctness_reward` that also accepts the last number of the completion as its answer."""
    return correctness_reward(completions, answer, fallback_last_number=True)


def format_reward(completions, **kwargs) -> list[float]:
    """1.0 when the completion states its answer GSM8K's way (`#### <number>`), else 0.0.

    Weighted small next to correctness (`reward_weights` in the recipe): it only shapes the
    format of models that have not learnt it yet and is already saturated after SFT.
    """
    return [1.0 if ANSWER_RE.search(completion_text(c)) else 0.0 for c in completions]


# Names the recipe can use in `reward_funcs` (the same names TRL logs as `rewards/<name>/mean`).
REWARD_FUNCS = {
    "correctness": correctness_reward,
    "correctness_last_number": correctness_reward_last_number,
    "format": format_reward,
}
