"""Credentials at rest: AES-GCM with the key id beside each secret, rotation, tampering, the
development key under .run/, and production refusing to start without a key."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from services.settings import SettingsError, load_settings
from sync_service.app.credentials import (
    CredentialsUnreadable,
    KeyRing,
    load_key_ring,
    parse_keys,
)
from sync_service.settings import SyncSettings

K1 = "k1:" + base64.b64encode(b"1" * 32).decode()
K0 = "k0:" + base64.b64encode(b"0" * 32).decode()
BASE_ENV = {"DATABASE_URL": "postgresql://x@127.0.0.1/db", "NATS_URL": "nats://127.0.0.1:1"}


def settings(**env: str) -> SyncSettings:
    return load_settings(SyncSettings, service_name="sync_service", http_port_default=8004,
                         environ={**BASE_ENV, **env})


def test_a_secret_round_trips_and_is_not_readable_in_the_ciphertext() -> None:
    ring = KeyRing(parse_keys(K1))
    key_id, sealed = ring.encrypt("refresh-token-value", "grants:g1:refresh")
    assert key_id == "k1"
    assert b"refresh-token-value" not in sealed
    assert ring.decrypt(key_id, sealed, "grants:g1:refresh") == "refresh-token-value"


def test_the_first_key_encrypts_and_older_keys_still_decrypt() -> None:
    old = KeyRing(parse_keys(K0))
    key_id, sealed = old.encrypt("token", "ctx")
    rotated = KeyRing(parse_keys(f"{K1},{K0}"))
    assert rotated.decrypt(key_id, sealed, "ctx") == "token"
    assert rotated.encrypt("token", "ctx")[0] == "k1"


def test_a_ciphertext_moved_to_another_row_or_tampered_does_not_open() -> None:
    ring = KeyRing(parse_keys(K1))
    key_id, sealed = ring.encrypt("token", "grants:g1:access")
    with pytest.raises(CredentialsUnreadable):
        ring.decrypt(key_id, sealed, "grants:g2:access")
    with pytest.raises(CredentialsUnreadable):
        ring.decrypt(key_id, sealed[:-1] + bytes([sealed[-1] ^ 1]), "grants:g1:access")
    with pytest.raises(CredentialsUnreadable):
        ring.decrypt("unknown", sealed, "grants:g1:access")


@pytest.mark.parametrize("spec", ["nokey", "k1:not-base64!", "k1:" + base64.b64encode(
    b"short").decode(), f"{K1},{K1}"])
def test_malformed_keys_are_refused(spec: str) -> None:
    with pytest.raises(SettingsError):
        parse_keys(spec)


def test_production_refuses_to_start_without_a_key() -> None:
    with pytest.raises(SettingsError, match="SYNC_ENCRYPTION_KEYS"):
        settings(APP_ENV="production", JWT_SECRET="p" * 40)
    assert settings(APP_ENV="production", JWT_SECRET="p" * 40,
                    SYNC_ENCRYPTION_KEYS=K1).encryption_keys == K1


def test_development_generates_a_private_key_once(tmp_path: Path) -> None:
    path = tmp_path / ".run" / "sync-dev.key"
    dev = settings(SYNC_DEV_KEY_PATH=str(path))
    first = load_key_ring(dev)
    key_id, sealed = first.encrypt("token", "ctx")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_key_ring(dev).decrypt(key_id, sealed, "ctx") == "token"


def test_the_development_key_lives_in_the_stack_run_directory(tmp_path: Path) -> None:
    dev = settings(RUN_DIR=str(tmp_path / "stack"))
    load_key_ring(dev)
    assert (tmp_path / "stack" / "sync-dev.key").exists()


def test_malformed_keys_stop_the_start_with_a_message_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match="SYNC_ENCRYPTION_KEYS") as refused:
        settings(SYNC_ENCRYPTION_KEYS="CHANGE_ME")
    assert "CHANGE_ME" not in str(refused.value)
