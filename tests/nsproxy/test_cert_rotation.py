"""Certificate files replaced under the same paths are picked up by a reload, socket kept."""

from __future__ import annotations

import os
import shutil

from conftest import make_cert
from test_tls import https_tenant, s_client, verified


def _live_files(folder, *more_names: str) -> tuple[dict, dict, dict]:
    """(the live paths a tenant names, holding the old certificate; old; new): the new one
    also names ``more_names``."""
    live = {"cert": str(folder / "live.pem"), "key": str(folder / "live.key")}
    old = make_cert(folder, "old", "rot.example")
    new = make_cert(folder, "new", "rot.example", *more_names)
    shutil.copy(old["cert"], live["cert"])
    shutil.copy(old["key"], live["key"])
    return live, old, new


def test_reload_with_rotated_certificate_files_serves_the_new_certificate(proxy, tmp_path):
    live, old, new = _live_files(tmp_path, "www.rot.example")
    proxy.add_netns("t1")
    proxy.start_echo("echo", "127.0.0.1:18080")
    proxy.write_config([https_tenant("t1", [live])])
    proxy.start()
    inode = proxy.tenant_status("t1")["netns_inode"]
    out = s_client(proxy, "t1", "-servername", "rot.example", "-CAfile", old["cert"])
    assert out.returncode == 0, out.stdout + out.stderr

    # Rotate: same paths, same config bytes; only the files changed.
    shutil.copy(new["cert"], live["cert"])
    shutil.copy(new["key"], live["key"])
    result = proxy.reload()
    assert result.returncode == 0, result.stderr
    out = verified(proxy, "t1", "www.rot.example", new["cert"])
    assert out.returncode == 0, out.stdout + out.stderr + proxy.log()
    assert "certificates reloaded" in proxy.log()
    assert "1 kept" in proxy.log()  # the tenant (and its listening socket) was kept
    assert proxy.tenant_status("t1")["netns_inode"] == inode


def test_tenants_sharing_certificate_files_all_serve_the_rotated_certificate(proxy, tmp_path):
    """Listeners with the same certificate files share one TLS context: a rotation reloads it
    once and every tenant using it serves the new certificate; a tenant with other files and
    one with the same files but another min_version keep their own settings."""
    live = {"cert": str(tmp_path / "live.pem"), "key": str(tmp_path / "live.key")}
    old = make_cert(tmp_path, "old", "rot.example")
    new = make_cert(tmp_path, "new", "rot.example", "www.rot.example")
    other = make_cert(tmp_path, "other", "other.example")
    shutil.copy(old["cert"], live["cert"])
    shutil.copy(old["key"], live["key"])
    proxy.add_netns("t1", "t2", "t3", "t4")
    proxy.start_echo("echo", "127.0.0.1:18080")
    proxy.write_config(
        [
            https_tenant("t1", [live]),
            https_tenant("t2", [live]),
            https_tenant("t3", [other]),
            https_tenant("t4", [live], min_version="1.3"),
        ]
    )
    proxy.start()
    for name in ("t1", "t2", "t4"):
        out = s_client(proxy, name, "-servername", "rot.example", "-CAfile", old["cert"])
        assert out.returncode == 0, name + out.stdout + out.stderr
    # t4 shares the files, not the context: TLS 1.2 is still refused there, accepted on t1.
    tls12 = ("-servername", "rot.example", "-CAfile", old["cert"], "-tls1_2")
    assert s_client(proxy, "t4", *tls12).returncode != 0
    out = s_client(proxy, "t1", *tls12)
    assert out.returncode == 0, out.stdout + out.stderr

    shutil.copy(new["cert"], live["cert"])
    shutil.copy(new["key"], live["key"])
    result = proxy.reload()
    assert result.returncode == 0, result.stderr
    for name in ("t1", "t2", "t4"):
        out = verified(proxy, name, "www.rot.example", new["cert"])
        assert out.returncode == 0, name + out.stdout + out.stderr + proxy.log()
    out = s_client(proxy, "t3", "-servername", "other.example", "-CAfile", other["cert"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert proxy.log().count("certificates reloaded") == 3  # t1, t2 and t4, not t3


def _memfds(pid: int) -> dict[str, list[int]]:
    """memfd name -> the access modes (O_RDONLY, O_RDWR...) of the process's descriptors."""
    found: dict[str, list[int]] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                flags = next(int(line.split()[1], 8) for line in f if line.startswith("flags:"))
        except (OSError, StopIteration):
            continue
        if target.startswith("/memfd:"):
            name = target.removeprefix("/memfd:").removesuffix(" (deleted)")
            found.setdefault(name, []).append(flags & os.O_ACCMODE)
    return found


def _in_memory(pid: int, needle: bytes) -> bool:
    """Whether ``needle`` is anywhere in the process's writable private memory (its heaps)."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            if fields[1] != "rw-p":
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                if needle in mem.read(end - start):
                    return True
            except OSError:
                continue
    return False


def test_workers_read_certificates_from_the_binders_store_read_only_even_after_a_rotation(
    proxy, tmp_path
):
    """cert_store.py: every worker holds one read-only descriptor of the binder's certificate
    memfd (it can neither write nor truncate what the others read) and only worker 0 one of
    the health table; after a rotation the workers hold the new store's, and the new key's
    bytes reach no worker's heap before a handshake needs them (a reload used to send them
    in its message, and every worker kept its own copy)."""
    live, old, new = _live_files(tmp_path)
    proxy.add_netns("t1")
    proxy.start_echo("echo", "127.0.0.1:18080")
    proxy.write_config([https_tenant("t1", [live])], workers=2)
    proxy.start()
    out = s_client(proxy, "t1", "-servername", "rot.example", "-CAfile", old["cert"])
    assert out.returncode == 0, out.stdout + out.stderr

    def check_descriptors() -> list[int]:
        workers = {w["index"]: w["pid"] for w in proxy.status_json()["workers"]}
        assert sorted(workers) == [0, 1]
        for index, pid in workers.items():
            memfds = _memfds(pid)
            assert memfds.get("nsproxy-certificates") == [os.O_RDONLY], (index, memfds)
            health = [os.O_RDONLY] if index == 0 else None
            assert memfds.get("nsproxy-health") == health, (index, memfds)
        return list(workers.values())

    check_descriptors()
    shutil.copy(new["cert"], live["cert"])
    shutil.copy(new["key"], live["key"])
    result = proxy.reload()
    assert result.returncode == 0, result.stderr
    with open(new["key"], "rb") as f:
        lines = f.read().splitlines()
    needle = lines[len(lines) // 2][:48]  # a piece of one line of the new private key
    for pid in check_descriptors():
        assert not _in_memory(pid, needle), f"worker {pid} holds the new key in its heap"
    out = verified(proxy, "t1", "rot.example", new["cert"])
    assert out.returncode == 0, out.stdout + out.stderr + proxy.log()


def test_a_rotation_in_the_reload_that_also_changes_the_tenant_serves_the_new_certificate(
    proxy, tmp_path
):
    """The tenant's JSON changes (another upstream) in the very reload that rotates its
    certificate files: its kept listener serves the new certificate too (the changed-tenant
    path kept the context built from the old files)."""
    live, old, new = _live_files(tmp_path, "www.rot.example")
    proxy.add_netns("t1")
    proxy.start_echo("echo", "127.0.0.1:18080")
    proxy.start_echo("echo2", "127.0.0.1:18081")
    proxy.write_config([https_tenant("t1", [live])])
    proxy.start()
    out = s_client(proxy, "t1", "-servername", "rot.example", "-CAfile", old["cert"])
    assert out.returncode == 0, out.stdout + out.stderr  # the context is built: old files

    shutil.copy(new["cert"], live["cert"])
    shutil.copy(new["key"], live["key"])
    proxy.write_config([https_tenant("t1", [live], upstream="127.0.0.1:18081")])
    result = proxy.reload()
    assert result.returncode == 0, result.stderr
    assert "1 changed" in proxy.log()
    out = verified(proxy, "t1", "www.rot.example", new["cert"])
    assert out.returncode == 0, out.stdout + out.stderr + proxy.log()
