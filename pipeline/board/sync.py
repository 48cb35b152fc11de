"""Move files to and from the board: uploads atomic, skipping those the board already has.

Files whose sha256 on the board matches are skipped (one `sha256sum` call for all of them).
The others go to a temporary name in the target folder and are renamed over the target only when
complete, so the board never sees a half-written runner or library, even after Ctrl-C.

Over SFTP when the board's SSH server has it; many have not (dropbear, Buildroot and vendor images,
an OpenSSH without a `Subsystem sftp` line), and there the same transfers run over plain exec channels:
`cat > temporary` whose sha256 the board checks before the rename, and `cat` to read a file.
"""

import hashlib
import posixpath
import secrets
import select
import shlex
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import paramiko

from pipeline.board.connection import SSH_ERRORS, ssh_errors
from pipeline.board.remote import run
from pipeline.errors import PipelineError
from pipeline.interrupts import deferred_interrupts, raise_if_interrupted

HASH_TIMEOUT_S = 300.0
READ_TIMEOUT_S = 300.0
CHANNEL_TIMEOUT_S = 10.0
POLL_S = 0.1
_NO_SHA256SUM = 127
_BAD_HASH = 97
_CHUNK = 1 << 16

Progress = Callable[[str, int, int], None]
"""Called as (remote name, bytes sent so far, file size) while a file uploads."""


@dataclass(frozen=True)
class PushReport:
    """What one push did, by remote relative name; bytes_sent counts uploaded files only."""

    uploaded: list[str]
    skipped: list[str]
    bytes_sent: int
    seconds: float


def has_sftp(client: paramiko.SSHClient) -> bool:
    """Whether the board's SSH server runs an SFTP subsystem (a server without one closes the channel).
    Raises EOFError when the connection itself is closed: that is no answer."""
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise EOFError("the SSH connection to the board is closed")
    try:
        transport.open_sftp_client().close()
    except SSH_ERRORS:
        return False
    return True


def push(
    client: paramiko.SSHClient,
    files: Mapping[str, Path],
    remote_dir: str,
    *,
    sftp: bool = True,
    on_progress: Progress | None = None,
) -> PushReport:
    """Make `remote_dir` on the board hold `files` (remote relative name -> local path), over SFTP or,
    with `sftp=False`, over exec channels. `remote_dir` is absolute or relative to the login's home."""
    start = time.monotonic()
    remote_dir = _home_relative(remote_dir)
    for name in files:
        _check_name(name)
    local_hashes = {name: _sha256(path) for name, path in files.items()}
    remote_hashes = _prepare_remote(client, remote_dir, list(files))
    to_send = [name for name in files if remote_hashes.get(name) != local_hashes[name]]
    if to_send and sftp:
        with deferred_interrupts(), _open_sftp(client) as session:
            for name in to_send:
                _upload(session, files[name], posixpath.join(remote_dir, name), name, on_progress)
    elif to_send:
        with deferred_interrupts():
            for name in to_send:
                target = posixpath.join(remote_dir, name)
                _upload_by_cat(client, files[name], target, local_hashes[name], name, on_progress)
    return PushReport(
        uploaded=to_send,
        skipped=[name for name in files if name not in to_send],
        bytes_sent=sum(files[name].stat().st_size for name in to_send),
        seconds=time.monotonic() - start,
    )


def _home_relative(remote_dir: str) -> str:
    """`~/x` means `x`: SFTP and the remote shell both start in the login's home directory."""
    if remote_dir in ("~", "~/"):
        return "."
    return remote_dir.removeprefix("~/")


def _check_name(name: str) -> None:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts:
        raise ValueError(f"remote file name must be relative and stay inside remote_dir: {name!r}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise PipelineError(f"cannot read {path} to push it: {exc.strerror}", "run the build step again") from None
    return digest.hexdigest()


def _prepare_remote(client: paramiko.SSHClient, remote_dir: str, names: list[str]) -> dict[str, str]:
    """Create the target folders and return the sha256 of the target files that exist."""
    folders = sorted({posixpath.dirname(posixpath.join(remote_dir, name)) for name in names})
    quoted_names = " ".join(shlex.quote(name) for name in names)
    script = (
        f"mkdir -p -- {' '.join(shlex.quote(folder) for folder in folders)} || exit 3; "
        f"cd -- {shlex.quote(remote_dir)} || exit 3; "
        f"sha256sum -- {quoted_names} 2>/dev/null; [ $? -ne {_NO_SHA256SUM} ] || exit {_NO_SHA256SUM}; exit 0"
    )
    result = run(client, script, timeout_s=HASH_TIMEOUT_S)
    if result.exit_code == 3:
        raise PipelineError(
            f"cannot create {remote_dir} on the board: {result.stderr.strip()}",
            "set remote_dir in the board profile to a folder the login user can write",
        )
    if result.exit_code == _NO_SHA256SUM:
        raise PipelineError("sha256sum not found on the board", "install coreutils (or busybox) on the board")
    if result.exit_code != 0:
        raise PipelineError(
            f"preparing {remote_dir} on the board failed: {result.stderr.strip()}",
            "check the board's shell and file system",
        )
    return _parse_sha256sum(result.stdout)


def _parse_sha256sum(output: str) -> dict[str, str]:
    """`HASH  NAME` lines; names sha256sum had to escape (leading backslash) are left out, so re-sent."""
    hashes = {}
    for line in output.splitlines():
        digest, sep, name = line.partition(" ")
        if sep and not digest.startswith("\\"):
            hashes[name[1:]] = digest
    return hashes


def _open_sftp(client: paramiko.SSHClient) -> paramiko.SFTPClient:
    with ssh_errors("starting SFTP on the board", "enable the sftp subsystem in the board's sshd_config"):
        return client.open_sftp()


def _upload(sftp: paramiko.SFTPClient, local: Path, target: str, name: str, on_progress: Progress | None) -> None:
    """Write to a temporary name next to the target, keep the local mode, then rename over it."""
    folder, base = posixpath.split(target)
    temp = posixpath.join(folder, f".{base}.part-{secrets.token_hex(4)}")
    size = local.stat().st_size

    def callback(sent: int, _total: int) -> None:
        if on_progress is not None:
            on_progress(name, sent, size)
        raise_if_interrupted()

    try:
        with ssh_errors(
            f"uploading {name} to {target} on the board",
            "check free space and permissions on the board, then push again",
        ):
            sftp.put(str(local), temp, callback=callback, confirm=True)
            sftp.chmod(temp, local.stat().st_mode & 0o777)
            sftp.posix_rename(temp, target)
    except BaseException:
        _remove_quietly(sftp, temp)
        raise


def _remove_quietly(sftp: paramiko.SFTPClient, path: str) -> None:
    """Best effort: the upload failed and its error is what matters; a missing temp is fine."""
    with suppress(*SSH_ERRORS):
        sftp.remove(path)


def _upload_by_cat(
    client: paramiko.SSHClient, local: Path, target: str, sha256: str, name: str, on_progress: Progress | None
) -> None:
    """SFTP's atomic upload over one exec channel: `cat` into a temporary name next to the target, then
    the board checks its sha256 and only a complete, intact file is renamed over the target; anything
    else (a broken connection, Ctrl-C, a full disk) removes the temporary file."""
    folder, base = posixpath.split(target)
    temp = shlex.quote(posixpath.join(folder, f".{base}.part-{secrets.token_hex(4)}"))
    mode = f"{local.stat().st_mode & 0o777:o}"
    script = (
        f"trap 'rm -f {temp}' EXIT; cat > {temp} || exit 3; "
        f'[ "$(sha256sum < {temp} | cut -d" " -f1)" = {sha256} ] || exit {_BAD_HASH}; '
        f"chmod {mode} {temp} && mv -f {temp} {shlex.quote(target)} || exit 3"
    )
    size, sent = local.stat().st_size, 0
    fix = "check free space and permissions on the board, then push again"
    channel = _exec_channel(client, script)
    try:
        with ssh_errors(f"uploading {name} to {target} on the board", fix), local.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                channel.sendall(chunk)
                sent += len(chunk)
                if on_progress is not None:
                    on_progress(name, sent, size)
                raise_if_interrupted()
            channel.shutdown_write()
            code, _, stderr = _finish(channel, HASH_TIMEOUT_S)
    finally:
        channel.close()
    if code == _BAD_HASH:
        raise PipelineError(f"{name} arrived damaged on the board (sha256 differs)", "push again")
    if code != 0:
        raise PipelineError(f"uploading {name} to {target} on the board failed: {stderr.strip()[-200:]}", fix)


def read_file(client: paramiko.SSHClient, path: str, *, sftp: bool = True) -> bytes:
    """A file's bytes from the board, over SFTP or, with `sftp=False`, `cat` on an exec channel."""
    with ssh_errors(f"reading {path} from the board"):
        if sftp:
            with client.open_sftp() as session, session.open(path, "rb") as stream:
                return bytes(stream.read())
        channel = _exec_channel(client, f"cat -- {shlex.quote(path)}")
        try:
            channel.shutdown_write()
            code, data, stderr = _finish(channel, READ_TIMEOUT_S)
        finally:
            channel.close()
    if code != 0:
        raise PipelineError(f"reading {path} from the board failed: {stderr.strip()[-200:]}", "check the path")
    return data


def _exec_channel(client: paramiko.SSHClient, script: str) -> paramiko.Channel:
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise PipelineError("the SSH connection to the board is closed", "connect again and retry")
    with ssh_errors("opening a channel to the board"):
        channel = transport.open_session(timeout=CHANNEL_TIMEOUT_S)
        channel.exec_command("sh -c " + shlex.quote(script))
    return channel


def _finish(channel: paramiko.Channel, timeout_s: float) -> tuple[int, bytes, str]:
    """Drain stdout (bytes) and stderr until the command exits; its exit code, stdout and stderr."""
    out, err = bytearray(), bytearray()
    deadline = time.monotonic() + timeout_s
    while True:
        raise_if_interrupted()
        while channel.recv_ready():
            out += channel.recv(_CHUNK)
        while channel.recv_stderr_ready():
            err += channel.recv_stderr(_CHUNK)
        if channel.exit_status_ready() and (channel.eof_received or channel.closed):
            while channel.recv_ready():
                out += channel.recv(_CHUNK)
            return channel.recv_exit_status(), bytes(out), err.decode(errors="replace")
        if time.monotonic() > deadline:
            raise PipelineError(f"a transfer on the board took longer than {timeout_s:g} s", "check the board")
        if channel.eof_received:
            channel.status_event.wait(POLL_S)
        else:
            select.select([channel], [], [], POLL_S)
