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
      - V(restarted) writes the config and always restarts the process (after a daemon upgrade;
        a config change alone never needs it).
      - V(absent) stops the instance and removes its config file (and, supervised, its pid and
        log files); under systemd it also disables the unit instance.
    type: str
    choices: [present, absent, started, stopped, reloaded, restarted]
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
seealso:
  - name: nsproxy role
    description: Installs the daemon and the systemd unit, and calls this module per instance.
    link: https://example.invalid/tenantnet/nsproxy
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

ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    state=dict(
        type="str",
        default="started",
        choices=["present", "absent", "started", "stopped", "reloaded", "restarted"],
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
        if state in ("started", "reloaded", "restarted"):
            actions.append("start")
        return actions
    if state == "restarted" or runtime in ("socket_moved", "unreachable"):
        actions.append("restart")
    elif content_changed or runtime == "stale" or state == "reloaded":
        actions.append("reload")
    return actions


def choose_manager(module, name, config_file, params):
    kind = params["service_manager"]
    if kind == "auto":
        kind = "systemd" if systemd_booted() else "supervised"
    elif kind == "systemd" and not systemd_booted():
        module.fail_json(
            msg="service_manager: systemd is not running as PID 1 on this host "
            "(no /run/systemd/system); use service_manager: supervised or auto"
        )
    if kind == "systemd":
        return SystemdManager(name)
    argv = [params["nsproxy_bin"], "run", "--config", config_file]
    supervisor = params["supervisor"] or os.path.join(
        os.path.dirname(params["nsproxy_bin"]), "nsproxy-supervisor"
    )
    return SupervisedManager(name, argv, params["run_dir"], params["log_dir"], supervisor)


def resolve_gid(module, group):
    """gid of config_group (-1: leave the group alone); fails naming the option if unknown."""
    gid = -1
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            if group.isdigit():
                gid = int(group)
            elif module.check_mode:
                # A role run in check mode plans the group before this task: not an error yet.
                module.warn(f"config_group: group {group!r} does not exist (yet)")
            else:
                module.fail_json(msg=f"config_group: group {group!r} does not exist on the target")
    return gid


def drain_timeout(config):
    drain = ((config or {}).get("timeouts") or {}).get("drain")
    return float(drain if drain is not None else 30) + 15


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    name, state = params["name"], params["state"]
    try:
        check_instance_name(name)
    except ConfigError as exc:
        module.fail_json(msg=str(exc))

    path = config_path(params["config_dir"], name)
    admin_socket = params["admin_socket"] or os.path.join(params["run_dir"], f"{name}.sock")
    cli = NsproxyCli(params["nsproxy_bin"])
    manager = choose_manager(module, name, path, params)
    result = dict(
        changed=False,
        config_file=path,
        actions=[],
        service_manager=manager.kind,
        running=False,
    )

    old_bytes, old_config = read_existing(path)
    broken = old_bytes is not None and old_config is None

    # -- want ----------------------------------------------------------------------------
    new_config, new_bytes = None, None  # absent, or stopped without any config
    if state == "absent":
        pass
    elif params["tenants"] is not None:
        try:
            new_config = build_config(
                name,
                params["tenants"],
                admin_socket,
                metrics=params["metrics"],
                access_log=params["access_log"],
                limits=params["limits"],
                timeouts=params["timeouts"],
            )
        except ConfigError as exc:
            module.fail_json(msg=str(exc), **result)
        new_bytes = render(new_config)
        if old_config == new_config:
            new_bytes = old_bytes  # same content, other formatting: keep the file as it is
    elif old_bytes is not None:
        new_config, new_bytes = old_config, old_bytes
    elif state != "stopped":
        module.fail_json(
            msg=f"tenants: required, because {path} does not exist yet "
            "(give the tenant list; [] is allowed)",
            **result,
        )

    # -- have ----------------------------------------------------------------------------
    gid = resolve_gid(module, params["config_group"])
    content_changed = new_bytes is not None and new_bytes != old_bytes
    attrs_changed = (
        new_bytes is not None
        and not content_changed
        and file_attributes_differ(path, CONFIG_MODE, -1, gid)
    )
    running = manager.running()
    old_socket = (old_config or {}).get("admin_socket") or admin_socket
    new_socket = (new_config or {}).get("admin_socket") or admin_socket
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

    sockets = (old_socket, new_socket)

    # -- plan ----------------------------------------------------------------------------
    actions = plan_actions(
        state, old_bytes is not None, running, content_changed, attrs_changed, runtime
    )
    if manager.kind == "systemd":
        want_enabled = False if state == "absent" else params["enabled"]
        if want_enabled is not None and manager.installed() and manager.enabled() != want_enabled:
            actions.append("enable" if want_enabled else "disable")
    result["actions"] = actions
    result["changed"] = bool(actions)
    result["tenant_changes"] = tenant_changes(old_config, new_config)
    if new_bytes is not None:
        result["config_digest"] = digest(new_bytes)
    if module._diff and (content_changed or state == "absent" and old_bytes is not None):
        result["diff"] = diff_entries(path, old_config, new_config, broken=broken)

    # -- validate (also in check mode: a plan the daemon would refuse is an error) ---------
    if content_changed:
        if not cli.available():
            if not module.check_mode:
                module.fail_json(
                    msg=f"nsproxy_bin: {params['nsproxy_bin']} is not installed or not "
                    "executable; install the daemon with the tenantnet.nsproxy.nsproxy role "
                    "or point nsproxy_bin at it",
                    **result,
                )
            module.warn(f"{params['nsproxy_bin']} is not installed: the config was not validated")
        else:
            problems = validate(module, cli, new_bytes, path)
            if problems:
                module.fail_json(
                    msg="nsproxy check refused the config (nothing was changed): "
                    + "; ".join(problems),
                    problems=problems,
                    **result,
                )

    if module.check_mode:
        result["running"] = running
        module.exit_json(**result)

    # -- apply ---------------------------------------------------------------------------
    try:
        apply(
            module, manager, cli, actions, (path, old_bytes, new_bytes, gid), sockets, result, live
        )
    except (ServiceError, OSError) as exc:
        hint = manager.failure_hint()
        msg = (
            str(exc) if isinstance(exc, ServiceError) else f"{exc.filename or path}: {exc.strerror}"
        )
        module.fail_json(msg=msg + (f"\nlast log lines:\n{hint}" if hint else ""), **result)

    # -- report --------------------------------------------------------------------------
    result["running"] = manager.running()
    if result["running"]:
        status = cli.status(new_socket) if cli.available() else None
        if status is not None:
            result["generation"] = status.get("generation")
            result["tenants"] = listener_report(status)
        daemon_pid = manager.pid() or (status or {}).get("pid")
        if daemon_pid:
            result["pid"] = daemon_pid
    module.exit_json(**result)


def validate(module, cli, data, path):
    """Run `nsproxy check` on exactly these bytes: next to the target file when it can be
    written there (same directory, same relative paths), else in the module's tmpdir."""
    directory = os.path.dirname(path)
    if module.check_mode or not os.path.isdir(directory):
        directory = module.tmpdir
    candidate = os.path.join(directory, f".{os.path.basename(path)}.check")
    with open(candidate, "wb") as handle:
        handle.write(data)
    try:
        return cli.check(candidate)
    finally:
        os.unlink(candidate)


def apply(module, manager, cli, actions, files, sockets, result, live):
    """Carry out the plan; a refused reload restores the previous file."""
    path, old_bytes, new_bytes, gid = files
    old_socket, socket_path = sockets
    timeout = module.params["wait_timeout"]
    stop_timeout = drain_timeout(read_config_bytes(old_bytes))
    for action in actions:
        if action == "write_config":
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            write_atomic(path, new_bytes, CONFIG_MODE, -1, gid)
        elif action == "remove_config":
            os.unlink(path)
            manager.forget()
        elif action == "stop":
            manager.stop(timeout=stop_timeout)
        elif action in ("start", "restart"):
            if action == "restart":
                manager.stop(timeout=stop_timeout)
            manager.start()
            status = wait_for_config(cli, socket_path, digest(new_bytes), timeout, manager.running)
            result["generation"] = status.get("generation")
        elif action == "reload":
            previous_generation = (live or {}).get("generation")
            ok, output = cli.reload(old_socket)
            if not ok:
                restore(path, old_bytes, gid)
                module.fail_json(
                    msg="nsproxy refused the new configuration; the running instance keeps "
                    f"its previous one and {path} was restored: {output}",
                    **result,
                )
            status = wait_for_config(cli, socket_path, digest(new_bytes), timeout, manager.running)
            if (
                previous_generation is not None
                and status.get("generation") is not None
                and status["generation"] <= previous_generation
            ):
                raise ServiceError(
                    f"nsproxy reported generation {status['generation']} after the reload, "
                    f"not newer than {previous_generation}"
                )
            result["generation"] = status.get("generation")
        elif action in ("enable", "disable"):
            manager.set_enabled(action == "enable")


def restore(path, old_bytes, gid):
    if old_bytes is None:
        os.unlink(path)
    else:
        write_atomic(path, old_bytes, CONFIG_MODE, -1, gid)


def read_config_bytes(data):
    """The parsed config in data (None when absent or not a JSON object)."""
    if data is None:
        return None
    try:
        parsed = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return parsed if isinstance(parsed, dict) else None


if __name__ == "__main__":
    main()
