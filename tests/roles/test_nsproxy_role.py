"""The nsproxy role and the nsproxy_instance module against the real daemon, in a sandbox.

One sandbox for the whole file: its own network namespace with two tenant namespaces (acme and
globex, both 10.0.0.250/24) and upstream HTTP servers on 127.0.0.1, and overlay mounts on /etc,
/opt and /var/log so the role can create its user, virtualenv, unit, config and logs without
touching this machine. The role installs the daemon offline from a local wheelhouse (the
sandbox has no network at all), and the instance runs supervised (no systemd as PID 1 here).
Every check goes to the system: curl from inside a tenant, `nsproxy status`, files, processes.
The tests build on each other in file order (install first, removal last).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, changed_steps
from tests.roles.site_sandbox import UPSTREAM, VENV_BIN, ansible_env, ensure_wheelhouse
from tools.sandbox import Sandbox

SCRATCH = "/var/tmp/tenantnet-nsproxy-role"  # private tmpfs inside the sandbox
OVERLAID = ("/etc", "/opt", "/var/log")
NSPROXY = "/opt/nsproxy/bin/nsproxy"
CONFIG = "/etc/nsproxy/main.json"
SOCKET = "/run/nsproxy/main.sock"
CERT_DIR = "/etc/nsproxy/certs"
BACKENDS = {"a": 8081, "b": 8082}

# A client that loops on one tenant until a stop file appears (bounded in count and time) and
# reports how many requests failed or were answered by something else than expected.
CLIENT_LOOP = textwrap.dedent(
    """\
    import http.client, json, os, sys, time
    url_host, expect, stop_file, report = sys.argv[1:5]
    ok, failed, wrong = 0, [], 0
    deadline = time.monotonic() + 120
    while not os.path.exists(stop_file) and ok + len(failed) < 20000:
        if time.monotonic() > deadline:
            break
        try:
            conn = http.client.HTTPConnection(url_host, 80, timeout=5)
            conn.request("GET", "/loop")
            body = conn.getresponse().read().decode()
            conn.close()
            if expect in body:
                ok += 1
            else:
                wrong += 1
        except OSError as exc:
            failed.append(str(exc))
        time.sleep(0.01)
    json.dump({"ok": ok, "failed": failed, "wrong": wrong}, open(report, "w"))
    """
)


def tenant(name: str, backend: str) -> dict:
    """A tenant at 10.0.0.250:80 whose upstream is backend; acme also has HTTPS on 443 with
    the certificate the role deploys."""
    listeners = [{"listen": "10.0.0.250:80", "protocol": "http"}]
    if name == "acme":
        tls = {"certificates": [{"cert": f"{CERT_DIR}/acme.pem", "key": f"{CERT_DIR}/acme.key"}]}
        listeners.append({"listen": "10.0.0.250:443", "protocol": "https", "tls": tls})
    return {
        "name": name,
        "netns": name,
        "listeners": listeners,
        "routes": [{"host": "*", "path_prefix": "/", "upstream": "web"}],
        "upstreams": {"web": {"netns": None, "servers": [f"127.0.0.1:{BACKENDS[backend]}"]}},
    }


def instance(*tenants: dict, state: str = "started") -> dict:
    return {"name": "main", "state": state, "tenants": list(tenants)}


class Host:
    """The sandboxed host: runs the role, talks to tenants."""

    def __init__(self, sb: Sandbox, workdir: Path, wheelhouse: Path):
        self.sb = sb
        self.workdir = workdir
        self.wheelhouse = wheelhouse
        self.runs = 0
        # The daemon's source as of now: other work in the tree must not look like a new
        # release between two runs (that rightly reinstalls and restarts).
        # acme's certificate: one file from the controller (src), the key as a variable.
        self.cert = workdir / "acme.pem"
        key = workdir / "acme.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=acme.example", "-addext", "subjectAltName=DNS:acme.example",
             "-keyout", str(key), "-out", str(self.cert)],
            check=True, capture_output=True,
        )  # fmt: skip
        self.certificates = [
            {"dest": "acme.pem", "src": str(self.cert)},
            {"dest": "acme.key", "content": key.read_text()},
        ]
        self.source = workdir / "nsproxy-src"
        shutil.copytree(
            REPO / "src" / "nsproxy",
            self.source,
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"),
        )

    def playbook(self, instances=None, extra=None, flags=()) -> subprocess.CompletedProcess:
        """ansible-playbook with the role; returns the finished process (output captured)."""
        self.runs += 1
        variables = {
            "nsproxy_install_source": "offline",
            "nsproxy_wheelhouse_src": str(self.wheelhouse),
            "nsproxy_source_dir": str(self.source),
            "nsproxy_certificates": self.certificates,
            "nsproxy_instances": instances if instances is not None else [],
            "nsproxy_wait_timeout": 60,
        }
        variables.update(extra or {})
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
        env = ansible_env(
            ANSIBLE_PIPELINING="1",
            # Only the wheelhouse or index the role is given: no pip.conf of this machine.
            PIP_CONFIG_FILE="/dev/null",
        )
        argv = [str(VENV_BIN / "ansible-playbook"), str(play), "-e", f"@{vars_file}", *flags]
        return self.sb.run(argv, check=False, env=env)

    def converge(self, instances=None, extra=None) -> str:
        proc = self.playbook(instances, extra)
        assert proc.returncode == 0, f"playbook failed:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def curl(self, tenant_name: str, path: str = "/") -> subprocess.CompletedProcess:
        return self.sb.run(
            ["ip", "netns", "exec", tenant_name, "curl", "-sS", "--max-time", "5",
             f"http://10.0.0.250{path}"],
            check=False,
        )  # fmt: skip

    def answer(self, tenant_name: str, path: str = "/") -> str:
        proc = self.curl(tenant_name, path)
        assert proc.returncode == 0, f"curl in {tenant_name} failed: {proc.stderr}"
        return proc.stdout.strip()

    def status(self) -> dict:
        return json.loads(self.sb.run([NSPROXY, "status", "--socket", SOCKET, "--json"]).stdout)

    def config_bytes(self) -> bytes:
        return self.sb.run(["cat", CONFIG], text=False).stdout

    @contextlib.contextmanager
    def looping_client(self, tenant_name: str, name: str):
        """CLIENT_LOOP on tenant_name while the block runs; yields the dict its report will
        fill in (ok, failed, wrong) once the block is done."""
        loop = self.workdir / "loop.py"
        loop.write_text(CLIENT_LOOP)
        stop, report = self.workdir / f"stop-{name}", self.workdir / f"report-{name}.json"
        client = self.sb.popen(
            ["ip", "netns", "exec", tenant_name, sys.executable, str(loop), "10.0.0.250",
             f"tenant={tenant_name}", str(stop), str(report)]
        )  # fmt: skip
        result: dict = {}
        try:
            time.sleep(0.5)  # let it run before the change, so the change falls inside the loop
            yield result
            time.sleep(0.5)
        finally:
            stop.touch()
            client.wait(timeout=60)
        result.update(json.loads(report.read_text()))


def recap_changed(output: str) -> int:
    line = next(line for line in output.splitlines() if line.startswith("localhost"))
    return int(line.split("changed=")[1].split()[0])


def overlay_system_dirs(sb: Sandbox) -> None:
    """Writable copies of /etc, /opt and /var/log inside the sandbox (writes land in its tmpfs)."""
    sb.sh(
        " && ".join(
            f"mkdir -p {SCRATCH}/{i}/upper {SCRATCH}/{i}/work && mount -t overlay "
            f"tenantnet-overlay -o lowerdir={d},upperdir={SCRATCH}/{i}/upper,"
            f"workdir={SCRATCH}/{i}/work {d}"
            for i, d in enumerate(OVERLAID)
        )
    )


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network and mount namespaces")
    wheelhouse = ensure_wheelhouse()
    workdir = tmp_path_factory.mktemp("nsproxy-role")
    with Sandbox(private=[SCRATCH]) as sb:
        overlay_system_dirs(sb)
        for name in ("acme", "globex"):
            sb.sh(
                f"ip netns add {name} && ip link add eth0 netns {name} type veth peer "
                f"name h-{name} && ip -n {name} link set lo up && ip -n {name} link set eth0 up"
                f" && ip link set h-{name} up && ip -n {name} addr add 10.0.0.250/24 dev eth0"
            )
        upstream = workdir / "upstream.py"
        upstream.write_text(UPSTREAM)
        for label, port in BACKENDS.items():
            sb.popen([sys.executable, str(upstream), label, str(port)])
        for port in BACKENDS.values():
            deadline = time.monotonic() + 20
            while sb.run(["curl", "-s", f"http://127.0.0.1:{port}/"], check=False).returncode:
                assert time.monotonic() < deadline, f"upstream on port {port} did not start"
                time.sleep(0.1)
        yield Host(sb, workdir, wheelhouse)


# -- install and serve -----------------------------------------------------------------------


def test_role_installs_the_daemon_and_serves_two_tenants(host):
    # Directories left from before, while the service user does not exist yet: --check must
    # predict the run (their owner and group change), not fail looking the user up.
    host.sb.sh("mkdir -p /etc/nsproxy/certs /var/log/nsproxy && ! getent passwd nsproxy")
    instances = [instance(tenant("acme", "a"), tenant("globex", "a"))]
    check = host.playbook(instances, flags=["--check"])
    assert check.returncode == 0, f"--check failed:\n{check.stdout[-6000:]}"
    output = host.converge(instances)
    assert changed_steps(check.stdout) == changed_steps(output)
    assert "instances run as supervised" in output  # no systemd here, and the role says so
    assert host.answer("acme", "/x") == "backend=a tenant=acme path=/x"
    assert host.answer("globex", "/y") == "backend=a tenant=globex path=/y"

    https = host.sb.run(
        ["ip", "netns", "exec", "acme", "curl", "-sS", "--max-time", "5", "--cacert",
         str(host.cert), "--resolve", "acme.example:443:10.0.0.250", "https://acme.example/tls"],
        check=False,
    )  # fmt: skip
    assert https.returncode == 0, https.stderr
    assert https.stdout.strip() == "backend=a tenant=acme path=/tls"

    status = host.status()
    listeners = {t["name"]: [lis["state"] for lis in t["listeners"]] for t in status["tenants"]}
    assert listeners == {"acme": ["bound", "bound"], "globex": ["bound"]}
    # Certificate and key: root's, 0600 (the binder reads them; the workers get the bytes).
    for name in ("acme.pem", "acme.key"):
        info = host.sb.sh(f"stat -c '%a %U %G' {CERT_DIR}/{name}").stdout.split()
        assert info == ["600", "root", "root"], name
    # The workers run as the service user with no capability; the binder as root.
    uid = host.sb.sh("id -u nsproxy").stdout.strip()
    workers = [w["pid"] for w in status["workers"]]
    assert workers
    for pid in workers:
        fields = dict(
            line.split(":\t", 1)
            for line in host.sb.run(["cat", f"/proc/{pid}/status"]).stdout.splitlines()
        )
        assert fields["Uid"].split() == [uid] * 4
        assert int(fields["CapEff"], 16) == int(fields["CapBnd"], 16) == 0
    assert host.sb.run(["cat", f"{CERT_DIR}/acme.pem"]).stdout == host.cert.read_text()
    # The daemon came from the offline install, in its own virtualenv, with the extra.
    pkgs = host.sb.run(["/opt/nsproxy/bin/python", "-m", "pip", "list", "--format=json"]).stdout
    names = {p["name"].lower() for p in json.loads(pkgs)}
    assert {"nsproxy", "httptools", "uvloop"} <= names
    # Config: 0640, group nsproxy; pid file and log of the supervised instance.
    info = host.sb.sh(f"stat -c '%a %U %G' {CONFIG}").stdout.split()
    assert info == ["640", "root", "nsproxy"]
    assert host.sb.sh("getent passwd nsproxy").stdout.split(":")[6].strip() == "/usr/sbin/nologin"
    pid = int(host.sb.sh("cut -d' ' -f1 /run/nsproxy/main.pid").stdout)
    assert host.sb.run(["kill", "-0", str(pid)], check=False).returncode == 0
    assert host.sb.sh("test -s /var/log/nsproxy/main.log", check=False).returncode == 0


def test_second_run_changes_nothing(host):
    generation = host.status()["generation"]
    check = host.playbook([instance(tenant("acme", "a"), tenant("globex", "a"))], flags=["--check"])
    assert check.returncode == 0 and changed_steps(check.stdout) == [], check.stdout[-4000:]
    output = host.converge([instance(tenant("acme", "a"), tenant("globex", "a"))])
    assert recap_changed(output) == 0, output
    assert host.status()["generation"] == generation


def test_new_package_content_is_reinstalled_and_upgrades_the_instance_in_place(host):
    instances = [instance(tenant("acme", "a"), tenant("globex", "a"))]
    pid = host.sb.sh("cut -d' ' -f1 /run/nsproxy/main.pid").stdout.strip()
    before = host.status()
    # Caches and pip's build metadata in a source checkout are not a new version.
    (host.source / "nsproxy" / "__pycache__").mkdir(exist_ok=True)
    (host.source / "nsproxy" / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"\0cache")
    (host.source / "nsproxy.egg-info").mkdir(exist_ok=True)
    (host.source / "nsproxy.egg-info" / "PKG-INFO").write_text("Name: nsproxy\n")
    assert recap_changed(host.converge(instances)) == 0

    marker = f"# build marker {time.time_ns()}\n"
    with open(host.source / "nsproxy" / "__init__.py", "a") as f:
        f.write(marker)
    with host.looping_client("globex", "upgrade") as result:
        output = host.converge(instances)
    assert result["ok"] > 0 and result["failed"] == [] and result["wrong"] == 0, result
    assert "Install the daemon into the virtualenv" in output
    installed = host.sb.sh("cat /opt/nsproxy/lib/python3*/site-packages/nsproxy/__init__.py")
    assert installed.stdout.endswith(marker)
    # One archive went over, without the caches: it holds the package's files only.
    archive = host.sb.run(["tar", "tzf", "/opt/nsproxy/src/nsproxy.tar.gz"]).stdout.split()
    expected = sorted(
        str(p.relative_to(host.source))
        for p in host.source.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and "nsproxy.egg-info" not in p.parts
    )
    assert sorted(n.removeprefix("./") for n in archive if not n.endswith("/")) == expected
    # Upgraded in place: the same supervisor and binder, new workers, a new generation.
    assert host.sb.sh("cut -d' ' -f1 /run/nsproxy/main.pid").stdout.strip() == pid
    after = host.status()
    assert after["pid"] == before["pid"]
    assert after["binder"]["upgrades"] == before["binder"]["upgrades"] + 1
    assert not {w["pid"] for w in after["workers"]} & {w["pid"] for w in before["workers"]}
    assert host.answer("acme", "/after-upgrade") == "backend=a tenant=acme path=/after-upgrade"
    assert recap_changed(host.converge(instances)) == 0


def test_installed_unit_file_passes_systemd_analyze_verify(host):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    unit = host.sb.run(["cat", "/etc/systemd/system/nsproxy@.service"]).stdout
    for line in (
        "Type=notify",
        "ExecReload=/opt/nsproxy/bin/nsproxy reload --config /etc/nsproxy/%i.json",
        "Restart=on-failure",
        "LimitNOFILE=1048576",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictNamespaces=net",
        "ProtectProc=invisible",
        "CapabilityBoundingSet=CAP_SYS_ADMIN CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID "
        "CAP_SETPCAP CAP_KILL CAP_SYS_NICE",
    ):
        assert line in unit.splitlines(), f"missing {line!r}"
    # The binder runs as root with that bounding set only: no User=, nothing ambient.
    assert not [line for line in unit.splitlines() if line.startswith(("User=", "Ambient"))]
    assert "PrivateNetwork" not in unit.replace("PrivateNetwork= /", "")
    proc = host.sb.sh(
        "mkdir -p /tmp/unit-check && cp /etc/systemd/system/nsproxy@.service "
        "/tmp/unit-check/nsproxy@main.service && "
        "systemd-analyze verify --man=no /tmp/unit-check/nsproxy@main.service",
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nsproxy@main.service" not in proc.stderr, proc.stderr


def test_an_instance_naming_a_proc_path_gets_the_ptrace_capability_and_only_then(host):
    dropin = "/etc/systemd/system/nsproxy@main.service.d/proc-paths.conf"
    sleeper = host.sb.popen(["ip", "netns", "exec", "globex", "sleep", "600"])
    try:
        time.sleep(0.3)
        by_pid = dict(tenant("globex", "a"), netns=f"/proc/{sleeper.pid}/ns/net")
        before = host.status()["pid"]
        host.converge([instance(tenant("acme", "a"), by_pid)])
        text = host.sb.run(["cat", dropin]).stdout
        assert "CapabilityBoundingSet=CAP_SYS_PTRACE" in text.splitlines()
        assert host.answer("globex", "/pinned") == "backend=a tenant=globex path=/pinned"
        assert host.status()["pid"] != before  # a capability comes with a new process
        host.converge([instance(tenant("acme", "a"), tenant("globex", "a"))])
        assert host.sb.run(["test", "-e", dropin], check=False).returncode != 0
        assert host.answer("globex", "/named") == "backend=a tenant=globex path=/named"
    finally:
        sleeper.kill()
        sleeper.wait()


# -- change, check mode, diff ----------------------------------------------------------------


def test_check_mode_shows_the_tenant_diff_and_changes_nothing(host):
    before, generation = host.config_bytes(), host.status()["generation"]
    proc = host.playbook(
        [instance(tenant("acme", "b"), tenant("globex", "a"))], flags=("--check", "--diff")
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tenant acme (changed: routes" not in proc.stdout  # routes are equal...
    assert "tenant acme (changed: upstreams)" in proc.stdout  # ...the upstream's server moved
    assert '"127.0.0.1:8082"' in proc.stdout
    assert "tenant globex" not in proc.stdout
    assert host.config_bytes() == before
    assert host.status()["generation"] == generation
    assert host.answer("acme") == "backend=a tenant=acme path=/"


def test_route_change_reloads_while_the_other_tenant_keeps_serving(host):
    pid_before = host.status()["pid"]
    generation = host.status()["generation"]
    with host.looping_client("globex", "reload") as result:
        acme_api = dict(
            tenant("acme", "a"),
            routes=[
                {"host": "*", "path_prefix": "/api", "upstream": "api"},
                {"host": "*", "path_prefix": "/", "upstream": "web"},
            ],
            upstreams={
                "web": {"netns": None, "servers": ["127.0.0.1:8081"]},
                "api": {"netns": None, "servers": ["127.0.0.1:8082"]},
            },
        )
        output = host.converge([instance(acme_api, tenant("globex", "a"))])
        assert host.answer("acme", "/api/v1") == "backend=b tenant=acme path=/api/v1"
        assert host.answer("acme", "/other") == "backend=a tenant=acme path=/other"
    assert result["ok"] > 0
    assert result["failed"] == [] and result["wrong"] == 0, result
    status = host.status()
    assert status["pid"] == pid_before  # reloaded in place, not restarted
    assert status["generation"] > generation
    assert recap_changed(output) == 1, output  # only the instance task


def test_bad_tenant_data_is_refused_and_the_running_instance_untouched(host):
    before, status_before = host.config_bytes(), host.status()
    broken = dict(tenant("globex", "a"), listeners=[{"listen": "nowhere", "protocol": "http"}])
    proc = host.playbook([instance(tenant("acme", "a"), broken)])
    assert proc.returncode != 0
    assert "nsproxy check refused the config" in proc.stdout
    assert "tenant 'globex'" in proc.stdout and "listen" in proc.stdout
    assert host.config_bytes() == before
    status = host.status()
    assert (status["pid"], status["generation"]) == (
        status_before["pid"],
        status_before["generation"],
    )
    assert host.answer("globex") == "backend=a tenant=globex path=/"
    assert host.answer("acme", "/api/x") == "backend=b tenant=acme path=/api/x"


def test_removing_a_tenant_closes_its_listener_only(host):
    host.converge([instance(tenant("acme", "a"))])
    assert host.curl("globex").returncode != 0  # nothing listens in globex any more
    assert host.answer("acme") == "backend=a tenant=acme path=/"
    assert [t["name"] for t in host.status()["tenants"]] == ["acme"]


def test_state_absent_removes_everything(host):
    pid = int(host.sb.sh("cut -d' ' -f1 /run/nsproxy/main.pid").stdout)
    host.converge([instance(tenant("acme", "a"))], extra={"nsproxy_state": "absent"})
    assert host.curl("acme").returncode != 0
    assert host.sb.run(["kill", "-0", str(pid)], check=False).returncode != 0
    for path in (
        "/opt/nsproxy",
        "/etc/nsproxy",
        "/etc/systemd/system/nsproxy@.service",
        "/var/log/nsproxy",
        "/run/nsproxy",
    ):
        assert host.sb.run(["test", "-e", path], check=False).returncode != 0, f"{path} remains"
    assert host.sb.run(["getent", "passwd", "nsproxy"], check=False).returncode != 0
    assert host.sb.run(["getent", "group", "nsproxy"], check=False).returncode != 0
    # And a second removal has nothing left to do.
    output = host.converge([], extra={"nsproxy_state": "absent"})
    assert recap_changed(output) == 0, output


# -- install from a package index ------------------------------------------------------------


def test_install_from_a_package_index(tmp_path):
    """nsproxy_install_source: index, against a PEP 503 index served on the sandbox's loopback
    (made from the wheelhouse): the role's pip must fetch the dependencies from it."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network and mount namespaces")
    wheelhouse = ensure_wheelhouse()
    simple = tmp_path / "index" / "simple"
    for wheel in wheelhouse.glob("*.whl"):
        project = wheel.name.split("-")[0].lower().replace("_", "-")
        (simple / project).mkdir(parents=True, exist_ok=True)
        shutil.copy(wheel, simple / project / wheel.name)
    with Sandbox(private=[SCRATCH]) as sb:
        overlay_system_dirs(sb)
        log = tmp_path / "index.log"
        with open(log, "w") as out:
            sb.popen(
                [sys.executable, "-m", "http.server", "8765", "--bind", "127.0.0.1",
                 "--directory", str(tmp_path / "index")],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while sb.run(["curl", "-sf", "http://127.0.0.1:8765/simple/"], check=False).returncode:
            assert time.monotonic() < deadline, "the index did not start"
            time.sleep(0.1)
        host = Host(sb, tmp_path, wheelhouse)
        host.converge(
            [],
            extra={
                "nsproxy_install_source": "index",
                "nsproxy_pip_index_url": "http://127.0.0.1:8765/simple/",
                "nsproxy_wheelhouse_src": "",
            },
        )
        pkgs = sb.run(["/opt/nsproxy/bin/python", "-m", "pip", "list", "--format=json"]).stdout
        assert {"nsproxy", "httptools", "uvloop"} <= {p["name"].lower() for p in json.loads(pkgs)}
        assert sb.run([NSPROXY, "--version"]).stdout.startswith("nsproxy ")
        assert sb.run(["test", "-e", "/opt/nsproxy/wheelhouse"], check=False).returncode != 0
    served = log.read_text()
    assert "GET /simple/httptools/" in served and "GET /simple/uvloop/" in served
