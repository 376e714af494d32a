"""What the simulator counts, and how it reports it: the live progress line and the summary.

Everything a simulated carrier sees ends up in one :class:`Tally`: calls by direction and by
outcome, webhooks by what they were and how voicecalld answered (an HTTP status, or ``error``
when it could not be reached), media frames each way, and latencies (``webhook``: a webhook's
round trip; ``setup``: from the answer to the media stream's ``start``; ``api``: placing a
call through voicecalld's API). Percentiles are nearest-rank over every sample. Pure.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import attrs

__all__ = ["Tally", "percentile", "progress", "summary"]


@attrs.define
class Tally:
    started: Counter[str] = attrs.field(factory=Counter)
    """Calls the simulator played, by direction."""
    outcomes: Counter[str] = attrs.field(factory=Counter)
    """Ended calls, by the carrier's final status (``completed``, ``busy``, ...)."""
    hung_up_by: Counter[str] = attrs.field(factory=Counter)
    webhooks: Counter[tuple[str, str]] = attrs.field(factory=Counter)
    """``(what, answer)``: e.g. ``("twilio ringing", "200")``, ``("telnyx call.hangup", "403")``."""
    latencies: dict[str, list[float]] = attrs.field(factory=dict)
    streams: Counter[str] = attrs.field(factory=Counter)
    """Media streams: ``opened``, ``refused`` (the upgrade failed), ``closed by voicecalld``."""
    frames_sent: int = 0
    frames_received: int = 0
    marks: int = 0
    """Marks (checkpoints) echoed back to voicecalld."""
    invalid: Counter[str] = attrs.field(factory=Counter)
    """What the carrier would have refused: ``answer`` (TwiML/XML it cannot run),
    ``command``, ``media`` (a stream message)."""

    @property
    def live(self) -> int:
        return self.started.total() - self.outcomes.total()

    def latency(self, name: str, seconds: float) -> None:
        self.latencies.setdefault(name, []).append(seconds)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in 0..1) of ``values`` (not empty)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def progress(tally: Tally, placed: int, total: int, elapsed: float) -> str:
    """One line for a live display."""
    webhooks = tally.webhooks.total()
    failed = sum(n for (_, answer), n in tally.webhooks.items() if not answer.startswith("2"))
    return (
        f"{elapsed:6.1f}s  calls {placed}/{total} started, {tally.live} live, "
        f"{tally.outcomes.total()} ended  |  webhooks {webhooks} ({failed} not 2xx)  |  "
        f"frames sent {tally.frames_sent:,}, received {tally.frames_received:,}"
    )


def summary(tally: Tally, elapsed: float, daemon: Mapping[str, int] | None = None) -> str:
    """The closing report: calls by outcome, webhooks by answer, media, latency percentiles.

    ``daemon``: voicecalld's own view of the calls (its end reasons, or state when not ended).
    """
    sections = [
        _table(
            "calls (carrier side)",
            ("outcome", "calls"),
            [(outcome, str(n)) for outcome, n in sorted(tally.outcomes.items())]
            + [("still live", str(tally.live))] * bool(tally.live),
        ),
    ]
    if daemon is not None:
        sections.append(
            _table(
                "calls (voicecalld's record)",
                ("end reason / state", "calls"),
                [(reason, str(n)) for reason, n in sorted(daemon.items())],
            )
        )
    sections.append(
        _table(
            "webhooks",
            ("webhook", "answer", "count"),
            [(what, answer, str(n)) for (what, answer), n in sorted(tally.webhooks.items())],
        )
    )
    media = [
        ("streams opened", str(tally.streams["opened"])),
        ("streams refused", str(tally.streams["refused"])),
        ("frames sent", f"{tally.frames_sent:,}"),
        ("frames received", f"{tally.frames_received:,}"),
        ("marks echoed", str(tally.marks)),
    ]
    media += [(f"invalid {what}", str(n)) for what, n in sorted(tally.invalid.items())]
    sections.append(_table("media", ("", "count"), media))
    rows = []
    for name, values in sorted(tally.latencies.items()):
        if values:
            cells = [percentile(values, q) * 1000 for q in (0.5, 0.9, 0.99)] + [max(values) * 1000]
            rows.append((name, str(len(values)), *(f"{ms:.1f}" for ms in cells)))
    sections.append(_table("latency (ms)", ("", "n", "p50", "p90", "p99", "max"), rows))
    sections.append(f"elapsed {elapsed:.1f}s")
    return "\n\n".join(sections)


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        padded = [first.ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)
        ]
        return "  " + "  ".join(padded).rstrip()

    body = [line(header), "  " + "  ".join("-" * w for w in widths)]
    body += [line(row) for row in rows] or ["  (none)"]
    return "\n".join([title, *body])
