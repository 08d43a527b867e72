"""The suite's own readers and judges, on fixed bytes: a differential test is only as good as
its ability to tell two readings apart, so these prove that it can (no daemon, no root)."""

from __future__ import annotations

from invariants import judge_session
from model import Request, Session, SessionResult, compact
from request_readers import hygiene, lenient_reading, strict_reading, wsgi_name
from response_reader import read_responses
from upstream_behaviour import BEHAVIOURS, answer, body_for, outcome

SMUGGLING = (
    b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"
)


def test_lenient_reader_honours_content_length_beside_chunked_and_strict_does_not():
    strict, lenient = strict_reading(SMUGGLING), lenient_reading(SMUGGLING)
    assert [(r.target, r.body) for r in strict.requests] == [("/a", b""), ("/b", b"")]
    assert [r.target for r in lenient.requests] == ["/a"]
    assert lenient.requests[0].body == b"0\r\n\r\nGET /"
    assert lenient.error  # what is left of "GET /b HTTP/1.1" is no request line


def test_lenient_reader_takes_bare_lf_and_obs_fold():
    reading = lenient_reading(b"GET /a HTTP/1.1\nHost: x\nX-A: b\n c\n\n")
    assert reading.requests[0].headers == [("Host", "x"), ("X-A", "b c")]


def test_environ_names_fold_case_underscores_and_whitespace():
    spellings = ("X-Nsproxy-Tenant", "x_nsproxy_tenant ", "X-NSPROXY_TENANT")
    assert {wsgi_name(n) for n in spellings} == {"HTTP_X_NSPROXY_TENANT"}


def test_hygiene_names_what_a_sender_must_not_forward():
    head = b"GET / HTTP/1.1\r\nA: b\r\n c\r\nContent-Length: 1\r\nTransfer-Encoding: gzip\n\r\n"
    problems = " | ".join(hygiene(head))
    for word in ("CRLF", "obs-fold", "beside", "gzip"):
        assert word in problems


def test_strict_reader_leaves_a_cut_body_incomplete_rather_than_failing():
    reading = strict_reading(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nabc")
    assert reading.error is None and reading.requests[0].body is None


def test_every_behaviour_answers_what_its_outcome_allows():
    for behaviour in BEHAVIOURS:
        for method in ("GET", "HEAD"):
            path = f"/s/e00001/t1/1/{behaviour}"
            reply, then = answer(path, method, None)
            stream = read_responses(reply, [method], eof=then == "close")
            expected = outcome(behaviour, method)
            complete = [r for r in stream.responses if r.complete]
            if expected.body:
                body = b"" if method == "HEAD" else body_for(path)
                assert complete and complete[0].body == body, (behaviour, method)
            else:
                assert not complete or stream.error, (behaviour, method)


def test_a_client_judge_flags_a_missing_a_stray_and_a_reset_answer():
    get = Request(b"GET /s/e00001/t1/1/cl HTTP/1.1\r\nHost: x\r\n\r\n", b"")
    session = Session("t1", (get,))
    ran = {get.path}  # the upstream read it
    ok, _ = answer(get.path, "GET", None)
    assert judge_session(session, SessionResult(ok, len(get.raw), "done"), ran) == []
    assert judge_session(session, SessionResult(b"", len(get.raw), "eof"), ran)
    stray, _ = answer("/s/e00001/t1/1/extra", "GET", None)
    assert judge_session(session, SessionResult(stray, len(get.raw), "done"), ran)
    local = b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    assert judge_session(session, SessionResult(local, len(get.raw), "eof"), ran) == []
    assert judge_session(session, SessionResult(local, len(get.raw), "reset"), ran)


def test_a_long_body_prints_as_python_that_builds_it_again():
    request = Request(b"POST / HTTP/1.1\r\n\r\n" + b"o" * 70000, b"o" * 70000)
    assert len(repr(request)) < 100
    assert eval(compact(request.raw)) == request.raw
