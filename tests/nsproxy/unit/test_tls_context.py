"""TLS listener checks and the SNI-selecting server context, with real certificates made by
the openssl CLI and real handshakes between Python ssl objects."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import ssl
import subprocess
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nsproxy import libssl, tls


def openssl(*args: str) -> str:
    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command line tool")
    return subprocess.run(["openssl", *args], check=True, capture_output=True, text=True).stdout


def make_cert(folder: Path, name: str, subject: str, san: str | None, key="ec") -> dict:
    cert, key_file = folder / f"{name}.pem", folder / f"{name}.key"
    newkey = (
        ["-newkey", "rsa:2048" if key == "rsa" else key]  # key "rsa:BITS": that size
        if key.startswith("rsa")
        else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    )
    extra = ["-addext", f"subjectAltName={san}"] if san else []
    openssl(
        "req",
        "-x509",
        *newkey,
        "-nodes",
        "-keyout",
        str(key_file),
        "-out",
        str(cert),
        "-days",
        "2",
        "-subj",
        subject,
        *extra,
    )
    return {"cert": str(cert), "key": str(key_file)}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    return {
        "a": make_cert(d, "a", "/CN=a.example", "DNS:a.example,DNS:*.a.example"),
        "b": make_cert(d, "b", "/CN=b.example", None, key="rsa"),  # names only in the CN
        "w": make_cert(d, "w", "/O=W/CN=not-used.example", "DNS:*.W.example,DNS:exact.a.example"),
        "ip": make_cert(d, "ip", "/O=nameless", "IP:10.0.0.250"),
        "c": make_cert(d, "c", "/CN=c.example", None, key="rsa"),
    }


def listener(*entries, **tls_extra):
    return {
        "listen": "10.0.0.250:443",
        "protocol": "https",
        "tls": {"certificates": list(entries), **tls_extra},
    }


def client_context(cafile=None, min_version=None, max_version=None, alpn=None):
    """A Python client context; without ``cafile`` it verifies nothing."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile:
        ctx.load_verify_locations(cafile=cafile)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if min_version:
        ctx.minimum_version = min_version
    if max_version:
        ctx.maximum_version = max_version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def connect(client_ctx, server_ctx, server_name, session=None):
    """A full in-memory handshake plus one byte of data; returns the client SSLObject."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_name, session=session)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = set()
    for _ in range(20):
        for obj in (client, server):
            if obj not in done:
                with contextlib.suppress(ssl.SSLWantReadError):
                    obj.do_handshake()
                    done.add(obj)
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if len(done) == 2:
            server.write(b"x")  # data after the handshake carries TLS 1.3 session tickets
            c_in.write(s_out.read())
            assert client.read(1) == b"x"
            return client
    raise AssertionError("handshake did not finish")


def handshake(server_ctx, server_name, cafile, **client_options):
    """Handshake with a client that verifies the served certificate against ``cafile``."""
    return connect(client_context(cafile, **client_options), server_ctx, server_name)


def served_common_name(client) -> str:
    subject = dict(x[0] for x in client.getpeercert()["subject"])
    return subject.get("commonName") or subject.get("organizationName")


# -- certificate names ------------------------------------------------------------------


def openssl_dns_names(cert_path: str) -> list[str]:
    text = openssl("x509", "-in", cert_path, "-noout", "-ext", "subjectAltName")
    return [n.lower() for n in re.findall(r"DNS:([^,\s]+)", text)]


@pytest.mark.parametrize("name", ["a", "w", "ip"])
def test_certificate_names_agree_with_openssl_x509(certs, name):
    der = ssl.PEM_cert_to_DER_cert(Path(certs[name]["cert"]).read_text())
    assert tls.certificate_names(der) == openssl_dns_names(certs[name]["cert"])


def test_certificate_without_dns_san_is_named_by_its_cn(certs):
    der = ssl.PEM_cert_to_DER_cert(Path(certs["b"]["cert"]).read_text())
    assert tls.certificate_names(der) == ["b.example"]


def test_certificate_names_reject_non_certificates_without_crashing():
    for junk in (b"", b"\x30", b"\x30\x84\xff\xff\xff\xff", b"\x04\x03abc", bytes(64)):
        with pytest.raises(ValueError):
            tls.certificate_names(junk)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), cut=st.integers(min_value=0, max_value=2000))
def test_the_certificate_readers_answer_any_bytes_with_a_result_or_value_error(certs, data, cut):
    """A certificate file is the operator's, but bytes are bytes: the DER readers return or
    raise ValueError (a problem line), never another exception, never a hang; a real
    certificate cut short or with junk spliced in is such bytes too."""
    real = ssl.PEM_cert_to_DER_cert(Path(certs["a"]["cert"]).read_text())
    for der in (data, real[:cut] + data, real[: cut % (len(real) + 1)]):
        for reader in (tls.certificate_names, tls.public_key):
            with contextlib.suppress(ValueError):
                reader(der)


def _der(tag: int, body: bytes) -> bytes:
    size = len(body)
    length = bytes([size]) if size < 0x80 else bytes([0x82]) + size.to_bytes(2, "big")
    return bytes([tag]) + length + body


def test_a_certificate_with_a_long_unknown_key_oid_is_named_by_its_length():
    """Naming an OID in dotted decimal is quadratic in its length: one of 20 kB from a
    certificate file took tenths of a second of the reload's check, and 750 kB (a 1 MiB PEM)
    most of a minute. Past 64 bytes it is named by its length."""
    oid = b"\x2a" + b"\xff" * 20000 + b"\x01"
    spki = _der(0x30, _der(0x30, _der(0x06, oid)) + _der(0x03, b"\x00"))
    empty = _der(0x30, b"")
    tbs = _der(0x30, _der(0x02, b"\x01") + _der(0x30, _der(0x06, b"\x2a")) + empty * 3 + spki)
    der = _der(0x30, tbs + _der(0x30, _der(0x06, b"\x2a")) + _der(0x03, b"\x00"))
    _kind, problem = tls.public_key(der)
    assert problem is not None and problem.startswith("has a key of type (an OID of 20002 bytes)")


# -- validate_listener --------------------------------------------------------------------


def test_valid_listener_has_no_problems(certs):
    assert tls.validate_listener(listener(certs["a"], certs["b"], certs["w"])) == []
    assert tls.validate_listener(listener(certs["a"], min_version="1.3")) == []


def test_combined_pem_with_key_needs_no_key_field(certs, tmp_path):
    both = tmp_path / "both.pem"
    both.write_text(Path(certs["a"]["cert"]).read_text() + Path(certs["a"]["key"]).read_text())
    assert tls.validate_listener(listener({"cert": str(both)})) == []


def test_missing_files_name_the_field_and_path(certs, tmp_path):
    problems = tls.validate_listener(
        listener(
            {"cert": str(tmp_path / "nope.pem"), "key": certs["a"]["key"]},
            {"cert": certs["a"]["cert"], "key": str(tmp_path / "nope.key")},
        )
    )
    assert problems == [
        f"tls.certificates[0].cert: cannot read {tmp_path}/nope.pem: No such file or directory",
        f"tls.certificates[1].key: cannot read {tmp_path}/nope.key: No such file or directory",
    ]


def test_unreadable_file_is_reported(certs, tmp_path):
    # root reads any mode bits, so a directory stands in for an unreadable file
    (tmp_path / "dir.key").mkdir()
    problems = tls.validate_listener(
        listener({"cert": certs["a"]["cert"], "key": str(tmp_path / "dir.key")})
    )
    assert problems == [
        f"tls.certificates[0].key: cannot read {tmp_path}/dir.key: not a regular file"
    ]


@pytest.mark.parametrize("label", ["X509 CERTIFICATE", "TRUSTED CERTIFICATE"])
def test_every_certificate_label_openssl_serves_is_checked(key_type_certs, label):
    """OpenSSL serves the first block labelled CERTIFICATE, X509 CERTIFICATE or TRUSTED
    CERTIFICATE; the checks read that very block. A DSA certificate so labelled, before an RSA
    one, is refused (it would be served, and no handshake could use it)."""
    dsa = Path(key_type_certs["dsa-2048"]["cert"]).read_text()
    rsa = Path(key_type_certs["rsa-2048"]["cert"]).read_text()
    relabelled = dsa.replace("BEGIN CERTIFICATE", f"BEGIN {label}").replace(
        "END CERTIFICATE", f"END {label}"
    )
    chain = Path(key_type_certs["dsa-2048"]["cert"]).with_name(f"relabelled-{label[:5]}.pem")
    chain.write_text(relabelled + rsa)
    problems = tls.validate_listener(
        listener({"cert": str(chain), "key": key_type_certs["dsa-2048"]["key"]})
    )
    assert len(problems) == 1 and "has a DSA key" in problems[0], problems


def test_a_regular_file_that_answers_like_a_device_is_a_sentence(certs, monkeypatch):
    """/proc/kmsg is a "regular" file that, opened non-blocking, answers EAGAIN (reading it
    for real would consume the machine's kernel log, so os.read plays it here)."""

    def would_block(_fd, _size):
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(tls.os, "read", would_block)
    assert tls.validate_listener(listener(certs["a"])) == [
        f"tls.certificates[0].cert: cannot read {certs['a']['cert']}: not readable as a "
        "regular file"
    ]


@pytest.mark.timeout(60)  # a liveness bound: the pattern that backtracked took minutes
def test_a_megabyte_of_begin_lines_is_refused_without_backtracking(certs, tmp_path):
    """A certificate file is read in the binder's loop at a reload, and some deployments let a
    tenant's automation write its own: its content must not cost the loop more than a read."""
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"-----BEGIN CERTIFICATE-----\n" * (1024 * 1024 // 28 - 1))
    problems = tls.validate_listener(listener({**certs["a"], "cert": str(junk)}))
    assert problems == [
        f"tls.certificates[0].cert: {junk} is not a PEM X.509 certificate (no END line for "
        "its first CERTIFICATE block)"
    ]


def _fifo(tmp_path):
    os.mkfifo(tmp_path / "fifo")  # its open would wait for a writer that never comes
    return str(tmp_path / "fifo")


def _sparse(tmp_path):
    with open(tmp_path / "huge.pem", "wb") as f:
        f.truncate(4 << 30)  # 4 GiB that cost no disk: read whole, they would cost memory
    return str(tmp_path / "huge.pem")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("field", ["cert", "key"])
@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_fifo, "not a regular file"),
        (lambda _tmp: "/dev/zero", "not a regular file"),
        (lambda _tmp: "/dev/null", "not a regular file"),
        (_sparse, "larger than 1048576 bytes"),
    ],
    ids=["fifo", "dev-zero", "dev-null", "sparse-4GiB"],
)
def test_a_file_that_is_no_regular_small_file_is_refused_before_it_is_read(
    certs, tmp_path, make, reason, field
):
    """Checked by ``check`` and by the binder at reload: a read that blocks would stop the
    binder's loop (admin socket, signals, workers), one without bound would fill its memory.
    The validation refuses at once, naming the field; so does the binder's own read."""
    path = make(tmp_path)
    entry = {**certs["a"], field: path}
    assert tls.validate_listener(listener(entry)) == [
        f"tls.certificates[0].{field}: cannot read {path}: {reason}"
    ]
    with pytest.raises(OSError, match=reason):
        tls.read_certificate_file(path)


KEY_TYPES = {  # genpkey arguments; DSA needs its parameters first
    "rsa-2048": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    "rsa-pss-2048": ["-algorithm", "RSA-PSS", "-pkeyopt", "rsa_keygen_bits:2048"],
    "ecdsa-p256": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "ecdsa-p384": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
    "ecdsa-p521": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"],
    "ecdsa-secp256k1": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:secp256k1"],
    "ecdsa-brainpoolP256r1": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:brainpoolP256r1"],
    "ed25519": ["-algorithm", "ED25519"],
    "ed448": ["-algorithm", "ED448"],
    "dsa-2048": ["-paramfile", "{dsa_params}"],
}


@pytest.fixture(scope="module")
def key_type_certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("key-types")
    params = d / "dsa-params.pem"
    openssl("genpkey", "-genparam", "-algorithm", "DSA", "-pkeyopt", "dsa_paramgen_bits:2048",
            "-out", str(params))  # fmt: skip
    made = {}
    for name, args in KEY_TYPES.items():
        key, cert = d / f"{name}.key", d / f"{name}.pem"
        openssl("genpkey", *(a.format(dsa_params=params) for a in args), "-out", str(key))
        openssl("req", "-x509", "-key", str(key), "-out", str(cert), "-days", "2", "-sha256",
                "-subj", "/CN=a.example", "-addext", "subjectAltName=DNS:a.example")  # fmt: skip
        made[name] = {"cert": str(cert), "key": str(key)}
    return made


@pytest.mark.parametrize("name", sorted(KEY_TYPES))
def test_check_accepts_a_key_type_exactly_when_both_tls_versions_can_serve_it(key_type_certs, name):
    """What check accepts, run can serve: loading a certificate proves nothing about the
    handshake (OpenSSL loads a DSA or secp256k1 certificate, then finds no TLS 1.2 cipher and
    no TLS 1.3 signature scheme for it). Judged against real handshakes at each version."""
    files = key_type_certs[name]
    served = []
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        serving = tls._new_context(ssl.TLSVersion.TLSv1_2)  # the settings, without the checks
        serving.load_cert_chain(files["cert"], files["key"])
        try:
            connect(client_context(min_version=version, max_version=version), serving, "a.example")
            served.append(True)
        except ssl.SSLError:
            served.append(False)
    problems = tls.validate_listener(listener(files))
    assert (problems == []) == all(served), (problems, served)
    if problems:
        (problem,) = problems
        assert problem.startswith(f"tls.certificates[0].cert: {files['cert']} has ")
        assert ("a DSA key" if name.startswith("dsa") else "an ECDSA key on curve") in problem
        assert problem.endswith(f"(allowed: {tls.SERVABLE_KEYS_TEXT})")


@pytest.mark.parametrize("algorithm", ["RSA", "RSA-PSS"])
def test_an_rsa_key_is_served_up_to_4096_bits_and_refused_with_its_size_above(tmp_path, algorithm):
    """Each full handshake signs with the key on the loop every tenant of the worker shares:
    a modulus larger than MAX_RSA_BITS (200 ms a signature at 15360 bits) is refused at check
    time, with its size as OpenSSL counts it."""
    for bits in (4096, 4104):
        key, cert = tmp_path / f"{bits}.key", tmp_path / f"{bits}.pem"
        openssl("genpkey", "-algorithm", algorithm, "-pkeyopt", f"rsa_keygen_bits:{bits}",
                "-out", str(key))  # fmt: skip
        openssl("req", "-x509", "-key", str(key), "-out", str(cert), "-days", "2", "-sha256",
                "-subj", "/CN=a.example", "-addext", "subjectAltName=DNS:a.example")  # fmt: skip
        counted = re.search(r"Public-Key: \((\d+) bit\)", openssl("x509", "-in", str(cert),
                                                                 "-noout", "-text"))  # fmt: skip
        assert counted is not None and int(counted.group(1)) == bits
        problems = tls.validate_listener(listener({"cert": str(cert), "key": str(key)}))
        if bits == 4096:
            assert problems == []
        else:
            assert problems == [
                f"tls.certificates[0].cert: {cert} has an RSA key of {bits} bits: at most 4096 "
                "are served (each full handshake signs with it on the loop every tenant of the "
                "worker shares)"
            ]


@pytest.mark.parametrize(("cert", "key"), [("a", "w"), ("b", "c"), ("a", "b")])
def test_key_not_matching_certificate_is_reported(certs, cert, key):
    problems = tls.validate_listener(
        listener({"cert": certs[cert]["cert"], "key": certs[key]["key"]})
    )
    assert problems == [
        f"tls.certificates[0].key: the key in {certs[key]['key']} does not match "
        f"{certs[cert]['cert']}"
    ]


def test_swapped_cert_and_key_files_are_reported(certs):
    problems = tls.validate_listener(
        listener({"cert": certs["a"]["key"], "key": certs["a"]["cert"]})
    )
    assert len(problems) == 1
    assert problems[0].startswith("tls.certificates[0].cert: ")
    assert "is not a PEM X.509 certificate" in problems[0]


def test_encrypted_key_is_refused_without_prompting(certs, tmp_path):
    enc = tmp_path / "enc.key"
    openssl(
        "pkey", "-in", certs["a"]["key"], "-aes256", "-passout", "pass:secret", "-out", str(enc)
    )
    problems = tls.validate_listener(listener({"cert": certs["a"]["cert"], "key": str(enc)}))
    assert problems == [
        f"tls.certificates[0].key: {enc} is encrypted; nsproxy needs an unencrypted key"
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1.1", "tls.min_version: '1.1' is not allowed (use '1.2' or '1.3')"),
        (1.2, "tls.min_version: 1.2 is not allowed (use '1.2' or '1.3')"),
    ],
)
def test_bad_min_version_is_reported(certs, value, message):
    assert tls.validate_listener(listener(certs["a"], min_version=value)) == [message]


def test_shape_problems_are_reported(certs):
    assert tls.validate_listener({"listen": "1.2.3.4:443", "protocol": "https"}) == [
        "tls: required for an https listener, an object with 'certificates'"
    ]
    assert tls.validate_listener({"tls": {"certificates": []}}) == [
        "tls.certificates: must be a non-empty list of {cert, key} objects"
    ]
    assert tls.validate_listener(listener({**certs["a"], "chain": "x"}, sni="y")) == [
        "tls.sni: unknown key (allowed: certificates, min_version)",
        "tls.certificates[0].chain: unknown key (allowed: cert, key)",
    ]


def test_nameless_certificate_after_the_first_is_reported(certs):
    assert tls.validate_listener(listener(certs["ip"])) == []
    problems = tls.validate_listener(listener(certs["a"], certs["ip"]))
    assert len(problems) == 1 and problems[0].startswith("tls.certificates[1].cert: has no DNS")


@pytest.mark.parametrize("san", ["DNS:*", "DNS:*.*.example", "DNS:a.*.example",
                                 "DNS:b\u00fccher.example", "DNS:*,DNS:x*.example"])  # fmt: skip
def test_a_certificate_only_with_names_sni_cannot_select_is_reported(certs, tmp_path, san):
    """Clients send A-labels and match a wildcard only as the whole left-most label: a second
    certificate named only otherwise is never chosen (it passed the check before)."""
    odd = make_cert(tmp_path, "odd", "/O=odd", san)
    problems = tls.validate_listener(listener(certs["a"], odd))
    assert len(problems) == 1 and "no DNS name SNI can select" in problems[0], problems


def test_names_sni_cannot_select_are_left_out_and_the_others_kept(certs, tmp_path):
    odd = make_cert(tmp_path, "mixed", "/O=odd", "DNS:*.*.example,DNS:ok.example")
    assert tls.validate_listener(listener(certs["a"], odd)) == []
    context = tls.build_server_context(listener(certs["a"], odd))
    _default, exact, wildcard = context.sni_callback.tables
    assert "ok.example" in exact and "example" not in wildcard


def test_build_server_context_raises_with_the_problems(certs, tmp_path):
    with pytest.raises(tls.TLSConfigError) as err:
        tls.build_server_context(listener({"cert": str(tmp_path / "x.pem"), "key": "k"}))
    assert err.value.problems[0].startswith("tls.certificates[0].cert: cannot read")


# -- the server context ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_ctx(certs):
    return tls.build_server_context(listener(certs["a"], certs["b"], certs["w"]))


@pytest.mark.parametrize(
    ("sni", "expected"),
    [
        ("a.example", "a.example"),
        ("B.EXAMPLE", "b.example"),  # case-insensitive
        ("www.a.example", "a.example"),  # *.a.example
        ("exact.a.example", "not-used.example"),  # an exact name beats the wildcard
        ("x.w.example", "not-used.example"),  # *.W.example, from the SAN; the CN is ignored
    ],
)
def test_sni_selects_the_certificate_whose_names_match(server_ctx, certs, sni, expected):
    owner = {"a.example": "a", "b.example": "b", "not-used.example": "w"}[expected]
    client = handshake(server_ctx, sni, certs[owner]["cert"])
    assert served_common_name(client) == expected


@pytest.mark.parametrize("sni", ["unknown.example", "a.b.w.example", None])
def test_unknown_deeper_or_no_name_gets_the_first_certificate(server_ctx, sni):
    client = connect(client_context(), server_ctx, sni)
    der = client.getpeercert(binary_form=True)
    assert tls.certificate_names(der) == ["a.example", "*.a.example"]


@pytest.mark.parametrize("old", ["TLSv1", "TLSv1_1"])
def test_tls_below_1_2_is_refused(server_ctx, old):
    version = getattr(ssl.TLSVersion, old)
    client_ctx = client_context()
    # OpenSSL's default security level disables TLS < 1.2 in clients too; lift it so the
    # refusal proven is the server's.
    client_ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client_ctx.minimum_version = client_ctx.maximum_version = version
    with pytest.raises(ssl.SSLError, match="UNSUPPORTED_PROTOCOL|VERSION|PROTOCOL"):
        connect(client_ctx, server_ctx, "a.example")


def test_tls_1_2_and_1_3_are_served(server_ctx, certs):
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        client = handshake(
            server_ctx, "a.example", certs["a"]["cert"], min_version=version, max_version=version
        )
        assert client.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]


def test_min_version_1_3_refuses_tls_1_2(certs):
    ctx = tls.build_server_context(listener(certs["a"], min_version="1.3"))
    with pytest.raises(ssl.SSLError):
        handshake(ctx, "a.example", certs["a"]["cert"], max_version=ssl.TLSVersion.TLSv1_2)
    assert handshake(ctx, "a.example", certs["a"]["cert"]).version() == "TLSv1.3"


def test_tls12_cipher_is_forward_secret_aead(server_ctx, certs):
    client = handshake(
        server_ctx, "b.example", certs["b"]["cert"], max_version=ssl.TLSVersion.TLSv1_2
    )
    name = client.cipher()[0]
    assert name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name)


def test_alpn_answers_http_1_1_only(server_ctx, certs):
    assert (
        handshake(
            server_ctx, "a.example", certs["a"]["cert"], alpn=["h2", "http/1.1"]
        ).selected_alpn_protocol()
        == "http/1.1"
    )
    assert (
        handshake(server_ctx, "a.example", certs["a"]["cert"], alpn=["h2"]).selected_alpn_protocol()
        is None
    )


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize("sni", ["a.example", "b.example"])
def test_session_tickets_resume_sessions(server_ctx, certs, sni, version):
    owner = sni[0]
    client_ctx = client_context(certs[owner]["cert"], max_version=version)
    first = connect(client_ctx, server_ctx, sni)
    assert first.session is not None and first.session.has_ticket
    assert not first.session_reused
    second = connect(client_ctx, server_ctx, sni, session=first.session)
    assert second.session_reused
    assert served_common_name(second) == f"{owner}.example"


def files_of(*paths) -> dict:
    """path -> bytes, as the binder hands them to a worker."""
    return {p: Path(p).read_bytes() for p in paths}


def test_a_single_certificate_needs_no_sni_callback(certs, server_ctx):
    assert server_ctx.sni_callback is not None  # three certificates: SNI chooses
    ctx = tls.build_server_context(listener(certs["b"]))
    assert ctx.sni_callback is None
    for sni in ("b.example", "other.example", None):  # no choice: always the one certificate
        client = connect(client_context(), ctx, sni)
        assert tls.certificate_names(client.getpeercert(binary_form=True)) == ["b.example"]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_server_context_is_made_at_first_use_and_rotated_from_new_bytes(certs, version):
    spec = listener({"cert": "/etc/site.pem", "key": "/etc/site.key"})
    files = {
        "/etc/site.pem": Path(certs["a"]["cert"]).read_bytes(),
        "/etc/site.key": Path(certs["a"]["key"]).read_bytes(),
    }
    lazy = tls.ServerContext(spec, files)
    assert not lazy.built and not lazy.used
    ctx = lazy.get()
    assert lazy.built and lazy.used and lazy.get() is ctx
    before = connect(client_context(max_version=version), ctx, "a.example")
    assert tls.certificate_names(before.getpeercert(True)) == ["a.example", "*.a.example"]
    # rotate: same paths, another certificate (and key type), as a new generation brings them
    files["/etc/site.pem"] = Path(certs["b"]["cert"]).read_bytes()
    files["/etc/site.key"] = Path(certs["b"]["key"]).read_bytes()
    assert lazy.get() is ctx  # the new bytes count from the rotation on
    lazy.rotate(spec)
    assert not lazy.built
    for sni in ("b.example", "a.example", None):  # the new names, an old one, no SNI at all
        client = connect(client_context(max_version=version), lazy.get(), sni)
        assert tls.certificate_names(client.getpeercert(binary_form=True)) == ["b.example"]
    assert lazy.drop() and not lazy.built and not lazy.drop()
    client = connect(client_context(), lazy.get(), None)
    assert tls.certificate_names(client.getpeercert(binary_form=True)) == ["b.example"]


def test_server_context_that_cannot_be_made_refuses_without_retrying(certs, caplog):
    spec = listener(certs["a"])
    files = files_of(certs["a"]["cert"], certs["a"]["key"])
    files[certs["a"]["key"]] = Path(certs["c"]["key"]).read_bytes()  # not the certificate's key
    lazy = tls.ServerContext(spec, files)
    with pytest.raises(tls.TLSConfigError, match="does not match"):
        lazy.get()
    assert caplog.text.count("does not match") == 1
    files.update(files_of(certs["a"]["key"]))  # repaired bytes count from the next rotation on
    with pytest.raises(tls.TLSConfigError, match="does not match"):
        lazy.get()
    assert caplog.text.count("does not match") == 1  # logged once
    lazy.rotate(spec)
    assert served_common_name(handshake(lazy.get(), "a.example", certs["a"]["cert"])) == "a.example"


def test_server_contexts_get_the_shared_ticket_keys(certs):
    """Two contexts made from the same certificates in one process resume each other's
    tickets only when both got the shared keys (tls_tickets.use), as two workers do."""
    from nsproxy import tls_tickets

    spec = listener(certs["a"])
    files = files_of(certs["a"]["cert"], certs["a"]["key"])
    client_ctx = client_context(certs["a"]["cert"], max_version=ssl.TLSVersion.TLSv1_3)
    tls_tickets.use(tls_tickets.new_keys())
    try:
        one, two = tls.ServerContext(spec, files).get(), tls.ServerContext(spec, files).get()
    finally:
        tls_tickets.use(None)
    three = tls.ServerContext(spec, files).get()
    first = connect(client_ctx, one, "a.example")
    assert connect(client_ctx, two, "a.example", session=first.session).session_reused
    assert not connect(client_ctx, three, "a.example", session=first.session).session_reused


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["TLSv1.2", "TLSv1.3"]
)
def test_a_rotation_rekeys_every_context_and_ends_the_tickets_before_it(certs, version):
    """tls_tickets.rotate, as a worker runs it on the binder's message: a context built before
    the rotation (``one``) and one built after it (``two``, as in another worker) take no
    ticket from before it, and each takes the other's tickets from after it."""
    from nsproxy import tls_tickets

    spec = listener(certs["a"])
    files = files_of(certs["a"]["cert"], certs["a"]["key"])
    client_ctx = client_context(certs["a"]["cert"], max_version=version)
    tls_tickets.use(tls_tickets.new_keys())
    try:
        one = tls.ServerContext(spec, files).get()
        before = connect(client_ctx, one, "a.example")
        assert connect(client_ctx, one, "a.example", session=before.session).session_reused
        assert tls_tickets.rotate(tls_tickets.new_keys()) >= 1
        two = tls.ServerContext(spec, files).get()
    finally:
        tls_tickets.use(None)
    for server_ctx in (one, two):
        reused = connect(client_ctx, server_ctx, "a.example", session=before.session)
        assert not reused.session_reused
    from_one, from_two = (
        connect(client_ctx, one, "a.example"),
        connect(client_ctx, two, "a.example"),
    )
    assert connect(client_ctx, two, "a.example", session=from_one.session).session_reused
    assert connect(client_ctx, one, "a.example", session=from_two.session).session_reused


# Listeners as tenants configure them; equal keys mean the same settings and certificates.
_RESUMERS = {
    "a": ("a",),
    "a-again": ("a",),  # another tenant or worker with the same files: may resume
    "b": ("b",),
    "a+b": ("a", "b"),
    "b+a": ("b", "a"),
    "a-tls1.3": ("a",),
}


def _resumer(certs, name, shared_keys):
    from nsproxy import tls_tickets

    extra = {"min_version": "1.3"} if name.endswith("tls1.3") else {}
    spec = listener(*(certs[c] for c in _RESUMERS[name]), **extra)
    files = files_of(*(certs[c][k] for c in _RESUMERS[name] for k in ("cert", "key")))
    tls_tickets.use(shared_keys)
    try:
        return tls.ServerContext(spec, files).get()
    finally:
        tls_tickets.use(None)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    issuer=st.sampled_from(sorted(_RESUMERS)),
    offered=st.sampled_from(sorted(_RESUMERS)),
    version=st.sampled_from([ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]),
    server_name=st.sampled_from(["a.example", "b.example", None]),
    shared=st.booleans(),
)
def test_a_session_resumes_only_where_the_same_certificates_are_served(
    certs, issuer, offered, version, server_name, shared
):
    """Every tenant may listen on the same address, so a client's saved session can be
    offered to another tenant's listener: it must not resume there (it would skip the
    certificate the client checks). Same settings and certificate files: it may."""
    keys = os.urandom(80) if shared else None  # as the binder's key set, or none
    same = _RESUMERS[issuer] == _RESUMERS[offered] and issuer.endswith("1.3") == offered.endswith(
        "1.3"
    )
    if version == ssl.TLSVersion.TLSv1_2 and "tls1.3" in (issuer + offered):
        version = ssl.TLSVersion.TLSv1_3
    client_ctx = client_context(max_version=version)
    first = connect(client_ctx, _resumer(certs, issuer, keys), server_name)
    second = connect(client_ctx, _resumer(certs, offered, keys), server_name, session=first.session)
    assert second.session_reused == (same and shared)
    if not second.session_reused:  # a full handshake: the offered listener's own certificate
        full = connect(client_ctx, _resumer(certs, offered, keys), server_name)
        assert second.getpeercert(binary_form=True) == full.getpeercert(binary_form=True)


def test_certificate_files_are_read_once_when_building(certs, tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "c.key"
    cert.write_bytes(Path(certs["a"]["cert"]).read_bytes())
    key.write_bytes(Path(certs["a"]["key"]).read_bytes())
    ctx = tls.build_server_context(listener({"cert": str(cert), "key": str(key)}))
    os.unlink(cert)
    os.unlink(key)
    assert served_common_name(handshake(ctx, "a.example", certs["a"]["cert"])) == "a.example"


class _CountedFiles(dict):
    """path -> bytes, counting lookups (a worker's view preads its store at each one)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.reads: dict[str, int] = {}

    def __getitem__(self, path):
        self.reads[path] = self.reads.get(path, 0) + 1
        return super().__getitem__(path)


@pytest.mark.parametrize("combined", [False, True], ids=["cert+key", "combined-pem"])
def test_a_build_from_the_binders_bytes_looks_each_file_up_once(certs, combined):
    cert = Path(certs["a"]["cert"]).read_bytes()
    key = Path(certs["a"]["key"]).read_bytes()
    if combined:
        files = _CountedFiles({"/x/both.pem": cert + key})
        entry = {"cert": "/x/both.pem"}
    else:
        files = _CountedFiles({"/x/c.pem": cert, "/x/c.key": key})
        entry = {"cert": "/x/c.pem", "key": "/x/c.key"}
    ctx = tls.build_server_context(listener(entry), files)
    assert files.reads == dict.fromkeys(files, 1)
    assert served_common_name(handshake(ctx, "a.example", certs["a"]["cert"])) == "a.example"


# -- verdicts of `nsproxy check` for the `run` that follows it ----------------------------


@pytest.fixture
def verdicts():
    yield tls
    tls.forget_verified()


def test_check_stores_what_it_found_valid_and_run_skips_loading_exactly_those(
    certs, tmp_path, verdicts
):
    store = str(tmp_path / "run" / "tls-verified")
    good, other = listener(certs["a"]), listener(certs["b"])
    tls.record_verified()  # nsproxy check
    assert tls.validate_listener(good) == []
    assert not tls.save_verified(store)  # no RuntimeDirectory: nothing stored, none made
    assert not os.path.exists(os.path.dirname(store))
    os.mkdir(os.path.dirname(store), 0o755)
    assert tls.save_verified(store)
    assert os.stat(store).st_mode & 0o777 == 0o600
    tls.forget_verified()
    assert tls.trust_verified(store) == 1  # nsproxy run
    assert tls.validate_listener(good) == [] and tls.validate_listener(other) == []
    assert tls.verdicts == {"trusted": 1, "loaded": 1}


def test_a_stored_verdict_counts_for_the_very_bytes_only(certs, tmp_path, verdicts):
    """A digest in the store is trusted without loading (here one planted for a key that does
    not match, to make the trust visible); a byte changed is loaded and refused again."""
    store = tmp_path / "tls-verified"
    cert, key = tmp_path / "c.pem", tmp_path / "c.key"
    cert.write_bytes(Path(certs["a"]["cert"]).read_bytes())
    key.write_bytes(Path(certs["c"]["key"]).read_bytes())  # not the certificate's key
    spec = listener({"cert": str(cert), "key": str(key)})
    files = {str(cert): cert.read_bytes(), str(key): key.read_bytes()}
    store.write_bytes(tls._verdict_digest(spec, files))
    store.chmod(0o600)
    os.chmod(tmp_path, 0o755)
    assert tls.trust_verified(str(store)) == 1
    assert tls.validate_listener(spec) == []  # trusted: not loaded
    key.write_bytes(key.read_bytes().replace(b"-----\n", b"-----\n\n", 1))  # same key, new bytes
    problems = tls.validate_listener(spec)
    assert len(problems) == 1 and "does not match" in problems[0]


def test_a_reload_trusts_the_store_inside_its_check_only_and_keeps_the_bytes_it_read(
    certs, tmp_path, verdicts
):
    """binder/reload.py checks the new file inside verdicts_trusted: a set the store vouches
    for (planted here for a key that does not match, to make the trust visible) is not
    loaded there; after the block every set is loaded again, and the files read inside stay
    for take_validated_files (the bytes the workers get)."""
    store = tmp_path / "tls-verified"
    spec = listener({"cert": certs["a"]["cert"], "key": certs["c"]["key"]})
    files = {p: Path(p).read_bytes() for p in (certs["a"]["cert"], certs["c"]["key"])}
    store.write_bytes(tls._verdict_digest(spec, files))
    store.chmod(0o600)
    os.chmod(tmp_path, 0o755)
    with tls.verdicts_trusted(str(store)):
        assert tls.validate_listener(spec) == []
    assert set(tls.take_validated_files()) == set(files)
    assert "does not match" in tls.validate_listener(spec)[0]
    with tls.verdicts_trusted(str(tmp_path / "missing")):
        assert "does not match" in tls.validate_listener(spec)[0]


def test_a_verdict_made_by_another_nsproxy_python_or_openssl_is_not_trusted(
    certs, tmp_path, verdicts, monkeypatch
):
    """The store outlives upgrades (RuntimeDirectoryPreserve): a verdict counts only for the
    very maker (nsproxy version and rules, Python, OpenSSL version and library files)."""
    store = tmp_path / "tls-verified"
    spec = listener({"cert": certs["a"]["cert"], "key": certs["c"]["key"]})  # mismatched
    files = {p: Path(p).read_bytes() for p in (certs["a"]["cert"], certs["c"]["key"])}
    maker = tls._verdict_maker()
    assert tls.__version__.encode() in maker and b"libcrypto" in maker
    monkeypatch.setattr(tls, "_verdict_maker", lambda: maker.replace(b"verdict 2", b"verdict 1"))
    store.write_bytes(tls._verdict_digest(spec, files))
    monkeypatch.undo()
    store.chmod(0o600)
    os.chmod(tmp_path, 0o755)
    with tls.verdicts_trusted(str(store)):
        assert "does not match" in tls.validate_listener(spec)[0]


def test_a_reload_reads_the_store_only_when_it_validates_a_certificate_set(
    certs, tmp_path, verdicts, monkeypatch
):
    reads = []
    real = tls._read_store
    monkeypatch.setattr(tls, "_read_store", lambda path: reads.append(path) or real(path))
    with tls.verdicts_trusted(str(tmp_path / "store")):
        pass  # a reload that adds or changes no https listener
    assert reads == []
    with tls.verdicts_trusted(str(tmp_path / "store")):
        assert tls.validate_listener(listener(certs["a"])) == []
        assert tls.validate_listener(listener(certs["b"])) == []
    assert reads == [str(tmp_path / "store")]  # once per reload


@pytest.mark.parametrize("mode", [0o622, 0o660])
def test_a_store_others_could_write_is_ignored(certs, tmp_path, verdicts, mode):
    store = tmp_path / "tls-verified"
    cert, key = certs["a"]["cert"], certs["c"]["key"]  # a key that does not match
    spec = listener({"cert": cert, "key": key})
    files = {p: Path(p).read_bytes() for p in (cert, key)}
    store.write_bytes(tls._verdict_digest(spec, files))
    store.chmod(mode)
    assert tls.trust_verified(str(store)) == 0
    assert "does not match" in tls.validate_listener(spec)[0]
    store.chmod(0o600)
    os.chmod(tmp_path, 0o777)  # the folder too
    assert tls.trust_verified(str(store)) == 0


def test_contexts_without_a_handshake_for_a_whole_pass_are_dropped_and_made_again(certs):
    """worker.sweep.drop_tls: a pass every TLS_IDLE_PASS seconds (none at the first tick)
    drops the contexts no handshake used since the previous pass."""
    import types

    from nsproxy.worker import sweep
    from nsproxy.worker.apply import Served

    busy, idle = (tls.ServerContext(listener(certs[n])) for n in ("a", "b"))
    served = types.SimpleNamespace(ssl_contexts={1: busy, 2: idle}, next_tls_sweep=0.0)
    served.drop_idle_contexts = lambda: Served.drop_idle_contexts(served)
    busy.get(), idle.get()
    sweep.drop_tls(served, 1000.0, None)  # the first tick only schedules
    assert busy.built and idle.built and served.next_tls_sweep == 1000.0 + sweep.TLS_IDLE_PASS
    sweep.drop_tls(served, 1000.0 + sweep.TLS_IDLE_PASS, None)  # both used before: kept
    assert busy.built and idle.built and not busy.used
    busy.get()  # a handshake on one of them
    sweep.drop_tls(served, 1000.0 + 1.5 * sweep.TLS_IDLE_PASS, None)  # not due yet
    assert idle.built
    sweep.drop_tls(served, 1000.0 + 2 * sweep.TLS_IDLE_PASS, None)
    assert busy.built and not idle.built
    client = connect(client_context(), idle.get(), "b.example")  # made again when needed
    assert tls.certificate_names(client.getpeercert(binary_form=True)) == ["b.example"]


def _handshake_with_groups(context: ssl.SSLContext, groups: str) -> str | None:
    """A handshake over memory BIOs by a client offering only ``groups``: None when it
    completes, else the server's reason."""
    client = client_context()
    assert libssl.set_groups(client, groups), groups
    to_server, to_client, client_in, client_out = (ssl.MemoryBIO() for _ in range(4))
    ours = client.wrap_bio(client_in, client_out)
    theirs = context.wrap_bio(to_server, to_client, server_side=True)
    try:
        for _flight in range(4):
            with contextlib.suppress(ssl.SSLWantReadError):
                ours.do_handshake()
            to_server.write(client_out.read())
            with contextlib.suppress(ssl.SSLWantReadError):
                theirs.do_handshake()
                return None
            client_in.write(to_client.read())
    except ssl.SSLError as exc:
        return exc.reason
    return "unfinished"


@pytest.mark.parametrize("groups", ["X25519", "P-256"])
def test_the_key_exchanges_every_client_has_are_served(certs, groups):
    assert _handshake_with_groups(tls.build_server_context(listener(certs["b"])), groups) is None


@pytest.mark.parametrize("groups", ["ffdhe2048", "ffdhe8192", "P-384", "P-521", "X448"])
def test_costlier_key_exchanges_a_client_could_choose_are_refused(certs, groups):
    """OpenSSL 3.0 accepts them by default and the client picks: one ffdhe8192 exchange held
    the worker's loop about 140 ms, for every tenant."""
    reason = _handshake_with_groups(tls.build_server_context(listener(certs["b"])), groups)
    assert reason == "NO_SUITABLE_KEY_SHARE", reason
