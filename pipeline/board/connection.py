"""Open a verified SSH connection to a board: host key checked against a known_hosts file, key login.
This module is also the one place where paramiko's and the socket's errors become PipelineErrors.

Unlike Fabric's defaults, an unknown or changed host key is always refused. The returned
paramiko.SSHClient is a context manager: `with connect(endpoint) as client: ...` closes it.
"""

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import paramiko

from pipeline.board.sshd import SshEndpoint
from pipeline.errors import PipelineError

# paramiko logs transport failures with tracebacks at ERROR; without a handler Python would print
# them to stderr. The failures are raised as PipelineError instead; configured logging still sees them.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


class _UnknownHostKey(paramiko.SSHException):
    """The server offered a key for a host that has no entry in known_hosts."""

    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(f"{hostname} not in known_hosts")
        self.hostname = hostname
        self.key = key


class _Reject(paramiko.RejectPolicy):
    """paramiko's RejectPolicy, raising a distinct error so it can be reported precisely."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _UnknownHostKey(hostname, key)


def connect(endpoint: SshEndpoint) -> paramiko.SSHClient:
    """A logged-in client, or a PipelineError that names the problem and the fix."""
    _check_key_file(endpoint)
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(_Reject())
    try:
        client.load_host_keys(str(endpoint.known_hosts))
    except OSError as exc:
        raise PipelineError(
            f"cannot read known_hosts file {endpoint.known_hosts}: {exc.strerror}",
            f"add the board's verified host key, e.g. {_keyscan(endpoint)}",
        ) from None
    timeout = endpoint.connect_timeout_s
    try:
        client.connect(
            endpoint.host,
            port=endpoint.port,
            username=endpoint.user,
            key_filename=str(endpoint.key_file),
            look_for_keys=False,
            allow_agent=True,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            channel_timeout=timeout,
        )
    except SSH_ERRORS as exc:
        client.close()
        raise _explain(exc, endpoint) from None
    return client


SSH_ERRORS = (paramiko.SSHException, OSError, EOFError)


@contextmanager
def ssh_errors(doing: str, fix: str = "check the board and retry") -> Iterator[None]:
    """Inside the block, a failure of the SSH connection or of SFTP ends in one PipelineError:
    `doing` says what failed ("uploading model.so"), `fix` what to do about it."""
    try:
        yield
    except SSH_ERRORS as exc:
        raise PipelineError(f"{doing} failed: {exc or type(exc).__name__}", fix) from None


def _check_key_file(endpoint: SshEndpoint) -> None:
    """Fail early on a key paramiko cannot use; an encrypted key is fine if ssh-agent holds it."""
    fix = "set ssh.key_file in the board profile to a readable private key (not the .pub file)"
    try:
        paramiko.PKey.from_path(endpoint.key_file)
    except paramiko.PasswordRequiredException:
        return
    except OSError as exc:
        raise PipelineError(f"cannot read SSH key file {endpoint.key_file}: {exc.strerror}", fix) from None
    except (paramiko.SSHException, ValueError) as exc:
        raise PipelineError(f"SSH key file {endpoint.key_file} is not a usable private key: {exc}", fix) from None


def _explain(exc: OSError | EOFError | paramiko.SSHException, endpoint: SshEndpoint) -> PipelineError:
    """Turn a paramiko or socket failure into one line naming the problem and the fix."""
    where = f"{endpoint.host}:{endpoint.port}"
    name = _known_hosts_name(endpoint)
    if isinstance(exc, _UnknownHostKey):
        return PipelineError(
            f"host key of {name} ({exc.key.get_name()} {exc.key.fingerprint}) is not in {endpoint.known_hosts}",
            f"verify the board's fingerprint and add it, e.g. {_keyscan(endpoint)}",
        )
    if isinstance(exc, paramiko.BadHostKeyException):
        return PipelineError(
            f"HOST KEY MISMATCH for {name}: the board's key changed (offered {exc.key.fingerprint}, "
            f"{endpoint.known_hosts} expects {exc.expected_key.fingerprint})",
            f"if the change is expected, remove the old line from {endpoint.known_hosts}; otherwise do not connect",
        )
    if isinstance(exc, paramiko.PasswordRequiredException):
        return PipelineError(
            f"SSH key file {endpoint.key_file} is encrypted",
            f"load it into ssh-agent (ssh-add {endpoint.key_file}) or use an unencrypted deploy key",
        )
    if isinstance(exc, paramiko.AuthenticationException):
        return PipelineError(
            f"login as {endpoint.user} on {where} refused: {exc}",
            "check ssh.user and ssh.key_file, and that the key's public half is in ~/.ssh/authorized_keys on the board",
        )
    if isinstance(exc, OSError):
        return PipelineError(
            f"cannot reach board at {where}: {_reason(exc)}", "check the board is on and ssh.host/port in the profile"
        )
    return PipelineError(
        f"SSH handshake with {where} failed: {exc or type(exc).__name__}",
        f"check that an SSH server (not another service) listens on {where}",
    )


def _reason(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host name ({exc.strerror})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return "; ".join(sorted({error.strerror or str(error) for error in exc.errors.values()})).lower()
    return exc.strerror or str(exc)


def _known_hosts_name(endpoint: SshEndpoint) -> str:
    """The name known_hosts files use: bare host on port 22, else [host]:port."""
    return endpoint.host if endpoint.port == 22 else f"[{endpoint.host}]:{endpoint.port}"


def _keyscan(endpoint: SshEndpoint) -> str:
    return f"ssh-keyscan -p {endpoint.port} {endpoint.host} >> {endpoint.known_hosts}"
