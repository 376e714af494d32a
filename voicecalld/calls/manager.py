"""The call manager: every live call, and every change to one, goes through here.

It turns carrier events, API requests, media-stream news and timer expiries into state machine
transitions (:mod:`.machine`), keeps the live calls in memory, and makes each change durable in
the store before the caller acknowledges anything.

Rules it keeps:

- **Capacity**: ``calls.max_concurrent`` counts every call not ended. A placed call's slot is
  taken, and its record made durable, *before* the carrier is dialed; a failed dial ends it
  ``failed`` and frees the slot.
- **Direction**: a call first seen in a carrier webhook is ``inbound`` only when the carrier says
  so; an outbound leg voicecalld did not place (by its call id or carrier id) is registered as
  ``outbound-api``, never rejected as unknown.
- **Owed hang-ups**: when voicecalld ends a call (API, timers, reaper, stream loss, reconcile),
  the record ends at once, so the slot is free and nothing shows a call that is over; the carrier
  hang-up is then *owed*: marked in the record (``metadata.hangup_owed``), attempted at once,
  retried with backoff until the carrier confirms (or says the call is gone), carried across
  restarts, and every failure is logged with the call id and the error. Never swallowed, never
  two in flight for one call.
- **Ordering**: each change is computed from the in-memory call and applied without an ``await``
  between reading and writing memory, so concurrent webhooks for one call cannot interleave; the
  forward-only machine makes out-of-order carrier callbacks harmless.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

import attrs
import trio

from voicecalld.calls import machine, policy
from voicecalld.calls.feed import Feed
from voicecalld.calls.machine import Transition
from voicecalld.calls.model import (
    Call,
    Direction,
    EndReason,
    EventType,
    Mode,
    NewEvent,
    State,
    new_call_id,
)
from voicecalld.calls.timers import TimerKind, Timers
from voicecalld.carriers.base import (
    Carrier,
    CarrierError,
    Instructions,
    Reply,
    WebhookEvent,
    WebhookKind,
)
from voicecalld.config import Config
from voicecalld.metrics import Metrics
from voicecalld.store.base import DuplicateWebhookKey, RejectedWrite, Store

__all__ = [
    "CallEnded",
    "CallManager",
    "CallNotFound",
    "CapacityReached",
    "DialFailed",
    "UnknownProvider",
]

log = logging.getLogger("voicecalld.calls")

TOKEN_TTL: Final = 300.0
"""Seconds a stream token stays redeemable after voicecalld hands it to a carrier."""
REPLAY_WINDOW: Final = timedelta(hours=1)
"""How long webhook replay keys are remembered (memory and store)."""
REPLAY_MAX: Final = 100_000
HANGUP_RETRY_CAP: Final = 300.0
PURGE_INTERVAL: Final = 3600.0
RECENTLY_ENDED: Final = 10_000
"""Ended calls kept in memory, newest first, for news that arrives after their end."""


class CapacityReached(Exception):
    """``calls.max_concurrent`` calls are not ended: 429."""


class CallNotFound(Exception):
    """404."""


class CallEnded(Exception):
    """The call has ended; the request needs a live one: 409."""


class CallNotAnswered(Exception):
    """The call is not answered yet; speaking or sending DTMF needs someone there: 409."""


class UnknownProvider(Exception):
    """The provider is not enabled: 400."""


class DialFailed(Exception):
    """The carrier refused or failed to place the call: 502. The call ended ``failed``."""

    def __init__(self, call: Call, cause: CarrierError) -> None:
        super().__init__(str(cause))
        self.call = call


class CarrierDirectory(Protocol):
    """What the manager needs of the carrier registry (``voicecalld.carriers.registry``)."""

    def get(self, name: str) -> Carrier | None: ...


def _wall_now() -> datetime:
    """Now, to the millisecond: what the store keeps, so a call read back equals the one written."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@attrs.define
class _Owed:
    """A carrier hang-up voicecalld owes: the ended call, and when to try next."""

    call: Call
    attempts: int = 0
    next_try: float = 0.0


class CallManager:
    def __init__(
        self,
        config: Config,
        store: Store,
        carriers: CarrierDirectory,
        metrics: Metrics,
        *,
        now: Callable[[], datetime] = _wall_now,
    ) -> None:
        self.config = config
        self.store = store
        self.carriers = carriers
        self.metrics = metrics
        self.now = now
        self.calls: dict[str, Call] = {}
        """Every call not ended, by id."""
        self._by_carrier: dict[tuple[str, str], str] = {}
        self._recently_ended: OrderedDict[str, Call] = OrderedDict()
        self._streaming: set[str] = set()
        """Calls with a live media stream (which reports their DTMF itself)."""
        self._speaking_until: dict[str, float] = {}
        """When voicecalld's current speech on a call is estimated to end (trio clock)."""
        self._tokens: dict[bytes, tuple[str, float]] = {}
        self._owed: dict[str, _Owed] = {}
        self._hanging_up: set[str] = set()
        self._replays: OrderedDict[str, float] = OrderedDict()
        self._applying: dict[str, trio.Event] = {}
        """Webhook keys whose event is being applied, not yet durable: see :meth:`replayed`."""
        self._resolving = trio.Lock()
        self._owed_wake = trio.Event()
        self.timers = Timers(self._expired)
        self.feed = Feed(metrics)
        store.on_commit = self.feed.publish  # in commit order, before any writer resumes
        self.restored: list[Call] = []
        """Open calls loaded from the store at start, until the reconciler takes them."""
        self.ended_hooks: list[Callable[[Call], None]] = []
        """Called (synchronously) when a call ends: the media layer closes its streams."""
        self._nursery: trio.Nursery | None = None
        metrics.live_calls.read = lambda: {(): float(len(self.calls))}

    # -- life ----------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The ``calls`` start-up step: load what the store owes us, then run timers and hang-ups.

        Open calls are loaded (and counted against capacity) here, before anything is served, so
        no webhook can end one between its load and its adoption; asking their carriers about
        them is the reconciler's job, in the ``restore`` step.
        """
        since = self.now() - REPLAY_WINDOW
        for key in await self.store.webhook_keys_since(since):
            self._replays[key] = 0.0
        for call in await self.store.calls_owing_hangup():
            self._owed[call.id] = _Owed(call)
        self.restored = await self.store.open_calls()
        for call in self.restored:
            self.adopt(call, arm=False)
        await self._end_cut_streams()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.timers.run)
            nursery.start_soon(self._pay_hangups)
            nursery.start_soon(self._purge_forever)
            task_status.started()
            await trio.sleep_forever()

    async def _purge_forever(self) -> None:
        """Retention: forget calls ended ``store.retention_days`` ago, and old replay keys."""
        while True:
            now = self.now()
            ended_before = now - timedelta(days=self.config.store.retention_days)
            purged = await self.store.purge(
                ended_before=ended_before, keys_before=now - REPLAY_WINDOW
            )
            if purged:
                log.info("purged old calls", extra={"calls": purged})
            await trio.sleep(PURGE_INTERVAL)

    def reconfigure(self, config: Config) -> None:
        self.config = config

    def adopt(self, call: Call, *, arm: bool = True) -> None:
        """Hold an open call loaded from the store (counted against capacity from now on).

        ``arm=False`` leaves its timers to the reconciler, which arms them once the carrier has
        spoken (or failed to): a ring timer that fired before the carrier was asked could end as
        ``timeout`` a call that was in fact answered while voicecalld was down.
        """
        if call.id in self.calls or call.id in self._recently_ended or call.ended:
            return
        self._remember(call)
        if arm:
            self.arm_lifetime(call)

    async def confirm_live(self, call_id: str, *, answered: bool | None, ringing: bool) -> None:
        """The carrier says the call is live (reconciliation): restore it with its timers, in
        the state the carrier says it reached while voicecalld was down (ringing, answered)."""
        call = self.calls.get(call_id)
        if call is None:
            return
        if ringing and call.state is State.INITIATED:
            await self.set_state(call_id, State.RINGING)
        elif answered is True and call.answered_at is None:
            # answered while voicecalld was down, at a moment no carrier says: marked, so that
            # its max duration counts from its creation, now and after any later restart
            # (Call.max_duration_from); its answered_at is when voicecalld learned of it
            self._remember(attrs.evolve(call, metadata={**call.metadata, "answered_unseen": True}))
            await self.set_state(call_id, State.ANSWERED)
        current = self.calls.get(call_id)
        if current is None:
            return
        if answered is None and current.answered_at is None:
            # the carrier cannot say whether it was answered (Telnyx): our ring timer could end
            # as `timeout` a conversation that began while voicecalld was down. The carrier's
            # own ring timeout, given at the dial, ends it if nobody answers; the max-duration
            # backstop the reconciler armed before asking (from its creation) bounds it.
            return
        self.arm_lifetime(current)

    # -- placing and ending --------------------------------------------------------------------

    async def place(
        self,
        to: str,
        *,
        from_number: str | None = None,
        provider: str | None = None,
        mode: Mode = Mode.CONVERSATION,
        message: str = "",
        bridge_url: str = "",
    ) -> Call:
        """Place an outbound call: reserve, persist, then dial (SPEC §6)."""
        name = provider or self.config.calls.default_provider
        carrier = self.carriers.get(name)
        if carrier is None:
            raise UnknownProvider(name)
        if len(self.calls) >= self.config.calls.max_concurrent:
            raise CapacityReached(f"{len(self.calls)} calls are live (calls.max_concurrent)")
        now = self.now()
        metadata: dict[str, Any] = {}
        if message:
            metadata["message"] = message
        if bridge_url:
            metadata["bridge_url"] = bridge_url
        call = Call(
            id=new_call_id(),
            provider=name,
            direction=Direction.OUTBOUND,
            from_number=from_number or self.config.from_number(name),
            to=to,
            created_at=now,
            updated_at=now,
            mode=mode,
            metadata=metadata,
        )
        self._remember(call)  # the slot is taken from here on
        await self._write(call, [NewEvent(EventType.CREATED, call)])
        self.arm_lifetime(call)
        try:
            provider_call_id = await carrier.place(call)
        except CarrierError as error:
            log.warning(
                "dial failed", extra={"call_id": call.id, "provider": name, "error": str(error)}
            )
            ended = await self.end_call(call.id, EndReason.FAILED, hangup=False)
            raise DialFailed(ended or call, error) from error
        owner = self._by_carrier.get((name, provider_call_id))
        if owner is not None and owner != call.id:
            raise await self._taken_id(call, provider_call_id, f"call {owner}'s")
        current = self.calls.get(call.id)
        if current is None:  # ended while dialing (API hang-up, timer): the carrier call is owed
            # from memory: the store may still hold the row from before the end (its write
            # can be in flight), and writing that back would revive the call
            ended = self._known(call.id) or await self.store.get(call.id)
            assert ended is not None
            owing = _owing(attrs.evolve(ended, provider_call_id=provider_call_id))
            if await self._learn_dialed_id(ended, owing):
                self._owe(owing)
                return owing
            log.error(
                "dial returned a carrier call id already an ended call's; no hang-up by it",
                extra={"call_id": call.id, "provider": name, "provider_call_id": provider_call_id},
            )
            return ended
        if current.provider_call_id is None:
            learned = attrs.evolve(current, provider_call_id=provider_call_id)
            if not await self._learn_dialed_id(current, learned):
                raise await self._taken_id(call, provider_call_id, "an ended call's")
            current = learned
        elif current.provider_call_id != provider_call_id and "request_id" not in current.metadata:
            # a webhook came back before the dial did, with the carrier's real call id: keep
            # the id the dial returned too (Plivo's RequestUUID), for hang-ups before answer
            metadata = {**current.metadata, "request_id": provider_call_id}
            current = attrs.evolve(current, metadata=metadata)
            self._remember(current)
            await self._write(current)
        log.info(
            "placed",
            extra={"call_id": call.id, "provider": name, "provider_call_id": provider_call_id},
        )
        return current

    async def end_call(
        self, call_id: str, reason: EndReason, *, hangup: bool = True
    ) -> Call | None:
        """End a live call with voicecalld's ``reason``; the carrier hang-up becomes owed.

        Returns the ended call, or ``None`` if it is not live (already ended, or unknown).
        """
        call = self.calls.get(call_id)
        if call is None:
            return None
        owed = hangup and call.provider_call_id is not None
        if owed:
            call = _owing(call)
        transition = machine.end(call, reason, self.now())
        assert transition is not None
        await self._commit(transition)
        if owed:
            self._owe(transition.call)
        return transition.call

    async def hangup(self, call_id: str) -> Call:
        """``POST /v1/calls/{id}/hangup``: end ``hangup-bot``; idempotent on an ended call."""
        ended = await self.end_call(call_id, EndReason.HANGUP_BOT)
        return ended if ended is not None else await self.get(call_id)

    async def get(self, call_id: str) -> Call:
        call = self._known(call_id) or await self.store.get(call_id)
        if call is None:
            raise CallNotFound(call_id)
        return call

    # -- speaking ------------------------------------------------------------------------------

    async def speak(self, call_id: str, text: str) -> Call:
        call = await self._answered(call_id)
        carrier = self._carrier(call)
        await carrier.speak(call, text, self.issue_token(call.id))
        await self.set_state(call.id, State.SPEAKING)
        # carriers do not all say when speech ends: estimate it (about 15 characters a second)
        done = trio.current_time() + 1.0 + len(text) / 15.0
        self._speaking_until[call.id] = done
        self.timers.arm(call.id, TimerKind.SETTLE, done)
        if self.timers.pending(call.id, TimerKind.STREAM_GRACE):
            # Twilio may close the stream (to play the <Say>) before its API answers: that
            # grace was counted from then, not from the end of the speech
            self.timers.arm(call.id, TimerKind.STREAM_GRACE, done + self.config.calls.stream_grace)
        return self.calls.get(call.id, call)

    async def send_dtmf(self, call_id: str, digits: str) -> Call:
        call = await self._answered(call_id)
        await self._carrier(call).send_dtmf(call, digits, self.issue_token(call.id))
        return call

    async def _live(self, call_id: str) -> Call:
        call = self.calls.get(call_id)
        if call is not None:
            return call
        if call_id not in self._recently_ended and await self.store.get(call_id) is None:
            raise CallNotFound(call_id)
        raise CallEnded(call_id)

    async def _answered(self, call_id: str) -> Call:
        """The live call, answered: a carrier cannot play speech or tones to a phone that
        rings (real ones refuse; the mock would have pretended it was answered)."""
        call = await self._live(call_id)
        if call.answered_at is None:
            raise CallNotAnswered(call_id)
        return call

    def _carrier(self, call: Call) -> Carrier:
        carrier = self.carriers.get(call.provider)
        if carrier is None:
            raise UnknownProvider(call.provider)
        return carrier

    async def set_state(self, call_id: str, state: State) -> Call | None:
        """Move a live call forward (media and speech news); ``None`` if it changed nothing."""
        call = self.calls.get(call_id)
        if call is None:
            return None
        transition = machine.advance(call, state, self.now())
        if transition is None:
            return None
        self._on_answered(call, transition.call)
        await self._commit(transition)
        return transition.call

    async def record(self, call_id: str, kind: EventType, data: Mapping[str, Any]) -> None:
        """Record an event that changes no state (``call.dtmf``, ``stream.stopped`` ...).

        A call that has just ended still gets it (a stream that ends with its call): the event
        alone is written, never the older call row.
        """
        call = self.calls.get(call_id)
        if call is not None:
            await self._write(call, [NewEvent(kind, call, data)])
        elif (stored := await self.store.get(call_id)) is not None:
            await self.store.write([], [NewEvent(kind, stored, data)])

    async def _end_cut_streams(self) -> None:
        """Record the end of every stream the last process left open (it died with them), so
        that each ``stream.started`` an app has seen gets its ``stream.stopped``."""
        cut = set(await self.store.open_streams())
        if cut:
            reason = {"reason": "voicecalld restarted"}
            ends = [
                NewEvent(EventType.STREAM_STOPPED, c, reason) for c in self.restored if c.id in cut
            ]
            await self.store.write([], ends)
            log.info("stream ends recorded for a restart", extra={"streams": len(ends)})

    # -- carrier events ------------------------------------------------------------------------

    async def replayed(self, webhook_key: str) -> bool:
        """Whether a verified webhook is a replay (same authenticated material, applied before).

        A copy that comes while the first is still being applied waits for it: answered at
        once, it would tell the carrier the event is safe before it is durable, and a crash
        then would lose it. If the first failed, the copy is no replay and gets applied.
        """
        applying = self._applying.get(webhook_key)
        if applying is not None:
            await applying.wait()
        return webhook_key in self._replays

    async def on_event(
        self, provider: str, event: WebhookEvent, webhook_key: str | None = None
    ) -> Instructions:
        """Apply one carrier event; durable (with ``webhook_key``) before this returns.

        Returns what the webhook answer should tell the carrier.
        """
        if webhook_key is None:
            return await self._on_event(provider, event, None)
        self._replays[webhook_key] = trio.current_time()  # concurrent duplicates are replays
        while len(self._replays) > REPLAY_MAX:
            self._replays.popitem(last=False)
        applying = self._applying[webhook_key] = trio.Event()
        try:
            return await self._on_event(provider, event, webhook_key)
        except BaseException:
            self._replays.pop(webhook_key, None)  # not durable: let the carrier's retry through
            raise
        finally:
            del self._applying[webhook_key]
            applying.set()

    async def _on_event(
        self, provider: str, event: WebhookEvent, webhook_key: str | None
    ) -> Instructions:
        async with self._resolving:
            call = await self._locate(provider, event)
            fresh: list[NewEvent] = []
            if call is None:
                call, fresh = self._register(provider, event)
        if call.ended:
            if webhook_key is not None:
                await self.store.write([], [], webhook_key)
            return self._instructions_for_ended(call, event)

        call = self.calls[call.id]  # the latest version, whatever happened while we waited
        if event.provider_call_id and call.provider_call_id != event.provider_call_id:
            call = self._learn_carrier_id(call, event.provider_call_id)
        events = list(fresh)
        instructions = Instructions(Reply.ACK, call_id=call.id)
        transition: Transition | None = None
        now = self.now()

        # a caller first seen gone (hung up before our answer) leaves nothing to refuse: it is
        # recorded with the carrier's reason below, and no hang-up is sent for it
        if fresh and call.direction is Direction.INBOUND and event.kind is not WebhookKind.ENDED:
            rejected = self._inbound_refusal(call)
            if rejected is not None:
                return await self._reject(call, events, rejected, webhook_key)

        kind = event.kind
        if kind is WebhookKind.RINGING:
            transition = machine.advance(call, State.RINGING, now)
        elif kind is WebhookKind.ANSWERED:
            transition = machine.advance(call, State.ANSWERED, now)
        elif kind is WebhookKind.ENDED:
            transition = machine.end(call, event.end_reason or EndReason.COMPLETED, now)
        elif kind is WebhookKind.MACHINE and event.machine:
            call = _owing(attrs.evolve(call, metadata={**call.metadata, "answered_by": "machine"}))
            transition = machine.end(call, EndReason.VOICEMAIL, now)
        elif kind is WebhookKind.SPOKEN and call.mode is Mode.NOTIFY:
            transition = machine.end(_owing(call), EndReason.COMPLETED, now)  # message delivered
        elif kind is WebhookKind.SPOKEN:
            self.timers.cancel(call.id, TimerKind.SETTLE)
            transition = machine.advance(call, State.LISTENING, now)
        elif kind is WebhookKind.DTMF and event.digits and call.id not in self._streaming:
            # with a stream up, the stream reports the key (Telnyx sends both): record it once
            events.extend(NewEvent(EventType.DTMF, call, {"digit": d}) for d in event.digits)

        if event.wants_instructions and (transition is None or not transition.call.ended):
            # the carrier is waiting for what to do next: the call is being answered by us
            answering = machine.advance(
                transition.call if transition else call, State.ANSWERED, now
            )
            if answering is not None:
                transition = _chain(transition, answering)
            instructions = self._instructions_for_live(call)

        if transition is not None:
            self._on_answered(call, transition.call)
            events.extend(transition.events)
            call = transition.call
        self._remember(call)
        try:
            await self.store.write([call], events, webhook_key)
        except DuplicateWebhookKey:
            # a replay older than the in-memory filter: undo the memory change, answer as one
            stored = await self.store.get(call.id)
            if stored is not None:
                self._remember(stored)
            else:
                self.calls.pop(call.id, None)
            raise
        if call.ended:
            self._ended(call)
            if call.metadata.get("hangup_owed"):
                self._owe(call)
            return (
                Instructions(Reply.HANGUP, call_id=call.id)
                if event.wants_instructions
                else instructions
            )
        carrier = self.carriers.get(provider)
        if carrier is not None and carrier.instructs_by_rest:
            self._instruct_by_rest(carrier, call, event, bool(fresh))
        return instructions

    async def _locate(self, provider: str, event: WebhookEvent) -> Call | None:
        """The call an event is about: by our id, then the carrier's ids, memory first."""
        if event.call_id:
            call = self._known(event.call_id) or await self.store.get(event.call_id)
            if call is not None and call.provider == provider:
                self.adopt(call)
                return self._known(call.id) or call
        for carrier_id in (event.provider_call_id, event.request_id):
            if carrier_id and (provider, carrier_id) in self._by_carrier:
                known = self._known(self._by_carrier[(provider, carrier_id)])
                if known is not None:
                    return known
        for carrier_id in (event.provider_call_id, event.request_id):
            if carrier_id:
                stored = await self.store.find(provider, carrier_id)
                if stored is not None:
                    self.adopt(stored)
                    return self._known(stored.id) or stored
        return None

    async def _learn_dialed_id(self, before: Call, learned: Call) -> bool:
        """Remember and store ``learned``: ``before`` with the carrier id its dial returned.

        False, with ``before`` remembered again, if the store holds that id for another call
        (an ended one: a live one is caught in memory first). Checked by the write itself, not
        by a read before it: that read cost every placed call a trip to the store's thread.
        """
        self._remember(learned)
        try:
            await self._write(learned)
        except RejectedWrite:
            for key in _carrier_keys(learned):
                if self._by_carrier.get(key) == learned.id:
                    del self._by_carrier[key]
            self._remember(before)
            return False
        return True

    async def _taken_id(self, call: Call, provider_call_id: str, whose: str) -> DialFailed:
        """The dial answered with a carrier id we know as another call's (a misbehaving carrier
        or a stub): storing it would break the store's uniqueness, and a hang-up by it would end
        that other call. So this call fails, and nothing is sent by that id."""
        error = CarrierError(
            f"{call.provider} returned call id {provider_call_id}, already {whose}",
            retryable=False,
        )
        log.error(
            "dial failed",
            extra={"call_id": call.id, "provider": call.provider, "error": str(error)},
        )
        ended = await self.end_call(call.id, EndReason.FAILED, hangup=False)
        return DialFailed(ended or self._known(call.id) or call, error)

    def _known(self, call_id: str) -> Call | None:
        """The call as memory has it: live, or recently ended (see :attr:`_recently_ended`)."""
        return self.calls.get(call_id) or self._recently_ended.get(call_id)

    def _register(self, provider: str, event: WebhookEvent) -> tuple[Call, list[NewEvent]]:
        """A call seen for the first time in a webhook: inbound, or outbound-api."""
        direction = (
            Direction.INBOUND if event.direction is Direction.INBOUND else Direction.OUTBOUND_API
        )
        now = self.now()
        call = Call(
            id=new_call_id(),
            provider=provider,
            provider_call_id=event.provider_call_id,
            direction=direction,
            from_number=event.from_number or "",
            to=event.to or "",
            created_at=now,
            updated_at=now,
        )
        self._remember(call)
        self.arm_lifetime(call)
        log.info(
            "new call from carrier",
            extra={"call_id": call.id, "provider": provider, "direction": direction.value},
        )
        return call, [NewEvent(EventType.CREATED, call)]

    def _inbound_refusal(self, call: Call) -> str | None:
        calls = self.config.calls
        if not policy.admits(calls.inbound_policy, call.from_number, calls.allow_from):
            return "policy"
        if len(self.calls) > calls.max_concurrent:  # this call already holds a slot
            return "capacity"
        return None

    async def _reject(
        self, call: Call, events: list[NewEvent], why: str, webhook_key: str | None
    ) -> Instructions:
        """Refuse an inbound call: recorded as ended, hung up exactly once."""
        carrier = self.carriers.get(call.provider)
        by_rest = carrier is not None and carrier.instructs_by_rest
        metadata = {**call.metadata, "rejected": why}
        if by_rest:
            metadata["hangup_owed"] = True  # Telnyx ignores webhook answers: hang up by REST
        reason = EndReason.BUSY if why == "capacity" else EndReason.HANGUP_BOT
        transition = machine.end(attrs.evolve(call, metadata=metadata), reason, self.now())
        assert transition is not None
        self._remember(transition.call)
        await self.store.write([transition.call], [*events, *transition.events], webhook_key)
        self._ended(transition.call)
        if by_rest:
            self._owe(transition.call)
        log.info(
            "inbound call rejected",
            extra={"call_id": call.id, "from": call.from_number, "why": why},
        )
        return Instructions(Reply.REJECT, call_id=call.id)

    def _instructions_for_live(self, call: Call) -> Instructions:
        message = str(call.metadata.get("message", ""))
        if call.mode is Mode.NOTIFY and message:
            return Instructions(Reply.SAY_AND_HANGUP, call_id=call.id, text=message)
        return Instructions(Reply.STREAM, call_id=call.id, stream_token=self.issue_token(call.id))

    @staticmethod
    def _instructions_for_ended(call: Call, event: WebhookEvent) -> Instructions:
        if not event.wants_instructions:
            return Instructions(Reply.ACK, call_id=call.id)
        reply = Reply.REJECT if call.metadata.get("rejected") else Reply.HANGUP
        return Instructions(reply, call_id=call.id)

    def _instruct_by_rest(
        self, carrier: Carrier, call: Call, event: WebhookEvent, fresh: bool
    ) -> None:
        """For carriers that ignore webhook answers (Telnyx): answer inbound calls, and start
        the stream of answered ones, through REST, after the event is durable."""
        inbound = call.direction is Direction.INBOUND
        if not (
            (fresh and inbound and event.kind is WebhookKind.INITIATED)
            or (not inbound and event.kind is WebhookKind.ANSWERED)
        ):
            return
        instructions = self._instructions_for_live(call)
        assert self._nursery is not None
        self._nursery.start_soon(self._instruct, carrier, call, instructions)

    async def _instruct(self, carrier: Carrier, call: Call, instructions: Instructions) -> None:
        try:
            await carrier.instruct(call, instructions)
        except CarrierError as error:
            log.warning(
                "carrier instruction failed; ending the call",
                extra={"call_id": call.id, "reply": instructions.reply.value, "error": str(error)},
            )
            await self.end_call(call.id, EndReason.ERROR)

    def _learn_carrier_id(self, call: Call, provider_call_id: str) -> Call:
        """Adopt the carrier's real call id (Plivo: the CallUUID replaces the RequestUUID)."""
        if call.provider_call_id:
            metadata = {**call.metadata, "request_id": call.provider_call_id}
            call = attrs.evolve(call, provider_call_id=provider_call_id, metadata=metadata)
        else:
            call = attrs.evolve(call, provider_call_id=provider_call_id)
        self._remember(call)
        return call

    # -- stream tokens -------------------------------------------------------------------------

    def issue_token(self, call_id: str) -> str:
        """A fresh single-use stream token for ``call_id`` (every webhook answer issues one)."""
        token = secrets.token_hex(16)  # alphanumeric: Plivo allows nothing else in extraHeaders
        self._tokens[_digest(token)] = (call_id, trio.current_time() + TOKEN_TTL)
        if len(self._tokens) > 4 * len(self.calls) + 1024:
            now = trio.current_time()
            self._tokens = {k: v for k, v in self._tokens.items() if v[1] > now}
        return token

    def redeem_token(self, token: str) -> Call | None:
        """The live call ``token`` belongs to, once; a used, expired or unknown token is None.

        Tokens are looked up by their SHA-256, so no comparison of secret bytes leaks timing.
        """
        entry = self._tokens.pop(_digest(token), None)
        if entry is None or entry[1] < trio.current_time():
            return None
        return self.calls.get(entry[0])

    # -- timers --------------------------------------------------------------------------------

    def arm_lifetime(self, call: Call) -> None:
        """Arm the ring or max-duration timer for the time left (restored calls included)."""
        calls = self.config.calls
        if call.answered_at is not None:
            kind, limit, since = TimerKind.MAX_DURATION, calls.max_duration, call.max_duration_from
        else:
            kind, limit, since = TimerKind.RING, calls.ring_timeout, call.created_at
        left = limit - (self.now() - since).total_seconds()
        self.timers.arm(call.id, kind, trio.current_time() + max(0.0, left))

    def _on_answered(self, before: Call, after: Call) -> None:
        if before.answered_at is None and after.answered_at is not None:
            self.timers.cancel(after.id, TimerKind.RING)
            self.timers.arm(
                after.id,
                TimerKind.MAX_DURATION,
                trio.current_time() + self.config.calls.max_duration,
            )

    def _expired(self, call_id: str, kind: TimerKind) -> None:
        assert self._nursery is not None
        if kind is TimerKind.SETTLE:
            self._nursery.start_soon(self.set_state, call_id, State.LISTENING)
            return
        reason = EndReason.STREAM_LOST if kind is TimerKind.STREAM_GRACE else EndReason.TIMEOUT
        log.info(
            "timer expired", extra={"call_id": call_id, "timer": kind.value, "reason": reason.value}
        )
        self._nursery.start_soon(self.end_call, call_id, reason)

    def stream_gone(self, call_id: str) -> None:
        """The call's current media stream ended: end it unless a new one comes in the grace.

        While voicecalld speaks, the grace counts from the end of the speech: Twilio plays
        ``<Say>`` between the stream it ends and the one it opens after.
        """
        self._streaming.discard(call_id)
        if call_id in self.calls:
            start = max(trio.current_time(), self._speaking_until.get(call_id, 0.0))
            grace = self.config.calls.stream_grace
            self.timers.arm(call_id, TimerKind.STREAM_GRACE, start + grace)

    def stream_back(self, call_id: str) -> None:
        """A media stream of the call started."""
        self._streaming.add(call_id)
        self.timers.cancel(call_id, TimerKind.STREAM_GRACE)

    # -- owed hang-ups -------------------------------------------------------------------------

    def _owe(self, call: Call) -> None:
        if call.id not in self._owed:
            self._owed[call.id] = _Owed(call)
            self._owed_wake.set()

    @property
    def owed_hangups(self) -> int:
        return len(self._owed)

    async def _pay_hangups(self) -> None:
        """Attempt every owed hang-up when due; one in flight per call."""
        assert self._nursery is not None
        # after a restart or a big sweep, many are due at once: no burst at the carrier
        limiter = trio.CapacityLimiter(self.config.calls.reconcile_concurrency)
        while True:
            self._owed_wake = trio.Event()
            now = trio.current_time()
            due = [
                o
                for o in self._owed.values()
                if o.next_try <= now and o.call.id not in self._hanging_up
            ]
            for owed in due:
                self._hanging_up.add(owed.call.id)
                self._nursery.start_soon(self._attempt_hangup, owed, limiter)
            upcoming = [
                o.next_try for o in self._owed.values() if o.call.id not in self._hanging_up
            ]
            with trio.move_on_at(min(upcoming, default=float("inf"))):
                await self._owed_wake.wait()

    async def _attempt_hangup(self, owed: _Owed, limiter: trio.CapacityLimiter) -> None:
        call = owed.call
        carrier = self.carriers.get(call.provider)
        try:
            if carrier is None:
                raise CarrierError(f"provider {call.provider} is not enabled", retryable=True)
            async with limiter:
                await carrier.hangup(call)
        except Exception as failure:  # any failure: a bug must not turn into a restart loop
            error = failure if isinstance(failure, CarrierError) else _unexpected(failure)
            owed.attempts += 1
            delay = min(HANGUP_RETRY_CAP, 2.0 ** min(owed.attempts, 12))
            owed.next_try = trio.current_time() + delay
            self.metrics.hangup_failures.inc(
                provider=call.provider, retryable=str(error.retryable).lower()
            )
            log.warning(
                "carrier hang-up failed; will retry",
                extra={
                    "call_id": call.id,
                    "provider": call.provider,
                    "error": str(error),
                    "attempt": owed.attempts,
                    "retry_in_s": delay,
                },
            )
        else:
            del self._owed[call.id]
            known = self._known(call.id) or call  # memory answers GET /v1/calls/{id}: keep it true
            settled = attrs.evolve(
                known, metadata={k: v for k, v in known.metadata.items() if k != "hangup_owed"}
            )
            self._remember(settled)
            await self._write(settled)
            log.info("carrier hang-up done", extra={"call_id": call.id, "provider": call.provider})
        finally:
            self._hanging_up.discard(call.id)
            self._owed_wake.set()

    # -- bookkeeping ---------------------------------------------------------------------------

    def _remember(self, call: Call) -> None:
        """Keep ``call`` in memory: live calls until they end, ended ones for a while.

        An ended call stays known (:attr:`_recently_ended`) so that news arriving while its end
        is being written, or late callbacks after it, find the ended call and not the older
        record the store still has: adopting that would bring the call back to life.
        """
        if call.ended:
            self.calls.pop(call.id, None)
            self._recently_ended[call.id] = call
            self._recently_ended.move_to_end(call.id)
            while len(self._recently_ended) > RECENTLY_ENDED:
                _, forgotten = self._recently_ended.popitem(last=False)
                for key in _carrier_keys(forgotten):
                    if self._by_carrier.get(key) == forgotten.id:
                        del self._by_carrier[key]
        else:
            self.calls[call.id] = call
        for key in _carrier_keys(call):
            self._by_carrier[key] = call.id

    def _ended(self, call: Call) -> None:
        self.timers.cancel(call.id)
        self._streaming.discard(call.id)
        self._speaking_until.pop(call.id, None)
        self.metrics.calls_ended.inc(provider=call.provider, reason=str(call.end_reason))
        log.info(
            "call ended",
            extra={"call_id": call.id, "provider": call.provider, "reason": str(call.end_reason)},
        )
        for hook in self.ended_hooks:
            hook(call)

    async def _commit(self, transition: Transition) -> None:
        self._remember(transition.call)
        await self._write(transition.call, transition.events)
        if transition.call.ended:
            self._ended(transition.call)

    async def _write(self, call: Call, events: list[NewEvent] | tuple[NewEvent, ...] = ()) -> None:
        await self.store.write([call], list(events))


def _unexpected(failure: Exception) -> CarrierError:
    log.error("unexpected error during a carrier hang-up", exc_info=failure)
    return CarrierError(f"{type(failure).__name__}: {failure}", retryable=True)


def _carrier_keys(call: Call) -> list[tuple[str, str]]:
    """The ids a carrier may call ``call`` by: its call id, and the request id it placed it by."""
    keys = [(call.provider, call.provider_call_id)] if call.provider_call_id else []
    request_id = call.metadata.get("request_id")
    if isinstance(request_id, str):
        keys.append((call.provider, request_id))
    return keys


def _owing(call: Call) -> Call:
    """``call`` marked as owed a carrier hang-up (when it reached the carrier at all)."""
    if not call.provider_call_id:
        return call
    return attrs.evolve(call, metadata={**call.metadata, "hangup_owed": True})


def _chain(first: Transition | None, second: Transition) -> Transition:
    if first is None:
        return second
    return Transition(second.call, first.events + second.events)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
