"""sriov_failover_nic and sriov_network: their planning (pure) and their libvirt steps against fakes raising real libvirt errors."""

from __future__ import annotations

import json
import re
import typing as t
import xml.etree.ElementTree as ET

import libvirt
import pytest
from ansible.module_utils import _internal as module_utils_internal
from ansible.module_utils.common import warnings as module_warnings
from ansible.module_utils.testing import patch_module_args

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import failover
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io import failover_nic, sriov_network
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import FeatureUnsupportedError, MigrationError, VmChangedError
from ansible_collections.virtops.migration.plugins.modules import sriov_failover_nic
from ansible_collections.virtops.migration.plugins.modules import sriov_network as sriov_network_module

from libvirt_fakes import libvirt_error

Q35 = """<domain type='kvm'>
  <name>%s</name>
  <uuid>%s</uuid>
  <os><type arch='x86_64' machine='%s'>hvm</type></os>
  <devices>
    <controller type='pci' index='0' model='%s'/>
    <interface type='network'><mac address='52:54:00:aa:bb:01'/><source network='default'/><model type='virtio'/><alias name='net0'/></interface>
%s  </devices>
</domain>
"""
UUID1 = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
UUID2 = "2b4e28ba-2fa1-11d2-883f-0016d3cca427"


def vm_xml(name: str = "web1", uuid: str = UUID1, machine: str = "pc-q35-7.2", devices: str = "") -> str:
    root = "pcie-root" if "q35" in machine else "pci-root"
    return Q35 % (name, uuid, machine, root, devices)


HOSTDEV_NET = "<network><name>sriov-pf0</name><forward mode='hostdev' managed='yes'><pf dev='enp59s0f0'/></forward></network>"
BRIDGE_NET = "<network><name>prod</name><forward mode='bridge'/><bridge name='br-prod'/></network>"


class Net:
    def __init__(self, xml: str, active: bool = True, persistent: bool = True, autostart: bool = True) -> None:
        self.xml = xml
        self.active = active
        self.persistent = persistent
        self.auto = autostart
        self.start_error: t.Optional[libvirt.libvirtError] = None
        self.undefined = False

    def name(self) -> str:
        return ET.fromstring(self.xml).findtext("name") or ""

    def XMLDesc(self, flags: int = 0) -> str:  # noqa: N802 (libvirt's name)
        return self.xml

    def isActive(self) -> int:  # noqa: N802
        return int(self.active)

    def isPersistent(self) -> int:  # noqa: N802
        return int(self.persistent)

    def autostart(self) -> int:
        return int(self.auto)

    def setAutostart(self, value: int) -> int:  # noqa: N802
        self.auto = bool(value)
        return 0

    def create(self) -> int:
        if self.start_error is not None:
            raise self.start_error
        self.active = True
        return 0

    def destroy(self) -> int:
        self.active = False
        return 0

    def undefine(self) -> int:
        self.undefined = True
        return 0


# Secure fields libvirt shows only with VIR_DOMAIN_XML_SECURE (a graphics password).
SECURE_FIELD = re.compile(r""" passwd=(['"])[^'"]*\1""")


class Dom:
    def __init__(self, xml: str, active: bool = False, persistent: bool = True, live_xml: t.Optional[str] = None) -> None:
        self.inactive = xml
        self.live = live_xml if live_xml is not None else xml
        self.active = active
        self.persistent = persistent
        self.calls: t.List[t.Tuple[str, str]] = []
        self.attach_error: t.Optional[libvirt.libvirtError] = None
        # What jobStats answers (no job by default); called before each attach (a job starting meanwhile).
        self.job: t.Dict[str, t.Any] = {"type": libvirt.VIR_DOMAIN_JOB_NONE}
        self.on_attach: t.Optional[t.Callable[[], None]] = None

    def name(self) -> str:
        return ET.fromstring(self.inactive).findtext("name") or ""

    def UUIDString(self) -> str:  # noqa: N802
        return ET.fromstring(self.inactive).findtext("uuid") or ""

    def isActive(self) -> int:  # noqa: N802
        return int(self.active)

    def isPersistent(self) -> int:  # noqa: N802
        return int(self.persistent)

    def XMLDesc(self, flags: int = 0) -> str:  # noqa: N802
        xml = self.inactive if flags & libvirt.VIR_DOMAIN_XML_INACTIVE or not self.active else self.live
        return xml if flags & libvirt.VIR_DOMAIN_XML_SECURE else SECURE_FIELD.sub("", xml)

    def state(self, flags: int = 0) -> t.List[int]:
        return [libvirt.VIR_DOMAIN_RUNNING if self.active else libvirt.VIR_DOMAIN_SHUTOFF, 1]

    def jobStats(self, flags: int = 0) -> t.Dict[str, t.Any]:  # noqa: N802
        if not self.active:
            raise libvirt_error(libvirt.VIR_ERR_OPERATION_INVALID, "Requested operation is not valid: domain is not running")
        return dict(self.job)

    def detachDeviceAlias(self, alias: str, flags: int) -> int:  # noqa: N802
        self.calls.append(("detach", alias))
        root = ET.fromstring(self.live)
        devices = root.find("devices")
        for interface in devices.findall("interface"):
            if interface.find("alias") is not None and interface.find("alias").get("name") == alias:
                devices.remove(interface)
        self.live = ET.tostring(root, encoding="unicode")
        return 0

    def attachDeviceFlags(self, xml: str, flags: int) -> int:  # noqa: N802
        alias = ET.fromstring(xml).find("alias").get("name")
        self.calls.append(("attach", alias))
        if self.on_attach is not None:
            self.on_attach()
        if self.attach_error is not None and alias.endswith("-vf"):
            raise self.attach_error
        root = ET.fromstring(self.live)
        root.find("devices").append(ET.fromstring(xml))
        self.live = ET.tostring(root, encoding="unicode")
        return 0


class Conn:
    def __init__(self, domains: t.Sequence[Dom], networks: t.Sequence[Net] = (), bridges: t.Sequence[str] = ("br0",)) -> None:
        self.domains = list(domains)
        self.networks = {net.name(): net for net in networks}
        self.bridges = list(bridges)
        self.defined: t.List[str] = []
        self.define_error: t.Optional[libvirt.libvirtError] = None

    def close(self) -> int:
        return 0

    def getURI(self) -> str:  # noqa: N802
        return "qemu:///system"

    def getHostname(self) -> str:  # noqa: N802
        return "hv1"

    def lookupByName(self, name: str) -> Dom:  # noqa: N802
        for dom in self.domains:
            if dom.name() == name:
                return dom
        raise libvirt_error(libvirt.VIR_ERR_NO_DOMAIN, "Domain not found: no domain with matching name '%s'" % name)

    def lookupByUUIDString(self, uuid: str) -> Dom:  # noqa: N802
        for dom in self.domains:
            if dom.UUIDString() == uuid:
                return dom
        raise libvirt_error(libvirt.VIR_ERR_NO_DOMAIN, "Domain not found: no domain with matching uuid '%s'" % uuid)

    def listAllDomains(self, flags: int = 0) -> t.List[Dom]:  # noqa: N802
        return list(self.domains)

    def defineXML(self, xml: str) -> Dom:  # noqa: N802
        if self.define_error is not None:
            raise self.define_error
        self.defined.append(xml)
        name = ET.fromstring(xml).findtext("name")
        dom = self.lookupByName(name or "")
        dom.inactive = xml
        return dom

    def networkLookupByName(self, name: str) -> Net:  # noqa: N802
        if name in self.networks and not self.networks[name].undefined:
            return self.networks[name]
        raise libvirt_error(libvirt.VIR_ERR_NO_NETWORK, "Network not found: no network with matching name '%s'" % name, libvirt.VIR_FROM_NETWORK)

    def networkDefineXML(self, xml: str) -> Net:  # noqa: N802
        net = Net(xml, active=False, autostart=False)
        self.networks[net.name()] = net
        return net

    def listAllDevices(self, flags: int = 0) -> t.List[t.Any]:  # noqa: N802
        class Device:
            def __init__(self, name: str) -> None:
                self.xml = "<device><name>net_%s</name><capability type='net'><interface>%s</interface></capability></device>" % (name, name)

            def XMLDesc(self, flags: int = 0) -> str:  # noqa: N802
                return self.xml

        return [Device(name) for name in self.bridges]

    def interfaceLookupByName(self, name: str) -> t.Any:  # noqa: N802
        raise libvirt_error(libvirt.VIR_ERR_NO_SUPPORT, "this function is not supported by the connection driver: virInterfaceLookupByName")

    def nodeDeviceLookupByName(self, name: str) -> t.Any:  # noqa: N802
        raise libvirt_error(libvirt.VIR_ERR_NO_NODE_DEVICE, "Node device not found: no node device with matching name '%s'" % name)


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Module warnings are kept per process (see tests/unit/plugins/modules/test_host_info.py): each test gets its own."""
    if hasattr(module_warnings, "_global_warnings"):
        monkeypatch.setattr(module_warnings, "_global_warnings", {})
    monkeypatch.setattr(module_utils_internal, "is_controller", False)


@pytest.fixture()
def host(monkeypatch: pytest.MonkeyPatch) -> t.Callable[..., Conn]:
    def make(*domains: Dom, networks: t.Sequence[Net] = (Net(HOSTDEV_NET), Net(BRIDGE_NET)), bridges: t.Sequence[str] = ("br0",)) -> Conn:
        conn = Conn(domains, networks, bridges)

        class Opened:
            def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
                pass

            def __enter__(self) -> Conn:
                return conn

            def __exit__(self, *args: t.Any) -> None:
                return None

        monkeypatch.setattr(failover_nic, "libvirt_connection", Opened)
        monkeypatch.setattr(sriov_network, "libvirt_connection", Opened)
        return conn

    return make


TEAMING = {"pair": "net1", "mode": "teaming", "vf_network": "sriov-pf0", "backup_network": "prod"}


def apply(request: t.Mapping[str, t.Any], state: str = "present", live: bool = True, check_mode: bool = False, vm: str = "web1") -> t.Dict[str, t.Any]:
    return failover_nic.FailoverNic("qemu:///system").apply(vm, state, request, live, check_mode)


def test_teaming_four_runs_check_real_again_check(host: t.Callable[..., Conn]) -> None:
    conn = host(Dom(vm_xml()))
    checked = apply(TEAMING, check_mode=True)
    assert checked["changed"] and conn.defined == []
    assert "ua-net1-backup" in checked["diff"]["after"] and checked["diff"]["before"] == ""
    mac = checked["pair"]["mac"]
    assert mac.startswith("52:54:00:")
    real = apply(TEAMING)
    assert real["changed"] and len(conn.defined) == 1
    pair = failover.find_pair(conn.defined[0], "net1")
    assert pair is not None and pair.mode == "teaming" and pair.vf_network == "sriov-pf0" and pair.backup_network == "prod"
    again = apply(TEAMING)
    assert not again["changed"] and len(conn.defined) == 1 and again["pair"]["mac"] == real["pair"]["mac"]
    assert not apply(TEAMING, check_mode=True)["changed"]


def test_a_mode_change_replaces_the_pair_and_keeps_its_mac(host: t.Callable[..., Conn]) -> None:
    conn = host(Dom(vm_xml()))
    first = apply(TEAMING)
    bond = dict(TEAMING, mode="bond", fail_over_mac=True)
    result = apply(bond, check_mode=True)
    assert result["changed"] and result["replaced_mode"] == "teaming"
    assert "replaces the teaming pair" in result["diff"]["after_header"]
    result = apply(bond)
    assert result["pair"]["mode"] == "bond" and result["pair"]["mac"] == first["pair"]["mac"]
    assert result["pair"]["backup_mac"] != result["pair"]["mac"]
    assert len(ET.fromstring(conn.defined[-1]).findall("devices/interface")) == 3
    assert not apply(bond)["changed"]


@pytest.mark.parametrize(
    "request_changes, domains, networks, message",
    [
        ({}, [Dom(vm_xml(machine="pc-i440fx-7.2"))], None, "machine type 'pc-i440fx-7.2'"),
        ({"vf_network": "nope"}, [Dom(vm_xml())], None, "The VF network 'nope' does not exist"),
        ({"vf_network": "prod"}, [Dom(vm_xml())], None, "forward mode 'bridge', not 'hostdev'"),
        ({"backup_network": "gone"}, [Dom(vm_xml())], None, "The backup network 'gone' does not exist"),
        ({"backup_network": None, "backup_bridge": "br9"}, [Dom(vm_xml())], None, "The backup bridge 'br9' does not exist"),
        ({"mac": "52:54:00:aa:bb:01"}, [Dom(vm_xml())], None, "MAC 52:54:00:aa:bb:01 is already used by interface net0 of VM 'web1'"),
        (
            {"mac": "52:54:00:00:00:99"},
            [Dom(vm_xml()), Dom(vm_xml("db1", UUID2).replace("52:54:00:aa:bb:01", "52:54:00:00:00:99"))],
            None,
            "MAC 52:54:00:00:00:99 is already used by VM 'db1' on this host",
        ),
        ({}, [Dom(vm_xml(), active=True, persistent=False)], None, "is transient"),
        ({"fail_over_mac": True}, [Dom(vm_xml())], None, "fail_over_mac applies to mode bond only"),
        ({"vf_network": None, "vf_address": "3b:10.1"}, [Dom(vm_xml())], None, "DDDD:BB:SS.F"),
    ],
)
def test_refusals_change_nothing(
    host: t.Callable[..., Conn], request_changes: t.Dict[str, t.Any], domains: t.List[Dom], networks: t.Any, message: str
) -> None:
    conn = host(*domains)
    for check_mode in (True, False):
        with pytest.raises(MigrationError, match=message):
            apply(dict(TEAMING, **request_changes), check_mode=check_mode)
    assert conn.defined == []


def test_teaming_refused_by_the_hypervisor_is_reported_as_unsupported(host: t.Callable[..., Conn]) -> None:
    conn = host(Dom(vm_xml()))
    conn.define_error = libvirt_error(
        libvirt.VIR_ERR_CONFIG_UNSUPPORTED, "unsupported configuration: virtio-net failover (teaming) is not supported with this QEMU binary"
    )
    with pytest.raises(FeatureUnsupportedError, match="does not support virtio-net failover .*use mode bond"):
        apply(TEAMING)
    assert conn.defined == []


def test_other_teaming_errors_are_not_taken_for_a_missing_feature() -> None:
    text = "unsupported configuration: virtio-net teaming persistent interface must be <model type='virtio'/>, not 'e1000e'"
    assert not failover_nic.teaming_unsupported(libvirt_error(libvirt.VIR_ERR_CONFIG_UNSUPPORTED, text))
    text = "unsupported configuration: virtio-net failover (teaming) is not supported with this QEMU binary"
    assert failover_nic.teaming_unsupported(libvirt_error(libvirt.VIR_ERR_CONFIG_UNSUPPORTED, text))
    assert not failover_nic.teaming_unsupported(ValueError(text))


def test_running_vm_gets_backup_then_vf_and_absent_removes_vf_then_backup(host: t.Callable[..., Conn]) -> None:
    dom = Dom(vm_xml(), active=True)
    host(dom)
    result = apply(TEAMING)
    assert dom.calls == [("attach", "ua-net1-backup"), ("attach", "ua-net1-vf")]
    assert result["actions"][1:] == ["plugged ua-net1-backup", "plugged ua-net1-vf"]
    assert not apply(TEAMING)["changed"]
    dom.calls.clear()
    removed = apply({"pair": "net1"}, state="absent")
    assert removed["changed"] and dom.calls == [("detach", "ua-net1-vf"), ("detach", "ua-net1-backup")]
    assert failover.find_pair(dom.inactive, "net1") is None and failover.find_pair(dom.live, "net1") is None
    assert [i.find("alias").get("name") for i in ET.fromstring(dom.inactive).findall("devices/interface")] == ["net0"]
    assert not apply({"pair": "net1"}, state="absent")["changed"]


def test_live_false_writes_only_the_definition_and_warns(host: t.Callable[..., Conn]) -> None:
    dom = Dom(vm_xml(), active=True)
    host(dom)
    result = apply(TEAMING, live=False)
    assert result["changed"] and dom.calls == []
    assert any("live=false" in warning for warning in result["warnings"])


def test_a_failed_vf_plug_is_undone_and_the_definition_restored(host: t.Callable[..., Conn]) -> None:
    before = vm_xml()
    dom = Dom(before, active=True)
    conn = host(dom)
    dom.attach_error = libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, "internal error: network 'sriov-pf0' has no free VF")
    with pytest.raises(MigrationError, match="no free VF.*Undone: unplugged ua-net1-backup again; restored the previous persistent definition"):
        apply(TEAMING)
    assert conn.defined[-1] == before
    assert failover.find_pair(dom.live, "net1") is None


# --- the check before each write: a VM that is leaving, or changed, gets nothing written -----------

MIGRATING = {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "operation": libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT, "time_elapsed": 4000}


def test_a_vm_being_migrated_away_gets_no_definition(host: t.Callable[..., Conn]) -> None:
    dom = Dom(vm_xml(), active=True)
    conn = host(dom)
    dom.job = dict(MIGRATING)
    assert apply(TEAMING, check_mode=True)["changed"]  # check mode writes nothing: no refusal needed
    with pytest.raises(VmChangedError) as caught:
        apply(TEAMING)
    message = caught.value.msg
    assert message.startswith("Cannot write pair net1 into the persistent definition for VM 'web1' on host hv1 (qemu:///system): a libvirt job runs on it "
                              "(outgoing migration, running for 4 s)"), message
    assert message.endswith("Nothing was changed.")
    assert conn.defined == [] and dom.calls == []


def test_a_vm_that_left_during_the_checks_gets_no_definition(host: t.Callable[..., Conn], monkeypatch: pytest.MonkeyPatch) -> None:
    dom = Dom(vm_xml(), active=True)
    conn = host(dom)
    checks = failover_nic.FailoverNic._check_host  # pylint: disable=protected-access

    def check_then_leave(self: failover_nic.FailoverNic, *args: t.Any) -> None:
        checks(self, *args)
        conn.domains.remove(dom)  # the migration ends: the domain is gone from this host

    monkeypatch.setattr(failover_nic.FailoverNic, "_check_host", check_then_leave)
    with pytest.raises(VmChangedError, match="it is no longer on this host .*Nothing was changed"):
        apply(TEAMING)
    assert conn.defined == [] and dom.calls == []


def test_a_vm_shut_off_since_it_was_read_gets_no_definition(host: t.Callable[..., Conn], monkeypatch: pytest.MonkeyPatch) -> None:
    dom = Dom(vm_xml(), active=True)
    conn = host(dom)
    checks = failover_nic.FailoverNic._check_host  # pylint: disable=protected-access

    def check_then_stop(self: failover_nic.FailoverNic, *args: t.Any) -> None:
        checks(self, *args)
        dom.active = False

    monkeypatch.setattr(failover_nic.FailoverNic, "_check_host", check_then_stop)
    with pytest.raises(VmChangedError, match="it was active and persistent, it is now shut off and persistent"):
        apply(TEAMING)
    assert conn.defined == []


def test_a_definition_someone_else_wrote_meanwhile_is_not_overwritten(host: t.Callable[..., Conn], monkeypatch: pytest.MonkeyPatch) -> None:
    dom = Dom(vm_xml())
    conn = host(dom)
    checks = failover_nic.FailoverNic._check_host  # pylint: disable=protected-access

    def check_then_edit(self: failover_nic.FailoverNic, *args: t.Any) -> None:
        checks(self, *args)
        dom.inactive = dom.inactive.replace("<devices>", "<devices><watchdog model='i6300esb'/>")

    monkeypatch.setattr(failover_nic.FailoverNic, "_check_host", check_then_edit)
    with pytest.raises(VmChangedError, match="its persistent definition was changed by someone else"):
        apply(TEAMING)
    assert conn.defined == [] and "watchdog" in dom.inactive


def test_a_job_starting_between_two_live_steps_stops_them_and_the_undo_writes_nothing(host: t.Callable[..., Conn]) -> None:
    dom = Dom(vm_xml(), active=True)
    conn = host(dom)

    def migration_starts() -> None:
        dom.job = dict(MIGRATING)

    dom.on_attach = migration_starts  # right after the backup is plugged in
    with pytest.raises(VmChangedError) as caught:
        apply(TEAMING)
    message = caught.value.msg
    assert message.startswith("Cannot plug ua-net1-vf into the running VM for VM 'web1' on host hv1 (qemu:///system): a libvirt job runs"), message
    assert "Undone: nothing. NOT undone: ua-net1-backup stays plugged into the running VM; the persistent definition keeps the change" in message
    assert "The undo stopped there: Cannot unplug ua-net1-backup again for VM 'web1'" in message
    assert dom.calls == [("attach", "ua-net1-backup")]
    assert len(conn.defined) == 1, "the previous definition was not defined again while the VM migrates"
    assert caught.value.details["not_undone"][0] == "ua-net1-backup stays plugged into the running VM"


def test_the_undo_never_defines_the_vm_on_a_host_it_left(host: t.Callable[..., Conn]) -> None:
    before = vm_xml()
    dom = Dom(before, active=True)
    conn = host(dom)
    dom.attach_error = libvirt_error(libvirt.VIR_ERR_NO_DOMAIN, "Domain not found: no domain with matching uuid '%s'" % UUID1)

    def leave_on_vf() -> None:
        if dom.calls[-1] == ("attach", "ua-net1-vf"):
            conn.domains.remove(dom)  # the VM's migration ended just now

    dom.on_attach = leave_on_vf
    with pytest.raises(MigrationError) as caught:
        apply(TEAMING)
    message = caught.value.msg
    assert (
        "NOT undone: ua-net1-backup stays plugged into the running VM; the persistent definition keeps the change this run wrote "
        "(the previous one was not defined again)" in message
    ), message
    assert "The undo stopped there: Cannot unplug ua-net1-backup again for VM 'web1' on host hv1 (qemu:///system): it is no longer on this host" in message
    assert conn.defined != [] and before not in conn.defined, "no second definition on the host the VM left"
    assert len(conn.defined) == 1


def test_the_undo_does_not_overwrite_a_definition_written_after_this_runs(host: t.Callable[..., Conn]) -> None:
    dom = Dom(vm_xml(), active=True)
    conn = host(dom)
    dom.attach_error = libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, "internal error: network 'sriov-pf0' has no free VF")

    def someone_defines() -> None:
        if dom.calls[-1] == ("attach", "ua-net1-vf"):
            dom.inactive = dom.inactive.replace("<devices>", "<devices><watchdog model='i6300esb'/>")

    dom.on_attach = someone_defines
    with pytest.raises(MigrationError) as caught:
        apply(TEAMING)
    message = caught.value.msg
    assert "Undone: unplugged ua-net1-backup again. NOT undone: the persistent definition keeps the change" in message, message
    assert "its persistent definition was changed by someone else" in message
    assert len(conn.defined) == 1 and "watchdog" in dom.inactive


def password(xml: str) -> t.Optional[str]:
    graphics = ET.fromstring(xml).find("devices/graphics")
    return graphics.get("passwd") if graphics is not None else None


def test_the_definition_is_read_and_written_with_its_secure_fields(host: t.Callable[..., Conn]) -> None:
    secret = "<graphics type='vnc' port='-1' autoport='yes' passwd='s3cret'/>\n"
    dom = Dom(vm_xml(devices=secret), active=True)
    conn = host(dom)
    assert "passwd" not in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), "the fake hides secure fields as libvirt does"
    result = apply(TEAMING)
    assert result["changed"] and len(conn.defined) == 1
    assert password(conn.defined[0]) == "s3cret" and password(dom.inactive) == "s3cret"
    assert "s3cret" not in json.dumps(result), "the result shows only the pair"
    assert not apply(TEAMING)["changed"]
    assert apply({"pair": "net1"}, state="absent")["changed"] and password(conn.defined[-1]) == "s3cret"


def test_a_failed_plug_into_a_vm_still_here_is_still_undone_in_full(host: t.Callable[..., Conn]) -> None:
    before = vm_xml(devices="<graphics type='vnc' passwd='s3cret'/>\n")
    dom = Dom(before, active=True)
    conn = host(dom)
    dom.attach_error = libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, "internal error: network 'sriov-pf0' has no free VF")
    with pytest.raises(MigrationError) as caught:
        apply(TEAMING)
    assert "Undone: unplugged ua-net1-backup again; restored the previous persistent definition." in caught.value.msg
    assert "NOT undone" not in caught.value.msg and caught.value.details["not_undone"] == []
    assert conn.defined[-1] == before, "restored with its password"


@pytest.mark.parametrize(
    "inactive_devices, live_devices, expected_detach",
    [
        ("", None, ()),
        ("", "", ()),
        # Only the backup left in the live XML (a bond VF unplugged): it is unplugged.
        (
            "<interface type='bridge'><mac address='52:54:00:01:01:01'/><source bridge='br0'/><model type='virtio'/><alias name='ua-b-backup'/></interface>",
            "<interface type='bridge'><mac address='52:54:00:01:01:01'/><source bridge='br0'/><model type='virtio'/><alias name='ua-b-backup'/></interface>",
            ("ua-b-backup",),
        ),
    ],
)
def test_plan_absent(inactive_devices: str, live_devices: t.Optional[str], expected_detach: t.Tuple[str, ...]) -> None:
    live = vm_xml(devices=live_devices) if live_devices is not None else None
    plan = failover.plan_absent(vm_xml(devices=inactive_devices), live, "b")
    assert plan.live_detach == expected_detach
    assert plan.changed == bool(expected_detach)


def test_choose_macs_keeps_an_existing_pair_and_avoids_used_ones() -> None:
    spec = failover.PairSpec(name="p", mode="teaming", mac="52:54:00:12:34:56", vf_network="v", backup_network="b")
    xml = failover.add_pair(vm_xml(), spec)
    assert failover.choose_macs([xml, None], "p", "teaming", False, None) == ("52:54:00:12:34:56", None)
    assert failover.choose_macs([xml], "p", "teaming", False, "52:54:00:AB:CD:EF") == ("52:54:00:ab:cd:ef", None)
    mac, own = failover.choose_macs([xml], "p", "bond", True, None)
    assert mac == "52:54:00:12:34:56" and own not in (None, mac)
    fresh = failover.choose_macs([vm_xml()], "q", "teaming", False, None, used_elsewhere=["52:54:00:00:00:01"])[0]
    assert fresh not in ("52:54:00:aa:bb:01", "52:54:00:00:00:01", "52:54:00:12:34:56")


# --- sriov_network -------------------------------------------------------------------------------


def net_apply(
    name: str = "sriov-pf0", pf: t.Optional[str] = "enp59s0f0", state: str = "present", check_mode: bool = False
) -> t.Dict[str, t.Any]:
    return sriov_network.SriovNetwork("qemu:///system").apply(name, pf, state, True, check_mode)


def test_network_four_runs(host: t.Callable[..., Conn]) -> None:
    conn = host(networks=())
    checked = net_apply(check_mode=True)
    assert checked["changed"] and "sriov-pf0" not in conn.networks and checked["diff"]["before"] == ""
    wanted = ET.fromstring(checked["diff"]["after"].split("\nactive:")[0])
    assert wanted.find("forward").attrib == {"mode": "hostdev", "managed": "yes"} and wanted.find("forward/pf").get("dev") == "enp59s0f0"
    real = net_apply()
    net = conn.networks["sriov-pf0"]
    assert real["changed"] and net.active and net.auto
    assert real["actions"] == ["defined network sriov-pf0 over PF enp59s0f0", "started network sriov-pf0", "set autostart of network sriov-pf0 to True"]
    assert not net_apply()["changed"] and not net_apply(check_mode=True)["changed"]
    assert net_apply(state="absent", pf=None)["changed"] and net.undefined and not net.active


def test_network_that_libvirt_cannot_start_is_removed_again(host: t.Callable[..., Conn]) -> None:
    conn = host(networks=())
    original = conn.networkDefineXML

    def define(xml: str) -> Net:
        net = original(xml)
        text = "internal error: No usable Vf's present on SRIOV PF enp59s0f0"
        net.start_error = libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, text, libvirt.VIR_FROM_NETWORK)
        return net

    conn.networkDefineXML = define  # type: ignore[method-assign]
    with pytest.raises(MigrationError, match="No usable Vf's present on SRIOV PF enp59s0f0.*nothing is left behind") as caught:
        net_apply()
    assert conn.networks["sriov-pf0"].undefined
    assert caught.value.details["actions"][-1] == "removed the definition of network sriov-pf0 again"


@pytest.mark.parametrize(
    "existing, pf, message",
    [
        (HOSTDEV_NET, "enp94s0f1", "exists over PF enp59s0f0, not over PF enp94s0f1"),
        (BRIDGE_NET.replace("prod", "sriov-pf0"), "enp59s0f0", "exists in forward mode 'bridge', not 'hostdev'"),
    ],
)
def test_network_of_that_name_with_another_pf_or_mode_is_refused(host: t.Callable[..., Conn], existing: str, pf: str, message: str) -> None:
    conn = host(networks=(Net(existing),))
    with pytest.raises(MigrationError, match=message):
        net_apply(pf=pf)
    assert conn.networks["sriov-pf0"].xml == existing and not conn.networks["sriov-pf0"].undefined


def test_network_absent_refuses_one_in_use_or_not_hostdev(host: t.Callable[..., Conn]) -> None:
    host(networks=(Net(HOSTDEV_NET.replace("<network>", "<network connections='2'>")), Net(BRIDGE_NET)))
    with pytest.raises(MigrationError, match="2 VF\\(s\\) in use"):
        net_apply(state="absent")
    with pytest.raises(MigrationError, match="not a hostdev"):
        net_apply(name="prod", state="absent")
    assert not net_apply(name="missing", state="absent")["changed"]


def test_describe_network_lists_vfs() -> None:
    live = (
        "<network connections='1'><name>sriov-pf0</name><forward mode='hostdev' managed='yes'><pf dev='enp59s0f0'/>"
        "<address type='pci' domain='0x0000' bus='0x3b' slot='0x10' function='0x0'/>"
        "<address type='pci' domain='0x0000' bus='0x3b' slot='0x10' function='0x2'/></forward></network>"
    )
    facts = sriov_network.describe_network(live)
    assert facts == {"forward_mode": "hostdev", "pf": "enp59s0f0", "managed": True, "vfs": ["0000:3b:10.0", "0000:3b:10.2"], "connections": 1}


# --- the modules' main() ----------------------------------------------------------------------------


def run_main(module: t.Any, args: t.Dict[str, t.Any], capsys: pytest.CaptureFixture[str]) -> t.Dict[str, t.Any]:
    with patch_module_args(args), pytest.raises(SystemExit) as exited:
        module.main()
    result = t.cast(t.Dict[str, t.Any], json.loads(capsys.readouterr().out))
    assert (exited.value.code == 0) is not result.get("failed", False)
    return result


@pytest.mark.parametrize(
    "args, message",
    [
        ({"name": "web1", "pair": "p", "backup_network": "prod"}, "state is present but any of the following are missing: vf_network, vf_address"),
        ({"name": "web1", "pair": "p", "vf_network": "sriov-pf0"}, "state is present but any of the following are missing: backup_network, backup_bridge"),
        ({"name": "web1", "pair": "p", "vf_network": "a", "vf_address": "0000:3b:10.1", "backup_network": "prod"}, "mutually exclusive"),
        ({"pair": "p", "state": "absent"}, "one of the following is required: name, uuid"),
    ],
)
def test_failover_nic_main_refuses_bad_options(
    host: t.Callable[..., Conn], capsys: pytest.CaptureFixture[str], args: t.Dict[str, t.Any], message: str
) -> None:
    conn = host(Dom(vm_xml()))
    result = run_main(sriov_failover_nic, args, capsys)
    assert result["failed"] is True and message in result["msg"], result
    assert conn.defined == []


def test_failover_nic_main_writes_and_returns_the_pair(host: t.Callable[..., Conn], capsys: pytest.CaptureFixture[str]) -> None:
    conn = host(Dom(vm_xml()))
    result = run_main(sriov_failover_nic, dict(TEAMING, name="web1", _ansible_diff=True), capsys)
    assert result["changed"] is True and result["pair"]["vf_alias"] == "ua-net1-vf" and result["pair"]["mode"] == "teaming"
    assert len(conn.defined) == 1 and result["vm"] == "web1"
    assert run_main(sriov_failover_nic, dict(TEAMING, name="web1"), capsys)["changed"] is False


def test_sriov_network_main(host: t.Callable[..., Conn], capsys: pytest.CaptureFixture[str]) -> None:
    host(networks=())
    assert "state is present but all of the following are missing: pf" in run_main(sriov_network_module, {"name": "n"}, capsys)["msg"]
    result = run_main(sriov_network_module, {"name": "n", "pf": "enp59s0f0"}, capsys)
    assert result["changed"] is True and result["network"]["pf"] == "enp59s0f0" and result["network"]["active"] is True
