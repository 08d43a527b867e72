"""The binder <-> worker channel: one ``socketpair(AF_UNIX, SOCK_SEQPACKET)`` per worker.

A message is one datagram: a JSON object of at most :data:`MAX_MESSAGE` bytes with a string
``type``, plus up to :data:`MAX_FDS` file descriptors (SCM_RIGHTS, unix(7); the kernel's
SCM_MAX_FD is 253). Larger payloads travel in a sealed memfd (memfd_create(2), F_SEAL_WRITE and
friends, so the reader sees exactly what was written) passed as one of the fds.

Both ends are non-blocking and driven by their event loop (``add_reader``). A send that would
block is queued (its fds duplicated until sent); a peer that lets :data:`MAX_QUEUED` messages
pile up is treated as gone. Anything unexpected on the receiving side (a truncated datagram or
fd list, bytes that are not a JSON object with a type) closes the channel and every fd that
came with it: the binder then replaces that worker, a worker exits. A worker's end is given
``on_cut``: a whole message whose descriptors the kernel cut because the worker's own table is
full (MSG_CTRUNC) is dropped, its descriptors closed, and ``on_cut(message)`` called instead.

``request`` sends a message with an ``id`` and waits for the answer carrying ``reply_to``.

The binder's end does not trust what a worker passes (``only_memfds``): a worker has no reason
to send anything but sealed memfds, and the last close of some descriptors blocks the process
that makes it, whatever O_NONBLOCK says: a TCP socket with SO_LINGER and unsent data waits up
to its linger time (socket(7)), and a unix socket releases, in that process, the descriptors in
flight in its queue. A worker that passed one would stop the binder's loop, and with it every
tenant's upstream sockets, reloads and the admin socket. So a message carrying another kind
closes the channel (the binder replaces that worker), and those descriptors, like the channel's
own socket, are closed so that nothing waits (:func:`close_off_loop`). Every descriptor a
message carries is received (room for SCM_MAX_FD): one the kernel dropped for want of room
would be closed inside recvmsg, on the loop.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import fcntl
import json
import logging
import os
import socket
import stat
import struct
import threading

log = logging.getLogger("nsproxy.channel")

MAX_MESSAGE = 64 * 1024  # bytes of JSON in one datagram
MAX_FDS = 250  # file descriptors in one datagram (SCM_MAX_FD is 253)
MAX_QUEUED = 4096  # messages waiting for a peer that does not read before it counts as gone
MAX_PAYLOAD = 64 * 1024 * 1024  # bytes in one sealed memfd

_SCM_MAX_FD = 253  # the most descriptors one message can carry (include/net/scm.h)
_INT = array.array("i")
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


class ChannelError(Exception):
    """A malformed message or payload; the message says what was wrong."""


def pair() -> tuple[socket.socket, socket.socket]:
    """(binder end, worker end): a SOCK_SEQPACKET socketpair, both close-on-exec."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def sealed_memfd(data: bytes, name: str = "nsproxy") -> int:
    """A memfd holding ``data``, sealed against any change; the caller owns (closes) it."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def guarded_memfd(name: str, seals: int) -> int:
    """A memfd the binder writes and workers only read: mode 0400, so that a worker (another
    user) cannot open it again through /proc/self/fd, for writing or at all, and sealed with
    ``seals`` (F_SEAL_SHRINK: no descriptor can truncate what others read; memfd_create(2),
    fcntl(2) "File Sealing"). Raises OSError."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.fchmod(fd, 0o400)
        if seals:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except BaseException:
        os.close(fd)
        raise
    return fd


def readonly(fd: int) -> int:
    """A new read-only, close-on-exec descriptor of the file ``fd`` is open on (a memfd opened
    again through /proc/self/fd, proc(5)): what a worker gets of a memfd the binder writes.
    Raises OSError."""
    return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)


def read_sealed(fd: int, limit: int = MAX_PAYLOAD) -> bytes:
    """The bytes of a memfd made by :func:`sealed_memfd` (ChannelError for anything else: a
    file that is not a fully sealed memfd, or larger than ``limit``)."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        raise ChannelError("payload is not a memfd") from None
    if seals & _SEALS != _SEALS:
        raise ChannelError("payload memfd is not sealed")
    size = os.fstat(fd).st_size
    if size > limit:
        raise ChannelError(f"payload of {size} bytes is larger than {limit}")
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def close_fds(fds) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


MAX_CLOSERS = 16  # closer threads at once; beyond, descriptors wait for one to finish
_LINGER_ZERO = struct.pack("ii", 1, 0)
_closers = {"running": 0, "waiting": []}  # closer threads alive, descriptors waiting for one
_closers_lock = threading.Lock()


def close_off_loop(fds) -> None:
    """Close ``fds`` without blocking the caller, whatever a peer made of them (see the module
    docstring). A socket gets SO_LINGER 0 first (socket(7): its close is then a reset, at
    once), and every descriptor but a unix socket is closed here and now. A unix socket's last
    close releases the descriptors in flight in it, which may nest others, to any depth: those
    are closed on a thread of their own per call, so that one that blocks for hours holds that
    thread only; past MAX_CLOSERS threads, they wait for one to finish."""
    later = [fd for fd in fds if not _closes_now(fd)]
    if not later:
        return
    with _closers_lock:
        if _closers["running"] >= MAX_CLOSERS:
            _closers["waiting"].extend(later)
            return
        _closers["running"] += 1
    threading.Thread(target=_closer, args=(later,), name="closer", daemon=True).start()


def _closes_now(fd: int) -> bool:
    """Disarm ``fd`` and close it unless it is a unix socket; whether it was closed."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:  # not a socket
        close_fds([fd])
        return True
    try:
        if sock.family == socket.AF_UNIX:
            return False
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    finally:
        sock.detach()
    close_fds([fd])
    return True


def _closer(fds: list[int]) -> None:
    while fds:
        close_fds(fds)
        with _closers_lock:
            fds, _closers["waiting"] = _closers["waiting"], []
            if not fds:
                _closers["running"] -= 1


def _forget_closers() -> None:
    _closers.update(running=0, waiting=[])  # a forked child has no closer thread


os.register_at_fork(after_in_child=_forget_closers)


def _all_memfds(fds: list[int]) -> bool:
    """Whether every fd is a regular file (what a memfd is); fstat(2) never blocks."""
    try:
        return all(stat.S_ISREG(os.fstat(fd).st_mode) for fd in fds)
    except OSError:
        return False


def _recv(sock: socket.socket) -> tuple[bytes, list[int], int]:
    """One datagram: (bytes, fds received close-on-exec, msg flags). socket.recv_fds would
    do, but it drops its flags argument (so MSG_CMSG_CLOEXEC)."""
    data, ancdata, flags, _ = sock.recvmsg(
        MAX_MESSAGE + 1, socket.CMSG_SPACE(_SCM_MAX_FD * _INT.itemsize), socket.MSG_CMSG_CLOEXEC
    )
    fds = array.array("i")
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % _INT.itemsize])
    return data, list(fds), flags


class Channel:
    """One end of a worker's channel, served by ``loop``.

    ``on_message(message: dict, fds: list[int])`` gets every message that is not an answer to
    a ``request``; it owns the fds (keeps or closes them). ``on_closed(reason)`` is called once,
    when the peer closed, misbehaved or stopped reading. ``only_memfds``: the peer may pass
    regular files (memfds) only, anything else is misbehaving (the binder's end of a worker's
    channel, see the module docstring)."""

    def __init__(
        self,
        sock: socket.socket,
        loop,
        on_message,
        on_closed,
        peer: str = "peer",
        only_memfds: bool = False,
        on_cut=None,
    ):
        self.sock = sock
        self.on_cut = on_cut
        self.only_memfds = only_memfds
        sock.setblocking(False)
        self.loop = loop
        self.on_message = on_message
        self.on_closed = on_closed
        self.peer = peer
        self.queue: collections.deque = collections.deque()  # (data, fds we own)
        self.pending: dict[int, asyncio.Future] = {}
        self.next_id = 1
        self.closed = False
        self.reading = False

    def start(self) -> None:
        if not self.closed and not self.reading:
            self.reading = True
            self.loop.add_reader(self.sock.fileno(), self._readable)

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- sending ----------------------------------------------------------------------------
    def send(self, kind: str, fds=(), **fields) -> None:
        """Send one message. The fds are duplicated by the kernel (or by the queue): the caller
        keeps its own and may close them at once. Raises ChannelError for a message that is too
        big (use a memfd) or carries too many fds."""
        fields["type"] = kind
        data = json.dumps(fields, separators=(",", ":")).encode()
        if len(data) > MAX_MESSAGE:
            raise ChannelError(f"{kind} message of {len(data)} bytes (at most {MAX_MESSAGE})")
        fds = list(fds)
        if len(fds) > MAX_FDS:
            raise ChannelError(f"{kind} message with {len(fds)} fds (at most {MAX_FDS})")
        if self.closed:
            return
        if not self.queue and self._sendmsg(data, fds):
            return
        if len(self.queue) >= MAX_QUEUED:
            self.close(f"{self.peer} does not read its channel ({MAX_QUEUED} messages queued)")
            return
        owned = []
        try:
            owned = [os.dup(fd) for fd in fds]
        except OSError as exc:
            close_fds(owned)
            self.close(f"cannot queue a message for {self.peer}: {exc.strerror}")
            return
        if not self.queue:
            self.loop.add_writer(self.sock.fileno(), self._writable)
        self.queue.append((data, owned))

    def _sendmsg(self, data: bytes, fds: list[int]) -> bool:
        """True when sent; False when the socket is full (try again later)."""
        try:
            if fds:
                socket.send_fds(self.sock, [data], fds)
            else:
                self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self.close(f"{self.peer}: {exc.strerror or exc}")
            return True
        return True

    def _writable(self) -> None:
        while self.queue and not self.closed:
            data, fds = self.queue[0]
            if not self._sendmsg(data, fds):
                return
            self.queue.popleft()
            close_fds(fds)
        if not self.closed:
            self.loop.remove_writer(self.sock.fileno())

    async def request(self, kind: str, timeout: float, fds=(), **fields):
        """Send a message with a fresh ``id``; (answer, fds) of the reply that names it in
        ``reply_to``. Raises asyncio.TimeoutError, or ChannelError if the channel closes."""
        ident = self.next_id
        self.next_id += 1
        future = self.loop.create_future()
        self.pending[ident] = future
        try:
            self.send(kind, fds, id=ident, **fields)
            return await asyncio.wait_for(future, timeout)
        finally:
            self.pending.pop(ident, None)

    # -- receiving --------------------------------------------------------------------------
    def _readable(self) -> None:
        for _ in range(64):  # then let the loop serve others
            if self.closed:
                return
            try:
                data, fds, flags = _recv(self.sock)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.close(f"{self.peer}: {exc.strerror or exc}")
                return
            if not data and not fds:
                self.close(f"{self.peer} closed the channel")
                return
            if self.only_memfds and fds and not _all_memfds(fds):
                close_off_loop(fds)
                self.close(f"{self.peer} passed a descriptor that is not a memfd")
                return
            # Only the descriptors were cut (MSG_CTRUNC: this process's table is full), the
            # message is whole: with ``on_cut``, that is this process's trouble, not the peer's.
            cut = (
                self.on_cut is not None
                and flags & socket.MSG_CTRUNC
                and not flags & socket.MSG_TRUNC
            )
            try:
                message = self._decode(data, flags & ~socket.MSG_CTRUNC if cut else flags)
            except ChannelError as exc:
                close_fds(fds)
                self.close(f"{self.peer} sent a bad message: {exc}")
                return
            reply_to = message.get("reply_to")
            if cut:
                close_fds(fds)
                future = self.pending.pop(reply_to, None) if isinstance(reply_to, int) else None
                if future is not None and not future.done():
                    future.set_exception(ChannelError("its descriptors were cut (EMFILE)"))
                self.on_cut(message)
                continue
            if reply_to is not None:
                future = self.pending.pop(reply_to, None) if isinstance(reply_to, int) else None
                if future is None or future.done():
                    close_fds(fds)  # an answer nobody waits for (any more)
                else:
                    future.set_result((message, fds))
                continue
            try:
                self.on_message(message, fds)
            except ChannelError as exc:
                self.close(f"{self.peer} sent a bad message: {exc}")
                return

    @staticmethod
    def _decode(data: bytes, flags: int) -> dict:
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(data) > MAX_MESSAGE:
            raise ChannelError("truncated message or fd list")
        try:
            message = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise ChannelError("not JSON") from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ChannelError("not an object with a string 'type'")
        return message

    def close(self, reason: str = "closed") -> None:
        """Close the channel (idempotent): queued fds are closed, waiting requests fail."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(ValueError, OSError):
            if self.reading:
                self.loop.remove_reader(self.sock.fileno())
            if self.queue:
                self.loop.remove_writer(self.sock.fileno())
        for _, fds in self.queue:
            close_fds(fds)
        self.queue.clear()
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ChannelError(reason))
        self.pending.clear()
        if self.only_memfds:  # its queue may hold descriptors still in flight
            close_off_loop([self.sock.detach()])
        else:
            self.sock.close()
        self.on_closed(reason)
