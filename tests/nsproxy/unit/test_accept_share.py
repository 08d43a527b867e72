"""Accepting is charged to the tenant's share of the loop (accept.py, loop_share.py): the
accept itself, and for a TLS connection what its handshake costs (handshake_cost.py). A
tenant whose connections cost much (a flood of full TLS handshakes, run by the loop's TLS
transport out of sight of the tenant's protocols) stops accepting while others are served;
its clients wait in the kernel's backlog, not in front of the other tenants."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loops import LOOPS, Turns, run
from test_loop_share import fixed_cost
from test_tls_context import listener, make_cert

from nsproxy import handshake_cost, loop_share, tls
from nsproxy.accept import Acceptor

#: The fake clock's cost of one reading: a plain accept costs this, ten of them one budget.
READING = loop_share.TURN_BUDGET / 10


@pytest.fixture(scope="module")
def rsa_cert(tmp_path_factory):
    return make_cert(tmp_path_factory.mktemp("certs"), "r", "/CN=r.example", None, key="rsa")


class Tenant:
    """What the acceptor reads of a worker's tenant runtime (worker/runtime.py)."""

    def __init__(self):
        self.share = loop_share.TenantShare()
        self.connections = None  # admission.hold's set of connections


class Recording(Acceptor):
    """An acceptor that notes the turn of the loop each connection is admitted in."""

    def __init__(self, loop, turns: Turns):
        super().__init__(loop)
        self.turns = turns
        self.admitted: list[tuple[int, Tenant]] = []

    def _admit(self, conn, listener):
        self.admitted.append((self.turns.count, listener.tenant))
        return super()._admit(conn, listener)


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    return sock


async def _accept_all(waiting: list[tuple[Tenant, object, int]]) -> Recording:
    """One listener per entry (tenant, ssl context or None, clients), every client connected
    before the acceptor starts (all in the kernel's backlogs at once); returns the acceptor
    once every connection was admitted. The TLS clients never send a ClientHello: what is
    measured is when the acceptor takes them, charged as full handshakes."""
    loop = asyncio.get_running_loop()
    turns = Turns()
    acceptor = Recording(loop, turns)
    clients = []
    for tenant, ssl_ctx, count in waiting:
        sock = _listening()
        acceptor.add(sock, asyncio.Protocol, ssl_ctx, 5.0, client_first=False, tenant=tenant)
        clients += [socket.create_connection(sock.getsockname()) for _ in range(count)]
    total = sum(count for _, _, count in waiting)
    turns.start()
    acceptor.start()
    try:
        while len(acceptor.admitted) < total:
            await asyncio.sleep(0)
    finally:
        turns.stop()
        for client in clients:
            client.close()
        acceptor.close()
        await asyncio.sleep(0.05)  # the failed handshakes' tasks end
    return acceptor


@pytest.mark.parametrize("loop_name", LOOPS)
@settings(max_examples=6, deadline=None)
@given(costly=st.integers(min_value=8, max_value=40), cheap=st.integers(min_value=8, max_value=40))
def test_a_tenant_flooding_handshakes_does_not_keep_another_waiting(
    loop_name, rsa_cert, costly, cheap
):
    flooding, other = Tenant(), Tenant()
    ctx = tls.ServerContext(listener(rsa_cert))

    async def main():
        with fixed_cost(READING):
            # the other tenant's clients came first: it is served when the flood begins
            return await _accept_all([(other, None, cheap), (flooding, ctx, costly)])

    acceptor = run(loop_name, main())
    turns = {
        who: [turn for turn, tenant in acceptor.admitted if tenant is who]
        for who in (flooding, other)
    }
    assert len(turns[flooding]) == costly and len(turns[other]) == cheap  # nobody lost
    # The cheap tenant takes about ten accepts per turn (its budget), never waiting for the
    # flood's handshakes: done within its own count's turns (and a few to start).
    assert max(turns[other]) - min(turns[other]) <= cheap // 10 + 3
    # The flood gets one handshake per its cost in budgets (DEFAULT until its context is
    # made at its first handshake, measured after), one more for the turn it starts in.
    cost = min(handshake_cost.DEFAULT, ctx.handshake_cost[0])
    span = max(turns[flooding]) - min(turns[flooding])
    assert costly <= 2 + span * loop_share.TURN_BUDGET / cost
    # ... so it spans many turns, where nothing paced it before (one batch, one turn)
    assert span >= (costly - 2) * cost / loop_share.TURN_BUDGET / 2


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_tenant_alone_accepts_its_whole_backlog_at_once(loop_name, rsa_cert):
    alone = Tenant()
    ctx = tls.ServerContext(listener(rsa_cert))

    async def main():
        with fixed_cost(READING):
            return await _accept_all([(alone, ctx, 40)])

    acceptor = run(loop_name, main())
    turns = [turn for turn, _ in acceptor.admitted]
    assert len(turns) == 40 and max(turns) - min(turns) <= 1  # one batch: nobody to share with


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_resumed_handshake_is_charged_what_it_costs(loop_name, rsa_cert):
    """A full handshake is charged at the accept; one that resumed a session gets the
    difference back once done (RFC 8446 section 2.2: no certificate, no signature)."""
    tenant = Tenant()
    ctx = tls.ServerContext(listener(rsa_cert))
    ctx.get()  # made now, so that the costs set below are the ones charged
    full, resumed = 0.015, 0.005
    ctx.handshake_cost = (full, resumed)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE

    def connect(address, session):
        raw = socket.create_connection(address)
        with client.wrap_socket(raw, session=session) as conn:
            conn.recv(1)  # the TLS 1.3 tickets, then the server's close
            return conn.session, conn.session_reused

    async def main():
        loop = asyncio.get_running_loop()
        acceptor = Acceptor(loop)
        sock = _listening()

        class Closing(asyncio.Protocol):
            def connection_made(self, transport):
                loop.call_later(0.05, transport.close)  # after the tickets went out

        acceptor.add(sock, Closing, ctx, 5.0, client_first=True, tenant=tenant)
        acceptor.start()
        address = sock.getsockname()
        shares = loop_share.SHARES
        charged, credited = [], []
        charge, credit = shares.charge, shares.credit
        shares.charge = lambda share, *a: charged.append((share, a[-1])) or charge(share, *a)
        shares.credit = lambda share, seconds: (
            credited.append((share, seconds)) or credit(share, seconds)
        )
        outcome = []
        session = None
        for _attempt in range(2):
            session, reused = await loop.run_in_executor(None, connect, address, session)
            await asyncio.sleep(0.1)  # the accepting task has credited the handshake
            outcome.append((reused, list(charged), list(credited)))
        acceptor.close()
        return outcome

    with fixed_cost(READING):  # fresh shares, put back after
        (first_reused, *first), (second_reused, *second) = run(loop_name, main())
    assert not first_reused and second_reused
    share = tenant.share
    assert first == [[(share, full)], []]  # charged a full handshake, nothing back
    assert second == [[(share, full), (share, full)], [(share, full - resumed)]]


def test_a_handshake_costs_what_its_key_costs(tmp_path, rsa_cert):
    """Measured per key kind: an RSA-4096 signature costs several RSA-2048 ones; a resumed
    handshake (no signature) costs less than a full one; each kind is measured once."""
    rsa_4096 = make_cert(tmp_path, "b", "/CN=b.example", None, key="rsa:4096")
    small_ctx = tls.ServerContext(listener(rsa_cert))
    big_ctx = tls.ServerContext(listener(rsa_4096))
    small_ctx.get()
    big_ctx.get()
    small_full, small_resumed = small_ctx.handshake_cost
    big_full, _big_resumed = big_ctx.handshake_cost
    assert 0 < small_resumed < small_full < big_full
    assert big_full > 2 * small_full  # about 6x: a private-key operation of twice the size
    again = tls.ServerContext(listener(rsa_cert))
    again.get()
    assert again.handshake_cost == small_ctx.handshake_cost  # the kind's, measured once


def test_a_context_that_resumes_nothing_charges_full_handshakes(rsa_cert):
    """Without session tickets nothing resumes: the resumed cost is the full one."""
    context = tls.build_server_context(listener(rsa_cert))
    context.options |= ssl.OP_NO_TICKET
    full, resumed = handshake_cost._measure(context)
    assert full == resumed > 0
