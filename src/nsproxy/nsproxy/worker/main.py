"""A worker: forked by the binder, unprivileged, serves every tenant on its own event loop.

:func:`run` is the child's side of the binder's ``fork``. It never returns (``os._exit``): the
child holds a copy of the binder's objects, and none of them may run or be finalised here.
In order, before any byte from a tenant is read:

1. forget the binder: signal handlers and wakeup fd reset, the binder's event loop abandoned
   (never run, never closed), and every fd the worker was not given replaced by /dev/null
   (namespace fds, pidfds, the admin socket, other workers' channels, the binder loop's own;
   kept: its channel, listening sockets, logs, the metrics socket (worker 0), the certificate
   store's read-only descriptor, and in worker 0 a read-only descriptor of the health table's
   memfd, opened here, for its recount).
   /dev/null rather than close: an abandoned binder object that ever closed "its" fd would
   otherwise close whatever the worker opened under that number later;
2. drop privileges (privileges.drop: a non-root user, every capability set empty,
   no_new_privs), checked by reading /proc/self/status: a worker with anything left exits
   with :data:`EXIT_PRIVILEGES` and the binder stops;
3. a fresh event loop (uvloop when installed), the listening sockets it inherited attached,
   ``ready`` sent to the binder.

Then it follows the binder's messages (channel.py): ``config`` (a new generation), ``serve``/
``unserve`` (listening sockets), ``netns_changed`` (a namespace replaced: pools and stock for
it dropped), ``metrics_socket``, ``drain`` and ``snapshot``. A worker whose channel closes (the
binder is gone) stops accepting, drains and exits. Worker 0 also runs the active health checks
of every upstream that has them (health_check.Prober), for all workers.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import logging
import os
import pickle
import resource
import signal
import socket
import sys

from nsproxy import (
    channel,
    daemonlog,
    health_check,
    heap,
    metrics,
    privileges,
    procstat,
    titles,
    tls_tickets,
)
from nsproxy.metrics_endpoint import MetricsProtocol
from nsproxy.worker import status, sweep
from nsproxy.worker.apply import Served
from nsproxy.worker.stock import SocketStock

log = logging.getLogger("nsproxy")

EXIT_PRIVILEGES = 77  # privileges could not be dropped: the binder must not start more
EXIT_INTERNAL = 70
HEARTBEAT = 1.0  # seconds between two heartbeats (the sweep sends them)
FDS_EVERY = 10.0  # seconds between two counts of its descriptors that need a listing
DRAIN_IDLE_GRACE = 5.0  # seconds an idle keep-alive connection is kept by a draining worker

# What the abandoned binder left in this process; referenced so that nothing of it is freed.
_ABANDONED: list = []


class Seed:
    """What the binder gives a worker at fork: its index, the config and generation, a view of
    the certificate store (cert_store.CertificateView), the bound listening sockets (sid ->
    (tenant, digest, socket)), the channel end, the access log fd, the metrics socket (one
    worker gets it), credentials, the shared connection counts (its row), tenant slots and the
    health table."""

    __slots__ = (
        "access_log_fd",
        "access_log_target",
        "binder",
        "channel",
        "config",
        "counts",
        "credentials",
        "files",
        "generation",
        "health",
        "index",
        "metrics_sock",
        "served",
        "slots",
        "ticket_keys",
    )

    def __init__(self, **fields):
        for name in self.__slots__:
            setattr(self, name, fields.get(name))


def run(seed: Seed) -> None:
    """The forked child: never returns."""
    code = EXIT_INTERNAL
    try:
        _forget_binder(seed)
        titles.set_title(titles.worker_title(seed.index, seed.config.instance))
        try:
            privileges.drop(seed.credentials)
        except privileges.PrivilegeError as exc:
            log.error("%s", exc)
            code = EXIT_PRIVILEGES
            return
        loop = _new_loop()
        code = loop.run_until_complete(Worker(seed, loop).serve())
    except BaseException:
        log.exception("worker failed")
    finally:
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        os._exit(code)


def _forget_binder(seed: Seed) -> None:
    _ABANDONED.append(seed.binder)
    seed.binder = None
    signal.set_wakeup_fd(-1)
    # SIGUSR1 (reopen the logs) is the binder's: it opens the files and hands them over.
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    asyncio.events._set_running_loop(None)
    keep = {0, 1, 2, seed.channel.fileno(), *daemonlog.fds()}
    keep.update(sock.fileno() for _, _, sock in seed.served.values())
    if seed.access_log_fd is not None:
        keep.add(seed.access_log_fd)
    if seed.metrics_sock is not None:
        keep.add(seed.metrics_sock.fileno())
    if getattr(seed.files, "fd", -1) >= 0:  # the certificate store's, read-only (cert_store.py)
        keep.add(seed.files.fd)
    if seed.health is not None and seed.index == 0:  # its recount asks for the written pages
        try:
            seed.health.fd = channel.readonly(seed.health.fd)
        except OSError as exc:
            if exc.errno != errno.EMFILE:
                raise
            free_number(keep | {seed.health.fd})  # a full table: one of the binder's goes
            seed.health.fd = channel.readonly(seed.health.fd)
        keep.add(seed.health.fd)
    null_all_but(keep)
    daemonlog.relabel(f"nsproxy[worker {seed.index} {os.getpid()}]")


def null_all_but(keep: set) -> None:
    """Replace every open descriptor not in ``keep`` by /dev/null (see the module docstring).
    A worker forked from a binder whose table was full has no number free for /dev/null: one
    of the binder's own numbers (:func:`free_number`) is opened again as /dev/null, and stays
    so; and with no number free to list /proc/self/fd, every number below the limit is open."""
    try:
        devnull = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        spare = True
    except OSError as exc:
        if exc.errno != errno.EMFILE:
            raise
        free_number(keep)
        devnull = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        spare = False
    try:
        numbers = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError as exc:
        if exc.errno != errno.EMFILE:
            raise
        numbers = range(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    for fd in numbers:
        if fd in keep or fd == devnull or not _is_open(fd):
            continue  # (not open: the listing's own directory fd, closed by now)
        os.dup2(devnull, fd, inheritable=False)
    if spare:  # else it stands in for the number it took, like the others
        os.close(devnull)


def free_number(keep: set) -> None:
    """Close one of the binder's descriptors (not in ``keep``) in a full table (EMFILE: every
    number below the limit is open), so that the next open takes its number."""
    for fd in range(resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1, -1, -1):
        if fd not in keep and _is_open(fd):
            os.close(fd)
            return


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _new_loop():
    try:
        import uvloop
    except ImportError:
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


class Worker:
    """The worker's life: serve, follow the binder, drain, exit (serve returns the exit code)."""

    def __init__(self, seed: Seed, loop):
        self.loop = loop
        self.index = seed.index
        tls_tickets.use(seed.ticket_keys)
        self.channel = channel.Channel(
            seed.channel,
            loop,
            self._message,
            self._channel_closed,
            peer="the binder",
            on_cut=self._descriptors_cut,
        )
        self.replacement_asked = False
        self.fds = (0, 0)  # (open descriptors, limit) as last counted; see _sweep
        self.fds_due = 0.0
        self.stock = SocketStock(loop, self.channel.request)
        self.served = Served(
            loop, seed.config, seed.files, self.stock, seed.counts, seed.slots, seed.health
        )
        self.prober = None  # worker 0's health checks
        if seed.index == 0 and seed.health is not None:
            self.prober = health_check.Prober(loop, self.served, seed.health)
        self.served.generation = seed.generation
        self.tidier = heap.Tidier()
        self.state = "starting"
        self.drain_deadline = None
        self.accepting_until = None  # timer: a draining worker's last accept (drain)
        self.done = loop.create_future()
        self.metrics_server = None
        self.seed_served = seed.served
        self.seed_metrics = seed.metrics_sock
        self.seed_access = (seed.access_log_fd, seed.access_log_target)
        self.sweeper = None

    async def serve(self) -> int:
        served = self.served
        served.apply(served.config, served.generation)
        served.set_access_log(*self.seed_access)
        for sid, (tenant, digest, sock) in self.seed_served.items():
            served.serve(sid, tenant, digest, sock)
        self.seed_served = None
        if self.seed_metrics is not None:
            await self._serve_metrics(self.seed_metrics)
            self.seed_metrics = None
        self.loop.add_signal_handler(signal.SIGTERM, self.drain, "stop", None)
        self.channel.start()
        heap.settle()
        served.shared.acceptor.start()
        self.state = "serving"
        self.channel.send("ready", generation=served.generation)
        self._reconcile_checks()
        self.sweeper = self.loop.call_later(HEARTBEAT, self._sweep)
        return await self.done

    # -- messages from the binder ---------------------------------------------------------
    def _message(self, message: dict, fds: list[int]) -> None:
        kind = message["type"]
        handler = getattr(self, "_on_" + kind.replace("?", "_query"), None)
        if handler is None:
            channel.close_fds(fds)
            raise channel.ChannelError(f"unknown message type {kind!r}")
        handler(message, fds)

    def _on_config(self, message: dict, fds: list[int]) -> None:
        """A new generation: the config (kept tenants by name) in a memfd; the access log fd
        when it changed; last, when certificate files changed, the certificate store's
        read-only memfd, whose index is in the payload (cert_store.py)."""
        try:
            payload = pickle.loads(channel.read_sealed(fds[0]))
        finally:
            channel.close_fds(fds[:1])
        generation = message["generation"]
        access = payload.get("access_log")
        if generation <= self.served.generation:
            channel.close_fds(fds[1:])
            self.channel.send("ready", generation=self.served.generation)
            return
        cfg = payload["config"]
        kept = {t.name: t.spec for t in self.served.tenants.values()}
        cfg.tenants = [kept[t] if isinstance(t, str) else t for t in cfg.tenants]
        if "certificates" in payload:
            self.served.files.replace(fds.pop(), payload["certificates"])
        self.served.slots = payload.get("slots") or self.served.slots
        with heap.collector_paused():
            added, removed, changed = self.served.apply(cfg, generation)
        if access is not None:
            self.served.set_access_log(fds[1] if len(fds) > 1 else None, access or None)
        heap.settle()
        self._reconcile_checks()
        log.debug("generation %d: %d added, %d removed, %d changed", generation, added,
                  removed, changed)  # fmt: skip
        self.channel.send("ready", generation=generation)

    def _on_serve(self, message: dict, fds: list[int]) -> None:
        entries = message.get("listeners") or []
        if len(entries) != len(fds):
            channel.close_fds(fds)
            raise channel.ChannelError("serve: one fd per listener expected")
        for (sid, tenant, digest), fd in zip(entries, fds):
            sock = socket.socket(fileno=fd)
            if self.state == "draining":
                sock.close()
                continue
            self.served.serve(sid, tenant, bytes.fromhex(digest), sock)
        self._reconcile_checks()

    def _on_ticket_keys(self, message: dict, fds: list[int]) -> None:
        """The binder's new TLS ticket keys (``timeouts.ticket_keys``), for every context."""
        channel.close_fds(fds)
        try:
            tls_tickets.rotate(base64.b64decode(message.get("keys") or "", validate=True))
        except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
            raise channel.ChannelError(f"ticket_keys: {exc}") from None

    def _on_unserve(self, message: dict, fds: list[int]) -> None:
        channel.close_fds(fds)
        for sid in message.get("sids") or []:
            self.served.unserve(sid)

    def _on_netns_changed(self, message: dict, fds: list[int]) -> None:
        channel.close_fds(fds)
        identity = tuple(message["identity"])
        self.stock.namespace_changed(identity)
        for tenant in [
            *self.served.tenants.values(),
            *(t for t, _ in self.served.draining_tenants),
        ]:
            for up in tenant.upstreams.values():
                if up.identity == identity:
                    up.namespace_replaced()

    def _on_reopen(self, message: dict, fds: list[int]) -> None:
        """The log files opened anew by the binder (SIGUSR1, a reload): ``access`` and
        ``log`` say which fds came, in that order. What was buffered goes to the old file."""
        fds = list(fds)
        try:
            if message.get("access") and fds:
                fd = fds.pop(0)
                access = self.served.shared.access_log
                if access is not None:
                    access.adopt(fd)
            if message.get("log") and fds:
                daemonlog.adopt(fds.pop(0))
        finally:
            channel.close_fds(fds)
        log.debug("logs reopened")

    def _on_metrics_socket(self, message: dict, fds: list[int]) -> None:
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        if fds and self.state != "draining":
            self.loop.create_task(self._serve_metrics(socket.socket(fileno=fds[0])))
            channel.close_fds(fds[1:])
        else:
            channel.close_fds(fds)

    def _on_drain(self, message: dict, fds: list[int]) -> None:
        channel.close_fds(fds)
        accept_for = message.get("accept_for")
        accept_for = accept_for if isinstance(accept_for, (int, float)) else 0
        self.drain(message.get("mode", "stop"), message.get("within"), accept_for)

    def _on_snapshot_query(self, message: dict, fds: list[int]) -> None:
        channel.close_fds(fds)
        data = pickle_free_json(status.snapshot(self.served, self.index, self.state))
        try:
            fd = channel.sealed_memfd(data, "nsproxy-snapshot")
        except OSError as exc:  # EMFILE: its connections hold the whole table
            log.warning("no snapshot for the binder: %s", exc.strerror)
            self.channel.send("snapshot", reply_to=message.get("id"), error=exc.strerror)
            return
        try:
            self.channel.send("snapshot", [fd], reply_to=message.get("id"))
        finally:
            os.close(fd)

    def _descriptors_cut(self, message: dict) -> None:
        """A message from the binder lost its descriptors: this worker's table is full (its
        connections took it). It keeps what it serves and asks the binder, once, for a
        replacement of its index (forked with every current socket), then drains."""
        fds, max_fds, _ = procstat.descriptors()
        if message.get("reply_to") is not None:  # its request has failed (channel.py): no more
            log.error("the binder's answer (%s) lost its descriptors (this worker holds %d of "
                      "its %d)", message.get("type"), fds, max_fds)  # fmt: skip
            return
        log.error("the binder's %s message lost its descriptors (this worker holds %d of its "
                  "%d): asking for a replacement", message.get("type"), fds, max_fds)  # fmt: skip
        if not self.replacement_asked and self.state != "draining" and not self.channel.closed:
            self.replacement_asked = True
            self.channel.send("replace_me")

    def _channel_closed(self, reason: str) -> None:
        if self.state != "draining":
            log.warning("%s; draining and exiting", reason)
            self.drain("stop", None)

    # -- metrics listener (served by one worker) ------------------------------------------
    async def _serve_metrics(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        answers = {b"/metrics": self._scrape, b"/ready": self._ready}
        self.metrics_server = await self.loop.create_server(
            lambda: MetricsProtocol(answers), sock=sock
        )

    async def _scrape(self) -> tuple[int, bytes]:
        """Every worker's snapshot and the binder's document (listener states), through the
        binder (which relays the snapshots unread), summed and rendered."""
        import json

        answer, fds = await self._ask_binder("metrics?")
        if answer is None:
            return 503, b"the metrics cannot be gathered right now; see the log\n"
        documents = []
        try:
            for fd in fds:
                try:
                    documents.append(json.loads(channel.read_sealed(fd, 16 << 20)))
                except (channel.ChannelError, ValueError, RecursionError):
                    documents.append(None)
        finally:
            channel.close_fds(fds)
        listeners = []
        if answer.get("listeners_fd") and documents:  # the binder's document comes last
            doc = documents.pop()
            if isinstance(doc, dict) and isinstance(doc.get("listeners"), list):
                listeners = [x for x in doc["listeners"] if isinstance(x, list) and len(x) == 4]
        config = self.served.config
        workers = [s for s in documents if isinstance(s, dict)]
        tenants = metrics.merge([t.name for t in config.tenants], workers)
        binder = answer.get("binder") if isinstance(answer.get("binder"), dict) else {}
        specs = {t.name: t for t in config.tenants}
        return 200, metrics.render(tenants, specs, listeners, workers, binder)

    async def _ask_binder(self, kind: str) -> tuple[dict | None, list[int]]:
        """(answer, fds) of the binder's answer to ``kind`` (within 10 s), or (None, []) with a
        warning when it has none: it timed out, the channel closed, the answer lost its
        descriptors (this worker's table is full), or the binder could not make them."""
        try:
            answer, fds = await self.channel.request(kind, 10)
        except asyncio.TimeoutError:
            reason = "no answer within 10 s"
        except channel.ChannelError as exc:
            reason = str(exc)
        else:
            if not answer.get("error"):
                return answer, fds
            channel.close_fds(fds)
            reason = str(answer["error"])[:200]
        log.warning("metrics listener: the binder's answer to %s failed: %s", kind, reason)
        return None, []

    async def _ready(self) -> tuple[int, bytes]:
        """The binder's judgement: every worker on the current generation, no listener in
        error (503 with the reasons otherwise)."""
        answer, fds = await self._ask_binder("ready?")
        if answer is None:
            return 503, b"the binder did not answer; see the log\n"
        channel.close_fds(fds)
        text = str(answer.get("text") or "")[:65536].encode("utf-8", "replace")
        return (200 if answer.get("ready") is True else 503), text

    # -- the sweep, draining --------------------------------------------------------------
    def _reconcile_checks(self) -> None:
        """Worker 0: start and stop health checks to match what is served now."""
        if self.prober is not None and self.state == "serving":
            try:
                self.prober.reconcile()
            except Exception:
                log.exception("internal error while starting or stopping health checks")

    def _sweep(self) -> None:
        self.sweeper = self.loop.call_later(HEARTBEAT, self._sweep)
        now = self.loop.time()
        timeouts = None
        if self.state == "draining":
            timeouts = dict(self.served.shared.timeouts)
            timeouts["idle"] = min(timeouts["idle"], DRAIN_IDLE_GRACE)
        sweep.tick(self.served, self.tidier, now, timeouts)
        self._reconcile_checks()  # listeners served or gone since (a namespace came or went)
        if self.state == "draining":
            self._drain_progress(now)
        elif not self.channel.closed:
            # Its descriptors: the binder refuses a reload this worker could not receive.
            # Counted every heartbeat when a stat does it, else every FDS_EVERY seconds.
            if now >= self.fds_due:
                fds, max_fds, cheap = procstat.descriptors()
                self.fds = (fds, max_fds)
                self.fds_due = now + (0 if cheap else FDS_EVERY)
            self.channel.send("heartbeat", open_fds=self.fds[0], max_fds=self.fds[1])

    def drain(self, mode: str, within, accept_for: float = 0) -> None:
        """Stop accepting (the binder and the other workers keep the sockets open) and exit
        once the open connections are done, at the latest after ``within`` seconds
        (default timeouts.drain). ``mode`` "upgrade": keep-alive clients get
        ``Connection: close`` on their next response; an idle one is closed after
        DRAIN_IDLE_GRACE. "stop": idle keep-alive connections are closed at once.
        ``accept_for`` > 0: this worker's sockets are retired (no other process serves
        them, and the kernel gives them no new connection, see reuseport.py): go on
        accepting what is queued there for that many seconds, then close them. A "stop"
        reaching a worker that drains already ends its accepting and closes its idle
        connections at once."""
        if self.state == "draining":
            if mode == "stop":
                self._close_idle(within)
                if self.accepting_until is not None:
                    self.accepting_until.cancel()
                self._stop_accepting()  # (closing what is closed already is a no-op)
            return
        self.state = "draining"
        if self.prober is not None:
            self.prober.stop()
        served = self.served
        if accept_for > 0:
            self.accepting_until = self.loop.call_later(accept_for, self._stop_accepting)
        else:
            served.stop_accepting()
        served.shared.draining = True
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        if mode == "stop":
            self._close_idle(within)
        else:
            self.drain_deadline = self.loop.time() + accept_for + self._within(within)
        what = "stopping" if mode == "stop" else "replaced"
        log.info("%s: draining %d connections", what, served.open_connections())
        self.loop.call_soon(self._drain_progress, self.loop.time())

    def _within(self, within) -> float:
        if not isinstance(within, (int, float)) or within <= 0:
            return self.served.config.timeouts["drain"]
        return within

    def _close_idle(self, within) -> None:
        """Stop mode: idle keep-alive connections close now, the others after their response,
        all of them within ``within`` seconds from now."""
        for conn in list(self.served.shared.connections):
            conn.drain()
        deadline = self.loop.time() + self._within(within)
        self.drain_deadline = min(deadline, self.drain_deadline or deadline)

    def _stop_accepting(self) -> None:
        self.accepting_until = None
        if not self.done.done():
            self.served.stop_accepting()
            self._drain_progress(self.loop.time())

    def _drain_progress(self, now: float) -> None:
        if self.done.done() or self.accepting_until is not None:
            return
        served = self.served
        if served.open_connections() and now < self.drain_deadline:
            return
        served.abort_all()
        if served.shared.access_log is not None:
            served.shared.access_log.close()
        self.stock.close()
        self.channel.close("exiting")
        self.done.set_result(0)


def pickle_free_json(obj) -> bytes:
    """A snapshot as JSON bytes (only the binder's direction uses pickle)."""
    import json

    return json.dumps(obj, separators=(",", ":")).encode()
