# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""``cluster_balance``: read the cluster, plan under a scheduling policy, run the moves, read back.

Reading is ``cluster.py``'s (every host at once, CPU over a window), planning ``balance.py``'s (the one
assessor and placement, affinity groups, on a simulated cluster), running ``batch.py``'s (the moves
in parallel, each through the job runner, which re-checks the source, the destination's room and any
running job, and verifies the move through libvirt). Right before a move starts this module also
checks that the VM still runs on its source with no job. After a verified move the VM's placement
record is written on its destination: when the balancer moved it (its cooldown), or, for a move
back, that it no longer waits to return. Each move is logged as one JSON line in the event log of
the host the module runs on. Afterwards every moved VM is looked up on every host by UUID, and the
result reports where libvirt shows it.
"""

from __future__ import annotations

import threading
import time
import typing as t

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import balance, statefiles
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import MigrationError
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.plan import Move, record_phase
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.requests import ClusterBalanceRequest
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.rules import MoveRequest
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.cluster import ClusterReader
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.connection import libvirt_connection
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.probe import whereabouts
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.runner import job_stats
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.settings_store import record_placement
from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration.batch import EVENT_LOG, MoveBatch, append_event

try:
    import libvirt
except ImportError:  # reported by the module through missing_required_lib
    pass


class ClusterBalance:
    """One ``cluster_balance`` run: :meth:`run` returns the module result."""

    def __init__(self, request: ClusterBalanceRequest, log: t.Callable[[str], None] = lambda _msg: None) -> None:
        self.request = request
        self.log = log
        self.start = time.monotonic()
        self.timings: t.Dict[str, float] = {}
        self._log_lock = threading.Lock()

    def connect(self, uri: str, connect_timeout: t.Optional[float] = None) -> t.ContextManager[t.Any]:
        return libvirt_connection(uri, self.request.options.username, self.request.options.password, connect_timeout=connect_timeout)

    def _planner_request(self) -> balance.BalanceRequest:
        req = self.request
        return balance.BalanceRequest(
            policy=req.policy,
            cpu_high=req.cpu_high,
            cpu_low=req.cpu_low,
            memory_high=req.memory_high,
            memory_low=req.memory_low,
            vm_count_high=req.vm_count_high,
            vm_count_threshold=req.vm_count_threshold,
            max_moves=req.max_moves,
            min_improvement=req.min_improvement,
            cooldown_s=req.cooldown,
            now=time.time(),
            failback_hosts=frozenset(req.failback_hosts),
            move=MoveRequest(allow_unsafe_cache=req.allow_unsafe_cache, tunnelled=req.tunnelled, guest_hooks=req.guest_hooks),
            groups=req.groups,
        )

    def run(self, check_mode: bool) -> t.Dict[str, t.Any]:
        req = self.request
        asked = self._planner_request()
        balance.validate(asked)
        if not check_mode and req.policy != balance.NONE:
            # Every move is logged; a log that cannot be written safely is refused before anything moves.
            statefiles.check_append(req.log_dir, EVENT_LOG)
        began = time.monotonic()
        if req.policy == balance.NONE:
            reading_hosts: t.List[balance.BalanceHost] = []
            reading_vms: t.List[balance.BalanceVm] = []
        else:
            reader = ClusterReader(self.connect, req.hosts, req.memory_reserved_mib, req.cluster_policy, req.global_policy)
            samples = req.samples if req.policy in (balance.EVENLY, balance.POWER_SAVING) else 0
            reading = reader.read(samples, req.sample_interval)
            reading_hosts, reading_vms = reading.hosts, reading.vms
            if req.failback_vms:
                wanted = set(req.failback_vms)
                for entry in reading_vms:
                    if entry.vm.name not in wanted and (entry.vm.uuid or "") not in wanted:
                        entry.left_host = None  # not asked to go back
            self.timings.update(reading.timings)
        began = record_phase(self.timings, "read", began)
        plan = balance.plan_balance(reading_hosts, reading_vms, asked)
        record_phase(self.timings, "plan", began)
        unmet = [breach.as_dict() for breach in plan.unmet]
        result: t.Dict[str, t.Any] = {
            "changed": bool(plan.moves),
            "policy": req.policy,
            "plan": plan.as_dict(),
            "emptied_hosts": list(plan.emptied_hosts),
            "unmet": unmet,
            "timings": self.timings,
        }
        warnings = ["soft affinity rule unmet: %s" % breach["message"] for breach in unmet if not breach.get("enforcing")]
        if warnings:
            result["warnings"] = warnings
        if not plan.moves:
            result["msg"] = "Nothing to move under policy %s: %s" % (req.policy, "; ".join(plan.reasons) or "the cluster is as the policy wants it")
            return result
        if check_mode:
            result["msg"] = "%d move(s) planned under policy %s; nothing was moved (check mode)." % (len(plan.moves), req.policy)
            return result
        began = time.monotonic()
        records = self._run(plan)
        began = record_phase(self.timings, "moves", began)
        placement = self._placement(plan.moves)
        record_phase(self.timings, "report", began)
        self.timings["total"] = round(time.monotonic() - self.start, 3)
        moved = [record for record in records if record.get("outcome") == "migrated"]
        result.update(vms=records, placement=placement, changed=bool(moved))
        result["warnings"] = list(result.get("warnings") or []) + [warning for record in records for warning in record.get("warnings") or []]
        lost = sorted(vm for vm, where in placement.items() if not isinstance(where, str))
        failed = [record for record in records if record.get("outcome") not in ("migrated", "already there")]
        if failed or lost:
            details = dict(result)
            details["changed"] = bool(moved)
            parts = ["%s: %s" % (record["vm"], record.get("error") or record.get("outcome")) for record in failed]
            parts += ["%s is not on exactly one host afterwards (%s)" % (vm, placement[vm]) for vm in lost]
            raise MigrationError(
                "%d of %d planned move(s) under policy %s did not happen: %s. Where libvirt shows each planned VM now: placement."
                % (len(failed) + len(lost), len(plan.moves), req.policy, "; ".join(parts)),
                **details,
            )
        result["msg"] = "%d of %d move(s) done under policy %s%s." % (
            len(moved),
            len(plan.moves),
            req.policy,
            "; emptied: %s" % ", ".join(plan.emptied_hosts) if plan.emptied_hosts else "",
        )
        return result

    # -- running ------------------------------------------------------------------------------
    def _check(self, move: Move, _record: t.Mapping[str, t.Any]) -> t.Optional[str]:
        """Why ``move`` must not start now (read from libvirt right before it), or None."""
        with self.connect(t.cast(str, move.source_uri)) as conn:
            try:
                dom = conn.lookupByUUIDString(move.uuid)
                active = bool(dom.isActive())
            except libvirt.libvirtError:
                return "VM '%s' is no longer on %s" % (move.vm, move.source)
            if not active:
                return "VM '%s' no longer runs on %s" % (move.vm, move.source)
            if job_stats(dom) is not None:
                return "VM '%s' has a libvirt job running on %s now (another run or someone else moves it)" % (move.vm, move.source)
        return None

    def _moved(self, move: Move, _record: t.Mapping[str, t.Any]) -> None:
        """Write the placement record of a VM the balancer has just moved."""
        # Back, or placed by the balancer: either way it no longer waits to return to a host it left.
        changes: t.Dict[str, t.Any] = {"left_host": None, "left_host_uuid": None, "left_at": None}
        if self.request.policy != balance.FAILBACK:
            changes["balanced_at"] = int(time.time())
        with self.connect(move.destination_uri) as conn:
            record_placement(conn.lookupByUUIDString(move.uuid), changes, move.destination_uri)

    def _run(self, plan: balance.BalancePlan) -> t.List[t.Dict[str, t.Any]]:
        req = self.request
        batch = MoveBatch(req.options, self.connect, req.hosts, log=self.log, started=self.start)
        batch.check = self._check
        batch.moved = self._moved
        why = "cluster balance, policy %s%s" % (req.policy, ": %s" % req.reason if req.reason else "")

        def ended(_move: Move, record: t.Dict[str, t.Any], _records: t.Sequence[t.Dict[str, t.Any]]) -> None:
            with self._log_lock:
                append_event(req.log_dir, record, why, req.requested_by, self.log)

        batch.ended = ended
        return batch.run(plan.moves, req.max_outgoing, req.max_incoming)

    def _placement(self, moves: t.Sequence[Move]) -> t.Dict[str, t.Any]:
        """Where libvirt shows each planned VM now, looked up by UUID on every host: its host name when it
        runs on exactly one host, else the list of hosts that have it (empty: none)."""
        found: t.Dict[str, t.List[str]] = {move.vm: [] for move in moves}
        for candidate in self.request.hosts:
            try:
                with self.connect(candidate.uri) as conn:
                    name = candidate.name or conn.getHostname()
                    for move in moves:
                        there = whereabouts(conn, t.cast(str, move.uuid))
                        if there is not None and "error" not in there and (there["active"] or there["persistent"]):
                            found[move.vm].append("%s (%s)" % (name, there["state"]) if not there["active"] else name)
            except (MigrationError, libvirt.libvirtError) as exc:
                for move in moves:
                    found[move.vm].append("%s: cannot be read (%s)" % (candidate.name or candidate.uri, getattr(exc, "msg", exc)))
        return {vm: hosts[0] if len(hosts) == 1 and "(" not in hosts[0] else hosts for vm, hosts in found.items()}


__all__ = ["ClusterBalance"]
