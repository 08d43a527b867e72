"""Scheduling priority: a reload runs ahead of the workers on a busy CPU.

A reload's check and binds are the binder's only long stretch of CPU, and the operator waits
for it. At equal priority it gets about half of a CPU that a busy worker also runs on: on the
benchmark's add of one tenant with its own certificate to 1000 (binder and worker on one CPU,
the worker saturated; 2-vCPU Xeon VM), the read and check took 83 ms for 40 ms of CPU, and
the new listener accepted after 93 ms. Inside :func:`ahead` the binder runs :data:`BOOST` nice
levels below the workers: the scheduler's weight of nice n is 1024 / 1.25**n
(kernel/sched/core.c, ``sched_prio_to_weight``), so ten levels give it about 9/10 of such a CPU
(the same add: 34 ms, bench run 2026-12-01T0702Z). Only there: everything else the binder
does is short, and some of it comes from tenants' traffic (sockets in a tenant's namespace
for the workers), which must not outrank the workers that serve the other tenants. The block
holds no ``await``, so no other callback of the binder runs boosted, and no worker is forked
boosted.

Lowering a nice value needs CAP_SYS_NICE (setpriority(2)); the unit grants it
(roles/nsproxy: ``nsproxy_capabilities``). Without it the reload runs at the workers' priority,
and the log says so once.
"""

from __future__ import annotations

import contextlib
import logging
import os

log = logging.getLogger("nsproxy")

#: Nice levels the binder drops below its own value inside :func:`ahead`.
BOOST = 10
_HIGHEST = -20  # the lowest nice value there is (setpriority(2))
_refusal_logged = False  # a refused boost is said once per process


def current() -> int:
    """This thread's nice value, -20 (first) to 19 (last)."""
    return os.getpriority(os.PRIO_PROCESS, 0)


@contextlib.contextmanager
def ahead():
    """Run the block :data:`BOOST` nice levels below the calling thread's value (-20 at
    most), then return to it; ``as`` gives the nice value the block runs at. The block must not
    yield to the event loop. setpriority(2) on Linux sets one thread: the binder has only one."""
    global _refusal_logged
    base = current()
    wanted = max(_HIGHEST, base - BOOST)
    boosted = False
    if wanted < base:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, wanted)
            boosted = True
        except PermissionError:
            if not _refusal_logged:
                _refusal_logged = True
                log.info(
                    "a reload runs at the workers' nice value %d (running ahead of them needs "
                    "CAP_SYS_NICE): on a CPU a busy worker uses, it gets about half of it",
                    base,
                )
    try:
        yield wanted if boosted else base
    finally:
        if boosted:
            os.setpriority(os.PRIO_PROCESS, 0, base)  # raising one's value needs nothing
