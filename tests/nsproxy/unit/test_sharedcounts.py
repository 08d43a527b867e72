"""Connection counts shared by worker processes: each writes its own row, all read the sum."""

from __future__ import annotations

import os

from nsproxy.sharedcounts import ROWS, SharedCounts, Slots


def test_processes_count_their_own_rows_and_everyone_reads_the_sum():
    table = SharedCounts.create()
    slots = Slots(table)
    a, b = slots.slot("a"), slots.slot("b")
    assert (a, b) == (0, 1) and slots.slot("a") == a
    rows = [slots.take_row() for _ in range(3)]
    assert rows == [0, 1, 2]
    pids = []
    for row in rows:
        pid = os.fork()
        if pid == 0:  # a worker: 1000 connections opened and 1000 - row closed on tenant a
            mine = table.for_row(row)
            for _ in range(1000):
                mine.set_own(a, mine.view[a * ROWS + row] + 1)
            for _ in range(1000 - row):
                mine.set_own(a, mine.view[a * ROWS + row] - 1)
            mine.set_own(b, 7)
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    assert table.total(a) == 0 + 1 + 2  # no update lost: each row had one writer
    assert table.total(b) == 21
    assert table.for_row(1).others(a) == 0 + 2
    slots.free_row(1)  # worker 1 died: its connections are gone
    assert table.total(a) == 2 and table.total(b) == 14
    assert slots.take_row() == 1
    os.close(table.fd)


def test_a_slot_is_reused_only_once_its_counts_are_zero():
    table = SharedCounts.create()
    slots = Slots(table)
    slots.next = 65536 - 2  # as if tenants had come and gone for a long time
    x, y = slots.slot("x"), slots.slot("y")
    table.for_row(0).set_own(x, 3)  # x still has connections draining
    slots.keep_only(["z"])  # x and y were removed
    z = slots.slot("z")
    assert z == y or z < x  # never x while it still counts connections
    assert z != x
    os.close(table.fd)
