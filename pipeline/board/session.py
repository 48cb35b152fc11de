"""A board session: the profile together with its open, verified SSH connection, after Fabric's
`Connection`. Every command the pipeline sends to a board is built here, so the profile's cores
(`taskset`), threads (`TVM_NUM_THREADS`) and command prefix (qemu for the emulated board) are applied
the same way to the runner, the tuning server and the board Python."""

import shlex
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import paramiko

from pipeline.board import remote, sync
from pipeline.board.connection import connect, ssh_errors
from pipeline.board.profile import BoardProfile
from pipeline.board.sshd import SshEndpoint, board_endpoint


class Board:
    """One board to talk to; open it with `open_board(profile)`."""

    def __init__(self, profile: BoardProfile, endpoint: SshEndpoint, client: paramiko.SSHClient) -> None:
        self.profile = profile
        self.endpoint = endpoint
        self.client = client
        self._sftp: bool | None = None

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def remote_dir(self) -> str:
        return self.profile.remote_dir

    def run(
        self,
        command: str,
        *,
        timeout_s: float,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        on_stderr_line: remote.LineCallback | None = None,
    ) -> remote.CommandResult:
        """A shell command as it is, with a hard timeout; a non-zero exit is returned, not raised."""
        return remote.run(self.client, command, timeout_s=timeout_s, cwd=cwd, env=env, on_stderr_line=on_stderr_line)

    def run_runtime(
        self,
        program: str,
        args: Sequence[str],
        *,
        timeout_s: float,
        cwd: str | None = None,
        before: str = "",
        on_stderr_line: remote.LineCallback | None = None,
    ) -> remote.CommandResult:
        """Run a program of the board's architecture as a deploy runs it: on the profile's cores,
        with its threads, under its command prefix. `before` is a shell step to run first."""
        command = self.runtime_command(program, args)
        return self.run(
            f"{before} && {command}" if before else command,
            timeout_s=timeout_s,
            cwd=cwd,
            env=self.runtime_env(),
            on_stderr_line=on_stderr_line,
        )

    def background_runtime(
        self, program: str, args: Sequence[str], *, prefix: bool = True
    ) -> AbstractContextManager[remote.Background]:
        """Keep a program of the board's architecture running (the tuning server) while the block runs;
        `prefix=False` for a launcher that applies the command prefix itself."""
        command = "exec " + self.runtime_command(program, args, prefix=prefix)
        return remote.background(self.client, command, env=self.runtime_env())

    def runtime_command(self, program: str, args: Sequence[str] = (), *, prefix: bool = True) -> str:
        """`taskset -c CORES PREFIX PROGRAM ARGS`: `program` is a shell word already quoted as needed."""
        words = []
        if self.profile.cpu_affinity:
            words += ["taskset", "-c", ",".join(map(str, self.profile.cpu_affinity))]
        if prefix:
            words += shlex.split(self.profile.command_prefix)
        return " ".join([*map(shlex.quote, words), program, *map(shlex.quote, args)])

    def prefixed(self, program: str) -> str:
        """The program under the profile's command prefix only (no cores): for a launcher script."""
        prefix = self.profile.command_prefix.strip()
        return f"{prefix} {program}" if prefix else program

    def runtime_env(self) -> dict[str, str]:
        return {"TVM_NUM_THREADS": str(self.profile.threads)}

    def push(
        self, files: Mapping[str, Path], *, remote_dir: str | None = None, on_progress: sync.Progress | None = None
    ) -> sync.PushReport:
        """Make the board's folder (default: the profile's remote_dir) hold `files`, atomically."""
        remote_dir = remote_dir or self.remote_dir
        with ssh_errors(f"pushing files to {remote_dir} on the board"):
            sftp = self.has_sftp()
        return sync.push(self.client, files, remote_dir, sftp=sftp, on_progress=on_progress)

    def read_file(self, path: str) -> bytes:
        """A file's bytes from the board (over SFTP, or `cat` where the board has no SFTP)."""
        with ssh_errors(f"reading {path} from the board"):
            sftp = self.has_sftp()
        return sync.read_file(self.client, path, sftp=sftp)

    def has_sftp(self) -> bool:
        """Asked once per connection: whether transfers can use SFTP or must fall back to exec channels
        (EOFError when the connection is closed)."""
        if self._sftp is None:
            self._sftp = sync.has_sftp(self.client)
        return self._sftp


@contextmanager
def open_board(profile: BoardProfile) -> Iterator[Board]:
    """Connect to the board (starting the embedded sshd first for an embedded profile); closed after the block."""
    with board_endpoint(profile.ssh) as endpoint, connect(endpoint) as client:
        yield Board(profile, endpoint, client)
