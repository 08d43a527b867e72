"""Configuration: the JSON file, validated into plain objects, one problem per line.

Every problem names where it is (``tenant 'acme': listeners[1].listen: ...``) and what is
allowed. Nothing here touches the network: the file, certificates (through tls.py) and the
presence of optional packages are all that ``nsproxy check`` looks at.
"""

from __future__ import annotations

import hashlib
import importlib
import ipaddress
import json
import re
import sys

DEFAULT_LIMITS = {
    "max_header_bytes": 32768,
    "max_headers": 100,
    "max_connections_per_tenant": 10000,
    "max_body_bytes": None,
}
DEFAULT_TIMEOUTS = {"connect": 5, "idle": 60, "header_read": 10, "read": 60, "drain": 30}
TOP_KEYS = {
    "instance",
    "admin_socket",
    "metrics",
    "access_log",
    "limits",
    "timeouts",
    "tenants",
    "workers",
    "user",
}
TENANT_KEYS = {"name", "netns", "listeners", "routes", "upstreams"}
LISTENER_KEYS = {
    "http": {"listen", "protocol"},
    "https": {"listen", "protocol", "tls"},
    "tcp": {"listen", "protocol", "upstream", "sni_routes", "proxy_protocol"},
}
ROUTE_KEYS = {"host", "path_prefix", "upstream"}
UPSTREAM_KEYS = {"netns", "servers"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
HOST_RE = re.compile(
    r"^(\*|(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*)$"
)
NETNS_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")


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


class UpstreamSpec:
    __slots__ = ("digest", "name", "netns", "servers")

    def __init__(self, name: str, netns: str | None, servers: list[tuple[str, int]], digest):
        self.name = sys.intern(name)
        self.netns = netns
        self.servers = servers
        self.digest = digest


class Route:
    __slots__ = ("host", "path_prefix", "upstream")

    def __init__(self, host: str, path_prefix: str, upstream: str):
        self.host = sys.intern(host)
        self.path_prefix = sys.intern(path_prefix)
        self.upstream = sys.intern(upstream)


class Tenant:
    """A tenant's validated configuration; ``digest`` identifies it for the reload diff."""

    __slots__ = ("digest", "listeners", "name", "netns", "routes", "upstreams")

    def __init__(self, name, netns, listeners, routes, upstreams, digest):
        self.name = name
        self.netns = name if netns == name else netns  # one string when they are the same
        self.listeners = listeners
        self.routes = routes
        self.upstreams = upstreams
        self.digest = digest


class Config:
    __slots__ = (
        "access_log",
        "admin_socket",
        "digest",
        "instance",
        "limits",
        "metrics_listen",
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
        self.limits = dict(DEFAULT_LIMITS)
        self.timeouts = dict(DEFAULT_TIMEOUTS)
        self.tenants: list[Tenant] = []
        self.digest = ""
        self.workers: int | str = "auto"  # worker processes, or one per CPU this may run on
        self.user: str | None = None  # workers' user (None: nobody when started as root)

    def listener_count(self) -> int:
        return sum(len(t.listeners) for t in self.tenants)


def _digest(obj) -> bytes:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).digest()


def load(path: str, previous: dict | None = None) -> Config:
    """Read and validate ``path``; raise ConfigError listing every problem.

    ``previous`` (tenant name -> Tenant of the running config) lets a reload skip re-checking
    tenants whose JSON did not change (except https ones: their certificate files are re-read).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror}"]) from None
    return parse(data, previous)


def parse(data: bytes, previous: dict | None = None) -> Config:
    """Validate the bytes of a config file; raise ConfigError listing every problem."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError([f"not valid JSON: {exc}"]) from None
    config, problems = validate(raw, previous)
    if problems:
        raise ConfigError(problems)
    config.digest = hashlib.sha256(data).hexdigest()
    return config


def parse_address(value, what: str = "address") -> tuple[str, int]:
    """'10.0.0.1:80' or '[::1]:80' to (host, port); ValueError with an allowed-form message."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string 'IP:PORT', got {type(value).__name__}")
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
    else:
        host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not IP:PORT (IPv6 as [ADDR]:PORT)")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (names are not resolved)") from None
    if (ip.version == 6) != value.startswith("["):
        raise ValueError(f"{value!r}: write IPv6 addresses as [ADDR]:PORT")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"port {port!r} is not a number from 1 to 65535")
    return str(ip), int(port)


def _optional_module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def validate(raw, previous: dict | None = None) -> tuple[Config, list[str]]:
    """The Config described by ``raw`` (parsed JSON) and the list of problems found."""
    config = Config()
    problems: list[str] = []
    if not isinstance(raw, dict):
        return config, ["the top level must be a JSON object with a 'tenants' list"]
    for key in sorted(set(raw) - TOP_KEYS):
        problems.append(f"{key}: unknown key (allowed: {', '.join(sorted(TOP_KEYS))})")

    instance = raw.get("instance", "nsproxy")
    if not isinstance(instance, str) or not NAME_RE.match(instance):
        problems.append("instance: must be a name of letters, digits, '.', '_' or '-'")
    else:
        config.instance = instance
    admin = raw.get("admin_socket", f"/run/nsproxy/{config.instance}.sock")
    if not isinstance(admin, str) or not admin.startswith("/"):
        problems.append("admin_socket: must be an absolute path")
    else:
        config.admin_socket = admin
    metrics = raw.get("metrics")
    if metrics is not None:
        if not isinstance(metrics, dict) or set(metrics) != {"listen"}:
            problems.append("metrics: must be an object with only 'listen' (\"IP:PORT\")")
        else:
            try:
                config.metrics_listen = parse_address(metrics["listen"])
            except ValueError as exc:
                problems.append(f"metrics.listen: {exc}")
    access_log = raw.get("access_log")
    if access_log is not None and (
        not isinstance(access_log, str) or not (access_log == "-" or access_log.startswith("/"))
    ):
        problems.append("access_log: must be '-' (stdout), an absolute path, or null")
    else:
        config.access_log = access_log
    workers = raw.get("workers", "auto")
    if workers != "auto" and (
        isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 256
    ):
        problems.append(f"workers: must be 'auto' or a number from 1 to 256 (got {workers!r})")
    else:
        config.workers = workers
    user = raw.get("user")
    if user is not None and (not isinstance(user, str) or not NAME_RE.match(user)):
        problems.append(f"user: must be a user name or a numeric uid (got {user!r})")
    else:
        config.user = user
    _numbers(raw, "limits", DEFAULT_LIMITS, config.limits, problems, integer=True)
    _numbers(raw, "timeouts", DEFAULT_TIMEOUTS, config.timeouts, problems, integer=False)

    tenants = raw.get("tenants")
    if not isinstance(tenants, list):
        problems.append("tenants: must be a list of tenant objects")
        return config, problems
    httptools_ok = _optional_module("httptools") is not None
    tls = tcp = None
    if any(
        isinstance(t, dict)
        and isinstance(t.get("listeners"), list)
        and any(isinstance(li, dict) and li.get("protocol") == "https" for li in t["listeners"])
        for t in tenants
    ):
        tls = _optional_module("nsproxy.tls")
    if any(
        isinstance(t, dict)
        and isinstance(t.get("listeners"), list)
        and any(isinstance(li, dict) and li.get("protocol") == "tcp" for li in t["listeners"])
        for t in tenants
    ):
        tcp = _optional_module("nsproxy.tcp")
    seen_names: set[str] = set()
    bound: dict[tuple[str, int], list[tuple[str, str]]] = {}  # (netns, port) -> [(host, where)]
    # Many tenants usually name the same certificate files: load each set once per check.
    # Also "stat": path -> file state for this pass, and "kept": https listeners of unchanged
    # tenants, whose certificates were validated with these very files last time.
    tls_checked: dict = {"stat": {}, "kept": []}
    # Tenants usually declare identical listeners, routes and upstreams: one object per distinct
    # value serves all of them (they are never modified once built). Seeded with the running
    # config's objects, so that a reload keeps sharing with the kept tenants.
    shared: dict = {}
    for known in (previous or {}).values():
        _share_tenant(known, shared)
    for index, spec in enumerate(tenants):
        tenant = _tenant(
            index, spec, problems, seen_names, httptools_ok, (tls, tls_checked), tcp, bound,
            previous or {}, shared,
        )  # fmt: skip
        if tenant is not None:
            config.tenants.append(tenant)
    return config, problems


def _numbers(raw, key, defaults, into, problems, integer):
    section = raw.get(key, {})
    if not isinstance(section, dict):
        problems.append(f"{key}: must be an object")
        return
    for name in sorted(set(section) - set(defaults)):
        problems.append(f"{key}.{name}: unknown key (allowed: {', '.join(sorted(defaults))})")
    for name, value in section.items():
        if name not in defaults:
            continue
        if value is None and defaults[name] is None:
            into[name] = None
            continue
        ok_type = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_type) or value <= 0:
            kind = "a positive integer" if integer else "a positive number of seconds"
            problems.append(f"{key}.{name}: must be {kind}, got {json.dumps(value)}")
        else:
            into[name] = value


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


def _tenant(
    index, spec, problems, seen_names, httptools_ok, tls_pair, tcp, bound, previous, shared=None
):
    tls = tls_pair[0]
    where = f"tenants[{index}]"
    if not isinstance(spec, dict):
        problems.append(f"{where}: must be an object")
        return None
    name = spec.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        problems.append(
            f"{where}.name: must be 1-63 letters, digits, '.', '_' or '-' (got {name!r})"
        )
        return None
    where = f"tenant '{name}'"
    if name in seen_names:
        problems.append(f"{where}: duplicate tenant name")
    seen_names.add(name)
    digest = _digest(spec)
    known = previous.get(name)
    if (
        known is not None
        and known.digest == digest
        and _certificates_unchanged(known, tls, tls_pair[1]["stat"])
    ):
        # Unchanged since it was last validated: only the checks across tenants remain.
        tls_pair[1]["kept"].extend(li for li in known.listeners if li.protocol == "https")
        for li_index, listener in enumerate(known.listeners):
            _claim(bound, known.netns, listener, f"{where}: listeners[{li_index}]", problems)
        return known
    start = len(problems)
    for key in sorted(set(spec) - TENANT_KEYS):
        problems.append(f"{where}: {key}: unknown key (allowed: {', '.join(sorted(TENANT_KEYS))})")
    netns = spec.get("netns")
    if not _netns_ok(netns):
        problems.append(
            f"{where}: netns: must be a name under /run/netns or an absolute path (got {netns!r})"
        )

    upstreams = {}
    raw_upstreams = spec.get("upstreams", {})
    if not isinstance(raw_upstreams, dict):
        problems.append(f"{where}: upstreams: must be an object of name -> upstream")
        raw_upstreams = {}
    for up_name, up in raw_upstreams.items():
        u = _upstream(where, up_name, up, problems)
        if u is not None:
            upstreams[up_name] = u
    names = set(raw_upstreams)

    listeners = []
    raw_listeners = spec.get("listeners", [])
    if not isinstance(raw_listeners, list):
        problems.append(f"{where}: listeners: must be a list")
        raw_listeners = []
    for li_index, li in enumerate(raw_listeners):
        lw = f"{where}: listeners[{li_index}]"
        listener = _listener(lw, li, problems, httptools_ok, tls_pair, tcp, names)
        if listener is None:
            continue
        if isinstance(netns, str):
            _claim(bound, netns, listener, lw, problems)
        listeners.append(listener)

    routes = []
    raw_routes = spec.get("routes", [])
    if not isinstance(raw_routes, list):
        problems.append(f"{where}: routes: must be a list")
        raw_routes = []
    seen_routes = set()
    for r_index, r in enumerate(raw_routes):
        rw = f"{where}: routes[{r_index}]"
        route = _route(rw, r, problems, names)
        if route is None:
            continue
        if (route.host, route.path_prefix) in seen_routes:
            problems.append(
                f"{rw}: duplicate route for host {route.host!r} and path_prefix "
                f"{route.path_prefix!r}"
            )
        seen_routes.add((route.host, route.path_prefix))
        routes.append(route)
    if len(problems) > start:
        return None
    tenant = Tenant(name, netns, listeners, routes, upstreams, digest)
    _share_tenant(tenant, {} if shared is None else shared)
    return tenant


def _netns_ok(netns) -> bool:
    if not isinstance(netns, str) or not netns:
        return False
    if netns.startswith("/"):
        return ".." not in netns.split("/")
    return bool(NETNS_NAME_RE.match(netns)) and netns not in (".", "..")


def _upstream(where, name, up, problems):
    uw = f"{where}: upstreams.{name}"
    if not NAME_RE.match(name):
        problems.append(f"{uw}: upstream names are 1-63 letters, digits, '.', '_' or '-'")
        return None
    if not isinstance(up, dict):
        problems.append(f"{uw}: must be an object with 'servers' and optional 'netns'")
        return None
    bad = False
    for key in sorted(set(up) - UPSTREAM_KEYS):
        problems.append(f"{uw}.{key}: unknown key (allowed: netns, servers)")
        bad = True
    netns = up.get("netns")
    if netns is not None and not _netns_ok(netns):
        problems.append(
            f"{uw}.netns: must be null (host namespace), a name under /run/netns or an absolute "
            f"path (got {netns!r})"
        )
        bad = True
    servers = up.get("servers")
    parsed = []
    if not isinstance(servers, list) or not servers:
        problems.append(f"{uw}.servers: must be a non-empty list of 'IP:PORT'")
        return None
    for s_index, server in enumerate(servers):
        try:
            parsed.append(parse_address(server))
        except ValueError as exc:
            problems.append(f"{uw}.servers[{s_index}]: {exc}")
            bad = True
    if bad:
        return None
    return UpstreamSpec(name, netns, parsed, _digest(up))


def _listener(lw, li, problems, httptools_ok, tls_pair, tcp, upstream_names):
    tls, tls_checked = tls_pair
    if not isinstance(li, dict):
        problems.append(f"{lw}: must be an object with 'listen' and 'protocol'")
        return None
    protocol = li.get("protocol")
    if protocol not in LISTENER_KEYS:
        problems.append(f"{lw}.protocol: must be one of http, https, tcp (got {protocol!r})")
        return None
    start = len(problems)
    for key in sorted(set(li) - LISTENER_KEYS[protocol]):
        allowed = ", ".join(sorted(LISTENER_KEYS[protocol]))
        problems.append(f"{lw}.{key}: unknown key for a {protocol} listener (allowed: {allowed})")
    try:
        host, port = parse_address(li.get("listen"))
    except ValueError as exc:
        problems.append(f"{lw}.listen: {exc}")
        host, port = "", 0
    if protocol in ("http", "https") and not httptools_ok:
        problems.append(
            f"{lw}.protocol: {protocol!r} needs the Python package httptools, which is not "
            "installed (pip install httptools)"
        )
    cert_state = tls_key = None
    if protocol == "https":
        if tls is None:
            problems.append(
                f"{lw}.protocol: 'https' needs nsproxy.tls, which this build of nsproxy lacks"
            )
        else:
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
    if protocol == "tcp":
        if tcp is None:
            problems.append(
                f"{lw}.protocol: 'tcp' needs nsproxy.tcp, which this build of nsproxy lacks"
            )
        else:
            problems.extend(f"{lw}.{p}" for p in tcp.validate_listener(li, upstream_names))
    if len(problems) > start:
        return None
    return Listener(li, host, port, cert_state, tls_key)


def _certificates_unchanged(tenant, tls, memo) -> bool:
    """Whether every https listener's certificate files are the ones validated last time.

    Loading a certificate costs milliseconds; stat-ing its files costs microseconds. Without
    this, adding one tenant to 1000 https tenants re-loaded 1000 certificates on the loop.
    """
    return all(
        li.protocol != "https"
        or (tls is not None and tls.certificate_files_state(li.spec, memo) == li.cert_state)
        for li in tenant.listeners
    )


def _claim(bound, netns, listener, lw, problems):
    """Refuse two listeners on the same port and overlapping address in one namespace."""
    key = (netns, listener.port)
    host = listener.host
    for other_host, other_where in bound.get(key, ()):
        wildcard = (
            ipaddress.ip_address(host).is_unspecified
            or ipaddress.ip_address(other_host).is_unspecified
        )
        if other_host == host or wildcard:
            problems.append(
                f"{lw}.listen: duplicate listener: {listener.listen} overlaps {other_where} "
                f"in network namespace {netns!r}"
            )
            return
    bound.setdefault(key, []).append((host, lw))


def _route(rw, r, problems, upstream_names):
    if not isinstance(r, dict):
        problems.append(f"{rw}: must be an object with 'host', 'path_prefix' and 'upstream'")
        return None
    start = len(problems)
    for key in sorted(set(r) - ROUTE_KEYS):
        problems.append(f"{rw}.{key}: unknown key (allowed: host, path_prefix, upstream)")
    host = r.get("host", "*")
    if not isinstance(host, str) or not HOST_RE.match(host.lower()):
        problems.append(f"{rw}.host: must be a host name, '*.domain' or '*' (got {host!r})")
    prefix = r.get("path_prefix", "/")
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        problems.append(f"{rw}.path_prefix: must be a string starting with '/' (got {prefix!r})")
    upstream = r.get("upstream")
    if not isinstance(upstream, str) or upstream not in upstream_names:
        known = ", ".join(sorted(upstream_names)) or "none declared"
        problems.append(
            f"{rw}.upstream: unknown upstream {upstream!r} (this tenant's upstreams: {known})"
        )
    if len(problems) > start:
        return None
    return Route(host.lower(), prefix, upstream)
