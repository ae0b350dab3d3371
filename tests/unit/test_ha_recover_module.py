"""ha_recover's orchestration (``HaRecovery``) on fake hosts: checks, the store, fencing, restarts, cleaning
a host that came back, and check mode (no hypervisor, no SSH, no fence agent)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import typing as t
import uuid as uuidlib
from pathlib import Path

import libvirt
import pytest

from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration import ha_recovery
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import ha
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import requests as rq
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import statefiles as sf
from libvirt_fakes import HV1_UUID, HV2_UUID, HV3_UUID, FakeCluster, FakeConnection, FakeDomain, libvirt_error

RUNNING = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED)
SHUT_OFF = (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED)
NAMES = ("hv1", "hv2", "hv3")
FENCE = ["fence_virtlab", "--plug"]


def vm_uuid(name: str) -> str:
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, name))


def vm_xml(name: str, shared: Path, high_availability: bool = True, priority: str = "medium") -> str:
    metadata = (
        "<metadata><virtops:migration xmlns:virtops='https://virtops.github.io/xmlns/migration/1'>"
        "<virtops:high_availability>%s</virtops:high_availability><virtops:priority>%s</virtops:priority>"
        "</virtops:migration></metadata>" % ("true" if high_availability else "false", priority)
    )
    return (
        "<domain type='kvm'><name>%s</name><uuid>%s</uuid>%s<memory unit='MiB'>1024</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os><devices>"
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/><source file='%s/%s.qcow2'/><target dev='vda'/></disk>"
        "</devices></domain>" % (name, vm_uuid(name), metadata, shared, name)
    )


class Clock:
    """``time`` for ha_recovery: sleeping moves the clock on, and nothing waits."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.slept: t.List[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Lab(FakeCluster):
    """Three hosts, each with its libvirt URI, an SSH port that answers or not, and a fence command."""

    def __init__(self, capabilities: str, shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(capabilities)
        self.shared = shared
        self.conns: t.Dict[str, FakeConnection] = {}
        for name, host_uuid in zip(NAMES, (HV1_UUID, HV2_UUID, HV3_UUID)):
            self.conns[name] = self.add_host(self.uri(name), name, host_uuid)
        self.ssh_up = set(NAMES)
        self.opened: t.List[str] = []
        self.ssh_checks: t.List[t.Tuple[str, int]] = []
        self.commands: t.List[t.List[str]] = []
        # What the fence commands answer, by action.
        self.fence_codes = {"off": 0, "status": ha.STATUS_OFF}
        self.defined: t.List[t.Tuple[str, str]] = []
        self.made: t.List[FakeDomain] = []
        self.clock = Clock()
        self.programs = {FENCE[0]}
        for name, conn in self.conns.items():
            self._record_definitions(name, conn)
        monkeypatch.setattr(ha_recovery, "libvirt_connection", self.open)
        monkeypatch.setattr(ha_recovery.socket, "create_connection", self.ssh)
        monkeypatch.setattr(ha_recovery.HaRecovery, "_command", self.command)
        monkeypatch.setattr(ha_recovery, "time", self.clock)

    @staticmethod
    def uri(name: str) -> str:
        return "qemu+tcp://%s/system" % name

    def _record_definitions(self, name: str, conn: FakeConnection) -> None:
        define = conn.defineXML

        def recorded(xml: str) -> FakeDomain:
            self.defined.append((name, xml.split("<name>", 1)[1].split("</name>", 1)[0]))
            self.made.append(define(xml))
            return self.made[-1]

        conn.defineXML = recorded  # type: ignore[method-assign]

    def open(self, uri: str, username: t.Optional[str] = None, password: t.Optional[str] = None, connect_timeout: t.Optional[float] = None) -> t.Any:
        self.opened.append(uri)
        return self.connect(uri, username, password, connect_timeout)

    def ssh(self, address: t.Tuple[str, int], timeout: t.Optional[float] = None) -> t.Any:
        self.ssh_checks.append(address)
        if address[0] not in self.ssh_up:
            raise ConnectionRefusedError(111, "Connection refused")
        return contextlib.nullcontext()

    def command(self, argv: t.Sequence[str], timeout: float) -> t.Tuple[t.Optional[int], str]:
        self.commands.append(list(argv))
        return self.fence_codes[argv[-1]], ""

    # -- the hosts
    def add_vm(self, host: str, name: str, high_availability: bool = True, priority: str = "medium", state: t.Tuple[int, int] = RUNNING) -> FakeDomain:
        dom = FakeDomain(vm_xml(name, self.shared, high_availability, priority), state)
        self.conns[host].domains.append(dom)
        return dom

    def fail(self, host: str) -> FakeConnection:
        """The host is dead: neither libvirt nor SSH answers."""
        self.ssh_up.discard(host)
        return self.hosts.pop(self.uri(host))

    def back(self, host: str, conn: FakeConnection) -> None:
        self.ssh_up.add(host)
        self.hosts[self.uri(host)] = conn

    def running(self, name: str) -> t.List[str]:
        """The reachable hosts libvirt shows running the VM ``name`` on."""
        reachable = [(host, conn) for host, conn in self.conns.items() if self.uri(host) in self.hosts]
        return sorted(host for host, conn in reachable for dom in conn.domains if dom.name() == name and dom.isActive())

    def fence_commands(self) -> t.List[t.List[str]]:
        return [argv for argv in self.commands if argv[:len(FENCE)] == FENCE]

    # -- a run
    def request(self, **changes: t.Any) -> rq.HaRecoverRequest:
        fence = changes.pop("fence", {name: FENCE + [name] for name in NAMES})
        hosts = [dict({"name": name, "uri": self.uri(name)}, **({"fence_command": fence[name]} if fence.get(name) else {})) for name in NAMES]
        params = {"hosts": hosts, "shared_storage": str(self.shared), "checks": 3, "check_interval": 2.0, "connect_timeout": 1.0, "fence_timeout": 10}
        params.update(changes)
        return rq.ha_recover_request(params)

    def recovery(self, check_mode: bool = False, **changes: t.Any) -> ha_recovery.HaRecovery:
        return ha_recovery.HaRecovery(
            self.request(**changes), check_mode, sleep=self.clock.sleep, which=lambda program: "/usr/sbin/" + program if program in self.programs else None
        )

    def run(self, check_mode: bool = False, **changes: t.Any) -> t.Dict[str, t.Any]:
        return self.recovery(check_mode, **changes).run()

    def failing_run(self, **changes: t.Any) -> ha.HaError:
        with pytest.raises(ha.HaError) as caught:
            self.run(**changes)
        return caught.value


@pytest.fixture
def lab(tmp_path: Path, sample: t.Callable[[str], str], monkeypatch: pytest.MonkeyPatch) -> Lab:
    shared = tmp_path / "shared"
    shared.mkdir()
    cluster = Lab(sample("capabilities-qemu.xml"), shared, monkeypatch)
    cluster.add_vm("hv1", "web1", priority="medium")
    cluster.add_vm("hv1", "db1", priority="high")
    cluster.add_vm("hv1", "misc", high_availability=False)
    cluster.add_vm("hv1", "batch", priority="low")
    cluster.add_vm("hv2", "app1")
    return cluster


def store_files(shared: Path) -> t.Dict[str, str]:
    root = shared / ha.STORE_DIR
    return {str(path.relative_to(root)): path.read_text() for path in sorted(root.rglob("*")) if path.is_file()} if root.exists() else {}


def locking_record(lab: Lab, host: str) -> None:
    record = {"host": host, "lock_manager": "lockd", "lockspace": str(lab.shared / ha.LOCKSPACE_DIR), "configured_at": 1}
    sf.write_json(str(lab.shared / ha.STORE_DIR / "locking"), "%s.json" % host, record)


# -- (a) every host up


def test_with_every_host_up_the_store_follows_the_hosts_and_a_rerun_changes_nothing(lab: Lab) -> None:
    result = lab.run()
    assert result["changed"] is True
    assert result["failed_hosts"] == [] and result["restarted"] == [] and result["unreachable"] == [] and result["not_restarted"] == []
    assert result["msg"] == "no host has failed; restarted 0 VM(s)"
    store = ha.HaStore(str(lab.shared))
    assert store.uuids() == sorted(vm_uuid(name) for name in ("web1", "db1", "batch", "app1"))
    assert store.definition(vm_uuid("web1")) == lab.conns["hv1"].domains[0].xml
    assert store.definition(vm_uuid("misc")) is None
    assert store.location(vm_uuid("db1")) == "hv1" and store.location(vm_uuid("app1")) == "hv2"
    listing = store.listing("hv1")
    assert listing is not None and [vm["name"] for vm in listing["vms"]] == ["batch", "db1", "misc", "web1"]
    assert {"name": "misc", "uuid": vm_uuid("misc"), "active": True, "high_availability": False} in listing["vms"]
    assert (store.listing("hv3") or {})["vms"] == []
    # One check each: every host answered.
    assert sorted(lab.opened) == sorted(lab.uri(name) for name in NAMES) and lab.clock.slept == []
    before = store_files(lab.shared)
    again = lab.run()
    assert again["changed"] is False and again["store"] == []
    assert store_files(lab.shared) == before
    assert lab.commands == []


def test_a_vm_no_longer_highly_available_leaves_the_store(lab: Lab) -> None:
    lab.run()
    dom = next(dom for dom in lab.conns["hv1"].domains if dom.name() == "batch")
    dom.xml = dom.xml.replace("<virtops:high_availability>true", "<virtops:high_availability>false")
    result = lab.run()
    assert result["changed"] is True and "forgot batch (not highly available)" in result["store"]
    assert vm_uuid("batch") not in ha.HaStore(str(lab.shared)).uuids()


def test_a_vm_with_a_disk_off_the_shared_storage_is_reported_not_protected(lab: Lab) -> None:
    dom = lab.add_vm("hv2", "local1")
    dom.xml = dom.xml.replace(str(lab.shared), "/var/lib/libvirt/images")
    result = lab.run()
    assert result["not_protected"] == [
        {"vm": "local1", "uuid": vm_uuid("local1"), "host": "hv2", "reason": "disk(s) not on the shared storage: vda (/var/lib/libvirt/images/local1.qcow2)"}
    ]
    assert ha.HaStore(str(lab.shared)).definition(vm_uuid("local1")) is None


# -- (b) a failed host, fenced


def test_a_failed_host_is_fenced_and_its_highly_available_vms_restart_elsewhere_in_priority_order(lab: Lab) -> None:
    lab.run()
    lab.fail("hv1")
    result = lab.run()
    assert result["changed"] is True
    [failed] = result["failed_hosts"]
    assert failed["name"] == "hv1" and failed["checks"] == 3
    assert failed["fence"]["outcome"] == ha.CONFIRMED_OFF
    assert lab.fence_commands() == [FENCE + ["hv1", "-o", "off"], FENCE + ["hv1", "-o", "status"]]
    # Three checks, check_interval apart.
    assert lab.clock.slept == [2.0, 2.0]
    assert [entry["vm"] for entry in result["restarted"]] == ["db1", "web1", "batch"]
    assert [name for _host, name in lab.defined] == ["db1", "web1", "batch"]
    for entry in result["restarted"]:
        assert entry["from"] == "hv1" and entry["to"] in ("hv2", "hv3")
        assert lab.running(entry["vm"]) == [entry["to"]] and entry["running_on"] == [entry["to"]]
    assert [entry["priority"] for entry in result["restarted"]] == ["high", "medium", "low"]
    assert result["left_down"] == [{"vm": "misc", "uuid": vm_uuid("misc"), "from": "hv1", "was_running": True}]
    assert result["not_restarted"] == []
    messages = [(event["event"], event["vm"], event["host"], event["message"]) for event in result["events"]]
    where = {entry["vm"]: entry["to"] for entry in result["restarted"]}
    assert sorted(messages[:3]) == [
        ("failed", "batch", "hv1", "Highly Available batch failed. It will be restarted automatically."),
        ("failed", "db1", "hv1", "Highly Available db1 failed. It will be restarted automatically."),
        ("failed", "web1", "hv1", "Highly Available web1 failed. It will be restarted automatically."),
    ]
    assert messages[3:] == [("restarted", name, where[name], "%s was restarted on Host %s." % (name, where[name])) for name in ("db1", "web1", "batch")]
    store = ha.HaStore(str(lab.shared))
    stale = store.stale("hv1")
    assert sorted(stale) == sorted(vm_uuid(name) for name in ("db1", "web1", "batch"))
    assert stale[vm_uuid("db1")]["restarted_on"] == where["db1"] and stale[vm_uuid("db1")]["vm"] == "db1"
    assert store.location(vm_uuid("web1")) == where["web1"]
    assert "1 failed host(s) (hv1: fence confirmed_off); restarted 3 VM(s); left down (not highly available): misc" in result["msg"]

    # A rerun while hv1 is still dead: nothing restarts, nothing is fenced again.
    commands, defined = list(lab.commands), list(lab.defined)
    again = lab.run()
    assert again["restarted"] == [] and again["not_restarted"] == [] and again["events"] == []
    assert again["failed_hosts"][0]["fence"]["outcome"] == ha.NOT_NEEDED
    assert lab.commands == commands and lab.defined == defined
    assert lab.run()["changed"] is False


def test_a_host_that_answers_a_later_check_has_not_failed(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    lab.run()
    conn = lab.fail("hv1")
    sleep = lab.clock.sleep

    def comes_back(seconds: float) -> None:
        sleep(seconds)
        lab.back("hv1", conn)

    monkeypatch.setattr(lab.clock, "sleep", comes_back)
    result = lab.run()
    assert result["failed_hosts"] == [] and lab.commands == [] and lab.defined == []
    assert lab.clock.slept == [2.0]


def test_a_vm_of_a_failed_host_missing_from_the_store_is_reported(lab: Lab) -> None:
    lab.run()
    ha.HaStore(str(lab.shared)).forget(vm_uuid("web1"))
    lab.fail("hv1")
    error = lab.failing_run()
    [entry] = error.details["not_restarted"]
    assert (entry["vm"], entry["rule"]) == ("web1", ha.RULE_STORE)
    assert [entry["vm"] for entry in error.details["restarted"]] == ["db1", "batch"]


def test_a_vm_no_host_can_take_is_not_restarted_by_placement(lab: Lab) -> None:
    lab.run()
    lab.fail("hv1")
    for name in ("hv2", "hv3"):
        lab.conns[name].memory_stats = dict(lab.conns[name].memory_stats or {}, free=0, buffers=0, cached=0)
        lab.conns[name].free_memory = 0
    error = lab.failing_run()
    assert {entry["rule"] for entry in error.details["not_restarted"]} == {ha.RULE_PLACEMENT}
    assert "no host can take VM 'db1'" in error.details["not_restarted"][0]["reason"]
    assert lab.defined == []


# -- (c) a fence that does not confirm


def test_a_fence_that_never_reads_off_restarts_nothing(lab: Lab) -> None:
    lab.run()
    lab.fail("hv1")
    lab.fence_codes["status"] = ha.STATUS_ON
    error = lab.failing_run()
    assert lab.defined == []
    assert [(entry["vm"], entry["rule"]) for entry in error.details["not_restarted"]] == [("batch", "fence"), ("db1", "fence"), ("web1", "fence")]
    assert "the fence of hv1 was not confirmed" in error.details["not_restarted"][0]["reason"]
    assert error.details["failed_hosts"][0]["fence"]["outcome"] == ha.FENCE_FAILED
    assert "status reads on (exit 0)" in error.details["failed_hosts"][0]["fence"]["detail"]
    assert error.details["restarted"] == [] and error.details["changed"] is False
    # The status was read until fence_timeout ran out.
    statuses = [argv for argv in lab.fence_commands() if argv[-1] == "status"]
    assert len(statuses) > 1
    assert "could not restart" in error.msg and "fence" in error.msg
    assert ha.HaStore(str(lab.shared)).stale("hv1") == {}


def test_a_fence_whose_status_is_unknown_restarts_nothing(lab: Lab) -> None:
    lab.run()
    lab.fail("hv1")
    lab.fence_codes["status"] = 1
    error = lab.failing_run()
    assert lab.defined == [] and "status reads unknown (exit 1)" in error.details["failed_hosts"][0]["fence"]["detail"]


# -- (d) without a fence command


def test_without_a_fence_command_and_without_fence_refuse_nothing_restarts(lab: Lab) -> None:
    lab.run()
    lab.fail("hv1")
    error = lab.failing_run(fence={})
    assert lab.defined == [] and lab.commands == []
    assert {entry["rule"] for entry in error.details["not_restarted"]} == {ha.RULE_FENCE}
    assert "hv1 has no fence command and without_fence is refuse" in error.details["not_restarted"][0]["reason"]
    assert error.details["failed_hosts"][0]["fence"]["outcome"] == ha.NOT_CONFIGURED


def test_lease_mode_without_a_locking_record_restarts_nothing(lab: Lab) -> None:
    lab.run()
    lab.fail("hv1")
    locking_record(lab, "hv2")
    error = lab.failing_run(fence={}, without_fence="lease")
    assert lab.defined == []
    assert "hv1 has no fence command and no lockd record" in error.details["not_restarted"][0]["reason"]


def test_lease_mode_restarts_only_onto_hosts_with_a_locking_record(lab: Lab) -> None:
    lab.run()
    lab.fail("hv1")
    locking_record(lab, "hv1")
    locking_record(lab, "hv3")
    result = lab.run(fence={}, without_fence="lease")
    assert {entry["to"] for entry in result["restarted"]} == {"hv3"}
    assert lab.commands == []


def test_a_start_refused_for_a_held_lease_is_undone(lab: Lab) -> None:
    lab.run()
    lab.fail("hv1")
    for name in NAMES:
        locking_record(lab, name)
    busy = libvirt_error(87, "resource busy: Lockspace resource '/srv/shared/db1.qcow2' is locked", libvirt.VIR_FROM_LOCKING)
    # A UEFI VM: libvirt refuses a plain undefine once the start has made its NVRAM file.
    nvram = libvirt_error(libvirt.VIR_ERR_OPERATION_INVALID, "Requested operation is not valid: cannot undefine domain with nvram")
    for name in ("hv2", "hv3"):
        lab.conns[name].new_domain_errors.update(create=busy, undefine=nvram)
    error = lab.failing_run(fence={}, without_fence="lease")
    assert "failed too" not in error.details["not_restarted"][0]["reason"]
    assert lab.made and all(("undefineFlags", ha_recovery.UNDEFINE_STALE_FLAGS) in dom.calls for dom in lab.made)
    assert {entry["rule"] for entry in error.details["not_restarted"]} == {ha.RULE_LEASE}
    assert "its disks are locked" in error.details["not_restarted"][0]["reason"]
    assert error.details["restarted"] == []
    # Each definition made on a destination is gone again, and no stale marker is left.
    assert lab.defined
    for name in ("hv2", "hv3"):
        assert [dom.name() for dom in lab.conns[name].domains] == (["app1"] if name == "hv2" else [])
    assert ha.HaStore(str(lab.shared)).stale("hv1") == {}


def test_a_start_refused_for_another_reason_is_a_start_failure(lab: Lab) -> None:
    lab.run()
    lab.fail("hv1")
    failure = libvirt_error(
        libvirt.VIR_ERR_INTERNAL_ERROR,
        "internal error: process exited while connecting to monitor: qemu-system-x86_64: -blockdev {...}: Could not open '/srv/x.qcow2': Permission denied",
    )
    for name in ("hv2", "hv3"):
        lab.conns[name].new_domain_errors["create"] = failure
    error = lab.failing_run()
    assert {entry["rule"] for entry in error.details["not_restarted"]} == {ha.RULE_START}
    assert "Permission denied" in error.details["not_restarted"][0]["reason"]


# -- (e) SSH answers, libvirt does not


def test_a_host_whose_ssh_answers_has_not_failed(lab: Lab) -> None:
    lab.run()
    lab.fail("hv3")
    lab.ssh_up.add("hv3")
    result = lab.run()
    assert result["failed_hosts"] == [] and lab.commands == [] and lab.defined == []
    [entry] = result["unreachable"]
    # Checked again for its libvirt, every check.
    assert entry["host"] == "hv3" and entry["ssh"] is True and entry["libvirt"] is False and entry["checks"] == 3
    assert any("libvirt" in error for error in entry["errors"])


# -- (f) a host back after a fence


def test_a_host_back_after_a_fence_loses_its_stale_definitions(lab: Lab) -> None:
    lab.run()
    conn = lab.fail("hv1")
    first = lab.run()
    where = {entry["vm"]: entry["to"] for entry in first["restarted"]}
    # hv1 rebooted: its VMs are defined there, shut off; db1 was started there again meanwhile.
    for dom in conn.domains:
        dom._state = RUNNING if dom.name() == "db1" else SHUT_OFF  # pylint: disable=protected-access
    web1 = next(dom for dom in conn.domains if dom.name() == "web1")
    disk = lab.shared / "web1.qcow2"
    disk.write_text("disk")
    lab.back("hv1", conn)
    result = lab.run()
    cleaned = {entry["vm"]: entry for entry in result["cleaned"]}
    assert sorted(cleaned) == ["batch", "web1"]
    assert cleaned["web1"]["host"] == "hv1" and cleaned["web1"]["runs_on"] == [where["web1"]]
    assert ("undefineFlags", ha_recovery.UNDEFINE_STALE_FLAGS) in web1.calls
    assert ha_recovery.UNDEFINE_STALE_FLAGS & libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM
    assert not ha_recovery.UNDEFINE_STALE_FLAGS & (libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_TPM)
    assert "web1" not in [dom.name() for dom in conn.domains]
    assert disk.read_text() == "disk"
    [kept] = result["kept_stale"]
    assert (kept["host"], kept["vm"]) == ("hv1", "db1") and "it runs on hv1" in kept["reason"]
    assert sorted(ha.HaStore(str(lab.shared)).stale("hv1")) == [vm_uuid("db1")]
    assert lab.running("db1") == sorted(["hv1", where["db1"]])
    assert result["changed"] is True and "removed 2 stale definition(s)" in result["msg"]


def test_a_stale_definition_already_gone_only_clears_the_marker(lab: Lab) -> None:
    lab.run()
    conn = lab.fail("hv1")
    lab.run()
    conn.domains = [dom for dom in conn.domains if dom.name() == "misc"]
    lab.back("hv1", conn)
    result = lab.run()
    assert result["cleaned"] == [] and result["kept_stale"] == []
    assert ha.HaStore(str(lab.shared)).stale("hv1") == {}


# -- (g) check mode


def test_check_mode_fences_starts_and_writes_nothing_but_shows_the_plan(lab: Lab) -> None:
    lab.run()
    lab.fail("hv1")
    before = store_files(lab.shared)
    result = lab.run(check_mode=True)
    assert lab.commands == [] and lab.defined == []
    assert store_files(lab.shared) == before
    assert result["failed_hosts"][0]["fence"]["outcome"] == ha.WOULD_FENCE
    assert [(entry["vm"], entry["from"]) for entry in result["plan"]] == [("db1", "hv1"), ("web1", "hv1"), ("batch", "hv1")]
    assert {entry["to"] for entry in result["plan"]} <= {"hv2", "hv3"}
    assert result["restarted"] == [] and result["events"] == [] and result["check_mode"] is True
    assert result["changed"] is True
    assert "would restart 3 VM(s)" in result["msg"]


def test_check_mode_on_a_host_back_after_a_fence_removes_nothing(lab: Lab) -> None:
    lab.run()
    conn = lab.fail("hv1")
    lab.run()
    for dom in conn.domains:
        dom._state = SHUT_OFF  # pylint: disable=protected-access
    lab.back("hv1", conn)
    before = store_files(lab.shared)
    result = lab.run(check_mode=True)
    assert sorted(entry["vm"] for entry in result["cleaned"]) == ["batch", "db1", "web1"]
    assert not [call for dom in conn.domains for call in dom.calls if call[0].startswith("undefine")]
    assert store_files(lab.shared) == before


# -- (h) refused before anything


def test_a_missing_fence_program_is_refused_before_any_connection(lab: Lab) -> None:
    lab.programs = set()
    expected = r"fence command not found for host\(s\) hv1 \(fence_virtlab\), hv2 \(fence_virtlab\), hv3 \(fence_virtlab\); nothing was done"
    with pytest.raises(ha.HaError, match=expected):
        lab.run()
    assert lab.opened == [] and lab.ssh_checks == [] and lab.commands == []
    assert not (lab.shared / ha.STORE_DIR).exists()


def test_an_unsafe_store_is_refused_before_any_connection(lab: Lab) -> None:
    elsewhere = lab.shared / "elsewhere"
    elsewhere.mkdir()
    (lab.shared / ha.STORE_DIR).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(sf.StateFileError, match="not a directory"):
        lab.run()
    assert lab.opened == []


def test_the_fence_command_runs_without_a_shell_and_reports_a_missing_program(tmp_path: Path) -> None:
    def run_command(argv: t.List[str]) -> t.Tuple[int, str, str]:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        return done.returncode, done.stdout, done.stderr

    recovery = ha_recovery.HaRecovery(
        rq.ha_recover_request({"hosts": [{"name": "hv1", "uri": "qemu+tcp://hv1/system"}], "shared_storage": str(tmp_path)}), False,
        run_command=run_command,
    )
    command = ha_recovery.HaRecovery._command.__get__(recovery)  # pylint: disable=protected-access
    assert command(["sh", "-c", "echo off; exit 2"], 5) == (2, "off")
    code, output = command([str(tmp_path / "absent")], 5)
    assert code is None and "No such file" in output
    assert command(["sleep", "5"], 0.2) == (None, "timed out after 0 s")
    assert ha_recovery.HaRecovery(recovery.req, False)._command(["true"], 5) == (None, "no command runner")  # pylint: disable=protected-access
    assert json.dumps(command(["true"], 5)) == "[0, \"\"]"


def test_a_vm_listed_by_two_failed_hosts_restarts_once(lab: Lab) -> None:
    lab.run()
    # hv1's listing still shows app1, which has moved to hv2 since (its location says so); then both fail.
    store = ha.HaStore(str(lab.shared))
    listing = store.listing("hv1") or {}
    app1 = {"name": "app1", "uuid": vm_uuid("app1"), "active": True, "high_availability": True}
    store.write_listing("hv1", listing["vms"] + [app1], 0)
    lab.fail("hv1")
    lab.fail("hv2")
    result = lab.run()
    assert sorted(name for _host, name in lab.defined) == ["app1", "batch", "db1", "web1"]
    assert lab.running("app1") == ["hv3"]
    assert [entry["from"] for entry in result["restarted"] if entry["vm"] == "app1"] == ["hv2"]
    assert sorted(store.stale("hv2")) == [vm_uuid("app1")]


def test_check_mode_reports_the_store_writes_a_real_run_would_make(lab: Lab) -> None:
    result = lab.run(check_mode=True)
    assert result["changed"] is True and not (lab.shared / ha.STORE_DIR).exists()
    real = lab.run()
    assert sorted(result["store"]) == sorted(real["store"])
    assert lab.run(check_mode=True)["changed"] is False
    dom = next(dom for dom in lab.conns["hv1"].domains if dom.name() == "batch")
    dom.xml = dom.xml.replace("<virtops:high_availability>true", "<virtops:high_availability>false")
    before = store_files(lab.shared)
    assert "forgot batch (not highly available)" in lab.run(check_mode=True)["store"]
    assert store_files(lab.shared) == before


@pytest.mark.parametrize(
    "message, rule",
    [
        ("internal error: qemu unexpectedly closed the monitor: Failed to get \"write\" lock", ha.RULE_LEASE),
        ("Lease /srv/shared/web1 is held by another host", ha.RULE_LEASE),
        ("internal error: process exited: -blockdev {\"driver\":\"file\"}: Could not open: Permission denied", ha.RULE_START),
    ],
)
def test_a_start_failure_is_a_lease_by_its_words(lab: Lab, message: str, rule: str) -> None:
    lab.run()
    lab.fail("hv1")
    for name in ("hv2", "hv3"):
        lab.conns[name].new_domain_errors["create"] = libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, message)
    error = lab.failing_run()
    assert {entry["rule"] for entry in error.details["not_restarted"]} == {rule}


def test_a_vm_shut_off_when_its_host_was_last_read_stays_down(lab: Lab) -> None:
    web1 = next(dom for dom in lab.conns["hv1"].domains if dom.name() == "web1")
    web1._state = SHUT_OFF  # pylint: disable=protected-access
    lab.run()
    lab.fail("hv1")
    result = lab.run()
    assert "web1" not in [entry["vm"] for entry in result["restarted"]]
    assert {"vm": "web1", "uuid": vm_uuid("web1"), "from": "hv1", "was_running": False} in result["left_down"]
    assert "web1" not in [event["vm"] for event in result["events"]]


def test_no_restart_while_a_host_that_has_not_failed_cannot_be_read_unless_leases_cover_it(lab: Lab) -> None:
    lab.run()
    lab.fail("hv1")
    lab.fail("hv3")
    lab.ssh_up.add("hv3")  # hv3's libvirt is down, its SSH answers: not failed, and its VMs cannot be seen
    error = lab.failing_run()
    assert error.details["restarted"] == [] and lab.defined == []
    assert {entry["rule"] for entry in error.details["not_restarted"]} == {ha.RULE_UNVERIFIED}
    assert "hv3" in error.details["not_restarted"][0]["reason"]
    for host in NAMES:
        locking_record(lab, host)
    result = lab.run()
    assert [entry["vm"] for entry in result["restarted"]] == ["db1", "web1", "batch"]
    assert {entry["to"] for entry in result["restarted"]} == {"hv2"}
