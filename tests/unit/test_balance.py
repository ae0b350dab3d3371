"""Cluster balancing plans (pure logic): every policy on small hand-made clusters."""

from __future__ import annotations

import dataclasses
import json
import typing as t

import pytest

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import affinity as af
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import balance as bl
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import placement as pl
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import settings as st
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.rules import VmToMove

NOW = 1_000_000.0


def vm(
    name: str,
    host: str,
    memory: int = 1024,
    cpu: float = 0.0,
    mode: str = "auto",
    pinned: t.Sequence[str] = (),
    priority: str = "medium",
    running: bool = True,
    balanced_at: t.Optional[float] = None,
    left_host: t.Optional[str] = None,
    migrating: bool = False,
    networks: t.AbstractSet[str] = frozenset({"lab"}),
    **facts: t.Any,
) -> bl.BalanceVm:
    """A VM on ``host`` using ``cpu`` percent of one CPU and ``memory`` MiB."""
    values = st.effective({"priority": priority, "migration_mode": mode, "pinned_hosts": list(pinned)})
    needs = pl.VmNeeds(name=name, memory_mib=memory, vcpus=1, networks=frozenset(networks), pinned_hosts=frozenset(pinned))
    return bl.BalanceVm(
        VmToMove(name, "uuid-" + name, memory, 1, running, True, values, needs, **facts),
        host,
        cpu,
        balanced_at,
        left_host,
        migrating,
    )


def host(
    name: str, cpus: int = 10, memory: int = 10240, samples: t.Sequence[float] = (), busy: t.Optional[str] = None, **state: t.Any
) -> bl.BalanceHost:
    """A host with ``cpus`` CPUs and ``memory`` MiB; its free memory is filled in by :func:`cluster`."""
    state.setdefault("uuid", "uuid-" + name)
    state.setdefault("networks", frozenset({"lab"}))
    return bl.BalanceHost(pl.HostState(name=name, uri="qemu+tcp://%s/system" % name, **state), cpus, memory, tuple(samples), busy)


def cluster(hosts: t.Sequence[bl.BalanceHost], vms: t.Sequence[bl.BalanceVm]) -> t.Tuple[t.List[bl.BalanceHost], t.List[bl.BalanceVm]]:
    """The hosts with their free memory as their running VMs leave it."""
    used: t.Dict[str, int] = {}
    for item in vms:
        if item.vm.running:
            used[item.host] = used.get(item.host, 0) + item.vm.memory_mib
    filled = [dataclasses.replace(h, state=dataclasses.replace(h.state, available_mib=h.memory_mib - used.get(h.name, 0))) for h in hosts]
    return filled, list(vms)


def plan(hosts: t.Sequence[bl.BalanceHost], vms: t.Sequence[bl.BalanceVm], **request: t.Any) -> bl.BalancePlan:
    hosts, vms = cluster(hosts, vms)
    request.setdefault("now", NOW)
    result = bl.plan_balance(hosts, vms, bl.BalanceRequest(**request))
    check_invariants(hosts, vms, result, bl.BalanceRequest(**request))
    return result


def check_invariants(hosts: t.Sequence[bl.BalanceHost], vms: t.Sequence[bl.BalanceVm], result: bl.BalancePlan, request: bl.BalanceRequest) -> None:
    """What every plan keeps: each VM at most once, never from or to an excluded host, destinations within the thresholds."""
    names = [move.vm for move in result.moves]
    assert len(names) == len(set(names))
    excluded = {h.name for h in hosts if h.excluded()}
    assert set(result.excluded_hosts) == excluded
    where = {item.vm.name: item.host for item in vms}
    for move in result.moves:
        assert move.source == where[move.vm] and move.destination != move.source
        assert move.source not in excluded and move.destination not in excluded
        assert move.destination_uri == "qemu+tcp://%s/system" % move.destination
    if request.policy in (bl.EVENLY, bl.VM_EVENLY, bl.POWER_SAVING):
        for name in {move.destination for move in result.moves}:
            after = result.hosts[name]["after"]
            assert after["cpu_percent"] <= request.cpu_high and after["memory_percent"] <= request.memory_high
    assert request.limit() is None or len(result.moves) <= t.cast(int, request.limit())
    json.dumps(result.as_dict())


def apply(hosts: t.Sequence[bl.BalanceHost], vms: t.Sequence[bl.BalanceVm], result: bl.BalancePlan) -> t.Tuple[t.List[bl.BalanceHost], t.List[bl.BalanceVm]]:
    """The cluster as the plan leaves it: moved VMs on their destination with balanced_at now, CPU samples shifted."""
    hosts, vms = cluster(hosts, vms)
    moves = {move.vm: move for move in result.moves}
    cpus = {h.name: h.cpus for h in hosts}
    shift: t.Dict[str, float] = {}
    moved = []
    for item in vms:
        move = moves.get(item.vm.name)
        if move is None:
            moved.append(item)
            continue
        share = item.cpu_percent
        shift[move.source] = shift.get(move.source, 0.0) - share / cpus[move.source]
        shift[move.destination] = shift.get(move.destination, 0.0) + share / cpus[move.destination]
        moved.append(dataclasses.replace(item, host=move.destination, balanced_at=NOW))
    shifted = [dataclasses.replace(h, cpu_samples=tuple(sample + shift.get(h.name, 0.0) for sample in h.cpu_samples)) for h in hosts]
    return cluster(shifted, moved)


def moves(result: bl.BalancePlan) -> t.List[t.Tuple[str, str, str]]:
    return [(move.vm, move.source, move.destination) for move in result.moves]


def skipped(result: bl.BalancePlan) -> t.Dict[str, str]:
    return {entry["vm"]: entry["rule"] for entry in result.skipped}


def busy_host(name: str = "h1", prefix: str = "") -> t.List[bl.BalanceVm]:
    """Five VMs of 18% of one 10-CPU host each (90%), named a..e."""
    return [vm(prefix + letter, name, cpu=180.0) for letter in "abcde"]


THREE = [host("h1"), host("h2"), host("h3")]


# -- evenly_distributed


def test_evenly_distributed_relieves_the_over_utilized_host_onto_the_least_loaded() -> None:
    vms = busy_host() + [vm("m", "h2", cpu=300.0), vm("n", "h3", cpu=100.0)]
    result = plan(THREE, vms, max_moves=10)
    # h1 90%, h2 30%, h3 10%: one VM to h3 (h1 72%, h3 28%) ends the over-utilization.
    assert moves(result) == [("a", "h1", "h3")]
    assert result.hosts["h1"]["before"] == {"cpu_percent": 90.0, "memory_percent": 50.0, "vms": 5, "load": 90.0}
    assert result.hosts["h1"]["after"]["cpu_percent"] == 72.0
    assert result.hosts["h3"]["after"] == {"cpu_percent": 28.0, "memory_percent": 20.0, "vms": 2, "load": 28.0}
    assert result.as_dict()["moves"][0]["reason"].startswith("relieves h1 (load 90.0%)")
    assert result.unresolved == {} and result.emptied_hosts == []
    assert result.rules_checked[: len(bl.RULES)] == list(bl.RULES) and {"cooldown", "affinity", "thresholds"} <= set(result.rules_checked)


def test_memory_over_memory_high_is_over_utilized_too() -> None:
    vms = [vm("big%d" % index, "h1", memory=2048) for index in range(5)] + [vm("x", "h2", memory=1024)]
    result = plan([host("h1"), host("h2")], vms)
    # h1 100% memory (over 80): one 2 GiB VM to h2 -> 80% / 30%.
    assert moves(result) == [("big0", "h1", "h2")]


@pytest.mark.parametrize(
    "samples, moved",
    [
        pytest.param((95.0, 85.0, 90.0), True, id="every-sample-above"),
        pytest.param((95.0, 70.0, 90.0), False, id="one-sample-below"),
    ],
)
def test_cpu_over_utilization_must_be_sustained(samples: t.Tuple[float, ...], moved: bool) -> None:
    hosts = [host("h1", samples=samples), host("h2"), host("h3")]
    result = plan(hosts, busy_host())
    assert bool(result.moves) is moved


def test_the_vm_chosen_lowers_the_higher_load_the_most() -> None:
    # h1 95%: 60% + 35%; moving the 60% VM would leave h2 at 65%, the 35% one leaves h1 at 60% and h2 at 40%.
    vms = [vm("big", "h1", cpu=600.0), vm("mid", "h1", cpu=350.0), vm("y", "h2", cpu=50.0)]
    result = plan([host("h1"), host("h2")], vms)
    assert moves(result) == [("mid", "h1", "h2")]


@pytest.mark.parametrize(
    "min_improvement, expected",
    [
        pytest.param(5.0, [], id="3-points-is-too-little"),
        pytest.param(2.0, [("small", "h1", "h2")], id="3-points-is-enough"),
    ],
)
def test_min_improvement(min_improvement: float, expected: t.List[t.Tuple[str, str, str]]) -> None:
    # h1 at 83% with a 3% VM; h2 at 60%: moving it lowers the higher load by 3 points.
    vms = [vm("whale", "h1", cpu=800.0, mode="manual"), vm("small", "h1", cpu=30.0), vm("y", "h2", cpu=600.0)]
    result = plan([host("h1"), host("h2")], vms, min_improvement=min_improvement)
    assert moves(result) == expected
    if not expected:
        assert "min_improvement" in result.unresolved["h1"]


def test_a_destination_never_goes_above_cpu_high() -> None:
    # h2 at 70%: any VM of h1 (18%) would take it to 88%.
    vms = busy_host() + [vm("y", "h2", cpu=700.0)]
    result = plan([host("h1"), host("h2")], vms)
    assert result.moves == []
    assert "cpu_high" in result.unresolved["h1"]


def test_max_moves_limits_the_plan_and_says_so() -> None:
    # h1 at 100% with ten 10% VMs; four hosts at 0%: it takes three moves to reach 70%.
    vms = [vm("v%d" % index, "h1", cpu=100.0, memory=512) for index in range(10)]
    hosts = [host("h%d" % index) for index in range(1, 6)]
    assert len(plan(hosts, vms, min_improvement=1.0, max_moves=10, cpu_high=70.0).moves) == 3
    limited = plan(hosts, vms, min_improvement=1.0, max_moves=2, cpu_high=70.0)
    assert len(limited.moves) == 2
    assert "max_moves (2)" in limited.unresolved["h1"]
    assert plan(hosts, vms, max_moves=0).moves == []


def test_the_default_max_moves_of_a_load_policy_is_five() -> None:
    vms = [vm("v%02d" % index, "h1", cpu=100.0, memory=512) for index in range(20)] + [vm("w", "h1", cpu=0.0, memory=100)]
    hosts = [host("h1", cpus=20)] + [host("h%d" % index) for index in range(2, 12)]
    result = plan(hosts, vms, cpu_high=10.0, cpu_low=1.0, min_improvement=1.0)
    assert len(result.moves) == 5


def test_a_balanced_cluster_plans_nothing() -> None:
    vms = [vm("a", "h1", cpu=400.0), vm("b", "h2", cpu=500.0), vm("c", "h3", cpu=300.0)]
    for policy in bl.POLICIES:
        result = plan(THREE, vms, policy=policy)
        assert result.moves == [] and result.skipped == [] and result.unresolved == {}, policy


# -- what the balancer never moves


@pytest.mark.parametrize(
    "special, rule",
    [
        pytest.param({"mode": "manual"}, "mode_manual", id="manual"),
        pytest.param({"mode": "none"}, "mode_none", id="none"),
        pytest.param({"pinned": ("h1", "h2", "h3")}, "pinned", id="pinned-to-candidates-too"),
        pytest.param({"pinned": ("h1",)}, "pinned", id="pinned-to-its-host"),
        pytest.param({"migrating": True}, "migrating", id="migrating"),
        pytest.param({"balanced_at": NOW - 600}, "cooldown", id="cooldown"),
        pytest.param({"unsafe_disks": ("vda (cache=writeback)",)}, "unsafe_cache", id="unsafe-cache"),
        pytest.param({"unmovable_devices": ("hostdev 0000:03:00.0",)}, "host_devices", id="host-devices"),
        pytest.param({"state": "pmsuspended"}, "state", id="pmsuspended"),
        pytest.param({"duplicate_on": ("h3",)}, "duplicate", id="duplicate"),
    ],
)
@pytest.mark.parametrize("policy", [bl.EVENLY, bl.VM_EVENLY, bl.POWER_SAVING])
def test_a_vm_a_rule_refuses_stays_in_place_with_that_rule(special: t.Dict[str, t.Any], rule: str, policy: str) -> None:
    if policy == bl.POWER_SAVING:
        # The only VM of a host under cpu_low and memory_low.
        vms = [vm("x", "h1", cpu=50.0, **special), vm("y", "h2", cpu=500.0), vm("z", "h3", cpu=500.0)]
    elif policy == bl.VM_EVENLY:
        vms = [vm("x", "h1", memory=10, **special)] + [vm("f%02d" % index, "h1", memory=100, mode="manual") for index in range(11)]
    else:
        # A VM of an over-utilized host whose move would relieve it.
        vms = [vm("x", "h1", cpu=450.0, **special), vm("y", "h1", cpu=450.0, mode="none")]
    result = plan(THREE, vms, policy=policy)
    assert "x" not in [move.vm for move in result.moves]
    entry = next(entry for entry in result.skipped if entry["vm"] == "x")
    assert entry["rule"] == rule and entry["host"] == "h1" and "'x'" in entry["reason"]
    if rule == "pinned":
        assert "pinned" in entry["reason"]
    if policy == bl.POWER_SAVING:
        assert result.emptied_hosts == [] and entry["reason"] in result.unresolved["h1"]


def test_a_vm_whose_cooldown_has_passed_may_move_again() -> None:
    result = plan(THREE, [vm("x", "h1", cpu=450.0, balanced_at=NOW - 3601), vm("y", "h1", cpu=450.0, mode="none")])
    assert moves(result) == [("x", "h1", "h2")]


def test_a_shut_off_vm_counts_for_nothing_and_never_moves() -> None:
    vms = busy_host() + [vm("off", "h1", cpu=900.0, memory=8000, running=False)]
    result = plan(THREE, vms, max_moves=10)
    assert "off" not in [move.vm for move in result.moves]
    assert result.hosts["h1"]["before"]["vms"] == 5


@pytest.mark.parametrize(
    "where, why",
    [
        pytest.param({"busy": "preparing maintenance"}, "is busy: preparing maintenance", id="busy"),
        pytest.param({"maintenance": True}, "is in maintenance", id="maintenance"),
        pytest.param({"error": "connection refused"}, "cannot be reached: connection refused", id="unreachable"),
    ],
)
def test_an_excluded_host_is_neither_source_nor_destination(where: t.Dict[str, t.Any], why: str) -> None:
    # As a source: h1 is over-utilized, but nothing leaves it.
    result = plan([host("h1", **where), host("h2"), host("h3")], busy_host())
    assert result.moves == [] and result.excluded_hosts == {"h1": why}
    # As a destination: h3 is the least loaded host, but nothing goes there.
    vms = busy_host() + [vm("y", "h2", cpu=200.0)]
    result = plan([host("h1"), host("h2"), host("h3", **where)], vms, max_moves=10)
    assert result.moves and {move.destination for move in result.moves} == {"h2"}
    assert result.excluded_hosts == {"h3": why}


def test_placement_filters_apply_to_destinations() -> None:
    # h3, the least loaded, lacks the VMs' network and has no memory: h2 takes the move.
    hosts = [host("h1"), host("h2"), host("h3", networks=frozenset({"other"}))]
    result = plan(hosts, busy_host() + [vm("y", "h2", cpu=200.0)])
    assert [move.destination for move in result.moves] == ["h2"]


# -- vm_evenly_distributed


def test_vm_evenly_distributed_moves_from_the_most_to_the_fewest() -> None:
    vms = [vm("a%02d" % index, "h1", memory=100) for index in range(14)]
    vms += [vm("b%02d" % index, "h2", memory=100) for index in range(2)] + [vm("c%02d" % index, "h3", memory=100) for index in range(4)]
    result = plan(THREE, vms, policy=bl.VM_EVENLY, max_moves=20)
    # Until the most is 10 or the gap 5: 14/2/4 -> 10/5/5 (h2 first, then the host with fewer).
    counts = {name: result.hosts[name]["after"]["vms"] for name in ("h1", "h2", "h3")}
    assert counts == {"h1": 10, "h2": 5, "h3": 5}
    assert [move.destination for move in result.moves] == ["h2", "h2", "h2", "h3"]
    assert all(move.source == "h1" for move in result.moves)


def test_vm_evenly_distributed_within_the_thresholds_plans_nothing() -> None:
    vms = [vm("a%02d" % index, "h1", memory=100) for index in range(10)] + [vm("b", "h2", memory=100)]
    assert plan(THREE, vms, policy=bl.VM_EVENLY).moves == []
    vms = [vm("a%02d" % index, "h1", memory=100) for index in range(12)] + [vm("b%02d" % index, "h2", memory=100) for index in range(7)]
    assert plan([host("h1"), host("h2")], vms, policy=bl.VM_EVENLY).moves == []


# -- power_saving


def test_power_saving_empties_the_least_loaded_host_and_names_it() -> None:
    vms = [vm("a1", "h1", cpu=50.0, memory=512), vm("a2", "h1", cpu=50.0, memory=512)]  # h1 10%
    vms += [vm("b1", "h2", cpu=60.0, memory=512), vm("b2", "h2", cpu=60.0, memory=512), vm("b3", "h2", cpu=30.0, memory=512)]  # h2 15%
    vms += [vm("c%d" % index, "h3", cpu=100.0) for index in range(5)]  # h3 50%
    result = plan(THREE, vms, policy=bl.POWER_SAVING, max_moves=4)
    assert result.emptied_hosts == ["h1"]
    assert sorted(moves(result)) == [("a1", "h1", "h3"), ("a2", "h1", "h3")]
    assert result.hosts["h1"]["after"]["vms"] == 0
    assert "max_moves (4)" in result.unresolved["h2"]
    # With room for both: h1, then h2, onto h3.
    result = plan(THREE, vms, policy=bl.POWER_SAVING, max_moves=10)
    assert result.emptied_hosts == ["h1", "h2"] and {move.destination for move in result.moves} == {"h3"}


def test_power_saving_refuses_to_half_empty_a_host() -> None:
    vms = [vm("a1", "h1", cpu=50.0, memory=512), vm("a2", "h1", cpu=50.0, memory=512, mode="manual")]
    vms += [vm("c%d" % index, "h3", cpu=100.0) for index in range(5)] + [vm("d", "h2", cpu=400.0)]
    result = plan(THREE, vms, policy=bl.POWER_SAVING)
    assert result.moves == [] and result.emptied_hosts == []
    assert "'a2'" in result.unresolved["h1"] and skipped(result) == {"a2": "mode_manual"}


def test_power_saving_keeps_a_host_whose_vms_fit_nowhere_else() -> None:
    # h1's VM needs 1500 MiB: h2 and h3 would go over memory_high (85%).
    vms = [vm("a", "h1", cpu=10.0, memory=1500), vm("b", "h2", cpu=300.0, memory=5500), vm("c", "h3", cpu=300.0, memory=5500)]
    hosts = [host("h1", memory=10240), host("h2", memory=8192), host("h3", memory=8192)]
    result = plan(hosts, vms, policy=bl.POWER_SAVING)
    assert result.moves == [] and "no host that stays in service" in result.unresolved["h1"]


def test_power_saving_takes_back_a_partial_emptying() -> None:
    # b (the larger, placed first) fits on h3; a needs a network only h1 has: nothing moves.
    vms = [vm("a", "h1", cpu=10.0, memory=512, networks={"lab", "rare"}), vm("b", "h1", cpu=10.0, memory=1024)]
    vms += [vm("c%d" % index, "h3", cpu=100.0) for index in range(4)] + [vm("d", "h2", cpu=400.0)]
    hosts = [host("h1", networks=frozenset({"lab", "rare"})), host("h2"), host("h3")]
    result = plan(hosts, vms, policy=bl.POWER_SAVING)
    assert result.moves == [] and result.emptied_hosts == [] and "VM 'a'" in result.unresolved["h1"]
    assert all(entry["after"] == entry["before"] for entry in result.hosts.values())


def test_power_saving_keeps_one_host_running() -> None:
    vms = [vm("a", "h1", cpu=10.0), vm("b", "h2", cpu=10.0)]
    result = plan([host("h1"), host("h2")], vms, policy=bl.POWER_SAVING)
    assert result.emptied_hosts == ["h1"] and moves(result) == [("a", "h1", "h2")]
    assert "receives VMs" in result.unresolved["h2"]


def test_power_saving_relieves_onto_running_hosts_before_empty_ones() -> None:
    # h1 over-utilized, h2 empty, h3 at 30%: the VM goes to h3 although h2 is less loaded.
    vms = busy_host() + [vm("c", "h3", cpu=300.0)]
    result = plan(THREE, vms, policy=bl.POWER_SAVING)
    assert moves(result) == [("a", "h1", "h3")]


# -- failback


def test_failback_moves_vms_back_in_priority_then_memory_order() -> None:
    vms = [
        vm("low", "h2", memory=4096, priority="low", left_host="h1"),
        vm("small", "h2", memory=512, left_host="h1"),
        vm("large", "h3", memory=2048, left_host="h1"),
        vm("high", "h3", memory=256, priority="high", left_host="h1"),
        vm("home", "h1", left_host="h1"),
        vm("other", "h3", left_host="h2"),
        vm("cooled", "h3", left_host="h2", balanced_at=NOW),
    ]
    result = plan(THREE, vms, policy=bl.FAILBACK)
    assert [move.vm for move in result.moves] == ["high", "large", "cooled", "other", "small", "low"]
    assert {(move.vm, move.destination) for move in result.moves} >= {("high", "h1"), ("other", "h2")}
    assert result.rules_checked and "cooldown" not in result.rules_checked
    only_h1 = plan(THREE, vms, policy=bl.FAILBACK, failback_hosts=frozenset({"h1"}))
    assert {move.vm for move in only_h1.moves} == {"high", "large", "small", "low"}


def test_failback_skips_and_says_why() -> None:
    vms = [
        vm("huge", "h2", memory=20000, left_host="h1"),
        vm("pinned-home", "h2", pinned=("h1", "h2"), left_host="h1"),
        vm("pinned-away", "h2", pinned=("h2", "h3"), left_host="h1"),
        vm("manual", "h2", mode="manual", left_host="h1"),
        vm("off", "h2", running=False, left_host="h1"),
        vm("gone", "h2", left_host="h9"),
        vm("busy", "h2", left_host="h3"),
        vm("limit", "h2", left_host="h1", memory=10),
    ]
    result = plan([host("h1", memory=15000), host("h2", memory=30000), host("h3", busy="a migration job runs for VM q")], vms,
                  policy=bl.FAILBACK, max_moves=1)
    assert moves(result) == [("pinned-home", "h2", "h1")]
    assert skipped(result) == {
        "huge": "placement",
        "pinned-away": "pinned",
        "manual": "mode_manual",
        "off": "not_running",
        "gone": "excluded_host",
        "busy": "excluded_host",
        "limit": "max_moves",
    }
    reasons = {entry["vm"]: entry["reason"] for entry in result.skipped}
    assert "needs 20000 MiB" in reasons["huge"] and "a migration job runs for VM q" in reasons["busy"]


def test_failback_counts_earlier_returns_against_the_host() -> None:
    vms = [vm("a", "h2", memory=3000, left_host="h1"), vm("b", "h2", memory=3000, left_host="h1")]
    result = plan([host("h1", memory=5000), host("h2", memory=10240)], vms, policy=bl.FAILBACK)
    assert moves(result) == [("a", "h2", "h1")] and skipped(result) == {"b": "placement"}


# -- affinity


def groups(*items: t.Mapping[str, t.Any]) -> t.Tuple[af.AffinityGroup, ...]:
    return af.parse_groups(list(items))


def test_a_hard_negative_group_is_never_broken_by_a_balancing_move() -> None:
    # h3 is the least loaded, but runs b, which a must stay apart from: a goes to h2.
    vms = [vm("a", "h1", cpu=450.0), vm("z", "h1", cpu=450.0, mode="none"), vm("b", "h3", cpu=100.0), vm("c", "h2", cpu=200.0)]
    apart = groups({"name": "apart", "vms": ["a", "b"], "vm_rule": "negative"})
    assert moves(plan(THREE, vms)) == [("a", "h1", "h3")]
    result = plan(THREE, vms, groups=apart)
    assert moves(result) == [("a", "h1", "h2")] and result.unmet == []


def test_a_hard_negative_group_keeps_a_vm_in_place_when_no_host_keeps_it() -> None:
    vms = [vm("a", "h1", cpu=450.0), vm("z", "h1", cpu=450.0, mode="none"), vm("b", "h2", cpu=100.0)]
    result = plan([host("h1"), host("h2")], vms, groups=groups({"name": "apart", "vms": ["a", "b"], "vm_rule": "negative"}))
    assert result.moves == []


def test_a_soft_breach_is_avoided_when_possible_and_reported_when_unmet() -> None:
    vms = [vm("a", "h1", cpu=450.0), vm("z", "h1", cpu=450.0, mode="none"), vm("b", "h3", cpu=100.0), vm("c", "h2", cpu=200.0)]
    soft = groups({"name": "apart", "vms": ["a", "b"], "vm_rule": "negative", "vm_enforcing": False})
    result = plan(THREE, vms, groups=soft)
    assert moves(result) == [("a", "h1", "h2")] and result.unmet == []
    # Only h3 can take it: the move is made, and the breach reported.
    result = plan([host("h1"), host("h2", busy="preparing maintenance"), host("h3")], vms, groups=soft)
    assert moves(result) == [("a", "h1", "h3")]
    assert [(breach.group, breach.enforcing) for breach in result.unmet] == [("apart", False)]
    assert result.as_dict()["unmet"][0]["group"] == "apart"


def test_a_hard_host_rule_keeps_a_vm_off_a_host() -> None:
    vms = [vm("a", "h1", cpu=450.0), vm("z", "h1", cpu=450.0, mode="none"), vm("c", "h2", cpu=200.0)]
    off_h3 = groups({"name": "not-h3", "vms": ["a"], "hosts": ["h3"], "host_rule": "negative"})
    assert moves(plan(THREE, vms, groups=off_h3)) == [("a", "h1", "h2")]


def test_failback_respects_affinity() -> None:
    vms = [vm("a", "h2", left_host="h1"), vm("b", "h1")]
    apart = groups({"name": "apart", "vms": ["a", "b"], "vm_rule": "negative"})
    result = plan(THREE, vms, policy=bl.FAILBACK, groups=apart)
    assert result.moves == [] and skipped(result) == {"a": "affinity"}
    assert "'apart'" in result.skipped[0]["reason"]


# -- a plan is a fixed point


REPLANNED = {
    bl.EVENLY: (THREE, busy_host() + busy_host("h2", "h2-")[:2] + [vm("n", "h3", cpu=100.0)]),
    bl.VM_EVENLY: (THREE, [vm("a%02d" % index, "h1", memory=100) for index in range(16)] + [vm("b", "h2", memory=100)]),
    bl.POWER_SAVING: (
        [host("h1"), host("h2"), host("h3"), host("h4", samples=(95.0, 92.0, 90.0))],
        [vm("a", "h1", cpu=50.0), vm("b", "h2", cpu=120.0), vm("b2", "h2", cpu=30.0)] + [vm("c%d" % index, "h3", cpu=100.0) for index in range(4)]
        + [vm("d%d" % index, "h4", cpu=300.0) for index in range(3)],
    ),
    bl.FAILBACK: (THREE, [vm("a", "h2", left_host="h1"), vm("b", "h3", left_host="h1", memory=20000)]),
}


@pytest.mark.parametrize("policy", sorted(REPLANNED))
def test_planning_again_on_the_end_state_plans_nothing(policy: str) -> None:
    hosts, vms = REPLANNED[policy]
    first = plan(hosts, vms, policy=policy, max_moves=20)
    assert first.moves, "the cluster of %s needs moves" % policy
    after_hosts, after_vms = apply(hosts, vms, first)
    again = plan(after_hosts, after_vms, policy=policy, max_moves=20)
    assert again.moves == []
    assert {name: entry["after"] for name, entry in first.hosts.items()} == {name: entry["before"] for name, entry in again.hosts.items()}


def test_the_plan_is_deterministic() -> None:
    hosts, vms = REPLANNED[bl.POWER_SAVING]
    assert plan(hosts, vms, policy=bl.POWER_SAVING).as_dict() == plan(hosts, list(reversed(vms)), policy=bl.POWER_SAVING).as_dict()


def test_policy_none_plans_nothing() -> None:
    result = plan(THREE, busy_host(), policy="none")
    assert result.moves == [] and result.rules_checked == [] and result.as_dict()["summary"]["moves"] == 0


# -- validation


@pytest.mark.parametrize(
    "request_args, option",
    [
        pytest.param({"policy": "random"}, "policy", id="unknown-policy"),
        pytest.param({"cpu_high": 120.0}, "cpu_high", id="cpu-high-above-100"),
        pytest.param({"memory_low": -1.0}, "memory_low", id="memory-low-negative"),
        pytest.param({"cpu_low": 90.0}, "cpu_low", id="cpu-low-above-high"),
        pytest.param({"memory_low": 50.0, "memory_high": 40.0}, "memory_low", id="memory-low-above-high"),
        pytest.param({"vm_count_high": -1}, "vm_count_high", id="negative-count"),
        pytest.param({"vm_count_threshold": -2}, "vm_count_threshold", id="negative-threshold"),
        pytest.param({"max_moves": -1}, "max_moves", id="negative-max-moves"),
        pytest.param({"min_improvement": -0.5}, "min_improvement", id="negative-improvement"),
        pytest.param({"cooldown_s": -5}, "cooldown_s", id="negative-cooldown"),
    ],
)
def test_a_bad_request_is_refused_naming_the_option(request_args: t.Dict[str, t.Any], option: str) -> None:
    with pytest.raises(bl.BalanceError) as raised:
        bl.plan_balance([], [], bl.BalanceRequest(**request_args))
    assert option in raised.value.msg and raised.value.details["option"] == option


def test_a_vm_on_an_unknown_host_is_refused() -> None:
    with pytest.raises(bl.BalanceError, match="h9"):
        bl.plan_balance([host("h1")], [vm("a", "h9")], bl.BalanceRequest())
