"""Smoke test of the benchmark: the real command at N=2 and 3, one-second loads, one repetition.

It proves the harness produces every figure for every contender variant (nsproxy, HAProxy with
nbthread 1 and 2, nginx-per-namespace, direct), with per-tenant certificates that the harness's
own check verifies by name (a tenant served another tenant's certificate fails the run), the
handshake counts, the target verdicts, the JSON, the tables and the charts; and that the
shared-certificate variant is labelled as such. nsproxy's ``workers: 1`` and ``2`` variants run
when the daemon accepts the key (the binder/worker daemon), probed with ``nsproxy check``.
No timing is asserted: the machine is shared and these figures are not the point here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.contenders import workers_unsupported  # noqa: E402
from bench.fields import METRICS_FIELDS, fields_for  # noqa: E402
from bench.loadgen import parse_s_time, parse_wrk  # noqa: E402

pytestmark = pytest.mark.sandbox

CHARTS = ("memory", "start-add", "throughput", "handshakes", "latency")
VERDICTS = {"MET", "MISSED", "NOT MEASURED"}
WORKERS_MISSING = workers_unsupported()
SMALL = ["--duration", "1", "--repeat", "1", "--settle", "0.2", "--add-window", "1"]


def _bench(out: Path, cache: Path, stamp: str, *extra: str) -> subprocess.CompletedProcess:
    argv = [
        str(REPO / ".venv" / "bin" / "python"),
        str(REPO / "bench" / "run.py"),
        *SMALL,
        "--handshake-seconds",
        "1",
        "--handshake-clients",
        "2",
        "--cert-cache",
        str(cache),
        "--out",
        str(out),
        "--stamp",
        stamp,
        *extra,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=REPO)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root: the benchmark creates network and mount namespaces")
    out = tmp_path_factory.mktemp("bench")
    workers = "default" if WORKERS_MISSING else "1,2"
    proc = _bench(
        out,
        out / "certs",
        "smoke",
        "--tenants",
        "2,3",
        "--load-tenants",
        "3",
        "--scaling-tenants",
        "3",
        "--nsproxy-workers",
        workers,
        "--metrics-tenants",
        "3",
        "--metrics-settle",
        "0.2",
    )
    return proc, out


@pytest.fixture(scope="module")
def result(smoke_run):
    proc, out = smoke_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "smoke.json").read_text())


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def test_benchmark_command_succeeds_and_writes_json(result):
    assert result["complete"] is True
    assert result["parameters"]["tenant_counts"] == [2, 3]
    assert result["parameters"]["load_tenants"] == [3]
    assert result["machine"]["cpu_model"] and result["machine"]["kernel"]
    tls = result["parameters"]["tls"]
    assert (tls["key_type"], tls["shared"]) == ("rsa2048", False)
    assert tls["label"] == "per-tenant RSA-2048 certificates"
    made = result["setup"]["certificates"]
    assert made["generated"] == 4 and made["reused"] == 0  # t0..t3: 3 tenants + the added one


def test_every_variant_produces_every_field(result):
    """Start and memory at N=2; everything (load, handshakes, add) at N=3; the 2-thread
    variants only at the scaling count 3, the direct path only where loads run."""
    expected = {"haproxy-t1", "haproxy-t2", "nginx", "direct"}
    expected |= {"nsproxy"} if WORKERS_MISSING else {"nsproxy-w1", "nsproxy-w2"}
    assert set(result["parameters"]["variants"]) == expected
    points = {(p["contender"], p["tenants"]): p for p in result["points"]}
    for (cid, n), point in points.items():
        is_proxy = point["kind"] != "direct"
        scaled = cid.endswith("2")
        if (n == 2 and (scaled or not is_proxy)) or point["status"] == "skipped":
            assert point["status"] == "skipped" and point["reason"], (cid, n)
            assert n == 2 and (scaled or not is_proxy), f"{cid} at {n}: {point['reason']}"
            continue
        assert point["status"] == "ok", f"{cid} at {n}: {point['status']}: {point['reason']}"
        fields = fields_for(is_proxy, with_load=n == 3)
        assert point["fields"] == fields
        sample = point["samples"][0]
        missing = [f for f in fields if not _is_number(sample.get(f))]
        assert not missing, f"{cid} at {n} lacks {missing}"
        unsummarised = [f for f in fields if f not in point["summary"]]
        assert not unsummarised, f"{cid} at {n}: summary lacks {unsummarised}"
        for f in fields:
            s = point["summary"][f]
            assert s["min"] <= s["median"] <= s["max"] and s["n"] == 1


def test_load_handshakes_and_add_really_happened(result):
    """Each load answered requests without errors, the proxy's own CPU was used, full
    handshakes were full and resumed ones resumed, and both clients ran through the add."""
    for point in result["points"]:
        if point["tenants"] != 3:
            continue
        sample = point["samples"][0]
        for v in ("http", "https"):
            assert sample[f"{v}_requests"] > 0, point["contender"]
            errors = (sample[f"{v}_socket_errors"], sample[f"{v}_non_2xx"])
            assert sample[f"{v}_failed"] == 0, f"{point['contender']} {v}: {errors}"
        if point["kind"] == "direct":
            continue
        assert sample["http_proxy_cpu_s"] > 0 and sample["https_proxy_cpu_s"] > 0
        assert sample["http_busiest_thread_cpu_s"] <= sample["http_proxy_cpu_s"] + 0.02
        assert sample["idle_pss_kb"] > 0 and sample["tls_idle_pss_kb"] > 0
        assert sample["idle_pss_kb"] <= sample["idle_rss_kb"]
        assert sample["hs_full_count"] > 0 and sample["hs_full_resumed"] == 0
        assert sample["hs_full_errors"] == 0 and sample["hs_resumed_errors"] == 0
        assert sample["hs_resumed_count"] > 0, point["contender"]
        # the session of the first connection is offered on every other one
        assert sample["hs_resumed_resumed"] >= sample["hs_resumed_count"] - 2, point["contender"]
        for prefix in ("", "tls_"):
            assert sample[f"{prefix}add_requests"] > 0 and sample[f"{prefix}add_loop_requests"] > 0
            # failures in the add are a figure (HAProxy's reload closes keep-alive connections
            # at times), not a test result; they must add up from what the clients reported
            errors = sum(sample[f"{prefix}add_socket_errors"].values())
            errors += sample[f"{prefix}add_non_2xx"] + sample[f"{prefix}add_loop_failed"]
            assert sample[f"{prefix}add_failed_requests"] == errors, (point["contender"], prefix)


def test_metrics_cost_produces_every_field(result, smoke_run):
    """The metrics-cost measurement at N=3 for every nsproxy variant: every field, the
    tenants' counters really made by the traffic (as the scrape sums show), none while idle,
    the walk's parts adding up, and the table printed with the method of each figure."""
    proc, out = smoke_run
    points = result["metrics_cost"]
    variants = ["nsproxy"] if WORKERS_MISSING else ["nsproxy-w1", "nsproxy-w2"]
    assert [p["contender"] for p in points] == variants
    for point in points:
        cid = point["contender"]
        assert point["status"] == "ok", f"{cid}: {point['reason']}"
        sample = point["samples"][0]
        missing = [f for f in METRICS_FIELDS if not _is_number(sample.get(f))]
        assert not missing, f"{cid} lacks {missing}"
        assert set(METRICS_FIELDS) <= set(point["summary"])
        assert (sample["traffic_requests"], sample["traffic_failed"]) == (12, 0), sample
        assert (sample["scrape_requests_2xx"], sample["scrape_requests_4xx"]) == (6, 3)
        assert sample["scrape_requests_5xx"] == 3 and sample["scrape_upstream_connect_errors"] >= 3
        # every tenant counted in at least one worker (before the traffic only a connection
        # of the start's probe that was accepted before its close could make counters)
        assert sample["idle_walk_bytes"] <= sample["busy_walk_bytes"]
        assert 3 <= sample["busy_walk_tenants"] <= 3 * (1 if cid != "nsproxy-w2" else 2)
        assert sample["busy_walk_error_tenants"] >= 3
        parts = ("tenant_metrics", "lists", "numbers", "upstream_errors")
        assert sum(sample[f"busy_walk_{k}_bytes"] for k in parts) == sample["busy_walk_bytes"]
        assert all(sample[f"busy_walk_{k}_bytes"] > 0 for k in parts), sample
        assert sample["scrape_bytes"] > 0 and sample["scrape_series"] > 0
    assert "metrics cost at N = 3 tenants" in proc.stdout
    assert "sys.getsizeof" in (out / "smoke.md").read_text()


def test_processes_are_summed_over_the_whole_tree(result):
    """HAProxy is a master and a worker; nginx two processes per tenant; nsproxy with workers
    a binder and its workers."""
    points = {(p["contender"], p["tenants"]): p for p in result["points"]}
    assert points[("haproxy-t1", 3)]["samples"][0]["processes"] == 2
    assert points[("nginx", 3)]["samples"][0]["tls_processes"] == 6
    if not WORKERS_MISSING:
        w2 = points[("nsproxy-w2", 3)]["samples"][0]
        assert w2["tls_processes"] >= 3, "a binder and two workers"


@pytest.mark.skipif(bool(WORKERS_MISSING), reason=f"daemon without workers: {WORKERS_MISSING}")
def test_workers_are_reported_side_by_side(result, smoke_run):
    proc, out = smoke_run
    details = {v["id"]: v for v in result["parameters"]["variant_details"]}
    assert details["nsproxy-w1"]["setting"] == {"workers": 1}
    assert details["nsproxy-w2"]["setting"] == {"workers": 2}
    assert details["nsproxy-w2"]["threads"] == 2
    md = (out / "smoke.md").read_text().splitlines()
    at = md.index("## 1 and 2 workers/threads at 3 tenants")
    header = md[at + 2]
    assert header.startswith("| figure | nsproxy-w1 | nsproxy-w2 | haproxy-t1 | haproxy-t2 |")


def test_targets_are_judged_and_printed(result, smoke_run):
    proc, _ = smoke_run
    targets = result["targets"]
    assert {t["issue"] for t in targets} == {3, 14, 18}
    for t in targets:
        assert t["status"] in VERDICTS
        assert f"{t['status']:<13} {t['target']}" in proc.stdout
    handshakes = next(t for t in targets if t["target"].startswith("full TLS handshakes"))
    assert handshakes["status"] in {"MET", "MISSED"}, "both proxies ran, so it is judged"
    assert "N = 3 tenants" in proc.stdout and "N = 2 tenants" in proc.stdout


def test_tables_and_charts_are_written(result, smoke_run):
    _, out = smoke_run
    md = (out / "smoke.md").read_text()
    assert "per-tenant RSA-2048 certificates" in md.splitlines()[0]
    for name in CHARTS:
        data = (out / f"smoke-{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
        assert f"(smoke-{name}.png)" in md, f"{name} is not embedded in the Markdown"


def test_shared_certificate_variant_is_labelled(smoke_run):
    """The old variant still runs, reuses the cache, and says what it is everywhere."""
    _, out = smoke_run
    proc = _bench(
        out,
        out / "certs",
        "shared",
        "--shared-cert",
        "--tenants",
        "2",
        "--load-tenants",
        "2",
        "--contenders",
        "nsproxy,haproxy",
        "--haproxy-nbthread",
        "1",
        "--no-charts",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    label = "one shared RSA-2048 certificate (old variant)"
    assert f"# TLS: {label}; 0 generated" in proc.stdout
    result = json.loads((out / "shared.json").read_text())
    assert result["parameters"]["tls"]["label"] == label
    assert label in (out / "shared.md").read_text().splitlines()[0]
    assert f"TLS: {label}." in proc.stdout
    verdicts = [t for t in result["targets"] if t["issue"] == 18]
    assert all(t["note"].startswith("shared certificate (old variant)") for t in verdicts)
    assert any(t["status"] in {"MET", "MISSED"} for t in verdicts), "handshakes are judged"


def test_wrk_latency_units_are_converted():
    text = """Running 1s test @ http://10.0.0.250:80/
  Latency Distribution
     50%  850.00us
     75%    1.20ms
     90%    2.00ms
     99%    1.50s
  2000 requests in 1.00s, 300.00KB read
  Socket errors: connect 1, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 4
Requests/sec:   1999.00
"""
    r = parse_wrk(text)
    assert (r.p50_ms, r.p99_ms, r.requests, r.rps) == (0.85, 1500.0, 2000, 1999.0)
    assert r.failed == 10


def test_s_time_counts_full_and_resumed_connections():
    summary = (
        "\n5 connections in 0.01s; 500.00 connections/user sec, bytes read 0\n"
        "5 connections in 2 real seconds, 0 bytes read per connection\n"
    )
    full = "Collecting connection statistics for 1 seconds\n*****\n" + summary
    assert parse_s_time(full) == (5, 0)
    resumed = "\n\nNow timing with session id reuse.\nstarting\nrrr\nr*\n" + summary
    assert parse_s_time(resumed) == (5, 4)
    with pytest.raises(ValueError, match="printed 2 progress marks"):
        parse_s_time(full.replace("*****", "**"))
