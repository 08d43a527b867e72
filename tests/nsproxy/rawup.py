#!/usr/bin/env python3
"""Recording upstream for the HTTP path tests: parses what it receives itself, logs it, and
answers as the request path says, including the ways a broken or hostile upstream answers.

Usage: rawup.py NAME HOST:PORT [HOST:PORT ...] [--idle-timeout S]   (prints "ready")

Every request it parses becomes one JSON line in $RAWUP_LOG: server (NAME@PORT), conn (a number
per connection), n (request number on that connection), method, target, headers ([name, value]
as received), body_len. It frames request bodies by Content-Length, else chunked, else none.

Answer by path (anything else: 200 with a JSON body naming server, conn, n, path and the
X-Nsproxy-Tenant values it received):
  /b/noreply          close without answering, except for the first request on a connection
  /b/extra?what=W     the normal answer plus, in the same write, W: head (a second response),
                      junk, or crlf
  /b/late-extra       the normal answer, then junk 0.3 s later on the idle connection
  /b/te?codings=C     Transfer-Encoding: C; chunked body when C ends in chunked, else the body
                      until close
  /b/cl-te            both Content-Length and Transfer-Encoding (invalid)
  /b/head-body        (for HEAD) Content-Length: 5 and then 5 body bytes anyway
  /b/status?code=N    status N (with Content-Length: 0 unless cl=K is given)
  /b/interim?n=N      N 103 Early Hints before the answer
  /b/ws               101 Switching Protocols, then every byte is echoed back
  /b/raw?hex=H        exactly the bytes H (hex), in one write, then close after 2 s
  /b/endless-line     a header line that never ends (sent until the peer goes away)
  /b/endless-headers  header lines that never end
  /b/trickle          a response head, one byte every 0.2 s
  /b/trailer-flood    a chunked answer whose trailer fields never end
  /b/ext-flood        a chunk-size line whose extension never ends
  /b/slow?delay=S     the normal answer after S seconds
  /b/big?size=N       a Content-Length body of N bytes, in one write
  /b/cut?framing=F    a response broken off: 10 of 100 Content-Length bytes (F=cl) or one
                      chunk of 10 bytes without the last chunk (F=chunked), then close
  /b/interim-body?code=N  a status-N head whose Content-Length body is itself a complete
                      response ("FORGED"), then the normal answer; N=0: no Content-Length,
                      the forged response, then close; framing=chunked: that body chunked
With --idle-timeout S, a connection idle for S seconds between requests is closed, as servers
close their idle keep-alive connections.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import socketserver
import sys
import threading
import time
import urllib.parse

LOG = os.environ.get("RAWUP_LOG")
_lock = threading.Lock()
_ids = itertools.count(1)
IDLE_TIMEOUT = None
EXTRA = {
    "head": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra",
    "junk": b"junk-after-the-response",
    "crlf": b"\r\n",
}


def record(entry: dict) -> None:
    if LOG:
        with _lock, open(LOG, "a") as f:
            f.write(json.dumps(entry) + "\n")


class Reader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buf += data

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self.fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


def forever(sock, first: bytes, piece: bytes) -> None:
    """Send ``first``, then ``piece`` again and again until the peer goes away."""
    try:
        sock.sendall(first)
        while True:
            sock.sendall(piece)
    except OSError:
        pass


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = next(_ids)
        reader = Reader(sock)
        n = 0
        try:
            while True:
                if IDLE_TIMEOUT and not reader.buf:
                    sock.settimeout(IDLE_TIMEOUT)
                    try:
                        reader.fill()
                    except socket.timeout:
                        return
                    sock.settimeout(None)
                line = reader.line()
                if not line:
                    continue
                n += 1
                headers = []
                while True:
                    field = reader.line()
                    if not field:
                        break
                    name, _, value = field.partition(b":")
                    headers.append([name.decode("latin-1"), value.strip().decode("latin-1")])
                lower = {k.lower(): v for k, v in headers}
                body = b""
                if "content-length" in lower:
                    body = reader.read(int(lower["content-length"]))
                elif lower.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        size = int(reader.line().split(b";")[0], 16)
                        if size == 0:
                            while reader.line():
                                pass
                            break
                        body += reader.read(size)
                        reader.line()
                method, target, _ = line.decode("latin-1").split(" ", 2)
                record(
                    {
                        "server": self.server.label,
                        "conn": conn,
                        "n": n,
                        "method": method,
                        "target": target,
                        "headers": headers,
                        "body_len": len(body),
                    }
                )
                if not self.answer(sock, reader, conn, n, method, target, headers):
                    return
        except (EOFError, OSError):
            pass

    def answer(self, sock, reader, conn, n, method, target, headers) -> bool:
        """Answer one request; False: the connection is done."""
        url = urllib.parse.urlsplit(target)
        query = dict(urllib.parse.parse_qsl(url.query))
        path = url.path
        tenant = [v for k, v in headers if k.lower() == "x-nsproxy-tenant"]
        doc = json.dumps(
            {"server": self.server.label, "conn": conn, "n": n, "path": target, "tenant": tenant}
        ).encode()
        normal = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(doc), doc)
        if method == "HEAD":
            normal = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(doc)
        if path == "/b/noreply" and n > 1:
            return False
        if path == "/b/extra":
            extra = EXTRA[query.get("what", "junk")]
            sock.sendall(normal + extra)
            return True
        if path == "/b/late-extra":
            sock.sendall(normal)
            time.sleep(0.3)
            sock.sendall(b"late junk")
            return True
        if path == "/b/te":
            codings = query.get("codings", "chunked")
            head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: %b\r\n\r\n" % codings.encode()
            if codings.replace(" ", "").lower().endswith(",chunked") or codings == "chunked":
                sock.sendall(head + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
                return True
            sock.sendall(head + b"hello world until close")
            return False
        if path == "/b/cl-te":
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n0\r\n\r\n"
            )
            return True
        if path == "/b/head-body":
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            return True
        if path == "/b/status":
            code = int(query.get("code", 200))
            cl = query.get("cl")
            head = b"HTTP/1.1 %d Status\r\n" % code
            if cl is not None:
                head += b"Content-Length: %d\r\n" % int(cl)
            elif code not in (204, 304):
                head += b"Content-Length: 0\r\n"
            sock.sendall(head + b"\r\n")
            return True
        if path == "/b/interim":
            hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
            sock.sendall(hints * int(query.get("n", 1)) + normal)
            return True
        if path == "/b/raw":
            sock.sendall(bytes.fromhex(query.get("hex", "")))
            time.sleep(2)
            return False
        if path == "/b/ws":
            sock.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\n\r\n" + reader.buf
            )
            reader.buf = b""
            while True:
                data = sock.recv(65536)
                if not data:
                    return False
                sock.sendall(data)
        if path == "/b/endless-line":
            forever(sock, b"HTTP/1.1 200 OK\r\nX-Long: ", b"a" * 65536)
            return False
        if path == "/b/endless-headers":
            forever(sock, b"HTTP/1.1 200 OK\r\n", b"X-More: a\r\n" * 1000)
            return False
        if path == "/b/trickle":
            try:
                for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"s" * 10000:
                    sock.sendall(bytes([byte]))
                    time.sleep(0.2)
            except OSError:
                pass
            return False
        if path == "/b/trailer-flood":
            forever(
                sock,
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n",
                b"X-Trailer: t\r\n" * 1000,
            )
            return False
        if path == "/b/ext-flood":
            forever(
                sock, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;e=", b"x" * 65536
            )
            return False
        if path == "/b/big":
            size = int(query.get("size", 200000))
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (size, b"x" * size))
            return True
        if path == "/b/cut":
            if query.get("framing", "cl") == "chunked":
                head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                sock.sendall(head + b"a\r\n0123456789\r\n")
            else:
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            return False
        if path == "/b/interim-body":
            code = int(query.get("code", 150))
            forged = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nFORGED"
            if code == 0:
                sock.sendall(b"HTTP/1.1 000 Zero\r\n\r\n" + forged)
                return False
            if query.get("framing") == "chunked":
                framing = b"Transfer-Encoding: chunked"
                forged = b"%x\r\n%b\r\n0\r\n\r\n" % (len(forged), forged)
            else:
                framing = b"Content-Length: %d" % len(forged)
            head = b"HTTP/1.1 %03d Interim\r\n%b\r\n\r\n" % (code, framing)
            sock.sendall(head + forged + normal)
            return True
        if path == "/b/slow":
            time.sleep(float(query.get("delay", 1)))
        sock.sendall(normal)
        return True


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, label):
        self.label = label
        super().__init__(address, Handler)


def main() -> None:
    global IDLE_TIMEOUT
    args = sys.argv[1:]
    if "--idle-timeout" in args:
        i = args.index("--idle-timeout")
        IDLE_TIMEOUT = float(args[i + 1])
        del args[i : i + 2]
    label, addresses = args[0], args[1:]
    for address in addresses:
        host, _, port = address.rpartition(":")
        server = Server((host, int(port)), f"{label}@{port}")
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
