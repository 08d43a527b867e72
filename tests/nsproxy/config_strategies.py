"""Hypothesis profiles and strategies for nsproxy configuration documents.

Profiles (pick one with ``NSPROXY_HYPOTHESIS_PROFILE``):

- ``ci`` (the default): bounded example counts, so that the property tests of the ``unit`` and
  ``daemon`` stages finish within a couple of minutes on a loaded two-core machine;
- ``long``: twenty times as many examples, for a run by hand or at night, e.g.
  ``NSPROXY_HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/nsproxy -k property``.

Tests scale their own counts with :func:`examples`. An input that once failed is kept as a
plain regression test (an ``@example`` on the property, or a test of its own), not only in
Hypothesis' database.
"""

from __future__ import annotations

import json
import os
from json.decoder import scanstring

from config_docs import positions
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

PROFILE = os.environ.get("NSPROXY_HYPOTHESIS_PROFILE", "ci")
_SCALE = {"ci": 1, "long": 20}
settings.register_profile(
    "ci",
    deadline=5000,  # ms per example; a loaded CI machine is slow, a hang is much slower
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "long",
    deadline=20000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
if PROFILE not in _SCALE:
    raise ValueError(f"NSPROXY_HYPOTHESIS_PROFILE={PROFILE!r}: use 'ci' or 'long'")
settings.load_profile(PROFILE)


def examples(ci: int) -> int:
    """The number of examples a property runs: ``ci`` under the default profile."""
    return ci * _SCALE[PROFILE]


# -- hostile values -----------------------------------------------------------------------------
CONTROL = ["\n", "\r", "\x00", "\t", "\x1b", "\x7f", "\x85", "\u2028", "\ud800", "\udcff"]
NETNS_SPELLINGS = [
    "acme", "/run/netns/acme", "/run/netns/./acme", "//run/netns/acme", "/var/run/netns/acme",
    "/run/netns/acme/", "beta", "/run/netns/beta", "/proc/1/ns/net", "/proc/self/ns/net",
    "/run/netns/../netns/acme", "..", ".", "", "a" * 256, "/a/b/c/d/e/f/g/h/i/j" * 300,
]  # fmt: skip
ADDRESSES = [
    "10.0.0.250:80", "0.0.0.0:80", "[::]:80", "[::1]:80", "[fe80::1]:80", "[fe80::1%lo]:80",
    "[ff02::1]:80", "224.0.0.1:80", "[::ffff:10.0.0.250]:80", "10.0.0.250:0", "10.0.0.250:65536",
    "10.0.0.250", "10.0.0.250:", ":80", "[::1]", "host:80", "10.0.0.250:80\n", "1.2.3.4:٨٠",
]  # fmt: skip
NUMBERS = [
    0, -1, 1, 0.05, 0.1, 0.5, 2**31, 2**31 - 1, 2**53, 2**63, 3e9, 1e308, -0.0, 107, 108,
    65535, 65536, 100, 599, 600, 1024, 1023, 1048577, 10_000_001, float("nan"), float("inf"),
    float("-inf"),
]  # fmt: skip
STRINGS = [
    "", "auto", "AUTO", "http", "https", "tcp", "udp", "v2", "v1", "1.2", "1.3", "text", "json",
    "2xx", "5xx", "nobody", "root", "0", "4294967295", "*", "*.example", "a.example", "/", "-",
    "/tmp/x.log", "/run/nsproxy/", "/etc/passwd", "relative", "api", "db", "app",
]  # fmt: skip
KEYS = [
    "name", "netns", "listeners", "routes", "upstreams", "listen", "protocol", "tls", "upstream",
    "sni_routes", "sni", "proxy_protocol", "host", "path_prefix", "servers", "health_check",
    "type", "interval", "timeout", "rise", "fall", "path", "expect_status", "certificates",
    "cert", "key", "min_version", "limits", "timeouts", "workers", "user", "log", "format",
    "colour", "", "x\ny", "\u2028",
]  # fmt: skip
#: Marker strings that serialise() replaces by raw JSON text (nesting that json.dumps of a
#: Python object could not even write, and numbers it would not write as given).
_RAW = "\x00raw:"


def nested(depth: int, kind: str = "[") -> str:
    close = "]" if kind == "[" else "}"
    inner = "[" * depth + "]" * depth if kind == "[" else '{"a":' * depth + "1" + close * depth
    return _RAW + inner


def control_strings():
    base = st.sampled_from(STRINGS + ["acme", "10.0.0.250:80", "api.example", "/health"])
    return st.builds(
        lambda b, c, where: b[:where] + c + b[where:] if where >= 0 else b + c,
        base,
        st.sampled_from(CONTROL),
        st.integers(-1, 3),
    )


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NUMBERS),
    st.sampled_from(STRINGS),
    st.sampled_from(NETNS_SPELLINGS),
    st.sampled_from(ADDRESSES),
    control_strings(),
    st.text(max_size=20),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=10),
    st.sampled_from(["x", "/y"]).map(lambda s: s * 100_000),  # built here: short to print
    st.integers(1, 5000).map(nested),
    st.integers(1, 2000).map(lambda d: nested(d, "{")),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def serialise(doc) -> bytes:
    """JSON text of ``doc``, with nested() markers replaced by their raw text."""
    text = json.dumps(doc)  # ASCII only: controls and surrogates escaped
    marker = '"\\u0000raw:'
    start = text.find(marker)
    while start >= 0:
        raw, end = scanstring(text, start + 1)
        text = text[:start] + raw[len(_RAW) :] + text[end:]
        start = text.find(marker, start)
    return text.encode()


def mutate(data, doc):
    """Apply 1-4 random mutations to (a copy of) ``doc``: replace any position by a hostile
    value, delete a key or item, add a key, duplicate a list item, or respell a namespace."""
    doc = json.loads(json.dumps(doc))
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        spots = [p for p, _ in positions(doc) if p]
        if not spots:
            break
        path = data.draw(st.sampled_from(spots), label="path")
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        if not isinstance(parent, (dict, list)):
            continue
        op = data.draw(st.sampled_from(["replace", "replace", "delete", "add", "dup", "netns"]))
        last = path[-1]
        if op == "replace":
            parent[last] = data.draw(values, label="value")
        elif op == "delete":
            del parent[last]
        elif op == "add" and isinstance(parent, dict):
            key = data.draw(st.sampled_from(KEYS) | st.text(max_size=6), label="key")
            parent[key] = data.draw(values, label="value")
        elif op == "dup" and isinstance(parent, list):
            parent.append(json.loads(json.dumps(parent[last])))
        elif op == "netns" and isinstance(parent, dict):
            parent["netns"] = data.draw(st.sampled_from(NETNS_SPELLINGS), label="netns")
    return doc
