# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""Where a VM may go, and where it should go.

Filters first, as oVirt's scheduler does (not the source, not in maintenance, reachable, pinning,
CPU compatible, networks present, storage present, the fixed-address SR-IOV VFs of failover
pairs present there as free VFs, enough free memory counting what is already
planned there, and no hard rule of an affinity group broken), then a rank: the fewest soft affinity
rules broken, then the most free memory after the VM lands, ties broken by the fewest running vCPUs.
Placements already planned count as pending load, so a series of choices spreads. Without affinity
groups (``affinity`` None) the filters and the rank are the others alone.

Pure logic: the facts come from ``host_info``-style readings; no libvirt import.
"""

from __future__ import annotations

import dataclasses
import functools
import typing as t

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.affinity import Affinity

# Memory, in MiB, a destination keeps back for itself unless told otherwise (suits small lab hosts).
DEFAULT_MEMORY_RESERVED_MIB = 256


@dataclasses.dataclass(frozen=True)
class VmNeeds:
    """What a VM requires of the host it runs on."""

    name: str
    memory_mib: int
    vcpus: int = 1
    networks: t.FrozenSet[str] = frozenset()
    bridges: t.FrozenSet[str] = frozenset()
    disk_paths: t.FrozenSet[str] = frozenset()
    pinned_hosts: t.FrozenSet[str] = frozenset()
    # (network, count): the SR-IOV VFs the VM draws from libvirt hostdev networks, sorted by network.
    vfs: t.Tuple[t.Tuple[str, int], ...] = ()
    # Host PCI addresses (DDDD:BB:SS.F) of the VFs of failover pairs with a fixed address (vf_address).
    vf_addresses: t.FrozenSet[str] = frozenset()


def host_names(value: t.Any) -> t.FrozenSet[str]:
    """A set of host names from a setting that may be missing, one name, or a list of names."""
    if not value:
        return frozenset()
    if isinstance(value, str):
        return frozenset((value,))
    return frozenset(str(name) for name in value)


def needs_from_facts(
    facts: t.Mapping[str, t.Any], requirements: t.Mapping[str, t.Any], effective_settings: t.Mapping[str, t.Any]
) -> VmNeeds:
    """What a VM requires of a destination.

    ``facts`` are a domain's facts (``domain.describe_domain``), ``requirements`` what its XML asks of
    a host (``domain.parse_requirements``) and ``effective_settings`` its effective migration settings
    (``settings.effective``), whose ``pinned_hosts`` restrict the destinations. Only disks with a
    file or block source must be visible on the destination (``shared_storage``).
    """
    disks = requirements.get("disks") or []
    return VmNeeds(
        name=str(facts.get("name") or ""),
        memory_mib=int(facts.get("memory_mib") or 0),
        vcpus=int(facts.get("vcpus") or 1),
        networks=frozenset(requirements.get("networks") or ()),
        bridges=frozenset(requirements.get("bridges") or ()),
        disk_paths=frozenset(disk["path"] for disk in disks if disk.get("path") and disk.get("shared_storage")),
        pinned_hosts=host_names(effective_settings.get("pinned_hosts")),
        vfs=tuple(sorted((str(net), int(count)) for net, count in (requirements.get("vf_networks") or {}).items())),
        vf_addresses=frozenset(requirements.get("vf_addresses") or ()),
    )


@dataclasses.dataclass(frozen=True)
class PciDevice:
    """A PCI address a VM's fixed-address VF uses, as a candidate host has it."""

    # An SR-IOV virtual function (its node device has a phys_function capability).
    virtual_function: bool
    # The active domain it is assigned to there (None: free).
    used_by: t.Optional[str] = None


@dataclasses.dataclass
class HostState:
    """One candidate destination as read from its libvirtd (or why it could not be read)."""

    name: str
    uri: str
    uuid: t.Optional[str] = None
    available_mib: int = 0
    vcpus_running: int = 0
    networks: t.FrozenSet[str] = frozenset()
    # None when the host cannot tell which bridges it has (no libvirt interface driver).
    bridges: t.Optional[t.FrozenSet[str]] = None
    disk_paths: t.FrozenSet[str] = frozenset()
    maintenance: bool = False
    error: t.Optional[str] = None
    # The refusal behind ``error`` (for example the host and mechanism of a failed authentication).
    error_details: t.Dict[str, t.Any] = dataclasses.field(default_factory=dict)
    cpu_incompatible: t.Dict[str, str] = dataclasses.field(default_factory=dict)
    # UUIDs of every domain defined or running there, to refuse a VM that would be copied twice.
    vm_uuids: t.FrozenSet[str] = frozenset()
    # Names of the domains active there (running or paused): where affinity groups see them.
    running_vms: t.FrozenSet[str] = frozenset()
    # Free VFs of each active libvirt hostdev network the VMs being placed use (absent: no such network).
    free_vfs: t.Dict[str, int] = dataclasses.field(default_factory=dict)
    # Each PCI address the fixed-address VFs of the VMs being placed use (absent: no such PCI device there).
    pci_devices: t.Dict[str, PciDevice] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class PendingLoad:
    """Memory, vCPUs and VFs already planned onto each host by earlier choices."""

    memory_mib: t.Dict[str, int] = dataclasses.field(default_factory=dict)
    vcpus: t.Dict[str, int] = dataclasses.field(default_factory=dict)
    vfs: t.Dict[t.Tuple[str, str], int] = dataclasses.field(default_factory=dict)

    def add(self, host: str, vm: VmNeeds) -> None:
        self.memory_mib[host] = self.memory_mib.get(host, 0) + vm.memory_mib
        self.vcpus[host] = self.vcpus.get(host, 0) + vm.vcpus
        for network, count in vm.vfs:
            self.vfs[(host, network)] = self.vfs.get((host, network), 0) + count

    def remove(self, host: str, vm: VmNeeds) -> None:
        """``vm`` is planned to leave ``host``: its memory, vCPUs and VFs count as freed there."""
        self.memory_mib[host] = self.memory_mib.get(host, 0) - vm.memory_mib
        self.vcpus[host] = self.vcpus.get(host, 0) - vm.vcpus
        for network, count in vm.vfs:
            self.vfs[(host, network)] = self.vfs.get((host, network), 0) - count


def _free_vfs(host: HostState, network: str, pending: t.Optional[PendingLoad]) -> t.Optional[int]:
    """Free VFs of ``network`` on ``host`` after planned placements; None when the host has no such network."""
    if network not in host.free_vfs:
        return None
    return host.free_vfs[network] - (pending.vfs.get((host.name, network), 0) if pending is not None else 0)


def _vf_address_problem(host: HostState, address: str) -> t.Optional[str]:
    """Why ``host`` cannot give a VM the VF at the PCI ``address`` (None when it is a free VF there)."""
    device = host.pci_devices.get(address)
    if device is None:
        return "has no PCI device %s for the VM's fixed-address SR-IOV VF (vf_address)" % address
    if not device.virtual_function:
        return "has PCI device %s, but it is not an SR-IOV virtual function (no phys_function capability), for the VM's vf_address" % address
    if device.used_by is not None:
        return "has the VF %s (the VM's vf_address) assigned to the active VM '%s'" % (address, device.used_by)
    return None


def fits(
    vm: VmNeeds,
    host: HostState,
    source_uuid: t.Optional[str],
    pending: t.Optional[PendingLoad] = None,
    memory_mib: t.Optional[int] = None,
    affinity: t.Optional[Affinity] = None,
) -> bool:
    """``host`` can take ``vm`` now: :func:`rejections` would be empty (checked without building the reasons).

    ``memory_mib``, when given, is the memory to check instead of the VM's own (0: every filter but memory).
    ``affinity``, when given, also refuses a host where the VM would break a hard affinity rule.
    """
    if host.error or host.maintenance or (source_uuid is not None and host.uuid == source_uuid):
        return False
    if vm.pinned_hosts and host.name not in vm.pinned_hosts:
        return False
    if vm.name in host.cpu_incompatible or not vm.networks <= host.networks or not vm.disk_paths <= host.disk_paths:
        return False
    if host.bridges is not None and not vm.bridges <= host.bridges:
        return False
    for network, count in vm.vfs:
        if (_free_vfs(host, network, pending) or 0) < count:
            return False
    if any(_vf_address_problem(host, address) for address in vm.vf_addresses):
        return False
    if affinity is not None and not affinity.allows(vm.name, host.name):
        return False
    planned = pending.memory_mib.get(host.name, 0) if pending is not None else 0
    return host.available_mib - planned >= (vm.memory_mib if memory_mib is None else memory_mib)


@functools.lru_cache(maxsize=1024)
def _listed(names: t.FrozenSet[str]) -> str:
    return ", ".join(sorted(names))


def rejections(
    vm: VmNeeds, host: HostState, source_uuid: t.Optional[str], pending: t.Optional[PendingLoad] = None, affinity: t.Optional[Affinity] = None
) -> t.List[str]:
    """Every reason ``host`` cannot take ``vm`` now (empty when it can); with ``affinity``, the hard affinity rules it would break too."""
    if host.error:
        return ["cannot be reached: %s" % host.error]
    reasons: t.List[str] = []
    if source_uuid is not None and host.uuid == source_uuid:
        reasons.append("is the source host itself (same host UUID %s)" % source_uuid)
    if host.maintenance:
        reasons.append("is in maintenance")
    if vm.pinned_hosts and host.name not in vm.pinned_hosts:
        reasons.append("is not among the VM's pinned hosts (%s)" % _listed(vm.pinned_hosts))
    if vm.name in host.cpu_incompatible:
        reasons.append("cannot run the VM's CPU: %s" % host.cpu_incompatible[vm.name])
    if not vm.networks <= host.networks:
        reasons.append("lacks the active network(s) %s" % _listed(vm.networks - host.networks))
    if host.bridges is not None and not vm.bridges <= host.bridges:
        reasons.append("lacks the bridge(s) %s" % _listed(vm.bridges - host.bridges))
    if not vm.disk_paths <= host.disk_paths:
        reasons.append("cannot see the disk(s) %s" % _listed(vm.disk_paths - host.disk_paths))
    for network, count in vm.vfs:
        vfs_free = _free_vfs(host, network, pending)
        if vfs_free is None:
            reasons.append("lacks the active SR-IOV VF network %s (forward mode hostdev)" % network)
        elif vfs_free < count:
            reasons.append("has %d free VF(s) in network %s after planned migrations, the VM needs %d" % (max(vfs_free, 0), network, count))
    for address in sorted(vm.vf_addresses):
        problem = _vf_address_problem(host, address)
        if problem:
            reasons.append(problem)
    if affinity is not None:
        reasons.extend(affinity.rejections(vm.name, host.name))
    free = host.available_mib - (pending.memory_mib.get(host.name, 0) if pending is not None else 0)
    if free < vm.memory_mib:
        reasons.append(
            "has %d MiB free after its reserve and planned migrations, the VM needs %d MiB" % (free, vm.memory_mib)
        )
    return reasons


def rank(vm: VmNeeds, host: HostState, pending: t.Optional[PendingLoad] = None) -> t.Tuple[int, int, str]:
    """Sort key, lowest best: most free memory after the VM lands, then fewest running vCPUs."""
    pending = pending or PendingLoad()
    free_after = host.available_mib - pending.memory_mib.get(host.name, 0) - vm.memory_mib
    vcpus = host.vcpus_running + pending.vcpus.get(host.name, 0)
    return (-free_after, vcpus, host.name)


def choose(
    vm: VmNeeds,
    hosts: t.Sequence[HostState],
    source_uuid: t.Optional[str],
    pending: t.Optional[PendingLoad] = None,
    affinity: t.Optional[Affinity] = None,
) -> t.Tuple[t.Optional[HostState], t.Dict[str, t.List[str]]]:
    """The best host for ``vm`` (``None`` if none fits) and, per rejected host, why.

    With ``affinity``, a host where the VM would break a hard rule is rejected, and the hosts where it
    breaks the fewest soft rules come first, then the :func:`rank` order.
    """
    rejected: t.Dict[str, t.List[str]] = {}
    fitting: t.List[HostState] = []
    for host in hosts:
        if fits(vm, host, source_uuid, pending, affinity=affinity):
            fitting.append(host)
        else:
            rejected[host.name] = rejections(vm, host, source_uuid, pending, affinity)
    if not fitting:
        return None, rejected
    if affinity is None:
        return min(fitting, key=lambda host: rank(vm, host, pending)), rejected
    return min(fitting, key=lambda host: (affinity.penalty(vm.name, host.name), rank(vm, host, pending))), rejected


def explain(vm: str, rejected: t.Mapping[str, t.Sequence[str]]) -> str:
    """One sentence naming the VM and every host with its reasons."""
    if not rejected:
        return "no candidate host was given for VM '%s'" % vm
    parts = ["%s %s" % (name, "; ".join(reasons)) for name, reasons in sorted(rejected.items())]
    return "no host can take VM '%s': %s" % (vm, " | ".join(parts))
