# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""``vm_migrate``: plan the move of one VM, then hand it to the job runner.

Planning reads the VM once on the source (its XML, state and own settings), resolves its effective
policy once (the task's options > the VM's settings > cluster > global), reads each candidate once
(all at the same time) and chooses the destination. The resulting :class:`~plan.Move` is what
check mode reports and what :class:`~runner.JobRunner` carries out.

The task runs on (or connects to) the source host. The source libvirtd drives the migration
peer-to-peer to the destination's libvirt URI, so that URI must be the one the source host uses to
reach the destination (the inventory's ``virtops_libvirt_uri``).
"""

from __future__ import annotations

import dataclasses
import time
import typing as t

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import domain as domxml
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import placement, settings
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.connection import libvirt_connection
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import DuplicateVmError, MigrationError, VmNotFoundError
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.hostinfo import parse_capabilities
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.requests import MigrateRequest
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.plan import (
    LIVE,
    OFFLINE,
    PAUSED,
    Candidate,
    Move,
    record_phase,
    tunnel_conflicts,
)
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.policy import Policy, PolicyError, default_timeout
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.probe import CpuCheck, probe_hosts, whereabouts
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.runner import JobRunner, check_adoptable, job_stats, job_summary

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
            effective, warnings = self._settings(facts)
            policy = settings.effective_policy(effective, req.policy_option, req.overrides)
            timeout = req.timeout if req.timeout is not None else default_timeout(int(facts["memory_mib"] or 0))
            persistent = bool(facts["persistent"])
            kind = (LIVE if req.live else PAUSED) if facts["active"] else OFFLINE
            move = Move(
                vm=name,
                uuid=uuid,
                priority=str(effective.get("priority")),
                memory_mib=int(facts["memory_mib"] or 0),
                vcpus=int(facts.get("vcpus") or 0),
                source=src_host["hostname"],
                source_uri=req.source_uri,
                destination="",
                destination_uri="",
                kind=kind,
                policy=policy,
                persistent=persistent or req.persistent,
                state=facts["state"],
                timeout_s=timeout,
                bond_vfs=tuple(requirements["bond_vfs"]) if facts["active"] else (),
                failover_primaries=tuple(requirements["failover_primaries"]) if facts["active"] else (),
                guest_hooks=bool(effective.get("guest_hooks")) if req.guest_hooks is None else req.guest_hooks,
            )
            job = job_stats(dom)
            if job is not None:
                return self._adopt(source, dom, move, src_host, job, check_mode)
            tunnelled = req.options.tunnelled and kind != OFFLINE
            if tunnelled:
                self._check_tunnel(name, facts, policy)
            self.runner.resume_after_lost_run(dom, uuid, req.source_uri, check_mode)
            self._check_state(dom, facts)
            self._check_devices(dom, move, requirements)
            self._check_persistence(name, persistent, src_host["hostname"])
            needs = placement.needs_from_facts(facts, requirements, effective)
            if not facts["active"]:
                needs = dataclasses.replace(needs, memory_mib=0, vcpus=0)  # an offline move takes no memory
            else:
                self._check_disks(name, requirements)
            source_uuid = parse_capabilities(self.runner.call(source.getCapabilities, "read the host capabilities", req.source_uri))["uuid"]
            mark = record_phase(self.timings, "read_vm", mark)
            dest, rejected, hosts = self._choose(needs, CpuCheck.of(facts, requirements), source_uuid)
            refuse_duplicates(name, uuid, src_host["hostname"], source_uuid, hosts + self._look_elsewhere(uuid))
            mark = record_phase(self.timings, "probe", mark)
            move = dataclasses.replace(move, destination=dest.name, destination_uri=dest.uri)
            plan = {
                "vm": name,
                "uuid": uuid,
                "source": src_host,
                "destination": {"hostname": dest.name, "uri": dest.uri},
                "kind": kind,
                "state": facts["state"],
                "memory_mib": facts["memory_mib"],
                "timeout_s": timeout,
                "timeout_action": req.options.timeout_action,
                "tunnelled": tunnelled,
                "rejected_hosts": rejected,
            }
            if move.bond_vfs or move.failover_primaries:
                plan["failover"] = {"bond_vfs": list(move.bond_vfs), "primaries": list(move.failover_primaries)}
            result: t.Dict[str, t.Any] = {
                "changed": True,
                "vm": name,
                "source": src_host,
                "destination": plan["destination"],
                "plan": plan,
                "policy": policy.as_dict(),
                "diff": {"before": {"vm": name, "host": src_host["hostname"]}, "after": {"vm": name, "host": dest.name}},
            }
            if warnings:
                result["warnings"] = warnings
            if check_mode:
                if self.events:
                    result["events"] = self.events
                return result
            outcome = self.runner.run(source, dom, move)
            if outcome.get("started"):
                result.update(msg="Migration of VM '%s' to %s started; not waiting for it." % (name, dest.uri), events=self.events)
                return result
            warnings.extend(outcome.pop("warnings", None) or [])
            result.update(outcome)
            if warnings:
                result["warnings"] = warnings
        self.timings.update(self.runner.timings)
        self.timings["total"] = round(time.monotonic() - began, 3)
        result.update(duration_s=self.runner.clock.now(), schedule_applied=self.runner.applied, events=self.events, timings=self.timings)
        return result

    def _settings(self, facts: t.Mapping[str, t.Any]) -> t.Tuple[t.Dict[str, t.Any], t.List[str]]:
        """The VM's effective settings, and warnings about unreadable ones; refuses ``migration_mode: none``."""
        req = self.request
        name = facts["name"]
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
        return effective, warnings

    def _check_tunnel(self, name: str, facts: t.Mapping[str, t.Any], policy: Policy) -> None:
        """Refuse, before anything moves, a tunnelled move under a policy with settings libvirt refuses in a tunnel."""
        conflicts = tunnel_conflicts(policy)
        if not conflicts:
            return
        req = self.request
        if req.policy_option is not None:
            origin = "the task's policy"
        else:
            resolved = settings.resolve(facts.get("migration_settings") or {}, req.cluster_policy, req.global_policy)
            origin = "its policy setting (from the %s level)" % resolved["policy"]["source"]
        raise PolicyError(
            "VM '%s' cannot migrate with tunnelled=true: %s, policy '%s', has %s. Give the task a policy without "
            "post-copy or parallel connections, or migrate without tunnelled. Nothing was moved."
            % (name, origin, policy.name, "; ".join(conflicts)),
            vm=name,
            uri=req.source_uri,
            conflicts=conflicts,
        )

    def _check_persistence(self, name: str, persistent: bool, source_name: str) -> None:
        req = self.request
        if persistent and not req.persistent:
            raise PolicyError(
                "VM '%s' is persistent: persistent=false would leave it defined nowhere but in the destination's memory "
                "(or, with undefine_source=false, defined on the source while it runs elsewhere). A persistent VM moves as a persistent VM." % name,
                vm=name,
                uri=req.source_uri,
            )
        if persistent and not req.options.undefine_source:
            raise PolicyError(
                "VM '%s' is persistent: undefine_source=false would leave a second, shut-off definition on %s while it runs on the "
                "destination, which a later start would run twice. The source definition is always removed for a persistent VM."
                % (name, source_name),
                vm=name,
                uri=req.source_uri,
            )

    def _check_state(self, dom: t.Any, facts: t.Mapping[str, t.Any]) -> None:
        """Refuse VM states a migration cannot carry; running, paused and shut off are fine."""
        state = self.runner.call(dom.state, "read the VM state", self.request.source_uri)[0]
        name = facts["name"]
        if state == libvirt.VIR_DOMAIN_PMSUSPENDED:
            raise PolicyError(
                "VM '%s' is pmsuspended (its guest suspended itself to RAM): wake it up first (virsh dompmwakeup), then migrate it." % name,
                vm=name,
                uri=self.request.source_uri,
            )
        if state == libvirt.VIR_DOMAIN_CRASHED and facts.get("active"):
            raise PolicyError(
                "VM '%s' has crashed and is kept for inspection (on_crash preserve): it is not migrated; dump or destroy it first." % name,
                vm=name,
                uri=self.request.source_uri,
            )

    def _check_devices(self, dom: t.Any, move: Move, requirements: t.Mapping[str, t.Any]) -> None:
        """Refuse a hibernated VM, a running VM with host devices that cannot migrate, and a non-live move with a failover primary."""
        if not move.running:
            if move.persistent and self.runner.call(dom.hasManagedSaveImage, "read the managed save state", move.source_uri, 0):
                raise PolicyError(
                    "VM '%s' is hibernated: its memory is saved in a managed save image on %s, which an offline move would leave "
                    "behind (and the VM would boot afresh on the destination). Restore it first (virtops.migration.vm_hibernate "
                    "state=running), then migrate it live." % (move.vm, move.source),
                    vm=move.vm,
                    uri=move.source_uri,
                )
            return  # an offline move carries only the definition
        unmovable = requirements["unmovable_devices"]
        if unmovable:
            raise PolicyError(
                "VM '%s' uses assigned host device(s) that cannot migrate: %s. Detach them first, or shut the VM down and move it "
                "offline (only its definition moves)." % (move.vm, "; ".join(unmovable)),
                vm=move.vm,
                uri=move.source_uri,
                devices=unmovable,
            )
        if move.kind != LIVE and move.failover_primaries:
            raise PolicyError(
                "VM '%s' has SR-IOV failover primary device(s) (%s): a non-live move pauses the vCPUs before QEMU asks the guest to "
                "release them, and waits forever. Migrate it live (live=true), or detach the primary first." % (move.vm, ", ".join(move.failover_primaries)),
                vm=move.vm,
                uri=move.source_uri,
                devices=list(move.failover_primaries),
            )

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
        hosts = probe_hosts(self.connect, req.candidates, [needs], {needs.name: cpu} if cpu else {}, req.memory_reserved_mib)
        if not req.auto:
            for host in hosts:
                if host.error is not None:
                    raise MigrationError(host.error, **dict(host.error_details, vm=needs.name, uri=host.uri))
        best, rejected = placement.choose(needs, hosts, source_uuid)
        if best is None:
            raise MigrationError(placement.explain(needs.name, rejected), vm=needs.name, uri=req.source_uri, rejected_hosts=rejected)
        return best, rejected, hosts

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
        result = self.runner.adopt(source, dom, move, job, req.candidates + req.elsewhere)
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


__all__ = ["VmMigration", "refuse_duplicates", "Candidate"]
