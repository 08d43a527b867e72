"""playbooks/site.yml with inventories/example on a sandboxed host: the whole job.

One sandbox for the file (see site_sandbox.py): the first test converges the example inventory
(Docker Engine started by the docker_host role, three tenants on 10.0.0.0/24, nsproxy); the
others build on it in file order: idempotence, the daemon.json restart handler, bad tenant data,
foreign interfaces, tenant removal. Every check reads the system: the kernel (ip -json), files,
processes, and real requests from inside the tenant namespaces.
"""

from __future__ import annotations

import copy
import json
import os

import pytest
import yaml

from tests.conftest import changed_steps, kernel_has
from tests.roles.site_sandbox import (
    EXAMPLE,
    changed_tasks,
    ensure_wheelhouse,
    open_site_host,
    recap,
    task_results,
)

TENANTS = ("acme", "globex", "initech")
EXAMPLE_TENANTS = yaml.safe_load(
    (EXAMPLE / "group_vars" / "docker_hosts" / "tenants.yml").read_text()
)["tenant_network_tenants"]


# After the first tests converge the whole example and prove a re-run changes nothing, a test
# about one part runs only the roles of that part (each site.yml task costs about half a second
# here, and the whole play about 50 s even as a no-op).
DOCKER_HOST_ONLY = ["--tags", "docker_host"]
TENANTS_ONLY = ["--tags", "tenant_network,nsproxy"]
DOCKER_LOG = {"docker_host_log_max_size": "20m"}


def tenants_with(**changes) -> list[dict]:
    """The example tenant list with per-tenant changes: tenants_with(globex={"state": "absent"})."""
    tenants = copy.deepcopy(EXAMPLE_TENANTS)
    for tenant in tenants:
        tenant.update(changes.get(tenant["name"], {}))
    return tenants


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network and mount namespaces")
    ensure_wheelhouse()
    sb, site = open_site_host(tmp_path_factory.mktemp("site"))
    try:
        site.start_upstream("shared", 8080)
        yield site
    finally:
        sb.close()


def dockerd_pid(host) -> int:
    return int(host.read("/run/tenantnet-dockerd.pid").strip())


def test_site_converges_the_example_and_each_tenant_is_answered_with_its_identity(host):
    # --check on the fresh host predicts exactly what the real run then changes.
    check = host.playbook(flags=["--check", "--diff"])
    assert check.returncode == 0, f"site.yml --check failed:\n{check.stdout[-8000:]}"
    output = host.converge()
    assert changed_steps(check.stdout) == changed_steps(output)
    assert host.netns() >= set(TENANTS)
    links = host.links()
    if kernel_has("vlan"):
        # The real thing: macvlan on <parent>.<vlan_id>, created inside the tenant namespace.
        assert {"eth1.101", "eth1.102"} <= set(links)
        for name in ("acme", "globex"):
            eth0 = host.ip("-d", "link", "show", "dev", "eth0", netns=name)[0]
            assert eth0["linkinfo"]["info_kind"] == "macvlan"
    else:
        # No 802.1Q here: the role says so, and the VLAN tenants fall back to veth.
        assert "has no 8021q" in output
        assert "VLAN tenant(s) acme, globex are attached by veth" in output
        assert links["tn-acme"]["master"] == "tnvlan101"
        assert links["tn-globex"]["master"] == "tnvlan102"
    assert links["tn-initech"]["master"] == "br-tenants"
    assert "UP" in links["eth1"]["flags"]  # the trunk NIC was brought up
    for name in TENANTS:
        addrs = host.ip("addr", "show", "dev", "eth0", netns=name)[0]["addr_info"]
        assert [a["local"] + "/" + str(a["prefixlen"]) for a in addrs if a["family"] == "inet"] == [
            "10.0.0.250/24"
        ]
        routes = {(r["dst"], r.get("gateway")) for r in host.ip("route", netns=name)}
        assert {
            ("default", "10.0.0.254"),
            ("10.0.0.0/8", "10.0.0.1"),
            ("192.168.0.0/16", "10.0.0.1"),
        } <= routes

    # docker_host: daemon.json, a running engine, modules and sysctls persisted.
    daemon = json.loads(host.read("/etc/docker/daemon.json"))
    assert daemon["live-restore"] is True and daemon["userland-proxy"] is False
    assert daemon["log-opts"] == {"max-size": "10m", "max-file": "3"}
    assert daemon["default-address-pools"] == [{"base": "172.30.0.0/16", "size": 24}]
    assert host.sb.run(["docker", "info", "--format", "{{.LoggingDriver}}"]).stdout.strip() == (
        "json-file"
    )
    assert host.sb.run(["kill", "-0", str(dockerd_pid(host))], check=False).returncode == 0
    loaded = ["8021q", "macvlan"] if kernel_has("vlan") else ["macvlan"]  # only what exists
    assert host.read("/etc/modules-load.d/tenantnet.conf").split("\n")[1:] == [*loaded, ""]
    assert "net.ipv4.ip_forward=1" in host.read("/etc/sysctl.d/90-tenantnet.conf")
    assert host.read("/proc/sys/net/ipv4/ip_forward").strip() == "1"

    # nsproxy: every tenant, same address, answered with its own identity, by the shared
    # upstream in the host namespace (http) and by its own upstream in its namespace (https).
    for name in TENANTS:
        host.start_upstream(f"own-{name}", 8081, netns=name)
    for name in TENANTS:
        shared = host.curl(name, "http://10.0.0.250/hello")
        assert shared.returncode == 0, shared.stderr
        assert shared.stdout.strip() == f"backend=shared tenant={name} path=/hello"
        own = host.curl(
            name,
            "https://tenants.example/local/x",
            "--cacert",
            "/etc/nsproxy/certs/example.pem",
            "--resolve",
            "tenants.example:443:10.0.0.250",
        )
        assert own.returncode == 0, own.stderr
        assert own.stdout.strip() == f"backend=own-{name} tenant={name} path=/local/x"


def test_second_run_changes_nothing(host):
    check = host.playbook(flags=["--check"])
    assert check.returncode == 0 and changed_steps(check.stdout) == [], changed_steps(check.stdout)
    output = host.converge()
    assert recap(output)["changed"] == 0, f"changed: {changed_tasks(output)}"
    # With everything installed the package tasks still run, as no-ops (they are not skipped).
    results = task_results(output)
    packages = "python3-venv, logrotate, python3-setproctitle"
    for task in (
        "tenantnet.nsproxy.docker_host : Install Docker Engine and the Python libraries",
        f"tenantnet.nsproxy.nsproxy : Install the host packages ({packages})",
    ):
        assert results.get(task) == {"ok"}, f"{task}: {results.get(task)}"


def test_a_machine_on_a_tenant_bridge_reaches_nsproxy_through_dockers_firewall(host):
    """A tenant's own machine sits on the tenant bridge, like the tenant namespace does.

    Docker loads br_netfilter, and sets the FORWARD policy to DROP when it enabled IP forwarding
    itself (as on the VM; here docker_host enabled it first, so the test sets the policy). Then
    bridged frames between the two ports are dropped unless the tenant_network role lets them
    through.
    """
    nf_call = host.read("/proc/sys/net/bridge/bridge-nf-call-iptables").strip()
    assert nf_call == "1", "precondition: bridged frames traverse iptables (br_netfilter)"
    script = (
        "iptables -P FORWARD DROP && "
        "ip netns add machine && "
        "ip link add mach-port type veth peer name eth0 netns machine && "
        "ip link set mach-port master br-tenants up && "
        "ip -n machine addr add 10.0.0.10/24 dev eth0 && "
        "ip -n machine link set eth0 up && ip -n machine link set lo up"
    )
    host.sb.sh(script)
    try:
        reply = host.curl("machine", "http://10.0.0.250/hello")
        forward = host.sb.run(["iptables", "-S", "FORWARD"]).stdout
        assert reply.returncode == 0, reply.stderr + forward
        assert reply.stdout.strip() == "backend=shared tenant=initech path=/hello"
    finally:
        host.sb.sh("ip netns del machine; iptables -P FORWARD ACCEPT")


def test_daemon_json_change_restarts_dockerd_once(host):
    before = dockerd_pid(host)
    check = host.playbook(extra=DOCKER_LOG, flags=["--check", *DOCKER_HOST_ONLY])
    output = host.converge(extra=DOCKER_LOG, flags=DOCKER_HOST_ONLY)
    assert changed_steps(check.stdout) == changed_steps(output)
    assert any(task.endswith("Stop the background dockerd") for task in changed_tasks(output))
    assert json.loads(host.read("/etc/docker/daemon.json"))["log-opts"]["max-size"] == "20m"
    restarted = dockerd_pid(host)
    assert restarted != before
    output = host.converge(extra=DOCKER_LOG, flags=DOCKER_HOST_ONLY)
    assert recap(output)["changed"] == 0, f"changed: {changed_tasks(output)}"
    assert dockerd_pid(host) == restarted  # no change, no restart


def test_container_tenant_gets_a_name_routes_and_a_proxy_and_docker_keeps_its_own(host):
    host.sb.import_busybox_image()
    host.sb.run(["docker", "run", "-d", "--name", "web1", "tenantnet/busybox", "sleep", "3600"])
    gateway = host.sb.run(
        ["docker", "inspect", "-f", "{{.NetworkSettings.Gateway}}", "web1"]
    ).stdout.strip()
    web = {
        "name": "web",
        "attachment": {"type": "container", "container": "web1"},
        "addresses": ["10.0.0.250/24"],
        "routes": [{"dst": "192.168.0.0/16", "gateway": gateway}],
        "proxy": {
            "listeners": [{"listen": "10.0.0.250:80", "protocol": "http"}],
            "routes": [{"host": "*", "path_prefix": "/", "upstream": "shared"}],
            "upstreams": {"shared": {"netns": None, "servers": ["127.0.0.1:8080"]}},
        },
    }
    host.converge(extra={"tenant_network_tenants": [*tenants_with(), web]}, flags=TENANTS_ONLY)
    pid = host.sb.run(["docker", "inspect", "-f", "{{.State.Pid}}", "web1"]).stdout.strip()
    inode = host.sb.run(["stat", "-L", "-c", "%i", f"/proc/{pid}/ns/net"]).stdout
    assert host.sb.run(["stat", "-L", "-c", "%i", "/run/netns/web"]).stdout == inode
    routes = {(r["dst"], r.get("gateway")) for r in host.ip("route", netns="web")}
    assert ("192.168.0.0/16", gateway) in routes
    assert ("default", gateway) in routes  # Docker's own default route was not purged
    answer = host.curl("web", "http://10.0.0.250/c")
    assert answer.stdout.strip() == "backend=shared tenant=web path=/c", answer.stderr

    host.converge(
        extra={"tenant_network_tenants": [*tenants_with(), {**web, "state": "absent"}]},
        flags=TENANTS_ONLY,
    )
    assert "web" not in host.netns()
    running = host.sb.run(["docker", "inspect", "-f", "{{.State.Running}}", "web1"]).stdout
    assert running.strip() == "true"  # only the name went away, never the container


@pytest.mark.parametrize(
    ("tenants", "message"),
    [
        (
            tenants_with(globex={"attachment": {"type": "vxlan", "parent": "eth1"}}),
            "got: vxlan",
        ),
        (
            tenants_with(
                globex={"attachment": {"type": "vlan", "parent": "eth1", "vlan_id": 5000}}
            ),
            "tenants[1] (globex).attachment.vlan_id: 5000 is out of range; allowed: 1-4094",
        ),
        (
            tenants_with(initech={"routes": [{"dst": "default", "gateway": "192.0.2.1"}]}),
            "tenants[2] (initech).routes[0].gateway: 192.0.2.1 is outside every connected subnet",
        ),
        (
            tenants_with(acme={"name": "a-name-much-too-long"}),
            "tenants[0].name: 'a-name-much-too-long' is not allowed",
        ),
    ],
    ids=["unknown-attachment-type", "vlan-id-5000", "unreachable-gateway", "name-too-long"],
)
def test_bad_tenant_data_is_rejected_before_anything_changes(host, tenants, message):
    daemon_json = host.read("/etc/docker/daemon.json")
    links = set(host.links())
    # docker_host would change daemon.json first if it ran: it must not get that far.
    proc = host.playbook(
        extra={"tenant_network_tenants": tenants, "docker_host_log_max_size": "99m"}
    )
    assert proc.returncode != 0
    assert message in proc.stdout, proc.stdout[-3000:]
    assert recap(proc.stdout)["changed"] == 0
    assert host.read("/etc/docker/daemon.json") == daemon_json
    assert set(host.links()) == links


def test_a_kernel_without_8021q_fails_clearly_unless_told_to_fall_back(host):
    if kernel_has("vlan"):
        pytest.skip("this kernel has 802.1Q VLAN support; the failure path needs one without")
    links = set(host.links())
    proc = host.playbook(
        extra={"docker_host_kernel_modules_missing": "fail"}, flags=["--tags", "docker_host"]
    )
    assert proc.returncode != 0
    assert "has no 8021q (802.1Q VLAN subinterfaces (VLAN tenants)) support" in proc.stdout
    proc = host.playbook(
        extra={"tenant_network_vlan_fallback": "fail"}, flags=["--tags", "tenant_network"]
    )
    assert proc.returncode != 0
    assert "this kernel has no 802.1Q VLAN support" in proc.stdout
    assert "VLAN tenants acme, globex need; nothing was changed" in proc.stdout
    assert set(host.links()) == links


def test_interfaces_it_does_not_own_are_never_touched(host):
    # A bridge made by someone else, and a tenant whose host-side name is already taken by it.
    host.sb.sh("ip link add keep-me type bridge && ip link set keep-me up")
    tenants = tenants_with() + [
        {
            "name": "intruder",
            "attachment": {"type": "bridge", "bridge": "br-tenants", "host_interface": "keep-me"},
            "addresses": ["10.0.0.251/24"],
        }
    ]
    proc = host.playbook(
        extra={"tenant_network_tenants": tenants}, flags=["--tags", "tenant_network"]
    )
    assert proc.returncode != 0
    assert "interface 'keep-me' already exists in the host and was not created by" in proc.stdout, (
        proc.stdout[-3000:]
    )
    link = host.links()["keep-me"]
    assert "master" not in link and "UP" in link["flags"]
    assert "intruder" not in host.netns()  # the failed tenant's namespace was rolled back


def test_absent_tenant_is_removed_cleanly_and_the_others_keep_working(host):
    output = host.converge(
        extra={"tenant_network_tenants": tenants_with(globex={"state": "absent"})},
        flags=TENANTS_ONLY,
    )
    assert "globex" not in host.netns()
    links = host.links()
    assert "tn-globex" not in links
    assert "tn-acme" in links and "tn-initech" in links
    status = json.loads(
        host.sb.run(
            ["/opt/nsproxy/bin/nsproxy", "status", "--socket", "/run/nsproxy/main.sock", "--json"]
        ).stdout  # fmt: skip
    )
    assert sorted(t["name"] for t in status["tenants"]) == ["acme", "initech"]
    for name in ("acme", "initech"):
        answer = host.curl(name, "http://10.0.0.250/still")
        assert answer.stdout.strip() == f"backend=shared tenant={name} path=/still", answer.stderr
    # Removing it again is a no-op.
    output = host.converge(
        extra={"tenant_network_tenants": tenants_with(globex={"state": "absent"})},
        flags=TENANTS_ONLY,
    )
    assert recap(output)["changed"] == 0, f"changed: {changed_tasks(output)}"


def test_exclusive_mode_removes_unlisted_tenants_in_the_same_run_and_keeps_foreign_objects(host):
    listed = tenants_with()
    host.converge(extra={"tenant_network_tenants": listed}, flags=TENANTS_ONLY)
    # Objects of other tools that look like a tenant's: an untagged namespace with a link, an
    # untagged host link named like a host end, a namespace whose link has the plain tag.
    host.sb.sh(
        "ip netns add foreign && ip -n foreign link add eth0 type veth peer name eth1 && "
        "ip link add tn-foreign type bridge && "
        "ip netns add plain && ip -n plain link add eth0 type veth peer name eth1 && "
        "ip -n plain link set eth0 alias tenantnet.nsproxy"
    )
    # initech is left out of the list (not marked absent); acme gets one more route.
    acme_routes = [*listed[0]["routes"], {"dst": "172.16.0.0/12", "gateway": "10.0.0.1"}]
    remaining = [{**listed[0], "routes": acme_routes}, listed[1]]
    extra = {"tenant_network_tenants": remaining, "tenant_network_exclusive": True}
    check = host.playbook(extra=extra, flags=["--check", "--diff", *TENANTS_ONLY])
    assert check.returncode == 0, check.stdout[-6000:]
    assert "initech" in host.netns()  # check mode changed nothing
    removal = check.stdout.find("tenant initech (removed: not listed)")
    assert 0 <= removal < check.stdout.find("tenant acme (changed)"), check.stdout[-6000:]
    assert "tenant initech (removed)" in check.stdout  # the nsproxy instance's diff
    output = host.converge(extra=extra, flags=TENANTS_ONLY)
    assert changed_steps(check.stdout) == changed_steps(output)
    assert "initech" not in host.netns()
    links = host.links()
    assert "tn-initech" not in links and "tn-acme" in links
    assert {"foreign", "plain"} <= host.netns() and "tn-foreign" in links
    assert "eth0" in host.links("foreign") and "eth0" in host.links("plain")
    status = json.loads(
        host.sb.run(
            ["/opt/nsproxy/bin/nsproxy", "status", "--socket", "/run/nsproxy/main.sock", "--json"]
        ).stdout
    )
    assert sorted(t["name"] for t in status["tenants"]) == ["acme", "globex"]
    answer = host.curl("acme", "http://10.0.0.250/exclusive")
    assert answer.stdout.strip() == "backend=shared tenant=acme path=/exclusive", answer.stderr
    assert recap(host.converge(extra=extra, flags=TENANTS_ONLY))["changed"] == 0
