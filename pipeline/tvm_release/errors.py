"""The one place where a failing TVM call becomes a PipelineError.

TVM's FFI raises builtin exception types (ValueError, TypeError, RuntimeError, ...) besides its own
TVMError, so the type cannot tell a TVM failure from a bug of ours: the scope does. Only TVM calls go
inside `tvm_errors`; the pipeline's own code stays outside, so its bugs surface as bugs."""

import re
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.errors import PipelineError, write_log


@contextmanager
def tvm_errors(doing: str, fix: str) -> Iterator[None]:
    """`doing` says what TVM was asked to do ("TVM could not build vgg16 for aarch64-linux-gnu"); the error
    line gives TVM's reason in one line, and TVM's whole message and traceback go to a log file."""
    try:
        yield
    except Exception as exc:
        log = write_log("tvm", f"{doing}\n\n{traceback.format_exc()}")
        raise PipelineError(f"{doing}: {reason(exc)}", fix, log=log) from None


_TYPE_DUMP = re.compile(r"(R\.|T\.)\w+\(.*")  # TVM prints whole struct infos: thousands of characters


def reason(exc: BaseException) -> str:
    """TVM's message cut to its reason: the line that says why (a TVM traceback ends with it), without
    the check's boilerplate or printed IR types."""
    text = str(exc).strip() or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[-1] if "Traceback" in text else lines[0]
    line = _TYPE_DUMP.sub("…", line.split("Check failed: ", 1)[-1])
    return line if len(line) <= 150 else line[:149] + "…"
