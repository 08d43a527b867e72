"""The binder's workers: fork, supervise, replace, talk to them.

Workers are forked (no exec), so that the interpreter, the imported modules and the validated
config are shared with the binder copy-on-write: the binder collects and freezes its heap
(heap.settle) right before each fork. Each worker has a channel (channel.py) and a pidfd: the
pidfd becomes readable when the worker exits, so a death is noticed at once, without SIGCHLD
and without any PID reuse race; the worker is reaped and, unless it was asked to go, replaced
by a fresh fork holding the current state. Its listening sockets stay open in the binder and
the other workers throughout, so accepting never stops. A worker that stops sending heartbeats
(a hung loop) is killed and replaced the same way. Workers that keep dying are replaced with a
growing delay; one that could not drop its privileges stops the binder.

Messages a worker may send (anything else ends it): ``ready`` (generation applied),
``heartbeat`` (with its open descriptors and limit), ``replace_me`` (a message of the binder's
lost its descriptors: its table is full; it is drained and its index gets a new worker),
``need_sockets`` (answered by the binder's upstream sockets), ``metrics?`` (every
worker's snapshot, relayed unread), ``ready?`` (the binder's /ready answer) and answers to the
binder's requests.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import signal
import sys
import time

from nsproxy import channel, heap, procstat
from nsproxy.worker import main as worker_main

log = logging.getLogger("nsproxy")

HUNG_AFTER = 20.0  # seconds without a message from a serving worker before it is killed
KEEP_OLD_FOR = 60.0  # seconds an old worker serves on while its replacement cannot start
START_WITHIN = 60.0  # seconds a starting worker has to report ready
RETIRE_SLACK = 2.0  # seconds a retired index's worker accepts beyond TCP_DEFER_ACCEPT
CRASH_WINDOW = 10.0  # deaths within this many seconds count as a crash loop
CRASH_LIMIT = 5  # deaths within CRASH_WINDOW before replacements are delayed
MAX_DELAY = 10.0  # seconds at most between two replacements in a crash loop


class WorkerHandle:
    """A worker as the binder sees it."""

    __slots__ = (
        "channel",
        "fds",
        "generation",
        "index",
        "last_heard",
        "pid",
        "pidfd",
        "row",
        "started",
        "state",
        "waiters",
    )

    def __init__(self, pid: int, pidfd: int, index: int, state: str = "starting", row=-1):
        self.pid = pid
        self.pidfd = pidfd
        self.index = index
        self.row = row  # its row in the shared connection counts
        self.state = state  # starting, serving, old (before an upgrade's drain), draining
        self.generation = 0
        self.started = time.time()
        self.last_heard = time.monotonic()
        self.channel: channel.Channel | None = None
        self.waiters: list = []  # (generation, future): wait_ready
        # (open descriptors, RLIMIT_NOFILE) as its last heartbeat said; None: not known
        self.fds: tuple[int, int] | None = None

    def describe(self) -> dict:
        return {
            "pid": self.pid,
            "index": self.index,
            "state": self.state,
            "generation": self.generation,
            "started": round(self.started, 3),
        }


class WorkerPool:
    """The binder's workers by pid. ``binder`` gives seeds, sockets and the config."""

    def __init__(self, binder, loop):
        self.binder = binder
        self.loop = loop
        self.workers: dict[int, WorkerHandle] = {}
        self.wanted = 0
        self.started = 0
        self.deaths = 0
        self.recent_deaths: collections.deque = collections.deque()
        self.pending_spawns: set[int] = set()  # indexes waiting for a delayed replacement
        self.stopping = False
        self.fatal: str | None = None

    # -- starting -------------------------------------------------------------------------
    def start(self, count: int) -> list[WorkerHandle]:
        self.wanted = count
        return [h for h in (self.spawn(index) for index in range(count)) if h is not None]

    def spawn(self, index: int) -> WorkerHandle | None:
        """Fork worker number ``index`` with the binder's current state. When the binder has
        no descriptor (EMFILE, ENFILE) or process to spare, that is logged in a sentence and
        the start is retried with the crash loop's back-off (:meth:`_replace`); None then."""
        try:
            binder_end, worker_end = channel.pair()
        except OSError as exc:
            self._cannot_start(index, exc)
            return None
        row = self.binder.slots.take_row()
        if row < 0:
            log.warning(
                "more than %d workers at once: worker %d counts its own connections only",
                len(self.binder.slots.rows),
                index,
            )
        seed = self.binder.seed(index, row, worker_end)
        heap.settle()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            self.binder.slots.free_row(row)
            binder_end.close()
            worker_end.close()
            self._cannot_start(index, exc)
            return None
        if pid == 0:  # the child: never returns
            worker_main.run(seed)
        worker_end.close()
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:  # not supervised without it: ended at once
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            self.binder.slots.free_row(row)
            binder_end.close()
            self._cannot_start(index, exc)
            return None
        handle = WorkerHandle(pid, pidfd, index, row=row)
        handle.fds = procstat.descriptors()[:2]  # until its first heartbeat: its inherited table
        if row >= 0:
            self.binder.slots.rows[row] = pid
        self._attach(handle, binder_end)
        self.started += 1
        log.info("worker %d started (pid %d)", index, pid)
        return handle

    def _cannot_start(self, index: int, exc: OSError) -> None:
        """A start that failed counts as a death: tried again after the back-off."""
        now = time.monotonic()
        self.recent_deaths.append(now)
        while self.recent_deaths and now - self.recent_deaths[0] > CRASH_WINDOW:
            self.recent_deaths.popleft()
        delay = min(MAX_DELAY, 0.5 * 2 ** max(0, len(self.recent_deaths) - CRASH_LIMIT))
        log.error("cannot start worker %d: %s (the descriptor limit, RLIMIT_NOFILE, or the "
                  "process limit is reached); trying again in %.1f s",
                  index, exc.strerror or exc, delay)  # fmt: skip
        if index not in self.pending_spawns:
            self.pending_spawns.add(index)
            self.loop.call_later(delay, self._delayed_spawn, index)

    def adopt(self, pid: int, channel_fd: int, index: int, row: int) -> WorkerHandle:
        """A worker of the binder before an upgrade's execve (still this process's child)."""
        import socket

        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            os.close(channel_fd)
            return None
        handle = WorkerHandle(pid, pidfd, index, state="old", row=row)
        if row >= 0:
            self.binder.slots.rows[row] = pid
        self._attach(handle, socket.socket(fileno=channel_fd))
        os.set_inheritable(channel_fd, False)
        return handle

    def _attach(self, handle: WorkerHandle, sock) -> None:
        handle.channel = channel.Channel(
            sock,
            self.loop,
            lambda message, fds: self._message(handle, message, fds),
            lambda reason: self._channel_closed(handle, reason),
            peer=f"worker {handle.index} (pid {handle.pid})",
            only_memfds=True,
        )
        handle.channel.start()
        self.workers[handle.pid] = handle
        self.loop.add_reader(handle.pidfd, self._exited, handle)

    def answering(self, within: float) -> bool:
        """Whether workers serve and every serving one was heard from in the last ``within``
        seconds (a heartbeat comes every second: worker/main.py HEARTBEAT)."""
        now = time.monotonic()
        serving = [w for w in self.workers.values() if w.state == "serving"]
        return bool(serving) and all(now - w.last_heard <= within for w in serving)

    def serving(self) -> list[WorkerHandle]:
        """Workers that serve the current generation (starting or serving)."""
        return [w for w in self.workers.values() if w.state in ("starting", "serving")]

    # -- talking --------------------------------------------------------------------------
    def broadcast(self, kind: str, fds=(), everyone: bool = False, index=None, **fields) -> None:
        """Send a message to every current worker (``everyone``: old and draining ones too;
        ``index``: only the current workers of that index)."""
        for handle in list(self.workers.values()):
            if index is not None and handle.index != index:
                continue
            if handle.channel is not None and (everyone or handle.state in ("starting", "serving")):
                try:
                    handle.channel.send(kind, fds, **fields)
                except channel.ChannelError as exc:
                    log.error("worker %d: %s", handle.index, exc)
                    continue
                if fds and handle.fds is not None:  # until its next heartbeat counts again
                    handle.fds = (handle.fds[0] + len(fds), handle.fds[1])

    async def wait_ready(self, generation: int, timeout: float) -> list[WorkerHandle]:
        """Wait until every current worker has applied ``generation``; the ones that did not
        within ``timeout`` are killed (and replaced). Returns the laggards."""
        waits = []
        for handle in self.serving():
            if handle.generation >= generation:
                continue
            future = self.loop.create_future()
            handle.waiters.append((generation, future))
            waits.append((handle, future))
        if not waits:
            return []
        await asyncio.wait([f for _, f in waits], timeout=timeout)
        late = [h for h, f in waits if not f.done()]
        for handle in late:
            self.kill(handle, f"did not apply generation {generation} within {timeout:.0f} s")
        return late

    async def snapshots(self, timeout: float, everyone: bool = True) -> list[tuple]:
        """[(handle, fd of its snapshot memfd)] of the workers that answered in time (the
        caller owns the fds)."""
        handles = [
            w for w in self.workers.values() if w.channel is not None and not w.channel.closed
        ]
        if not everyone:
            handles = [w for w in handles if w.state in ("starting", "serving")]

        async def one(handle):
            try:
                _, fds = await handle.channel.request("snapshot?", timeout)
            except (asyncio.TimeoutError, channel.ChannelError):
                return None
            if len(fds) != 1:
                channel.close_fds(fds)
                return None
            return handle, fds[0]

        results = await asyncio.gather(*(one(h) for h in handles))
        return [r for r in results if r is not None]

    def _message(self, handle: WorkerHandle, message: dict, fds: list[int]) -> None:
        handle.last_heard = time.monotonic()
        kind = message["type"]
        if kind == "heartbeat":
            channel.close_fds(fds)
            counts = message.get("open_fds"), message.get("max_fds")
            # (not bool, which is an int too; older builds send none)
            if all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
                handle.fds = counts
        elif kind == "ready":
            channel.close_fds(fds)
            generation = message.get("generation")
            if not isinstance(generation, int) or isinstance(generation, bool):
                raise channel.ChannelError("ready: generation must be an integer")
            handle.generation = max(handle.generation, generation)
            if handle.state == "starting":
                handle.state = "serving"
                log.info("worker %d (pid %d) serving", handle.index, handle.pid)
                for other in list(self.workers.values()):  # the one it replaces (hand_over)
                    if other.state == "old" and other.index == handle.index:
                        self.drain(other, "upgrade", None)
            for entry in list(handle.waiters):
                if entry[0] <= handle.generation and not entry[1].done():
                    entry[1].set_result(True)
            handle.waiters = [e for e in handle.waiters if not e[1].done()]
        elif kind == "replace_me":  # it could not receive descriptors: its table is full
            channel.close_fds(fds)
            if handle.state in ("starting", "serving"):
                log.error(
                    "worker %d (pid %d) has no descriptor left to receive the binder's: "
                    "starting a replacement and draining it",
                    handle.index,
                    handle.pid,
                )
                self.drain(handle, "upgrade", None)
                self._replace(handle.index)
                # A reload waiting for it waits for its replacement (forked with the current
                # generation), not for it to drain, nor kills it with its connections.
                for _generation, future in handle.waiters:
                    if not future.done():
                        future.set_result(False)
                handle.waiters = []
        elif kind == "need_sockets":
            channel.close_fds(fds)
            self.binder.need_sockets(handle, message)
        elif kind == "metrics?":
            channel.close_fds(fds)
            self.loop.create_task(self.binder.relay_metrics(handle, message.get("id")))
        elif kind == "ready?":
            channel.close_fds(fds)
            self.binder.answer_ready(handle, message.get("id"))
        else:
            channel.close_fds(fds)
            raise channel.ChannelError(f"unknown message type {kind!r}")

    def _channel_closed(self, handle: WorkerHandle, reason: str) -> None:
        if handle.pid in self.workers and handle.state != "draining" and not self.stopping:
            self.kill(handle, reason)

    # -- ending ---------------------------------------------------------------------------
    def kill(self, handle: WorkerHandle, reason: str) -> None:
        """SIGKILL a worker (it is replaced when its exit is seen)."""
        log.error("worker %d (pid %d): %s; killing it", handle.index, handle.pid, reason)
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(handle.pidfd, signal.SIGKILL)

    def _exited(self, handle: WorkerHandle) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(handle.pidfd)
        try:
            _, status = os.waitpid(handle.pid, os.WNOHANG)
        except ChildProcessError:
            status = 0
        os.close(handle.pidfd)
        handle.pidfd = -1
        self.workers.pop(handle.pid, None)
        self.binder.slots.free_row(handle.row)
        if handle.channel is not None:
            # The channel's callbacks refer to the handle: break that cycle (frozen objects
            # are freed by their reference count only, see heap.settle).
            handle.channel.on_closed = handle.channel.on_message = _ignore
            handle.channel.close("exited")
            handle.channel = None
        for _, future in handle.waiters:
            if not future.done():
                future.set_result(False)
        how = _describe_exit(status)
        self._trim_when_retired()
        if handle.state in ("draining", "old") or self.stopping:
            log.info("worker %d (pid %d) %s", handle.index, handle.pid, how)
            return
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == worker_main.EXIT_PRIVILEGES:
            self.fatal = f"worker {handle.index} could not drop its privileges (see above)"
            log.error("%s: stopping", self.fatal)
            self.binder.fatal_error(self.fatal)
            return
        self.deaths += 1
        log.error("worker %d (pid %d) %s; starting a replacement", handle.index, handle.pid, how)
        self._replace(handle.index)

    def _replace(self, index: int) -> None:
        now = time.monotonic()
        self.recent_deaths.append(now)
        while self.recent_deaths and now - self.recent_deaths[0] > CRASH_WINDOW:
            self.recent_deaths.popleft()
        if index in self.pending_spawns:
            return
        excess = len(self.recent_deaths) - CRASH_LIMIT
        if excess <= 0:
            self.spawn(index)
            return
        delay = min(MAX_DELAY, 0.5 * 2**excess)
        log.error("workers keep dying (%d in %.0f s): next start in %.1f s",
                  len(self.recent_deaths), CRASH_WINDOW, delay)  # fmt: skip
        self.pending_spawns.add(index)
        self.loop.call_later(delay, self._delayed_spawn, index)

    def _delayed_spawn(self, index: int) -> None:
        self.pending_spawns.discard(index)
        if (
            not self.stopping
            and index < self.wanted
            and not any(w.index == index for w in self.serving())
        ):
            self.spawn(index)

    def sweep(self) -> None:
        """Kill workers that stopped talking (a hung loop) or never became ready."""
        now = time.monotonic()
        for handle in list(self.workers.values()):
            if handle.state in ("serving", "old") and now - handle.last_heard > HUNG_AFTER:
                self.kill(handle, f"no heartbeat for {now - handle.last_heard:.0f} s")
            elif handle.state == "starting" and now - handle.last_heard > START_WITHIN:
                self.kill(handle, f"not ready after {START_WITHIN:.0f} s")

    def resize(self, count: int) -> None:
        """Run ``count`` workers: start the missing indexes, drain the ones beyond. Each index
        has its own socket of every listener: the listeners are resized to match first, so
        that no new connection reaches the sockets of the indexes beyond, and their workers
        keep accepting what is already queued there (with TCP_DEFER_ACCEPT, a connection
        waits in the kernel up to ``header_read`` for its first bytes, rounded up by the
        kernel to its SYN-ACK retransmissions: 10 s is 15), then close those sockets and
        drain. Once they have exited, the binder closes its copies (Listeners.trim)."""
        self.wanted = count
        defer = self.binder.listeners.resize(count)
        beyond = [h for h in self.workers.values() if h.index >= count]
        self.retire([h for h in beyond if h.state in ("starting", "serving", "old")], defer)
        have = {w.index for w in self.serving()}
        for index in range(count):
            if index not in have and index not in self.pending_spawns:
                self.spawn(index)

    def retire(self, handles: list[WorkerHandle], defer: int) -> None:
        """Drain ``handles`` ("upgrade" mode). Those of an index beyond ``wanted`` own the only
        worker copies of their sockets: they accept what is queued there first, for the
        longest TCP_DEFER_ACCEPT (``defer``, Listeners.resize) or ``header_read`` if longer,
        plus RETIRE_SLACK. With no worker beyond ``wanted`` left at all, the binder's copies
        go now (Listeners.trim); otherwise when the last of them exits."""
        window = max(math.ceil(self.binder.config.timeouts["header_read"]), defer) + RETIRE_SLACK
        for handle in handles:
            self.drain(handle, "upgrade", None, window if handle.index >= self.wanted else 0)
        self._trim_when_retired()

    def hand_over(self, old: list[WorkerHandle], defer: int) -> None:
        """After a new set of workers was started beside ``old`` ones (state "old"): an old
        worker drains once the new worker of its index serves (the ``ready`` message; at once
        if it already does), and those of an index beyond ``wanted`` are retired
        (:meth:`retire`, ``defer`` as there). Until then, for :data:`KEEP_OLD_FOR` seconds at
        most, an old worker serves on (the previous generation: /ready says so): an index
        whose new worker could not start (no descriptor or process to spare: retried with the
        back-off, :meth:`_cannot_start`) or was killed for being late is not left empty for a
        passing shortage, nor served by the previous configuration for long."""
        self.retire([h for h in old if h.index >= self.wanted], defer)
        serving = {w.index for w in self.workers.values() if w.state == "serving"}
        for handle in old:
            if handle.state != "old" or handle.index >= self.wanted:
                continue
            if handle.index in serving:
                self.drain(handle, "upgrade", None)
            else:
                log.warning("worker %d (pid %d) serves on until its replacement is ready, "
                            "%.0f s at most", handle.index, handle.pid, KEEP_OLD_FOR)  # fmt: skip
                self.loop.call_later(KEEP_OLD_FOR, self._stop_keeping, handle)

    def _stop_keeping(self, handle: WorkerHandle) -> None:
        if handle.state == "old" and self.workers.get(handle.pid) is handle:
            log.error("worker %d (pid %d): no replacement serves after %.0f s; draining it "
                      "anyway", handle.index, handle.pid, KEEP_OLD_FOR)  # fmt: skip
            self.drain(handle, "upgrade", None)

    def _trim_when_retired(self) -> None:
        """With no worker beyond ``wanted`` left, nobody serves a shrink's kept sockets."""
        if not any(w.index >= self.wanted for w in self.workers.values()):
            self.binder.listeners.trim()

    def drain(self, handle: WorkerHandle, mode: str, within, accept_for: float = 0) -> None:
        """Ask ``handle``'s worker to drain (worker.main.Worker.drain)."""
        handle.state = "draining"
        if handle.channel is not None and not handle.channel.closed:
            handle.channel.send("drain", mode=mode, within=within, accept_for=accept_for)
        else:
            self.kill(handle, "cannot be asked to drain")

    async def stop(self, within: float) -> None:
        """Drain every worker (stop mode) and wait until all have exited; kill the rest."""
        self.stopping = True
        for handle in list(self.workers.values()):
            self.drain(handle, "stop", within)
        deadline = time.monotonic() + within + 5
        while self.workers and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for handle in list(self.workers.values()):
            self.kill(handle, "still running after the drain time")
        while self.workers and time.monotonic() < deadline + 5:
            await asyncio.sleep(0.05)


def _ignore(*_args) -> None:
    return None


def _describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was killed by {name}"
    return f"exited with status {os.WEXITSTATUS(status)}"
