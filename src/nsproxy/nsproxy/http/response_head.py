"""The response-head policy: how an upstream's response is framed for the client.

RFC 9112 6.3 decides the length of the upstream's body: none for 1xx, 204, 304 and answers to
HEAD; chunked when ``chunked`` is the final transfer coding; until the connection closes when
another coding is final; otherwise ``Content-Length``, or until close. The client then gets the
same body framed so that it ends where the upstream's ended: the length as sent, or chunked
(with the upstream's other codings kept in front of ``chunked``), or, for an HTTP/1.0 client,
until close. A response the proxy cannot frame faithfully is never forwarded: it is a 502.
"""

from __future__ import annotations

import re

#: How the upstream's body is delimited.
NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE = range(4)

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class ResponseFault(Exception):
    """The upstream's response cannot be forwarded; the client gets ``status`` (502, or 504
    for a deadline) and ``detail`` is logged."""

    def __init__(self, detail: str, status: int = 502):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def body_framing(
    status: int, head_only: bool, codings: list[bytes] | None, has_length: bool
) -> tuple[int, list[bytes]]:
    """(how the upstream's body ends, the transfer codings other than chunked to keep).

    ``codings`` are the raw ``Transfer-Encoding`` values in order (None when absent).
    Raises :class:`ResponseFault` for codings that do not frame a body: chunked applied twice
    or not last (RFC 9112 6.1), or a value that is not a list of tokens."""
    if head_only or status < 200 or status in (204, 304):
        return NO_BODY, []
    if codings is None:
        return (LENGTH if has_length else UNTIL_CLOSE), []
    tokens = []
    for value in codings:
        for token in value.split(b","):
            token = token.strip(b" \t").lower()
            if not _TOKEN.fullmatch(token):
                raise ResponseFault(f"invalid Transfer-Encoding {value[:64]!r}")
            if token != b"identity":  # RFC 9112 removed it: it means no coding at all
                tokens.append(token)
    if b"chunked" in tokens[:-1]:
        raise ResponseFault("Transfer-Encoding: chunked is not the final coding")
    if tokens and tokens[-1] == b"chunked":
        return CHUNKED, tokens[:-1]
    return UNTIL_CLOSE, tokens


def client_framing(kind: int, codings: list[bytes], client_version: str) -> bytes | None:
    """The ``Transfer-Encoding`` line for the client when the proxy re-chunks the body, b""
    when the body is sent as it comes (length, none, or until close), None when the
    response must be closed after the body (HTTP/1.0 client, body until close).

    Raises :class:`ResponseFault` when codings other than chunked cannot reach an HTTP/1.0
    client, which has no way to learn of them."""
    if kind in (NO_BODY, LENGTH):
        return b""
    if client_version == "1.0":
        if codings:
            raise ResponseFault(
                "transfer coding " + b", ".join(codings).decode("latin-1")
                + " cannot be sent to an HTTP/1.0 client"
            )  # fmt: skip
        return None
    return b"Transfer-Encoding: " + b", ".join((*codings, b"chunked")) + b"\r\n"
