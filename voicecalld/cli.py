"""The commands of SPEC §1.

``run`` and ``check-config`` work on the config; ``call``, ``calls`` and ``hangup`` are clients of
a running daemon's control API (address and token from the same config, or from the state dir
where the daemon records them); ``status`` reads the store directly and read-only, binding no
port and needing no daemon.

Exit codes: 0 clean stop; 2 usage error; 78 invalid configuration; 69 the daemon gave up
restarting; 141 stdout closed by its reader (``voicecalld calls | head -1``); 1 anything else.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import urllib.parse
from collections.abc import Sequence
from typing import Any

import trio

from voicecalld import __version__, statedir
from voicecalld import config as configuration
from voicecalld import log as logs
from voicecalld.config import Config, ConfigError

__all__ = ["main"]

EX_USAGE = 2
EX_CONFIG = 78


EX_SIGPIPE = 128 + signal.SIGPIPE
"""What a shell reports for a tool ended by SIGPIPE, as ``seq``, ``cat`` and ``yes`` are when
their reader goes away: a script (``set -o pipefail``) sees from us what it sees from them, and
0 would claim output was delivered that was not."""


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return _command(argv)
        finally:
            # flushed here, not at interpreter exit, where a closed pipe could only be reported
            sys.stdout.flush()
    except BrokenPipeError:
        # the reader of stdout went away (`| head -1`). Python ignores SIGPIPE, so writes fail
        # instead; stop quietly, pointing stdout at /dev/null so the final flush at exit cannot
        # fail again (the Python docs' "Note on SIGPIPE")
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EX_SIGPIPE


def _command(argv: Sequence[str] | None) -> int:
    parser = _parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["simulate"]:
        arguments = _simulate_arguments(arguments[1:])
    args = parser.parse_args(arguments)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EX_USAGE
    try:
        # the TLS files are the daemon's: a client may not be allowed to read its key
        server_files = args.command in ("run", "check-config")
        config = configuration.load(args.config, server_files=server_files)
    except ConfigError as error:
        print(f"voicecalld: invalid configuration ({_source(args.config)}):", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return EX_CONFIG
    command = _COMMANDS[args.command]
    try:
        return command(config, args)
    except _ClientError as error:
        print(f"voicecalld: {error}", file=sys.stderr)
        return 1


def _source(path: str | None) -> str:
    return path or os.environ.get(configuration.CONFIG_ENV) or "built-in defaults"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicecalld", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"voicecalld {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c", "--config", metavar="FILE", help="config file (else $VOICECALLD_CONFIG)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", parents=[common], help="run the daemon in the foreground")
    sub.add_parser("check-config", parents=[common], help="validate and print the effective config")
    call = sub.add_parser("call", parents=[common], help="place a call through the daemon")
    call.add_argument("to", metavar="TO", help="E.164 number, e.g. +15551234567")
    call.add_argument("--from", dest="from_number", metavar="N")
    call.add_argument("--provider", metavar="P")
    call.add_argument("--message", metavar="TEXT")
    call.add_argument("--mode", choices=["notify", "conversation"])
    calls = sub.add_parser("calls", parents=[common], help="list calls")
    calls.add_argument("--active", action="store_true", help="only calls not ended")
    hangup = sub.add_parser("hangup", parents=[common], help="end a call")
    hangup.add_argument("call_id", metavar="CALL_ID")
    sub.add_parser("status", parents=[common], help="read the store directly (no daemon needed)")
    simulate = sub.add_parser("simulate", parents=[common], help="run the carrier simulator")
    simulate.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


# -- run / check-config ------------------------------------------------------------------------


def _run(config: Config, args: argparse.Namespace) -> int:
    from voicecalld.supervisor import serve_process

    logs.configure(config.log.format, config.log.level, configuration.secrets(config))
    path = args.config or os.environ.get(configuration.CONFIG_ENV) or None
    return trio.run(serve_process, config, path, dict(os.environ))


def _check_config(config: Config, args: argparse.Namespace) -> int:
    print(f"# voicecalld effective configuration ({_source(args.config)}); secrets masked")
    print(_toml(configuration.effective(config)), end="")
    return 0


def _toml(document: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer for the effective config (tables of scalars and string lists)."""
    lines: list[str] = []
    scalars = {k: v for k, v in document.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in document.items() if isinstance(v, dict)}
    if prefix and scalars:
        lines.append(f"[{prefix}]")
    for key, value in scalars.items():
        lines.append(f"{key} = {_toml_value(value)}")
    if scalars:
        lines.append("")
    text = "\n".join(lines) + ("\n" if lines and lines[-1] != "" else "")
    for key, table in tables.items():
        text += _toml(table, f"{prefix}.{key}" if prefix else key)
    return text


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


# -- API clients -------------------------------------------------------------------------------


class _ClientError(Exception):
    pass


def _api(config: Config) -> tuple[str, dict[str, str]]:
    """The daemon's API base URL and auth header, as a client on this host finds them."""
    token = statedir.read_api_token(config.state_dir, config.api.token)
    if not token:
        raise _ClientError(
            f"no API token: set api.token or start the daemon once (it creates "
            f"{config.state_dir / statedir.TOKEN_NAME})"
        )
    try:
        base = (config.state_dir / statedir.ADDRESS_NAME).read_text().strip()
    except OSError:
        host = config.server.bind
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104 - a client
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if config.server.tls_cert else "http"
        base = f"{scheme}://{host}:{config.server.port}"
    return base, {"Authorization": f"Bearer {token}"}


def _request(config: Config, method: str, path: str, **kwargs: Any) -> Any:
    import httpx  # here: `voicecalld run` and `status` never need it

    base, headers = _api(config)
    try:
        response = httpx.request(method, base + path, headers=headers, timeout=30.0, **kwargs)
    except httpx.HTTPError as error:
        raise _ClientError(f"cannot reach the daemon at {base}: {error}") from None
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text.strip()
        raise _ClientError(f"{response.status_code}: {message}")
    return response.json()


def _call(config: Config, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"to": args.to}
    for field, value in (
        ("from", args.from_number),
        ("provider", args.provider),
        ("message", args.message),
        ("mode", args.mode),
    ):
        if value:
            body[field] = value
    call = _request(config, "POST", "/v1/calls", json=body)
    print(call["id"])
    return 0


CALLS_PAGE = 500
"""Calls asked for per request by ``voicecalld calls``, which follows every page's cursor."""


def _calls(config: Config, args: argparse.Namespace) -> int:
    params = {"limit": str(CALLS_PAGE)}
    if args.active:
        params["state"] = "active"
    calls: list[dict[str, Any]] = []
    while True:
        page = _request(config, "GET", "/v1/calls", params=params)
        calls += page["calls"]
        if not page["next_cursor"]:
            break
        params["cursor"] = page["next_cursor"]
    _print_calls(calls)
    return 0


def _hangup(config: Config, args: argparse.Namespace) -> int:
    call = _request(config, "POST", f"/v1/calls/{_segment(args.call_id)}/hangup")
    print(f"{call['id']} {call['state']} {call['end_reason'] or ''}".rstrip())
    return 0


def _segment(text: str) -> str:
    """``text`` percent-encoded as one URL path segment, so that an id such as ``x/../c_1`` or
    ``..`` reaches the daemon as that (unknown) id instead of being resolved into the path of
    another call or route. ``quote`` leaves dots alone, and a segment of only dots is resolved
    by the client before sending; ``%2E`` is not."""
    return urllib.parse.quote(text, safe="").replace(".", "%2E")


def _print_calls(calls: list[dict[str, Any]]) -> None:
    columns = ("id", "provider", "direction", "from", "to", "state", "end_reason", "created_at")
    rows = [[str(call.get(c) or "") for c in columns] for call in calls]
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


# -- status ------------------------------------------------------------------------------------


def _status(config: Config, args: argparse.Namespace) -> int:
    from voicecalld.store.readonly import open_readonly

    try:
        store = open_readonly(config.state_dir)
    except FileNotFoundError as missing:
        print(f"no store yet: {missing}")
        return 0
    with store:
        summary = store.summary()
        print(f"store: {store.path}")
        print(f"calls: {summary.calls} ({summary.open_calls} not ended)")
        if summary.by_state:
            print("by state: " + ", ".join(f"{k}={v}" for k, v in sorted(summary.by_state.items())))
        open_calls = store.open_calls()
        if open_calls:
            _print_calls([call.to_json() for call in open_calls])
    return 0


def _simulate_arguments(rest: list[str]) -> list[str]:
    """``simulate``'s arguments: ``-c FILE`` (anywhere) is ours, the rest the simulator's, after
    ``--`` (argparse.REMAINDER alone refuses a first argument such as ``--provider``)."""
    ours: list[str] = []
    theirs: list[str] = []
    words = iter(rest)
    for word in words:
        if word in ("-c", "--config"):
            ours += [word, next(words, "")]
        elif word.startswith("--config="):
            ours.append(word)
        else:
            theirs.append(word)
    return ["simulate", *ours, "--", *theirs]


def _simulate(config: Config, args: argparse.Namespace) -> int:
    from voicecalld.sim.cli import simulate

    return simulate(config, args.rest)


_COMMANDS = {
    "run": _run,
    "check-config": _check_config,
    "call": _call,
    "calls": _calls,
    "hangup": _hangup,
    "status": _status,
    "simulate": _simulate,
}
