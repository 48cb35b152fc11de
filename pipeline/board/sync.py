"""Upload files to the board atomically, skipping those the board already has.

Files whose sha256 on the board matches are skipped (one `sha256sum` call for all of them).
The others go to a temporary name in the target folder and are renamed over the target only when
complete, so the board never sees a half-written runner or library, even after Ctrl-C.
"""

import hashlib
import posixpath
import secrets
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
_NO_SHA256SUM = 127

Progress = Callable[[str, int, int], None]
"""Called as (remote name, bytes sent so far, file size) while a file uploads."""


@dataclass(frozen=True)
class PushReport:
    """What one push did, by remote relative name; bytes_sent counts uploaded files only."""

    uploaded: list[str]
    skipped: list[str]
    bytes_sent: int
    seconds: float


def push(
    client: paramiko.SSHClient, files: Mapping[str, Path], remote_dir: str, *, on_progress: Progress | None = None
) -> PushReport:
    """Make `remote_dir` on the board hold `files` (remote relative name -> local path).
    `remote_dir` is absolute or relative to the login's home directory."""
    start = time.monotonic()
    remote_dir = _home_relative(remote_dir)
    for name in files:
        _check_name(name)
    local_hashes = {name: _sha256(path) for name, path in files.items()}
    remote_hashes = _prepare_remote(client, remote_dir, list(files))
    to_send = [name for name in files if remote_hashes.get(name) != local_hashes[name]]
    if to_send:
        with deferred_interrupts(), _open_sftp(client) as sftp:
            for name in to_send:
                _upload(sftp, files[name], posixpath.join(remote_dir, name), name, on_progress)
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
