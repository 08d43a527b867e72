"""The daemon log lines a tenant's traffic causes are limited per tenant (traffic_log.py)."""

from __future__ import annotations

import logging
import types

from nsproxy import traffic_log
from nsproxy.metrics import TenantMetrics


def tenant(name: str):
    return types.SimpleNamespace(name=name, metrics=TenantMetrics())


def test_a_tenant_gets_its_lines_per_interval_and_then_a_count_of_the_rest(caplog, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(traffic_log.time, "monotonic", lambda: clock[0])
    noisy, quiet = tenant("noisy"), tenant("quiet")
    with caplog.at_level(logging.INFO, logger="nsproxy"):
        for i in range(traffic_log.LINES + 30):
            traffic_log.line(noisy, logging.INFO, "tenant noisy: refused %d", i)
        traffic_log.line(quiet, logging.INFO, "tenant quiet: refused once")
        shown = [r.getMessage() for r in caplog.records]
        assert shown[: traffic_log.LINES] == [
            f"tenant noisy: refused {i}" for i in range(traffic_log.LINES)
        ]
        assert "more are not shown until" in shown[traffic_log.LINES]
        assert shown[traffic_log.LINES + 1 :] == ["tenant quiet: refused once"]  # its own lines
        caplog.clear()
        clock[0] += traffic_log.INTERVAL
        traffic_log.line(noisy, logging.INFO, "tenant noisy: refused again")
        assert [r.getMessage() for r in caplog.records] == [
            "tenant noisy: 30 more lines of its traffic not shown (limit 20 per 10 s)",
            "tenant noisy: refused again",
        ]
