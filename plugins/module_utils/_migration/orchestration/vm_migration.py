# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""``vm_migrate``: plan the move of one VM, then hand it to the job runner.

Planning reads the VM once on the source (its XML, state and own settings) and each candidate once
(all at the same time), asks the one assessor (``rules.py``, the same rules an evacuation applies)
whether and how the VM may move under the task's options (its policy: the task's options > the VM's
settings > cluster > global), refuses the move for the first rule that says no, and chooses the
destination. The resulting :class:`~plan.Move` is what check mode reports and what
:class:`~runner.JobRunner` carries out. A VM that already has a migration job (a lost earlier run's,
or someone else's) is not judged again: the job is followed to its end under the policy and timeout
the rules give it (refused only when its settings give no policy).

Affinity groups (option ``affinity_groups``, ``affinity.py``) see where every running VM is: on
each candidate as probed, and on the source (this VM aside). ``destination=auto`` chooses only
among hosts where the VM breaks no hard rule, preferring the fewest soft rules broken; a named
destination that breaks a hard rule is refused (rule ``affinity``) before anything moves, and a soft
rule it breaks is a warning. A shut-off VM moved offline keeps only the host rules.

The task runs on (or connects to) the source host. The source libvirtd drives the migration
peer-to-peer to the destination's libvirt URI, so that URI must be the one the source host uses to
reach the destination (the inventory's ``virtops_libvirt_uri``).

Local disks (option ``storage``, ``storage.py``): with ``copy`` or ``auto`` the rules classify the
VM's disks from what the source's libvirt says of their volumes; the disks to copy need not be
visible on the destination, and once it is chosen their copies are planned there (pool, free space,
no volume at the path), refused with every reason, and shown in check mode. A real run creates the
volumes under a manifest (``<state_dir>/copies/<UUID>.json``), migrates with the disk copy, and after
the verified move drops the manifest (and, with ``remove_source_disks``, the source volumes); any
failure deletes the created volumes unless the VM is running or defined there. A manifest a lost run
left is cleaned the same way before the VM is planned again.
"""

from __future__ import annotations

import time
import typing as t

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import domain as domxml
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import affinity, placement, rules, storage
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io import storage as disk_io
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.connection import libvirt_connection
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import DuplicateVmError, MigrationError, VmNotFoundError
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.hostinfo import parse_capabilities
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.requests import MigrateRequest
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.plan import Candidate, Move, record_phase
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.policy import PolicyError
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.probe import CpuCheck, probe_hosts, whereabouts
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.runner import JobRunner, check_adoptable, job_stats, job_summary
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.settings_store import record_placement

try:
    import libvirt
except ImportError:  # reported by the module through missing_required_lib
    pass


class VmMigration:
    """One ``vm_migrate`` run: :meth:`migrate` and :meth:`cancel` return the module result."""

    def __init__(self, request: MigrateRequest, log: t.Callable[[str], None] = lambda _msg: None) -> None:
        self.request = request
        self.log = log
        self.runner = JobRunner(request.options, self.connect, request.vm, log=log)
        self.runner.know(request.candidates + request.elsewhere)
        self.timings: t.Dict[str, float] = {}
        # What the rules said about the VM (rules.py), once it was read.
        self.verdict: t.Optional[rules.Verdict] = None
        # In check mode, the copy manifest a lost run left, which a real run cleans first.
        self.leftover: t.Optional[t.Dict[str, t.Any]] = None
        self.copies = disk_io.DiskCopies(self.connect, request.options.state_dir, self.runner.event)

    def connect(self, uri: str, connect_timeout: t.Optional[float] = None) -> t.ContextManager[t.Any]:
        return libvirt_connection(uri, self.request.options.username, self.request.options.password, connect_timeout=connect_timeout)

    @property
    def events(self) -> t.List[t.Dict[str, t.Any]]:
        return self.runner.events

    # -- migrate ------------------------------------------------------------------------------
    def migrate(self, check_mode: bool) -> t.Dict[str, t.Any]:
        return self.runner.guarded("migrate", self.request.source_uri, lambda: self._migrate(check_mode))

    def _migrate(self, check_mode: bool) -> t.Dict[str, t.Any]:
        req = self.request
        began = mark = time.monotonic()
        with self.connect(req.source_uri) as source:
            src_host = {"hostname": self.runner.call(source.getHostname, "read the host name", req.source_uri), "uri": req.source_uri}
            mark = record_phase(self.timings, "connect", mark)
            dom = domxml.find_domain(source, req.vm)
            if dom is None:
                return self._already_moved(src_host, check_mode)
            xml = self.runner.call(dom.XMLDesc, "read the domain XML", req.source_uri, 0)
            facts = domxml.describe_domain(dom, req.source_uri, xml=xml)
            name, uuid = facts["name"], facts["uuid"]
            self.runner.vm = name
            requirements = domxml.parse_requirements(xml)
            vm = rules.VmToMove.from_domain(facts, requirements, req.cluster_policy, req.global_policy)
            if not vm.running and vm.persistent:
                vm.saved_image = bool(self.runner.call(dom.hasManagedSaveImage, "read the managed save state", req.source_uri, 0))
            if req.storage != storage.SHARED:
                vm.storage_facts = self.runner.call(disk_io.source_facts, "read the VM's storage volumes", req.source_uri, source, dom, vm.disks)
            source_uuid = parse_capabilities(self.runner.call(source.getCapabilities, "read the host capabilities", req.source_uri))["uuid"]
            origin = rules.SourceHost(name=src_host["hostname"], uuid=source_uuid, uri=req.source_uri)
            job = job_stats(dom)
            if job is not None:
                return self._adopt(source, dom, rules.move_for(self._assessor(origin).assess(vm), origin), src_host, job, check_mode)
            self.runner.resume_after_lost_run(dom, uuid, req.source_uri, check_mode)
            leftover = self._leftover_copies(uuid, check_mode)
            mark = record_phase(self.timings, "read_vm", mark)
            hosts = probe_hosts(self.connect, req.candidates, [vm.placement_needs], self._cpus(vm, facts, requirements), req.memory_reserved_mib)
            vm.duplicate_on = rules.defined_elsewhere(uuid, source_uuid, hosts + self._look_elsewhere(uuid))
            candidates = frozenset(host.name for host in hosts if host.uuid != source_uuid)
            self.verdict = verdict = self._assessor(origin, candidates).assess(vm)
            warnings = [finding.message for finding in verdict.findings if finding.rule in WARNED] + leftover
            refuse(verdict, req.source_uri)
            groups = self._affinity(source, origin, hosts, vm) if req.groups else None
            dest, rejected, soft, copies = self._destination(verdict, hosts, source_uuid, groups)
            warnings.extend(soft)
            mark = record_phase(self.timings, "probe", mark)
            move = rules.move_for(verdict, origin, dest, copies)
            tunnelled = req.options.tunnelled and move.running
            plan = {
                "vm": name,
                "uuid": uuid,
                "source": src_host,
                "destination": {"hostname": dest.name, "uri": dest.uri},
                "kind": move.kind,
                "state": facts["state"],
                "memory_mib": facts["memory_mib"],
                "timeout_s": move.timeout_s,
                "timeout_action": req.options.timeout_action,
                "tunnelled": tunnelled,
                "rejected_hosts": rejected,
            }
            if copies is not None:
                plan["storage"] = copies.as_list()
            if move.bond_vfs or move.failover_primaries:
                plan["failover"] = {"bond_vfs": list(move.bond_vfs), "primaries": list(move.failover_primaries)}
            result: t.Dict[str, t.Any] = {
                "changed": True,
                "vm": name,
                "source": src_host,
                "destination": plan["destination"],
                "plan": plan,
                "policy": move.policy.as_dict(),
                "diff": {"before": {"vm": name, "host": src_host["hostname"]}, "after": {"vm": name, "host": dest.name}},
            }
            if copies is not None:
                result["storage"] = {"mode": req.storage, "disks": copies.as_list()}
            if warnings:
                result["warnings"] = warnings
            if check_mode:
                if self.events:
                    result["events"] = self.events
                return result
            if copies is not None:
                outcome = self.copies.run(copies, move, lambda: self.runner.run(source, dom, move))
            else:
                outcome = self.runner.run(source, dom, move)
            if outcome.get("started"):
                result.update(msg="Migration of VM '%s' to %s started; not waiting for it." % (name, dest.uri), events=self.events)
                return result
            warnings.extend(outcome.pop("warnings", None) or [])
            if copies is not None:
                done, problems = self.copies.finish(copies, uuid, req.source_uri, dest.uri, req.options.remove_source_disks)
                result["storage"] = dict(done, mode=req.storage)
                warnings.extend(problems)
            if (facts.get("placement") or {}).get("left_host"):
                warnings.extend(self._forget_left_host(name, uuid, dest))
            result.update(outcome)
            if warnings:
                result["warnings"] = warnings
        self.timings.update(self.runner.timings)
        self.timings["total"] = round(time.monotonic() - began, 3)
        result.update(duration_s=self.runner.clock.now(), schedule_applied=self.runner.applied, events=self.events, timings=self.timings)
        return result

    # -- disks copied with the move ------------------------------------------------------------
    def _leftover_copies(self, uuid: str, check_mode: bool) -> t.List[str]:
        """Clean the volumes a lost earlier run created for this VM (its manifest); in check mode, a warning that a real run will."""
        found = self.copies.leftover(uuid)
        if found is None:
            return []
        if check_mode:
            self.leftover = found
            return [disk_io.leftover_warning(t.cast(str, self.runner.vm), found)]
        self.copies.clean(uuid)
        return []

    def _destination(
        self, verdict: rules.Verdict, hosts: t.Sequence[placement.HostState], source_uuid: str, groups: t.Optional[affinity.Affinity]
    ) -> t.Tuple[placement.HostState, t.Dict[str, t.List[str]], t.List[str], t.Optional[storage.CopyPlan]]:
        """The destination (:meth:`_choose`) and, when disks are copied, their copies there.

        With ``destination=auto`` a host that cannot take the copies is rejected with its reasons and the
        next best is tried; a named destination that cannot take them refuses the move.
        """
        copying = verdict.storage is not None and bool(verdict.storage.copies) and verdict.vm.running
        remaining = list(hosts)
        refused: t.Dict[str, t.List[str]] = {}
        while True:
            try:
                dest, rejected, soft = self._choose(verdict.needs, remaining, source_uuid, groups)
            except MigrationError as exc:
                if not refused:
                    raise
                raise PolicyError(
                    "No candidate can take the disk copies of VM '%s': %s; and among the others: %s"
                    % (verdict.vm.name, placement.explain(verdict.vm.name, refused), exc.msg),
                    vm=verdict.vm.name,
                    uri=self.request.source_uri,
                    rule=storage.RULE,
                    rejected_hosts=refused,
                ) from None
            if not copying:
                return dest, rejected, soft, None
            try:
                return dest, dict(rejected, **refused), soft, self._copy_plan(verdict, dest)
            except PolicyError as exc:
                if not self.request.auto or exc.details.get("rule") != storage.RULE:
                    raise
                refused[dest.name] = list(exc.details.get("storage_problems") or [exc.msg])
                remaining = [host for host in remaining if host is not dest]

    def _copy_plan(self, verdict: rules.Verdict, dest: placement.HostState) -> storage.CopyPlan:
        """The copies of the VM's disks onto ``dest``, refused (rule storage, every reason) when it cannot take them."""
        req = self.request
        classified = t.cast(storage.Classification, verdict.storage)
        paths = [disk.path for disk in classified.copies] + [disk.path for disk in classified.shared if disk.readonly and disk.path]
        with self.connect(dest.uri) as conn:
            facts = self.runner.call(disk_io.destination_facts, "read the storage pools", dest.uri, conn, paths)
        if self.leftover is not None and self.leftover["destination_uri"] == dest.uri:
            # A real run deletes them first (the VM is not there, or it would not be planned from the source).
            facts = facts.without(self.leftover["volumes"])
        copies = storage.plan_for(verdict.vm.name, classified, dest.name, facts)
        if copies.refusals:
            raise PolicyError(
                "%s. Nothing was moved." % "; ".join(copies.refusals),
                vm=verdict.vm.name,
                uri=req.source_uri,
                destination_uri=dest.uri,
                rule=storage.RULE,
                storage_problems=list(copies.refusals),
            )
        return copies

    def _forget_left_host(self, name: str, uuid: str, dest: placement.HostState) -> t.List[str]:
        """A VM moved by name has its place chosen: it no longer waits to return to a host it left for a
        maintenance (``cluster_balance`` policy ``failback``). Best effort: a warning when it cannot be written."""
        try:
            with self.connect(dest.uri) as conn:
                record_placement(conn.lookupByUUIDString(uuid), {"left_host": None, "left_host_uuid": None, "left_at": None}, dest.uri)
        except (MigrationError, libvirt.libvirtError) as exc:
            return ["VM '%s' moved, but the host it left for a maintenance is still recorded in its metadata: %s" % (name, getattr(exc, "msg", exc))]
        return []

    def _assessor(self, origin: rules.SourceHost, candidates: t.Optional[t.AbstractSet[str]] = None) -> rules.Assessor:
        """The rules under this run's request: vm_migrate names the VM, which counts as confirmed."""
        req = self.request
        asked = rules.MoveRequest(
            live=req.live,
            confirmed=True,
            allow_unsafe_cache=req.allow_unsafe_cache,
            tunnelled=req.options.tunnelled,
            persistent=req.persistent,
            undefine_source=req.options.undefine_source,
            guest_hooks=req.guest_hooks,
            timeout=req.timeout,
            policy=req.policy_option,
            overrides=req.overrides,
            storage=req.storage,
            shared_storage=req.shared_storage,
            tls=req.options.tls,
            timeout_post_copy=req.options.timeout_action == "post_copy",
        )
        return rules.Assessor(asked, origin, candidates)

    @staticmethod
    def _cpus(vm: rules.VmToMove, facts: t.Mapping[str, t.Any], requirements: t.Mapping[str, t.Any]) -> t.Dict[str, CpuCheck]:
        cpu = CpuCheck.of(facts, requirements)
        return {vm.name: cpu} if cpu else {}

    def _affinity(self, source: t.Any, origin: rules.SourceHost, hosts: t.Sequence[placement.HostState], vm: rules.VmToMove) -> affinity.Affinity:
        """The run's affinity groups with where every running VM is: on each probed candidate, and the source's
        other running VMs on the source. A shut-off VM moved offline keeps only the host rules."""
        req = self.request
        active = self.runner.call(source.listAllDomains, "list the running VMs", req.source_uri, libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        where = {dom.name(): origin.name for dom in active if dom.name() != vm.name}
        for host in hosts:
            if host.error is None and host.uuid != origin.uuid:
                where.update(dict.fromkeys(host.running_vms - {vm.name}, host.name))
        groups = affinity.Affinity(req.groups, where)
        return groups if vm.running else groups.host_rules_only()

    def _choose(
        self, needs: placement.VmNeeds, hosts: t.Sequence[placement.HostState], source_uuid: str, groups: t.Optional[affinity.Affinity] = None
    ) -> t.Tuple[placement.HostState, t.Dict[str, t.List[str]], t.List[str]]:
        """The destination, why each other candidate was rejected, and the soft affinity rules it breaks (warnings)."""
        req = self.request
        if not req.auto:
            for host in hosts:
                if host.error is not None:
                    raise MigrationError(host.error, **dict(host.error_details, vm=needs.name, uri=host.uri))
        best, rejected = placement.choose(needs, hosts, source_uuid)
        if best is None:
            raise MigrationError(placement.explain(needs.name, rejected), vm=needs.name, uri=req.source_uri, rejected_hosts=rejected)
        if groups is None:
            return best, rejected, []
        if req.auto:
            kept, kept_rejected = placement.choose(needs, hosts, source_uuid, affinity=groups)
            if kept is None:
                fitting = [host for host in hosts if placement.fits(needs, host, source_uuid)]
                names = sorted({breach.group for host in fitting for breach in groups.breaches(needs.name, host.name) if breach.enforcing})
                raise PolicyError(
                    "No candidate can take VM '%s' without breaking a hard rule of affinity group(s) %s: %s. Nothing was moved."
                    % (needs.name, ", ".join("'%s'" % name for name in names), placement.explain(needs.name, kept_rejected)),
                    vm=needs.name,
                    uri=req.source_uri,
                    rule=affinity.RULE,
                    groups=names,
                    rejected_hosts=kept_rejected,
                )
            best, rejected = kept, kept_rejected
        breaches = groups.breaches(needs.name, best.name)
        hard = [breach for breach in breaches if breach.enforcing]
        if hard:
            raise PolicyError(
                "Cannot move VM '%s' to %s: %s. Nothing was moved." % (needs.name, best.name, "; ".join(breach.message for breach in hard)),
                vm=needs.name,
                uri=req.source_uri,
                destination_uri=best.uri,
                rule=affinity.RULE,
                groups=sorted({breach.group for breach in hard}),
            )
        return best, rejected, ["%s (on the destination %s)." % (breach.message, best.name) for breach in breaches]

    def _look_elsewhere(self, uuid: str) -> t.List[placement.HostState]:
        """The other known hosts, as far as a duplicate check needs them: whether they define the UUID."""
        found = []
        for candidate in self.request.elsewhere:
            try:
                with self.connect(candidate.uri) as conn:
                    there = whereabouts(conn, uuid)
                    ident = parse_capabilities(conn.getCapabilities())["uuid"]
                    hostname = candidate.name or conn.getHostname()
            except (MigrationError, libvirt.libvirtError):
                continue  # an unreachable host cannot be checked; placement never chooses it either
            if there is not None and "error" not in there:
                found.append(placement.HostState(name=hostname, uri=candidate.uri, uuid=ident, vm_uuids=frozenset((uuid,))))
        return found

    def _adopt(
        self, source: t.Any, dom: t.Any, move: Move, src_host: t.Mapping[str, t.Any], job: t.Mapping[str, t.Any], check_mode: bool
    ) -> t.Dict[str, t.Any]:
        """A migration job already runs for the VM (a lost earlier run, or someone else): follow it to its end."""
        req = self.request
        check_adoptable(job, move.vm, req.source_uri)
        summary = job_summary(job)
        if check_mode:
            return {
                "changed": True,
                "vm": move.vm,
                "source": src_host,
                "adopted": True,
                "job": summary,
                "msg": "VM '%s' has a migration job running on %s for %.0f s; a real run adopts it and follows it to its end."
                % (move.vm, req.source_uri, summary["elapsed_s"]),
            }
        try:
            result = self.runner.adopt(source, dom, move, job, req.candidates + req.elsewhere)
        finally:
            # A disk copy a lost run started: its volumes stay with the VM where it runs, or go where it does not.
            self.copies.clean_quietly(t.cast(str, move.uuid))
        result.pop("outcome", None)
        result.update(vm=move.vm, source=src_host)
        return result

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
            self.runner.resume_after_lost_run(dom, uuid, candidate.uri, check_mode)
            state = domxml.state_name(dom.state()[0])
        # A lost run's copy manifest: the VM is defined there, so its volumes stay and only the manifest goes.
        leftover = self._leftover_copies(uuid, check_mode)
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
            **({"warnings": leftover} if leftover else {}),
        }

    # -- cancel -------------------------------------------------------------------------------
    def cancel(self, check_mode: bool) -> t.Dict[str, t.Any]:
        return self.runner.guarded("cancel the migration", self.request.source_uri, lambda: self._cancel(check_mode))

    def _cancel(self, check_mode: bool) -> t.Dict[str, t.Any]:
        """Abort the VM's outgoing migration job; the VM keeps running on the source."""
        req = self.request
        with self.connect(req.source_uri) as source:
            dom = domxml.lookup_domain(source, req.vm)
            name = self.runner.call(dom.name, "read the VM", req.source_uri)
            uuid = self.runner.call(dom.UUIDString, "read the VM", req.source_uri)
            self.runner.vm = name
            return self.runner.cancel(source, dom, name, uuid, req.source_uri, check_mode)


# Findings vm_migrate reports as warnings and moves the VM anyway (see rules.py).
WARNED = frozenset(("unreadable_settings",))


def refuse(verdict: rules.Verdict, uri: str) -> None:
    """Raise the first finding vm_migrate refuses a move for; nothing has moved."""
    finding = verdict.refusal(ignore=WARNED)
    if finding is None:
        return
    error = DuplicateVmError if finding.rule == "duplicate" else PolicyError
    raise error("%s. Nothing was moved." % finding.message, **dict(finding.details, vm=verdict.vm.name, uri=uri, rule=finding.rule))


__all__ = ["VmMigration", "refuse", "Candidate"]
