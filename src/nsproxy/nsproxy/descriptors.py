"""The descriptor budget: what a configuration needs in file descriptors, against the limit.

``nsproxy run`` raises its soft ``RLIMIT_NOFILE`` to the hard limit (binder/main.py
``raise_nofile_limit``), and the workers it forks inherit that limit. A configuration that
needs more descriptors than that cannot serve: the binder would stop at its start with
"Too many open files", or leave a reload half-applied. So the check (``nsproxy check``, the
start and every reload) counts them and refuses the file with one line naming the numbers.

What the code makes (src/nsproxy/README.md, "Processes and privileges", says why):

- the binder: every listener is an SO_REUSEPORT group of one socket per worker
  (binder/listeners.py), so ``listeners x workers`` listening sockets; the metrics socket; per
  worker a channel and a pidfd (binder/workers.py), twice over, since while the workers are
  replaced (a change of their user, an upgrade) the old ones' are held beside the new ones',
  and the new ones inherit both; per namespace a tenant or an upstream
  names, its open file and either its address watch or the pidfd that pins a /proc/PID path
  (netns.py, binder/listeners.py, binder/sockets.py); and :data:`admission.RESERVED_FDS` for
  its own files (logs, admin socket and its clients, epoll, memfds);
- a worker: it is forked from the binder and replaces every descriptor it was not given by
  /dev/null (worker/main.py, so that an abandoned binder object never closes a number the
  worker reuses), so it holds as many as the binder did, and on top its stock of unconnected
  sockets for upstreams inside namespaces (worker/stock.py, per tenant and namespace, made by
  binder/sockets.py) and the
  two descriptors per connection of at least the smallest connection budget admission.py
  gives (:data:`MIN_CONNECTIONS`).

The worker's count is the larger, so it is the one compared with the limit.
"""

from __future__ import annotations

import os
import resource

from nsproxy import admission

#: The smallest connection budget admission.py gives a worker (``max(16, ...)``).
MIN_CONNECTIONS = 16


def limit() -> int | None:
    """The soft RLIMIT_NOFILE ``nsproxy run`` will have (it raises the soft limit to the hard
    one); None when unlimited."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    effective = hard if hard != resource.RLIM_INFINITY else soft
    return None if effective == resource.RLIM_INFINITY else effective


def workers(config) -> int:
    """The config's ``workers`` as the binder counts them ("auto": the CPUs it may run on)."""
    count = getattr(config, "workers", "auto")
    if count == "auto" or count is None:
        return max(1, len(os.sched_getaffinity(0)))
    return int(count)


def needs(config) -> dict:
    """The descriptors ``config`` needs: ``listening`` sockets, ``binder`` and ``worker``
    totals (see the module docstring)."""
    from nsproxy.binder import sockets
    from nsproxy.worker import stock

    width = workers(config)
    listeners = config.listener_count()
    upstream_namespaces = {u.netns for t in config.tenants for u in t.upstreams.values() if u.netns}
    namespaces = upstream_namespaces | {t.netns for t in config.tenants}
    listening = listeners * width + (1 if config.metrics_listen is not None else 0)
    binder = listening + 2 * 2 * width + 2 * len(namespaces) + admission.RESERVED_FDS
    # A worker's stock of unconnected upstream sockets: per tenant, namespace and family, up
    # to a batch asked for when fewer than LOW are left (worker/stock.py).
    stocks = {(t.name, u.netns) for t in config.tenants for u in t.upstreams.values() if u.netns}
    stocked = len(stocks) * len(sockets.FAMILIES) * (stock.BATCH + stock.LOW)
    return {
        "listeners": listeners,
        "workers": width,
        "listening": listening,
        "binder": binder,
        "worker": binder + stocked + 2 * MIN_CONNECTIONS,
    }


def fixed(config) -> int:
    """The descriptors a worker holds besides its connections' (see the module docstring):
    what admission.py leaves out of the connection budget."""
    return needs(config)["worker"] - 2 * MIN_CONNECTIONS


def problem(config, nofile: int | None = None) -> str | None:
    """One line when ``config`` needs more descriptors than ``nofile`` (by default the limit
    the daemon will run with), else None. It starts with ``workers``, as a check line starts
    with the field it is about: the count is listeners times workers."""
    nofile = limit() if nofile is None else nofile
    if nofile is None:
        return None
    need = needs(config)
    if need["worker"] <= nofile:
        return None
    return (
        f"workers: this configuration needs {need['worker']} file descriptors in each worker "
        f"({need['listeners']} listeners x {need['workers']} workers = "
        f"{need['listeners'] * need['workers']} listening sockets"
        f"{' and the metrics socket' if config.metrics_listen is not None else ''}, held by the "
        f"binder and inherited by every worker, plus namespaces, channels, "
        f"upstream socket stock, {admission.RESERVED_FDS} for the process's own "
        f"files and {2 * MIN_CONNECTIONS} for connections), but RLIMIT_NOFILE is {nofile}: "
        "use fewer listeners or workers, or raise the limit (LimitNOFILE=, the role's "
        "nsproxy_limit_nofile)"
    )
