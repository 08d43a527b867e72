# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """Check and diff mode, as every module of this collection supports them, and the action
    group of the modules that change objects inside one namespace."""

    DOCUMENTATION = r"""
attributes:
  check_mode:
    description:
      - Computes the same plan as a real run, reports it, and changes nothing.
      - An object the task refers to that does not exist yet (a namespace, a bridge given as
        master, a port, a parent interface) is taken to be what an earlier task of the play
        creates; the module predicts its changes as into a new, empty object and warns,
        instead of failing.
    support: full
  diff_mode:
    description: Shows the before and after values of the options that were set.
    support: full
"""

    NETLINK = r"""
attributes:
  action_group:
    description:
      - Use C(group/tenantnet.nsproxy.netlink) in C(module_defaults) to set defaults (for
        example C(netns)) for every module that changes objects inside one namespace.
    support: full
    membership:
      - tenantnet.nsproxy.netlink
"""
