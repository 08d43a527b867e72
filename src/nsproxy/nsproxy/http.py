"""HTTP/1.1 reverse proxy: one asyncio Protocol per client connection, llhttp via httptools.

The request head is rebuilt once per request (hop-by-hop headers dropped, client copies of the
identity headers replaced) and bodies are streamed in both directions, re-framed as chunked where
the length is unknown. Every framing error of llhttp (both Content-Length and Transfer-Encoding,
bad chunk sizes, invalid tokens...) ends the connection with a 4xx, so nothing can be smuggled
past the parser. Timeouts are checked by the daemon's one-second sweep (``check_timeout``), not
by a timer per request.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import httptools

from nsproxy.upstream import UpstreamError

log = logging.getLogger("nsproxy.http")

# Connection states (timeouts differ per state).
HEAD = 1  # reading a request head (or waiting for the first one): header_read timeout
BUSY = 2  # request forwarded, response pending or streaming: read timeout
IDLE = 3  # keep-alive, between requests: idle timeout
TUNNEL = 4  # upgraded (WebSocket): idle timeout
CLOSED = 5

# Reasons for pausing reading from the client (a bit each).
PAUSE_UPSTREAM_FULL = 1
PAUSE_PIPELINE = 2
PAUSE_CONNECTING = 4

HIGH_WATER = 256 * 1024

_flatten = itertools.chain.from_iterable

REASONS = {
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    417: b"Expectation Failed",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}

# Request headers handled by the proxy rather than copied: value is a small code.
_H_HOST, _H_CL, _H_TE, _H_CONN, _H_DROP, _H_EXPECT, _H_UPGRADE = range(7)
REQUEST_SPECIAL = {
    b"host": _H_HOST,
    b"content-length": _H_CL,
    b"transfer-encoding": _H_TE,
    b"connection": _H_CONN,
    b"expect": _H_EXPECT,
    b"upgrade": _H_UPGRADE,
    b"keep-alive": _H_DROP,
    b"proxy-connection": _H_DROP,
    b"te": _H_DROP,
    b"trailer": _H_DROP,
    b"x-forwarded-for": _H_DROP,
    b"x-forwarded-proto": _H_DROP,
    b"x-forwarded-host": _H_DROP,
    b"x-nsproxy-tenant": _H_DROP,
    b"forwarded": _H_DROP,
}
RESPONSE_DROP = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    )
)
# Response header names that need a case-insensitive look: those as long as a hop-by-hop one
# or as Content-Length (most names are skipped by their length alone).
_RESPONSE_NAME_LENGTHS = frozenset(map(len, RESPONSE_DROP | {b"content-length"}))


class Reject(Exception):
    """A request the proxy answers itself with ``status`` (raised inside parser callbacks)."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


class ClientConnection(asyncio.Protocol):
    """One downstream connection of one tenant's http/https listener."""

    # Slots: less memory per connection and faster attribute access in the hot path.
    __slots__ = (
        "active",
        "backlog",
        "body_in",
        "bytes_in",
        "bytes_out",
        "chunk_out",
        "chunked",
        "cl",
        "client_ip",
        "close_after",
        "conn_tokens",
        "counted",
        "expect",
        "fixed",
        "head_only",
        "head_size",
        "headers",
        "host",
        "keep_alive",
        "last_io",
        "listener",
        "method",
        "parser",
        "paused",
        "pending",
        "pending_size",
        "raw_head",
        "request_done",
        "response_started",
        "retry_head",
        "scheme",
        "shared",
        "since",
        "state",
        "status",
        "t_sent",
        "t_start",
        "tenant",
        "transport",
        "up",
        "upgrade",
        "upstream_name",
        "url",
        "version",
        "wbuf",
        "write_paused",
    )

    def __init__(self, tenant, listener: str, scheme: bytes, shared):
        self.tenant = tenant
        self.listener = listener
        self.scheme = scheme
        self.shared = shared
        self.transport = None
        self.parser = None  # made with the first bytes: a connection that sends none costs less
        self.state = HEAD
        self.since = 0.0  # when the current state's clock started
        self.last_io = 0.0
        self.paused = 0
        self.backlog = None  # parser events of pipelined requests waiting their turn
        self.active = False  # a request is in progress (until its response is complete)
        self.up = None  # UpstreamConnection serving the current request
        self.pending = None  # bytes for the upstream while it is being connected
        self.pending_size = 0
        self.client_ip = "-"
        self.fixed = b""
        self.counted = False
        self.write_paused = False
        self.wbuf = None  # while the upstream's bytes are parsed: response pieces, one write
        self._reset_request()

    def _reset_request(self):
        self.url = b""
        self.headers = []
        self.host = None
        self.head_size = 0
        self.raw_head = 0
        self.cl = None
        self.chunked = False
        self.expect = False
        self.upgrade = None
        self.conn_tokens = None
        self.method = b""
        self.version = "1.1"
        self.keep_alive = True
        self.request_done = False
        self.response_started = False
        self.head_only = False
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.body_in = 0
        self.upstream_name = "-"
        self.t_start = 0.0
        self.t_sent = 0.0
        self.close_after = False
        self.chunk_out = False
        self.retry_head = None

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        shared = self.shared
        tenant = self.tenant
        now = shared.now
        self.since = self.last_io = now
        if tenant.active >= shared.limits["max_connections_per_tenant"] or tenant.closing:
            transport.write(_local_response(503, "too many connections for this tenant", True))
            transport.close()
            self.state = CLOSED
            log.warning(
                "tenant %s: connection refused: max_connections_per_tenant reached", tenant.name
            )
            return
        tenant.active += 1
        self.counted = True
        shared.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else "-"
        transport.set_write_buffer_limits(high=HIGH_WATER)

    def connection_lost(self, exc):
        self.state = CLOSED
        # The parser holds bound methods of this object: without this, every closed
        # connection would wait in the collector's older generations (about 2 kB each).
        self.parser = None
        if self.counted:
            self.counted = False
            self.tenant.active -= 1
            self.shared.connections.discard(self)
        up = self.up
        if up is not None:
            self.up = None
            up.client = None
            up.close()
        if self.active and not self.response_started and self.t_start:
            self.status = 499  # client went away before the response (nginx's convention)
            self._log_request()

    def data_received(self, data):
        self.last_io = self.shared.now
        state = self.state
        if state == TUNNEL:
            if self.up is not None:
                self.up.transport.write(data)
            return
        if self.upgrade is not None and self.request_done:
            self._to_upstream(data)  # tunnel bytes before the 101 arrives
            return
        if state == IDLE:
            self.state = HEAD
            self.since = self.last_io
        parser = self.parser
        if parser is None:
            parser = self._first_bytes()
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            tail = data[exc.args[0] :]
            if tail:
                self._event(self._to_upstream, tail)
        except httptools.HttpParserCallbackError as exc:
            ctx = exc.__context__
            if isinstance(ctx, Reject):
                self._event(self._reject, ctx.status, ctx.detail)
            else:
                log.error(
                    "tenant %s: internal error handling a request", self.tenant.name, exc_info=ctx
                )
                self._event(self._reject, 500, "internal error")
        except httptools.HttpParserError as exc:
            self._event(self._reject, 400, f"malformed request: {exc}")
        else:
            if self.state == HEAD and self.backlog is None:
                # Bytes of a head that is not complete yet: bound them (llhttp has no limit).
                self.raw_head += len(data)
                if self.raw_head > self.shared.limits["max_header_bytes"]:
                    self._reject(431, "request head larger than max_header_bytes")

    def eof_received(self):
        return False

    def _first_bytes(self):
        """The parser and the identity headers, made when the client first sends something
        (a burst of connections that never send a request then allocates far less)."""
        self.fixed = b"".join(
            (
                b"X-Forwarded-For: ",
                self.client_ip.encode(),
                b"\r\n",
                b"X-Forwarded-Proto: ",
                self.scheme,
                b"\r\n",
                b"X-Nsproxy-Tenant: ",
                self.tenant.name.encode(),
                b"\r\n",
            )
        )
        self.parser = parser = httptools.HttpRequestParser(self)
        return parser

    def pause_writing(self):
        self.write_paused = True
        if self.up is not None:
            self.up.transport.pause_reading()

    def resume_writing(self):
        self.write_paused = False
        if self.up is not None:
            self.up.transport.resume_reading()

    # -- parser callbacks (recorded while a pipelined request waits) ---------------------------
    def on_message_begin(self):
        if self.backlog is None and self.active:
            self.backlog = []
            self._pause(PAUSE_PIPELINE)
        if self.backlog is not None:
            self.backlog.append((self._begin,))
        else:
            self._begin()

    def on_url(self, url):
        if self.backlog is not None:
            self.backlog.append((self._url, url))
        else:
            self.url += url

    def on_header(self, name, value):
        if self.backlog is None:
            self.headers.append((name, value))
        else:
            self.backlog.append((self._header, name, value))

    def on_headers_complete(self):
        # The parser's getters describe the latest message parsed: read them now, not at replay.
        p = self.parser
        meta = (p.get_method(), p.get_http_version(), p.should_keep_alive(), p.should_upgrade())
        if self.backlog is not None:
            self.backlog.append((self._headers_complete, meta))
        else:
            self._headers_complete(meta)

    def on_body(self, body):
        if self.backlog is not None:
            self.backlog.append((self._body, body))
        else:
            self._body(body)

    def on_message_complete(self):
        if self.backlog is not None:
            self.backlog.append((self._message_complete,))
        else:
            self._message_complete()

    def _event(self, fn, *args):
        if self.backlog is not None:
            self.backlog.append((fn, *args))
        else:
            fn(*args)

    # -- request handling ---------------------------------------------------------------------
    def _begin(self):
        self._reset_request()
        self.active = True
        self.state = HEAD
        self.since = self.shared.now
        self.t_start = self.shared.loop_time()

    def _url(self, url):
        self.url += url

    def _header(self, name, value):
        self.headers.append((name, value))

    def _headers_complete(self, meta):
        # Header count and size are checked here once; a head that never completes is bounded
        # by the raw byte count in data_received.
        shared = self.shared
        limits = shared.limits
        headers = self.headers
        if len(headers) > limits["max_headers"]:
            raise Reject(431, "more request headers than max_headers")
        method, self.version, self.keep_alive, should_upgrade = meta
        self.method = method
        if method == b"CONNECT":
            raise Reject(405, "CONNECT is not supported by a reverse proxy")
        out = []
        extend = out.extend
        host = None
        special = REQUEST_SPECIAL
        # Names and values summed in C (a Python loop here cost more than the routing).
        size = len(self.url) + 4 * len(headers) + sum(map(len, _flatten(headers)))
        for name, value in headers:
            code = special.get(name.lower())
            if code is None:
                extend((name, b": ", value, b"\r\n"))
            elif code == _H_HOST:
                if host is not None:
                    raise Reject(400, "more than one Host header")
                host = value
            elif code == _H_CL:
                self.cl = value
                extend((b"Content-Length: ", value, b"\r\n"))
            elif code == _H_TE:
                if value.strip().lower() != b"chunked" or self.chunked:
                    raise Reject(501, "only Transfer-Encoding: chunked is supported")
                self.chunked = True
            elif code == _H_CONN:
                toks = [t.strip().lower() for t in value.split(b",")]
                self.conn_tokens = toks if self.conn_tokens is None else self.conn_tokens + toks
            elif code == _H_EXPECT:
                if value.strip().lower() != b"100-continue":
                    raise Reject(417, "only Expect: 100-continue is supported")
                self.expect = True
            elif code == _H_UPGRADE:
                self.upgrade = value
        self.head_size = size
        if size > limits["max_header_bytes"]:
            raise Reject(431, "request head larger than max_header_bytes")
        if self.chunked and self.cl is not None:
            raise Reject(400, "both Content-Length and Transfer-Encoding")
        if self.conn_tokens:
            nominated = set(self.conn_tokens) - {b"close", b"keep-alive", b"upgrade"}
            if nominated:  # headers the client declared hop-by-hop: not forwarded either
                out = []
                for name, value in headers:
                    lname = name.lower()
                    if lname not in nominated and (
                        lname not in special or lname == b"content-length"
                    ):
                        out.extend((name, b": ", value, b"\r\n"))
        if not should_upgrade:
            self.upgrade = None
        url = self.url
        if url[:1] != b"/":
            if url[:7].lower() == b"http://" or url[:8].lower() == b"https://":
                try:
                    parsed = httptools.parse_url(url)
                except httptools.HttpParserInvalidURLError:
                    raise Reject(400, "invalid request target") from None
                host = parsed.host + (b":%d" % parsed.port if parsed.port else b"")
                url = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
            elif not (url == b"*" and method == b"OPTIONS"):
                raise Reject(400, "invalid request target")
        if host is None:
            if self.version != "1.0":
                raise Reject(400, "missing Host header")
            host = b""
        self.host = host
        max_body = shared.limits["max_body_bytes"]
        if max_body is not None and self.cl is not None and int(self.cl) > max_body:
            raise Reject(413, "request body larger than max_body_bytes")

        tenant = self.tenant
        router = tenant.router
        route = router.root
        if route is None or url == b"*":
            route = router.match(host, url.split(b"?", 1)[0])
            if route is None:
                raise Reject(404, "no route for this host and path")
        upstream = tenant.upstreams[route]
        self.upstream_name = upstream.name
        parts = [
            method,
            b" ",
            url,
            b" HTTP/1.1\r\nHost: ",
            host,
            b"\r\n",
            *out,
            self.fixed,
            b"X-Forwarded-Host: ",
            host,
            b"\r\n",
        ]
        if self.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        if self.upgrade is not None:
            parts.append(b"Connection: upgrade\r\nUpgrade: " + self.upgrade + b"\r\n")
        parts.append(b"\r\n")
        head = b"".join(parts)
        self.state = BUSY
        self.since = shared.now
        if self.expect and self.version == "1.1":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        server, conn = upstream.take()
        self.t_sent = shared.loop_time()
        if conn is not None:
            if not self.chunked and self.cl is None:
                self.retry_head = (upstream, head)
            self._attach(conn)
            conn.transport.write(head)
        else:
            self.pending = [head]
            self.pending_size = len(head)
            self._pause(PAUSE_CONNECTING)
            shared.loop.create_task(self._connect(upstream, server))

    def _body(self, body):
        n = len(body)
        self.body_in += n
        max_body = self.shared.limits["max_body_bytes"]
        if max_body is not None and self.body_in > max_body:
            raise Reject(413, "request body larger than max_body_bytes")
        if self.chunked:
            body = b"%x\r\n%b\r\n" % (n, body)
        self._to_upstream(body)

    def _message_complete(self):
        self.request_done = True
        if self.chunked:
            self._to_upstream(b"0\r\n\r\n")
        if not self.keep_alive:
            self.close_after = True

    def _to_upstream(self, data):
        up = self.up
        if up is not None:
            up.transport.write(data)
        elif self.pending is not None:
            self.pending.append(data)
            self.pending_size += len(data)

    async def _connect(self, upstream, server=None):
        try:
            _, conn = await upstream.connect(lambda: UpstreamConnection(upstream), server)
        except UpstreamError as exc:
            if self.state != CLOSED and self.pending is not None:
                self.pending = None
                self.tenant.metrics.upstream_failures += 1
                self._reject(504 if exc.timeout else 502, str(exc))
            return
        except Exception:
            log.exception("tenant %s: upstream connect failed", self.tenant.name)
            if self.state != CLOSED:
                self._reject(502, "upstream connect failed")
            return
        if self.state == CLOSED or self.pending is None:
            upstream.put_idle(conn) if conn.usable() else conn.close()
            return
        pending = self.pending
        self.pending = None
        self._attach(conn)
        conn.transport.write(b"".join(pending))
        self._resume(PAUSE_CONNECTING)

    def _attach(self, conn):
        self.up = conn
        conn.client = self
        conn.head_only = self.method == b"HEAD"
        if self.write_paused:
            conn.transport.pause_reading()

    # -- response from the upstream ---------------------------------------------------------
    def response_head(self, status, reason, lines, upstream_cl, upstream_chunked):
        """Called by the upstream connection when the response head is complete, with the
        header lines to forward (hop-by-hop ones already dropped); whether the upstream framed
        the body (Content-Length or chunked)."""
        self.status = status
        self.response_started = True
        self.retry_head = None
        tenant = self.tenant
        (tenant.counters or tenant.metrics).observe(self.shared.loop_time() - self.t_sent)
        lines[0] = b"HTTP/1.1 %d %b\r\n" % (status, reason)
        if status == 101:
            lines.append(b"Connection: upgrade\r\nUpgrade: " + (self.upgrade or b"") + b"\r\n\r\n")
            self._send(b"".join(lines))
            return True
        if self.upgrade is not None:
            self.close_after = True  # the client may already have sent tunnel bytes
        if self.shared.draining or tenant.closing:
            self.close_after = True
        if not upstream_cl and not (self.method == b"HEAD" or status in (204, 304)):
            if self.version == "1.1":
                self.chunk_out = True
                lines.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.close_after = True
        if self.close_after:
            lines.append(b"Connection: close\r\n\r\n")
        elif self.version == "1.0":
            lines.append(b"Connection: keep-alive\r\n\r\n")
        else:
            lines.append(b"\r\n")
        head = b"".join(lines)
        self.bytes_out += len(head)
        self._send(head)
        return upstream_cl or upstream_chunked

    def response_body(self, data):
        self.last_io = self.shared.now
        if self.chunk_out:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self.bytes_out += len(data)
        self._send(data)

    def _send(self, data):
        if self.wbuf is not None:
            self.wbuf.append(data)
        else:
            self.transport.write(data)

    def flush(self):
        """Write what was batched while the upstream's bytes were parsed (one send, not N)."""
        buf = self.wbuf
        self.wbuf = None
        if buf:
            self.transport.write(buf[0] if len(buf) == 1 else b"".join(buf))

    def response_done(self, upstream_reusable):
        """The upstream finished its response; recycle it and go on with the next request."""
        buf = self.wbuf  # what was batched while the upstream's bytes were parsed: one write
        self.wbuf = None
        if self.chunk_out:
            buf = [*buf, b"0\r\n\r\n"] if buf else [b"0\r\n\r\n"]
        if buf:
            self.transport.write(buf[0] if len(buf) == 1 else b"".join(buf))
        conn = self.up
        self.up = None
        if conn is not None:
            conn.client = None
            if upstream_reusable and self.request_done and self.upgrade is None:
                conn.upstream.put_idle(conn)
            else:
                conn.close()
        if self.status >= 500:
            self.tenant.metrics.errors += 1
        self._log_request()
        self.active = False
        if self.close_after or not self.request_done:
            self.state = CLOSED
            self.transport.close()
            return
        self.state = IDLE
        self.since = self.shared.now
        if self.backlog is not None:
            self._replay()

    def start_tunnel(self, tail):
        """The upstream answered 101: from now on bytes flow unchanged both ways."""
        self.flush()
        self._log_request()
        self.state = TUNNEL
        self.up.tunnel = True
        if tail:
            self.transport.write(tail)

    def upstream_lost(self, reason):
        """The upstream connection closed before the response was complete."""
        conn = self.up
        self.up = None
        self.flush()
        if self.state == CLOSED:
            return
        if self.state == TUNNEL:
            self.state = CLOSED
            self.transport.close()
            return
        if self.retry_head is not None and conn is not None and conn.reused:
            # A pooled connection the server had closed: resend the (bodiless) request once.
            upstream, head = self.retry_head
            self.retry_head = None
            self.pending = [head]
            self.pending_size = len(head)
            self._pause(PAUSE_CONNECTING)
            self.shared.loop.create_task(self._connect(upstream))
            return
        if self.response_started and conn is not None and conn.until_close:
            # A body of unknown length ends when the upstream closes: a complete response.
            self.response_done(False)
            return
        self.tenant.metrics.upstream_failures += 1
        if self.response_started:
            self._log_request()
            self.state = CLOSED
            self.transport.close()
        else:
            self._reject(502, f"upstream {self.upstream_name} closed the connection: {reason}")

    # -- local answers, timeouts, pipelining -------------------------------------------------
    def _reject(self, status, detail):
        if self.state == CLOSED:
            return
        self.flush()
        self.status = status
        log.info(
            "tenant %s listener %s client %s: %d %s",
            self.tenant.name,
            self.listener,
            self.client_ip,
            status,
            detail,
        )
        self.tenant.metrics.errors += 1
        if not self.t_start:
            self.t_start = self.shared.loop_time()
        if not self.response_started:
            body = _local_response(status, detail, True)
            self.bytes_out += len(body)
            self.transport.write(body)
        self._log_request()
        self.state = CLOSED
        self.backlog = None
        up = self.up
        if up is not None:
            self.up = None
            up.client = None
            up.close()
        self.pending = None
        self.transport.close()

    def check_timeout(self, now, timeouts):
        """Called once a second by the daemon's sweep."""
        state = self.state
        if state == HEAD:
            if now - self.since > timeouts["header_read"]:
                if self.active or self.head_size:
                    self._reject(408, "request head not received within header_read timeout")
                else:
                    self.state = CLOSED
                    self.transport.close()
        elif state == BUSY:
            if now - max(self.last_io, self.up.last_io if self.up else 0) > timeouts["read"]:
                if self.response_started:
                    self._log_request()
                    self.state = CLOSED
                    self.transport.close()
                    if self.up is not None:
                        self.up.close()
                else:
                    self._reject(504, "upstream did not answer within the read timeout")
        elif state in (IDLE, TUNNEL):
            last = self.last_io if state == IDLE else max(self.last_io, self.up.last_io)
            if now - last > timeouts["idle"]:
                self.state = CLOSED
                self.transport.close()
                if self.up is not None:
                    self.up.close()

    def drain(self):
        """Stop keep-alive: close now if idle, else after the current response."""
        if self.state == IDLE or (self.state == HEAD and not self.active):
            self.state = CLOSED
            self.transport.close()
        else:
            self.close_after = True

    def abort(self):
        self.state = CLOSED
        self.transport.abort()
        if self.up is not None:
            self.up.close()

    def _replay(self):
        events = self.backlog
        self.backlog = None
        for i, (fn, *args) in enumerate(events):
            if fn == self._begin and self.active:
                self.backlog = events[i:]
                return
            try:
                fn(*args)
            except Reject as exc:
                self._reject(exc.status, exc.detail)
                return
            if self.state == CLOSED:
                return
        self._resume(PAUSE_PIPELINE)

    def _pause(self, bit):
        if not self.paused:
            self.transport.pause_reading()
        self.paused |= bit

    def _resume(self, bit):
        if self.paused & bit:
            self.paused &= ~bit
            if not self.paused and self.state != CLOSED:
                self.transport.resume_reading()

    def _log_request(self):
        shared = self.shared
        tenant = self.tenant
        (tenant.counters or tenant.metrics).requests += 1
        access = shared.access_log
        if access is not None:
            access.request(self, shared.loop_time() - self.t_start)
        self.t_start = 0.0  # logged once: a close after this is not another request


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an upstream server, owned by one tenant's Upstream."""

    # Slots: less memory per connection and faster attribute access in the hot path.
    __slots__ = (
        "chunked",
        "client",
        "closed",
        "done",
        "has_cl",
        "head_only",
        "idle_since",
        "interim",
        "keep",
        "last_io",
        "lines",
        "parser",
        "reason",
        "reused",
        "server",
        "server_label",
        "status",
        "transport",
        "tunnel",
        "until_close",
        "upstream",
    )

    def __init__(self, upstream):
        self.upstream = upstream
        self.transport = None
        self.client = None
        self.parser = httptools.HttpResponseParser(self)
        self.server = None  # upstream.Server, set by Upstream.connect
        self.server_label = "-"
        self.closed = False
        self.tunnel = False
        self.reused = False
        self.head_only = False
        self.idle_since = 0.0
        self.last_io = 0.0
        self._reset()

    def _reset(self):
        self.lines = [b""]  # the status line (made by the client side), then header lines
        self.has_cl = False
        self.chunked = False
        self.reason = b""
        self.interim = False
        self.keep = False
        self.status = 0
        self.until_close = False
        self.done = False

    def usable(self):
        return not self.closed and not self.transport.is_closing()

    def close(self):
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    # asyncio.Protocol
    def connection_made(self, transport):
        self.transport = transport
        self.last_io = self.upstream.shared.now
        transport.set_write_buffer_limits(high=HIGH_WATER)

    def connection_lost(self, exc):
        self.closed = True
        self.parser = None  # the parser <-> protocol cycle: freed now, not by the collector
        client = self.client
        if client is not None:
            self.client = None
            client.upstream_lost(str(exc) if exc else "connection closed")

    def data_received(self, data):
        self.last_io = self.upstream.shared.now
        client = self.client
        if client is None:
            self.close()  # unsolicited bytes on an idle connection
            return
        if self.tunnel:
            client.transport.write(data)
            return
        client.wbuf = []
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self.client is not None:
                self.client.start_tunnel(data[exc.args[0] :])
        except httptools.HttpParserError as exc:
            if isinstance(exc, httptools.HttpParserCallbackError) and exc.__context__:
                log.error(
                    "upstream %s: internal error", self.upstream.name, exc_info=exc.__context__
                )
            self.client = None
            self.closed = True
            self.transport.close()
            client.upstream_lost(f"invalid response: {exc}")
        finally:
            if client.wbuf:
                client.flush()
            else:
                client.wbuf = None

    def pause_writing(self):
        if self.client is not None:
            self.client._pause(PAUSE_UPSTREAM_FULL)

    def resume_writing(self):
        if self.client is not None:
            self.client._resume(PAUSE_UPSTREAM_FULL)

    # httptools callbacks
    def on_message_begin(self):
        self._reset()

    def on_status(self, reason):
        self.reason += reason

    def on_header(self, name, value):
        # Hop-by-hop headers are dropped here, as they arrive.
        if len(name) in _RESPONSE_NAME_LENGTHS:
            lname = name.lower()
            if lname in RESPONSE_DROP:
                if lname == b"transfer-encoding":
                    self.chunked = True
                return
            if lname == b"content-length":
                self.has_cl = True
        self.lines.extend((name, b": ", value, b"\r\n"))

    def on_headers_complete(self):
        self.status = status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.interim = True  # 100 Continue was sent by the proxy itself; drop 1xx
            return
        client = self.client
        if client is None:
            return
        self.keep = self.parser.should_keep_alive()
        framed = client.response_head(status, self.reason, self.lines, self.has_cl, self.chunked)
        if not framed and status not in (204, 304) and not self.head_only:
            self.until_close = True  # the body ends when the upstream closes
        if self.head_only and self.client is not None:
            # llhttp cannot be told that a HEAD response has no body: finish it here and
            # start a fresh parser for the next response on this connection.
            self.parser = httptools.HttpResponseParser(self)
            self.done = True
            self.client.response_done(self.keep and not self.until_close)

    def on_body(self, body):
        if self.client is not None:
            self.client.response_body(body)

    def on_message_complete(self):
        if self.interim:
            self.interim = False
            return
        if self.done or self.status == 101:  # 101: the tunnel starts in data_received
            return
        self.done = True
        client = self.client
        if client is not None:
            client.response_done(self.keep)


def _local_response(status: int, detail: str, close: bool) -> bytes:
    body = f"{status} {REASONS.get(status, b'Error').decode()}: {detail}\n".encode()
    return b"".join(
        (
            b"HTTP/1.1 %d %b\r\n" % (status, REASONS.get(status, b"Error")),
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body),
            b"Connection: close\r\n\r\n" if close else b"\r\n",
            body,
        )
    )


class Router:
    """A tenant's routes: exact host, then the longest ``*.domain``, then ``*``; within a host,
    the longest path prefix. Host names are compared without port and case."""

    __slots__ = ("exact", "root", "star", "wild")

    def __init__(self, routes):
        exact: dict = {}
        wild: dict = {}
        star = []
        for r in routes:
            entry = (r.path_prefix.encode(), r.upstream)
            if r.host == "*":
                star.append(entry)
            elif r.host.startswith("*."):
                wild.setdefault(r.host[1:].encode(), []).append(entry)
            else:
                exact.setdefault(r.host.encode(), []).append(entry)
        for entries in (*exact.values(), *wild.values(), star):
            entries.sort(key=lambda e: -len(e[0]))
        self.exact = exact or None
        self.wild = sorted(wild.items(), key=lambda kv: -len(kv[0])) or None
        self.star = star or None
        # The common table of one route, any host, every path: its upstream, known at once.
        only_root = not exact and not wild and len(star) == 1 and star[0][0] == b"/"
        self.root = star[0][1] if only_root else None

    def match(self, host: bytes, path: bytes):
        """The upstream name for this Host header value and path, or None."""
        if self.exact is not None or self.wild is not None:
            host = host.lower()
            if host[:1] == b"[":
                host = host.split(b"]", 1)[0] + b"]"
            elif b":" in host:
                host = host.split(b":", 1)[0]
            if host[-1:] == b".":
                host = host[:-1]
            if self.exact is not None:
                entries = self.exact.get(host)
                if entries is not None:
                    for prefix, upstream in entries:
                        if path.startswith(prefix):
                            return upstream
            if self.wild is not None:
                for suffix, entries in self.wild:
                    if host.endswith(suffix) and len(host) > len(suffix):
                        for prefix, upstream in entries:
                            if path.startswith(prefix):
                                return upstream
        if self.star is not None:
            for prefix, upstream in self.star:
                if path.startswith(prefix):
                    return upstream
        return None
