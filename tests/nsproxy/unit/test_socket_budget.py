"""The binder's budget of upstream sockets (binder/socket_budget.py): one tenant cannot use up
what its worker's other tenants need, the worker as a whole stays bounded, and each second
starts again. The clock is the module's, set by the test."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nsproxy.binder import socket_budget
from nsproxy.binder.socket_budget import FLOOR, PER_TENANT, PER_WORKER, SocketBudget


def ask(budget: SocketBudget, pid: int, tenant: str, count: int) -> bool:
    """As need_sockets does: spend what was allowed."""
    if not budget.allows(pid, tenant, count):
        return False
    budget.spend(pid, tenant, count)
    return True


def test_one_tenant_using_its_share_leaves_the_others_theirs(monkeypatch):
    monkeypatch.setattr(socket_budget.time, "monotonic", lambda: 100.5)
    budget = SocketBudget()
    granted = sum(64 for _ in range(1000) if ask(budget, 7, "greedy", 64))
    assert granted <= PER_TENANT
    assert not ask(budget, 7, "greedy", 64)
    assert ask(budget, 7, "quiet", 64)  # (one budget per worker and second used to refuse it)
    assert ask(budget, 8, "greedy", 64)  # another worker's budget is its own


@given(asks=st.lists(st.tuples(st.integers(0, 9), st.integers(1, 64)), max_size=600))
def test_no_tenant_gets_past_its_share_nor_the_worker_past_its_total(asks):
    clock = [50.0]
    socket_budget.time.monotonic, saved = (lambda: clock[0]), socket_budget.time.monotonic
    try:
        budget = SocketBudget()
        made: dict[str, int] = {}
        for tenant_number, count in asks:
            tenant = f"t{tenant_number}"
            if ask(budget, 1, tenant, count):
                made[tenant] = made.get(tenant, 0) + count
        assert all(n <= PER_TENANT for n in made.values())
        assert sum(made.values()) <= PER_WORKER + FLOOR * len(made)
        clock[0] += 1.0  # the next second: everyone may ask again
        assert ask(budget, 1, "t0", 64)
    finally:
        socket_budget.time.monotonic = saved


def test_tenants_that_took_the_whole_worker_budget_leave_every_other_its_floor(monkeypatch):
    """Four tenants at their share each take (nearly) all of the worker's budget: a fifth
    still gets FLOOR sockets that second (it used to get 32)."""
    monkeypatch.setattr(socket_budget.time, "monotonic", lambda: 7.0)
    budget = SocketBudget()
    for tenant in ("g1", "g2", "g3", "g4"):
        while ask(budget, 1, tenant, 64):
            pass
    assert budget.used[1, None] > PER_WORKER - 64
    granted = 0
    while ask(budget, 1, "late", 64):
        granted += 64
    assert FLOOR - 64 < granted <= FLOOR
