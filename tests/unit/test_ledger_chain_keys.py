"""The keyed hash chain: who can and cannot recompute it, and key rotation."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from ledger_service.domain.account import BillingAccount
from ledger_service.domain.chain import (
    ChainKeyError,
    ChainKeyring,
    chain_keyring,
    configure_chain_keys,
    is_keyed,
    verify_chain,
)
from ledger_service.settings import (
    DEVELOPMENT_ANCHOR_SIGNING_KEY,
    DEVELOPMENT_CHAIN_KEYS,
    LedgerSettings,
)
from services.settings import SettingsError

T0 = datetime(2026, 11, 1, tzinfo=UTC)
KEY_A = base64.b64encode(b"a" * 32).decode()
KEY_B = base64.b64encode(b"b" * 32).decode()


@pytest.fixture(autouse=True)
def _restore_keyring() -> Iterator[None]:
    saved = chain_keyring()
    yield
    configure_chain_keys(saved)


def history(count: int = 4) -> list[object]:
    account = BillingAccount.open(uuid4(), T0, account_type="prepay")
    for step in range(count):
        account.grant(f"g{step}", "bonus", 1_000_000, T0 + timedelta(seconds=step),
                      reason="top-up")
    return list(account.collect_events())


def test_hashes_are_keyed_and_name_their_key() -> None:
    configure_chain_keys(ChainKeyring.parse(f"k2={KEY_A}"))
    events = history()
    assert all(e.chain_hash.startswith("k2:") for e in events)  # type: ignore[attr-defined]
    assert verify_chain(events) == []


def test_without_the_key_an_edit_cannot_be_made_to_verify() -> None:
    configure_chain_keys(ChainKeyring.parse(f"k2={KEY_A}"))
    events = history()
    # An attacker who knows the algorithm but not the key signs under a key of their own.
    configure_chain_keys(ChainKeyring.parse(f"k2={KEY_B}"))
    forged = history()
    configure_chain_keys(ChainKeyring.parse(f"k2={KEY_A}"))
    assert verify_chain(forged), "hashes under another key must not verify"
    assert verify_chain(events) == []


def test_a_chain_rewritten_unkeyed_after_keyed_events_is_a_break() -> None:
    configure_chain_keys(ChainKeyring.parse(f"k2={KEY_A}"))
    keyed = history(2)
    # The attacker recomputes plain SHA-256 onwards from the last keyed hash they keep.
    reasons = [b.reason for b in verify_chain([*keyed[:1], *_unkeyed_continuation(keyed[0])])]
    assert "unkeyed" in reasons


def _unkeyed_continuation(first: object) -> list[object]:
    saved = chain_keyring()
    configure_chain_keys(None)
    try:
        account = BillingAccount.open(uuid4(), T0, account_type="prepay")
        account._chain_hash = first.chain_hash  # type: ignore[attr-defined]
        account._id = first.originator_id  # type: ignore[attr-defined]
        account.grant("x", "bonus", 5, T0, reason="forged")
        return list(account.collect_events())[1:]
    finally:
        configure_chain_keys(saved)


def test_rotation_new_key_signs_old_key_still_verifies() -> None:
    configure_chain_keys(ChainKeyring.parse(f"old={KEY_A}"))
    before = history(2)
    configure_chain_keys(ChainKeyring.parse(f"new={KEY_B},old={KEY_A}"))
    assert verify_chain(before) == []
    after = history(2)
    assert all(e.chain_hash.startswith("new:") for e in after)  # type: ignore[attr-defined]
    configure_chain_keys(ChainKeyring.parse(f"new={KEY_B}"))  # the old key was dropped too soon
    assert next(b.reason for b in verify_chain(before)) == "unknown_key"


def test_unkeyed_legacy_chains_still_verify() -> None:
    configure_chain_keys(None)
    legacy = history()
    assert not any(is_keyed(e.chain_hash) for e in legacy)  # type: ignore[attr-defined]
    configure_chain_keys(ChainKeyring.parse(f"k={KEY_A}"))
    assert verify_chain(legacy) == []


@pytest.mark.parametrize("text", ["", "k", "k=notbase64!", f"k={base64.b64encode(b'short').decode()}",
                                  f"k={KEY_A},k={KEY_B}", f"bad id={KEY_A}"])
def test_malformed_keyrings_are_refused_without_echoing_keys(text: str) -> None:
    with pytest.raises(ChainKeyError) as caught:
        ChainKeyring.parse(text)
    assert KEY_A not in str(caught.value) and KEY_B not in str(caught.value)


def _settings(**extra: str) -> LedgerSettings:
    from services.settings import load_settings

    env = {"DATABASE_URL": "postgresql://x@h/db", "NATS_URL": "nats://h:4222",
           "JWT_SECRET": "s" * 40, **extra}
    return load_settings(LedgerSettings, service_name="ledger_service", http_port_default=8001,
                         environ=env)


def test_production_refuses_the_development_keys() -> None:
    with pytest.raises(SettingsError, match="CHAIN_KEYS"):
        _settings(APP_ENV="production")
    with pytest.raises(SettingsError, match="ANCHOR_SIGNING_KEY"):
        _settings(APP_ENV="production", LEDGER_CHAIN_KEYS=f"p1={KEY_A}")
    settings = _settings(APP_ENV="production", LEDGER_CHAIN_KEYS=f"p1={KEY_A}",
                         ANCHOR_SIGNING_KEY=KEY_B)
    assert settings.keyring().signing_id == "p1"
    assert DEVELOPMENT_CHAIN_KEYS not in repr(settings.keyring().signing_id)
    assert settings.anchor_signing_key != DEVELOPMENT_ANCHOR_SIGNING_KEY
