#!/usr/bin/env python3
"""Draw what playbooks/site.yml builds from an inventory: the host with its trunk NIC, the
802.1Q subinterfaces and macvlans of VLAN tenants, the bridges and veths of bridge tenants,
every tenant namespace with its interface, addresses and routes, and nsproxy: a binder that
makes a listening socket inside each tenant namespace, workers that serve them, and the
upstreams they forward to.

Reads the inventory's group_vars of docker_hosts (tenant_network_tenants,
docker_host_trunk_interfaces, site_nsproxy_instance), writes Graphviz DOT and renders it with
``dot`` (Debian package graphviz)::

    tools/topology.py [--inventory inventories/example] [--output docs/topology.svg]
    tools/topology.py --check    # fail if docs/topology.svg is not what the inventory draws

The DOT text is written here directly: the ``graphviz`` Python package would only build the
same strings, and quoting (``quote``) is all it would add.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def quote(text: str) -> str:
    """A DOT string literal. Line breaks become DOT's centred line break; DOT's own escapes
    (``\\l``: end of a left-aligned line) pass through."""
    return '"' + str(text).replace('"', '\\"').replace("\n", "\\n") + '"'


def attributes(attrs: dict) -> str:
    return ", ".join(f"{key}={quote(value)}" for key, value in attrs.items())


def statements(attrs: dict) -> str:
    """Attributes of a subgraph: one statement each."""
    return " ".join(f"{key}={quote(value)};" for key, value in attrs.items())


def node(name: str, label: str, **attrs) -> str:
    return f"{quote(name)} [{attributes(dict(label=label, **attrs))}];"


def edge(tail: str, head: str, **attrs) -> str:
    return f"{quote(tail)} -> {quote(head)} [{attributes(attrs)}];"


def load_vars(inventory: Path) -> dict:
    """The merged group_vars of docker_hosts (a directory of YAML files, or one file)."""
    merged: dict = {}
    base = inventory / "group_vars" / "docker_hosts"
    files = sorted(base.glob("*.yml")) if base.is_dir() else [base.with_suffix(".yml")]
    for path in files:
        if path.exists():
            merged.update(yaml.safe_load(path.read_text()) or {})
    return merged


def upstreams(tenant: dict) -> dict:
    return (tenant.get("proxy") or {}).get("upstreams") or {}


def host_objects(tenants: list[dict], trunks: list[str], instance: str) -> list[str]:
    """Nodes and edges of the host namespace: Docker, nsproxy, shared upstreams, trunk NICs,
    802.1Q subinterfaces, bridges and the host ends of veths."""
    lines = [
        node("docker", "Docker Engine\n(docker_host role)", shape="component"),
        node(
            "nsproxy",
            f"nsproxy, instance {instance}\nbinder (privileged) and workers (no capability),"
            "\none socket per tenant listener and worker",
            shape="box3d",
            style="filled",
            fillcolor="lightyellow",
        ),  # fmt: skip
    ]
    shared = {}
    for tenant in tenants:
        for name, upstream in upstreams(tenant).items():
            if upstream.get("netns") is None:
                shared[name] = ", ".join(upstream.get("servers", []))
    for name, servers in sorted(shared.items()):
        lines.append(node(f"up-{name}", f"upstream {name}\n{servers}", shape="cylinder"))
    for trunk in trunks:
        lines.append(node(trunk, f"{trunk}\ntrunk NIC (802.1Q)", style="filled",
                          fillcolor="lightgray"))  # fmt: skip
    bridges = set()
    for tenant in tenants:
        att = tenant["attachment"]
        if att["type"] == "vlan":
            sub = f"{att['parent']}.{att['vlan_id']}"
            lines.append(node(sub, f"{sub}\nVLAN {att['vlan_id']}"))
            lines.append(edge(att["parent"], sub, label="802.1Q"))
        elif att["type"] == "bridge":
            if att["bridge"] not in bridges:
                bridges.add(att["bridge"])
                lines.append(node(att["bridge"], f"{att['bridge']}\nbridge", shape="octagon"))
            end = att.get("host_interface") or f"tn-{tenant['name']}"
            lines.append(node(end, f"{end}\nveth (host end)"))
            lines.append(edge(end, att["bridge"], arrowhead="none", label="port"))
    return lines


def tenant_objects(tenant: dict) -> tuple[list[str], list[str]]:
    """Nodes inside the tenant's namespace, and the edges that leave it."""
    name, att = tenant["name"], tenant["attachment"]
    iface = tenant.get("interface", "eth0")
    kind = {"vlan": "macvlan", "bridge": "veth", "container": "container interface"}[att["type"]]
    routes = "".join(
        f"{r['dst']} via {r.get('gateway') or r.get('dev')}\\l" for r in tenant.get("routes", [])
    )
    sockets = "\n".join(
        f"{li['listen']} {li.get('protocol', 'http')}"
        for li in (tenant.get("proxy") or {}).get("listeners", [])
    )
    inside = [
        node(f"{name}-{iface}", f"{iface} ({kind})\n" + ", ".join(tenant.get("addresses", []))),
        node(f"{name}-routes", "static routes\\l" + routes, shape="note"),
        node(
            f"{name}-sockets",
            f"listening sockets\n{sockets}",
            style="filled",
            fillcolor="lightyellow",
        ),  # fmt: skip
    ]
    leaving = [
        edge(
            "nsproxy",
            f"{name}-sockets",
            style="dashed",
            label="made inside by the binder\n(setns), used by the workers",
        ),
        edge("docker", f"{name}-routes", style="invis"),  # the tenants below the host
    ]
    if att["type"] == "vlan":
        leaving.append(edge(f"{att['parent']}.{att['vlan_id']}", f"{name}-{iface}",
                            label="macvlan"))  # fmt: skip
    elif att["type"] == "bridge":
        end = att.get("host_interface") or f"tn-{name}"
        leaving.append(edge(end, f"{name}-{iface}", dir="both", label="veth pair"))
    for upstream_name, upstream in upstreams(tenant).items():
        target = f"up-{upstream_name}"
        if upstream.get("netns") is not None:
            target = f"{name}-up-{upstream_name}"
            servers = ", ".join(upstream.get("servers", []))
            inside.append(node(target, f"upstream {upstream_name}\n{servers}", shape="cylinder"))
        leaving.append(edge(f"{name}-sockets", target, color="gray50"))
    return inside, leaving


def dot_source(variables: dict, title: str) -> str:
    """The DOT graph of the host that site.yml builds from ``variables``."""
    tenants = [
        t
        for t in variables.get("tenant_network_tenants", [])
        if t.get("state", "present") != "absent"
    ]
    instance = (variables.get("site_nsproxy_instance") or {}).get("name", "main")
    lines = [
        "digraph topology {",
        f"graph [{attributes(dict(rankdir='TB', newrank='true', fontname='Helvetica', fontsize='12', label=title, labelloc='t', nodesep='0.25', ranksep='0.7'))}];",  # noqa: E501
        f"node [{attributes(dict(fontname='Helvetica', fontsize='10', shape='box', style='rounded'))}];",  # noqa: E501
        f"edge [{attributes(dict(fontname='Helvetica', fontsize='9'))}];",
        'subgraph "cluster_host" {',
        statements(dict(label="host namespace", style="rounded", color="gray40")),
        *host_objects(tenants, variables.get("docker_host_trunk_interfaces", []), instance),
        "}",
    ]
    for tenant in tenants:
        inside, leaving = tenant_objects(tenant)
        lines += [
            f"subgraph {quote('cluster_' + tenant['name'])} {{",
            statements(
                dict(label=f"tenant namespace {tenant['name']}", style="rounded", color="steelblue")
            ),  # fmt: skip
            *inside,
            "}",
            *leaving,
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(source: str, output: Path) -> None:
    fmt = output.suffix.lstrip(".") or "svg"
    subprocess.run(["dot", f"-T{fmt}", "-o", str(output)], input=source.encode(), check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inventory", type=Path, default=REPO / "inventories" / "example")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "topology.svg")
    parser.add_argument("--check", action="store_true", help="compare with --output instead")
    args = parser.parse_args(argv)
    title = f"What playbooks/site.yml builds from {args.inventory.relative_to(REPO)}"
    source = dot_source(load_vars(args.inventory), title)
    if not args.check:
        render(source, args.output)
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        fresh = Path(scratch) / args.output.name
        render(source, fresh)
        if not args.output.exists() or fresh.read_bytes() != args.output.read_bytes():
            print(f"{args.output} is not what {args.inventory} draws: run tools/topology.py",
                  file=sys.stderr)  # fmt: skip
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
