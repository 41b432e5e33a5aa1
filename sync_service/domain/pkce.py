"""OAuth 2.0 authorization-code flow with PKCE (RFC 7636): verifier, S256 challenge, state."""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Final

# RFC 7636 §4.1: 43-128 characters of [A-Za-z0-9-._~]; 64 random bytes give 86 of them.
VERIFIER_BYTES: Final = 64
STATE_BYTES: Final = 32
STATE_TTL_S: Final = 600


def new_verifier() -> str:
    return secrets.token_urlsafe(VERIFIER_BYTES)


def s256_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_state() -> str:
    return secrets.token_urlsafe(STATE_BYTES)


def binding_digest(binding: str) -> str:
    """What is stored of the browser binding cookie: its hash, never the value."""
    return hashlib.sha256(binding.encode()).hexdigest()
