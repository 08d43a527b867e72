"""Valid nsproxy configuration documents for the config tests, and how a problem line names a
position of the document (the JSON path ``("tenants", 0, "listeners", 1, "tls")`` is the field
``tenant 'acme': listeners[1].tls``)."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path


def make_cert(folder: Path, name: str = "acme") -> tuple[str, str]:
    """A self-signed P-256 certificate for ``<name>.example`` and its key, made by openssl."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    if not cert.exists():
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "2", "-subj", f"/CN={name}.example",
             "-addext", f"subjectAltName=DNS:{name}.example", "-keyout", str(key),
             "-out", str(cert)],
            check=True,
            capture_output=True,
        )  # fmt: skip
    return str(cert), str(key)


def rich_document(folder: Path, cert: str, key: str) -> dict:
    """A valid document that sets every key the configuration has (folder: for the admin
    socket, which must be creatable)."""
    return {
        "instance": "main",
        "admin_socket": str(folder / "main.sock"),
        "metrics": {"listen": "127.0.0.1:9108"},
        "access_log": "-",
        "log": {"format": "json", "path": None},
        "workers": 2,
        "user": None,
        "limits": {
            "max_header_bytes": 16384,
            "max_headers": 50,
            "max_response_header_bytes": 65536,
            "max_response_headers": 200,
            "max_body_bytes": 1000000,
            "max_connections": None,
            "max_connections_per_tenant": 500,
        },
        "timeouts": {
            "connect": 2.5,
            "header_read": 10,
            "response_head": 30,
            "read": 60,
            "idle": 60,
            "drain": 5,
            "ticket_keys": 3600,
        },
        "tenants": [
            {
                "name": "acme",
                "netns": "acme",
                "listeners": [
                    {"listen": "10.0.0.250:80", "protocol": "http"},
                    {
                        "listen": "[::1]:443",
                        "protocol": "https",
                        "tls": {"certificates": [{"cert": cert, "key": key}], "min_version": "1.2"},
                    },
                    {
                        "listen": "10.0.0.250:5432",
                        "protocol": "tcp",
                        "upstream": "db",
                        "sni_routes": [{"sni": "db.example", "upstream": "db"}],
                        "proxy_protocol": "v2",
                    },
                ],
                "routes": [
                    {"host": "api.example", "path_prefix": "/v1/", "upstream": "api"},
                    {"host": "*", "path_prefix": "/", "upstream": "api"},
                ],
                "upstreams": {
                    "api": {
                        "netns": None,
                        "servers": ["192.168.100.10:8080", "[2001:db8::10]:8080"],
                        "health_check": {
                            "type": "http",
                            "interval": 5,
                            "timeout": 2,
                            "rise": 2,
                            "fall": 3,
                            "path": "/health",
                            "host": "api.example",
                            "expect_status": [200, 204],
                        },
                    },
                    "db": {
                        "netns": "acme",
                        "servers": ["10.0.0.5:5432"],
                        "health_check": {"type": "tcp", "interval": 1, "timeout": 0.5},
                    },
                },
            },
            {
                "name": "beta",
                "netns": "/run/netns/beta",
                "listeners": [{"listen": "10.0.0.250:80", "protocol": "http"}],
                "routes": [{"upstream": "app"}],
                "upstreams": {"app": {"servers": ["127.0.0.1:8080"]}},
            },
        ],
    }


def field_of(doc: dict, path: tuple) -> str:
    """The field text that a problem line about ``path`` of ``doc`` starts with."""
    if len(path) >= 3 and path[0] == "tenants" and path[2] != "name":
        prefix, rest = f"tenant '{doc['tenants'][path[1]]['name']}': ", path[2:]
    else:
        prefix, rest = "", path
    text = ""
    for part in rest:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return prefix + text


def positions(value, path: tuple = ()):
    """Every (path, value) of a JSON document, containers before what they hold."""
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from positions(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from positions(item, (*path, index))


def set_at(doc: dict, path: tuple, value) -> dict:
    """A copy of ``doc`` with ``value`` at ``path`` (the last key is added if missing)."""
    doc = copy.deepcopy(doc)
    target = doc
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return doc


def delete_at(doc: dict, path: tuple) -> dict:
    doc = copy.deepcopy(doc)
    target = doc
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]
    return doc
