# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""SR-IOV failover pairs and assigned host devices in domain XML (pure: no libvirt import).

A *pair* is two ``<interface>`` elements that this collection names by user alias: the virtio
backup ``ua-<pair>-backup`` and the VF ``ua-<pair>-vf``. Two modes:

``teaming``
    libvirt's failover pair: the backup carries ``<teaming type='persistent'/>`` and is listed
    first; the VF is a hostdev NIC with ``<teaming type='transient' persistent='ua-<pair>-backup'/>``;
    both share one MAC. QEMU unplugs the VF itself when a live migration starts.
``bond``
    An active-backup bond inside the guest: the VF (the bond's primary) and the virtio backup with
    no ``<teaming>``. The backup uses the VF's MAC unless the guest bond runs with
    ``fail_over_mac=active``; the job runner unplugs the VF before a move and plugs one in after.

The readers here also find what blocks a live migration (assigned host devices that are neither
the transient half of a failover pair nor the VF of one of our bond pairs) and what QEMU unplugs by
itself during one (failover primaries).
"""

from __future__ import annotations

import copy
import random
import re
import typing as t
import xml.etree.ElementTree as ET
from dataclasses import dataclass

ALIAS_PREFIX = "ua-"
MODES = ("teaming", "bond")
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
# libvirt's own range for generated MACs (QEMU/KVM's OUI).
MAC_PREFIX = "52:54:00"

# A pair name becomes part of two user aliases; libvirt accepts [A-Za-z0-9_-] after "ua-".
_PAIR_NAME = re.compile(r"[A-Za-z0-9_-]+\Z")
PAIR_NAME_MAX = 48
_ALIAS = re.compile(r"ua-(?P<pair>[A-Za-z0-9_-]+)-(?P<half>backup|vf)\Z")
_PCI_ADDRESS = re.compile(r"(?P<domain>[0-9a-fA-F]{4}):(?P<bus>[0-9a-fA-F]{2}):(?P<slot>[0-9a-fA-F]{2})\.(?P<function>[0-7])\Z")
_MAC = re.compile(r"([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}\Z")

ET.register_namespace("qemu", QEMU_NS)
ET.register_namespace("virtops", "https://virtops.github.io/xmlns/migration/1")


def check_pair_name(pair: str) -> None:
    """Raise :class:`ValueError` unless ``pair`` makes valid libvirt user aliases."""
    if not isinstance(pair, str) or not pair:
        raise ValueError("the pair name must be a non-empty string")
    if len(pair) > PAIR_NAME_MAX:
        raise ValueError("the pair name %r is longer than %d characters" % (pair, PAIR_NAME_MAX))
    if not _PAIR_NAME.match(pair):
        raise ValueError("the pair name %r may hold only letters, digits, '_' and '-' (it becomes part of the aliases %s)" % (pair, backup_alias("<pair>")))


def backup_alias(pair: str) -> str:
    """The user alias of a pair's virtio backup interface."""
    return "%s%s-backup" % (ALIAS_PREFIX, pair)


def vf_alias(pair: str) -> str:
    """The user alias of a pair's VF interface."""
    return "%s%s-vf" % (ALIAS_PREFIX, pair)


def parse_pci_address(address: str) -> t.Dict[str, str]:
    """``DDDD:BB:SS.F`` as the attributes of a libvirt ``<address type='pci'>``; :class:`ValueError` otherwise."""
    match = _PCI_ADDRESS.match(address.strip()) if isinstance(address, str) else None
    if not match:
        raise ValueError("%r is not a PCI address of the form DDDD:BB:SS.F (for example 0000:03:10.1)" % (address,))
    return {
        "type": "pci",
        "domain": "0x" + match.group("domain").lower(),
        "bus": "0x" + match.group("bus").lower(),
        "slot": "0x" + match.group("slot").lower(),
        "function": "0x" + match.group("function"),
    }


def format_pci_address(element: t.Optional[ET.Element]) -> t.Optional[str]:
    """``DDDD:BB:SS.F`` from a libvirt ``<address type='pci'>`` element (``None`` when there is none)."""
    if element is None or element.get("type", "pci") != "pci" or element.get("bus") is None:
        return None
    try:
        return "%04x:%02x:%02x.%x" % tuple(int(element.get(key) or "0", 0) for key in ("domain", "bus", "slot", "function"))
    except ValueError:
        return None


def pci_node_device(address: str) -> str:
    """The libvirt node device name of a PCI address ``DDDD:BB:SS.F`` (``pci_DDDD_BB_SS_F``)."""
    return "pci_" + address.replace(":", "_").replace(".", "_")


def normalize_mac(mac: str) -> str:
    """A MAC in libvirt's lower-case colon form; :class:`ValueError` for anything else."""
    if not isinstance(mac, str) or not _MAC.match(mac.strip()):
        raise ValueError("%r is not a MAC address of the form 52:54:00:12:34:56" % (mac,))
    value = mac.strip().lower()
    if int(value[:2], 16) & 1:
        raise ValueError("%s is a multicast MAC address; a NIC needs a unicast one" % value)
    return value


@dataclass(frozen=True)
class PairInfo:
    """One failover pair found in a domain XML by our aliases."""

    name: str
    mode: str  # 'teaming' or 'bond'
    vf_alias: str
    backup_alias: str
    mac: t.Optional[str]
    vf_network: t.Optional[str]
    vf_address: t.Optional[str]
    backup_network: t.Optional[str]
    backup_bridge: t.Optional[str]
    vf_present: bool


@dataclass(frozen=True)
class PairSpec:
    """The pair a user wants: what :func:`build_pair` writes and :func:`pair_differences` compares."""

    name: str
    mode: str
    mac: str
    vf_network: t.Optional[str] = None
    vf_address: t.Optional[str] = None
    backup_network: t.Optional[str] = None
    backup_bridge: t.Optional[str] = None
    fail_over_mac: bool = False
    # The backup's own MAC in bond mode with fail_over_mac (ignored otherwise).
    backup_mac: t.Optional[str] = None

    def validate(self) -> None:
        """Raise :class:`ValueError` for a spec that cannot be written."""
        check_pair_name(self.name)
        if self.mode not in MODES:
            raise ValueError("mode must be one of %s, not %r" % (", ".join(MODES), self.mode))
        if bool(self.vf_network) == bool(self.vf_address):
            raise ValueError("exactly one of vf_network and vf_address is needed")
        if bool(self.backup_network) == bool(self.backup_bridge):
            raise ValueError("exactly one of backup_network and backup_bridge is needed")
        if self.vf_address:
            parse_pci_address(self.vf_address)
        normalize_mac(self.mac)
        if self.fail_over_mac and self.mode != "bond":
            raise ValueError("fail_over_mac applies to mode bond only")
        if self.mode == "bond" and self.fail_over_mac:
            if not self.backup_mac:
                raise ValueError("bond mode with fail_over_mac needs a MAC of the backup's own")
            if normalize_mac(self.backup_mac) == normalize_mac(self.mac):
                raise ValueError("with fail_over_mac the backup needs a MAC other than the VF's (%s)" % self.mac)

    @property
    def effective_backup_mac(self) -> str:
        """The MAC the backup interface carries."""
        if self.mode == "bond" and self.fail_over_mac and self.backup_mac:
            return normalize_mac(self.backup_mac)
        return normalize_mac(self.mac)


# --- reading -----------------------------------------------------------------------------------


def _devices(root: ET.Element) -> t.List[ET.Element]:
    devices = root.find("devices")
    return list(devices) if devices is not None else []


def _alias(element: ET.Element) -> t.Optional[str]:
    alias = element.find("alias")
    return alias.get("name") if alias is not None else None


def _mac(element: ET.Element) -> t.Optional[str]:
    mac = element.find("mac")
    address = mac.get("address") if mac is not None else None
    return address.lower() if address else None


def _teaming_type(interface: ET.Element) -> t.Optional[str]:
    teaming = interface.find("teaming")
    return teaming.get("type") if teaming is not None else None


def _interfaces(root: ET.Element) -> t.List[ET.Element]:
    return [element for element in _devices(root) if element.tag == "interface"]


def _halves(root: ET.Element, pair: str) -> t.Tuple[t.Optional[ET.Element], t.Optional[ET.Element]]:
    """The backup and VF interface elements of ``pair`` (``None`` for a half that is absent)."""
    backup = vf = None
    for interface in _interfaces(root):
        alias = _alias(interface)
        if alias == backup_alias(pair) and backup is None:
            backup = interface
        elif alias == vf_alias(pair) and vf is None:
            vf = interface
    return backup, vf


def _source(interface: ET.Element) -> t.Dict[str, t.Optional[str]]:
    source = interface.find("source")
    kind = interface.get("type")
    facts: t.Dict[str, t.Optional[str]] = {"network": None, "bridge": None, "address": None}
    if source is None:
        return facts
    if kind == "network":
        facts["network"] = source.get("network")
    elif kind == "bridge":
        facts["bridge"] = source.get("bridge")
    elif kind == "hostdev":
        facts["address"] = format_pci_address(source.find("address"))
    return facts


def _pair_info(pair: str, backup: ET.Element, vf: t.Optional[ET.Element]) -> PairInfo:
    backup_source = _source(backup)
    vf_source = _source(vf) if vf is not None else {"network": None, "address": None}
    mac = _mac(vf) if vf is not None else None
    return PairInfo(
        name=pair,
        mode="teaming" if _teaming_type(backup) == "persistent" else "bond",
        vf_alias=vf_alias(pair),
        backup_alias=backup_alias(pair),
        mac=mac or _mac(backup),
        vf_network=vf_source["network"],
        vf_address=vf_source["address"],
        backup_network=backup_source["network"],
        backup_bridge=backup_source["bridge"],
        vf_present=vf is not None,
    )


def read_pairs(domain_xml: str) -> t.List[PairInfo]:
    """The failover pairs in a domain XML, found by our aliases, in the order of their backups.

    A pair is known by its backup interface; its VF may be missing (``vf_present`` false), as in
    the live XML of a bond pair whose VF is unplugged for a move.
    """
    root = ET.fromstring(domain_xml)
    pairs: t.List[PairInfo] = []
    for interface in _interfaces(root):
        match = _ALIAS.match(_alias(interface) or "")
        if not match or match.group("half") != "backup":
            continue
        name = match.group("pair")
        if any(found.name == name for found in pairs):
            continue
        backup, vf = _halves(root, name)
        if backup is not None:
            pairs.append(_pair_info(name, backup, vf))
    return pairs


def find_pair(domain_xml: str, pair: str) -> t.Optional[PairInfo]:
    """The pair named ``pair`` (``None`` when its backup is not in the XML)."""
    for found in read_pairs(domain_xml):
        if found.name == pair:
            return found
    return None


def pair_elements_xml(domain_xml: str, pair: str) -> t.List[str]:
    """Each half of ``pair`` present in the XML (backup first), as XML text: the diff's view."""
    backup, vf = _halves(ET.fromstring(domain_xml), pair)
    return [_to_text(element) for element in (backup, vf) if element is not None]


def bond_vf_aliases(domain_xml: str) -> t.List[str]:
    """Aliases of VF halves of our bond pairs (the job runner unplugs these around a move)."""
    return [pair.vf_alias for pair in read_pairs(domain_xml) if pair.mode == "bond" and pair.vf_present]


def macs_in_use(domain_xml: str, exclude_aliases: t.Iterable[str] = ()) -> t.Set[str]:
    """MAC addresses of the domain's interfaces, leaving out those with an alias in ``exclude_aliases``."""
    excluded = set(exclude_aliases)
    macs: t.Set[str] = set()
    for interface in _interfaces(ET.fromstring(domain_xml)):
        if _alias(interface) in excluded:
            continue
        mac = _mac(interface)
        if mac:
            macs.add(mac)
    return macs


def machine_type(domain_xml: str) -> t.Optional[str]:
    """The ``machine`` attribute of ``<os><type>`` (for example ``pc-q35-7.2`` or ``pc``)."""
    os_type = ET.fromstring(domain_xml).find("os/type")
    return os_type.get("machine") if os_type is not None else None


def has_pcie_root_ports(domain_xml: str) -> bool:
    """True when the machine can take a hot-plugged PCI Express device: a q35-style machine.

    Teaming needs the VF alone in a hot-pluggable PCI Express root port; i440fx machines (``pc``,
    ``pc-i440fx-*``) have none. A q35 machine without ``pcie-root-port`` controllers in the
    persistent XML is fine too: libvirt adds them as devices need them.
    """
    machine = (machine_type(domain_xml) or "").lower()
    root = ET.fromstring(domain_xml)
    controllers = [c for c in _devices(root) if c.tag == "controller" and c.get("type") == "pci"]
    if any(c.get("model") == "pcie-root" for c in controllers):
        return True
    return "q35" in machine or machine.startswith("virt")


# --- what blocks a live migration, and what QEMU unplugs by itself --------------------------------


def _describe_hostdev(hostdev: ET.Element) -> str:
    mode = hostdev.get("mode", "subsystem")
    kind = hostdev.get("type", "")
    source = hostdev.find("source")
    if mode == "capabilities":
        detail = ""
        if source is not None:
            detail = " " + " ".join(text.strip() for text in source.itertext() if text.strip())
        return "host device of capability type %s%s (hostdev mode='capabilities')" % (kind or "unknown", detail.rstrip())
    if kind == "pci":
        address = format_pci_address(source.find("address") if source is not None else None)
        return "PCI host device %s (hostdev)" % (address or "at an unknown address")
    if kind == "mdev":
        address = source.find("address") if source is not None else None
        uuid = address.get("uuid") if address is not None else None
        return "mediated device (vGPU) %s (%s)" % (uuid or "of unknown UUID", hostdev.get("model") or "mdev")
    if kind == "usb":
        vendor = source.find("vendor") if source is not None else None
        product = source.find("product") if source is not None else None
        address = source.find("address") if source is not None else None
        if vendor is not None or product is not None:
            where = "%s:%s" % (vendor.get("id") if vendor is not None else "?", product.get("id") if product is not None else "?")
        elif address is not None:
            where = "at bus %s device %s" % (address.get("bus"), address.get("device"))
        else:
            where = "(no source)"
        return "USB host device %s (hostdev)" % where
    if kind == "scsi":
        if source is not None and source.get("protocol"):
            host = source.find("host")
            target = source.get("name") or ""
            if host is not None and host.get("name"):
                target = "%s on %s" % (target, host.get("name"))
            return "SCSI host device %s %s (hostdev)" % (source.get("protocol"), target.strip())
        adapter = source.find("adapter") if source is not None else None
        address = source.find("address") if source is not None else None
        where = adapter.get("name") if adapter is not None else "unknown adapter"
        if address is not None:
            where += " %s:%s:%s" % (address.get("bus"), address.get("target"), address.get("unit"))
        return "SCSI host device %s (hostdev)" % where
    if kind == "scsi_host":
        wwpn = source.get("wwpn") if source is not None else None
        return "vhost-scsi host device %s (hostdev)" % (wwpn or "of unknown WWPN")
    return "host device of type %s (hostdev)" % (kind or "unknown")


def _is_hostdev_nic(interface: ET.Element) -> bool:
    if interface.get("type") == "hostdev":
        return True
    actual = interface.find("actual")
    return actual is not None and actual.get("type") == "hostdev"


def _describe_hostdev_nic(interface: ET.Element) -> str:
    source = interface.find("source")
    actual = interface.find("actual")
    address = None
    if interface.get("type") == "hostdev" and source is not None:
        address = format_pci_address(source.find("address"))
    elif actual is not None and actual.find("source") is not None:
        address = format_pci_address(actual.find("source/address"))  # type: ignore[union-attr]
    parts = []
    if address:
        parts.append("PCI host device %s" % address)
    else:
        parts.append("host device NIC")
    if interface.get("type") == "network" and source is not None and source.get("network"):
        parts.append("from network '%s'" % source.get("network"))
    extra = ["hostdev interface"]
    if _alias(interface):
        extra.append("alias %s" % _alias(interface))
    if _mac(interface):
        extra.append("MAC %s" % _mac(interface))
    return "%s (%s)" % (" ".join(parts), ", ".join(extra))


def unmovable_devices(domain_xml: str) -> t.List[str]:
    """A description of each assigned host device that blocks a live migration ([] when none does).

    Every ``<hostdev>`` counts, and every hostdev NIC (``type='hostdev'``, or a live interface whose
    ``<actual type='hostdev'>``) except the transient half of a teaming pair (QEMU unplugs it) and the
    VF of one of our bond pairs (the job runner unplugs it).
    """
    root = ET.fromstring(domain_xml)
    bond_vfs = set(bond_vf_aliases(domain_xml))
    found: t.List[str] = []
    for element in _devices(root):
        if element.tag == "hostdev":
            found.append(_describe_hostdev(element))
        elif element.tag == "interface" and _is_hostdev_nic(element):
            if _teaming_type(element) == "transient" or _alias(element) in bond_vfs:
                continue
            found.append(_describe_hostdev_nic(element))
    return found


def _override_primaries(root: ET.Element) -> t.List[str]:
    aliases: t.List[str] = []
    for device in root.iter("{%s}device" % QEMU_NS):
        for prop in device.iter("{%s}property" % QEMU_NS):
            if prop.get("name") == "failover_pair_id" and device.get("alias"):
                aliases.append(device.get("alias", ""))
                break
    return aliases


def assigned_pci_addresses(domain_xml: str) -> t.Set[str]:
    """The host PCI addresses (``DDDD:BB:SS.F``) assigned to the domain: PCI ``<hostdev>`` and hostdev NIC sources.

    A hostdev NIC from a libvirt network shows its VF in ``<actual>`` (running domains only).
    """
    found: t.Set[str] = set()
    for element in _devices(ET.fromstring(domain_xml)):
        if element.tag == "hostdev" and element.get("type") == "pci":
            address = format_pci_address(element.find("source/address"))
        elif element.tag == "interface" and element.get("type") == "hostdev":
            address = format_pci_address(element.find("source/address"))
        elif element.tag == "interface":
            address = format_pci_address(element.find("actual[@type='hostdev']/source/address"))
        else:
            continue
        if address:
            found.add(address)
    return found


def failover_primaries(domain_xml: str) -> t.List[str]:
    """Devices QEMU unplugs by itself during a live migration (aliases, or a description without one).

    Hostdev NICs with ``<teaming type='transient'>``, and any device a ``<qemu:override>`` gives a
    ``failover_pair_id``. A non-live move or a managed save deadlocks while one is plugged in.
    """
    root = ET.fromstring(domain_xml)
    found: t.List[str] = []
    for interface in _interfaces(root):
        if _teaming_type(interface) == "transient":
            alias = _alias(interface)
            if alias:
                found.append(alias)
            else:
                mac = _mac(interface)
                found.append("transient teaming interface%s" % (" with MAC %s" % mac if mac else ""))
    # An override outlives its device (a detached primary leaves it behind): only devices present count.
    present = {_alias(device) for device in _devices(root)}
    for alias in _override_primaries(root):
        if alias not in found and alias in present:
            found.append(alias)
    return found


# --- the VF's XML for re-plugging on another host ------------------------------------------------

# Attributes of <source> that libvirt fills in for a running interface on one host.
_RUNTIME_SOURCE_ATTRIBUTES = ("portid", "bridge", "dev")
_RUNTIME_CHILDREN = ("actual", "target", "backenddomain")


def vf_device_xml(domain_xml: str, pair: str) -> t.Optional[str]:
    """The VF half of ``pair`` as device XML for ``attachDeviceFlags`` on another host (``None`` if absent).

    Alias, MAC, model and guest ``<address>`` are kept (the slot it was unplugged from is free
    again); ``<actual>``, ``<target>`` and the host-specific attributes of a network source are
    dropped.
    """
    return interface_device_xml(domain_xml, vf_alias(pair))


def interface_aliases(domain_xml: str) -> t.Set[str]:
    """The aliases of the domain's interfaces."""
    return {alias for alias in (_alias(interface) for interface in _interfaces(ET.fromstring(domain_xml))) if alias}


def interface_device_xml(domain_xml: str, alias: str) -> t.Optional[str]:
    """The interface with ``alias`` as device XML to plug in again (runtime bits dropped; ``None`` if absent)."""
    found = [interface for interface in _interfaces(ET.fromstring(domain_xml)) if _alias(interface) == alias]
    if not found:
        return None
    element = copy.deepcopy(found[0])
    for tag in _RUNTIME_CHILDREN:
        for child in element.findall(tag):
            element.remove(child)
    source = element.find("source")
    if source is not None and element.get("type") == "network":
        for attribute in _RUNTIME_SOURCE_ATTRIBUTES:
            source.attrib.pop(attribute, None)
    return _to_text(element)


# --- building and editing ------------------------------------------------------------------------


def generate_mac(used: t.Iterable[str], rng: t.Optional[random.Random] = None) -> str:
    """A MAC in libvirt's 52:54:00 range that is not in ``used``."""
    taken = {mac.lower() for mac in used}
    chooser = rng or random.SystemRandom()
    for _attempt in range(10000):
        mac = "%s:%02x:%02x:%02x" % (MAC_PREFIX, chooser.randrange(256), chooser.randrange(256), chooser.randrange(256))
        if mac not in taken:
            return mac
    raise ValueError("no free MAC address found in %s:xx:xx:xx" % MAC_PREFIX)


def _sub(parent: ET.Element, tag: str, **attributes: str) -> ET.Element:
    return ET.SubElement(parent, tag, attributes)


def build_backup(spec: PairSpec) -> ET.Element:
    """The virtio backup interface of ``spec``.

    In teaming mode it carries ``<teaming type='persistent'/>``. It carries no ``<filterref>``: the
    shared MAC of a bond pair must not meet a MAC-spoofing filter (see the module's notes).
    """
    if spec.backup_network:
        interface = ET.Element("interface", {"type": "network"})
        _sub(interface, "mac", address=spec.effective_backup_mac)
        _sub(interface, "source", network=spec.backup_network)
    else:
        interface = ET.Element("interface", {"type": "bridge"})
        _sub(interface, "mac", address=spec.effective_backup_mac)
        _sub(interface, "source", bridge=spec.backup_bridge or "")
    _sub(interface, "model", type="virtio")
    if spec.mode == "teaming":
        _sub(interface, "teaming", type="persistent")
    _sub(interface, "alias", name=backup_alias(spec.name))
    return interface


def build_vf(spec: PairSpec) -> ET.Element:
    """The VF interface of ``spec``: from a hostdev network, or the VF at an explicit PCI address.

    A VF drawn from a network carries ``<model type='virtio'/>``: libvirt ignores the model once the
    network hands out a VF, but places the device by it, and without it (rtl8139 by default) the
    VF would land behind a conventional PCI bridge instead of in a hot-pluggable PCI Express root port.
    """
    if spec.vf_network:
        interface = ET.Element("interface", {"type": "network"})
        _sub(interface, "mac", address=normalize_mac(spec.mac))
        _sub(interface, "source", network=spec.vf_network)
        _sub(interface, "model", type="virtio")
    else:
        interface = ET.Element("interface", {"type": "hostdev", "managed": "yes"})
        _sub(interface, "mac", address=normalize_mac(spec.mac))
        source = _sub(interface, "source")
        ET.SubElement(source, "address", parse_pci_address(spec.vf_address or ""))
    if spec.mode == "teaming":
        _sub(interface, "teaming", type="transient", persistent=backup_alias(spec.name))
    _sub(interface, "alias", name=vf_alias(spec.name))
    return interface


def build_pair(spec: PairSpec) -> t.List[ET.Element]:
    """The two interfaces of ``spec``, backup first (teaming needs the standby listed first)."""
    spec.validate()
    return [build_backup(spec), build_vf(spec)]


def build_pair_xml(spec: PairSpec) -> t.List[str]:
    """:func:`build_pair` as XML text, each ready for ``attachDeviceFlags``."""
    return [_to_text(element) for element in build_pair(spec)]


def remove_pair(domain_xml: str, pair: str) -> str:
    """The domain XML without either half of ``pair`` (unchanged text when neither is there)."""
    root = ET.fromstring(domain_xml)
    devices = root.find("devices")
    backup, vf = _halves(root, pair)
    if devices is None or (backup is None and vf is None):
        return domain_xml
    for element in (backup, vf):
        if element is not None:
            devices.remove(element)
    return _to_text(root)


def add_pair(domain_xml: str, spec: PairSpec) -> str:
    """The domain XML with ``spec``'s two interfaces in place of any halves of the same pair.

    The new interfaces follow the domain's last other interface (or end ``<devices>``), backup first.
    """
    elements = build_pair(spec)
    root = ET.fromstring(remove_pair(domain_xml, spec.name))
    devices = root.find("devices")
    if devices is None:
        devices = ET.SubElement(root, "devices")
    children = list(devices)
    last_interface = max((index for index, child in enumerate(children) if child.tag == "interface"), default=None)
    position = len(children) if last_interface is None else last_interface + 1
    for offset, element in enumerate(elements):
        element.tail = "\n    "
        devices.insert(position + offset, element)
    return _to_text(root)


def pair_differences(domain_xml: str, spec: PairSpec) -> t.List[str]:
    """How the pair named ``spec.name`` in the XML differs from ``spec`` ([] when it matches).

    A pair that is absent, or lacks a half, differs; so does one whose mode, MAC, sources or MAC
    arrangement (``fail_over_mac``) differ.
    """
    root = ET.fromstring(domain_xml)
    backup, vf = _halves(root, spec.name)
    if backup is None and vf is None:
        return ["pair %s is absent" % spec.name]
    differences: t.List[str] = []
    if backup is None:
        differences.append("the backup interface %s is missing" % backup_alias(spec.name))
    if vf is None:
        differences.append("the VF interface %s is missing" % vf_alias(spec.name))
    if backup is not None:
        mode = "teaming" if _teaming_type(backup) == "persistent" else "bond"
        if mode != spec.mode:
            differences.append("mode %s, wanted %s (the pair is replaced)" % (mode, spec.mode))
        source = _source(backup)
        if backup.get("type") != ("network" if spec.backup_network else "bridge") or source["network"] != spec.backup_network or source[
            "bridge"
        ] != spec.backup_bridge:
            differences.append(
                "backup source %s, wanted %s"
                % (_describe_source(source), "network " + spec.backup_network if spec.backup_network else "bridge %s" % spec.backup_bridge)
            )
        model = backup.find("model")
        if model is None or model.get("type") != "virtio":
            differences.append("the backup interface is not virtio")
        if _mac(backup) != spec.effective_backup_mac:
            differences.append("backup MAC %s, wanted %s" % (_mac(backup), spec.effective_backup_mac))
    if vf is not None:
        source = _source(vf)
        wanted_type = "network" if spec.vf_network else "hostdev"
        wanted_address = format_pci_address(ET.Element("address", parse_pci_address(spec.vf_address))) if spec.vf_address else None
        if vf.get("type") != wanted_type or source["network"] != spec.vf_network or source["address"] != wanted_address:
            differences.append(
                "VF source %s, wanted %s" % (_describe_source(source), "network " + spec.vf_network if spec.vf_network else "PCI address %s" % wanted_address)
            )
        if _mac(vf) != normalize_mac(spec.mac):
            differences.append("VF MAC %s, wanted %s" % (_mac(vf), normalize_mac(spec.mac)))
        teaming = vf.find("teaming")
        if spec.mode == "teaming":
            if teaming is None or teaming.get("type") != "transient" or teaming.get("persistent") != backup_alias(spec.name):
                differences.append("the VF lacks <teaming type='transient' persistent='%s'/>" % backup_alias(spec.name))
        elif teaming is not None:
            differences.append("the VF carries a <teaming> element a bond pair does not have")
    return differences


def _describe_source(source: t.Dict[str, t.Optional[str]]) -> str:
    if source.get("network"):
        return "network %s" % source["network"]
    if source.get("bridge"):
        return "bridge %s" % source["bridge"]
    if source.get("address"):
        return "PCI address %s" % source["address"]
    return "of another kind"


def pair_facts(info: PairInfo, backup_mac: t.Optional[str] = None) -> t.Dict[str, t.Any]:
    """The ``pair`` return value of the module for one pair."""
    return {
        "name": info.name,
        "mode": info.mode,
        "mac": info.mac,
        "backup_mac": backup_mac or info.mac,
        "vf_alias": info.vf_alias,
        "backup_alias": info.backup_alias,
        "vf_network": info.vf_network,
        "vf_address": info.vf_address,
        "backup_network": info.backup_network,
        "backup_bridge": info.backup_bridge,
        "vf_present": info.vf_present,
    }


def backup_mac_of(domain_xml: str, pair: str) -> t.Optional[str]:
    """The MAC of the pair's backup interface (``None`` when it is absent)."""
    backup = _halves(ET.fromstring(domain_xml), pair)[0]
    return _mac(backup) if backup is not None else None


def _to_text(element: ET.Element) -> str:
    return ET.tostring(element, encoding="unicode").strip()


# --- planning a change (what the sriov_failover_nic module does, decided without libvirt) ----------


def existing_macs(domain_xmls: t.Iterable[t.Optional[str]], pair: str) -> t.Tuple[t.Optional[str], t.Optional[str]]:
    """(VF MAC, backup MAC) of ``pair`` in the first of the XMLs that has it (``None`` for absent halves)."""
    for xml in domain_xmls:
        if not xml:
            continue
        backup, vf = _halves(ET.fromstring(xml), pair)
        if backup is not None or vf is not None:
            return (_mac(vf) if vf is not None else None, _mac(backup) if backup is not None else None)
    return None, None


def choose_macs(
    domain_xmls: t.Sequence[t.Optional[str]],
    pair: str,
    mode: str,
    fail_over_mac: bool,
    wanted_mac: t.Optional[str],
    used_elsewhere: t.Iterable[str] = (),
    rng: t.Optional[random.Random] = None,
) -> t.Tuple[str, t.Optional[str]]:
    """The pair's MAC and, for a bond with ``fail_over_mac``, the backup's own MAC.

    A MAC given is used; otherwise an existing pair keeps its MAC (generated once, then kept), and
    a new one gets a free MAC in 52:54:00 (free in this VM's XMLs and in ``used_elsewhere``).
    """
    vf_mac, backup_mac = existing_macs(domain_xmls, pair)
    used: t.Set[str] = {mac.lower() for mac in used_elsewhere}
    for xml in domain_xmls:
        if xml:
            used |= macs_in_use(xml)
    mac = normalize_mac(wanted_mac) if wanted_mac else (vf_mac or backup_mac)
    if not mac:
        mac = generate_mac(used, rng)
    own = None
    if mode == "bond" and fail_over_mac:
        own = backup_mac if backup_mac and backup_mac != mac else None
        if not own:
            own = generate_mac(used | {mac}, rng)
    return mac, own


def mac_clashes(
    macs: t.Iterable[str],
    domain_xmls: t.Sequence[t.Optional[str]],
    pair: str,
    other_domains: t.Mapping[str, t.Iterable[str]],
    vm: str = "this VM",
) -> t.List[str]:
    """Sentences naming each use of ``macs`` outside the pair: by another interface of this VM, or by another domain."""
    wanted = [mac.lower() for mac in macs]
    problems: t.List[str] = []
    for mac in dict.fromkeys(wanted):
        for xml in domain_xmls:
            if not xml:
                continue
            users = [
                _describe_interface(interface)
                for interface in _interfaces(ET.fromstring(xml))
                if _mac(interface) == mac and _alias(interface) not in (backup_alias(pair), vf_alias(pair))
            ]
            if users:
                problems.append("MAC %s is already used by %s of VM '%s'" % (mac, ", ".join(users), vm))
                break
        for name in sorted(other_domains):
            if mac in {used.lower() for used in other_domains[name]}:
                problems.append("MAC %s is already used by VM '%s' on this host" % (mac, name))
    return problems


def _describe_interface(interface: ET.Element) -> str:
    alias = _alias(interface)
    if alias:
        return "interface %s" % alias
    source = _describe_source(_source(interface))
    return "the %s interface (%s)" % (interface.get("type") or "", source)


@dataclass(frozen=True)
class PairPlan:
    """What one run changes: the new persistent XML and the live steps, in order."""

    differences: t.Tuple[str, ...]
    persistent_xml: t.Optional[str]  # the edited inactive XML to define (None: the definition stays)
    live_detach: t.Tuple[str, ...]  # aliases to unplug from the running VM, in order
    live_attach: t.Tuple[str, ...]  # device XML to plug into the running VM, in order
    live_differences: t.Tuple[str, ...] = ()
    replaced_mode: t.Optional[str] = None  # the mode of a pair of the same name that is replaced

    @property
    def changed(self) -> bool:
        """True when anything is written or plugged."""
        return bool(self.persistent_xml or self.live_detach or self.live_attach)


def _present_halves(domain_xml: str, pair: str) -> t.Tuple[str, ...]:
    backup, vf = _halves(ET.fromstring(domain_xml), pair)
    # Unplugged in reverse order of plugging: the VF first, then its backup.
    return tuple(alias for alias, element in ((vf_alias(pair), vf), (backup_alias(pair), backup)) if element is not None)


def plan_present(inactive_xml: str, live_xml: t.Optional[str], spec: PairSpec) -> PairPlan:
    """Plan ``state=present``: define the pair if the definition differs; re-plug it live if the running VM's differs.

    ``live_xml`` is the running VM's XML when the live side is to be handled (``None`` otherwise).
    A pair of the same name that differs is replaced as a whole (both halves), live too.
    """
    spec.validate()
    differences = pair_differences(inactive_xml, spec)
    existing = find_pair(inactive_xml, spec.name)
    replaced = existing.mode if existing is not None and existing.mode != spec.mode else None
    persistent_xml = add_pair(inactive_xml, spec) if differences else None
    live_differences: t.List[str] = []
    detach: t.Tuple[str, ...] = ()
    attach: t.Tuple[str, ...] = ()
    if live_xml is not None:
        live_differences = pair_differences(live_xml, spec)
        if live_differences:
            detach = _present_halves(live_xml, spec.name)
            attach = tuple(build_pair_xml(spec))
    return PairPlan(tuple(differences), persistent_xml, detach, attach, tuple(live_differences), replaced)


def plan_absent(inactive_xml: str, live_xml: t.Optional[str], pair: str) -> PairPlan:
    """Plan ``state=absent``: both halves out of the definition, and unplugged from the running VM (VF first)."""
    check_pair_name(pair)
    present = _present_halves(inactive_xml, pair)
    persistent_xml = remove_pair(inactive_xml, pair) if present else None
    detach = _present_halves(live_xml, pair) if live_xml is not None else ()
    differences = ["pair %s is present%s" % (pair, "" if present else " in the running VM only")] if present or detach else []
    return PairPlan(tuple(differences), persistent_xml, detach, (), tuple("%s is plugged in" % alias for alias in detach))
