"""One simulated call, played from the carrier's side: ringing, answering, streaming, hanging up.

A :class:`SimulatedCall` plays its :class:`~.state.SimCall` as the carrier would, in one task:

- **outbound** (placed through the carrier's REST API, by voicecalld or by someone else): the
  carrier reports the call initiated and ringing, then, after the scenario's ring, the callee
  answers (or is busy, or never answers, or the call fails). On the answer Twilio and Plivo ask
  for instructions (the TwiML fetch, ``answer_url``) and run them; Telnyx reports
  ``call.answered`` and waits for commands (``streaming_start``);
- **inbound**: Twilio and Plivo ask for instructions at once; Telnyx reports ``call.initiated``
  and waits for ``actions/answer`` (or ``reject``) for the scenario's ``patience``.

Once answered, the call lives until someone hangs up: the far end after the scenario's
``talk`` (or when told, :meth:`SimulatedCall.hang_up`), voicecalld through REST (a hang-up the
REST half has already applied to the record), or the instructions running out (TwiML and Plivo
XML end the call when the document ends; a blocking ``<Stream>`` holds it until the websocket
closes, by voicecalld or by the carrier). On the way the player opens media streams, presses
DTMF, speaks what it is told to (Telnyx reports ``call.speak.started``/``ended``), and follows a
Twilio redirect (new TwiML: the running stream stops, the new verbs run).

The REST half tells the player of every change through :meth:`~.state.SimCall.watch`; the
player reads the call's action log from where it left off and asks the dialect what each action
means. Every webhook goes through the scenario's :class:`~.scenario.WebhookFaults`. The end of
a call is the carrier's: streams stopped, the final webhook sent, the outcome counted.
"""

from __future__ import annotations

import math
import time
from enum import Enum
from typing import Any, Final

import attrs
import trio

from voicecalld.media.connection import connect
from voicecalld.media.handshake import HandshakeError
from voicecalld.sim.audio import Audio
from voicecalld.sim.dialect import (
    Answer,
    Context,
    Delivery,
    Dialect,
    Digits,
    Directive,
    Hangup,
    Happening,
    Pause,
    Redirect,
    Say,
    StartStream,
    StopStream,
    Stream,
    StreamOrder,
    Verb,
    Webhook,
)
from voicecalld.sim.media import MediaLeg, Pacer
from voicecalld.sim.scenario import Outcome, Scenario
from voicecalld.sim.sender import Answer as WebhookAnswer
from voicecalld.sim.sender import Sender
from voicecalld.sim.state import SimAccounts, SimCall, SimStatus
from voicecalld.sim.stats import Tally

__all__ = ["Rig", "SimulatedCall"]

STREAM_CONNECT_TIMEOUT: Final = 5.0
DTMF_GAP: Final = 0.1
"""Seconds between two digits the far end presses."""


@attrs.frozen
class Rig:
    """What every simulated call shares: credentials, the webhook sender, the media clock."""

    accounts: SimAccounts
    forger: SimAccounts
    """Someone else's credentials, for forged webhooks."""
    sender: Sender
    pacer: Pacer
    audio: Audio
    tally: Tally
    speech_rate: float = 15.0
    """Characters a second the carrier's text-to-speech speaks."""
    keep_audio: bool = False


class _Command(Enum):
    ANSWER = "answer"
    HANG_UP = "hang-up"
    DROP = "drop"
    CHANGED = "changed"
    """The REST half changed the record: read its action log."""


@attrs.frozen
class _Press:
    digits: str


@attrs.frozen
class _LegClosed:
    leg: MediaLeg


_Wake = Directive | _Command | _Press | _LegClosed


class _Ended(Exception):
    """The call is over (raised by :meth:`SimulatedCall._end`, caught by :meth:`play`)."""


class SimulatedCall:
    def __init__(self, rig: Rig, call: SimCall, dialect: Dialect, scenario: Scenario) -> None:
        self.rig = rig
        self.call = call
        self.dialect = dialect
        self.scenario = scenario
        self.ringing = trio.Event()
        """Set once an outbound call rings (and the carrier has reported it, if it does)."""
        self.answered = trio.Event()
        self.streaming = trio.Event()
        """Set once a media stream is open (and the carrier has reported it, if it does)."""
        self.ended = trio.Event()
        self.hung_up_by: str | None = None
        """``remote`` (the far end), ``api`` (voicecalld, through REST), ``instructions`` (the
        answer's program ran out or said hang up) or ``carrier`` (a ring timeout)."""
        self.legs: list[MediaLeg] = []
        self.answers: list[WebhookAnswer] = []
        """voicecalld's answers to this call's webhooks, faults included, in order."""
        self.told: list[str] = []
        """The labels of this call's webhooks in the order the carrier made them (a late one
        is answered after those that overtook it: :attr:`answers` has the other order)."""
        self.invalid_answers: list[str] = []
        self._send, self._inbox = trio.open_memory_channel[_Wake](math.inf)
        self._cursor = 0
        self._sequence = 0
        self._answered_at = math.inf
        self._answered_unix = 0.0
        self._drop_at = math.inf
        self._speeches: list[float] = []
        """When each speech in progress ends (Telnyx reports it)."""
        self._nursery: trio.Nursery | None = None
        call.watch(lambda: self._send.send_nowait(_Command.CHANGED))

    # -- the handle ----------------------------------------------------------------------------

    @property
    def carrier(self) -> str:
        return self.call.carrier

    @property
    def carrier_id(self) -> str:
        return self.call.carrier_id

    @property
    def status(self) -> SimStatus:
        return self.call.status

    @property
    def frames_sent(self) -> int:
        return sum(leg.frames_sent for leg in self.legs)

    @property
    def frames_received(self) -> int:
        return sum(leg.frames_received for leg in self.legs)

    def answer(self) -> None:
        """The callee picks up now (for a scenario that rings until told)."""
        self._send.send_nowait(_Command.ANSWER)

    def hang_up(self) -> None:
        """The far end hangs up now (a ringing outbound call: the callee declines)."""
        self._send.send_nowait(_Command.HANG_UP)

    def drop_stream(self) -> None:
        """Break the media stream now; the call goes on at the carrier."""
        self._send.send_nowait(_Command.DROP)

    def press(self, digits: str) -> None:
        """The far end presses ``digits`` (sent on the media stream, and by Telnyx as webhooks)."""
        self._send.send_nowait(_Press(digits))

    # -- the play ------------------------------------------------------------------------------

    async def play(self) -> None:
        """Play the call to its end (``ended`` is set once the carrier has said everything)."""
        tally = self.rig.tally
        tally.started[self.call.direction] += 1
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    if self.call.direction == "inbound":
                        await self._inbound()
                    else:
                        await self._outbound()
                except _Ended:
                    pass  # the streams are closed; late webhooks may still be on their way
        finally:
            if self.call.status.live:  # cancelled from outside: the simulator is going away
                self.call.set_status(SimStatus.COMPLETED)
                self.hung_up_by = self.hung_up_by or "carrier"
            tally.outcomes[self.call.status.value] += 1
            tally.hung_up_by[self.hung_up_by or "carrier"] += 1
            self.ended.set()

    async def _outbound(self) -> None:
        call, scenario = self.call, self.scenario
        await self._tell(Happening.INITIATED)
        if scenario.outcome is Outcome.FAILED and scenario.ring is not None:
            await self._end(SimStatus.FAILED, "carrier")
        call.set_status(SimStatus.RINGING)
        await self._tell(Happening.RINGING)
        self.ringing.set()
        now = trio.current_time()
        decide_at = math.inf if scenario.ring is None else now + scenario.ring
        give_up_at = now + call.ring_timeout if call.ring_timeout else math.inf
        while True:
            wake = await self._next(min(decide_at, give_up_at))
            now = trio.current_time()
            if wake is None and now >= give_up_at:
                await self._end(SimStatus.NO_ANSWER, "carrier")
            elif wake is None:
                if scenario.outcome is Outcome.ANSWER:
                    break
                if scenario.outcome is Outcome.NO_ANSWER:
                    await self._end(SimStatus.NO_ANSWER, "carrier")
                status = SimStatus.BUSY if scenario.outcome is Outcome.BUSY else SimStatus.FAILED
                await self._end(status, "remote")
            elif wake is _Command.ANSWER:
                break
            elif wake is _Command.HANG_UP:
                await self._end(SimStatus.BUSY, "remote")  # declined
            elif isinstance(wake, Hangup):
                await self._end(None, "api")
        self._pick_up()
        if self.dialect.instructs_by_answer:
            verbs = await self._fetch(None)
            await self._tell(Happening.ANSWERED)
            await self._run(verbs)
        else:
            await self._tell(Happening.ANSWERED)
            await self._hold(math.inf)

    async def _inbound(self) -> None:
        self.call.set_status(SimStatus.RINGING)
        if self.dialect.instructs_by_answer:
            await self._run(await self._fetch(None))
            return
        await self._tell(Happening.INITIATED)
        give_up_at = trio.current_time() + self.scenario.patience
        while True:
            wake = await self._next(give_up_at)
            if wake is None or wake is _Command.HANG_UP:
                await self._end(SimStatus.CANCELED, "remote")  # the caller gave up
            elif isinstance(wake, Hangup):
                await self._end(SimStatus.BUSY if wake.rejected else None, "api")
            elif isinstance(wake, Answer):
                self._pick_up()
                await self._tell(Happening.ANSWERED)
                if wake.stream is not None:
                    await self._open(wake.stream)
                await self._hold(math.inf)

    def _pick_up(self) -> None:
        if self.answered.is_set():
            return
        if self.call.status is not SimStatus.IN_PROGRESS:  # Telnyx ``answer`` has set it
            self.call.set_status(SimStatus.IN_PROGRESS)
        self._answered_at = trio.current_time()
        self._answered_unix = time.time()
        self.answered.set()

    # -- instructions (Twilio and Plivo) -------------------------------------------------------

    async def _fetch(self, url: str | None) -> tuple[Verb, ...]:
        """Ask voicecalld what to do (the call's answer URL, or ``url``); an answer the carrier
        cannot use is an application error: the call ends."""
        if url is not None:
            self.call.answer_url = url
        webhooks = self._webhooks(Happening.FETCH)
        if not webhooks:
            return ()
        self.told.append(webhooks[0].label)
        answer = await self._deliver(webhooks[0])
        if not answer.ok:
            self.invalid_answers.append(f"HTTP {answer.text}")
            self.rig.tally.invalid["answer"] += 1
            return ()
        try:
            return self.dialect.read_answer(answer.body)
        except ValueError as error:
            self.invalid_answers.append(str(error))
            self.rig.tally.invalid["answer"] += 1
            return ()

    async def _run(self, verbs: tuple[Verb, ...]) -> None:
        """Run a program of verbs; the call ends when it does."""
        program = list(verbs)
        while program:
            verb = program.pop(0)
            if isinstance(verb, Hangup):
                status = SimStatus.BUSY if verb.rejected and not self.call.answered else None
                await self._end(status, "instructions")
            self._pick_up()
            redirect: Redirect | None = None
            if isinstance(verb, Say):
                redirect = await self._hold(trio.current_time() + self._speech(verb.text))
            elif isinstance(verb, Digits):
                redirect = await self._hold(trio.current_time() + DTMF_GAP * len(verb.digits))
            elif isinstance(verb, Pause):
                redirect = await self._hold(trio.current_time() + verb.seconds)
            elif isinstance(verb, Stream):
                leg = await self._open(verb.order)
                if leg is not None and verb.order.blocking:
                    redirect = await self._hold(math.inf, leg)
            if redirect is not None:
                program = list(redirect.verbs)
                if redirect.url is not None:
                    program = list(await self._fetch(redirect.url))
        await self._end(None, "instructions")

    async def _hold(self, until: float, blocking: MediaLeg | None = None) -> Redirect | None:
        """Live with the call until ``until`` (or ``blocking`` closes): returns ``None`` then,
        or the redirect that replaces the instructions; ends the call when someone hangs up."""
        while True:
            ends = min(self._speeches, default=math.inf)
            talk = self.scenario.talk
            talk_ends = self._answered_at + (math.inf if talk is None else talk)
            wake = await self._next(min(until, ends, talk_ends, self._drop_at))
            now = trio.current_time()
            if wake is None:
                if now >= ends:
                    self._speeches.remove(ends)
                    await self._tell(Happening.SPEAK_ENDED)
                elif now >= self._drop_at:
                    await self._drop()
                elif now >= talk_ends:
                    await self._end(None, "remote")
                elif now >= until:
                    return None
            elif isinstance(wake, Redirect):
                if blocking is not None:
                    await self._stop(blocking)
                return wake
            elif isinstance(wake, Hangup):
                await self._end(SimStatus.BUSY if wake.rejected else None, "api")
            elif isinstance(wake, StartStream):
                await self._open(wake.order)
            elif isinstance(wake, StopStream):
                for leg in self.legs:
                    await self._stop(leg)
            elif isinstance(wake, Say):
                await self._tell(Happening.SPEAK_STARTED)
                self._speeches.append(now + self._speech(wake.text))
            elif isinstance(wake, _LegClosed):
                await self._tell(Happening.STREAM_STOPPED, stream_id=wake.leg.stream_id)
                if wake.leg is blocking:
                    return None  # a blocking stream ended: the instructions go on
            elif wake is _Command.HANG_UP:
                await self._end(None, "remote")
            elif wake is _Command.DROP:
                await self._drop()
            elif isinstance(wake, _Press):
                await self._press(wake.digits)

    def _speech(self, text: str) -> float:
        return 0.3 + len(text) / self.rig.speech_rate

    # -- waking up -----------------------------------------------------------------------------

    async def _next(self, deadline: float) -> _Wake | None:
        """The next thing that happens to the call before ``deadline`` (``None``: it came)."""
        with trio.move_on_at(deadline):
            while True:
                directive = self._read_actions()
                if directive is not None:
                    return directive
                wake = await self._inbox.receive()
                if wake is not _Command.CHANGED:
                    return wake
        return None

    def _read_actions(self) -> Directive | None:
        """The next REST action (past the cursor) that asks something of the call."""
        actions = self.call.actions
        while self._cursor < len(actions):
            name, fields = actions[self._cursor]
            self._cursor += 1
            try:
                directive = self.dialect.directive(self.call, name, fields)
            except ValueError:
                self.rig.tally.invalid["command"] += 1
                continue
            if directive is not None:
                return directive
        if not self.call.status.live:
            return Hangup()  # ended from outside (FakeCarriers.set_status)
        return None

    # -- media ---------------------------------------------------------------------------------

    async def _open(self, order: StreamOrder) -> MediaLeg | None:
        """Open a media stream as the carrier was told; ``None`` when voicecalld refuses it."""
        rig, dialect = self.rig, self.dialect
        stream_id = dialect.new_stream_id()
        headers = dialect.upgrade_headers(order, rig.accounts)
        try:
            ws = await connect(order.url, headers=headers, connect_timeout=STREAM_CONNECT_TIMEOUT)
        except (OSError, HandshakeError, trio.TooSlowError, ValueError):
            rig.tally.streams["refused"] += 1
            return None
        messages = dialect.stream(self.call, order, stream_id)
        payloads = rig.audio.payloads(order.encoding, order.sample_rate)
        leg = MediaLeg(
            ws, messages, order, stream_id, payloads, tally=rig.tally, keep_audio=rig.keep_audio
        )
        leg.send_opening()
        self.legs.append(leg)
        rig.pacer.add(leg)
        assert self._nursery is not None
        self._nursery.start_soon(leg.run, self._leg_closed)
        rig.tally.streams["opened"] += 1
        rig.tally.latency("setup", trio.current_time() - self._answered_at)
        first = not self.streaming.is_set()
        await self._tell(Happening.STREAM_STARTED, stream_id=stream_id, stream_url=order.url)
        self.streaming.set()
        if first and self.scenario.drop_stream is not None:
            self._drop_at = trio.current_time() + self.scenario.drop_stream
        if first and self.scenario.dtmf:
            self.press(self.scenario.dtmf)
        return leg

    def _leg_closed(self, leg: MediaLeg) -> None:
        self.rig.pacer.remove(leg)
        if leg.closed_by_voicecalld:
            self._send.send_nowait(_LegClosed(leg))

    async def _stop(self, leg: MediaLeg) -> None:
        if leg.open:
            await leg.stop()
            await self._tell(Happening.STREAM_STOPPED, stream_id=leg.stream_id)

    async def _drop(self) -> None:
        self._drop_at = math.inf
        for leg in self.legs:
            await leg.drop()

    async def _press(self, digits: str) -> None:
        for digit in digits:
            for leg in self.legs:
                if leg.open:
                    leg.press(digit)
            await self._tell(Happening.DTMF, digit=digit)
            await trio.sleep(DTMF_GAP)

    # -- the end -------------------------------------------------------------------------------

    async def _end(self, status: SimStatus | None, by: str) -> None:
        """End the call (``status``, else what the REST half set, else ``completed``): stop
        its streams, send the final webhook, then :class:`_Ended`."""
        call = self.call
        if call.status.live:
            call.set_status(status or SimStatus.COMPLETED)
        self.hung_up_by = by
        for leg in self.legs:
            await self._stop(leg)
        duration = 0 if not call.answered else round(time.time() - self._answered_unix)
        await self._tell(Happening.ENDED, duration=duration, hung_up_by=by)
        raise _Ended

    # -- webhooks ------------------------------------------------------------------------------

    def _webhooks(self, happening: Happening, **context: Any) -> list[Webhook]:
        webhooks = self.dialect.webhooks(
            self.call, happening, Context(now=time.time(), sequence=self._sequence, **context)
        )
        self._sequence += sum(not webhook.wants_answer for webhook in webhooks)
        return webhooks

    async def _tell(self, happening: Happening, **context: Any) -> None:
        """Send what the carrier sends when ``happening`` happens (faults applied)."""
        late = self.scenario.faults.late
        for webhook in self._webhooks(happening, **context):
            self.told.append(webhook.label)
            if late and not webhook.wants_answer and self._sequence % 2:
                assert self._nursery is not None  # the first, third, ... status callback
                self._nursery.start_soon(self._deliver_late, webhook, late)
            else:
                await self._deliver(webhook)

    async def _deliver_late(self, webhook: Webhook, delay: float) -> None:
        await trio.sleep(delay)
        await self._deliver(webhook)

    async def _deliver(self, webhook: Webhook) -> WebhookAnswer:
        rig, dialect, faults = self.rig, self.dialect, self.scenario.faults
        what = f"{dialect.name} {webhook.label}"

        def make(attempt: int) -> Delivery:
            again = webhook if attempt == 1 else dialect.redelivery(webhook, attempt)
            return dialect.sign(again, rig.accounts, time.time())

        if faults.forged:
            forged = dialect.sign(webhook, rig.forger, time.time())
            self.answers.append(await rig.sender.deliver(f"{what} (forged)", forged))
        answer = await rig.sender.send(what, make, slow_body=faults.slow_body)
        self.answers.append(answer)
        if faults.replayed:
            self.answers.append(await rig.sender.deliver(f"{what} (replayed)", answer.delivery))
        if faults.duplicated:
            self.answers.append(await rig.sender.deliver(f"{what} (redelivered)", make(2)))
        return answer
