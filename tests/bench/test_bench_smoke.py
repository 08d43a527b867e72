"""Smoke test of the benchmark: the real command at N=3, one second per point, one repetition.

It proves the harness produces every figure for every contender (nsproxy, HAProxy,
nginx-per-namespace, direct), the nsproxy target verdicts, the JSON, the table and the charts.
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

from bench.contenders import ALL  # noqa: E402
from bench.measure import parse_wrk  # noqa: E402
from bench.run import LOAD_FIELDS, PROXY_FIELDS  # noqa: E402

pytestmark = pytest.mark.sandbox

CHARTS = ("rss", "req-per-cpu", "latency", "start-add")
VERDICTS = {"MET", "MISSED", "NOT MEASURED"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root: the benchmark creates network and mount namespaces")
    out = tmp_path_factory.mktemp("bench")
    argv = [
        str(REPO / ".venv" / "bin" / "python"),
        str(REPO / "bench" / "run.py"),
        "--tenants",
        "3",
        "--duration",
        "1",
        "--repeat",
        "1",
        "--settle",
        "0.2",
        "--add-window",
        "1",
        "--out",
        str(out),
        "--stamp",
        "smoke",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO)
    return proc, out


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def test_benchmark_command_succeeds_and_writes_json(smoke_run):
    proc, out = smoke_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "smoke.json").read_text())
    assert result["complete"] is True
    assert result["parameters"]["tenant_counts"] == [3]
    assert result["machine"]["cpu_model"] and result["machine"]["kernel"]


def test_every_contender_produces_every_field(smoke_run):
    _, out = smoke_run
    result = json.loads((out / "smoke.json").read_text())
    points = {p["contender"]: p for p in result["points"]}
    assert set(points) == set(ALL), f"contenders in the run: {sorted(points)}"
    for name, point in points.items():
        assert point["status"] == "ok", f"{name}: {point['status']}: {point['reason']}"
        fields = PROXY_FIELDS if ALL[name].is_proxy else LOAD_FIELDS
        assert len(point["samples"]) == 1
        sample = point["samples"][0]
        missing = [f for f in fields if not _is_number(sample.get(f))]
        assert not missing, f"{name} lacks {missing}"
        unsummarised = [f for f in fields if f not in point["summary"]]
        assert not unsummarised, f"{name} summary lacks {unsummarised}"
        for f in fields:
            s = point["summary"][f]
            assert s["min"] <= s["median"] <= s["max"] and s["n"] == 1
    without_proxy = sorted(set(PROXY_FIELDS) - set(LOAD_FIELDS))
    assert sorted(points["direct"]["not_applicable"]) == without_proxy


def test_proxies_really_carried_the_load(smoke_run):
    """Each load run answered requests without errors, and the proxy's own CPU was used."""
    _, out = smoke_run
    result = json.loads((out / "smoke.json").read_text())
    for point in result["points"]:
        sample = point["samples"][0]
        for v in ("http", "https"):
            assert sample[f"{v}_requests"] > 0, point["contender"]
            errors = (sample[f"{v}_socket_errors"], sample[f"{v}_non_2xx"])
            assert sample[f"{v}_failed"] == 0, f"{point['contender']} {v}: {errors}"
        if ALL[point["contender"]].is_proxy:
            assert sample["http_proxy_cpu_s"] > 0 and sample["https_proxy_cpu_s"] > 0
            assert sample["idle_rss_kb"] > 0 and sample["tls_idle_rss_kb"] > 0
            assert sample["processes"] >= 1 and sample["tls_processes"] >= 1
            assert sample["add_requests"] > 0 and sample["tls_add_requests"] > 0


def test_targets_are_judged_and_printed(smoke_run):
    proc, out = smoke_run
    result = json.loads((out / "smoke.json").read_text())
    targets = result["targets"]
    assert len(targets) == 11  # five per listener configuration, plus the CPU ratio
    for t in targets:
        assert t["status"] in VERDICTS
        assert f"{t['status']:<13} {t['target']}" in proc.stdout
    by_name = {t["target"]: t for t in targets}
    ratio = next(t for name, t in by_name.items() if "HAProxy" in name)
    assert ratio["status"] in {"MET", "MISSED"}, "both proxies ran, so the ratio is judged"
    assert "N = 3 tenants" in proc.stdout


def test_charts_are_png_files(smoke_run):
    _, out = smoke_run
    for name in CHARTS:
        data = (out / f"smoke-{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name


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
