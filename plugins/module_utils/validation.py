# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validation and normalisation of user input, before anything is touched: interface names,
MACs, CIDR addresses, MTUs, integer ranges, namespace names and paths, and other names.

Names are matched against the whole string (``re.fullmatch``: ``$`` would let a trailing newline
through) and never contain control characters, since they end up in file names, log lines,
systemd unit names and kernel objects. Each error names the field and what is allowed.
"""

from __future__ import annotations

import ipaddress
import os
import re

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.errors import ParamError

IFNAMSIZ = 15
"""Longest interface name the kernel accepts (IFNAMSIZ - 1)."""

NETNS_DIR = "/run/netns"
"""Where named network namespaces live (iproute2's convention)."""

MTU_MIN = 68
MTU_MAX = 65535

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def has_control_characters(text):
    """Whether ``text`` holds a control character (newline, tab, NUL, DEL...)."""
    return bool(_CONTROL.search(text))


def refuse_control_characters(value, field):
    """Raise ParamError naming ``field`` if ``value`` (a str) holds a control character."""
    if has_control_characters(value):
        raise ParamError(
            field, f"{value!r} contains a control character (newline, tab, NUL...); not allowed"
        )


def validate_name(value, field, pattern, allowed):
    """Return ``value`` if the whole of it matches ``pattern`` (a compiled regex) and it holds
    no control character, else raise ParamError naming ``field`` and ``allowed`` (a phrase
    such as ``1-12 characters from a-z, 0-9 and '-'``)."""
    if not isinstance(value, str) or not value:
        raise ParamError(field, f"required; allowed: {allowed}")
    refuse_control_characters(value, field)
    if not pattern.fullmatch(value):
        raise ParamError(field, f"'{value}' is not allowed; use {allowed}")
    return value


_BAD_IFNAME_CHARS = re.compile(r"[/:%\s]")


def validate_ifname(value, field):
    """Return ``value`` if it is a valid Linux interface name (1-15 bytes in UTF-8, none of
    ``/``, ``:``, ``%`` or whitespace, not ``.``/``..``), else raise ParamError naming
    ``field``. The kernel reads a ``%`` as a name template (``%d``: the next free number), so
    the link would get another name than the one asked for."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ParamError(field, f"an interface name is required (1-{IFNAMSIZ} characters)")
    refuse_control_characters(value, field)
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > IFNAMSIZ:
        counted = f"{len(value)} characters" if size == len(value) else f"{size} bytes in UTF-8"
        raise ParamError(
            field,
            f"interface name '{value}' has {counted}; the kernel allows at most {IFNAMSIZ} bytes "
            f"({IFNAMSIZ} ASCII characters)",
        )
    if value in (".", "..") or _BAD_IFNAME_CHARS.search(value):
        raise ParamError(
            field,
            f"interface name '{value}' is not allowed: no '/', ':', '%' or whitespace, "
            "not '.' or '..'",
        )
    return value


_MAC_RE = re.compile(r"[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}")


def normalize_mac(value, field):
    """Return a unicast MAC as lower-case ``aa:bb:cc:dd:ee:ff`` (accepts ``-`` or no separator),
    None for None; raise ParamError for anything else (multicast and all-zero included)."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if not _MAC_RE.fullmatch(text):
        raise ParamError(field, f"'{value}' is not a MAC address; expected aa:bb:cc:dd:ee:ff")
    digits = re.sub(r"[:-]", "", text)
    octets = [digits[i : i + 2] for i in range(0, 12, 2)]
    if int(octets[0], 16) & 1:
        raise ParamError(field, f"'{value}' is a multicast MAC; a link needs a unicast MAC")
    if digits == "0" * 12:
        raise ParamError(field, f"'{value}' is the all-zero MAC; a link needs a unicast MAC")
    return ":".join(octets)


def normalize_cidr(value, field):
    """Return an interface address in canonical CIDR form (``10.0.0.2/24``, ``2001:db8::1/64``,
    IPv6 compressed); the prefix length is required. Raise ParamError naming ``field``."""
    text = str(value).strip() if value is not None else ""
    if "/" not in text:
        raise ParamError(
            field,
            f"'{value}' is not an address in CIDR form; "
            "expected e.g. 10.0.0.2/24 or 2001:db8::2/64",
        )
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise ParamError(
            field,
            f"'{value}' is not a valid CIDR address; expected e.g. 10.0.0.2/24 or 2001:db8::2/64",
        ) from None
    return str(iface)


def normalize_cidrs(values, field):
    """Normalise a list of CIDR addresses (None stays None): canonical form, duplicates
    dropped, user order kept. Each bad entry is reported as ``field[i]``."""
    if values is None:
        return None
    result = []
    for i, value in enumerate(values):
        cidr = normalize_cidr(value, f"{field}[{i}]")
        if cidr not in result:
            result.append(cidr)
    return result


def normalize_link_address(value, field):
    """``normalize_cidr`` for an address to put on a link: an IPv6 link-local address
    (fe80::/10) is refused naming ``field``, since the kernel makes and owns those and they
    are never read back or compared."""
    cidr = normalize_cidr(value, field)
    iface = ipaddress.ip_interface(cidr)
    if iface.version == 6 and iface.ip.is_link_local:
        raise ParamError(
            field,
            f"'{cidr}' is an IPv6 link-local address; the kernel manages those, list "
            "global or unique-local addresses only",
        )
    return cidr


def normalize_link_addresses(values, field):
    """Like ``normalize_cidrs`` for addresses to put on a link (every module that plans link
    addresses uses it). Refused, naming ``field[i]``: IPv6 link-local addresses (fe80::/10;
    the kernel makes and owns them, and they are never compared), and one IPv6 address listed
    twice with different prefix lengths (the kernel keys an IPv6 address by the address
    alone, so a link can hold only one of them)."""
    if values is None:
        return None
    result = []
    seen_v6 = {}
    for i, value in enumerate(values):
        item = f"{field}[{i}]"
        cidr = normalize_link_address(value, item)
        iface = ipaddress.ip_interface(cidr)
        if iface.version == 6:
            first = seen_v6.setdefault(iface.ip, (i, cidr))
            if first[1] != cidr:
                raise ParamError(
                    item,
                    f"'{cidr}' is the address of {field}[{first[0]}] ('{first[1]}') with another "
                    "prefix length; an IPv6 address can be on a link only once, list it once",
                )
        if cidr not in result:
            result.append(cidr)
    return result


def cidr_sort_key(cidr):
    """Sort key for CIDR strings: IPv4 before IPv6, then by address and prefix."""
    iface = ipaddress.ip_interface(cidr)
    return (iface.version, int(iface.ip), iface.network.prefixlen)


def validate_mtu(value, field):
    """Return ``value`` as int if it is a plausible MTU (68-65535), None for None; else raise."""
    if value is None:
        return None
    try:
        mtu = int(value)
    except (TypeError, ValueError):
        raise ParamError(
            field, f"'{value}' is not an integer; allowed: {MTU_MIN}-{MTU_MAX}"
        ) from None
    if not MTU_MIN <= mtu <= MTU_MAX:
        raise ParamError(field, f"{mtu} is out of range; allowed: {MTU_MIN}-{MTU_MAX}")
    return mtu


def validate_int_range(value, field, low, high):
    """Return ``value`` as int if ``low <= value <= high`` (None stays None); else raise."""
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ParamError(field, f"'{value}' is not an integer; allowed: {low}-{high}") from None
    if not low <= number <= high:
        raise ParamError(field, f"{number} is out of range; allowed: {low}-{high}")
    return number


def netns_path(value, field="netns", netns_dir=NETNS_DIR):
    """Map a ``netns`` parameter to a filesystem path: None or ``""`` -> None (the namespace the
    module runs in), a plain name -> ``<netns_dir>/<name>``, an absolute path -> itself.
    Raise ParamError for relative paths and names with ``/``; does not check existence."""
    if value is None or value == "":
        return None
    text = str(value)
    refuse_control_characters(text, field)
    if text.startswith("/"):
        return os.path.normpath(text)
    if "/" in text or text in (".", "..") or any(c.isspace() for c in text):
        raise ParamError(
            field,
            f"'{value}' is neither a namespace name (no '/' or whitespace) nor an absolute path "
            "such as /proc/PID/ns/net or /var/run/docker/netns/ID",
        )
    return os.path.join(netns_dir, text)
