# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""Which disks of a VM a live move copies, and where they land (option ``storage``).

``storage: shared`` copies nothing (every disk must already be visible on the destination).
``storage: copy`` copies every writable disk that is a volume of a storage pool on the source;
``storage: auto`` copies exactly the writable disks that are not on shared storage: a network disk,
a disk under the option ``shared_storage`` and a volume of a shared pool type (:data:`SHARED_POOL_TYPES`)
are shared, a volume of a local pool (:data:`LOCAL_POOL_TYPES`) is copied, and a file in no pool
outside ``shared_storage`` cannot be told apart and is refused.

Two steps, so that each planner asks at the right moment:

* :func:`classify` needs only the VM (its disks from ``domain.parse_requirements``, what libvirt says
  of each disk's volume on the source, its snapshot count) and the request; the one assessor
  (``rules.py``) calls it, and its refusals are findings of rule :data:`RULE`;
* :func:`plan_for` needs the chosen destination (its active pools and the paths that already exist
  there) and the space other moves of the run already take there (:class:`PendingSpace`); the planners
  call it per destination, as ``placement.rejections``, and refuse the move for any reason it gives.

Pure logic: the facts come from ``libvirt_io/storage.py``; no libvirt import.
"""

from __future__ import annotations

import dataclasses
import os
import typing as t

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.ha import on_shared_storage
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.policy import PolicyError

RULE = "storage"
SHARED, COPY, AUTO = "shared", "copy", "auto"
# Pool types whose volumes every host of the cluster sees at the same path (never copied by auto).
SHARED_POOL_TYPES = frozenset(("netfs", "gluster", "rbd", "iscsi", "iscsi-direct", "sheepdog", "vstorage"))
# Pool types whose volumes live on the host itself (copied by auto).
LOCAL_POOL_TYPES = frozenset(("dir", "fs", "logical", "disk", "zfs"))
# Pool types in which a volume can be created under the name of the source's (a disk pool names its partitions itself).
CREATABLE_POOL_TYPES = frozenset(("dir", "fs", "netfs", "logical", "zfs"))
# Pool types that hold raw volumes only.
RAW_ONLY_POOL_TYPES = frozenset(("logical", "zfs", "disk"))
# Disk types whose content libvirt can copy during a migration (NBD).
COPYABLE_TYPES = frozenset(("file", "block", "volume"))
MIB = 1024 * 1024
# Room kept free in a destination pool per copied disk: 10 % of its allocation plus 64 MiB.
COPY_SPACE_MARGIN = (0.10, 64 * MIB)
# The rate at which a move is assumed to copy disks when its job's timeout is set: 32 MiB/s (about
# 270 Mbit/s), well below a 1 Gbit/s migration network shared by two moves, so that a copy that is
# merely slow is not aborted. A move that copies disks gets its timeout extended by their allocated
# bytes at this rate (:func:`copy_timeout`).
COPY_RATE_BYTES_PER_S = 32 * MIB


def check_shared_storage(path: t.Any) -> t.Optional[str]:
    """The option ``shared_storage`` normalised (None when unset); refused unless an absolute path."""
    if path in (None, ""):
        return None
    if not isinstance(path, str) or not os.path.isabs(path):
        raise PolicyError("shared_storage must be an absolute path, got %r" % (path,))
    return os.path.normpath(path)


def copy_timeout(timeout_s: t.Optional[int], plan: t.Optional["CopyPlan"]) -> t.Optional[int]:
    """The job timeout of a move that copies ``plan``'s disks: ``timeout_s`` plus their allocated bytes at :data:`COPY_RATE_BYTES_PER_S`."""
    if timeout_s is None or plan is None or not plan.disks:
        return timeout_s
    return timeout_s + -(-sum(disk.allocated_bytes for disk in plan.disks) // COPY_RATE_BYTES_PER_S)


def margin(allocated_bytes: int) -> int:
    """The room one copied disk of ``allocated_bytes`` needs in its destination pool beyond its allocation."""
    ratio, fixed = COPY_SPACE_MARGIN
    return int(allocated_bytes * ratio) + fixed


@dataclasses.dataclass(frozen=True)
class Pool:
    """A storage pool as libvirt describes it: name, type, target path, free bytes (None: unknown)."""

    name: str
    type: t.Optional[str]
    target: t.Optional[str]
    available_bytes: t.Optional[int] = None

    def holds(self, path: str) -> bool:
        """``path`` is a volume directly in this pool's target directory."""
        return bool(self.target) and os.path.isabs(t.cast(str, self.target)) and os.path.dirname(path) == os.path.normpath(t.cast(str, self.target))


@dataclasses.dataclass(frozen=True)
class Volume:
    """What libvirt says of one disk's volume on the source: its path, pool, sizes in bytes and format."""

    path: str
    pool: t.Optional[Pool] = None
    capacity_bytes: t.Optional[int] = None
    allocation_bytes: t.Optional[int] = None
    format: t.Optional[str] = None


@dataclasses.dataclass(frozen=True)
class SourceFacts:
    """What ``classify`` needs from the source: per disk target, its volume (absent: in no pool), and the VM's snapshot count."""

    volumes: t.Mapping[str, Volume] = dataclasses.field(default_factory=dict)
    snapshots: int = 0


@dataclasses.dataclass(frozen=True)
class DestinationFacts:
    """What ``plan_for`` needs from a destination: its active pools, and which of the asked paths exist there as volumes."""

    pools: t.Tuple[Pool, ...] = ()
    existing: t.FrozenSet[str] = frozenset()

    def without(self, paths: t.Iterable[str]) -> "DestinationFacts":
        """These facts once ``paths`` are deleted (the volumes a lost run left, which a real run deletes first)."""
        return dataclasses.replace(self, existing=self.existing - frozenset(paths))


@dataclasses.dataclass(frozen=True)
class DiskToCopy:
    """A disk the move copies, as the source has it."""

    target: str
    path: str
    format: t.Optional[str]
    virtual_bytes: int
    allocated_bytes: int
    source_pool: str
    pool_type: t.Optional[str] = None
    # For a disk of type volume: the pool the destination must have under the same name.
    pool_name_needed: t.Optional[str] = None


@dataclasses.dataclass(frozen=True)
class SharedDisk:
    """A disk the move does not copy, and why (the destination must see it at the same path, if it has one)."""

    target: str
    path: t.Optional[str]
    why: str
    readonly: bool = False


@dataclasses.dataclass(frozen=True)
class Classification:
    """Per VM: the disks to copy, the disks left shared, and every refusal (sentences naming the VM)."""

    copies: t.Tuple[DiskToCopy, ...] = ()
    shared: t.Tuple[SharedDisk, ...] = ()
    refusals: t.Tuple[str, ...] = ()

    @property
    def targets(self) -> t.Tuple[str, ...]:
        """The targets of the disks to copy (libvirt's ``migrate_disks``)."""
        return tuple(disk.target for disk in self.copies)

    @property
    def copied_paths(self) -> t.FrozenSet[str]:
        return frozenset(disk.path for disk in self.copies)


@dataclasses.dataclass(frozen=True)
class DiskCopy:
    """One disk copied onto one destination: where it lands, and whether the volume is created there first."""

    target: str
    path: str
    format: t.Optional[str]
    virtual_bytes: int
    allocated_bytes: int
    source_pool: str
    destination_pool: str
    create: bool = True

    def as_dict(self) -> t.Dict[str, t.Any]:
        return dict(dataclasses.asdict(self), action="copy")


@dataclasses.dataclass(frozen=True)
class CopyPlan:
    """The disks of one VM for one destination: the copies, the shared disks, and why it cannot be done (empty: it can)."""

    vm: str
    destination: str
    disks: t.Tuple[DiskCopy, ...] = ()
    shared: t.Tuple[SharedDisk, ...] = ()
    refusals: t.Tuple[str, ...] = ()

    @property
    def targets(self) -> t.Tuple[str, ...]:
        return tuple(disk.target for disk in self.disks)

    def bytes_by_pool(self) -> t.Dict[str, int]:
        """Bytes the copies take per destination pool, margins included."""
        taken: t.Dict[str, int] = {}
        for disk in self.disks:
            taken[disk.destination_pool] = taken.get(disk.destination_pool, 0) + disk.allocated_bytes + margin(disk.allocated_bytes)
        return taken

    def as_list(self) -> t.List[t.Dict[str, t.Any]]:
        """The plan per disk, for a module's result (copied disks first, in target order)."""
        shared = [{"target": disk.target, "path": disk.path, "action": "shared", "why": disk.why} for disk in self.shared]
        return [disk.as_dict() for disk in self.disks] + shared


@dataclasses.dataclass
class PendingSpace:
    """Bytes already planned into each destination pool by earlier moves of the run, per (host, pool)."""

    taken: t.Dict[t.Tuple[str, str], int] = dataclasses.field(default_factory=dict)

    def add(self, plan: CopyPlan) -> None:
        for pool, size in plan.bytes_by_pool().items():
            self.taken[(plan.destination, pool)] = self.taken.get((plan.destination, pool), 0) + size

    def remove(self, plan: CopyPlan) -> None:
        """``plan`` will not be carried out: its space counts as free again."""
        for pool, size in plan.bytes_by_pool().items():
            self.taken[(plan.destination, pool)] = self.taken.get((plan.destination, pool), 0) - size

    def of(self, host: str, pool: str) -> int:
        return self.taken.get((host, pool), 0)


def _normal(path: str) -> bool:
    return os.path.isabs(path) and os.path.normpath(path) == path and not path.startswith("//")


def _copy_problem(vm: str, disk: t.Mapping[str, t.Any], volume: Volume) -> t.Optional[str]:
    """Why a disk chosen for copying cannot be copied (None: it can)."""
    where = "disk %s (%s)" % (disk.get("target"), volume.path)
    if disk.get("backing"):
        return "VM '%s' %s has a backing file: copying a chain would flatten or lose its layers; flatten it first (virsh blockpull)" % (vm, where)
    if not volume.capacity_bytes or volume.capacity_bytes < 0:
        return "VM '%s' %s: the size of its volume could not be read, so its copy cannot be created" % (vm, where)
    return None


def classify(
    vm: str,
    disks: t.Sequence[t.Mapping[str, t.Any]],
    facts: SourceFacts,
    mode: str,
    shared_storage: t.Optional[str] = None,
    running: bool = True,
    tunnelled: bool = False,
    post_copy_over_tls: bool = False,
) -> Classification:
    """Which of ``disks`` (``domain.parse_requirements``'s) a move of ``vm`` under ``mode`` copies, and every refusal.

    ``running``: an active VM (only a live or paused move copies disks; a shut-off VM's disks would be
    left behind). ``tunnelled`` and ``post_copy_over_tls`` describe the move: libvirt copies no disk in
    a tunnel, and its disk copy over TLS cannot switch to post-copy.
    """
    if mode == SHARED:
        return Classification(shared=tuple(SharedDisk(str(d.get("target")), d.get("path"), "storage=shared", bool(d.get("readonly"))) for d in disks))
    root = check_shared_storage(shared_storage)
    copies: t.List[DiskToCopy] = []
    shared: t.List[SharedDisk] = []
    refusals: t.List[str] = []
    for disk in disks:
        target = str(disk.get("target") or "?")
        kind = disk.get("type")
        path = disk.get("path")
        volume = facts.volumes.get(target)
        if volume is not None and not path:
            path = volume.path
        readonly = bool(disk.get("readonly"))
        if kind == "network":
            shared.append(SharedDisk(target, path, "a network disk"))
            continue
        if not path and kind != "volume":
            shared.append(SharedDisk(target, None, "no medium", readonly))
            continue
        if readonly:
            shared.append(SharedDisk(target, path, "read-only media: not copied, the destination must have it at the same path", True))
            continue
        if kind not in COPYABLE_TYPES:
            refusals.append("VM '%s' disk %s is a %s disk, which libvirt cannot copy during a migration" % (vm, target, kind or "typeless"))
            continue
        if kind == "volume" and not path:
            refusals.append(
                "VM '%s' disk %s: the volume '%s' of the pool '%s' cannot be found on the source" % (vm, target, disk.get("volume"), disk.get("pool"))
            )
            continue
        if not path or not _normal(path):
            refusals.append(
                "VM '%s' disk %s has the path %r, not an absolute path in normal form (relative, '..', '.' or doubled "
                "slashes): its copy's place cannot be told" % (vm, target, path)
            )
            continue
        pool = volume.pool if volume is not None else None
        if mode == AUTO:
            if root is not None and on_shared_storage(path, root):
                shared.append(SharedDisk(target, path, "under shared_storage %s" % root))
                continue
            if pool is not None and pool.type in SHARED_POOL_TYPES:
                shared.append(SharedDisk(target, path, "a volume of the %s pool '%s'" % (pool.type, pool.name)))
                continue
            if pool is None:
                refusals.append(
                    "VM '%s' disk %s: cannot tell whether %s is shared: declare shared_storage, or use storage=copy" % (vm, target, path)
                )
                continue
            if pool.type not in LOCAL_POOL_TYPES:
                refusals.append(
                    "VM '%s' disk %s: cannot tell whether %s is shared: it is a volume of the pool '%s' of type %s; declare shared_storage, "
                    "or use storage=copy" % (vm, target, path, pool.name, pool.type)
                )
                continue
        elif pool is None:
            what = "block device" if kind == "block" else "file"
            refusals.append(
                "VM '%s' disk %s: the %s %s is in no storage pool on the source, so its copy cannot be created on the destination; "
                "define a pool for its directory" % (vm, target, what, path)
            )
            continue
        volume = t.cast(Volume, volume)
        pool = t.cast(Pool, pool)
        problem = _copy_problem(vm, disk, volume)
        if problem:
            refusals.append(problem)
            continue
        capacity = int(t.cast(int, volume.capacity_bytes))
        allocated = volume.allocation_bytes if volume.allocation_bytes is not None and volume.allocation_bytes >= 0 else capacity
        copies.append(
            DiskToCopy(
                target=target,
                path=path,
                format=volume.format or disk.get("format"),
                virtual_bytes=capacity,
                allocated_bytes=int(allocated),
                source_pool=pool.name,
                pool_type=pool.type,
                pool_name_needed=disk.get("pool") if kind == "volume" else None,
            )
        )
    if copies:
        targets = ", ".join(disk.target for disk in copies)
        if not running:
            refusals.append(
                "VM '%s' is shut off: an offline move copies no disk, and would leave %s behind; start it, or move its disks yourself" % (vm, targets)
            )
        if facts.snapshots:
            refusals.append(
                "VM '%s' has %d snapshot(s): libvirt cannot copy a disk's snapshot chain during a migration; delete or merge them first"
                % (vm, facts.snapshots)
            )
        if tunnelled:
            refusals.append("VM '%s' would copy %s: libvirt cannot copy disks in a tunnelled migration; migrate without tunnelled" % (vm, targets))
        if post_copy_over_tls:
            refusals.append(
                "VM '%s' would copy %s: libvirt's NBD copy over TLS with post-copy is refused; migrate without post-copy, or without tls" % (vm, targets)
            )
    return Classification(tuple(copies), tuple(shared), tuple(refusals))


def plan_for(
    vm: str,
    classification: Classification,
    destination: str,
    facts: DestinationFacts,
    pending: t.Optional[PendingSpace] = None,
) -> CopyPlan:
    """The copies of ``vm`` onto ``destination`` (its ``facts``), refusing what it cannot take.

    Each copied disk needs an active pool there whose target directory is the disk's directory (and of
    the same name, for a disk of type volume), no volume at its path yet, and, per pool, room for the
    allocations plus :data:`COPY_SPACE_MARGIN` beyond what ``pending`` already takes there. Read-only
    media must be there at the same path.
    """
    refusals = list(classification.refusals)
    copies: t.List[DiskCopy] = []
    for disk in classification.shared:
        if disk.readonly and disk.path and disk.path not in facts.existing:
            refusals.append("VM '%s' disk %s: the read-only medium %s is not on %s" % (vm, disk.target, disk.path, destination))
    for disk in classification.copies:
        where = "VM '%s' disk %s (%s)" % (vm, disk.target, disk.path)
        pools = [pool for pool in facts.pools if pool.holds(disk.path)]
        if disk.pool_name_needed is not None:
            pools = [pool for pool in pools if pool.name == disk.pool_name_needed]
        if not pools:
            refusals.append("%s: %s has no active storage pool whose target path is %s" % (where, destination, os.path.dirname(disk.path)))
            continue
        pool = pools[0]
        if disk.path in facts.existing:
            refusals.append("%s: a volume already exists at that path on %s; the copy would overwrite it" % (where, destination))
            continue
        if pool.type not in CREATABLE_POOL_TYPES:
            refusals.append(
                "%s: the pool '%s' on %s is of type %s, in which the copy cannot be created under the same name" % (where, pool.name, destination, pool.type)
            )
            continue
        if pool.type in RAW_ONLY_POOL_TYPES and disk.format not in (None, "raw"):
            refusals.append(
                "%s: the pool '%s' on %s is of type %s, which holds raw volumes only, and the disk is %s"
                % (where, pool.name, destination, pool.type, disk.format)
            )
            continue
        copies.append(DiskCopy(disk.target, disk.path, disk.format, disk.virtual_bytes, disk.allocated_bytes, disk.source_pool, pool.name, create=True))
    plan = CopyPlan(vm, destination, tuple(copies), classification.shared, ())
    by_name = {pool.name: pool for pool in facts.pools}
    for name, needed in sorted(plan.bytes_by_pool().items()):
        available = by_name[name].available_bytes
        if available is None:
            refusals.append("VM '%s': the free space of the pool '%s' on %s cannot be read" % (vm, name, destination))
            continue
        free = available - (pending.of(destination, name) if pending is not None else 0)
        if free < needed:
            refusals.append(
                "VM '%s': the pool '%s' on %s has %d MiB free after planned copies, the copies of %s need %d MiB (with margin)"
                % (vm, name, destination, max(free, 0) // MIB, ", ".join(d.target for d in copies if d.destination_pool == name), -(-needed // MIB))
            )
    return dataclasses.replace(plan, refusals=tuple(refusals))
