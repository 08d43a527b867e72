"""``nsproxy check``: valid configs pass, each kind of mistake gives its own line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

NSPROXY = [sys.executable, "-m", "nsproxy"]


def tenant(name="acme", **over):
    t = {
        "name": name,
        "netns": name,
        "listeners": [{"listen": "10.0.0.250:80", "protocol": "http"}],
        "routes": [{"host": "api.example", "path_prefix": "/", "upstream": "api"}],
        "upstreams": {"api": {"netns": None, "servers": ["192.168.100.10:8080"]}},
    }
    t.update(over)
    return t


def check(tmp_path: Path, cfg) -> subprocess.CompletedProcess:
    path = tmp_path / "c.json"
    path.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    return subprocess.run([*NSPROXY, "check", str(path)], capture_output=True, text=True)


def test_valid_config_passes_and_counts_tenants_and_listeners(tmp_path):
    cfg = {
        "instance": "main",
        "metrics": {"listen": "127.0.0.1:9108"},
        "access_log": "-",
        "limits": {"max_headers": 50, "max_body_bytes": None},
        "timeouts": {"connect": 2.5},
        "tenants": [
            tenant(),
            tenant(
                "beta",
                listeners=[
                    {"listen": "10.0.0.250:80", "protocol": "http"},
                    {"listen": "[::1]:8080", "protocol": "http"},
                ],
            ),
        ],
    }
    result = check(tmp_path, cfg)
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip() == "ok: 2 tenants, 3 listeners"


BAD = [
    (
        "bad_listen_address",
        {"tenants": [tenant(listeners=[{"listen": "10.0.0.300:80", "protocol": "http"}])]},
        "tenant 'acme': listeners[0].listen: '10.0.0.300' is not an IP address",
    ),
    (
        "bad_port",
        {"tenants": [tenant(listeners=[{"listen": "10.0.0.1:99999", "protocol": "http"}])]},
        "tenant 'acme': listeners[0].listen: port '99999' is not a number from 1 to 65535",
    ),
    (
        "unknown_upstream",
        {"tenants": [tenant(routes=[{"host": "*", "upstream": "db"}])]},
        "tenant 'acme': routes[0].upstream: unknown upstream 'db' (this tenant's upstreams: api)",
    ),
    (
        "duplicate_listener",
        {
            "tenants": [
                tenant(
                    listeners=[
                        {"listen": "10.0.0.250:80", "protocol": "http"},
                        {"listen": "0.0.0.0:80", "protocol": "http"},
                    ]
                )
            ]
        },
        "tenant 'acme': listeners[1].listen: duplicate listener: 0.0.0.0:80 overlaps "
        "tenant 'acme': listeners[0] in network namespace 'acme'",
    ),
    (
        "duplicate_listener_across_tenants_sharing_a_netns",
        {"tenants": [tenant(), tenant("other", netns="acme")]},
        "tenant 'other': listeners[0].listen: duplicate listener: 10.0.0.250:80 overlaps",
    ),
    (
        "missing_certificate_file",
        {
            "tenants": [
                tenant(
                    listeners=[
                        {
                            "listen": "10.0.0.250:443",
                            "protocol": "https",
                            "tls": {
                                "certificates": [
                                    {"cert": "/nonexistent.pem", "key": "/nonexistent.key"}
                                ]
                            },
                        }
                    ]
                )
            ]
        },
        "tenant 'acme': listeners[0].tls.certificates[0].cert: cannot read /nonexistent.pem",
    ),
    (
        "tcp_listener_unknown_upstream",
        {
            "tenants": [
                tenant(
                    listeners=[{"listen": "10.0.0.250:5432", "protocol": "tcp", "upstream": "db"}]
                )
            ]
        },
        "tenant 'acme': listeners[0].upstream: unknown upstream 'db'",
    ),
    (
        "unknown_protocol",
        {"tenants": [tenant(listeners=[{"listen": "10.0.0.250:80", "protocol": "udp"}])]},
        "tenant 'acme': listeners[0].protocol: must be one of 'http', 'https', 'tcp', got 'udp'",
    ),
    (
        "unknown_key_in_listener",
        {
            "tenants": [
                tenant(listeners=[{"listen": "10.0.0.250:80", "protocol": "http", "tls": {}}])
            ]
        },
        "tenant 'acme': listeners[0].tls: unknown key for a http listener",
    ),
    (
        "unknown_tenant_key",
        {"tenants": [tenant(colour="blue")]},
        "tenant 'acme': colour: unknown key",
    ),
    (
        "unknown_top_key",
        {"tenants": [], "tennants": []},
        "tennants: unknown key",
    ),
    (
        "duplicate_tenant",
        {"tenants": [tenant(), tenant(netns="other")]},
        "tenant 'acme': duplicate tenant name",
    ),
    (
        "tenant_names_equal_but_for_case",
        {"tenants": [tenant(), tenant(name="ACME", netns="other")]},
        "tenant 'ACME': name: differs from tenant 'acme' only in case",
    ),
    (
        "bad_upstream_server",
        {"tenants": [tenant(upstreams={"api": {"servers": ["db.internal:5432"]}})]},
        "tenant 'acme': upstreams.api.servers[0]: 'db.internal' is not an IP address",
    ),
    (
        "empty_upstream",
        {"tenants": [tenant(upstreams={"api": {"netns": None, "servers": []}})]},
        "tenant 'acme': upstreams.api.servers: must be a non-empty list of 'IP:PORT'",
    ),
    (
        "bad_netns",
        {"tenants": [tenant(netns="../etc")]},
        "tenant 'acme': netns: must be a name under /run/netns",
    ),
    (
        "bad_route_host",
        {"tenants": [tenant(routes=[{"host": "bad host", "upstream": "api"}])]},
        "tenant 'acme': routes[0].host: must be a host name, '*.domain' or '*'",
    ),
    (
        "bad_path_prefix",
        {"tenants": [tenant(routes=[{"host": "*", "path_prefix": "api", "upstream": "api"}])]},
        "tenant 'acme': routes[0].path_prefix: must be a string starting with '/'",
    ),
    (
        "bad_limit",
        {"limits": {"max_headers": 0}, "tenants": []},
        "limits.max_headers: must be an integer from 1 to 10000, got 0",
    ),
    (
        "bad_timeout",
        {"timeouts": {"idle": "long"}, "tenants": []},
        "timeouts.idle: must be a number of seconds from 0.1 to 86400, got 'long'",
    ),
    ("not_json", "{tenants: []}", "not valid JSON"),
    ("bad_tenant_name", {"tenants": [tenant(name="a b")]}, "tenants[0].name: must be 1-63"),
]


@pytest.mark.parametrize(("cfg", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_check_rejects_bad_config_with_a_line_naming_tenant_and_field(tmp_path, cfg, message):
    result = check(tmp_path, cfg)
    assert result.returncode == 1
    assert any(line.startswith(message) for line in result.stdout.splitlines()), result.stdout


def test_check_reports_every_problem_one_per_line(tmp_path):
    cfg = {
        "tenants": [
            tenant(routes=[{"host": "*", "upstream": "nope"}]),
            tenant("b", listeners=[{"listen": "nowhere", "protocol": "http"}]),
        ]
    }
    result = check(tmp_path, cfg)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("tenant 'acme': routes[0].upstream")
    assert lines[1].startswith("tenant 'b': listeners[0].listen")


def test_check_names_a_missing_file(tmp_path):
    result = subprocess.run(
        [*NSPROXY, "check", str(tmp_path / "absent.json")], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "cannot read" in result.stdout and "No such file" in result.stdout


def checked_tenants(count: int, servers: int) -> dict:
    check = {"type": "tcp"}
    addresses = [f"10.{i // 250}.{i % 250}.1:80" for i in range(servers)]
    ups = {"api": {"netns": None, "servers": addresses, "health_check": check}}
    return {"tenants": [tenant(f"t{i}", upstreams=ups) for i in range(count)]}


def test_check_refuses_more_checked_servers_than_the_health_table_holds(tmp_path):
    """24 tenants x 1000 checked servers fit the shared health table (24576); 25 do not."""
    assert check(tmp_path, checked_tenants(24, 1000)).returncode == 0
    refused = check(tmp_path, checked_tenants(25, 1000))
    assert refused.returncode != 0
    assert (
        "tenants[].upstreams.*.health_check: 25000 servers have health checks, at most 24576 "
        "can (the shared health table's capacity); the biggest: tenant t7 upstream api (1000), "
    ) in refused.stdout + refused.stderr, refused.stdout + refused.stderr


def many_listeners(count: int, tenants: int = 1, workers: int = 1) -> dict:
    listeners = [{"listen": f"10.0.0.250:{1000 + i}", "protocol": "http"} for i in range(count)]
    return {
        "workers": workers,
        "tenants": [tenant(f"t{n}", listeners=listeners) for n in range(tenants)],
    }


def check_limited(tmp_path: Path, cfg, nofile: str) -> subprocess.CompletedProcess:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    return subprocess.run(
        ["prlimit", f"--nofile={nofile}", *NSPROXY, "check", str(path)],
        capture_output=True,
        text=True,
    )


def test_check_refuses_more_listening_sockets_than_the_descriptor_limit(tmp_path):
    # 400 listeners x 1 worker cannot fit 300 descriptors: the start would die of EMFILE.
    result = check_limited(tmp_path, many_listeners(400), "300")
    assert result.returncode == 1, result.stdout
    (line,) = result.stdout.splitlines()
    assert line.startswith("workers: this configuration needs 502 file descriptors in each worker")
    assert "400 listeners x 1 workers = 400 listening sockets" in line
    assert "RLIMIT_NOFILE is 300" in line and "LimitNOFILE" in line
    # Each listener is one socket per worker: 10 x 1024 with 2 workers is 20480 sockets.
    result = check_limited(tmp_path, many_listeners(1024, tenants=10, workers=2), "20000")
    assert result.returncode == 1
    assert "10240 listeners x 2 workers = 20480 listening sockets" in result.stdout
    assert "RLIMIT_NOFILE is 20000" in result.stdout


def test_check_counts_the_hard_descriptor_limit_the_daemon_raises_to(tmp_path):
    # nsproxy run raises the soft limit to the hard one: check counts what run will have.
    assert check_limited(tmp_path, many_listeners(100), "300").returncode == 0
    result = check_limited(tmp_path, many_listeners(400), "300:1024")
    assert result.returncode == 0, result.stdout
    result = check_limited(tmp_path, many_listeners(400), "300:400")
    assert "RLIMIT_NOFILE is 400" in result.stdout


def test_check_refuses_a_host_namespace_listener_on_the_metrics_address(tmp_path):
    # A tenant in the host namespace (a /proc/PID path of a process there) must not take the
    # metrics listener's address: the metrics would be off and /metrics go to its upstream.
    cfg = {
        "metrics": {"listen": "127.0.0.1:9108"},
        "tenants": [
            tenant(
                netns=f"/proc/{os.getpid()}/ns/net",
                listeners=[{"listen": "0.0.0.0:9108", "protocol": "http"}],
            )
        ],
    }
    result = check(tmp_path, cfg)
    assert result.returncode == 1, result.stdout
    assert result.stdout.strip() == (
        "tenant 'acme': listeners[0].listen: duplicate listener: 0.0.0.0:9108 overlaps "
        "metrics.listen in the host network namespace"
    )
    cfg["tenants"][0]["listeners"] = [{"listen": "127.0.0.1:9109", "protocol": "http"}]
    assert check(tmp_path, cfg).returncode == 0
    # Another namespace may use the address.
    cfg["tenants"][0]["netns"] = "acme"
    cfg["tenants"][0]["listeners"] = [{"listen": "127.0.0.1:9108", "protocol": "http"}]
    assert check(tmp_path, cfg).returncode == 0
