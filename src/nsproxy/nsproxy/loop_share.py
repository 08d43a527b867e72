"""Each tenant's share of a worker's event loop: deficit round robin over turns of the loop.

A worker serves every tenant from one event loop, and the loop serves what is ready one
callback after the other: left alone, it shares its time per connection. A tenant with 256
busy keep-alive connections then had 256 reads served for every one of a tenant with one,
whose requests waited behind all of them: 1.4 to 1.9 % of its rate alone was left, at a median
latency of 10 to 16 ms instead of 0.2 (``bench/tenant_share.py``, "Tenant share" in
``bench/README.md``; 40 to 57 % at 0.6 ms with this module).

Here the loop is shared per tenant, by deficit round robin (Shreedhar and Varghese, "Efficient
Fair Queueing using Deficit Round Robin", SIGCOMM 1995) with one turn of the loop as the round:

- every read a relaying protocol passes on (``buffering.BoundedReads.buffer_updated``) is
  charged to its tenant, as the time its callback took (``time.perf_counter``): what the
  proxy spends in Python for it, which differs by a factor of a hundred between a read of one
  small request and a read of 4096 one-byte chunks;
- each turn gives every tenant :data:`TURN_BUDGET` seconds; a tenant that has spent more in
  the turn is over its share, and the connection that read is paused (:data:`SHARE`) and
  queued behind the tenant's other paused connections;
- at the start of the next turn (a callback queued with ``call_soon``, run before the loop
  polls again) each tenant's spending is brought down by one budget per turn that passed (a
  tenant that overspent in one costly read waits that many turns), and a tenant whose
  spending is back under its budget has as many of its queued connections resumed as its
  costliest recent read fits in what is left (at least one, at most :data:`RESUME_MAX`),
  oldest first.

So while two tenants or more read, a tenant's reads take about one budget of each turn, plus
one read by each of its connections that then pauses (a read is charged once it has run) and
at most :data:`RESUME_MAX` resumed ones, each bounded by what one read may cost; a tenant that
asks little is served within a turn or two however many connections another keeps busy.
While a single tenant reads (none other for :data:`CONTENDED_SECONDS`) nothing is paused:
sharing costs two ``epoll_ctl`` calls per paused read, and there is no one to share with.
Accepting is charged too (accept.py): the accept itself, and for a TLS connection what its
handshake costs, which the loop's TLS transport runs out of sight of any callback of the
tenant's (handshake_cost.py); a listener whose tenant is over its share stops accepting until
the tenant's turn, as a paused connection stops reading. Other work outside the protocols'
callbacks is not charged (the kernel's, uvloop's own, writing): the admission
(``admission.py``) bounds how many connections a tenant can make.
"""

from __future__ import annotations

import asyncio
import collections
import time

from nsproxy.buffering import BoundedReads

#: Seconds of callback time a tenant may spend in one turn of the loop while others read too.
TURN_BUDGET = 0.0001
#: Seconds after a read of a second tenant during which the loop counts as shared (seconds,
#: not turns: a tenant waiting for its upstream may not read for many short turns).
CONTENDED_SECONDS = 1.0
#: The most one read is charged (seconds): what a read may cost the proxy is bounded
#: (``buffering.READ_BYTES``, ``http.flow.CHUNKS_PER_TURN``: a few ms); more is a pause of the
#: whole process during it (a garbage collection, the scheduler), not the tenant's doing.
MAX_CHARGE = 0.02
#: Connections of one tenant resumed in one turn at most (a read may cost far more than its
#: tenant's recent reads: what its socket holds is the client's choice).
RESUME_MAX = 4
#: Bit of ``Flow.paused`` (http/flow.py) set while a connection waits for its tenant's turn.
SHARE = 32

clock = time.perf_counter


class TenantShare:
    """One tenant's account in one worker: seconds spent since ``turn``, the cost of its
    costliest recent read (seconds, decaying by a tenth per read) and its connections paused
    for a later turn."""

    __slots__ = ("peak", "spent", "turn", "waiting")

    def __init__(self) -> None:
        self.spent = 0.0
        self.turn = 0
        self.peak = TURN_BUDGET / 8
        self.waiting: collections.deque = collections.deque()

    def refill(self, turn: int) -> None:
        """Take one budget off what was spent for every turn since the last account."""
        if turn != self.turn:
            self.spent = max(0.0, self.spent - TURN_BUDGET * (turn - self.turn))
            self.turn = turn


class LoopShares:
    """The worker's turns of the loop and the tenants waiting for theirs. One per event loop
    (:data:`SHARES`: a worker has one loop)."""

    def __init__(self) -> None:
        self.turn = 1
        self.armed = False
        self.backlog: list[TenantShare] = []  # tenants with paused connections
        self.last: TenantShare | None = None  # the tenant of the last charged read
        self.mixed = -CONTENDED_SECONDS  # when (clock) the last read of another tenant came

    def charge(
        self, share: TenantShare, protocol, start: float, end: float, beside: float = 0.0
    ) -> None:
        """Charge one read of ``protocol`` (a ``flow.Flow``-like object with
        ``pause_reading_for``/``resume_reading_for``; the acceptor's listener for an accept),
        from ``start`` to ``end`` (``clock`` seconds) plus ``beside`` seconds of work the loop
        does for it outside the callback (a TLS handshake: handshake_cost.py), to ``share``;
        pause ``protocol`` if its tenant is over its budget in this turn while other tenants
        read too."""
        turn = self.turn
        seconds = min(end - start + beside, MAX_CHARGE)
        if not self.armed:
            self.armed = True
            asyncio.get_running_loop().call_soon(self.next_turn)
        if share is not self.last:
            if self.last is not None:
                self.mixed = end
            self.last = share
        share.refill(turn)
        share.spent += seconds
        # the costliest recent read, decaying: cheap reads queued first cannot make a batch
        # of costly ones look affordable (a reviewer's 10 reads of 10 ms in one turn). What
        # ``beside`` adds (a handshake) is not what resuming a read costs: left out.
        share.peak = max(min(end - start, MAX_CHARGE), share.peak * 0.9)
        if end - self.mixed >= CONTENDED_SECONDS:
            # Alone, nobody waited: no debt is kept to be paid once another tenant comes (a
            # reviewer's 200 busy turns alone paused the tenant for 83,646 turns after).
            share.spent = min(share.spent, TURN_BUDGET)
        elif share.spent > TURN_BUDGET:
            protocol.pause_reading_for(SHARE)
            if not share.waiting:
                self.backlog.append(share)
            share.waiting.append(protocol)

    def credit(self, share: TenantShare, seconds: float) -> None:
        """Give back ``seconds`` charged in advance for work that turned out cheaper (a TLS
        handshake that resumed a session)."""
        share.refill(self.turn)
        share.spent = max(0.0, share.spent - seconds)

    def next_turn(self) -> None:
        """Start a turn: refill every waiting tenant and resume what its budget fits."""
        self.armed = False
        self.turn = turn = self.turn + 1
        backlog, self.backlog = self.backlog, []
        alone = clock() - self.mixed >= CONTENDED_SECONDS
        for share in backlog:
            share.refill(turn)
            if alone:
                count = len(share.waiting)  # nobody else reads: nothing to share
            elif share.spent < TURN_BUDGET:
                count = min(
                    RESUME_MAX, max(1, int((TURN_BUDGET - share.spent) / max(share.peak, 1e-6)))
                )
            else:
                count = 0  # still paying for an earlier turn
            waiting = share.waiting
            for _resumed in range(min(count, len(waiting))):
                waiting.popleft().resume_reading_for(SHARE)
            if waiting:
                self.backlog.append(share)
        if self.backlog:
            self.armed = True
            asyncio.get_running_loop().call_soon(self.next_turn)


SHARES = LoopShares()


class Pausable:
    """What stops reading (or accepting: accept.py's listeners) for several reasons, one bit
    each in ``paused`` (``SHARE`` is this module's; the users name theirs): it stops at the
    first bit and goes on when no bit is left. Subclasses hold ``paused`` and define
    ``_halt`` (stop at the first bit) and ``_proceed`` (go on)."""

    __slots__ = ()
    paused: int

    def _halt(self) -> None:
        raise NotImplementedError

    def _proceed(self) -> None:
        raise NotImplementedError

    def pause_reading_for(self, reason: int) -> None:
        if not self.paused:
            self._halt()
        self.paused |= reason

    def resume_reading_for(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused:
                self._proceed()


class SharedReads(Pausable, BoundedReads):
    """A relaying protocol whose reads are charged to its tenant (:meth:`share`), and whose
    reading pauses for several reasons (:class:`Pausable`). Subclasses set ``transport`` in
    ``connection_made``."""

    __slots__ = ("paused", "transport")

    def __init__(self) -> None:
        self.transport = None
        self.paused = 0  # bit set of the reasons to stop reading

    def share(self) -> TenantShare | None:
        """The account of the tenant this protocol's reads are charged to (None: none)."""
        return None

    def buffer_updated(self, nbytes: int) -> None:
        # The account is taken before the read: the read that ends a response also ends the
        # upstream connection's tie to its client (share() is None in the pool), and what it
        # runs (the next pipelined requests) is the tenant's too.
        share = self.share()
        start = clock()
        BoundedReads.buffer_updated(self, nbytes)
        if share is not None:
            SHARES.charge(share, self, start, clock())

    def _halt(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()

    def _proceed(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()
