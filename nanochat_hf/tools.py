"""The calculator tool the chat model calls between `<|python_start|>` and `<|python_end|>`, and `ToolState`,
which runs it inside a decoding row.

    >>> run_calculator("12 * (3 + 4) / 2")
    '42'
    >>> run_calculator('"strawberry".count("r")')
    '3'
    >>> run_calculator("__import__('os').system('ls')")
    'Error: ...'

The model writes the expression, so it is untrusted input. nanochat `eval`s it with empty builtins after
a character filter; we never call `eval`/`exec`: `ast` parses it and a tiny interpreter walks the tree,
accepting only numbers written with digits and `.` (thousands commas dropped), `+ - * /`, unary `+ -`,
parentheses and `"text".count("x")` (nanochat's SpellingBee call). Anything else is refused with an
`Error:` string, forced into the sequence as the tool's output. Input length, integer size and wall time
are bounded; the deadline is checked while walking (no SIGALRM, so it is safe in the server's threads).
"""

from __future__ import annotations

import ast
import math
import operator
import re
import time
from collections import deque

MAX_EXPR_CHARS = 512  # GSM8K calculator calls are < 60 characters; 512 leaves room, bounds the work
MAX_INT_DIGITS = 1000  # no `**`, so results stay about as long as the input; belt and braces
TIME_LIMIT_S = 1.0  # wall-clock budget for parsing + evaluating one expression
TOOL_TOKENS = ("<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>")  # what ToolState reads
_NUMBER = re.compile(r"^(\d+(\.\d*)?|\.\d+)$")  # how a number literal must be spelled
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")  # 1,234,567 -> 1234567
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


class _Refused(Exception):
    """The expression is outside the calculator's language (or its limits)."""


def _check_int(value):
    if isinstance(value, int) and abs(value) >= 10**MAX_INT_DIGITS:
        raise _Refused(f"result has more than {MAX_INT_DIGITS} digits")
    if isinstance(value, float) and not math.isfinite(value):
        raise _Refused("result is not a finite number")
    return value


def _eval(node: ast.AST, source: str, deadline: float):
    if time.monotonic() > deadline:
        raise _Refused(f"timed out after {TIME_LIMIT_S} s")
    if isinstance(node, ast.Expression):
        return _eval(node.body, source, deadline)
    if isinstance(node, ast.Constant):
        # bool is an int subclass and `True` parses as a Constant: spelled check refuses it.
        if type(node.value) in (int, float) and _NUMBER.match(ast.get_source_segment(source, node) or ""):
            return node.value
        if type(node.value) is str:
            raise _Refused('strings are only allowed in "text".count("x")')
        raise _Refused(f"only plain decimal numbers are allowed, not {ast.get_source_segment(source, node)!r}")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _number(_eval(node.operand, source, deadline))
        return value if isinstance(node.op, ast.UAdd) else -value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left = _number(_eval(node.left, source, deadline))
        right = _number(_eval(node.right, source, deadline))
        if isinstance(node.op, ast.Div) and right == 0:
            raise _Refused("division by zero")
        return _check_int(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.Call):  # only "literal".count("literal")
        func = node.func
        if (isinstance(func, ast.Attribute) and func.attr == "count" and _is_str(func.value)
                and len(node.args) == 1 and _is_str(node.args[0]) and not node.keywords):
            return func.value.value.count(node.args[0].value)
        raise _Refused('the only call allowed is "text".count("x")')
    if isinstance(node, (ast.BinOp, ast.UnaryOp)):
        kind = f"the operator {type(node.op).__name__}"
    else:
        kind = f"{type(node).__name__} ({ast.get_source_segment(source, node) or ''!s:.40})"
    raise _Refused(f"{kind} is not allowed; use numbers, + - * / and parentheses")


def _is_str(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is str


def _number(value):
    if type(value) not in (int, float):  # a bare string literal used as a number
        raise _Refused("strings are only allowed in \"text\".count(\"x\")")
    return value


def _format(value) -> str:
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))  # 48/2 -> "24" as in GSM8K's <<48/2=24>> annotations, not "24.0"
        return repr(round(value, 10))  # 0.1 + 0.2 -> "0.3", not "0.30000000000000004"
    return str(value)


def run_calculator(expr: str) -> str:
    """`expr`'s value as text, or a string starting with "Error:" (nothing is ever executed)."""
    if not isinstance(expr, str):
        return f"Error: expected a string expression, got {type(expr).__name__}"
    expr = expr.strip()
    if not expr:
        return "Error: empty expression"
    if len(expr) > MAX_EXPR_CHARS:
        return f"Error: expression longer than {MAX_EXPR_CHARS} characters"
    if "\"" not in expr and "'" not in expr:
        expr = _THOUSANDS.sub("", expr)
    deadline = time.monotonic() + TIME_LIMIT_S
    try:
        tree = ast.parse(expr, mode="eval")
        return _format(_eval(tree, expr, deadline))
    except _Refused as err:
        return f"Error: {err}"
    except SyntaxError:
        return "Error: not a valid expression"
    except (RecursionError, MemoryError):
        return "Error: expression too deeply nested"
    except (OverflowError, ValueError, TypeError) as err:  # e.g. int too large for float division
        return f"Error: {type(err).__name__}: {err}"


class ToolState:
    """One row's calculator state while decoding: collects the expression, queues the forced output."""

    def __init__(self, ids: dict[str, int], tokenizer):
        self.ids, self.tokenizer = ids, tokenizer
        self.forced: deque[int] = deque()
        self.in_python = False
        self.expr: list[int] = []

    def next_token(self, sampled: int) -> tuple[int, int]:
        """The token this row takes (a queued forced one wins over the sampled one) and its mask (0 = forced)."""
        token, mask = (self.forced.popleft(), 0) if self.forced else (sampled, 1)
        if token == self.ids["<|python_start|>"]:
            self.in_python, self.expr = True, []
        elif token == self.ids["<|python_end|>"] and self.in_python:
            self.in_python = False
            if self.expr:
                result = run_calculator(self.tokenizer.decode(self.expr))
                self.forced.append(self.ids["<|output_start|>"])
                self.forced.extend(self.tokenizer.encode(result, add_special_tokens=False))
                self.forced.append(self.ids["<|output_end|>"])
            self.expr = []
        elif self.in_python:
            self.expr.append(token)
        return token, mask
