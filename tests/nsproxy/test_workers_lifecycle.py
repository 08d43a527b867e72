"""Workers share the load, die and are replaced, and are swapped by an upgrade: all under
looping clients that count every failed request."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ADDR, REPO, http_tenant
from processes import (
    Loops,
    needs_pids_cgroup,
    no_more_processes,
    pid_alive,
    ready_answer,
    wait_until,
    worker_pids,
)

TENANTS = ["t1", "t2", "t3"]


def _tenants(proxy, names=TENANTS, port=9400):
    proxy.add_netns(*names)
    proxy.start_echo("echo", f"127.0.0.1:{port}")
    return [http_tenant(name, [f"127.0.0.1:{port}"]) for name in names]


def _log_time(line: str) -> float:
    stamp = line.split(" nsproxy", 1)[0]
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_both_workers_serve_and_every_tenant_keeps_its_identity(proxy, tmp_path):
    names = [f"t{i}" for i in range(6)]
    proxy.write_config(_tenants(proxy, names), workers=2)
    proxy.start()
    loops = Loops(proxy, tmp_path, names, ADDR)
    time.sleep(3)
    results = loops.stop()
    for name, result in results.items():
        # The client checks each answer's X-Nsproxy-Tenant against its own namespace.
        assert result["fail"] == 0 and result["ok"] > 20, (name, result)
    workers = proxy.status_json()["workers"]
    assert len(workers) == 2
    accepted = [w["accepted"] for w in workers]
    assert all(n > 0 for n in accepted), f"connections accepted per worker: {accepted}"
    # Each worker has its own socket of every listener (an SO_REUSEPORT group): a worker is
    # woken for its own connections only, never for one another worker takes.
    wakeups = [(w["accept_wakeups"], w["accept_wakeups_empty"]) for w in workers]
    assert all(empty <= woken // 100 for woken, empty in wakeups), wakeups
    text = proxy.sb.run(["curl", "-sS", f"http://{ADDR}/"], check=False)  # host ns: no listener
    assert text.returncode != 0


def test_a_killed_worker_is_replaced_while_the_others_keep_serving(proxy, tmp_path):
    proxy.write_config(_tenants(proxy), workers=2, metrics={"listen": "127.0.0.1:9109"})
    proxy.start()
    loops = Loops(proxy, tmp_path, TENANTS, ADDR)
    time.sleep(1)
    before = proxy.status_json()
    killed = worker_pids(before)[0]
    index = next(w["index"] for w in before["workers"] if w["pid"] == killed)
    killed_at = time.time()
    os.kill(killed, signal.SIGKILL)

    def replacement():
        for w in proxy.status_json()["workers"]:
            if w["index"] == index and w["pid"] != killed and w["accepted"] > 0:
                return w
        return None

    new = wait_until(replacement, "a replacement worker accepting connections", step=0.1)
    time.sleep(1)
    results = loops.stop()
    serving = re.search(rf".* worker {index} \(pid {new['pid']}\) serving", proxy.log())
    assert serving, proxy.log()
    took = _log_time(serving.group(0)) - killed_at
    for name, result in results.items():
        # Only what was on the killed worker may fail: the request in flight there and the
        # keep-alive connection it held (at most two per client).
        assert result["fail"] <= 2 and result["ok"] > 20, (name, result, f"replaced in {took}")
    assert took < 5, f"the replacement served {took:.3f} s after the kill"
    assert f"worker {index} (pid {killed}) was killed by SIGKILL; starting a replacement" in (
        proxy.log()
    )
    metrics = proxy.sb.run(["curl", "-sS", "http://127.0.0.1:9109/metrics"]).stdout
    assert "nsproxy_worker_deaths_total 1" in metrics
    assert f'nsproxy_worker_accepted_total{{worker="{index}",pid="{new["pid"]}"}}' in metrics
    failed = sum(r["fail"] for r in results.values())
    print(f"replacement served {took:.3f} s after kill -9; failed requests: {failed}")


def test_a_reload_that_changes_the_number_of_workers_fails_no_request(proxy, tmp_path):
    tenants = _tenants(proxy)
    proxy.write_config(tenants, workers=1)
    proxy.start()
    loops = Loops(proxy, tmp_path, TENANTS, ADDR)
    time.sleep(0.5)
    _reload_workers(proxy, tenants, (3, 2), pause=1)
    results = loops.stop()
    for name, result in results.items():
        assert result["fail"] == 0 and result["ok"] > 20, (name, result, proxy.log())
    status = proxy.status_json()
    assert sorted(w["index"] for w in status["workers"] if w["state"] == "serving") == [0, 1]
    assert all(w["accepted"] > 0 for w in status["workers"] if w["state"] == "serving")


def _builds(tmp_path: Path, version: str, breaks_check: bool = False) -> tuple[Path, Path]:
    """Two installable builds of the daemon (copies of this package; the second with
    ``version``) and a ``current`` symlink to the first: PYTHONPATH=current is "installed"."""
    source = REPO / "src" / "nsproxy" / "nsproxy"
    builds = []
    for name in ("build-a", "build-b"):
        target = tmp_path / name / "nsproxy"
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        builds.append(target.parent)
    init = builds[1] / "nsproxy" / "__init__.py"
    init.write_text(re.sub(r'__version__ = ".*"', f'__version__ = "{version}"', init.read_text()))
    if breaks_check:
        cli = builds[1] / "nsproxy" / "cli.py"
        cli.write_text(
            cli.read_text().replace(
                "def cmd_check(args) -> int:\n",
                "def cmd_check(args) -> int:\n    print('this build refuses every config')\n"
                "    return 1\n",
            )
        )
    current = tmp_path / "current"
    current.symlink_to(builds[0])
    return current, builds[1]


def _install(current: Path, build: Path) -> None:
    swap = current.with_name("current.new")
    swap.symlink_to(build)
    swap.replace(current)


# Connects COUNT times without sending (TCP_DEFER_ACCEPT keeps each in the kernel, queued at
# one socket of the listener's group), says "connected", then on "go" sends one request on each
# and prints what each got: the status and tenant of a response, or the error.
QUEUED_CLIENT = """import json, socket, sys
addr, count = sys.argv[1], int(sys.argv[2])
socks = [socket.create_connection((addr, 80), timeout=10) for _ in range(count)]
print("connected", flush=True)
sys.stdin.readline()
out = []
for i, sock in enumerate(socks):
    try:
        sock.sendall(f"GET /queued/{i} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n".encode())
        data = b""
        while b"\\r\\n\\r\\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head = data.split(b"\\r\\n\\r\\n")[0].decode("latin-1").split("\\r\\n")
        out.append(head[0].split(" ")[1] if head[0] else "closed")
    except OSError as exc:
        out.append(repr(exc))
print(json.dumps(out), flush=True)
"""


def test_a_shrink_serves_what_was_queued_at_the_retired_sockets_and_sends_no_new_ones_there(
    proxy, tmp_path
):
    """From 3 workers to 2: connections the kernel queued at the third socket of the listener
    before the reload are served (they used to be reset with it), no new connection goes there
    while its worker still accepts, and once that worker has exited the binder closes its copy
    (2 listening sockets left)."""
    tenants, queued = _three_workers_and_queued_connections(proxy)
    proxy.write_config(tenants, workers=2, timeouts=QUEUED_TIMEOUTS)
    assert proxy.reload().returncode == 0, proxy.log()
    _queued_are_served_and_new_ones_steered_away(proxy, queued)


@pytest.mark.parametrize("shrink_first", [False, True], ids=["fewer-workers", "after-a-shrink"])
def test_an_upgrade_to_fewer_workers_serves_what_was_queued_at_the_retired_sockets(
    proxy, tmp_path, shrink_first
):
    """``nsproxy upgrade`` whose configuration has fewer workers, or that comes while a
    shrink's retired worker still accepts: the new binder keeps the retired sockets and steers
    new connections away from them, and the old worker 2 accepts what was queued there."""
    tenants, queued = _three_workers_and_queued_connections(proxy)
    proxy.write_config(tenants, workers=2, timeouts=QUEUED_TIMEOUTS)
    if shrink_first:
        assert proxy.reload().returncode == 0, proxy.log()
    upgrade = proxy.nsproxy("upgrade", "--socket", proxy.socket)
    assert upgrade.returncode == 0, upgrade.stderr + proxy.log()
    _queued_are_served_and_new_ones_steered_away(proxy, queued)


# header_read 5 s: TCP_DEFER_ACCEPT 7 s as the kernel rounds it; a retired worker accepts 9 s.
QUEUED_TIMEOUTS = {"header_read": 5}


def _three_workers_and_queued_connections(proxy):
    """t1 served by 3 workers, and 45 connections made but silent (QUEUED_CLIENT, waiting for
    "go"), spread by the kernel over the listener's 3 sockets."""
    tenants = _tenants(proxy, ["t1"])
    proxy.write_config(tenants, workers=3, timeouts=QUEUED_TIMEOUTS)
    proxy.start()
    proxy.wait_for(lambda s: len(worker_pids(s)) == 3, "3 workers serving")
    assert _listening(proxy, "t1") == 3
    argv = ["ip", "netns", "exec", "t1", sys.executable, "-c", QUEUED_CLIENT, ADDR, "45"]
    queued = proxy.sb.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    proxy.helpers.append(queued)
    assert queued.stdout.readline().strip() == "connected"
    return tenants, queued


def _queued_are_served_and_new_ones_steered_away(proxy, queued) -> None:
    status = proxy.wait_for(lambda s: len(worker_pids(s)) == 2, "2 workers serving")
    retired = [w for w in status["workers"] if w["index"] == 2]
    out, _ = queued.communicate("go\n", timeout=60)
    answers = json.loads(out)
    assert answers == ["200"] * 45, (answers, proxy.log())
    assert [w["state"] for w in retired] == ["draining"], status["workers"]
    before = retired[0]["accepted"]
    served_there = _accepted(proxy, 2) - before
    # ~1/3 of them had been queued at the retired socket: its worker accepted them.
    assert served_there > 0, answers
    # New connections while the retired socket is still open: none is given to it.
    fresh = proxy.python("t1", QUEUED_CLIENT, ADDR, "45", input="go\n")
    assert fresh.returncode == 0, fresh.stderr
    assert json.loads(fresh.stdout.splitlines()[-1]) == ["200"] * 45
    assert _accepted(proxy, 2) == before + served_there, proxy.status_json()["workers"]
    assert _listening(proxy, "t1") == 3
    wait_until(lambda: retired[0]["pid"] not in _pids(proxy), "the retired worker to exit")
    wait_until(lambda: _listening(proxy, "t1") == 2, "the binder to close the retired socket")
    again = proxy.python("t1", QUEUED_CLIENT, ADDR, "45", input="go\n")
    assert json.loads(again.stdout.splitlines()[-1]) == ["200"] * 45, again.stderr


def test_workers_grown_back_before_the_retired_ones_exit_serve_the_kept_sockets(proxy, tmp_path):
    """3 -> 2 -> 3 workers while the retired worker still accepts: the new worker 2 takes the
    socket the binder kept (no fourth socket joins the group, whose steering program counts
    positions), under looping clients that see no failure."""
    tenants = _tenants(proxy)
    proxy.write_config(tenants, workers=3)
    proxy.start()
    proxy.wait_for(lambda s: len(worker_pids(s)) == 3, "3 workers serving")
    loops = Loops(proxy, tmp_path, TENANTS, ADDR)
    time.sleep(0.5)
    _reload_workers(proxy, tenants, (2, 3), pause=0.5)
    assert [_listening(proxy, t) for t in TENANTS] == [3, 3, 3]
    status = proxy.status_json()
    new = next(w for w in status["workers"] if w["index"] == 2 and w["state"] == "serving")
    wait_until(lambda: new["pid"] in _pids(proxy) and _accepted_by(proxy, new["pid"]) > 0,
               "the new worker 2 to accept on the kept socket")  # fmt: skip
    results = loops.stop()
    for name, result in results.items():
        assert result["fail"] == 0 and result["ok"] > 20, (name, result, proxy.log())


def _reload_workers(proxy, tenants, counts, pause: float) -> None:
    """Reload to each number of workers in turn, waiting until that many serve."""
    for count in counts:
        proxy.write_config(tenants, workers=count)
        assert proxy.reload().returncode == 0, proxy.log()
        proxy.wait_for(lambda s, n=count: len(worker_pids(s)) == n, f"{count} workers serving")
        time.sleep(pause)


def _listening(proxy, netns: str) -> int:
    """Listening TCP sockets on port 80 inside ``netns`` (ss)."""
    proc = proxy.sb.run(["ip", "netns", "exec", netns, "ss", "-Hltn", "sport = :80"])
    return len(proc.stdout.splitlines())


def _pids(proxy) -> list[int]:
    return [w["pid"] for w in proxy.status_json()["workers"]]


def _accepted_by(proxy, pid: int) -> int:
    return next(w["accepted"] for w in proxy.status_json()["workers"] if w["pid"] == pid)


def _accepted(proxy, index: int) -> int:
    workers = [w for w in proxy.status_json()["workers"] if w["index"] == index]
    assert len(workers) == 1 and workers[0]["state"] == "draining", workers
    return workers[0]["accepted"]


def test_upgrade_under_load_keeps_the_pid_swaps_the_workers_and_fails_no_request(proxy, tmp_path):
    current, newer = _builds(tmp_path, "0.1.0+upgraded")
    proxy.write_config(_tenants(proxy), workers=2, metrics={"listen": "127.0.0.1:9110"})
    proxy.start(env={"PYTHONPATH": str(current)})
    before = proxy.status_json()
    old_workers = worker_pids(before)
    loops = Loops(proxy, tmp_path, TENANTS, ADDR)
    time.sleep(1)
    _install(current, newer)
    upgrade = proxy.nsproxy("upgrade", "--socket", proxy.socket)
    assert upgrade.returncode == 0, upgrade.stderr + proxy.log()
    assert f"-> 0.1.0+upgraded in pid {before['pid']}" in upgrade.stdout
    after = proxy.status_json()
    assert after["pid"] == before["pid"] == proxy.proc.pid
    assert after["binder"]["version"] == "0.1.0+upgraded"
    assert after["generation"] == before["generation"] + 1
    new_workers = worker_pids(after)
    assert len(new_workers) == 2 and not set(new_workers) & set(old_workers)
    # The old workers drain (their keep-alive clients get Connection: close) and exit.
    wait_until(lambda: not any(pid_alive(p) for p in old_workers), "the old workers to exit")
    time.sleep(0.5)
    results = loops.stop()
    for name, result in results.items():
        assert result["fail"] == 0 and result["ok"] > 20, (name, result)
        assert result["closes"] >= 1, (name, result)  # told to reconnect, not reset
    for name in TENANTS:
        assert proxy.get_json(name, f"http://{ADDR}/after")["server"] == "echo@9400"
    metrics = proxy.sb.run(["curl", "-sS", "http://127.0.0.1:9110/metrics"]).stdout
    assert "nsproxy_workers 2" in metrics
    # Still one daemon under its service manager: SIGTERM stops it as before.
    proxy.proc.terminate()
    assert proxy.proc.wait(timeout=40) == 0


def test_an_upgrade_the_installed_build_refuses_changes_nothing(proxy, tmp_path):
    current, broken = _builds(tmp_path, "0.1.0+broken", breaks_check=True)
    proxy.write_config(_tenants(proxy), workers=2)
    proxy.start(env={"PYTHONPATH": str(current)})
    before = proxy.status_json()
    loops = Loops(proxy, tmp_path, TENANTS, ADDR)
    time.sleep(0.5)
    _install(current, broken)
    upgrade = proxy.nsproxy("upgrade", "--socket", proxy.socket)
    assert upgrade.returncode == 1
    assert "upgrade refused: the installed nsproxy" in upgrade.stderr
    assert "this build refuses every config" in upgrade.stderr
    time.sleep(0.5)
    results = loops.stop()
    after = proxy.status_json()
    assert after["pid"] == before["pid"]
    assert after["binder"]["version"] == before["binder"]["version"] != "0.1.0+broken"
    assert worker_pids(after) == worker_pids(before)
    for name, result in results.items():
        assert result["fail"] == 0, (name, result)


def test_the_daemon_log_as_json_lines_in_its_file_from_the_binder_and_every_worker(proxy, tmp_path):
    log_file = tmp_path / "daemon.jsonl"
    proxy.write_config(_tenants(proxy), workers=2, log={"format": "json", "path": str(log_file)})
    proxy.start()
    pids = worker_pids(proxy.status_json())
    proxy.proc.terminate()
    assert proxy.proc.wait(timeout=40) == 0
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert all(set(line) >= {"time", "level", "process", "pid", "message"} for line in lines)
    binder = [line for line in lines if line["process"] == "nsproxy"]
    assert any(line["message"].startswith("serving 3 tenants") for line in binder)
    for pid in pids:
        mine = [line for line in lines if line["pid"] == pid]
        assert mine and all(line["process"].startswith("nsproxy[worker ") for line in mine)
        assert any("stopping: draining" in line["message"] for line in mine)


@needs_pids_cgroup
def test_ready_names_a_worker_index_nobody_accepts_for_while_its_worker_cannot_start(proxy):
    """Two workers; worker 1 is killed and the binder can fork none (its pids cgroup is full):
    the connections the kernel gives index 1's sockets wait for a worker, so /ready answers
    503 and names the index (it said ready, as worker 0 served), until one serves again."""
    tenants = _tenants(proxy, ["t1"], port=9410)
    proxy.write_config(tenants, workers=2, metrics={"listen": "127.0.0.1:9113"})
    proxy.start()
    status = proxy.status_json()
    binder = status["pid"]
    (victim,) = [w["pid"] for w in status["workers"] if w["index"] == 1]

    assert ready_answer(proxy, 9113).endswith(" 200")
    with no_more_processes(binder) as lift:
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: "cannot start worker 1" in proxy.log(), "the failed start")
        answer = ready_answer(proxy, 9113)
        assert answer.endswith(" 503"), answer
        assert "no worker accepts for worker indexes [1] (being started)" in answer, answer
        lift()
        wait_until(
            lambda: ready_answer(proxy, 9113).endswith(" 200"), "ready once worker 1 serves again"
        )
