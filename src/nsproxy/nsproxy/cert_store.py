"""The bytes of the certificate and key files, held once per daemon, outside every heap.

Workers cannot open the files (they run unprivileged), so the binder reads them and every
worker loads its tenants' SSLContexts from those bytes, lazily, at a listener's first handshake
(tls.ServerContext). Kept as Python ``bytes`` in the binder, every forked worker mapped the
binder's copy (3000 tenants with their own RSA-2048 certificate and key: about 12 MB, counted
again in each worker's RSS), and wrote to those pages as soon as it touched one of the objects
(reference counts live in the object's header), copying them page by page into each worker.

Here the binder appends the bytes to one memfd (memfd_create(2)) and keeps only an index,
path -> (offset, length). A worker inherits the descriptor and a copy of the index when it is
forked (:meth:`CertificateStore.view`) and reads one file's bytes with ``pread`` when it builds a
context; the file is never mapped, so its pages (tmpfs, shared) are in no process's RSS and are
never copied. The benchmark adds the memfd's allocated pages to the daemon's memory, once.

The memfd only grows, so a view's offsets stay valid however the binder's store changes
later; bytes a reload replaced or dropped become dead space, and when dead space passes both
half of the memfd and :data:`COMPACT_AFTER`, the binder copies the live bytes into a new memfd
and closes its descriptor of the old one (workers forked before keep theirs, and with it the
old memfd, until they exit). Files a reload changes reach running workers as bytes in the
reload's message (binder/reload.py), which a view keeps in its own heap.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, MutableMapping

__all__ = ["COMPACT_AFTER", "CertificateStore", "CertificateView"]

COMPACT_AFTER = 1024 * 1024  # bytes of dead space kept at least before a compaction
_IOV_MAX = 1024  # buffers per pwritev call (Linux's UIO_MAXIOV)

log = logging.getLogger("nsproxy")


class _NoMemfd(Exception):
    """The store has no memfd (memfd_create failed, and said so)."""


class _Files(MutableMapping):
    """path -> bytes: in the memfd ``fd`` at ``index[path]`` (offset, length), or in ``own``
    (this process's heap). A path is in one of the two only."""

    def __init__(self, fd: int, index: dict[str, tuple[int, int]]):
        self.fd = fd
        self.index = index
        self.own: dict[str, bytes] = {}

    def __getitem__(self, path: str) -> bytes:
        data = self.own.get(path)
        if data is not None:
            return data
        offset, length = self.index[path]
        data = os.pread(self.fd, length, offset)
        if len(data) != length:  # the memfd never shrinks under an index entry
            raise OSError(f"certificate store: {len(data)} of {length} bytes at offset {offset}")
        return data

    def __setitem__(self, path: str, data: bytes) -> None:
        self._forget(path)
        self.own[path] = data

    def __delitem__(self, path: str) -> None:
        if not self._forget(path):
            raise KeyError(path)

    def _forget(self, path: str) -> bool:
        return self.own.pop(path, None) is not None or self.index.pop(path, None) is not None

    def __iter__(self) -> Iterator[str]:
        yield from self.index
        yield from self.own

    def __len__(self) -> int:
        return len(self.index) + len(self.own)

    def __contains__(self, path: object) -> bool:
        return path in self.own or path in self.index


class CertificateView(_Files):
    """In a worker: the binder's memfd as it was when the worker was forked, read with
    ``pread``, plus the files later reloads sent, kept in ``own`` (this worker's heap)."""


class CertificateStore(_Files):
    """In the binder: each value written is appended to the memfd. When the memfd cannot be
    made or written (ENOMEM, EMFILE), the values stay in the binder's heap instead (``own``),
    with one warning: the store never loses a value, and a reload never fails on it."""

    def __init__(self) -> None:
        try:
            fd = os.memfd_create("nsproxy-certificates", os.MFD_CLOEXEC)
        except OSError as exc:
            log.warning("certificate bytes kept in the binder's memory: memfd_create: %s", exc)
            fd = -1
        super().__init__(fd, {})
        self.size = 0  # bytes written to the memfd (its end)
        self.live = 0  # bytes of the memfd the index points at

    def __setitem__(self, path: str, data: bytes) -> None:
        self.update({path: data})

    def __delitem__(self, path: str) -> None:
        super().__delitem__(path)
        self._maybe_compact()

    def _forget(self, path: str) -> bool:
        entry = self.index.get(path)
        if entry is not None:
            self.live -= entry[1]
        return super()._forget(path)

    def update(self, other: Mapping[str, bytes] = (), /, **kwargs) -> None:  # type: ignore[override]
        """Append the values to the memfd with as few writes as the kernel allows (pwritev)."""
        items = [*dict(other, **kwargs).items()]
        for start in range(0, len(items), _IOV_MAX):
            chunk = items[start : start + _IOV_MAX]
            try:
                if self.fd < 0:  # said when memfd_create failed
                    raise _NoMemfd
                self._append(chunk)
            except (OSError, _NoMemfd) as exc:
                if not isinstance(exc, _NoMemfd):
                    log.warning("certificate bytes kept in the binder's memory: %s", exc)
                for path, data in chunk:
                    _Files.__setitem__(self, path, data)
        self._maybe_compact()

    def _append(self, chunk: list[tuple[str, bytes]]) -> None:
        want = sum(len(data) for _path, data in chunk)
        done = 0
        while done < want:  # a short write: go on after what was written
            written = os.pwritev(self.fd, _after([d for _p, d in chunk], done), self.size + done)
            if written <= 0:
                raise OSError("the memfd took no more bytes")
            done += written
        offset = self.size
        for path, data in chunk:
            self._forget(path)
            self.index[path] = (offset, len(data))
            self.live += len(data)
            offset += len(data)
        self.size = offset

    def view(self) -> CertificateView:
        """What a worker forked now reads: this memfd and copies of the index and of ``own``
        (see the module docstring); valid in the child, whose descriptors are a copy of these."""
        view = CertificateView(self.fd, dict(self.index))
        view.own.update(self.own)
        return view

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- dead space -------------------------------------------------------------------------
    @property
    def dead(self) -> int:
        """Bytes of the memfd no index entry points at."""
        return self.size - self.live

    def _maybe_compact(self) -> None:
        if self.size > COMPACT_AFTER and self.dead > max(self.size // 2, COMPACT_AFTER):
            self.compact()

    def compact(self) -> None:
        """Copy the live bytes into a new memfd, and close this process's descriptor of the old
        one. When the new one cannot be made or written, nothing changes (one warning)."""
        try:
            fd = os.memfd_create("nsproxy-certificates", os.MFD_CLOEXEC)
        except OSError as exc:
            log.warning("certificate store not compacted: memfd_create: %s", exc)
            return
        live = {path: self[path] for path in self.index}
        old = self.fd, self.index, self.size, self.live
        self.fd, self.index, self.size, self.live = fd, {}, 0, 0
        try:
            self._append([*live.items()])
        except OSError as exc:
            log.warning("certificate store not compacted: %s", exc)
            os.close(fd)
            self.fd, self.index, self.size, self.live = old
            return
        os.close(old[0])


def _after(buffers: list[bytes], skip: int) -> list[memoryview]:
    """The buffers without their first ``skip`` bytes (what a short pwritev left)."""
    out = []
    for data in buffers:
        if skip >= len(data):
            skip -= len(data)
            continue
        out.append(memoryview(data)[skip:])
        skip = 0
    return out
