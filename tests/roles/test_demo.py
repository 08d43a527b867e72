"""scripts/demo.sh, the README's first command, leaves nothing behind: after it finished, no
process it started runs any more (the upstreams it starts with ``ip netns exec``, dockerd,
nsproxy) and none of the files it wrote exists on the machine (its scratch directory, the
roles' files under /etc, /opt and /var/log, namespace names, logs)."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO

# Where the demo (or a leaking sandbox) would leave files, and how deep to look. /run and /tmp
# are shared with everything else running on the machine (other tests, other sandboxes): only
# names of the demo count there. ~/.ansible is not looked at: any ansible run on the machine
# writes there, and the demo points ANSIBLE_HOME into its sandbox.
WATCHED = {"/etc": 3, "/opt": 2, "/var/log": 2, "/var/tmp": 2, "/var/lib/docker": 1,
           "/run": 2, "/tmp": 1}  # fmt: skip
SHARED = {"/run": ("acme", "globex", "initech", "nsproxy", "tenantnet"),
          "/tmp": ("tenantnet", "nsproxy-demo", "demo")}  # fmt: skip


def snapshot() -> set[str]:
    """Paths under WATCHED (to their depth); under SHARED only those with a demo's name."""
    found = set()
    for top, depth in WATCHED.items():
        if not os.path.isdir(top):
            continue
        base = top.rstrip("/").count("/")
        for root, dirs, files in os.walk(top):
            level = root.count("/") - base
            paths = [os.path.join(root, name) for name in dirs + files]
            if top in SHARED:
                paths = [p for p in paths if any(w in p[len(top) :] for w in SHARED[top])]
            found.update(paths)
            if level + 1 >= depth:
                dirs[:] = []
    return found


def processes_with(marker: str) -> list[str]:
    """Command lines of live processes whose environment holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in environ:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def test_demo_answers_every_tenant_and_leaves_no_process_and_no_file_behind():
    if os.geteuid() != 0:
        pytest.skip("needs root: the demo creates network and mount namespaces")
    marker = f"TENANTNET_DEMO_RUN={uuid.uuid4().hex}"
    before = snapshot()
    env = dict(os.environ, TENANTNET_DEMO_RUN=marker.split("=", 1)[1])
    env.pop("TENANTNET_DEMO_LOGS", None)
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "demo.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    for tenant in ("acme", "globex", "initech"):
        assert f"answered tenant={tenant} (X-Forwarded-For 10.0.0.250) path=/hello" in proc.stdout
        assert f"{tenant}'s own upstream (inside netns {tenant}) answered tenant={tenant}" in (
            proc.stdout
        )
    assert processes_with(marker) == [], "processes of the demo outlived it"
    created = sorted(snapshot() - before)
    assert created == [], "files of the demo remain on the machine"
