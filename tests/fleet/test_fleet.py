"""playbooks/site.yml across a fleet of three Docker hosts, with inventories/fleet, without VMs.

The hosts are privileged containers in one sandbox (see fleet_hosts.py). The tests build on each
other in file order: converge and idempotence, every tenant served by its own host, the same
converge with different forks and host counts (timed, never asserted on time), ``--limit``,
moving a tenant between hosts under load, and a rolling nsproxy upgrade under load. Every check
reads the hosts: namespaces, links, iptables, nsproxy's status, and real requests from inside
every tenant namespace. Times and failed requests are reported in the fleet figures (conftest).
"""

from __future__ import annotations

import os

import pytest

from tests.fleet.figures import FIGURES
from tests.fleet.fleet_hosts import Fleet, image_rootfs

# Each test runs one or more whole site.yml runs on three hosts: bounded, but not by the default.
pytestmark = pytest.mark.timeout(1800)

HOSTS = ("docker1", "docker2", "docker3")
MOVING, FROM, TO = "initech", "docker1", "docker2"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network and mount namespaces and a Docker engine")
    rootfs = image_rootfs()
    fleet = Fleet(tmp_path_factory.mktemp("fleet"), HOSTS)
    try:
        fleet.start(rootfs)
        FIGURES["hosts"] = fleet.privilege_note
        FIGURES.update({f"setup: {k}": v for k, v in fleet.timings.items()})
        yield fleet
    finally:
        fleet.close()


def record(name, run):
    """Put one run's wall time, the controller's CPU time and the load into the figures."""
    FIGURES[name] = {
        "wall_s": round(run.seconds, 1),
        "controller_cpu_s": round(run.cpu_seconds, 1),
        "hosts_cpu_s": round(run.hosts_cpu_seconds, 1),
        "load1_after": round(os.getloadavg()[0], 1),
    }


def assert_no_change(run, hosts=HOSTS):
    assert sorted(run.recap) == sorted(hosts), f"hosts in the recap: {sorted(run.recap)}"
    for host in hosts:
        assert run.recap[host]["failed"] == 0 and run.recap[host]["unreachable"] == 0
        assert run.recap[host]["changed"] == 0, f"{host} changed: {run.changed_tasks(host)}"


def test_site_converges_all_three_hosts_in_one_run_and_the_second_run_changes_nothing(fleet):
    first = fleet.converge()
    assert sorted(first.recap) == sorted(HOSTS)
    for host in HOSTS:
        assert first.recap[host]["changed"] > 0 and first.recap[host]["failed"] == 0
    record("site.yml first converge, 3 hosts (forks 5)", first)

    second = fleet.converge()
    assert_no_change(second)
    record("site.yml no-op, 3 hosts (forks 5)", second)


def test_each_host_serves_only_its_own_tenants_each_with_its_own_identity(fleet):
    placed = {host: fleet.tenants_placed(host) for host in HOSTS}
    everyone = {tenant for tenants in placed.values() for tenant in tenants}
    assert len(everyone) == sum(len(t) for t in placed.values()), "a tenant is placed twice"
    for host, tenants in placed.items():
        # Only this host's tenants have a namespace here, and nsproxy serves exactly them.
        assert fleet.netns(host) == set(tenants)
        assert fleet.nsproxy_tenants(host) == sorted(tenants)
        for tenant in tenants:
            answer = fleet.ask(host, tenant)
            assert answer.returncode == 0, f"{host}/{tenant}: {answer.stderr}"
            assert answer.stdout.strip() == f"backend={host} tenant={tenant} path=/who"
        # Every tenant has the same address, here and on every other host.
        for tenant in tenants:
            addresses = fleet.exec(host, ["ip", "-n", tenant, "-4", "-o", "addr", "show", "eth0"])
            assert " 10.0.0.250/24 " in addresses.stdout


def test_the_same_converge_with_forks_1_and_the_default_and_with_2_hosts(fleet):
    """The no-op converge of the first test (3 hosts, default forks) again with forks 1, and
    with 2 hosts (1 host: the --limit run of the next test). Reported, never asserted on time:
    what each host costs the controller and the host, and how the wall time grows."""
    serial = fleet.converge(forks=1)
    assert_no_change(serial)
    two = fleet.converge(limit="docker1:docker2")
    assert_no_change(two, hosts=("docker1", "docker2"))
    record("site.yml no-op, 3 hosts, forks 1", serial)
    record("site.yml no-op, 2 hosts (forks 5)", two)


def _move(data):
    tenants = data["tenant_network_tenants"]
    moving = next(t for t in tenants if t["name"] == MOVING)
    tenants.remove(moving)
    _move.entry = moving


def _arrive(data):
    data["tenant_network_tenants"].append(_move.entry)


def test_limit_to_one_host_changes_nothing_on_the_others(fleet):
    """The move is edited into host_vars of docker1 and docker2, but only docker3 runs."""
    before = {
        host: (fleet.read(host, "/etc/nsproxy/main.json"), sorted(fleet.netns(host)))
        for host in HOSTS
    }
    fleet.edit_host_vars(FROM, _move)
    fleet.edit_host_vars(TO, _arrive)
    run = fleet.converge(limit="docker3")
    assert_no_change(run, hosts=("docker3",))
    record("site.yml no-op, 1 host (--limit docker3)", run)
    for host in HOSTS:
        after = (fleet.read(host, "/etc/nsproxy/main.json"), sorted(fleet.netns(host)))
        assert after == before[host], f"{host} changed under --limit docker3"
    answer = fleet.ask(FROM, MOVING)
    assert answer.stdout.strip() == f"backend={FROM} tenant={MOVING} path=/who", answer.stderr


def test_a_tenant_moved_between_hosts_is_removed_from_one_and_served_by_the_other(fleet):
    """With tenant_network_exclusive (group_vars), a host removes the tenants it no longer
    lists. The other tenants of both hosts are asked all the time the run takes."""
    staying = {host: fleet.tenants_placed(host) for host in HOSTS}
    staying[TO] = [t for t in staying[TO] if t != MOVING]
    with fleet.looping_clients(staying) as reports:
        run = fleet.converge()
    for host in HOSTS:
        assert run.recap[host]["failed"] == 0
    failed = {host: len(report["failed"]) for host, report in reports.items()}
    answered = {host: sum(report["ok"].values()) for host, report in reports.items()}
    FIGURES["move: requests answered per host during the run"] = answered
    FIGURES["move: failed requests per host during the run"] = failed
    record("move: site.yml run, 3 hosts", run)
    # Removed from the old host: namespace, host link, nsproxy tenant, forwarding rule.
    assert MOVING not in fleet.netns(FROM)
    assert MOVING not in fleet.nsproxy_tenants(FROM)
    links = fleet.exec(FROM, ["ip", "-o", "link", "show"]).stdout
    assert f"tn-{MOVING}" not in links
    # Served on the new host, with its identity, by the new host's upstream.
    assert MOVING in fleet.netns(TO)
    answer = fleet.ask(TO, MOVING)
    assert answer.stdout.strip() == f"backend={TO} tenant={MOVING} path=/who", answer.stderr
    # The others never noticed.
    for host, report in reports.items():
        assert all(report["ok"][t] > 0 for t in staying[host]), report["ok"]
        assert report["failed"] == [], f"{host}: {report['failed'][:5]}"


def rolling_upgrade(fleet, handover):
    """A new nsproxy build goes out with playbooks/rolling_upgrade.yml (serial: 1) while a looping
    client per host asks every tenant of its host; the run, each host's status before and
    after, and the clients' reports."""
    before = {host: fleet.nsproxy_status(host) for host in HOSTS}
    fleet.new_build(handover)
    tenants = {host: fleet.tenants_placed(host) for host in HOSTS}
    with fleet.looping_clients(tenants) as reports:
        run = fleet.converge(
            playbook="rolling_upgrade.yml", extra={"rolling_upgrade_handover": handover}
        )
    assert sorted(run.recap) == sorted(HOSTS)
    after = {host: fleet.nsproxy_status(host) for host in HOSTS}
    for host in HOSTS:
        assert run.recap[host]["failed"] == 0
        for tenant in tenants[host]:
            answer = fleet.ask(host, tenant)
            assert answer.stdout.strip() == f"backend={host} tenant={tenant} path=/who"
    # serial: 1 -> one batch per host, in inventory order, each with its own play banner.
    batches = [line for line in run.output.splitlines() if line.startswith("PLAY [")]
    assert len(batches) == len(HOSTS), batches
    failed = {host: len(report["failed"]) for host, report in reports.items()}
    answered = {host: sum(report["ok"].values()) for host, report in reports.items()}
    FIGURES[f"rolling upgrade ({handover}): failed requests per host"] = failed
    FIGURES[f"rolling upgrade ({handover}): requests answered per host"] = answered
    record(f"rolling upgrade ({handover}): playbook run, 3 hosts", run)
    for host, report in reports.items():
        assert all(report["ok"][t] > 0 for t in tenants[host]), report["ok"]
    return before, after, reports


def test_rolling_upgrade_hands_over_in_place_one_host_at_a_time_with_no_failed_request(fleet):
    """The default handover, `upgrade` (what the nsproxy role does on a new build): on each host
    the running binder re-executes the new build with its PID and every listening socket kept,
    new workers serve and the old ones drain. No request of any looping client fails."""
    before, after, reports = rolling_upgrade(fleet, "upgrade")
    for host in HOSTS:
        assert after[host]["pid"] == before[host]["pid"], f"{host}: the binder was replaced"
        upgrades = before[host]["binder"]["upgrades"] + 1
        assert after[host]["binder"]["upgrades"] == upgrades, f"{host} was not upgraded"
        old_workers = {w["pid"] for w in before[host]["workers"]}
        assert not {w["pid"] for w in after[host]["workers"]} & old_workers
    for host, report in reports.items():
        assert report["failed"] == [], f"{host}: {report['failed'][:5]}"


def test_rolling_upgrade_by_restart_takes_one_host_down_at_a_time(fleet):
    """The fallback handover, `restart` (for a daemon without `nsproxy upgrade`): each host's
    instance stops and starts, so its requests fail for a moment (counted in the figures), the
    other hosts' never at the same time."""
    before, after, reports = rolling_upgrade(fleet, "restart")
    for host in HOSTS:
        assert after[host]["pid"] != before[host]["pid"], f"{host} was not restarted"
    # The hosts' failure windows never overlap: at most one host is down at any moment.
    windows = sorted(
        (min(f[0] for f in report["failed"]), max(f[0] for f in report["failed"]), host)
        for host, report in reports.items()
        if report["failed"]
    )
    for earlier, later in zip(windows, windows[1:]):
        assert earlier[1] < later[0], f"{earlier[2]} and {later[2]} failed at the same time"
