# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What marks a kernel object as this collection's: the interface alias (IFLA_IFALIAS) set on
every link it creates. Links made for a tenant by ``tenant_network`` also name the tenant, so
that ``exclusive`` mode can tell which tenant a leftover link belonged to. Purges and deletions
touch only links that carry the tag."""

from __future__ import annotations

OWNER_TAG = "tenantnet.nsproxy"
"""Interface alias set on every link this collection creates."""

_TENANT_PREFIX = OWNER_TAG + " tenant="


def tenant_tag(tenant):
    """The alias of a link made for ``tenant``: ``tenantnet.nsproxy tenant=<name>``."""
    return _TENANT_PREFIX + tenant


def is_owned(alias):
    """Whether ``alias`` (None for no alias) is one of this collection's tags."""
    return alias == OWNER_TAG or bool(alias and alias.startswith(_TENANT_PREFIX))


def tenant_of(alias):
    """The tenant named in ``alias`` (see ``tenant_tag``), or None."""
    if alias and alias.startswith(_TENANT_PREFIX):
        return alias[len(_TENANT_PREFIX) :] or None
    return None
