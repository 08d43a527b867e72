"""Which namespace paths are pinned to a process (nsproxy/netns.py ``pinned_pid``): every path
that goes through /proc/PID, however it is written. One that escaped the pin named another
tenant's namespace once the PID was reused (a reviewer's '//proc/PID/ns/net': the tenant's
listener joined another tenant's address, and answered its clients)."""

from __future__ import annotations

import os
import subprocess

import pytest

from nsproxy import netns


@pytest.fixture
def pid():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.mark.parametrize(
    "spelling",
    ["/proc/{pid}/ns/net", "//proc/{pid}/ns/net", "/proc//{pid}/ns/net", "/proc/{pid}/./ns/net",
     "/proc/{pid}/task/{pid}/ns/net", "/proc/self/root/proc/{pid}/ns/net",
     "/proc/thread-self/root/proc/{pid}/ns/net", "//proc/{pid}/task//{pid}/./ns/net"],
)  # fmt: skip
def test_every_path_through_proc_pid_is_pinned_to_that_pid(pid, spelling):
    assert netns.pinned_pid(spelling.format(pid=pid)) == pid


def test_a_path_through_proc_of_a_process_that_is_gone_still_names_its_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert netns.pinned_pid(f"/proc/{proc.pid}/ns/net") == proc.pid
    assert netns.pinned_pid(f"//proc/{proc.pid}/ns/net") == proc.pid


def test_this_process_own_proc_entry_is_not_pinned():
    """The binder's own namespace (through /proc/self or its own PID) lives as long as it."""
    for path in ("/proc/self/ns/net", "/proc/thread-self/ns/net", f"/proc/{os.getpid()}/ns/net"):
        assert netns.pinned_pid(path) is None, path


@pytest.mark.parametrize(
    "path", ["/run/netns/acme", "/var/run/netns/acme", "/run/docker/netns/abc", "/proc", "/"]
)
def test_paths_outside_proc_pid_are_not_pinned(path):
    assert netns.pinned_pid(path) is None


def test_a_path_into_another_process_files_waits_and_is_followed_not_pinned(pid):
    """/proc/PID/root/run/netns/x names a file that may appear and be replaced while PID
    lives (a reviewer: pinned, a missing one was 'gone' for good)."""
    assert netns.pinned_pid(f"/proc/{pid}/root/run/netns/x") is None
    assert netns.pinned_pid(f"/proc/{pid}/ns/uts") is None
