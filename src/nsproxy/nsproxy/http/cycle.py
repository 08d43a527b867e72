"""One request/response exchange on a client connection (uvicorn's RequestResponseCycle).

The client connection makes a cycle when a request begins and drops it when the response is
complete; everything that belongs to one exchange (what was asked, how its body is framed,
where it went, what came back, when) lives here, so nothing of one request can leak into the
next. The access log and the metrics read a finished cycle.
"""

from __future__ import annotations


class RequestCycle:
    """State of one request and its response. Times are ``time.monotonic()`` seconds."""

    __slots__ = (
        "body_in",
        "bytes_out",
        "chunked",
        "close_delimited",
        "expect",
        "headers",
        "held_body",
        "host",
        "interim",
        "keep_alive",
        "length",
        "local",
        "method",
        "request_done",
        "response_started",
        "retry",
        "status",
        "t_sent",
        "t_start",
        "trailer_bytes",
        "upgrade",
        "upstream_name",
        "url",
        "version",
    )

    def __init__(self, t_start: float):
        self.t_start = t_start
        self.t_sent = 0.0  # when the head was written to an upstream connection
        self.url = b""
        self.headers: list = []  # (name, value) as parsed, until the head is complete
        self.method = b""
        self.version = "1.1"
        self.host = b""
        self.keep_alive = True  # the client may send another request after this one
        self.length: int | None = None  # Content-Length of the request body
        self.chunked = False  # request body framed by chunked transfer coding
        self.expect = False  # Expect: 100-continue
        self.upgrade: bytes | None = None  # the protocol asked for, when it is forwarded
        self.request_done = False  # the whole request (head and body) was read
        # Body bytes of a protocol-switch request still to come: llhttp stops at the head of
        # such a request, so its Content-Length body is taken from the held bytes.
        self.held_body = 0
        self.response_started = False  # the response head was sent to the client
        self.close_delimited = False  # the client learns where the body ends by the close
        self.retry = None  # the forwarded head, while the request may be sent once more
        self.interim = 0  # 1xx responses seen
        self.trailer_bytes = 0  # request trailer fields seen (they are not forwarded)
        self.status = 0
        self.local = False  # the proxy answered itself (an error of the request or upstream)
        self.body_in = 0  # request body bytes
        self.bytes_out = 0  # response bytes written to the client
        self.upstream_name = "-"
