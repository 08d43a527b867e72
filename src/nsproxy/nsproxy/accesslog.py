"""Access log: one JSON object per line and per request.

Lines are buffered and flushed by the worker's one-second sweep (and at exit), so the hot path
only pays for ``json.dumps`` when a log is configured at all. The binder opens the file (a
worker cannot) and every worker appends to the same open file: each flush is whole lines in as
few ``write`` calls as possible (O_APPEND makes each one land at the end, in one piece), and at
most PIPE_BUF bytes each when the target is a pipe or socket (stdout under systemd), so lines of
two workers never interleave.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from json.encoder import encode_basestring_ascii as _quote  # C speedup: JSON string, quoted

from nsproxy.daemonlog import open_append

# One request record; every string field goes through _quote, numbers are ints and a float.
_LINE = (
    '{{"time":"{}","tenant":{},"listener":{},"client":{},"method":{},"host":{},"path":{},'
    '"upstream":{},"status":{:d},"bytes_in":{:d},"bytes_out":{:d},"duration_ms":{!r}}}\n'
).format


FLUSH_LINES = 512  # buffered lines that make a flush before the sweep's
PIPE_BUF = 4096  # bytes a pipe writes in one piece (pipe(7))


def open_target(target: str) -> int:
    """The fd to write ``target`` to: stdout for "-", else the file opened for appending
    (created 0640; a regular file or a character device, never waited on:
    :func:`daemonlog.open_append`). Raises OSError."""
    if target == "-":
        return os.dup(1)
    return open_append(target)


class AccessLog:
    """Writes request records to a file or to stdout ("-")."""

    def __init__(self, target: str):
        self._use_fd(open_target(target), target)

    @classmethod
    def from_fd(cls, fd: int, target: str | None = None) -> AccessLog:
        """An access log writing to ``fd`` (which it owns and closes)."""
        log = cls.__new__(cls)
        log._use_fd(fd, target)
        return log

    def _use_fd(self, fd: int, target: str | None) -> None:
        self.target = target
        self.fd = fd
        self.chunk = 1 << 20 if stat.S_ISREG(os.fstat(fd).st_mode) else PIPE_BUF
        self.lines: list[str] = []
        self.write = self.lines.append
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
        self.write(
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
        if len(self.lines) >= FLUSH_LINES:
            self.flush()

    def event(self, **fields) -> None:
        """A record that is not an HTTP request (tcp connections of tcp.py)."""
        fields.setdefault("time", self._time())
        self.write(self.dumps(fields) + "\n")

    def flush(self) -> None:
        """Write the buffered lines: whole lines per write, each write at most ``chunk``
        bytes (a line longer than that goes alone). A failed write drops the lines."""
        lines = self.lines
        if not lines:
            return
        data = "".join(lines).encode()
        lines.clear()
        with contextlib.suppress(OSError):
            while data:
                if len(data) <= self.chunk:
                    piece = data
                else:
                    cut = data.rfind(b"\n", 0, self.chunk) + 1 or data.find(b"\n") + 1
                    piece = data[: cut or len(data)]
                view = memoryview(piece)
                while view:
                    view = view[os.write(self.fd, view) :]
                data = data[len(piece) :]

    def adopt(self, fd: int) -> None:
        """Write to the file open as ``fd`` from now on (logrotate renamed the old one): the
        buffered lines go to the old file first, then ``fd`` takes the old descriptor's number
        (dup2). ``fd`` stays the caller's to close."""
        self.flush()
        if self.fd >= 0:
            os.dup2(fd, self.fd, inheritable=False)

    def close(self) -> None:
        self.flush()
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def close_fd(fd: int) -> None:
    """Close an fd from :func:`open_target` (errors ignored: it is being replaced)."""
    with contextlib.suppress(OSError):
        os.close(fd)
