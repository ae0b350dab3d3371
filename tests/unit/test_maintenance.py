"""The maintenance mark, host_maintenance's parameter checks, and the maintenance_report filter (no hypervisor)."""

from __future__ import annotations

import json
import os
import time
import typing as t
from pathlib import Path

import pytest

from ansible_collections.virtops.migration.plugins.filter.maintenance_report import FilterModule, maintenance_report
from ansible_collections.virtops.migration.plugins.module_utils._migration import maintenance as mt
from ansible_collections.virtops.migration.plugins.module_utils._migration.errors import MigrationError


def test_mark_round_trip_and_status(tmp_path: Path) -> None:
    state_dir = str(tmp_path / "state")
    assert mt.read_mark(state_dir) is None
    assert mt.status(state_dir) == {"active": False, "state": None, "since": None, "reason": None, "by": None, "shutdown_vms": []}
    mark = {"state": "preparing", "since": "2026-11-26T04:20:00.000+00:00", "reason": "kernel", "by": "awx", "shutdown_vms": ["lic1"]}
    mt.write_mark(state_dir, mark)
    assert mt.read_mark(state_dir) == mark
    assert mt.status(state_dir) == dict(mark, active=True)
    mt.write_mark(state_dir, dict(mark, state=mt.MAINTENANCE))
    assert mt.status(state_dir)["state"] == "maintenance"
    assert sorted(path.name for path in (tmp_path / "state").iterdir()) == [mt.MARK_FILE], "written atomically, no temporary file left"
    assert (tmp_path / "state" / mt.MARK_FILE).stat().st_mode & 0o777 == 0o600
    mt.clear_mark(state_dir)
    mt.clear_mark(state_dir)
    assert mt.read_mark(state_dir) is None


def test_a_mark_without_a_state_is_in_maintenance(tmp_path: Path) -> None:
    # Marks written before the mark had a state meant "in maintenance".
    (tmp_path / mt.MARK_FILE).write_text(json.dumps({"since": "2026-11-26T04:20:00.000+00:00", "reason": "kernel"}))
    assert mt.read_mark(str(tmp_path))["state"] == mt.MAINTENANCE
    assert mt.status(str(tmp_path))["state"] == mt.MAINTENANCE


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "Cannot read .*maintenance.json"),
        ("[1, 2]", "The maintenance mark .*maintenance.json is not a JSON object"),
    ],
)
def test_unreadable_mark_is_a_clear_error(tmp_path: Path, content: str, message: str) -> None:
    # Never "active": a host whose mark cannot be read may be about to reboot.
    (tmp_path / mt.MARK_FILE).write_text(content)
    with pytest.raises(MigrationError, match=message):
        mt.read_mark(str(tmp_path))


# -- whether the host enforces maintenance (the libvirt hook, loaded by the running libvirtd)

A_DAY = 24 * 3600.0


@pytest.fixture
def hook_files(tmp_path: Path) -> t.Tuple[Path, Path]:
    """An executable hook file, and a pid file naming this test process in place of libvirtd."""
    hook = tmp_path / "virtops-maintenance"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    pid_file = tmp_path / "libvirtd.pid"
    pid_file.write_text("%d\n" % os.getpid())
    return hook, pid_file


def set_mtime(path: Path, when: float) -> None:
    os.utime(path, (when, when))


def test_hook_installed_before_libvirtd_started_is_loaded(hook_files: t.Tuple[Path, Path]) -> None:
    hook, pid_file = hook_files
    set_mtime(hook, time.time() - 365 * A_DAY)  # long before this process started
    assert mt.hook_status(str(hook), [str(pid_file)]) == {"path": str(hook), "installed": True, "loaded": True}


def test_hook_newer_than_libvirtd_is_not_loaded(hook_files: t.Tuple[Path, Path]) -> None:
    # libvirtd reads its hooks when it starts: one installed (or changed) later is not used yet.
    hook, pid_file = hook_files
    set_mtime(hook, time.time() + A_DAY)  # after this process started
    assert mt.hook_status(str(hook), [str(pid_file)]) == {"path": str(hook), "installed": True, "loaded": False}


def test_missing_hook_is_not_installed(hook_files: t.Tuple[Path, Path]) -> None:
    hook, pid_file = hook_files
    hook.unlink()
    assert mt.hook_status(str(hook), [str(pid_file)]) == {"path": str(hook), "installed": False, "loaded": False}


def test_non_executable_hook_is_not_installed(hook_files: t.Tuple[Path, Path]) -> None:
    # libvirtd runs only executable hook scripts.
    hook, pid_file = hook_files
    hook.chmod(0o644)
    set_mtime(hook, time.time() - 365 * A_DAY)
    assert mt.hook_status(str(hook), [str(pid_file)]) == {"path": str(hook), "installed": False, "loaded": False}


@pytest.mark.parametrize("pid_text", [None, "", "not a pid\n", "999999999\n"])
def test_unknown_libvirtd_start_leaves_loaded_unknown(hook_files: t.Tuple[Path, Path], pid_text: t.Optional[str]) -> None:
    hook, pid_file = hook_files
    if pid_text is None:
        pid_file.unlink()
    else:
        pid_file.write_text(pid_text)
    assert mt.hook_status(str(hook), [str(pid_file)]) == {"path": str(hook), "installed": True, "loaded": None}


def test_the_first_readable_pid_file_counts(hook_files: t.Tuple[Path, Path], tmp_path: Path) -> None:
    hook, pid_file = hook_files
    set_mtime(hook, time.time() - 365 * A_DAY)
    missing = tmp_path / "nowhere" / "libvirtd.pid"
    assert mt.hook_status(str(hook), [str(missing), str(pid_file)])["loaded"] is True


BASE: dict[str, t.Any] = {"state": "maintenance", "uri": "qemu:///system", "candidates": ["qemu+tcp://hv2/system"]}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"candidates": []}, "state=maintenance needs the other hosts of the cluster in candidates"),
        ({"max_outgoing": 0}, "max_outgoing must be at least 1 and at most 64, got 0"),
        ({"max_outgoing": 65}, "max_outgoing must be at least 1 and at most 64, got 65"),
        ({"max_outgoing": 2.5}, "max_outgoing must be a whole number, got 2.5"),
        ({"max_outgoing": True}, "max_outgoing must be a whole number, got True"),
        ({"max_incoming": 0}, "max_incoming must be at least 1 and at most 64, got 0"),
        ({"max_incoming": 65}, "max_incoming must be at least 1 and at most 64, got 65"),
        ({"shutdown_timeout": 0}, "shutdown_timeout must be at least 1 and at most 86400, got 0"),
        ({"shutdown_timeout": 86401}, "shutdown_timeout must be at least 1 and at most 86400, got 86401"),
        ({"memory_reserved_mib": -1}, "memory_reserved_mib must be at least 0 and at most 1099511627776, got -1"),
        ({"wait_sleep": 0}, "wait_sleep must be more than 0 and at most 60, got 0"),
        ({"wait_sleep": -1}, "wait_sleep must be more than 0 and at most 60, got -1"),
        ({"wait_sleep": 61}, "wait_sleep must be more than 0 and at most 60, got 61"),
        ({"memory_reserved_mib": 2**40 + 1}, "memory_reserved_mib must be at least 0 and at most 1099511627776, got 1099511627777"),
        ({"monitor_interval": 0}, "monitor_interval must be more than 0 and at most 3600, got 0"),
        ({"wait_sleep": float("nan")}, "wait_sleep must be a number, got nan"),
        ({"monitor_interval": 3601}, "monitor_interval must be more than 0 and at most 3600, got 3601"),
        ({"candidates": [{"uri": "qemu+tcp://hv2/system", "maintenance": "yes"}]}, r"candidates\[0\].maintenance must be true or false, got 'yes'"),
        ({"candidates": [{"uri": "qemu+tcp://hv2/system", "name": ""}]}, r"candidates\[0\].name must be a non-empty string, got ''"),
        ({"candidates": [{"uri": "qemu+tcp://hv2/system", "memory_reserved_mib": -5}]}, r"candidates\[0\].memory_reserved_mib must be"),
        ({"cluster_policy": {"priority": "urgent"}}, "cluster_policy.priority must be one of"),
    ],
)
def test_bad_parameters_are_refused_before_any_connection(changes: dict[str, t.Any], message: str) -> None:
    with pytest.raises(MigrationError, match=message):
        mt.request_from_params(dict(BASE, **changes))


@pytest.mark.parametrize(
    "name, value, attribute",
    [
        ("max_outgoing", 1, "max_outgoing"),
        ("max_outgoing", 64, "max_outgoing"),
        ("max_incoming", 64, "max_incoming"),
        ("shutdown_timeout", 1, "shutdown_timeout"),
        ("shutdown_timeout", 86400, "shutdown_timeout"),
        ("wait_sleep", 60, "poll_interval"),
        ("wait_sleep", 0.01, "poll_interval"),
        ("monitor_interval", 3600, "monitor_interval"),
        ("memory_reserved_mib", 2**40, "memory_reserved_mib"),
    ],
)
def test_numbers_at_the_ends_of_their_ranges_are_accepted(name: str, value: t.Any, attribute: str) -> None:
    assert getattr(mt.request_from_params(dict(BASE, **{name: value})), attribute) == value


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
