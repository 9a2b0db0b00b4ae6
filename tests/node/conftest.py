"""Fixtures of the node tests: a target network namespace and a real keeper process.

These tests need root (or CAP_NET_ADMIN + CAP_SYS_ADMIN), nft, tc, ip, nsenter and
unshare; without them they fail with a message saying what is missing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shakeout.agent.node.keeper_client import Keeper
from tests.node.lab import Netns, create_netns, delete_netns

TOOLS = ("nft", "tc", "ip", "nsenter", "unshare")


@pytest.fixture(autouse=True, scope="session")
def _node_prerequisites() -> None:
    if os.geteuid() != 0:
        pytest.fail("tests/node needs root: it creates network namespaces and nftables rules")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"tests/node needs {', '.join(missing)} (apt-get install nftables iproute2)")


@pytest.fixture
def netns() -> Iterator[Netns]:
    created = create_netns()
    yield created
    delete_netns(created)


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    return tmp_path / "journal.json"


@pytest.fixture
async def keeper(journal: Path) -> AsyncIterator[Keeper]:
    started = await Keeper.start(journal=journal, deadline=30, locator="netns-annotation")
    yield started
    if started.running:
        await started.stop()  # fails the test if anything could not be rolled back
