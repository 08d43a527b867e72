"""TLS termination for ``https`` listeners: config checks and the server SSLContext.

A listener has a list of certificates; the client's SNI picks the one whose DNS names
(subjectAltName, or the subject CN when the certificate has no DNS SAN, RFC 6125 6.4.4)
match, exact names before ``*.`` wildcards; the first certificate is the default. This is
the Python form of HAProxy's ``crt-list``: one SSLContext per certificate, and an
``sni_callback`` on the listener's context that swaps ``ssl_object.context``.

Reading the names from a certificate: the standard library has no public call for a
certificate that is not a peer's (``get_ca_certs`` skips non-CA certificates, and
``ssl._ssl._test_decode_cert`` is private), and the ``cryptography`` package costs about
11 MB of RSS and 55 ms of import here, a third of the daemon's memory budget. So this
module walks the few DER fields it needs (subject CN, subjectAltName dNSName) itself, only
after OpenSSL has accepted the very same file through ``load_cert_chain``, and with every
length checked. The unit tests compare its answers with ``openssl x509`` on real
certificates.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import re
import ssl
import stat
import sys
from collections.abc import Mapping

from nsproxy import __version__, handshake_cost, libssl, tls_tickets

__all__ = [
    "ALPN",
    "CIPHERS_TLS12",
    "MIN_VERSIONS",
    "TLSConfigError",
    "build_server_context",
    "certificate_files_state",
    "certificate_names",
    "certificate_paths",
    "file_identity",
    "files_unchanged",
    "forget_verified",
    "take_validated_files",
    "record_verified",
    "save_verified",
    "trust_verified",
    "verdicts_trusted",
    "settings_key",
    "validate_listener",
    "ServerContext",
]

#: Allowed ``tls.min_version`` values. TLS 1.0 and 1.1 are never offered.
MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

#: TLS 1.2 suites: forward secret AEAD only (TLS 1.3 suites are OpenSSL's fixed AEAD set).
CIPHERS_TLS12 = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!SHA1:!DSS"

#: The HTTP layer speaks HTTP/1.1 only; a client offering h2 alone gets no ALPN answer.
ALPN = ["http/1.1"]

_TLS_KEYS = {"certificates", "min_version"}
_CERT_KEYS = {"cert", "key"}
#: The certificate blocks OpenSSL's PEM_read_bio_X509_AUX takes (what load_cert_chain serves):
#: "CERTIFICATE", "X509 CERTIFICATE" and "TRUSTED CERTIFICATE" (crypto/pem/pem_lib.c).
_PEM_CERT_BEGIN = re.compile(rb"-----BEGIN ((?:X509 |TRUSTED )?CERTIFICATE)-----")
_PEM_KEY = re.compile(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")
_MAX_FILE_BYTES = 1024 * 1024  # a certificate chain or key file larger than this is refused

log = logging.getLogger("nsproxy")


class TLSConfigError(ValueError):
    """The listener's TLS settings cannot be served; ``problems`` lists "field: message"."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


class _EncryptedKey(Exception):
    pass


def _no_password():
    # Without a password callback OpenSSL would prompt on the terminal and block the daemon.
    raise _EncryptedKey


# -- certificate names ------------------------------------------------------------------


class _DERError(ValueError):
    pass


def _der_item(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER item at ``pos``."""
    if pos + 2 > end:
        raise _DERError("truncated")
    tag, first = buf[pos], buf[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > end:
            raise _DERError("bad length")
        length = int.from_bytes(buf[pos : pos + count], "big")
        pos += count
    if pos + length > end:
        raise _DERError("overrun")
    return tag, pos, pos + length


def _der_children(buf: bytes, start: int, end: int):
    pos = start
    while pos < end:
        tag, cstart, cend = _der_item(buf, pos, end)
        yield tag, cstart, cend
        pos = cend


_SEQUENCE, _SET, _OID, _OCTETS = 0x30, 0x31, 0x06, 0x04
_OID_CN = bytes.fromhex("550403")  # 2.5.4.3
_OID_SAN = bytes.fromhex("551d11")  # 2.5.29.17
_DNS_NAME = 0x82  # GeneralName [2] IMPLICIT IA5String


def _tbs_fields(der: bytes) -> list[tuple[int, int, int]]:
    """The fields of a DER certificate's tbsCertificate (RFC 5280 section 4.1) after the
    version: serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, then
    the optional ones. Raises ValueError if the DER is not a certificate."""
    tag, start, end = _der_item(der, 0, len(der))
    if tag != _SEQUENCE:
        raise _DERError("not a SEQUENCE")
    tag, start, end = _der_item(der, start, end)  # tbsCertificate
    if tag != _SEQUENCE:
        raise _DERError("no tbsCertificate")
    fields = list(_der_children(der, start, end))
    if fields and fields[0][0] == 0xA0:  # explicit version
        fields = fields[1:]
    if len(fields) < 6 or fields[4][0] != _SEQUENCE or fields[5][0] != _SEQUENCE:
        raise _DERError("no subject or subjectPublicKeyInfo")
    return fields


#: Public key algorithms (RFC 5280 SubjectPublicKeyInfo) a TLS 1.2 and 1.3 handshake can use
#: with the serving settings (CIPHERS_TLS12; TLS 1.3 signature schemes, RFC 8446 section
#: 4.2.3), by the DER bytes of their OID. ECDSA needs one of the curves TLS 1.3 signs with.
_SERVABLE_KEYS = {
    bytes.fromhex("2a864886f70d010101"): "RSA",  # 1.2.840.113549.1.1.1 rsaEncryption
    bytes.fromhex("2a864886f70d01010a"): "RSA-PSS",  # 1.2.840.113549.1.1.10 (RFC 4055)
    bytes.fromhex("2b6570"): "Ed25519",  # 1.3.101.112 (RFC 8410)
    bytes.fromhex("2b6571"): "Ed448",  # 1.3.101.113
}
_EC_KEY = bytes.fromhex("2a8648ce3d0201")  # 1.2.840.10045.2.1 id-ecPublicKey (RFC 5480)
_SERVABLE_CURVES = {
    bytes.fromhex("2a8648ce3d030107"): "P-256",  # 1.2.840.10045.3.1.7
    bytes.fromhex("2b81040022"): "P-384",  # 1.3.132.0.34
    bytes.fromhex("2b81040023"): "P-521",  # 1.3.132.0.35
}
_OTHER_KEYS = {  # only to name them in a refusal
    bytes.fromhex("2a8648ce380401"): "a DSA key",  # 1.2.840.10040.4.1
    bytes.fromhex("2b656e"): "an X25519 key",  # 1.3.101.110
    bytes.fromhex("2b656f"): "an X448 key",  # 1.3.101.111
}
SERVABLE_KEYS_TEXT = "RSA, RSA-PSS, ECDSA on P-256, P-384 or P-521, Ed25519 or Ed448"


#: The longest OID named in dotted decimal: real ones are under 30 bytes, and decoding one is
#: quadratic in its length (an OID of 100 kB from a certificate file took a second).
_MAX_OID_BYTES = 64


def _dotted(oid: bytes) -> str:
    """An OID's DER content as dotted decimal (X.690 section 8.19); one longer than
    :data:`_MAX_OID_BYTES` by its length only."""
    if not oid:
        return "?"
    if len(oid) > _MAX_OID_BYTES:
        return f"(an OID of {len(oid)} bytes)"
    parts, value = [], 0
    for byte in oid[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(str(value))
            value = 0
    first = oid[0]
    head = [str(min(first // 40, 2)), str(first - 40 * min(first // 40, 2))]
    return ".".join(head + parts)


#: The largest RSA modulus served, in bits. Every full handshake signs with the key on the
#: worker's one loop, which every tenant of the worker shares, and the cost grows with the
#: cube of the size: a signature takes 4.3 ms at 4096 bits, 47 ms at 7680 and 200 ms at 15360
#: (``openssl speed``, OpenSSL 3.0, a 2-vCPU AMD EPYC guest). 4096 is also the largest RSA
#: key the public CAs issue for (Let's Encrypt: 2048, 3072 or 4096).
MAX_RSA_BITS = 4096
_RSA_KEYS = {b for b, name in _SERVABLE_KEYS.items() if name.startswith("RSA")}
_BIT_STRING, _INTEGER = 0x03, 0x02


def public_key(der: bytes) -> tuple[bytes, str | None]:
    """(kind, problem) for a DER certificate's subjectPublicKeyInfo (RFC 5280 section 4.1).

    ``kind``: what a handshake's cost depends on, its AlgorithmIdentifier (algorithm and
    curve) and the size of the subjectPublicKeyInfo (RSA's modulus size), as bytes to key a
    table with (handshake_cost.py). ``problem``: why no handshake can or may use the key,
    as the end of a sentence that starts with the certificate's path ("has a DSA key, ..."),
    or None. Raises ValueError if the DER is not a certificate."""
    spki = _tbs_fields(der)[5]
    fields = list(_der_children(der, spki[1], spki[2]))
    if len(fields) != 2 or fields[0][0] != _SEQUENCE or fields[1][0] != _BIT_STRING:
        raise _DERError("bad subjectPublicKeyInfo")
    (_, start, end), bits = fields
    kind = der[start:end] + b"/%d" % (spki[2] - spki[1])
    parts = list(_der_children(der, start, end))
    if not parts or parts[0][0] != _OID:
        raise _DERError("bad subjectPublicKeyInfo")
    algorithm = der[parts[0][1] : parts[0][2]]
    if algorithm in _RSA_KEYS:
        size = _rsa_modulus_bits(der, bits)
        if size > MAX_RSA_BITS:
            return kind, (
                f"has an RSA key of {size} bits: at most {MAX_RSA_BITS} are served (each full "
                "handshake signs with it on the loop every tenant of the worker shares)"
            )
        return kind, None
    if algorithm in _SERVABLE_KEYS:
        return kind, None
    if algorithm == _EC_KEY:
        if len(parts) < 2 or parts[1][0] != _OID:
            what = "an ECDSA key with explicit curve parameters"
        else:
            curve = der[parts[1][1] : parts[1][2]]
            if curve in _SERVABLE_CURVES:
                return kind, None
            what = f"an ECDSA key on curve {_dotted(curve)}"
    else:
        what = _OTHER_KEYS.get(algorithm, f"a key of type {_dotted(algorithm)}")
    return kind, (
        f"has {what}, which no handshake with nsproxy's TLS settings can use (allowed: "
        f"{SERVABLE_KEYS_TEXT})"
    )


def _rsa_modulus_bits(der: bytes, bits: tuple[int, int, int]) -> int:
    """The size of the modulus in an RSA subjectPublicKey BIT STRING (RFC 8017 A.1.1:
    RSAPublicKey, a SEQUENCE of the modulus and the exponent INTEGERs)."""
    _, start, end = bits
    if start >= end or der[start] != 0:  # the count of unused bits: none in a DER key
        raise _DERError("bad RSA public key")
    tag, start, end = _der_item(der, start + 1, end)
    if tag != _SEQUENCE:
        raise _DERError("bad RSA public key")
    tag, start, end = _der_item(der, start, end)
    if tag != _INTEGER:
        raise _DERError("bad RSA public key")
    return int.from_bytes(der[start:end], "big").bit_length()


#: A name SNI can select (RFC 6066 3: an ASCII host name, IDNs as A-labels; RFC 6125 6.4.3: a
#: wildcard only as the whole left-most label). Others ('*', '*.*.example', a U-label, which a
#: client never sends) are left out of the selection tables.
_SELECTABLE = re.compile(
    r"(\*\.)?[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*"
)


def certificate_names(der: bytes) -> list[str]:
    """The DNS names a DER certificate serves: its SAN dNSNames, else its subject CNs.

    Lower case, in certificate order. Raises ValueError if the DER is not a certificate.
    """
    fields = _tbs_fields(der)
    common_names = []
    for rdn_tag, rs, re_ in _der_children(der, fields[4][1], fields[4][2]):
        if rdn_tag != _SET:
            raise _DERError("bad RDN")
        for atv_tag, as_, ae in _der_children(der, rs, re_):
            parts = list(_der_children(der, as_, ae)) if atv_tag == _SEQUENCE else []
            is_cn = len(parts) == 2 and der[parts[0][1] : parts[0][2]] == _OID_CN
            if is_cn and parts[0][0] == _OID:
                common_names.append(der[parts[1][1] : parts[1][2]].decode("utf-8", "replace"))
    dns_names = []
    for ext_tag, es, ee in fields[6:]:
        if ext_tag != 0xA3:
            continue
        seq_tag, ss, se = _der_item(der, es, ee)
        if seq_tag != _SEQUENCE:
            raise _DERError("bad extensions")
        for _t, xs, xe in _der_children(der, ss, se):
            parts = list(_der_children(der, xs, xe))
            if not parts or parts[0][0] != _OID or der[parts[0][1] : parts[0][2]] != _OID_SAN:
                continue
            if parts[-1][0] != _OCTETS:
                raise _DERError("bad subjectAltName")
            gn_tag, gs, ge = _der_item(der, parts[-1][1], parts[-1][2])
            if gn_tag != _SEQUENCE:
                raise _DERError("bad GeneralNames")
            for name_tag, ns, ne in _der_children(der, gs, ge):
                if name_tag == _DNS_NAME:
                    dns_names.append(der[ns:ne].decode("ascii", "replace"))
    names = dns_names or common_names
    return [n.lower().rstrip(".") for n in names]


def read_certificate_file(path: str) -> tuple[tuple, bytes]:
    """(file_identity, bytes) of a certificate or key file, read without blocking and bounded:
    the path is opened non-blocking (a FIFO's open would wait for a writer), and anything but a
    regular file of at most ``_MAX_FILE_BYTES`` is refused before a byte is read (/dev/zero,
    a device, a sparse file of gigabytes). Raises OSError, whose ``strerror`` says why."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if st.st_size > _MAX_FILE_BYTES:
            raise OSError(errno.EFBIG, f"larger than {_MAX_FILE_BYTES} bytes")
        chunks, size = [], 0
        while True:  # to the end, at most the limit (a file may grow while it is read)
            try:
                chunk = os.read(fd, min(max(st.st_size - size, 0) + 1, _MAX_FILE_BYTES + 1 - size))
            except BlockingIOError:  # a "regular" file of /proc that answers like a device
                raise OSError(errno.EAGAIN, "not readable as a regular file") from None
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > _MAX_FILE_BYTES:
                raise OSError(errno.EFBIG, f"larger than {_MAX_FILE_BYTES} bytes")
    finally:
        os.close(fd)
    return file_identity(st), b"".join(chunks)


def _read_file(path: str, files: Mapping | None) -> bytes:
    """The bytes of a certificate or key file: from disk (:func:`read_certificate_file`), or
    from ``files`` (path -> bytes, what the binder read for a worker, which cannot open them).
    Raises OSError."""
    if files is None:
        return read_certificate_file(path)[1]
    try:
        return files[path]
    except KeyError:
        raise FileNotFoundError(2, "not among the files the binder read") from None


@contextlib.contextmanager
def _openssl_path(data: bytes):
    """A path OpenSSL can load ``data`` from, the bytes already read and checked: a memfd of
    this process (``load_cert_chain`` takes paths only; the file's own path could name other
    bytes by now, or a FIFO)."""
    fd = os.memfd_create("nsproxy-tls", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _pem_certificate(text: bytes) -> bytes:
    """The DER bytes of the first PEM certificate block in ``text``."""
    # The first BEGIN, then its END by a plain search: linear in the file's size (one pattern
    # spanning both backtracked over every BEGIN: minutes for a megabyte of BEGIN lines).
    begin = _PEM_CERT_BEGIN.search(text)
    if not begin:
        raise _DERError("no PEM 'BEGIN CERTIFICATE' block")
    end = text.find(b"-----END " + begin.group(1) + b"-----", begin.end())
    if end < 0:
        raise _DERError(f"no END line for its first {begin.group(1).decode()} block")
    try:
        return base64.b64decode(b"".join(text[begin.end() : end].split()), validate=True)
    except ValueError as exc:
        raise _DERError("bad base64 in the PEM block") from exc


# -- validation -------------------------------------------------------------------------


def validate_listener(listener: Mapping) -> list[str]:
    """Problems with an https listener's ``tls`` settings, as "field: message" strings.

    Every certificate and key is loaded by OpenSSL exactly as :func:`build_server_context`
    loads it, into a bare context that is thrown away (the serving settings cannot fail).
    While this process trusts the verdicts ``nsproxy check`` stored (:func:`trust_verified`),
    a listener whose settings and file bytes (with this OpenSSL) were found valid there is
    not loaded again.
    """
    problems: list[str] = []
    files = _read_files(listener)
    if files is None:  # unreadable or too large: the full validation says why
        _load(listener, problems, serving=False)
        return problems
    contents = {path: data for path, (_state, data) in files.items()}
    verified = _trusted()
    digest = None if verified is None else _verdict_digest(listener, contents)
    if digest is not None and digest in verified:
        verdicts["trusted"] += 1
    else:
        _load(listener, problems, contents, serving=False)  # the very bytes read above
        verdicts["loaded"] += digest is not None
    if not problems:
        if digest is not None:
            verified.add(digest)
            _valid_now[digest] = None
        _validated_files.update(files)
    return problems


def take_validated_files() -> dict[str, tuple[tuple, bytes]]:
    """path -> (file_identity, bytes) of the files :func:`validate_listener`
    found valid since the last call: the binder serves these very bytes (no second read, and
    no file replaced between validation and reading)."""
    files = dict(_validated_files)
    _validated_files.clear()
    return files


# -- verdicts from ``nsproxy check`` for the ``run`` that follows it -----------------------

#: Where ``nsproxy check`` leaves the digests of the certificate sets it found valid. systemd
#: runs ``check`` as the unit's ExecStartPre, then ``run``: the binder then skips loading, at
#: start, every certificate set whose bytes ``check`` has just loaded (1.5 to 2 ms of CPU each
#: with OpenSSL 3.0, measured: 1.5 to 6 s for 1000 to 3000 tenants). A digest covers the tls
#: settings, every file's path and bytes, and the OpenSSL version, so it states a fact about
#: those bytes whichever config names them: one store serves every instance. Root's
#: ``RuntimeDirectory`` (mode 0755), which ``check`` never creates (without it nothing is
#: stored); a store anyone else could have written is ignored.
VERIFIED_STORE = "/run/nsproxy/tls-verified"
_VERIFIED_MAX = 100_000  # digests kept in the store (32 bytes each), the newest first
_DIGEST_BYTES = 32
_verified: set[bytes] | None = None  # trusted digests (None: trust nothing, load everything)
_pending_store: str | None = None  # a store to read into _verified at the first need
_valid_now: dict[bytes, None] = {}  # digests of the listeners validated in this process
_validated_files: dict[str, tuple[tuple, bytes]] = {}  # see take_validated_files
#: Certificate sets found valid in a store (not loaded) and loaded, while recording.
verdicts = {"trusted": 0, "loaded": 0}


def _read_files(listener: Mapping) -> dict[str, tuple[tuple, bytes]] | None:
    """path -> (state, bytes) of the listener's files; None if one cannot be read."""
    files = {}
    for path in certificate_paths(listener):
        try:
            files[path] = read_certificate_file(path)
        except OSError:
            return None
    return files


def _verdict_digest(listener: Mapping, files: Mapping) -> bytes:
    h = hashlib.sha256(_verdict_maker())
    h.update(settings_key(listener).encode())
    for path in certificate_paths(listener):
        data = files[path]
        h.update(b"\0%d\0" % len(data) + data)
    return h.digest()


def _read_store(path: str) -> list[bytes]:
    """The digests in the store, or [] when it is missing or not trustworthy: not a regular
    file owned by this user, or writable by anyone else, or in such a folder."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return []
    with os.fdopen(fd, "rb") as f:
        st, folder = os.fstat(f.fileno()), os.stat(os.path.dirname(path) or ".")
        for item in (st, folder):
            if item.st_uid != os.geteuid() or item.st_mode & 0o022:
                return []
        if not stat.S_ISREG(st.st_mode) or st.st_size > _VERIFIED_MAX * _DIGEST_BYTES:
            return []
        data = f.read()
    end = len(data) - len(data) % _DIGEST_BYTES
    return [data[i : i + _DIGEST_BYTES] for i in range(0, end, _DIGEST_BYTES)]


@functools.cache
def _verdict_maker() -> bytes:
    """What made a verdict, the start of its digest: a verdict stored by another nsproxy
    (other validation rules: this file's bytes), Python, OpenSSL version or OpenSSL library
    file (a distribution's security update keeps the version string) is not trusted."""
    try:
        with open(__file__, "rb") as f:
            rules = hashlib.sha256(f.read()).hexdigest()
    except OSError:
        rules = "?"
    return "\0".join(
        ["nsproxy tls verdict 2", __version__, sys.version, ssl.OPENSSL_VERSION, rules,
         *_openssl_files(), ""]
    ).encode()  # fmt: skip


def _openssl_files() -> list[str]:
    """path:file_identity of each libssl and libcrypto file this process maps."""
    seen = {}
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rpartition(" ")[2].strip()
                name = os.path.basename(path)
                if path not in seen and name.startswith(("libssl.so", "libcrypto.so")):
                    seen[path] = f"{path}:{file_identity(os.stat(path))}"
    except OSError:
        return ["?"]
    return sorted(seen.values())


def _trusted() -> set[bytes] | None:
    global _verified, _pending_store
    if _verified is None and _pending_store is not None:
        _verified = set(_read_store(_pending_store))
        _pending_store = None
    return _verified


def trust_verified(store: str = VERIFIED_STORE) -> int:
    """Trust the verdicts ``nsproxy check`` stored (the binder, for its start); the number
    read. Also records this process's verdicts, as :func:`record_verified` does."""
    global _verified
    forget_verified()
    _verified = set(_read_store(store))
    return len(_verified)


@contextlib.contextmanager
def verdicts_trusted(store: str = VERIFIED_STORE):
    """Trust the stored verdicts inside the block, and nothing after it: a reload's check.
    The collection's ``nsproxy_instance`` module runs ``nsproxy check`` on a new file before
    it asks for the reload (``systemctl reload`` alone does not: then a set is trusted only
    if an earlier check saw the very same bytes). Unlike :func:`forget_verified`, the files
    validated inside are left for :func:`take_validated_files`. On the benchmark's add of one
    tenant with its own RSA-2048 certificate, that tenant's load is 2 to 4 ms of CPU."""
    global _verified, _pending_store
    _verified, _pending_store = None, store  # read at the first certificate set (a reload
    try:  # that adds none reads nothing: the store may hold 100,000 digests, 16 ms to read)
        yield
    finally:
        _verified = _pending_store = None
        _valid_now.clear()


def record_verified() -> None:
    """Record the digests of what is validated from now on, for :func:`save_verified`
    (``nsproxy check``); nothing stored is trusted."""
    global _verified
    forget_verified()
    _verified = set()


def forget_verified() -> None:
    """Trust and record nothing any more (after the start: a reload validates what changed)."""
    global _verified, _pending_store
    _verified = _pending_store = None
    _valid_now.clear()
    _validated_files.clear()
    verdicts.update(trusted=0, loaded=0)


def save_verified(store: str = VERIFIED_STORE) -> bool:
    """Add the digests validated in this process to the store (the newest first, at most
    _VERIFIED_MAX); False if it cannot be written (its folder missing, not root: the daemon
    then validates every certificate by itself)."""
    if not _valid_now:
        return False
    digests = dict.fromkeys([*_valid_now, *_read_store(store)])
    try:  # the folder is the daemon's RuntimeDirectory: never made here
        tmp = f"{store}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(b"".join(list(digests)[:_VERIFIED_MAX]))
        os.replace(tmp, store)
    except OSError:
        return False
    return True


def _load(listener: Mapping, problems: list[str], files: Mapping | None = None, serving=True):
    """Check and load every certificate; returns [(names, context, key kind)] (``public_key``)
    or None on problems.

    ``serving``: the contexts get the serving settings (protocols, ciphers, ALPN, shared
    ticket keys); without it they are bare ``PROTOCOL_TLS_SERVER`` contexts, which saves about
    a fifth of a validation's CPU (set_ciphers, ALPN)."""
    tls = listener.get("tls")
    if not isinstance(tls, Mapping):
        problems.append("tls: required for an https listener, an object with 'certificates'")
        return None
    for key in sorted(set(tls) - _TLS_KEYS):
        problems.append(f"tls.{key}: unknown key (allowed: {', '.join(sorted(_TLS_KEYS))})")
    min_version = tls.get("min_version", "1.2")
    if min_version not in MIN_VERSIONS:
        problems.append(f"tls.min_version: {min_version!r} is not allowed (use '1.2' or '1.3')")
        min_version = "1.2"
    certificates = tls.get("certificates")
    if not isinstance(certificates, list) or not certificates:
        problems.append("tls.certificates: must be a non-empty list of {cert, key} objects")
        return None
    loaded = []
    # What a session is tied to (tls_tickets.apply): the settings and every certificate.
    identity = hashlib.sha256(settings_key(listener).encode() + b"\0")
    for i, entry in enumerate(certificates):
        field = f"tls.certificates[{i}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{field}: must be an object with 'cert' and 'key' file paths")
            continue
        for key in sorted(set(entry) - _CERT_KEYS):
            problems.append(f"{field}.{key}: unknown key (allowed: cert, key)")
        version = MIN_VERSIONS[min_version] if serving else None
        one = _load_certificate(field, entry, version, problems, files)
        if one is not None:
            names, context, cert_bytes, kind = one
            if i > 0 and not names:
                problems.append(
                    f"{field}.cert: has no DNS name SNI can select (subjectAltName or CN: an ASCII "
                    "host name, IDNs as A-labels, or '*.' and one), so it is never chosen; only "
                    "the first certificate may be nameless"
                )
            loaded.append((names, context, kind))
            identity.update(b"%d\0" % len(cert_bytes) + cert_bytes)
    if problems:
        return None
    if serving:
        for _names, context, _kind in loaded:
            tls_tickets.apply(context, identity.digest())
    return loaded


def _load_certificate(field: str, entry: Mapping, version, problems: list[str], files=None):
    cert, key = entry.get("cert"), entry.get("key")
    if not isinstance(cert, str) or not cert:
        problems.append(f"{field}.cert: required, the path of a PEM certificate (chain) file")
        return None
    if key is not None and (not isinstance(key, str) or not key):
        problems.append(f"{field}.key: must be the path of a PEM private key file")
        return None
    # Each file is read once (a worker's ``files`` is a pread from the binder's store).
    try:
        cert_bytes = _read_file(cert, files)
        der = _pem_certificate(cert_bytes)
        names = [n for n in certificate_names(der) if _SELECTABLE.fullmatch(n)]
        kind, unservable = public_key(der)
    except OSError as exc:
        problems.append(f"{field}.cert: cannot read {cert}: {exc.strerror or exc}")
        return None
    except _DERError as exc:
        problems.append(f"{field}.cert: {cert} is not a PEM X.509 certificate ({exc})")
        return None
    if unservable:
        problems.append(f"{field}.cert: {cert} {unservable}")
        return None
    key_path = key or cert
    key_field = f"{field}.key" if key else f"{field}.cert"
    try:
        key_bytes = _read_file(key, files) if key else cert_bytes
    except OSError as exc:
        problems.append(f"{key_field}: cannot read {key_path}: {exc.strerror or exc}")
        return None
    if _PEM_KEY.search(key_bytes) is None:
        problems.append(f"{key_field}: {key_path} has no PEM 'PRIVATE KEY' block")
        return None
    # validation: a bare context (the serving settings cannot fail)
    context = _new_context(version) if version else ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        with (
            _openssl_path(cert_bytes) as cert_path,
            _openssl_path(key_bytes) if key else contextlib.nullcontext() as kpath,
        ):
            context.load_cert_chain(cert_path, kpath, password=_no_password)
    except _EncryptedKey:
        problems.append(f"{key_field}: {key_path} is encrypted; nsproxy needs an unencrypted key")
        return None
    except ssl.SSLError as exc:
        # A key of another type than the certificate's lands in another slot and OpenSSL
        # then reports NO_CERTIFICATE_ASSIGNED; the same type reports KEY_VALUES_MISMATCH.
        if getattr(exc, "reason", None) in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):
            problems.append(f"{key_field}: the key in {key_path} does not match {cert}")
        else:
            problems.append(f"{field}: OpenSSL refused {cert} / {key_path}: {exc}")
        return None
    except OSError as exc:
        problems.append(f"{field}: cannot load {cert} / {key_path}: {exc.strerror or exc}")
        return None
    return names, context, cert_bytes, kind


#: Key exchange groups a handshake may use: the two a TLS 1.3 client must or should implement
#: (RFC 8446 section 9.1: secp256r1 MUST, X25519 SHOULD), Mozilla's "modern" set without P-384.
#: OpenSSL 3.0 also accepts by default P-384, P-521, X448 and the finite-field groups of RFC
#: 7919, and the client chooses: one ffdhe8192 key exchange costs the server about 140 ms of
#: CPU, held by the loop of every tenant (a reviewer's measure), P-384 about 2 ms on this
#: project's machines against 0.1 for X25519. handshake_cost.py charges the costlier of these.
GROUPS = "X25519:P-256"


def _new_context(version) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if not libssl.set_groups(context, GROUPS):
        context.set_ecdh_curve("prime256v1")  # one group, set by the ssl module itself
    context.minimum_version = version
    context.set_ciphers(CIPHERS_TLS12)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    context.options &= ~ssl.OP_NO_TICKET  # session tickets on (stateless resumption)
    context.set_alpn_protocols(ALPN)
    return context


# -- the listener's context -------------------------------------------------------------


def build_server_context(listener: Mapping, files: Mapping | None = None) -> ssl.SSLContext:
    """The listener's server SSLContext (TLS 1.2+, SNI picks the certificate).

    ``files`` (path -> bytes) supplies the certificate and key files instead of the disk (a
    worker gets them from the binder). Raises :class:`TLSConfigError` with the same messages
    as :func:`validate_listener`. With one certificate there is nothing to choose, so no
    ``sni_callback`` is installed (one Python call less in every handshake).
    """
    return _front(_load_or_raise(listener, files))


def _front(loaded: list) -> ssl.SSLContext:
    """The context a handshake starts with: the first certificate's, choosing among the
    others by SNI when there are others."""
    front = loaded[0][1]
    if len(loaded) > 1:
        front.sni_callback = _Selector(loaded)
    return front


class ServerContext:
    """An https listener's server context, made from its certificate files at the listener's
    first handshake, then kept until :meth:`drop` (sweep of idle contexts) or :meth:`rotate`.

    Why not at start: a context with its certificate costs about 1.5 to 2 ms of CPU to load
    with OpenSSL 3.0 (PEM decoders, measured) and, per worker, its memory; the binder has
    already loaded every certificate once to validate it (``nsproxy check``, start, reload),
    so a problem is reported there, never first at a client's handshake. Building again here
    from the very bytes the binder read is the same load and cannot fail differently (a
    failure is logged once and every handshake of that listener is refused; it is not retried
    until the next generation). ``files`` is the worker's path -> bytes mapping.

    Shared by every listener with the same tls settings and certificate files.
    ``handshake_cost`` is (full, resumed) seconds a handshake with its keys costs the worker
    (the costliest of its certificates: the client's SNI picks one), which the acceptor
    charges its tenant (handshake_cost.py); :data:`handshake_cost.DEFAULT` until it is made.
    """

    __slots__ = (
        "__weakref__",
        "_context",
        "_error",
        "files",
        "handshake_cost",
        "listener",
        "used",
    )

    def __init__(self, listener: Mapping, files: Mapping | None = None):
        self.listener = listener
        self.files = files
        self._context: ssl.SSLContext | None = None
        self._error: TLSConfigError | None = None
        self.used = False  # set by each handshake, cleared by the idle sweep
        self.handshake_cost = (handshake_cost.DEFAULT, handshake_cost.DEFAULT)

    @property
    def built(self) -> bool:
        return self._context is not None

    def get(self) -> ssl.SSLContext:
        """The context (built now if need be). Raises :class:`TLSConfigError`."""
        self.used = True
        context = self._context
        if context is None:
            if self._error is not None:
                raise self._error
            try:
                loaded = _load_or_raise(self.listener, self.files)
            except TLSConfigError as exc:
                self._error = exc
                log.error("https listener: certificates cannot be loaded: %s", exc)
                raise
            costs = [handshake_cost.of(ctx, kind) for _names, ctx, kind in loaded]
            self.handshake_cost = (max(c[0] for c in costs), max(c[1] for c in costs))
            self._context = context = _front(loaded)
        return context

    def rotate(self, listener: Mapping) -> None:
        """Serve ``listener``'s certificates (new files or bytes) from the next handshake on;
        open connections keep the context they were made with."""
        self.listener = listener
        self._context = None
        self._error = None
        self.handshake_cost = (handshake_cost.DEFAULT, handshake_cost.DEFAULT)  # other keys

    def drop(self) -> bool:
        """Forget the context (it is made again at the next handshake); True if one was
        built."""
        built = self._context is not None
        self._context = None
        return built


def _file_fields(listener: Mapping):
    """(field, path or None) for each ``cert`` and ``key`` of the listener's certificates."""
    tls = listener.get("tls") if isinstance(listener, Mapping) else None
    entries = tls.get("certificates") if isinstance(tls, Mapping) else None
    for entry in entries if isinstance(entries, list) else ():
        for key in ("cert", "key"):
            path = entry.get(key) if isinstance(entry, Mapping) else None
            yield key, path if isinstance(path, str) else None


def certificate_files_state(listener: Mapping, memo: dict | None = None) -> tuple:
    """A cheap fingerprint (inode, size, mtime) of the listener's certificate and key files.

    Compare two of them to know whether a listener's context must be made again (rotation).
    ``memo`` (path -> entry), shared by the calls of one pass over many listeners, stats each
    file once: 1000 tenants usually name the same two files.
    """
    if memo is None:
        memo = {}
    return tuple(
        (key, None) if path is None else _file_state(path, memo)
        for key, path in _file_fields(listener)
    )


def files_unchanged(state: tuple, memo: dict) -> bool:
    """Whether the files a :func:`certificate_files_state` fingerprint names are still as it
    says (each stat-ed once per ``memo``). A reload asks this of every kept https listener,
    so it reads the paths from the fingerprint instead of walking the listener again."""
    return all(entry[1] is None or _file_state(entry[0], memo) == entry for entry in state)


def file_identity(st: os.stat_result) -> tuple:
    """(device, inode, size, mtime_ns, ctime_ns): a file replaced or rewritten since. The
    ctime too, because ``touch -r`` or ``rsync --inplace -t`` can put an mtime back after a
    rewrite of the same size, and nothing but the kernel sets the ctime."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _file_state(path: str, memo: dict) -> tuple:
    entry = memo.get(path)
    if entry is None:
        try:
            st = os.stat(path)
            entry = (path, *file_identity(st))
        except OSError as exc:
            entry = (path, exc.errno)
        memo[path] = entry
    return entry


def certificate_paths(listener: Mapping) -> list[str]:
    """The certificate and key file paths a listener names (what a worker needs the bytes of)."""
    return [path for _, path in _file_fields(listener) if path]


def settings_key(listener: Mapping) -> str:
    """The listener's ``tls`` settings as one string: listeners with equal keys and equal
    :func:`certificate_files_state` can share one server context (and one validation)."""
    return json.dumps(listener.get("tls"), sort_keys=True, default=repr)


def _load_or_raise(listener: Mapping, files: Mapping | None = None) -> list:
    problems: list[str] = []
    loaded = _load(listener, problems, files)
    if loaded is None:
        raise TLSConfigError(problems)
    return loaded


class _Selector:
    """The sni_callback: picks the context whose certificate names the requested host.

    OpenSSL calls it for every handshake, with or without SNI, so the default can be
    replaced too. It runs inside the handshake and must not raise.
    """

    __slots__ = ("tables",)

    def __init__(self, loaded: list):
        self.use(loaded)

    def use(self, loaded: list) -> None:
        exact: dict[str, ssl.SSLContext] = {}
        wildcard: dict[str, ssl.SSLContext] = {}  # "example.com" for "*.example.com"
        for names, context, _kind in loaded:
            for name in names:
                if name.startswith("*."):
                    wildcard.setdefault(name[2:], context)
                elif "*" not in name:
                    exact.setdefault(name, context)
        self.tables = (loaded[0][1], exact, wildcard)  # one assignment: handshakes see all or none

    def __call__(self, ssl_object, server_name, _context):
        default, exact, wildcard = self.tables
        chosen = None
        if server_name:
            name = server_name.lower().rstrip(".")
            chosen = exact.get(name)
            if chosen is None:
                _label, dot, parent = name.partition(".")
                chosen = wildcard.get(parent) if dot else None
        if chosen is None:
            chosen = default
        if chosen is not ssl_object.context:
            ssl_object.context = chosen
        return None
