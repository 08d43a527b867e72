#!/usr/bin/env python3
"""A raw HTTP client for the data-path tests: sends exact bytes, reads exact answers.

Usage: exchange.py HOST PORT [--halfclose] [--head N,...] [--wait S] < request-bytes

Sends the bytes in one write (``--halfclose``: then shuts down its write side) and reads until
the proxy closes, or ``--wait`` seconds pass without a byte. Without ``--wait`` it also stops
once what came back parses as whole responses and nothing more came for QUIET seconds (a
keep-alive connection the proxy rightly holds open). It prints JSON: "responses" (each: status,
reason, headers as [name, value], body (latin-1), framing: length/chunked/close/none), "closed"
(the proxy closed), "reset" (the connection was reset), "error" (a framing error in what came
back), "raw" (the first 4000 bytes). ``--head`` lists the 0-based indexes of responses that
answer HEAD requests (they have no body).
"""

from __future__ import annotations

import json
import socket
import sys

WAIT = 10.0  # s without a byte before giving up (the default of --wait)
QUIET = 2.0  # s of silence after a whole answer, when --wait is not given


def parse(data: bytes, head_indexes: set[int], closed: bool) -> tuple[list[dict], str | None]:
    responses = []
    while data:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return responses, "incomplete head" if data.strip() else None
        lines = data[:end].split(b"\r\n")
        data = data[end + 4 :]
        version, _, rest = lines[0].partition(b" ")
        code, _, reason = rest.partition(b" ")
        if not version.startswith(b"HTTP/1.") or not code.isdigit():
            return responses, f"bad status line {lines[0][:80]!r}"
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                return responses, f"bad field {line[:80]!r}"
            headers.append([name.decode("latin-1"), value.strip().decode("latin-1")])
        fields = {k.lower(): v for k, v in headers}
        status = int(code)
        index = len([r for r in responses if r["status"] >= 200])
        body, framing = b"", "none"
        if status < 200 or status in (204, 304) or index in head_indexes:
            pass
        elif "transfer-encoding" in fields:
            if not fields["transfer-encoding"].lower().replace(" ", "").endswith("chunked"):
                return responses, "transfer-encoding without chunked last"
            framing = "chunked"
            while True:
                line_end = data.find(b"\r\n")
                if line_end < 0:
                    return responses, "incomplete chunk"
                size = int(data[:line_end].split(b";")[0], 16)
                data = data[line_end + 2 :]
                if size == 0:
                    trailer_end = data.find(b"\r\n")
                    while trailer_end > 0:  # skip trailer fields
                        data = data[trailer_end + 2 :]
                        trailer_end = data.find(b"\r\n")
                    if trailer_end < 0:
                        return responses, "incomplete last chunk"
                    data = data[2:]
                    break
                if len(data) < size + 2:
                    return responses, "incomplete chunk"
                body += data[:size]
                data = data[size + 2 :]
        elif "content-length" in fields:
            framing = "length"
            n = int(fields["content-length"])
            if len(data) < n:
                return responses, "body shorter than Content-Length"
            body, data = data[:n], data[n:]
        else:
            framing = "close"
            if not closed:
                return responses, "body until close, but the connection stayed open"
            body, data = data, b""
        responses.append(
            {
                "status": status,
                "reason": reason.decode("latin-1"),
                "headers": headers,
                "body": body.decode("latin-1"),
                "framing": framing,
            }
        )
    return responses, None


def main() -> None:
    args = sys.argv[1:]
    host, port = args[0], int(args[1])
    half = "--halfclose" in args
    wait = float(args[args.index("--wait") + 1]) if "--wait" in args else WAIT
    quiet = None if "--wait" in args else QUIET
    heads = set()
    if "--head" in args:
        heads = {int(i) for i in args[args.index("--head") + 1].split(",")}
    request = sys.stdin.buffer.read()
    sock = socket.create_connection((host, port), timeout=wait)
    sock.sendall(request)
    if half:
        sock.shutdown(socket.SHUT_WR)
    answer, closed, reset = b"", False, False
    try:
        while True:
            if quiet is not None and answer:
                responses, error = parse(answer, heads, False)
                whole = error is None and any(r["status"] >= 200 for r in responses)
                sock.settimeout(quiet if whole else wait)
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            answer += chunk
    except socket.timeout:
        pass
    except ConnectionResetError:
        reset = True
    responses, error = parse(answer, heads, closed)
    print(
        json.dumps(
            {
                "responses": responses,
                "closed": closed,
                "reset": reset,
                "error": error,
                "raw": answer[:4000].decode("latin-1"),
            }
        )
    )


if __name__ == "__main__":
    main()
