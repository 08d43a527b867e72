"""What one relayed connection holds in the worker's memory while the side it feeds takes
nothing (``buffering.py``): a tenant that uploads to an upstream that never reads, or never
reads the response it asked for, must cost the worker a bounded amount, not whatever the
other side managed to send.

flood_peer.py sends until the kernel takes no more; the bytes it sent minus every kernel queue
on the way (``ss``: both peers' sockets and the proxy's two) are what the proxy holds itself.
The bounds are buffering.py's model, worst cases included; the old reads (up to 256 KiB each,
passed on however full the peer's buffer was) held 251 kB instead of 68 KiB on a tcp relay.
With TLS the bound is dominated by uvloop's own read into the incoming BIO (256 KiB, not
reachable from the proxy), which a loaded machine reaches: the https upload case proves a bound
exists but does not tell the old reads from the new (they held 379 and 136 KiB on an idle
machine; bench/connection_buffers.py compares them in RSS).
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ADDR, http_tenant, make_cert

from nsproxy.buffering import HIGH_WATER, MIN_READ_BYTES

FLOOD = str(Path(__file__).with_name("flood_peer.py"))
KiB = 1024
HEADS = 4 * KiB  # request and response heads, as rewritten by the proxy
#: The peer's write buffer: full to its high-water mark, then one read past it.
PLAIN = HIGH_WATER + MIN_READ_BYTES + HEADS
#: uvloop's TLS: ciphertext read from the socket is taken 256 KiB at a time at most
#: (SSL_READ_MAX_SIZE) into the incoming BIO, which pauses the socket past its own mark
#: (HIGH_WATER, set by the client connection); one TLS record may wait decrypted (16 KiB).
TLS_IN = HIGH_WATER + 256 * KiB + 16 * KiB
#: Toward a TLS client: the TLS transport's buffer (the outgoing BIO, held to PLAIN), then the
#: socket's transport under it, 64 KiB (uvloop's default mark) plus one flush of that BIO.
TLS_OUT = 64 * KiB + PLAIN
BOUNDS = {
    ("http", "upload"): PLAIN,
    ("http", "download"): PLAIN,
    ("https", "upload"): TLS_IN + PLAIN,
    ("https", "download"): PLAIN + TLS_OUT,
    ("tcp", "upload"): PLAIN,
    ("tcp", "download"): PLAIN,
}
UPSTREAM = "127.0.0.1:9500"


def _flood(proxy, argv: list[str], netns: str | None = None) -> subprocess.Popen:
    argv = [sys.executable, FLOOD, *argv]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = proxy.sb.popen(argv, stdout=subprocess.PIPE, text=True)
    proxy.helpers.append(proc)
    return proc


def _line(proc: subprocess.Popen, timeout: float = 60) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "flood_peer.py printed nothing"
    return proc.stdout.readline().strip()


def _queued(proxy, netns: str | None) -> int:
    """Bytes in the kernel queues (Recv-Q + Send-Q) of every established TCP socket."""
    argv = ["ss", "-tnH", "state", "established"]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    rows = [line.split() for line in proxy.sb.run(argv).stdout.splitlines() if line.strip()]
    return sum(int(row[0]) + int(row[1]) for row in rows)


def _tenant(protocol: str, tmp_path) -> dict:
    if protocol == "tcp":
        return {
            "name": "t",
            "netns": "t",
            "listeners": [{"listen": f"{ADDR}:80", "protocol": "tcp", "upstream": "app"}],
            "upstreams": {"app": {"netns": None, "servers": [UPSTREAM]}},
        }
    tenant = http_tenant("t", [UPSTREAM])
    if protocol == "https":
        cert = make_cert(tmp_path, "t", "t.example")
        tenant["listeners"] = [
            {"listen": f"{ADDR}:80", "protocol": "https", "tls": {"certificates": [cert]}}
        ]
    return tenant


@pytest.mark.parametrize("direction", ["upload", "download"])
@pytest.mark.parametrize("protocol", ["http", "https", "tcp"])
def test_a_side_that_takes_nothing_holds_a_bounded_amount(proxy, tmp_path, protocol, direction):
    proxy.add_netns("t")
    upstream = _flood(proxy, ["server", UPSTREAM, "sink" if direction == "upload" else "flood"])
    assert _line(upstream) == "ready"
    proxy.write_config([_tenant(protocol, tmp_path)], timeouts={"drain": 1})
    proxy.start()
    mode = "raw" if protocol == "tcp" and direction == "upload" else direction
    client = _flood(
        proxy, ["client", ADDR, "80", mode] + (["--tls"] if protocol == "https" else []), "t"
    )
    sender = client if direction == "upload" else upstream
    sent = json.loads(_line(sender))["sent"]
    tenant_side, host_side = _queued(proxy, "t"), _queued(proxy, None)
    held = sent - tenant_side - host_side
    figures = f"sent {sent}, queued {tenant_side} + {host_side}, held {held}"
    # The relay ran: the side that takes nothing has a full receive queue behind the proxy.
    assert min(tenant_side, host_side) > 64 * KiB, figures
    assert held <= BOUNDS[protocol, direction], figures
