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

log = logging.getLogger("nsproxy.admin")


class AdminError(Exception):
    """The daemon could not be reached or answered with an error; a full sentence."""


MAX_REQUEST = 4096  # bytes of one request line


async def start(daemon, path: str | None, sock: socket.socket | None = None):
    """Listen on ``path`` (mode 0600; a stale socket file is replaced), or on ``sock`` (the
    listening socket an upgrade handed over)."""
    if sock is None:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

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

    if sock is not None:
        return await asyncio.start_unix_server(handle, sock=sock, limit=MAX_REQUEST)
    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(handle, path=path, limit=MAX_REQUEST)
    finally:
        os.umask(old)
    return server


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
