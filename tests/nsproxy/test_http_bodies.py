"""Bodies in both directions, Expect: 100-continue, HEAD, close-delimited and WebSocket."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import ADDR, headers_of, http_tenant


@pytest.fixture
def one_tenant(proxy):
    proxy.add_netns("body")
    proxy.start_echo("echo", "127.0.0.1:9400")
    proxy.write_config([http_tenant("body", ["127.0.0.1:9400"])])
    proxy.start()
    return proxy


def test_chunked_upload_is_streamed_to_the_upstream_intact(one_tenant, tmp_path):
    payload = tmp_path / "payload.bin"
    data = bytes(range(256)) * 12000  # ~3 MB
    payload.write_bytes(data)
    doc = one_tenant.get_json(
        "body", f"http://{ADDR}/upload", "-T", str(payload), "-H", "Transfer-Encoding: chunked"
    )
    assert doc["method"] == "PUT"
    assert doc["body_len"] == len(data)
    assert doc["body_sha256"] == hashlib.sha256(data).hexdigest()
    assert headers_of(doc)["transfer-encoding"] == ["chunked"]
    assert "content-length" not in headers_of(doc)


def test_content_length_upload_with_expect_100_continue(one_tenant):
    code = f"""
import socket, json
s = socket.create_connection(("{ADDR}", 80), timeout=10)
body = b"z" * 100000
s.sendall(b"POST /expect HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: %d\\r\\n"
          b"Expect: 100-continue\\r\\n\\r\\n" % len(body))
interim = s.recv(100)
s.sendall(body)
f = s.makefile("rb")
status = f.readline()
length = 0
while True:
    line = f.readline()
    if line == b"\\r\\n":
        break
    if line.lower().startswith(b"content-length:"):
        length = int(line.split(b":")[1])
doc = json.loads(f.read(length))
print(json.dumps({{"interim": interim.decode(), "status": status.decode().strip(),
                  "body_len": doc["body_len"]}}))
"""
    out = json.loads(one_tenant.python("body", code).stdout)
    assert out["interim"] == "HTTP/1.1 100 Continue\r\n\r\n"
    assert out["status"] == "HTTP/1.1 200 OK"
    assert out["body_len"] == 100000


def test_chunked_download_is_streamed_to_the_client_intact(one_tenant):
    proc = one_tenant.curl("body", "-D", "-", f"http://{ADDR}/chunked?n=300&size=10000")
    head, _, body = proc.stdout.partition("\n\n")  # text mode turned CRLF into LF
    assert "Transfer-Encoding: chunked" in head
    expected = "".join(chr(97 + i % 26) * 10000 for i in range(300))
    assert body == expected


def test_head_and_close_delimited_responses_keep_framing_right(one_tenant):
    code = f"""
import http.client, json
c = http.client.HTTPConnection("{ADDR}", 80, timeout=10)
c.request("HEAD", "/h")
r = c.getresponse(); r.read()
head = (r.status, r.getheader("Content-Length"))
c.request("GET", "/after-head")
r = c.getresponse(); after = json.loads(r.read())["path"]
c.request("GET", "/close-delimited")
r = c.getresponse(); body = r.read()
print(json.dumps({{"head": head, "after": after, "close_len": len(body),
                  "te": r.getheader("Transfer-Encoding")}}))
"""
    out = json.loads(one_tenant.python("body", code).stdout)
    assert out["head"][0] == 200 and int(out["head"][1]) > 0
    assert out["after"] == "/after-head"  # the HEAD response did not desynchronise the stream
    assert out["close_len"] == len(b"until-close-" * 100)
    assert out["te"] == "chunked"  # re-framed for the HTTP/1.1 client, connection kept


def test_websocket_upgrade_is_tunnelled_and_echoes_frames(one_tenant):
    code = f"""
import base64, hashlib, json, os, socket, struct
s = socket.create_connection(("{ADDR}", 80), timeout=10)
key = base64.b64encode(os.urandom(16))
s.sendall(b"GET /ws HTTP/1.1\\r\\nHost: ws.example\\r\\nUpgrade: websocket\\r\\n"
          b"Connection: Upgrade\\r\\nSec-WebSocket-Key: " + key +
          b"\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n")
f = s.makefile("rb")
status = f.readline().decode().strip()
headers = {{}}
while True:
    line = f.readline()
    if line == b"\\r\\n":
        break
    k, v = line.decode().split(":", 1)
    headers[k.strip().lower()] = v.strip()
expected = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
echoes = []
for message in (b"hello", b"x" * 1000, b"last"):
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(message))
    if len(message) < 126:
        s.sendall(bytes([0x81, 0x80 | len(message)]) + mask + masked)
    else:
        s.sendall(bytes([0x81, 0x80 | 126]) + struct.pack("!H", len(message)) + mask + masked)
    head = f.read(2)
    n = head[1] & 0x7F
    if n == 126:
        n = struct.unpack("!H", f.read(2))[0]
    echoes.append(f.read(n) == message)
print(json.dumps({{"status": status, "accept_ok": headers.get("sec-websocket-accept") ==
                  expected.decode(), "upgrade": headers.get("upgrade"), "echoes": echoes}}))
"""
    out = json.loads(one_tenant.python("body", code).stdout)
    assert out["status"] == "HTTP/1.1 101 Switching Protocols"
    assert out["accept_ok"]
    assert out["upgrade"].lower() == "websocket"
    assert out["echoes"] == [True, True, True]
