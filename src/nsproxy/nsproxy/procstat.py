"""What a process says about itself for the ``process_*`` metrics (read at scrape time only).

The same five figures as the Prometheus client libraries' process collector (prometheus_client's
ProcessCollector reads the same /proc files); written here because the daemon renders its
exposition text by hand (metrics.py) and imports no client library. Sources, proc(5):
``/proc/self/stat`` (utime, stime, starttime in clock ticks), ``/proc/self/statm`` (resident
pages), ``/proc/self/fd`` (one entry per open descriptor; a process may always list its own,
even after it dropped privileges and is not dumpable) and ``/proc/stat`` (btime, the boot time).
"""

from __future__ import annotations

import contextlib
import os
import resource

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_BOOT_TIME: list[float] = []  # read once


def boot_time() -> float:
    """Unix time the system booted (``btime`` of /proc/stat), in seconds."""
    if not _BOOT_TIME:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    _BOOT_TIME.append(float(line.split()[1]))
                    break
            else:
                _BOOT_TIME.append(0.0)
    return _BOOT_TIME[0]


def sample() -> dict:
    """This process: {"cpu": seconds (user + system), "rss": bytes, "fds": open descriptors,
    "max_fds": RLIMIT_NOFILE soft limit, "start": Unix time it started}. A figure that cannot
    be read is left out."""
    out: dict = {}
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rindex(b")") + 2 :].split()
        out["cpu"] = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (14, 15)
        out["start"] = boot_time() + int(fields[19]) / _TICKS  # starttime (field 22)
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/proc/self/statm", "rb") as f:
            out["rss"] = int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        pass
    with contextlib.suppress(OSError):
        out["fds"] = len(os.listdir("/proc/self/fd")) - 1  # less the listing's own descriptor
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY:
        out["max_fds"] = soft
    return out


def descriptors() -> tuple[int, int, bool]:
    """(open descriptors, soft RLIMIT_NOFILE, whether the count was cheap) of this process;
    a table too full to list counts as full, an unlimited limit as 2**31. Since Linux 6.2 the
    size of /proc/self/fd is the count (one stat); before, it is a listing, about 2 ms per
    thousand descriptors."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    soft = 2**31 if soft == resource.RLIM_INFINITY else soft
    try:
        size = os.stat("/proc/self/fd").st_size
    except OSError:
        size = 0
    if size > 0:
        return size, soft, True
    try:
        return len(os.listdir("/proc/self/fd")) - 1, soft, False
    except OSError:
        return soft, soft, False
