"""HTTPS listeners of the real daemon: two tenants on the same address, each with its own
certificates chosen by SNI, checked with openssl s_client and curl run inside the tenants'
namespaces; TLS older than 1.2 refused."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

import pytest
from conftest import ADDR, NSPROXY, headers_of, make_cert

OLD_TLS_ENV = {**os.environ, "OPENSSL_CONF": "/dev/null"}  # no system MinProtocol/SECLEVEL


def https_tenant(name, certificates, port=443, min_version=None, upstream="127.0.0.1:18080"):
    tls = {"certificates": certificates}
    if min_version:
        tls["min_version"] = min_version
    return {
        "name": name,
        "netns": name,
        "listeners": [{"listen": f"{ADDR}:{port}", "protocol": "https", "tls": tls}],
        "routes": [{"host": "*", "path_prefix": "/", "upstream": "app"}],
        "upstreams": {"app": {"netns": None, "servers": [upstream]}},
    }


@pytest.fixture
def two_tenants(proxy, tmp_path):
    """t1 and t2 on 10.0.0.250:443, each with two certificates; the echo upstream on the host."""
    certs = {
        "t1": make_cert(tmp_path, "t1", "t1.example", "*.t1.example"),
        "t1-api": make_cert(tmp_path, "t1-api", "api.shared.example"),
        "t2": make_cert(tmp_path, "t2", "t2.example"),
        "t2-api": make_cert(tmp_path, "t2-api", "api.shared.example", "*.t2.example"),
    }
    proxy.add_netns("t1", "t2")
    proxy.start_echo("echo", "127.0.0.1:18080")
    tenants = [
        https_tenant("t1", [certs["t1"], certs["t1-api"]]),
        https_tenant("t2", [certs["t2"], certs["t2-api"]]),
    ]
    tenants[1]["listeners"].append(
        {
            "listen": f"{ADDR}:8443",
            "protocol": "https",
            "tls": {"certificates": [certs["t2"]], "min_version": "1.3"},
        }
    )
    proxy.write_config(tenants, timeouts={"drain": 1})
    proxy.start()
    return proxy, certs


def s_client(proxy, netns, *args, port=443, env=None):
    return proxy.sb.run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "openssl",
            "s_client",
            "-connect",
            f"{ADDR}:{port}",
            "-verify_return_error",
            *args,
        ],
        check=False,
        input="",
        env=env,
        timeout=60,
    )


def verified(proxy, netns, name, cafile):
    """openssl s_client to ``name`` in ``netns``, checking the chain and the host name."""
    return s_client(proxy, netns, "-servername", name, "-CAfile", cafile, "-verify_hostname", name)


def curl_https(proxy, netns, host, cafile, path="/"):
    return proxy.curl(
        netns, "--resolve", f"{host}:443:{ADDR}", "--cacert", cafile, f"https://{host}{path}"
    )


SNI_CASES = [  # (tenant, SNI sent, certificate expected, its CN)
    ("t1", "t1.example", "t1", "t1.example"),
    ("t1", "www.t1.example", "t1", "t1.example"),
    ("t1", "api.shared.example", "t1-api", "api.shared.example"),
    ("t2", "t2.example", "t2", "t2.example"),
    ("t2", "api.shared.example", "t2-api", "api.shared.example"),  # same name, its own cert
    ("t2", "shop.t2.example", "t2-api", "api.shared.example"),
]


def handshake_failed(out) -> bool:
    """s_client finished without a session: no cipher was ever agreed."""
    return out.returncode != 0 and "Cipher is (NONE)" in out.stdout


def test_each_tenant_serves_its_own_certificates_by_sni_on_the_same_address(two_tenants):
    proxy, certs = two_tenants
    for netns, sni, cert, common_name in SNI_CASES:
        out = verified(proxy, netns, sni, certs[cert]["cert"])
        assert out.returncode == 0, (netns, sni, out.stdout + out.stderr)
        assert "Verify return code: 0 (ok)" in out.stdout
        assert f"subject=CN = {common_name}" in out.stdout
        assert "New, TLSv1.3, Cipher is TLS_" in out.stdout
    # A name no certificate has, or no SNI at all: the tenant's first certificate.
    for netns in ("t1", "t2"):
        for sni_args in (["-servername", "unknown.example"], ["-noservername"]):
            out = s_client(proxy, netns, *sni_args, "-CAfile", certs[netns]["cert"])
            assert out.returncode == 0, out.stdout + out.stderr
            assert f"subject=CN = {netns}.example" in out.stdout
    # t1 has no certificate for t2's names: it answers with its own, which curl refuses.
    out = curl_https(proxy, "t1", "t2.example", certs["t2"]["cert"])
    assert out.returncode == 60, out.stderr  # CURLE_PEER_FAILED_VERIFICATION
    out = curl_https(proxy, "t1", "api.shared.example", certs["t2-api"]["cert"])
    assert out.returncode == 60, out.stderr


def test_curl_reaches_the_upstream_over_https_and_sessions_resume(two_tenants):
    proxy, certs = two_tenants
    for netns, host, cert in (
        ("t1", "www.t1.example", "t1"),
        ("t2", "api.shared.example", "t2-api"),
    ):
        out = curl_https(proxy, netns, host, certs[cert]["cert"], "/hello")
        assert out.returncode == 0, out.stderr + proxy.log()
        doc = json.loads(out.stdout)
        headers = headers_of(doc)
        assert headers["x-nsproxy-tenant"] == [netns]
        assert headers["x-forwarded-proto"] == ["https"]
        assert headers["x-forwarded-host"] == [host]
        assert doc["path"] == "/hello"
    # Python's ssl client resumes its TLS 1.2 session from the ticket it was given.
    assert resumptions(proxy, certs["t1"]["cert"], "TLSv1_2", 2) == ["False", "True"]


RESUME = r"""
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, sys.argv[3])
session = None
for attempt in range(int(sys.argv[4])):
    with socket.create_connection((sys.argv[2], 443)) as raw:
        with ctx.wrap_socket(raw, server_hostname="www.t1.example", session=session) as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: www.t1.example\r\nConnection: close\r\n\r\n")
            while tls.recv(65536):
                pass
            assert tls.session.has_ticket
            print(tls.session_reused)
            session = session or tls.session
"""


def resumptions(proxy, cafile, version, connections) -> list[str]:
    """Whether each of ``connections`` TLS connections from t1 resumed the first one's session
    (from its ticket): "False" or "True" per connection."""
    out = proxy.python("t1", RESUME, cafile, ADDR, version, str(connections), check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.split()


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_a_ticket_from_one_worker_resumes_on_every_worker(proxy, tmp_path, version):
    """Each connection lands on one of the workers (SO_REUSEPORT); every worker accepts the
    tickets of every other (tls_tickets.py). With per-worker keys, each of the 12 resumptions
    would fail with a chance of 1 in 2."""
    cert = make_cert(tmp_path, "t1", "t1.example", "*.t1.example")
    proxy.add_netns("t1")
    proxy.start_echo("echo", "127.0.0.1:18080")
    proxy.write_config([https_tenant("t1", [cert])], workers=2)
    proxy.start()
    assert resumptions(proxy, cert["cert"], version, 13) == ["False"] + ["True"] * 12


ACROSS_ROTATION = r"""
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, sys.argv[3])

def connect(session=None):
    with socket.create_connection((sys.argv[2], 443)) as raw:
        with ctx.wrap_socket(raw, server_hostname="www.t1.example", session=session) as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: www.t1.example\r\nConnection: close\r\n\r\n")
            while tls.recv(65536):
                pass
            return tls.session, tls.session_reused

before, _ = connect()
print("issued", flush=True)
sys.stdin.readline()  # the keys have been rotated since
print(" ".join(str(connect(before)[1]) for _ in range(6)))
after, _ = connect()
print(" ".join(str(connect(after)[1]) for _ in range(12)), flush=True)
"""


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_ticket_keys_rotate_in_every_worker(proxy, tmp_path, version):
    """timeouts.ticket_keys: once the binder has drawn new keys, no worker takes a ticket
    issued before (each of 6 offers is a full handshake), and every worker takes the tickets
    issued after (12 resumptions over 2 workers: each worker has the new keys)."""
    cert = make_cert(tmp_path, "t1", "t1.example", "*.t1.example")
    proxy.add_netns("t1")
    proxy.start_echo("echo", "127.0.0.1:18080")
    period = 6
    proxy.write_config([https_tenant("t1", [cert])], workers=2, timeouts={"ticket_keys": period})
    proxy.start()
    client = proxy.sb.popen(
        ["ip", "netns", "exec", "t1", sys.executable, "-c", ACROSS_ROTATION, cert["cert"], ADDR,
         version],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    proxy.helpers.append(client)
    assert client.stdout.readline().strip() == "issued"
    rotations = proxy.log().count("TLS ticket keys rotated")
    proxy.wait_for(
        lambda _: proxy.log().count("TLS ticket keys rotated") > rotations,
        "a rotation after the first ticket",
        timeout=period + 5,
    )
    time.sleep(0.5)  # the workers apply the binder's message
    client.stdin.write("go\n")
    client.stdin.flush()
    assert client.stdout.readline().split() == ["False"] * 6
    assert client.stdout.readline().split() == ["True"] * 12
    assert client.wait(timeout=30) == 0


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_a_session_of_one_tenant_is_not_resumed_by_another_on_the_same_address(
    two_tenants, tmp_path, version
):
    """t1's client saves its session with t1.example; offered to t2's listener (the same
    10.0.0.250:443, in t2's namespace), it must not resume: t2 would serve "t1.example"
    without a certificate the client checks, to t2's upstream. Offered to t1 again, it does
    (so the refusal is the tenant boundary, not resumption broken)."""
    proxy, certs = two_tenants
    session = tmp_path / "t1.session"
    request = "GET / HTTP/1.1\r\nHost: t1.example\r\nConnection: close\r\n\r\n"

    def offer(netns, *args):
        argv = ["ip", "netns", "exec", netns, "openssl", "s_client", "-connect", f"{ADDR}:443"]
        argv += ["-servername", "t1.example", "-CAfile", certs["t1"]["cert"], "-ign_eof", version]
        return proxy.sb.run([*argv, *args], check=False, input=request, timeout=60)

    out = offer("t1", "-verify_return_error", "-sess_out", str(session))
    assert out.returncode == 0 and "New, TLS" in out.stdout, out.stdout + out.stderr
    out = offer("t2", "-sess_in", str(session))  # a client that does not stop at a bad chain
    assert "Reused, TLS" not in out.stdout, out.stdout
    assert "subject=CN = t2.example" in out.stdout  # a full handshake: t2's own certificate
    out = offer("t2", "-verify_return_error", "-sess_in", str(session))
    assert out.returncode != 0 and "X-Nsproxy-Tenant" not in out.stdout, out.stdout
    out = offer("t1", "-verify_return_error", "-sess_in", str(session))
    assert "Reused, TLS" in out.stdout, out.stdout + out.stderr


def test_a_tls_client_that_reads_until_the_close_gets_it_after_its_answer(two_tenants):
    """Over TLS the proxy cannot shut only its write side, so a last answer is followed by the
    close at once (close_notify) when no client input is pending: a client reading until the
    close (HTTP/1.0 style, openssl s_time) must not wait for the lingering close's idle timeout
    (5 s). The bound below is a liveness bound, far above the milliseconds this takes."""
    proxy, certs = two_tenants
    code = r"""
import socket, ssl, sys, time
ctx = ssl.create_default_context(cafile=sys.argv[1])
for request in (b"GET / HTTP/1.1\r\nHost: www.t1.example\r\nConnection: close\r\n\r\n",
                b"GET / HTTP/1.0\r\nHost: www.t1.example\r\n\r\n"):
    with socket.create_connection((sys.argv[2], 443)) as raw:
        with ctx.wrap_socket(raw, server_hostname="www.t1.example") as tls:
            tls.sendall(request)
            start, data = time.monotonic(), b""
            while chunk := tls.recv(65536):
                data += chunk
            print(data[9:12].decode(), round(time.monotonic() - start, 2))
"""
    out = proxy.python("t1", code, certs["t1"]["cert"], ADDR, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line.split() for line in out.stdout.splitlines()]
    assert [status for status, _ in lines] == ["200", "200"], out.stdout
    assert all(float(seconds) < 2.5 for _, seconds in lines), out.stdout


def test_tls_older_than_1_2_is_refused_and_min_version_1_3_is_enforced(two_tenants):
    proxy, certs = two_tenants
    old = ["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]
    # Control: the same client command completes TLS 1.1 with an s_server that allows it,
    # so the refusal below is nsproxy's, not the client's.
    server = proxy.sb.popen(
        [
            "ip",
            "netns",
            "exec",
            "t1",
            "openssl",
            "s_server",
            "-accept",
            "127.0.0.1:9444",
            "-cert",
            certs["t1"]["cert"],
            "-key",
            certs["t1"]["key"],
            "-tls1_1",
            "-cipher",
            "DEFAULT@SECLEVEL=0",
            "-naccept",
            "1",
            "-quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=OLD_TLS_ENV,
    )
    control = None
    for _ in range(100):
        control = proxy.sb.run(
            [
                "ip",
                "netns",
                "exec",
                "t1",
                "openssl",
                "s_client",
                "-connect",
                "127.0.0.1:9444",
                *old,
            ],
            check=False,
            input="",
            env=OLD_TLS_ENV,
            timeout=60,
        )
        if "CONNECTED" in control.stdout:
            break
        time.sleep(0.1)
    server.kill()
    assert "Protocol  : TLSv1.1" in control.stdout, control.stdout + control.stderr
    for netns in ("t1", "t2"):
        out = s_client(proxy, netns, "-servername", f"{netns}.example", *old, env=OLD_TLS_ENV)
        assert handshake_failed(out), out.stdout + out.stderr
    # TLS 1.2 is served on the default listener, refused where min_version is 1.3.
    ok = s_client(
        proxy, "t2", "-servername", "t2.example", "-CAfile", certs["t2"]["cert"], "-tls1_2"
    )
    assert ok.returncode == 0 and "New, TLSv1.2, Cipher is ECDHE-" in ok.stdout, (
        ok.stdout + ok.stderr
    )
    refused = s_client(proxy, "t2", "-servername", "t2.example", "-tls1_2", port=8443)
    assert handshake_failed(refused), refused.stdout + refused.stderr
    ok13 = s_client(
        proxy, "t2", "-servername", "t2.example", "-CAfile", certs["t2"]["cert"], port=8443
    )
    # (the "Protocol :" block needs the TLS 1.3 session ticket, which may come after EOF)
    assert ok13.returncode == 0 and "New, TLSv1.3, Cipher is TLS_" in ok13.stdout


def test_reload_with_a_new_certificate_path_serves_the_new_certificate(proxy, tmp_path):
    old = make_cert(tmp_path, "old", "rot.example")
    new = make_cert(tmp_path, "new", "rot.example", "www.rot.example")
    proxy.add_netns("t1")
    proxy.start_echo("echo", "127.0.0.1:18080")
    proxy.write_config([https_tenant("t1", [old])], timeouts={"drain": 1})
    proxy.start()
    out = s_client(proxy, "t1", "-servername", "rot.example", "-CAfile", old["cert"])
    assert out.returncode == 0, out.stdout + out.stderr
    proxy.write_config([https_tenant("t1", [new])], timeouts={"drain": 1})
    assert proxy.reload().returncode == 0, proxy.log()
    out = verified(proxy, "t1", "www.rot.example", new["cert"])
    assert out.returncode == 0, out.stdout + out.stderr + proxy.log()
    out = curl_https(proxy, "t1", "www.rot.example", new["cert"], "/after")
    assert out.returncode == 0 and json.loads(out.stdout)["path"] == "/after", out.stderr


SILENT_CLIENT = """
import socket, sys, time
sock = socket.create_connection((sys.argv[1], 443), timeout=30)
start = time.monotonic()
try:
    data = sock.recv(1)  # never send a ClientHello; wait for the proxy to give up
except socket.timeout:
    data = None
print("closed" if data == b"" else "still-open", round(time.monotonic() - start, 1))
"""


def test_a_client_that_never_finishes_the_tls_handshake_is_closed_after_header_read(
    proxy, tmp_path
):
    cert = make_cert(tmp_path, "t1", "t1.example")
    proxy.add_netns("t1")
    proxy.start_echo("echo", "127.0.0.1:18080")
    proxy.write_config([https_tenant("t1", [cert])], timeouts={"drain": 1, "header_read": 2})
    proxy.start()
    # header_read is 2 s; without a handshake timeout asyncio would wait 60 s and the client's
    # own 30 s socket timeout would expire first ("still-open").
    out = proxy.python("t1", SILENT_CLIENT, ADDR, check=False, timeout=60)
    assert out.stdout.split()[0] == "closed", out.stdout + out.stderr + proxy.log()


def test_run_after_check_does_not_load_its_certificates_again_but_refuses_changed_bytes(
    proxy, tmp_path
):
    """`nsproxy check` (the unit's ExecStartPre) leaves what it found valid for the `run`
    that follows; a key replaced after the check is loaded by `run` and refused."""
    cert = make_cert(tmp_path, "t1", "t1.example")
    wrong = make_cert(tmp_path, "wrong", "t1.example")
    proxy.add_netns("t1")
    proxy.start_echo("echo", "127.0.0.1:18080")
    proxy.write_config([https_tenant("t1", [cert])], timeouts={"drain": 1})
    proxy.sb.run(["mkdir", "-p", "/run/nsproxy"])  # the unit's RuntimeDirectory (sandbox's /run)
    check = proxy.nsproxy("check", str(proxy.config_path))
    assert check.returncode == 0, check.stdout + check.stderr
    proxy.start()
    assert "1 sets found valid by nsproxy check were not loaded again" in proxy.log()
    out = verified(proxy, "t1", "t1.example", cert["cert"])
    assert out.returncode == 0, out.stdout + out.stderr + proxy.log()
    assert proxy.stop() == 0
    with open(cert["key"], "wb") as f, open(wrong["key"], "rb") as other:
        f.write(other.read())
    refused = proxy.sb.run(
        [NSPROXY, "run", "--config", str(proxy.config_path)], check=False, timeout=60
    )
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "tls.certificates[0].key: the key in" in refused.stderr, refused.stderr


def test_a_reload_naming_a_fifo_as_certificate_is_refused_and_the_binder_answers(proxy, tmp_path):
    """A FIFO left at a certificate path: opening it to read would wait for a writer, inside
    the binder's loop (no reload answer, no status, no signal handled, no worker watched)."""
    good = make_cert(tmp_path, "a", "a.example")
    proxy.add_netns("a", "b")
    proxy.start_echo("echo", "127.0.0.1:18080")
    proxy.write_config([https_tenant("a", [good])])
    proxy.start()
    fifo = tmp_path / "b.fifo"
    os.mkfifo(fifo)
    bad = https_tenant("b", [{"cert": str(fifo), "key": good["key"]}])
    proxy.write_config([https_tenant("a", [good]), bad])
    try:
        out = proxy.sb.run([NSPROXY, "reload", "--socket", proxy.socket], check=False, timeout=30)
        assert out.returncode == 1, out.stdout + out.stderr
        assert f"certificates[0].cert: cannot read {fifo}: not a regular file" in out.stderr
        assert [t["name"] for t in proxy.status_json()["tenants"]] == ["a"]
    finally:
        with contextlib.suppress(OSError):  # a binder blocked in open() gets its writer
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_a_server_name_that_is_not_ascii_costs_at_most_a_line_in_the_log(proxy, tmp_path):
    """With two certificates SNI chooses, and CPython decodes the name before the choice; a
    name that is not ASCII fails there, which Python reports outside the log (a traceback on
    stderr, per handshake, at any client's will). It is one line in the log's format at most
    every 10 s, without the name; the listener goes on serving."""
    certs = [make_cert(tmp_path, "t1", "t1.example"), make_cert(tmp_path, "t1b", "b.t1.example")]
    proxy.add_netns("t1")
    proxy.start_echo("echo", "127.0.0.1:18080")
    proxy.write_config([https_tenant("t1", certs)], log={"format": "json"})
    proxy.start()
    before = len(proxy.log_path.read_text(errors="replace").splitlines())
    for _ in range(10):
        out = s_client(proxy, "t1", "-servername", "caf\u00e9.example\nFAKE nsproxy ERROR")
        assert handshake_failed(out), out.stdout
    assert verified(proxy, "t1", "t1.example", certs[0]["cert"]).returncode == 0
    new = proxy.log_path.read_text(errors="replace").splitlines()[before:]
    records = [json.loads(line) for line in new]  # every line is one JSON object
    ignored = [r for r in records if "ignored" in r.get("message", "")]
    assert 1 <= len(ignored) <= 2, new
    assert not any("FAKE" in line or "caf" in line for line in new), new
