#!/usr/bin/env python3
"""A client that loops requests until a stop file appears, and counts what failed.

    loop_client.py STOP_FILE REPORT ADDR TENANT [SOURCE_ADDR]

Every third request on a new connection, the others on one keep-alive connection (reopened
after a response that said ``Connection: close``, which is counted, not a failure). Every answer
must be a 200 whose JSON body shows the request arrived with ``X-Nsproxy-Tenant: TENANT``
(the test echo server lists headers as pairs, the VM's backend as an object). Writes
{"ok", "fail", "closes", "errors"} to REPORT when done. Used by tests/nsproxy and the VM.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import time


def tenant_of(body: dict):
    headers = body.get("headers")
    pairs = headers.items() if isinstance(headers, dict) else headers or []
    return {str(k).lower(): v for k, v in pairs}.get("x-nsproxy-tenant")


def main(stop: str, report: str, addr: str, tenant: str, source: str | None = None) -> None:
    source_address = (source, 0) if source else None

    def connect():
        return http.client.HTTPConnection(addr, 80, timeout=10, source_address=source_address)

    ok = fail = closes = 0
    errors: list[str] = []
    keep = None
    i = 0
    stop_at = None
    while True:
        if os.path.exists(stop):
            stop_at = stop_at or time.monotonic() + 0.3
            if time.monotonic() > stop_at and i > 20:
                break
        i += 1
        fresh = i % 3 == 0
        if keep is None:
            keep = connect()
        conn = connect() if fresh else keep
        try:
            conn.request("GET", f"/loop/{tenant}/{i}")
            response = conn.getresponse()
            body = json.loads(response.read())
            seen = tenant_of(body)
            assert response.status == 200 and seen == tenant, (response.status, seen)
            ok += 1
            if (response.getheader("connection") or "").lower() == "close":
                closes += 1
                conn.close()
                if conn is keep:
                    keep = None
        except Exception as exc:
            fail += 1
            errors.append(f"{time.time():.3f} {exc!r}")
            conn.close()
            if conn is keep:
                keep = None
        if fresh:
            conn.close()
        time.sleep(0.003)
    # Written whole, then renamed: a reader that waits for the file never sees half a report.
    # One JSON document per file, ending in a newline, so `cat` of several is one per line.
    partial = f"{report}.partial"
    with open(partial, "w") as f:
        summary = {"ok": ok, "fail": fail, "closes": closes, "errors": errors[:10]}
        f.write(json.dumps(summary) + "\n")
    os.replace(partial, report)


if __name__ == "__main__":
    main(*sys.argv[1:6])
