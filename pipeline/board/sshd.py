"""The embedded board host: a real OpenSSH server the pipeline starts itself on loopback.

Emulated and `local` boards go through exactly the same SSH path as a real board (host key
checked, key login, SFTP, remote commands), so the deploy code has no special cases. The server
uses its own keys and config under CACHE_DIR/sshd and never touches the system's sshd.

Several pipeline processes may share one server (a test session and the deploys inside it, or
two concurrent runs): each holds a shared lock while it uses the server, and the last one out
stops it.
"""

import fcntl
import getpass
import ipaddress
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pipeline.board.profile import SshSettings
from pipeline.errors import PipelineError
from pipeline.paths import CACHE_DIR

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = "ssh-keygen"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
POLL_S = 0.05
PORT_VARIABLE = "PIPELINE_SSHD_PORT"


@dataclass(frozen=True)
class SshEndpoint:
    """Everything needed to open a verified SSH connection to one board."""

    host: str
    port: int
    user: str
    key_file: Path
    known_hosts: Path
    connect_timeout_s: float


@dataclass(frozen=True)
class _State:
    """Where one embedded server keeps its files: keys shared, runtime files per port."""

    root: Path
    port: int

    @property
    def host_key(self) -> Path:
        return self.root / "host_ed25519"

    @property
    def client_key(self) -> Path:
        return self.root / "client_ed25519"

    @property
    def authorized_keys(self) -> Path:
        return self.root / "authorized_keys"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def port_dir(self) -> Path:
        return self.root / f"port-{self.port}"

    @property
    def config(self) -> Path:
        return self.port_dir / "sshd_config"

    @property
    def pid_file(self) -> Path:
        return self.port_dir / "sshd.pid"

    @property
    def log(self) -> Path:
        return self.port_dir / "sshd.log"

    @property
    def known_hosts(self) -> Path:
        return self.port_dir / "known_hosts"

    @property
    def users(self) -> Path:
        return self.port_dir / "users.lock"


def _embedded(settings: SshSettings) -> SshSettings:
    """PIPELINE_SSHD_PORT moves the embedded board to another port, so two checkouts (or CI jobs)
    on one machine each get their own server."""
    port = os.environ.get(PORT_VARIABLE)
    if port is None:
        return settings
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise PipelineError(f"{PORT_VARIABLE}={port} is not a TCP port", f"set {PORT_VARIABLE} to e.g. 2222")
    return settings.model_copy(update={"port": int(port)})


def _state_for(settings: SshSettings) -> _State:
    return _State(CACHE_DIR / "sshd", settings.port)


def endpoint_for(settings: SshSettings) -> SshEndpoint:
    """The endpoint a profile describes; for embedded boards, the pipeline's own loopback server
    (which board_endpoint must have started)."""
    if settings.embedded:
        settings = _embedded(settings)
        state = _state_for(settings)
        return SshEndpoint(
            settings.host,
            settings.port,
            getpass.getuser(),
            state.client_key,
            state.known_hosts,
            settings.connect_timeout_s,
        )
    user, key_file, known_hosts = settings.user, settings.key_file, settings.known_hosts
    if user is None or key_file is None or known_hosts is None:
        missing = [name for name in ("user", "key_file", "known_hosts") if getattr(settings, name) is None]
        raise PipelineError(
            f"board profile does not set {', '.join(f'ssh.{name}' for name in missing)}",
            "fill them in, or use `embedded: true` for the pipeline's loopback board",
        )
    if not key_file.is_file():
        raise PipelineError(
            f"SSH key file {key_file} not found",
            "set ssh.key_file in the board profile to your private key, e.g. ~/.ssh/id_ed25519",
        )
    return SshEndpoint(settings.host, settings.port, user, key_file, known_hosts, settings.connect_timeout_s)


@contextmanager
def board_endpoint(settings: SshSettings, *, sftp: bool = True) -> Iterator[SshEndpoint]:
    """The board's endpoint for the duration of the block; an embedded board's sshd is started
    (or a running one reused) and stopped again when its last user leaves. `sftp=False` starts it
    without its SFTP subsystem, as dropbear and many vendor images run (a test's board)."""
    if not settings.embedded:
        yield endpoint_for(settings)
        return
    settings = _embedded(settings)
    _check_loopback(settings.host)
    state = _state_for(settings)
    with _exclusive(state.lock):
        _prepare(state, settings.host)
        started = None if _running_pid(state, settings.host) else _start(state, settings.host, sftp)
        users = _join_users(state)
    try:
        yield endpoint_for(settings)
    finally:
        users.close()
        with _exclusive(state.lock):
            _stop_if_last(state, settings.host, started)


def _check_loopback(host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise PipelineError(
            f"embedded board host {host} is not a loopback address", "set ssh.host: 127.0.0.1 in the board profile"
        )


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Serialise setup, start and stop between pipeline processes sharing the state dir."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _join_users(state: _State) -> IO[str]:
    """Register this process as a user of the server; the lock goes away with the file or the process."""
    handle = state.users.open("a")
    fcntl.flock(handle, fcntl.LOCK_SH)
    return handle


def _prepare(state: _State, host: str) -> None:
    """Keys, authorized_keys and known_hosts; keys are generated once and then reused."""
    if not SSHD.is_file():
        raise PipelineError("OpenSSH server not installed", "run scripts/install.sh")
    state.port_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    state.root.chmod(0o700)
    state.port_dir.chmod(0o700)
    for key in (state.host_key, state.client_key):
        _ensure_key(key)
    _write(state.authorized_keys, _public_key(state.client_key) + "\n")
    host_name = host if state.port == 22 else f"[{host}]:{state.port}"
    _write(state.known_hosts, f"{host_name} {_public_key(state.host_key)}\n")


def _ensure_key(path: Path) -> None:
    if path.is_file() and path.with_suffix(".pub").is_file():
        return
    for stale in (path, path.with_suffix(".pub")):
        stale.unlink(missing_ok=True)
    command = [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", f"tvm-pipeline {path.name}", "-f", str(path)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise PipelineError("ssh-keygen not found (OpenSSH client not installed)", "run scripts/install.sh") from None
    if result.returncode != 0:
        raise PipelineError(
            f"ssh-keygen failed for {path}: {result.stderr.strip()}", f"remove {path.parent} and try again"
        )


def _public_key(private_key: Path) -> str:
    """`type base64` of the key, without the comment."""
    return " ".join(private_key.with_suffix(".pub").read_text().split()[:2])


def _write(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
        path.chmod(0o600)


def _config_text(state: _State, host: str, sftp: bool) -> str:
    # StrictModes off: the state dir is private (0700, files 0600) but may live below a shared
    # folder such as /tmp, whose modes sshd's path check would reject.
    return "\n".join(
        [
            f"ListenAddress {host}",
            f"Port {state.port}",
            f"HostKey {state.host_key}",
            f"PidFile {state.pid_file}",
            f"AuthorizedKeysFile {state.authorized_keys}",
            f"AllowUsers {getpass.getuser()}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "StrictModes no",
            # Tuning's TVM RPC travels in forwards between the two loopbacks (pipeline/board/forwards.py);
            # nothing else may be forwarded, and a remote forward never listens beyond loopback.
            "AllowTcpForwarding yes",
            "GatewayPorts no",
            "PermitOpen 127.0.0.1:*",
            "PermitListen 127.0.0.1:*",
            "AllowAgentForwarding no",
            "X11Forwarding no",
            "PermitTunnel no",
            *(["Subsystem sftp internal-sftp"] if sftp else []),
            "",
        ]
    )


def _running_pid(state: _State, host: str) -> int | None:
    """The pid of this state dir's sshd if it is alive and answering, else None."""
    try:
        pid = int(state.pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    if str(state.config).encode() not in cmdline or not _port_answers(host, state.port):
        return None
    return pid


def _port_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _start(state: _State, host: str, sftp: bool) -> subprocess.Popen[bytes]:
    if _port_answers(host, state.port):
        raise PipelineError(
            f"port {state.port} on {host} is taken by another program",
            "stop that program or change ssh.port in the board profile",
        )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    _write(state.config, _config_text(state, host, sftp))  # a running server keeps the config it started with
    state.pid_file.unlink(missing_ok=True)
    with state.log.open("w") as log:
        process = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(state.config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        _wait_ready(state, host, process)
    except BaseException:
        _stop(process.pid, process)
        raise
    return process


def _wait_ready(state: _State, host: str, process: subprocess.Popen[bytes]) -> None:
    """sshd writes its pid file after it has bound the port; then the port must answer."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PipelineError(
                f"embedded sshd exited at start: {_log_summary(state.log)}", f"fix the cause (full log: {state.log})"
            )
        if _pid_in_file(state.pid_file) == process.pid and _port_answers(host, state.port):
            return
        time.sleep(POLL_S)
    raise PipelineError(
        f"embedded sshd did not answer on {host}:{state.port} within {START_TIMEOUT_S:g} s", f"see {state.log}"
    )


def _pid_in_file(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _log_summary(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return "; ".join(lines)[-300:] or "no output"


def _stop_if_last(state: _State, host: str, started: subprocess.Popen[bytes] | None) -> None:
    """Stop the server unless another process still holds a user lock on it."""
    with state.users.open("a") as probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        pid = started.pid if started is not None and started.poll() is None else _running_pid(state, host)
        if pid is not None:
            _stop(pid, started if started is not None and started.pid == pid else None)


def _stop(pid: int, process: subprocess.Popen[bytes] | None) -> None:
    """TERM, a bounded wait, then KILL; reaps the process if it is our child."""
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if process is not None:
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    if _alive(pid):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running, not a zombie: a zombie's cmdline is empty."""
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False
