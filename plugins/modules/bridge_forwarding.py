#!/usr/bin/python
# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bridge_forwarding
short_description: Let traffic between the ports of bridges through the host firewall, in one chain
version_added: "0.1.0"
description:
  - Docker loads C(br_netfilter) and sets the policy of the filter table's C(FORWARD) chain to
    C(DROP), which also drops frames between two ports of a Linux bridge (a tenant's machine and
    the tenant's namespace). This module accepts them, for every listed bridge, in one chain the
    collection owns.
  - The chain (O(chain), default C(TENANTNET-FORWARD)) holds exactly one rule per bridge,
    C(-i BRIDGE -o BRIDGE -j ACCEPT), and C(FORWARD) jumps to it once, from the top the first
    time. Rules for bridges that are no longer listed are purged; no rule outside the chain is
    touched, except the jump and the per-bridge rules an earlier version of the
    C(tenant_network) role wrote into C(FORWARD) (comment C(tenantnet.nsproxy tenant bridge)),
    which are removed.
  - The table is read once with C(iptables-save) and, when something differs, changed with
    one C(iptables-restore --noflush) batch, which the kernel applies as one transaction (all
    of it or nothing). A run that changes nothing costs one C(iptables-save) per address
    family, whatever the number of bridges.
  - Every rule written carries the comment C(tenantnet.nsproxy).
author:
  - tenantnet developers (@tenantnet)
requirements:
  - iptables (C(iptables-save) and C(iptables-restore); C(ip6tables-*) for IPv6) on the target,
    either backend (nf_tables or legacy)
attributes:
  check_mode:
    description: Reads the table and reports the batch it would apply; changes nothing.
    support: full
  diff_mode:
    description: Shows the owned chain, its rules and the jumps to it before and after, in
      iptables-save form, per address family.
    support: full
options:
  bridges:
    description:
      - Names of the bridges whose ports may talk to each other through the host firewall.
        The chain ends up with exactly these (sorted, duplicates dropped).
      - Interface names of 1-15 characters from C(A-Z), C(a-z), C(0-9), C(_), C(.) and C(-), so
        iptables matches them literally (no C(+) wildcard). A bridge need not exist yet.
      - Required with O(state=present); ignored with O(state=absent).
    type: list
    elements: str
  state:
    description:
      - V(present) converges the chain, its rules and the jump to it.
      - V(absent) deletes the jump (and any other rule jumping to the chain), the chain and the
        legacy rules.
    type: str
    choices: [present, absent]
    default: present
  chain:
    description:
      - Name of the user chain the collection owns in the filter table. Everything in it is
        managed by this module; put no other rule there.
      - 1-28 characters from C(A-Z), C(a-z), C(0-9), C(_), C(.) and C(-), starting with a letter
        or digit, not a built-in chain or target.
    type: str
    default: TENANTNET-FORWARD
  ip_version:
    description:
      - Which address families to converge. br_netfilter passes bridged IPv4 frames through
        C(iptables) and IPv6 frames through C(ip6tables).
    type: str
    choices: [ipv4, ipv6, both]
    default: ipv4
  backend:
    description:
      - Which iptables commands to run. V(auto) runs C(iptables-save)/C(iptables-restore) as
        found on the PATH (on Debian the alternatives system points them at the backend Docker
        uses too); V(nft) and V(legacy) run C(iptables-nft-*) or C(iptables-legacy-*).
    type: str
    choices: [auto, nft, legacy]
    default: auto
notes:
  - The jump is inserted at the top of C(FORWARD) only when it is missing. When dockerd later
    puts its own jumps above it, that is left as it is; the chain accepts only
    bridge-internal traffic, so the order between them does not matter.
  - The rule counters of the chain restart from zero when its rule set changes (the chain is
    refilled in the same transaction).
seealso:
  - module: tenantnet.nsproxy.tenant_network
  - module: tenantnet.nsproxy.bridge
  - module: ansible.builtin.iptables
    description: One rule per task; this module replaces a loop of it with one batch.
"""

EXAMPLES = r"""
- name: Accept traffic between the ports of each tenant bridge
  tenantnet.nsproxy.bridge_forwarding:
    bridges: [br-tenants, tnvlan101, tnvlan102]

- name: The same for bridged IPv6, with the legacy backend
  tenantnet.nsproxy.bridge_forwarding:
    bridges: "{{ tenant_network_result.bridges }}"
    ip_version: both
    backend: legacy

- name: Remove the chain, its jump and its rules
  tenantnet.nsproxy.bridge_forwarding:
    state: absent
"""

RETURN = r"""
chain:
  description: The owned chain.
  returned: always
  type: str
  sample: TENANTNET-FORWARD
bridges:
  description: Bridges with an ACCEPT rule in the chain after the call (in check mode, the
    planned ones), per address family.
  returned: always
  type: dict
  sample: {"ipv4": ["br-tenants", "tnvlan101"]}
batch:
  description: The iptables-restore lines applied (or, in check mode, that would be), per
    address family; empty lists when nothing differed.
  returned: always
  type: dict
  sample:
    ipv4:
      - ":TENANTNET-FORWARD - [0:0]"
      - "-A TENANTNET-FORWARD -i br0 -o br0 -m comment --comment \"tenantnet.nsproxy\" -j ACCEPT"
      - "-I FORWARD 1 -m comment --comment \"tenantnet.nsproxy\" -j TENANTNET-FORWARD"
legacy_rules_removed:
  description: How many rules of the role's earlier per-bridge task were (or would be)
    deleted from FORWARD, per address family.
  returned: always
  type: dict
  sample: {"ipv4": 0}
actions:
  description: One C(iptables_restore) action per address family whose chain differed (planned,
    in check mode), holding that family's C(batch).
  returned: always
  type: list
  elements: dict
  sample:
    - {op: iptables_restore, family: ipv4, lines: ["-A TENANTNET-FORWARD -i br0 -o br0 -m comment
       --comment \"tenantnet.nsproxy\" -j ACCEPT"]}
differences:
  description: The address families whose bridges differed (C(ipv4.bridges), C(ipv6.bridges)).
  returned: always
  type: list
  elements: str
  sample: ["ipv4.bridges"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.errors import ParamError
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.iptables import (
    DEFAULT_CHAIN,
    FAMILIES,
    ChainState,
    IptablesCommands,
    normalize_bridges,
    plan_chain,
    validate_chain,
    wanted_lines,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.plan import DiffTracker, Plan
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.runner import run

ARGUMENT_SPEC = dict(
    bridges=dict(type="list", elements="str"),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    chain=dict(type="str", default=DEFAULT_CHAIN),
    ip_version=dict(type="str", choices=["ipv4", "ipv6", "both"], default="ipv4"),
    backend=dict(type="str", choices=["auto", "nft", "legacy"], default="auto"),
)


def build_want(params):
    """Validate and normalise the user's input; raise ParamError before anything is read."""
    present = params["state"] == "present"
    if present and params["bridges"] is None:
        raise ParamError("bridges", "required with state=present (an empty list is allowed)")
    families = sorted(FAMILIES) if params["ip_version"] == "both" else [params["ip_version"]]
    return dict(
        chain=validate_chain(params["chain"], "chain"),
        bridges=normalize_bridges(params["bridges"], "bridges") if present else [],
        present=present,
        families=families,
        backend=params["backend"],
    )


def read_have(ctx, want):
    """The table of every family, read before any is changed (a failure to read one touches
    none): ``{"commands": {family: IptablesCommands}, "states": {family: ChainState}}``."""
    commands = {f: IptablesCommands(ctx.module, f, want["backend"]) for f in want["families"]}
    states = {family: ChainState(cmd.save(), want["chain"]) for family, cmd in commands.items()}
    return dict(commands=commands, states=states)


def build_plan(want, have):
    """One ``iptables_restore`` action per family whose chain differs, holding its whole
    batch; the tracker compares the bridges of each family."""
    plan, tracker = Plan(), DiffTracker()
    for family, state in have["states"].items():
        tracker.add(f"{family}.bridges", want["bridges"], state.bridges)
        lines = plan_chain(state, want["chain"], want["bridges"], want["present"])
        if lines:
            plan.add("iptables_restore", family=family, lines=lines)
    return plan, tracker


def apply(ctx, action, rollback):
    """Apply one family's batch; iptables-restore applies it whole or not at all, so there is
    nothing to undo."""
    ctx.have["commands"][action["family"]].restore(action["lines"])


def read_result(ctx, want, have, plan):
    """``chain``, ``batch`` and ``legacy_rules_removed`` per family, the ``bridges`` in the
    chain after the call (read back only where something was applied) and the diff in
    iptables-save form."""
    chain, states, commands = want["chain"], have["states"], have["commands"]
    batches = {f: [] for f in states}
    for action in plan:
        batches[action["family"]] = action["lines"]
    result = dict(
        chain=chain,
        batch=batches,
        legacy_rules_removed={f: len(s.legacy) if batches[f] else 0 for f, s in states.items()},
    )
    if ctx.check_mode:
        result["bridges"] = {f: want["bridges"] for f in states}
    else:
        # Read back only what was changed: a no-op run costs one iptables-save per family.
        after = {
            f: ChainState(commands[f].save(), chain) if batches[f] else states[f] for f in states
        }
        result["bridges"] = {f: s.bridges for f, s in after.items()}
    result["diff"] = [
        dict(
            before_header=f"{family} filter: {chain} and the rules that jump to it",
            after_header=f"{family} filter: {chain} and the rules that jump to it",
            before="".join(f"{line}\n" for line in states[family].lines(chain)),
            after="".join(
                f"{line}\n"
                for line in wanted_lines(states[family], chain, want["bridges"], want["present"])
            ),
        )
        for family in states
    ]
    return result


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run(
        module,
        want=build_want,
        have=read_have,
        plan=build_plan,
        apply=apply,
        result=read_result,
        netlink=False,
    )


if __name__ == "__main__":
    main()
