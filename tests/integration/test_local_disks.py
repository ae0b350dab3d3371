"""Local disks on the lab: VMs whose disks live in each host's own pool move live with them copied.

Every lab host has the dir pool `virtops-local` at the same path, with different content on each host
(`virtlab add-vm --disk`: a thin qcow2 volume NAME.qcow2 there). The moves are judged through libvirt's
view (where the VM runs and is defined, which volumes exist on which host and how much they allocate) and,
for the guest that writes, through the guest's own verifier: `virtlab-blocks` writes sequence-numbered,
checksummed blocks while the disk is copied, and afterwards every acknowledged block must be there.
The evacuation and the refusals use tiny VMs (firmware only): what is judged is where the disks are.
"""

from __future__ import annotations

import re
import typing as t
from pathlib import Path

from labkit import (
    assert_no_lost_blocks,
    assert_no_vm_lost,
    blocks_status,
    start_blocks,
    uri,
    virsh,
    virtlab,
    vm_homes,
    wait_async,
    wait_until,
    migration_job,
    run_module,
)

if t.TYPE_CHECKING:
    from conftest import VmFactory

MIGRATE = "virtops.migration.vm_migrate"
MAINTENANCE = "virtops.migration.host_maintenance"
HOSTS = ("lab-h1", "lab-h2", "lab-h3")
POOL = "virtops-local"
POOL_PATH = "/var/lib/libvirt/images/virtops-local"


def volume(vm: str) -> str:
    return "%s/%s.qcow2" % (POOL_PATH, vm)


def allocation(lab: Path, host: str, path: str) -> int | None:
    """The volume's allocated bytes on ``host`` (libvirt's vol-info), or None when the host has no volume there."""
    virsh(uri(lab, host), "pool-refresh", POOL, check=False)
    proc = virsh(uri(lab, host), "vol-info", "--bytes", path, check=False)
    if proc.returncode != 0:
        return None
    found = re.search(r"^Allocation:\s+(\d+) bytes", proc.stdout, re.MULTILINE)
    assert found, proc.stdout
    return int(found.group(1))


def volumes(lab: Path, host: str) -> list[str]:
    virsh(uri(lab, host), "pool-refresh", POOL, check=False)
    listing = virsh(uri(lab, host), "vol-list", POOL).stdout.splitlines()[2:]  # under the header and its rule
    return sorted(line.split()[0] for line in listing if line.strip())


def assert_thin_copy(lab: Path, source: str, destination: str, path: str) -> None:
    """The copy allocates at most 1.1 times what the source volume (kept, no longer written) allocates."""
    there, here = allocation(lab, destination, path), allocation(lab, source, path)
    assert here and there and there <= 1.1 * here, "allocation of %s: %s on %s, %s on %s" % (path, here, source, there, destination)


def test_a_writing_guest_moves_h1_h2_h3_with_its_thin_disk_and_aborted_copies_leave_nothing(lab: Path, new_vm: VmFactory) -> None:
    (vm,) = new_vm.names(1)
    virtlab("add-vm", "--disk", "256M", "%s:192@1" % vm)
    path = volume(vm)
    # 2 MiB/s: the copy's allocation is read a moment after the switch, while the guest goes on writing there.
    start_blocks(vm, rate=2)
    wait_until(lambda: (blocks_status(vm)["acked"] or 0) >= 12288, 240, "the guest has written 48 MiB to its local disk")
    assert allocation(lab, "lab-h1", path) < 128 << 20, "the source disk is thin"

    # Without a copy, the local disk cannot move: nothing changes.
    refused = run_module(lab, "lab-h1", MIGRATE, {"name": vm, "destination_uri": uri(lab, "lab-h2")})
    assert refused.get("failed") is True and vm_homes(vm) == {"lab-h1": "running"}, refused
    assert allocation(lab, "lab-h2", path) is None

    args = {"name": vm, "destination_uri": uri(lab, "lab-h2"), "storage": "copy"}
    planned = run_module(lab, "lab-h1", MIGRATE, args, check_mode=True)
    assert planned["changed"] is True, planned
    disks = planned["storage"]["disks"]
    assert [(disk["path"], disk["action"], disk["create"]) for disk in disks] == [(path, "copy", True)], disks
    assert allocation(lab, "lab-h2", path) is None and vm_homes(vm) == {"lab-h1": "running"}, "check mode created and moved nothing"

    moved = run_module(lab, "lab-h1", MIGRATE, args)
    assert moved["changed"] is True, moved
    assert vm_homes(vm) == {"lab-h2": "running"}
    assert moved["storage"]["source_disks_kept"] == [path], moved["storage"]
    assert_thin_copy(lab, "lab-h1", "lab-h2", path)
    assert_no_vm_lost()

    # auto: the local pool is not shared storage, so its disk is copied.
    again = {"name": vm, "destination_uri": uri(lab, "lab-h3"), "storage": "auto", "synchronous_writes": True}
    moved = run_module(lab, "lab-h2", MIGRATE, again)
    assert moved["changed"] is True, moved
    assert vm_homes(vm) == {"lab-h3": "running"}
    assert_thin_copy(lab, "lab-h2", "lab-h3", path)
    repeat = run_module(lab, "lab-h3", MIGRATE, again)
    assert repeat["changed"] is False, repeat
    repeat_checked = run_module(lab, "lab-h3", MIGRATE, again, check_mode=True)
    assert repeat_checked["changed"] is False, repeat_checked
    assert blocks_status(vm)["running"] is True

    # A volume the operator kept on a host is never overwritten: a move back there is refused.
    back = run_module(lab, "lab-h3", MIGRATE, dict(args, destination_uri=uri(lab, "lab-h1")))
    assert back.get("failed") is True and path in back["msg"], back
    assert vm_homes(vm) == {"lab-h3": "running"}
    for host in ("lab-h1", "lab-h2"):
        virsh(uri(lab, host), "vol-delete", path)

    # A copy cancelled half-way: the VM stays on lab-h3 from its own disk, lab-h1 keeps no volume.
    slow = dict(args, destination_uri=uri(lab, "lab-h1"), bandwidth_mib=1, policy="legacy")
    started = run_module(lab, "lab-h3", MIGRATE, slow, background=600)
    wait_until(lambda: migration_job(uri(lab, "lab-h3"), vm), 120, "the copy of %s runs" % vm)
    cancelled = run_module(lab, "lab-h3", MIGRATE, {"name": vm, "state": "cancelled"})
    assert cancelled["changed"] is True, cancelled
    final = wait_async(lab, "lab-h3", started["ansible_job_id"], timeout=300)
    assert final.get("failed") is True, final
    assert vm_homes(vm) == {"lab-h3": "running"}
    assert allocation(lab, "lab-h1", path) is None, "the cancelled copy's volume was removed"

    # The destination's libvirtd killed during the copy: the VM stays; the volume that libvirtd could
    # not remove is the first thing the next move removes, and that move then succeeds.
    started = run_module(lab, "lab-h3", MIGRATE, slow, background=600)
    wait_until(lambda: migration_job(uri(lab, "lab-h3"), vm), 120, "the copy of %s runs" % vm)
    virtlab("kill-libvirtd", "lab-h1")
    try:
        final = wait_async(lab, "lab-h3", started["ansible_job_id"], timeout=300)
    finally:
        virtlab("start-libvirtd", "lab-h1")
    assert final.get("failed") is True, final
    wait_until(lambda: vm_homes(vm) == {"lab-h3": "running"}, 60, "%s runs on lab-h3 alone" % vm)
    planned = run_module(lab, "lab-h3", MIGRATE, args | {"destination_uri": uri(lab, "lab-h1")}, check_mode=True)
    assert planned["changed"] is True, planned
    moved = run_module(lab, "lab-h3", MIGRATE, dict(args, destination_uri=uri(lab, "lab-h1"), remove_source_disks=True))
    assert moved["changed"] is True, moved
    assert vm_homes(vm) == {"lab-h1": "running"}
    assert moved["storage"]["source_disks_removed"] == [path], moved["storage"]
    assert vm + ".qcow2" not in volumes(lab, "lab-h2") + volumes(lab, "lab-h3"), "the moves left no copy behind"
    verdict = assert_no_lost_blocks(vm)
    assert verdict["bad_count"] == 0 and verdict["beyond_gap"] == 0, verdict
    assert_no_vm_lost()


def test_an_evacuation_copies_local_disks_and_moves_diskless_vms_alike(lab: Path, new_vm: VmFactory) -> None:
    with_disk = new_vm.names(2)
    virtlab("add-vm", "--tiny", "--disk", "64M", *("%s:64@2" % name for name in with_disk))
    diskless = new_vm.many([(64, 2)])
    candidates = [{"name": host, "uri": uri(lab, host)} for host in HOSTS]
    args = {"candidates": candidates, "storage": "auto", "remove_source_disks": True}

    planned = run_module(lab, "lab-h2", MAINTENANCE, args, check_mode=True)
    assert planned["changed"] is True and planned["plan"]["ok"] is True, planned
    moves = {move["vm"]: move for move in planned["plan"]["moves"]}
    for name in with_disk:
        assert [disk["path"] for disk in moves[name]["storage"] if disk["action"] == "copy"] == [volume(name)], moves[name]
    assert not moves[diskless[0]].get("storage"), moves[diskless[0]]
    assert set(volumes(lab, "lab-h2")) >= {name + ".qcow2" for name in with_disk}, "check mode removed nothing"

    done = run_module(lab, "lab-h2", MAINTENANCE, args)
    assert done["changed"] is True, done
    records = {record["vm"]: record for record in done["vms"]}
    for name in with_disk + diskless:
        homes = vm_homes(name)
        assert len(homes) == 1 and "lab-h2" not in homes and list(homes.values()) == ["running"], (name, homes)
    for name in with_disk:
        host = next(iter(vm_homes(name)))
        assert allocation(lab, host, volume(name)) is not None, "%s runs on %s from its copied disk" % (name, host)
        assert records[name]["storage"]["source_disks_removed"] == [volume(name)], records[name]
        assert allocation(lab, "lab-h2", volume(name)) is None
    assert_no_vm_lost()
    for check_mode in (False, True):
        again = run_module(lab, "lab-h2", MAINTENANCE, args, check_mode=check_mode)
        assert again["changed"] is False, again
    activated = run_module(lab, "lab-h2", MAINTENANCE, {"state": "active"})
    assert activated.get("failed") is not True, activated


def test_refusals_create_nothing_anywhere(lab: Path, new_vm: VmFactory) -> None:
    names = new_vm.names(3)
    virtlab("add-vm", "--tiny", "--disk", "64M", *("%s:64@1" % name for name in names))
    roomless, snapshotted, elsewhere = names
    h1 = uri(lab, "lab-h1")
    before = {host: volumes(lab, host) for host in ("lab-h2", "lab-h3")}

    def refused(vm: str, words: str) -> None:
        result = run_module(lab, "lab-h1", MIGRATE, {"name": vm, "destination_uri": uri(lab, "lab-h2"), "storage": "copy"})
        assert result.get("failed") is True and words in result["msg"], result
        assert vm_homes(vm) == {"lab-h1": "running"}
        assert {host: volumes(lab, host) for host in ("lab-h2", "lab-h3")} == before, "nothing was created"

    # No room: lab-h2's pool directory is a small tmpfs for the time of the move.
    virtlab("ssh", "lab-h2", "--", "mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", POOL_PATH)
    try:
        virsh(uri(lab, "lab-h2"), "pool-refresh", POOL)
        result = run_module(lab, "lab-h1", MIGRATE, {"name": roomless, "destination_uri": uri(lab, "lab-h2"), "storage": "copy"})
        assert result.get("failed") is True and "MiB free" in result["msg"], result
        assert vm_homes(roomless) == {"lab-h1": "running"}
        assert volumes(lab, "lab-h2") == [], "nothing was created in the small pool"
    finally:
        virtlab("ssh", "lab-h2", "--", "umount", POOL_PATH, check=False)
        virsh(uri(lab, "lab-h2"), "pool-refresh", POOL, check=False)

    # A snapshot (libvirt cannot copy it along).
    virsh(h1, "snapshot-create-as", snapshotted, "before-move")
    try:
        refused(snapshotted, "snapshot")
    finally:
        virsh(h1, "snapshot-delete", snapshotted, "before-move", check=False)

    # A disk in a pool whose path lab-h2 does not have.
    pool_path = "/var/lib/libvirt/images/only-h1"
    virsh(h1, "pool-define-as", "only-h1", "dir", "--target", pool_path)
    try:
        virsh(h1, "pool-build", "only-h1")
        virsh(h1, "pool-start", "only-h1")
        virsh(h1, "vol-create-as", "only-h1", "extra.qcow2", "32M", "--format", "qcow2")
        virsh(h1, "attach-disk", elsewhere, pool_path + "/extra.qcow2", "vdz", "--driver", "qemu", "--subdriver", "qcow2", "--cache", "none", "--persistent")
        refused(elsewhere, pool_path)
    finally:
        virsh(h1, "vol-delete", pool_path + "/extra.qcow2", check=False)
        virsh(h1, "pool-destroy", "only-h1", check=False)
        virsh(h1, "pool-delete", "only-h1", check=False)
        virsh(h1, "pool-undefine", "only-h1", check=False)
    assert_no_vm_lost()
