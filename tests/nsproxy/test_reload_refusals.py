"""Every reload, refused or not, ends with READY=1 to systemd; a refusal's reason is what
``nsproxy reload`` prints and what ``status`` shows as last_reload_error; the running
configuration keeps serving.

systemd is played by a unix datagram socket that the test binds and names in NOTIFY_SOCKET
(sd_notify(3)): the daemon's messages are read from it as systemd would get them.
"""

from __future__ import annotations

import json
import signal
import socket
import time

from conftest import ADDR, http_tenant


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: one datagram per sd_notify message."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def read(self, until: str, timeout: float = 20.0) -> list[str]:
        """The messages received until one that starts with ``until`` (included)."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                message = self.sock.recv(65536).decode()
            except TimeoutError:
                raise AssertionError(f"no {until} from the daemon; got {got}") from None
            got.append(message)
            if message.startswith(until):
                return got

    def pending(self) -> list[str]:
        self.sock.settimeout(0.3)
        got = []
        try:
            while True:
                got.append(self.sock.recv(65536).decode())
        except TimeoutError:
            return got

    def close(self):
        self.sock.close()


def refused_documents(good: dict) -> list[tuple[str, bytes | None, str]]:
    """(what, file content or None for no file, words the refusal must contain)."""
    wrong_type = json.loads(json.dumps(good))
    wrong_type["tenants"][0]["listeners"][0]["protocol"] = ["http"]
    nan = json.dumps({**good, "timeouts": {"header_read": 0}}).replace(
        '"header_read": 0', '"header_read": NaN'
    )
    newline = json.loads(json.dumps(good))
    newline["tenants"].append({**good["tenants"][0], "name": "intruder\n"})
    spelled = json.loads(json.dumps(good))
    spelled["tenants"].append({**good["tenants"][0], "name": "twin", "netns": "/run/netns/./solid"})
    return [
        ("a list where a string belongs", json.dumps(wrong_type).encode(),
         "tenant 'solid': listeners[0].protocol"),
        ("NaN seconds", nan.encode(), "timeouts.header_read"),
        ("a name ending in a newline", json.dumps(newline).encode(), "tenants[1].name"),
        ("one namespace written two ways", json.dumps(spelled).encode(),
         "tenant 'twin': listeners[0].listen: duplicate listener"),
        ("nesting too deep to parse", b"[" * 100000 + b"]" * 100000, "nested too deeply"),
        ("not JSON", b"{not json", "not valid JSON"),
        ("no file", None, "cannot read"),
    ]  # fmt: skip


def test_every_reload_refused_or_not_ends_with_ready_and_reports_its_reason(proxy, tmp_path):
    systemd = FakeSystemd(tmp_path / "notify.sock")
    try:
        proxy.add_netns("solid", "added")
        proxy.start_echo("echo", "127.0.0.1:9620", "127.0.0.1:9621")
        proxy.write_config([http_tenant("solid", ["127.0.0.1:9620"])])
        good = proxy.config
        proxy.start(env={"NOTIFY_SOCKET": systemd.path})
        assert systemd.read("READY=1")[-1].startswith("READY=1")

        for what, content, reason in refused_documents(good):
            if content is None:
                proxy.config_path.unlink()
            else:
                proxy.config_path.write_bytes(content)
            result = proxy.reload()
            messages = systemd.read("READY=1")
            assert messages[0].startswith("RELOADING=1"), (what, messages)
            assert messages[-1].startswith("READY=1"), (what, messages)
            assert systemd.pending() == [], what  # READY=1 is the last word
            assert result.returncode == 1, (what, result)
            assert "reload refused" in result.stderr and reason in result.stderr, (what, result)
            assert "Traceback" not in proxy.log(), what
            status = proxy.status_json()
            assert status["generation"] == 1, what
            assert reason in status["last_reload_error"], (what, status["last_reload_error"])
            assert proxy.get_json("solid", f"http://{ADDR}/")["server"] == "echo@9620", what

        # Refused by SIGHUP: the same, with no client to answer.
        proxy.config_path.write_bytes(refused_documents(good)[0][1])
        proxy.proc.send_signal(signal.SIGHUP)
        messages = systemd.read("READY=1")
        assert messages[0].startswith("RELOADING=1") and messages[-1].startswith("READY=1")
        assert "listeners[0].protocol" in proxy.status_json()["last_reload_error"]

        # Accepted, by the command and by SIGHUP: READY=1, and the last error is cleared.
        proxy.write_config([*good["tenants"], http_tenant("added", ["127.0.0.1:9621"])])
        result = proxy.reload()
        messages = systemd.read("READY=1")
        assert messages[0].startswith("RELOADING=1") and messages[-1].startswith("READY=1")
        assert result.returncode == 0 and result.stdout.strip() == "generation 2", result
        status = proxy.status_json()
        assert status["last_reload_error"] is None and status["generation"] == 2
        assert proxy.get_json("added", f"http://{ADDR}/")["server"] == "echo@9621"
        proxy.proc.send_signal(signal.SIGHUP)
        messages = systemd.read("READY=1")
        assert messages[0].startswith("RELOADING=1") and messages[-1].startswith("READY=1")
        proxy.wait_for(lambda s: s["generation"] == 3, "generation 3")
    finally:
        systemd.close()
