#!/usr/bin/env python3
"""Client of the differential suite: runs inside one tenant's namespace and plays sessions
(one TCP connection each) against the tenant's listener, exactly as it is told.

Usage: ip netns exec TENANT client_agent.py HOST PORT     (prints "ready")

One JSON command per stdin line, one JSON result per stdout line:
  {"writes": [base64, ...], "expect_before": [n, ...], "methods": [...], "ends": [...],
   "half_close": bool, "timeout": seconds}
Write ``writes[i]`` once ``expect_before[i]`` complete responses have arrived (0: at once, so
several requests in one write are pipelined). ``methods`` and ``ends`` (the end offset of each
request in the bytes sent) let it read the answers: it stops when every request is answered,
when a response ends the connection, or after a 101 when the echo of what followed came back.
With ``half_close``, shutdown(SHUT_WR) follows the last write.

Like Python's http.client, requests and many Java and Go clients, it finishes a write before it
reads: an answer the proxy gives early (a 413 before the body) must survive until then, which
it does only if the proxy closes gracefully (RFC 9112 section 9.6). A write that fails (EPIPE,
ECONNRESET) ends the writing, and the agent then reads what it can.
  -> {"received": base64, "sent": bytes written, "end": "done" | "eof" | "reset" | "timeout",
      "write_error": str or null}
"""

from __future__ import annotations

import base64
import contextlib
import json
import selectors
import socket
import sys
import time

from response_reader import read_responses

LINGER = 0.05  # after the last expected byte, how long to wait for bytes nobody expects
MAX_RECEIVED = 4 * 1024 * 1024


def play(host: str, port: int, command: dict) -> dict:
    writes = [base64.b64decode(w) for w in command["writes"]]
    expect_before = command["expect_before"]
    methods, ends = command["methods"], command["ends"]
    deadline = time.monotonic() + command["timeout"]
    received = bytearray()
    sent = 0
    pending = b""
    next_write = 0
    half_closed = False
    write_error = None
    end = "timeout"
    sock = socket.create_connection((host, port), timeout=command["timeout"])
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    try:
        while True:
            stream = read_responses(bytes(received), methods, eof=False)
            done = stream.complete_count
            last = stream.responses[-1] if stream.responses else None
            closing = last is not None and last.complete and last.closing
            if (closing or stream.error) and not pending:
                # A client sends nothing after "Connection: close" (RFC 9112 9.6) and closes
                # its side, so that a proxy lingering until then need not wait for a timeout.
                next_write = len(writes)
                if not half_closed:
                    _shutdown_write(sock)
                    half_closed = True
            if (
                not pending
                and next_write < len(writes)
                and (done >= expect_before[next_write] or stream.tunnel is not None)
            ):
                pending = writes[next_write]
                next_write += 1
            all_sent = not pending and next_write == len(writes)
            if all_sent and command["half_close"] and not half_closed and write_error is None:
                _shutdown_write(sock)
                half_closed = True
            if all_sent and _answered(stream, len(methods), ends, sent):
                end = "done"
                _linger(sock, received)
                break
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
            sel.register(sock, selectors.EVENT_WRITE if pending else selectors.EVENT_READ)
            events = sel.select(timeout)
            sel.unregister(sock)
            for _, mask in events:
                if mask & selectors.EVENT_WRITE:
                    try:
                        n = sock.send(pending)
                    except OSError as exc:  # EPIPE, ECONNRESET: the proxy closed on us
                        write_error = exc.strerror or str(exc)
                        pending, next_write = b"", len(writes)
                    else:
                        sent += n
                        pending = pending[n:]
                        last_byte = not pending and next_write == len(writes)
                        if last_byte and command["half_close"] and not half_closed:
                            # In the same step as the last byte, as `nc -N` does: the FIN
                            # follows the request, not whatever the proxy has answered by then.
                            _shutdown_write(sock)
                            half_closed = True
                if mask & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(65536)
                    except ConnectionResetError:
                        end = "reset"
                        return _result(received, sent, end, write_error)
                    if not chunk:
                        end = "eof"
                        return _result(received, sent, end, write_error)
                    received += chunk
                    if len(received) > MAX_RECEIVED:
                        return _result(received, sent, "too much", write_error)
        return _result(received, sent, end, write_error)
    finally:
        sel.close()
        sock.close()


def _answered(stream, n_requests: int, ends: list[int], sent: int) -> bool:
    """Whether nothing more is due: every request answered, or a 101's echo is back, or the
    stream is already broken. A closing response is not enough: its EOF must still come."""
    if stream.error:
        return True
    if stream.tunnel is not None:
        switched = len(stream.responses) - 1
        return len(stream.tunnel) >= sent - ends[switched]
    return stream.complete_count >= n_requests and not stream.responses[-1].closing


def _shutdown_write(sock) -> None:
    with contextlib.suppress(OSError):  # already reset by the peer: nothing left to close
        sock.shutdown(socket.SHUT_WR)


def _linger(sock, received: bytearray) -> None:
    """Collect what arrives shortly after the last expected byte (stray responses)."""
    deadline = time.monotonic() + LINGER
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0 and sel.select(left):
            try:
                chunk = sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            received += chunk


def _result(received: bytearray, sent: int, end: str, write_error: str | None) -> dict:
    return {
        "received": base64.b64encode(bytes(received)).decode(),
        "sent": sent,
        "end": end,
        "write_error": write_error,
    }


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    print("ready", flush=True)
    for line in sys.stdin:
        try:
            result = play(host, port, json.loads(line))
        except OSError as exc:
            result = {"received": "", "sent": 0, "end": "connect-error", "write_error": str(exc)}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
