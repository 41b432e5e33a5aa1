"""A local fake of HubSpot's CRM objects API, as far as the sync service reads it: products.

Faithful where our code depends on it (shared/reference/external-apis.md §2.3-2.4):
`GET /crm/v3/objects/products?limit=&after=&properties=a,b` with `Authorization: Bearer`
(401 otherwise), results `{id, properties, createdAt, updatedAt, archived}`, paging by
`paging.next.after` until `paging` is absent, at most 100 per page; the burst limit (100 per
rolling 10 s by default) answered with 429 and HubSpot's body (`policyName`) and rate-limit
headers; every 429 is recorded in `rate_limited`.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

ACCESS_TOKEN = "pat-eu1-fake-hubspot-private-app-token"
PAGE_MAX = 100


@dataclass
class FakeHubSpot:
    access_token: str = ACCESS_TOKEN
    burst_limit: int = 100
    burst_window_s: float = 10.0
    products: dict[str, dict[str, Any]] = field(default_factory=dict)
    rate_limited: list[str] = field(default_factory=list)
    calls: int = 0
    _times: deque[float] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    def start(self, port: int = 0) -> FakeHubSpot:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake._get(self)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeHubSpot:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add_product(self, **properties: str) -> str:
        product_id = str(10_000_000 + len(self.products))
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        self.products[product_id] = {"id": product_id, "properties": dict(properties),
                                     "createdAt": now, "updatedAt": now, "archived": False}
        return product_id

    def _get(self, handler: BaseHTTPRequestHandler) -> None:
        if handler.headers.get("Authorization") != f"Bearer {self.access_token}":
            self._send(handler, 401, {"status": "error", "message": "Authentication credentials"
                                      " not found.", "category": "INVALID_AUTHENTICATION",
                                      "correlationId": str(uuid.uuid4())})
            return
        now = time.time()
        with self._lock:
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
                return
            self._times.append(now)
            self.calls += 1
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
