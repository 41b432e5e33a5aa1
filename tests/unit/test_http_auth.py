"""Bearer JWT auth: tokens, scopes, guards, the principal dependency and tenant isolation."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
import time_machine
from cryptography.hazmat.primitives.asymmetric import rsa
from litestar import get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.testing import TestClient

from services.http import (
    DEVELOPMENT_JWT_SECRET,
    PROBLEM_MEDIA_TYPE,
    PROBLEM_TYPE_BASE,
    CurrentPrincipal,
    JwtVerifier,
    Principal,
    TokenRejected,
    create_app,
    mint_token,
    requires_any_scope,
    requires_scope,
)

SECRET = "unit-test-secret-of-at-least-32-bytes!"
ACCOUNT_ID = uuid.UUID("6f1c1b7e-8a43-4d55-9f55-2a7f0c3b9d10")
OTHER_ACCOUNT_ID = uuid.UUID("0b0e4e4c-3b9c-4a59-9f3e-1f6f0c1d2e3f")


@get("/accounts/{account_id:uuid}", guards=[requires_any_scope("portal", "operator")])
async def read_account(
    account_id: FromPath[uuid.UUID], principal: CurrentPrincipal
) -> dict[str, str]:
    if not principal.may_read_account(account_id):
        raise NotFoundException(detail="No such account")
    return {"account_id": str(account_id), "sub": principal.sub}


@post("/adjustments", guards=[requires_scope("operator")])
async def adjust(principal: CurrentPrincipal) -> dict[str, str]:
    return {"actor": principal.sub}


@get("/whoami")
async def whoami(principal: CurrentPrincipal) -> dict[str, Any]:
    return {"sub": principal.sub, "scopes": sorted(principal.scopes)}


@get("/public")
async def public() -> dict[str, str]:
    return {"status": "open"}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient[Any]]:
    app = create_app(
        title="auth-test",
        version="0.0.1",
        route_handlers=[read_account, adjust, whoami, public],
        readiness_checks={},
        auth=JwtVerifier(SECRET),
    )
    with TestClient(app=app) as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def operator_token(**overrides: Any) -> str:
    return mint_token(SECRET, **{"sub": "op-1", "scopes": ["operator"], **overrides})


def portal_token(tenant: uuid.UUID = ACCOUNT_ID) -> str:
    return mint_token(SECRET, sub="user-7", scopes=["portal"], tenant_id=str(tenant))


def signed(claims: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def assert_unauthorized(response: Any) -> None:
    assert response.status_code == 401
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["type"] == f"{PROBLEM_TYPE_BASE}unauthorized"


# --- over HTTP ---------------------------------------------------------------------------


def test_routes_without_guards_need_no_token(client: TestClient[Any]) -> None:
    assert client.get("/public").json() == {"status": "open"}


def test_missing_token_is_401_with_bearer_challenge(client: TestClient[Any]) -> None:
    assert_unauthorized(client.post("/adjustments"))


def test_non_bearer_scheme_is_401(client: TestClient[Any]) -> None:
    assert_unauthorized(client.post("/adjustments", headers={"Authorization": "Basic b3A6cHc="}))


def test_bad_signature_is_401(client: TestClient[Any]) -> None:
    forged = mint_token("another-secret-that-is-32-bytes-long!!", sub="op", scopes=["operator"])

    response = client.post("/adjustments", headers=bearer(forged))

    assert_unauthorized(response)
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_expired_token_is_401(client: TestClient[Any]) -> None:
    # Beyond the 30 s leeway.
    expired = signed({"sub": "op", "scope": "operator", "exp": int(time.time()) - 120})

    response = client.post("/adjustments", headers=bearer(expired))

    assert_unauthorized(response)
    assert "expired" in response.json()["detail"].lower()


def test_token_without_exp_is_401(client: TestClient[Any]) -> None:
    assert_unauthorized(client.post("/adjustments", headers=bearer(signed({"sub": "op"}))))


def test_wrong_scope_is_403(client: TestClient[Any]) -> None:
    response = client.post("/adjustments", headers=bearer(portal_token()))

    assert response.status_code == 403
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    assert response.json()["type"] == f"{PROBLEM_TYPE_BASE}forbidden"
    assert "operator" in response.json()["detail"]


def test_operator_scope_passes_the_guard_and_reaches_the_principal(
    client: TestClient[Any],
) -> None:
    response = client.post("/adjustments", headers=bearer(operator_token(sub="alice")))

    assert response.status_code == 201
    assert response.json() == {"actor": "alice"}


def test_principal_dependency_alone_requires_a_token(client: TestClient[Any]) -> None:
    assert_unauthorized(client.get("/whoami"))
    response = client.get("/whoami", headers=bearer(portal_token()))
    assert response.json() == {"sub": "user-7", "scopes": ["portal"]}


def test_portal_token_reads_its_own_account(client: TestClient[Any]) -> None:
    response = client.get(f"/accounts/{ACCOUNT_ID}", headers=bearer(portal_token()))

    assert response.status_code == 200


def test_portal_token_reading_another_tenant_gets_404(client: TestClient[Any]) -> None:
    response = client.get(f"/accounts/{OTHER_ACCOUNT_ID}", headers=bearer(portal_token()))

    assert response.status_code == 404
    assert response.json()["type"] == f"{PROBLEM_TYPE_BASE}not-found"


def test_operator_reads_any_account(client: TestClient[Any]) -> None:
    response = client.get(f"/accounts/{OTHER_ACCOUNT_ID}", headers=bearer(operator_token()))

    assert response.status_code == 200


# --- verifier and tokens -----------------------------------------------------------------


def test_mint_token_round_trips_through_the_verifier() -> None:
    token = mint_token(SECRET, sub="svc", scopes=["portal", "operator"], tenant_id="t-1", ttl_s=60)

    principal = JwtVerifier(SECRET).verify(token)

    assert principal == Principal(
        sub="svc", tenant_id="t-1", scopes=frozenset({"portal", "operator"})
    )
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 60


def test_scope_claim_as_space_separated_string() -> None:
    token = signed({"sub": "a", "scope": "portal  operator", "exp": int(time.time()) + 60})

    assert JwtVerifier(SECRET).verify(token).scopes == frozenset({"portal", "operator"})


def test_scope_claim_as_list() -> None:
    token = signed({"sub": "a", "scope": ["portal"], "exp": int(time.time()) + 60})

    assert JwtVerifier(SECRET).verify(token).scopes == frozenset({"portal"})


def test_scope_claim_of_another_type_is_rejected() -> None:
    token = signed({"sub": "a", "scope": 7, "exp": int(time.time()) + 60})

    with pytest.raises(TokenRejected, match="scope"):
        JwtVerifier(SECRET).verify(token)


def test_tenant_id_must_be_a_string() -> None:
    token = signed({"sub": "a", "tenant_id": 42, "exp": int(time.time()) + 60})

    with pytest.raises(TokenRejected, match="tenant_id"):
        JwtVerifier(SECRET).verify(token)


def test_audience_and_issuer_are_checked_when_configured() -> None:
    verifier = JwtVerifier(SECRET, audience="billing", issuer="https://id.example")
    good = mint_token(SECRET, sub="a", scopes=["portal"], audience="billing",
                      issuer="https://id.example")
    wrong_audience = mint_token(SECRET, sub="a", scopes=["portal"], audience="crm",
                                issuer="https://id.example")

    assert verifier.verify(good).sub == "a"
    with pytest.raises(TokenRejected):
        verifier.verify(wrong_audience)


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        JwtVerifier("too-short")


def test_unknown_scope_in_a_guard_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="scopes must be among"):
        requires_scope("admin")


def test_development_secret_is_usable_for_local_tokens() -> None:
    token = mint_token(DEVELOPMENT_JWT_SECRET, sub="dev", scopes=["operator"])

    assert JwtVerifier(DEVELOPMENT_JWT_SECRET).verify(token).sub == "dev"


# --- principal ---------------------------------------------------------------------------


def test_portal_may_read_only_its_tenant() -> None:
    principal = Principal(sub="u", tenant_id=str(ACCOUNT_ID), scopes=frozenset({"portal"}))

    assert principal.may_read_account(ACCOUNT_ID)
    assert principal.may_read_account(str(ACCOUNT_ID).upper())
    assert not principal.may_read_account(OTHER_ACCOUNT_ID)


def test_portal_without_tenant_reads_nothing() -> None:
    principal = Principal(sub="u", tenant_id=None, scopes=frozenset({"portal"}))

    assert not principal.may_read_account(ACCOUNT_ID)


def test_tenant_without_portal_scope_reads_nothing() -> None:
    principal = Principal(sub="u", tenant_id=str(ACCOUNT_ID), scopes=frozenset())

    assert not principal.may_read_account(ACCOUNT_ID)


def test_operator_may_read_every_account() -> None:
    principal = Principal(sub="op", scopes=frozenset({"operator"}))

    assert principal.may_read_account(OTHER_ACCOUNT_ID)


# --- JWKS (production) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwks_url(rsa_key: rsa.RSAPrivateKey) -> Iterator[str]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": "key-1", "alg": "RS256", "use": "sig"}]})

    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/.well-known/jwks.json"
    finally:
        server.shutdown()


def rs256_token(key: rsa.RSAPrivateKey, kid: str = "key-1") -> str:
    claims = {"sub": "prod-user", "scope": "operator", "exp": int(time.time()) + 60}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


async def test_jwks_verifier_accepts_tokens_signed_by_the_published_key(
    rsa_key: rsa.RSAPrivateKey, jwks_url: str
) -> None:
    principal = await JwtVerifier(None, jwks_url=jwks_url).authenticate(rs256_token(rsa_key))

    assert principal.sub == "prod-user"
    assert principal.is_operator


def test_jwks_verifier_rejects_a_key_it_does_not_publish(jwks_url: str) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    with pytest.raises(TokenRejected):
        JwtVerifier(None, jwks_url=jwks_url).verify(rs256_token(stranger))


def test_jwks_verifier_rejects_hs256_tokens(jwks_url: str) -> None:
    # An HS256 token signed with anything must not pass where keys are asymmetric.
    with pytest.raises(TokenRejected):
        JwtVerifier(None, jwks_url=jwks_url).verify(operator_token())


SERVICE_SECRET = "s" * 40


def test_with_jwks_only_a_token_signed_with_the_service_secret_passes_as_hs256(
    rsa_key: rsa.RSAPrivateKey, jwks_url: str
) -> None:
    """The services' own calls (renewals charging the ledger) in production: HS256 with
    JWT_SERVICE_SECRET beside the identity provider's keys; a user's HS256 token signed with
    anything else is still refused, and RS256 from the JWKS still passes."""
    verifier = JwtVerifier(None, jwks_url=jwks_url, service_secret=SERVICE_SECRET)
    service = mint_token(SERVICE_SECRET, sub="invoicing_service:recurring", scopes=["operator"])
    assert verifier.verify(service).sub == "invoicing_service:recurring"
    with pytest.raises(TokenRejected):
        verifier.verify(operator_token())
    assert verifier.verify(rs256_token(rsa_key)).sub
    with pytest.raises(TokenRejected):
        JwtVerifier(None, jwks_url=jwks_url).verify(service)


def test_without_jwks_both_the_secret_and_the_service_secret_sign_tokens() -> None:
    verifier = JwtVerifier(SECRET, service_secret=SERVICE_SECRET)
    assert verifier.verify(operator_token()).sub == "op-1"
    assert verifier.verify(mint_token(SERVICE_SECRET, sub="svc", scopes=["operator"])).sub == "svc"
    with pytest.raises(TokenRejected):
        verifier.verify(mint_token("o" * 40, sub="forged", scopes=["operator"]))


def test_unreachable_jwks_is_503_not_401() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    app = create_app(
        title="t",
        version="1",
        route_handlers=[adjust],
        readiness_checks={},
        auth=JwtVerifier(None, jwks_url=f"http://127.0.0.1:{closed_port}/jwks.json"),
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    with TestClient(app=app) as client:
        response = client.post("/adjustments", headers=bearer(rs256_token(key)))

    assert response.status_code == 503
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    assert "Traceback" not in response.text


def test_a_verified_token_is_remembered_only_until_it_expires() -> None:
    verifier = JwtVerifier(SECRET, leeway_s=0)
    token = mint_token(SECRET, sub="u", scopes=["portal"], tenant_id="t", ttl_s=60)
    with time_machine.travel(time.time(), tick=False) as traveller:
        first = verifier.verify(token)
        assert verifier.verify(token) is first  # answered from memory
        traveller.shift(59)
        assert verifier.verify(token) is first
        traveller.shift(2)
        with pytest.raises(TokenRejected, match="expired"):
            verifier.verify(token)


def test_a_forged_token_is_never_remembered() -> None:
    verifier = JwtVerifier(SECRET)
    forged = jwt.encode({"sub": "u", "scope": "operator", "exp": int(time.time()) + 60},
                        "x" * 32 + "another-secret", algorithm="HS256")
    for _ in range(2):
        with pytest.raises(TokenRejected):
            verifier.verify(forged)
