"""The certificate store (nsproxy/cert_store.py): the binder's path -> bytes in a memfd, and the
workers' views of it, on the real kernel."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nsproxy import cert_store
from nsproxy.cert_store import CertificateStore

PATHS = st.sampled_from([f"/etc/nsproxy/tls/t{i}.pem" for i in range(6)])
DATA = st.binary(min_size=0, max_size=3000)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), PATHS, DATA),
        st.tuples(st.just("update"), st.dictionaries(PATHS, DATA, max_size=4)),
        st.tuples(st.just("del"), PATHS),
        st.tuples(st.just("compact")),
    ),
    max_size=40,
)


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def small_compaction(monkeypatch):
    """Compactions after a few kB of dead space, so that the examples reach them."""
    monkeypatch.setattr(cert_store, "COMPACT_AFTER", 4096)


@settings(max_examples=300, deadline=None)
@given(ops=OPS)
def test_the_store_holds_what_was_last_written_whatever_the_sequence(ops):
    """Against a dict: every value reads back as last written, deleted ones are gone, and the
    memfd never holds more dead space than the compaction rule allows (half of it, once past
    COMPACT_AFTER), so rotations do not grow it for good."""
    before = _fds()
    store, model = CertificateStore(), {}
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(cert_store, "COMPACT_AFTER", 4096)
            for op in ops:
                if op[0] == "set":
                    store[op[1]] = op[2]
                    model[op[1]] = op[2]
                elif op[0] == "update":
                    store.update(op[1])
                    model.update(op[1])
                elif op[0] == "del":
                    if op[1] in model:
                        del store[op[1]]
                        del model[op[1]]
                    else:
                        with pytest.raises(KeyError):
                            del store[op[1]]
                else:
                    store.compact()
                    assert store.dead == 0
                assert dict(store) == model
                assert len(store) == len(model)
                assert store.own == {}, "with a memfd, no bytes stay in the binder's heap"
                assert store.size == os.fstat(store.fd).st_size
                assert store.dead <= max(store.size // 2, cert_store.COMPACT_AFTER)
    finally:
        store.close()
    assert _fds() == before, "a compaction left a descriptor open"


def test_a_view_forked_before_a_rotation_and_a_compaction_reads_what_it_was_given(
    small_compaction,
):
    """A worker forked from the binder reads the bytes of its fork time, even after the binder
    rotated every file and compacted (closing its descriptor of the memfd the worker reads);
    files a reload sends it are kept in its own heap and read back from there."""
    store = CertificateStore()
    first = {f"/tls/t{i}.pem": os.urandom(1500) for i in range(8)}
    store.update(first)
    view = store.view()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: wait for the binder's changes, then read
        os.close(write)
        os.read(read, 1)
        ok = dict(view) == first
        view["/tls/t0.pem"] = b"sent by a reload"
        del view["/tls/t1.pem"]
        ok = ok and view["/tls/t0.pem"] == b"sent by a reload" and "/tls/t1.pem" not in view
        ok = ok and len(view) == 7 and view.own == {"/tls/t0.pem": b"sent by a reload"}
        os._exit(0 if ok else 1)
    os.close(read)
    old_fd = store.fd
    for round_ in range(3):  # rotations: the old bytes become dead space, then compacted
        store.update({path: os.urandom(1500 + round_) for path in first})
    assert store.fd != old_fd or os.fstat(store.fd).st_size < 3 * 8 * 1500
    assert store.dead <= max(store.size // 2, cert_store.COMPACT_AFTER)
    os.write(write, b"x")
    os.close(write)
    _, status = os.waitpid(pid, 0)
    store.close()
    assert os.waitstatus_to_exitcode(status) == 0, "the forked view read other bytes"


def test_without_a_memfd_the_bytes_stay_in_the_binder(monkeypatch, caplog):
    """When the memfd cannot be made (EMFILE, ENOMEM), the store keeps the values in the
    binder's heap, says so once, and its views still read them: a reload never fails on it."""

    def refuse(*_args):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(os, "memfd_create", refuse)
    store = CertificateStore()
    store.update({"/tls/a.pem": b"A", "/tls/b.pem": b"B"})
    assert store.fd == -1 and dict(store) == {"/tls/a.pem": b"A", "/tls/b.pem": b"B"}
    assert dict(store.view()) == {"/tls/a.pem": b"A", "/tls/b.pem": b"B"}
    assert "certificate bytes kept in the binder's memory" in caplog.text
    del store["/tls/a.pem"]
    assert dict(store) == {"/tls/b.pem": b"B"}
