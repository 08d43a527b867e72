# Copyright (c) tenantnet.nsproxy contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Routes of one namespace: normalisation, identity, validation and planning.

The pure part (everything up to ``plan_routes``) works on plain dicts so that it can be unit
tested without a kernel. The netlink part at the bottom (``read_routes``, ``apply_route_action``)
takes an open pyroute2 ``IPRoute`` and only uses calls that exist in pyroute2 0.7 and 0.9.

A route's identity in the kernel is (family, table, destination, metric): ``replace`` with
another metric adds a second route instead of changing the first, so a metric change is planned
as "add the new route, then delete the old one".
"""

from __future__ import annotations

import ipaddress
import re

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.validation import IFNAMSIZ

AF_INET = 2
AF_INET6 = 10
FAMILIES = {"inet": AF_INET, "inet6": AF_INET6}
FAMILY_NAMES = {AF_INET: "inet", AF_INET6: "inet6"}

TABLE_NAMES = {"default": 253, "main": 254, "local": 255}
TABLE_BY_NUMBER = {v: k for k, v in TABLE_NAMES.items()}

# /etc/iproute2/rt_protos numbers (the kernel only stores the number).
PROTO_NAMES = {
    "unspec": 0,
    "redirect": 1,
    "kernel": 2,
    "boot": 3,
    "static": 4,
    "gated": 8,
    "ra": 9,
    "mrt": 10,
    "zebra": 11,
    "bird": 12,
    "dnrouted": 13,
    "xorp": 14,
    "ntk": 15,
    "dhcp": 16,
    "keepalived": 18,
    "babel": 42,
    "openr": 99,
    "bgp": 186,
    "isis": 187,
    "ospf": 188,
    "rip": 189,
    "eigrp": 192,
}
PROTO_BY_NUMBER = {v: k for k, v in PROTO_NAMES.items()}

SCOPE_NAMES = {"global": 0, "site": 200, "link": 253, "host": 254, "nowhere": 255}
SCOPE_BY_NUMBER = {v: k for k, v in SCOPE_NAMES.items()}

RTN_UNICAST = 1
RTNH_F_ONLINK = 4

# Only routes an administrator (or an earlier run of this module) wrote by hand are purged:
# ``boot`` is what ``ip route add`` uses, ``static`` is what this module uses. Routes of the
# kernel (connected/link routes), of router advertisements, DHCP clients and routing daemons
# are never touched.
PURGEABLE_PROTOS = ("boot", "static")

DEFAULT_PROTO = "static"
DEFAULT_TABLE = 254
# IPv6 stores metric 0 as 1024 (IP6_RT_PRIO_USER); IPv4 keeps 0.
DEFAULT_METRIC = {AF_INET: 0, AF_INET6: 1024}

MAX_U32 = 2**32 - 1
_IFNAME = re.compile(r"[^/:%\s\x00-\x1f\x7f]+")

ROUTE_KEYS = (
    "dst",
    "family",
    "gateway",
    "dev",
    "metric",
    "table",
    "scope",
    "src",
    "proto",
    "onlink",
)


class RouteSpecError(ValueError):
    """A route in the user's input is invalid; the message names the field."""

    @property
    def field(self):
        """The field the message starts with (``routes[2].gateway``, ``routes[1]``)."""
        match = re.match(r"(routes\[\d+\](\.\w+)?)", str(self))
        return match.group(1) if match else "routes"


# ---------------------------------------------------------------------------------------------
# normalisation of user input (want)
# ---------------------------------------------------------------------------------------------
def _field(index, key):
    return f"routes[{index}].{key}"


def _parse_address(value, field):
    try:
        return ipaddress.ip_address(str(value).strip())
    except ValueError:
        raise RouteSpecError(
            f"{field}: {value!r} is not an IPv4 or IPv6 address (write it without a prefix length)"
        ) from None


def parse_table(value, field="table"):
    """Table name (main, local, default) or number 1..4294967295 -> number."""
    if value is None:
        return DEFAULT_TABLE
    text = str(value).strip().lower()
    if text in TABLE_NAMES:
        return TABLE_NAMES[text]
    try:
        number = int(text)
    except ValueError:
        number = None
    if number is None or not 1 <= number <= MAX_U32:
        raise RouteSpecError(
            f"{field}: {value!r} is not a routing table; use main, local, default or a number "
            f"from 1 to {MAX_U32}"
        )
    return number


def parse_proto(value, field="proto"):
    """Protocol name (static, boot, kernel, dhcp...) or number 0..255 -> name or number string."""
    text = str(value).strip().lower()
    if text in PROTO_NAMES:
        return text
    try:
        number = int(text)
    except ValueError:
        number = None
    if number is None or not 0 <= number <= 255:
        raise RouteSpecError(
            "{}: {!r} is not a route protocol; use a name ({}) or a number from 0 to 255".format(
                field, value, ", ".join(sorted(PROTO_NAMES))
            )
        )
    return proto_name(number)


def proto_name(number):
    """Kernel protocol number -> name when iproute2 has one, else the number as a string."""
    return PROTO_BY_NUMBER.get(number, str(number))


def proto_number(name):
    """Inverse of ``proto_name``."""
    return PROTO_NAMES[name] if name in PROTO_NAMES else int(name)


def table_label(number):
    """Table number -> iproute2 name (main, local, default) or the number."""
    return TABLE_BY_NUMBER.get(number, str(number))


def _parse_dst(value, family, index):
    """``default``, ``0.0.0.0/0``, ``::/0``, a CIDR or a bare host -> (dst, family)."""
    field = _field(index, "dst")
    text = str(value).strip().lower()
    if text == "default":
        return "default", family
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise RouteSpecError(
                f"{field}: {value!r} is not a destination; use default, a CIDR such as "
                "10.0.0.0/8 or 2001:db8::/32, or a host address"
            ) from None
        raise RouteSpecError(
            f"{field}: {value!r} has host bits set; did you mean {loose}?"
        ) from None
    net_family = AF_INET if network.version == 4 else AF_INET6
    if family is not None and family != net_family:
        raise RouteSpecError(
            f"{field}: {value} is an {FAMILY_NAMES[net_family]} destination but "
            f"routes[{index}].family is {FAMILY_NAMES[family]}"
        )
    if network.prefixlen == 0:
        return "default", net_family
    return str(network), net_family


def normalize_route_spec(spec, index=0, require_nexthop=True):
    """One route of the user's input -> canonical dict (all ROUTE_KEYS; unset keys are None).

    Raises RouteSpecError naming ``routes[index].<field>`` on bad input. ``metric``, ``table``
    and ``family`` are always filled in (the kernel's defaults) because they are identity.
    ``require_nexthop=False`` (state=absent) allows a route without gateway and dev.
    """
    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(ROUTE_KEYS))
    if unknown:
        raise RouteSpecError(
            f"routes[{index}]: unknown key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(ROUTE_KEYS)}"
        )
    if spec.get("dst") in (None, ""):
        raise RouteSpecError(
            "{} is required: default, a CIDR such as 10.0.0.0/8, or a host address".format(
                _field(index, "dst")
            )
        )

    family = None
    if spec.get("family") is not None:
        if spec["family"] not in FAMILIES:
            raise RouteSpecError(
                "{}: {!r} is not allowed; use inet or inet6".format(
                    _field(index, "family"), spec["family"]
                )
            )
        family = FAMILIES[spec["family"]]
    dst, family = _parse_dst(spec["dst"], family, index)

    gateway = None
    if spec.get("gateway") not in (None, ""):
        gw = _parse_address(spec["gateway"], _field(index, "gateway"))
        gw_family = AF_INET if gw.version == 4 else AF_INET6
        if family is not None and gw_family != family:
            raise RouteSpecError(
                "{}: {} is an {} address but the destination {} is {}".format(
                    _field(index, "gateway"),
                    gw,
                    FAMILY_NAMES[gw_family],
                    spec["dst"],
                    FAMILY_NAMES[family],
                )
            )
        family = gw_family
        gateway = str(gw)

    src = None
    if spec.get("src") not in (None, ""):
        address = _parse_address(spec["src"], _field(index, "src"))
        src_family = AF_INET if address.version == 4 else AF_INET6
        if family is not None and src_family != family:
            raise RouteSpecError(
                "{}: {} is an {} address but the route is {}".format(
                    _field(index, "src"), address, FAMILY_NAMES[src_family], FAMILY_NAMES[family]
                )
            )
        family = src_family
        src = str(address)

    if family is None:
        raise RouteSpecError(
            "{}: dst is default without a gateway or src, so the address family is unknown; "
            "set {} to inet or inet6, or write 0.0.0.0/0 or ::/0".format(
                _field(index, "family"), _field(index, "family")
            )
        )

    dev = spec.get("dev")
    if dev in ("",):
        dev = None
    if dev is not None:
        dev = str(dev)
        too_long = len(dev.encode("utf-8", "surrogatepass")) > IFNAMSIZ
        if too_long or not _IFNAME.fullmatch(dev) or dev in (".", ".."):
            raise RouteSpecError(
                f"{_field(index, 'dev')}: {dev!r} is not an interface name "
                f"(1 to {IFNAMSIZ} bytes, no '/', ':', '%', whitespace or control characters)"
            )
    if gateway is None and dev is None and require_nexthop:
        raise RouteSpecError(
            f"routes[{index}] (dst {spec['dst']}) needs a gateway or a dev (or both)"
        )

    metric = spec.get("metric")
    if metric is None:
        metric = DEFAULT_METRIC[family]
    else:
        try:
            metric = int(metric)
        except (TypeError, ValueError):
            metric = -1
        if not 0 <= metric <= MAX_U32:
            raise RouteSpecError(
                f"{_field(index, 'metric')}: {spec.get('metric')!r} is not allowed; "
                f"use a number from 0 to {MAX_U32}"
            )
        if family == AF_INET6 and metric == 0:
            metric = DEFAULT_METRIC[AF_INET6]

    table = parse_table(spec.get("table"), _field(index, "table"))

    scope = spec.get("scope")
    if scope is not None:
        scope = str(scope).lower()
        if scope == "universe":
            scope = "global"
        if scope not in SCOPE_NAMES:
            raise RouteSpecError(
                "{}: {!r} is not allowed; use one of {}".format(
                    _field(index, "scope"), spec["scope"], ", ".join(SCOPE_NAMES)
                )
            )
        if family == AF_INET6 and scope != "global":
            raise RouteSpecError(
                "{}: IPv6 routes have no scope (the kernel always reports global); "
                "leave it unset".format(_field(index, "scope"))
            )
        if gateway is not None and scope in ("host", "nowhere"):
            raise RouteSpecError(
                "{}: a route with a gateway cannot have scope {}; use global, site or link".format(
                    _field(index, "scope"), scope
                )
            )

    proto = None
    if spec.get("proto") not in (None, ""):
        proto = parse_proto(spec["proto"], _field(index, "proto"))

    onlink = spec.get("onlink")
    if onlink is not None:
        onlink = bool(onlink)
        if onlink and (gateway is None or dev is None):
            raise RouteSpecError(
                "{}: onlink needs both gateway and dev (the gateway is then assumed to be "
                "directly reachable on dev)".format(_field(index, "onlink"))
            )

    return {
        # metric_given is not part of the route: state=absent uses it to match any metric.
        "metric_given": spec.get("metric") is not None,
        "dst": dst,
        "family": FAMILY_NAMES[family],
        "gateway": gateway,
        "dev": dev,
        "metric": metric,
        "table": table,
        "scope": scope,
        "src": src,
        "proto": proto,
        "onlink": onlink,
    }


def normalize_route_specs(specs, require_nexthop=True):
    """The whole ``routes`` list -> canonical dicts; duplicate identities are an error."""
    routes = []
    seen = {}
    for index, spec in enumerate(specs or []):
        if not isinstance(spec, dict):
            raise RouteSpecError(
                f"routes[{index}]: {spec!r} is not a route; give a dict with at least dst"
            )
        route = normalize_route_spec(spec, index, require_nexthop)
        key = route_key(route)
        if key in seen:
            raise RouteSpecError(
                f"routes[{seen[key]}] and routes[{index}] are the same route "
                f"({describe_key(key)}); the kernel keeps one route per family, table, dst and "
                "metric, so give them different metrics or merge them"
            )
        seen[key] = index
        routes.append(route)
    return routes


# ---------------------------------------------------------------------------------------------
# kernel routes (have)
# ---------------------------------------------------------------------------------------------
def route_from_kernel(fields, ifname_by_index):
    """Flat kernel route fields -> canonical dict, or None for routes this module ignores.

    ``fields`` holds the rtmsg header (family, dst_len, table, proto, scope, type, flags) and
    the attributes dst, gateway, oif, priority, prefsrc, rta_table (None when absent).
    Non-unicast routes (local, broadcast, multicast, blackhole...) are ignored.
    """
    family = fields.get("family")
    if family not in FAMILY_NAMES or fields.get("type") != RTN_UNICAST:
        return None
    dst_len = fields.get("dst_len") or 0
    if dst_len == 0:
        dst = "default"
    else:
        base = fields.get("dst") or ("0.0.0.0" if family == AF_INET else "::")
        dst = str(ipaddress.ip_network(f"{base}/{dst_len}", strict=False))
    table = fields.get("rta_table") or fields.get("table") or DEFAULT_TABLE
    metric = fields.get("priority")
    if metric is None:
        metric = 0
    oif = fields.get("oif")
    gateway = fields.get("gateway")
    prefsrc = fields.get("prefsrc")
    return {
        "dst": dst,
        "family": FAMILY_NAMES[family],
        "gateway": str(ipaddress.ip_address(gateway)) if gateway else None,
        "dev": ifname_by_index.get(oif, str(oif)) if oif else None,
        "metric": int(metric),
        "table": int(table),
        "scope": SCOPE_BY_NUMBER.get(fields.get("scope") or 0, str(fields.get("scope"))),
        "src": str(ipaddress.ip_address(prefsrc)) if prefsrc else None,
        "proto": proto_name(fields.get("proto") or 0),
        "onlink": bool((fields.get("flags") or 0) & RTNH_F_ONLINK),
    }


# ---------------------------------------------------------------------------------------------
# identity, comparison, text
# ---------------------------------------------------------------------------------------------
def route_key(route):
    """The kernel's identity of a route: (family, table, dst, metric)."""
    return (route["family"], route["table"], route["dst"], route["metric"])


def describe_key(key):
    family, table, dst, metric = key
    return f"{family} {dst} metric {metric} table {table_label(table)}"


def route_text(route):
    """One line in ``ip route`` style, used for diffs and actions."""
    parts = [route["dst"]]
    if route.get("gateway"):
        parts += ["via", route["gateway"]]
    if route.get("dev"):
        parts += ["dev", route["dev"]]
    if route.get("proto"):
        parts += ["proto", route["proto"]]
    if route.get("scope") and route["scope"] != "global":
        parts += ["scope", route["scope"]]
    if route.get("src"):
        parts += ["src", route["src"]]
    parts += ["metric", str(route["metric"])]
    if route.get("onlink"):
        parts.append("onlink")
    parts += ["table", table_label(route["table"])]
    if route["family"] == "inet6":
        parts.insert(0, "-6")
    return " ".join(parts)


def route_differences(want, have):
    """Keys the user set whose value differs from the kernel's route (same identity)."""
    diffs = []
    # gateway is always compared: "no gateway" is a statement about the route too.
    if want["gateway"] != have["gateway"]:
        diffs.append("gateway")
    for key in ("dev", "scope", "src", "proto"):
        if want[key] is not None and want[key] != have[key]:
            diffs.append(key)
    if want["onlink"] is not None and want["onlink"] != have["onlink"]:
        diffs.append("onlink")
    return diffs


def route_matches_filter(want, have):
    """For state=absent: does kernel route ``have`` match every key the user set in ``want``?

    dst, family and table always count; the metric only when the user gave one.
    """
    if (want["family"], want["table"], want["dst"]) != (have["family"], have["table"], have["dst"]):
        return False
    if want.get("metric_given", True) and want["metric"] != have["metric"]:
        return False
    for key in ("gateway", "dev", "scope", "src", "proto"):
        if want[key] is not None and want[key] != have[key]:
            return False
    return True


def requested_route(want):
    """The route ``replace`` will write: the user's keys plus this module's defaults."""
    route = {key: want.get(key) for key in ROUTE_KEYS}
    if route["proto"] is None:
        route["proto"] = DEFAULT_PROTO
    if route["scope"] is None:
        # What iproute2 does too: a route without a gateway on IPv4 is a link route.
        route["scope"] = (
            "link" if route["gateway"] is None and route["family"] == "inet" else ("global")
        )
    if route["onlink"] is None:
        route["onlink"] = False
    return route


def predicted_route(want, have=None):
    """What the kernel will report after the replace (check mode and the diff's after side).

    The kernel picks dev and src itself when they are not given; keep the current ones when
    the gateway stays, otherwise they are unknown until the route exists.
    """
    route = requested_route(want)
    if have is not None and have["gateway"] == route["gateway"]:
        for key in ("dev", "src"):
            if route[key] is None:
                route[key] = have[key]
    return route


# ---------------------------------------------------------------------------------------------
# validation against the namespace (before anything changes)
# ---------------------------------------------------------------------------------------------
def check_routes_against_namespace(routes, links, addresses, kernel_routes, netns_label):
    """Fail (RouteSpecError naming the field) when a route cannot work in this namespace.

    ``links``: interface names present. ``addresses``: list of (ifname, "addr/prefix").
    ``kernel_routes``: canonical routes read from the namespace. Checks that every ``dev``
    exists, every ``src`` is a local address, and every gateway lies inside a connected subnet
    (an address prefix, a link-scope route, or a device route given in the same call),
    on ``dev`` when dev is set. ``onlink`` routes skip the gateway check.
    """
    links = set(links)
    connected = []  # (ifname or None, network)
    for ifname, cidr in addresses:
        connected.append((ifname, ipaddress.ip_interface(cidr).network))
    for route in kernel_routes:
        if route["scope"] == "link" and route["gateway"] is None and route["dst"] != "default":
            connected.append((route["dev"], ipaddress.ip_network(route["dst"])))
    for route in routes:
        if route["gateway"] is None and route["dst"] != "default":
            connected.append((route["dev"], ipaddress.ip_network(route["dst"])))
    local = {str(ipaddress.ip_interface(cidr).ip) for _ifname, cidr in addresses}

    for index, route in enumerate(routes):
        if route["dev"] is not None and route["dev"] not in links:
            raise RouteSpecError(
                "{}: interface {} does not exist in {} (interfaces there: {})".format(
                    _field(index, "dev"), route["dev"], netns_label, ", ".join(sorted(links))
                )
            )
        if route["src"] is not None and route["src"] not in local:
            raise RouteSpecError(
                "{}: {} is not an address of {}; a preferred source must be a local address".format(
                    _field(index, "src"), route["src"], netns_label
                )
            )
        if route["gateway"] is None or route["onlink"]:
            continue
        gateway = ipaddress.ip_address(route["gateway"])
        if gateway.version == 6 and gateway.is_link_local:
            if route["dev"] is None:
                raise RouteSpecError(
                    f"{_field(index, 'gateway')}: {gateway} is a link-local address, so "
                    f"routes[{index}].dev must say which interface it is on"
                )
            continue
        reachable = [
            (ifname, net)
            for ifname, net in connected
            if net.version == gateway.version
            and gateway in net
            and (route["dev"] is None or ifname == route["dev"])
        ]
        if not reachable:
            subnets = sorted(
                {f"{net} on {ifname}" for ifname, net in connected if ifname} or {"none"}
            )
            where = " on {}".format(route["dev"]) if route["dev"] else ""
            raise RouteSpecError(
                "{}: {} is outside every connected subnet{} of {} (connected: {}); add an "
                "address in the gateway's subnet first, or set onlink: true with dev".format(
                    _field(index, "gateway"), gateway, where, netns_label, ", ".join(subnets)
                )
            )


# ---------------------------------------------------------------------------------------------
# planning
# ---------------------------------------------------------------------------------------------
def purgeable(route):
    """May ``purge`` (or a metric change) delete this kernel route?"""
    return route["proto"] in PURGEABLE_PROTOS


def plan_routes(want, have, state="present", purge=False):
    """Compute the actions turning ``have`` (kernel) into ``want`` (user).

    Returns a list of actions ``{"op": "replace"|"delete", "route": canonical, "reason": str}``
    in the order they must run: device routes before gateway routes when adding (a gateway may
    need them), then deletions (new default route first, old one after: no gap).
    """
    have_by_key = {route_key(r): r for r in have}
    want_keys = {route_key(r) for r in want}
    adds = []
    deletes = []
    deleted = set()

    def delete(route, reason):
        key = route_key(route)
        if key not in deleted:
            deleted.add(key)
            deletes.append({"op": "delete", "route": route, "reason": reason})

    if state == "absent":
        for route in want:
            for current in have:
                if route_matches_filter(route, current):
                    delete(current, "listed with state absent")
        return deletes

    for route in want:
        key = route_key(route)
        current = have_by_key.get(key)
        if current is None:
            adds.append({"op": "replace", "route": requested_route(route), "reason": "missing"})
            # Same destination under another metric: this is a metric change, not a second
            # route, unless that other metric is listed too.
            for other in have:
                if (
                    (other["family"], other["table"], other["dst"])
                    == (route["family"], route["table"], route["dst"])
                    and route_key(other) not in want_keys
                    and purgeable(other)
                ):
                    delete(other, f"metric changed from {other['metric']} to {route['metric']}")
            continue
        diffs = route_differences(route, current)
        if diffs:
            adds.append(
                {
                    "op": "replace",
                    "route": requested_route(route),
                    "predicted": predicted_route(route, current),
                    "reason": "changed: {}".format(", ".join(diffs)),
                }
            )

    if purge:
        tables = {r["table"] for r in want} or {DEFAULT_TABLE}
        for current in have:
            if (
                current["table"] in tables
                and route_key(current) not in want_keys
                and purgeable(current)
            ):
                delete(current, "not listed (purge)")

    adds.sort(key=lambda a: a["route"]["gateway"] is not None)
    deletes.sort(key=lambda a: a["route"]["gateway"] is None)
    return adds + deletes


def plan_route_changes(plan, netns, want, have, state="present", purge=False):
    """Append the actions of ``plan_routes(want, have, state, purge)`` to ``plan`` as
    ``route_replace`` / ``route_delete`` on the routes of ``netns`` (each with the canonical
    ``route``, its ``text`` and the ``reason``; ``new`` marks a route that did not exist, so a
    failure later removes it again, and ``previous`` is the kernel's route a ``replace``
    overwrites, so a failure later puts it back). Returns the ``plan_routes`` actions."""
    have_by_key = {route_key(route): route for route in have}
    have_keys = set(have_by_key)
    actions = plan_routes(want, have, state, purge)
    for action in actions:
        entry = plan.add(
            "route_" + action["op"],
            netns=netns,
            route=action["route"],
            text=route_text(action["route"]),
            reason=action["reason"],
        )
        if "predicted" in action:
            entry["predicted"] = action["predicted"]
        if action["op"] == "replace" and route_key(action["route"]) not in have_keys:
            entry["new"] = True
        elif action["op"] == "replace":
            entry["previous"] = have_by_key[route_key(action["route"])]
    return actions


def routes_surviving(have, deleted_devs=(), removed_addresses=()):
    """The routes of ``have`` the kernel still has after the links named in ``deleted_devs``
    are deleted and the CIDR ``removed_addresses`` removed: it drops the routes through a
    deleted device and the gateway routes whose gateway was only reachable through a removed
    address's subnet. A plan made before those changes uses this as the routes it will find."""
    gone = [ipaddress.ip_interface(cidr).network for cidr in removed_addresses]
    kept = []
    for route in have:
        if route["dev"] is not None and route["dev"] in deleted_devs:
            continue
        gateway = ipaddress.ip_address(route["gateway"]) if route["gateway"] else None
        if gateway is not None and any(
            net.version == gateway.version and gateway in net for net in gone
        ):
            continue
        kept.append(route)
    return kept


def predict_routes(have, actions):
    """Kernel routes after ``actions`` (used for check mode and for the diff's after side);
    ``actions`` as ``plan_routes`` makes them, or their ``route_*`` plan entries."""
    result = {route_key(r): r for r in have}
    for action in actions:
        key = route_key(action["route"])
        if action["op"] in ("delete", "route_delete"):
            result.pop(key, None)
        else:
            result[key] = action.get("predicted", action["route"])
    return sorted((dict(route) for route in result.values()), key=route_sort_key)


def guess_devices(routes, addresses):
    """Fill in ``dev`` of predicted gateway routes the way the kernel will: the interface whose
    address prefix holds the gateway (check mode only; a real run reads the kernel)."""
    nets = [(name, ipaddress.ip_interface(cidr).network) for name, cidr in addresses]
    for route in routes:
        if route.get("dev") is None and route.get("gateway"):
            gateway = ipaddress.ip_address(route["gateway"])
            for name, net in nets:
                if net.version == gateway.version and gateway in net:
                    route["dev"] = name
                    break
    return routes


def route_sort_key(route):
    return (
        route["table"],
        route["family"],
        route["dst"] != "default",
        route["dst"],
        route["metric"],
    )


def action_text(action):
    verb = "delete" if action["op"] == "delete" else "replace"
    return "{} {} ({})".format(verb, route_text(action["route"]), action["reason"])


# ---------------------------------------------------------------------------------------------
# netlink (pyroute2 0.7 and 0.9)
# ---------------------------------------------------------------------------------------------
def _message_fields(msg):
    return {
        "family": msg["family"],
        "dst_len": msg["dst_len"],
        "table": msg["table"],
        "proto": msg["proto"],
        "scope": msg["scope"],
        "type": msg["type"],
        "flags": msg["flags"],
        "dst": msg.get_attr("RTA_DST"),
        "gateway": msg.get_attr("RTA_GATEWAY"),
        "oif": msg.get_attr("RTA_OIF"),
        "priority": msg.get_attr("RTA_PRIORITY"),
        "prefsrc": msg.get_attr("RTA_PREFSRC"),
        "rta_table": msg.get_attr("RTA_TABLE"),
    }


def read_routes(ipr, ifname_by_index, tables=None):
    """Canonical unicast routes of both families (optionally only the given tables)."""
    routes = []
    for family in (AF_INET, AF_INET6):
        for msg in ipr.get_routes(family=family):
            route = route_from_kernel(_message_fields(msg), ifname_by_index)
            if route is None or (tables is not None and route["table"] not in tables):
                continue
            routes.append(route)
    return sorted(routes, key=route_sort_key)


def route_request(route, ifindex_by_name):
    """Canonical route -> keyword arguments for ``IPRoute.route('replace'|'del', ...)``."""
    family = FAMILIES[route["family"]]
    request = {
        "family": family,
        "dst": "0.0.0.0/0" if route["dst"] == "default" and family == AF_INET else route["dst"],
        "table": route["table"],
        "priority": route["metric"],
    }
    if route["dst"] == "default" and family == AF_INET6:
        request["dst"] = "::/0"
    if route.get("gateway"):
        request["gateway"] = route["gateway"]
    if route.get("dev"):
        request["oif"] = ifindex_by_name[route["dev"]]
    return request


def apply_route_action(ipr, action, ifindex_by_name):
    """Run one planned action. NetlinkError propagates to the caller (it makes the sentence)."""
    route = action["route"]
    request = route_request(route, ifindex_by_name)
    if action["op"] == "delete":
        # The kernel matches a deletion on the identity (plus what we pass); pass the protocol
        # too, so that a route rewritten meanwhile by someone else is not removed by accident.
        request["proto"] = proto_number(route["proto"])
        # Scope "nowhere" in a deletion means "any scope" (what `ip route del` sends); pyroute2
        # would otherwise send "global" and a link route would not match (ESRCH).
        request["scope"] = SCOPE_NAMES["nowhere"]
        ipr.route("del", **request)
        return
    request["proto"] = proto_number(route.get("proto") or DEFAULT_PROTO)
    if route.get("scope"):
        request["scope"] = SCOPE_NAMES[route["scope"]]
    if route.get("src"):
        request["prefsrc"] = route["src"]
    if route.get("onlink"):
        request["flags"] = RTNH_F_ONLINK
    ipr.route("replace", **request)
