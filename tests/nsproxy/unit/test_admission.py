"""The admission policy: budget from the descriptor limit, fair shares under pressure, and
eviction of an idle connection of the tenant furthest over its share."""

from __future__ import annotations

import resource

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nsproxy.admission import EVICTION_SCAN, PRESSURE, STALLED_AFTER, Admission


class Tenant:
    def __init__(self, name):
        self.name = name
        self.active = 0
        self.closing = False
        self.connections = set()

    @property
    def local(self):  # one process: its count is the count
        return self.active


class Connection:
    """``stalled``: seconds its client has held up the proxy's writes (http/client.py)."""

    def __init__(self, tenant, evictable, stalled=0.0):
        self.tenant = tenant
        self._evictable = evictable
        self.stalled = stalled
        self.evicted = False
        self.was_cut = False
        tenant.connections.add(self)

    def evictable(self):
        return self._evictable and not self.evicted

    def evict(self):
        self.evicted = True

    def closing(self):
        return self.evicted or self.was_cut

    def waiting(self):
        return False

    def stalled_for(self):
        return 0.0 if self.evicted or self.was_cut else self.stalled

    def cut(self):
        self.was_cut = True


def admission(budget=100, per_tenant=1000):
    a = Admission()
    a.configure({"max_connections": budget, "max_connections_per_tenant": per_tenant}, 0)
    return a


def fill(a, tenant, n, evictable=True):
    for _ in range(n):
        assert a.admit(tenant) is None
        Connection(tenant, evictable)


def test_the_budget_follows_the_descriptor_limit_and_the_configured_maximum():
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    a = Admission()
    a.configure({"max_connections": None, "max_connections_per_tenant": 10}, 100)
    assert a.budget == min(65536, max(16, (soft - 100) // 2))
    a.configure({"max_connections": 50, "max_connections_per_tenant": 10}, 100)
    assert a.budget == min(50, a.budget)


def test_below_pressure_only_the_per_tenant_cap_applies():
    a = admission(budget=100, per_tenant=10)
    t = Tenant("a")
    fill(a, t, 10)
    assert a.admit(t) == "max_connections_per_tenant reached"


def test_under_pressure_a_tenant_over_its_share_is_refused_and_one_under_it_admitted():
    a = admission(budget=100)
    heavy, light = Tenant("heavy"), Tenant("light")
    fill(a, light, 1)
    fill(a, heavy, int(100 * PRESSURE) - 1)  # the budget is now 90 % used
    assert a.admit(heavy) == "its fair share (50) of the connection budget (100) reached"
    fill(a, light, 5)


def test_at_the_budget_an_idle_connection_of_the_heaviest_tenant_makes_room():
    a = admission(budget=100)
    heavy, light = Tenant("heavy"), Tenant("light")
    fill(a, heavy, 100)
    assert a.admit(light) is None
    assert sum(c.evicted for c in heavy.connections) == 1


def test_without_an_idle_or_stalled_connection_one_of_the_heavy_tenants_others_is_cut():
    """Exchanges that wait on the heavy tenant's own upstream (a long poll, a slow answer) are
    neither idle nor stalled; the tenant under its share is admitted all the same."""
    a = admission(budget=100)
    heavy, light = Tenant("heavy"), Tenant("light")
    fill(a, heavy, 100, evictable=False)
    for conn in heavy.connections:
        conn.stalled = STALLED_AFTER / 2  # a fast download, writes backed up for a moment
    assert a.admit(light) is None
    assert sum(c.was_cut for c in heavy.connections) == 1


def test_an_eviction_looks_at_a_bounded_number_of_connections():
    a = admission(budget=2000, per_tenant=2000)
    heavy, light = Tenant("heavy"), Tenant("light")
    fill(a, heavy, a.budget, evictable=False)
    looked = []
    for conn in heavy.connections:
        conn.stalled_for = lambda conn=conn: looked.append(conn) or 0.0
    assert a.admit(light) is None
    assert len(looked) <= EVICTION_SCAN


@settings(max_examples=200, deadline=None)
@given(
    kinds=st.lists(
        st.tuples(st.booleans(), st.sampled_from([0.0, STALLED_AFTER / 2, STALLED_AFTER, 60.0])),
        min_size=4,
        max_size=30,
    ),
    light_holds=st.integers(min_value=0, max_value=3),
)
def test_at_the_budget_room_is_made_from_an_idle_connection_first_then_a_stalled_one(
    kinds, light_holds
):
    """A tenant alone fills the budget (its share is then all of it), with connections that
    are idle or not, and whose clients hold up their exchange or not; another arrives. It is
    admitted by closing exactly one of the heavy tenant's connections: an idle one if there is
    one, else one stalled for STALLED_AFTER, else any; never one of its own."""
    budget = len(kinds) + light_holds
    a = admission(budget=budget)
    heavy, light = Tenant("heavy"), Tenant("light")
    for evictable, stalled in kinds:
        assert a.admit(heavy) is None
        Connection(heavy, evictable, stalled)
    for _ in range(light_holds):
        if a.admit(light) is None:
            Connection(light, False, 60.0)
    light_before = set(light.connections)
    share = a.share(light)
    assume(a.total >= a.budget and light.local < share < heavy.local)  # the case in question
    answer = a.admit(light)
    closed = [c for c in heavy.connections if c.evicted or c.was_cut]
    idle = any(e for e, _ in kinds)
    stalled = any(s >= STALLED_AFTER for _, s in kinds)
    assert answer is None, answer
    (victim,) = closed
    if idle:
        assert victim.evicted
    elif stalled:
        assert victim.was_cut and victim.stalled >= STALLED_AFTER
    else:
        assert victim.was_cut
    assert not any(c.evicted or c.was_cut for c in light_before)


@pytest.mark.parametrize("holders", [2, 3, 10])
def test_every_tenant_can_reach_its_share(holders):
    a = admission(budget=120)
    tenants = [Tenant(str(i)) for i in range(holders)]
    fill(a, tenants[0], 120)
    for t in tenants[1:]:
        while a.admit(t) is None:
            Connection(t, True)
            # evicted connections give their slot back as they close, and are forgotten
            for owner in tenants:
                for victim in [c for c in owner.connections if c.evicted]:
                    owner.connections.discard(victim)
                    a.leave(owner)
    share = 120 // holders
    assert all(t.active >= share - 1 for t in tenants[1:]), [t.active for t in tenants]


def test_a_closing_tenant_gets_no_new_connection():
    a = admission()
    t = Tenant("a")
    t.closing = True
    assert a.admit(t) == "the tenant is being removed"
