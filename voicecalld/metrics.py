"""Prometheus counters and gauges, and their text exposition (``GET /metrics``).

Deliberately tiny: counters and gauges with labels, rendered in the text format version 0.0.4.
One :class:`Metrics` lives for the whole process (restarts of the runtime keep counting), and the
names of every series voicecalld exports are declared here, so ``/metrics`` is documented in one
place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from voicecalld import __version__

__all__ = ["Counter", "Gauge", "Metrics"]

Labels = tuple[tuple[str, str], ...]


class Counter:
    kind: Final = "counter"

    def __init__(self, name: str, help: str) -> None:
        self.name = name
        self.help = help
        self.values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0.0)


class Gauge:
    """A value read when scraped, from a function (so it can never go stale)."""

    kind: Final = "gauge"

    def __init__(
        self, name: str, help: str, read: Callable[[], dict[Labels, float]] | None = None
    ) -> None:
        self.name = name
        self.help = help
        self.read = read or (lambda: {})
        self.values: dict[Labels, float] = {}

    def set(self, value: float, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] = value

    def collect(self) -> dict[Labels, float]:
        return {**self.values, **self.read()}


class Metrics:
    """Every series voicecalld exports."""

    def __init__(self) -> None:
        c, g = Counter, Gauge
        self.build_info = g("voicecalld_build_info", "Build information (always 1).")
        self.build_info.set(1.0, version=__version__)
        self.restarts = c(
            "voicecalld_runtime_restarts_total", "Runtime restarts by the supervisor."
        )
        self.startup_failures = c(
            "voicecalld_startup_failures_total", "Start-up steps that failed, by step."
        )
        self.http_requests = c(
            "voicecalld_http_requests_total", "HTTP requests answered, by route and status."
        )
        self.webhooks = c("voicecalld_webhooks_total", "Webhooks by provider and outcome.")
        self.calls_ended = c("voicecalld_calls_ended_total", "Calls ended, by provider and reason.")
        self.hangup_failures = c(
            "voicecalld_hangup_failures_total",
            "Carrier hang-ups that failed, by provider and cause.",
        )
        self.reconcile = c("voicecalld_reconcile_total", "Reconciliation outcomes, by outcome.")
        self.reaped = c("voicecalld_reaped_total", "Calls ended by the reaper.")
        self.sse_dropped = c(
            "voicecalld_sse_subscribers_dropped_total", "Slow SSE subscribers dropped."
        )
        self.media_frames = c("voicecalld_media_frames_total", "Media frames, by direction.")
        self.media_dropped = c(
            "voicecalld_media_frames_dropped_total",
            "Media frames dropped at a full queue, by direction.",
        )
        self.streams_refused = c(
            "voicecalld_streams_refused_total", "Media stream upgrades refused, by reason."
        )
        self.live_calls = g("voicecalld_calls_live", "Calls not yet ended.")
        self.streams = g("voicecalld_media_streams", "Open carrier media streams.")
        self.ready = g("voicecalld_ready", "1 once restored and accepting, else 0.")

    def all(self) -> list[Counter | Gauge]:
        return [m for m in vars(self).values() if isinstance(m, Counter | Gauge)]

    def render(self) -> bytes:
        """The text exposition format (``text/plain; version=0.0.4``)."""
        lines: list[str] = []
        for metric in self.all():
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            values = metric.values if isinstance(metric, Counter) else metric.collect()
            for labels, value in sorted(values.items()):
                lines.append(f"{metric.name}{_labels(labels)} {_number(value)}")
        return ("\n".join(lines) + "\n").encode()


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    """A label value as the exposition format quotes it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)
