"""Run one command on the board with a hard timeout and a kill that really reaches it, or keep one
running in the background for the length of a block (a server the host talks to meanwhile).

Closing an SSH channel does not stop a command started without a pty, so the command runs in
its own session (setsid) and reports its process group first; on timeout, Ctrl-C or the end of the
block the whole group is killed from a second channel. Output is drained while waiting, so large
outputs never stall the command, and stderr lines are handed out as they arrive (live progress).
"""

import codecs
import math
import re
import select
import shlex
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import paramiko

from pipeline.board.connection import SSH_ERRORS, ssh_errors
from pipeline.errors import PipelineError
from pipeline.interrupts import deferred_interrupts, raise_if_interrupted

KILL_GRACE_S = 2
CHANNEL_TIMEOUT_S = 10.0
POLL_S = 0.1
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PGID_MARK = "tvm-pipeline-pgid"
_PGID_LINE = re.compile(rb"(?:^|\n)" + _PGID_MARK.encode() + rb" (\d+)\n")

LineCallback = Callable[[str], None]
"""Called with each line of stderr as it arrives."""


@dataclass(frozen=True)
class CommandResult:
    """What a finished command left behind; exit_code as a shell reports it (128+N after signal N)."""

    command: str
    exit_code: int
    stdout: str
    stderr: str
    seconds: float


def run(
    client: paramiko.SSHClient,
    command: str,
    *,
    timeout_s: float,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    on_stderr_line: LineCallback | None = None,
) -> CommandResult:
    """Run `command` with POSIX sh on the board; a non-zero exit is returned, not raised."""
    start = time.monotonic()
    wrapped = _wrap(command, cwd, env)
    channel = _open_channel(client)
    stream = _Streams(on_stderr_line)
    with deferred_interrupts():
        try:
            _execute(channel, wrapped, stream, deadline=start + timeout_s)
        except _TimedOut:
            left = "" if _kill_group(client, stream.pgid) else "; it could not be stopped and may still be running"
            raise PipelineError(
                f"command `{_short(command)}` timed out after {timeout_s:g} s on the board{left}",
                "raise timing.timeout_s in the board profile or pass --timeout",
            ) from None
        except BaseException:
            _kill_group(client, stream.pgid)
            raise
        finally:
            channel.close()
    stream.flush()
    return CommandResult(
        command, channel.recv_exit_status(), stream.stdout(), stream.stderr(), time.monotonic() - start
    )


class Background:
    """A command `background` started; it runs until the block ends or it exits by itself."""

    def __init__(self, channel: paramiko.Channel, stream: "_Streams") -> None:
        self._channel = channel
        self._stream = stream
        self.error: PipelineError | None = None  # the connection broke while it ran

    def exit_code(self) -> int | None:
        """None while it runs."""
        return self._channel.recv_exit_status() if self._channel.exit_status_ready() else None

    def stdout(self) -> str:
        """What it printed so far (a server announcing its port)."""
        return self._stream.stdout()

    def stderr_tail(self, lines: int = 5) -> str:
        return " | ".join(line.strip() for line in self._stream.stderr().splitlines()[-lines:] if line.strip())


@contextmanager
def background(
    client: paramiko.SSHClient,
    command: str,
    *,
    env: Mapping[str, str] | None = None,
    start_timeout_s: float = CHANNEL_TIMEOUT_S,
) -> Iterator[Background]:
    """Run `command` on the board while the block runs; its whole process group is killed when the
    block ends, normally, by an error or by Ctrl-C."""
    channel = _open_channel(client)
    stream = _Streams(None)
    job = Background(channel, stream)

    def pump() -> None:
        try:
            with ssh_errors(f"running `{_short(command)}` on the board"):
                _pump_until_done(channel, stream, deadline=math.inf)
        except PipelineError as error:
            job.error = error

    pumping = threading.Thread(target=pump, name=f"board: {_short(command)}", daemon=True)
    try:
        with ssh_errors(f"starting `{_short(command)}` on the board"):
            channel.exec_command(_wrap(command, None, env))
            channel.shutdown_write()
        pumping.start()
        deadline = time.monotonic() + start_timeout_s
        while stream.pgid is None and pumping.is_alive() and time.monotonic() < deadline:
            time.sleep(POLL_S)
        if stream.pgid is None:
            raise PipelineError(
                f"command `{_short(command)}` did not start on the board within {start_timeout_s:g} s",
                "check that the board's shell has setsid, then retry",
            )
        yield job
    finally:
        _kill_group(client, stream.pgid)
        channel.close()
        if pumping.ident is not None:
            pumping.join(timeout=CHANNEL_TIMEOUT_S)


class _TimedOut(Exception):
    pass


class _Streams:
    """Decodes stdout and stderr incrementally. Stdout starts with the marker line that carries
    the process group id; anything before it (a chatty shell rc file) is dropped."""

    def __init__(self, on_stderr_line: LineCallback | None) -> None:
        self.pgid: int | None = None
        self._on_stderr_line = on_stderr_line
        self._head = b""
        self._out: list[str] = []
        self._err: list[str] = []
        self._out_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._err_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial_line = ""

    def feed_stdout(self, data: bytes) -> None:
        if self.pgid is None:
            self._head += data
            marker = _PGID_LINE.search(self._head)
            if marker is None:
                return
            self.pgid = int(marker[1])
            data = self._head[marker.end() :]
        self._out.append(self._out_decoder.decode(data))

    def feed_stderr(self, data: bytes) -> None:
        self._emit(self._err_decoder.decode(data))

    def flush(self) -> None:
        self._out.append(self._out_decoder.decode(b"", final=True))
        self._emit(self._err_decoder.decode(b"", final=True))
        if self._partial_line:
            self._emit_line(self._partial_line)
            self._partial_line = ""

    def stdout(self) -> str:
        return "".join(self._out)

    def stderr(self) -> str:
        return "".join(self._err)

    def _emit(self, text: str) -> None:
        self._err.append(text)
        lines = (self._partial_line + text).split("\n")
        self._partial_line = lines.pop()
        for line in lines:
            self._emit_line(line)

    def _emit_line(self, line: str) -> None:
        if self._on_stderr_line is not None:
            self._on_stderr_line(line)


def _wrap(command: str, cwd: str | None, env: Mapping[str, str] | None) -> str:
    """A shell line that starts a new session, prints its pid (= its process group) and then runs
    the command there as a child, so a signal death reads 128+N; setsid -w keeps the channel open
    until the command ends."""
    steps = [f"echo {_PGID_MARK} $$"]
    for name, value in (env or {}).items():
        if not _ENV_NAME.fullmatch(name):
            raise PipelineError(
                f"invalid environment variable name {name!r}", "use letters, digits and underscores only"
            )
        steps.append(f"export {name}={shlex.quote(value)}")
    if cwd is not None:
        steps.append(f"cd {shlex.quote(cwd)} || exit 125")
    steps.append(f"sh -c {shlex.quote(command)}")
    return "exec setsid -w sh -c " + shlex.quote("; ".join(steps))


def _open_channel(client: paramiko.SSHClient) -> paramiko.Channel:
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise PipelineError("the SSH connection to the board is closed", "connect again and retry")
    with ssh_errors("opening a channel to the board"):
        return transport.open_session(timeout=CHANNEL_TIMEOUT_S)


def _execute(channel: paramiko.Channel, wrapped: str, stream: _Streams, *, deadline: float) -> None:
    with ssh_errors("running a command on the board (the SSH connection broke)"):
        channel.exec_command(wrapped)
        channel.shutdown_write()
        _pump_until_done(channel, stream, deadline=deadline)
    if not channel.status_event.is_set():
        raise PipelineError(
            "lost the SSH connection to the board before the command finished", "check the board and retry"
        )


def _pump_until_done(channel: paramiko.Channel, stream: _Streams, *, deadline: float) -> None:
    """Drain both streams until the command has exited and the channel reached end of file."""
    while True:
        raise_if_interrupted()
        _drain(channel, stream)
        if channel.exit_status_ready() and (channel.eof_received or channel.closed):
            _drain(channel, stream)
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _TimedOut
        _wait_for_data(channel, min(POLL_S, remaining))


def _wait_for_data(channel: paramiko.Channel, seconds: float) -> None:
    """Wait for output, or after end of file (when the channel stays readable and select would
    spin) for the exit status."""
    if channel.eof_received:
        channel.status_event.wait(seconds)
    else:
        select.select([channel], [], [], seconds)


def _drain(channel: paramiko.Channel, stream: _Streams) -> None:
    while channel.recv_ready():
        stream.feed_stdout(channel.recv(65536))
    while channel.recv_stderr_ready():
        stream.feed_stderr(channel.recv_stderr(65536))


def _kill_group(client: paramiko.SSHClient, pgid: int | None) -> bool:
    """TERM the command's process group, give it a moment, then KILL what is left.
    False if the board could not be told (connection lost)."""
    if pgid is None:
        return True
    script = (
        f"kill -TERM -{pgid} 2>/dev/null || exit 0; i=0; "
        f"while [ $i -lt {KILL_GRACE_S * 10} ] && kill -0 -{pgid} 2>/dev/null; "
        f"do sleep 0.1; i=$((i+1)); done; kill -KILL -{pgid} 2>/dev/null; exit 0"
    )
    try:
        channel = _open_channel(client)
    except PipelineError:
        return False
    try:
        channel.exec_command("sh -c " + shlex.quote(script))
        deadline = time.monotonic() + CHANNEL_TIMEOUT_S
        while not channel.exit_status_ready() and time.monotonic() < deadline:
            _wait_for_data(channel, POLL_S)
        return channel.exit_status_ready() and channel.recv_exit_status() == 0
    except SSH_ERRORS:
        return False  # the connection is gone: the caller reports that the command may still run
    finally:
        channel.close()


def _short(command: str, limit: int = 60) -> str:
    return command if len(command) <= limit else command[: limit - 3] + "..."
