"""The configuration of SPEC §2: attrs classes, a strict cattrs converter, and loading.

Strictness is the point: an operator who writes ``port = "80"`` or ``max_concurent = 5`` must
hear about it at start-up, by the dotted key, instead of running with a value they did not mean.
So the converter never coerces (no ``"80"`` → ``80``, no ``1`` → ``True``), forbids unknown keys,
and checks ranges per field; every problem becomes one line ``dotted.key: what is wrong``.

Layers, later ones winning: built-in defaults, the TOML file, systemd credentials
(``$CREDENTIALS_DIRECTORY/<section>_<key>``), then ``VOICECALLD_<SECTION>_<KEY>`` environment
variables. A provider's section is its name (``VOICECALLD_TWILIO_AUTH_TOKEN``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import stat
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, get_args
from urllib.parse import urlsplit

import attrs
import cattrs
from cattrs.errors import ForbiddenExtraKeysError
from cattrs.gen import make_dict_structure_fn, override

__all__ = [
    "CONFIG_ENV",
    "ApiConfig",
    "CallsConfig",
    "Config",
    "ConfigError",
    "LogConfig",
    "MediaConfig",
    "MockConfig",
    "PlivoConfig",
    "ProvidersConfig",
    "RuntimeConfig",
    "ServerConfig",
    "StoreConfig",
    "TelnyxConfig",
    "TwilioConfig",
    "effective",
    "load",
    "parse",
    "tls_context",
]

CONFIG_ENV: Final = "VOICECALLD_CONFIG"
# Every pattern is used with ``fullmatch``: ``$`` would also match before a final newline.
_E164 = re.compile(r"\+[0-9]{2,15}")
# The carriers' REST clients check these ids again before putting them in a URL path
# (carriers/twilio/rest.py, carriers/plivo/rest.py); checked here too, with the same patterns,
# so a bad id is exit 78 at start-up rather than every call failing with a 502.
_TWILIO_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
_PLIVO_AUTH_ID = re.compile(r"[A-Za-z0-9]{1,64}")

InboundPolicy = Literal["disabled", "open", "allowlist"]
BridgeEncoding = Literal["mulaw", "pcm16", "pcm16-16k"]
LogFormat = Literal["logfmt", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]


class ConfigError(Exception):
    """An invalid configuration: each problem is one ``dotted.key: message`` line.

    Never retried (exit 78): the same file gives the same answer.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


# -- field helpers -----------------------------------------------------------------------------
#
# Each field carries its check in its metadata; the converter below looks it up by attribute, so
# the message names the exact key and the rule lives beside the default it constrains.

_CHECK: Final = "voicecalld.check"
_SECRET: Final = "voicecalld.secret"  # noqa: S105 - a metadata key, not a secret
T = TypeVar("T")


def _integer(default: int, lo: int, hi: int) -> Any:
    def check(value: object) -> int:
        if type(value) is not int or not lo <= value <= hi:
            raise _Invalid(f"expected an integer in {lo}..{hi}, got {value!r}")
        return value

    return attrs.field(default=default, metadata={_CHECK: check})


def _seconds(default: float, *, lo: float = 0.0, hi: float = 86400.0 * 365) -> Any:
    def check(value: object) -> float:
        if type(value) not in (int, float) or not lo <= value <= hi:  # type: ignore[operator]
            raise _Invalid(f"expected a number of seconds in {lo:g}..{hi:g}, got {value!r}")
        return float(value)  # type: ignore[arg-type]

    return attrs.field(default=default, metadata={_CHECK: check})


def _boolean(default: bool) -> Any:
    def check(value: object) -> bool:
        if type(value) is not bool:
            raise _Invalid(f"expected true or false, got {value!r}")
        return value

    return attrs.field(default=default, metadata={_CHECK: check})


def _string(
    default: str = "", *, secret: bool = False, check: Callable[[str], str | None] | None = None
) -> Any:
    def checker(value: object) -> str:
        if type(value) is not str:
            raise _Invalid(f"expected a string, got {_show(value, secret)}")
        if check is not None and value:
            problem = check(value)
            if problem:
                raise _Invalid(f"{problem}, got {_show(value, secret)}")
        return value

    return attrs.field(default=default, metadata={_CHECK: checker, _SECRET: secret})


def _choice(default: str, choices: tuple[str, ...]) -> Any:
    def check(value: object) -> str:
        if value not in choices or type(value) is not str:
            raise _Invalid(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    return attrs.field(default=default, metadata={_CHECK: check})


def _strings(item: Callable[[str], str | None]) -> Any:
    def check(value: object) -> tuple[str, ...]:
        if not isinstance(value, list | tuple):
            raise _Invalid(f"expected a list of strings, got {value!r}")
        for element in value:
            if type(element) is not str:
                raise _Invalid(f"expected a list of strings, got element {element!r}")
            problem = item(element)
            if problem:
                raise _Invalid(f"{problem}, got {element!r}")
        return tuple(value)

    return attrs.field(default=(), metadata={_CHECK: check})


class _Invalid(ValueError):
    """A field's own complaint; its text is the message after ``dotted.key:``."""


def _show(value: object, secret: bool) -> str:
    return "'***'" if secret else repr(value)


def _e164(value: str) -> str | None:
    return None if _E164.fullmatch(value) else "expected an E.164 number (+ and 2-15 digits)"


def _twilio_account_sid(value: str) -> str | None:
    if _TWILIO_ACCOUNT_SID.fullmatch(value):
        return None
    return "expected an Account SID (AC + 32 hex digits)"


def _plivo_auth_id(value: str) -> str | None:
    if _PLIVO_AUTH_ID.fullmatch(value):
        return None
    return "expected an Auth ID (1-64 letters and digits)"


def _http_url(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "expected an http:// or https:// URL"
    if parts.query or parts.fragment:
        return "expected a URL without query or fragment"
    if parts.username is not None or parts.password is not None:
        return "expected a URL without user:password@ (credentials have keys of their own)"
    return None


def _ed25519_key(value: str) -> str | None:
    # imported here: the Telnyx module (and PyNaCl) is a third of the config's import time,
    # and most configs have no Telnyx key to check
    from voicecalld.carriers.telnyx.wire import load_public_key  # noqa: PLC0415

    try:
        load_public_key(value)
    except ValueError as error:
        return f"not a usable Ed25519 public key ({error})"
    return None


def _ws_url(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        return "expected a ws:// or wss:// URL"
    return None


def _network(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return "expected an IP address or CIDR"
    return None


def _address(value: str) -> str | None:
    if value in ("localhost", "::"):
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "expected an IP address"
    return None


def _log_format(value: str) -> str | None:
    return None if value in get_args(LogFormat) else "expected logfmt or json"


# -- the sections (SPEC §2, in its order) ---------------------------------------------------


@attrs.frozen
class ServerConfig:
    bind: str = _string("127.0.0.1", check=_address)
    port: int = _integer(8080, 0, 65535)
    public_url: str = _string(check=_http_url)
    trusted_proxies: tuple[str, ...] = _strings(_network)
    max_body_bytes: int = _integer(65536, 1, 16 * 1024 * 1024)
    body_timeout: float = _seconds(5.0, lo=0.01, hi=600.0)
    max_inflight_per_ip: int = _integer(8, 1, 100_000)
    tls_cert: str = _string()
    tls_key: str = _string()


@attrs.frozen
class RuntimeConfig:
    restart_budget: int = _integer(5, 1, 1000)
    restart_window: float = _seconds(60.0, lo=1.0)
    drain_timeout: float = _seconds(30.0)


@attrs.frozen
class LogConfig:
    format: str = _choice("logfmt", get_args(LogFormat))
    level: str = _choice("info", get_args(LogLevel))


@attrs.frozen
class ApiConfig:
    token: str = _string(secret=True)


@attrs.frozen
class StoreConfig:
    state_dir: str = _string()
    retention_days: int = _integer(30, 1, 36500)


@attrs.frozen
class CallsConfig:
    default_provider: str = _choice("mock", ("mock", "twilio", "plivo", "telnyx"))
    from_number: str = _string("+15550000000", check=_e164)
    max_concurrent: int = _integer(10, 1, 100_000)
    max_duration: float = _seconds(300.0, lo=1.0)
    ring_timeout: float = _seconds(30.0, lo=1.0, hi=600.0)
    stale_after: float = _seconds(120.0)
    reaper_interval: float = _seconds(30.0, lo=0.1)
    stream_grace: float = _seconds(2.0, hi=600.0)
    inbound_policy: str = _choice("disabled", get_args(InboundPolicy))
    allow_from: tuple[str, ...] = _strings(_e164)
    reconcile_concurrency: int = _integer(16, 1, 1024)


@attrs.frozen
class MediaConfig:
    bridge_url: str = _string(check=_ws_url)
    bridge_encoding: str = _choice("mulaw", get_args(BridgeEncoding))
    max_streams: int = _integer(128, 1, 100_000)
    max_pending: int = _integer(32, 1, 100_000)
    max_pending_per_ip: int = _integer(4, 1, 100_000)
    start_timeout: float = _seconds(5.0, lo=0.01, hi=600.0)


@attrs.frozen
class MockConfig:
    enabled: bool = _boolean(True)
    from_number: str = _string(check=_e164)


@attrs.frozen
class TwilioConfig:
    enabled: bool = _boolean(False)
    account_sid: str = _string(check=_twilio_account_sid)
    auth_token: str = _string(secret=True)
    api_base_url: str = _string("https://api.twilio.com", check=_http_url)
    from_number: str = _string(check=_e164)


@attrs.frozen
class PlivoConfig:
    enabled: bool = _boolean(False)
    auth_id: str = _string(check=_plivo_auth_id)
    auth_token: str = _string(secret=True)
    api_base_url: str = _string("https://api.plivo.com", check=_http_url)
    from_number: str = _string(check=_e164)


@attrs.frozen
class TelnyxConfig:
    enabled: bool = _boolean(False)
    api_key: str = _string(secret=True)
    public_key: str = _string(check=_ed25519_key)
    connection_id: str = _string()
    api_base_url: str = _string("https://api.telnyx.com", check=_http_url)
    from_number: str = _string(check=_e164)


@attrs.frozen
class ProvidersConfig:
    mock: MockConfig = MockConfig()
    twilio: TwilioConfig = TwilioConfig()
    plivo: PlivoConfig = PlivoConfig()
    telnyx: TelnyxConfig = TelnyxConfig()

    def enabled(self) -> list[str]:
        """Names of the enabled carriers, in a stable order."""
        return [
            name for name in ("mock", "twilio", "plivo", "telnyx") if getattr(self, name).enabled
        ]


@attrs.frozen
class Config:
    server: ServerConfig = ServerConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    log: LogConfig = LogConfig()
    api: ApiConfig = ApiConfig()
    store: StoreConfig = StoreConfig()
    calls: CallsConfig = CallsConfig()
    media: MediaConfig = MediaConfig()
    providers: ProvidersConfig = ProvidersConfig()

    @property
    def state_dir(self) -> Path:
        """``store.state_dir`` resolved (SPEC §2); see :func:`_resolve_state_dir`."""
        return Path(self.store.state_dir)

    def from_number(self, provider: str) -> str:
        """The caller id for ``provider``: its own ``from_number``, else ``calls.from_number``."""
        own: str = getattr(self.providers, provider).from_number
        return own or self.calls.from_number


_SECTIONS: Final[dict[str, tuple[str, ...]]] = {
    # env / credential section name -> path of the table in the config
    "server": ("server",),
    "runtime": ("runtime",),
    "log": ("log",),
    "api": ("api",),
    "store": ("store",),
    "calls": ("calls",),
    "media": ("media",),
    "mock": ("providers", "mock"),
    "twilio": ("providers", "twilio"),
    "plivo": ("providers", "plivo"),
    "telnyx": ("providers", "telnyx"),
}

_REQUIRED_WHEN_ENABLED: Final[dict[str, tuple[str, ...]]] = {
    "twilio": ("account_sid", "auth_token"),
    "plivo": ("auth_id", "auth_token"),
    "telnyx": ("api_key", "public_key", "connection_id"),
}


# -- the converter ---------------------------------------------------------------------------


def _field_hook(check: Callable[[object], object]) -> Callable[[object, type[Any]], object]:
    """A cattrs structure hook running a field's own check (and nothing else: no coercion)."""

    def hook(value: object, _target: type[Any]) -> object:
        return check(value)

    return hook


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)

    def section_hook(cls: type[Any]) -> Callable[[Any, type[Any]], Any]:
        overrides: dict[str, Any] = {}
        for field in attrs.fields(cls):
            check: Callable[[object], object] | None = field.metadata.get(_CHECK)
            if check is not None:
                overrides[field.name] = override(struct_hook=_field_hook(check))
        structure = make_dict_structure_fn(
            cls, converter, _cattrs_forbid_extra_keys=True, **overrides
        )

        def hook(value: Any, target: type[Any]) -> Any:
            if not isinstance(value, Mapping):
                raise _Invalid(f"expected a table, got {value!r}")
            return structure(value, target)

        return hook

    converter.register_structure_hook_factory(attrs.has, section_hook)
    return converter


_converter: Final = _make_converter()


def _problems(error: BaseException) -> list[str]:
    """Flatten cattrs' nested exception groups into sorted ``dotted.key: message`` lines."""
    unknown = "\0unknown:"

    def format_exception(exc: BaseException, _type: Any) -> str:
        if isinstance(exc, ForbiddenExtraKeysError):
            return unknown + ",".join(sorted(exc.extra_fields))  # cattrs reports them per table
        if isinstance(exc, _Invalid):
            return str(exc)
        return f"invalid value ({exc})"

    problems: list[str] = []
    for line in cattrs.transform_error(error, path="", format_exception=format_exception):
        message, _, where = line.rpartition(" @ ")
        where = where.lstrip(".")
        if message.startswith(unknown):
            prefix = f"{where}." if where else ""
            problems.extend(
                f"{prefix}{key}: unknown key" for key in message[len(unknown) :].split(",")
            )
        else:
            problems.append(f"{where or '<top>'}: {message}")
    return sorted(set(problems))


# -- loading -----------------------------------------------------------------------------------


def parse(
    document: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    server_files: bool = True,
) -> Config:
    """Structure a parsed TOML document (plus environment layers) into a checked :class:`Config`.

    Raises :class:`ConfigError` listing every problem found, each naming its dotted key.
    ``server_files=False`` skips loading the files only the daemon reads (TLS certificate and
    key): client commands share the daemon's config but may not be allowed to read its key.
    """
    env = os.environ if environ is None else environ
    layered = _with_overrides(dict(document), env)
    try:
        config = _converter.structure(layered, Config)
    except Exception as error:  # cattrs raises ExceptionGroups of per-field errors
        raise ConfigError(_problems(error)) from None
    config = attrs.evolve(
        config,
        store=attrs.evolve(config.store, state_dir=str(_resolve_state_dir(config.store, env))),
    )
    problems = _cross_checks(config, server_files)
    if problems:
        raise ConfigError(problems)
    return config


def load(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    server_files: bool = True,
) -> Config:
    """The config the commands of SPEC §1 use: ``path``, else ``$VOICECALLD_CONFIG``, else the
    built-in defaults (``server_files``: see :func:`parse`)."""
    env = os.environ if environ is None else environ
    chosen = path if path is not None else env.get(CONFIG_ENV) or None
    if chosen is None:
        return parse({}, environ=env, server_files=server_files)
    file = Path(chosen)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([f"<file>: cannot read {file}: {error.strerror or error}"]) from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            [f"<file>: {file} is not valid UTF-8 (at byte offset {error.start})"]
        ) from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"<file>: {file} is not valid TOML: {error}"]) from None
    return parse(document, environ=env, server_files=server_files)


def _with_overrides(document: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Apply credentials, then environment variables, to the raw document (before checking).

    Values from these layers are strings; they are converted by the target field's type here, so
    a bad one is reported against the dotted key like any other. A credential file that is not
    UTF-8 is a :class:`ConfigError` naming its key (its bytes, maybe a secret, are not shown).
    """
    credentials = env.get("CREDENTIALS_DIRECTORY")
    undecodable: list[str] = []
    for section, path in _SECTIONS.items():
        cls = _section_class(path)
        for field in attrs.fields(cls):
            raw: str | None = None
            if credentials:
                file = Path(credentials) / f"{section}_{field.name}"
                try:
                    raw = file.read_text(encoding="utf-8").strip()
                except OSError:
                    raw = None
                except UnicodeDecodeError:
                    dotted = ".".join((*path, field.name))
                    undecodable.append(f"{dotted}: the credential {file} is not valid UTF-8")
                    raw = None
            env_value = env.get(f"VOICECALLD_{section.upper()}_{field.name.upper()}")
            if env_value is not None:
                raw = env_value
            if raw is None:
                continue
            table = document
            for key in path:
                nested = table.get(key)
                if not isinstance(nested, dict):
                    nested = {} if nested is None else nested
                    if not isinstance(nested, dict):
                        break  # the file's own type error is reported by the converter
                    table[key] = nested
                table = nested
            else:
                table[field.name] = _from_text(raw, field)
    if undecodable:
        raise ConfigError(sorted(undecodable))
    return document


def _section_class(path: tuple[str, ...]) -> type[Any]:
    cls: Any = Config
    for key in path:
        cls = attrs.fields_dict(cls)[key].type
        if isinstance(cls, str):  # postponed annotations name the class
            cls = globals()[cls]
    return cls  # type: ignore[no-any-return]


def _from_text(raw: str, field: attrs.Attribute[Any]) -> object:
    """Read an environment/credential string as the field's type; leave junk for the check."""
    default = field.default
    if isinstance(default, bool):
        return {"true": True, "false": False, "1": True, "0": False}.get(raw.lower(), raw)
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            return raw
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            return raw
    if isinstance(default, tuple):
        return [item.strip() for item in raw.split(",") if item.strip()]
    return raw


def _resolve_state_dir(store: StoreConfig, env: Mapping[str, str]) -> Path:
    """SPEC §2: ``store.state_dir``, else ``$STATE_DIRECTORY`` (systemd; first of a list),
    else ``$XDG_STATE_HOME/voicecalld``, else ``~/.local/state/voicecalld``."""
    if store.state_dir:
        return Path(store.state_dir).expanduser()
    systemd = env.get("STATE_DIRECTORY", "")
    if systemd:
        return Path(systemd.split(":")[0])
    xdg = env.get("XDG_STATE_HOME", "")
    if xdg:
        return Path(xdg) / "voicecalld"
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "state" / "voicecalld"


def _cross_checks(config: Config, server_files: bool) -> list[str]:
    """Rules that span keys: credentials of enabled carriers, the default provider, TLS files."""
    problems: list[str] = []
    providers = config.providers
    for name, keys in _REQUIRED_WHEN_ENABLED.items():
        section = getattr(providers, name)
        if not section.enabled:
            continue
        if not config.server.public_url:
            problems.append(
                f"server.public_url: required when providers.{name}.enabled = true "
                "(the base URL the carrier calls)"
            )
        for key in keys:
            if not getattr(section, key):
                problems.append(
                    f"providers.{name}.{key}: required when providers.{name}.enabled = true "
                    f"(set it in the file, VOICECALLD_{name.upper()}_{key.upper()} or the "
                    f"credential {name}_{key})"
                )
    if config.calls.default_provider not in providers.enabled():
        problems.append(
            f"calls.default_provider: {config.calls.default_provider!r} is not enabled "
            f"(enabled: {', '.join(providers.enabled()) or 'none'})"
        )
    if bool(config.server.tls_cert) != bool(config.server.tls_key):
        missing = "tls_key" if config.server.tls_cert else "tls_cert"
        problems.append(f"server.{missing}: required when the other of tls_cert / tls_key is set")
    elif server_files:
        try:
            tls_context(config.server)
        except ConfigError as error:
            problems.extend(error.problems)
    if config.calls.inbound_policy == "allowlist" and not config.calls.allow_from:
        problems.append(
            "calls.allow_from: required (non-empty) when calls.inbound_policy = 'allowlist'"
        )
    return sorted(set(problems))


def tls_context(server: ServerConfig) -> ssl.SSLContext | None:
    """The server's TLS context from ``server.tls_cert`` and ``tls_key``; None when both are empty.

    Loaded by every config check, so that a missing or unusable file is a configuration error
    (exit 78, or a reload refused) rather than a ``serve`` step failing on every restart until
    the budget runs out; and loaded again by the runtime at start and on each reload, so that a
    renewed certificate is served after SIGHUP. Raises :class:`ConfigError` naming the key at
    fault. An encrypted key is refused, never prompted for on a terminal.
    """
    if not (server.tls_cert and server.tls_key):
        return None
    for key in ("tls_cert", "tls_key"):
        path = getattr(server, key)
        try:
            regular = stat.S_ISREG(os.stat(path).st_mode)
            if regular:
                with open(path, "rb"):
                    pass
        except OSError as error:
            raise ConfigError([f"server.{key}: cannot read {path}: {error.strerror}"]) from None
        except ValueError as error:  # a NUL in the path
            raise ConfigError([f"server.{key}: not a usable path: {error}"]) from None
        if not regular:  # a directory, or a FIFO that would block the event loop on open
            raise ConfigError([f"server.{key}: {path} is not a regular file"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(server.tls_cert, server.tls_key, password=_no_passphrase)
    except OSError as error:  # ssl.SSLError is one
        raise ConfigError([_tls_problem(server, error)]) from None
    return context


def _no_passphrase() -> bytes:
    """An encrypted key gets an empty passphrase (and fails) instead of OpenSSL's prompt."""
    return b""


def _tls_problem(server: ServerConfig, error: OSError) -> str:
    """Which of the two files ``load_cert_chain`` refused (its own message does not say)."""
    if getattr(error, "reason", None) == "KEY_VALUES_MISMATCH":
        return f"server.tls_key: {server.tls_key} is not the key of the certificate in tls_cert"
    try:
        ssl.create_default_context().load_verify_locations(cafile=server.tls_cert)
    except OSError:
        return f"server.tls_cert: no PEM certificate in {server.tls_cert}"
    return (
        f"server.tls_key: no usable PEM private key in {server.tls_key} "
        "(an encrypted key is not supported)"
    )


# -- showing -----------------------------------------------------------------------------------


def effective(config: Config) -> dict[str, Any]:
    """The effective config as a TOML-shaped dict, secrets masked (``check-config`` prints it)."""

    def dump(instance: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field in attrs.fields(type(instance)):
            value = getattr(instance, field.name)
            if attrs.has(type(value)):
                out[field.name] = dump(value)
            elif field.metadata.get(_SECRET):
                out[field.name] = "***" if value else ""
            elif isinstance(value, tuple):
                out[field.name] = list(value)
            else:
                out[field.name] = value
        return out

    return dump(config)


def secrets(config: Config) -> list[str]:
    """Every secret value in ``config``, so log and error output can be scrubbed of them."""
    found: list[str] = []

    def walk(instance: Any) -> None:
        for field in attrs.fields(type(instance)):
            value = getattr(instance, field.name)
            if attrs.has(type(value)):
                walk(value)
            elif field.metadata.get(_SECRET) and value:
                found.append(value)

    walk(config)
    return found
