"""What one example is: sessions of client bytes, and what those bytes mean to the client.

A request path always reads ``/<route>/<example>/<sender>/<n>/<behaviour>``: ``route`` picks
the upstream (``s`` the shared one in the host namespace, ``o`` the tenant's own), ``sender``
is the tenant whose client wrote the bytes (so an upstream can tell a forged identity from the
real one), ``n`` numbers the request within the example (a smuggled one gets an ``x`` suffix,
so it matches no request the client sent) and ``behaviour`` tells the recording upstream how to
answer. ``<example>`` is the placeholder EXAMPLE_ID until the lab binds a fresh id of the same
length into each request line. Requests hidden in bodies keep the placeholder (a chunked body
may split it): every upstream connection belongs to one example anyway, and such a request
never matches a logged one.

The repr of an Example is Python that builds it again: a failing example printed by Hypothesis
pastes into test_regressions.py as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from upstream_behaviour import behaviour_of

EXAMPLE_ID = b"XXXXXX"
TENANTS = ("t1", "t2")
CLIENT_IP = "10.0.0.250"  # each tenant's client connects from the listener's own address
LISTENER = ("10.0.0.250", 80)


@dataclass(frozen=True)
class Request:
    """The exact bytes of one request (head and body) as a client writes them; ``body`` is the
    body the client means (after its own chunking), or None where no reading is the right one."""

    raw: bytes
    body: bytes | None = None

    def __repr__(self) -> str:
        body = "" if self.body is None else f", body={compact(self.body)}"
        return f"Request({compact(self.raw)}{body})"

    def _repr_pretty_(self, printer, cycle) -> None:  # what Hypothesis prints
        printer.text(repr(self))

    @property
    def method(self) -> str:
        return self.raw.split(b" ", 1)[0].decode("latin-1")

    @property
    def path(self) -> str:
        return self.raw.split(b" ", 2)[1].decode("latin-1")

    @property
    def behaviour(self) -> str:
        return behaviour_of(self.path)


def compact(data: bytes) -> str:
    """``repr(data)``, with runs of one byte written as ``b'o' * 70000`` (still Python)."""
    parts = []
    for m in re.finditer(rb"(.)\1{63,}|(?:(.)(?!\2{63}))+", data, re.S):
        run = m.group(0)
        parts.append(f"{run[:1]!r} * {len(run)}" if m.group(1) else repr(run))
    return " + ".join(parts) or "b''"


@dataclass(frozen=True)
class Session:
    """One client connection of ``tenant``: its requests, all in one write when ``pipelined``,
    else each after the previous one's response; ``half_close`` shuts down the write side after
    the last byte."""

    tenant: str
    requests: tuple[Request, ...]
    pipelined: bool = True
    half_close: bool = False

    def writes(self) -> tuple[list[bytes], list[int]]:
        """(bytes of each write, complete responses to wait for before each write)."""
        raws = [r.raw for r in self.requests]
        if self.pipelined:
            return [b"".join(raws)], [0]
        return raws, list(range(len(raws)))

    def ends(self) -> list[int]:
        """End offset of each request in the bytes of the whole session."""
        out, total = [], 0
        for r in self.requests:
            total += len(r.raw)
            out.append(total)
        return out


@dataclass(frozen=True)
class Example:
    sessions: tuple[Session, ...]

    def bind(self, example_id: str) -> Example:
        """The same example with ``example_id`` (len(EXAMPLE_ID) characters) in the path of
        each request line."""
        new = example_id.encode()
        assert len(new) == len(EXAMPLE_ID)

        def fix(r: Request) -> Request:
            line, rest = r.raw.split(b"\r\n", 1)
            return Request(line.replace(EXAMPLE_ID, new) + b"\r\n" + rest, r.body)

        return Example(
            tuple(replace(s, requests=tuple(fix(r) for r in s.requests)) for s in self.sessions)
        )


@dataclass(frozen=True)
class PathInfo:
    route: str
    example: str
    sender: str
    number: str
    behaviour: str


def path_info(path: str) -> PathInfo | None:
    """The parts of a suite path, or None for a path no client of the suite wrote."""
    parts = path.split("?", 1)[0].split("/")
    if len(parts) != 6 or parts[0] != "" or parts[1] not in ("s", "o"):
        return None
    return PathInfo(parts[1], parts[2], parts[3], parts[4], parts[5])


# -- what the lab observed of one run of an example -------------------------------------------
@dataclass(frozen=True)
class SessionResult:
    """What one client connection got: every byte, how many it wrote, how it ended ("done":
    everything answered, "eof", "reset", "timeout"), and why a write failed, if one did."""

    received: bytes
    sent: int
    end: str
    write_error: str | None = None


@dataclass(frozen=True)
class UpstreamRecord:
    """Everything one upstream connection received. ``upstream`` is "shared" (host namespace,
    both tenants) or "own-<tenant>" (inside that tenant's namespace); ``server`` is the
    listening address; ``tunnel_at`` the offset from which the upstream echoed a switched
    protocol, if it did."""

    upstream: str
    server: str
    data: bytes
    tunnel_at: int | None = None
    truncated: bool = False

    @property
    def http(self) -> bytes:
        """The bytes received as HTTP (before the switch to another protocol, if any)."""
        return self.data[: self.tunnel_at]


@dataclass(frozen=True)
class Observation:
    example_id: str
    sessions: tuple[SessionResult, ...]
    access: tuple[dict, ...]  # the daemon's access log records of this example
    upstream: tuple[UpstreamRecord, ...]
