"""The descriptor budget and the metrics listener at reload: a reload that cannot get the
descriptors it needs is refused whole, and a moved metrics listener is bound before the old
one closes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from conftest import ADDR, NSPROXY, http_tenant


def _metrics(proxy, port: int, path: str = "/healthz") -> subprocess.CompletedProcess:
    return proxy.sb.run(
        ["curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{port}{path}"], check=False
    )


def _wait_for_metrics(proxy, port: int) -> None:
    deadline = time.monotonic() + 10
    while not _metrics(proxy, port).stdout.startswith("ok"):
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.1)


HOLD = """
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("bound", flush=True)
time.sleep(60)
"""


def test_a_reload_moving_metrics_binds_the_new_socket_before_closing_the_old(proxy):
    proxy.add_netns("blue")
    proxy.start_echo("echo", "127.0.0.1:9801")
    tenants = [http_tenant("blue", ["127.0.0.1:9801"])]
    proxy.write_config(tenants, metrics={"listen": "127.0.0.1:9108"})
    proxy.start()
    assert _metrics(proxy, 9108).stdout.startswith("ok")
    holder = proxy.sb.popen([sys.executable, "-c", HOLD, "9109"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "bound"
        # 9109 is taken by another process: the metrics stay where they were.
        proxy.write_config(tenants, metrics={"listen": "127.0.0.1:9109"})
        assert proxy.reload().returncode == 0
        assert "metrics.listen 127.0.0.1:9109: Address already in use; the metrics stay on " \
            "127.0.0.1:9108" in proxy.log()  # fmt: skip
        assert _metrics(proxy, 9108).stdout.startswith("ok")
    finally:
        holder.kill()
        holder.wait()
    # 9109 is free now: reloading the same file tries the move again (the file did not
    # change, where the metrics are did).
    assert proxy.reload().returncode == 0
    _wait_for_metrics(proxy, 9109)
    assert _metrics(proxy, 9108).returncode == 7  # connection refused
    # A free address: served there, and the old one is closed.
    proxy.write_config(tenants, metrics={"listen": "127.0.0.1:9110"})
    assert proxy.reload().returncode == 0
    _wait_for_metrics(proxy, 9110)
    assert _metrics(proxy, 9109).returncode == 7
    # The same port on the wildcard overlaps the socket worker 0 still holds: refused, kept.
    proxy.write_config(tenants, metrics={"listen": "0.0.0.0:9110"})
    assert proxy.reload().returncode == 0
    assert "metrics.listen 0.0.0.0:9110: Address already in use; the metrics stay on " \
        "127.0.0.1:9110" in proxy.log()  # fmt: skip
    assert _metrics(proxy, 9110).stdout.startswith("ok")
    assert "Traceback" not in proxy.log()
    assert proxy.curl("blue", f"http://{ADDR}/", "-o", "/dev/null", "-w", "%{http_code}").stdout \
        == "200"  # fmt: skip
    assert os.path.exists(f"/proc/{proxy.status_json()['pid']}")


HOLD_ADMIN = """
import socket, sys, time
held = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    held.append(s)
print("held", flush=True)
time.sleep(60)
"""


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _listeners(count: int) -> list[dict]:
    return [{"listen": f"{ADDR}:{8000 + i}", "protocol": "http"} for i in range(count)]


def _start_limited(proxy) -> dict:
    """Tenant blue with one listener, one worker, the daemon under RLIMIT_NOFILE 300."""
    proxy.add_netns("blue")
    proxy.start_echo("echo", "127.0.0.1:9801")
    tenant = http_tenant("blue", ["127.0.0.1:9801"])
    tenant["listeners"] = _listeners(1)
    proxy.write_config([tenant], workers=1)
    proxy.start(wrap=["prlimit", "--nofile=300:300"])
    return tenant


def test_a_reload_the_binder_has_no_descriptors_for_is_refused_whole(proxy):
    tenant = _start_limited(proxy)
    pid = proxy.status_json()["pid"]
    # 100 listeners pass the check (300 descriptors), but the binder's descriptors are taken
    # by idle admin clients: only about 60 are free when the reload comes.
    holder = proxy.sb.popen(
        [sys.executable, "-c", HOLD_ADMIN, proxy.socket, str(240 - _open_fds(pid))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        tenant["listeners"] = _listeners(100)
        proxy.write_config([tenant], workers=1)
        assert proxy.nsproxy("check", str(proxy.config_path)).returncode == 0
        result = proxy.reload()
        assert result.returncode == 1, result.stdout + result.stderr
        assert "file descriptors: the new configuration needs 99 more in the binder" in (
            result.stdout + result.stderr
        )
    finally:
        holder.kill()
        holder.wait()
    status = proxy.status_json()
    assert status["generation"] == 1
    blue = proxy.tenant_status("blue", status)
    assert blue["state"] == "serving" and len(blue["listeners"]) == 1
    assert proxy.curl("blue", f"http://{ADDR}:8000/", "-o", "/dev/null", "-w", "%{http_code}")\
        .stdout == "200"  # fmt: skip
    # With the descriptors back, the same file applies whole.
    assert proxy.reload().returncode == 0
    proxy.wait_for(proxy.all_bound, "100 listeners bound")
    assert proxy.curl("blue", f"http://{ADDR}:8099/", "-o", "/dev/null", "-w", "%{http_code}")\
        .stdout == "200"  # fmt: skip
    log = proxy.log()
    assert "Traceback" not in log and "bad message" not in log
    assert "Too many open files (retrying)" not in log
    assert "killing it" not in log and "exited" not in log


def test_a_worker_that_cannot_be_started_for_want_of_descriptors_is_retried(proxy):
    proxy.add_netns("blue")
    proxy.start_echo("echo", "127.0.0.1:9801")
    proxy.write_config([http_tenant("blue", ["127.0.0.1:9801"])], workers=1)
    proxy.start(wrap=["prlimit", "--nofile=300:300"])
    status = proxy.status_json()
    pid, (worker,) = status["pid"], status["workers"]
    # One descriptor fewer than the binder holds: the dead worker's pidfd and channel give
    # back at most two, and a replacement's channel (a socketpair) needs two more.
    limit = _open_fds(pid) - 1
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={limit}:300"], check=True)
    os.kill(worker["pid"], 9)
    deadline = time.monotonic() + 10
    while "cannot start worker 0: Too many open files" not in proxy.log():
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.1)
    time.sleep(1.5)  # a few retries, still failing
    assert proxy.proc.poll() is None
    subprocess.run(["prlimit", f"--pid={pid}", "--nofile=300:300"], check=True)
    status = proxy.wait_for(
        lambda s: [w["state"] for w in s["workers"]] == ["serving"], "a replacement serving"
    )
    assert status["workers"][0]["pid"] != worker["pid"]
    assert proxy.curl("blue", f"http://{ADDR}/", "-o", "/dev/null", "-w", "%{http_code}")\
        .stdout == "200"  # fmt: skip
    assert "Traceback" not in proxy.log()


def test_a_reload_a_worker_has_no_descriptors_for_is_refused_whole(proxy):
    tenant = _start_limited(proxy)
    status = proxy.status_json()
    pid, (old,) = status["pid"], status["workers"]
    # A worker with a lower limit than the binder's (as if its connections held the rest):
    # the binder's is lowered while it forks a replacement, which keeps it, then raised.
    limit = _open_fds(pid) + 60
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={limit}:300"], check=True)
    os.kill(old["pid"], 9)
    status = proxy.wait_for(
        lambda s: (
            [w["state"] for w in s["workers"]] == ["serving"]
            and s["workers"][0]["pid"] != old["pid"]
        ),
        "a replacement serving",
    )
    subprocess.run(["prlimit", f"--pid={pid}", "--nofile=300:300"], check=True)
    (worker,) = status["workers"]
    time.sleep(2.5)  # a heartbeat or two tell the binder
    tenant["listeners"] = _listeners(100)
    proxy.write_config([tenant], workers=1)
    result = proxy.reload()
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"file descriptors: worker 0 (pid {worker['pid']}) holds " in result.stderr
    assert f"of its {limit} and the new listeners need 99 more there" in result.stderr
    status = proxy.status_json()
    assert status["generation"] == 1
    assert [w["pid"] for w in status["workers"]] == [worker["pid"]]
    assert proxy.curl("blue", f"http://{ADDR}:8000/", "-o", "/dev/null", "-w", "%{http_code}")\
        .stdout == "200"  # fmt: skip
    log = proxy.log()
    assert "Traceback" not in log and "bad message" not in log
    assert log.count("killing it") == 1 and log.count("started") == 2  # the kill -9 only


def test_a_worker_whose_table_fills_after_its_heartbeat_is_replaced_not_lost(proxy):
    tenant = _start_limited(proxy)
    (old,) = proxy.status_json()["workers"]
    # Stopped, the worker sends no heartbeat: the binder still counts the room it had when
    # its limit is lowered (by its own user, as its connections would fill it).
    os.kill(old["pid"], signal.SIGSTOP)
    limit = _open_fds(old["pid"]) + 20
    subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         "prlimit", f"--pid={old['pid']}", f"--nofile={limit}:300"],
        check=True,
    )  # fmt: skip
    tenant["listeners"] = _listeners(40)
    proxy.write_config([tenant], workers=1)
    reload = proxy.sb.popen(
        [NSPROXY, "reload", "--socket", proxy.socket], stdout=subprocess.PIPE, text=True
    )
    time.sleep(1)
    os.kill(old["pid"], signal.SIGCONT)  # the serve message comes with its fd list cut
    out, _ = reload.communicate(timeout=60)
    assert reload.returncode == 0, out
    status = proxy.wait_for(
        lambda s: [(w["state"], w["generation"]) for w in s["workers"]] == [("serving", 2)],
        "the replacement serving generation 2",
    )
    assert status["workers"][0]["pid"] != old["pid"]
    assert proxy.curl("blue", f"http://{ADDR}:8039/", "-o", "/dev/null", "-w", "%{http_code}")\
        .stdout == "200"  # fmt: skip
    log = proxy.log()
    assert "the binder's serve message lost its descriptors" in log
    assert "has no descriptor left to receive the binder's: starting a replacement" in log
    assert "Traceback" not in log and "bad message" not in log and "killing it" not in log


HOLD_SLOW = f"""
import json, socket, sys, time
held = []
for _ in range(int(sys.argv[1])):
    try:
        s = socket.create_connection(("{ADDR}", 80), timeout=2)
        s.sendall(b"GET /?delay=100 HTTP/1.1\\r\\nHost: e\\r\\n\\r\\n")
        held.append(s)
        time.sleep(0.01)
    except OSError:
        pass
print(json.dumps({{"held": len(held)}}), flush=True)
sys.stdin.read()
"""


def _needs(proxy) -> dict:
    code = ("import json, sys; from nsproxy import config, descriptors; "
            "print(json.dumps(descriptors.needs(config.load(sys.argv[1]))))")  # fmt: skip
    return json.loads(proxy.sb.run([sys.executable, "-c", code, str(proxy.config_path)]).stdout)


def test_a_tenant_filling_its_connections_under_a_tight_limit_leaves_the_others_theirs(proxy):
    """The limit is what ``check`` asks for plus 20 descriptors; tenant evil opens 240
    connections whose answers never come. The connection budget is what the worker's other
    descriptors (every worker's listening sockets, inherited, among them) leave: evil gets its
    share of it, never the worker's whole table, so good's clients are served, no message of
    the binder loses its descriptors, no worker is replaced, and a reload adding a listener
    applies. (The budget used to leave out all but one worker's listening sockets: the table
    filled, both workers were replaced and good's requests timed out.)"""
    proxy.add_netns("good", "evil")
    proxy.start_echo("echo", "127.0.0.1:9802")
    proxy.start_echo("evilup", "127.0.0.1:9801", netns="evil")
    good = http_tenant("good", ["127.0.0.1:9802"])
    good["listeners"] = [{"listen": f"{ADDR}:{8000 + i}", "protocol": "http"} for i in range(200)]
    evil = http_tenant("evil", ["127.0.0.1:9801"], upstream_netns="evil")
    timeouts = {"response_head": 120, "read": 120}
    proxy.write_config([good, evil], workers=2, timeouts=timeouts)
    limit = _needs(proxy)["worker"] + 20
    assert proxy.sb.run(["prlimit", f"--nofile={limit}:{limit}", NSPROXY, "check",
                         str(proxy.config_path)], check=False).returncode == 0  # fmt: skip
    proxy.start(wrap=["prlimit", f"--nofile={limit}:{limit}"])
    workers = [w["pid"] for w in proxy.status_json()["workers"]]
    holder = proxy.sb.popen(["ip", "netns", "exec", "evil", sys.executable, "-c", HOLD_SLOW, "240"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        held = json.loads(holder.stdout.readline())["held"]
        assert held > 0
        for i in range(0, 200, 25):
            code = proxy.curl("good", f"http://{ADDR}:{8000 + i}/", "-o", "/dev/null", "-w",
                              "%{http_code}", "--max-time", "10").stdout  # fmt: skip
            assert code == "200", (i, proxy.log()[-3000:])
        good["listeners"].append({"listen": f"{ADDR}:9000", "protocol": "http"})
        proxy.write_config([good, evil], workers=2, timeouts=timeouts)
        result = proxy.reload()
        assert result.returncode == 0, result.stdout + result.stderr
        assert proxy.curl("good", f"http://{ADDR}:9000/", "-o", "/dev/null", "-w",
                          "%{http_code}").stdout == "200"  # fmt: skip
    finally:
        holder.stdin.close()
        holder.kill()
        holder.wait()
    assert [w["pid"] for w in proxy.status_json()["workers"]] == workers
    log = proxy.log()
    for sign in ("Too many open files", "lost its descriptors", "has no descriptor left",
                 "killing it", "Traceback"):  # fmt: skip
        assert sign not in log, sign


def test_a_scrape_of_a_worker_whose_table_is_full_is_answered_503_without_a_traceback(proxy):
    """The metrics worker with room for the scrape's connection and nothing more: its snapshot
    memfd and the binder's answer (which carries descriptors) both fail. The scrape gets a 503,
    the log says why in one line each (no traceback), and once the table has room again the
    next scrape is served by the same worker."""
    proxy.add_netns("blue")
    proxy.start_echo("echo", "127.0.0.1:9801")
    proxy.write_config([http_tenant("blue", ["127.0.0.1:9801"])], workers=1,
                       metrics={"listen": "127.0.0.1:9111"})  # fmt: skip
    proxy.start()
    _wait_for_metrics(proxy, 9111)
    (worker,) = proxy.status_json()["workers"]
    scrape = ["curl", "-sS", "--max-time", "8", "-o", "/dev/null", "-w", "%{http_code}",
              "http://127.0.0.1:9111/metrics"]  # fmt: skip
    assert proxy.sb.run(scrape).stdout == "200"
    # Room for the scrape's connection alone, as if the worker's clients held the rest (set
    # by its own user, as the earlier test does: the soft limit only, lowered then raised).
    as_worker = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "prlimit",
                 f"--pid={worker['pid']}"]  # fmt: skip
    subprocess.run([*as_worker, f"--nofile={_open_fds(worker['pid']) + 1}:"], check=True)
    assert proxy.sb.run(scrape, check=False).stdout == "503", proxy.log()[-3000:]
    subprocess.run([*as_worker, "--nofile=256:"], check=True)
    assert proxy.sb.run(scrape).stdout == "200"
    log = proxy.log()
    assert "no snapshot for the binder: Too many open files" in log
    assert "metrics listener: the binder's answer to metrics? failed: its descriptors were cut" \
        in log  # fmt: skip
    assert "Traceback" not in log
    assert [w["pid"] for w in proxy.status_json()["workers"]] == [worker["pid"]]


def test_a_user_change_the_binder_has_no_descriptors_for_is_refused_whole(proxy):
    """A change of ``user`` starts every worker anew beside the old ones: a channel and a
    pidfd each in the binder. With fewer free than that and the reload's margin, the reload is
    refused before anything changes (it used to apply, then fail to start the new workers)."""
    tenant = _start_limited(proxy)
    status = proxy.status_json()
    pid, (worker,) = status["pid"], status["workers"]
    holder = proxy.sb.popen(
        [sys.executable, "-c", HOLD_ADMIN, proxy.socket, str(300 - 8 - _open_fds(pid))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        proxy.write_config([tenant], workers=1, user="daemon")
        result = proxy.reload()
        assert result.returncode == 1, result.stdout + result.stderr
        assert "file descriptors: the new configuration needs 2 more in the binder (listening " \
            "sockets: one per new listener and worker; a channel and a pidfd for each of the 1 " \
            "workers of the new user)" in result.stdout + result.stderr  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    status = proxy.status_json()
    assert status["generation"] == 1 and [w["pid"] for w in status["workers"]] == [worker["pid"]]
    assert proxy.curl("blue", f"http://{ADDR}:8000/", "-o", "/dev/null", "-w", "%{http_code}")\
        .stdout == "200"  # fmt: skip
    # With the descriptors back, the same file applies: the new user's worker serves.
    assert proxy.reload().returncode == 0
    proxy.wait_for(
        lambda s: (
            [(w["pid"] != worker["pid"], w["state"]) for w in s["workers"]] == [(True, "serving")]
        ),
        "the new user's worker serving",
    )
    log = proxy.log()
    assert "Traceback" not in log and "cannot start worker" not in log
