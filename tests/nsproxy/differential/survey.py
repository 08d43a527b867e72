"""Survey run: the suite's examples, judged but never failed, one JSON line each.

This measures the suite rather than the daemon: how many examples (and seconds) it takes
until each invariant first breaks, and which inputs break it. Not collected by default
(not a test_*.py file); run it by name, as root:

    NSPROXY_DIFF_EXAMPLES=300 NSPROXY_DIFF_LOG=/tmp/survey.jsonl \\
        .venv/bin/python -m pytest -p no:cacheprovider tests/nsproxy/differential/survey.py

Each line: {"n": example number, "t": seconds since the start, "seconds": this example's
time, "broken": {letter: [sentences]}, "example": the example's repr}.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from grammar import examples
from hypothesis import HealthCheck, Phase, given, settings
from invariants import check
from lab import lab_fixture

EXAMPLES = int(os.environ.get("NSPROXY_DIFF_EXAMPLES", "300"))
LOG = os.environ.get("NSPROXY_DIFF_LOG", "survey.jsonl")
STARTED = time.monotonic()
COUNT = [0]


lab = pytest.fixture(scope="module", name="lab")(lab_fixture)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.generate,),
    suppress_health_check=list(HealthCheck),
)
@given(example=examples())
def test_survey(lab, example):
    began = time.monotonic()
    bound, seen = lab.run(example)
    broken = check(bound, seen)
    COUNT[0] += 1
    with open(LOG, "a") as log:
        entry = {
            "n": COUNT[0],
            "t": round(time.monotonic() - STARTED, 2),
            "seconds": round(time.monotonic() - began, 2),
            "broken": broken,
            "example": repr(bound),
        }
        log.write(json.dumps(entry) + "\n")
