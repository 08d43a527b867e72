"""Declarative checks for the JSON configuration: a key is one table row ``name: (check, default)``.

A check's ``collect(value, where, problems)`` returns the value to keep (normalised: defaults
filled in, addresses parsed into ``(host, port)``) or :data:`INVALID` after appending one line per
problem to ``problems``. Every line starts with the field's path (``where``, e.g.
``tenant 'acme': listeners[0].listen``) and says what is allowed and what was given. Values are
shown bounded in length and with control characters escaped (:func:`shown`), so one problem is
always exactly one line, whatever the document holds.

The type is checked before anything reads a value: a list where a string belongs is a problem
line, never a TypeError. Numbers must be finite and in their documented range. Patterns match the
whole string (``re.fullmatch``; a ``$`` would also match before a final newline) and never admit
a control character, since names end up in HTTP headers, PROXY v2 TLVs, metrics labels and logs.

Hand-written rather than jsonschema/pydantic: the checks that matter here (socket path length
and kind, namespace spellings, address scopes) are custom either way, the problem lines must
keep this project's wording, and validating 3000 tenants must stay within milliseconds.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import posixpath
import pwd
import re
import stat

__all__ = [
    "FILL",
    "INVALID",
    "REQUIRED",
    "AbsPath",
    "Address",
    "Check",
    "Choice",
    "Either",
    "FilePath",
    "Int",
    "Invalid",
    "ListOf",
    "MapOf",
    "Netns",
    "Nullable",
    "Object",
    "Seconds",
    "SocketPath",
    "Tagged",
    "Text",
    "User",
    "field",
    "file_kind",
    "key_text",
    "netns_canonical",
    "one_line",
    "parse_address",
    "shown",
]


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: Returned by ``collect`` when the value had problems (they are in ``problems``).
INVALID = _Marker("INVALID")
#: Default of a key that must be given.
REQUIRED = _Marker("REQUIRED")
#: Default of an object-valued key: the object with all its own defaults.
FILL = _Marker("FILL")

# C0 and C1 control characters, DEL, lone surrogates (not encodable as UTF-8 or as a file
# name) and the Unicode line and paragraph separators (str.splitlines splits on them).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]")
_SAFE_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SHOWN_CHARS = 48

#: sockaddr_un.sun_path holds 108 bytes, the last for the terminating NUL (unix(7)).
UNIX_PATH_MAX = 107
#: PATH_MAX (4096) less the terminating NUL: longer paths fail with ENAMETOOLONG.
PATH_MAX = 4095


class Invalid(Exception):
    """One problem with a scalar value: the message after ``<field>: ``. ``generic``: only
    "must be <what>, got <value>" (an :class:`Either` prefers a specific reason)."""

    def __init__(self, message: str, generic: bool = False):
        super().__init__(message)
        self.generic = generic


def shown(value) -> str:
    """``value`` as a problem line shows it: JSON-like, at most about 60 characters, one line."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, str):
        if len(value) <= _SHOWN_CHARS:
            return repr(value)  # repr escapes control characters and separators
        return f"{repr(value[:_SHOWN_CHARS])[:-1]}...' ({len(value)} characters)"
    if isinstance(value, int):
        bits = value.bit_length()
        return str(value) if bits <= 128 else f"an integer of {bits} bits"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, list):
        return f"a list of {len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def key_text(key) -> str:
    """An object key as part of a field path: plain when it is a plain name, else quoted."""
    return key if isinstance(key, str) and _SAFE_KEY.fullmatch(key) else shown(key)


def field(where: str, key: str) -> str:
    """The path of ``key`` inside the object at ``where``; a ``where`` ending in ": " is a
    label (``tenant 'acme': ``) rather than a field."""
    if not where or where.endswith(": "):
        return where + key_text(key)
    return f"{where}.{key_text(key)}"


def one_line(problem: str) -> str:
    """A problem with every non-printable character escaped (controls, separators, unassigned
    code points): the last guard of one readable line per problem."""
    if problem.isprintable():
        return problem
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in problem)


def has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


class Check:
    """A scalar check: ``convert`` returns the value to keep or raises :class:`Invalid`.

    ``scalar``: ``convert`` is the whole check, so a container may call it directly and build
    the field's path only when there is a problem (3000 tenants have 100000 fields).
    """

    __slots__ = ()
    what = "a value"
    scalar = True

    def convert(self, value):
        return value

    def refuse(self, value) -> Invalid:
        return Invalid(f"must be {self.what}, got {shown(value)}", generic=True)

    def collect(self, value, where: str, problems: list):
        try:
            return self.convert(value)
        except Invalid as exc:
            problems.append(f"{where}: {exc}")
            return INVALID


class Int(Check):
    """An integer (JSON number without fraction or exponent; not a boolean) in [lo, hi]."""

    __slots__ = ("hi", "lo", "what")

    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi
        self.what = f"an integer from {lo} to {hi}"

    def convert(self, value):
        if type(value) is not int or not self.lo <= value <= self.hi:
            raise self.refuse(value)
        return value


class Seconds(Check):
    """A finite number of seconds (integer or fraction) in [lo, hi]."""

    __slots__ = ("hi", "lo", "what")

    def __init__(self, lo: float, hi: float):
        self.lo, self.hi = lo, hi
        self.what = f"a number of seconds from {lo} to {hi}"

    def convert(self, value):
        kind = type(value)
        # NaN compares false with everything, so the range test alone refuses it too.
        if (kind is not int and kind is not float) or not self.lo <= value <= self.hi:
            raise self.refuse(value)
        return value


class Choice(Check):
    """One of a few fixed strings."""

    __slots__ = ("values", "what")

    def __init__(self, *values: str):
        self.values = frozenset(values)
        listed = ", ".join(repr(v) for v in values)
        self.what = listed if len(values) == 1 else f"one of {listed}"

    def convert(self, value):
        if type(value) is not str or value not in self.values:
            raise self.refuse(value)
        return value


class Text(Check):
    """A string of at most ``max_len`` characters that ``pattern`` matches as a whole.

    The pattern is the only gate, so it must not admit control characters. ``lower``: compared
    and kept in lower case (host names).
    """

    __slots__ = ("lower", "max_len", "pattern", "what")

    def __init__(self, pattern: str, what: str, max_len: int, lower: bool = False):
        self.pattern = re.compile(pattern)
        self.what = what
        self.max_len = max_len
        self.lower = lower

    def convert(self, value):
        if type(value) is not str or len(value) > self.max_len:
            raise self.refuse(value)
        if self.lower:
            value = value.lower()
        if self.pattern.fullmatch(value) is None:
            raise self.refuse(value)
        return value


class Nullable(Check):
    """``null`` or what ``inner`` accepts."""

    __slots__ = ("inner", "scalar", "what")

    def __init__(self, inner):
        self.inner = inner
        self.what = f"null or {inner.what}"
        self.scalar = inner.scalar

    def convert(self, value):
        return None if value is None else self.inner.convert(value)

    def collect(self, value, where, problems):
        return None if value is None else self.inner.collect(value, where, problems)


class Either(Check):
    """What any of the scalar ``checks`` accepts (the first that does converts it)."""

    __slots__ = ("checks", "what")

    def __init__(self, *checks: Check, what: str | None = None):
        self.checks = checks
        self.what = what or " or ".join(c.what for c in checks)

    def convert(self, value):
        specific = None
        for check in self.checks:
            try:
                return check.convert(value)
            except Invalid as exc:
                if not exc.generic:
                    specific = specific or exc
        raise specific or self.refuse(value)


def _absolute_path(value, what: str) -> str:
    if type(value) is not str or not value.startswith("/"):
        raise Invalid(f"must be {what}, got {shown(value)}", generic=True)
    if has_control(value):
        raise Invalid(f"must not contain control characters, got {shown(value)}")
    if len(os.fsencode(value)) > PATH_MAX:
        raise Invalid(f"must be at most {PATH_MAX} bytes long (PATH_MAX), got {len(value)}")
    return value


def file_kind(mode: int) -> str:
    """What kind of file ``mode`` (st_mode) is: "a FIFO", "a socket", "a directory"..."""
    for test, kind in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return kind
    return "a special file"


def _parent_problem(path: str) -> str | None:
    """Why no file can be created at ``path``: its nearest existing ancestor is not a
    directory (creating the missing ones would fail with ENOTDIR); None when it can be."""
    parent = posixpath.dirname(path)
    while True:
        try:
            st = os.stat(parent)
        except (FileNotFoundError, NotADirectoryError):  # ENOTDIR: an ancestor is a file
            if parent == "/":
                return None
            parent = posixpath.dirname(parent)
            continue
        except OSError:
            return None  # cannot look (permissions): the daemon will say
        if not stat.S_ISDIR(st.st_mode):
            return f"{parent} is not a directory, so {path} cannot be created"
        return _filesystem_problem(parent, path)


#: Kernel filesystems in which no folder, file or socket of ours can be made (mkdir in /proc
#: fails with ENOENT; in cgroup or configfs it would make a kernel object).
_PSEUDO_FILESYSTEMS = frozenset(
    ("proc", "sysfs", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "configfs",
     "efivarfs", "pstore", "bpf", "devpts", "mqueue", "binfmt_misc", "fusectl", "selinuxfs")
)  # fmt: skip


def _filesystem_problem(folder: str, path: str) -> str | None:
    """Why ``path`` cannot be made below the existing ``folder``: a read-only mount, or a
    kernel filesystem (/proc, /sys); None when nothing says so. Looks, changes nothing."""
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return f"{folder} is on a read-only filesystem, so {path} cannot be created"
    except OSError:
        return None  # cannot look: the daemon will say
    kind = _filesystem_type(folder)
    if kind in _PSEUDO_FILESYSTEMS:
        return f"{folder} is on a {kind} filesystem (a kernel one), so {path} cannot be created"
    return None


def _filesystem_type(folder: str) -> str | None:
    """The type of the filesystem mounted at or above ``folder`` (/proc/self/mountinfo, the
    mount with the longest matching mount point), or None when it cannot be read."""
    target = os.path.realpath(folder)
    best, kind = -1, None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                fields = line.split()
                try:
                    point = fields[4].replace("\\040", " ").replace("\\011", "\t")
                    fs_type = fields[fields.index("-", 6) + 1]
                except (IndexError, ValueError):
                    continue
                inside = target == point or target.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= best:  # the later of equal mounts is on top
                    best, kind = len(point), fs_type
    except OSError:
        return None
    return kind


class AbsPath(Check):
    """An absolute path of a file the daemon reads (a certificate); checked when it is read."""

    __slots__ = ("what",)

    def __init__(self, what: str = "an absolute file path"):
        self.what = what

    def convert(self, value):
        return _absolute_path(value, self.what)


class FilePath(Check):
    """An absolute path of a file the daemon appends to (created if missing). Its folder must
    exist: the daemon creates the file, not the folders above it. An existing one must be a
    regular file or a character device (/dev/null): daemonlog.open_append refuses the rest."""

    __slots__ = ("what",)

    def __init__(self, what: str = "an absolute file path"):
        self.what = what

    def convert(self, value):
        path = _absolute_path(value, self.what)
        if path.endswith("/"):
            raise Invalid(f"must name a file, not a directory, got {shown(path)}")
        try:
            mode = os.stat(path).st_mode
        except OSError:
            mode = None
        if mode is not None and stat.S_ISDIR(mode):
            raise Invalid(f"{path} is a directory; name a file")
        if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
            # Opening a FIFO waits for its other end: the daemon must never wait there.
            raise Invalid(
                f"{path} exists and is {file_kind(mode)}; allowed: a regular file or a "
                "character device such as /dev/null"
            )
        if mode is not None and stat.S_ISREG(mode):
            try:
                if os.statvfs(path).f_flag & os.ST_RDONLY:
                    raise Invalid(f"{path} is on a read-only filesystem; it cannot be appended to")
            except OSError:
                pass
        problem = _parent_problem(path) if mode is None else None
        if problem:
            raise Invalid(problem)
        folder = posixpath.dirname(path)
        try:
            os.stat(folder)
        except FileNotFoundError:
            raise Invalid(
                f"the folder {folder} does not exist (the daemon does not create it)"
            ) from None
        except OSError:
            pass  # cannot look (permissions): the daemon will say
        return path


class SocketPath(Check):
    """An absolute path for a unix socket the daemon creates (a stale socket is replaced)."""

    __slots__ = ()
    what = "an absolute path for a unix socket"

    def convert(self, value):
        path = _absolute_path(value, self.what)
        size = len(os.fsencode(path))
        if size > UNIX_PATH_MAX:
            raise Invalid(
                f"is {size} bytes long; a unix socket path holds at most {UNIX_PATH_MAX} bytes "
                "(sun_path, unix(7))"
            )
        if path.endswith("/"):
            raise Invalid(f"must name a socket file, not a directory, got {shown(path)}")
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            mode = None
        if mode is not None and not stat.S_ISSOCK(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a socket"
            raise Invalid(f"{path} exists and is {kind}; the daemon would replace it")
        problem = _parent_problem(path)
        if problem:
            raise Invalid(problem)
        return path


_NETNS_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_NETNS_DIRS = ("/run/netns/", "/var/run/netns/")


class Netns(Check):
    """A namespace: a name under /run/netns, or an absolute path (``/proc/PID/ns/net``,
    ``/run/docker/netns/ID``). No ``..`` component, no control characters. Converted to its
    one spelling (:func:`netns_canonical`): the daemon opens, pins (a /proc/PID path) and
    compares what check compared, so ``/run/netns/ta/`` is ``ta`` and ``//proc/7/ns/net`` is
    ``/proc/7/ns/net`` everywhere."""

    __slots__ = ()
    what = "a name under /run/netns or an absolute path"

    def convert(self, value):
        if type(value) is not str or not value:
            raise self.refuse(value)
        if value.startswith("/"):
            _absolute_path(value, self.what)
            if ".." in value.split("/"):
                raise Invalid(f"must not contain a '..' component, got {shown(value)}")
            return netns_canonical(value)
        if _NETNS_NAME.fullmatch(value) is None or value in (".", ".."):
            raise Invalid(
                "must be a name under /run/netns (1-255 letters, digits, '.', '_' or '-') or "
                f"an absolute path, got {shown(value)}"
            )
        return value


def netns_canonical(netns: str) -> str:
    """The one spelling of a namespace reference: ``ta``, ``/run/netns/ta``,
    ``//run/netns/./ta`` and ``/var/run/netns/ta`` are all ``ta``; other paths normalised.

    ``posixpath.normpath`` keeps two leading slashes (POSIX leaves them implementation-defined;
    Linux treats them as one), so they are collapsed first.
    """
    if not netns.startswith("/"):
        return netns
    path = posixpath.normpath("/" + netns.lstrip("/"))
    for folder in _NETNS_DIRS:
        if path.startswith(folder):
            name = path[len(folder) :]
            if "/" not in name and _NETNS_NAME.fullmatch(name) and name not in (".", ".."):
                return name
    return path


class Address(Check):
    """``IP:PORT`` or ``[IPv6]:PORT`` (names are not resolved) as ``(host, port)``.

    ``role`` "listen" or "server". Refused: a scope id (``%eth0``; an interface name means
    nothing across namespaces), IPv6 link-local without one (bind/connect fail with EINVAL),
    multicast (TCP cannot use it), and for a server the unspecified address.
    """

    __slots__ = ("role", "what")

    def __init__(self, role: str):
        self.role = role
        self.what = "a string 'IP:PORT' (IPv6 as '[ADDR]:PORT')"

    def convert(self, value):
        if type(value) is not str or len(value) > 64:  # "[v6]:port" is at most 55
            raise Invalid(f"must be a string 'IP:PORT', got {shown(value)}", generic=True)
        found = _address(value, self.role)
        if type(found) is str:
            raise Invalid(found)
        return found


# 1000 tenants usually listen on one address and share a few servers: parse each once. The
# answer depends on the string alone; the bound keeps a long-running daemon's reloads small.
@functools.lru_cache(maxsize=4096)
def _address(value: str, role: str) -> tuple[str, int] | str:
    """(host, port), or the problem as a string."""
    try:
        host, port = parse_address(value)
    except ValueError as exc:
        return str(exc)
    ip = ip_address(host)
    if ip.version == 6 and ip.is_link_local:
        return (
            f"{host} is an IPv6 link-local address, which needs an interface scope; "
            "nsproxy does not support scoped addresses: use a global or unique-local one"
        )
    if role == "listen" and ip.version == 6 and ip.ipv4_mapped is not None:
        return (
            f"{host} is an IPv4-mapped IPv6 address, which an IPv6-only listener cannot "
            f"bind (EINVAL): write {ip.ipv4_mapped}:{port}"
        )
    if ip.is_multicast:
        return f"{host} is a multicast address, which TCP cannot use"
    if role == "server" and ip.is_unspecified:
        return f"{host} is the unspecified address, not a server's address"
    return host, port


@functools.lru_cache(maxsize=4096)
def ip_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``ipaddress.ip_address``, remembered (immutable objects; see :func:`_address`)."""
    return ipaddress.ip_address(host)


def parse_address(value) -> tuple[str, int]:
    """'10.0.0.1:80' or '[::1]:80' to (host, port); ValueError with an allowed-form message."""
    if type(value) is not str:
        raise ValueError(f"must be a string 'IP:PORT', got {shown(value)}")
    if len(value) > 64 or has_control(value):
        raise ValueError(f"must be a string 'IP:PORT', got {shown(value)}")
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
    else:
        host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not IP:PORT (IPv6 as [ADDR]:PORT)")
    if "%" in host:
        raise ValueError(
            f"{value!r}: scoped addresses (%interface) are not supported; an interface name "
            "means nothing across namespaces"
        )
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (names are not resolved)") from None
    if (ip.version == 6) != value.startswith("["):
        raise ValueError(f"{value!r}: write IPv6 addresses as [ADDR]:PORT")
    if not (port.isascii() and port.isdigit()) or len(port) > 5 or not 0 < int(port) < 65536:
        raise ValueError(f"port {port!r} is not a number from 1 to 65535")
    return str(ip), int(port)


_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_UID = re.compile(r"[0-9]{1,10}")


class User(Check):
    """A POSIX user name that exists on this host, or a decimal uid (1 to 4294967294); never
    root: the workers run as this user and must not be uid 0 or in group 0 (issue 14)."""

    __slots__ = ()
    what = "a user name ([a-z_][a-z0-9_-]{0,31}) or a decimal uid string"

    def convert(self, value):
        if type(value) is not str:
            raise self.refuse(value)
        if _UID.fullmatch(value):
            if int(value) > 0xFFFFFFFE:  # (uid_t) -1 means "no change" to setresuid
                raise Invalid(f"uid {value} is out of range (1 to 4294967294)")
            if int(value) == 0:
                raise Invalid("workers never run as root (uid 0): name an unprivileged user")
            try:
                entry = pwd.getpwuid(int(value))
            except KeyError:
                return value  # no passwd entry: the workers get gid = uid (privileges.py)
        elif _USER_NAME.fullmatch(value) is None:
            raise self.refuse(value)
        else:
            try:
                entry = pwd.getpwnam(value)
            except KeyError:
                raise Invalid(f"no user {value!r} on this host") from None
        if entry.pw_uid == 0 or entry.pw_gid == 0:
            raise Invalid(
                f"workers never run as root or in group root ({value} is uid {entry.pw_uid}, "
                f"gid {entry.pw_gid}): name an unprivileged user"
            )
        return value


def _kept_default(name: str, check, default):
    """A scalar default in the form its check keeps values ("2xx" -> the set of codes)."""
    if default is None or default is REQUIRED or default is FILL:
        return default
    if isinstance(check, (Object, ListOf, MapOf, Tagged)):
        return default
    problems: list[str] = []
    kept = check.collect(default, name, problems)
    if problems:
        raise ValueError(f"the default of {name} is not valid: {problems}")
    return kept


class Object(Check):
    """A JSON object with the keys of ``fields``: ``{name: (check, default)}``.

    ``default`` is :data:`REQUIRED`, :data:`FILL` (an object check run on ``{}``) or the value
    kept when the key is left out. Unknown keys are problems. ``label`` names the object in
    those lines ("a http listener"). ``rules`` are ``rule(kept: dict) -> [(key, message)]``
    run once every field is valid, for constraints across fields.
    """

    __slots__ = ("allowed", "fields", "label", "names", "rules", "what")
    scalar = False

    def __init__(self, fields: dict, label: str = "", rules: tuple = (), what: str = ""):
        self.fields = {name: (check, _kept_default(name, check, default))
                       for name, (check, default) in fields.items()}  # fmt: skip
        self.names = frozenset(fields)
        self.label = label
        self.rules = rules
        self.allowed = ", ".join(sorted(fields))
        self.what = what or f"an object with {self.allowed}"

    def collect(self, value, where, problems):
        start = len(problems)
        kept = self.collect_fields(value, where, problems)
        if len(problems) > start:
            return INVALID
        for rule in self.rules:
            for key, message in rule(kept):
                problems.append(f"{field(where, key)}: {message}")
        return INVALID if len(problems) > start else kept

    def collect_fields(self, value, where, problems) -> dict:
        """Every field checked, whatever the others hold: ``{name: value or INVALID}`` (all
        INVALID when ``value`` is not an object). Rules are not run."""
        if type(value) is not dict:
            problems.append(f"{where}: must be {self.what}, got {shown(value)}")
            return dict.fromkeys(self.fields, INVALID)
        fields = self.fields
        if len(value) > len(fields) or not self.names.issuperset(value):
            label = f" for {self.label}" if self.label else ""
            for key in value:
                if key not in fields:
                    problems.append(
                        f"{field(where, key)}: unknown key{label} (allowed: {self.allowed})"
                    )
        kept = {}
        # The path of each field, built the cheap way (names declared here are plain).
        dot = "" if not where or where.endswith(": ") else "."
        for name, (check, default) in fields.items():
            if name in value:
                if check.scalar:
                    try:
                        kept[name] = check.convert(value[name])
                    except Invalid as exc:
                        problems.append(f"{where}{dot}{name}: {exc}")
                        kept[name] = INVALID
                else:
                    kept[name] = check.collect(value[name], f"{where}{dot}{name}", problems)
            elif default is REQUIRED:
                problems.append(f"{where}{dot}{name}: required, {check.what}")
                kept[name] = INVALID
            elif default is FILL:
                kept[name] = check.collect({}, f"{where}{dot}{name}", problems)
            else:
                kept[name] = default
        return kept


class Tagged(Check):
    """An object whose shape depends on one key (``protocol``, ``type``): ``variants`` maps
    each allowed value of ``tag`` to the :class:`Object` check of that shape."""

    __slots__ = ("tag", "tag_check", "variants", "what")
    scalar = False

    def __init__(self, tag: str, variants: dict, what: str):
        self.tag = tag
        self.variants = variants
        self.tag_check = Choice(*variants)
        self.what = what

    def collect(self, value, where, problems):
        if type(value) is not dict:
            problems.append(f"{where}: must be {self.what}, got {shown(value)}")
            return INVALID
        if self.tag not in value:
            problems.append(f"{field(where, self.tag)}: required, {self.tag_check.what}")
            return INVALID
        tag = self.tag_check.collect(value[self.tag], field(where, self.tag), problems)
        if tag is INVALID:
            return INVALID
        return self.variants[tag].collect(value, where, problems)


class ListOf(Check):
    """A JSON list of ``min_items`` to ``max_items`` items that ``item`` accepts."""

    __slots__ = ("item", "max_items", "min_items", "what")
    scalar = False

    def __init__(self, item, min_items: int = 0, max_items: int = 10000, what: str = ""):
        self.item = item
        self.min_items, self.max_items = min_items, max_items
        self.what = what or f"a list of {item.what}"

    def collect(self, value, where, problems):
        if type(value) is not list:
            problems.append(f"{where}: must be {self.what}, got {shown(value)}")
            return INVALID
        if not self.min_items <= len(value) <= self.max_items:
            if not value:
                problems.append(f"{where}: must be {self.what}, got an empty list")
            else:
                bound = self.min_items if len(value) < self.min_items else self.max_items
                more = "at least" if len(value) < self.min_items else "at most"
                problems.append(f"{where}: must hold {more} {bound} items, got {len(value)}")
            return INVALID
        start = len(problems)
        item = self.item
        if item.scalar:
            kept = []
            for i, v in enumerate(value):
                try:
                    kept.append(item.convert(v))
                except Invalid as exc:
                    problems.append(f"{where}[{i}]: {exc}")
        else:
            kept = [item.collect(v, f"{where}[{i}]", problems) for i, v in enumerate(value)]
        return INVALID if len(problems) > start else kept


class MapOf(Check):
    """A JSON object of ``key`` (a scalar check on the key) to ``item``, at most ``max_items``."""

    __slots__ = ("item", "key", "max_items", "what")
    scalar = False

    def __init__(self, key: Check, item, max_items: int = 10000, what: str = ""):
        self.key, self.item, self.max_items = key, item, max_items
        self.what = what or f"an object of name -> {item.what}"

    def collect(self, value, where, problems):
        if type(value) is not dict:
            problems.append(f"{where}: must be {self.what}, got {shown(value)}")
            return INVALID
        if len(value) > self.max_items:
            problems.append(
                f"{where}: must hold at most {self.max_items} entries, got {len(value)}"
            )
            return INVALID
        start = len(problems)
        kept = {}
        for name, item in value.items():
            sub = field(where, name)
            try:
                self.key.convert(name)
            except Invalid as exc:
                problems.append(f"{sub}: the name {exc}")
                continue
            kept[name] = self.item.collect(item, sub, problems)
        return INVALID if len(problems) > start else kept
