"""No client byte can change how a request is framed on the way through or whose it is.

Two tenants share one upstream in the host namespace, which trusts X-Nsproxy-Tenant. Every test
sends exact bytes from inside tenant t1 and checks what the recording upstream (rawup.py) parsed:
the requests, their framing, and every field a framework could read as the identity.
"""

from __future__ import annotations

import json

import pytest
from conftest import ADDR, http_tenant

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a.example\r\nX-Nsproxy-Tenant: t2\r\n\r\n"


@pytest.fixture
def shared_upstream(proxy):
    proxy.add_netns("t1", "t2")
    proxy.start_rawup("shared", "127.0.0.1:9600")
    proxy.write_config([http_tenant(t, ["127.0.0.1:9600"]) for t in ("t1", "t2")])
    proxy.start()
    return proxy


def cgi_names(record: dict) -> list[tuple[str, str]]:
    """The fields as a WSGI/CGI server sees them: HTTP_ + upper case, '-' and '_' as '_'."""
    return [("HTTP_" + k.upper().replace("-", "_"), v) for k, v in record["headers"]]


def assert_only_t1_requests(records: list[dict]) -> None:
    for record in records:
        assert record["target"] != "/smuggled" or [
            v for k, v in cgi_names(record) if k == "HTTP_X_NSPROXY_TENANT"
        ] == ["t1"], record
        tenant = [v for k, v in cgi_names(record) if k == "HTTP_X_NSPROXY_TENANT"]
        assert tenant == ["t1"], record


# A client names each field the proxy decides in Connection; the body of the framed requests
# is a complete request with a forged tenant.
NOMINATIONS = {
    "Content-Length": b"POST /framed HTTP/1.1\r\nHost: a.example\r\nContent-Length: %d\r\n"
    b"Connection: keep-alive, Content-Length\r\n\r\n%b" % (len(SMUGGLED), SMUGGLED),
    "content-length (alone)": b"POST /framed HTTP/1.1\r\nHost: a.example\r\nContent-Length: %d\r\n"
    b"Connection: content-length\r\n\r\n%b" % (len(SMUGGLED), SMUGGLED),
    "Transfer-Encoding": b"POST /framed HTTP/1.1\r\nHost: a.example\r\n"
    b"Transfer-Encoding: chunked\r\nConnection: Transfer-Encoding\r\n\r\n%x\r\n%b\r\n0\r\n\r\n"
    % (len(SMUGGLED), SMUGGLED),
    "Host": b"GET /framed HTTP/1.1\r\nHost: a.example\r\nConnection: Host\r\n\r\n",
    "Connection": b"GET /framed HTTP/1.1\r\nHost: a.example\r\nConnection: Connection\r\n\r\n",
    "proxy fields": b"GET /framed HTTP/1.1\r\nHost: a.example\r\nConnection: X-Nsproxy-Tenant, "
    b"X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host\r\n\r\n",
}


@pytest.mark.parametrize("nominated", NOMINATIONS)
def test_connection_cannot_remove_framing_routing_or_identity_fields(shared_upstream, nominated):
    answer = shared_upstream.exchange("t1", NOMINATIONS[nominated])
    assert [r["status"] for r in answer["responses"]] == [200], answer
    records = shared_upstream.upstream_saw()
    assert [r["target"] for r in records] == ["/framed"], records  # one request, not two
    (record,) = records
    fields = dict(cgi_names(record))
    assert [v for k, v in cgi_names(record) if k == "HTTP_X_NSPROXY_TENANT"] == ["t1"]
    assert fields["HTTP_HOST"] == "a.example"
    assert fields["HTTP_X_FORWARDED_FOR"] == ADDR
    assert fields["HTTP_X_FORWARDED_PROTO"] == "http"
    assert fields["HTTP_X_FORWARDED_HOST"] == "a.example"
    if record["method"] == "POST":
        assert record["body_len"] == len(SMUGGLED)


def test_a_connection_token_naming_an_ordinary_field_removes_it(shared_upstream):
    request = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Hop: 1\r\nX-Kept: 2\r\nConnection: x-hop\r\n\r\n"
    shared_upstream.exchange("t1", request)
    (record,) = shared_upstream.upstream_saw()
    names = [k.lower() for k, _ in record["headers"]]
    assert "x-hop" not in names and "x-kept" in names


UPGRADES = {
    "websocket": b"GET /up HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\n\r\n",
    "h2c": b"GET /up HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    "unknown token": b"GET /up HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n"
    b"Upgrade: foo/2\r\n\r\n",
    "token list": b"GET /up HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n"
    b"Upgrade: websocket, h2c\r\n\r\n",
    "h2c with a body": b"POST /up HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Length: 3\r\n\r\nabc",
    "with a body": b"POST /up HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
    b"Content-Length: 3\r\n\r\nabc",
}


@pytest.mark.parametrize("kind", UPGRADES)
def test_bytes_after_an_upgrade_request_never_pass_before_the_upstream_switches(
    shared_upstream, kind
):
    # The upstream answers 200 and keeps the connection (as any app on a non-WebSocket path).
    answer = shared_upstream.exchange("t1", UPGRADES[kind] + SMUGGLED, "--wait", "3")
    records = shared_upstream.upstream_saw()
    assert_only_t1_requests(records)
    # What followed the upgrade request was read as the next request, with t1's identity.
    assert [r["target"] for r in records] == ["/up", "/smuggled"], records
    assert [r["status"] for r in answer["responses"]] == [200, 200], answer
    upgrade = [v for k, v in records[0]["headers"] if k.lower() == "upgrade"]
    assert upgrade == (["websocket"] if kind in ("websocket", "with a body") else []), records
    if "body" in kind:
        assert records[0]["body_len"] == 3, records


def test_a_chunked_body_with_a_protocol_switch_is_refused(shared_upstream):
    request = (
        b"POST /up HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    answer = shared_upstream.exchange("t1", request + SMUGGLED)
    assert [r["status"] for r in answer["responses"]] == [400], answer
    assert shared_upstream.upstream_saw() == []


def test_a_websocket_upgrade_the_upstream_accepts_carries_the_held_bytes(shared_upstream):
    request = b"GET /b/ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    answer = shared_upstream.exchange("t1", request + b"frame-bytes", "--wait", "2")
    raw = answer["raw"]
    assert raw.startswith("HTTP/1.1 101 "), answer
    assert raw.endswith("frame-bytes"), answer  # held until the 101, then echoed by the upstream


UPGRADE = b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
@pytest.mark.parametrize("interim", [0, 1, 2])
def test_the_tunnel_starts_with_the_byte_after_the_101_whatever_came_before_it(
    shared_upstream, method, interim
):
    """The upstream's 1xx heads, its 101 and the new protocol's first bytes, in one write: the
    client gets the 101 and then exactly those bytes (a HEAD's heads are read one by one)."""
    answer = HINTS * interim + SWITCHED + b"TAIL"
    target = b"/b/raw?hex=" + answer.hex().encode()
    request = method + b" " + target + b" HTTP/1.1\r\nHost: a\r\n" + UPGRADE
    got = shared_upstream.exchange("t1", request, "--wait", "2")["raw"].encode("latin-1")
    switched = got.find(b"HTTP/1.1 101 ")
    assert switched >= 0 and got.count(b"HTTP/1.1 103 ") == interim, got
    assert got[got.index(b"\r\n\r\n", switched) + 4 :] == b"TAIL", got


@pytest.mark.parametrize(
    "fields",
    [b"", b"Upgrade: websocket\r\n", b"Connection: upgrade\r\n", b"Connection: keep-alive\r\n"],
    ids=["neither", "no-connection-upgrade", "no-upgrade-field", "other-connection"],
)
def test_a_101_without_the_fields_of_a_switch_is_a_502(shared_upstream, fields):
    """RFC 9110 7.8: a 101 names the protocol (Upgrade) and carries "upgrade" in Connection.
    Without them llhttp reads on as HTTP: the client must not be told it switched."""
    answer = b"HTTP/1.1 101 Switching Protocols\r\n" + fields + b"\r\nTAIL"
    target = b"/b/raw?hex=" + answer.hex().encode()
    request = b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n" + UPGRADE + b"frame-bytes"
    got = shared_upstream.exchange("t1", request, "--wait", "2")
    assert [r["status"] for r in got["responses"]] == [502], got
    assert "frame-bytes" not in got["raw"] and "TAIL" not in got["raw"], got


SPELLINGS = [
    "X-Nsproxy-Tenant",
    "x-nsproxy-tenant",
    "X-NSPROXY-TENANT",
    "X_Nsproxy_Tenant",
    "X_Nsproxy-Tenant",
    "X-Nsproxy-Other",
    "X-Forwarded-For",
    "X_Forwarded_For",
    "x-forwarded-host",
    "X-Forwarded_Proto",
    "X-Forwarded-Port",
    "X-Forwarded-Prefix",
    "Forwarded",
    "X-Real-IP",
    "X_Real_Ip",
]


def test_identity_fields_from_clients_never_reach_the_upstream_in_any_spelling(shared_upstream):
    forged = b"".join(b"%b: forged\r\n" % name.encode() for name in SPELLINGS)
    request = b"GET /who HTTP/1.1\r\nHost: a\r\n" + forged + b"\r\n"
    answer = shared_upstream.exchange("t1", request)
    assert [r["status"] for r in answer["responses"]] == [200], answer
    (record,) = shared_upstream.upstream_saw()
    assert not [v for _, v in record["headers"] if "forged" in v], record
    cgi = cgi_names(record)
    for name, value in (
        ("HTTP_X_NSPROXY_TENANT", "t1"),
        ("HTTP_X_FORWARDED_FOR", ADDR),
        ("HTTP_X_FORWARDED_PROTO", "http"),
        ("HTTP_X_FORWARDED_HOST", "a"),
    ):
        assert [v for k, v in cgi if k == name] == [value], (name, record)


@pytest.mark.parametrize(
    "lookalike",
    [
        b"Content_Length: 5",
        b"Transfer_Encoding: chunked",
        b"Proxy_Connection: close",
        b"Keep_Alive: timeout=1",
    ],
)
def test_look_alikes_of_framing_fields_spelled_with_underscore_are_dropped(
    shared_upstream, lookalike
):
    answer = shared_upstream.exchange(
        "t1", b"GET /la HTTP/1.1\r\nHost: a\r\n%b\r\n\r\n" % lookalike
    )
    assert [r["status"] for r in answer["responses"]] == [200], answer
    (record,) = shared_upstream.upstream_saw()
    name = lookalike.split(b":")[0].decode()
    assert name.lower() not in [k.lower() for k, _ in record["headers"]], record


def test_every_request_of_either_tenant_carries_its_own_name_only(shared_upstream):
    for tenant in ("t1", "t2"):
        answer = shared_upstream.exchange(
            tenant, b"GET /%b HTTP/1.1\r\nHost: a\r\n\r\n" % tenant.encode(), "--wait", "1"
        )
        doc = json.loads(answer["responses"][0]["body"])
        assert doc["tenant"] == [tenant]


def lighttpd_names(record: dict) -> list[tuple[str, str]]:
    """The fields as lighttpd passes them to CGI, FastCGI and SCGI applications (PHP among
    them): HTTP_ + upper case, every character that is not a letter or digit as '_'
    (lighttpd buffer_copy_string_encoded_cgi_varnames). PHP's own variable registration
    also turns '.' and ' ' into '_'."""
    return [
        ("HTTP_" + "".join(c.upper() if c.isalnum() else "_" for c in k), v)
        for k, v in record["headers"]
    ]


# Token characters other than '-' and '_' that such servers fold into the same variable.
OTHER_SEPARATORS = [
    "X.Nsproxy.Tenant",
    "X~Forwarded~For",
    "X.Real.IP",
    "X|Forwarded|Port",
    "X+Forwarded+Proto",
    "X!Forwarded!Host",
    "X-Forwarded.Ssl",
]


def test_identity_fields_from_clients_never_reach_the_upstream_as_cgi_servers_fold_them(
    shared_upstream,
):
    forged = b"".join(b"%b: forged\r\n" % name.encode() for name in OTHER_SEPARATORS)
    request = b"GET /who HTTP/1.1\r\nHost: a\r\n" + forged + b"\r\n"
    answer = shared_upstream.exchange("t1", request)
    assert [r["status"] for r in answer["responses"]] in ([200], [400]), answer
    for record in shared_upstream.upstream_saw():
        folded = [(k, v) for k, v in lighttpd_names(record) if v == "forged"]
        identity = [
            (k, v)
            for k, v in folded
            if k.startswith(("HTTP_X_NSPROXY_", "HTTP_X_FORWARDED_"))
            or k in ("HTTP_X_REAL_IP", "HTTP_FORWARDED")
        ]
        assert identity == [], record
