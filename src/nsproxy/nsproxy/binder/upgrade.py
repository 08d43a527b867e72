"""Seamless upgrade: the binder re-executes itself, keeping its PID and every open socket.

``nsproxy upgrade`` (admin command ``upgrade``) makes the binder:

1. run the installed ``nsproxy check`` on its config (a new build that would refuse it is not
   started: the running one stays and says why);
2. write its state into a memfd (listening sockets by tenant and listener digest with their
   socket ids, namespace fds and pins, the admin and metrics sockets, the access log, the
   running config's bytes, its workers' pids and channels, counters, the shared connection
   counts and health table) and clear close-on-exec
   on exactly those fds;
3. ``execve`` the installed nsproxy with the same arguments, the memfd named in
   ``NSPROXY_HANDOFF_FD``. Same PID: systemd's MAINPID and NotifyAccess=main hold, and the old
   workers are still this process's children.

The new binder (:func:`resume`) adopts all of it, loads the config (the one on disk; if the new
build refuses it, the bytes the old one ran), binds what is missing, forks new workers, and
once they are ready tells the old ones to drain: they stop accepting (the sockets stay open in
the binder and the new workers, so no connection is refused) and give their keep-alive clients
``Connection: close`` on the next response. It answers the ``nsproxy upgrade`` command on the
connection it inherited, and sends READY=1. No listening socket is closed at any point.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import os
import signal
import socket
import sys
import time

from nsproxy import __version__, admin, config, health_table, netns, privileges, schema, systemd
from nsproxy.binder import early_signals
from nsproxy.health_table import HealthTable
from nsproxy.sharedcounts import SharedCounts, Slots

log = logging.getLogger("nsproxy")

HANDOFF_ENV = "NSPROXY_HANDOFF_FD"
CHECK_TIMEOUT = 120.0  # seconds the installed `nsproxy check` may take
MAX_HANDOFF = 256 * 1024 * 1024
STOPS = (signal.SIGTERM, signal.SIGINT)  # a stop; see upgrade()


def command() -> list[str]:
    """How to run the installed nsproxy: the script this binder was started as, when it is an
    absolute path (a virtualenv's bin/nsproxy), else this interpreter with ``-m nsproxy``."""
    script = sys.argv[0]
    if os.path.isabs(script) and os.access(script, os.X_OK) and not script.endswith(".py"):
        return [script]
    return [sys.executable, "-m", "nsproxy"]


async def upgrade(binder, reply_sock) -> tuple[bool, str]:
    """Re-execute the installed nsproxy in this process; (False, why) if it was not done.
    On success this never returns: the new binder answers on ``reply_sock``."""
    if binder.stopping:
        return False, "the daemon is stopping"
    async with binder.reload_lock:
        argv = command()
        rc, output = await run_check([*argv, "check", binder.config_path], CHECK_TIMEOUT)
        if binder.stopping:  # a SIGTERM during the check: stop, do not re-execute
            return False, "the daemon is stopping"
        if rc != 0:
            reason = " ".join(output.decode(errors="replace").split())[-2000:]
            message = f"upgrade refused: the installed nsproxy ({argv[-1]}) does not accept "
            message += f"{binder.config_path}: {reason or f'exit status {rc}'}"
            log.error("%s", message)
            return False, message
        # From here to the execve nothing awaits, so the loop would never read a SIGTERM's
        # byte from its wakeup pipe (the execve closes it) and the stop would be lost. Blocked,
        # a stop stays pending and is seen just before the execve (_execute).
        signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
        try:
            return _execute(binder, argv, reply_sock)
        finally:  # reached only when there was no execve: a pending stop reaches the loop now
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)


def _execute(binder, argv: list[str], reply_sock) -> tuple[bool, str]:
    """Hand the state over and execve; (False, why) if that did not happen, with nothing left
    inheritable or open and systemd told READY again. Called with STOPS blocked; they are
    unblocked only for the execve itself, with their default action, which is what they have
    in the new image until it serves (execve(2) resets caught signals)."""
    systemd.reloading()
    state: dict = {}
    fds: list[int] = []
    memfd = -1
    handlers: dict = {}
    executing = False
    try:
        state, fds = _state(binder, reply_sock)
        memfd = os.memfd_create("nsproxy-handoff", 0)  # inherited by the new image
        data = json.dumps(state).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(memfd, view) :]
        for fd in fds:
            os.set_inheritable(fd, True)
        env = dict(os.environ)
        env[HANDOFF_ENV] = str(memfd)
        run_args = ["run", "--config", binder.config_path, "--log-level", _log_level()]
        log.info(
            "upgrade: executing %s %s (pid %d stays, %d workers keep serving meanwhile)",
            " ".join(argv),
            " ".join(run_args),
            os.getpid(),
            len(binder.pool.workers),
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        handlers = early_signals.ignore_for_exec()  # not fatal before the new binder's hold()
        handlers.update({signum: signal.signal(signum, signal.SIG_DFL) for signum in STOPS})
        # A stop that came before the block has run _note_stop (pthread_sigmask runs pending
        # Python handlers); one since is pending.
        if _stop_came or signal.sigpending() & set(STOPS):
            raise InterruptedError("the daemon is stopping")
        # From here to the execve, microseconds, a stop ends the process at once.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)
        executing = True
        os.execve(argv[0], [*argv, *run_args], env)
    except BaseException as exc:
        early_signals.restore(handlers)
        signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)  # until the caller's finally
        for fd in fds:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)
        if memfd >= 0:
            os.close(memfd)
        if "reply_fd" in state:
            os.close(state["reply_fd"])
        if isinstance(exc, InterruptedError):
            log.info("upgrade: not executed, a stop signal came")
            return False, "the daemon is stopping"
        systemd.ready()
        if not isinstance(exc, OSError):
            raise
        where = f"cannot execute {argv[0]}" if executing else "cannot hand the state over"
        return False, f"upgrade failed: {where}: {exc.strerror or exc}"
    return False, "unreachable"


_stop_came = False


def _note_stop(_signum: int, _frame) -> None:
    global _stop_came
    _stop_came = True


def watch_stops() -> None:
    """Note STOPS at the Python level too (the loop's wakeup fd still dispatches them), for
    ``_execute`` to see a stop whose wakeup byte the loop had not read yet. Called by the
    binder once the loop handles them (binder/main.py)."""
    for signum in STOPS:
        signal.signal(signum, _note_stop)


def _log_level() -> str:
    level = logging.getLogger().getEffectiveLevel()
    return {logging.DEBUG: "debug", logging.WARNING: "warning", logging.ERROR: "error"}.get(
        level, "info"
    )


def _state(binder, reply_sock) -> tuple[dict, list[int]]:
    """The handed-over state as JSON-able data, and the fds it names."""
    fds: list[int] = []

    def keep(fd: int | None) -> int | None:
        if fd is not None and fd >= 0:
            fds.append(fd)
            return fd
        return None

    tenants = []
    for name, binding in binder.listeners.tenants.items():
        pin = binding.pin
        tenants.append(
            {
                "name": name,
                "netns": binding.spec.netns,
                "ns_fd": keep(binding.ns.fd) if binding.ns is not None else None,
                "ns_path": binding.ns.path if binding.ns is not None else None,
                "pin": [pin.pid, keep(pin.pidfd), pin.start_time] if pin is not None else None,
                "pinned": list(binding.pinned) if binding.pinned is not None else None,
                "gone": binding.gone,
                "sockets": [
                    [sid, index, digest.hex(), keep(sock.fileno())]
                    for digest, group in binding.sockets.items()
                    for index, (sid, sock) in enumerate(group)
                ],
            }
        )
    workers = [
        {
            "pid": h.pid,
            "fd": keep(h.channel.fileno()),
            "index": h.index,
            "state": h.state,
            "row": h.row,
        }
        for h in binder.pool.workers.values()
        if h.channel is not None and not h.channel.closed
    ]
    state = {
        "version": 1,
        "from": __version__,
        "config_path": binder.config_path,
        "config_bytes": base64.b64encode(binder.config_bytes).decode(),
        "generation": binder.generation,
        "next_sid": binder.listeners.next_sid,
        "started_at": binder.started_at,
        "counters": binder.counters(),
        "admin_fd": keep(binder.admin_server.sockets[0].fileno()) if binder.admin_server else None,
        "metrics_fd": keep(binder.metrics_sock.fileno()) if binder.metrics_sock else None,
        "metrics_listen": list(binder.metrics_address or ()) or None,  # where it is bound
        "access_log_fd": keep(binder.access_log_fd),
        "counts_fd": keep(binder.counts.fd),
        "health_fd": keep(binder.health.fd),
        "health_layout": health_table.LAYOUT,
        "slots": binder.slots.of,
        "next_slot": binder.slots.next,
        "access_log": binder.config.access_log,
        "ticket_keys": base64.b64encode(binder.ticket_keys).decode(),
        "ticket_keys_age": time.monotonic() - binder.ticket_keys_at,
        "tenants": tenants,
        "workers": workers,
        "steered": binder.listeners.steered,
    }
    if reply_sock is not None:
        state["reply_fd"] = keep(os.dup(reply_sock.fileno()))
    return state, fds


def take_handoff() -> dict | None:
    """The state a binder handed over before re-executing this one (None: a plain start)."""
    value = os.environ.pop(HANDOFF_ENV, None)
    if value is None:
        return None
    fd = int(value)
    try:
        size = os.fstat(fd).st_size
        if size > MAX_HANDOFF:
            raise ValueError(f"handoff state of {size} bytes")
        data = os.pread(fd, size, 0)
        state = json.loads(data)
    finally:
        os.close(fd)
    if not isinstance(state, dict) or state.get("version") != 1:
        raise ValueError("handoff state of an unknown version")
    return state


def load_config(path: str, state: dict) -> tuple[config.Config, bytes, str | None]:
    """(config, its bytes, a warning): the file on disk, or, if this build refuses it, the
    bytes the previous binder ran. Raises ConfigError when neither is accepted."""
    from nsproxy.binder.main import load_config

    try:
        cfg, data = load_config(path)
        return cfg, data, None
    except config.ConfigError as exc:
        problems = exc.problems
        old = base64.b64decode(state.get("config_bytes") or "")
        warning = f"{path} is refused ({'; '.join(problems)}); running the previous config"
        return config.parse(old), old, warning


#: The largest timeouts.ticket_keys (config_schema.py), in seconds.
_LONGEST_KEYS = 604800.0


def ticket_keys_age(state: dict) -> float:
    """Seconds the handed-over TLS ticket keys have been in use, so that an upgrade does not
    give them a new period: the old binder's figure, kept within [0, 604800]. Unknown (a build
    from before the keys were rotated wrote none; or not a finite number): 604800, so that
    the first sweep replaces them."""
    try:
        age = float(state["ticket_keys_age"])
    except (KeyError, TypeError, ValueError):
        return _LONGEST_KEYS
    if not math.isfinite(age):
        return _LONGEST_KEYS
    return min(max(age, 0.0), _LONGEST_KEYS)


async def resume(binder, state: dict) -> None:
    """The new binder's start from a handed-over state (see the module docstring)."""
    from nsproxy.binder.listeners import Binding
    from nsproxy.binder.main import keep_certificates, raise_nofile_limit, worker_count

    started = time.monotonic()
    raise_nofile_limit()
    privileges.forbid_ptrace()
    inherited = _inherited_fds(state)
    for fd in inherited:
        with contextlib.suppress(OSError):
            os.set_inheritable(fd, False)
    cfg = binder.config
    binder.credentials = privileges.worker_credentials(getattr(cfg, "user", None))
    binder.generation = int(state.get("generation") or 0) + 1
    counters = state.get("counters") or {}
    binder.pool.started = int(counters.get("workers_started") or 0)
    binder.pool.deaths = int(counters.get("worker_deaths") or 0)
    binder.upgrades = int(counters.get("upgrades") or 0) + 1
    binder.started_at = float(state.get("started_at") or time.time())
    keep_certificates(binder)
    if state.get("ticket_keys"):  # tickets of the old workers stay valid in the new ones
        binder.ticket_keys = base64.b64decode(state["ticket_keys"])
        binder.ticket_keys_at = time.monotonic() - ticket_keys_age(state)
    if state.get("counts_fd") is not None:  # the old workers count in this very table
        os.close(binder.counts.fd)
        binder.counts = SharedCounts(state["counts_fd"])
        binder.slots = Slots(binder.counts)
        binder.slots.of = {str(k): int(v) for k, v in (state.get("slots") or {}).items()}
        binder.slots.next = int(state.get("next_slot") or 0)
        for spec in cfg.tenants:
            binder.slots.slot(spec.name)
    if isinstance(state.get("health_fd"), int):  # what the checks found goes on
        handed = HealthTable.adopt(state["health_fd"], state.get("health_layout"))
        if handed is not None:
            binder.health.map.close()
            os.close(binder.health.fd)
            binder.health = handed
    # Old workers first: they keep serving until the new ones are ready.
    old = []
    for entry in state.get("workers") or []:
        handle = binder.pool.adopt(entry["pid"], entry["fd"], entry["index"], entry.get("row", -1))
        if handle is not None:
            old.append(handle)
    # Listening sockets and namespaces, for the tenants whose namespace is the same.
    listeners = binder.listeners
    listeners.next_sid = max(listeners.next_sid, int(state.get("next_sid") or 1))
    for entry in state.get("tenants") or []:
        spec = binder.tenant_specs.get(entry["name"])
        sockets = entry.get("sockets") or []
        old_netns = entry.get("netns")
        if isinstance(old_netns, str):  # a build before one spelling handed over what was written
            old_netns = schema.netns_canonical(old_netns)
        if spec is None or spec.netns != old_netns or entry["name"] in listeners.tenants:
            _close(
                [fd for *_, fd in sockets]
                + [entry.get("ns_fd"), (entry.get("pin") or [0, None])[1]]
            )
            continue
        binding = listeners.tenants[spec.name] = Binding(spec)
        binding.gone = entry.get("gone")
        pinned = entry.get("pinned")
        if isinstance(pinned, list) and len(pinned) == 2:
            binding.pinned = (int(pinned[0]), int(pinned[1]))
        if entry.get("ns_fd") is not None:
            binding.ns = binder.registry.adopt(entry["ns_path"], entry["ns_fd"])
        if entry.get("pin"):
            pid, pidfd, start_time = entry["pin"]
            binding.pin = netns.Pin(pid, pidfd, start_time)
            binding.pinned = binding.pinned or (pid, start_time)  # (a build before "pinned")
            binder.loop.add_reader(pidfd, listeners._process_exited, binding)
        # Every index is kept, in order (a steering program counts positions): the width may
        # be lower than the old one, and then the old workers beyond it accept what is queued
        # at their sockets before those close (Listeners.resize below, WorkerPool.retire).
        # Missing indexes are added by bind() below.
        wanted = {li.digest for li in spec.listeners}
        for sid, index, digest_hex, fd in sorted(sockets, key=lambda e: e[1]):
            digest = bytes.fromhex(digest_hex)
            group = binding.sockets.setdefault(digest, []) if digest in wanted else None
            if group is not None and binding.ns is not None and index == len(group):
                group.append((sid, socket.socket(fileno=fd)))
                binding.states[digest] = ("bound", None)
            else:
                _close([fd])
        for digest in [d for d, group in binding.sockets.items() if not group]:
            del binding.sockets[digest]
        if not binding.gone:
            listeners.bind(binding)
    for spec in cfg.tenants:
        if spec.name not in listeners.tenants:
            listeners.add(spec)
    # Groups wider than the new width (fewer workers, or the old binder's shrink not done
    # yet) are steered to their first sockets; with none, a program left attached goes.
    listeners.steered = bool(state.get("steered"))
    defer = listeners.resize(listeners.width)
    # Admin socket, metrics socket, access log.
    admin_sock = (
        socket.socket(fileno=state["admin_fd"]) if state.get("admin_fd") is not None else None
    )
    binder.admin_server = await admin.start(binder, cfg.admin_socket, sock=admin_sock)
    metrics_fd = state.get("metrics_fd")
    if metrics_fd is not None and state.get("metrics_listen") == list(cfg.metrics_listen or ()):
        binder.metrics_sock = socket.socket(fileno=metrics_fd)
    else:
        _close([metrics_fd])
        binder.metrics_sock = binder._metrics_socket(cfg.metrics_listen)
    binder.metrics_address = cfg.metrics_listen if binder.metrics_sock is not None else None
    access_fd = state.get("access_log_fd")
    if access_fd is not None and state.get("access_log") == cfg.access_log:
        binder.access_log_fd = access_fd
    else:
        _close([access_fd])
        binder.access_log_fd = binder._open_access_log(cfg.access_log)
    # New workers, then the old ones drain.
    binder.pool.start(worker_count(cfg))
    await binder.pool.wait_ready(binder.generation, 60.0)
    if binder.pool.fatal:
        for handle in old:  # nothing new can serve: the old workers stay
            if handle.state == "old":
                handle.state = "serving"
        raise SystemExit(f"nsproxy: {binder.pool.fatal}")
    binder.pool.hand_over(old, defer)
    binder.reload_success_time = time.time()
    binder._begin_serving()
    # As a reload does: also covers a SIGUSR1 that came just before the execve (taken by the
    # old loop's wakeup pipe, which the execve closed) or during it (ignored).
    binder.reopen_logs("upgrade")
    message = (
        f"upgraded nsproxy {state.get('from')} -> {__version__} in pid {os.getpid()} in "
        f"{time.monotonic() - started:.3f} s: {len(binder.pool.serving())} new workers, "
        f"{len(old)} old ones draining"
    )
    log.info("%s", message)
    systemd.ready(f"{len(listeners.tenants)} tenants")
    reply_fd = state.get("reply_fd")
    if reply_fd is not None:
        with contextlib.suppress(OSError), socket.socket(fileno=reply_fd) as reply:
            reply.setblocking(True)
            reply.settimeout(5)
            answer = {"ok": True, "message": message, "generation": binder.generation}
            reply.sendall(json.dumps(answer).encode() + b"\n")


def _inherited_fds(state: dict) -> list[int]:
    keys = ("admin_fd", "metrics_fd", "access_log_fd", "reply_fd", "counts_fd", "health_fd")
    fds = [state.get(k) for k in keys]
    for entry in state.get("tenants") or []:
        fds.append(entry.get("ns_fd"))
        fds.append((entry.get("pin") or [0, None])[1])
        fds.extend(fd for *_, fd in entry.get("sockets") or [])
    fds.extend(w.get("fd") for w in state.get("workers") or [])
    return [fd for fd in fds if isinstance(fd, int)]


def _close(fds) -> None:
    for fd in fds:
        if isinstance(fd, int):
            with contextlib.suppress(OSError):
                os.close(fd)


async def run_check(argv: list[str], timeout: float) -> tuple[int, bytes]:
    """Run ``argv`` (stdin /dev/null, stdout+stderr captured, at most 64 kB kept) without
    blocking the loop and without a thread or SIGCHLD handler: (exit status, output)."""
    loop = asyncio.get_running_loop()
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.posix_spawn(
            argv[0],
            argv,
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, write_end, 1),
                (os.POSIX_SPAWN_DUP2, write_end, 2),
            ],
        )
    except OSError as exc:
        os.close(read_end)
        return 127, f"cannot run {argv[0]}: {exc.strerror}".encode()
    finally:
        os.close(write_end)
    pidfd = os.pidfd_open(pid)
    output = bytearray()
    exited = loop.create_future()
    eof = loop.create_future()

    def readable():
        try:
            chunk = os.read(read_end, 65536)
        except BlockingIOError:
            return
        if chunk:
            output.extend(chunk[: max(0, 65536 - len(output))])
        else:
            loop.remove_reader(read_end)
            if not eof.done():
                eof.set_result(True)

    os.set_blocking(read_end, False)
    loop.add_reader(read_end, readable)
    loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(True))
    try:
        await asyncio.wait_for(asyncio.gather(exited, eof), timeout)
    except asyncio.TimeoutError:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        output.extend(f" (killed after {timeout:.0f} s)".encode())
    finally:
        loop.remove_reader(pidfd)
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(read_end)
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
        os.close(pidfd)
    return os.waitstatus_to_exitcode(status), bytes(output)
