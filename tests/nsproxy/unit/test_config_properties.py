"""Property: ``nsproxy check`` answers every document, however mangled, with exit 0 and a count,
or exit 1 and one line per problem that names a field; never a traceback, never a hang.

The documents are mutations of valid configurations (config_strategies.mutate): wrong types in
every position, extreme numbers, control characters, nesting to 5000 levels, namespace
spellings, 100 kB strings, unknown keys, deleted and duplicated parts. Counts come from the
Hypothesis profile (NSPROXY_HYPOTHESIS_PROFILE, see config_strategies): the default keeps this
file within about a minute; ``long`` runs twenty times as many.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys

import pytest
from config_docs import make_cert, rich_document
from config_strategies import examples, mutate, serialise
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nsproxy import cli

NSPROXY = [sys.executable, "-m", "nsproxy"]
TOP_KEYS = ("instance", "admin_socket", "metrics", "access_log", "log", "workers", "user",
            "limits", "timeouts", "tenants")  # fmt: skip
# A problem line starts with the field it is about: a top-level key (maybe unknown, then
# quoted when it is not a plain name), tenants[N] for a tenant without a usable name, or
# "tenant 'NAME': " and a field inside it.
FIELD_LINE = re.compile(
    r"(?:tenant '[A-Za-z0-9][A-Za-z0-9_.-]{0,62}': (?:[A-Za-z0-9_.-]+|'[^\n]*'|\"[^\n]*\")"
    r"|tenants\[\d+\]"
    r"|(?:" + "|".join(TOP_KEYS) + r")\b"
    r"|[A-Za-z0-9_.-]{1,64}: unknown key"
    r"|'[^\n]*'|\"[^\n]*\")"
)
# Lines about the document as a whole (no field to name).
WHOLE = (
    "not valid JSON: ",
    "the top level must be a JSON object",
    "the document nests arrays or objects too deeply",
)
MORE = re.compile(r"and \d+ more problems")


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Valid documents to mutate: the rich one (with an https listener), it without https
    (fast: no certificate to load), and a minimal one."""
    folder = tmp_path_factory.mktemp("prop")
    cert, key = make_cert(folder)
    rich = rich_document(folder, cert, key)
    plain = rich_document(folder, cert, key)
    del plain["tenants"][0]["listeners"][1]
    minimal = {"admin_socket": str(folder / "m.sock"), "tenants": [plain["tenants"][1]]}
    return folder, [plain, minimal, plain, rich]


def check_in_process(path) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["check", str(path)])
    return rc, out.getvalue()


def assert_answer(rc: int, out: str) -> None:
    assert rc in (0, 1), (rc, out)
    lines = out.splitlines()
    assert lines, "no output"
    if rc == 0:
        assert len(lines) == 1 and re.fullmatch(r"ok: \d+ tenants, \d+ listeners", lines[0]), out
        return
    for line in lines:
        assert "Traceback" not in line
        assert "could not be checked" not in line, line  # an internal error: a bug
        assert len(line) < 5000, line[:200]
        assert line.isprintable(), repr(line[:200])
        assert line.startswith(WHOLE) or FIELD_LINE.match(line) or MORE.fullmatch(line), line


@settings(max_examples=examples(1500))
@given(data=st.data())
@example(data=None)  # the unmutated documents
@pytest.mark.timeout(examples(600))  # a hung example never reaches its deadline
def test_check_answers_every_mutated_document_with_lines_naming_fields(bases, data):
    folder, docs = bases
    if data is None:
        for doc in docs:
            path = folder / "plain.json"
            path.write_bytes(serialise(doc))
            assert check_in_process(path)[0] == 0
        return
    doc = mutate(data, data.draw(st.sampled_from(docs), label="base"))
    path = folder / "doc.json"
    path.write_bytes(serialise(doc))
    rc, out = check_in_process(path)
    assert_answer(rc, out)


@settings(max_examples=examples(25), deadline=None)
@given(data=st.data())
@pytest.mark.timeout(examples(600))  # a hung example never reaches its deadline
def test_the_nsproxy_check_command_never_prints_a_traceback_or_hangs(bases, data):
    """The same, through the installed command in its own process, 30 s at most each."""
    folder, docs = bases
    doc = mutate(data, data.draw(st.sampled_from(docs), label="base"))
    path = folder / "cmd.json"
    path.write_bytes(serialise(doc))
    result = subprocess.run(
        [*NSPROXY, "check", str(path)], capture_output=True, text=True, timeout=30
    )
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr == "", result.stderr[-2000:]
    assert_answer(result.returncode, result.stdout)


# -- inputs that broke earlier versions, kept as plain tests ------------------------------------
T = (
    '{"name": "ta", "netns": "ta", "listeners": [%s], '
    '"upstreams": {"app": {"servers": ["127.0.0.1:8080"]}}}'
)
REGRESSIONS = [
    # A list, an object where a string belongs: a TypeError (unhashable) escaped check.
    '{"tenants": [%s]}' % (T % '{"listen": "10.0.0.250:80", "protocol": ["http"]}'),
    '{"tenants": [%s]}' % (T % '{"listen": "10.0.0.250:443", "protocol": "https", "tls": '
                           '{"certificates": [{"cert": "/nonexistent.pem"}], "min_version": {}}}'),
    '{"tenants": [%s]}' % (T % '{"listen": "10.0.0.250:443", "protocol": "tcp", '
                           '"sni_routes": [{"sni": {}, "upstream": "app"}]}'),
    # RecursionError in the JSON parser.
    "[" * 100000 + "]" * 100000,
    # NaN passed the "> 0" test (every comparison with NaN is false).
    '{"timeouts": {"header_read": NaN}, "tenants": []}',
    # A default ("2xx") was kept as written instead of as the check converts it.
    '{"tenants": [{"name": "a", "netns": "a", "upstreams": {"u": {"servers": ["127.0.0.1:1"], '
    '"health_check": {"type": "http"}}}}]}',
    # ENOTDIR on an ancestor of the admin socket was taken for "cannot look".
    '{"admin_socket": "/etc/passwd/x/y.sock", "tenants": []}',
    # Found by the long profile: an upstream named by an unassigned code point was echoed
    # raw in another line (tcp listener: "tenant has: ...") when the upstreams were invalid.
    '{"tenants": [{"name": "a", "netns": "a", "listeners": [{"listen": "10.0.0.1:5", '
    '"protocol": "tcp", "upstream": "db"}], "upstreams": {"\\ud823\\udcd6": null}}]}',
]  # fmt: skip


@pytest.mark.parametrize("text", REGRESSIONS, ids=range(len(REGRESSIONS)))
def test_inputs_that_once_broke_check_get_an_answer(tmp_path, text):
    path = tmp_path / "found.json"
    path.write_text(text)
    rc, out = check_in_process(path)
    assert_answer(rc, out)
