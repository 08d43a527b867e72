"""The binder: the process systemd starts, the only one with privileges.

It validates the config, opens namespaces and makes sockets inside them (netns.py), opens the
access log and reads the certificate files, owns the admin socket, starts and supervises the
workers, applies reloads and performs upgrades. It parses no byte that a tenant, a client or an
upstream sent: it never accepts a connection and never reads one. What it reads from its own
workers is bounded control messages (channel.py), validated field by field.

Rooms: listeners.py (binding, retry, namespace and address watch, pinned /proc paths),
sockets.py (upstream sockets for the workers' stock), workers.py (fork, supervise, replace),
reload.py (a new config), upgrade.py (re-exec with the same PID), status.py (the status
document); admin.py (the admin socket) is shared with the CLI.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import resource
import signal
import socket
import time

from nsproxy import (
    __version__,
    accesslog,
    admin,
    channel,
    config,
    daemonlog,
    heap,
    netns,
    privileges,
    procstat,
    schema,
    systemd,
    titles,
    tls_tickets,
)
from nsproxy.binder import early_signals
from nsproxy.binder.listeners import Listeners
from nsproxy.binder.socket_budget import SocketBudget
from nsproxy.binder.sockets import Missing, UpstreamSockets
from nsproxy.binder.workers import WorkerPool
from nsproxy.cert_store import CertificateStore
from nsproxy.descriptors import workers as worker_count  # the count the budget is for
from nsproxy.health_table import HealthTable
from nsproxy.sharedcounts import SharedCounts, Slots
from nsproxy.worker import main as worker_main

log = logging.getLogger("nsproxy")

SWEEP = 1.0  # seconds between two looks at namespaces and workers
START_TIMEOUT = 60.0  # seconds the first workers have to become ready
MAX_READY_LINES = 100  # listeners named in the answer to /ready
CERTIFICATES_NOT_KEPT = "certificate files: cannot keep them for the workers"


def load_config(
    path: str, previous: dict | None = None, parts: dict | None = None
) -> tuple[config.Config, bytes]:
    """(config, the file's bytes): config.load, keeping the bytes (an upgrade hands them to
    the new binder, which falls back to them if it refuses the file). Raises ConfigError."""
    data = config.read_file(path)  # never waits (a FIFO), nothing but a regular file
    return config.parse(data, previous, parts, source=path), data


class Binder:
    """Serves one configuration file with its workers (see the module docstring)."""

    def __init__(self, config_path: str, cfg: config.Config, config_bytes: bytes = b""):
        self.config_path = config_path
        self.config = cfg
        self.config_bytes = config_bytes
        self.tenant_specs = {t.name: t for t in cfg.tenants}
        self.loop = asyncio.get_running_loop()
        self.registry = netns.Registry()
        self.listeners = Listeners(
            self.loop, self.registry, self._serve, self._unserve, worker_count(cfg)
        )
        self.upstream_sockets = UpstreamSockets(self.loop, self.registry, self._netns_changed)
        self.pool = WorkerPool(self, self.loop)
        self.counts = SharedCounts.create()
        self.slots = Slots(self.counts)
        for spec in cfg.tenants:
            self.slots.slot(spec.name)
        # Active health checks: worker 0 writes, every worker reads (an upgrade hands it on).
        self.health = HealthTable.create()
        self.generation = 1
        self.credentials: privileges.Credentials | None = None
        self.cert_files = CertificateStore()  # path -> bytes, in a memfd (cert_store.py)
        self.certificates_sent = 0  # the store's version every running worker has been sent
        self.ticket_keys = tls_tickets.new_keys()  # TLS session tickets valid in every worker
        self.ticket_keys_at = time.monotonic()  # when they were drawn (timeouts.ticket_keys)
        self.cert_stats: dict[str, tuple] = {}
        self.access_log_fd: int | None = None
        self.metrics_sock: socket.socket | None = None
        self.metrics_address: tuple[str, int] | None = None  # where metrics_sock listens
        self.admin_server = None
        self.reload_lock = asyncio.Lock()
        self.stopped = asyncio.Event()
        self.stopping = False
        self.exit_code = 0
        self.last_reload_error: str | None = None
        self.sweeper = None
        self.serve_batch: dict[int, list] = {}  # worker index -> [(sid, tenant, digest, sock)]
        self.socket_budget = SocketBudget()
        self.started_at = time.time()
        self.upgrades = 0
        self.reload_success_time = 0.0  # Unix time the running config was applied
        self.watchdog_timer = None
        titles.set_title(titles.binder_title(cfg.instance))

    # -- start / stop ---------------------------------------------------------------------
    async def start(self) -> None:
        raise_nofile_limit()
        privileges.forbid_ptrace()
        self.credentials = privileges.worker_credentials(getattr(self.config, "user", None))
        keep_certificates(self)
        # First of all that binds: a socket another running daemon serves is refused before
        # any of its tenants' addresses is bound a second time.
        admin_sock = admin.claim(self.config.admin_socket)  # AdminError: see serve()
        self.access_log_fd = self._open_access_log(self.config.access_log)
        started = time.monotonic()
        for spec in self.config.tenants:
            self.listeners.add(spec)
        self.metrics_sock = self._metrics_socket(self.config.metrics_listen)
        self.metrics_address = self.config.metrics_listen if self.metrics_sock else None
        self.admin_server = await admin.start(self, self.config.admin_socket, sock=admin_sock)
        self.pool.start(worker_count(self.config))
        await self.pool.wait_ready(self.generation, START_TIMEOUT)
        if self.pool.fatal:
            raise SystemExit(f"nsproxy: {self.pool.fatal}")
        self._begin_serving()
        bound = sum(len(b.sockets) for b in self.listeners.tenants.values())  # listeners
        log.info(
            "serving %d tenants, %d/%d listeners bound in %.3f s (generation %d, %d workers as %s)",
            len(self.listeners.tenants),
            bound,
            self.config.listener_count(),
            time.monotonic() - started,
            self.generation,
            len(self.pool.serving()),
            self.credentials,
        )
        self.reload_success_time = time.time()
        systemd.ready(f"{len(self.listeners.tenants)} tenants")

    def _begin_serving(self) -> None:
        from nsproxy.binder import upgrade

        handlers = {
            signal.SIGHUP: self._sighup,
            signal.SIGTERM: self._sigterm,
            signal.SIGINT: self._sigterm,
            signal.SIGUSR1: self._sigusr1,
        }
        # Blocked while the handlers change hands, so a signal meanwhile is neither noted by
        # early_signals and also written to the loop's wakeup pipe (acted on twice) nor lost.
        signal.pthread_sigmask(signal.SIG_BLOCK, early_signals.HELD)
        try:
            for sig, handler in handlers.items():
                self.loop.add_signal_handler(sig, handler)
            upgrade.watch_stops()  # a stop just before an upgrade's execve is seen
            came = early_signals.release()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, early_signals.HELD)
        for sig in came:
            log.info("%s came while starting: acting on it now", signal.Signals(sig).name)
            handlers[sig]()
        self.sweeper = self.loop.call_later(SWEEP, self._sweep)
        interval = systemd.watchdog_interval()
        if interval is not None:
            self.watchdog_timer = self.loop.call_soon(self._watchdog, interval)

    def _watchdog(self, interval: float) -> None:
        """``WATCHDOG=1`` every ``interval`` seconds, only while this loop runs and every
        serving worker has sent a heartbeat within max(3 heartbeats, interval): a hung worker
        is replaced by the pool (workers.py, HUNG_AFTER) well before; if that fails, the pings
        stop and systemd restarts the daemon (WatchdogSec= in the unit)."""
        self.watchdog_timer = self.loop.call_later(interval, self._watchdog, interval)
        if self.pool.answering(max(3 * worker_main.HEARTBEAT, interval)):
            systemd.watchdog()

    def _sigusr1(self) -> None:
        self.reopen_logs("SIGUSR1")

    def reopen_logs(self, why: str) -> None:
        """Open the access log and the daemon log anew, when they are files (logrotate renamed
        them; SIGUSR1 and every reload), and hand them to every worker, which writes what it
        buffered to the old file first. A file that cannot be opened stays as it was."""
        fds, fields = [], {}
        try:
            target = self.config.access_log
            if target and target != "-" and self.access_log_fd is not None:
                try:
                    fd = accesslog.open_target(target)
                except OSError as exc:
                    log.error("%s: access_log %s: %s; still writing to the old file",
                              why, target, exc.strerror)  # fmt: skip
                else:
                    fds.append(fd)
                    fields["access"] = True
                    # Workers forked from now on inherit the new file under the old number.
                    os.dup2(fd, self.access_log_fd, inheritable=False)
            try:
                fd = daemonlog.reopen()
            except OSError as exc:
                log.error("%s: log.path: %s; still writing to the old file", why, exc.strerror)
            else:
                if fd is not None:
                    fds.append(fd)
                    fields["log"] = True
            if fds:
                self.pool.broadcast("reopen", fds, everyone=True, **fields)
                log.info("%s: logs reopened", why)
        finally:
            channel.close_fds(fds)

    def _sighup(self) -> None:
        from nsproxy.binder import reload

        self.loop.create_task(reload.reload(self))

    def _sigterm(self) -> None:
        self._stop()

    def fatal_error(self, reason: str) -> None:
        """Something no new worker can fix (privileges): stop with exit status 1."""
        self.exit_code = 1
        self._stop()

    def _stop(self) -> None:
        """One shutdown, however many stop signals the loop reads at once."""
        if not self.stopping:
            self.stopping = True
            self.loop.create_task(self.shutdown())

    async def shutdown(self) -> None:
        """Stop accepting everywhere, let open requests finish (up to timeouts.drain), exit.
        Started by ``_stop`` only."""
        systemd.stopping()
        log.info("stopping: %d workers draining", len(self.pool.workers))
        self.pool.stopping = True
        for handle in list(self.pool.workers.values()):
            self.pool.drain(handle, "stop", self.config.timeouts["drain"])
        self.listeners.close()
        self.upstream_sockets.close()
        if self.metrics_sock is not None:
            self.metrics_sock.close()
        await self.pool.stop(self.config.timeouts["drain"])
        if self.admin_server is not None:
            self.admin_server.close()
            with contextlib.suppress(OSError):
                os.unlink(self.config.admin_socket)
        self.stopped.set()

    # -- what workers get -----------------------------------------------------------------
    def seed(self, index: int, row: int, worker_end: socket.socket) -> worker_main.Seed:
        self._flush_serves()
        return worker_main.Seed(
            index=index,
            counts=self.counts.for_row(row),
            health=self.health,
            slots=dict(self.slots.of),
            generation=self.generation,
            config=self.config,
            files=self.cert_files.view(),
            served=self.listeners.served(index),
            channel=worker_end,
            access_log_fd=self.access_log_fd,
            access_log_target=self.config.access_log,
            metrics_sock=self.metrics_sock if index == 0 else None,
            credentials=self.credentials,
            ticket_keys=self.ticket_keys,
            binder=self,
        )

    def _serve(self, binding, digest: bytes, index: int, sid: int, sock: socket.socket) -> None:
        """A socket for worker ``index`` (the workers of that index get it; one forked later
        inherits it)."""
        if not self.pool.workers:
            return  # before the first fork: the workers inherit it
        if not self.serve_batch:
            self.loop.call_soon(self._flush_serves)
        batch = self.serve_batch.setdefault(index, [])
        batch.append((sid, binding.name, digest.hex(), sock))
        if len(batch) >= channel.MAX_FDS:
            self._flush_serves()

    def _flush_serves(self) -> None:
        batches, self.serve_batch = self.serve_batch, {}
        for index, batch in batches.items():
            live = [entry for entry in batch if entry[3].fileno() >= 0]  # unbound meanwhile
            if live:
                self.pool.broadcast(
                    "serve",
                    [entry[3].fileno() for entry in live],
                    index=index,
                    listeners=[list(entry[:3]) for entry in live],
                )

    def _unserve(self, sids: list[int]) -> None:
        self._flush_serves()
        for start in range(0, len(sids), 4000):
            self.pool.broadcast("unserve", everyone=True, sids=sids[start : start + 4000])

    def _netns_changed(self, identity: tuple) -> None:
        self.pool.broadcast("netns_changed", everyone=True, identity=list(identity))

    def need_sockets(self, handle, message: dict) -> None:
        """A worker's ``need_sockets``: sockets inside its tenant's upstream namespace."""
        ident = message.get("id")
        if not isinstance(ident, int):
            raise channel.ChannelError("need_sockets: id must be an integer")
        count = message.get("count")
        spec = (
            self.tenant_specs.get(message.get("tenant"))
            if isinstance(message.get("tenant"), str)
            else None
        )
        budget = self.socket_budget
        if (
            spec is not None
            and isinstance(count, int)
            and not budget.allows(handle.pid, spec.name, count)
        ):
            handle.channel.send("sockets", reply_to=ident, error="too many sockets asked for")
            return
        socks, identity = self.upstream_sockets.make(
            spec, message.get("upstream"), message.get("family"), count
        )
        if spec is not None:
            budget.spend(handle.pid, spec.name, len(socks))
        try:
            if socks:
                handle.channel.send(
                    "sockets", [s.fileno() for s in socks], reply_to=ident, identity=list(identity)
                )
            else:
                handle.channel.send(
                    "sockets",
                    reply_to=ident,
                    error=str(identity),
                    missing=isinstance(identity, Missing),
                )
        finally:
            for sock in socks:
                sock.close()

    async def relay_metrics(self, handle, ident) -> None:
        """The metrics worker's ``metrics?``: every worker's snapshot memfd, relayed unread,
        with the binder's counters."""
        if not isinstance(ident, int):
            return
        snapshots = await self.pool.snapshots(5.0)
        fds = [fd for _, fd in snapshots][: channel.MAX_FDS - 1]
        doc = json.dumps({"listeners": self.listener_states()}, separators=(",", ":"))
        made = []  # the listeners' memfd, made here
        try:
            made.append(channel.sealed_memfd(doc.encode(), "nsproxy-listeners"))
        except OSError as exc:  # EMFILE, ENOMEM: this scrape fails, the next may not
            reply = {"error": f"the binder could not write the listeners' states: {exc.strerror}"}
        else:
            reply = {"binder": self.counters(), "listeners_fd": True}
        try:
            if handle.channel is not None and not handle.channel.closed:
                handle.channel.send("metrics", [*fds, *made] if made else [], reply_to=ident,
                                    **reply)  # fmt: skip
        finally:
            channel.close_fds([*(fd for _, fd in snapshots), *made])

    def answer_ready(self, handle, ident) -> None:
        """The metrics worker's ``ready?`` (GET /ready)."""
        if not isinstance(ident, int) or handle.channel is None or handle.channel.closed:
            return
        ready, text = self.readiness()
        handle.channel.send("ready_answer", reply_to=ident, ready=ready, text=text[:30000])

    def counters(self) -> dict:
        return {
            "pid": os.getpid(),
            "version": __version__,
            "workers_started": self.pool.started,
            "worker_deaths": self.pool.deaths,
            "upgrades": self.upgrades,
            "generation": self.generation,
            "reload_refused": self.last_reload_error is not None,
            "reload_success_time": self.reload_success_time,
            "process": procstat.sample(),
        }

    def listener_states(self) -> list[list[str]]:
        """[tenant, listen, protocol, state] of every listener, state as the metrics name it:
        serving (bound), waiting (for its namespace or address; gone: its namespace went
        away) or error."""
        out = []
        for name, binding in self.listeners.tenants.items():
            for li in binding.spec.listeners:
                state = binding.states.get(li.digest, ("waiting", None))[0]
                state = {"bound": "serving", "gone": "waiting"}.get(state, state)
                out.append([name, li.listen, li.protocol, state])
        return out

    def readiness(self) -> tuple[bool, str]:
        """(ready, text) for /ready: every serving worker on the current generation and no
        listener in error; the text names what is not serving."""
        problems, waiting = [], []
        serving = self.pool.serving()
        behind = [w for w in serving if w.generation < self.generation]
        kept = [w for w in self.pool.workers.values() if w.state == "old"]
        if not serving:
            problems.append("no worker is serving")
        elif behind:
            problems.append(
                f"{len(behind)} of {len(serving)} workers have not applied generation "
                f"{self.generation} yet"
            )
        if kept:
            problems.append(
                f"{len(kept)} workers of a previous generation serve on until their "
                "replacements start"
            )
        indexes = {w.index for w in serving} | {w.index for w in kept}
        empty = [i for i in range(self.pool.wanted) if i not in indexes]
        if serving and empty:  # what the kernel gives their sockets waits for a new worker
            problems.append(f"no worker accepts for worker indexes {empty} (being started)")
        workers_problems = len(problems)
        for name, binding in self.listeners.tenants.items():
            for li in binding.spec.listeners:
                state, error = binding.states.get(li.digest, ("waiting", None))
                if state == "error":
                    problems.append(f"tenant {name} listener {li.listen}: {error}")
                elif state != "bound":
                    waiting.append(f"tenant {name} listener {li.listen}: {state}: {error}")
        total = self.config.listener_count()
        unserved = len(problems) - workers_problems + len(waiting)
        head = f"generation {self.generation}, {total - unserved}/{total} "
        head += "listeners serving"
        shown = [*problems, *waiting]
        if len(shown) > MAX_READY_LINES:
            shown = [*shown[:MAX_READY_LINES], f"... and {len(shown) - MAX_READY_LINES} more"]
        lines = [("not ready: " if problems else "ready: ") + head, *shown]
        return not problems, "\n".join(lines) + "\n"

    # -- files ----------------------------------------------------------------------------
    def read_certificates(self, cfg: config.Config) -> None:
        """Read the certificate and key files of cfg's https listeners whose files changed
        since they were last read (workers cannot read them) into the certificate store
        (cert_store.py), forget those no listener names any more, and compact the store when
        its dead space calls for it (its ``version`` then moves on: workers need its new
        descriptor and index). Raises OSError when the store takes no more bytes: the store
        and what the binder knows of the files are unchanged then.

        The files' state (tls.file_identity) is the one config.load validated
        (``Listener.cert_state``), not stat-ed again: 3000 tenants name 6000 files. The bytes
        are the very ones the validation loaded (tls.take_validated_files); a file a kept
        listener names that the store lacks is read here, and served only if it is still in
        the state it was validated in (else logged: the next reload validates it)."""
        from nsproxy import tls

        wanted: dict[str, tuple] = {}
        for tenant in cfg.tenants:
            for li in tenant.listeners:
                if li.protocol == "https" and li.cert_state:
                    for entry in li.cert_state:
                        # (path, *identity); (path, errno) and (field, None) name no file
                        if len(entry) > 2 and entry[0] not in wanted:
                            wanted[entry[0]] = entry[1:]
        validated = tls.take_validated_files()
        changed, states = {}, {}
        for path, state in wanted.items():
            if self.cert_stats.get(path) == state and path in self.cert_files:
                continue
            read = validated.get(path)
            if read is None:  # a kept listener's file the store lost: read it again
                try:
                    read = tls.read_certificate_file(path)
                except OSError as exc:
                    log.error("cannot read %s: %s", path, exc.strerror)
                    continue
                if read[0] != state:  # bytes nobody validated: never served
                    log.error("%s changed since it was validated; reload to serve it", path)
                    continue
            # The state the served bytes were read in: a file replaced between the config's
            # stat and the validation's read differs from the config's state, so the next
            # reload sees the listener rotated and validates it again.
            changed[path], states[path] = read[1], read[0]
        gone = [path for path in self.cert_files if path not in wanted]
        self.cert_files.update(changed)
        self.cert_files.discard(gone)
        for path in gone:
            del self.cert_stats[path]
        self.cert_stats.update(states)
        self.cert_files.settle()

    def _open_access_log(self, target: str | None) -> int | None:
        if target is None:
            return None
        try:
            return accesslog.open_target(target)
        except OSError as exc:
            log.error("access_log %s: %s; requests are not logged", target, exc.strerror)
            return None

    def _metrics_socket(self, address) -> socket.socket | None:
        if address is None:
            return None
        try:
            return self.registry.listening_socket(None, *address)
        except OSError as exc:
            log.error("metrics.listen %s:%d: %s", address[0], address[1], exc.strerror or exc)
            return None

    # -- the one-second sweep -------------------------------------------------------------
    def _sweep(self) -> None:
        self.sweeper = self.loop.call_later(SWEEP, self._sweep)
        for job in (self.upstream_sockets.sweep, self.listeners.sweep, self.pool.sweep):
            try:
                job()
            except Exception:
                log.exception("internal error in the binder's sweep")
        if time.monotonic() - self.ticket_keys_at >= self.config.timeouts["ticket_keys"]:
            self.rotate_ticket_keys()

    def rotate_ticket_keys(self) -> None:
        """A new set of TLS ticket keys for every current worker; the old set is dropped. A
        draining worker, or one from before an upgrade (it may not know the message), keeps
        its keys until it exits: a ticket it issues meanwhile costs one full handshake."""
        self.ticket_keys = tls_tickets.new_keys()
        self.ticket_keys_at = time.monotonic()
        keys = base64.b64encode(self.ticket_keys).decode()
        self.pool.broadcast("ticket_keys", keys=keys)
        log.info(
            "TLS ticket keys rotated (timeouts.ticket_keys: %g s)",
            self.config.timeouts["ticket_keys"],
        )

    # -- admin ----------------------------------------------------------------------------
    async def reload(self) -> tuple[bool, str]:
        from nsproxy.binder import reload

        return await reload.reload(self)

    async def upgrade(self, reply_sock) -> tuple[bool, str]:
        from nsproxy.binder import upgrade

        return await upgrade.upgrade(self, reply_sock)

    async def status(self) -> dict:
        from nsproxy.binder import status

        return await status.document(self)


def keep_certificates(binder: Binder) -> None:
    """The start's (or an upgrade's) read of the certificate files into the store; a store
    that takes no more bytes ends the process with a sentence (SystemExit)."""
    try:
        binder.read_certificates(binder.config)
    except OSError as exc:
        raise SystemExit(f"nsproxy: {CERTIFICATES_NOT_KEPT}: {exc}") from None
    binder.certificates_sent = binder.cert_files.version  # the workers' seeds carry it


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


async def serve(config_path: str, cfg: config.Config, config_bytes: bytes, handoff=None) -> int:
    """``nsproxy run``: the binder's life (from a handed-over state when re-executed by
    upgrade)."""
    from nsproxy.binder import upgrade

    binder = Binder(config_path, cfg, config_bytes)
    try:
        if handoff is not None:
            await upgrade.resume(binder, handoff)
        else:
            await binder.start()
    except (privileges.PrivilegeError, admin.AdminError) as exc:
        raise SystemExit(schema.one_line(f"nsproxy: {exc}")) from None
    heap.settle()
    await binder.stopped.wait()
    return binder.exit_code


__all__ = ["Binder", "serve", "worker_count", "__version__"]
