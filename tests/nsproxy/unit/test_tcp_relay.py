"""The tcp relay on loopback sockets: payloads both ways with half-close, flow control, SNI
routing of real ClientHellos, the PROXY v2 header, timeouts and failures. The upstream is a
minimal stand-in with the UpstreamLike ``connect`` (the real one is used in the daemon tests)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import ssl
import struct

import pytest

from nsproxy import tcp

try:
    import uvloop
except ImportError:  # the daemon's fast path is optional
    uvloop = None

LOOPS = ["asyncio"] + (["uvloop"] if uvloop else [])


class LoopbackUpstream:
    """Stand-in for upstream.Upstream: connects to one loopback port."""

    def __init__(self, port: int):
        self.port = port
        self.connects = 0

    async def connect(self, protocol_factory):
        self.connects += 1
        loop = asyncio.get_running_loop()
        return await loop.create_connection(protocol_factory, "127.0.0.1", self.port)


class Backend:
    """A loopback TCP server whose handler sees (reader, writer); records what it read."""

    def __init__(self, handler):
        self.handler = handler
        self.received: list[bytes] = []
        self.server = None

    async def start(self) -> LoopbackUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return LoopbackUpstream(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader, writer):
        try:
            await self.handler(self, reader, writer)
        finally:
            writer.close()


async def read_first(backend, reader, writer):
    backend.received.append(await reader.read(65536))


def run(loop_name, coro):
    if loop_name == "uvloop":
        loop = uvloop.new_event_loop()
        try:
            return loop.run_until_complete(coro)
        finally:
            loop.close()
    return asyncio.run(coro)


async def start_relay(listener, upstreams, **options):
    records = []
    factory = tcp.RelayFactory(listener, "acme", upstreams, records.append, **options)
    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], factory, records


async def wait_for(predicate, what: str, timeout: float = 30.0):
    """Poll until predicate() is true (generous limit: these machines are noisy)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def read_until_closed(reader) -> bytes:
    """What arrives before the relay closes the connection (a reset counts as closed)."""
    try:
        return await asyncio.wait_for(reader.read(), 30)
    except ConnectionResetError:
        return b""


async def send_counted(writer, sent: list[int], total: int, chunk_size=256 * 1024, eof=True):
    """Write zeros until ``total`` bytes went, counting them in ``sent[0]``; then EOF."""
    chunk = bytes(chunk_size)
    while sent[0] < total:
        writer.write(chunk)
        await writer.drain()
        sent[0] += len(chunk)
    if eof:
        writer.write_eof()


async def until_stuck(sent: list[int]) -> int:
    """Wait until ``sent[0]`` has not moved for half a second: the sender is held back."""
    last, still = -1, 0
    while still < 25:
        await asyncio.sleep(0.02)
        still = still + 1 if sent[0] == last else 0
        last = sent[0]
    return last


def hello_bytes(server_name):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


# -- validate_listener ---------------------------------------------------------------------


def test_valid_listeners_have_no_problems():
    names = {"db", "web"}
    assert tcp.validate_listener({"upstream": "db"}, names) == []
    assert (
        tcp.validate_listener(
            {
                "sni_routes": [
                    {"sni": "a.example", "upstream": "db"},
                    {"sni": "*.example", "upstream": "web"},
                ],
                "proxy_protocol": "v2",
            },
            names,
        )
        == []
    )


@pytest.mark.parametrize(
    ("listener", "problem"),
    [
        ({}, "upstream: required for a tcp listener (or give sni_routes)"),
        ({"upstream": "nope"}, "upstream: unknown upstream 'nope' (tenant has: db, web)"),
        ({"upstream": 5}, "upstream: must be the name of one of the tenant's upstreams"),
        (
            {"upstream": "db", "sni_routes": []},
            "sni_routes: must be a non-empty list of {sni, upstream} objects",
        ),
        (
            {"sni_routes": [{"sni": "A.example", "upstream": "db"}]},
            "sni_routes[0].sni: must be a lower-case host name like 'db.example' or '*.example' "
            "(got 'A.example')",
        ),
        (
            {"sni_routes": [{"sni": "*", "upstream": "db"}]},
            "sni_routes[0].sni: must be a lower-case host name like 'db.example' or '*.example' "
            "(got '*')",
        ),
        (
            {"sni_routes": [{"sni": "a.example", "upstream": "x"}]},
            "sni_routes[0].upstream: unknown upstream 'x' (tenant has: db, web)",
        ),
        (
            {"sni_routes": [{"sni": "a.example", "upstream": "db", "port": 1}]},
            "sni_routes[0].port: unknown key (allowed: sni, upstream)",
        ),
        (
            {
                "sni_routes": [
                    {"sni": "a.example", "upstream": "db"},
                    {"sni": "a.example", "upstream": "web"},
                ]
            },
            "sni_routes[1].sni: 'a.example' is listed twice",
        ),
        (
            {"upstream": "db", "proxy_protocol": "v1"},
            "proxy_protocol: must be 'v2' or left out (got 'v1')",
        ),
    ],
)
def test_bad_listeners_are_reported_naming_the_field(listener, problem):
    assert tcp.validate_listener(listener, {"db", "web"}) == [problem]


# -- relaying -------------------------------------------------------------------------------


@pytest.mark.parametrize("loop_name", LOOPS)
def test_large_payloads_cross_both_ways_with_half_close(loop_name):
    upload = os.urandom(8 * 1024 * 1024)
    download = os.urandom(6 * 1024 * 1024)

    async def sink_then_reply(backend, reader, writer):
        data = await reader.read()  # until the client's EOF comes through
        backend.received.append(data)
        writer.write(hashlib.sha256(data).digest() + download)
        await writer.drain()

    async def main():
        backend = Backend(sink_then_reply)
        up = await backend.start()
        server, port, factory, records = await start_relay({"upstream": "db"}, {"db": up})
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(upload)
        await writer.drain()
        writer.write_eof()  # half-close: the reply must still come back
        reply = await reader.read()
        writer.close()
        await wait_for(lambda: records, "the relay's log record")
        server.close()
        return backend, reply, records, factory

    backend, reply, records, factory = run(loop_name, main())
    assert backend.received == [upload]
    assert reply == hashlib.sha256(upload).digest() + download
    (record,) = records
    assert record["bytes_in"] == len(upload)
    assert record["bytes_out"] == 32 + len(download)
    assert (record["tenant"], record["upstream"], record["error"]) == ("acme", "db", None)
    assert not factory.connections


@pytest.mark.parametrize("loop_name", LOOPS)
def test_upstream_is_paused_while_the_client_does_not_read(loop_name):
    total = 96 * 1024 * 1024
    sent = [0]

    async def flood(backend, reader, writer):
        await send_counted(writer, sent, total, eof=False)

    async def main():
        backend = Backend(flood)
        up = await backend.start()
        server, port, factory, _ = await start_relay({"upstream": "db"}, {"db": up})
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
        stuck_at = await until_stuck(sent)  # without reading: the backend is held back
        (relay,) = factory.connections
        buffered = relay.client.get_write_buffer_size() + relay.upstream.get_write_buffer_size()
        got = 0
        while got < total:
            data = await reader.read(1 << 20)
            assert data, "relay closed early"
            got += len(data)
        writer.close()
        server.close()
        return stuck_at, buffered, got

    stuck_at, buffered, got = run(loop_name, main())
    assert stuck_at < total / 2  # the kernel buffers hold a few MB, the relay holds back
    assert buffered <= 1024 * 1024
    assert got == total


@pytest.mark.parametrize("loop_name", LOOPS)
def test_client_is_paused_while_the_upstream_does_not_read(loop_name):
    total = 96 * 1024 * 1024
    release = asyncio.Event()
    got = [0]

    async def slow_sink(backend, reader, writer):
        await release.wait()
        while True:
            data = await reader.read(1 << 20)
            if not data:
                break
            got[0] += len(data)
        writer.write(b"done")
        await writer.drain()

    async def main():
        backend = Backend(slow_sink)
        up = await backend.start()
        server, port, factory, _ = await start_relay({"upstream": "db"}, {"db": up})
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sent = [0]
        sender = asyncio.ensure_future(send_counted(writer, sent, total))
        stuck_at = await until_stuck(sent)
        (relay,) = factory.connections
        buffered = relay.client.get_write_buffer_size() + relay.upstream.get_write_buffer_size()
        release.set()
        await sender
        answer = await reader.read()
        writer.close()
        server.close()
        return stuck_at, buffered, answer

    stuck_at, buffered, answer = run(loop_name, main())
    assert stuck_at < total / 2
    assert buffered <= 1024 * 1024
    assert (answer, got[0]) == (b"done", total)


# -- SNI routing ----------------------------------------------------------------------------

SNI_LISTENER = {
    "sni_routes": [
        {"sni": "a.example", "upstream": "a"},
        {"sni": "*.b.example", "upstream": "b"},
        {"sni": "x.b.example", "upstream": "a"},
    ],
}


@pytest.mark.parametrize(
    ("sni", "default", "expected"),
    [
        ("a.example", None, "a"),
        ("A.Example", None, "a"),
        ("shop.b.example", None, "b"),
        ("x.b.example", None, "a"),  # exact beats wildcard
        ("deep.shop.b.example", "d", "d"),  # a wildcard is one label
        ("b.example", "d", "d"),
        (None, "d", "d"),
    ],
)
def test_sni_picks_the_upstream_and_the_hello_passes_unchanged(sni, default, expected):
    hello = hello_bytes(sni)

    async def main():
        backends = {name: Backend(read_first) for name in "abd"}
        ups = {name: await b.start() for name, b in backends.items()}
        listener = {**SNI_LISTENER, **({"upstream": default} if default else {})}
        server, port, _, records = await start_relay(listener, ups)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # the hello in two pieces: routing must wait for the whole of it
        writer.write(hello[:50])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(hello[50:])
        await wait_for(lambda: any(b.received for b in backends.values()), "a backend")
        writer.close()
        await wait_for(lambda: records, "log record")
        server.close()
        return {n: b.received for n, b in backends.items() if b.received}, records[0]

    received, record = asyncio.run(main())
    assert received == {expected: [hello]}
    assert record["sni"] == (sni.lower() if sni else None)
    assert record["upstream"] == expected


def test_non_tls_bytes_go_to_the_default_upstream():
    async def main():
        backends = {name: Backend(read_first) for name in "ad"}
        ups = {name: await b.start() for name, b in backends.items()}
        server, port, _, _ = await start_relay({**SNI_LISTENER, "upstream": "d"}, ups)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
        await wait_for(lambda: backends["d"].received, "the default backend")
        writer.close()
        server.close()
        return backends["d"].received, backends["a"].received

    assert asyncio.run(main()) == ([b"SSH-2.0-OpenSSH_9.2\r\n"], [])


def test_no_match_without_default_closes_the_client_and_connects_nowhere():
    async def main():
        backend = Backend(read_first)
        up = await backend.start()
        server, port, _, records = await start_relay(SNI_LISTENER, {"a": up, "b": up})
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(hello_bytes("other.example"))
        rest = await read_until_closed(reader)
        writer.close()
        await wait_for(lambda: records, "log record")
        server.close()
        return rest, up.connects, records[0]

    rest, connects, record = asyncio.run(main())
    assert rest == b"" and connects == 0
    assert record["error"] == "no route for SNI 'other.example'"


def test_client_that_never_finishes_its_hello_is_routed_at_the_header_timeout():
    async def main():
        backend = Backend(read_first)
        up = await backend.start()
        server, port, _, records = await start_relay(
            {**SNI_LISTENER, "upstream": "d"}, {"a": up, "d": up}, timeouts={"header_read": 0.2}
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(hello_bytes("a.example")[:20])
        await wait_for(lambda: backend.received, "the default backend")
        writer.close()
        await wait_for(lambda: records, "log record")
        server.close()
        return records[0]

    record = asyncio.run(main())
    assert (record["sni"], record["upstream"]) == (None, "d")


# -- PROXY protocol v2 ----------------------------------------------------------------------


@pytest.mark.parametrize("loop_name", LOOPS)
def test_proxy_v2_header_precedes_the_client_bytes(loop_name):
    async def read_header(backend, reader, writer):
        fixed = await reader.readexactly(16)
        body = await reader.readexactly(struct.unpack("!H", fixed[14:16])[0])
        payload = await reader.readexactly(5)
        backend.received.append((fixed, body, payload))

    async def main():
        backend = Backend(read_header)
        up = await backend.start()
        server, port, _, _ = await start_relay(
            {"upstream": "db", "proxy_protocol": "v2"}, {"db": up}
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client_port = writer.get_extra_info("sockname")[1]
        writer.write(b"hello")
        await wait_for(lambda: backend.received, "the backend")
        writer.close()
        server.close()
        return backend.received[0], client_port, port

    (fixed, body, payload), client_port, relay_port = run(loop_name, main())
    assert fixed[:12] == b"\r\n\r\n\x00\r\nQUIT\n"
    assert fixed[12:14] == b"\x21\x11"  # v2 PROXY, TCP over IPv4
    src, dst = socket.inet_ntoa(body[0:4]), socket.inet_ntoa(body[4:8])
    sport, dport = struct.unpack("!HH", body[8:12])
    assert (src, sport, dst, dport) == ("127.0.0.1", client_port, "127.0.0.1", relay_port)
    assert body[12:] == b"\x30\x00\x04acme"  # PP2_TYPE_NETNS = the tenant
    assert payload == b"hello"


# -- timeouts and failures ------------------------------------------------------------------


@pytest.mark.parametrize("loop_name", LOOPS)
def test_idle_relay_is_closed_and_logged(loop_name):
    async def hold(backend, reader, writer):
        backend.received.append(await reader.read())

    async def main():
        backend = Backend(hold)
        up = await backend.start()
        server, port, factory, records = await start_relay(
            {"upstream": "db"}, {"db": up}, timeouts={"idle": 0.3}
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x")
        rest = await read_until_closed(reader)
        await wait_for(lambda: records and backend.received, "close on both sides")
        writer.close()
        server.close()
        return rest, records[0], backend.received, factory.connections

    rest, record, received, open_relays = run(loop_name, main())
    assert rest == b""
    assert record["error"] == "idle timeout"
    assert received == [b"x"]  # the upstream side was closed too
    assert not open_relays


def test_refused_upstream_closes_the_client_and_says_why():
    class Refusing:
        async def connect(self, protocol_factory):
            raise ConnectionRefusedError(111, "Connection refused")

    async def main():
        server, port, _, records = await start_relay({"upstream": "db"}, {"db": Refusing()})
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"data")
        rest = await read_until_closed(reader)
        writer.close()
        await wait_for(lambda: records, "log record")
        server.close()
        return rest, records[0]

    rest, record = asyncio.run(main())
    assert rest == b""
    assert "Connection refused" in record["error"]


def test_client_reset_closes_the_upstream_side():
    async def main():
        closed = asyncio.Event()

        async def wait_close(backend, reader, writer):
            backend.received.append(await reader.read())
            closed.set()

        backend = Backend(wait_close)
        up = await backend.start()
        server, port, factory, records = await start_relay({"upstream": "db"}, {"db": up})
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"abc")
        await wait_for(
            lambda: factory.connections and next(iter(factory.connections)).upstream,
            "the upstream connection",
        )
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST
        await asyncio.wait_for(closed.wait(), 30)
        await wait_for(lambda: records, "log record")
        server.close()
        return backend.received, records[0]

    received, record = asyncio.run(main())
    assert received == [b"abc"]
    assert record["error"] is not None and record["error"].startswith("client:")


def test_abort_all_cuts_open_relays():
    async def main():
        async def hold(backend, reader, writer):
            await reader.read()

        backend = Backend(hold)
        up = await backend.start()
        server, port, factory, records = await start_relay({"upstream": "db"}, {"db": up})
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x")
        await wait_for(lambda: factory.connections, "the relay")
        factory.abort_all()
        rest = await read_until_closed(reader)
        await wait_for(lambda: records, "log record")
        server.close()
        return rest, records[0]

    rest, record = asyncio.run(main())
    assert rest == b"" and record["error"] == "drain timeout"


def test_client_leaving_during_a_slow_connect_cancels_the_connect():
    async def main():
        started, cancelled = asyncio.Event(), asyncio.Event()

        class Hanging:
            async def connect(self, protocol_factory):
                started.set()
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    cancelled.set()
                    raise

        server, port, factory, records = await start_relay({"upstream": "db"}, {"db": Hanging()})
        sock = socket.create_connection(("127.0.0.1", port))
        await asyncio.wait_for(started.wait(), 30)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST: the client is gone
        await asyncio.wait_for(cancelled.wait(), 30)
        await wait_for(lambda: records, "log record")
        server.close()
        return records[0], factory.connections

    record, open_relays = asyncio.run(main())
    assert record["upstream"] == "db" and not open_relays


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_client_that_filled_the_connect_wait_is_paused_by_an_upstream_that_does_not_read(
    loop_name,
):
    """The bytes collected while connecting (up to _PENDING_LIMIT) are written at once when the
    upstream connects. When that write alone passes the high-water mark (the kernel took little
    of it, and the upstream reads nothing), the client must still be paused: before,
    the pause came inside the write, while the relay still counted as collecting, and was lost,
    so the client was never paused and the worker buffered all it sent (hundreds of MB)."""
    total = 32 * 1024 * 1024 + 200 * 1024

    async def main():
        release, draining = asyncio.Event(), asyncio.Event()

        async def sink(backend, reader, writer):
            await draining.wait()
            backend.received.append(len(await reader.read()))

        listening = socket.socket()
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        listening.bind(("127.0.0.1", 0))
        backend = Backend(sink)
        backend.server = await asyncio.start_server(backend._serve, sock=listening)

        class Slow:
            async def connect(self, protocol_factory):
                await release.wait()
                # A kernel that takes little of the first write (a small send buffer, as
                # under memory pressure): most of the collected bytes stay in the transport.
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                sock.setblocking(False)
                loop = asyncio.get_running_loop()
                await loop.sock_connect(sock, listening.getsockname())
                return await loop.create_connection(protocol_factory, sock=sock)

        server, port, factory, records = await start_relay({"upstream": "db"}, {"db": Slow()})
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sent = [0]
        writer.write(bytes(200 * 1024))  # collected while connecting, below its limit
        await writer.drain()
        (relay,) = factory.connections
        await wait_for(lambda: len(relay.pending or b"") == 200 * 1024, "the bytes collected")
        release.set()
        await wait_for(lambda: relay.upstream is not None, "the upstream connected")
        sender = asyncio.ensure_future(send_counted(writer, sent, total - 200 * 1024))
        stuck_at = await until_stuck(sent)  # the upstream reads nothing
        buffered = relay.upstream.get_write_buffer_size()
        draining.set()
        await sender
        await wait_for(lambda: records, "log record")
        writer.close()
        server.close()
        return buffered, stuck_at, backend.received

    buffered, stuck_at, received = run(loop_name, main())
    assert buffered <= 1024 * 1024 and stuck_at < total / 2, (buffered, stuck_at)
    assert received == [total]


def test_bytes_held_while_connecting_are_bounded():
    async def main():
        release = asyncio.Event()
        backend = Backend(lambda b, r, w: sink_all(b, r))
        real = await backend.start()

        class Slow:
            async def connect(self, protocol_factory):
                await release.wait()
                return await real.connect(protocol_factory)

        server, port, factory, records = await start_relay({"upstream": "db"}, {"db": Slow()})
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        total, sent = 32 * 1024 * 1024, [0]
        sender = asyncio.ensure_future(send_counted(writer, sent, total))
        stuck_at = await until_stuck(sent)
        (relay,) = factory.connections
        held = len(relay.pending)
        release.set()
        await sender
        await wait_for(lambda: records, "log record")
        writer.close()
        server.close()
        return held, stuck_at, backend.received, records[0]

    async def sink_all(backend, reader):
        backend.received.append(len(await reader.read()))

    held, stuck_at, received, record = asyncio.run(main())
    assert held <= 1024 * 1024 and stuck_at < 24 * 1024 * 1024
    assert received == [32 * 1024 * 1024] and record["bytes_in"] == 32 * 1024 * 1024
