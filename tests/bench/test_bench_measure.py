"""bench/measure.py's memory figures on the real kernel: a memfd read with pread, as nsproxy's
workers read certificate bytes, is counted once, and a mapped one is not counted twice."""

from __future__ import annotations

import mmap
import os

from bench import measure

MIB = 1024 * 1024


def _holder(mapped: int) -> tuple[int, int]:
    """A child holding a 4 MiB memfd, the first ``mapped`` bytes of it mapped and touched;
    (pid, the pipe end that ends it)."""
    ready_r, ready_w = os.pipe()
    end_r, end_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(end_w)
        fd = os.memfd_create("bench-test")
        os.write(fd, b"x" * 4 * MIB)
        if mapped:
            view = mmap.mmap(fd, mapped)
            sum(view[i] for i in range(0, mapped, 4096))  # touch every page
        os.write(ready_w, b"r")
        os.read(end_r, 1)
        os._exit(0)
    os.read(ready_r, 1)
    for fd in (ready_r, ready_w, end_r):
        os.close(fd)
    return pid, end_w


def _end(pid: int, end_w: int) -> None:
    os.close(end_w)
    os.waitpid(pid, 0)


def test_an_unmapped_memfd_counts_once_and_a_mapped_part_is_not_counted_again():
    for mapped in (0, MIB):
        pid, end_w = _holder(mapped)
        try:
            extra = measure.unmapped_memfd_kb([pid])
            # the same memfd seen through two descriptor tables is counted once
            assert measure.unmapped_memfd_kb([pid, pid]) == extra
            rss, _pss = measure.memory_kb([pid])
            with open(f"/proc/{pid}/smaps_rollup") as f:
                plain = int(next(line.split()[1] for line in f if line.startswith("Rss:")))
        finally:
            _end(pid, end_w)
        assert extra == (4 * MIB - mapped) // 1024, (mapped, extra)
        assert rss == plain + extra
