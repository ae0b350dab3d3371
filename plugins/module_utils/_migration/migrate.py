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

import dataclasses
import threading
import time
import typing as t

from ansible_collections.virtops.migration.plugins.module_utils._migration import domain as domxml
from ansible_collections.virtops.migration.plugins.module_utils._migration import placement, settings
from ansible_collections.virtops.migration.plugins.module_utils._migration.connection import libvirt_connection
from ansible_collections.virtops.migration.plugins.module_utils._migration.errors import (
    MigrationError,
    OperationCancelledError,
    VmNotFoundError,
    is_unsupported,
    libvirt_error_code,
    translate_libvirt_error,
    VIR_ERR_OPERATION_INVALID,
)
from ansible_collections.virtops.migration.plugins.module_utils._migration.hostinfo import memory_facts, parse_capabilities
from ansible_collections.virtops.migration.plugins.module_utils._migration.policy import (
    Policy,
    PolicyError,
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
    allow_unsafe: bool = False
    wait: bool = True
    timeout: t.Optional[int] = None
    timeout_action: str = "abort"
    poll_interval: float = 0.5
    monitor_interval: float = 10.0
    memory_reserved_mib: int = 0
    username: t.Optional[str] = None
    password: t.Optional[str] = None


def migration_run_argument_spec() -> t.Dict[str, t.Dict[str, t.Any]]:
    """Options shared by the modules that run migrations (doc fragment ``virtops.migration.migration_run``)."""
    return {
        "cluster_policy": {"type": "dict", "default": {}},
        "global_policy": {"type": "dict", "default": {}},
        "monitor_interval": {"type": "float", "default": 10.0},
        "wait_sleep": {"type": "float", "default": 0.5},
        "memory_reserved_mib": {"type": "int", "default": 256},
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
            if reserve is not None and (isinstance(reserve, bool) or not isinstance(reserve, int) or reserve < 0):
                raise PolicyError("candidates[%d].memory_reserved_mib must be a whole number of MiB, zero or more, got %r" % (index, reserve))
            result.append(
                Candidate(uri=item["uri"], name=item.get("name"), maintenance=bool(item.get("maintenance", False)), memory_reserved_mib=reserve)
            )
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
    if params.get("timeout") is not None and params["timeout"] <= 0:
        raise PolicyError("timeout must be a positive number of seconds, got %d" % params["timeout"])
    for name in ("wait_sleep", "monitor_interval"):
        if params.get(name) is not None and params[name] <= 0:
            raise PolicyError("%s must be a positive number of seconds, got %s" % (name, params[name]))
    if (params.get("memory_reserved_mib") or 0) < 0:
        raise PolicyError("memory_reserved_mib must be zero or more, got %d" % params["memory_reserved_mib"])
    candidates = parse_candidates(params.get("candidates") or [])
    auto = params.get("destination") == "auto"
    if params.get("state", "migrated") == "migrated":
        if auto and not candidates:
            raise PolicyError("destination=auto needs at least one host in candidates")
        if params.get("destination_uri"):
            candidates = [Candidate(uri=params["destination_uri"])]
    return Request(
        vm=params.get("name") or params.get("uuid") or "",
        source_uri=params.get("uri") or "qemu:///system",
        candidates=candidates,
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
        allow_unsafe=params.get("allow_unsafe", False),
        wait=params.get("wait", True),
        timeout=params.get("timeout"),
        timeout_action=params.get("timeout_action") or "abort",
        poll_interval=params.get("wait_sleep") or 0.5,
        monitor_interval=params.get("monitor_interval") or 10.0,
        memory_reserved_mib=params.get("memory_reserved_mib") or 0,
        username=params.get("username"),
        password=params.get("password"),
    )


class Clock:
    """Seconds since the run started, on a monotonic clock."""

    def __init__(self) -> None:
        self.start = time.monotonic()

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
        free_bytes = conn.getFreeMemory()
        vcpus = 0
        for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
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
    memory = memory_facts(node[1] * 1024, free_bytes // 1024, reserve)
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


def migration_flags_and_params(request: Request, running: bool) -> t.Tuple[int, t.Dict[str, t.Any]]:
    """libvirt flags and typed parameters for ``virDomainMigrateToURI3``."""
    policy = request.policy
    flags = libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_ABORT_ON_ERROR
    params: t.Dict[str, t.Any] = {}
    if request.persistent:
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
    if request.allow_unsafe:
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


class Migrator:
    """Carries out one :class:`Request`; :meth:`migrate` and :meth:`cancel` return the module result."""

    def __init__(self, request: Request, log: t.Callable[[str], None] = lambda _msg: None) -> None:
        self.request = request
        self.log = log
        self.clock = Clock()
        self.events: t.List[t.Dict[str, t.Any]] = []
        self.applied: t.List[t.Dict[str, t.Any]] = []
        self._aborted_by: t.Optional[str] = None
        self._suspended = False
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

    # -- migrate ------------------------------------------------------------------------------
    def migrate(self, check_mode: bool) -> t.Dict[str, t.Any]:
        req = self.request
        with self.connect(req.source_uri) as source:
            src_host = {"hostname": source.getHostname(), "uri": req.source_uri}
            dom = domxml.find_domain(source, req.vm)
            if dom is None:
                return self._already_moved(src_host)
            xml = self._call(dom.XMLDesc, "read the domain XML", req.source_uri)
            facts = domxml.describe_domain(dom, req.source_uri)
            requirements = domxml.parse_requirements(xml)
            resolved = settings.resolve(facts.get("migration_settings") or {}, req.cluster_policy, req.global_policy)
            effective = {key: entry["value"] for key, entry in resolved.items()}
            if effective["migration_mode"] == "none":
                raise PolicyError(
                    "VM '%s' has migration_mode 'none' (set at the %s level): it is never migrated." % (facts["name"], resolved["migration_mode"]["source"]),
                    vm=facts["name"],
                    uri=req.source_uri,
                )
            req.policy = self._effective_policy(effective)
            needs = placement.needs_from_facts(facts, requirements, effective)
            if not facts["active"]:
                needs = dataclasses.replace(needs, memory_mib=0, vcpus=0)  # an offline move takes no memory
            source_uuid = parse_capabilities(source.getCapabilities())["uuid"]
            self._check_disks(facts["name"], requirements)
            running = bool(facts["active"])
            if req.timeout is None:
                req.timeout = default_timeout(int(facts["memory_mib"] or 0))
            cpu = None
            if running and requirements.get("cpu_xml"):
                cpu = CpuCheck(requirements["cpu_xml"], facts.get("arch"), facts.get("domain_type"), facts.get("machine"))
            dest, rejected = self._choose(needs, cpu, source_uuid)
            kind = ("live" if req.live else "paused") if running else "offline"
            plan = {
                "vm": facts["name"],
                "uuid": facts["uuid"],
                "source": src_host,
                "destination": {"hostname": dest.name, "uri": dest.uri},
                "kind": kind,
                "memory_mib": facts["memory_mib"],
                "timeout_s": req.timeout,
                "timeout_action": req.timeout_action,
                "rejected_hosts": rejected,
            }
            result: t.Dict[str, t.Any] = {
                "changed": True,
                "vm": facts["name"],
                "source": src_host,
                "destination": plan["destination"],
                "plan": plan,
                "policy": req.policy.as_dict(),
                "diff": {"before": {"vm": facts["name"], "host": src_host["hostname"]}, "after": {"vm": facts["name"], "host": dest.name}},
            }
            if check_mode:
                return result
            self.event("started", kind=kind, destination=dest.uri)
            if not self._execute(dom, facts, dest, running):
                result.update(msg="Migration of VM '%s' to %s started; not waiting for it." % (facts["name"], dest.uri), events=self.events)
                return result
            result.update(self._completed_stats(facts["uuid"], dest.uri, dom))
        result.update(duration_s=self.clock.now(), schedule_applied=self.applied, events=self.events)
        return result

    def _effective_policy(self, effective: t.Mapping[str, t.Any]) -> Policy:
        """The task's policy and options win; what they leave open comes from the VM > cluster > global settings."""
        return settings.effective_policy(effective, self.request.policy_option, self.request.overrides)

    def _already_moved(self, src_host: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
        """The VM is not on the source: fine if it runs on a destination candidate (a repeat run)."""
        req = self.request
        for candidate in req.candidates:
            try:
                with self.connect(candidate.uri) as conn:
                    dom = domxml.find_domain(conn, req.vm)
                    # Running there, or (after an offline move) defined there persistently.
                    if dom is not None and (dom.isActive() or dom.isPersistent()):
                        where = {"hostname": conn.getHostname(), "uri": candidate.uri}
                        return {
                            "changed": False,
                            "vm": req.vm,
                            "source": src_host,
                            "destination": where,
                            "msg": "VM '%s' is already on %s (%s)." % (req.vm, where["hostname"], candidate.uri),
                            "events": [],
                            "schedule_applied": [],
                        }
            except MigrationError:
                continue
        raise VmNotFoundError(
            "VM '%s' does not exist on the source %s, nor on any destination candidate." % (req.vm, req.source_uri),
            vm=req.vm,
            uri=req.source_uri,
        )

    def _call(self, func: t.Callable[..., t.Any], action: str, uri: str, *args: t.Any) -> t.Any:
        try:
            return func(*args)
        except libvirt.libvirtError as exc:
            raise translate_libvirt_error(exc, action, vm=self.request.vm, uri=uri) from exc

    def _check_disks(self, vm: str, requirements: t.Mapping[str, t.Any]) -> None:
        if self.request.allow_unsafe:
            return
        unsafe = ["%s (cache=%s)" % (disk["target"], disk.get("cache") or "default") for disk in requirements["disks"] if disk.get("unsafe_cache")]
        if unsafe:
            raise PolicyError(
                "VM '%s' has disks with a cache mode other than 'none', unsafe to migrate live: %s. "
                "Set allow_unsafe=true to migrate anyway." % (vm, ", ".join(unsafe)),
                vm=vm,
                uri=self.request.source_uri,
            )

    def _choose(self, needs: placement.VmNeeds, cpu: t.Optional[CpuCheck], source_uuid: str) -> t.Tuple[placement.HostState, t.Dict[str, t.List[str]]]:
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
        return best, rejected

    def _execute(self, dom: t.Any, facts: t.Mapping[str, t.Any], dest: placement.HostState, running: bool) -> bool:
        """Run the libvirt job; True once it completed, False when started and not waited for."""
        req = self.request
        flags, params = migration_flags_and_params(req, running)
        live = running and req.live
        downtime_set = live and self._set_downtime(dom, req.policy.initial_downtime_ms)
        outcome: t.Dict[str, t.Any] = {}

        def run() -> None:
            try:
                dom.migrateToURI3(dest.uri, params, flags)
            except libvirt.libvirtError as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=run, name="migrate-%s" % facts["name"], daemon=True)
        worker.start()
        if not req.wait and running:
            # The source libvirtd drives a peer-to-peer migration to its end on its own.
            while worker.is_alive() and self._job_stats(dom) is None:
                worker.join(req.poll_interval)
        else:
            self._monitor(dom, worker, live, downtime_pending=live and not downtime_set)
        if "error" in outcome:
            self._recover_source(dom)
            exc = translate_libvirt_error(outcome["error"], "migrate to %s" % dest.uri, vm=facts["name"], uri=req.source_uri)
            if self._aborted_by is not None:
                exc = OperationCancelledError("%s (%s)" % (exc.msg, self._aborted_by), **exc.details)
            self.event("failed", reason=exc.msg)
            raise self._fail(exc)
        if worker.is_alive():
            return False
        self.event("completed")
        if self._suspended:
            self._resume_on(dest.uri, facts["uuid"])
        return True

    def _monitor(self, dom: t.Any, worker: threading.Thread, live: bool, downtime_pending: bool) -> None:
        """Poll the job until it ends: apply schedule steps, log progress, act on the timeout."""
        req = self.request
        tracker = ScheduleTracker(req.policy.schedule if live else ())
        timeout_hit = False
        last_progress = 0.0
        last_check: t.Optional[float] = None
        while worker.is_alive():
            worker.join(req.poll_interval)
            if not worker.is_alive():
                break
            stats = self._job_stats(dom)
            if stats is None:
                continue
            self._last_stats = stats
            if downtime_pending:
                downtime_pending = not self._set_downtime(dom, req.policy.initial_downtime_ms)
            now = self.clock.now()
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
            if req.timeout and now >= req.timeout and not timeout_hit:
                timeout_hit = True
                self.event("timeout", after_s=req.timeout, action=req.timeout_action)
                self._apply(dom, Step(tracker.stalled, req.timeout_action), stats, tracker.stalled, reason="timeout after %d s" % req.timeout)

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
                dom.suspend()
                self._suspended = True
            elif step.action == "abort":
                self._aborted_by = "aborted: %s" % why
                dom.abortJob()
        except libvirt.libvirtError as exc:
            record["error"] = str(exc)
        self.applied.append(record)
        self.event("schedule_step", **{key: value for key, value in record.items() if key != "at_s"})

    def _recover_source(self, dom: t.Any) -> None:
        """After a failed job: the VM must run on the source; resume it if we paused it."""
        try:
            state = dom.state()[0]
            if self._suspended and state == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
                self.event("resumed_on_source")
        except libvirt.libvirtError as exc:
            self.event("source_state_unknown", reason=str(exc))

    def _resume_on(self, uri: str, uuid: str) -> None:
        with self.connect(uri) as conn:
            dom = conn.lookupByUUIDString(uuid)
            if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
                self.event("resumed_on_destination")

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

    # -- cancel -------------------------------------------------------------------------------
    def cancel(self, check_mode: bool) -> t.Dict[str, t.Any]:
        """Abort the VM's outgoing migration job; the VM keeps running on the source."""
        req = self.request
        with self.connect(req.source_uri) as source:
            dom = domxml.lookup_domain(source, req.vm)
            stats = self._job_stats(dom)
            if stats is None:
                return {"changed": False, "vm": req.vm, "msg": "VM '%s' has no migration job running on %s." % (req.vm, req.source_uri)}
            operation = stats.get("operation")
            if operation is not None and operation != JOB_OPERATION_MIGRATION_OUT:
                raise MigrationError(
                    "VM '%s' on %s runs a job that is not an outgoing migration (operation %s); not cancelling it." % (req.vm, req.source_uri, operation),
                    vm=req.vm,
                    uri=req.source_uri,
                )
            if check_mode:
                return {"changed": True, "vm": req.vm, "msg": "Would cancel the migration of VM '%s'." % req.vm}
            try:
                dom.abortJob()
            except libvirt.libvirtError as exc:
                if libvirt_error_code(exc) != VIR_ERR_OPERATION_INVALID:
                    raise translate_libvirt_error(exc, "cancel the migration", vm=req.vm, uri=req.source_uri) from exc
            self.event("cancel_requested")
            deadline = time.monotonic() + CANCEL_WAIT_S
            while self._job_stats(dom) is not None and time.monotonic() < deadline:
                time.sleep(req.poll_interval)
            state = domxml.state_name(dom.state()[0]) if domxml.find_domain(source, req.vm) is not None else "gone"
            self.event("cancelled", state=state)
            return {"changed": True, "vm": req.vm, "state": state, "events": self.events}
