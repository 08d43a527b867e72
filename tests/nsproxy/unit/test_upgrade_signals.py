"""The signals around an upgrade's execve (binder/upgrade.py ``_execute``), on the real kernel:
a stop (SIGTERM) that came after the last await is not lost with the loop's wakeup pipe but
stops the upgrade, whether it came before STOPS were blocked or after; otherwise the execve
runs with SIGTERM at its default action and unblocked, SIGHUP and SIGUSR1 ignored; a failed
execve gives every handler back.

Each case runs in a child process, so the test process keeps its own signal state. The
handover itself (``_state``) and the execve are replaced there: what is under test is the
signal state each one sees."""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = """
import json, os, signal, sys, types
from nsproxy.binder import upgrade

came = []
def note(signum, _frame):
    came.append(signal.Signals(signum).name)
for signum in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(signum, note)

seen = {}
def execve(path, args, env):
    seen["term"] = getattr(signal.getsignal(signal.SIGTERM), "name", "a handler")
    seen["hup"] = getattr(signal.getsignal(signal.SIGHUP), "name", "a handler")
    seen["term_blocked"] = signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    raise FileNotFoundError(2, "No such file or directory")

upgrade._state = lambda binder, reply_sock: ({}, [])
os.execve = execve
binder = types.SimpleNamespace(config_path="/nonexistent", pool=types.SimpleNamespace(workers={}))

if sys.argv[1] == "early":  # came before the block; its wakeup byte (if any) never read
    upgrade.watch_stops()  # as the binder does once it serves
    signal.raise_signal(signal.SIGTERM)
if sys.argv[1] == "state-fails":
    def failing_state(binder, reply_sock):
        raise OSError(24, "Too many open files")
    upgrade._state = failing_state
signal.pthread_sigmask(signal.SIG_BLOCK, upgrade.STOPS)  # as upgrade() does
if sys.argv[1] == "stop":
    signal.raise_signal(signal.SIGTERM)  # pending: came in the stretch without an await
result = upgrade._execute(binder, ["/usr/bin/nsproxy"], None)
before_unblock = list(came)
signal.pthread_sigmask(signal.SIG_UNBLOCK, upgrade.STOPS)
print(json.dumps({
    "result": result,
    "seen": seen,
    "came_before_unblock": before_unblock,
    "came": came,
    "term_handler_back": signal.getsignal(signal.SIGTERM) is note,
    "hup_handler_back": signal.getsignal(signal.SIGHUP) is note,
}))
"""


def _run(case: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, case], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_a_stop_pending_before_the_execve_stops_the_upgrade_and_reaches_the_binder():
    out = _run("stop")
    assert out["result"] == [False, "the daemon is stopping"]
    assert out["seen"] == {}, "execve ran although a stop had come"
    assert out["came_before_unblock"] == []  # still pending, not lost
    assert out["came"] == ["SIGTERM"]  # delivered once, to the binder's own handler
    assert out["term_handler_back"] and out["hup_handler_back"]


def test_a_stop_that_came_just_before_the_block_stops_the_upgrade_too():
    out = _run("early")
    assert out["result"] == [False, "the daemon is stopping"]
    assert out["seen"] == {}, "execve ran although a stop had come"


def test_the_execve_runs_with_stop_at_default_and_reload_ignored_and_a_failure_restores():
    out = _run("go")
    assert out["seen"] == {
        "term": "SIG_DFL",
        "hup": "SIG_IGN",
        "term_blocked": False,
    }
    assert out["result"][0] is False and "cannot execute /usr/bin/nsproxy" in out["result"][1]
    assert out["came"] == []
    assert out["term_handler_back"] and out["hup_handler_back"]


def test_a_handover_that_fails_before_the_execve_is_a_sentence_and_changes_no_signal():
    out = _run("state-fails")
    assert out["result"] == [
        False,
        "upgrade failed: cannot hand the state over: Too many open files",
    ]
    assert out["seen"] == {} and out["came"] == []
    assert out["term_handler_back"] and out["hup_handler_back"]
