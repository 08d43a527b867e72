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


def test_a_path_into_another_process_files_is_pinned_and_followed_while_it_lives(pid):
    """/proc/PID/root/run/netns/x and /proc/PID/fd/N name a file that may appear and be
    replaced while PID lives (a reviewer: pinned and opened once, a missing one was 'gone'
    for good), and something else once PID is reused (a reviewer: '/proc/PID/fd/7' was
    followed into the next process of that PID, which held another tenant's namespace)."""
    for rest in ("root/run/netns/x", "fd/7", f"task/{pid}/fd/7", "cwd/x", "ns/uts"):
        assert netns.pinned_pid(f"/proc/{pid}/{rest}") == pid, rest
        assert netns.follows(f"/proc/{pid}/{rest}"), rest
    for rest in ("ns/net", f"task/{pid}/ns/net", f"task/{pid}/./ns//net"):
        assert netns.pinned_pid(f"/proc/{pid}/{rest}") == pid, rest
        assert not netns.follows(f"/proc/{pid}/{rest}"), rest
    assert netns.follows("/run/netns/acme")


def test_a_pinned_path_is_opened_again_only_through_the_process_first_pinned(pid, tmp_path):
    """The process a path was first pinned to is given back to ``acquire``: a PID that now
    belongs to another process (another start time) is refused as gone, before the path is
    looked up."""
    registry = netns.Registry()
    path = f"/proc/{pid}/ns/net"
    ns, pin = registry.acquire(path)
    first = (pin.pid, pin.start_time)
    pin.close()
    registry.release(ns)
    ns, pin = registry.acquire(path, first)  # the same process: opened
    pin.close()
    registry.release(ns)
    with pytest.raises(netns.NetnsError) as refused:
        registry.acquire(path, (pid, first[1] + 1))  # as if PID came back as another process
    assert refused.value.gone and f"process {pid} of {path} exited" in str(refused.value)
    assert registry.open_count() == 0


def test_a_missing_file_under_a_live_process_is_not_gone_and_names_the_process(pid):
    """A path into a live process's files that does not exist yet waits (not gone), and the
    error names the process it went through, for the caller to keep."""
    registry = netns.Registry()
    start = netns.process_start_time(pid)
    with pytest.raises(netns.NetnsError) as missing:
        registry.acquire(f"/proc/{pid}/root/run/netns/no-such-namespace")
    assert not missing.value.gone
    assert missing.value.process == (pid, start)
