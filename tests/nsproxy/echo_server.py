#!/usr/bin/env python3
"""Test upstream: answers every request with JSON describing it (its own name, headers, body).

Usage: echo_server.py NAME HOST:PORT [HOST:PORT ...]   (prints "ready" once listening)

Paths with special behaviour:
  /chunked?n=N&size=S   N chunks of S bytes each, Transfer-Encoding: chunked
  /close-delimited      a body without length, ended by closing the connection
  /ws                   WebSocket handshake, then echoes every frame back (unmasked)
  ?delay=S              answer after S seconds; ?status=N answers with status N
With $ECHO_LOG set, every request line is appended to that file.
Anything else: 200 with a JSON document {"server", "method", "path", "headers", "body_len",
"body_sha256", "peer"}; the request body is read whatever its framing (Content-Length or chunked).
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import socketserver
import struct
import sys
import threading
import time
import urllib.parse

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_name_label = "echo"

    def log_message(self, *args):
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _describe(self, body: bytes) -> bytes:
        return json.dumps(
            {
                "server": self.server.label,
                "method": self.command,
                "path": self.path,
                "headers": [[k, v] for k, v in self.headers.items()],
                "body_len": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "peer": list(self.client_address),
            }
        ).encode()

    def _handle(self):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            return self._websocket()
        body = self._read_body()
        if os.environ.get("ECHO_LOG"):
            with open(os.environ["ECHO_LOG"], "a") as f:
                f.write(f"{self.server.label} {self.command} {self.path}\n")
        if "delay" in query:
            time.sleep(float(query["delay"]))
        if url.path == "/chunked":
            n, size = int(query.get("n", 3)), int(query.get("size", 10))
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("X-Upstream", self.server.label)
            self.end_headers()
            for i in range(n):
                piece = bytes([97 + i % 26]) * size
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        if url.path == "/close-delimited":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"until-close-" * 100)
            self.close_connection = True
            return
        reply = self._describe(body)
        self.send_response(int(query.get("status", 200)))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.send_header("X-Upstream", self.server.label)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

    def _websocket(self):
        key = self.headers["Sec-WebSocket-Key"].encode()
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                break
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 8:  # close
                self.wfile.write(b"\x88\x00")
                break
            out = bytes([0x80 | opcode])
            if len(data) < 126:
                out += bytes([len(data)])
            elif len(data) < 65536:
                out += bytes([126]) + struct.pack("!H", len(data))
            else:
                out += bytes([127]) + struct.pack("!Q", len(data))
            self.wfile.write(out + data)
            self.wfile.flush()
        self.close_connection = True


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, label):
        self.label = label
        super().__init__(address, Handler)


def main() -> None:
    label, addresses = sys.argv[1], sys.argv[2:]
    for address in addresses:
        host, _, port = address.rpartition(":")
        server = Server((host, int(port)), f"{label}@{port}")
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
