"""The shared accept path: many listening sockets served through one epoll set."""

from __future__ import annotations

import asyncio
import socket

import pytest
from loops import LOOPS, run

from nsproxy.accept import ACCEPT_BATCH, Acceptor


class Echo(asyncio.Protocol):
    """Answers every chunk with its tag and the chunk, so a client sees which listener it hit."""

    def __init__(self, tag: bytes, seen: list):
        self.tag = tag
        self.seen = seen

    def connection_made(self, transport):
        self.transport = transport
        self.seen.append(self.tag)

    def data_received(self, data):
        self.transport.write(self.tag + b":" + data)


def listening():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    return sock


async def ask(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    answer = await reader.read(100)
    writer.close()
    return answer


@pytest.mark.parametrize("loop_name", LOOPS)
def test_each_listener_hands_its_connections_to_its_own_factory(loop_name):
    async def main():
        acceptor = Acceptor(asyncio.get_running_loop())
        acceptor.start()
        seen: list = []
        socks = [listening() for _ in range(20)]
        for i, sock in enumerate(socks):
            tag = f"l{i}".encode()
            acceptor.add(sock, lambda tag=tag: Echo(tag, seen))
        ports = [s.getsockname()[1] for s in socks]
        answers = await asyncio.gather(*(ask(p, b"hi") for p in ports))
        assert answers == [f"l{i}:hi".encode() for i in range(20)]
        assert sorted(seen) == sorted(f"l{i}".encode() for i in range(20))
        acceptor.close()

    run(loop_name, main())


@pytest.mark.parametrize("loop_name", LOOPS)
def test_more_waiting_clients_than_one_batch_are_all_served(loop_name):
    async def main():
        acceptor = Acceptor(asyncio.get_running_loop())
        acceptor.start()
        seen: list = []
        sock = listening()
        acceptor.add(sock, lambda: Echo(b"x", seen))
        port = sock.getsockname()[1]
        count = ACCEPT_BATCH * 3
        answers = await asyncio.gather(*(ask(port, b"%d" % i) for i in range(count)))
        assert answers == [b"x:%d" % i for i in range(count)]
        acceptor.close()

    run(loop_name, main())


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_removed_listener_refuses_while_the_others_keep_serving(loop_name):
    async def main():
        acceptor = Acceptor(asyncio.get_running_loop())
        acceptor.start()
        seen: list = []
        kept, removed = listening(), listening()
        acceptor.add(kept, lambda: Echo(b"kept", seen))
        acceptor.add(removed, lambda: Echo(b"removed", seen))
        removed_port = removed.getsockname()[1]
        assert await ask(removed_port, b"a") == b"removed:a"
        acceptor.remove(removed)
        assert removed.fileno() == -1  # closed
        with pytest.raises(ConnectionRefusedError):
            await ask(removed_port, b"b")
        assert await ask(kept.getsockname()[1], b"c") == b"kept:c"
        acceptor.close()

    run(loop_name, main())


@pytest.mark.parametrize("loop_name", LOOPS)
def test_nothing_is_accepted_before_start(loop_name):
    async def main():
        acceptor = Acceptor(asyncio.get_running_loop())
        seen: list = []
        sock = listening()
        acceptor.add(sock, lambda: Echo(b"l", seen))
        port = sock.getsockname()[1]
        # The kernel completes the handshake (the listener is up), the daemon does not serve yet.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"early")
        await asyncio.sleep(0.2)
        assert seen == [] and acceptor.accepted == 0
        acceptor.start()
        assert await reader.read(100) == b"l:early"
        assert seen == [b"l"]
        writer.close()
        acceptor.close()

    run(loop_name, main())


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("client_first", [True, False])
def test_a_connection_closed_before_it_spoke_is_dropped_where_clients_speak_first(
    loop_name, client_first
):
    async def main():
        acceptor = Acceptor(asyncio.get_running_loop())
        acceptor.start()
        seen: list = []
        sock = listening()
        acceptor.add(sock, lambda: Echo(b"l", seen), client_first=client_first)
        port = sock.getsockname()[1]
        # A port probe: connect, close, never a byte.
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await asyncio.sleep(0.2)
        # A server-first protocol (a tcp relay) must still see it; HTTP and TLS need not.
        assert seen == ([] if client_first else [b"l"])
        assert acceptor.accepted == (0 if client_first else 1)
        # A client that speaks is served either way.
        assert await ask(port, b"hi") == b"l:hi"
        acceptor.close()

    run(loop_name, main())


def test_a_handshake_is_evictable_only_until_its_protocol_has_the_connection():
    """Between the end of a TLS handshake and the accepting task's next turn, the connection
    is registered twice (handshake and protocol): only the protocol may be judged then, or a
    newcomer would shut a live connection down as a handshake."""
    from types import SimpleNamespace

    from nsproxy.accept import _Handshake

    a, b = socket.socketpair()
    made: list = []
    handshake = _Handshake(a, made)
    assert handshake.evictable() and not handshake.closing()
    made.append(SimpleNamespace(transport=None))  # made, handshake still under way
    assert handshake.evictable()
    made[0].transport = object()  # the handshake is done: the protocol has the connection
    assert not handshake.evictable() and handshake.closing()
    a.close()
    b.close()
