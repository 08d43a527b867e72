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


def _pass(tenants, running=None):
    """config.parse as a reload calls it: the running tenants and the running registry."""
    data = json.dumps({"tenants": tenants}).encode()
    if running is None:
        return config.parse(data)
    return config.parse(data, {t.name: t for t in running.tenants}, running.parts)


def _registered(cfg) -> set:
    return {id(part) for part in cfg.parts.values()}


def test_a_reload_that_only_adds_shares_through_the_carried_registry():
    first = _pass([tenant("a"), tenant("b", servers=["127.0.0.1:9"])])
    second = _pass([tenant("a"), tenant("b", servers=["127.0.0.1:9"]), tenant("c")], first)
    assert second.tenants[0] is first.tenants[0] and second.tenants[1] is first.tenants[1]
    assert second.tenants[2].upstreams is first.tenants[0].upstreams
    assert second.parts is not first.parts  # a copy: a refused reload leaves the running one
    assert first.parts.items() <= second.parts.items()


def test_a_reload_that_removes_or_changes_a_tenant_drops_its_parts_from_the_registry():
    first = _pass([tenant("a"), tenant("b", servers=["127.0.0.1:9"]), tenant("c", port=81)])
    gone_upstreams = first.tenants[1].upstreams
    gone_listeners = first.tenants[2].listeners
    assert {id(gone_upstreams), id(gone_listeners)} <= _registered(first)
    removed = _pass([tenant("a"), tenant("c", port=82)], first)
    assert id(gone_upstreams) not in _registered(removed)  # b removed
    assert id(gone_listeners) not in _registered(removed)  # c changed
    assert id(removed.tenants[1].listeners) in _registered(removed)
    # What stays registered is exactly what the running tenants hold.
    held = set()
    for t in removed.tenants:
        held |= {id(t.upstreams), id(t.listeners), id(t.routes)}
        held |= {id(u) for u in t.upstreams.values()} | {id(li) for li in t.listeners}
        held |= {id(r) for r in t.routes}
    assert _registered(removed) == held


def test_a_tenant_whose_json_changes_only_in_type_counts_as_changed():
    """The reload's tenant digest tells true from 1 and 1.0 from 1 (json.loads keeps them
    apart, and so must the test of what changed): the changed tenant is checked again."""
    base = tenant("a")
    base["upstreams"]["app"]["health_check"] = {"type": "tcp", "rise": 1}
    first = _pass([base])
    for other in (True, 1.0):
        changed = json.loads(json.dumps(base))
        changed["upstreams"]["app"]["health_check"]["rise"] = other
        data = json.dumps({"tenants": [changed]}).encode()
        try:
            again = config.parse(data, {"a": first.tenants[0]}, first.parts).tenants[0]
        except config.ConfigError:
            continue  # refused: checked again, not kept
        assert again is not first.tenants[0]


def test_a_tenant_written_with_its_keys_in_another_order_is_kept():
    """The quick digest (marshal) sees key order; the tenant's identity (sorted JSON) does
    not: a generator that orders keys otherwise at each run must not make every tenant
    "changed" at every reload (validated again, rebuilt in every worker)."""
    first = _pass([tenant("a"), tenant("b")])
    spec = tenant("a")
    reordered = {k: spec[k] for k in reversed(list(spec))}
    reordered["listeners"] = [dict(reversed(list(li.items()))) for li in spec["listeners"]]
    second = _pass([reordered, tenant("b")], first)
    assert second.tenants[0] is first.tenants[0] and second.tenants[1] is first.tenants[1]
    third = _pass([reordered, tenant("b")], second)  # and cheaply from then on
    assert third.tenants[0] is first.tenants[0]
    assert third.tenants[0].quick == config._quick_digest(reordered)
