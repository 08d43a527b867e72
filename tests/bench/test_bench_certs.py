"""The benchmark's certificate cache: one certificate and key per tenant, signed by the bench CA
for the tenant's own name, the same key type throughout, generated once and reused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import certs  # noqa: E402


def _openssl(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *argv], capture_output=True, text=True)


def _verifies(store: certs.CertStore, cert: Path, hostname: str) -> bool:
    got = _openssl(
        "verify",
        "-CAfile",
        str(store.ca),
        "-verify_hostname",
        hostname,
        "-verify_ip",
        "10.0.0.250",
        str(cert),
    )
    return got.returncode == 0


def _public_key(*argv: str) -> str:
    got = _openssl(*argv)
    assert got.returncode == 0, got.stderr
    return got.stdout


@pytest.mark.parametrize(
    ("key_type", "text"),
    [("rsa2048", "Public-Key: (2048 bit)"), ("ecdsa-p256", "NIST CURVE: P-256")],
)
def test_each_tenant_gets_its_own_certificate_and_key(tmp_path, key_type, text):
    store, made = certs.ensure(tmp_path, key_type, 3, shared=False)
    assert (made["generated"], made["reused"]) == (3, 0)
    keys = set()
    for i in range(3):
        own = store.for_tenant(f"t{i}")
        assert own.hostname == f"t{i}.bench.example"
        assert _verifies(store, own.crt, own.hostname)
        assert not _verifies(store, own.crt, f"t{(i + 1) % 3}.bench.example")
        assert text in _openssl("x509", "-noout", "-text", "-in", str(own.crt)).stdout
        public = _public_key("pkey", "-pubout", "-in", str(own.key))
        assert public == _public_key("x509", "-noout", "-pubkey", "-in", str(own.crt))
        keys.add(public)
        pem = own.pem.read_text()
        assert pem.count("BEGIN CERTIFICATE") == 2 and "PRIVATE KEY" in pem  # chain + key
        assert own.key.stat().st_mode & 0o077 == 0
    assert len(keys) == 3


def test_shared_variant_gives_every_tenant_one_certificate(tmp_path):
    store, _ = certs.ensure(tmp_path, "ecdsa-p256", 2, shared=True)
    assert store.for_tenant("t0").crt == store.for_tenant("t1").crt
    assert _verifies(store, store.for_tenant("t1").crt, "t1.bench.example")
    assert store.label == "one shared ECDSA P-256 certificate (old variant)"


def test_cache_grows_and_is_reused(tmp_path):
    store, _ = certs.ensure(tmp_path, "ecdsa-p256", 2, shared=False)
    before = store.for_tenant("t1").crt.stat().st_mtime_ns
    ca = store.ca.read_bytes()
    store, made = certs.ensure(tmp_path, "ecdsa-p256", 3, shared=False)
    assert (made["generated"], made["reused"]) == (1, 2)
    assert store.for_tenant("t1").crt.stat().st_mtime_ns == before
    assert store.ca.read_bytes() == ca
    assert _verifies(store, store.for_tenant("t2").crt, "t2.bench.example")
    _, made = certs.ensure(tmp_path, "ecdsa-p256", 3, shared=False)
    assert made["generated"] == 0


def test_a_cache_of_another_layout_is_made_again(tmp_path):
    store, _ = certs.ensure(tmp_path, "ecdsa-p256", 2, shared=False)
    manifest = store.directory / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "layout": 0}))
    store, made = certs.ensure(tmp_path, "ecdsa-p256", 2, shared=False)
    assert made["generated"] == 2
    assert _verifies(store, store.for_tenant("t0").crt, "t0.bench.example")


def test_unknown_key_type_is_refused_by_name(tmp_path):
    with pytest.raises(certs.CertError, match="'dsa' is not one of rsa2048, ecdsa-p256"):
        certs.ensure(tmp_path, "dsa", 1, shared=False)
