"""TCP listeners of the real daemon: TLS passthrough routed by SNI to two TLS backends, the
PROXY v2 header as a test upstream and HAProxy receive it, and a plain relay of large payloads
both ways. Tenants t1 and t2 both listen on 10.0.0.250; clients run in their namespaces."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time

import pytest
from conftest import ADDR, make_cert

# A test upstream in the host namespace, independent of nsproxy's own parser.
#   pp2 mode: read a PROXY v2 header and one line, answer with what it saw, as JSON.
#   sink mode: read until EOF, answer the SHA-256 of it and then N bytes of a fixed pattern.
UPSTREAM = r"""
import hashlib, json, socket, struct, sys, threading
mode, (host, _, port) = sys.argv[1], sys.argv[2].rpartition(":")
reply_size = int(sys.argv[3]) if len(sys.argv) > 3 else 0

def read_exactly(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError(f"EOF after {len(data)} of {n} bytes")
        data += chunk
    return data

def pp2(conn):
    fixed = read_exactly(conn, 16)
    body = read_exactly(conn, struct.unpack("!H", fixed[14:16])[0])
    doc = {"signature": fixed[:12].hex(), "ver_cmd": fixed[12], "fam": fixed[13]}
    if fixed[13] in (0x11, 0x21):
        family, size = (socket.AF_INET, 4) if fixed[13] == 0x11 else (socket.AF_INET6, 16)
        sport, dport = struct.unpack("!HH", body[2 * size:2 * size + 4])
        doc["src"] = [socket.inet_ntop(family, body[:size]), sport]
        doc["dst"] = [socket.inet_ntop(family, body[size:2 * size]), dport]
        pos, tlvs = 2 * size + 4, []
        while pos < len(body):
            kind, size = struct.unpack("!BH", body[pos:pos + 3])
            tlvs.append([kind, body[pos + 3:pos + 3 + size].decode()])
            pos += 3 + size
        doc["tlvs"] = tlvs
    line = b""
    while not line.endswith(b"\n"):
        line += read_exactly(conn, 1)
    doc["payload"] = line.decode()
    conn.sendall(json.dumps(doc).encode() + b"\n")

def sink(conn):
    digest, size = hashlib.sha256(), 0
    while True:
        chunk = conn.recv(1 << 20)
        if not chunk:
            break
        digest.update(chunk)
        size += len(chunk)
    conn.sendall(f"{size} {digest.hexdigest()}\n".encode())
    block = bytes(range(256)) * 4096
    left = reply_size
    while left:
        conn.sendall(block[:min(left, len(block))])
        left -= min(left, len(block))

def serve(conn):
    with conn:
        try:
            {"pp2": pp2, "sink": sink}[mode](conn)
        except Exception as exc:
            print("upstream error:", exc, file=sys.stderr, flush=True)

srv = socket.create_server((host, int(port)))
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

# A client run inside a tenant namespace: connect, send one line, print its own address and
# the upstream's answer.
PP2_CLIENT = r"""
import json, socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20) as s:
    s.sendall(b"ping from " + sys.argv[3].encode() + b"\n")
    answer = s.makefile().readline()
    print(json.dumps({"me": list(s.getsockname()[:2]), "answer": json.loads(answer)}))
"""

# Send SIZE pseudo-random bytes, half-close, read the whole answer; print hashes and sizes.
BULK_CLIENT = r"""
import hashlib, json, random, socket, sys, threading
size = int(sys.argv[3])
data = random.Random(42).randbytes(size)
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60) as s:
    def send():
        view = memoryview(data)
        for i in range(0, size, 1 << 20):
            s.sendall(view[i:i + (1 << 20)])
        s.shutdown(socket.SHUT_WR)
    sender = threading.Thread(target=send)
    sender.start()
    received = bytearray()
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        received += chunk
    sender.join()
head, _, rest = bytes(received).partition(b"\n")
print(json.dumps({"sent_sha": hashlib.sha256(data).hexdigest(), "head": head.decode(),
                  "rest_len": len(rest), "rest_sha": hashlib.sha256(rest).hexdigest()}))
"""


def start_upstream(proxy, mode: str, address: str, *extra: str, netns: str | None = None):
    argv = [sys.executable, "-c", UPSTREAM, mode, address, *extra]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = proxy.sb.popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def wait_port(proxy, port: int) -> None:
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1).close()"
    for _ in range(200):
        if proxy.sb.run([sys.executable, "-c", probe], check=False).returncode == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def tcp_tenant(name, listener: dict, upstreams: dict) -> dict:
    return {
        "name": name,
        "netns": name,
        "listeners": [{"protocol": "tcp", **listener}],
        "upstreams": {k: {"netns": None, "servers": [v]} for k, v in upstreams.items()},
    }


def test_tls_passthrough_is_routed_by_sni_to_two_tls_backends(proxy, tmp_path):
    certs = {name: make_cert(tmp_path, name, name) for name in ("a.example", "b.example")}
    proxy.add_netns("t1", "t2")
    for port, name in ((9441, "a.example"), (9442, "b.example")):
        proxy.sb.popen(
            [
                "openssl",
                "s_server",
                "-www",
                "-accept",
                f"127.0.0.1:{port}",
                "-cert",
                certs[name]["cert"],
                "-key",
                certs[name]["key"],
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(proxy, port)
    proxy.write_config(
        [
            # t1: by name, no default: anything else is refused.
            tcp_tenant(
                "t1",
                {
                    "listen": f"{ADDR}:443",
                    "sni_routes": [
                        {"sni": "a.example", "upstream": "a"},
                        {"sni": "*.b.example", "upstream": "b"},
                        {"sni": "b.example", "upstream": "b"},
                    ],
                },
                {"a": "127.0.0.1:9441", "b": "127.0.0.1:9442"},
            ),
            # t2, same address: everything to backend b.
            tcp_tenant("t2", {"listen": f"{ADDR}:443", "upstream": "b"}, {"b": "127.0.0.1:9442"}),
        ],
        timeouts={"drain": 1},
    )
    proxy.start()

    def curl(netns, host, cert):
        return proxy.curl(
            netns,
            "--resolve",
            f"{host}:443:{ADDR}",
            "--cacert",
            certs[cert]["cert"],
            f"https://{host}/",
        )

    for host, cert, port in (
        ("a.example", "a.example", 9441),
        ("b.example", "b.example", 9442),
        ("www.b.example", "b.example", 9442),
    ):
        out = curl("t1", host, cert)
        if host == "www.b.example":  # routed to b, whose certificate does not name www
            assert out.returncode == 60, out.stderr
            out = proxy.curl("t1", "-k", "--resolve", f"{host}:443:{ADDR}", f"https://{host}/")
        assert out.returncode == 0, out.stderr + proxy.log()
        assert f"-accept 127.0.0.1:{port}" in out.stdout  # the backend's own status page
    # openssl s_client sees the backend's certificate, end to end.
    out = proxy.sb.run(
        [
            "ip",
            "netns",
            "exec",
            "t1",
            "openssl",
            "s_client",
            "-connect",
            f"{ADDR}:443",
            "-servername",
            "b.example",
            "-CAfile",
            certs["b.example"]["cert"],
            "-verify_return_error",
        ],
        check=False,
        input="",
        timeout=60,
    )
    assert out.returncode == 0 and "subject=CN = b.example" in out.stdout, out.stdout
    # No route and no default in t1: the connection is closed, the handshake never completes.
    out = curl("t1", "c.example", "a.example")
    assert out.returncode == 35, out.stderr  # CURLE_SSL_CONNECT_ERROR
    # Same address in t2: its own listener, everything to b.
    out = curl("t2", "a.example", "b.example")
    assert out.returncode == 60, out.stderr  # b's certificate does not name a.example
    out = curl("t2", "b.example", "b.example")
    assert out.returncode == 0 and "-accept 127.0.0.1:9442" in out.stdout
    proxy.stop()
    records = [r for r in proxy.access_records() if r.get("protocol") == "tcp"]
    by_sni = {(r["tenant"], r["sni"]): r for r in records}
    assert by_sni[("t1", "a.example")]["upstream"] == "a"
    assert by_sni[("t1", "www.b.example")]["upstream"] == "b"
    assert by_sni[("t1", "c.example")]["error"] == "no route for SNI 'c.example'"
    assert {r["upstream"] for r in records if r["tenant"] == "t2"} == {"b"}


def test_proxy_v2_header_carries_client_addresses_and_tenant_name(proxy):
    addr6 = "fd00::250"
    proxy.add_netns("t1", "t2")
    for netns in ("t1", "t2"):
        proxy.sb.sh(f"ip -n {netns} addr add {addr6}/128 dev lo nodad")
    start_upstream(proxy, "pp2", "127.0.0.1:9500")
    tenants = []
    for name in ("t1", "t2"):
        tenant = tcp_tenant(
            name,
            {"listen": f"{ADDR}:7000", "upstream": "pp", "proxy_protocol": "v2"},
            {"pp": "127.0.0.1:9500"},
        )
        tenant["listeners"].append(
            {
                "listen": f"[{addr6}]:7000",
                "protocol": "tcp",
                "upstream": "pp",
                "proxy_protocol": "v2",
            }
        )
        tenants.append(tenant)
    proxy.write_config(tenants, timeouts={"drain": 1})
    proxy.start()
    for netns, address, family in [
        (netns, address, family)
        for netns in ("t1", "t2")
        for address, family in ((ADDR, 0x11), (addr6, 0x21))
    ]:
        out = proxy.python(netns, PP2_CLIENT, address, "7000", netns, check=False)
        assert out.returncode == 0, out.stderr + proxy.log()
        doc = json.loads(out.stdout)
        seen = doc["answer"]
        assert seen["signature"] == "0d0a0d0a000d0a515549540a"
        assert (seen["ver_cmd"], seen["fam"]) == (0x21, family)  # v2 PROXY; TCP4 or TCP6
        assert seen["src"] == doc["me"]  # the client's own address and port, in its namespace
        assert seen["dst"] == [address, 7000]
        assert seen["tlvs"] == [[0x30, netns]]  # PP2_TYPE_NETNS = the tenant
        assert seen["payload"] == f"ping from {netns}\n"


def test_haproxy_accepts_the_proxy_v2_header(proxy, tmp_path):
    if not shutil.which("haproxy"):
        pytest.fail("haproxy is missing: scripts/bootstrap.sh installs it")
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        "global\n  log stderr format raw local0\n"
        "defaults\n  mode http\n  timeout connect 5s\n  timeout client 10s\n"
        "  timeout server 10s\n"
        "frontend fe\n  bind 127.0.0.1:9600 accept-proxy\n"
        "  http-request return status 200 content-type text/plain "
        'lf-string "src=%[src]:%[src_port] dst=%[dst]:%[dst_port]\\n"\n'
    )
    proxy.sb.popen(
        ["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_port(proxy, 9600)
    proxy.add_netns("t1")
    proxy.write_config(
        [
            tcp_tenant(
                "t1",
                {"listen": f"{ADDR}:8080", "upstream": "hap", "proxy_protocol": "v2"},
                {"hap": "127.0.0.1:9600"},
            )
        ],
        timeouts={"drain": 1},
    )
    proxy.start()
    out = proxy.curl("t1", "--local-port", "40123", f"http://{ADDR}:8080/")
    assert out.returncode == 0, out.stderr + proxy.log()
    assert out.stdout.strip() == f"src={ADDR}:40123 dst={ADDR}:8080"


def test_plain_relay_moves_large_payloads_both_ways_with_half_close(proxy):
    upload, download = 48 * 1024 * 1024, 24 * 1024 * 1024
    proxy.add_netns("t1", "t2")
    # t1's upstream is in the host namespace, t2's inside t2 itself on the tenant's address.
    start_upstream(proxy, "sink", "127.0.0.1:9700", str(download))
    start_upstream(proxy, "sink", f"{ADDR}:9700", str(download), netns="t2")
    t1 = tcp_tenant(
        "t1", {"listen": f"{ADDR}:6000", "upstream": "sink"}, {"sink": "127.0.0.1:9700"}
    )
    t2 = tcp_tenant("t2", {"listen": f"{ADDR}:6000", "upstream": "sink"}, {"sink": f"{ADDR}:9700"})
    t2["upstreams"]["sink"]["netns"] = "t2"
    proxy.write_config([t1, t2], timeouts={"drain": 1})
    proxy.start()
    expected_rest = hashlib.sha256(
        (bytes(range(256)) * 4096 * (download // (256 * 4096) + 1))[:download]
    ).hexdigest()
    for netns in ("t1", "t2"):
        out = proxy.python(netns, BULK_CLIENT, ADDR, "6000", str(upload), check=False, timeout=300)
        assert out.returncode == 0, out.stderr + proxy.log()
        doc = json.loads(out.stdout)
        # The upstream saw every byte (it only answers after the client's EOF came through).
        assert doc["head"] == f"{upload} {doc['sent_sha']}"
        assert (doc["rest_len"], doc["rest_sha"]) == (download, expected_rest)
    proxy.stop()
    records = [r for r in proxy.access_records() if r.get("protocol") == "tcp"]
    assert sorted(r["tenant"] for r in records) == ["t1", "t2"]
    for r in records:
        assert r["bytes_in"] == upload and r["error"] is None
        assert r["bytes_out"] > download
    servers = {r["tenant"]: r["server"] for r in records}
    assert servers == {"t1": "127.0.0.1:9700", "t2": f"{ADDR}:9700"}
