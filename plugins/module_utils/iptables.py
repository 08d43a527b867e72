# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""iptables rule sets the collection owns: read with ``iptables-save``, planned here, applied as
one ``iptables-restore --noflush`` batch.

iptables is not netlink (the nf_tables backend speaks its own netlink dialect, the legacy one
uses setsockopt), and pyroute2 covers neither, so this room talks to the ``iptables-save`` /
``iptables-restore`` commands, the stable interface both backends share. A restore batch of one
table is one kernel transaction in both backends: it applies completely or not at all.

The shape of what is owned: one user chain (default ``TENANTNET-FORWARD``) in the filter table,
holding exactly one ACCEPT rule per tenant bridge (``-i BR -o BR``), and one jump to it from
``FORWARD``. Every rule the collection writes carries the comment ``tenantnet.nsproxy``.
Nothing else in the table is read for a decision, and nothing else is changed, except rules an
earlier version of the ``tenant_network`` role made directly in ``FORWARD`` (comment
``tenantnet.nsproxy tenant bridge``), which the owned chain replaces.

Pure planning (``parse_save``, ``plan_chain``) is separate from running the commands
(``IptablesCommands``), so the planning is unit-tested without root.
"""

from __future__ import annotations

import re
import shlex

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.errors import (
    ModuleFailure,
    ParamError,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.validation import validate_ifname

OWNER_COMMENT = "tenantnet.nsproxy"
"""Comment (``-m comment``) on every rule the collection writes."""

LEGACY_COMMENTS = ("tenantnet.nsproxy tenant bridge",)
"""Comments of rules the ``tenant_network`` role wrote into FORWARD before it had its own
chain (one ``ansible.builtin.iptables`` rule per bridge); they are removed on the next run."""

DEFAULT_CHAIN = "TENANTNET-FORWARD"
PARENT_CHAIN = "FORWARD"
TABLE = "filter"

CHAIN_MAX = 28
"""Longest user chain name (XT_EXTENSION_MAXNAMELEN 29, less the terminating NUL)."""

_CHAIN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_RESERVED_CHAINS = frozenset(
    ("INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING")
    + ("ACCEPT", "DROP", "RETURN", "QUEUE", "REJECT", "LOG", "MARK", "CONTINUE", "NFQUEUE")
)
# iptables reads a trailing '+' as "every interface with this prefix" and a leading '!' as a
# negation; quotes and backslashes would change how iptables-restore splits the line.
_BRIDGE_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

FAMILIES = {
    "ipv4": ("iptables-save", "iptables-restore"),
    "ipv6": ("ip6tables-save", "ip6tables-restore"),
}
BACKEND_SUFFIX = {"auto": "", "nft": "-nft", "legacy": "-legacy"}
"""How each backend's commands are spelled: ``iptables-nft-save``, ``iptables-legacy-save``;
``auto`` is the plain name, which Debian's alternatives point at the backend Docker uses too."""

RESTORE_WAIT_SECONDS = 10
"""How long iptables-restore waits for the xtables lock another writer (dockerd) may hold."""


# -- validation --------------------------------------------------------------------------------


def validate_chain(value, field="chain"):
    """Return ``value`` if it can name the owned user chain: 1-28 characters from
    ``[A-Za-z0-9_.-]``, starting with a letter or digit, not a built-in chain or target name.
    Raise ParamError naming ``field`` otherwise."""
    text = value if isinstance(value, str) else ""
    if not text or len(text) > CHAIN_MAX or not _CHAIN_RE.match(text):
        raise ParamError(
            field,
            f"'{value}' is not a usable chain name; allowed: 1-{CHAIN_MAX} characters from "
            "A-Z, a-z, 0-9, '_', '.', '-', starting with a letter or digit",
        )
    if text.upper() in _RESERVED_CHAINS:
        raise ParamError(
            field, f"'{value}' is a built-in chain or target of iptables; choose a name of its own"
        )
    return text


def normalize_bridges(values, field="bridges"):
    """Validate a list of bridge names (each an interface name the kernel accepts, from
    ``[A-Za-z0-9_.-]`` so iptables reads it literally) and return it sorted, duplicates dropped.
    Each bad entry is reported as ``field[i]``."""
    result = set()
    for i, name in enumerate(values or []):
        validate_ifname(name, f"{field}[{i}]")
        if not _BRIDGE_RE.match(name):
            raise ParamError(
                f"{field}[{i}]",
                f"'{name}' cannot be matched literally by iptables; allowed characters: "
                "A-Z, a-z, 0-9, '_', '.', '-'",
            )
        result.add(name)
    return sorted(result)


# -- reading iptables-save ---------------------------------------------------------------------


class TableView:
    """One table as ``iptables-save -t TABLE`` printed it: ``chains`` (name -> policy, ``-`` for
    user chains) and ``rules`` (``(chain, spec)`` in order, ``spec`` being the text after
    ``-A CHAIN``, exactly as printed, so it can be replayed as ``-D CHAIN spec``)."""

    def __init__(self):
        self.chains = {}
        self.rules = []

    def rules_of(self, chain):
        return [spec for name, spec in self.rules if name == chain]


def parse_save(text, table=TABLE):
    """Parse the ``*table`` section of iptables-save output into a TableView. An empty text
    (the nf_tables backend prints nothing for a table that does not exist yet) gives an empty
    view. Raise ValueError for a line that is neither a comment, a chain, a rule nor COMMIT."""
    view = TableView()
    inside = False
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            inside = line[1:] == table
            continue
        if not inside:
            continue
        if line == "COMMIT":
            inside = False
        elif line.startswith(":"):
            parts = line[1:].split()
            view.chains[parts[0]] = parts[1] if len(parts) > 1 else "-"
        elif line.startswith("-A "):
            chain, spec = (line[3:].split(" ", 1) + [""])[:2]
            view.rules.append((chain, spec.strip()))
        else:
            raise ValueError(f"line {number} of iptables-save output is not understood: {line!r}")
    return view


def rule_terms(spec):
    """The meaning of a rule spec as a comparable set, independent of how the backend orders or
    quotes it: ``{("-i", "br0"), ("-o", "br0"), ("comment", "..."), ("-j", "ACCEPT")}``.
    Options this room never writes are kept as ``("other", token)`` so such a rule never equals
    one of ours."""
    try:
        tokens = shlex.split(spec)
    except ValueError:
        return frozenset([("other", spec)])
    terms = set()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        value = tokens[i + 1] if i + 1 < len(tokens) else None
        if token in ("-i", "-o", "-j") and value is not None:
            terms.add((token, value))
            i += 2
        elif token == "-m" and value == "comment":
            i += 2
        elif token == "--comment" and value is not None:
            terms.add(("comment", value))
            i += 2
        else:
            terms.add(("other", token))
            i += 1
    return frozenset(terms)


def bridge_rule(bridge):
    """The spec of the ACCEPT rule for traffic between two ports of ``bridge``."""
    return f'-i {bridge} -o {bridge} -m comment --comment "{OWNER_COMMENT}" -j ACCEPT'


def jump_rule(chain):
    """The spec of the jump from FORWARD to the owned chain."""
    return f'-m comment --comment "{OWNER_COMMENT}" -j {chain}'


def _bridge_of(spec):
    """The bridge an owned ACCEPT rule is for, or None when ``spec`` is not exactly such a rule."""
    terms = dict(rule_terms(spec))
    if len(terms) != 4 or terms.get("-j") != "ACCEPT" or terms.get("comment") != OWNER_COMMENT:
        return None
    bridge = terms.get("-i")
    return bridge if bridge and terms.get("-o") == bridge else None


# -- planning ----------------------------------------------------------------------------------


class ChainState:
    """What the collection owns in one family's filter table: the bridges with a correct rule
    in the chain (``bridges``), whether the chain holds anything else (``foreign``: other or
    duplicate rules), the chain's existence, the jumps to it from FORWARD (``jumps``: exactly
    the collection's; ``other_jumps``: someone else's rules that also jump to it) and legacy
    rules."""

    def __init__(self, view, chain):
        self.exists = chain in view.chains
        specs = view.rules_of(chain)
        bridges = [_bridge_of(spec) for spec in specs]
        self.bridges = sorted(b for b in set(bridges) if b)
        self.foreign = len(specs) != len(self.bridges)
        self.rules = specs
        own_jump = rule_terms(jump_rule(chain))
        referring = [s for s in view.rules_of(PARENT_CHAIN) if ("-j", chain) in rule_terms(s)]
        self.jumps = [spec for spec in referring if rule_terms(spec) == own_jump]
        self.other_jumps = [spec for spec in referring if rule_terms(spec) != own_jump]
        self.legacy = [
            spec
            for spec in view.rules_of(PARENT_CHAIN)
            if any(("comment", c) in rule_terms(spec) for c in LEGACY_COMMENTS)
        ]

    def lines(self, chain):
        """The owned objects in iptables-save form (for --diff)."""
        out = [f"-N {chain}"] if self.exists else []
        out += [f"-A {PARENT_CHAIN} {spec}" for spec in self.jumps + self.other_jumps]
        out += [f"-A {chain} {spec}" for spec in self.rules]
        out += [f"-A {PARENT_CHAIN} {spec}" for spec in self.legacy]
        return out


def wanted_lines(state, chain, bridges, present):
    """The owned objects of ``state`` as ``plan_chain`` leaves them, in the same form as
    ``ChainState.lines``."""
    if not present:
        return []
    return (
        [f"-N {chain}"]
        + [f"-A {PARENT_CHAIN} {spec}" for spec in (state.jumps[:1] or [jump_rule(chain)])]
        + [f"-A {PARENT_CHAIN} {spec}" for spec in state.other_jumps]
        + [f"-A {chain} {bridge_rule(b)}" for b in bridges]
    )  # fmt: skip


def plan_chain(state, chain, bridges, present):
    """Return the iptables-restore lines (inside ``*filter`` ... ``COMMIT``) that turn ``state``
    into the wanted one; an empty list when nothing differs.

    present: the chain is declared (``:CHAIN - [0:0]``, which under ``--noflush`` creates it or
    empties it) and refilled whenever its rule set differs; a missing jump is inserted at the
    top of FORWARD, duplicate jumps and legacy rules are deleted by their exact spec.
    Another rule that jumps to the chain is left alone while the chain stays.
    absent: every jump to the chain (the kernel refuses to delete a chain still referred to)
    and the legacy rules are deleted, then the chain is flushed and deleted."""
    lines = []
    if present:
        if not state.exists or state.foreign or state.bridges != bridges:
            lines.append(f":{chain} - [0:0]")
            lines += [f"-A {chain} {bridge_rule(b)}" for b in bridges]
        if not state.jumps:
            lines.append(f"-I {PARENT_CHAIN} 1 {jump_rule(chain)}")
        lines += [f"-D {PARENT_CHAIN} {spec}" for spec in state.jumps[1:]]
        lines += [f"-D {PARENT_CHAIN} {spec}" for spec in state.legacy]
    else:
        lines += [f"-D {PARENT_CHAIN} {spec}" for spec in state.jumps + state.other_jumps]
        lines += [f"-D {PARENT_CHAIN} {spec}" for spec in state.legacy]
        if state.exists:
            lines += [f"-F {chain}", f"-X {chain}"]
    return lines


def restore_batch(lines, table=TABLE):
    """The complete iptables-restore input for ``lines``: one table, one transaction."""
    return "\n".join([f"*{table}", *lines, "COMMIT", ""])


# -- running the commands ----------------------------------------------------------------------


class IptablesCommands:
    """``iptables-save`` / ``iptables-restore`` of one family and backend, run through
    ``module.run_command`` (argv, no shell)."""

    def __init__(self, module, family, backend="auto"):
        save, restore = FAMILIES[family]
        suffix = BACKEND_SUFFIX[backend]
        self.module = module
        self.family = family
        self.save_cmd = save.replace("tables-", f"tables{suffix}-")
        self.restore_cmd = restore.replace("tables-", f"tables{suffix}-")
        self._paths = {}

    def _path(self, name):
        if name not in self._paths:
            path = self.module.get_bin_path(name, opt_dirs=["/usr/sbin", "/sbin"])
            if not path:
                raise ModuleFailure(
                    f"{name} is not installed on this host: install the iptables package "
                    "(Debian/Ubuntu: apt-get install iptables)",
                    family=self.family,
                )
            self._paths[name] = path
        return self._paths[name]

    def save(self, table=TABLE):
        """The table as a TableView; a failure of the command becomes a sentence."""
        argv = [self._path(self.save_cmd), "-t", table]
        rc, out, err = self.module.run_command(argv)
        if rc != 0:
            raise ModuleFailure(
                f"reading the {self.family} {table} table with {self.save_cmd} failed: "
                f"{explain(err or out, rc)}",
                family=self.family,
                rc=rc,
            )
        try:
            return parse_save(out, table)
        except ValueError as exc:
            raise ModuleFailure(f"{self.save_cmd}: {exc}", family=self.family) from None

    def restore(self, lines, table=TABLE):
        """Apply ``lines`` as one ``--noflush`` transaction; a failure names the offending
        line and says that nothing was applied."""
        batch = restore_batch(lines, table)
        argv = [self._path(self.restore_cmd), "--noflush", "-w", str(RESTORE_WAIT_SECONDS)]
        rc, out, err = self.module.run_command(argv, data=batch, binary_data=True)
        if rc != 0:
            text = err or out
            where = ""
            match = re.search(r"(?:line:?|at line:?)\s*(\d+)", text or "")
            if match:
                number = int(match.group(1))
                batch_lines = batch.splitlines()
                if 1 <= number <= len(batch_lines):
                    where = f" at line {number} ({batch_lines[number - 1]})"
            raise ModuleFailure(
                f"applying the {self.family} {table} rules with {self.restore_cmd} failed{where}: "
                f"{explain(text, rc)}. Nothing was changed: the batch is one transaction.",
                family=self.family,
                rc=rc,
                batch=batch.splitlines(),
            )


# "iptables-restore v1.8.9 (nf_tables): " starts the error lines of every iptables command.
_BANNER = re.compile(r"^ip6?tables(-nft|-legacy)?(-save|-restore)? v[0-9.]+( \([^)]*\))?:\s*")


def explain(text, rc):
    """One sentence from an iptables command's error output (its first meaningful line, with a
    hint for the usual causes)."""
    lines = []
    for line in (text or "").splitlines():
        line = _BANNER.sub("", line).strip()
        if line and not line.startswith("Try `"):
            lines.append(line)
    detail = "; ".join(lines[:2]) or f"exit status {rc}"
    lowered = detail.lower()
    if "resource busy" in lowered or "too many links" in lowered:
        return f"{detail} (another rule still jumps to the chain)"
    if "permission denied" in lowered or "must be root" in lowered:
        return f"{detail} (this needs root, or CAP_NET_ADMIN)"
    if "lock" in lowered and "xtables" in lowered:
        return f"{detail} (another program held the xtables lock for {RESTORE_WAIT_SECONDS} s)"
    if "couldn't load" in lowered or "protocol not supported" in lowered:
        return f"{detail} (the kernel lacks an iptables module this rule needs)"
    return detail
