"""Certificate files replaced under the same paths are picked up by a reload, socket kept."""

from __future__ import annotations

import shutil

from conftest import make_cert
from test_tls import https_tenant, s_client


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
    out = s_client(
        proxy,
        "t1",
        "-servername",
        "www.rot.example",
        "-CAfile",
        new["cert"],
        "-verify_hostname",
        "www.rot.example",
    )
    assert out.returncode == 0, out.stdout + out.stderr + proxy.log()
    assert "certificates reloaded" in proxy.log()
    assert "1 kept" in proxy.log()  # the tenant (and its listening socket) was kept
    assert proxy.tenant_status("t1")["netns_inode"] == inode
