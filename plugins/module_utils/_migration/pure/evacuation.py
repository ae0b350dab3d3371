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
* Whether a VM may move is the one assessor's answer (``rules.py``), the same as ``vm_migrate``'s.
  A VM is not migratable (``rules.NOT_MIGRATABLE``) when its ``migration_mode`` is ``none``, or
  ``manual`` and the evacuation was not confirmed with ``include_manual``, when its ``pinned_hosts``
  name no candidate other than the host being evacuated, when it is hibernated, or runs with host
  devices that cannot migrate or with disks whose cache is unsafe for a live move (unless the run
  allows it). A running one is then ``blocked`` (``non_migratable=fail``) or shut down cleanly, to
  be started again when the host is activated (``non_migratable=shutdown``). A shut-off one is
  ``kept``: it stays defined, shut off, on the host, which blocks nothing.
* A running transient VM that may not migrate is ``blocked`` even with ``non_migratable=shutdown``:
  libvirt forgets a transient VM when it stops, so shutting it down would destroy it.
* Every other rule blocks the VM, running or not: its migration settings cannot be read or used
  (they must be fixed before the plan can say where it goes), its UUID is also defined on another
  host (a stale copy), it is pmsuspended or crashed, or a tunnelled run cannot carry its policy.
* A VM no host can take is ``unplaceable``, with every host's reasons.
* Affinity groups (``affinity.py``), when given: a VM in a group with a rule is placed by
  ``placement.choose`` over every host with the groups (no hard rule broken, fewest soft rules broken
  first), knowing where every running VM of the cluster is and where the plan has put the VMs before
  it; a shut-off one keeps only host rules. A VM that only breaking a hard rule could place is
  ``unplaceable`` with the rule ``affinity`` and a reason naming the group(s). The running VMs of the
  source that hard positive VM groups keep together move to one host: when the first of them is
  placed, that host must take all of them at once (their memory and vCPUs summed, every network,
  bridge and disk any of them uses, only the pinned hosts they share), and is reserved for them;
  when none can, all of them are ``unplaceable`` (rule ``affinity``). Other VMs keep the fast
  placement, counting the affinity placements as pending load. The plan reports the rules left
  unmet afterwards (soft ones, and hard ones already broken elsewhere).

* Local disks (``storage.py``, option ``storage`` copy or auto): a running VM whose disks are copied
  goes only to a host that can take the copies (``storage.plan_for`` gives no refusal: an active pool
  at each disk's directory, no volume at its path, and room for the copies beyond what the copies
  planned before it already take in that pool, :class:`~storage.PendingSpace`), chosen among those as
  ``placement.choose`` chooses; a VM no host can take is ``unplaceable`` with each host's placement
  and storage reasons together. VMs without copies keep the fast placement. A move that copies disks
  has its job timeout extended for the copy (``storage.copy_timeout``), and the plan shows its disks
  (``storage``) and, per destination, the bytes its pools receive.

The plan is ``ok`` when nothing is blocked or unplaceable. :class:`EvacuationQueue` then orders the
execution: a bounded number of migrations out of the source and into each destination at once, and
never a VM started before one of higher priority.

Pure logic: no libvirt import.
"""

from __future__ import annotations

import dataclasses
import bisect
import typing as t

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import affinity as vm_affinity
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import placement
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import settings as vm_settings
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import storage
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import MigrationError
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.plan import LIVE, Move
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.rules import (
    NOT_MIGRATABLE,
    Assessor,
    MoveRequest,
    SourceHost,
    Verdict,
    VmToMove,
    move_for,
)

NON_MIGRATABLE_ACTIONS = ("fail", "shutdown")


class EvacuationError(MigrationError):
    """An evacuation cannot be planned or scheduled as asked; nothing has been changed."""


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
    # The id of the rule that holds it (rules.RULES); None for an unplaceable VM.
    rule: t.Optional[str] = None

    def as_dict(self) -> t.Dict[str, t.Any]:
        data = {
            "vm": self.vm,
            "uuid": self.uuid,
            "priority": self.priority,
            "memory_mib": self.memory_mib,
            "running": self.running,
            "reason": self.reason,
        }
        if self.rule is not None:
            data["rule"] = self.rule
        return data


@dataclasses.dataclass
class HostLoad:
    """What the plan puts on one destination, and its free memory before and after."""

    name: str
    uri: str
    available_mib_before: int
    memory_mib: int = 0
    vcpus: int = 0
    vms: int = 0
    # Per destination pool, the bytes the copied disks take there (margins included).
    copy_bytes: t.Dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def available_mib_after(self) -> int:
        return self.available_mib_before - self.memory_mib

    def as_dict(self) -> t.Dict[str, t.Any]:
        data = {
            "uri": self.uri,
            "vms": self.vms,
            "memory_mib": self.memory_mib,
            "vcpus": self.vcpus,
            "available_mib_before": self.available_mib_before,
            "available_mib_after": self.available_mib_after,
        }
        if self.copy_bytes:
            data["copy_bytes_by_pool"] = dict(sorted(self.copy_bytes.items()))
        return data


@dataclasses.dataclass
class EvacuationPlan:
    """Where each VM of the source goes, in execution order, and which VMs stay and why.

    ``moves`` are in priority order (the order the queue starts them); ``blocked`` VMs stop the
    evacuation; ``shutdown`` VMs are shut down cleanly and started again when the host is activated;
    ``kept`` VMs are shut off and stay defined on the source; ``unplaceable`` VMs fit on no host.
    ``load`` is, per usable destination (reachable, not in maintenance, not the source), what the
    plan puts there: live VMs' memory and vCPUs, and the count of all VMs moved there.
    ``tunnelled`` says whether live moves go through the libvirt connections (the run's option).
    ``unmet`` are the affinity rules broken once the plan has run (None: no affinity groups were given).
    ``copies`` are, per VM UUID (else name), the disk copies of the moves that copy disks.
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
    unmet: t.Optional[t.List[vm_affinity.Breach]] = None
    copies: t.Dict[str, storage.CopyPlan] = dataclasses.field(default_factory=dict)

    def copies_of(self, move: Move) -> t.Optional[storage.CopyPlan]:
        """The disk copies of ``move`` (None: it copies none)."""
        return self.copies.get(move.uuid or move.vm)

    def _move_dict(self, move: Move) -> t.Dict[str, t.Any]:
        data = move.as_dict()
        copies = self.copies_of(move)
        if copies is not None:
            data.update(timeout_s=move.timeout_s, storage=copies.as_list())
        return data

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
        result = {
            "source": {"name": self.source.name, "uuid": self.source.uuid, "uri": self.source.uri},
            "ok": self.ok,
            "include_manual": self.include_manual,
            "non_migratable": self.non_migratable,
            "tunnelled": self.tunnelled,
            "moves": [self._move_dict(move) for move in self.moves],
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
        if self.unmet is not None:
            result["affinity"] = {"unmet": [breach.as_dict() for breach in self.unmet]}
        return result


_Key = t.Tuple[int, int, str, int]


class _Chooser(t.Protocol):
    pending: placement.PendingLoad

    def place(self, needs: placement.VmNeeds) -> t.Optional[placement.HostState]: ...

    def assign(self, host: str, needs: placement.VmNeeds) -> None: ...


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
            self.assign(host.name, needs)
        return host

    def assign(self, host: str, needs: placement.VmNeeds) -> None:
        """Count ``needs`` as pending on ``host`` (a placement made elsewhere)."""
        self.pending.add(host, needs)


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
        self.assign(host.name, needs)
        return host

    def assign(self, host: str, needs: placement.VmNeeds) -> None:
        """Count ``needs`` as pending on ``host`` (chosen here or elsewhere), keeping the ranking right."""
        same_name = self._usable.get(host, [])
        for index in same_name:
            del self._ranked[bisect.bisect_left(self._ranked, self._key(index))]
        self.pending.add(host, needs)
        for index in same_name:
            bisect.insort(self._ranked, self._key(index))


def _order_key(verdict: Verdict) -> t.Tuple[int, int, str, str]:
    vm = verdict.vm
    rank = vm_settings.PRIORITY_RANK.get(verdict.priority, vm_settings.PRIORITY_RANK[vm_settings.DEFAULTS["priority"]])
    return (rank, -vm.memory_mib, vm.name, vm.uuid or "")


def _held(verdict: Verdict, reason: str, rule: t.Optional[str], rejected: t.Optional[t.Mapping[str, t.Sequence[str]]] = None) -> HeldVm:
    vm = verdict.vm
    return HeldVm(vm.name, vm.uuid, verdict.priority, vm.memory_mib, vm.running, reason, rejected or {}, rule)


def _combined(members: t.Sequence[placement.VmNeeds]) -> t.Optional[placement.VmNeeds]:
    """What VMs kept on one host need of it together (named as the first); None when their pinned hosts share none."""
    pinned = [needs.pinned_hosts for needs in members if needs.pinned_hosts]
    shared = frozenset.intersection(*pinned) if pinned else frozenset()
    if pinned and not shared:
        return None
    vfs: t.Dict[str, int] = {}
    for needs in members:
        for network, count in needs.vfs:
            vfs[network] = vfs.get(network, 0) + count
    return placement.VmNeeds(
        name=members[0].name,
        memory_mib=sum(needs.memory_mib for needs in members),
        vcpus=sum(needs.vcpus for needs in members),
        networks=frozenset().union(*(needs.networks for needs in members)),
        bridges=frozenset().union(*(needs.bridges for needs in members)),
        disk_paths=frozenset().union(*(needs.disk_paths for needs in members)),
        pinned_hosts=shared,
        vfs=tuple(sorted(vfs.items())),
        vf_addresses=frozenset().union(*(needs.vf_addresses for needs in members)),
    )


class _Copies:
    """The disk copies of the VMs that copy some: each destination's storage facts, and the space the planned copies take.

    ``facts`` are per host name (``storage.DestinationFacts``); a usable host without them cannot be
    judged, and takes no copy.
    """

    def __init__(self, facts: t.Mapping[str, storage.DestinationFacts], source_uuid: str) -> None:
        self.facts = facts
        self.source_uuid = source_uuid
        self.pending = storage.PendingSpace()
        self.plans: t.Dict[str, storage.CopyPlan] = {}

    @staticmethod
    def concerns(verdict: Verdict) -> bool:
        """The VM moves live and copies disks."""
        return verdict.vm.running and verdict.storage is not None and bool(verdict.storage.copies)

    def plan(self, verdict: Verdict, host: placement.HostState, pending: t.Optional[storage.PendingSpace] = None) -> storage.CopyPlan:
        """The copies of the VM onto ``host``, counting ``pending`` (else the plan's) space; refused when its pools were not read."""
        vm = verdict.vm.name
        facts = self.facts.get(host.name)
        if facts is None:
            return storage.CopyPlan(vm, host.name, refusals=("VM '%s': the storage pools of %s could not be read" % (vm, host.name),))
        return storage.plan_for(vm, t.cast(storage.Classification, verdict.storage), host.name, facts, self.pending if pending is None else pending)

    def usable(self, host: placement.HostState) -> bool:
        """A host placement may choose at all (the others it rejects by itself, without storage reasons)."""
        return host.error is None and not host.maintenance and host.uuid != self.source_uuid

    def choose(
        self,
        verdict: Verdict,
        hosts: t.Sequence[placement.HostState],
        pending: placement.PendingLoad,
        rules: t.Optional[vm_affinity.Affinity] = None,
    ) -> t.Tuple[t.Optional[placement.HostState], t.Dict[str, t.List[str]]]:
        """``placement.choose`` among the hosts that can take the VM's copies; every host's reasons, placement's and storage's together."""
        needs = verdict.needs
        refused: t.Dict[str, t.List[str]] = {}
        able = []
        for host in hosts:
            problems = self.plan(verdict, host).refusals if self.usable(host) else ()
            if problems:
                refused[host.name] = list(problems)
            else:
                able.append(host)
        best, rejected = placement.choose(needs, able, self.source_uuid, pending, rules)
        for name, problems in refused.items():
            host = next(host for host in hosts if host.name == name)
            rejected[name] = placement.rejections(needs, host, self.source_uuid, pending, rules) + problems
        return best, rejected

    def take(self, verdict: Verdict, host: placement.HostState) -> storage.CopyPlan:
        """The VM's copies onto ``host``, counted as pending there from now on."""
        plan = self.plan(verdict, host)
        self.pending.add(plan)
        self.plans[verdict.vm.uuid or verdict.vm.name] = plan
        return plan


class _AffinityPlacer:
    """Places the VMs affinity groups constrain, sharing the chooser's pending load (see the module docstring)."""

    def __init__(
        self,
        affinity: vm_affinity.Affinity,
        hosts: t.Sequence[placement.HostState],
        source_uuid: str,
        chooser: _Chooser,
        moving: t.Sequence[Verdict],
        copies: _Copies,
    ) -> None:
        self.affinity = affinity
        self.copies = copies
        self.offline = affinity.host_rules_only()
        self.hosts = hosts
        self.source_uuid = source_uuid
        self.chooser = chooser
        self.verdicts = {verdict.vm.name: verdict for verdict in moving}
        self.parties = affinity.kept_together([verdict.vm.name for verdict in moving])
        # The host reserved for each VM of a party whose first VM was placed, or why none could be.
        self.reserved: t.Dict[str, placement.HostState] = {}
        self.failed: t.Dict[str, t.Tuple[str, t.Dict[str, t.List[str]]]] = {}

    def concerns(self, vm: VmToMove) -> bool:
        return self.affinity.constrained(vm.name)

    def _groups(self, vm: str, polarity: t.Optional[str] = None) -> str:
        return ", ".join(
            "'%s'" % group.name
            for group in self.affinity.groups_of(vm)
            if polarity is None or (group.vm_rule == polarity and group.vm_enforcing)
        )

    def place(self, verdict: Verdict) -> t.Tuple[t.Optional[placement.HostState], str, t.Dict[str, t.List[str]], t.Optional[str]]:
        """The host for the VM (``None``: unplaceable), else why: the reason, every host's rejections and the rule."""
        vm, needs = verdict.vm, t.cast(placement.VmNeeds, verdict.needs)
        if vm.name in self.reserved:
            return self.reserved[vm.name], "", {}, None
        if vm.name in self.failed:
            reason, rejected = self.failed[vm.name]
            return None, reason, rejected, vm_affinity.RULE
        if vm.running and len(self.parties.get(vm.name, ())) > 1:
            return self._place_party(self.parties[vm.name])
        rules = self.affinity if vm.running else self.offline
        if self.copies.concerns(verdict):
            host, rejected = self.copies.choose(verdict, self.hosts, self.chooser.pending, rules)
        else:
            host, rejected = placement.choose(needs, self.hosts, self.source_uuid, self.chooser.pending, rules)
        if host is not None:
            if self.copies.concerns(verdict):
                self.copies.take(verdict, host)
            self.chooser.assign(host.name, needs)
            if vm.running:
                self.affinity.move(vm.name, host.name)
            return host, "", rejected, None
        free = [candidate for candidate in self.hosts if placement.fits(needs, candidate, self.source_uuid, self.chooser.pending)]
        if not free:
            return None, placement.explain(vm.name, rejected), rejected, None
        groups = sorted({breach.group for candidate in free for breach in rules.breaches(vm.name, candidate.name) if breach.enforcing})
        reason = "VM '%s' cannot be placed without breaking a hard rule of affinity group(s) %s: %s" % (
            vm.name, ", ".join("'%s'" % name for name in groups), placement.explain(vm.name, rejected))
        return None, reason, rejected, vm_affinity.RULE

    def _party_copies(self, party: t.Sequence[str], host: placement.HostState) -> t.List[str]:
        """Why ``host`` cannot take the disk copies of every VM of ``party`` at once, each counting the ones before it (empty: it can)."""
        if not self.copies.usable(host):
            return []
        pending = storage.PendingSpace(dict(self.copies.pending.taken))
        problems: t.List[str] = []
        for name in party:
            verdict = self.verdicts[name]
            if self.copies.concerns(verdict):
                plan = self.copies.plan(verdict, host, pending)
                problems.extend(plan.refusals)
                pending.add(plan)
        return problems

    def _place_party(self, party: t.Sequence[str]) -> t.Tuple[t.Optional[placement.HostState], str, t.Dict[str, t.List[str]], t.Optional[str]]:
        members = [t.cast(placement.VmNeeds, self.verdicts[name].needs) for name in party]
        together = _combined(members)
        rejected: t.Dict[str, t.List[str]] = {}
        fitting: t.List[placement.HostState] = []
        if together is not None:
            for host in self.hosts:
                reasons = [] if placement.fits(together, host, self.source_uuid, self.chooser.pending) else (
                    placement.rejections(together, host, self.source_uuid, self.chooser.pending))
                for needs in members[1:]:
                    if needs.name in host.cpu_incompatible and not host.error:
                        reasons.append("cannot run the CPU of VM '%s': %s" % (needs.name, host.cpu_incompatible[needs.name]))
                if not host.error:
                    for needs in members:
                        reasons.extend(self.affinity.rejections(needs.name, host.name))
                reasons.extend(self._party_copies(party, host))
                if reasons:
                    rejected[host.name] = reasons
                else:
                    fitting.append(host)
        first = party[0]
        if fitting:
            host = min(
                fitting,
                key=lambda host: (sum(self.affinity.penalty(name, host.name) for name in party), placement.rank(together, host, self.chooser.pending)),
            )
            self.chooser.assign(host.name, t.cast(placement.VmNeeds, together))
            for name in party:
                if self.copies.concerns(self.verdicts[name]):
                    self.copies.take(self.verdicts[name], host)
                self.reserved[name] = host
                self.affinity.move(name, host.name)
            return host, "", rejected, None
        what = "their pinned hosts share none" if together is None else "no host takes all %d of them (%d MiB, %d vCPUs) and keeps every hard rule: %s" % (
            len(party), together.memory_mib, together.vcpus, placement.explain(first, rejected))
        for name in party:
            self.failed[name] = (
                "VM '%s' cannot be placed: hard positive affinity group(s) %s keep VMs %s on one host, and %s"
                % (name, self._groups(name, vm_affinity.POSITIVE), ", ".join("'%s'" % other for other in party), what),
                rejected,
            )
        return self.place(self.verdicts[first])


def plan_evacuation(
    vms: t.Iterable[VmToMove],
    hosts: t.Iterable[placement.HostState],
    source: SourceHost,
    include_manual: bool = False,
    non_migratable: str = "fail",
    fast: bool = True,
    request: t.Optional[MoveRequest] = None,
    affinity: t.Optional[vm_affinity.Affinity] = None,
    destination_storage: t.Optional[t.Mapping[str, storage.DestinationFacts]] = None,
) -> EvacuationPlan:
    """Plan moving every VM in ``vms`` off ``source`` onto ``hosts`` (see the module docstring for the rules).

    ``hosts`` may include the source itself: placement rejects it by UUID. ``request`` is what the
    run asks of every move (``rules.MoveRequest``: unsafe caches allowed, tunnelled, guest hooks);
    ``include_manual`` confirms the manual VMs. ``fast`` keeps the hosts ranked and checks them best
    first instead of checking every host for every VM; the plan is the same either way.
    ``affinity``, when given, holds the affinity groups and where every running VM of the cluster is,
    the VMs of the source left out (they are placed as the plan goes); the plan moves VMs in it.
    ``destination_storage`` holds, per host name, what its storage pools can take (``storage.DestinationFacts``),
    read when the request copies disks (``request.storage`` copy or auto).
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

    request = dataclasses.replace(request or MoveRequest(), confirmed=include_manual, live=True)
    plan = EvacuationPlan(source=source, include_manual=include_manual, non_migratable=non_migratable, tunnelled=request.tunnelled)
    for host in hosts:
        if host.uuid != source.uuid and host.error is None and not host.maintenance:
            plan.load.setdefault(host.name, HostLoad(host.name, host.uri, host.available_mib))
    assessor = Assessor(request, source, frozenset(host.name for host in hosts if host.uuid != source.uuid))
    verdicts = sorted((assessor.assess(vm) for vm in vms), key=_order_key)

    chooser: _Chooser = _RankedChooser(hosts, source.uuid) if fast else _ScanChooser(hosts, source.uuid)
    copies = _Copies(destination_storage or {}, source.uuid)
    placer: t.Optional[_AffinityPlacer] = None
    if affinity is not None:
        moving = [verdict for verdict in verdicts if verdict.refusal() is None and verdict.vm.running]
        placer = _AffinityPlacer(affinity, hosts, source.uuid, chooser, moving, copies)
    for verdict in verdicts:
        vm = verdict.vm
        refusal = verdict.refusal()
        if refusal is not None and refusal.rule not in NOT_MIGRATABLE:
            plan.blocked.append(_held(verdict, refusal.message, refusal.rule))
            continue
        if refusal is not None:
            held, rule = refusal.message, refusal.rule
            if not vm.running:
                plan.kept.append(_held(verdict, "%s; it is shut off and stays defined on %s" % (held, source.name), rule))
            elif non_migratable == "fail":
                plan.blocked.append(_held(verdict, held, rule))
            elif not vm.persistent:
                reason = "%s; it is transient, and shutting it down would destroy it, so it blocks the evacuation" % held
                plan.blocked.append(_held(verdict, reason, rule))
            else:
                reason = "%s; it is shut down and started again when %s is activated" % (held, source.name)
                plan.shutdown.append(_held(verdict, reason, rule))
            continue
        needs = verdict.needs
        if placer is not None and placer.concerns(vm):
            destination, reason, rejected, rule = placer.place(verdict)
            if destination is None:
                plan.unplaceable.append(_held(verdict, reason, rule, rejected))
                continue
        elif copies.concerns(verdict):
            destination, rejected = copies.choose(verdict, hosts, chooser.pending)
            if destination is None:
                plan.unplaceable.append(_held(verdict, placement.explain(vm.name, rejected), None, rejected))
                continue
            copies.take(verdict, destination)
            chooser.assign(destination.name, needs)
            if affinity is not None:
                affinity.move(vm.name, destination.name)
        else:
            destination = chooser.place(needs)
            if destination is None:
                rejected = placement.choose(needs, hosts, source.uuid, chooser.pending)[1]
                plan.unplaceable.append(_held(verdict, placement.explain(vm.name, rejected), None, rejected))
                continue
            if affinity is not None and vm.running:
                affinity.move(vm.name, destination.name)
        load = plan.load[destination.name]
        load.memory_mib += needs.memory_mib
        load.vcpus += needs.vcpus
        load.vms += 1
        copied = copies.plans.get(vm.uuid or vm.name) if copies.concerns(verdict) else None
        if copied is not None:
            plan.copies[vm.uuid or vm.name] = copied
            for pool, size in copied.bytes_by_pool().items():
                load.copy_bytes[pool] = load.copy_bytes.get(pool, 0) + size
        plan.moves.append(move_for(verdict, source, destination, copied))
    if affinity is not None:
        plan.unmet = affinity.unmet()
    return plan


class EvacuationQueue:
    """The order in which an evacuation's moves start, under concurrency limits.

    * At most ``max_outgoing`` moves run at once out of the source (vdsm's default: 2); for moves out of
      several hosts (the balancer's), out of each source.
    * At most ``max_incoming`` moves run at once into any one destination (vdsm's default: 2).
    * A move's policy may allow fewer: ``suspend_workload`` and ``very_large_vms`` run alone
      (``max_concurrent`` 1, as in oVirt). A move starts only while fewer moves run than its own
      policy allows and than the policy of each running move out of the same source allows; a move
      held back so is not overtaken, the running moves drain first.
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
        self._outgoing: t.Dict[str, int] = {}

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

    def outgoing(self, host: str) -> int:
        """How many moves run out of ``host`` now."""
        return self._outgoing.get(host, 0)

    def outgoing_limit(self, move: t.Optional[Move] = None, source: t.Optional[str] = None) -> int:
        """How many moves may run out of a source now (``move``'s, with it started too; else ``source``, or the only one)."""
        if move is not None:
            source = move.source
        running = [other for other in self._running if source is None or other.source == source]
        limits = [self.max_outgoing] + [other.policy.max_concurrent for other in running]
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
        if self.outgoing(move.source) >= self.max_outgoing:
            return "VM '%s' waits for one of the %d outgoing migration slots of %s" % (move.vm, self.max_outgoing, move.source)
        limit = self.outgoing_limit(move)
        if self.outgoing(move.source) >= limit:
            return "VM '%s' waits: its policy or a running move's policy allows only %d migration(s) at once" % (move.vm, limit)
        if self.incoming(move.destination) >= self.max_incoming:
            return "VM '%s' waits for one of the %d incoming migration slots of %s" % (move.vm, self.max_incoming, move.destination)
        return None

    def next_ready(self) -> t.Optional[Move]:
        """The move to start now, or ``None`` when every waiting move must wait (or none waits)."""
        if not self._waiting:
            return None
        top = vm_settings.PRIORITY_RANK[self._waiting[0].priority]
        best: t.Optional[Move] = None
        held: t.Set[str] = set()
        for move in self._waiting:
            if vm_settings.PRIORITY_RANK[move.priority] != top:
                break
            if move.source in held:
                continue
            if self.outgoing(move.source) >= self.outgoing_limit(move):
                # Its source is full, or its running moves' policies drain first: nothing later from there overtakes it.
                held.add(move.source)
                continue
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
        self._outgoing[move.source] = self.outgoing(move.source) + 1

    def finish(self, move: Move) -> None:
        """Record that ``move`` has ended (completed or failed): its slots are free again."""
        if move not in self._running:
            raise EvacuationError("VM '%s' is not being moved" % move.vm, vm=move.vm)
        self._running.remove(move)
        self._incoming[move.destination] -= 1
        self._outgoing[move.source] -= 1
        self._finished.append(move)

    def cancel(self) -> t.List[Move]:
        """Drop every waiting move (after a failure: let the running ones end, start nothing new)."""
        dropped, self._waiting = self._waiting, []
        return dropped

    def done(self) -> bool:
        """True when nothing waits and nothing runs."""
        return not self._waiting and not self._running
