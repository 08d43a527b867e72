"""The shared health table under a worker 0 restart and reload churn (found by the red-team
review of branch redteam-health; each test states the invariant the table keeps)."""

from __future__ import annotations

import os
import struct

import pytest
from as_nobody import passes_as_nobody

from nsproxy import health_check, health_table
from nsproxy.health_table import ENTRIES, ENTRY, MAX_LOAD, HealthTable, key_of


def _chain(table: HealthTable, key: int) -> int:
    """Slots an absent ``key``'s lookup reads (what every worker pays at each pick of a
    checked server that never went down): from its home slot to the first empty one."""
    slot, n = key % ENTRIES, 0
    while n < ENTRIES:
        n += 1
        if struct.unpack_from("<Q", table.map, slot * ENTRY)[0] == 0:
            break
        slot = (slot + 1) % ENTRIES
    return n


def _live(table: HealthTable) -> int:
    return sum(
        1
        for slot in range(ENTRIES)
        if struct.unpack_from("<Q", table.map, slot * ENTRY)[0] > 1  # neither empty nor removed
    )


def test_a_new_worker_0_counts_the_entries_its_predecessor_left():
    """The binder makes the table (used = 0) and forks worker 0, which publishes; when worker 0
    dies, the binder forks a replacement from ITS copy (used = 0): the replacement's prober
    recounts the table at its start, so MAX_LOAD holds and removals keep the count right."""
    table = HealthTable.create()
    try:
        keys = [key_of("t", "app", b"d1", f"10.0.0.{i}:80") for i in range(100)]
        pid = os.fork()
        if pid == 0:  # worker 0: its servers went down, then it died
            for key in keys:
                table.publish(key, True, "connect refused")
            os._exit(0)
        os.waitpid(pid, 0)
        replacement = table  # what the binder's fork gives the next worker 0
        health_check.Prober(None, None, replacement)  # the replacement worker 0 starts
        assert _live(replacement) == 100
        for key in keys[:10]:  # a reload changed part of the upstream: forgotten
            replacement.remove(key)
        assert replacement.used == _live(replacement), (
            f"the writer counts {replacement.used} live entries, the table holds "
            f"{_live(replacement)} (MAX_LOAD {MAX_LOAD} is checked against the count)"
        )
    finally:
        table.map.close()
        os.close(table.fd)


def test_reload_churn_leaves_absent_lookups_short():
    """400 checked servers, all down, and reloads that change their upstreams (new digests:
    new keys; the old ones are removed). The live entries never exceed 400, so a lookup of a
    server that never went down must read a few slots. Tombstones that were never emptied made
    the chains grow until an absent lookup walked the whole table (32768 slots in every worker
    at every pick: 490 us per lookup after 400 such reloads, 1.8 us at the start)."""
    table = HealthTable.create()
    try:
        live: list[int] = []
        probes = [key_of("never-down", "app", b"x", f"10.1.0.{i}:80") for i in range(200)]
        for reload in range(300):
            for key in live:
                table.remove(key)
            digest = reload.to_bytes(2, "little")
            live = [key_of(f"t{i % 200}", "app", digest, f"10.0.0.{i}:80") for i in range(400)]
            for key in live:
                assert table.publish(key, True, "connect refused")
        mean = sum(_chain(table, k) for k in probes) / len(probes)
        empty = ENTRIES - sum(
            1 for s in range(ENTRIES) if struct.unpack_from("<Q", table.map, s * ENTRY)[0]
        )
        assert mean < 8, (
            f"an absent lookup reads {mean:.0f} slots on average with {len(live)} live entries; "
            f"{empty} of {ENTRIES} slots are still empty"
        )
    finally:
        table.map.close()
        os.close(table.fd)


def test_the_table_layout_is_what_the_docstring_says():
    """Held: an entry is 128 bytes, the error at most 112 (not a finding; keeps the helpers
    above honest about the layout they read)."""
    assert (ENTRY, health_table.ERROR_MAX) == (128, 112)


def test_an_upgrade_adopts_a_table_of_its_own_layout_only():
    """binder/upgrade.py hands the memfd on with health_table.LAYOUT: the same layout goes on
    from what the old binder's checks published, another one is closed (a fresh table)."""
    table = HealthTable.create()
    key = key_of("t", "app", b"d", "10.0.0.1:80")
    table.publish(key, True, "status 503, expected 2xx")
    handed = HealthTable.adopt(os.dup(table.fd), health_table.LAYOUT)
    assert handed is not None and handed.lookup(key) == (True, "status 503, expected 2xx")
    other = os.dup(table.fd)
    assert HealthTable.adopt(other, health_table.LAYOUT + 1) is None
    try:
        os.fstat(other)
        raise AssertionError("the refused memfd was left open")
    except OSError:
        pass
    for each in (handed, table):
        each.map.close()
        os.close(each.fd)


def test_a_key_two_writers_inserted_twice_is_removed_with_every_copy():
    """During an upgrade the old and the new worker 0 both write; two inserts of one key may
    leave two copies. Removing the key must leave no stale copy for readers to find."""
    table = HealthTable.create()
    try:
        key = key_of("t", "app", b"d", "10.0.0.1:80")
        other = HealthTable(table.fd)  # the other writer's mapping of the same memfd
        home = key % ENTRIES
        for writer, slot in ((table, home), (other, home + 1)):  # each inserted it blindly
            writer._write(slot, True, "connect refused", 0)
            struct.pack_into("<Q", writer.map, slot * ENTRY, key)
        assert table.lookup(key) == (True, "connect refused")
        table.remove(key)
        assert table.lookup(key) == (False, None)
        assert _live(table) == 0
        other.map.close()
    finally:
        table.map.close()
        os.close(table.fd)


def test_a_recount_reads_only_what_writers_wrote():
    """A worker 0 recounts the table at its start. With no server checked, the table must stay
    unallocated: reading every slot through the mapping made tmpfs allocate all of it (4 MiB
    of shared memory per daemon, seen in the worker's RSS). Entries written far apart, at the
    table's first and last slots among them, are all still counted."""
    table = HealthTable.create()
    try:
        assert table.recount() == 0
        assert os.fstat(table.fd).st_blocks == 0, "the recount allocated pages nobody wrote"
        slots = [0, 1, 37, ENTRIES // 2, ENTRIES - 1]
        for slot in slots:  # as a predecessor left them (key at its home slot)
            key = slot + ENTRIES * 7  # key % ENTRIES == slot, and never 0 or 1
            struct.pack_into("<Qi", table.map, slot * ENTRY, key, 1)
        struct.pack_into("<Q", table.map, 5 * ENTRY, 1)  # a tombstone is not live
        page = os.sysconf("SC_PAGE_SIZE")
        written_pages = len({slot * ENTRY // page for slot in [*slots, 5]})
        assert table.recount() == len(slots)
        assert os.fstat(table.fd).st_blocks * 512 == written_pages * page
    finally:
        table.map.close()
        os.close(table.fd)


def test_a_recount_through_a_descriptor_that_is_not_the_table_still_counts():
    """A worker replaces every descriptor it was not given by /dev/null; a table whose fd is
    such a stand-in (lseek answers 0 to SEEK_DATA and SEEK_HOLE alike) is read whole, as
    before, instead of looping forever (a worker 0 that never became ready)."""
    table = HealthTable.create()
    try:
        struct.pack_into("<Qi", table.map, (ENTRIES - 1) * ENTRY, ENTRIES * 3 - 1, 1)
        devnull = os.open("/dev/null", os.O_RDWR)
        os.dup2(devnull, table.fd)
        os.close(devnull)
        assert table.recount() == 1
    finally:
        table.map.close()
        os.close(table.fd)


def test_nobody_can_resize_the_table_and_a_worker_cannot_open_it_again():
    """Every worker maps the table: a shrink would kill them all with SIGBUS, and a respawned
    worker would map the same file. It is sealed against any change of size, and mode 0400:
    a worker (another user) cannot open it again through /proc/self/fd."""
    table = HealthTable.create()
    try:
        with pytest.raises(PermissionError):
            os.ftruncate(table.fd, 0)
        reader = os.open(f"/proc/self/fd/{table.fd}", os.O_RDONLY)  # what worker 0 gets

        def worker_0():
            with pytest.raises(PermissionError):
                os.open(f"/proc/self/fd/{reader}", os.O_RDWR)

        reopened = not passes_as_nobody(worker_0)
        os.close(reader)
        assert not reopened, "a worker could open the table again"
    finally:
        table.map.close()
        os.close(table.fd)
