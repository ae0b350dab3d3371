# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""The disks a move copies, as libvirt sees them: the facts ``pure/storage.py`` judges, and the volumes created and removed.

* :func:`source_facts` reads, on the source, the pool and volume of each disk and the VM's snapshot count;
* :func:`destination_facts` reads, on a destination, its active pools and which paths already hold a volume;
* :class:`CopyManifest` records the volumes created on a destination in ``<state_dir>/copies/<UUID>.json``,
  written before each volume is created and removed once the move is verified, so that a failed or
  interrupted move never leaves them behind;
* :func:`create_volumes` creates the copies' volumes (sparse: same format and capacity, nothing allocated);
* :func:`clean_copies` deletes a manifest's volumes, only when the VM is neither running nor defined there;
* :func:`remove_source_volumes` deletes the copied volumes on the source after a verified move;
* :class:`DiskCopies` puts these together around one move, for every module that moves VMs.
"""

from __future__ import annotations

import os
import typing as t
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import domain as domxml
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import statefiles
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import storage
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import MigrationError, is_not_found, translate_libvirt_error
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.plan import Move

try:
    import libvirt
except ImportError:  # reported by the module through missing_required_lib
    pass

Connect = t.Callable[[str], t.ContextManager[t.Any]]


def _pool(pool: t.Any) -> storage.Pool:
    """A libvirt pool as ``storage.Pool``: name, type, target path, and its free bytes when it is active."""
    root = ET.fromstring(pool.XMLDesc(0))
    target = root.find("target/path")
    available = None
    if pool.isActive():
        info = pool.info()
        available = int(info[3]) if len(info) > 3 else None
    return storage.Pool(pool.name(), root.get("type"), target.text.strip() if target is not None and target.text else None, available)


def _volume(vol: t.Any, pool: t.Optional[storage.Pool]) -> storage.Volume:
    """A libvirt volume as ``storage.Volume``: its path, pool, capacity and allocation (vol.info()) and format."""
    info = vol.info()
    fmt = ET.fromstring(vol.XMLDesc(0)).find("target/format")
    return storage.Volume(
        path=vol.path(),
        pool=pool,
        capacity_bytes=int(info[1]) if len(info) > 1 else None,
        allocation_bytes=int(info[2]) if len(info) > 2 else None,
        format=fmt.get("type") if fmt is not None else None,
    )


def source_facts(conn: t.Any, dom: t.Any, disks: t.Sequence[t.Mapping[str, t.Any]]) -> storage.SourceFacts:
    """What the source says of ``dom``'s disks (``domain.parse_requirements``'s): each one's volume and pool, and its snapshot count.

    A disk whose path is in no pool (or whose pool volume cannot be found) is left out: ``storage.classify``
    refuses to copy it, or to guess whether it is shared.
    """
    volumes: t.Dict[str, storage.Volume] = {}
    for disk in disks:
        target = disk.get("target")
        if not target or disk.get("type") not in storage.COPYABLE_TYPES or disk.get("readonly"):
            continue
        try:
            if disk.get("type") == "volume":
                pool = conn.storagePoolLookupByName(disk.get("pool"))
                vol = pool.storageVolLookupByName(disk.get("volume"))
            elif disk.get("path"):
                vol = conn.storageVolLookupByPath(disk["path"])
                pool = vol.storagePoolLookupByVolume()
            else:
                continue
            volumes[str(target)] = _volume(vol, _pool(pool))
        except libvirt.libvirtError:
            continue
    return storage.SourceFacts(volumes=volumes, snapshots=int(dom.snapshotNum(0)))


def destination_facts(conn: t.Any, paths: t.Iterable[str]) -> storage.DestinationFacts:
    """A destination's active pools (refreshed, so that files put there behind libvirt's back count) and which of ``paths`` hold a volume."""
    pools = []
    for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        try:
            pool.refresh(0)
        except libvirt.libvirtError:
            pass  # a pool busy with another job: its listing may be older, and a create there fails safely
        try:
            pools.append(_pool(pool))
        except libvirt.libvirtError:
            continue
    existing = set()
    for path in paths:
        try:
            conn.storageVolLookupByPath(path)
            existing.add(path)
        except libvirt.libvirtError:
            pass
    return storage.DestinationFacts(tuple(pools), frozenset(existing))


class CopyManifest:
    """The volumes a move created on a destination, in ``<state_dir>/copies/<UUID>.json`` (0600, written atomically).

    ``{"vm", "uuid", "destination_uri", "volumes": [paths]}``: a path is added before its volume is
    created, so that whatever a run created is known to the next one even when the controller died.
    """

    def __init__(self, state_dir: str) -> None:
        self.directory = os.path.join(state_dir, "copies")

    def _name(self, uuid: str) -> str:
        if not domxml.looks_like_uuid(uuid):
            raise MigrationError("%r is not a VM UUID" % uuid)
        return uuid.lower() + ".json"

    def read(self, uuid: str) -> t.Optional[t.Dict[str, t.Any]]:
        data = statefiles.read_json(self.directory, self._name(uuid))
        if data is None:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("volumes"), list) or not isinstance(data.get("destination_uri"), str):
            raise MigrationError("the copy manifest %s is damaged: %r" % (os.path.join(self.directory, self._name(uuid)), data), uuid=uuid)
        return data

    def write(self, vm: str, uuid: str, destination_uri: str, volumes: t.Sequence[str]) -> None:
        statefiles.ensure_directory(self.directory)
        statefiles.write_json(self.directory, self._name(uuid), {"vm": vm, "uuid": uuid, "destination_uri": destination_uri, "volumes": list(volumes)})

    def remove(self, uuid: str) -> None:
        statefiles.remove(self.directory, self._name(uuid))


def volume_xml(disk: storage.DiskCopy, pool_type: t.Optional[str]) -> str:
    """The XML of a copy's volume: the source's name, capacity and format, nothing allocated (a logical volume is allocated whole)."""
    allocation = disk.virtual_bytes if pool_type in ("logical", "disk") else 0
    fmt = "" if pool_type in storage.RAW_ONLY_POOL_TYPES or not disk.format else "<target><format type='%s'/></target>" % escape(disk.format, {"'": "&apos;"})
    return "<volume><name>%s</name><capacity unit='bytes'>%d</capacity><allocation unit='bytes'>%d</allocation>%s</volume>" % (
        escape(os.path.basename(disk.path)),
        disk.virtual_bytes,
        allocation,
        fmt,
    )


def create_volumes(conn: t.Any, plan: storage.CopyPlan, manifest: CopyManifest, uuid: str, destination_uri: str) -> t.List[str]:
    """Create on the destination ``conn`` the volume of each disk of ``plan`` to create, each recorded in ``manifest`` first.

    A volume that appears at the path meanwhile, a create libvirt refuses, or a volume libvirt puts
    elsewhere than the planned path: the error names the VM and the disk, and whatever this call
    created stays in the manifest for :func:`clean_copies`. Returns the paths created.
    """
    created: t.List[str] = []
    recorded = list((manifest.read(uuid) or {}).get("volumes") or [])
    for disk in plan.disks:
        if not disk.create:
            continue
        action = "create the volume %s for disk %s" % (disk.path, disk.target)
        try:
            pool = conn.storagePoolLookupByName(disk.destination_pool)
            pool_type = ET.fromstring(pool.XMLDesc(0)).get("type")
            try:
                conn.storageVolLookupByPath(disk.path)
                raise MigrationError(
                    "Cannot %s for VM '%s' on %s: a volume appeared at that path; nothing was overwritten" % (action, plan.vm, destination_uri),
                    vm=plan.vm,
                    uri=destination_uri,
                )
            except libvirt.libvirtError:
                pass
            manifest.write(plan.vm, uuid, destination_uri, recorded + [disk.path])
            try:
                vol = pool.createXML(volume_xml(disk, pool_type), 0)
            except libvirt.libvirtError:
                # Nothing was created: the path, which may be another's file, leaves the manifest again.
                manifest.write(plan.vm, uuid, destination_uri, recorded)
                raise
            recorded.append(disk.path)
            created.append(disk.path)
            if vol.path() != disk.path:
                recorded[-1] = vol.path()
                manifest.write(plan.vm, uuid, destination_uri, recorded)
                raise MigrationError(
                    "Cannot %s for VM '%s' on %s: libvirt created it at %s instead" % (action, plan.vm, destination_uri, vol.path()),
                    vm=plan.vm,
                    uri=destination_uri,
                )
        except libvirt.libvirtError as exc:
            raise translate_libvirt_error(exc, action, plan.vm, destination_uri) from exc
    return created


def clean_copies(connect: Connect, manifest: CopyManifest, uuid: str) -> t.Dict[str, t.Any]:
    """Delete the volumes ``manifest`` lists for ``uuid`` on its destination, unless the VM is running or defined there; then drop the manifest.

    Returns what was done (``deleted``, ``kept`` with ``why``), empty when there was no manifest. A
    destination that cannot be reached raises, and the manifest stays for the next run.
    """
    data = manifest.read(uuid)
    if data is None:
        return {}
    uri = data["destination_uri"]
    done: t.Dict[str, t.Any] = {"destination_uri": uri, "deleted": [], "kept": []}
    try:
        with connect(uri) as conn:
            try:
                conn.lookupByUUIDString(uuid)
                done.update(kept=list(data["volumes"]), why="the VM is running or defined on %s: its volumes are its disks" % uri)
            except libvirt.libvirtError as exc:
                if not is_not_found(exc):
                    raise
                for path in data["volumes"]:
                    try:
                        vol = conn.storageVolLookupByPath(path)
                    except libvirt.libvirtError:
                        continue  # never created, or already gone
                    vol.delete(0)
                    done["deleted"].append(path)
    except libvirt.libvirtError as exc:
        raise translate_libvirt_error(exc, "delete the volumes created for a disk copy", data.get("vm"), uri) from exc
    manifest.remove(uuid)
    return done


def leftover_warning(vm: str, found: t.Mapping[str, t.Any]) -> str:
    """Check mode's warning about the manifest ``found`` a lost run left for ``vm``: a real run cleans it first."""
    return "VM '%s' has volumes of an interrupted disk copy recorded on %s (%s); a real run deletes them first, unless the VM is running or defined there" % (
        vm,
        found["destination_uri"],
        ", ".join(found["volumes"]) or "none",
    )


def remove_source_volumes(conn: t.Any, paths: t.Iterable[str], vm: str, uri: str) -> t.Tuple[t.List[str], t.List[str]]:
    """Delete the volumes at ``paths`` on the source ``conn`` (after a verified move); returns the removed paths, and a warning per failure."""
    removed: t.List[str] = []
    problems: t.List[str] = []
    for path in paths:
        try:
            conn.storageVolLookupByPath(path).delete(0)
            removed.append(path)
        except libvirt.libvirtError as exc:
            problems.append("VM '%s' moved, but its copied disk %s could not be removed on %s: %s" % (vm, path, uri, exc.get_error_message()))
    return removed, problems


def disk_paths(dom: t.Any) -> t.Dict[str, t.Optional[str]]:
    """Each disk target of ``dom`` with its path, as libvirt describes the domain now."""
    return {str(disk["target"]): disk["path"] for disk in domxml.parse_requirements(dom.XMLDesc(0))["disks"]}


class DiskCopies:
    """The disk copies of a run's moves: created under their manifest before a move, cleaned after any failure, finished after a verified move.

    ``connect`` opens a libvirt connection by URI (a context manager); ``event`` records what was done
    (the job runner's ``event``: name and details).
    """

    def __init__(self, connect: Connect, state_dir: str, event: t.Callable[..., None]) -> None:
        self.connect = connect
        self.manifest = CopyManifest(state_dir)
        self.event = event

    def leftover(self, uuid: str) -> t.Optional[t.Dict[str, t.Any]]:
        """The manifest a lost run left for the VM ``uuid`` (None: none)."""
        return self.manifest.read(uuid)

    def clean(self, uuid: str) -> t.Dict[str, t.Any]:
        """:func:`clean_copies` for ``uuid``, recorded as the event ``copies_cleaned``; raises when its destination cannot be reached."""
        done = clean_copies(self.connect, self.manifest, uuid)
        if done:
            self.event("copies_cleaned", destination=done.get("destination_uri"), deleted=done.get("deleted"), kept=done.get("kept") or None)
        return done

    def clean_quietly(self, uuid: str) -> t.Optional[str]:
        """:meth:`clean`, for an error already on its way: why the volumes are left, or None."""
        try:
            self.clean(uuid)
        except (MigrationError, libvirt.libvirtError) as cleanup:
            return "%s; the next run deletes them" % getattr(cleanup, "msg", cleanup)
        return None

    def run(self, copies: storage.CopyPlan, move: Move, run: t.Callable[[], t.Dict[str, t.Any]]) -> t.Dict[str, t.Any]:
        """Create the volumes of ``copies`` on ``move``'s destination, then ``run`` the move (the job runner's); on any
        failure, delete them again (unless the VM is there) and add ``copies_left`` to the error when that fails too."""
        uuid = t.cast(str, move.uuid)
        try:
            with self.connect(move.destination_uri) as conn:
                created = create_volumes(conn, copies, self.manifest, uuid, move.destination_uri)
            self.event("volumes_created", destination=move.destination_uri, volumes=created)
            return run()
        except BaseException as exc:
            left = self.clean_quietly(uuid)
            if left and isinstance(exc, MigrationError):
                exc.details["copies_left"] = left
            raise

    def finish(
        self, copies: storage.CopyPlan, uuid: str, source_uri: str, destination_uri: str, remove_source: bool
    ) -> t.Tuple[t.Dict[str, t.Any], t.List[str]]:
        """After a verified move: the manifest dropped, the disks as the destination shows the VM, the copied source
        volumes removed (``remove_source``, and only when the destination names every copied path) or kept; and warnings.

        The move is done: nothing here fails it, every problem is a warning.
        """
        self.manifest.remove(uuid)
        warnings: t.List[str] = []
        paths = [disk.path for disk in copies.disks]
        removed: t.List[str] = []
        there: t.Optional[t.Dict[str, t.Optional[str]]] = None
        try:
            with self.connect(destination_uri) as conn:
                there = disk_paths(conn.lookupByUUIDString(uuid))
        except (MigrationError, libvirt.libvirtError) as exc:
            warnings.append("VM '%s' moved, but its disks cannot be read on %s: %s" % (copies.vm, copies.destination, getattr(exc, "msg", exc)))
        elsewhere = [disk.target for disk in copies.disks if there is not None and there.get(disk.target) != disk.path]
        if elsewhere:
            warnings.append("VM '%s' runs on %s, but its disk(s) %s do not name the copied paths there" % (copies.vm, copies.destination, ", ".join(elsewhere)))
        if remove_source and there is not None and not elsewhere:
            try:
                with self.connect(source_uri) as conn:
                    removed, problems = remove_source_volumes(conn, paths, copies.vm, source_uri)
                warnings.extend(problems)
            except MigrationError as exc:
                warnings.append("VM '%s' moved, but its copied disks could not be removed on the source: %s" % (copies.vm, exc.msg))
        elif remove_source:
            warnings.append("VM '%s' moved, but its copied disks are kept on the source: the destination's disks could not be checked" % copies.vm)
        if removed:
            self.event("source_disks_removed", volumes=removed)
        return {
            "disks": copies.as_list(),
            "destination_disks": there,
            "source_disks_removed": removed,
            "source_disks_kept": [path for path in paths if path not in removed],
        }, warnings
