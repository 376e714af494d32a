"""The carrier simulator (SPEC §9): Twilio, Plivo and Telnyx on loopback, without an account.

Start with :func:`serve_simulator` (or, in tests, :func:`voicecalld.testing.simulated`); the
command line is ``voicecalld simulate`` (:mod:`.cli`). The parts, each in its own module:

- the REST half: :mod:`.rest` serves the carriers' call APIs (:mod:`.twilio_api`,
  :mod:`.plivo_api`, :mod:`.telnyx_api`) over the records of :mod:`.state`, with the faults of
  :mod:`.faults`;
- the voice half, pure: each carrier's webhooks, instructions and media-stream messages
  (:mod:`.twilio_voice`, :mod:`.plivo_voice`, :mod:`.telnyx_voice`, over :mod:`.dialect`), the
  caller's audio (:mod:`.audio`), the far end's script (:mod:`.scenario`), the tallies
  (:mod:`.stats`);
- the shells that play calls: :mod:`.sender` (webhooks), :mod:`.media` (streams and their
  clock), :mod:`.player` (one call), :mod:`.simulator` (all of them), :mod:`.campaign` (a
  load run).
"""

from voicecalld.sim.audio import Audio
from voicecalld.sim.faults import Endpoint, Fault
from voicecalld.sim.player import SimulatedCall
from voicecalld.sim.scenario import Outcome, Scenario, WebhookFaults
from voicecalld.sim.simulator import Simulator, serve_simulator
from voicecalld.sim.state import SimAccounts, SimStatus

__all__ = [
    "Audio",
    "Endpoint",
    "Fault",
    "Outcome",
    "Scenario",
    "SimAccounts",
    "SimStatus",
    "SimulatedCall",
    "Simulator",
    "WebhookFaults",
    "serve_simulator",
]
