"""What one relayed connection may hold in the worker's memory, and how reads keep to it.

A proxy holds a connection's bytes between reading them from one side and the kernel taking
them on the other. Left to the event loop, a read takes whatever the socket has, up to 256 KiB
(uvloop's read buffer; libuv reads up to 32 times per wake-up), and the bytes go to the peer's
write buffer even when the peer stopped taking them: a tenant that opens connections and never
reads its responses (or uploads to an upstream that never reads) held up to a 256 KiB read past
the mark per connection: about 100 kB of the worker's memory per stalled http connection and
570 kB with TLS in ``bench/connection_buffers.py``, 49 and 229 kB now.

Here every relaying protocol reads through :class:`BoundedReads` (asyncio's
``BufferedProtocol``): a read fills at most what the peer's write buffer can still take below
:data:`HIGH_WATER`, at least :data:`MIN_READ_BYTES` and at most :data:`READ_BYTES`, into one
buffer the whole worker shares (the loop runs one read at a time, and each read's bytes are
copied out before the next). Reading pauses once the peer's buffer passes ``HIGH_WATER`` (see
``http/flow.py``), so what a connection holds for its peer is at most ``HIGH_WATER +
MIN_READ_BYTES``, whatever the other side sends. Bytes a protocol keeps before it has a peer
come on top, each bounded on its own: a request head (``limits.max_header_bytes``), bytes
after a protocol-switch request (``HOLD_LIMIT``), pipelined requests parsed ahead, a tcp
relay's bytes while its upstream connects (``_PENDING_LIMIT``), each plus one read.

Not bounded here: a TLS connection's ciphertext. uvloop's ``SSLProtocol`` reads the socket into
a buffer of its own, up to 256 KiB per read (``SSL_READ_MAX_SIZE``), before the incoming BIO's
high-water mark (``set_read_buffer_limits``, set to ``HIGH_WATER`` by the https client
connection, ``http/client.py``) pauses it; that read size is not reachable from the
application.
"""

from __future__ import annotations

import asyncio

#: Bytes a transport may buffer for writing before the protocol feeding it stops reading.
HIGH_WATER = 64 * 1024
#: The largest read (libuv's own suggested read size; over http the old reads of up to 256 KiB
#: cost 2.6 times the CPU per byte: ``bench/connection_buffers.py``).
READ_BYTES = 64 * 1024
#: The smallest read, taken even when the peer has less room: reads of a few bytes would cost
#: a callback each while the peer drains.
MIN_READ_BYTES = 4 * 1024

_BUFFER = memoryview(bytearray(READ_BYTES))


def room_toward(transport: asyncio.WriteTransport | None) -> int:
    """Bytes ``transport`` can still take below :data:`HIGH_WATER` (``READ_BYTES`` for none:
    a protocol without a peer yet, which parses what it reads)."""
    if transport is None:
        return READ_BYTES
    return HIGH_WATER - transport.get_write_buffer_size()


def read_buffer(room: int) -> memoryview:
    """The shared buffer, cut to ``room`` bytes kept within [MIN_READ_BYTES, READ_BYTES]."""
    return _BUFFER[: min(READ_BYTES, max(MIN_READ_BYTES, room))]


class BoundedReads(asyncio.BufferedProtocol):
    """A protocol that reads at most what :meth:`room` allows and passes each read on as
    ``bytes`` to ``data_received``, like ``asyncio.Protocol``. Subclasses define both."""

    __slots__ = ()

    def room(self) -> int:
        """Bytes the next read may take (see :func:`room_toward`)."""
        return READ_BYTES

    def get_buffer(self, sizehint: int) -> memoryview:
        return read_buffer(self.room())

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(_BUFFER[:nbytes]))

    def data_received(self, data: bytes) -> None:
        raise NotImplementedError
