"""sriov_failover_nic and sriov_network against real libvirt on a lab host.

No SR-IOV hardware exists here, so no VF can be assigned and no VM with a pair is started: what is
proved is that real libvirt (9.0, QEMU 7.2) accepts the XML the module writes and shows it back as
written (``virsh dumpxml --inactive``), that repeat runs change nothing, that ``absent`` removes
exactly the pair, and every refusal, on scratch domains that are defined but never started (except
the transient one, which libvirt can only hold while it runs). A hostdev network over a PF that does
not exist, or over a netdev without VFs, fails to start with libvirt's own error.
"""

from __future__ import annotations

import secrets
import tempfile
import typing as t
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from labkit import run_module, uri, virsh, virtlab

NIC = "virtops.migration.sriov_failover_nic"
NETWORK = "virtops.migration.sriov_network"
HOST = "lab-h1"
LAB_NETWORK = "lab"  # the lab's own network on every host: forward mode bridge
LAB_BRIDGE = "labnet"  # the bridge behind it

SCRATCH = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>32</memory>
  <os><type arch='x86_64' machine='{machine}'>hvm</type></os>
  <devices>
{controllers}
    <interface type='network'><mac address='{mac}'/><source network='lab'/><model type='virtio'/></interface>
  </devices>
</domain>
"""


def scratch_xml(name: str, machine: str = "q35", mac: str = "52:54:00:e0:00:01") -> str:
    controllers = ""
    if machine == "q35":
        ports = "".join("\n    <controller type='pci' index='%d' model='pcie-root-port'/>" % index for index in range(1, 5))
        controllers = "    <controller type='pci' index='0' model='pcie-root'/>" + ports
    return SCRATCH.format(name=name, machine=machine, controllers=controllers, mac=mac)


def host_uri(lab: Path) -> str:
    return uri(lab, HOST)


def dumpxml(lab: Path, name: str) -> str:
    return virsh(host_uri(lab), "dumpxml", "--inactive", name).stdout


def interfaces(xml: str) -> list[ET.Element]:
    return ET.fromstring(xml).findall("devices/interface")


def alias_of(interface: ET.Element) -> str | None:
    alias = interface.find("alias")
    return alias.get("name") if alias is not None else None


def by_alias(xml: str) -> dict[str | None, ET.Element]:
    return {alias_of(interface): interface for interface in interfaces(xml)}


def define(lab: Path, xml: str, transient: bool = False) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".xml") as handle:
        handle.write(xml)
        handle.flush()
        virsh(host_uri(lab), "create" if transient else "define", handle.name)


@pytest.fixture()
def scratch(lab: Path) -> t.Iterator[t.Callable[..., str]]:
    """Factory for scratch domains on lab-h1 (random names), destroyed and undefined afterwards."""
    made: list[str] = []

    def make(machine: str = "q35", mac: str | None = None, transient: bool = False) -> str:
        name = "sr%s" % secrets.token_hex(3)
        define(lab, scratch_xml(name, machine, mac or "52:54:00:e0:%s" % ":".join(secrets.token_hex(1) for _byte in range(2))), transient)
        made.append(name)
        return name

    yield make
    for name in made:
        virsh(host_uri(lab), "destroy", name, check=False)
        virsh(host_uri(lab), "undefine", name, check=False)


@pytest.fixture()
def vf_network(lab: Path) -> t.Iterator[str]:
    """A hostdev network on lab-h1, defined but not started (its PF does not exist: no VF can)."""
    name = "vfpool%s" % secrets.token_hex(2)
    with tempfile.NamedTemporaryFile("w", suffix=".xml") as handle:
        handle.write("<network><name>%s</name><forward mode='hostdev' managed='yes'><pf dev='nopf0'/></forward></network>" % name)
        handle.flush()
        virsh(host_uri(lab), "net-define", handle.name)
    yield name
    virsh(host_uri(lab), "net-destroy", name, check=False)
    virsh(host_uri(lab), "net-undefine", name, check=False)


def four_runs(lab: Path, args: dict[str, t.Any], vm: str) -> dict[str, t.Any]:
    """Check mode, real, again, check again; returns the real run's result."""
    before = dumpxml(lab, vm)
    checked = run_module(lab, HOST, NIC, args, check_mode=True, diff=True)
    assert checked.get("failed") is not True and checked["changed"] is True, checked
    assert dumpxml(lab, vm) == before, "check mode changed the definition"
    real = run_module(lab, HOST, NIC, args, diff=True)
    assert real.get("failed") is not True and real["changed"] is True, real
    again = run_module(lab, HOST, NIC, args)
    assert again.get("failed") is not True and again["changed"] is False, again
    assert run_module(lab, HOST, NIC, args, check_mode=True)["changed"] is False
    assert again["pair"] == real["pair"]
    return real


def test_teaming_pair_written_as_libvirt_shows_it(lab: Path, scratch: t.Callable[..., str], vf_network: str) -> None:
    vm = scratch()
    args = {"name": vm, "pair": "net1", "mode": "teaming", "vf_network": vf_network, "backup_network": LAB_NETWORK}
    real = four_runs(lab, args, vm)
    assert "ua-net1-backup" in real["diff"]["after"] and real["diff"]["before"] == ""
    xml = dumpxml(lab, vm)
    order = [alias_of(interface) for interface in interfaces(xml)]
    assert order == [None, "ua-net1-backup", "ua-net1-vf"], "the backup is listed before the VF: %s" % order
    nics = by_alias(xml)
    backup, vf = nics["ua-net1-backup"], nics["ua-net1-vf"]
    assert backup.get("type") == "network" and backup.find("source").get("network") == LAB_NETWORK
    assert backup.find("model").get("type") == "virtio"
    assert backup.find("teaming").attrib == {"type": "persistent"}
    assert vf.get("type") == "network" and vf.find("source").get("network") == vf_network
    assert vf.find("teaming").attrib == {"type": "transient", "persistent": "ua-net1-backup"}
    mac = backup.find("mac").get("address")
    assert mac == vf.find("mac").get("address") == real["pair"]["mac"], "one MAC for both"
    # libvirt put the VF in a PCI Express root port of its own (hot-pluggable), not behind a PCI bridge.
    bus = vf.find("address").get("bus")
    controllers = {c.get("index"): c.get("model") for c in ET.fromstring(xml).findall("devices/controller[@type='pci']")}
    assert controllers[str(int(bus, 16))] == "pcie-root-port", (bus, controllers)

    # A MAC given now differs from the kept one: the pair is rewritten with it, still one MAC.
    moved = run_module(lab, HOST, NIC, dict(args, mac="52:54:00:e1:00:07"))
    assert moved["changed"] is True and moved["pair"]["mac"] == "52:54:00:e1:00:07", moved
    nics = by_alias(dumpxml(lab, vm))
    assert {nic.find("mac").get("address") for alias, nic in nics.items() if alias} == {"52:54:00:e1:00:07"}


def test_bond_pair_then_fail_over_mac_then_replaced_by_teaming(lab: Path, scratch: t.Callable[..., str], vf_network: str) -> None:
    vm = scratch()
    args = {"name": vm, "pair": "bond0", "mode": "bond", "vf_network": vf_network, "backup_bridge": LAB_BRIDGE}
    real = four_runs(lab, args, vm)
    nics = by_alias(dumpxml(lab, vm))
    backup, vf = nics["ua-bond0-backup"], nics["ua-bond0-vf"]
    assert backup.find("teaming") is None and vf.find("teaming") is None
    assert backup.get("type") == "bridge" and backup.find("source").get("bridge") == LAB_BRIDGE
    assert backup.find("filterref") is None
    assert backup.find("mac").get("address") == vf.find("mac").get("address") == real["pair"]["mac"]

    own = four_runs(lab, dict(args, fail_over_mac=True), vm)
    nics = by_alias(dumpxml(lab, vm))
    assert nics["ua-bond0-vf"].find("mac").get("address") == real["pair"]["mac"], "the VF keeps the pair's MAC"
    assert nics["ua-bond0-backup"].find("mac").get("address") == own["pair"]["backup_mac"] != real["pair"]["mac"]

    teaming = dict(args, mode="teaming", fail_over_mac=False)
    checked = run_module(lab, HOST, NIC, teaming, check_mode=True, diff=True)
    assert checked["changed"] is True and checked["replaced_mode"] == "bond", checked
    assert "replaces the bond pair" in checked["diff"]["after_header"]
    replaced = run_module(lab, HOST, NIC, teaming)
    assert replaced["changed"] is True and replaced["pair"]["mode"] == "teaming" and replaced["pair"]["mac"] == real["pair"]["mac"]
    assert [alias_of(i) for i in interfaces(dumpxml(lab, vm))] == [None, "ua-bond0-backup", "ua-bond0-vf"]


def test_absent_removes_exactly_the_pair(lab: Path, scratch: t.Callable[..., str], vf_network: str) -> None:
    vm = scratch()
    base = {"name": vm, "vf_network": vf_network, "backup_network": LAB_NETWORK}
    for pair in ("keep", "gone"):
        assert run_module(lab, HOST, NIC, dict(base, pair=pair))["changed"] is True
    before = by_alias(dumpxml(lab, vm))
    assert set(before) == {None, "ua-keep-backup", "ua-keep-vf", "ua-gone-backup", "ua-gone-vf"}
    absent = {"name": vm, "pair": "gone", "state": "absent"}
    checked = run_module(lab, HOST, NIC, absent, check_mode=True, diff=True)
    assert checked["changed"] is True and "ua-gone-vf" in checked["diff"]["before"] and checked["diff"]["after"] == "", checked
    assert set(by_alias(dumpxml(lab, vm))) == set(before)
    assert run_module(lab, HOST, NIC, absent)["changed"] is True
    after = by_alias(dumpxml(lab, vm))
    assert set(after) == {None, "ua-keep-backup", "ua-keep-vf"}
    for alias, element in after.items():
        assert ET.tostring(element) == ET.tostring(before[alias]), "%s was left as it was" % alias
    assert run_module(lab, HOST, NIC, absent)["changed"] is False
    assert run_module(lab, HOST, NIC, absent, check_mode=True)["changed"] is False


def lab_vm_mac(lab: Path) -> tuple[str, str]:
    """A lab VM on lab-h1 and its MAC (from libvirt)."""
    for name in virsh(host_uri(lab), "list", "--all", "--name").stdout.split():
        if name.startswith("sr"):
            continue
        macs = [i.find("mac").get("address") for i in interfaces(virsh(host_uri(lab), "dumpxml", name).stdout)]
        if macs:
            return name, macs[0]
    raise AssertionError("no lab VM with a NIC on %s" % HOST)


def test_refusals_change_nothing(lab: Path, scratch: t.Callable[..., str], vf_network: str) -> None:
    vm = scratch(mac="52:54:00:e0:ee:01")
    i440fx = scratch(machine="pc")
    other_vm, other_mac = lab_vm_mac(lab)
    good = {"name": vm, "pair": "p", "vf_network": vf_network, "backup_network": LAB_NETWORK}
    cases = [
        (dict(good, name=i440fx), i440fx, "machine type 'pc-i440fx-"),
        (dict(good, vf_network="no-such-net"), vm, "The VF network 'no-such-net' does not exist"),
        (dict(good, vf_network=LAB_NETWORK), vm, "VF network 'lab' on qemu:///system is in forward mode 'bridge', not 'hostdev'"),
        (dict(good, backup_network="no-such-backup"), vm, "The backup network 'no-such-backup' does not exist"),
        ({**{k: v for k, v in good.items() if k != "backup_network"}, "backup_bridge": "nobr0"}, vm, "The backup bridge 'nobr0' does not exist"),
        (dict(good, mac="52:54:00:e0:ee:01"), vm, "MAC 52:54:00:e0:ee:01 is already used by"),
        (dict(good, mac=other_mac), vm, "MAC %s is already used by VM '%s' on this host" % (other_mac, other_vm)),
    ]
    for args, target, message in cases:
        before = dumpxml(lab, target)
        for check_mode in (True, False):
            result = run_module(lab, HOST, NIC, args, check_mode=check_mode)
            assert result.get("failed") is True and message in result["msg"], (args, result)
            assert "Nothing was changed" in result["msg"], result["msg"]
        assert dumpxml(lab, target) == before, "refused run changed %s" % target

    # The i440fx VM may still have a bond pair (no PCI Express needed).
    bond = run_module(lab, HOST, NIC, dict(good, name=i440fx, mode="bond"))
    assert bond["changed"] is True, bond


def test_transient_vm_is_refused(lab: Path, scratch: t.Callable[..., str], vf_network: str) -> None:
    vm = scratch(transient=True)
    live = virsh(host_uri(lab), "dumpxml", vm).stdout
    result = run_module(lab, HOST, NIC, {"name": vm, "pair": "p", "vf_network": vf_network, "backup_network": LAB_NETWORK})
    assert result.get("failed") is True and "is transient" in result["msg"], result
    assert virsh(host_uri(lab), "dumpxml", vm).stdout == live


def network_names(lab: Path) -> list[str]:
    return virsh(host_uri(lab), "net-list", "--all", "--name").stdout.split()


def test_sriov_network_over_a_missing_pf_fails_with_libvirts_reason_and_leaves_nothing(lab: Path) -> None:
    name = "sriov%s" % secrets.token_hex(2)
    args = {"name": name, "pf": "nosuchpf0"}
    checked = run_module(lab, HOST, NETWORK, args, check_mode=True, diff=True)
    assert checked["changed"] is True and "nosuchpf0" in checked["diff"]["after"], checked
    assert name not in network_names(lab)
    result = run_module(lab, HOST, NETWORK, args)
    assert result.get("failed") is True, result
    print("libvirt on a missing PF:", result["libvirt_message"])
    assert "libvirt refused to start the hostdev network" in result["msg"] and result["libvirt_message"] in result["msg"]
    assert "nothing is left behind" in result["msg"]
    assert name not in network_names(lab), "the network this run defined is gone again"


def test_sriov_network_over_a_netdev_that_is_no_pf(lab: Path) -> None:
    name = "sriov%s" % secrets.token_hex(2)
    dev = "sriovdum%s" % secrets.token_hex(1)
    # A real netdev that is no SR-IOV PF (the lab's kernel cannot load the dummy driver; veth is built in).
    virtlab("ssh", HOST, "--", "ip", "link", "add", dev, "type", "veth", "peer", "name", dev + "p")
    try:
        result = run_module(lab, HOST, NETWORK, {"name": name, "pf": dev})
        assert result.get("failed") is True, result
        print("libvirt on a netdev without VFs:", result["libvirt_message"])
        assert result["libvirt_message"] in result["msg"] and dev in result["msg"]
        assert name not in network_names(lab)
    finally:
        virtlab("ssh", HOST, "--", "ip", "link", "del", dev, check=False)


def test_sriov_network_existing_one_kept_refused_and_removed(lab: Path, vf_network: str) -> None:
    # Same PF, but libvirt cannot start it: the failure is reported and the network (not this run's) stays.
    same = run_module(lab, HOST, NETWORK, {"name": vf_network, "pf": "nopf0"})
    assert same.get("failed") is True and "libvirt refused to start" in same["msg"] and "nothing is left" not in same["msg"], same
    assert vf_network in network_names(lab)
    other = run_module(lab, HOST, NETWORK, {"name": vf_network, "pf": "otherpf1"})
    assert other.get("failed") is True and "exists over PF nopf0, not over PF otherpf1" in other["msg"], other
    mode = run_module(lab, HOST, NETWORK, {"name": LAB_NETWORK, "pf": "otherpf1"})
    assert mode.get("failed") is True and "forward mode 'bridge', not 'hostdev'" in mode["msg"], mode
    assert run_module(lab, HOST, NETWORK, {"name": LAB_NETWORK, "state": "absent"}).get("failed") is True
    assert LAB_NETWORK in network_names(lab)

    absent = {"name": vf_network, "state": "absent"}
    assert run_module(lab, HOST, NETWORK, absent, check_mode=True)["changed"] is True
    assert vf_network in network_names(lab)
    assert run_module(lab, HOST, NETWORK, absent)["changed"] is True
    assert vf_network not in network_names(lab)
    assert run_module(lab, HOST, NETWORK, absent)["changed"] is False
    assert run_module(lab, HOST, NETWORK, absent, check_mode=True)["changed"] is False
