# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""Reading destination hosts through libvirt: what placement needs of each, and where a VM is.

:func:`probe_hosts` reads every candidate once, all of them at the same time; :func:`live_capacity`
is the quick re-check of one destination when a planned move starts; :func:`whereabouts` is a VM's
state on one host as libvirt shows it, which every verification is judged by.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import typing as t
import xml.etree.ElementTree as ET

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import domain as domxml
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import failover
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import placement
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import (
    MigrationError,
    is_not_found,
    is_unsupported,
    libvirt_error_code,
    translate_libvirt_error,
    unexpected_error,
)
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.hostinfo import host_memory, parse_capabilities
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.plan import Candidate

try:
    import libvirt
except ImportError:  # reported by the module through missing_required_lib
    pass

# connect(uri, connect_timeout=None): an open libvirt connection for a ``with`` block.
Connect = t.Callable[..., t.ContextManager[t.Any]]

# Candidates read at the same time; each reading is a few libvirt calls over the network.
MAX_PARALLEL_PROBES = 16


@dataclasses.dataclass(frozen=True)
class CpuCheck:
    """The VM's ``<cpu>`` and the emulation it runs under, to compare with a destination's hypervisor CPU."""

    xml: str
    arch: t.Optional[str]
    virttype: t.Optional[str]
    machine: t.Optional[str]

    @classmethod
    def of(cls, facts: t.Mapping[str, t.Any], requirements: t.Mapping[str, t.Any]) -> t.Optional["CpuCheck"]:
        """The check for a running VM with a ``<cpu>`` definition; None when there is nothing to compare."""
        if not facts.get("active") or not requirements.get("cpu_xml"):
            return None
        return cls(requirements["cpu_xml"], facts.get("arch"), facts.get("domain_type"), facts.get("machine"))


def probe_host(
    conn: t.Any,
    candidate: Candidate,
    needs: t.Sequence[placement.VmNeeds],
    cpus: t.Mapping[str, CpuCheck],
    reserve_mib: int,
) -> placement.HostState:
    """Read what placement needs from a candidate's libvirtd for the given VMs.

    Identity, free memory after the reserve (the candidate's own, else ``reserve_mib``), running
    vCPUs, active networks, the bridges and disk paths the VMs use, every VM UUID defined there
    (duplicates), the names of the VMs running there (affinity groups), for each VM in ``cpus`` whether the host's hypervisor can run its CPU, and, only
    when a VM has a fixed-address VF, what each such PCI address is there (:func:`_pci_devices`).
    """
    uri = candidate.uri
    try:
        capabilities = parse_capabilities(conn.getCapabilities())
        hostname = conn.getHostname()
        node = conn.getInfo()
        vcpus = 0
        uuids = set()
        running = set()
        addresses = frozenset().union(*(vm.vf_addresses for vm in needs)) if needs else frozenset()
        assigned: t.Dict[str, str] = {}
        for dom in conn.listAllDomains(0):
            uuids.add(dom.UUIDString())
            if dom.isActive():
                running.add(dom.name())
                vcpus += int(dom.info()[3])
                if addresses:
                    assigned.update(dict.fromkeys(_assigned(dom) & addresses, dom.name()))
        networks = frozenset(net.name() for net in conn.listAllNetworks(libvirt.VIR_CONNECT_LIST_NETWORKS_ACTIVE))
        bridges = _bridges(conn, frozenset().union(*(vm.bridges for vm in needs)) if needs else frozenset())
        free_vfs = _free_vfs(conn, frozenset(network for vm in needs for network, _count in vm.vfs))
        pci_devices = _pci_devices(conn, addresses, assigned)
        disk_paths = set()
        for path in sorted(frozenset().union(*(vm.disk_paths for vm in needs)) if needs else ()):
            try:
                conn.storageVolLookupByPath(path)
                disk_paths.add(path)
            except libvirt.libvirtError:
                pass
        incompatible = {}
        verdicts: t.Dict[CpuCheck, t.Optional[str]] = {}
        for vm, cpu in cpus.items():
            if cpu not in verdicts:
                verdicts[cpu] = _cpu_verdict(conn, cpu)
            if verdicts[cpu] is not None:
                incompatible[vm] = t.cast(str, verdicts[cpu])
        reserve = candidate.memory_reserved_mib if candidate.memory_reserved_mib is not None else reserve_mib
        memory = host_memory(conn, node, reserve)
    except libvirt.libvirtError as exc:
        raise translate_libvirt_error(exc, "read the destination's facts", uri=uri) from exc
    return placement.HostState(
        name=candidate.name or hostname,
        uri=uri,
        uuid=capabilities["uuid"],
        available_mib=memory["available_mib"],
        vcpus_running=vcpus,
        networks=networks,
        bridges=bridges,
        disk_paths=frozenset(disk_paths),
        maintenance=candidate.maintenance,
        cpu_incompatible=incompatible,
        vm_uuids=frozenset(uuids),
        running_vms=frozenset(running),
        free_vfs=free_vfs,
        pci_devices=pci_devices,
    )


def probe_hosts(
    connect: Connect,
    candidates: t.Sequence[Candidate],
    needs: t.Sequence[placement.VmNeeds],
    cpus: t.Mapping[str, CpuCheck],
    reserve_mib: int,
) -> t.List[placement.HostState]:
    """Every candidate read once, at the same time, in the candidates' order.

    A candidate that cannot be read comes back with its ``error`` set (placement never chooses it).
    """

    def one(candidate: Candidate) -> placement.HostState:
        try:
            with connect(candidate.uri) as conn:
                return probe_host(conn, candidate, needs, cpus, reserve_mib)
        except MigrationError as exc:
            return placement.HostState(name=candidate.name or candidate.uri, uri=candidate.uri, error=exc.msg, error_details=dict(exc.details))
        except Exception as exc:  # pylint: disable=broad-exception-caught
            error = unexpected_error(exc, "read the destination's facts", uri=candidate.uri)
            return placement.HostState(name=candidate.name or candidate.uri, uri=candidate.uri, error=error.msg)

    if len(candidates) <= 1:
        return [one(candidate) for candidate in candidates]
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_PROBES, len(candidates))) as pool:
        return list(pool.map(one, candidates))


def live_capacity(conn: t.Any, uri: str) -> t.Dict[str, int]:
    """A destination's memory now (no reserve deducted): the quick re-check when a planned move starts."""
    try:
        return host_memory(conn, conn.getInfo(), 0)
    except libvirt.libvirtError as exc:
        raise translate_libvirt_error(exc, "read the destination's memory", uri=uri) from exc


def _cpu_verdict(conn: t.Any, cpu: CpuCheck) -> t.Optional[str]:
    """Why the host's hypervisor cannot run this CPU definition, or None when it can."""
    try:
        verdict = conn.compareHypervisorCPU(None, cpu.arch, cpu.machine, cpu.virttype, cpu.xml, 0)
    except libvirt.libvirtError as exc:
        if libvirt_error_code(exc) == libvirt.VIR_ERR_CPU_INCOMPATIBLE:
            return str(exc)
        raise
    if verdict == libvirt.VIR_CPU_COMPARE_INCOMPATIBLE:
        return "the VM's CPU model is not compatible with this host's hypervisor CPU"
    return None


def _bridges(conn: t.Any, wanted: t.AbstractSet[str]) -> t.Optional[t.FrozenSet[str]]:
    """Which of the wanted host bridges exist on the host; None when libvirt cannot tell."""
    found = set()
    for name in wanted:
        try:
            conn.interfaceLookupByName(name)
            found.add(name)
        except libvirt.libvirtError as exc:
            if is_unsupported(exc):
                return None
    return frozenset(found)


def _free_vfs(conn: t.Any, wanted: t.AbstractSet[str]) -> t.Dict[str, int]:
    """Free VFs of each wanted libvirt network that is active and in hostdev mode (others are left out).

    An active hostdev network lists its VFs as ``<address>`` elements under ``<forward>``, whose
    ``connections`` attribute counts the VFs in use.
    """
    free = {}
    for name in sorted(wanted):
        try:
            network = conn.networkLookupByName(name)
            if not network.isActive():
                continue
            forward = ET.fromstring(network.XMLDesc(0)).find("forward")
        except libvirt.libvirtError as exc:
            if is_not_found(exc):
                continue
            raise
        if forward is None or forward.get("mode") != "hostdev":
            continue
        in_use = int(forward.get("connections") or 0)
        free[name] = max(0, len(forward.findall("address")) - in_use)
    return free


def _assigned(dom: t.Any) -> t.Set[str]:
    """The host PCI addresses assigned to an active domain (none when it has just gone away)."""
    try:
        return failover.assigned_pci_addresses(dom.XMLDesc(0))
    except libvirt.libvirtError as exc:
        if is_not_found(exc):
            return set()
        raise


def _pci_devices(conn: t.Any, wanted: t.AbstractSet[str], assigned: t.Mapping[str, str]) -> t.Dict[str, placement.PciDevice]:
    """What each wanted PCI address is on the host: left out when the host has no such node device.

    A VF's node device has ``<capability type='phys_function'>`` (libvirt's view of sysfs ``physfn``);
    ``assigned`` names the active domain each address is assigned to.
    """
    found = {}
    for address in sorted(wanted):
        try:
            device = conn.nodeDeviceLookupByName(failover.pci_node_device(address))
            xml = ET.fromstring(device.XMLDesc(0))
        except libvirt.libvirtError as exc:
            if libvirt_error_code(exc) == libvirt.VIR_ERR_NO_NODE_DEVICE:
                continue
            raise
        virtual = xml.find("capability[@type='pci']/capability[@type='phys_function']") is not None
        found[address] = placement.PciDevice(virtual_function=virtual, used_by=assigned.get(address))
    return found


def whereabouts(conn: t.Any, uuid: str) -> t.Optional[t.Dict[str, t.Any]]:
    """The VM's state on one host as libvirt shows it: None when the host does not have it."""
    try:
        dom = conn.lookupByUUIDString(uuid)
        state, reason = dom.state()[:2]
        return {
            "state": domxml.state_name(state),
            "reason": domxml.state_reason(state, reason),
            "active": bool(dom.isActive()),
            "persistent": bool(dom.isPersistent()),
        }
    except libvirt.libvirtError as exc:
        if is_not_found(exc):
            return None
        return {"error": str(exc)}
