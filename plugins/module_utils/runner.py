# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The spine every module of the collection runs on (after ansible.netcommon's ResourceModule
and kubernetes.core's k8s runner): a module hands ``run`` its *want* (validate and normalise the
parameters), *have* (read the system), *plan* (want + have -> Plan and DiffTracker) and, when it
changes more than kernel objects, its own *apply*; the runner does the rest once for all:

- check mode: the plan is computed the same way and never applied; an object the call refers to
  that does not exist yet (a namespace, a master, a port, a parent) is what an earlier task of
  the same play would create, so it is predicted with a warning instead of failing
  (``Context.missing``, and namespaces through ``Context.netns``);
- apply: the plan's actions in order (``executor.execute`` for kernel objects); a failure undoes
  what the failing unit created (``Rollback``) and says what could not be undone;
- result: ``changed`` (the plan is not empty), ``actions``, ``differences``, ``diff`` (with
  ``--diff``), the module's resulting objects; every ``ModuleFailure`` becomes ``fail_json``
  with its sentence, warnings become ``module.warn``.
"""

from __future__ import annotations

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.errors import (
    ModuleFailure,
    ParamError,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.netlink import (
    NetnsSet,
    require_pyroute2,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.validation import NETNS_DIR


class Rollback:
    """A stack of undo steps for what this call created. ``push`` after each successful
    creation; on failure ``unwind`` runs them newest first and returns sentences for any undo
    step that failed itself (so the user learns what may be left over)."""

    def __init__(self):
        self._steps = []

    def push(self, description, undo):
        """Register ``undo()`` (a callable) to revert the step named by ``description``."""
        self._steps.append((description, undo))

    def __len__(self):
        return len(self._steps)

    def unwind(self):
        """Run every undo step newest first; never raises. Returns a list of failure texts."""
        failures = []
        while self._steps:
            description, undo = self._steps.pop()
            try:
                undo()
            except Exception as exc:
                text = getattr(exc, "msg", None) or str(exc)
                failures.append(f"undoing {description} failed: {text}")
        return failures

    def clear(self):
        """Forget every step (call once the whole plan succeeded)."""
        self._steps = []


def apply_plan(plan, step, rollback=None):
    """Run ``step(action)`` for every action of ``plan`` in order, unit by unit (``Plan.begin``).
    ``step`` registers undo steps on ``rollback``. If one raises ModuleFailure, unwind what
    the failing unit registered and re-raise with the undo result appended (``rolled_back``,
    ``leftovers``, ``failed_action`` and the unit's tags in the failed result); units that
    completed before stay applied."""
    rollback = rollback if rollback is not None else Rollback()
    for tags, actions in plan.units():
        try:
            for action in actions:
                step(action)
        except ModuleFailure as failure:
            undone = len(rollback)
            leftovers = rollback.unwind()
            msg = failure.msg
            if undone and not leftovers:
                msg += " Everything this call had created was removed again."
            elif leftovers:
                msg += " Cleanup was incomplete: " + "; ".join(leftovers)
            extra = dict(failure.extra)
            extra.update(tags)
            extra.update(rolled_back=undone, leftovers=leftovers, failed_action=action)
            raise ModuleFailure(msg, **extra) from None
        rollback.clear()


def build_result(module, plan, tracker, **objects):
    """The common result: ``changed`` (the plan is not empty), ``actions`` (the plan, also in
    check mode), ``differences``, ``diff`` (before/after of the keys the user set, only with
    --diff) and the resulting object(s) given as keyword arguments (which may replace
    ``actions`` or ``diff`` with a module's own rendering)."""
    result = dict(changed=bool(plan), actions=list(plan.actions))
    if getattr(module, "_diff", False):
        result["diff"] = dict(before=tracker.before, after=tracker.after)
    result["differences"] = tracker.differences
    result.update(objects)
    if not getattr(module, "_diff", False) or result.get("diff") is None:
        result.pop("diff", None)
    return result


class Context:
    """What a module's have, result and apply functions get from the runner: ``check_mode``,
    the namespaces it opened (``netns``), warnings, and ``have`` (what the have function
    returned, for apply). A namespace or another object that is missing is an error in a real
    run and a prediction in check mode."""

    def __init__(self, module, netns_dir=NETNS_DIR):
        self.module = module
        self.have = None
        self.check_mode = bool(module.check_mode)
        self.namespaces = NetnsSet(netns_dir, planning=self.check_mode)
        self._warnings = []

    def netns(self, spec, field="netns", created_here=False):
        """The open namespace ``spec`` (see ``netlink.NetnsSet.get``). In check mode, or with
        ``created_here`` (this call's plan creates it), a namespace that does not exist is a
        ``PlannedNetns``: it reads as new and empty."""
        return self.namespaces.get(spec, field, created_here=created_here)

    def missing(self, field, sentence):
        """An object the call refers to (a bridge as master, a port, a parent NIC) is missing:
        in a real run raise ParamError(field, sentence); in check mode an earlier task of the
        play may create it, so warn and let the caller plan as if it existed."""
        if not self.check_mode:
            raise ParamError(field, sentence)
        self.warn(f"{field}: {sentence}; check mode assumes an earlier task creates it")

    def warn(self, text):
        if text not in self._warnings:
            self._warnings.append(text)

    @property
    def warnings(self):
        return self._warnings + [w for w in self.namespaces.warnings if w not in self._warnings]

    def close(self):
        self.namespaces.close()


def run(module, want, have, plan, result=None, apply=None, netns_dir=None, netlink=True):
    """Run one module call through the spine and exit with its result (see the module
    docstring). ``want(params)``; ``have(ctx, want)``; ``plan(want, have)`` -> ``(Plan,
    DiffTracker)``, pure (what it needs from the system is in ``have``); ``apply(ctx,
    action, rollback)``, default the netlink executor; ``result(ctx, want, have, plan)`` ->
    dict of the resulting objects. ``netlink=False`` for calls that need no pyroute2."""
    if netlink:
        require_pyroute2(module)
    if apply is None:
        from ansible_collections.tenantnet.nsproxy.plugins.module_utils.executor import execute

        apply = execute
    ctx = Context(module, netns_dir or NETNS_DIR)
    try:
        wanted = want(module.params)
        current = ctx.have = have(ctx, wanted)
        steps, tracker = plan(wanted, current)
        if steps and not ctx.check_mode:
            rollback = Rollback()
            apply_plan(steps, lambda action: apply(ctx, action, rollback), rollback)
        objects = result(ctx, wanted, current, steps) if result else {}
        outcome = build_result(module, steps, tracker, **objects)
    except ModuleFailure as failure:
        _emit_warnings(module, ctx)
        ctx.close()
        module.fail_json(msg=failure.msg, **failure.extra)
    ctx.close()
    _emit_warnings(module, ctx)
    module.exit_json(**outcome)


def _emit_warnings(module, ctx):
    for text in ctx.warnings:
        module.warn(text)
