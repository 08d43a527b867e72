"""buffering.BoundedReads on real sockets, on both loops, plain and TLS (where the loop's TLS
layer fills the buffer with what it decrypts): two connections read through the one shared
buffer at once, and each receives exactly the bytes its peer sent, in order, in reads no
larger than the room it gave."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loops import LOOPS, run

from nsproxy.buffering import MIN_READ_BYTES, READ_BYTES, BoundedReads


class Recorder(BoundedReads):
    """Gives the room the test chose, one value per read in turn; records every read."""

    def __init__(self, rooms: list[int]):
        self.rooms = rooms
        self.turn = 0
        self.given = 0  # the size of the buffer handed out for the read under way
        self.reads: list[tuple[bytes, int]] = []  # (bytes read, the buffer's size)
        self.done = asyncio.get_running_loop().create_future()

    def room(self) -> int:
        room = self.rooms[self.turn % len(self.rooms)]
        self.turn += 1
        # The rule, written out here again: at least MIN_READ_BYTES, at most READ_BYTES.
        self.given = min(READ_BYTES, max(MIN_READ_BYTES, room))
        return room

    def data_received(self, data: bytes) -> None:
        self.reads.append((data, self.given))

    def eof_received(self):
        self.done.set_result(None)

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(None)


async def _exchange(payloads, rooms, server_ctx=None) -> list[Recorder]:
    """Each payload sent by its own peer, the writes of all peers interleaved, over TLS when
    ``server_ctx`` is given; returns the receiving protocols once every peer has closed."""
    loop = asyncio.get_running_loop()
    client_ctx = None
    if server_ctx is not None:
        client_ctx = ssl.create_default_context()
        client_ctx.check_hostname = False
        client_ctx.verify_mode = ssl.CERT_NONE
    recorders, writers = [], []

    def made() -> Recorder:  # (with TLS, the loop returns its own TLS protocol, not ours)
        recorders.append(Recorder(rooms))
        return recorders[-1]

    for _ in payloads:
        ours, theirs = socket.socketpair()
        accept = loop.connect_accepted_socket(made, ours, ssl=server_ctx)
        connect = asyncio.open_connection(
            sock=theirs, ssl=client_ctx, server_hostname="t.example" if client_ctx else None
        )
        _, (_, writer) = await asyncio.gather(accept, connect)
        writers.append(writer)
    for step in range(max(len(chunks) for chunks in payloads)):
        for chunks, writer in zip(payloads, writers):
            if step < len(chunks):
                writer.write(chunks[step])
        await asyncio.gather(*(writer.drain() for writer in writers))
    for writer in writers:
        if client_ctx is None:
            writer.write_eof()
        else:
            writer.close()  # close_notify: the TLS end of input
    await asyncio.gather(*(recorder.done for recorder in recorders))
    for writer in writers:
        writer.close()
    return recorders


@pytest.fixture(scope="module")
def server_ctx(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "c.pem", folder / "c.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=t.example"],
                   check=True, capture_output=True)  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def _chunks(alphabet: bytes):
    """Chunks of any size up to three full reads (st.binary would stay small), cut from a run
    of ``alphabet`` at any offset."""
    run_ = alphabet * (3 * READ_BYTES // len(alphabet) + 2)
    return st.lists(
        st.builds(
            lambda size, start: run_[start : start + size],
            st.integers(1, 3 * READ_BYTES),
            st.integers(0, len(alphabet) - 1),
        ),
        min_size=1,
        max_size=6,
    )


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("loop_name", LOOPS)
@settings(max_examples=40, deadline=None)
@given(
    # Each connection's bytes from its own half of the byte values: one connection's bytes
    # in the other's reads cannot go unseen.
    payloads=st.tuples(_chunks(bytes(range(128))), _chunks(bytes(range(128, 256)))),
    rooms=st.lists(st.integers(-READ_BYTES, 2 * READ_BYTES), min_size=1, max_size=8),
)
def test_each_connection_gets_its_own_bytes_in_reads_within_its_room(
    server_ctx, loop_name, tls, payloads, rooms
):
    recorders = run(loop_name, _exchange(payloads, rooms, server_ctx if tls else None))
    for chunks_sent, recorder in zip(payloads, recorders):
        assert b"".join(data for data, _ in recorder.reads) == b"".join(chunks_sent)
        for data, size in recorder.reads:
            assert len(data) <= size
