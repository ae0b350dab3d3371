# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""The libvirt side of ``sriov_network``: a hostdev network that hands out the VFs of one PF.

``<network><name/><forward mode='hostdev' managed='yes'><pf dev='PF'/></forward></network>``,
defined, started and set to autostart. A network of that name with another PF or forward mode is
refused, never rewritten. When libvirt refuses to start a network this run defined (no such PF, or
a PF without VFs), the definition is removed again, so a failed run leaves nothing behind.
"""

from __future__ import annotations

import typing as t
import xml.etree.ElementTree as ET

from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.connection import libvirt_connection
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import (
    LIBVIRT_ERROR_CODES,
    MigrationError,
    libvirt_error_code,
    translate_libvirt_error,
)

try:
    import libvirt
except ImportError:  # reported by the module through missing_required_lib
    pass

VIR_ERR_NO_NETWORK = LIBVIRT_ERROR_CODES["VIR_ERR_NO_NETWORK"]


class SriovNetworkError(MigrationError):
    """The network cannot be made as asked (another network holds the name, or libvirt refused it)."""


def network_xml(name: str, pf: str) -> str:
    """The definition of a hostdev network over ``pf``."""
    root = ET.Element("network")
    ET.SubElement(root, "name").text = name
    forward = ET.SubElement(root, "forward", {"mode": "hostdev", "managed": "yes"})
    ET.SubElement(forward, "pf", {"dev": pf})
    return ET.tostring(root, encoding="unicode")


def describe_network(xml: str) -> t.Dict[str, t.Any]:
    """Forward mode, PF and the VFs (PCI addresses) a network definition or live XML shows."""
    root = ET.fromstring(xml)
    forward = root.find("forward")
    mode = forward.get("mode", "nat") if forward is not None else None
    pfs = [pf.get("dev") for pf in forward.findall("pf")] if forward is not None else []
    vfs = []
    for address in forward.findall("address") if forward is not None else []:
        if address.get("type", "pci") == "pci":
            vfs.append("%04x:%02x:%02x.%x" % tuple(int(address.get(key) or "0", 0) for key in ("domain", "bus", "slot", "function")))
    connections = root.get("connections")
    return {
        "forward_mode": mode,
        "pf": pfs[0] if len(pfs) == 1 else (pfs or None),
        "managed": forward.get("managed") == "yes" if forward is not None else False,
        "vfs": vfs,
        "connections": int(connections) if connections and connections.isdigit() else 0,
    }


def mismatch(name: str, existing: t.Mapping[str, t.Any], pf: str) -> t.Optional[str]:
    """Why the existing network of that name is not the one wanted (``None`` when it is)."""
    if existing["forward_mode"] != "hostdev":
        return "network '%s' exists in forward mode '%s', not 'hostdev' over PF %s" % (name, existing["forward_mode"] or "isolated", pf)
    if existing["pf"] != pf:
        return "network '%s' exists over PF %s, not over PF %s" % (name, existing["pf"] or "(none: a list of VF addresses)", pf)
    return None


class SriovNetwork:
    """``present`` / ``absent`` of one hostdev network on one host."""

    def __init__(self, uri: str, username: t.Optional[str] = None, password: t.Optional[str] = None) -> None:
        self.uri = uri
        self.username = username
        self.password = password

    def _lookup(self, conn: t.Any, name: str) -> t.Optional[t.Any]:
        try:
            return conn.networkLookupByName(name)
        except libvirt.libvirtError as exc:
            if libvirt_error_code(exc) == VIR_ERR_NO_NETWORK:
                return None
            raise translate_libvirt_error(exc, "look up network '%s'" % name, uri=self.uri) from exc

    def _state(self, network: t.Optional[t.Any], name: str) -> t.Optional[t.Dict[str, t.Any]]:
        if network is None:
            return None
        try:
            persistent = bool(network.isPersistent())
            xml = network.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE if persistent else 0)
            live_xml = network.XMLDesc(0)
            facts = describe_network(xml)
            live = describe_network(live_xml)
            facts.update(
                name=name,
                active=bool(network.isActive()),
                persistent=persistent,
                autostart=bool(network.autostart()) if persistent else False,
                vfs=live["vfs"],
                connections=live["connections"],
                xml=xml,
            )
        except libvirt.libvirtError as exc:
            raise translate_libvirt_error(exc, "read network '%s'" % name, uri=self.uri) from exc
        return facts

    def apply(self, name: str, pf: t.Optional[str], state: str, autostart: bool, check_mode: bool) -> t.Dict[str, t.Any]:
        """Make the network present (defined, active, autostart as asked) or absent."""
        actions: t.List[str] = []
        with libvirt_connection(self.uri, self.username, self.password) as conn:
            before = self._state(self._lookup(conn, name), name)
            if state == "absent":
                changed = self._absent(conn, name, before, check_mode, actions)
            else:
                changed = self._present(conn, name, pf or "", autostart, before, check_mode, actions)
            after = before if check_mode or not changed else self._state(self._lookup(conn, name), name)
        if check_mode and changed:
            after = None if state == "absent" else {
                "name": name,
                "forward_mode": "hostdev",
                "pf": pf,
                "managed": True,
                "active": True,
                "persistent": True,
                "autostart": autostart,
                "vfs": (before or {}).get("vfs", []),
                "connections": (before or {}).get("connections", 0),
                "xml": (before or {}).get("xml") or network_xml(name, pf or ""),
            }
        return {
            "changed": changed,
            "uri": self.uri,
            "actions": actions,
            "network": self._public(after),
            "diff": {
                "before": self._diff_text(before),
                "after": self._diff_text(after),
                "before_header": "network %s" % name,
                "after_header": "network %s" % name,
            },
        }

    @staticmethod
    def _public(facts: t.Optional[t.Dict[str, t.Any]]) -> t.Optional[t.Dict[str, t.Any]]:
        if facts is None:
            return None
        return {key: value for key, value in facts.items() if key != "xml"}

    @staticmethod
    def _diff_text(facts: t.Optional[t.Mapping[str, t.Any]]) -> str:
        if facts is None:
            return ""
        return "%s\nactive: %s\nautostart: %s\n" % (facts["xml"].strip(), facts["active"], facts["autostart"])

    def _present(
        self,
        conn: t.Any,
        name: str,
        pf: str,
        autostart: bool,
        before: t.Optional[t.Mapping[str, t.Any]],
        check_mode: bool,
        actions: t.List[str],
    ) -> bool:
        if before is not None:
            problem = mismatch(name, before, pf)
            if problem:
                raise SriovNetworkError(
                    "Cannot make network '%s' a hostdev network over PF %s on %s: %s. It was left as it is; remove it or "
                    "choose another name." % (name, pf, self.uri, problem),
                    uri=self.uri,
                    network=name,
                    existing_pf=before["pf"],
                    existing_forward_mode=before["forward_mode"],
                )
            if not before["persistent"]:
                raise SriovNetworkError(
                    "Network '%s' on %s is transient (it has no persistent definition): it would vanish when it stops. It was left as it is."
                    % (name, self.uri),
                    uri=self.uri,
                    network=name,
                )
        changed = before is None or not before["active"] or before["autostart"] != autostart
        if not changed or check_mode:
            return changed
        defined_now = False
        if before is None:
            try:
                network = conn.networkDefineXML(network_xml(name, pf))
            except libvirt.libvirtError as exc:
                raise translate_libvirt_error(exc, "define network '%s' over PF %s" % (name, pf), uri=self.uri) from exc
            defined_now = True
            actions.append("defined network %s over PF %s" % (name, pf))
        else:
            network = self._lookup(conn, name)
        try:
            if not network.isActive():
                network.create()
                actions.append("started network %s" % name)
        except libvirt.libvirtError as exc:
            undo = ""
            if defined_now:
                try:
                    network.undefine()
                    actions.append("removed the definition of network %s again" % name)
                    undo = " The network this run defined was removed again; nothing is left behind."
                except libvirt.libvirtError as undo_exc:
                    undo = " Removing the network this run defined failed too: %s" % undo_exc
            raise SriovNetworkError(
                "libvirt refused to start the hostdev network '%s' over PF %s on %s: %s (the PF must exist on this host and have "
                "SR-IOV VFs enabled, for example through /sys/class/net/%s/device/sriov_numvfs).%s"
                % (name, pf, self.uri, str(exc).strip(), pf, undo),
                uri=self.uri,
                network=name,
                pf=pf,
                libvirt_error_code=libvirt_error_code(exc),
                libvirt_message=str(exc).strip(),
                actions=actions,
            ) from exc
        try:
            if bool(network.autostart()) != autostart:
                network.setAutostart(1 if autostart else 0)
                actions.append("set autostart of network %s to %s" % (name, autostart))
        except libvirt.libvirtError as exc:
            raise translate_libvirt_error(exc, "set autostart of network '%s'" % name, uri=self.uri) from exc
        return True

    def _absent(self, conn: t.Any, name: str, before: t.Optional[t.Mapping[str, t.Any]], check_mode: bool, actions: t.List[str]) -> bool:
        if before is None:
            return False
        if before["forward_mode"] != "hostdev":
            raise SriovNetworkError(
                "Network '%s' on %s is in forward mode '%s', not a hostdev (SR-IOV) network: sriov_network leaves it alone."
                % (name, self.uri, before["forward_mode"] or "isolated"),
                uri=self.uri,
                network=name,
            )
        if before["connections"]:
            raise SriovNetworkError(
                "Network '%s' on %s has %d VF(s) in use by running VMs: stop them or move their pairs first. It was left as it is."
                % (name, self.uri, before["connections"]),
                uri=self.uri,
                network=name,
            )
        if check_mode:
            return True
        network = self._lookup(conn, name)
        if network is None:
            return False
        try:
            if network.isActive():
                network.destroy()
                actions.append("stopped network %s" % name)
            if network.isPersistent():
                network.undefine()
                actions.append("removed the definition of network %s" % name)
        except libvirt.libvirtError as exc:
            raise translate_libvirt_error(exc, "remove network '%s'" % name, uri=self.uri) from exc
        return True
