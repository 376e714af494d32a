#!/usr/bin/env python3
"""Write through SqliteStore until killed, printing each acknowledged write's event ids.

Usage: ``crash_writer.py DIRECTORY``. Prints ``ready`` once the store is open, then one line
of event ids per write, flushed after :meth:`SqliteStore.write` returned and before the next
write: every id printed was acknowledged as durable. Run by ``test_crash.py``, which kills it.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import trio

from voicecalld.calls.model import Call, Direction, EventType, NewEvent, State, new_call_id
from voicecalld.store.sqlite import SqliteStore

WRITERS = 8


def acknowledge(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def writer(store: SqliteStore, n: int) -> None:
    now = datetime.now(UTC)
    call = Call(
        id=new_call_id(),
        provider="mock",
        direction=Direction.INBOUND,
        from_number="+15550000000",
        to="+15551230000",
        created_at=now,
        updated_at=now,
        provider_call_id=f"crash-{new_call_id()}",
    )
    for sequence in range(sys.maxsize):
        if sequence == 1:
            call = Call.from_json({**call.to_json(), "state": State.RINGING.value})
        events = [NewEvent(EventType.STATE, call), NewEvent(EventType.DTMF, call, {"digit": "1"})]
        stored = await store.write([call], events, webhook_key=f"{call.id}:{n}:{sequence}")
        acknowledge(" ".join(str(event.id) for event in stored))


async def main(directory: str) -> None:
    async with SqliteStore.open(directory) as store:
        acknowledge("ready")
        async with trio.open_nursery() as nursery:
            for n in range(WRITERS):
                nursery.start_soon(writer, store, n)


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
