"""Read the server name (SNI) and ALPN offer from the first bytes a TLS client sends.

Used by TCP listeners that route TLS passthrough by SNI. The bytes come from an untrusted
client, so every length is checked against what is left, and nothing here raises:
:func:`peek_client_hello` answers with a :class:`ClientHello`, :data:`NEED_MORE` (a valid
prefix, read more and ask again) or ``None`` (not a TLS ClientHello, or malformed).

Only the first handshake message is looked at. It may be split over several TLS records
(RFC 8446 5.1 allows any fragmentation of handshake messages), and the records over any
number of reads. HAProxy's caveat applies here too: the SNI is what the client claims in
clear, so it selects a route but proves nothing (ECH hides the real name behind an outer
one).
"""

from __future__ import annotations

import struct
from typing import NamedTuple, Union

__all__ = ["MAX_HELLO_BYTES", "MAX_RECORDS", "NEED_MORE", "ClientHello", "peek_client_hello"]

_RECORD_HANDSHAKE = 22
_HANDSHAKE_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_SNI_HOST_NAME = 0
_MAX_RECORD = 1 << 14  # RFC 8446 5.1: a plaintext record carries at most 2^14 bytes
_MAX_HOSTNAME = 253
_EXT_HEADER = struct.Struct("!HH")

#: Largest ClientHello accepted, in handshake-message bytes. Post-quantum key shares make
#: real hellos around 1.8 kB; anything near this cap is abuse, not a client.
MAX_HELLO_BYTES = 64 * 1024

#: Most records a ClientHello may be split into. Stacks send one or two; tools that split
#: hellos to dodge middleboxes use a few dozen. The cap bounds the work per read.
MAX_RECORDS = 64

_HOST_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._*")


class _NeedMore:
    """Type of :data:`NEED_MORE`; a singleton with a readable repr."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_MORE"

    def __bool__(self) -> bool:
        return False


#: Returned when the bytes so far are a valid, incomplete beginning of a ClientHello.
NEED_MORE = _NeedMore()


class ClientHello(NamedTuple):
    """What a complete ClientHello offered: the host name (lower case) and ALPN protocols."""

    sni: str | None
    alpn: tuple[str, ...]


class _Malformed(Exception):
    """Internal: the message is complete but does not follow the TLS grammar."""


class _Reader:
    """Bounds-checked cursor over one complete message."""

    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None):
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise _Malformed
        chunk = self.buf[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def sub(self, length_size: int) -> _Reader:
        """A reader over the next length-prefixed vector; advances past it."""
        n = self.uint(length_size)
        if self.pos + n > self.end:
            raise _Malformed
        inner = _Reader(self.buf, self.pos, self.pos + n)
        self.pos += n
        return inner

    @property
    def left(self) -> int:
        return self.end - self.pos


PeekResult = Union[ClientHello, _NeedMore, None]


def peek_client_hello(data: bytes | bytearray | memoryview) -> PeekResult:
    """Parse the ClientHello at the start of ``data``.

    Returns a :class:`ClientHello` when complete and well formed, :data:`NEED_MORE` when
    ``data`` is a valid prefix of one, and ``None`` for anything else. Never raises.
    """
    if isinstance(data, memoryview):
        data = data.tobytes()
    message = _reassemble(data)
    if message is None or message is NEED_MORE:
        return message
    try:
        return _parse_hello_body(message)
    except _Malformed:
        return None


def _reassemble(data: bytes | bytearray) -> bytes | _NeedMore | None:
    """The first handshake message's body, joined from consecutive handshake records.

    Called again on every read while the hello is incomplete, so it copies nothing until
    the message is complete and looks at no more than MAX_RECORDS record headers.
    """
    spans = []  # (start, end) of each record's payload in data
    have = 0
    wanted = None  # total handshake bytes: 4-byte header + body length
    pos = 0
    while True:
        if len(data) - pos < 5:
            return _prefix_ok(data, pos)
        rtype, major, minor = data[pos], data[pos + 1], data[pos + 2]
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if rtype != _RECORD_HANDSHAKE or major != 3 or minor > 4:
            return None
        if length == 0 or length > _MAX_RECORD or len(spans) >= MAX_RECORDS:
            return None
        if len(data) - pos - 5 < length:
            # Check what we can of a partial record before asking for more.
            if not spans and not _handshake_header_ok(data[pos + 5 : pos + 9]):
                return None
            return NEED_MORE
        spans.append((pos + 5, pos + 5 + length))
        have += length
        pos += 5 + length
        if wanted is None and have >= 4:
            head = b"".join(data[start : min(end, start + 4)] for start, end in spans)[:4]
            if head[0] != _HANDSHAKE_CLIENT_HELLO:
                return None
            wanted = 4 + int.from_bytes(head[1:4], "big")
            if wanted > 4 + MAX_HELLO_BYTES or wanted < 4 + 2 + 32 + 1 + 2 + 1:
                return None
        if wanted is not None and have >= wanted:
            message = b"".join(bytes(data[start:end]) for start, end in spans)
            return message[4:wanted]


def _prefix_ok(data: bytes, pos: int) -> _NeedMore | None:
    """Whether the few bytes of a record header we have could start a handshake record."""
    rest = data[pos:]
    if len(rest) >= 1 and rest[0] != _RECORD_HANDSHAKE:
        return None
    if len(rest) >= 2 and rest[1] != 3:
        return None
    if len(rest) >= 3 and rest[2] > 4:
        return None
    return NEED_MORE


def _handshake_header_ok(partial: bytes) -> bool:
    if len(partial) >= 1 and partial[0] != _HANDSHAKE_CLIENT_HELLO:
        return False
    if len(partial) >= 4:
        n = int.from_bytes(partial[1:4], "big")
        if n > MAX_HELLO_BYTES:
            return False
    return True


def _parse_hello_body(body: bytes) -> ClientHello:
    r = _Reader(body)
    version = r.uint(2)
    if version >> 8 != 3:
        raise _Malformed
    r.take(32)  # random
    session_id = r.sub(1)
    if session_id.left > 32:
        raise _Malformed
    suites = r.sub(2)
    if suites.left < 2 or suites.left % 2:
        raise _Malformed
    compression = r.sub(1)
    if compression.left < 1:
        raise _Malformed
    if r.left == 0:
        return ClientHello(None, ())  # a hello without extensions (pre-TLS 1.2 clients)
    extensions = r.sub(2)
    if r.left:
        raise _Malformed
    sni = None
    alpn: tuple[str, ...] = ()
    seen = set()
    # Hot loop (a dozen or more extensions per hello): plain offsets, one unpack per header.
    pos, end = extensions.pos, extensions.end
    while pos < end:
        if end - pos < 4:
            raise _Malformed
        ext_type, length = _EXT_HEADER.unpack_from(body, pos)
        pos += 4
        if end - pos < length:
            raise _Malformed
        if ext_type in seen:
            raise _Malformed  # RFC 8446 4.2: no extension type may appear twice
        seen.add(ext_type)
        if ext_type == _EXT_SERVER_NAME:
            sni = _server_name(_Reader(body, pos, pos + length))
        elif ext_type == _EXT_ALPN:
            alpn = _alpn(_Reader(body, pos, pos + length))
        pos += length
    return ClientHello(sni, alpn)


def _server_name(ext: _Reader) -> str | None:
    if ext.left == 0:
        return None  # the empty form is only valid in a ServerHello, tolerated here
    names = ext.sub(2)
    if ext.left or names.left == 0:
        raise _Malformed
    host = None
    while names.left:
        name_type = names.uint(1)
        name = names.sub(2)
        raw = name.take(name.left)
        if name_type != _SNI_HOST_NAME:
            continue
        if host is not None:
            raise _Malformed  # RFC 6066 3: at most one name of each type
        if not raw or len(raw) > _MAX_HOSTNAME or not _HOST_CHARS.issuperset(raw):
            raise _Malformed
        host = raw.decode("ascii").lower()
    return host


def _alpn(ext: _Reader) -> tuple[str, ...]:
    protocols = ext.sub(2)
    if ext.left or protocols.left == 0:
        raise _Malformed
    found = []
    while protocols.left:
        name = protocols.sub(1)
        if name.left == 0:
            raise _Malformed
        found.append(name.take(name.left).decode("latin-1"))
    return tuple(found)
