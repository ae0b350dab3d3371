"""Evacuation planning and the execution queue (pure logic)."""

from __future__ import annotations

import dataclasses

import random
import typing as t

import pytest

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import affinity as af
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import domain as domxml
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import evacuation as ev
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import placement as pl
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import settings as st
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import storage
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.rules import MoveRequest
from libvirt_fakes import host_state

SOURCE = ev.SourceHost(name="h1", uuid="uuid-h1", uri="qemu:///system")


host = host_state


def vm(
    name: str,
    memory: int = 1024,
    priority: str = "medium",
    mode: str = "auto",
    pinned: t.Sequence[str] = (),
    running: bool = True,
    vcpus: int = 1,
    networks: t.AbstractSet[str] = frozenset({"lab"}),
    **settings: t.Any,
) -> ev.VmToMove:
    values = st.effective({"priority": priority, "migration_mode": mode, "pinned_hosts": list(pinned), **settings})
    needs = pl.VmNeeds(name=name, memory_mib=memory, vcpus=vcpus, networks=frozenset(networks), pinned_hosts=frozenset(pinned))
    return ev.VmToMove(name, "uuid-" + name, memory, vcpus, running, True, values, needs)


def plan(vms: t.Sequence[ev.VmToMove], hosts: t.Sequence[pl.HostState], **kwargs: t.Any) -> ev.EvacuationPlan:
    return ev.plan_evacuation(vms, [host("h1")] + list(hosts), SOURCE, **kwargs)


def moves(result: ev.EvacuationPlan) -> t.List[t.Tuple[str, str]]:
    return [(move.vm, move.destination) for move in result.moves]


# -- building a VM from its facts


def test_from_facts_takes_needs_from_requirements_and_effective_settings() -> None:
    facts = {"name": "db1", "uuid": "u-db1", "memory_mib": 4096, "vcpus": 4, "active": False, "persistent": True}
    requirements = {
        "networks": ["lab", "storage"],
        "bridges": ["br0"],
        "disks": [
            {"path": "/shared/db1.qcow2", "shared_storage": True},
            {"path": "/dev/sdb", "shared_storage": False},
            {"path": None, "shared_storage": False},
        ],
    }
    effective = st.effective({"pinned_hosts": ["h3", "h2"], "priority": "high"})
    subject = ev.VmToMove.from_facts(facts, requirements, effective)
    assert (subject.name, subject.uuid, subject.memory_mib, subject.vcpus, subject.running, subject.persistent) == ("db1", "u-db1", 4096, 4, False, True)
    assert subject.settings["priority"] == "high"
    assert subject.needs == pl.VmNeeds(
        name="db1",
        memory_mib=4096,
        vcpus=4,
        networks=frozenset({"lab", "storage"}),
        bridges=frozenset({"br0"}),
        disk_paths=frozenset({"/shared/db1.qcow2"}),
        pinned_hosts=frozenset({"h2", "h3"}),
    )
    # Shut off: placement is asked for no memory and no vCPUs.
    assert (subject.placement_needs.memory_mib, subject.placement_needs.vcpus) == (0, 0)


def test_needs_default_from_fields_and_settings() -> None:
    subject = ev.VmToMove("web1", memory_mib=512, vcpus=2, settings={"pinned_hosts": "h4"})
    assert subject.needs == pl.VmNeeds(name="web1", memory_mib=512, vcpus=2, pinned_hosts=frozenset({"h4"}))


# -- order and placement


@pytest.mark.parametrize(
    "vms, expected",
    [
        ([vm("a", priority="low"), vm("b", priority="high"), vm("c", priority="medium")], ["b", "c", "a"]),
        ([vm("a", 512, "high"), vm("b", 4096, "low"), vm("c", 2048, "high")], ["c", "a", "b"]),
        # Same priority: larger memory first, then name.
        ([vm("b", 1024), vm("a", 1024), vm("c", 2048)], ["c", "a", "b"]),
        ([vm("z", 1024, "high"), vm("y", 1024, "high"), vm("x", 8192, "low")], ["y", "z", "x"]),
    ],
)
def test_order_priority_then_memory_then_name(vms: t.List[ev.VmToMove], expected: t.List[str]) -> None:
    result = plan(vms, [host("h2", 65536), host("h3", 65536)])
    assert [move.vm for move in result.moves] == expected
    assert result.ok


def test_unknown_or_inherited_priority_sorts_as_default() -> None:
    plain = ev.VmToMove("a", "ua", 1024, settings={"priority": None})
    inherited = ev.VmToMove("b", "ub", 1024, settings={"priority": "inherit"})
    result = plan([vm("c", priority="low"), inherited, plain, vm("d", priority="high")], [host("h2", 65536)])
    assert [(move.vm, move.priority) for move in result.moves] == [("d", "high"), ("a", "medium"), ("b", "medium"), ("c", "low")]


def test_pending_load_spreads_the_vms() -> None:
    result = plan([vm("v%d" % index, 1024) for index in range(6)], [host("h2", 8192), host("h3", 6144)])
    assert moves(result) == [("v0", "h2"), ("v1", "h2"), ("v2", "h3"), ("v3", "h2"), ("v4", "h3"), ("v5", "h2")]
    assert {name: load.available_mib_after for name, load in result.load.items()} == {"h2": 4096, "h3": 4096}


def test_equal_memory_goes_to_fewest_vcpus_including_planned() -> None:
    result = plan([vm("a", 1024, vcpus=4), vm("b", 1024, vcpus=1)], [host("h2", 5120, vcpus=2), host("h3", 4096, vcpus=3)])
    # a: h2 (more free). b: h2 and h3 both 4096 free; h2 now has 2+4 vCPUs, h3 3: h3.
    assert moves(result) == [("a", "h2"), ("b", "h3")]
    assert (result.load["h2"].vcpus, result.load["h3"].vcpus) == (4, 1)


def test_pinning_restricts_destinations() -> None:
    result = plan([vm("db1", pinned=["h3", "h4"]), vm("db2", pinned=["h4"])], [host("h2", 65536), host("h3", 2048), host("h4", 4096)])
    assert moves(result) == [("db1", "h4"), ("db2", "h4")]


@pytest.mark.parametrize(
    "pinned, fragment",
    [
        (["h1"], "VM 'db1' is pinned to h1, the host being evacuated, and to no other host"),
        (["h8", "h9"], "VM 'db1' is pinned to h8, h9, and none of them is a candidate destination other than h1"),
        (["h1", "h9"], "VM 'db1' is pinned to h1, h9, and none of them is a candidate destination other than h1"),
    ],
)
def test_pinned_to_no_other_candidate_is_not_migratable(pinned: t.List[str], fragment: str) -> None:
    result = plan([vm("db1", pinned=pinned)], [host("h2")])
    assert not result.ok and not result.moves
    assert len(result.blocked) == 1 and result.blocked[0].reason.startswith(fragment)
    shut = plan([vm("db1", pinned=pinned)], [host("h2")], non_migratable="shutdown")
    assert shut.ok and [held.vm for held in shut.shutdown] == ["db1"]


def test_pinned_to_a_candidate_that_cannot_take_it_is_unplaceable() -> None:
    result = plan([vm("db1", pinned=["h3"])], [host("h2"), host("h3", maintenance=True)])
    assert not result.blocked
    assert [held.vm for held in result.unplaceable] == ["db1"]
    assert "h3 is in maintenance" in result.unplaceable[0].reason


@pytest.mark.parametrize(
    "mode, running, include_manual, non_migratable, outcome",
    [
        ("none", True, False, "fail", "blocked"),
        ("none", True, True, "fail", "blocked"),
        ("none", True, False, "shutdown", "shutdown"),
        ("none", True, True, "shutdown", "shutdown"),
        ("manual", True, False, "fail", "blocked"),
        ("manual", True, True, "fail", "moves"),
        ("manual", True, False, "shutdown", "shutdown"),
        ("manual", True, True, "shutdown", "moves"),
        ("auto", True, False, "fail", "moves"),
        ("auto", True, False, "shutdown", "moves"),
        # Shut off and not migratable: stays defined on the source, blocks nothing.
        ("none", False, False, "fail", "kept"),
        ("none", False, True, "shutdown", "kept"),
        ("manual", False, False, "fail", "kept"),
        ("manual", False, True, "fail", "moves"),
        ("auto", False, False, "fail", "moves"),
    ],
)
def test_migration_modes(mode: str, running: bool, include_manual: bool, non_migratable: str, outcome: str) -> None:
    result = plan([vm("app", mode=mode, running=running)], [host("h2")], include_manual=include_manual, non_migratable=non_migratable)
    held = {"blocked": result.blocked, "shutdown": result.shutdown, "kept": result.kept}
    counts = dict({name: len(entries) for name, entries in held.items()}, moves=len(result.moves))
    assert counts == {name: int(name == outcome) for name in counts}
    assert result.ok is (outcome != "blocked")
    if outcome in held:
        reason = held[outcome][0].reason
        assert reason.startswith("VM 'app' ") and "migration_mode '%s'" % mode in reason
    if outcome == "shutdown":
        assert reason.endswith("it is shut down and started again when h1 is activated")
    if outcome == "kept":
        assert reason.endswith("it is shut off and stays defined on h1")


@pytest.mark.parametrize(
    "settings, fragment",
    [
        ({"priority": "urgent"}, "migration_settings.priority must be one of low, medium, high or inherit, got 'urgent'"),
        ({"migration_mode": "sometimes"}, "migration_settings.migration_mode must be one of auto, manual, none or inherit"),
        ({"policy": "warp"}, "unknown migration policy 'warp'"),
        ({"bandwidth_mib": -5}, "bandwidth_mib must be positive"),
    ],
)
@pytest.mark.parametrize("running", [True, False])
def test_unusable_settings_always_block(settings: t.Dict[str, t.Any], fragment: str, running: bool) -> None:
    values = dict(st.DEFAULTS, **settings)
    bad = ev.VmToMove("odd", "u-odd", 1024, running=running, settings=values)
    result = plan([bad, vm("fine")], [host("h2", networks=frozenset({"lab"}))], non_migratable="shutdown", include_manual=True)
    assert [move.vm for move in result.moves] == ["fine"]
    assert len(result.blocked) == 1 and not result.ok
    assert result.blocked[0].reason.startswith("VM 'odd' has migration settings the plan cannot use: ")
    assert fragment in result.blocked[0].reason


@pytest.mark.parametrize(
    "mode, include_manual",
    [("none", False), ("manual", False), ("none", True)],
)
def test_a_running_transient_vm_is_never_shut_down(mode: str, include_manual: bool) -> None:
    # libvirt forgets a transient VM when it stops: shutting it down would destroy it.
    transient = dataclasses.replace(vm("scratch", mode=mode), persistent=False)
    result = plan([transient, vm("lic1", mode="none")], [host("h2")], non_migratable="shutdown", include_manual=include_manual)
    assert not result.ok and not result.moves
    assert [held.vm for held in result.blocked] == ["scratch"]
    assert [held.vm for held in result.shutdown] == ["lic1"]
    reason = result.blocked[0].reason
    assert reason.startswith("VM 'scratch' ") and "migration_mode '%s'" % mode in reason
    assert reason.endswith("it is transient, and shutting it down would destroy it, so it blocks the evacuation")


def test_a_running_transient_vm_that_may_migrate_moves_live() -> None:
    transient = dataclasses.replace(vm("scratch"), persistent=False)
    result = plan([transient], [host("h2")], non_migratable="shutdown")
    assert moves(result) == [("scratch", "h2")] and result.moves[0].kind == "live"
    assert result.moves[0].persistent is False, "a transient VM stays transient on the destination"


@pytest.mark.parametrize("running, kind", [(True, "live"), (False, "offline")])
def test_a_persistent_vm_moves_as_a_persistent_vm(running: bool, kind: str) -> None:
    result = plan([vm("db1", running=running)], [host("h2")])
    assert [(move.vm, move.kind, move.persistent) for move in result.moves] == [("db1", kind, True)]


@pytest.mark.parametrize("running", [True, False])
@pytest.mark.parametrize("non_migratable", ["fail", "shutdown"])
def test_a_vm_defined_on_another_host_too_is_blocked(running: bool, non_migratable: str) -> None:
    twin = dataclasses.replace(vm("db1", running=running), duplicate_on=("h3", "h4"))
    result = plan([twin, vm("web1")], [host("h2", 65536), host("h3", 65536)], non_migratable=non_migratable)
    assert moves(result) == [("web1", "h2")]
    assert [held.vm for held in result.blocked] == ["db1"] and not result.ok
    assert result.blocked[0].reason.startswith("VM 'db1' (UUID uuid-db1) is defined on h1 and also on h3, h4: refusing to move it")


@pytest.mark.parametrize("running", [True, False])
@pytest.mark.parametrize("mode", ["auto", "none"])
def test_unreadable_own_settings_block_whatever_else_they_say(running: bool, mode: str) -> None:
    # What host_maintenance builds for a VM whose metadata has a bad priority (settings.readable).
    problems = {"priority": "metadata.priority must be one of low, medium, high or inherit, got 'urgent'"}
    odd = dataclasses.replace(vm("odd", mode=mode, running=running), settings_problems=problems)
    result = plan([odd, vm("fine")], [host("h2")], non_migratable="shutdown", include_manual=True)
    assert moves(result) == [("fine", "h2")]
    assert [held.vm for held in result.blocked] == ["odd"] and not result.shutdown and not result.kept
    assert result.blocked[0].reason == (
        "VM 'odd' has migration settings that cannot be read: metadata.priority must be one of low, medium, high or inherit, got 'urgent'"
    )


def test_from_facts_carries_state_and_settings_problems() -> None:
    facts = {
        "name": "odd",
        "uuid": "u-odd",
        "memory_mib": 512,
        "vcpus": 1,
        "active": True,
        "persistent": True,
        "state": "pmsuspended",
        "migration_settings_problems": {"pinned_hosts": "bad"},
    }
    subject = ev.VmToMove.from_facts(facts, {"networks": [], "bridges": [], "disks": []}, st.effective({"migration_mode": "none"}))
    assert (subject.state, subject.settings_problems, subject.duplicate_on) == ("pmsuspended", {"pinned_hosts": "bad"}, ())


@pytest.mark.parametrize(
    "state, fragment",
    [
        ("pmsuspended", "VM 'sleepy' is pmsuspended: its guest suspended itself to RAM; wake it up first"),
        ("crashed", "VM 'sleepy' has crashed and is kept for inspection (on_crash preserve): it is not migrated; dump or destroy it first"),
    ],
)
@pytest.mark.parametrize("non_migratable", ["fail", "shutdown"])
def test_pmsuspended_or_crashed_running_vms_are_blocked(state: str, fragment: str, non_migratable: str) -> None:
    stuck = dataclasses.replace(vm("sleepy"), state=state)
    result = plan([stuck, vm("fine")], [host("h2")], non_migratable=non_migratable)
    assert moves(result) == [("fine", "h2")]
    assert len(result.blocked) == 1 and result.blocked[0].reason.startswith(fragment)


@pytest.mark.parametrize("state", ["running", "paused", "idle", None])
def test_other_running_states_migrate(state: t.Optional[str]) -> None:
    result = plan([dataclasses.replace(vm("a"), state=state)], [host("h2")])
    assert moves(result) == [("a", "h2")] and result.ok


def test_policy_name_and_overrides_reach_the_move() -> None:
    result = plan([vm("a", policy="post_copy"), vm("b", policy="very_large_vms", bandwidth_mib=100)], [host("h2", 65536)])
    by_vm = {move.vm: move for move in result.moves}
    assert by_vm["a"].policy.name == "post_copy" and by_vm["a"].policy.post_copy
    assert by_vm["b"].policy.name == "very_large_vms" and by_vm["b"].policy.bandwidth_mib == 100


@pytest.mark.parametrize(
    "bad_host",
    [
        host("h2", 65536, maintenance=True),
        host("h2", 65536, error="connection refused"),
        host("h2", 65536, uuid="uuid-h1"),  # the source under another name
    ],
)
def test_unusable_hosts_never_chosen(bad_host: pl.HostState) -> None:
    result = plan([vm("a"), vm("b", running=False)], [bad_host, host("h3", 2048)])
    assert moves(result) == [("a", "h3"), ("b", "h3")]
    assert set(result.load) == {"h3"}


def test_unplaceable_names_every_host_and_reason() -> None:
    big = vm("big", 16384)
    odd = vm("odd", 512, networks={"lab", "storage"})
    result = plan([big, odd, vm("small", 512)], [host("h2", 4096), host("h3", 8192, error="timed out")])
    assert moves(result) == [("small", "h2")]
    assert not result.ok
    reasons = {held.vm: held.reason for held in result.unplaceable}
    assert reasons["big"].startswith("no host can take VM 'big': h1 is the source host itself")
    assert "h2 has 4096 MiB free after its reserve and planned migrations, the VM needs 16384 MiB" in reasons["big"]
    assert "h3 cannot be reached: timed out" in reasons["big"]
    assert "h2 lacks the active network(s) storage" in reasons["odd"]
    assert result.unplaceable[0].rejected["h3"] == ["cannot be reached: timed out"]
    assert result.problems() == [reasons["big"], reasons["odd"]]


def test_unplaceable_reason_counts_earlier_placements() -> None:
    result = plan([vm("a", 3072), vm("b", 2048)], [host("h2", 4096)])
    assert moves(result) == [("a", "h2")]
    assert "h2 has 1024 MiB free after its reserve and planned migrations, the VM needs 2048 MiB" in result.unplaceable[0].reason


def test_shut_off_vm_needs_no_memory_but_its_networks() -> None:
    result = plan([vm("off", 32768, running=False), vm("on", 1024)], [host("h3", 0), host("h4", 65536, networks=frozenset())])
    # The shut-off VM lands on a host with no free memory at all, not on one lacking its network.
    assert moves(result) == [("off", "h3")]
    assert (result.moves[0].kind, result.moves[0].memory_mib, result.moves[0].vcpus) == ("offline", 32768, 1)
    assert [held.vm for held in result.unplaceable] == ["on"]
    assert "h4 lacks the active network(s) lab" in result.unplaceable[0].reason
    assert (result.load["h3"].vms, result.load["h3"].memory_mib, result.load["h4"].vms) == (1, 0, 0)


def test_shut_off_vm_adds_no_pending_load() -> None:
    result = plan([vm("off", 4096, running=False), vm("on", 1024)], [host("h2", 4096), host("h3", 3072)])
    assert moves(result) == [("off", "h2"), ("on", "h2")]
    assert (result.load["h2"].vms, result.load["h2"].memory_mib, result.load["h2"].vcpus) == (2, 1024, 1)


def test_plan_as_dict_shape() -> None:
    vms = [vm("a", 2048, "high"), vm("b", running=False), vm("c", mode="none"), vm("d", mode="manual", running=False), vm("e", 99999)]
    result = plan(vms, [host("h2", 8192), host("h3", 4096, maintenance=True)], non_migratable="shutdown")
    data = result.as_dict()
    assert set(data) == {
        "source", "ok", "include_manual", "non_migratable", "tunnelled", "moves", "blocked", "shutdown", "kept", "unplaceable", "load", "summary"
    }
    assert data["source"] == {"name": "h1", "uuid": "uuid-h1", "uri": "qemu:///system"}
    assert data["ok"] is False and data["non_migratable"] == "shutdown" and data["include_manual"] is False and data["tunnelled"] is False
    assert data["moves"][0] == {
        "vm": "a",
        "uuid": "uuid-a",
        "priority": "high",
        "memory_mib": 2048,
        "vcpus": 1,
        "from": "h1",
        "from_uri": "qemu:///system",
        "to": "h2",
        "to_uri": "qemu+tcp://h2/system",
        "kind": "live",
        "policy": "minimal_downtime",
    }
    assert [(entry["vm"], entry["kind"]) for entry in data["moves"]] == [("a", "live"), ("b", "offline")]
    assert [entry["vm"] for entry in data["shutdown"]] == ["c"]
    assert [entry["vm"] for entry in data["kept"]] == ["d"]
    assert [entry["vm"] for entry in data["unplaceable"]] == ["e"]
    assert set(data["unplaceable"][0]) == {"vm", "uuid", "priority", "memory_mib", "running", "reason"}
    assert data["load"] == {
        "h2": {"uri": "qemu+tcp://h2/system", "vms": 2, "memory_mib": 2048, "vcpus": 1, "available_mib_before": 8192, "available_mib_after": 6144}
    }
    assert data["summary"] == {"moves": 2, "live": 1, "offline": 1, "blocked": 0, "shutdown": 1, "kept": 1, "unplaceable": 1}


def test_empty_host_plans_ok() -> None:
    result = plan([], [host("h2")])
    assert result.ok and result.as_dict()["summary"]["moves"] == 0


@pytest.mark.parametrize(
    "kwargs, vms, source, message",
    [
        ({"non_migratable": "ignore"}, [], SOURCE, "non_migratable must be one of fail, shutdown, got 'ignore'"),
        ({}, [], ev.SourceHost("h1", ""), "the UUID of host h1 is needed"),
        ({}, [ev.VmToMove("ghost", running=False, persistent=False)], SOURCE, "VM 'ghost' is neither running nor persistent"),
    ],
)
def test_refused_arguments(kwargs: t.Dict[str, t.Any], vms: t.List[ev.VmToMove], source: ev.SourceHost, message: str) -> None:
    with pytest.raises(ev.EvacuationError) as info:
        ev.plan_evacuation(vms, [host("h2")], source, **kwargs)
    assert message in info.value.msg


# -- the execution queue


# The queue's own limits are tested with a policy that allows many migrations at once.
ROOMY = st.effective_policy({}, {"name": "roomy", "max_concurrent": 10})


def move(name: str, destination: str, priority: str = "medium") -> ev.Move:
    return ev.Move(name, "uuid-" + name, priority, 1024, 1, "h1", None, destination, "qemu+tcp://%s/system" % destination, "live", ROOMY)


def start_all(queue: ev.EvacuationQueue) -> t.List[str]:
    started: t.List[str] = []
    while True:
        ready = queue.next_ready()
        if ready is None:
            return started
        queue.start(ready)
        started.append(ready.vm)


@pytest.mark.parametrize("max_outgoing, expected", [(1, ["a"]), (2, ["a", "b"]), (3, ["a", "b", "c"]), (5, ["a", "b", "c", "d"])])
def test_outgoing_limit(max_outgoing: int, expected: t.List[str]) -> None:
    queue = ev.EvacuationQueue([move(name, "h%d" % index) for index, name in enumerate("abcd")], max_outgoing=max_outgoing)
    assert start_all(queue) == expected
    assert len(queue.running) == len(expected)


@pytest.mark.parametrize("max_incoming, expected", [(1, ["a", "d"]), (2, ["a", "d", "b"]), (3, ["a", "d", "b", "c"])])
def test_incoming_limit(max_incoming: int, expected: t.List[str]) -> None:
    queue = ev.EvacuationQueue([move("a", "h2"), move("b", "h2"), move("c", "h2"), move("d", "h3")], max_outgoing=4, max_incoming=max_incoming)
    assert start_all(queue) == expected
    assert queue.incoming("h2") == len(expected) - 1 and queue.incoming("h3") == 1


def test_higher_priority_is_never_overtaken() -> None:
    queue = ev.EvacuationQueue([move("low1", "h3", "low"), move("hi1", "h2", "high"), move("hi2", "h2", "high"), move("med1", "h4", "medium")], 4, 1)
    assert start_all(queue) == ["hi1"]
    # hi2 waits for h2's slot: medium and low wait too, though their destinations are free.
    assert queue.waiting_reason(queue.waiting[0]) == "VM 'hi2' waits for one of the 1 incoming migration slots of h2"
    assert queue.waiting_reason(queue.waiting[1]) == "VM 'med1' (medium priority) waits for higher-priority VMs to start: hi2"
    with pytest.raises(ev.EvacuationError, match="cannot start moving VM 'med1' now"):
        queue.start(queue.waiting[1])
    queue.finish(queue.running[0])
    assert start_all(queue) == ["hi2", "med1", "low1"]


def test_same_priority_may_overtake_one_waiting_for_its_destination() -> None:
    queue = ev.EvacuationQueue([move("a", "h2"), move("b", "h2"), move("c", "h3")], max_outgoing=2, max_incoming=1)
    assert start_all(queue) == ["a", "c"]
    queue.finish(queue.running[1])
    assert queue.waiting_reason(queue.waiting[0]) == "VM 'b' waits for one of the 1 incoming migration slots of h2"
    assert queue.next_ready() is None
    queue.finish(queue.running[0])
    assert start_all(queue) == ["b"]
    queue.finish(queue.running[0])
    assert queue.done() and [m.vm for m in queue.finished] == ["c", "a", "b"]


def test_outgoing_slot_reason_and_cancel() -> None:
    queue = ev.EvacuationQueue([move("a", "h2"), move("b", "h3"), move("c", "h4")], max_outgoing=1)
    assert start_all(queue) == ["a"]
    assert queue.waiting_reason(queue.waiting[0]) == "VM 'b' waits for one of the 1 outgoing migration slots of h1"
    assert [m.vm for m in queue.cancel()] == ["b", "c"]
    assert not queue.done()
    queue.finish(queue.running[0])
    assert queue.done()


def policy_move(name: str, destination: str, policy: str) -> ev.Move:
    return dataclasses.replace(move(name, destination), policy=st.effective_policy({"policy": policy}))


def test_a_policy_that_runs_alone_waits_for_running_moves_and_is_not_overtaken() -> None:
    queue = ev.EvacuationQueue(
        [move("a", "h2"), policy_move("big", "h3", "very_large_vms"), move("c", "h4"), move("d", "h4")], max_outgoing=2
    )
    assert start_all(queue) == ["a"], "big may not start beside a, and c may not overtake big"
    assert queue.waiting_reason(queue.waiting[0]) == (
        "VM 'big' waits: its policy or a running move's policy allows only 1 migration(s) at once"
    )
    queue.finish(queue.running[0])
    assert start_all(queue) == ["big"], "nothing starts beside a move whose policy runs alone"
    assert queue.waiting_reason(queue.waiting[0]).startswith("VM 'c' waits: its policy or a running move's")
    queue.finish(queue.running[0])
    assert start_all(queue) == ["c", "d"]


@pytest.mark.parametrize(
    "policies, most_at_once",
    [
        (["minimal_downtime"] * 4, 2),
        (["suspend_workload"] * 3, 1),
        (["legacy", "post_copy", "suspend_workload", "legacy"], 2),
    ],
)
def test_at_most_the_smallest_limit_of_the_running_moves_run_at_once(policies: t.List[str], most_at_once: int) -> None:
    queue = ev.EvacuationQueue([policy_move("v%d" % i, "h%d" % (i + 2), p) for i, p in enumerate(policies)], max_outgoing=3)
    peak = 0
    while not queue.done():
        start_all(queue)
        peak = max(peak, len(queue.running))
        assert len(queue.running) <= min(m.policy.max_concurrent for m in queue.running)
        queue.finish(queue.running[0])
    assert peak == most_at_once


@pytest.mark.parametrize(
    "action, message",
    [
        (lambda q, m: q.finish(m), "VM 'a' is not being moved"),
        (lambda q, m: (q.start(m), q.start(m)), "VM 'a' is not waiting to be moved"),
    ],
)
def test_queue_refuses_wrong_transitions(action: t.Callable[[ev.EvacuationQueue, ev.Move], t.Any], message: str) -> None:
    queue = ev.EvacuationQueue([move("a", "h2")])
    with pytest.raises(ev.EvacuationError, match=message):
        action(queue, queue.waiting[0])


@pytest.mark.parametrize(
    "moves_, kwargs, message",
    [
        ([move("a", "h2")], {"max_outgoing": 0}, "must be at least 1"),
        ([move("a", "h2"), move("a", "h3")], {}, "VM 'a' is queued twice"),
        ([move("a", "h2", "urgent")], {}, "unknown priority 'urgent'"),
    ],
)
def test_queue_refuses_bad_input(moves_: t.List[ev.Move], kwargs: t.Dict[str, int], message: str) -> None:
    with pytest.raises(ev.EvacuationError, match=message):
        ev.EvacuationQueue(moves_, **kwargs)


@pytest.mark.parametrize("seed", range(20))
def test_queue_simulation_keeps_every_rule(seed: int) -> None:
    rng = random.Random(seed)
    plan_moves = [move("v%02d" % index, "h%d" % rng.randrange(2, 6), rng.choice(st.PRIORITIES)) for index in range(30)]
    max_outgoing, max_incoming = rng.randint(1, 4), rng.randint(1, 3)
    queue = ev.EvacuationQueue(plan_moves, max_outgoing, max_incoming)
    started: t.List[ev.Move] = []
    while not queue.done():
        for name in start_all(queue):
            started.append(next(m for m in plan_moves if m.vm == name))
        assert len(queue.running) <= max_outgoing
        assert all(queue.incoming(dest) <= max_incoming for dest in ("h2", "h3", "h4", "h5"))
        if queue.running:
            queue.finish(rng.choice(queue.running))
    ranks = [st.PRIORITY_RANK[m.priority] for m in started]
    assert ranks == sorted(ranks)
    assert sorted(m.vm for m in started) == sorted(m.vm for m in plan_moves)


# -- the ranked chooser gives the same plan as checking every host for every VM


def random_instance(rng: random.Random, vm_count: int, host_count: int) -> t.Tuple[t.List[ev.VmToMove], t.List[pl.HostState]]:
    names = ["h%d" % index for index in range(1, host_count + 1)]
    networks = ("lab", "prod", "dmz")
    vms = []
    for index in range(vm_count):
        name = "vm%02d" % index
        pinned = rng.sample(names, rng.randint(1, min(3, host_count))) if rng.random() < 0.2 else []
        memory = rng.choice((0, 256, 512, 512, 1024, 1024, 2048, 4096))
        values = st.effective(
            {
                "priority": rng.choice(st.PRIORITIES),
                "migration_mode": rng.choice(("auto", "auto", "auto", "manual", "none")),
                "pinned_hosts": pinned,
            }
        )
        needs = pl.VmNeeds(
            name=name,
            memory_mib=memory,
            vcpus=rng.randint(1, 4),
            networks=frozenset(rng.sample(networks, rng.randint(0, 2))),
            bridges=frozenset({"br0"}) if rng.random() < 0.2 else frozenset(),
            disk_paths=frozenset({"/s/%s" % name}) if rng.random() < 0.2 else frozenset(),
            pinned_hosts=frozenset(pinned),
        )
        vms.append(ev.VmToMove(name, "u-" + name, memory, needs.vcpus, rng.random() < 0.8, True, values, needs))
    disks = [path for vm_ in vms for path in vm_.needs.disk_paths]  # type: ignore[union-attr]
    hosts: t.List[pl.HostState] = []
    for name in names:
        if rng.random() < 0.1:
            name = rng.choice(names)  # the same name twice: pending load is counted by name
        hosts.append(
            pl.HostState(
                name=name,
                uri="qemu+tcp://%s/system" % name,
                uuid="uuid-h1" if name == "h1" else "uuid-%s-%d" % (name, len(hosts)),
                available_mib=rng.choice((0, 1024, 2048, 2048, 4096, 6144)),
                vcpus_running=rng.choice((0, 2, 2, 4)),
                networks=frozenset(rng.sample(networks, rng.randint(1, 3))),
                bridges=rng.choice((None, frozenset(), frozenset({"br0"}))),
                disk_paths=frozenset(path for path in disks if rng.random() < 0.7),
                maintenance=rng.random() < 0.1,
                error="refused" if rng.random() < 0.05 else None,
                cpu_incompatible={vm_.name: "no avx" for vm_ in vms if rng.random() < 0.05},
            )
        )
    return vms, hosts


@pytest.mark.parametrize("seed", range(60))
def test_fast_path_gives_the_same_plan(seed: int) -> None:
    rng = random.Random(seed)
    vms, hosts = random_instance(rng, rng.randint(1, 40), rng.randint(1, 10))
    options: t.Dict[str, t.Any] = {"include_manual": rng.random() < 0.5, "non_migratable": rng.choice(ev.NON_MIGRATABLE_ACTIONS)}
    fast = ev.plan_evacuation(vms, hosts, SOURCE, **options)
    reference = ev.plan_evacuation(vms, hosts, SOURCE, fast=False, **options)
    assert fast.as_dict() == reference.as_dict()
    assert [held.rejected for held in fast.unplaceable] == [held.rejected for held in reference.unplaceable]


def test_fast_path_gives_the_same_plan_on_a_larger_cluster() -> None:
    rng = random.Random(4242)
    vms, hosts = random_instance(rng, 400, 40)
    fast = ev.plan_evacuation(vms, hosts, SOURCE, include_manual=True)
    reference = ev.plan_evacuation(vms, hosts, SOURCE, include_manual=True, fast=False)
    assert len(fast.moves) > 100
    assert fast.as_dict() == reference.as_dict()


def test_moves_running_at_once_spread_over_the_destinations() -> None:
    # Two slots out of h1: the second goes to the idle h3, not behind the first into h2; priority still rules.
    queue = ev.EvacuationQueue([move("a", "h2"), move("b", "h2"), move("c", "h3"), move("z", "h4", "low")], max_outgoing=2)
    assert start_all(queue) == ["a", "c"]
    queue.finish(queue.running[0])
    assert start_all(queue) == ["b"], "h2 and h3 have one move each running: plan order"
    queue.finish(queue.running[0])
    queue.finish(queue.running[0])
    assert start_all(queue) == ["z"]


@pytest.mark.parametrize("non_migratable, outcome", [("fail", "blocked"), ("shutdown", "shutdown")])
def test_a_running_vm_with_a_host_device_is_not_migratable(non_migratable: str, outcome: str) -> None:
    gpu = dataclasses.replace(vm("gpu", 1024), unmovable_devices=("mediated device (vGPU) 4b20d080 (vfio-pci)",))
    result = plan([gpu, vm("web", 512)], [host("hv2")], non_migratable=non_migratable)
    held = getattr(result, outcome)
    assert [entry.vm for entry in held] == ["gpu"] and "vGPU" in held[0].reason
    assert moves(result) == [("web", "hv2")]


def test_failover_pairs_travel_with_the_move_and_vfs_spread_over_the_destinations() -> None:
    def sriov(name: str) -> ev.VmToMove:
        needs = pl.VmNeeds(name=name, memory_mib=256, vfs=(("vfnet", 1),))
        return dataclasses.replace(vm(name, 256), needs=needs, bond_vfs=("fo",), failover_primaries=())

    hosts = [host("hv2", 8192, free_vfs={"vfnet": 1}), host("hv3", 4096, free_vfs={"vfnet": 1})]
    for fast in (True, False):
        result = plan([sriov("a"), sriov("b"), sriov("c")], hosts, fast=fast)
        assert sorted(moves(result)) == [("a", "hv2"), ("b", "hv3")], "one free VF per host"
        assert [entry.vm for entry in result.unplaceable] == ["c"] and "free VF" in result.unplaceable[0].reason
        assert all(move.bond_vfs == ("fo",) for move in result.moves)


# A failover pair whose VF sits at a fixed PCI address (vf_address). The lab cannot show a free VF (its
# hosts are namespaces of one machine sharing its PCI devices, none an SR-IOV VF), so the planner is
# shown every case here; the probe's reading of node devices is shown in test_migration_migrator.py.
PAIR_AT_ADDRESS = (
    "<domain type='kvm'><name>%s</name><uuid>uuid-%s</uuid><memory unit='MiB'>512</memory><devices>"
    "<interface type='network'><mac address='52:54:00:aa:00:01'/><source network='lab'/><model type='virtio'/>"
    "<teaming type='persistent'/><alias name='ua-fo-backup'/></interface>"
    "<interface type='hostdev' managed='yes'><mac address='52:54:00:aa:00:01'/>"
    "<source><address type='pci' domain='0x0000' bus='0x3b' slot='0x02' function='0x1'/></source>"
    "<teaming type='transient' persistent='ua-fo-backup'/><alias name='ua-fo-vf'/></interface></devices></domain>"
)
VF_HOSTS = {
    "missing": ({}, "has no PCI device 0000:3b:02.1 for the VM's fixed-address SR-IOV VF"),
    "not-a-vf": ({"0000:3b:02.1": pl.PciDevice(virtual_function=False)}, "has PCI device 0000:3b:02.1, but it is not an SR-IOV virtual function"),
    "in-use": (
        {"0000:3b:02.1": pl.PciDevice(virtual_function=True, used_by="db9")},
        "has the VF 0000:3b:02.1 (the VM's vf_address) assigned to the active VM 'db9'",
    ),
}


def vm_with_pair_at_address(name: str, running: bool) -> ev.VmToMove:
    facts = {"name": name, "uuid": "uuid-" + name, "memory_mib": 512, "vcpus": 1, "active": running, "persistent": True}
    requirements = domxml.parse_requirements(PAIR_AT_ADDRESS % (name, name))
    assert requirements["vf_addresses"] == ["0000:3b:02.1"]
    return ev.VmToMove.from_facts(facts, requirements, st.effective({}))


@pytest.mark.parametrize("running", [True, False], ids=["live", "offline"])
@pytest.mark.parametrize("case", sorted(VF_HOSTS))
def test_a_vf_address_pair_goes_only_where_that_address_is_a_free_vf(case: str, running: bool) -> None:
    devices, reason = VF_HOSTS[case]
    unfit = host("hv2", 16384, pci_devices=devices)
    free = host("hv3", 2048, pci_devices={"0000:3b:02.1": pl.PciDevice(virtual_function=True)})
    for fast in (True, False):
        result = plan([vm_with_pair_at_address("fo1", running)], [unfit, free], fast=fast)
        assert moves(result) == [("fo1", "hv3")], "hv2 has more free memory, but not the VF"
        alone = plan([vm_with_pair_at_address("fo1", running)], [unfit], fast=fast)
        assert not alone.moves and [entry.vm for entry in alone.unplaceable] == ["fo1"]
        assert "hv2 " + reason in alone.unplaceable[0].reason


def test_a_hibernated_vm_stays_with_its_saved_image() -> None:
    hibernated = dataclasses.replace(vm("sleeper", 1024, running=False), saved_image=True)
    result = plan([hibernated, vm("off", 512, running=False)], [host("hv2")], non_migratable="shutdown")
    assert [entry.vm for entry in result.kept] == ["sleeper"] and "managed save image" in result.kept[0].reason
    assert moves(result) == [("off", "hv2")]


# -- affinity groups


def affinity(where: t.Mapping[str, str], *groups: t.Mapping[str, t.Any]) -> af.Affinity:
    return af.Affinity(af.parse_groups(list(groups)), where)


def test_a_hard_negative_group_is_kept_apart() -> None:
    # Without the group both go to h2 (the most free memory); web3 already runs on h3.
    aff = affinity({"web3": "h3", "other": "h2"}, {"name": "web", "vms": ["web1", "web2", "web3"], "vm_rule": "negative"})
    hosts = [host("h2", 16384), host("h3", 16384), host("h4", 8192)]
    assert moves(plan([vm("web1"), vm("web2")], hosts)) == [("web1", "h2"), ("web2", "h3")]
    result = plan([vm("web1"), vm("web2"), vm("x")], hosts, affinity=aff)
    assert moves(result) == [("web1", "h2"), ("web2", "h4"), ("x", "h3")]
    assert result.ok and result.as_dict()["affinity"] == {"unmet": []}
    assert aff.where["web1"] == "h2" and aff.where["web2"] == "h4"
    # The unconstrained VM took the fast path, counting the affinity placements as pending load.
    assert result.load["h2"].memory_mib == 1024 and result.load["h3"].memory_mib == 1024


def test_a_hard_positive_group_lands_on_one_host_that_takes_all_of_it() -> None:
    group = {"name": "app", "vms": ["a1", "a2", "a3"], "vm_rule": "positive"}
    vms = [vm("a1", 2048), vm("a2", 2048, vcpus=2), vm("a3", 1024, networks={"lab", "storage"}), vm("b", 512)]
    # h2 has the most free memory, but not the 5120 MiB all three need; h4 lacks the network a3 needs.
    hosts = [host("h2", 4096), host("h3", 6144, networks=frozenset({"lab", "storage"})), host("h4", 8192)]
    hosts[2] = dataclasses.replace(hosts[2], available_mib=3072)
    result = plan(vms, hosts, affinity=affinity({}, group))
    assert moves(result) == [("a1", "h3"), ("a2", "h3"), ("a3", "h3"), ("b", "h2")]
    assert result.load["h3"].memory_mib == 5120 and result.load["h3"].vcpus == 4
    assert result.ok and result.as_dict()["affinity"] == {"unmet": []}
    # The reservation counts as pending load from the first placement on: b, placed before a3, leaves
    # a3's room on h3 (without the reservation h3 would have 1536 MiB free for b, more than h2).
    hosts = [host("h2", 1500), host("h3", 5632, networks=frozenset({"lab", "storage"}))]
    result = plan([vm("a1", 2048), vm("a2", 2048), vm("a3", 1024, networks={"lab", "storage"}), vm("b", 1500)], hosts, affinity=affinity({}, group))
    assert moves(result) == [("a1", "h3"), ("a2", "h3"), ("b", "h2"), ("a3", "h3")]
    assert result.ok


def test_a_hard_positive_group_follows_a_member_running_elsewhere() -> None:
    aff = affinity({"a3": "h4"}, {"name": "app", "vms": ["a1", "a2", "a3"], "vm_rule": "positive"})
    result = plan([vm("a1"), vm("a2")], [host("h2", 16384), host("h3", 16384), host("h4", 4096)], affinity=aff)
    assert moves(result) == [("a1", "h4"), ("a2", "h4")]


def test_a_hard_positive_group_no_host_can_take_is_unplaceable_and_the_plan_not_ok() -> None:
    aff = affinity({}, {"name": "app", "vms": ["a1", "a2"], "vm_rule": "positive"})
    result = plan([vm("a1", 3072), vm("a2", 3072), vm("b", 1024)], [host("h2", 4096), host("h3", 4096)], affinity=aff)
    assert not result.ok and moves(result) == [("b", "h2")]
    assert [(held.vm, held.rule) for held in result.unplaceable] == [("a1", "affinity"), ("a2", "affinity")]
    reason = result.unplaceable[0].reason
    assert reason.startswith("VM 'a1' cannot be placed: hard positive affinity group(s) 'app' keep VMs 'a1', 'a2' on one host, and no host takes all 2")
    assert "(6144 MiB, 2 vCPUs)" in reason and "has 4096 MiB free" in reason
    assert result.as_dict()["unplaceable"][1]["rule"] == "affinity"
    assert any(problem.startswith("VM 'a2' cannot be placed: hard positive affinity group(s) 'app'") for problem in result.problems())
    # Pinned hosts that share none.
    result = plan([vm("a1", pinned=["h2"]), vm("a2", pinned=["h3"])], [host("h2"), host("h3")], affinity=aff)
    assert [held.rule for held in result.unplaceable] == ["affinity", "affinity"]
    assert result.unplaceable[0].reason.endswith("and their pinned hosts share none")


def test_a_vm_only_a_broken_hard_rule_could_place_is_unplaceable_with_rule_affinity() -> None:
    aff = affinity({"web2": "h2", "web3": "h3"}, {"name": "web", "vms": ["web1", "web2", "web3"], "vm_rule": "negative"})
    result = plan([vm("web1")], [host("h2"), host("h3")], affinity=aff)
    assert not result.ok
    (held,) = result.unplaceable
    assert held.rule == "affinity"
    assert held.reason.startswith("VM 'web1' cannot be placed without breaking a hard rule of affinity group(s) 'web': no host can take VM 'web1': ")
    assert "affinity group 'web' (hard negative VM rule) keeps VMs 'web1', 'web2', 'web3' apart: VM 'web1' on h2 would share the host" in held.reason
    # A VM no host takes anyway stays an ordinary unplaceable VM.
    result = plan([vm("web1", 65536)], [host("h2"), host("h3")], affinity=aff)
    assert result.unplaceable[0].rule is None


def test_host_rules_and_shut_off_vms() -> None:
    aff = affinity(
        {"db2": "h2"},
        {"name": "db", "vms": ["db1", "db2"], "vm_rule": "negative", "hosts": ["h2", "h3"], "host_rule": "positive"},
    )
    # The shut-off db1 keeps the host rule only: it may be defined next to db2.
    result = plan([vm("db1", running=False), vm("x")], [host("h2", 16384), host("h3", 1024), host("h4", 65536)], affinity=aff)
    assert moves(result) == [("db1", "h2"), ("x", "h4")]
    result = plan([vm("db1")], [host("h2", 16384), host("h3", 2048), host("h4", 65536)], affinity=aff)
    assert moves(result) == [("db1", "h3")]


def test_soft_rules_weigh_and_are_reported_when_unmet() -> None:
    aff = affinity(
        {"b": "h3"},
        {"name": "pair", "vms": ["a", "b"], "vm_rule": "positive", "vm_enforcing": False},
        {"name": "not-h2", "vms": ["c"], "hosts": ["h2"], "host_rule": "negative", "host_enforcing": False},
    )
    # a goes next to b (h3) although h2 has more room; c has no choice but h2 (h3 is full).
    result = plan([vm("a", 2048), vm("c", 2048)], [host("h2", 16384), host("h3", 2048)], affinity=aff)
    assert moves(result) == [("a", "h3"), ("c", "h2")]
    assert result.ok
    (unmet,) = result.as_dict()["affinity"]["unmet"]
    assert unmet == {
        "group": "not-h2",
        "kind": "host",
        "polarity": "negative",
        "enforcing": False,
        "message": "affinity group 'not-h2' (soft negative host rule) keeps its VMs off hosts h2, but 'c' (on h2) run there",
    }


def test_no_affinity_key_without_groups() -> None:
    assert "affinity" not in plan([vm("a")], [host("h2")]).as_dict()


@pytest.mark.parametrize("seed", range(30))
def test_fast_path_gives_the_same_plan_with_affinity_groups(seed: int) -> None:
    rng = random.Random(seed)
    vms, hosts = random_instance(rng, rng.randint(2, 40), rng.randint(2, 10))
    names = [vm_.name for vm_ in vms]
    host_names = sorted({host_.name for host_ in hosts})
    parsed: t.Optional[t.Tuple[af.AffinityGroup, ...]] = None
    # Random groups may contradict each other: those are refused naming a group, and another draw is made.
    while parsed is None:
        groups = []
        for index in range(rng.randint(1, 4)):
            members = rng.sample(names, min(len(names), rng.randint(2, 4)))
            group: t.Dict[str, t.Any] = {"name": "g%d" % index, "vms": members, "vm_enforcing": rng.random() < 0.5}
            group["vm_rule"] = "negative" if index % 2 else "positive"
            if rng.random() < 0.5:
                group.update(hosts=rng.sample(host_names, 1), host_rule=rng.choice(("positive", "negative")), host_enforcing=rng.random() < 0.5)
            groups.append(group)
        try:
            parsed = af.parse_groups(groups)
        except af.AffinityError as exc:
            assert any("'%s'" % group["name"] in exc.msg for group in groups), exc.msg
    fast = ev.plan_evacuation(vms, hosts, SOURCE, include_manual=True, affinity=af.Affinity(parsed, {}))
    reference = ev.plan_evacuation(vms, hosts, SOURCE, include_manual=True, fast=False, affinity=af.Affinity(parsed, {}))
    assert fast.as_dict() == reference.as_dict()
    # No hard rule is broken by the plan.
    assert not [breach for breach in fast.unmet or () if breach.enforcing]


# -- local disks copied with the moves (storage copy or auto)

GIB = 1024**3
IMAGES = "/var/lib/libvirt/images"


def copying_vm(name: str, allocated_gib: int, memory: int = 1024, **kwargs: t.Any) -> ev.VmToMove:
    """A running VM with one qcow2 disk of 20 GiB in the source's ``default`` dir pool, ``allocated_gib`` of it allocated."""
    subject = vm(name, memory, **kwargs)
    path = "%s/%s.qcow2" % (IMAGES, name)
    pool = storage.Pool("default", "dir", IMAGES, 500 * GIB)
    subject.disks = ({"target": "vda", "type": "file", "path": path, "device": "disk", "readonly": False, "format": "qcow2", "backing": False},)
    subject.storage_facts = storage.SourceFacts(volumes={"vda": storage.Volume(path, pool, 20 * GIB, allocated_gib * GIB, "qcow2")})
    return subject


def pools(free_gib: int, existing: t.Iterable[str] = ()) -> storage.DestinationFacts:
    return storage.DestinationFacts((storage.Pool("default", "dir", IMAGES, free_gib * GIB),), frozenset(existing))


def copy_plan(
    vms: t.Sequence[ev.VmToMove], hosts: t.Sequence[pl.HostState], facts: t.Mapping[str, storage.DestinationFacts], **kwargs: t.Any
) -> ev.EvacuationPlan:
    return plan(vms, hosts, request=MoveRequest(storage="copy"), destination_storage=facts, **kwargs)


@pytest.mark.parametrize("fast", [True, False])
def test_copies_share_a_pool_and_spill_to_another_host(fast: bool) -> None:
    # h2 has far more memory (the fast path would put everything there), but room for one 8 GiB copy only.
    vms = [copying_vm("a", 8), copying_vm("b", 8), vm("c")]
    result = copy_plan(vms, [host("h2", 64000), host("h3", 8000)], {"h2": pools(10), "h3": pools(100)}, fast=fast)
    assert result.ok
    assert sorted(moves(result)) == [("a", "h2"), ("b", "h3"), ("c", "h2")]
    by_vm = {move.vm: move for move in result.moves}
    # 8 GiB + 10 % + 64 MiB per copy.
    taken = 8 * GIB + int(0.8 * GIB) + 64 * storage.MIB
    assert result.load["h2"].copy_bytes == {"default": taken} and result.load["h3"].copy_bytes == {"default": taken}
    assert by_vm["a"].copy_disks == ("vda",) and by_vm["c"].copy_disks == ()
    shown = result.as_dict()
    assert shown["load"]["h2"]["copy_bytes_by_pool"] == {"default": taken}
    [a] = [move for move in shown["moves"] if move["vm"] == "a"]
    assert a["storage"][0]["destination_pool"] == "default" and a["storage"][0]["action"] == "copy" and a["copy_disks"] == ["vda"]
    [c] = [move for move in shown["moves"] if move["vm"] == "c"]
    assert "storage" not in c and "copy_bytes_by_pool" not in shown["load"].get("h4", {})


def test_copies_no_host_can_take_is_unplaceable_with_every_hosts_reasons() -> None:
    facts = {"h2": pools(1), "h3": pools(100, existing=["%s/a.qcow2" % IMAGES])}
    result = copy_plan([copying_vm("a", 8, memory=4096)], [host("h2", 8000), host("h3", 2048)], facts)
    assert not result.ok and not result.moves
    [held] = result.unplaceable
    assert "free after planned copies" in " ".join(held.rejected["h2"])
    # h3: its memory and its storage, together.
    reasons = " ".join(held.rejected["h3"])
    assert "MiB" in held.rejected["h3"][0] and "a volume already exists at that path on h3" in reasons
    assert "h2" in held.reason and "h3" in held.reason


def test_copies_need_the_destinations_pools_read() -> None:
    result = copy_plan([copying_vm("a", 1)], [host("h2")], {})
    assert result.unplaceable[0].rejected["h2"] == ["VM 'a': the storage pools of h2 could not be read"]


def test_vms_without_copies_are_placed_as_before() -> None:
    vms = [vm("a", 2048), vm("b", 1024), vm("c", 512, running=False)]
    hosts = [host("h2", 8000), host("h3", 6000)]
    before = plan(vms, hosts)
    after = copy_plan(vms, hosts, {"h2": pools(0), "h3": pools(0)})
    assert moves(after) == moves(before) and not after.copies
    assert [move.timeout_s for move in after.moves] == [move.timeout_s for move in before.moves]
    assert all("copy_bytes_by_pool" not in load for load in after.as_dict()["load"].values())


def test_a_copy_move_has_its_timeout_extended_for_the_copy() -> None:
    result = copy_plan([copying_vm("a", 8), vm("b")], [host("h2")], {"h2": pools(100)})
    by_vm = {move.vm: move for move in result.moves}
    base = by_vm["b"].timeout_s
    assert base is not None and by_vm["a"].timeout_s == base + 8 * GIB // storage.COPY_RATE_BYTES_PER_S
    assert result.as_dict()["moves"][0]["timeout_s"] == by_vm["a"].timeout_s


def test_affinity_placement_respects_copies() -> None:
    # a and b in a soft positive group: together on h2 if its pool took both, it takes one only.
    groups = af.Affinity(af.parse_groups([{"name": "pair", "vms": ["a", "b"], "vm_rule": "positive", "vm_enforcing": False}]), {})
    result = copy_plan([copying_vm("a", 8), copying_vm("b", 8)], [host("h2"), host("h3")], {"h2": pools(10), "h3": pools(10)}, affinity=groups)
    assert result.ok and sorted(destination for _vm, destination in moves(result)) == ["h2", "h3"]


def test_hard_positive_party_needs_room_for_every_copy() -> None:
    groups = af.Affinity(af.parse_groups([{"name": "pair", "vms": ["a", "b"], "vm_rule": "positive", "vm_enforcing": True}]), {})
    result = copy_plan([copying_vm("a", 8), copying_vm("b", 8)], [host("h2"), host("h3")], {"h2": pools(10), "h3": pools(20)}, affinity=groups)
    assert result.ok and sorted(moves(result)) == [("a", "h3"), ("b", "h3")]
    tight = copy_plan([copying_vm("a", 8), copying_vm("b", 8)], [host("h2"), host("h3")], {"h2": pools(10), "h3": pools(10)}, affinity=groups)
    assert not tight.ok and {held.vm for held in tight.unplaceable} == {"a", "b"}
    assert "free after planned copies" in tight.unplaceable[0].reason
