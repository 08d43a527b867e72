"""Check mode never lies: for every module path, ``ansible-playbook --check`` predicts exactly
what the real run then changes, task by task and item by item. Each playbook of
tests/integration/check_mode/ runs on a fresh sandbox (create.yml) and then on the converged one
(create.yml again, then change.yml): --check first, then for real, and the two
lists of changed steps must be equal. Later tasks refer to objects earlier ones create, which
--check has not made (a namespace, the bridge given as master, the parent NIC of a macvlan)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, ansible_env, changed_steps
from tools.sandbox import Sandbox

PLAYBOOKS = REPO / "tests" / "integration" / "check_mode"
VENV_BIN = REPO / ".venv" / "bin"


def play(sb: Sandbox, playbook: str, *flags: str) -> subprocess.CompletedProcess:
    env = ansible_env()
    argv = [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", str(PLAYBOOKS / playbook),
            "-e", f"ansible_python_interpreter={sys.executable}",
            "-e", f"nsproxy_bin={VENV_BIN / 'nsproxy'}", *flags]  # fmt: skip
    proc = sb.run(argv, check=False, env=env)
    assert proc.returncode == 0, f"{playbook} {flags} failed:\n{proc.stdout[-6000:]}{proc.stderr}"
    return proc


def predicted_and_done(sb: Sandbox, playbook: str) -> tuple[list[str], list[str], str]:
    check = play(sb, playbook, "--check", "--diff")
    real = play(sb, playbook)
    return changed_steps(check.stdout), changed_steps(real.stdout), check.stdout + check.stderr


def test_check_mode_predicts_every_module_path_exactly():
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network and mount namespaces")
    with Sandbox() as sb:
        predicted, done, check_output = predicted_and_done(sb, "create.yml")
        assert predicted == done, "create.yml on a fresh sandbox"
        assert len(done) == 12, done  # every task created something
        # The tasks into objects an earlier task creates said so instead of failing.
        warnings = " ".join(check_output.split())  # ansible wraps warnings
        assert "network namespace 'cm1' does not exist" in warnings
        assert "master: bridge 'brcm' does not exist in the host namespace" in warnings
        assert "parent: interface 'trunkcm' does not exist" in warnings
        assert "check mode assumes an earlier task creates it" in warnings

        predicted, done, _ = predicted_and_done(sb, "create.yml")
        assert predicted == done == [], "create.yml on the converged sandbox"

        predicted, done, _ = predicted_and_done(sb, "change.yml")
        assert predicted == done, "change.yml on the converged sandbox"
        assert len(done) == 11, done  # every task changed something
        # What the real run left is what change.yml asked for.
        names = {entry["name"] for entry in sb.ip_json("netns")}
        assert "cm1-alias" not in names and "tb" not in names and "ta" in names
        assert not {link["ifname"] for link in sb.ip_json("link")} & {"brcm", "vhcm1"}
        eth0 = sb.ip_json("-d", "link", "show", "eth0", netns="cm2")[0]
        assert eth0["linkinfo"]["info_data"]["mode"] == "vepa"
        assert sb.ip_json("link", netns="cm3") == sb.ip_json("link", "show", "lo", netns="cm3")
        ta = sb.ip_json("addr", "show", "eth0", netns="ta")[0]["addr_info"]
        assert [a["local"] for a in ta if a["family"] == "inet"] == ["10.2.0.250"]
        assert ("default", "10.2.0.254") in {
            (r["dst"], r.get("gateway")) for r in sb.ip_json("route", netns="ta")
        }
        config = json.loads(sb.run(["cat", "/run/nsproxy-check/etc/cm.json"]).stdout)
        assert [t["name"] for t in config["tenants"]] == ["cm1", "cm2"]


def test_changed_steps_reads_tasks_and_items():
    output = (
        "TASK [Namespaces] ****\nchanged: [localhost] => (item=cm1)\nok: [localhost] => "
        "(item=cm2)\n\nTASK [Bridge] ****\nchanged: [localhost]\n"
        "RUNNING HANDLER [Restart] ****\nok: [localhost]\n"
    )
    assert changed_steps(output) == ["Namespaces [cm1]", "Bridge"]
