"""Upstreams: servers of one tenant, round-robin, passive and active health, keep-alive pool.

An ``Upstream`` belongs to exactly one tenant (pools are per (tenant, upstream)), so a
connection opened for one tenant is never handed to another. A worker makes sockets for
upstreams in the host namespace itself; sockets for an upstream inside a network namespace
come from the binder (``shared.sockets``, worker/stock.py), which created them there, and are
connected from the event loop. Pools are keyed by the identity of that namespace: when it is
replaced, the pooled connections into the old one are closed and never handed out again
(connections in flight finish, and are then closed instead of pooled).

A server is skipped while passive health has it marked down (a failed connect, for
FAIL_TIMEOUT) or, for an upstream with a ``health_check``, while the checks have it marked down
(health_check.py publishes that in the shared table ``shared.health``, read at each pick). A
recovery seen in the table also ends the passive mark: the checks just proved the server up.
"""

from __future__ import annotations

import asyncio
import itertools
import operator
import os
import socket
import time

from nsproxy.health_table import key_of

FAIL_TIMEOUT = 10.0  # seconds a failed server is skipped
MAX_IDLE = 64  # idle keep-alive connections kept per upstream
SAFE_REUSE_IDLE = 2.0  # seconds: longest idle time of a pooled connection reused for a safe request


def _quiet(sock) -> bool:
    """Whether a pooled connection's socket has neither unread bytes nor a close pending."""
    if sock is None:
        return True
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        return False
    return False  # bytes (unsolicited) or b"" (closed)


class UpstreamError(Exception):
    """No server of the upstream could be reached; the message says why."""

    def __init__(self, message: str, timeout: bool = False):
        super().__init__(message)
        self.timeout = timeout


def _label(host: str, port: int) -> str:
    """'host:port' ('[v6]:port'); one string for every tenant naming the same server."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Server:
    """One server of an upstream, with its own pool of idle keep-alive connections."""

    __slots__ = ("address", "check_key", "check_seen", "check_slot", "down_until", "family",
                 "idle", "label", "last_error")  # fmt: skip

    def __init__(self, address: tuple[str, int], check_key: int = 0):
        host, port = address
        self.address = address  # the config's tuple, shared by every tenant naming this server
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.label = _label(host, port)
        self.down_until = 0.0
        self.last_error: str | None = None
        self.idle: list | None = None
        self.check_key = check_key  # its key in the shared health table (0: not checked)
        self.check_slot = -1  # where the key was last found in the table
        self.check_seen = 0  # the table's state word as last read


class Upstreams(dict):
    """A tenant's upstreams by name. Each Upstream (health and keep-alive pools of its
    servers) is made at its first use, so that idle tenants cost no upstream objects; until
    then ``health`` reports the configured servers as healthy."""

    __slots__ = ("shared", "specs", "tenant")

    def __init__(self, tenant: str, shared):
        super().__init__()
        self.tenant = tenant
        self.shared = shared
        self.specs: dict = {}  # name -> config.UpstreamSpec (the tenant's, often shared)

    def __missing__(self, name: str) -> Upstream:
        spec = self.specs[name]  # KeyError: the tenant has no such upstream
        up = self[name] = Upstream(spec, self.tenant, self.shared)
        return up

    def get(self, name, default=None):
        """The Upstream of this name (made now if needed), or ``default`` if undeclared."""
        try:
            return self[name]
        except KeyError:
            return default

    def use_specs(self, specs: dict) -> None:
        """Switch to a new set of specs: an Upstream whose spec changed or went away is closed
        (its pools with it); unchanged ones keep their pools and health."""
        for name, up in list(self.items()):
            spec = specs.get(name)
            if spec is None or spec.digest != up.digest:
                up.close()
                del self[name]
        for name, old in self.specs.items():  # used here or not (worker 0's checks take too)
            spec = specs.get(name)
            if (spec is None or spec.digest != old.digest) and old.netns is not None:
                self.shared.sockets.forget(self.tenant, name)
        self.specs = specs

    def health(self, name: str) -> list[dict]:
        """Each server of upstream ``name``: address, healthy, last_error (Upstream.health);
        an upstream not used yet shows what its health checks found, if any."""
        up = dict.get(self, name)
        if up is not None:
            return up.health()
        spec = self.specs[name]
        table = self.shared.health if spec.health_check is not None else None
        out = []
        for address in spec.servers:
            label = _label(*address)
            down, error = False, None
            if table is not None:
                down, error = table.lookup(key_of(self.tenant, name, spec.digest, label))
            out.append({"address": label, "healthy": not down, "last_error": error})
        return out


class Upstream:
    """The servers of one upstream of one tenant; ``connect`` is the UpstreamLike contract."""

    __slots__ = ("checked", "digest", "errors", "identity", "name", "netns", "rr", "servers",
                 "shared", "tenant")  # fmt: skip

    def __init__(self, spec, tenant: str, shared):
        self.name = spec.name
        self.digest = spec.digest
        self.netns = spec.netns
        self.tenant = tenant
        self.shared = shared  # for timeouts (connect) that a reload may change, and sockets
        # The shared health table when the upstream has active checks (None: passive only).
        self.checked = getattr(shared, "health", None) if spec.health_check else None
        self.servers = self._servers(spec.servers)
        # (st_dev, st_ino) of the namespace the pooled connections were made in (netns set)
        self.identity: tuple | None = None
        self.rr = 0
        self.errors: dict[str, int] | None = None  # reason -> count (metrics.UPSTREAM_ERRORS)

    # -- UpstreamLike ---------------------------------------------------------------------
    async def connect(self, protocol_factory, first: Server | None = None):
        """Connect to the next healthy server (``first`` if given, then the others);
        (transport, protocol) or UpstreamError."""
        loop = asyncio.get_running_loop()
        timeout = self.shared.timeouts["connect"]
        errors = []
        if first is None:
            order = self._order(advance=True)
        else:  # take() chose ``first`` (and advanced the round robin) for this request
            rest = (s for s in self._order(advance=False) if s is not first)
            order = itertools.chain((first,), rest)
        for server in order:
            try:
                sock = await self._socket(server.family)
            except Exception as exc:
                raise UpstreamError(
                    f"cannot create a socket for upstream {self.name}: {exc}"
                ) from None
            if server not in self.servers:  # the namespace was replaced meanwhile
                server = next(s for s in self.servers if s.address == server.address)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, server.address), timeout)
                transport, protocol = await loop.create_connection(protocol_factory, sock=sock)
            except asyncio.TimeoutError:
                sock.close()
                self.count_error("connect_timeout")
                self._failed(server, f"connect timeout after {timeout}s")
                errors.append(f"{server.label}: connect timeout")
                continue
            except OSError as exc:
                sock.close()
                self.count_error("connect")
                # asyncio's strerror is "Connect call failed (address)": the errno says more.
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                self._failed(server, reason)
                errors.append(f"{server.label}: {reason}")
                continue
            except BaseException:
                sock.close()
                raise
            server.down_until = 0.0
            protocol.server_label = server.label  # tcp.py logs it
            if hasattr(protocol, "server"):
                protocol.server = server
                protocol.sock = sock  # for the liveness peek of take(probe=True)
            return transport, protocol
        only_timeouts = all(e.endswith("connect timeout") for e in errors)
        raise UpstreamError(f"upstream {self.name}: " + "; ".join(errors), timeout=only_timeouts)

    # -- pool -----------------------------------------------------------------------------
    def take(self, safe: bool = False):
        """(server, connection) for the next request: the server round-robin over the healthy
        ones (advanced once per request), and an idle keep-alive connection to it, or None.

        ``safe``: the request must not fail because its server closed a pooled connection
        (it is not idempotent, so it is never sent twice). It only gets a connection that
        was idle for less than ``SAFE_REUSE_IDLE`` seconds and that shows, on a non-blocking
        peek, neither a close nor bytes its server sent while it waited. Servers close idle
        connections after 2 s or more (gunicorn 2 s, Apache, uvicorn and Node.js 5 s, nginx
        75 s), so such a connection is not about to be closed; an older one is left for
        idempotent requests, which may be resent."""
        servers = self.servers
        server = servers[0] if len(servers) == 1 else next(self._order(advance=True))
        idle = server.idle
        while idle:
            conn = idle.pop()
            if conn.usable():
                if not safe:
                    return server, conn
                fresh = self.shared.loop_time() - conn.pooled_at < SAFE_REUSE_IDLE
                if fresh and _quiet(conn.sock):
                    return server, conn
                if _quiet(conn.sock):
                    idle.insert(0, conn)  # good for an idempotent request later
                    break
            conn.close()
        return server, None

    def failed_response(self, conn, reason: str) -> None:
        """A server sent a response the proxy could not forward: remembered for status."""
        self.count_error("invalid_response")
        if conn.server is not None:
            conn.server.last_error = reason

    def count_error(self, reason: str) -> None:
        """One more upstream error of this kind (a reason of metrics.UPSTREAM_ERRORS)."""
        errors = self.errors
        if errors is None:
            errors = self.errors = {}
        errors[reason] = errors.get(reason, 0) + 1

    def put_idle(self, conn) -> None:
        """Keep ``conn`` for a later request (closed instead if its server left the upstream,
        the daemon is draining or the pool is full)."""
        server = conn.server
        if server is None or self.shared.draining or server not in self.servers:
            conn.close()
            return
        idle = server.idle
        if idle is None:
            idle = server.idle = []
        if len(idle) >= MAX_IDLE:
            conn.close()
        else:
            conn.reused = True  # from now on, the server may close it while it waits
            conn.idle_since = conn.last_io
            conn.pooled_at = self.shared.loop_time()
            idle.append(conn)

    def close_idle(self) -> None:
        for server in self.servers:
            if server.idle:
                for conn in server.idle:
                    conn.close()
            server.idle = None

    def close(self) -> None:
        """Close the pools (the upstream was removed)."""
        self.close_idle()

    def namespace_replaced(self) -> None:
        """The namespace the pooled connections were made in was replaced or has gone: close
        them, and give the upstream fresh servers (with their own pools and health), so that a
        connection made in the old one and still in flight is closed, not pooled, when done."""
        self.close_idle()
        self.servers = self._servers([server.address for server in self.servers])
        self.identity = None

    def expire_idle(self, now: float, idle_timeout: float) -> None:
        for server in self.servers:
            if server.idle:
                keep = []
                for conn in server.idle:
                    if now - conn.idle_since > idle_timeout or not conn.usable():
                        conn.close()
                    else:
                        keep.append(conn)
                server.idle = keep

    def health(self) -> list[dict]:
        """Each server: address, healthy, and while it is marked down the error that marked
        it, the checks' first (None once it is healthy again)."""
        now = time.monotonic()
        out = []
        for s in self.servers:
            error = None
            if self._checked_down(s):
                error = self.checked.error(s.check_slot)
            elif s.down_until > now:
                error = s.last_error
            else:
                out.append({"address": s.label, "healthy": True, "last_error": None})
                continue
            out.append({"address": s.label, "healthy": False, "last_error": error})
        return out

    # -- internals ------------------------------------------------------------------------
    def _servers(self, addresses) -> list[Server]:
        if self.checked is None:
            return [Server(address) for address in addresses]
        return [Server(a, key_of(self.tenant, self.name, self.digest, _label(*a)))
                for a in addresses]  # fmt: skip

    def _checked_down(self, server: Server) -> bool:
        """Whether the health checks have ``server`` marked down (a recovery they published
        since the last look also ends its passive mark)."""
        table = self.checked
        if table is None:
            return False
        slot = server.check_slot = table.find(server.check_key, server.check_slot)
        if slot < 0:
            return False  # never marked down by a check
        state = table.state(slot)
        if state != server.check_seen:
            server.check_seen = state
            if not state & 1:
                server.down_until = 0.0
        return bool(state & 1)

    async def _socket(self, family: int) -> socket.socket:
        """A non-blocking, unconnected TCP socket in the upstream's namespace: made here for
        the host namespace, taken from the binder's stock otherwise (pools follow its
        identity)."""
        if self.netns is None:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        sock, identity = await self.shared.sockets.take(self.tenant, self.name, family)
        if identity != self.identity:
            if self.identity is not None:
                self.namespace_replaced()
            self.identity = identity
        return sock

    def _order(self, advance: bool):
        """The servers to try (an iterator): the healthy ones in round-robin order from the
        current position (moved on by one when ``advance``, at once). Lazy: a pick that takes
        the first reads the health of the servers up to the first healthy one, not of all (an
        upstream may have 1024 servers)."""
        start = self.rr % len(self.servers)
        if advance:
            self.rr = start + 1
        return self._healthy_from(start)

    def _healthy_from(self, start: int):
        servers = self.servers
        n = len(servers)
        now = time.monotonic()
        checked = self.checked is not None
        found = False
        for step in range(n):
            server = servers[(start + step) % n]
            # The checks first: a recovery they published also ends the passive mark.
            if (not checked or not self._checked_down(server)) and server.down_until <= now:
                found = True
                yield server
        if not found:
            # Everything is marked down: try the one that failed longest ago rather than nothing.
            yield min((servers[(start + step) % n] for step in range(n)),
                      key=operator.attrgetter("down_until"))  # fmt: skip

    def _failed(self, server: Server, reason: str) -> None:
        server.down_until = time.monotonic() + FAIL_TIMEOUT
        server.last_error = reason
