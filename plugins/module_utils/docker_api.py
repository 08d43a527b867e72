# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A minimal Docker Engine API client over its unix socket (http.client on AF_UNIX): enough to
find a container's network namespace. Neither the docker CLI nor the docker SDK is needed."""

from __future__ import annotations

import http.client
import json
import socket
from urllib.parse import quote

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.errors import (
    ModuleFailure,
    ParamError,
)

DEFAULT_DOCKER_HOST = "unix:///run/docker.sock"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def docker_socket_path(docker_host, field="docker_host"):
    """Map ``unix:///run/docker.sock`` or ``/run/docker.sock`` to the socket path; anything
    else (tcp://...) is refused with ParamError naming ``field``."""
    text = str(docker_host or DEFAULT_DOCKER_HOST)
    if text.startswith("unix://"):
        text = text[len("unix://") :]
    if not text.startswith("/"):
        raise ParamError(
            field,
            f"'{docker_host}' is not supported; use a unix socket such as "
            "unix:///run/docker.sock (the Engine API is reached through its local socket)",
        )
    return text


def docker_get(socket_path, url, timeout=30):
    """GET ``url`` from the Engine API; return ``(status, decoded JSON or text)``. A socket
    that cannot be reached raises ModuleFailure with a sentence."""
    conn = _UnixHTTPConnection(socket_path, timeout)
    try:
        conn.request("GET", url, headers={"Host": "docker"})
        response = conn.getresponse()
        body = response.read().decode("utf-8", "replace")
    except OSError as exc:
        raise ModuleFailure(
            f"docker_host: cannot reach the Docker Engine at {socket_path}: "
            f"{exc.strerror or exc} (is dockerd running?)"
        ) from None
    finally:
        conn.close()
    try:
        return response.status, json.loads(body)
    except ValueError:
        return response.status, body


def inspect_container(socket_path, ref, field="container"):
    """The container's inspect document (``GET /containers/<ref>/json``). A missing container
    raises ParamError naming ``field``; other API errors raise ModuleFailure."""
    status, doc = docker_get(socket_path, "/containers/" + quote(str(ref), safe="") + "/json")
    if status == 404:
        raise ParamError(field, f"no container named or with id '{ref}' on {socket_path}")
    if status != 200:
        message = doc.get("message") if isinstance(doc, dict) else doc
        raise ModuleFailure(f"inspecting container '{ref}' failed: HTTP {status}: {message}")
    return doc


def container_netns(doc, field="container"):
    """From an inspect document, return ``(pid, sandbox_key, container_id, name)`` of a
    running container that has its own network namespace; otherwise raise ParamError
    (not running, or sharing the host's network)."""
    name = str(doc.get("Name") or "").lstrip("/")
    state = doc.get("State") or {}
    if not state.get("Running"):
        raise ParamError(
            field,
            f"container '{name}' is not running (status {state.get('Status')}); its network "
            "namespace exists only while it runs",
        )
    mode = str((doc.get("HostConfig") or {}).get("NetworkMode") or "")
    if mode == "host":
        raise ParamError(
            field,
            f"container '{name}' uses network_mode host: its namespace is the host's own, "
            "so it is never given a name",
        )
    sandbox = (doc.get("NetworkSettings") or {}).get("SandboxKey") or None
    return int(state.get("Pid") or 0), sandbox, doc.get("Id"), name
