"""The simulated carrier's media streams: one websocket per stream, one clock for all of them.

A :class:`MediaLeg` is one stream the carrier opened to voicecalld, on the daemon's own fast
websocket client (:func:`voicecalld.media.connection.connect`). One task per leg reads what
voicecalld sends back: audio (counted, and kept when asked), marks (echoed once the audio
queued before them would have played, as the carriers do), clears (pending marks echoed at
once). The :class:`Pacer` is the carrier's clock: one task that, every 20 ms, sends the next
frame of every open leg, so 200 streams cost 50 wake-ups a second, not 10,000. Sending never
blocks: a frame voicecalld is too slow to take is dropped and counted, as a carrier's real-time
media would be.

A leg ends in one of three ways: :meth:`MediaLeg.stop` (the carrier's ``stop`` message, if it
has one, then a normal close), :meth:`MediaLeg.drop` (the connection breaks: no ``stop``, close
code 1011), or voicecalld closing it (``closed_by_voicecalld``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import trio

from voicecalld.media.connection import ConnectionClosed, WebSocket
from voicecalld.media.websocket import CloseCode
from voicecalld.sim.audio import FRAME_SECONDS
from voicecalld.sim.dialect import StreamMessages, StreamOrder
from voicecalld.sim.stats import Tally

__all__ = ["MAX_KEPT_AUDIO", "MediaLeg", "Pacer"]

MAX_KEPT_AUDIO = 8 * 1024 * 1024
"""Bytes of received audio a leg keeps at most (when asked to keep it)."""
_BYTES_PER_SECOND = {"mulaw": 8000, "alaw": 8000, "pcm16": 16000}


class MediaLeg:
    def __init__(
        self,
        ws: WebSocket,
        messages: StreamMessages,
        order: StreamOrder,
        stream_id: str,
        payloads: list[str],
        *,
        tally: Tally,
        keep_audio: bool = False,
    ) -> None:
        self.ws = ws
        self.messages = messages
        self.order = order
        self.stream_id = stream_id
        self.tally = tally
        self._payloads = payloads
        self._keep = keep_audio
        self._bytes_per_second = _BYTES_PER_SECOND[order.encoding] * order.sample_rate // 8000
        self._chunk = 0
        self._opened_at = time.time()
        self._playout = 0.0
        """Trio time until which the audio voicecalld sent would still be playing."""
        self._marks: list[tuple[float, str]] = []
        self.frames_sent = 0
        self.frames_received = 0
        self.dropped = 0
        self.received = bytearray()
        """The audio voicecalld sent (when ``keep_audio``), in the stream's encoding."""
        self.marks: list[str] = []
        """Names of the marks echoed, in order."""
        self.closed = trio.Event()
        self.closed_by_voicecalld = False
        self.close_code: int | None = None
        self._ours = False

    @property
    def open(self) -> bool:
        return not self.closed.is_set() and not self._ours

    def send_opening(self) -> None:
        for message in self.messages.opening():
            self.ws.send_text(message)

    async def run(self, on_closed: Callable[[MediaLeg], None]) -> None:
        """Read voicecalld's messages until the stream closes; then ``on_closed(self)``."""
        try:
            while True:
                for message in await self.ws.receive_batch():
                    self._heard(message.data, message.is_text)
        except ConnectionClosed as closed:
            self.close_code = closed.code
            self.closed_by_voicecalld = closed.by_peer and not self._ours
        finally:
            self.closed.set()
            if self.closed_by_voicecalld:
                self.tally.streams["closed by voicecalld"] += 1
            on_closed(self)

    def _heard(self, data: bytes, is_text: bool) -> None:
        heard = self.messages.read(data) if is_text else None
        if heard is None or heard.kind == "invalid":
            self.tally.invalid["media"] += 1
        elif heard.kind == "media":
            if not self.order.bidirectional:
                self.tally.invalid["media"] += 1  # a one-way stream plays nothing back
                return
            self.frames_received += 1
            self.tally.frames_received += 1
            now = trio.current_time()
            self._playout = max(self._playout, now) + len(heard.audio) / self._bytes_per_second
            if self._keep and len(self.received) < MAX_KEPT_AUDIO:
                self.received += heard.audio
        elif heard.kind == "mark":
            self._marks.append((self._playout, heard.name))
        elif heard.kind == "clear":
            self._playout = 0.0
            self._echo(math.inf)
            cleared = self.messages.cleared()
            if cleared is not None:
                self._send(cleared)

    def tick(self) -> None:
        """Send the next frame, and echo the marks whose audio has played (the pacer's call)."""
        payloads = self._payloads
        self._chunk += 1
        millis = int((self._chunk - 1) * FRAME_SECONDS * 1000)
        payload = payloads[(self._chunk - 1) % len(payloads)]
        frame = self.messages.media(
            self._chunk, millis, int(self._opened_at * 1000) + millis, payload
        )
        if self._send(frame):
            self.frames_sent += 1
            self.tally.frames_sent += 1
        else:
            self.dropped += 1
        if self._marks:
            self._echo(trio.current_time())

    def _echo(self, until: float) -> None:
        due = [name for at, name in self._marks if at <= until]
        self._marks = [(at, name) for at, name in self._marks if at > until]
        for name in due:
            self.marks.append(name)
            self.tally.marks += 1
            self._send(self.messages.played(name))

    def press(self, digit: str) -> None:
        self._send(self.messages.dtmf(digit))

    def _send(self, message: bytes) -> bool:
        try:
            return self.ws.send_text(message)
        except ConnectionClosed:
            return False

    async def stop(self) -> None:
        """End the stream as the carrier does when the call or its instructions end."""
        if not self.open:
            return
        self._ours = True
        stop = self.messages.stop()
        if stop is not None:
            self._send(stop)
        with trio.CancelScope(shield=True):
            await self.ws.close(CloseCode.NORMAL)

    async def drop(self) -> None:
        """Break the stream: no ``stop``, an abnormal close."""
        if not self.open:
            return
        self._ours = True
        with trio.CancelScope(shield=True):
            await self.ws.close(CloseCode.INTERNAL_ERROR, "simulated network failure")


class Pacer:
    """Every 20 ms, one frame on every open leg. Idle (no wake-ups) while no leg is open."""

    def __init__(self) -> None:
        self.legs: set[MediaLeg] = set()
        self._wake = trio.Event()

    def add(self, leg: MediaLeg) -> None:
        self.legs.add(leg)
        self._wake.set()

    def remove(self, leg: MediaLeg) -> None:
        self.legs.discard(leg)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            if not self.legs:
                self._wake = trio.Event()
                await self._wake.wait()
            next_tick = trio.current_time() + FRAME_SECONDS
            while self.legs:
                await trio.sleep_until(next_tick)
                for leg in list(self.legs):
                    if leg.open:
                        leg.tick()
                    else:
                        self.legs.discard(leg)
                next_tick += FRAME_SECONDS
                now = trio.current_time()
                if next_tick < now - 10 * FRAME_SECONDS:
                    next_tick = now  # fell far behind: skip ahead rather than burst
