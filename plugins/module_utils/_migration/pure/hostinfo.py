# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""Facts about one hypervisor host, as a scheduler and an operator need them.

The ``parse_*`` functions are pure: they turn libvirt XML documents (capabilities, domain
capabilities, network and storage pool definitions) into plain dicts. :class:`HostInfoCollector`
asks an open ``virConnect`` for those documents and for the host's counters, and assembles the
``host`` result of the ``virtops.migration.host_info`` module. No libvirt import here: libvirt's
constants are used by value, each named.
"""

from __future__ import annotations

import typing as t
import xml.etree.ElementTree as ET

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.placement import DEFAULT_MEMORY_RESERVED_MIB
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.domain import (
    describe_domain,
    scaled_bytes,
    to_mib,
)
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import (
    LIBVIRT_ERROR_CODES,
    HostUnreachableError,
    MigrationError,
    VmNotFoundError,
    is_unsupported,
    libvirt_error_code,
    optional_call,
    translate_libvirt_error,
)

VIR_NODE_MEMORY_STATS_ALL_CELLS = -1  # virNodeGetMemoryStats: the whole host, not one NUMA cell
KIB = 1024
VANISHED_CODES = frozenset((LIBVIRT_ERROR_CODES["VIR_ERR_NO_NETWORK"], LIBVIRT_ERROR_CODES["VIR_ERR_NO_STORAGE_POOL"]))


def version_string(version: t.Optional[int]) -> t.Optional[str]:
    """libvirt's packed version number (major * 1,000,000 + minor * 1,000 + micro) as ``"9.0.0"``."""
    if version is None or version < 0:
        return None
    return "%d.%d.%d" % (version // 1000000, (version // 1000) % 1000, version % 1000)


def _int(value: t.Optional[str]) -> t.Optional[int]:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _yes(value: t.Optional[str]) -> bool:
    return value == "yes"


def _enum_values(parent: t.Optional[ET.Element], name: str) -> t.List[str]:
    if parent is None:
        return []
    for enum in parent.findall("enum"):
        if enum.get("name") == name:
            return [value.text or "" for value in enum.findall("value")]
    return []


def parse_capabilities(xml_text: str) -> t.Dict[str, t.Any]:
    """The host and guest parts of ``virConnectGetCapabilities`` XML."""
    root = ET.fromstring(xml_text)
    host = root.find("host")
    if host is None:
        raise ValueError("capabilities XML has no <host> element")
    cpu = host.find("cpu")
    topology = cpu.find("topology") if cpu is not None else None
    cells = host.findall("topology/cells/cell")
    migration = host.find("migration_features")
    return {
        "uuid": host.findtext("uuid"),
        "cpu": {
            "arch": cpu.findtext("arch") if cpu is not None else None,
            "model": cpu.findtext("model") if cpu is not None else None,
            "vendor": cpu.findtext("vendor") if cpu is not None else None,
            "sockets": _int(topology.get("sockets")) if topology is not None else None,
            "dies": _int(topology.get("dies")) if topology is not None else None,
            "cores": _int(topology.get("cores")) if topology is not None else None,
            "threads": _int(topology.get("threads")) if topology is not None else None,
            "features": sorted(
                feature.get("name") or "" for feature in (cpu.findall("feature") if cpu is not None else [])
            ),
        },
        "numa_cells": [
            {
                "id": _int(cell.get("id")),
                "memory_mib": to_mib(scaled_bytes(cell.find("memory"))),
                "cpus": len(cell.findall("cpus/cpu")),
            }
            for cell in cells
        ],
        "migration": {
            "live": migration is not None and migration.find("live") is not None,
            "uri_transports": [
                transport.text or ""
                for transport in (migration.findall("uri_transports/uri_transport") if migration is not None else [])
            ],
        },
        "secmodels": [model.findtext("model") or "" for model in host.findall("secmodel")],
        "guests": [_parse_guest(guest) for guest in root.findall("guest")],
    }


def _parse_guest(guest: ET.Element) -> t.Dict[str, t.Any]:
    arch = guest.find("arch")
    machines: t.List[str] = []
    if arch is not None:
        for machine in arch.findall("machine"):
            if machine.text and machine.text not in machines:
                machines.append(machine.text)
    return {
        "os_type": guest.findtext("os_type"),
        "arch": arch.get("name") if arch is not None else None,
        "wordsize": _int(arch.findtext("wordsize")) if arch is not None else None,
        "emulator": arch.findtext("emulator") if arch is not None else None,
        "domain_types": [domain.get("type") or "" for domain in (arch.findall("domain") if arch is not None else [])],
        "machines": machines,
    }


def parse_domain_capabilities(xml_text: str) -> t.Dict[str, t.Any]:
    """What ``virConnectGetDomainCapabilities`` XML says for one emulator / arch / machine / type."""
    root = ET.fromstring(xml_text)
    modes = {mode.get("name") or "": mode for mode in root.findall("cpu/mode")}
    host_model = modes.get("host-model")
    host_model_cpu = host_model.find("model") if host_model is not None else None
    passthrough = modes.get("host-passthrough")
    custom = modes.get("custom")
    vcpu = root.find("vcpu")
    return {
        "domain_type": root.findtext("domain"),
        "emulator": root.findtext("path"),
        "machine": root.findtext("machine"),
        "arch": root.findtext("arch"),
        "max_vcpus": _int(vcpu.get("max")) if vcpu is not None else None,
        "cpu_modes": sorted(name for name, mode in modes.items() if _yes(mode.get("supported"))),
        "host_model": {
            "supported": host_model is not None and _yes(host_model.get("supported")),
            "model": host_model_cpu.text if host_model_cpu is not None else None,
            "vendor": host_model.findtext("vendor") if host_model is not None else None,
        },
        "host_passthrough_migratable": "on" in _enum_values(passthrough, "hostPassthroughMigratable"),
        "usable_cpu_models": [
            model.text or ""
            for model in (custom.findall("model") if custom is not None else [])
            if model.get("usable") == "yes"
        ],
        "features": {feature.tag: _yes(feature.get("supported")) for feature in root.findall("features/*")},
    }


def parse_network_xml(xml_text: str) -> t.Dict[str, t.Any]:
    """Name, UUID, forward mode and bridge of a virtual network definition."""
    root = ET.fromstring(xml_text)
    forward = root.find("forward")
    bridge = root.find("bridge")
    return {
        "name": root.findtext("name"),
        "uuid": root.findtext("uuid"),
        # Without <forward> a libvirt network is isolated; <forward> without a mode means NAT.
        "forward_mode": (forward.get("mode") or "nat") if forward is not None else "isolated",
        "bridge": bridge.get("name") if bridge is not None else None,
    }


def parse_pool_xml(xml_text: str) -> t.Dict[str, t.Any]:
    """Name, UUID, type, target path and sizes of a storage pool definition."""
    root = ET.fromstring(xml_text)
    return {
        "name": root.findtext("name"),
        "uuid": root.findtext("uuid"),
        "type": root.get("type"),
        "target_path": root.findtext("target/path"),
        "capacity_bytes": scaled_bytes(root.find("capacity"), "bytes"),
        "allocation_bytes": scaled_bytes(root.find("allocation"), "bytes"),
        "available_bytes": scaled_bytes(root.find("available"), "bytes"),
    }


def memory_facts(total_kib: int, free_kib: int, reserved_mib: int) -> t.Dict[str, int]:
    """Host memory in MiB; ``available_mib`` is free memory less the reserve, never negative."""
    free_mib = free_kib // KIB
    return {
        "total_mib": total_kib // KIB,
        "free_mib": free_mib,
        "reserved_mib": reserved_mib,
        "available_mib": max(0, free_mib - reserved_mib),
    }


def host_memory(conn: t.Any, info: t.Sequence[t.Any], reserved_mib: int) -> t.Dict[str, int]:
    """The host's memory as placement and host_info both count it (one reading, one rule).

    Free memory is libvirt's node statistics' free memory plus buffers and page cache, which the
    kernel gives back to guests on demand; without those statistics, ``getFreeMemory``. ``info`` is
    ``conn.getInfo()`` (its second item is the total in MiB).
    """
    stats = optional_call(conn.getMemoryStats, VIR_NODE_MEMORY_STATS_ALL_CELLS)
    if stats and "total" in stats and "free" in stats:
        free_kib = stats["free"] + stats.get("buffers", 0) + stats.get("cached", 0)
        return memory_facts(stats["total"], free_kib, reserved_mib)
    return memory_facts(info[1] * KIB, conn.getFreeMemory() // KIB, reserved_mib)


def summarize_vms(vms: t.Iterable[t.Mapping[str, t.Any]]) -> t.Dict[str, int]:
    """Counts over the VMs: all of them, and the active ones (running or paused: holding resources)."""
    vms = list(vms)
    active = [vm for vm in vms if vm.get("active")]
    return {
        "vms_total": len(vms),
        "vms_running": len(active),
        "vcpus_running": sum(vm.get("vcpus") or 0 for vm in active),
        "memory_running_mib": sum(vm.get("memory_mib") or 0 for vm in active),
    }


# What host_info gathers only when asked (option ``gather``): each costs libvirt calls per object.
OPTIONAL_PARTS = ("vms", "networks", "storage_pools", "domain_capabilities")


class HostInfoCollector:
    """Gathers the ``host`` facts from an open libvirt connection; changes nothing.

    Parts the driver does not offer (for example domain capabilities on the test driver) come back
    empty, and each such gap is listed in :attr:`warnings`.
    """

    def __init__(self, conn: t.Any, memory_reserved_mib: int = DEFAULT_MEMORY_RESERVED_MIB) -> None:
        if memory_reserved_mib < 0:
            raise MigrationError(
                "memory_reserved_mib must be 0 or more, got %d." % memory_reserved_mib,
                memory_reserved_mib=memory_reserved_mib,
            )
        self.conn = conn
        self.memory_reserved_mib = memory_reserved_mib
        self.warnings: t.List[str] = []
        self.uri: t.Optional[str] = None

    def collect(self, parts: t.Iterable[str] = OPTIONAL_PARTS) -> t.Dict[str, t.Any]:
        """The facts about the host, as the module returns them under ``host``.

        Identity, CPU, memory, migration transports and guest types always; of
        :data:`OPTIONAL_PARTS`, only those in ``parts`` (the others come back empty).
        """
        parts = frozenset(parts)
        self.uri = self._call("read the connection URI", self.conn.getURI)
        capabilities = parse_capabilities(self._call("read the host capabilities", self.conn.getCapabilities))
        info = self._call("read the node information", self.conn.getInfo)
        vms = self._vms() if "vms" in parts else []
        cpu = dict(capabilities["cpu"])
        cpu.update(count=info[2], mhz=info[3], numa_nodes=len(capabilities["numa_cells"]) or info[4])
        # Fall back to virNodeInfo (arch, memory, cpus, mhz, nodes, sockets, cores, threads).
        for key, value in (("arch", info[0]), ("sockets", info[5]), ("cores", info[6]), ("threads", info[7])):
            if cpu[key] is None:
                cpu[key] = value
        hypervisor_version = self._call("read the hypervisor version", optional_call, self.conn.getVersion)
        return {
            "uri": self.uri,
            "hostname": self._call("read the host name", self.conn.getHostname),
            "uuid": capabilities["uuid"],
            "libvirt_version": version_string(self._call("read the libvirt version", self.conn.getLibVersion)),
            "hypervisor": {
                "type": self._call("read the hypervisor type", self.conn.getType),
                "version": version_string(hypervisor_version),
            },
            "cpu": cpu,
            "memory": self._memory(info),
            "migration": capabilities["migration"],
            "guests": capabilities["guests"],
            "domain_capabilities": self._domain_capabilities(cpu["arch"], capabilities["guests"]) if "domain_capabilities" in parts else {},
            "networks": self._networks() if "networks" in parts else [],
            "storage_pools": self._storage_pools() if "storage_pools" in parts else [],
            "vms": vms,
            "summary": summarize_vms(vms),
        }

    def _call(self, action: str, func: t.Callable[..., t.Any], *args: t.Any) -> t.Any:
        try:
            return func(*args)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            if isinstance(exc, MigrationError):
                raise
            raise translate_libvirt_error(exc, action, uri=self.uri) from exc

    def _memory(self, info: t.Sequence[t.Any]) -> t.Dict[str, int]:
        return self._call("read the host memory statistics", host_memory, self.conn, info, self.memory_reserved_mib)

    def _domain_capabilities(
        self, arch: t.Optional[str], guests: t.Sequence[t.Mapping[str, t.Any]]
    ) -> t.Dict[str, t.Any]:
        """Domain capabilities for each virtualization type the host offers for its own arch."""
        domain_types: t.List[str] = []
        for guest in guests:
            if guest["arch"] == arch:
                for domain_type in guest["domain_types"]:
                    if domain_type not in domain_types:
                        domain_types.append(domain_type)
        result: t.Dict[str, t.Any] = {}
        for domain_type in domain_types:
            try:
                xml = self.conn.getDomainCapabilities(None, arch, None, domain_type, 0)
            except Exception as exc:  # pylint: disable=broad-exception-caught
                error = translate_libvirt_error(exc, "read the %s domain capabilities" % domain_type, uri=self.uri)
                if isinstance(error, HostUnreachableError):
                    raise error from exc
                # Informational: a host that cannot describe one virtualization type still has facts.
                if is_unsupported(exc):
                    self.warnings.append(
                        "%s does not report domain capabilities for %s (%s)." % (self.uri, domain_type, exc)
                    )
                else:
                    self.warnings.append(error.msg)
                continue
            result[domain_type] = parse_domain_capabilities(xml)
        return result

    def _networks(self) -> t.List[t.Dict[str, t.Any]]:
        networks = self._optional_list("list the virtual networks", "listAllNetworks")
        return self._describe_all(networks, parse_network_xml, "network")

    def _storage_pools(self) -> t.List[t.Dict[str, t.Any]]:
        pools = self._optional_list("list the storage pools", "listAllStoragePools")
        return self._describe_all(pools, parse_pool_xml, "storage pool")

    def _describe_all(
        self, objects: t.Iterable[t.Any], parse: t.Callable[[str], t.Dict[str, t.Any]], kind: str
    ) -> t.List[t.Dict[str, t.Any]]:
        """Facts about networks or storage pools: their XML plus active / persistent / autostart."""
        result = []
        for obj in objects:
            try:
                facts = parse(obj.XMLDesc(0))
                facts.update(
                    active=bool(obj.isActive()),
                    persistent=bool(obj.isPersistent()),
                    autostart=bool(obj.autostart()),
                )
            except Exception as exc:  # pylint: disable=broad-exception-caught
                if libvirt_error_code(exc) in VANISHED_CODES:
                    continue  # undefined since it was listed
                raise translate_libvirt_error(exc, "read the %s %s" % (kind, _object_name(obj)), uri=self.uri) from exc
            result.append(facts)
        return sorted(result, key=lambda item: item["name"] or "")

    def _optional_list(self, action: str, method: str) -> t.List[t.Any]:
        try:
            return list(getattr(self.conn, method)(0))
        except Exception as exc:  # pylint: disable=broad-exception-caught
            if not is_unsupported(exc):
                raise translate_libvirt_error(exc, action, uri=self.uri) from exc
            self.warnings.append("Cannot %s on %s: the driver does not offer it (%s)." % (action, self.uri, exc))
            return []

    def _vms(self) -> t.List[t.Dict[str, t.Any]]:
        domains = self._call("list the VMs", self.conn.listAllDomains, 0)
        vms = []
        for domain in domains:
            try:
                facts = describe_domain(domain, self.uri)
            except VmNotFoundError:
                continue  # undefined or migrated away since it was listed
            if "migration_settings_error" in facts:
                self.warnings.append(
                    "VM '%s' on %s has unreadable migration settings, left out (an unreadable migration mode or pinning counts as migration_mode none): %s"
                    % (facts["name"], self.uri, facts["migration_settings_error"])
                )
            vms.append(facts)
        return sorted(vms, key=lambda item: item["name"] or "")


def _object_name(obj: t.Any) -> str:
    try:
        return "'%s'" % obj.name()
    except Exception:  # pylint: disable=broad-exception-caught
        return "(name unknown)"
