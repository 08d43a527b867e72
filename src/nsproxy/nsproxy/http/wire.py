"""HTTP/1.1 wire facts shared by both sides of the proxy: reason phrases, the proxy's own
answers, and the header names it handles itself (RFC 9110, RFC 9112)."""

from __future__ import annotations

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
    505: b"HTTP Version Not Supported",
}

#: RFC 9110 9.2.2: the methods whose intended effect is the same however often they are sent.
#: Only these are ever sent to an upstream a second time.
IDEMPOTENT_METHODS = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))

#: Hop-by-hop fields (RFC 9110 7.6.1): never forwarded as received, in either direction.
HOP_BY_HOP = frozenset(
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

#: Fields whose meaning the proxy itself decides: a ``Connection`` header that names one of
#: them is ignored for that name (the field is neither removed nor trusted because a peer said
#: so). Framing (Content-Length, Transfer-Encoding), routing (Host) and the identity the proxy
#: sets are never up to the client.
PROTECTED = frozenset((b"content-length", b"transfer-encoding", b"host", b"connection"))

#: Upgrade tokens forwarded to the upstream. After a protocol switch the proxy relays opaque
#: bytes and can no longer vouch for the tenant header, so only protocols that cannot carry
#: further HTTP requests are allowed: ``h2c`` would carry HTTP/2 requests with any headers
#: (the "h2c smuggling" attack), so it and every unknown token are removed and the request is
#: served as a plain request.
UPGRADE_ALLOWED = frozenset((b"websocket",))


#: ``bytes.translate`` table of :func:`identity_spelling`: ASCII letters in lower case, digits
#: kept, every other byte as ``-``.
FOLD = bytes(
    c + 32 if 65 <= c <= 90 else c if 48 <= c <= 57 or 97 <= c <= 122 else 45 for c in range(256)
)


def identity_spelling(name: bytes) -> bytes:
    """The header name as the most folding server sees it: lower case, and every character
    that is not an ASCII letter or digit as ``-``.

    CGI/WSGI (RFC 3875 4.1.18, PEP 3333), Rack and PHP map a field to ``HTTP_`` + upper case
    with ``-`` and ``_`` both becoming ``_``; lighttpd does the same with every character that
    is not a letter or digit for its CGI, FastCGI and SCGI applications (PHP among them), and
    PHP itself turns ``.`` and space into ``_``. So ``X_Nsproxy_Tenant``, ``x.real.ip`` and
    ``X~Forwarded~For`` reach an application as the proxy's own fields would. Two names with
    the same spelling here are the same variable to some server."""
    return name.translate(FOLD)


def is_identity_header(folded: bytes) -> bool:
    """Whether a client field (folded by :func:`identity_spelling`) could be read upstream as
    identity the proxy vouches for, or as identity a proxy usually sets: the tenant header and
    anything else named ``X-Nsproxy-*``, the ``X-Forwarded-*`` family (``-For``, ``-Proto``,
    ``-Host``, ``-Port``, ``-Ssl``, ...), ``Forwarded`` (RFC 7239) and ``X-Real-IP``. Such
    fields from clients are dropped."""
    return (
        folded.startswith((b"x-nsproxy-", b"x-forwarded-"))
        or folded == b"forwarded"
        or folded == b"x-real-ip"
    )


def local_response(status: int, detail: str, close: bool = True, head: bool = False) -> bytes:
    """A complete response the proxy answers itself: ``status``, a one-line plain text body
    naming ``detail`` (only its length for a HEAD request, ``head``, RFC 9110 9.3.2), and
    ``Connection: close`` when ``close``."""
    reason = REASONS.get(status, b"Error")
    body = f"{status} {reason.decode()}: {detail}\n".encode()
    return b"".join(
        (
            b"HTTP/1.1 %d %b\r\n" % (status, reason),
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body),
            b"Connection: close\r\n\r\n" if close else b"\r\n",
            b"" if head else body,
        )
    )


def connection_tokens(values: list[bytes]) -> set[bytes]:
    """The lower-case tokens of one or more ``Connection`` field values (RFC 9110 7.6.1)."""
    tokens = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return tokens


class Reject(Exception):
    """A request the proxy answers itself with ``status``; ``detail`` names the reason (it is
    logged and sent in the body). Raised inside parser callbacks and the request-head policy."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


HEAD_END = b"\r\n\r\n"


class PartialHead:
    """A message head that arrived in pieces: the rest is collected here until its end
    (CRLF CRLF) has arrived, then handed to the parser at once.

    Feeding llhttp piece by piece makes httptools grow a header value by concatenation,
    quadratic in the number of pieces. A head read whole in one piece (the usual case) never
    comes here. A blank line ending in a bare LF (which llhttp refuses) also ends the head, so
    that such a head is refused at once rather than waited for."""

    __slots__ = ("buf", "fed")

    def __init__(self, fed_tail: bytes):
        # The last bytes already given to the parser: an end split across reads is found.
        self.buf = bytearray(fed_tail)
        self.fed = len(fed_tail)

    def add(self, data) -> bytes | None:
        """Collect ``data``; the bytes to give the parser now that the head ended, or None."""
        buf = self.buf
        start = max(0, len(buf) - 3)
        buf += data
        if buf.find(HEAD_END, start) < 0 and buf.find(b"\n\n", start) < 0:
            return None
        return bytes(buf[self.fed :])
