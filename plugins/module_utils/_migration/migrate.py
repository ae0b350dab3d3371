# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""Running one migration: preflight checks, the libvirt job, its monitoring and schedule, cancel.

The task runs on (or connects to) the source host. The source libvirtd drives the migration
peer-to-peer to the destination's libvirt URI, so that URI must be the one the source host uses to
reach the destination (the inventory's ``virtops_libvirt_uri``).

Safety: whatever happens, the VM ends up running on exactly one host. A failed or aborted job leaves
it running on the source (resumed if the schedule had suspended it); nothing is undefined unless
libvirt reports the migration complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
import typing as t

from ansible_collections.virtops.migration.plugins.module_utils._migration import domain as domxml
from ansible_collections.virtops.migration.plugins.module_utils._migration import placement, settings, statefiles
from ansible_collections.virtops.migration.plugins.module_utils._migration.connection import libvirt_connection
from ansible_collections.virtops.migration.plugins.module_utils._migration.errors import (
    DuplicateVmError,
    MigrationError,
    OperationCancelledError,
    VmNotFoundError,
    is_not_found,
    is_unsupported,
    unexpected_error,
    libvirt_error_code,
    translate_libvirt_error,
    VIR_ERR_OPERATION_INVALID,
)
from ansible_collections.virtops.migration.plugins.module_utils._migration.hostinfo import host_memory, parse_capabilities
from ansible_collections.virtops.migration.plugins.module_utils._migration.policy import (
    Policy,
    PolicyError,
    check_number,
    ScheduleTracker,
    OVERRIDES,
    Step,
    apply_overrides,
    base_policy,
    default_timeout,
)

try:
    import libvirt
except ImportError:  # reported by the module through missing_required_lib
    pass

MIB = 1024 * 1024
PROGRESS_EVERY_S = 5.0
CANCEL_WAIT_S = 60.0
# How long reading the destination back after a failure waits for it to answer.
OBSERVE_CONNECT_TIMEOUT_S = 10.0

# virDomainJobType / virDomainJobOperation values read from job statistics.
JOB_NONE = 0
JOB_OPERATION_MIGRATION_OUT = 5


@dataclasses.dataclass
class Candidate:
    """A possible destination: its libvirt URI as the source reaches it, and what the caller knows of it."""

    uri: str
    name: t.Optional[str] = None
    maintenance: bool = False
    memory_reserved_mib: t.Optional[int] = None


@dataclasses.dataclass
class Request:
    """Everything one ``vm_migrate`` run was asked to do."""

    vm: str
    source_uri: str
    candidates: t.List[Candidate]
    policy: Policy
    auto: bool = False
    # Other hosts the VM may already be on (a repeat run, or a job a lost run left running).
    elsewhere: t.List[Candidate] = dataclasses.field(default_factory=list)
    policy_option: t.Any = None
    overrides: t.Dict[str, t.Any] = dataclasses.field(default_factory=dict)
    cluster_policy: t.Dict[str, t.Any] = dataclasses.field(default_factory=dict)
    global_policy: t.Dict[str, t.Any] = dataclasses.field(default_factory=dict)
    migrate_uri: t.Optional[str] = None
    listen_address: t.Optional[str] = None
    live: bool = True
    persistent: bool = True
    undefine_source: bool = True
    tls: bool = False
    allow_unsafe_cache: bool = False
    unsafe_storage: bool = False
    wait: bool = True
    timeout: t.Optional[int] = None
    timeout_action: str = "abort"
    poll_interval: float = 0.5
    monitor_interval: float = 10.0
    memory_reserved_mib: int = 0
    username: t.Optional[str] = None
    password: t.Optional[str] = None
    state_dir: str = "/var/lib/virtops-migration"


# Ranges of the numeric options (seconds and MiB).
MAX_TIMEOUT_S = 7 * 24 * 3600
MAX_WAIT_SLEEP_S = 60.0
MAX_MONITOR_INTERVAL_S = 3600.0
MAX_MEMORY_RESERVED_MIB = 2**40


def check_run_numbers(params: t.Mapping[str, t.Any]) -> None:
    """Range-check the numeric options shared by the modules that run migrations (before any connection)."""
    if params.get("wait_sleep") is not None:
        check_number(params["wait_sleep"], "wait_sleep", 0, MAX_WAIT_SLEEP_S, exclusive_minimum=True)
    if params.get("monitor_interval") is not None:
        check_number(params["monitor_interval"], "monitor_interval", 0, MAX_MONITOR_INTERVAL_S, exclusive_minimum=True)
    if params.get("memory_reserved_mib") is not None:
        check_number(params["memory_reserved_mib"], "memory_reserved_mib", 0, MAX_MEMORY_RESERVED_MIB, whole=True)


def migration_run_argument_spec() -> t.Dict[str, t.Dict[str, t.Any]]:
    """Options shared by the modules that run migrations (doc fragment ``virtops.migration.migration_run``)."""
    return {
        "cluster_policy": {"type": "dict", "default": {}},
        "global_policy": {"type": "dict", "default": {}},
        "monitor_interval": {"type": "float", "default": 10.0},
        "wait_sleep": {"type": "float", "default": 0.5},
        "memory_reserved_mib": {"type": "int", "default": 256},
        "state_dir": {"type": "path", "default": "/var/lib/virtops-migration"},
    }


def parse_candidates(raw: t.Sequence[t.Any]) -> t.List[Candidate]:
    """Candidates given as URIs or as ``{uri, name, maintenance}`` dictionaries."""
    result = []
    for index, item in enumerate(raw or []):
        if isinstance(item, str) and item:
            result.append(Candidate(uri=item))
        elif isinstance(item, t.Mapping) and isinstance(item.get("uri"), str) and item["uri"]:
            unknown = sorted(set(item) - {"uri", "name", "maintenance", "memory_reserved_mib"})
            if unknown:
                raise PolicyError("candidates[%d] has unknown keys: %s (known: uri, name, maintenance, memory_reserved_mib)" % (index, ", ".join(unknown)))
            reserve = item.get("memory_reserved_mib")
            if reserve is not None:
                check_number(reserve, "candidates[%d].memory_reserved_mib" % index, 0, MAX_MEMORY_RESERVED_MIB, whole=True)
            maintenance = item.get("maintenance", False)
            if maintenance is None:
                maintenance = False
            if not isinstance(maintenance, bool):
                raise PolicyError("candidates[%d].maintenance must be true or false, got %r" % (index, maintenance))
            name = item.get("name")
            if name is not None and (not isinstance(name, str) or not name):
                raise PolicyError("candidates[%d].name must be a non-empty string, got %r" % (index, name))
            result.append(Candidate(uri=item["uri"], name=name, maintenance=maintenance, memory_reserved_mib=reserve))
        else:
            raise PolicyError("candidates[%d] must be a libvirt URI or a dictionary with a 'uri', got %r" % (index, item))
    return result


def request_from_params(params: t.Mapping[str, t.Any]) -> "Request":
    """Validate the module's parameters into a :class:`Request`; refuse bad input before any connection."""
    overrides = {key: params.get(key) for key in OVERRIDES if params.get(key) is not None}
    # Validated now, so that bad input fails before any connection; the VM's own settings join in later.
    policy = apply_overrides(base_policy(params.get("policy")), overrides)
    cluster_policy = settings.validate(params.get("cluster_policy"), "cluster_policy")
    global_policy = settings.validate(params.get("global_policy"), "global_policy")
    if params.get("timeout") is not None:
        check_number(params["timeout"], "timeout", 1, MAX_TIMEOUT_S, whole=True)
    check_run_numbers(params)
    candidates = parse_candidates(params.get("candidates") or [])
    elsewhere: t.List[Candidate] = []
    auto = params.get("destination") == "auto"
    if params.get("state", "migrated") == "migrated":
        if auto and not candidates:
            raise PolicyError("destination=auto needs at least one host in candidates")
        if params.get("destination_uri"):
            named = [candidate for candidate in candidates if candidate.uri == params["destination_uri"]]
            elsewhere = [candidate for candidate in candidates if candidate.uri != params["destination_uri"]]
            # What the caller knows of the named host (maintenance, name, reserve) still applies.
            candidates = named[:1] or [Candidate(uri=params["destination_uri"])]
    return Request(
        vm=params.get("name") or params.get("uuid") or "",
        source_uri=params.get("uri") or "qemu:///system",
        candidates=candidates,
        elsewhere=elsewhere,
        policy=policy,
        auto=auto,
        policy_option=params.get("policy"),
        overrides=overrides,
        cluster_policy=cluster_policy,
        global_policy=global_policy,
        migrate_uri=params.get("migrate_uri"),
        listen_address=params.get("listen_address"),
        live=params.get("live", True),
        persistent=params.get("persistent", True),
        undefine_source=params.get("undefine_source", True),
        tls=params.get("tls", False),
        allow_unsafe_cache=params.get("allow_unsafe_cache", False),
        unsafe_storage=params.get("unsafe_storage", False),
        wait=params.get("wait", True),
        timeout=params.get("timeout"),
        timeout_action=params.get("timeout_action") or "abort",
        poll_interval=params.get("wait_sleep") or 0.5,
        monitor_interval=params.get("monitor_interval") or 10.0,
        memory_reserved_mib=params.get("memory_reserved_mib") or 0,
        username=params.get("username"),
        password=params.get("password"),
        state_dir=params.get("state_dir") or "/var/lib/virtops-migration",
    )


class Clock:
    """Seconds since the run started, on a monotonic clock."""

    def __init__(self, elapsed: float = 0.0) -> None:
        self.start = time.monotonic() - elapsed

    def now(self) -> float:
        return round(time.monotonic() - self.start, 3)


@dataclasses.dataclass(frozen=True)
class CpuCheck:
    """The VM's ``<cpu>`` and the emulation it runs under, to compare with a destination's hypervisor CPU."""

    xml: str
    arch: t.Optional[str]
    virttype: t.Optional[str]
    machine: t.Optional[str]


def probe_host(
    conn: t.Any,
    candidate: Candidate,
    needs: t.Sequence[placement.VmNeeds],
    cpus: t.Mapping[str, CpuCheck],
    reserve_mib: int,
) -> placement.HostState:
    """Read what placement needs from a candidate's libvirtd for the given VMs.

    Identity, free memory after the reserve (the candidate's own, else ``reserve_mib``), running
    vCPUs, active networks, the bridges and disk paths the VMs use, and for each VM in ``cpus``
    whether the host's hypervisor can run its CPU definition.
    """
    uri = candidate.uri
    try:
        capabilities = parse_capabilities(conn.getCapabilities())
        hostname = conn.getHostname()
        node = conn.getInfo()
        vcpus = 0
        uuids = set()
        for dom in conn.listAllDomains(0):
            uuids.add(dom.UUIDString())
            if dom.isActive():
                vcpus += int(dom.info()[3])
        networks = frozenset(net.name() for net in conn.listAllNetworks(libvirt.VIR_CONNECT_LIST_NETWORKS_ACTIVE))
        bridges = _bridges(conn, frozenset().union(*(vm.bridges for vm in needs)) if needs else frozenset())
        disk_paths = set()
        for path in sorted(frozenset().union(*(vm.disk_paths for vm in needs)) if needs else ()):
            try:
                conn.storageVolLookupByPath(path)
                disk_paths.add(path)
            except libvirt.libvirtError:
                pass
        incompatible = {}
        verdicts: t.Dict[t.Tuple[str, t.Optional[str], t.Optional[str], t.Optional[str]], t.Optional[str]] = {}
        for vm, cpu in cpus.items():
            key = (cpu.xml, cpu.arch, cpu.virttype, cpu.machine)
            if key not in verdicts:
                verdicts[key] = _cpu_verdict(conn, cpu)
            if verdicts[key] is not None:
                incompatible[vm] = t.cast(str, verdicts[key])
    except libvirt.libvirtError as exc:
        raise translate_libvirt_error(exc, "read the destination's facts", uri=uri) from exc
    reserve = candidate.memory_reserved_mib if candidate.memory_reserved_mib is not None else reserve_mib
    try:
        memory = host_memory(conn, node, reserve)
    except libvirt.libvirtError as exc:
        raise translate_libvirt_error(exc, "read the destination's memory", uri=uri) from exc
    return placement.HostState(
        name=candidate.name or hostname,
        uri=uri,
        uuid=capabilities["uuid"],
        available_mib=memory["available_mib"],
        vcpus_running=vcpus,
        networks=networks,
        bridges=bridges,
        disk_paths=frozenset(disk_paths),
        maintenance=candidate.maintenance,
        cpu_incompatible=incompatible,
        vm_uuids=frozenset(uuids),
    )


def _cpu_verdict(conn: t.Any, cpu: CpuCheck) -> t.Optional[str]:
    """Why the host's hypervisor cannot run this CPU definition, or None when it can."""
    try:
        verdict = conn.compareHypervisorCPU(None, cpu.arch, cpu.machine, cpu.virttype, cpu.xml, 0)
    except libvirt.libvirtError as exc:
        if libvirt_error_code(exc) == libvirt.VIR_ERR_CPU_INCOMPATIBLE:
            return str(exc)
        raise
    if verdict == libvirt.VIR_CPU_COMPARE_INCOMPATIBLE:
        return "the VM's CPU model is not compatible with this host's hypervisor CPU"
    return None


def _bridges(conn: t.Any, wanted: t.AbstractSet[str]) -> t.Optional[t.FrozenSet[str]]:
    """Which of the wanted host bridges exist on the host; None when libvirt cannot tell."""
    found = set()
    for name in wanted:
        try:
            conn.interfaceLookupByName(name)
            found.add(name)
        except libvirt.libvirtError as exc:
            if is_unsupported(exc):
                return None
    return frozenset(found)


def migration_flags_and_params(request: Request, running: bool, persistent: bool = False) -> t.Tuple[int, t.Dict[str, t.Any]]:
    """libvirt flags and typed parameters for ``virDomainMigrateToURI3``.

    A persistent VM stays persistent (``persistent``); libvirt's storage-safety check is switched off
    only when ``unsafe_storage`` asks for it, never by the cache-mode override.
    """
    policy = request.policy
    flags = libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_ABORT_ON_ERROR
    params: t.Dict[str, t.Any] = {}
    if request.persistent or persistent:
        flags |= libvirt.VIR_MIGRATE_PERSIST_DEST
    if request.undefine_source:
        flags |= libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    if not running:
        return flags | libvirt.VIR_MIGRATE_OFFLINE | libvirt.VIR_MIGRATE_PERSIST_DEST, params
    if request.live:
        flags |= libvirt.VIR_MIGRATE_LIVE
    if policy.auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if policy.compression:
        flags |= libvirt.VIR_MIGRATE_COMPRESSED
        params[libvirt.VIR_MIGRATE_PARAM_COMPRESSION] = list(policy.compression)
    if policy.post_copy or request.timeout_action == "post_copy":
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    if policy.parallel_connections:
        flags |= libvirt.VIR_MIGRATE_PARALLEL
        params[libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS] = policy.parallel_connections
    if policy.bandwidth_mib:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = policy.bandwidth_mib
    if request.tls:
        flags |= libvirt.VIR_MIGRATE_TLS
    if request.unsafe_storage:
        flags |= libvirt.VIR_MIGRATE_UNSAFE
    if request.migrate_uri:
        params[libvirt.VIR_MIGRATE_PARAM_URI] = request.migrate_uri
    if request.listen_address:
        params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = request.listen_address
    return flags, params


def compression_stats(stats: t.Mapping[str, t.Any]) -> t.Optional[t.Dict[str, t.Any]]:
    """XBZRLE's cache and what it saved, from libvirt job statistics (None when it was not used)."""
    if "compression_bytes" not in stats and "compression_cache" not in stats:
        return None
    return {
        "cache_mib": round((stats.get("compression_cache") or 0) / MIB, 1),
        "compressed_mib": round((stats.get("compression_bytes") or 0) / MIB, 1),
        "compressed_pages": stats.get("compression_pages"),
        "cache_misses": stats.get("compression_cache_misses"),
        "overflows": stats.get("compression_overflow"),
    }


class SuspendRecords:
    """VMs a convergence schedule has paused, one small file each under ``STATE_DIR/suspended``.

    Written before the schedule pauses a VM and removed once it runs again, so that a run that died
    in between (task timeout, lost SSH) leaves a trace: the next run resumes the VM on whichever host
    it ended up on, instead of leaving it paused for ever.
    """

    def __init__(self, state_dir: str) -> None:
        self.directory = os.path.join(state_dir, "suspended")

    def _name(self, uuid: str) -> str:
        if not domxml.looks_like_uuid(uuid):
            raise MigrationError("%r is not a VM UUID" % uuid)
        return uuid.lower() + ".json"

    def add(self, uuid: str, vm: str) -> None:
        statefiles.write_json(self.directory, self._name(uuid), {"vm": vm, "uuid": uuid, "since": time.time()})

    def has(self, uuid: str) -> bool:
        try:
            return statefiles.read_json(self.directory, self._name(uuid)) is not None
        except MigrationError:
            return False

    def remove(self, uuid: str) -> None:
        with contextlib.suppress(MigrationError):
            statefiles.remove(self.directory, self._name(uuid))


def _whereabouts(conn: t.Any, uuid: str) -> t.Optional[t.Dict[str, t.Any]]:
    """The VM's state on one host as libvirt shows it: None when the host does not have it."""
    try:
        dom = conn.lookupByUUIDString(uuid)
        state, reason = dom.state()[:2]
        return {
            "state": domxml.state_name(state),
            "reason": domxml.state_reason(state, reason),
            "active": bool(dom.isActive()),
            "persistent": bool(dom.isPersistent()),
        }
    except libvirt.libvirtError as exc:
        if is_not_found(exc):
            return None
        return {"error": str(exc)}


class Migrator:
    """Carries out one :class:`Request`; :meth:`migrate` and :meth:`cancel` return the module result.

    A move counts as done only when libvirt shows it afterwards: the destination has the domain
    (same UUID), active after a live move and persistent when it was persistent, and the source no
    longer has it. Any other outcome, and any exception of any kind, is a failure that reports what
    libvirt shows on both hosts (``observed``).
    """

    def __init__(self, request: Request, log: t.Callable[[str], None] = lambda _msg: None) -> None:
        self.request = request
        self.log = log
        self.clock = Clock()
        self.events: t.List[t.Dict[str, t.Any]] = []
        self.applied: t.List[t.Dict[str, t.Any]] = []
        self.records = SuspendRecords(request.state_dir)
        self._aborted_by: t.Optional[str] = None
        self._suspended = False
        self._uuid: t.Optional[str] = None
        self._last_stats: t.Optional[t.Dict[str, t.Any]] = None

    # -- shared -------------------------------------------------------------------------------
    def event(self, name: str, **details: t.Any) -> None:
        entry = {"at_s": self.clock.now(), "event": name}
        entry.update({key: value for key, value in details.items() if value is not None})
        self.events.append(entry)
        self.log("vm_migrate %s: %s %s" % (self.request.vm, name, details))

    def connect(self, uri: str) -> t.ContextManager[t.Any]:
        return libvirt_connection(uri, self.request.username, self.request.password)

    def _fail(self, exc: MigrationError) -> MigrationError:
        exc.details.setdefault("events", self.events)
        exc.details.setdefault("schedule_applied", self.applied)
        return exc

    def _guarded(self, action: str, func: t.Callable[[], t.Dict[str, t.Any]]) -> t.Dict[str, t.Any]:
        """Run ``func``; every failure, of any kind, leaves as a MigrationError with the events so far."""
        try:
            return func()
        except MigrationError as exc:
            raise self._fail(exc)  # pylint: disable=raise-missing-from
        except libvirt.libvirtError as exc:
            raise self._fail(translate_libvirt_error(exc, action, vm=self.request.vm, uri=self.request.source_uri)) from exc
        except Exception as exc:  # pylint: disable=broad-exception-caught
            raise self._fail(unexpected_error(exc, action, vm=self.request.vm, uri=self.request.source_uri)) from exc

    def _observe(self, source: t.Any, uuid: str, dest_uri: t.Optional[str]) -> t.Dict[str, t.Any]:
        """Where the VM is now, as libvirt shows it on the source and the destination."""
        observed: t.Dict[str, t.Any] = {"source": _whereabouts(source, uuid)}
        if dest_uri:
            try:
                # A short wait: after a failure the destination is often the host that went away.
                with libvirt_connection(dest_uri, self.request.username, self.request.password, connect_timeout=OBSERVE_CONNECT_TIMEOUT_S) as conn:
                    observed["destination"] = _whereabouts(conn, uuid)
            except MigrationError as exc:
                observed["destination"] = {"error": exc.msg}
        return observed

    # -- migrate ------------------------------------------------------------------------------
    def migrate(self, check_mode: bool) -> t.Dict[str, t.Any]:
        return self._guarded("migrate", lambda: self._migrate(check_mode))

    def _migrate(self, check_mode: bool) -> t.Dict[str, t.Any]:
        req = self.request
        with self.connect(req.source_uri) as source:
            src_host = {"hostname": source.getHostname(), "uri": req.source_uri}
            dom = domxml.find_domain(source, req.vm)
            if dom is None:
                return self._already_moved(src_host, check_mode)
            xml = self._call(dom.XMLDesc, "read the domain XML", req.source_uri, 0)
            facts = domxml.describe_domain(dom, req.source_uri)
            name, uuid = facts["name"], facts["uuid"]
            self._uuid = uuid
            requirements = domxml.parse_requirements(xml)
            resolved = settings.resolve(facts.get("migration_settings") or {}, req.cluster_policy, req.global_policy)
            effective = {key: entry["value"] for key, entry in resolved.items()}
            problems = facts.get("migration_settings_problems") or {}
            warnings = ["VM '%s' has unreadable migration settings: %s" % (name, settings.describe_problems(problems))] if problems else []
            if effective["migration_mode"] == "none":
                unreadable = problems.keys() & set(settings.MOVABILITY_SETTINGS + (settings.WHOLE_METADATA,))
                if unreadable:
                    why = "its migration mode or pinning cannot be read (%s)" % settings.describe_problems(problems)
                else:
                    why = "set at the %s level" % resolved["migration_mode"]["source"]
                raise PolicyError("VM '%s' has migration_mode 'none' (%s): it is never migrated." % (name, why), vm=name, uri=req.source_uri)
            req.policy = self._effective_policy(effective)
            if req.timeout is None:
                req.timeout = default_timeout(int(facts["memory_mib"] or 0))
            job = self._job_stats(dom)
            if job is not None:
                return self._adopt(source, dom, facts, src_host, job, check_mode)
            self._resume_after_lost_run(dom, name, uuid, req.source_uri, check_mode)
            self._check_state(dom, facts)
            persistent = bool(facts["persistent"])
            if persistent and not req.persistent:
                raise PolicyError(
                    "VM '%s' is persistent: persistent=false would leave it defined nowhere but in the destination's memory "
                    "(or, with undefine_source=false, defined on the source while it runs elsewhere). A persistent VM moves as a persistent VM." % name,
                    vm=name,
                    uri=req.source_uri,
                )
            if persistent and not req.undefine_source:
                raise PolicyError(
                    "VM '%s' is persistent: undefine_source=false would leave a second, shut-off definition on %s while it runs on the "
                    "destination, which a later start would run twice. The source definition is always removed for a persistent VM."
                    % (name, src_host["hostname"]),
                    vm=name,
                    uri=req.source_uri,
                )
            needs = placement.needs_from_facts(facts, requirements, effective)
            if not facts["active"]:
                needs = dataclasses.replace(needs, memory_mib=0, vcpus=0)  # an offline move takes no memory
            source_uuid = parse_capabilities(self._call(source.getCapabilities, "read the host capabilities", req.source_uri))["uuid"]
            running = bool(facts["active"])
            if running:
                self._check_disks(name, requirements)
            cpu = None
            if running and requirements.get("cpu_xml"):
                cpu = CpuCheck(requirements["cpu_xml"], facts.get("arch"), facts.get("domain_type"), facts.get("machine"))
            dest, rejected, hosts = self._choose(needs, cpu, source_uuid)
            refuse_duplicates(name, uuid, src_host["hostname"], source_uuid, hosts + self._look_elsewhere(uuid))
            kind = ("live" if req.live else "paused") if running else "offline"
            plan = {
                "vm": name,
                "uuid": uuid,
                "source": src_host,
                "destination": {"hostname": dest.name, "uri": dest.uri},
                "kind": kind,
                "state": facts["state"],
                "memory_mib": facts["memory_mib"],
                "timeout_s": req.timeout,
                "timeout_action": req.timeout_action,
                "rejected_hosts": rejected,
            }
            result: t.Dict[str, t.Any] = {
                "changed": True,
                "vm": name,
                "source": src_host,
                "destination": plan["destination"],
                "plan": plan,
                "policy": req.policy.as_dict(),
                "diff": {"before": {"vm": name, "host": src_host["hostname"]}, "after": {"vm": name, "host": dest.name}},
            }
            if warnings:
                result["warnings"] = warnings
            if check_mode:
                if self.events:
                    result["events"] = self.events
                return result
            self.event("started", kind=kind, destination=dest.uri, state=facts["state"])
            if not self._execute(source, dom, facts, dest, running, persistent):
                result.update(msg="Migration of VM '%s' to %s started; not waiting for it." % (name, dest.uri), events=self.events)
                return result
            result.update(self._completed_stats(uuid, dest.uri, dom))
            result.update(self._verify(source, name, uuid, dest.uri, running, persistent or req.persistent, facts["state"]))
        result.update(duration_s=self.clock.now(), schedule_applied=self.applied, events=self.events)
        return result

    def _check_state(self, dom: t.Any, facts: t.Mapping[str, t.Any]) -> None:
        """Refuse VM states a migration cannot carry; running, paused and shut off are fine."""
        state = self._call(dom.state, "read the VM state", self.request.source_uri)[0]
        name = facts["name"]
        if state == libvirt.VIR_DOMAIN_PMSUSPENDED:
            raise PolicyError(
                "VM '%s' is pmsuspended (its guest suspended itself to RAM): wake it up first (virsh dompmwakeup), then migrate it." % name,
                vm=name,
                uri=self.request.source_uri,
            )
        if state == libvirt.VIR_DOMAIN_CRASHED and facts.get("active"):
            raise PolicyError(
                "VM '%s' has crashed and is kept for inspection (on_crash preserve): it is not migrated; "
                "dump or destroy it first." % name,
                vm=name,
                uri=self.request.source_uri,
            )

    def _effective_policy(self, effective: t.Mapping[str, t.Any]) -> Policy:
        """The task's policy and options win; what they leave open comes from the VM > cluster > global settings."""
        return settings.effective_policy(effective, self.request.policy_option, self.request.overrides)

    def _already_moved(self, src_host: t.Mapping[str, t.Any], check_mode: bool) -> t.Dict[str, t.Any]:
        """The VM is not on the source: fine if exactly one other known host has it (a repeat run).

        It must be active there, or persistently defined (after an offline move); a VM found on
        several hosts is a duplicate and an error.
        """
        req = self.request
        found = []
        for candidate in req.candidates + req.elsewhere:
            try:
                with self.connect(candidate.uri) as conn:
                    dom = domxml.find_domain(conn, req.vm)
                    if dom is None or not (dom.isActive() or dom.isPersistent()):
                        continue
                    host_uuid = parse_capabilities(conn.getCapabilities())["uuid"]
                    if any(seen == host_uuid for _c, _h, _u, _a, seen in found):
                        continue  # the same host under another URI
                    found.append((candidate, conn.getHostname(), dom.UUIDString(), bool(dom.isActive()), host_uuid))
            except (MigrationError, libvirt.libvirtError):
                continue
        if len(found) > 1:
            hosts = sorted("%s (%s)" % (hostname, "active" if active else "defined") for _c, hostname, _u, active, _h in found)
            raise DuplicateVmError(
                "VM '%s' is not on the source %s but is on several hosts: %s. Remove the stale copy first." % (req.vm, req.source_uri, ", ".join(hosts)),
                vm=req.vm,
                hosts=hosts,
            )
        if not found:
            raise VmNotFoundError(
                "VM '%s' does not exist on the source %s, nor on any destination candidate." % (req.vm, req.source_uri),
                vm=req.vm,
                uri=req.source_uri,
            )
        candidate, hostname, uuid, _active, _host = found[0]
        with self.connect(candidate.uri) as conn:
            dom = conn.lookupByUUIDString(uuid)
            self._resume_after_lost_run(dom, req.vm, uuid, candidate.uri, check_mode)
            state = domxml.state_name(dom.state()[0])
        where = {"hostname": hostname, "uri": candidate.uri}
        return {
            "changed": any(event["event"].startswith(("resumed", "would_resume")) for event in self.events),
            "vm": req.vm,
            "source": src_host,
            "destination": where,
            "vm_state": state,
            "msg": "VM '%s' is already on %s (%s)." % (req.vm, hostname, candidate.uri),
            "events": self.events,
            "schedule_applied": [],
        }

    def _look_elsewhere(self, uuid: str) -> t.List[placement.HostState]:
        """The other known hosts, as far as a duplicate check needs them: whether they define the UUID."""
        found = []
        for candidate in self.request.elsewhere:
            try:
                with self.connect(candidate.uri) as conn:
                    there = _whereabouts(conn, uuid)
                    ident = parse_capabilities(conn.getCapabilities())["uuid"]
                    hostname = candidate.name or conn.getHostname()
            except (MigrationError, libvirt.libvirtError):
                continue  # an unreachable host cannot be checked; placement never chooses it either
            if there is not None and "error" not in there:
                found.append(placement.HostState(name=hostname, uri=candidate.uri, uuid=ident, vm_uuids=frozenset((uuid,))))
        return found

    def _resume_after_lost_run(self, dom: t.Any, name: str, uuid: str, uri: str, check_mode: bool = False) -> None:
        """A VM that a lost earlier run's schedule paused runs again, once no migration job holds it."""
        if not self.records.has(uuid):
            return
        if self._job_stats(dom) is not None:
            return
        paused = self._call(dom.state, "read the VM state", uri)[0] == libvirt.VIR_DOMAIN_PAUSED
        if check_mode:
            if paused:
                self.event("would_resume_after_lost_run", host=uri)
            return
        if paused:
            self._call(dom.resume, "resume the VM an earlier run paused", uri)
            self.event("resumed_after_lost_run", host=uri)
        self.records.remove(uuid)

    def _call(self, func: t.Callable[..., t.Any], action: str, uri: str, *args: t.Any) -> t.Any:
        try:
            return func(*args)
        except libvirt.libvirtError as exc:
            raise translate_libvirt_error(exc, action, vm=self.request.vm, uri=uri) from exc

    def _check_disks(self, vm: str, requirements: t.Mapping[str, t.Any]) -> None:
        if self.request.allow_unsafe_cache:
            return
        unsafe = ["%s (cache=%s)" % (disk["target"], disk.get("cache") or "default") for disk in requirements["disks"] if disk.get("unsafe_cache")]
        if unsafe:
            raise PolicyError(
                "VM '%s' has disks with a cache mode other than 'none' or 'directsync', unsafe to migrate live: %s. "
                "Set allow_unsafe_cache=true to migrate anyway." % (vm, ", ".join(unsafe)),
                vm=vm,
                uri=self.request.source_uri,
            )

    def _choose(
        self, needs: placement.VmNeeds, cpu: t.Optional[CpuCheck], source_uuid: str
    ) -> t.Tuple[placement.HostState, t.Dict[str, t.List[str]], t.List[placement.HostState]]:
        req = self.request
        hosts = []
        for candidate in req.candidates:
            try:
                with self.connect(candidate.uri) as conn:
                    hosts.append(probe_host(conn, candidate, [needs], {needs.name: cpu} if cpu else {}, req.memory_reserved_mib))
            except MigrationError as exc:
                if not req.auto:
                    raise
                hosts.append(placement.HostState(name=candidate.name or candidate.uri, uri=candidate.uri, error=exc.msg))
        best, rejected = placement.choose(needs, hosts, source_uuid)
        if best is None:
            raise MigrationError(placement.explain(needs.name, rejected), vm=needs.name, uri=req.source_uri, rejected_hosts=rejected)
        return best, rejected, hosts

    def _execute(self, source: t.Any, dom: t.Any, facts: t.Mapping[str, t.Any], dest: placement.HostState, running: bool, persistent: bool) -> bool:
        """Run the libvirt job; True once libvirt says it completed, False when started and not waited for."""
        req = self.request
        flags, params = migration_flags_and_params(req, running, persistent)
        live = running and req.live
        downtime_set = live and self._set_downtime(dom, req.policy.initial_downtime_ms)
        outcome: t.Dict[str, t.Any] = {}

        def run() -> None:
            try:
                dom.migrateToURI3(dest.uri, params, flags)
            except BaseException as exc:  # pylint: disable=broad-exception-caught
                outcome["error"] = exc  # any failure, libvirt's or not, is a failed move

        worker = threading.Thread(target=run, name="migrate-%s" % facts["name"], daemon=True)
        worker.start()
        if not req.wait and running:
            # The source libvirtd drives a peer-to-peer migration to its end on its own.
            while worker.is_alive() and self._job_stats(dom) is None:
                worker.join(req.poll_interval)
        else:
            self._monitor(dom, worker.is_alive, worker.join, live, downtime_pending=live and not downtime_set)
        if "error" in outcome:
            self._recover_source(dom)
            error = outcome["error"]
            action = "migrate to %s" % dest.uri
            if isinstance(error, libvirt.libvirtError):
                exc = translate_libvirt_error(error, action, vm=facts["name"], uri=req.source_uri)
            else:
                exc = unexpected_error(error, action, vm=facts["name"], uri=req.source_uri)
            if self._aborted_by is not None:
                exc = OperationCancelledError("%s (%s)" % (exc.msg, self._aborted_by), **exc.details)

            self.event("failed", reason=exc.msg)
            exc.details["observed"] = self._observe(source, facts["uuid"], dest.uri)
            raise exc from error
        if worker.is_alive():
            return False
        self.event("completed")
        if self._suspended:
            self._resume_on(dest.uri, facts["uuid"])
        return True

    def _verify(
        self, source: t.Any, name: str, uuid: str, dest_uri: str, live: bool, persistent: bool, before: t.Optional[str] = None
    ) -> t.Dict[str, t.Any]:
        """Read the outcome back from both hosts; anything but the VM on the destination alone is a failure.

        ``before`` is the VM's state before the move: a VM that was running must run on the destination.
        """
        observed = self._observe(source, uuid, dest_uri)
        there, here = observed.get("destination"), observed["source"]
        problems = []
        if there is None or "error" in there:
            problems.append("the destination does not have it" + (" (%s)" % there["error"] if there else ""))
        else:
            if live and not there["active"]:
                problems.append("it is %s on the destination, not active" % there["state"])
            elif before == "running" and there["state"] != "running":
                problems.append("it was running and is %s (%s) on the destination" % (there["state"], there.get("reason")))
            if persistent and not there["persistent"]:
                problems.append("it is not persistently defined on the destination")
        if here is not None:
            if "error" in here:
                problems.append("its state on the source cannot be read (%s)" % here["error"])
            elif here["active"]:
                problems.append("it is still %s on the source" % here["state"])
            else:
                problems.append("it is still defined on the source (%s)" % here["state"])
        if problems:
            self.event("verification_failed", problems=problems)
            raise MigrationError(
                "libvirt reported the migration of VM '%s' to %s complete, but %s." % (name, dest_uri, "; ".join(problems)),
                vm=name,
                uri=self.request.source_uri,
                observed=observed,
                changed=there is not None and "error" not in there,
            )
        self.event("verified", state=there["state"] if there else None)
        return {"vm_state": there["state"] if there else None, "observed": observed}

    def _monitor(self, dom: t.Any, alive: t.Callable[[], bool], wait: t.Callable[[float], t.Any], live: bool, downtime_pending: bool) -> None:
        """Poll the job until it ends: apply schedule steps, log progress, act on the timeout."""
        req = self.request
        tracker = ScheduleTracker(req.policy.schedule if live else ())
        timeout_hit = False
        last_progress = 0.0
        last_check: t.Optional[float] = None
        while alive():
            wait(req.poll_interval)
            if not alive():
                break
            now = self.clock.now()
            stats = self._job_stats(dom)
            if stats is not None:
                self._last_stats = stats
                if downtime_pending:
                    downtime_pending = not self._set_downtime(dom, req.policy.initial_downtime_ms)
                if last_check is None or now - last_check >= req.monitor_interval:
                    # Convergence is judged at most once per monitor interval, as vdsm does: a fast
                    # guest's iterations are far shorter than the time auto-converge needs to bite.
                    last_check = now
                    step = tracker.observe(stats.get("memory_iteration"), stats.get("data_remaining"))
                    if step is not None:
                        self._apply(dom, step, stats, tracker.stalled)
                if now - last_progress >= PROGRESS_EVERY_S:
                    last_progress = now
                    self._progress(stats)
            if not req.timeout or now < req.timeout:
                continue
            if not timeout_hit:
                timeout_hit = True
                self.event("timeout", after_s=req.timeout, action=req.timeout_action)
                why = "timeout after %d s" % req.timeout
                self._apply(dom, Step(tracker.stalled, req.timeout_action), stats or {}, tracker.stalled, reason=why)
                if req.timeout_action != "abort" and self.applied[-1].get("error"):
                    # The timeout action itself failed: stop the migration instead.
                    self._apply(dom, Step(tracker.stalled, "abort"), stats or {}, tracker.stalled, reason=why + ", and %s failed" % req.timeout_action)
            elif now >= req.timeout + 2 * CANCEL_WAIT_S:
                self.event("gave_up", after_s=now)
                raise MigrationError(
                    "The migration of VM '%s' still runs %d s after its %d s timeout, although it was told to %s; libvirt's job goes on "
                    "without this run. Run the task again to follow it, or use state=cancelled."
                    % (req.vm, 2 * CANCEL_WAIT_S, req.timeout, req.timeout_action),
                    vm=req.vm,
                    uri=req.source_uri,
                )

    def _job_stats(self, dom: t.Any) -> t.Optional[t.Dict[str, t.Any]]:
        try:
            stats = dom.jobStats(0)
        except libvirt.libvirtError:
            return None
        if not stats or stats.get("type", JOB_NONE) == JOB_NONE:
            return None
        return stats

    def _progress(self, stats: t.Mapping[str, t.Any]) -> None:
        total = stats.get("data_total") or 0
        processed = stats.get("data_processed") or 0
        percent = round(100.0 * processed / total, 1) if total else None
        self.event(
            "progress",
            percent=min(percent, 100.0) if percent is not None else None,
            data_processed_mib=round(processed / MIB, 1),
            data_remaining_mib=round((stats.get("data_remaining") or 0) / MIB, 1),
            memory_iteration=stats.get("memory_iteration"),
            dirty_rate_pages_s=stats.get("memory_dirty_rate"),
        )

    def _set_downtime(self, dom: t.Any, ms: int) -> bool:
        """Set the initial maximum downtime; False when QEMU takes it only once the job runs."""
        try:
            dom.migrateSetMaxDowntime(ms, 0)
        except libvirt.libvirtError:
            return False
        self.event("max_downtime", downtime_ms=ms)
        return True

    def _apply(self, dom: t.Any, step: Step, stats: t.Mapping[str, t.Any], stalled: int, reason: t.Optional[str] = None) -> None:
        why = reason or "%d stalled memory iteration(s)" % stalled
        record = {"at_s": self.clock.now(), "action": step.action, "stalled": stalled, "memory_iteration": stats.get("memory_iteration"), "reason": why}
        if step.downtime_ms is not None:
            record["downtime_ms"] = step.downtime_ms
        try:
            if step.action == "downtime":
                dom.migrateSetMaxDowntime(step.downtime_ms, 0)
            elif step.action == "post_copy":
                dom.migrateStartPostCopy(0)
            elif step.action == "suspend":
                if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                    record["note"] = "already paused; left as it is"
                else:
                    # Recorded first: a run that dies now leaves the next run a note to resume the VM.
                    self.records.add(t.cast(str, self._uuid), self.request.vm)
                    dom.suspend()
                    self._suspended = True
            elif step.action == "abort":
                self._aborted_by = "aborted: %s" % why
                dom.abortJob()
        except (libvirt.libvirtError, MigrationError) as exc:
            record["error"] = str(exc)
        self.applied.append(record)
        self.event("schedule_step", **{key: value for key, value in record.items() if key != "at_s"})

    def _recover_source(self, dom: t.Any) -> None:
        """After a failed job: the VM must run on the source; resume it if a schedule step paused it."""
        try:
            state = dom.state()[0]
            if self._suspended and state == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
                self.event("resumed_on_source")
            if self._suspended and self._uuid:
                self.records.remove(self._uuid)
        except libvirt.libvirtError as exc:
            self.event("source_state_unknown", reason=str(exc))

    def _resume_on(self, uri: str, uuid: str) -> None:
        """The schedule paused the VM to let the migration finish: it runs again on the destination."""
        try:
            with self.connect(uri) as conn:
                dom = conn.lookupByUUIDString(uuid)
                if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                    dom.resume()
                    self.event("resumed_on_destination")
        except (libvirt.libvirtError, MigrationError) as exc:
            error = (
                translate_libvirt_error(exc, "resume the VM the schedule paused, after its move", vm=self.request.vm, uri=uri)
                if isinstance(exc, libvirt.libvirtError)
                else exc
            )
            # The VM did move: it waits, paused, on the destination (the record stays for the next run).
            error.details.update(changed=True, moved_to=uri)
            raise error from exc
        self.records.remove(uuid)
        self._suspended = False

    def _completed_stats(self, uuid: str, dest_uri: str, source_dom: t.Any) -> t.Dict[str, t.Any]:
        """Downtime, data moved and iterations, from the destination's completed-job statistics.

        After a switch to post-copy libvirt keeps no completed-job statistics; data and iterations
        then come from the last progress poll, and the downtime stays unknown.
        """
        flags = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
        stats: t.Dict[str, t.Any] = {}
        try:
            with self.connect(dest_uri) as conn:
                stats = conn.lookupByUUIDString(uuid).jobStats(flags) or {}
        except (MigrationError, libvirt.libvirtError):
            stats = {}
        if stats.get("type", JOB_NONE) == JOB_NONE:
            try:
                stats = source_dom.jobStats(flags) or {}
            except libvirt.libvirtError:
                stats = {}
        if stats.get("type", JOB_NONE) == JOB_NONE and self._last_stats:
            # libvirt reports no completed job ({"type": 0}): keep what the last poll saw.
            stats = {key: value for key, value in self._last_stats.items() if key != "downtime"}
        total = stats.get("data_total") or stats.get("memory_total")
        return {
            "downtime_ms": stats.get("downtime"),
            "data_total_mib": round(total / MIB, 1) if total else None,
            "memory_iterations": stats.get("memory_iteration"),
            "job_time_ms": stats.get("time_elapsed"),
            "compression": compression_stats(stats),
        }

    # -- a job left by a lost run -------------------------------------------------------------
    def _adopt(
        self,
        source: t.Any,
        dom: t.Any,
        facts: t.Mapping[str, t.Any],
        src_host: t.Mapping[str, t.Any],
        job: t.Mapping[str, t.Any],
        check_mode: bool,
    ) -> t.Dict[str, t.Any]:
        """The VM already has a migration job on the source (an earlier run died, or someone else started
        it): monitor it to its end under this run's schedule and timeout, then report where the VM is."""
        req = self.request
        name, uuid = facts["name"], facts["uuid"]
        operation = job.get("operation")
        if operation is not None and operation != JOB_OPERATION_MIGRATION_OUT:
            raise MigrationError(
                "VM '%s' on %s is busy with another libvirt job (operation %s, not an outgoing migration); not migrating it now."
                % (name, req.source_uri, operation),
                vm=name,
                uri=req.source_uri,
            )
        elapsed = (job.get("time_elapsed") or 0) / 1000.0
        summary = {
            "elapsed_s": round(elapsed, 1),
            "data_remaining_mib": round((job.get("data_remaining") or 0) / MIB, 1),
            "memory_iteration": job.get("memory_iteration"),
        }
        if check_mode:
            return {
                "changed": True,
                "vm": name,
                "source": src_host,
                "adopted": True,
                "job": summary,
                "msg": "VM '%s' has a migration job running on %s for %.0f s; a real run adopts it and follows it to its end."
                % (name, req.source_uri, elapsed),
            }
        self.clock = Clock(elapsed)
        self._suspended = self.records.has(uuid)
        self.event("adopted", job=summary)
        self._monitor(dom, lambda: self._job_stats(dom) is not None, time.sleep, live=True, downtime_pending=False)
        here = _whereabouts(source, uuid)
        if here is not None and here.get("active"):
            self._recover_source(dom)
            self.event("failed", reason="the adopted job ended with the VM still on the source")
            raise MigrationError(
                "The migration job of VM '%s' that was already running on %s (adopted) ended without moving it; it %s on the source."
                % (name, src_host["hostname"], "runs" if here.get("state") == "running" else "is %s" % here.get("state")),
                vm=name,
                uri=req.source_uri,
                observed={"source": here},
            )
        for candidate in req.candidates + req.elsewhere:
            try:
                with self.connect(candidate.uri) as conn:
                    there = _whereabouts(conn, uuid)
                    hostname = conn.getHostname()
            except MigrationError:
                continue
            if there is not None and there.get("active"):
                if self._suspended:
                    self._resume_on(candidate.uri, uuid)
                verified = self._verify(source, name, uuid, candidate.uri, True, bool(facts["persistent"]) or req.persistent, facts["state"])
                result = {
                    "changed": True,
                    "adopted": True,
                    "vm": name,
                    "source": src_host,
                    "destination": {"hostname": hostname, "uri": candidate.uri},
                    "policy": req.policy.as_dict(),
                    "duration_s": self.clock.now(),
                    "schedule_applied": self.applied,
                    "events": self.events,
                }
                result.update(self._completed_stats(uuid, candidate.uri, dom))
                result.update(verified)
                return result
        raise MigrationError(
            "The migration job of VM '%s' (adopted) ended and the VM left %s, but it is not active on any destination given (%s)."
            % (name, src_host["hostname"], ", ".join(c.uri for c in req.candidates + req.elsewhere) or "none"),
            vm=name,
            uri=req.source_uri,
            observed={"source": here},
        )

    # -- cancel -------------------------------------------------------------------------------
    def cancel(self, check_mode: bool) -> t.Dict[str, t.Any]:
        return self._guarded("cancel the migration", lambda: self._cancel(check_mode))

    def _cancel(self, check_mode: bool) -> t.Dict[str, t.Any]:
        """Abort the VM's outgoing migration job; the VM keeps running on the source."""
        req = self.request
        with self.connect(req.source_uri) as source:
            dom = domxml.lookup_domain(source, req.vm)
            name, uuid = self._call(dom.name, "read the VM", req.source_uri), self._call(dom.UUIDString, "read the VM", req.source_uri)
            self._uuid = uuid
            stats = self._job_stats(dom)
            if stats is None:
                self._resume_after_lost_run(dom, name, uuid, req.source_uri, check_mode)
                msg = "VM '%s' has no migration job running on %s." % (name, req.source_uri)
                return {"changed": bool(self.events), "vm": name, "events": self.events, "msg": msg}
            operation = stats.get("operation")
            if operation is not None and operation != JOB_OPERATION_MIGRATION_OUT:
                raise MigrationError(
                    "VM '%s' on %s runs a job that is not an outgoing migration (operation %s); not cancelling it." % (name, req.source_uri, operation),
                    vm=name,
                    uri=req.source_uri,
                )
            state, reason = self._call(dom.state, "read the VM state", req.source_uri)[:2]
            post_copy = ((libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY), (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_POSTCOPY))
            if (state, reason) in post_copy:
                raise MigrationError(
                    "VM '%s' is in the post-copy phase of its migration: it already runs on the destination and the migration "
                    "cannot be cancelled any more; it completes on its own." % name,
                    vm=name,
                    uri=req.source_uri,
                )
            if check_mode:
                return {"changed": True, "vm": name, "msg": "Would cancel the migration of VM '%s'." % name}
            try:
                dom.abortJob()
            except libvirt.libvirtError as exc:
                if libvirt_error_code(exc) != VIR_ERR_OPERATION_INVALID or self._job_stats(dom) is not None:
                    raise translate_libvirt_error(exc, "cancel the migration", vm=name, uri=req.source_uri) from exc
            self.event("cancel_requested")
            deadline = time.monotonic() + CANCEL_WAIT_S
            while self._job_stats(dom) is not None and time.monotonic() < deadline:
                time.sleep(req.poll_interval)
            here = _whereabouts(source, uuid)
            if self._job_stats(dom) is not None:
                raise MigrationError(
                    "The migration of VM '%s' was asked to stop but still runs after %d s." % (name, CANCEL_WAIT_S),
                    vm=name,
                    uri=req.source_uri,
                    observed={"source": here},
                )
            if here is None or not here.get("active"):
                raise MigrationError(
                    "The migration of VM '%s' completed before the cancellation took effect: the VM is no longer active on %s." % (name, req.source_uri),
                    vm=name,
                    uri=req.source_uri,
                    observed={"source": here},
                )
            if self.records.has(uuid) and here.get("state") == "paused":
                self._suspended = True
                self._recover_source(dom)
                here = _whereabouts(source, uuid) or here
            self.event("cancelled", state=here.get("state"))
            return {"changed": True, "vm": name, "state": here.get("state"), "events": self.events}


def refuse_duplicates(name: str, uuid: str, source_name: str, source_uuid: str, hosts: t.Sequence[placement.HostState]) -> None:
    """A VM whose UUID is also defined on another host is never moved: both copies could start."""
    also = sorted(host.name for host in hosts if host.error is None and host.uuid != source_uuid and uuid in host.vm_uuids)
    if also:
        raise DuplicateVmError(
            "VM '%s' (UUID %s) is defined on %s and also on %s: refusing to move it, since two definitions could both be "
            "started. Remove the stale copy first." % (name, uuid, source_name, ", ".join(also)),
            vm=name,
            uuid=uuid,
            hosts=[source_name] + also,
        )
