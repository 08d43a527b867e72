"""Admin socket: a unix stream socket, one JSON request line, one JSON answer line.

Requests: ``{"command": "status"}``, ``{"command": "reload"}`` and ``{"command": "upgrade"}``.
Used by ``nsproxy status``, ``nsproxy reload``, ``nsproxy upgrade``, the nsproxy_instance
Ansible module and the benchmark. Served by the binder (root, mode 0600); an upgrade is answered
by the re-executed binder, on the same connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat

log = logging.getLogger("nsproxy.admin")


class AdminError(Exception):
    """The daemon could not be reached or answered with an error; a full sentence."""


MAX_REQUEST = 4096  # bytes of one request line


#: Seconds a connect to an existing admin socket may take before it counts as answered (a
#: listener whose backlog is full does not accept at once, but is alive).
PROBE_TIMEOUT = 1.0


def answering(path: str) -> bool:
    """Whether a process listens on the unix socket ``path`` (a connect succeeds, or waits in
    a full backlog); False when the file is gone or nothing listens (ECONNREFUSED: a socket
    left by a process that died). Raises OSError for anything else (EACCES)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(PROBE_TIMEOUT)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except (TimeoutError, BlockingIOError):
            return True
        return True


IN_USE = "in use by a running process (another nsproxy?); stop it or choose another admin_socket"


def claim(path: str) -> socket.socket:
    """The listening admin socket at ``path`` (mode 0600), made with its missing folders. A
    socket file already there is replaced only when nothing answers on it (it was left by a
    daemon that died): one that a running process serves, another nsproxy instance's say, is
    never taken over. Raises AdminError: ``admin_socket PATH: <reason>``, one line."""
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise AdminError(
            f"admin_socket {path}: cannot create the folder {folder}: {exc.strerror or exc}"
        ) from None
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise AdminError(f"admin_socket {path}: {exc.strerror or exc}") from None
    if mode is not None:
        if not stat.S_ISSOCK(mode):
            raise AdminError(f"admin_socket {path}: exists and is not a socket; not replaced")
        try:
            live = answering(path)
        except OSError as exc:
            raise AdminError(
                f"admin_socket {path}: cannot tell whether a running process uses it "
                f"({exc.strerror or exc}); not replaced"
            ) from None
        if live:
            raise AdminError(f"admin_socket {path}: {IN_USE}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        sock.listen(100)
    except OSError as exc:
        sock.close()
        raise AdminError(f"admin_socket {path}: {exc.strerror or exc}") from None
    return sock


async def start(daemon, path: str | None, sock: socket.socket | None = None):
    """Serve the admin socket: ``sock`` (from :func:`claim`, or the listening socket an
    upgrade handed over), else the one :func:`claim` makes at ``path``. Raises AdminError."""
    if sock is None:
        sock = claim(path)

    async def handle(reader, writer):
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            try:
                request = json.loads(line[:MAX_REQUEST])
                command = request["command"]
            except (ValueError, KeyError, TypeError):
                answer = {"ok": False, "error": 'send {"command": "status"|"reload"|"upgrade"}'}
            else:
                if command == "status":
                    answer = {"ok": True, "status": await daemon.status()}
                elif command == "upgrade":
                    ok, message = await daemon.upgrade(writer.get_extra_info("socket"))
                    answer = {"ok": ok, "message": message}
                    if not ok:
                        answer["error"] = message
                elif command == "reload":
                    ok, message = await daemon.reload()
                    answer = {"ok": ok, "generation": daemon.generation}
                    if not ok:
                        answer["error"] = message
                else:
                    answer = {"ok": False, "error": f"unknown command {command!r}"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (OSError, asyncio.TimeoutError):
            pass
        except Exception:
            log.exception("admin request failed")
        finally:
            writer.close()

    return await asyncio.start_unix_server(handle, sock=sock, limit=MAX_REQUEST)


def request(path: str, command: str, timeout: float = 120.0) -> dict:
    """Send one command to the daemon listening on ``path``; its JSON answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(json.dumps({"command": command}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except FileNotFoundError:
        raise AdminError(f"no nsproxy admin socket at {path} (is the daemon running?)") from None
    except OSError as exc:
        raise AdminError(f"cannot talk to nsproxy at {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(data)
    except ValueError:
        raise AdminError(f"nsproxy at {path} sent an invalid answer") from None
