"""The load generators and what they saw: wrk (requests over HTTP and HTTPS) and
``openssl s_time`` (TLS handshakes, full or resumed)."""

from __future__ import annotations

import re
import signal
import subprocess
from dataclasses import dataclass, field


# -- wrk -----------------------------------------------------------------------------------
@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    socket_errors: dict[str, int] = field(default_factory=dict)
    non_2xx: int = 0

    @property
    def failed(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def _duration_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"unexpected wrk duration {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(output: str) -> WrkResult:
    """Parse ``wrk --latency`` output; raises ValueError naming what is missing."""

    def need(pattern: str, what: str) -> re.Match:
        m = re.search(pattern, output)
        if not m:
            raise ValueError(f"wrk output has no {what}:\n{output}")
        return m

    total = need(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", "request count")
    errors = {}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if m:
        errors = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests=int(total.group(1)),
        seconds=_duration_ms(total.group(2) + total.group(3)) / 1000,
        rps=float(need(r"Requests/sec:\s+([\d.]+)", "Requests/sec").group(1)),
        p50_ms=_duration_ms(need(r"\n\s+50%\s+(\S+)", "50% latency").group(1)),
        p99_ms=_duration_ms(need(r"\n\s+99%\s+(\S+)", "99% latency").group(1)),
        socket_errors=errors,
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
    )


def wrk_command(
    url: str,
    seconds: float,
    connections: int,
    cpu: int | None,
    netns: str | None,
    new_connection_per_request: bool = False,
) -> list[str]:
    """wrk with one thread. ``new_connection_per_request`` sends ``Connection: close``, so
    each request opens a connection of its own (and over TLS does a handshake): a looping
    client that sees a listener refusing or resetting a connection, which keep-alive
    connections opened before an event would not."""
    argv = [
        "wrk",
        "--latency",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
    ]
    if new_connection_per_request:
        argv += ["-H", "Connection: close"]
    return _placed([*argv, url], cpu, netns)


def _placed(argv: list[str], cpu: int | None, netns: str | None) -> list[str]:
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    return argv


def run_wrk(argv: list[str]) -> WrkResult:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()}")
    return parse_wrk(proc.stdout)


def start_wrk(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_wrk(proc: subprocess.Popen, interrupt: bool = False) -> WrkResult:
    """Wait for wrk's report; with ``interrupt``, first tell it to stop now (SIGINT)."""
    if interrupt and proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err.strip()}")
    return parse_wrk(out)


# -- openssl s_time ------------------------------------------------------------------------
@dataclass
class HandshakeResult:
    connections: int  # connections completed (one progress character each)
    resumed: int  # of those, how many resumed a session ('r')
    error: str  # empty, or why the client stopped early


def s_time_command(
    addr: str, port: int, seconds: int, resume: bool, cpu: int | None, netns: str | None
) -> list[str]:
    """``openssl s_time`` connecting to addr:port again and again for ``seconds``.

    Without ``resume`` (``-new``) every connection is a full handshake and is closed at once,
    no request sent. With ``resume`` (``-reuse``) every connection offers the session of the
    first one. Under TLS 1.3 a client gets its session ticket only after the handshake, when
    it reads (RFC 8446 section 4.6.1), so that mode sends ``GET /`` and reads the answer
    (``-www /``): each resumed connection also carries one request through the proxy.
    """
    argv = ["openssl", "s_time", "-connect", f"{addr}:{port}", "-time", str(seconds)]
    argv += ["-reuse", "-www", "/"] if resume else ["-new"]
    return _placed(argv, cpu, netns)


def parse_s_time(output: str) -> tuple[int, int]:
    """(connections, resumed) from s_time's stdout: it prints one character per connection
    ('r' when the session was resumed, '*' for a full TLS 1.2+ handshake) and a summary line
    "N connections in ...", which must agree; raises ValueError otherwise."""
    progress = "".join(line for line in output.splitlines() if line and set(line) <= set("*rt3"))
    summary = re.findall(r"^(\d+) connections in [\d.]+s;", output, re.M)
    if not summary:
        raise ValueError(f"s_time output has no connection count:\n{output[-500:]}")
    counted = int(summary[-1])
    if counted != len(progress):
        raise ValueError(
            f"s_time reported {counted} connections but printed {len(progress)} progress marks"
        )
    return counted, progress.count("r")


def start_s_time(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_s_time(proc: subprocess.Popen, timeout: float) -> HandshakeResult:
    """Wait for one s_time client. It stops at its first failed connection, so a non-zero exit
    is kept as ``error`` along with the connections it had completed."""
    out, err = proc.communicate(timeout=timeout)
    try:
        connections, resumed = parse_s_time(out)
    except ValueError as exc:
        if proc.returncode == 0:
            raise
        marks = "".join(c for c in out if c in "*r")
        connections, resumed = len(marks), marks.count("r")
        err = f"{err.strip()} ({exc})"
    error = "" if proc.returncode == 0 else (err.strip() or f"exit {proc.returncode}")[-500:]
    return HandshakeResult(connections, resumed, error)
