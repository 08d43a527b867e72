"""The client side of the HTTP path: one connection of one tenant's http/https listener.

A connection reads requests (llhttp via httptools), turns each into a :class:`RequestCycle`,
forwards it as the request-head policy says (``request_head``) to an upstream connection
(``upstream_side``), and relays the response. Its rules, beyond the policies:

- requests are answered in order: a pipelined request waits, parsed, until the response before
  it is complete (at most ``MAX_PIPELINED``; beyond that the connection closes after them);
- after a request that asks to switch protocols, the bytes that follow are held, never passed
  on, until the upstream has answered: with 101 they open the tunnel, with anything else they
  are parsed as the next requests (RFC 9110 7.8);
- a request is sent a second time only when it is idempotent, has no body, its pooled
  connection closed before any byte of a response, and only once (RFC 9110 9.2.2, RFC 9112
  9.3.1); a request that cannot be sent again (not idempotent, or with a body) gets a pooled
  connection only when it cannot be one its server is about to close (``Upstream.take``);
- every close after an answer (the proxy's own, or an upstream's that is the connection's
  last: ``Connection: close``, HTTP/1.0, drain, ``MAX_PIPELINED``, an upstream that broke its
  response off) is a lingering close (RFC 9112 9.6, :meth:`_close`): once the answer is
  written the write side is shut, and input is read and dropped until the client closes, for
  up to ``LINGER_SECONDS`` in all, ``LINGER_IDLE`` without input and ``LINGER_BYTES``, so the
  client reads the answer instead of a reset;
- a client that half-closes after a complete request still gets its response, then the close.

Timeouts are checked by the daemon's one-second sweep (:meth:`check_timeout`), not by a timer
per request.
"""

from __future__ import annotations

import fcntl
import logging
import struct
import termios

import httptools

from nsproxy import traffic_log
from nsproxy.admission import PROGRESS_BYTES, hold, release, reset
from nsproxy.buffering import HIGH_WATER
from nsproxy.http.cycle import RequestCycle
from nsproxy.http.flow import (
    CHUNKS_PER_TURN,
    CONNECTING,
    HELD,
    PEER_FULL,
    PIPELINE,
    Flow,
)
from nsproxy.http.request_head import forwarded_fields
from nsproxy.http.response_head import LENGTH, client_framing
from nsproxy.http.upstream_side import UpstreamConnection
from nsproxy.http.wire import IDEMPOTENT_METHODS, PartialHead, Reject, local_response
from nsproxy.upstream import UpstreamError

# Connection states (timeouts differ per state).
HEAD = 1  # reading a request head (or waiting for the first one): header_read timeout
BUSY = 2  # request forwarded, response pending or streaming: read/response_head timeouts
IDLE = 3  # keep-alive, between requests: idle timeout
TUNNEL = 4  # after 101: bytes flow unchanged both ways; idle timeout
LINGER = 5  # the last answer is out, the write side shut: input is read and dropped
CLOSED = 6

#: Pipelined requests parsed ahead of their turn; a connection that sends more is closed after
#: answering these (clients must be ready to resend unanswered pipelined requests, RFC 9112
#: 9.3.2).
MAX_PIPELINED = 32
#: Bytes held after a protocol-switch request before reading from the client pauses.
HOLD_LIMIT = 64 * 1024
#: Lingering close bounds: at most LINGER_SECONDS in all and LINGER_IDLE without input (nginx's
#: lingering_time and lingering_timeout defaults), and LINGER_BYTES read and dropped.
LINGER_SECONDS = 30.0
LINGER_IDLE = 5.0
LINGER_BYTES = 64 * 1024 * 1024
#: Bytes of chunk framing (size line, extensions, CRLFs) allowed per chunk without counting.
CHUNK_LINE = 64


def unsent_bytes(sock) -> int:
    """Bytes written to ``sock`` that its peer has not acknowledged yet (the kernel's send
    queue, ``SIOCOUTQ``, tcp(7)); -1 when it cannot be asked (no socket)."""
    if sock is None:
        return -1
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return -1


class _TooManyPipelined(Exception):
    """Raised from a parser callback: stop parsing ahead, answer what was parsed, close."""


class ClientConnection(Flow):
    """One downstream connection of one tenant's http/https listener."""

    # Slots: less memory per connection and faster attribute access in the hot path.
    __slots__ = (
        "backlog",
        "buffered",
        "closing_since",
        "chunk_out",
        "chunkbuf",
        "chunks",
        "client_ip",
        "close_after",
        "counted",
        "cycle",
        "eof",
        "fixed",
        "head_bytes",
        "held",
        "in_body",
        "last_io",
        "linger_left",
        "linger_until",
        "listener",
        "mid_head",
        "moved",
        "parser",
        "parser_done",
        "pending",
        "partial",
        "queued",
        "rechunk",
        "scheme",
        "shared",
        "since",
        "stall_since",
        "unaccounted",
        "unsent",
        "state",
        "tenant",
        "up",
        "wbuf",
    )

    def __init__(self, tenant, listener: str, scheme: bytes, shared):
        Flow.__init__(self)
        self.tenant = tenant
        self.listener = listener
        self.scheme = scheme
        self.shared = shared
        self.parser = None  # made with the first bytes: a connection that sends none costs less
        self.state = HEAD
        self.since = 0.0  # when the current state's clock started
        self.last_io = 0.0
        self.cycle: RequestCycle | None = None  # the request being served
        self.backlog = None  # parser events of pipelined requests waiting their turn
        self.queued = 0  # requests in the backlog
        self.held = None  # bytes after a protocol-switch request, until its response
        self.partial = None  # PartialHead: a request head that arrives in pieces
        self.head_bytes = 0  # raw bytes of the head being parsed
        self.mid_head = False  # the parser holds part of a head
        self.in_body = False  # the parser is inside a request body
        self.unaccounted = 0  # body-state bytes not (yet) seen as data, trailers or chunk lines
        self.parser_done = False  # no further request will be read (close after answering)
        self.up = None  # UpstreamConnection serving the current request
        self.pending = None  # bytes for the upstream while it is being connected
        self.client_ip = "-"
        self.fixed = b""
        self.counted = False
        self.eof = False  # the client has half-closed
        self.close_after = False  # close once the current response is complete
        self.chunk_out = False  # the current response body is re-framed as chunked
        self.rechunk = None  # response body pieces of one upstream read, to re-chunk as one
        self.chunkbuf = None  # request body chunks of one read, forwarded as one
        self.chunks = 0  # request chunks parsed since the loop last had a turn (see YIELD)
        self.wbuf = None  # while the upstream's bytes are parsed: response pieces, one write
        self.linger_until = 0.0
        self.linger_left = 0
        self.unsent = 0  # in LINGER: bytes of the last answer still in the write buffer
        # Progress, for admission's stalled connections (admission.PROGRESS_BYTES): bytes
        # moved for the exchange since the stall clock last restarted, when it did, and the
        # write buffer's size at the last sweep.
        self.moved = 0
        self.stall_since = 0.0
        self.buffered = 0
        self.closing_since = 0.0  # when the sweep first saw the transport closing

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport):
        # Admitted (and counted against the tenant's share) by the acceptor already.
        self.transport = transport
        shared = self.shared
        self.since = self.last_io = shared.now
        shared.connections.add(self)
        tenant = self.tenant
        hold(tenant, self)
        tenant.metrics.connections[self.scheme == b"https"] += 1  # metrics.PROTOCOLS index
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else "-"
        transport.set_write_buffer_limits(high=HIGH_WATER)
        if self.scheme == b"https":
            # The ciphertext taken from the socket but not yet decrypted (buffering.py).
            transport.set_read_buffer_limits(high=HIGH_WATER)

    def connection_lost(self, exc):
        state = self.state
        self.state = CLOSED
        # The parser holds bound methods of this object: without this, every closed
        # connection would wait in the collector's older generations (about 2 kB each).
        self.parser = None
        tenant = self.tenant
        self.shared.connections.discard(self)
        release(tenant, self)
        if self.counted:
            self.counted = False
            tenant.admission.leave(tenant)
        up = self.up
        if up is not None:
            self.up = None
            up.client = None
            self.decouple()
            up.close()
        cycle = self.cycle
        if cycle is not None and state != LINGER:
            if not cycle.response_started:
                cycle.status = 499  # client went away before the response (nginx's convention)
            self._finish_cycle()

    def share(self):
        return self.tenant.share

    def data_received(self, data):
        self.last_io = self.shared.now
        self.moved += len(data)
        state = self.state
        if state > IDLE or self.held is not None or self.parser_done:
            self._data_out_of_turn(state, data)
            return
        if state == IDLE:
            self.state = HEAD
            self.since = self.last_io
        parser = self.parser
        if parser is None:
            parser = self._first_bytes()
        in_body = self.in_body
        if in_body:
            self.unaccounted += len(data)
        else:
            self.head_bytes += len(data)
            partial = self.partial
            if partial is not None:
                data = partial.add(data)
                if data is None:
                    if self.head_bytes > self.shared.limits["max_header_bytes"]:
                        self._reject(431, "request head larger than max_header_bytes")
                    return
                self.partial = None
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # llhttp stops after a request that asks to switch protocols: what follows is
            # held until the upstream has answered it.
            self._event(self._hold, data[exc.args[0] :])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, Reject):
                self._event(self._reject, cause.status, cause.detail)
            elif not isinstance(cause, _TooManyPipelined):
                traffic_log.line(self.tenant, logging.ERROR,
                                 "tenant %s: internal error handling a request",
                                 self.tenant.name, exc_info=cause)  # fmt: skip
                self._event(self._reject, 500, "internal error")
        except httptools.HttpParserError as exc:
            if not self.parser_done:  # (bytes after "Connection: close" are dropped)
                self._event(self._reject, 400, f"malformed request: {exc}")
        else:
            if self.mid_head:
                if self.head_bytes > self.shared.limits["max_header_bytes"]:
                    self._event(self._reject, 431, "request head larger than max_header_bytes")
                else:  # the rest of this head is collected before the parser sees it
                    self.partial = PartialHead(data[-3:])
            elif self.in_body:
                # Body bytes the parser reported as nothing: chunk-size lines and their
                # extensions beyond CHUNK_LINE each (llhttp skips those without a limit).
                if self.unaccounted > self.shared.limits["max_header_bytes"]:
                    self._event(self._reject, 400, "chunk extensions too long")
                elif self.unaccounted < 0:
                    self.unaccounted = 0
        if self.chunkbuf is not None:
            self._flush_body()
        if self.chunks > CHUNKS_PER_TURN:
            self.chunks = 0
            self.yield_turn()

    def _data_out_of_turn(self, state: int, data) -> None:
        """Bytes in a state other than reading requests: tunnel, lingering close, closed, after
        the last request, or held after a protocol-switch request."""
        if state == TUNNEL:
            up = self.up
            if up is not None:
                up.transport.write(data)
        elif state == LINGER:
            self.linger_left -= len(data)
            if self.linger_left < 0:
                self.abort()
        elif state == CLOSED or self.parser_done:
            pass  # nothing more is read from a connection that closes after its answer
        else:
            try:
                self._held_data(data)
            except Reject as exc:
                self._reject(exc.status, exc.detail)

    def eof_received(self):
        state = self.state
        if state == TUNNEL:
            self.eof = True
            up = self.up
            if up is None or up.transport.is_closing():
                return False
            if up.transport.can_write_eof():
                up.transport.write_eof()
            return True  # the upstream may still be sending
        if state in (LINGER, CLOSED):
            return False
        self.eof = True
        # "No more requests", not "gone": a complete request still gets its answer (and any
        # complete pipelined or held ones), then the connection closes.
        cycle = self.cycle
        if cycle is not None and (cycle.request_done or self.backlog is not None):
            self.parser_done = True
            return True
        return False

    # -- reading requests -------------------------------------------------------------------
    def _first_bytes(self):
        """The parser and the identity fields, made when the client first sends something
        (a burst of connections that never send a request then allocates far less)."""
        self.fixed = b"".join(
            (
                b"X-Forwarded-For: ",
                self.client_ip.encode(),
                b"\r\nX-Forwarded-Proto: ",
                self.scheme,
                b"\r\nX-Nsproxy-Tenant: ",
                self.tenant.header_value,
                b"\r\n",
            )
        )
        self.parser = parser = httptools.HttpRequestParser(self)
        return parser

    def _event(self, fn, *args) -> None:
        """Run a request step now, or after the requests before it when it was pipelined."""
        if self.backlog is not None:
            self.backlog.append((fn, *args))
        else:
            fn(*args)

    # Parser callbacks: they only record where the parser is, then run (or queue) a step.
    def on_message_begin(self):
        self.mid_head = True
        backlog = self.backlog
        if backlog is None and self.cycle is not None:  # an earlier request is in progress
            backlog = self.backlog = []
            self.pause_reading_for(PIPELINE)
        if backlog is not None:
            if self.queued >= MAX_PIPELINED:
                self.parser_done = True
                raise _TooManyPipelined
            self.queued += 1
            backlog.append((self._begin,))
        else:
            self._begin()

    def on_url(self, url):
        if self.backlog is not None:
            self.backlog.append((self._url, url))
        else:
            self.cycle.url += url

    def on_header(self, name, value):
        if self.in_body:  # a trailer field: not forwarded, but bounded
            size = len(name) + len(value) + 4
            self.unaccounted -= size
            self._event(self._trailer, size)
        elif self.backlog is None:
            self.cycle.headers.append((name, value))
        else:
            self.backlog.append((self._header, name, value))

    def on_headers_complete(self):
        self.mid_head = False
        self.in_body = True
        self.head_bytes = 0
        # The parser's getters describe the latest message parsed: read them now, not at replay.
        p = self.parser
        meta = (p.get_method(), p.get_http_version(), p.should_keep_alive(), p.should_upgrade())
        if self.backlog is not None:
            self.backlog.append((self._headers_complete, meta))
        else:
            self._headers_complete(meta)

    def on_body(self, body):
        self.unaccounted -= len(body)
        if self.backlog is not None:
            self.backlog.append((self._body, body))
        else:
            self._body(body)

    def on_chunk_header(self):
        self.unaccounted -= CHUNK_LINE
        self.chunks += 1

    def on_message_complete(self):
        self.in_body = False
        self.unaccounted = 0
        if not self.parser.should_keep_alive():
            self.parser_done = True  # the client said it sends no further request
        if self.backlog is not None:
            self.backlog.append((self._message_complete,))
        else:
            self._message_complete()

    # -- request steps ------------------------------------------------------------------------
    def _begin(self):
        self.cycle = RequestCycle(self.shared.loop_time())
        self.state = HEAD
        self.since = self.shared.now

    def _url(self, url):
        self.cycle.url += url

    def _header(self, name, value):
        self.cycle.headers.append((name, value))

    def _trailer(self, size: int) -> None:
        cycle = self.cycle
        cycle.trailer_bytes += size
        if cycle.trailer_bytes > self.shared.limits["max_header_bytes"]:
            raise Reject(431, "request trailers larger than max_header_bytes")

    def _headers_complete(self, meta):
        cycle = self.cycle
        shared = self.shared
        out = forwarded_fields(cycle, meta, shared.limits)
        if meta[3]:  # llhttp reads no body after a request that asks to switch protocols
            if cycle.chunked:
                raise Reject(400, "a chunked body with a protocol switch request")
            cycle.held_body = cycle.length or 0
        tenant = self.tenant
        router = tenant.router
        route = router.root
        url = cycle.url
        host = cycle.host
        if route is None or url == b"*":
            route = router.match(host, url.split(b"?", 1)[0])
            if route is None:
                raise Reject(404, "no route for this host and path")
        upstream = tenant.upstreams[route]
        cycle.upstream_name = upstream.name
        parts = [cycle.method, b" ", url, b" HTTP/1.1\r\nHost: ", host, b"\r\n", *out, self.fixed,
                 b"X-Forwarded-Host: ", host, b"\r\n"]  # fmt: skip
        if cycle.length is not None:
            parts.append(b"Content-Length: %d\r\n" % cycle.length)
        elif cycle.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        if cycle.upgrade is not None:
            parts.append(b"Connection: upgrade\r\nUpgrade: " + cycle.upgrade + b"\r\n")
        parts.append(b"\r\n")
        head = b"".join(parts)
        self.state = BUSY
        self.since = shared.now
        if cycle.expect and cycle.version == "1.1":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # A pooled connection may be closed by its server the instant it is reused. Only a
        # request that may be sent again (idempotent, no body) takes that risk; others get a
        # recently used, checked connection or a new one (Upstream.take).
        resendable = cycle.method in IDEMPOTENT_METHODS and not cycle.chunked and not cycle.length
        server, conn = upstream.take(safe=not resendable)
        cycle.t_sent = shared.loop_time()
        if conn is not None:
            if resendable:
                cycle.retry = head
            self._attach(conn)
            conn.transport.write(head)
        else:
            self.pending = [head]
            self.pause_reading_for(CONNECTING)
            shared.loop.create_task(self._connect(upstream, server))

    def _body(self, body):
        cycle = self.cycle
        n = len(body)
        cycle.body_in += n
        max_body = self.shared.limits["max_body_bytes"]
        if max_body is not None and cycle.body_in > max_body:
            raise Reject(413, "request body larger than max_body_bytes")
        if cycle.chunked:
            # The chunks of one read are forwarded as one (data_received writes it): a body of
            # many small chunks costs the upstream connection one send per read, not one each.
            if self.chunkbuf is None:
                self.chunkbuf = [body]
            else:
                self.chunkbuf.append(body)
            return
        self._to_upstream(body)

    def _flush_body(self) -> None:
        """Forward the chunked body pieces batched by ``_body`` as one chunk."""
        pieces = self.chunkbuf
        self.chunkbuf = None
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self._to_upstream(b"%x\r\n%b\r\n" % (len(data), data))

    def _message_complete(self):
        cycle = self.cycle
        if cycle.held_body:
            return  # complete once its body has come (see _held_data)
        cycle.request_done = True
        if cycle.chunked:
            if self.chunkbuf is not None:
                self._flush_body()
            self._to_upstream(b"0\r\n\r\n")

    def _hold(self, tail):
        self.held = bytearray()
        self._held_data(tail)

    def _held_data(self, data) -> None:
        """Bytes after a protocol-switch request: first the rest of its body, if it has one,
        then held until the upstream answers."""
        cycle = self.cycle
        need = cycle.held_body if cycle is not None else 0
        if need:
            body = data[:need]
            data = data[need:]
            cycle.held_body -= len(body)
            self._body(body)
            if not cycle.held_body:
                cycle.request_done = True
        held = self.held
        held += data
        if len(held) > HOLD_LIMIT:
            self.pause_reading_for(HELD)

    def _to_upstream(self, data):
        up = self.up
        if up is not None:
            up.transport.write(data)
        elif self.pending is not None:
            self.pending.append(data)

    async def _connect(self, upstream, server=None):
        try:
            _, conn = await upstream.connect(lambda: UpstreamConnection(upstream), server)
        except UpstreamError as exc:
            if self.state != CLOSED and self.pending is not None:
                self.pending = None
                self.tenant.metrics.upstream_failures += 1
                self.upstream_fault(504 if exc.timeout else 502, str(exc))
            return
        except Exception:
            traffic_log.line(self.tenant, logging.ERROR, "tenant %s: upstream connect failed",
                             self.tenant.name, exc_info=True)  # fmt: skip
            if self.state != CLOSED:
                self.pending = None
                self.upstream_fault(502, "upstream connect failed")
            return
        if self.state == CLOSED or self.pending is None:
            upstream.put_idle(conn) if conn.usable() else conn.close()
            return
        pending = self.pending
        self.pending = None
        self._attach(conn)
        conn.transport.write(b"".join(pending))
        self.resume_reading_for(CONNECTING)

    def _attach(self, conn: UpstreamConnection) -> None:
        self.up = conn
        conn.client = self
        conn.start_exchange(self.cycle.method == b"HEAD")
        if self.write_paused:  # (a connection from the pool is never write-paused)
            self.couple(conn)
        else:
            self.peer = conn
            conn.peer = self

    # -- the response, called by the upstream connection --------------------------------------
    def interim_response(self, status: int, reason: bytes, lines: list) -> None:
        """An informational (1xx) response other than 100 and 101: HTTP/1.1 clients get it."""
        if self.cycle.version == "1.1":
            lines[0] = b"HTTP/1.1 %d %b\r\n" % (status, reason)
            lines.append(b"\r\n")
            data = b"".join(lines)
            self.cycle.bytes_out += len(data)
            self._send(data)

    def response_head(self, status, reason, lines, kind, codings) -> None:
        """The upstream's final response head (hop-by-hop fields already gone): frame it for
        this client (``response_head.client_framing``) and send it. Raises ResponseFault."""
        cycle = self.cycle
        tenant = self.tenant
        shared = self.shared
        lines[0] = b"HTTP/1.1 %d %b\r\n" % (status, reason)
        if status == 101:
            lines.append(b"Connection: upgrade\r\nUpgrade: " + cycle.upgrade + b"\r\n\r\n")
        else:
            close = (
                self.close_after
                or not cycle.keep_alive
                or shared.draining
                or tenant.closing
                # no further request will be read, and none waits: this answer is the last
                or (self.parser_done and self.backlog is None and self.held is None)
            )
            if kind != LENGTH:
                coding = client_framing(kind, codings, cycle.version)
                if coding is None:
                    close = True  # an HTTP/1.0 client learns where the body ends by the close
                    cycle.close_delimited = True
                elif coding:
                    self.chunk_out = True
                    lines.append(coding)
            if close:
                self.close_after = True
                lines.append(b"Connection: close\r\n\r\n")
            elif cycle.version == "1.0":
                lines.append(b"Connection: keep-alive\r\n\r\n")
            else:
                lines.append(b"\r\n")
        cycle.status = status
        cycle.response_started = True
        cycle.retry = None
        (tenant.counters or tenant.metrics).observe(shared.loop_time() - cycle.t_sent)
        head = b"".join(lines)
        cycle.bytes_out += len(head)
        self._send(head)

    def response_body(self, data) -> None:
        if self.chunk_out:
            if self.wbuf is not None:
                # Batched: the pieces of this read become one chunk (many small chunks from
                # the upstream cost one chunk line to the client, not one each).
                if self.rechunk is None:
                    self.rechunk = [data]
                else:
                    self.rechunk.append(data)
                return
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self.cycle.bytes_out += len(data)
        self._send(data)

    def _rechunked(self) -> bytes:
        """The batched body pieces as one chunk."""
        pieces = self.rechunk
        self.rechunk = None
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        data = b"%x\r\n%b\r\n" % (len(data), data)
        self.cycle.bytes_out += len(data)
        return data

    def _send(self, data) -> None:
        if self.wbuf is not None:
            self.wbuf.append(data)
        else:
            self.transport.write(data)

    def flush(self) -> None:
        """Write what was batched while the upstream's bytes were parsed (one send, not N)."""
        buf = self.wbuf
        self.wbuf = None
        if self.rechunk is not None:
            buf.append(self._rechunked())
        if buf:
            self.transport.write(buf[0] if len(buf) == 1 else b"".join(buf))

    def response_done(self, reusable: bool) -> None:
        """The response is complete; ``reusable``: the upstream connection may be pooled."""
        buf = self.wbuf  # what was batched while the upstream's bytes were parsed: one write
        self.wbuf = None
        if self.chunk_out:
            self.chunk_out = False
            if self.rechunk is not None:
                buf.append(self._rechunked())
            buf = [*buf, b"0\r\n\r\n"] if buf else [b"0\r\n\r\n"]
        if buf:
            self.transport.write(buf[0] if len(buf) == 1 else b"".join(buf))
        cycle = self.cycle
        conn = self.up
        if conn is not None:
            self.up = None
            if conn.client is self:
                conn.client = None
                if self.paused & PEER_FULL or conn.paused & PEER_FULL:
                    self.decouple()
                else:
                    self.peer = conn.peer = None
            if reusable and cycle.request_done:
                conn.upstream.put_idle(conn)
            else:
                conn.close()
        request_done = cycle.request_done
        self._finish_cycle()
        if self.close_after or not request_done:
            self._close()
            return
        if self.parser_done and self.backlog is None and self.held is None:
            self._close()
            return
        self.state = IDLE
        self.since = self.shared.now
        if self.held is not None:
            self._reparse_held()
        elif self.backlog is not None:
            self._replay()

    def start_tunnel(self, tail) -> None:
        """The upstream answered 101: bytes now flow unchanged both ways, starting with the
        client bytes held since the request."""
        self.flush()
        self._finish_cycle()
        self.state = TUNNEL
        self._restart_stall_clock()
        held = self.held
        self.held = None
        if held:
            self.up.transport.write(held)
        self.resume_reading_for(HELD)
        if tail:
            self.transport.write(tail)

    def tunnel_eof(self) -> None:
        """The upstream half-closed a tunnel: pass the half-close on."""
        transport = self.transport
        if self.eof or not transport.can_write_eof():
            self.state = CLOSED
            transport.close()
        else:
            transport.write_eof()

    def upstream_lost(self, reason: str, received: int) -> None:
        """The upstream connection closed before the response was complete (``received``:
        bytes it had sent for this request)."""
        conn = self.up
        self.up = None
        self.flush()
        state = self.state
        if state in (CLOSED, LINGER):
            return
        if state == TUNNEL:
            self.state = CLOSED
            self.transport.close()
            return
        cycle = self.cycle
        if cycle is None:
            return
        retry = cycle.retry
        if retry is not None and conn is not None and conn.reused and not received:
            # A pooled connection its server had closed: send the request once more.
            cycle.retry = None
            self.pending = [retry]
            self.pause_reading_for(CONNECTING)
            self.shared.loop.create_task(self._connect(conn.upstream))
            return
        self.tenant.metrics.upstream_failures += 1
        if conn is not None:
            conn.upstream.count_error("closed")
        self.upstream_fault(502, f"upstream {cycle.upstream_name} closed the connection: {reason}")

    def upstream_fault(self, status: int, detail: str) -> None:
        """The upstream failed this request: an error answer if nothing was sent yet, else the
        response is cut short, and the client must see that. Its framing shows it (a
        ``Content-Length`` not reached, no last chunk) when the connection then closes like
        after any last answer (:meth:`_close`); only a body that ends with the connection
        (an HTTP/1.0 client's) is cut by a reset, the one sign left."""
        cycle = self.cycle
        if cycle is not None and cycle.response_started:
            self.flush()
            traffic_log.line(
                self.tenant,
                logging.INFO,
                "tenant %s listener %s client %s: response cut: %s",
                self.tenant.name,
                self.listener,
                self.client_ip,
                detail,
            )
            self.tenant.metrics.upstream_failures += 1
            self.chunk_out = False
            if cycle.close_delimited:
                self._finish_cycle()
                self.abort()
            else:
                self._last_answer()
        else:
            self._reject(status, detail)

    # -- local answers, closing, timeouts, pipelining -----------------------------------------
    def _reject(self, status: int, detail: str) -> None:
        if self.state == CLOSED or self.state == LINGER:
            return
        self.flush()
        traffic_log.line(
            self.tenant,
            logging.INFO,
            "tenant %s listener %s client %s: %d %s",
            self.tenant.name,
            self.listener,
            self.client_ip,
            status,
            detail,
        )
        cycle = self.cycle
        if cycle is None:
            cycle = self.cycle = RequestCycle(self.shared.loop_time())
        cycle.local = True
        if not cycle.response_started:
            body = local_response(status, detail, head=cycle.method == b"HEAD")
            cycle.bytes_out += len(body)
            cycle.status = status
            self.transport.write(body)
        self._last_answer()

    def _last_answer(self) -> None:
        """The current answer is the connection's last: drop its upstream connection and
        whatever else of the client was waiting, log it, close (lingering)."""
        up = self.up
        if up is not None:
            self.up = None
            up.client = None
            self.decouple()
            up.close()
        self._finish_cycle()
        self.pending = None
        self.backlog = None
        self.held = None
        self.chunkbuf = None
        self._close()

    def _close(self) -> None:
        """Close after the last answer (RFC 9112 9.6): shut the write side, then read and drop
        what the client still sends until it closes, for up to LINGER_SECONDS in all (counted
        from when the answer has left the write buffer), LINGER_IDLE without input and
        LINGER_BYTES (nginx's lingering_time, lingering_timeout). Closing with unread client
        bytes (a body still coming, pipelined requests, bytes in flight) makes the kernel send
        a reset, which destroys the answer before the client reads it. A client that
        half-closed already is closed at once. This is the one place a connection closes
        after an answer.

        Over TLS the write side cannot be shut alone (the event loop's TLS transport has no
        write_eof), so lingering would leave a client that reads until the close waiting for
        LINGER_IDLE. There the connection closes at once (close_notify, then the TCP close)
        unless the proxy knows of client input still unread: an unfinished request, pipelined
        requests, a partial head or bytes held after a protocol switch."""
        transport = self.transport
        if self.eof or (not transport.can_write_eof() and not self._input_pending()):
            self.state = CLOSED
            transport.close()
            return
        self.state = LINGER
        self.last_io = self.shared.now
        self.linger_until = self.last_io + LINGER_SECONDS
        self.linger_left = LINGER_BYTES
        self.parser = None
        if transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
        if self.paused:
            self.paused = 0
            transport.resume_reading()

    def _input_pending(self) -> bool:
        """Whether the client has sent (or is sending) input the proxy has not consumed."""
        cycle = self.cycle
        return (
            self.backlog is not None
            or self.mid_head
            or self.held is not None
            or (cycle is not None and not cycle.request_done)
        )

    def check_timeout(self, now: float, timeouts: dict) -> None:
        """Called once a second by the daemon's sweep."""
        transport = self.transport
        closing = transport is not None and transport.is_closing()
        if self.write_paused or closing:
            buffered = transport.get_write_buffer_size()
            self.moved += max(0, self.buffered - buffered)  # what the client took
            self.buffered = buffered
        if self.moved >= PROGRESS_BYTES:
            self.stall_since = now
            self.moved = 0
        if closing:
            # A closing transport writes what it still holds before it lets the socket go,
            # for as long as that takes: a client that takes none of it for timeouts.read is
            # cut, as in LINGER (admission.py may cut it sooner: stalled_for). Without this a
            # client that stopped reading kept the connection, counted, for ever.
            if not self.closing_since:
                self.closing_since = now
            if buffered and now - max(self.stall_since, self.closing_since) > timeouts["read"]:
                self.abort()
            return
        state = self.state
        if state == HEAD:
            if now - self.since > timeouts["header_read"]:
                if self.cycle is not None or self.mid_head:
                    self._reject(408, "request head not received within header_read timeout")
                else:
                    self.state = CLOSED
                    self.transport.close()
        elif state == BUSY:
            cycle = self.cycle
            up = self.up
            if (
                cycle is not None
                and not cycle.response_started
                and cycle.t_sent
                and self.shared.loop_time() - cycle.t_sent > timeouts["response_head"]
            ):
                if up is not None:
                    up.upstream.count_error("response_head_timeout")
                self.upstream_fault(504, "no complete response head within response_head")
            elif now - max(self.last_io, up.last_io if up is not None else 0) > timeouts["read"]:
                if up is not None:
                    up.upstream.count_error("read_timeout")
                self.upstream_fault(504, "upstream did not answer within the read timeout")
        elif state == IDLE:
            if now - self.last_io > timeouts["idle"]:
                self.state = CLOSED
                self.transport.close()
        elif state == TUNNEL:
            up = self.up
            if now - max(self.last_io, up.last_io if up is not None else 0) > timeouts["idle"]:
                self.abort()
        elif state == LINGER:
            unsent = self.transport.get_write_buffer_size()
            if unsent:
                # The answer is still being written: the lingering clocks start once it has
                # gone to the kernel; a client that takes none of it for timeouts.read is cut.
                if unsent != self.unsent:
                    self.unsent = unsent
                    self.since = now
                elif now - self.since > timeouts["read"]:
                    self.abort()
                    return
                self.last_io = now
                self.linger_until = now + LINGER_SECONDS
            elif now > self.linger_until or now - self.last_io > LINGER_IDLE:
                # (what the kernel still holds for the client is sent before the FIN: no
                # input is left unread to turn the close into a reset)
                self.abort()

    def evictable(self) -> bool:
        """Whether closing this connection now loses nothing: its request head is not
        complete yet, or it is idle between requests, and everything the proxy wrote to it has
        left the process and been acknowledged by the client (the transport's buffer and the
        kernel's send queue are empty). A response still being written, or the proxy's own
        answer before a lingering close, is never cut (admission.Admission evicts only these)."""
        state = self.state
        if state != IDLE and state != HEAD:
            return False
        transport = self.transport
        if transport is None or transport.is_closing() or transport.get_write_buffer_size():
            return False
        return unsent_bytes(transport.get_extra_info("socket")) == 0

    def evict(self) -> None:
        """Close an :meth:`evictable` connection to make room for another tenant's: a FIN, so
        that a keep-alive client reconnects as after any idle close."""
        self.state = CLOSED
        self.transport.close()

    def pause_writing(self) -> None:
        Flow.pause_writing(self)
        self._restart_stall_clock()
        self.buffered = self.transport.get_write_buffer_size()

    def _restart_stall_clock(self) -> None:
        self.stall_since = self.shared.now
        self.moved = 0

    def stalled_for(self) -> float:
        """Seconds since this connection's exchange last moved admission.PROGRESS_BYTES, by
        the daemon's one-second clock, where its client is the one to move it (0 when it waits
        on the upstream): taken of the proxy's backed-up writes (above the buffer's high-water
        mark), given of a request body the proxy is reading, either way through a tunnel; or,
        between requests, since the last response ended with bytes of it still unacknowledged
        in the kernel's send queue; or, closing, since the client last took PROGRESS_BYTES of
        what the transport still holds."""
        if self.closing():
            transport = self.transport
            if transport is not None and transport.get_write_buffer_size():
                now = self.shared.now
                return now - max(self.stall_since, self.closing_since or now)
            return 0.0
        state, now = self.state, self.shared.now
        if self.write_paused or state == TUNNEL:
            return now - self.stall_since
        if state == BUSY:
            cycle = self.cycle
            if cycle is None or cycle.request_done or self.paused:
                return 0.0  # the client owes nothing, or the proxy is not reading it
            return now - max(self.since, self.stall_since)
        if state == IDLE and unsent_bytes(self.transport.get_extra_info("socket")) > 0:
            return now - self.since
        return 0.0

    def waiting(self) -> bool:
        """Whether the client waits for an answer that has not started (nothing of it sent)."""
        cycle = self.cycle
        return self.state == BUSY and cycle is not None and not cycle.response_started

    def closing(self) -> bool:
        transport = self.transport
        return transport is None or transport.is_closing() or self.state == CLOSED

    def cut(self) -> None:
        """Close this connection for another tenant's (admission.py): a reset."""
        reset(self.transport.get_extra_info("socket"))
        self.abort()

    def drain(self) -> None:
        """Stop keep-alive: close now if idle, else after the current response. An idle
        connection closes lingering: a request the client sent meanwhile must meet an orderly
        close (which its client may retry), not a reset."""
        if self.state == IDLE or (self.state == HEAD and self.cycle is None):
            self._close()
        else:
            self.close_after = True

    def abort(self) -> None:
        self.state = CLOSED
        self.transport.abort()
        up = self.up
        if up is not None:
            self.up = None
            up.client = None
            self.decouple()
            up.close()

    def _replay(self) -> None:
        events = self.backlog
        self.backlog = None
        begin = self._begin
        for i, (fn, *args) in enumerate(events):
            if fn == begin:
                if self.cycle is not None:
                    self.backlog = events[i:]
                    return
                self.queued -= 1
            try:
                fn(*args)
            except Reject as exc:
                self._reject(exc.status, exc.detail)
                return
            if self.state == CLOSED or self.state == LINGER:
                return
        if self.chunkbuf is not None:
            self._flush_body()
        self.resume_reading_for(PIPELINE)
        if self.parser_done and self.cycle is None:
            self._close()

    def _reparse_held(self) -> None:
        """The upstream did not switch protocols: what the client sent after its request is
        the next request(s), read by a fresh parser (the old one stopped at the switch)."""
        held = self.held
        self.held = None
        self.parser = httptools.HttpRequestParser(self)
        self.mid_head = self.in_body = False
        self.resume_reading_for(HELD)
        if held:
            self.state = HEAD
            # Here parser_done can only mean the client half-closed (a request that closes
            # the connection ends it before its held bytes matter): what it sent before is
            # read and answered all the same.
            self.parser_done = False
            self.data_received(bytes(held))
            if self.eof and self.state < TUNNEL:
                self.parser_done = True
                cycle = self.cycle
                if cycle is None or not cycle.request_done:
                    self._close()  # nothing complete, and nothing more will come
        elif self.parser_done:
            self._close()

    def _finish_cycle(self) -> None:
        """Count and log the current request once; the connection is then between requests."""
        cycle = self.cycle
        if cycle is None:
            return
        self.cycle = None
        shared = self.shared
        tenant = self.tenant
        counters = tenant.counters or tenant.metrics
        counters.requests += 1
        status = cycle.status
        counters.codes[status // 100 % 10] += 1
        https = self.scheme == b"https"  # the index of metrics.PROTOCOLS
        counters.received[https] += cycle.body_in
        counters.sent[https] += cycle.bytes_out
        if status >= 400 and (status >= 500 or cycle.local):
            counters.errors += 1
        access = shared.access_log
        if access is not None:
            access.request(self, cycle, shared.loop_time() - cycle.t_start)
