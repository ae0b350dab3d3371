"""Migration settings: validation and inheritance VM > cluster > global > default (pure)."""

from __future__ import annotations

import itertools
import typing as t

import pytest

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import settings as st

UNSET, INHERIT = "unset", "inherit"
LEVEL_VALUES = {"vm": "high", "cluster": "low", "global": "medium"}


def level(choice: str, value: str) -> dict[str, t.Any]:
    if choice == UNSET:
        return {}
    return {"priority": INHERIT if choice == INHERIT else value}


@pytest.mark.parametrize("vm, cluster, global_", list(itertools.product([UNSET, INHERIT, "set"], repeat=3)))
def test_resolution_table(vm: str, cluster: str, global_: str) -> None:
    """Every combination of unset / inherit / a value at each level: the narrowest value wins."""
    resolved = st.resolve(level(vm, "high"), level(cluster, "low"), level(global_, "medium"))["priority"]
    for name, choice in (("vm", vm), ("cluster", cluster), ("global", global_)):
        if choice == "set":
            assert resolved == {"value": LEVEL_VALUES[name], "source": name}
            break
    else:
        assert resolved == {"value": "medium", "source": "default"}


def test_defaults_when_nothing_is_set() -> None:
    values = st.effective({})
    assert values == {
        "priority": "medium",
        "migration_mode": "auto",
        "pinned_hosts": [],
        "policy": "minimal_downtime",
        "auto_converge": None,
        "compression": None,
        "bandwidth_mib": None,
        "max_downtime_ms": None,
        "guest_hooks": False,
        "high_availability": False,
    }


def test_each_setting_resolves_independently() -> None:
    resolved = st.resolve(
        {"priority": "high", "bandwidth_mib": "inherit"},
        {"bandwidth_mib": 128, "migration_mode": "manual"},
        {"policy": "suspend_workload", "migration_mode": "none", "auto_converge": False},
    )
    assert resolved["priority"] == {"value": "high", "source": "vm"}
    assert resolved["bandwidth_mib"] == {"value": 128, "source": "cluster"}
    assert resolved["migration_mode"] == {"value": "manual", "source": "cluster"}
    assert resolved["policy"] == {"value": "suspend_workload", "source": "global"}
    assert resolved["auto_converge"] == {"value": False, "source": "global"}
    assert resolved["pinned_hosts"] == {"value": [], "source": "default"}


def test_false_is_a_value_not_unset() -> None:
    assert st.resolve({"auto_converge": False}, {"auto_converge": True})["auto_converge"] == {"value": False, "source": "vm"}


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("priority", "urgent", "must be one of low, medium, high or inherit"),
        ("migration_mode", "sometimes", "must be one of auto, manual, none or inherit"),
        ("pinned_hosts", "hv1", "must be a list of host names"),
        ("pinned_hosts", ["hv1", ""], "must be a list of host names"),
        ("policy", "fastest", "unknown migration policy 'fastest'"),
        ("policy", {"based_on": "legacy", "post_copy": True, "parallel_connections": 2}, "post_copy cannot be combined"),
        ("auto_converge", "maybe", "must be true, false or inherit"),
        ("compression", ["lz4"], "must be a list of xbzrle"),
        ("bandwidth_mib", -1, "must be a positive whole number"),
        ("bandwidth_mib", True, "must be a positive whole number"),
        ("max_downtime_ms", "fast", "must be a positive whole number"),
        ("colour", "blue", "unknown migration setting 'colour'"),
    ],
)
def test_invalid_values_name_the_setting(name: str, value: t.Any, message: str) -> None:
    with pytest.raises(st.SettingsError, match=message):
        st.validate({name: value}, "options")


@pytest.mark.parametrize(
    "name, given, stored",
    [
        ("auto_converge", "yes", True),
        ("auto_converge", "false", False),
        ("bandwidth_mib", "64", 64),
        ("pinned_hosts", ["hv3", "hv2", "hv3"], ["hv2", "hv3"]),
        ("compression", "xbzrle", ["xbzrle"]),
        ("priority", "inherit", "inherit"),
    ],
)
def test_values_are_normalised(name: str, given: t.Any, stored: t.Any) -> None:
    assert st.validate({name: given}, "options") == {name: stored}


def test_cluster_level_is_validated_but_vm_level_is_read_leniently() -> None:
    assert st.resolve({"future_setting": 1, "priority": "low"})["priority"]["value"] == "low"
    with pytest.raises(st.SettingsError, match="cluster_policy.priority"):
        st.resolve({}, {"priority": "urgent"})


def test_effective_policy_applies_single_settings() -> None:
    values = st.effective({"policy": "legacy", "auto_converge": True}, {"bandwidth_mib": 64})
    policy = st.effective_policy(values)
    assert (policy.name, policy.auto_converge, policy.bandwidth_mib, policy.initial_downtime_ms) == ("legacy", True, 64, 300)


# -- reading a VM's own settings from its metadata, one setting at a time

MODE_NONE = {"migration_mode": "none"}


@pytest.mark.parametrize(
    "stored, metadata_error, usable, problems",
    [
        pytest.param({}, None, {}, set(), id="nothing-stored"),
        pytest.param(None, None, {}, set(), id="no-metadata"),
        pytest.param(
            {"priority": "high", "migration_mode": "manual", "pinned_hosts": ["h3", "h2"], "bandwidth_mib": 64},
            None,
            {"priority": "high", "migration_mode": "manual", "pinned_hosts": ["h2", "h3"], "bandwidth_mib": 64},
            set(),
            id="all-readable",
        ),
        pytest.param(
            {"priority": "urgent", "migration_mode": "auto", "bandwidth_mib": 64, "auto_converge": True},
            None,
            {"migration_mode": "auto", "bandwidth_mib": 64, "auto_converge": True},
            {"priority"},
            id="bad-priority-keeps-the-others",
        ),
        pytest.param(
            {"priority": "urgent", "migration_mode": "none"},
            None,
            MODE_NONE,
            {"priority"},
            id="bad-priority-keeps-mode-none",
        ),
        pytest.param(
            {"bandwidth_mib": -1, "max_downtime_ms": 2_000_001, "compression": [5], "policy": "warp", "priority": "low"},
            None,
            {"priority": "low"},
            {"bandwidth_mib", "max_downtime_ms", "compression", "policy"},
            id="bad-policy-settings-left-out",
        ),
        pytest.param(
            {"migration_mode": "sometimes", "priority": "high"},
            None,
            {"priority": "high", "migration_mode": "none"},
            {"migration_mode"},
            id="unreadable-mode-is-none",
        ),
        pytest.param(
            {"migration_mode": "auto", "pinned_hosts": "h2"},
            None,
            MODE_NONE,
            {"pinned_hosts"},
            id="unreadable-pinning-is-none",
        ),
        pytest.param(
            {"pinned_hosts": ["h2", ""]},
            None,
            MODE_NONE,
            {"pinned_hosts"},
            id="empty-pinned-name-is-none",
        ),
        pytest.param(
            {},
            "migration metadata is not well-formed XML: mismatched tag",
            MODE_NONE,
            {st.WHOLE_METADATA},
            id="whole-metadata-unreadable-is-none",
        ),
        pytest.param(
            {"future_setting": {"x": 1}, "colour": "blue", "priority": "low"},
            None,
            {"priority": "low"},
            set(),
            id="unknown-names-ignored",
        ),
        pytest.param(
            {"priority": "inherit", "compression": "xbzrle", "auto_converge": "no"},
            None,
            {"priority": "inherit", "compression": ["xbzrle"], "auto_converge": False},
            set(),
            id="values-normalised",
        ),
    ],
)
def test_readable_judges_each_setting_on_its_own(
    stored: t.Optional[dict[str, t.Any]], metadata_error: t.Optional[str], usable: dict[str, t.Any], problems: t.Set[str]
) -> None:
    values, found = st.readable(stored, metadata_error)
    assert values == usable
    assert set(found) == problems
    if metadata_error is not None:
        assert found[st.WHOLE_METADATA] == metadata_error
    for name in set(found) - {st.WHOLE_METADATA}:
        assert found[name].startswith("metadata.%s" % name)


def test_readable_never_makes_a_vm_more_movable() -> None:
    # Whatever the migration mode says, an unreadable pinning keeps the VM where it is.
    values, problems = st.readable({"migration_mode": "auto", "pinned_hosts": 7})
    assert st.effective(values)["migration_mode"] == "none"
    assert st.describe_problems(problems) == "metadata.pinned_hosts must be a list of host names, got 7"


def test_describe_problems_lists_them_in_name_order() -> None:
    assert st.describe_problems({"priority": "b is bad", "bandwidth_mib": "a is bad"}) == "a is bad; b is bad"
