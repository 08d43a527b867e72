"""The binder's listeners: each tenant's listening sockets, made inside its namespace.

A tenant whose namespace is missing, or whose address is not configured yet, waits (retried
with backoff, reported in status); the others are unaffected. What brings a waiting tenant back
is watched, not polled slowly:

- a named namespace that appears, disappears or is replaced (same path, new inode) is noticed
  by the one-second :meth:`Listeners.sweep`;
- an address that appears: while a listener waits for its address (EADDRNOTAVAIL), a
  NETLINK_ROUTE socket inside the tenant's namespace, subscribed to address events, makes the
  binder retry at once (at most every :data:`WATCH_MIN_INTERVAL`);
- a path through another process's /proc/PID is pinned to that process: when the process
  exits (its pidfd becomes readable) the tenant is unbound and shown as gone, and that path is
  never resolved again: only a reload that names another path brings the tenant back. While
  the process lives, its own ``ns/net`` is kept as opened; a path into its files
  (``/proc/PID/root/run/netns/x``, ``/proc/PID/fd/N``) is followed like a named namespace, and
  every new lookup checks that PID is still the process first pinned (netns.follows).

Each listener is an SO_REUSEPORT group of ``width`` sockets, one per worker index: the kernel
spreads new connections over them, so no worker is woken for another's connection (measured
against EPOLLEXCLUSIVE on one shared socket: src/nsproxy/README.md, "Accepting"). After a
shrink a group holds more until :meth:`Listeners.trim` (reuseport.py says why). Every socket
gets a socket id; ``on_serve(binding, digest, index, sid, sock)`` and ``on_unserve(sids)``
tell the workers.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import time

from nsproxy import config, netns, reuseport, schema

log = logging.getLogger("nsproxy")

RETRY_FIRST = 0.5
RETRY_MAX = 30.0
WATCH_MIN_INTERVAL = 0.1  # seconds between two binds triggered by address events


class Binding:
    """One tenant as the binder binds it: its namespace (and pin), its sockets by listener
    digest, each listener's state and error, the retry and the watches."""

    __slots__ = (
        "closing",
        "gone",
        "last_error",
        "last_try",
        "name",
        "ns",
        "pin",
        "pinned",
        "retry_delay",
        "retry_handle",
        "sockets",
        "spec",
        "states",
        "watch",
    )

    def __init__(self, spec: config.Tenant):
        self.spec = spec
        self.name = spec.name
        self.ns: netns.Namespace | None = None
        self.pin: netns.Pin | None = None
        # (pid, start time) of the process a /proc/PID path was first pinned to: the path is
        # followed again only through that process (netns.follows), never through its PID's
        # next owner
        self.pinned: tuple[int, int] | None = None
        # listener digest -> [(sid, socket)], one per worker index (an SO_REUSEPORT group)
        self.sockets: dict[bytes, list[tuple[int, socket.socket]]] = {}
        self.states: dict[bytes, tuple[str, str | None]] = {}  # digest -> (state, error)
        self.last_error: str | None = None
        self.retry_delay = 0.0
        self.retry_handle = None
        self.last_try = 0.0
        self.watch: socket.socket | None = None
        self.gone: str | None = None  # why a pinned path is not followed any more
        self.closing = False

    @property
    def state(self) -> str:
        if self.closing:
            return "draining"
        if self.gone:
            return "gone"
        states = {self.states.get(li.digest, ("waiting",))[0] for li in self.spec.listeners}
        if not states or states == {"bound"}:
            return "serving"
        if "bound" in states:
            return "partial"
        return "waiting"


class Listeners:
    """Every tenant's binding, by name."""

    def __init__(self, loop, registry: netns.Registry, on_serve, on_unserve, width: int = 1):
        self.loop = loop
        self.registry = registry
        self.on_serve = on_serve
        self.on_unserve = on_unserve
        self.tenants: dict[str, Binding] = {}
        # namespace identity -> the bindings that hold it open: tenants whose namespaces are
        # one (written differently, or converged after the check) must not share an address
        self.sharing: dict[tuple[int, int], set[Binding]] = {}
        self.next_sid = 1
        self.width = width  # sockets per listener: one per worker index
        # Whether groups may hold sockets beyond ``width`` and a steering program (resize)
        self.steered = False

    # -- tenants --------------------------------------------------------------------------
    def add(self, spec: config.Tenant) -> Binding:
        binding = self.tenants[spec.name] = Binding(spec)
        self.bind(binding)
        return binding

    def remove(self, name: str) -> None:
        """Unbind a removed tenant (the workers drain its connections)."""
        binding = self.tenants.pop(name)
        binding.closing = True
        self._cancel_retry(binding)
        self._unbind(binding, None)

    def update(self, binding: Binding, spec: config.Tenant) -> None:
        """A changed tenant: a new netns rebinds everything; otherwise listeners whose JSON
        is the same keep their sockets, removed ones are unbound, new ones bound."""
        old = binding.spec
        binding.spec = spec
        if old.netns != spec.netns:
            self._unbind(binding, f"netns changed from {old.netns!r} to {spec.netns!r}")
            binding.gone = binding.pinned = None
        else:
            keep = {li.digest for li in spec.listeners}
            gone = {d: binding.sockets.pop(d) for d in list(binding.sockets) if d not in keep}
            # A new listener on the address of a removed one takes its sockets over (served
            # again under the new digest): no close, so no connection waiting in them is
            # reset, and no new socket joins a group the workers are still closing.
            by_address = {
                (li.host, li.port): li.digest for li in old.listeners if li.digest in gone
            }
            for li in spec.listeners:
                digest = by_address.pop((li.host, li.port), None)
                if digest is not None and li.digest not in binding.sockets:
                    group = binding.sockets[li.digest] = gone.pop(digest)
                    binding.states[li.digest] = ("bound", None)
                    for index, (sid, sock) in enumerate(group):
                        self.on_serve(binding, li.digest, index, sid, sock)
            self.on_unserve([sid for group in gone.values() for sid, _ in group])
            for group in gone.values():
                for _, sock in group:
                    sock.close()
            binding.states = {d: s for d, s in binding.states.items() if d in keep}
            if gone and binding.ns is not None:
                self._retry_sharing(binding.ns.identity)
        self._cancel_retry(binding)
        binding.retry_delay = 0.0
        self.bind(binding)

    def served(self, index: int) -> dict[int, tuple[str, bytes, socket.socket]]:
        """Worker ``index``'s bound sockets: sid -> (tenant name, listener digest, socket)."""
        out = {}
        for b in self.tenants.values():
            for digest, group in b.sockets.items():
                if index < len(group):
                    sid, sock = group[index]
                    out[sid] = (b.name, digest, sock)
        return out

    def resize(self, width: int) -> int:
        """``width`` sockets per listener from now on. Groups that grow get new sockets now
        (joining the kernel's group) after the ones they still hold. A group that shrinks
        keeps every socket open, in index order, and gets no new connection beyond its first
        ``width`` (reuseport.steer) until :meth:`trim`: the workers of the indexes beyond
        accept what is queued there first (WorkerPool.retire), and a group that grows again
        meanwhile serves the socket it kept. Returns the longest TCP_DEFER_ACCEPT, in whole
        seconds as the kernel rounds it, of the sockets beyond ``width`` (0 if none)."""
        self.width = width
        defer = 0
        for binding in self.tenants.values():
            for digest, group in list(binding.sockets.items()):
                if len(group) < width and binding.ns is not None:
                    self._grow(binding, digest, group)
                if len(group) > width:
                    self.steered = True
                    self._steer(binding, group, width)
                    for _, sock in group[width:]:
                        defer = max(defer, _defer_accept(sock))
                elif self.steered:
                    self._steer(binding, group, None)
        return defer

    def _grow(self, binding: Binding, digest: bytes, group: list) -> None:
        listener = next(li for li in binding.spec.listeners if li.digest == digest)
        try:
            more = self.registry.listening_sockets(
                binding.ns, listener.host, listener.port, self.width - len(group)
            )
        except (OSError, netns.NetnsError) as exc:  # bind() is not retried: the group serves
            log.error("tenant %s: %s: cannot add sockets for new workers: %s",
                      binding.name, listener.listen, exc)  # fmt: skip
            return
        self._add(binding, digest, group, more)

    def trim(self) -> None:
        """Close the sockets beyond ``width`` that :meth:`resize` kept (their workers have
        exited) and give every group the kernel's own hash back."""
        if not self.steered:
            return
        self.steered = False
        for binding in self.tenants.values():
            for group in binding.sockets.values():
                for _, sock in group[self.width :]:
                    sock.close()
                del group[self.width :]
                self._steer(binding, group, None)

    @staticmethod
    def _steer(binding: Binding, group: list, width: int | None) -> None:
        """Steer ``group`` to its first ``width`` sockets (None: detach the program)."""
        if not group:
            return
        try:
            if width is None:
                reuseport.unsteer(group[0][1])
            else:
                reuseport.steer(group[0][1], width)
        except OSError as exc:  # the kernel's hash over every socket stays: logged, not fatal
            log.error("tenant %s: cannot steer new connections to %s workers' sockets: %s",
                      binding.name, width or "all", exc.strerror)  # fmt: skip

    def _add(self, binding: Binding, digest: bytes, group: list, socks: list) -> None:
        for sock in socks:
            sid = self.next_sid
            self.next_sid += 1
            group.append((sid, sock))
            self.on_serve(binding, digest, len(group) - 1, sid, sock)

    # -- binding --------------------------------------------------------------------------
    def bind(self, binding: Binding) -> None:
        """Bind every listener of the tenant that is not bound yet; schedule a retry if needed."""
        if binding.closing or binding.gone:
            return
        binding.retry_handle = None
        binding.last_try = time.monotonic()
        spec = binding.spec
        if binding.ns is None:
            path = netns.ns_path(spec.netns)
            if netns.pinned_pid(path) is None and netns.current_identity(path) is None:
                self._waiting(binding, f"network namespace {path} does not exist")
                return
            try:
                binding.ns, binding.pin = self.registry.acquire(spec.netns, binding.pinned)
            except netns.NetnsError as exc:
                binding.pinned = binding.pinned or exc.process
                if exc.gone or not netns.follows(path):
                    self._gone(binding, str(exc))
                else:
                    self._waiting(binding, str(exc))
                return
            if binding.pin is not None:
                binding.pinned = (binding.pin.pid, binding.pin.start_time)
                self.loop.add_reader(binding.pin.pidfd, self._process_exited, binding)
        # (also for a namespace adopted across an upgrade, which comes here already open)
        self.sharing.setdefault(binding.ns.identity, set()).add(binding)
        waiting_for_address = missing = False
        for listener in spec.listeners:
            group = binding.sockets.get(listener.digest)
            if group is not None and len(group) >= self.width:
                continue
            if group is None:
                other = self._served_by_another(binding, listener)
                if other is not None:
                    missing = True
                    self._listener_error(binding, listener, "error", (
                        f"{listener.listen}: tenant {other!r} listens there in the same network "
                        f"namespace; not bound (their clients would be mixed)"))  # fmt: skip
                    continue
            try:
                socks = self.registry.listening_sockets(
                    binding.ns, listener.host, listener.port, self.width - len(group or ())
                )
            except OSError as exc:
                missing = True
                waiting_for_address |= exc.errno == errno.EADDRNOTAVAIL
                state = "waiting" if exc.errno == errno.EADDRNOTAVAIL else "error"
                self._listener_error(binding, listener, state, f"{listener.listen}: {_reason(exc)}")
                continue
            except netns.NetnsError as exc:
                missing = True
                self._listener_error(binding, listener, "error", str(exc))
                continue
            if group is None:
                group = binding.sockets[listener.digest] = []
            binding.states[listener.digest] = ("bound", None)
            self._add(binding, listener.digest, group, socks)
        if waiting_for_address:
            self._watch_addresses(binding)
        else:
            self._stop_watch(binding)
        if missing:
            self._schedule_retry(binding)
        else:
            binding.retry_delay = 0.0
            binding.last_error = None

    def _served_by_another(self, binding: Binding, listener) -> str | None:
        """The name of another tenant bound, in ``binding``'s namespace, to an address that
        overlaps ``listener``'s (same port and family; equal, or either one the wildcard).

        The check refuses this for namespaces it can tell apart; here it holds for those that
        became one afterwards (a bind mount, a reused PID, a name given to another namespace):
        the second tenant's socket would join the first one's SO_REUSEPORT group (same user,
        socket(7)), and the kernel would hand either tenant's clients to both."""
        ip = schema.ip_address(listener.host)
        for other in self.sharing.get(binding.ns.identity, ()):
            if other is binding:
                continue
            for theirs in other.spec.listeners:
                if theirs.port != listener.port or theirs.digest not in other.sockets:
                    continue
                their_ip = schema.ip_address(theirs.host)
                if their_ip.version == ip.version and (
                    their_ip == ip or their_ip.is_unspecified or ip.is_unspecified
                ):
                    return other.name
        return None

    def _retry_sharing(self, identity: tuple[int, int]) -> None:
        """Bind at once the tenants of a namespace where an address may have been freed."""
        for other in self.sharing.get(identity, ()):
            if other.retry_handle is not None:
                self._cancel_retry(other)
                other.retry_handle = self.loop.call_soon(self.bind, other)

    def _listener_error(self, binding: Binding, listener, state: str, error: str) -> None:
        if binding.states.get(listener.digest) != (state, error):
            log.warning("tenant %s: %s (retrying)", binding.name, error)
        binding.states[listener.digest] = (state, error)
        binding.last_error = error

    def _waiting(self, binding: Binding, reason: str) -> None:
        if binding.last_error != reason:
            log.warning("tenant %s: %s (retrying)", binding.name, reason)
        binding.last_error = reason
        for listener in binding.spec.listeners:
            binding.states[listener.digest] = ("waiting", reason)
        self._schedule_retry(binding)

    def _gone(self, binding: Binding, reason: str) -> None:
        """A pinned path whose process is gone: unbound until a reload names another path."""
        binding.gone = reason
        binding.last_error = reason
        for listener in binding.spec.listeners:
            binding.states[listener.digest] = ("gone", reason)
        log.warning("tenant %s: %s; not followed (a reload naming another path rebinds)",
                    binding.name, reason)  # fmt: skip

    def _schedule_retry(self, binding: Binding) -> None:
        if binding.retry_handle is not None or binding.closing or binding.gone:
            return
        delay = binding.retry_delay = min(RETRY_MAX, max(RETRY_FIRST, binding.retry_delay * 2))
        binding.retry_handle = self.loop.call_later(delay, self.bind, binding)

    def _cancel_retry(self, binding: Binding) -> None:
        if binding.retry_handle is not None:
            binding.retry_handle.cancel()
            binding.retry_handle = None

    def _unbind(self, binding: Binding, reason: str | None) -> None:
        """Close a tenant's sockets and give its namespace back (it vanished or changed)."""
        if reason is not None:
            log.warning("tenant %s: %s: rebuilding its listeners", binding.name, reason)
        if binding.sockets:
            self.on_unserve([sid for group in binding.sockets.values() for sid, _ in group])
            for group in binding.sockets.values():
                for _, sock in group:
                    sock.close()
            binding.sockets.clear()
        binding.states.clear()
        self._stop_watch(binding)
        if binding.pin is not None:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(binding.pin.pidfd)
            binding.pin.close()
            binding.pin = None
        if binding.ns is not None:
            sharing = self.sharing.get(binding.ns.identity)
            if sharing is not None:
                sharing.discard(binding)
                if not sharing:
                    del self.sharing[binding.ns.identity]
                self._retry_sharing(binding.ns.identity)
            self.registry.release(binding.ns)
            binding.ns = None
        binding.retry_delay = 0.0

    def _process_exited(self, binding: Binding) -> None:
        pin = binding.pin
        reason = f"process {pin.pid} of {netns.ns_path(binding.spec.netns)} exited"
        self._cancel_retry(binding)
        self._unbind(binding, None)
        self._gone(binding, reason)

    # -- address watch --------------------------------------------------------------------
    def _watch_addresses(self, binding: Binding) -> None:
        if binding.watch is not None or binding.ns is None:
            return
        try:
            binding.watch = self.registry.address_watch(binding.ns)
        except (OSError, netns.NetnsError) as exc:
            log.warning("tenant %s: cannot watch addresses (%s): retrying with backoff",
                        binding.name, exc)  # fmt: skip
            return
        self.loop.add_reader(binding.watch.fileno(), self._address_event, binding)
        # An address added between the failed bind and the watch: look once more now.
        self._cancel_retry(binding)
        binding.retry_handle = self.loop.call_soon(self.bind, binding)

    def _stop_watch(self, binding: Binding) -> None:
        if binding.watch is not None:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(binding.watch.fileno())
            binding.watch.close()
            binding.watch = None

    def _address_event(self, binding: Binding) -> None:
        """Addresses changed in the tenant's namespace: bind again now (the messages are the
        kernel's; they are drained, not read)."""
        watch = binding.watch
        for _ in range(256):
            try:
                if not watch.recv(65536):
                    break
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # ENOBUFS: events were lost, which is an event too
                continue
        log.debug("tenant %s: addresses changed in its namespace: binding again", binding.name)
        self._cancel_retry(binding)
        delay = max(0.0, binding.last_try + WATCH_MIN_INTERVAL - time.monotonic())
        binding.retry_handle = self.loop.call_later(delay, self.bind, binding)

    # -- the one-second look ------------------------------------------------------------
    def sweep(self) -> None:
        """Notice named namespaces that disappeared, were replaced or appeared, and the same
        of paths into another process's files while it lives (netns.follows)."""
        for binding in list(self.tenants.values()):
            if binding.closing or binding.gone:
                continue
            path = netns.ns_path(binding.spec.netns)
            if binding.pinned is not None and not netns.follows(path):
                continue
            if binding.ns is not None:
                identity = netns.current_identity(binding.ns.path)
                if binding.pin is not None and binding.pin.exited():
                    continue  # looked up past the process's life: _process_exited unbinds it
                if identity != binding.ns.identity:
                    self._unbind(
                        binding,
                        "network namespace was replaced"
                        if identity
                        else f"network namespace {binding.ns.path} disappeared",
                    )
                    self._cancel_retry(binding)
                    self.bind(binding)
            elif binding.retry_handle is not None and netns.current_identity(path) is not None:
                # Waiting for the namespace: bind as soon as it appears (a pinned path: bind
                # checks that its PID is still the first process's).
                self._cancel_retry(binding)
                self.bind(binding)

    def close(self) -> None:
        for binding in list(self.tenants.values()):
            self._cancel_retry(binding)
            self._unbind(binding, None)

    # -- status ---------------------------------------------------------------------------
    def status(self, binding: Binding) -> dict:
        return {
            "netns_inode": binding.ns.inode if binding.ns is not None else None,
            "state": binding.state,
            "listeners": [
                {
                    "listen": li.listen,
                    "protocol": li.protocol,
                    "state": binding.states.get(li.digest, ("waiting", None))[0],
                    "error": binding.states.get(li.digest, (None, None))[1],
                }
                for li in binding.spec.listeners
            ],
            "last_error": binding.last_error,
        }


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available in the tenant's namespace (not configured yet?)"
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if exc.errno == errno.EACCES:
        return "permission denied (binding a port below 1024 needs CAP_NET_BIND_SERVICE)"
    return exc.strerror or str(exc)


def _defer_accept(sock: socket.socket) -> int:
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT)
    except OSError:
        return 0
