"""Configuration: the JSON file, validated into plain objects, one problem per line.

Every problem names where it is (``tenant 'acme': listeners[1].listen: ...``) and what is
allowed. The keys, their types, ranges and defaults are declared in
:mod:`nsproxy.config_schema` (checked first, so nothing below reads a value of the wrong type);
this module checks what spans several values (references to upstreams, listeners that would
collide in one namespace, certificates through tls.py, tcp routes through tcp.py), builds the
objects the daemon runs on, and shares equal ones between tenants.

:func:`load` and :func:`parse` raise only :class:`ConfigError`: any other failure while
checking is reported as a problem line too (its traceback logged at debug), so a reload can
always refuse with a reason. Nothing here touches the network: the file, certificates, the
paths the daemon will create and the presence of optional packages are all that
``nsproxy check`` looks at.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import marshal
import os
import stat
import sys
from typing import NamedTuple

from nsproxy import descriptors, schema
from nsproxy.config_schema import (
    DEFAULT_LIMITS,
    DEFAULT_TIMEOUTS,
    INVALID,
    NAME,
    TENANT,
    TOP,
)
from nsproxy.health_table import MAX_LOAD
from nsproxy.schema import SocketPath, key_text, parse_address, shown

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_TIMEOUTS",
    "Config",
    "ConfigError",
    "HealthCheck",
    "Listener",
    "Route",
    "Tenant",
    "UpstreamSpec",
    "load",
    "parse",
    "parse_json",
    "read_file",
    "parse_address",
    "validate",
]

log = logging.getLogger("nsproxy.config")

_DEFAULT_SOCKET = SocketPath()


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` holds one sentence per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class Listener:
    """One listening address of a tenant."""

    __slots__ = ("cert_state", "digest", "host", "listen", "port", "protocol", "spec", "tls_key")

    def __init__(
        self,
        spec: dict,
        host: str,
        port: int,
        cert_state: tuple | None = None,
        tls_key: str | None = None,
    ):
        # Thousands of tenants share these few values: intern them (memory per tenant).
        self.protocol = sys.intern(spec["protocol"])
        self.spec = None if self.protocol == "http" else spec  # tls.py / tcp.py read the rest
        self.listen = sys.intern(spec["listen"])
        self.host = sys.intern(host)
        self.port = port
        self.digest = _digest(spec)
        # https: fingerprint of the certificate files as validated (see _certificates_unchanged)
        # and the tls settings as one string (tls.settings_key): with the fingerprint, the key
        # of the server context that listeners with the same settings and files share.
        self.cert_state = cert_state
        self.tls_key = tls_key


class HealthCheck(NamedTuple):
    """An upstream's active health check (immutable). Seconds for interval and timeout;
    ``path``, ``host`` and ``expect_status`` (a frozenset of status codes) only for "http"."""

    type: str
    interval: float = 5
    timeout: float = 2
    rise: int = 2
    fall: int = 3
    path: str | None = None
    host: str | None = None
    expect_status: frozenset | None = None


class UpstreamSpec:
    """An upstream of a tenant: servers as (host, port), netns None for the host namespace,
    ``health_check`` a :class:`HealthCheck` or None (passive health only)."""

    __slots__ = ("digest", "health_check", "name", "netns", "servers")

    def __init__(
        self,
        name: str,
        netns: str | None,
        servers: list[tuple[str, int]],
        digest,
        health_check: HealthCheck | None = None,
    ):
        self.name = sys.intern(name)
        self.netns = netns
        self.servers = servers
        self.digest = digest
        self.health_check = health_check


class Route:
    __slots__ = ("host", "path_prefix", "upstream")

    def __init__(self, host: str, path_prefix: str, upstream: str):
        self.host = sys.intern(host)
        self.path_prefix = sys.intern(path_prefix)
        self.upstream = sys.intern(upstream)


class Tenant:
    """A tenant's validated configuration; ``digest`` identifies it for the reload diff
    (sorted JSON), ``quick`` finds it unchanged cheaply (:func:`_quick_digest`)."""

    __slots__ = ("digest", "listeners", "name", "netns", "quick", "routes", "upstreams")

    def __init__(self, name, netns, listeners, routes, upstreams, digest, quick=None):
        self.name = name
        self.netns = name if netns == name else netns  # one string when they are the same
        self.listeners = listeners
        self.routes = routes
        self.upstreams = upstreams
        self.digest = digest
        self.quick = quick


class Config:
    """The validated file. ``workers``: an int or "auto"; ``user``: a user name, a decimal uid
    string or None; ``log_format`` "text" or "json"; ``log_path`` None (stderr) or a path;
    ``limits`` and ``timeouts``: every key of their section (config_schema), defaults filled."""

    __slots__ = (
        "access_log",
        "admin_socket",
        "digest",
        "instance",
        "limits",
        "log_format",
        "log_path",
        "metrics_listen",
        "parts",
        "tenants",
        "timeouts",
        "user",
        "workers",
    )

    def __init__(self):
        self.instance = "nsproxy"
        self.admin_socket = ""
        self.metrics_listen: tuple[str, int] | None = None
        self.access_log: str | None = None
        self.log_format = "text"
        self.log_path: str | None = None
        self.workers: int | str = "auto"
        self.user: str | None = None
        self.limits = dict(DEFAULT_LIMITS)
        self.timeouts = dict(DEFAULT_TIMEOUTS)
        self.tenants: list[Tenant] = []
        self.digest = ""
        # The shared parts of the tenants (see _share_tenant): the next reload's pass starts
        # from a copy instead of walking every kept tenant again. The binder's only: a
        # reload's wire copy leaves it out.
        self.parts: dict = {}

    def listener_count(self) -> int:
        return sum(len(t.listeners) for t in self.tenants)


def _digest(obj) -> bytes | None:
    """Identity of a JSON value for the reload diff; None when it cannot be encoded (too
    deeply nested: such a value is refused by its check anyway)."""
    try:
        return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).digest()
    except (RecursionError, ValueError):
        return None


def _quick_digest(spec: dict) -> bytes | None:
    """A cheap identity of a tenant's JSON as written, to find the tenants a reload keeps.

    ``marshal`` version 2 writes a JSON value's types and contents with no back-references
    (those came with version 3) and no interning flag, so equal values written in the same key
    order give equal bytes, and ``true``, ``1`` and ``1.0`` differ. It is 4x cheaper than the
    sorted JSON of :func:`_digest` (3 against 14 us per tenant here; at 1000 tenants, 11 ms of
    a reload that adds one). Equal quick digests mean the same JSON; different ones may still
    be the same JSON with its keys in another order, which :func:`_digest` (the tenant's
    identity) then decides. None when too deeply nested, like :func:`_digest`.
    """
    try:
        return hashlib.sha1(marshal.dumps(spec, 2)).digest()
    except (RecursionError, ValueError):
        return None


#: Problems listed at most (a reload's refusal carries them all in one status field).
MAX_PROBLEMS = 1000
#: Larger files are refused unread: 100000 tenants (the most a file may hold) fit in it.
MAX_FILE_BYTES = 256 * 1024 * 1024


def load(path: str, previous: dict | None = None, parts: dict | None = None) -> Config:
    """Read and validate ``path``; raise ConfigError listing every problem (and nothing else).

    ``previous`` (tenant name -> Tenant of the running config) lets a reload skip re-checking
    tenants whose JSON did not change (except https ones: their certificate files are
    stat-ed). ``parts``, the running config's :attr:`Config.parts`, saves walking those
    tenants again to share their listeners, routes and upstreams with the new ones.
    """
    return parse(read_file(path), previous, parts, source=path)


def read_file(path: str) -> bytes:
    """The bytes of the config file at ``path``, never waiting: opened non-blocking (a FIFO's
    open would wait for a writer), and anything but a regular file of at most
    :data:`MAX_FILE_BYTES` is refused before a byte is read. Raises ConfigError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
                raise ConfigError([schema.one_line(f"cannot read {path}: {kind}")])
            if st.st_size > MAX_FILE_BYTES:
                raise ConfigError(
                    [schema.one_line(f"{path} is larger than {MAX_FILE_BYTES} bytes")]
                )
            chunks, size = [], 0
            while size <= MAX_FILE_BYTES:  # to the end (a file may grow while it is read)
                chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
    except ConfigError:
        raise
    except BlockingIOError:  # a "regular" file of /proc that answers like a device
        raise ConfigError(
            [schema.one_line(f"cannot read {path}: not readable as a regular file")]
        ) from None
    except OSError as exc:
        raise ConfigError([schema.one_line(f"cannot read {path}: {exc.strerror or exc}")]) from None
    except Exception as exc:
        raise _unexpected(exc) from None
    if size > MAX_FILE_BYTES:
        raise ConfigError([schema.one_line(f"{path} is larger than {MAX_FILE_BYTES} bytes")])
    return b"".join(chunks)


def parse(
    data: bytes, previous: dict | None = None, parts: dict | None = None, source: str | None = None
) -> Config:
    """Validate the bytes of a config file (read from ``source``, when given: no file the
    daemon writes may be that one); raise ConfigError listing every problem.

    ConfigError is the only exception: an unexpected one (a bug, memory) becomes a problem
    line, so that ``check`` prints a sentence and a reload is refused with a reason.
    """
    try:
        return _parse(data, previous, parts, source)
    except ConfigError:
        raise
    except RecursionError:
        raise ConfigError(
            ["the document nests arrays or objects too deeply (a configuration needs 9 levels)"]
        ) from None
    except Exception as exc:
        raise _unexpected(exc) from None


def _unexpected(exc: Exception) -> ConfigError:
    log.debug("checking the configuration failed unexpectedly", exc_info=exc)
    reason = schema.one_line(f"{type(exc).__name__}: {exc}")[:200]
    return ConfigError(
        [f"the configuration could not be checked ({reason}); it is refused. This is a bug "
         "in nsproxy: please report it with the file (traceback at --log-level debug)"]
    )  # fmt: skip


def parse_json(data: bytes, duplicates: list | None = None):
    """The JSON document in ``data``; ConfigError (one line) when it is not valid JSON.

    An object that holds a key twice keeps the last value (as json.loads does); each such
    object and its repeated keys are appended to ``duplicates`` (see :func:`_duplicate_keys`),
    when given."""

    def pairs_hook(pairs: list) -> dict:
        obj = dict(pairs)
        if len(obj) != len(pairs) and duplicates is not None:
            seen: set = set()
            repeated = [key for key, _value in pairs if key in seen or seen.add(key)]
            duplicates.append((obj, list(dict.fromkeys(repeated))))
        return obj

    try:
        return json.loads(data, object_pairs_hook=pairs_hook)
    except RecursionError:
        raise ConfigError(
            ["not valid JSON: arrays or objects are nested too deeply (a configuration needs 9 "
             "levels)"]
        ) from None  # fmt: skip
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError([schema.one_line(f"not valid JSON: {exc}")]) from None


def _parse(data: bytes, previous: dict | None, parts: dict | None, source: str | None) -> Config:
    duplicates: list = []
    raw = parse_json(data, duplicates)
    config, problems = validate(raw, previous, parts, source)
    if duplicates:
        problems[:0] = _duplicate_keys(raw, duplicates)
    if problems:
        shown_problems = [schema.one_line(p) for p in problems[:MAX_PROBLEMS]]
        if len(problems) > MAX_PROBLEMS:
            shown_problems.append(f"and {len(problems) - MAX_PROBLEMS} more problems")
        raise ConfigError(shown_problems)
    config.digest = hashlib.sha256(data).hexdigest()
    return config


def _duplicate_keys(raw, duplicates: list) -> list[str]:
    """One problem per key written twice in one object (``duplicate key 'api'``), where that
    object is, as the other problems say it (``tenant 'acme': upstreams: ...``); objects are
    found by identity in ``raw`` (``duplicates``: ``(object, [keys])`` from :func:`parse_json`;
    one inside a value that a later duplicate replaced is not in ``raw``: its outer key is
    reported already)."""
    wanted = {id(obj): keys for obj, keys in duplicates}
    found = []
    stack = [(raw, "", 0)]  # (value, where, depth): iterative, the document may nest deeply
    while stack:
        value, where, depth = stack.pop()
        if type(value) is dict:
            keys = wanted.get(id(value))
            if keys is not None:
                for key in keys:
                    what = f"duplicate key {shown(key)}, only its last value would count"
                    if not where:
                        found.append(f"{what} (at the top level)")
                    elif where.endswith(": "):
                        found.append(f"{where}{what}")
                    else:
                        found.append(f"{where}: {what}")
            for key, item in reversed(value.items()):  # popped in the document's order
                if type(item) in (dict, list):
                    stack.append((item, schema.field(where, key), depth + 1))
        elif type(value) is list:
            for index, item in reversed(list(enumerate(value))):
                if type(item) not in (dict, list):
                    continue
                sub = f"{where}[{index}]"
                if where == "tenants" and depth == 1 and type(item) is dict:
                    name = item.get("name")
                    if type(name) is str and _valid_name(name):
                        sub = f"tenant '{name}': "
                stack.append((item, sub, depth + 1))
    return found


def _valid_name(name: str) -> bool:
    try:
        NAME.convert(name)
    except schema.Invalid:
        return False
    return True


def _optional_module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


class _Pass:
    """What one validation pass shares across tenants."""

    __slots__ = (
        "bound",
        "httptools_ok",
        "kept",
        "namespaces",
        "previous",
        "problems",
        "seen_names",
        "shared",
        "tcp",
        "tls",
        "tls_checked",
    )

    def __init__(self, problems: list, previous: dict, tenants: list, parts: dict | None):
        self.problems = problems
        self.previous = previous
        self.kept = 0  # tenants of ``previous`` kept as they are
        self.seen_names: dict[str, str] = {}  # lower case -> the tenant name as written
        self.bound: dict[tuple, dict[str, tuple[str, str]]] = {}  # see _claim
        self.namespaces: dict[str, tuple] = {}  # netns as written -> identity
        self.httptools_ok = _optional_module("httptools") is not None
        protocols = {
            li.get("protocol")
            for t in tenants
            if type(t) is dict and type(t.get("listeners")) is list
            for li in t["listeners"]
            if type(li) is dict and type(li.get("protocol")) is str
        }
        self.tls = _optional_module("nsproxy.tls") if "https" in protocols else None
        self.tcp = _optional_module("nsproxy.tcp") if "tcp" in protocols else None
        # Many tenants usually name the same certificate files: load each set once per check.
        # Also "stat": path -> file state for this pass, and "kept": https listeners of
        # unchanged tenants, whose certificates were validated with these very files.
        self.tls_checked: dict = {"stat": {}, "kept": []}
        # Tenants usually declare identical listeners, routes and upstreams: one object per
        # distinct value serves all of them (they are never modified once built). A reload
        # starts from a copy of the running config's registry (``parts``), so that it keeps
        # sharing with the kept tenants without walking them again.
        if parts:
            self.shared = dict(parts)
        else:
            self.shared = {}
            for known in previous.values():
                _share_tenant(known, self.shared)

    def namespace(self, netns: str) -> tuple:
        """The identity of the namespace ``netns`` names: its (device, inode) when it exists
        now, else its one spelling (:func:`schema.netns_canonical`)."""
        identity = self.namespaces.get(netns)
        if identity is None:
            canonical = schema.netns_canonical(netns)
            path = canonical if canonical.startswith("/") else f"/run/netns/{canonical}"
            try:
                st = os.stat(path)
                identity = ("inode", st.st_dev, st.st_ino)
            except (OSError, ValueError):
                identity = ("name", canonical)
            self.namespaces[netns] = identity
        return identity


def validate(
    raw, previous: dict | None = None, parts: dict | None = None, source: str | None = None
) -> tuple[Config, list[str]]:
    """The Config described by ``raw`` (parsed JSON) and the list of problems found.

    ``previous`` (tenant name -> Tenant of the running config) and ``parts`` (its
    :attr:`Config.parts`): see :func:`load`. ``source``: the file ``raw`` was read from."""
    config = Config()
    problems: list[str] = []
    if type(raw) is not dict:
        return config, ["the top level must be a JSON object with a 'tenants' list"]
    top = TOP.collect_fields(raw, "", problems)
    if top["instance"] is not INVALID:
        config.instance = top["instance"]
    admin = top["admin_socket"]
    if admin is None:
        where = "admin_socket (default)"
        admin = _DEFAULT_SOCKET.collect(f"/run/nsproxy/{config.instance}.sock", where, problems)
    if admin is not INVALID:
        config.admin_socket = admin
    if top["metrics"] not in (None, INVALID):
        config.metrics_listen = top["metrics"]["listen"]
    if top["access_log"] is not INVALID:
        config.access_log = top["access_log"]
    if top["log"] is not INVALID:
        config.log_format = top["log"]["format"]
        config.log_path = top["log"]["path"]
    if top["workers"] is not INVALID:
        config.workers = top["workers"]
    if top["user"] is not INVALID:
        config.user = top["user"]
    if top["limits"] is not INVALID:
        config.limits = top["limits"]
    if top["timeouts"] is not INVALID:
        config.timeouts = top["timeouts"]
    _check_distinct_files(config, top, source, problems)
    tenants = top["tenants"]
    if tenants is INVALID:
        return config, problems
    ctx = _Pass(problems, previous or {}, tenants, parts)
    if config.metrics_listen is not None:
        # The metrics socket is a listener in the host namespace: a tenant whose netns is the
        # host's (a /proc/PID path of a process there) must not take its address.
        _claim(ctx, None, _Address(*config.metrics_listen), "metrics.listen")
    for index, spec in enumerate(tenants):
        tenant = _tenant(index, spec, ctx)
        if tenant is not None:
            config.tenants.append(tenant)
    _check_health_capacity(config, problems)
    if not problems:  # counted on a valid config only: every listener is known
        too_many = descriptors.problem(config)
        if too_many:
            problems.append(too_many)
    if ctx.kept == len(ctx.previous):
        config.parts = ctx.shared
    else:  # a tenant was removed or changed: its parts must not live on in the registry
        for tenant in config.tenants:
            _share_tenant(tenant, config.parts)
    return config, problems


def _check_distinct_files(config: Config, top: dict, source: str | None, problems: list) -> None:
    """The admin socket and the config file are files of their own: a log at the socket's
    path would be unlinked when the socket is made (and write to a deleted file), a socket or
    a log at the config's path would replace or grow the config. (The two logs may share a
    file, /dev/null say.) Paths are compared normalised, and with symbolic links followed."""
    own = []  # (what, keys)
    if source is not None:
        own.append(("the configuration file", _file_keys(os.path.abspath(source))))
    if top["admin_socket"] is not INVALID:
        own.append(("admin_socket", _file_keys(config.admin_socket)))
    others = [("admin_socket", config.admin_socket)] if top["admin_socket"] is not INVALID else []
    if top["access_log"] not in (INVALID, None, "-"):
        others.append(("access_log", config.access_log))
    if top["log"] is not INVALID and config.log_path:
        others.append(("log.path", config.log_path))
    for name, path in others:
        keys = _file_keys(path)
        for what, taken in own:
            if what != name and keys & taken:
                problems.append(
                    f"{name}: {path} is the same file as {what}; each must be a file of its own"
                )
                break


def _file_keys(path: str) -> set[str]:
    """``path`` in one spelling (``//a/./b`` is ``/a/b``), as written and with symbolic links
    followed (os.path.realpath looks, changes nothing)."""
    return {_file_key(path), _file_key(os.path.realpath(path))}


def _file_key(path: str) -> str:
    """``path`` in one spelling (``//a/./b`` is ``/a/b``)."""
    return os.path.normpath("/" + path.lstrip("/"))


def _check_health_capacity(config: Config, problems: list[str]) -> None:
    """Checked servers (servers of upstreams with a ``health_check``) must fit the shared health
    table (health_table.MAX_LOAD); a problem names the biggest such upstreams."""
    sizes = [
        (len(up.servers), tenant.name, up.name)
        for tenant in config.tenants
        for up in tenant.upstreams.values()
        if up.health_check is not None
    ]
    total = sum(size for size, _tenant_name, _up_name in sizes)
    if total > MAX_LOAD:
        biggest = ", ".join(
            f"tenant {key_text(t)} upstream {key_text(u)} ({n})" for n, t, u in sorted(sizes)[-3:]
        )
        problems.append(
            f"tenants[].upstreams.*.health_check: {total} servers have health checks, at most "
            f"{MAX_LOAD} can (the shared health table's capacity); the biggest: {biggest}"
        )


def _share_tenant(tenant: Tenant, shared: dict) -> None:
    """Replace the tenant's listeners, routes and upstreams by equal objects already in
    ``shared``, or register its own there (kept tenants are seeded this way, unchanged)."""
    ups = {n: shared.setdefault(("upstream", n, u.digest), u) for n, u in tenant.upstreams.items()}
    tenant.upstreams = _one(shared, "upstreams", tenant.upstreams, ups, ups.items())
    listeners = [shared.setdefault(("listener", li.digest, li.cert_state), li) for li in
                 tenant.listeners]  # fmt: skip
    tenant.listeners = _one(shared, "listeners", tenant.listeners, listeners, listeners)
    routes = tuple(
        shared.setdefault(("route", r.host, r.path_prefix, r.upstream), r) for r in tenant.routes
    )
    tenant.routes = _one(shared, "routes", tenant.routes, routes, routes)


def _one(shared: dict, kind: str, own, rebuilt, parts):
    """The shared container for these (shared) parts: the first one registered wins; the
    tenant's own container is registered when it already holds exactly these parts."""
    key = (kind, *((p[0], id(p[1])) if isinstance(p, tuple) else id(p) for p in parts))
    found = shared.get(key)
    if found is None:
        if kind == "upstreams":
            same = own.keys() == rebuilt.keys() and all(own[n] is u for n, u in rebuilt.items())
        else:
            same = type(own) is type(rebuilt) and all(a is b for a, b in zip(own, rebuilt))
        found = shared[key] = own if same else rebuilt
    return found


def _tenant(index: int, spec, ctx: _Pass) -> Tenant | None:
    problems = ctx.problems
    where = f"tenants[{index}]"
    if type(spec) is not dict:
        problems.append(f"{where}: must be {TENANT.what}, got {shown(spec)}")
        return None
    if "name" not in spec:
        problems.append(f"{where}.name: required, {NAME.what}")
        return None
    name = NAME.collect(spec["name"], f"{where}.name", problems)
    if name is INVALID:
        return None
    where = f"tenant '{name}': "
    # Equal ignoring case counts as the same name: an upstream may compare X-Nsproxy-Tenant
    # values without case (header values often are), and would take one tenant for another.
    other = ctx.seen_names.get(name.lower())
    if other == name:
        problems.append(f"{where}duplicate tenant name")
    elif other is not None:
        problems.append(
            f"{where}name: differs from tenant '{other}' only in case; an upstream may compare "
            "tenant names without case, so they must differ in more than case"
        )
    ctx.seen_names.setdefault(name.lower(), name)
    quick = _quick_digest(spec)
    known = ctx.previous.get(name)
    digest = None
    same = False
    if known is not None:
        same = quick is not None and quick == known.quick
        if not same:  # changed, or the same JSON written otherwise (keys in another order)
            digest = _digest(spec)
            same = digest is not None and digest == known.digest
            if same:
                known.quick = quick  # the file's new spelling of it
    if same and _certificates_unchanged(known, ctx.tls, ctx.tls_checked["stat"]):
        # Unchanged since it was last validated: only the checks across tenants remain.
        ctx.kept += 1
        ctx.tls_checked["kept"].extend(li for li in known.listeners if li.protocol == "https")
        for li_index, listener in enumerate(known.listeners):
            _claim(ctx, known.netns, listener, f"{where}listeners[{li_index}]")
        return known
    start = len(problems)
    kept = TENANT.collect_fields(spec, where, problems)
    netns = kept["netns"]

    upstreams = {}
    if kept["upstreams"] is not INVALID:
        raw_upstreams = spec.get("upstreams", {})
        for up_name, up in kept["upstreams"].items():
            health = up["health_check"]
            upstreams[up_name] = UpstreamSpec(
                up_name,
                up["netns"],
                up["servers"],
                _digest(raw_upstreams[up_name]),
                None if health is None else HealthCheck(**health),
            )
        names = frozenset(upstreams)
    else:  # its problems are reported; check references against the valid names given
        raw_upstreams = spec.get("upstreams")
        names = None
        if type(raw_upstreams) is dict:
            names = frozenset(n for n in raw_upstreams if NAME.collect(n, "", []) is not INVALID)

    listeners = []
    if kept["listeners"] is not INVALID:
        for li_index, (li, checked) in enumerate(zip(spec.get("listeners", ()), kept["listeners"])):
            lw = f"{where}listeners[{li_index}]"
            listener = _listener(lw, li, checked, ctx, names)
            if listener is not None:
                if netns is not INVALID:
                    _claim(ctx, netns, listener, lw)
                listeners.append(listener)

    routes = []
    if kept["routes"] is not INVALID:
        seen_routes = set()
        for r_index, r in enumerate(kept["routes"]):
            rw = f"{where}routes[{r_index}]"
            if names is not None and r["upstream"] not in names:
                problems.append(
                    f"{rw}.upstream: unknown upstream {r['upstream']!r} "
                    f"(this tenant's upstreams: {_names(names)})"
                )
            key = (r["host"], r["path_prefix"])
            if key in seen_routes:
                problems.append(
                    f"{rw}: duplicate route for host {r['host']!r} and path_prefix "
                    f"{shown(r['path_prefix'])}"
                )
            seen_routes.add(key)
            routes.append(Route(r["host"], r["path_prefix"], r["upstream"]))
    if len(problems) > start:
        return None
    if digest is None:
        digest = _digest(spec)
    tenant = Tenant(name, netns, listeners, routes, upstreams, digest, quick)
    _share_tenant(tenant, ctx.shared)
    return tenant


def _names(names) -> str:
    """Upstream names for a problem line: sorted, at most ten."""
    shown_names = sorted(key_text(n) for n in names)
    text = ", ".join(shown_names[:10]) or "none declared"
    return text + (f" and {len(shown_names) - 10} more" if len(shown_names) > 10 else "")


def _listener(lw: str, li: dict, checked: dict, ctx: _Pass, upstream_names) -> Listener | None:
    """The Listener of the (type-checked) listener ``li``, or None after adding its problems."""
    problems = ctx.problems
    start = len(problems)
    protocol = checked["protocol"]
    host, port = checked["listen"]
    if protocol in ("http", "https") and not ctx.httptools_ok:
        problems.append(
            f"{lw}.protocol: {protocol!r} needs the Python package httptools, which is not "
            "installed (pip install httptools)"
        )
    cert_state = tls_key = None
    tls = ctx.tls
    if protocol == "https":
        if tls is None:
            problems.append(
                f"{lw}.protocol: 'https' needs nsproxy.tls, which this build of nsproxy lacks"
            )
        else:
            tls_checked = ctx.tls_checked
            # Fingerprint first: a file replaced during validation is validated again next time.
            cert_state = tls.certificate_files_state(li, tls_checked["stat"])
            # The same settings and the same files (path, inode, size, mtime) give the same
            # answer: validate (load) them once, not once per tenant.
            tls_key = tls.settings_key(li)
            key = (tls_key, cert_state)
            found = tls_checked.get(key)
            if found is None:
                settings = li.get("tls")
                same = (
                    kept
                    for kept in tls_checked["kept"]
                    if kept.cert_state == cert_state and kept.spec.get("tls") == settings
                )
                found = [] if next(same, None) is not None else tls.validate_listener(li)
                tls_checked[key] = found
            problems.extend(f"{lw}.{p}" for p in found)
    elif protocol == "tcp":
        if ctx.tcp is None:
            problems.append(
                f"{lw}.protocol: 'tcp' needs nsproxy.tcp, which this build of nsproxy lacks"
            )
        elif upstream_names is not None:
            problems.extend(f"{lw}.{p}" for p in ctx.tcp.validate_listener(li, upstream_names))
    if len(problems) > start:
        return None
    return Listener(li, host, port, cert_state, tls_key)


def _certificates_unchanged(tenant, tls, memo) -> bool:
    """Whether every https listener's certificate files are the ones validated last time.

    Loading a certificate costs milliseconds; stat-ing its files costs microseconds. Without
    this, adding one tenant to 1000 https tenants re-loaded 1000 certificates on the loop.
    """
    return all(
        li.protocol != "https" or (tls is not None and tls.files_unchanged(li.cert_state, memo))
        for li in tenant.listeners
    )


def _claim(ctx: _Pass, netns: str | None, listener, lw: str) -> None:
    """Refuse two listeners on the same port and overlapping addresses in one namespace,
    however the namespace is written (``ta``, ``/run/netns/ta``, ``/proc/PID/ns/net`` of a
    process in it). IPv6 listeners are IPV6_V6ONLY, so only one family overlaps. ``netns``
    None is the host namespace (the binder's own: ``metrics.listen``, claimed first)."""
    ip = schema.ip_address(listener.host)
    identity = ctx.namespace(netns if netns is not None else "/proc/self/ns/net")
    # (namespace, port, family) -> {host: (where, netns as written)}: one lookup per listener.
    taken = ctx.bound.setdefault((identity, listener.port, ip.version), {})
    other = taken.get(listener.host)
    if other is None and ip.is_unspecified and taken:
        other = next(iter(taken.values()))  # the wildcard overlaps every address of its family
    if other is None:
        other = taken.get("0.0.0.0" if ip.version == 4 else "::")
    if other is None:
        taken[listener.host] = (lw, netns)
        return
    other_where, other_netns = other
    if other_netns is None:
        where = "in the host network namespace"
    else:
        spelled = "" if other_netns == netns else f" (written {other_netns!r} there)"
        where = f"in network namespace {netns!r}{spelled}"
    ctx.problems.append(
        f"{lw}.listen: duplicate listener: {listener.listen} overlaps {other_where} {where}"
    )


class _Address:
    """What :func:`_claim` reads of a listener, for ``metrics.listen``."""

    __slots__ = ("host", "listen", "port")

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
