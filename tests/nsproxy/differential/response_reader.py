"""The client's reading of what the proxy sent back: responses in order, strictly framed.

Hand-written rather than h11's client role: h11 refuses every transfer coding but chunked,
and a response that keeps ``Transfer-Encoding: gzip, chunked`` is one of the right answers this
suite has to accept (RFC 9112 section 6.3, RFC 9110 section 8.4). It is strict where a proxy has
no excuse (CRLF line ends, no obs-fold, one Content-Length), since every byte here was written by
the proxy itself.

Used by ``client_agent.py`` (to know when a session is over) and by ``invariants.py``.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) [^\r\n]*")
_FIELD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\r\n]*?)[ \t]*")


@dataclass
class Response:
    """One final response (1xx other than 101 are counted, not kept)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes  # transfer codings removed
    complete: bool
    framing: str = "none"  # "length", "chunked", "close" (ends with the connection) or "none"

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def tokens(self, name: bytes) -> list[bytes]:
        """Comma-separated values of every ``name`` header, lower case."""
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return [t.strip().lower() for v in values for t in v.split(b",") if t.strip()]

    @property
    def closing(self) -> bool:
        return b"close" in self.tokens(b"connection")


@dataclass
class ResponseStream:
    responses: list[Response] = field(default_factory=list)
    interim: int = 0  # 1xx responses skipped
    error: str | None = None  # bytes that are no valid response where one was due
    tunnel: bytes | None = None  # bytes after a 101 head (the switched protocol)

    @property
    def complete_count(self) -> int:
        return sum(1 for r in self.responses if r.complete)


def read_responses(buf: bytes, methods: list[str], eof: bool) -> ResponseStream:
    """Read ``buf`` as the responses to requests of ``methods`` (in order; HEAD answers have
    no body). ``eof``: the connection ended, so a close-delimited body is complete."""
    out = ResponseStream()
    pos = 0
    while pos < len(buf):
        head_end = buf.find(b"\r\n\r\n", pos)
        if head_end < 0:
            if eof or len(buf) - pos > 65536:
                out.error = f"a response head that never ends: {buf[pos:][:80]!r}"
            return out
        lines = buf[pos:head_end].split(b"\r\n")
        status_line = _STATUS.fullmatch(lines[0])
        if not status_line:
            out.error = f"not a status line: {lines[0][:80]!r}"
            return out
        headers = []
        for line in lines[1:]:
            m = _FIELD.fullmatch(line)
            if not m:
                out.error = f"not a header line: {line[:80]!r}"
                return out
            headers.append((m.group(1), m.group(2)))
        pos = head_end + 4
        status = int(status_line.group(1))
        if 100 <= status < 200 and status != 101:
            out.interim += 1
            continue
        k = len(out.responses)
        method = methods[k] if k < len(methods) else "GET"
        response = Response(status, headers, b"", True)
        out.responses.append(response)
        if status == 101:
            out.tunnel = buf[pos:]
            return out
        try:
            pos = _read_body(response, buf, pos, method, eof)
        except ValueError as exc:
            out.error = f"response {k + 1} ({status}): {exc}"
            return out
        if not response.complete:
            return out
    return out


def _read_body(response: Response, buf: bytes, pos: int, method: str, eof: bool) -> int:
    """Fill ``response.body`` from ``buf[pos:]`` as RFC 9112 section 6.3 frames it; the
    position after the body. Raises ValueError for framing no client could follow."""
    if method == "HEAD" or response.status in (204, 304):
        return pos
    codings = response.tokens(b"transfer-encoding")
    if codings:
        if codings[-1] == b"chunked":
            response.framing = "chunked"
            body, pos = _dechunk(buf, pos)
            codings = codings[:-1]
            if body is None:
                response.complete = False
                return pos
        else:  # rule 4: no chunked at the end, the body ends at the close
            response.framing = "close"
            body, pos, response.complete = buf[pos:], len(buf), eof
        response.body = _decode(body, codings) if response.complete else body
        return pos
    lengths = {v.strip() for n, v in response.headers if n.lower() == b"content-length"}
    if lengths:
        if len(lengths) > 1 or not next(iter(lengths)).isdigit():
            raise ValueError(f"Content-Length {sorted(lengths)!r}")
        end = pos + int(next(iter(lengths)))
        response.framing = "length"
        response.body = buf[pos:end]
        response.complete = len(buf) >= end
        return min(end, len(buf))
    response.framing = "close"
    response.body, response.complete = buf[pos:], eof  # rule 8: until the close
    return len(buf)


def _dechunk(buf: bytes, pos: int) -> tuple[bytes | None, int]:
    """(body, position after the chunked body) or (None, len(buf)) while incomplete."""
    body = bytearray()
    while True:
        nl = buf.find(b"\r\n", pos)
        if nl < 0:
            return None, len(buf)
        m = re.fullmatch(rb"([0-9a-fA-F]{1,16})(;[^\r\n]*)?", buf[pos:nl])
        if not m:
            raise ValueError(f"bad chunk size line {buf[pos:nl][:40]!r}")
        size = int(m.group(1), 16)
        pos = nl + 2
        if size == 0:
            while True:  # trailer section, ended by an empty line
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    return None, len(buf)
                if nl == pos:
                    return bytes(body), nl + 2
                pos = nl + 2
        if len(buf) < pos + size + 2:
            return None, len(buf)
        if buf[pos + size : pos + size + 2] != b"\r\n":
            raise ValueError("chunk data not followed by CRLF")
        body += buf[pos : pos + size]
        pos += size + 2


def _decode(body: bytes, codings: list[bytes]) -> bytes:
    """Undo the transfer codings left after chunked (RFC 9110 section 8.4.1), last first."""
    for coding in reversed(codings):
        if coding in (b"gzip", b"x-gzip"):
            try:
                body = zlib.decompress(body, wbits=31)
            except zlib.error as exc:
                raise ValueError(f"gzip coding that does not decode: {exc}") from None
        elif coding != b"identity":
            raise ValueError(f"transfer coding {coding!r} no client can undo")
    return body
