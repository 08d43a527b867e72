#!/usr/bin/python3
# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nsproxy-supervisor: keeps one nsproxy instance running where systemd is not PID 1.

Installed by the tenantnet.nsproxy.nsproxy role as <venv>/bin/nsproxy-supervisor and started by
the nsproxy_instance module (plugins/module_utils/nsproxy_service.py: SupervisedManager), which
has already detached it (setsid, double fork), pointed its stdout and stderr at the instance's
log file and written its pid file. It:

- names itself ``nsproxy-supervisor <instance>`` in ps and top (setproctitle, Debian
  python3-setproctitle; without it only the 15-byte comm is set, with prctl PR_SET_NAME);
- runs the daemon command after ``--``, restarts it when it fails (backoff 1 s doubling to 30 s,
  back to 1 s after 30 s of running), and stops when it exits cleanly or after SIGTERM/SIGINT;
- forwards SIGTERM (SIGINT as SIGTERM), SIGHUP (reload) and SIGUSR1 (reopen the logs, sent by
  the role's logrotate postrotate) to the daemon, once it has logged the daemon's pid;
- starts the daemon with SIGHUP and SIGUSR1 ignored (a disposition execve keeps, execve(2)):
  until ``nsproxy run`` installs its own handlers (binder/early_signals.py), their default
  action would end it. One that comes while the daemon is being started is not forwarded: the
  daemon has not read its file or opened its logs yet;
- removes its pid file when it ends, if the file still names it.

Usage: nsproxy-supervisor --name NAME --pid-file PATH [--ready-fd FD] -- COMMAND [ARG...]
With --ready-fd it writes "ok" to that descriptor once its signal handlers are in place.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
IGNORED_AT_START = (signal.SIGHUP, signal.SIGUSR1)


def set_title(title: str) -> None:
    """The process title in ps (argv area) and top (comm)."""
    try:
        import setproctitle  # Debian python3-setproctitle; the role installs it
    except ImportError:
        setproctitle = None
    if setproctitle is not None:
        setproctitle.setproctitle(title)  # sets /proc/PID/comm too, on Linux
        return
    try:  # comm only (15 bytes): better than the interpreter's name
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, ctypes.c_char_p(title.encode()[:15]), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def log(name: str, message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    os.write(2, f"{stamp} nsproxy-supervisor[{name}]: {message}\n".encode())


def supervise(name: str, argv: list, pid_file: str, ready_fd: int | None) -> int:
    """Run argv until it exits cleanly or a stop signal comes; the exit status to return."""
    state = {"stop": False, "child": None}

    def forward(signum, _frame):
        if signum in (signal.SIGTERM, signal.SIGINT):
            state["stop"] = True
            signum = signal.SIGTERM
        child = state["child"]
        if child is not None and child.poll() is None:
            child.send_signal(signum)  # every one: a second stop is one the daemon may need

    for signum in FORWARDED:
        signal.signal(signum, forward)
    if ready_fd is not None:
        os.write(ready_fd, b"ok")
        os.close(ready_fd)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("NOTIFY_SOCKET", None)
    log(name, f"starting {' '.join(argv)}")
    backoff = 1.0
    code = 0
    try:
        while not state["stop"]:
            started = time.monotonic()
            for signum in IGNORED_AT_START:  # inherited by the child; ours again right after
                signal.signal(signum, signal.SIG_IGN)
            try:
                child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env)
            except OSError as exc:
                log(name, f"cannot run {argv[0]}: {exc.strerror}")
                code = 127
            else:
                state["child"] = child
            finally:
                for signum in IGNORED_AT_START:
                    signal.signal(signum, forward)
            if state["child"] is not None:
                log(name, f"nsproxy started as pid {child.pid}")
                if state["stop"]:  # came before the child was named: not sent by forward
                    child.send_signal(signal.SIGTERM)
                code = child.wait()
                state["child"] = None
                if state["stop"]:
                    log(name, f"nsproxy stopped (exit {code})")
                    break
                if code == 0:
                    log(name, "nsproxy exited cleanly; not restarting")
                    break
            if time.monotonic() - started > 30:
                backoff = 1.0
            log(name, f"nsproxy exited with status {code}; restarting in {backoff:g} s")
            deadline = time.monotonic() + backoff
            while not state["stop"] and time.monotonic() < deadline:
                time.sleep(0.1)
            backoff = min(backoff * 2, 30.0)
    finally:
        try:
            with open(pid_file) as handle:
                mine = handle.read().split()[:1] == [str(os.getpid())]
            if mine:
                os.unlink(pid_file)
        except OSError:
            pass
    return 0 if state["stop"] else code


def main(args: list | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nsproxy-supervisor", description=__doc__.split("\n", maxsplit=1)[0]
    )
    parser.add_argument("--name", required=True, help="instance name, shown in the title")
    parser.add_argument("--pid-file", required=True, help="removed at exit if it names us")
    parser.add_argument("--ready-fd", type=int, help="descriptor to write 'ok' to when ready")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    opts = parser.parse_args(args)
    command = opts.command[1:] if opts.command[:1] == ["--"] else opts.command
    if not command:
        parser.error("no command to supervise (give it after --)")
    set_title(f"nsproxy-supervisor {opts.name}")
    return supervise(opts.name, command, opts.pid_file, opts.ready_fd)


if __name__ == "__main__":
    sys.exit(main())
