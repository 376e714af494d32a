"""The access log: a line per refused or failed request at ``info``; successes only at ``debug``
(at hundreds of webhooks a second, an info line each would cost more than verifying them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicecalld.testing import make_config, running


def access_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int]]:
    return [
        (record.path, record.status)  # type: ignore[attr-defined]
        for record in caplog.records
        if record.name == "voicecalld.http" and record.getMessage() == "request"
    ]


@pytest.mark.parametrize(
    ("level", "logged"),
    [
        ("info", [("/nowhere", 404), ("/v1/calls", 401)]),
        ("debug", [("/healthz", 200), ("/nowhere", 404), ("/v1/calls", 401)]),
    ],
)
async def test_requests_are_logged_by_outcome(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    level: str,
    logged: list[tuple[str, int]],
) -> None:
    caplog.set_level(level.upper(), logger="voicecalld")
    async with running(make_config(tmp_path, log={"level": level})) as daemon:
        assert (await daemon.api.get("/healthz")).status_code == 200
        assert (await daemon.api.get("/nowhere")).status_code == 404
        refused = await daemon.api.get("/v1/calls", headers={"Authorization": "Bearer nope"})
        assert refused.status_code == 401
    assert access_lines(caplog) == logged
