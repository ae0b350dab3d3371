# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""Planning a cluster balance: which running VMs move where so that the hosts' load follows a policy.

The planner reads nothing: it is given the hosts (:class:`BalanceHost`: the placement facts, CPUs,
memory and the CPU samples of a window), the VMs (:class:`BalanceVm`: where each runs, its CPU use,
when the balancer last moved it, the host it left for a maintenance) and a :class:`BalanceRequest`.
It moves VMs in a simulation of the cluster, greedily, one move at a time, and returns a
:class:`BalancePlan`. Policies (:data:`POLICIES`), as in oVirt's cluster scheduling policies:

``evenly_distributed``     relieve over-utilized hosts: a host is over-utilized when every CPU
                           sample of its window is above ``cpu_high`` (sustained; without samples,
                           its CPU use now) or its memory use is above ``memory_high``. Each step
                           takes the most loaded over-utilized host (the next one when none of its
                           VMs can move) and the VM whose move to its destination lowers the higher
                           of the two hosts' loads the most (at least ``min_improvement`` points),
                           preferring moves that break fewer soft affinity rules. A host's load is
                           the larger of its CPU and memory percentages.
``vm_evenly_distributed``  even out the count of running VMs: from the host with the most to the one
                           with the fewest, while the most is above ``vm_count_high`` and the gap
                           above ``vm_count_threshold``; a move needs a gap of at least two.
``power_saving``           empty hosts under ``cpu_low`` (sustained) and ``memory_low``, least loaded
                           first, onto hosts that stay in service (a host is emptied whole or left
                           alone), then relieve over-utilized hosts as ``evenly_distributed`` does,
                           onto hosts that run VMs when one fits. ``emptied_hosts`` lists the hosts
                           the plan empties (a play can put them into maintenance).
``failback``               move VMs back to the host they left for a maintenance (``left_host``), in
                           evacuation order (priority, larger memory first, name), when that host is
                           free and placement and affinity allow it.
``none``                   plan nothing.

The one rulebook: every VM considered is judged by the assessor (``rules.Assessor``, one per
source host, unconfirmed live moves) exactly as an evacuation judges it, and every destination by
placement (``placement.fits``, with the affinity groups, counting the planned arrivals and
departures as pending load). On top, the balancer never moves a VM whose mode is not ``auto``
(``mode_manual`` fires, unconfirmed), a pinned VM (``pinned``; failback may return it to its
``left_host`` when that host is one of its pinned hosts), a VM that is not running or has a
migration job running (``migrating``), a VM it moved less than ``cooldown_s`` ago (``cooldown``,
not for failback), or one VM twice in a plan. Hosts that are busy (a maintenance being prepared, a
migration job), in maintenance or unreachable are neither sources nor destinations
(``excluded_hosts``). A load policy keeps every destination at or under ``cpu_high`` and
``memory_high`` after its move (``thresholds``) and makes at most ``max_moves`` moves (5 unless
told; failback has no limit unless told).

A plan is a fixed point: unless ``max_moves`` cut it short, planning again on the cluster as the
plan leaves it (the moved VMs in their cooldown) plans nothing. Hosts are kept ordered by load, and destinations are checked least
loaded first, stopping at the first that takes the VM, so a plan over a thousand hosts costs the
hosts it touches, not every VM times every host.

Pure logic: no libvirt import.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import typing as t

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import affinity as aff
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import placement
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import settings as vm_settings
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import MigrationError
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.plan import Move
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.rules import (
    RULES,
    Assessor,
    MoveRequest,
    SourceHost,
    Verdict,
    VmToMove,
    move_for,
)

EVENLY = "evenly_distributed"
VM_EVENLY = "vm_evenly_distributed"
POWER_SAVING = "power_saving"
FAILBACK = "failback"
NONE = "none"
POLICIES = (EVENLY, VM_EVENLY, POWER_SAVING, FAILBACK, NONE)
LOAD_POLICIES = (EVENLY, VM_EVENLY, POWER_SAVING)
# max_moves of a load policy when not given.
DEFAULT_MAX_MOVES = 5

# The balancer's own rule ids, next to rules.RULES and affinity.RULE (a skipped VM's ``rule``):
# ``not_running``   failback only: the VM is not running (the balancer moves running VMs only).
# ``migrating``     a migration job runs for the VM.
# ``excluded_host`` failback only: the VM's host or the host it left is busy, in maintenance or unreachable.
# ``cooldown``      the balancer moved the VM less than ``cooldown_s`` ago.
# ``placement``     failback only: placement refuses the host the VM left (the reasons follow).
# ``max_moves``     failback only: the plan already holds ``max_moves`` moves.
# ``thresholds``    a destination would go above ``cpu_high`` or ``memory_high``.
NOT_RUNNING = "not_running"
MIGRATING = "migrating"
EXCLUDED_HOST = "excluded_host"
COOLDOWN = "cooldown"
PLACEMENT = "placement"
MAX_MOVES = "max_moves"
THRESHOLDS = "thresholds"
PINNED = "pinned"


class BalanceError(MigrationError):
    """A balance cannot be planned as asked (an option out of range or inconsistent); nothing has been changed."""


@dataclasses.dataclass
class BalanceHost:
    """One host of the cluster as the balancer sees it.

    ``cpu_samples`` are, per sample interval of the window, the percentage of the host's CPUs its
    VMs used (0..100). ``busy`` says why no VM may leave or arrive now (a maintenance being
    prepared, a migration job running); ``state.maintenance`` and ``state.error`` exclude it too.
    """

    state: placement.HostState
    cpus: int
    memory_mib: int
    cpu_samples: t.Tuple[float, ...] = ()
    busy: t.Optional[str] = None

    @property
    def name(self) -> str:
        return self.state.name

    def excluded(self) -> t.Optional[str]:
        """Why the host is neither a source nor a destination (``None``: it is usable)."""
        if self.state.error:
            return "cannot be reached: %s" % self.state.error
        if self.state.maintenance:
            return "is in maintenance"
        if self.busy:
            return "is busy: %s" % self.busy
        return None


@dataclasses.dataclass
class BalanceVm:
    """One VM: the assessor's view of it, where it runs, and what the balancer knows of its history.

    ``cpu_percent`` is its average over the window in percent of one CPU (100: one CPU fully used);
    ``balanced_at`` the epoch second of the balancer's last move of it; ``left_host`` the host it
    left when that host went into maintenance; ``migrating`` whether a libvirt job runs for it.
    """

    vm: VmToMove
    host: str
    cpu_percent: float = 0.0
    balanced_at: t.Optional[float] = None
    left_host: t.Optional[str] = None
    migrating: bool = False


@dataclasses.dataclass(frozen=True)
class BalanceRequest:
    """What the run asks: the policy, its thresholds (percent; VM counts for ``vm_evenly_distributed``) and limits.

    ``move`` is what every move runs under (unsafe caches allowed, tunnelled, guest hooks); the
    balancer always asks for unconfirmed live moves. ``now`` is the epoch second the cooldown is
    measured against; ``failback_hosts`` limits failback to VMs that left those hosts (empty: any).
    """

    policy: str = EVENLY
    cpu_high: float = 80.0
    cpu_low: float = 20.0
    memory_high: float = 80.0
    memory_low: float = 20.0
    vm_count_high: int = 10
    vm_count_threshold: int = 5
    max_moves: t.Optional[int] = None
    min_improvement: float = 5.0
    cooldown_s: int = 3600
    now: float = 0.0
    failback_hosts: t.FrozenSet[str] = frozenset()
    move: MoveRequest = MoveRequest()
    groups: t.Tuple[aff.AffinityGroup, ...] = ()

    def limit(self) -> t.Optional[int]:
        """The most moves the plan may hold (``None``: no limit)."""
        if self.max_moves is not None:
            return self.max_moves
        return None if self.policy == FAILBACK else DEFAULT_MAX_MOVES


def validate(request: BalanceRequest) -> None:
    """Refuse an unknown policy, a threshold out of 0..100, a low threshold above its high one, a negative count."""
    if request.policy not in POLICIES:
        raise BalanceError("policy must be one of %s, got %r" % (", ".join(POLICIES), request.policy), option="policy")
    for name in ("cpu_high", "cpu_low", "memory_high", "memory_low"):
        value = getattr(request, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 100:
            raise BalanceError("%s must be a percentage from 0 to 100, got %r" % (name, value), option=name)
    for low, high in (("cpu_low", "cpu_high"), ("memory_low", "memory_high")):
        if getattr(request, low) > getattr(request, high):
            raise BalanceError(
                "%s (%s) must not be above %s (%s)" % (low, getattr(request, low), high, getattr(request, high)), option=low
            )
    for name in ("vm_count_high", "vm_count_threshold", "max_moves", "min_improvement", "cooldown_s"):
        value = getattr(request, name)
        if value is None and name == "max_moves":
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise BalanceError("%s must be a number of at least 0, got %r" % (name, value), option=name)


def _round(value: float) -> float:
    return round(value, 1)


@dataclasses.dataclass
class BalancePlan:
    """The moves a balance makes, in order, and what it leaves and why.

    ``skipped``: VMs considered and kept in place, with the rule id and the sentence; ``hosts``: per
    host, its CPU and memory percentages, running VM count and load before and after the plan;
    ``emptied_hosts``: hosts the plan leaves with no running VM (power_saving); ``unresolved``: hosts
    the policy wanted to change but cannot, and why; ``unmet``: affinity rules broken after the plan;
    ``excluded_hosts``: hosts that are neither sources nor destinations, and why; ``rules_checked``:
    the rule ids the plan applied.
    """

    policy: str
    moves: t.List[Move] = dataclasses.field(default_factory=list)
    reasons: t.List[str] = dataclasses.field(default_factory=list)
    skipped: t.List[t.Dict[str, str]] = dataclasses.field(default_factory=list)
    hosts: t.Dict[str, t.Dict[str, t.Dict[str, t.Any]]] = dataclasses.field(default_factory=dict)
    emptied_hosts: t.List[str] = dataclasses.field(default_factory=list)
    unresolved: t.Dict[str, str] = dataclasses.field(default_factory=dict)
    unmet: t.List[aff.Breach] = dataclasses.field(default_factory=list)
    excluded_hosts: t.Dict[str, str] = dataclasses.field(default_factory=dict)
    rules_checked: t.List[str] = dataclasses.field(default_factory=list)

    def as_dict(self) -> t.Dict[str, t.Any]:
        """The plan as a module returns it (in check mode too)."""
        moves = []
        for move, reason in zip(self.moves, self.reasons):
            entry = move.as_dict()
            entry["reason"] = reason
            moves.append(entry)
        return {
            "policy": self.policy,
            "moves": moves,
            "skipped": [dict(entry) for entry in self.skipped],
            "hosts": {name: {side: dict(values) for side, values in self.hosts[name].items()} for name in sorted(self.hosts)},
            "emptied_hosts": list(self.emptied_hosts),
            "unresolved": {name: self.unresolved[name] for name in sorted(self.unresolved)},
            "unmet": [breach.as_dict() for breach in self.unmet],
            "excluded_hosts": {name: self.excluded_hosts[name] for name in sorted(self.excluded_hosts)},
            "rules_checked": list(self.rules_checked),
            "summary": {"moves": len(self.moves), "skipped": len(self.skipped), "emptied_hosts": len(self.emptied_hosts)},
        }


class _Host:
    """A host in the simulation: its running VMs as the plan leaves them so far, and their load."""

    def __init__(self, spec: BalanceHost) -> None:
        self.spec = spec
        self.name = spec.name
        self.excluded = spec.excluded()
        self.members: t.Set[int] = set()
        self.cpu_used = 0.0
        self.memory_used = 0
        self.cpu = 0.0
        self.memory = 0.0
        self.load = 0.0
        self.cpu_start = 0.0
        self.source = SourceHost(spec.name, spec.state.uuid or "", spec.state.uri)

    def refresh(self, vms: t.Sequence[BalanceVm]) -> None:
        """Recompute the load from the running VMs (fsum: the same whatever order they came in)."""
        self.cpu_used = math.fsum(vms[index].cpu_percent for index in self.members)
        self.memory_used = sum(t.cast(placement.VmNeeds, vms[index].vm.needs).memory_mib for index in self.members)
        self.cpu = self.cpu_used / self.spec.cpus if self.spec.cpus > 0 else 0.0
        self.memory = 100.0 * self.memory_used / self.spec.memory_mib if self.spec.memory_mib > 0 else 0.0
        self.load = max(self.cpu, self.memory)

    @property
    def key(self) -> t.Tuple[float, str]:
        return (self.load, self.name)

    def shifted_samples(self) -> t.Iterable[float]:
        """The window's CPU samples, shifted by what the plan so far changed on the host."""
        delta = self.cpu - self.cpu_start
        return (sample + delta for sample in self.spec.cpu_samples)

    def cpu_above(self, limit: float) -> bool:
        """Every sample of the window (without samples: the CPU use now) is above ``limit``."""
        if self.spec.cpu_samples:
            return min(self.shifted_samples()) > limit
        return self.cpu > limit

    def cpu_below(self, limit: float) -> bool:
        """Every sample of the window (without samples: the CPU use now) is below ``limit``."""
        if self.spec.cpu_samples:
            return max(self.shifted_samples()) < limit
        return self.cpu < limit

    def stats(self) -> t.Dict[str, t.Any]:
        return {"cpu_percent": _round(self.cpu), "memory_percent": _round(self.memory), "vms": len(self.members), "load": _round(self.load)}


def _order_key(verdict: Verdict) -> t.Tuple[int, int, str, str]:
    """Evacuation order: priority, larger memory first, name."""
    vm = verdict.vm
    rank = vm_settings.PRIORITY_RANK.get(verdict.priority, vm_settings.PRIORITY_RANK[vm_settings.DEFAULTS["priority"]])
    return (rank, -vm.memory_mib, vm.name, vm.uuid or "")


_Tier = t.Callable[[_Host], bool]


class _Balancer:
    """The simulation a plan is made in: hosts ordered by load, pending load, affinity, the VMs judged so far."""

    def __init__(self, hosts: t.Sequence[BalanceHost], vms: t.Sequence[BalanceVm], request: BalanceRequest) -> None:
        self.request = request
        self.vms = list(vms)
        self.hosts: t.Dict[str, _Host] = {}
        for spec in hosts:
            if spec.name in self.hosts:
                raise BalanceError("host %s is given twice" % spec.name, host=spec.name)
            self.hosts[spec.name] = _Host(spec)
        for index, bvm in enumerate(self.vms):
            host = self.hosts.get(bvm.host)
            if host is None:
                raise BalanceError("VM '%s' runs on %s, which is not among the cluster's hosts" % (bvm.vm.name, bvm.host), vm=bvm.vm.name, host=bvm.host)
            if bvm.vm.running:
                host.members.add(index)
        for host in self.hosts.values():
            host.refresh(self.vms)
            host.cpu_start = host.cpu
            if host.excluded is None and (host.spec.cpus < 1 or host.spec.memory_mib < 1):
                raise BalanceError("host %s has no CPUs or memory size known (cpus %r, memory_mib %r)" % (host.name, host.spec.cpus, host.spec.memory_mib),
                                   host=host.name)
        self.usable = [host for host in self.hosts.values() if host.excluded is None]
        self.usable_names = frozenset(host.name for host in self.usable)
        self.ranked: t.List[t.Tuple[float, str]] = sorted(host.key for host in self.usable)
        self.before = {name: host.stats() for name, host in self.hosts.items()}
        self.pending = placement.PendingLoad()
        self.affinity: t.Optional[aff.Affinity] = None
        if request.groups:
            where = {bvm.vm.name: bvm.host for bvm in self.vms if bvm.vm.running}
            self.affinity = aff.Affinity(request.groups, where)
        self.move_request = dataclasses.replace(request.move, confirmed=False, live=True)
        self.assessors: t.Dict[str, Assessor] = {}
        self.verdicts: t.Dict[int, Verdict] = {}
        self.skipped: t.Dict[int, t.Dict[str, str]] = {}
        self.moved: t.Set[int] = set()
        # The VMs moved, in plan order, and where the simulation has them.
        self.order: t.List[int] = []
        self.location: t.Dict[int, str] = {}
        self.plan = BalancePlan(policy=request.policy)
        self.limit = request.limit()

    # -- the rules

    def verdict(self, index: int) -> Verdict:
        """The assessor's verdict on the VM leaving the host it runs on (one assessor per source host)."""
        verdict = self.verdicts.get(index)
        if verdict is None:
            bvm = self.vms[index]
            assessor = self.assessors.get(bvm.host)
            if assessor is None:
                source = self.hosts[bvm.host]
                assessor = Assessor(self.move_request, source.source, self.usable_names - {bvm.host})
                self.assessors[bvm.host] = assessor
            verdict = self.verdicts[index] = assessor.assess(bvm.vm)
        return verdict

    def refusal(self, index: int, pinned_to: t.Optional[str] = None, cooldown: bool = True) -> t.Optional[t.Tuple[str, str]]:
        """The rule id and sentence that keep the VM in place (``None``: it may move)."""
        bvm = self.vms[index]
        vm = bvm.vm
        finding = self.verdict(index).refusal()
        if finding is not None:
            return finding.rule, finding.message
        if bvm.migrating:
            return MIGRATING, "VM '%s' has a migration job running: the balancer leaves it alone" % vm.name
        pinned = t.cast(placement.VmNeeds, vm.needs).pinned_hosts
        if pinned and not (pinned_to is not None and pinned_to in pinned):
            return PINNED, "VM '%s' is pinned to %s: the balancer never moves a pinned VM" % (vm.name, ", ".join(sorted(pinned)))
        if cooldown and bvm.balanced_at is not None and bvm.balanced_at + self.request.cooldown_s > self.request.now:
            ago = max(self.request.now - bvm.balanced_at, 0)
            return COOLDOWN, "VM '%s' was moved by the balancer %d s ago: it stays for cooldown_s (%d s) after a move" % (
                vm.name, ago, self.request.cooldown_s)
        return None

    def skip(self, index: int, rule: str, reason: str) -> None:
        if index not in self.skipped:
            self.skipped[index] = {"vm": self.vms[index].vm.name, "host": self.vms[index].host, "rule": rule, "reason": reason}

    def movable(self, index: int, **kwargs: t.Any) -> bool:
        """The VM may move (judged once; a refusal is recorded in ``skipped``)."""
        if index in self.moved:
            return False
        refusal = self.refusal(index, **kwargs)
        if refusal is not None:
            self.skip(index, *refusal)
            return False
        return True

    def fits(self, index: int, source: _Host, destination: _Host) -> bool:
        """Placement (with the affinity groups) lets the VM go from ``source`` to ``destination`` now."""
        if destination is source or destination.excluded is not None:
            return False
        return placement.fits(self.verdict(index).needs, destination.spec.state, source.spec.state.uuid, self.pending, affinity=self.affinity)

    def rejections(self, index: int, source: _Host, destination: _Host) -> t.Tuple[str, t.List[str]]:
        """The rule id and every reason ``destination`` cannot take the VM (empty: it can)."""
        if destination.excluded is not None:
            return EXCLUDED_HOST, [destination.excluded]
        needs = self.verdict(index).needs
        reasons = placement.rejections(needs, destination.spec.state, source.spec.state.uuid, self.pending, self.affinity)
        hard = self.affinity.rejections(needs.name, destination.name) if self.affinity is not None else []
        return (aff.RULE if hard and len(reasons) == len(hard) else PLACEMENT), reasons

    def room(self, index: int, destination: _Host) -> bool:
        """``destination`` stays at or under ``cpu_high`` and ``memory_high`` (sustained too) with the VM."""
        bvm = self.vms[index]
        spec = destination.spec
        cpu = (destination.cpu_used + bvm.cpu_percent) / spec.cpus
        memory = 100.0 * (destination.memory_used + t.cast(placement.VmNeeds, bvm.vm.needs).memory_mib) / spec.memory_mib
        if cpu > self.request.cpu_high or memory > self.request.memory_high:
            return False
        if spec.cpu_samples and min(spec.cpu_samples) + cpu - destination.cpu_start > self.request.cpu_high:
            return False
        return True

    def after_leaving(self, index: int, source: _Host) -> float:
        """The load of ``source`` once the VM has left it."""
        bvm = self.vms[index]
        cpu = (source.cpu_used - bvm.cpu_percent) / source.spec.cpus
        memory = 100.0 * (source.memory_used - t.cast(placement.VmNeeds, bvm.vm.needs).memory_mib) / source.spec.memory_mib
        return max(cpu, memory)

    def after_arriving(self, index: int, destination: _Host) -> float:
        bvm = self.vms[index]
        cpu = (destination.cpu_used + bvm.cpu_percent) / destination.spec.cpus
        memory = 100.0 * (destination.memory_used + t.cast(placement.VmNeeds, bvm.vm.needs).memory_mib) / destination.spec.memory_mib
        return max(cpu, memory)

    def over(self, host: _Host) -> bool:
        return host.cpu_above(self.request.cpu_high) or host.memory > self.request.memory_high

    def room_left(self) -> bool:
        return self.limit is None or len(self.plan.moves) < self.limit

    # -- the simulation

    def _place(self, index: int, destination: _Host) -> None:
        """Move the VM from where the simulation has it to ``destination`` (no plan entry)."""
        current = self.hosts[self.location.get(index, self.vms[index].host)]
        needs = self.verdict(index).needs
        for host, arriving in ((current, False), (destination, True)):
            del self.ranked[bisect.bisect_left(self.ranked, host.key)]
            if arriving:
                host.members.add(index)
                self.pending.add(host.name, needs)
            else:
                host.members.discard(index)
                self.pending.remove(host.name, needs)
            host.refresh(self.vms)
            bisect.insort(self.ranked, host.key)
        if self.affinity is not None:
            self.affinity.move(needs.name, destination.name)

    def apply(self, index: int, destination: _Host, reason: str) -> None:
        """Plan the move of the VM to ``destination`` and carry it out in the simulation."""
        source = self.hosts[self.vms[index].host]
        self._place(index, destination)
        self.location[index] = destination.name
        self.moved.add(index)
        self.order.append(index)
        self.plan.moves.append(move_for(self.verdict(index), source.source, destination.spec.state))
        self.plan.reasons.append(reason)

    def undo(self, count: int) -> None:
        """Take back the last ``count`` moves of the plan (an emptying that cannot complete)."""
        for index in reversed(self.order[len(self.order) - count:]):
            self.order.pop()
            self.plan.moves.pop()
            self.plan.reasons.pop()
            self._place(index, self.hosts[self.vms[index].host])
            self.moved.discard(index)
            del self.location[index]

    # -- finding destinations

    def destination(self, index: int, source: _Host, tiers: t.Sequence[_Tier], need: float) -> t.Optional[_Host]:
        """The least loaded host of the first tier that takes the VM within the thresholds, with a load after at most ``need``.

        A VM in an affinity group goes where it breaks the fewest soft rules (least loaded among equals).
        """
        ceiling = max(self.request.cpu_high, self.request.memory_high)
        name = self.vms[index].vm.name
        constrained = self.affinity is not None and self.affinity.constrained(name)
        for tier in tiers:
            best: t.Optional[_Host] = None
            best_penalty = 0
            for load, host_name in self.ranked:
                if load > ceiling or load > need:
                    break
                host = self.hosts[host_name]
                if host is source or not tier(host) or not self.room(index, host) or self.after_arriving(index, host) > need:
                    continue
                if not self.fits(index, source, host):
                    continue
                if not constrained:
                    return host
                penalty = t.cast(aff.Affinity, self.affinity).penalty(name, host.name)
                if best is None or penalty < best_penalty:
                    best, best_penalty = host, penalty
                    if penalty == 0:
                        break
            if best is not None:
                return best
        return None

    def candidates(self, host: _Host) -> t.List[int]:
        """The running VMs on ``host`` the rules let move, by name (refusals recorded)."""
        return [index for index in sorted(host.members, key=lambda index: self.vms[index].vm.name) if self.movable(index)]

    # -- evenly_distributed, and the relief of power_saving

    def best_relief(self, source: _Host, tiers: t.Sequence[_Tier]) -> t.Optional[t.Tuple[int, _Host, float]]:
        """The VM of ``source`` and destination that lower the higher of the two loads the most (by ``min_improvement`` at least)."""
        best: t.Optional[t.Tuple[t.Tuple[int, float, str], int, _Host, float]] = None
        for index in self.candidates(source):
            left = self.after_leaving(index, source)
            need = source.load - self.request.min_improvement
            if left > need:
                continue
            destination = self.destination(index, source, tiers, need)
            if destination is None:
                continue
            after = max(left, self.after_arriving(index, destination))
            gain = max(source.load, destination.load) - after
            penalty = self.affinity.penalty(self.vms[index].vm.name, destination.name) if self.affinity is not None else 0
            key = (penalty, -gain, self.vms[index].vm.name)
            if best is None or key < best[0]:
                best = (key, index, destination, gain)
        return None if best is None else best[1:]

    def relieve(self, tiers: t.Sequence[_Tier], on_move: t.Callable[[_Host], None] = lambda host: None) -> None:
        """Move VMs off over-utilized hosts, most loaded first, until none is over-utilized or no move qualifies.

        Destinations come from the first of ``tiers`` that has one; ``on_move`` is told each destination.
        """
        req = self.request
        while True:
            over = [self.hosts[name] for _load, name in reversed(self.ranked) if self.over(self.hosts[name])]
            if not over:
                return
            if not self.room_left():
                for host in over:
                    self.plan.unresolved[host.name] = "is over-utilized (load %.1f%%); the plan already holds max_moves (%d) moves" % (
                        host.load, self.limit or 0)
                return
            for source in over:
                found = self.best_relief(source, tiers)
                if found is not None:
                    index, destination, gain = found
                    reason = "relieves %s (load %.1f%%): the higher load of %s and %s drops by %.1f points" % (
                        source.name, source.load, source.name, destination.name, gain)
                    self.apply(index, destination, reason)
                    on_move(destination)
                    break
            else:
                for host in over:
                    self.plan.unresolved[host.name] = (
                        "is over-utilized (load %.1f%%): none of its VMs may move to a host that stays within cpu_high (%s%%) and memory_high "
                        "(%s%%) and lowers the higher load by min_improvement (%s points)" % (host.load, req.cpu_high, req.memory_high, req.min_improvement)
                    )
                return

    # -- vm_evenly_distributed

    def even_counts(self) -> None:
        req = self.request
        while self.room_left():
            by_count = sorted(self.usable, key=lambda host: (len(host.members), host.load, host.name))
            fewest = len(by_count[0].members) if by_count else 0
            moved = False
            for source in reversed(by_count):
                count = len(source.members)
                if count <= req.vm_count_high or count - fewest <= req.vm_count_threshold:
                    break
                for index in sorted(self.candidates(source), key=lambda index: (self.vms[index].vm.memory_mib, self.vms[index].vm.name)):
                    destination = None
                    for host in by_count:
                        if count - len(host.members) < 2:
                            break
                        if host is not source and self.room(index, host) and self.fits(index, source, host):
                            destination = host
                            break
                    if destination is not None:
                        reason = "evens out running VMs: %s runs %d, %s %d" % (source.name, count, destination.name, len(destination.members))
                        self.apply(index, destination, reason)
                        moved = True
                        break
                if moved:
                    break
                self.plan.unresolved[source.name] = "runs %d VMs (the fewest: %d): none of them may move to a host with fewer VMs within the thresholds" % (
                    count, fewest)
            if not moved:
                return
        by_count = sorted(self.usable, key=lambda host: len(host.members))
        if by_count and len(by_count[-1].members) > req.vm_count_high and len(by_count[-1].members) - len(by_count[0].members) > req.vm_count_threshold:
            self.plan.unresolved[by_count[-1].name] = "runs %d VMs; the plan already holds max_moves (%d) moves" % (len(by_count[-1].members), self.limit or 0)

    # -- power_saving

    def save_power(self) -> None:
        req = self.request
        emptying = [host for host in self.usable if host.members and host.cpu_below(req.cpu_low) and host.memory < req.memory_low]
        emptying.sort(key=lambda host: host.key)
        pending = set(host.name for host in emptying)
        receivers: t.Set[str] = set()
        emptied: t.List[str] = []

        def stays(host: _Host) -> bool:
            return bool(host.members) and host.name not in emptied and host.name not in pending

        def stays_too(host: _Host) -> bool:
            return bool(host.members) and host.name not in emptied and host.name in pending

        for host in emptying:
            pending.discard(host.name)
            if host.name in receivers:
                self.plan.unresolved[host.name] = "is under cpu_low and memory_low, but receives VMs of an emptied host"
                continue
            why = self.empty(host, (stays, stays_too), receivers)
            if why is None:
                emptied.append(host.name)
            else:
                self.plan.unresolved[host.name] = "is under cpu_low (%s%%) and memory_low (%s%%), but is not emptied: %s" % (req.cpu_low, req.memory_low, why)

        def in_service(host: _Host) -> bool:
            return bool(host.members) and host.name not in emptied

        def idle(host: _Host) -> bool:
            return not host.members and host.name not in emptied

        def emptied_before(host: _Host) -> bool:
            return host.name in emptied

        def landed(host: _Host) -> None:
            if host.name in emptied:
                emptied.remove(host.name)

        self.relieve((in_service, idle, emptied_before), landed)
        self.plan.emptied_hosts = sorted(emptied)

    def empty(self, host: _Host, tiers: t.Sequence[_Tier], receivers: t.Set[str]) -> t.Optional[str]:
        """Plan moving every running VM off ``host``; ``None`` when done, else why not (nothing planned then)."""
        members = sorted(host.members, key=lambda index: (-self.vms[index].vm.memory_mib, self.vms[index].vm.name))
        refused = [index for index in members if not self.movable(index)]
        if refused:
            return "; ".join(self.skipped[index]["reason"] for index in refused if index in self.skipped) or "a VM of it has already moved"
        if self.limit is not None and len(self.plan.moves) + len(members) > self.limit:
            return "its %d running VM(s) would take the plan beyond max_moves (%d)" % (len(members), self.limit)
        planned = 0
        landed: t.List[str] = []
        for index in members:
            destination = self.destination(index, host, tiers, math.inf)
            if destination is None:
                self.undo(planned)
                return "no host that stays in service can take VM '%s' within cpu_high and memory_high" % self.vms[index].vm.name
            self.apply(index, destination, "empties %s (load %.1f%%) to save power" % (host.name, self.hosts[host.name].load))
            landed.append(destination.name)
            planned += 1
        receivers.update(landed)
        return None

    # -- failback

    def fail_back(self) -> None:
        req = self.request
        wanted = []
        for index, bvm in enumerate(self.vms):
            if not bvm.left_host or bvm.left_host == bvm.host:
                continue
            if req.failback_hosts and bvm.left_host not in req.failback_hosts:
                continue
            wanted.append(index)
        wanted.sort(key=lambda index: _order_key(self.verdict(index)))
        for index in wanted:
            bvm = self.vms[index]
            name = bvm.vm.name
            source = self.hosts[bvm.host]
            target = self.hosts.get(t.cast(str, bvm.left_host))
            if not bvm.vm.running:
                self.skip(index, NOT_RUNNING, "VM '%s' is not running: the balancer moves running VMs only" % name)
                continue
            if source.excluded is not None:
                self.skip(index, EXCLUDED_HOST, "VM '%s' runs on %s, which %s" % (name, source.name, source.excluded))
                continue
            if target is None:
                self.skip(index, EXCLUDED_HOST, "VM '%s' left %s, which is not among the cluster's hosts" % (name, bvm.left_host))
                continue
            if target.excluded is not None:
                self.skip(index, EXCLUDED_HOST, "VM '%s' left %s, which %s" % (name, target.name, target.excluded))
                continue
            if not self.movable(index, pinned_to=target.name, cooldown=False):
                continue
            if not self.room_left():
                why = "VM '%s' waits to move back to %s: the plan already holds max_moves (%d) moves" % (name, target.name, self.limit or 0)
                self.skip(index, MAX_MOVES, why)
                continue
            rule, reasons = self.rejections(index, source, target)
            if reasons:
                self.skip(index, rule, "VM '%s' cannot move back to %s: %s" % (name, target.name, "; ".join(reasons)))
                continue
            self.apply(index, target, "moves back to %s, the host it left for a maintenance" % target.name)

    # -- the plan

    def finish(self) -> BalancePlan:
        plan = self.plan
        plan.skipped = sorted(self.skipped.values(), key=lambda entry: (entry["vm"], entry["host"]))
        plan.hosts = {name: {"before": self.before[name], "after": host.stats()} for name, host in self.hosts.items()}
        plan.excluded_hosts = {host.name: t.cast(str, host.excluded) for host in self.hosts.values() if host.excluded is not None}
        plan.unmet = self.affinity.unmet() if self.affinity is not None else []
        if self.request.policy == NONE:
            plan.rules_checked = []
        elif self.request.policy == FAILBACK:
            plan.rules_checked = list(RULES) + [NOT_RUNNING, MIGRATING, EXCLUDED_HOST, PLACEMENT, aff.RULE, MAX_MOVES]
        else:
            plan.rules_checked = list(RULES) + [MIGRATING, COOLDOWN, PLACEMENT, aff.RULE, THRESHOLDS]
        return plan


def plan_balance(hosts: t.Sequence[BalanceHost], vms: t.Sequence[BalanceVm], request: BalanceRequest) -> BalancePlan:
    """Plan the moves ``request.policy`` asks for on the cluster of ``hosts`` and ``vms`` (see the module docstring)."""
    validate(request)
    balancer = _Balancer(hosts, vms, request)
    if request.limit() == 0 or request.policy == NONE:
        pass
    elif request.policy == EVENLY:
        balancer.relieve((lambda host: True,))
    elif request.policy == VM_EVENLY:
        balancer.even_counts()
    elif request.policy == POWER_SAVING:
        balancer.save_power()
    else:
        balancer.fail_back()
    return balancer.finish()
