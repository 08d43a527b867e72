"""Reading what processes cost, from /proc: their tree, CPU time (per process and per thread)
and memory (RSS, PSS). See proc(5) for every field read here."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import threading

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


def memory_kb(pids: list[int]) -> tuple[int, int]:
    """(RSS, PSS) summed over the processes, in kB, from /proc/PID/smaps_rollup. RSS counts a
    shared page once per process that maps it; PSS splits it between them, so summed PSS is
    what the processes together occupy. Both include, once, the pages of memfds the processes
    hold that no mapping of theirs shows (:func:`unmapped_memfd_kb`)."""
    rss = pss = unmapped_memfd_kb(pids)
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
                        break
        except OSError:
            continue
    return rss, pss


def unmapped_memfd_kb(pids: list[int]) -> int:
    """kB of memfd pages the processes hold but no mapping of theirs counts: for each memfd
    open in one of them (by device and inode), its allocated size (st_blocks) less the largest
    Rss one process maps of it. nsproxy's workers read certificate bytes from a memfd with
    pread (nsproxy/cert_store.py): those pages are in no RSS, yet they occupy memory. An upper
    bound when processes map disjoint parts of one memfd (the parts beyond the largest are
    counted in their RSS and again here); exact for a memfd nobody maps."""
    allocated: dict[tuple[int, int, int], int] = {}  # (major, minor, inode) -> kB allocated
    mapped: dict[tuple[int, int, int], int] = {}  # the same -> the largest kB one process maps
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            continue  # the process is gone
        for fd in fds:
            with contextlib.suppress(FileNotFoundError):
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:"):
                    st = os.stat(f"/proc/{pid}/fd/{fd}")
                    key = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
                    allocated[key] = st.st_blocks * 512 // 1024
        own: dict[tuple[int, int, int], int] = {}
        key = None
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/smaps") as f:
            for line in f:
                if line[0] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:
                    fields = line.split(None, 5)  # range perms offset dev inode [path]
                    key = None
                    if len(fields) > 5 and fields[5].startswith("/memfd:"):
                        major, minor = (int(x, 16) for x in fields[3].split(":"))
                        key = (major, minor, int(fields[4]))
                elif key is not None and line.startswith("Rss:"):
                    own[key] = own.get(key, 0) + int(line.split()[1])
        for key, kb in own.items():
            mapped[key] = max(mapped.get(key, 0), kb)
    return sum(max(0, kb - mapped.get(key, 0)) for key, kb in allocated.items())


def thread_cpu_seconds(pids: list[int]) -> dict[int, float]:
    """utime + stime of every thread of the processes, in seconds, by thread id."""
    out = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def busiest_thread_seconds(before: dict[int, float], after: dict[int, float]) -> float:
    """The most CPU time one thread used between two ``thread_cpu_seconds`` readings."""
    return max((t - before.get(tid, 0.0) for tid, t in after.items()), default=0.0)


def children_cpu_seconds() -> float:
    """utime + stime of this process's waited-for children so far (getrusage(2)): the CPU a
    load generator used, read before and after it runs."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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
    """Samples the summed RSS of fixed processes in the background; keeps the maximum, plus,
    once, the memfd pages no mapping shows (:func:`unmapped_memfd_kb`, read at the end), as
    :func:`memory_kb` counts them."""

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
        self.peak = max(self.peak, rss_kb(self.pids)) + unmapped_memfd_kb(self.pids)
