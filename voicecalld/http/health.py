"""``/healthz``, ``/readyz`` and ``/metrics``, and the readiness they report.

``/healthz`` answers 200 while the process runs (a liveness probe must not fail because a carrier
is slow). ``/readyz`` answers 200 only once the store is open, calls are restored and requests are
accepted, and 503 while starting or draining, so a load balancer sends traffic elsewhere.
"""

from __future__ import annotations

from enum import StrEnum

from voicecalld.http.app import Route
from voicecalld.http.asgi import Request, Response, json, text
from voicecalld.metrics import Metrics

__all__ = ["Phase", "Readiness", "routes"]


class Phase(StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"


class Readiness:
    """The runtime's phase; read by ``/readyz``, ``POST /v1/calls`` and ``/metrics``."""

    def __init__(self, metrics: Metrics) -> None:
        self.phase = Phase.STARTING
        self._metrics = metrics
        metrics.ready.set(0.0)

    def set(self, phase: Phase) -> None:
        self.phase = phase
        self._metrics.ready.set(1.0 if phase is Phase.READY else 0.0)

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY


def routes(readiness: Readiness, metrics: Metrics) -> list[Route]:
    async def healthz(_request: Request, _params: dict[str, str]) -> Response:
        # "service" lets a second daemon that finds this port taken know it is ours (listeners)
        return json(200, {"status": "ok", "service": "voicecalld"})

    async def readyz(_request: Request, _params: dict[str, str]) -> Response:
        status = 200 if readiness.ready else 503
        return json(status, {"status": readiness.phase.value})

    async def metrics_page(_request: Request, _params: dict[str, str]) -> Response:
        return text(200, metrics.render(), "text/plain; version=0.0.4; charset=utf-8")

    get = frozenset({"GET"})
    return [
        Route("/healthz", get, healthz),
        Route("/readyz", get, readyz),
        Route("/metrics", get, metrics_page),
    ]
