#!/usr/bin/env python3
"""Run commands inside a throwaway network and mount namespace.

Every test and demo of this repository that creates network objects runs here, so that
the machine's own interfaces, routes and /run are never touched:

* a new network namespace, with only ``lo`` (up);
* a new mount namespace (private propagation) with a fresh ``sysfs`` on ``/sys`` and a
  private tmpfs on ``/run`` (so ``/run/netns`` names, ``/run/docker.sock``, pid files and
  ``/run/systemd`` are the sandbox's own);
* optional further private tmpfs directories (``--private /etc/nsproxy``). A directory that
  does not exist yet is made inside the sandbox only: its nearest existing parent gets an
  overlay whose writable layer is in the sandbox's ``/run``, so nothing appears on the
  machine's filesystem;
* optionally a Docker engine of its own (``--docker``): ``dockerd`` started inside the
  sandbox with private ``/var/lib/docker`` and ``/etc/docker``, and a tiny local image
  ``tenantnet/busybox`` imported from Debian's busybox-static (there is no registry).

A *holder* process keeps the namespaces alive; commands enter them with ``nsenter``.
Closing the sandbox ends every process that belongs to it (see ``Sandbox.processes``): the
ones in its network, mount or UTS namespace, the ones in any network namespace named inside
it (``ip netns exec``, Docker containers), and all their descendants, whatever namespaces
those made for themselves (a nested PID namespace included). Then nothing holds its namespaces and
mounts any more, and they vanish. Used as a library (``with Sandbox() as sb: sb.run([...])``)
by pytest fixtures, and as a command for whole runs::

    tools/sandbox.py [--docker] [--private DIR]... -- ansible-playbook ...

Why no PID namespace: the processes a test starts keep the PIDs the test sees (a test reads
``/proc/<pid>`` of the daemon it started, from outside), and ``popen`` returns the command's
own process, so signals reach it; ``nsenter --pid`` would fork and leave a parent in between.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

BUSYBOX = "/bin/busybox"
IMAGE = "tenantnet/busybox:latest"

# The holder runs as the first process of the new namespaces. It prepares the mounts,
# says "ready", and then waits for its stdin to close: if the owner dies, so does it.
# A --private DIR that does not exist is made in an overlay of its nearest existing parent (the
# overlay's writable layer lives in the sandbox's /run), never on the machine's filesystem.
_HOLDER = r"""
set -e
mount --make-rprivate /
mount -t tmpfs -o mode=0755 tenantnet-run /run
mkdir -p /run/netns /run/lock /run/.tenantnet-sandbox
# A fresh sysfs shows this netns's interfaces; keep the cgroup tree (dockerd needs it).
if mountpoint -q /sys/fs/cgroup; then
  mkdir -p /run/.cgroup && mount --rbind /sys/fs/cgroup /run/.cgroup
  mount -t sysfs sysfs /sys && mount --move /run/.cgroup /sys/fs/cgroup && rmdir /run/.cgroup
else
  mount -t sysfs sysfs /sys
fi
layers=0
for d in "$@"; do
  if [ ! -d "$d" ]; then
    parent=$(dirname "$d")
    while [ ! -e "$parent" ]; do parent=$(dirname "$parent"); done
    case $(findmnt -n -o SOURCE --target "$parent") in
      tenantnet-*) ;;  # already a mount of this sandbox: writes there stay inside
      *)
        if [ "$parent" = / ]; then
          echo "--private $d: it does not exist and its parent is /, which the sandbox does" \
               "not overlay; create $d first or choose a directory under an existing one"
          exit 1
        fi
        layers=$((layers + 1))
        layer=/run/.tenantnet-sandbox/layer$layers
        mkdir -p "$layer/upper" "$layer/work"
        mount -t overlay tenantnet-layer \
          -o "lowerdir=$parent,upperdir=$layer/upper,workdir=$layer/work" "$parent" ;;
    esac
    mkdir -p "$d"
  fi
  mount -t tmpfs -o mode=0755 tenantnet-private "$d"
done
ip link set lo up
echo ready
exec cat >/dev/null
"""

# The sandbox's own namespaces (the UTS one only marks its processes, see Sandbox.processes).
NAMESPACES = ("--net", "--mount", "--uts")

# Where the sandbox's own dockerd writes its log (inside the sandbox's /run).
DOCKERD_LOG = "/run/.tenantnet-sandbox/dockerd.log"


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
            ["unshare", *NAMESPACES, "--", "sh", "-c", _HOLDER, "holder", *self.private],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.holder.stdout.readline().strip()
        if line != "ready":
            err = self.holder.stderr.read()
            self.holder.kill()
            self.holder.wait()
            self.holder = None
            hint = "" if os.geteuid() == 0 else " (it needs root)"
            raise SandboxError(f"sandbox did not start{hint}: {line} {err}".strip())
        self.pid = self.holder.pid
        if self.docker:
            self._start_docker()

    def close(self) -> None:
        """End every process of the sandbox (``processes``): SIGTERM, up to 5 s, then SIGKILL,
        sweeping again until none is left (a supervisor may restart what it lost); then the
        holder, whose exit drops the namespaces and every mount made inside."""
        if not self.holder:
            return
        self._end(signal.SIGTERM, grace=5)
        for _sweep in range(20):
            if not self._end(signal.SIGKILL, grace=2):
                break
        for child in self._children:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
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

    def _end(self, sig: int, grace: float) -> bool:
        """Send ``sig`` to every process of the sandbox and wait up to ``grace`` seconds for
        them to exit. Returns whether there was any."""
        victims = self.processes()
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in victims):
            time.sleep(0.05)
        return bool(victims)

    def processes(self) -> list[int]:
        """PIDs of the live processes that belong to the sandbox, the holder excepted: those in
        its UTS, network or mount namespace, those in a network namespace named inside it
        (``/run/netns``, ``/run/docker/netns``: ``ip netns exec``, containers), and every
        descendant of one of them. The UTS namespace exists only to mark the sandbox's
        processes: ``ip netns exec`` and ``unshare --net --mount`` leave it as it is, so a
        daemon that went to a network and mount namespace of its own and lost its parent is
        still found. The calling process and its ancestors are never listed."""
        netns = {_ns_inode(self.pid, "net")} | self._named_netns()
        own = {kind: _ns_inode(self.pid, kind) for kind in ("uts", "mnt")}
        table = _process_table()
        members = {
            pid
            for pid, (_ppid, spaces) in table.items()
            if spaces["net"] in netns or any(spaces[k] == own[k] for k in own)
        }
        children: dict[int, list[int]] = {}
        for pid, (ppid, _spaces) in table.items():
            children.setdefault(ppid, []).append(pid)
        queue = list(members)
        while queue:
            for child in children.get(queue.pop(), ()):
                if child not in members:
                    members.add(child)
                    queue.append(child)
        spared = {self.pid, *_ancestors(os.getpid())}
        return sorted(members - spared)

    def _named_netns(self) -> set[int]:
        """Inodes of the network namespaces named inside the sandbox (seen through the
        holder's root: the names live in the sandbox's own /run)."""
        found = set()
        for directory in ("run/netns", "run/docker/netns"):
            with contextlib.suppress(OSError):
                for entry in os.scandir(f"/proc/{self.pid}/root/{directory}"):
                    with contextlib.suppress(OSError):
                        found.add(os.stat(entry.path).st_ino)
        return found

    @property
    def netns_path(self) -> str:
        """Path of the sandbox's root network namespace (for setns / pyroute2)."""
        return f"/proc/{self.pid}/ns/net"

    # -- running things ----------------------------------------------------------------
    def command(self, argv: list[str], cwd: str | None = None) -> list[str]:
        """The argv that runs ``argv`` inside the sandbox."""
        wd = cwd or os.getcwd()
        return ["nsenter", f"--target={self.pid}", *NAMESPACES, f"--wd={wd}", "--", *argv]

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
        dockerd = "exec dockerd --iptables=false --ip6tables=false --bridge=none"
        self.popen(["sh", "-c", f'{dockerd} >"$0" 2>&1', DOCKERD_LOG])
        deadline = time.monotonic() + 60
        while self.run(["docker", "info"], check=False).returncode != 0:
            if time.monotonic() > deadline:
                log = self.run(["tail", "-n", "20", DOCKERD_LOG], check=False).stdout
                raise SandboxError(f"dockerd did not start; the end of its log:\n{log}")
            time.sleep(0.3)
        self.import_busybox_image()

    def import_busybox_image(self) -> None:
        """Build ``tenantnet/busybox`` from busybox-static with ``docker import`` (the root
        file system is put together in memory: nothing is written outside the sandbox)."""
        if not os.path.exists(BUSYBOX):
            raise SandboxError(f"{BUSYBOX} missing: install Debian's busybox-static")
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            tar.add(BUSYBOX, arcname="bin/busybox")
            for tool in ("sh", "sleep", "ip", "ifconfig", "httpd", "nc", "cat", "echo", "ls"):
                link = tarfile.TarInfo(f"bin/{tool}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
        self.run(
            ["docker", "import", "-c", 'CMD ["/bin/sh"]', "-", IMAGE],
            input=archive.getvalue(),
            text=False,
        )


def _ns_inode(pid: int, kind: str) -> int | None:
    """Inode of the ``kind`` (net, mnt, uts) namespace of ``pid``; None if it cannot be read (the
    process is gone, or a zombie)."""
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()
    except OSError:
        return None


def _process_table() -> dict[int, tuple[int, dict[str, int | None]]]:
    """Every live (not zombie) process: pid -> (parent pid, {"net"|"mnt"|"uts": ns inode})."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        fields = _stat_fields(pid)
        if not fields or fields[0] == b"Z":
            continue
        spaces = {kind: _ns_inode(pid, kind) for kind in ("net", "mnt", "uts")}
        table[pid] = (int(fields[1]), spaces)
    return table


def _ancestors(pid: int) -> list[int]:
    """``pid`` and its parent, grandparent, ... up to PID 1."""
    chain = []
    while pid > 1 and pid not in chain:
        chain.append(pid)
        fields = _stat_fields(pid)
        if not fields:
            break
        pid = int(fields[1])
    return chain


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (exited, its parent has not waited yet) is dead, so that
    nobody waits 5 s per signal for it."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] != b"Z"


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
