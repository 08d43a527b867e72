"""The certificate store (nsproxy/cert_store.py): the binder's path -> bytes in a memfd, and the
workers' read-only views of it, on the real kernel."""

from __future__ import annotations

import errno
import os
import pickle
import socket

import pytest
from as_nobody import passes_as_nobody
from hypothesis import given, settings
from hypothesis import strategies as st

from nsproxy import cert_store
from nsproxy.cert_store import CertificateStore, CertificateView

PATHS = st.sampled_from([f"/etc/nsproxy/tls/t{i}.pem" for i in range(6)])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("update"), st.dictionaries(PATHS, st.binary(max_size=3000), max_size=4)),
        st.tuples(st.just("discard"), st.lists(PATHS, max_size=3)),
        st.tuples(st.just("settle")),
    ),
    max_size=40,
)


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@settings(max_examples=300, deadline=None)
@given(ops=OPS)
def test_the_store_holds_what_was_last_written_whatever_the_sequence(ops):
    """Against a dict: every value reads back as last written, discarded ones are gone, and
    after a settle the memfd holds no more dead space than the rule allows (half of it, once
    past COMPACT_AFTER), so rotations do not grow it for good; nothing is left open."""
    before = _fds()
    store, model = CertificateStore(), {}
    seen, seen_fd, seen_version = {}, store.fd, store.version
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(cert_store, "COMPACT_AFTER", 4096)
            for op in ops:
                if op[0] == "update":
                    store.update(op[1])
                    model.update(op[1])
                elif op[0] == "discard":
                    store.discard(op[1])
                    for path in op[1]:
                        model.pop(path, None)
                else:
                    store.settle()
                    assert store.dead <= max(store.size // 2, cert_store.COMPACT_AFTER)
                if dict(store) != seen or store.fd != seen_fd:
                    assert store.version > seen_version, "a change the workers would miss"
                seen, seen_fd, seen_version = dict(store), store.fd, store.version
                assert dict(store) == model
                assert dict(store.view()) == model
                assert store.size == os.fstat(store.fd).st_size
                assert store.live == sum(len(v) for v in model.values())
    finally:
        store.close()
    assert _fds() == before, "a compaction left a descriptor open"


def test_a_compaction_of_thousands_of_files_keeps_every_byte():
    """More live files than one pwritev takes (UIO_MAXIOV, 1024): rotated twice, the store
    compacts (in the kernel, contiguous ranges at once) and every file reads back."""
    store = CertificateStore()
    try:
        for round_ in range(3):
            files = {
                f"/tls/t{i}.pem": os.urandom(700 + i % 50) + bytes([round_]) for i in range(1500)
            }
            store.update(files)
            compacted = store.settle()
        assert compacted and store.dead == 0
        assert dict(store) == files
        assert os.fstat(store.fd).st_size == sum(len(v) for v in files.values())
        # every other file rotated: the live bytes are runs with gaps between them
        for _rotation in range(3):
            files.update({f"/tls/t{i}.pem": os.urandom(900) for i in range(0, 1500, 2)})
            store.update({f"/tls/t{i}.pem": files[f"/tls/t{i}.pem"] for i in range(0, 1500, 2)})
            store.update({f"/tls/t{i}.pem": files[f"/tls/t{i}.pem"] for i in range(1, 1500, 6)})
        assert store.settle() and store.dead == 0
        assert dict(store) == files
    finally:
        store.close()


def test_a_view_forked_before_a_rotation_reads_what_it_was_given_until_it_is_replaced():
    """A worker forked from the binder reads the bytes of its fork time, even after the binder
    rotated every file and compacted (closing its descriptors of the memfd the worker reads);
    given the new read-only descriptor and index (a reload), it reads the new bytes. Its
    descriptor is read-only: it can neither write nor truncate what the others read."""
    store = CertificateStore()
    first = {f"/tls/t{i}.pem": os.urandom(1500) for i in range(800)}
    store.update(first)
    view = store.view()
    binder_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # the worker: wait for the binder's reload, then read
        code = 1
        try:
            binder_end.close()
            worker_end.recv(1)
            assert dict(view) == first
            for attempt in (lambda: os.pwrite(view.fd, b"x", 0), lambda: os.ftruncate(view.fd, 0)):
                try:
                    attempt()
                except OSError as exc:
                    assert exc.errno in (errno.EBADF, errno.EINVAL)
                else:
                    raise AssertionError("a view's descriptor could change the memfd")
            data, fds, _flags, _addr = socket.recv_fds(worker_end, 1 << 20, 1)
            old = view.fd
            view.replace(fds[0], pickle.loads(data))
            assert dict(view) == {p: bytes([len(p) % 256]) * 1600 for p in first}
            with pytest.raises(OSError):
                os.fstat(old)  # the old descriptor was closed
            code = 0
        finally:
            os._exit(code)
    worker_end.close()
    for _rotation in range(2):
        store.update({path: bytes([len(path) % 256]) * 1600 for path in first})
    assert store.settle(), "the rotation left more than half of the memfd dead"
    binder_end.send(b"x")
    # what a reload sends: the index in its payload, the read-only descriptor with it
    socket.send_fds(binder_end, [pickle.dumps(store.index)], [store.reader_fd])
    _, status = os.waitpid(pid, 0)
    binder_end.close()
    store.close()
    assert os.waitstatus_to_exitcode(status) == 0, "the forked view read other bytes"


def test_an_update_the_memfd_refuses_changes_nothing(monkeypatch):
    """When the memfd takes no more bytes (ENOSPC, ENOMEM) in the middle of an update, the
    update raises and the store reads exactly as before: a reload is refused, not half-done."""
    store = CertificateStore()
    try:
        store.update({"/tls/a.pem": b"A" * 10})
        before = dict(store), store.size, store.live
        calls = []
        real = os.pwritev

        def second_fails(fd, buffers, offset):
            calls.append(offset)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(fd, buffers, offset)

        monkeypatch.setattr(os, "pwritev", second_fails)
        files = {f"/tls/t{i}.pem": b"B" * 5 for i in range(1500)}  # two pwritev calls
        files["/tls/a.pem"] = b"C"
        with pytest.raises(OSError):
            store.update(files)
        assert (dict(store), store.size, store.live) == before
    finally:
        store.close()


def test_a_compaction_that_cannot_make_its_memfd_changes_nothing(monkeypatch, caplog):
    store = CertificateStore()
    try:
        monkeypatch.setattr(cert_store, "COMPACT_AFTER", 1024)
        store.update({"/tls/a.pem": b"A" * 4096})
        store.update({"/tls/a.pem": b"B" * 1000})
        fd, index = store.fd, dict(store.index)

        def refuse(*_args):
            raise OSError(errno.EMFILE, "Too many open files")

        monkeypatch.setattr(os, "memfd_create", refuse)
        assert store.settle() is False
        assert (store.fd, store.index) == (fd, index) and store["/tls/a.pem"] == b"B" * 1000
        assert "certificate store not compacted" in caplog.text
    finally:
        store.close()


def test_a_short_read_is_an_error_never_other_bytes():
    """A view whose memfd holds fewer bytes than its index says raises OSError (a descriptor
    that is not the store's, e.g. /dev/null): a context is never built from other bytes."""
    devnull = os.open("/dev/null", os.O_RDONLY)
    view = CertificateView(devnull, {"/tls/a.pem": (0, 10)})
    try:
        with pytest.raises(OSError, match="0 of 10 bytes"):
            view["/tls/a.pem"]
    finally:
        os.close(devnull)


def test_a_worker_can_neither_open_the_memfd_again_nor_shrink_it():
    """A worker (another user, no capability) holding the read-only descriptor cannot open the
    memfd again through /proc/self/fd, for writing or at all (mode 0400), and nobody, the
    binder included, can truncate what the workers read (F_SEAL_SHRINK)."""
    store = CertificateStore()
    try:
        store.update({"/tls/a.pem": b"A" * 5000})
        with pytest.raises(PermissionError):
            os.ftruncate(store.fd, 10)
        view = store.view()

        def worker():
            for mode in (os.O_RDWR, os.O_RDONLY):
                with pytest.raises(PermissionError):
                    os.open(f"/proc/self/fd/{view.fd}", mode)
            with pytest.raises(OSError):
                os.ftruncate(view.fd, 0)
            assert view["/tls/a.pem"] == b"A" * 5000

        assert passes_as_nobody(worker), "the worker could change the memfd"
    finally:
        store.close()
