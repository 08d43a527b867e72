"""A tenant's upstream runtimes (health, keep-alive pools) are made at first use and kept or
dropped by a reload according to their spec."""

from __future__ import annotations

import json
import time
import types

import pytest

from nsproxy import config
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
    return Upstreams("acme", shared=None)


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
        {"address": "127.0.0.1:8080", "healthy": True, "last_error": None},
        {"address": "[::1]:8081", "healthy": True, "last_error": None},
    ]
    up = table["app"]
    up._failed(up.servers[1], "refused")
    assert table.health("app") == [
        {"address": "127.0.0.1:8080", "healthy": True, "last_error": None},
        {"address": "[::1]:8081", "healthy": False, "last_error": "refused"},
    ]
    up.servers[1].down_until = 0.0  # recovered: the old error is not shown any more
    assert table.health("app")[1] == {"address": "[::1]:8081", "healthy": True, "last_error": None}


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


class PooledConnection:
    """Stands in for an upstream connection in the keep-alive pool."""

    def __init__(self, server, last_io, closing=False):
        self.server = server
        self.last_io = last_io
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.transport = types.SimpleNamespace(is_closing=lambda: closing)

    def usable(self):
        return not self.closed and not self.transport.is_closing()

    def close(self):
        self.closed = True


def test_the_pool_hands_back_a_live_connection_and_times_idleness_from_its_last_io():
    table = Upstreams(
        "acme", shared=types.SimpleNamespace(draining=False, loop_time=time.monotonic)
    )
    table.use_specs(specs(app=["127.0.0.1:8080"]))
    up = table["app"]
    server = up.servers[0]
    assert up.take() == (server, None)
    stale, live = PooledConnection(server, 100.0, closing=True), PooledConnection(server, 105.0)
    up.put_idle(live)
    up.put_idle(stale)
    # Idle since its own last I/O, also when it never served a request (a connection made for
    # a client that left): not since the epoch, which would expire it at the next sweep.
    assert (live.idle_since, live.reused) == (105.0, True)
    up.expire_idle(now=110.0, idle_timeout=60.0)
    assert server.idle == [live]  # the closing one is dropped, the live one kept
    assert up.take() == (server, live)
    assert up.take() == (server, None)


def test_with_every_server_down_the_one_that_failed_longest_ago_is_tried(table):
    """Its mark as it is now, each time: a cache of the first mark once made the choice stick
    to a server marked down again since (and kept every server ever asked alive)."""
    table.use_specs(specs(app=["127.0.0.1:8080", "127.0.0.1:8081", "127.0.0.1:8082"]))
    app = table["app"]
    now = time.monotonic()
    first, second, third = app.servers
    first.down_until, second.down_until, third.down_until = now + 30, now + 10, now + 20
    assert list(app._healthy_from(0)) == [second]
    second.down_until = now + 40  # marked down again: now the one that failed last
    assert list(app._healthy_from(0)) == [third]
    third.down_until = now + 50
    assert list(app._healthy_from(1)) == [first]
