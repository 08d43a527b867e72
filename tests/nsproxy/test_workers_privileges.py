"""The process model's privileges: workers hold nothing; code run inside one gets nothing."""

from __future__ import annotations

import os
import pwd
import subprocess

from conftest import ADDR, NSPROXY, http_tenant
from processes import (
    VICTIM,
    needs_pids_cgroup,
    nice_of,
    no_more_processes,
    pid_alive,
    probe_worker,
    ready_answer,
    status_fields,
    wait_until,
    worker_pids,
)

from nsproxy import priority

ZERO = "0000000000000000"


def test_workers_run_as_the_configured_user_with_every_capability_set_empty(proxy):
    proxy.add_netns("acme", "globex")
    proxy.start_echo("echo", "127.0.0.1:9301")
    daemon = pwd.getpwnam("daemon")  # a system user every Debian/Ubuntu has
    proxy.write_config(
        [http_tenant("acme", ["127.0.0.1:9301"]), http_tenant("globex", ["127.0.0.1:9301"])],
        workers=2,
        user="daemon",
    )
    proxy.start()
    status = proxy.status_json()
    workers = worker_pids(status)
    assert len(workers) == 2
    binder = status_fields(status["pid"])
    assert binder["Uid"].split()[0] == "0" and int(binder["CapEff"], 16) != 0
    for pid in workers:
        fields = status_fields(pid)
        assert fields["PPid"] == str(status["pid"])  # forked by the binder
        assert fields["Uid"].split() == [str(daemon.pw_uid)] * 4, fields["Uid"]
        assert fields["Gid"].split() == [str(daemon.pw_gid)] * 4, fields["Gid"]
        assert fields["Groups"] == ""
        for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert fields[name] == ZERO, (pid, name, fields[name])
        assert fields["NoNewPrivs"] == "1"
        # It holds no namespace file: only the binder ever could enter one.
        kinds = proxy.sb.run(["sh", "-c", f"ls -l /proc/{pid}/fd | grep -c 'net:\\['"],
                             check=False).stdout.strip()  # fmt: skip
        assert kinds == "0", f"worker {pid} holds namespace fds"
        # And it serves.
    for tenant in ("acme", "globex"):
        doc = proxy.get_json(tenant, f"http://{ADDR}/")
        assert doc["server"] == "echo@9301"
    assert "as daemon (uid" in proxy.log()


def test_a_reload_runs_ahead_of_the_workers_and_the_binder_comes_back_after_it(proxy):
    """priority.py: the reload's check and binds BOOST nice levels below the workers; the
    workers and, outside a reload, the binder keep the sandbox's nice value (this test's)."""
    proxy.add_netns("solo", "late")
    proxy.start_echo("echo", "127.0.0.1:9303")
    tenants = [http_tenant("solo", ["127.0.0.1:9303"])]
    proxy.write_config(tenants, workers=2)
    proxy.start()
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert base - priority.BOOST >= -20, "run the tests at nice -10 or above"
    proxy.write_config([*tenants, http_tenant("late", ["127.0.0.1:9303"])], workers=2)
    reload = proxy.reload()
    assert reload.returncode == 0, reload.stderr
    assert f", at nice {base - priority.BOOST};" in proxy.log()
    status = proxy.status_json()
    assert nice_of(status["pid"]) == base
    assert [nice_of(pid) for pid in worker_pids(status)] == [base, base]
    assert proxy.get_json("late", f"http://{ADDR}/")["server"] == "echo@9303"


def test_without_cap_sys_nice_a_reload_runs_at_the_workers_nice_value_and_says_so(proxy):
    proxy.add_netns("solo", "late")
    proxy.start_echo("echo", "127.0.0.1:9304")
    tenants = [http_tenant("solo", ["127.0.0.1:9304"])]
    proxy.write_config(tenants, workers=1)
    proxy.start(wrap=["setpriv", "--bounding-set", "-sys_nice", "--inh-caps", "-sys_nice", "--"])
    base = os.getpriority(os.PRIO_PROCESS, 0)
    proxy.write_config([*tenants, http_tenant("late", ["127.0.0.1:9304"])], workers=1)
    for _ in range(2):  # said once, however many reloads
        reload = proxy.reload()
        assert reload.returncode == 0, reload.stderr
    log = proxy.log()
    assert log.count(f", at nice {base};") == 2, log
    said = f"a reload runs at the workers' nice value {base} (running ahead of them needs "
    assert log.count(said) == 1, log
    assert proxy.get_json("late", f"http://{ADDR}/")["server"] == "echo@9304"


def test_started_as_root_without_a_user_the_workers_are_nobody(proxy):
    proxy.add_netns("solo")
    proxy.start_echo("echo", "127.0.0.1:9302")
    proxy.write_config([http_tenant("solo", ["127.0.0.1:9302"])], workers=1)
    proxy.start()
    nobody = pwd.getpwnam("nobody")
    (pid,) = worker_pids(proxy.status_json())
    assert status_fields(pid)["Uid"].split() == [str(nobody.pw_uid)] * 4
    assert proxy.get_json("solo", f"http://{ADDR}/")["server"] == "echo@9302"


def test_a_user_that_is_root_or_unknown_is_refused(proxy):
    proxy.add_netns("solo")
    for user, reason in (("root", "workers never run as root"), ("nobody-x", "no user")):
        proxy.write_config([http_tenant("solo", ["127.0.0.1:9302"])], user=user)
        run = proxy.sb.run([NSPROXY, "run", "--config", str(proxy.config_path)],
                           check=False)  # fmt: skip
        assert run.returncode != 0
        assert f"user: {reason}" in run.stderr.replace("there is no user", "no user"), run.stderr


def test_code_running_inside_a_worker_cannot_read_secrets_memory_or_other_namespaces(proxy):
    """The three probes of the privileges case (../shared/cases/16-...), run inside a real
    worker process: not a process emulating the unit's privileges, the worker itself."""
    proxy.add_netns("acme", "victim")
    proxy.sb.sh("ip -n victim link set lo up")
    victim = proxy.sb.popen(
        ["ip", "netns", "exec", "victim", "python3", "-c", VICTIM],
        stdout=subprocess.PIPE,
        text=True,
    )
    proxy.helpers.append(victim)
    assert victim.stdout.readline().strip() == "ready"
    proxy.start_echo("echo", "127.0.0.1:9303")
    proxy.write_config([http_tenant("acme", ["127.0.0.1:9303"])], workers=2)
    proxy.start()
    status = proxy.status_json()
    binder_pid = status["pid"]
    for pid in worker_pids(status):
        result = probe_worker(proxy, pid, victim.pid, binder_pid)
        assert result["status"]["CapEff"] == ZERO and result["status"]["CapBnd"] == ZERO
        assert result["status"]["Uid"].split()[0] != "0"
        assert result["shadow"].startswith("no: "), result
        assert result["mem_victim"].startswith("no: "), result
        assert result["mem_binder"].startswith("no: "), result
        assert result["setns"].startswith("no: "), result
        assert "Operation not permitted" in result["setns"], result  # it could open, not enter
        assert "net" not in result["fds"], result
        # The worker is unharmed and still serves.
        assert proxy.get_json("acme", f"http://{ADDR}/")["server"] == "echo@9303"


@needs_pids_cgroup
def test_a_user_change_whose_new_workers_cannot_start_keeps_the_old_ones_serving(proxy):
    """A reload that changes ``user`` replaces every worker. When the binder can fork none
    (here its pids cgroup is full; in production RLIMIT_NPROC, EMFILE or memory), the old
    worker serves on as its old user instead of draining with nothing to take its place; once
    a new one can start (the retry's back-off), it serves as the new user and the old drains."""
    proxy.add_netns("acme")
    proxy.start_echo("echo", "127.0.0.1:9304")
    tenants = [http_tenant("acme", ["127.0.0.1:9304"])]
    metrics = {"listen": "127.0.0.1:9112"}
    proxy.write_config(tenants, workers=1, metrics=metrics)
    proxy.start()
    status = proxy.status_json()
    binder, (old,) = status["pid"], worker_pids(status)
    daemon = pwd.getpwnam("daemon")
    proxy.write_config(tenants, workers=1, user="daemon", metrics=metrics)

    def served() -> bool:
        return proxy.curl("acme", f"http://{ADDR}/", "-o", "/dev/null", "-w", "%{http_code}",
                          "--max-time", "5", check=False).stdout == "200"  # fmt: skip

    with no_more_processes(binder) as lift:
        result = proxy.reload()
        assert result.returncode == 0, result.stdout + result.stderr
        assert "cannot start worker 0: Resource temporarily unavailable" in proxy.log()
        assert f"worker 0 (pid {old}) serves on until its replacement is ready" in proxy.log()
        for _request in range(3):
            assert served(), proxy.log()[-3000:]
        assert pid_alive(old) and status_fields(old)["Uid"].split()[0] == "65534"
        # Served by the previous generation's worker: not ready, and /ready says why (its
        # listeners serve: the worker is not counted as a listener that does not).
        answer = ready_answer(proxy, 9112)
        assert answer.startswith("not ready: generation 2, 1/1 listeners serving\n"), answer
        assert answer.endswith(" 503") and "1 workers of a previous generation serve on" \
            in answer, answer  # fmt: skip
        lift()
        status = proxy.wait_for(
            lambda s: (
                [w["state"] for w in s["workers"]] == ["serving"] and s["workers"][0]["pid"] != old
            ),
            "the new user's worker serving",
        )
        (new,) = worker_pids(status)
        wait_until(lambda: not pid_alive(old), "the old worker drained and gone")
    assert status_fields(new)["Uid"].split() == [str(daemon.pw_uid)] * 4
    assert served()
    wait_until(
        lambda: ready_answer(proxy, 9112).endswith(" 200"), "/ready once the old worker is gone"
    )
    assert "Traceback" not in proxy.log()


def test_a_user_change_with_more_workers_starts_each_new_worker_once_as_the_new_user(proxy):
    """``user`` and ``workers`` changed by one reload: the added index starts as the new user
    (it was started as the old one, then replaced at once), and the kept index is replaced."""
    proxy.add_netns("acme")
    proxy.start_echo("echo", "127.0.0.1:9305")
    tenants = [http_tenant("acme", ["127.0.0.1:9305"])]
    proxy.write_config(tenants, workers=1)
    proxy.start()
    (old,) = worker_pids(proxy.status_json())
    proxy.write_config(tenants, workers=2, user="daemon")
    assert proxy.reload().returncode == 0
    status = proxy.wait_for(
        lambda s: (
            sorted((w["index"], w["state"]) for w in s["workers"])
            == [(0, "serving"), (1, "serving")]
        ),
        "two workers serving",
    )
    daemon = pwd.getpwnam("daemon")
    for pid in worker_pids(status):
        assert status_fields(pid)["Uid"].split()[0] == str(daemon.pw_uid)
    wait_until(lambda: not pid_alive(old), "the old worker drained and gone")
    log = proxy.log()
    assert log.count(" started (pid ") == 3, log  # worker 0, then worker 1 and worker 0 anew
    assert "starting 1 new workers, then draining the old ones" in log
