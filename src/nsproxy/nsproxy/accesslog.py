"""Access log: one JSON object per line and per request.

Lines are buffered and flushed by the daemon's one-second sweep (and at exit), so the hot path
only pays for ``json.dumps`` when a log is configured at all.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time


class AccessLog:
    """Writes request records to a file or to stdout ("-")."""

    def __init__(self, target: str):
        self.target = target
        if target == "-":
            self.stream = sys.stdout
            self.owned = False
        else:
            self.stream = open(target, "a", buffering=65536, encoding="utf-8")  # noqa: SIM115
            self.owned = True
        self.dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode

    def request(self, conn, duration: float) -> None:
        """Record one request of an http.ClientConnection."""
        self.stream.write(
            self.dumps(
                {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "tenant": conn.tenant.name,
                    "listener": conn.listener,
                    "client": conn.client_ip,
                    "method": conn.method.decode("latin-1"),
                    "host": (conn.host or b"").decode("latin-1"),
                    "path": conn.url.decode("latin-1"),
                    "upstream": conn.upstream_name,
                    "status": conn.status,
                    "bytes_in": conn.body_in,
                    "bytes_out": conn.bytes_out,
                    "duration_ms": round(duration * 1000, 3),
                }
            )
            + "\n"
        )

    def event(self, **fields) -> None:
        """A record that is not an HTTP request (tcp connections of tcp.py)."""
        fields.setdefault("time", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self.stream.write(self.dumps(fields) + "\n")

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()

    def close(self) -> None:
        self.flush()
        if self.owned:
            self.stream.close()
