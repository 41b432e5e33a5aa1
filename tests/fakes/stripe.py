"""A local fake of Stripe's HTTP API (Checkout Sessions) and Stripe's webhook signing.

Faithful where our code depends on Stripe's behaviour (docs.stripe.com/api/idempotent_requests,
/api/errors, /webhooks):

- `POST /v1/checkout/sessions`, form-encoded with bracketed keys, `Authorization: Bearer
  <secret key>` checked (401 otherwise).
- `Idempotency-Key`: once a request has started executing, its status and body are stored and
  replayed for the same key and the same parameters (with `Idempotent-Replayed: true`); the
  same key with other parameters is a 400 `idempotency_error`; the same key while the first
  request still executes is a 409 `idempotency_key_in_use`. Results are stored even when the
  client has given up waiting (a timeout), and for 500s raised during execution.
- Programmable faults, consumed in order: a 5xx before execution (not stored, retry-safe), a
  500 during execution (stored, `Stripe-Should-Retry: false`), a 429 with `Retry-After`, a
  slow response (the session is created, the answer comes late).
- `GET /v1/checkout/sessions/{id}`.
- `Stripe-Version`: recorded for every request (`versions`; None where the header is
  missing, when Stripe would use the account's default version).

Webhook payloads are signed with `sign_payload`, Stripe's documented algorithm (as in
stripe-python's tests), so that the service's verifier is checked against an independent
implementation.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl

from tests.fakes.http_server import FakeAPI

SECRET_KEY = "sk_test_fake_stripe_secret_key_for_tests"


def sign_payload(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A `Stripe-Signature` header value for `payload`."""
    ts = int(time.time()) if timestamp is None else timestamp
    signature = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={ts},v1={signature}"


def signature_for(payload: bytes, secret: str, timestamp: int) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()


@dataclass
class Fault:
    kind: str  # "unavailable" | "stored_500" | "rate_limited" | "slow"
    status: int = 503
    retry_after_s: int = 1
    delay_s: float = 0.0


@dataclass
class _Stored:
    params: list[tuple[str, str]]
    status: int | None = None  # None while executing
    body: dict[str, Any] | None = None


@dataclass
class FakeStripe(FakeAPI):
    secret_key: str = SECRET_KEY
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    # GET /v1/checkout/sessions/{id}/line_items in Stripe; kept here for assertions.
    line_items: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # Every POST as received: (idempotency key, status answered, replayed?)
    requests: list[tuple[str | None, int, bool]] = field(default_factory=list)
    # The Stripe-Version header of every request, GET and POST, in order of arrival.
    versions: list[str | None] = field(default_factory=list)
    _faults: deque[Fault] = field(default_factory=deque)
    _idempotency: dict[str, _Stored] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeStripe:
        self.serve(self._route, ("POST", "GET"))
        return self

    def _route(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        if method == "POST":
            self._handle_post(handler)
        else:
            self._handle_get(handler)

    # -- programming faults --------------------------------------------------------------------

    def fail_next(self, times: int = 1, status: int = 503) -> None:
        """Answer `status` before executing (not stored): a retry with the key succeeds."""
        for _ in range(times):
            self._faults.append(Fault("unavailable", status=status))

    def fail_next_during_execution(self) -> None:
        """A 500 raised while executing: Stripe stores and replays it for that key."""
        self._faults.append(Fault("stored_500", status=500))

    def rate_limit_next(self, times: int = 1, retry_after_s: int = 1) -> None:
        for _ in range(times):
            self._faults.append(Fault("rate_limited", status=429, retry_after_s=retry_after_s))

    def slow_next(self, delay_s: float) -> None:
        """Create the session, but answer only after `delay_s` (the client may time out)."""
        self._faults.append(Fault("slow", delay_s=delay_s))

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self.requests.clear()
            self.versions.clear()

    # -- test helpers --------------------------------------------------------------------------

    def paid_session(self, session_id: str, payment_intent: str | None = None, **changes: Any
                     ) -> dict[str, Any]:
        """The session as Stripe shows it once the customer paid."""
        session = dict(self.sessions[session_id])
        session.update(
            status="complete",
            payment_status="paid",
            payment_intent=payment_intent or f"pi_{secrets.token_hex(12)}",
        )
        session.update(changes)
        return session

    # -- HTTP ----------------------------------------------------------------------------------

    def _handle_get(self, handler: BaseHTTPRequestHandler) -> None:
        self._record_version(handler)
        if not self._authorized(handler):
            return
        prefix = "/v1/checkout/sessions/"
        session_id = handler.path.removeprefix(prefix)
        if not handler.path.startswith(prefix) or session_id not in self.sessions:
            self._send(handler, 404, _error("invalid_request_error", "resource_missing",
                                            "No such checkout.session"))
            return
        self._send(handler, 200, self.sessions[session_id])

    def _handle_post(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length)
        self._record_version(handler)
        if not self._authorized(handler):
            return
        if handler.path != "/v1/checkout/sessions":
            self._send(handler, 404, _error("invalid_request_error", "resource_missing",
                                            f"Unrecognized request URL (POST: {handler.path})"))
            return
        params = parse_qsl(raw.decode(), keep_blank_values=True)
        key = handler.headers.get("Idempotency-Key")
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
        if fault is not None and fault.kind in ("unavailable", "rate_limited"):
            # Before execution: nothing is stored, so a retry with the same key is new.
            headers = {"Retry-After": str(fault.retry_after_s)} if fault.kind == "rate_limited" \
                else {"Stripe-Should-Retry": "true"}
            kind = "rate_limit_error" if fault.kind == "rate_limited" else "api_error"
            self._answer(handler, key, fault.status,
                         _error(kind, None, "Fault injected before execution"), headers)
            return
        if key is not None:
            with self._lock:
                stored = self._idempotency.get(key)
                if stored is None:
                    self._idempotency[key] = _Stored(params=params)
            if stored is not None:
                self._replay(handler, key, stored, params)
                return
        if fault is not None and fault.kind == "stored_500":
            body = _error("api_error", None, "An unknown error occurred")
            self._store(key, 500, body)
            self._answer(handler, key, 500, body, {"Stripe-Should-Retry": "false"})
            return
        status, body = self._create_session(params)
        self._store(key, status, body)
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.delay_s)
        self._answer(handler, key, status, body, {})

    def _replay(self, handler: BaseHTTPRequestHandler, key: str, stored: _Stored,
                params: list[tuple[str, str]]) -> None:
        if sorted(stored.params) != sorted(params):
            self._answer(handler, key, 400, _error(
                "idempotency_error", None,
                "Keys for idempotent requests can only be used with the same parameters "
                "they were first used with."), {})
            return
        if stored.status is None:
            self._answer(handler, key, 409, _error(
                "idempotency_error", "idempotency_key_in_use",
                "There is currently another in-progress request using this Idempotent Key"),
                {})
            return
        assert stored.body is not None
        headers = {"Idempotent-Replayed": "true"}
        if stored.status >= 500:
            headers["Stripe-Should-Retry"] = "false"
        self._answer(handler, key, stored.status, stored.body, headers, replayed=True)

    def _store(self, key: str | None, status: int, body: dict[str, Any]) -> None:
        if key is None:
            return
        with self._lock:
            stored = self._idempotency[key]
            stored.status, stored.body = status, body

    def _create_session(self, params: list[tuple[str, str]]) -> tuple[int, dict[str, Any]]:
        form = dict(params)
        if form.get("mode") != "payment":
            return 400, _error("invalid_request_error", "parameter_missing",
                               "Missing required param: mode.")
        lines: list[dict[str, Any]] = []
        index = 0
        while f"line_items[{index}][quantity]" in form:
            prefix = f"line_items[{index}]"
            lines.append({
                "quantity": int(form[f"{prefix}[quantity]"]),
                "currency": form[f"{prefix}[price_data][currency]"],
                "unit_amount": int(form[f"{prefix}[price_data][unit_amount]"]),
                "name": form[f"{prefix}[price_data][product_data][name]"],
            })
            index += 1
        if not lines:
            return 400, _error("invalid_request_error", "parameter_missing",
                               "Missing required param: line_items.")
        currencies = {line["currency"] for line in lines}
        if len(currencies) != 1:
            return 400, _error("invalid_request_error", "parameter_invalid",
                               "All line items must use the same currency.")
        session_id = f"cs_test_{secrets.token_hex(16)}"
        total = sum(line["quantity"] * line["unit_amount"] for line in lines)
        metadata = {k[len("metadata["):-1]: v for k, v in params if k.startswith("metadata[")}
        now = int(time.time())
        session = {
            "id": session_id,
            "object": "checkout.session",
            "amount_subtotal": total,
            "amount_total": total,
            "currency": currencies.pop(),
            "client_reference_id": form.get("client_reference_id"),
            "metadata": metadata,
            "mode": "payment",
            "payment_status": "unpaid",
            "status": "open",
            "payment_intent": None,
            "success_url": form.get("success_url"),
            "cancel_url": form.get("cancel_url"),
            "url": f"https://checkout.stripe.com/c/pay/{session_id}",
            "created": now,
            "expires_at": now + 86_400,
            "livemode": False,
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        }
        with self._lock:
            self.sessions[session_id] = session
            self.line_items[session_id] = lines
        return 200, session

    def _record_version(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.versions.append(handler.headers.get("Stripe-Version"))

    def _authorized(self, handler: BaseHTTPRequestHandler) -> bool:
        if handler.headers.get("Authorization") == f"Bearer {self.secret_key}":
            return True
        self._send(handler, 401, _error("invalid_request_error", None,
                                        "Invalid API Key provided"))
        return False

    def _answer(self, handler: BaseHTTPRequestHandler, key: str | None, status: int,
                body: dict[str, Any], headers: dict[str, str], replayed: bool = False) -> None:
        with self._lock:
            self.requests.append((key, status, replayed))
        self._send(handler, status, body, headers)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any],
              headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.send_header("Request-Id", f"req_{secrets.token_hex(8)}")
            for name, value in (headers or {}).items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (a timeout): the result is stored all the same


def _error(kind: str, code: str | None, message: str) -> dict[str, Any]:
    error: dict[str, Any] = {"type": kind, "message": message}
    if code:
        error["code"] = code
    return {"error": error}


def event(event_type: str, obj: dict[str, Any], *, event_id: str | None = None,
          created: int | None = None) -> dict[str, Any]:
    """A Stripe event envelope (docs.stripe.com/api/events/object)."""
    return {
        "id": event_id or f"evt_{secrets.token_hex(12)}",
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()) if created is None else created,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }
