"""Shared fixtures. The embedded board sshd runs once for the whole session; everything that
deploys inside the session reuses it."""

from collections.abc import Iterator

import paramiko
import pytest

from pipeline.board.connection import connect
from pipeline.board.profile import load_board
from pipeline.board.sshd import SshEndpoint, board_endpoint


@pytest.fixture(scope="session")
def embedded_endpoint() -> Iterator[SshEndpoint]:
    """The `local` profile's loopback board, served by the pipeline's own sshd."""
    with board_endpoint(load_board("local").ssh) as endpoint:
        yield endpoint


@pytest.fixture
def ssh_client(embedded_endpoint: SshEndpoint) -> Iterator[paramiko.SSHClient]:
    """A verified, logged-in connection to the embedded board."""
    with connect(embedded_endpoint) as client:
        yield client


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the embedded board belongs to the slow tier, wherever it is defined."""
    for item in items:
        if {"embedded_endpoint", "ssh_client"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.board)
