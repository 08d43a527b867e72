"""The binder <-> worker channel: real socketpairs, real fds, real event loops."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import struct
import termios
import time

import pytest
from loops import LOOPS, run

from nsproxy import channel


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


class End:
    """One end of a channel that records what it got and why it closed."""

    def __init__(self, sock, loop):
        self.got: list = []
        self.closed: list[str] = []
        self.channel = channel.Channel(sock, loop, self._message, self.closed.append)
        self.arrived = asyncio.Event()

    def _message(self, message, fds):
        self.got.append((message, fds))
        self.arrived.set()

    async def next(self):
        while not self.got:
            self.arrived.clear()
            await self.arrived.wait()
        return self.got.pop(0)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_messages_and_file_descriptors_arrive_in_order(loop_name):
    async def main():
        loop = asyncio.get_running_loop()
        a_sock, b_sock = channel.pair()
        a, b = End(a_sock, loop), End(b_sock, loop)
        a.channel.start()
        b.channel.start()
        r, w = os.pipe()
        a.channel.send("first", n=1)
        a.channel.send("with-fd", [w], note="a pipe")
        os.close(w)  # the kernel passed a duplicate: the sender may close its own at once
        message, fds = await b.next()
        assert message == {"type": "first", "n": 1} and fds == []
        message, fds = await b.next()
        assert message["type"] == "with-fd" and len(fds) == 1
        os.write(fds[0], b"through the passed fd")
        assert os.read(r, 100) == b"through the passed fd"
        assert fcntl.fcntl(fds[0], fcntl.F_GETFD) & fcntl.FD_CLOEXEC  # received close-on-exec
        os.close(fds[0])
        os.close(r)
        a.channel.close()
        await asyncio.sleep(0.05)
        assert b.closed and "closed the channel" in b.closed[0]

    run(loop_name, main())


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_request_gets_the_answer_that_names_it(loop_name):
    async def main():
        loop = asyncio.get_running_loop()
        a_sock, b_sock = channel.pair()
        a = End(a_sock, loop)
        b = End(b_sock, loop)
        a.channel.start()
        b.channel.start()

        async def answer():
            message, _ = await b.next()
            b.channel.send("noise")  # not an answer: goes to on_message
            b.channel.send("answer", reply_to=message["id"], value=message["x"] * 2)

        task = loop.create_task(answer())
        reply, fds = await a.channel.request("ask", 5, x=21)
        assert reply["value"] == 42 and fds == []
        assert (await a.next())[0]["type"] == "noise"
        await task
        with pytest.raises(asyncio.TimeoutError):
            await a.channel.request("ask", 0.2, x=1)  # b reads it but never answers
        a.channel.close()
        b.channel.close()

    run(loop_name, main())


@pytest.mark.parametrize(
    "datagram",
    [b"not json", b"[1, 2]", b'{"no": "type"}', b'{"type": 3}', b"x" * (channel.MAX_MESSAGE + 10)],
)
def test_a_bad_datagram_closes_the_channel_and_every_fd_that_came_with_it(datagram):
    async def main():
        loop = asyncio.get_running_loop()
        raw, b_sock = channel.pair()
        b = End(b_sock, loop)
        b.channel.start()
        r, w = os.pipe()
        socket.send_fds(raw, [datagram], [w])
        os.close(w)
        for _ in range(50):
            if b.closed:
                break
            await asyncio.sleep(0.02)
        assert b.closed and "bad message" in b.closed[0]
        assert b.got == []
        # The passed fd was closed by the channel: the pipe's write side is gone.
        assert os.read(r, 10) == b""
        os.close(r)
        raw.close()

    run("asyncio", main())


def test_a_message_too_big_or_with_too_many_fds_is_refused_by_the_sender():
    async def main():
        loop = asyncio.get_running_loop()
        a_sock, b_sock = channel.pair()
        a = End(a_sock, loop)
        with pytest.raises(channel.ChannelError, match="bytes"):
            a.channel.send("big", blob="x" * channel.MAX_MESSAGE)
        with pytest.raises(channel.ChannelError, match="fds"):
            a.channel.send("many", [0] * (channel.MAX_FDS + 1))
        a.channel.close()
        b_sock.close()

    run("asyncio", main())


def test_messages_queue_while_the_peer_does_not_read_and_a_stuck_peer_ends_the_channel():
    async def main():
        loop = asyncio.get_running_loop()
        a_sock, b_sock = channel.pair()
        a = End(a_sock, loop)
        r, w = os.pipe()
        blob = "y" * 30000
        for i in range(200):  # far more than the socket buffer holds
            a.channel.send("bulk", [w] if i == 199 else (), i=i, blob=blob)
        os.close(w)
        assert a.channel.queue  # some wait in the queue, with their own copy of the fd
        b = End(b_sock, loop)
        b.channel.start()
        for i in range(200):
            message, fds = await b.next()
            assert message["i"] == i
            channel.close_fds(fds)
        assert not a.channel.queue
        # Now a peer that never reads: the sender gives up after MAX_QUEUED messages.
        c_sock, d_sock = channel.pair()
        c = End(c_sock, loop)
        for i in range(channel.MAX_QUEUED + 200):
            c.channel.send("bulk", i=i, blob=blob)
            if c.closed:
                break
        assert c.closed and "does not read" in c.closed[0]
        os.close(r)
        for end in (a, b):
            end.channel.close()
        d_sock.close()

    run("asyncio", main())


def test_sealed_memfd_payloads_and_what_is_refused():
    data = os.urandom(300000)
    fd = channel.sealed_memfd(data)
    try:
        assert channel.read_sealed(fd) == data
        with pytest.raises(OSError):
            os.write(fd, b"changed")  # sealed: the reader sees exactly what was written
        with pytest.raises(channel.ChannelError, match="larger"):
            channel.read_sealed(fd, limit=1000)
    finally:
        os.close(fd)
    unsealed = os.memfd_create("x", os.MFD_ALLOW_SEALING)
    r, w = os.pipe()
    try:
        os.write(unsealed, b"data")
        with pytest.raises(channel.ChannelError, match="not sealed"):
            channel.read_sealed(unsealed)
        with pytest.raises(channel.ChannelError, match="not a memfd"):
            channel.read_sealed(r)
    finally:
        for x in (unsealed, r, w):
            os.close(x)


LINGER = 60  # seconds a blocked close would take: far past what the test waits


@contextlib.contextmanager
def lingering_socket():
    """A loopback TCP socket whose last close blocks for LINGER s (socket(7), SO_LINGER): its
    peer never reads, so data stays unsent. The peer's listener closing resets it (cleanup)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a window that fills
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    sock = socket.create_connection(listener.getsockname())
    sock.setblocking(False)
    for _ in range(3):  # until the peer's window is shut and the rest stays queued here
        with contextlib.suppress(BlockingIOError):
            while True:
                sock.send(b"x" * 65536)
        time.sleep(0.05)
    unsent = struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4))[0]
    assert unsent > 0  # SIOCOUTQ, tcp(7): what makes the close wait
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, LINGER))
    try:
        yield sock
    finally:
        listener.close()


def _in_flight(sock) -> socket.socket:
    """A unix socket holding ``sock`` in its queue, which it releases on its last close."""
    holder, sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    socket.send_fds(sender, [b"x"], [sock.fileno()])
    sender.close()
    return holder


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize(
    "how", ["tcp-socket", "in-flight-in-a-unix-socket", "queued-behind-a-bad-message"]
)
def test_a_worker_passing_a_descriptor_whose_close_blocks_never_blocks_the_binders_loop(
    loop_name, how
):
    """A compromised worker's way to stop the binder (every tenant's upstream sockets,
    reloads, the admin socket): pass a descriptor whose last close blocks. The binder's end
    refuses anything but memfds, ends the channel, and closes off its loop."""

    async def main():
        loop = asyncio.get_running_loop()
        worker, binder_sock = channel.pair()
        binder = End(binder_sock, loop)
        binder.channel.only_memfds = True
        binder.channel.start()
        with lingering_socket() as sock:
            passed = _in_flight(sock) if how == "in-flight-in-a-unix-socket" else sock
            if how == "queued-behind-a-bad-message":  # closed with the channel's own socket
                worker.send(b"not json")
            socket.send_fds(worker, [b'{"type": "heartbeat"}'], [passed.fileno()])
            passed.close()
            if passed is not sock:
                sock.close()
            started = time.monotonic()
            for _ in range(100):
                if binder.closed:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            assert time.monotonic() - started < LINGER / 3  # the loop went on turning
            assert binder.got == [] and binder.closed, binder.closed
            reason = "bad message" if how == "queued-behind-a-bad-message" else "not a memfd"
            assert reason in binder.closed[0]
        worker.close()

    run(loop_name, main())


def test_the_binders_end_takes_memfds_from_a_worker():
    async def main():
        loop = asyncio.get_running_loop()
        worker, binder_sock = channel.pair()
        binder = End(binder_sock, loop)
        binder.channel.only_memfds = True
        binder.channel.start()
        fd = os.memfd_create("payload")
        socket.send_fds(worker, [b'{"type": "status"}'], [fd])
        os.close(fd)
        message, fds = await binder.next()
        assert message == {"type": "status"} and len(fds) == 1 and not binder.closed
        os.close(fds[0])
        worker.close()

    run("asyncio", main())


def test_a_close_that_blocks_holds_up_no_later_close():
    """One unix socket holding a lingering TCP socket in flight blocks the thread that closes
    it for LINGER s; what comes after is closed at once all the same, and a lingering TCP
    socket passed as such is closed at once (a reset)."""
    with lingering_socket() as first, lingering_socket() as second:
        holder = _in_flight(first)
        first.close()
        channel.close_off_loop([holder.detach()])  # its thread blocks in that close
        r, w = os.pipe()
        direct = second.detach()
        started = time.monotonic()
        channel.close_off_loop([w, direct])
        assert not is_open(direct) and not is_open(w)
        assert os.read(r, 1) == b""  # the pipe's write side is gone: closed
        assert time.monotonic() - started < LINGER / 3
        os.close(r)


def test_descriptors_cut_for_a_full_table_are_reported_with_on_cut_not_taken_as_a_bad_message():
    # A worker whose own table is full (its connections) gets a message whose fd list the
    # kernel cut (MSG_CTRUNC): that is no fault of the binder, and the channel stays open.
    import resource

    async def main():
        loop = asyncio.get_running_loop()
        raw, b_sock = channel.pair()
        got, closed, cut = [], [], []
        b = channel.Channel(
            b_sock, loop, lambda m, fds: got.append((m, fds)), closed.append, on_cut=cut.append
        )
        b.start()
        r, w = os.pipe()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        fillers = []
        try:
            highest = max(int(n) for n in os.listdir("/proc/self/fd"))
            resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 4, hard))
            with contextlib.suppress(OSError):
                while True:
                    fillers.append(os.open("/dev/null", os.O_RDONLY))
            os.close(fillers.pop())
            os.close(fillers.pop())  # two numbers free, five descriptors coming
            socket.send_fds(raw, [b'{"type":"serve","listeners":[]}'], [w] * 5)
            for _ in range(50):
                if cut or closed:
                    break
                await asyncio.sleep(0.02)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            channel.close_fds(fillers)
        assert closed == [] and got == []
        assert [m["type"] for m in cut] == ["serve"]
        os.close(w)
        assert os.read(r, 10) == b""  # the two that came were closed
        raw.send(b'{"type":"after"}')
        for _ in range(50):
            if got:
                break
            await asyncio.sleep(0.02)
        assert [m["type"] for m, _ in got] == ["after"]
        os.close(r)
        raw.close()
        b.close()

    run("asyncio", main())
