"""Checkpoints that are whole or absent, for pretraining (accelerate) and SFT / RL (the HF Trainer).

A checkpoint is written into a hidden sibling, `.checkpoint-<step>.tmp`, and renamed to `checkpoint-<step>` once
every file is there; older checkpoints are deleted only after that. So a run killed mid-save, or stopped by a full
disk, leaves its previous checkpoint as it was. `--resume_from_checkpoint latest` (`resume_checkpoint`) picks the
newest `checkpoint-<step>` holding its trainer state (written last), skipping, with a line saying so, any without.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

from nanochat_hf.errors import writing

STATE_NAME = "trainer_state.json"  # the last file both pretraining and the HF Trainer write into a checkpoint
LATEST = ("latest", "auto", "last", "true")  # `latest`, and the spellings older commands use for it
NO_RESUME = ("", "false", "none")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks (checkpoint files and data shards do not fit in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step of a `checkpoint-<step>` folder name, else None."""
    prefix, _, step = Path(path).name.partition("-")
    return int(step) if prefix == "checkpoint" and step.isdigit() else None


def staging_dir(final: Path) -> Path:
    """Where `final` is written before its rename: a hidden sibling no checkpoint search matches."""
    return final.parent / f".{final.name}.tmp"


def publish(tmp: Path, final: Path) -> None:
    """Swap the fully written `tmp` in as `final` (a same-step leftover is replaced)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-<step>` folders of `output_dir`, newest step first."""
    folder = Path(output_dir)
    found = [(checkpoint_step(d), d) for d in folder.glob("checkpoint-*")] if folder.is_dir() else []
    return [d for s, d in sorted(found, reverse=True) if s is not None and d.is_dir()]


def latest_checkpoint(output_dir: str | os.PathLike, say=None) -> Path | None:
    """The newest complete `checkpoint-<step>` in `output_dir`, or None; incomplete ones are skipped, and said."""
    say = say or (lambda msg: print(msg, file=sys.stderr))
    for d in _checkpoints(output_dir):
        if (d / STATE_NAME).is_file():
            return d
        say(f"skipping {d}: partial checkpoint (no {STATE_NAME}, its save never finished)")
    return None


def resume_checkpoint(output_dir: str | os.PathLike, spelling: str | None, say=None) -> Path | None:
    """The checkpoint a resume flag names: None when there is none to resume (no flag, or `latest` before the
    first checkpoint, said), the newest complete one for `latest`, else the folder given, which must exist."""
    if spelling is None or str(spelling).strip().lower() in NO_RESUME:
        return None
    say = say or (lambda msg: print(msg, file=sys.stderr))
    if str(spelling).strip().lower() in LATEST:
        found = latest_checkpoint(output_dir, say)
        if found is None:
            say(f"no checkpoint in {output_dir} yet: starting afresh")
        return found
    folder = Path(spelling).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint {spelling} does not exist; pass --resume_from_checkpoint latest or "
                                f"an existing {Path(output_dir) / 'checkpoint-<step>'} folder")
    return folder


def rotate(output_dir: str | os.PathLike, keep: int | None, protect: str | os.PathLike | None = None) -> None:
    """Keep the newest `keep` complete checkpoints (and `protect`); None or <= 0 keeps all. Only complete ones
    count: a partial folder at a later step must not push a good one out."""
    if not keep or keep <= 0:
        return
    complete = [d for d in _checkpoints(output_dir) if (d / STATE_NAME).is_file()]
    for d in complete[keep:]:
        if protect is None or Path(protect) != d:
            shutil.rmtree(d, ignore_errors=True)


class AtomicCheckpoints:
    """Mixin for a transformers Trainer (SFTTrainer, GRPOTrainer): its checkpoints are saved atomically, by
    pointing `_get_output_dir()` at a staging folder during the save, keeping all of the Trainer's saving code."""

    _staging: Path | None = None

    def _get_output_dir(self, trial):
        return str(self._staging) if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        run_dir = Path(self._get_output_dir(trial))
        final = run_dir / f"checkpoint-{self.state.global_step}"
        staging = staging_dir(final)
        main = self.args.should_save
        drop = lambda: main and shutil.rmtree(staging, ignore_errors=True)  # noqa: E731
        try:
            with writing(final, undo=drop):
                if main and staging.exists():  # left by a run killed while saving this step
                    shutil.rmtree(staging)
                self.accelerator.wait_for_everyone()
                self._staging = staging
                super()._save_checkpoint(model, trial)
                self.accelerator.wait_for_everyone()
                if main:
                    publish(staging / final.name, final)
                    shutil.rmtree(staging)
        finally:
            self._staging = None
        if self.state.best_model_checkpoint == str(staging / final.name):
            self.state.best_model_checkpoint = str(final)
        if main:  # the Trainer's own rotation ran inside the staging folder: do it here, after the rename
            rotate(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()
