"""Hypothesis strategies over the risky parts of HTTP/1.1 client messages.

Only the parts where proxies and servers are known to disagree are varied; the rest of each
request is plain, so that a failure points at what mattered:
  * Connection tokens, including the framing headers and the headers the proxy sets;
  * Upgrade (with or without ``Connection: upgrade``), any token;
  * body framing: Content-Length forms (duplicates, lists, signs, padding, spacing),
    Transfer-Encoding forms (case, lists, duplicates, non-chunked codings, beside
    Content-Length), chunk-size spellings, trailers; bodies that are themselves requests;
    bodies larger than the proxy's max_body_bytes;
  * Expect;
  * the identity headers (X-Nsproxy-Tenant, X-Forwarded-*, Forwarded) in the spellings server
    frameworks fold into the same name, with stray whitespace, bare LF, or hidden in obs-fold;
  * how the bytes are written: several requests in one write (pipelining), or one at a time;
    a half-close after the last request;
  * how the upstream answers each request (upstream_behaviour.BEHAVIOURS).
"""

from __future__ import annotations

from hypothesis import strategies as st
from model import EXAMPLE_ID, TENANTS, Example, Request, Session
from upstream_behaviour import BEHAVIOURS

MAX_BODY_BYTES = 65536  # the lab's limits.max_body_bytes; OVERSIZE bodies exceed it
OVERSIZE = (70_000, 300_000)
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
CONNECTION_TOKENS = (
    "close",
    "keep-alive",
    "upgrade",
    "Content-Length",
    "content-length",
    "Transfer-Encoding",
    "Host",
    "X-Nsproxy-Tenant",
    "x-forwarded-for",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "TE",
    "Expect",
    "Upgrade",
    "x-custom",
)
UPGRADE_TOKENS = ("websocket", "h2c", "WebSocket", "foo/1.0", "TLS/1.2")
EXPECT_VALUES = ("100-continue", "100-continue", "100-Continue", "nothing")
# Spellings that a WSGI/CGI environ (PEP 3333, RFC 3875 4.1.18), lighttpd's CGI/FastCGI
# environment (every character but letters and digits as "_"), PHP ("." and " " as "_") or a
# case-insensitive lookup maps to the proxy's own headers, or to identity headers it does not
# set (X-Real-IP, X-Forwarded-Port), which an application then takes for the proxy's.
IDENTITY_SPELLINGS = {
    "tenant": ("X-Nsproxy-Tenant", "x-nsproxy-tenant", "X-NSPROXY-TENANT", "X_Nsproxy_Tenant",
               "x_nsproxy_tenant", "X-Nsproxy_Tenant", "X.Nsproxy.Tenant", "X~Nsproxy~Tenant"),
    "for": ("X-Forwarded-For", "x-forwarded-for", "X_Forwarded_For", "X.Forwarded.For"),
    "host": ("X-Forwarded-Host", "X_Forwarded_Host", "X|Forwarded|Host"),
    "proto": ("X-Forwarded-Proto", "x_forwarded_proto", "X+Forwarded+Proto"),
    "forwarded": ("Forwarded", "forwarded"),
    "real-ip": ("X-Real-IP", "X_Real_IP", "X.Real.IP"),
    "port": ("X-Forwarded-Port", "X!Forwarded!Port"),
}  # fmt: skip
FORGED_VALUES = {
    "for": "6.6.6.6",
    "host": "evil.example",
    "proto": "https",
    "forwarded": "for=6.6.6.6;proto=https",
    "real-ip": "6.6.6.6",
    "port": "8443",
}
# Each tuple lists the plain choice first (where shrinking goes) and repeats the choices that
# a proxy must carry through, so that most requests get past its parser and reach the parts
# that are judged downstream; the ones a proxy must refuse come less often.
SEPARATORS = (": ", ": ", ": ", ":", ":\t", " : ")  # the last is invalid (RFC 9112 5.1)
EOLS = (b"\r\n",) * 5 + (b"\n",)  # a bare LF is invalid (RFC 9112 2.2)


def other_tenant(tenant: str) -> str:
    return next(t for t in TENANTS if t != tenant)


@st.composite
def identity_line(draw, tenant: str) -> bytes:
    """A header line (with its line end) that some server reads as an identity header."""
    which = draw(st.sampled_from(tuple(IDENTITY_SPELLINGS)))
    name = draw(st.sampled_from(IDENTITY_SPELLINGS[which]))
    value = other_tenant(tenant) if which == "tenant" else FORGED_VALUES[which]
    sep = draw(st.sampled_from(SEPARATORS))
    return (name + sep + value).encode() + draw(st.sampled_from(EOLS))


ELEMENT_KINDS = ("connection",) * 3 + ("upgrade",) * 2 + ("identity",) * 3 + ("fold", "expect")


@st.composite
def header_element(draw, tenant: str) -> list[bytes]:
    """One risky header (or two that go together), as raw lines."""
    kind = draw(st.sampled_from(ELEMENT_KINDS))
    if kind == "connection":
        tokens = draw(st.lists(st.sampled_from(CONNECTION_TOKENS), min_size=1, max_size=3))
        sep = draw(st.sampled_from((", ", ",", " , ")))
        name = draw(st.sampled_from(("Connection", "connection")))
        return [f"{name}: {sep.join(tokens)}\r\n".encode()]
    if kind == "upgrade":
        token = draw(st.sampled_from(UPGRADE_TOKENS))
        lines = [f"Upgrade: {token}\r\n".encode()]
        if draw(st.booleans()):
            lines.insert(0, b"Connection: Upgrade\r\n")
        return lines
    if kind == "identity":
        return [draw(identity_line(tenant))]
    if kind == "fold":  # obs-fold: a continuation line that reads as a header on its own
        return [b"X-Note: a\r\n " + draw(identity_line(tenant))]
    return [f"Expect: {draw(st.sampled_from(EXPECT_VALUES))}\r\n".encode()]


@st.composite
def smuggled_request(draw, tenant: str, number: str) -> bytes:
    """A complete request to be hidden in a body: if an upstream reads it, it executes a
    request nobody logged, carrying another tenant's name."""
    route = draw(st.sampled_from("so"))
    path = f"/{route}/{EXAMPLE_ID.decode()}/{tenant}/{number}x/cl"
    return (
        f"GET {path} HTTP/1.1\r\nHost: a.example\r\n".encode()
        + draw(identity_line(tenant))
        + b"\r\n"
    )


@st.composite
def chunked(draw, content: bytes) -> bytes:
    """``content`` in 1 to 3 chunks, with varied size spellings, extensions and trailers."""
    cuts = sorted(draw(st.lists(st.integers(0, len(content)), max_size=2)))
    pieces = [content[a:b] for a, b in zip([0, *cuts], [*cuts, len(content)])]
    out = b""
    for piece in pieces:
        if not piece:
            continue
        size = draw(st.sampled_from(("%x", "%X", "%04x"))) % len(piece)
        ext = draw(st.sampled_from(("", ";a=b")))
        out += f"{size}{ext}\r\n".encode() + piece + b"\r\n"
    last = draw(st.sampled_from(("0", "000")))
    trailer = draw(st.sampled_from((b"", b"X-Trailer: t\r\n")))
    return out + last.encode() + b"\r\n" + trailer + b"\r\n"


# Body framing forms: (header lines, whether the body is chunked, whether the body the client
# means is well defined). {n} is the content length. The plain forms come more often (PLAIN).
FRAMINGS = {
    "content-length": (["Content-Length: {n}"], False, True),
    "chunked": (["Transfer-Encoding: chunked"], True, True),
    "cl-lower-case": (["content-length: {n}"], False, True),
    "cl-twice": (["Content-Length: {n}", "Content-Length: {n}"], False, True),
    "cl-list": (["Content-Length: {n}, {n}"], False, True),
    "cl-plus": (["Content-Length: +{n}"], False, True),
    "cl-zero-padded": (["Content-Length: 00{n}"], False, True),
    "cl-spaces": (["Content-Length:   {n}  "], False, True),
    "te-case": (["Transfer-Encoding: Chunked"], True, True),
    "te-lower-name": (["transfer-encoding: chunked"], True, True),
    "te-gzip-chunked": (["Transfer-Encoding: gzip, chunked"], True, False),
    "te-chunked-twice": (["Transfer-Encoding: chunked, chunked"], True, False),
    "te-two-headers": (["Transfer-Encoding: gzip", "Transfer-Encoding: chunked"], True, False),
    "te-identity": (["Transfer-Encoding: identity"], False, False),
    "cl-and-te": (["Content-Length: {n}", "Transfer-Encoding: chunked"], True, True),
    "te-and-cl": (["Transfer-Encoding: chunked", "Content-Length: {n}"], True, True),
}
FRAMING_CHOICES = ("content-length", "chunked") * 6 + tuple(FRAMINGS)
BODY_KINDS = ("none",) * 4 + ("small",) * 2 + ("smuggled",) * 2 + ("oversize",)
VERSIONS = ("1.1", "1.1", "1.1", "1.1", "1.0")
# Plain answers leave the upstream connection pooled for the next request.
BEHAVIOUR_CHOICES = ("cl", "cl", "chunked") + BEHAVIOURS


@st.composite
def body(draw, tenant: str, number: str) -> tuple[list[bytes], bytes, bytes | None]:
    """(framing header lines, body bytes as sent, the body the client means or None)."""
    kind = draw(st.sampled_from(BODY_KINDS))
    if kind == "none":
        return [], b"", b""
    if kind == "small":
        content = draw(st.binary(min_size=1, max_size=24))
    elif kind == "smuggled":
        content = draw(smuggled_request(tenant, number))
    else:
        content = b"o" * draw(st.sampled_from(OVERSIZE))
    form = draw(st.sampled_from(FRAMING_CHOICES))
    lines, is_chunked, meant = FRAMINGS[form]
    sent = draw(chunked(content)) if is_chunked else content
    headers = [line.format(n=len(content)).encode() + b"\r\n" for line in lines]
    return headers, sent, (content if meant else None)


@st.composite
def request(draw, tenant: str, number: str) -> Request:
    """One request. A third are plain (no risky header, no body): they leave pooled upstream
    connections behind and are the next request on them, which is where a connection left
    in a bad state shows (faults of reuse and retry need a request before and after)."""
    method = draw(st.sampled_from(METHODS))
    route = draw(st.sampled_from("so"))
    behaviour = draw(st.sampled_from(BEHAVIOUR_CHOICES))
    path = f"/{route}/{EXAMPLE_ID.decode()}/{tenant}/{number}/{behaviour}"
    if not draw(st.sampled_from((False, True, True))):
        return Request(f"{method} {path} HTTP/1.1\r\nHost: a.example\r\n\r\n".encode(), b"")
    version = draw(st.sampled_from(VERSIONS))
    framing, sent, meant = draw(body(tenant, number))
    elements = draw(st.lists(header_element(tenant), max_size=3))
    lines = framing + [line for element in elements for line in element]
    lines = draw(st.permutations(lines)) if len(lines) > 1 else lines
    head = f"{method} {path} HTTP/{version}\r\nHost: a.example\r\n".encode()
    return Request(head + b"".join(lines) + b"\r\n" + sent, meant)


@st.composite
def examples(draw) -> Example:
    """1 to 3 sessions (run one after the other) of 1 to 3 requests each."""
    sessions = []
    number = 0
    for _ in range(draw(st.integers(1, 3))):
        tenant = draw(st.sampled_from(TENANTS))
        requests = []
        for _ in range(draw(st.integers(1, 3))):
            number += 1
            requests.append(draw(request(tenant, str(number))))
        sessions.append(
            Session(
                tenant,
                tuple(requests),
                pipelined=draw(st.booleans()),
                half_close=draw(st.booleans()),
            )
        )
    return Example(tuple(sessions))
