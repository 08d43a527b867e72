"""The metrics listener's HTTP side: ``/metrics``, ``/healthz`` and ``/ready``.

Served by one worker on ``metrics.listen`` (host namespace), which also serves tenants; any
local user can connect. Requests are parsed by httptools and bounded: at most
:data:`MAX_REQUEST_BYTES` per request, one answer at a time per connection (requests pipelined
behind one being answered end the connection after it) and none read while the client has not
taken the last one, and a whole request within :data:`IDLE_TIMEOUT` seconds
of the connection or of the last answer (a byte now and then does not keep a connection). At
most :data:`MAX_CONNECTIONS` are open: a new one closes the oldest that is not being answered
(so a scraper always gets in: whoever holds the others cannot keep them), or is answered 503
when all are. Idle connections would otherwise hold that worker's descriptors, which its
tenants need.
``/healthz`` answers 200 as long as the worker's loop runs (the process is alive); ``/metrics``
and ``/ready`` ask the binder (through the worker's ``answers``), with a time limit.
"""

from __future__ import annotations

import asyncio
import logging

import httptools

log = logging.getLogger("nsproxy.metrics")

MAX_REQUEST_BYTES = 8192  # a scrape request is a few hundred bytes
MAX_CONNECTIONS = 64  # open at once (Prometheus keeps one per scraper)
IDLE_TIMEOUT = 30.0  # seconds; a scrape every 15 to 60 s reconnects at worst
REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
           431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}  # fmt: skip
PATHS = b"/metrics, /healthz and /ready"


class MetricsProtocol(asyncio.Protocol):
    """One connection to the metrics listener. ``answers``: path -> coroutine function
    returning (status, body bytes); ``/healthz`` is answered here."""

    alive: dict = {}  # this process's connections, oldest first (a dict keeps the order)

    def __init__(self, answers: dict):
        self.answers = answers
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.received = 0
        self.busy = False
        self.full = False  # the client has not taken what was written: nothing more is read
        self.last = False  # requests came pipelined behind the one being answered: close after
        self.idle = None  # the timer that closes the connection

    def connection_made(self, transport):
        self.transport = transport
        connections = MetricsProtocol.alive
        if len(connections) >= MAX_CONNECTIONS:
            oldest = next((c for c in connections if not c.busy), None)
            if oldest is None:
                self._send(503, b"too many connections to the metrics listener\n", close=True)
                return
            oldest.close()
        connections[self] = None
        self._rearm()

    def connection_lost(self, exc):
        MetricsProtocol.alive.pop(self, None)
        if self.idle is not None:
            self.idle.cancel()

    def close(self):
        MetricsProtocol.alive.pop(self, None)
        self.transport.close()

    def _rearm(self):
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self._idle)

    def _idle(self):
        if self.busy:  # an answer under way has its own time limit
            self._rearm()
        else:
            self.close()

    def pause_writing(self):
        self.full = True
        self.transport.pause_reading()

    def resume_writing(self):
        self.full = False
        if not self.busy and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data):
        self.received += len(data)
        if self.received > MAX_REQUEST_BYTES and not self.busy:
            self._send(431, b"request too large\n", close=True)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(400, b"bad request\n", close=True)

    def on_url(self, url):
        self.url += url[:1024]

    def on_message_complete(self):
        path = self.url.split(b"?", 1)[0]
        self.url = b""
        self.received = 0
        if self.busy or self.transport.is_closing():
            # Requests pipelined behind one being answered (one read can hold many): no
            # scraper pipelines, and each answer costs a round trip to every worker. The one
            # under way is the last: it closes the connection.
            self.last = True
            return
        close = not self.parser.should_keep_alive()
        head_only = self.parser.get_method() == b"HEAD"
        if self.parser.get_method() not in (b"GET", b"HEAD"):
            self._send(405, b"only GET and HEAD are served here\n", close=close)
        elif path == b"/healthz":
            self._send(200, b"ok\n", close=close, head_only=head_only)
        elif path in self.answers:
            self.busy = True
            self.transport.pause_reading()
            answer = self.answers[path]
            asyncio.get_running_loop().create_task(self._answer(answer, close, head_only))
        else:
            self._send(404, b"only " + PATHS + b" are served here\n", close=close)

    async def _answer(self, answer, close: bool, head_only: bool):
        try:
            status, body = await answer()
        except Exception:
            log.exception("metrics listener: answer failed")
            status, body, close = 503, b"not available right now\n", True
        finally:
            self.busy = False
        if not self.transport.is_closing():
            self._send(status, body, close=close or self.last, head_only=head_only)
            if not close and not self.full:
                self.transport.resume_reading()

    def _send(self, status, body, close, head_only=False):
        if self.transport.is_closing():
            return
        self.transport.write(
            b"HTTP/1.1 %d %b\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            b"Content-Length: %d\r\n%b\r\n%b"
            % (
                status,
                REASONS.get(status, b"Error"),
                len(body),
                b"Connection: close\r\n" if close else b"",
                b"" if head_only else body,
            )
        )
        if close:
            self.transport.close()
        else:
            self._rearm()  # the next request is due within IDLE_TIMEOUT
