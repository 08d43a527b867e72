"""tools/metrics_chart.py end to end: a real daemon, three tenants, a short scenario, one scrape
per second, a PNG. The assertions are on the recorded scrapes (what the chart is drawn from):
the 5xx phase and the stopped server show up in them, the steady tenants' counters grow."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.nsproxy.conftest import REPO

DURATION = 12


def increase(data: dict, name: str, tenant: str, start: float, end: float, **labels) -> float:
    """Increase of the summed series of ``name`` for ``tenant`` between two times."""

    def at(when: float) -> float:
        # The last scrape at or before ``when`` (the first one for a time before it: the
        # first scrape comes a few milliseconds after the load started).
        i = max((k for k, t in enumerate(data["t"]) if t <= when), default=0)
        total = 0.0
        for key, value in data["samples"][i].items():
            metric, _, rest = key.partition("{")
            pairs = dict(p.split("=", 1) for p in rest.rstrip("}").split(",") if p)
            want = {"tenant": tenant, **labels}
            if metric == name and all(pairs.get(k) == v for k, v in want.items()):
                total += value
        return total

    return at(end) - at(start)


def test_chart_of_a_real_scrape(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: the tool creates network and mount namespaces")
    png, samples = tmp_path / "chart.png", tmp_path / "samples.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "metrics_chart.py"), "--duration", str(DURATION),
         "--out", str(png), "--samples", str(samples)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert proc.stdout.count("panel: ") == 3
    data = json.loads(samples.read_text())
    assert len(data["samples"]) == DURATION + 1
    err_from, err_to = data["events"]["initech_5xx"]
    down_from, down_to = data["events"]["globex_server_down"]

    # Steady tenants: about 20 requests/s each (at least half of it on a busy machine).
    for tenant in ("acme", "globex"):
        assert increase(data, "nsproxy_requests_total", tenant, 0, DURATION) > 10 * (DURATION - 2)
    # initech's 5xx phase: errors inside it, none before it. With the status-class label the
    # 5xx series is used, else the errors counter.
    classes = any("code=" in key for key in data["samples"][-1])
    errors = (
        ("nsproxy_requests_total", {"code": "5xx"}) if classes else ("nsproxy_errors_total", {})
    )
    assert increase(data, errors[0], "initech", 0, err_from - 1, **errors[1]) == 0
    assert increase(data, errors[0], "initech", err_from, err_to + 1, **errors[1]) >= 5
    assert increase(data, errors[0], "acme", 0, DURATION, **errors[1]) == 0

    # globex's second server is seen down while it is stopped, and up before.
    def down(tick: int) -> set:
        sample = data["samples"][tick]
        from_metric = {
            k for k, v in sample.items() if k.startswith("nsproxy_upstream_server_up{") and v == 0
        }
        from_status = {k for k, v in data["health"][tick].items() if v == 0}
        return from_metric | from_status

    before = [i for i, t in enumerate(data["t"]) if t < down_from]
    during = [i for i, t in enumerate(data["t"]) if down_from + 1 <= t < down_to]
    assert all(down(i) == set() for i in before)
    seen = set().union(*(down(i) for i in during))
    assert seen and all("9903" in name for name in seen), seen
