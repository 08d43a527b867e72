"""What an operator relies on, against the real daemon (binder and workers) in the sandbox: the
values of the exported metrics (summed over workers, checked against what real clients sent and
received), /healthz and /ready, SIGUSR1 and reload reopening the logs, the journald priority
prefix and JSON daemon logs, the systemd watchdog (a fake notify socket), and process titles.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest
from processes import status_fields, wait_until
from prometheus_client.parser import text_string_to_metric_families

from tests.nsproxy.conftest import ADDR, WORKERS, http_tenant

METRICS_ADDR = "127.0.0.1:9108"


def scrape(proxy) -> dict:
    """{(sample name, frozenset of label pairs): value} of one real scrape (curl)."""
    proc = proxy.sb.run(["curl", "-sS", "--max-time", "10", f"http://{METRICS_ADDR}/metrics"])
    assert proc.returncode == 0, proc.stderr
    out = {}
    for family in text_string_to_metric_families(proc.stdout):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    """The one sample of ``name`` with exactly these labels (KeyError names what is missing)."""
    key = (name, frozenset(labels.items()))
    if key not in samples:
        near = sorted(str(dict(k[1])) for k in samples if k[0] == name)
        raise KeyError(f"{name}{labels} not in the scrape; {name} has: {near[:20]}")
    return samples[key]


def get(proxy, path: str) -> tuple[int, str]:
    """(status, body) of GET path on the metrics listener, with curl."""
    proc = proxy.sb.run(
        ["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", f"http://{METRICS_ADDR}{path}"]
    )
    body, _, code = proc.stdout.rpartition("\n")
    return int(code), body.strip()


def proc_stat(proxy, pid: int) -> list[str]:
    """Fields 3.. of /proc/PID/stat (after the command name)."""
    stat = proxy.sb.run(["cat", f"/proc/{pid}/stat"]).stdout
    return stat[stat.rindex(")") + 2 :].split()


def worker_pids(proxy) -> list[int]:
    return sorted(w["pid"] for w in proxy.status_json()["workers"] if w["state"] == "serving")


# -- metrics values ----------------------------------------------------------------------------


def two_tenants(proxy, **top):
    """acme: http to an echo upstream; globex: http to a dead server (502) and a tcp listener
    to the echo upstream."""
    proxy.add_netns("acme", "globex")
    proxy.start_echo("echo", "127.0.0.1:9811")
    acme = http_tenant("acme", ["127.0.0.1:9811"])
    globex = http_tenant("globex", ["127.0.0.1:9"])  # nothing listens on port 9
    globex["listeners"].append({"listen": f"{ADDR}:7000", "protocol": "tcp", "upstream": "tcp"})
    globex["upstreams"]["tcp"] = {"netns": None, "servers": ["127.0.0.1:9811"]}
    proxy.write_config([acme, globex], metrics={"listen": METRICS_ADDR}, **top)


def test_metrics_count_what_clients_sent_and_received(proxy):
    two_tenants(proxy)
    started = time.time()
    proxy.start()
    sizes = []  # bytes each acme client received (head and body), as curl counted them
    for args in (
        [f"http://{ADDR}/ok"],
        [f"http://{ADDR}/?status=503"],
        ["--data-binary", "@-", f"http://{ADDR}/post"],
    ):
        proc = proxy.sb.run(
            ["ip", "netns", "exec", "acme", "curl", "-sS", "--max-time", "10", "-o", "/dev/null",
             "-w", "%{http_code} %{size_header} %{size_download}", *args],
            input="x" * 1000,
        )  # fmt: skip
        code, head, body = proc.stdout.split()
        sizes.append(int(head) + int(body))
        assert code in ("200", "503"), proc.stdout + proc.stderr
    dead = proxy.curl("globex", "-o", "/dev/null", "-w", "%{http_code}", f"http://{ADDR}/")
    assert dead.stdout == "502", proxy.log()
    request = b"GET /tcp HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    tcp = proxy.python(
        "globex",
        "import socket, sys\n"
        f"s = socket.create_connection(({ADDR!r}, 7000), timeout=5)\n"
        f"s.sendall({request!r})\n"
        "n = 0\n"
        "while (chunk := s.recv(65536)):\n"
        "    n += len(chunk)\n"
        "print(n)\n",
    )
    tcp_received = int(tcp.stdout)
    time.sleep(0.3)  # the relay's end is counted when both sides have closed

    m = scrape(proxy)
    assert value(m, "nsproxy_requests_total", tenant="acme", code="2xx") == 2
    assert value(m, "nsproxy_requests_total", tenant="acme", code="5xx") == 1
    assert value(m, "nsproxy_requests_total", tenant="acme", code="4xx") == 0
    assert value(m, "nsproxy_requests_total", tenant="globex", code="5xx") == 1
    assert value(m, "nsproxy_errors_total", tenant="acme") == 1
    assert value(m, "nsproxy_errors_total", tenant="globex") == 1
    # Bytes: the request bodies in, every byte of the answers (heads included) out.
    assert value(m, "nsproxy_received_bytes_total", tenant="acme", protocol="http") == 1000
    assert value(m, "nsproxy_sent_bytes_total", tenant="acme", protocol="http") == sum(sizes)
    assert value(m, "nsproxy_received_bytes_total", tenant="acme", protocol="tcp") == 0
    assert value(m, "nsproxy_connections_total", tenant="acme", protocol="http") == 3
    # tcp: every byte, both ways, and the connection.
    assert value(m, "nsproxy_connections_total", tenant="globex", protocol="tcp") == 1
    assert value(m, "nsproxy_connections_total", tenant="globex", protocol="http") == 1
    received = value(m, "nsproxy_received_bytes_total", tenant="globex", protocol="tcp")
    assert received == len(request)
    assert value(m, "nsproxy_sent_bytes_total", tenant="globex", protocol="tcp") == tcp_received
    assert value(m, "nsproxy_refused_connections_total", tenant="acme") == 0
    assert value(m, "nsproxy_active_connections", tenant="acme") == 0
    # Upstreams: the dead server is down, with the reason of its failure.
    assert value(m, "nsproxy_upstream_server_up", tenant="globex", upstream="app",
                 server="127.0.0.1:9") == 0  # fmt: skip
    assert value(m, "nsproxy_upstream_server_up", tenant="acme", upstream="app",
                 server="127.0.0.1:9811") == 1  # fmt: skip
    assert value(m, "nsproxy_upstream_errors_total", tenant="globex", upstream="app",
                 reason="connect") >= 1  # fmt: skip
    assert value(m, "nsproxy_upstream_failures_total", tenant="globex") >= 1
    # status names why: the error that marked the server down.
    app = next(u for u in proxy.tenant_status("globex")["upstreams"] if u["name"] == "app")
    assert app["servers"] == [
        {"address": "127.0.0.1:9", "healthy": False, "last_error": "Connection refused"}
    ]
    # Listeners: serving, one gauge per state.
    for tenant, listen, protocol in (
        ("acme", f"{ADDR}:80", "http"),
        ("globex", f"{ADDR}:80", "http"),
        ("globex", f"{ADDR}:7000", "tcp"),
    ):
        states = {
            state: value(
                m,
                "nsproxy_listener_state",
                tenant=tenant,
                listen=listen,
                protocol=protocol,
                state=state,
            )  # fmt: skip
            for state in ("serving", "waiting", "error")
        }
        assert states == {"serving": 1, "waiting": 0, "error": 0}, (tenant, listen)
    # The daemon.
    assert value(m, "nsproxy_config_generation") == 1
    assert value(m, "nsproxy_config_last_reload_successful") == 1
    applied = value(m, "nsproxy_config_last_reload_success_timestamp_seconds")
    assert started - 1 <= applied <= time.time()
    version = proxy.status_json()["binder"]["version"]
    builds = [k for k in m if k[0] == "nsproxy_build_info"]
    assert len(builds) == 1 and dict(builds[0][1])["version"] == version
    assert value(m, "nsproxy_workers") == WORKERS


def test_process_metrics_are_each_process_own(proxy):
    two_tenants(proxy)
    proxy.start()
    status = proxy.status_json()
    pids = {"binder": status["pid"]}
    pids.update({f"worker-{w['index']}": w["pid"] for w in status["workers"]})
    m = scrape(proxy)
    exported = {dict(k[1])["process"] for k in m if k[0] == "process_open_fds"}
    assert exported == set(pids)
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    for process, pid in pids.items():
        fds = len(proxy.sb.run(["ls", f"/proc/{pid}/fd"]).stdout.split())
        assert abs(value(m, "process_open_fds", process=process) - fds) <= 3, process
        limits = proxy.sb.run(["cat", f"/proc/{pid}/limits"]).stdout
        soft = int(re.search(r"Max open files\s+(\d+)", limits).group(1))
        assert value(m, "process_max_fds", process=process) == soft
        start = boot + int(proc_stat(proxy, pid)[19]) / ticks
        assert abs(value(m, "process_start_time_seconds", process=process) - start) < 0.05
        rss = int(proxy.sb.run(["cat", f"/proc/{pid}/statm"]).stdout.split()[1])
        rss *= os.sysconf("SC_PAGE_SIZE")
        assert 0.5 * rss < value(m, "process_resident_memory_bytes", process=process) < 2 * rss
        fields = proc_stat(proxy, pid)
        cpu_now = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime, read later
        assert 0 <= value(m, "process_cpu_seconds_total", process=process) <= cpu_now, process
    assert value(m, "process_cpu_seconds_total", process="binder") > 0


def test_reload_metrics_follow_applied_and_refused_reloads(proxy):
    two_tenants(proxy)
    proxy.start()
    first = value(scrape(proxy), "nsproxy_config_last_reload_success_timestamp_seconds")
    time.sleep(1.1)
    assert proxy.reload().returncode == 0
    m = scrape(proxy)
    assert value(m, "nsproxy_config_generation") == 2
    assert value(m, "nsproxy_config_last_reload_successful") == 1
    applied = value(m, "nsproxy_config_last_reload_success_timestamp_seconds")
    assert applied > first

    good = proxy.config_path.read_text()
    proxy.config_path.write_text('{"tenants": "not a list"}')
    assert proxy.reload().returncode != 0
    m = scrape(proxy)
    assert value(m, "nsproxy_config_last_reload_successful") == 0
    assert value(m, "nsproxy_config_generation") == 2
    assert value(m, "nsproxy_config_last_reload_success_timestamp_seconds") == applied

    proxy.config_path.write_text(good)
    assert proxy.reload().returncode == 0
    m = scrape(proxy)
    assert value(m, "nsproxy_config_last_reload_successful") == 1
    assert value(m, "nsproxy_config_generation") == 3


# -- /healthz and /ready -----------------------------------------------------------------------


def test_healthz_and_ready_follow_the_listeners(proxy):
    proxy.add_netns("acme", "globex")
    proxy.start_echo("echo", "127.0.0.1:9811")
    # Something else holds globex's port inside its namespace: its listener is in error.
    holder = proxy.sb.popen(
        ["ip", "netns", "exec", "globex", "python3", "-c",
         "import socket, sys, time\n"
         f"s = socket.socket(); s.bind(({ADDR!r}, 80)); s.listen()\n"
         "print('held', flush=True); time.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    proxy.helpers.append(holder)
    assert holder.stdout.readline().strip() == "held"
    tenants = [http_tenant("acme", ["127.0.0.1:9811"]), http_tenant("globex", ["127.0.0.1:9811"])]
    proxy.write_config(tenants, metrics={"listen": METRICS_ADDR})
    proxy.start(wait_bound=False)
    proxy.wait_for(
        lambda s: proxy.tenant_status("globex", s)["listeners"][0]["state"] == "error",
        "globex's listener in error",
    )
    assert get(proxy, "/healthz") == (200, "ok")
    code, body = get(proxy, "/ready")
    assert code == 503
    assert "globex" in body and f"{ADDR}:80" in body and "in use" in body, body
    m = scrape(proxy)
    labels = {"tenant": "globex", "listen": f"{ADDR}:80", "protocol": "http"}
    assert value(m, "nsproxy_listener_state", state="error", **labels) == 1
    assert value(m, "nsproxy_listener_state", state="serving", **labels) == 0

    holder.terminate()
    holder.wait(timeout=10)
    proxy.wait_for(proxy.all_bound, "globex's listener bound after the port was freed", 30)
    code, body = get(proxy, "/ready")
    assert code == 200, body
    assert get(proxy, "/nothing")[0] == 404


# -- logs --------------------------------------------------------------------------------------


def requests(proxy, tenant: str, first: int, count: int) -> None:
    for n in range(first, first + count):
        proc = proxy.curl(tenant, "-o", "/dev/null", "-w", "%{http_code}", f"http://{ADDR}/n/{n}")
        assert proc.stdout == "200", proc.stdout + proc.stderr


def logged_numbers(path) -> list[int]:
    if not path.exists():
        return []
    paths = [json.loads(line)["path"] for line in path.read_text().splitlines() if line]
    return sorted(int(p.rsplit("/", 1)[1]) for p in paths if p.startswith("/n/"))


def test_sigusr1_reopens_the_access_log_and_the_daemon_log(proxy):
    proxy.add_netns("acme")
    proxy.start_echo("echo", "127.0.0.1:9811")
    daemon_log = proxy.dir / "daemon.log"
    proxy.write_config([http_tenant("acme", ["127.0.0.1:9811"])], log={"path": str(daemon_log)})
    proxy.start()
    before = (proxy.status_json()["pid"], worker_pids(proxy))
    requests(proxy, "acme", 1, 5)
    time.sleep(1.5)  # the access log is flushed every second
    access_old = proxy.access_path.with_suffix(".log.1")
    daemon_old = daemon_log.with_suffix(".log.1")
    proxy.access_path.rename(access_old)
    daemon_log.rename(daemon_old)
    os.kill(before[0], signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not (proxy.access_path.exists() and daemon_log.exists()):
        assert time.monotonic() < deadline, f"no new files after SIGUSR1:\n{proxy.log()}"
        time.sleep(0.1)
    old_access, old_daemon = access_old.read_text(), daemon_old.read_text()
    requests(proxy, "acme", 6, 5)
    for pid in before[1]:  # a worker ignores it (only the binder reopens)
        os.kill(pid, signal.SIGUSR1)
    time.sleep(1.5)

    assert (proxy.status_json()["pid"], worker_pids(proxy)) == before, "a process was replaced"
    assert logged_numbers(access_old) == [1, 2, 3, 4, 5]
    assert logged_numbers(proxy.access_path) == [6, 7, 8, 9, 10]
    assert access_old.read_text() == old_access, "lines went to the renamed access log"
    assert daemon_old.read_text() == old_daemon, "lines went to the renamed daemon log"
    assert "SIGUSR1: logs reopened" in daemon_log.read_text()
    # Each worker writes its own lines to the new daemon log as well.
    proxy.stop()
    workers_lines = [line for line in daemon_log.read_text().splitlines() if "[worker " in line]
    assert {int(re.search(r"\[worker \d+ (\d+)\]", x).group(1)) for x in workers_lines} == set(
        before[1]
    ), daemon_log.read_text()


def _catches(pid: int, *signums: int) -> bool:
    """Whether the process has a handler for every one of ``signums`` (SigCgt, proc(5))."""
    caught = int(status_fields(pid)["SigCgt"], 16)
    return all(caught >> (signum - 1) & 1 for signum in signums)


def test_sighup_and_sigusr1_while_starting_are_acted_on_once_serving(proxy):
    """Both end a process by default (signal(7)), and a binder that is still starting serves no
    one yet but would take every tenant down with it. Sent once ``nsproxy run`` catches them,
    while the binder is held before it serves (stopped, SIGSTOP, the moment it catches them:
    nothing in its start waits on a file any more, a FIFO log included), they are kept: the
    daemon serves, then reloads and reopens its logs, in the same process."""
    proxy.add_netns("acme")
    proxy.start_echo("echo", "127.0.0.1:9811")
    daemon_log = proxy.dir / "daemon.log"
    proxy.write_config(
        [http_tenant("acme", ["127.0.0.1:9811"])],
        log={"path": str(daemon_log)},
        access_log=str(proxy.dir / "access.log"),
    )
    proxy.start(wait=False)
    pid = proxy.proc.pid
    deadline = time.monotonic() + 20
    while proxy.proc.poll() is None and not _catches(pid, signal.SIGHUP, signal.SIGUSR1):
        assert time.monotonic() < deadline, "nsproxy run did not catch SIGHUP and SIGUSR1"
    os.kill(pid, signal.SIGSTOP)  # at once: the binder is still starting (seconds to serve)
    try:
        assert proxy.proc.poll() is None, proxy.log()
        wait_until(lambda: status_fields(pid)["State"].startswith("T"), "the binder to stop")
        if daemon_log.exists() and "serving" in daemon_log.read_text():
            pytest.skip("the binder served before it could be stopped")
        os.kill(pid, signal.SIGHUP)
        os.kill(pid, signal.SIGUSR1)
    finally:
        os.kill(pid, signal.SIGCONT)
    time.sleep(0.2)  # room to die of them, were they not held
    assert proxy.proc.poll() is None, f"a signal while starting ended the binder:\n{proxy.log()}"
    proxy.wait_for(lambda s: s["generation"] == 2 and proxy.all_bound(s), "the held reload")
    time.sleep(0.5)  # room for a second reload, were one signal acted on twice
    assert proxy.proc.poll() is None and proxy.status_json()["pid"] == pid
    assert proxy.status_json()["generation"] == 2
    text = daemon_log.read_text()
    for line in (
        "SIGHUP came while starting: acting on it now",
        "SIGUSR1 came while starting: acting on it now",
        "SIGUSR1: logs reopened",
    ):
        assert text.count(line) == 1, text
    requests(proxy, "acme", 1, 1)


def test_sighup_throughout_an_upgrade_does_not_end_the_binder(proxy):
    """``nsproxy upgrade`` re-executes the binder in its process; SIGHUP every 20 ms all
    through it (a reload sent meanwhile) finds it serving, ignoring the signal (across the
    execve, until the new binder catches it) or holding it (until the new binder serves): the
    process lives on, and the new binder acts on what came while it started."""
    proxy.add_netns("acme")
    proxy.start_echo("echo", "127.0.0.1:9811")
    daemon_log = proxy.dir / "daemon.log"
    proxy.write_config([http_tenant("acme", ["127.0.0.1:9811"])], log={"path": str(daemon_log)})
    proxy.start()
    pid = proxy.status_json()["pid"]
    stop = threading.Event()

    def hup_every_20_ms():
        while not stop.wait(0.02):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    sender = threading.Thread(target=hup_every_20_ms)
    sender.start()
    try:
        upgrade = proxy.nsproxy("upgrade", "--socket", proxy.socket)
    finally:
        stop.set()
        sender.join()
    assert upgrade.returncode == 0, upgrade.stderr + proxy.log()
    assert proxy.proc.poll() is None, f"a SIGHUP ended the binder:\n{proxy.log()}"
    assert proxy.status_json()["pid"] == pid
    text = daemon_log.read_text()
    assert "SIGHUP came while starting: acting on it now" in text.split("upgrade: executing")[-1]
    requests(proxy, "acme", 1, 1)


def test_reload_reopens_the_access_log(proxy):
    proxy.add_netns("acme")
    proxy.start_echo("echo", "127.0.0.1:9811")
    proxy.write_config([http_tenant("acme", ["127.0.0.1:9811"])])
    proxy.start()
    requests(proxy, "acme", 1, 3)
    time.sleep(1.5)
    rotated = proxy.access_path.with_suffix(".log.1")
    proxy.access_path.rename(rotated)
    assert proxy.reload().returncode == 0
    requests(proxy, "acme", 4, 3)
    time.sleep(1.5)
    assert logged_numbers(rotated) == [1, 2, 3]
    assert logged_numbers(proxy.access_path) == [4, 5, 6]


def journal_env(proxy) -> dict:
    """JOURNAL_STREAM naming the daemon's stderr (the test's log file), as systemd sets it for
    a unit whose output goes to the journal (systemd.exec(5): device and inode of stderr)."""
    proxy.log_path.touch()
    st = os.stat(proxy.log_path)
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_under_journald_lines_carry_the_syslog_priority_and_no_timestamp(proxy):
    proxy.add_netns("acme")
    proxy.start_echo("echo", "127.0.0.1:9811")
    proxy.write_config([http_tenant("acme", ["127.0.0.1:9811"])])
    proxy.start(env=journal_env(proxy))
    good = proxy.config_path.read_text()
    proxy.config_path.write_text('{"tenants": 1}')
    assert proxy.reload().returncode != 0  # logged as an error
    proxy.config_path.write_text(good)
    proxy.stop()
    lines = [line for line in proxy.log_path.read_text().splitlines() if line]
    assert lines, "no log line"
    for line in lines:
        assert re.match(r"<[0-7]>nsproxy", line), line  # no timestamp: journald adds its own
    assert any(line.startswith("<3>") and "refused" in line for line in lines), lines
    assert any(line.startswith("<6>") and "serving" in line for line in lines), lines
    assert any(line.startswith("<6>nsproxy[worker 0 ") for line in lines), lines

    # Without a matching JOURNAL_STREAM (output elsewhere), no prefix.
    proxy.log_path.unlink()
    proxy.start(env={"JOURNAL_STREAM": "1:1"})
    proxy.stop()
    first = proxy.log_path.read_text().splitlines()[0]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", first), first


def test_json_daemon_log(proxy):
    proxy.add_netns("acme")
    proxy.start_echo("echo", "127.0.0.1:9811")
    proxy.write_config([http_tenant("acme", ["127.0.0.1:9811"])], log={"format": "json"})
    proxy.start(env=journal_env(proxy))
    proxy.stop()
    lines = [line for line in proxy.log_path.read_text().splitlines() if line]
    records = []
    for line in lines:
        match = re.match(r"<(\d)>(\{.*\})$", line)
        assert match, line
        records.append((int(match.group(1)), json.loads(match.group(2))))
    assert all(r["level"] in ("debug", "info", "warning", "error", "critical") for _, r in records)
    assert {priority for priority, r in records if r["level"] == "info"} == {6}
    assert any(r["process"].startswith("nsproxy[worker") for _, r in records)


# -- systemd watchdog --------------------------------------------------------------------------


class NotifySocket:
    """A stand-in for systemd's notify socket: a datagram socket the daemon sends to."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[tuple[float, str]] = []

    def collect(self, seconds: float) -> list[tuple[float, str]]:
        """Receive for ``seconds``; the (monotonic time, message) pairs received meanwhile."""
        got = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            got.append((time.monotonic(), data.decode()))
        self.messages += got
        return got

    def close(self):
        self.sock.close()


def pings(messages) -> list[float]:
    return [t for t, m in messages if "WATCHDOG=1" in m.split("\n")]


def test_watchdog_pings_only_while_the_workers_answer(proxy, tmp_path):
    proxy.add_netns("acme")
    proxy.start_echo("echo", "127.0.0.1:9811")
    proxy.write_config([http_tenant("acme", ["127.0.0.1:9811"])], workers=2)
    notify = NotifySocket(tmp_path / "notify")
    try:
        proxy.start(env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "2000000"})
        steady = notify.collect(4)
        assert any("READY=1" in m for _, m in notify.messages), notify.messages
        assert len(pings(steady)) >= 5, steady  # every second (half of WATCHDOG_USEC)

        hung = worker_pids(proxy)[0]
        os.kill(hung, signal.SIGSTOP)  # a hung event loop: no heartbeat any more
        stopped_at = time.monotonic()
        try:
            during = notify.collect(7)
        finally:
            os.kill(hung, signal.SIGCONT)
        resumed = notify.collect(4)
        late = [t - stopped_at for t in pings(during)]
        # Pings go on until the worker has been silent for 3 s (3 heartbeats), then stop.
        assert late and max(late) < 4.5, late
        assert [t for t in late if t > 4.5] == []
        assert len(pings(resumed)) >= 3, resumed
        assert proxy.proc.poll() is None
    finally:
        notify.close()


def test_no_watchdog_pings_without_watchdog_usec(proxy, tmp_path):
    proxy.add_netns("acme")
    proxy.start_echo("echo", "127.0.0.1:9811")
    proxy.write_config([http_tenant("acme", ["127.0.0.1:9811"])])
    notify = NotifySocket(tmp_path / "notify")
    try:
        proxy.start(env={"NOTIFY_SOCKET": notify.path})
        got = notify.collect(2.5)
        assert any("READY=1" in m for _, m in notify.messages)
        assert pings(got) == []
    finally:
        notify.close()


# -- process titles ----------------------------------------------------------------------------


def test_every_process_says_what_it_is_in_ps(proxy):
    proxy.add_netns("acme")
    proxy.start_echo("echo", "127.0.0.1:9811")
    proxy.write_config([http_tenant("acme", ["127.0.0.1:9811"])], workers=2)
    proxy.start()
    status = proxy.status_json()

    def args(pid: int) -> str:
        return proxy.sb.run(["ps", "-o", "args=", "-p", str(pid)]).stdout.strip()

    assert args(status["pid"]) == "nsproxy: binder test"
    titles = sorted(args(w["pid"]) for w in status["workers"])
    assert titles == ["nsproxy: worker 0 test", "nsproxy: worker 1 test"]
    # A reload (same processes) and the daemon's own commands still work with the new titles.
    assert proxy.reload().returncode == 0
    assert args(status["pid"]) == "nsproxy: binder test"
