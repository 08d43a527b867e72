"""Flow control, written once for every protocol of the proxy (client side, upstream side).

A protocol stops reading when the peer it feeds cannot take more (its transport's write buffer
passed the high-water mark) or for reasons of its own (a pipelined request waits its turn, an
upstream connection is being made). Each reason is one bit: reading resumes when no bit is left.
The model is uvicorn's ``flow_control.py`` and aiohttp's ``BaseProtocol``, with the pairing of
two protocols (client <-> upstream) added, which is what a proxy needs.
"""

from __future__ import annotations

import asyncio

from nsproxy.buffering import room_toward
from nsproxy.loop_share import SharedReads

#: Reasons to stop reading (bits).
PEER_FULL = 1  # the peer's write buffer is above its high-water mark
PIPELINE = 2  # a pipelined request waits until the current response is complete
CONNECTING = 4  # the upstream connection is being made
HELD = 8  # bytes after a protocol-switch request are held until the upstream answers
YIELD = 16  # this connection's reads cost much: other connections get a turn of the loop first
# SHARE = 32 (loop_share.py): its tenant used its share of this turn of the loop

#: Body chunks a protocol parses before it lets the event loop serve other connections
#: (:meth:`Flow.yield_turn`). A chunk costs parser callbacks in Python (about 1 us each);
#: left alone, the loop reads a busy socket up to 32 times per wake-up (libuv ``uv__read``),
#: 64 KiB each (``buffering.READ_BYTES``): 350,000 one-byte chunks, a second during which no
#: other tenant is served.
CHUNKS_PER_TURN = 4096


class Flow(SharedReads):
    """A protocol whose reading can be paused for several reasons, coupled to a ``peer``
    whose reading pauses while this protocol's writes are backed up (and the other way).
    A read takes at most what the peer's write buffer can still take (``buffering``), and
    its cost is charged to the tenant's share of the loop (``loop_share``)."""

    __slots__ = ("peer", "write_paused")

    def __init__(self) -> None:
        SharedReads.__init__(self)
        self.write_paused = False
        self.peer: Flow | None = None

    def room(self) -> int:
        peer = self.peer
        return room_toward(None if peer is None else peer.transport)

    def yield_turn(self) -> None:
        """Stop reading until the event loop has run its other ready callbacks and polled
        every other socket once: bounds what one connection's reads cost the others in one
        turn of the loop to one read (nginx and HAProxy bound the work per event likewise)."""
        self.pause_reading_for(YIELD)
        asyncio.get_running_loop().call_soon(self.resume_reading_for, YIELD)

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
