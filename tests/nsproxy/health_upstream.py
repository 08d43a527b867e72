#!/usr/bin/env python3
"""Test upstream for the active health checks: counts what it receives, answers its health path
as a file says.

Usage: health_upstream.py NAME HOST:PORT MODE_FILE   (prints "ready" once listening)

``GET /health`` is answered by the word in MODE_FILE, read at each request: ``ok`` (200),
a status number (that status), ``endless`` (a status line, then header lines every 50 ms that
never end the head). Any other path: 200 with NAME as the body. Every request becomes one JSON
line in $HEALTH_LOG: {"server": NAME, "path": ..., "answer": what the mode was, "t": Unix time},
in the order the requests arrived.
"""

from __future__ import annotations

import http.server
import json
import os
import sys
import threading
import time

LOG = os.environ.get("HEALTH_LOG")
_lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def do_GET(self):
        name, mode_file = self.server.label, self.server.mode_file
        mode = "ok"
        if self.path == "/health":
            with open(mode_file) as f:
                mode = f.read().strip() or "ok"
        if LOG:
            with _lock, open(LOG, "a") as f:
                f.write(
                    json.dumps(
                        {"server": name, "path": self.path, "answer": mode, "t": time.time()}
                    )
                    + "\n"
                )
        if mode == "endless":
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            try:
                while True:
                    self.wfile.write(b"X-Pad: endless\r\n")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                self.close_connection = True
                return
        status = 200 if mode == "ok" else int(mode)
        body = name.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    name, address, mode_file = sys.argv[1:4]
    host, port = address.rsplit(":", 1)
    server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    server.label = name
    server.mode_file = mode_file
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
