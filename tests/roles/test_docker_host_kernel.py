"""docker_host's kernel module tasks on their own: the modules-load.d file they write.

The file must list the available modules in the declared order, whatever the controller's
string hashing (PYTHONHASHSEED): an order that changes between runs would make every second
converge report a change. Runs in a sandbox; the file goes to a temporary path.
"""

from __future__ import annotations

import os
import sys
import textwrap

import pytest

from tests.roles.site_sandbox import VENV_BIN, ansible_env, recap
from tools.sandbox import Sandbox

MODULES = ["veth", "bridge", "macvlan"]  # in use by the other tests, so loading changes nothing


@pytest.fixture(scope="module")
def sb():
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network and mount namespaces")
    with Sandbox() as sandbox:
        yield sandbox


@pytest.mark.parametrize("seed", ["0", "1", "2", "3", "4"])
def test_modules_load_file_keeps_the_declared_order_and_a_rerun_changes_nothing(sb, tmp_path, seed):
    target = tmp_path / "tenantnet.conf"
    play = tmp_path / "play.yml"
    play.write_text(
        textwrap.dedent(
            f"""\
            - name: docker_host kernel tasks
              hosts: localhost
              connection: local
              gather_facts: false
              vars:
                ansible_python_interpreter: {sys.executable}
                docker_host_kernel_modules: {MODULES}
                docker_host_modules_load_file: {target}
              tasks:
                - name: Kernel modules
                  ansible.builtin.include_role:
                    name: tenantnet.nsproxy.docker_host
                    tasks_from: kernel
            """
        )
    )
    env = ansible_env(PYTHONHASHSEED=seed)
    for run in (1, 2):
        proc = sb.run([str(VENV_BIN / "ansible-playbook"), str(play)], check=False, env=env)
        assert proc.returncode == 0, f"run {run} failed:\n{proc.stdout}\n{proc.stderr}"
        assert target.read_text().splitlines()[1:] == MODULES
        assert recap(proc.stdout)["changed"] == (1 if run == 1 else 0), proc.stdout
