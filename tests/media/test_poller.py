"""The media poller: one task calling back every readable socket, over real socket pairs."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from tests.support import wait_until
from voicecalld.media.poller import Poller


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    """Connected socket pairs a test makes with :func:`socket_pair`, closed after it."""
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for ours, theirs in made:
        ours.close()
        theirs.close()


def socket_pair(pairs: list[tuple[socket.socket, socket.socket]]) -> tuple[socket.socket, ...]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    pairs.append((ours, theirs))
    return ours, theirs


async def test_a_readable_socket_is_called_back_until_unwatched(
    pairs: list[tuple[socket.socket, socket.socket]], poller: Poller
) -> None:
    ours, theirs = socket_pair(pairs)
    received = list[bytes]()
    poller.watch(ours, lambda: received.append(ours.recv(4096)))
    theirs.send(b"one")
    await wait_until(lambda: received == [b"one"])
    poller.unwatch(ours)
    theirs.send(b"two")
    await trio.testing.wait_all_tasks_blocked()
    assert received == [b"one"]
    assert len(poller) == 0


async def test_what_a_callback_leaves_unread_is_reported_again(
    pairs: list[tuple[socket.socket, socket.socket]], poller: Poller
) -> None:
    """Level-triggered: a callback may read a little, and is called while bytes are left."""
    ours, theirs = socket_pair(pairs)
    received = list[bytes]()
    poller.watch(ours, lambda: received.append(ours.recv(1)))
    theirs.send(b"abcde")
    await wait_until(lambda: b"".join(received) == b"abcde")
    assert len(received) == 5
    poller.unwatch(ours)


async def test_other_tasks_run_between_passes(
    pairs: list[tuple[socket.socket, socket.socket]], poller: Poller
) -> None:
    """A socket that stays readable (nobody reads it) does not starve the other tasks."""
    ours, theirs = socket_pair(pairs)
    passes = [0]

    def never_reads() -> None:
        passes[0] += 1

    poller.watch(ours, never_reads)
    theirs.send(b"x")
    for _ in range(20):
        await trio.lowlevel.checkpoint()
    assert 5 <= passes[0] <= 21  # about one pass per scheduling round
    poller.unwatch(ours)


async def test_a_callback_that_raises_is_logged_and_dropped(
    pairs: list[tuple[socket.socket, socket.socket]],
    caplog: pytest.LogCaptureFixture,
    poller: Poller,
) -> None:
    broken, broken_peer = socket_pair(pairs)
    fine, fine_peer = socket_pair(pairs)
    received = list[bytes]()

    def bug() -> None:
        raise RuntimeError("a bug in one connection")

    poller.watch(broken, bug)
    poller.watch(fine, lambda: received.append(fine.recv(4096)))
    broken_peer.send(b"boom")
    await wait_until(lambda: len(poller) == 1)
    fine_peer.send(b"still here")
    await wait_until(lambda: received == [b"still here"])
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage() == "media socket callback failed; the socket is dropped"
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)
    poller.unwatch(fine)
    poller.unwatch(broken)  # no longer watched: nothing happens


async def test_a_socket_unwatched_during_a_pass_is_not_called_back(
    pairs: list[tuple[socket.socket, socket.socket]], poller: Poller
) -> None:
    first, first_peer = socket_pair(pairs)
    second, second_peer = socket_pair(pairs)
    called = list[str]()

    def unwatch_the_other(name: str, other: socket.socket) -> None:
        called.append(name)
        poller.unwatch(other)
        poller.unwatch(first if other is second else second)

    poller.watch(first, lambda: unwatch_the_other("first", second))
    poller.watch(second, lambda: unwatch_the_other("second", first))
    first_peer.send(b"x")
    second_peer.send(b"x")
    await wait_until(lambda: len(poller) == 0)
    await trio.testing.wait_all_tasks_blocked()
    assert len(called) == 1  # both were ready in the same pass; the first called dropped both


async def test_it_watches_only_while_it_runs(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    """The runtime runs it as its ``media`` step; when the step ends, nothing is watched."""
    ours, theirs = socket_pair(pairs)
    poller, received = Poller(), list[bytes]()
    with pytest.raises(RuntimeError, match="not running"):
        poller.watch(ours, lambda: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(poller.run)
        with pytest.raises(RuntimeError, match="already running"):
            await nursery.start(poller.run)
        poller.watch(ours, lambda: received.append(ours.recv(4096)))
        theirs.send(b"served")
        await wait_until(lambda: received == [b"served"])
        nursery.cancel_scope.cancel()
    assert len(poller) == 0
    poller.unwatch(ours)  # nothing happens: it was let go with the rest
    with pytest.raises(RuntimeError, match="not running"):
        poller.watch(ours, lambda: None)


async def test_a_socket_cannot_be_watched_twice(
    pairs: list[tuple[socket.socket, socket.socket]], poller: Poller
) -> None:
    ours, _ = socket_pair(pairs)
    poller.watch(ours, lambda: None)
    with pytest.raises(RuntimeError, match="already watched"):
        poller.watch(ours, lambda: None)
    poller.unwatch(ours)
