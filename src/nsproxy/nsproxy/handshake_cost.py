"""What a TLS handshake costs a worker: the part of its tenant's share (loop_share.py) that an
accepted TLS connection is charged before its handshake runs.

The handshake runs inside the event loop's TLS transport (uvloop), where no protocol of the
tenant's is called, so loop_share.py cannot time it as it times reads; yet it is most of what
a new TLS connection costs: one signature with the listener's key and one key exchange, about
1.4 ms of a worker's CPU with RSA-2048 on this project's machines against a few µs for a read
of a small request (``bench/README.md``, "Full handshakes"). A tenant that only opens TLS
connections and never sends a request would take the loop from every other tenant unseen.

So the acceptor (accept.py) charges each TLS connection it accepts what a full handshake with
the listener's key costs here, and takes back the difference when the handshake turned out to
resume a session (RFC 8446 section 2.2: no certificate, no signature). Both are measured once
per key kind (algorithm and size: ``tls.public_key``) in each worker, when the first context
with such a key is made: an in-memory handshake (``ssl.MemoryBIO``, RFC 8446 full and then
resumed with the ticket it gave) against a client of this module that uses the costliest key
exchange the server accepts (:data:`COSTLIEST_GROUP`: the client chooses, tls.GROUPS bounds
the choice), timing only the server's steps in CPU time of the thread (``time.thread_time``:
a preemption meanwhile is not counted), the least of :data:`ROUNDS`. That costs a few ms once
per kind, not per tenant.
"""

from __future__ import annotations

import contextlib
import ssl
import time

from nsproxy import libssl

#: Handshakes measured per key kind (the least counts: the first is the coldest).
ROUNDS = 2
#: Seconds charged for a handshake before its listener's context is made (its first
#: handshake makes it): an RSA-2048 handshake on a slow core.
DEFAULT = 0.002
#: The most one handshake is charged (loop_share.MAX_CHARGE is the same bound for a read).
MOST = 0.02
#: The key exchange measured: the costliest of tls.GROUPS.
COSTLIEST_GROUP = "P-256"

_measured: dict[bytes, tuple[float, float]] = {}  # key kind -> (full, resumed) seconds
_client_context: ssl.SSLContext | None = None


def of(context: ssl.SSLContext, kind: bytes) -> tuple[float, float]:
    """(full, resumed) seconds of the server's CPU per handshake with ``context``'s key, whose
    kind ``kind`` is (``tls.public_key``); measured at the first call for each kind. A context
    the measuring client cannot complete a handshake with (it never fails for the serving
    settings) counts as :data:`DEFAULT` for both."""
    cost = _measured.get(kind)
    if cost is None:
        try:
            rounds = [_measure(context) for _round in range(ROUNDS)]
            cost = (min(r[0] for r in rounds), min(r[1] for r in rounds))
        except (ssl.SSLError, OSError):
            cost = (DEFAULT, DEFAULT)
        _measured[kind] = cost
    return cost


def _client() -> ssl.SSLContext:
    global _client_context
    if _client_context is None:
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
        # The costliest group tls.GROUPS lets a client choose: a tenant's clients may all
        # choose it. (If it cannot be set, the default, X25519, is measured.)
        libssl.set_groups(client, COSTLIEST_GROUP)
        _client_context = client
    return _client_context


def _measure(context: ssl.SSLContext) -> tuple[float, float]:
    """(full, resumed) seconds of the server's thread CPU for one handshake each; a context
    that resumes no session (no tickets) costs a full handshake for both."""
    full, session, _reused = _handshake(context, None)
    resumed, _session, reused = _handshake(context, session)
    return min(full, MOST), min(resumed if reused else full, MOST)


def _handshake(context: ssl.SSLContext, session) -> tuple[float, object, bool]:
    """One handshake over memory BIOs, resuming ``session`` if it can: (the server's CPU
    seconds, the client's session, whether the server resumed it)."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = _client().wrap_bio(client_in, client_out, session=session)
    server = context.wrap_bio(to_server, to_client, server_side=True)
    spent = 0.0
    for _flight in range(4):  # TLS 1.2 and 1.3 finish in two flights of each side
        with contextlib.suppress(ssl.SSLWantReadError):
            client.do_handshake()
        to_server.write(client_out.read())
        start = time.thread_time()
        try:
            server.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        spent += time.thread_time() - start
        client_in.write(to_client.read())
        if done:
            # TLS 1.3 sends its tickets after the handshake: the client reads them now.
            with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                client.read(1)
            return spent, client.session, server.session_reused
    raise ssl.SSLError("the measuring handshake did not finish")
