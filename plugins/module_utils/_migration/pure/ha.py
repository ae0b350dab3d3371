# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""High availability: the rules of restarting a failed host's VMs elsewhere, and the store that keeps
their definitions on the cluster's shared storage.

A highly available VM (setting ``high_availability``) must have every disk on the shared storage, a
directory every host mounts at the same path (:func:`disks_off_shared_storage`). Its definition is
kept in the store (:class:`HaStore`) under ``SHARED/virtops-ha``, so that it can be read while its
host is dead::

    vms/UUID.xml        the VM's definition (domain XML)
    vms/UUID.host       the host it last started on, or was last seen running on (one line)
    hosts/HOST.json     the VMs a host had when it was last read (every VM, for the list of those left down)
    stale/HOST/UUID     the VM was restarted elsewhere after HOST was fenced: HOST's definition is stale
    locking/HOST.json   HOST runs libvirt's lockd lock manager with its lockspace on the shared storage

Directories are 0700 and files 0600, root's; every write is atomic (``statefiles``). The hosts'
maintenance hook (role ``maintenance_hook``) writes ``vms/`` when an HA VM starts and refuses to start
a VM listed under ``stale/`` for its host, in the same format.

A host has failed only when neither libvirt nor SSH answered in any of a number of checks. Before a
failed host's VMs start elsewhere it is fenced: its fence command (fence-agents conventions: the
action given as ``-o off`` / ``-o status``; the status exits 0 when on, 2 when off) must report it
powered off. Without a fence command, a restart relies on disk leases only when asked to (``lease``)
and when the failed host and the destination both run lockd on the shared lockspace: libvirt then
refuses the start while the old QEMU still holds the disks. Pure logic and file I/O: no libvirt.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import typing as t

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import statefiles
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.domain import looks_like_uuid, parse_requirements
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import MigrationError
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.plan import Candidate
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.settings import PRIORITY_RANK

STORE_DIR = "virtops-ha"
LOCKSPACE_DIR = "virtops-lockd"
SETTING = "high_availability"

# The two events, worded as the reference's audit log words them.
EVENT_FAILED = "Highly Available %s failed. It will be restarted automatically."
EVENT_RESTARTED = "%s was restarted on Host %s."

# What a failed host's fence came to.
CONFIRMED_OFF = "confirmed_off"
FENCE_FAILED = "failed"
NOT_CONFIGURED = "not_configured"
NOT_NEEDED = "not_needed"
WOULD_FENCE = "would_fence"

# fence-agents' status exit codes.
STATUS_ON = 0
STATUS_OFF = 2

# What a failed host without a fence command allows.
WITHOUT_FENCE = ("refuse", "lease")

# Rule ids of a VM that is not restarted.
RULE_FENCE = "fence"
RULE_LEASE = "lease"
RULE_PLACEMENT = "placement"
RULE_START = "start"
RULE_STORE = "store"
RULE_UNVERIFIED = "unverified"

# Host names become file names in the store.
_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,252}\Z")


class HaError(MigrationError):
    """High availability cannot be used as asked (bad input, no shared storage); nothing was changed."""


def event(kind: str, vm: str, host: str, when: str) -> t.Dict[str, str]:
    """One audit event: ``failed`` (a VM of a failed host will restart) or ``restarted`` (on ``host``)."""
    message = EVENT_FAILED % vm if kind == "failed" else EVENT_RESTARTED % (vm, host)
    return {"time": when, "event": kind, "vm": vm, "host": host, "message": message}


def check_host_name(name: str) -> str:
    """``name`` if it can name a file in the store, else :class:`HaError`."""
    if not isinstance(name, str) or not _HOST_NAME.match(name) or name in (".", ".."):
        raise HaError("host name %r cannot be used in the high-availability store (letters, digits and _.:@- only)" % (name,))
    return name


def check_uuid(uuid: str) -> str:
    """A VM UUID in the store's spelling (lower case), else :class:`HaError`."""
    if not isinstance(uuid, str) or not looks_like_uuid(uuid):
        raise HaError("%r is not a VM UUID" % (uuid,))
    return uuid.lower()


def check_shared_storage(path: t.Any) -> str:
    """The shared storage path, normalised; refused when missing, relative, or not an existing directory."""
    if not path:
        raise HaError("no shared storage is configured (option shared_storage, inventory variable virtops_shared_storage)")
    if not isinstance(path, str) or not os.path.isabs(path):
        raise HaError("shared_storage must be an absolute path, got %r" % (path,))
    normal = os.path.normpath(path)
    if not os.path.isdir(normal):
        raise HaError("the shared storage %s is not a directory on this host (is it mounted?)" % normal)
    return normal


def on_shared_storage(path: str, root: str) -> bool:
    """Whether ``path`` lies under the shared storage ``root``."""
    path = os.path.normpath(path)
    return path == root or path.startswith(root.rstrip("/") + "/")


def disks_off_shared_storage(domain_xml: str, shared: str) -> t.List[str]:
    """Each disk of the VM that is not on the shared storage ``shared``, described (empty: all are).

    A file or block source must lie under ``shared``; a network disk (RBD, iSCSI, NBD, ...) is shared
    storage of its own; a drive with no medium needs nothing. A pool volume, a directory or an NVMe
    disk cannot be checked, and counts as not shared.
    """
    problems = []
    for disk in parse_requirements(domain_xml)["disks"]:
        kind = disk.get("type")
        target = disk.get("target") or "?"
        if kind == "network":
            continue
        if kind in ("file", "block"):
            if not disk.get("path"):
                continue
            if not on_shared_storage(disk["path"], shared):
                problems.append("%s (%s)" % (target, disk["path"]))
            continue
        problems.append("%s (a %s disk, which cannot be checked)" % (target, kind or "typeless"))
    return problems


def refuse_unless_shared(vm: str, domain_xml: str, shared: t.Optional[str]) -> None:
    """:class:`HaError` unless every disk of ``vm`` is on the shared storage."""
    if not shared:
        raise HaError(
            "VM '%s' cannot be made highly available: no shared storage is configured (option shared_storage, "
            "inventory variable virtops_shared_storage)" % vm,
            vm=vm,
        )
    outside = disks_off_shared_storage(domain_xml, shared)
    if outside:
        raise HaError(
            "VM '%s' cannot be made highly available: its disk(s) %s are not on the shared storage %s, so no other "
            "host could start it" % (vm, ", ".join(outside), shared),
            vm=vm,
        )


def restart_order(vms: t.Iterable[t.Mapping[str, t.Any]]) -> t.List[t.Mapping[str, t.Any]]:
    """VMs to restart in priority order (high first), then by name."""
    return sorted(vms, key=lambda vm: (PRIORITY_RANK.get(vm.get("priority") or "medium", 1), vm.get("vm") or ""))


def fence_status(returncode: t.Optional[int]) -> t.Optional[bool]:
    """What a fence status command's exit code says: True powered off, False on, None unknown."""
    if returncode == STATUS_OFF:
        return True
    if returncode == STATUS_ON:
        return False
    return None


def fence_argv(command: t.Sequence[str], action: str) -> t.List[str]:
    """The fence command for ``action`` (off, status), fence-agents style."""
    return list(command) + ["-o", action]


@dataclasses.dataclass(frozen=True)
class HaHost:
    """A host of the cluster as ha_recover knows it: where its libvirt and its SSH are, and how to fence it."""

    name: str
    candidate: Candidate
    ssh_host: str
    ssh_port: int = 22
    fence_command: t.Tuple[str, ...] = ()

    @property
    def uri(self) -> str:
        return self.candidate.uri


def missing_fence_programs(hosts: t.Sequence[HaHost], which: t.Callable[[str], t.Optional[str]]) -> t.List[str]:
    """Each host whose fence command's program cannot be found (``which`` finds a program), described."""
    missing = []
    for host in hosts:
        if host.fence_command and which(host.fence_command[0]) is None:
            missing.append("%s (%s)" % (host.name, host.fence_command[0]))
    return missing


@dataclasses.dataclass
class Reachability:
    """What the checks of one host found: how many were made, and whether libvirt or SSH ever answered."""

    checks: int = 0
    libvirt: bool = False
    ssh: bool = False
    errors: t.List[str] = dataclasses.field(default_factory=list)

    @property
    def answered(self) -> bool:
        return self.libvirt or self.ssh

    def failed(self, required_checks: int) -> bool:
        """Failed: neither libvirt nor SSH answered in any of at least ``required_checks`` checks."""
        return not self.answered and self.checks >= required_checks


class HaStore:
    """The high-availability store on the shared storage (see the module docstring).

    With ``dry_run`` (check mode) nothing is written: each write only says whether it would change the store.
    """

    def __init__(self, shared: str, dry_run: bool = False) -> None:
        self.shared = shared
        self.root = os.path.join(shared, STORE_DIR)
        self.dry_run = dry_run

    def _dir(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def exists(self) -> bool:
        return os.path.isdir(self.root)

    def check(self) -> None:
        """Refuse a store directory another user could change (a missing one is fine)."""
        for directory in (self.root, self._dir("vms"), self._dir("hosts"), self._dir("stale"), self._dir("locking")):
            statefiles.check_directory(directory)

    # -- definitions and where each VM last ran
    def definition(self, uuid: str) -> t.Optional[str]:
        return statefiles.read_text(self._dir("vms"), "%s.xml" % check_uuid(uuid))

    def location(self, uuid: str) -> t.Optional[str]:
        text = statefiles.read_text(self._dir("vms"), "%s.host" % check_uuid(uuid))
        return text.strip() or None if text is not None else None

    def uuids(self) -> t.List[str]:
        """The UUIDs of the VMs with a definition in the store."""
        try:
            names = os.listdir(self._dir("vms"))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise HaError("cannot list the high-availability store %s: %s" % (self._dir("vms"), exc)) from exc
        return sorted(name[:-4] for name in names if name.endswith(".xml") and looks_like_uuid(name[:-4]))

    def write_definition(self, uuid: str, xml: str) -> bool:
        """Keep ``xml`` as the VM's definition; False when the store already held exactly it."""
        uuid = check_uuid(uuid)
        if self.definition(uuid) == xml:
            return False
        if self.dry_run:
            return True
        statefiles.ensure_directory(self.root)
        statefiles.write_text(self._dir("vms"), "%s.xml" % uuid, xml)
        return True

    def write_location(self, uuid: str, host: str) -> bool:
        uuid = check_uuid(uuid)
        if self.location(uuid) == check_host_name(host):
            return False
        if self.dry_run:
            return True
        statefiles.ensure_directory(self.root)
        statefiles.write_text(self._dir("vms"), "%s.host" % uuid, host + "\n")
        return True

    def forget(self, uuid: str) -> bool:
        """Remove a VM from the store (it is no longer highly available, or no longer exists)."""
        uuid = check_uuid(uuid)
        removed = False
        for name in ("%s.xml" % uuid, "%s.host" % uuid):
            if self.dry_run:
                removed = removed or statefiles.exists(self._dir("vms"), name)
            elif os.path.isdir(self._dir("vms")) and statefiles.remove(self._dir("vms"), name):
                removed = True
        return removed

    # -- what each host had
    def listing(self, host: str) -> t.Optional[t.Dict[str, t.Any]]:
        data = statefiles.read_json(self._dir("hosts"), "%s.json" % check_host_name(host))
        return data if isinstance(data, dict) else None

    def write_listing(self, host: str, vms: t.Sequence[t.Mapping[str, t.Any]], now: float) -> bool:
        """Record the VMs of ``host``; False when the record already listed exactly them."""
        entries = sorted((dict(vm) for vm in vms), key=lambda vm: (vm.get("name") or "", vm.get("uuid") or ""))
        old = self.listing(host)
        if old is not None and old.get("vms") == entries:
            return False
        if self.dry_run:
            return True
        statefiles.ensure_directory(self.root)
        statefiles.write_json(self._dir("hosts"), "%s.json" % check_host_name(host), {"host": host, "seen_at": int(now), "vms": entries})
        return True

    # -- stale definitions on fenced hosts
    def stale(self, host: str) -> t.Dict[str, t.Dict[str, t.Any]]:
        """The VMs restarted elsewhere after ``host`` was fenced, by UUID, with their records."""
        directory = self._dir("stale", check_host_name(host))
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise HaError("cannot list %s: %s" % (directory, exc)) from exc
        result = {}
        for name in sorted(names):
            if not looks_like_uuid(name):
                continue
            text = statefiles.read_text(directory, name) or ""
            try:
                record = json.loads(text) if text.strip() else {}
            except ValueError:
                record = {}
            result[name.lower()] = record if isinstance(record, dict) else {}
        return result

    def mark_stale(self, host: str, uuid: str, record: t.Mapping[str, t.Any]) -> None:
        statefiles.ensure_directory(self.root)
        statefiles.ensure_directory(self._dir("stale"))
        statefiles.write_json(self._dir("stale", check_host_name(host)), check_uuid(uuid), dict(record))

    def clear_stale(self, host: str, uuid: str) -> bool:
        directory = self._dir("stale", check_host_name(host))
        return os.path.isdir(directory) and statefiles.remove(directory, check_uuid(uuid))

    # -- lock manager records
    def locking(self, host: str) -> t.Optional[t.Dict[str, t.Any]]:
        data = statefiles.read_json(self._dir("locking"), "%s.json" % check_host_name(host))
        return data if isinstance(data, dict) and data.get("lock_manager") else None
