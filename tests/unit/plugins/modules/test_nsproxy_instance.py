"""nsproxy_instance: config rendering, per-tenant diff, atomic write, the action plan, and
the module run end to end in check mode and with a stand-in `nsproxy` CLI (the real daemon is
exercised by tests/roles/test_nsproxy_role.py), plus the supervisor with real processes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.tenantnet.nsproxy.plugins.module_utils import nsproxy_config as cfg
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.nsproxy_service import (
    NsproxyCli,
    ServiceError,
    SupervisedManager,
    listener_report,
    read_pid_file,
    wait_for_config,
)
from ansible_collections.tenantnet.nsproxy.plugins.modules import nsproxy_instance

# The supervisor program the role installs as <venv>/bin/nsproxy-supervisor.
SUPERVISOR = str(Path(__file__).resolve().parents[4] / "roles/nsproxy/files/nsproxy_supervisor.py")

ACME = {
    "name": "acme",
    "netns": "acme",
    "listeners": [{"listen": "10.0.0.250:80", "protocol": "http"}],
    "routes": [{"host": "*", "path_prefix": "/", "upstream": "shared"}],
    "upstreams": {"shared": {"netns": None, "servers": ["127.0.0.1:8080"]}},
}
GLOBEX = dict(ACME, name="globex", netns="globex")


def _config(*tenants, **settings):
    return cfg.build_config("main", list(tenants), "/run/nsproxy/main.sock", **settings)


# -- rendering -------------------------------------------------------------------------------


def test_config_carries_instance_socket_and_only_the_settings_given():
    config = _config(
        ACME,
        metrics={"listen": "127.0.0.1:9108"},
        limits={"max_headers": 50, "max_header_bytes": None},
        timeouts={"connect": None},
    )
    assert config == {
        "instance": "main",
        "admin_socket": "/run/nsproxy/main.sock",
        "metrics": {"listen": "127.0.0.1:9108"},
        "limits": {"max_headers": 50},
        "tenants": [ACME],
    }


def test_workers_and_their_user_go_into_the_config():
    config = _config(ACME, user="nsproxy", workers="4")
    assert (config["user"], config["workers"]) == ("nsproxy", 4)
    assert _config(ACME, workers="auto")["workers"] == "auto"
    assert "user" not in _config(ACME) and "workers" not in _config(ACME)
    for bad in ("0", "257", "many", "-1"):
        with pytest.raises(cfg.ConfigError, match="workers: must be 'auto' or a number"):
            _config(ACME, workers=bad)


def test_empty_access_log_means_no_access_log():
    assert _config(ACME, access_log="")["access_log"] is None
    assert _config(ACME, access_log="-")["access_log"] == "-"
    assert "access_log" not in _config(ACME)


def test_rendering_is_independent_of_key_order():
    shuffled = dict(reversed(list(ACME.items())))
    assert cfg.render(_config(ACME)) == cfg.render(_config(shuffled))
    assert json.loads(cfg.render(_config(ACME)))["tenants"] == [ACME]


def test_digest_is_sha256_of_the_file_bytes():
    data = cfg.render(_config(ACME))
    import hashlib

    assert cfg.digest(data) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("tenants", "field"),
    [
        ([ACME, ACME], "tenants[1].name: tenant 'acme' is listed twice"),
        ([{"netns": "x"}], "tenants[0].name: required"),
        ([ACME, "acme"], "tenants[1]: must be a mapping"),
    ],
)
def test_bad_tenant_list_is_refused_naming_the_field(tenants, field):
    with pytest.raises(cfg.ConfigError) as err:
        _config(*tenants)
    assert field in str(err.value)


@pytest.mark.parametrize("name", ["", "Main", "a/b", "x" * 65, "-lead", "a.b"])
def test_bad_instance_name_is_refused(name):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.check_instance_name(name)
    assert str(err.value).startswith("name:")


# -- per-tenant changes and diff -------------------------------------------------------------


def test_changes_name_added_removed_and_changed_tenants_with_fields():
    new_acme = dict(ACME, routes=[{"host": "api.example", "path_prefix": "/", "upstream": "x"}])
    initech = dict(ACME, name="initech", netns="initech")
    changes = cfg.tenant_changes(
        _config(ACME, GLOBEX), _config(new_acme, initech, metrics={"listen": "127.0.0.1:1"})
    )
    assert changes == {
        "added": ["initech"],
        "removed": ["globex"],
        "changed": [{"name": "acme", "fields": ["routes"]}],
        "settings": ["metrics"],
    }


def test_no_changes_for_equal_configs():
    changes = cfg.tenant_changes(_config(ACME, GLOBEX), _config(ACME, GLOBEX))
    assert changes == {"added": [], "removed": [], "changed": [], "settings": []}


def test_diff_of_one_route_change_shows_only_that_tenant():
    new_acme = dict(ACME, routes=[{"host": "api.example", "path_prefix": "/", "upstream": "x"}])
    entries = cfg.diff_entries(
        "/etc/nsproxy/main.json", _config(ACME, GLOBEX), _config(new_acme, GLOBEX)
    )
    assert len(entries) == 1
    entry = entries[0]
    assert entry["after_header"] == "tenant acme (changed: routes)"
    assert "globex" not in entry["before"] + entry["after"]
    assert json.loads(entry["after"]) == new_acme


def test_diff_of_new_file_shows_settings_and_each_added_tenant():
    entries = cfg.diff_entries("/etc/nsproxy/main.json", None, _config(ACME, GLOBEX))
    headers = [entry["after_header"] for entry in entries]
    assert headers == [
        "/etc/nsproxy/main.json: settings",
        "tenant acme (added)",
        "tenant globex (added)",
    ]
    assert all(entry["before"] == "" for entry in entries)


def test_diff_of_removal_shows_each_removed_tenant():
    entries = cfg.diff_entries("/etc/nsproxy/main.json", _config(ACME), None)
    assert [entry["after_header"] for entry in entries] == [
        "/etc/nsproxy/main.json (absent)",
        "tenant acme (removed)",
    ]


# -- atomic write ----------------------------------------------------------------------------


def test_atomic_write_replaces_the_file_with_mode_0640_and_leaves_no_temp(tmp_path):
    path = tmp_path / "main.json"
    path.write_bytes(b"old")
    os.chmod(path, 0o644)
    cfg.write_atomic(str(path), b"new\n")
    assert path.read_bytes() == b"new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["main.json"]


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "main.json"
    path.write_bytes(b"old")
    with pytest.raises(TypeError):
        cfg.write_atomic(str(path), "not bytes")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["main.json"]


def test_attribute_drift_is_detected(tmp_path):
    path = tmp_path / "main.json"
    path.write_bytes(b"{}")
    os.chmod(path, 0o644)
    assert cfg.file_attributes_differ(str(path), 0o640, -1, -1)
    os.chmod(path, 0o640)
    assert not cfg.file_attributes_differ(str(path), 0o640, -1, -1)
    assert cfg.file_attributes_differ(str(path), 0o640, -1, path.stat().st_gid + 1)


# -- plan ------------------------------------------------------------------------------------

plan = nsproxy_instance.plan_actions


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # state, exists, running, content_changed, attrs_changed, runtime
        (("started", False, False, True, False, None), ["write_config", "start"]),
        (("started", True, True, False, False, "current"), []),
        (("started", True, True, True, False, "stale"), ["write_config", "reload"]),
        (("started", True, True, False, False, "stale"), ["reload"]),
        (("started", True, True, False, True, "current"), ["write_config"]),
        (("started", True, True, True, False, "socket_moved"), ["write_config", "restart"]),
        (("started", True, True, False, False, "unreachable"), ["restart"]),
        (("present", True, False, True, False, None), ["write_config"]),
        (("present", True, True, True, False, "stale"), ["write_config", "reload"]),
        (("stopped", True, True, False, False, "current"), ["stop"]),
        (("stopped", True, False, False, False, None), []),
        (("reloaded", True, True, False, False, "current"), ["reload"]),
        (("reloaded", True, False, False, False, None), ["start"]),
        (("restarted", True, True, False, False, "current"), ["restart"]),
        (("restarted", True, True, True, False, "stale"), ["write_config", "restart"]),
        (("restarted", True, False, False, False, None), ["start"]),
        # A new daemon build: re-executed in place (it reads the new file itself).
        (("upgraded", True, True, False, False, "current"), ["upgrade"]),
        (("upgraded", True, True, True, False, "stale"), ["write_config", "upgrade"]),
        (("upgraded", True, False, False, False, None), ["start"]),
        (("upgraded", True, True, False, False, "unreachable"), ["restart"]),
        (("absent", True, True, False, False, "current"), ["stop", "remove_config"]),
        (("absent", False, False, False, False, None), []),
    ],
)
def test_plan(args, expected):
    assert plan(*args) == expected


# -- the module, end to end ------------------------------------------------------------------


def run_module(args, check_mode=False, diff=False):
    args = dict(args)
    args["_ansible_check_mode"] = check_mode
    args["_ansible_diff"] = diff
    with patch_module_args(args), pytest.raises(SystemExit):
        nsproxy_instance.main()


def module_result(capsys):
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def fake_nsproxy(tmp_path):
    """A stand-in for the daemon's CLI: `check` refuses any config with a tenant named
    'bad' the way the contract says (one line per problem, exit 1)."""
    script = tmp_path / "bin" / "nsproxy"
    script.parent.mkdir()
    script.write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import json, sys
            if sys.argv[1] == "check":
                config = json.load(open(sys.argv[2]))
                bad = [t for t in config["tenants"] if t["name"] == "bad"]
                if bad:
                    print("tenant 'bad': listeners[0].listen: 'nowhere' is not HOST:PORT")
                    sys.exit(1)
                print("ok: %d tenants" % len(config["tenants"]))
                sys.exit(0)
            sys.exit(2)
            """
        )
    )
    script.chmod(0o755)
    return str(script)


def base_args(tmp_path, nsproxy_bin, **extra):
    args = {
        "name": "main",
        "state": "present",
        "config_dir": str(tmp_path / "etc"),
        "run_dir": str(tmp_path / "run"),
        "log_dir": str(tmp_path / "log"),
        "service_manager": "supervised",
        "nsproxy_bin": nsproxy_bin,
        "supervisor": SUPERVISOR,
        "tenants": [ACME],
    }
    args.update(extra)
    return args


def test_check_mode_reports_the_plan_and_writes_nothing(tmp_path, capsys, fake_nsproxy):
    run_module(
        base_args(tmp_path, fake_nsproxy, tenants=[ACME, GLOBEX]), check_mode=True, diff=True
    )
    result = module_result(capsys)
    assert result["changed"] is True
    assert result["actions"] == ["write_config"]
    assert result["tenant_changes"]["added"] == ["acme", "globex"]
    assert [entry["after_header"] for entry in result["diff"]][1:] == [
        "tenant acme (added)",
        "tenant globex (added)",
    ]
    assert not (tmp_path / "etc").exists()


def test_present_writes_the_file_then_second_run_is_unchanged(tmp_path, capsys, fake_nsproxy):
    run_module(base_args(tmp_path, fake_nsproxy))
    first = module_result(capsys)
    path = tmp_path / "etc" / "main.json"
    assert first["changed"] is True
    assert json.loads(path.read_text())["tenants"] == [ACME]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert first["config_digest"] == cfg.digest(path.read_bytes())

    run_module(base_args(tmp_path, fake_nsproxy), diff=True)
    second = module_result(capsys)
    assert second["changed"] is False
    assert second["actions"] == []
    assert "diff" not in second


def test_bad_tenant_is_refused_with_the_daemons_message_and_the_file_kept(
    tmp_path, capsys, fake_nsproxy
):
    run_module(base_args(tmp_path, fake_nsproxy))
    capsys.readouterr()
    path = tmp_path / "etc" / "main.json"
    before = path.read_bytes()
    bad = dict(ACME, name="bad", listeners=[{"listen": "nowhere", "protocol": "http"}])
    run_module(base_args(tmp_path, fake_nsproxy, tenants=[ACME, bad]))
    result = module_result(capsys)
    assert result["failed"] is True
    assert "tenant 'bad': listeners[0].listen: 'nowhere' is not HOST:PORT" in result["msg"]
    assert path.read_bytes() == before
    assert os.listdir(tmp_path / "etc") == ["main.json"]


def test_missing_nsproxy_fails_outside_check_mode_naming_the_option(tmp_path, capsys):
    run_module(base_args(tmp_path, str(tmp_path / "nope")))
    result = module_result(capsys)
    assert result["failed"] is True
    assert result["msg"].startswith("nsproxy_bin: ")
    assert not (tmp_path / "etc" / "main.json").exists()


def test_tenants_are_required_for_a_new_instance(tmp_path, capsys, fake_nsproxy):
    args = base_args(tmp_path, fake_nsproxy)
    del args["tenants"]
    run_module(args)
    result = module_result(capsys)
    assert result["failed"] is True
    assert result["msg"].startswith("tenants: required")


def test_absent_removes_the_config_file(tmp_path, capsys, fake_nsproxy):
    run_module(base_args(tmp_path, fake_nsproxy))
    capsys.readouterr()
    run_module(base_args(tmp_path, fake_nsproxy, state="absent"), diff=True)
    result = module_result(capsys)
    assert result["actions"] == ["remove_config"]
    assert result["tenant_changes"]["removed"] == ["acme"]
    assert not (tmp_path / "etc" / "main.json").exists()
    run_module(base_args(tmp_path, fake_nsproxy, state="absent"))
    assert module_result(capsys)["changed"] is False


def test_status_report_keeps_listener_states():
    status = {
        "tenants": [
            {
                "name": "acme",
                "netns": "acme",
                "state": "serving",
                "listeners": [
                    {"listen": "10.0.0.250:80", "protocol": "http", "state": "bound"},
                    {"listen": "10.0.0.250:81", "protocol": "tcp", "state": "error", "error": "x"},
                ],
            }
        ]
    }
    report = listener_report(status)
    assert [listener["state"] for listener in report[0]["listeners"]] == ["bound", "error"]
    assert report[0]["listeners"][1]["error"] == "x"


# -- supervisor, real processes --------------------------------------------------------------


def _wait(predicate, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:  # reaped since the kill
        return False


@pytest.fixture
def request_cleanup():
    """Stops supervisors a failing test left running."""
    managers = []
    yield managers.append
    for manager in managers:
        manager.stop(timeout=10)


def test_supervisor_runs_the_process_and_stop_ends_both(tmp_path, request_cleanup):
    manager = SupervisedManager(
        "demo", ["sleep", "300"], str(tmp_path / "run"), str(tmp_path / "log"), SUPERVISOR
    )
    manager.start()
    request_cleanup(manager)
    supervisor = read_pid_file(manager.pid_file)
    assert supervisor is not None and manager.running()

    def child_cmdline():
        child = manager.pid()
        if child is None:
            return []
        with open(f"/proc/{child}/cmdline") as handle:
            return handle.read().split("\0")[:2]

    _wait(lambda: child_cmdline() == ["sleep", "300"], "the supervised sleep 300")
    child = manager.pid()
    with open(f"/proc/{supervisor}/cmdline") as handle:
        title = handle.read().rstrip("\0")
    manager.stop(timeout=10)
    _wait(lambda: not _alive(child), "the child to end")
    assert not _alive(supervisor)
    assert not os.path.exists(manager.pid_file)
    assert title == "nsproxy-supervisor demo"  # what ps shows (setproctitle)
    assert "starting sleep 300" in (tmp_path / "log" / "demo.log").read_text()


def test_supervisor_restarts_a_failed_process(tmp_path):
    counter = tmp_path / "runs"
    script = f"echo run >> {counter}; [ $(wc -l < {counter}) -ge 2 ] && exec sleep 300; exit 3"
    manager = SupervisedManager(
        "flaky", ["sh", "-c", script], str(tmp_path / "run"), str(tmp_path / "log"), SUPERVISOR
    )
    manager.start()
    try:
        _wait(lambda: counter.exists() and len(counter.read_text().split()) >= 2, "a restart")
        log = (tmp_path / "log" / "flaky.log").read_text()
        assert "exited with status 3; restarting" in log
        assert manager.running()
    finally:
        manager.stop(timeout=10)
    assert not manager.running()


# The daemon the supervisor starts, as nsproxy does: handlers for SIGHUP and SIGUSR1 (which it
# starts with ignored) and SIGTERM, each noted in GOT; "handlers set" once they are. Arguments:
# GOT, the seconds it takes to set them, and SIGNAL:N, exit 0 at the N-th of SIGNAL (SIGTERM
# otherwise ends it at once). (sh cannot stand in: a trap on a signal ignored at entry has no
# effect, POSIX.)
DAEMON = textwrap.dedent(
    """
    import signal, sys, time
    got, delay = sys.argv[1], float(sys.argv[2])
    exit_on, exit_at = sys.argv[3].split(":")
    time.sleep(delay)  # the interpreter's start, before the handlers are in place
    def note(signum, _frame):
        name = signal.Signals(signum).name
        with open(got, "a") as out:
            out.write(name + "\\n")
        with open(got) as seen:
            if name == exit_on and seen.read().split().count(name) == int(exit_at):
                sys.exit(0)
    for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM):
        signal.signal(signum, note)
    print("handlers set", flush=True)
    while True:
        time.sleep(0.1)
    """
)


def _daemon_ready(log: Path) -> bool:
    """The daemon has set its handlers and the supervisor has named it (so forwards to it)."""
    text = log.read_text() if log.exists() else ""
    return "nsproxy started as pid" in text and "handlers set" in text.splitlines()


def _supervised_daemon(tmp_path, name: str, exit_rule: str):
    """A SupervisedManager running DAEMON (exit at ``exit_rule``), started and ready: its
    handlers set and the supervisor naming it. (manager, supervisor pid, log, GOT)."""
    got = tmp_path / "signals"
    manager = SupervisedManager(
        name,
        [sys.executable, "-c", DAEMON, str(got), "0", exit_rule],
        str(tmp_path / "run"),
        str(tmp_path / "log"),
        SUPERVISOR,
    )
    manager.start()
    log = tmp_path / "log" / f"{name}.log"
    _wait(lambda: _daemon_ready(log), "the daemon's handlers and the supervisor naming it")
    return manager, read_pid_file(manager.pid_file), log, got


def test_supervisor_forwards_usr1_and_hup_to_the_process(tmp_path, request_cleanup):
    """SIGUSR1 (logrotate's postrotate: reopen the logs) and SIGHUP (reload) sent to the pid
    in the pid file reach the daemon; the supervisor itself keeps running."""
    manager, supervisor, _log, got = _supervised_daemon(tmp_path, "sig", "SIGTERM:1")
    request_cleanup(manager)
    os.kill(supervisor, signal.SIGUSR1)
    _wait(lambda: got.exists() and "SIGUSR1" in got.read_text(), "SIGUSR1 at the daemon")
    os.kill(supervisor, signal.SIGHUP)
    _wait(lambda: "SIGHUP" in got.read_text(), "SIGHUP at the daemon")
    assert got.read_text().split() == ["SIGUSR1", "SIGHUP"]
    assert manager.running() and _alive(supervisor)


def test_supervisor_forwards_every_stop(tmp_path, request_cleanup):
    """A daemon may need a second SIGTERM (nsproxy's can miss one sent just before an
    upgrade's execve under load): each one sent to the supervisor reaches it."""
    manager, supervisor, log, got = _supervised_daemon(tmp_path, "stop", "SIGTERM:2")
    request_cleanup(manager)
    os.kill(supervisor, signal.SIGTERM)
    _wait(lambda: got.exists() and "SIGTERM" in got.read_text(), "the first SIGTERM")
    assert _alive(supervisor)  # the daemon took it and goes on
    os.kill(supervisor, signal.SIGTERM)
    _wait(lambda: not _alive(supervisor), "the supervisor to end with the daemon")
    assert got.read_text().split() == ["SIGTERM", "SIGTERM"]
    assert "nsproxy stopped (exit 0)" in log.read_text()


def test_stop_ends_a_daemon_that_does_not_drain_in_time_and_its_supervisor(tmp_path):
    """A daemon that takes every SIGTERM and goes on: stop(timeout) then kills the whole
    session the module started (supervisor and daemon), leaving no process behind."""
    manager, supervisor, _log, got = _supervised_daemon(tmp_path, "stuck", "SIGTERM:99")
    group = os.getpgid(supervisor)
    daemon = manager.pid()
    try:
        manager.stop(timeout=2)
        assert "SIGTERM" in got.read_text()  # it was asked first
        _wait(lambda: not _alive(supervisor) and not _alive(daemon), "both to be killed")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


def test_the_supervisor_starts_with_reload_and_reopen_ignored(tmp_path):
    """Its pid file is written before its exec, and logrotate may signal that pid at once:
    until the supervisor's handlers are set, SIGHUP and SIGUSR1 must be ignored, not fatal. A
    stand-in supervisor reports the dispositions it was executed with (SigIgn, proc(5))."""
    report = tmp_path / "sigign"
    stand_in = tmp_path / "stand-in-supervisor"
    stand_in.write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import os, sys, time
            with open("/proc/self/status") as status:
                ignored = next(l.split()[1] for l in status if l.startswith("SigIgn:"))
            open({str(report)!r}, "w").write(ignored)
            fd = int(sys.argv[sys.argv.index("--ready-fd") + 1])
            os.write(fd, b"ok")
            os.close(fd)
            """
        )
    )
    stand_in.chmod(0o755)
    manager = SupervisedManager(
        "ign", ["true"], str(tmp_path / "run"), str(tmp_path / "log"), str(stand_in)
    )
    manager.start()
    _wait(report.exists, "the stand-in's report")
    ignored = int(report.read_text(), 16)
    for signum in (signal.SIGHUP, signal.SIGUSR1):
        assert ignored >> (signum - 1) & 1, f"{signal.Signals(signum).name} is not ignored"
    assert not ignored >> (signal.SIGTERM - 1) & 1  # a stop still ends it at once


def test_a_signal_while_the_daemon_starts_neither_ends_it_nor_reaches_it_twice(tmp_path):
    """The daemon starts with SIGHUP and SIGUSR1 ignored, so one that reaches it before its
    handlers are in place (here: sent to it the moment Popen returns, and the daemon takes 0.5 s
    to set them) does not end it (their default action); one the supervisor gets while still
    starting it (raised inside Popen) is not forwarded. A later SIGHUP is, once."""
    got, out = tmp_path / "signals", tmp_path / "out"
    driver = textwrap.dedent(
        f"""
        import os, runpy, signal, subprocess, sys
        real = subprocess.Popen
        def popen_then_signal(*args, **kwargs):
            child = real(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGUSR1)  # at the supervisor, before Popen returns
            os.kill(child.pid, signal.SIGHUP)  # at the daemon, before its handlers
            os.kill(child.pid, signal.SIGUSR1)
            return child
        subprocess.Popen = popen_then_signal
        sys.argv = [{SUPERVISOR!r}, "--name", "early", "--pid-file", {str(tmp_path / "pid")!r},
                    "--", sys.executable, "-c", {DAEMON!r}, {str(got)!r}, "0.5", "SIGHUP:1"]
        runpy.run_path({SUPERVISOR!r}, run_name="__main__")
        """
    )
    # Its own process group, so a failing run leaves neither the supervisor nor the daemon.
    with out.open("w") as output_file:
        driven = subprocess.Popen(
            [sys.executable, "-c", driver],
            stdout=output_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait(lambda: _daemon_ready(out), "the daemon's handlers and the supervisor naming it")
        os.kill(driven.pid, signal.SIGHUP)
        try:
            driven.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the SIGHUP did not reach the daemon:\n{out.read_text()}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driven.pid, signal.SIGKILL)
        driven.wait()
    output = out.read_text()
    assert "restarting in" not in output, output  # the early signals did not end the daemon
    assert output.count("nsproxy started as pid") == 1, output
    assert "exited cleanly; not restarting" in output, output
    assert got.read_text().split() == ["SIGHUP"]


def _slow_status_cli(tmp_path, hang_calls):
    """A stand-in CLI whose first hang_calls `status` calls hang (a host under load), and
    whose later ones report config digest 'want'."""
    script = tmp_path / "bin" / "nsproxy"
    script.parent.mkdir()
    calls = tmp_path / "status-calls"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import json, sys, time
            with open({str(calls)!r}, "a+") as f:
                f.write("x")
                f.seek(0)
                n = len(f.read())
            if n <= {hang_calls}:
                time.sleep(60)
            print(json.dumps({{"config_digest": "want", "generation": 2}}))
            """
        )
    )
    script.chmod(0o755)
    return NsproxyCli(str(script)), calls


def test_wait_for_config_asks_again_after_a_status_call_that_ran_out(tmp_path):
    cli, calls = _slow_status_cli(tmp_path, hang_calls=1)
    status = wait_for_config(cli, "/run/x.sock", "want", 30, lambda: True, call_timeout=0.5)
    assert status["config_digest"] == "want"
    assert len(calls.read_text()) == 2  # the hung call, then the one that answered


def test_wait_for_config_that_never_gets_an_answer_is_a_sentence(tmp_path):
    cli, calls = _slow_status_cli(tmp_path, hang_calls=99)
    with pytest.raises(ServiceError, match=r"nsproxy did not answer on /run/x.sock within 2 s"):
        wait_for_config(cli, "/run/x.sock", "want", 2, lambda: True, call_timeout=0.5)
    assert len(calls.read_text()) >= 2  # it asked again rather than stopping at the first


def test_missing_supervisor_is_a_sentence_naming_it(tmp_path):
    missing = str(tmp_path / "bin" / "nsproxy-supervisor")
    manager = SupervisedManager(
        "gone", ["sleep", "300"], str(tmp_path / "run"), str(tmp_path / "log"), missing
    )
    with pytest.raises(ServiceError, match=f"the supervisor {missing} is not installed"):
        manager.start()
    assert not manager.running()


# -- documentation matches the argument spec (what ansible-test validate-modules checks) -----


def _compare_options(documented: dict, spec: dict, where: str = "") -> list:
    problems = []
    if set(documented) != set(spec):
        problems.append(f"{where}: documented {sorted(documented)} vs spec {sorted(spec)}")
    for name in set(documented) & set(spec):
        doc, arg = documented[name], spec[name]
        for key, default in (("type", "str"), ("required", False), ("default", None)):
            if doc.get(key, default) != arg.get(key, default):
                problems.append(f"{where}{name}.{key}: {doc.get(key)!r} vs {arg.get(key)!r}")
        for key in ("choices", "elements"):
            if doc.get(key) != arg.get(key):
                problems.append(f"{where}{name}.{key}: {doc.get(key)!r} vs {arg.get(key)!r}")
        if "suboptions" in doc or "options" in arg:
            problems += _compare_options(
                doc.get("suboptions", {}), arg.get("options", {}), f"{where}{name}."
            )
    return problems


def test_documentation_matches_the_argument_spec():
    import yaml

    documented = yaml.safe_load(nsproxy_instance.DOCUMENTATION)["options"]
    assert _compare_options(documented, nsproxy_instance.ARGUMENT_SPEC) == []
    yaml.safe_load(nsproxy_instance.EXAMPLES)
    yaml.safe_load(nsproxy_instance.RETURN)


# -- a refused reload, with a stand-in daemon that refuses every reload -----------------------


@pytest.fixture
def refusing_nsproxy(tmp_path):
    """`run` records the digest of the config it serves and sleeps; `status` reports it;
    `reload` is refused with a reason, the way the real daemon refuses a config."""
    state = tmp_path / "applied"
    script = tmp_path / "bin" / "nsproxy"
    script.parent.mkdir()
    script.write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import hashlib, json, os, sys
            state = {str(state)!r}
            if sys.argv[1] == "check":
                sys.exit(0)
            if sys.argv[1] == "run":
                data = open(sys.argv[3], "rb").read()
                open(state, "w").write(hashlib.sha256(data).hexdigest())
                os.execvp("sleep", ["sleep", "300"])
            if sys.argv[1] == "status":
                print(json.dumps({{"generation": 1, "config_digest": open(state).read(),
                                  "tenants": []}}))
                sys.exit(0)
            if sys.argv[1] == "reload":
                print("new configuration refused, the running one stays: tenant 'acme': boom")
                sys.exit(1)
            sys.exit(2)
            """
        )
    )
    script.chmod(0o755)
    return str(script)


def test_refused_reload_fails_with_the_reason_and_restores_the_file(
    tmp_path, capsys, refusing_nsproxy, request_cleanup
):
    args = base_args(tmp_path, refusing_nsproxy, state="started")
    run_module(args)
    started = module_result(capsys)
    manager = SupervisedManager("main", [], args["run_dir"], args["log_dir"], SUPERVISOR)
    request_cleanup(manager)
    assert started["actions"] == ["write_config", "start"], started
    supervisor = manager.supervisor_pid()
    path = tmp_path / "etc" / "main.json"
    before = path.read_bytes()

    run_module(dict(args, tenants=[ACME, GLOBEX]))
    result = module_result(capsys)
    assert result["failed"] is True
    assert "tenant 'acme': boom" in result["msg"]
    assert "was restored" in result["msg"]
    assert path.read_bytes() == before
    assert manager.supervisor_pid() == supervisor


def test_unknown_config_group_fails_naming_the_option_and_writes_nothing(
    tmp_path, capsys, fake_nsproxy
):
    run_module(base_args(tmp_path, fake_nsproxy, config_group="no-such-group-here"))
    result = module_result(capsys)
    assert result["failed"] is True
    assert result["msg"] == "config_group: group 'no-such-group-here' does not exist on the target"
    assert not (tmp_path / "etc" / "main.json").exists()


def test_config_group_is_applied_to_the_file(tmp_path, capsys, fake_nsproxy):
    import grp

    group = grp.getgrgid(os.getgid()).gr_name
    run_module(base_args(tmp_path, fake_nsproxy, config_group=group))
    assert module_result(capsys)["changed"] is True
    info = (tmp_path / "etc" / "main.json").stat()
    assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o640, os.getgid())


def test_config_path_that_is_a_directory_is_a_sentence_naming_it(tmp_path, capsys, fake_nsproxy):
    """<config_dir>/<name>.json is a directory (a careless `mkdir -p`): a sentence naming the
    path, not an IsADirectoryError traceback."""
    (tmp_path / "etc" / "main.json").mkdir(parents=True)
    run_module(base_args(tmp_path, fake_nsproxy))
    result = module_result(capsys)
    assert result["failed"] is True
    assert f"{tmp_path / 'etc' / 'main.json'} is a directory" in result["msg"]
    assert (tmp_path / "etc" / "main.json").is_dir()


# -- a start the daemon refuses, with a stand-in daemon that cannot serve one tenant ----------


@pytest.fixture
def start_refusing_nsproxy(tmp_path):
    """`check` accepts everything; `run` exits 1 on a config with a tenant named 'late-bad'
    (what the real daemon does when a listener's port is taken), else records the digest it
    serves and sleeps; `status` reports that digest while one is served."""
    state = tmp_path / "applied"
    script = tmp_path / "bin" / "nsproxy"
    script.parent.mkdir()
    script.write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import hashlib, json, os, sys
            state = {str(state)!r}
            if sys.argv[1] == "check":
                sys.exit(0)
            if sys.argv[1] == "run":
                data = open(sys.argv[3], "rb").read()
                if any(t["name"] == "late-bad" for t in json.loads(data)["tenants"]):
                    print("tenant 'late-bad': listen 10.0.0.250:80: address already in use")
                    if os.path.exists(state):
                        os.unlink(state)
                    sys.exit(1)
                open(state, "w").write(hashlib.sha256(data).hexdigest())
                os.execvp("sleep", ["sleep", "300"])
            if sys.argv[1] == "status":
                if not os.path.exists(state):
                    sys.exit(1)
                print(json.dumps({{"generation": 1, "config_digest": open(state).read(),
                                  "tenants": []}}))
                sys.exit(0)
            sys.exit(2)
            """
        )
    )
    script.chmod(0o755)
    return str(script)


def test_a_restart_the_daemon_refuses_restores_the_file_and_the_previous_instance(
    tmp_path, capsys, start_refusing_nsproxy, request_cleanup
):
    """A running instance; the next run moves admin_socket (write_config + restart) and adds a
    tenant the daemon refuses at start. The previous file comes back and the previous
    instance serves it again."""
    args = base_args(tmp_path, start_refusing_nsproxy, state="started", wait_timeout=5)
    run_module(args)
    assert module_result(capsys)["actions"] == ["write_config", "start"]
    manager = SupervisedManager("main", [], args["run_dir"], args["log_dir"], SUPERVISOR)
    request_cleanup(manager)
    path = tmp_path / "etc" / "main.json"
    before = path.read_bytes()
    late_bad = dict(ACME, name="late-bad", netns="late-bad")
    moved = str(tmp_path / "run" / "other.sock")

    run_module(dict(args, tenants=[ACME, late_bad], admin_socket=moved))
    result = module_result(capsys)
    assert result["failed"] is True
    assert "did not start with the new configuration" in result["msg"]
    assert "previous instance was started again" in result["msg"]
    assert path.read_bytes() == before
    assert manager.running()
    served = (tmp_path / "applied").read_text()
    assert served == hashlib.sha256(before).hexdigest()


def test_a_start_the_daemon_refuses_restores_the_file_and_stays_stopped(
    tmp_path, capsys, start_refusing_nsproxy, request_cleanup
):
    args = base_args(tmp_path, start_refusing_nsproxy, state="present", wait_timeout=5)
    run_module(args)
    assert module_result(capsys)["actions"] == ["write_config"]
    manager = SupervisedManager("main", [], args["run_dir"], args["log_dir"], SUPERVISOR)
    request_cleanup(manager)
    path = tmp_path / "etc" / "main.json"
    before = path.read_bytes()
    late_bad = dict(ACME, name="late-bad", netns="late-bad")

    run_module(dict(args, state="started", tenants=[ACME, late_bad]))
    result = module_result(capsys)
    assert result["failed"] is True
    assert "stays stopped" in result["msg"], result["msg"]
    assert path.read_bytes() == before
    assert not manager.running()
