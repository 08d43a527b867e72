#!/usr/bin/env python3
"""A peer that sends as much as it can to one that takes nothing, for the buffering tests.

Usage:
  flood_peer.py server HOST:PORT sink|flood    a server (prints "ready"); sink: never reads;
                                               flood: reads one request head, then answers
                                               200 with a 1 GiB Content-Length body, sent
                                               until nothing more goes
  flood_peer.py client HOST PORT upload|download|raw [--tls]
                                               upload: a POST with a 1 GiB Content-Length
                                               body, sent until nothing more goes; download:
                                               a GET, and nothing read after it; raw: bytes
                                               with no HTTP framing (a tcp listener)

The side that sends prints one JSON line once no byte has gone for STALL seconds:
{"sent": N}, the bytes handed to the kernel (with TLS: the plaintext), the request or response
head included. Then every side keeps its connection open, reading nothing, until killed: the
test reads the kernel's queues (``ss``) and subtracts them from ``sent``, and what is left is
what the proxy holds in its own memory.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import time

STALL = 1.5  # seconds without progress that end the sending
CHUNK = b"x" * 16384
GIB = 1 << 30


def send_until_stalled(sock: socket.socket, head: bytes) -> None:
    sent = 0
    pending = head
    sock.settimeout(STALL)
    while True:
        try:
            count = sock.send(pending or CHUNK)
        except (TimeoutError, ssl.SSLWantWriteError):
            break
        sent += count
        pending = pending[count:]
    print(json.dumps({"sent": sent}), flush=True)


def hold_open() -> None:
    while True:
        time.sleep(3600)


def server(address: str, mode: str) -> None:
    host, port = address.rsplit(":", 1)
    listener = socket.create_server((host, int(port)))
    print("ready", flush=True)
    conn, _ = listener.accept()
    if mode == "flood":
        head = b""
        while b"\r\n\r\n" not in head:
            data = conn.recv(4096)
            if not data:
                return
            head += data
        send_until_stalled(conn, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % GIB)
    hold_open()


def client(host: str, port: int, mode: str, tls: bool) -> None:
    sock = socket.create_connection((host, port), timeout=10)
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        sock = context.wrap_socket(sock, server_hostname=host)
    if mode == "upload":
        head = b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % GIB
        send_until_stalled(sock, head)
    elif mode == "raw":
        send_until_stalled(sock, b"")
    else:
        sock.sendall(b"GET /down HTTP/1.1\r\nHost: x\r\n\r\n")
    hold_open()


def main(argv: list[str]) -> None:
    if argv[0] == "server":
        server(argv[1], argv[2])
    else:
        client(argv[1], int(argv[2]), argv[3], "--tls" in argv)


if __name__ == "__main__":
    main(sys.argv[1:])
