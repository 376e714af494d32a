"""``/media/{provider}`` as plain HTTP: what a request that is no websocket upgrade gets.

The streams themselves never reach this app: the front door sends ``GET /media/`` requests down
the media fast path, whose handshake (:mod:`voicecalld.media.handshake`) refuses one without
``Upgrade: websocket`` with a 400, as RFC 6455 §4.2.1 asks. Other methods come here; they get
what that handshake would answer, so the URL reads the same whichever way it is reached: 405
with ``Allow: GET`` (the router's, for any method but GET), and 400 for a GET.
"""

from __future__ import annotations

from voicecalld.http.app import Route
from voicecalld.http.asgi import Request, Response, error

__all__ = ["routes"]


def routes() -> list[Route]:
    async def not_upgraded(request: Request, _params: dict[str, str]) -> Response:
        request.note = "media URL without a websocket upgrade"
        return error(400, "bad_request", "a media stream is a websocket: missing Upgrade")

    return [Route("/media/{provider}", frozenset({"GET"}), not_upgraded)]
