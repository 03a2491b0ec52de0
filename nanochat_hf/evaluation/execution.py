"""Run model-written Python (HumanEval) in a separate, limited process.

    from nanochat_hf.evaluation.execution import execute_code
    result = execute_code(program, timeout=5.0)   # ExecutionResult(success, reason, stdout, stderr)

Each program runs in a fresh `python -I -S -B` process in its own session (a timeout kills all it spawned) inside a
throw-away scratch directory. Before the program runs, the child sets resource limits (address space, CPU seconds,
file size, processes, no core dumps) and replaces process creation, signals, sockets, chdir and writes outside the
scratch directory with functions that raise `SandboxViolation` (in `os`, `io` and the C modules under them, which a
program can import directly). The parent keeps only the last MAX_STREAM_BYTES of each output stream and kills the
session at the deadline, so a program printing in a loop costs neither memory nor time beyond its limit. This is
nanochat's `execution.py` idea: a reliability guard, not a security boundary (for that, use a container).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tqdm.auto import tqdm

TIMEOUT_S = 5.0  # wall-clock seconds per program (HumanEval tests run in milliseconds)
MAX_MEMORY_BYTES = 512 * 1024 * 1024  # address space of the child
MAX_FILE_BYTES = 16 * 1024 * 1024  # largest file the child may write
MAX_OUTPUT_CHARS = 4000  # stdout/stderr kept in the result
MAX_STREAM_BYTES = 64 * 1024  # of each stream, at most this much is held while reading (the rest is drained)
READ_CHUNK_BYTES = 64 * 1024
RESULT_TAG = "__NANOCHAT_HF_SANDBOX__"  # the child's last stderr line: tag + JSON status
LIMIT_SIGNALS = {"SIGXCPU": "cpu time limit", "SIGKILL": "memory limit", "SIGSEGV": "memory limit"}


@dataclass
class ExecutionResult:
    success: bool
    reason: str  # "passed", "timeout", "memory limit", "sandbox: ...", "SyntaxError: ...", ...
    stdout: str = ""
    stderr: str = ""


# The child's prologue: runs inside the sandboxed interpreter, reads the program from stdin.
_CHILD = r'''
import builtins, io, json, os, resource, sys
TAG, LIMITS = sys.argv[1], json.loads(sys.argv[2])
SCRATCH = os.path.realpath(os.getcwd())
def _limit(which, value):
    try:
        resource.setrlimit(which, (value, value))
    except (ValueError, OSError):
        pass
_limit(resource.RLIMIT_AS, LIMITS["memory"])
_limit(resource.RLIMIT_DATA, LIMITS["memory"])
_limit(resource.RLIMIT_CPU, LIMITS["cpu"])
_limit(resource.RLIMIT_FSIZE, LIMITS["fsize"])
_limit(resource.RLIMIT_CORE, 0)
_limit(resource.RLIMIT_NPROC, LIMITS["nproc"])  # not enforced for root: fork itself is blocked below
program = sys.stdin.read()
sys.stdin = io.StringIO("")

class SandboxViolation(PermissionError):
    pass

def _deny(name):
    def denied(*args, **kwargs):
        raise SandboxViolation(f"sandbox: {name} is not allowed")
    return denied

def _inside(path):
    if isinstance(path, int):
        return True  # an already-open descriptor
    path = os.path.realpath(os.fsdecode(path))
    return path == SCRATCH or path.startswith(SCRATCH + os.sep)

import _io
# `os` re-exports the C module (`posix`, `nt` on Windows), which a program can import directly: guard both.
_OS_MODULES = [os] + [m for m in (sys.modules.get("posix"), sys.modules.get("nt")) if m is not None]

def _check_write(path):
    if not _inside(path):
        raise SandboxViolation(f"sandbox: writing {path!r} outside the scratch directory is not allowed")

_open, _os_open, _FileIO = builtins.open, os.open, io.FileIO
def guarded_open(file, mode="r", *args, **kwargs):
    if any(c in mode for c in "wax+"):
        _check_write(file)
    return _open(file, mode, *args, **kwargs)
def guarded_os_open(path, flags, *args, **kwargs):
    if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
        _check_write(path)
    return _os_open(path, flags, *args, **kwargs)
class GuardedFileIO(_FileIO):
    def __init__(self, file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            _check_write(file)
        super().__init__(file, mode, *args, **kwargs)
builtins.open = io.open = _io.open = guarded_open
io.FileIO = _io.FileIO = GuardedFileIO
for _m in _OS_MODULES:
    _m.open = guarded_os_open

def _guard_paths(module, name, nargs=1):
    real = getattr(module, name)
    def guarded(*args, **kwargs):
        for p in args[:nargs]:
            if not _inside(p):
                raise SandboxViolation(f"sandbox: {module.__name__}.{name}({p!r}) outside the scratch directory "
                                       "is not allowed")
        return real(*args, **kwargs)
    setattr(module, name, guarded)
for _m in _OS_MODULES:
    for _name, _n in [("remove", 1), ("unlink", 1), ("rmdir", 1), ("mkdir", 1), ("makedirs", 1), ("removedirs", 1),
                      ("rename", 2), ("replace", 2), ("renames", 2), ("link", 2), ("symlink", 2), ("truncate", 1),
                      ("chmod", 1), ("chown", 1), ("utime", 1)]:
        if hasattr(_m, _name):
            _guard_paths(_m, _name, _n)

for _m in _OS_MODULES:
    for _name in ["system", "popen", "fork", "forkpty", "vfork", "kill", "killpg", "putenv", "unsetenv", "chdir",
                  "fchdir", "chroot", "setuid", "setgid", "execl", "execle", "execlp", "execlpe", "execv", "execve",
                  "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp",
                  "spawnvpe", "posix_spawn", "posix_spawnp"]:
        if hasattr(_m, _name):
            setattr(_m, _name, _deny(f"{_m.__name__}.{_name}"))

import shutil, socket, subprocess
shutil.rmtree = _deny("shutil.rmtree")
shutil.move = _deny("shutil.move")
subprocess.Popen = _deny("subprocess.Popen")
for _name in ["run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"]:
    setattr(subprocess, _name, _deny(f"subprocess.{_name}"))
socket.socket = _deny("socket.socket")
for _name in ["create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo", "gethostbyname"]:
    setattr(socket, _name, _deny(f"socket.{_name}"))
for _name in ["_socket", "_posixsubprocess", "ctypes", "_ctypes", "multiprocessing", "resource"]:
    sys.modules[_name] = None  # importing them now raises ImportError

def report(ok, reason):
    sys.stdout.flush()
    sys.__stderr__.write("\n" + TAG + json.dumps({"ok": ok, "reason": reason}) + "\n")
    sys.__stderr__.flush()

try:
    exec(compile(program, "<program>", "exec"), {"__name__": "__main__", "__builtins__": builtins})
except SandboxViolation as e:
    report(False, str(e))
except MemoryError:
    report(False, "memory limit")
except RecursionError:
    report(False, "RecursionError: maximum recursion depth exceeded")
except SystemExit as e:
    report(e.code in (None, 0), "passed" if e.code in (None, 0) else f"exit code {e.code}")
except BaseException as e:
    report(False, f"{type(e).__name__}: {str(e)[:300]}")
else:
    report(True, "passed")
'''


def execute_code(program: str, timeout: float = TIMEOUT_S,
                 max_memory_bytes: int = MAX_MEMORY_BYTES) -> ExecutionResult:
    """Run `program` in the sandbox; success iff it finishes within the limits without an exception."""
    with tempfile.TemporaryDirectory(prefix="nanochat_hf_exec_") as scratch:
        env = {"PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "no_proxy": "*", "http_proxy": "http://0.0.0.0:9", "https_proxy": "http://0.0.0.0:9"}
        limits = {"memory": int(max_memory_bytes), "cpu": int(timeout) + 1, "fsize": MAX_FILE_BYTES, "nproc": 64}
        cmd = [sys.executable, "-I", "-S", "-B", "-c", _CHILD, RESULT_TAG, json.dumps(limits)]
        # The program goes in through an unnamed file, not a pipe: nothing to feed while we read the
        # child's output, and a program that never reads stdin cannot block us.
        with tempfile.TemporaryFile(dir=scratch) as source:
            source.write(program.encode("utf-8", errors="replace"))
            source.seek(0)
            proc = subprocess.Popen(cmd, cwd=scratch, env=env, stdin=source, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err, timed_out = _read_bounded(proc, time.monotonic() + timeout)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # at the deadline, and anything the program left running
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
    out, err = out.decode("utf-8", errors="replace"), err.decode("utf-8", errors="replace")
    if timed_out:
        return ExecutionResult(False, "timeout", out[-MAX_OUTPUT_CHARS:], err[-MAX_OUTPUT_CHARS:])
    status = None
    head, sep, tail = err.rpartition(RESULT_TAG)
    if sep:
        with contextlib.suppress(ValueError, IndexError):
            status = json.loads(tail.strip().splitlines()[0])
        err = head.rstrip("\n")
    out, err = out[-MAX_OUTPUT_CHARS:], err[-MAX_OUTPUT_CHARS:]
    if status is None:  # the child died before reporting: a signal (CPU limit, OOM killer) or os._exit
        rc = proc.returncode
        if rc is not None and rc < 0:
            name = signal.Signals(-rc).name
            return ExecutionResult(False, f"{LIMIT_SIGNALS.get(name, name)} (killed by {name})", out, err)
        if rc == 0:
            return ExecutionResult(False, "exited before the tests ran (os._exit)", out, err)
        last = err.strip().splitlines()[-1] if err.strip() else f"exit code {rc}"
        return ExecutionResult(False, last[:300], out, err)
    return ExecutionResult(bool(status["ok"]), status["reason"], out, err)


def _read_bounded(proc: subprocess.Popen, deadline: float) -> tuple[bytes, bytes, bool]:
    """(stdout tail, stderr tail, timed_out), keeping only the last MAX_STREAM_BYTES of each as they come:
    `communicate()` would hold all a program printing in a loop writes, and check the deadline only between reads."""
    kept = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    with selectors.DefaultSelector() as sel:
        for fd in kept:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, READ_CHUNK_BYTES)
                if not chunk:  # EOF: the child (and all it spawned) closed this stream
                    sel.unregister(key.fd)
                    continue
                buf = kept[key.fd]
                buf += chunk
                if len(buf) > 2 * MAX_STREAM_BYTES:  # trim rarely: amortised O(1) per byte read
                    del buf[:-MAX_STREAM_BYTES]
        timed_out = bool(sel.get_map())
    if not timed_out:
        # Both streams closed: the child is exiting; give it until the deadline to do so.
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
    return *(bytes(b[-MAX_STREAM_BYTES:]) for b in kept.values()), timed_out


def execute_many(programs: list[str], timeout: float = TIMEOUT_S, max_memory_bytes: int = MAX_MEMORY_BYTES,
                 workers: int | None = None, progress: bool = False) -> list[ExecutionResult]:
    """Run many programs, several at a time (each still alone in its own process), results in order."""
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(workers) as pool:
        it = pool.map(lambda p: execute_code(p, timeout, max_memory_bytes), programs)
        return list(tqdm(it, total=len(programs), desc="execute", disable=not progress))
