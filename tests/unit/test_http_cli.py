"""`billing-token` / `python -m services token`: mint development tokens."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import jwt
import pytest

from services import __main__ as services_main
from services import auth_cli
from services.http import DEVELOPMENT_JWT_SECRET, JwtVerifier

TENANT = "6f1c1b7e-8a43-4d55-9f55-2a7f0c3b9d10"
ENV_SECRET = "secret-from-the-environment-32-bytes-long"
ROOT = Path(__file__).resolve().parents[2]


def test_operator_token_on_stdout_only_with_note_on_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JWT_SECRET", raising=False)

    assert auth_cli.main(["--scope", "operator", "--sub", "alice"]) == 0

    out, err = capsys.readouterr()
    principal = JwtVerifier(DEVELOPMENT_JWT_SECRET).verify(out.strip())
    assert principal.sub == "alice"
    assert principal.scopes == frozenset({"operator"})
    assert out.count("\n") == 1
    assert "development-only" in err


def test_secret_comes_from_jwt_secret(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JWT_SECRET", ENV_SECRET)

    auth_cli.main(["--scope", "portal", "--tenant", TENANT, "--scope", "operator", "--ttl", "90"])

    out, err = capsys.readouterr()
    principal = JwtVerifier(ENV_SECRET).verify(out.strip())
    assert principal.tenant_id == TENANT
    assert principal.scopes == frozenset({"portal", "operator"})
    assert principal.may_read_account(uuid.UUID(TENANT))
    claims = jwt.decode(out.strip(), ENV_SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 90
    assert err == ""


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--scope", "admin"],
        ["--scope", "portal"],
        ["--scope", "portal", "--tenant", "not-a-uuid"],
        ["--scope", "operator", "--ttl", "0"],
    ],
)
def test_invalid_arguments_exit_2_without_a_token(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        auth_cli.main(argv)

    assert exit_info.value.code == 2
    assert capsys.readouterr().out == ""


def test_short_secret_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JWT_SECRET", "short")

    assert auth_cli.main(["--scope", "operator"]) == 2
    assert capsys.readouterr().out == ""


def test_dispatcher_rejects_unknown_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert services_main.main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_python_dash_m_services_token_prints_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_SECRET", ENV_SECRET)

    result = subprocess.run(
        [sys.executable, "-m", "services", "token", "--scope", "operator"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        timeout=60,
    )

    assert JwtVerifier(ENV_SECRET).verify(result.stdout.strip()).scopes == frozenset({"operator"})
