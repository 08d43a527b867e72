"""Reload: a new config, applied by difference, across every worker; refused as a whole.

The binder reads and validates the file (config.load re-checks only tenants whose JSON or
certificate files changed). Refused: the running config stays, the reason goes to the log,
the status and the reply, and systemd gets READY=1 again. The changed certificate files are
read into the certificate store (cert_store.py) before anything else changes; a store that
takes no more bytes refuses the file too. Accepted: the binder binds what was added, unbinds
what was removed (its listeners.py), and sends every worker the new generation: a memfd with
the config, in which unchanged tenants are only their names (the worker keeps its own objects
for them: pools, connections and all), and, when the store changed since the workers were
last sent it, its index and read-only descriptor. The reply waits until every worker has
applied it, so that a client told "generation N" never meets generation N-1 (a worker that
does not apply it in time is replaced). Then ``workers`` and ``user`` changes take effect (a
changed user: the workers are replaced one set by the next, as in an upgrade).
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import time

from nsproxy import accesslog, channel, config, heap, priority, privileges, systemd, tls

log = logging.getLogger("nsproxy")

APPLY_TIMEOUT = 60.0  # seconds every worker has to apply a generation
PROBE_MARGIN = 16  # descriptors a reload needs beyond its new sockets (memfds, log files)


def _refused(binder, problems: list[str]) -> tuple[bool, str]:
    message = "new configuration refused, the running one stays: " + "; ".join(problems)
    log.error("%s", message)
    binder.last_reload_error = message
    systemd.ready()
    return False, message


async def reload(binder) -> tuple[bool, str]:
    """Re-read the binder's config file and apply the difference; (ok, message)."""
    from nsproxy.binder.main import CERTIFICATES_NOT_KEPT, load_config

    async with binder.reload_lock:
        if binder.stopping:  # e.g. a SIGHUP held while starting, replayed after a SIGTERM
            return False, "the daemon is stopping"
        systemd.reloading()
        started, cpu_started = time.monotonic(), time.process_time()
        # Parsing a big config allocates tens of thousands of objects: without the pause,
        # the collector would walk every object of every tenant several times meanwhile.
        # Ahead of the workers on the CPU (priority.py); no await inside.
        with heap.collector_paused(), priority.ahead() as nice:
            kept = {t.name: t for t in binder.config.tenants}
            try:
                with tls.verdicts_trusted():
                    new, data = load_config(binder.config_path, kept, binder.config.parts)
                checked, check_cpu = time.monotonic(), time.process_time() - cpu_started
                credentials = privileges.worker_credentials(getattr(new, "user", None))
            except (config.ConfigError, privileges.PrivilegeError) as exc:
                problems = exc.problems if isinstance(exc, config.ConfigError) else [str(exc)]
                return _refused(binder, problems)
            replacing = (credentials.uid, credentials.gid) != (
                binder.credentials.uid, binder.credentials.gid
            )  # fmt: skip
            short = _descriptors_short(binder, new, replacing)
            if short is not None:  # all or nothing: nothing is bound, the old one serves
                return _refused(binder, [short])
            try:  # before anything else changes: the store's only error refuses the file
                binder.read_certificates(new)
            except OSError as exc:
                return _refused(binder, [f"{CERTIFICATES_NOT_KEPT}: {exc}"])
            old = binder.config
            binder.config_bytes = data
            counts = _apply(binder, old, new)
            generation = binder.generation + 1
            for spec in new.tenants:
                binder.slots.slot(spec.name)
            binder.slots.keep_only(t.name for t in new.tenants)
            payload = {"config": _wire(new, kept), "slots": dict(binder.slots.of)}
            fds = []
            if new.access_log != old.access_log:
                if binder.access_log_fd is not None:
                    accesslog.close_fd(binder.access_log_fd)
                binder.access_log_fd = binder._open_access_log(new.access_log)
                payload["access_log"] = new.access_log or ""
            store = binder.cert_files
            if store.version != binder.certificates_sent:  # its descriptor goes last
                payload["certificates"] = store.index
            memfd = channel.sealed_memfd(pickle.dumps(payload, pickle.HIGHEST_PROTOCOL), "config")
            try:
                fds = [memfd] + ([binder.access_log_fd] if binder.access_log_fd is not None
                                 and "access_log" in payload else [])  # fmt: skip
                if "certificates" in payload:
                    fds.append(store.reader_fd)
                binder._flush_serves()
                binder.generation = generation
                binder.pool.broadcast("config", fds, generation=generation)
                binder.certificates_sent = store.version
                sent = time.monotonic()
            finally:
                channel.close_fds([memfd])
            if new.metrics_listen != binder.metrics_address:  # (a failed move is tried again)
                _move_metrics(binder, new)
        late = await binder.pool.wait_ready(generation, APPLY_TIMEOUT)
        if binder.stopping:  # a SIGTERM meanwhile: no worker is started or resized now
            return False, "the daemon is stopping"
        applied = time.monotonic()
        names = {u.netns for t in new.tenants for u in t.upstreams.values() if u.netns}
        binder.upstream_sockets.keep_only(names)
        previous = binder.pool.serving()  # (what a change of user replaces)
        if replacing:  # every worker started from here on runs as the new user
            binder.credentials = credentials
        if getattr(new, "workers", "auto") != getattr(old, "workers", "auto"):
            from nsproxy import descriptors

            binder.pool.resize(descriptors.workers(new))
        if replacing:
            await replace_workers(binder, "the workers' user changed", previous)
        binder.last_reload_error = None
        binder.reload_success_time = time.time()
        binder.reopen_logs("reload")
        added, removed, changed = counts
        log.info(
            "reloaded in %.3f s (read and check %.3f, %.3f of it on the CPU, at nice %d; bind "
            "and send %.3f, workers applied %.3f): generation %d, "
            "%d added, %d removed, %d changed, %d kept%s",
            time.monotonic() - started,
            checked - started,
            check_cpu,
            nice,
            sent - checked,
            applied - sent,
            generation,
            added,
            removed,
            changed,
            len(new.tenants) - added - changed,
            f"; {len(late)} workers replaced (too slow)" if late else "",
        )
        heap.settle()
        systemd.ready(f"{len(new.tenants)} tenants")
        return True, f"generation {generation}"


def _descriptors_short(binder, new: config.Config, replacing: bool = False) -> str | None:
    """Why the binder cannot make what ``new`` needs, or None. The new listening sockets
    (one per listener not bound yet and worker), the workers a larger ``workers`` starts (a
    socket of every listener, a channel and a pidfd each), a channel and a pidfd for every
    new worker when ``replacing`` them all (their user changes: :func:`replace_workers`, the
    old ones drain meanwhile), a moved metrics socket and the new tenants' namespaces are
    opened here first, as /dev/null, with :data:`PROBE_MARGIN` for
    the generation's memfd and the like, then closed: a limit (EMFILE) or a full system table
    (ENFILE) refuses the reload before anything is bound, so the old generation keeps serving
    and no worker is sent a part of the new one. The binder runs one thread: what is free
    here is free when the sockets are made. A worker must have room for its socket of every
    new listener too (else the kernel would cut the fd list of the message that carries
    them: MSG_CTRUNC): the count its last heartbeat gave (at most a second old) decides."""
    from nsproxy import descriptors

    listeners = binder.listeners
    width, wanted = listeners.width, descriptors.workers(new)
    count = added = 0
    for spec in new.tenants:
        binding = listeners.tenants.get(spec.name)
        kept = binding.sockets if binding is not None and binding.spec.netns == spec.netns else {}
        added += sum(1 for li in spec.listeners if li.digest not in kept)
        count += 0 if binding is not None else 2  # its namespace file and address watch
    count += added * width
    if added:  # each worker gets its socket of every new listener, in one or more messages
        for handle in binder.pool.serving():
            if handle.fds is not None and handle.fds[0] + added + PROBE_MARGIN > handle.fds[1]:
                return (
                    f"file descriptors: worker {handle.index} (pid {handle.pid}) holds "
                    f"{handle.fds[0]} of its {handle.fds[1]} and the new listeners need "
                    f"{added} more there, with {PROBE_MARGIN} to spare: use fewer listeners "
                    "or workers, or raise the limit (LimitNOFILE=)"
                )
    if wanted > width:
        count += (new.listener_count() + 2) * (wanted - width)
    why = "listening sockets: one per new listener and worker"
    if replacing:
        count += 2 * wanted
        why += f"; a channel and a pidfd for each of the {wanted} workers of the new user"
    if new.metrics_listen is not None and new.metrics_listen != binder.metrics_address:
        count += 1
    if not count:
        return None
    fds: list[int] = []
    try:
        for _probe in range(count + PROBE_MARGIN):
            fds.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        if exc.errno not in (errno.EMFILE, errno.ENFILE):
            raise
        return (
            f"file descriptors: the new configuration needs {count} more in the binder "
            f"({why}), with {PROBE_MARGIN} to spare, and only {len(fds)} are free "
            f"({exc.strerror}; RLIMIT_NOFILE {descriptors.limit()}): use fewer listeners or "
            "workers, or raise the limit (LimitNOFILE=)"
        )
    finally:
        channel.close_fds(fds)
    return None


def _apply(binder, old: config.Config, new: config.Config) -> tuple[int, int, int]:
    """The binder's side of a reload: listeners bound and unbound; (added, removed, changed)."""
    listeners = binder.listeners
    wanted = {t.name: t for t in new.tenants}
    added = removed = changed = 0
    for name in [n for n in listeners.tenants if n not in wanted]:
        listeners.remove(name)
        removed += 1
    binder.config = new
    binder.tenant_specs = wanted
    for spec in new.tenants:
        binding = listeners.tenants.get(spec.name)
        if binding is None:
            listeners.add(spec)
            added += 1
        elif binding.spec is not spec:
            if binding.spec.digest != spec.digest:
                changed += 1
            else:  # same JSON, other certificate files: the workers load them, no rebinding
                old_states = {li.digest: li.cert_state for li in binding.spec.listeners}
                for li in spec.listeners:
                    if li.protocol == "https" and old_states.get(li.digest) != li.cert_state:
                        log.info("tenant %s: %s: certificates reloaded", spec.name, li.listen)
            listeners.update(binding, spec)
    return added, removed, changed


def _wire(new: config.Config, kept: dict) -> config.Config:
    """A copy of ``new`` whose unchanged tenants (the very objects of the running config)
    are only their names: what a worker needs to apply the generation."""
    wire = config.Config.__new__(config.Config)
    for name in config.Config.__slots__:
        if hasattr(new, name):
            setattr(wire, name, getattr(new, name))
    wire.parts = {}  # the binder's registry: the workers never parse
    wire.tenants = [t.name if kept.get(t.name) is t else t for t in new.tenants]
    return wire


def _move_metrics(binder, new: config.Config) -> None:
    """``metrics.listen`` changed: the new socket is bound before the old one closes, so a
    new address that cannot be bound (taken by another process, or overlapping the current
    one: worker 0 holds its copy of the old socket until it is told) leaves the metrics where
    they were, with an error in the log."""
    address = new.metrics_listen
    sock = None
    if address is not None:
        try:
            sock = binder.registry.listening_socket(None, *address)
        except OSError as exc:
            where = binder.metrics_address
            if binder.metrics_sock is None:
                stay = "metrics are off"
            else:
                stay = f"the metrics stay on {where[0]}:{where[1]}"
                if where[1] == address[1]:
                    stay += " (to move them to an overlapping address, change the port first)"
            log.error("metrics.listen %s:%d: %s; %s", address[0], address[1],
                      exc.strerror or exc, stay)  # fmt: skip
            return
    if binder.metrics_sock is not None:
        binder.metrics_sock.close()
    binder.metrics_sock, binder.metrics_address = sock, address
    _send_metrics_socket(binder)


def _send_metrics_socket(binder) -> None:
    for handle in binder.pool.serving():
        if handle.index == 0:
            fds = [binder.metrics_sock.fileno()] if binder.metrics_sock is not None else []
            handle.channel.send("metrics_socket", fds)


async def replace_workers(binder, reason: str, previous: list) -> None:
    """Start a new worker for each of ``previous`` that still serves (a resize just now may
    have retired some, and started others already new), then let the old ones drain as their
    replacements serve (WorkerPool.hand_over; no listener closes)."""
    old = [h for h in previous if h.state in ("starting", "serving")]
    log.info("%s: starting %d new workers, then draining the old ones", reason, len(old))
    for handle in old:
        handle.state = "old"
    for handle in old:
        binder.pool.spawn(handle.index)
    await binder.pool.wait_ready(binder.generation, APPLY_TIMEOUT)
    binder.pool.hand_over(old, 0)
