# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""Running a plan's moves several at a time: an evacuation's, the balancer's, a move back.

The moves start in the order and under the limits of :class:`~evacuation.EvacuationQueue` (priority
first; at most so many out of each source and into each destination at once, fewer when a policy says
so). Each runs in its own thread through :meth:`~runner.JobRunner.carry_out`, which re-checks what may
have changed since the plan and verifies the move through libvirt. A move that fails does not stop the
others; every move gets one record, in start order, whatever happened to it.

A move that copies disks (``copies``, the plan's ``storage.CopyPlan`` per VM) runs under
:class:`~storage.DiskCopies` as ``vm_migrate``'s does: its volumes are created on the destination
under the copy manifest right before its job, deleted again after any failure (unless the VM is there),
and after the verified move the manifest goes, the copied source volumes are removed with
``remove_source_disks``, and the record's ``storage`` says what libvirt shows.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import typing as t

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import evacuation, statefiles, storage
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io import storage as disk_io
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import MigrationError
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.mark import now_iso
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.plan import Candidate, Move, RunOptions
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.runner import JobRunner

# The runner's events a batch keeps in each VM's record: the steps around a move (not its progress).
STEP_EVENTS = frozenset(
    (
        "guest_hooks",
        "vf_unplugged",
        "vf_unplug_timeout",
        "vf_absent",
        "vf_plugged",
        "vf_plug_failed",
        "primary_released",
        "unplug_timeout",
        "volumes_created",
        "copies_cleaned",
        "source_disks_removed",
    )
)

Record = t.Dict[str, t.Any]
# Every move is appended, as one JSON line, to this file in the collection's log directory on the host
# the module runs on, for audit.
EVENT_LOG = "events.jsonl"


def append_event(log_dir: str, record: t.Mapping[str, t.Any], why: str, by: t.Optional[str], log: t.Callable[[str], None]) -> None:
    """Append one JSON line for a move that ended to the event log (best effort, never fatal; the caller
    serialises concurrent calls)."""
    entry = {"time": record.get("finished"), "event": "migration", "why": why, "by": by}
    entry.update({key: record.get(key) for key in ("vm", "from", "to", "priority", "kind", "outcome", "duration_s", "downtime_ms", "error")})
    try:
        statefiles.append_line(log_dir, EVENT_LOG, json.dumps(entry, sort_keys=True))
    except (OSError, MigrationError) as exc:
        log("cannot write the event log: %s" % exc)


def first_keys(move: Move) -> Record:
    """The keys a move's record starts with: the VM, what kind of move, from where to where, under which policy."""
    return {
        "vm": move.vm,
        "uuid": move.uuid,
        "priority": move.priority,
        "memory_mib": move.memory_mib,
        "kind": move.kind,
        "from": move.source,
        "to": move.destination,
        "policy": move.policy.name,
    }


class MoveBatch:
    """The moves of one plan, carried out in parallel; :meth:`run` returns one record per move.

    ``candidates`` are every host a move may involve (where a job left running by a lost run may have
    taken a VM). Hooks, each called with the move and its record:

    * ``check`` in the move's thread before it starts: a sentence saying why it must not start now
      (the record's outcome is then ``not_started``), or ``None``;
    * ``moved`` in the move's thread after it was verified (outcome ``migrated``): its failure becomes a
      warning of the record, never a failed move;
    * ``begun`` in the calling thread when a move has started, with every record so far (progress);
    * ``ended`` in the calling thread when the move has ended, whatever its outcome (audit, progress).

    ``copies`` are the disk copies of the moves that copy disks, per VM UUID (else name).
    """

    def __init__(
        self,
        options: RunOptions,
        connect: t.Callable[..., t.ContextManager[t.Any]],
        candidates: t.Sequence[Candidate],
        log: t.Callable[[str], None] = lambda _msg: None,
        started: t.Optional[float] = None,
    ) -> None:
        self.options = options
        self.connect = connect
        self.candidates = list(candidates)
        self.log = log
        self.started = time.monotonic() if started is None else started
        self.copies: t.Mapping[str, storage.CopyPlan] = {}
        self.check: t.Optional[t.Callable[[Move, Record], t.Optional[str]]] = None
        self.moved: t.Optional[t.Callable[[Move, Record], None]] = None
        self.begun: t.Callable[[t.Sequence[Record]], None] = lambda _records: None
        self.ended: t.Callable[[Move, Record, t.Sequence[Record]], None] = lambda _move, _record, _records: None

    def at(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def _work(self, move: Move, record: Record) -> None:
        runner = JobRunner(self.options, self.connect, move.vm, log=self.log)
        try:
            why = self.check(move, record) if self.check is not None else None
            if why is not None:
                record.update(outcome="not_started", error=why)
                return
            # Where a migration left running by a lost run may have taken the VM, besides the destination.
            others = [candidate for candidate in self.candidates if candidate.uri != move.destination_uri]
            plan = self.copies.get(move.uuid or move.vm)
            if plan is not None:
                outcome = self._copying(runner, move, plan, others, record)
            else:
                outcome = runner.carry_out(move, others)
            record.update(
                outcome=outcome["outcome"],
                downtime_ms=outcome.get("downtime_ms"),
                data_total_mib=outcome.get("data_total_mib"),
                vm_state=outcome.get("vm_state"),
            )
            if outcome.get("adopted"):
                record["adopted"] = True
            if outcome.get("warnings"):
                record.setdefault("warnings", []).extend(outcome["warnings"])
            if self.moved is not None and record["outcome"] == "migrated":
                try:
                    self.moved(move, record)
                except Exception as exc:  # pylint: disable=broad-exception-caught
                    text = getattr(exc, "msg", None) or "%s: %s" % (type(exc).__name__, exc)
                    record.setdefault("warnings", []).append("VM '%s' moved, but its placement record was not written: %s" % (move.vm, text))
        except MigrationError as exc:
            record.update(outcome="failed", error=exc.msg, observed=exc.details.get("observed"))
            if exc.details.get("copies_left"):
                record["copies_left"] = exc.details["copies_left"]
        except BaseException as exc:  # pylint: disable=broad-exception-caught
            record.update(outcome="failed", error="unexpected %s: %s" % (type(exc).__name__, exc))
        finally:
            record["timings"] = dict(runner.timings)
            steps = [event for event in runner.events if event.get("event") in STEP_EVENTS]
            if steps:
                record["events"] = steps

    def _copying(self, runner: JobRunner, move: Move, plan: storage.CopyPlan, others: t.Sequence[Candidate], record: Record) -> t.Dict[str, t.Any]:
        """Carry out a move that copies disks (see the module docstring); the record gets its ``storage`` and warnings."""
        uuid = t.cast(str, move.uuid)
        copies = disk_io.DiskCopies(self.connect, self.options.state_dir, runner.event)
        record["storage"] = {"disks": plan.as_list()}
        outcome = runner.carry_out(move, others, around=lambda job: copies.run(plan, move, job))
        if outcome["outcome"] != "migrated" or outcome.get("adopted"):
            # A lost run's job or move: its volumes stay with the VM where it runs, or go where it does not.
            left = copies.clean_quietly(uuid)
            if left:
                record.setdefault("warnings", []).append(left)
            return outcome
        done, problems = copies.finish(plan, uuid, t.cast(str, move.source_uri), move.destination_uri, self.options.remove_source_disks)
        record["storage"] = done
        if problems:
            record.setdefault("warnings", []).extend(problems)
        return outcome

    def run(self, moves: t.Sequence[Move], max_outgoing: int, max_incoming: int) -> t.List[Record]:
        """Carry out ``moves`` under the limits; each record starts with :func:`first_keys`."""
        pending = evacuation.EvacuationQueue(moves, max_outgoing, max_incoming)
        done: "queue.Queue[t.Tuple[Move, Record]]" = queue.Queue()
        records: t.List[Record] = []

        def worker(move: Move, record: Record) -> None:
            try:
                self._work(move, record)
            finally:
                done.put((move, record))  # whatever happened, the queue hears that this move ended

        threads = []
        while not pending.done():
            move = pending.next_ready()
            while move is not None:
                pending.start(move)
                record = dict(first_keys(move), started=now_iso(), started_at_s=self.at())
                records.append(record)
                thread = threading.Thread(target=worker, args=(move, record), name="move-%s" % move.vm, daemon=True)
                self.begun(records)
                thread.start()
                threads.append(thread)
                move = pending.next_ready()
            finished, record = done.get()
            record.update(finished=now_iso(), finished_at_s=self.at())
            record["duration_s"] = round(record["finished_at_s"] - record["started_at_s"], 3)
            pending.finish(finished)
            self.ended(finished, record, records)
        for thread in threads:
            thread.join()
        return records
