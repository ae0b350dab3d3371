# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""The libvirt side of ``sriov_failover_nic``: check the host, define the pair, plug it into the running VM.

What to write is decided by ``failover.py`` (pure); this file reads the VM and the host, refuses
what cannot work, and writes: the persistent definition first (``defineXML`` of the edited inactive
XML, read with its secure fields so that passwords survive), then, on a running VM, the live steps
(unplug VF then backup, plug backup then VF). A live step that fails undoes the live steps done and
restores the previous definition.

Right before each write (the define, each live step, each undo step) ``domain.recheck`` makes sure
the VM is still on this host, in the state it was read in, with no libvirt job (a migration) running;
otherwise the write is not done: a VM that is leaving never gets a definition on the host it leaves.
"""

from __future__ import annotations

import time
import typing as t
import xml.etree.ElementTree as ET

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import domain as domxml
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import failover
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import options
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.connection import libvirt_connection
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import (
    LIBVIRT_ERROR_CODES,
    FeatureUnsupportedError,
    MigrationError,
    libvirt_error_code,
    translate_libvirt_error,
)

try:
    import libvirt
except ImportError:  # reported by the module through missing_required_lib
    pass

VIR_ERR_NO_NETWORK = LIBVIRT_ERROR_CODES["VIR_ERR_NO_NETWORK"]
VIR_ERR_CONFIG_UNSUPPORTED = LIBVIRT_ERROR_CODES["VIR_ERR_CONFIG_UNSUPPORTED"]
# How long an unplug may take before the run goes on with a warning (libvirt itself waits 5 s).
UNPLUG_WAIT_S = 15.0


class FailoverNicError(MigrationError):
    """The pair cannot be written as asked: the host or the VM lacks what it needs."""


def teaming_unsupported(exc: BaseException) -> bool:
    """True when libvirt refused ``<teaming>`` because the hypervisor lacks virtio-net failover.

    libvirt validates ``<teaming>`` against the QEMU binary's capabilities when the domain is defined
    (or a device attached): a configuration-unsupported error about failover or teaming that says
    "not supported". Its other teaming errors ("... must be ...") are about the XML, not the hypervisor.
    Releases that require a QEMU with failover (the capability is then always present) never raise it.
    """
    text = str(exc).lower()
    return (
        libvirt_error_code(exc) in (VIR_ERR_CONFIG_UNSUPPORTED, LIBVIRT_ERROR_CODES["VIR_ERR_NO_SUPPORT"])
        and ("failover" in text or "teaming" in text)
        and "not supported" in text
    )


def _label(device_xml: str) -> str:
    """An interface's alias for messages ("the interface" without one)."""
    alias = ET.fromstring(device_xml).find("alias")
    return alias.get("name", "the interface") if alias is not None else "the interface"


class FailoverNic:
    """``present`` / ``absent`` of one failover pair on one VM of one host."""

    def __init__(self, uri: str, username: t.Optional[str] = None, password: t.Optional[str] = None) -> None:
        self.uri = uri
        self.username = username
        self.password = password
        self.warnings: t.List[str] = []
        self.actions: t.List[str] = []

    # --- reading -------------------------------------------------------------------------------

    def _read(self, dom: t.Any, name: str) -> t.Tuple[domxml.Seen, str, t.Optional[str]]:
        """(the VM as read, inactive XML, live XML or None when the VM is not running).

        Both with their secure fields (``VIR_DOMAIN_XML_SECURE``): the inactive XML is edited and
        defined again, and devices of the live XML may be plugged in again.
        """
        try:
            if not dom.isPersistent():
                raise FailoverNicError(
                    "VM '%s' on %s is transient (it has no persistent definition): sriov_failover_nic writes the persistent "
                    "definition, so define the VM first (virsh define). Nothing was changed." % (name, self.uri),
                    vm=name,
                    uri=self.uri,
                )
            seen = domxml.observe(dom, self.uri)
            inactive = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
            live = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE) if seen.active else None
        except libvirt.libvirtError as exc:
            raise translate_libvirt_error(exc, "read the domain XML", vm=name, uri=self.uri) from exc
        return seen, inactive, live

    def _other_domains_macs(self, conn: t.Any, uuid: str) -> t.Dict[str, t.Set[str]]:
        """MACs of every other domain on the host (live and persistent definitions)."""
        result: t.Dict[str, t.Set[str]] = {}
        try:
            domains = conn.listAllDomains(0)
        except libvirt.libvirtError as exc:
            raise translate_libvirt_error(exc, "list the VMs", uri=self.uri) from exc
        for other in domains:
            try:
                if other.UUIDString() == uuid:
                    continue
                macs = failover.macs_in_use(other.XMLDesc(0))
                if other.isActive() and other.isPersistent():
                    macs |= failover.macs_in_use(other.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
                result[other.name()] = macs
            except libvirt.libvirtError:
                continue  # gone meanwhile
        return result

    def _network(self, conn: t.Any, name: str, role: str, vm: str) -> ET.Element:
        try:
            network = conn.networkLookupByName(name)
            xml = network.XMLDesc(0)
            active = bool(network.isActive())
        except libvirt.libvirtError as exc:
            if libvirt_error_code(exc) == VIR_ERR_NO_NETWORK:
                raise FailoverNicError(
                    "The %s network '%s' does not exist on %s (libvirt: %s). Nothing was changed." % (role, name, self.uri, str(exc).strip()),
                    vm=vm,
                    uri=self.uri,
                    network=name,
                ) from exc
            raise translate_libvirt_error(exc, "read the %s network '%s'" % (role, name), vm=vm, uri=self.uri) from exc
        if not active:
            self.warnings.append(
                "The %s network '%s' on %s is defined but not active: the VM cannot start with this pair until it is." % (role, name, self.uri)
            )
        return ET.fromstring(xml)

    def _check_vf_network(self, conn: t.Any, name: str, vm: str) -> None:
        root = self._network(conn, name, "VF", vm)
        forward = root.find("forward")
        mode = forward.get("mode", "nat") if forward is not None else "isolated (no <forward>)"
        if mode != "hostdev":
            raise FailoverNicError(
                "The VF network '%s' on %s is in forward mode '%s', not 'hostdev': it cannot hand out SR-IOV VFs "
                "(define one with virtops.migration.sriov_network). Nothing was changed." % (name, self.uri, mode),
                vm=vm,
                uri=self.uri,
                network=name,
                forward_mode=mode,
            )

    def _check_vf_address(self, conn: t.Any, address: str) -> None:
        device = failover.pci_node_device(address)
        try:
            conn.nodeDeviceLookupByName(device)
        except libvirt.libvirtError:
            self.warnings.append(
                "No PCI device %s (node device %s) on %s: the VM cannot start or receive this VF there until it exists." % (address, device, self.uri)
            )

    def _check_bridge(self, conn: t.Any, bridge: str, vm: str) -> None:
        """Refuse a bridge the host does not have; warn when the host cannot tell."""
        names: t.Optional[t.Set[str]] = None
        try:
            devices = conn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_NET)
            names = set()
            for device in devices:
                interface = ET.fromstring(device.XMLDesc(0)).find("capability/interface")
                if interface is not None and interface.text:
                    names.add(interface.text.strip())
        except libvirt.libvirtError:
            names = None
        if names is None or bridge not in names:
            try:
                conn.interfaceLookupByName(bridge)
                return
            except libvirt.libvirtError:
                pass
        if names is None:
            self.warnings.append("Could not list the network devices of %s: the backup bridge '%s' was not checked." % (self.uri, bridge))
        elif bridge not in names:
            raise FailoverNicError(
                "The backup bridge '%s' does not exist on %s. Nothing was changed." % (bridge, self.uri), vm=vm, uri=self.uri, bridge=bridge
            )

    # --- writing -------------------------------------------------------------------------------

    def _define(self, conn: t.Any, xml: str, vm: str, what: str) -> None:
        try:
            conn.defineXML(xml)
        except libvirt.libvirtError as exc:
            if teaming_unsupported(exc):
                raise FeatureUnsupportedError(
                    "Cannot %s for VM '%s' on %s: the hypervisor does not support virtio-net failover (teaming); use mode bond. "
                    "Nothing was changed. libvirt: %s" % (what, vm, self.uri, str(exc).strip()),
                    vm=vm,
                    uri=self.uri,
                    libvirt_error_code=libvirt_error_code(exc),
                    libvirt_message=str(exc).strip(),
                ) from exc
            raise translate_libvirt_error(exc, what, vm=vm, uri=self.uri) from exc

    def _detach(self, dom: t.Any, alias: str, vm: str) -> None:
        try:
            dom.detachDeviceAlias(alias, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            raise translate_libvirt_error(exc, "unplug %s from the running VM" % alias, vm=vm, uri=self.uri) from exc
        deadline = time.monotonic() + UNPLUG_WAIT_S
        while True:
            try:
                still = alias in failover.interface_aliases(dom.XMLDesc(0))
            except libvirt.libvirtError as exc:
                raise translate_libvirt_error(exc, "read the domain XML", vm=vm, uri=self.uri) from exc
            if not still:
                self.actions.append("unplugged %s" % alias)
                return
            if time.monotonic() >= deadline:
                raise FailoverNicError(
                    "VM '%s' on %s did not release %s within %d s (the guest must answer the PCI hot-unplug request)."
                    % (vm, self.uri, alias, UNPLUG_WAIT_S),
                    vm=vm,
                    uri=self.uri,
                )
            time.sleep(0.25)

    def _attach(self, dom: t.Any, xml: str, vm: str) -> None:
        label = _label(xml)
        try:
            dom.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            if teaming_unsupported(exc):
                raise FeatureUnsupportedError(
                    "Cannot plug %s into VM '%s' on %s: the hypervisor does not support virtio-net failover (teaming). libvirt: %s"
                    % (label, vm, self.uri, str(exc).strip()),
                    vm=vm,
                    uri=self.uri,
                    libvirt_error_code=libvirt_error_code(exc),
                ) from exc
            raise translate_libvirt_error(exc, "plug %s into the running VM" % label, vm=vm, uri=self.uri) from exc
        self.actions.append("plugged %s" % label)

    def _defined(self, dom: t.Any) -> t.Optional[str]:
        """The persistent definition as libvirt keeps it now (secure fields included); None if unreadable."""
        try:
            return str(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE))
        except libvirt.libvirtError:
            return None

    def _apply_live(
        self,
        conn: t.Any,
        dom: t.Any,
        seen: domxml.Seen,
        plan: failover.PairPlan,
        live_before: str,
        inactive_before: str,
        defined: t.Optional[str],
    ) -> None:
        """Run the live steps; on a failure undo those done and restore the previous definition.

        Each step, and each undo step, is done only after ``domain.recheck`` found the VM still here,
        as it was, with no job running. ``defined`` is the persistent definition this run wrote (as
        libvirt shows it): the previous one is restored only over that one, never over a definition
        someone else wrote meanwhile, and never on a host the VM has left.
        """
        vm = seen.name
        wrote = bool(plan.persistent_xml)
        done_detach: t.List[str] = []
        done_attach: t.List[str] = []
        try:
            for alias in plan.live_detach:
                domxml.recheck(conn, seen, "unplug %s from the running VM" % alias, self.uri, nothing_changed=not (wrote or done_detach))
                self._detach(dom, alias, vm)
                done_detach.append(alias)
            for xml in plan.live_attach:
                label = _label(xml)
                nothing = not (wrote or done_detach or done_attach)
                domxml.recheck(conn, seen, "plug %s into the running VM" % label, self.uri, nothing_changed=nothing)
                self._attach(dom, xml, vm)
                done_attach.append(xml)
        except MigrationError as exc:
            self._undo(exc, conn, dom, seen, plan, live_before, inactive_before, defined, done_detach, done_attach)
            raise

    def _undo(
        self,
        exc: MigrationError,
        conn: t.Any,
        dom: t.Any,
        seen: domxml.Seen,
        plan: failover.PairPlan,
        live_before: str,
        inactive_before: str,
        defined: t.Optional[str],
        done_detach: t.Sequence[str],
        done_attach: t.Sequence[str],
    ) -> None:
        """Undo the live steps done and restore the previous definition; add what was (not) undone to ``exc``."""
        # Each undo step: (done, left as it is when not done, the libvirt call, the action for recheck).
        steps: t.List[t.Tuple[str, str, t.Callable[[], t.Any], str, t.Optional[str]]] = []
        for xml in reversed(done_attach):
            alias = ET.fromstring(xml).find("alias")
            if alias is None:
                continue
            name = alias.get("name", "")
            steps.append(
                (
                    "unplugged %s again" % name,
                    "%s stays plugged into the running VM" % name,
                    lambda name=name: dom.detachDeviceAlias(name, libvirt.VIR_DOMAIN_AFFECT_LIVE),  # type: ignore[misc]
                    "unplug %s again" % name,
                    None,
                )
            )
        for alias in reversed(done_detach):
            device = failover.interface_device_xml(live_before, alias)
            if not device:
                continue
            steps.append(
                (
                    "plugged %s back" % alias,
                    "%s stays unplugged from the running VM" % alias,
                    lambda device=device: dom.attachDeviceFlags(device, libvirt.VIR_DOMAIN_AFFECT_LIVE),  # type: ignore[misc]
                    "plug %s back" % alias,
                    None,
                )
            )
        if plan.persistent_xml:
            steps.append(
                (
                    "restored the previous persistent definition",
                    "the persistent definition keeps the change this run wrote (the previous one was not defined again)",
                    lambda: conn.defineXML(inactive_before),
                    "define the previous persistent definition again",
                    defined,
                )
            )
        undo: t.List[str] = []
        not_undone: t.List[str] = []
        blocked: t.Optional[str] = None
        for index, (done, left, call, action, definition) in enumerate(steps):
            try:
                domxml.recheck(conn, seen, action, self.uri, definition=definition, nothing_changed=False)
            except MigrationError as why:
                # Gone, changed or busy: nothing more is written, above all no definition on a host the VM left.
                blocked = why.msg
                not_undone = [step[1] for step in steps[index:]]
                break
            try:
                call()
                undo.append(done)
            except libvirt.libvirtError as undo_exc:
                undo.append("could not %s: %s" % (action, str(undo_exc).strip()))
                not_undone.append(left)
        exc.msg += " Undone: %s." % ("; ".join(undo) if undo else "nothing" if steps else "nothing needed undoing")
        if not_undone:
            exc.msg += " NOT undone: %s." % "; ".join(not_undone)
        if blocked:
            exc.msg += " The undo stopped there: %s" % blocked
        exc.details["actions"] = self.actions + undo
        exc.details["not_undone"] = not_undone

    # --- the two states ------------------------------------------------------------------------

    def apply(self, vm: str, state: str, request: t.Mapping[str, t.Any], live: bool, check_mode: bool) -> t.Dict[str, t.Any]:
        """Make pair ``request['pair']`` of the VM present (as asked) or absent."""
        pair = request["pair"]
        try:
            failover.check_pair_name(pair)
        except ValueError as exc:
            raise FailoverNicError("Invalid pair name: %s." % exc) from exc
        with libvirt_connection(self.uri, self.username, self.password) as conn:
            dom = domxml.lookup_domain(conn, vm)
            name = dom.name()
            seen, inactive, live_xml = self._read(dom, name)
            handled_live = live_xml if live else None
            if state == "absent":
                plan = failover.plan_absent(inactive, handled_live, pair)
                left_live = bool(live_xml and failover.interface_aliases(live_xml) & {failover.backup_alias(pair), failover.vf_alias(pair)})
            else:
                others = self._other_domains_macs(conn, dom.UUIDString())
                spec = self._spec(name, inactive, live_xml, request, others)
                plan = failover.plan_present(inactive, handled_live, spec)
                if plan.changed:
                    self._check_host(conn, name, inactive, live_xml, spec, others)
                left_live = bool(live_xml and failover.pair_differences(live_xml, spec))
            if left_live and not live:
                self.warnings.append(
                    "VM '%s' runs and live=false: the running VM keeps its current interfaces until it is restarted." % name
                )
            if plan.changed and not check_mode:
                defined = inactive
                if plan.persistent_xml:
                    what = ("remove pair %s from" if state == "absent" else "write pair %s into") % pair + " the persistent definition"
                    # The VM is still here, as read, no migration under way, its definition as read.
                    domxml.recheck(conn, seen, what, self.uri, definition=inactive)
                    self._define(conn, plan.persistent_xml, name, what)
                    self.actions.append("defined the persistent definition with the pair %s" % ("removed" if state == "absent" else "written"))
                    defined = self._defined(dom)
                if plan.live_detach or plan.live_attach:
                    self._apply_live(conn, dom, seen, plan, live_xml or "", inactive, defined)
            after_xml = plan.persistent_xml or inactive
            result: t.Dict[str, t.Any] = {
                "changed": plan.changed,
                "vm": name,
                "uri": self.uri,
                "differences": list(plan.differences) + ["running VM: %s" % text for text in plan.live_differences],
                "actions": self.actions,
                "diff": self._diff(pair, inactive, after_xml, plan),
                "warnings": self.warnings,
            }
            info = failover.find_pair(after_xml, pair)
            result["pair"] = failover.pair_facts(info, failover.backup_mac_of(after_xml, pair)) if info is not None and state == "present" else None
            result["replaced_mode"] = plan.replaced_mode
        return result

    def _spec(
        self,
        name: str,
        inactive: str,
        live_xml: t.Optional[str],
        request: t.Mapping[str, t.Any],
        others: t.Mapping[str, t.Set[str]],
    ) -> failover.PairSpec:
        request = options.with_defaults("sriov_failover_nic", request)
        mode = request["mode"]
        fail_over_mac = bool(request["fail_over_mac"])
        if fail_over_mac and mode != "bond":
            raise FailoverNicError("fail_over_mac applies to mode bond only (the pair's mode is %s)." % mode, vm=name, uri=self.uri)
        try:
            mac, backup_mac = failover.choose_macs(
                [inactive, live_xml],
                request["pair"],
                mode,
                fail_over_mac,
                request.get("mac"),
                used_elsewhere=set().union(*others.values()),
            )
            spec = failover.PairSpec(
                name=request["pair"],
                mode=mode,
                mac=mac,
                vf_network=request.get("vf_network"),
                vf_address=request.get("vf_address"),
                backup_network=request.get("backup_network"),
                backup_bridge=request.get("backup_bridge"),
                fail_over_mac=fail_over_mac,
                backup_mac=backup_mac,
            )
            spec.validate()
        except ValueError as exc:
            raise FailoverNicError("Cannot write pair %s for VM '%s': %s. Nothing was changed." % (request["pair"], name, exc), vm=name, uri=self.uri) from exc
        return spec

    def _check_host(
        self,
        conn: t.Any,
        name: str,
        inactive: str,
        live_xml: t.Optional[str],
        spec: failover.PairSpec,
        others: t.Mapping[str, t.Set[str]],
    ) -> None:
        """Refuse what cannot work on this host, before anything is written."""
        if spec.mode == "teaming" and not failover.has_pcie_root_ports(inactive):
            raise FailoverNicError(
                "VM '%s' on %s has machine type '%s', which has no PCI Express root ports: a teaming pair needs the VF alone "
                "in a hot-pluggable PCI Express root port (machine type q35). Use mode bond, or move the VM to q35. Nothing was changed."
                % (name, self.uri, failover.machine_type(inactive) or "unknown"),
                vm=name,
                uri=self.uri,
                machine=failover.machine_type(inactive),
            )
        if spec.vf_network:
            self._check_vf_network(conn, spec.vf_network, name)
        else:
            self._check_vf_address(conn, spec.vf_address or "")
        if spec.backup_network:
            self._network(conn, spec.backup_network, "backup", name)
        else:
            self._check_bridge(conn, spec.backup_bridge or "", name)
        macs = [spec.mac, spec.effective_backup_mac]
        clashes = failover.mac_clashes(macs, [inactive, live_xml], spec.name, others, vm=name)
        if clashes:
            raise FailoverNicError(
                "Cannot write pair %s for VM '%s' on %s: %s. Nothing was changed." % (spec.name, name, self.uri, "; ".join(clashes)),
                vm=name,
                uri=self.uri,
                mac=spec.mac,
            )

    @staticmethod
    def _diff(pair: str, before_xml: str, after_xml: str, plan: failover.PairPlan) -> t.Dict[str, str]:
        before = "\n".join(failover.pair_elements_xml(before_xml, pair))
        after = "\n".join(failover.pair_elements_xml(after_xml, pair))
        header = "pair %s" % pair
        after_header = header
        if plan.replaced_mode:
            after_header += " (replaces the %s pair of the same name)" % plan.replaced_mode
        return {
            "before": before + "\n" if before else "",
            "after": after + "\n" if after else "",
            "before_header": header + " (persistent definition)",
            "after_header": after_header + " (persistent definition)",
        }
