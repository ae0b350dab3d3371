"""Policies, schedules and the schedule tracker (pure logic)."""

from __future__ import annotations

import pytest

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import policy as pol


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


# -- range checks: every bad value is a PolicyError naming the option, never another exception


@pytest.mark.parametrize(
    "value, kwargs, message",
    [
        (float("nan"), {}, "wait must be a number, got nan"),
        (float("inf"), {}, "wait must be a number, got inf"),
        (float("-inf"), {}, "wait must be a number, got -inf"),
        (True, {}, "wait must be a number, got True"),
        (False, {"whole": True}, "wait must be a whole number, got False"),
        ("5", {}, "wait must be a number, got '5'"),
        ("", {}, "wait must be a number, got ''"),
        (None, {}, "wait must be a number, got None"),
        ([1], {}, "wait must be a number, got \\[1\\]"),
        (2.5, {"whole": True}, "wait must be a whole number, got 2.5"),
        (0, {}, "wait must be at least 1 and at most 10, got 0"),
        (11, {}, "wait must be at least 1 and at most 10, got 11"),
        (10.5, {}, "wait must be at least 1 and at most 10, got 10.5"),
        (1, {"exclusive_minimum": True}, "wait must be more than 1 and at most 10, got 1"),
        (0.5, {"exclusive_minimum": True}, "wait must be more than 1 and at most 10, got 0.5"),
    ],
)
def test_check_number_refuses(value: object, kwargs: dict, message: str) -> None:
    with pytest.raises(pol.PolicyError, match=message):
        pol.check_number(value, "wait", 1, 10, **kwargs)


@pytest.mark.parametrize(
    "value, kwargs",
    [(1, {}), (10, {}), (1.0, {"whole": True}), (5.5, {}), (1.0001, {"exclusive_minimum": True}), (10, {"exclusive_minimum": True})],
)
def test_check_number_accepts_the_range_and_returns_the_value(value: float, kwargs: dict) -> None:
    assert pol.check_number(value, "wait", 1, 10, **kwargs) == value


@pytest.mark.parametrize(
    "policy, message",
    [
        ({"compression": 5}, "compression must be a list of methods among xbzrle, mt, zlib, zstd, got 5"),
        ({"compression": [1]}, "compression methods must be among xbzrle, mt, zlib, zstd, got 1"),
        ({"compression": {"xbzrle": True}}, "compression must be a list of methods"),
        ({"bandwidth_mib": 2**70}, "bandwidth_mib must be at most %d, got %d" % (pol.MAX_BANDWIDTH_MIB, 2**70)),
        ({"bandwidth_mib": float("inf")}, "bandwidth_mib must be a whole number, got inf"),
        ({"bandwidth_mib": float("nan")}, "bandwidth_mib must be a whole number, got nan"),
        ({"max_downtime_ms": 2_000_001}, "max_downtime_ms must be at most 2000000, got 2000001"),
        ({"max_downtime_ms": 0}, "max_downtime_ms must be positive, got 0"),
        ({"parallel_connections": 256}, "parallel_connections must be at most 255, got 256"),
        ({"max_concurrent": 65}, "max_concurrent must be at most 64, got 65"),
        ({"max_concurrent": True}, "max_concurrent must be a whole number, got True"),
        ({"downtime_schedule": {"stalled": 1, "downtime_ms": 100}}, "downtime_schedule must be a list of steps"),
        ({"downtime_schedule": "abort"}, "downtime_schedule must be a list of steps, got 'abort'"),
        ({"downtime_schedule": 5}, "downtime_schedule must be a list of steps, got 5"),
        ({"downtime_schedule": [5]}, r"downtime_schedule\[0\] must be a mapping"),
        (
            {"downtime_schedule": [{"stalled": 1, "action": "abort", "downtime_ms": 500}]},
            r"downtime_schedule\[0\]: downtime_ms goes only with action downtime, not abort",
        ),
        ({"downtime_schedule": [{"stalled": 10001, "action": "abort"}]}, r"downtime_schedule\[0\].stalled must be at most 10000"),
        ({"downtime_schedule": [{"stalled": float("inf"), "action": "abort"}]}, r"downtime_schedule\[0\].stalled must be a whole number"),
        (
            {"downtime_schedule": [{"stalled": 1, "downtime_ms": 2_000_001}]},
            r"downtime_schedule\[0\].downtime_ms must be at most 2000000",
        ),
        ({"downtime_schedule": [{"stalled": 1, "action": ["abort"]}]}, r"downtime_schedule\[0\].action must be one of"),
        ({"based_on": ["legacy"]}, r"policy.based_on must be a built-in policy name, got \['legacy'\]"),
        ({"based_on": 5}, "policy.based_on must be a built-in policy name, got 5"),
        ({"based_on": None}, "policy.based_on must be a built-in policy name, got None"),
        ({"based_on": "warp"}, "unknown migration policy 'warp'"),
        ({"name": ""}, "policy.name must be a non-empty string"),
        ({"name": 5}, "policy.name must be a non-empty string, got 5"),
    ],
)
def test_bad_custom_policies_are_policy_errors(policy: dict, message: str) -> None:
    with pytest.raises(pol.PolicyError, match=message):
        pol.base_policy(policy)
    overrides = {key: value for key, value in policy.items() if key not in ("based_on", "name")}
    if overrides:
        with pytest.raises(pol.PolicyError, match=message):
            pol.apply_overrides(pol.base_policy("minimal_downtime"), overrides)


@pytest.mark.parametrize(
    "compression, expected",
    [("xbzrle", ("xbzrle",)), (["zstd"], ("zstd",)), (("mt", "zlib"), ("mt", "zlib")), ([], ())],
)
def test_compression_as_one_method_or_a_list(compression: object, expected: tuple) -> None:
    assert pol.base_policy({"based_on": "legacy", "compression": compression}).compression == expected


@pytest.mark.parametrize("policy", [5, 1.5, True, ["legacy"]])
def test_a_policy_is_a_name_or_a_mapping(policy: object) -> None:
    with pytest.raises(pol.PolicyError, match="policy must be a built-in policy name or a mapping"):
        pol.base_policy(policy)  # type: ignore[arg-type]


def test_the_largest_values_libvirt_carries_are_accepted() -> None:
    custom = pol.base_policy(
        {"based_on": "legacy", "bandwidth_mib": pol.MAX_BANDWIDTH_MIB, "max_downtime_ms": pol.MAX_DOWNTIME_MS, "parallel_connections": 255}
    )
    assert (custom.bandwidth_mib, custom.initial_downtime_ms, custom.parallel_connections) == (pol.MAX_BANDWIDTH_MIB, 2_000_000, 255)
