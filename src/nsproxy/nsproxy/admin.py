"""Admin socket: a unix stream socket, one JSON request line, one JSON answer line.

Requests: ``{"command": "status"}`` and ``{"command": "reload"}``. Used by ``nsproxy status``,
``nsproxy reload``, the nsproxy_instance Ansible module and the benchmark.
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


async def start(daemon, path: str):
    """Listen on ``path`` (mode 0600; a stale socket file is replaced)."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)

    async def handle(reader, writer):
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            try:
                request = json.loads(line)
                command = request["command"]
            except (ValueError, KeyError, TypeError):
                answer = {"ok": False, "error": 'send {"command": "status"|"reload"}'}
            else:
                if command == "status":
                    answer = {"ok": True, "status": daemon.status()}
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

    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(handle, path=path)
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
