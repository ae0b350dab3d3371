# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""Affinity groups: which VMs run together or apart, and on which hosts (option ``affinity_groups``).

A group names VMs and up to two rules, as oVirt's affinity groups do:

* a VM rule: ``positive`` keeps its running VMs together on one host, ``negative`` keeps them apart
  (no two on one host);
* a host rule: ``positive`` runs its VMs only on the group's ``hosts``, ``negative`` never on them.

Each rule is hard (``enforcing: true``: never broken, a move that would break it is refused) or
soft (``enforcing: false``: placement prefers hosts that keep it, and a plan reports it when unmet).
:func:`parse_groups` validates the groups and refuses contradictions before anything moves.

:class:`Affinity` answers, for a VM and a host, which rules the VM would break there given where
the other running VMs are (``where``: VM name -> host name). A planner moves VMs in it as it plans
(:meth:`Affinity.move`), so later choices see earlier ones. Members absent from ``where`` (not
running, or being moved and not placed yet) are ignored by VM rules. A shut-off VM moved offline
only has host rules to keep (:meth:`Affinity.host_rules_only`).

Every refusal for affinity uses the rule id :data:`RULE` and names the group. Pure logic: no libvirt import.
"""

from __future__ import annotations

import collections
import dataclasses
import typing as t

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import MigrationError

# The rule id of every refusal, held VM and breach caused by an affinity group (next to rules.RULES).
RULE = "affinity"

POSITIVE = "positive"
NEGATIVE = "negative"
DISABLED = "disabled"
POLARITIES = (POSITIVE, NEGATIVE, DISABLED)
VM_KIND = "vm"
HOST_KIND = "host"

KEYS = ("name", "vms", "vm_rule", "vm_enforcing", "hosts", "host_rule", "host_enforcing")


class AffinityError(MigrationError):
    """The affinity groups are invalid or contradict each other; nothing has been changed."""


@dataclasses.dataclass(frozen=True)
class AffinityGroup:
    """One validated affinity group."""

    name: str
    vms: t.FrozenSet[str]
    vm_rule: str = DISABLED
    vm_enforcing: bool = True
    hosts: t.FrozenSet[str] = frozenset()
    host_rule: str = DISABLED
    host_enforcing: bool = True

    def rule_words(self, kind: str) -> str:
        """The group's rule of ``kind`` in words: "hard positive VM rule"."""
        if kind == VM_KIND:
            return "%s %s VM rule" % ("hard" if self.vm_enforcing else "soft", self.vm_rule)
        return "%s %s host rule" % ("hard" if self.host_enforcing else "soft", self.host_rule)


@dataclasses.dataclass(frozen=True)
class Breach:
    """One affinity rule broken (or that would be): the group, which of its rules, and a sentence naming the VMs and hosts."""

    group: str
    kind: str
    polarity: str
    enforcing: bool
    message: str

    def as_dict(self) -> t.Dict[str, t.Any]:
        return {"group": self.group, "kind": self.kind, "polarity": self.polarity, "enforcing": self.enforcing, "message": self.message}


def _listed(names: t.Iterable[str]) -> str:
    return ", ".join(sorted(names))


def _quoted(names: t.Iterable[str]) -> str:
    return ", ".join("'%s'" % name for name in sorted(names))


def _names(value: t.Any, where: str, group: str, at_least_one: bool) -> t.FrozenSet[str]:
    if value is None:
        value = []
    if isinstance(value, str) or not isinstance(value, t.Sequence):
        raise AffinityError("affinity group '%s': %s must be a list of names, got %r" % (group, where, value), group=group, rule=RULE)
    names: t.List[str] = []
    for item in value:
        if not isinstance(item, str) or not item:
            raise AffinityError("affinity group '%s': %s must hold non-empty names, got %r" % (group, where, item), group=group, rule=RULE)
        if item in names:
            raise AffinityError("affinity group '%s': %s lists '%s' twice" % (group, where, item), group=group, rule=RULE)
        names.append(item)
    if at_least_one and not names:
        raise AffinityError("affinity group '%s': %s must name at least one VM" % (group, where), group=group, rule=RULE)
    return frozenset(names)


def _choice(item: t.Mapping[str, t.Any], key: str, group: str) -> str:
    value = item.get(key)
    if value is None:
        return DISABLED
    if value not in POLARITIES:
        raise AffinityError(
            "affinity group '%s': %s must be one of %s, got %r" % (group, key, ", ".join(POLARITIES), value), group=group, rule=RULE
        )
    return str(value)


def _flag(item: t.Mapping[str, t.Any], key: str, group: str) -> bool:
    value = item.get(key)
    if value is None:
        return True
    if not isinstance(value, bool):
        raise AffinityError("affinity group '%s': %s must be true or false, got %r" % (group, key, value), group=group, rule=RULE)
    return value


def _group(index: int, item: t.Any) -> AffinityGroup:
    if not isinstance(item, t.Mapping):
        raise AffinityError("affinity_groups[%d] must be a dictionary, got %r" % (index, item), rule=RULE)
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise AffinityError("affinity_groups[%d].name must be a non-empty string, got %r" % (index, name), rule=RULE)
    unknown = sorted(str(key) for key in item if key not in KEYS)
    if unknown:
        raise AffinityError(
            "affinity group '%s' has unknown keys: %s (known: %s)" % (name, ", ".join(unknown), ", ".join(KEYS)), group=name, rule=RULE
        )
    group = AffinityGroup(
        name=name,
        vms=_names(item.get("vms"), "vms", name, at_least_one=True),
        vm_rule=_choice(item, "vm_rule", name),
        vm_enforcing=_flag(item, "vm_enforcing", name),
        hosts=_names(item.get("hosts"), "hosts", name, at_least_one=False),
        host_rule=_choice(item, "host_rule", name),
        host_enforcing=_flag(item, "host_enforcing", name),
    )
    if group.vm_rule != DISABLED and len(group.vms) < 2:
        raise AffinityError(
            "affinity group '%s': a %s VM rule needs at least two VMs, the group has %d" % (name, group.vm_rule, len(group.vms)), group=name, rule=RULE
        )
    if group.host_rule != DISABLED and not group.hosts:
        raise AffinityError("affinity group '%s': a %s host rule needs hosts, the group has none" % (name, group.host_rule), group=name, rule=RULE)
    return group


class _Components:
    """VMs joined by positive VM groups (union-find), with the groups that join each set."""

    def __init__(self) -> None:
        self._parent: t.Dict[str, str] = {}

    def find(self, vm: str) -> str:
        parent = self._parent.setdefault(vm, vm)
        while parent != self._parent[parent]:
            self._parent[parent] = self._parent[self._parent[parent]]
            parent = self._parent[parent]
        self._parent[vm] = parent
        return parent

    def join(self, vms: t.Iterable[str]) -> None:
        first: t.Optional[str] = None
        for vm in vms:
            root = self.find(vm)
            if first is None:
                first = root
            elif root != first:
                self._parent[root] = first

    def sets(self) -> t.Dict[str, t.Set[str]]:
        result: t.Dict[str, t.Set[str]] = collections.defaultdict(set)
        for vm in list(self._parent):
            result[self.find(vm)].add(vm)
        return result


def _hosts_left(ruling: t.Sequence[AffinityGroup], hosts: t.Optional[t.FrozenSet[str]]) -> t.Optional[t.FrozenSet[str]]:
    """The hosts the hard host rules of ``ruling`` leave (None: any but the excluded ones, the cluster unknown)."""
    allowed = hosts
    excluded: t.Set[str] = set()
    for group in ruling:
        if group.host_rule == POSITIVE:
            allowed = group.hosts if allowed is None else allowed & group.hosts
        else:
            excluded |= group.hosts
    return None if allowed is None else frozenset(allowed - excluded)


def _check_contradictions(groups: t.Sequence[AffinityGroup], hosts: t.Optional[t.FrozenSet[str]]) -> None:
    together = _Components()
    for group in groups:
        if group.vm_rule == POSITIVE:
            together.join(sorted(group.vms))
    for group in groups:
        if group.vm_rule != NEGATIVE:
            continue
        by_set: t.Dict[str, t.List[str]] = collections.defaultdict(list)
        for vm in sorted(group.vms):
            by_set[together.find(vm)].append(vm)
        for root, members in by_set.items():
            if len(members) < 2:
                continue
            pair = members[:2]
            component = together.sets()[root]
            joined = sorted(other.name for other in groups if other.vm_rule == POSITIVE and other.vms & component)
            raise AffinityError(
                "affinity groups contradict each other: group '%s' (%s) keeps VMs %s apart, but positive VM group(s) %s keep them together"
                % (group.name, group.rule_words(VM_KIND), _quoted(pair), _quoted(joined)),
                group=group.name,
                groups=[group.name] + joined,
                vms=pair,
                rule=RULE,
            )
        if group.vm_enforcing and hosts is not None and len(group.vms) > len(hosts):
            raise AffinityError(
                "affinity group '%s' (%s) keeps %d VMs (%s) apart, but the cluster has only %d host(s) (%s)"
                % (group.name, group.rule_words(VM_KIND), len(group.vms), _quoted(group.vms), len(hosts), _listed(hosts)),
                group=group.name,
                vms=sorted(group.vms),
                rule=RULE,
            )
    # The groups whose hard host rule rules each VM, in group order.
    ruled: t.Dict[str, t.List[AffinityGroup]] = collections.defaultdict(list)
    for group in groups:
        if group.host_rule != DISABLED and group.host_enforcing:
            for vm in group.vms:
                ruled[vm].append(group)
    for vm in sorted(ruled):
        left = _hosts_left(ruled[vm], hosts)
        if left is not None and not left:
            names = [group.name for group in ruled[vm]]
            raise AffinityError(
                "affinity groups leave VM '%s' no host: the hard host rules of group(s) %s%s exclude every host"
                % (vm, _quoted(names), " among the cluster's (%s)" % _listed(hosts) if hosts is not None else ""),
                group=names[0],
                groups=names,
                vm=vm,
                rule=RULE,
            )
    hard = _Components()
    for group in groups:
        if group.vm_rule == POSITIVE and group.vm_enforcing:
            hard.join(sorted(group.vms))
    for members in hard.sets().values():
        ruling = list({group.name: group for vm in sorted(members) for group in ruled.get(vm, ())}.values())
        common = _hosts_left(ruling, hosts)
        if not ruling or common is None or common:
            continue
        positive = sorted(group.name for group in groups if group.vm_rule == POSITIVE and group.vm_enforcing and group.vms & members)
        raise AffinityError(
            "affinity groups contradict each other: hard positive VM group(s) %s keep VMs %s on one host, but the hard host rules "
            "of group(s) %s leave them no host in common" % (_quoted(positive), _quoted(members), _quoted(group.name for group in ruling)),
            group=positive[0],
            groups=positive + sorted(group.name for group in ruling),
            vms=sorted(members),
            rule=RULE,
        )


def check_groups(groups: t.Sequence[AffinityGroup], hosts: t.Collection[str]) -> None:
    """Refuse the contradictions of groups already parsed that only the cluster's ``hosts`` (names) reveal."""
    _check_contradictions(groups, frozenset(hosts))


def parse_groups(value: t.Any, hosts: t.Optional[t.Collection[str]] = None) -> t.Tuple[AffinityGroup, ...]:
    """The groups of the option ``affinity_groups``, validated; contradictions are refused before anything moves.

    ``hosts``, when given, are the names of the cluster's hosts: a hard negative VM group with more
    VMs than hosts, or hard host rules excluding every one of them, are refused too.
    """
    if value is None:
        return ()
    if isinstance(value, (str, t.Mapping)) or not isinstance(value, t.Sequence):
        raise AffinityError("affinity_groups must be a list of dictionaries, got %r" % (value,), rule=RULE)
    groups: t.List[AffinityGroup] = []
    seen: t.Set[str] = set()
    for index, item in enumerate(value):
        group = _group(index, item)
        if group.name in seen:
            raise AffinityError("affinity group '%s' is defined twice" % group.name, group=group.name, rule=RULE)
        seen.add(group.name)
        groups.append(group)
    _check_contradictions(groups, frozenset(hosts) if hosts is not None else None)
    return tuple(groups)


class Affinity:
    """The groups, where each running VM is, and which rules a VM would break on a host.

    ``where`` maps each running VM's name to its host's name; the planner updates it with
    :meth:`move`. Every check costs the number of groups of the VM (a breach's message lists the
    members involved).
    """

    def __init__(self, groups: t.Sequence[AffinityGroup], where: t.Mapping[str, str]) -> None:
        self.groups: t.Tuple[AffinityGroup, ...] = tuple(groups)
        self._where: t.Dict[str, str] = dict(where)
        # The groups with a rule, for each VM.
        self._of: t.Dict[str, t.List[int]] = collections.defaultdict(list)
        # For each group with a VM rule: members placed per host, and their total.
        self._on: t.Dict[int, t.Counter[str]] = {}
        self._placed: t.Dict[int, int] = {}
        for index, group in enumerate(self.groups):
            if group.vm_rule == DISABLED and group.host_rule == DISABLED:
                continue
            for vm in group.vms:
                self._of[vm].append(index)
            if group.vm_rule != DISABLED:
                self._on[index] = collections.Counter(self._where[vm] for vm in group.vms if vm in self._where)
                self._placed[index] = sum(self._on[index].values())

    @property
    def where(self) -> t.Mapping[str, str]:
        """Running VM name -> host name, as planned so far."""
        return self._where

    def host_rules_only(self) -> "Affinity":
        """The same groups with no VM placed: only host rules can break (a shut-off VM moved offline)."""
        return Affinity(self.groups, {})

    def constrained(self, vm: str) -> bool:
        """The VM is in some group with a rule not disabled."""
        return vm in self._of

    def groups_of(self, vm: str) -> t.List[AffinityGroup]:
        """The groups with a rule that name ``vm``."""
        return [self.groups[index] for index in self._of.get(vm, ())]

    def kept_together(self, vms: t.Sequence[str]) -> t.Dict[str, t.Tuple[str, ...]]:
        """For each of ``vms`` that hard positive VM groups join to others of ``vms``: all of them, in the order of ``vms``."""
        given = set(vms)
        joined = _Components()
        for group in self.groups:
            if group.vm_rule == POSITIVE and group.vm_enforcing:
                members = sorted(group.vms & given)
                if len(members) > 1:
                    joined.join(members)
        result: t.Dict[str, t.Tuple[str, ...]] = {}
        for members in joined.sets().values():
            ordered = tuple(vm for vm in vms if vm in members)
            result.update(dict.fromkeys(ordered, ordered))
        return result

    def move(self, vm: str, host: t.Optional[str]) -> None:
        """``vm`` now runs (or is planned to run) on ``host``; ``None``: it is not placed anywhere."""
        before = self._where.get(vm)
        if before == host:
            return
        for index in self._of.get(vm, ()):
            if index not in self._on:
                continue
            if before is not None:
                self._on[index][before] -= 1
                self._placed[index] -= 1
            if host is not None:
                self._on[index][host] += 1
                self._placed[index] += 1
        if host is None:
            self._where.pop(vm, None)
        else:
            self._where[vm] = host

    def _others(self, index: int, vm: str, host: str, on_host: bool) -> str:
        """The placed members of group ``index`` other than ``vm``, on ``host`` or (``on_host`` false) elsewhere, as 'name' (on host)."""
        return ", ".join(
            "'%s' (on %s)" % (other, self._where[other])
            for other in sorted(self.groups[index].vms)
            if other != vm and other in self._where and (self._where[other] == host) == on_host
        )

    def _broken(self, vm: str, host: str) -> t.Iterator[t.Tuple[int, str]]:
        """(group index, kind) of each rule ``vm`` would break on ``host``; costs the number of the VM's groups."""
        now = self._where.get(vm)
        for index in self._of.get(vm, ()):
            group = self.groups[index]
            if index in self._on:
                same = self._on[index][host] - (1 if now == host else 0)
                apart = self._placed[index] - (1 if now is not None else 0) - same
                if (group.vm_rule == POSITIVE and apart > 0) or (group.vm_rule == NEGATIVE and same > 0):
                    yield index, VM_KIND
            if (group.host_rule == POSITIVE and host not in group.hosts) or (group.host_rule == NEGATIVE and host in group.hosts):
                yield index, HOST_KIND

    def breaches(self, vm: str, host: str) -> t.List[Breach]:
        """The rules ``vm`` would break on ``host``, given where the other members are."""
        result: t.List[Breach] = []
        for index, kind in self._broken(vm, host):
            group = self.groups[index]
            if kind == VM_KIND and group.vm_rule == POSITIVE:
                clause = "keeps VMs %s together: VM '%s' on %s would be apart from %s" % (
                    _quoted(group.vms), vm, host, self._others(index, vm, host, on_host=False))
            elif kind == VM_KIND:
                clause = "keeps VMs %s apart: VM '%s' on %s would share the host with %s" % (
                    _quoted(group.vms), vm, host, self._others(index, vm, host, on_host=True))
            elif group.host_rule == POSITIVE:
                clause = "runs VM '%s' only on hosts %s, not on %s" % (vm, _listed(group.hosts), host)
            else:
                clause = "keeps VM '%s' off hosts %s, %s among them" % (vm, _listed(group.hosts), host)
            result.append(self._breach(group, kind, clause))
        return result

    def _enforcing(self, index: int, kind: str) -> bool:
        group = self.groups[index]
        return group.vm_enforcing if kind == VM_KIND else group.host_enforcing

    def allows(self, vm: str, host: str) -> bool:
        """``vm`` would break no hard rule on ``host`` (:meth:`rejections` would be empty, without building them)."""
        return not any(self._enforcing(index, kind) for index, kind in self._broken(vm, host))

    @staticmethod
    def _breach(group: AffinityGroup, kind: str, clause: str) -> Breach:
        polarity = group.vm_rule if kind == VM_KIND else group.host_rule
        enforcing = group.vm_enforcing if kind == VM_KIND else group.host_enforcing
        return Breach(group.name, kind, polarity, enforcing, "affinity group '%s' (%s) %s" % (group.name, group.rule_words(kind), clause))

    def rejections(self, vm: str, host: str) -> t.List[str]:
        """The messages of the hard rules ``vm`` would break on ``host`` (each names its group)."""
        if self.allows(vm, host):
            return []
        return [breach.message for breach in self.breaches(vm, host) if breach.enforcing]

    def penalty(self, vm: str, host: str) -> int:
        """How many soft rules ``vm`` would break on ``host``."""
        return sum(1 for index, kind in self._broken(vm, host) if not self._enforcing(index, kind))

    def unmet(self) -> t.List[Breach]:
        """Every rule broken where the VMs are now (hard and soft), in group order."""
        result: t.List[Breach] = []
        for index, group in enumerate(self.groups):
            placed = sorted(vm for vm in group.vms if vm in self._where)
            if group.vm_rule == POSITIVE and len({self._where[vm] for vm in placed}) > 1:
                spread = ", ".join("'%s' (on %s)" % (vm, self._where[vm]) for vm in placed)
                result.append(self._breach(group, VM_KIND, "keeps VMs %s together, but they run apart: %s" % (_quoted(group.vms), spread)))
            elif group.vm_rule == NEGATIVE and index in self._on and any(count > 1 for count in self._on[index].values()):
                shared = sorted(host for host, count in self._on[index].items() if count > 1)
                crowded = ", ".join(
                    "%s (%s)" % (host, _quoted(vm for vm in placed if self._where[vm] == host)) for host in shared
                )
                result.append(self._breach(group, VM_KIND, "keeps VMs %s apart, but some share a host: %s" % (_quoted(group.vms), crowded)))
            if group.host_rule == POSITIVE:
                outside = ["'%s' (on %s)" % (vm, self._where[vm]) for vm in placed if self._where[vm] not in group.hosts]
                if outside:
                    result.append(self._breach(group, HOST_KIND, "runs its VMs only on hosts %s, but %s run elsewhere"
                                                                 % (_listed(group.hosts), ", ".join(outside))))
            elif group.host_rule == NEGATIVE:
                inside = ["'%s' (on %s)" % (vm, self._where[vm]) for vm in placed if self._where[vm] in group.hosts]
                if inside:
                    result.append(self._breach(group, HOST_KIND, "keeps its VMs off hosts %s, but %s run there"
                                                                 % (_listed(group.hosts), ", ".join(inside))))
        return result
