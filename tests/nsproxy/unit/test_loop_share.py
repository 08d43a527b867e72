"""Each tenant's share of the loop (nsproxy/loop_share.py), on real event loops and sockets.

Tenants' connections are socket pairs whose far ends hold many reads' worth of bytes; the
protocols read through ``SharedReads`` and charge their tenant. Each read costs a fixed amount
of the module's clock (the test's clock advances by ``cost`` between a read's two readings),
so the budget is counted in reads, not in this machine's speed. The turns are counted
independently of the module: a callback that queues itself again with ``call_soon`` runs
once per turn of the loop. Checked on what each protocol received:

- every byte every peer sent arrives, in order (a pause never loses or reorders a read);
- while a second tenant reads, a tenant's reads per turn stay within a bound that does not grow
  with its number of connections, and the second tenant gets through its reads in a number of
  turns that does not grow with it either;
- a tenant alone is never paused: every ready connection reads in every turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loops import LOOPS, Turns, run

from nsproxy import loop_share
from nsproxy.buffering import MIN_READ_BYTES

READS = 12  # reads of MIN_READ_BYTES each peer's bytes take
PER_PEER = READS * MIN_READ_BYTES


class Reader(loop_share.SharedReads):
    """Reads MIN_READ_BYTES at a time, charged to ``account``; records (turn, bytes)."""

    def __init__(self, account, turns):
        loop_share.SharedReads.__init__(self)
        self.account, self.turns = account, turns
        self.reads: list[tuple[int, bytes]] = []
        self.was_paused = False
        self.done = asyncio.get_running_loop().create_future()

    def room(self) -> int:
        return 0  # the smallest read

    def share(self):
        return self.account

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reads.append((self.turns.count, data))

    def pause_reading_for(self, reason: int) -> None:
        self.was_paused = True
        loop_share.SharedReads.pause_reading_for(self, reason)

    def eof_received(self):
        self.done.set_result(None)

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(None)


async def _serve(counts: list[int]) -> list[list[Reader]]:
    """One tenant per entry of ``counts`` with that many connections, each fed PER_PEER
    distinct bytes before the loop reads any; returns every tenant's readers once all ended."""
    loop = asyncio.get_running_loop()
    turns = Turns()
    tenants, peers = [], []
    stamp = itertools.count()
    for count in counts:
        account = loop_share.TenantShare()
        readers = []
        for _ in range(count):
            ours, theirs = socket.socketpair()
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * PER_PEER)
            number = next(stamp)
            reader = Reader(account, turns)
            # every byte tells its connection and position: a lost or reordered read shows
            reader.expected = bytes((number + i // MIN_READ_BYTES) % 251 for i in range(PER_PEER))
            await loop.connect_accepted_socket(lambda r=reader: r, ours)
            readers.append(reader)
            peers.append((theirs, reader.expected))
        tenants.append(readers)
    # One read from every peer first: both tenants have read, the loop counts as shared.
    for theirs, payload in peers:
        theirs.sendall(payload[:MIN_READ_BYTES])
    while not all(r.reads for readers in tenants for r in readers):
        await asyncio.sleep(0)
    # The rest is there before the loop polls again: all connections are ready at once, in
    # the turn the counting starts with (turn 1; the first reads were turn 0).
    turns.start()
    for theirs, payload in peers:
        theirs.sendall(payload[MIN_READ_BYTES:])
        theirs.shutdown(socket.SHUT_WR)
    try:
        await asyncio.gather(*(r.done for readers in tenants for r in readers))
    finally:
        turns.stop()
        for theirs, _ in peers:
            theirs.close()
    return tenants


@contextlib.contextmanager
def fixed_cost(cost: float):
    """The module's clock advances by ``cost`` at every reading (a read, two readings, costs
    ``cost``), with fresh LoopShares; both put back after."""
    saved = loop_share.clock, loop_share.SHARES
    ticks = itertools.count()
    loop_share.clock = lambda: next(ticks) * cost
    loop_share.SHARES = loop_share.LoopShares()
    try:
        yield
    finally:
        loop_share.clock, loop_share.SHARES = saved


def per_turn(readers: list[Reader]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for reader in readers:
        for turn, _ in reader.reads:
            counts[turn] = counts.get(turn, 0) + 1
    return counts


def assert_everything_arrived(tenants):
    for readers in tenants:
        for reader in readers:
            assert b"".join(data for _, data in reader.reads) == reader.expected


@pytest.mark.parametrize("loop_name", LOOPS)
@settings(max_examples=12, deadline=None)
@given(
    busy=st.integers(min_value=20, max_value=48),
    reads_per_budget=st.integers(min_value=1, max_value=4),
)
def test_a_busy_tenant_takes_a_bounded_part_of_each_turn(loop_name, busy, reads_per_budget):
    with fixed_cost(loop_share.TURN_BUDGET / reads_per_budget):
        noisy, quiet = run(loop_name, _serve([busy, 1]))
    assert_everything_arrived([noisy, quiet])
    (lone,) = quiet
    quiet_turns = sorted({turn for turn, _ in lone.reads[1:]})  # (reads[0]: turn 0)
    # The quiet tenant reads at least once in every turn until it is done (it is resumed
    # first thing in a turn when it went over), however many connections the busy one has.
    assert quiet_turns[-1] - quiet_turns[0] <= 2 * READS, quiet_turns
    noisy_counts = per_turn(noisy)
    # In the first turn every ready connection reads once (a read is charged after it
    # happened) and then pauses; from then on, while the quiet tenant reads, the busy one
    # keeps to about its budget: reads within it, one more by each connection that then
    # pauses (libuv reads a socket up to 32 times per turn) and those resumed, whatever
    # ``busy`` is.
    bound = 3 * (reads_per_budget + 1)
    for turn in range(2, quiet_turns[-1] + 1):
        assert noisy_counts.get(turn, 0) <= bound, (turn, noisy_counts)
    assert any(r.was_paused for r in noisy)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_tenant_alone_is_never_paused(loop_name):
    with fixed_cost(loop_share.TURN_BUDGET):  # every read uses a whole budget
        (readers,) = run(loop_name, _serve([24]))
    assert_everything_arrived([readers])
    assert not any(reader.was_paused for reader in readers)
    # every connection read in the first turn: nothing held back
    first = min(turn for reader in readers for turn, _ in reader.reads)
    assert all(reader.reads[0][0] == first for reader in readers)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_costly_read_is_paid_for_in_later_turns(loop_name):
    # Each read costs ten budgets: a tenant pays for each in the turns that follow, so past the
    # first two turns each tenant reads about once per ten turns, and the loop wastes no turn
    # either (both keep it busy, paying in turn).
    with fixed_cost(10 * loop_share.TURN_BUDGET):
        tenants = run(loop_name, _serve([6, 1]))
    assert_everything_arrived(tenants)
    last = max(turn for readers in tenants for r in readers for turn, _ in r.reads)
    first = min(turn for readers in tenants for r in readers for turn, _ in r.reads)
    for readers in tenants:
        later = [turn for r in readers for turn, _ in r.reads if turn > first + 1]
        assert len(later) <= (last - first) / 10 + 2, (len(later), last - first)
    reads = 7 * READS
    assert last - first <= 1.25 * 10 * reads + 10, (last - first, reads)


class Ending(Reader):
    """Like an upstream connection whose read ends the response: after it, no account."""

    def data_received(self, data: bytes) -> None:
        Reader.data_received(self, data)
        self.account = None


@pytest.mark.parametrize("loop_name", LOOPS)
def test_the_read_that_ends_the_tie_to_a_tenant_is_charged_to_it(loop_name):
    """The account is taken before the read (a reviewer: the read that completed a response,
    and the pipelined requests it ran, were free)."""

    async def one_read():
        account = loop_share.TenantShare()
        ours, theirs = socket.socketpair()
        reader = Ending(account, Turns())
        await asyncio.get_running_loop().connect_accepted_socket(lambda: reader, ours)
        theirs.sendall(b"x" * 100)
        theirs.close()
        await reader.done
        return account

    with fixed_cost(loop_share.TURN_BUDGET / 4):
        account = run(loop_name, one_read())
    assert account.spent > 0


class Paused:
    """What LoopShares.charge pauses: a connection's reading bits."""

    def __init__(self):
        self.paused = 0

    def pause_reading_for(self, reason: int) -> None:
        self.paused |= reason

    def resume_reading_for(self, reason: int) -> None:
        self.paused &= ~reason


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_tenant_alone_owes_nothing_when_another_comes(loop_name):
    """Alone, nobody waits: 200 reads of 1 ms each (ten budgets) are not a debt paid once
    another tenant reads (a reviewer's 200 busy turns alone then paused the tenant for 83,646
    turns). Its next read over the budget is paid for in a turn or two."""

    async def main():
        shares = loop_share.LoopShares()
        alone, other = loop_share.TenantShare(), loop_share.TenantShare()
        reader = Paused()
        now = 10.0
        for _read in range(200):
            shares.charge(alone, reader, now, now + 0.001)
            now += 0.001
            await asyncio.sleep(0)  # a turn
        assert not reader.paused and alone.spent <= loop_share.TURN_BUDGET
        shares.charge(other, Paused(), now, now + 0.00001)  # another tenant: shared now
        shares.charge(alone, reader, now, now + 0.001)
        assert reader.paused  # over its budget in this turn
        for _turn in range(12):
            await asyncio.sleep(0)
        return reader.paused

    assert run(loop_name, main()) == 0


@pytest.mark.parametrize("loop_name", LOOPS)
def test_work_charged_beside_a_callback_does_not_slow_its_tenants_resumed_reads(loop_name):
    """A TLS accept is charged its handshake (``beside``: 1.4 ms, fourteen budgets), which the
    tenant pays for in later turns. Once paid, its paused connections resume as many per turn
    as its reads' cost fits (up to RESUME_MAX for cheap reads): the handshake is not a read,
    and counted as the costliest recent one it held them to one a turn for some forty reads."""

    async def main():
        shares = loop_share.LoopShares()
        tenant, other = loop_share.TenantShare(), loop_share.TenantShare()
        now = loop_share.clock()  # (next_turn reads the clock: whether others read lately)
        shares.charge(other, Paused(), now, now + 0.00001)  # another tenant: shared
        shares.charge(tenant, Paused(), now, now + 0.000002, beside=0.0014)  # the accept
        readers = [Paused() for _ in range(8)]
        for reader in readers:  # its connections, over the budget: each paused at once
            shares.charge(tenant, reader, now, now + 0.000001)
        resumed = []
        for _turn in range(40):
            await asyncio.sleep(0)
            resumed.append(sum(1 for r in readers if not r.paused))
        return [n for n in resumed if n]

    resumed = run(loop_name, main())
    # Eight cheap reads, at most RESUME_MAX a turn: all resumed in two or three turns (the
    # handshake counted as a read resumed one a turn: eight).
    assert 8 in resumed and resumed.index(8) + 1 <= 3, resumed
