"""The nsproxy role's operations pieces, against the real daemon in a sandbox: the supervisor as an
installed program with its own process title, the logrotate snippet (checked by logrotate
itself, and a forced rotation under load that must lose no access-log line), and the opt-in
copy of the shipped alert rules and dashboard.

Same setting as test_nsproxy_role.py: one sandbox for the file (its own network namespace, a
tenant namespace at 10.0.0.250, an upstream on 127.0.0.1, overlays on /etc, /opt and /var/log),
the role installed offline from the wheelhouse, the instance supervised (no systemd as PID 1).
The tests build on each other in file order.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.roles.site_sandbox import UPSTREAM, VENV_BIN, ansible_env, ensure_wheelhouse
from tools.sandbox import Sandbox

SCRATCH = "/var/tmp/tenantnet-nsproxy-ops"  # private tmpfs inside the sandbox
OVERLAID = ("/etc", "/opt", "/var/log")
SUPERVISOR = "/opt/nsproxy/bin/nsproxy-supervisor"
PID_FILE = "/run/nsproxy/main.pid"
ACCESS_LOG = "/var/log/nsproxy/main-access.log"
LOGROTATE = "/etc/logrotate.d/nsproxy"
RULES_DIR = "/etc/prometheus/rules.d"
DASHBOARDS_DIR = "/etc/grafana/dashboards/nsproxy"
MONITORING = REPO / "roles" / "nsproxy" / "files" / "monitoring"

# Numbered requests from inside the tenant, one at a time (bounded in count and time); writes
# which numbers were answered 200, so the access log can be checked line by line.
NUMBERED_CLIENT = textwrap.dedent(
    """\
    import http.client, json, sys, time
    first, count, report = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    answered, failed = [], []
    deadline = time.monotonic() + 120
    for n in range(first, first + count):
        if time.monotonic() > deadline:
            break
        try:
            conn = http.client.HTTPConnection("10.0.0.250", 80, timeout=5)
            conn.request("GET", f"/n/{n}")
            status = conn.getresponse().status
            conn.close()
            (answered if status == 200 else failed).append(n)
        except OSError:
            failed.append(n)
        time.sleep(0.005)
    json.dump({"answered": answered, "failed": failed}, open(report, "w"))
    """
)


def tenant() -> dict:
    return {
        "name": "acme",
        "netns": "acme",
        "listeners": [{"listen": "10.0.0.250:80", "protocol": "http"}],
        "routes": [{"host": "*", "path_prefix": "/", "upstream": "web"}],
        "upstreams": {"web": {"netns": None, "servers": ["127.0.0.1:8081"]}},
    }


def instance(**extra) -> dict:
    return {"name": "main", "tenants": [tenant()], "access_log": ACCESS_LOG, **extra}


class Host:
    def __init__(self, sb: Sandbox, workdir: Path, wheelhouse: Path):
        self.sb = sb
        self.workdir = workdir
        self.wheelhouse = wheelhouse
        self.runs = 0
        # The daemon's source as of now, without build leftovers (as test_nsproxy_role.py).
        self.source = workdir / "nsproxy-src"
        shutil.copytree(
            REPO / "src" / "nsproxy",
            self.source,
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"),
        )

    def converge(self, instances, extra=None) -> str:
        self.runs += 1
        variables = {
            "nsproxy_install_source": "offline",
            "nsproxy_wheelhouse_src": str(self.wheelhouse),
            "nsproxy_source_dir": str(self.source),
            "nsproxy_instances": instances,
            **(extra or {}),
        }
        vars_file = self.workdir / f"vars-{self.runs}.json"
        vars_file.write_text(json.dumps(variables))
        play = self.workdir / "play.yml"
        play.write_text(
            textwrap.dedent(
                f"""\
                - name: nsproxy role
                  hosts: localhost
                  connection: local
                  gather_facts: false
                  vars:
                    ansible_python_interpreter: {sys.executable}
                  roles:
                    - tenantnet.nsproxy.nsproxy
                """
            )
        )
        env = ansible_env(ANSIBLE_PIPELINING="1", PIP_CONFIG_FILE="/dev/null")
        argv = [str(VENV_BIN / "ansible-playbook"), str(play), "-e", f"@{vars_file}"]
        proc = self.sb.run(argv, check=False, env=env)
        assert proc.returncode == 0, f"playbook failed:\n{proc.stdout[-8000:]}\n{proc.stderr}"
        return proc.stdout

    def read(self, path: str) -> str:
        return self.sb.run(["cat", path]).stdout

    def exists(self, path: str) -> bool:
        return self.sb.run(["test", "-e", path], check=False).returncode == 0

    def supervisor_pid(self) -> int:
        return int(self.read(PID_FILE).split()[0])

    def requests(self, first: int, count: int, name: str):
        """Start the numbered client in the tenant; returns (process, report path)."""
        script = self.workdir / "numbered.py"
        script.write_text(NUMBERED_CLIENT)
        report = self.workdir / f"{name}.json"
        argv = ["ip", "netns", "exec", "acme", sys.executable, str(script), str(first), str(count)]
        return self.sb.popen([*argv, str(report)]), report


def recap_changed(output: str) -> int:
    line = next(line for line in output.splitlines() if line.startswith("localhost"))
    return int(line.split("changed=")[1].split()[0])


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network and mount namespaces")
    wheelhouse = ensure_wheelhouse()
    workdir = tmp_path_factory.mktemp("nsproxy-ops")
    with Sandbox(private=[SCRATCH]) as sb:
        sb.sh(
            " && ".join(
                f"mkdir -p {SCRATCH}/{i}/upper {SCRATCH}/{i}/work && mount -t overlay "
                f"tenantnet-overlay -o lowerdir={d},upperdir={SCRATCH}/{i}/upper,"
                f"workdir={SCRATCH}/{i}/work {d}"
                for i, d in enumerate(OVERLAID)
            )
        )
        sb.sh(
            "ip netns add acme && ip link add eth0 netns acme type veth peer name h-acme"
            " && ip -n acme link set lo up && ip -n acme link set eth0 up"
            " && ip link set h-acme up && ip -n acme addr add 10.0.0.250/24 dev eth0"
        )
        upstream = workdir / "upstream.py"
        upstream.write_text(UPSTREAM)
        sb.popen([sys.executable, str(upstream), "a", "8081"])
        deadline = time.monotonic() + 20
        while sb.run(["curl", "-s", "http://127.0.0.1:8081/"], check=False).returncode:
            assert time.monotonic() < deadline, "the upstream did not start"
            time.sleep(0.1)
        yield Host(sb, workdir, wheelhouse)


# -- supervisor --------------------------------------------------------------------------------


def test_supervisor_is_an_installed_program_named_in_ps(host):
    output = host.converge([instance()])
    assert "instances run as supervised" in output
    installed = host.sb.sh(f"stat -c '%a %U' {SUPERVISOR}").stdout.split()
    assert installed == ["755", "root"]
    assert host.read(SUPERVISOR) == (REPO / "roles/nsproxy/files/nsproxy_supervisor.py").read_text()

    pid = host.supervisor_pid()
    ps = host.sb.run(["ps", "-o", "args=", "-p", str(pid)]).stdout.strip()
    assert ps == "nsproxy-supervisor main"
    comm = host.sb.run(["ps", "-o", "comm=", "-p", str(pid)]).stdout.strip()
    assert comm == "nsproxy-supervisor main"[:15]
    # It is the program, not a fork of Ansible's (deleted) temporary module file.
    maps = host.read(f"/proc/{pid}/maps") + host.sb.sh(f"ls -l /proc/{pid}/fd").stdout
    assert "ansible" not in maps.lower() and "(deleted)" not in maps
    # The daemon is its child, says what it is (setproctitle, the role's "titles" extra), and
    # so do its workers; it serves.
    daemon = host.sb.run(["ps", "-o", "pid=", "--ppid", str(pid)]).stdout.split()
    assert len(daemon) == 1, daemon
    title = host.sb.run(["ps", "-o", "args=", "-p", daemon[0]]).stdout.strip()
    assert title == "nsproxy: binder main"
    workers = host.sb.run(["ps", "-o", "args=", "--ppid", daemon[0]]).stdout.splitlines()
    assert workers and all(re.fullmatch(r"nsproxy: worker \d+ main", w.strip()) for w in workers)
    answer = host.sb.run(
        ["ip", "netns", "exec", "acme", "curl", "-sS", "--max-time", "5", "http://10.0.0.250/x"]
    )
    assert answer.stdout.strip() == "backend=a tenant=acme path=/x"


def test_second_run_changes_nothing(host):
    output = host.converge([instance()])
    assert recap_changed(output) == 0, output


# -- logrotate ---------------------------------------------------------------------------------


def test_logrotate_snippet_names_the_access_log_and_passes_logrotate_debug(host):
    snippet = host.read(LOGROTATE)
    assert f"{ACCESS_LOG} {{" in snippet
    assert "nocreate" in snippet and "postrotate" in snippet
    assert f"cat {PID_FILE}" in snippet and 'kill -USR1 "$1"' in snippet
    assert "/var/log/nsproxy/main.log {" in snippet and "copytruncate" in snippet
    proc = host.sb.run(
        ["logrotate", "-d", "-s", f"{SCRATCH}/logrotate.state", LOGROTATE], check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert f"considering log {ACCESS_LOG}" in output
    assert "error" not in output.lower(), output


def test_forced_rotation_under_load_loses_no_access_log_line(host):
    """logrotate -f while a client sends numbered requests: every answered request has exactly
    one line, in the rotated file or the new one, and after the postrotate signal the old file
    gets no more lines (the daemon reopened: the daemon's SIGUSR1)."""
    daemon_before = host.sb.run(["ps", "-o", "pid=", "--ppid", str(host.supervisor_pid())])
    client, report = host.requests(1, 600, "rotation")
    deadline = time.monotonic() + 30
    while host.sb.run(["test", "-s", ACCESS_LOG], check=False).returncode:  # notifempty
        assert time.monotonic() < deadline, "no access-log line within 30 s"
        time.sleep(0.2)
    proc = host.sb.run(
        ["logrotate", "-f", "-s", f"{SCRATCH}/logrotate.state", LOGROTATE], check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    client.wait(timeout=150)
    result = json.loads(report.read_text())
    time.sleep(2.5)  # the access log is flushed every second
    old_after_rotation = host.read(f"{ACCESS_LOG}.1")
    time.sleep(1.5)
    after, _ = host.requests(10_001, 20, "after")
    after.wait(timeout=60)
    time.sleep(2.5)
    rotated = host.read(f"{ACCESS_LOG}.1")
    current = host.read(ACCESS_LOG) if host.exists(ACCESS_LOG) else ""

    assert result["failed"] == [], "requests failed during the rotation (did the daemon die?)"
    daemon_after = host.sb.run(["ps", "-o", "pid=", "--ppid", str(host.supervisor_pid())])
    assert daemon_after.stdout == daemon_before.stdout, "the daemon was restarted"
    paths = [
        json.loads(line).get("path") for line in (rotated + current).splitlines() if line.strip()
    ]
    numbers = sorted(int(p.split("/")[-1]) for p in paths if p and p.startswith("/n/"))
    expected = sorted(result["answered"] + list(range(10_001, 10_021)))
    assert numbers == expected, "access-log lines lost or doubled across the rotation"
    assert rotated == old_after_rotation, "lines went to the rotated file after the signal"
    assert current.count('"/n/10001"') == 1, "new requests are not logged to the new file"


# -- monitoring files --------------------------------------------------------------------------


def test_monitoring_files_are_installed_only_when_asked(host):
    assert not host.exists(RULES_DIR) and not host.exists(DASHBOARDS_DIR)  # default: off
    host.converge(
        [instance()],
        extra={
            "nsproxy_prometheus_rules_dir": RULES_DIR,
            "nsproxy_grafana_dashboards_dir": DASHBOARDS_DIR,
        },
    )
    rules = f"{RULES_DIR}/nsproxy-alerts.yml"
    dashboard = f"{DASHBOARDS_DIR}/nsproxy-dashboard.json"
    assert host.read(rules) == (MONITORING / "nsproxy-alerts.yml").read_text()
    assert host.read(dashboard) == (MONITORING / "nsproxy-dashboard.json").read_text()
    assert host.sb.sh(f"stat -c '%a %U' {rules} {dashboard}").stdout.split() == ["644", "root"] * 2
    check = host.sb.run(["promtool", "check", "rules", rules], check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_state_absent_removes_the_supervisor_snippet_and_monitoring_files(host):
    host.converge(
        [instance()],
        extra={
            "nsproxy_state": "absent",
            "nsproxy_prometheus_rules_dir": RULES_DIR,
            "nsproxy_grafana_dashboards_dir": DASHBOARDS_DIR,
        },
    )
    for path in (
        SUPERVISOR,
        LOGROTATE,
        f"{RULES_DIR}/nsproxy-alerts.yml",
        f"{DASHBOARDS_DIR}/nsproxy-dashboard.json",
    ):
        assert not host.exists(path), f"{path} remains"
    assert host.sb.run(["pgrep", "-f", "nsproxy-supervisor"], check=False).returncode != 0
