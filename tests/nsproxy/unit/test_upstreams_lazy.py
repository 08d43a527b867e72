"""A tenant's upstream runtimes (health, keep-alive pools) are made at first use and kept or
dropped by a reload according to their spec."""

from __future__ import annotations

import json

import pytest

from nsproxy import config, netns
from nsproxy.upstream import Upstream, Upstreams


def specs(**upstreams):
    tenant = {
        "name": "acme",
        "netns": "acme",
        "listeners": [{"listen": "10.0.0.250:80", "protocol": "http"}],
        "routes": [{"host": "*", "path_prefix": "/", "upstream": next(iter(upstreams))}],
        "upstreams": {n: {"netns": None, "servers": s} for n, s in upstreams.items()},
    }
    return config.parse(json.dumps({"tenants": [tenant]}).encode()).tenants[0].upstreams


class IdleConnection:
    """Stands in for a pooled upstream connection: records that the pool closed it."""

    closed = False

    def close(self):
        self.closed = True


@pytest.fixture
def table():
    return Upstreams("acme", netns.Registry(), shared=None)


def test_an_upstream_is_made_at_first_use_and_then_kept(table):
    table.use_specs(specs(app=["127.0.0.1:8080", "127.0.0.1:8081"], api=["127.0.0.1:9000"]))
    assert len(table) == 0
    app = table["app"]
    assert isinstance(app, Upstream) and app.tenant == "acme"
    assert [s.address for s in app.servers] == [("127.0.0.1", 8080), ("127.0.0.1", 8081)]
    assert table["app"] is app and table.get("app") is app
    assert list(table) == ["app"]  # api is still not made


def test_an_undeclared_upstream_is_not_made(table):
    table.use_specs(specs(app=["127.0.0.1:8080"]))
    assert table.get("other") is None
    with pytest.raises(KeyError):
        table["other"]
    assert len(table) == 0


def test_health_lists_configured_servers_before_first_use_and_real_state_after(table):
    table.use_specs(specs(app=["127.0.0.1:8080", "[::1]:8081"]))
    assert table.health("app") == [
        {"address": "127.0.0.1:8080", "healthy": True},
        {"address": "[::1]:8081", "healthy": True},
    ]
    up = table["app"]
    up._failed(up.servers[1], "refused")
    assert table.health("app") == [
        {"address": "127.0.0.1:8080", "healthy": True},
        {"address": "[::1]:8081", "healthy": False},
    ]


def test_a_reload_keeps_unchanged_upstreams_and_drops_changed_or_removed_ones(table):
    table.use_specs(specs(app=["127.0.0.1:8080"], api=["127.0.0.1:9000"], old=["127.0.0.1:7"]))
    app, api = table["app"], table["api"]
    pooled = {name: IdleConnection() for name in ("app", "api", "old")}
    for name, conn in pooled.items():
        table[name].servers[0].idle = [conn]
    table.use_specs(specs(app=["127.0.0.1:8080"], api=["127.0.0.1:9001"]))
    assert table["app"] is app  # same spec: same health and pools
    assert table["api"] is not api
    assert [s.address for s in table["api"].servers] == [("127.0.0.1", 9001)]
    assert "old" not in table and table.get("old") is None
    # The dropped upstreams' pools were closed; the kept one's idle connection stays.
    assert pooled["api"].closed and pooled["old"].closed
    assert not pooled["app"].closed and app.servers[0].idle == [pooled["app"]]
