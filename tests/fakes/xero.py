"""A local fake of Xero: its identity server (OAuth 2.0 with PKCE), `/connections`, and the
accounting API resources the sync service writes (Contacts, Invoices, CreditNotes, Payments).

Faithful where our code depends on Xero's behaviour (shared/reference/external-apis.md §3):

- Identity: `GET /identity/connect/authorize` approves at once and redirects to the
  `redirect_uri` with `code` and `state`; `POST /connect/token` takes `authorization_code`
  (the PKCE `code_verifier` is checked against the S256 challenge; a code is single-use and
  lives 5 minutes) and `refresh_token` (rotation: the new token is returned every time, the
  previous one stays valid for a 30-minute grace, anything else is `invalid_grant`);
  `POST /connect/revocation` revokes the grant. Access tokens live `access_token_ttl_s`.
- `GET /connections` lists the organisations of the token's grant (`id` differs from
  `tenantId`, as in Xero).
- `/api.xro/2.0/...` requires `Authorization: Bearer`, `xero-tenant-id` (of the grant) and
  `Accept: application/json`. `PUT` creates; `POST` creates or updates. `Idempotency-Key`
  replays the first answer for the same key and tenant (within `idempotency_window_s`).
  `where` filters of the form `Field=="value"` (joined by `AND`), `InvoiceNumbers=`, paging.
  Errors are Xero's shapes: 400 `ValidationException` with `Elements[].ValidationErrors`.
  Dates are MS-JSON (`/Date(ms+0000)/`) with `DateString` beside them.
- Limits per tenant: `minute_limit` calls per rolling `minute_window_s`, `day_limit` per day,
  `concurrent_limit` in flight; a breach is 429 with `X-Rate-Limit-Problem` (and
  `Retry-After` for minute and day). Every 429 is recorded in `rate_limited` so a test can
  assert that our pacing provoked none.
- Faults, programmed (consumed in order) or random (`fault_rates`, seeded): `unavailable` (503
  before anything happens), `slow` (executes, answers late), `drop` (executes and commits, then
  closes the connection without an answer: the "commit then drop" of Lago's duplicate bug).

Duplicate invoice numbers are accepted (as with Xero's uniqueness warning switched off), so a
test can see a duplicate our code would have caused.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import math
import random
import re
import secrets
import socket
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

from tests.fakes.http_server import FakeAPI

CLIENT_ID = "FAKEXEROCLIENTID0123456789ABCDEF"
WEBHOOK_KEY = "fake-xero-webhook-signing-key-0123456789"
API_PREFIX = "/api.xro/2.0"
TAX_RATES = {"OUTPUT2": Decimal("0.20"), "RROUTPUT": Decimal("0.05"),
             "ZERORATEDOUTPUT": Decimal(0), "EXEMPTOUTPUT": Decimal(0), "NONE": Decimal(0),
             "ECZROUTPUTSERVICES": Decimal(0), "ECZROUTPUT": Decimal(0)}
BANK_ACCOUNT_CODES = {"090", "091", "970"}
CODE_TTL_S = 300
_WHERE_TERM = re.compile(r'^\s*(\w+(?:\.\w+)?)\s*==\s*"([^"]*)"\s*$')


def sign_webhook(body: bytes, key: str = WEBHOOK_KEY) -> str:
    """The `x-xero-signature` Xero sends: base64(HMAC-SHA256(key, raw body))."""
    return base64.b64encode(hmac.new(key.encode(), body, hashlib.sha256).digest()).decode()


def ms_date(moment: datetime | None = None) -> str:
    moment = moment or datetime.now(UTC)
    return f"/Date({int(moment.timestamp() * 1000)}+0000)/"


def _cents(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


@dataclass
class Fault:
    kind: str  # "unavailable" | "slow" | "drop"
    status: int = 503
    delay_s: float = 0.0
    path_contains: str | None = None


@dataclass
class _Grant:
    grant_id: str
    client_id: str
    tenants: list[dict[str, Any]]
    scope: str
    revoked: bool = False


@dataclass
class _Refresh:
    grant_id: str
    superseded_at: float | None = None


@dataclass
class _Stored:
    fingerprint: str
    status: int | None
    body: dict[str, Any] | None
    at: float


class _Drop(Exception):
    """Close the connection without answering."""


class _Answer(Exception):
    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


@dataclass
class FakeXero(FakeAPI):
    client_id: str = CLIENT_ID
    # The organisations the next approval grants (each {"tenantId", "tenantName"}).
    organisations: list[dict[str, str]] = field(default_factory=lambda: [
        {"tenantId": str(uuid.uuid4()), "tenantName": "Demo Company (UK)"}])
    access_token_ttl_s: float = 1800.0
    refresh_grace_s: float = 1800.0
    minute_limit: int = 60
    minute_window_s: float = 60.0
    day_limit: int = 5000
    concurrent_limit: int = 5
    idempotency_window_s: float | None = None  # None: keys are remembered for ever
    fault_rates: dict[str, float] = field(default_factory=dict)
    fault_seed: int = 7
    slow_delay_s: float = 0.3
    # -- state a test may read -----------------------------------------------------------------
    contacts: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: defaultdict(dict))
    invoices: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: defaultdict(dict))
    credit_notes: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: defaultdict(dict))
    payments: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: defaultdict(dict))
    token_requests: list[str] = field(default_factory=list)  # grant types, in order
    # Every code, verifier and token that crossed the fake: a test greps logs for them.
    secrets_seen: set[str] = field(default_factory=set)
    revoked_tokens: list[str] = field(default_factory=list)
    rate_limited: list[tuple[str, str]] = field(default_factory=list)  # (tenant, problem)
    rate_limited_at: list[float] = field(default_factory=list)  # time.time() of each 429
    contact_updates: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    api_calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # When each admitted call arrived, per tenant (wall clock), for rolling-window checks.
    call_times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    # When each invoice was created, per tenant (monotonic clock), for fairness figures.
    invoice_times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    faults_injected: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # -- internals -----------------------------------------------------------------------------
    _codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    _grants: dict[str, _Grant] = field(default_factory=dict)
    _access: dict[str, tuple[str, float]] = field(default_factory=dict)
    _refresh: dict[str, _Refresh] = field(default_factory=dict)
    _idempotency: dict[tuple[str, str], _Stored] = field(default_factory=dict)
    _calls: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    _day_calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _faults: deque[Fault] = field(default_factory=deque)
    _random: random.Random = field(default_factory=random.Random)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, port: int = 0) -> FakeXero:
        self._random.seed(self.fault_seed)
        self.serve(self._dispatch, ("GET", "POST", "PUT", "DELETE"), port,
                   protocol_version="HTTP/1.1")
        return self

    # -- programming -----------------------------------------------------------------------------

    def fail_next(self, times: int = 1, status: int = 503, path_contains: str | None = None
                  ) -> None:
        for _ in range(times):
            self._faults.append(Fault("unavailable", status=status, path_contains=path_contains))

    def drop_next(self, times: int = 1, path_contains: str | None = None) -> None:
        """Execute (and commit) the next request, then close the connection unanswered."""
        for _ in range(times):
            self._faults.append(Fault("drop", path_contains=path_contains))

    def slow_next(self, delay_s: float, path_contains: str | None = None) -> None:
        self._faults.append(Fault("slow", delay_s=delay_s, path_contains=path_contains))

    def expire_access_tokens(self) -> None:
        with self._lock:
            self._access = {t: (g, 0.0) for t, (g, _) in self._access.items()}

    def refresh_count(self) -> int:
        return self.token_requests.count("refresh_token")

    def record_payment(self, tenant_id: str, invoice_id: str, amount: str,
                       reference: str = "bank transfer") -> dict[str, Any]:
        """A payment entered in Xero by the accountant (not through the API)."""
        with self._lock:
            return self._apply_payment(tenant_id, {
                "Invoice": {"InvoiceID": invoice_id}, "Account": {"Code": "090"},
                "Amount": amount, "Date": datetime.now(UTC).date().isoformat(),
                "Reference": reference})

    def invoices_numbered(self, tenant_id: str, number: str) -> list[dict[str, Any]]:
        return [i for i in self.invoices[tenant_id].values() if i["InvoiceNumber"] == number]

    def busiest_window(self, tenant_id: str, window_s: float | None = None) -> int:
        """The most calls admitted for a tenant within any window of `window_s` (default:
        the minute window), whoever made them."""
        span = self.minute_window_s if window_s is None else window_s
        with self._lock:
            times = sorted(self.call_times[tenant_id])
        most, first = 0, 0
        for last, at in enumerate(times):
            while times[first] <= at - span:
                first += 1
            most = max(most, last - first + 1)
        return most

    def webhook_body(self, tenant_id: str, invoice_id: str, event_type: str = "UPDATE") -> bytes:
        return json.dumps({
            "events": [{
                "resourceUrl": f"https://api.xero.com/api.xro/2.0/Invoices/{invoice_id}",
                "resourceId": invoice_id, "eventDateUtc": datetime.now(UTC).isoformat(),
                "eventType": event_type, "eventCategory": "INVOICE", "tenantId": tenant_id,
                "tenantType": "ORGANISATION"}],
            "firstEventSequence": 1, "lastEventSequence": 1,
            "entropy": secrets.token_urlsafe(12)}).encode()

    # -- HTTP dispatch ---------------------------------------------------------------------------

    def _dispatch(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        url = urlparse(handler.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            if url.path == "/identity/connect/authorize" and method == "GET":
                self._authorize(query)
            elif url.path == "/connect/token" and method == "POST":
                self._token(handler, raw)
            elif url.path == "/connect/revocation" and method == "POST":
                self._revoke(handler, raw)
            elif url.path.startswith("/connections"):
                self._connections(handler, method, url.path)
            elif url.path.startswith(API_PREFIX + "/"):
                self._api(handler, method, url.path[len(API_PREFIX):], query, raw)
            else:
                raise _Answer(404, {"Title": "Not Found", "Status": 404})
        except _Answer as answer:
            self._send(handler, answer.status, answer.body, answer.headers)
        except _Drop:
            with_socket = getattr(handler, "connection", None)
            handler.close_connection = True
            if isinstance(with_socket, socket.socket):
                with contextlib.suppress(OSError):
                    with_socket.shutdown(socket.SHUT_RDWR)

    # -- identity --------------------------------------------------------------------------------

    def _authorize(self, query: dict[str, str]) -> None:
        if query.get("client_id") != self.client_id or query.get("response_type") != "code":
            raise _Answer(400, {"error": "unauthorized_client"})
        redirect_uri = query.get("redirect_uri")
        if not redirect_uri:
            raise _Answer(400, {"error": "invalid_request"})
        challenge = query.get("code_challenge")
        if challenge is not None and query.get("code_challenge_method") != "S256":
            raise _Answer(400, {"error": "invalid_request",
                                "error_description": "code_challenge_method must be S256"})
        code = secrets.token_urlsafe(32)
        with self._lock:
            self.secrets_seen.add(code)
            self._codes[code] = {"redirect_uri": redirect_uri, "challenge": challenge,
                                 "scope": query.get("scope", ""), "at": time.time(),
                                 "used": False,
                                 "tenants": [dict(o) for o in self.organisations]}
        params = {"code": code, "scope": query.get("scope", "")}
        if "state" in query:
            params["state"] = query["state"]
        raise _Answer(302, {}, {"Location": f"{redirect_uri}?{urlencode(params)}"})

    def _token(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        form = {k: v[-1] for k, v in parse_qs(raw.decode()).items()}
        grant_type = form.get("grant_type", "")
        with self._lock:
            self.secrets_seen.update(v for k, v in form.items()
                                     if k in ("code", "code_verifier", "refresh_token") and v)
            self.token_requests.append(grant_type)
            if form.get("client_id", self._basic_client(handler)) != self.client_id:
                raise _Answer(400, {"error": "invalid_client"})
            if grant_type == "authorization_code":
                grant = self._redeem_code(form)
            elif grant_type == "refresh_token":
                grant = self._rotate(form.get("refresh_token", ""))
            else:
                raise _Answer(400, {"error": "unsupported_grant_type"})
            raise _Answer(200, self._issue(grant))

    @staticmethod
    def _basic_client(handler: BaseHTTPRequestHandler) -> str | None:
        auth = handler.headers.get("Authorization", "")
        if not auth.startswith("Basic "):
            return None
        return base64.b64decode(auth[6:]).decode().split(":", 1)[0]

    def _redeem_code(self, form: dict[str, str]) -> _Grant:
        entry = self._codes.get(form.get("code", ""))
        if entry is None or entry["used"] or time.time() - entry["at"] > CODE_TTL_S:
            raise _Answer(400, {"error": "invalid_grant"})
        entry["used"] = True  # single use, even when the exchange below fails
        if form.get("redirect_uri") != entry["redirect_uri"]:
            raise _Answer(400, {"error": "invalid_grant"})
        if entry["challenge"] is not None:
            verifier = form.get("code_verifier", "")
            if not re.fullmatch(r"[A-Za-z0-9\-._~]{43,128}", verifier):
                raise _Answer(400, {"error": "invalid_grant"})
            digest = hashlib.sha256(verifier.encode("ascii")).digest()
            expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            if not hmac.compare_digest(expected, entry["challenge"]):
                raise _Answer(400, {"error": "invalid_grant"})
        grant = _Grant(grant_id=str(uuid.uuid4()), client_id=self.client_id,
                       tenants=[{**t, "id": str(uuid.uuid4()), "authEventId": str(uuid.uuid4())}
                                for t in entry["tenants"]],
                       scope=entry["scope"])
        self._grants[grant.grant_id] = grant
        return grant

    def _rotate(self, token: str) -> _Grant:
        entry = self._refresh.get(token)
        now = time.time()
        if entry is None or self._grants[entry.grant_id].revoked:
            raise _Answer(400, {"error": "invalid_grant"})
        if entry.superseded_at is not None and now - entry.superseded_at > self.refresh_grace_s:
            raise _Answer(400, {"error": "invalid_grant"})
        if entry.superseded_at is None:
            entry.superseded_at = now
        return self._grants[entry.grant_id]

    def _issue(self, grant: _Grant) -> dict[str, Any]:
        access = "xat." + secrets.token_urlsafe(40)
        refresh = "xrt." + secrets.token_urlsafe(32)
        self._access[access] = (grant.grant_id, time.time() + self.access_token_ttl_s)
        self._refresh[refresh] = _Refresh(grant_id=grant.grant_id)
        self.secrets_seen.update((access, refresh))
        return {"access_token": access, "refresh_token": refresh, "token_type": "Bearer",
                "expires_in": int(self.access_token_ttl_s), "scope": grant.scope}

    def _revoke(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        form = {k: v[-1] for k, v in parse_qs(raw.decode()).items()}
        with self._lock:
            token = form.get("token", "")
            self.revoked_tokens.append(token)
            entry = self._refresh.get(token)
            if entry is not None:
                grant = self._grants[entry.grant_id]
                grant.revoked = True
                self._access = {t: v for t, v in self._access.items() if v[0] != grant.grant_id}
        raise _Answer(200, {})

    def _grant_of(self, handler: BaseHTTPRequestHandler) -> _Grant:
        auth = handler.headers.get("Authorization", "")
        with self._lock:
            found = self._access.get(auth.removeprefix("Bearer "))
            if found is None or found[1] < time.time() or self._grants[found[0]].revoked:
                raise _Answer(401, {"Type": None, "Title": "Unauthorized", "Status": 401,
                                    "Detail": "AuthenticationUnsuccessful"},
                              {"WWW-Authenticate": 'Bearer error="invalid_token"'})
            return self._grants[found[0]]

    def _connections(self, handler: BaseHTTPRequestHandler, method: str, path: str) -> None:
        grant = self._grant_of(handler)
        now = datetime.now(UTC).isoformat()
        if method == "GET" and path == "/connections":
            raise _Answer(200, [{"id": t["id"], "authEventId": t["authEventId"],
                                 "tenantId": t["tenantId"], "tenantType": "ORGANISATION",
                                 "tenantName": t["tenantName"], "createdDateUtc": now,
                                 "updatedDateUtc": now} for t in grant.tenants])
        if method == "DELETE":
            connection_id = path.rsplit("/", 1)[-1]
            with self._lock:
                grant.tenants = [t for t in grant.tenants if t["id"] != connection_id]
            raise _Answer(204, None)
        raise _Answer(404, {"Title": "Not Found"})

    # -- accounting API ------------------------------------------------------------------------------

    def _api(self, handler: BaseHTTPRequestHandler, method: str, path: str,
             query: dict[str, str], raw: bytes) -> None:
        grant = self._grant_of(handler)
        tenant = handler.headers.get("xero-tenant-id", "")
        if tenant not in {t["tenantId"] for t in grant.tenants}:
            raise _Answer(403, {"Type": None, "Title": "Forbidden", "Status": 403,
                                "Detail": "AuthorizationUnsuccessful"})
        if "application/json" not in handler.headers.get("Accept", ""):
            raise _Answer(406, {"Title": "Not Acceptable", "Detail": "send Accept: application/json"})
        self._admit(tenant)
        try:
            fault = self._next_fault(path)
            if fault is not None and fault.kind == "unavailable":
                raise _Answer(fault.status, {"Title": "Service Unavailable",
                                             "Detail": "Fault injected before execution"})
            key = handler.headers.get("Idempotency-Key") if method in ("PUT", "POST") else None
            status, body = self._execute_once(tenant, key, method, path, query, raw)
        finally:
            with self._lock:
                self._in_flight[tenant] -= 1
        # Executed and committed; the answer is lost or late on the way back.
        if fault is not None and fault.kind == "drop":
            raise _Drop
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.delay_s)
        raise _Answer(status, body, self._limit_headers(tenant))

    def _admit(self, tenant: str) -> None:
        now = time.time()
        with self._lock:
            calls = self._calls[tenant]
            while calls and calls[0] <= now - self.minute_window_s:
                calls.popleft()
            problem, retry_after = None, None
            if self._in_flight[tenant] >= self.concurrent_limit:
                problem = "concurrent"
            elif len(calls) >= self.minute_limit:
                problem = "minute"
                retry_after = max(1, math.ceil(calls[0] + self.minute_window_s - now))
            elif self._day_calls[tenant] >= self.day_limit:
                problem, retry_after = "day", 86_400
            if problem is not None:
                self.rate_limited.append((tenant, problem))
                self.rate_limited_at.append(now)
                headers = {"X-Rate-Limit-Problem": problem}
                if retry_after is not None:
                    headers["Retry-After"] = str(retry_after)
                raise _Answer(429, {"Title": "Too Many Requests", "Status": 429}, headers)
            calls.append(now)
            self._day_calls[tenant] += 1
            self._in_flight[tenant] += 1
            self.api_calls[tenant] += 1
            self.call_times[tenant].append(now)

    def _limit_headers(self, tenant: str) -> dict[str, str]:
        with self._lock:
            return {"X-MinLimit-Remaining": str(max(0, self.minute_limit - len(self._calls[tenant]))),
                    "X-DayLimit-Remaining": str(max(0, self.day_limit - self._day_calls[tenant])),
                    "X-AppMinLimit-Remaining": "9999"}

    def _next_fault(self, path: str) -> Fault | None:
        with self._lock:
            if self._faults and (self._faults[0].path_contains is None
                                 or self._faults[0].path_contains in path):
                fault = self._faults.popleft()
            else:
                fault = None
                roll = self._random.random()
                for kind, rate in self.fault_rates.items():
                    if roll < rate:
                        fault = Fault(kind, delay_s=self.slow_delay_s)
                        break
                    roll -= rate
            if fault is not None:
                self.faults_injected[fault.kind] += 1
            return fault

    def _execute_once(self, tenant: str, key: str | None, method: str, path: str,
                      query: dict[str, str], raw: bytes) -> tuple[int, Any]:
        if key is None:
            return self._execute(tenant, method, path, query, raw)
        if len(key) > 128:
            raise _Answer(400, {"Title": "Idempotency-Key longer than 128 characters"})
        fingerprint = hashlib.sha256(f"{method} {path}".encode() + raw).hexdigest()
        with self._lock:
            stored = self._idempotency.get((tenant, key))
            if stored is not None and self.idempotency_window_s is not None \
                    and time.time() - stored.at > self.idempotency_window_s:
                stored = None
            if stored is None:
                self._idempotency[(tenant, key)] = _Stored(fingerprint, None, None, time.time())
        if stored is not None:
            if stored.fingerprint != fingerprint:
                raise _Answer(400, {"Title": "Idempotency-Key reused with a different request",
                                    "Status": 400})
            if stored.status is None:
                raise _Answer(409, {"Title": "A request with this Idempotency-Key is in progress",
                                    "Status": 409})
            return stored.status, stored.body
        try:
            status, body = self._execute(tenant, method, path, query, raw)
        except _Answer as answer:
            if answer.status == 400:
                status, body = answer.status, answer.body
            else:
                with self._lock:
                    self._idempotency.pop((tenant, key), None)
                raise
        with self._lock:
            entry = self._idempotency[(tenant, key)]
            entry.status, entry.body = status, body
        return status, body

    def _execute(self, tenant: str, method: str, path: str, query: dict[str, str],
                 raw: bytes) -> tuple[int, Any]:
        parts = [p for p in path.split("/") if p]
        resource = parts[0] if parts else ""
        body = json.loads(raw) if raw else {}
        with self._lock:
            if resource == "Contacts":
                if method == "GET":
                    return self._list(tenant, "Contacts", self.contacts[tenant], parts, query)
                if method == "POST":  # POST creates or, given a ContactID, updates
                    return self._create_many(tenant, "Contacts", body,
                                             lambda t, item: self._save_contact(
                                                 t, item, parts[1] if len(parts) == 2 else None))
                return self._create_many(tenant, "Contacts", body, self._create_contact)
            if resource == "Invoices":
                if method == "GET":
                    return self._list(tenant, "Invoices", self.invoices[tenant], parts, query)
                if len(parts) == 2 and method == "POST":
                    return self._update_invoice(tenant, parts[1], body)
                return self._create_many(tenant, "Invoices", body, self._create_invoice)
            if resource == "CreditNotes":
                if method == "GET":
                    return self._list(tenant, "CreditNotes", self.credit_notes[tenant], parts,
                                      query)
                if len(parts) == 3 and parts[2] == "Allocations":
                    return self._allocate(tenant, parts[1], body)
                return self._create_many(tenant, "CreditNotes", body, self._create_credit_note)
            if resource == "Payments":
                if method == "GET":
                    return self._list(tenant, "Payments", self.payments[tenant], parts, query)
                return self._create_many(tenant, "Payments", body, self._apply_payment)
        raise _Answer(404, {"Title": "Not Found", "Status": 404})

    def _list(self, tenant: str, name: str, rows: dict[str, dict[str, Any]], parts: list[str],
              query: dict[str, str]) -> tuple[int, Any]:
        if len(parts) == 2:
            found = rows.get(parts[1])
            if found is None:
                raise _Answer(404, {"Title": "Not Found", "Status": 404})
            return 200, _envelope(name, [found])
        items = list(rows.values())
        for term in (query.get("where") or "").split(" AND ") if query.get("where") else []:
            match = _WHERE_TERM.match(term)
            if match is None:
                raise _Answer(400, {"ErrorNumber": 16, "Type": "QueryParseException",
                                    "Message": f"cannot parse where: {term}"})
            field_name, value = match.groups()
            items = [i for i in items if str(_lookup(i, field_name)) == value]
        if "InvoiceNumbers" in query:
            wanted = set(query["InvoiceNumbers"].split(","))
            items = [i for i in items if i.get("InvoiceNumber") in wanted]
        page = int(query.get("page", "1"))
        items = items[(page - 1) * 100: page * 100]
        return 200, _envelope(name, items)

    def _create_many(self, tenant: str, name: str, body: dict[str, Any], create: Any
                     ) -> tuple[int, Any]:
        items = body.get(name)
        if not isinstance(items, list) or not items:
            raise _Answer(400, _validation([body], f"{name} is required"))
        created, failed = [], []
        for item in items:
            try:
                created.append(create(tenant, item))
            except _Invalid as exc:
                failed.append({**item, "ValidationErrors": [{"Message": m} for m in exc.messages]})
        if failed:
            # Summarised errors (Xero's default): nothing of a failing batch is kept.
            raise _Answer(400, _validation(failed, None))
        return 200, _envelope(name, created)

    def _save_contact(self, tenant: str, item: dict[str, Any], path_id: str | None
                      ) -> dict[str, Any]:
        contact_id = path_id or item.get("ContactID")
        if not contact_id:
            return self._create_contact(tenant, item)
        contact = self.contacts[tenant].get(contact_id)
        if contact is None:
            raise _Answer(404, {"Title": "Not Found", "Status": 404})
        name = item.get("Name", contact["Name"])
        if not name or len(name) > 255:
            raise _Invalid(["The contact name must be specified and at most 255 characters."])
        if any(c["Name"] == name and cid != contact_id
               for cid, c in self.contacts[tenant].items()):
            raise _Invalid(["The contact name is already assigned to another contact."])
        contact.update({k: v for k, v in item.items() if k != "ContactID"})
        contact["UpdatedDateUTC"] = ms_date()
        self.contact_updates[tenant] += 1
        return contact

    def _create_contact(self, tenant: str, item: dict[str, Any]) -> dict[str, Any]:
        name = item.get("Name")
        errors = []
        if not name or len(name) > 255:
            errors.append("The contact name must be specified and at most 255 characters.")
        if len(item.get("ContactNumber") or "") > 50:
            errors.append("The ContactNumber must be 50 characters or less.")
        if any(c["Name"] == name for c in self.contacts[tenant].values()):
            errors.append("The contact name is already assigned to another contact.")
        if errors:
            raise _Invalid(errors)
        contact = {**item, "ContactID": str(uuid.uuid4()), "ContactStatus": "ACTIVE",
                   "UpdatedDateUTC": ms_date()}
        self.contacts[tenant][contact["ContactID"]] = contact
        return contact

    def _lines(self, item: dict[str, Any], errors: list[str]) -> tuple[list[dict[str, Any]], Decimal,
                                                                      Decimal]:
        lines, subtotal, tax_total = [], Decimal(0), Decimal(0)
        amount_types = item.get("LineAmountTypes", "Exclusive")
        for line in item.get("LineItems") or []:
            try:
                quantity = Decimal(str(line.get("Quantity", "1")))
                unit = Decimal(str(line.get("UnitAmount", "0")))
            except InvalidOperation:
                errors.append("Quantity and UnitAmount must be numbers.")
                continue
            if -unit.as_tuple().exponent > 4 or -quantity.as_tuple().exponent > 4:  # type: ignore[operator]
                errors.append("UnitAmount and Quantity allow at most 4 decimal places.")
            tax_type = line.get("TaxType", "OUTPUT2")
            if tax_type not in TAX_RATES:
                errors.append(f"The TaxType code '{tax_type}' does not exist or cannot be used.")
                continue
            if not line.get("AccountCode"):
                errors.append("An account code must be specified for each line item.")
            amount = _cents(quantity * unit)
            tax = Decimal(str(line["TaxAmount"])) if "TaxAmount" in line else _cents(
                amount * TAX_RATES[tax_type]) if amount_types == "Exclusive" else Decimal(0)
            lines.append({**line, "LineAmount": float(amount), "TaxAmount": float(tax),
                          "LineItemID": str(uuid.uuid4())})
            subtotal += amount
            tax_total += tax
        if not lines and not errors:
            errors.append("At least one line item is required.")
        return lines, subtotal, tax_total

    def _contact_of(self, tenant: str, item: dict[str, Any], errors: list[str]) -> dict[str, Any]:
        contact_id = (item.get("Contact") or {}).get("ContactID")
        contact = self.contacts[tenant].get(contact_id or "")
        if contact is None:
            errors.append("A Contact must be specified with this type of transaction.")
            return {}
        return {"ContactID": contact_id, "Name": contact["Name"]}

    def _create_invoice(self, tenant: str, item: dict[str, Any]) -> dict[str, Any]:
        errors: list[str] = []
        if item.get("Type") not in ("ACCREC", "ACCPAY"):
            errors.append("Invoice Type must be ACCREC or ACCPAY.")
        contact = self._contact_of(tenant, item, errors)
        lines, subtotal, tax = self._lines(item, errors)
        status = item.get("Status", "DRAFT")
        if status not in ("DRAFT", "SUBMITTED", "AUTHORISED"):
            errors.append(f"Invoice Status cannot be {status} on creation.")
        if errors:
            raise _Invalid(errors)
        total = subtotal + tax
        invoice = {**item, "InvoiceID": str(uuid.uuid4()), "Contact": contact, "LineItems": lines,
                   "InvoiceNumber": item.get("InvoiceNumber")
                   or f"INV-{len(self.invoices[tenant]) + 1:04d}",
                   "Status": status, "SubTotal": float(subtotal), "TotalTax": float(tax),
                   "Total": float(total), "AmountDue": float(total), "AmountPaid": 0.0,
                   "AmountCredited": 0.0, "Payments": [], "CreditNotes": [],
                   "UpdatedDateUTC": ms_date()}
        self.invoices[tenant][invoice["InvoiceID"]] = invoice
        self.invoice_times[tenant].append(time.monotonic())
        return invoice

    def _update_invoice(self, tenant: str, invoice_id: str, body: dict[str, Any]
                        ) -> tuple[int, Any]:
        invoice = self.invoices[tenant].get(invoice_id)
        if invoice is None:
            raise _Answer(404, {"Title": "Not Found", "Status": 404})
        wanted = ((body.get("Invoices") or [{}])[0]).get("Status")
        if wanted == "VOIDED":
            if invoice["Status"] == "VOIDED":
                return 200, _envelope("Invoices", [invoice])
            if invoice["Status"] != "AUTHORISED" or invoice["Payments"] or invoice["CreditNotes"]:
                raise _Answer(400, _validation([invoice], "Invoice with payments or allocations"
                                               " cannot be voided; reverse them first."
                                               if invoice["Status"] == "AUTHORISED" else
                                               f"A {invoice['Status']} invoice cannot be voided."))
            invoice["Status"] = "VOIDED"
            invoice["AmountDue"] = 0.0
            return 200, _envelope("Invoices", [invoice])
        raise _Answer(400, _validation([invoice], "Only Status VOIDED is supported by the fake"))

    def _create_credit_note(self, tenant: str, item: dict[str, Any]) -> dict[str, Any]:
        errors: list[str] = []
        if item.get("Type") != "ACCRECCREDIT":
            errors.append("Credit note Type must be ACCRECCREDIT.")
        contact = self._contact_of(tenant, item, errors)
        lines, subtotal, tax = self._lines(item, errors)
        if errors:
            raise _Invalid(errors)
        total = subtotal + tax
        note = {**item, "CreditNoteID": str(uuid.uuid4()), "Contact": contact,
                "LineItems": lines, "Status": item.get("Status", "DRAFT"),
                "SubTotal": float(subtotal), "TotalTax": float(tax), "Total": float(total),
                "RemainingCredit": float(total), "Allocations": [], "UpdatedDateUTC": ms_date()}
        self.credit_notes[tenant][note["CreditNoteID"]] = note
        return note

    def _allocate(self, tenant: str, credit_note_id: str, body: dict[str, Any]
                  ) -> tuple[int, Any]:
        note = self.credit_notes[tenant].get(credit_note_id)
        if note is None:
            raise _Answer(404, {"Title": "Not Found", "Status": 404})
        allocations = []
        for item in body.get("Allocations") or []:
            invoice = self.invoices[tenant].get((item.get("Invoice") or {}).get("InvoiceID", ""))
            amount = Decimal(str(item.get("Amount", "0")))
            if invoice is None or invoice["Status"] != "AUTHORISED":
                raise _Answer(400, _validation([item], "Invoice must be AUTHORISED to allocate."))
            if amount > Decimal(str(note["RemainingCredit"])) or \
                    amount > Decimal(str(invoice["AmountDue"])):
                raise _Answer(400, _validation([item], "Allocation exceeds the amount due."))
            note["RemainingCredit"] = float(Decimal(str(note["RemainingCredit"])) - amount)
            invoice["AmountCredited"] = float(Decimal(str(invoice["AmountCredited"])) + amount)
            self._reduce_due(invoice, amount)
            invoice["CreditNotes"].append({"CreditNoteID": credit_note_id, "Total": float(amount)})
            allocation = {**item, "AllocationID": str(uuid.uuid4())}
            note["Allocations"].append(allocation)
            allocations.append(allocation)
        return 200, _envelope("Allocations", allocations)

    def _apply_payment(self, tenant: str, item: dict[str, Any]) -> dict[str, Any]:
        invoice = self.invoices[tenant].get((item.get("Invoice") or {}).get("InvoiceID", ""))
        errors = []
        try:
            amount = Decimal(str(item.get("Amount")))
        except InvalidOperation:
            raise _Invalid(["Payment amount must be a number."]) from None
        if invoice is None:
            errors.append("Invoice could not be found.")
        elif invoice["Status"] != "AUTHORISED":
            errors.append("Payment can only be applied to an AUTHORISED invoice.")
        elif amount <= 0 or amount > Decimal(str(invoice["AmountDue"])):
            errors.append("Payment amount exceeds the amount outstanding on this document.")
        if -amount.as_tuple().exponent > 2:  # type: ignore[operator]
            errors.append("Payment amount allows at most 2 decimal places.")
        code = (item.get("Account") or {}).get("Code")
        if code not in BANK_ACCOUNT_CODES:
            errors.append("Account must be a bank account or enabled for payments.")
        if errors or invoice is None:
            raise _Invalid(errors)
        payment = {**item, "PaymentID": str(uuid.uuid4()), "Status": "AUTHORISED",
                   "PaymentType": "ACCRECPAYMENT", "Amount": float(amount),
                   "Invoice": {"InvoiceID": invoice["InvoiceID"],
                               "InvoiceNumber": invoice["InvoiceNumber"]},
                   "UpdatedDateUTC": ms_date()}
        self.payments[tenant][payment["PaymentID"]] = payment
        invoice["Payments"].append({"PaymentID": payment["PaymentID"], "Amount": float(amount),
                                    "Reference": item.get("Reference", ""),
                                    "Date": item.get("Date")})
        invoice["AmountPaid"] = float(Decimal(str(invoice["AmountPaid"])) + amount)
        self._reduce_due(invoice, amount)
        return payment

    @staticmethod
    def _reduce_due(invoice: dict[str, Any], amount: Decimal) -> None:
        due = Decimal(str(invoice["AmountDue"])) - amount
        invoice["AmountDue"] = float(due)
        if due == 0:
            invoice["Status"] = "PAID"
            invoice["FullyPaidOnDate"] = ms_date()

    # -- answers -----------------------------------------------------------------------------------

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: Any,
              headers: dict[str, str]) -> None:
        data = b"" if body is None or status in (204, 302) else json.dumps(body).encode()
        try:
            handler.send_response(status)
            if data:
                handler.send_header("Content-Type", "application/json; charset=utf-8")
            handler.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting: what was executed stays executed


class _Invalid(Exception):
    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


def _lookup(item: dict[str, Any], dotted: str) -> Any:
    value: Any = item
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _envelope(name: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Id": str(uuid.uuid4()), "Status": "OK", "ProviderName": "billing-ledger",
            "DateTimeUTC": ms_date(), name: items}


def _validation(elements: list[dict[str, Any]], message: str | None) -> dict[str, Any]:
    if message is not None:
        elements = [{**e, "ValidationErrors": [{"Message": message}]} for e in elements]
    return {"ErrorNumber": 10, "Type": "ValidationException",
            "Message": "A validation exception occurred", "Elements": elements}


def main() -> None:
    """Serve the fake on a port for `make run` (see docs/sync.md)."""
    import argparse

    parser = argparse.ArgumentParser(description="A local fake of Xero for development.")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--organisations", type=int, default=1)
    args = parser.parse_args()
    fake = FakeXero(organisations=[
        {"tenantId": str(uuid.uuid4()), "tenantName": f"Demo Company {n + 1}"}
        for n in range(args.organisations)]).start(args.port)
    print(f"fake Xero on {fake.url} (client id {fake.client_id}, webhook key {WEBHOOK_KEY})",
          flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
