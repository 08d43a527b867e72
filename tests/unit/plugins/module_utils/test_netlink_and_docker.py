"""module_utils pieces that need no kernel: the pyroute2 guard and the Docker inspect parsing."""

from __future__ import annotations

import pytest

from ansible_collections.tenantnet.nsproxy.plugins.module_utils import docker_api, netlink
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.errors import ParamError


class FailCaught(Exception):
    pass


class RecordingModule:
    """Stands in for AnsibleModule: records what fail_json was given."""

    def __init__(self):
        self.failed_with = None

    def fail_json(self, **kwargs):
        self.failed_with = kwargs
        raise FailCaught()


def test_missing_pyroute2_fails_with_missing_required_lib(monkeypatch):
    monkeypatch.setattr(netlink, "HAS_PYROUTE2", False)
    monkeypatch.setattr(netlink, "PYROUTE2_IMPORT_ERROR", "ImportError: No module named pyroute2")
    module = RecordingModule()
    with pytest.raises(FailCaught):
        netlink.require_pyroute2(module)
    assert "Failed to import the required Python library (pyroute2" in module.failed_with["msg"]
    assert "No module named pyroute2" in module.failed_with["exception"]


def test_present_pyroute2_passes_the_guard():
    module = RecordingModule()
    netlink.require_pyroute2(module)
    assert module.failed_with is None


def test_temp_names_fit_ifnamsiz_and_differ():
    names = {netlink.temp_ifname("tnv") for _attempt in range(50)}
    assert len(names) == 50
    assert all(len(n) <= 15 and n.startswith("tnv") for n in names)


def inspect_doc(running=True, mode="none", sandbox="/var/run/docker/netns/abc"):
    return {
        "Id": "f00d",
        "Name": "/web1",
        "State": {"Running": running, "Status": "running" if running else "exited", "Pid": 4242},
        "HostConfig": {"NetworkMode": mode},
        "NetworkSettings": {"SandboxKey": sandbox},
    }


def test_running_container_yields_pid_and_sandbox():
    assert docker_api.container_netns(inspect_doc()) == (
        4242,
        "/var/run/docker/netns/abc",
        "f00d",
        "web1",
    )


def test_stopped_container_is_refused_naming_the_field():
    with pytest.raises(ParamError, match="^container: container 'web1' is not running"):
        docker_api.container_netns(inspect_doc(running=False))


def test_host_network_container_is_refused():
    with pytest.raises(ParamError, match="network_mode host"):
        docker_api.container_netns(inspect_doc(mode="host"))


@pytest.mark.parametrize(
    ("given", "path"),
    [
        (None, "/run/docker.sock"),
        ("unix:///var/run/docker.sock", "/var/run/docker.sock"),
        ("/srv/docker.sock", "/srv/docker.sock"),
    ],
)
def test_docker_host_forms(given, path):
    assert docker_api.docker_socket_path(given) == path


def test_tcp_docker_host_is_refused():
    with pytest.raises(ParamError, match="^docker_host: "):
        docker_api.docker_socket_path("tcp://10.0.0.1:2375")


def test_unreachable_docker_socket_is_a_sentence(tmp_path):
    from ansible_collections.tenantnet.nsproxy.plugins.module_utils.errors import ModuleFailure

    with pytest.raises(
        ModuleFailure, match="cannot reach the Docker Engine at .*is dockerd running"
    ):
        docker_api.inspect_container(str(tmp_path / "missing.sock"), "web1")
