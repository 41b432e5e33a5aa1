"""The HTTP server the fakes share: the standard library's threading server, with a listen
backlog like a real API's front end. Its default backlog is 5: when a client opened
hundreds of connections at once (two sync processes starting on 200 organisations), the
kernel dropped the connection attempts beyond it, and each was retried a second or three
later: seconds of delay that the real Xero does not add and that the benchmark counted
against the service."""

from __future__ import annotations

from http.server import ThreadingHTTPServer


class FakeHTTPServer(ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True
