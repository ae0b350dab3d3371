"""The soak's pure parts (tests/soak/soaklib.py): a seed replays its plan, and snapshots are judged right.

The soak itself runs on the lab (`make soak`); what it decides from libvirt's view is checked here on
small hand-made snapshots.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "soak"))

import soaklib as sl  # noqa: E402 pylint: disable=wrong-import-position,import-error

RUNNING = sl.Domain("running", True)
OFF = sl.Domain("shut off", True)
SAVED = sl.Domain("shut off", True, managed_save=True)


def steps(seed: int, count: int = 200) -> list[sl.Step]:
    return list(itertools.islice(sl.plan(seed, 7, 3), count))


def test_a_seed_replays_the_same_plan_and_another_seed_does_not() -> None:
    assert steps(42) == steps(42)
    assert steps(42) != steps(43)
    # A replay that stops early runs the same first steps.
    assert steps(42, 20) == steps(42)[:20]


def test_a_plan_covers_every_operation_and_fault_with_valid_indexes() -> None:
    plan = steps(1, 400)
    kinds = {op.kind for step in plan for op in step.operations}
    assert kinds == set(sl.OPERATIONS)
    assert {step.fault for step in plan} == set(sl.FAULTS) | {None}
    assert any(len(step.operations) == 2 for step in plan)
    for step in plan:
        for op in step.operations:
            assert op.vm is None or 0 <= op.vm < 7
            assert op.host is None or 0 <= op.host < 3
            assert op.dest_offset is None or 0 <= op.dest_offset < 2
            assert op.kind != sl.CANCEL or op.vm == 0
        assert step.fault_delay_s >= 0 or step.fault in sl.STATE_FAULTS


def kinds(found: list[sl.Violation]) -> list[str]:
    return sorted(violation.kind for violation in found)


def test_a_healthy_lab_has_no_violation() -> None:
    snap = sl.Snapshot({"h1": {"a": RUNNING}, "h2": {"b": sl.Domain("paused", True)}, "h3": {"c": SAVED}}, {"h1": None, "h2": "preparing"})
    assert sl.judge(snap, ["a", "b", "c"]) == []


@pytest.mark.parametrize(
    ("domains", "qemu", "expected"),
    [
        ({"h1": {}, "h2": {}}, {}, [sl.VM_LOST]),
        ({"h1": {"a": OFF}, "h2": {}}, {}, [sl.VM_STOPPED]),
        ({"h1": {"a": RUNNING}, "h2": {"a": sl.Domain("paused", True)}}, {}, [sl.ACTIVE_TWICE, sl.DEFINED_TWICE]),
        ({"h1": {"a": RUNNING}, "h2": {}}, {"a": 2}, [sl.ACTIVE_TWICE]),
        ({"h1": {"a": RUNNING}, "h2": {"a": OFF}}, {}, [sl.DEFINED_TWICE]),
        ({"h1": {"a": sl.Domain("running", False)}, "h2": {}}, {}, [sl.NOT_PERSISTENT]),
    ],
)
def test_each_kind_of_lost_or_copied_vm(domains: dict[str, dict[str, sl.Domain]], qemu: dict[str, int], expected: list[str]) -> None:
    assert kinds(sl.judge(sl.Snapshot(domains, qemu=qemu), ["a"])) == expected


def test_a_planted_stale_copy_is_no_violation_unless_the_vm_runs_from_it_and_elsewhere() -> None:
    snap = sl.Snapshot({"h1": {"a": RUNNING}, "h2": {"a": OFF}})
    assert sl.judge(snap, ["a"], planted={("a", "h2")}) == []
    # Only the planted copy is left: the VM itself is gone.
    assert kinds(sl.judge(sl.Snapshot({"h1": {}, "h2": {"a": OFF}}), ["a"], planted={("a", "h2")})) == [sl.VM_LOST]


def test_an_unreadable_host_is_reported_and_hides_no_loss_it_might_hold() -> None:
    snap = sl.Snapshot({"h1": {}, "h2": {}}, errors={"h2": "libvirtd is not running"})
    assert kinds(sl.judge(snap, ["a"])) == [sl.HOST_UNREADABLE]


def test_a_host_marked_in_maintenance_may_not_run_a_vm() -> None:
    snap = sl.Snapshot({"h1": {"a": RUNNING}, "h2": {"x": sl.Domain("running", False)}}, {"h1": "maintenance", "h2": "maintenance"})
    found = sl.judge(snap, ["a"])
    assert kinds(found) == [sl.MAINTENANCE_RUNS_VMS, sl.MAINTENANCE_RUNS_VMS]
    assert "h2" in found[1].detail and "x" in found[1].detail


def test_a_transient_vm_must_run_on_exactly_one_host() -> None:
    assert sl.judge(sl.Snapshot({"h1": {"a": RUNNING, "t": sl.Domain("running", False)}}), ["a"], transients=["t"]) == []
    assert kinds(sl.judge(sl.Snapshot({"h1": {"a": RUNNING}}), ["a"], transients=["t"])) == [sl.VM_LOST]


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ([sl.Claim("on", "a", "h2", "op1")], []),
        ([sl.Claim("on", "a", "h1", "op1")], [sl.RESULT_CONTRADICTS]),
        ([sl.Claim("stayed", "a", "h1", "op1")], [sl.RESULT_CONTRADICTS]),
        # Another operation of the step moved it: the failed one's source says nothing.
        ([sl.Claim("stayed", "a", "h1", "op1"), sl.Claim("on", "a", "h2", "op2")], []),
        # Moved to h1 by one operation, then on to h2 by another of the same step.
        ([sl.Claim("on", "a", "h1", "op1"), sl.Claim("on", "a", "h2", "op2")], []),
        ([sl.Claim("on", "a", "h1", "op1"), sl.Claim("on", "a", "h3", "op2")], [sl.RESULT_CONTRADICTS, sl.RESULT_CONTRADICTS]),
        ([sl.Claim("off", "a", "h2", "op1")], [sl.RESULT_CONTRADICTS]),
        ([sl.Claim("unmarked", None, "h3", "op1")], [sl.RESULT_CONTRADICTS]),
        ([sl.Claim("unmarked", None, "h1", "op1")], []),
    ],
)
def test_results_are_held_against_libvirt(claims: list[sl.Claim], expected: list[str]) -> None:
    snap = sl.Snapshot({"h1": {}, "h2": {"a": RUNNING}, "h3": {}}, {"h1": None, "h2": None, "h3": "preparing"})
    assert kinds(sl.judge(snap, ["a"], claims=claims)) == expected
