"""``voicecalld simulate``: the carrier simulator from the command line (SPEC §1, §9).

Three commands:

- ``init [FILE]`` writes a config in which Twilio, Plivo and Telnyx point at the simulator on
  loopback, with fresh credentials (the Telnyx public key is the simulator's, derived from the
  config's API key, so the simulator needs nothing but the config to sign Telnyx webhooks);
- ``run`` (the default) plays a load run against the running daemon of that config: ``--calls``
  calls at ``--rate`` a second, with a live progress line and a closing summary (calls by
  outcome on both sides, webhooks by answer, media frames, latency percentiles); exit 0 when
  every call ended on both sides, 1 otherwise;
- ``serve`` answers what the daemon places (``voicecalld call``) until interrupted (Ctrl-C),
  one line per call as it ends, then the summary.

The simulator serves on the host and port of the carriers' ``api_base_url`` and sends webhooks
to ``server.public_url``; it refuses a config whose carriers are real (a non-loopback
``api_base_url``, or a Telnyx public key it did not make).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, Final, TextIO
from urllib.parse import urlsplit

import attrs
import httpx
import trio
from nacl.signing import SigningKey

from voicecalld import config as configuration
from voicecalld import statedir
from voicecalld.carriers.telnyx.wire import load_public_key
from voicecalld.config import Config, ConfigError
from voicecalld.sim.audio import Audio
from voicecalld.sim.campaign import DIRECTIONS, Campaign, run_campaign
from voicecalld.sim.faults import Endpoint, Fault
from voicecalld.sim.player import SimulatedCall
from voicecalld.sim.scenario import Outcome, Scenario, WebhookFaults
from voicecalld.sim.simulator import Simulator, serve_simulator
from voicecalld.sim.state import CARRIERS, SimAccounts, telnyx_seed_for
from voicecalld.sim.stats import Tally, summary

__all__ = ["simulate"]

EX_USAGE: Final = 2
EX_CONFIG: Final = 78
LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})
WEBHOOK_FAULTS: Final = {"forged": "forged", "replayed": "replayed", "duplicated": "duplicated"}
REST_FAULTS: Final = {
    "lookup-5xx": ("lookup", Fault(status=503, times=None)),
    "lookup-timeout": ("lookup", Fault(delay=15.0, times=None)),
    "hangup-5xx": ("hangup", Fault(status=503, times=None)),
    "hangup-timeout": ("hangup", Fault(delay=15.0, times=None)),
}
"""Faults on the carriers' REST API (voicecalld's requests time out after 10 s)."""
ENDPOINTS: Final = {
    ("twilio", "lookup"): (Endpoint.TWILIO_FETCH,),
    ("twilio", "hangup"): (Endpoint.TWILIO_UPDATE,),
    ("plivo", "lookup"): (Endpoint.PLIVO_LIVE, Endpoint.PLIVO_QUEUED, Endpoint.PLIVO_CDR),
    ("plivo", "hangup"): (Endpoint.PLIVO_HANGUP, Endpoint.PLIVO_CANCEL),
    ("telnyx", "lookup"): (Endpoint.TELNYX_FETCH,),
    ("telnyx", "hangup"): (Endpoint.TELNYX_HANGUP,),
}
FAULTS: Final = (*WEBHOOK_FAULTS, "out-of-order", "slow-body", "drop-stream", *REST_FAULTS)


class _Refused(Exception):
    """The simulator cannot run with this config or daemon; the message says why."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def simulate(config: Config, argv: list[str]) -> int:
    """``voicecalld simulate ARGS``: the exit code (0, 1, 2 usage, 78 invalid config)."""
    args_list = argv[1:] if argv[:1] == ["--"] else list(argv)
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in ("-h", "--help")):
        args_list = ["run", *args_list]
    try:
        args = _parser().parse_args(args_list)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EX_USAGE
    config_path = getattr(args, "config", None)  # ``init`` reads no config
    try:
        if config_path:
            config = configuration.load(config_path)
        if args.command == "init":
            return _init(args)
        if args.command == "serve":
            return _serve(config, args)
        return _run(config, args)
    except ConfigError as error:
        print(f"voicecalld simulate: invalid configuration ({config_path}):", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return EX_CONFIG
    except _Refused as refused:
        print(f"voicecalld simulate: {refused}", file=sys.stderr)
        return refused.code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voicecalld simulate",
        description="Twilio, Plivo and Telnyx on loopback, playing calls against voicecalld.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="FILE", help="the daemon's config file")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    init = sub.add_parser("init", help="write a config pointing the carriers at the simulator")
    init.add_argument("path", nargs="?", default="voicecalld-sim.toml", metavar="FILE")
    init.add_argument("--port", type=int, default=8080, help="the daemon's port (8080)")
    init.add_argument("--sim-port", type=int, default=8090, help="the simulator's port (8090)")
    init.add_argument("--state-dir", metavar="DIR", help="default: FILE's name + '-state'")
    init.add_argument("--force", action="store_true", help="overwrite FILE")

    run = sub.add_parser("run", parents=[common], help="a load run (the default)")
    _scenario_options(run)
    run.add_argument("--calls", type=_positive_int, default=10, metavar="N")
    run.add_argument("--rate", type=_positive_float, default=5.0, metavar="R", help="calls/s")
    run.add_argument(
        "--direction", choices=[*DIRECTIONS, "mixed"], default="outbound", help="(outbound)"
    )
    for outcome in ("busy", "no-answer", "failed"):
        run.add_argument(f"--{outcome}", type=_percent, default=0.0, metavar="PCT")
    run.add_argument(
        "--fault",
        action="append",
        choices=FAULTS,
        default=[],
        help="inject a fault (repeatable): " + ", ".join(FAULTS),
    )
    run.add_argument("--fault-share", type=_percent, default=100.0, metavar="PCT")
    run.add_argument("--seed", type=int, help="make the draw of outcomes repeatable")
    run.add_argument("--timeout", type=_positive_float, metavar="S", help="give up after S s")

    serve = sub.add_parser("serve", parents=[common], help="answer what the daemon places")
    _scenario_options(serve)
    return parser


def _scenario_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--provider",
        action="append",
        choices=[*CARRIERS, "all"],
        help="carrier(s) to play (default: calls.default_provider, else every enabled one)",
    )
    parser.add_argument("--ring", type=_seconds, default=0.5, metavar="S", help="(0.5)")
    parser.add_argument("--talk", type=_seconds, default=3.0, metavar="S", help="(3.0)")
    parser.add_argument("--dtmf", default="", metavar="DIGITS", help="pressed once streaming")
    parser.add_argument("--audio", metavar="WAV", help="what callers say (default: a tone)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError("must be a number of seconds, 0 or more")
    return value


def _percent(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError("must be a percentage, 0 to 100")
    return value


# -- init --------------------------------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.exists() and not args.force:
        raise _Refused(f"{path} exists (use --force to overwrite it)", EX_USAGE)
    state_dir = Path(args.state_dir or path.with_name(path.stem + "-state")).resolve()
    accounts = SimAccounts()
    api_key = accounts.telnyx_api_key
    public_key = SimAccounts(telnyx_signing_seed=telnyx_seed_for(api_key)).telnyx_public_key
    base = f"http://127.0.0.1:{args.sim_port}"
    text = _INIT_TEMPLATE.format(
        port=args.port,
        state_dir=state_dir,
        base=base,
        twilio_sid=accounts.twilio_account_sid,
        twilio_token=accounts.twilio_auth_token,
        plivo_id=accounts.plivo_auth_id,
        plivo_token=accounts.plivo_auth_token,
        telnyx_key=api_key,
        telnyx_public=public_key,
        telnyx_connection=accounts.telnyx_connection_id,
    )
    configuration.parse(tomllib.loads(text), environ={})  # what we write must load
    path.write_text(text)
    path.chmod(0o600)
    print(f"wrote {path}: Twilio, Plivo and Telnyx on the simulator at {base}")
    print(f"  terminal 1:  voicecalld run -c {path}")
    print(f"  terminal 2:  voicecalld simulate -c {path} run --calls 20 --rate 5")
    return 0


_INIT_TEMPLATE: Final = """\
# voicecalld with its carriers played by the simulator, on loopback (voicecalld simulate init).
# The credentials below are the simulator's own: nothing here reaches a real carrier.

[server]
bind = "127.0.0.1"
port = {port}
public_url = "http://127.0.0.1:{port}"
max_inflight_per_ip = 256

[runtime]
drain_timeout = 5.0

[store]
state_dir = "{state_dir}"

[calls]
default_provider = "twilio"
inbound_policy = "open"
max_concurrent = 1000

[media]
max_streams = 1000
max_pending = 256
max_pending_per_ip = 256

[providers.twilio]
enabled = true
account_sid = "{twilio_sid}"
auth_token = "{twilio_token}"
api_base_url = "{base}"

[providers.plivo]
enabled = true
auth_id = "{plivo_id}"
auth_token = "{plivo_token}"
api_base_url = "{base}"

[providers.telnyx]
enabled = true
api_key = "{telnyx_key}"
public_key = "{telnyx_public}"
connection_id = "{telnyx_connection}"
api_base_url = "{base}"
"""


# -- what the simulator needs from the config --------------------------------------------------


@attrs.frozen
class _Setup:
    providers: tuple[str, ...]
    accounts: SimAccounts
    host: str
    port: int
    public_url: str
    api_base: str
    token: str


def _setup(config: Config, chosen: Sequence[str] | None) -> _Setup:
    providers = config.providers
    enabled = [name for name in CARRIERS if getattr(providers, name).enabled]
    if not enabled:
        raise _Refused("no carrier is enabled: write a config with `voicecalld simulate init`")
    if not chosen:
        default = config.calls.default_provider
        names = [default] if default in enabled else enabled
    elif "all" in chosen:
        names = enabled
    else:
        names = list(dict.fromkeys(chosen))
    for name in names:
        if name not in enabled:
            raise _Refused(f"providers.{name} is not enabled in the config")
    bases = {getattr(providers, name).api_base_url.rstrip("/") for name in names}
    if len(bases) != 1:
        raise _Refused(f"the carriers' api_base_url differ ({', '.join(sorted(bases))})")
    parts = urlsplit(bases.pop())
    if parts.scheme != "http" or parts.hostname not in LOOPBACK or not parts.port:
        raise _Refused(
            f"api_base_url {parts.geturl()} is not the simulator's (http://127.0.0.1:PORT): "
            "the simulator only stands in for carriers on loopback"
        )
    if not config.server.public_url:
        raise _Refused("server.public_url is empty: the simulator sends webhooks there")
    accounts = _accounts(config)
    token = statedir.read_api_token(config.state_dir, config.api.token)
    if not token:
        raise _Refused(f"no API token: start the daemon first (it writes {config.state_dir})")
    return _Setup(
        providers=tuple(names),
        accounts=accounts,
        host=parts.hostname,
        port=parts.port,
        public_url=config.server.public_url,
        api_base=_api_base(config),
        token=token,
    )


def _accounts(config: Config) -> SimAccounts:
    """The simulator's credentials: those the config gives its carriers."""
    twilio, plivo, telnyx = config.providers.twilio, config.providers.plivo, config.providers.telnyx
    fields: dict[str, Any] = {}
    if twilio.enabled:
        fields |= {"twilio_account_sid": twilio.account_sid, "twilio_auth_token": twilio.auth_token}
    if plivo.enabled:
        fields |= {"plivo_auth_id": plivo.auth_id, "plivo_auth_token": plivo.auth_token}
    if telnyx.enabled:
        seed = telnyx_seed_for(telnyx.api_key)
        if load_public_key(telnyx.public_key) != bytes(SigningKey(seed).verify_key):
            raise _Refused(
                "providers.telnyx.public_key is not the simulator's: write the config with "
                "`voicecalld simulate init` (the simulator cannot sign as the real Telnyx)"
            )
        fields |= {
            "telnyx_api_key": telnyx.api_key,
            "telnyx_connection_id": telnyx.connection_id,
            "telnyx_signing_seed": seed,
        }
    return SimAccounts(**fields)


def _api_base(config: Config) -> str:
    """Where the daemon's control API listens (the address it records, else the config's)."""
    try:
        return (config.state_dir / statedir.ADDRESS_NAME).read_text().strip()
    except OSError:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(config.server.bind, config.server.bind)  # noqa: S104
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{config.server.port}"


def _base_scenario(args: argparse.Namespace) -> Scenario:
    return Scenario(ring=args.ring, talk=args.talk, dtmf=args.dtmf)


def _audio(args: argparse.Namespace) -> Audio:
    if not args.audio:
        return Audio.tone()
    try:
        return Audio.from_wav(args.audio)
    except (OSError, ValueError) as error:
        raise _Refused(f"--audio: {error}", EX_USAGE) from None


# -- run ---------------------------------------------------------------------------------------


def _run(config: Config, args: argparse.Namespace) -> int:
    answer = 100.0 - args.busy - args.no_answer - args.failed
    if answer < 0:
        raise _Refused("--busy, --no-answer and --failed add up to more than 100%", EX_USAGE)
    audio = _audio(args)
    setup = _setup(config, args.provider)
    faults = set(args.fault)
    campaign = Campaign(
        providers=setup.providers,
        calls=args.calls,
        rate=args.rate,
        directions=DIRECTIONS if args.direction == "mixed" else (args.direction,),
        scenario=_base_scenario(args),
        outcomes={
            outcome: weight
            for outcome, weight in (
                (Outcome.ANSWER, answer),
                (Outcome.BUSY, args.busy),
                (Outcome.NO_ANSWER, args.no_answer),
                (Outcome.FAILED, args.failed),
            )
            if weight > 0
        },
        faults=WebhookFaults(
            slow_body=1.0 if "slow-body" in faults else 0.0,
            late=0.3 if "out-of-order" in faults else 0.0,
            **{field: True for name, field in WEBHOOK_FAULTS.items() if name in faults},
        ),
        drop_stream=args.talk / 2 if "drop-stream" in faults else None,
        fault_share=args.fault_share / 100.0,
        from_number=config.calls.from_number,
        seed=args.seed,
    )
    deadline = args.timeout or args.calls / args.rate + args.ring + args.talk + 30.0
    display = _Display(sys.stderr)
    tally = Tally()
    run = partial(_run_async, deadline=deadline, display=display, tally=tally)
    began = time.monotonic()
    code = 1
    try:
        code = trio.run(run, setup, campaign, audio, faults)
    except* KeyboardInterrupt:
        display.done()
        print(summary(tally, time.monotonic() - began))
    return code


async def _run_async(
    setup: _Setup,
    campaign: Campaign,
    audio: Audio,
    faults: set[str],
    *,
    deadline: float,
    display: _Display,
    tally: Tally,
) -> int:
    simulator = _simulator(setup, audio, campaign.scenario, tally)
    async with _daemon_api(setup) as api, simulator as sim:
        for name in faults & REST_FAULTS.keys():
            kind, fault = REST_FAULTS[name]
            for provider in setup.providers:
                for endpoint in ENDPOINTS[(provider, kind)]:
                    sim.carriers.arm(endpoint, fault)
        print(
            f"simulating {', '.join(setup.providers)} on {sim.base_url} against voicecalld at "
            f"{setup.api_base}: {campaign.calls} calls at {campaign.rate:g}/s",
            file=sys.stderr,
        )
        result = await run_campaign(sim, api, campaign, report=display.show, deadline=deadline)
        display.done()
    print(summary(sim.tally, result.elapsed, result.daemon))
    if result.api and set(result.api) != {"201"}:
        api_answers = ", ".join(f"{code}: {n}" for code, n in sorted(result.api.items()))
        print(f"\nPOST /v1/calls answers: {api_answers}")
    daemon_ended = result.daemon.total() - sum(
        n for reason, n in result.daemon.items() if reason == "missing" or "not ended" in reason
    )
    complete = result.unfinished == 0 and daemon_ended == len(result.calls)
    complete = complete and len(result.calls) == campaign.calls
    return 0 if complete else 1


# -- serve -------------------------------------------------------------------------------------


def _serve(config: Config, args: argparse.Namespace) -> int:
    setup = _setup(config, args.provider or ["all"])
    audio = _audio(args)
    tally = Tally()
    began = time.monotonic()
    try:
        trio.run(_serve_async, setup, audio, _base_scenario(args), tally)
    except* KeyboardInterrupt:  # Ctrl-C is how serve ends
        print("\n" + summary(tally, time.monotonic() - began))
    return 0


async def _serve_async(
    setup: _Setup,
    audio: Audio,
    scenario: Scenario,
    tally: Tally,
    *,
    task_status: trio.TaskStatus[Simulator] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled, one line per call as it ends (started: the simulator)."""
    async with (
        _simulator(setup, audio, scenario, tally) as sim,
        trio.open_nursery() as nursery,
    ):
        print(
            f"simulating {', '.join(setup.providers)} on {sim.base_url}, webhooks to "
            f"{setup.public_url}; Ctrl-C to stop",
            file=sys.stderr,
        )
        sim.carriers.created_hooks.append(
            lambda call: nursery.start_soon(_announce, sim.call(call.carrier_id))
        )
        task_status.started(sim)
        await trio.sleep_forever()


async def _announce(call: SimulatedCall) -> None:
    began = trio.current_time()
    await call.ended.wait()
    print(
        f"{call.carrier} call to {call.call.to}: {call.status.value} (hung up by "
        f"{call.hung_up_by}) after {trio.current_time() - began:.1f}s; media frames sent "
        f"{call.frames_sent}, received {call.frames_received}",
        flush=True,
    )


# -- shared ------------------------------------------------------------------------------------


@asynccontextmanager
async def _daemon_api(setup: _Setup) -> AsyncIterator[httpx.AsyncClient]:
    """A client for the daemon's control API, once the daemon says it is ready."""
    headers = {"Authorization": f"Bearer {setup.token}"}
    async with httpx.AsyncClient(base_url=setup.api_base, headers=headers, timeout=30.0) as api:
        try:
            ready = await api.get("/readyz")
        except httpx.HTTPError as error:
            raise _Refused(f"the daemon is not reachable at {setup.api_base}: {error}") from None
        if ready.status_code != 200:
            raise _Refused(f"the daemon at {setup.api_base} is not ready ({ready.status_code})")
        yield api


@asynccontextmanager
async def _simulator(
    setup: _Setup, audio: Audio, scenario: Scenario, tally: Tally | None = None
) -> AsyncIterator[Simulator]:
    try:
        async with serve_simulator(
            setup.public_url,
            accounts=setup.accounts,
            scenario=scenario,
            audio=audio,
            host=setup.host,
            port=setup.port,
            tally=tally,
        ) as sim:
            yield sim
    except OSError as error:
        raise _Refused(f"cannot serve on {setup.host}:{setup.port}: {error}") from None


class _Display:
    """The live progress line: rewritten in place on a terminal, else a line every 2 s."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._last = -math.inf

    def show(self, line: str) -> None:
        if self._tty:
            self._stream.write("\r" + line + "\x1b[K")
            self._stream.flush()
        elif time.monotonic() - self._last >= 2.0:
            self._last = time.monotonic()
            print(line, file=self._stream, flush=True)

    def done(self) -> None:
        if self._tty:
            self._stream.write("\n")
