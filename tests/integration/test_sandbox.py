"""tools/sandbox.py leaves nothing behind: every process started inside ends with it, in
whatever namespace it went to, and ``--private`` directories never reach the machine's disk.
The Python API keeps its promises (the command's own PID, signals reach it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO
from tools.sandbox import Sandbox, SandboxError


@pytest.fixture(autouse=True)
def _root():
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network and mount namespaces")


def pids_with(marker: str) -> list[int]:
    """Host PIDs of live processes whose command line holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_bytes().rpartition(b")")[2].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != b"Z":
            found.append(int(entry))
    return found


def test_processes_in_every_namespace_made_inside_end_with_the_sandbox():
    marker = f"{time.time_ns() % 10**6}.{os.getpid()}"  # a unique sleep duration
    starts = {
        "popen in a named netns": None,
        "background job in a named netns": "ip netns exec t1 sh -c 'sleep {} >/dev/null 2>&1 &'",
        "orphan in a netns and mount ns of its own": (
            "unshare --net --mount --fork sh -c 'sleep {} >/dev/null 2>&1 &'"
        ),
        "nested PID namespace": "unshare --pid --fork --mount-proc sleep {} >/dev/null 2>&1 &",
        "daemon in the sandbox netns": "setsid sh -c 'sleep {} >/dev/null 2>&1 &'",
    }
    with Sandbox() as sb:
        sb.sh("ip netns add t1")
        for index, script in enumerate(starts.values()):
            duration = f"{marker}{index}"
            if script is None:
                sb.popen(["ip", "netns", "exec", "t1", "sleep", duration])
            else:
                sb.sh(script.format(duration))
        deadline = time.monotonic() + 10
        while len(pids_with(marker)) < len(starts) and time.monotonic() < deadline:
            time.sleep(0.05)
        running = pids_with(marker)
        assert len(running) >= len(starts), running
        assert set(running) <= set(sb.processes())
    survivors = [what for index, what in enumerate(starts) if pids_with(f"sleep {marker}{index}")]
    assert survivors == [], "these outlived the sandbox"


def test_popen_is_the_command_itself_and_signals_reach_it():
    with Sandbox() as sb:
        proc = sb.popen(
            [sys.executable, "-c", "import os,time; print(os.getpid(),flush=True); time.sleep(60)"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert int(proc.stdout.readline()) == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == -signal.SIGTERM
        proc.stdout.close()
        assert sb.run(["sh", "-c", "exit 3"], check=False).returncode == 3
        assert sb.ip_json("link", "show", "lo")[0]["ifname"] == "lo"
        assert sb.netns_path == f"/proc/{sb.pid}/ns/net"
        assert os.stat(sb.netns_path).st_ino != os.stat("/proc/self/ns/net").st_ino


def test_private_directories_are_made_inside_the_sandbox_only(tmp_path):
    top = Path("/var/tmp") / f"tenantnet-sandbox-test-{uuid.uuid4().hex[:8]}"
    missing = top / "deep" / "dir"
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "outside.txt").write_text("kept\n")
    with Sandbox(private=[str(missing), str(existing), "/run/tenantnet-test/x"]) as sb:
        sb.sh(f"echo inside > {missing}/file && echo inside > {existing}/file")
        assert sb.run(["cat", f"{missing}/file"]).stdout == "inside\n"
        # A private directory starts empty and hides what the machine has there.
        assert sb.run(["ls", str(existing)]).stdout == "file\n"
        assert not top.exists(), f"{top} appeared on the machine's filesystem"
    assert not top.exists()
    assert sorted(os.listdir(existing)) == ["outside.txt"]
    assert not Path("/run/tenantnet-test").exists()


def test_a_private_directory_directly_under_root_is_refused_with_a_sentence():
    name = f"/tenantnet-sandbox-test-{uuid.uuid4().hex[:8]}"
    with pytest.raises(SandboxError, match=f"--private {name}: it does not exist"):
        Sandbox(private=[name]).start()
    assert not os.path.exists(name)


def test_command_line_sandbox_ends_background_jobs_of_the_command():
    marker = f"{time.time_ns() % 10**6}.{os.getpid()}9"
    script = f"ip netns add t1 && ip netns exec t1 sh -c 'sleep {marker} >/dev/null 2>&1 &'"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "sandbox.py"), "--", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert pids_with(marker) == []
