"""The one error type every step raises for bad input, so the task layer can print one line and exit.

A line a person reads stays short (at most MAX_LINE characters); what does not fit, such as TVM's full
message or a traceback, goes to a log file under the cache that the line names."""

import secrets
import time
from pathlib import Path

from pipeline import paths

MAX_LINE = 300


class PipelineError(Exception):
    """A problem the user can fix: `problem` says what went wrong, `fix` says what to do, `log` holds
    the long details when there are any."""

    def __init__(self, problem: str, fix: str = "", log: Path | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix
        self.log = log

    def __str__(self) -> str:
        return f"{self.problem} ({self.fix})" if self.fix else self.problem

    def line(self) -> str:
        """`error: PROBLEM — fix: FIX (details: LOG)`, the problem shortened so the whole fits MAX_LINE."""
        return error_line(self.problem, self.fix, self.log)


def error_line(problem: str, fix: str = "", log: Path | None = None, prefix: str = "error") -> str:
    tail = (f" — fix: {fix}" if fix else "") + (f" (details: {shown(log)})" if log else "")
    room = MAX_LINE - len(prefix) - 2 - len(tail)
    text = " ".join(problem.split())
    if len(text) > room:
        text = text[: max(room - 1, 0)].rstrip() + "…"
    return f"{prefix}: {text}{tail}"[:MAX_LINE]


def write_log(topic: str, text: str) -> Path:
    """Keep long details (a full TVM message, a traceback) in a new file under CACHE_DIR/logs."""
    folder = paths.CACHE_DIR / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{time.strftime('%Y%m%dT%H%M%S')}-{topic}-{secrets.token_hex(2)}.log"
    path.write_text(text)
    return path


def shown(path: Path) -> str:
    """A path relative to the checkout when it lies inside it: short enough for an error line."""
    try:
        return str(path.resolve().relative_to(paths.ROOT))
    except ValueError:
        return str(path)
