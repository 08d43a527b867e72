"""Every key of the configuration file: one row each, ``"key": (check, default)``.

Adding a key is adding a row (and a row in src/nsproxy/README.md's configuration table, which
documents the same keys, defaults and ranges). The check kinds are in :mod:`nsproxy.schema`;
what needs more than one value at a time (references between keys, duplicate listeners,
certificates) is in :mod:`nsproxy.config`.

Where a range comes from:
- seconds: at least 0.1 (below that a timer fires before a loaded machine has done anything),
  at most what the runtime takes: ``header_read`` is also TCP_DEFER_ACCEPT, whole seconds in a
  C int, and every timeout ends in ``loop.call_later``; the maxima (an hour, a day) are far
  below either bound and above any sensible value;
- byte and count limits: at least what one legitimate message needs (1 KiB of head, one
  header), at most what a worker can hold per connection without one tenant's clients taking
  the memory of the others (1 MiB of head, 10000 headers);
- list lengths: far above any real configuration, low enough that a runaway generator is told
  rather than served.
"""

from __future__ import annotations

from nsproxy.schema import (
    FILL,
    INVALID,
    REQUIRED,
    AbsPath,
    Address,
    Check,
    Choice,
    Either,
    FilePath,
    Int,
    Invalid,
    ListOf,
    MapOf,
    Netns,
    Nullable,
    Object,
    Seconds,
    SocketPath,
    Tagged,
    Text,
    User,
    shown,
)

# -- value kinds used by several keys ----------------------------------------------------------
#: Tenant, upstream and instance names: also an HTTP header value (X-Nsproxy-Tenant), a PROXY
#: v2 TLV, a Prometheus label value and a file name, so only these characters.
NAME = Text(
    r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}",
    "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit",
    63,
)
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"  # RFC 1123 section 2.1 host name label
ROUTE_HOST = Text(
    rf"\*|(?:\*\.)?{_LABEL}(?:\.{_LABEL})*", "a host name, '*.domain' or '*'", 253, lower=True
)
#: tcp sni_routes: compared with the SNI of a ClientHello, which is lower case (RFC 6066 3).
SNI = Text(
    rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*",
    "a lower-case host name like 'db.example' or '*.example'",
    253,
)
# No whitespace (it would end the request target, RFC 9112 3) and no control characters.
_URL_PATH = r"/[^\s\x00-\x1f\x7f-\x9f\ud800-\udfff]*"
PATH_PREFIX = Text(
    _URL_PATH, "a string starting with '/' without spaces or control characters", 4096
)
NETNS = Netns()


class ExpectStatus(Check):
    """A health check's good answers: a status code 100-599, a list of them, "2xx" or "3xx";
    kept as a frozenset of codes."""

    __slots__ = ()
    what = "a status code from 100 to 599, a list of them, '2xx' or '3xx'"
    _CLASSES = {"2xx": frozenset(range(200, 300)), "3xx": frozenset(range(300, 400))}

    def convert(self, value):
        if type(value) is str and value in self._CLASSES:
            return self._CLASSES[value]
        if type(value) is int and 100 <= value <= 599:
            return frozenset((value,))
        if (
            type(value) is list
            and 0 < len(value) <= 500
            and all(type(code) is int and 100 <= code <= 599 for code in value)
        ):
            return frozenset(value)
        raise self.refuse(value)


def _timeout_below_interval(kept: dict):
    if kept["timeout"] >= kept["interval"]:
        yield "timeout", f"must be less than interval ({kept['interval']}), got {kept['timeout']}"


# -- upstream health checks ------------------------------------------------------------------------
_HEALTH_COMMON = {
    "type": (Choice("tcp", "http"), REQUIRED),  # tcp: connect; http: GET path, check the status
    "interval": (Seconds(0.1, 3600), 5),  # between two checks of one server
    "timeout": (Seconds(0.05, 600), 2),  # for one check; less than interval
    "rise": (Int(1, 100), 2),  # successes in a row that make a server healthy
    "fall": (Int(1, 100), 3),  # failures in a row that make it unhealthy
}
HEALTH_CHECK = Tagged(
    "type",
    {
        "tcp": Object(
            _HEALTH_COMMON,
            label="a tcp health_check (path, host and expect_status are for type 'http')",
            rules=(_timeout_below_interval,),
        ),
        "http": Object(
            {
                **_HEALTH_COMMON,
                "path": (
                    Text(
                        _URL_PATH,
                        "a path starting with '/' without spaces or control characters",
                        2048,
                    ),
                    "/",
                ),
                "host": (  # Host header; null: the server's IP:PORT
                    Nullable(
                        Text(
                            rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-f:.]{{2,45}}\])(?::[0-9]{{1,5}})?",
                            "a host name (optionally :PORT)",
                            259,
                            lower=True,
                        )
                    ),
                    None,
                ),
                "expect_status": (ExpectStatus(), "2xx"),
            },
            label="an http health_check",
            rules=(_timeout_below_interval,),
        ),
    },
    what="an object with 'type' ('tcp' or 'http')",
)

# -- tenants ---------------------------------------------------------------------------------------
UPSTREAM = Object(
    {
        "netns": (Nullable(NETNS), None),  # null: the host namespace
        "servers": (ListOf(Address("server"), 1, 1024, "a non-empty list of 'IP:PORT'"), REQUIRED),
        "health_check": (Nullable(HEALTH_CHECK), None),  # null: passive health only
    },
    label="an upstream",
    what="an object with 'servers' and optional 'netns' and 'health_check'",
)
CERTIFICATE = Object(
    {"cert": (AbsPath("an absolute path of a PEM certificate (chain) file"), REQUIRED),
     "key": (Nullable(AbsPath("an absolute path of a PEM private key file")), None)},
    what="an object with 'cert' and 'key' file paths",
)  # fmt: skip
TLS = Object(
    {
        "certificates": (ListOf(CERTIFICATE, 1, 1024, "a non-empty list of {cert, key} objects"),
                         REQUIRED),
        "min_version": (Choice("1.2", "1.3"), "1.2"),
    },
    what="an object with 'certificates' and optional 'min_version'",
)  # fmt: skip
SNI_ROUTE = Object(
    {"sni": (SNI, REQUIRED), "upstream": (NAME, REQUIRED)},
    what="an object with 'sni' and 'upstream'",
)
_LISTENER_COMMON = {"listen": (Address("listen"), REQUIRED), "protocol": (Check(), REQUIRED)}
LISTENER = Tagged(
    "protocol",
    {
        "http": Object(_LISTENER_COMMON, label="a http listener"),
        "https": Object({**_LISTENER_COMMON, "tls": (TLS, REQUIRED)}, label="a https listener"),
        "tcp": Object(
            {
                **_LISTENER_COMMON,
                "upstream": (Nullable(NAME), None),
                "sni_routes": (Nullable(ListOf(SNI_ROUTE, 1, 10000)), None),
                "proxy_protocol": (Nullable(Choice("v2")), None),
            },
            label="a tcp listener",
        ),
    },
    what="an object with 'listen' and 'protocol'",
)
ROUTE = Object(
    {
        "host": (ROUTE_HOST, "*"),
        "path_prefix": (PATH_PREFIX, "/"),
        "upstream": (NAME, REQUIRED),
    },
    label="a route",
    what="an object with 'host', 'path_prefix' and 'upstream'",
)
TENANT = Object(
    {
        "name": (NAME, REQUIRED),
        "netns": (NETNS, REQUIRED),
        "listeners": (ListOf(LISTENER, 0, 1024), ()),
        "routes": (ListOf(ROUTE, 0, 10000), ()),
        "upstreams": (MapOf(NAME, UPSTREAM, 1024), {}),
    },
    label="a tenant",
    what="a tenant object",
)

# -- the file --------------------------------------------------------------------------------------
LIMITS = Object(
    {
        "max_header_bytes": (Int(1024, 1_048_576), 32768),  # request head, raw bytes: 431
        "max_headers": (Int(1, 10_000), 100),  # request header lines: 431
        "max_response_header_bytes": (Int(1024, 1_048_576), 32768),  # response head: 502
        "max_response_headers": (Int(1, 10_000), 100),  # response header lines: 502
        "max_body_bytes": (Nullable(Int(1, 2**53 - 1)), None),  # request body: 413
        "max_connections": (Nullable(Int(1, 10_000_000)), None),  # null: from RLIMIT_NOFILE
        "max_connections_per_tenant": (Int(1, 10_000_000), 1000),
    }
)
TIMEOUTS = Object(
    {
        "connect": (Seconds(0.1, 600), 5),  # to one upstream server
        "header_read": (Seconds(0.1, 3600), 10),  # request head, TLS handshake, SNI peek
        "response_head": (Seconds(0.1, 3600), 30),  # request sent -> complete response head
        "read": (Seconds(0.1, 86400), 60),  # silence while a request is in progress
        "idle": (Seconds(0.1, 86400), 60),  # silence of a keep-alive or tunnelled connection
        "drain": (Seconds(0.1, 3600), 30),  # removed tenants, stopping daemon
        "ticket_keys": (Seconds(1, 604800), 3600),  # one set of TLS ticket keys in use
    }
)
LOG = Object(
    {
        "format": (Choice("text", "json"), "text"),
        "path": (Nullable(FilePath()), None),  # null: stderr
    }
)


class AccessLogTarget(Check):
    """``-`` (stdout) or the path of a file to append to."""

    __slots__ = ()
    what = "'-' (stdout), an absolute file path, or null"
    _file = FilePath(what)

    def convert(self, value):
        return value if value == "-" else self._file.convert(value)


TOP = Object(
    {
        "instance": (NAME, "nsproxy"),
        "admin_socket": (SocketPath(), None),  # null: /run/nsproxy/<instance>.sock
        "metrics": (
            Nullable(
                Object(
                    {"listen": (Address("listen"), REQUIRED)},
                    what="an object with only 'listen' (\"IP:PORT\")",
                )
            ),
            None,
        ),  # fmt: skip
        "access_log": (Nullable(AccessLogTarget()), None),
        "log": (LOG, FILL),
        "workers": (Either(Int(1, 256), Choice("auto")), "auto"),
        "user": (Nullable(User()), None),  # null: workers keep the daemon's user
        "limits": (LIMITS, FILL),
        "timeouts": (TIMEOUTS, FILL),
        "tenants": (ListOf(Check(), 0, 100_000, "a list of tenant objects"), REQUIRED),
    }
)

DEFAULT_LIMITS = {name: default for name, (_, default) in LIMITS.fields.items()}
DEFAULT_TIMEOUTS = {name: default for name, (_, default) in TIMEOUTS.fields.items()}

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_TIMEOUTS",
    "HEALTH_CHECK",
    "INVALID",
    "LISTENER",
    "NAME",
    "ROUTE",
    "TENANT",
    "TOP",
    "UPSTREAM",
    "Invalid",
    "shown",
]
