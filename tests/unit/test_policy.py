"""Policies, schedules and the schedule tracker (pure logic)."""

from __future__ import annotations

import pytest

from ansible_collections.virtops.migration.plugins.module_utils._migration import policy as pol


def test_builtin_minimal_downtime_follows_ovirt_schedule() -> None:
    p = pol.base_policy(None)
    assert p.name == "minimal_downtime"
    assert p.auto_converge and not p.compression and p.max_concurrent == 2
    assert p.initial_downtime_ms == 100
    assert [(s.stalled, s.action, s.downtime_ms) for s in p.schedule] == [
        (1, "downtime", 150),
        (2, "downtime", 200),
        (3, "downtime", 300),
        (4, "downtime", 400),
        (6, "downtime", 500),
        (7, "abort", None),
    ]


@pytest.mark.parametrize(
    "name, concurrent, auto_converge, compression, last_action",
    [
        ("minimal_downtime", 2, True, (), "abort"),
        ("suspend_workload", 1, True, ("xbzrle",), "abort"),
        ("post_copy", 2, True, (), "post_copy"),
        ("very_large_vms", 1, False, (), "abort"),
    ],
)
def test_builtin_policies(name: str, concurrent: int, auto_converge: bool, compression: tuple, last_action: str) -> None:
    p = pol.base_policy(name)
    assert (p.max_concurrent, p.auto_converge, p.compression) == (concurrent, auto_converge, compression)
    assert p.schedule[-1].action == last_action


def test_legacy_has_fixed_downtime_and_no_schedule() -> None:
    p = pol.base_policy("legacy")
    assert not p.auto_converge and p.schedule == () and p.initial_downtime_ms == 300


def test_unknown_policy_name_is_refused_with_the_known_ones() -> None:
    with pytest.raises(pol.PolicyError, match="unknown migration policy 'fastest'.*minimal_downtime"):
        pol.base_policy("fastest")


def test_custom_policy_based_on_builtin_with_overrides() -> None:
    p = pol.base_policy({"based_on": "legacy", "name": "mine", "auto_converge": True, "max_downtime_ms": 250})
    assert (p.name, p.auto_converge, p.initial_downtime_ms, p.schedule) == ("mine", True, 250, ())


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"bandwidth_mib": -5}, "bandwidth_mib must be positive"),
        ({"bandwidth_mib": "fast"}, "bandwidth_mib must be a whole number"),
        ({"post_copy": True, "parallel_connections": 4}, "post_copy cannot be combined with parallel_connections"),
        ({"compression": ["lz4"]}, "compression methods must be among"),
        ({"auto_converge": "yes"}, "auto_converge must be true or false"),
        ({"downtime_schedule": [{"stalled": 2, "downtime_ms": 100}, {"stalled": 1, "downtime_ms": 200}]}, "must be greater than the step before"),
        ({"downtime_schedule": [{"stalled": 1, "action": "abort"}, {"stalled": 2, "downtime_ms": 5}]}, "follows an abort step"),
        ({"downtime_schedule": [{"stalled": 1, "action": "explode"}]}, "action must be one of"),
        ({"downtime_schedule": [{"stalled": 1, "action": "downtime"}]}, "gives no downtime_ms"),
        ({"downtime_schedule": [{"stalled": 1, "action": "post_copy"}]}, "post_copy is not enabled"),
        ({"frobnicate": 1}, "unknown policy settings: frobnicate"),
    ],
)
def test_invalid_overrides_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(pol.PolicyError, match=message):
        pol.apply_overrides(pol.base_policy("legacy"), overrides)


def test_none_overrides_leave_the_policy_alone() -> None:
    base = pol.base_policy("minimal_downtime")
    assert pol.apply_overrides(base, {"bandwidth_mib": None, "post_copy": None}) == base


@pytest.mark.parametrize("memory_mib, expected", [(256, 120), (1024, 150), (4096, 600), (16384, 2400)])
def test_default_timeout_per_gib_with_floor(memory_mib: int, expected: int) -> None:
    assert pol.default_timeout(memory_mib) == expected


def test_tracker_advances_one_step_per_stalled_iteration() -> None:
    schedule = pol.parse_schedule([{"stalled": 1, "downtime_ms": 150}, {"stalled": 2, "downtime_ms": 200}, {"stalled": 3, "action": "abort"}])
    tracker = pol.ScheduleTracker(schedule)
    assert tracker.observe(1, 1000) is None  # first iteration: nothing to compare with
    assert tracker.observe(1, 500) is None  # same iteration, polled again
    assert tracker.observe(2, 800) is None  # progress: 800 < 1000
    step = tracker.observe(3, 900)  # stalled: 900 >= 800
    assert step is not None and step.downtime_ms == 150
    assert tracker.observe(4, 700) is None  # progress again
    step = tracker.observe(5, 700)
    assert step is not None and step.downtime_ms == 200
    step = tracker.observe(6, 750)
    assert step is not None and step.action == "abort"
    assert tracker.observe(7, 800) is None  # schedule exhausted


def test_tracker_ignores_missing_stats() -> None:
    tracker = pol.ScheduleTracker(pol.base_policy("minimal_downtime").schedule)
    assert tracker.observe(None, 5) is None and tracker.observe(3, None) is None and tracker.stalled == 0
