"""Which disks a move copies (storage.classify), where they land (storage.plan_for), and the rule storage in the one assessor."""

from __future__ import annotations

import typing as t

import pytest

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import rules, storage
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.domain import parse_requirements
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.policy import PolicyError

GIB = 1024**3
MIB = storage.MIB
IMAGES = storage.Pool("default", "dir", "/var/lib/libvirt/images", 100 * GIB)
NFS = storage.Pool("nfs", "netfs", "/srv/shared", 500 * GIB)
VG = storage.Pool("vg0", "logical", "/dev/vg0", 50 * GIB)


def disk(target: str = "vda", path: t.Optional[str] = "/var/lib/libvirt/images/web1.qcow2", kind: str = "file", **extra: t.Any) -> t.Dict[str, t.Any]:
    return dict({"target": target, "type": kind, "path": path, "device": "disk", "readonly": False, "format": "qcow2", "backing": False}, **extra)


def volume(path: str = "/var/lib/libvirt/images/web1.qcow2", pool: t.Optional[storage.Pool] = IMAGES, capacity: t.Optional[int] = 10 * GIB,
           allocation: t.Optional[int] = 2 * GIB, fmt: t.Optional[str] = "qcow2") -> storage.Volume:
    return storage.Volume(path=path, pool=pool, capacity_bytes=capacity, allocation_bytes=allocation, format=fmt)


def classify(disks: t.Sequence[t.Mapping[str, t.Any]], volumes: t.Mapping[str, storage.Volume], mode: str = "copy", **kwargs: t.Any) -> storage.Classification:
    snapshots = kwargs.pop("snapshots", 0)
    return storage.classify("web1", disks, storage.SourceFacts(volumes=volumes, snapshots=snapshots), mode, **kwargs)


def test_shared_copies_nothing_and_needs_no_facts() -> None:
    found = classify([disk()], {}, "shared")
    assert not found.copies and not found.refusals and [d.target for d in found.shared] == ["vda"]


def test_copy_copies_a_volume_of_a_local_pool_with_its_sizes_and_format() -> None:
    found = classify([disk()], {"vda": volume()})
    assert not found.refusals
    assert found.copies == (storage.DiskToCopy("vda", "/var/lib/libvirt/images/web1.qcow2", "qcow2", 10 * GIB, 2 * GIB, "default", "dir"),)
    assert found.targets == ("vda",)


def test_copy_refuses_a_file_in_no_pool_naming_vm_disk_and_path() -> None:
    found = classify([disk()], {})
    assert not found.copies
    assert "web1" in found.refusals[0] and "vda" in found.refusals[0] and "/var/lib/libvirt/images/web1.qcow2" in found.refusals[0]
    assert "no storage pool" in found.refusals[0]


def test_copy_refuses_a_block_device_in_no_pool() -> None:
    found = classify([disk(path="/dev/sdb", kind="block")], {})
    assert "block device /dev/sdb is in no storage pool" in found.refusals[0]


def test_auto_refuses_a_file_in_no_pool_outside_shared_storage() -> None:
    found = classify([disk()], {}, "auto")
    assert found.refusals == (
        "VM 'web1' disk vda: cannot tell whether /var/lib/libvirt/images/web1.qcow2 is shared: declare shared_storage, or use storage=copy",
    )


@pytest.mark.parametrize(
    "root, shared",
    [
        ("/srv/shared", True),
        ("/srv/shared/", True),
        ("/srv/shared2", False),
        ("/srv/share", False),
        ("/srv", True),
        ("/", True),
    ],
)
def test_auto_shared_storage_is_a_path_prefix_by_whole_components(root: str, shared: bool) -> None:
    found = classify([disk(path="/srv/shared/web1.qcow2")], {"vda": volume("/srv/shared/web1.qcow2")}, "auto", shared_storage=root)
    assert bool(found.shared) is shared
    assert bool(found.copies) is not shared


def test_auto_a_disk_in_shared2_is_not_under_shared() -> None:
    found = classify([disk(path="/srv/shared2/web1.qcow2")], {}, "auto", shared_storage="/srv/shared")
    assert "cannot tell whether /srv/shared2/web1.qcow2 is shared" in found.refusals[0]


def test_auto_leaves_network_disks_and_shared_pool_volumes_and_copies_local_ones() -> None:
    disks = [
        disk("vda"),
        disk("vdb", path="/srv/shared/data.qcow2"),
        disk("vdc", path=None, kind="network"),
        disk("vdd", path="/dev/vg0/web1-log", kind="block", format="raw"),
    ]
    volumes = {"vda": volume(), "vdb": volume("/srv/shared/data.qcow2", NFS), "vdd": volume("/dev/vg0/web1-log", VG, fmt="raw")}
    found = classify(disks, volumes, "auto")
    assert not found.refusals
    assert found.targets == ("vda", "vdd")
    assert {d.target: d.why for d in found.shared} == {"vdb": "a volume of the netfs pool 'nfs'", "vdc": "a network disk"}


def test_auto_refuses_a_pool_of_unknown_type() -> None:
    found = classify([disk()], {"vda": volume(pool=storage.Pool("odd", "mpath", "/dev/mapper"))}, "auto")
    assert "pool 'odd' of type mpath" in found.refusals[0]


@pytest.mark.parametrize(
    "path", ["web1.qcow2", "images/web1.qcow2", "/var/lib/libvirt/images/../images/web1.qcow2", "/var/lib//web1.qcow2", "/var/./web1.qcow2"]
)
def test_a_path_not_absolute_and_normal_is_refused(path: str) -> None:
    found = classify([disk(path=path)], {"vda": volume(path)})
    assert not found.copies and "not an absolute path in normal form" in found.refusals[0]


def test_a_disk_with_a_backing_file_is_refused() -> None:
    found = classify([disk(backing=True)], {"vda": volume()})
    assert not found.copies and "backing file" in found.refusals[0]


@pytest.mark.parametrize("capacity", [None, 0, -1])
def test_a_volume_without_a_readable_size_is_refused(capacity: t.Optional[int]) -> None:
    found = classify([disk()], {"vda": volume(capacity=capacity)})
    assert "size of its volume could not be read" in found.refusals[0]


def test_a_missing_allocation_counts_as_the_whole_capacity() -> None:
    found = classify([disk()], {"vda": volume(allocation=None)})
    assert found.copies[0].allocated_bytes == 10 * GIB


@pytest.mark.parametrize("kind", ["dir", "nvme", "vhostuser", None])
def test_a_disk_type_libvirt_cannot_copy_is_refused(kind: t.Optional[str]) -> None:
    found = classify([disk(path="/x", kind=kind)], {}, "auto")  # type: ignore[arg-type]
    assert "which libvirt cannot copy" in found.refusals[0]


@pytest.mark.parametrize("readonly", [dict(device="cdrom", readonly=True), dict(readonly=True)])
def test_readonly_media_are_never_copied(readonly: t.Dict[str, t.Any]) -> None:
    found = classify([disk("sda", path="/isos/install.iso", **readonly)], {}, "copy")
    assert not found.copies and not found.refusals and found.shared[0].readonly


def test_an_empty_cdrom_needs_nothing() -> None:
    found = classify([disk("sda", path=None, device="cdrom", readonly=True)], {}, "auto")
    assert not found.refusals and found.shared[0].why == "no medium"


def test_snapshots_tunnel_post_copy_tls_and_a_shut_off_vm_are_refused_when_disks_are_copied() -> None:
    found = classify([disk()], {"vda": volume()}, snapshots=2, running=False, tunnelled=True, post_copy_over_tls=True)
    text = " | ".join(found.refusals)
    assert "2 snapshot(s)" in text and "tunnelled" in text and "over TLS with post-copy" in text and "shut off" in text


def test_snapshots_do_not_matter_when_nothing_is_copied() -> None:
    found = classify([disk(path="/srv/shared/a.qcow2")], {}, "auto", snapshots=3, tunnelled=True, shared_storage="/srv/shared")
    assert not found.refusals and not found.copies


@pytest.mark.parametrize("value", ["relative/dir", 3, ["/srv"]])
def test_shared_storage_must_be_an_absolute_path(value: t.Any) -> None:
    with pytest.raises(PolicyError, match="absolute path"):
        storage.check_shared_storage(value)


def test_shared_storage_is_normalised() -> None:
    assert storage.check_shared_storage("/srv/shared/") == "/srv/shared"
    assert storage.check_shared_storage("") is None


# -- plan_for -----------------------------------------------------------------------------------------


def plan(found: storage.Classification, pools: t.Sequence[storage.Pool] = (IMAGES,), existing: t.Iterable[str] = (),
         pending: t.Optional[storage.PendingSpace] = None) -> storage.CopyPlan:
    return storage.plan_for("web1", found, "hv2", storage.DestinationFacts(tuple(pools), frozenset(existing)), pending)


def test_a_copy_lands_in_the_pool_whose_target_is_its_directory() -> None:
    result = plan(classify([disk()], {"vda": volume()}))
    assert not result.refusals
    assert result.disks[0].destination_pool == "default" and result.disks[0].create
    assert result.as_list()[0]["action"] == "copy"


@pytest.mark.parametrize("target", ["/var/lib/libvirt/images/", "/var/lib/libvirt/images//", "/var/lib/libvirt/images"])
def test_a_pool_target_with_trailing_slashes_matches(target: str) -> None:
    result = plan(classify([disk()], {"vda": volume()}), pools=[storage.Pool("default", "dir", target, 100 * GIB)])
    assert not result.refusals


@pytest.mark.parametrize("target", ["/var/lib/libvirt", "/var/lib/libvirt/images/sub", None, "images"])
def test_no_pool_at_the_disk_directory_is_refused(target: t.Optional[str]) -> None:
    result = plan(classify([disk()], {"vda": volume()}), pools=[storage.Pool("other", "dir", target, 100 * GIB)])
    assert "hv2 has no active storage pool whose target path is /var/lib/libvirt/images" in result.refusals[0]


def test_an_existing_volume_at_the_path_is_refused() -> None:
    result = plan(classify([disk()], {"vda": volume()}), existing=["/var/lib/libvirt/images/web1.qcow2"])
    assert "already exists" in result.refusals[0] and not result.disks


def test_a_logical_pool_takes_a_raw_lv_and_refuses_qcow2() -> None:
    raw = plan(classify([disk(path="/dev/vg0/web1", kind="block", format="raw")], {"vda": volume("/dev/vg0/web1", VG, fmt="raw")}), pools=[VG])
    assert not raw.refusals and raw.disks[0].destination_pool == "vg0"
    qcow = plan(classify([disk(path="/dev/vg0/web1", kind="block")], {"vda": volume("/dev/vg0/web1", VG)}), pools=[VG])
    assert "raw volumes only" in qcow.refusals[0]


def test_a_disk_pool_cannot_take_a_copy_under_the_same_name() -> None:
    part = storage.Pool("sdb", "disk", "/dev", 10 * GIB)
    result = plan(classify([disk(path="/dev/sdb1", kind="block", format="raw")], {"vda": volume("/dev/sdb1", part, fmt="raw")}), pools=[part])
    assert "cannot be created under the same name" in result.refusals[0]


def test_space_counts_allocation_plus_margin() -> None:
    found = classify([disk()], {"vda": volume(allocation=GIB)})
    needed = GIB + storage.margin(GIB)
    assert storage.margin(GIB) == int(GIB * 0.1) + 64 * MIB
    assert not plan(found, pools=[storage.Pool("default", "dir", "/var/lib/libvirt/images", needed)]).refusals
    short = plan(found, pools=[storage.Pool("default", "dir", "/var/lib/libvirt/images", needed - 1)])
    assert "pool 'default' on hv2 has" in short.refusals[0] and "vda" in short.refusals[0]


def test_two_disks_in_one_pool_must_fit_together() -> None:
    disks = [disk("vda", path="/var/lib/libvirt/images/a.qcow2"), disk("vdb", path="/var/lib/libvirt/images/b.qcow2")]
    volumes = {"vda": volume("/var/lib/libvirt/images/a.qcow2", allocation=GIB), "vdb": volume("/var/lib/libvirt/images/b.qcow2", allocation=GIB)}
    one = GIB + storage.margin(GIB)
    result = plan(classify(disks, volumes), pools=[storage.Pool("default", "dir", "/var/lib/libvirt/images", 2 * one - 1)])
    assert "vda, vdb" in result.refusals[0]
    assert not plan(classify(disks, volumes), pools=[storage.Pool("default", "dir", "/var/lib/libvirt/images", 2 * one)]).refusals


def test_pending_space_of_earlier_moves_counts() -> None:
    found = classify([disk()], {"vda": volume(allocation=GIB)})
    pools = [storage.Pool("default", "dir", "/var/lib/libvirt/images", 2 * (GIB + storage.margin(GIB)) - 1)]
    pending = storage.PendingSpace()
    first = plan(found, pools=pools, pending=pending)
    assert not first.refusals
    pending.add(first)
    assert plan(found, pools=pools, pending=pending).refusals
    pending.remove(first)
    assert not plan(found, pools=pools, pending=pending).refusals


def test_unknown_free_space_is_refused() -> None:
    result = plan(classify([disk()], {"vda": volume()}), pools=[storage.Pool("default", "dir", "/var/lib/libvirt/images", None)])
    assert "free space of the pool 'default'" in result.refusals[0]


def test_a_cdrom_must_be_present_on_the_destination() -> None:
    found = classify([disk(), disk("sda", path="/isos/a.iso", device="cdrom", readonly=True)], {"vda": volume()})
    assert "read-only medium /isos/a.iso is not on hv2" in plan(found).refusals[0]
    assert not plan(found, existing=["/isos/a.iso"]).refusals


def test_a_volume_disk_needs_a_pool_of_the_same_name() -> None:
    found = classify([disk(path=None, kind="volume", pool="default", volume="web1.qcow2")], {"vda": volume()})
    assert found.copies[0].path == "/var/lib/libvirt/images/web1.qcow2"
    assert not plan(found).refusals
    renamed = storage.Pool("images", "dir", "/var/lib/libvirt/images", 100 * GIB)
    assert "no active storage pool" in plan(found, pools=[renamed]).refusals[0]


# -- domain.parse_requirements and the assessor --------------------------------------------------------

XML = """<domain type='kvm'><name>web1</name><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/><source file='/var/lib/libvirt/images/web1.qcow2'/>
<backingStore/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/><source file='/var/lib/libvirt/images/child.qcow2'/>
<backingStore type='file'><format type='qcow2'/><source file='/var/lib/libvirt/images/base.qcow2'/></backingStore><target dev='vdb'/></disk>
<disk type='volume' device='disk'><driver name='qemu' type='raw' cache='none'/><source pool='vg0' volume='data'/><target dev='vdc'/></disk>
<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='sda' bus='sata'/><readonly/></disk>
</devices></domain>"""


def test_parse_requirements_reads_format_backing_pool_and_volume() -> None:
    disks = {d["target"]: d for d in parse_requirements(XML)["disks"]}
    assert (disks["vda"]["format"], disks["vda"]["backing"]) == ("qcow2", False)
    assert disks["vdb"]["backing"] is True
    assert (disks["vdc"]["pool"], disks["vdc"]["volume"], disks["vdc"]["format"]) == ("vg0", "data", "raw")
    assert disks["sda"]["path"] is None and disks["sda"]["readonly"]


def assess(storage_mode: str, facts: t.Optional[storage.SourceFacts], **request: t.Any) -> rules.Verdict:
    requirements = parse_requirements(XML.replace("<backingStore type='file'>", "<backingStore type='file' x='1'>"))
    vm = rules.VmToMove.from_facts({"name": "web1", "uuid": "u", "active": True, "memory_mib": 512, "state": "running"}, requirements, {})
    vm.storage_facts = facts
    assessor = rules.Assessor(rules.MoveRequest(confirmed=True, storage=storage_mode, **request), rules.SourceHost("hv1", "h1"))
    return assessor.assess(vm)


def test_the_assessor_does_not_classify_with_storage_shared() -> None:
    verdict = assess("shared", None)
    assert verdict.ok and verdict.storage is None
    assert "/var/lib/libvirt/images/web1.qcow2" in verdict.needs.disk_paths


def test_the_assessor_refuses_under_rule_storage_and_lists_every_problem() -> None:
    verdict = assess("copy", None)
    assert verdict.rule == "storage"
    finding = verdict.finding("storage")
    assert finding is not None and len(finding.details["storage_problems"]) == 3
    assert "the volume 'data' of the pool 'vg0' cannot be found on the source" in finding.message
    assert "storage" in rules.RULES and "storage" in rules.NOT_MIGRATABLE


def test_copied_disks_need_not_be_visible_on_the_destination() -> None:
    facts = storage.SourceFacts(
        volumes={
            "vda": volume(),
            "vdb": volume("/var/lib/libvirt/images/child.qcow2"),
            "vdc": volume("/dev/vg0/data", VG, fmt="raw"),
        }
    )
    verdict = assess("copy", facts)
    assert verdict.rule == "storage" and "backing file" in verdict.findings[0].message
    clean = XML.replace("<source file='/var/lib/libvirt/images/base.qcow2'/>", "")
    vm = rules.VmToMove.from_facts({"name": "web1", "uuid": "u", "active": True, "memory_mib": 512}, parse_requirements(clean), {})
    vm.storage_facts = facts
    verdict = rules.Assessor(rules.MoveRequest(confirmed=True, storage="copy"), rules.SourceHost("hv1", "h1")).assess(vm)
    assert verdict.ok, verdict.findings
    assert verdict.storage is not None and verdict.storage.targets == ("vda", "vdb", "vdc")
    assert not verdict.needs.disk_paths & {"/var/lib/libvirt/images/web1.qcow2", "/var/lib/libvirt/images/child.qcow2"}
    move = rules.move_for(verdict, rules.SourceHost("hv1", "h1"))
    assert move.copy_disks == ("vda", "vdb", "vdc")


def test_the_assessor_refuses_a_copy_over_tls_with_post_copy_on_timeout() -> None:
    facts = storage.SourceFacts(volumes={"vda": volume(), "vdb": volume("/var/lib/libvirt/images/child.qcow2"), "vdc": volume("/dev/vg0/data", VG)})
    verdict = assess("copy", facts, tls=True, timeout_post_copy=True)
    assert "over TLS with post-copy" in t.cast(rules.Finding, verdict.finding("storage")).message
