"""Access log: one JSON object per line and per request.

Lines are buffered and flushed by the daemon's one-second sweep (and at exit), so the hot path
only pays for ``json.dumps`` when a log is configured at all.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from json.encoder import encode_basestring_ascii as _quote  # C speedup: JSON string, quoted

# One request record; every string field goes through _quote, numbers are ints and a float.
_LINE = (
    '{{"time":"{}","tenant":{},"listener":{},"client":{},"method":{},"host":{},"path":{},'
    '"upstream":{},"status":{:d},"bytes_in":{:d},"bytes_out":{:d},"duration_ms":{!r}}}\n'
).format


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
        self._second = -1
        self._stamp = ""

    def _time(self) -> str:
        """The UTC time in seconds, formatted once per second rather than once per request."""
        now = int(time.time())
        if now != self._second:
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
            self._second = now
        return self._stamp

    def request(self, conn, cycle, duration: float) -> None:
        """Record one request (``cycle``, an http.RequestCycle) of an http.ClientConnection:
        the same object as ``json.dumps`` would write, built with one format and C string
        quoting per field."""
        self.stream.write(
            _LINE(
                self._time(),
                _quote(conn.tenant.name),
                _quote(conn.listener),
                _quote(conn.client_ip),
                _quote(cycle.method.decode("latin-1")),
                _quote(cycle.host.decode("latin-1")),
                _quote(cycle.url.decode("latin-1")),
                _quote(cycle.upstream_name),
                cycle.status,
                cycle.body_in,
                cycle.bytes_out,
                round(duration * 1000, 3),
            )
        )

    def event(self, **fields) -> None:
        """A record that is not an HTTP request (tcp connections of tcp.py)."""
        fields.setdefault("time", self._time())
        self.stream.write(self.dumps(fields) + "\n")

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()

    def close(self) -> None:
        self.flush()
        if self.owned:
            self.stream.close()
        # Connections aborted at shutdown are logged a moment later: into nothing, not into a
        # closed file.
        self.stream = _Discard()


class _Discard:
    def write(self, _text: str) -> None:
        pass

    def flush(self) -> None:
        pass
