"""The URLs voicecalld hands carriers, and the URL it verifies their signatures against.

Every such URL is ``server.public_url`` + route path (+ query), never derived from the Host
header: a proxy or tunnel in front may rewrite the host, the scheme, the port or strip a path
prefix, and only the operator's configured public URL says what the carrier actually called.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

import attrs

__all__ = ["PublicUrls"]


@attrs.frozen
class PublicUrls:
    base: str
    """``server.public_url`` as configured, e.g. ``https://example.com/voice`` (may be empty for
    the mock carrier, which needs no public address)."""

    @property
    def _root(self) -> str:
        return self.base.rstrip("/")

    def webhook(self, provider: str, call_id: str | None = None) -> str:
        """Where ``provider`` posts callbacks; with ``?call=<id>`` for calls voicecalld placed, so
        their callbacks name the call (and tell them from ``outbound-api`` calls)."""
        url = f"{self._root}/webhooks/{provider}"
        return f"{url}?call={quote(call_id, safe='')}" if call_id else url

    def media(self, provider: str) -> str:
        """The media websocket URL: ``wss://`` for an ``https`` public URL, else ``ws://``."""
        parts = urlsplit(self._root)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return f"{scheme}://{parts.netloc}{parts.path}/media/{provider}"

    def signed(self, path: str, query: str) -> str:
        """The URL a carrier signed for a request that reached ``path`` with ``query``."""
        return f"{self._root}{path}" + (f"?{query}" if query else "")
