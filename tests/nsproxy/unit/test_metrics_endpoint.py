"""The metrics listener's bounds, with a real loop and real loopback connections: any local
user can connect, and its connections live in a worker that serves tenants too."""

from __future__ import annotations

import asyncio
import socket

import pytest
from loops import LOOPS, run

from nsproxy import metrics_endpoint
from nsproxy.metrics_endpoint import MetricsProtocol


async def _answer():
    return 200, b"metrics\n"


async def _listener(answers=None, made=None):
    def factory():
        protocol = MetricsProtocol(answers if answers is not None else {b"/metrics": _answer})
        if made is not None:
            made.append(protocol)
        return protocol

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _get(port: int, path: bytes = b"/healthz") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET %b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setattr(metrics_endpoint, "MAX_CONNECTIONS", 8)
    monkeypatch.setattr(metrics_endpoint, "IDLE_TIMEOUT", 0.5)
    MetricsProtocol.alive.clear()


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_scraper_gets_in_past_connections_others_hold_and_idle_ones_close(loop_name, small):
    async def main():
        server, port = await _listener()
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(8)]
        await asyncio.sleep(0.1)
        assert len(MetricsProtocol.alive) == 8
        # a scraper at the limit: the oldest connection not being answered makes room
        got = await _get(port, b"/metrics")
        assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"metrics\n")
        assert await asyncio.wait_for(held[0][0].read(), 1) == b""
        # the others are closed once idle for IDLE_TIMEOUT
        for reader, _writer in held[1:]:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        await asyncio.sleep(0.1)
        assert MetricsProtocol.alive == {}
        for _reader, writer in held:
            writer.close()
        server.close()

    run(loop_name, main())


def test_when_every_connection_is_being_answered_a_new_one_gets_503(small):
    async def main():
        release = asyncio.Event()

        async def slow():
            await release.wait()
            return 200, b"late\n"

        server, port = await _listener({b"/metrics": slow})
        busy = []
        for _ in range(8):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            busy.append((reader, writer))
        await asyncio.sleep(0.2)
        assert (await _get(port)).startswith(b"HTTP/1.1 503 ")
        release.set()
        for reader, writer in busy:
            assert (await reader.readuntil(b"late\n")).startswith(b"HTTP/1.1 200 ")
            writer.close()
        server.close()

    run("asyncio", main())


def test_a_byte_now_and_then_does_not_keep_a_connection(small):
    """The 64 connections' worth of trickling clients would otherwise hold the listener."""

    async def main():
        server, port = await _listener()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        closed = asyncio.ensure_future(reader.read())
        for byte in b"GET /metri":  # a byte every 0.1 s: 1 s in all, twice IDLE_TIMEOUT
            writer.write(bytes([byte]))
            await asyncio.sleep(0.1)
            if closed.done():
                break
        assert closed.done() and closed.result() == b""
        writer.close()
        server.close()

    run("asyncio", main())


def test_a_connection_that_keeps_asking_stays_open(small):
    async def main():
        server, port = await _listener({})
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(4):  # 1.2 s in all, never 0.5 s without a request
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"ok\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            await asyncio.sleep(0.3)
        writer.close()
        server.close()

    run("asyncio", main())


@pytest.mark.parametrize("loop_name", LOOPS)
def test_answers_a_client_does_not_take_stop_its_requests_being_read(loop_name, small):
    """Pipelined requests from a client that reads nothing: answers wait in the worker's
    memory only up to the transport's high-water mark, then nothing more is read."""

    async def main():
        made = []
        server, port = await _listener(made=made)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        requests = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 50_000  # ~100 kB per 3000
        sent = 0
        for _ in range(200):
            try:
                sent += sock.send(requests[sent:])
            except BlockingIOError:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        (protocol,) = made
        assert protocol.transport.get_write_buffer_size() < 256 * 1024, sent
        sock.close()
        server.close()

    run(loop_name, main())


def test_requests_pipelined_behind_one_being_answered_end_the_connection_after_it(small):
    """One read can hold hundreds of requests; each /metrics answer costs a round trip to
    every worker and can be large. One is answered, then the connection closes."""

    async def main():
        answered = []

        async def counted():
            answered.append(1)
            await asyncio.sleep(0.05)
            return 200, b"metrics\n"

        server, port = await _listener({b"/metrics": counted})
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 200)
        got = await asyncio.wait_for(reader.read(), 5)  # to the close
        assert got.count(b"HTTP/1.1 200 ") == 1 and b"Connection: close" in got, got[:300]
        assert answered == [1]
        writer.close()
        server.close()

    run("asyncio", main())
