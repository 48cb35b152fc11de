"""TCP forwards inside the board's verified SSH connection, after Fabric's `forward_local` and
`forward_remote`: a service on one end's loopback reaches the other end's loopback without opening a
port on any network. Tuning uses both: the board's RPC server registers with this host's tracker
through a remote forward, and the runner reaches that server through a local forward.

Every port is chosen by the side that listens (port 0), so it is free by construction and two runs at
once never collide; both ends listen on 127.0.0.1 only. Leaving the block closes the listener, cancels
the remote forward and closes every tunnel, also on an error or Ctrl-C.
"""

import select
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import paramiko

from pipeline.board.connection import SSH_ERRORS, ssh_errors
from pipeline.errors import PipelineError

LOOPBACK = "127.0.0.1"
CHANNEL_TIMEOUT_S = 10.0
CHUNK = 65536
POLL_S = 0.2
FORWARDING_FIX = "set `AllowTcpForwarding yes` (or `local`/`remote` as needed) in the board's sshd_config"


class _Tunnels:
    """The open tunnels of one forward: each copies bytes both ways between a socket and a channel."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, sock: socket.socket, channel: paramiko.Channel) -> None:
        thread = threading.Thread(target=self._pipe, args=(sock, channel), name=self._name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=CHANNEL_TIMEOUT_S)

    def _pipe(self, sock: socket.socket, channel: paramiko.Channel) -> None:
        """Until either side closes or the forward ends; a broken connection just ends the tunnel
        (the RPC session over it fails and MetaSchedule counts that measurement as failed)."""
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([sock, channel], [], [], POLL_S)
                if sock in readable:
                    data = sock.recv(CHUNK)
                    if not data:
                        break
                    channel.sendall(data)
                if channel in readable:
                    data = channel.recv(CHUNK)
                    if not data:
                        break
                    sock.sendall(data)
        except SSH_ERRORS:
            pass
        finally:
            channel.close()
            sock.close()


def _transport(client: paramiko.SSHClient) -> paramiko.Transport:
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise PipelineError("the SSH connection to the board is closed", "connect again and retry")
    return transport


class LocalForward:
    """This host's 127.0.0.1:`port` -> the board's 127.0.0.1:`target`. The port exists before the
    target is known (a server told to announce it starts afterwards); until `target` is set,
    connections are refused."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.target: int | None = None


@contextmanager
def forward_local(client: paramiko.SSHClient) -> Iterator[LocalForward]:
    """Listen on this host's loopback (a free port) and carry each connection to the board's loopback
    port `forward.target` over a direct-tcpip channel."""
    transport = _transport(client)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOOPBACK, 0))
    listener.listen(8)
    forward = LocalForward(int(listener.getsockname()[1]))
    tunnels = _Tunnels(f"local forward {forward.port}")
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            readable, _, _ = select.select([listener], [], [], POLL_S)
            if not readable:
                continue
            with suppress(OSError):
                sock, origin = listener.accept()
                if forward.target is None:
                    sock.close()
                    continue
                try:
                    channel = transport.open_channel(
                        "direct-tcpip", (LOOPBACK, forward.target), origin, timeout=CHANNEL_TIMEOUT_S
                    )
                except SSH_ERRORS:
                    sock.close()  # the client sees a closed connection, as from a refused port
                    continue
                tunnels.start(sock, channel)

    accepting = threading.Thread(target=accept, name=f"local forward {forward.port}", daemon=True)
    accepting.start()
    try:
        yield forward
    finally:
        stop.set()
        accepting.join(timeout=CHANNEL_TIMEOUT_S)
        listener.close()
        tunnels.close()


@contextmanager
def forward_remote(client: paramiko.SSHClient, local_port: int) -> Iterator[int]:
    """Ask the board's sshd to listen on the board's loopback (a free port, returned) and carry each
    connection to this host's 127.0.0.1:`local_port`."""
    transport = _transport(client)
    tunnels = _Tunnels(f"remote forward to {local_port}")

    def arrived(channel: paramiko.Channel, origin: tuple[str, int], server: tuple[str, int]) -> None:
        try:
            sock = socket.create_connection((LOOPBACK, local_port), timeout=CHANNEL_TIMEOUT_S)
        except OSError:
            channel.close()
            return
        sock.settimeout(None)
        tunnels.start(sock, channel)

    with ssh_errors("asking the board's sshd to forward a port on its loopback to this host", FORWARDING_FIX):
        port = int(transport.request_port_forward(LOOPBACK, 0, handler=arrived))
    try:
        yield port
    finally:
        with suppress(*SSH_ERRORS):
            transport.cancel_port_forward(LOOPBACK, port)
        tunnels.close()


def round_trip(client: paramiko.SSHClient) -> None:
    """Prove both directions tuning needs, opening no port on any network: bytes sent through a local
    forward to the board's loopback come back to this host through a remote forward."""
    probe = b"tvm-pipeline-forward-probe"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(1)
        listener.settimeout(CHANNEL_TIMEOUT_S)
        with forward_remote(client, int(listener.getsockname()[1])) as board_port:
            with ssh_errors("opening a forward to the board's loopback", FORWARDING_FIX):
                channel = _transport(client).open_channel(
                    "direct-tcpip", (LOOPBACK, board_port), (LOOPBACK, 0), timeout=CHANNEL_TIMEOUT_S
                )
            try:
                with ssh_errors("sending through the forwards", FORWARDING_FIX):
                    channel.sendall(probe)
                try:
                    received = _receive(listener, len(probe))
                except OSError as exc:  # a timeout: the remote forward did not carry it
                    raise PipelineError(
                        f"nothing came back through the board's remote forward ({exc or 'timed out'})",
                        FORWARDING_FIX,
                    ) from None
            finally:
                channel.close()
    if received != probe:
        raise PipelineError("the board's forwards garbled a test message", FORWARDING_FIX)


def _receive(listener: socket.socket, size: int) -> bytes:
    arrived, _ = listener.accept()
    with arrived:
        arrived.settimeout(CHANNEL_TIMEOUT_S)
        received = b""
        while len(received) < size and (chunk := arrived.recv(CHUNK)):
            received += chunk
        return received
