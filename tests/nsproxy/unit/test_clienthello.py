"""SNI/ALPN peeking from raw ClientHellos: real hellos from Python ssl and openssl s_client,
split over reads and records, crafted malformations, and random truncation/corruption."""

from __future__ import annotations

import random
import shutil
import socket
import ssl
import subprocess
import threading

import pytest

from nsproxy.clienthello import MAX_RECORDS, NEED_MORE, ClientHello, peek_client_hello


def python_hello(server_name=None, alpn=None, max_version=None) -> bytes:
    """The first flight of a real Python/OpenSSL client, captured through a MemoryBIO."""
    ctx = ssl.create_default_context()
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if max_version:
        ctx.maximum_version = max_version
    if server_name is None:
        ctx.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def openssl_hello(*args: str) -> bytes:
    """The first bytes `openssl s_client` sends, caught by a loopback listener."""
    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command line tool")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    got = bytearray()

    def serve():
        conn, _ = listener.accept()
        conn.settimeout(10)
        with conn:
            while peek_client_hello(got) is NEED_MORE:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                got.extend(chunk)

    thread = threading.Thread(target=serve)
    thread.start()
    subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    thread.join(10)
    listener.close()
    return bytes(got)


def records(message: bytes, size: int) -> bytes:
    """Re-split the handshake bytes of a single-record hello into records of ``size``."""
    body = message[5:]
    out = b""
    for i in range(0, len(body), size):
        chunk = body[i : i + size]
        out += b"\x16\x03\x01" + len(chunk).to_bytes(2, "big") + chunk
    return out


def craft(extensions: bytes | None, version=b"\x03\x03") -> bytes:
    """A hand-built ClientHello record with the given raw extensions block."""
    body = version + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    if extensions is not None:
        body += len(extensions).to_bytes(2, "big") + extensions
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs


def sni_ext(*names: bytes, name_type=0) -> bytes:
    entries = b"".join(bytes([name_type]) + len(n).to_bytes(2, "big") + n for n in names)
    data = len(entries).to_bytes(2, "big") + entries
    return b"\x00\x00" + len(data).to_bytes(2, "big") + data


def test_python_client_hello_gives_sni_lowercased_and_alpn():
    hello = python_hello("Api.Tenant-A.Example", alpn=["h2", "http/1.1"])
    assert peek_client_hello(hello) == ClientHello("api.tenant-a.example", ("h2", "http/1.1"))


def test_tls12_only_client_hello_is_read_too():
    hello = python_hello("db.example", max_version=ssl.TLSVersion.TLSv1_2)
    assert peek_client_hello(hello) == ClientHello("db.example", ())


def test_hello_without_server_name_has_no_sni():
    assert peek_client_hello(python_hello(None)) == ClientHello(None, ())


def test_openssl_s_client_hello_gives_its_servername_and_alpn():
    hello = openssl_hello("-servername", "shop.tenant-b.example", "-alpn", "h2,http/1.1")
    assert peek_client_hello(hello) == ClientHello("shop.tenant-b.example", ("h2", "http/1.1"))


def test_openssl_s_client_tls12_hello_gives_its_servername():
    hello = openssl_hello("-servername", "x.example", "-tls1_2")
    assert peek_client_hello(hello).sni == "x.example"


def test_every_proper_prefix_asks_for_more_data():
    hello = python_hello("a.example", alpn=["http/1.1"])
    for n in range(len(hello)):
        assert peek_client_hello(hello[:n]) is NEED_MORE, n
    assert peek_client_hello(hello).sni == "a.example"


def test_trailing_bytes_after_the_hello_are_ignored():
    hello = python_hello("a.example")
    assert peek_client_hello(hello + b"\x17\x03\x03\x00\x05hello").sni == "a.example"


@pytest.mark.parametrize("size", [9, 16, 100, 300])
def test_hello_fragmented_over_many_records_is_reassembled(size):
    hello = python_hello("frag.example", alpn=["x"])
    split = records(hello, size)
    assert peek_client_hello(split) == ClientHello("frag.example", ("x",))
    for n in range(0, len(split), max(1, len(split) // 97)):
        assert peek_client_hello(split[:n]) is NEED_MORE, n


def test_hello_split_into_more_records_than_the_cap_is_refused():
    hello = craft(sni_ext(b"frag.example"))
    assert MAX_RECORDS < len(hello) - 5 <= 2 * MAX_RECORDS
    one_byte_records = records(hello, 1)
    assert peek_client_hello(one_byte_records[: 6 * MAX_RECORDS]) is NEED_MORE
    assert peek_client_hello(one_byte_records) is None
    assert peek_client_hello(records(hello, 2)).sni == "frag.example"


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\x80\x2e\x01\x03\x01",  # SSLv2-style hello
        b"\x17\x03\x03\x00\x10" + bytes(16),  # application data, not handshake
        b"\x16\x02\x00",  # SSL 2 version in a handshake record
        b"\x16\x03\x01\x00\x00",  # empty record
        b"\x16\x03\x01\x40\x01",  # record longer than 2^14
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # ServerHello, not ClientHello
        b"\x16\x03\x01\x00\x04\x01\xff\xff\xff",  # hello claims 16 MB
    ],
)
def test_non_tls_and_impossible_starts_are_rejected(data):
    assert peek_client_hello(data) is None


def test_partial_record_with_a_plausible_start_asks_for_more():
    assert peek_client_hello(b"\x16\x03\x01\x00\x08\x01\x00") is NEED_MORE


def test_crafted_hello_without_extensions_has_no_sni():
    assert peek_client_hello(craft(None)) == ClientHello(None, ())


def test_crafted_hello_with_sni_is_read():
    assert peek_client_hello(craft(sni_ext(b"crafted.example"))).sni == "crafted.example"


@pytest.mark.parametrize(
    "extensions",
    [
        sni_ext(b"a.example") + sni_ext(b"b.example"),  # the same extension twice
        sni_ext(b"a.example", b"b.example"),  # two host names
        sni_ext(b""),  # empty host name
        sni_ext(b"bad\x00name"),  # NUL in the name
        sni_ext(b"caf\xc3\xa9.example"),  # raw UTF-8 rather than an A-label
        sni_ext(b"a" * 254),  # longer than a DNS name can be
        b"\x00\x00\x00\x05\x00\x09\x00\x00\x05",  # name list longer than the extension
        b"\x00\x00\x00\x10" + bytes(3),  # extension longer than the block
        b"\x00\x10\x00\x03\x00\x01\x00",  # ALPN with an empty protocol name
        b"\x00",  # one stray byte
    ],
)
def test_malformed_extensions_are_rejected(extensions):
    assert peek_client_hello(craft(extensions)) is None


def test_bad_hello_versions_and_trailing_garbage_inside_message_are_rejected():
    assert peek_client_hello(craft(sni_ext(b"a.example"), version=b"\x02\x00")) is None
    hello = bytearray(craft(sni_ext(b"a.example")))
    hello += b"\x00"  # one byte past the extensions inside the message
    hello[3:5] = (len(hello) - 5).to_bytes(2, "big")
    hello[6:9] = (len(hello) - 9).to_bytes(3, "big")
    assert peek_client_hello(bytes(hello)) is None


def test_other_name_types_are_skipped():
    assert peek_client_hello(craft(sni_ext(b"x", name_type=7))) == ClientHello(None, ())


def test_random_truncations_and_corruptions_never_raise():
    rng = random.Random(20261122)
    samples = [
        python_hello("fuzz.example", alpn=["h2", "http/1.1"]),
        records(python_hello("fuzz.example"), 50),
        craft(sni_ext(b"crafted.example")),
    ]
    outcomes = set()
    for _ in range(4000):
        data = bytearray(rng.choice(samples))
        for _ in range(rng.randint(0, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = data[: rng.randint(0, len(data))]
        result = peek_client_hello(bytes(data))
        assert result is None or result is NEED_MORE or isinstance(result, ClientHello)
        outcomes.add(type(result).__name__)
    for _ in range(1000):
        garbage = bytes(rng.randrange(256) for _ in range(rng.randint(0, 80)))
        result = peek_client_hello(b"\x16\x03\x01" + garbage)
        assert result is None or result is NEED_MORE or isinstance(result, ClientHello)
    assert {"NoneType", "_NeedMore", "ClientHello"} <= outcomes
