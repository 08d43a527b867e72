"""Reading what processes cost (/proc) and what the load generator saw (wrk)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- processes ---------------------------------------------------------------------------
def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(roots: list[int]) -> list[int]:
    """The given PIDs that still exist plus all their descendants."""
    children = _children_map()
    found, stack = [], [p for p in roots if os.path.exists(f"/proc/{p}")]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes (all threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLK_TCK


def rss_kb(pids: list[int]) -> int:
    """Summed VmRSS of the processes, in kB (shared pages count once per process)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def pss_kb(pids: list[int]) -> int:
    """Summed proportional set size (shared pages split between sharers), in kB."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def host_cpu_busy() -> list[float]:
    """Busy seconds per CPU since boot (everything but idle and iowait)."""
    busy = []
    with open("/proc/stat") as f:
        for line in f:
            if re.match(r"cpu\d+ ", line):
                v = [int(x) for x in line.split()[1:]]
                busy.append((sum(v[:8]) - v[3] - v[4]) / CLK_TCK)
    return busy


class RssSampler:
    """Samples the summed RSS of fixed processes in the background; keeps the maximum."""

    def __init__(self, pids: list[int], period: float = 0.25):
        self.pids, self.period = pids, period
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kb(self.pids))
            self._stop.wait(self.period)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kb(self.pids))


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
    url: str, seconds: float, connections: int, cpu: int | None, netns: str | None
) -> list[str]:
    argv = [
        "wrk",
        "--latency",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        url,
    ]
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


def settle(seconds: float) -> None:
    time.sleep(seconds)
