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
extends_documentation_fragment: [tenantnet.nsproxy.attributes]
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

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.common import (
    ModuleFailure,
    Rollback,
    run_module,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.netlink import (
    NetnsSet,
    require_pyroute2,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.routes import (
    DEFAULT_TABLE,
    RouteSpecError,
    action_text,
    apply_route_action,
    check_routes_against_namespace,
    guess_devices,
    normalize_route_specs,
    plan_routes,
    predict_routes,
    read_namespace,
    read_routes,
    route_key,
    route_text,
)

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


def _want(params):
    """Normalised routes from the user's input (fails naming the field)."""
    try:
        return normalize_route_specs(params["routes"], require_nexthop=params["state"] == "present")
    except RouteSpecError as exc:
        raise ModuleFailure(str(exc), field=exc.field) from None


def _managed_tables(want, purge):
    tables = {route["table"] for route in want}
    if not tables and purge:
        tables = {DEFAULT_TABLE}
    return tables


def _text(routes):
    return "".join(route_text(route) + "\n" for route in routes)


def run(module):
    params = module.params
    want = _want(params)
    if params["purge"] and params["state"] == "absent":
        raise ModuleFailure("purge: only allowed with state=present (it keeps the listed routes)")
    tables = _managed_tables(want, params["purge"])

    with NetnsSet() as namespaces:
        ns = namespaces.get(params["netns"], "netns")
        links, addresses = read_namespace(ns)
        have = ns.call("reading routes", read_routes, ns.ipr, links)
        if params["state"] == "present":
            try:
                check_routes_against_namespace(want, links.values(), addresses, have, ns.label)
            except RouteSpecError as exc:
                raise ModuleFailure(str(exc), field=exc.field) from None
        actions = plan_routes(want, have, params["state"], params["purge"])
        # Tables touched by absent deletions are shown too.
        tables |= {action["route"]["table"] for action in actions}
        before = [route for route in have if route["table"] in tables]

        if actions and not module.check_mode:
            ifindex = {name: index for index, name in links.items()}
            rollback = Rollback()
            try:
                for action in actions:
                    missing = route_key(action["route"]) not in {route_key(r) for r in have}
                    ns.call(
                        f"{action['op']} route {route_text(action['route'])}",
                        apply_route_action,
                        ns.ipr,
                        action,
                        ifindex,
                    )
                    if action["op"] == "replace" and missing:
                        undo = dict(action, op="delete")
                        rollback.push(
                            f"adding route {route_text(action['route'])}",
                            lambda undo=undo: ns.call(
                                "removing a route again", apply_route_action, ns.ipr, undo, ifindex
                            ),
                        )
            except ModuleFailure as failure:
                undone = len(rollback)
                leftovers = rollback.unwind()
                msg = failure.msg
                if undone and not leftovers:
                    msg += " The routes this call had added were removed again."
                elif leftovers:
                    msg += " Cleanup was incomplete: " + "; ".join(leftovers)
                raise ModuleFailure(msg, leftovers=leftovers) from None
            links, _addresses = read_namespace(ns)
            after = [
                route
                for route in ns.call("reading routes", read_routes, ns.ipr, links)
                if route["table"] in tables
            ]
        else:
            after = guess_devices(predict_routes(before, actions), addresses)

    result = dict(
        changed=bool(actions),
        actions=[
            {"op": a["op"], "route": route_text(a["route"]), "reason": a["reason"]} for a in actions
        ],
        routes=after,
        netns=params["netns"],
        msg="; ".join(action_text(a) for a in actions) or "routes already as requested",
    )
    if module._diff:
        label = params["netns"] or "host namespace"
        result["diff"] = dict(
            before=_text(before),
            after=_text(after),
            before_header=f"routes of {label} (before)",
            after_header=f"routes of {label} (after)",
        )
    return result


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    require_pyroute2(module)
    run_module(module, lambda: run(module))


if __name__ == "__main__":
    main()
