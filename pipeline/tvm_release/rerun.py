"""A command run again under another TVM release: `--tvm 0.26` re-runs the same invoke command with that
release's Python (its environment created on first use); the same checkout's code runs there."""

import subprocess
from collections.abc import Callable, Sequence

from pipeline.paths import ROOT
from pipeline.tvm_release.catalog import get_release, running_release
from pipeline.tvm_release.environment import release_python


def without_tvm_flag(argv: Sequence[str]) -> list[str]:
    """The command's words with `--tvm X` and `--tvm=X` taken out, so the re-run does not re-run again."""
    words, skip = [], False
    for word in argv:
        if skip or word.startswith("--tvm="):
            skip = False
            continue
        skip = word == "--tvm"
        if not skip:
            words.append(word)
    return words


def rerun_under(tvm: str | None, argv: Sequence[str], on_progress: Callable[[str], None]) -> int | None:
    """The exit code of `invoke <argv>` run under release `tvm`; None when no release is asked for or it is
    the running one: then the caller runs the command itself."""
    if tvm is None:
        return None
    release = get_release(tvm)
    if release == running_release():
        return None
    python = release_python(release, on_progress=on_progress)
    return subprocess.run([str(python), "-m", "invoke", *without_tvm_flag(argv)], cwd=ROOT).returncode
