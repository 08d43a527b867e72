"""TLS certificates of the benchmark: one certificate and key per tenant (the default) or one
certificate shared by every tenant (``--shared-cert``, the old variant), generated once and
cached outside git.

Every contender gets the same files, so the same key type. The cache is one directory per key
type (``bench/.cache/tls/<key type>/``, gitignored) that grows to the largest tenant count asked
for: a run at 3000 tenants after one at 1000 generates only tenants 1000..3000.

    ca.crt, ca.key      the benchmark's CA (same key type); it signs every other certificate
    t<I>.crt            tenant I's certificate followed by the CA's: a full chain, as ACME clients
                        write it. Subject and subjectAltName t<I>.bench.example, plus the listen
                        address 10.0.0.250, so a client can check it got tenant I's own certificate
    t<I>.key            its private key (PKCS#8 PEM, unencrypted, mode 0600)
    t<I>.pem            chain and key in one file, the form HAProxy's ``crt`` takes
    shared.*            one certificate for *.bench.example (every tenant), 127.0.0.1 and 10.0.0.250
    manifest.json       key type, CA fingerprint, validity, how many tenants are complete

Keys come from the ``cryptography`` package in a process pool. Measured on the 2-vCPU development
machine: 73 ms of CPU per RSA-2048 key against about 350 ms per ``openssl genpkey`` process (whose
start-up and provider loading dominate), 0.03 ms per P-256 key. 3001 RSA-2048 keys take about
2 minutes on 2 CPUs, once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench import topology as topo

KEY_TYPES = {"rsa2048": "RSA-2048", "ecdsa-p256": "ECDSA P-256"}
DOMAIN = "bench.example"
LAYOUT = 1  # bump when the files' contents change, so that old caches are regenerated
VALID_DAYS = 3650
RENEW_BEFORE_DAYS = 30
BATCH = 25  # tenants per task of the process pool


class CertError(RuntimeError):
    """The certificate cache could not be read or written."""


@dataclass(frozen=True)
class TenantCert:
    """The files one tenant's TLS listener uses."""

    crt: Path  # certificate + CA (chain), PEM
    key: Path  # private key, PEM
    pem: Path  # chain + key in one file (HAProxy)
    hostname: str  # the DNS name in the certificate


@dataclass(frozen=True)
class CertStore:
    """Where the certificates of one run are, and which one each tenant uses."""

    directory: Path
    key_type: str
    shared: bool

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def label(self) -> str:
        """How tables, the JSON and chart titles name the TLS variant of the run."""
        kind = KEY_TYPES[self.key_type]
        if self.shared:
            return f"one shared {kind} certificate (old variant)"
        return f"per-tenant {kind} certificates"

    def for_tenant(self, tenant: str) -> TenantCert:
        stem = "shared" if self.shared else tenant
        d = self.directory
        host = f"{tenant}.{DOMAIN}"
        return TenantCert(d / f"{stem}.crt", d / f"{stem}.key", d / f"{stem}.pem", host)

    def shared_cert(self) -> TenantCert:
        d = self.directory
        return TenantCert(d / "shared.crt", d / "shared.key", d / "shared.pem", DOMAIN)


# -- generation ------------------------------------------------------------------------------
def _new_key(key_type: str):
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if key_type == "rsa2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(subject_cn: str, key, issuer, issuer_key, sans: list, is_ca: bool):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    rsa_key = isinstance(key, rsa.RSAPrivateKey)
    builder = builder.add_extension(
        x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=rsa_key and not is_ca,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=is_ca,
            crl_sign=is_ca,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    if is_ca:
        signer = key
    else:
        signer = issuer_key
        builder = builder.add_extension(
            x509.SubjectAlternativeName(sans), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256())


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _issue(directory: Path, stem: str, key_type: str, ca_pem: bytes, ca_key_pem: bytes, sans):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ca = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    key = _new_key(key_type)
    dns = next(s for s in sans if isinstance(s, x509.DNSName)).value
    cert = _certificate(dns, key, ca, ca_key, sans, is_ca=False)
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca_pem
    key_pem = _pem_key(key)
    _write(directory / f"{stem}.key", key_pem, 0o600)
    _write(directory / f"{stem}.crt", chain)
    _write(directory / f"{stem}.pem", chain + key_pem, 0o600)


def _tenant_sans(index: int) -> list:
    from cryptography import x509

    return [
        x509.DNSName(f"{topo.tenant_name(index)}.{DOMAIN}"),
        x509.IPAddress(ipaddress.ip_address(topo.LISTEN_ADDR)),
    ]


def _issue_batch(directory: str, key_type: str, indices: list[int], ca_pem, ca_key_pem) -> int:
    for i in indices:
        _issue(Path(directory), topo.tenant_name(i), key_type, ca_pem, ca_key_pem, _tenant_sans(i))
    return len(indices)


def _fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_manifest(directory: Path, key_type: str) -> dict | None:
    """The manifest if it describes a usable cache of this key type, else None."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        fresh = dt.datetime.fromisoformat(manifest["not_after"]) - dt.timedelta(
            days=RENEW_BEFORE_DAYS
        ) > dt.datetime.now(dt.timezone.utc)
        usable = (
            manifest.get("layout") == LAYOUT
            and manifest.get("key_type") == key_type
            and manifest.get("ca_sha256") == _fingerprint(directory / "ca.crt")
            and fresh
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest if usable else None


def ensure(cache: Path, key_type: str, tenants: int, shared: bool) -> tuple[CertStore, dict]:
    """Make sure ``cache/<key_type>`` holds certificates for tenants t0..t{tenants-1} and the
    shared one; returns the store and what it took: ``{"generated": n, "reused": n,
    "seconds": s, "directory": path}``. Raises CertError naming the path on a file problem."""
    if key_type not in KEY_TYPES:
        raise CertError(f"key type {key_type!r} is not one of {', '.join(KEY_TYPES)}")
    directory = cache / key_type
    started = time.monotonic()
    try:
        manifest = _read_manifest(directory, key_type)
        if manifest is None:
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True, mode=0o700)
            manifest = _new_ca(directory, key_type)
        have = manifest["tenants"]
        missing = list(range(have, tenants))
        if missing:
            ca_pem = (directory / "ca.crt").read_bytes()
            ca_key_pem = (directory / "ca.key").read_bytes()
            batches = [missing[i : i + BATCH] for i in range(0, len(missing), BATCH)]
            workers = max(1, min(len(os.sched_getaffinity(0)), len(batches)))
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [
                    pool.submit(_issue_batch, str(directory), key_type, b, ca_pem, ca_key_pem)
                    for b in batches
                ]
                for f in futures:
                    f.result()
            manifest["tenants"] = tenants
            _write(directory / "manifest.json", json.dumps(manifest, indent=1).encode())
    except OSError as exc:
        raise CertError(f"certificate cache {directory}: {exc.strerror or exc}") from None
    stats = {
        "directory": str(directory),
        "generated": len(missing),
        "reused": min(have, tenants),
        "seconds": round(time.monotonic() - started, 2),
    }
    return CertStore(directory, key_type, shared), stats


def _new_ca(directory: Path, key_type: str) -> dict:
    """A new CA and shared certificate in an empty directory; returns the manifest (0 tenants)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = _new_key(key_type)
    ca = _certificate(f"nsproxy bench CA ({KEY_TYPES[key_type]})", key, None, None, [], True)
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    key_pem = _pem_key(key)
    _write(directory / "ca.key", key_pem, 0o600)
    _write(directory / "ca.crt", ca_pem)
    sans = [
        x509.DNSName(f"*.{DOMAIN}"),
        x509.DNSName(DOMAIN),
        x509.IPAddress(ipaddress.ip_address(topo.LISTEN_ADDR)),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    _issue(directory, "shared", key_type, ca_pem, key_pem, sans)
    manifest = {
        "layout": LAYOUT,
        "key_type": key_type,
        "ca_sha256": _fingerprint(directory / "ca.crt"),
        "not_after": ca.not_valid_after_utc.isoformat(),
        "tenants": 0,
    }
    _write(directory / "manifest.json", json.dumps(manifest, indent=1).encode())
    return manifest
