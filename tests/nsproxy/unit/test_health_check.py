"""The health checks' pure parts: the rise/fall state machine, the shared table, the status
sentence, and a probe against a real socket that sends arbitrary bytes."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import threading
import types

from hypothesis import given, settings
from hypothesis import strategies as st

from nsproxy import health_check, health_table
from nsproxy.config import HealthCheck, UpstreamSpec
from nsproxy.health_check import CheckState, describe_expected
from nsproxy.health_table import HealthTable
from nsproxy.worker.stock import StockError

TABLE = HealthTable.create()  # for the probes (a memfd and its mapping, once)
results = st.lists(st.one_of(st.none(), st.sampled_from(["connect refused", "status 503"])))


@given(results, st.integers(1, 5), st.integers(1, 5))
def test_rise_and_fall_count_results_in_a_row(seq, rise, fall):
    state = CheckState()
    history = []
    for error in seq:
        was = state.down
        published = (state.down, state.error)
        changed = state.record(error, rise, fall)
        history.append(error)
        assert changed == ((state.down, state.error) != published)
        if state.down and not was:  # went down: the last ``fall`` results all failed
            assert len(history) >= fall and all(e is not None for e in history[-fall:])
            assert state.error == error
        if was and not state.down:  # came back: the last ``rise`` results all passed
            assert len(history) >= rise and all(e is None for e in history[-rise:])
        if error is None:
            assert not (state.down and not was)  # a success never marks a server down
        else:
            assert not (was and not state.down)  # a failure never brings it back
        assert (state.error is None) == (not state.down)  # the error shows only while down
        if state.down:
            assert state.error == next(e for e in reversed(history) if e is not None)
    # Enough equal results in a row always settle the state.
    for _ in range(max(rise, fall)):
        state.record("timeout after 1.0 s", rise, fall)
    assert state.down and state.error == "timeout after 1.0 s"
    for _ in range(rise):
        state.record(None, rise, fall)
    assert not state.down and state.error is None


def test_a_server_starts_up_and_the_first_failures_below_fall_keep_it_up():
    state = CheckState()
    assert not state.record("connect refused", 2, 3)
    assert not state.record("connect refused", 2, 3)
    assert not state.down
    assert state.record("connect refused", 2, 3) and state.down


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["publish", "remove"]),
            st.integers(0, 7),  # eight keys, all on two neighbouring slots: chains and gaps
            st.booleans(),
            st.text(max_size=200),
        ),
        max_size=60,
    )
)
@settings(max_examples=60)
def test_the_table_finds_what_was_published_through_collisions_and_removals(ops):
    table = HealthTable.create()
    try:
        keys = [2 + (i % 2) + health_table.ENTRIES * (i + 1) for i in range(8)]
        model: dict[int, tuple[bool, str | None]] = {}
        for op, i, down, error in ops:
            key = keys[i]
            if op == "publish":
                assert table.publish(key, down, error)
                model[key] = (down, error if down else None)
            else:
                table.remove(key)
                model.pop(key, None)
            for k in keys:
                got_down, got_error = table.lookup(k)
                want_down, want_error = model.get(k, (False, None))
                assert got_down == want_down
                if want_down:
                    limit = want_error.encode()[: health_table.ERROR_MAX]
                    assert got_error == limit.decode("utf-8", "replace")
                else:
                    assert got_error is None
        assert table.used == len(model)
    finally:
        table.map.close()
        os.close(table.fd)


def test_a_reader_sees_each_transition_in_the_state_word():
    table = HealthTable.create()
    key = health_table.key_of("t", "app", b"digest", "127.0.0.1:80")
    table.publish(key, True, "connect refused")
    slot = table.find(key)
    first = table.state(slot)
    table.publish(key, True, "status 503, expected 2xx")  # still down: same transition
    assert table.state(slot) == first and table.error(slot) == "status 503, expected 2xx"
    table.publish(key, False, None)
    up = table.state(slot)
    assert not up & 1 and up != 0 and table.error(slot) is None
    table.publish(key, True, "x")
    assert table.state(slot) & 1 and table.state(slot) != first


def test_a_changed_upstream_has_other_keys():
    one = health_table.key_of("t", "app", b"one", "127.0.0.1:80")
    assert one == health_table.key_of("t", "app", b"one", "127.0.0.1:80")
    assert one != health_table.key_of("t", "app", b"two", "127.0.0.1:80")
    assert one != health_table.key_of("u", "app", b"one", "127.0.0.1:80")


def test_expected_statuses_read_as_written():
    assert describe_expected(frozenset(range(200, 300))) == "2xx"
    assert describe_expected(frozenset({200, 204})) == "200, 204"
    assert describe_expected(frozenset({*range(200, 300), 301})) == "2xx, 301"
    assert describe_expected(frozenset({*range(300, 400), 200})) == "200, 3xx"


def _probe(answer: bytes, timeout: float = 0.3) -> tuple[str | None, bytes]:
    """One http check against a real loopback server that answers ``answer`` and keeps the
    connection open; (the check's result, the request the server received)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    got = bytearray()

    def serve():
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(2)
            try:
                while b"\r\n\r\n" not in got:
                    got.extend(conn.recv(4096))
                conn.sendall(answer)
                conn.recv(1)  # hold the connection until the checker closes it
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    check = HealthCheck("http", 1, timeout, 1, 1, "/h\u00e9", None, frozenset({200}))
    spec = UpstreamSpec("app", None, [("127.0.0.1", port)], b"d", check)

    async def run():
        prober = health_check.Prober(asyncio.get_running_loop(), None, TABLE)
        one = health_check.Check(prober, "t", spec)  # not started: no task of its own
        return await one.probe(("127.0.0.1", port))

    try:
        return asyncio.run(run()), bytes(got)
    finally:
        listener.close()
        thread.join(3)


@given(st.binary(max_size=3 * health_check.MAX_HEAD))
@settings(max_examples=25, deadline=None)
def test_any_answer_gives_a_sentence_or_a_pass_within_the_timeout(answer):
    result, _ = _probe(answer, timeout=0.1)
    head_ends = b"\r\n\r\n" in answer[: health_check.MAX_HEAD] or b"\n\n" in answer
    if result is None:  # a pass needs a 200 status line and a complete head
        assert answer.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")) and head_ends
    else:
        assert isinstance(result, str) and 0 < len(result) < 100


def test_the_check_request_and_its_answers():
    result, request = _probe(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
    assert result is None
    assert request.startswith(b"GET /h%C3%A9 HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nConnection: close\r\n" in request
    assert _probe(b"HTTP/1.1 503 No\r\n\r\n")[0] == "status 503, expected 200"
    assert _probe(b"HTTP/1.1 200 OK\r\nX: endless\r\n")[0] == "timeout after 0.3 s"
    assert _probe(b"SSH-2.0-x\r\n\r\n")[0] == "no HTTP/1.x status line in the response"
    long = b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 2000
    assert _probe(long)[0] == f"response head longer than {health_check.MAX_HEAD} bytes"


PROBE_WITHOUT_FDS = textwrap.dedent(
    """
    import asyncio, resource, socket
    from nsproxy import health_check
    from nsproxy.config import HealthCheck, UpstreamSpec
    from nsproxy.health_table import HealthTable, key_of

    resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    table = HealthTable.create()
    server = socket.create_server(("127.0.0.1", 0), backlog=128)  # answers every connect
    port = server.getsockname()[1]
    check = HealthCheck("tcp", 0.2, 0.1, 1, 1, "/", None, frozenset({200}))
    spec = UpstreamSpec("app", None, [("127.0.0.1", port)], b"d", check)
    key = key_of("victim", "app", b"d", f"127.0.0.1:{port}")

    async def run():
        prober = health_check.Prober(asyncio.get_running_loop(), None, table)
        health_check.Check(prober, "victim", spec).start()  # probes every 0.2 s, fall 1
        await asyncio.sleep(0.5)
        print("with fds:", table.lookup(key))
        hog = []  # the worker's descriptors are used up (other tenants' connections, stock)
        try:
            while True:
                hog.append(socket.socket())
        except OSError:
            pass
        await asyncio.sleep(0.5)
        print("without:", table.lookup(key))

    asyncio.run(run())
    """
)


def test_a_probe_without_a_descriptor_leaves_an_answering_server_up():
    """The server answers throughout; only the prober (worker 0) runs out of descriptors
    (EMFILE). A check that could not make its socket says nothing about the server: it must
    not count toward ``fall`` (else worker 0's own shortage marks servers down everywhere)."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE_WITHOUT_FDS], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "with fds: (False, None)", proc.stdout
    assert lines[1] == "without: (False, None)", proc.stdout
    assert "could not start: Too many open files" in proc.stderr, proc.stderr


class _Stockless(health_check.Prober):
    """A prober whose socket stock fails the way ``error`` says (the binder's real answers)."""

    def __init__(self, loop, error: StockError):
        super().__init__(loop, None, TABLE)
        self.failure = error

    async def socket(self, tenant, spec, family):
        raise self.failure


def test_the_binders_limits_are_unknown_and_a_missing_namespace_is_a_failure():
    check = HealthCheck("tcp", 1, 0.1, 1, 1, "/", None, frozenset({200}))
    spec = UpstreamSpec("app", "t1", [("127.0.0.1", 9)], b"d", check)

    async def probe(error):
        prober = _Stockless(asyncio.get_running_loop(), error)
        return await health_check.Check(prober, "t", spec).probe(("127.0.0.1", 9))

    for limit in (
        "too many sockets asked for",
        "the binder did not answer: timeout",
        "no socket in the namespace of upstream app",
    ):
        assert asyncio.run(probe(StockError(limit))) is health_check.UNKNOWN, limit
    missing = StockError("network namespace t1 does not exist", missing=True)
    assert asyncio.run(probe(missing)) == (
        "upstream namespace unavailable: network namespace t1 does not exist"
    )


class _CountingTable(HealthTable):
    """The real shared table, counting the lookups a pick makes."""

    lookups = 0

    def find(self, key, hint=-1):
        self.lookups += 1
        return super().find(key, hint)


def test_a_pick_reads_the_health_of_servers_up_to_the_first_usable_one():
    """An upstream of 1024 checked servers: a request's pick must not look every one up in the
    shared table; it reads them in round-robin order and stops at the first usable one."""
    from nsproxy.upstream import Upstream

    table = _CountingTable.create()
    try:
        check = HealthCheck("tcp", 1, 0.5, 1, 1, "/", None, frozenset({200}))
        servers = [(f"10.0.{i // 256}.{i % 256}", 80) for i in range(1024)]
        spec = UpstreamSpec("app", None, servers, b"d", check)
        up = Upstream(spec, "t", types.SimpleNamespace(health=table))
        for step in range(100):
            assert up.take()[0].address == servers[step]
        assert table.lookups == 100
        for server in up.servers[101:110]:  # the checks marked these down
            table.publish(server.check_key, True, "connect refused")
        table.lookups = 0
        picked = [up.take()[0].address for step in range(3)]
        assert picked == [servers[100], servers[110], servers[110]]
        # 100 (up); 101..109 (down) and 110; 102..109 and 110: not the other 1000 servers
        assert table.lookups == 1 + 10 + 9
    finally:
        table.map.close()
        os.close(table.fd)
