"""The calculator tool: arithmetic and "x".count("y") work; hostile expressions are refused, never run."""

import builtins
import os
import time

import pytest

from nanochat_hf.tools import MAX_EXPR_CHARS, run_calculator


@pytest.mark.parametrize("expr, expected", [
    ("1 + 2", "3"),
    ("12 * (3 + 4) / 2", "42"),
    ("48/2", "24"),  # integral division prints like GSM8K's <<48/2=24>>
    ("7 / 2", "3.5"),
    ("1/3", "0.3333333333"),
    ("0.1 + 0.2", "0.3"),
    ("-(-3) - +2", "1"),
    ("1,234 * 2", "2468"),  # thousands separators are dropped
    ("  (((5)))  ", "5"),
    ("(" * 200 + "1" + ")" * 200, "1"),  # deep but within the length limit: no crash
    ("-" * 401 + "1", "-1"),
    (".5 * 4", "2"),
    ("3.", "3"),
    ('"strawberry".count("r")', "3"),
    ("'banana'.count('an')", "2"),
    ('"a,b,c".count(",")', "2"),  # commas inside strings are kept
    ('"strawberry".count("r") + 1', "4"),
    ("99999999999999999999 * 99999999999999999999", str(99999999999999999999**2)),
])
def test_arithmetic_and_count(expr, expected):
    assert run_calculator(expr) == expected


HOSTILE = [
    "__import__('os').system('touch pwned')",
    "__import__",
    "open('/etc/passwd').read()",
    "exec('print(1)')",
    "eval('1+1')",
    "compile('1','f','eval')",
    "globals()",
    "locals()",
    "vars()",
    "dir()",
    "getattr(1, 'real')",
    "(1).__class__",
    "().__class__.__bases__[0].__subclasses__()",
    "''.__class__.__mro__",
    '"abc".__len__()',
    '"abc".upper()',
    '"abc".count("a").__class__',
    '"abc".count(x)',
    '"abc".count("a", 1)',
    '"abc".count(sub="a")',
    "2 ** 10",
    "9 ** 9 ** 9",
    "10 // 3",
    "10 % 3",
    "1 << 100000",
    "~1",
    "not 1",
    "1 if 1 else 2",
    "1 < 2",
    "lambda: 1",
    "(lambda: __import__('os'))()",
    "[x for x in range(10**9)]",
    "{x: x for x in range(3)}",
    "(x for x in [1])",
    "[1, 2, 3]",
    "(1, 2)",
    "{1}",
    "[1][0]",
    "x",
    "x = 1",
    "(x := 5)",
    "import os",
    "f'{1+1}'",
    "b'abc'",
    "1j * 1j",
    "1e308 * 10",
    "True + True",
    "None",
    "...",
    "'a' * 10**9",
    "'abc' + 'def'",
    "1_000_000",
    "0x10",
    "1; 2",
    "print(1)",
    "help()",
    "\x00",
    "1 +",
    "",
    "   ",
    "(" * 5000 + "1" + ")" * 5000,
    "1" + "+1" * (MAX_EXPR_CHARS // 2),
    "-" * 100_000 + "1",
    "99999999999999999999 / 0",
    "1/0",
    "1.0/0.0",
    "9" * 400 + " / 0.5e-1",
]


@pytest.mark.parametrize("expr", HOSTILE)
def test_hostile_expressions_are_refused(expr, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = []
    real_import = builtins.__import__

    def spy_import(name, *args, **kwargs):  # the calculator must not import anything while running
        if name.split(".")[0] in ("os", "subprocess", "shutil", "socket", "sys", "posix"):
            calls.append(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", spy_import)
    out = run_calculator(expr)
    monkeypatch.setattr(builtins, "__import__", real_import)
    assert out.startswith("Error:"), f"{expr!r} was evaluated to {out!r}"
    assert len(out) < 200
    assert not os.path.exists("pwned") and calls == []


def test_at_least_30_hostile_expressions():
    assert len(HOSTILE) >= 30


def test_huge_numbers_are_bounded_and_fast():
    t0 = time.monotonic()
    out = run_calculator("*".join(["9" * 60] * 8))  # ~480-digit product: allowed, computed exactly
    assert out == str(int("9" * 60) ** 8)
    assert run_calculator("9" * 600).startswith("Error:")  # over the length limit
    assert time.monotonic() - t0 < 5  # sanity, not a benchmark: nothing here may hang


def test_non_string_input():
    assert run_calculator(None).startswith("Error:")
    assert run_calculator(12).startswith("Error:")
