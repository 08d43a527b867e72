"""One set of TLS session ticket keys for every worker, so a client resumes on any of them.

OpenSSL gives each ``SSL_CTX`` its own random ticket keys. Every worker builds its own contexts,
and the kernel spreads a client's connections over the workers (SO_REUSEPORT), so with N
workers a ticket would be accepted on only 1 connection in N: a full handshake (and its CPU)
the rest of the time. HAProxy shares its keys between threads and, with ``tls-ticket-keys``,
between processes. Here the binder draws one key set at start (and carries it through an
upgrade), every worker receives it, and each server context is given it.

The standard library has no call for this (``SSLContext`` does not expose
``SSL_CTX_set_tlsext_ticket_keys``), and neither does pyOpenSSL for the stdlib's contexts, so it
is done with ctypes on the context's ``SSL_CTX *`` (libssl.py); when that pointer cannot be
confirmed nothing is set and the context keeps its own keys (resumption then works per worker
only).

Sessions are tied to the certificate set that made them. Every tenant may listen on the same
address (10.0.0.250:443 in each namespace), so a session of one tenant's listener offered to
another's would otherwise resume there without a certificate: the client, which checked the
first tenant's certificate, would talk to the second tenant's upstream under the first one's
name (the "virtual host confusion" of Delignat-Lavaud and Bhargavan, 2015). So each context
gets, from :func:`apply`, (1) ticket keys derived from the shared set and a digest of its
listener's certificates and settings (HKDF-Expand, RFC 5869 section 2.3), and (2) that digest as
its session id context (``SSL_CTX_set_session_id_context``; CPython gives every server context
the same one, "Python"), which OpenSSL compares before it resumes any session, ticket or
cached. A session made under another certificate set is then a cache miss: a full handshake,
in which the client sees this listener's own certificate. Listeners with the same certificate
files share a context (tls.ServerContext) and so their sessions: each can prove it holds that
certificate anyway.

Key rotation: the binder draws a new set every ``timeouts.ticket_keys`` seconds (an hour by
default) and sends it to every serving worker, which gives it to every context it has tied
(:func:`rotate`, about 20 us per context); the old set is dropped (not wiped: CPython does
not overwrite the memory it frees). A ticket is encrypted with the keys of its hour, so keys
read later from a worker's or the binder's memory do not open the tickets recorded in the
hours before: TLS 1.2 tickets carry the session's master secret (RFC 5077 section 5.5 asks for
keys changed regularly for this reason; RFC 8446 section 4.6.1 caps a ticket's life at 7 days).
A draining worker, and one from before an upgrade, keep their set until they exit (at most
``timeouts.drain``) and may resume its tickets while they still accept (a reload's switch to
new workers, a worker count lowered: seconds). OpenSSL's call holds one key set, not a list: a
client whose ticket was issued before a rotation makes one full handshake after it.
"""

from __future__ import annotations

import ctypes
import hmac
import logging
import os
import ssl
import weakref

from nsproxy import libssl

log = logging.getLogger("nsproxy")

#: SSL_CTRL_SET_TLSEXT_TICKET_KEYS (openssl/ssl.h); the keys are 80 bytes: a 16-byte name,
#: a 32-byte HMAC secret and a 32-byte AES secret (SSL_CTX_set_tlsext_ticket_keys(3)).
_SET_TICKET_KEYS = 59
_SID_CTX_MAX = 32  # SSL_MAX_SID_CTX_LENGTH (openssl/ssl.h)
KEY_BYTES = 80

_keys: bytes | None = None
#: Every context of this process tied by :func:`apply`, with its identity: :func:`rotate` gives
#: each the new keys (a context no listener holds any more leaves on its own).
_tied: weakref.WeakKeyDictionary[ssl.SSLContext, bytes] = weakref.WeakKeyDictionary()


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


def rotate(keys: bytes) -> int:
    """Use ``keys`` from now on, in the contexts built later and in every context tied so far;
    returns how many of those took them. Raises ValueError as :func:`use`."""
    use(keys)
    taken = 0
    for context, identity in list(_tied.items()):
        pointer = libssl.ssl_ctx(context)
        taken += pointer is not None and _set_keys(pointer, keys, identity)
    return taken


def _set_keys(pointer: int, keys: bytes, identity: bytes) -> bool:
    buffer = ctypes.create_string_buffer(derived_keys(keys, identity), KEY_BYTES)
    return libssl.lib().SSL_CTX_ctrl(pointer, _SET_TICKET_KEYS, KEY_BYTES, buffer) == 1


def derived_keys(keys: bytes, identity: bytes) -> bytes:
    """The ticket keys of the contexts whose certificate set has digest ``identity``: KEY_BYTES
    of HKDF-Expand(``keys``, info) with SHA-256 (RFC 5869 section 2.3). ``keys`` is uniformly
    random, so it serves as the pseudorandom key without the Extract step (section 3.3). The
    standard library's hmac is the library here: HKDF-Expand is these four lines."""
    info, block, out = b"nsproxy ticket keys\0" + identity, b"", b""
    for counter in range(1, -(-KEY_BYTES // 32) + 1):
        block = hmac.digest(keys, block + info + bytes([counter]), "sha256")
        out += block
    return out[:KEY_BYTES]


def apply(context: ssl.SSLContext, identity: bytes) -> bool:
    """Tie ``context``'s sessions to ``identity``, a digest of its listener's certificates and
    settings (see the module docstring): its session id context, and ticket keys derived from
    this process's key set when one is in use. True if both were set. When the context's
    ``SSL_CTX`` cannot be confirmed nothing is set: the context keeps OpenSSL's own random
    ticket keys and session cache, which no other context shares (resumption then works within
    one worker only)."""
    try:
        pointer = libssl.ssl_ctx(context)
    except (OSError, AttributeError) as exc:  # no libssl symbols: keep the context's own keys
        log.warning("TLS ticket keys cannot be shared between workers: %s", exc)
        return False
    if pointer is None:
        log.warning("TLS ticket keys cannot be shared between workers: unknown SSLContext layout")
        return False
    lib = libssl.lib()
    sid_ctx = identity[:_SID_CTX_MAX]
    if lib.SSL_CTX_set_session_id_context(pointer, sid_ctx, len(sid_ctx)) != 1:
        return False
    _tied[context] = identity
    keys = _keys
    return keys is not None and _set_keys(pointer, keys, identity)
