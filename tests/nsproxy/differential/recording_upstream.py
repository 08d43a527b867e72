#!/usr/bin/env python3
"""Recording upstream of the differential suite: keeps every byte received, per connection,
and answers as the worst real upstream would.

Usage: recording_upstream.py HOST:PORT [HOST:PORT ...]     (prints "ready" once listening)

It reads requests with the *lenient* reader of request_readers.py (so a request smuggled past
the proxy gets executed and answered, as it would be by a lenient server) and answers each as
its path asks (upstream_behaviour.py). The strict reading is done later, by the test, on the
recorded bytes.

Control, one JSON value per line on stdin, one JSON line answered on stdout:
  "take"  every connection since the last take: {"connections": [{"server": "HOST:PORT",
          "data": base64 of all bytes received, "tunnel_at": offset where the upstream
          switched protocols, or null, "truncated": bool}]}. Before answering, it closes
          them all and waits (1 s at most) until the proxy has closed its side as well, so
          that the next example starts with no pooled connection.
Received bytes are bounded per connection (MAX_RECORD); past that, the connection is closed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sys

from request_readers import LenientError, lenient_next
from upstream_behaviour import SLOW, STRAY_TAG, TAG, answer, behaviour_of

MAX_RECORD = 4 * 1024 * 1024


class RecordedConnection(asyncio.Protocol):
    def __init__(self, server: str, registry: list):
        self.server = server
        self.data = bytearray()
        self.pos = 0  # where the lenient reader goes on
        self.tunnel_at: int | None = None
        self.truncated = False
        self.taken = False  # reported: bytes still arriving are kept, not answered
        self.late = None  # the timer of an answer held back ("slow")
        self.peer_done = False  # the peer shut down its side: close once everything is answered
        self.transport = None
        self.peer_closed = asyncio.get_running_loop().create_future()
        registry.append(self)

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if len(self.data) + len(data) > MAX_RECORD:
            self.truncated = True
            self.transport.abort()
            return
        self.data += data
        if self.taken:
            return
        if self.tunnel_at is not None:
            self.transport.write(data)  # the switched protocol: an echo
            return
        self._answer_requests()

    def eof_received(self):
        # A request is never delimited by the end of the stream; but one already read is
        # still answered, as real servers do for a half-closed peer.
        self.peer_done = True
        return self.late is not None

    def connection_lost(self, exc):
        if not self.peer_closed.done():
            self.peer_closed.set_result(None)

    def _answer_requests(self):
        """Answer every complete request read so far, in order."""
        while not self.transport.is_closing() and self.late is None:
            try:
                request, end = lenient_next(bytes(self.data), self.pos, eof=False)
            except LenientError:
                self.transport.write(
                    b"HTTP/1.1 400 Bad Request\r\n%b: %b\r\nConnection: close\r\n"
                    b"Content-Length: 0\r\n\r\n" % (TAG, STRAY_TAG)
                )
                self.transport.close()
                return
            if request is None:
                return
            self.pos = end
            reply, then = answer(request.path, request.method.upper(), request.upgrade)
            if behaviour_of(request.path) == "slow":
                loop = asyncio.get_running_loop()
                self.late = loop.call_later(SLOW, self._answer_late, reply, request.keeps_alive)
                return
            if reply:
                self.transport.write(reply)
            if then == "close" or not request.keeps_alive:
                self.transport.close()
                return
            if then == "tunnel":
                self.tunnel_at = end
                rest = bytes(self.data[end:])
                if rest:
                    self.transport.write(rest)
                return

    def _answer_late(self, reply: bytes, keep_alive: bool):
        self.late = None
        if self.taken or self.transport.is_closing():
            return
        self.transport.write(reply)
        if not keep_alive:
            self.transport.close()
            return
        self._answer_requests()
        if self.peer_done and self.late is None:
            self.transport.close()

    def report(self) -> dict:
        return {
            "server": self.server,
            "data": base64.b64encode(bytes(self.data)).decode(),
            "tunnel_at": self.tunnel_at,
            "truncated": self.truncated,
        }


async def take(registry: list) -> dict:
    """Report and forget every connection; close the open ones and wait for the peer's close."""
    connections = list(registry)
    registry.clear()
    for conn in connections:
        conn.taken = True
        if conn.late is not None:
            conn.late.cancel()
        if conn.transport is not None and not conn.transport.is_closing():
            with contextlib.suppress(OSError):
                conn.transport.write_eof()
    pending = [c.peer_closed for c in connections if not c.peer_closed.done()]
    if pending:
        await asyncio.wait(pending, timeout=1.0)
    for conn in connections:
        if conn.transport is not None:
            conn.transport.abort()
    return {"connections": [c.report() for c in connections if c.data]}


async def main(addresses: list[str]) -> None:
    loop = asyncio.get_running_loop()
    registry: list[RecordedConnection] = []
    servers = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        servers.append(
            await loop.create_server(
                lambda a=address: RecordedConnection(a, registry), host, int(port)
            )
        )
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    while True:
        line = await reader.readline()
        if not line:
            break
        command = json.loads(line)
        if command == "take":
            reply = await take(registry)
        else:
            reply = {"error": f"unknown command {command!r}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    for server in servers:
        server.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
