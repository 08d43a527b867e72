"""The fleet stage's figures (converge times, failed requests) are printed at the end of the run
and written to build/fleet-figures.json: they are measurements to report, never assertions."""

from __future__ import annotations

import json
import os
import time

from tests.conftest import REPO
from tests.fleet.figures import FIGURES


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    terminalreporter.write_sep("=", "fleet figures (measured, not asserted)")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    for name, value in FIGURES.items():
        shown = f"{value:.1f} s" if isinstance(value, float) else json.dumps(value)
        terminalreporter.write_line(f"{name}: {shown}")
    terminalreporter.write_line(f"load average at the end: {load}")
    out = REPO / "build" / "fleet-figures.json"
    out.parent.mkdir(exist_ok=True)
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out.write_text(json.dumps({"at": at, "load": load, "figures": FIGURES}, indent=2) + "\n")
