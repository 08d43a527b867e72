"""Dropping privileges for a worker: done for real in a forked child, read back from /proc."""

from __future__ import annotations

import json
import os
import pwd

import pytest

from nsproxy import privileges


def in_child(fn) -> dict:
    """Run ``fn`` in a forked child (privileges cannot be regained); its JSON result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            result = {"ok": fn()}
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(w, json.dumps(result).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def require_root():
    if os.geteuid() != 0:
        pytest.skip("needs root: drops root's privileges to another user")


def test_a_dropped_worker_has_no_capability_no_root_id_and_no_new_privileges():
    require_root()
    creds = privileges.worker_credentials(None)
    assert creds.name == "nobody" and creds.uid != 0 and creds.gid != 0

    def drop():
        privileges.drop(creds)
        fields = privileges.status()
        try:
            open("/etc/shadow", "rb").close()
            shadow = "readable"
        except PermissionError:
            shadow = "denied"
        try:
            os.setuid(0)
            back = "regained root"
        except PermissionError:
            back = "denied"
        return {"status": fields, "shadow": shadow, "setuid0": back}

    result = in_child(drop)
    assert "error" not in result, result
    status = result["ok"]["status"]
    assert status["Uid"].split() == [str(creds.uid)] * 4
    assert status["Gid"].split() == [str(creds.gid)] * 4
    assert status["Groups"] == ""
    for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[name], 16) == 0, (name, status[name])
    assert status["NoNewPrivs"] == "1"
    assert result["ok"]["shadow"] == "denied"
    assert result["ok"]["setuid0"] == "denied"


def test_verify_names_what_is_left():
    require_root()
    creds = privileges.worker_credentials(None)
    with pytest.raises(privileges.PrivilegeError) as err:
        privileges.verify(creds)  # this process is still root, with capabilities
    assert "Uid 0" in str(err.value) and "CapBnd" in str(err.value)


def test_a_worker_that_cannot_drop_says_which_step_failed():
    require_root()
    creds = privileges.worker_credentials(None)

    def drop_twice():
        privileges.drop(creds)
        privileges.drop(privileges.Credentials(creds.uid + 1, creds.gid, "other"))

    result = in_child(drop_twice)
    assert "PrivilegeError" in result["error"]
    assert "setgroups" in result["error"] or "setresgid" in result["error"]


def test_worker_user_settings():
    nobody = pwd.getpwnam("nobody")
    by_name = privileges.worker_credentials("nobody")
    assert (by_name.uid, by_name.gid) == (nobody.pw_uid, nobody.pw_gid)
    by_uid = privileges.worker_credentials(str(nobody.pw_uid))
    assert (by_uid.uid, by_uid.name) == (nobody.pw_uid, "nobody")
    with pytest.raises(privileges.PrivilegeError, match="user: workers never run as root"):
        privileges.worker_credentials("root")
    with pytest.raises(privileges.PrivilegeError, match="user: workers never run as root"):
        privileges.worker_credentials("0")
    with pytest.raises(privileges.PrivilegeError, match="user: there is no user 'no-such-user-x'"):
        privileges.worker_credentials("no-such-user-x")
