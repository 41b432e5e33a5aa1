"""A local fake of HubSpot's CRM objects API, as far as the sync service uses it: products
(read), companies, invoices and line items (create, read, update, search), associations.

Faithful where our code depends on it (shared/reference/external-apis.md §2.3-2.4):
`GET /crm/v3/objects/products?limit=&after=&properties=a,b` with `Authorization: Bearer`
(401 otherwise), results `{id, properties, createdAt, updatedAt, archived}`, paging by
`paging.next.after` until `paging` is absent, at most 100 per page; the burst limit (100 per
rolling 10 s by default) answered with 429 and HubSpot's body (`policyName`) and rate-limit
headers; every 429 is recorded in `rate_limited`. Search is limited to `search_per_s`
(HubSpot: 4 per second). Create, update and batch create follow §2.3 (`properties`,
`associations` with `associationCategory`/`associationTypeId`); `drop_next` executes a write
and closes the connection unanswered. No idempotency keys exist in HubSpot.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.fakes.http_server import FakeAPI

ACCESS_TOKEN = "pat-eu1-fake-hubspot-private-app-token"
PAGE_MAX = 100


@dataclass
class FakeHubSpot(FakeAPI):
    access_token: str = ACCESS_TOKEN
    burst_limit: int = 100
    burst_window_s: float = 10.0
    search_per_s: int = 4
    products: dict[str, dict[str, Any]] = field(default_factory=dict)
    objects: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    associations: set[tuple[str, str, str, str]] = field(default_factory=set)
    rate_limited: list[str] = field(default_factory=list)
    calls: int = 0
    drops: int = 0
    _times: deque[float] = field(default_factory=deque)
    _search_times: deque[float] = field(default_factory=deque)
    _next_id: int = 20_000_000
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, port: int = 0) -> FakeHubSpot:
        self.serve(self._route, ("GET", "POST", "PATCH", "PUT"), port)
        return self

    def _route(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        if method == "GET":
            self._get(handler)
        else:
            self._write(handler, method)

    def add_product(self, **properties: str) -> str:
        product_id = str(10_000_000 + len(self.products))
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        self.products[product_id] = {"id": product_id, "properties": dict(properties),
                                     "createdAt": now, "updatedAt": now, "archived": False}
        return product_id

    def drop_next(self, times: int = 1) -> None:
        self.drops += times

    def of_type(self, object_type: str) -> list[dict[str, Any]]:
        return list(self.objects.get(object_type, {}).values())

    def associated(self, from_type: str, from_id: str, to_type: str) -> list[str]:
        return sorted(t for f, fi, tt, t in self.associations
                      if (f, fi, tt) == (from_type, from_id, to_type))

    def _admitted(self, handler: BaseHTTPRequestHandler) -> bool:
        if handler.headers.get("Authorization") != f"Bearer {self.access_token}":
            self._send(handler, 401, {"status": "error", "message": "Authentication credentials"
                                      " not found.", "category": "INVALID_AUTHENTICATION",
                                      "correlationId": str(uuid.uuid4())})
            return False
        return self._within_limits(handler)

    def _within_limits(self, handler: BaseHTTPRequestHandler, search: bool = False) -> bool:
        now = time.time()
        with self._lock:
            if search:
                while self._search_times and self._search_times[0] <= now - 1.0:
                    self._search_times.popleft()
                if len(self._search_times) >= self.search_per_s:
                    self.rate_limited.append(handler.path)
                    self._send(handler, 429, {"status": "error", "errorType": "RATE_LIMIT",
                                              "message": "You have reached your secondly limit.",
                                              "policyName": "SECONDLY"})
                    return False
                self._search_times.append(now)
            while self._times and self._times[0] <= now - self.burst_window_s:
                self._times.popleft()
            if len(self._times) >= self.burst_limit:
                self.rate_limited.append(handler.path)
                self._send(handler, 429, {
                    "status": "error", "errorType": "RATE_LIMIT",
                    "message": "You have reached your ten_secondly_rolling limit.",
                    "correlationId": str(uuid.uuid4()), "policyName": "TEN_SECONDLY_ROLLING"},
                    {"X-HubSpot-RateLimit-Max": str(self.burst_limit),
                     "X-HubSpot-RateLimit-Remaining": "0",
                     "X-HubSpot-RateLimit-Interval-Milliseconds":
                         str(int(self.burst_window_s * 1000))})
                return False
            self._times.append(now)
            self.calls += 1
        return True

    def _write(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = json.loads(handler.rfile.read(length) or b"{}") if length else {}
        parts = [p for p in urlparse(handler.path).path.split("/") if p]
        if not self._admitted(handler):
            return
        if parts[:3] == ["crm", "v3", "objects"] and parts[-1:] == ["search"]:
            self._search(handler, parts[3], body)
            return
        with self._lock:
            try:
                status, answer = self._apply(method, parts, body)
            except KeyError:
                status, answer = 404, {"status": "error", "message": "Object not found",
                                       "category": "OBJECT_NOT_FOUND"}
            drop = status < 300 and self.drops > 0
            if drop:
                self.drops -= 1
        if drop:
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(handler, status, answer)

    def _apply(self, method: str, parts: list[str], body: dict[str, Any]
               ) -> tuple[int, dict[str, Any]]:
        if parts[:3] == ["crm", "v3", "objects"]:
            object_type = parts[3]
            if method == "POST" and len(parts) == 4:
                return 201, self._create(object_type, body)
            if method == "POST" and parts[4:] == ["batch", "create"]:
                results = [self._create(object_type, item) for item in body.get("inputs", [])]
                return 201, {"status": "COMPLETE", "results": results}
            if method == "PATCH" and len(parts) == 5:
                found = self.objects[object_type][parts[4]]
                found["properties"].update(body.get("properties") or {})
                return 200, found
        if parts[:3] == ["crm", "v4", "objects"] and method == "PUT" and len(parts) == 9:
            _, _, _, from_type, from_id, _, _, to_type, to_id = parts
            self.objects[from_type][from_id]
            self.objects[to_type][to_id]
            self.associations.add((from_type, from_id, to_type, to_id))
            self.associations.add((to_type, to_id, from_type, from_id))
            return 200, {"status": "COMPLETE"}
        return 404, {"status": "error", "message": "Not found", "category": "OBJECT_NOT_FOUND"}

    def _create(self, object_type: str, item: dict[str, Any]) -> dict[str, Any]:
        self._next_id += 1
        object_id = str(self._next_id)
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        created = {"id": object_id, "properties": dict(item.get("properties") or {}),
                   "createdAt": now, "updatedAt": now, "archived": False}
        self.objects.setdefault(object_type, {})[object_id] = created
        for association in item.get("associations") or []:
            to_id = str((association.get("to") or {}).get("id"))
            to_type = _ASSOCIATION_TARGETS.get(
                int((association.get("types") or [{}])[0].get("associationTypeId", 0)), "")
            self.associations.add((object_type, object_id, to_type, to_id))
            self.associations.add((to_type, to_id, object_type, object_id))
        return created

    def _search(self, handler: BaseHTTPRequestHandler, object_type: str, body: dict[str, Any]
                ) -> None:
        if not self._within_limits(handler, search=True):
            return
        filters = [f for group in body.get("filterGroups") or []
                   for f in group.get("filters") or []]
        with self._lock:
            rows = [o for o in self.objects.get(object_type, {}).values()
                    if all(f.get("operator") == "EQ"
                           and str(o["properties"].get(f["propertyName"])) == str(f["value"])
                           for f in filters)]
        self._send(handler, 200, {"total": len(rows), "results": rows[:100]})

    def _get(self, handler: BaseHTTPRequestHandler) -> None:
        if not self._admitted(handler):
            return
        parts = [p for p in urlparse(handler.path).path.split("/") if p]
        if parts[:3] == ["crm", "v4", "objects"] and len(parts) == 7:
            ids = self.associated(parts[3], parts[4], parts[6])
            self._send(handler, 200, {"results": [
                {"toObjectId": int(i), "associationTypes": []} for i in ids]})
            return
        if parts[:3] == ["crm", "v3", "objects"] and len(parts) == 5:
            found = self.objects.get(parts[3], {}).get(parts[4])
            if found is None:
                self._send(handler, 404, {"status": "error", "category": "OBJECT_NOT_FOUND"})
            else:
                self._send(handler, 200, found)
            return
        self._list_products(handler)

    def _list_products(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            remaining = self.burst_limit - len(self._times)
        url = urlparse(handler.path)
        if url.path != "/crm/v3/objects/products":
            self._send(handler, 404, {"status": "error", "message": "Not found",
                                      "category": "OBJECT_NOT_FOUND"})
            return
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        limit = min(int(query.get("limit", "10")), PAGE_MAX)
        wanted = [p for p in query.get("properties", "").split(",") if p]
        rows = [p for p in sorted(self.products.values(), key=lambda p: int(p["id"]))
                if not p["archived"]]
        start = int(query.get("after", "0"))
        page = rows[start:start + limit]
        results = [{**p, "properties": {k: v for k, v in p["properties"].items()
                                        if not wanted or k in wanted}} for p in page]
        body: dict[str, Any] = {"results": results}
        if start + limit < len(rows):
            after = str(start + limit)
            body["paging"] = {"next": {"after": after,
                                       "link": f"{self.url}{url.path}?after={after}"}}
        self._send(handler, 200, body, {"X-HubSpot-RateLimit-Remaining": str(remaining)})

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any],
              headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json;charset=utf-8")
            handler.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass


# associationTypeId -> the object type it points to (external-apis.md §2.3).
_ASSOCIATION_TARGETS = {179: "companies", 177: "contacts", 409: "line_items", 175: "deals",
                        280: "contacts", 20: "deals"}


def main() -> None:
    """Serve the fake with a small demo catalogue for local use (see docs/sync.md)."""
    import argparse

    parser = argparse.ArgumentParser(description="A local fake of HubSpot's products API.")
    parser.add_argument("--port", type=int, default=8091)
    args = parser.parse_args()
    fake = FakeHubSpot()
    for key, sku, gbp, eur in (("sms", "SMS-UK-001", "0.0395", "0.0450"),
                               ("rcs_basic", "RCS-B-001", "0.0300", "0.0350"),
                               ("vmn", "VMN-UK-001", "10.00", "12.00")):
        for tier in ("starter", "enterprise"):
            fake.add_product(billing_product_key=key, hs_sku=sku, billing_tier=tier,
                             hs_price_gbp=gbp, hs_price_eur=eur, name=key.upper())
    fake.start(args.port)
    print(f"fake HubSpot on {fake.url} (token {fake.access_token})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
