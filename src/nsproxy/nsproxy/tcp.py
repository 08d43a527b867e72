"""``tcp`` listeners: a byte relay to an upstream, optionally routed by the TLS SNI it peeks.

Listener keys (JSON): ``upstream`` (default target), ``sni_routes`` (``[{"sni": "a.example" |
"*.example", "upstream": NAME}]``: the relay reads the client's ClientHello without
consuming it and picks the upstream by its server name; exact names win over wildcards, a
wildcard stands for one label; no match goes to ``upstream`` or, without one, the
connection is closed) and ``proxy_protocol: "v2"`` (the upstream first gets a PROXY v2
header with the client and listener addresses and a PP2_TYPE_NETNS TLV holding the tenant
name).

The relay is two asyncio Protocols sharing one :class:`_Relay`. Flow control both ways:
when one side's write buffer passes its high-water mark, reading from the other side
pauses until it drains, and a read takes at most what that buffer can still take
(``buffering``). Half-close is relayed (EOF from one side becomes ``write_eof`` on
the other), and the pair closes once both directions are done, or when no byte moved for
the idle timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Callable, Mapping

from .admission import PROGRESS_BYTES, hold, release, reset
from .buffering import HIGH_WATER, room_toward
from .clienthello import MAX_HELLO_BYTES, NEED_MORE, peek_client_hello
from .loop_share import SharedReads
from .proxy_protocol import build_v2

__all__ = ["DEFAULT_TIMEOUTS", "RelayFactory", "validate_listener"]

#: Seconds. ``header_read`` bounds the wait for a complete ClientHello when peeking SNI;
#: ``idle`` closes a relay in which no byte moved either way (also bounding a hung connect).
DEFAULT_TIMEOUTS = {"idle": 60.0, "header_read": 10.0}

_SNI_RE = re.compile(
    r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
_ROUTE_KEYS = {"sni", "upstream"}
# A ClientHello may arrive in several records; beyond this many buffered bytes, stop looking.
_PEEK_LIMIT = MAX_HELLO_BYTES + 1024
# Client bytes buffered while the upstream connection is being made.
_PENDING_LIMIT = 256 * 1024
#: Reasons a side stops reading (bits of ``SharedReads.paused``; loop_share.SHARE is 32).
PEER_FULL = 1  # the other side's write buffer is above HIGH_WATER
COLLECTING = 4  # the client sent _PENDING_LIMIT bytes while the upstream connects


def validate_listener(listener: Mapping, upstream_names: set[str] | frozenset[str]) -> list[str]:
    """Problems with a tcp listener's relay settings, as "field: message" strings."""
    problems = []
    default = listener.get("upstream")
    routes = listener.get("sni_routes")
    if default is not None and not isinstance(default, str):
        problems.append("upstream: must be the name of one of the tenant's upstreams")
    elif default is not None and default not in upstream_names:
        problems.append(
            f"upstream: unknown upstream {default!r} (tenant has: {_names(upstream_names)})"
        )
    if routes is None and default is None:
        problems.append("upstream: required for a tcp listener (or give sni_routes)")
    if routes is not None:
        if not isinstance(routes, list) or not routes:
            problems.append("sni_routes: must be a non-empty list of {sni, upstream} objects")
        else:
            seen = set()
            for i, route in enumerate(routes):
                field = f"sni_routes[{i}]"
                if not isinstance(route, Mapping):
                    problems.append(f"{field}: must be an object with 'sni' and 'upstream'")
                    continue
                for key in sorted(set(route) - _ROUTE_KEYS):
                    problems.append(f"{field}.{key}: unknown key (allowed: sni, upstream)")
                sni = route.get("sni")
                if not isinstance(sni, str) or not _SNI_RE.match(sni) or len(sni) > 253:
                    problems.append(
                        f"{field}.sni: must be a lower-case host name like 'db.example' or "
                        f"'*.example' (got {sni!r})"
                    )
                elif sni in seen:
                    problems.append(f"{field}.sni: {sni!r} is listed twice")
                seen.add(sni)
                name = route.get("upstream")
                if not isinstance(name, str) or name not in upstream_names:
                    problems.append(
                        f"{field}.upstream: unknown upstream {name!r} "
                        f"(tenant has: {_names(upstream_names)})"
                    )
    proxy = listener.get("proxy_protocol")
    if proxy is not None and proxy != "v2":
        problems.append(f"proxy_protocol: must be 'v2' or left out (got {proxy!r})")
    return problems


def _names(names) -> str:
    return ", ".join(sorted(names)) or "none"


class RelayFactory:
    """Protocol factory for a tcp listener of ``tenant`` (pass it to ``loop.create_server``).

    ``upstreams`` maps the tenant's upstream names to objects with
    ``async connect(protocol_factory) -> (transport, protocol)``. ``log`` gets one dict per
    finished connection (tenant, listener, protocol "tcp", client, client_port, sni, upstream,
    server, bytes_in, bytes_out, duration_ms, error). ``timeouts`` may override
    :data:`DEFAULT_TIMEOUTS` (the config's ``timeouts`` section fits). ``connections`` holds
    the open relays, for draining and counting.
    """

    def __init__(
        self,
        listener: Mapping,
        tenant: str,
        upstreams: Mapping,
        log: Callable[[dict], object],
        *,
        timeouts: Mapping | None = None,
        runtime=None,
    ):
        self.listener = listener
        self.runtime = runtime  # the tenant's runtime: its admission slots are given back
        self.listen = listener.get("listen")
        self.tenant = tenant
        self.upstreams = upstreams
        self.log = log
        self.timeouts = {**DEFAULT_TIMEOUTS, **{k: v for k, v in (timeouts or {}).items() if v}}
        self.default = listener.get("upstream")
        self.exact: dict[str, str] = {}
        self.wildcard: dict[str, str] = {}
        for route in listener.get("sni_routes") or ():
            sni = route["sni"]
            if sni.startswith("*."):
                self.wildcard.setdefault(sni[2:], route["upstream"])
            else:
                self.exact.setdefault(sni, route["upstream"])
        self.peek = listener.get("sni_routes") is not None
        self.proxy_v2 = listener.get("proxy_protocol") == "v2"
        self.connections: set[_Relay] = set()

    def __call__(self) -> asyncio.Protocol:
        return _ClientSide(_Relay(self))

    def route(self, sni: str | None) -> str | None:
        """The upstream name for a peeked server name (None: no SNI), or None to refuse."""
        if sni:
            name = self.exact.get(sni)
            if name is not None:
                return name
            _label, dot, parent = sni.partition(".")
            if dot and parent in self.wildcard:
                return self.wildcard[parent]
        return self.default

    def abort_all(self) -> None:
        """Cut every open relay of this listener (end of a drain period)."""
        for relay in list(self.connections):
            relay.abort("drain timeout")


class _Relay:
    """State shared by the client side and the upstream side of one relayed connection."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "client",
        "client_eof",
        "client_side",
        "closed",
        "connect_task",
        "error",
        "factory",
        "idle_timer",
        "last_active",
        "loop",
        "moved",
        "peek_timer",
        "progress_at",
        "peeked",
        "pending",
        "sni",
        "started",
        "upstream",
        "upstream_eof",
        "upstream_full",
        "upstream_name",
        "upstream_protocol",
    )

    def __init__(self, factory: RelayFactory):
        self.factory = factory
        self.loop = asyncio.get_running_loop()
        self.client: asyncio.Transport | None = None
        self.client_side: _ClientSide | None = None  # set by _ClientSide
        self.upstream: asyncio.Transport | None = None
        self.upstream_protocol = None
        self.pending: bytearray | None = bytearray()  # client bytes not yet sent upstream
        self.client_eof = self.upstream_eof = False
        self.upstream_full = False  # upstream write buffer above high-water mark
        self.closed = False
        self.peeked = False
        self.sni: str | None = None
        self.upstream_name: str | None = None
        self.error: str | None = None
        self.bytes_in = self.bytes_out = 0
        self.started = time.monotonic()
        self.last_active = self.loop.time()
        self.moved = 0  # bytes either way since progress_at (admission's stalled connections)
        self.progress_at = self.last_active
        self.idle_timer = self.peek_timer = None
        self.connect_task = None  # referenced so the loop does not drop it mid-connect

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, transport: asyncio.Transport) -> None:
        self.client = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)
        self.factory.connections.add(self)
        if self.factory.runtime is not None:
            hold(self.factory.runtime, self)
        self.idle_timer = self.loop.call_later(self.factory.timeouts["idle"], self._check_idle)
        if self.factory.peek:
            self.peek_timer = self.loop.call_later(
                self.factory.timeouts["header_read"], self._peek_timeout
            )
        else:
            self._choose(self.factory.default)

    def _choose(self, name: str | None) -> None:
        self.peeked = True
        self.progress_at = self.loop.time()  # the stall clock starts with the relaying
        if self.peek_timer is not None:
            self.peek_timer.cancel()
        self.upstream_name = name
        upstream = self.factory.upstreams.get(name) if name is not None else None
        if upstream is None:
            missing = f"no route for SNI {self.sni!r}" if name is None else f"no upstream {name!r}"
            self.abort(missing)
            return
        self.connect_task = self.loop.create_task(self._connect(upstream))

    async def _connect(self, upstream) -> None:
        # The upstream applies the connect timeout per server (it may try several); the idle
        # timer is the backstop for a connect that never ends.
        try:
            await upstream.connect(lambda: _UpstreamSide(self))
        except Exception as exc:  # a failed connect closes this client only
            self.abort(str(exc) or f"upstream {self.upstream_name!r}: {type(exc).__name__}")

    def upstream_ready(self, transport: asyncio.Transport) -> None:
        self.upstream = transport
        if self.closed or self.client.is_closing():
            transport.abort()
            return
        transport.set_write_buffer_limits(high=HIGH_WATER)
        if self.factory.proxy_v2:
            transport.write(
                build_v2(
                    self.client.get_extra_info("peername"),
                    self.client.get_extra_info("sockname"),
                    netns=self.factory.tenant,
                )
            )
        pending, self.pending = self.pending, None
        # (None first: this write may pass the high-water mark, and upstream_paused, called
        # inside it, pauses the client only once the relay no longer collects)
        if pending:
            transport.write(bytes(pending))
        if self.client_eof:
            self._half_close(transport)
        else:
            self.client_side.resume_reading_for(COLLECTING)

    # -- as admission.py sees it: one of the tenant's connections it may close --------------
    def evictable(self) -> bool:
        """Nothing relayed yet: the client's first bytes (its ClientHello, when SNI picks the
        upstream) have not come."""
        return not self.closed and not self.peeked

    def _moved(self, count: int) -> None:
        self.last_active = now = self.loop.time()
        self.moved += count
        if self.moved >= PROGRESS_BYTES:
            self.moved = 0
            self.progress_at = now

    def stalled_for(self) -> float:
        """Seconds since the relay last moved admission.PROGRESS_BYTES either way (0 before
        the upstream is chosen)."""
        return 0.0 if self.closed or not self.peeked else self.loop.time() - self.progress_at

    def waiting(self) -> bool:
        return False

    def closing(self) -> bool:
        return self.closed or self.client is None or self.client.is_closing()

    def cut(self) -> None:
        if self.client is not None:
            reset(self.client.get_extra_info("socket"))
        self.abort("closed to admit another tenant's connection (connection budget full)")

    evict = cut  # nothing relayed yet: a reset loses nothing either

    def abort(self, error: str | None) -> None:
        if error and self.error is None:
            self.error = error
        if self.client is not None:
            self.client.abort()
        if self.upstream is not None:
            self.upstream.abort()

    def _maybe_close(self) -> None:
        if self.client_eof and self.upstream_eof:
            # close() flushes what is still buffered, then closes.
            self.client.close()
            if self.upstream is not None:
                self.upstream.close()

    def _half_close(self, transport: asyncio.Transport) -> None:
        if transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()

    def finished(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.factory.connections.discard(self)
        for timer in (self.idle_timer, self.peek_timer):
            if timer is not None:
                timer.cancel()
        if self.connect_task is not None and not self.connect_task.done():
            self.connect_task.cancel()  # the client is gone: stop trying the upstream's servers
        peer = self.client.get_extra_info("peername") if self.client else None
        record = {
            "tenant": self.factory.tenant,
            "listener": self.factory.listen,
            "protocol": "tcp",
            "client": peer[0] if peer else None,
            "client_port": peer[1] if peer else None,
            "sni": self.sni,
            "upstream": self.upstream_name,
            "server": getattr(self.upstream_protocol, "server_label", None),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "duration_ms": round((time.monotonic() - self.started) * 1000, 3),
            "error": self.error,
        }
        with contextlib.suppress(Exception):  # a broken log sink must not break the relay
            self.factory.log(record)

    # -- timers -------------------------------------------------------------------------
    def _check_idle(self) -> None:
        left = self.last_active + self.factory.timeouts["idle"] - self.loop.time()
        if left > 0:
            self.idle_timer = self.loop.call_later(left, self._check_idle)
        else:
            self.abort("idle timeout")

    def _peek_timeout(self) -> None:
        if not self.peeked:
            self._route_peeked(None)

    # -- client side --------------------------------------------------------------------
    def client_data(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self._moved(len(data))
        if self.upstream is not None and self.pending is None:
            self.upstream.write(data)
            return
        self.pending += data
        if not self.peeked:
            hello = peek_client_hello(self.pending)
            if hello is NEED_MORE and len(self.pending) < _PEEK_LIMIT:
                return
            self._route_peeked(hello)
        elif len(self.pending) > _PENDING_LIMIT:
            # Still connecting: hold further bytes in the kernel. Reading stays on below the
            # limit so that a client that resets is noticed (and the connect cancelled).
            self.client_side.pause_reading_for(COLLECTING)

    def _route_peeked(self, hello) -> None:
        self.sni = hello.sni if hello else None
        self._choose(self.factory.route(self.sni))

    def client_eof_received(self) -> None:
        self.client_eof = True
        if not self.peeked:
            self._route_peeked(peek_client_hello(self.pending))
        if self.upstream is not None and self.pending is None:
            self._half_close(self.upstream)
        self._maybe_close()

    def client_lost(self, exc) -> None:
        if exc is not None and self.error is None:
            self.error = f"client: {exc}"
        if self.upstream is not None:
            if exc is None:
                self.upstream.close()
            else:
                self.upstream.abort()
        self.finished()

    # -- upstream side ------------------------------------------------------------------
    def upstream_data(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self._moved(len(data))
        self.client.write(data)

    def upstream_eof_received(self) -> None:
        self.upstream_eof = True
        self._half_close(self.client)
        self._maybe_close()

    def upstream_lost(self, exc) -> None:
        if exc is not None and self.error is None:
            self.error = f"upstream: {exc}"
        if exc is None:
            self.client.close()
        else:
            self.client.abort()

    def upstream_paused(self, full: bool) -> None:
        self.upstream_full = full
        if self.client_eof:
            return
        if full:
            self.client_side.pause_reading_for(PEER_FULL)
        else:
            self.client_side.resume_reading_for(PEER_FULL)

    def client_paused(self, full: bool) -> None:
        side = self.upstream_protocol
        if side is None or self.upstream_eof:
            return
        if full:
            side.pause_reading_for(PEER_FULL)
        else:
            side.resume_reading_for(PEER_FULL)


class _ClientSide(SharedReads):
    __slots__ = ("counted", "relay")

    def __init__(self, relay: _Relay):
        SharedReads.__init__(self)
        self.relay = relay
        relay.client_side = self
        self.counted = False  # holds an admission slot (set by the acceptor)

    def room(self) -> int:
        return room_toward(self.relay.upstream)

    def share(self):
        runtime = self.relay.factory.runtime
        return None if runtime is None else runtime.share

    def connection_made(self, transport):
        self.transport = transport
        self.relay.start(transport)

    def data_received(self, data):
        self.relay.client_data(data)

    def eof_received(self):
        self.relay.client_eof_received()
        return True  # keep the socket open: the other direction may still be flowing

    def connection_lost(self, exc):
        tenant = self.relay.factory.runtime
        if tenant is not None:
            release(tenant, self.relay)
        if self.counted:
            self.counted = False
            tenant.admission.leave(tenant)
        self.relay.client_lost(exc)

    def pause_writing(self):
        self.relay.client_paused(True)

    def resume_writing(self):
        self.relay.client_paused(False)


class _UpstreamSide(SharedReads):
    __slots__ = ("relay", "server_label")

    def __init__(self, relay: _Relay):
        SharedReads.__init__(self)
        self.relay = relay
        self.server_label = None  # set by upstream.Upstream.connect: which server answered

    def room(self) -> int:
        return room_toward(self.relay.client)

    share = _ClientSide.share

    def connection_made(self, transport):
        self.transport = transport
        self.relay.upstream_protocol = self
        self.relay.upstream_ready(transport)

    def data_received(self, data):
        self.relay.upstream_data(data)

    def eof_received(self):
        self.relay.upstream_eof_received()
        return True

    def connection_lost(self, exc):
        self.relay.upstream_lost(exc)

    def pause_writing(self):
        self.relay.upstream_paused(True)

    def resume_writing(self):
        self.relay.upstream_paused(False)
