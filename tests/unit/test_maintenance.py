"""The maintenance mark, host_maintenance's parameter checks, and the maintenance_report filter (no hypervisor)."""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import pytest

from ansible_collections.virtops.migration.plugins.filter.maintenance_report import FilterModule, maintenance_report
from ansible_collections.virtops.migration.plugins.module_utils._migration import maintenance as mt
from ansible_collections.virtops.migration.plugins.module_utils._migration.errors import MigrationError


def test_mark_round_trip_and_status(tmp_path: Path) -> None:
    state_dir = str(tmp_path / "state")
    assert mt.read_mark(state_dir) is None
    assert mt.status(state_dir) == {"active": False, "since": None, "reason": None, "by": None, "shutdown_vms": []}
    mark = {"since": "2026-11-26T04:20:00.000+00:00", "reason": "kernel", "by": "awx", "shutdown_vms": ["lic1"]}
    mt.write_mark(state_dir, mark)
    assert mt.read_mark(state_dir) == mark
    assert mt.status(state_dir) == dict(mark, active=True)
    assert not list((tmp_path / "state").glob("*.new")), "written atomically, no partial file left"
    mt.clear_mark(state_dir)
    mt.clear_mark(state_dir)
    assert mt.read_mark(state_dir) is None


def test_unreadable_mark_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / mt.MARK_FILE).write_text("{not json")
    with pytest.raises(MigrationError, match="Cannot read the maintenance mark .*maintenance.json"):
        mt.read_mark(str(tmp_path))


BASE: dict[str, t.Any] = {"state": "maintenance", "uri": "qemu:///system", "candidates": ["qemu+tcp://hv2/system"]}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"candidates": []}, "state=maintenance needs the other hosts of the cluster in candidates"),
        ({"max_outgoing": 0}, "max_outgoing must be 1 or more"),
        ({"max_incoming": 0}, "max_incoming must be 1 or more"),
        ({"shutdown_timeout": 0}, "shutdown_timeout must be 1 or more"),
        ({"memory_reserved_mib": -1}, "memory_reserved_mib must be zero or more"),
        ({"candidates": [{"uri": "qemu+tcp://hv2/system", "memory_reserved_mib": -5}]}, r"candidates\[0\].memory_reserved_mib must be"),
        ({"cluster_policy": {"priority": "urgent"}}, "cluster_policy.priority must be one of"),
    ],
)
def test_bad_parameters_are_refused_before_any_connection(changes: dict[str, t.Any], message: str) -> None:
    with pytest.raises(MigrationError, match=message):
        mt.request_from_params(dict(BASE, **changes))


def test_active_needs_no_candidates() -> None:
    request = mt.request_from_params({"state": "active"})
    assert request.candidates == [] and request.state_dir == mt.STATE_DIR and request.max_outgoing == 2


RESULT: dict[str, t.Any] = {
    "changed": True,
    "plan": {
        "source": {"name": "hv1"},
        "moves": [
            {"vm": "db1", "priority": "high", "memory_mib": 4096, "from": "hv1", "to": "hv3", "kind": "live", "policy": "minimal_downtime"},
            {"vm": "web1", "priority": "low", "memory_mib": 1024, "from": "hv1", "to": "hv2", "kind": "live", "policy": "legacy"},
        ],
        "shutdown": [{"vm": "lic1", "reason": "VM 'lic1' has migration_mode 'none'"}],
        "load": {"hv2": {"vms": 1, "memory_mib": 1024, "available_mib_before": 8000, "available_mib_after": 6976}},
    },
    "vms": [
        {"vm": "web1", "priority": "low", "from": "hv1", "to": "hv2", "started_at_s": 3.2, "duration_s": 2.0, "downtime_ms": 40, "outcome": "migrated"},
        {"vm": "db1", "priority": "high", "from": "hv1", "to": "hv3", "started_at_s": 0.1, "duration_s": 3.0, "outcome": "failed", "error": "lost connection"},
    ],
    "shutdown": ["lic1"],
    "load": {"hv2": {"available_mib": 6900}},
    "maintenance": {"since": "2026-11-26T04:20:00.000+00:00", "reason": "kernel", "by": "awx"},
}


def test_report_lists_plan_runs_in_start_order_and_load() -> None:
    lines = maintenance_report(RESULT)
    text = "\n".join(lines)
    assert lines[0] == "Plan for hv1:"
    assert text.index("db1") < text.index("web1")
    runs = lines[lines.index("Migrations, in the order they started:") + 2 :]
    assert runs[0].split()[1] == "db1" and "failed: lost connection" in runs[0]
    assert runs[1].split()[1] == "web1" and runs[1].rstrip().endswith("migrated")
    assert "shutdown: VM 'lic1' has migration_mode 'none'" in text
    assert "Shut down for the maintenance: lic1" in text
    assert "hv2" in lines[-2] and "6976" in lines[-2] and "now 6900" in lines[-2]
    assert lines[-1].startswith("In maintenance since 2026-11-26T04:20:00.000+00:00 (reason: kernel, by: awx)")


def test_report_of_a_failure_before_anything_moved() -> None:
    failed = {"failed": True, "msg": "hv1 cannot go into maintenance, nothing was moved: VM 'x' ...", "plan": {"source": {"name": "hv1"}, "moves": []}}
    lines = maintenance_report(failed)
    assert lines[0].startswith("hv1 cannot go into maintenance") and "Plan for hv1:" in lines
    assert json.dumps(lines)  # plain strings, printable by debug


def test_filter_is_registered() -> None:
    assert FilterModule().filters()["maintenance_report"] is maintenance_report
