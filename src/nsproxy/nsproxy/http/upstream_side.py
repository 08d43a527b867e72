"""The upstream side of the HTTP path: one keep-alive connection to an upstream server.

It parses the upstream's responses (llhttp via httptools), bounds everything it reads before the
body (raw head bytes, header count, interim responses, trailers), frames the body per RFC 9112
6.3 (``response_head``) and hands the pieces to the client connection it serves. It goes back
to its upstream's pool only when its state is fully known: the response ended exactly at the end
of the bytes read, the request was completely sent, the connection may be kept alive, and no
protocol switch happened. Anything else closes it.
"""

from __future__ import annotations

import logging

import httptools

from nsproxy import traffic_log
from nsproxy.buffering import HIGH_WATER
from nsproxy.http.flow import CHUNKS_PER_TURN, Flow
from nsproxy.http.response_head import (
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    ResponseFault,
    body_framing,
)
from nsproxy.http.wire import HEAD_END, HOP_BY_HOP, PROTECTED, PartialHead, connection_tokens

#: Interim (1xx) responses accepted before the final one, per request.
MAX_INTERIM = 16
#: Bytes of chunk framing (size line, extensions, CRLFs) allowed per chunk without counting.
CHUNK_LINE = 64

# Response header names that need a case-insensitive look: those as long as a hop-by-hop one
# or as Content-Length (most names are skipped by their length alone).
_LOOK_AT = HOP_BY_HOP | {b"content-length"}
_LOOK_LENGTHS = frozenset(map(len, _LOOK_AT))
_ALWAYS_CONNECTION = frozenset((b"close", b"keep-alive", b"upgrade"))
_PLAIN_CONNECTION = frozenset((b"close", b"keep-alive", b"upgrade"))  # values naming no field


# What a 101 must carry (RFC 9110 section 7.8): an Upgrade field, and "upgrade" in Connection.
# llhttp switches on exactly these two; without either it reads on as HTTP.
_UPGRADE_FIELD, _CONNECTION_UPGRADE = 1, 2


class _AfterResponse(Exception):
    """Raised from a parser callback to stop at bytes that follow a complete response."""


class UpstreamConnection(Flow):
    """One connection to an upstream server, owned by one tenant's ``Upstream`` pool."""

    # Slots: less memory per connection and faster attribute access in the hot path.
    __slots__ = (
        "chunks",
        "client",
        "closed",
        "codings",
        "connection_values",
        "done",
        "extra",
        "has_length",
        "head_bytes",
        "head_only",
        "idle_since",
        "in_head",
        "keep",
        "last_io",
        "lines",
        "mid_head",
        "parser",
        "partial",
        "pooled_at",
        "reason",
        "reused",
        "server",
        "server_label",
        "sock",
        "status",
        "switch_fields",
        "switching",
        "trailer_bytes",
        "unaccounted",
        "tunnel",
        "until_close",
        "upstream",
    )

    def __init__(self, upstream):
        Flow.__init__(self)
        self.upstream = upstream
        self.client = None
        self.parser = httptools.HttpResponseParser(self)
        self.server = None  # upstream.Server, set by Upstream.connect
        self.server_label = "-"
        self.sock = None  # the socket object, for a liveness peek before reuse
        self.closed = False
        self.tunnel = False
        self.reused = False
        self.idle_since = 0.0  # coarse clock (shared.now): expiry by the sweep
        self.pooled_at = 0.0  # precise clock (shared.loop_time): reuse for safe requests
        self.last_io = 0.0
        self.mid_head = False  # the parser holds part of a head
        self.partial = None  # PartialHead: a response head that arrives in pieces
        self.extra = False  # bytes came after a complete response
        self.switching = False  # the response is a 101 to a forwarded upgrade
        self.keep = False
        self.until_close = False
        self.status = 0
        self.trailer_bytes = 0
        self.unaccounted = 0  # body bytes not (yet) seen as data, trailers or chunk lines
        self.chunks = 0  # body chunks parsed since the loop last had a turn (see YIELD)
        self.start_exchange(False)
        self._new_head()

    def start_exchange(self, head_only: bool) -> None:
        """Get ready for the response to a new request (``head_only``: a HEAD request). Only
        what a pooled connection can have changed is reset: a connection that saw extra
        bytes, a fault or a protocol switch is never pooled."""
        self.head_only = head_only
        self.in_head = True  # no final response head yet
        self.head_bytes = 0  # also: 0 means no byte of this response has arrived
        self.done = False

    def _new_head(self) -> None:
        self.lines = [b""]  # the status line (made by the client side), then header lines
        self.has_length = False
        self.codings = None
        self.connection_values = None
        self.switch_fields = 0  # _UPGRADE_FIELD | _CONNECTION_UPGRADE seen in this head
        self.reason = b""

    def usable(self) -> bool:
        return not self.closed and not self.transport.is_closing()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    # -- asyncio.Protocol -----------------------------------------------------------------
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
            self.decouple()
            if self.until_close and not self.in_head and not self.done:
                client.response_done(False)  # the body ended with the connection: complete
            else:
                # (nothing of the response arrived: the request may be sent again)
                client.upstream_lost(str(exc) if exc else "connection closed", self.head_bytes)

    def eof_received(self):
        if self.tunnel and self.client is not None:
            self.client.tunnel_eof()
            return True  # the other direction may still carry bytes
        return False

    def share(self):
        client = self.client  # None in the pool: bytes there end the connection, uncharged
        return None if client is None else client.tenant.share

    def data_received(self, data):
        self.last_io = self.upstream.shared.now
        client = self.client
        if client is None:
            self.close()  # bytes while idle in the pool: its state is unknown now
            return
        if self.tunnel:
            client.moved += len(data)  # the tunnel's progress (admission's stalled connections)
            client.transport.write(data)
            return
        in_head = self.in_head
        if not in_head:
            self.unaccounted += len(data)
        else:
            self.head_bytes += len(data)
            partial = self.partial
            if partial is not None:
                data = partial.add(data)
                if data is None:
                    if self.head_bytes > client.shared.limits["max_response_header_bytes"]:
                        self._fault(ResponseFault("response head larger than the limit"))
                    return
                self.partial = None
        client.wbuf = []
        fault = None
        try:
            if self.head_only and self.in_head:
                self._feed_heads_of_head_response(data)
            else:
                self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self.switching and self.client is not None:
                self.tunnel = True
                self.client.start_tunnel(data[exc.args[0] :])
            else:
                fault = ResponseFault("protocol switch that was not asked for")
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, ResponseFault):
                fault = cause
            elif not isinstance(cause, _AfterResponse):
                client = self.client
                if client is not None:
                    traffic_log.line(client.tenant, logging.ERROR, "upstream %s: internal error",
                                     self.upstream.name, exc_info=cause)  # fmt: skip
                fault = ResponseFault("internal error reading the response")
        except httptools.HttpParserError as exc:
            if self.done:
                self.extra = True  # not a response: bytes after the complete one
            else:
                fault = ResponseFault(f"invalid response: {exc}")
        if fault is not None:
            client.flush()
            self._fault(fault)
        elif self.done:
            # The response is complete: the client writes what was batched, once.
            if not self.keep or self.extra or self.until_close:
                self.client = None
                self.decouple()
                self.close()
                client.response_done(False)
            else:
                client.response_done(True)
        elif self.in_head:
            client.flush()
            if self.head_bytes > client.shared.limits["max_response_header_bytes"]:
                self._fault(ResponseFault("response head larger than max_response_header_bytes"))
            elif self.mid_head:  # the rest of this head is collected before the parser sees it
                self.partial = PartialHead(data[-3:])
        else:
            client.flush()
            # Body bytes the parser reported as nothing: chunk-size lines and their extensions
            # beyond CHUNK_LINE each (llhttp skips those without a limit). Bound them.
            if self.unaccounted > client.shared.limits["max_response_header_bytes"]:
                self._fault(ResponseFault("chunk extensions too long"))
            elif self.unaccounted < 0:
                self.unaccounted = 0
        if self.chunks > CHUNKS_PER_TURN:
            self.chunks = 0
            self.yield_turn()

    def _feed_heads_of_head_response(self, data) -> None:
        """A response to HEAD ends with its head, whatever its Content-Length says, which
        llhttp cannot be told: feed it exactly one head at a time (1xx ones first), so that
        any byte after the final head is known to be extra."""
        fed = 0  # bytes of ``data`` fed before the current head
        while data:
            end = data.find(HEAD_END)
            if end < 0:
                self.partial = PartialHead(b"")
                self.partial.add(data)
                return
            try:
                self.parser.feed_data(data[: end + 4])
            except httptools.HttpParserUpgrade as exc:  # where the tunnel starts, in all of it
                raise httptools.HttpParserUpgrade(fed + exc.args[0]) from None
            fed += end + 4
            data = data[end + 4 :]
            if self.done:
                # llhttp still expects the body its Content-Length announced: a fresh parser
                # for the next exchange (nothing else was fed to it).
                self.parser = httptools.HttpResponseParser(self)
                if data:
                    self.extra = True
                return

    def _fault(self, fault: ResponseFault) -> None:
        client = self.client
        self.client = None
        self.decouple()
        self.close()
        if client is not None:
            self.upstream.failed_response(self, fault.detail)
            client.upstream_fault(fault.status, f"upstream {self.upstream.name}: {fault.detail}")

    # -- httptools callbacks --------------------------------------------------------------
    def on_message_begin(self):
        if self.done:
            self.extra = True
            raise _AfterResponse
        self.mid_head = True
        self._new_head()

    def on_status(self, reason):
        self.reason += reason

    def on_header(self, name, value):
        if not self.in_head:  # a trailer field: not forwarded, but bounded
            self._trailer(len(name) + len(value) + 4)
            return
        # Hop-by-hop fields are dropped here, as they arrive.
        if len(name) in _LOOK_LENGTHS:
            lname = name.lower()
            if lname in _LOOK_AT:
                if lname == b"content-length":
                    self.has_length = True
                elif lname == b"transfer-encoding":
                    self.codings = [value] if self.codings is None else [*self.codings, value]
                    return
                else:
                    if lname == b"connection":
                        lvalue = value.lower()
                        if b"upgrade" in lvalue and b"upgrade" in (
                            t.strip() for t in lvalue.split(b",")
                        ):
                            self.switch_fields |= _CONNECTION_UPGRADE
                        if lvalue not in _PLAIN_CONNECTION:
                            values = self.connection_values
                            self.connection_values = [value] if values is None else [*values, value]
                    elif lname == b"upgrade":
                        self.switch_fields |= _UPGRADE_FIELD
                    return
        self.lines.extend((name, b": ", value, b"\r\n"))

    def _trailer(self, size: int) -> None:
        self.unaccounted -= size
        self.trailer_bytes += size
        client = self.client
        if client is not None and (
            self.trailer_bytes > client.shared.limits["max_response_header_bytes"]
        ):  # fmt: skip
            raise ResponseFault("response trailers larger than max_response_header_bytes")

    def on_headers_complete(self):
        self.mid_head = False
        self.status = status = self.parser.get_status_code()
        client = self.client
        if client is None:
            return
        if status < 200:
            if status < 100:  # RFC 9110 15: status codes are 100-599; 0-99 is not HTTP
                raise ResponseFault(f"status {status} is not an HTTP status code")
            if status == 101:
                if client.cycle is None or client.cycle.upgrade is None:
                    raise ResponseFault("101 Switching Protocols without an upgrade request")
                if self.switch_fields != _UPGRADE_FIELD | _CONNECTION_UPGRADE:
                    raise ResponseFault(
                        "101 Switching Protocols without an Upgrade field and 'upgrade' in "
                        "Connection (RFC 9110 7.8)"
                    )
                self.switching = True
                self.in_head = False
                client.response_head(101, self.reason, self._lines(), NO_BODY, None)
                return
            if self.has_length or self.codings is not None:
                # RFC 9110 15.2 / 8.6, RFC 9112 6.1: a 1xx ends at its head and carries neither
                # field. llhttp reads a body after 104-199 that has them, where the client's
                # next hop would read the next response: the two readings cannot both hold.
                raise ResponseFault(f"interim {status} response with a body length")
            client.cycle.interim += 1
            if client.cycle.interim > MAX_INTERIM:
                raise ResponseFault(f"more than {MAX_INTERIM} interim (1xx) responses")
            if status != 100:  # 100 Continue answered the proxy's own Expect handling
                client.interim_response(status, self.reason, self._lines())
            return
        lines = self.lines
        # The field count is bounded here; until now the head's byte limit bounded it.
        if len(lines) > 4 * client.shared.limits["max_response_headers"]:
            raise ResponseFault("more response headers than max_response_headers")
        self.keep = self.parser.should_keep_alive()
        if self.codings is None and status != 204 and status != 304 and not self.head_only:
            kind, codings = (LENGTH if self.has_length else UNTIL_CLOSE), ()  # the usual case
        else:
            kind, codings = body_framing(status, self.head_only, self.codings, self.has_length)
        self.until_close = kind == UNTIL_CLOSE
        self.in_head = False
        if self.connection_values is not None:
            lines = self._lines()
        client.response_head(status, self.reason, lines, kind, codings)
        if self.head_only:
            self.done = True

    def _lines(self) -> list:
        """The header lines to forward: hop-by-hop ones are gone already; fields named by
        the upstream's Connection header go too (except framing and Host, RFC 9110 7.6.1)."""
        lines = self.lines
        if self.connection_values is not None:
            nominated = connection_tokens(self.connection_values) - _ALWAYS_CONNECTION - PROTECTED
            if nominated:
                kept = [lines[0]]
                for i in range(1, len(lines), 4):
                    if lines[i].lower() not in nominated:
                        kept.extend(lines[i : i + 4])
                lines = kept
        return lines

    def on_body(self, body):
        self.unaccounted -= len(body)
        if self.client is not None:
            self.client.response_body(body)

    def on_chunk_header(self):
        self.unaccounted -= CHUNK_LINE
        self.chunks += 1

    def on_message_complete(self):
        self.unaccounted = 0
        self.trailer_bytes = 0
        if self.in_head:  # an interim (1xx) response: the final one follows
            self._new_head()
            return
        if self.switching:  # 101: the tunnel starts in data_received
            return
        self.done = True
