"""Config hardening found by a review: files that are not regular files (a FIFO would hang the
binder in open()), admin sockets that cannot be made or belong to someone else, paths that
two keys share, uid strings of root's group, ``--config`` read unvalidated by the admin
commands, a closed stdout, and duplicate JSON keys. Each gives one line naming the field."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import socket
import subprocess
import sys
import threading

import pytest

from nsproxy import accesslog, admin, config, daemonlog, privileges

NSPROXY = [sys.executable, "-m", "nsproxy"]


def doc(tmp_path, **top) -> dict:
    document = {"admin_socket": str(tmp_path / "a.sock"), "tenants": []}
    document.update(top)
    return document


def problems_of(document) -> list[str] | None:
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    try:
        config.parse(data)
    except config.ConfigError as exc:
        for line in exc.problems:
            assert "\n" not in line, line
        return exc.problems
    return None


def run_nsproxy(*args, timeout=30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*NSPROXY, *args], capture_output=True, text=True, timeout=timeout, **kw)


def one_line_without_traceback(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result
    out = (result.stdout + result.stderr).strip()
    assert "Traceback" not in out, out
    assert len(out.splitlines()) == 1, out
    return out


def returns_soon(call, *args):
    """``call(*args)``'s result or exception, failing the test when it has not returned within
    5 s (a blocking open of a FIFO); the FIFO is then opened from the other side to free it."""
    found = {}

    def target():
        try:
            found["value"] = call(*args)
        except BaseException as exc:
            found["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(5)
    return thread, found


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    yield str(path)
    # Free a thread stuck in open() (without the fix): open the other end, both ways.
    for flags in (os.O_RDONLY | os.O_NONBLOCK, os.O_RDWR):
        with contextlib.suppress(OSError):
            os.close(os.open(path, flags))


# -- 1. files that are not regular files -------------------------------------------------------
@pytest.mark.parametrize("path", [("access_log",), ("log", "path")])
def test_a_log_path_that_is_a_fifo_or_a_socket_is_refused_naming_the_kinds_allowed(
    tmp_path, fifo, path
):
    sock_path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        for target, kind in ((fifo, "a FIFO"), (str(sock_path), "a socket")):
            document = doc(tmp_path)
            if path == ("access_log",):
                document["access_log"] = target
            else:
                document["log"] = {"path": target}
            (line,) = problems_of(document)
            assert line.startswith(".".join(path) + ": "), line
            assert f"exists and is {kind}" in line and "allowed: a regular file" in line, line
    document = doc(tmp_path, access_log="/dev/null", log={"path": "/dev/null"})
    assert problems_of(document) is None  # a character device is fine


def test_opening_a_log_that_is_a_fifo_never_waits(fifo):
    for call in (accesslog.open_target, daemonlog.open_append):
        thread, found = returns_soon(call, fifo)
        assert not thread.is_alive(), f"{call.__name__} waits in open() of a FIFO"
        assert isinstance(found.get("error"), OSError), found
        assert "regular file" in found["error"].strerror
    # With a reader on the other end the open succeeds, and is refused all the same.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(OSError, match="a FIFO, not a regular file"):
            daemonlog.open_append(fifo)
    finally:
        os.close(reader)
    fd = daemonlog.open_append("/dev/null")
    try:
        assert os.get_blocking(fd)  # blocking again once checked
    finally:
        os.close(fd)


def test_the_daemon_log_on_a_fifo_is_an_oserror_not_a_hang(fifo):
    thread, found = returns_soon(daemonlog.configure, "info", "text", fifo)
    assert not thread.is_alive(), "daemonlog.configure waits in open() of a FIFO"
    assert isinstance(found.get("error"), OSError), found


def test_check_of_a_config_file_that_is_a_fifo_is_one_line_and_no_hang(fifo):
    line = one_line_without_traceback(run_nsproxy("check", fifo, timeout=20))
    assert line == f"cannot read {fifo}: not a regular file", line
    with pytest.raises(config.ConfigError, match="not a regular file"):
        config.read_file(fifo)


# -- 2. admin sockets that cannot be made ------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "kind"), [("/proc/nsproxy/x.sock", "proc"), ("/sys/x.sock", "sysfs")]
)
def test_an_admin_socket_under_proc_or_sys_is_refused_by_check(tmp_path, path, kind):
    (line,) = problems_of(doc(tmp_path, admin_socket=path))
    assert line.startswith("admin_socket: ") and f"on a {kind} filesystem" in line, line


def test_an_admin_socket_that_cannot_be_made_is_one_line_from_the_binder():
    with pytest.raises(admin.AdminError) as caught:
        admin.claim("/proc/nsproxy/x.sock")
    message = str(caught.value)
    assert message.startswith("admin_socket /proc/nsproxy/x.sock: cannot create the folder")
    assert "\n" not in message


def test_run_with_an_admin_socket_under_proc_is_one_line(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc(tmp_path, admin_socket="/proc/nsproxy/x.sock")))
    line = one_line_without_traceback(run_nsproxy("run", "--config", str(path)))
    assert "admin_socket: /proc is on a proc filesystem" in line, line


# -- 3. an admin socket a running process serves -----------------------------------------------
class FakeServer:
    """A unix socket server at ``path`` answering each connection with ``answer`` (bytes),
    or closing it at once (None)."""

    def __init__(self, path: str, answer: bytes | None = None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(16)
        self.answer = answer
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                if self.answer is not None:
                    conn.settimeout(2)
                    with contextlib.suppress(OSError):
                        conn.recv(4096)
                        conn.sendall(self.answer)

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


def status_answer(instance: str) -> bytes:
    return json.dumps({"ok": True, "status": {"instance": instance}}).encode() + b"\n"


def test_the_binder_never_takes_over_a_socket_a_running_process_serves(tmp_path):
    sock_path = str(tmp_path / "a.sock")
    server = FakeServer(sock_path)
    try:
        with pytest.raises(admin.AdminError, match="in use by a running process"):
            admin.claim(sock_path)
        path = tmp_path / "c.json"
        path.write_text(json.dumps(doc(tmp_path)))
        line = one_line_without_traceback(run_nsproxy("run", "--config", str(path)))
        assert line.startswith(f"nsproxy: admin_socket {sock_path}: in use by a running process")
        assert admin.answering(sock_path)  # still there, still served
    finally:
        server.close()


def test_a_socket_left_by_a_process_that_died_is_replaced(tmp_path):
    sock_path = str(tmp_path / "a.sock")
    with socket.socket(socket.AF_UNIX) as gone:
        gone.bind(sock_path)
    assert not admin.answering(sock_path)
    with admin.claim(sock_path) as sock:
        assert admin.answering(sock_path)
        assert os.stat(sock_path).st_mode & 0o777 == 0o600
        assert sock.getsockname() == sock_path
    assert problems_of(doc(tmp_path)) is None


@pytest.mark.parametrize(
    ("answer", "who"),
    [(None, "not the nsproxy of instance 'main'"), (status_answer("other"), "instance 'other'")],
)
def test_check_refuses_an_admin_socket_served_by_another_process(tmp_path, answer, who):
    sock_path = str(tmp_path / "a.sock")
    server = FakeServer(sock_path, answer)
    try:
        path = tmp_path / "c.json"
        path.write_text(json.dumps(doc(tmp_path, instance="main")))
        line = one_line_without_traceback(run_nsproxy("check", str(path)))
        assert line.startswith(f"admin_socket: {sock_path}: in use by a running process"), line
        assert who in line, line
    finally:
        server.close()


def test_check_accepts_the_socket_of_the_running_daemon_of_the_same_instance(tmp_path):
    """nsproxy_instance checks a new file while the daemon it will reload runs."""
    server = FakeServer(str(tmp_path / "a.sock"), status_answer("main"))
    try:
        path = tmp_path / "c.json"
        path.write_text(json.dumps(doc(tmp_path, instance="main")))
        result = run_nsproxy("check", str(path))
        assert (result.returncode, result.stdout) == (0, "ok: 0 tenants, 0 listeners\n"), result
    finally:
        server.close()


# -- 4. one path for two files -----------------------------------------------------------------
@pytest.mark.parametrize("other", [("access_log",), ("log", "path")])
def test_a_log_at_the_admin_socket_path_is_refused_naming_both(tmp_path, other):
    sock = str(tmp_path / "a.sock")
    for spelling in (sock, f"/{tmp_path}/./a.sock"):
        document = doc(tmp_path, admin_socket=sock)
        if other == ("access_log",):
            document["access_log"] = spelling
        else:
            document["log"] = {"path": spelling}
        (line,) = problems_of(document) or [None]
        field = ".".join(other)
        assert line == (
            f"{field}: {spelling} is the same file as admin_socket; each must be a file of its own"
        ), line


def test_a_log_reaching_the_admin_socket_through_a_link_is_refused(tmp_path):
    (tmp_path / "link.log").symlink_to(tmp_path / "a.sock")
    (line,) = problems_of(doc(tmp_path, log={"path": str(tmp_path / "link.log")}))
    assert line.startswith(f"log.path: {tmp_path}/link.log is the same file as admin_socket")


def test_the_two_logs_may_share_a_file(tmp_path):
    for path in ("/dev/null", str(tmp_path / "both.log")):
        assert problems_of(doc(tmp_path, access_log=path, log={"path": path})) is None


def test_no_file_of_the_daemon_may_be_the_config_file_itself(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc(tmp_path, access_log=str(path))))
    with pytest.raises(config.ConfigError) as caught:
        config.load(str(path))
    assert caught.value.problems == [
        f"access_log: {path} is the same file as the configuration file; each must be a file "
        "of its own"
    ]
    line = one_line_without_traceback(run_nsproxy("check", str(path)))
    assert line.startswith("access_log: ") and "the configuration file" in line
    line = one_line_without_traceback(run_nsproxy("run", "--config", str(path)))
    assert line.startswith(f"nsproxy: {path}: access_log: "), line


# -- 5. a uid string is looked up as a name is -------------------------------------------------
@pytest.fixture
def uid_1111_in_group_root(monkeypatch):
    """A passwd entry for uid 1111 whose group is root (the host has none such to spare)."""
    real = pwd.getpwuid

    def getpwuid(uid):
        if uid == 1111:
            return pwd.struct_passwd(("op", "x", 1111, 0, "", "/", "/bin/sh"))
        return real(uid)

    monkeypatch.setattr(pwd, "getpwuid", getpwuid)


def test_a_uid_whose_passwd_entry_is_in_group_root_is_refused_as_run_refuses_it(
    tmp_path, uid_1111_in_group_root
):
    (line,) = problems_of(doc(tmp_path, user="1111"))
    assert line.startswith("user: workers never run as root or in group root"), line
    assert "gid 0" in line
    with pytest.raises(privileges.PrivilegeError):  # what run says of the same user
        privileges.worker_credentials("1111")


def test_a_uid_without_a_passwd_entry_stays_allowed(tmp_path):
    unknown = next(uid for uid in range(4_000_000, 4_100_000) if not _has_entry(uid))
    assert problems_of(doc(tmp_path, user=str(unknown))) is None
    creds = privileges.worker_credentials(str(unknown))
    assert (creds.uid, creds.gid) == (unknown, unknown)


def _has_entry(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


# -- 6. the admin commands' --config, and a closed stdout --------------------------------------
@pytest.mark.parametrize("command", ["status", "reload", "upgrade"])
@pytest.mark.parametrize(
    ("value", "why"),
    [
        (5, "admin_socket: must be an absolute path for a unix socket, got 5"),
        (
            "/tmp/a\x00b.sock",
            "admin_socket: must not contain control characters, got '/tmp/a\\x00b",
        ),
        ("/proc/nsproxy/x.sock", "admin_socket: /proc is on a proc filesystem"),
    ],
)
def test_admin_commands_check_the_socket_path_they_read_from_the_config(
    tmp_path, command, value, why
):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"admin_socket": value, "tenants": []}))
    line = one_line_without_traceback(run_nsproxy(command, "--config", str(path)))
    assert line.startswith(f"nsproxy: {path}: {why}"), line
    assert "\x00" not in line


def test_admin_commands_check_the_instance_and_read_the_config_without_waiting(tmp_path, fifo):
    path = tmp_path / "c.json"
    path.write_text('{"instance": "a/b", "tenants": []}')
    line = one_line_without_traceback(run_nsproxy("status", "--config", str(path)))
    assert line.startswith(f"nsproxy: {path}: instance: must be 1-63 letters"), line
    line = one_line_without_traceback(run_nsproxy("status", "--config", fifo, timeout=20))
    assert line == f"nsproxy: {fifo}: cannot read {fifo}: not a regular file", line


def test_status_into_a_pipe_closed_early_exits_quietly(tmp_path):
    tenants = [
        {"name": f"t{i}", "netns": f"t{i}", "state": "serving", "last_error": None,
         "listeners": [{"listen": "10.0.0.1:80", "protocol": "http", "state": "bound"}],
         "upstreams": []}
        for i in range(20000)
    ]  # fmt: skip
    answer = json.dumps({"ok": True, "status": {"instance": "main", "tenants": tenants}})
    sock_path = str(tmp_path / "a.sock")
    server = FakeServer(sock_path, answer.encode() + b"\n")
    try:
        for extra in ([], ["--json"]):
            proc = subprocess.Popen(
                [*NSPROXY, "status", "--socket", sock_path, *extra],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert proc.stdout.readline()  # as `| head -1` does
            proc.stdout.close()
            _, err = proc.communicate(timeout=30)
            assert err == b"", err.decode()
            assert proc.returncode == 1
    finally:
        server.close()


# -- 7. duplicate keys -------------------------------------------------------------------------
def test_duplicate_keys_are_refused_naming_the_key_and_where_it_is(tmp_path):
    sock = tmp_path / "a.sock"
    text = (
        f'{{"admin_socket": "{sock}", "log": {{"format": "text", "format": "json"}},'
        ' "tenants": [{"name": "acme", "netns": "acme", "listeners": [], "listeners": [],'
        ' "upstreams": {"api": {"servers": ["10.0.0.1:80"]},'
        ' "api": {"servers": ["10.0.0.2:80"], "servers": ["10.0.0.3:80"]}}},'
        ' {"name": "not a name", "netns": "b", "netns": "c"}],'
        f' "admin_socket": "{sock}"}}'
    )
    problems = problems_of(text.encode())
    assert problems[:6] == [
        "duplicate key 'admin_socket', only its last value would count (at the top level)",
        "log: duplicate key 'format', only its last value would count",
        "tenant 'acme': duplicate key 'listeners', only its last value would count",
        "tenant 'acme': upstreams: duplicate key 'api', only its last value would count",
        "tenant 'acme': upstreams.api: duplicate key 'servers', only its last value would count",
        "tenants[1]: duplicate key 'netns', only its last value would count",
    ], problems
    assert problems[6].startswith("tenants[1].name: must be")  # the other problems still said
    assert len(problems) == 7


def test_a_duplicate_key_alone_refuses_an_otherwise_valid_file(tmp_path):
    text = json.dumps(doc(tmp_path))[:-1] + ', "tenants": []}'
    assert problems_of(text.encode()) == [
        "duplicate key 'tenants', only its last value would count (at the top level)"
    ]
    weird = json.dumps(doc(tmp_path))[:-1] + ', "x\\n": 1, "x\\n": 2}'
    assert problems_of(weird.encode())[0].startswith("duplicate key 'x\\n'")


def test_check_by_a_user_who_may_not_connect_leaves_the_socket_to_run(tmp_path):
    """A socket of root's daemon (0600) cannot be connected to by another user: check, run by
    that user to validate a file, does not fail for it (run, as root, decides)."""
    from as_nobody import passes_as_nobody

    from nsproxy import cli

    sock_path = tmp_path / "a.sock"
    server = FakeServer(str(sock_path), status_answer("other"))
    try:
        os.chmod(sock_path, 0o600)
        os.chmod(tmp_path, 0o755)
        cfg = config.parse(json.dumps(doc(tmp_path)).encode())
        assert cli._admin_socket_in_use(cfg) is not None  # root: another instance answers

        def as_nobody():
            assert cli._admin_socket_in_use(cfg) is None

        assert passes_as_nobody(as_nobody)
    finally:
        server.close()


# -- found on the way: a namespace path that is a FIFO -----------------------------------------
def test_a_tenant_namespace_path_that_is_a_fifo_is_refused_without_waiting(fifo):
    from nsproxy import netns

    registry = netns.Registry()
    thread, found = returns_soon(registry.acquire, fifo)
    assert not thread.is_alive(), "opening a FIFO as a namespace waits in open()"
    assert isinstance(found.get("error"), netns.NetnsError), found
    assert str(found["error"]) == f"{fifo} is not a network namespace"
