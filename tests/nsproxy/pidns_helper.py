"""Runs inside a new PID namespace (``unshare --pid --fork --mount-proc``) and starts processes
there on request, with a chosen PID if asked: the way a test makes a PID come back as another
process (on a host that is PID wrap-around).

Commands, one JSON object per line on stdin; one JSON answer per line on stdout:
  {"spawn": ARGV, "pid": N (optional), "out": PATH (optional)} -> {"pid": PID}
  {"kill": PID}                                                 -> {"killed": PID}
Closing stdin kills every process it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

children: dict[int, subprocess.Popen] = {}


def spawn(argv, pid=None, out=None):
    if pid is not None:
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
    stdout = open(out, "ab") if out else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.STDOUT)
    children[proc.pid] = proc
    return proc.pid


def kill(pid):
    proc = children.pop(pid)
    proc.kill()
    proc.wait()


def main():
    for line in sys.stdin:
        command = json.loads(line)
        if "spawn" in command:
            answer = {"pid": spawn(command["spawn"], command.get("pid"), command.get("out"))}
        else:
            kill(command["kill"])
            answer = {"killed": command["kill"]}
        print(json.dumps(answer), flush=True)
    for proc in children.values():
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for proc in children.values():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    os.setpgrp()
    main()
