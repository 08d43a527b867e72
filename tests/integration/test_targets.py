"""Runs each ansible-test style target in tests/integration/targets/ through a real
``ansible-playbook`` run, inside a fresh sandbox, once per module interpreter (pyroute2 0.9
from the virtualenv, pyroute2 0.7 from Debian's python3-pyroute2).

A target's ``aliases`` file may say:
  needs/docker          start the sandbox's own Docker engine first
  needs/kernel/<kind>   skip (naming the missing feature) unless the kernel has link kind <kind>
Targets are plain roles: tasks/main.yml makes the changes and asserts both the module's
results and the kernel's state (``ip -json`` / pyroute2).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO, ansible_env, require_kernel

TARGETS = REPO / "tests" / "integration" / "targets"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
DEBIAN_PYTHON = Path("/usr/bin/python3")


def _aliases(target: Path) -> list[str]:
    path = target / "aliases"
    if not path.exists():
        return []
    return [line.split("#")[0].strip() for line in path.read_text().splitlines() if line.strip()]


def _pyroute2_version(python: str) -> str | None:
    proc = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('pyroute2'))"],
        capture_output=True,
        text=True,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def _interpreters(config) -> list[str]:
    chosen = config.getoption("--target-python") or [str(VENV_PYTHON), str(DEBIAN_PYTHON)]
    return [p for p in chosen if Path(p).exists()]


def pytest_generate_tests(metafunc):
    if {"target", "target_python"} <= set(metafunc.fixturenames):
        targets = sorted(p for p in TARGETS.iterdir() if (p / "tasks" / "main.yml").exists())
        pythons = _interpreters(metafunc.config)
        params = [
            pytest.param(t, py, id=f"{t.name}-pyroute2_{_pyroute2_version(py) or 'missing'}")
            for t in targets
            for py in pythons
        ]
        metafunc.parametrize(("target", "target_python"), params)


def run_target(target: Path, target_python: str, sandbox_factory) -> subprocess.CompletedProcess:
    playbook = target.parent / f".run-{target.name}.yml"
    playbook.write_text(
        textwrap.dedent(
            f"""\
            - name: Integration target {target.name}
              hosts: localhost
              connection: local
              gather_facts: false
              vars:
                ansible_python_interpreter: {target_python}
              roles:
                - {target.name}
            """
        )
    )
    env = ansible_env(ANSIBLE_ROLES_PATH=str(TARGETS))
    ansible_playbook = str(Path(sys.executable).with_name("ansible-playbook"))
    try:
        with sandbox_factory() as sb:
            return sb.run([ansible_playbook, "--diff", str(playbook)], check=False, env=env)
    finally:
        playbook.unlink(missing_ok=True)


def test_target(target: Path, target_python: str):
    from tools.sandbox import Sandbox

    if os.geteuid() != 0:
        pytest.skip("needs root: creates network and mount namespaces")
    if _pyroute2_version(target_python) is None:
        pytest.fail(f"{target_python} cannot import pyroute2: run scripts/bootstrap.sh")
    aliases = _aliases(target)
    for alias in aliases:
        if alias.startswith("needs/kernel/"):
            require_kernel(alias.rsplit("/", 1)[1])
    docker = "needs/docker" in aliases
    proc = run_target(target, target_python, lambda: Sandbox(docker=docker))
    assert proc.returncode == 0, f"target {target.name} failed:\n{proc.stdout}\n{proc.stderr}"
