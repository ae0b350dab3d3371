"""The soak's pure parts: the seeded plan of steps, and the judging of a libvirt snapshot into violations.

Nothing here touches the lab: `soak.py` resolves each planned step against the lab as libvirt shows
it, runs it, injects its fault, takes a snapshot and hands it to :func:`judge`.

A plan depends on the seed alone (never on what the lab did), so the same seed replays the same
sequence of steps; what each step resolves to (which host is the source) follows the lab's state.
"""

from __future__ import annotations

import dataclasses
import random
import typing as t

# Operations (one module run each).
MIGRATE = "migrate"  # vm_migrate to a named host (dest_offset) or, with dest_offset None, destination=auto
EVACUATE = "evacuate"  # host_maintenance state=maintenance
ACTIVATE = "activate"  # host_maintenance state=active
CANCEL = "cancel"  # a slow vm_migrate of the real guest, then vm_migrate state=cancelled during it
HIBERNATE = "hibernate"  # vm_hibernate state=hibernated
RESTORE = "restore"  # vm_hibernate state=running
OPERATIONS = (MIGRATE, EVACUATE, ACTIVATE, CANCEL, HIBERNATE, RESTORE)
OPERATION_WEIGHTS = (8, 3, 3, 2, 2, 2)

# Faults (at most one a step).
KILL_LIBVIRTD = "kill_libvirtd"  # SIGKILL the libvirtd of the step's source or destination host
LINK_CUT = "link_cut"  # the source's or destination's veths down for a few seconds
KILL_CONTROLLER = "kill_controller"  # SIGKILL the ansible process of the step's first operation
PAUSE = "pause"  # virsh suspend of the first operation's VM (or a VM on its host)
TRANSIENT = "transient"  # virsh create of a transient copy (new name and UUID) on the source
STALE_COPY = "stale_copy"  # virsh define of the VM's XML on another host: a stale duplicate definition
FAULTS = (KILL_LIBVIRTD, LINK_CUT, KILL_CONTROLLER, PAUSE, TRANSIENT, STALE_COPY)
# Faults that make sense before the operation starts as well as during it.
STATE_FAULTS = (PAUSE, TRANSIENT, STALE_COPY)
FAULT_PROBABILITY = 0.55
CONCURRENT_PROBABILITY = 0.2

# Violation kinds.
VM_LOST = "vm_lost"  # neither active nor defined anywhere
VM_STOPPED = "vm_stopped"  # defined, active nowhere, no managed save image, not stopped by the soak
NOT_PERSISTENT = "not_persistent"  # active but persistently defined nowhere
ACTIVE_TWICE = "active_twice"  # active on two hosts, or two QEMU processes
DEFINED_TWICE = "defined_twice"  # persistently defined on two hosts (stale copies the soak planted excepted)
RESULT_CONTRADICTS = "result_contradicts"  # a module's result that libvirt contradicts
MAINTENANCE_RUNS_VMS = "maintenance_runs_vms"  # a host marked in maintenance with an active domain
HOST_UNREADABLE = "host_unreadable"  # a host's libvirtd could not be read after the lab was restored
VIOLATIONS = (VM_LOST, VM_STOPPED, NOT_PERSISTENT, ACTIVE_TWICE, DEFINED_TWICE, RESULT_CONTRADICTS, MAINTENANCE_RUNS_VMS, HOST_UNREADABLE)

ACTIVE_STATES = frozenset({"running", "paused", "in shutdown", "blocked", "pmsuspended"})


@dataclasses.dataclass(frozen=True)
class Operation:
    """One module run, in terms of the soak's VM and host indexes, resolved against the lab when it runs.

    ``vm`` indexes the soak's VMs (the real guest is always index 0, and the one CANCEL uses);
    ``host`` indexes the hosts, or with ``host_of_vm`` the host is wherever that VM is; ``dest_offset``
    names the destination relative to the source (``(source + 1 + offset) % hosts``), None for auto.
    """

    kind: str
    vm: int | None = None
    host: int | None = None
    host_of_vm: int | None = None
    dest_offset: int | None = None
    cancel_after_s: float = 0.0


@dataclasses.dataclass(frozen=True)
class Step:
    """One or two operations started together, and at most one fault at ``fault_delay_s`` (< 0: before them)."""

    number: int
    operations: tuple[Operation, ...]
    fault: str | None = None
    fault_side: str = "source"  # or "destination"
    fault_delay_s: float = 0.0

    def describe(self) -> str:
        ops = " + ".join(describe_operation(op) for op in self.operations)
        if self.fault is None:
            return "step %d: %s" % (self.number, ops)
        when = "before" if self.fault_delay_s < 0 else "at %.1f s" % self.fault_delay_s
        return "step %d: %s; fault %s (%s) %s" % (self.number, ops, self.fault, self.fault_side, when)


def describe_operation(op: Operation) -> str:
    fields = [op.kind]
    if op.vm is not None:
        fields.append("vm#%d" % op.vm)
    if op.host is not None:
        fields.append("host#%d" % op.host)
    if op.host_of_vm is not None:
        fields.append("host-of-vm#%d" % op.host_of_vm)
    if op.kind == MIGRATE:
        fields.append("dest=auto" if op.dest_offset is None else "dest=+%d" % (op.dest_offset + 1))
    if op.kind == CANCEL:
        fields.append("cancel at %.1f s" % op.cancel_after_s)
    return " ".join(fields)


def _operation(rng: random.Random, vms: int, hosts: int) -> Operation:
    kind = rng.choices(OPERATIONS, OPERATION_WEIGHTS)[0]
    if kind == MIGRATE:
        return Operation(MIGRATE, vm=rng.randrange(vms), dest_offset=rng.choice([None] + list(range(hosts - 1))))
    if kind in (EVACUATE, ACTIVATE):
        return Operation(kind, host=rng.randrange(hosts))
    if kind == CANCEL:
        return Operation(CANCEL, vm=0, dest_offset=rng.randrange(hosts - 1), cancel_after_s=round(rng.uniform(0.5, 4.0), 1))
    return Operation(kind, vm=rng.randrange(vms))


def _overlapping(rng: random.Random, first: Operation, vms: int, hosts: int) -> Operation:
    """A second operation on the first one's VM or host: two operators acting on the same things at once."""
    if first.vm is not None:
        choice = rng.randrange(3)
        if choice == 0:
            return Operation(MIGRATE, vm=first.vm, dest_offset=rng.choice([None] + list(range(hosts - 1))))
        if choice == 1:
            return Operation(EVACUATE, host_of_vm=first.vm)
        return Operation(HIBERNATE, vm=first.vm)
    # The first one acts on a host: evacuate another host into it, or move one of the VMs around.
    if rng.random() < 0.5:
        other = (first.host + 1 + rng.randrange(hosts - 1)) % hosts  # type: ignore[operator]
        return Operation(EVACUATE, host=other)
    return Operation(MIGRATE, vm=rng.randrange(vms), dest_offset=None)


def plan(seed: int, vms: int, hosts: int) -> t.Iterator[Step]:
    """The endless sequence of steps for ``seed``, over ``vms`` soak VMs (index 0 the real guest) and ``hosts`` hosts."""
    rng = random.Random(seed)
    number = 0
    while True:
        number += 1
        first = _operation(rng, vms, hosts)
        operations: tuple[Operation, ...] = (first,)
        if first.kind != CANCEL and rng.random() < CONCURRENT_PROBABILITY:
            operations = (first, _overlapping(rng, first, vms, hosts))
        if rng.random() >= FAULT_PROBABILITY:
            yield Step(number, operations)
            continue
        fault = rng.choice(FAULTS)
        side = rng.choice(("source", "destination"))
        delay = round(rng.uniform(0.5, 4.5), 1)
        if fault in STATE_FAULTS and rng.random() < 0.5:
            delay = -1.0
        yield Step(number, operations, fault, side, delay)


# ---------------------------------------------------------------------------------------------------
# Judging
# ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Domain:
    state: str  # libvirt's word: running, paused, shut off, ...
    persistent: bool
    managed_save: bool = False


@dataclasses.dataclass
class Snapshot:
    """The lab as libvirt shows it: per host its domains, its maintenance mark, and whether it could be read."""

    domains: dict[str, dict[str, Domain]]  # host -> domain name -> Domain
    marks: dict[str, str | None] = dataclasses.field(default_factory=dict)  # host -> mark state
    errors: dict[str, str] = dataclasses.field(default_factory=dict)  # host -> why it could not be read
    qemu: dict[str, int] = dataclasses.field(default_factory=dict)  # domain name -> QEMU processes

    def active_on(self, vm: str) -> list[str]:
        return sorted(host for host, doms in self.domains.items() if vm in doms and doms[vm].state in ACTIVE_STATES)

    def persistent_on(self, vm: str) -> list[str]:
        return sorted(host for host, doms in self.domains.items() if vm in doms and doms[vm].persistent)


@dataclasses.dataclass(frozen=True)
class Claim:
    """What a module's result says about the lab, to hold against libvirt.

    ``kind``: "on" (the VM is active on ``host``), "off" (the VM is defined on ``host`` and active
    nowhere: hibernated), "stayed" (a failed move: the VM is still active on ``host``, its source),
    "unmarked" (a failed evacuation left ``host`` without a maintenance mark).
    ``by`` names the operation, for the message.
    """

    kind: str
    vm: str | None
    host: str
    by: str


@dataclasses.dataclass(frozen=True)
class Violation:
    kind: str
    detail: str


def judge(
    snapshot: Snapshot,
    vms: t.Iterable[str],
    planted: t.Iterable[tuple[str, str]] = (),
    claims: t.Iterable[Claim] = (),
    transients: t.Iterable[str] = (),
) -> list[Violation]:
    """Every violation the snapshot shows for the soak's ``vms``.

    ``planted`` are the (vm, host) stale copies the soak defined; ``transients`` the transient VMs it
    started, which must still run on exactly one host.
    """
    found: list[Violation] = []
    planted = set(planted)
    for host, error in sorted(snapshot.errors.items()):
        found.append(Violation(HOST_UNREADABLE, "%s: %s" % (host, error)))
    for vm in transients:
        active = snapshot.active_on(vm)
        if not active and not snapshot.errors:
            found.append(Violation(VM_LOST, "transient %s runs nowhere" % vm))
        elif len(active) > 1:
            found.append(Violation(ACTIVE_TWICE, "transient %s active on %s" % (vm, ", ".join(active))))
    for vm in vms:
        active = snapshot.active_on(vm)
        persistent = [host for host in snapshot.persistent_on(vm) if (vm, host) not in planted or host in active]
        defined = [host for host, doms in snapshot.domains.items() if vm in doms and (vm, host) not in planted]
        if len(active) > 1 or snapshot.qemu.get(vm, 0) > 1:
            found.append(Violation(ACTIVE_TWICE, "%s active on %s, %d QEMU processes" % (vm, ", ".join(active), snapshot.qemu.get(vm, 0))))
        if len(persistent) > 1:
            found.append(Violation(DEFINED_TWICE, "%s persistently defined on %s" % (vm, ", ".join(persistent))))
        if not active and not defined:
            if not snapshot.errors:  # an unreadable host may hold it: HOST_UNREADABLE says so
                found.append(Violation(VM_LOST, "%s is neither active nor defined on any host" % vm))
        elif not active:
            saved = [host for host in defined if snapshot.domains[host][vm].managed_save]
            if not saved:
                found.append(Violation(VM_STOPPED, "%s is shut off on %s without a managed save image" % (vm, ", ".join(defined))))
        elif not persistent:
            found.append(Violation(NOT_PERSISTENT, "%s runs on %s but is persistently defined nowhere" % (vm, ", ".join(active))))
    for host, mark in sorted(snapshot.marks.items()):
        running = sorted(name for name, dom in snapshot.domains.get(host, {}).items() if dom.state in ACTIVE_STATES)
        if mark == "maintenance" and running:
            found.append(Violation(MAINTENANCE_RUNS_VMS, "%s is marked in maintenance and runs %s" % (host, ", ".join(running))))
    found.extend(_contradictions(snapshot, list(claims)))
    return found


def _contradictions(snapshot: Snapshot, claims: list[Claim]) -> list[Violation]:
    found = []
    # A failed move of a VM that another operation of the same step moved says nothing about where it is.
    moved = {claim.vm for claim in claims if claim.kind in ("on", "off")}
    # Two operations of a step may each move the VM (an evacuation into a host that another evacuation
    # empties): libvirt must show it on the host of one of their claims.
    claimed_on: dict[str, set[str]] = {}
    for claim in claims:
        if claim.kind == "on":
            claimed_on.setdefault(t.cast(str, claim.vm), set()).add(claim.host)
    for claim in claims:
        if claim.kind == "unmarked":
            if snapshot.marks.get(claim.host) is not None:
                found.append(Violation(RESULT_CONTRADICTS, "%s failed, yet %s is marked %s" % (claim.by, claim.host, snapshot.marks[claim.host])))
            continue
        vm = t.cast(str, claim.vm)
        active = snapshot.active_on(vm)
        if claim.kind == "on" and (len(active) != 1 or active[0] not in claimed_on[vm]):
            found.append(Violation(RESULT_CONTRADICTS, "%s says %s is on %s; libvirt shows it active on %s" % (claim.by, vm, claim.host, active or "no host")))
        elif claim.kind == "off" and (active or vm not in snapshot.domains.get(claim.host, {})):
            said = "%s says %s is saved on %s; libvirt shows it active on %s" % (claim.by, vm, claim.host, active or "no host")
            found.append(Violation(RESULT_CONTRADICTS, said))
        elif claim.kind == "stayed" and vm not in moved and active and active != [claim.host]:
            found.append(Violation(RESULT_CONTRADICTS, "%s failed, yet %s moved from %s to %s" % (claim.by, vm, claim.host, ", ".join(active))))
    return found
