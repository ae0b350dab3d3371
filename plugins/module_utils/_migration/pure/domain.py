# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""Finding a VM on a host, reading what we need from its domain XML, and checking it again before a write.

The XML readers are pure (no libvirt import); :func:`lookup_domain`, :func:`find_domain`,
:func:`describe_domain`, :func:`observe` and :func:`recheck` take an open ``virConnect`` /
``virDomain`` and use only their methods.

Every read-modify-write of a domain in the collection (a ``defineXML`` of an edited definition, a live
attach or detach, a metadata write) reads the domain with :func:`observe` and calls :func:`recheck`
right before each write: the VM must still be on that host, in the state it was read in, with no
libvirt job (a migration) running. A VM that is leaving must not get a definition on the host it
leaves (that definition does not travel with it, or becomes a second one).
"""

from __future__ import annotations

import collections
import re
import typing as t
import xml.etree.ElementTree as ET

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import failover, metadata
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import settings as vm_settings
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import (
    VmChangedError,
    VmNotFoundError,
    is_not_found,
    is_unsupported,
    translate_libvirt_error,
)

# virDomainState values and the words ``virsh domstate`` uses for them.
STATE_NAMES: t.Dict[int, str] = {
    0: "no state",
    1: "running",
    2: "idle",
    3: "paused",
    4: "in shutdown",
    5: "shut off",
    6: "crashed",
    7: "pmsuspended",
}

# Why a domain is in its state (the second item of virDomain.state()), for the states a migration
# run cares about: virDomainRunningReason, virDomainPausedReason, virDomainShutoffReason.
STATE_REASONS: t.Dict[int, t.Dict[int, str]] = {
    1: {
        0: "unknown",
        1: "booted",
        2: "migrated",
        3: "restored",
        4: "from snapshot",
        5: "unpaused",
        6: "migration cancelled",
        7: "save cancelled",
        8: "wakeup",
        9: "crashed",
        10: "post-copy",
        11: "post-copy failed",
    },
    3: {
        0: "unknown",
        1: "user",
        2: "migration",
        3: "save",
        4: "dump",
        5: "I/O error",
        6: "watchdog",
        7: "from snapshot",
        8: "shutting down",
        9: "snapshot",
        10: "crashed",
        11: "starting up",
        12: "post-copy",
        13: "post-copy failed",
        14: "API error",
    },
    5: {
        0: "unknown",
        1: "shutdown",
        2: "destroyed",
        3: "crashed",
        4: "migrated",
        5: "saved",
        6: "failed",
        7: "from snapshot",
        8: "daemon",
    },
}

# virDomainXMLFlags: what a read-modify-define reads, so that the define keeps the secure fields
# (graphics passwords and the like; without XML_SECURE libvirt leaves them out, and the define drops them).
XML_SECURE = 1
XML_INACTIVE = 2
# virDomainJobType: no job runs (any other type is a job under way).
JOB_NONE = 0
# virDomainJobOperation: what a running job does (libvirt reports it in jobStats), as words.
JOB_OPERATIONS: t.Dict[int, str] = {
    0: "unknown operation",
    1: "start",
    2: "save",
    3: "restore",
    4: "incoming migration",
    5: "outgoing migration",
    6: "snapshot",
    7: "snapshot revert",
    8: "dump",
    9: "backup",
    10: "snapshot delete",
}

# Multipliers to bytes for the ``unit`` attribute of libvirt scaled integers (docs: formatdomain).
_UNIT_BYTES: t.Dict[str, int] = {
    "b": 1,
    "bytes": 1,
    "kb": 1000,
    "k": 1024,
    "kib": 1024,
    "mb": 1000**2,
    "m": 1024**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "g": 1024**3,
    "gib": 1024**3,
    "tb": 1000**4,
    "t": 1024**4,
    "tib": 1024**4,
    "pb": 1000**5,
    "p": 1024**5,
    "pib": 1024**5,
    "eb": 1000**6,
    "e": 1024**6,
    "eib": 1024**6,
}

_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\Z")

MIB = 1024**2

# Disk cache modes that keep no dirty data in the source host's page cache, so a live migration
# cannot lose writes: ``none`` and ``directsync`` (both O_DIRECT).
SAFE_CACHE_MODES = ("none", "directsync")


def state_name(state: int) -> str:
    """The ``virsh`` word for a ``virDomainState`` value ("unknown (N)" for values libvirt may add)."""
    return STATE_NAMES.get(state, "unknown (%d)" % state)


def state_reason(state: int, reason: int) -> str:
    """The word for why a domain is running, paused or shut off (``"unknown"`` otherwise)."""
    return STATE_REASONS.get(state, {}).get(reason, "unknown")


def scaled_bytes(element: t.Optional[ET.Element], default_unit: str = "KiB") -> t.Optional[int]:
    """Bytes in a libvirt scaled integer such as ``<memory unit='KiB'>131072</memory>``."""
    if element is None or element.text is None or not element.text.strip():
        return None
    unit = (element.get("unit") or default_unit).lower()
    if unit not in _UNIT_BYTES:
        raise ValueError("unknown unit %r in <%s>" % (element.get("unit"), element.tag))
    return int(element.text.strip()) * _UNIT_BYTES[unit]


def to_mib(value: t.Optional[int]) -> t.Optional[int]:
    """Bytes to whole MiB, rounded down (``None`` stays ``None``)."""
    return None if value is None else value // MIB


def looks_like_uuid(text: str) -> bool:
    """True for a UUID in libvirt's string form (with or without dashes)."""
    return bool(_UUID.match(text))


def parse_domain_xml(domain_xml: str) -> t.Dict[str, t.Any]:
    """The facts this collection uses from a domain XML document (live or persistent).

    ``migration_settings`` are the VM's own readable settings (``{}`` without migration metadata) and
    ``priority`` its own priority (the default when unset or unreadable). Each setting is read on its
    own (``settings.readable``): unreadable ones are left out and listed, with the reason, in
    ``migration_settings_problems`` (and as one sentence in ``migration_settings_error``); when the
    migration mode or the pinned hosts cannot be read, ``migration_mode`` is ``none``.
    """
    root = ET.fromstring(domain_xml)
    vcpu = root.find("vcpu")
    max_vcpus = int(vcpu.text.strip()) if vcpu is not None and vcpu.text and vcpu.text.strip() else None
    current_vcpus = vcpu.get("current") if vcpu is not None else None
    os_type = root.find("os/type")
    cpu = root.find("cpu")
    memory = scaled_bytes(root.find("memory"))
    current_memory = scaled_bytes(root.find("currentMemory"))
    domain_id = root.get("id")
    facts: t.Dict[str, t.Any] = {
        "name": root.findtext("name"),
        "uuid": root.findtext("uuid"),
        "id": int(domain_id) if domain_id is not None and domain_id.isdigit() else None,
        "domain_type": root.get("type"),
        "arch": os_type.get("arch") if os_type is not None else None,
        "machine": os_type.get("machine") if os_type is not None else None,
        "cpu_mode": (cpu.get("mode") or "custom") if cpu is not None else None,
        "vcpus": int(current_vcpus) if current_vcpus else max_vcpus,
        "max_vcpus": max_vcpus,
        "memory_mib": to_mib(memory),
        "current_memory_mib": to_mib(current_memory if current_memory is not None else memory),
    }
    try:
        stored = metadata.from_domain_element(root)
        error = None
    except metadata.MetadataFormatError as exc:
        stored, error = {}, str(exc)
    usable, problems = vm_settings.readable(stored, error)
    facts.update(migration_settings=usable, priority=usable.get("priority") or vm_settings.DEFAULTS["priority"])
    if usable.get("priority") == vm_settings.INHERIT:
        facts["priority"] = vm_settings.DEFAULTS["priority"]
    if problems:
        facts["migration_settings_problems"] = problems
        facts["migration_settings_error"] = vm_settings.describe_problems(problems)
    placement = metadata.placement_record(root)
    if placement:
        facts["placement"] = placement
    return facts


def find_domain(conn: t.Any, vm: str) -> t.Optional[t.Any]:
    """The ``virDomain`` named ``vm`` (a name or a UUID), or ``None`` when there is none.

    A UUID-shaped string is looked up only as a UUID, anything else only as a name: a VM is never
    taken for another whose name happens to be the UUID given.
    """
    uri = _connection_uri(conn)
    lookup = conn.lookupByUUIDString if looks_like_uuid(vm) else conn.lookupByName
    try:
        return lookup(vm)
    except Exception as exc:  # pylint: disable=broad-exception-caught
        if is_not_found(exc):
            return None
        raise translate_libvirt_error(exc, "look up the domain", vm=vm, uri=uri) from exc


def lookup_domain(conn: t.Any, vm: str) -> t.Any:
    """The ``virDomain`` named ``vm`` (a name or a UUID); :class:`VmNotFoundError` when absent."""
    domain = find_domain(conn, vm)
    if domain is None:
        uri = _connection_uri(conn)
        raise VmNotFoundError(
            "VM '%s' does not exist on %s (looked up by %s)."
            % (vm, uri, "UUID" if looks_like_uuid(vm) else "name"),
            vm=vm,
            uri=uri,
        )
    return domain


def describe_domain(domain: t.Any, uri: t.Optional[str] = None, xml: t.Optional[str] = None) -> t.Dict[str, t.Any]:
    """Facts about one domain: its XML facts plus state, persistence and autostart from libvirt.

    ``xml`` is the domain XML when the caller has already read it. Raises a translated
    :class:`~.errors.MigrationError` (a :class:`VmNotFoundError` when the domain vanished meanwhile,
    for example because it was migrated away).
    """
    try:
        if xml is None:
            xml = domain.XMLDesc(0)
        state, reason = domain.state()[:2]
        active = bool(domain.isActive())
        persistent = bool(domain.isPersistent())
        # A transient domain has no autostart flag; libvirt answers 0 for it.
        autostart = bool(domain.autostart()) if persistent else False
    except Exception as exc:  # pylint: disable=broad-exception-caught
        raise translate_libvirt_error(exc, "read the domain", vm=_domain_name(domain), uri=uri) from exc
    facts = parse_domain_xml(xml)
    facts.update(
        {
            "state": state_name(state),
            "state_reason": state_reason(state, reason),
            "active": active,
            "persistent": persistent,
            "autostart": autostart,
        }
    )
    return facts


class Seen(t.NamedTuple):
    """A domain as a read-modify-write read it; :func:`recheck` holds the host to it before each write."""

    uuid: str
    name: str
    active: bool
    persistent: bool


def observe(domain: t.Any, uri: t.Optional[str] = None) -> Seen:
    """What :func:`recheck` compares later: the domain's UUID, name, and whether it is active and persistent.

    Read it together with the XML the write is based on (before or right after it).
    """
    try:
        return Seen(str(domain.UUIDString()), str(domain.name()), bool(domain.isActive()), bool(domain.isPersistent()))
    except Exception as exc:  # pylint: disable=broad-exception-caught
        raise translate_libvirt_error(exc, "read the domain", vm=_domain_name(domain), uri=uri) from exc


def running_job(domain: t.Any) -> t.Optional[t.Dict[str, t.Any]]:
    """The domain's current libvirt job (``jobStats``, else ``jobInfo``), or ``None`` when none runs.

    Only for an active domain (libvirt has no job information for an inactive one). libvirt errors
    propagate: the caller decides what a job it cannot read means.
    """
    try:
        stats = domain.jobStats(0)
    except Exception as exc:  # pylint: disable=broad-exception-caught
        if not is_unsupported(exc):
            raise
        info = domain.jobInfo()
        stats = {"type": info[0], "time_elapsed": info[1]}
    if not stats or stats.get("type", JOB_NONE) == JOB_NONE:
        return None
    return dict(stats)


def job_words(job: t.Mapping[str, t.Any]) -> str:
    """A running job for a message: "outgoing migration, running for 12 s"."""
    operation = job.get("operation")
    words = JOB_OPERATIONS.get(operation, "operation %s" % operation) if operation is not None else "a job of unknown kind"
    elapsed = job.get("time_elapsed")
    if isinstance(elapsed, int) and elapsed > 0:
        words += ", running for %d s" % (elapsed // 1000)
    return words


def _state_words(active: bool, persistent: bool, state: t.Optional[str] = None) -> str:
    if active:
        activity = "active (%s)" % state if state and state != "shut off" else "active"
    else:
        activity = "shut off"
    return "%s and %s" % (activity, "persistent" if persistent else "transient")


def recheck(
    conn: t.Any,
    seen: Seen,
    action: str,
    uri: t.Optional[str] = None,
    definition: t.Optional[str] = None,
    nothing_changed: bool = True,
) -> t.Any:
    """Right before a write to a domain: its fresh ``virDomain`` when it is still as ``seen`` was read.

    On ``conn`` (the connection the write goes through) the domain with ``seen.uuid`` must still exist
    (``lookupByUUIDString``: not migrated away, not undefined), still be active or inactive, persistent
    or transient as it was, and, when active, run no libvirt job (``jobStats`` type not NONE: a
    migration, save, snapshot ...; a job that cannot be read counts as one). With ``definition``, its
    persistent definition (inactive XML with secure fields) must still be that text: nobody defined it
    meanwhile.

    Otherwise raises :class:`~.errors.VmChangedError` naming the VM, the host, what changed and
    ``action`` (a verb phrase: "write pair net1 into the persistent definition"), which the caller must then not do.
    The message ends with "Nothing was changed." unless ``nothing_changed`` is false (a write of the
    same run came before; the caller says what it did).

    A small window stays between this check and the write (libvirt offers no lock across calls);
    call it immediately before each write.
    """
    host = _connection_host(conn)
    where = "host %s (%s)" % (host, uri) if host and uri and host not in uri else (uri or host or "this host")
    details: t.Dict[str, t.Any] = {"vm": seen.name, "uri": uri, "host": host, "uuid": seen.uuid}

    def refuse(reason: str, why: str, **extra: t.Any) -> VmChangedError:
        msg = "Cannot %s for VM '%s' on %s: %s." % (action, seen.name, where, why)
        if nothing_changed:
            msg += " Nothing was changed."
        return VmChangedError(msg, reason=reason, **dict(details, **extra))

    gone = refuse(
        "gone",
        "it is no longer on this host (no domain with UUID %s: it was migrated away or undefined since this run read it); "
        "run the task against the host it is on now" % seen.uuid,
    )
    try:
        fresh = conn.lookupByUUIDString(seen.uuid)
        active = bool(fresh.isActive())
        persistent = bool(fresh.isPersistent())
        state = state_name(fresh.state()[0]) if active else "shut off"
    except Exception as exc:  # pylint: disable=broad-exception-caught
        if is_not_found(exc):
            raise gone from exc
        raise translate_libvirt_error(exc, "look up the VM again before it is changed", vm=seen.name, uri=uri) from exc
    if (active, persistent) != (seen.active, seen.persistent):
        raise refuse(
            "state",
            "it changed since this run read it: it was %s, it is now %s"
            % (_state_words(seen.active, seen.persistent), _state_words(active, persistent, state)),
            was_active=seen.active,
            was_persistent=seen.persistent,
            active=active,
            persistent=persistent,
        )
    if active:
        try:
            job = running_job(fresh)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            if is_not_found(exc):
                raise gone from exc
            raise refuse(
                "job",
                "whether a libvirt job (a migration) runs on it cannot be read (libvirt: %s); nothing is written while one may be"
                % (str(exc).strip() or type(exc).__name__),
            ) from exc
        if job is not None:
            raise refuse(
                "job",
                "a libvirt job runs on it (%s); a change written now could be lost with a migration, or land on a host the VM "
                "is leaving. Run again once the job has ended, against the host the VM is on then" % job_words(job),
                job_operation=JOB_OPERATIONS.get(job.get("operation", -1)),
                job_type=job.get("type"),
            )
    if definition is not None and persistent:
        try:
            current = fresh.XMLDesc(XML_INACTIVE | XML_SECURE)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            if is_not_found(exc):
                raise gone from exc
            raise translate_libvirt_error(exc, "read the persistent definition again before it is changed", vm=seen.name, uri=uri) from exc
        if current != definition:
            raise refuse("definition", "its persistent definition was changed by someone else since this run read it")
    return fresh


def _connection_host(conn: t.Any) -> t.Optional[str]:
    try:
        return str(conn.getHostname())
    except Exception:  # pylint: disable=broad-exception-caught
        return None


def _domain_name(domain: t.Any) -> t.Optional[str]:
    try:
        return str(domain.name())
    except Exception:  # pylint: disable=broad-exception-caught
        return None


def _connection_uri(conn: t.Any) -> t.Optional[str]:
    try:
        return str(conn.getURI())
    except Exception:  # pylint: disable=broad-exception-caught
        return None


def parse_requirements(domain_xml: str) -> t.Dict[str, t.Any]:
    """What a destination must offer the VM, from its domain XML.

    ``networks``: libvirt networks its interfaces use; ``bridges``: host bridges they attach to;
    ``disks``: each disk with its target, source path, cache mode, whether it must be visible on the
    destination (``shared_storage``: a file or block source) and whether its cache mode makes a live
    migration unsafe (``unsafe_cache``: a writable disk whose cache is neither ``none`` nor ``directsync``), its ``format``
    (the driver type), whether it has a ``backing`` file (a ``<backingStore>`` with a source) and, for a pool
    volume (type ``volume``), its ``pool`` and ``volume`` names (``storage.py`` reads them); ``cpu_xml``: the
    ``<cpu>`` element to compare with a destination's hypervisor CPU (``None`` when the domain has
    none, or passes the host CPU through, which only an identical host can check).

    Assigned host devices (``failover.py``): ``unmovable_devices`` describes each one that blocks a
    live move; ``failover_primaries`` the devices QEMU unplugs itself when a live migration starts
    (teaming); ``bond_vfs`` the bond-mode failover pairs whose VF is plugged in; ``vf_networks`` how
    many VFs a running VM draws from each libvirt hostdev network (its live XML shows them);
    ``vf_addresses`` the host PCI addresses of the VFs of failover pairs with a fixed address
    (``vf_address``) whose VF is in the XML: a destination must have each as a free SR-IOV VF.
    """
    root = ET.fromstring(domain_xml)
    devices = root.find("devices")
    networks: t.List[str] = []
    bridges: t.List[str] = []
    vf_networks: t.List[str] = []
    disks: t.List[t.Dict[str, t.Any]] = []
    for interface in devices.findall("interface") if devices is not None else []:
        source = interface.find("source")
        if source is None:
            continue
        if interface.get("type") == "network" and source.get("network"):
            networks.append(source.get("network", ""))
            actual = interface.find("actual")
            if actual is not None and actual.get("type") == "hostdev":
                # A running VM's VF from a hostdev network: the destination must have a free one.
                vf_networks.append(source.get("network", ""))
        elif interface.get("type") == "bridge" and source.get("bridge"):
            bridges.append(source.get("bridge", ""))
    for disk in devices.findall("disk") if devices is not None else []:
        source = disk.find("source")
        driver = disk.find("driver")
        target = disk.find("target")
        path = None
        if source is not None:
            path = source.get("file") or source.get("dev")
        backing = disk.find("backingStore")
        readonly = disk.find("readonly") is not None or disk.get("device") in ("cdrom", "floppy")
        cache = driver.get("cache") if driver is not None else None
        disks.append(
            {
                "target": target.get("dev") if target is not None else None,
                "device": disk.get("device", "disk"),
                "type": disk.get("type"),
                "path": path,
                "cache": cache,
                "readonly": readonly,
                "shared_storage": bool(path) and disk.get("type") in ("file", "block"),
                "unsafe_cache": bool(path) and not readonly and cache not in SAFE_CACHE_MODES,
                "format": driver.get("type") if driver is not None else None,
                "backing": backing is not None and backing.find("source") is not None,
                "pool": source.get("pool") if source is not None else None,
                "volume": source.get("volume") if source is not None else None,
            }
        )
    cpu = root.find("cpu")
    cpu_xml = None
    if cpu is not None and cpu.get("mode", "custom") != "host-passthrough" and cpu.find("model") is not None:
        cpu_xml = ET.tostring(cpu, encoding="unicode")
    pairs = failover.read_pairs(domain_xml)
    return {
        "networks": sorted(set(networks)),
        "bridges": sorted(set(bridges)),
        "disks": disks,
        "cpu_xml": cpu_xml,
        "unmovable_devices": failover.unmovable_devices(domain_xml),
        "failover_primaries": failover.failover_primaries(domain_xml),
        "bond_vfs": sorted(pair.name for pair in pairs if pair.mode == "bond" and pair.vf_present),
        "vf_networks": dict(collections.Counter(vf_networks)),
        "vf_addresses": sorted({pair.vf_address for pair in pairs if pair.vf_present and pair.vf_address}),
    }
