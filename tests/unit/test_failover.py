"""SR-IOV failover pairs and unmovable host devices in domain XML (pure: no libvirt)."""

from __future__ import annotations

import random
import typing as t
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import failover
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.failover import PairInfo, PairSpec

HEAD = """<domain type='kvm' id='7' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>web1</name>
  <uuid>1b4e28ba-2fa1-11d2-883f-0016d3cca427</uuid>
  <memory unit='KiB'>1048576</memory>
  <os><type arch='x86_64' machine='%s'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>
      <source file='/var/lib/libvirt/images/web1.qcow2'/><target dev='vda' bus='virtio'/><alias name='virtio-disk0'/></disk>
    <controller type='pci' index='0' model='pcie-root'><alias name='pcie.0'/></controller>
    <controller type='pci' index='1' model='pcie-root-port'><model name='pcie-root-port'/><target chassis='1' port='0x10'/><alias name='pci.1'/></controller>
    <interface type='network'>
      <mac address='52:54:00:aa:bb:01'/>
      <source network='default' portid='0c4f2a57-1d35-4a36-9b0e-8d8a3e6a1b22' bridge='virbr0'/>
      <target dev='vnet0'/>
      <model type='virtio'/>
      <alias name='net0'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </interface>
%s
  </devices>
%s</domain>
"""


def domain(devices: str = "", machine: str = "pc-q35-7.2", tail: str = "") -> str:
    return HEAD % (machine, devices, tail)


# Live XML of a teaming pair whose VF comes from a hostdev network.
TEAMING_LIVE = """
    <interface type='network'>
      <mac address='52:54:00:5d:11:22'/>
      <source network='prod' portid='a1c3e5f7-0000-4000-8000-000000000001' bridge='br-prod'/>
      <target dev='vnet3'/>
      <model type='virtio'/>
      <teaming type='persistent'/>
      <alias name='ua-net1-backup'/>
      <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>
    </interface>
    <interface type='network'>
      <mac address='52:54:00:5d:11:22'/>
      <source network='sriov-pf0' portid='a1c3e5f7-0000-4000-8000-000000000002'/>
      <actual type='hostdev' managed='yes'>
        <driver name='vfio'/>
        <source><address type='pci' domain='0x0000' bus='0x3b' slot='0x02' function='0x3'/></source>
      </actual>
      <teaming type='transient' persistent='ua-net1-backup'/>
      <alias name='ua-net1-vf'/>
      <address type='pci' domain='0x0000' bus='0x03' slot='0x00' function='0x0'/>
    </interface>
"""

# A bond pair whose VF (explicit PCI address) is unplugged from the live XML.
BOND_VF_MISSING = """
    <interface type='bridge'>
      <mac address='52:54:00:77:00:01'/>
      <source bridge='br0'/>
      <target dev='vnet4'/>
      <model type='virtio'/>
      <alias name='ua-bond0-backup'/>
    </interface>
"""

BOND_FULL = BOND_VF_MISSING + """
    <interface type='hostdev' managed='yes'>
      <mac address='52:54:00:77:00:01'/>
      <driver name='vfio'/>
      <source><address type='pci' domain='0x0000' bus='0x3b' slot='0x10' function='0x1'/></source>
      <alias name='ua-bond0-vf'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </interface>
"""

PCI_HOSTDEV = """
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <driver name='vfio'/>
      <source><address domain='0x0000' bus='0x03' slot='0x00' function='0x1'/></source>
      <alias name='hostdev0'/>
      <address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>
    </hostdev>
"""

MDEV = """
    <hostdev mode='subsystem' type='mdev' managed='no' model='vfio-pci' display='off'>
      <source><address uuid='4b20d080-1b54-4048-85b3-a6a62d165c01'/></source>
      <alias name='hostdev1'/>
    </hostdev>
"""

USB_BY_ID = """
    <hostdev mode='subsystem' type='usb' managed='yes'>
      <source><vendor id='0x0951'/><product id='0x1666'/></source>
    </hostdev>
"""

USB_BY_ADDRESS = """
    <hostdev mode='subsystem' type='usb' managed='yes'>
      <source><address bus='1' device='4'/></source>
    </hostdev>
"""

SCSI = """
    <hostdev mode='subsystem' type='scsi' managed='no' sgio='filtered'>
      <source><adapter name='scsi_host2'/><address bus='0' target='0' unit='3'/></source>
      <readonly/>
    </hostdev>
"""

SCSI_ISCSI = """
    <hostdev mode='subsystem' type='scsi'>
      <source protocol='iscsi' name='iqn.2014-08.com.example:iscsi-nopool/1'><host name='storage.example.com' port='3260'/></source>
    </hostdev>
"""

PLAIN_VF = """
    <interface type='hostdev' managed='yes'>
      <mac address='52:54:00:6d:90:02'/>
      <source><address type='pci' domain='0x0000' bus='0x3b' slot='0x10' function='0x2'/></source>
      <alias name='hostdev2'/>
    </interface>
"""

# A NIC from a hostdev network without any failover handling (live XML).
POOL_VF_LIVE = """
    <interface type='network'>
      <mac address='52:54:00:6d:90:03'/>
      <source network='sriov-pf1'/>
      <actual type='hostdev' managed='yes'>
        <source><address type='pci' domain='0x0000' bus='0x5e' slot='0x00' function='0x4'/></source>
      </actual>
      <alias name='hostdev3'/>
    </interface>
"""

# The lab's stand-in: an emulated NIC made a failover primary through <qemu:override>.
STANDIN = """
    <interface type='bridge'>
      <mac address='52:54:00:42:00:09'/>
      <source bridge='br-lab'/>
      <model type='virtio'/>
      <teaming type='persistent'/>
      <alias name='ua-lab-backup'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:42:00:09'/>
      <source bridge='br-lab'/>
      <model type='vmxnet3'/>
      <rom enabled='no'/>
      <alias name='ua-lab-vf'/>
      <address type='pci' domain='0x0000' bus='0x07' slot='0x00' function='0x0'/>
    </interface>
"""
OVERRIDE = """  <qemu:override>
    <qemu:device alias='ua-lab-vf'>
      <qemu:frontend><qemu:property name='failover_pair_id' type='string' value='ua-lab-backup'/></qemu:frontend>
    </qemu:device>
  </qemu:override>
"""


@pytest.mark.parametrize(
    "pair, ok",
    [
        ("net1", True),
        ("a", True),
        ("uplink_0-b", True),
        ("x" * failover.PAIR_NAME_MAX, True),
        ("x" * (failover.PAIR_NAME_MAX + 1), False),
        ("", False),
        ("has space", False),
        ("dot.ted", False),
        ("sl/ash", False),
        ("ümlaut", False),
    ],
)
def test_check_pair_name(pair: str, ok: bool) -> None:
    if ok:
        failover.check_pair_name(pair)
        assert failover.backup_alias(pair) == "ua-%s-backup" % pair
        assert failover.vf_alias(pair) == "ua-%s-vf" % pair
    else:
        with pytest.raises(ValueError):
            failover.check_pair_name(pair)


@pytest.mark.parametrize(
    "devices, expected",
    [
        ("", []),
        (
            TEAMING_LIVE,
            [PairInfo("net1", "teaming", "ua-net1-vf", "ua-net1-backup", "52:54:00:5d:11:22", "sriov-pf0", None, "prod", None, True)],
        ),
        (
            BOND_VF_MISSING,
            [PairInfo("bond0", "bond", "ua-bond0-vf", "ua-bond0-backup", "52:54:00:77:00:01", None, None, None, "br0", False)],
        ),
        (
            BOND_FULL,
            [PairInfo("bond0", "bond", "ua-bond0-vf", "ua-bond0-backup", "52:54:00:77:00:01", None, "0000:3b:10.1", None, "br0", True)],
        ),
        (
            STANDIN,
            [PairInfo("lab", "teaming", "ua-lab-vf", "ua-lab-backup", "52:54:00:42:00:09", None, None, None, "br-lab", True)],
        ),
        # Interfaces with other aliases are no pairs; a VF half alone is no pair either.
        (PLAIN_VF + POOL_VF_LIVE, []),
        (TEAMING_LIVE.split("</interface>")[1] + "</interface>", []),
    ],
)
def test_read_pairs(devices: str, expected: t.List[PairInfo]) -> None:
    assert failover.read_pairs(domain(devices)) == expected


def test_read_pairs_finds_several_in_order() -> None:
    names = [pair.name for pair in failover.read_pairs(domain(BOND_FULL + TEAMING_LIVE))]
    assert names == ["bond0", "net1"]


@pytest.mark.parametrize(
    "devices, tail, expected",
    [
        ("", "", []),
        (PCI_HOSTDEV, "", ["PCI host device 0000:03:00.1 (hostdev)"]),
        (MDEV, "", ["mediated device (vGPU) 4b20d080-1b54-4048-85b3-a6a62d165c01 (vfio-pci)"]),
        (USB_BY_ID, "", ["USB host device 0x0951:0x1666 (hostdev)"]),
        (USB_BY_ADDRESS, "", ["USB host device at bus 1 device 4 (hostdev)"]),
        (SCSI, "", ["SCSI host device scsi_host2 0:0:3 (hostdev)"]),
        (SCSI_ISCSI, "", ["SCSI host device iscsi iqn.2014-08.com.example:iscsi-nopool/1 on storage.example.com (hostdev)"]),
        (PLAIN_VF, "", ["PCI host device 0000:3b:10.2 (hostdev interface, alias hostdev2, MAC 52:54:00:6d:90:02)"]),
        (
            POOL_VF_LIVE,
            "",
            ["PCI host device 0000:5e:00.4 from network 'sriov-pf1' (hostdev interface, alias hostdev3, MAC 52:54:00:6d:90:03)"],
        ),
        # The transient half of a teaming pair and the VF of our bond pair do not block.
        (TEAMING_LIVE, "", []),
        (BOND_FULL, "", []),
        (BOND_VF_MISSING, "", []),
        (STANDIN, OVERRIDE, []),
        (
            TEAMING_LIVE + PCI_HOSTDEV + MDEV,
            "",
            ["PCI host device 0000:03:00.1 (hostdev)", "mediated device (vGPU) 4b20d080-1b54-4048-85b3-a6a62d165c01 (vfio-pci)"],
        ),
    ],
)
def test_unmovable_devices(devices: str, tail: str, expected: t.List[str]) -> None:
    assert failover.unmovable_devices(domain(devices, tail=tail)) == expected


def test_a_vf_with_our_alias_but_no_backup_blocks() -> None:
    # Without its backup the VF is no bond pair's: the runner would not unplug it.
    vf_only = BOND_FULL.replace("ua-bond0-backup", "net9")
    expected = ["PCI host device 0000:3b:10.1 (hostdev interface, alias ua-bond0-vf, MAC 52:54:00:77:00:01)"]
    assert failover.unmovable_devices(domain(vf_only)) == expected


def test_a_vf_of_a_teaming_pair_without_transient_teaming_blocks() -> None:
    broken = TEAMING_LIVE.replace("<teaming type='transient' persistent='ua-net1-backup'/>", "")
    assert len(failover.unmovable_devices(domain(broken))) == 1


@pytest.mark.parametrize(
    "devices, tail, primaries",
    [
        ("", "", []),
        (TEAMING_LIVE, "", ["ua-net1-vf"]),
        (BOND_FULL, "", []),
        (STANDIN, OVERRIDE, ["ua-lab-vf"]),
        # The stand-in without failover_pair_id: an emulated NIC, nothing QEMU unplugs.
        (STANDIN, "", []),
        (
            "<interface type='hostdev'><mac address='52:54:00:01:02:03'/><source><address type='pci' domain='0' bus='3' slot='0' function='1'/></source>"
            "<teaming type='transient' persistent='ua-x'/></interface>",
            "",
            ["transient teaming interface with MAC 52:54:00:01:02:03"],
        ),
    ],
)
def test_failover_primaries(devices: str, tail: str, primaries: t.List[str]) -> None:
    assert failover.failover_primaries(domain(devices, tail=tail)) == primaries


def test_assigned_pci_addresses_are_every_pci_hostdev_and_hostdev_nic_source() -> None:
    devices = (
        "<hostdev mode='subsystem' type='pci'><source><address domain='0x0000' bus='0x3b' slot='0x02' function='0x1'/></source></hostdev>"
        "<hostdev mode='subsystem' type='usb'><source><vendor id='0x0781'/><product id='0x5567'/></source></hostdev>"
        "<interface type='hostdev'><source><address type='pci' domain='0' bus='0x3b' slot='2' function='2'/></source></interface>"
        "<interface type='network'><source network='vfnet'/><actual type='hostdev'><source>"
        "<address type='pci' domain='0x0000' bus='0x3b' slot='0x02' function='0x3'/></source></actual></interface>"
        "<interface type='network'><source network='lab'/><actual type='bridge'/></interface>"
    )
    assert failover.assigned_pci_addresses(domain(devices)) == {"0000:3b:02.1", "0000:3b:02.2", "0000:3b:02.3"}
    assert failover.pci_node_device("0000:3b:02.1") == "pci_0000_3b_02_1"


def test_vf_device_xml_drops_host_bits_and_keeps_guest_ones() -> None:
    xml = failover.vf_device_xml(domain(TEAMING_LIVE), "net1")
    assert xml is not None
    element = ET.fromstring(xml)
    assert element.find("actual") is None and element.find("target") is None
    assert element.find("source").attrib == {"network": "sriov-pf0"}
    assert element.find("mac").get("address") == "52:54:00:5d:11:22"
    assert element.find("alias").get("name") == "ua-net1-vf"
    assert element.find("address").get("bus") == "0x03"
    assert element.find("teaming").get("persistent") == "ua-net1-backup"


def test_vf_device_xml_of_the_lab_stand_in_and_of_an_absent_vf() -> None:
    xml = failover.vf_device_xml(domain(STANDIN), "lab")
    element = ET.fromstring(xml or "")
    assert element.find("model").get("type") == "vmxnet3"
    assert element.find("rom").get("enabled") == "no"
    assert failover.vf_device_xml(domain(BOND_VF_MISSING), "bond0") is None
    assert failover.vf_device_xml(domain(TEAMING_LIVE), "other") is None


@pytest.mark.parametrize(
    "address, expected",
    [
        ("0000:03:10.1", {"type": "pci", "domain": "0x0000", "bus": "0x03", "slot": "0x10", "function": "0x1"}),
        ("0001:AF:1f.7", {"type": "pci", "domain": "0x0001", "bus": "0xaf", "slot": "0x1f", "function": "0x7"}),
        ("03:10.1", None),
        ("0000:03:10.8", None),
        ("0000:03:10", None),
        ("pci_0000_03_10_1", None),
    ],
)
def test_parse_pci_address(address: str, expected: t.Optional[t.Dict[str, str]]) -> None:
    if expected is None:
        with pytest.raises(ValueError):
            failover.parse_pci_address(address)
    else:
        assert failover.parse_pci_address(address) == expected
        assert failover.format_pci_address(ET.Element("address", expected)) == address.lower()


def _spec(**overrides: t.Any) -> PairSpec:
    values: t.Dict[str, t.Any] = {
        "name": "net1",
        "mode": "teaming",
        "mac": "52:54:00:5d:11:22",
        "vf_network": "sriov-pf0",
        "backup_network": "prod",
    }
    values.update(overrides)
    return PairSpec(**values)


def _bond(**overrides: t.Any) -> PairSpec:
    values: t.Dict[str, t.Any] = {
        "name": "bond0",
        "mode": "bond",
        "mac": "52:54:00:77:00:01",
        "vf_network": None,
        "vf_address": "0000:3b:10.1",
        "backup_network": None,
        "backup_bridge": "br0",
    }
    values.update(overrides)
    return PairSpec(**values)


def test_build_teaming_pair_backup_first_one_mac() -> None:
    backup, vf = failover.build_pair(_spec())
    assert backup.get("type") == "network" and backup.find("source").get("network") == "prod"
    assert backup.find("model").get("type") == "virtio"
    assert backup.find("teaming").attrib == {"type": "persistent"}
    assert backup.find("alias").get("name") == "ua-net1-backup"
    assert backup.find("filterref") is None
    assert vf.get("type") == "network" and vf.find("source").get("network") == "sriov-pf0"
    # Placed by libvirt as a PCI Express device, in a root port of its own.
    assert vf.find("model").get("type") == "virtio"
    assert vf.find("teaming").attrib == {"type": "transient", "persistent": "ua-net1-backup"}
    assert vf.find("alias").get("name") == "ua-net1-vf"
    assert backup.find("mac").get("address") == vf.find("mac").get("address") == "52:54:00:5d:11:22"


@pytest.mark.parametrize(
    "fail_over_mac, backup_mac, expected_backup_mac",
    [(False, None, "52:54:00:5d:11:22"), (True, "52:54:00:00:00:07", "52:54:00:00:00:07")],
)
def test_build_bond_pair(fail_over_mac: bool, backup_mac: t.Optional[str], expected_backup_mac: str) -> None:
    spec = _bond(mac="52:54:00:5d:11:22", fail_over_mac=fail_over_mac, backup_mac=backup_mac)
    backup, vf = failover.build_pair(spec)
    assert backup.find("teaming") is None and vf.find("teaming") is None
    assert backup.get("type") == "bridge" and backup.find("source").get("bridge") == "br0"
    assert vf.get("type") == "hostdev" and vf.get("managed") == "yes" and vf.find("model") is None
    assert failover.format_pci_address(vf.find("source/address")) == "0000:3b:10.1"
    assert vf.find("mac").get("address") == "52:54:00:5d:11:22"
    assert backup.find("mac").get("address") == expected_backup_mac


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"name": "bad name"}, "letters, digits"),
        ({"mode": "lacp"}, "mode must be"),
        ({"vf_address": "0000:03:10.1"}, "exactly one of vf_network and vf_address"),
        ({"vf_network": None}, "exactly one of vf_network and vf_address"),
        ({"backup_bridge": "br0"}, "exactly one of backup_network and backup_bridge"),
        ({"vf_network": None, "vf_address": "3:10.1"}, "DDDD:BB:SS.F"),
        ({"mac": "52:54:00:5d:11"}, "not a MAC"),
        ({"mac": "01:00:5e:00:00:01"}, "multicast"),
        ({"fail_over_mac": True}, "bond only"),
        ({"mode": "bond", "fail_over_mac": True}, "MAC of the backup's own"),
        ({"mode": "bond", "fail_over_mac": True, "backup_mac": "52:54:00:5D:11:22"}, "other than the VF's"),
    ],
)
def test_spec_refusals(overrides: t.Dict[str, t.Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _spec(**overrides).validate()


def test_add_pair_puts_both_after_the_last_interface_and_is_read_back() -> None:
    before = domain(PCI_HOSTDEV)
    after = failover.add_pair(before, _spec())
    root = ET.fromstring(after)
    tags = [(child.tag, (child.find("alias").get("name") if child.find("alias") is not None else None)) for child in root.find("devices")]
    aliases = [alias for tag, alias in tags if tag == "interface"]
    assert aliases == ["net0", "ua-net1-backup", "ua-net1-vf"]
    # Inserted right after the existing interface, before the hostdev.
    assert [tag for tag, _alias in tags][-3:] == ["interface", "interface", "hostdev"]
    assert failover.pair_differences(after, _spec()) == []
    info = failover.find_pair(after, "net1")
    assert info == PairInfo("net1", "teaming", "ua-net1-vf", "ua-net1-backup", "52:54:00:5d:11:22", "sriov-pf0", None, "prod", None, True)
    # The qemu namespace keeps its prefix.
    assert "qemu:" in failover.add_pair(domain(STANDIN, tail=OVERRIDE), _spec(name="x"))


def test_add_pair_replaces_a_pair_of_the_same_name_and_remove_takes_exactly_the_pair() -> None:
    start = domain(BOND_FULL + TEAMING_LIVE)
    replaced = failover.add_pair(start, _spec(name="bond0", mac="52:54:00:77:00:01"))
    pairs = {pair.name: pair for pair in failover.read_pairs(replaced)}
    assert pairs["bond0"].mode == "teaming" and pairs["net1"].mode == "teaming"
    assert len(ET.fromstring(replaced).findall("devices/interface")) == 5
    removed = failover.remove_pair(replaced, "bond0")
    assert [pair.name for pair in failover.read_pairs(removed)] == ["net1"]
    assert [i.find("alias").get("name") for i in ET.fromstring(removed).findall("devices/interface")] == ["net0", "ua-net1-backup", "ua-net1-vf"]
    assert failover.remove_pair(removed, "bond0") == removed


def test_add_pair_into_a_domain_without_interfaces() -> None:
    xml = "<domain type='kvm'><name>x</name><devices><emulator>/usr/bin/qemu</emulator></devices></domain>"
    after = failover.add_pair(xml, _spec())
    assert [child.tag for child in ET.fromstring(after).find("devices")] == ["emulator", "interface", "interface"]


@pytest.mark.parametrize(
    "devices, spec, expected",
    [
        ("", _spec(), ["pair net1 is absent"]),
        (TEAMING_LIVE, _spec(), []),
        (
            TEAMING_LIVE,
            _spec(mac="52:54:00:5d:11:23"),
            ["backup MAC 52:54:00:5d:11:22, wanted 52:54:00:5d:11:23", "VF MAC 52:54:00:5d:11:22, wanted 52:54:00:5d:11:23"],
        ),
        (TEAMING_LIVE, _spec(backup_network=None, backup_bridge="br-prod"), ["backup source network prod, wanted bridge br-prod"]),
        (TEAMING_LIVE, _spec(vf_network="sriov-pf9"), ["VF source network sriov-pf0, wanted network sriov-pf9"]),
        (
            TEAMING_LIVE,
            _spec(mode="bond"),
            ["mode teaming, wanted bond (the pair is replaced)", "the VF carries a <teaming> element a bond pair does not have"],
        ),
        (BOND_VF_MISSING, _bond(), ["the VF interface ua-bond0-vf is missing"]),
        (BOND_FULL, _bond(), []),
        (
            BOND_FULL,
            _bond(fail_over_mac=True, backup_mac="52:54:00:77:00:02"),
            ["backup MAC 52:54:00:77:00:01, wanted 52:54:00:77:00:02"],
        ),
        (BOND_FULL, _bond(vf_address="0000:3b:10.2"), ["VF source PCI address 0000:3b:10.1, wanted PCI address 0000:3b:10.2"]),
    ],
)
def test_pair_differences(devices: str, spec: PairSpec, expected: t.List[str]) -> None:
    assert failover.pair_differences(domain(devices), spec) == expected


def test_generate_mac_avoids_used_ones() -> None:
    used = {"52:54:00:%02x:%02x:%02x" % (a, b, c) for a in range(2) for b in range(256) for c in range(256)}

    class Low(random.Random):
        def randrange(self, *args: t.Any, **kwargs: t.Any) -> int:  # type: ignore[override]
            return super().randrange(3) if len(args) == 1 and args[0] == 256 else super().randrange(*args, **kwargs)

    mac = failover.generate_mac(used, Low(4))
    assert mac.startswith("52:54:00:02:") and mac not in used
    assert failover.generate_mac([]).startswith("52:54:00:")
    failover.normalize_mac(failover.generate_mac([]))


def test_macs_in_use_and_machine() -> None:
    xml = domain(TEAMING_LIVE + PLAIN_VF)
    assert failover.macs_in_use(xml) == {"52:54:00:aa:bb:01", "52:54:00:5d:11:22", "52:54:00:6d:90:02"}
    assert failover.macs_in_use(xml, ["ua-net1-backup", "ua-net1-vf"]) == {"52:54:00:aa:bb:01", "52:54:00:6d:90:02"}
    assert failover.has_pcie_root_ports(xml)
    assert not failover.has_pcie_root_ports(domain(machine="pc-i440fx-7.2").replace("model='pcie-root'", "model='pci-root'"))
    assert not failover.has_pcie_root_ports(domain(machine="pc").replace("model='pcie-root'", "model='pci-root'"))
    assert failover.machine_type(domain(machine="pc")) == "pc"


def test_pair_elements_xml_for_the_diff() -> None:
    texts = failover.pair_elements_xml(domain(TEAMING_LIVE), "net1")
    assert len(texts) == 2 and "ua-net1-backup" in texts[0] and "ua-net1-vf" in texts[1]
    assert failover.pair_elements_xml(domain(BOND_VF_MISSING), "bond0")[0].count("<interface") == 1
