"""Memory tricks for the per-tenant budget, in one place (binder and workers).

- The collector: a config holds tens of thousands of long-lived objects. After a start or a
  reload they are moved out of the collector's sight (``gc.freeze``), so that no collection in
  the request path walks them, and so that forked workers share their pages with the binder
  (a collection would write to every object's header and copy the page); they are never
  moved back (see :func:`settle`).
- The C heap: glibc keeps freed memory inside the process. After a config load, and after a
  burst of connections, ``malloc_trim`` gives the free pages back; ``mallinfo2`` tells how much
  is free. Both are glibc only (no-ops elsewhere).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc

TRIM_WHEN_FREE = 2 * 1024 * 1024  # bytes free inside the heap that make the sweep trim it
TIDY_AFTER_CONNECTIONS = 64  # connections accepted since the last tidy that make a burst
TIDY_INTERVAL = 10.0  # seconds between two tidies at least


@contextlib.contextmanager
def collector_paused():
    """No automatic garbage collection inside the block (enabled again however it ends)."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def settle() -> None:
    """After a start or a reload, and right before a fork: collect what is not frozen yet (what
    the config left behind), then move every surviving object out of the collector's sight
    (``gc.freeze``). The tenants' objects live until the next reload, and a collection in the
    request path would otherwise walk all of them, a cost that grows with the number of
    tenants.

    Frozen objects are never unfrozen: a collection that walked them would write to every
    object's header, and so copy every page a worker shares with the binder and the other
    workers (copy-on-write). An object that becomes garbage while frozen is freed by its
    reference count; so the long-lived objects form no reference cycles, or break them when
    they are discarded (worker/runtime.py). The child of a fork starts with no garbage of the
    parent that a collection could free (and whose file descriptors it would close)."""
    gc.collect()
    gc.freeze()
    release_free_memory()


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@functools.cache
def _libc():
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.malloc_trim  # noqa: B018 (glibc only: AttributeError elsewhere)
        return libc
    return None


def heap_free_bytes() -> int | None:
    """Bytes free inside the malloc heap (glibc mallinfo2), or None where unavailable."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    return libc.mallinfo2().fordblks


def release_free_memory() -> None:
    """Give the heap freed by parsing a config back to the kernel (glibc); no-op elsewhere."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class Tidier:
    """The sweep's heap job for a worker: give memory back after a burst of connections (or
    of TLS handshakes that never completed, e.g. a health prober touching every tenant's
    listener at once), not at the next reload. Once the burst has ended: a collection empties
    the interpreter's free lists (the tenants' objects are frozen, so it only walks the rest)
    and a trim returns glibc's free pages; at most once per TIDY_INTERVAL. Otherwise trim when
    much more heap is free than after the last trim (trimmed pages still count as free)."""

    __slots__ = ("accepted_at_tidy", "free_after_trim", "tidied_at")

    def __init__(self):
        self.free_after_trim = 0  # heap bytes free right after the last malloc_trim
        self.accepted_at_tidy = 0  # connections accepted when the heap was last tidied
        self.tidied_at = 0.0

    def tick(self, now: float, accepted: int, open_connections: int) -> None:
        """Once a second: ``accepted`` so far and the connections open now."""
        burst = accepted - self.accepted_at_tidy
        if (
            burst >= TIDY_AFTER_CONNECTIONS
            and open_connections * 4 < burst
            and now - self.tidied_at >= TIDY_INTERVAL
        ):
            self.accepted_at_tidy = accepted
            self.tidied_at = now
            gc.collect()
            release_free_memory()
            self.free_after_trim = heap_free_bytes() or 0
            return
        free = heap_free_bytes()
        if free is not None:
            if free > self.free_after_trim + TRIM_WHEN_FREE:
                release_free_memory()
                self.free_after_trim = heap_free_bytes() or 0
            elif free < self.free_after_trim:
                self.free_after_trim = free
