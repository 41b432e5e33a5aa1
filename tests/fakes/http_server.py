"""The HTTP server the fakes share: the standard library's threading server, with a listen
backlog like a real API's front end, and the lifecycle every fake has (start on a port,
stop, a context manager, its URL).

The backlog: the standard library's default is 5. When a client opened hundreds of
connections at once (two sync processes starting on 200 organisations), the kernel dropped
the connection attempts beyond it, and each was retried a second or three later: seconds of
delay that the real Xero does not add and that the benchmark counted against the service."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

Dispatch = Callable[[BaseHTTPRequestHandler, str], None]


class FakeHTTPServer(ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True


class FakeAPI:
    """A fake provider's server side: `serve` starts it; the subclass answers each request
    in `dispatch(handler, method)` (on the server's threads)."""

    _server: FakeHTTPServer | None = None

    def serve(self, dispatch: Dispatch, methods: Iterable[str], port: int = 0,
              protocol_version: str = "HTTP/1.0") -> None:
        """Listen on 127.0.0.1:`port` (0: any free one) and answer `methods` with `dispatch`;
        HTTP/1.1 keeps connections open, as a real provider's front end does."""
        def answer(method: str) -> Callable[[BaseHTTPRequestHandler], None]:
            return lambda handler: dispatch(handler, method)

        def quiet(*_: Any) -> None:
            pass

        handler = type("Handler", (BaseHTTPRequestHandler,), {
            "protocol_version": protocol_version, "log_message": quiet,
            **{f"do_{method}": answer(method) for method in methods}})
        self._server = FakeHTTPServer(("127.0.0.1", port), handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"
