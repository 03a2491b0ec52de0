"""Shared fixtures: one tiny tokenizer trained once per test session on the embedded corpus."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# One CPU thread everywhere (this process and the subprocesses tests start): float sums then run in the
# same order on every machine, so the tiny training runs the tests check are bit-reproducible whatever
# the core count (2 threads vs 1 changes the rounding, and a 30-step tiny run can end elsewhere).
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

TINY_VOCAB_SIZE = 1024  # 256 bytes + 759 merges + 9 specials: enough merges for real words, trains in ~1 s
TINY_TRAIN_CHARS = 300_000  # the first ~quarter of tinyshakespeare


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """Folder with a trained nanochat tokenizer (tokenizer.json, chat template, token_bytes.pt)."""
    from nanochat_hf.tokenization import save_tokenizer, train_tokenizer

    tok = train_tokenizer(None, vocab_size=TINY_VOCAB_SIZE, max_chars=TINY_TRAIN_CHARS, progress=False)
    return save_tokenizer(tok, tmp_path_factory.mktemp("tiny_tokenizer"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    """The tokenizer of `tiny_tokenizer_dir`, loaded as users load it (shared: do not mutate)."""
    from nanochat_hf.tokenization import load_tokenizer

    return load_tokenizer(tiny_tokenizer_dir)


# ----------------------------------------------------------------------------- kill mid-run

REPO = Path(__file__).resolve().parent.parent

# Runs `python -m MODULE ARGS` with one global optimizer-step hook: at the first optimizer step after
# CHECKPOINT exists, it writes MARKER and waits. A tiny run can otherwise finish between two polls of
# the test, so "kill after the first checkpoint" would sometimes kill a process that already ended
# (and the resume test would pass without any kill). Held there, the run is always mid-training:
# checkpoint written, a later step under way, no final model yet.
_HOLD_AFTER_CHECKPOINT = r"""
import os, runpy, sys, time
from pathlib import Path
from torch.optim.optimizer import register_optimizer_step_post_hook
checkpoint, marker, module = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
def hold(optimizer, args, kwargs):
    if checkpoint.is_dir():
        marker.write_text(str(os.getpid()))
        time.sleep(3600)  # the test SIGKILLs us here
register_optimizer_step_post_hook(hold)
sys.argv = [module, *sys.argv[4:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


@pytest.fixture
def kill_mid_run(tmp_path):
    """`kill_mid_run(module, args, output_dir, checkpoint_step)`: run the stage in a subprocess, SIGKILL
    it in the step after checkpoint-<checkpoint_step> was written, and check that the kill is what
    ended it (returncode -9) before any final model.safetensors existed."""

    def run(module: str, args: list[str], output_dir: Path, checkpoint_step: int, timeout: float = 600) -> None:
        output_dir = Path(output_dir)
        marker, log = tmp_path / f"{output_dir.name}.held", tmp_path / f"{output_dir.name}.log"
        env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        cmd = [sys.executable, "-c", _HOLD_AFTER_CHECKPOINT, str(output_dir / f"checkpoint-{checkpoint_step}"),
               str(marker), module, *map(str, args)]
        tail = lambda: log.read_text()[-3000:]  # noqa: E731
        with open(log, "w") as out:  # a file, not a pipe: a chatty child must never block on a full pipe
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert marker.exists(), f"never reached the step after checkpoint-{checkpoint_step}:\n{tail()}"
            assert not (output_dir / "model.safetensors").exists(), "the final model exists before the kill"
            proc.send_signal(signal.SIGKILL)
            proc.wait(60)
            assert proc.returncode == -signal.SIGKILL, f"ended by {proc.returncode}, not SIGKILL:\n{tail()}"
            assert not (output_dir / "model.safetensors").exists()
            assert (output_dir / f"checkpoint-{checkpoint_step}").is_dir()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    return run
