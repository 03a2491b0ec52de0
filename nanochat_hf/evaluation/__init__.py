"""Evaluation: CORE (DCLM, nanochat's core_eval), ChatCORE (ARC, MMLU, GSM8K, HumanEval, SpellingBee), bpb.

    nanochat-hf eval --model DIR --tasks core|chatcore|bpb|<task,...> [--max-per-task N] [--output FILE.json]
    lighteval accelerate "model_name=DIR,trust_remote_code=True" "copa|0" \\
        --custom-tasks nanochat_hf/evaluation/lighteval_tasks.py
"""

from .core import evaluate_core
from .execution import ExecutionResult, execute_code

__all__ = ["evaluate_core", "execute_code", "ExecutionResult"]
