"""migration_policy and migration_policy_info on real lab VMs; vm_migrate honouring the settings."""

from __future__ import annotations

import shlex
import typing as t
from pathlib import Path

from labkit import assert_no_vm_lost, read_marker, run_module, running_on, uri, virtlab, vm_homes, write_marker

POLICY = "virtops.migration.migration_policy"
INFO = "virtops.migration.migration_policy_info"
MIGRATE = "virtops.migration.vm_migrate"
FOREIGN = "<other xmlns='https://example.invalid/keep'>keep me</other>"


def own_settings(lab: Path, host: str, vm: str, **levels: t.Any) -> dict[str, t.Any]:
    result = run_module(lab, host, INFO, dict({"name": vm}, **levels))
    assert result.get("failed") is not True, result
    return result["vms"][0]


def domain_xml(host: str, vm: str, inactive: bool = False) -> str:
    args = ["ssh", host, "--", "virsh", "dumpxml", vm] + (["--inactive"] if inactive else [])
    return virtlab(*args).stdout


def test_settings_check_real_repeat_then_travel_with_the_vm(lab: Path, new_vm: t.Callable[..., str]) -> None:
    vm = new_vm(priority="low")
    marker = write_marker(vm)
    wanted = {"name": vm, "priority": "high", "migration_mode": "manual", "pinned_hosts": ["lab-h2", "lab-h3"], "bandwidth_mib": 200}

    checked = run_module(lab, "lab-h1", POLICY, wanted, check_mode=True, diff=True)
    assert checked["changed"] is True, checked
    assert checked["diff"]["before"] == {"priority": "low"} and checked["diff"]["after"]["priority"] == "high"
    assert own_settings(lab, "lab-h1", vm)["own"] == {"priority": "low"}, "check mode wrote nothing"

    applied = run_module(lab, "lab-h1", POLICY, wanted)
    assert applied["changed"] is True, applied
    assert applied["settings"] == {"priority": "high", "migration_mode": "manual", "pinned_hosts": ["lab-h2", "lab-h3"], "bandwidth_mib": 200}
    for inactive in (False, True):
        assert "priority>high</" in domain_xml("lab-h1", vm, inactive), "live and persistent definitions both carry it"

    assert run_module(lab, "lab-h1", POLICY, wanted)["changed"] is False
    assert run_module(lab, "lab-h1", POLICY, wanted, check_mode=True)["changed"] is False

    # A manual-mode VM migrates when asked for by name, and its settings travel with it.
    moved = run_module(lab, "lab-h1", MIGRATE, {"name": vm, "destination_uri": uri(lab, "lab-h2")})
    assert moved["changed"] is True and moved["policy"]["bandwidth_mib"] == 200, moved
    info = own_settings(lab, "lab-h2", vm)
    assert info["own"] == applied["settings"]
    assert info["settings"]["priority"] == {"value": "high", "source": "vm"}
    assert read_marker(vm) == marker and running_on(vm) == "lab-h2"
    assert_no_vm_lost()


def test_inheritance_reported_per_level(lab: Path, new_vm: t.Callable[..., str]) -> None:
    vm = new_vm(priority="low")
    info = own_settings(
        lab,
        "lab-h1",
        vm,
        cluster_policy={"priority": "high", "bandwidth_mib": 64},
        global_policy={"policy": "suspend_workload", "bandwidth_mib": 32},
    )
    assert info["settings"]["priority"] == {"value": "low", "source": "vm"}
    assert info["settings"]["bandwidth_mib"] == {"value": 64, "source": "cluster"}
    assert info["settings"]["policy"] == {"value": "suspend_workload", "source": "global"}
    assert info["settings"]["migration_mode"] == {"value": "auto", "source": "default"}
    assert info["policy"]["name"] == "suspend_workload" and info["policy"]["bandwidth_mib"] == 64

    # inherit removes the VM-level value: the cluster's applies. Check mode first: libvirt's XML keeps it.
    checked = run_module(lab, "lab-h1", POLICY, {"name": vm, "priority": "inherit"}, check_mode=True)
    assert checked["changed"] is True and checked["settings"] == {}, checked
    assert "<priority>low</priority>" in domain_xml("lab-h1", vm) and "<priority>low</priority>" in domain_xml("lab-h1", vm, True)
    inherited = run_module(lab, "lab-h1", POLICY, {"name": vm, "priority": "inherit"})
    assert inherited["changed"] is True and inherited["settings"] == {}
    assert "<priority>" not in domain_xml("lab-h1", vm) and "<priority>" not in domain_xml("lab-h1", vm, True)
    assert run_module(lab, "lab-h1", POLICY, {"name": vm, "priority": "inherit"})["changed"] is False
    assert run_module(lab, "lab-h1", POLICY, {"name": vm, "priority": "inherit"}, check_mode=True)["changed"] is False
    info = own_settings(lab, "lab-h1", vm, cluster_policy={"priority": "high"})
    assert info["settings"]["priority"] == {"value": "high", "source": "cluster"}
    assert_no_vm_lost()


def test_absent_removes_only_our_metadata(lab: Path, new_vm: t.Callable[..., str]) -> None:
    vm = new_vm(priority="high")
    command = ["virsh", "metadata", vm, "--uri", "https://example.invalid/keep", "--key", "other", "--set", FOREIGN, "--live", "--config"]
    virtlab("ssh", "lab-h1", "--", shlex.join(command))
    checked = run_module(lab, "lab-h1", POLICY, {"name": vm, "state": "absent"}, check_mode=True)
    assert checked["changed"] is True and checked["diff"]["before"] == {"priority": "high"}, checked
    assert "virtops.github.io" in domain_xml("lab-h1", vm)
    removed = run_module(lab, "lab-h1", POLICY, {"name": vm, "state": "absent"})
    assert removed["changed"] is True, removed
    for inactive in (False, True):
        xml = domain_xml("lab-h1", vm, inactive)
        assert "virtops.github.io" not in xml and "keep me" in xml
    assert run_module(lab, "lab-h1", POLICY, {"name": vm, "state": "absent"})["changed"] is False
    assert run_module(lab, "lab-h1", POLICY, {"name": vm, "state": "absent"}, check_mode=True)["changed"] is False
    assert_no_vm_lost()


def test_invalid_values_are_refused_and_nothing_is_written(lab: Path, new_vm: t.Callable[..., str]) -> None:
    vm = new_vm(priority="low")
    for args, message in (
        ({"bandwidth_mib": -3}, "options.bandwidth_mib must be a positive whole number"),
        ({"policy": "fastest"}, "unknown migration policy 'fastest'"),
        ({"pinned_hosts": "lab-h2"}, "options.pinned_hosts must be a list of host names"),
        ({"auto_converge": "perhaps"}, "options.auto_converge must be true, false or inherit"),
    ):
        result = run_module(lab, "lab-h1", POLICY, dict({"name": vm, "priority": "high"}, **args))
        assert result.get("failed") is True and message in result["msg"], (args, result)
    assert own_settings(lab, "lab-h1", vm)["own"] == {"priority": "low"}
    missing = run_module(lab, "lab-h1", POLICY, {"name": "no-such-vm", "priority": "high"})
    assert missing.get("failed") is True and "VM 'no-such-vm' does not exist" in missing["msg"]
    assert_no_vm_lost()


def test_vm_migrate_honours_mode_none_and_pinning(lab: Path, new_vm: t.Callable[..., str]) -> None:
    vm = new_vm()
    candidates = [{"name": h, "uri": uri(lab, h)} for h in ("lab-h1", "lab-h2", "lab-h3")]

    run_module(lab, "lab-h1", POLICY, {"name": vm, "migration_mode": "none"})
    refused = run_module(lab, "lab-h1", MIGRATE, {"name": vm, "destination": "auto", "candidates": candidates})
    assert refused.get("failed") is True and "migration_mode 'none' (set at the vm level)" in refused["msg"], refused
    # The cluster level alone refuses it too.
    run_module(lab, "lab-h1", POLICY, {"name": vm, "migration_mode": "inherit"})
    refused = run_module(
        lab, "lab-h1", MIGRATE, {"name": vm, "destination": "auto", "candidates": candidates, "cluster_policy": {"migration_mode": "none"}}
    )
    assert refused.get("failed") is True and "(set at the cluster level)" in refused["msg"], refused
    assert vm_homes(vm) == {"lab-h1": "running"}

    run_module(lab, "lab-h1", POLICY, {"name": vm, "pinned_hosts": ["lab-h1", "lab-h3"]})
    planned = run_module(lab, "lab-h1", MIGRATE, {"name": vm, "destination": "auto", "candidates": candidates}, check_mode=True)
    assert planned["plan"]["destination"]["hostname"] == "lab-h3", planned
    assert any("not among the VM's pinned hosts" in reason for reason in planned["plan"]["rejected_hosts"]["lab-h2"])
    assert_no_vm_lost()
