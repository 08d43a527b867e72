"""Active health checks of upstream servers (an upstream's optional ``health_check``).

One worker probes (index 0: :class:`Prober`), once per ``interval`` per server for the whole
daemon, and publishes each server's state in the shared table (health_table.py) that every
worker reads when it picks a server. A probe runs from inside the upstream's namespace exactly
as a request does: a socket the worker makes itself for the host namespace, one from the
binder's stock (worker/stock.py) for an upstream inside a tenant namespace.

- ``tcp``: the connect must succeed within ``timeout``.
- ``http``: ``GET path`` with ``Host`` (the configured one, else the server's ``IP:PORT``) and
  ``Connection: close``; the response head must end within ``timeout`` and within
  :data:`MAX_HEAD` bytes, and its status must be one of ``expect_status``. Only the status line
  is parsed (RFC 9112 section 4); the body is never read. The upstream may be hostile: what is
  read is bounded in size and time.

``fall`` failures in a row mark a server down (no request is sent to it while an other server
of the upstream is up), ``rise`` successes in a row bring it back (:class:`CheckState`). Passive
health (upstream.py) stays: a failed connect still skips the server for a while.

A probe that could not start (no descriptor left in worker 0, the binder's per-worker socket
limit or silence, a socket stock emptied meanwhile) says nothing about the server: its result
is :data:`UNKNOWN`, counted neither toward ``fall`` nor ``rise``, and logged at most once per
:data:`LOG_INTERVAL`. A binder answer that the upstream's namespace cannot be opened is a
failure. At most :data:`PARALLEL` probes of one upstream run at once, so that a big upstream
inside a namespace does not take the socket stock faster than the binder refills it.

Checks run while the tenant's listener serves (a tenant waiting for its namespace, or never
used, costs no probe), with a random delay below one interval so that many tenants do not
probe in one burst. A tenant not served for a while (a reload that replaces its listener, its
namespace gone) has its checks paused, state kept. A reload forgets the state of exactly the
upstreams whose (tenant, upstream, digest) left the config and keeps the others.

Transition lines in the daemon log are bounded per tenant (one per :data:`LOG_INTERVAL`, the
next one counting those left out), as accept.py bounds refusal lines: a tenant's flapping server
must not flood the log every tenant shares.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import random
import re
import socket
import string
import urllib.parse

from nsproxy.health_table import key_of
from nsproxy.worker.stock import StockError

log = logging.getLogger("nsproxy")

MAX_HEAD = 8192  # bytes of a check's response head read at most
PARALLEL = 4  # probes of one upstream running at once
LOG_INTERVAL = 10.0  # seconds between two transition lines of one tenant (and unknown lines)
UNKNOWN = object()  # a probe's result when it could not start: nothing about the server
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-9][0-9][0-9])(?:[ \t][^\r\n]*)?\r?\n")
_PATH_SAFE = string.punctuation  # a path is printable ASCII (schema): only the rest is escaped


def describe_expected(codes: frozenset) -> str:
    """``expect_status`` as an operator wrote it: "2xx", "200", "200, 204" or "2xx, 301"."""
    codes = set(codes)
    parts = []
    for hundred in range(100, 600, 100):
        block = set(range(hundred, hundred + 100))
        if block <= codes:
            parts.append(f"{hundred // 100}xx")
            codes -= block
    parts.extend(str(code) for code in sorted(codes))
    return ", ".join(sorted(parts, key=lambda p: p.replace("xx", "00")))


class CheckState:
    """One server's result history as the checks see it: ``down``, the ``error`` that marked it
    down (None while up), and ``run``, the results in a row that go against the state.

    A pure state machine (no clock, no I/O): :meth:`record` one result at a time."""

    __slots__ = ("down", "error", "run")

    def __init__(self, down: bool = False, error: str | None = None):
        self.down = down
        self.error = error if down else None
        self.run = 0

    def record(self, error: str | None, rise: int, fall: int) -> bool:
        """One check result (``error`` None: a success); True when what is published changed
        (the server went down or came back, or it is down and the reason changed)."""
        if error is None:
            if not self.down:
                self.run = 0
                return False
            self.run += 1
            if self.run >= rise:
                self.down, self.error, self.run = False, None, 0
                return True
            return False
        if self.down:
            self.run = 0
            changed = error != self.error
            self.error = error
            return changed
        self.run += 1
        if self.run >= fall:
            self.down, self.error, self.run = True, error, 0
            return True
        return False


class Check:
    """The checks of one upstream of one tenant: a task that probes every server each
    interval and publishes the changes."""

    def __init__(self, prober: Prober, tenant: str, spec):
        self.prober = prober
        self.tenant = tenant
        self.spec = spec
        self.keys = [key_of(tenant, spec.name, spec.digest, _label(a)) for a in spec.servers]
        self.states: list[CheckState] = []
        self.full_warned = False
        self.limit = asyncio.Semaphore(PARALLEL)
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        """Probe from now on (again), going on from what the table holds: what this worker 0,
        a dead predecessor, or this check before a pause published."""
        if self.task is None:
            table = self.prober.table
            self.states = [CheckState(*table.lookup(key)) for key in self.keys]
            self.task = self.prober.loop.create_task(self._run())

    def stop(self, forget: bool) -> None:
        """Stop probing (a pause when not ``forget``: the state stays published); ``forget``:
        the upstream changed or went away, so its servers are shown up again (routing falls
        back to passive health)."""
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if forget:
            for key in self.keys:
                self.prober.table.remove(key)

    async def _run(self) -> None:
        check = self.spec.health_check
        loop = self.prober.loop
        await asyncio.sleep(random.uniform(0, check.interval))
        while True:
            started = loop.time()
            errors = await asyncio.gather(*(self.limited(a) for a in self.spec.servers))
            for key, state, error in zip(self.keys, self.states, errors):
                if error is UNKNOWN:
                    continue
                was_down = state.down
                if state.record(error, check.rise, check.fall):
                    self._publish(key, state, was_down)
            await asyncio.sleep(max(0.0, check.interval - (loop.time() - started)))

    def _publish(self, key: int, state: CheckState, was_down: bool) -> None:
        if not self.prober.table.publish(key, state.down, state.error):
            if not self.full_warned:
                self.full_warned = True
                log.warning(
                    "tenant %s: upstream %s: the health table is full; the checks of its "
                    "servers are not applied",
                    self.tenant,
                    self.spec.name,
                )
            return
        if state.down != was_down:
            server = _label(self.spec.servers[self.keys.index(key)])
            what = f"down: {state.error}" if state.down else "up again"
            self.prober.log_transition(self.tenant, self.spec.name, server, what)

    async def limited(self, address: tuple[str, int]):
        """:meth:`probe`, at most PARALLEL of this upstream at once."""
        async with self.limit:
            return await self.probe(address)

    async def probe(self, address: tuple[str, int]):
        """One check of one server: None when it passed, a sentence saying why not, or
        UNKNOWN when the probe could not start (see the module docstring)."""
        check = self.spec.health_check
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        try:
            sock = await self.prober.socket(self.tenant, self.spec, family)
        except StockError as exc:
            if exc.missing:
                return f"upstream namespace unavailable: {exc}"
            self.prober.log_unknown(self.tenant, self.spec.name, _label(address), str(exc))
            return UNKNOWN
        except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: worker 0's own shortage
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            self.prober.log_unknown(self.tenant, self.spec.name, _label(address), reason)
            return UNKNOWN
        try:
            return await asyncio.wait_for(self._exchange(sock, address), check.timeout)
        except asyncio.TimeoutError:
            return f"timeout after {float(check.timeout)} s"
        except Exception:  # a bug here must not end the checks of the upstream
            log.exception("tenant %s: upstream %s: health check failed", self.tenant,
                          self.spec.name)  # fmt: skip
            return "internal error in the check (see the daemon log)"
        finally:
            sock.close()

    async def _exchange(self, sock: socket.socket, address: tuple[str, int]) -> str | None:
        loop = self.prober.loop
        check = self.spec.health_check
        try:
            await loop.sock_connect(sock, address)
        except OSError as exc:
            if exc.errno == errno.ECONNREFUSED:
                return "connect refused"
            return f"connect failed: {os.strerror(exc.errno) if exc.errno else exc}"
        if check.type == "tcp":
            return None
        host = check.host or _label(address)
        target = urllib.parse.quote(check.path, safe=_PATH_SAFE)
        request = (f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                   "User-Agent: nsproxy-health-check\r\n\r\n")  # fmt: skip
        try:
            await loop.sock_sendall(sock, request.encode("ascii"))
            head = await _read_head(loop, sock)
        except OSError as exc:
            return f"connection failed: {os.strerror(exc.errno) if exc.errno else exc}"
        if isinstance(head, str):
            return head
        match = _STATUS_LINE.match(head)
        if match is None:
            return "no HTTP/1.x status line in the response"
        status = int(match.group(1))
        if status not in check.expect_status:
            return f"status {status}, expected {describe_expected(check.expect_status)}"
        return None


async def _read_head(loop, sock: socket.socket) -> bytes | str:
    """The response head up to its empty line (bytes), or why there is none (a sentence).
    At most MAX_HEAD bytes are read; the caller bounds the time."""
    head = bytearray()
    while True:
        chunk = await loop.sock_recv(sock, MAX_HEAD - len(head))
        if not chunk:
            return "connection closed before the response head ended"
        start = max(0, len(head) - 3)
        head += chunk
        if head.find(b"\r\n\r\n", start) >= 0 or head.find(b"\n\n", start) >= 0:
            return bytes(head)
        if len(head) >= MAX_HEAD:
            return f"response head longer than {MAX_HEAD} bytes"


def _label(address: tuple[str, int]) -> str:
    from nsproxy.upstream import _label as label

    return label(*address)


class Prober:
    """Worker 0's checks: one :class:`Check` per checked upstream of every tenant whose
    listener serves. :meth:`reconcile` (after a generation, a served socket, and each sweep)
    starts and stops them."""

    def __init__(self, loop, served, table):
        self.loop = loop
        self.served = served
        self.table = table  # health_table.HealthTable
        table.recount()  # a worker 0 that replaced a dead one: what its predecessor left
        # (tenant, upstream, digest) -> Check, for every checked upstream of the config:
        # running while the tenant serves, paused (state kept) otherwise.
        self.checks: dict[tuple, Check] = {}
        self.config = None
        self.checked: list[tuple[str, list]] = []  # (tenant, [UpstreamSpec with a check])
        self.logged: dict[str, list] = {}  # tenant -> [last transition line, lines left out]
        self.unknown = [float("-inf"), 0]  # [last line about probes that could not start, left out]

    def log_transition(self, tenant: str, upstream: str, server: str, what: str) -> None:
        """A server went down or came back: one line per tenant per LOG_INTERVAL at most."""
        now = self.loop.time()
        entry = self.logged.setdefault(tenant, [float("-inf"), 0])
        if now - entry[0] < LOG_INTERVAL:
            entry[1] += 1
            return
        more = f" ({entry[1]} transitions of this tenant not logged before)" if entry[1] else ""
        log.info("tenant %s: upstream %s: server %s %s%s", tenant, upstream, server, what, more)
        entry[0], entry[1] = now, 0

    def log_unknown(self, tenant: str, upstream: str, server: str, reason: str) -> None:
        """A probe could not start (worker 0's or the binder's shortage): rate-limited."""
        now = self.loop.time()
        entry = self.unknown
        if now - entry[0] < LOG_INTERVAL:
            entry[1] += 1
            return
        more = f" ({entry[1]} more since the last such line)" if entry[1] else ""
        log.warning("tenant %s: upstream %s: the health check of server %s could not start: "
                    "%s; the server keeps its state%s", tenant, upstream, server, reason,
                    more)  # fmt: skip
        entry[0], entry[1] = now, 0

    def reconcile(self) -> None:
        """Run the checks of the served tenants' checked upstreams, pause those of tenants not
        served now, and forget those whose (tenant, upstream, digest) left the config."""
        served = self.served
        if served.config is not self.config:
            self.config = served.config
            self.checked = []
            for spec in served.config.tenants:
                ups = [u for u in spec.upstreams.values() if u.health_check is not None]
                if ups:
                    self.checked.append((spec.name, ups))
        configured, running = {}, set()
        for name, ups in self.checked:
            tenant = served.tenants.get(name)
            serving = (
                tenant is not None
                and not tenant.closing
                and any(li.server is not None for li in tenant.listeners)
            )
            for up in ups:
                key = (name, up.name, up.digest)
                configured[key] = up
                if serving:
                    running.add(key)
        for key in [k for k in self.checks if k not in configured]:
            self.checks.pop(key).stop(forget=True)
        names = {name for name, _ups in self.checked}
        for tenant in [t for t in self.logged if t not in names]:
            del self.logged[tenant]
        for key, up in configured.items():
            check = self.checks.get(key)
            if check is None:
                check = self.checks[key] = Check(self, key[0], up)
            if key in running:
                check.start()
            else:
                check.stop(forget=False)

    def stop(self) -> None:
        """Stop every check (the worker drains); what was published stays for the next."""
        for check in self.checks.values():
            check.stop(forget=False)
        self.checks.clear()
        self.config = None

    async def socket(self, tenant: str, spec, family: int) -> socket.socket:
        """A non-blocking TCP socket in the upstream's namespace, as a request gets one."""
        if spec.netns is None:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            return sock
        sock, _identity = await self.served.shared.sockets.take(tenant, spec.name, family)
        return sock
