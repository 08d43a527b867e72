"""Fixtures shared by every test suite: the throwaway sandbox and kernel feature probes, and
what an ansible-playbook run reported changed (for check-mode predictions)."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "build" / "collections")]

from tools.sandbox import Sandbox  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        "--target-python",
        action="append",
        default=[],
        help="interpreter the modules run with (repeatable); default: .venv (pyroute2 0.9) "
        "and /usr/bin/python3 (Debian's pyroute2 0.7)",
    )


@functools.cache
def kernel_has(feature: str) -> bool:
    """Whether this kernel can create a link of kind ``feature`` (vlan, macvlan, ipvlan, ...)."""
    veth = "ip link add p0 type veth peer name p1"
    probes = {
        "vlan": f"{veth} && ip link add link p0 name p0.5 type vlan id 5",
        "macvlan": f"{veth} && ip link add link p0 name m0 type macvlan",
        "ipvlan": f"{veth} && ip link add link p0 name i0 type ipvlan",
        "veth": veth,
        "bridge": "ip link add b0 type bridge",
    }
    with Sandbox() as sb:
        return sb.sh(probes[feature], check=False).returncode == 0


KERNEL_SKIP_REASON = {
    "vlan": "this kernel has no 802.1Q VLAN support (CONFIG_VLAN_8021Q); the molecule VM runs this "
    "target (scripts/test.sh vm)",
    "ipvlan": "this kernel has no ipvlan support (CONFIG_IPVLAN); the molecule VM has it",
}


def require_kernel(feature: str) -> None:
    """Skip the calling test, naming the missing kernel feature, unless the kernel has it."""
    if not kernel_has(feature):
        pytest.skip(KERNEL_SKIP_REASON.get(feature, f"this kernel lacks {feature}"))


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network and mount namespaces")


@pytest.fixture
def sandbox():
    """A fresh network + mount namespace for one test; everything in it dies afterwards."""
    _require_root()
    with Sandbox() as sb:
        yield sb


@pytest.fixture
def docker_sandbox():
    """A sandbox with its own Docker engine and the local ``tenantnet/busybox`` image."""
    _require_root()
    if subprocess.run(["sh", "-c", "command -v dockerd"], capture_output=True).returncode:
        pytest.fail("dockerd is missing: scripts/bootstrap.sh installs docker.io")
    with Sandbox(docker=True) as sb:
        yield sb


def ansible_env(**extra: str) -> dict[str, str]:
    """The environment of an ansible-playbook run in a test: this checkout's collection, plain
    output, no retry files or localhost warnings; ``extra`` adds or overrides variables."""
    return dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(REPO / "build" / "collections"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
        **extra,
    )


def changed_steps(output: str) -> list[str]:
    """The steps an ansible-playbook run (default output) reported changed, in order:
    ``task`` or ``task [item]``; handlers too. ``--check`` must report the same list as the
    real run that follows it."""
    steps, task = [], None
    for line in output.splitlines():
        header = re.match(r"^(?:TASK|RUNNING HANDLER) \[(.*)\]", line)
        if header:
            task = header.group(1)
            continue
        changed = re.match(r"^changed: \[[^\]]+\](?: => \(item=(.*)\))?", line)
        if changed and task:
            steps.append(f"{task} [{changed.group(1)}]" if changed.group(1) else task)
    return steps
