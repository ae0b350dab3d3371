"""The disk copies as libvirt sees them (libvirt_io/storage.py): facts read, volumes created under a manifest, and cleaned."""

from __future__ import annotations

import json
import os
import stat
import typing as t
from pathlib import Path

import libvirt
import pytest

from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io import storage as disk_io
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import storage
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import HostUnreachableError, MigrationError
from libvirt_fakes import FakeCluster, FakeConnection, FakeDomain, FakePool, libvirt_error

UUID = "4a0a3ad4-0d5b-4d47-9a6a-3b8a2f1c9e01"
DEST = "qemu+tls://hv2/system"
GIB = 1024**3
PATH = "/var/lib/libvirt/images/web1.qcow2"


@pytest.fixture
def cluster(sample: t.Callable[[str], str]) -> FakeCluster:
    hosts = FakeCluster(sample("capabilities-qemu.xml"))
    hosts.add_host(DEST, "hv2", "0c9a4b52-7d3e-4f1a-9e55-2b8c6d1f0a77")
    return hosts


def copy_plan(*disks: storage.DiskCopy) -> storage.CopyPlan:
    return storage.CopyPlan("web1", "hv2", disks or (storage.DiskCopy("vda", PATH, "qcow2", 10 * GIB, 2 * GIB, "default", "default"),))


def manifest_of(tmp_path: Path) -> disk_io.CopyManifest:
    return disk_io.CopyManifest(str(tmp_path / "state"))


def test_source_facts_read_each_writable_disk_of_a_pool_and_the_snapshot_count(sample: t.Callable[[str], str]) -> None:
    conn = FakeConnection(sample("capabilities-qemu.xml"))
    images = FakePool("default")
    images.add("web1.qcow2", 10 * GIB, 2 * GIB)
    vg = FakePool("vg0", "logical", "/dev/vg0")
    vg.add("data", 5 * GIB, 5 * GIB, "raw")
    conn.pools = [images, vg]
    dom = FakeDomain("<domain><name>web1</name><uuid>%s</uuid></domain>" % UUID)
    dom.snapshots = 2  # type: ignore[attr-defined]
    disks = [
        {"target": "vda", "type": "file", "path": PATH},
        {"target": "vdb", "type": "volume", "pool": "vg0", "volume": "data"},
        {"target": "vdc", "type": "file", "path": "/elsewhere/x.img"},
        {"target": "sda", "type": "file", "path": "/isos/a.iso", "readonly": True},
        {"target": "vdd", "type": "volume", "pool": "gone", "volume": "x"},
    ]
    facts = disk_io.source_facts(conn, dom, disks)
    assert facts.snapshots == 2
    assert sorted(facts.volumes) == ["vda", "vdb"]
    assert facts.volumes["vda"] == storage.Volume(PATH, storage.Pool("default", "dir", "/var/lib/libvirt/images", 100 * GIB), 10 * GIB, 2 * GIB, "qcow2")
    assert facts.volumes["vdb"].path == "/dev/vg0/data" and facts.volumes["vdb"].pool.type == "logical"  # type: ignore[union-attr]


def test_destination_facts_list_pools_and_existing_paths(sample: t.Callable[[str], str]) -> None:
    conn = FakeConnection(sample("capabilities-qemu.xml"))
    images = FakePool("default", available=7 * GIB)
    images.add("other.qcow2", GIB)
    conn.pools = [images]
    facts = disk_io.destination_facts(conn, [PATH, "/var/lib/libvirt/images/other.qcow2"])
    assert facts.pools == (storage.Pool("default", "dir", "/var/lib/libvirt/images", 7 * GIB),)
    assert facts.existing == frozenset(["/var/lib/libvirt/images/other.qcow2"])


def test_a_volume_is_created_sparse_after_its_path_is_in_the_manifest(cluster: FakeCluster, tmp_path: Path) -> None:
    pool = FakePool("default")
    dest = cluster.hosts[DEST]
    dest.pools.append(pool)
    manifest = manifest_of(tmp_path)
    seen: t.List[t.Any] = []
    create = pool.createXML

    def spy(xml: str, flags: int = 0) -> t.Any:
        seen.append(manifest.read(UUID))
        return create(xml, flags)

    pool.createXML = spy  # type: ignore[method-assign]
    assert disk_io.create_volumes(dest, copy_plan(), manifest, UUID, DEST) == [PATH]
    assert seen[0]["volumes"] == [PATH] and seen[0]["destination_uri"] == DEST
    assert "<allocation unit='bytes'>0</allocation>" in pool.created[0] and "<name>web1.qcow2</name>" in pool.created[0]
    path = tmp_path / "state" / "copies" / (UUID + ".json")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(path.read_text()) == {"vm": "web1", "uuid": UUID, "destination_uri": DEST, "volumes": [PATH]}


def test_a_refused_create_leaves_its_path_out_of_the_manifest(cluster: FakeCluster, tmp_path: Path) -> None:
    pool = FakePool("default")
    pool.create_error = libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, "storage volume name 'web1.qcow2' already in use.")
    cluster.hosts[DEST].pools.append(pool)
    manifest = manifest_of(tmp_path)
    with pytest.raises(MigrationError, match="create the volume %s for disk vda" % PATH):
        disk_io.create_volumes(cluster.hosts[DEST], copy_plan(), manifest, UUID, DEST)
    assert manifest.read(UUID)["volumes"] == []  # type: ignore[index]
    assert disk_io.clean_copies(cluster.connect, manifest, UUID) == {"destination_uri": DEST, "deleted": [], "kept": []}
    assert manifest.read(UUID) is None


def test_a_volume_that_appeared_meanwhile_is_never_overwritten(cluster: FakeCluster, tmp_path: Path) -> None:
    pool = FakePool("default")
    pool.add("web1.qcow2", GIB)
    cluster.hosts[DEST].pools.append(pool)
    with pytest.raises(MigrationError, match="a volume appeared at that path"):
        disk_io.create_volumes(cluster.hosts[DEST], copy_plan(), manifest_of(tmp_path), UUID, DEST)
    assert not pool.created and manifest_of(tmp_path).read(UUID) is None


def test_clean_copies_deletes_only_where_the_vm_is_not(cluster: FakeCluster, tmp_path: Path) -> None:
    pool = FakePool("default")
    dest = cluster.hosts[DEST]
    dest.pools.append(pool)
    manifest = manifest_of(tmp_path)
    disk_io.create_volumes(dest, copy_plan(), manifest, UUID, DEST)
    dest.domains.append(FakeDomain("<domain><name>web1</name><uuid>%s</uuid></domain>" % UUID))
    done = disk_io.clean_copies(cluster.connect, manifest, UUID)
    assert done["kept"] == [PATH] and not pool.deleted and manifest.read(UUID) is None
    dest.domains.clear()
    disk_io.create_volumes(dest, copy_plan(storage.DiskCopy("vdb", "/var/lib/libvirt/images/b.raw", "raw", GIB, 0, "default", "default")), manifest, UUID, DEST)
    assert disk_io.clean_copies(cluster.connect, manifest, UUID)["deleted"] == ["/var/lib/libvirt/images/b.raw"]
    assert pool.deleted == ["/var/lib/libvirt/images/b.raw"] and manifest.read(UUID) is None


def test_an_unreachable_destination_keeps_the_manifest_for_the_next_run(cluster: FakeCluster, tmp_path: Path) -> None:
    manifest = manifest_of(tmp_path)
    manifest.write("web1", UUID, "qemu+tls://gone/system", [PATH])
    with pytest.raises(HostUnreachableError):
        disk_io.clean_copies(cluster.connect, manifest, UUID)
    assert manifest.read(UUID) is not None


@pytest.mark.parametrize("content", ['{"vm": "web1"}', "[]", '{"volumes": "x", "destination_uri": "u"}'])
def test_a_damaged_manifest_is_refused_naming_it(tmp_path: Path, content: str) -> None:
    directory = tmp_path / "state" / "copies"
    directory.mkdir(parents=True, mode=0o700)
    (directory / (UUID + ".json")).write_text(content)
    with pytest.raises(MigrationError, match="is damaged"):
        manifest_of(tmp_path).read(UUID)


def test_a_manifest_name_must_be_a_uuid(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="not a VM UUID"):
        manifest_of(tmp_path).write("web1", "../../etc/passwd", DEST, [])


def test_a_logical_volume_is_allocated_whole_without_a_format() -> None:
    xml = disk_io.volume_xml(storage.DiskCopy("vda", "/dev/vg0/web1", "raw", GIB, GIB, "vg0", "vg0"), "logical")
    assert "<allocation unit='bytes'>%d</allocation>" % GIB in xml and "<format" not in xml


def test_remove_source_volumes_reports_each_failure(sample: t.Callable[[str], str]) -> None:
    conn = FakeConnection(sample("capabilities-qemu.xml"))
    pool = FakePool("default")
    pool.add("web1.qcow2", GIB)
    conn.pools = [pool]
    removed, problems = disk_io.remove_source_volumes(conn, [PATH, "/var/lib/libvirt/images/gone.qcow2"], "web1", "qemu:///system")
    assert removed == [PATH] and "gone.qcow2 could not be removed" in problems[0]
