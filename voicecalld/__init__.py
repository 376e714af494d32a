"""voicecalld: a self-hosted telephony edge for voice applications, on Trio.

Carriers (Twilio, Plivo, Telnyx, and a built-in mock) call its webhooks and media websockets; the
application places and takes calls through its control API and one carrier-neutral websocket.
The external contract is SPEC.md; the README maps it onto this tree.
"""

__version__ = "0.1.0"
