"""reuseport.steer and unsteer on a real SO_REUSEPORT group in a throwaway namespace: while
steered, every new connection goes to one of the group's first ``width`` sockets, spread over
them; detached, every socket gets its share again."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO

# A group of 4 listening sockets per family on the sandbox's loopback; for each width (None:
# detached), 160 connections are made and counted at each socket.
GROUP = """import json, socket, sys
sys.path.insert(0, sys.argv[1])
from nsproxy import reuseport
out = {}
for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    group = []
    for _ in range(4):
        s = socket.socket(family)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((host, 5555))
        s.listen(512)
        s.setblocking(False)
        group.append(s)
    for width in (1, 2, 3, 4, None):
        if width is None:
            reuseport.unsteer(group[1])
            reuseport.unsteer(group[1])  # none attached any more: not an error
        else:
            reuseport.steer(group[width % 4], width)  # any socket of the group attaches it
        clients = [socket.create_connection((host, 5555)) for _ in range(160)]
        counts = []
        for s in group:
            n = 0
            while True:
                try:
                    s.accept()[0].close()
                except BlockingIOError:
                    break
                n += 1
            counts.append(n)
        for c in clients:
            c.close()
        out[f"{family.name} {width}"] = counts
print(json.dumps(out))
"""


def test_new_connections_go_to_the_first_width_sockets_only_and_are_spread_over_them(sandbox):
    sandbox.run(["ip", "link", "set", "lo", "up"])
    proc = sandbox.run([sys.executable, "-c", GROUP, str(REPO / "src" / "nsproxy")])
    counts = json.loads(proc.stdout)
    assert len(counts) == 10, counts
    for key, per_socket in counts.items():
        width = 4 if key.endswith("None") else int(key.split()[1])
        assert sum(per_socket) == 160, (key, per_socket)
        assert per_socket[width:] == [0] * (4 - width), (key, per_socket)
        # Each socket in range gets a fair share: 160/width expected, a quarter of it is
        # more than 6 standard deviations below.
        assert min(per_socket[:width]) >= 160 // width // 4, (key, per_socket)


@pytest.mark.parametrize("width", [0, -1])
def test_a_program_for_no_socket_is_refused(width):
    sys.path.insert(0, str(REPO / "src" / "nsproxy"))
    from nsproxy import reuseport

    with pytest.raises(ValueError, match="at least 1 socket"):
        reuseport.program(width)
