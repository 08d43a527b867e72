"""priority.ahead on the real kernel: BOOST nice levels lower inside the block, back after it
(also when it raises), never below -20, and unchanged without CAP_SYS_NICE. As root, like
every test here."""

from __future__ import annotations

import os
import subprocess
import sys

from nsproxy import priority

# Run in a child process: the test process keeps its own nice value whatever happens.
CHILD = """
import logging, os, sys
from nsproxy import priority
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
seen = []
for _ in range(2):
    try:
        with priority.ahead():
            seen.append(priority.current())
            raise KeyError
    except KeyError:
        pass
seen.append(priority.current())
print("seen", *seen)
"""


def run_child(*prefix: str) -> list[str]:
    proc = subprocess.run(
        [*prefix, sys.executable, "-c", CHILD], capture_output=True, text=True, check=True
    )
    return proc.stdout.splitlines()


def test_the_block_runs_boost_levels_lower_and_the_value_comes_back_even_after_an_error():
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert run_child() == [f"seen {base - priority.BOOST} {base - priority.BOOST} {base}"]


def test_never_below_minus_20():
    assert run_child("nice", "-n", "-15")[-1] == "seen -20 -20 -15"
    assert run_child("nice", "-n", "-25")[-1] == "seen -20 -20 -20"


def test_without_cap_sys_nice_nothing_changes_and_it_is_said_once():
    base = os.getpriority(os.PRIO_PROCESS, 0)
    lines = run_child("setpriv", "--bounding-set", "-sys_nice", "--inh-caps", "-sys_nice", "--")
    assert lines[-1] == f"seen {base} {base} {base}"
    said = f"a reload runs at the workers' nice value {base} (running ahead of them needs "
    assert len(lines) == 2 and lines[0].startswith(said + "CAP_SYS_NICE)")
