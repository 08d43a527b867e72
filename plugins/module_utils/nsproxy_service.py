# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How the nsproxy_instance module drives a running instance: the installed `nsproxy` CLI
(check, status, reload, upgrade) and a service manager, either systemd (`nsproxy@<name>`) or,
where systemd is not PID 1, the supervisor program the role installs beside the daemon (pid
file, log file, restart on failure), so the whole path works in containers and CI sandboxes too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import time

UNIT_TEMPLATE = "nsproxy@{name}.service"


class ServiceError(RuntimeError):
    """A service operation failed; the message is a sentence for the user."""


class CliTimeout(ServiceError):
    """A call of the daemon's CLI did not finish within its time limit."""


def systemd_booted() -> bool:
    """Same test as sd_booted(3): systemd is PID 1 when /run/systemd/system exists."""
    return os.path.isdir("/run/systemd/system")


class NsproxyCli:
    """The installed daemon's command line, run as a child process."""

    def __init__(self, binary: str):
        self.binary = binary

    def available(self) -> bool:
        return os.path.isfile(self.binary) and os.access(self.binary, os.X_OK)

    def _run(self, args: list, timeout: float = 120) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                [self.binary, *args],
                check=False,  # callers read the exit code: a refusal is an answer, not a crash
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            raise ServiceError(f"cannot run {self.binary}: {exc.strerror}") from exc
        except subprocess.TimeoutExpired as exc:
            raise CliTimeout(
                f"{self.binary} {' '.join(args)} did not finish within {timeout} s"
            ) from exc

    def check(self, path: str) -> list:
        """Problems `nsproxy check` finds in the config file at path ([] when it is valid)."""
        proc = self._run(["check", path])
        if proc.returncode == 0:
            return []
        lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines()]
        return [line for line in lines if line] or [f"nsproxy check exited {proc.returncode}"]

    def status(self, socket_path: str, timeout: float = 10):
        """The daemon's `status --json` document, or None when it does not answer."""
        proc = self._run(["status", "--socket", socket_path, "--json"], timeout=timeout)
        if proc.returncode != 0:
            return None
        try:
            status = json.loads(proc.stdout)
        except ValueError:
            return None
        return status if isinstance(status, dict) else None

    def upgrade(self, socket_path: str) -> tuple:
        """Ask the daemon to re-execute the installed nsproxy (same PID, no listener closed):
        (ok, the daemon's output or reason)."""
        proc = self._run(["upgrade", "--socket", socket_path], timeout=300)
        output = (proc.stdout + proc.stderr).strip()
        return proc.returncode == 0, output

    def reload(self, socket_path: str) -> tuple:
        """Ask the daemon to re-read its config: (ok, the daemon's output or reason)."""
        proc = self._run(["reload", "--socket", socket_path])
        output = (proc.stdout + proc.stderr).strip()
        return proc.returncode == 0, output


def run_command(argv: list) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            argv, check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300
        )
    except OSError as exc:
        raise ServiceError(f"cannot run {argv[0]}: {exc.strerror}") from exc


class SystemdManager:
    """Drives the `nsproxy@<name>` template unit the nsproxy role installs."""

    kind = "systemd"

    def __init__(self, name: str):
        self.name = name
        self.unit = UNIT_TEMPLATE.format(name=name)

    def _systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = run_command(["systemctl", *args])
        if check and proc.returncode != 0:
            reason = (proc.stderr or proc.stdout).strip()
            raise ServiceError(f"systemctl {' '.join(args)} failed: {reason}")
        return proc

    def installed(self) -> bool:
        return self._systemctl("cat", "nsproxy@.service", check=False).returncode == 0

    def running(self) -> bool:
        proc = self._systemctl("is-active", self.unit, check=False)
        return proc.stdout.strip() in ("active", "reloading", "activating")

    def pid(self):
        proc = self._systemctl("show", "-p", "MainPID", "--value", self.unit, check=False)
        value = proc.stdout.strip()
        return int(value) if value.isdigit() and int(value) > 0 else None

    def enabled(self) -> bool:
        return self._systemctl("is-enabled", self.unit, check=False).stdout.strip() == "enabled"

    def set_enabled(self, enabled: bool) -> None:
        self._systemctl("enable" if enabled else "disable", self.unit)

    def start(self) -> None:
        if not self.installed():
            raise ServiceError(
                "the systemd unit nsproxy@.service is not installed: "
                "deploy it with the tenantnet.nsproxy.nsproxy role"
            )
        # Type=notify: returns once the daemon said READY=1.
        self._systemctl("start", self.unit)

    def stop(self, timeout: float = 90) -> None:
        self._systemctl("stop", self.unit)

    def failure_hint(self) -> str:
        """The unit's last journal lines ("" when the journal cannot be read)."""
        try:
            proc = run_command(["journalctl", "-u", self.unit, "-n", "20", "--no-pager"])
        except ServiceError:
            return ""
        return proc.stdout.strip()

    def forget(self) -> None:
        """Nothing to clean up for systemd beyond disabling (done by the caller)."""


# -- supervised background process (no systemd) ------------------------------------------


def _proc_start_time(pid: int):
    """Start time of pid in clock ticks (field 22 of /proc/PID/stat), None if it exited."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # exited, waiting to be reaped: gone for our purpose
        return None
    return int(fields[19])


def read_pid_file(path: str):
    """The live supervisor pid recorded in path, or None (absent, stale, or reused pid)."""
    try:
        with open(path) as handle:
            parts = handle.read().split()
        pid, start = int(parts[0]), int(parts[1])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _proc_start_time(pid) == start else None


class SupervisedManager:
    """Runs `nsproxy run` under the supervisor program the nsproxy role installs
    (roles/nsproxy/files/nsproxy_supervisor.py, as <venv>/bin/nsproxy-supervisor): started
    detached from the calling process, it shows as `nsproxy-supervisor <name>` in ps, restarts
    the daemon when it fails and forwards SIGTERM, SIGHUP and SIGUSR1 to it. Pid file
    <run_dir>/<name>.pid (supervisor pid and start time), log file <log_dir>/<name>.log."""

    kind = "supervised"

    def __init__(self, name: str, argv: list, run_dir: str, log_dir: str, supervisor: str):
        self.name = name
        self.argv = argv
        self.run_dir = run_dir
        self.log_dir = log_dir
        self.supervisor = supervisor
        self.pid_file = os.path.join(run_dir, f"{name}.pid")
        self.log_file = os.path.join(log_dir, f"{name}.log")

    def installed(self) -> bool:
        return os.path.isfile(self.supervisor) and os.access(self.supervisor, os.X_OK)

    def supervisor_pid(self):
        return read_pid_file(self.pid_file)

    def running(self) -> bool:
        return self.supervisor_pid() is not None

    def pid(self):
        """pid of the daemon itself (the supervisor's child), when there is one."""
        sup = self.supervisor_pid()
        if sup is None:
            return None
        try:
            with open(f"/proc/{sup}/task/{sup}/children") as handle:
                children = handle.read().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def enabled(self) -> bool:
        return False

    def set_enabled(self, enabled: bool) -> None:
        """Boot-time start needs a service manager; supervised instances have none."""

    def start(self) -> None:
        if not self.installed():
            raise ServiceError(
                f"the supervisor {self.supervisor} is not installed (or not executable): "
                "deploy it with the tenantnet.nsproxy.nsproxy role"
            )
        os.makedirs(self.run_dir, mode=0o755, exist_ok=True)
        os.makedirs(self.log_dir, mode=0o750, exist_ok=True)
        ready_r, ready_w = os.pipe()
        first = os.fork()
        if first == 0:  # pragma: no cover - runs in the forked children
            code = 1
            try:
                os.close(ready_r)
                os.setsid()
                if os.fork() != 0:
                    os._exit(0)
                code = self._exec_supervisor(ready_w)
            finally:
                os._exit(code)
        os.close(ready_w)
        os.waitpid(first, 0)
        answer = b""
        while True:
            chunk = os.read(ready_r, 256)
            if not chunk:
                break
            answer += chunk
        os.close(ready_r)
        if not answer.startswith(b"ok"):
            reason = answer.decode(errors="replace") or (
                f"it exited before it was ready; see {self.log_file}"
            )
            raise ServiceError(
                f"could not start the nsproxy supervisor {self.supervisor}: {reason}"
            )

    def _exec_supervisor(self, ready_w: int) -> int:  # pragma: no cover - forked child
        """In the detached grandchild: output to the log file, the pid file (exec keeps the pid
        and its start time), then exec the supervisor, which says "ok" on ready_w."""
        try:
            devnull = os.open(os.devnull, os.O_RDWR)
            log_fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            for target, source in ((0, devnull), (1, log_fd), (2, log_fd)):
                os.dup2(source, target)
            # Let go of everything inherited (Ansible's pipes above all), except the ready pipe.
            os.closerange(3, ready_w)
            os.closerange(ready_w + 1, 65536)
            os.chdir("/")
            pid = os.getpid()
            tmp = f"{self.pid_file}.tmp"
            with open(tmp, "w") as handle:
                handle.write(f"{pid} {_proc_start_time(pid)}\n")
            os.rename(tmp, self.pid_file)
            os.set_inheritable(ready_w, True)
            # Logrotate may signal the pid in the file from now on; until the supervisor's own
            # handlers are set, ignored (kept across execve, execve(2)) rather than fatal.
            for signum in (signal.SIGHUP, signal.SIGUSR1):
                signal.signal(signum, signal.SIG_IGN)
            argv = [self.supervisor, "--name", self.name, "--pid-file", self.pid_file]
            os.execv(self.supervisor, [*argv, "--ready-fd", str(ready_w), "--", *self.argv])
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(self.pid_file)
            os.write(ready_w, f"{exc}".encode())
            os.close(ready_w)
        return 1

    def stop(self, timeout: float = 90) -> None:
        sup = self.supervisor_pid()
        if sup is None:
            return
        start = _proc_start_time(sup)  # the same pid with another start: another process
        os.kill(sup, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _proc_start_time(sup) != start:
                break
            time.sleep(0.1)
        else:
            # Did not drain in time: end the whole session (supervisor and daemon). Its process
            # group is the one the first child made with setsid, not the supervisor's pid.
            try:
                group = os.getpgid(sup)
                if _proc_start_time(sup) == start and group != os.getpgrp():
                    os.killpg(group, signal.SIGKILL)
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise
            time.sleep(0.2)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pid_file)

    def failure_hint(self) -> str:
        try:
            with open(self.log_file, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 4000))
                tail = handle.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(tail.splitlines()[-20:])

    def forget(self) -> None:
        """Remove the pid and log files (state: absent)."""
        for path in (self.pid_file, self.log_file):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def wait_for_config(
    cli: NsproxyCli,
    socket_path: str,
    want_digest: str,
    timeout: float,
    alive,
    call_timeout: float = 10,
):
    """Poll `nsproxy status` until the daemon reports want_digest as its applied config.

    timeout (seconds) bounds the whole wait; each status call gets at most call_timeout of it,
    and a call that runs out is asked again (a host under load can answer one call late).
    Returns the status document; raises ServiceError on timeout or when alive() turns False."""
    deadline = time.monotonic() + timeout
    last = None
    delay = 0.1
    while True:
        remaining = max(deadline - time.monotonic(), 1.0)
        try:
            status = cli.status(socket_path, timeout=min(call_timeout, remaining))
        except CliTimeout:
            status = None
        if status is not None:
            last = status
            if status.get("config_digest") == want_digest:
                return status
        if not alive():
            raise ServiceError("the nsproxy instance exited before it became ready")
        if time.monotonic() > deadline:
            if last is None:
                raise ServiceError(f"nsproxy did not answer on {socket_path} within {timeout:g} s")
            raise ServiceError(
                f"nsproxy still runs config {last.get('config_digest')} (generation "
                f"{last.get('generation')}) after {timeout:g} s, expected {want_digest}"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


def listener_report(status: dict) -> list:
    """Tenants with their listeners' state (bound / waiting / error), from `status --json`."""
    tenants = []
    for tenant in status.get("tenants") or []:
        tenants.append(
            {
                "name": tenant.get("name"),
                "netns": tenant.get("netns"),
                "state": tenant.get("state"),
                "last_error": tenant.get("last_error"),
                "listeners": [
                    {
                        "listen": listener.get("listen"),
                        "protocol": listener.get("protocol"),
                        "state": listener.get("state"),
                        "error": listener.get("error"),
                    }
                    for listener in tenant.get("listeners") or []
                ],
            }
        )
    return tenants
