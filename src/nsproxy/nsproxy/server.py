"""The daemon: tenants, their listeners, reload by difference, retry, namespace watch, drain.

One event loop serves every tenant. A tenant whose namespace is missing or whose address is not
configured yet waits (retried with backoff, reported in status); the others are unaffected. A
one-second sweep updates the coarse clock, enforces connection timeouts, flushes the access log
and notices a tenant namespace that disappeared or was recreated (same path, new inode).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import gc
import logging
import os
import re
import resource
import signal
import time
import weakref

from nsproxy import accesslog, config, metrics, netns, systemd
from nsproxy.accept import Acceptor
from nsproxy.admission import Admission
from nsproxy.http import ClientConnection, Router
from nsproxy.upstream import Upstreams

log = logging.getLogger("nsproxy")

_HEADER_SAFE = re.compile(rb"[A-Za-z0-9._-]{1,63}")
RETRY_FIRST = 0.5
RETRY_MAX = 30.0


class Shared:
    """What every connection reads: limits, timeouts, the coarse clock, the access log."""

    def __init__(self, loop, cfg: config.Config):
        self.loop = loop
        self.loop_time = time.monotonic  # uvloop's loop.time() only has millisecond steps
        self.now = loop.time()
        self.limits = cfg.limits
        self.timeouts = cfg.timeouts
        self.access_log: accesslog.AccessLog | None = None
        self.connections: set = set()
        self.admission = Admission()
        self.acceptor = Acceptor(loop, self.admission)
        self.draining = False


class ListenerRuntime:
    """One listener as served; for http/https it is also the protocol factory (saves memory)."""

    __slots__ = (
        "cert_state",
        "error",
        "factory",
        "scheme",
        "server",
        "shared",
        "spec",
        "ssl_ctx",
        "state",
        "tenant",
    )

    def __init__(self, spec: config.Listener, tenant, shared):
        self.spec = spec
        self.tenant = tenant
        self.shared = shared
        self.scheme = b"https" if spec.protocol == "https" else b"http"
        self.server = None  # the listening socket while bound (accept.Acceptor serves it)
        self.factory = None  # tcp.RelayFactory, for draining its relays
        self.ssl_ctx = None  # https: the context, updated in place when certificate files change
        self.cert_state = None
        self.state = "waiting"
        self.error: str | None = None

    def __call__(self) -> ClientConnection:
        return ClientConnection(self.tenant, self.spec.listen, self.scheme, self.shared)

    def close(self) -> None:
        if self.server is not None:
            self.shared.acceptor.remove(self.server)
            self.server = None
        self.state = "waiting"


class TenantRuntime:
    """A tenant as served: its namespace, listeners, router, upstream pools and counters."""

    __slots__ = (
        "active",
        "admission",
        "closing",
        "connections",
        "counters",
        "last_error",
        "listeners",
        "name",
        "ns",
        "retry_delay",
        "retry_handle",
        "router",
        "spec",
        "upstreams",
    )

    def __init__(self, spec: config.Tenant, router: Router, upstreams: Upstreams, admission):
        self.spec = spec
        self.admission = admission  # the process's Admission (connection budget and shares)
        self.connections = None  # open http connections, a set from the first one
        self.name = spec.name
        self.ns: netns.Namespace | None = None
        self.listeners: tuple[ListenerRuntime, ...] = ()  # a tuple: smaller than a list
        self.router = router
        self.upstreams = upstreams
        upstreams.use_specs(spec.upstreams)
        self.counters: metrics.TenantMetrics | None = None  # made by the first count
        self.active = 0
        self.closing = False
        self.last_error: str | None = None
        self.retry_delay = 0.0
        self.retry_handle = None

    @property
    def header_value(self) -> bytes:
        """The tenant name as sent in ``X-Nsproxy-Tenant`` (checked once more here: a name
        that could end the field or the head must never reach a request)."""
        value = self.name.encode("ascii")
        if not _HEADER_SAFE.fullmatch(value):
            raise ValueError(f"tenant name {self.name!r} cannot be sent in a header")
        return value

    @property
    def metrics(self) -> metrics.TenantMetrics:
        """The tenant's counters, made at the first use (an idle tenant has none)."""
        counters = self.counters
        if counters is None:
            counters = self.counters = metrics.TenantMetrics()
        return counters

    @property
    def state(self) -> str:
        states = {li.state for li in self.listeners}
        if self.closing:
            return "draining"
        if not states or states == {"bound"}:
            return "serving"
        if "bound" in states:
            return "partial"
        return "waiting"


class Daemon:
    """Serves one configuration file; ``reload`` re-reads it and applies the difference."""

    def __init__(self, config_path: str, cfg: config.Config):
        self.config_path = config_path
        self.config = cfg
        self.loop = asyncio.get_running_loop()
        self.shared = Shared(self.loop, cfg)
        self.registry = netns.Registry()
        self.tenants: dict[str, TenantRuntime] = {}
        self.generation = 1
        self.metrics_server = None
        self.admin_server = None
        # Compiled route tables, one per distinct routes tuple of the config (tenants with
        # identical routes share the tuple, see config._share_tenant): id -> (routes, Router).
        self.routers: dict[int, tuple[tuple, Router]] = {}
        self.reload_lock = asyncio.Lock()
        self.stopped = asyncio.Event()
        self.sweeper = None
        self.free_after_trim = 0  # heap bytes free right after the last malloc_trim
        self.accepted_at_tidy = 0  # acceptor.accepted when the heap was last tidied
        self.tidied_at = 0.0
        self.draining_tenants: list[tuple[TenantRuntime, float]] = []
        self.last_reload_error: str | None = None
        self.tls = self.tcp = None
        # https server contexts shared by every listener with the same tls settings and the
        # same certificate files: (settings key, files state) -> SSLContext. A context costs
        # about 78 kB and milliseconds to load; 1000 tenants usually share one certificate set.
        self.ssl_contexts: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    # -- start / stop -------------------------------------------------------------------
    async def start(self) -> None:
        raise_nofile_limit()
        self.shared.admission.configure(self.config.limits, self.config.listener_count())
        self._open_access_log(self.config.access_log)
        started = time.monotonic()
        for spec in self.config.tenants:
            tenant = self._tenant_runtime(spec)
            self.tenants[spec.name] = tenant
            await self._bind_tenant(tenant)
        await self._start_metrics(self.config.metrics_listen)
        from nsproxy import admin

        self.admin_server = await admin.start(self, self.config.admin_socket)
        self.sweeper = self.loop.call_later(1.0, self._sweep)
        bound = sum(1 for t in self.tenants.values() for li in t.listeners if li.state == "bound")
        log.info(
            "serving %d tenants, %d/%d listeners bound in %.3f s (generation %d)",
            len(self.tenants),
            bound,
            self.config.listener_count(),
            time.monotonic() - started,
            self.generation,
        )
        for sig, handler in (
            (signal.SIGHUP, self._sighup),
            (signal.SIGTERM, self._sigterm),
            (signal.SIGINT, self._sigterm),
        ):
            self.loop.add_signal_handler(sig, handler)
        settle_heap()
        self.shared.acceptor.start()
        systemd.ready(f"{len(self.tenants)} tenants")

    def _sighup(self) -> None:
        self.loop.create_task(self.reload())

    def _sigterm(self) -> None:
        if not self.shared.draining:
            self.loop.create_task(self.shutdown())

    async def shutdown(self) -> None:
        """Stop accepting everywhere, let open requests finish (up to timeouts.drain), exit."""
        systemd.stopping()
        self.shared.draining = True
        log.info("stopping: draining %d connections", len(self.shared.connections))
        for tenant in self.tenants.values():
            for li in tenant.listeners:
                li.close()
        for conn in list(self.shared.connections):
            conn.drain()
        deadline = time.monotonic() + self.config.timeouts["drain"]
        while self._open_connections() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for conn in list(self.shared.connections):
            conn.abort()
        for tenant in self.tenants.values():
            self._abort_tcp(tenant)
            for up in tenant.upstreams.values():
                up.close()
        if self.admin_server is not None:
            self.admin_server.close()
            with contextlib.suppress(OSError):
                os.unlink(self.config.admin_socket)
        if self.shared.access_log is not None:
            self.shared.access_log.close()
        self.stopped.set()

    def _open_connections(self) -> int:
        n = len(self.shared.connections)
        for tenant in self.tenants.values():
            for li in tenant.listeners:
                if li.factory is not None:
                    n += len(li.factory.connections)
        return n

    # -- binding ------------------------------------------------------------------------
    async def _bind_tenant(self, tenant: TenantRuntime) -> None:
        """Bind every listener of the tenant that is not bound yet; schedule a retry if needed."""
        if tenant.closing:
            return
        tenant.retry_handle = None
        spec = tenant.spec
        path = netns.ns_path(spec.netns)
        identity = netns.current_identity(path)
        if tenant.ns is not None and tenant.ns.identity != identity:
            self._unbind(tenant, "network namespace was replaced" if identity else "gone")
        if identity is None:
            self._waiting(tenant, f"network namespace {path} does not exist")
            return
        if tenant.ns is None:
            try:
                tenant.ns = self.registry.acquire(spec.netns)
            except netns.NetnsError as exc:
                self._waiting(tenant, str(exc))
                return
        missing = False
        for listener in spec.listeners:
            li = self._listener_runtime(tenant, listener)
            if li.state == "bound":
                continue
            try:
                await self._bind_listener(tenant, li)
            except OSError as exc:
                missing = True
                li.state = "waiting" if exc.errno in (errno.EADDRNOTAVAIL,) else "error"
                li.error = f"{listener.listen}: {_os_reason(exc)}"
                tenant.last_error = li.error
                log.warning(
                    "tenant %s: listener %s: %s (retrying)",
                    tenant.name,
                    listener.listen,
                    _os_reason(exc),
                )
            except netns.NetnsError as exc:
                missing = True
                li.state = "error"
                li.error = tenant.last_error = str(exc)
                log.warning("tenant %s: %s (retrying)", tenant.name, exc)
            except Exception as exc:
                missing = True
                li.state = "error"
                li.error = tenant.last_error = f"{listener.listen}: {exc}"
                log.exception("tenant %s: listener %s failed", tenant.name, listener.listen)
        if missing:
            self._schedule_retry(tenant)
        else:
            tenant.retry_delay = 0.0

    async def _bind_listener(self, tenant: TenantRuntime, li: ListenerRuntime) -> None:
        spec = li.spec
        protocol = spec.protocol
        ssl_ctx = None
        if protocol == "https":
            li.ssl_ctx, li.cert_state = self._server_context(spec)
            ssl_ctx = li.ssl_ctx
        sock = self.registry.listening_socket(tenant.ns, spec.host, spec.port)
        try:
            if protocol == "tcp":
                from nsproxy import tcp

                factory = tcp.RelayFactory(
                    spec.spec,
                    tenant.name,
                    tenant.upstreams,
                    self._log_tcp,
                    timeouts=self.config.timeouts,
                    runtime=tenant,
                )
                li.factory = factory
            else:
                factory = li
            # A client that never finishes its TLS handshake is held no longer than one that
            # never sends its request head (asyncio's own default would be 60 s). HTTP and TLS
            # clients speak first; a tcp relay may carry a protocol whose server does.
            self.shared.acceptor.add(
                sock,
                factory,
                ssl_ctx,
                self.config.timeouts["header_read"],
                client_first=protocol != "tcp",
                tenant=tenant,
            )
            li.server = sock
        except BaseException:
            sock.close()
            raise
        li.state = "bound"
        li.error = None

    def _server_context(self, listener: config.Listener):
        """(SSLContext, certificate files state) for an https listener, shared with every other
        listener that has the same tls settings and the same files. Key and state are the ones
        the config load found (files stat-ed once per pass, one tuple for every tenant naming
        the same files); a change after it is picked up by the next reload."""
        key = (listener.tls_key, listener.cert_state)
        ctx = self.ssl_contexts.get(key)
        if ctx is None:
            from nsproxy import tls

            ctx = tls.build_server_context(listener.spec)
            self.ssl_contexts[key] = ctx
        return ctx, listener.cert_state

    def _log_tcp(self, record: dict) -> None:
        access = self.shared.access_log
        if access is not None:
            access.event(**record)

    def _waiting(self, tenant: TenantRuntime, reason: str) -> None:
        if tenant.last_error != reason:
            log.warning("tenant %s: %s (retrying)", tenant.name, reason)
        tenant.last_error = reason
        for listener in tenant.spec.listeners:
            li = self._listener_runtime(tenant, listener)
            li.state = "waiting"
            li.error = reason
        self._schedule_retry(tenant)

    def _schedule_retry(self, tenant: TenantRuntime) -> None:
        if tenant.retry_handle is not None or tenant.closing:
            return
        delay = tenant.retry_delay = min(RETRY_MAX, max(RETRY_FIRST, tenant.retry_delay * 2))
        tenant.retry_handle = self.loop.call_later(
            delay, lambda: self.loop.create_task(self._bind_tenant(tenant))
        )

    def _unbind(self, tenant: TenantRuntime, reason: str) -> None:
        """Close a tenant's listeners and give its namespace back (it vanished or changed)."""
        log.warning("tenant %s: %s: rebuilding its listeners", tenant.name, reason)
        for li in tenant.listeners:
            li.close()
        if tenant.ns is not None:
            self.registry.release(tenant.ns)
            tenant.ns = None
        tenant.retry_delay = 0.0

    def _listener_runtime(self, tenant: TenantRuntime, listener: config.Listener):
        for li in tenant.listeners:
            if li.spec.digest == listener.digest:
                return li
        li = ListenerRuntime(listener, tenant, self.shared)
        tenant.listeners = (*tenant.listeners, li)
        return li

    # -- tenants ------------------------------------------------------------------------
    def _tenant_runtime(self, spec: config.Tenant) -> TenantRuntime:
        upstreams = Upstreams(spec.name, self.registry, self.shared)
        return TenantRuntime(spec, self._router(spec.routes), upstreams, self.shared.admission)

    # -- reload -------------------------------------------------------------------------
    async def reload(self) -> tuple[bool, str]:
        """Re-read the config file and apply the difference; (ok, message)."""
        async with self.reload_lock:
            systemd.reloading()
            started = time.monotonic()
            # Parsing a big config allocates tens of thousands of objects: without the pause,
            # the collector would walk every object of every tenant several times meanwhile.
            with collector_paused():
                kept = {t.name: t.spec for t in self.tenants.values()}
                try:
                    new = config.load(self.config_path, kept)
                except config.ConfigError as exc:
                    message = "new configuration refused, the running one stays: " + "; ".join(
                        exc.problems
                    )
                    log.error("%s", message)
                    self.last_reload_error = message
                    systemd.ready()
                    return False, message
                added, removed, changed = await self._apply(new)
            self.generation += 1
            self.last_reload_error = None
            log.info(
                "reloaded in %.3f s (read, check, apply): generation %d, "
                "%d added, %d removed, %d changed, %d kept",
                time.monotonic() - started,
                self.generation,
                added,
                removed,
                changed,
                len(self.tenants) - added - changed,
            )
            settle_heap()
            systemd.ready(f"{len(self.tenants)} tenants")
            return True, f"generation {self.generation}"

    async def _apply(self, new: config.Config) -> tuple[int, int, int]:
        old_cfg = self.config
        self.config = new
        shared = self.shared
        shared.limits = new.limits
        shared.timeouts = new.timeouts
        shared.admission.configure(new.limits, new.listener_count())
        if new.access_log != old_cfg.access_log:
            if shared.access_log is not None:
                shared.access_log.close()
                shared.access_log = None
            self._open_access_log(new.access_log)
        if new.metrics_listen != old_cfg.metrics_listen:
            if self.metrics_server is not None:
                self.metrics_server.close()
                self.metrics_server = None
            await self._start_metrics(new.metrics_listen)
        wanted = {t.name: t for t in new.tenants}
        added = removed = changed = 0
        for name in [n for n in self.tenants if n not in wanted]:
            self._remove_tenant(self.tenants.pop(name))
            removed += 1
        for index, spec in enumerate(new.tenants):
            tenant = self.tenants.get(spec.name)
            if tenant is not None and tenant.spec.digest == spec.digest:
                new.tenants[index] = tenant.spec  # keep one copy of an unchanged tenant
            elif tenant is None:
                tenant = self._tenant_runtime(spec)
                self.tenants[spec.name] = tenant
                await self._bind_tenant(tenant)
                added += 1
            elif tenant.spec.digest != spec.digest:
                await self._update_tenant(tenant, spec)
                changed += 1
        self._reload_certificates()
        live = {id(t.spec.routes) for t in self.tenants.values()}
        live.update(id(t.spec.routes) for t, _ in self.draining_tenants)
        self.routers = {k: v for k, v in self.routers.items() if k in live}
        return added, removed, changed

    def _router(self, routes: tuple) -> Router:
        """The compiled route table for this routes tuple, shared by every tenant that has the
        very same tuple (the entry holds the tuple, so its id cannot be reused meanwhile)."""
        entry = self.routers.get(id(routes))
        if entry is None:
            entry = self.routers[id(routes)] = (routes, Router(routes))
        return entry[1]

    def _reload_certificates(self) -> None:
        """Kept https listeners whose certificate or key files changed load them again.

        A context shared by several listeners (same settings, same files) is loaded once and
        the new certificates apply to all of them."""
        tls = None
        updated: dict[int, Exception | None] = {}  # id(context) -> None (done) or the error
        memo: dict = {}  # path -> file state: each certificate file is stat-ed once per pass
        for tenant in self.tenants.values():
            for li in tenant.listeners:
                if li.ssl_ctx is None or li.state != "bound":
                    continue
                if tls is None:
                    from nsproxy import tls
                state = tls.certificate_files_state(li.spec.spec, memo)
                if state == li.cert_state:
                    continue
                ctx = li.ssl_ctx
                if id(ctx) not in updated:
                    try:
                        tls.update_server_context(ctx, li.spec.spec)
                    except Exception as exc:  # the old certificates stay in use
                        updated[id(ctx)] = exc
                    else:
                        updated[id(ctx)] = None
                        old_key = (li.spec.tls_key, li.cert_state)
                        if self.ssl_contexts.get(old_key) is ctx:
                            del self.ssl_contexts[old_key]
                        self.ssl_contexts[(old_key[0], state)] = ctx
                error = updated[id(ctx)]
                if error is not None:
                    li.error = tenant.last_error = f"{li.spec.listen}: certificates: {error}"
                    log.error(
                        "tenant %s: %s; the previous certificates stay", tenant.name, li.error
                    )
                    continue
                li.cert_state = state
                log.info("tenant %s: %s: certificates reloaded", tenant.name, li.spec.listen)

    async def _update_tenant(self, tenant: TenantRuntime, spec: config.Tenant) -> None:
        old = tenant.spec
        tenant.spec = spec
        if old.netns != spec.netns:
            self._unbind(tenant, f"netns changed from {old.netns!r} to {spec.netns!r}")
            self._drain_listeners(tenant, tenant.listeners)
            tenant.listeners = ()
        else:
            keep = {li.digest for li in spec.listeners}
            gone = [li for li in tenant.listeners if li.spec.digest not in keep]
            tenant.listeners = tuple(li for li in tenant.listeners if li.spec.digest in keep)
            self._drain_listeners(tenant, gone)
        tenant.router = self._router(spec.routes)
        tenant.upstreams.use_specs(spec.upstreams)
        if tenant.retry_handle is not None:
            tenant.retry_handle.cancel()
            tenant.retry_handle = None
        tenant.retry_delay = 0.0
        await self._bind_tenant(tenant)

    def _drain_listeners(self, tenant: TenantRuntime, gone: list[ListenerRuntime]) -> None:
        for li in gone:
            li.close()
            if li.factory is not None:
                factory = li.factory
                self.loop.call_later(self.config.timeouts["drain"], factory.abort_all)

    def _remove_tenant(self, tenant: TenantRuntime) -> None:
        """Stop accepting for a removed tenant and drain its connections up to timeouts.drain."""
        tenant.closing = True
        if tenant.retry_handle is not None:
            tenant.retry_handle.cancel()
            tenant.retry_handle = None
        for li in tenant.listeners:
            li.close()
        for conn in list(self.shared.connections):
            if conn.tenant is tenant:
                conn.drain()
        if tenant.ns is not None:
            self.registry.release(tenant.ns)
            tenant.ns = None
        self.draining_tenants.append((tenant, time.monotonic() + self.config.timeouts["drain"]))
        log.info("tenant %s removed: draining %d connections", tenant.name, tenant.active)

    def _abort_tcp(self, tenant: TenantRuntime) -> None:
        for li in tenant.listeners:
            if li.factory is not None:
                li.factory.abort_all()

    # -- the one-second sweep -----------------------------------------------------------
    def _sweep(self) -> None:
        self.sweeper = self.loop.call_later(1.0, self._sweep)
        try:
            self._sweep_once()
        except Exception:
            log.exception("internal error in the periodic sweep")

    def _sweep_once(self) -> None:
        shared = self.shared
        now = shared.now = self.loop.time()
        timeouts = shared.timeouts
        for conn in list(shared.connections):
            try:
                conn.check_timeout(now, timeouts)
            except Exception:  # one broken connection must not stop the sweep
                log.exception(
                    "tenant %s: closing a connection after an internal error", conn.tenant.name
                )
                conn.abort()
        idle = timeouts["idle"]
        for tenant in self.tenants.values():
            for up in tenant.upstreams.values():
                up.expire_idle(now, idle)
            if tenant.ns is not None and not tenant.closing:
                identity = netns.current_identity(tenant.ns.path)
                if identity != tenant.ns.identity:
                    self._unbind(
                        tenant,
                        "network namespace was replaced"
                        if identity
                        else f"network namespace {tenant.ns.path} disappeared",
                    )
                    if tenant.retry_handle is not None:
                        tenant.retry_handle.cancel()
                        tenant.retry_handle = None
                    self.loop.create_task(self._bind_tenant(tenant))
            elif (
                tenant.retry_handle is not None
                and not tenant.closing
                and tenant.ns is None
                and netns.current_identity(netns.ns_path(tenant.spec.netns)) is not None
            ):
                # Waiting for the namespace: bind as soon as it appears, not at the next backoff.
                tenant.retry_handle.cancel()
                tenant.retry_handle = None
                self.loop.create_task(self._bind_tenant(tenant))
        if self.draining_tenants:
            mono = time.monotonic()
            still = []
            for tenant, deadline in self.draining_tenants:
                if tenant.active and mono < deadline:
                    still.append((tenant, deadline))
                    continue
                for conn in list(shared.connections):
                    if conn.tenant is tenant:
                        conn.abort()
                self._abort_tcp(tenant)
                for up in tenant.upstreams.values():
                    up.close()
            self.draining_tenants = still
        if shared.access_log is not None:
            shared.access_log.flush()
        # Give memory back after a burst of connections (or of TLS handshakes that never
        # completed, e.g. a health prober touching every tenant's listener at once), not at
        # the next reload. Once the burst has ended: a collection empties the interpreter's
        # free lists (the tenants' objects are frozen, so it only walks the rest) and a trim
        # returns glibc's free pages; at most once per TIDY_INTERVAL. Otherwise trim when much
        # more heap is free than after the last trim (trimmed pages still count as free).
        accepted = shared.acceptor.accepted
        burst = accepted - self.accepted_at_tidy
        if (
            burst >= TIDY_AFTER_CONNECTIONS
            and len(shared.connections) * 4 < burst
            and now - self.tidied_at >= TIDY_INTERVAL
        ):
            self.accepted_at_tidy = accepted
            self.tidied_at = now
            gc.collect()
            release_free_memory()
            self.free_after_trim = heap_free_bytes() or 0
            return
        free = heap_free_bytes()
        if free is not None:
            if free > self.free_after_trim + TRIM_WHEN_FREE:
                release_free_memory()
                self.free_after_trim = heap_free_bytes() or 0
            elif free < self.free_after_trim:
                self.free_after_trim = free

    # -- misc ---------------------------------------------------------------------------
    def _open_access_log(self, target: str | None) -> None:
        if target is None:
            return
        try:
            self.shared.access_log = accesslog.AccessLog(target)
        except OSError as exc:
            log.error("access_log %s: %s; requests are not logged", target, exc.strerror)

    async def _start_metrics(self, address) -> None:
        if address is None:
            return
        try:
            sock = self.registry.listening_socket(None, *address)
            self.metrics_server = await self.loop.create_server(
                lambda: metrics.MetricsProtocol(self), sock=sock
            )
        except OSError as exc:
            log.error("metrics.listen %s:%d: %s", address[0], address[1], _os_reason(exc))

    def status(self) -> dict:
        """The status document of the contract (``nsproxy status --json``)."""
        tenants = []
        for tenant in self.tenants.values():
            tenants.append(
                {
                    "name": tenant.name,
                    "netns": tenant.spec.netns,
                    "netns_inode": tenant.ns.inode if tenant.ns is not None else None,
                    "state": tenant.state,
                    "listeners": [
                        {
                            "listen": li.spec.listen,
                            "protocol": li.spec.protocol,
                            "state": li.state,
                            "error": li.error,
                        }
                        for li in tenant.listeners
                    ],
                    "upstreams": [
                        {"name": name, "servers": tenant.upstreams.health(name)}
                        for name in tenant.spec.upstreams
                    ],
                    "last_error": tenant.last_error,
                }
            )
        return {
            "instance": self.config.instance,
            "pid": os.getpid(),
            "generation": self.generation,
            "config_digest": self.config.digest,
            "last_reload_error": self.last_reload_error,
            "tenants": tenants,
        }


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available in the tenant's namespace (not configured yet?)"
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if exc.errno == errno.EACCES:
        return "permission denied (binding a port below 1024 needs CAP_NET_BIND_SERVICE)"
    return exc.strerror or str(exc)


@contextlib.contextmanager
def collector_paused():
    """No automatic garbage collection inside the block (enabled again however it ends)."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def settle_heap() -> None:
    """After a start or a reload: collect what the config left behind, then move every
    surviving object out of the collector's sight (``gc.freeze``). The tenants' objects live
    until the next reload, and a collection in the request path would otherwise walk all of
    them, a cost that grows with the number of tenants."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    release_free_memory()


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


TRIM_WHEN_FREE = 2 * 1024 * 1024  # bytes free inside the heap that make the sweep trim it
TIDY_AFTER_CONNECTIONS = 64  # connections accepted since the last tidy that make a burst
TIDY_INTERVAL = 10.0  # seconds between two tidies at least


@functools.cache
def _libc():
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.malloc_trim  # noqa: B018 (glibc only: AttributeError elsewhere)
        return libc
    return None


def heap_free_bytes() -> int | None:
    """Bytes free inside the malloc heap (glibc mallinfo2), or None where unavailable."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    return libc.mallinfo2().fordblks


def release_free_memory() -> None:
    """Give the heap freed by parsing a config back to the kernel (glibc); no-op elsewhere."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the new (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, hard


async def serve(config_path: str, cfg: config.Config) -> int:
    daemon = Daemon(config_path, cfg)
    await daemon.start()
    await daemon.stopped.wait()
    return 0
