#!/usr/bin/python
# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nsproxy_instance
short_description: Manage one named nsproxy instance (config file, service, reload)
description:
  - Renders the config file C(<config_dir>/<name>.json) of one nsproxy instance from the
    tenant list and global settings, validates it with the installed C(nsproxy check) on the
    target (so the module and the daemon cannot disagree), and writes it atomically (temporary
    file, fsync, rename) with mode C(0640).
  - Reloads a running instance only when its config changed, and waits until
    C(nsproxy status) reports the new config digest. A reload the daemon refuses fails the task
    with the daemon's reason, restores the previous file and leaves the running instance as it
    was.
  - A start or restart with a changed config that does not come up (the daemon exits, or never
    reports the new digest within O(wait_timeout)) fails the task saying so; the previous file
    is restored (removed, if there was none) and, when the instance ran before, it is started
    again with that file.
  - Under systemd (PID 1) it drives the template unit C(nsproxy@<name>.service) installed by the
    C(tenantnet.nsproxy.nsproxy) role. Without systemd (containers, CI) it runs the instance as
    a supervised background process with a pid file in O(run_dir) and a log file in O(log_dir),
    under the supervisor program the role installs (O(supervisor)).
  - Check mode computes the plan (and still validates with C(nsproxy check) when it is
    installed). Diff mode shows the change per tenant (added, removed, changed) and for the
    global settings, not the whole file.
version_added: 0.1.0
author:
  - tenantnet developers (@tenantnet)
options:
  name:
    description:
      - Instance name. Names the config file, the systemd unit instance C(nsproxy@<name>), the
        admin socket, the pid file and the log file.
      - 1 to 64 characters of C(a-z), C(0-9), C(_) and C(-), starting with a letter or digit.
    type: str
    required: true
  state:
    description:
      - V(present) writes the config and reloads the instance if it runs; it does not start it.
      - V(started) writes the config and makes sure the instance runs (start, or reload when
        the config changed).
      - V(stopped) writes the config when O(tenants) is given and stops the instance.
      - V(reloaded) writes the config and always reloads (starts when stopped).
      - V(restarted) writes the config and always restarts the process (a config change alone
        never needs it).
      - V(upgraded) writes the config and, when the instance runs, makes it re-execute the
        installed daemon with C(nsproxy upgrade), in the same process and without closing a
        listening socket (old workers drain while new ones serve); starts it when stopped.
        For a new daemon build.
      - V(absent) stops the instance and removes its config file (and, supervised, its pid and
        log files); under systemd it also disables the unit instance.
    type: str
    choices: [present, absent, started, stopped, reloaded, restarted, upgraded]
    default: started
  tenants:
    description:
      - The tenants, in the daemon's config shape (C(name), C(netns), C(listeners), C(routes),
        C(upstreams)); see the daemon documentation. Validated by C(nsproxy check).
      - Tenant names must be unique. The order is kept.
      - Required unless the config file exists already (then it is left as it is) or
        O(state=absent).
    type: list
    elements: dict
  metrics:
    description: Prometheus metrics endpoint in the host namespace. Omit for none.
    type: dict
    suboptions:
      listen:
        description: Address and port, for example C(127.0.0.1:9108).
        type: str
        required: true
  access_log:
    description:
      - Access log as JSON lines. C(-) for standard output (the journal under systemd, the log
        file when supervised), a path, or an empty string for none. Omit for the daemon's
        default.
    type: str
  limits:
    description: Per-request and per-tenant limits. Omitted keys take the daemon's defaults.
    type: dict
    suboptions:
      max_header_bytes:
        description: Largest request header block, in bytes.
        type: int
      max_headers:
        description: Most header fields in one request.
        type: int
      max_connections_per_tenant:
        description: Most concurrent client connections per tenant.
        type: int
      max_body_bytes:
        description: Largest request body, in bytes (daemon default is no limit).
        type: int
  timeouts:
    description: Timeouts in seconds. Omitted keys take the daemon's defaults.
    type: dict
    suboptions:
      connect:
        description: Connecting to an upstream server.
        type: float
      idle:
        description: Idle keep-alive client connection.
        type: float
      header_read:
        description: Reading a request's header block.
        type: float
      read:
        description: Waiting for data from an upstream or a client.
        type: float
      drain:
        description: Draining connections of a removed tenant or on shutdown.
        type: float
  admin_socket:
    description: Admin socket of the instance. Default C(<run_dir>/<name>.sock).
    type: path
  user:
    description:
      - The user the daemon's workers run as (they parse all traffic, with no capability).
        Omit for the daemon's default (C(nobody) when it is started as root). Never C(root).
    type: str
  workers:
    description:
      - Worker processes, each serving every tenant on its own CPU; C(auto) for one per CPU
        the daemon may run on. Omit for the daemon's default (C(auto)).
    type: str
  config_dir:
    description: Directory of the config files.
    type: path
    default: /etc/nsproxy
  config_group:
    description:
      - Group owning the config file (the service user's group, so the daemon can read it).
        Omit to leave the group as the file creation makes it.
    type: str
  nsproxy_bin:
    description: The installed C(nsproxy) command used for C(check), C(status) and C(reload).
    type: path
    default: /opt/nsproxy/bin/nsproxy
  service_manager:
    description:
      - V(systemd) drives C(nsproxy@<name>.service); V(supervised) runs a background process
        with a supervisor; V(auto) picks systemd when it is PID 1 (C(/run/systemd/system)
        exists), otherwise supervised.
    type: str
    choices: [auto, systemd, supervised]
    default: auto
  enabled:
    description:
      - Whether the instance starts at boot (systemd only; ignored when supervised). Omit to
        leave it as it is.
    type: bool
  supervisor:
    description:
      - The supervisor program of a supervised instance (restarts the daemon when it fails,
        forwards SIGTERM, SIGHUP and SIGUSR1 to it, shows as C(nsproxy-supervisor <name>) in
        ps). The C(tenantnet.nsproxy.nsproxy) role installs it.
      - Default C(nsproxy-supervisor) in the directory of O(nsproxy_bin).
    type: path
  run_dir:
    description: Directory of the admin sockets and, when supervised, the pid files.
    type: path
    default: /run/nsproxy
  log_dir:
    description: Directory of the log file of a supervised instance.
    type: path
    default: /var/log/nsproxy
  wait_timeout:
    description: Seconds to wait for a started or reloaded instance to report the new config.
    type: int
    default: 60
notes:
  - The instance runs as the service user under systemd (see the role), and as root when
    supervised.
  - The C(tenantnet.nsproxy.nsproxy) role installs the daemon and the systemd unit, and calls
    this module per instance.
extends_documentation_fragment: [tenantnet.nsproxy.attributes]
"""

EXAMPLES = r"""
- name: Serve two tenants from the instance "main"
  tenantnet.nsproxy.nsproxy_instance:
    name: main
    state: started
    config_group: nsproxy
    metrics:
      listen: 127.0.0.1:9108
    tenants:
      - name: acme
        netns: acme
        listeners:
          - {listen: "10.0.0.250:80", protocol: http}
        routes:
          - {host: "*", path_prefix: /, upstream: shared}
        upstreams:
          shared: {netns: null, servers: ["127.0.0.1:8080"]}
      - name: globex
        netns: globex
        listeners:
          - {listen: "10.0.0.250:80", protocol: http}
        routes:
          - {host: "*", path_prefix: /, upstream: shared}
        upstreams:
          shared: {netns: null, servers: ["127.0.0.1:8080"]}

- name: Stop it and remove its config
  tenantnet.nsproxy.nsproxy_instance:
    name: main
    state: absent
"""

RETURN = r"""
config_file:
  description: Path of the instance's config file.
  returned: always
  type: str
  sample: /etc/nsproxy/main.json
config_digest:
  description: sha256 of the config file bytes (what the daemon reports as config_digest).
  returned: when the instance has a config
  type: str
actions:
  description: What was done (or would be done in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: [write_config, reload]
tenant_changes:
  description: Tenants added, removed and changed (with the changed fields), and the global
    settings that changed.
  returned: always
  type: dict
  sample: {added: [globex], removed: [], changed: [{name: acme, fields: [routes]}], settings: []}
service_manager:
  description: V(systemd) or V(supervised).
  returned: always
  type: str
running:
  description: Whether the instance runs after the task.
  returned: always
  type: bool
pid:
  description: pid of the daemon process, when it runs.
  returned: when running
  type: int
generation:
  description: The daemon's config generation after the task.
  returned: when running
  type: int
tenants:
  description: The running instance's tenants with their listeners' state (V(bound),
    V(waiting) for the namespace, or V(error) with the reason).
  returned: when running
  type: list
  elements: dict
  sample:
    - name: acme
      netns: acme
      state: serving
      last_error: null
      listeners: [{listen: "10.0.0.250:80", protocol: http, state: bound, error: null}]
"""

import grp
import json
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.errors import ModuleFailure
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.nsproxy_config import (
    CONFIG_MODE,
    ConfigError,
    build_config,
    check_instance_name,
    config_path,
    diff_entries,
    digest,
    file_attributes_differ,
    read_existing,
    render,
    tenant_changes,
    write_atomic,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.nsproxy_service import (
    NsproxyCli,
    ServiceError,
    SupervisedManager,
    SystemdManager,
    listener_report,
    systemd_booted,
    wait_for_config,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.plan import DiffTracker, Plan
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.runner import run

ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    state=dict(
        type="str",
        default="started",
        choices=["present", "absent", "started", "stopped", "reloaded", "restarted", "upgraded"],
    ),
    tenants=dict(type="list", elements="dict"),
    metrics=dict(type="dict", options=dict(listen=dict(type="str", required=True))),
    access_log=dict(type="str"),
    limits=dict(
        type="dict",
        options=dict(
            max_header_bytes=dict(type="int"),
            max_headers=dict(type="int"),
            max_connections_per_tenant=dict(type="int"),
            max_body_bytes=dict(type="int"),
        ),
    ),
    timeouts=dict(
        type="dict",
        options=dict(
            connect=dict(type="float"),
            idle=dict(type="float"),
            header_read=dict(type="float"),
            read=dict(type="float"),
            drain=dict(type="float"),
        ),
    ),
    admin_socket=dict(type="path"),
    user=dict(type="str"),
    workers=dict(type="str"),
    config_dir=dict(type="path", default="/etc/nsproxy"),
    config_group=dict(type="str"),
    nsproxy_bin=dict(type="path", default="/opt/nsproxy/bin/nsproxy"),
    service_manager=dict(type="str", default="auto", choices=["auto", "systemd", "supervised"]),
    supervisor=dict(type="path"),
    enabled=dict(type="bool"),
    run_dir=dict(type="path", default="/run/nsproxy"),
    log_dir=dict(type="path", default="/var/log/nsproxy"),
    wait_timeout=dict(type="int", default=60),
)


def plan_actions(state, exists, running, content_changed, attrs_changed, runtime):
    """The ordered actions that take the instance from what is to what is wanted.

    runtime describes the running daemon: "current" (it runs the file's config), "stale"
    (another digest), "socket_moved" (the admin socket changes), "unreachable" (runs but does
    not answer) or None (not running)."""
    actions = []
    if state == "absent":
        if running:
            actions.append("stop")
        if exists:
            actions.append("remove_config")
        return actions
    if content_changed or attrs_changed:
        actions.append("write_config")
    if state == "stopped":
        if running:
            actions.append("stop")
        return actions
    if not running:
        if state in ("started", "reloaded", "restarted", "upgraded"):
            actions.append("start")
        return actions
    if state == "restarted" or runtime in ("socket_moved", "unreachable"):
        actions.append("restart")
    elif state == "upgraded":
        actions.append("upgrade")  # the new binder reads the (new) config file itself
    elif content_changed or runtime == "stale" or state == "reloaded":
        actions.append("reload")
    return actions


def choose_manager(params, config_file):
    """The service manager of the instance (see the ``service_manager`` option)."""
    kind = params["service_manager"]
    if kind == "auto":
        kind = "systemd" if systemd_booted() else "supervised"
    elif kind == "systemd" and not systemd_booted():
        raise ModuleFailure(
            "service_manager: systemd is not running as PID 1 on this host "
            "(no /run/systemd/system); use service_manager: supervised or auto"
        )
    if kind == "systemd":
        return SystemdManager(params["name"])
    argv = [params["nsproxy_bin"], "run", "--config", config_file]
    supervisor = params["supervisor"] or os.path.join(
        os.path.dirname(params["nsproxy_bin"]), "nsproxy-supervisor"
    )
    return SupervisedManager(params["name"], argv, params["run_dir"], params["log_dir"], supervisor)


def resolve_gid(ctx, group):
    """gid of config_group (-1: leave the group alone; None: a group an earlier task of the
    play creates, in check mode); fails naming the option if unknown."""
    if group is None:
        return -1
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        ctx.missing("config_group", f"group {group!r} does not exist on the target")
        return None


def drain_timeout(config):
    drain = ((config or {}).get("timeouts") or {}).get("drain")
    return float(drain if drain is not None else 30) + 15


# -- want --------------------------------------------------------------------------------------


def build_want(params):
    """The instance as wanted: its name, files, and the config built from the parameters
    (None without ``tenants``: then the existing file is kept)."""
    name, state = params["name"], params["state"]
    try:
        check_instance_name(name)
    except ConfigError as exc:
        raise ModuleFailure(str(exc)) from None
    admin_socket = params["admin_socket"] or os.path.join(params["run_dir"], f"{name}.sock")
    config = None
    if state != "absent" and params["tenants"] is not None:
        try:
            config = build_config(
                name,
                params["tenants"],
                admin_socket,
                metrics=params["metrics"],
                access_log=params["access_log"],
                limits=params["limits"],
                timeouts=params["timeouts"],
                user=params["user"],
                workers=params["workers"],
            )
        except ConfigError as exc:
            raise ModuleFailure(str(exc)) from None
    return dict(
        name=name,
        state=state,
        path=config_path(params["config_dir"], name),
        admin_socket=admin_socket,
        config=config,
        params=params,
    )


# -- have --------------------------------------------------------------------------------------


def read_have(ctx, want):
    """The config on disk, the candidate config (the wanted one, or the file kept as it is)
    validated by the installed ``nsproxy check``, the service (running, reachable, its config
    digest) and the file's group."""
    params, path = want["params"], want["path"]
    cli = NsproxyCli(params["nsproxy_bin"])
    manager = choose_manager(params, path)
    try:
        old_bytes, old_config = read_existing(path)
    except ConfigError as exc:
        raise ModuleFailure(str(exc)) from None
    new_config, new_bytes = None, None  # absent, or stopped without any config
    if want["config"] is not None:
        new_config, new_bytes = want["config"], render(want["config"])
        if old_config == new_config:
            new_bytes = old_bytes  # same content, other formatting: keep the file as it is
    elif want["state"] != "absent" and old_bytes is not None:
        new_config, new_bytes = old_config, old_bytes
    elif want["state"] not in ("absent", "stopped"):
        raise ModuleFailure(
            f"tenants: required, because {path} does not exist yet "
            "(give the tenant list; [] is allowed)"
        )
    content_changed = new_bytes is not None and new_bytes != old_bytes
    gid = resolve_gid(ctx, params["config_group"])
    attrs_changed = new_bytes is not None and not content_changed
    if gid is None:  # check mode: the group does not exist yet, so an existing file changes
        attrs_changed = attrs_changed and old_bytes is not None
    else:
        attrs_changed = attrs_changed and file_attributes_differ(path, CONFIG_MODE, -1, gid)
    running = manager.running()
    old_socket = (old_config or {}).get("admin_socket") or want["admin_socket"]
    new_socket = (new_config or {}).get("admin_socket") or want["admin_socket"]
    runtime, live = None, None
    if running:
        live = cli.status(old_socket) if cli.available() else None
        if live is None:
            runtime = "unreachable"
        elif new_socket != old_socket:
            runtime = "socket_moved"
        elif new_bytes is not None and live.get("config_digest") != digest(new_bytes):
            runtime = "stale"
        else:
            runtime = "current"
    if content_changed:
        validate(ctx, cli, new_bytes, path)
    enabled = None
    if manager.kind == "systemd" and manager.installed():
        enabled = manager.enabled()
    return dict(
        cli=cli,
        manager=manager,
        old_bytes=old_bytes,
        old_config=old_config,
        new_bytes=new_bytes,
        new_config=new_config,
        broken=old_bytes is not None and old_config is None,
        content_changed=content_changed,
        attrs_changed=attrs_changed,
        gid=-1 if gid is None else gid,
        running=running,
        runtime=runtime,
        live=live,
        sockets=(old_socket, new_socket),
        enabled=enabled,
    )


def validate(ctx, cli, data, path):
    """Run `nsproxy check` on exactly these bytes (also in check mode: a plan the daemon would
    refuse is an error): next to the target file when it can be written there (same
    directory, same relative paths), else in the module's tmpdir."""
    if not cli.available():
        if not ctx.check_mode:
            raise ModuleFailure(
                f"nsproxy_bin: {cli.binary} is not installed or not executable; install the "
                "daemon with the tenantnet.nsproxy.nsproxy role or point nsproxy_bin at it"
            )
        ctx.warn(f"{cli.binary} is not installed: the config was not validated")
        return
    directory = os.path.dirname(path)
    if ctx.check_mode or not os.path.isdir(directory):
        directory = ctx.module.tmpdir
    candidate = os.path.join(directory, f".{os.path.basename(path)}.check")
    with open(candidate, "wb") as handle:
        handle.write(data)
    try:
        problems = cli.check(candidate)
    finally:
        os.unlink(candidate)
    if problems:
        raise ModuleFailure(
            "nsproxy check refused the config (nothing was changed): " + "; ".join(problems),
            problems=problems,
        )


# -- plan --------------------------------------------------------------------------------------


def build_plan(want, have):
    """want + have -> (plan, tracker): ``plan_actions`` plus enabling or disabling the unit,
    each action with what applying it needs."""
    plan = Plan()
    old_socket, new_socket = have["sockets"]
    data = have["new_bytes"]
    stop = {"timeout": drain_timeout(read_config_bytes(have["old_bytes"]))}
    wait = {"socket": new_socket, "digest": digest(data) if data is not None else None}
    details = {
        "write_config": {"path": want["path"], "data": data, "gid": have["gid"]},
        "remove_config": {"path": want["path"]},
        "stop": stop,
        "start": wait,
        "restart": dict(wait, **stop),
        "reload": dict(
            wait,
            old_socket=old_socket,
            previous_generation=(have["live"] or {}).get("generation"),
            restore={"path": want["path"], "data": have["old_bytes"], "gid": have["gid"]},
        ),
        "upgrade": dict(
            wait,
            old_socket=old_socket,
            previous_generation=(have["live"] or {}).get("generation"),
        ),
    }
    if have["content_changed"]:
        # A start or restart the new config fails puts the previous file back and, when the
        # instance ran before, starts it again with it.
        old_data = have["old_bytes"]
        previous = {
            "path": want["path"],
            "data": old_data,
            "gid": have["gid"],
            "socket": old_socket,
            "digest": digest(old_data) if old_data is not None else None,
            "was_running": have["running"],
        }
        details["start"] = dict(details["start"], previous=previous)
        details["restart"] = dict(details["restart"], previous=previous)
    for op in plan_actions(
        want["state"],
        have["old_bytes"] is not None,
        have["running"],
        have["content_changed"],
        have["attrs_changed"],
        have["runtime"],
    ):
        plan.add(op, **details[op])
    if have["manager"].kind == "systemd":
        want_enabled = False if want["state"] == "absent" else want["params"]["enabled"]
        if want_enabled is not None and have["enabled"] not in (None, want_enabled):
            plan.add("enable" if want_enabled else "disable")
    return plan, DiffTracker()


# -- apply -------------------------------------------------------------------------------------


def apply(ctx, action, rollback):
    """Carry out one action; a refused reload restores the previous file, and a start or
    restart that fails with a new config falls back to the previous one (``_fall_back``).
    Service errors become sentences with the last lines of the instance's log."""
    manager = ctx.have["manager"]
    try:
        _apply(ctx, manager, action)
    except (ServiceError, OSError) as exc:
        hint = manager.failure_hint()
        if isinstance(exc, ServiceError):
            msg = str(exc)
        else:
            msg = f"{exc.filename or action.get('path')}: {exc.strerror}"
        raise ModuleFailure(msg + (f"\nlast log lines:\n{hint}" if hint else "")) from None


def _apply(ctx, manager, action):
    op = action["op"]
    cli, timeout = ctx.have["cli"], ctx.module.params["wait_timeout"]
    if op == "write_config":
        os.makedirs(os.path.dirname(action["path"]), mode=0o755, exist_ok=True)
        write_atomic(action["path"], action["data"], CONFIG_MODE, -1, action["gid"])
    elif op == "remove_config":
        os.unlink(action["path"])
        manager.forget()
    elif op == "stop":
        manager.stop(timeout=action["timeout"])
    elif op in ("start", "restart"):
        if op == "restart":
            manager.stop(timeout=action["timeout"])
        try:
            manager.start()
            wait_for_config(cli, action["socket"], action["digest"], timeout, manager.running)
        except (ServiceError, OSError) as exc:
            if not action.get("previous"):
                raise
            _fall_back(ctx, manager, action, exc)
    elif op == "reload":
        ok, output = cli.reload(action["old_socket"])
        if not ok:
            restore(**action["restore"])
            raise ModuleFailure(
                "nsproxy refused the new configuration; the running instance keeps its "
                f"previous one and {action['restore']['path']} was restored: {output}"
            )
        _wait_for_newer(ctx, manager, action, "reload")
    elif op == "upgrade":
        ok, output = cli.upgrade(action["old_socket"])
        if not ok:
            raise ServiceError(
                f"nsproxy refused the upgrade; the running instance keeps its version: {output}"
            )
        _wait_for_newer(ctx, manager, action, "upgrade")
    elif op in ("enable", "disable"):
        manager.set_enabled(op == "enable")


def _fall_back(ctx, manager, action, exc):
    """The instance did not come up with the new config: stop what is left of it, put the
    previous file back and, if the instance ran before, start it again with that file. Always
    raises ModuleFailure saying what happened, the last lines of the log included."""
    previous = action["previous"]
    cli, timeout = ctx.have["cli"], ctx.module.params["wait_timeout"]
    hint = manager.failure_hint()
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    msg = f"nsproxy did not start with the new configuration: {reason}."
    try:
        manager.stop(timeout=action.get("timeout", drain_timeout(None)))
        restore(previous["path"], previous["data"], previous["gid"])
        if previous["data"] is None:
            msg += f" {previous['path']} was removed again (there was no previous one)"
        else:
            msg += f" The previous {previous['path']} was restored"
        if previous["was_running"] and previous["data"] is not None:
            manager.start()
            wait_for_config(cli, previous["socket"], previous["digest"], timeout, manager.running)
            msg += " and the previous instance was started again with it; it serves as before."
        else:
            msg += "; the instance stays stopped, as it was before."
    except (ServiceError, OSError) as undo:
        text = undo.strerror if isinstance(undo, OSError) and undo.strerror else str(undo)
        msg += f" Going back to the previous configuration failed too: {text}."
    if hint:
        msg += f"\nlast log lines of the failed start:\n{hint}"
    raise ModuleFailure(msg)


def _wait_for_newer(ctx, manager, action, what):
    """Wait until the instance serves the new config with a generation newer than before."""
    cli, timeout = ctx.have["cli"], ctx.module.params["wait_timeout"]
    status = wait_for_config(cli, action["socket"], action["digest"], timeout, manager.running)
    previous = action["previous_generation"]
    if previous is not None and (status.get("generation") or 0) <= previous:
        raise ServiceError(
            f"nsproxy reported generation {status.get('generation')} after the {what}, "
            f"not newer than {previous}"
        )


def restore(path, data, gid):
    """Put the previous file back (or remove the new one, if there was none)."""
    if data is None:
        os.unlink(path)
    else:
        write_atomic(path, data, CONFIG_MODE, -1, gid)


def read_config_bytes(data):
    """The parsed config in data (None when absent or not a JSON object)."""
    if data is None:
        return None
    try:
        parsed = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return parsed if isinstance(parsed, dict) else None


# -- result ------------------------------------------------------------------------------------


def read_result(ctx, want, have, plan):
    """The file, the actions by name, the per-tenant changes and diff, and the service as it
    runs after the call (with its listeners' state)."""
    result = dict(
        config_file=want["path"],
        actions=[action["op"] for action in plan],
        service_manager=have["manager"].kind,
        running=have["running"],
        tenant_changes=tenant_changes(have["old_config"], have["new_config"]),
        diff=None,
    )
    if have["new_bytes"] is not None:
        result["config_digest"] = digest(have["new_bytes"])
    removed = want["state"] == "absent" and have["old_bytes"] is not None
    if have["content_changed"] or removed:
        result["diff"] = diff_entries(
            want["path"], have["old_config"], have["new_config"], broken=have["broken"]
        )
    if ctx.check_mode:
        return result
    manager, cli = have["manager"], have["cli"]
    result["running"] = manager.running()
    if result["running"]:
        status = cli.status(have["sockets"][1]) if cli.available() else None
        if status is not None:
            result["generation"] = status.get("generation")
            result["tenants"] = listener_report(status)
        daemon_pid = manager.pid() or (status or {}).get("pid")
        if daemon_pid:
            result["pid"] = daemon_pid
    return result


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run(
        module,
        want=build_want,
        have=read_have,
        plan=build_plan,
        apply=apply,
        result=read_result,
        netlink=False,
    )


if __name__ == "__main__":
    main()
