"""sriov_failover_nic and sriov_network against real libvirt on a lab host.

No SR-IOV hardware exists here, so no VF can be assigned and no VM with a pair is started: what is
proved is that real libvirt (9.0, QEMU 7.2) accepts the XML the module writes and shows it back as
written (``virsh dumpxml --inactive``), that repeat runs change nothing, that ``absent`` removes
exactly the pair, and every refusal, on scratch domains that are defined but never started (except
the transient one, which libvirt can only hold while it runs). A hostdev network over a PF that does
not exist, or over a netdev without VFs, fails to start with libvirt's own error.

One test needs a real guest (TCG): a live migration slow enough to run the module during it (a tiny
VM's memory is almost all zero pages, which a bandwidth cap hardly slows). The others need none: the
module edits definitions, and the lab VM whose MAC is taken only lends its definition (the session's
VMs are tiny VMs). Sequences of runs on lab-h1 (check, real, repeat, repeat in check mode; the tables
of refusals) go through one ``ansible-playbook`` process each (``run_tasks``); where the original
sequence looked at libvirt between two runs, a ``virsh`` task on the host reads it at that point of the
same run, so every run's effect is still seen before the next one.
"""

from __future__ import annotations

import secrets
import subprocess
import tempfile
import typing as t
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from labkit import assert_no_vm_lost, migration_job, module_task, run_module, run_tasks, uri, virsh, virtlab, vm_homes, wait_until

if t.TYPE_CHECKING:
    from conftest import VmFactory

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


def read_task(*args: str) -> dict[str, t.Any]:
    """A task for ``run_tasks`` that reads libvirt on the host itself (``virsh ARGS`` there) and changes nothing:
    what the controller's ``virsh`` would show at that point of the run."""
    return module_task("ansible.builtin.command", {"argv": ["virsh", "-c", "qemu:///system", *args]}, changed_when=False)


def read_definition(name: str) -> dict[str, t.Any]:
    """A ``read_task`` of the domain's persistent definition (``virsh dumpxml --inactive``)."""
    return read_task("dumpxml", "--inactive", name)


def read_networks() -> dict[str, t.Any]:
    """A ``read_task`` of the host's networks (``virsh net-list --all --name``)."""
    return read_task("net-list", "--all", "--name")


def output(result: t.Mapping[str, t.Any]) -> str:
    """What a ``read_task`` printed; fails the test when virsh failed."""
    assert result.get("failed") is not True and result.get("rc") == 0 and result["stdout"].strip(), result
    return str(result["stdout"])


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
    """Check mode, real, again, check again, in one ``ansible-playbook`` run; returns the real run's result.

    The definition is read on the host just before and just after the check-mode run, in the same run.
    """
    before, checked, after_check, real, again, again_checked = run_tasks(
        lab,
        HOST,
        [
            read_definition(vm),
            module_task(NIC, args, check_mode=True, diff=True),
            read_definition(vm),
            module_task(NIC, args, diff=True),
            module_task(NIC, args),
            module_task(NIC, args, check_mode=True),
        ],
    )
    assert checked.get("failed") is not True and checked["changed"] is True, checked
    assert output(after_check) == output(before), "check mode changed the definition"
    assert real.get("failed") is not True and real["changed"] is True, real
    assert again.get("failed") is not True and again["changed"] is False, again
    assert again_checked["changed"] is False, again_checked
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
    checked, replaced = run_tasks(lab, HOST, [module_task(NIC, teaming, check_mode=True, diff=True), module_task(NIC, teaming)])
    assert checked["changed"] is True and checked["replaced_mode"] == "bond", checked
    assert "replaces the bond pair" in checked["diff"]["after_header"]
    assert replaced["changed"] is True and replaced["pair"]["mode"] == "teaming" and replaced["pair"]["mac"] == real["pair"]["mac"]
    assert [alias_of(i) for i in interfaces(dumpxml(lab, vm))] == [None, "ua-bond0-backup", "ua-bond0-vf"]


def test_absent_removes_exactly_the_pair(lab: Path, scratch: t.Callable[..., str], vf_network: str) -> None:
    vm = scratch()
    base = {"name": vm, "vf_network": vf_network, "backup_network": LAB_NETWORK}
    absent = {"name": vm, "pair": "gone", "state": "absent"}
    # One run: both pairs, the definition, absent in check mode, the definition, absent, the definition, absent twice more.
    keep, gone, with_both, checked, after_check, removed, without, again, again_checked = run_tasks(
        lab,
        HOST,
        [
            module_task(NIC, dict(base, pair="keep")),
            module_task(NIC, dict(base, pair="gone")),
            read_definition(vm),
            module_task(NIC, absent, check_mode=True, diff=True),
            read_definition(vm),
            module_task(NIC, absent),
            read_definition(vm),
            module_task(NIC, absent),
            module_task(NIC, absent, check_mode=True),
        ],
    )
    for added in (keep, gone):
        assert added["changed"] is True, added
    before = by_alias(output(with_both))
    assert set(before) == {None, "ua-keep-backup", "ua-keep-vf", "ua-gone-backup", "ua-gone-vf"}
    assert checked["changed"] is True and "ua-gone-vf" in checked["diff"]["before"] and checked["diff"]["after"] == "", checked
    assert set(by_alias(output(after_check))) == set(before)
    assert removed["changed"] is True, removed
    after = by_alias(output(without))
    assert set(after) == {None, "ua-keep-backup", "ua-keep-vf"}
    for alias, element in after.items():
        assert ET.tostring(element) == ET.tostring(before[alias]), "%s was left as it was" % alias
    assert again["changed"] is False, again
    assert again_checked["changed"] is False, again_checked


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
    # The whole table in one run: both definitions first, then each case in check mode and for real
    # followed by its VM's definition, then the bond pair below.
    tasks = [read_definition(vm), read_definition(i440fx)]
    for args, target, _message in cases:
        tasks += [module_task(NIC, args, check_mode=True), module_task(NIC, args), read_definition(target)]
    # The i440fx VM may still have a bond pair (no PCI Express needed).
    tasks.append(module_task(NIC, dict(good, name=i440fx, mode="bond")))
    results = iter(run_tasks(lab, HOST, tasks))
    before = {vm: output(next(results)), i440fx: output(next(results))}
    for args, target, message in cases:
        for check_mode in (True, False):
            result = next(results)
            assert result.get("failed") is True and message in result["msg"], (args, check_mode, result)
            assert "Nothing was changed" in result["msg"], result["msg"]
        assert output(next(results)) == before[target], "refused run changed %s" % target

    bond = next(results)
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
    checked, networks, result = run_tasks(lab, HOST, [module_task(NETWORK, args, check_mode=True, diff=True), read_networks(), module_task(NETWORK, args)])
    assert checked["changed"] is True and "nosuchpf0" in checked["diff"]["after"], checked
    assert name not in output(networks).split()
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
    absent = {"name": vf_network, "state": "absent"}
    # One run: the refusals, then absent in check mode, for real and twice again; the host's networks
    # read at each point where they are looked at.
    (same, after_same, other, mode, lab_absent, after_refusals, checked, after_check, removed, after_removal, again,
     again_checked) = run_tasks(
        lab,
        HOST,
        [
            module_task(NETWORK, {"name": vf_network, "pf": "nopf0"}),
            read_networks(),
            module_task(NETWORK, {"name": vf_network, "pf": "otherpf1"}),
            module_task(NETWORK, {"name": LAB_NETWORK, "pf": "otherpf1"}),
            module_task(NETWORK, {"name": LAB_NETWORK, "state": "absent"}),
            read_networks(),
            module_task(NETWORK, absent, check_mode=True),
            read_networks(),
            module_task(NETWORK, absent),
            read_networks(),
            module_task(NETWORK, absent),
            module_task(NETWORK, absent, check_mode=True),
        ],
    )
    # Same PF, but libvirt cannot start it: the failure is reported and the network (not this run's) stays.
    assert same.get("failed") is True and "libvirt refused to start" in same["msg"] and "nothing is left" not in same["msg"], same
    assert vf_network in output(after_same).split()
    assert other.get("failed") is True and "exists over PF nopf0, not over PF otherpf1" in other["msg"], other
    assert mode.get("failed") is True and "forward mode 'bridge', not 'hostdev'" in mode["msg"], mode
    assert lab_absent.get("failed") is True, lab_absent
    assert LAB_NETWORK in output(after_refusals).split()

    assert checked["changed"] is True, checked
    assert vf_network in output(after_check).split()
    assert removed["changed"] is True, removed
    assert vf_network not in output(after_removal).split()
    assert again["changed"] is False, again
    assert again_checked["changed"] is False, again_checked


def test_a_vm_being_migrated_away_gets_nothing_written_on_its_source(lab: Path, new_vm: VmFactory, vf_network: str) -> None:
    """The lab incident: run on the source while another operator's live migration of the VM is under way.

    The module used to define the pair there and report ``changed``; the definition did not travel, and
    the VM arrived without the pair. Now every write is refused, naming the VM, the host and the job,
    and the source's definition stays as it was.
    """
    # A real guest: its memory makes a 1 MiB/s move last long enough to run the module during it.
    vm = new_vm(guest=True)
    h1, h2 = host_uri(lab), uri(lab, "lab-h2")
    before = dumpxml(lab, vm)
    migration = subprocess.Popen(  # pylint: disable=consider-using-with
        ["virsh", "-c", h1, "migrate", "--live", "--p2p", "--persistent", "--undefinesource", "--bandwidth", "1", vm, h2],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: migration_job(h1, vm), 60, "libvirt shows the outgoing migration job of %s" % vm)
        pair = {"name": vm, "pair": "mig", "mode": "bond", "vf_network": vf_network, "backup_bridge": LAB_BRIDGE}
        kept, live, policy = run_tasks(
            lab,
            HOST,
            [
                module_task(NIC, dict(pair, live=False)),
                module_task(NIC, pair),
                module_task("virtops.migration.migration_policy", {"name": vm, "priority": "high"}),
            ],
        )
        during = dumpxml(lab, vm)
        still_migrating = migration_job(h1, vm)
    finally:
        # Let the move end quickly now (whatever happened above), and wait for it.
        virsh(h1, "migrate-setspeed", vm, "--bandwidth", "8192", check=False)
        out, err = migration.communicate(timeout=300)
    for result in (kept, live):
        assert result.get("failed") is True and result.get("changed") is not True, result
        assert result["msg"].startswith("Cannot write pair mig into the persistent definition for VM '%s' on host lab-h1 " % vm), result["msg"]
        assert "a libvirt job runs on it (outgoing migration" in result["msg"] and "Nothing was changed." in result["msg"], result["msg"]
        assert result["reason"] == "job" and result["job_operation"] == "outgoing migration", result
    assert policy.get("failed") is True and "Cannot write the migration settings for VM '%s'" % vm in policy["msg"], policy
    assert "outgoing migration" in policy["msg"], policy["msg"]
    assert still_migrating, "the migration was still under way when the runs ended (else the test proves nothing)"
    assert during == before, "the source's persistent definition is as it was"

    assert migration.returncode == 0, "virsh migrate failed: %s%s" % (out, err)
    assert vm_homes(vm) == {"lab-h2": "running"}
    arrived = virsh(h2, "dumpxml", "--inactive", vm).stdout
    assert not {"ua-mig-backup", "ua-mig-vf"} & set(by_alias(arrived)), "no pair anywhere: the run changed nothing"
    assert_no_vm_lost()


def test_a_graphics_password_survives_the_define(lab: Path, scratch: t.Callable[..., str], vf_network: str) -> None:
    vm = scratch()
    secret = "pw%s" % secrets.token_hex(3)  # VNC passwords have 8 characters at most
    xml = virsh(host_uri(lab), "dumpxml", "--inactive", "--security-info", vm).stdout
    define(lab, xml.replace("</devices>", "<graphics type='vnc' autoport='yes' passwd='%s'/></devices>" % secret))

    def password() -> str | None:
        domain = ET.fromstring(virsh(host_uri(lab), "dumpxml", "--inactive", "--security-info", vm).stdout)
        graphics = domain.find("devices/graphics")
        return graphics.get("passwd") if graphics is not None else None

    assert password() == secret
    args = {"name": vm, "pair": "pw", "vf_network": vf_network, "backup_network": LAB_NETWORK}
    secure = read_task("dumpxml", "--inactive", "--security-info", vm)
    added, with_pair, removed = run_tasks(
        lab, HOST, [module_task(NIC, args, diff=True), secure, module_task(NIC, {"name": vm, "pair": "pw", "state": "absent"})]
    )
    assert added.get("failed") is not True and added["changed"] is True, added
    assert removed.get("failed") is not True and removed["changed"] is True, removed
    assert secret not in repr(added) + repr(removed), "the results show the pair, not the password"
    graphics = ET.fromstring(output(with_pair)).find("devices/graphics")
    assert graphics is not None and graphics.get("passwd") == secret, "the password survived the define that added the pair"
    assert "ua-pw-vf" in by_alias(output(with_pair))
    assert password() == secret, "and the one that removed it"
