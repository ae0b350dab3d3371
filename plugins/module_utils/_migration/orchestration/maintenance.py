# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""Host maintenance: evacuate a host in priority order and mark it, or bring it back to active.

The maintenance mark is a small JSON file in the collection's state directory on the host itself
(since when, why, by whom, and which VMs were shut down for it). Every migration the evacuation
runs is also appended, as one JSON line, to the event log in the collection's log directory on the
host, for audit.

The host is marked only when every VM has moved (or been shut down as asked). If any migration
fails, the others still run, the host is not marked, and the result lists every VM's outcome; a
rerun resumes, since VMs that have moved are no longer on the host.

Local disks (option ``storage`` copy or auto, ``storage.py``): the source's libvirt is asked about
each VM's volumes, and each usable candidate once (at the same time) about its pools and the paths
the VMs' disks would take there; the plan sends a VM that copies disks only where its copies fit
(``evacuation.py``). Copy manifests a lost run left for the host's VMs are cleaned before the plan
is made (in check mode, a warning). Each copy move runs under ``DiskCopies`` (``batch.py``).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
import typing as t

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import domain as domxml
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import affinity, evacuation, placement, rules, statefiles, storage
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io import storage as disk_io
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.connection import libvirt_connection
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import (
    MigrationError,
    VmNotFoundError,
    is_not_found,
    translate_libvirt_error,
    unexpected_error,
)
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.hostinfo import host_memory, parse_capabilities
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.mark import (
    ACTIVATING,
    MAINTENANCE,
    PREPARING,
    clear_mark,
    hook_status,
    hook_trouble,
    locked,
    now_iso,
    read_mark,
    read_mark_quietly,
    write_mark,
)
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.plan import Candidate, Move, RunOptions, record_phase
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.requests import MaintenanceRequest
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.probe import CpuCheck, probe_hosts
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.settings_store import record_placement
from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration.batch import EVENT_LOG, MoveBatch, append_event

try:
    import libvirt
except ImportError:  # reported by the module through missing_required_lib
    pass

# The evacuation's progress, rewritten as moves start and end, for whoever watches a long one (the
# roles poll it while the module runs in the background): in the state directory, readable by all.
PROGRESS_FILE = "evacuation.json"


def listed_uuids(*marks: t.Mapping[str, t.Any], names: t.Optional[t.Sequence[str]] = None) -> t.Dict[str, t.Any]:
    """The mark's ``shutdown_uuids`` key ({name: UUID} of the VMs shut down for the maintenance), as a dict
    to merge into a mark: the UUIDs ``marks`` record for ``names`` (else the first mark's ``shutdown_vms``);
    empty when none is recorded (marks written before UUIDs were)."""
    recorded: t.Dict[str, str] = {}
    for mark in marks:
        recorded.update(mark.get("shutdown_uuids") or {})
    wanted = set((marks[0].get("shutdown_vms") or []) if names is None else names)
    kept = {name: value for name, value in recorded.items() if name in wanted}
    return {"shutdown_uuids": kept} if kept else {}


def listed_domain(conn: t.Any, mark: t.Mapping[str, t.Any], name: str) -> t.Optional[t.Any]:
    """The domain a VM the mark lists stands for: found by its recorded UUID (it may have been renamed,
    and another VM may have taken its name), by name only for a mark without UUIDs; None when gone."""
    recorded = (mark.get("shutdown_uuids") or {}).get(name)
    if recorded is None:
        return domxml.find_domain(conn, name)
    try:
        return conn.lookupByUUIDString(recorded)
    except libvirt.libvirtError as exc:
        if is_not_found(exc):
            return None
        raise translate_libvirt_error(exc, "look the VM up by its UUID", vm=name) from exc


def _has_saved_image(dom: t.Any) -> bool:
    """The shut-off VM has a managed save image on this host (False when libvirt cannot tell)."""
    try:
        return bool(dom.hasManagedSaveImage(0))
    except libvirt.libvirtError:
        return False


class HostMaintenance:
    """``maintenance`` and ``active`` for the host at ``request.uri``."""

    def __init__(self, request: MaintenanceRequest, log: t.Callable[[str], None] = lambda _msg: None) -> None:
        self.request = request
        self.log = log
        self.start = time.monotonic()
        self._log_lock = threading.Lock()
        self.timings: t.Dict[str, float] = {}
        # The disk copies of lost runs cleaned before the plan was made.
        self.cleaned: t.List[t.Dict[str, t.Any]] = []

    def connect(self, uri: str, connect_timeout: t.Optional[float] = None) -> t.ContextManager[t.Any]:
        return libvirt_connection(uri, self.request.username, self.request.password, connect_timeout=connect_timeout)

    def at(self) -> float:
        return round(time.monotonic() - self.start, 3)

    # -- reading the source and the candidates ------------------------------------------------
    def _source_vms(self, conn: t.Any) -> t.Tuple[t.List[evacuation.VmToMove], t.Dict[str, CpuCheck]]:
        """Every VM of the source, read once: its XML, state and effective settings."""
        req = self.request
        vms = []
        cpus: t.Dict[str, CpuCheck] = {}
        try:
            domains = conn.listAllDomains(0)
        except libvirt.libvirtError as exc:
            raise translate_libvirt_error(exc, "list the VMs", uri=req.uri) from exc
        for dom in domains:
            try:
                xml = dom.XMLDesc(0)
                facts = domxml.describe_domain(dom, req.uri, xml=xml)
            except VmNotFoundError:
                continue  # gone since it was listed
            except libvirt.libvirtError as exc:
                if is_not_found(exc):
                    continue
                raise translate_libvirt_error(exc, "read the domain XML", uri=req.uri) from exc
            requirements = domxml.parse_requirements(xml)
            vm = rules.VmToMove.from_domain(facts, requirements, req.cluster_policy, req.global_policy)
            if not vm.running:
                vm.saved_image = _has_saved_image(dom)
            if req.storage != storage.SHARED:
                try:
                    vm.storage_facts = disk_io.source_facts(conn, dom, vm.disks)
                except libvirt.libvirtError as exc:
                    raise translate_libvirt_error(exc, "read the VM's storage volumes", vm=vm.name, uri=req.uri) from exc
            vms.append(vm)
            cpu = CpuCheck.of(facts, requirements)
            if cpu is not None:
                cpus[vm.name] = cpu
        return vms, cpus

    def _hosts(self, vms: t.Sequence[evacuation.VmToMove], cpus: t.Mapping[str, CpuCheck]) -> t.List[placement.HostState]:
        needs = [t.cast(placement.VmNeeds, vm.needs) for vm in vms]
        return probe_hosts(self.connect, self.request.candidates, needs, cpus, self.request.memory_reserved_mib)

    def _destination_storage(
        self, vms: t.Sequence[evacuation.VmToMove], hosts: t.Sequence[placement.HostState], source_uuid: str, leftovers: t.Mapping[str, t.Sequence[str]]
    ) -> t.Dict[str, storage.DestinationFacts]:
        """Per usable candidate (by name), its storage pools and which of the VMs' disk paths it has, read once each, all at the same time.

        ``leftovers`` are, per destination URI, the volumes of lost runs' copies that a real run deletes
        first (check mode): they do not count as present. A candidate that cannot be read is left out:
        it takes no copy, and the plan says why.
        """
        paths = sorted({str(disk["path"]) for vm in vms for disk in vm.disks if disk.get("path")})
        usable = [host for host in hosts if host.error is None and not host.maintenance and host.uuid != source_uuid]

        def one(host: placement.HostState) -> t.Optional[t.Tuple[str, storage.DestinationFacts]]:
            try:
                with self.connect(host.uri) as conn:
                    facts = disk_io.destination_facts(conn, paths)
            except (MigrationError, libvirt.libvirtError) as exc:
                self.log("cannot read the storage pools of %s: %s" % (host.name, getattr(exc, "msg", exc)))
                return None
            return host.name, facts.without(leftovers.get(host.uri, ()))

        if not usable:
            return {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(16, len(usable)))) as pool:
            return dict(entry for entry in pool.map(one, usable) if entry is not None)

    def _leftover_copies(self, vms: t.Sequence[evacuation.VmToMove], check_mode: bool) -> t.Tuple[t.List[str], t.Dict[str, t.List[str]]]:
        """Clean the volumes lost runs created for the host's VMs (their copy manifests) before the plan is made.

        In check mode nothing is deleted: a warning per VM, and per destination URI the volumes a real
        run would delete first. Returns (warnings, those volumes).
        """
        copies = disk_io.DiskCopies(self.connect, self.request.state_dir, self._cleaned)
        warnings: t.List[str] = []
        volumes: t.Dict[str, t.List[str]] = {}
        for vm in vms:
            found = copies.leftover(t.cast(str, vm.uuid)) if vm.uuid else None
            if found is None:
                continue
            if check_mode:
                warnings.append(disk_io.leftover_warning(vm.name, found))
                volumes.setdefault(found["destination_uri"], []).extend(found["volumes"])
            else:
                copies.clean(t.cast(str, vm.uuid))
        return warnings, volumes

    def _cleaned(self, event: str, **details: t.Any) -> None:
        """A lost run's disk copies cleaned before the plan (``DiskCopies``' event), for the result's ``copies_cleaned``."""
        self.cleaned.append(dict(details, event=event, at_s=self.at()))

    @staticmethod
    def _known_as(source: rules.SourceHost, hosts: t.Sequence[placement.HostState]) -> rules.SourceHost:
        """The source under the name the cluster's host list gives it (found by host UUID), else its host name."""
        for host in hosts:
            if host.error is None and host.uuid == source.uuid:
                return rules.SourceHost(name=host.name, uuid=source.uuid, uri=source.uri)
        return source

    def _affinity(self, hosts: t.Sequence[placement.HostState], source: evacuation.SourceHost) -> t.Tuple[t.Optional[affinity.Affinity], t.List[str]]:
        """The affinity groups with where every running VM of the cluster is, the source's left out (they are
        placed as the plan goes), and the warnings about what could not be seen; (None, []) without groups."""
        groups = self.request.groups
        if not groups:
            return None, []
        affinity.check_groups(groups, {host.name for host in hosts if host.uuid != source.uuid} | {source.name})
        where = {
            vm: host.name for host in hosts if host.error is None and host.uuid != source.uuid for vm in sorted(host.running_vms)
        }
        unseen = sorted(host.name for host in hosts if host.error is not None)
        warnings = []
        if unseen:
            warnings.append(
                "Affinity groups: the VMs running on %s are not known (unreachable); rules that involve them were not checked." % ", ".join(unseen)
            )
        return affinity.Affinity(groups, where), warnings

    def _final_load(self) -> t.Dict[str, t.Dict[str, t.Any]]:
        """Running VMs' vCPUs and memory left for guests on each reachable candidate, read afterwards."""
        req = self.request

        def one(candidate: Candidate) -> t.Optional[t.Tuple[str, t.Dict[str, t.Any]]]:
            try:
                with self.connect(candidate.uri) as conn:
                    name = candidate.name or conn.getHostname()
                    reserve = candidate.memory_reserved_mib if candidate.memory_reserved_mib is not None else req.memory_reserved_mib
                    memory = host_memory(conn, conn.getInfo(), reserve)
                    vcpus = sum(int(dom.info()[3]) for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
            except (MigrationError, libvirt.libvirtError):
                return None
            return name, {"uri": candidate.uri, "available_mib": memory["available_mib"], "vcpus_running": vcpus}

        began = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(16, len(req.candidates)))) as pool:
            load = dict(entry for entry in pool.map(one, req.candidates) if entry is not None)
        record_phase(self.timings, "report", began)
        return load

    # -- maintenance --------------------------------------------------------------------------
    def maintenance(self, check_mode: bool) -> t.Dict[str, t.Any]:
        """Evacuate the host and mark it; one run at a time per host (a lock in the state directory)."""
        if check_mode:
            return self._maintenance(check_mode)
        return locked(self.request.state_dir, lambda: self._maintenance(check_mode))

    def _maintenance(self, check_mode: bool) -> t.Dict[str, t.Any]:
        req = self.request
        began = time.monotonic()
        mark = read_mark(req.state_dir)
        # The audit log is written after each move; a log that cannot be written safely is refused
        # before anything moves.
        statefiles.check_append(req.log_dir, EVENT_LOG)
        with self.connect(req.uri) as conn:
            began = record_phase(self.timings, "connect", began)
            try:
                hostname = conn.getHostname()
                uuid = parse_capabilities(conn.getCapabilities())["uuid"]
            except libvirt.libvirtError as exc:
                raise translate_libvirt_error(exc, "read the host's identity", uri=req.uri) from exc
            vms, cpus = self._source_vms(conn)
        began = record_phase(self.timings, "read_source", began)
        source = evacuation.SourceHost(name=hostname, uuid=uuid, uri=req.uri)
        to_move = [vm for vm in vms if vm.running or vm.persistent]
        hosts = self._hosts(to_move, cpus)
        began = record_phase(self.timings, "probe", began)
        for vm in to_move:
            vm.duplicate_on = rules.defined_elsewhere(vm.uuid, uuid, hosts)
        asked = rules.MoveRequest(
            allow_unsafe_cache=req.allow_unsafe_cache,
            tunnelled=req.tunnelled,
            guest_hooks=req.guest_hooks,
            storage=req.storage,
            shared_storage=req.shared_storage,
        )
        groups, warnings = self._affinity(hosts, source)
        pools = None
        if req.storage != storage.SHARED:
            left, leftovers = self._leftover_copies(to_move, check_mode)
            warnings.extend(left)
            pools = self._destination_storage(to_move, hosts, uuid, leftovers)
            began = record_phase(self.timings, "storage", began)
        plan = evacuation.plan_evacuation(
            to_move, hosts, source, req.include_manual, req.non_migratable, request=asked, affinity=groups, destination_storage=pools
        )
        enforcement = hook_status(state_dir=req.state_dir)
        record_phase(self.timings, "plan", began)
        result: t.Dict[str, t.Any] = {"changed": True, "host": hostname, "plan": plan.as_dict(), "enforcement": enforcement, "timings": self.timings}
        if self.cleaned:
            result["copies_cleaned"] = self.cleaned
        # Rules the plan leaves unmet: soft ones it could not keep, hard ones already broken elsewhere.
        warnings.extend("%s (after the evacuation)." % breach.message for breach in plan.unmet or ())
        if not plan.ok:
            raise MigrationError(
                "%s cannot go into maintenance, nothing was moved: %s" % (hostname, " ".join(plan.problems())),
                host_name=hostname,
                plan=plan.as_dict(),
            )
        to_shut = [held for held in plan.shutdown if held.running]
        if mark is not None and mark["state"] == MAINTENANCE and not plan.moves and not to_shut:
            return {
                "changed": bool(self.cleaned),
                "host": hostname,
                "maintenance": mark,
                "plan": plan.as_dict(),
                "enforcement": enforcement,
                "msg": "%s is in maintenance and runs no VM." % hostname,
            }
        if warnings:
            result["warnings"] = warnings
        if req.require_hook and not enforcement["loaded"] and check_mode:
            result["warnings"] = warnings + [
                "%s does not enforce maintenance yet: the collection's libvirt hook %s is %s; a real run refuses to start."
                % (hostname, enforcement["path"], hook_trouble(enforcement))
            ]
        elif req.require_hook and not enforcement["loaded"]:
            raise MigrationError(
                "%s cannot go into maintenance: it would not refuse incoming migrations and VM starts meanwhile, because the "
                "collection's libvirt hook %s is %s. Install it with the role virtops.migration.maintenance_hook "
                "(playbooks/setup_hosts.yml), which restarts libvirtd once; or set require_hook=false. Nothing was changed."
                % (hostname, enforcement["path"], hook_trouble(enforcement)),
                host_name=hostname,
                enforcement=enforcement,
            )
        if check_mode:
            return result
        base = {
            "since": (mark or {}).get("since") or now_iso(),
            "reason": req.reason,
            "by": req.requested_by,
            "shutdown_vms": list((mark or {}).get("shutdown_vms") or []),
            **listed_uuids(mark or {}),
        }
        # From here on the host refuses incoming VMs; whatever goes wrong, it goes back to active, or
        # stays activating while a VM shut down for it is not running again.
        write_mark(req.state_dir, dict(base, state=PREPARING))
        records: t.List[t.Dict[str, t.Any]] = []
        asked: t.List[str] = []
        try:
            began = time.monotonic()
            records = self._run(plan, hostname, self._known_as(source, hosts))
            began = record_phase(self.timings, "moves", began)
            failed = [record for record in records if record["outcome"] == "failed"]
            if failed:
                raise MigrationError(
                    "%d of %d VMs could not leave %s: %s."
                    % (len(failed), len(records), hostname, "; ".join("%s: %s" % (r["vm"], r["error"]) for r in failed)),
                    host_name=hostname,
                )
            shut = self._shutdown(plan, hostname, base, asked)
            began = record_phase(self.timings, "shutdown", began)
            left = self._active_vms()
            if left:
                raise MigrationError(
                    "%s still runs %s after its evacuation (started or arrived meanwhile)." % (hostname, ", ".join(left)),
                    host_name=hostname,
                    running=left,
                )
            final = dict(base, state=MAINTENANCE)
            write_mark(req.state_dir, final)
            record_phase(self.timings, "recheck", began)
        except BaseException as exc:
            undo = self._undo(hostname, mark, base, asked)
            error = exc if isinstance(exc, MigrationError) else unexpected_error(exc, "evacuate the host", uri=req.uri)
            if not isinstance(exc, Exception):
                raise
            error.msg = "%s %s" % (error.msg, undo.pop("sentence"))
            error.details.update(plan=plan.as_dict(), vms=records, load=self._final_load(), timings=self.timings, **undo)
            if error is exc:
                raise
            raise error from exc
        result.update(vms=records, shutdown=shut, maintenance=final, load=self._final_load())
        moved_warnings = [warning for record in records for warning in record.get("warnings") or []]
        if moved_warnings:
            result["warnings"] = list(result.get("warnings") or []) + moved_warnings
        self.timings["total"] = self.at()
        return result

    def _undo(self, hostname: str, previous: t.Optional[t.Mapping[str, t.Any]], base: t.Mapping[str, t.Any], asked: t.Sequence[str]) -> t.Dict[str, t.Any]:
        """After a failed evacuation: the host's state as before the run, as far as libvirt allows.

        ``base`` is the mark as this run last wrote it: its ``shutdown_vms`` lists the VMs shut down
        for the maintenance, each written there before its shutdown was asked for, and those of an
        earlier maintenance. ``asked`` are the VMs this run asked to shut down.

        A host that was in maintenance and still runs no VM keeps its old mark (listing those VMs too).
        Any other host starts the listed VMs that are shut off again, under an ``activating`` mark,
        and goes back to active (its mark removed) once none is left. A VM that does not start, or
        that this run asked to shut down and still runs (it may stop later), stays listed and the
        host stays activating, so that ``state=active`` starts it. Returns the result keys saying what
        was done, and a sentence for the message.
        """
        req = self.request
        try:
            running = self._active_vms()
        except MigrationError:
            running = None
        listed = list(base.get("shutdown_vms") or [])
        if previous is not None and previous.get("state") == MAINTENANCE and running == []:
            kept = dict(previous, shutdown_vms=sorted(set(previous.get("shutdown_vms") or []) | set(listed)))
            kept.update(listed_uuids(kept, previous, base))
            try:
                write_mark(req.state_dir, kept)
                return {"maintenance": kept, "sentence": "%s stays in maintenance, as before this run." % hostname}
            except MigrationError as exc:
                self.log("%s: cannot restore the maintenance mark: %s" % (hostname, exc.msg))
        undo: t.Dict[str, t.Any] = {"maintenance": None}
        try:
            if listed:
                with self.connect(req.uri) as conn:
                    restarted, not_restarted, stopping = self._start_listed(conn, dict(base), keep_running=asked)
            else:
                restarted, not_restarted, stopping = [], {}, []
                clear_mark(req.state_dir)
        except MigrationError as exc:
            undo["maintenance"] = read_mark_quietly(req.state_dir)
            if listed:
                undo["sentence"] = "The mark of %s stays (%s). VM(s) shut down for the maintenance: %s; run state=active to start them again and end it." % (
                    hostname,
                    exc.msg,
                    ", ".join(listed),
                )
            else:
                undo["sentence"] = "The mark of %s could not be removed (%s); fix it by hand." % (hostname, exc.msg)
            return undo
        if restarted or not_restarted:
            undo.update(restarted=restarted, not_restarted=not_restarted)
        if stopping:
            undo["still_shutting_down"] = stopping
        if not_restarted or stopping:
            undo["maintenance"] = read_mark_quietly(req.state_dir)
            sentence = "%s stays in state activating (it takes no incoming VM)." % hostname
        else:
            sentence = "%s is active again." % hostname
        if restarted:
            sentence += " Started again: %s." % ", ".join(restarted)
        if not_restarted:
            sentence += " Could not start again: %s." % "; ".join("%s (%s)" % pair for pair in sorted(not_restarted.items()))
        if stopping:
            sentence += " Asked to shut down and still running: %s." % ", ".join(stopping)
        if not_restarted or stopping:
            sentence += " The mark lists them: run state=active to start them again (it leaves a running VM as it is) and end it."
        undo["sentence"] = sentence
        return undo

    def _start_listed(
        self, conn: t.Any, mark: t.Mapping[str, t.Any], keep_running: t.Collection[str] = ()
    ) -> t.Tuple[t.List[str], t.Dict[str, str], t.List[str]]:
        """Start the VMs the mark lists as shut down for the maintenance; remove the mark once none is left.

        While they start the host is ``activating``: the hook lets them start and still refuses incoming
        migrations. A listed VM that is gone or runs drops from the list, except one of ``keep_running``
        (asked to shut down, it may stop later); a VM that fails to start stays listed, for the next run.
        Returns (started, {name: why not started}, kept running).
        """
        req = self.request
        listed = list(mark.get("shutdown_vms") or [])
        started: t.List[str] = []
        failed: t.Dict[str, str] = {}
        kept: t.List[str] = []
        to_start = []
        for name in listed:
            try:
                dom = listed_domain(conn, mark, name)
                if dom is not None and dom.isActive() and name in keep_running:
                    kept.append(name)
                elif dom is not None and not dom.isActive():
                    to_start.append((name, dom))
            except (MigrationError, libvirt.libvirtError) as exc:
                failed[name] = getattr(exc, "msg", None) or str(exc)
        remaining = sorted(set(kept) | set(failed) | {name for name, _dom in to_start})
        if remaining:
            write_mark(req.state_dir, dict(mark, state=ACTIVATING, shutdown_vms=remaining, **listed_uuids(mark, names=remaining)))
        for name, dom in to_start:
            try:
                dom.create()
            except libvirt.libvirtError as exc:
                failed[name] = translate_libvirt_error(exc, "start the VM shut down for maintenance", vm=name, uri=req.uri).msg
                continue
            started.append(name)
            remaining.remove(name)
            write_mark(req.state_dir, dict(mark, state=ACTIVATING, shutdown_vms=remaining, **listed_uuids(mark, names=remaining)))
        if not remaining:
            clear_mark(req.state_dir)
        return started, failed, kept

    def _active_vms(self) -> t.List[str]:
        """Every VM active on the host now, read again from libvirt."""
        req = self.request
        with self.connect(req.uri) as conn:
            try:
                return sorted(dom.name() for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
            except libvirt.libvirtError as exc:
                raise translate_libvirt_error(exc, "list the VMs still running", uri=req.uri) from exc

    def _run(self, plan: evacuation.EvacuationPlan, hostname: str, source: rules.SourceHost) -> t.List[t.Dict[str, t.Any]]:
        """Run the plan's moves under the queue's limits; one record per VM, in start order.

        Each VM that moved has the host it left written in its placement record, for the move back
        (``cluster_balance`` policy ``failback``): ``source`` is that host under the name the cluster's
        host list gives it, and its host UUID.
        """
        req = self.request
        options = RunOptions(poll_interval=req.poll_interval, monitor_interval=req.monitor_interval, state_dir=req.state_dir,
                             username=req.username, password=req.password, unplug_timeout=req.unplug_timeout,
                             guest_hook_failure=req.guest_hook_failure, guest_hook_timeout=req.guest_hook_timeout,
                             tunnelled=req.tunnelled, synchronous_writes=req.synchronous_writes, remove_source_disks=req.remove_source_disks)
        batch = MoveBatch(options, self.connect, req.candidates, log=self.log, started=self.start)
        batch.copies = plan.copies
        left = {"left_host": source.name, "left_host_uuid": source.uuid, "left_at": now_iso(), "balanced_at": None}

        def moved(move: Move, _record: t.Dict[str, t.Any]) -> None:
            with self.connect(move.destination_uri) as conn:
                record_placement(conn.lookupByUUIDString(move.uuid), left, move.destination_uri)

        def ended(_move: Move, record: t.Dict[str, t.Any], records: t.Sequence[t.Dict[str, t.Any]]) -> None:
            self._audit(record)
            self._progress(hostname, len(plan.moves), records, finished=False)

        batch.moved = moved
        batch.begun = lambda records: self._progress(hostname, len(plan.moves), records, finished=False)
        batch.ended = ended
        records = batch.run(plan.moves, req.max_outgoing, req.max_incoming)
        self._progress(hostname, len(plan.moves), records, finished=True)
        return records

    def _progress(self, hostname: str, total: int, records: t.Sequence[t.Mapping[str, t.Any]], finished: bool) -> None:
        """Rewrite the progress file: moves ended (migrated or not) out of ``total``, and those running now."""
        ended = [record for record in records if "finished" in record]
        data = {
            "host": hostname,
            "total": total,
            "ended": len(ended),
            "failed": sum(1 for record in ended if record.get("outcome") == "failed"),
            "running": [{"vm": record["vm"], "to": record["to"], "started": record["started"]} for record in records if "finished" not in record],
            "done": finished,
            "updated": now_iso(),
        }
        try:
            statefiles.write_json(self.request.state_dir, PROGRESS_FILE, data)
        except (OSError, MigrationError) as exc:
            self.log("cannot write the progress file: %s" % exc)

    def _audit(self, record: t.Mapping[str, t.Any]) -> None:
        """Append one JSON line per migration to the host's event log (best effort, never fatal)."""
        with self._log_lock:
            append_event(self.request.log_dir, record, "host maintenance" + (": %s" % self.request.reason if self.request.reason else ""),
                         self.request.requested_by, self.log)

    def _shutdown(self, plan: evacuation.EvacuationPlan, hostname: str, base: t.Dict[str, t.Any], asked: t.List[str]) -> t.List[str]:
        """Shut the plan's non-migratable VMs down cleanly; fail if one does not stop in time.

        Only persistent VMs are ever shut down (the plan blocks transient ones): they stay defined
        on the host and are started again when it is activated. Each is added to the mark's
        ``shutdown_vms`` (``base``, written durably) before its shutdown is asked for, and to ``asked``,
        so that whatever happens next (a timeout, an error, the module killed) the mark lists it for
        the activation.
        """
        req = self.request
        names = [held.vm for held in plan.shutdown if held.running]
        if not names:
            return []
        with self.connect(req.uri) as conn:
            domains = {}
            for name in names:
                dom = domxml.lookup_domain(conn, name)
                try:
                    if not dom.isPersistent():
                        raise MigrationError("VM '%s' on %s is transient: shutting it down would destroy it; it was not touched." % (name, hostname), vm=name)
                    base["shutdown_vms"] = sorted(set(base["shutdown_vms"]) | {name})
                    base["shutdown_uuids"] = dict(base.get("shutdown_uuids") or {}, **{name: dom.UUIDString()})
                    write_mark(req.state_dir, dict(base, state=PREPARING))
                    asked.append(name)
                    dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT | libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
                except libvirt.libvirtError as exc:
                    raise translate_libvirt_error(exc, "shut the VM down", vm=name, uri=req.uri) from exc
                domains[name] = dom
            deadline = time.monotonic() + req.shutdown_timeout
            while True:
                try:
                    still = sorted(name for name, dom in domains.items() if dom.isActive())
                except libvirt.libvirtError as exc:
                    raise translate_libvirt_error(exc, "follow the shutdown of the VMs", uri=req.uri) from exc
                if not still:
                    break
                if time.monotonic() > deadline:
                    raise MigrationError(
                        "VM(s) %s on %s did not shut down within %d s (the guest ignored or has not finished the shutdown)."
                        % (", ".join(still), hostname, req.shutdown_timeout),
                        host_name=hostname,
                        vms=still,
                    )
                time.sleep(req.poll_interval)
        return names

    # -- active -------------------------------------------------------------------------------
    def activate(self, check_mode: bool) -> t.Dict[str, t.Any]:
        """Clear the mark (the host accepts VMs again), then start the VMs shut down for the maintenance.

        Refused while an evacuation of the host runs (it holds the lock).
        """
        if check_mode:
            return self._activate(check_mode)
        return locked(self.request.state_dir, lambda: self._activate(check_mode))

    def _activate(self, check_mode: bool) -> t.Dict[str, t.Any]:
        req = self.request
        mark = read_mark(req.state_dir)
        with self.connect(req.uri) as conn:
            try:
                hostname = conn.getHostname()
            except libvirt.libvirtError as exc:
                raise translate_libvirt_error(exc, "read the host's name", uri=req.uri) from exc
            if mark is None:
                return {"changed": False, "host": hostname, "maintenance": None, "msg": "%s is not in maintenance." % hostname}
            to_start = []
            for name in mark.get("shutdown_vms") or []:
                dom = listed_domain(conn, mark, name)
                if dom is not None and not dom.isActive():
                    to_start.append(name)
            if check_mode:
                return {"changed": True, "host": hostname, "started": to_start, "maintenance": None, "previous": mark}
            started, failed, _kept = self._start_listed(conn, mark)
        if failed:
            raise MigrationError(
                "%s stays in state activating (it takes no incoming VM): %d VM(s) shut down for its maintenance could not start: %s. "
                "Fix them, then run state=active again." % (hostname, len(failed), "; ".join(failed[name] for name in sorted(failed))),
                host_name=hostname,
                changed=True,
                started=started,
                not_started=sorted(failed),
                maintenance=read_mark_quietly(req.state_dir),
            )
        return {"changed": True, "host": hostname, "started": started, "maintenance": None, "previous": mark}
