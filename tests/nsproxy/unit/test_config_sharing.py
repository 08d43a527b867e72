"""Tenants with identical listeners, routes or upstreams share one object per distinct value,
and a tenant with different values never gets another tenant's objects."""

from __future__ import annotations

import json

from nsproxy import config


def tenant(name, routes=None, servers=("127.0.0.1:8080",), port=80):
    return {
        "name": name,
        "netns": name,
        "listeners": [{"listen": f"10.0.0.250:{port}", "protocol": "http"}],
        "routes": routes or [{"host": "*", "path_prefix": "/", "upstream": "app"}],
        "upstreams": {"app": {"netns": None, "servers": list(servers)}},
    }


def parse(tenants, previous=None):
    return {
        t.name: t for t in config.parse(json.dumps({"tenants": tenants}).encode(), previous).tenants
    }


def routes_of(t):
    return [(r.host, r.path_prefix, r.upstream) for r in t.routes]


def test_identical_tenants_share_their_listeners_routes_and_upstreams():
    got = parse([tenant(f"t{i}") for i in range(50)])
    first = got["t0"]
    for t in got.values():
        assert t.routes is first.routes
        assert t.listeners is first.listeners
        assert t.upstreams is first.upstreams
        assert t.name != first.name or t is first
    assert len({t.digest for t in got.values()}) == 50  # each tenant still has its identity


def test_a_tenant_with_other_routes_or_servers_gets_its_own_objects():
    api = [
        {"host": "api.example", "path_prefix": "/", "upstream": "app"},
        {"host": "*", "path_prefix": "/", "upstream": "app"},
    ]
    got = parse([tenant("a"), tenant("b", routes=api), tenant("c", servers=["127.0.0.1:9"])])
    assert got["b"].routes is not got["a"].routes
    assert routes_of(got["a"]) == [("*", "/", "app")]
    assert routes_of(got["b"]) == [("api.example", "/", "app"), ("*", "/", "app")]
    assert got["c"].routes is got["a"].routes  # same routes, other upstream servers
    assert got["c"].upstreams is not got["a"].upstreams
    assert got["c"].upstreams["app"].servers == [("127.0.0.1", 9)]
    assert got["a"].upstreams["app"].servers == [("127.0.0.1", 8080)]


def test_changing_one_tenant_on_reload_leaves_the_shared_objects_of_the_others_intact():
    first = parse([tenant("a"), tenant("b"), tenant("c")])
    shared_routes = first["a"].routes
    api = [{"host": "api.example", "path_prefix": "/v2/", "upstream": "app"}]
    second = parse(
        [tenant("a"), tenant("b", routes=api, servers=["127.0.0.1:9"]), tenant("c"), tenant("d")],
        first,
    )
    assert second["a"] is first["a"] and second["c"] is first["c"]
    assert second["a"].routes is shared_routes and routes_of(second["a"]) == [("*", "/", "app")]
    assert routes_of(second["b"]) == [("api.example", "/v2/", "app")]
    assert second["b"].upstreams["app"].servers == [("127.0.0.1", 9)]
    assert first["a"].upstreams["app"].servers == [("127.0.0.1", 8080)]
    # An added tenant equal to the kept ones shares their objects.
    assert second["d"].routes is shared_routes
    assert second["d"].upstreams is second["a"].upstreams
