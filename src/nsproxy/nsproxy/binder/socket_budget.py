"""How many upstream sockets the binder makes for each worker and tenant, per second.

A worker cannot enter a namespace, so it asks the binder for unconnected sockets inside a
tenant's upstream namespace as its connections need them (``need_sockets``, worker/stock.py),
and the binder makes them with its privileges (binder/sockets.py). The budget bounds what a
worker, a runaway one or one taken over (it serves every tenant on it), can make the binder
do: :data:`PER_WORKER` sockets a second. Within that, one tenant's asks get
:data:`PER_TENANT`, so that one tenant's connections (its clients, or an upstream that closes
every connection) cannot use up what the worker's other tenants need: a refused ask fails the
connections waiting for it. And since a few tenants together could still take the whole of
it, every tenant's first :data:`FLOOR` a second are allowed whatever the others took (a
worker's total is then at most ``PER_WORKER + tenants x FLOOR``).
"""

from __future__ import annotations

import collections
import time

PER_WORKER = 20000  # sockets a second, every tenant of the worker together
PER_TENANT = PER_WORKER // 4  # sockets a second for one tenant on one worker
FLOOR = 256  # sockets a second every tenant gets on a worker, whatever the others took


class SocketBudget:
    """The sockets made this second, by (worker pid, tenant) and by (worker pid, None)."""

    def __init__(self) -> None:
        self.second = -1
        self.used: collections.Counter = collections.Counter()

    def allows(self, pid: int, tenant: str, count: int) -> bool:
        """Whether ``count`` more sockets for ``tenant`` fit in worker ``pid``'s budget."""
        second = int(time.monotonic())
        if second != self.second:  # a new second: every count starts again
            self.second = second
            self.used.clear()
        mine = self.used[pid, tenant] + count
        return mine <= FLOOR or (mine <= PER_TENANT and self.used[pid, None] + count <= PER_WORKER)

    def spend(self, pid: int, tenant: str, count: int) -> None:
        """Count ``count`` sockets made for ``tenant`` in worker ``pid``'s budget."""
        if count:
            self.used[pid, None] += count
            self.used[pid, tenant] += count
