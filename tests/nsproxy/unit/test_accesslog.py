"""The access log's hand-built request line is the JSON object json.dumps would write."""

from __future__ import annotations

import json
import types

from nsproxy import accesslog
from nsproxy.http.cycle import RequestCycle

CONNECTION = types.SimpleNamespace(
    tenant=types.SimpleNamespace(name="acme"), listener="10.0.0.250:80", client_ip="10.0.0.7"
)


def finished_cycle(url: bytes, host: bytes | None, method: bytes = b"GET") -> RequestCycle:
    cycle = RequestCycle(0.0)
    cycle.method, cycle.url, cycle.upstream_name = method, url, "web"
    if host is not None:
        cycle.host = host
    cycle.status, cycle.body_in, cycle.bytes_out = 404, 12, 345
    return cycle


def test_request_line_escapes_client_strings_and_parses_back_to_the_same_fields(tmp_path):
    path = tmp_path / "access.log"
    log = accesslog.AccessLog(str(path))
    hostile = b'/a"b\\c\x01\x7f\xff\xe9?q="x"\r\n'
    log.request(CONNECTION, finished_cycle(hostile, b'evil"host\\'), 0.0123456)
    log.request(CONNECTION, finished_cycle(b"/", None, method=b"HEAD"), 2.0)
    log.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    assert all(line.isascii() for line in lines)
    first, second = (json.loads(line) for line in lines)
    assert first["path"] == hostile.decode("latin-1")
    assert first["host"] == 'evil"host\\'
    assert first["duration_ms"] == 12.346
    assert {k: first[k] for k in ("tenant", "listener", "client", "method", "upstream")} == {
        "tenant": "acme",
        "listener": "10.0.0.250:80",
        "client": "10.0.0.7",
        "method": "GET",
        "upstream": "web",
    }
    assert (first["status"], first["bytes_in"], first["bytes_out"]) == (404, 12, 345)
    assert second["host"] == "" and second["method"] == "HEAD" and second["duration_ms"] == 2000.0
    assert len(first["time"]) == 20 and first["time"].endswith("Z")
