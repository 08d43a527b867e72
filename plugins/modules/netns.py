#!/usr/bin/python
# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: netns
short_description: Create, name (attach) or remove a network namespace, including a container's
version_added: "0.1.0"
description:
  - Without a target, creates a new empty network namespace named O(name) under O(netns_dir)
    (like C(ip netns add)).
  - With a target (O(pid), O(path) or O(container)), gives the existing namespace of that
    target the name O(name) (like C(ip netns attach)), so other modules can refer to it
    by that name in their C(netns) option.
  - A container is resolved through the Docker Engine API on its unix socket (O(docker_host));
    the docker CLI is not needed. Its sandbox path (C(/var/run/docker/netns/ID)) is preferred
    over C(/proc/PID/ns/net).
  - When the name already points at a different namespace (the container restarted and got a
    new one), the name is re-attached to the current one. The namespace is compared by inode.
  - O(state=absent) removes only the name (an unmount). A container or process that uses the
    namespace keeps it, untouched.
  - Brings the loopback interface up unless O(loopback_up=false).
author:
  - tenantnet developers (@tenantnet)
requirements:
  - pyroute2 0.7 or later (Debian 12 python3-pyroute2, or 0.9.x from PyPI) on the managed host
  - root (CAP_SYS_ADMIN for mounts and setns, CAP_NET_ADMIN)
options:
  name:
    description:
      - Name of the namespace, a file name under O(netns_dir) (no C(/) or whitespace).
    type: str
    required: true
  state:
    description:
      - V(present) creates or attaches the name, V(absent) removes the name.
    type: str
    choices: [present, absent]
    default: present
  pid:
    description:
      - Attach the network namespace of this process.
      - Mutually exclusive with O(path) and O(container).
    type: int
  path:
    description:
      - Attach the network namespace at this absolute path, e.g. C(/proc/1234/ns/net) or a
        Docker sandbox C(/var/run/docker/netns/1a2b3c4d5e6f).
      - Mutually exclusive with O(pid) and O(container).
    type: path
  container:
    description:
      - Attach the network namespace of this running Docker container (name or id).
      - Containers on the host network (C(--network host)) are refused, because their
        namespace is the host's own.
      - Mutually exclusive with O(pid) and O(path).
    type: str
  docker_host:
    description:
      - The Docker Engine API socket used to resolve O(container).
    type: str
    default: unix:///run/docker.sock
  netns_dir:
    description:
      - Directory holding namespace names (iproute2 uses C(/run/netns)).
    type: path
    default: /run/netns
  loopback_up:
    description:
      - Bring C(lo) up inside the namespace (a new namespace starts with C(lo) down).
    type: bool
    default: true
notes:
  - Check mode computes the exact plan (returned as RV(actions)) and changes nothing.
  - Diff mode shows before and after (exists, inode, loopback).
  - A name keeps its namespace alive even after the container stopped; re-run the task (or
    remove the name) after container restarts.
seealso:
  - module: tenantnet.nsproxy.veth
  - module: tenantnet.nsproxy.bridge
extends_documentation_fragment: [tenantnet.nsproxy.attributes]
"""

EXAMPLES = r"""
- name: A new tenant namespace with lo up
  tenantnet.nsproxy.netns:
    name: acme

- name: Name the namespace of container web1 (re-attaches after a restart)
  tenantnet.nsproxy.netns:
    name: web1
    container: web1

- name: Name a process's namespace
  tenantnet.nsproxy.netns:
    name: legacy
    pid: 4242

- name: Remove only the name; the container keeps its namespace
  tenantnet.nsproxy.netns:
    name: web1
    state: absent
"""

RETURN = r"""
actions:
  description: The planned operations, in order (also in check mode).
  returned: always
  type: list
  elements: dict
  sample: [{"op": "netns_attach", "path": "/run/netns/web1",
            "source": "/var/run/docker/netns/1a2b3c4d5e6f"}, {"op": "loopback_up"}]
differences:
  description: Keys whose current value differed from the wanted one.
  returned: always
  type: list
  elements: str
  sample: ["inode"]
inode:
  description: Inode of the namespace the name points to after the call (null if absent).
  returned: always
  type: int
  sample: 4026532321
target:
  description: The attached target, when one was given.
  returned: when O(state=present) and a target was given
  type: dict
  sample: {"container": "web1", "container_id": "0f1e...", "pid": 4242,
           "source": "/var/run/docker/netns/1a2b3c4d5e6f", "inode": 4026532321,
           "loopback": "up"}
netns:
  description: The namespace after the call; C(path) is where the name lives.
  returned: always
  type: dict
  sample: {"name": "web1", "path": "/run/netns/web1", "exists": true, "inode": 4026532321,
           "loopback": "up"}
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.docker_api import (
    DEFAULT_DOCKER_HOST,
    container_netns,
    docker_socket_path,
    inspect_container,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.errors import (
    ModuleFailure,
    ParamError,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.namespace import plan_namespace
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.netlink import (
    is_netns_file,
    loopback_state,
    namespace_state,
    netns_inode,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.plan import DiffTracker, Plan
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.runner import run
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.validation import (
    NETNS_DIR,
    netns_path,
    refuse_control_characters,
)

ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    pid=dict(type="int"),
    path=dict(type="path"),
    container=dict(type="str"),
    docker_host=dict(type="str", default=DEFAULT_DOCKER_HOST),
    netns_dir=dict(type="path", default=NETNS_DIR),
    loopback_up=dict(type="bool", default=True),
)
MUTUALLY_EXCLUSIVE = [("pid", "path", "container")]


def build_want(params):
    """Validate the user's input (before anything is touched) and return the wanted state."""
    netns_dir = params["netns_dir"]
    if not str(netns_dir).startswith("/"):
        raise ParamError("netns_dir", f"'{netns_dir}' must be an absolute directory path")
    name = params["name"]
    if name.startswith("/"):
        raise ParamError("name", f"'{name}' must be a plain name, not a path (see netns_dir)")
    path = netns_path(name, "name", netns_dir)
    if params["pid"] is not None and params["pid"] <= 0:
        raise ParamError("pid", f"{params['pid']} is not a process id (a positive integer)")
    if params["path"] is not None:
        refuse_control_characters(params["path"], "path")
        if not params["path"].startswith("/"):
            raise ParamError("path", f"'{params['path']}' must be an absolute path")
    if params["container"] is not None:
        docker_socket_path(params["docker_host"])
        if not params["container"].strip():
            raise ParamError("container", "a container name or id is required")
        refuse_control_characters(params["container"], "container")
    return dict(
        name=name,
        path=path,
        state=params["state"],
        pid=params["pid"],
        source_path=params["path"],
        container=params["container"],
        docker_host=params["docker_host"],
        loopback_up=params["loopback_up"],
    )


def resolve_target(want):
    """The namespace to attach, as a dict (source path, inode, pid/container details), or None
    when no target was given. A target that does not exist raises ParamError."""
    if want["pid"] is not None:
        source = f"/proc/{want['pid']}/ns/net"
        if not os.path.exists(f"/proc/{want['pid']}"):
            raise ParamError("pid", f"there is no process with pid {want['pid']}")
        target = dict(pid=want["pid"], source=source)
    elif want["source_path"] is not None:
        source = want["source_path"]
        if not is_netns_file(source):
            raise ParamError(
                "path", f"'{source}' is not a network namespace (missing, or a stale file)"
            )
        target = dict(source=source)
    elif want["container"] is not None:
        socket_path = docker_socket_path(want["docker_host"])
        doc = inspect_container(socket_path, want["container"])
        pid, sandbox, container_id, cname = container_netns(doc)
        source = sandbox if sandbox and is_netns_file(sandbox) else f"/proc/{pid}/ns/net"
        target = dict(container=cname, container_id=container_id, pid=pid, source=source)
    else:
        return None
    target["inode"] = netns_inode(target["source"])
    if target["inode"] is None:
        raise ParamError(
            "container" if want["container"] else ("pid" if want["pid"] else "path"),
            f"{target['source']} is not a network namespace",
        )
    target["loopback"] = loopback_state(target["source"])
    return target


def read_have(ctx, want):
    """The name as it is (``netlink.namespace_state``) and the resolved attach target. In
    check mode a target that does not exist yet (a process, a path, a container an earlier
    task starts) is a warning and a target to attach, whatever it will be."""
    target = None
    if want["state"] == "present":
        try:
            target = resolve_target(want)
        except ModuleFailure as failure:
            if not ctx.check_mode:
                raise
            ctx.warn(f"{failure.msg}; check mode assumes an earlier task creates it")
            source = want["source_path"] or (
                f"/proc/{want['pid']}/ns/net" if want["pid"] else f"container {want['container']}"
            )
            target = dict(source=source, inode=None, loopback=None, planned=True)
    return dict(name=namespace_state(want["path"]), target=target)


def build_plan(want, have, target):
    """want + have (+ resolved target, with its lo state) -> (plan, tracker). Pure: no kernel
    access, same result in check mode."""
    plan, tracker = Plan(), DiffTracker()
    plan_namespace(plan, tracker, want, have, target)
    return plan, tracker


def read_result(ctx, want, have, plan):
    now = have["name"] if ctx.check_mode else namespace_state(want["path"])
    netns = dict(
        name=want["name"],
        path=want["path"],
        exists=now["exists"],
        inode=now["inode"],
        loopback=now["loopback"],
    )
    # No top-level "path": AnsibleModule would add file attributes (mode, owner) for it.
    result = dict(netns=netns, inode=now["inode"])
    if have["target"] is not None:
        result["target"] = have["target"]
    return result


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        mutually_exclusive=MUTUALLY_EXCLUSIVE,
        supports_check_mode=True,
    )
    run(
        module,
        want=build_want,
        have=read_have,
        plan=lambda want, have: build_plan(want, have["name"], have["target"]),
        result=read_result,
    )


if __name__ == "__main__":
    main()
