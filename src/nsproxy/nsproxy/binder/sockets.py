"""Upstream sockets for the workers: unconnected TCP sockets made inside a tenant's namespace.

A worker asks (``need_sockets``: tenant, upstream, family, count); the binder looks the
upstream up in ITS config (so a worker only ever gets sockets where that tenant's upstreams
are), opens the namespace once and keeps it, makes the sockets there in one namespace switch and
answers with them and the namespace's identity. Workers keep them in stock (worker/stock.py),
so this is not on the path of a request.

The namespaces handed out are watched like the listeners' (the one-second sweep for named ones,
the pidfd for a pinned /proc/PID path): when one is replaced or gone, ``on_changed(identity)``
tells the workers to drop their pools and stock for it.
"""

from __future__ import annotations

import contextlib
import logging
import socket

from nsproxy import netns

log = logging.getLogger("nsproxy")

MAX_COUNT = 64  # sockets per answer
FAMILIES = (socket.AF_INET, socket.AF_INET6)


class Missing(str):
    """The reason a refusal gives when the upstream's namespace cannot be opened (it does not
    exist, or its pinned process exited): unlike the binder's own limits, this says something
    about the upstream (a health check counts it as a failure)."""


class UpstreamSockets:
    """The upstream namespaces opened for workers, by the config's netns string."""

    def __init__(self, loop, registry: netns.Registry, on_changed):
        self.loop = loop
        self.registry = registry
        self.on_changed = on_changed
        # netns string -> (Namespace, Pin or None); a gone pinned path -> (None, reason)
        self.opened: dict[str, tuple] = {}
        # netns string -> (pid, start time) of the process a /proc/PID path was first pinned
        # to (listeners.Binding.pinned): it is looked up again through that process only
        self.pinned: dict[str, tuple[int, int]] = {}

    def make(self, spec, upstream, family, count) -> tuple[list, tuple | str]:
        """(sockets, identity) for upstream ``upstream`` of the tenant ``spec`` (None: no such
        tenant), or ([], reason) when refused (a :class:`Missing` reason: the namespace cannot
        be opened). Every field is checked here: the request comes from a worker."""
        up = (
            spec.upstreams.get(upstream) if spec is not None and isinstance(upstream, str) else None
        )
        if up is None or up.netns is None:
            return [], "no such upstream in a tenant namespace"
        if family not in FAMILIES or not isinstance(count, int) or isinstance(count, bool):
            return [], "bad family or count"
        count = max(1, min(count, MAX_COUNT))
        entry = self._namespace(up.netns)
        if entry[0] is None:
            return [], Missing(entry[1])
        ns = entry[0]
        try:
            return self.registry.unconnected_sockets(ns, family, count), ns.identity
        except (OSError, netns.NetnsError) as exc:
            return (
                [],
                f"cannot create sockets in {ns.path}: {getattr(exc, 'strerror', None) or exc}",
            )

    def _namespace(self, name: str) -> tuple:
        entry = self.opened.get(name)
        if entry is not None and self._replaced(name, *entry):
            self._drop(name, "replaced")
            entry = None
        if entry is None:
            path = netns.ns_path(name)
            try:
                ns, pin = self.registry.acquire(name, self.pinned.get(name))
            except netns.NetnsError as exc:
                if exc.process is not None:
                    self.pinned.setdefault(name, exc.process)
                if exc.gone or not netns.follows(path):
                    self.opened[name] = (None, str(exc))
                return (None, str(exc))
            entry = self.opened[name] = (ns, pin)
            if pin is not None:
                self.pinned.setdefault(name, (pin.pid, pin.start_time))
                self.loop.add_reader(pin.pidfd, self._process_exited, name)
        return entry

    @staticmethod
    def _replaced(name: str, ns, pin) -> bool:
        """Whether the open namespace of ``name`` is no longer the one its path names: a
        named path, or a path into a process's files while that process lives (a process's
        own ns/net is kept as opened; one that has exited is _process_exited's)."""
        if ns is None or (pin is not None and not netns.follows(netns.ns_path(name))):
            return False
        identity = netns.current_identity(ns.path)
        return not (pin is not None and pin.exited()) and identity != ns.identity

    def _process_exited(self, name: str) -> None:
        pin = self.opened[name][1]
        reason = f"process {pin.pid} of {netns.ns_path(name)} exited"
        self._drop(name, None)
        self.opened[name] = (None, reason)
        log.warning("upstream namespace %s: %s; not followed", name, reason)

    def _drop(self, name: str, why: str | None) -> None:
        ns, pin = self.opened.pop(name)
        if ns is None:
            return
        if why:
            log.info("upstream namespace %s was %s: dropping its pooled connections", name, why)
        if pin is not None:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(pin.pidfd)
            pin.close()
        identity = ns.identity
        self.registry.release(ns)
        self.on_changed(identity)

    def sweep(self) -> None:
        """Named namespaces handed out that were replaced or have gone."""
        for name, (ns, pin) in list(self.opened.items()):
            if self._replaced(name, ns, pin):
                self._drop(name, "replaced or removed")

    def keep_only(self, names: set) -> None:
        """After a reload: forget namespaces no upstream names any more."""
        for name in [n for n in self.opened if n not in names]:
            self._drop(name, None)
        for name in [n for n in self.pinned if n not in names]:
            del self.pinned[name]

    def close(self) -> None:
        for name in list(self.opened):
            self._drop(name, None)
