"""A load run against a running daemon: calls started at a steady rate, watched to their end.

:func:`run_campaign` starts ``calls`` calls at ``rate`` a second, cycling through the chosen
carriers and directions: an **outbound** call is placed through voicecalld's control API (the
simulator then plays its callee), an **inbound** or **outbound-api** one is started by the
simulator itself (every carrier meets every direction). Each call's far end follows the base
scenario with an outcome drawn from the given weights (answer, busy, no answer, failed), and
with the faults on a share of the calls.
Progress goes to ``report`` twice a second; at the end (every call over at the carrier, or
the deadline) voicecalld's own record of every call is read back through its API, so the
summary sets the carrier's view beside the daemon's.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
import httpx
import trio

from voicecalld.sim.player import SimulatedCall
from voicecalld.sim.scenario import Outcome, Scenario, WebhookFaults
from voicecalld.sim.simulator import Simulator
from voicecalld.sim.stats import progress

__all__ = ["Campaign", "Result", "run_campaign"]

DIRECTIONS: Final = ("outbound", "inbound", "outbound-api")
REPORT_EVERY: Final = 0.5


@attrs.frozen
class Campaign:
    providers: tuple[str, ...]
    calls: int
    rate: float
    """Calls started a second."""
    directions: tuple[str, ...] = ("outbound",)
    scenario: Scenario = attrs.field(factory=Scenario)
    outcomes: Mapping[Outcome, float] = attrs.field(factory=lambda: {Outcome.ANSWER: 1.0})
    """Relative weights of the far end's outcomes."""
    faults: WebhookFaults = attrs.field(factory=WebhookFaults)
    drop_stream: float | None = None
    fault_share: float = 1.0
    """The share of calls that get the faults (and the dropped stream)."""
    from_number: str = "+15550100000"
    seed: int | None = None


@attrs.frozen
class Result:
    calls: list[SimulatedCall]
    elapsed: float
    api: Counter[str]
    """Answers to ``POST /v1/calls``: HTTP status (or ``error``)."""
    daemon: Counter[str]
    """voicecalld's record of the calls: end reason, or state when not ended, or ``missing``."""

    @property
    def unfinished(self) -> int:
        return sum(not call.ended.is_set() for call in self.calls)


async def run_campaign(
    sim: Simulator,
    api: httpx.AsyncClient,
    campaign: Campaign,
    *,
    report: Callable[[str], None],
    deadline: float,
) -> Result:
    """Run ``campaign`` against the daemon behind ``api`` (base URL and token set)."""
    rng = random.Random(campaign.seed)
    calls: list[SimulatedCall] = []
    api_answers: Counter[str] = Counter()
    started = trio.current_time()

    async def place(provider: str, to: str) -> None:
        began = trio.current_time()
        try:
            response = await api.post("/v1/calls", json={"to": to, "provider": provider})
        except httpx.HTTPError:
            api_answers["error"] += 1
            return
        sim.tally.latency("api", trio.current_time() - began)
        api_answers[str(response.status_code)] += 1
        if response.status_code == 201:
            calls.append(sim.call(response.json()["provider_call_id"]))

    with trio.move_on_at(started + deadline):
        async with trio.open_nursery() as reporting:
            reporting.start_soon(_report, sim, calls, campaign.calls, started, report)
            async with trio.open_nursery() as placing:
                for index in range(campaign.calls):
                    await trio.sleep_until(started + index / campaign.rate)
                    count = len(campaign.providers)
                    provider = campaign.providers[index % count]
                    direction = campaign.directions[index // count % len(campaign.directions)]
                    scenario = _scenario(campaign, rng)
                    to = f"+1555{index:07d}"
                    if direction == "outbound":
                        sim.plan(to, scenario)
                        placing.start_soon(place, provider, to)
                    elif direction == "inbound":
                        calls.append(
                            sim.inbound(
                                provider, from_number=to, to=campaign.from_number, scenario=scenario
                            )
                        )
                    else:
                        calls.append(
                            sim.outbound_api(
                                provider, from_number=campaign.from_number, to=to, scenario=scenario
                            )
                        )
            for call in calls:
                await call.ended.wait()
            reporting.cancel_scope.cancel()
    elapsed = trio.current_time() - started
    report(progress(sim.tally, len(calls), campaign.calls, elapsed))
    daemon = await _daemon_view(api, calls)
    return Result(calls, elapsed, api_answers, daemon)


def _scenario(campaign: Campaign, rng: random.Random) -> Scenario:
    outcomes, weights = zip(*campaign.outcomes.items(), strict=True)
    scenario = attrs.evolve(campaign.scenario, outcome=rng.choices(outcomes, weights)[0])
    if rng.random() < campaign.fault_share:
        scenario = attrs.evolve(scenario, faults=campaign.faults, drop_stream=campaign.drop_stream)
    return scenario


async def _report(
    sim: Simulator,
    calls: list[SimulatedCall],
    total: int,
    started: float,
    report: Callable[[str], None],
) -> None:
    while True:
        await trio.sleep(REPORT_EVERY)
        report(progress(sim.tally, len(calls), total, trio.current_time() - started))


async def _daemon_view(api: httpx.AsyncClient, calls: list[SimulatedCall]) -> Counter[str]:
    """How voicecalld recorded each call, found by its carrier ids in ``GET /v1/calls``."""
    records: dict[str, dict[str, Any]] = {}
    cursor: str | None = None
    try:
        while True:
            params = {"limit": "500", **({"cursor": cursor} if cursor else {})}
            page = (await api.get("/v1/calls", params=params)).json()
            for record in page["calls"]:
                for key in (record["provider_call_id"], record["metadata"].get("request_id")):
                    if key:
                        records[key] = record
            cursor = page.get("next_cursor")
            if not cursor:
                break
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        pass  # the daemon went away: what was found is what is shown
    view: Counter[str] = Counter()
    for call in calls:
        record = records.get(call.carrier_id) or records.get(call.call.request_id or "")
        if record is None:
            view["missing"] += 1
        else:
            view[record["end_reason"] or f"not ended ({record['state']})"] += 1
    return view
