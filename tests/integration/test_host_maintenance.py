"""host_maintenance on the lab: plan, priority order, spreading, blocking, shutdown, failure, rerun.

Placement and blocking only need domains with a memory size and a priority: those tests use tiny VMs
(firmware only, under KVM). Real guests (TCG) stay where the proof needs one: the evacuations whose
markers, written into guest memory before and read back after, prove the VMs kept their memory (the
check/real/repeat evacuation, the playbooks); the VM shut down for maintenance through ACPI, which a
tiny VM does not answer; and the evacuation slow enough to crash a destination mid-way (a tiny VM's
memory is almost all zero pages, which a bandwidth cap hardly slows).
"""

from __future__ import annotations

import json
import time
import typing as t
from pathlib import Path

from labkit import (
    active_vms,
    assert_no_vm_lost,
    maintenance_mark,
    module_task,
    run_playbook,
    read_marker,
    run_module,
    run_tasks,
    uri,
    virsh,
    virsh_migrate,
    virtlab,
    vm_homes,
    wait_async,
    wait_until,
    write_marker,
)

if t.TYPE_CHECKING:
    from conftest import VmFactory

MAINTENANCE = "virtops.migration.host_maintenance"
HOSTS = ("lab-h1", "lab-h2", "lab-h3")
RANK = {"high": 0, "medium": 1, "low": 2}


def candidates(lab: Path, **reserves: int) -> list[dict[str, t.Any]]:
    result = []
    for host in HOSTS:
        entry: dict[str, t.Any] = {"name": host, "uri": uri(lab, host)}
        if host.replace("-", "_") in reserves:
            entry["memory_reserved_mib"] = reserves[host.replace("-", "_")]
        result.append(entry)
    return result


def vms_on(host: str) -> list[str]:
    return [vm["name"] for entry in virtlab_status_hosts() if entry["name"] == host for vm in entry["vms"]]


def virtlab_status_hosts() -> list[dict[str, t.Any]]:
    return json.loads(virtlab("status", "--json").stdout)["hosts"]


def maintenance_state(lab: Path, host: str) -> dict[str, t.Any]:
    return run_module(lab, host, "virtops.migration.host_info")["host"]["maintenance"]


def activate(lab: Path, host: str) -> dict[str, t.Any]:
    return run_module(lab, host, MAINTENANCE, {"state": "active"})


def info_task() -> dict[str, t.Any]:
    """host_info as a task for run_tasks: its ``["host"]["maintenance"]`` is what maintenance_state() reads."""
    return module_task("virtops.migration.host_info")


def state_of(result: dict[str, t.Any]) -> dict[str, t.Any]:
    """The maintenance state a host_info result of :func:`info_task` reports."""
    assert result.get("failed") is not True, result
    return result["host"]["maintenance"]


def test_evacuation_check_real_repeat_in_priority_order_then_activate(lab: Path, new_vm: VmFactory) -> None:
    # Real guests: their markers prove the evacuation kept every VM's memory.
    made = new_vm.many([(192, 3, "high"), (160, 3, "high"), (160, 3, "medium"), (224, 3, "low"), (160, 3, "low")], guest=True)
    markers = {vm: write_marker(vm) for vm in made}
    on_h3 = vms_on("lab-h3")
    args = {"candidates": candidates(lab), "reason": "lab test", "requested_by": "pytest", "max_outgoing": 2}

    planned = run_module(lab, "lab-h3", MAINTENANCE, args, check_mode=True)
    assert planned["changed"] is True and planned["plan"]["ok"] is True, planned
    moves = planned["plan"]["moves"]
    assert sorted(move["vm"] for move in moves) == sorted(on_h3)
    ranks = [(RANK[move["priority"]], -move["memory_mib"]) for move in moves]
    assert ranks == sorted(ranks), "planned high first, then larger memory first"
    assert {move["to"] for move in moves} <= {"lab-h1", "lab-h2"}
    assert sorted(vms_on("lab-h3")) == sorted(on_h3), "check mode moved nothing"
    # The state host_info reports, then the real run, in one Ansible process.
    unmarked, done = run_tasks(lab, "lab-h3", [info_task(), module_task(MAINTENANCE, args)])
    assert state_of(unmarked)["active"] is False

    assert done["changed"] is True, done
    records = done["vms"]
    assert all(record["outcome"] == "migrated" for record in records), records
    # Where the time went: every phase of the run, and each move's own start, job and verification.
    assert {"connect", "read_source", "probe", "plan", "moves", "recheck", "report", "total"} <= set(done["timings"]), done["timings"]
    assert all(set(record["timings"]) == {"start", "migrate", "verify"} for record in records), records
    for earlier in records:
        for later in records:
            if RANK[earlier["priority"]] < RANK[later["priority"]]:
                assert earlier["started_at_s"] <= later["started_at_s"], (earlier, later)
    assert vms_on("lab-h3") == []
    assert {vm: read_marker(vm) for vm in made} == markers
    state = maintenance_state(lab, "lab-h3")
    assert state["active"] is True and state["reason"] == "lab test" and state["by"] == "pytest"
    log = virtlab("ssh", "lab-h3", "--", "cat", "/var/log/virtops-migration/events.jsonl").stdout.splitlines()
    logged = [json.loads(line) for line in log]
    assert {entry["vm"] for entry in logged} >= set(made)
    assert all(entry["event"] == "migration" and entry["from"] == "lab-h3" for entry in logged)

    again, again_checked = run_tasks(lab, "lab-h3", [module_task(MAINTENANCE, args), module_task(MAINTENANCE, args, check_mode=True)])
    assert again["changed"] is False, again
    assert again_checked["changed"] is False, again_checked
    assert_no_vm_lost()

    # Activation in check mode, the state host_info reports, the activation, the state again: one process.
    active = {"state": "active"}
    checked, still, activated, after = run_tasks(
        lab, "lab-h3", [module_task(MAINTENANCE, active, check_mode=True), info_task(), module_task(MAINTENANCE, active), info_task()]
    )
    assert checked["changed"] is True, checked
    assert state_of(still)["active"] is True
    assert activated["changed"] is True, activated
    assert state_of(after)["active"] is False and maintenance_mark("lab-h3") is None
    again, again_checked = run_tasks(lab, "lab-h3", [module_task(MAINTENANCE, active), module_task(MAINTENANCE, active, check_mode=True)])
    assert again["changed"] is False, again
    assert again_checked["changed"] is False, again_checked
    assert_no_vm_lost()


def test_placement_spreads_and_follows_host_reserves(lab: Path, new_vm: VmFactory) -> None:
    made = new_vm.many([(192, 2)] * 4)
    even = run_module(lab, "lab-h2", MAINTENANCE, {"candidates": candidates(lab)}, check_mode=True)
    targets = [move["to"] for move in even["plan"]["moves"] if move["vm"] in made]
    assert abs(targets.count("lab-h1") - targets.count("lab-h3")) <= 1, targets

    # Exact placements under reserves. lab-h2 holds only this test's four VMs (192 MiB, medium).
    for stray in [vm for vm in vms_on("lab-h2") if vm not in made]:
        virsh_migrate(uri(lab, "lab-h2"), uri(lab, "lab-h1"), stray)
    # All lab hosts share this machine's memory, so they read the same free memory, the one
    # host_info reports: the reserves leave lab-h1 1000 MiB and lab-h3 700 MiB for guests.
    free = run_module(lab, "lab-h1", "virtops.migration.host_info", {"memory_reserved_mib": 0})["host"]["memory"]["free_mib"]
    tight = candidates(lab, lab_h1=free - 1000, lab_h3=free - 700)
    # Most room after the VM lands wins: 808 > 508, then 616 > 508, then 508 > 424, then 424 > 316.
    names = sorted(made)
    expected = {names[0]: "lab-h1", names[1]: "lab-h1", names[2]: "lab-h3", names[3]: "lab-h1"}
    # The plan and the evacuation in one Ansible process.
    planned, done = run_tasks(
        lab, "lab-h2", [module_task(MAINTENANCE, {"candidates": tight}, check_mode=True), module_task(MAINTENANCE, {"candidates": tight})]
    )
    assert {move["vm"]: move["to"] for move in planned["plan"]["moves"]} == expected, planned["plan"]
    before = planned["plan"]["load"]
    # The machine's free memory moves between the two readings (other processes allocate), by the same
    # amount for both hosts: the order of the placements depends only on the 300 MiB between them.
    h1, h3 = before["lab-h1"]["available_mib_before"], before["lab-h3"]["available_mib_before"]
    assert abs(h1 - h3 - 300) < 32 and abs(h1 - 1000) < 200, before
    assert done["changed"] is True, done
    assert {record["vm"]: record["to"] for record in done["vms"]} == expected
    assert all(vm_homes(vm) == {expected[vm]: "running"} for vm in made)
    assert activate(lab, "lab-h2")["changed"] is True
    assert_no_vm_lost()


def test_a_none_mode_vm_blocks_and_nothing_moves(lab: Path, new_vm: VmFactory) -> None:
    stuck, free = new_vm.many([(160, 3), (160, 3)])
    run_module(lab, "lab-h3", "virtops.migration.migration_policy", {"name": stuck, "migration_mode": "none"})
    before = sorted(vms_on("lab-h3"))
    result = run_module(lab, "lab-h3", MAINTENANCE, {"candidates": candidates(lab)})
    assert result.get("failed") is True, result
    assert "nothing was moved" in result["msg"] and stuck in result["msg"], result["msg"]
    assert free not in result["msg"]
    assert sorted(vms_on("lab-h3")) == before
    assert maintenance_state(lab, "lab-h3")["active"] is False
    assert_no_vm_lost()


def test_non_migratable_shutdown_then_restart_on_activate(lab: Path, new_vm: VmFactory) -> None:
    # The pinned VM is a real guest: it is shut down through ACPI, which a tiny VM does not answer.
    # The other one is only moved away: a tiny VM.
    pinned, other = new_vm(160, 3, guest=True), new_vm(160, 3)
    run_module(lab, "lab-h3", "virtops.migration.migration_policy", {"name": pinned, "pinned_hosts": ["lab-h3"]})
    args = {"candidates": candidates(lab), "non_migratable": "shutdown", "shutdown_timeout": 60}
    planned = run_module(lab, "lab-h3", MAINTENANCE, args, check_mode=True)
    assert [held["vm"] for held in planned["plan"]["shutdown"]] == [pinned], planned["plan"]
    assert vm_homes(pinned) == {"lab-h3": "running"} and "lab-h3" in vm_homes(other), "check mode changed nothing"
    done = run_module(lab, "lab-h3", MAINTENANCE, args)
    assert done["changed"] is True and done["shutdown"] == [pinned], done
    assert vm_homes(pinned) == {"lab-h3": "shut off"}
    assert "lab-h3" not in vm_homes(other)
    # The state host_info reports, the repeat and the repeat in check mode: one Ansible process.
    state, again, again_checked = run_tasks(
        lab, "lab-h3", [info_task(), module_task(MAINTENANCE, args), module_task(MAINTENANCE, args, check_mode=True)]
    )
    assert state_of(state)["shutdown_vms"] == [pinned]
    assert again["changed"] is False, again
    assert again_checked["changed"] is False, again_checked
    assert vm_homes(pinned) == {"lab-h3": "shut off"} and maintenance_mark("lab-h3")["state"] == "maintenance"
    assert_no_vm_lost(pinned)

    checked = run_module(lab, "lab-h3", MAINTENANCE, {"state": "active"}, check_mode=True)
    assert checked["changed"] is True and checked["started"] == [pinned], checked
    assert vm_homes(pinned) == {"lab-h3": "shut off"} and maintenance_mark("lab-h3") is not None
    back = activate(lab, "lab-h3")
    assert back["changed"] is True and back["started"] == [pinned], back
    assert vm_homes(pinned) == {"lab-h3": "running"} and maintenance_mark("lab-h3") is None
    active = {"state": "active"}
    again, again_checked = run_tasks(lab, "lab-h3", [module_task(MAINTENANCE, active), module_task(MAINTENANCE, active, check_mode=True)])
    assert again["changed"] is False, again
    assert again_checked["changed"] is False, again_checked
    assert_no_vm_lost()


def test_destination_killed_mid_evacuation_then_rerun(lab: Path, new_vm: VmFactory) -> None:
    # Real guests: a tiny VM's memory is almost all zero pages, which the 8 MiB/s cap hardly slows, so
    # no move would last long enough to crash its destination under it.
    made = new_vm.many([(192, 1)] * 4, guest=True)
    slow = {"candidates": candidates(lab), "cluster_policy": {"bandwidth_mib": 8, "policy": "legacy"}, "max_outgoing": 2}
    started = run_module(lab, "lab-h1", MAINTENANCE, slow, background=600)
    # Wait until a migration into lab-h3 is under way, then crash lab-h3's libvirtd.
    wait_until(lambda: bool(vm_homes_on("lab-h3", made)), 90, "a VM is being received by lab-h3")
    virtlab("kill-libvirtd", "lab-h3")
    try:
        final = wait_async(lab, "lab-h1", started["ansible_job_id"], timeout=400)
    finally:
        virtlab("start-libvirtd", "lab-h3")
    assert final.get("failed") is True, final
    assert "could not leave lab-h1" in final["msg"] and "lab-h1 is active again" in final["msg"], final["msg"]
    outcomes = {record["vm"]: record["outcome"] for record in final["vms"]}
    assert "failed" in outcomes.values(), outcomes
    assert maintenance_state(lab, "lab-h1")["active"] is False
    for vm, outcome in outcomes.items():
        expected_here = outcome == "failed"
        assert ("lab-h1" in vm_homes(vm)) == expected_here, (vm, outcome, vm_homes(vm))
    wait_until(lambda: all(len(vm_homes(vm)) == 1 for vm in made), 120, "every VM is defined on one host only")
    assert_no_vm_lost()

    left = sorted(vms_on("lab-h1"))
    planned = run_module(lab, "lab-h1", MAINTENANCE, {"candidates": candidates(lab)}, check_mode=True)
    assert planned["changed"] is True and planned["plan"]["ok"] is True, planned
    assert sorted(vms_on("lab-h1")) == left and maintenance_mark("lab-h1") is None, "check mode moved nothing"
    rerun = run_module(lab, "lab-h1", MAINTENANCE, {"candidates": candidates(lab)})
    assert rerun["changed"] is True, rerun
    assert vms_on("lab-h1") == []
    # The state host_info reports, the repeat, the repeat in check mode and the activation: one process.
    evacuate = {"candidates": candidates(lab)}
    state, again, again_checked, activated = run_tasks(
        lab,
        "lab-h1",
        [
            info_task(),
            module_task(MAINTENANCE, evacuate),
            module_task(MAINTENANCE, evacuate, check_mode=True),
            module_task(MAINTENANCE, {"state": "active"}),
        ],
    )
    assert state_of(state)["active"] is True
    assert again["changed"] is False, again
    assert again_checked["changed"] is False, again_checked
    assert activated["changed"] is True, activated
    assert_no_vm_lost()


def vm_homes_on(host: str, vms: list[str]) -> list[str]:
    """States on ``host`` of those of ``vms`` defined or arriving there."""
    return [homes[host] for homes in (vm_homes(vm) for vm in vms) if host in homes]


def test_maintenance_and_activate_playbooks(lab: Path, new_vm: VmFactory) -> None:
    # Real guests: their markers prove the playbook's evacuation kept their memory.
    made = new_vm.many([(160, 3, "high"), (160, 3, "low")], guest=True)
    markers = {vm: write_marker(vm) for vm in made}
    playbooks = Path(__file__).resolve().parents[2] / "playbooks"
    h3 = uri(lab, "lab-h3")
    before = active_vms(h3)

    planned = run_playbook(lab, playbooks / "maintenance.yml", {"target": "lab-h3", "reason": "playbook test"}, check_mode=True)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert active_vms(h3) == before and maintenance_mark("lab-h3") is None, "check mode moved nothing"

    done = run_playbook(lab, playbooks / "maintenance.yml", {"target": "lab-h3", "reason": "playbook test"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert active_vms(h3) == []
    mark = maintenance_mark("lab-h3")
    assert mark is not None and mark["state"] == "maintenance" and mark["reason"] == "playbook test", mark
    assert {vm: read_marker(vm) for vm in made} == markers
    assert_no_vm_lost()

    again = run_playbook(lab, playbooks / "maintenance.yml", {"target": "lab-h3", "reason": "playbook test"})
    assert again.returncode == 0 and "changed=0" in again.stdout.split("PLAY RECAP")[-1], again.stdout

    back = run_playbook(lab, playbooks / "activate.yml", {"target": "lab-h3"})
    assert back.returncode == 0, back.stdout + back.stderr
    assert maintenance_mark("lab-h3") is None
    twice = run_playbook(lab, playbooks / "activate.yml", {"target": "lab-h3"})
    assert twice.returncode == 0 and "changed=0" in twice.stdout.split("PLAY RECAP")[-1], twice.stdout
    assert_no_vm_lost()


def vm_ignoring_shutdown(lab: Path, new_vm: VmFactory) -> str:
    """A tiny VM on lab-h3 that the evacuation shuts down (migration_mode none, non_migratable=shutdown).

    Firmware only, it ignores the ACPI shutdown request: the guest that does not stop in time.
    """
    vm = new_vm(160, 3)
    run_module(lab, "lab-h3", "virtops.migration.migration_policy", {"name": vm, "migration_mode": "none"})
    return vm


def stops_late_and_activation_starts_it(lab: Path, vm: str) -> None:
    """The guest stops after the run (``virsh destroy`` plays it); ``state=active`` starts it again and ends the mark."""
    h3 = uri(lab, "lab-h3")
    virsh(h3, "destroy", vm)
    assert vm_homes(vm) == {"lab-h3": "shut off"}
    back = activate(lab, "lab-h3")
    assert back["changed"] is True and back["started"] == [vm], back
    assert vm_homes(vm) == {"lab-h3": "running"} and vm in active_vms(h3)
    assert maintenance_mark("lab-h3") is None
    assert_no_vm_lost()


def test_a_vm_that_does_not_shut_down_in_time_stays_listed_and_activation_starts_it(lab: Path, new_vm: VmFactory) -> None:
    """A shutdown timeout fails the maintenance naming the VM, and never forgets it: the VM keeps running,
    asked to shut down, and may still stop later, so the mark lists it (the host stays activating) and
    ``state=active`` starts it again once it has stopped."""
    slow = vm_ignoring_shutdown(lab, new_vm)
    args = {"candidates": candidates(lab), "non_migratable": "shutdown", "shutdown_timeout": 5}
    failed = run_module(lab, "lab-h3", MAINTENANCE, args)
    assert failed.get("failed") is True, failed
    assert "VM(s) %s on lab-h3 did not shut down within 5 s" % slow in failed["msg"], failed["msg"]
    assert "Asked to shut down and still running: %s." % slow in failed["msg"], failed["msg"]
    assert failed["still_shutting_down"] == [slow], failed
    assert slow in active_vms(uri(lab, "lab-h3")), "the VM that ignored the shutdown still runs"
    mark = maintenance_mark("lab-h3")
    assert mark is not None and (mark["state"], mark["shutdown_vms"]) == ("activating", [slow]), mark
    assert_no_vm_lost()
    stops_late_and_activation_starts_it(lab, slow)


def test_a_vm_is_in_the_mark_before_its_shutdown_so_a_killed_module_does_not_forget_it(lab: Path, new_vm: VmFactory) -> None:
    """The module is killed right after it asked a VM to shut down: the mark already lists the VM, and
    ``state=active`` starts it again once it has stopped. The VM ignores the ACPI request, so the run is
    still waiting for it when it is killed."""
    slow = vm_ignoring_shutdown(lab, new_vm)
    args = {"candidates": candidates(lab), "non_migratable": "shutdown", "shutdown_timeout": 600}
    run_module(lab, "lab-h3", MAINTENANCE, args, background=900)
    wait_until(
        lambda: slow in ((maintenance_mark("lab-h3") or {}).get("shutdown_vms") or []),
        120,
        "the mark lists %s before its shutdown is asked for" % slow,
    )
    time.sleep(2)  # the shutdown request follows the mark's write at once
    virtlab("ssh", "lab-h3", "--", "pkill", "-KILL", "-f", "'AnsiballZ_host_maintenanc[e]'")
    mark = maintenance_mark("lab-h3")
    assert mark is not None and mark["shutdown_vms"] == [slow], mark
    stops_late_and_activation_starts_it(lab, slow)
