"""Problems the user fixes (a corrupt file, a typo'd recipe key, a full disk): one line, exit status 2.

The error is raised where the problem is seen, so it can name the file (and row or key); every stage's `main` hands
its work to `run_main`, the one place that turns it into `prog: error: ...` on stderr instead of a traceback.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import os
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

# errno values that mean "this disk or folder cannot take the write": reported with the free space.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class UserError(ValueError):
    """Bad input or a failed write the user can fix; the message names the file and the fix (a ValueError, so
    callers that already refuse bad values in one line treat it the same way)."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def free_space(path: str | os.PathLike) -> str:
    """'1.2 GiB free' on the disk holding `path` (its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        free = shutil.disk_usage(p).free
    except OSError:
        return "free space unknown"
    return f"{free / 2**30:.2f} GiB free" if free >= 2**30 else f"{free / 2**20:.1f} MiB free"


def write_failed(folder: str | os.PathLike, err: BaseException) -> UserError:
    """A failed save into `folder` (full disk, read-only folder, ...) as one line with the free space."""
    cause = getattr(err, "strerror", None) or f"{type(err).__name__}: {one_line(str(err), 200)}"
    return UserError(f"could not write {folder} ({cause}; {free_space(folder)} there); free some space or make it "
                     "writable (or pick another --output_dir), then run the same command again to resume")


@contextlib.contextmanager
def writing(folder: str | os.PathLike, undo: Callable[[], None] | None = None):
    """Around a save into `folder`: a failed write becomes `write_failed`, after `undo()` (e.g. drop the partial)."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as err:  # Python's, torch.save's, safetensors' failed write
        if undo is not None:
            undo()
        raise write_failed(folder, err) from err


def ensure_writable(folder: str | os.PathLike) -> Path:
    """Create `folder` if needed and check a file can be written there, before any long work."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise write_failed(folder, err) from None
    return folder


def one_line(text: str, limit: int = 600) -> str:
    """A message on one line: library errors often span several."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        where = err.filename or ""
        space = f"; {free_space(where or '.')}" if err.errno in NO_SPACE else ""
        return f"{err.strerror}{': ' + str(where) if where else ''}{space}"
    return one_line(str(err)) or type(err).__name__


def run_main(prog: str, body: Callable[[], object], also: tuple[type[BaseException], ...] = ()) -> int:
    """Run a stage's work: the int it returns (else 0), or 2 after one `prog: error: ...` line on stderr for a
    ValueError (UserError included) or OSError. Anything else is a bug and keeps its traceback."""
    try:
        result = body()
    except (ValueError, OSError, *also) as err:
        message = f"{prog}: error: {_describe(err)}"
    else:
        return result if isinstance(result, int) and not isinstance(result, bool) else 0
    # Printed once the traceback is gone: a progress bar its frames held has closed (and printed) by now,
    # so the error is the last line.
    print(message, file=sys.stderr)
    return 2
