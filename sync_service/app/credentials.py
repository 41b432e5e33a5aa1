"""Credentials encrypted at rest: AES-256-GCM, with the key id stored beside each secret.

SYNC_ENCRYPTION_KEYS holds ``kid:base64key`` pairs, comma-separated: the first encrypts,
every one decrypts, so a key is rotated by putting a new one first and re-encrypting (each
refresh re-encrypts a grant's tokens with the current key). The associated data binds a
ciphertext to its row and column, so a ciphertext copied elsewhere does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.settings import SettingsError
from sync_service.settings import SyncSettings

NONCE_BYTES: Final = 12
KEY_BYTES: Final = 32
KEYS_MAX: Final = 8


class CredentialsUnreadable(Exception):
    """A stored secret does not decrypt with any configured key (wrong key or tampering)."""


class KeyRing:
    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise SettingsError("SYNC_ENCRYPTION_KEYS names no key")
        if len(keys) > KEYS_MAX:
            raise SettingsError(f"SYNC_ENCRYPTION_KEYS holds more than {KEYS_MAX} keys")
        self._current = keys[0][0]
        self._ciphers = {kid: AESGCM(key) for kid, key in keys}

    @property
    def current_key_id(self) -> str:
        return self._current

    def encrypt(self, plaintext: str, context: str) -> tuple[str, bytes]:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self._current].encrypt(nonce, plaintext.encode(), context.encode())
        return self._current, nonce + sealed

    def decrypt(self, key_id: str, blob: bytes, context: str) -> str:
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise CredentialsUnreadable(f"encryption key {key_id!r} is not configured")
        try:
            return cipher.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], context.encode()).decode()
        except InvalidTag:
            raise CredentialsUnreadable(f"a secret sealed with key {key_id!r} failed to open") \
                from None


def parse_keys(spec: str) -> list[tuple[str, bytes]]:
    keys = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        kid, sep, encoded = item.partition(":")
        if not sep or not kid or len(kid) > 32:
            raise SettingsError("SYNC_ENCRYPTION_KEYS: each entry is kid:base64key")
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise SettingsError(f"SYNC_ENCRYPTION_KEYS: key {kid!r} is not base64") from None
        if len(key) != KEY_BYTES:
            raise SettingsError(f"SYNC_ENCRYPTION_KEYS: key {kid!r} must be 32 bytes")
        keys.append((kid, key))
    if len({kid for kid, _ in keys}) != len(keys):
        raise SettingsError("SYNC_ENCRYPTION_KEYS: key ids must be unique")
    return keys


def load_key_ring(settings: SyncSettings) -> KeyRing:
    """The configured keys; in development without any, a key generated once under .run/."""
    if settings.encryption_keys:
        return KeyRing(parse_keys(settings.encryption_keys))
    if settings.is_production:
        raise SettingsError("APP_ENV=production needs SYNC_ENCRYPTION_KEYS")
    return KeyRing(parse_keys(development_key(Path(settings.development_key_path))))


def development_key(path: Path) -> str:
    """Read, or create with mode 0600, the development key file (``dev:base64key``)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        spec = "dev:" + base64.b64encode(os.urandom(KEY_BYTES)).decode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process of the service wrote it first
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(spec + "\n")
    return path.read_text().strip()
