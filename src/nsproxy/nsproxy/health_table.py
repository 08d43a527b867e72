"""Active health of upstream servers, shared by every worker: one writer, many readers.

One worker (index 0, health_check.Prober) probes each checked server once per interval for the
whole daemon and publishes the result here; every worker reads it when it picks a server. The
table lives in one memfd the binder creates and maps; forked workers share the mapping. A new
worker 0 (after a crash) finds the state its predecessor published and goes on from it.
``nsproxy upgrade`` hands the memfd to the new binder with :data:`LAYOUT` (binder/upgrade.py):
a build with the same layout goes on from it (a server marked down stays out), another starts
a fresh table. For the moment between the new workers' start and the old ones' drain, the old
and the new worker 0 both write: the last write wins, and :meth:`HealthTable.remove` removes
every copy of a key that two inserting writers may have left.

Entries are found by a 64-bit key, the hash of (tenant, upstream, upstream digest, server), by
open addressing (linear probing). A changed upstream (new digest) therefore has new keys: it
starts afresh, and an unchanged one keeps its state across a reload. Each entry is
:data:`ENTRY` bytes: key (u64; 0 empty, 1 removed), state (i32: bit 0 set while the server is
down, bits 1 and up count the transitions, so that a reader notices a recovery), the error's
length (i32) and the error (UTF-8, at most :data:`ERROR_MAX` bytes). Only the writer writes, so
there is no lock: it writes the error before the state, and the key last when it inserts; an
aligned 4-byte state is read whole. A status read may meet an error being rewritten (it only
shows text; the state is what routing uses).

The writer's count of live entries is per process: a new worker 0 (after a crash) recounts the
table when it starts (:meth:`HealthTable.recount`). A removed entry becomes a tombstone (key 1)
only while a later entry of a probe chain may pass through it; a tombstone followed by an empty
slot is emptied (with the tombstones before it), and an insert reuses the first tombstone of
its chain, so reloads that change upstreams do not lengthen lookups for good. Emptying such a
slot is safe for a concurrent reader: no chain continues past an empty slot.

Known limit: hashing, tombstones and a writer-side count could all go if the binder assigned
each checked server a fixed slot from the config (as sharedcounts.Slots does for tenants);
config.py refuses a config with more than :data:`MAX_LOAD` checked servers meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import struct

from nsproxy import channel

LAYOUT = 1  # the entry layout and key scheme; another value: an upgrade starts a fresh table
ENTRIES = 32768  # slots; at most MAX_LOAD of them hold servers
ENTRY = 128  # bytes per slot
ERROR_MAX = ENTRY - 16
MAX_LOAD = ENTRIES * 3 // 4  # checked servers published at most (longer probe chains beyond)
_EMPTY, _REMOVED = 0, 1
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
_HEAD = struct.Struct("<QiI")  # key, state, error length
_STATE = struct.Struct("<i")


def key_of(tenant: str, upstream: str, digest, server: str) -> int:
    """The 64-bit key of one server of one upstream as configured (never 0 or 1)."""
    text = f"{tenant}\0{upstream}\0{digest!r}\0{server}".encode()
    key = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")
    return key if key > _REMOVED else key + 2


class HealthTable:
    """The shared table (see the module docstring); every process maps the same memfd."""

    def __init__(self, fd: int):
        self.fd = fd
        self.map = mmap.mmap(fd, ENTRIES * ENTRY)
        self.used = 0  # the writer's count of live keys

    @classmethod
    def adopt(cls, fd: int, layout) -> HealthTable | None:
        """The table of memfd ``fd`` handed over by an upgrade, or None (``fd`` closed) when
        its layout or size is not this build's."""
        try:
            if layout == LAYOUT and os.fstat(fd).st_size == ENTRIES * ENTRY:
                os.fchmod(fd, 0o400)  # as create() makes it (an older build's may not be)
                with contextlib.suppress(OSError):  # an older build's could not be sealed
                    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
                return cls(fd)
        except OSError:
            pass
        os.close(fd)
        return None

    @classmethod
    def create(cls) -> HealthTable:
        """A new table: a memfd of the table's size that only the binder can open again
        (channel.guarded_memfd), sealed against any change of size (every worker maps it: a
        shrink would kill them all with SIGBUS)."""
        fd = channel.guarded_memfd("nsproxy-health", 0)
        try:
            os.ftruncate(fd, ENTRIES * ENTRY)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            return cls(fd)
        except BaseException:
            os.close(fd)
            raise

    def recount(self) -> int:
        """Count the live entries (a new writer goes on from its predecessor's table).

        Only the slots of pages some writer has written are read: the memfd's data extents
        (``lseek`` SEEK_DATA/SEEK_HOLE, which tmpfs answers page by page, lseek(2)). Reading a
        never-written page through the shared mapping would allocate it (a tmpfs fault fills
        a hole): a full scan made every worker 0 allocate the whole table, 4 MiB of shared
        memory, with no server checked at all."""
        buf = self.map
        self.used = sum(
            1
            for start, stop in self._written()
            for slot in range(start // ENTRY, -(-stop // ENTRY))
            if _HEAD.unpack_from(buf, slot * ENTRY)[0] > _REMOVED
        )
        return self.used

    def _written(self):
        """(start, stop) byte ranges of the table that hold written pages, in order."""
        end, offset = ENTRIES * ENTRY, 0
        while offset < end:
            try:
                start = os.lseek(self.fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after offset
                    return
                raise
            offset = min(os.lseek(self.fd, start, os.SEEK_HOLE), end)
            if offset <= start:  # no tmpfs answer (the fd is not the table's): read the rest
                yield start, end
                return
            yield start, offset

    # -- readers ------------------------------------------------------------------------------
    def find(self, key: int, hint: int = -1) -> int:
        """The slot holding ``key`` (``hint``, a slot found before, is tried first), or -1."""
        buf = self.map
        if hint >= 0 and _HEAD.unpack_from(buf, hint * ENTRY)[0] == key:
            return hint
        slot = key % ENTRIES
        for _probe in range(ENTRIES):
            have = _HEAD.unpack_from(buf, slot * ENTRY)[0]
            if have == key:
                return slot
            if have == _EMPTY:
                return -1
            slot = (slot + 1) % ENTRIES
        return -1

    def state(self, slot: int) -> int:
        """The state word of ``slot``: bit 0 down, the rest a transition count."""
        return _STATE.unpack_from(self.map, slot * ENTRY + 8)[0]

    def error(self, slot: int) -> str | None:
        """The error that marked the server in ``slot`` down (None when it is up)."""
        state, length = _HEAD.unpack_from(self.map, slot * ENTRY)[1:]
        if not state & 1:
            return None
        start = slot * ENTRY + 16
        return self.map[start : start + min(length, ERROR_MAX)].decode("utf-8", "replace")

    def lookup(self, key: int) -> tuple[bool, str | None]:
        """(down, error) of the server with ``key`` (never published: up, no error)."""
        slot = self.find(key)
        if slot < 0:
            return False, None
        return bool(self.state(slot) & 1), self.error(slot)

    # -- the writer ---------------------------------------------------------------------------
    def publish(self, key: int, down: bool, error: str | None) -> bool:
        """Set the server's state (the writer only); False when the table is full."""
        buf = self.map
        slot = self.find(key)
        if slot < 0:
            if self.used >= MAX_LOAD:
                return False
            slot = key % ENTRIES
            for _probe in range(ENTRIES):
                if _HEAD.unpack_from(buf, slot * ENTRY)[0] <= _REMOVED:
                    break
                slot = (slot + 1) % ENTRIES
            else:
                return False
            self._write(slot, down, error, 0)
            struct.pack_into("<Q", buf, slot * ENTRY, key)
            self.used += 1
            return True
        old = self.state(slot)
        count = old & 0x7FFFFFFE
        if bool(old & 1) != down:
            count = (count + 2) & 0x7FFFFFFE
        self._write(slot, down, error, count)
        return True

    def remove(self, key: int) -> None:
        """Forget the server (its upstream changed or went away): readers see it as up."""
        while True:  # every copy (see the module docstring)
            slot = self.find(key)
            if slot < 0:
                return
            self._remove(slot)

    def _remove(self, slot: int) -> None:
        buf = self.map
        self._write(slot, False, None, 0)
        self.used = max(0, self.used - 1)
        after = _HEAD.unpack_from(buf, ((slot + 1) % ENTRIES) * ENTRY)[0]
        if after != _EMPTY:
            struct.pack_into("<Q", buf, slot * ENTRY, _REMOVED)  # a chain may pass through
            return
        # No chain passes an empty slot: this one and the tombstones before it end none.
        for _step in range(ENTRIES):
            struct.pack_into("<Q", buf, slot * ENTRY, _EMPTY)
            slot = (slot - 1) % ENTRIES
            if _HEAD.unpack_from(buf, slot * ENTRY)[0] != _REMOVED:
                break

    def _write(self, slot: int, down: bool, error: str | None, count: int) -> None:
        data = (error or "").encode("utf-8", "replace")[:ERROR_MAX]
        base = slot * ENTRY
        self.map[base + 16 : base + 16 + len(data)] = data
        struct.pack_into("<I", self.map, base + 12, len(data))
        _STATE.pack_into(self.map, base + 8, count | (1 if down else 0))
