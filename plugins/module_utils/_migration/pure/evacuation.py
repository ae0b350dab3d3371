# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""Planning a host evacuation (maintenance): which VM goes where, in what order, and what cannot go.

Putting a host into maintenance moves every VM off it. The whole plan is made before anything
changes, so that check mode can show it and a real run can refuse to start when a VM would be left
behind:

* VMs are taken in migration-priority order (high, medium, low), larger memory first, then by name.
* Each VM goes to the best destination passing every placement filter (``placement.py``), counting
  what earlier VMs of the plan already put there as pending load, so the VMs spread over the
  cluster as oVirt's scheduler spreads them.
* Running VMs (paused ones included) migrate live. Shut-off persistent VMs move offline: only their
  definition moves and they hold no memory or vCPUs, so they count as needing 0 MiB and 0 vCPUs (the
  free-memory filter cannot reject them); every other filter applies, so they can start where they land.
* A VM is not migratable when its ``migration_mode`` is ``none``, or ``manual`` and the evacuation
  was not confirmed with ``include_manual``, or when its ``pinned_hosts`` name no candidate other than
  the host being evacuated. A running one is then ``blocked`` (``non_migratable=fail``) or shut down
  cleanly, to be started again when the host is activated (``non_migratable=shutdown``). A shut-off
  one is ``kept``: it stays defined, shut off, on the host, which blocks nothing.
* A VM whose migration settings cannot be used (an unknown priority, mode or policy) is always
  ``blocked``, running or not: the settings must be fixed before the plan can say where it goes.
* A running transient VM that may not migrate is ``blocked`` even with ``non_migratable=shutdown``:
  libvirt forgets a transient VM when it stops, so shutting it down would destroy it.
* A VM whose UUID is also defined on another host (a stale copy) is ``blocked``, and so is a
  pmsuspended or crashed one: moving them could start a VM twice, or cannot work.
* A VM no host can take is ``unplaceable``, with every host's reasons.

The plan is ``ok`` when nothing is blocked or unplaceable. :class:`EvacuationQueue` then orders the
execution: a bounded number of migrations out of the source and into each destination at once, and
never a VM started before one of higher priority.

Pure logic: no libvirt import.
"""

from __future__ import annotations

import dataclasses
import bisect
import typing as t

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import placement
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import settings as vm_settings
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import MigrationError
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.plan import LIVE, OFFLINE, Move
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.policy import Policy, PolicyError, default_timeout

NON_MIGRATABLE_ACTIONS = ("fail", "shutdown")
# Active VMs in these states cannot be migrated, and why.
UNMOVABLE_STATES = {
    "pmsuspended": "its guest suspended itself to RAM; wake it up first (virsh dompmwakeup)",
    "crashed": "it crashed and is kept for inspection; dump or destroy it first",
}


class EvacuationError(MigrationError):
    """An evacuation cannot be planned or scheduled as asked; nothing has been changed."""


@dataclasses.dataclass
class VmToMove:
    """One VM on the host being evacuated.

    ``running`` means active (running or paused: it holds memory and migrates live); a shut-off VM
    must be ``persistent`` (libvirt forgets a transient domain when it stops). ``settings`` are its
    effective migration settings (``settings.effective``). ``needs`` is what placement checks; when
    not given it is built from the name, memory, vCPUs and the settings' ``pinned_hosts``.
    """

    name: str
    uuid: t.Optional[str] = None
    memory_mib: int = 0
    vcpus: int = 1
    running: bool = True
    persistent: bool = True
    settings: t.Dict[str, t.Any] = dataclasses.field(default_factory=lambda: dict(vm_settings.DEFAULTS))
    needs: t.Optional[placement.VmNeeds] = None
    # libvirt's word for the VM's state (running, paused, pmsuspended, crashed, shut off, ...).
    state: t.Optional[str] = None
    # Per unreadable setting of the VM's own metadata, why it cannot be read.
    settings_problems: t.Dict[str, str] = dataclasses.field(default_factory=dict)
    # Other hosts on which the same UUID is defined too (a stale copy).
    duplicate_on: t.Tuple[str, ...] = ()
    # Assigned host devices that cannot migrate (vGPUs, PCI/USB/SCSI host devices, a VF without a failover pair).
    unmovable_devices: t.Tuple[str, ...] = ()
    # SR-IOV failover pairs (see plan.Move): bond pairs whose VF the runner replugs, primaries QEMU unplugs.
    bond_vfs: t.Tuple[str, ...] = ()
    failover_primaries: t.Tuple[str, ...] = ()
    # A shut-off VM with a managed save image (hibernated, see vm_hibernate): the image is local to the source.
    saved_image: bool = False

    def __post_init__(self) -> None:
        if self.needs is None:
            self.needs = placement.VmNeeds(
                name=self.name,
                memory_mib=self.memory_mib,
                vcpus=self.vcpus,
                pinned_hosts=placement.host_names(self.settings.get("pinned_hosts")),
            )

    @classmethod
    def from_facts(
        cls, facts: t.Mapping[str, t.Any], requirements: t.Mapping[str, t.Any], effective_settings: t.Mapping[str, t.Any]
    ) -> "VmToMove":
        """The VM described by its domain facts, XML requirements and effective settings."""
        needs = placement.needs_from_facts(facts, requirements, effective_settings)
        return cls(
            name=needs.name,
            uuid=facts.get("uuid"),
            memory_mib=needs.memory_mib,
            vcpus=needs.vcpus,
            running=bool(facts.get("active")),
            persistent=bool(facts.get("persistent", True)),
            settings=dict(effective_settings),
            needs=needs,
            state=facts.get("state"),
            settings_problems=dict(facts.get("migration_settings_problems") or {}),
            unmovable_devices=tuple(requirements.get("unmovable_devices") or ()),
            bond_vfs=tuple(requirements.get("bond_vfs") or ()),
            failover_primaries=tuple(requirements.get("failover_primaries") or ()),
        )

    @property
    def placement_needs(self) -> placement.VmNeeds:
        """What the destination must offer now: a shut-off VM holds no memory and no vCPUs."""
        needs = t.cast(placement.VmNeeds, self.needs)
        if self.running:
            return needs
        return dataclasses.replace(needs, memory_mib=0, vcpus=0)


@dataclasses.dataclass(frozen=True)
class SourceHost:
    """The host being evacuated. Its UUID is how placement recognises it among the candidates."""

    name: str
    uuid: str
    uri: t.Optional[str] = None


@dataclasses.dataclass(frozen=True)
class HeldVm:
    """A VM the plan does not move, and the sentence saying why (it names the VM)."""

    vm: str
    uuid: t.Optional[str]
    priority: str
    memory_mib: int
    running: bool
    reason: str
    # Unplaceable VMs only: per candidate host, every reason it was rejected.
    rejected: t.Mapping[str, t.Sequence[str]] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> t.Dict[str, t.Any]:
        return {
            "vm": self.vm,
            "uuid": self.uuid,
            "priority": self.priority,
            "memory_mib": self.memory_mib,
            "running": self.running,
            "reason": self.reason,
        }


@dataclasses.dataclass
class HostLoad:
    """What the plan puts on one destination, and its free memory before and after."""

    name: str
    uri: str
    available_mib_before: int
    memory_mib: int = 0
    vcpus: int = 0
    vms: int = 0

    @property
    def available_mib_after(self) -> int:
        return self.available_mib_before - self.memory_mib

    def as_dict(self) -> t.Dict[str, t.Any]:
        return {
            "uri": self.uri,
            "vms": self.vms,
            "memory_mib": self.memory_mib,
            "vcpus": self.vcpus,
            "available_mib_before": self.available_mib_before,
            "available_mib_after": self.available_mib_after,
        }


@dataclasses.dataclass
class EvacuationPlan:
    """Where each VM of the source goes, in execution order, and which VMs stay and why.

    ``moves`` are in priority order (the order the queue starts them); ``blocked`` VMs stop the
    evacuation; ``shutdown`` VMs are shut down cleanly and started again when the host is activated;
    ``kept`` VMs are shut off and stay defined on the source; ``unplaceable`` VMs fit on no host.
    ``load`` is, per usable destination (reachable, not in maintenance, not the source), what the
    plan puts there: live VMs' memory and vCPUs, and the count of all VMs moved there.
    ``tunnelled`` says whether live moves go through the libvirt connections (the run's option).
    """

    source: SourceHost
    include_manual: bool = False
    non_migratable: str = "fail"
    moves: t.List[Move] = dataclasses.field(default_factory=list)
    blocked: t.List[HeldVm] = dataclasses.field(default_factory=list)
    shutdown: t.List[HeldVm] = dataclasses.field(default_factory=list)
    kept: t.List[HeldVm] = dataclasses.field(default_factory=list)
    unplaceable: t.List[HeldVm] = dataclasses.field(default_factory=list)
    load: t.Dict[str, HostLoad] = dataclasses.field(default_factory=dict)
    tunnelled: bool = False

    @property
    def ok(self) -> bool:
        """True when every VM either moves, is shut down as asked, or is shut off and may stay."""
        return not self.blocked and not self.unplaceable

    def problems(self) -> t.List[str]:
        """The sentences that make the plan not ``ok``: blocked VMs first, then unplaceable ones."""
        return [held.reason for held in self.blocked + self.unplaceable]

    def as_dict(self) -> t.Dict[str, t.Any]:
        """The plan as a module returns it (in check mode too)."""
        live = sum(1 for move in self.moves if move.kind == LIVE)
        return {
            "source": {"name": self.source.name, "uuid": self.source.uuid, "uri": self.source.uri},
            "ok": self.ok,
            "include_manual": self.include_manual,
            "non_migratable": self.non_migratable,
            "tunnelled": self.tunnelled,
            "moves": [move.as_dict() for move in self.moves],
            "blocked": [held.as_dict() for held in self.blocked],
            "shutdown": [held.as_dict() for held in self.shutdown],
            "kept": [held.as_dict() for held in self.kept],
            "unplaceable": [held.as_dict() for held in self.unplaceable],
            "load": {name: self.load[name].as_dict() for name in sorted(self.load)},
            "summary": {
                "moves": len(self.moves),
                "live": live,
                "offline": len(self.moves) - live,
                "blocked": len(self.blocked),
                "shutdown": len(self.shutdown),
                "kept": len(self.kept),
                "unplaceable": len(self.unplaceable),
            },
        }


_Key = t.Tuple[int, int, str, int]


class _Chooser(t.Protocol):
    pending: placement.PendingLoad

    def place(self, needs: placement.VmNeeds) -> t.Optional[placement.HostState]: ...


class _ScanChooser:
    """``placement.choose`` over every candidate for every VM: the reference the ranked chooser matches."""

    def __init__(self, hosts: t.Sequence[placement.HostState], source_uuid: str) -> None:
        self.hosts = hosts
        self.source_uuid = source_uuid
        self.pending = placement.PendingLoad()

    def place(self, needs: placement.VmNeeds) -> t.Optional[placement.HostState]:
        """The best host for ``needs`` (``None`` if none fits), its load counted as pending there."""
        host = placement.choose(needs, self.hosts, self.source_uuid, self.pending)[0]
        if host is not None:
            self.pending.add(host.name, needs)
        return host


class _RankedChooser:
    """The host ``placement.choose`` would pick, found without checking every host for every VM.

    ``placement.rank`` orders the hosts that pass the filters by free memory after the VM lands,
    then running plus planned vCPUs, then name. The VM's own memory lowers every host's free memory
    by the same amount, so that order is the same for every VM: most free memory (after planned
    load), fewest vCPUs, name, then position in the host list (``min`` keeps the first of equals).
    The hosts are kept sorted that way; a placement moves only the hosts of the chosen name.

    For a VM the hosts are checked best first with ``placement.rejections`` for the same VM needing
    no memory and no vCPUs (the other filters do not change while a plan is made, except free SR-IOV
    VFs, which count the pending load). The first host
    that passes is the one ``placement.choose`` picks if the VM's memory fits there; once a host has
    less free memory than the VM needs, so has every later one, and the VM fits nowhere. A pinned
    VM's hosts are ranked on their own. Hosts that no VM can use (unreachable, in maintenance, the
    source) are left out from the start: they fail ``placement.rejections`` for a VM with no needs.
    """

    def __init__(self, hosts: t.Sequence[placement.HostState], source_uuid: str) -> None:
        self.hosts = hosts
        self.source_uuid = source_uuid
        self.pending = placement.PendingLoad()
        self._empty = placement.PendingLoad()
        self._usable: t.Dict[str, t.List[int]] = {}
        for index, host in enumerate(hosts):
            anyone = ""
            while anyone in host.cpu_incompatible:
                anyone += "-"
            if placement.fits(placement.VmNeeds(name=anyone, memory_mib=0, vcpus=0), host, source_uuid, self._empty):
                self._usable.setdefault(host.name, []).append(index)
        self._ranked: t.List[_Key] = sorted(self._key(index) for indices in self._usable.values() for index in indices)

    def _key(self, index: int) -> _Key:
        host = self.hosts[index]
        planned = self.pending.memory_mib.get(host.name, 0)
        return (planned - host.available_mib, host.vcpus_running + self.pending.vcpus.get(host.name, 0), host.name, index)

    def _best(self, needs: placement.VmNeeds, ranked: t.Iterable[_Key]) -> t.Optional[placement.HostState]:
        for key in ranked:
            if -key[0] < needs.memory_mib:
                return None
            host = self.hosts[key[3]]
            # Free VFs change as VMs are placed, unlike the other filters: they count the pending load.
            if placement.fits(needs, host, self.source_uuid, self.pending if needs.vfs else self._empty, memory_mib=0):
                return host
        return None

    def place(self, needs: placement.VmNeeds) -> t.Optional[placement.HostState]:
        """The best host for ``needs`` (``None`` if none fits), its load counted as pending there."""
        if needs.pinned_hosts:
            pinned = (self._key(index) for name in needs.pinned_hosts for index in self._usable.get(name, ()))
            host = self._best(needs, sorted(pinned))
        else:
            host = self._best(needs, self._ranked)
        if host is None:
            return None
        same_name = self._usable[host.name]
        for index in same_name:
            del self._ranked[bisect.bisect_left(self._ranked, self._key(index))]
        self.pending.add(host.name, needs)
        for index in same_name:
            bisect.insort(self._ranked, self._key(index))
        return host


@dataclasses.dataclass(frozen=True)
class _Assessment:
    """A VM's priority and policy as the plan uses them, or why it cannot move."""

    priority: str
    policy: t.Optional[Policy] = None
    invalid: t.Optional[str] = None
    held: t.Optional[str] = None


def _setting(vm: VmToMove, name: str) -> t.Any:
    value = vm.settings.get(name)
    if value is None or value == vm_settings.INHERIT:
        return vm_settings.DEFAULTS[name]
    return vm_settings.validate_value(name, value, "migration_settings")


def _pinned_reason(vm: VmToMove, pinned: t.FrozenSet[str], source: SourceHost) -> str:
    if pinned == {source.name}:
        return "VM '%s' is pinned to %s, the host being evacuated, and to no other host" % (vm.name, source.name)
    return "VM '%s' is pinned to %s, and none of them is a candidate destination other than %s" % (
        vm.name,
        ", ".join(sorted(pinned)),
        source.name,
    )


class _Assessor:
    """Validates each VM's settings and says whether it may migrate; policies are resolved once per distinct setting."""

    def __init__(self, source: SourceHost, candidates: t.AbstractSet[str], include_manual: bool) -> None:
        self.source = source
        self.candidates = candidates
        self.include_manual = include_manual
        self._policies: t.Dict[str, Policy] = {}

    def _policy(self, vm: VmToMove) -> Policy:
        values = {name: vm.settings.get(name) for name in vm_settings.POLICY_SETTINGS}
        values = {name: None if value == vm_settings.INHERIT else value for name, value in values.items()}
        cache_key = repr(sorted(values.items()))
        policy = self._policies.get(cache_key)
        if policy is None:
            _setting(vm, "policy")
            policy = vm_settings.effective_policy(values)
            self._policies[cache_key] = policy
        return policy

    def assess(self, vm: VmToMove) -> _Assessment:
        priority = vm.settings.get("priority")
        if priority not in vm_settings.PRIORITY_RANK:
            priority = vm_settings.DEFAULTS["priority"] if priority in (None, vm_settings.INHERIT) else str(priority)
        if vm.duplicate_on:
            return _Assessment(
                priority,
                invalid="VM '%s' (UUID %s) is defined on %s and also on %s: it is not moved, since two definitions could both be "
                "started; remove the stale copy first" % (vm.name, vm.uuid, self.source.name, ", ".join(vm.duplicate_on)),
            )
        if vm.settings_problems:
            return _Assessment(
                priority,
                invalid="VM '%s' has migration settings that cannot be read: %s" % (vm.name, vm_settings.describe_problems(vm.settings_problems)),
            )
        if vm.running and vm.state in UNMOVABLE_STATES:
            return _Assessment(priority, invalid="VM '%s' is %s: %s" % (vm.name, vm.state, UNMOVABLE_STATES[vm.state]))
        try:
            _setting(vm, "priority")
            mode = _setting(vm, "migration_mode")
            policy = self._policy(vm)
        except (vm_settings.SettingsError, PolicyError) as exc:
            return _Assessment(priority, invalid="VM '%s' has migration settings the plan cannot use: %s" % (vm.name, exc.msg))
        pinned = t.cast(placement.VmNeeds, vm.needs).pinned_hosts
        held = None
        if mode == "none":
            held = "VM '%s' may not be migrated (migration_mode none)" % vm.name
        elif mode == "manual" and not self.include_manual:
            held = "VM '%s' migrates only when confirmed (migration_mode manual) and include_manual is not set" % vm.name
        elif pinned and not pinned & self.candidates:
            held = _pinned_reason(vm, pinned, self.source)
        elif not vm.running and vm.saved_image:
            held = (
                "VM '%s' is hibernated (its memory is saved in a managed save image on %s, which an offline move would leave "
                "behind); restore it first (virtops.migration.vm_hibernate state=running)" % (vm.name, self.source.name)
            )
        elif vm.running and vm.unmovable_devices:
            held = "VM '%s' uses host device(s) that cannot migrate: %s" % (vm.name, "; ".join(vm.unmovable_devices))
        return _Assessment(priority, policy=policy, held=held)


def _order_key(vm: VmToMove, assessment: _Assessment) -> t.Tuple[int, int, str, str]:
    rank = vm_settings.PRIORITY_RANK.get(assessment.priority, vm_settings.PRIORITY_RANK[vm_settings.DEFAULTS["priority"]])
    return (rank, -vm.memory_mib, vm.name, vm.uuid or "")


def _held(vm: VmToMove, assessment: _Assessment, reason: str, rejected: t.Optional[t.Mapping[str, t.Sequence[str]]] = None) -> HeldVm:
    return HeldVm(vm.name, vm.uuid, assessment.priority, vm.memory_mib, vm.running, reason, rejected or {})


def plan_evacuation(
    vms: t.Iterable[VmToMove],
    hosts: t.Iterable[placement.HostState],
    source: SourceHost,
    include_manual: bool = False,
    non_migratable: str = "fail",
    fast: bool = True,
) -> EvacuationPlan:
    """Plan moving every VM in ``vms`` off ``source`` onto ``hosts`` (see the module docstring for the rules).

    ``hosts`` may include the source itself: placement rejects it by UUID. ``fast`` keeps the hosts
    ranked and checks them best first instead of checking every host for every VM; the plan is the
    same either way.
    """
    if non_migratable not in NON_MIGRATABLE_ACTIONS:
        raise EvacuationError("non_migratable must be one of %s, got %r" % (", ".join(NON_MIGRATABLE_ACTIONS), non_migratable))
    if not source.uuid:
        raise EvacuationError("the UUID of host %s is needed to tell it apart from the destinations" % source.name, host=source.name)
    hosts = list(hosts)
    vms = list(vms)
    for vm in vms:
        if not vm.running and not vm.persistent:
            raise EvacuationError("VM '%s' is neither running nor persistent: there is nothing to move" % vm.name, vm=vm.name)

    plan = EvacuationPlan(source=source, include_manual=include_manual, non_migratable=non_migratable)
    for host in hosts:
        if host.uuid != source.uuid and host.error is None and not host.maintenance:
            plan.load.setdefault(host.name, HostLoad(host.name, host.uri, host.available_mib))
    assessor = _Assessor(source, frozenset(host.name for host in hosts if host.uuid != source.uuid), include_manual)
    assessed = [(vm, assessor.assess(vm)) for vm in vms]
    assessed.sort(key=lambda pair: _order_key(*pair))

    chooser: _Chooser = _RankedChooser(hosts, source.uuid) if fast else _ScanChooser(hosts, source.uuid)
    for vm, assessment in assessed:
        if assessment.invalid:
            plan.blocked.append(_held(vm, assessment, assessment.invalid))
            continue
        if assessment.held:
            if not vm.running:
                plan.kept.append(_held(vm, assessment, "%s; it is shut off and stays defined on %s" % (assessment.held, source.name)))
            elif non_migratable == "fail":
                plan.blocked.append(_held(vm, assessment, assessment.held))
            elif not vm.persistent:
                reason = "%s; it is transient, and shutting it down would destroy it, so it blocks the evacuation" % assessment.held
                plan.blocked.append(_held(vm, assessment, reason))
            else:
                reason = "%s; it is shut down and started again when %s is activated" % (assessment.held, source.name)
                plan.shutdown.append(_held(vm, assessment, reason))
            continue
        needs = vm.placement_needs
        destination = chooser.place(needs)
        if destination is None:
            rejected = placement.choose(needs, hosts, source.uuid, chooser.pending)[1]
            plan.unplaceable.append(_held(vm, assessment, placement.explain(vm.name, rejected), rejected))
            continue
        load = plan.load[destination.name]
        load.memory_mib += needs.memory_mib
        load.vcpus += needs.vcpus
        load.vms += 1
        plan.moves.append(
            Move(
                vm=vm.name,
                uuid=vm.uuid,
                priority=assessment.priority,
                memory_mib=vm.memory_mib,
                vcpus=vm.vcpus,
                source=source.name,
                source_uri=source.uri,
                destination=destination.name,
                destination_uri=destination.uri,
                kind=LIVE if vm.running else OFFLINE,
                policy=t.cast(Policy, assessment.policy),
                persistent=vm.persistent,
                state=vm.state,
                timeout_s=default_timeout(vm.memory_mib),
                bond_vfs=vm.bond_vfs if vm.running else (),
                failover_primaries=vm.failover_primaries if vm.running else (),
                guest_hooks=vm.settings.get("guest_hooks") is True,
            )
        )
    return plan


class EvacuationQueue:
    """The order in which an evacuation's moves start, under concurrency limits.

    * At most ``max_outgoing`` moves run at once out of the source (vdsm's default: 2).
    * At most ``max_incoming`` moves run at once into any one destination (vdsm's default: 2).
    * A move's policy may allow fewer: ``suspend_workload`` and ``very_large_vms`` run alone
      (``max_concurrent`` 1, as in oVirt). A move starts only while fewer moves run than its own
      policy allows and than the policy of each running move allows; a move held back so is not
      overtaken, the running moves drain first.
    * Priority: while a move of some priority waits, no move of a lower priority starts, even if its
      own destination has room; a higher-priority VM always starts before a lower-priority one.
    * Within one priority, the move into the destination with the fewest moves running into it
      starts first, plan order among equals: moves running at the same time spread over the
      destinations instead of queueing on one. A move whose destination has no free incoming slot
      is overtaken by a later move of the same priority whose destination has one.

    Offline moves take slots like live ones. Moves are given in plan order (``EvacuationPlan.moves``);
    they are re-sorted by priority, stably, so plan order is kept within a priority. Driving it::

        while not queue.done():
            move = queue.next_ready()
            if move: queue.start(move); launch it
            else: wait for one running move to end, then queue.finish(it)
    """

    def __init__(self, moves: t.Iterable[Move], max_outgoing: int = 2, max_incoming: int = 2) -> None:
        if max_outgoing < 1 or max_incoming < 1:
            raise EvacuationError("max_outgoing and max_incoming must be at least 1, got %d and %d" % (max_outgoing, max_incoming))
        moves = list(moves)
        for move in moves:
            if move.priority not in vm_settings.PRIORITY_RANK:
                raise EvacuationError("move of VM '%s' has unknown priority %r" % (move.vm, move.priority), vm=move.vm)
        seen: t.Set[t.Tuple[str, t.Optional[str]]] = set()
        for move in moves:
            if (move.vm, move.uuid) in seen:
                raise EvacuationError("VM '%s' is queued twice" % move.vm, vm=move.vm)
            seen.add((move.vm, move.uuid))
        self.max_outgoing = max_outgoing
        self.max_incoming = max_incoming
        self._waiting = sorted(moves, key=lambda move: vm_settings.PRIORITY_RANK[move.priority])
        self._running: t.List[Move] = []
        self._finished: t.List[Move] = []
        self._incoming: t.Dict[str, int] = {}

    @property
    def waiting(self) -> t.Tuple[Move, ...]:
        return tuple(self._waiting)

    @property
    def running(self) -> t.Tuple[Move, ...]:
        return tuple(self._running)

    @property
    def finished(self) -> t.Tuple[Move, ...]:
        return tuple(self._finished)

    def incoming(self, host: str) -> int:
        """How many moves run into ``host`` now."""
        return self._incoming.get(host, 0)

    def outgoing_limit(self, move: t.Optional[Move] = None) -> int:
        """How many moves may run out of the source now (with ``move`` started too)."""
        limits = [self.max_outgoing] + [running.policy.max_concurrent for running in self._running]
        if move is not None:
            limits.append(move.policy.max_concurrent)
        return min(limits)

    def waiting_reason(self, move: Move) -> t.Optional[str]:
        """Why a waiting ``move`` cannot start now (``None`` when it can)."""
        if move not in self._waiting:
            raise EvacuationError("VM '%s' is not waiting to be moved" % move.vm, vm=move.vm)
        rank = vm_settings.PRIORITY_RANK[move.priority]
        ahead = [other.vm for other in self._waiting if vm_settings.PRIORITY_RANK[other.priority] < rank]
        if ahead:
            return "VM '%s' (%s priority) waits for higher-priority VMs to start: %s" % (move.vm, move.priority, ", ".join(ahead))
        if len(self._running) >= self.max_outgoing:
            return "VM '%s' waits for one of the %d outgoing migration slots of %s" % (move.vm, self.max_outgoing, move.source)
        limit = self.outgoing_limit(move)
        if len(self._running) >= limit:
            return "VM '%s' waits: its policy or a running move's policy allows only %d migration(s) at once" % (move.vm, limit)
        if self.incoming(move.destination) >= self.max_incoming:
            return "VM '%s' waits for one of the %d incoming migration slots of %s" % (move.vm, self.max_incoming, move.destination)
        return None

    def next_ready(self) -> t.Optional[Move]:
        """The move to start now, or ``None`` when every waiting move must wait (or none waits)."""
        if not self._waiting or len(self._running) >= self.max_outgoing:
            return None
        top = vm_settings.PRIORITY_RANK[self._waiting[0].priority]
        best: t.Optional[Move] = None
        for move in self._waiting:
            if vm_settings.PRIORITY_RANK[move.priority] != top:
                break
            if len(self._running) >= self.outgoing_limit(move):
                return best
            load = self.incoming(move.destination)
            if load < self.max_incoming and (best is None or load < self.incoming(best.destination)):
                best = move
                if load == 0:
                    break
        return best

    def start(self, move: Move) -> None:
        """Record that ``move`` has started; refused when the rules say it must wait."""
        reason = self.waiting_reason(move)
        if reason:
            raise EvacuationError("cannot start moving VM '%s' now: %s" % (move.vm, reason), vm=move.vm)
        self._waiting.remove(move)
        self._running.append(move)
        self._incoming[move.destination] = self.incoming(move.destination) + 1

    def finish(self, move: Move) -> None:
        """Record that ``move`` has ended (completed or failed): its slots are free again."""
        if move not in self._running:
            raise EvacuationError("VM '%s' is not being moved" % move.vm, vm=move.vm)
        self._running.remove(move)
        self._incoming[move.destination] -= 1
        self._finished.append(move)

    def cancel(self) -> t.List[Move]:
        """Drop every waiting move (after a failure: let the running ones end, start nothing new)."""
        dropped, self._waiting = self._waiting, []
        return dropped

    def done(self) -> bool:
        """True when nothing waits and nothing runs."""
        return not self._waiting and not self._running
