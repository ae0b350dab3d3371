"""What a destination must offer a VM, read from its domain XML (pure)."""

from __future__ import annotations

import pytest

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.domain import parse_requirements

DOMAIN = """
<domain type='kvm'>
  <name>db1</name>
  <cpu mode='custom' match='exact'><model fallback='forbid'>EPYC</model></cpu>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>
      <source file='/shared/db1.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='raw' cache='writeback'/>
      <source file='/shared/db1-data.raw'/><target dev='vdb' bus='virtio'/></disk>
    <disk type='block' device='disk'><driver name='qemu' type='raw'/>
      <source dev='/dev/mapper/lun7'/><target dev='vdc' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><source file='/iso/tools.iso'/><target dev='sda' bus='sata'/><readonly/></disk>
    <disk type='file' device='cdrom'><target dev='sdb' bus='sata'/><readonly/></disk>
    <interface type='network'><source network='prod'/><model type='virtio'/></interface>
    <interface type='network'><source network='prod'/></interface>
    <interface type='bridge'><source bridge='br-storage'/></interface>
  </devices>
</domain>
"""


def test_networks_bridges_and_cpu() -> None:
    needs = parse_requirements(DOMAIN)
    assert needs["networks"] == ["prod"]
    assert needs["bridges"] == ["br-storage"]
    assert needs["cpu_xml"] is not None and "EPYC" in needs["cpu_xml"]


def test_disks_shared_storage_and_unsafe_cache() -> None:
    disks = {disk["target"]: disk for disk in parse_requirements(DOMAIN)["disks"]}
    assert disks["vda"]["shared_storage"] and not disks["vda"]["unsafe_cache"]
    assert disks["vdb"]["unsafe_cache"] and disks["vdb"]["cache"] == "writeback"
    assert disks["vdc"]["path"] == "/dev/mapper/lun7" and disks["vdc"]["unsafe_cache"], "no cache attribute is not 'none'"
    assert disks["sda"]["readonly"] and not disks["sda"]["unsafe_cache"]
    assert disks["sdb"]["path"] is None and not disks["sdb"]["shared_storage"]


def test_host_passthrough_and_diskless_guest() -> None:
    needs = parse_requirements("<domain><cpu mode='host-passthrough'/><devices/></domain>")
    assert needs == {
        "networks": [],
        "bridges": [],
        "disks": [],
        "cpu_xml": None,
        "unmovable_devices": [],
        "failover_primaries": [],
        "bond_vfs": [],
        "vf_networks": {},
        "vf_addresses": [],
    }


FAILOVER_DOMAIN = """<domain xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <devices>
    <interface type='network'>
      <mac address='52:54:00:aa:00:01'/><source network='lab'/><model type='virtio'/>
      <teaming type='persistent'/><alias name='ua-fo-backup'/>
    </interface>
    <interface type='network'>
      <mac address='52:54:00:aa:00:01'/><source network='vfnet'/>
      <teaming type='transient' persistent='ua-fo-backup'/><alias name='ua-fo-vf'/>
      <actual type='hostdev'/>
    </interface>
    <interface type='network'>
      <mac address='52:54:00:aa:00:02'/><source network='lab'/><model type='virtio'/><alias name='ua-bd-backup'/>
    </interface>
    <interface type='network'>
      <mac address='52:54:00:aa:00:02'/><source network='vfnet'/><alias name='ua-bd-vf'/><actual type='hostdev'/>
    </interface>
    <hostdev mode='subsystem' type='usb' managed='yes'>
      <source><vendor id='0x0781'/><product id='0x5567'/></source>
    </hostdev>
  </devices>
</domain>"""


def test_failover_pairs_and_host_devices() -> None:
    needs = parse_requirements(FAILOVER_DOMAIN)
    assert needs["bond_vfs"] == ["bd"]
    assert needs["vf_networks"] == {"vfnet": 2}
    assert len(needs["unmovable_devices"]) == 1 and "USB" in needs["unmovable_devices"][0]
    assert needs["failover_primaries"] == ["ua-fo-vf"]
    assert needs["vf_addresses"] == [], "VFs drawn from a network have no fixed address"


def test_fixed_vf_addresses_of_pairs_whose_vf_is_in_the_definition() -> None:
    """A pair's VF at a fixed PCI address is needed on a destination; a plain PCI hostdev is not a pair's VF."""
    xml = """<domain><devices>
      <interface type='network'><mac address='52:54:00:aa:00:03'/><source network='lab'/><alias name='ua-at-backup'/></interface>
      <interface type='hostdev' managed='yes'><mac address='52:54:00:aa:00:03'/>
        <source><address type='pci' domain='0x0000' bus='0x3B' slot='0x02' function='0x1'/></source><alias name='ua-at-vf'/></interface>
      <interface type='network'><mac address='52:54:00:aa:00:04'/><source network='lab'/><alias name='ua-gone-backup'/></interface>
      <hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x5e' slot='0x00' function='0x0'/></source></hostdev>
    </devices></domain>"""
    assert parse_requirements(xml)["vf_addresses"] == ["0000:3b:02.1"]


@pytest.mark.parametrize(
    "driver, unsafe",
    [
        ("<driver name='qemu' type='raw' cache='none'/>", False),
        ("<driver name='qemu' type='raw' cache='directsync'/>", False),  # O_DIRECT as well: no dirty page cache
        ("<driver name='qemu' type='raw' cache='writeback'/>", True),
        ("<driver name='qemu' type='raw' cache='writethrough'/>", True),
        ("<driver name='qemu' type='raw' cache='unsafe'/>", True),
        ("<driver name='qemu' type='raw'/>", True),  # no cache attribute: the hypervisor's default, not 'none'
        ("", True),
    ],
)
def test_cache_modes_safe_for_live_migration(driver: str, unsafe: bool) -> None:
    xml = "<domain><devices><disk type='file' device='disk'>%s<source file='/shared/a.raw'/><target dev='vda'/></disk></devices></domain>"
    (disk,) = parse_requirements(xml % driver)["disks"]
    assert disk["unsafe_cache"] is unsafe
