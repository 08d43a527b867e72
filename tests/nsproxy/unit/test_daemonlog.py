"""The daemon log's handling of exceptions Python cannot raise (sys.unraisablehook), in a
child process of its own (it configures the process's logging)."""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = """
import gc, sys
from nsproxy import daemonlog
daemonlog.configure("info", "json", sys.argv[1])

class Noisy:
    def __init__(self, exc):
        self.exc = exc
    def __del__(self):
        raise self.exc

for _ in range(50):  # a flood of one kind, as a client's bad server names make
    Noisy(UnicodeDecodeError("ascii", b"caf\\xc3\\xa9\\nFAKE", 3, 4, "no"))
Noisy(KeyError("another kind"))
gc.collect()
"""


def test_ignored_exceptions_are_log_lines_limited_per_kind(tmp_path):
    log = tmp_path / "daemon.log"
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(log)], capture_output=True, text=True, timeout=60
    )
    assert child.returncode == 0, child.stderr
    assert child.stderr == ""  # nothing outside the log's format
    records = [json.loads(line) for line in log.read_text().splitlines()]
    messages = [r["message"] for r in records]
    assert len(messages) == 2, messages  # one line per kind in the interval, flood or not
    assert "UnicodeDecodeError" in messages[0] and "KeyError" in messages[1], messages
    assert not any("FAKE" in m or "caf" in m for m in messages)  # the object is not shown
