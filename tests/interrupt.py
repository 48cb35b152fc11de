"""Pressing Ctrl-C on a pipeline command, as a user at a terminal does, without ever waiting forever."""

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def _as_at_a_terminal() -> None:
    """A shell starts background jobs with SIGINT ignored, and Python then never installs its
    KeyboardInterrupt handler; a test runner started that way would send Ctrl-C into the void."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_when(
    cmd: Sequence[str],
    ready: Callable[[], bool],
    *,
    cwd: Path,
    env: Mapping[str, str],
    ready_within_s: float = 300,
    exit_within_s: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run `cmd`, send SIGINT once `ready()` holds, and return how it ended. A command that is never
    ready or does not stop after Ctrl-C fails the test and is killed with its process group."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_as_at_a_terminal,
    )
    try:
        deadline = time.monotonic() + ready_within_s
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(
                    f"ended before it was ready (exit {proc.returncode}): {proc.stderr.read()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"not ready within {ready_within_s:g} s")
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        try:
            stdout, stderr = proc.communicate(timeout=exit_within_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {exit_within_s:g} s after Ctrl-C") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
