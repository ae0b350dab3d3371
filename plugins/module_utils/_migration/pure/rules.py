# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""May this VM move, as what kind of move, and if not, why: the one assessor of both planners.

``vm_migrate`` (``vm_migration.py``, one named VM) and ``host_maintenance`` (``evacuation.py``,
every VM of a host) describe a VM the same way (:class:`VmToMove`, built from its domain facts by
:meth:`VmToMove.from_domain`), say what was asked in a :class:`MoveRequest`, and ask an
:class:`Assessor` for a :class:`Verdict`: the kind of move (live, paused or offline), its priority,
policy, timeout, guest hooks and what the destination must offer (``placement.py`` picks it), or the
rules that refuse it. :func:`move_for` turns a verdict, the source and the destination into the
:class:`~plan.Move` the job runner carries out.

Every rule that fires is a :class:`Finding` with a stable rule id and a message naming the VM; they
come in this order, and the first one is the verdict's:

``duplicate``           the VM's UUID is defined on another host too (two copies could start).
``unreadable_settings`` some of the VM's own migration settings cannot be read.
``state``               an active VM is pmsuspended or crashed (:data:`UNMOVABLE_STATES`).
``invalid_settings``    a setting the plan needs (priority, mode, policy) has a value it cannot use.
``mode_none``           ``migration_mode: none`` (set, or because the mode or pinning cannot be read).
``mode_manual``         ``migration_mode: manual`` and the request does not confirm it.
``pinned``              ``pinned_hosts`` names no candidate other than the source.
``hibernated``          a shut-off VM with a managed save image, which an offline move leaves behind.
``host_devices``        an active VM with assigned host devices that cannot migrate.
``failover_not_live``   a non-live move of a VM with SR-IOV failover primaries (QEMU would wait forever).
``persistence``         the request would leave a persistent VM transient, or its source definition behind.
``unsafe_cache``        an active VM with writable disks cached other than ``none``/``directsync``,
                        unless the request allows unsafe caches.
``tunnel_conflict``     a tunnelled move of an active VM whose policy libvirt refuses in a tunnel.
``storage``             with ``storage: copy`` or ``auto``, disks that cannot be copied or told shared (``storage.classify``).

Where the two callers deliberately differ, they map the same verdict differently; the rules are not
written twice:

* ``vm_migrate`` names the VM, which counts as confirmed (``mode_manual`` never fires); it asks for a
  live or paused move and may keep a transient VM transient. It refuses the move for the first finding
  (a ``PolicyError``, or a ``DuplicateVmError`` for ``duplicate``, with ``rule`` in its details),
  except ``unreadable_settings``, which it reports as a warning and goes on with the VM's readable
  settings (an unreadable mode or pinning makes the mode ``none``, so that VM is refused as ``mode_none``).
* An evacuation blocks a VM for ``unreadable_settings``, and for every finding outside
  :data:`NOT_MIGRATABLE`. A VM whose first finding is in :data:`NOT_MIGRATABLE` is only not
  migratable: a shut-off one is kept on the source, a running one blocks the evacuation or is shut
  down (``non_migratable``) where ``vm_migrate`` refuses it.

Pure logic: no libvirt import.
"""

from __future__ import annotations

import dataclasses
import typing as t

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import placement
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import settings as vm_settings
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import storage
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.plan import LIVE, OFFLINE, PAUSED, Move, tunnel_conflicts
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.policy import Policy, PolicyError, default_timeout

RULES = (
    "duplicate",
    "unreadable_settings",
    "state",
    "invalid_settings",
    "mode_none",
    "mode_manual",
    "pinned",
    "hibernated",
    "host_devices",
    "failover_not_live",
    "persistence",
    "unsafe_cache",
    "tunnel_conflict",
    "storage",
)
# Rules that only make a VM not migratable: nothing is wrong with it, it just may not (or cannot) move
# as it is now. Under the others it cannot be planned at all.
NOT_MIGRATABLE = frozenset(("mode_none", "mode_manual", "pinned", "hibernated", "host_devices", "unsafe_cache", "storage"))
# Active VMs in these states cannot be migrated, and why (the clause follows "VM 'name' ").
UNMOVABLE_STATES = {
    "pmsuspended": "is pmsuspended: its guest suspended itself to RAM; wake it up first (virsh dompmwakeup)",
    "crashed": "has crashed and is kept for inspection (on_crash preserve): it is not migrated; dump or destroy it first",
}


def unsafe_disks(requirements: t.Mapping[str, t.Any]) -> t.Tuple[str, ...]:
    """The VM's writable disks whose cache mode is unsafe to migrate live, as ``target (cache=mode)``."""
    return tuple(
        "%s (cache=%s)" % (disk["target"], disk.get("cache") or "default") for disk in requirements.get("disks") or () if disk.get("unsafe_cache")
    )


def defined_elsewhere(uuid: t.Optional[str], source_uuid: t.Optional[str], hosts: t.Iterable[placement.HostState]) -> t.Tuple[str, ...]:
    """The reachable hosts other than the source that define ``uuid`` too (sorted names)."""
    return tuple(sorted(host.name for host in hosts if host.error is None and host.uuid != source_uuid and uuid in host.vm_uuids))


@dataclasses.dataclass(frozen=True)
class SourceHost:
    """The host a VM leaves. Its UUID is how placement recognises it among the candidates."""

    name: str
    uuid: str
    uri: t.Optional[str] = None


@dataclasses.dataclass
class VmToMove:
    """One VM as the rules see it.

    ``running`` means active (running or paused: it holds memory and migrates live); a shut-off VM
    must be ``persistent`` (libvirt forgets a transient domain when it stops). ``settings`` are its
    effective migration settings (``settings.effective``), ``setting_sources`` the level each came
    from when known. ``needs`` is what placement checks; when not given it is built from the name,
    memory, vCPUs and the settings' ``pinned_hosts``.
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
    # Other hosts on which the same UUID is defined too (a stale copy; see defined_elsewhere).
    duplicate_on: t.Tuple[str, ...] = ()
    # Assigned host devices that cannot migrate (vGPUs, PCI/USB/SCSI host devices, a VF without a failover pair).
    unmovable_devices: t.Tuple[str, ...] = ()
    # SR-IOV failover pairs (see plan.Move): bond pairs whose VF the runner replugs, primaries QEMU unplugs.
    bond_vfs: t.Tuple[str, ...] = ()
    failover_primaries: t.Tuple[str, ...] = ()
    # A shut-off VM with a managed save image (hibernated, see vm_hibernate): the image is local to the source.
    saved_image: bool = False
    # Writable disks with a cache mode unsafe for a live move (see unsafe_disks).
    unsafe_disks: t.Tuple[str, ...] = ()
    # Per effective setting, the level it came from (vm, cluster, global, default), when known.
    setting_sources: t.Dict[str, str] = dataclasses.field(default_factory=dict)
    # Its disks (domain.parse_requirements), and what libvirt says of their volumes on the source (storage.py):
    # needed only when the request copies disks (storage copy or auto).
    disks: t.Tuple[t.Mapping[str, t.Any], ...] = ()
    storage_facts: t.Optional[storage.SourceFacts] = None

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
        cls,
        facts: t.Mapping[str, t.Any],
        requirements: t.Mapping[str, t.Any],
        effective_settings: t.Mapping[str, t.Any],
        setting_sources: t.Optional[t.Mapping[str, str]] = None,
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
            unsafe_disks=unsafe_disks(requirements),
            setting_sources=dict(setting_sources or {}),
            disks=tuple(requirements.get("disks") or ()),
        )

    @classmethod
    def from_domain(
        cls,
        facts: t.Mapping[str, t.Any],
        requirements: t.Mapping[str, t.Any],
        cluster_policy: t.Optional[t.Mapping[str, t.Any]] = None,
        global_policy: t.Optional[t.Mapping[str, t.Any]] = None,
    ) -> "VmToMove":
        """The VM from ``domain.describe_domain`` facts and ``domain.parse_requirements``, its own settings
        inheriting from the cluster and global ones."""
        resolved = vm_settings.resolve(facts.get("migration_settings") or {}, cluster_policy, global_policy)
        effective = {name: entry["value"] for name, entry in resolved.items()}
        return cls.from_facts(facts, requirements, effective, {name: entry["source"] for name, entry in resolved.items()})

    @property
    def placement_needs(self) -> placement.VmNeeds:
        """What the destination must offer now: a shut-off VM (an offline move) holds no memory and no vCPUs."""
        needs = t.cast(placement.VmNeeds, self.needs)
        if self.running:
            return needs
        return dataclasses.replace(needs, memory_mib=0, vcpus=0)


@dataclasses.dataclass(frozen=True)
class MoveRequest:
    """What was asked, as far as the rules care.

    ``live``: an active VM moves live (else paused). ``confirmed``: VMs with ``migration_mode: manual``
    may move (``vm_migrate`` names the VM; an evacuation has ``include_manual``). ``persistent``: the
    VM is to be persistently defined on the destination (``None``: as it is now; a persistent VM stays
    persistent either way). ``guest_hooks``, ``timeout``, ``policy`` and ``overrides`` replace what the
    VM's settings and memory say when given.
    """

    live: bool = True
    confirmed: bool = False
    allow_unsafe_cache: bool = False
    tunnelled: bool = False
    persistent: t.Optional[bool] = None
    undefine_source: bool = True
    guest_hooks: t.Optional[bool] = None
    timeout: t.Optional[int] = None
    policy: t.Any = None
    overrides: t.Mapping[str, t.Any] = dataclasses.field(default_factory=dict)
    # Which disks move with the VM (storage.py): shared, copy or auto, and the cluster's shared storage for auto.
    storage: str = storage.SHARED
    shared_storage: t.Optional[str] = None
    # QEMU's own TLS, and a timeout that switches to post-copy: libvirt refuses a disk copy over TLS with post-copy.
    tls: bool = False
    timeout_post_copy: bool = False


@dataclasses.dataclass(frozen=True)
class Finding:
    """One rule that refuses the move: its id (one of :data:`RULES`), the sentence naming the VM, extra result keys."""

    rule: str
    message: str
    details: t.Mapping[str, t.Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What the rules say about one VM: how it would move, and every rule that refuses it (in :data:`RULES` order).

    ``policy`` is ``None`` only when the VM's settings cannot give one (``invalid_settings``).
    """

    vm: VmToMove
    priority: str
    kind: str
    policy: t.Optional[Policy]
    timeout_s: int
    guest_hooks: bool
    persistent: bool
    findings: t.Tuple[Finding, ...] = ()
    # The disks the move copies and those it leaves shared (None: storage=shared, nothing is copied).
    storage: t.Optional[storage.Classification] = None

    @property
    def ok(self) -> bool:
        """The VM may move."""
        return not self.findings

    @property
    def rule(self) -> t.Optional[str]:
        """The id of the first rule that refuses the move (``None`` when it may move)."""
        return self.findings[0].rule if self.findings else None

    @property
    def needs(self) -> placement.VmNeeds:
        """What the destination must offer (``placement.py`` checks it): the disks the move copies need not be visible there."""
        needs = self.vm.placement_needs
        if self.storage is None or not self.storage.copies:
            return needs
        return dataclasses.replace(needs, disk_paths=needs.disk_paths - self.storage.copied_paths)

    def refusal(self, ignore: t.Collection[str] = ()) -> t.Optional[Finding]:
        """The first finding whose rule is not in ``ignore``."""
        return next((finding for finding in self.findings if finding.rule not in ignore), None)

    def finding(self, rule: str) -> t.Optional[Finding]:
        """The finding of ``rule``, if it fired."""
        return next((finding for finding in self.findings if finding.rule == rule), None)


def _setting(vm: VmToMove, name: str) -> t.Any:
    value = vm.settings.get(name)
    if value is None or value == vm_settings.INHERIT:
        return vm_settings.DEFAULTS[name]
    return vm_settings.validate_value(name, value, "migration_settings")


def _level(vm: VmToMove, name: str) -> t.Optional[str]:
    source = vm.setting_sources.get(name)
    return "set at the %s level" % source if source else None


def _pinned_reason(vm: VmToMove, pinned: t.AbstractSet[str], source: SourceHost) -> str:
    if pinned == {source.name}:
        return "VM '%s' is pinned to %s, the host being evacuated, and to no other host" % (vm.name, source.name)
    return "VM '%s' is pinned to %s, and none of them is a candidate destination other than %s" % (vm.name, ", ".join(sorted(pinned)), source.name)


class Assessor:
    """Applies every rule to VMs leaving ``source`` under one ``request``; policies are resolved once per distinct setting.

    ``candidates`` are the names of the possible destinations (the source excluded) when known: the
    ``pinned`` rule needs them.
    """

    def __init__(self, request: MoveRequest, source: SourceHost, candidates: t.Optional[t.AbstractSet[str]] = None) -> None:
        self.request = request
        self.source = source
        self.candidates = candidates
        self._policies: t.Dict[str, Policy] = {}

    def _policy(self, vm: VmToMove) -> Policy:
        values = {name: vm.settings.get(name) for name in vm_settings.POLICY_SETTINGS}
        values = {name: None if value == vm_settings.INHERIT else value for name, value in values.items()}
        cache_key = repr(sorted(values.items()))
        policy = self._policies.get(cache_key)
        if policy is None:
            _setting(vm, "policy")
            policy = vm_settings.effective_policy(values, self.request.policy, self.request.overrides)
            self._policies[cache_key] = policy
        return policy

    def _origin(self, vm: VmToMove) -> str:
        if self.request.policy is not None:
            return "the task's policy"
        source = vm.setting_sources.get("policy")
        return "its policy setting (from the %s level)" % source if source else "its policy setting"

    def assess(self, vm: VmToMove) -> Verdict:
        """Every rule, in :data:`RULES` order, for ``vm``."""
        req = self.request
        found: t.List[Finding] = []

        def refuse(rule: str, message: str, **details: t.Any) -> None:
            found.append(Finding(rule, message, details))

        priority = vm.settings.get("priority")
        if priority not in vm_settings.PRIORITY_RANK:
            priority = vm_settings.DEFAULTS["priority"] if priority in (None, vm_settings.INHERIT) else str(priority)
        kind = (LIVE if req.live else PAUSED) if vm.running else OFFLINE
        if vm.duplicate_on:
            refuse(
                "duplicate",
                "VM '%s' (UUID %s) is defined on %s and also on %s: refusing to move it, since two definitions could both be "
                "started; remove the stale copy first" % (vm.name, vm.uuid, self.source.name, ", ".join(vm.duplicate_on)),
                uuid=vm.uuid,
                hosts=[self.source.name] + list(vm.duplicate_on),
            )
        if vm.settings_problems:
            problems = vm_settings.describe_problems(vm.settings_problems)
            refuse("unreadable_settings", "VM '%s' has migration settings that cannot be read: %s" % (vm.name, problems))
        if vm.running and vm.state in UNMOVABLE_STATES:
            refuse("state", "VM '%s' %s" % (vm.name, UNMOVABLE_STATES[vm.state]), state=vm.state)
        mode = policy = None
        try:
            _setting(vm, "priority")
            mode = _setting(vm, "migration_mode")
            policy = self._policy(vm)
        except (vm_settings.SettingsError, PolicyError) as exc:
            refuse("invalid_settings", "VM '%s' has migration settings the plan cannot use: %s" % (vm.name, exc.msg))
        if mode == "none":
            unreadable = vm.settings_problems.keys() & set(vm_settings.MOVABILITY_SETTINGS + (vm_settings.WHOLE_METADATA,))
            if unreadable:
                why: t.Optional[str] = "its migration mode or pinning cannot be read (%s)" % vm_settings.describe_problems(vm.settings_problems)
            else:
                why = _level(vm, "migration_mode")
            refuse("mode_none", "VM '%s' has migration_mode 'none'%s: it is never migrated" % (vm.name, " (%s)" % why if why else ""))
        elif mode == "manual" and not req.confirmed:
            why = _level(vm, "migration_mode")
            refuse(
                "mode_manual",
                "VM '%s' has migration_mode 'manual'%s: it migrates only when confirmed, and include_manual is not set"
                % (vm.name, " (%s)" % why if why else ""),
            )
        pinned = t.cast(placement.VmNeeds, vm.needs).pinned_hosts
        if pinned and self.candidates is not None and not pinned & self.candidates:
            refuse("pinned", _pinned_reason(vm, pinned, self.source), pinned_hosts=sorted(pinned))
        if not vm.running and vm.saved_image:
            refuse(
                "hibernated",
                "VM '%s' is hibernated: its memory is saved in a managed save image on %s, which an offline move would leave "
                "behind (and the VM would boot afresh on the destination); restore it first (virtops.migration.vm_hibernate "
                "state=running)" % (vm.name, self.source.name),
            )
        if vm.running and vm.unmovable_devices:
            refuse(
                "host_devices",
                "VM '%s' uses assigned host device(s) that cannot migrate: %s; detach them first, or shut the VM down and move it "
                "offline (only its definition moves)" % (vm.name, "; ".join(vm.unmovable_devices)),
                devices=list(vm.unmovable_devices),
            )
        if kind == PAUSED and vm.failover_primaries:
            refuse(
                "failover_not_live",
                "VM '%s' has SR-IOV failover primary device(s) (%s): a non-live move pauses the vCPUs before QEMU asks the guest to "
                "release them, and waits forever; migrate it live (live=true), or detach the primary first" % (vm.name, ", ".join(vm.failover_primaries)),
                devices=list(vm.failover_primaries),
            )
        if vm.persistent and req.persistent is False:
            refuse(
                "persistence",
                "VM '%s' is persistent: persistent=false would leave it defined nowhere but in the destination's memory "
                "(or, with undefine_source=false, defined on the source while it runs elsewhere); a persistent VM moves as a persistent VM" % vm.name,
            )
        elif vm.persistent and not req.undefine_source:
            refuse(
                "persistence",
                "VM '%s' is persistent: undefine_source=false would leave a second, shut-off definition on %s while it runs on the "
                "destination, which a later start would run twice; the source definition is always removed for a persistent VM" % (vm.name, self.source.name),
            )
        if vm.running and vm.unsafe_disks and not req.allow_unsafe_cache:
            refuse(
                "unsafe_cache",
                "VM '%s' has disks with a cache mode other than 'none' or 'directsync', unsafe to migrate live: %s; "
                "set allow_unsafe_cache=true to migrate anyway" % (vm.name, ", ".join(vm.unsafe_disks)),
                disks=list(vm.unsafe_disks),
            )
        conflicts = tunnel_conflicts(policy) if policy is not None and vm.running and req.tunnelled else []
        if conflicts:
            refuse(
                "tunnel_conflict",
                "VM '%s' cannot migrate with tunnelled=true: %s, policy '%s', has %s; give it a policy without post-copy or "
                "parallel connections, or migrate without tunnelled" % (vm.name, self._origin(vm), t.cast(Policy, policy).name, "; ".join(conflicts)),
                conflicts=conflicts,
            )
        classified = None
        if req.storage != storage.SHARED:
            post_copy = bool(policy is not None and policy.post_copy) or req.timeout_post_copy
            classified = storage.classify(
                vm.name,
                vm.disks,
                vm.storage_facts or storage.SourceFacts(),
                req.storage,
                req.shared_storage,
                running=vm.running,
                tunnelled=req.tunnelled and vm.running,
                post_copy_over_tls=req.tls and post_copy,
            )
            if classified.refusals:
                refuse(storage.RULE, "; ".join(classified.refusals), storage_problems=list(classified.refusals))
        return Verdict(
            vm=vm,
            priority=priority,
            kind=kind,
            policy=policy,
            timeout_s=req.timeout if req.timeout is not None else default_timeout(vm.memory_mib),
            guest_hooks=req.guest_hooks if req.guest_hooks is not None else vm.settings.get("guest_hooks") is True,
            persistent=vm.persistent or bool(req.persistent),
            findings=tuple(found),
            storage=classified,
        )


def move_for(
    verdict: Verdict, source: SourceHost, destination: t.Optional[placement.HostState] = None, copies: t.Optional[storage.CopyPlan] = None
) -> Move:
    """The move the job runner carries out for a VM the rules let move (``destination`` unknown yet: empty).

    ``copies``: the disks the move copies onto ``destination`` (``storage.plan_for``); their copy
    extends the job's timeout (``storage.copy_timeout``).
    """
    vm = verdict.vm
    if verdict.policy is None:
        why = t.cast(Finding, verdict.finding("invalid_settings"))
        raise PolicyError("VM '%s' has no usable migration policy: %s" % (vm.name, why.message), vm=vm.name, rule=why.rule)
    return Move(
        vm=vm.name,
        uuid=vm.uuid,
        priority=verdict.priority,
        memory_mib=vm.memory_mib,
        vcpus=vm.vcpus,
        source=source.name,
        source_uri=source.uri,
        destination=destination.name if destination is not None else "",
        destination_uri=destination.uri if destination is not None else "",
        kind=verdict.kind,
        policy=verdict.policy,
        persistent=verdict.persistent,
        state=vm.state,
        timeout_s=storage.copy_timeout(verdict.timeout_s, copies) if vm.running else verdict.timeout_s,
        bond_vfs=vm.bond_vfs if vm.running else (),
        failover_primaries=vm.failover_primaries if vm.running else (),
        guest_hooks=verdict.guest_hooks,
        copy_disks=verdict.storage.targets if verdict.storage is not None and vm.running else (),
    )
