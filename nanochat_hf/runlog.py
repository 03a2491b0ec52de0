"""A training stage's log, `<output_dir>/logs/<stage>.jsonl`: one JSON object per line, read by the report card.

A run begins its log with `RunLog.start`: a fresh run empties the file, so a run killed before its first checkpoint
and started again logs each step once; a resumed run keeps the rows up to its checkpoint's step and drops the rest
(which it logs again), along with a torn last line left by the killed run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback

from nanochat_hf.errors import writing


class RunLog:
    """Rows appended one JSON line each; only the process that is `enabled` (the main one) touches the file."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled

    def start(self, resume_step: int | None, redone: tuple[str, ...] = ()) -> None:
        """Fresh (`resume_step` None) or resumed at `resume_step`: rows after it go, and rows at it holding
        a key of `redone` (work the resumed run repeats at its first step, as pretraining's eval)."""
        if not self.enabled:
            return
        kept = []
        if resume_step is not None and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a torn last line from a killed run
                    continue
                step = row.get("step", 0)
                if step < resume_step or (step == resume_step and not any(k in row for k in redone)):
                    kept.append(line)
        with writing(self.path.parent):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, **row) -> None:
        if self.enabled:
            with writing(self.path.parent), open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row, default=str) + "\n")


class RunLogCallback(TrainerCallback):
    """Every Trainer log row (loss, learning_rate, eval_loss, reward, pass@k, ...) as a line of a RunLog, with
    `step`, `epoch` and `time` (seconds since the callback was made); `header` fills the run's `start` row."""

    def __init__(self, path: str | Path, resume_step: int | None = None, header: dict | None = None):
        self.log, self.resume_step, self.header, self.t0 = RunLog(path), resume_step, header, time.time()

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.log.start(self.resume_step)
        if self.header is not None:
            self.log.write(step=state.global_step, event="start", **self.header)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            row = {"step": state.global_step, "epoch": state.epoch, "time": round(time.time() - self.t0, 3),
                   **{k: v for k, v in logs.items() if v is None or isinstance(v, (bool, int, float, str))}}
            self.log.write(**row)
