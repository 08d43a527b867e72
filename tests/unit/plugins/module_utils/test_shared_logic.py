"""Pure logic shared by every module: normalisation (validation.py), address planning
(addresses.py), diff and plan (plan.py), rollback (runner.py), errno sentences (errors.py)."""

from __future__ import annotations

import errno
import re

import pytest

from ansible_collections.tenantnet.nsproxy.plugins.module_utils import nsproxy_config as cfg
from ansible_collections.tenantnet.nsproxy.plugins.module_utils import routes as R
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.addresses import (
    addresses_after,
    plan_addresses,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.errors import (
    ModuleFailure,
    ParamError,
    errno_sentence,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.plan import DiffTracker, Plan
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.runner import Rollback, apply_plan
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.validation import (
    netns_path,
    normalize_cidr,
    normalize_cidrs,
    normalize_link_addresses,
    normalize_mac,
    validate_ifname,
    validate_int_range,
    validate_mtu,
    validate_name,
)


def test_ifname_of_16_characters_is_refused_naming_the_field():
    with pytest.raises(ParamError) as err:
        validate_ifname("a" * 16, "peer")
    assert err.value.msg.startswith("peer: ")
    assert "at most 15" in err.value.msg


@pytest.mark.parametrize("bad", ["", "a/b", "a b", "a:b", ".", ".."])
def test_ifname_with_forbidden_characters_is_refused(bad):
    with pytest.raises(ParamError) as err:
        validate_ifname(bad, "name")
    assert err.value.field == "name"


def test_ifname_of_15_characters_is_accepted():
    assert validate_ifname("a" * 15, "name") == "a" * 15


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("AA:BB:CC:DD:EE:0F", "aa:bb:cc:dd:ee:0f"),
        ("02-00-00-00-00-01", "02:00:00:00:00:01"),
        ("020000000001", "02:00:00:00:00:01"),
    ],
)
def test_mac_is_normalised_to_lower_case_colon_form(given, expected):
    assert normalize_mac(given, "mac") == expected


@pytest.mark.parametrize(
    "bad", ["01:00:5e:00:00:01", "00:00:00:00:00:00", "zz:00:00:00:00:00", "1:2"]
)
def test_multicast_zero_and_malformed_macs_are_refused(bad):
    with pytest.raises(ParamError) as err:
        normalize_mac(bad, "peer_mac")
    assert err.value.msg.startswith("peer_mac: ")


def test_cidr_is_normalised_and_ipv6_compressed():
    assert normalize_cidr("10.0.0.2/24", "a") == "10.0.0.2/24"
    assert normalize_cidr("2001:DB8:0:0::2/64", "a") == "2001:db8::2/64"


@pytest.mark.parametrize("bad", ["10.0.0.2", "10.0.0.300/24", "10.0.0.2/33", "nonsense/8", ""])
def test_bad_cidr_is_refused_naming_the_list_entry(bad):
    with pytest.raises(ParamError) as err:
        normalize_cidrs(["10.0.0.1/24", bad], "addresses")
    assert err.value.msg.startswith("addresses[1]: ")


def test_cidr_list_drops_duplicates_after_normalisation():
    assert normalize_cidrs(["2001:db8::2/64", "2001:DB8::2/64"], "a") == ["2001:db8::2/64"]


def test_mtu_bounds():
    assert validate_mtu("9000", "mtu") == 9000
    with pytest.raises(ParamError, match="^mtu: 67 is out of range"):
        validate_mtu(67, "mtu")
    with pytest.raises(ParamError, match="^mtu: 65536 is out of range"):
        validate_mtu(65536, "mtu")


def test_int_range_names_allowed_values():
    with pytest.raises(ParamError, match="allowed: 1-4094"):
        validate_int_range(5000, "vlan_id", 1, 4094)


def test_netns_name_maps_under_run_netns_and_paths_stay():
    assert netns_path(None) is None
    assert netns_path("blue") == "/run/netns/blue"
    assert netns_path("/proc/42/ns/net") == "/proc/42/ns/net"
    assert netns_path("blue", netns_dir="/tmp/ns") == "/tmp/ns/blue"


@pytest.mark.parametrize("bad", ["a/b", "..", "a b"])
def test_relative_netns_path_is_refused(bad):
    with pytest.raises(ParamError, match="^peer_netns: "):
        netns_path(bad, "peer_netns")


def test_address_plan_adds_missing_and_keeps_extra_without_purge():
    add, remove = plan_addresses(
        ["10.0.0.1/24", "2001:db8::1/64"], ["10.0.0.1/24", "10.9.0.1/24"], False
    )
    assert add == ["2001:db8::1/64"]
    assert remove == []


def test_address_plan_with_purge_removes_unlisted():
    add, remove = plan_addresses(["10.0.0.1/24"], ["10.0.0.1/24", "10.9.0.1/24"], True)
    assert (add, remove) == ([], ["10.9.0.1/24"])
    assert addresses_after(["10.0.0.1/24"], ["10.0.0.1/24", "10.9.0.1/24"], True) == ["10.0.0.1/24"]


def test_address_plan_treats_prefix_change_as_replace():
    add, remove = plan_addresses(["10.0.0.1/16"], ["10.0.0.1/24"], True)
    assert (add, remove) == (["10.0.0.1/16"], ["10.0.0.1/24"])


def test_unmanaged_addresses_produce_no_plan():
    assert plan_addresses(None, ["10.0.0.1/24"], True) == ([], [])


def test_empty_address_list_with_purge_removes_everything():
    assert plan_addresses([], ["10.0.0.1/24"], True) == ([], ["10.0.0.1/24"])


def test_tracker_compares_only_keys_the_user_set_including_false_and_zero():
    tracker = DiffTracker()
    tracker.add("mtu", None, 1500)
    tracker.add("stp", False, True)
    tracker.add("default_pvid", 0, 1)
    tracker.add("addresses", ["b", "a"], ["a", "b"])
    assert tracker.differences == ["stp", "default_pvid"]
    assert tracker.before == {"stp": True, "default_pvid": 1, "addresses": ["a", "b"]}
    assert tracker.after == {"stp": False, "default_pvid": 0, "addresses": ["b", "a"]}
    assert tracker.changed
    assert tracker.differs("stp") and not tracker.differs("addresses")


def test_plan_is_ordered_and_serialisable():
    plan = Plan()
    assert not plan
    plan.add("link_add", ifname="v0", kind="veth")
    plan.add("link_set", ifname="v0", mtu=9000)
    assert plan.ops() == ["link_add", "link_set"]
    assert plan.actions[1] == {"op": "link_set", "ifname": "v0", "mtu": 9000}


def test_failure_half_way_undoes_created_objects_newest_first():
    done = []
    rollback = Rollback()
    plan = Plan()
    plan.add("create_a")
    plan.add("create_b")
    plan.add("break")

    def step(action):
        if action["op"] == "break":
            raise ModuleFailure("moving the peer failed")
        rollback.push(action["op"], lambda op=action["op"]: done.append("undo " + op))

    with pytest.raises(ModuleFailure) as err:
        apply_plan(plan, step, rollback)
    assert done == ["undo create_b", "undo create_a"]
    assert "removed again" in err.value.msg
    assert err.value.extra["rolled_back"] == 2
    assert err.value.extra["failed_action"] == {"op": "break"}


def test_rollback_reports_undo_steps_that_fail():
    rollback = Rollback()

    def boom():
        raise ModuleFailure("device busy")

    rollback.push("creating 'v0'", boom)
    assert rollback.unwind() == ["undoing creating 'v0' failed: device busy"]


def test_success_clears_rollback():
    rollback = Rollback()
    plan = Plan()
    plan.add("create")
    apply_plan(plan, lambda a: rollback.push("x", lambda: None), rollback)
    assert len(rollback) == 0


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.EEXIST, "already exists"),
        (errno.ENODEV, "does not exist"),
        (errno.EBUSY, "busy"),
        (errno.EPERM, "CAP_NET_ADMIN"),
        (errno.ERANGE, "out of the range"),
        (errno.EOPNOTSUPP, "does not support"),
    ],
)
def test_errno_becomes_a_sentence_with_the_action(code, words):
    text = errno_sentence(code, "creating bridge 'br0'")
    assert text.startswith("creating bridge 'br0' failed: ")
    assert words in text
    assert errno.errorcode[code] in text or "EOPNOTSUPP" in text


def test_errno_sentence_carries_kernel_extended_ack_text():
    text = errno_sentence(errno.EINVAL, "setting mtu", "mtu less than device minimum")
    assert "kernel says: mtu less than device minimum" in text
    # the plain strerror is not repeated as if it were kernel detail
    assert "kernel says" not in errno_sentence(errno.EEXIST, None, "File exists")


def test_ipv6_link_local_cannot_be_managed_on_a_link():
    with pytest.raises(ParamError, match=r"^addresses\[1\]: .*link-local"):
        normalize_link_addresses(["10.0.0.1/24", "fe80::1/64"], "addresses")
    assert normalize_link_addresses(["fd00::1/64"], "addresses") == ["fd00::1/64"]


@pytest.mark.parametrize("suffix", ["\n", "\r", "\t", "\x00", "\x1b[31m", "\x7f"])
def test_names_are_matched_whole_and_control_characters_are_refused(suffix):
    """A trailing newline (what ``$`` lets through) or any control character never reaches a
    file name, a log line or a kernel object: each is refused naming the field."""
    bad = "acme" + suffix
    for check in (
        lambda: validate_ifname(bad, "name"),
        lambda: netns_path(bad, "netns"),
        lambda: netns_path("/run/netns/" + bad, "netns"),
        lambda: validate_name(bad, "tenants[0].name", re.compile(r"[a-z]+"), "a-z"),
    ):
        with pytest.raises(ParamError) as err:
            check()
        assert err.value.msg.split(":")[0] in ("name", "netns", "tenants[0].name")
    with pytest.raises(cfg.ConfigError, match="^name: "):
        cfg.check_instance_name("main" + suffix)
    with pytest.raises(cfg.ConfigError, match=r"^tenants\[0\]\.name: .*control character"):
        cfg.check_tenants([{"name": bad}])
    with pytest.raises(R.RouteSpecError, match=r"^routes\[0\]\.dev: "):
        R.normalize_route_spec({"dst": "10.0.0.0/8", "dev": "eth0" + suffix})
