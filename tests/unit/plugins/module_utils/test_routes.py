"""Pure logic of netns_route: normalisation, identity, validation against a namespace, planning."""

from __future__ import annotations

import pytest

from ansible_collections.tenantnet.nsproxy.plugins.module_utils import routes as R


def want(*specs):
    return R.normalize_route_specs(list(specs))


def absent(*specs):
    return R.normalize_route_specs(list(specs), require_nexthop=False)


def kernel(
    dst,
    gateway=None,
    dev="eth0",
    metric=0,
    table=254,
    proto="static",
    scope=None,
    family="inet",
    src=None,
):
    """A kernel route as route_from_kernel returns it."""
    if scope is None:
        scope = "link" if gateway is None and family == "inet" else "global"
    return {
        "dst": dst,
        "family": family,
        "gateway": gateway,
        "dev": dev,
        "metric": metric,
        "table": table,
        "scope": scope,
        "src": src,
        "proto": proto,
        "onlink": False,
    }


# -- normalisation ------------------------------------------------------------------------------
def test_default_and_zero_prefix_normalise_to_default_with_family():
    assert R.normalize_route_spec({"dst": "0.0.0.0/0", "gateway": "10.0.0.1"})["dst"] == "default"
    six = R.normalize_route_spec({"dst": "::/0", "dev": "eth0"})
    assert (six["dst"], six["family"], six["metric"]) == ("default", "inet6", 1024)
    four = R.normalize_route_spec({"dst": "default", "gateway": "10.0.0.1"})
    assert (four["family"], four["metric"], four["table"]) == ("inet", 0, 254)


def test_host_address_becomes_full_prefix_and_case_is_normalised():
    assert R.normalize_route_spec({"dst": "192.0.2.7", "dev": "e"})["dst"] == "192.0.2.7/32"
    route = R.normalize_route_spec({"dst": "2001:DB8::/32", "gateway": "2001:DB8::0001"})
    assert (route["dst"], route["gateway"]) == ("2001:db8::/32", "2001:db8::1")


def test_ipv6_metric_zero_is_stored_as_1024_like_the_kernel():
    assert (
        R.normalize_route_spec({"dst": "2001:db8::/32", "dev": "e", "metric": 0})["metric"] == 1024
    )


def test_table_names_and_numbers():
    assert (
        R.normalize_route_spec({"dst": "10.0.0.0/8", "dev": "e", "table": "main"})["table"] == 254
    )
    assert R.normalize_route_spec({"dst": "10.0.0.0/8", "dev": "e", "table": "100"})["table"] == 100
    assert R.normalize_route_spec({"dst": "10.0.0.0/8", "dev": "e", "table": 7})["table"] == 7


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"dst": "10.0.0.5/8", "dev": "e"}, "routes[0].dst: '10.0.0.5/8' has host bits set"),
        ({"dst": "10.0.0.0/33", "dev": "e"}, "routes[0].dst: '10.0.0.0/33' is not a destination"),
        ({"dst": "10.0.0.0/8", "gateway": "10.0.0.1/24"}, "routes[0].gateway"),
        (
            {"dst": "10.0.0.0/8", "gateway": "2001:db8::1"},
            "routes[0].gateway: 2001:db8::1 is an inet6",
        ),
        ({"dst": "default", "dev": "eth0"}, "routes[0].family"),
        ({"dst": "10.0.0.0/8"}, "needs a gateway or a dev"),
        ({"dst": "10.0.0.0/8", "dev": "e", "metric": -1}, "routes[0].metric"),
        ({"dst": "10.0.0.0/8", "dev": "e", "metric": 2**32}, "routes[0].metric"),
        ({"dst": "10.0.0.0/8", "dev": "e", "table": "nosuch"}, "routes[0].table"),
        ({"dst": "10.0.0.0/8", "dev": "e", "table": 0}, "routes[0].table"),
        ({"dst": "10.0.0.0/8", "dev": "e", "scope": "planet"}, "routes[0].scope"),
        ({"dst": "2001:db8::/32", "dev": "e", "scope": "link"}, "IPv6 routes have no scope"),
        ({"dst": "10.0.0.0/8", "dev": "e", "proto": "nosuch"}, "routes[0].proto"),
        ({"dst": "10.0.0.0/8", "gateway": "10.0.0.1", "onlink": True}, "routes[0].onlink"),
        ({"dst": "10.0.0.0/8", "dev": "a-very-long-interface"}, "routes[0].dev"),
        ({"dst": "10.0.0.0/8", "dev": "e", "src": "2001:db8::1"}, "routes[0].src"),
        ({"dst": "10.0.0.0/8", "dev": "e", "bogus": 1}, "unknown key(s) bogus"),
    ],
)
def test_bad_route_names_the_field(spec, fragment):
    with pytest.raises(R.RouteSpecError) as err:
        R.normalize_route_specs([spec])
    assert fragment in str(err.value)


def test_two_routes_with_the_same_identity_are_refused():
    with pytest.raises(R.RouteSpecError, match=r"routes\[0\] and routes\[1\] are the same route"):
        want({"dst": "default", "gateway": "10.0.0.1"}, {"dst": "0.0.0.0/0", "gateway": "10.0.0.2"})


def test_same_destination_with_two_metrics_is_allowed():
    routes = want(
        {"dst": "default", "gateway": "10.0.0.1", "metric": 100},
        {"dst": "default", "gateway": "10.0.0.2", "metric": 200},
    )
    assert [r["metric"] for r in routes] == [100, 200]


# -- kernel routes --------------------------------------------------------------------------------
def test_route_from_kernel_names_device_protocol_and_scope():
    fields = {
        "family": 2,
        "dst_len": 8,
        "table": 254,
        "proto": 4,
        "scope": 0,
        "type": 1,
        "flags": 0,
        "dst": "10.0.0.0",
        "gateway": "192.0.2.1",
        "oif": 3,
        "priority": None,
        "prefsrc": None,
        "rta_table": 254,
    }
    route = R.route_from_kernel(fields, {3: "eth0"})
    assert route == kernel("10.0.0.0/8", gateway="192.0.2.1", dev="eth0")


def test_route_from_kernel_ignores_local_and_broadcast_routes():
    fields = {
        "family": 2,
        "dst_len": 32,
        "table": 255,
        "proto": 2,
        "scope": 254,
        "type": 2,
        "flags": 0,
        "dst": "10.0.0.2",
        "oif": 3,
    }
    assert R.route_from_kernel(fields, {3: "eth0"}) is None


def test_route_from_kernel_default_and_big_table_number():
    fields = {
        "family": 10,
        "dst_len": 0,
        "table": 252,
        "proto": 3,
        "scope": 0,
        "type": 1,
        "flags": 4,
        "gateway": "2001:db8::1",
        "oif": 3,
        "priority": 1024,
        "rta_table": 1000,
    }
    route = R.route_from_kernel(fields, {3: "eth0"})
    assert (route["dst"], route["table"], route["proto"], route["onlink"]) == (
        "default",
        1000,
        "boot",
        True,
    )


# -- validation against the namespace -------------------------------------------------------------
LINKS = ["lo", "eth0", "eth1"]
ADDRS = [("eth0", "192.0.2.10/24"), ("eth1", "198.51.100.10/24"), ("eth0", "2001:db8::10/64")]


def test_gateway_outside_every_connected_subnet_is_refused_naming_the_field():
    routes = want(
        {"dst": "10.0.0.0/8", "gateway": "192.0.2.1"}, {"dst": "default", "gateway": "203.0.113.1"}
    )
    with pytest.raises(R.RouteSpecError) as err:
        R.check_routes_against_namespace(routes, LINKS, ADDRS, [], "netns t1")
    message = str(err.value)
    assert message.startswith("routes[1].gateway: 203.0.113.1 is outside every connected subnet")
    assert "192.0.2.0/24 on eth0" in message


def test_gateway_must_be_on_dev_when_dev_is_given():
    routes = want({"dst": "10.0.0.0/8", "gateway": "192.0.2.1", "dev": "eth1"})
    with pytest.raises(R.RouteSpecError, match=r"routes\[0\].gateway: .* on eth1"):
        R.check_routes_against_namespace(routes, LINKS, ADDRS, [], "netns t1")


def test_gateway_reachable_through_a_device_route_of_the_same_call_or_the_kernel():
    routes = want(
        {"dst": "203.0.113.1/32", "dev": "eth0"}, {"dst": "default", "gateway": "203.0.113.1"}
    )
    R.check_routes_against_namespace(routes, LINKS, ADDRS, [], "netns t1")
    routes = want({"dst": "default", "gateway": "203.0.113.1"})
    on_link = [kernel("203.0.113.0/30", dev="eth1", proto="boot")]
    R.check_routes_against_namespace(routes, LINKS, ADDRS, on_link, "netns t1")


def test_onlink_route_skips_the_gateway_check_and_ipv6_gateway_is_checked():
    R.check_routes_against_namespace(
        want({"dst": "default", "gateway": "203.0.113.1", "dev": "eth0", "onlink": True}),
        LINKS,
        ADDRS,
        [],
        "netns t1",
    )
    R.check_routes_against_namespace(
        want({"dst": "::/0", "gateway": "2001:db8::1"}), LINKS, ADDRS, [], "netns t1"
    )
    with pytest.raises(R.RouteSpecError, match=r"routes\[0\].gateway: 2001:db9::1 is outside"):
        R.check_routes_against_namespace(
            want({"dst": "::/0", "gateway": "2001:db9::1"}), LINKS, ADDRS, [], "netns t1"
        )


def test_link_local_ipv6_gateway_needs_dev():
    with pytest.raises(R.RouteSpecError, match=r"routes\[0\].dev must say"):
        R.check_routes_against_namespace(
            want({"dst": "::/0", "gateway": "fe80::1"}), LINKS, ADDRS, [], "netns t1"
        )
    R.check_routes_against_namespace(
        want({"dst": "::/0", "gateway": "fe80::1", "dev": "eth0"}), LINKS, ADDRS, [], "netns t1"
    )


def test_missing_dev_and_foreign_src_are_refused():
    with pytest.raises(R.RouteSpecError, match=r"routes\[0\].dev: interface eth9 does not exist"):
        R.check_routes_against_namespace(
            want({"dst": "10.0.0.0/8", "dev": "eth9"}), LINKS, ADDRS, [], "netns t1"
        )
    with pytest.raises(R.RouteSpecError, match=r"routes\[0\].src: 192.0.2.99 is not an address"):
        R.check_routes_against_namespace(
            want({"dst": "10.0.0.0/8", "dev": "eth0", "src": "192.0.2.99"}),
            LINKS,
            ADDRS,
            [],
            "netns t1",
        )


# -- planning -------------------------------------------------------------------------------------
CONNECTED = kernel("192.0.2.0/24", dev="eth0", proto="kernel")


def ops(actions):
    return [
        (a["op"], a["route"]["dst"], a["route"]["gateway"], a["route"]["metric"]) for a in actions
    ]


def test_missing_routes_are_added_device_routes_first():
    actions = R.plan_routes(
        want(
            {"dst": "default", "gateway": "203.0.113.1"}, {"dst": "203.0.113.1/32", "dev": "eth0"}
        ),
        [CONNECTED],
    )
    assert ops(actions) == [
        ("replace", "203.0.113.1/32", None, 0),
        ("replace", "default", "203.0.113.1", 0),
    ]
    assert actions[0]["route"]["scope"] == "link" and actions[0]["route"]["proto"] == "static"


def test_second_plan_is_empty_when_kernel_matches():
    routes = want({"dst": "10.0.0.0/8", "gateway": "192.0.2.1"})
    have = [CONNECTED, kernel("10.0.0.0/8", gateway="192.0.2.1")]
    assert R.plan_routes(routes, have) == []
    assert R.plan_routes(routes, have, purge=True) == []


def test_unset_keys_are_not_compared_but_gateway_always_is():
    have = [CONNECTED, kernel("10.0.0.0/8", gateway="192.0.2.1", dev="eth0", proto="boot")]
    assert R.plan_routes(want({"dst": "10.0.0.0/8", "gateway": "192.0.2.1"}), have) == []
    actions = R.plan_routes(
        want({"dst": "10.0.0.0/8", "gateway": "192.0.2.1", "proto": "static"}), have
    )
    assert ops(actions) == [("replace", "10.0.0.0/8", "192.0.2.1", 0)]
    assert actions[0]["reason"] == "changed: proto"
    actions = R.plan_routes(want({"dst": "10.0.0.0/8", "dev": "eth0"}), have)
    assert actions[0]["reason"] == "changed: gateway"


def test_default_gateway_is_replaced_in_place():
    have = [CONNECTED, kernel("default", gateway="192.0.2.254")]
    actions = R.plan_routes(want({"dst": "default", "gateway": "192.0.2.1"}), have)
    assert ops(actions) == [("replace", "default", "192.0.2.1", 0)]
    after = R.predict_routes(have, actions)
    assert [r["gateway"] for r in after if r["dst"] == "default"] == ["192.0.2.1"]


def test_metric_change_deletes_the_old_route_after_adding_the_new_one():
    have = [CONNECTED, kernel("10.0.0.0/8", gateway="192.0.2.1", metric=0)]
    actions = R.plan_routes(want({"dst": "10.0.0.0/8", "gateway": "192.0.2.1", "metric": 50}), have)
    assert ops(actions) == [
        ("replace", "10.0.0.0/8", "192.0.2.1", 50),
        ("delete", "10.0.0.0/8", "192.0.2.1", 0),
    ]
    assert actions[1]["reason"] == "metric changed from 0 to 50"
    after = R.predict_routes(have, actions)
    assert [r["metric"] for r in after if r["dst"] == "10.0.0.0/8"] == [50]


def test_metric_change_keeps_other_listed_metrics_and_kernel_routes():
    have = [
        CONNECTED,
        kernel("default", gateway="192.0.2.1", metric=100),
        kernel("192.0.2.0/24", dev="eth1", metric=5, proto="kernel"),
    ]
    routes = want(
        {"dst": "default", "gateway": "192.0.2.1", "metric": 100},
        {"dst": "default", "gateway": "192.0.2.2", "metric": 200},
        {"dst": "192.0.2.0/24", "dev": "eth0", "metric": 7},
    )
    assert ops(R.plan_routes(routes, have)) == [
        ("replace", "192.0.2.0/24", None, 7),
        ("replace", "default", "192.0.2.2", 200),
    ]


def test_routes_through_different_gateways_coexist():
    routes = want(
        {"dst": "default", "gateway": "192.0.2.254"},
        {"dst": "10.0.0.0/8", "gateway": "192.0.2.1"},
        {"dst": "192.168.0.0/16", "gateway": "192.0.2.1"},
    )
    actions = R.plan_routes(routes, [CONNECTED])
    after = R.predict_routes([CONNECTED], actions)
    assert {(r["dst"], r["gateway"]) for r in after} == {
        ("192.0.2.0/24", None),
        ("default", "192.0.2.254"),
        ("10.0.0.0/8", "192.0.2.1"),
        ("192.168.0.0/16", "192.0.2.1"),
    }
    assert R.plan_routes(routes, after) == []


def test_purge_removes_unlisted_static_and_boot_routes_only_in_managed_tables():
    have = [
        CONNECTED,
        kernel("10.0.0.0/8", gateway="192.0.2.1"),
        kernel("172.16.0.0/12", gateway="192.0.2.1", proto="boot"),
        kernel("172.17.0.0/16", gateway="192.0.2.1", proto="dhcp"),
        kernel("2001:db8:1::/48", gateway="2001:db8::1", family="inet6", metric=1024),
        kernel("fe80::/64", dev="eth0", family="inet6", metric=256, proto="kernel"),
        kernel("10.0.0.0/8", gateway="192.0.2.1", table=100),
    ]
    routes = want({"dst": "10.0.0.0/8", "gateway": "192.0.2.1"})
    actions = R.plan_routes(routes, have, purge=True)
    assert sorted(ops(actions)) == [
        ("delete", "172.16.0.0/12", "192.0.2.1", 0),
        ("delete", "2001:db8:1::/48", "2001:db8::1", 1024),
    ]
    assert all(a["reason"] == "not listed (purge)" for a in actions)
    assert R.plan_routes(routes, have, purge=False) == []


def test_purge_with_an_empty_list_empties_the_main_table_of_static_routes():
    have = [CONNECTED, kernel("default", gateway="192.0.2.1")]
    assert ops(R.plan_routes([], have, purge=True)) == [("delete", "default", "192.0.2.1", 0)]


def test_purge_in_another_table_only_touches_that_table():
    have = [
        CONNECTED,
        kernel("default", gateway="192.0.2.1"),
        kernel("default", gateway="192.0.2.9", table=100),
    ]
    routes = want({"dst": "10.0.0.0/8", "gateway": "192.0.2.1", "table": 100})
    assert sorted(ops(R.plan_routes(routes, have, purge=True))) == [
        ("delete", "default", "192.0.2.9", 0),
        ("replace", "10.0.0.0/8", "192.0.2.1", 0),
    ]


def test_absent_deletes_matching_routes_any_metric_unless_given():
    have = [
        CONNECTED,
        kernel("default", gateway="192.0.2.1", metric=100),
        kernel("default", gateway="192.0.2.2", metric=200),
    ]
    assert len(R.plan_routes(absent({"dst": "default", "family": "inet"}), have, "absent")) == 2
    assert (
        ops(
            R.plan_routes(
                want({"dst": "default", "gateway": "192.0.2.1", "metric": 200}), have, "absent"
            )
        )
        == []
    )
    assert ops(
        R.plan_routes(absent({"dst": "default", "gateway": "192.0.2.2"}), have, "absent")
    ) == [("delete", "default", "192.0.2.2", 200)]
    assert (
        R.plan_routes(absent({"dst": "10.9.0.0/16", "gateway": "192.0.2.2"}), have, "absent") == []
    )


def test_route_text_reads_like_ip_route():
    route = R.requested_route(
        R.normalize_route_spec({"dst": "2001:db8::/32", "gateway": "2001:db8::1"})
    )
    assert (
        R.route_text(route)
        == "-6 2001:db8::/32 via 2001:db8::1 proto static metric 1024 table main"
    )


def test_route_request_keeps_identity_and_resolves_dev():
    route = R.requested_route(
        R.normalize_route_spec(
            {"dst": "default", "family": "inet6", "dev": "eth0", "table": 100, "metric": 5}
        )
    )
    assert R.route_request(route, {"eth0": 3}) == {
        "family": 10,
        "dst": "::/0",
        "table": 100,
        "priority": 5,
        "oif": 3,
    }


def test_check_mode_prediction_names_the_device_of_the_gateway_subnet():
    predicted = R.predict_routes(
        [], R.plan_routes(want({"dst": "default", "gateway": "192.0.2.1"}), [])
    )
    assert R.guess_devices(predicted, ADDRS)[0]["dev"] == "eth0"


def test_prediction_does_not_alter_the_planned_actions():
    actions = R.plan_routes(want({"dst": "default", "gateway": "192.0.2.1"}), [])
    R.guess_devices(R.predict_routes([], actions), ADDRS)
    assert actions[0]["route"]["dev"] is None


def test_errors_carry_their_field():
    with pytest.raises(R.RouteSpecError) as err:
        want({"dst": "default", "gateway": "10.0.0.1"}, {"dst": "default", "gateway": "10.0.0.2"})
    assert err.value.field == "routes[0]"
    with pytest.raises(R.RouteSpecError) as err:
        want({"dst": "10.0.0.1/8", "dev": "e"})
    assert err.value.field == "routes[0].dst"
    assert (
        str(err.value) == "routes[0].dst: '10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8?"
    )


def test_deleting_asks_for_any_scope_like_ip_route_del():
    calls = []

    class Recorder:
        def route(self, command, **request):
            calls.append((command, request))

    route = R.requested_route(R.normalize_route_spec({"dst": "10.9.0.0/16", "dev": "eth0"}))
    R.apply_route_action(Recorder(), {"op": "delete", "route": route}, {"eth0": 3})
    assert calls == [
        (
            "del",
            {
                "family": 2,
                "dst": "10.9.0.0/16",
                "table": 254,
                "priority": 0,
                "oif": 3,
                "proto": 4,
                "scope": 255,
            },
        )
    ]
