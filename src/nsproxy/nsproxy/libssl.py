"""The ``SSL_CTX`` behind a standard library ``ssl.SSLContext``, through ctypes, for what the
``ssl`` module does not expose: shared ticket keys (tls_tickets.py) and the key exchange groups
a server accepts (tls.py). Neither pyOpenSSL nor the standard library can set these on the
standard library's contexts, which the event loop's TLS transport needs.

The pointer is the first field after ``PyObject_HEAD`` of CPython's ``PySSLContext``
(Modules/_ssl.c), and it is checked before every use: OpenSSL's own options of that ``SSL_CTX``
must equal ``SSLContext.options``, else :func:`ssl_ctx` gives None and the caller sets nothing.
"""

from __future__ import annotations

import ctypes
import ssl

_SSL_CTRL_OPTIONS = 32  # SSL_CTRL_OPTIONS: SSL_CTX_get_options in OpenSSL 1.1 is a ctrl
#: SSL_CTRL_SET_GROUPS_LIST (openssl/ssl.h): SSL_CTX_set1_groups_list(3) is this ctrl macro.
SET_GROUPS_LIST = 92
_ssl_lib = None


def lib():
    global _ssl_lib
    if _ssl_lib is None:
        lib = ctypes.CDLL(ssl._ssl.__file__)  # dlsym also searches its libssl dependency
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        lib.SSL_CTX_set_session_id_context.restype = ctypes.c_int
        lib.SSL_CTX_set_session_id_context.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_uint,
        ]
        get_options = getattr(lib, "SSL_CTX_get_options", None)  # a function in OpenSSL 3
        if get_options is not None:
            get_options.restype = ctypes.c_uint64
            get_options.argtypes = [ctypes.c_void_p]
        _ssl_lib = lib
    return _ssl_lib


def ssl_ctx(context: ssl.SSLContext) -> int | None:
    """The ``SSL_CTX *`` of ``context``, or None when it cannot be confirmed."""
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer:
        return None
    ssl_lib = lib()
    if getattr(ssl_lib, "SSL_CTX_get_options", None) is not None:
        options = ssl_lib.SSL_CTX_get_options(pointer)
    else:
        options = ssl_lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_OPTIONS, 0, None) & 0xFFFFFFFF
    return pointer if options == int(context.options) else None


def set_groups(context: ssl.SSLContext, groups: str) -> bool:
    """Accept only ``groups`` (an OpenSSL groups list, "X25519:P-256") for the key exchange of
    ``context``'s handshakes (SSL_CTX_set1_groups_list(3)); False when it could not be set."""
    pointer = ssl_ctx(context)
    if pointer is None:
        return False
    return lib().SSL_CTX_ctrl(pointer, SET_GROUPS_LIST, 0, groups.encode()) == 1
