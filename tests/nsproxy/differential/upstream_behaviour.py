"""How the recording upstream answers a request, and what a client may then receive.

The behaviour is the last segment of the request path (``/s/<example>/<tenant>/<n>/<behaviour>``),
so one upstream serves every example and a failing example names its behaviour in its bytes.
Both sides import this table: ``recording_upstream.py`` to answer, ``invariants.py`` to judge
what reached the client.

Every answer carries ``X-Diff-Req: <path>``: the client can tell which request a response
belongs to, and a response that belongs to none (stray bytes, a smuggled request's answer) shows.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass

TAG = b"X-Diff-Req"
STRAY_TAG = b"stray"


@dataclass(frozen=True)
class Outcome:
    """What a client may receive for a request answered with this behaviour.

    ``body``: the response, complete and with the body of ``body_for``, is a right answer;
    ``local_error``: a response of the proxy's own (5xx, then close) is a right answer;
    ``truncated``: a response cut short by the closing connection is a right answer (the
    upstream itself broke off after the head)."""

    body: bool
    local_error: bool = False
    truncated: bool = False


# RFC 9112 section 6.3 decides each of these; the comment says what a proxy faces.
OUTCOMES = {
    "cl": Outcome(body=True),  # Content-Length
    "chunked": Outcome(body=True),  # chunked, two chunks
    "eof": Outcome(body=True),  # no length: the body ends at the close (6.3 rule 8)
    "teid": Outcome(body=True, local_error=True),  # Transfer-Encoding: identity (until close)
    "gzip": Outcome(body=True, local_error=True),  # Transfer-Encoding: gzip, chunked
    "info": Outcome(body=True),  # 103 Early Hints before the final response
    # a 1xx with a Content-Length body (RFC 9110 15.2: a 1xx ends at its head, so "JUNK" is
    # where the next response must start); llhttp reads a body after 104-199
    "infobody": Outcome(body=False, local_error=True),
    "extra": Outcome(body=True),  # a complete stray response after the real one, same write
    "extrahead": Outcome(body=True),  # half of a stray response head after it
    "junk": Outcome(body=True),  # junk bytes after it
    "clte": Outcome(body=True, local_error=True),  # Content-Length and chunked (6.3 rule 3)
    "badchunk": Outcome(body=False, local_error=True, truncated=True),  # invalid chunk size
    "close0": Outcome(body=False, local_error=True),  # read the request, close, no answer
    "closeh": Outcome(body=False, local_error=True),  # half a status line, then close
    "closeb": Outcome(body=False, local_error=True, truncated=True),  # head, 10 of 100 bytes
    "switch": Outcome(body=True),  # 101 and an echo tunnel if asked to upgrade, else as cl
    "slow": Outcome(body=True),  # as cl, SLOW seconds late: the client's next move comes first
}
SLOW = 0.3
BEHAVIOURS = tuple(OUTCOMES)
# Behaviours after which an upstream has sent no byte of a response: the only ones after which
# RFC 9110 section 9.2.2 lets a proxy resend an idempotent request.
NO_RESPONSE_BYTE = frozenset({"close0"})
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


def outcome(behaviour: str, method: str) -> Outcome:
    """The Outcome of ``behaviour`` for a request of ``method``: the answer to a HEAD request
    is complete at the end of its head, so the behaviours that break a body off cannot."""
    if method == "HEAD" and behaviour in ("badchunk", "closeb"):
        return Outcome(body=True, local_error=True)
    return OUTCOMES[behaviour]


def behaviour_of(path: str) -> str:
    """The behaviour a request path asks for ("cl" when it names none)."""
    last = path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return last if last in OUTCOMES else "cl"


def body_for(path: str) -> bytes:
    """The body the upstream sends for ``path`` (and the client must receive, decoded)."""
    return (path + "\n").encode("latin-1", "replace") * 2


def answer(path: str, method: str, upgrade_token: bytes | None) -> tuple[bytes, str]:
    """(bytes to send, then) for one request: then is "keep" (next request), "close" (close
    the connection after sending) or "tunnel" (echo everything that follows).

    ``upgrade_token`` is the request's Upgrade value when it asked to upgrade, else None."""
    behaviour = behaviour_of(path)
    tag = TAG + b": " + path.encode("latin-1", "replace") + b"\r\n"
    body = body_for(path)
    # A HEAD answer's head describes the body a GET would get (RFC 9110 9.3.2), without it.
    body_bytes = b"" if method == "HEAD" else body
    ok = b"HTTP/1.1 200 OK\r\n" + tag
    if method == "HEAD" and behaviour in ("closeb", "teid"):
        # The answer to HEAD is complete at its head, and the connection closes after it: a
        # server says so (RFC 9112 9.6). Unannounced, a request the proxy sends on it in the
        # instant before the close arrives fails, which no proxy can prevent for requests it
        # must not resend (RFC 9112 9.3.1; HAProxy and nginx alike): a race, not a finding.
        ok += b"Connection: close\r\n"

    def with_length() -> bytes:
        return ok + b"Content-Length: %d\r\n\r\n" % len(body) + body_bytes

    def chunked(*pieces: bytes) -> bytes:
        return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"

    if behaviour == "switch" and upgrade_token is not None:
        head = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: "
        return head + upgrade_token + b"\r\n" + tag + b"\r\n", "tunnel"
    if behaviour == "chunked":
        half = len(body_bytes) // 2
        te = b"Transfer-Encoding: chunked\r\n\r\n"
        return ok + te + (chunked(body_bytes[:half], body_bytes[half:]) if body_bytes else b""), (
            "keep"
        )
    if behaviour == "eof":
        return ok + b"Connection: close\r\n\r\n" + body_bytes, "close"
    if behaviour == "teid":
        return ok + b"Transfer-Encoding: identity\r\n\r\n" + body_bytes, "close"
    if behaviour == "gzip":
        coded = gzip.compress(body_bytes, mtime=0) if body_bytes else b""
        te = b"Transfer-Encoding: gzip, chunked\r\n\r\n"
        return ok + te + (chunked(coded) if coded else b""), "keep"
    if behaviour == "info":
        hints = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        return hints + with_length(), "keep"
    if behaviour == "infobody":
        interim = b"HTTP/1.1 150 Interim\r\nContent-Length: 4\r\n\r\nJUNK"
        return interim + with_length(), "keep"
    if behaviour == "extra":
        stray = b"HTTP/1.1 200 OK\r\n" + TAG + b": " + STRAY_TAG + b"\r\nContent-Length: 6\r\n\r\n"
        return with_length() + stray + b"stray\n", "keep"
    if behaviour == "extrahead":
        return with_length() + b"HTTP/1.1 200 OK\r\n" + TAG + b": " + STRAY_TAG + b"\r\nCont", (
            "keep"
        )
    if behaviour == "junk":
        return with_length() + b"\r\nJUNK \x00\xff\r\n", "keep"
    if behaviour == "clte":
        coded = chunked(body_bytes) if body_bytes else b""
        head = ok + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(body)
        return head + coded, "keep"
    if behaviour == "badchunk":
        te = b"Transfer-Encoding: chunked\r\n\r\n"
        first = b"%x\r\n%b\r\n" % (len(body_bytes), body_bytes) if body_bytes else b""
        return ok + te + first + b"zz\r\n", "keep"
    if behaviour == "close0":
        return b"", "close"
    if behaviour == "closeh":
        return b"HTTP/1.1 200 O", "close"
    if behaviour == "closeb":
        return ok + b"Content-Length: %d\r\n\r\n" % (len(body) + 100) + body_bytes[:10], "close"
    return with_length(), "keep"
