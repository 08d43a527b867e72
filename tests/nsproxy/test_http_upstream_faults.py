"""What an upstream sends can never desync a connection, reach another client, or make the proxy
send a request twice that must not be sent twice; and it is bounded in size, count and time.

The upstream is rawup.py (the recording upstream), which answers as the request path says,
including the ways broken or hostile servers answer.
"""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import pytest
from conftest import ADDR, http_tenant


@pytest.fixture
def upstream(proxy):
    proxy.add_netns("t1", "t2")
    proxy.start_rawup("up", "127.0.0.1:9700")
    proxy.write_config(
        [http_tenant(t, ["127.0.0.1:9700"]) for t in ("t1", "t2")],
        timeouts={"response_head": 3, "read": 20},
        # Keep-alive pools are each worker's own: with one worker, a client's next connection
        # meets the pooled upstream connection of the previous one, which these tests are about.
        workers=1,
    )
    proxy.start()
    return proxy


def get(path: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: a\r\n{extra}\r\n".encode()


def statuses(answer: dict) -> list[int]:
    return [r["status"] for r in answer["responses"]]


@pytest.mark.parametrize("what", ["head", "junk"])
def test_bytes_after_a_complete_response_never_reach_the_next_client(upstream, what):
    first = upstream.exchange("t1", get(f"/b/extra?what={what}") + get("/same-connection"))
    # The client of the broken answer gets its complete response, then its own next one.
    assert statuses(first) == [200, 200], first
    assert json.loads(first["responses"][1]["body"])["path"] == "/same-connection"
    # The next client of the tenant gets its own answer on a clean connection.
    second = upstream.exchange("t1", get("/next", extra="Connection: close\r\n"))
    assert statuses(second) == [200], second
    assert json.loads(second["responses"][0]["body"])["path"] == "/next"
    conns = {r["target"]: r["conn"] for r in upstream.upstream_saw()}
    assert conns["/same-connection"] != conns[f"/b/extra?what={what}"]  # not reused after it
    access = [r for r in upstream.access_records() if r["path"] == f"/b/extra?what={what}"]
    assert [r["status"] for r in access] == [200]  # logged once


def test_a_body_sent_after_a_head_response_closes_that_upstream_connection(upstream):
    answer = upstream.exchange(
        "t1", get("/b/head-body", method="HEAD") + get("/after"), "--head", "0"
    )
    assert statuses(answer) == [200, 200], answer
    assert json.loads(answer["responses"][1]["body"])["path"] == "/after"
    conns = {r["target"]: r["conn"] for r in upstream.upstream_saw()}
    assert conns["/after"] != conns["/b/head-body"]


def test_stray_bytes_on_an_idle_pooled_connection_retire_it(upstream):
    upstream.exchange("t1", get("/b/late-extra", extra="Connection: close\r\n"))
    time.sleep(0.6)  # the junk arrives while the connection waits in the pool
    answer = upstream.exchange("t1", get("/next", extra="Connection: close\r\n"))
    assert statuses(answer) == [200] and "late junk" not in answer["raw"], answer
    conns = {r["target"]: r["conn"] for r in upstream.upstream_saw()}
    assert conns["/next"] != conns["/b/late-extra"]


@pytest.mark.parametrize("method", ["POST", "PATCH", "DELETE"])
def test_requests_that_must_not_run_twice_are_sent_once(upstream, method):
    # DELETE is idempotent, but it has a body here: a body is never resent either.
    upstream.exchange("t1", get("/warm", extra="Connection: close\r\n"))
    extra = "Connection: close\r\nContent-Length: 2\r\n\r\nab" if method == "DELETE" else ""
    request = get("/b/noreply", method=method, extra="Connection: close\r\n")
    if extra:
        request = get("/b/noreply", method=method, extra=extra)[:-2]
    answer = upstream.exchange("t1", request)
    sent = [r for r in upstream.upstream_saw() if r["target"] == "/b/noreply"]
    assert len(sent) == 1, sent
    assert statuses(answer) in ([502], [200]), answer  # 200: it was given a new connection


def test_an_idempotent_request_is_resent_once_when_its_pooled_connection_closed(upstream):
    upstream.exchange("t1", get("/warm", extra="Connection: close\r\n"))
    answer = upstream.exchange("t1", get("/b/noreply", extra="Connection: close\r\n"))
    assert statuses(answer) == [200], answer
    sent = [r for r in upstream.upstream_saw() if r["target"] == "/b/noreply"]
    assert [r["n"] for r in sent] == [2, 1]  # the pooled connection, then a new one


def test_no_request_is_resent_after_any_byte_of_a_response(upstream):
    upstream.exchange("t1", get("/warm", extra="Connection: close\r\n"))
    answer = upstream.exchange("t1", get("/b/cl-te", extra="Connection: close\r\n"))
    assert statuses(answer) == [502], answer
    assert len([r for r in upstream.upstream_saw() if r["target"] == "/b/cl-te"]) == 1


def test_posts_do_not_fail_when_the_server_closes_idle_connections(proxy):
    """HAProxy's 'http-reuse safe' loses none of 150 POSTs to a server that closes idle
    keep-alive connections; neither may nsproxy, without ever resending one."""
    proxy.add_netns("t1")
    proxy.start_rawup("ka", "127.0.0.1:9710", idle=2.0)
    proxy.write_config([http_tenant("t1", ["127.0.0.1:9710"])])
    proxy.start()
    code = f"""
import http.client, json, random, threading, time
results = []
def client(k):
    rnd = random.Random(k)
    for i in range(5):
        time.sleep(rnd.uniform(1.85, 2.15))  # around the server's idle timeout
        c = http.client.HTTPConnection("{ADDR}", 80, timeout=10)
        try:
            c.request("POST", "/post/%d/%d" % (k, i), body=b"x", headers={{"Connection": "close"}})
            results.append(c.getresponse().status)
        except Exception as exc:
            results.append(repr(exc))
threads = [threading.Thread(target=client, args=(k,)) for k in range(30)]
[t.start() for t in threads]; [t.join() for t in threads]
print(json.dumps(results))
"""
    results = json.loads(proxy.python("t1", code, timeout=120).stdout)
    assert results == [200] * 150, [r for r in results if r != 200]
    posts = [r["target"] for r in proxy.upstream_saw() if r["target"].startswith("/post/")]
    assert len(posts) == len(set(posts)) == 150  # each reached the upstream exactly once


@pytest.mark.parametrize(
    ("codings", "client_sees"),
    [
        ("identity", ("chunked", "hello world until close")),
        ("gzip, chunked", ("chunked", "hello world")),
        ("deflate", ("chunked", "hello world until close")),
        ("chunked", ("chunked", "hello world")),
    ],
)
def test_response_transfer_codings_are_framed_faithfully(upstream, codings, client_sees):
    answer = upstream.exchange(
        "t1", get(f"/b/te?codings={quote(codings)}", extra="Connection: close\r\n")
    )
    assert answer["error"] is None, answer
    (response,) = answer["responses"]
    assert (response["framing"], response["body"]) == client_sees
    te = [v for k, v in response["headers"] if k.lower() == "transfer-encoding"]
    kept = [c.strip() for c in codings.split(",") if c.strip() not in ("identity", "chunked")]
    assert te == [", ".join([*kept, "chunked"])], response


@pytest.mark.parametrize("codings", ["chunked, gzip", "chunked, chunked", "gz ip"])
def test_response_codings_the_proxy_cannot_frame_get_502(upstream, codings):
    answer = upstream.exchange(
        "t1", get(f"/b/te?codings={quote(codings)}", extra="Connection: close\r\n")
    )
    assert statuses(answer) == [502], answer


def test_an_http10_client_gets_a_coded_body_refused_and_a_plain_one_until_close(upstream):
    plain = upstream.exchange("t1", b"GET /b/te?codings=identity HTTP/1.0\r\nHost: a\r\n\r\n")
    assert [(r["status"], r["framing"]) for r in plain["responses"]] == [(200, "close")], plain
    coded = upstream.exchange("t1", b"GET /b/te?codings=gzip HTTP/1.0\r\nHost: a\r\n\r\n")
    assert statuses(coded) == [502], coded


@pytest.mark.parametrize(
    ("path", "method", "framing"),
    [
        ("/b/status?code=204", "GET", "none"),
        ("/b/status?code=304", "GET", "none"),
        ("/b/status?code=200&cl=7", "HEAD", "none"),
    ],
)
def test_responses_without_a_body_stay_without_one(upstream, path, method, framing):
    heads = ["--head", "0"] if method == "HEAD" else []
    answer = upstream.exchange("t1", get(path, method=method) + get("/after"), *heads)
    assert [(r["status"], r["framing"]) for r in answer["responses"]][1:] == [(200, "length")]
    assert answer["responses"][0]["framing"] == framing
    lengths = [v for k, v in answer["responses"][0]["headers"] if k.lower() == "content-length"]
    assert lengths == (["7"] if method == "HEAD" else []) or lengths == ["0"]


def test_interim_responses_reach_http11_clients_and_are_bounded(upstream):
    answer = upstream.exchange("t1", get("/b/interim?n=2", extra="Connection: close\r\n"))
    assert statuses(answer) == [103, 103, 200], answer
    flood = upstream.exchange("t1", get("/b/interim?n=40", extra="Connection: close\r\n"))
    assert statuses(flood)[-1] == 502 and len(statuses(flood)) <= 17, flood


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/b/endless-line", 502),
        ("/b/endless-headers", 502),
        ("/b/trickle", 504),
    ],
)
def test_an_endless_or_trickling_response_head_is_cut_and_other_tenants_are_served(
    upstream, path, status
):
    started = time.monotonic()
    answer = upstream.exchange("t1", get(path, extra="Connection: close\r\n"), "--wait", "15")
    assert statuses(answer) == [status], answer
    assert time.monotonic() - started < 12
    other = upstream.exchange("t2", get("/other", extra="Connection: close\r\n"))
    assert statuses(other) == [200], other
    assert rss_kb(upstream.proc.pid) < 200_000  # the head was bounded, not buffered


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line.split()[1] for line in status if line.startswith("VmRSS")))


@pytest.mark.parametrize("path", ["/b/trailer-flood", "/b/ext-flood"])
def test_endless_trailers_or_chunk_extensions_cut_the_response(upstream, path):
    answer = upstream.exchange("t1", get(path, extra="Connection: close\r\n"), "--wait", "15")
    # The head was sent; what follows never ends, so the client connection is cut.
    assert answer["closed"] or answer["reset"], answer
    assert answer["error"] is not None, answer  # the client sees an incomplete body


@pytest.mark.parametrize("code", [150, 199, 99])
def test_a_body_after_an_interim_or_sub_100_status_never_reaches_the_client(upstream, code):
    # RFC 9110 15.2: a 1xx response ends with its head; a status below 100 is not HTTP. llhttp
    # reads a Content-Length body after 104-199 (and after 0-99) anyway; that body is a complete
    # response here. The client must get one final response per request, each its own.
    answer = upstream.exchange(
        "t1", get(f"/b/interim-body?code={code}") + get("/after", extra="Connection: close\r\n")
    )
    finals = [r for r in answer["responses"] if r["status"] >= 200]
    assert len(finals) <= 2, answer  # never more final responses than requests
    assert "FORGED" not in [r["body"] for r in finals[1:]], answer
    if len(finals) == 2:
        assert json.loads(finals[1]["body"])["path"] == "/after", answer


def test_a_response_with_a_status_below_100_is_a_bad_gateway(upstream):
    answer = upstream.exchange("t1", get("/b/interim-body?code=0", extra="Connection: close\r\n"))
    assert statuses(answer) == [502], answer
    assert "FORGED" not in answer["raw"], answer


@pytest.mark.parametrize(
    "query",
    ["code=100", "code=103", "code=150", "code=150&framing=chunked", "code=103&framing=chunked"],
)
def test_an_interim_response_with_body_framing_is_a_bad_gateway(upstream, query):
    # RFC 9110 8.6 and RFC 9112 6.1: a server sends neither Content-Length nor
    # Transfer-Encoding in a 1xx, which ends at its head (RFC 9110 15.2). llhttp reads a body
    # after 104-199 and none after 100-103: either way a next hop may read the bytes after the
    # head otherwise (the body, or a response), so the proxy answers 502 rather than choose.
    answer = upstream.exchange("t1", get(f"/b/interim-body?{query}", extra="Connection: close\r\n"))
    assert statuses(answer) == [502], answer
    assert "FORGED" not in answer["raw"], answer
