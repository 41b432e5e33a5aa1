"""No token, secret or authorization code reaches a log line: by key, inside free text, or as
a value the process registered as secret."""

from __future__ import annotations

import logging

import pytest
import structlog

from services.logging import configure_logging, register_secret, scrub


def test_secret_parameters_inside_text_are_scrubbed() -> None:
    text = scrub("POST /connect/token code=abc123def&code_verifier=xyz789&grant_type=x "
                 "Authorization: Bearer eyJhbGciOi.payload.sig refresh_token=rt-1")
    for secret in ("abc123def", "xyz789", "eyJhbGciOi.payload.sig", "rt-1"):
        assert secret not in text
    assert "grant_type=x" in text


def test_logged_secrets_never_reach_the_output(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(service="sync_service", level="DEBUG", fmt="json")
    register_secret("xat.registered-access-token-value")
    log = structlog.get_logger("test")
    log.info("tokens", access_token="at-secret-1", refresh_token="rt-secret-2",
             code="auth-code-3", code_verifier="verifier-4", client_secret="cs-5",
             encryption_keys="k1:AAAA", detail="answer had xat.registered-access-token-value")
    try:
        raise RuntimeError("failed with code=auth-code-6 and Bearer xat.registered-access-token-value")
    except RuntimeError:
        log.exception("failed")
    logging.getLogger("httpx").warning("sent refresh_token=rt-secret-7")
    err = capsys.readouterr().err
    for secret in ("at-secret-1", "rt-secret-2", "auth-code-3", "verifier-4", "cs-5", "k1:AAAA",
                   "xat.registered-access-token-value", "auth-code-6", "rt-secret-7"):
        assert secret not in err, secret
    assert "[redacted]" in err


def test_ordinary_words_ending_like_a_secret_parameter_stay() -> None:
    assert scrub("exit_code=1 status_code=500") == "exit_code=1 status_code=500"


def test_registered_secrets_are_found_inside_text_with_or_without_delimiters() -> None:
    register_secret("plain-secret-token-0123")
    register_secret("padded/base64+secret==")
    text = scrub('{"a": "x plain-secret-token-0123 y", "b": "padded/base64+secret=="}')
    assert "plain-secret-token-0123" not in text and "padded/base64+secret==" not in text
    assert scrub("no secret here") == "no secret here"
