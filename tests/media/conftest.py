"""The media poller, running for one test (the runtime runs it as its ``media`` step)."""

from __future__ import annotations

import pytest
import trio

from voicecalld.media.poller import Poller


@pytest.fixture
async def poller(nursery: trio.Nursery) -> Poller:
    poller = Poller()
    await nursery.start(poller.run)
    return poller
