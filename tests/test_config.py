"""Configuration (SPEC §2): strict types, dotted keys in every error, layers, masking."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from voicecalld import cli
from voicecalld import config as configuration
from voicecalld.config import ConfigError
from voicecalld.sim.state import SimAccounts

SID = "AC" + "0123456789abcdef" * 2
"""An Account SID of the right form (AC + 32 hex), so a Twilio section passes the check."""

BAD = [
    ('[server]\nport = "80"\n', "server.port: expected an integer in 0..65535, got '80'"),
    ("[server]\nport = 70000\n", "server.port: expected an integer in 0..65535, got 70000"),
    ("[server]\nprot = 80\n", "server.prot: unknown key"),
    ("[srever]\nport = 80\n", "srever: unknown key"),
    ('[calls]\nmax_duration = "5"\n', "calls.max_duration: expected a number of seconds"),
    ("[calls]\nmax_concurrent = 0\n", "calls.max_concurrent: expected an integer in 1..100000"),
    ("[calls]\nmax_concurrent = 1.5\n", "calls.max_concurrent: expected an integer"),
    ('[calls]\nallow_from = ["123"]\n', "calls.allow_from: expected an E.164 number"),
    ('[calls]\nfrom_number = "+15550000000\\n"\n', "calls.from_number: expected an E.164"),
    ('[calls]\nallow_from = ["+15550000000\\n"]\n', "calls.allow_from: expected an E.164"),
    (
        '[providers.twilio]\naccount_sid = "AC../../x?y=1#z"\n',
        "providers.twilio.account_sid: expected an Account SID (AC + 32 hex digits)",
    ),
    (
        f'[providers.twilio]\naccount_sid = "AC{"0" * 32}\\n"\n',
        "providers.twilio.account_sid: expected an Account SID",
    ),
    (
        '[providers.plivo]\nauth_id = "MA/../z"\n',
        "providers.plivo.auth_id: expected an Auth ID (1-64 letters and digits)",
    ),
    (
        '[calls]\ninbound_policy = "maybe"\n',
        "calls.inbound_policy: expected one of disabled, open, allowlist",
    ),
    ('[calls]\ninbound_policy = "allowlist"\n', "calls.allow_from: required"),
    ('[log]\nformat = "xml"\n', "log.format: expected one of logfmt, json"),
    ("[providers.mock]\nenabled = 1\n", "providers.mock.enabled: expected true or false, got 1"),
    ("[providers.twilio]\nenabled = true\n", "providers.twilio.auth_token: required"),
    (
        '[server]\npublic_url = "https://x.example"\n[providers.telnyx]\nenabled = true\n'
        'api_key = "k"\nconnection_id = "c"\n',
        "providers.telnyx.public_key: required",
    ),
    ('[media]\nbridge_url = "http://app"\n', "media.bridge_url: expected a ws:// or wss:// URL"),
    (
        '[server]\npublic_url = "https://x.example/voice?x=1"\n',
        "server.public_url: expected a URL without query",
    ),
    (
        '[server]\ntrusted_proxies = ["10.0.0.0/33"]\n',
        "server.trusted_proxies: expected an IP address or CIDR",
    ),
    ("[api]\ntoken = 12345\n", "api.token: expected a string, got '***'"),
    ('[calls]\ndefault_provider = "twilio"\n', "calls.default_provider: 'twilio' is not enabled"),
    ('[server]\ntls_cert = "/x.pem"\n', "server.tls_key: required"),
    ("server = 5\n", "server: expected a table"),
    ("[server\nport = 1\n", "is not valid TOML"),
]


@pytest.mark.parametrize(("text", "expected"), BAD, ids=[e.split(":")[0] for _, e in BAD])
def test_bad_configs_exit_78_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = tmp_path / "voicecalld.toml"
    path.write_text(text)
    assert cli.main(["check-config", "-c", str(path)]) == 78
    assert expected in capsys.readouterr().err


def test_several_problems_are_all_reported() -> None:
    with pytest.raises(ConfigError) as caught:
        configuration.parse({"server": {"port": "1", "bind": 3}, "calls": {"nope": 1}}, environ={})
    assert caught.value.problems == [
        "calls.nope: unknown key",
        "server.bind: expected a string, got 3",
        "server.port: expected an integer in 0..65535, got '1'",
    ]


def test_defaults_need_no_file(tmp_path: Path) -> None:
    config = configuration.load(None, environ={"HOME": str(tmp_path)})
    assert config.server.bind == "127.0.0.1" and config.server.port == 8080
    assert config.providers.enabled() == ["mock"]
    assert config.state_dir == tmp_path / ".local" / "state" / "voicecalld"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"STATE_DIRECTORY": "/var/lib/voicecalld:/other"}, "/var/lib/voicecalld"),
        ({"XDG_STATE_HOME": "/xdg"}, "/xdg/voicecalld"),
    ],
)
def test_state_dir_resolution(environ: dict[str, str], expected: str) -> None:
    assert str(configuration.parse({}, environ=environ).state_dir) == expected


def test_environment_overrides_file_and_credentials(tmp_path: Path) -> None:
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "twilio_auth_token").write_text("from-credential\n")
    (credentials / "twilio_account_sid").write_text(f"AC{'c' * 32}\n")
    document = {
        "server": {"public_url": "https://voice.example.com"},
        "providers": {"twilio": {"enabled": True, "auth_token": "from-file"}},
    }
    config = configuration.parse(document, environ={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert config.providers.twilio.auth_token == "from-credential"
    assert config.providers.twilio.account_sid == f"AC{'c' * 32}"
    config = configuration.parse(
        document,
        environ={"CREDENTIALS_DIRECTORY": str(credentials), "VOICECALLD_TWILIO_AUTH_TOKEN": "env"},
    )
    assert config.providers.twilio.auth_token == "env"


def test_environment_values_are_typed_by_the_field() -> None:
    config = configuration.parse({}, environ={"VOICECALLD_SERVER_PORT": "9000"})
    assert config.server.port == 9000
    with pytest.raises(ConfigError, match=r"server\.port: expected an integer"):
        configuration.parse({}, environ={"VOICECALLD_SERVER_PORT": "ninety"})


def test_check_config_masks_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "voicecalld.toml"
    path.write_text(
        '[server]\npublic_url = "https://voice.example.com"\n'
        '[api]\ntoken = "s3cr3t-api"\n'
        f'[providers.twilio]\nenabled = true\naccount_sid = "{SID}"\n'
        'auth_token = "s3cr3t-twilio"\n'
    )
    assert cli.main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "s3cr3t" not in out
    assert 'auth_token = "***"' in out
    assert f'account_sid = "{SID}"' in out
    # the printed config is itself a valid config that loads to the same values (secrets aside)
    reprinted = tmp_path / "again.toml"
    reprinted.write_text(out.replace('"***"', '"x"'))
    assert configuration.load(reprinted).server.public_url == "https://voice.example.com"


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """``voicecalld check-config -c path`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "voicecalld", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_console_script_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nport = "80"\n')
    result = check_config(bad)
    assert result.returncode == 78
    assert "server.port" in result.stderr
    usage = subprocess.run(
        [sys.executable, "-m", "voicecalld", "no-such-command"], capture_output=True, check=False
    )
    assert usage.returncode == 2


# -- TLS files: loaded when the config is checked, so a bad one is exit 78, not a start-up retry


def tls_files(tmp_path: Path, case: str) -> tuple[Path, Path]:
    """A certificate and key path pair, broken as ``case`` says."""
    authority = trustme.CA()
    leaf = authority.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    if case == "missing":
        return tmp_path / "gone.pem", tmp_path / "gone-key.pem"
    if case == "missing key":
        return cert, tmp_path / "gone-key.pem"
    if case == "a directory":
        return tmp_path, key
    if case == "a fifo":  # opening it would block the event loop until a writer came
        os.mkfifo(tmp_path / "fifo.pem")
        return tmp_path / "fifo.pem", key
    if case == "a NUL in the path":  # open() raises ValueError, not OSError
        return Path(f"{cert}\x00"), key
    if case == "another's key":
        authority.issue_cert("127.0.0.1").private_key_pem.write_to_path(str(key))
    elif case == "swapped":
        return key, cert
    elif case == "encrypted key":
        private = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
        key.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"passphrase"),
            )
        )
    return cert, key


TLS_BAD = [
    ("missing", "server.tls_cert: cannot read"),
    ("missing key", "server.tls_key: cannot read"),
    ("a directory", "server.tls_cert: " + "{tmp}" + " is not a regular file"),
    ("a fifo", "server.tls_cert: " + "{tmp}/fifo.pem is not a regular file"),
    ("a NUL in the path", "server.tls_cert: not a usable path"),
    ("another's key", "server.tls_key:"),
    ("swapped", "server.tls_cert: no PEM certificate in"),
    ("encrypted key", "server.tls_key: no usable PEM private key"),
]


@pytest.mark.parametrize(("case", "expected"), TLS_BAD, ids=[case for case, _ in TLS_BAD])
def test_unusable_tls_files_exit_78_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, expected: str
) -> None:
    cert, key = tls_files(tmp_path, case)
    path = tmp_path / "voicecalld.toml"
    cert_text = str(cert).replace("\x00", "\\u0000")  # TOML spells a NUL as an escape
    path.write_text(f'[server]\ntls_cert = "{cert_text}"\ntls_key = "{key}"\n')
    assert cli.main(["check-config", "-c", str(path)]) == 78
    assert expected.format(tmp=tmp_path) in capsys.readouterr().err


def test_usable_tls_files_pass_the_check(tmp_path: Path) -> None:
    cert, key = tls_files(tmp_path, "usable")
    server = configuration.parse(
        {"server": {"tls_cert": str(cert), "tls_key": str(key)}}, environ={}
    ).server
    assert configuration.tls_context(server) is not None


# -- bytes that are not UTF-8: exit 78 naming the file or the key, never a traceback


def test_a_config_file_not_in_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "voicecalld.toml"
    path.write_bytes(b'[server]\nbind = "\xff"\n')
    with pytest.raises(ConfigError) as caught:
        configuration.load(path, environ={})
    assert caught.value.problems == [f"<file>: {path} is not valid UTF-8 (at byte offset 17)"]
    result = check_config(path)
    assert result.returncode == 78
    assert f"{path} is not valid UTF-8" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_credential_not_in_utf8_is_a_config_error_naming_its_key(tmp_path: Path) -> None:
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "api_token").write_bytes(b"s3cr3t\xff")
    (credentials / "twilio_auth_token").write_bytes(b"\xc3(")
    with pytest.raises(ConfigError) as caught:
        configuration.load(None, environ={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert caught.value.problems == [
        f"api.token: the credential {credentials / 'api_token'} is not valid UTF-8",
        "providers.twilio.auth_token: the credential "
        f"{credentials / 'twilio_auth_token'} is not valid UTF-8",
    ]
    assert "s3cr3t" not in str(caught.value)


def test_the_simulators_account_ids_pass_the_check(tmp_path: Path) -> None:
    accounts = SimAccounts()
    config = configuration.parse(
        {
            "server": {"public_url": "https://voice.example.com"},
            "providers": {
                "twilio": {
                    "enabled": True,
                    "account_sid": accounts.twilio_account_sid,
                    "auth_token": "t",
                },
                "plivo": {"enabled": True, "auth_id": accounts.plivo_auth_id, "auth_token": "t"},
            },
        },
        environ={"HOME": str(tmp_path)},
    )
    assert config.providers.twilio.account_sid == accounts.twilio_account_sid
    assert config.providers.plivo.auth_id == accounts.plivo_auth_id
