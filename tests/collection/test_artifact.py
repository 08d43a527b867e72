"""The collection as users get it: the tarball ``ansible-galaxy collection build`` makes,
extracted under ansible_collections/tenantnet/nsproxy (the sanity stage passes the tarball in
ARTIFACT; run alone, the test builds one). It holds the daemon the nsproxy role installs, the
license, the execution-environment files ansible-builder reads, and no file of the
repository's own tooling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    """The tarball (ARTIFACT, or one built now) extracted under ansible_collections/."""
    out = tmp_path_factory.mktemp("artifact")
    tarball = os.environ.get("ARTIFACT")
    if not tarball:
        subprocess.run(
            [str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(out),
             str(REPO)],
            check=True,
            capture_output=True,
        )  # fmt: skip
        tarball = str(next(out.glob("tenantnet-nsproxy-*.tar.gz")))
    root = out / "ansible_collections" / "tenantnet" / "nsproxy"
    root.mkdir(parents=True)
    subprocess.run(["tar", "-xzf", tarball, "-C", str(root)], check=True)
    return root


def test_the_daemon_the_nsproxy_role_installs_is_in_the_artifact(artifact):
    source = artifact / "src" / "nsproxy"
    assert (source / "pyproject.toml").is_file()
    assert (source / "nsproxy" / "cli.py").is_file()
    role = artifact / "roles" / "nsproxy"
    default = yaml.safe_load((role / "defaults" / "main.yml").read_text())["nsproxy_source_dir"]
    assert (role / default.replace("{{ role_path }}/", "")).resolve() == source.resolve()


def test_license_and_metadata_say_gpl3_or_later_and_name_no_placeholder(artifact):
    license_text = (artifact / "LICENSE").read_text()
    assert "GNU GENERAL PUBLIC LICENSE" in license_text
    assert "Version 3, 29 June 2007" in license_text
    manifest = json.loads((artifact / "MANIFEST.json").read_text())["collection_info"]
    assert manifest["license"] == ["GPL-3.0-or-later"]
    offenders = [
        str(path.relative_to(artifact))
        for path in artifact.rglob("*")
        if path.is_file() and b"example.invalid" in path.read_bytes()
    ]
    assert offenders == []


def test_no_file_of_the_repository_tooling_is_shipped(artifact):
    dev_only_paths = ("tools", "scripts", "bench", "molecule", ".ci", "tests/roles",
                      "tests/nsproxy", "tests/conftest.py", "requirements-dev.txt",
                      "inventories/sandbox.yml")  # fmt: skip
    for dev_only in dev_only_paths:
        assert not (artifact / dev_only).exists(), dev_only
    assert list(artifact.rglob("__pycache__")) == []
    assert (artifact / "tests" / "unit").is_dir()  # ansible-test units runs there
    assert (artifact / "changelogs" / "changelog.yaml").is_file()


def test_ansible_builder_introspect_lists_the_collection_requirements(artifact):
    collections = artifact.parents[2]  # the directory holding ansible_collections/
    proc = subprocess.run(
        [str(BIN / "ansible-builder"), "introspect", "--sanitize", str(collections)],
        capture_output=True,
        text=True,
        check=True,
    )
    found = yaml.safe_load(proc.stdout.split("\n", 1)[1])
    assert any(line.startswith("pyroute2>=0.7") for line in found["python"]), proc.stdout
    system = " ".join(found["system"])
    assert "iptables [platform:dpkg" in system and "kmod [platform:dpkg" in system, proc.stdout
    assert all("from collection tenantnet.nsproxy" in line for line in found["python"])


def test_action_group_modules_exist_and_declare_their_membership(artifact):
    groups = yaml.safe_load((artifact / "meta" / "runtime.yml").read_text())["action_groups"]
    assert set(groups) == {"netlink"}
    for name in groups["netlink"]:
        source = (artifact / "plugins" / "modules" / f"{name}.py").read_text()
        assert "tenantnet.nsproxy.attributes.netlink" in source, name
