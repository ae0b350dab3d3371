# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one assessor (``rules.py``): each rule on its own, and the same VM through both planners.

``vm_migrate`` (``VmMigration`` in check mode) and an evacuation (``HostMaintenance`` planning in
check mode) read the same fake VM from the same fake cluster and must reach the same rule; only
what they do with it differs (``vm_migrate`` refuses, the evacuation blocks, keeps or shuts down).
"""

from __future__ import annotations

import dataclasses
import typing as t
from pathlib import Path

import libvirt
import pytest

from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration import maintenance as mt
from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration import vm_migration
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import domain as domxml
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import evacuation as ev
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import mark as mk
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import metadata as md
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import requests as rq
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import placement as pl
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import rules
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import settings as st
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import MigrationError
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.plan import Candidate, RunOptions
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.policy import base_policy, default_timeout
from libvirt_fakes import HV1_UUID, HV2_UUID, TEAMING_PAIR, USB_HOSTDEV, FakeCluster, FakeDomain, host_state

SOURCE_URI = "qemu+tls://hv1/system"
DEST_URI = "qemu+tls://hv2/system"
VM_UUID = "4a0a3ad4-0d5b-4d47-9a6a-3b8a2f1c9e01"
RUNNING = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED)
SHUT_OFF = (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN)
HIBERNATED = (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SAVED)
PMSUSPENDED = (libvirt.VIR_DOMAIN_PMSUSPENDED, 0)

WRITEBACK_DISK = (
    "<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='writeback'/>"
    "<source file='/var/lib/libvirt/images/web1-data.qcow2'/><target dev='vdb' bus='virtio'/></disk>"
)
# Metadata a release cannot read: a priority written by hand.
BAD_PRIORITY = "<virtops:migration xmlns:virtops='%s'><priority>urgent</priority></virtops:migration>" % md.NAMESPACE_URI


def domain_xml(devices: str = "", metadata: str = "") -> str:
    return (
        "<domain type='kvm'><name>web1</name><uuid>%s</uuid>%s<memory unit='MiB'>1024</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os><devices>%s</devices></domain>"
        % (VM_UUID, "<metadata>%s</metadata>" % metadata if metadata else "", devices)
    )


@dataclasses.dataclass
class Case:
    """One VM on hv1 and what is asked of it; ``asked`` applies to both planners' requests."""

    rule: t.Optional[str]
    settings: t.Dict[str, t.Any] = dataclasses.field(default_factory=dict)
    metadata: str = ""
    devices: str = ""
    state: t.Tuple[int, int] = RUNNING
    saved_image: bool = False
    copy_on_hv2: bool = False
    asked: t.Dict[str, t.Any] = dataclasses.field(default_factory=dict)
    # Only vm_migrate's request (live, persistent) or only the evacuation's (include_manual, non_migratable).
    vm_migrate: t.Dict[str, t.Any] = dataclasses.field(default_factory=dict)
    evacuation: t.Dict[str, t.Any] = dataclasses.field(default_factory=dict)


CASES = {
    "duplicate": Case("duplicate", copy_on_hv2=True),
    "unreadable_settings": Case("unreadable_settings", metadata=BAD_PRIORITY),
    "state": Case("state", state=PMSUSPENDED),
    "invalid_settings": Case("invalid_settings", settings={"policy": {"based_on": "legacy", "parallel_connections": 4}, "compression": ["xbzrle"]}),
    "mode_none": Case("mode_none", settings={"migration_mode": "none"}),
    "pinned": Case("pinned", settings={"pinned_hosts": ["hv9"]}),
    "hibernated": Case("hibernated", state=HIBERNATED, saved_image=True),
    "host_devices": Case("host_devices", devices=USB_HOSTDEV),
    "unsafe_cache": Case("unsafe_cache", devices=WRITEBACK_DISK),
    "tunnel_conflict": Case("tunnel_conflict", asked={"tunnelled": True, "cluster_policy": {"policy": "post_copy"}}),
}


class Outcome(t.NamedTuple):
    rule: t.Optional[str]
    # vm_migrate: refused, warned (moves with a warning) or moves; evacuation: blocked, kept, shutdown, moves or unplaceable.
    action: str
    message: str


@pytest.fixture
def cluster(sample: t.Callable[[str], str], monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    hosts = FakeCluster(sample("capabilities-qemu.xml"))
    hosts.add_host(SOURCE_URI, "hv1", HV1_UUID)
    hosts.add_host(DEST_URI, "hv2", HV2_UUID)
    monkeypatch.setattr(vm_migration, "libvirt_connection", hosts.connect)
    monkeypatch.setattr(mt.HostMaintenance, "connect", lambda _self, uri, connect_timeout=None: hosts.connect(uri))
    monkeypatch.setattr(mt, "hook_status", lambda **_kwargs: {"path": mk.HOOK_PATH, "installed": True, "loaded": True})
    return hosts


def put_vm(cluster: FakeCluster, case: Case) -> None:
    metadata = case.metadata or (md.render(case.settings) if case.settings else "")
    dom = FakeDomain(domain_xml(case.devices, metadata), case.state)
    dom.saved_image = case.saved_image  # type: ignore[attr-defined]
    cluster.hosts[SOURCE_URI].domains.append(dom)
    if case.copy_on_hv2:
        cluster.hosts[DEST_URI].domains.append(FakeDomain(domain_xml(), SHUT_OFF))


def through_vm_migrate(case: Case, tmp_path: Path) -> Outcome:
    asked = dict(case.asked, **case.vm_migrate)
    run_fields = {name: asked.pop(name) for name in ("tunnelled", "undefine_source") if name in asked}
    run = RunOptions(poll_interval=0.01, state_dir=str(tmp_path / "state"), **run_fields)
    request = rq.MigrateRequest(
        vm="web1", source_uri=SOURCE_URI, candidates=[Candidate(uri=DEST_URI)], policy=base_policy(None), options=run, **asked
    )
    migration = vm_migration.VmMigration(request)
    try:
        result = migration.migrate(check_mode=True)
    except MigrationError as exc:
        if "rule" in exc.details:
            return Outcome(exc.details["rule"], "refused", exc.msg)
        # Refused past the rules (placement): what the rules said is on the run.
        assert migration.verdict is not None, exc.msg
        return Outcome(migration.verdict.rule, "unplaceable", exc.msg)
    assert migration.verdict is not None
    warnings = result.get("warnings") or []
    return Outcome(migration.verdict.rule, "warned" if warnings else "moves", " ".join(warnings))


def through_evacuation(case: Case, tmp_path: Path) -> Outcome:
    asked = dict(case.asked, **case.evacuation)
    request = mt.MaintenanceRequest(
        uri=SOURCE_URI,
        state="maintenance",
        candidates=[Candidate(uri=DEST_URI)],
        state_dir=str(tmp_path / "state"),
        log_dir=str(tmp_path / "log"),
        **asked,
    )
    try:
        plan = mt.HostMaintenance(request).maintenance(check_mode=True)["plan"]
    except MigrationError as exc:
        plan = exc.details["plan"]
    for action in ("blocked", "kept", "shutdown", "unplaceable"):
        for held in plan[action]:
            if held["vm"] == "web1":
                return Outcome(held.get("rule"), action, held["reason"])
    assert [move["vm"] for move in plan["moves"]] == ["web1"], plan
    return Outcome(None, "moves", "")


# -- the same VM through both planners


@pytest.mark.parametrize("name", sorted(CASES))
def test_both_planners_reach_the_same_rule(cluster: FakeCluster, tmp_path: Path, name: str) -> None:
    case = CASES[name]
    put_vm(cluster, case)
    migrate = through_vm_migrate(case, tmp_path)
    evacuate = through_evacuation(case, tmp_path)
    assert migrate.rule == evacuate.rule == case.rule, (migrate, evacuate)
    # One sentence per rule: what vm_migrate says is what the evacuation says.
    said = migrate.message[: -len(". Nothing was moved.")] if migrate.action == "refused" else migrate.message
    assert evacuate.message.startswith(said), (migrate.message, evacuate.message)
    if name == "unreadable_settings":
        # The deliberate difference: vm_migrate goes on with the readable settings and warns, an evacuation blocks.
        assert (migrate.action, evacuate.action) == ("warned", "blocked")
    else:
        assert migrate.action == "refused"
        assert evacuate.action == ("kept" if name == "hibernated" else "blocked")


@pytest.mark.parametrize("name", ["unsafe_cache", "tunnel_conflict", "mode_none", "host_devices"])
def test_both_planners_agree_when_no_rule_refuses(cluster: FakeCluster, tmp_path: Path, name: str) -> None:
    """The same VMs, with what the rule asks for given (or the setting undone): both let them move."""
    case = CASES[name]
    lifted = {
        "unsafe_cache": dataclasses.replace(case, asked={"allow_unsafe_cache": True}),
        "tunnel_conflict": dataclasses.replace(case, asked={"tunnelled": True}),
        "mode_none": dataclasses.replace(case, settings={"migration_mode": "auto"}),
        "host_devices": dataclasses.replace(case, state=SHUT_OFF),
    }[name]
    put_vm(cluster, lifted)
    migrate = through_vm_migrate(lifted, tmp_path)
    evacuate = through_evacuation(lifted, tmp_path)
    assert migrate.rule is None and evacuate.rule is None, (migrate, evacuate)


def test_a_manual_vm_moves_when_named_or_confirmed_and_is_held_otherwise(cluster: FakeCluster, tmp_path: Path) -> None:
    case = Case("mode_manual", settings={"migration_mode": "manual"})
    put_vm(cluster, case)
    # vm_migrate names the VM, which confirms it.
    assert through_vm_migrate(case, tmp_path).rule is None
    held = through_evacuation(case, tmp_path)
    assert (held.rule, held.action) == ("mode_manual", "blocked")
    assert "migration_mode 'manual' (set at the vm level)" in held.message
    assert through_evacuation(dataclasses.replace(case, evacuation={"include_manual": True}), tmp_path) == (None, "moves", "")
    shut = through_evacuation(dataclasses.replace(case, evacuation={"non_migratable": "shutdown"}), tmp_path)
    assert (shut.rule, shut.action) == ("mode_manual", "shutdown")


@pytest.mark.parametrize(
    "case",
    [
        Case("failover_not_live", devices=TEAMING_PAIR, vm_migrate={"live": False}),
        Case("persistence", vm_migrate={"persistent": False}),
        Case("persistence", vm_migrate={"undefine_source": False}),
    ],
    ids=["failover_not_live", "persistence", "persistence-undefine_source"],
)
def test_rules_only_vm_migrate_can_be_asked_to_break(cluster: FakeCluster, tmp_path: Path, case: Case) -> None:
    """An evacuation always moves live, keeps a persistent VM persistent and removes its source definition."""
    put_vm(cluster, case)
    migrate = through_vm_migrate(case, tmp_path)
    assert (migrate.rule, migrate.action) == (case.rule, "refused")
    evacuate = through_evacuation(case, tmp_path)
    assert evacuate.rule is None and evacuate.action in ("moves", "unplaceable"), evacuate


def test_an_evacuation_holds_a_vm_with_an_unsafe_cache_like_vm_migrate(cluster: FakeCluster, tmp_path: Path) -> None:
    case = dataclasses.replace(CASES["unsafe_cache"], evacuation={"non_migratable": "shutdown"})
    put_vm(cluster, case)
    held = through_evacuation(case, tmp_path)
    assert (held.rule, held.action) == ("unsafe_cache", "shutdown")
    assert "vdb (cache=writeback)" in held.message and "allow_unsafe_cache" in held.message


def test_vm_migrate_follows_a_running_migration_job_without_judging_the_vm_again(cluster: FakeCluster, tmp_path: Path) -> None:
    case = CASES["mode_none"]
    put_vm(cluster, case)
    dom = cluster.hosts[SOURCE_URI].domains[0]
    dom.job = {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "operation": libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT, "time_elapsed": 1000}
    request = rq.MigrateRequest(
        vm="web1", source_uri=SOURCE_URI, candidates=[Candidate(uri=DEST_URI)], policy=base_policy(None), options=RunOptions(state_dir=str(tmp_path / "state"))
    )
    migration = vm_migration.VmMigration(request)
    assert migration.migrate(check_mode=True)["adopted"] is True


# -- the assessor, rule by rule

SOURCE = rules.SourceHost("hv1", HV1_UUID, SOURCE_URI)


def vm(name: str = "web1", running: bool = True, **changes: t.Any) -> rules.VmToMove:
    settings = dict(st.DEFAULTS, **changes.pop("settings", {}))
    subject = rules.VmToMove(name, "uuid-" + name, 1024, 2, running, settings=settings)
    return dataclasses.replace(subject, **changes) if changes else subject


def assess(subject: rules.VmToMove, candidates: t.Optional[t.AbstractSet[str]] = frozenset({"hv2"}), **asked: t.Any) -> rules.Verdict:
    return rules.Assessor(rules.MoveRequest(**asked), SOURCE, candidates).assess(subject)


@pytest.mark.parametrize(
    "subject, asked, rule, fragment",
    [
        (vm(duplicate_on=("hv3",)), {}, "duplicate", "VM 'web1' (UUID uuid-web1) is defined on hv1 and also on hv3: refusing to move it"),
        (vm(settings_problems={"priority": "bad"}), {}, "unreadable_settings", "VM 'web1' has migration settings that cannot be read: bad"),
        (vm(state="pmsuspended"), {}, "state", "VM 'web1' is pmsuspended: its guest suspended itself to RAM"),
        (vm(state="crashed"), {}, "state", "VM 'web1' has crashed and is kept for inspection"),
        (vm(settings={"priority": "urgent"}), {}, "invalid_settings", "migration_settings.priority must be one of low, medium, high"),
        (vm(settings={"policy": "warp"}), {}, "invalid_settings", "unknown migration policy 'warp'"),
        (vm(settings={"migration_mode": "none"}), {}, "mode_none", "VM 'web1' has migration_mode 'none': it is never migrated"),
        (
            vm(settings={"migration_mode": "none"}, setting_sources={"migration_mode": "cluster"}),
            {},
            "mode_none",
            "migration_mode 'none' (set at the cluster level)",
        ),
        (
            vm(settings={"migration_mode": "none"}, settings_problems={"pinned_hosts": "bad pins"}),
            {"confirmed": True},
            "unreadable_settings",
            "cannot be read: bad pins",
        ),
        (vm(settings={"migration_mode": "manual"}), {}, "mode_manual", "it migrates only when confirmed"),
        (vm(settings={"pinned_hosts": ["hv1"]}), {}, "pinned", "VM 'web1' is pinned to hv1, the host being evacuated, and to no other host"),
        (vm(settings={"pinned_hosts": ["hv8", "hv9"]}), {}, "pinned", "pinned to hv8, hv9, and none of them is a candidate destination other than hv1"),
        (vm(running=False, saved_image=True), {}, "hibernated", "VM 'web1' is hibernated: its memory is saved in a managed save image on hv1"),
        (vm(unmovable_devices=("USB 0781:5567",)), {}, "host_devices", "uses assigned host device(s) that cannot migrate: USB 0781:5567"),
        (vm(failover_primaries=("ua-fo-vf",)), {"live": False}, "failover_not_live", "a non-live move pauses the vCPUs"),
        (vm(), {"persistent": False}, "persistence", "persistent=false would leave it defined nowhere"),
        (vm(), {"undefine_source": False}, "persistence", "undefine_source=false would leave a second, shut-off definition on hv1"),
        (vm(unsafe_disks=("vdb (cache=writeback)",)), {}, "unsafe_cache", "unsafe to migrate live: vdb (cache=writeback); set allow_unsafe_cache=true"),
        (vm(settings={"policy": "post_copy"}), {"tunnelled": True}, "tunnel_conflict", "its policy setting, policy 'post_copy', has post_copy: true"),
        (vm(), {"tunnelled": True, "policy": "post_copy"}, "tunnel_conflict", "the task's policy, policy 'post_copy'"),
        (
            vm(disks=({"target": "vda", "type": "file", "path": "/var/lib/libvirt/images/web1.qcow2"},)),
            {"storage": "auto"},
            "storage",
            "disk vda: cannot tell whether /var/lib/libvirt/images/web1.qcow2 is shared",
        ),
    ],
)
def test_each_rule(subject: rules.VmToMove, asked: t.Dict[str, t.Any], rule: str, fragment: str) -> None:
    verdict = assess(subject, **asked)
    assert rule in rules.RULES
    assert not verdict.ok and verdict.rule == rule
    assert fragment in verdict.findings[0].message and verdict.findings[0].message.startswith("VM 'web1' ")


@pytest.mark.parametrize(
    "subject, asked",
    [
        (vm(settings={"migration_mode": "manual"}), {"confirmed": True}),
        (vm(settings={"pinned_hosts": ["hv2", "hv9"]}), {}),
        (vm(saved_image=True), {}),  # running: no saved image to leave behind
        (vm(running=False, unmovable_devices=("USB",), unsafe_disks=("vdb (cache=writeback)",), failover_primaries=("fo",)), {"live": False}),
        (vm(unsafe_disks=("vdb (cache=writeback)",)), {"allow_unsafe_cache": True}),
        (vm(running=False, persistent=True, settings={"policy": "post_copy"}), {"tunnelled": True}),
        (vm(persistent=False), {"persistent": False, "undefine_source": False}),
        (vm(state="paused"), {}),
        (vm(running=False, state="crashed"), {}),
    ],
)
def test_no_rule_refuses(subject: rules.VmToMove, asked: t.Dict[str, t.Any]) -> None:
    verdict = assess(subject, **asked)
    assert verdict.ok and verdict.rule is None and verdict.refusal() is None, verdict.findings


def test_pinning_is_judged_only_against_known_candidates() -> None:
    assert assess(vm(settings={"pinned_hosts": ["hv9"]}), candidates=None).ok


def test_every_rule_that_fires_is_listed_in_order_and_the_first_decides() -> None:
    subject = vm(duplicate_on=("hv3",), settings={"migration_mode": "none"}, unsafe_disks=("vda (cache=unsafe)",), unmovable_devices=("USB",))
    verdict = assess(subject)
    assert [finding.rule for finding in verdict.findings] == ["duplicate", "mode_none", "host_devices", "unsafe_cache"]
    assert verdict.refusal(ignore={"duplicate", "mode_none"}) == verdict.finding("host_devices")
    assert verdict.finding("host_devices").details == {"devices": ["USB"]}  # type: ignore[union-attr]
    held = ["mode_none", "mode_manual", "pinned", "hibernated", "host_devices", "unsafe_cache", "storage"]
    assert [rule for rule in rules.RULES if rule in rules.NOT_MIGRATABLE] == held


@pytest.mark.parametrize(
    "running, live, kind, memory",
    [(True, True, "live", 1024), (True, False, "paused", 1024), (False, True, "offline", 0), (False, False, "offline", 0)],
)
def test_the_kind_of_move_and_an_offline_move_needs_no_memory(running: bool, live: bool, kind: str, memory: int) -> None:
    verdict = assess(vm(running=running), live=live)
    assert verdict.kind == kind
    assert (verdict.needs.memory_mib, verdict.needs.vcpus) == ((memory, 2) if memory else (0, 0))


def test_what_the_request_gives_replaces_what_the_vm_says() -> None:
    subject = vm(settings={"guest_hooks": True, "priority": "high", "policy": "post_copy", "bandwidth_mib": 100})
    plain = assess(subject)
    assert (plain.priority, plain.guest_hooks, plain.timeout_s, t.cast(t.Any, plain.policy).name) == ("high", True, default_timeout(1024), "post_copy")
    assert t.cast(t.Any, plain.policy).bandwidth_mib == 100
    asked = assess(subject, guest_hooks=False, timeout=42, policy="legacy", overrides={"max_downtime_ms": 700})
    assert (asked.guest_hooks, asked.timeout_s, t.cast(t.Any, asked.policy).name) == (False, 42, "legacy")
    assert t.cast(t.Any, asked.policy).bandwidth_mib != 100, "the task's policy replaces the VM's with its single settings"


def test_unknown_or_inherited_priority_counts_as_the_default() -> None:
    assert assess(vm(settings={"priority": "inherit"})).priority == "medium"
    assert assess(vm(settings={"priority": None})).priority == "medium"


@pytest.mark.parametrize("persistent, asked, expected", [(True, None, True), (False, None, False), (False, True, True), (False, False, False)])
def test_a_persistent_vm_stays_persistent_and_a_transient_one_as_asked(persistent: bool, asked: t.Optional[bool], expected: bool) -> None:
    assert assess(vm(persistent=persistent), persistent=asked).persistent is expected


def test_move_for_carries_the_verdict_to_the_runner() -> None:
    subject = vm(bond_vfs=("fo",), failover_primaries=("ua-fo-vf",), state="running", settings={"priority": "low"})
    destination = host_state("hv2")
    move = rules.move_for(assess(subject, guest_hooks=True), SOURCE, destination)
    assert (move.vm, move.uuid, move.priority, move.kind, move.source, move.source_uri) == ("web1", "uuid-web1", "low", "live", "hv1", SOURCE_URI)
    assert (move.destination, move.destination_uri, move.bond_vfs, move.failover_primaries, move.guest_hooks) == (
        "hv2",
        destination.uri,
        ("fo",),
        ("ua-fo-vf",),
        True,
    )
    offline = rules.move_for(assess(dataclasses.replace(subject, running=False)), SOURCE)
    assert (offline.kind, offline.destination, offline.bond_vfs, offline.failover_primaries) == ("offline", "", (), ())


def test_move_for_refuses_a_verdict_without_a_policy() -> None:
    with pytest.raises(MigrationError, match="VM 'web1' has no usable migration policy: .*unknown migration policy 'warp'"):
        rules.move_for(assess(vm(settings={"policy": "warp"})), SOURCE)


def test_the_vm_from_its_domain_knows_its_unsafe_disks_and_where_each_setting_came_from() -> None:
    xml = domain_xml(WRITEBACK_DISK, md.render({"migration_mode": "manual"}))
    facts = domxml.parse_domain_xml(xml)
    facts.update(active=True, persistent=True, state="running")
    subject = rules.VmToMove.from_domain(facts, domxml.parse_requirements(xml), {"priority": "high"}, {"policy": "legacy"})
    assert subject.unsafe_disks == ("vdb (cache=writeback)",)
    assert {name: subject.setting_sources[name] for name in ("migration_mode", "priority", "policy", "guest_hooks")} == {
        "migration_mode": "vm",
        "priority": "cluster",
        "policy": "global",
        "guest_hooks": "default",
    }
    assert (subject.settings["migration_mode"], subject.settings["priority"], subject.settings["policy"]) == ("manual", "high", "legacy")


def test_defined_elsewhere_skips_the_source_and_unreadable_hosts() -> None:
    hosts = [
        host_state("hv2", vm_uuids=frozenset({VM_UUID})),
        host_state("hv3", vm_uuids=frozenset({VM_UUID}), error="connection refused"),
        host_state("hv1-alias", uuid=HV1_UUID, vm_uuids=frozenset({VM_UUID})),
        host_state("hv4"),
    ]
    assert rules.defined_elsewhere(VM_UUID, HV1_UUID, hosts) == ("hv2",)


def test_the_evacuation_plan_names_the_rule_of_each_held_vm() -> None:
    held = [vm("a", settings={"migration_mode": "none"}), vm("b", running=False, saved_image=True), vm("c", unsafe_disks=("vda (cache=writeback)",))]
    plan = ev.plan_evacuation(held + [vm("d")], [host_state("hv2", 65536, uuid=HV2_UUID)], SOURCE, non_migratable="shutdown")
    data = plan.as_dict()
    assert [(entry["vm"], entry["rule"]) for entry in data["shutdown"]] == [("a", "mode_none"), ("c", "unsafe_cache")]
    assert [(entry["vm"], entry["rule"]) for entry in data["kept"]] == [("b", "hibernated")]
    assert [move["vm"] for move in data["moves"]] == ["d"]
    allowed = ev.plan_evacuation(held, [host_state("hv2", 65536, uuid=HV2_UUID)], SOURCE, request=rules.MoveRequest(allow_unsafe_cache=True))
    assert [move.vm for move in allowed.moves] == ["c"] and allowed.moves[0].kind == "live"


def test_the_evacuation_takes_the_guest_hooks_and_tunnel_of_its_request() -> None:
    hooked = vm("a", settings={"guest_hooks": True})
    plan = ev.plan_evacuation([hooked, vm("b")], [host_state("hv2", 65536)], SOURCE, request=rules.MoveRequest(guest_hooks=False, tunnelled=True))
    assert plan.tunnelled is True and [move.guest_hooks for move in plan.moves] == [False, False]
    assert [move.guest_hooks for move in ev.plan_evacuation([hooked], [host_state("hv2")], SOURCE).moves] == [True]


def test_the_placement_needs_are_what_placement_checks() -> None:
    subject = vm(running=False, settings={"pinned_hosts": ["hv2"]})
    needs = assess(subject).needs
    assert needs == pl.VmNeeds(name="web1", memory_mib=0, vcpus=0, pinned_hosts=frozenset({"hv2"}))
