"""The invariants of the HTTP path, judged on what the upstreams and clients actually got.

  (a) logged:    every request an upstream read (strictly or leniently) is one nsproxy logged,
                 no more often (RFC 9110 9.2.2 allows resending an idempotent request after a
                 connection failed before any response byte); every request logged with the
                 upstream's status was read by the upstream.
  (b) identity:  every request an upstream read carries each header the proxy sets
                 (X-Nsproxy-Tenant, X-Forwarded-For/-Proto/-Host) exactly once, with the
                 proxy's value, in every spelling a server framework folds into that name
                 (lighttpd's: every character but letters and digits as "_"), and no
                 Forwarded, X-Real-IP or other X-Forwarded-* / X-Nsproxy-* field.
  (c) isolation: a tenant's own upstream reads only that tenant's requests; each upstream
                 reads only requests routed to it.
  (d) client:    each client gets one response per request, in order, each the one its
                 request's upstream behaviour calls for or the proxy's own error; requests
                 left unanswered when the connection ends never reached an upstream; the
                 end is a clean close, so no answer is lost to a reset or a hang.
  (e) framing:   the strict and the lenient reading of every upstream connection agree, every
                 forwarded head is one a sender may produce (RFC 9112), and each body the
                 upstream read is the body the client meant.
  (f) balance:   a tenant's requests to the two-server shared upstream do not all go to one
                 server (round robin advances once per request).

``check`` returns the broken ones as {letter: [sentences]}; nothing here talks to a process.
"""

from __future__ import annotations

from collections import Counter

from model import CLIENT_IP, Example, Observation, Session, SessionResult, path_info
from request_readers import (
    ParsedRequest,
    hygiene,
    lenient_reading,
    origin_form,
    strict_reading,
    wsgi_name,
)
from response_reader import read_responses
from upstream_behaviour import IDEMPOTENT, NO_RESPONSE_BYTE, TAG, behaviour_of, body_for, outcome

INVARIANTS = {
    "a": "the upstreams read exactly the requests nsproxy logged",
    "b": "each request carries exactly the proxy's identity headers",
    "c": "no tenant's upstream reads another tenant's requests",
    "d": "each client gets its responses in order, none lost, and a clean close",
    "e": "strict and lenient upstreams read the same messages, as the client framed them",
    "f": "round robin reaches both servers of the shared upstream",
}
IDENTITY = {
    "HTTP_X_NSPROXY_TENANT": "X-Nsproxy-Tenant",
    "HTTP_X_FORWARDED_FOR": "X-Forwarded-For",
    "HTTP_X_FORWARDED_PROTO": "X-Forwarded-Proto",
    "HTTP_X_FORWARDED_HOST": "X-Forwarded-Host",
}
SHARED_SERVERS = 2
# Statuses with which a proxy refuses a request it will not forward (RFC 9110 15.5, 15.6.2,
# 15.6.6): right for any risky input. Other 5xx of the proxy's own need an upstream at fault.
REFUSALS = frozenset(range(400, 500)) | {501, 505}


def check(example: Example, seen: Observation) -> dict[str, list[str]]:
    """The invariants ``seen`` breaks for the (bound) ``example``: {letter: [sentences]}."""
    sent = {r.path: (s, r) for s in example.sessions for r in s.requests}
    readings, framing = _read_upstreams(seen, sent)
    executed = {r.path for _, _, _, r in readings}
    findings = [
        *framing,
        *(("a", sentence) for sentence in _logged(seen, readings)),
        *_each_request(readings, sent),
        *(("c", sentence) for sentence in _unsent_to(seen, sent)),
        *(
            ("d", f"session {i + 1} ({session.tenant}): {sentence}")
            for i, (session, result) in enumerate(zip(example.sessions, seen.sessions))
            for sentence in judge_session(session, result, executed)
        ),
        *(("f", sentence) for sentence in _balance(readings, sent)),
    ]
    broken: dict[str, list[str]] = {}
    for letter, sentence in findings:
        broken.setdefault(letter, []).append(sentence)
    return broken


def _read_upstreams(seen: Observation, sent: dict) -> tuple[list, list]:
    """Both readings of every upstream connection: ([(upstream, server, reader, request)],
    [(e) findings of the connections themselves])."""
    readings, findings = [], []
    for rec in seen.upstream:
        where = f"{rec.upstream} {rec.server}"
        strict, lenient = strict_reading(rec.http), lenient_reading(rec.http)
        for name, reading in (("strict", strict), ("lenient", lenient)):
            readings += [(rec.upstream, rec.server, name, r) for r in reading.requests]
            if reading.error:
                findings.append(("e", f"{where}: the {name} reading failed: {reading.error}"))
        if rec.truncated:
            findings.append(("e", f"{where}: more bytes than the recorder keeps"))
        if _summary(strict.requests) != _summary(lenient.requests):
            findings.append(
                (
                    "e",
                    f"{where}: strict reading {_summary(strict.requests)} "
                    f"but lenient reading {_summary(lenient.requests)}",
                )
            )
        # Heads the proxy wrote for the requests it was sent (a smuggled one is judged by (a)).
        for r in lenient.requests:
            for problem in hygiene(r.head) if r.path in sent else ():
                findings.append(("e", f"{where}: forwarded head of {r.method} {r.path}: {problem}"))
    return readings, findings


def _each_request(readings: list, sent: dict):
    """(b), (c) and the body part of (e), for every request any upstream read."""
    for upstream, _, reader, r in readings:
        where = f"{upstream} ({reader}) read {r.method} {r.path}"
        for sentence in _identity(r):
            yield "b", f"{where}: {sentence}"
        info = path_info(r.path)
        if info is None:
            continue  # a request no client wrote: (a) names it
        if upstream.startswith("own-") and info.sender != upstream[4:]:
            yield "c", f"{where}, a request of {info.sender}'s client"
        if info.route != ("s" if upstream == "shared" else "o"):
            yield "c", f"{where}: its path routes it elsewhere"
        meant = sent[r.path][1].body if r.path in sent else None
        if meant is not None and r.body is not None and r.body != meant:
            yield (
                "e",
                (
                    f"{where} with a body of {len(r.body)} bytes {r.body[:40]!r}, "
                    f"the client meant {len(meant)} bytes {meant[:40]!r}"
                ),
            )


def _unsent_to(seen: Observation, sent: dict):
    """(c): a tenant's own upstream that received anything in an example where that tenant
    sent it no request."""
    for upstream in sorted({rec.upstream for rec in seen.upstream} - {"shared"}):
        tenant = upstream.removeprefix("own-")
        if not any(s.tenant == tenant and r.path.startswith("/o/") for s, r in sent.values()):
            yield f"{upstream} received bytes in an example where {tenant} sent it nothing"


def _summary(requests: list[ParsedRequest]) -> list[tuple]:
    return [(r.method, r.target, r.body) for r in requests]


def _logged(seen: Observation, readings: list) -> list[str]:
    """(a): compare the access log with what the upstreams read, as multisets."""
    logged, answered_upstream = Counter(), Counter()
    for record in seen.access:
        key = (record["method"], origin_form(record["path"]))
        logged[key] += 1
        if record["status"] < 400:  # the suite's upstream answers 1xx/2xx only
            answered_upstream[key] += 1
    out = []
    for reader in ("strict", "lenient"):
        read = Counter((r.method, r.path) for _, _, name, r in readings if name == reader)
        for (method, path), n in read.items():
            allowed = logged[(method, path)]
            if method in IDEMPOTENT and behaviour_of(path) in NO_RESPONSE_BYTE:
                allowed *= 2  # one resend after the connection failed before any response byte
            if n > allowed:
                out.append(
                    f"the upstreams ({reader}) read {method} {path} {n} time(s), "
                    f"nsproxy logged it {logged[(method, path)]} time(s)"
                )
        for (method, path), n in answered_upstream.items():
            if read[(method, path)] < n:
                out.append(
                    f"nsproxy logged {method} {path} {n} time(s) with the upstream's status, "
                    f"the upstreams ({reader}) read it {read[(method, path)]} time(s)"
                )
    return out


def _identity(r: ParsedRequest) -> list[str]:
    """(b) for one request. A lenient reading is judged on every raw line of the head, so that
    a line any parser could take for a header counts (an obs-fold line included)."""
    if r.head:
        names_values = []
        for line in r.head.split(b"\n")[1:]:
            name, colon, value = line.strip().partition(b":")
            if colon:
                names_values.append((wsgi_name(name), value.strip().decode("latin-1")))
    else:
        names_values = [(wsgi_name(n), v.strip()) for n, v in r.headers]
    info = path_info(r.path)
    host = [v for n, v in names_values if n == "HTTP_HOST"]
    want = {
        "HTTP_X_NSPROXY_TENANT": info.sender if info else "<the sender: unknown path>",
        "HTTP_X_FORWARDED_FOR": CLIENT_IP,
        "HTTP_X_FORWARDED_PROTO": "http",
        "HTTP_X_FORWARDED_HOST": host[0] if len(host) == 1 else "<the one Host value>",
    }
    out = []
    for env, value in want.items():
        got = [v for n, v in names_values if n == env]
        if got != [value]:
            out.append(f"{IDENTITY[env]} {got!r}, expected [{value!r}]")
    forwarded = [v for n, v in names_values if n == "HTTP_FORWARDED"]
    if forwarded:
        out.append(f"Forwarded {forwarded!r} from the client")
    # Identity fields the proxy does not set: any value is a client's, read as the proxy's.
    for n, v in names_values:
        if n not in want and (
            n.startswith(("HTTP_X_FORWARDED_", "HTTP_X_NSPROXY_")) or n == "HTTP_X_REAL_IP"
        ):
            out.append(f"{n} {v!r} from the client")
    return out


def judge_session(session: Session, result: SessionResult, executed: set[str]) -> list[str]:
    """(d) for one client connection; ``executed``: the paths of the requests an upstream read."""
    requests = session.requests
    ends = session.ends()
    written = sum(1 for end in ends if end <= result.sent)
    stream = _read(requests, result)
    out = []
    if stream.error:
        out.append(f"the response stream is malformed: {stream.error}")
    responses = stream.responses
    for k, response in enumerate(responses):
        last = k == len(responses) - 1
        if k >= written:
            out.append(f"response {k + 1} arrived, but only {written} request(s) were written")
            break
        req = requests[k]
        what = f"request {k + 1} ({req.method} {req.path})"
        expected = outcome(req.behaviour, req.method)
        tag = response.header(TAG)
        if response.closing and not last:
            out.append(f"{what}: a response came after one that said Connection: close")
            break
        if tag is None:  # the proxy's own answer
            status = response.status
            if status not in REFUSALS and not (status >= 500 and expected.local_error):
                out.append(
                    f"{what} got the proxy's own {status}, although the upstream's answer "
                    f"('{req.behaviour}') gives no reason for one"
                )
            if not response.complete:
                out.append(f"{what} got the proxy's own {status}, cut short")
                break
            continue
        if tag != req.path.encode("latin-1"):
            out.append(f"{what} got the response to {tag.decode('latin-1')}")
            break
        if response.status == 101:
            after = b"".join(r.raw for r in requests)[ends[k] : result.sent]
            if req.behaviour != "switch":
                out.append(f"{what} got a 101 its upstream never sent")
            elif stream.tunnel != after:
                out.append(
                    f"{what}: after the 101 the client got {stream.tunnel[:80]!r} back from "
                    f"the echo, expected {after[:80]!r}"
                )
            return out
        if not response.complete:
            if not (expected.truncated and last and result.end in ("eof", "reset")):
                out.append(
                    f"{what} got an incomplete response ({len(response.body)} body bytes), "
                    f"then the connection ended: {result.end}"
                )
            break
        if not expected.body:
            # A body that ends with the connection cannot say it was cut short (HTTP/1.0
            # clients get no chunked framing): then a prefix of the body is all one can ask.
            cut_short = response.framing == "close" and body_for(req.path).startswith(response.body)
            if not cut_short:
                out.append(f"{what} got a complete response, though its upstream broke it off")
        elif req.method != "HEAD" and response.body != body_for(req.path):
            out.append(
                f"{what} got the body {response.body[:80]!r}, expected {body_for(req.path)!r}"
            )
    if out or stream.error or stream.tunnel is not None:
        return out
    # How the connection ended. Early (pipelined requests unanswered) only after a response and
    # only if no unanswered request reached an upstream: the client can then send them again
    # (RFC 9112 9.3.2). Always with a clean close: a reset can throw away an answer unread
    # (RFC 9112 9.6).
    last = responses[-1] if responses else None
    how = f"the connection ended with {result.end}"
    if result.write_error:
        how += f" (a write failed: {result.write_error})"
    if written == 0:
        return [f"no request could be written; {how}"]
    if len(responses) < written:
        missing = ", ".join(str(k + 1) for k in range(len(responses), written))
        ran = [str(k + 1) for k in range(len(responses), written) if requests[k].path in executed]
        if ran:
            return [f"request(s) {missing} got no response, {', '.join(ran)} ran upstream; {how}"]
        if last is None:
            return [f"request(s) {missing} got no response; {how}"]
    elif not (last.closing and result.end not in ("eof", "done")):
        return []
    if result.end != "eof":
        whose = "the upstream's" if last.header(TAG) else "the proxy's own"
        out.append(f"after {whose} {last.status} to request {len(responses)}, {how}, not EOF")
    return out


def _read(requests, result: SessionResult):
    """The client's reading of its connection. An error answer of the proxy's own to a HEAD
    request may carry a body (it closes right after, so no later response is misread): such a
    body is read as a body rather than as the next response."""
    methods = [r.method for r in requests]
    eof = result.end in ("eof", "reset")
    stream = read_responses(result.received, methods, eof)
    while stream.error:
        k = len(stream.responses) - 1
        if k < 0 or methods[k] != "HEAD" or stream.responses[k].header(TAG) is not None:
            break
        methods[k] = "GET"
        stream = read_responses(result.received, methods, eof)
    return stream


def _balance(readings: list, sent: dict) -> list[str]:
    """(f): per tenant, the servers of the shared upstream that read its requests. Judged only
    when every request the tenant sent to the shared upstream reached it: one the proxy routed
    and then refused (a body over the limit, say) had its turn of the round robin too."""
    servers: dict[str, Counter] = {}
    for upstream, server, reader, r in readings:
        info = path_info(r.path)
        if upstream == "shared" and reader == "strict" and info and r.path in sent:
            servers.setdefault(info.sender, Counter())[server] += 1
    routed = Counter(
        info.sender for path in sent if (info := path_info(path)) and path.startswith("/s/")
    )
    out = []
    for tenant, counts in sorted(servers.items()):
        if sum(counts.values()) < routed[tenant]:
            continue
        if sum(counts.values()) >= 2 and len(counts) < SHARED_SERVERS:
            out.append(
                f"{tenant}'s {sum(counts.values())} requests to the shared upstream all went "
                f"to {', '.join(counts)}"
            )
    return out


def report(example: Example, seen: Observation, broken: dict[str, list[str]]) -> str:
    """The broken invariants with the evidence: what each upstream read, what each client got,
    what nsproxy logged."""
    out = [f"example {seen.example_id}:"]
    for letter, sentences in sorted(broken.items()):
        out.append(f"({letter}) {INVARIANTS[letter]}: BROKEN")
        out += [f"    {s}" for s in sentences]
    out.append("upstream connections (lenient reading):")
    for rec in seen.upstream:
        reading = lenient_reading(rec.http)
        lines = [
            f"{r.method} {r.target} tenant={_values(r, 'HTTP_X_NSPROXY_TENANT')}"
            for r in reading.requests
        ]
        out.append(f"    {rec.upstream} {rec.server}: {lines}")
        out.append(f"      received {len(rec.data)} bytes: {rec.data[:600]!r}")
    out.append("clients:")
    for session, result in zip(example.sessions, seen.sessions):
        out.append(
            f"    {session.tenant}: sent {result.sent} bytes, ended {result.end}, got "
            f"{result.received[:300]!r}"
        )
    out.append("access log:")
    out += [f"    {r['method']} {r['path']} {r['status']}" for r in seen.access]
    return "\n".join(out)


def _values(r: ParsedRequest, env: str) -> list[str]:
    return [v for n, v in r.headers if wsgi_name(n) == env]
