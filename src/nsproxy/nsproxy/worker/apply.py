"""A worker's served state, and how a config generation and the binder's sockets apply to it.

The binder decides what is bound: it sends ``serve`` (a listening socket for a tenant's
listener, by its digest) and ``unserve`` (socket ids). The worker attaches such a socket to its
acceptor, with the listener's protocol factory and TLS context. A new generation applies only
the difference: added tenants get runtimes (their sockets follow), removed ones stop accepting
and drain, changed ones keep the listeners whose JSON is the same, and tenants whose JSON did
not change keep everything: listeners, pools, connections. A kept https tenant whose
certificate files changed loads the new bytes into its running context (no rebinding).
"""

from __future__ import annotations

import functools
import logging
import socket
import time
import weakref

from nsproxy import accesslog, config, descriptors, metrics
from nsproxy.http import Router
from nsproxy.upstream import Upstreams
from nsproxy.worker.runtime import ListenerRuntime, Shared, TenantRuntime

log = logging.getLogger("nsproxy")


class Served:
    """Everything a worker serves: tenants by name, the listening sockets the binder gave it
    (by socket id), compiled routers, TLS contexts, and the certificate bytes they come from."""

    def __init__(
        self, loop, cfg: config.Config, files: dict, sockets, counts=None, slots=None, health=None
    ):
        self.loop = loop
        self.config = cfg
        self.generation = 0
        self.shared = Shared(loop, cfg, sockets, counts, health)
        self.slots: dict[str, int] = dict(slots or {})  # tenant name -> shared count slot
        self.tenants: dict[str, TenantRuntime] = {}
        self.by_sid: dict[int, ListenerRuntime] = {}
        # Sockets that arrived before the generation that names their listener: sid ->
        # (tenant name, listener digest, socket).
        self.pending: dict[int, tuple[str, bytes, socket.socket]] = {}
        self.files = files  # certificate/key path -> bytes (cert_store.CertificateView)
        # Compiled route tables, one per distinct routes tuple of the config (tenants with
        # identical routes share the tuple, see config._share_tenant): id -> (routes, Router).
        self.routers: dict[int, tuple[tuple, Router]] = {}
        # https server contexts shared by every listener with the same tls settings and the
        # same certificate files: (settings key, files state) -> tls.ServerContext, whose
        # SSLContext is made at the first handshake (1.5 to 2 ms of CPU and 10 to 20 kB each).
        self.ssl_contexts: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self.next_tls_sweep = 0.0  # loop time of the next idle-context pass (sweep.drop_tls)
        self.draining_tenants: list[tuple[TenantRuntime, float]] = []

    # -- sockets from the binder ---------------------------------------------------------------
    def serve(self, sid: int, tenant_name: str, digest: bytes, sock: socket.socket) -> None:
        """Accept on ``sock`` for the tenant's listener ``digest`` (kept pending until the
        generation that names it has been applied)."""
        tenant = self.tenants.get(tenant_name)
        li = tenant.listener(digest) if tenant is not None and not tenant.closing else None
        if li is None:
            old = self.pending.pop(sid, None)
            if old is not None:
                old[2].close()
            self.pending[sid] = (tenant_name, digest, sock)
            return
        self._attach(tenant, li, sid, sock)

    def unserve(self, sid: int) -> None:
        """Stop accepting on socket ``sid`` and close this worker's copy."""
        entry = self.pending.pop(sid, None)
        if entry is not None:
            entry[2].close()
        li = self.by_sid.pop(sid, None)
        if li is not None:
            li.close()

    def _attach(self, tenant: TenantRuntime, li: ListenerRuntime, sid: int, sock) -> None:
        if li.server is not None:
            self.by_sid.pop(li.sid, None)
            li.close()
        spec = li.spec
        protocol = spec.protocol
        ssl_ctx = None
        try:
            if protocol == "https":
                li.ssl_ctx, li.cert_state = self._server_context(spec)
                ssl_ctx = li.ssl_ctx
            if protocol == "tcp":
                if li.factory is None:
                    from nsproxy import tcp

                    li.factory = tcp.RelayFactory(
                        spec.spec,
                        tenant.name,
                        tenant.upstreams,
                        functools.partial(self._tcp_finished, tenant),
                        timeouts=self.config.timeouts,
                        runtime=tenant,
                    )
                factory = li.factory
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
        except Exception:
            sock.close()
            log.exception("tenant %s: listener %s cannot be served", tenant.name, spec.listen)
            return
        li.server = sock
        li.sid = sid
        self.by_sid[sid] = li

    def _server_context(self, listener: config.Listener):
        """(tls.ServerContext, certificate files state) for an https listener, shared with
        every other listener that has the same tls settings and the same files. The SSLContext
        itself is made at the first handshake (tls.ServerContext)."""
        key = (listener.tls_key, listener.cert_state)
        ctx = self.ssl_contexts.get(key)
        if ctx is None:
            from nsproxy import tls

            ctx = tls.ServerContext(listener.spec, self.files)
            self.ssl_contexts[key] = ctx
        return ctx, listener.cert_state

    def _tcp_finished(self, tenant: TenantRuntime, record: dict) -> None:
        """A tcp relay of ``tenant`` ended: count it (open ones are added at scrape time,
        worker/status.py) and log it."""
        counters = tenant.metrics
        counters.connections[metrics.TCP] += 1
        counters.received[metrics.TCP] += record["bytes_in"]
        counters.sent[metrics.TCP] += record["bytes_out"]
        access = self.shared.access_log
        if access is not None:
            access.event(**record)

    # -- a generation --------------------------------------------------------------------------
    def apply(self, new: config.Config, generation: int) -> tuple[int, int, int]:
        """Apply a validated config (kept tenants are the very objects of the running one);
        (added, removed, changed)."""
        self.config = new
        self.generation = generation
        shared = self.shared
        shared.limits = new.limits
        shared.timeouts = new.timeouts
        shared.admission.configure(new.limits, descriptors.fixed(new))
        wanted = {t.name: t for t in new.tenants}
        added = removed = changed = 0
        for name in [n for n in self.tenants if n not in wanted]:
            self._remove_tenant(self.tenants.pop(name))
            removed += 1
        for spec in new.tenants:
            tenant = self.tenants.get(spec.name)
            if tenant is None:
                self.tenants[spec.name] = self._tenant_runtime(spec)
                added += 1
            elif tenant.spec is spec:
                continue
            elif tenant.spec.digest == spec.digest:
                self._new_certificates(tenant, spec)
            else:
                self._update_tenant(tenant, spec)
                changed += 1
        for sid, (name, digest, sock) in list(self.pending.items()):
            del self.pending[sid]
            self.serve(sid, name, digest, sock)
            if sid in self.pending:  # no such listener in this generation: a stale socket
                self.pending.pop(sid)[2].close()
        live = {id(t.spec.routes) for t in self.tenants.values()}
        live.update(id(t.spec.routes) for t, _ in self.draining_tenants)
        self.routers = {k: v for k, v in self.routers.items() if k in live}
        return added, removed, changed

    def set_access_log(self, fd: int | None, target: str | None) -> None:
        """Write the access log to ``fd`` (opened by the binder; None: no access log)."""
        if self.shared.access_log is not None:
            self.shared.access_log.close()
            self.shared.access_log = None
        if fd is not None:
            self.shared.access_log = accesslog.AccessLog.from_fd(fd, target)

    def _tenant_runtime(self, spec: config.Tenant) -> TenantRuntime:
        upstreams = Upstreams(spec.name, self.shared)
        slot = self.slots.get(spec.name, -1)
        shared = self.shared
        router = self._router(spec.routes)
        tenant = TenantRuntime(spec, router, upstreams, shared.admission, shared.counts, slot)
        tenant.listeners = tuple(ListenerRuntime(li, tenant, self.shared) for li in spec.listeners)
        return tenant

    def _router(self, routes: tuple) -> Router:
        """The compiled route table for this routes tuple, shared by every tenant that has the
        very same tuple (the entry holds the tuple, so its id cannot be reused meanwhile)."""
        entry = self.routers.get(id(routes))
        if entry is None:
            entry = self.routers[id(routes)] = (routes, Router(routes))
        return entry[1]

    def _new_certificates(self, tenant: TenantRuntime, spec: config.Tenant) -> None:
        """Same JSON, other certificate files (validated by the binder): the listeners' shared
        contexts are made again from the new bytes at their next handshake; open connections
        keep theirs."""
        tenant.spec = spec
        by_digest = {li.digest: li for li in spec.listeners}
        for li in tenant.listeners:
            li.spec = by_digest.get(li.spec.digest, li.spec)
            self._rotate(tenant, li)

    def _rotate(self, tenant: TenantRuntime, li: ListenerRuntime) -> None:
        """A kept listener whose certificate files changed (its spec's ``cert_state``) serves
        them from its next handshake on, through the context shared by the listeners with
        the same settings and files."""
        if li.ssl_ctx is None or li.spec.cert_state == li.cert_state:
            return
        key = (li.spec.tls_key, li.spec.cert_state)
        ctx = self.ssl_contexts.get(key)
        if ctx is None:  # the first listener of this set: its context serves the new files
            ctx = li.ssl_ctx
            ctx.rotate(li.spec.spec)
            old_key = (li.spec.tls_key, li.cert_state)
            if self.ssl_contexts.get(old_key) is ctx:
                del self.ssl_contexts[old_key]
            self.ssl_contexts[key] = ctx
        elif ctx is not li.ssl_ctx and li.server is not None:
            self.shared.acceptor.use_ssl_context(li.server, ctx)
        li.ssl_ctx = ctx
        li.cert_state = li.spec.cert_state
        log.debug("tenant %s: %s: certificates loaded", tenant.name, li.spec.listen)

    def drop_idle_contexts(self) -> int:
        """Forget the SSLContexts no handshake used since the last call (they are made again
        at the next one); the number dropped. Open connections keep theirs."""
        dropped = 0
        for ctx in list(self.ssl_contexts.values()):
            if ctx.used:
                ctx.used = False
            elif ctx.drop():
                dropped += 1
        return dropped

    def _update_tenant(self, tenant: TenantRuntime, spec: config.Tenant) -> None:
        tenant.spec = spec
        keep = {li.digest: li for li in spec.listeners}
        kept, gone = [], []
        for li in tenant.listeners:
            (kept if li.spec.digest in keep else gone).append(li)
        for li in kept:  # same JSON: their certificate files may still have changed
            li.spec = keep[li.spec.digest]
            self._rotate(tenant, li)
        have = {li.spec.digest for li in kept}
        kept += [ListenerRuntime(li, tenant, self.shared) for li in spec.listeners
                 if li.digest not in have]  # fmt: skip
        tenant.listeners = tuple(kept)
        self._drain_listeners(gone)
        tenant.router = self._router(spec.routes)
        tenant.upstreams.use_specs(spec.upstreams)

    def _drain_listeners(self, gone: list[ListenerRuntime]) -> None:
        for li in gone:
            if li.sid is not None:
                self.by_sid.pop(li.sid, None)
            li.close()
            if li.factory is not None:
                self.loop.call_later(self.config.timeouts["drain"], li.factory.abort_all)

    def _remove_tenant(self, tenant: TenantRuntime) -> None:
        """Stop accepting for a removed tenant and drain its connections up to timeouts.drain."""
        tenant.closing = True
        for name in tenant.upstreams.specs:  # a tenant added again later asks afresh
            self.shared.sockets.forget(tenant.name, name)
        for li in tenant.listeners:
            if li.sid is not None:
                self.by_sid.pop(li.sid, None)
            li.close()
        for conn in list(self.shared.connections):
            if conn.tenant is tenant:
                conn.drain()
        self.draining_tenants.append((tenant, time.monotonic() + self.config.timeouts["drain"]))
        log.info("tenant %s removed: draining %d connections", tenant.name, tenant.local)

    # -- stopping ------------------------------------------------------------------------------
    def stop_accepting(self) -> None:
        """Close this worker's copies of every listening socket (the binder keeps its own)."""
        for tenant in self.tenants.values():
            for li in tenant.listeners:
                li.close()
        self.by_sid.clear()
        for _, _, sock in self.pending.values():
            sock.close()
        self.pending.clear()

    def open_connections(self) -> int:
        """Client connections still open: http/https ones, tcp relays, and accepted ones whose
        protocol has not started yet (a TLS handshake in progress)."""
        n = len(self.shared.connections) + self.shared.acceptor.handing_over
        for tenant in self.tenants.values():
            for li in tenant.listeners:
                if li.factory is not None:
                    n += len(li.factory.connections)
        for tenant, _ in self.draining_tenants:
            for li in tenant.listeners:
                if li.factory is not None:
                    n += len(li.factory.connections)
        return n

    def abort_all(self) -> None:
        """Close every connection at once (the drain deadline passed)."""
        for conn in list(self.shared.connections):
            conn.abort()
        for tenant in [*self.tenants.values(), *(t for t, _ in self.draining_tenants)]:
            for li in tenant.listeners:
                if li.factory is not None:
                    li.factory.abort_all()
            for up in tenant.upstreams.values():
                up.close()
