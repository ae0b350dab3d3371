# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""How the disks of a VM move, for the modules that run migrations (vm_migrate, host_maintenance)."""

from __future__ import annotations


class ModuleDocFragment:
    """The options O(storage), O(synchronous_writes), O(remove_source_disks) and O(shared_storage), documented once."""

    DOCUMENTATION = r"""
options:
  storage:
    description:
      - Which disks of a running VM move with it. libvirt copies them to the destination during the live
        migration (its NBD disk copy, C(VIR_MIGRATE_NON_SHARED_DISK) with the list of disks to copy).
      - V(shared) copies nothing; every disk must already be visible on the destination at the same path
        (shared storage), as before this option existed.
      - V(copy) copies every writable disk that is a file or block volume of a storage pool on the source.
      - V(auto) copies exactly the writable disks not on shared storage. A network disk, a disk under
        O(shared_storage) and a volume of a shared pool type (C(netfs), C(gluster), C(rbd), C(iscsi),
        C(iscsi-direct), C(sheepdog), C(vstorage)) are left as they are; a volume of a local pool (C(dir),
        C(fs), C(logical), C(disk), C(zfs)) is copied. A file in no pool and not under O(shared_storage)
        cannot be told apart and is refused (declare O(shared_storage), or use V(copy)).
      - Read-only media (CD-ROM, floppy, read-only disks) are never copied; the destination must have them
        at the same path.
      - Each copied disk needs, on the destination, an active storage pool whose target path is the disk's
        directory (for a C(logical) pool, C(/dev/VG)), no volume at that path yet, and room in the pool
        for the disk's allocation plus 10 % and 64 MiB. The module creates the volume there before the
        move (sparse, same format and size) and records it in C(<state_dir>/copies/<UUID>.json), so that
        a failed or interrupted move removes it again, unless the VM is defined or running there.
      - A move is refused (rule C(storage), naming the VM, the disk and the reason) for a VM with
        snapshots, a copied disk with a backing file, a disk type libvirt cannot copy, a shut-off VM whose
        disks would be left behind, a tunnelled move (O(tunnelled=true)), or post-copy with QEMU's TLS.
      - A move that copies disks has its job timeout extended by the time its disks' allocated bytes take
        at 32 MiB/s. An evacuation places such a VM only on a host whose pools take its copies, counting
        the copies of the VMs planned there before it.
    type: str
    choices: [shared, copy, auto]
    default: shared
    version_added: 0.2.0
  synchronous_writes:
    description:
      - While disks are copied, the guest's writes go to both the source and the destination at once
        (C(VIR_MIGRATE_NON_SHARED_SYNCHRONOUS_WRITES), libvirt 8.0 or later), so that the copy of a
        write-heavy guest converges. Writes are slower during the move.
      - Used only when disks are copied (O(storage)).
    type: bool
    default: false
    version_added: 0.2.0
  remove_source_disks:
    description:
      - After a move that copied disks, and once the VM is verified running on the destination with the
        copied paths, delete the copied volumes on the source.
      - With V(false), they are kept and listed in the result, for the operator to remove.
    type: bool
    default: false
    version_added: 0.2.0
  shared_storage:
    description:
      - The cluster's shared storage, a directory every host mounts at the same path, usually the inventory
        variable C(virtops_shared_storage). With O(storage=auto), disks under it are not copied.
      - An absolute path; it is compared with the disks' paths only, never read.
    type: path
    version_added: 0.2.0
"""
