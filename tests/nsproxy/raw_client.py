#!/usr/bin/env python3
"""Send raw bytes to HOST:PORT and report what came back (for malformed-request tests).

Usage: raw_client.py HOST PORT [PAUSE]  < request-bytes
Reads the request from stdin. With PAUSE (seconds), sends only the first half, waits, then
nothing more (a slow client). Prints JSON: {"statuses": [status lines], "closed": bool,
"body": first 20000 bytes of the answer, "seconds": time until close or timeout}.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import time


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    pause = float(sys.argv[3]) if len(sys.argv) > 3 else None
    request = sys.stdin.buffer.read()
    sock = socket.create_connection((host, port), timeout=20)
    start = time.monotonic()
    if pause is None:
        sock.sendall(request)
    else:
        sock.sendall(request[: len(request) // 2])
    answer = b""
    closed = False
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            answer += chunk
    except (socket.timeout, ConnectionResetError):
        closed = not isinstance(sys.exc_info()[1], socket.timeout)
    statuses = [m.decode() for m in re.findall(rb"HTTP/1\.[01] \d{3}[^\r\n]*", answer)]
    print(
        json.dumps(
            {
                "statuses": statuses,
                "closed": closed,
                "body": answer[:20000].decode("latin-1"),
                "seconds": round(time.monotonic() - start, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
