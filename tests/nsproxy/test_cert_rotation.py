"""Certificate files replaced under the same paths are picked up by a reload, socket kept."""

from __future__ import annotations

import shutil

from conftest import make_cert
from test_tls import https_tenant, s_client, verified


def test_reload_with_rotated_certificate_files_serves_the_new_certificate(proxy, tmp_path):
    live = {"cert": str(tmp_path / "live.pem"), "key": str(tmp_path / "live.key")}
    old = make_cert(tmp_path, "old", "rot.example")
    new = make_cert(tmp_path, "new", "rot.example", "www.rot.example")
    shutil.copy(old["cert"], live["cert"])
    shutil.copy(old["key"], live["key"])
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
