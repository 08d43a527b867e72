"""A fleet of Docker hosts without VMs: three privileged containers inside one sandbox.

The sandbox (tools/sandbox.py, ``docker=True``) has its own network and mount namespace and its
own dockerd, so nothing here touches this machine or leaves it. The hosts are containers of a
Debian 12 image imported (``docker import``, no registry) from the root the VM stage builds
(molecule/default/vm/build-image.sh writes it as ``rootfs.tar`` next to the VM image, in the
same cache). Each container is a host: privileged, its own network namespace (``--network
none``: only ``lo``, plus the veth trunk NICs the inventory names), a private ``/run`` and
``/var/lib/docker``, and no systemd, so the roles run dockerd and nsproxy supervised, as on any
host without systemd.

The controller (ansible-playbook) runs in the sandbox and reaches the containers with the
``community.docker.docker`` connection through the sandbox's dockerd socket. It runs a copy of
``inventories/fleet`` whose ``hosts.yml`` says so, so a test can edit the copy (move a tenant)
without touching the repository.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import yaml

from tests.conftest import REPO
from tests.roles.site_sandbox import UPSTREAM, VENV_BIN, ansible_env, ensure_wheelhouse
from tools.sandbox import Sandbox, SandboxError

FLEET_INVENTORY = REPO / "inventories" / "fleet"
SANDBOX_VARS = REPO / "inventories" / "sandbox.yml"
BUILD_IMAGE = REPO / "molecule" / "default" / "vm" / "build-image.sh"
IMAGE = "tenantnet/debian12-host:fleet"
CONTAINER_PREFIX = "fleet-"
UPSTREAM_PORT = 8080
TENANT_ADDRESS = "10.0.0.250"
CLIENT_SCRIPT = "/root/fleet-client.py"

# A looping client for one host: one process that sends one request per fresh connection to each
# of the given tenants in turn, each connection made inside that tenant's namespace (setns for the
# socket() call only: a socket keeps the namespace it was created in). It runs inside the host
# container with the host's Python, bounded in requests and time, and writes its report when the
# stop file appears: answers per tenant, and every failure with its time (a refused or reset
# connection, a timeout, or an answer that is not the tenant's own identity).
CLIENT = textwrap.dedent(
    """\
    import ctypes, json, os, socket, sys, time
    CLONE_NEWNET = 0x40000000
    host, tenants, stop_file, report = sys.argv[1], sys.argv[2].split(","), sys.argv[3], sys.argv[4]
    libc = ctypes.CDLL(None, use_errno=True)
    root = os.open("/proc/self/ns/net", os.O_RDONLY)
    spaces = {t: os.open("/run/netns/" + t, os.O_RDONLY) for t in tenants}
    ok = {t: 0 for t in tenants}
    failed = []
    deadline = time.monotonic() + 900
    sent = 0
    def ask(tenant):
        if libc.setns(spaces[tenant], CLONE_NEWNET):
            raise OSError(ctypes.get_errno(), "setns")
        try:
            sock = socket.socket()
        finally:
            libc.setns(root, CLONE_NEWNET)
        with sock:
            sock.settimeout(5)
            sock.connect((%(address)r, 80))
            sock.sendall(b"GET /loop HTTP/1.1\\r\\nHost: fleet\\r\\nConnection: close\\r\\n\\r\\n")
            data = b""
            while len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        return data.decode("latin-1")
    while not os.path.exists(stop_file) and time.monotonic() < deadline and sent < 200000:
        for tenant in tenants:
            sent += 1
            try:
                answer = ask(tenant)
            except OSError as exc:
                failed.append([time.time(), tenant, str(exc)])
                continue
            want = "backend=%%s tenant=%%s " %% (host, tenant)
            if answer.startswith("HTTP/1.1 200") and want in answer:
                ok[tenant] += 1
            else:
                failed.append([time.time(), tenant, "answer: " + answer[:200]])
        time.sleep(0.02)
    with open(report + ".tmp", "w") as out:
        json.dump({"ok": ok, "failed": failed}, out)
    os.rename(report + ".tmp", report)
    """
) % {"address": TENANT_ADDRESS}


class PlaybookRun:
    """One ansible-playbook run: its output, wall time, the controller's CPU time (the
    ansible-playbook process tree with its docker CLI children), the hosts' CPU time (the
    modules, in the containers) and the PLAY RECAP of every host."""

    def __init__(self, proc: subprocess.CompletedProcess, seconds: float, cpu_seconds: float,
                 hosts_cpu_seconds: float):  # fmt: skip
        self.returncode = proc.returncode
        self.output = proc.stdout
        self.stderr = proc.stderr
        self.seconds = seconds
        self.cpu_seconds = cpu_seconds
        self.hosts_cpu_seconds = hosts_cpu_seconds
        self.recap = {
            host: {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counters)}
            for host, counters in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", proc.stdout, re.M)
        }

    def changed_tasks(self, host: str) -> list[str]:
        """Names of the tasks that reported changed on ``host`` (for assertion messages)."""
        found, current = [], None
        for line in self.output.splitlines():
            if line.startswith(("TASK [", "RUNNING HANDLER [")):
                current = line.split("[", 1)[1].rsplit("]", 1)[0]
            elif current and re.match(rf"^changed: \[{re.escape(host)}\]", line):
                found.append(current)
        return found

    def tail(self) -> str:
        return f"{self.output[-6000:]}\n{self.stderr[-2000:]}"


# Linux capabilities by number (linux/capability.h), as Docker names them.
CAPABILITIES = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
]


def host_privileges() -> tuple[list[str], str]:
    """``docker run`` options that make a container a host, and a sentence saying which.

    ``--privileged`` when this machine's root holds every capability. Where its bounding set
    lacks some (runc then refuses ``--privileged`` with "unable to apply caps"), the same minus
    those: every other capability, no seccomp or AppArmor profile, writable ``/proc/sys``
    (``systempaths=unconfined``); ``/sys`` is remounted writable inside the container."""
    status = Path("/proc/self/status").read_text()
    bounding = int(re.search(r"^CapBnd:\s*([0-9a-f]+)$", status, re.M).group(1), 16)
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    missing = [cap for bit, cap in enumerate(CAPABILITIES[: last + 1]) if not bounding >> bit & 1]
    if not missing:
        return ["--privileged"], "privileged"
    options = ["--cap-add", "ALL"]
    for cap in missing:
        options += ["--cap-drop", cap]
    for opt in ("seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"):
        options += ["--security-opt", opt]
    return options, f"privileged but for CAP_{', CAP_'.join(missing)} (root here lacks it)"


def image_rootfs() -> Path:
    """rootfs.tar of the VM stage's Debian 12 root (built on first use, then cached)."""
    proc = subprocess.run(["bash", str(BUILD_IMAGE)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"build-image.sh failed:\n{proc.stderr[-4000:]}")
    tar = Path(proc.stdout.strip().splitlines()[-1]) / "rootfs.tar"
    if not tar.is_file():
        raise RuntimeError(f"build-image.sh made no {tar}")
    return tar


def host_vars(inventory: Path, host: str) -> dict:
    """The variables an inventory copy gives ``host`` in its group_vars and host_vars files
    (a plain merge of the YAML files, host last: what the tests need to read, not Ansible's
    full precedence)."""
    merged: dict = {}
    for path in sorted((inventory / "group_vars" / "docker_hosts").glob("*.yml")):
        merged.update(yaml.safe_load(path.read_text()) or {})
    merged.update(yaml.safe_load((inventory / "host_vars" / f"{host}.yml").read_text()) or {})
    return merged


class Fleet:
    """The sandbox, its dockerd, the host containers, the controller's inventory copy."""

    def __init__(self, workdir: Path, hosts: tuple[str, ...]):
        self.workdir = workdir
        self.hosts = hosts
        self.inventory = workdir / "inventory"
        self.sb = Sandbox(docker=True)
        self.nsproxy_source = workdir / "nsproxy-src"
        self.runs = 0
        self.timings: dict[str, float] = {}
        self.privileges, self.privilege_note = host_privileges()

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, rootfs: Path) -> None:
        ensure_wheelhouse()
        shutil.copytree(FLEET_INVENTORY, self.inventory)
        hosts_file = self.inventory / "hosts.yml"
        hosts = yaml.safe_load(hosts_file.read_text())
        for name, hostvars in hosts["docker_hosts"]["hosts"].items():
            hostvars.update(
                ansible_connection="community.docker.docker",
                ansible_host=CONTAINER_PREFIX + name,
            )
        hosts_file.write_text(yaml.safe_dump(hosts))
        shutil.copytree(
            REPO / "src" / "nsproxy",
            self.nsproxy_source,
            ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"),
        )
        started = time.monotonic()
        self.sb.start()
        self.timings["sandbox and its dockerd"] = time.monotonic() - started
        started = time.monotonic()
        self.sb.run(["docker", "import", "-c", 'CMD ["/bin/bash"]', str(rootfs), IMAGE])
        self.timings["docker import of the host image"] = time.monotonic() - started
        started = time.monotonic()
        for host in self.hosts:
            self.add_host(host)
        self.timings["host containers up"] = time.monotonic() - started

    def add_host(self, host: str) -> None:
        """Run the container of ``host`` and give it the trunk NICs its inventory names."""
        self.sb.run(
            ["docker", "run", "-d", "--name", CONTAINER_PREFIX + host, "--hostname", host,
             *self.privileges, "--network", "none", "--init",
             "--tmpfs", "/run", "--tmpfs", "/var/lib/docker", "--tmpfs", "/tmp",
             IMAGE, "sleep", "infinity"]
        )  # fmt: skip
        self.exec(host, ["mount", "-o", "remount,rw", "/sys"])
        for nic in host_vars(self.inventory, host).get("docker_host_trunk_interfaces", []):
            self.exec(host, ["ip", "link", "add", nic, "type", "veth", "peer", "name", f"{nic}-sw"])
        self.put(host, CLIENT_SCRIPT, CLIENT)
        self.put(host, "/root/fleet-upstream.py", UPSTREAM)
        self.exec(host, ["sh", "-c", f"python3 /root/fleet-upstream.py {host} {UPSTREAM_PORT} "
                         ">/dev/null 2>&1 &"])  # fmt: skip
        deadline = time.monotonic() + 30
        probe = ["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{UPSTREAM_PORT}/"]
        while self.exec(host, probe, check=False).returncode:
            if time.monotonic() > deadline:
                raise SandboxError(f"the upstream on {host} did not start")
            time.sleep(0.2)

    def close(self) -> None:
        """Remove the containers (their PID namespaces take every process inside with them),
        then close the sandbox; kill any container init that survived."""
        inits = []
        for host in self.hosts:
            proc = self.sb.run(
                ["docker", "inspect", "-f", "{{.State.Pid}}", CONTAINER_PREFIX + host], check=False
            )
            pid = proc.stdout.strip() if proc.returncode == 0 else ""
            if pid.isdigit() and int(pid) > 1:  # 0: not running (and kill(0) means our group)
                inits.append(int(pid))
        with contextlib.suppress(SandboxError):
            names = [CONTAINER_PREFIX + h for h in self.hosts]
            self.sb.run(["docker", "rm", "-f", *names], check=False)
        self.sb.close()
        for pid in inits:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)

    # -- inside a host -------------------------------------------------------------------------
    def exec(self, host: str, argv: list[str], check: bool = True, **kw):
        return self.sb.run(["docker", "exec", CONTAINER_PREFIX + host, *argv], check=check, **kw)

    def put(self, host: str, path: str, content: str) -> None:
        self.sb.run(
            ["docker", "exec", "-i", CONTAINER_PREFIX + host, "sh", "-c", f"cat > {path}"],
            input=content,
        )

    def read(self, host: str, path: str) -> str:
        return self.exec(host, ["cat", path]).stdout

    def netns(self, host: str) -> set[str]:
        out = self.exec(host, ["ip", "-json", "netns"]).stdout
        return {entry["name"] for entry in json.loads(out)} if out.strip() else set()

    def ask(self, host: str, tenant: str, path: str = "/who") -> subprocess.CompletedProcess:
        """curl from inside ``tenant``'s namespace on ``host`` to the tenant's own address."""
        return self.exec(
            host,
            ["ip", "netns", "exec", tenant, "curl", "-sS", "--max-time", "5",
             f"http://{TENANT_ADDRESS}{path}"],
            check=False,
        )  # fmt: skip

    def nsproxy_status(self, host: str) -> dict:
        """``nsproxy status --json`` of the host's instance ``main``."""
        status = self.exec(
            host,
            ["/opt/nsproxy/bin/nsproxy", "status", "--socket", "/run/nsproxy/main.sock", "--json"],
        ).stdout
        return json.loads(status)

    def nsproxy_tenants(self, host: str) -> list[str]:
        return sorted(t["name"] for t in self.nsproxy_status(host)["tenants"])

    def new_build(self, label: str) -> None:
        """Change the controller's copy of the nsproxy source, so the role sees a new build."""
        marker = self.nsproxy_source / "nsproxy" / "__init__.py"
        marker.write_text(marker.read_text() + f"# fleet test: a new build ({label})\n")

    def hosts_cpu_seconds(self) -> float:
        """CPU seconds every host container has used so far (its cgroup: cgroup v1 cpuacct or
        cgroup v2 cpu.stat), to report a run's cost apart from the load of other jobs."""
        total = 0.0
        for host in self.hosts:
            cid = self.sb.run(["docker", "inspect", "-f", "{{.Id}}", CONTAINER_PREFIX + host])
            cid = cid.stdout.strip()
            v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage")
            v2 = Path(f"/sys/fs/cgroup/docker/{cid}/cpu.stat")
            if v1.exists():
                total += int(v1.read_text()) / 1e9
            elif v2.exists():
                usage = re.search(r"^usage_usec (\d+)$", v2.read_text(), re.M)
                total += int(usage.group(1)) / 1e6 if usage else 0.0
        return total

    def nsproxy_pid(self, host: str) -> int:
        return int(self.read(host, "/run/nsproxy/main.pid").split()[0])

    def tenants_placed(self, host: str) -> list[str]:
        """The tenants the inventory copy places on ``host`` (present ones)."""
        tenants = host_vars(self.inventory, host)["tenant_network_tenants"]
        return [t["name"] for t in tenants if t.get("state", "present") == "present"]

    # -- looping clients -----------------------------------------------------------------------
    @contextlib.contextmanager
    def looping_clients(self, tenants_by_host: dict[str, list[str]]):
        """One looping client per host over the given tenants while the block runs; yields a
        dict filled with each host's report (answers per tenant, failures) afterwards."""
        reports: dict[str, dict] = {}
        stop, report = "/run/fleet-client.stop", "/run/fleet-client.json"
        for host, tenants in tenants_by_host.items():
            self.exec(host, ["rm", "-f", stop, report])
            self.exec(host, ["sh", "-c", f"python3 {CLIENT_SCRIPT} {host} {','.join(tenants)} "
                             f"{stop} {report} >/run/fleet-client.log 2>&1 &"])  # fmt: skip
        time.sleep(1.0)  # every client has sent its first rounds
        try:
            yield reports
        finally:
            for host in tenants_by_host:
                self.exec(host, ["touch", stop])
            for host in tenants_by_host:
                deadline = time.monotonic() + 30
                while self.exec(host, ["test", "-e", report], check=False).returncode:
                    if time.monotonic() > deadline:
                        log = self.exec(host, ["cat", "/run/fleet-client.log"], check=False)
                        raise SandboxError(f"the client on {host} wrote no report: {log.stdout}")
                    time.sleep(0.2)
                reports[host] = json.loads(self.read(host, report))

    # -- the controller ------------------------------------------------------------------------
    def playbook(
        self,
        playbook: str = "site.yml",
        limit: str | None = None,
        forks: int | None = None,
        extra: dict | None = None,
    ) -> PlaybookRun:
        """ansible-playbook playbooks/<playbook> on the inventory copy, inside the sandbox."""
        self.runs += 1
        argv = [str(VENV_BIN / "ansible-playbook"), "-i", str(self.inventory),
                str(REPO / "playbooks" / playbook), "-e", f"@{SANDBOX_VARS}",
                "-e", f"nsproxy_source_dir={self.nsproxy_source}"]  # fmt: skip
        if extra:
            vars_file = self.workdir / f"extra-{self.runs}.json"
            vars_file.write_text(json.dumps(extra))
            argv += ["-e", f"@{vars_file}"]
        if limit:
            argv += ["--limit", limit]
        if forks:
            argv += ["--forks", str(forks)]
        env = ansible_env(
            PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}",
            ANSIBLE_PIPELINING="1",
            ANSIBLE_PYTHON_INTERPRETER="/usr/bin/python3",
        )
        hosts_used = self.hosts_cpu_seconds()
        started, used = time.monotonic(), _children_cpu()
        proc = self.sb.run(argv, check=False, env=env, cwd=str(REPO))
        seconds, cpu = time.monotonic() - started, _children_cpu() - used
        return PlaybookRun(proc, seconds, cpu, self.hosts_cpu_seconds() - hosts_used)

    def converge(self, **kw) -> PlaybookRun:
        run = self.playbook(**kw)
        assert run.returncode == 0, f"ansible-playbook failed:\n{run.tail()}"
        return run

    def edit_host_vars(self, host: str, change) -> None:
        """Apply ``change(data)`` to the inventory copy's host_vars/<host>.yml."""
        path = self.inventory / "host_vars" / f"{host}.yml"
        data = yaml.safe_load(path.read_text())
        change(data)
        path.write_text(yaml.safe_dump(data, sort_keys=False))


def _children_cpu() -> float:
    """CPU seconds (user + system) of every finished child process tree of this process."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
