"""One set of TLS session ticket keys for every worker, so a client resumes on any of them.

OpenSSL gives each ``SSL_CTX`` its own random ticket keys. Every worker builds its own contexts,
and the kernel spreads a client's connections over the workers (SO_REUSEPORT), so with N
workers a ticket would be accepted on only 1 connection in N: a full handshake (and its CPU)
the rest of the time. HAProxy shares its keys between threads and, with ``tls-ticket-keys``,
between processes. Here the binder draws one key set at start (and carries it through an
upgrade), every worker receives it, and each server context is given it.

The standard library has no call for this (``SSLContext`` does not expose
``SSL_CTX_set_tlsext_ticket_keys``), and neither does pyOpenSSL for the stdlib's contexts, so it
is done with ctypes on the context's ``SSL_CTX *``: the first field after ``PyObject_HEAD`` of
CPython's ``PySSLContext`` (Modules/_ssl.c). The pointer is checked before use: OpenSSL's own
options of that ``SSL_CTX`` must equal ``SSLContext.options``, else nothing is set and the
context keeps its own keys (resumption then works per worker only).

Key rotation: like a context's own keys, the set lives as long as the binder (a restart draws a
new one); clients then fall back to a full handshake once.
"""

from __future__ import annotations

import ctypes
import logging
import os
import ssl

log = logging.getLogger("nsproxy")

#: SSL_CTRL_SET_TLSEXT_TICKET_KEYS (openssl/ssl.h); the keys are 80 bytes: a 16-byte name,
#: a 32-byte HMAC secret and a 32-byte AES secret (SSL_CTX_set_tlsext_ticket_keys(3)).
_SET_TICKET_KEYS = 59
_SSL_CTRL_OPTIONS = 32  # SSL_CTRL_OPTIONS: SSL_CTX_get_options in OpenSSL 1.1 is a ctrl
KEY_BYTES = 80

_keys: bytes | None = None
_ssl_lib = None


def new_keys() -> bytes:
    """A fresh key set (the binder draws one at start)."""
    return os.urandom(KEY_BYTES)


def use(keys: bytes | None) -> None:
    """Give every server context built from now on in this process these keys (None: each
    context keeps its own). Raises ValueError for a key set that is not KEY_BYTES long."""
    global _keys
    if keys is not None and len(keys) != KEY_BYTES:
        raise ValueError(f"TLS ticket keys must be {KEY_BYTES} bytes, not {len(keys)}")
    _keys = keys


def _lib():
    global _ssl_lib
    if _ssl_lib is None:
        lib = ctypes.CDLL(ssl._ssl.__file__)  # dlsym also searches its libssl dependency
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        get_options = getattr(lib, "SSL_CTX_get_options", None)  # a function in OpenSSL 3
        if get_options is not None:
            get_options.restype = ctypes.c_uint64
            get_options.argtypes = [ctypes.c_void_p]
        _ssl_lib = lib
    return _ssl_lib


def _ssl_ctx(context: ssl.SSLContext) -> int | None:
    """The ``SSL_CTX *`` of ``context``, or None when it cannot be confirmed."""
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer:
        return None
    lib = _lib()
    if getattr(lib, "SSL_CTX_get_options", None) is not None:
        options = lib.SSL_CTX_get_options(pointer)
    else:
        options = lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_OPTIONS, 0, None) & 0xFFFFFFFF
    return pointer if options == int(context.options) else None


def apply(context: ssl.SSLContext) -> bool:
    """Give ``context`` this process's key set, if one is in use; True if it was set."""
    keys = _keys
    if keys is None:
        return False
    try:
        pointer = _ssl_ctx(context)
    except (OSError, AttributeError) as exc:  # no libssl symbols: keep the context's own keys
        log.warning("TLS ticket keys cannot be shared between workers: %s", exc)
        return False
    if pointer is None:
        log.warning("TLS ticket keys cannot be shared between workers: unknown SSLContext layout")
        return False
    buffer = ctypes.create_string_buffer(keys, KEY_BYTES)
    return _lib().SSL_CTX_ctrl(pointer, _SET_TICKET_KEYS, KEY_BYTES, buffer) == 1
