"""The request-head policy: what of a client's request head reaches the upstream, and how.

Given a complete, llhttp-validated head, :func:`forwarded_fields` decides the framing of the
body (RFC 9112 6), the target host (RFC 9112 3.2), whether a protocol switch is forwarded, and
which fields are copied. The rules an operator can rely on (src/nsproxy/README.md, "What the
upstream receives"):

- the body is framed exactly as the proxy read it: ``Content-Length`` is re-sent as the number
  the proxy counted, ``Transfer-Encoding: chunked`` as the coding it decoded; nothing a client
  sends (a ``Connection`` token, a look-alike name) can remove or alter them;
- hop-by-hop fields (RFC 9110 7.6.1) are removed, and so are fields a ``Connection`` header
  names, except framing, ``Host`` and the proxy's own fields, whose nomination is ignored;
- the identity fields the proxy vouches for are always its own: client fields named like them,
  or like identity a proxy usually sets (``X-Real-IP``, ``Forwarded``, any ``X-Forwarded-*``
  or ``X-Nsproxy-*``), in any spelling a server folds to the same name (case, and every
  character but letters and digits as one separator: ``wire.identity_spelling``), are dropped,
  as are such look-alikes of the framing and hop-by-hop fields;
- ``Upgrade`` is forwarded only for the tokens in ``wire.UPGRADE_ALLOWED``.
"""

from __future__ import annotations

import itertools

import httptools

from nsproxy.http.wire import (
    FOLD,
    HOP_BY_HOP,
    PROTECTED,
    UPGRADE_ALLOWED,
    Reject,
    connection_tokens,
    is_identity_header,
)

# Request fields handled by the proxy rather than copied (value: a small code).
_HOST, _LENGTH, _CODING, _CONNECTION, _DROP, _EXPECT, _UPGRADE = range(7)
SPECIAL = {
    b"host": _HOST,
    b"content-length": _LENGTH,
    b"transfer-encoding": _CODING,
    b"connection": _CONNECTION,
    b"expect": _EXPECT,
    b"upgrade": _UPGRADE,
    b"keep-alive": _DROP,
    b"proxy-connection": _DROP,
    b"te": _DROP,
    b"trailer": _DROP,
    b"x-forwarded-for": _DROP,
    b"x-forwarded-proto": _DROP,
    b"x-forwarded-host": _DROP,
    b"x-nsproxy-tenant": _DROP,
    b"forwarded": _DROP,
    b"x-real-ip": _DROP,
}
assert SPECIAL.keys() >= HOP_BY_HOP

# The characters of RFC 3986 3.2.2 host (reg-name, IP-literal) and port: what Host may hold.
# (Checked by deleting them, in C: a regular expression cost more than the routing.)
_HOST_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=%:[]"
_ALWAYS_CONNECTION = frozenset((b"close", b"keep-alive", b"upgrade"))
_flatten = itertools.chain.from_iterable


def forwarded_fields(cycle, meta: tuple, limits: dict) -> list[bytes]:
    """Check the complete request head held by ``cycle`` and decide how it is forwarded.

    ``meta`` is (method, version, keep_alive, should_upgrade) as llhttp read them. Sets the
    cycle's method, version, keep_alive, host, url, length, chunked, expect and upgrade.
    Returns the header lines to copy, as byte pieces to join (the proxy adds the request
    line, Host, its identity fields and the framing it decided).
    Raises :class:`Reject` with the status to answer: 400 malformed, 405 CONNECT, 413 body
    over ``max_body_bytes``, 417 unknown expectation, 431 head over ``max_headers`` or
    ``max_header_bytes``, 501 transfer coding other than chunked, 505 HTTP version.
    """
    headers = cycle.headers
    if len(headers) > limits["max_headers"]:
        raise Reject(431, "more request headers than max_headers")
    method, version, keep_alive, should_upgrade = meta
    if version != "1.1" and version != "1.0":
        raise Reject(505, f"HTTP/{version} is not supported (HTTP/1.1 and HTTP/1.0 are)")
    if method == b"CONNECT":
        raise Reject(405, "CONNECT is not supported by a reverse proxy")
    cycle.method = method
    cycle.version = version
    cycle.keep_alive = keep_alive
    out: list[bytes] = []
    extend = out.extend
    host = None
    connection = None
    upgrade = None
    special = SPECIAL
    for name, value in headers:
        # The name as the most folding server reads it (wire.identity_spelling), one C call.
        folded = name.translate(FOLD)
        code = special.get(folded)
        if code is None:
            if folded[0] != 120 or not is_identity_header(folded):  # 120: "x"
                extend((name, b": ", value, b"\r\n"))
        elif name.lower() != folded:
            # A look-alike of a field the proxy handles (``Content_Length``, ``X.Real.IP``):
            # llhttp did not read it as that field, a folding server would. Dropped.
            continue
        elif code == _HOST:
            if host is not None:
                raise Reject(400, "more than one Host header")
            host = value.strip(b" \t")
        elif code == _LENGTH:
            # llhttp has checked the digits and refused a second, different value.
            cycle.length = int(value)
        elif code == _CODING:
            if cycle.chunked or value.strip(b" \t").lower() != b"chunked":
                raise Reject(501, "only Transfer-Encoding: chunked is supported")
            cycle.chunked = True
        elif code == _CONNECTION:
            connection = [value] if connection is None else [*connection, value]
        elif code == _EXPECT:
            if value.strip(b" \t").lower() != b"100-continue":
                raise Reject(417, "only Expect: 100-continue is supported")
            cycle.expect = True
        elif code == _UPGRADE:
            upgrade = value.strip(b" \t").lower()
    # Names and values summed in C: a Python loop here cost more than the routing.
    size = len(cycle.url) + 4 * len(headers) + sum(map(len, _flatten(headers)))
    if size > limits["max_header_bytes"]:
        raise Reject(431, "request head larger than max_header_bytes")
    if cycle.chunked:
        if cycle.length is not None:
            raise Reject(400, "both Content-Length and Transfer-Encoding")
        if version == "1.0":  # RFC 9112 6.1: faulty, the framing cannot be trusted
            raise Reject(400, "Transfer-Encoding in an HTTP/1.0 request")
    if connection is not None:
        nominated = connection_tokens(connection) - _ALWAYS_CONNECTION - PROTECTED
        if nominated:
            out = _without(out, nominated)
    if should_upgrade and upgrade in UPGRADE_ALLOWED:
        cycle.upgrade = upgrade
    url = cycle.url
    if url[:1] != b"/":
        if url[:7].lower() == b"http://" or url[:8].lower() == b"https://":
            # RFC 9112 3.2.2: the authority of an absolute-form target replaces Host.
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise Reject(400, "invalid request target") from None
            if parsed.userinfo:
                raise Reject(400, "userinfo in the request target")
            host = parsed.host
            if b":" in host:  # an IPv6 literal: llhttp gives it without its brackets
                host = b"[" + host + b"]"
            if parsed.port:
                host += b":%d" % parsed.port
            url = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
            cycle.url = url
        elif not (url == b"*" and method == b"OPTIONS"):
            raise Reject(400, "invalid request target")
    if host is None:
        if version != "1.0":
            raise Reject(400, "missing Host header")
        host = b""
    elif host.translate(None, _HOST_CHARS):  # anything left is not allowed in a host
        raise Reject(400, "invalid Host header")
    cycle.host = host
    max_body = limits["max_body_bytes"]
    if max_body is not None and cycle.length is not None and cycle.length > max_body:
        raise Reject(413, "request body larger than max_body_bytes")
    return out


def _without(pieces: list[bytes], nominated: set[bytes]) -> list[bytes]:
    """The forwarded lines (name, ": ", value, CRLF groups) minus the nominated names."""
    kept = []
    for i in range(0, len(pieces), 4):
        if pieces[i].lower() not in nominated:
            kept.extend(pieces[i : i + 4])
    return kept
