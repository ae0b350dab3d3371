# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""The libvirt store of a VM's own migration settings, and of its placement record, in its domain metadata.

The metadata format is ``metadata.py``'s, the value rules and the inheritance are ``settings.py``'s;
this file only moves settings between libvirt and those two.

The settings are written to the live definition (if the VM runs) and to the persistent one (if it
has one), so they travel with the VM on migration and survive restarts. Only the collection's own
metadata element is touched; other ``<metadata>`` children stay as they are.

The write is a read-modify-write of the VM's definitions: right before it, ``domain.recheck`` makes
sure the VM is still on this host, in the state it was read in, with no libvirt job (a migration)
running; otherwise nothing is written (settings written on a host the VM is leaving would not travel
with it).
"""

from __future__ import annotations

import typing as t
import xml.etree.ElementTree as ET

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import domain as domxml
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import ha, metadata, settings
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.connection import libvirt_connection
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import translate_libvirt_error

try:
    import libvirt
except ImportError:  # reported by the module through missing_required_lib
    pass


class SettingsStore:
    """``present`` / ``absent`` / ``info`` for the migration settings of the VMs on one host."""

    def __init__(self, uri: str, username: t.Optional[str] = None, password: t.Optional[str] = None) -> None:
        self.uri = uri
        self.username = username
        self.password = password

    def _stored(self, dom: t.Any, name: str) -> t.Tuple[t.Dict[str, t.Any], t.Optional[t.Dict[str, t.Any]], domxml.Seen]:
        """(live or only settings, persistent settings or None, the VM as read: active, persistent)."""
        try:
            seen = domxml.observe(dom, self.uri)
            active, persistent = seen.active, seen.persistent
            current = metadata.from_domain_xml(dom.XMLDesc(0))
            config = metadata.from_domain_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) if persistent and active else None
        except libvirt.libvirtError as exc:
            raise translate_libvirt_error(exc, "read the migration settings", vm=name, uri=self.uri) from exc
        except metadata.MetadataFormatError as exc:
            raise settings.SettingsError("VM '%s' on %s has unreadable migration metadata: %s" % (name, self.uri, exc), vm=name, uri=self.uri) from exc
        return current, config, seen

    def _write(self, dom: t.Any, name: str, values: t.Optional[t.Mapping[str, t.Any]], active: bool, persistent: bool) -> None:
        flags = 0
        if active:
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        if persistent:
            flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
        xml = metadata.render(values, qualified=False) if values else None
        prefix = metadata.NAMESPACE_PREFIX if values else None
        try:
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml, prefix, metadata.NAMESPACE_URI, flags)
        except libvirt.libvirtError as exc:
            raise translate_libvirt_error(exc, "write the migration settings", vm=name, uri=self.uri) from exc

    def apply(
        self, vm: str, state: str, wanted: t.Mapping[str, t.Any], check_mode: bool, shared_storage: t.Optional[str] = None
    ) -> t.Dict[str, t.Any]:
        """Make the VM's own settings match: ``present`` sets the given ones, ``absent`` removes them all.

        With ``present``, settings not given keep their value, and ``inherit`` removes a setting
        from the VM level so that the cluster or global value applies.

        A VM made highly available must have every disk on ``shared_storage`` (else nothing is
        written); its definition then goes into the high-availability store there (``ha.py``), and
        leaves it when the setting is removed.
        """
        values = settings.validate(wanted, "options")
        store = ha.HaStore(ha.check_shared_storage(shared_storage)) if shared_storage else None
        with libvirt_connection(self.uri, self.username, self.password) as conn:
            dom = domxml.lookup_domain(conn, vm)
            name = dom.name()
            current, config, seen = self._stored(dom, name)
            if state == "absent":
                after: t.Dict[str, t.Any] = {}
            else:
                after = dict(current)
                for key, value in values.items():
                    if value == settings.INHERIT:
                        after.pop(key, None)
                    else:
                        after[key] = value
            changed = after != current or (config is not None and after != config)
            highly_available = after.get(ha.SETTING) is True
            # Checked when asked for now, or when the store is to be written; another setting of a VM already
            # highly available changes without the shared storage given.
            if highly_available and (values.get(ha.SETTING) is True or store is not None):
                ha.refuse_unless_shared(name, self._definition(dom, name, seen.persistent), store.shared if store else None)
            if changed and not check_mode:
                # Still here, as read, no migration under way: else nothing is written.
                domxml.recheck(conn, seen, "write the migration settings", self.uri)
                self._write(dom, name, after, seen.active, seen.persistent)
            if store is not None and not check_mode and after.get(ha.SETTING) is not None:
                # Kept in step with the VM's own setting, also when only the store lagged behind it.
                uuid = dom.UUIDString()
                stored = store.write_definition(uuid, self._definition(dom, name, seen.persistent)) if highly_available else store.forget(uuid)
                changed = changed or stored
        return {
            "changed": changed,
            "vm": name,
            "settings": after,
            "diff": {"before": current, "after": after},
        }

    def _definition(self, dom: t.Any, name: str, persistent: bool) -> str:
        """The VM's definition as another host would start it (its persistent one, if it has one)."""
        flags = libvirt.VIR_DOMAIN_XML_SECURE | (libvirt.VIR_DOMAIN_XML_INACTIVE if persistent else 0)
        try:
            return dom.XMLDesc(flags)
        except libvirt.libvirtError as exc:
            raise translate_libvirt_error(exc, "read the definition", vm=name, uri=self.uri) from exc

    def info(
        self,
        vm: t.Optional[str],
        cluster: t.Optional[t.Mapping[str, t.Any]],
        global_: t.Optional[t.Mapping[str, t.Any]],
    ) -> t.List[t.Dict[str, t.Any]]:
        """For one VM or every VM of the host: its own settings and each effective value with its level."""
        settings.validate(cluster, "cluster_policy")
        settings.validate(global_, "global_policy")
        result = []
        with libvirt_connection(self.uri, self.username, self.password) as conn:
            if vm:
                domains = [domxml.lookup_domain(conn, vm)]
            else:
                try:
                    domains = conn.listAllDomains(0)
                except libvirt.libvirtError as exc:
                    raise translate_libvirt_error(exc, "list the VMs", uri=self.uri) from exc
            for dom in domains:
                name = dom.name()
                try:
                    own = self._stored(dom, name)[0]
                    error = None
                except settings.SettingsError as exc:
                    own, error = {}, exc.msg
                # Judged setting by setting: an unreadable mode or pinning counts as migration_mode none.
                usable, problems = settings.readable(own, error)
                resolved = settings.resolve(usable, cluster, global_)
                values = {key: entry["value"] for key, entry in resolved.items()}
                entry = {
                    "name": name,
                    "uuid": dom.UUIDString(),
                    "own": own,
                    "settings": resolved,
                    "effective": values,
                    "policy": settings.effective_policy(values).as_dict(),
                }
                if problems:
                    entry["problems"] = problems
                result.append(entry)
        return sorted(result, key=lambda entry: entry["name"])


def record_placement(dom: t.Any, changes: t.Mapping[str, t.Any], uri: str) -> t.Dict[str, t.Any]:
    """Merge ``changes`` into the VM's placement record (``metadata.PLACEMENT``; a ``None`` value removes
    a key), on its live definition if it runs and its persistent one if it has one; returns the record now.

    Only the placement element is touched: the VM's migration settings and other metadata stay as they are.
    """
    name = None
    try:
        name = dom.name()
        current = metadata.placement_record(ET.fromstring(dom.XMLDesc(0)))
        after = dict(current)
        for key, value in changes.items():
            if value is None:
                after.pop(key, None)
            else:
                after[key] = value
        if after == current:
            return current
        flags = (libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0) | (libvirt.VIR_DOMAIN_AFFECT_CONFIG if dom.isPersistent() else 0)
        xml = metadata.render(after, qualified=False, element=metadata.PLACEMENT) if after else None
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml, metadata.PLACEMENT_PREFIX if after else None, metadata.PLACEMENT_URI, flags)
    except libvirt.libvirtError as exc:
        raise translate_libvirt_error(exc, "write the placement record", vm=name, uri=uri) from exc
    return after
