"""migration_policy and migration_policy_info on lab VMs; vm_migrate honouring the settings.

The settings live in libvirt's domain XML, so tiny VMs (firmware only, under KVM) carry them like any
other VM: every test but one uses them. The settings-travel test boots a real guest (TCG): the marker
it writes into guest memory before the move and reads back after it proves the VM kept its memory.
"""

from __future__ import annotations

import shlex
import typing as t
from pathlib import Path

from labkit import assert_no_vm_lost, module_task, read_marker, run_module, run_tasks, running_on, uri, virtlab, vm_homes, write_marker

if t.TYPE_CHECKING:
    from conftest import VmFactory

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


def test_settings_check_real_repeat_then_travel_with_the_vm(lab: Path, new_vm: VmFactory) -> None:
    vm = new_vm(priority="low", guest=True)
    marker = write_marker(vm)
    wanted = {"name": vm, "priority": "high", "migration_mode": "manual", "pinned_hosts": ["lab-h2", "lab-h3"], "bandwidth_mib": 200}

    # Check mode, what the VM's own settings are then, and the real run: one Ansible process.
    checked, unwritten, applied = run_tasks(
        lab, "lab-h1", [module_task(POLICY, wanted, check_mode=True, diff=True), module_task(INFO, {"name": vm}), module_task(POLICY, wanted)]
    )
    assert checked["changed"] is True, checked
    assert checked["diff"]["before"] == {"priority": "low"} and checked["diff"]["after"]["priority"] == "high"
    assert unwritten.get("failed") is not True, unwritten
    assert unwritten["vms"][0]["own"] == {"priority": "low"}, "check mode wrote nothing"

    assert applied["changed"] is True, applied
    assert applied["settings"] == {"priority": "high", "migration_mode": "manual", "pinned_hosts": ["lab-h2", "lab-h3"], "bandwidth_mib": 200}
    for inactive in (False, True):
        assert "priority>high</" in domain_xml("lab-h1", vm, inactive), "live and persistent definitions both carry it"

    again, again_checked = run_tasks(lab, "lab-h1", [module_task(POLICY, wanted), module_task(POLICY, wanted, check_mode=True)])
    assert again["changed"] is False, again
    assert again_checked["changed"] is False, again_checked

    # A manual-mode VM migrates when asked for by name, and its settings travel with it.
    moved = run_module(lab, "lab-h1", MIGRATE, {"name": vm, "destination_uri": uri(lab, "lab-h2")})
    assert moved["changed"] is True and moved["policy"]["bandwidth_mib"] == 200, moved
    info = own_settings(lab, "lab-h2", vm)
    assert info["own"] == applied["settings"]
    assert info["settings"]["priority"] == {"value": "high", "source": "vm"}
    assert read_marker(vm) == marker and running_on(vm) == "lab-h2"
    assert_no_vm_lost()


def test_inheritance_reported_per_level(lab: Path, new_vm: VmFactory) -> None:
    vm = new_vm(priority="low")
    levels = {"cluster_policy": {"priority": "high", "bandwidth_mib": 64}, "global_policy": {"policy": "suspend_workload", "bandwidth_mib": 32}}
    inherit = {"name": vm, "priority": "inherit"}
    # The report per level, then inherit in check mode: one Ansible process.
    reported, checked = run_tasks(
        lab, "lab-h1", [module_task(INFO, dict({"name": vm}, **levels)), module_task(POLICY, inherit, check_mode=True)]
    )
    assert reported.get("failed") is not True, reported
    info = reported["vms"][0]
    assert info["settings"]["priority"] == {"value": "low", "source": "vm"}
    assert info["settings"]["bandwidth_mib"] == {"value": 64, "source": "cluster"}
    assert info["settings"]["policy"] == {"value": "suspend_workload", "source": "global"}
    assert info["settings"]["migration_mode"] == {"value": "auto", "source": "default"}
    assert info["policy"]["name"] == "suspend_workload" and info["policy"]["bandwidth_mib"] == 64

    # inherit removes the VM-level value: the cluster's applies. Check mode first: libvirt's XML keeps it.
    assert checked["changed"] is True and checked["settings"] == {}, checked
    assert "<priority>low</priority>" in domain_xml("lab-h1", vm) and "<priority>low</priority>" in domain_xml("lab-h1", vm, True)
    inherited = run_module(lab, "lab-h1", POLICY, inherit)
    assert inherited["changed"] is True and inherited["settings"] == {}
    assert "<priority>" not in domain_xml("lab-h1", vm) and "<priority>" not in domain_xml("lab-h1", vm, True)
    # The repeat, the repeat in check mode and the report with the cluster's priority: one Ansible process.
    again, again_checked, reported = run_tasks(
        lab,
        "lab-h1",
        [
            module_task(POLICY, inherit),
            module_task(POLICY, inherit, check_mode=True),
            module_task(INFO, {"name": vm, "cluster_policy": {"priority": "high"}}),
        ],
    )
    assert again["changed"] is False, again
    assert again_checked["changed"] is False, again_checked
    assert reported.get("failed") is not True, reported
    assert reported["vms"][0]["settings"]["priority"] == {"value": "high", "source": "cluster"}
    assert_no_vm_lost()


def test_absent_removes_only_our_metadata(lab: Path, new_vm: VmFactory) -> None:
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
    absent = {"name": vm, "state": "absent"}
    again, again_checked = run_tasks(lab, "lab-h1", [module_task(POLICY, absent), module_task(POLICY, absent, check_mode=True)])
    assert again["changed"] is False, again
    assert again_checked["changed"] is False, again_checked
    assert_no_vm_lost()


def test_invalid_values_are_refused_and_nothing_is_written(lab: Path, new_vm: VmFactory) -> None:
    vm = new_vm(priority="low")
    cases = [
        ({"bandwidth_mib": -3}, "options.bandwidth_mib must be a positive whole number"),
        ({"policy": "fastest"}, "unknown migration policy 'fastest'"),
        ({"pinned_hosts": "lab-h2"}, "options.pinned_hosts must be a list of host names"),
        ({"auto_converge": "perhaps"}, "options.auto_converge must be true, false or inherit"),
    ]
    # One Ansible process, in this order: the table of refusals, what the VM's own settings are then,
    # and the refusal of a VM that does not exist.
    *results, info, missing = run_tasks(
        lab,
        "lab-h1",
        [module_task(POLICY, dict({"name": vm, "priority": "high"}, **args)) for args, _message in cases]
        + [module_task(INFO, {"name": vm}), module_task(POLICY, {"name": "no-such-vm", "priority": "high"})],
    )
    for (args, message), result in zip(cases, results):
        assert result.get("failed") is True and message in result["msg"], (args, result)
    assert info.get("failed") is not True, info
    assert info["vms"][0]["own"] == {"priority": "low"}
    assert missing.get("failed") is True and "VM 'no-such-vm' does not exist" in missing["msg"]
    assert_no_vm_lost()


def test_vm_migrate_honours_mode_none_and_pinning(lab: Path, new_vm: VmFactory) -> None:
    vm = new_vm()
    candidates = [{"name": h, "uri": uri(lab, h)} for h in ("lab-h1", "lab-h2", "lab-h3")]

    auto = {"name": vm, "destination": "auto", "candidates": candidates}
    # Mode none at the VM level, the refusal, back to inherit, the cluster level's refusal: one Ansible process.
    set_none, refused, set_inherit, refused_by_cluster = run_tasks(
        lab,
        "lab-h1",
        [
            module_task(POLICY, {"name": vm, "migration_mode": "none"}),
            module_task(MIGRATE, auto),
            module_task(POLICY, {"name": vm, "migration_mode": "inherit"}),
            module_task(MIGRATE, dict(auto, cluster_policy={"migration_mode": "none"})),
        ],
    )
    assert set_none.get("failed") is not True, set_none
    assert refused.get("failed") is True and "migration_mode 'none' (set at the vm level)" in refused["msg"], refused
    # The cluster level alone refuses it too.
    assert set_inherit.get("failed") is not True, set_inherit
    assert refused_by_cluster.get("failed") is True and "(set at the cluster level)" in refused_by_cluster["msg"], refused_by_cluster
    assert vm_homes(vm) == {"lab-h1": "running"}

    pinned, planned = run_tasks(
        lab, "lab-h1", [module_task(POLICY, {"name": vm, "pinned_hosts": ["lab-h1", "lab-h3"]}), module_task(MIGRATE, auto, check_mode=True)]
    )
    assert pinned.get("failed") is not True, pinned
    assert planned["plan"]["destination"]["hostname"] == "lab-h3", planned
    assert any("not among the VM's pinned hosts" in reason for reason in planned["plan"]["rejected_hosts"]["lab-h2"])
    assert_no_vm_lost()
