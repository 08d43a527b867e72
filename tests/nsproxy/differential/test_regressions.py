"""Failing examples the differential suite found, kept as plain tests with their exact bytes.

Each test plays one Example through the same lab and judges it with the same invariants as
test_differential.py; its docstring says what the upstream read at commit 49f440c and which
invariant broke (the letters of invariants.py). ``XXXXXX`` is the example id the lab fills in.
Where the suite found a case on the shared upstream and the reuse of a pooled connection
decides it, the test uses the tenant's own upstream instead (one server), so that round robin
does not decide which connection is reused.
"""

from __future__ import annotations

import pytest
from lab import lab_fixture, verify
from model import Example, Request, Session

lab = pytest.fixture(scope="module", name="lab")(lab_fixture)

SMUGGLED = b"GET /s/XXXXXX/t1/1x/cl HTTP/1.1\r\nHost: a.example\r\nX-Nsproxy-Tenant: t2\r\n\r\n"


def one(tenant: str, *requests: Request, pipelined=True, half_close=False) -> Session:
    return Session(tenant, requests, pipelined=pipelined, half_close=half_close)


def test_connection_naming_content_length_keeps_the_body_one_message(lab):
    """Fault 1. Upstream read the GET without its body, then the body as a second request
    carrying X-Nsproxy-Tenant: t2 that nsproxy never logged: (a), (b), (e)."""
    head = b"GET /s/XXXXXX/t1/1/cl HTTP/1.1\r\nHost: a.example\r\nContent-Length: 74\r\n"
    raw = head + b"Connection: Content-Length\r\n\r\n" + SMUGGLED
    verify(lab, Example((one("t1", Request(raw, body=SMUGGLED), pipelined=False),)))


def test_bytes_after_a_refused_upgrade_are_not_relayed_raw(lab):
    """Fault 2. The upstream answered the Upgrade request with 200; the pipelined GET behind it
    had been relayed raw and was read without any of the proxy's headers, and not logged:
    (a), (b)."""
    upgrade = Request(
        b"GET /s/XXXXXX/t1/1/cl HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n"
        b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        body=b"",
    )
    after = Request(b"GET /s/XXXXXX/t1/2/cl HTTP/1.1\r\nHost: a.example\r\n\r\n", body=b"")
    verify(lab, Example((one("t1", upgrade, after),)))


def test_a_body_sent_with_an_upgrade_is_framed_not_relayed(lab):
    """Fault 2, a body with the Upgrade request. The chunked body went to the upstream raw,
    after a head without Transfer-Encoding: the upstream read the chunk sizes as a request
    line and the smuggled GET inside: (a), (b), (e)."""
    body = b"GET /o/XXXXXX/t1/1x/cl HTTP/1.1\r\nHost: a.example\r\nX-Nsproxy-Tenant: t2\r\n\r\n"
    raw = (
        b"POST /o/XXXXXX/t1/1/cl HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
    )
    verify(lab, Example((one("t1", Request(raw, body=body)),)))


def test_underscore_spelling_of_x_forwarded_for_is_not_forwarded(lab):
    """Fault 3. Upstream read X-Forwarded-For as ['6.6.6.6', '10.0.0.250'] in WSGI's
    reading (HTTP_X_FORWARDED_FOR): (b)."""
    raw = b"GET /s/XXXXXX/t1/1/cl HTTP/1.1\r\nHost: a.example\r\nX_Forwarded_For: 6.6.6.6\r\n\r\n"
    verify(lab, Example((one("t1", Request(raw, body=b""), pipelined=False),)))


def test_underscore_spelling_of_the_tenant_header_is_not_forwarded(lab):
    """Fault 3. Tenant t2's request reached t2's own upstream with X-Nsproxy-Tenant read as
    ['t1', 't2']: (b)."""
    raw = b"GET /o/XXXXXX/t2/1/cl HTTP/1.1\r\nHost: a.example\r\nx_nsproxy_tenant: t1\r\n\r\n"
    verify(lab, Example((one("t2", Request(raw, body=b"")),)))


def test_junk_after_a_response_is_not_read_as_another_response(lab):
    """Fault 4. The upstream sent junk after a complete response: nsproxy logged the GET twice
    with the upstream's status, the upstream read it once: (a)."""
    raw = b"GET /s/XXXXXX/t1/1/junk HTTP/1.1\r\nHost: a.example\r\n\r\n"
    verify(lab, Example((one("t1", Request(raw, body=b""), pipelined=False),)))


def test_a_connection_with_half_a_stray_response_is_not_reused_nor_the_post_resent(lab):
    """Faults 4 and 5. After a response followed by half a stray one, the connection went back
    to the pool; the next client's bodiless POST met the stray bytes and was sent again on a
    new connection: the upstream read the POST twice, nsproxy logged it once: (a)."""
    first = Request(b"GET /o/XXXXXX/t1/1/extrahead HTTP/1.1\r\nHost: a.example\r\n\r\n", body=b"")
    post = Request(b"POST /o/XXXXXX/t1/2/cl HTTP/1.1\r\nHost: a.example\r\n\r\n", body=b"")
    verify(lab, Example((one("t1", first, pipelined=False), one("t1", post, pipelined=False))))


def test_a_request_is_not_resent_after_response_bytes_arrived(lab):
    """Fault 5. On a reused connection the upstream sent half a status line and closed; the
    GET was sent again (a retry after a response byte): the upstream read it twice, nsproxy
    logged it once: (a). Found on the shared upstream behind three plain GETs."""
    first = Request(b"GET /o/XXXXXX/t1/1/cl HTTP/1.1\r\nHost: a.example\r\n\r\n", body=b"")
    cut = Request(b"GET /o/XXXXXX/t1/2/closeh HTTP/1.1\r\nHost: a.example\r\n\r\n", body=b"")
    verify(lab, Example((one("t1", first, pipelined=False), one("t1", cut, pipelined=False))))


def test_transfer_encoding_identity_response_arrives_complete_or_as_a_502(lab):
    """Fault 6. The upstream's 'Transfer-Encoding: identity' body, ended by its close, reached
    the client as chunked without a last chunk: an incomplete response: (d)."""
    raw = b"GET /s/XXXXXX/t1/1/teid HTTP/1.1\r\nHost: a.example\r\n\r\n"
    verify(lab, Example((one("t1", Request(raw, body=b""), pipelined=False),)))


def test_gzip_transfer_coding_is_kept_or_refused(lab):
    """Fault 6. 'Transfer-Encoding: gzip, chunked' lost its gzip coding: the client got gzip
    bytes as the body with nothing saying so: (d)."""
    raw = b"GET /o/XXXXXX/t1/1/gzip HTTP/1.1\r\nHost: a.example\r\n\r\n"
    verify(lab, Example((one("t1", Request(raw, body=b""), pipelined=False),)))


def test_a_413_before_the_body_is_read_ends_in_a_clean_close(lab):
    """Fault 7. The client wrote its whole 300000-byte body before reading; the proxy answered
    413 and closed with the body unread, so the connection ended in a reset: (d)."""
    body = b"o" * 300000
    raw = b"GET /s/XXXXXX/t1/1/cl HTTP/1.1\r\nHost: a.example\r\nContent-Length: 300000\r\n\r\n"
    verify(lab, Example((one("t1", Request(raw + body, body=body), pipelined=False),)))


def test_a_half_closed_client_gets_its_response(lab):
    """Fault 8. A complete GET, then shutdown(SHUT_WR): the upstream answered, the client got
    nothing and the access log says 499: (d). Found with .../1/cl; here the upstream answers
    late ("slow"), since with an answer within milliseconds today's code sometimes wins the
    race against the client's FIN (it reads the FIN only after it has connected upstream)."""
    raw = b"GET /s/XXXXXX/t1/1/slow HTTP/1.1\r\nHost: a.example\r\n\r\n"
    verify(lab, Example((one("t1", Request(raw, body=b""), pipelined=False, half_close=True),)))


def test_round_robin_uses_both_servers(lab):
    """Fault 9. Two requests of t1 to the two-server shared upstream both went to the same
    server: (f)."""
    first = Request(b"GET /s/XXXXXX/t1/1/cl HTTP/1.1\r\nHost: a.example\r\n\r\n", body=b"")
    second = Request(b"GET /s/XXXXXX/t1/2/cl HTTP/1.1\r\nHost: a.example\r\n\r\n", body=b"")
    verify(lab, Example((one("t1", first, pipelined=False), one("t1", second, pipelined=False))))


def test_a_broken_off_response_with_a_pipelined_body_behind_it_ends_cleanly(lab):
    """Found in CI on main (5941fc8). Session A's GET left a pooled connection to the shared
    upstream; session B pipelined a GET its upstream breaks off after 10 of 144 body bytes
    ("closeb"), then a GET with a 300000-byte body. B got the head and the 10 bytes, then a
    reset: (d)."""
    first = Request(b"GET /s/XXXXXX/t1/1/cl HTTP/1.1\r\nHost: a.example\r\n\r\n", body=b"")
    cut = Request(b"GET /s/XXXXXX/t1/2/closeb HTTP/1.1\r\nHost: a.example\r\n\r\n", body=b"")
    body = b"o" * 300000
    raw = b"GET /s/XXXXXX/t1/3/cl HTTP/1.1\r\nHost: a.example\r\nContent-Length: 300000\r\n\r\n"
    big = Request(raw + body, body=body)
    verify(lab, Example((one("t1", first, pipelined=False), one("t1", cut, big))))


def test_a_request_with_a_body_never_gets_an_unchecked_pooled_connection(lab):
    """Found at seed 31337 (twice, after 790 and 655 examples). t1's own upstream answered
    HEAD .../closeb with its head and closed without saying so; the connection had gone back
    to the pool, and the next request (a GET with a one-byte body, or a POST sent after the
    proxy's 100 Continue, so before the HEAD's answer) took it in the instant before the close
    arrived: 502 (broken pipe, reset), though its upstream answers 'cl': (d). A request that
    must not be resent cannot be saved from that race by any proxy (RFC 9112 9.3.1); the lab's
    upstream now announces such a close (RFC 9112 9.6, upstream_behaviour.py), and the proxy
    gives a request with a body, like a POST, only a pooled connection a peek shows open."""
    head = Request(b"HEAD /o/XXXXXX/t1/1/closeb HTTP/1.1\r\nHost: a.example\r\n\r\n", body=b"")
    raw = b"GET /o/XXXXXX/t1/2/cl HTTP/1.1\r\nHost: a.example\r\nContent-Length: 1\r\n\r\n\x00"
    after = Request(raw, body=b"\x00")
    other = Request(b"GET /s/XXXXXX/t1/3/cl HTTP/1.1\r\nHost: a.example\r\n\r\n", body=b"")
    verify(
        lab,
        Example((one("t1", head, after, pipelined=False), one("t1", other, pipelined=False))),
    )
