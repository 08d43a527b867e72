"""Malformed, ambiguous, oversized and slow requests get a 4xx, are logged, never crash."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from conftest import ADDR, http_tenant

RAW = str(Path(__file__).with_name("raw_client.py"))


@pytest.fixture
def strict(proxy):
    proxy.add_netns("edge")
    proxy.start_echo("echo", "127.0.0.1:9500")
    proxy.write_config(
        [http_tenant("edge", ["127.0.0.1:9500"])],
        limits={"max_header_bytes": 8192, "max_headers": 50, "max_body_bytes": 100000},
        timeouts={"header_read": 2},
    )
    proxy.start()
    return proxy


def send(proxy, request: bytes, pause: float | None = None) -> dict:
    argv = ["ip", "netns", "exec", "edge", "python3", RAW, ADDR, "80"]
    if pause is not None:
        argv.append(str(pause))
    proc = proxy.sb.run(argv, input=request, text=False)
    return json.loads(proc.stdout)


BAD_REQUESTS = {
    "content_length_and_transfer_encoding": (
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
    ),
    "transfer_encoding_then_content_length": (
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
    ),
    "obfuscated_transfer_encoding": (
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        501,  # RFC 9112: a transfer coding the server does not understand
    ),
    "space_before_colon": (
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "duplicate_content_length": (
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc",
        400,
    ),
    "bad_chunk_size": (
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    "chunk_size_overflow": (
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"fffffffffffffffffff1\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    "missing_host": (b"GET /a HTTP/1.1\r\n\r\n", 400),
    "two_hosts": (b"GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    "garbage_request_line": (b"HELLO THERE\r\n\r\n", 400),
    "bare_lf_line_endings": (b"GET /a HTTP/1.1\nHost: x\n\n", 400),
    "obsolete_line_folding": (b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n", 400),
    "oversize_header": (b"GET /a HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
    "too_many_headers": (
        b"GET /a HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(80))
        + b"\r\n",
        431,
    ),
    "body_over_max_body_bytes": (
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n" + b"a" * 1000,
        413,
    ),
    "unsupported_expect": (b"GET /a HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n", 417),
    "connect_method": (b"CONNECT 10.0.0.1:22 HTTP/1.1\r\nHost: 10.0.0.1:22\r\n\r\n", 405),
}


def test_malformed_and_smuggling_requests_are_rejected_and_never_reach_the_upstream(strict):
    for name, (request, status) in BAD_REQUESTS.items():
        result = send(strict, request)
        assert result["statuses"][:1] == [f"HTTP/1.1 {status} " + _reason(status)], (name, result)
        assert len(result["statuses"]) == 1, (name, result)  # nothing smuggled behind it
        assert result["closed"], name
    seen = strict.echo_log.read_text() if strict.echo_log.exists() else ""
    assert "/smuggled" not in seen
    assert "/a" not in seen  # none of the rejected requests was forwarded
    # The daemon is still serving, and it logged each rejection with its reason.
    assert strict.get_json("edge", f"http://{ADDR}/still-alive")["path"] == "/still-alive"
    log = strict.log()
    assert "400 malformed request" in log and "431 request head larger" in log
    # The access log is flushed once a second: poll for the records.
    deadline = time.monotonic() + 15
    while True:
        statuses = [r["status"] for r in strict.access_records()]
        if len(statuses) >= len(BAD_REQUESTS) + 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert statuses.count(400) >= 10 and 431 in statuses and 413 in statuses


def _reason(status):
    return {
        400: "Bad Request",
        405: "Method Not Allowed",
        408: "Request Timeout",
        413: "Content Too Large",
        417: "Expectation Failed",
        431: "Request Header Fields Too Large",
        501: "Not Implemented",
    }[status]


def test_slow_client_gets_408_after_header_read_timeout(strict):
    result = send(strict, b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Drip: 1\r\n\r\n", pause=0)
    assert result["statuses"] == ["HTTP/1.1 408 Request Timeout"]
    assert result["closed"]
    assert "408 request head not received" in strict.log()


def test_pipelined_requests_are_answered_in_order(strict):
    request = b"".join(b"GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
    request += b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    result = send(strict, request)
    assert result["statuses"] == ["HTTP/1.1 200 OK"] * 6
    paths = re.findall(r'"path": "([^"]*)"', result["body"])
    assert paths == ["/p0", "/p1", "/p2", "/p3", "/p4", "/last"]


BAD_REQUEST_LOOP = f"""
import socket, sys
for _ in range(int(sys.argv[1])):
    s = socket.create_connection(("{ADDR}", 80))
    s.sendall(b"X\\r\\n\\r\\n")
    s.recv(4096)
    s.close()
"""


def test_one_tenants_bad_requests_cannot_flood_the_daemon_log(strict):
    """A client that loops over connect, five bad bytes, close wrote one daemon log line per
    request (15,000 in 5 s in a reviewer's run), past what journald keeps of every tenant's
    lines. Each worker writes at most traffic_log.LINES of a tenant's lines per interval, says
    so, and the access log still has every request."""
    from nsproxy import traffic_log

    count = 300
    strict.python("edge", BAD_REQUEST_LOOP, str(count), timeout=120)
    records = strict.wait_access(count, timeout=20)
    assert len(records) == count and {r["status"] for r in records} == {400}
    lines = strict.log().splitlines()
    refused = [line for line in lines if "malformed request" in line]
    workers = len(strict.status_json()["workers"])
    assert 0 < len(refused) <= workers * traffic_log.LINES, len(refused)
    assert any("more are not shown until" in line for line in lines)
