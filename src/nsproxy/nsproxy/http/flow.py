"""Flow control, written once for every protocol of the proxy (client side, upstream side).

A protocol stops reading when the peer it feeds cannot take more (its transport's write buffer
passed the high-water mark) or for reasons of its own (a pipelined request waits its turn, an
upstream connection is being made). Each reason is one bit: reading resumes when no bit is left.
The model is uvicorn's ``flow_control.py`` and aiohttp's ``BaseProtocol``, with the pairing of
two protocols (client <-> upstream) added, which is what a proxy needs.
"""

from __future__ import annotations

import asyncio

#: Reasons to stop reading (bits).
PEER_FULL = 1  # the peer's write buffer is above its high-water mark
PIPELINE = 2  # a pipelined request waits until the current response is complete
CONNECTING = 4  # the upstream connection is being made
HELD = 8  # bytes after a protocol-switch request are held until the upstream answers

#: Bytes a transport may buffer for writing before the protocol feeding it pauses.
HIGH_WATER = 64 * 1024


class Flow(asyncio.Protocol):
    """A protocol whose reading can be paused for several reasons, coupled to a ``peer``
    whose reading pauses while this protocol's writes are backed up (and the other way)."""

    __slots__ = ("paused", "peer", "transport", "write_paused")

    def __init__(self) -> None:
        self.transport = None
        self.paused = 0  # bit set of the reasons above
        self.write_paused = False
        self.peer: Flow | None = None

    def pause_reading_for(self, reason: int) -> None:
        if not self.paused:
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.pause_reading()
        self.paused |= reason

    def resume_reading_for(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused:
                transport = self.transport
                if transport is not None and not transport.is_closing():
                    transport.resume_reading()

    # asyncio calls these when our transport's write buffer crosses its water marks.
    def pause_writing(self) -> None:
        self.write_paused = True
        peer = self.peer
        if peer is not None:
            peer.pause_reading_for(PEER_FULL)

    def resume_writing(self) -> None:
        self.write_paused = False
        peer = self.peer
        if peer is not None:
            peer.resume_reading_for(PEER_FULL)

    def couple(self, other: Flow) -> None:
        """Make ``self`` and ``other`` peers; a side that cannot write now holds the other."""
        self.peer = other
        other.peer = self
        if self.write_paused:
            other.pause_reading_for(PEER_FULL)
        if other.write_paused:
            self.pause_reading_for(PEER_FULL)

    def decouple(self) -> None:
        """Undo :meth:`couple`: neither side holds the other any more."""
        other = self.peer
        if other is not None:
            self.peer = None
            other.peer = None
            if other.paused & PEER_FULL:
                other.resume_reading_for(PEER_FULL)
            if self.paused & PEER_FULL:
                self.resume_reading_for(PEER_FULL)
