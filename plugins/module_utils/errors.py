# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Failures every module reports the same way: ``ModuleFailure`` (a sentence for ``fail_json``,
never a traceback), ``ParamError`` (bad input, naming the field) and ``errno_sentence`` (a kernel
errno as a sentence)."""

from __future__ import annotations

import errno
import os


class ModuleFailure(Exception):
    """A failure to report with ``fail_json``: ``msg`` is a complete sentence for the user and
    ``extra`` is merged into the failed result (never a traceback)."""

    def __init__(self, msg, **extra):
        super().__init__(msg)
        self.msg = msg
        self.extra = extra


class ParamError(ModuleFailure):
    """Invalid user input, detected before anything is touched. The message starts with the
    field name (``field: what is wrong; allowed: ...``)."""

    def __init__(self, field, problem, **extra):
        super().__init__(f"{field}: {problem}", field=field, **extra)
        self.field = field


_ERRNO_SENTENCES = {
    errno.EEXIST: "an object with that name or value already exists",
    errno.ENODEV: "the interface does not exist (it may have been removed or moved meanwhile)",
    errno.ENOENT: "the object does not exist",
    errno.EBUSY: "the device or resource is busy (in use by another object)",
    errno.EPERM: "operation not permitted: CAP_NET_ADMIN (root) is required",
    errno.EACCES: "permission denied: CAP_NET_ADMIN (root) is required",
    errno.EINVAL: "the kernel rejected a value as invalid",
    errno.ERANGE: "a value is out of the range the kernel accepts",
    errno.EOPNOTSUPP: "the kernel or this device does not support the operation",
    errno.EADDRNOTAVAIL: "the address is not available on this interface",
    errno.ENETUNREACH: "the gateway or destination is unreachable from any connected subnet",
    errno.ESRCH: "no such route or object",
    errno.EAFNOSUPPORT: "the address family is not supported (is IPv6 disabled?)",
    errno.ENOSPC: "no space left for the object (a kernel limit was reached)",
    errno.ENOBUFS: "the kernel ran out of netlink buffer space; retry",
    errno.EMSGSIZE: "the request was too large for the kernel",
    errno.ENOTDIR: "a path component is not a directory",
    errno.EXDEV: "the operation would cross namespaces or devices, which is not allowed",
}


def errno_sentence(code, action=None, kernel_text=None):
    """Turn an errno (plus optional action such as ``"creating veth 'v0'"`` and the kernel's
    extended-ack text) into one readable sentence, e.g. ``"creating veth 'v0' failed: an
    object with that name already exists (EEXIST; kernel: ...)"``."""
    try:
        code = int(code)
    except (TypeError, ValueError):
        code = errno.EIO
    name = "EOPNOTSUPP" if code == errno.EOPNOTSUPP else errno.errorcode.get(code, f"errno {code}")
    meaning = _ERRNO_SENTENCES.get(code) or os.strerror(code)
    detail = name
    text = str(kernel_text or "").strip()
    if text and text.lower() != os.strerror(code).lower():
        detail = f"{name}; kernel says: {text}"
    prefix = (f"{action} failed: ") if action else ""
    return f"{prefix}{meaning} ({detail})"
