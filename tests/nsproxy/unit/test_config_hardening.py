"""Config hardening found by a review: files that are not regular files (a FIFO would hang the
binder in open()), admin sockets that cannot be made or belong to someone else, paths that
two keys share, uid strings of root's group, ``--config`` read unvalidated by the admin
commands, a closed stdout, and duplicate JSON keys. Each gives one line naming the field."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from nsproxy import accesslog, config, daemonlog

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
