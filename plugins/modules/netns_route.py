#!/usr/bin/python
# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: netns_route
short_description: Manage the static routes of one network namespace
version_added: "0.1.0"
description:
  - Adds, replaces and removes IPv4 and IPv6 routes in a network namespace (a name under
    C(/run/netns), a path such as C(/proc/PID/ns/net), or the host namespace), through netlink
    with pyroute2. Nothing is shelled out to C(ip).
  - A route is identified the way the kernel identifies it, by address family, table,
    destination and metric. Two routes to the same destination with different metrics are two
    routes; a route whose metric changes is added with the new metric and the old one is
    deleted (unless the old metric is listed too), so no second route is left behind.
  - Routes through different gateways coexist (for example C(default) via one gateway and
    C(10.0.0.0/8) via another); listing C(default) with another gateway replaces the default
    gateway in place.
  - Every route is checked before anything changes. A gateway must lie inside a connected
    subnet of the namespace (an address prefix, a link route, or a device route listed in the
    same call), on I(dev) when I(dev) is given; otherwise the module fails naming the field.
  - Only the keys set in a route are compared, except I(gateway) (a route without a gateway is
    a device route). Values are normalised first (CIDR forms, C(0.0.0.0/0) = C(default), IPv6
    metric 0 = 1024), so a second run reports no change.
  - Changes are runtime only. The kernel forgets them with the namespace or at reboot.
  - If the kernel refuses a route half-way, the call puts back what it had already changed.
    Routes it added are deleted, routes it replaced or deleted are written back as they were.
author:
  - tenantnet developers (@tenantnet)
requirements:
  - pyroute2 >= 0.7.2 (Debian 12 python3-pyroute2, or 0.9.x from PyPI)
  - Linux, root (CAP_NET_ADMIN, CAP_SYS_ADMIN to enter a namespace)
options:
  netns:
    description:
      - The namespace whose routes are managed. A name under C(/run/netns), or an absolute path
        such as C(/proc/PID/ns/net) or C(/var/run/docker/netns/ID).
      - Omitted means the namespace the module runs in (the host's).
      - The namespace must exist; it is never created.
    type: str
  routes:
    description:
      - The routes. With I(state=present) each needs I(dst) and a I(gateway) or I(dev) (or
        both). With I(state=absent) a route only needs I(dst); every kernel route matching all
        keys given is deleted (any metric when I(metric) is omitted).
    type: list
    elements: dict
    default: []
    suboptions:
      dst:
        description:
          - Destination. C(default) (or C(0.0.0.0/0), C(::/0)), a network in CIDR form with no
            host bits set (C(10.0.0.0/8), C(2001:db8::/32)) or a host address (becomes /32 or
            /128).
        type: str
        required: true
      family:
        description:
          - Address family. Only needed for C(dst=default) without a I(gateway) or I(src);
            otherwise it follows the addresses given.
        type: str
        choices: [inet, inet6]
      gateway:
        description:
          - Next hop address (no prefix length), of the same family as I(dst). It must be inside
            a connected subnet, unless I(onlink=true).
          - Omitted means a device route (I(dev) is then required).
        type: str
      dev:
        description:
          - Outgoing interface name in the namespace. Required without I(gateway) and for an
            IPv6 link-local gateway. When omitted with a gateway, the kernel picks the
            interface of the gateway's subnet and I(dev) is not compared.
        type: str
      metric:
        description:
          - Route metric (priority), 0 to 4294967295. Part of the route's identity.
          - Omitted means the kernel's default, 0 for IPv4 and 1024 for IPv6 (IPv6 stores 0 as
            1024).
        type: int
      table:
        description:
          - Routing table, C(main), C(local), C(default) or a number 1 to 4294967295.
        type: raw
        default: main
      scope:
        description:
          - Route scope (IPv4 only; the kernel reports every IPv6 route as C(global)).
          - Omitted means C(link) for an IPv4 route without a gateway and C(global) otherwise,
            as C(ip route) does; an existing route's scope is then not compared.
        type: str
        choices: [global, site, link, host, nowhere]
      src:
        description:
          - Preferred source address for traffic using the route; must be an address of the
            namespace.
        type: str
      proto:
        description:
          - Routing protocol recorded with the route (a name from C(/etc/iproute2/rt_protos)
            such as C(static), C(boot), C(kernel), or a number 0-255).
          - New routes get C(static). An existing route's protocol is only compared when set.
        type: str
      onlink:
        description:
          - Treat the gateway as directly reachable on I(dev) even when no connected subnet
            contains it (needs I(gateway) and I(dev)). The connected-subnet check is skipped.
        type: bool
  state:
    description:
      - C(present) makes every listed route exist with the given attributes.
      - C(absent) deletes every kernel route matching a listed route.
    type: str
    choices: [present, absent]
    default: present
  purge:
    description:
      - With I(state=present), also delete the routes of the managed tables that are not
        listed. The managed tables are those the listed routes use (C(main) when the list is
        empty), both address families.
      - Only routes with protocol C(static) or C(boot) (written by this module or by an
        administrator with C(ip route)) are purged. Routes the kernel made for addresses and
        links (C(proto kernel)), and routes of DHCP clients, router advertisements and routing
        daemons are never purged, nor local, broadcast or multicast routes.
    type: bool
    default: false
notes:
  - Check mode computes the exact list of route changes (C(actions)) and reports the same
    C(changed) as a real run, without changing anything. With C(--diff) the routes of the
    managed tables are shown before and after, one C(ip route) style line each.
  - To keep two routes to one destination with different metrics (a backup route), list both in
    the same task; a route listed alone replaces the same destination's other static metrics.
  - Routes in a Docker container's namespace vanish when the container restarts; re-run the
    play (see the C(tenantnet.nsproxy.netns) module to re-attach the name).
seealso:
  - module: tenantnet.nsproxy.netns
  - module: tenantnet.nsproxy.veth
  - module: tenantnet.nsproxy.macvlan_vlan
extends_documentation_fragment: [tenantnet.nsproxy.attributes, tenantnet.nsproxy.attributes.netlink]
"""

EXAMPLES = r"""
- name: Tenant routes - default via the router, internal networks via the VPN gateway
  tenantnet.nsproxy.netns_route:
    netns: acme
    routes:
      - dst: default
        gateway: 10.0.0.254
      - dst: 10.0.0.0/8
        gateway: 10.0.0.1
      - dst: 192.168.0.0/16
        gateway: 10.0.0.1
    purge: true

- name: IPv6 default route and a backup with a higher metric
  tenantnet.nsproxy.netns_route:
    netns: acme
    routes:
      - dst: "::/0"
        gateway: 2001:db8::1
        metric: 100
      - dst: "::/0"
        gateway: 2001:db8::2
        metric: 200

- name: Gateway outside the tenant subnet, reached through an on-link host route
  tenantnet.nsproxy.netns_route:
    netns: /var/run/docker/netns/1a2b3c4d5e6f
    routes:
      - dst: 192.0.2.1/32
        dev: eth1
      - dst: default
        gateway: 192.0.2.1

- name: Policy routing table for a second uplink
  tenantnet.nsproxy.netns_route:
    netns: acme
    routes:
      - dst: default
        gateway: 10.0.0.1
        table: 100

- name: Remove every default route of the namespace, whatever its metric
  tenantnet.nsproxy.netns_route:
    netns: acme
    state: absent
    routes:
      - dst: default
        family: inet
"""

RETURN = r"""
routes:
  description:
    - The unicast routes of the managed tables after the call (predicted in check mode), both
      address families, including kernel (connected) routes.
  returned: always
  type: list
  elements: dict
  contains:
    dst:
      description: Destination in CIDR form, or C(default).
      type: str
      sample: 10.0.0.0/8
    family:
      description: C(inet) or C(inet6).
      type: str
      sample: inet
    gateway:
      description: Next hop, or null for a device route.
      type: str
      sample: 10.0.0.1
    dev:
      description: Outgoing interface name.
      type: str
      sample: eth0
    metric:
      description: Metric (priority).
      type: int
      sample: 0
    table:
      description: Table number (254 is main).
      type: int
      sample: 254
    scope:
      description: Scope name.
      type: str
      sample: global
    src:
      description: Preferred source address, or null.
      type: str
      sample: null
    proto:
      description: Protocol name (C(static), C(kernel), C(boot)...) or number.
      type: str
      sample: static
    onlink:
      description: Whether the onlink flag is set.
      type: bool
      sample: false
  sample:
    - {dst: default, family: inet, gateway: 10.0.0.254, dev: eth0, metric: 0, table: 254,
       scope: global, src: null, proto: static, onlink: false}
actions:
  description:
    - The route changes made (planned, in check mode), in order.
  returned: always
  type: list
  elements: dict
  contains:
    op:
      description: C(replace) (add or change) or C(delete).
      type: str
    route:
      description: The route, C(ip route) style.
      type: str
    reason:
      description: Why (C(missing), C(changed gateway), C(metric changed from 0 to 50), C(not
        listed (purge)), C(listed with state absent)).
      type: str
  sample:
    - {op: replace, route: "default via 10.0.0.1 proto static metric 0 table main",
       reason: "changed: gateway"}
netns:
  description: The namespace, as given (null for the host namespace).
  returned: always
  type: str
  sample: acme
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.errors import ModuleFailure
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.netlink import (
    namespace_routes,
    read_namespace,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.plan import DiffTracker, Plan
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.routes import (
    DEFAULT_TABLE,
    RouteSpecError,
    action_text,
    check_routes_against_namespace,
    guess_devices,
    normalize_route_specs,
    plan_route_changes,
    predict_routes,
    route_text,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.runner import run
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.validation import netns_path

ROUTE_OPTIONS = dict(
    dst=dict(type="str", required=True),
    family=dict(type="str", choices=["inet", "inet6"]),
    gateway=dict(type="str"),
    dev=dict(type="str"),
    metric=dict(type="int"),
    table=dict(type="raw", default="main"),
    scope=dict(type="str", choices=["global", "site", "link", "host", "nowhere"]),
    src=dict(type="str"),
    proto=dict(type="str"),
    onlink=dict(type="bool"),
)

ARGUMENT_SPEC = dict(
    netns=dict(type="str"),
    routes=dict(type="list", elements="dict", default=[], options=ROUTE_OPTIONS),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    purge=dict(type="bool", default=False),
)


def build_want(params):
    """Normalised routes from the user's input and the tables they manage (fails naming the
    field)."""
    netns_path(params["netns"], "netns")
    if params["purge"] and params["state"] == "absent":
        raise ModuleFailure("purge: only allowed with state=present (it keeps the listed routes)")
    try:
        routes = normalize_route_specs(
            params["routes"], require_nexthop=params["state"] == "present"
        )
    except RouteSpecError as exc:
        raise ModuleFailure(str(exc), field=exc.field) from None
    tables = {route["table"] for route in routes}
    if not tables and params["purge"]:
        tables = {DEFAULT_TABLE}
    return dict(
        netns=params["netns"] or None,
        routes=routes,
        state=params["state"],
        purge=params["purge"],
        tables=tables,
    )


def read_have(ctx, want):
    """The namespace's links, addresses and routes. Routes that cannot work there (a missing
    dev, a gateway outside every connected subnet) fail before anything is touched; in check
    mode an earlier task may add the interface or address, so they are a warning."""
    ns = ctx.netns(want["netns"])
    links, addresses = read_namespace(ns)
    routes = namespace_routes(ns, names=links)
    if want["state"] == "present":
        try:
            check_routes_against_namespace(
                want["routes"], links.values(), addresses, routes, ns.label
            )
        except RouteSpecError as exc:
            if not ctx.check_mode:
                raise ModuleFailure(str(exc), field=exc.field) from None
            ctx.warn(f"{exc}; check mode assumes an earlier task makes it reachable")
    return dict(routes=routes, addresses=addresses)


def build_plan(want, have):
    """want + have -> (plan, tracker): ``route_replace`` / ``route_delete`` actions."""
    plan = Plan()
    plan_route_changes(plan, want["netns"], want["routes"], have["routes"], want["state"],
                       want["purge"])  # fmt: skip
    return plan, DiffTracker()


def _text(routes):
    return "".join(route_text(route) + "\n" for route in routes)


def read_result(ctx, want, have, plan):
    """The routes of the managed tables after the call (predicted in check mode), the actions
    as ``ip route`` lines, and the diff as text."""
    # Tables touched by absent deletions are shown too.
    tables = want["tables"] | {action["route"]["table"] for action in plan}
    before = [route for route in have["routes"] if route["table"] in tables]
    if ctx.check_mode or not plan:
        after = guess_devices(predict_routes(before, plan), have["addresses"])
    else:
        after = namespace_routes(ctx.netns(want["netns"]), tables)
    actions = [{"op": a["op"][len("route_") :], "route": a["route"], "reason": a["reason"]}
               for a in plan]  # fmt: skip
    label = want["netns"] or "host namespace"
    return dict(
        actions=[dict(a, route=route_text(a["route"])) for a in actions],
        routes=after,
        netns=want["netns"],
        msg="; ".join(action_text(a) for a in actions) or "routes already as requested",
        diff=dict(
            before=_text(before),
            after=_text(after),
            before_header=f"routes of {label} (before)",
            after_header=f"routes of {label} (after)",
        ),
    )


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run(module, want=build_want, have=read_have, plan=build_plan, result=read_result)


if __name__ == "__main__":
    main()
