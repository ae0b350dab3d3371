"""High availability below the hypervisor: the rules of ``ha.py``, its store on the shared storage, the
``ha_recover`` request, the ``high_availability`` setting and migration_policy's refusal of it (no hypervisor)."""

from __future__ import annotations

import json
import os
import stat
import typing as t
from pathlib import Path

import libvirt
import pytest

from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io import settings_store
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import ha, settings
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import requests as rq
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import statefiles as sf
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import MigrationError
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.statefiles import StateFileError
from libvirt_fakes import FakeConnection, FakeDomain

UUID1 = "0b4d3a52-1c2e-4f00-9a11-000000000001"
UUID2 = "0b4d3a52-1c2e-4f00-9a11-000000000002"
SHARED = "/srv/shared"


def disk(source: str, kind: str = "file", device: str = "disk", target: str = "vda") -> str:
    return "<disk type='%s' device='%s'><driver name='qemu' type='raw' cache='none'/>%s<target dev='%s'/></disk>" % (kind, device, source, target)


def domain_xml(disks: t.Sequence[str] = (), name: str = "web1", uuid: str = UUID1, metadata: str = "") -> str:
    return (
        "<domain type='kvm'><name>%s</name><uuid>%s</uuid>%s<memory unit='MiB'>1024</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os><devices>%s</devices></domain>" % (name, uuid, metadata, "".join(disks))
    )


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# -- which disks are on the shared storage


@pytest.mark.parametrize(
    "disks, outside",
    [
        ([disk("<source file='/srv/shared/web1.qcow2'/>")], []),
        ([disk("<source file='/srv/shared/vms/deep/web1.qcow2'/>")], []),
        ([disk("<source file='/var/lib/libvirt/images/web1.qcow2'/>")], ["vda (/var/lib/libvirt/images/web1.qcow2)"]),
        # A path that only starts with the shared path's letters, and one that climbs out of it.
        ([disk("<source file='/srv/shared2/web1.qcow2'/>")], ["vda (/srv/shared2/web1.qcow2)"]),
        ([disk("<source file='/srv/shared/../etc/x'/>")], ["vda (/srv/shared/../etc/x)"]),
        ([disk("<source file='/srv/shared/a/../../../etc/x'/>")], ["vda (/srv/shared/a/../../../etc/x)"]),
        ([disk("<source dev='/dev/sdb'/>", kind="block")], ["vda (/dev/sdb)"]),
        ([disk("<source dev='/srv/shared/lun0'/>", kind="block")], []),
        ([disk("<source protocol='rbd' name='pool/web1'><host name='ceph1' port='6789'/></source>", kind="network")], []),
        ([disk("", device="cdrom", target="sda")], []),
        ([disk("<source pool='default' volume='web1.qcow2'/>", kind="volume")], ["vda (a volume disk, which cannot be checked)"]),
        (
            [
                disk("<source file='/srv/shared/ok.qcow2'/>"),
                disk("<source file='/data/b.qcow2'/>", target="vdb"),
                disk("<source dev='/dev/sdc'/>", "block", target="vdc"),
            ],
            ["vdb (/data/b.qcow2)", "vdc (/dev/sdc)"],
        ),
    ],
)
def test_disks_off_the_shared_storage_are_named(disks: t.List[str], outside: t.List[str]) -> None:
    assert ha.disks_off_shared_storage(domain_xml(disks), SHARED) == outside


def test_on_shared_storage_is_the_path_itself_or_below_it() -> None:
    assert ha.on_shared_storage("/srv/shared", SHARED)
    assert ha.on_shared_storage("/srv/shared/x", SHARED)
    assert ha.on_shared_storage("/srv/shared//x/./y", SHARED)
    assert not ha.on_shared_storage("/srv/sharedx", SHARED)
    assert not ha.on_shared_storage("/srv/shared/../x", SHARED)


def test_refuse_unless_shared_names_each_disk_off_the_storage() -> None:
    xml = domain_xml([disk("<source file='/data/a.qcow2'/>"), disk("<source file='/srv/shared/b.qcow2'/>", target="vdb")])
    expected = r"VM 'web1' cannot be made highly available: its disk\(s\) vda \(/data/a.qcow2\) are not on the shared storage /srv/shared"
    with pytest.raises(ha.HaError, match=expected):
        ha.refuse_unless_shared("web1", xml, SHARED)
    ha.refuse_unless_shared("web1", domain_xml([disk("<source file='/srv/shared/b.qcow2'/>")]), SHARED)


@pytest.mark.parametrize("shared", [None, ""])
def test_refuse_unless_shared_without_shared_storage_says_so(shared: t.Optional[str]) -> None:
    with pytest.raises(ha.HaError, match="VM 'web1' cannot be made highly available: no shared storage is configured .*virtops_shared_storage") as caught:
        ha.refuse_unless_shared("web1", domain_xml(), shared)
    assert caught.value.details == {"vm": "web1"}


def test_check_shared_storage(tmp_path: Path) -> None:
    assert ha.check_shared_storage(str(tmp_path) + "/./") == str(tmp_path)
    with pytest.raises(ha.HaError, match="no shared storage is configured"):
        ha.check_shared_storage(None)
    with pytest.raises(ha.HaError, match="must be an absolute path"):
        ha.check_shared_storage("relative/dir")
    with pytest.raises(ha.HaError, match="is not a directory on this host"):
        ha.check_shared_storage(str(tmp_path / "absent"))


# -- small rules


def test_reachability_fails_only_when_nothing_answered_in_every_check() -> None:
    assert ha.Reachability(checks=3).failed(3)
    assert not ha.Reachability(checks=2).failed(3)
    assert not ha.Reachability(checks=3, ssh=True).failed(3)
    assert not ha.Reachability(checks=3, libvirt=True).failed(3)
    assert ha.Reachability(checks=1).failed(1)


@pytest.mark.parametrize("code, meaning", [(2, True), (0, False), (1, None), (None, None), (3, None)])
def test_fence_status_follows_the_fence_agents_codes(code: t.Optional[int], meaning: t.Optional[bool]) -> None:
    assert ha.fence_status(code) is meaning


def test_fence_argv_appends_the_action() -> None:
    assert ha.fence_argv(("fence_ipmilan", "-a", "10.0.0.1"), "off") == ["fence_ipmilan", "-a", "10.0.0.1", "-o", "off"]


def test_restart_order_is_by_priority_then_name() -> None:
    vms = [{"vm": "b", "priority": "low"}, {"vm": "z", "priority": "high"}, {"vm": "c"}, {"vm": "a", "priority": "medium"}, {"vm": "y", "priority": "high"}]
    assert [vm["vm"] for vm in ha.restart_order(vms)] == ["y", "z", "a", "c", "b"]


def test_events_carry_the_exact_texts() -> None:
    assert ha.event("failed", "web1", "hv1", "T")["message"] == "Highly Available web1 failed. It will be restarted automatically."
    assert ha.event("restarted", "web1", "hv2", "T") == {
        "time": "T", "event": "restarted", "vm": "web1", "host": "hv2", "message": "web1 was restarted on Host hv2."
    }


@pytest.mark.parametrize("name", ["../x", "..", ".", "a/b", "", "-x", "a b", "x" * 300, 7])
def test_host_names_that_cannot_name_a_file_are_refused(name: t.Any) -> None:
    with pytest.raises(ha.HaError, match="cannot be used in the high-availability store"):
        ha.check_host_name(name)


@pytest.mark.parametrize("uuid", ["../../etc", "", "not-a-uuid", None, UUID1 + "/.."])
def test_values_that_are_not_uuids_are_refused(uuid: t.Any) -> None:
    with pytest.raises(ha.HaError, match="is not a VM UUID"):
        ha.check_uuid(uuid)


def test_uuids_are_kept_in_lower_case() -> None:
    assert ha.check_uuid(UUID1.upper()) == UUID1


def test_missing_fence_programs_are_named_per_host() -> None:
    hosts = rq.parse_ha_hosts([
        {"name": "hv1", "uri": "qemu+tcp://hv1/system", "fence_command": ["/nonexistent/fence_x", "-a", "b"]},
        {"name": "hv2", "uri": "qemu+tcp://hv2/system", "fence_command": ["true"]},
        {"name": "hv3", "uri": "qemu+tcp://hv3/system"},
    ])
    assert ha.missing_fence_programs(hosts, lambda program: None if program.startswith("/nonexistent") else "/usr/bin/" + program) == [
        "hv1 (/nonexistent/fence_x)"
    ]


# -- statefiles' text files


def test_text_round_trip_is_atomic_and_private(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    assert sf.read_text(str(directory), "x.xml") is None
    sf.write_text(str(directory), "x.xml", "<domain/>")
    assert sf.read_text(str(directory), "x.xml") == "<domain/>"
    assert mode_of(directory) == 0o700 and mode_of(directory / "x.xml") == 0o600
    sf.write_text(str(directory), "x.xml", "<domain>2</domain>")
    assert sf.read_text(str(directory), "x.xml") == "<domain>2</domain>"
    assert [path.name for path in directory.iterdir()] == ["x.xml"]


def test_a_failed_text_write_leaves_the_old_file_and_no_temporary_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sf.write_text(str(tmp_path), "x.xml", "old")

    def broken(_src: str, _dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sf.os, "replace", broken)
    with pytest.raises(StateFileError, match="Cannot write .*x.xml: .*No space left"):
        sf.write_text(str(tmp_path), "x.xml", "new")
    monkeypatch.undo()
    assert sf.read_text(str(tmp_path), "x.xml") == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["x.xml"]


def test_text_is_never_read_or_written_through_a_symbolic_link(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("secret")
    directory = tmp_path / "d"
    directory.mkdir(mode=0o700)
    (directory / "x.xml").symlink_to(target)
    with pytest.raises(StateFileError, match="symbolic link"):
        sf.read_text(str(directory), "x.xml")
    # A write replaces the link itself, never the file it points to.
    sf.write_text(str(directory), "x.xml", "mine")
    assert target.read_text() == "secret"
    assert not (directory / "x.xml").is_symlink()


# -- the store


@pytest.fixture
def store(tmp_path: Path) -> ha.HaStore:
    return ha.HaStore(str(tmp_path))


def test_a_definition_is_written_once_private_and_read_back(store: ha.HaStore, tmp_path: Path) -> None:
    xml = domain_xml()
    assert store.definition(UUID1) is None and store.uuids() == []
    assert store.write_definition(UUID1.upper(), xml) is True
    assert store.write_definition(UUID1, xml) is False
    assert store.definition(UUID1) == xml
    root = tmp_path / ha.STORE_DIR
    assert mode_of(root) == 0o700 and mode_of(root / "vms") == 0o700
    assert mode_of(root / "vms" / ("%s.xml" % UUID1)) == 0o600
    assert store.uuids() == [UUID1]
    assert store.write_definition(UUID1, xml.replace("1024", "2048")) is True
    assert sorted(path.name for path in (root / "vms").iterdir()) == ["%s.xml" % UUID1]


def test_the_location_is_one_line_and_only_rewritten_when_it_changes(store: ha.HaStore, tmp_path: Path) -> None:
    assert store.location(UUID1) is None
    assert store.write_location(UUID1, "hv1") is True
    assert store.write_location(UUID1, "hv1") is False
    assert store.location(UUID1) == "hv1"
    path = tmp_path / ha.STORE_DIR / "vms" / ("%s.host" % UUID1)
    assert path.read_text() == "hv1\n" and mode_of(path) == 0o600
    assert store.write_location(UUID1, "hv2") is True and store.location(UUID1) == "hv2"
    # Only definitions count as stored VMs.
    assert store.uuids() == []


def test_forget_removes_the_definition_and_the_location(store: ha.HaStore) -> None:
    assert store.forget(UUID1) is False
    store.write_definition(UUID1, domain_xml())
    store.write_location(UUID1, "hv1")
    store.write_definition(UUID2, domain_xml(name="web2", uuid=UUID2))
    assert store.forget(UUID1) is True
    assert store.definition(UUID1) is None and store.location(UUID1) is None
    assert store.uuids() == [UUID2]
    assert store.forget(UUID1) is False


def test_a_listing_is_not_rewritten_when_the_vms_are_the_same(store: ha.HaStore, tmp_path: Path) -> None:
    vms = [
        {"name": "web2", "uuid": UUID2, "active": False, "high_availability": False},
        {"name": "web1", "uuid": UUID1, "active": True, "high_availability": True},
    ]
    assert store.listing("hv1") is None
    assert store.write_listing("hv1", vms, 1000.5) is True
    path = tmp_path / ha.STORE_DIR / "hosts" / "hv1.json"
    assert mode_of(path) == 0o600
    first = path.stat()
    assert store.listing("hv1") == {"host": "hv1", "seen_at": 1000, "vms": sorted(vms, key=lambda vm: vm["name"])}
    # The same VMs in another order, read later: nothing is written.
    assert store.write_listing("hv1", list(reversed(vms)), 2000.0) is False
    assert path.stat().st_ino == first.st_ino
    assert store.listing("hv1")["seen_at"] == 1000
    vms[0] = dict(vms[0], active=True)
    assert store.write_listing("hv1", vms, 3000.0) is True
    assert store.listing("hv1")["seen_at"] == 3000


def test_stale_markers_are_written_listed_and_cleared(store: ha.HaStore, tmp_path: Path) -> None:
    assert store.stale("hv1") == {}
    assert store.clear_stale("hv1", UUID1) is False
    record = {"vm": "web1", "uuid": UUID1, "restarted_on": "hv2", "at": "2026-12-07T10:00:00Z"}
    store.mark_stale("hv1", UUID1.upper(), record)
    path = tmp_path / ha.STORE_DIR / "stale" / "hv1" / UUID1
    assert json.loads(path.read_text()) == record
    assert mode_of(path) == 0o600 and mode_of(path.parent) == 0o700 and mode_of(path.parent.parent) == 0o700
    assert store.stale("hv1") == {UUID1: record}
    assert store.stale("hv2") == {}
    # A file that is no UUID is ignored; an unreadable record is an empty one.
    (path.parent / "notes.txt").write_text("x")
    (path.parent / UUID2).write_text("{not json")
    assert store.stale("hv1") == {UUID1: record, UUID2: {}}
    assert store.clear_stale("hv1", UUID1) is True
    assert store.clear_stale("hv1", UUID1) is False
    assert list(store.stale("hv1")) == [UUID2]


def test_locking_records_need_a_lock_manager(store: ha.HaStore, tmp_path: Path) -> None:
    assert store.locking("hv1") is None
    directory = tmp_path / ha.STORE_DIR / "locking"
    record = {"host": "hv1", "lock_manager": "lockd", "lockspace": str(tmp_path / ha.LOCKSPACE_DIR), "configured_at": 1}
    sf.write_json(str(directory), "hv1.json", record)
    sf.write_json(str(directory), "hv2.json", {"host": "hv2"})
    sf.write_json(str(directory), "hv3.json", ["lockd"])
    assert store.locking("hv1") == record
    assert store.locking("hv2") is None and store.locking("hv3") is None


@pytest.mark.parametrize(
    "call",
    [
        lambda store: store.write_location(UUID1, "../x"),
        lambda store: store.write_listing("../x", [], 0),
        lambda store: store.listing("../x"),
        lambda store: store.mark_stale("../x", UUID1, {}),
        lambda store: store.stale("../../etc"),
        lambda store: store.locking("../x"),
        lambda store: store.definition("../../etc"),
        lambda store: store.write_definition("../../etc", "<domain/>"),
        lambda store: store.write_location("../../etc", "hv1"),
        lambda store: store.location("../../etc"),
        lambda store: store.forget("../../etc"),
        lambda store: store.mark_stale("hv1", "../../etc", {}),
    ],
)
def test_hostile_host_names_and_uuids_are_refused_before_any_file_is_touched(store: ha.HaStore, tmp_path: Path, call: t.Callable[[ha.HaStore], t.Any]) -> None:
    before = sorted(str(path) for path in tmp_path.rglob("*"))
    with pytest.raises(ha.HaError):
        call(store)
    assert not (tmp_path / "x").exists() and not (tmp_path / "etc").exists()
    assert sorted(str(path) for path in tmp_path.rglob("*") if ha.STORE_DIR not in str(path)) == [p for p in before if ha.STORE_DIR not in p]


def test_clearing_a_stale_marker_of_a_hostile_uuid_is_refused(store: ha.HaStore) -> None:
    store.mark_stale("hv1", UUID1, {})
    with pytest.raises(ha.HaError):
        store.clear_stale("hv1", "../../etc")


def test_a_symbolic_link_planted_at_a_store_file_is_refused(store: ha.HaStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside.xml"
    outside.write_text("<domain>planted</domain>")
    vms = tmp_path / ha.STORE_DIR / "vms"
    vms.mkdir(parents=True, mode=0o700)
    (vms / ("%s.xml" % UUID1)).symlink_to(outside)
    with pytest.raises(StateFileError, match="symbolic link"):
        store.definition(UUID1)
    with pytest.raises(StateFileError, match="symbolic link"):
        store.write_definition(UUID1, domain_xml())
    assert outside.read_text() == "<domain>planted</domain>"
    (vms / ("%s.host" % UUID1)).symlink_to(outside)
    with pytest.raises(StateFileError, match="symbolic link"):
        store.location(UUID1)


@pytest.mark.parametrize("directory", ["vms", "hosts", "stale", "locking", "stale/hv1"])
def test_a_symbolic_link_planted_at_a_store_directory_is_refused(store: ha.HaStore, tmp_path: Path, directory: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    link = tmp_path / ha.STORE_DIR / directory
    link.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    link.symlink_to(elsewhere, target_is_directory=True)
    calls = {
        "vms": lambda: store.write_definition(UUID1, domain_xml()),
        "hosts": lambda: store.write_listing("hv1", [], 0),
        "stale": lambda: store.mark_stale("hv1", UUID1, {}),
        "locking": lambda: store.locking("hv1"),
        "stale/hv1": lambda: store.mark_stale("hv1", UUID1, {}),
    }
    with pytest.raises(StateFileError, match="not a directory"):
        calls[directory]()
    if directory != "stale/hv1":
        with pytest.raises(StateFileError, match="not a directory"):
            store.check()
    assert list(elsewhere.iterdir()) == []


def test_forget_and_clear_stale_never_remove_through_a_planted_directory_link(store: ha.HaStore, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    victim = elsewhere / ("%s.xml" % UUID1)
    victim.write_text("keep")
    (elsewhere / UUID1).write_text("keep")
    root = tmp_path / ha.STORE_DIR
    (root / "stale").mkdir(parents=True, mode=0o700)
    (root / "vms").symlink_to(elsewhere, target_is_directory=True)
    (root / "stale" / "hv1").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(StateFileError, match="not a directory"):
        store.forget(UUID1)
    with pytest.raises(StateFileError, match="not a directory"):
        store.clear_stale("hv1", UUID1)
    assert victim.read_text() == "keep" and (elsewhere / UUID1).read_text() == "keep"


def test_a_store_directory_others_can_write_is_refused(store: ha.HaStore, tmp_path: Path) -> None:
    root = tmp_path / ha.STORE_DIR
    root.mkdir(mode=0o700)
    os.chmod(root, 0o777)
    with pytest.raises(StateFileError, match="writable by other users"):
        store.check()
    with pytest.raises(StateFileError, match="writable by other users"):
        store.write_definition(UUID1, domain_xml())


# -- the ha_recover request

HOST1 = {"name": "hv1", "uri": "qemu+tcp://hv1/system"}
HOST2 = {"name": "hv2", "uri": "qemu+tcp://hv2/system"}


def test_hosts_take_their_defaults() -> None:
    hosts = rq.parse_ha_hosts([HOST1, dict(HOST2, ssh_host="10.0.0.2", ssh_port="2222", fence_command=["fence_ipmilan", "-a", "bmc2"], maintenance=True)])
    assert hosts[0] == ha.HaHost(name="hv1", candidate=rq.Candidate(uri="qemu+tcp://hv1/system", name="hv1"), ssh_host="hv1", ssh_port=22, fence_command=())
    assert hosts[0].uri == "qemu+tcp://hv1/system"
    assert hosts[1].ssh_host == "10.0.0.2" and hosts[1].ssh_port == 2222
    assert hosts[1].fence_command == ("fence_ipmilan", "-a", "bmc2")
    assert hosts[1].candidate.maintenance is True


@pytest.mark.parametrize(
    "raw, message",
    [
        ([], "hosts must list every host"),
        (None, "hosts must list every host"),
        ("hv1", "hosts must list every host"),
        ([{"uri": "qemu+tcp://hv1/system"}], r"hosts\[0\] must be a dictionary with a 'name'"),
        (["qemu+tcp://hv1/system"], r"hosts\[0\] must be a dictionary with a 'name'"),
        ([{"name": "hv1"}], r"hosts\[0\] must be a dictionary with a 'name' and a 'uri'"),
        ([HOST1, {"name": "hv2", "uri": ""}], r"hosts\[1\] must be a dictionary with a 'name' and a 'uri'"),
        ([HOST1, dict(HOST1, uri="qemu+tcp://other/system")], "hv1 is listed twice"),
        ([dict(HOST1, name="../x")], "cannot be used in the high-availability store"),
        ([dict(HOST1, ssh_port=0)], r"hosts\[0\].ssh_port must be a TCP port"),
        ([dict(HOST1, ssh_port=65536)], r"hosts\[0\].ssh_port must be a TCP port"),
        ([dict(HOST1, ssh_port="ssh")], r"hosts\[0\].ssh_port must be a TCP port"),
        ([dict(HOST1, ssh_port=True)], r"hosts\[0\].ssh_port must be a TCP port"),
        ([dict(HOST1, ssh_port=22.5)], r"hosts\[0\].ssh_port must be a TCP port"),
        ([dict(HOST1, fence_command="fence_ipmilan -a bmc1")], r"hosts\[0\].fence_command must be a list of words"),
        ([dict(HOST1, fence_command=["fence_ipmilan", ""])], r"hosts\[0\].fence_command must be a list of words"),
        ([dict(HOST1, fence_command=["fence_ipmilan", 3])], r"hosts\[0\].fence_command must be a list of words"),
        ([dict(HOST1, ssh_host=["a"])], r"hosts\[0\].ssh_host must be a host name"),
        ([dict(HOST1, colour="red")], "unknown keys: colour"),
    ],
)
def test_bad_hosts_are_refused_naming_them(raw: t.Any, message: str) -> None:
    with pytest.raises(MigrationError, match=message):
        rq.parse_ha_hosts(raw)


def test_a_request_takes_its_defaults(tmp_path: Path) -> None:
    request = rq.ha_recover_request({"hosts": [HOST1, HOST2], "shared_storage": str(tmp_path) + "/"})
    assert request.shared_storage == str(tmp_path)
    assert [host.name for host in request.hosts] == ["hv1", "hv2"]
    assert (request.checks, request.check_interval, request.connect_timeout) == (3, 5.0, 5.0)
    assert (request.without_fence, request.fence_timeout) == ("refuse", 60)
    assert request.groups == ()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"shared_storage": None}, "no shared storage is configured"),
        ({"shared_storage": "absent-dir"}, "must be an absolute path"),
        ({"checks": 0}, "checks must be"),
        ({"connect_timeout": 0}, "connect_timeout must be"),
        ({"fence_timeout": 0}, "fence_timeout must be"),
        ({"cluster_policy": {"high_availability": "maybe"}}, "high_availability"),
        ({"affinity_groups": [{"name": "g", "hosts": ["hv9"], "vms": ["a"], "host_rule": "positive"}]}, "exclude every host"),
    ],
)
def test_bad_requests_are_refused(tmp_path: Path, changes: t.Dict[str, t.Any], message: str) -> None:
    params = dict({"hosts": [HOST1, HOST2], "shared_storage": str(tmp_path)}, **changes)
    with pytest.raises(MigrationError, match=message):
        rq.ha_recover_request(params)


# -- the high_availability setting


def test_high_availability_is_a_boolean_setting_defaulting_to_false() -> None:
    assert settings.DEFAULTS["high_availability"] is False
    assert settings.validate({"high_availability": "yes"}, "options") == {"high_availability": True}
    assert settings.validate({"high_availability": False}, "options") == {"high_availability": False}
    with pytest.raises(MigrationError, match="high_availability"):
        settings.validate({"high_availability": "sometimes"}, "options")
    assert settings.effective({}, {"high_availability": True}, {})["high_availability"] is True
    assert settings.effective({"high_availability": False}, {"high_availability": True}, {})["high_availability"] is False


class Host:
    """One host with one VM, handed to SettingsStore in place of libvirt_connection."""

    def __init__(self, xml: str, state: t.Tuple[int, int] = (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN)) -> None:
        self.dom = FakeDomain(xml, state)
        self.conn = FakeConnection("<capabilities/>", domains=[self.dom], uri="qemu:///system")

    def connect(self, *_args: t.Any, **_kwargs: t.Any) -> t.Any:
        import contextlib  # pylint: disable=import-outside-toplevel

        return contextlib.nullcontext(self.conn)


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    directory = tmp_path / "shared"
    directory.mkdir()
    return directory


def test_migration_policy_refuses_high_availability_for_a_vm_with_local_disks(shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = Host(domain_xml([disk("<source file='/var/lib/libvirt/images/web1.qcow2'/>"), disk("<source file='%s/b.qcow2'/>" % shared, target="vdb")]))
    monkeypatch.setattr(settings_store, "libvirt_connection", host.connect)
    with pytest.raises(ha.HaError, match=r"its disk\(s\) vda \(/var/lib/libvirt/images/web1.qcow2\) are not on the shared storage %s" % shared):
        settings_store.SettingsStore("qemu:///system").apply("web1", "present", {"high_availability": True}, False, str(shared))
    assert not [call for call in host.dom.calls if call[0] == "setMetadata"]
    assert not (shared / ha.STORE_DIR).exists()


def test_migration_policy_refuses_high_availability_without_shared_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    host = Host(domain_xml([disk("<source file='/srv/shared/web1.qcow2'/>")]))
    monkeypatch.setattr(settings_store, "libvirt_connection", host.connect)
    with pytest.raises(ha.HaError, match="no shared storage is configured"):
        settings_store.SettingsStore("qemu:///system").apply("web1", "present", {"high_availability": True}, False, None)
    assert host.dom.calls == []


def test_migration_policy_refuses_a_shared_storage_that_is_not_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = Host(domain_xml())
    monkeypatch.setattr(settings_store, "libvirt_connection", host.connect)
    with pytest.raises(ha.HaError, match="is not a directory on this host"):
        settings_store.SettingsStore("qemu:///system").apply("web1", "present", {"high_availability": True}, False, str(tmp_path / "unmounted"))


def test_migration_policy_stores_a_highly_available_vm_and_forgets_it_again(shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = Host(domain_xml([disk("<source file='%s/web1.qcow2'/>" % shared)]))
    monkeypatch.setattr(settings_store, "libvirt_connection", host.connect)
    policy = settings_store.SettingsStore("qemu:///system")
    store = ha.HaStore(str(shared))
    # Check mode: nothing written.
    assert policy.apply("web1", "present", {"high_availability": True}, True, str(shared))["changed"] is True
    assert store.uuids() == [] and host.dom.calls == []
    result = policy.apply("web1", "present", {"high_availability": True}, False, str(shared))
    assert result["changed"] is True and result["settings"] == {"high_availability": True}
    assert store.uuids() == [UUID1]
    assert "high_availability>true<" in (store.definition(UUID1) or "")
    assert policy.apply("web1", "present", {"high_availability": True}, False, str(shared))["changed"] is False
    # The store lagging behind the VM's own setting is caught up.
    store.forget(UUID1)
    assert policy.apply("web1", "present", {"high_availability": True}, False, str(shared))["changed"] is True
    assert store.uuids() == [UUID1]
    result = policy.apply("web1", "present", {"high_availability": False}, False, str(shared))
    assert result["changed"] is True and store.uuids() == []


def test_other_settings_of_a_highly_available_vm_change_without_shared_storage(shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    metadata = (
        "<metadata><virtops:migration xmlns:virtops='https://virtops.github.io/xmlns/migration/1'>"
        "<virtops:high_availability>true</virtops:high_availability></virtops:migration></metadata>"
    )
    host = Host(domain_xml([disk("<source file='%s/web1.qcow2'/>" % shared)], metadata=metadata))
    monkeypatch.setattr(settings_store, "libvirt_connection", host.connect)
    result = settings_store.SettingsStore("qemu:///system").apply("web1", "present", {"priority": "high"}, False, None)
    assert result["changed"] is True and result["settings"] == {"high_availability": True, "priority": "high"}


def test_a_dry_run_store_says_what_it_would_write_and_writes_nothing(tmp_path: Path) -> None:
    real = ha.HaStore(str(tmp_path))
    dry = ha.HaStore(str(tmp_path), dry_run=True)
    assert dry.write_definition(UUID1, domain_xml()) is True
    assert dry.write_location(UUID1, "hv1") is True
    assert dry.write_listing("hv1", [], 0) is True
    assert dry.forget(UUID1) is False
    assert not (tmp_path / ha.STORE_DIR).exists()
    real.write_definition(UUID1, domain_xml())
    real.write_location(UUID1, "hv1")
    real.write_listing("hv1", [], 0)
    assert dry.write_definition(UUID1, domain_xml()) is False and dry.write_location(UUID1, "hv1") is False
    assert dry.write_listing("hv1", [], 5) is False
    assert dry.forget(UUID1) is True
    assert real.definition(UUID1) == domain_xml() and real.location(UUID1) == "hv1"
    with pytest.raises(ha.HaError):
        dry.write_location(UUID1, "../x")
