"""The bytes of the certificate and key files, held once per daemon, outside every heap.

Workers cannot open the files (they run unprivileged), so the binder reads them, and every
worker loads its tenants' SSLContexts from those bytes, lazily, at a listener's first handshake
(tls.ServerContext). Kept as Python ``bytes`` in the binder, every forked worker mapped the
binder's copy (3000 tenants with their own RSA-2048 certificate and key: about 12 MB, counted
again in each worker's RSS) and wrote to those pages as soon as it touched one of the objects
(reference counts live in the object's header), copying them page by page into each worker; a
reload sent the changed files' bytes to every worker, which kept its own copy.

Here the binder appends the bytes to one memfd (memfd_create(2)) and keeps only an index,
path -> (offset, length). A worker holds a read-only descriptor of that memfd
(:attr:`CertificateStore.reader_fd`) and a copy of the index, from its fork
(:meth:`CertificateStore.view`) and again from each reload that changed them (binder/reload.py:
the descriptor travels with the message, the index in its payload; :meth:`CertificateView.
replace`). It reads a file with ``pread`` into a short-lived buffer when it builds a context,
and never maps the memfd, whose pages (tmpfs, shared) are therefore in no process's RSS. The
memfd is mode 0400 and sealed against shrinking (channel.guarded_memfd): a worker, another user,
can neither open it again for writing nor truncate what the others read.

The binder writes past every indexed byte and never over one, so what a worker's index points
at never changes. Bytes a reload replaced or dropped become dead space; when it passes half of
the memfd and :data:`COMPACT_AFTER`, :meth:`CertificateStore.settle` copies the live bytes into
a new memfd in the kernel (copy_file_range(2)) and closes the binder's descriptors of the old
one, which lives on in the workers that hold it until they apply the next generation or exit
(workers draining after a shrink or an upgrade keep theirs to the end).
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterable, Iterator, Mapping

from nsproxy.channel import guarded_memfd, readonly

__all__ = ["COMPACT_AFTER", "CertificateStore", "CertificateView"]

COMPACT_AFTER = 1024 * 1024  # bytes of dead space kept at least before a compaction
_IOV_MAX = 1024  # buffers per pwritev call (Linux's UIO_MAXIOV)

log = logging.getLogger("nsproxy")

Index = dict[str, tuple[int, int]]  # path -> (offset, length) in the memfd


class _Reader(Mapping):
    """path -> bytes, read with ``pread`` from the memfd ``fd`` is open on, at ``index``.
    Reading raises OSError when the memfd holds fewer bytes than the index says (never for the
    store's own memfd, which no descriptor can shrink)."""

    def __init__(self, fd: int, index: Index):
        self.fd = fd
        self.index = index

    def __getitem__(self, path: str) -> bytes:
        offset, length = self.index[path]
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise OSError(f"certificate store: {len(data)} of {length} bytes at offset {offset}")
        return data

    def __iter__(self) -> Iterator[str]:
        return iter(self.index)

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, path: object) -> bool:
        return path in self.index


class CertificateView(_Reader):
    """In a worker: the store's read-only descriptor and the index it was given."""

    def replace(self, fd: int, index: Index) -> None:
        """Read from now on from ``fd`` (this view's to close) at ``index``; the descriptor
        held so far is closed."""
        old, self.fd, self.index = self.fd, fd, index
        os.close(old)


class CertificateStore(_Reader):
    """In the binder: the memfd (read-write ``fd``, read-only :attr:`reader_fd`) and its index;
    ``version`` counts the changes of either (a reload sends them when it differs from what
    the workers were last sent). Raises OSError when the memfd cannot be made
    (memfd_create(2): EMFILE, ENFILE, ENOMEM)."""

    def __init__(self) -> None:
        fd, reader = _new_memfd()
        super().__init__(fd, {})
        self.reader_fd = reader
        self.size = 0  # bytes written to the memfd (its end)
        self.live = 0  # bytes the index points at
        self.version = 0

    def update(self, files: Mapping[str, bytes]) -> None:
        """Append every value, then index them all at once. Raises OSError when the memfd
        takes no more bytes (ENOSPC, ENOMEM): nothing is indexed then, the store is unchanged
        (bytes written past its end are overwritten by the next update)."""
        items = list(files.items())
        offset, added = self.size, {}
        for start in range(0, len(items), _IOV_MAX):
            chunk = [data for _path, data in items[start : start + _IOV_MAX]]
            _write_all(self.fd, chunk, offset)
            for path, data in items[start : start + _IOV_MAX]:
                added[path] = (offset, len(data))
                offset += len(data)
        self.discard(added)
        self.index.update(added)
        self.live += offset - self.size
        self.size = offset
        self.version += bool(added)

    def discard(self, paths: Iterable[str]) -> None:
        """Forget these paths (absent ones are ignored); their bytes become dead space."""
        for path in paths:
            entry = self.index.pop(path, None)
            if entry is not None:
                self.live -= entry[1]
                self.version += 1

    @property
    def dead(self) -> int:
        """Bytes of the memfd no index entry points at."""
        return self.size - self.live

    def view(self) -> CertificateView:
        """What a worker forked now reads: the read-only descriptor and a copy of the index
        (the child's descriptor table is a copy of this process's)."""
        return CertificateView(self.reader_fd, dict(self.index))

    def settle(self) -> bool:
        """Compact when dead space passes half of the memfd and COMPACT_AFTER; whether it did.
        A compaction that fails changes nothing (one warning), and is tried again next time."""
        if self.dead <= max(self.size // 2, COMPACT_AFTER):
            return False
        try:
            fd, reader = _new_memfd()
        except OSError as exc:
            log.warning("certificate store not compacted: %s", exc)
            return False
        try:
            index, size = _copy_live(self.fd, fd, self.index)
        except OSError as exc:
            log.warning("certificate store not compacted: %s", exc)
            os.close(fd)
            os.close(reader)
            return False
        os.close(self.fd)
        os.close(self.reader_fd)
        self.fd, self.reader_fd, self.index, self.size, self.live = fd, reader, index, size, size
        self.version += 1
        return True

    def close(self) -> None:
        for fd in (self.fd, self.reader_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.reader_fd = -1


def _new_memfd() -> tuple[int, int]:
    """(read-write, read-only) descriptors of a new memfd. Raises OSError."""
    fd = guarded_memfd("nsproxy-certificates", fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    try:
        return fd, readonly(fd)
    except OSError:
        os.close(fd)
        raise


def _write_all(fd: int, buffers: list[bytes], offset: int) -> None:
    """pwritev(2) the buffers at ``offset``, going on after a short write. Raises OSError."""
    want, done = sum(len(b) for b in buffers), 0
    while done < want:
        rest, skip = [], done
        for data in buffers:
            if skip >= len(data):
                skip -= len(data)
                continue
            rest.append(memoryview(data)[skip:])
            skip = 0
        written = os.pwritev(fd, rest, offset + done)  # len(buffers) <= _IOV_MAX
        if written <= 0:
            raise OSError("certificate store: the memfd took no more bytes")
        done += written


def _copy_live(src: int, dst: int, index: Index) -> tuple[Index, int]:
    """Copy the indexed ranges of ``src`` to the start of ``dst``, in the kernel, ranges that
    touch copied at once; (the new index, bytes copied). Raises OSError."""
    new: Index = {}
    out = 0
    runs = []  # [src start, src end, dst start]: ranges of src that touch, copied at once
    for path, (offset, length) in sorted(index.items(), key=lambda item: item[1][0]):
        if not runs or runs[-1][1] != offset:
            runs.append([offset, offset, out])
        runs[-1][1] = offset + length
        new[path] = (out, length)
        out += length
    for start, end, to in runs:
        _copy(src, dst, start, end - start, to)
    return new, out


def _copy(src: int, dst: int, offset: int, length: int, to: int) -> None:
    while length > 0:
        copied = os.copy_file_range(src, dst, length, offset, to)
        if copied <= 0:
            raise OSError("certificate store: copy_file_range copied nothing")
        offset, to, length = offset + copied, to + copied, length - copied
