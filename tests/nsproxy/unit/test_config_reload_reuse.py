"""A reload re-checks only tenants whose JSON changed, yet still checks across tenants."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from nsproxy import config


def tenant(name, port=80, netns=None, upstream="app"):
    return {
        "name": name,
        "netns": netns or name,
        "listeners": [{"listen": f"10.0.0.250:{port}", "protocol": "http"}],
        "routes": [{"host": "*", "path_prefix": "/", "upstream": upstream}],
        "upstreams": {"app": {"netns": None, "servers": ["127.0.0.1:8080"]}},
    }


def parse(tenants, previous=None):
    return config.parse(json.dumps({"tenants": tenants}).encode(), previous)


def test_unchanged_tenants_are_reused_and_changed_ones_rebuilt():
    first = parse([tenant("a"), tenant("b")])
    previous = {t.name: t for t in first.tenants}
    second = parse([tenant("a"), tenant("b", port=81), tenant("c")], previous)
    by_name = {t.name: t for t in second.tenants}
    assert by_name["a"] is previous["a"]
    assert by_name["b"] is not previous["b"] and by_name["b"].listeners[0].port == 81
    assert by_name["c"].digest != previous["a"].digest


def test_checks_across_tenants_still_apply_to_reused_tenants():
    first = parse([tenant("a"), tenant("b")])
    previous = {t.name: t for t in first.tenants}
    with pytest.raises(config.ConfigError) as err:
        parse([tenant("a"), tenant("b"), tenant("intruder", netns="a")], previous)
    assert err.value.problems == [
        "tenant 'intruder': listeners[0].listen: duplicate listener: 10.0.0.250:80 overlaps "
        "tenant 'a': listeners[0] in network namespace 'a'"
    ]
    with pytest.raises(config.ConfigError) as err:
        parse([tenant("a"), tenant("a", netns="x")], previous)
    assert err.value.problems == ["tenant 'a': duplicate tenant name"]


def test_a_changed_tenant_is_validated_again():
    first = parse([tenant("a")])
    previous = {t.name: t for t in first.tenants}
    with pytest.raises(config.ConfigError) as err:
        parse([tenant("a", upstream="missing")], previous)
    assert err.value.problems[0].startswith("tenant 'a': routes[0].upstream: unknown upstream")


def https_tenant(name, cert, key):
    spec = tenant(name)
    spec["listeners"] = [
        {
            "listen": "10.0.0.250:443",
            "protocol": "https",
            "tls": {"certificates": [{"cert": str(cert), "key": str(key)}]},
        }
    ]
    return spec


def make_cert(folder, name):
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", f"/CN={name}.example", "-keyout", str(key),
         "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_unchanged_https_tenants_are_reused_without_loading_their_certificates(
    tmp_path, monkeypatch
):
    cert, key = make_cert(tmp_path, "a")
    first = parse([https_tenant("a", cert, key)])
    previous = {t.name: t for t in first.tenants}
    from nsproxy import tls

    other_cert, other_key = make_cert(tmp_path, "other")
    loads = []
    real = tls.validate_listener
    monkeypatch.setattr(tls, "validate_listener", lambda li: loads.append(li) or real(li))
    tenants = [https_tenant("a", cert, key), https_tenant("b", other_cert, other_key)]
    second = parse(tenants, previous)
    assert second.tenants[0] is previous["a"]
    assert len(loads) == 1  # only the added tenant "b" loaded its certificate


def test_an_added_https_tenant_with_the_files_and_settings_of_a_kept_one_loads_nothing(
    tmp_path, monkeypatch
):
    cert, key = make_cert(tmp_path, "a")
    previous = {t.name: t for t in parse([https_tenant("a", cert, key)]).tenants}
    from nsproxy import tls

    loads = []
    real = tls.validate_listener
    monkeypatch.setattr(tls, "validate_listener", lambda li: loads.append(li) or real(li))
    same = https_tenant("b", cert, key)
    stricter = https_tenant("c", cert, key)
    stricter["listeners"][0]["tls"]["min_version"] = "1.3"
    third = https_tenant("d", cert, key)
    second = parse([https_tenant("a", cert, key), same, stricter, third], previous)
    assert [t.name for t in second.tenants] == ["a", "b", "c", "d"]
    # b and d: same files (same inode, size, mtime) and same settings as the kept a: nothing
    # to load. c: other settings, so its certificate is validated again, once.
    assert [li["tls"].get("min_version") for li in loads] == ["1.3"]


def test_an_added_https_tenant_sharing_a_kept_tenants_path_is_validated_if_the_file_changed(
    tmp_path,
):
    cert, key = make_cert(tmp_path, "a")
    previous = {t.name: t for t in parse([https_tenant("a", cert, key)]).tenants}
    other_cert, _ = make_cert(tmp_path, "other")
    os.replace(other_cert, cert)  # same path, new file whose key is not `key`
    with pytest.raises(config.ConfigError) as err:
        parse([https_tenant("a", cert, key), https_tenant("b", cert, key)], previous)
    problems = "\n".join(err.value.problems)
    assert "tenant 'a': listeners[0].tls" in problems
    assert "tenant 'b': listeners[0].tls" in problems


def test_an_https_tenant_whose_certificate_file_changed_is_validated_again(tmp_path):
    cert, key = make_cert(tmp_path, "a")
    first = parse([https_tenant("a", cert, key)])
    previous = {t.name: t for t in first.tenants}
    other_cert, _ = make_cert(tmp_path, "other")
    os.replace(other_cert, cert)  # same path, new file whose key is not `key`
    with pytest.raises(config.ConfigError) as err:
        parse([https_tenant("a", cert, key)], previous)
    assert "tenant 'a': listeners[0].tls" in err.value.problems[0]


def test_a_certificate_rewritten_in_place_with_its_size_and_mtime_put_back_is_seen(tmp_path):
    """`cp` onto the old file, then `touch -r` (or `rsync --inplace -t`): the same inode,
    size and mtime; only the ctime, which no tool sets back, tells the rotation."""
    cert, key = make_cert(tmp_path, "a")
    previous = {t.name: t for t in parse([https_tenant("a", cert, key)]).tenants}
    before = os.stat(cert)
    for _ in range(20):  # ECDSA signatures vary in length: one no longer than a's
        other_cert, _ = make_cert(tmp_path, "b")
        data = other_cert.read_bytes()
        if len(data) <= before.st_size:
            break
    data += b"\n" * (before.st_size - len(data))  # text after the PEM block is ignored
    assert len(data) == before.st_size
    with open(cert, "r+b") as f:  # in place: the inode stays
        f.write(data)
    os.utime(cert, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(cert)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    with pytest.raises(config.ConfigError) as err:
        parse([https_tenant("a", cert, key)], previous)
    assert "tenant 'a': listeners[0].tls" in err.value.problems[0]
