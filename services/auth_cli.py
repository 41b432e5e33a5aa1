"""`billing-token`: mint a development bearer token (HS256).

    billing-token --scope operator
    billing-token --scope portal --tenant 0b0e4e4c-3b9c-4a59-9f3e-1f6f0c1d2e3f

The secret comes from JWT_SECRET, else the development-only default. Only the token goes to
stdout, so `TOKEN=$(billing-token --scope operator)` works.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Sequence

from services.http.auth import DEVELOPMENT_JWT_SECRET, KNOWN_SCOPES, PORTAL, mint_token

TTL_S_DEFAULT = 3600
TTL_S_MAX = 30 * 24 * 3600


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="billing-token", description="Mint a development JWT.")
    cli.add_argument("--scope", action="append", required=True, choices=sorted(KNOWN_SCOPES),
                     help="scope to grant; repeat for several")
    cli.add_argument("--tenant", type=_account_id, metavar="ACCOUNT_ID",
                     help="account id a portal token may read (claim tenant_id)")
    cli.add_argument("--sub", default="billing-token", help="subject (claim sub)")
    cli.add_argument("--ttl", type=_ttl_s, default=TTL_S_DEFAULT, metavar="SECONDS",
                     help=f"lifetime in seconds (default {TTL_S_DEFAULT}, max {TTL_S_MAX})")
    cli.add_argument("--audience", help="claim aud, when the services check one")
    cli.add_argument("--issuer", help="claim iss, when the services check one")
    return cli


def _account_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an account id (UUID): {value!r}") from exc


def _ttl_s(value: str) -> int:
    ttl_s = int(value)
    if not 1 <= ttl_s <= TTL_S_MAX:
        raise argparse.ArgumentTypeError(f"ttl must be 1..{TTL_S_MAX} seconds")
    return ttl_s


def _secret() -> str:
    secret = os.environ.get("JWT_SECRET")
    if secret:
        return secret
    print("billing-token: JWT_SECRET is not set; signing with the development-only secret",
          file=sys.stderr)
    return DEVELOPMENT_JWT_SECRET


def main(argv: Sequence[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if PORTAL in args.scope and args.tenant is None:
        cli.error("--scope portal needs --tenant ACCOUNT_ID")
    try:
        token = mint_token(_secret(), sub=args.sub, scopes=args.scope, tenant_id=args.tenant,
                           ttl_s=args.ttl, audience=args.audience, issuer=args.issuer)
    except ValueError as exc:
        print(f"billing-token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
