# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """Check and diff mode, as every module of this collection supports them."""

    DOCUMENTATION = r"""
attributes:
  check_mode:
    description: Computes the same plan as a real run, reports it, and changes nothing.
    support: full
  diff_mode:
    description: Shows the before and after values of the options that were set.
    support: full
"""
