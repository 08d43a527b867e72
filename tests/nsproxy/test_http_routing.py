"""Tenant isolation and routing with the real daemon, real namespaces and curl."""

from __future__ import annotations

import json

import pytest
from conftest import ADDR, headers_of, http_tenant

N_TENANTS = 55


def test_fifty_five_tenants_on_one_address_each_reach_only_their_own_upstream(proxy):
    names = [f"t{i}" for i in range(N_TENANTS)]
    proxy.add_netns(*names)
    ports = {name: 9000 + i for i, name in enumerate(names)}
    proxy.start_echo("echo", *(f"127.0.0.1:{p}" for p in ports.values()))
    tenants = [
        http_tenant(
            name,
            [f"127.0.0.1:{ports[name]}"],
            routes=[{"host": f"app.{name}.example", "path_prefix": "/", "upstream": "app"}],
        )
        for name in names
    ]
    proxy.write_config(tenants)
    proxy.start()

    # One shell loop inside the sandbox: for every tenant, its own host name and its
    # neighbour's host name, each with spoofed identity headers.
    script = []
    for i, name in enumerate(names):
        other = names[(i + 1) % N_TENANTS]
        for host in (f"app.{name}.example", f"app.{other}.example"):
            script.append(
                f"echo '>>> {name} {host}'; ip netns exec {name} curl -sS --max-time 10 "
                f"-w '\\n%{{http_code}}\\n' -H 'Host: {host}' -H 'X-Nsproxy-Tenant: {other}' "
                f"-H 'X-Forwarded-For: 203.0.113.9' -H 'X-Forwarded-Host: evil' "
                f"http://{ADDR}/path?q=1"
            )
    out = proxy.sb.sh("\n".join(script)).stdout
    results = {}
    for block in out.split(">>> ")[1:]:
        head, _, rest = block.partition("\n")
        body, _, code = rest.rstrip("\n").rpartition("\n")
        results[tuple(head.split())] = (int(code), body)
    assert len(results) == 2 * N_TENANTS
    for i, name in enumerate(names):
        other = names[(i + 1) % N_TENANTS]
        code, body = results[(name, f"app.{name}.example")]
        assert code == 200, (name, body)
        doc = json.loads(body)
        assert doc["server"] == f"echo@{ports[name]}"
        headers = headers_of(doc)
        assert headers["x-nsproxy-tenant"] == [name]
        assert headers["x-forwarded-for"] == [ADDR]
        assert headers["x-forwarded-host"] == [f"app.{name}.example"]
        assert headers["x-forwarded-proto"] == ["http"]
        assert doc["path"] == "/path?q=1"
        # The neighbour's host name is not a route of this tenant: no way to its upstream.
        code, body = results[(name, f"app.{other}.example")]
        assert code == 404, (name, body)
    served = [line.split()[0] for line in proxy.echo_log.read_text().splitlines()]
    assert len(served) == N_TENANTS


def test_routes_pick_exact_host_then_longest_wildcard_then_star_and_longest_path(proxy):
    proxy.add_netns("acme")
    servers = {u: f"127.0.0.1:{p}" for u, p in zip("abcde", range(9101, 9106))}
    proxy.start_echo("u", *servers.values())
    tenant = {
        "name": "acme",
        "netns": "acme",
        "listeners": [{"listen": f"{ADDR}:8080", "protocol": "http"}],
        "routes": [
            {"host": "api.example", "path_prefix": "/", "upstream": "a"},
            {"host": "api.example", "path_prefix": "/v2/", "upstream": "b"},
            {"host": "*.example", "path_prefix": "/", "upstream": "c"},
            {"host": "*.deep.example", "path_prefix": "/", "upstream": "d"},
            {"host": "*", "path_prefix": "/static/", "upstream": "e"},
        ],
        "upstreams": {u: {"netns": None, "servers": [s]} for u, s in servers.items()},
    }
    proxy.write_config([tenant])
    proxy.start()
    expect = {
        ("api.example", "/x"): "a",
        ("API.Example:8080", "/x"): "a",
        ("api.example", "/v2/users"): "b",
        ("api.example", "/v2"): "a",
        ("www.example", "/"): "c",
        ("x.deep.example", "/"): "d",
        ("other.org", "/static/app.js"): "e",
        ("api.example", "/static/app.js"): "a",
    }
    for (host, path), upstream in expect.items():
        doc = proxy.get_json("acme", f"http://{ADDR}:8080{path}", "-H", f"Host: {host}")
        assert doc["server"] == f"u@{servers[upstream].split(':')[1]}", (host, path)
    for host, path in (("other.org", "/"), ("example", "/")):
        proc = proxy.curl(
            "acme",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            f"Host: {host}",
            f"http://{ADDR}:8080{path}",
        )
        assert proc.stdout == "404", (host, path)


def test_upstream_inside_the_tenant_namespace_is_reached_there_not_in_the_host(proxy):
    proxy.add_netns("inner")
    # The same address in the host namespace and in the tenant's: only the tenant's may answer.
    proxy.start_echo("host-side", "127.0.0.1:9200")
    proxy.start_echo("tenant-side", "127.0.0.1:9200", netns="inner")
    proxy.write_config([http_tenant("inner", ["127.0.0.1:9200"], upstream_netns="inner")])
    proxy.start()
    for _ in range(3):
        doc = proxy.get_json("inner", f"http://{ADDR}/")
        assert doc["server"] == "tenant-side@9200"
        assert headers_of(doc)["x-nsproxy-tenant"] == ["inner"]


def test_keep_alive_reuses_one_upstream_connection_per_tenant(proxy):
    proxy.add_netns("ka")
    proxy.start_echo("echo", "127.0.0.1:9300")
    proxy.write_config([http_tenant("ka", ["127.0.0.1:9300"])])
    proxy.start()
    code = f"""
import http.client, json
c = http.client.HTTPConnection("{ADDR}", 80, timeout=10)
peers = []
for i in range(20):
    c.request("GET", f"/r{{i}}")
    r = c.getresponse()
    peers.append(tuple(json.loads(r.read())["peer"]))
print(json.dumps({{"peers": len(set(peers)), "sock": c.sock is not None}}))
"""
    out = json.loads(proxy.python("ka", code).stdout)
    # 20 requests over one client connection, forwarded over one pooled upstream connection.
    assert out == {"peers": 1, "sock": True}


def _ask_all(proxy, requests):
    """(tenant, host, path) -> (status, echo document or body) with one shell loop of curl."""
    script = [
        f"echo '>>> {name} {host} {path}'; ip netns exec {name} curl -sS --max-time 10 "
        f"-w '\\n%{{http_code}}\\n' -H 'Host: {host}' http://{ADDR}{path}"
        for name, host, path in requests
    ]
    out = proxy.sb.sh("\n".join(script)).stdout
    results = {}
    for block in out.split(">>> ")[1:]:
        head, _, rest = block.partition("\n")
        body, _, code = rest.rstrip("\n").rpartition("\n")
        results[tuple(head.split())] = (int(code), json.loads(body) if code == "200" else body)
    assert len(results) == len(requests), out
    return results


def test_tenants_with_identical_route_tables_each_reach_only_their_own_servers(proxy):
    # Identical routes and upstream names (the daemon shares one route table between them),
    # but every tenant's upstreams point at its own servers.
    names = [f"t{i}" for i in range(12)]
    proxy.add_netns(*names)
    ports = {name: (9200 + 2 * i, 9201 + 2 * i) for i, name in enumerate(names)}
    proxy.start_echo("echo", *(f"127.0.0.1:{p}" for pair in ports.values() for p in pair))
    routes = [
        {"host": "api.example", "path_prefix": "/", "upstream": "api"},
        {"host": "*", "path_prefix": "/", "upstream": "app"},
    ]

    def tenant(name, routes):
        api, app = ports[name]
        return {
            "name": name,
            "netns": name,
            "listeners": [{"listen": f"{ADDR}:80", "protocol": "http"}],
            "routes": routes,
            "upstreams": {
                "api": {"netns": None, "servers": [f"127.0.0.1:{api}"]},
                "app": {"netns": None, "servers": [f"127.0.0.1:{app}"]},
            },
        }

    proxy.write_config([tenant(name, routes) for name in names])
    proxy.start()
    requests = [(n, h, "/x") for n in names for h in ("api.example", "www.example")]
    for (name, host, _), (code, doc) in _ask_all(proxy, requests).items():
        assert code == 200, (name, host, doc)
        api, app = ports[name]
        assert doc["server"] == f"echo@{api if host == 'api.example' else app}", (name, host)
        assert headers_of(doc)["x-nsproxy-tenant"] == [name]

    # One tenant's table changes on reload: only that tenant routes differently.
    changed = names[5]
    only_api = [{"host": "api.example", "path_prefix": "/", "upstream": "api"}]
    proxy.write_config([tenant(n, only_api if n == changed else routes) for n in names])
    assert proxy.reload().returncode == 0, proxy.log()
    for (name, host, _), (code, doc) in _ask_all(proxy, requests).items():
        api, app = ports[name]
        if name == changed and host == "www.example":
            assert code == 404, (name, host, doc)
            continue
        assert code == 200, (name, host, doc)
        assert doc["server"] == f"echo@{api if host == 'api.example' else app}", (name, host)
        assert headers_of(doc)["x-nsproxy-tenant"] == [name]


@pytest.mark.parametrize(
    ("target", "host"),
    [("http://[2001:db8::7]:8080/x", "[2001:db8::7]:8080"), ("http://[::1]/x", "[::1]"),
     ("http://a.example:8080/x?q=1", "a.example:8080")],
)  # fmt: skip
def test_the_authority_of_an_absolute_form_target_is_the_host_forwarded(proxy, target, host):
    """RFC 9112 3.2.2: it replaces Host, and an IPv6 literal keeps its brackets (RFC 3986
    3.2.2): without them, [::1]:8080 went out as '::1:8080', a host no route can match."""
    proxy.add_netns("acme")
    proxy.start_echo("echo", "127.0.0.1:9120")
    proxy.write_config([http_tenant("acme", ["127.0.0.1:9120"])])
    proxy.start()
    request = f"GET {target} HTTP/1.1\r\nHost: ignored.example\r\nConnection: close\r\n\r\n"
    (response,) = proxy.exchange("acme", request.encode())["responses"]
    assert response["status"] == 200, response
    doc = json.loads(response["body"])
    assert headers_of(doc)["host"] == [host]
    assert doc["path"].startswith("/x")
