#!/usr/bin/env python3
"""Run commands inside a throwaway network and mount namespace.

Every test and demo of this repository that creates network objects runs here, so that
the machine's own interfaces, routes and /run are never touched:

* a new network namespace, with only ``lo`` (up);
* a new mount namespace (private propagation) with a fresh ``sysfs`` on ``/sys`` and a
  private tmpfs on ``/run`` (so ``/run/netns`` names, ``/run/docker.sock``, pid files and
  ``/run/systemd`` are the sandbox's own);
* optional further private tmpfs directories (``--private /etc/nsproxy``);
* optionally a Docker engine of its own (``--docker``): ``dockerd`` started inside the
  sandbox with private ``/var/lib/docker`` and ``/etc/docker``, and a tiny local image
  ``tenantnet/busybox`` imported from Debian's busybox-static (there is no registry).

A *holder* process keeps the namespaces alive; commands enter them with ``nsenter``.
Closing the sandbox kills every process left in its network namespace, so nothing
outlives it. Used as a library (``with Sandbox() as sb: sb.run([...])``) by pytest
fixtures, and as a command for whole runs::

    tools/sandbox.py [--docker] [--private DIR]... -- ansible-playbook ...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUSYBOX = "/bin/busybox"
IMAGE = "tenantnet/busybox:latest"

# The holder runs as the first process of the new namespaces. It prepares the mounts,
# says "ready", and then waits for its stdin to close: if the owner dies, so does it.
_HOLDER = r"""
set -e
mount --make-rprivate /
mount -t tmpfs -o mode=0755 tenantnet-run /run
mkdir -p /run/netns /run/lock
# A fresh sysfs shows this netns's interfaces; keep the cgroup tree (dockerd needs it).
if mountpoint -q /sys/fs/cgroup; then
  mkdir -p /run/.cgroup && mount --rbind /sys/fs/cgroup /run/.cgroup
  mount -t sysfs sysfs /sys && mount --move /run/.cgroup /sys/fs/cgroup && rmdir /run/.cgroup
else
  mount -t sysfs sysfs /sys
fi
for d in "$@"; do mkdir -p "$d"; mount -t tmpfs -o mode=0755 tenantnet-private "$d"; done
ip link set lo up
echo ready
exec cat >/dev/null
"""


class SandboxError(RuntimeError):
    """The sandbox could not be set up or a command inside it failed."""


class Sandbox:
    """A throwaway network + mount namespace. Use as a context manager."""

    def __init__(self, private: list[str] | tuple[str, ...] = (), docker: bool = False):
        self.private = list(private)
        self.docker = docker
        if docker:
            self.private += ["/var/lib/docker", "/etc/docker"]
        self.holder: subprocess.Popen | None = None
        self.pid = 0
        self._children: list[subprocess.Popen] = []

    # -- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        for tool in ("unshare", "nsenter", "ip"):
            if not shutil.which(tool):
                raise SandboxError(f"the sandbox needs '{tool}' (util-linux, iproute2)")
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--", "sh", "-c", _HOLDER, "holder", *self.private],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.holder.stdout.readline().strip()
        if line != "ready":
            err = self.holder.stderr.read()
            self.holder.kill()
            raise SandboxError(f"sandbox did not start (need root): {line} {err}".strip())
        self.pid = self.holder.pid
        if self.docker:
            self._start_docker()

    def close(self) -> None:
        """Kill everything running in the sandbox, then the holder."""
        if not self.holder:
            return
        victims = self.processes()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(_alive(p) for p in victims):
                time.sleep(0.05)
        for child in self._children:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
        self._children.clear()
        self.holder.stdin.close()
        try:
            self.holder.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.holder.kill()
            self.holder.wait()
        self.holder.stdout.close()
        self.holder.stderr.close()
        self.holder = None

    def processes(self) -> list[int]:
        """PIDs (other than the holder) whose network namespace is the sandbox's."""
        mine = _netns_inode(self.pid)
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != self.pid and _netns_inode(int(entry)) == mine:
                found.append(int(entry))
        return found

    @property
    def netns_path(self) -> str:
        """Path of the sandbox's root network namespace (for setns / pyroute2)."""
        return f"/proc/{self.pid}/ns/net"

    # -- running things ----------------------------------------------------------------
    def command(self, argv: list[str], cwd: str | None = None) -> list[str]:
        """The argv that runs ``argv`` inside the sandbox."""
        wd = cwd or os.getcwd()
        return ["nsenter", f"--target={self.pid}", "--net", "--mount", f"--wd={wd}", "--", *argv]

    def run(self, argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        """Run argv in the sandbox and wait; text output captured unless told otherwise."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        cwd = kw.pop("cwd", None)
        proc = subprocess.run(self.command(argv, cwd=cwd), check=False, **kw)
        if check and proc.returncode != 0:
            raise SandboxError(
                f"{' '.join(argv)} exited {proc.returncode}\n{proc.stdout or ''}{proc.stderr or ''}"
            )
        return proc

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        """Start argv in the sandbox without waiting (killed on close)."""
        cwd = kw.pop("cwd", None)
        child = subprocess.Popen(self.command(argv, cwd=cwd), **kw)
        self._children.append(child)
        return child

    def sh(self, script: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return self.run(["sh", "-c", script], check=check, **kw)

    def ip_json(self, *args: str, netns: str | None = None) -> list[dict]:
        """``ip -json ...`` inside the sandbox (optionally in one of its named netns)."""
        argv = ["ip", "-json"] + (["-n", netns] if netns else []) + list(args)
        out = self.run(argv).stdout
        return json.loads(out) if out.strip() else []

    # -- docker ------------------------------------------------------------------------
    def _start_docker(self) -> None:
        if not shutil.which("dockerd"):
            raise SandboxError("--docker needs dockerd (Debian package docker.io)")
        log = Path(tempfile.gettempdir()) / f"sandbox-dockerd-{self.pid}.log"
        with open(log, "w") as out:
            self.popen(
                ["dockerd", "--iptables=false", "--ip6tables=false", "--bridge=none"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while self.run(["docker", "info"], check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise SandboxError(f"dockerd did not start, see {log}")
            time.sleep(0.3)
        self.import_busybox_image()

    def import_busybox_image(self) -> None:
        """Build ``tenantnet/busybox`` from busybox-static with ``docker import``."""
        if not os.path.exists(BUSYBOX):
            raise SandboxError(f"{BUSYBOX} missing: install Debian's busybox-static")
        with tempfile.TemporaryDirectory() as root:
            os.makedirs(f"{root}/bin")
            shutil.copy(BUSYBOX, f"{root}/bin/busybox")
            for tool in ("sh", "sleep", "ip", "ifconfig", "httpd", "nc", "cat", "echo", "ls"):
                os.symlink("busybox", f"{root}/bin/{tool}")
            tar = subprocess.run(["tar", "-C", root, "-c", "."], capture_output=True, check=True)
            self.run(
                ["docker", "import", "-c", 'CMD ["/bin/sh"]', "-", IMAGE],
                input=tar.stdout,
                text=False,
            )


def _netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, parent has not waited yet) is dead: don't wait 5 s per signal for it
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--private",
        action="append",
        default=[],
        metavar="DIR",
        help="mount a private tmpfs on DIR inside the sandbox (repeatable)",
    )
    parser.add_argument(
        "--docker",
        action="store_true",
        help="start a Docker engine of the sandbox's own, with a busybox image",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- command and arguments")
    args = parser.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        parser.error("no command given (tools/sandbox.py -- CMD ...)")
    try:
        with Sandbox(private=args.private, docker=args.docker) as sandbox:
            return sandbox.run(cmd, check=False, capture_output=False).returncode
    except SandboxError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
