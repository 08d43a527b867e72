"""A sandboxed "host" for playbooks/site.yml: helpers shared by the role tests.

The sandbox (tools/sandbox.py) gets a private tmpfs for /var/lib/docker and for scratch files,
and overlays on /etc, /opt and /var/log, so the roles can install their files, users and units
without touching this machine. dockerd is started by the docker_host role itself (background
mode: no systemd as PID 1 here), inside the sandbox, and dies with it. A veth ``eth1`` stands in
for the trunk NIC of the example inventory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.conftest import REPO, ansible_env
from tools.sandbox import Sandbox

VENV_BIN = Path(sys.executable).parent
WHEELHOUSE = REPO / "build" / "nsproxy-wheelhouse"
SCRATCH = "/var/tmp/tenantnet-site"  # private tmpfs inside the sandbox
OVERLAID = ("/etc", "/opt", "/var/log")
EXAMPLE = REPO / "inventories" / "example"
SANDBOX_VARS = REPO / "inventories" / "sandbox.yml"

UPSTREAM = textwrap.dedent(
    """\
    import http.server, sys
    label, port = sys.argv[1], int(sys.argv[2])
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as nsproxy's upstream pools expect
        def log_message(self, *args):
            pass
        def do_GET(self):
            tenant = self.headers.get("X-Nsproxy-Tenant", "-")
            body = f"backend={label} tenant={tenant} path={self.path}\\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


def ensure_wheelhouse() -> Path:
    """The daemon's dependency wheels for the offline install (the sandbox has no network);
    downloaded from PyPI once into build/ (the nsproxy role tests share the same cache)."""
    wanted = ["setuptools>=61", "wheel", "httptools>=0.6", "uvloop>=0.19", "setproctitle>=1.3"]
    # Keyed by the list: a cache made for a shorter list is completed, not trusted.
    marker = WHEELHOUSE / f".complete-{hashlib.sha256(' '.join(wanted).encode()).hexdigest()[:12]}"
    if not marker.exists():
        WHEELHOUSE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [str(VENV_BIN / "pip"), "download", "-q", "--disable-pip-version-check",
             "--only-binary=:all:", "-d", str(WHEELHOUSE), *wanted],
            check=True,
        )  # fmt: skip
        marker.touch()
    return WHEELHOUSE


def recap(output: str) -> dict[str, int]:
    """The PLAY RECAP counters of the (single) host, e.g. {"ok": 30, "changed": 0, ...}."""
    lines = [line for line in output.splitlines() if re.match(r"^\S+\s+:\s+ok=", line)]
    assert lines, f"no PLAY RECAP in the output:\n{output[-3000:]}"
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", lines[-1])}


def task_results(output: str) -> dict[str, set[str]]:
    """Each task's result words in ansible-playbook's output, e.g. {"role : Task": {"ok"}}."""
    results, current = {}, None
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            current = line.split("[", 1)[1].rsplit("]", 1)[0]
            results.setdefault(current, set())
        elif current and (word := re.match(r"^(ok|changed|skipping|fatal|failed):", line)):
            results[current].add(word.group(1))
    return results


def changed_tasks(output: str) -> list[str]:
    """Names of the tasks that reported changed (for assertion messages)."""
    return [name for name, words in task_results(output).items() if "changed" in words]


class SiteHost:
    """The sandboxed host that site.yml converges."""

    def __init__(self, sb: Sandbox, workdir: Path):
        self.sb = sb
        self.workdir = workdir
        self.runs = 0
        # The daemon's source as it is now: the working tree may be edited while the tests run,
        # and a changed source would (rightly) make a re-run report changed.
        self.nsproxy_source = workdir / "nsproxy-src"
        shutil.copytree(
            REPO / "src" / "nsproxy",
            self.nsproxy_source,
            ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"),
        )

    def playbook(self, inventory=EXAMPLE, extra=None, flags=()) -> subprocess.CompletedProcess:
        """ansible-playbook playbooks/site.yml inside the sandbox (never raises)."""
        self.runs += 1
        argv = [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory),
                str(REPO / "playbooks" / "site.yml"), "-e", f"@{SANDBOX_VARS}",
                "-e", f"nsproxy_source_dir={self.nsproxy_source}"]  # fmt: skip
        if extra:
            vars_file = self.workdir / f"extra-{self.runs}.json"
            vars_file.write_text(json.dumps(extra))
            argv += ["-e", f"@{vars_file}"]
        env = ansible_env(PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
        return self.sb.run(argv + list(flags), check=False, env=env, cwd=str(REPO))

    def converge(self, **kw) -> str:
        proc = self.playbook(**kw)
        assert proc.returncode == 0, f"site.yml failed:\n{proc.stdout[-8000:]}\n{proc.stderr}"
        return proc.stdout

    def ip(self, *args, netns=None):
        return self.sb.ip_json(*args, netns=netns)

    def netns(self) -> set[str]:
        return {entry["name"] for entry in self.ip("netns")}

    def links(self, netns=None) -> dict[str, dict]:
        return {link["ifname"]: link for link in self.ip("link", netns=netns)}

    def read(self, path: str) -> str:
        return self.sb.run(["cat", path]).stdout

    def start_upstream(self, label: str, port: int, netns: str | None = None) -> None:
        script = self.workdir / "upstream.py"
        script.write_text(UPSTREAM)
        prefix = ["ip", "netns", "exec", netns] if netns else []
        self.sb.popen([*prefix, sys.executable, str(script), label, str(port)])
        probe = [*prefix, "curl", "-s", f"http://127.0.0.1:{port}/"]
        deadline = time.monotonic() + 20
        while self.sb.run(probe, check=False).returncode:
            assert time.monotonic() < deadline, f"upstream {label} on port {port} did not start"
            time.sleep(0.1)

    def curl(self, netns: str, url: str, *args: str) -> subprocess.CompletedProcess:
        return self.sb.run(
            ["ip", "netns", "exec", netns, "curl", "-sS", "--max-time", "5", *args, url],
            check=False,
        )


def open_site_host(workdir: Path, private=()) -> tuple[Sandbox, SiteHost]:
    """A started sandbox prepared as described in the module docstring."""
    sb = Sandbox(private=[SCRATCH, "/var/lib/docker", *private])
    sb.start()
    try:
        sb.sh(
            " && ".join(
                f"mkdir -p {SCRATCH}/{i}/upper {SCRATCH}/{i}/work && mount -t overlay "
                f"tenantnet-overlay -o lowerdir={d},upperdir={SCRATCH}/{i}/upper,"
                f"workdir={SCRATCH}/{i}/work {d}"
                for i, d in enumerate(OVERLAID)
            )
        )
        sb.sh("ip link add eth1 type veth peer name eth1-switch")
    except Exception:
        sb.close()
        raise
    return sb, SiteHost(sb, workdir)
