"""Per-tenant connection counts shared by every worker, for limits that span the daemon.

``limits.max_connections_per_tenant`` caps a tenant's open connections over all workers, not
per worker. The counts live in one memfd mapped by the binder and every worker (forked
mappings are shared; an upgrade hands the fd to the new binder). It is a table of int32:
one block of :data:`ROWS` entries per tenant slot, one entry per worker process (its row).
A worker only ever writes its own row, so there is no lock and no lost update; a reader sums
the block (256 bytes, contiguous). Pages are only allocated where a tenant had a connection.

The binder assigns tenant slots (by name; a slot is reused only once its block sums to zero)
and rows (one per live worker; a dead worker's row is zeroed when it is reaped).
"""

from __future__ import annotations

import mmap
import os

ROWS = 64  # worker processes counted at once (serving plus draining)
SLOTS = 65536  # tenant slots (reused once empty)
_ENTRY = 4


class SharedCounts:
    """The table; ``row`` is this process's row (-1: the binder, which only reads and clears)."""

    def __init__(self, fd: int, row: int = -1):
        self.fd = fd
        self.map = mmap.mmap(fd, SLOTS * ROWS * _ENTRY)
        self.view = memoryview(self.map).cast("i")
        self.row = row

    def for_row(self, row: int) -> SharedCounts:
        """The same table (same mapping), written as ``row`` (a forked worker's)."""
        other = SharedCounts.__new__(SharedCounts)
        other.fd, other.map, other.view, other.row = self.fd, self.map, self.view, row
        return other

    @classmethod
    def create(cls) -> SharedCounts:
        fd = os.memfd_create("nsproxy-counts", os.MFD_CLOEXEC)
        os.ftruncate(fd, SLOTS * ROWS * _ENTRY)
        return cls(fd)

    def total(self, slot: int) -> int:
        """Connections of the tenant in ``slot`` over all workers."""
        base = slot * ROWS
        return sum(self.view[base : base + ROWS])

    def others(self, slot: int) -> int:
        """Connections of the tenant in ``slot`` in the other workers."""
        base = slot * ROWS
        return sum(self.view[base : base + ROWS]) - self.view[base + self.row]

    def set_own(self, slot: int, value: int) -> None:
        self.view[slot * ROWS + self.row] = value

    def block_is_empty(self, slot: int) -> bool:
        """Whether no worker counts a connection in ``slot`` (read without faulting pages in)."""
        data = os.pread(self.fd, ROWS * _ENTRY, slot * ROWS * _ENTRY)
        return not any(data)

    def clear_row(self, row: int, slots) -> None:
        """Zero ``row`` for the given slots (a worker died: its connections are gone)."""
        for slot in slots:
            offset = (slot * ROWS + row) * _ENTRY
            if any(os.pread(self.fd, _ENTRY, offset)):
                self.view[slot * ROWS + row] = 0


class Slots:
    """The binder's assignment of tenant names to slots and of worker processes to rows."""

    def __init__(self, counts: SharedCounts):
        self.counts = counts
        self.of: dict[str, int] = {}
        self.next = 0
        self.rows: dict[int, int] = {}  # row -> pid

    def slot(self, name: str) -> int:
        slot = self.of.get(name)
        if slot is None:
            if self.next < SLOTS:
                slot = self.next
                self.next += 1
            else:
                used = set(self.of.values())
                slot = next(
                    s for s in range(SLOTS) if s not in used and self.counts.block_is_empty(s)
                )
            self.of[name] = slot
        return slot

    def keep_only(self, names) -> None:
        """Forget the slots of tenants that are gone (reused once their counts are zero)."""
        names = set(names)
        self.of = {n: s for n, s in self.of.items() if n in names}

    def take_row(self, pid_hint: int = 0) -> int:
        """A free row for a new worker (-1 when all ROWS are in use: that worker's
        connections are then counted by it alone)."""
        for row in range(ROWS):
            if row not in self.rows:
                self.rows[row] = pid_hint
                return row
        return -1

    def free_row(self, row: int) -> None:
        if row >= 0 and self.rows.pop(row, None) is not None:
            self.counts.clear_row(row, range(self.next))
