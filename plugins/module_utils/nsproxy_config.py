# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure logic of the nsproxy_instance module: the config file it wants, how it differs from
the one on disk (per tenant), and how it lands on disk (atomically).

Nothing here talks to the daemon or to a service manager (see nsproxy_service.py), so all of
it is unit-testable without root.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.validation import (
    has_control_characters,
)

INSTANCE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
CONFIG_MODE = 0o640

# The daemon's global settings (daemon contract), as the module exposes them.
GLOBAL_SECTIONS = ("metrics", "access_log", "limits", "timeouts")


class ConfigError(ValueError):
    """User input that cannot become an nsproxy config; the message names the field."""


def config_path(config_dir: str, name: str) -> str:
    """Where the instance's config file lives: <config_dir>/<name>.json."""
    return os.path.join(config_dir, f"{name}.json")


def _drop_none(section: dict) -> dict:
    """Suboptions the user left out arrive as None: leave them to the daemon's defaults."""
    return {key: value for key, value in section.items() if value is not None}


def check_instance_name(name: str) -> None:
    """The name becomes a file name, a systemd instance name and a socket name: the whole
    string must match (``$`` would let a trailing newline through)."""
    if not isinstance(name, str) or not INSTANCE_NAME_RE.fullmatch(name):
        raise ConfigError(
            f"name: {name!r} is not a valid instance name; allowed: 1-64 characters "
            "of a-z, 0-9, '_' and '-', starting with a letter or digit"
        )


def check_workers(workers):
    """``workers`` as the daemon takes it: "auto" or a number from 1 to 256."""
    text = str(workers).strip()
    if text == "auto":
        return "auto"
    if text.isdigit() and 1 <= int(text) <= 256:
        return int(text)
    raise ConfigError(f"workers: must be 'auto' or a number from 1 to 256 (got {workers!r})")


def check_tenants(tenants: list) -> None:
    """Shape checks the per-tenant diff relies on; everything else is `nsproxy check`'s job."""
    seen = set()
    for index, tenant in enumerate(tenants):
        where = f"tenants[{index}]"
        if not isinstance(tenant, dict):
            raise ConfigError(f"{where}: must be a mapping (name, netns, listeners, ...)")
        name = tenant.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}.name: required, a non-empty string")
        if has_control_characters(name):
            raise ConfigError(f"{where}.name: {name!r} contains a control character; not allowed")
        if name in seen:
            raise ConfigError(f"{where}.name: tenant {name!r} is listed twice")
        seen.add(name)


def build_config(
    name: str,
    tenants: list,
    admin_socket: str,
    metrics: dict | None = None,
    access_log: str | None = None,
    limits: dict | None = None,
    timeouts: dict | None = None,
    user: str | None = None,
    workers=None,
) -> dict:
    """The config document (daemon contract shape) for these module parameters."""
    check_instance_name(name)
    check_tenants(tenants)
    config: dict = {"instance": name, "admin_socket": admin_socket}
    if user:
        config["user"] = user
    if workers is not None:
        config["workers"] = check_workers(workers)
    if metrics:
        metrics = _drop_none(metrics)
        if metrics:
            config["metrics"] = metrics
    if access_log is not None:
        # "" is how a YAML user spells "no access log" without writing null.
        config["access_log"] = access_log or None
    for key, section in (("limits", limits), ("timeouts", timeouts)):
        if section:
            section = _drop_none(section)
            if section:
                config[key] = section
    config["tenants"] = [dict(tenant) for tenant in tenants]
    return config


def render(config: dict) -> bytes:
    """Canonical bytes of a config: stable key order, so equal configs give equal files."""
    return (json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def digest(data: bytes) -> str:
    """sha256 hex, the same digest the daemon reports as config_digest."""
    return hashlib.sha256(data).hexdigest()


def read_existing(path: str) -> tuple[bytes | None, dict | None]:
    """(bytes, parsed) of the config on disk; (None, None) when absent; parsed None if broken.
    Any other failure to read it (a directory, no permission, an I/O error) is a ConfigError
    naming the path."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return None, None
    except IsADirectoryError:
        raise ConfigError(
            f"{path} is a directory, not a config file; remove it (the config file of the "
            "instance goes there) or choose another config_dir"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the existing config {path}: {exc.strerror}") from None
    try:
        parsed = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        return data, None
    return data, parsed if isinstance(parsed, dict) else None


def tenants_by_name(config: dict | None) -> dict:
    """{tenant name: tenant} of a parsed config (tenants without a usable name are skipped)."""
    found = {}
    for tenant in (config or {}).get("tenants") or []:
        if isinstance(tenant, dict) and isinstance(tenant.get("name"), str):
            found[tenant["name"]] = tenant
    return found


def _settings(config: dict | None) -> dict:
    return {key: value for key, value in (config or {}).items() if key != "tenants"}


def tenant_changes(before: dict | None, after: dict | None) -> dict:
    """Which tenants a change adds, removes or changes (with the top-level fields that differ),
    and which global settings change."""
    old, new = tenants_by_name(before), tenants_by_name(after)
    changed = []
    for name in new:
        if name in old and old[name] != new[name]:
            keys = sorted(set(old[name]) | set(new[name]))
            fields = [key for key in keys if old[name].get(key) != new[name].get(key)]
            changed.append({"name": name, "fields": fields})
    old_settings, new_settings = _settings(before), _settings(after)
    settings = sorted(
        key
        for key in set(old_settings) | set(new_settings)
        if old_settings.get(key) != new_settings.get(key)
    )
    return {
        "added": [name for name in new if name not in old],
        "removed": [name for name in old if name not in new],
        "changed": changed,
        "settings": settings,
    }


def _pretty(value) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def diff_entries(path: str, before: dict | None, after: dict | None, broken: bool = False) -> list:
    """Ansible diff entries, one per changed piece: global settings, then each added, changed
    or removed tenant. Each shows only that piece, so a one-route change is a few lines."""
    entries = []
    if broken:
        entries.append(
            {
                "before_header": f"{path} (not valid JSON, replaced)",
                "after_header": path,
                "before": "<unparseable>\n",
                "after": "",
            }
        )
    changes = tenant_changes(before, after)
    if changes["settings"] or (before is None) != (after is None):
        entries.append(
            {
                "before_header": f"{path}: settings" if before is not None else f"{path} (absent)",
                "after_header": f"{path}: settings" if after is not None else f"{path} (absent)",
                "before": _pretty(_settings(before)) if before is not None else "",
                "after": _pretty(_settings(after)) if after is not None else "",
            }
        )
    old, new = tenants_by_name(before), tenants_by_name(after)
    for name in changes["added"]:
        entries.append(
            {
                "before_header": f"tenant {name} (absent)",
                "after_header": f"tenant {name} (added)",
                "before": "",
                "after": _pretty(new[name]),
            }
        )
    for change in changes["changed"]:
        name = change["name"]
        entries.append(
            {
                "before_header": f"tenant {name}",
                "after_header": f"tenant {name} (changed: {', '.join(change['fields'])})",
                "before": _pretty(old[name]),
                "after": _pretty(new[name]),
            }
        )
    for name in changes["removed"]:
        entries.append(
            {
                "before_header": f"tenant {name}",
                "after_header": f"tenant {name} (removed)",
                "before": _pretty(old[name]),
                "after": "",
            }
        )
    return entries


def write_atomic(path: str, data: bytes, mode: int = CONFIG_MODE, uid: int = -1, gid: int = -1):
    """Write data to path so that readers see the old file or the new one, never a mix:
    temp file in the same directory, fsync, chmod/chown, rename, fsync of the directory."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if uid != -1 or gid != -1:
                os.fchown(handle.fileno(), uid, gid)
            os.fsync(handle.fileno())
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def file_attributes_differ(path: str, mode: int, uid: int, gid: int) -> bool:
    """Whether an existing file has another mode or owner than wanted (-1 = don't care)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return False
    return (
        (info.st_mode & 0o7777) != mode
        or (uid != -1 and info.st_uid != uid)
        or (gid != -1 and info.st_gid != gid)
    )
