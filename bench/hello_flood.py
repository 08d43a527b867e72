"""A TLS ClientHello flood: connections that each make the server run the costly half of a
full handshake, and leave.

    python bench/hello_flood.py HOST PORT CONNECTIONS SECONDS

``CONNECTIONS`` threads each, for ``SECONDS``: connect, send one ClientHello (made once by
Python's ssl over memory BIOs: TLS 1.3, an X25519 key share), read until the server's first
flight has begun to arrive (its ServerHello; by then it has signed with its key), close. The
server pays a key exchange and a signature per connection, the client a connect and a send:
the cheapest way for a tenant to spend a proxy's CPU on TLS. Prints one JSON line: the
connections answered and the answers per second.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import struct
import sys
import threading
import time

LINGER_ZERO = struct.pack("ii", 1, 0)


def client_hello() -> bytes:
    """The first flight of a Python TLS client (no SNI), as bytes to send again and again."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def main() -> int:
    host, port, connections, seconds = (
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        float(sys.argv[4]),
    )
    hello = client_hello()
    end = time.monotonic() + seconds
    answered = [0] * connections

    def flood(index: int) -> None:
        while time.monotonic() < end:
            try:
                with socket.create_connection((host, port), timeout=5) as sock:
                    # closed with a reset: no TIME_WAIT, whose thousands would slow connect()
                    # down in later runs (and an attacker would not wait either)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
                    sock.sendall(hello)
                    if sock.recv(4096):
                        answered[index] += 1
            except OSError:
                time.sleep(0.01)  # refused or reset: try again

    threads = [threading.Thread(target=flood, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = sum(answered)
    print(json.dumps({"answered": total, "per_s": round(total / seconds)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
