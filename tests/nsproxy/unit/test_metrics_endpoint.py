"""The metrics listener's bounds, with a real loop and real loopback connections: any local
user can connect, and its connections live in a worker that serves tenants too."""

from __future__ import annotations

import asyncio

import pytest
from loops import LOOPS, run

from nsproxy import metrics_endpoint
from nsproxy.metrics_endpoint import MetricsProtocol


async def _answer():
    return 200, b"metrics\n"


async def _get(port: int, path: bytes = b"/healthz") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET %b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path)
    answer = await reader.read()
    writer.close()
    return answer


@pytest.mark.parametrize("loop_name", LOOPS)
def test_idle_connections_are_bounded_in_count_and_time(loop_name, monkeypatch):
    monkeypatch.setattr(metrics_endpoint, "MAX_CONNECTIONS", 8)
    monkeypatch.setattr(metrics_endpoint, "IDLE_TIMEOUT", 0.5)

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: MetricsProtocol({b"/metrics": _answer}), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(8)]
        await asyncio.sleep(0.1)
        assert MetricsProtocol.connections == 8
        # the ninth is refused at once, with a reason
        assert (await _get(port)).startswith(b"HTTP/1.1 503 ")
        # an idle connection is closed by the listener after IDLE_TIMEOUT, every one of them
        for reader, _writer in idle:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        await asyncio.sleep(0.1)
        assert MetricsProtocol.connections == 0
        got = await _get(port, b"/metrics")
        assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"metrics\n")
        for _reader, writer in idle:
            writer.close()
        server.close()

    run(loop_name, main())


def test_a_connection_that_keeps_asking_stays_open(monkeypatch):
    monkeypatch.setattr(metrics_endpoint, "IDLE_TIMEOUT", 0.5)

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: MetricsProtocol({}), "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        for _ in range(4):  # 1.2 s in all, never 0.5 s without a request
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"ok\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            await asyncio.sleep(0.3)
        writer.close()
        server.close()

    run("asyncio", main())
