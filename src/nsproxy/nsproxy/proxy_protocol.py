"""PROXY protocol version 2 (the binary form of HAProxy's proxy-protocol.txt), build and parse.

TCP listeners can send this header to their upstream before the first client byte, so the
upstream learns the client's address and, through the ``PP2_TYPE_NETNS`` TLV (0x30), which
tenant the connection came from; HAProxy (``send-proxy-v2`` with ``namespace``) and nginx
(``$proxy_protocol_tlv_netns``) read the same TLV. The parser is here for tests and for any
program that wants to accept the header; it checks every length and raises
:class:`ProxyProtocolError` on anything malformed.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import NamedTuple, Optional, Sequence, Tuple

__all__ = [
    "PP2_TYPE_NETNS",
    "SIGNATURE",
    "ProxyHeader",
    "ProxyProtocolError",
    "build_v2",
    "parse_v2",
]

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_NETNS = 0x30

_VERSION = 0x20
CMD_LOCAL = 0x0
CMD_PROXY = 0x1
_FAM_TCP4 = 0x11
_FAM_TCP6 = 0x21
_FAM_UNSPEC = 0x00
_ADDR_LEN = {1: 12, 2: 36, 3: 216}  # by address family nibble: INET, INET6, UNIX
_HEADER = struct.Struct("!12sBBH")

Address = Tuple[str, int]


class ProxyProtocolError(ValueError):
    """The bytes are not a well-formed PROXY v2 header; the message says which part."""


class ProxyHeader(NamedTuple):
    """A parsed header. ``src``/``dst`` are ``(ip, port)`` or None for LOCAL/UNSPEC."""

    command: int
    family: int  # socket.AF_INET, AF_INET6 or AF_UNSPEC
    src: Optional[Address]
    dst: Optional[Address]
    tlvs: Tuple[Tuple[int, bytes], ...]
    length: int  # bytes the header occupied, including the 16-byte fixed part

    @property
    def netns(self) -> str | None:
        """The PP2_TYPE_NETNS value (namespace or tenant name), if the header has one."""
        for kind, value in self.tlvs:
            if kind == PP2_TYPE_NETNS:
                return value.decode("utf-8", "replace")
        return None


def build_v2(
    src: Address | None,
    dst: Address | None,
    netns: str | None = None,
    tlvs: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    """A PROXY v2 header for a TCP connection from ``src`` to ``dst``.

    ``src``/``dst`` are socket addresses as asyncio reports them (extra tuple items of
    IPv6 addresses are ignored). If either is missing or not IP (a UNIX socket), the header
    is a LOCAL one without addresses, as the spec asks. An IPv4 address paired with an IPv6
    one is sent as IPv4-mapped IPv6. ``netns`` adds a PP2_TYPE_NETNS TLV.
    """
    items = list(tlvs)
    if netns is not None:
        items.append((PP2_TYPE_NETNS, netns.encode("utf-8")))
    body = bytearray()
    command, family = CMD_LOCAL, _FAM_UNSPEC
    ips = _ip_pair(src, dst)
    if ips is not None:
        (sip, sport), (dip, dport) = ips
        command = CMD_PROXY
        family = _FAM_TCP4 if sip.version == 4 else _FAM_TCP6
        body += sip.packed + dip.packed + struct.pack("!HH", sport, dport)
    for kind, value in items:
        if not 0 <= kind <= 0xFF or len(value) > 0xFFFF:
            raise ValueError(f"TLV type {kind} or its {len(value)}-byte value is out of range")
        body += struct.pack("!BH", kind, len(value)) + value
    if len(body) > 0xFFFF:
        raise ValueError("PROXY v2 header longer than 65535 bytes")
    return _HEADER.pack(SIGNATURE, _VERSION | command, family, len(body)) + bytes(body)


def _ip_pair(src, dst):
    try:
        sip, dip = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
        sport, dport = int(src[1]), int(dst[1])
    except (TypeError, ValueError, IndexError):
        return None
    if not (0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF):
        return None
    if sip.version != dip.version:
        sip, dip = (_as_v6(sip), _as_v6(dip))
    return (sip, sport), (dip, dport)


def _as_v6(ip):
    return ipaddress.IPv6Address(f"::ffff:{ip}") if ip.version == 4 else ip


def parse_v2(data: bytes | bytearray | memoryview) -> ProxyHeader | None:
    """Parse a PROXY v2 header at the start of ``data``.

    Returns None while ``data`` is a valid but incomplete prefix, the header once complete
    (``.length`` says where the payload starts), and raises :class:`ProxyProtocolError`
    otherwise. TCP and UDP over IPv4/IPv6 and LOCAL are understood; UNIX addresses are
    skipped (src/dst None).
    """
    data = bytes(data)
    head = data[: len(SIGNATURE)]
    if not SIGNATURE.startswith(head):
        raise ProxyProtocolError("signature: not a PROXY v2 header")
    if len(data) < _HEADER.size:
        return None
    _sig, ver_cmd, fam, length = _HEADER.unpack_from(data)
    if ver_cmd & 0xF0 != _VERSION:
        raise ProxyProtocolError(f"version: {ver_cmd >> 4} (expected 2)")
    command = ver_cmd & 0x0F
    if command not in (CMD_LOCAL, CMD_PROXY):
        raise ProxyProtocolError(f"command: {command} (expected 0 LOCAL or 1 PROXY)")
    if len(data) < _HEADER.size + length:
        return None
    body = data[_HEADER.size : _HEADER.size + length]
    address_family = fam >> 4
    src = dst = None
    family = socket.AF_UNSPEC
    if command == CMD_LOCAL:
        # The spec says a receiver ignores the address block of a LOCAL header; skip it.
        pos = min(_ADDR_LEN.get(address_family, 0), length)
    elif address_family in (1, 2) and fam & 0x0F in (1, 2):
        pos = _ADDR_LEN[address_family]
        if length < pos:
            raise ProxyProtocolError(f"length: {length} too short for the address block")
        size = 4 if address_family == 1 else 16
        family = socket.AF_INET if address_family == 1 else socket.AF_INET6
        raw_src, raw_dst = body[:size], body[size : 2 * size]
        sport, dport = struct.unpack_from("!HH", body, 2 * size)
        src = (str(ipaddress.ip_address(raw_src)), sport)
        dst = (str(ipaddress.ip_address(raw_dst)), dport)
    elif address_family == 3:
        pos = 216
        if length < pos:
            raise ProxyProtocolError(f"length: {length} too short for UNIX addresses")
        family = socket.AF_UNIX
    elif fam == _FAM_UNSPEC:
        pos = 0
    else:
        raise ProxyProtocolError(f"family/protocol byte: 0x{fam:02x} is not defined")
    if pos > length:
        raise ProxyProtocolError(f"length: {length} too short for the address block")
    tlvs = []
    while pos < length:
        if length - pos < 3:
            raise ProxyProtocolError(f"TLV at offset {pos}: truncated type/length")
        kind, size = struct.unpack_from("!BH", body, pos)
        pos += 3
        if pos + size > length:
            raise ProxyProtocolError(f"TLV 0x{kind:02x}: value of {size} bytes overruns the header")
        tlvs.append((kind, body[pos : pos + size]))
        pos += size
    return ProxyHeader(command, family, src, dst, tuple(tlvs), _HEADER.size + length)
