# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""The one job runner: carries out a planned :class:`~plan.Move` and judges it by what libvirt shows.

``vm_migrate`` and ``host_maintenance`` both plan moves and hand them here. For each move the
runner sets the libvirt flags and parameters, starts the peer-to-peer job on the source libvirtd
(which drives it to the destination URI as the source host reaches it), follows it (progress, the
policy's convergence schedule, the timeout and its action), and then reads the VM back from both
hosts: the move counts as done only when the destination has the VM (same UUID), active after a
live move and persistent when it is to be, and the source no longer has it. Anything else, and any
exception of any kind, is a failure that reports what libvirt shows on both hosts (``observed``).

It also adopts a migration job a lost earlier run left behind, resumes a VM such a run's schedule
left paused, and cancels a job. It never probes hosts or resolves settings: the plan holds those.

Safety: whatever happens, the VM ends up running on exactly one host. A failed or aborted job leaves
it running on the source (resumed if the schedule had suspended it); nothing is undefined unless
libvirt reports the migration complete. A paused copy is resumed only after the destination and the
other known hosts were read and none of them runs or defines the VM; otherwise it stays paused and
the failure names both hosts. A failed migrate call is not taken for a failed move: the job it
started is followed while it runs, and a VM that ended on the destination has moved. Once a move is
verified it is reported as done; what fails after that (plugging VFs back in, the guest's
after_migration hooks, autostart) is a warning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
import typing as t

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import domain as domxml
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import failover
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io import guest_agent
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import statefiles
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import (
    MigrationError,
    OperationCancelledError,
    VIR_ERR_OPERATION_INVALID,
    is_not_found,
    libvirt_error_code,
    peer_authentication_failure,
    translate_libvirt_error,
    unexpected_error,
)
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.hostinfo import parse_capabilities
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.plan import LIVE, OFFLINE, Candidate, Move, RunOptions, record_phase
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.policy import ScheduleTracker, Step
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.probe import Connect, live_capacity, whereabouts

try:
    import libvirt
except ImportError:  # reported by the module through missing_required_lib
    pass

MIB = 1024 * 1024
PROGRESS_EVERY_S = 5.0
CANCEL_WAIT_S = 60.0
# How long reading the destination back after a failure waits for it to answer.
OBSERVE_CONNECT_TIMEOUT_S = 10.0
# How long a failed move waits for its source's libvirtd to come back (a restart), to read what it left.
SOURCE_RETURN_WAIT_S = 60.0

# virDomainJobType / virDomainJobOperation values read from job statistics.
JOB_NONE = 0
JOB_OPERATION_MIGRATION_OUT = 5


class Clock:
    """Seconds since the run started, on a monotonic clock."""

    def __init__(self, elapsed: float = 0.0) -> None:
        self.start = time.monotonic() - elapsed

    def now(self) -> float:
        return round(time.monotonic() - self.start, 3)


def migration_flags_and_params(move: Move, options: RunOptions) -> t.Tuple[int, t.Dict[str, t.Any]]:
    """libvirt flags and typed parameters for ``virDomainMigrateToURI3``.

    A persistent VM stays persistent (``move.persistent``); libvirt's storage-safety check is
    switched off only when ``unsafe_storage`` asks for it, never by the cache-mode override.
    ``tunnelled`` applies to moves of a running VM only (libvirt refuses a tunnelled offline move);
    the options and the plan have already refused what libvirt refuses with it. The disks of
    ``move.copy_disks`` are copied during the move (NBD, over the migration address when one is given,
    and under QEMU's TLS like the memory); ``synchronous_writes`` sends the guest's writes to both copies.
    """
    policy = move.policy
    flags = libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_ABORT_ON_ERROR
    params: t.Dict[str, t.Any] = {}
    if move.persistent:
        flags |= libvirt.VIR_MIGRATE_PERSIST_DEST
    if options.undefine_source:
        flags |= libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    if not move.running:
        return flags | libvirt.VIR_MIGRATE_OFFLINE | libvirt.VIR_MIGRATE_PERSIST_DEST, params
    if move.kind == LIVE:
        flags |= libvirt.VIR_MIGRATE_LIVE
    if options.tunnelled:
        flags |= libvirt.VIR_MIGRATE_TUNNELLED
    if policy.auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if policy.compression:
        flags |= libvirt.VIR_MIGRATE_COMPRESSED
        params[libvirt.VIR_MIGRATE_PARAM_COMPRESSION] = list(policy.compression)
    if policy.post_copy or options.timeout_action == "post_copy":
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    if policy.parallel_connections:
        flags |= libvirt.VIR_MIGRATE_PARALLEL
        params[libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS] = policy.parallel_connections
    if policy.bandwidth_mib:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = policy.bandwidth_mib
    if options.tls:
        flags |= libvirt.VIR_MIGRATE_TLS
    if options.unsafe_storage:
        flags |= libvirt.VIR_MIGRATE_UNSAFE
    if options.migrate_uri:
        params[libvirt.VIR_MIGRATE_PARAM_URI] = options.migrate_uri
    if options.listen_address:
        params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = options.listen_address
    if move.copy_disks:
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
        params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(move.copy_disks)
        if options.synchronous_writes:
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_SYNCHRONOUS_WRITES
        disks_uri = nbd_uri(options.migrate_uri)
        if disks_uri:
            params[libvirt.VIR_MIGRATE_PARAM_DISKS_URI] = disks_uri
    return flags, params


def nbd_uri(migrate_uri: t.Optional[str]) -> t.Optional[str]:
    """The address of the destination's NBD server for copied disks: ``tcp://ADDR`` of a ``tcp://ADDR[:PORT]``
    migration address (libvirt picks the NBD port), or None when there is none."""
    if not migrate_uri or not migrate_uri.startswith("tcp://"):
        return None
    address = migrate_uri[len("tcp://"):].split("/", 1)[0]
    if address.startswith("["):
        host = address.split("]", 1)[0] + "]"
    else:
        host = address.rsplit(":", 1)[0] if address.count(":") == 1 else address
    return "tcp://%s" % host if host and host != "[]" else None


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


def job_stats(dom: t.Any) -> t.Optional[t.Dict[str, t.Any]]:
    """The VM's current libvirt job statistics; None when no job runs (or they cannot be read)."""
    try:
        stats = dom.jobStats(0)
    except libvirt.libvirtError:
        return None
    if not stats or stats.get("type", JOB_NONE) == JOB_NONE:
        return None
    return stats


class JobRunner:
    """Carries out moves of one VM under :class:`~plan.RunOptions`; collects its events and timings.

    ``connect(uri, connect_timeout=None)`` opens a libvirt connection (a context manager); ``vm``
    names the VM in events and messages.
    """

    def __init__(
        self, options: RunOptions, connect: Connect, vm: str, log: t.Callable[[str], None] = lambda _msg: None, clock: t.Optional[Clock] = None
    ) -> None:
        self.options = options
        self.connect = connect
        self.vm = vm
        self.log = log
        self.clock = clock or Clock()
        self.events: t.List[t.Dict[str, t.Any]] = []
        self.applied: t.List[t.Dict[str, t.Any]] = []
        self.timings: t.Dict[str, float] = {}
        self.records = SuspendRecords(options.state_dir)
        self._aborted_by: t.Optional[str] = None
        self._suspended = False
        self._uuid: t.Optional[str] = None
        self._last_stats: t.Optional[t.Dict[str, t.Any]] = None
        self._timeout: t.Optional[int] = None
        self.warnings: t.List[str] = []
        # The other hosts the VM may be on (besides a move's destination): read before any resume.
        self.peers: t.List[Candidate] = []

    def know(self, hosts: t.Iterable[Candidate]) -> None:
        """Add ``hosts`` to the ones read before a paused copy of the VM is resumed."""
        known = {peer.uri for peer in self.peers}
        self.peers.extend(host for host in hosts if host.uri not in known)

    # -- shared -------------------------------------------------------------------------------
    def event(self, name: str, **details: t.Any) -> None:
        entry = {"at_s": self.clock.now(), "event": name}
        entry.update({key: value for key, value in details.items() if value is not None})
        self.events.append(entry)
        self.log("%s: %s %s" % (self.vm, name, details))

    def fail(self, exc: MigrationError) -> MigrationError:
        """``exc`` with this run's events and schedule steps attached (kept if already there)."""
        exc.details.setdefault("events", self.events)
        exc.details.setdefault("schedule_applied", self.applied)
        return exc

    def guarded(self, action: str, uri: str, func: t.Callable[[], t.Dict[str, t.Any]]) -> t.Dict[str, t.Any]:
        """Run ``func``; every failure, of any kind, leaves as a MigrationError with the events so far."""
        try:
            return func()
        except MigrationError as exc:
            raise self.fail(exc)  # pylint: disable=raise-missing-from
        except libvirt.libvirtError as exc:
            raise self.fail(translate_libvirt_error(exc, action, vm=self.vm, uri=uri)) from exc
        except Exception as exc:  # pylint: disable=broad-exception-caught
            raise self.fail(unexpected_error(exc, action, vm=self.vm, uri=uri)) from exc

    def call(self, func: t.Callable[..., t.Any], action: str, uri: t.Optional[str], *args: t.Any) -> t.Any:
        try:
            return func(*args)
        except libvirt.libvirtError as exc:
            raise translate_libvirt_error(exc, action, vm=self.vm, uri=uri) from exc

    def observe(self, source: t.Any, uuid: str, dest_uri: t.Optional[str]) -> t.Dict[str, t.Any]:
        """Where the VM is now, as libvirt shows it on the source and the destination."""
        observed: t.Dict[str, t.Any] = {"source": whereabouts(source, uuid)}
        if dest_uri:
            try:
                # A short wait: after a failure the destination is often the host that went away.
                with self.connect(dest_uri, connect_timeout=OBSERVE_CONNECT_TIMEOUT_S) as conn:
                    observed["destination"] = whereabouts(conn, uuid)
            except MigrationError as exc:
                observed["destination"] = {"error": exc.msg}
        return observed

    # -- a planned move -----------------------------------------------------------------------
    def carry_out(
        self, move: Move, others: t.Sequence[Candidate] = (), around: t.Optional[t.Callable[[t.Callable[[], t.Dict[str, t.Any]]], t.Dict[str, t.Any]]] = None
    ) -> t.Dict[str, t.Any]:
        """Carry out one move of an evacuation plan, as planned: ``outcome`` is ``migrated`` or ``already there``.

        Opens the source and the destination once each. Before the job starts it re-checks what may
        have changed since the plan: the VM is still on the source (else it is looked for on the
        destination), no job holds it (a job a lost run left is adopted), and the destination still
        has the memory a live move needs. ``others`` are the other hosts an adopted job may be taking
        the VM to. ``around``, when given, is called with the job itself (once the re-checks passed, not
        for an adopted job or a VM that arrived meanwhile) and runs it: ``DiskCopies.run`` creates the
        disk copies' volumes first and cleans them after any failure.
        """
        source_uri = t.cast(str, move.source_uri)
        self.know(others)
        return self.guarded("migrate", source_uri, lambda: self._carry_out(move, source_uri, others, around))

    def _carry_out(
        self,
        move: Move,
        source_uri: str,
        others: t.Sequence[Candidate],
        around: t.Optional[t.Callable[[t.Callable[[], t.Dict[str, t.Any]]], t.Dict[str, t.Any]]] = None,
    ) -> t.Dict[str, t.Any]:
        began = time.monotonic()
        uuid = t.cast(str, move.uuid)
        self._uuid = uuid
        with self.connect(source_uri) as source, self.connect(move.destination_uri) as dest:
            try:
                dom = source.lookupByUUIDString(uuid)
            except libvirt.libvirtError as exc:
                if not is_not_found(exc):
                    raise
                return self._arrived_meanwhile(dest, move)
            job = job_stats(dom)
            if job is not None:
                record_phase(self.timings, "start", began)
                return self.adopt(source, dom, move, job, [Candidate(uri=move.destination_uri, name=move.destination)] + list(others))
            self.resume_after_lost_run(dom, uuid, source_uri)
            there = whereabouts(dest, uuid)
            if there is not None and "error" not in there:
                raise MigrationError(
                    "VM '%s' (UUID %s) is still on %s, and %s has a definition of the same UUID (%s): not moving it, since two "
                    "definitions could both be started. Remove the stale copy first." % (move.vm, uuid, move.source, move.destination, there["state"]),
                    vm=move.vm,
                    uuid=uuid,
                    hosts=[move.source, move.destination],
                )
            if move.running:
                memory = live_capacity(dest, move.destination_uri)
                if memory["available_mib"] < move.memory_mib:
                    raise MigrationError(
                        "%s has only %d MiB free now, and VM '%s' needs %d MiB: not moving it there (the plan saw more room)."
                        % (move.destination, memory["available_mib"], move.vm, move.memory_mib),
                        vm=move.vm,
                        uri=move.destination_uri,
                        available_mib=memory["available_mib"],
                    )
            record_phase(self.timings, "start", began)
            if around is not None:
                result = around(lambda: self.run(source, dom, move, dest))
            else:
                result = self.run(source, dom, move, dest)
        result["outcome"] = "migrated"
        return result

    def _arrived_meanwhile(self, dest: t.Any, move: Move) -> t.Dict[str, t.Any]:
        """The VM left the source after it was planned: fine only if the planned destination has it now."""
        there = whereabouts(dest, t.cast(str, move.uuid))
        if there is not None and "error" not in there and (there["active"] or there["persistent"]):
            self.event("already_there", host=move.destination_uri, state=there["state"])
            return {"outcome": "already there", "vm_state": there["state"], "changed": False}
        raise MigrationError(
            "VM '%s' left %s after the evacuation was planned, and %s does not have it." % (move.vm, move.source, move.destination),
            vm=move.vm,
            uri=move.source_uri,
            observed={"source": None, "destination": there},
        )

    def run(self, source: t.Any, dom: t.Any, move: Move, dest: t.Any = None) -> t.Dict[str, t.Any]:
        """Start the libvirt job for ``move``, follow it, and verify the outcome.

        ``dest`` is an open connection to the destination, if the caller has one. Returns the
        completed job's statistics and what libvirt shows afterwards, or ``{"started": True}``
        when the options say not to wait.
        """
        began = time.monotonic()
        self._uuid = move.uuid
        self._timeout = move.timeout_s
        autostart = self._autostart(dom, move)
        hooks_ran = self._guest_hooks_before(dom, move)
        unplugged = self._unplug_bond_vfs(dom, move)
        self.event("started", kind=move.kind, destination=move.destination_uri, state=move.state)
        try:
            executed = self._execute(source, dom, move)
        except BaseException as exc:
            notes = [self._replug_bond_vfs(dom, move, unplugged, move.source_uri, "source")]
            if hooks_ran:
                notes.append(self._guest_hooks_after_failure(dom, move))
            if isinstance(exc, MigrationError):
                _add_notes(exc, notes)
            raise
        if not executed:
            record_phase(self.timings, "migrate", began)
            return {"started": True}
        record_phase(self.timings, "migrate", began)
        began = time.monotonic()
        uuid = t.cast(str, move.uuid)
        with contextlib.ExitStack() as stack:
            if dest is None or not _alive(dest):
                dest = stack.enter_context(self.connect(move.destination_uri))
            if not _alive(source):
                source = stack.enter_context(self.connect(t.cast(str, move.source_uri)))
            result = self._completed_stats(dest, dom, uuid)
            result.update(self.verify(source, dest, move))
            result["autostart"] = self._after_verified(dest, move, unplugged, autostart)
        record_phase(self.timings, "verify", began)
        if self.warnings:
            result["warnings"] = list(self.warnings)
        return result

    def _after_verified(self, dest: t.Any, move: Move, unplugged: t.Sequence[t.Tuple[str, str]], autostart: bool) -> t.Optional[bool]:
        """The steps after a verified move: VFs back, the guest's after_migration hooks, autostart.

        The VM has moved: a failure here, of any kind, is a warning and never turns the move into a
        failure. Returns the destination's autostart flag as libvirt shows it (None when unread).
        """
        uuid = t.cast(str, move.uuid)
        steps = []
        if unplugged:
            steps.append(
                ("plug the bond VFs in again", lambda arrived: self._warn(self._replug_bond_vfs(arrived, move, unplugged, move.destination_uri, "destination")))
            )
        if move.guest_hooks and move.kind != OFFLINE:
            steps.append(("run the guest's after_migration hooks", lambda arrived: self._guest_hooks_after(arrived, move)))
        for action, step in steps:
            try:
                step(dest.lookupByUUIDString(uuid))
            except Exception as exc:  # pylint: disable=broad-exception-caught
                self._warn("VM '%s' moved to %s, but could not %s there: %s." % (move.vm, move.destination, action, _reason(exc)))
        if not move.persistent:
            return None
        try:
            arrived = dest.lookupByUUIDString(uuid)
            if autostart and not arrived.autostart():
                arrived.setAutostart(1)
                self.event("autostart_set", host=move.destination_uri)
            flag = bool(arrived.autostart())
        except Exception as exc:  # pylint: disable=broad-exception-caught
            what = "set" if autostart else "read"
            self._warn("VM '%s' moved to %s, but its autostart flag could not be %s there: %s." % (move.vm, move.destination, what, _reason(exc)))
            return None
        if flag != autostart:
            self._warn("VM '%s' had autostart %s on %s and has it %s on %s." % (move.vm, _on_off(autostart), move.source, _on_off(flag), move.destination))
        return flag

    def _autostart(self, dom: t.Any, move: Move) -> bool:
        """Whether the VM starts with its source host; the destination gets the same once the move is verified."""
        if not move.persistent:
            return False
        try:
            return bool(dom.isPersistent()) and bool(dom.autostart())
        except libvirt.libvirtError as exc:
            self.event("autostart_unknown", reason=exc.get_error_message())
            return False

    def _warn(self, warning: t.Optional[str]) -> None:
        if warning:
            self.warnings.append(warning)

    # -- the guest's own hooks ------------------------------------------------------------------
    def _guest_hooks(self, dom: t.Any, move: Move, event: str, uri: t.Optional[str]) -> t.Dict[str, t.Any]:
        result = guest_agent.run_guest_hooks(dom, event, self.options.guest_hook_timeout)
        details = {key: value for key, value in result.items() if key != "event"}
        self.event("guest_hooks", hook_event=event, host=uri, **details)
        return result

    def _guest_hooks_before(self, dom: t.Any, move: Move) -> bool:
        """Run ``before_migration`` in the guest; with ``guest_hook_failure=abort`` a failure keeps the VM where it is.

        True when the guest was asked to run them (and so may have quiesced something the
        ``after_migration`` hooks undo).
        """
        if not move.guest_hooks or move.kind == OFFLINE:
            return False
        if move.state not in (None, "running"):
            self.event("guest_hooks", hook_event="before_migration", outcome="skipped", message="the VM is %s: its guest cannot run hooks" % move.state)
            return False
        result = self._guest_hooks(dom, move, "before_migration", move.source_uri)
        outcome = result["outcome"]
        if outcome == guest_agent.OK:
            return True
        what = "The guest's before_migration hooks of VM '%s' did not succeed (%s: %s)" % (move.vm, outcome, result.get("message"))
        if outcome in guest_agent.HOOK_FAILURES and self.options.guest_hook_failure == "abort":
            raise MigrationError(
                "%s; guest_hook_failure=abort: the VM was not moved and runs on %s." % (what, move.source),
                vm=move.vm,
                uri=move.source_uri,
                guest_hooks=result,
                guest_hooks_after=self._guest_hooks_after_failure(dom, move),
            )
        self._warn("%s; the move went on." % what)
        return True

    def _guest_hooks_after_failure(self, dom: t.Any, move: Move) -> str:
        """The move failed after ``before_migration`` ran: ``after_migration`` runs where the VM still runs.

        An application the hooks quiesced for the move is so not left frozen. Returns a sentence for
        the failure saying what happened to them.
        """
        try:
            running = dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        except libvirt.libvirtError as exc:
            return "The guest's after_migration hooks were not run: the VM's state on %s cannot be read (%s)." % (move.source, exc.get_error_message())
        if not running:
            return "The guest's after_migration hooks were not run: the VM does not run on %s." % move.source
        try:
            result = self._guest_hooks(dom, move, "after_migration", move.source_uri)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            return "The guest's after_migration hooks could not be run on %s: %s." % (move.source, _reason(exc))
        return "The guest's after_migration hooks ran on %s, where the VM still runs (%s%s)." % (
            move.source,
            result["outcome"],
            ": %s" % result["message"] if result.get("message") and result["outcome"] != guest_agent.OK else "",
        )

    def _guest_hooks_after(self, dom: t.Any, move: Move) -> None:
        """Run ``after_migration`` in the guest on the destination; the VM has moved, so a failure is a warning."""
        if not move.guest_hooks or move.kind == OFFLINE or move.state not in (None, "running"):
            return
        result = self._guest_hooks(dom, move, "after_migration", move.destination_uri)
        if result["outcome"] != guest_agent.OK:
            self._warn(
                "The guest's after_migration hooks of VM '%s' on %s did not succeed (%s: %s)."
                % (move.vm, move.destination, result["outcome"], result.get("message"))
            )

    # -- SR-IOV failover pairs in bond mode -----------------------------------------------------
    def _unplug_bond_vfs(self, dom: t.Any, move: Move) -> t.List[t.Tuple[str, str]]:
        """Hot-unplug each bond pair's VF before the move (the guest's bond fails over to its virtio
        backup); returns ``(pair, interface XML)`` of each VF unplugged, to plug in again afterwards.

        A VF the guest does not release within ``unplug_timeout`` stops the move: the VM stays on its
        source with every VF it had (the ones already unplugged are plugged in again).
        """
        if not move.bond_vfs or move.kind == OFFLINE:
            return []
        unplugged: t.List[t.Tuple[str, str]] = []
        for pair in move.bond_vfs:
            xml = self.call(dom.XMLDesc, "read the domain XML", move.source_uri, 0)
            device = failover.vf_device_xml(xml, pair)
            if device is None:
                self.event("vf_absent", pair=pair, note="the VF of this bond pair is not plugged in on the source; nothing to unplug")
                continue
            began = time.monotonic()
            try:
                dom.detachDeviceFlags(device, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                gone = self._wait_for(lambda: failover.vf_device_xml(dom.XMLDesc(0), pair) is None, self.options.unplug_timeout)
            except libvirt.libvirtError as exc:
                replug = self._replug_bond_vfs(dom, move, unplugged, move.source_uri, "source")
                failure = translate_libvirt_error(exc, "hot-unplug the VF of failover pair '%s' before the move" % pair, vm=move.vm, uri=move.source_uri)
                _add_notes(failure, [replug])
                raise failure from exc
            if not gone:
                self.event("vf_unplug_timeout", pair=pair, after_s=self.options.unplug_timeout)
                # libvirt may have finished the unplug since: read it back, and plug it in again if it went.
                try:
                    if failover.vf_device_xml(dom.XMLDesc(0), pair) is None:
                        unplugged.append((pair, device))
                except libvirt.libvirtError as exc:
                    self.event("vf_state_unknown", pair=pair, reason=exc.get_error_message())
                replug = self._replug_bond_vfs(dom, move, unplugged, move.source_uri, "source")
                failure = MigrationError(
                    "The guest of VM '%s' did not release the VF of failover pair '%s' within %g s (unplug_timeout): the VM was not "
                    "moved%s." % (move.vm, pair, self.options.unplug_timeout, "" if replug else " and keeps its VFs on %s" % move.source),
                    vm=move.vm,
                    uri=move.source_uri,
                    changed=bool(unplugged),
                )
                _add_notes(failure, [replug])
                raise failure
            unplugged.append((pair, device))
            self.event("vf_unplugged", pair=pair, host=move.source_uri, duration_s=round(time.monotonic() - began, 3))
        return unplugged

    def _replug_bond_vfs(self, dom: t.Any, move: Move, unplugged: t.Sequence[t.Tuple[str, str]], uri: t.Optional[str], where: str) -> t.Optional[str]:
        """Plug the unplugged VFs in again on ``dom``'s host; returns a warning when one could not be.

        A VF from a libvirt network (``vf_network``) is taken from the same network on that host. The
        guest keeps its network through the virtio backup when no VF can be plugged in.
        """
        failed = []
        for pair, device in unplugged:
            began = time.monotonic()
            try:
                dom.attachDeviceFlags(device, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            except libvirt.libvirtError as exc:
                failed.append("%s (%s)" % (pair, exc.get_error_message()))
                self.event("vf_plug_failed", pair=pair, host=uri, reason=exc.get_error_message())
                continue
            self.event("vf_plugged", pair=pair, host=uri, on=where, duration_s=round(time.monotonic() - began, 3))
        if not failed:
            return None
        return "VM '%s' runs on its %s without the VF of failover pair(s) %s; its network goes through the virtio backup until a VF is plugged in." % (
            move.vm,
            where,
            ", ".join(failed),
        )

    def _vfs_left_unplugged(self, dest: t.Any, move: Move) -> t.List[t.Tuple[str, str]]:
        """Bond VFs the VM's definition on ``dest`` has and its running guest lacks: ``(pair, device XML)``.

        A run that adopts a lost run's job plugs these in again: the lost run unplugged them before its job.
        """
        try:
            arrived = dest.lookupByUUIDString(t.cast(str, move.uuid))
            live = arrived.XMLDesc(0)
            defined = arrived.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
        except libvirt.libvirtError as exc:
            self._warn("The bond VFs of VM '%s' on %s could not be read: %s." % (move.vm, move.destination, exc.get_error_message()))
            return []
        missing = []
        for pair in failover.read_pairs(defined):
            if pair.mode != "bond" or not pair.vf_present or failover.vf_device_xml(live, pair.name) is not None:
                continue
            device = failover.vf_device_xml(defined, pair.name)
            if device is not None:
                missing.append((pair.name, device))
        return missing

    def _wait_for(self, predicate: t.Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(0.1, self.options.poll_interval))

    def _execute(self, source: t.Any, dom: t.Any, move: Move) -> bool:
        """Run the libvirt job; True once libvirt says it completed, False when started and not waited for."""
        opts = self.options
        flags, params = migration_flags_and_params(move, opts)
        live = move.kind == LIVE
        downtime_set = live and self._set_downtime(dom, move.policy.initial_downtime_ms)
        outcome: t.Dict[str, t.Any] = {}

        def run() -> None:
            try:
                dom.migrateToURI3(move.destination_uri, params, flags)
            except BaseException as exc:  # pylint: disable=broad-exception-caught
                outcome["error"] = exc  # any failure, libvirt's or not, is a failed move

        worker = threading.Thread(target=run, name="migrate-%s" % move.vm, daemon=True)
        worker.start()
        if not opts.wait and move.running and not move.bond_vfs:
            # The source libvirtd drives a peer-to-peer migration to its end on its own (a VM whose bond
            # VF must be plugged in again afterwards is always waited for).
            while worker.is_alive() and job_stats(dom) is None:
                worker.join(opts.poll_interval)
        else:
            self._monitor(dom, move, worker.is_alive, worker.join, live, downtime_pending=live and not downtime_set)
        if "error" in outcome:
            with contextlib.ExitStack() as stack:
                # The call's failure may be the source's libvirtd going away: judge on a live connection.
                source, dom = self._source_again(stack, source, dom, move)
                if not self._moved_despite(source, dom, move, outcome["error"], live):
                    self._failed(source, dom, move, outcome["error"])
        if worker.is_alive():
            return False
        self.event("completed")
        if move.kind == LIVE and move.failover_primaries and not any(event["event"] == "primary_released" for event in self.events):
            # The job ended between two polls: a completed live move means the guest released its primary,
            # at some point within the job's run (an upper bound, since the wait itself was not seen).
            started = [event["at_s"] for event in self.events if event["event"] == "started"]
            within = round(self.clock.now() - started[-1], 3) if started else None
            self.event("primary_released", devices=list(move.failover_primaries), within_s=within)
        if self._suspended:
            self._resume_on(move.destination_uri, t.cast(str, move.uuid))
        return True

    def verify(self, source: t.Any, dest: t.Any, move: Move) -> t.Dict[str, t.Any]:
        """Read the outcome back from both hosts; anything but the VM on the destination alone is a failure."""
        uuid = t.cast(str, move.uuid)
        observed = {"source": whereabouts(source, uuid), "destination": whereabouts(dest, uuid)}
        there, here = observed["destination"], observed["source"]
        if self._left_defined(here, there, move) and self._finish_undefine(source, move):
            observed["source"] = here = whereabouts(source, uuid)
        problems = []
        if there is None or "error" in there:
            problems.append("the destination does not have it" + (" (%s)" % there["error"] if there else ""))
        else:
            if move.kind == LIVE and not there["active"]:
                problems.append("it is %s on the destination, not active" % there["state"])
            elif move.state == "running" and there["state"] != "running":
                problems.append("it was running and is %s (%s) on the destination" % (there["state"], there.get("reason")))
            if move.persistent and not there["persistent"]:
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
                "libvirt reported the migration of VM '%s' to %s complete, but %s." % (move.vm, move.destination_uri, "; ".join(problems)),
                vm=move.vm,
                uri=move.source_uri,
                observed=observed,
                changed=there is not None and "error" not in there,
            )
        self.event("verified", state=there["state"] if there else None)
        return {"vm_state": there["state"] if there else None, "observed": observed}

    @staticmethod
    def _left_defined(here: t.Optional[t.Mapping[str, t.Any]], there: t.Optional[t.Mapping[str, t.Any]], move: Move) -> bool:
        """libvirt moved the VM but its last step did not remove the source's definition.

        The destination has the VM persistently defined (and active after a live move), the source
        only a shut-off definition of it: what ``VIR_MIGRATE_UNDEFINE_SOURCE`` was to remove, when a
        fault (the source's libvirtd restarted in the confirm step) kept libvirt from it.
        """
        if not move.persistent or here is None or there is None or "error" in here or "error" in there:
            return False
        arrived = there["persistent"] and (there["active"] or move.kind == OFFLINE)
        return bool(arrived and not here["active"] and here["persistent"])

    def _finish_undefine(self, source: t.Any, move: Move) -> bool:
        """Remove the shut-off definition libvirt left on the source after the move (see :meth:`_left_defined`).

        Only a bare definition goes: one with a managed save image or snapshots stays, and the failure
        names it. Returns True when it was removed.
        """
        try:
            dom = source.lookupByUUIDString(t.cast(str, move.uuid))
            if dom.isActive() or dom.hasManagedSaveImage(0) or dom.snapshotNum(0):
                return False
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM)
        except libvirt.libvirtError as exc:
            self.event("source_definition_kept", host=move.source_uri, reason=exc.get_error_message())
            return False
        self.event("source_definition_removed", host=move.source_uri)
        self._warn(
            "libvirt moved VM '%s' to %s but left its shut-off definition on %s (its last step failed); that definition "
            "was removed, as the move asked, so that the VM is defined on one host." % (move.vm, move.destination, move.source)
        )
        return True

    # -- following the job --------------------------------------------------------------------
    def _monitor(self, dom: t.Any, move: Move, alive: t.Callable[[], bool], wait: t.Callable[[float], t.Any], live: bool, downtime_pending: bool) -> None:
        """Poll the job until it ends: apply schedule steps, log progress, act on the timeout."""
        opts = self.options
        timeout = self._timeout
        tracker = ScheduleTracker(move.policy.schedule if live else ())
        timeout_hit = False
        last_progress = 0.0
        last_check: t.Optional[float] = None
        overdue = "its %d s timeout, although it was told to %s" % (timeout, opts.timeout_action)
        # A live move of a VM with a failover primary starts with QEMU's wait for the guest to release it.
        unplug_since: t.Optional[float] = self.clock.now() if live and move.failover_primaries else None
        while alive():
            wait(opts.poll_interval)
            if not alive():
                break
            now = self.clock.now()
            stats = job_stats(dom)
            if unplug_since is not None and stats is not None:
                if _copying(stats):
                    self.event("primary_released", devices=list(move.failover_primaries), wait_unplug_s=round(now - unplug_since, 3))
                    unplug_since = None
                elif now - unplug_since >= opts.unplug_timeout:
                    self._abandon_unplug(dom, move, now - unplug_since)
                    unplug_since = None
                    timeout_hit = True  # the job is being aborted: no other timeout action on top of it
                    timeout = now  # and the gave-up deadline counts from the abort
                    overdue = "its abort at %.1f s (the guest kept its failover primary past unplug_timeout)" % now
                    continue
            if stats is not None:
                self._last_stats = stats
                if downtime_pending:
                    downtime_pending = not self._set_downtime(dom, move.policy.initial_downtime_ms)
                if last_check is None or now - last_check >= opts.monitor_interval:
                    # Convergence is judged at most once per monitor interval, as vdsm does: a fast
                    # guest's iterations are far shorter than the time auto-converge needs to bite.
                    last_check = now
                    step = tracker.observe(stats.get("memory_iteration"), stats.get("data_remaining"))
                    if step is not None:
                        self._apply(dom, step, stats, tracker.stalled)
                if now - last_progress >= PROGRESS_EVERY_S:
                    last_progress = now
                    self._progress(stats)
            if not timeout or now < timeout:
                continue
            if not timeout_hit:
                timeout_hit = True
                self.event("timeout", after_s=timeout, action=opts.timeout_action)
                why = "timeout after %d s" % timeout
                self._apply(dom, Step(tracker.stalled, opts.timeout_action), stats or {}, tracker.stalled, reason=why)
                if opts.timeout_action != "abort" and self.applied[-1].get("error"):
                    # The timeout action itself failed: stop the migration instead.
                    self._apply(dom, Step(tracker.stalled, "abort"), stats or {}, tracker.stalled, reason=why + ", and %s failed" % opts.timeout_action)
            elif now >= timeout + 2 * CANCEL_WAIT_S:
                self.event("gave_up", after_s=now)
                raise MigrationError(
                    "The migration of VM '%s' still runs %d s after %s; libvirt's job goes on "
                    "without this run. Run the task again to follow it, or use state=cancelled." % (move.vm, 2 * CANCEL_WAIT_S, overdue),
                    vm=move.vm,
                    uri=move.source_uri,
                )

    def _abandon_unplug(self, dom: t.Any, move: Move, waited: float) -> None:
        """The guest has not released its failover primary: abort the job, so the VM runs on with it on the source.

        No pause or suspend here: a paused guest cannot release the device, and would eject it for good
        when resumed later.
        """
        devices = ", ".join(move.failover_primaries)
        self.event("unplug_timeout", devices=list(move.failover_primaries), after_s=round(waited, 3), action="abort")
        self._aborted_by = "aborted: the guest did not release its failover primary (%s) within %g s (unplug_timeout)" % (devices, self.options.unplug_timeout)
        record = {"at_s": self.clock.now(), "action": "abort", "stalled": 0, "memory_iteration": None, "reason": "unplug_timeout"}
        try:
            dom.abortJob()
        except libvirt.libvirtError as exc:
            record["error"] = str(exc)
        self.applied.append(record)

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
            **disk_progress(stats),
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
                    self.records.add(t.cast(str, self._uuid), self.vm)
                    dom.suspend()
                    self._suspended = True
            elif step.action == "abort":
                self._aborted_by = "aborted: %s" % why
                dom.abortJob()
        except (libvirt.libvirtError, MigrationError) as exc:
            record["error"] = str(exc)
        self.applied.append(record)
        self.event("schedule_step", **{key: value for key, value in record.items() if key != "at_s"})

    def _recover_source(self, dom: t.Any, source_uri: str, destination_uri: t.Optional[str]) -> t.Optional[MigrationError]:
        """After a failed job the VM must run on the source: resume it if a schedule step paused it.

        A paused source copy is first checked against the destination and the other known hosts
        (:meth:`_held`): when one of them runs or defines the VM (libvirt leaves the source paused
        when the last step of a move fails after the destination took over), the copy stays paused,
        a schedule's record stays for a later run, and the reason is returned for the failure.
        """
        try:
            if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                held = self._held(dom, t.cast(str, self._uuid), source_uri, destination_uri)
                if held is not None:
                    return held
                if self._suspended:
                    dom.resume()
                    self.event("resumed_on_source")
            if self._suspended and self._uuid:
                self.records.remove(self._uuid)
        except libvirt.libvirtError as exc:
            self.event("source_state_unknown", reason=str(exc))
        return None

    def _held(self, dom: t.Any, uuid: str, uri: str, destination_uri: t.Optional[str]) -> t.Optional[MigrationError]:
        """Why the paused copy of the VM on ``uri`` must not be resumed, or None when no other host has it.

        Reads the move's destination and every known peer. The destination also holds the copy back
        when it cannot be read: its QEMU may run the VM while its libvirtd does not answer. Another
        peer that cannot be read is noted as an event.
        """
        try:
            conn = dom.connect()
            here, where = _host_uuid(conn), conn.getHostname()
        except libvirt.libvirtError:
            here, where = None, uri
        elsewhere: t.List[str] = []
        seen = {uri}
        names = {peer.uri: peer.name for peer in self.peers}
        for other in ([destination_uri] if destination_uri else []) + [peer.uri for peer in self.peers]:
            if other in seen:
                continue
            seen.add(other)
            try:
                with self.connect(other, connect_timeout=OBSERVE_CONNECT_TIMEOUT_S) as conn:
                    if here is not None and _host_uuid(conn) == here:
                        continue  # the same host under another URI
                    there = whereabouts(conn, uuid)
            except (MigrationError, libvirt.libvirtError) as exc:
                there = {"error": _reason(exc)}
            label = names.get(other) or other
            if there is None:
                continue
            if "error" not in there:
                elsewhere.append("%s (%s%s)" % (label, there["state"], "" if there["persistent"] else ", transient"))
            elif other == destination_uri:
                elsewhere.append("%s (cannot be read: %s)" % (label, there["error"]))
            else:
                self.event("host_unreadable", host=other, reason=there["error"])
        if not elsewhere:
            return None
        self.event("kept_paused", host=uri, elsewhere=elsewhere)
        return MigrationError(
            "VM '%s' is left paused on %s and not resumed: %s %s it too, and resuming it could run two copies. Find the copy "
            "that is current, remove the other, then resume it (virsh resume)."
            % (self.vm, where, ", ".join(elsewhere), "has" if len(elsewhere) == 1 else "have"),
            vm=self.vm,
            uri=uri,
            uuid=uuid,
            hosts=["%s (paused)" % where] + elsewhere,
            kept_paused=True,
        )

    def _failed(self, source: t.Any, dom: t.Any, move: Move, error: BaseException) -> "t.NoReturn":
        """The move failed: recover the source copy, and raise libvirt's reason with what both hosts show."""
        held = self._recover_source(dom, t.cast(str, move.source_uri), move.destination_uri)
        action = "migrate to %s" % move.destination_uri
        if isinstance(error, libvirt.libvirtError):
            exc = peer_authentication_failure(error, move.destination_uri, move.vm, move.source_uri) or translate_libvirt_error(
                error, action, vm=move.vm, uri=move.source_uri
            )
        else:
            exc = unexpected_error(error, action, vm=move.vm, uri=move.source_uri)
        if self._aborted_by is not None:
            exc = OperationCancelledError("%s (%s)" % (exc.msg, self._aborted_by), **exc.details)
        if held is not None:
            _add_notes(exc, [held.msg])
            exc.details.update(kept_paused=True, hosts=held.details.get("hosts"))
        self.event("failed", reason=exc.msg)
        exc.details["observed"] = self.observe(source, t.cast(str, move.uuid), move.destination_uri)
        raise exc from error

    def _source_again(self, stack: contextlib.ExitStack, source: t.Any, dom: t.Any, move: Move) -> t.Tuple[t.Any, t.Any]:
        """``source`` and ``dom``, or, when that connection died, new ones on ``stack``.

        A source libvirtd that went away (restarted, killed) is waited for up to SOURCE_RETURN_WAIT_S: its
        QEMU runs on without it, and only libvirt's own view of the VM there says what the failure left.
        Returns the old, dead handles when it does not come back (everything read from them is then an
        error, and reported as such).
        """
        if _alive(source):
            return source, dom
        deadline = time.monotonic() + SOURCE_RETURN_WAIT_S
        while True:
            try:
                conn = stack.enter_context(self.connect(t.cast(str, move.source_uri), connect_timeout=OBSERVE_CONNECT_TIMEOUT_S))
            except MigrationError as exc:
                if time.monotonic() >= deadline:
                    self.event("source_unreachable", host=move.source_uri, reason=exc.msg)
                    return source, dom
                time.sleep(min(2.0, max(self.options.poll_interval, 0.1)))
                continue
            self.event("source_reconnected", host=move.source_uri)
            try:
                return conn, conn.lookupByUUIDString(t.cast(str, move.uuid))
            except libvirt.libvirtError:
                return conn, dom  # gone from the source: read below through the new connection

    def _moved_despite(self, source: t.Any, dom: t.Any, move: Move, error: BaseException, live: bool) -> bool:
        """The migrate call failed: whether libvirt's job went on and took the VM to the destination anyway.

        A lost connection or keepalive ends the call, not always the job. ``source`` and ``dom`` are
        live again where the source came back (:meth:`_source_again`); a migration job that still runs
        there is followed to its end under this run's schedule and timeout. The VM then active on the destination (defined there,
        after an offline move) and no longer active on the source has moved, and :meth:`verify` judges
        it like any other move.
        """
        uuid = t.cast(str, move.uuid)
        job = job_stats(dom)
        if job is not None and not foreign_job(job):
            self.event("job_continues", reason=_reason(error))
            self._monitor(dom, move, lambda: job_stats(dom) is not None, time.sleep, live, downtime_pending=False)
        observed = self.observe(source, uuid, move.destination_uri)
        there, here = observed.get("destination"), observed["source"]
        if there is None or "error" in there or not (there["active"] if move.running else there["persistent"]):
            return False
        if here is not None and ("error" in here or here["active"]):
            return False
        self.event("completed_despite_error", reason=_reason(error))
        self._warn(
            "libvirt's migrate call for VM '%s' failed (%s), but its job completed: the VM is on %s and no longer on %s."
            % (move.vm, _reason(error), move.destination, move.source)
        )
        return True

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
                translate_libvirt_error(exc, "resume the VM the schedule paused, after its move", vm=self.vm, uri=uri)
                if isinstance(exc, libvirt.libvirtError)
                else exc
            )
            # The VM did move: it waits, paused, on the destination (the record stays for the next run).
            error.details.update(changed=True, moved_to=uri)
            raise error from exc
        self.records.remove(uuid)
        self._suspended = False

    def _completed_stats(self, dest: t.Any, source_dom: t.Any, uuid: str) -> t.Dict[str, t.Any]:
        """Downtime, data moved and iterations, from the destination's completed-job statistics.

        After a switch to post-copy libvirt keeps no completed-job statistics; data and iterations
        then come from the last progress poll, and the downtime stays unknown.
        """
        flags = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
        try:
            stats = dest.lookupByUUIDString(uuid).jobStats(flags) or {}
        except libvirt.libvirtError:
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

    # -- a job or a pause left by a lost run --------------------------------------------------
    def resume_after_lost_run(self, dom: t.Any, uuid: str, uri: str, check_mode: bool = False) -> None:
        """A VM that a lost earlier run's schedule paused runs again, once no migration job holds it."""
        if not self.records.has(uuid):
            return
        if job_stats(dom) is not None:
            return
        paused = self.call(dom.state, "read the VM state", uri)[0] == libvirt.VIR_DOMAIN_PAUSED
        held = self._held(dom, uuid, uri, None) if paused else None
        if held is not None:
            raise held
        if check_mode:
            if paused:
                self.event("would_resume_after_lost_run", host=uri)
            return
        if paused:
            self.call(dom.resume, "resume the VM an earlier run paused", uri)
            self.event("resumed_after_lost_run", host=uri)
        self.records.remove(uuid)

    def adopt(self, source: t.Any, dom: t.Any, move: Move, job: t.Mapping[str, t.Any], where: t.Sequence[Candidate]) -> t.Dict[str, t.Any]:
        """The VM already has a migration job on the source (an earlier run died, or someone else started
        it): follow it to its end under this run's schedule and timeout, then report where the VM is.

        ``where`` are the hosts the job may be taking the VM to.
        """
        check_adoptable(job, move.vm, t.cast(str, move.source_uri))
        uuid = t.cast(str, move.uuid)
        self._uuid = uuid
        self._timeout = move.timeout_s
        elapsed = (job.get("time_elapsed") or 0) / 1000.0
        self.clock = Clock(elapsed)
        self._suspended = self.records.has(uuid)
        self.know(where)
        autostart = self._autostart(dom, move)
        self.event("adopted", job=job_summary(job))
        self._monitor(dom, move, lambda: job_stats(dom) is not None, time.sleep, live=True, downtime_pending=False)
        here = whereabouts(source, uuid)
        if here is not None and here.get("active"):
            held = self._recover_source(dom, t.cast(str, move.source_uri), None)
            self.event("failed", reason="the adopted job ended with the VM still on the source")
            failure = MigrationError(
                "The migration job of VM '%s' that was already running on %s (adopted) ended without moving it; it %s on the source."
                % (move.vm, move.source, "runs" if here.get("state") == "running" else "is %s" % here.get("state")),
                vm=move.vm,
                uri=move.source_uri,
                observed={"source": here},
            )
            if held is not None:
                _add_notes(failure, [held.msg])
                failure.details.update(kept_paused=True, hosts=held.details.get("hosts"))
            raise failure
        for candidate in where:
            with contextlib.ExitStack() as stack:
                try:
                    conn = stack.enter_context(self.connect(candidate.uri))
                    there = whereabouts(conn, uuid)
                    hostname = conn.getHostname()
                except (MigrationError, libvirt.libvirtError):
                    continue  # an unreachable candidate cannot have received it
                if there is None or not there.get("active"):
                    continue
                if self._suspended:
                    self._resume_on(candidate.uri, uuid)
                arrived = dataclasses.replace(move, destination=hostname, destination_uri=candidate.uri)
                result = {
                    "changed": True,
                    "adopted": True,
                    "outcome": "migrated",
                    "destination": {"hostname": hostname, "uri": candidate.uri},
                    "policy": move.policy.as_dict(),
                    "duration_s": self.clock.now(),
                    "schedule_applied": self.applied,
                    "events": self.events,
                }
                result.update(self._completed_stats(conn, dom, uuid))
                result.update(self.verify(source, conn, arrived))
                # The lost run may have unplugged bond VFs before its job: they go back in here.
                result["autostart"] = self._after_verified(conn, arrived, self._vfs_left_unplugged(conn, arrived), autostart)
                if self.warnings:
                    result["warnings"] = list(self.warnings)
                return result
        raise MigrationError(
            "The migration job of VM '%s' (adopted) ended and the VM left %s, but it is not active on any destination given (%s)."
            % (move.vm, move.source, ", ".join(c.uri for c in where) or "none"),
            vm=move.vm,
            uri=move.source_uri,
            observed={"source": here},
        )

    # -- cancel -------------------------------------------------------------------------------
    def cancel(self, source: t.Any, dom: t.Any, name: str, uuid: str, uri: str, check_mode: bool) -> t.Dict[str, t.Any]:
        """Abort the VM's outgoing migration job; the VM keeps running on the source."""
        self._uuid = uuid
        stats = job_stats(dom)
        if stats is None:
            self.resume_after_lost_run(dom, uuid, uri, check_mode)
            msg = "VM '%s' has no migration job running on %s." % (name, uri)
            return {"changed": bool(self.events), "vm": name, "events": self.events, "msg": msg}
        if foreign_job(stats):
            msg = "VM '%s' on %s runs a job that is not an outgoing migration (operation %s); not cancelling it." % (name, uri, stats["operation"])
            raise MigrationError(msg, vm=name, uri=uri)
        state, reason = self.call(dom.state, "read the VM state", uri)[:2]
        post_copy = ((libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY), (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_POSTCOPY))
        if (state, reason) in post_copy:
            raise MigrationError(
                "VM '%s' is in the post-copy phase of its migration: it already runs on the destination and the migration "
                "cannot be cancelled any more; it completes on its own." % name,
                vm=name,
                uri=uri,
            )
        if check_mode:
            return {"changed": True, "vm": name, "msg": "Would cancel the migration of VM '%s'." % name}
        try:
            dom.abortJob()
        except libvirt.libvirtError as exc:
            if libvirt_error_code(exc) != VIR_ERR_OPERATION_INVALID or job_stats(dom) is not None:
                raise translate_libvirt_error(exc, "cancel the migration", vm=name, uri=uri) from exc
        self.event("cancel_requested")
        deadline = time.monotonic() + CANCEL_WAIT_S
        while job_stats(dom) is not None and time.monotonic() < deadline:
            time.sleep(self.options.poll_interval)
        here = whereabouts(source, uuid)
        if job_stats(dom) is not None:
            raise MigrationError(
                "The migration of VM '%s' was asked to stop but still runs after %d s." % (name, CANCEL_WAIT_S),
                vm=name,
                uri=uri,
                observed={"source": here},
            )
        if here is None or not here.get("active"):
            raise MigrationError(
                "The migration of VM '%s' completed before the cancellation took effect: the VM is no longer active on %s." % (name, uri),
                vm=name,
                uri=uri,
                observed={"source": here},
            )
        if self.records.has(uuid) and here.get("state") == "paused":
            self._suspended = True
            held = self._recover_source(dom, uri, None)
            if held is not None:
                raise held
            here = whereabouts(source, uuid) or here
        self.event("cancelled", state=here.get("state"))
        return {"changed": True, "vm": name, "state": here.get("state"), "events": self.events}


def job_summary(job: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """How far a running job has come, for messages and events."""
    return dict(
        {
            "elapsed_s": round((job.get("time_elapsed") or 0) / 1000.0, 1),
            "data_remaining_mib": round((job.get("data_remaining") or 0) / MIB, 1),
            "memory_iteration": job.get("memory_iteration"),
        },
        **disk_progress(job),
    )


def disk_progress(stats: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """The disk copy's figures of a job (MiB), when libvirt gives them (a move that copies disks)."""
    return {"%s_mib" % key: round((stats.get(key) or 0) / MIB, 1) for key in ("disk_total", "disk_processed", "disk_remaining") if key in stats}


def foreign_job(job: t.Mapping[str, t.Any]) -> bool:
    """The job is known not to be an outgoing migration (libvirt says which operation it is)."""
    return job.get("operation") not in (None, JOB_OPERATION_MIGRATION_OUT)


def check_adoptable(job: t.Mapping[str, t.Any], vm: str, uri: str) -> None:
    """Only an outgoing migration job may be adopted; any other job keeps the VM busy."""
    if foreign_job(job):
        msg = "VM '%s' on %s is busy with another libvirt job (operation %s, not an outgoing migration); not migrating it now." % (vm, uri, job["operation"])
        raise MigrationError(msg, vm=vm, uri=uri)


def _copying(stats: t.Mapping[str, t.Any]) -> bool:
    """The job has started copying memory (past QEMU's ``wait-unplug`` phase, which reports no data counters)."""
    return bool(stats.get("data_total") or stats.get("memory_total") or stats.get("data_processed"))


def _add_notes(exc: MigrationError, notes: t.Iterable[t.Optional[str]]) -> None:
    """Add sentences about what else happened to a failure's message (the ones that are not None)."""
    extra = [note for note in notes if note]
    if extra:
        exc.msg = " ".join([exc.msg] + extra)
        exc.args = (exc.msg,)


def _reason(exc: BaseException) -> str:
    """A failure in a few words: libvirt's message, the collection's sentence, or the exception's type and text."""
    if isinstance(exc, MigrationError):
        return exc.msg
    if isinstance(exc, libvirt.libvirtError):
        return exc.get_error_message() or str(exc)
    return "%s: %s" % (type(exc).__name__, exc)


def _on_off(flag: t.Optional[bool]) -> str:
    return "unknown" if flag is None else ("on" if flag else "off")


def _host_uuid(conn: t.Any) -> t.Optional[str]:
    """The host's UUID from its capabilities (None when they cannot be read)."""
    try:
        return parse_capabilities(conn.getCapabilities())["uuid"]
    except (libvirt.libvirtError, ValueError):
        return None


def _alive(conn: t.Any) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False
