"""A worker forked from a binder whose descriptor table is full still replaces the binder's
descriptors by /dev/null (worker.main.null_all_but) instead of dying of EMFILE."""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = """
import json, os, resource, socket
from nsproxy.worker.main import null_all_but

held = [socket.socket() for _ in range(20)]  # the binder's sockets, as a worker inherits them
keep = {0, 1, 2, held[0].fileno()}
highest = max(int(n) for n in os.listdir("/proc/self/fd"))
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
while True:  # fill every number below the limit
    try:
        held.append(socket.socket())
    except OSError:
        break
null_all_but(keep)
targets = {}
for fd in range(highest + 1):
    try:
        targets[fd] = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        targets[fd] = None
print(json.dumps({"kept": held[0].fileno(), "targets": targets}))
"""


def test_a_full_table_is_replaced_by_dev_null_without_emfile():
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, check=True
    ).stdout
    doc = json.loads(out)
    targets = {int(fd): target for fd, target in doc["targets"].items()}
    assert targets[doc["kept"]].startswith("socket:")
    others = [t for fd, t in targets.items() if fd not in (0, 1, 2, doc["kept"])]
    assert others and all(t == "/dev/null" for t in others), targets  # none closed
