"""Two readings of the byte stream an upstream received: a strict one and a lenient one.

The proxy's promise is about what the *next hop* executes, and next hops differ. The strict
reading is h11 (RFC 9112 as written). The lenient one is hand-written, because no library
sets out to be the worst real upstream: it honours Content-Length even beside
Transfer-Encoding, takes a bare ``\\n`` as a line end, accepts obs-fold, and reads header names
the way WSGI/CGI servers put them in the environ (``X_Nsproxy_Tenant`` and
``x-nsproxy-tenant`` both become ``HTTP_X_NSPROXY_TENANT``, PEP 3333 / RFC 3875 4.1.18).
A message the two readings disagree on is a message the proxy should not have forwarded.

Everything here is pure: bytes in, ``ParsedRequest`` lists out, bounded in size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import h11

MAX_HEAD = 64 * 1024  # a forwarded head larger than this is reported, not parsed


@dataclass
class ParsedRequest:
    """One request as a reader saw it. ``body`` is None when the stream ended inside it
    (the head was complete, so an upstream may already be executing it)."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes | None
    head: bytes = b""  # raw head bytes (lenient reader only)
    upgrade: bytes | None = None  # the Upgrade value when the request asks to switch
    version: str = "HTTP/1.1"

    @property
    def keeps_alive(self) -> bool:
        """Whether the connection may carry another request (RFC 9112 9.3)."""
        tokens = ",".join(v for n, v in self.headers if n.strip().lower() == "connection")
        tokens = {t.strip().lower() for t in tokens.split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    @property
    def path(self) -> str:
        return origin_form(self.target)


@dataclass
class Reading:
    """A reader's view of one connection: the requests, and why it stopped early, if it did."""

    requests: list[ParsedRequest] = field(default_factory=list)
    error: str | None = None  # a protocol error (not just the stream ending mid-message)


def origin_form(target: str) -> str:
    """A request target as a path: an absolute-form one loses its scheme and authority
    (RFC 9112 3.2.2)."""
    m = re.match(r"(?i)https?://[^/]*", target)
    return (target[m.end() :] or "/") if m else target


def wsgi_name(name: str | bytes) -> str:
    """The environ key a CGI-style server makes of a header name: surrounding whitespace
    dropped, upper case, and every character that is not an ASCII letter or digit as ``_``.
    That is lighttpd's mapping for CGI, FastCGI and SCGI applications (PHP among them), the
    most folding one known; PEP 3333 / RFC 3875 4.1.18 (``-`` as ``_``) and PHP (``.`` and
    space as ``_``) fold a subset of it."""
    if isinstance(name, bytes):
        name = name.decode("latin-1")
    folded = "".join(c if c.isascii() and c.isalnum() else "_" for c in name.strip().upper())
    return "HTTP_" + folded


def _text(b: bytes) -> str:
    return b.decode("latin-1")


# -- lenient ------------------------------------------------------------------------------------
class LenientError(Exception):
    """The bytes at the reader's position are not a request even to the lenient reader."""


def _lines(buf: bytes, pos: int, limit: int):
    """Lines from ``pos`` ending in ``\\n`` (a ``\\r`` before it dropped): (line, next pos)."""
    while True:
        end = buf.find(b"\n", pos, limit)
        if end < 0:
            return
        yield buf[pos:end].rstrip(b"\r"), end + 1
        pos = end + 1


def lenient_next(buf: bytes, pos: int, eof: bool) -> tuple[ParsedRequest | None, int]:
    """The next request at ``pos``: (request, position after it), or (None, pos) when more
    bytes are needed. At ``eof``, a request whose head is complete but body is not comes back
    with ``body=None``. Raises LenientError on bytes that are no request at all."""
    # Servers skip empty lines before a request line (RFC 9112 section 2.2); so does this one.
    while buf.startswith(b"\n", pos) or buf.startswith(b"\r\n", pos):
        pos += 1 if buf[pos] == 10 else 2
    limit = min(len(buf), pos + MAX_HEAD)
    lines = _lines(buf, pos, limit)
    first = next(lines, None)
    if first is None:
        if len(buf) - pos >= MAX_HEAD:
            raise LenientError(f"a request line longer than {MAX_HEAD} bytes")
        if eof and pos < len(buf):
            raise LenientError(f"the stream ends in a partial request line {buf[pos:][:60]!r}")
        return None, pos
    request_line, after = first
    parts = request_line.split()
    if len(parts) != 3 or not parts[2].upper().startswith(b"HTTP/"):
        raise LenientError(f"not a request line: {request_line[:80]!r}")
    headers: list[tuple[str, str]] = []
    head_end = None
    for line, after in lines:
        if not line.strip(b" \t"):
            head_end = after
            break
        if line[:1] in (b" ", b"\t") and headers:  # obs-fold: continues the previous value
            name, value = headers[-1]
            headers[-1] = (name, value + " " + _text(line.strip()))
        elif b":" in line:
            name, _, value = line.partition(b":")
            headers.append((_text(name), _text(value.strip())))
        # a line without a colon is skipped, as lenient servers do
    if head_end is None:
        if limit - pos >= MAX_HEAD:
            raise LenientError(f"a request head longer than {MAX_HEAD} bytes")
        if eof and pos < len(buf):
            raise LenientError("the stream ends inside a request head")
        return None, pos
    # Framing headers by name, case-insensitive, the first one winning. Unlike identity
    # (see wsgi_name), no server frames by an underscore spelling: framing parsers match
    # "content-length" itself.
    framing: dict[str, str] = {}
    for name, value in headers:
        framing.setdefault(name.strip().lower(), value)
    method, target, version = _text(parts[0]), _text(parts[1]), _text(parts[2]).upper()
    request = ParsedRequest(method, target, headers, None, head=buf[pos:head_end])
    request.version = version
    # An HTTP/1.0 request's Upgrade is ignored (RFC 9110 7.8).
    if (
        version != "HTTP/1.0"
        and "upgrade" in framing
        and "upgrade" in framing.get("connection", "").lower()
    ):
        request.upgrade = framing["upgrade"].encode("latin-1")
    body_start = head_end
    if "content-length" in framing:  # even beside Transfer-Encoding: the worst choice
        digits = re.match(r"\s*\+?(\d{1,12})", framing["content-length"])
        length = int(digits.group(1)) if digits else 0
        if len(buf) - body_start < length:
            return (request, len(buf)) if eof else (None, pos)
        request.body = buf[body_start : body_start + length]
        return request, body_start + length
    if "chunked" in framing.get("transfer-encoding", "").lower():
        body, end = _lenient_chunks(buf, body_start)
        if end is None:
            return (request, len(buf)) if eof else (None, pos)
        request.body = body
        return request, end
    request.body = b""
    return request, body_start


def _lenient_chunks(buf: bytes, pos: int) -> tuple[bytes, int | None]:
    """De-chunk from ``pos``: (body, end) or (partial body, None) when incomplete. Sizes are
    read as their leading hex digits (extensions and junk after them ignored)."""
    body = bytearray()
    while True:
        nl = buf.find(b"\n", pos)
        if nl < 0:
            return bytes(body), None
        m = re.match(rb"\s*([0-9a-fA-F]{1,16})", buf[pos:nl])
        if not m:
            raise LenientError(f"not a chunk size: {buf[pos:nl][:40]!r}")
        size = int(m.group(1), 16)
        pos = nl + 1
        if size == 0:
            for line, after in _lines(buf, pos, len(buf)):  # trailer section
                if not line.strip():
                    return bytes(body), after
            return bytes(body), None
        if len(buf) < pos + size:
            return bytes(body), None
        body += buf[pos : pos + size]
        pos += size
        nl = buf.find(b"\n", pos)  # the CRLF (or anything) closing the chunk data
        if nl < 0:
            return bytes(body), None
        pos = nl + 1


def lenient_reading(stream: bytes) -> Reading:
    """Every request of a complete connection stream, read leniently."""
    reading = Reading()
    pos = 0
    while pos < len(stream):
        try:
            request, pos = lenient_next(stream, pos, eof=True)
        except LenientError as exc:
            reading.error = str(exc)
            break
        if request is None:
            break
        reading.requests.append(request)
    return reading


# -- strict -------------------------------------------------------------------------------------
def strict_reading(stream: bytes) -> Reading:
    """Every request of a complete connection stream as h11 reads it. h11 plays the server:
    after each request it is told that a bodiless 200 went out, so that it reads the next."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    # No EOF is fed: a stream that stops inside a body then ends in NEED_DATA, with the request
    # left incomplete (the proxy may abort a request it refused). A stream that stops inside
    # a head is no request to either reader; the lenient one reports it.
    conn.receive_data(stream)
    reading = Reading()
    current: ParsedRequest | None = None
    body = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            reading.error = f"h11: {exc}"
            return reading
        if isinstance(event, h11.Request):
            headers = [(_text(n), _text(v)) for n, v in event.headers.raw_items()]
            current = ParsedRequest(_text(event.method), _text(event.target), headers, None)
            current.version = "HTTP/" + _text(event.http_version)
            reading.requests.append(current)
            body.clear()
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            current.body = bytes(body)
            done, current = current, None
            if conn.their_state is h11.MIGHT_SWITCH_PROTOCOL and not conn.trailing_data[0]:
                return reading  # the stream was cut where the upstream switched protocols
            conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
            conn.send(h11.EndOfMessage())
            if conn.our_state is h11.MUST_CLOSE:
                rest = conn.trailing_data[0]
                if rest and done.keeps_alive:
                    # HTTP/1.0 keep-alive, which h11 does not do (RFC 9112 9.3 allows it).
                    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
                    conn.receive_data(rest)
                    continue
                if rest:
                    reading.error = "h11: bytes after a request that closes the connection"
                return reading
            conn.start_next_cycle()
        elif event is h11.NEED_DATA or event is h11.PAUSED:
            return reading


# -- forwarding hygiene -------------------------------------------------------------------------
def hygiene(head: bytes) -> list[str]:
    """What in a forwarded request head a sender must not produce (RFC 9112 sections 2.2,
    5.2 and 6.3): bare LF, obs-fold, several Content-Length, Content-Length beside
    Transfer-Encoding, a Transfer-Encoding other than chunked."""
    problems = []
    lines = head.split(b"\r\n")
    if any(b"\n" in line or b"\r" in line for line in lines):
        problems.append("a line not ended by CRLF")
    names = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            problems.append(f"obs-fold line {line[:60]!r}")
        elif line:
            name, _, value = line.partition(b":")
            names.append((name.strip().lower(), value.strip().lower()))
    lengths = [v for n, v in names if n == b"content-length"]
    codings = [v for n, v in names if n == b"transfer-encoding"]
    if len(lengths) > 1:
        problems.append(f"{len(lengths)} Content-Length headers")
    if lengths and codings:
        problems.append("Content-Length beside Transfer-Encoding")
    if codings and codings != [b"chunked"]:
        problems.append(f"Transfer-Encoding {codings!r}")
    return problems
