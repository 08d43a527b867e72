"""The sweep's heap trim: glibc's free-heap figure and malloc_trim, as the daemon uses them."""

from __future__ import annotations

import ctypes

import pytest

from nsproxy import heap


def rss_anon_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


def test_freed_heap_holes_are_seen_as_free_and_given_back_by_a_trim():
    if heap.heap_free_bytes() is None:
        pytest.skip("the C library is not glibc 2.33+ (no mallinfo2)")
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    heap.release_free_memory()
    # 64 KiB blocks (below the mmap threshold: heap) with a 24 KiB block after each that stays,
    # so the freed blocks are holes in the middle of the heap, as after a burst of connections.
    big, keep = [], []
    for _ in range(800):
        block = libc.malloc(64 * 1024)
        ctypes.memset(block, 1, 64 * 1024)  # touch it: resident
        big.append(block)
        keep.append(libc.malloc(24 * 1024))
    # Measured from here, not from before the allocations: earlier tests of the same process
    # may have left free heap that the blocks were carved from.
    free_before = heap.heap_free_bytes()
    for block in big:
        libc.free(block)
    holes = heap.heap_free_bytes() - free_before
    assert holes > 40 * 1024 * 1024
    resident = rss_anon_kb()
    heap.release_free_memory()
    assert resident - rss_anon_kb() > 40 * 1024  # kB: the holes' pages went back
    for block in keep:
        libc.free(block)
