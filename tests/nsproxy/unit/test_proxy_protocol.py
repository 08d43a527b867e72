"""PROXY protocol v2: headers byte-for-byte as the spec lays them out, and a strict parser."""

from __future__ import annotations

import random
import socket
import struct

import pytest

from nsproxy.proxy_protocol import (
    PP2_TYPE_NETNS,
    SIGNATURE,
    ProxyProtocolError,
    build_v2,
    parse_v2,
)


def test_signature_is_the_twelve_bytes_of_the_spec():
    assert bytes.fromhex("0D0A0D0A000D0A515549540A") == SIGNATURE


def test_tcp4_header_with_netns_tlv_is_laid_out_as_the_spec_says():
    header = build_v2(("10.0.0.7", 40000), ("10.0.0.250", 5432), netns="acme")
    expected = (
        SIGNATURE
        + b"\x21"  # version 2, command PROXY
        + b"\x11"  # AF_INET, STREAM
        + struct.pack("!H", 12 + 3 + 4)
        + bytes([10, 0, 0, 7, 10, 0, 0, 250])
        + struct.pack("!HH", 40000, 5432)
        + b"\x30\x00\x04acme"  # PP2_TYPE_NETNS
    )
    assert header == expected


def test_tcp6_header_carries_both_addresses_and_ports():
    header = build_v2(("fd00::1", 1, 0, 0), ("fd00::fa", 443, 0, 0))
    assert header[12:16] == b"\x21\x21\x00\x24"
    assert header[16:32] == socket.inet_pton(socket.AF_INET6, "fd00::1")
    assert header[32:48] == socket.inet_pton(socket.AF_INET6, "fd00::fa")
    assert header[48:52] == struct.pack("!HH", 1, 443)


def test_mixed_families_are_sent_as_ipv4_mapped_ipv6():
    parsed = parse_v2(build_v2(("10.0.0.1", 5), ("fd00::1", 6)))
    assert parsed.family == socket.AF_INET6
    assert parsed.src == ("::ffff:a00:1", 5)


def test_unknown_endpoints_give_a_local_header():
    header = build_v2(None, "/run/sock", netns="t")
    assert header[12:14] == b"\x20\x00"
    parsed = parse_v2(header)
    assert (parsed.command, parsed.src, parsed.netns) == (0, None, "t")


def test_parse_round_trip_reports_addresses_tlvs_and_length():
    header = build_v2(
        ("192.0.2.1", 1234), ("198.51.100.2", 80), netns="tenant-7", tlvs=[(0x02, b"example.com")]
    )
    parsed = parse_v2(header + b"payload")
    assert parsed.src == ("192.0.2.1", 1234)
    assert parsed.dst == ("198.51.100.2", 80)
    assert parsed.family == socket.AF_INET
    assert parsed.tlvs == ((0x02, b"example.com"), (PP2_TYPE_NETNS, b"tenant-7"))
    assert parsed.netns == "tenant-7"
    assert (header + b"payload")[parsed.length :] == b"payload"


def test_every_prefix_is_incomplete_not_an_error():
    header = build_v2(("10.0.0.1", 1), ("10.0.0.2", 2), netns="acme")
    for n in range(len(header)):
        assert parse_v2(header[:n]) is None


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "signature"),
        (SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12), "version"),
        (SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12), "command"),
        (SIGNATURE + b"\x21\x11\x00\x08" + bytes(8), "length"),
        (SIGNATURE + b"\x21\x41\x00\x00", "family"),
        (SIGNATURE + b"\x21\x11\x00\x0e" + bytes(12) + b"\x30\x00", "TLV"),
        (SIGNATURE + b"\x21\x11\x00\x10" + bytes(12) + b"\x30\x00\x09x", "TLV 0x30"),
    ],
)
def test_malformed_headers_raise_naming_the_part(data, field):
    with pytest.raises(ProxyProtocolError, match=field):
        parse_v2(data)


def test_random_corruption_never_raises_anything_but_protocol_error():
    rng = random.Random(7)
    good = build_v2(("10.0.0.1", 1), ("10.0.0.2", 2), netns="acme")
    outcomes = set()
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            result = parse_v2(bytes(data[: rng.randint(0, len(data))]))
        except ProxyProtocolError:
            result = "error"
        outcomes.add("header" if hasattr(result, "tlvs") else str(result))
    assert outcomes == {"header", "None", "error"}


def test_oversized_tlv_is_refused_when_building():
    with pytest.raises(ValueError):
        build_v2(("10.0.0.1", 1), ("10.0.0.2", 2), tlvs=[(0x30, bytes(70000))])
