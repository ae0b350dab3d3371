"""Moves of SR-IOV failover VMs on the lab, with the lab's stand-ins for them (`virtlab add-vm --failover`).

No SR-IOV NIC exists here: the stand-in's "VF" is an emulated vmxnet3 NIC (alias ``ua-fo-vf``), not a
VF (see tests/lab/README.md). What runs for real is QEMU's failover path (teaming: QEMU asks the guest
to eject its primary, waits in ``wait-unplug``, plugs it back on the destination) and an in-guest
active-backup bond (bond: the job runner unplugs the VF before the move and plugs it in again after).

Each test uses fresh stand-ins, judges through libvirt (virsh on the hosts, ``domjobinfo``, the live
XML) and through the guest itself (its interfaces, a ping to its gateway at 10 Hz counted across the
move), never through the module's words alone, and ends with the lab's no-VM-lost check.

The stand-ins are real lab guests (TCG), never tiny VMs: their guest kernel is what ejects the primary
when QEMU asks (or never does, for ``teaming-stuck``) and runs the bond, the tests read the guest's
interfaces and ping from inside it, and the live moves are checked with a marker in guest memory. Each
mode needs its own ``virtlab add-vm --failover MODE`` call, so the evacuation's teaming and bond
stand-ins are added one after the other.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import typing as t
from pathlib import Path

import pytest

from labkit import (
    VF_STANDIN_ALIAS,
    active_vms,
    assert_no_vm_lost,
    failing_python,
    guest_nics,
    maintenance_mark,
    migration_job,
    module_task,
    nic_xml,
    ping_stats,
    read_marker,
    run_module,
    run_tasks,
    start_ping,
    uri,
    virsh,
    virtlab,
    vm_homes,
    wait_until,
    write_marker,
)

MIGRATE = "virtops.migration.vm_migrate"
MAINTENANCE = "virtops.migration.host_maintenance"
HOSTS = ("lab-h1", "lab-h2", "lab-h3")
PAIR = "fo"  # the stand-ins' pair: aliases ua-fo-backup / ua-fo-vf
# Pings lost at 10 Hz over one move; the lab measured 0 or 1 for both modes with plain virsh.
MAX_LOST_PINGS = 3
# How long the guest may take to show its primary again after the job (QEMU's or the runner's plug-in).
REPLUG_WAIT_S = 15


@pytest.fixture()
def stand_in(lab: Path) -> t.Iterator[t.Callable[..., str]]:
    """Factory for fresh failover stand-ins (random names), ready on the network, removed after the test."""
    created: list[str] = []

    def make(mode: str, host_index: int = 1) -> str:
        name = "fo%s" % secrets.token_hex(3)
        virtlab("add-vm", "--failover", mode, "%s@%d" % (name, host_index))
        created.append(name)
        # The agent answers before the guest has put its network together: wait for that too.
        ready = bond_on_vf if mode == "bond" else has_trio
        wait_until(lambda: ready(name), 60, "%s (%s) has its network set up: %s" % (name, mode, guest_nics(name)))
        return name

    yield make
    if created:
        virtlab("remove-vm", *created, check=False)


def candidates(lab: Path, *hosts: str) -> list[dict[str, t.Any]]:
    return [{"name": host, "uri": uri(lab, host)} for host in hosts or HOSTS]


def event_names(result: t.Mapping[str, t.Any]) -> list[str]:
    return [event["event"] for event in result.get("events") or []]


def events_named(result: t.Mapping[str, t.Any], name: str) -> list[dict[str, t.Any]]:
    return [event for event in result.get("events") or [] if event["event"] == name]


def trio(vm: str) -> dict[str, t.Any] | None:
    """The teaming guest's failover trio as it sees it, or None when it has no complete one.

    ``master`` (holding the guest's address), and the drivers of the interfaces it holds:
    the virtio standby and the vmxnet3 primary, all with one MAC.
    """
    nics = guest_nics(vm)
    masters = [nic for nic in nics if nic["lower"]]
    if len(masters) != 1:
        return None
    master = masters[0]
    held = [nic for nic in nics if nic["master"] == master["name"]]
    return {
        "master": master["name"],
        "addresses": master["addresses"],
        "held": sorted(nic["driver"] for nic in held),
        "macs": sorted({nic["mac"] for nic in held + [master]}),
        "count": len(nics),
    }


def has_trio(vm: str) -> bool:
    found = trio(vm)
    return bool(found and found["held"] == ["virtio_net", "vmxnet3"] and found["addresses"] and len(found["macs"]) == 1 and found["count"] == 3)


def bond_state(vm: str) -> dict[str, t.Any]:
    """The bond guest's bond0: its active slave's driver, the drivers it holds, its addresses."""
    nics = {nic["name"]: nic for nic in guest_nics(vm)}
    bond = nics.get("bond0")
    assert bond is not None, "%s has no bond0: %s" % (vm, nics)
    active = nics.get(bond["active_slave"])
    return {
        "active": active["driver"] if active else "",
        "held": sorted(nics[name]["driver"] for name in bond["lower"] if name in nics),
        "addresses": bond["addresses"],
    }


def bond_on_vf(vm: str) -> bool:
    state = bond_state(vm)
    return state["active"] == "vmxnet3" and state["held"] == ["virtio_net", "vmxnet3"] and bool(state["addresses"])


def live_aliases(host_uri: str, vm: str) -> set[str]:
    """Aliases of the VM's interfaces in its live XML on that host (libvirt's view of what is plugged in)."""
    from xml.etree import ElementTree  # pylint: disable=import-outside-toplevel

    domain = ElementTree.fromstring(virsh(host_uri, "dumpxml", vm).stdout)
    return {alias.get("name", "") for alias in domain.findall("devices/interface/alias")}


def jobinfo(host_uri: str, vm: str, *flags: str) -> dict[str, str]:
    """``virsh domjobinfo`` as a dict of its fields."""
    out = virsh(host_uri, "domjobinfo", *flags, vm).stdout
    return {key.strip(): value.strip() for key, value in (line.split(":", 1) for line in out.splitlines() if ":" in line)}


def virsh_task(*args: str) -> dict[str, t.Any]:
    """A ``run_tasks`` task that reads libvirt on the host itself (``virsh ARGS`` there) and changes nothing."""
    return module_task("ansible.builtin.command", {"argv": ["virsh", "-c", "qemu:///system", *args]}, changed_when=False)


def output(result: t.Mapping[str, t.Any]) -> str:
    """What a :func:`virsh_task` printed, stripped; fails the test when virsh failed."""
    assert result.get("failed") is not True and result.get("rc") == 0, result
    return str(result["stdout"]).strip()


def outgoing_job(domjobinfo: str) -> bool:
    """Whether ``virsh domjobinfo`` output shows an outgoing migration job (as labkit's ``migration_job``)."""
    fields = dict(line.split(":", 1) for line in domjobinfo.splitlines() if ":" in line)
    job, operation = fields.get("Job type", "").strip(), fields.get("Operation", "").strip()
    return job not in ("", "None", "Completed", "Failed", "Cancelled") and operation == "Outgoing migration"


def lost_pings(vm: str) -> tuple[int, int]:
    """Stop the guest's ping; (lost, sent)."""
    sent, received = ping_stats(vm)
    return sent - received, sent


def in_thread(work: t.Callable[[], dict[str, t.Any]]) -> tuple[threading.Thread, dict[str, t.Any]]:
    """Start ``work`` (a module run) in a thread; the dict holds its result and wall time once joined."""
    box: dict[str, t.Any] = {}

    def run() -> None:
        began = time.monotonic()
        box["result"] = work()
        box["wall_s"] = time.monotonic() - began

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def test_teaming_live_move_keeps_the_network_and_the_primary_comes_back(lab: Path, stand_in: t.Callable[..., str]) -> None:
    vm = stand_in("teaming", 1)
    marker = write_marker(vm)
    h1, h2 = uri(lab, "lab-h1"), uri(lab, "lab-h2")
    args = {"name": vm, "destination_uri": h2}
    planned = run_module(lab, "lab-h1", MIGRATE, args, check_mode=True)
    assert planned["changed"] is True and planned["plan"]["failover"] == {"bond_vfs": [], "primaries": [VF_STANDIN_ALIAS]}, planned
    assert vm_homes(vm) == {"lab-h1": "running"}, "check mode moved nothing"

    start_ping(vm)
    began = time.monotonic()
    moved = run_module(lab, "lab-h1", MIGRATE, args)
    wall = time.monotonic() - began
    assert moved["changed"] is True and moved["vm_state"] == "running", moved
    # libvirt's view: on lab-h2 alone, its incoming job completed there, the primary in its live XML.
    assert vm_homes(vm) == {"lab-h2": "running"}
    assert vm in active_vms(h2) and vm not in active_vms(h1)
    incoming = jobinfo(h2, vm, "--completed")
    assert incoming.get("Job type") == "Completed" and incoming.get("Operation") == "Incoming migration", incoming
    assert VF_STANDIN_ALIAS in live_aliases(h2, vm)
    # The guest's view: QEMU plugged the primary in on lab-h2, the master holds it and the standby again.
    wait_until(lambda: has_trio(vm), REPLUG_WAIT_S, "%s sees its failover trio again on lab-h2: %s" % (vm, trio(vm)))
    lost, sent = lost_pings(vm)
    print(
        "teaming move: wall %.1f s, module duration %.2f s, job %s ms, downtime %s ms, pings lost %d of %d, events %s"
        % (wall, moved["duration_s"], moved.get("job_time_ms"), moved.get("downtime_ms"), lost, sent, json.dumps(moved["events"]))
    )
    assert sent >= 10 * wall * 0.5 and lost <= MAX_LOST_PINGS, "pings lost across the teaming move: %d of %d" % (lost, sent)
    assert read_marker(vm) == marker
    assert "unplug_timeout" not in event_names(moved), moved["events"]

    again, checked = run_tasks(lab, "lab-h1", [module_task(MIGRATE, args), module_task(MIGRATE, args, check_mode=True)])
    assert again["changed"] is False, again
    assert checked["changed"] is False and "plan" not in checked, checked
    assert vm_homes(vm) == {"lab-h2": "running"} and not migration_job(h2, vm)
    assert has_trio(vm)
    assert_no_vm_lost()
    # Last, so that everything above is checked whatever the runner reports: the step event of the move.
    released = events_named(moved, "primary_released")
    assert len(released) == 1 and released[0]["devices"] == [VF_STANDIN_ALIAS], "no primary_released event: %s" % json.dumps(moved["events"])
    # Seen while it lasted (wait_unplug_s), or the job ended between two polls (within_s, an upper bound).
    assert 0 <= released[0].get("wait_unplug_s", released[0].get("within_s", 99)) < 30, released


def test_teaming_guest_that_never_releases_its_primary_is_aborted_and_keeps_it(lab: Path, stand_in: t.Callable[..., str]) -> None:
    vm = stand_in("teaming-stuck", 1)
    h1, h2 = uri(lab, "lab-h1"), uri(lab, "lab-h2")
    start_ping(vm)
    thread, box = in_thread(lambda: run_module(lab, "lab-h1", MIGRATE, {"name": vm, "destination_uri": h2, "unplug_timeout": 5}))
    # libvirt's view while the module waits: an outgoing job that copies nothing (QEMU's wait-unplug).
    wait_until(lambda: migration_job(h1, vm), 30, "libvirt shows the migration job of %s" % vm)
    waiting = jobinfo(h1, vm)
    assert waiting.get("Job type") == "Unbounded" and "Data processed" not in waiting, waiting
    thread.join(120)
    assert not thread.is_alive(), "vm_migrate still runs 120 s after the job started"
    failed, wall = box["result"], box["wall_s"]
    assert failed.get("failed") is True and failed.get("changed") is not True, failed
    expected = "did not release its failover primary (%s) within 5 s (unplug_timeout)" % VF_STANDIN_ALIAS
    assert expected in failed["msg"], failed["msg"]
    timeouts = events_named(failed, "unplug_timeout")
    assert len(timeouts) == 1 and timeouts[0]["action"] == "abort" and timeouts[0]["after_s"] >= 5, failed.get("events")
    assert "primary_released" not in event_names(failed), failed.get("events")
    # QEMU's cancel takes about 30 s; then the job is gone and the VM runs on lab-h1 alone, with its primary.
    wait_until(lambda: not migration_job(h1, vm), 40, "the migration job of %s on lab-h1 ended" % vm)
    assert vm_homes(vm) == {"lab-h1": "running"}
    assert virsh(h1, "domstate", vm).stdout.strip() == "running"
    assert VF_STANDIN_ALIAS in live_aliases(h1, vm)
    assert has_trio(vm), trio(vm)
    lost, sent = lost_pings(vm)
    print("teaming-stuck: module failed after %.1f s (unplug_timeout 5 s, then QEMU's cancel), pings lost %d of %d" % (wall, lost, sent))
    assert sent > 0 and lost == 0, "pings lost while the stuck move was aborted: %d of %d" % (lost, sent)
    assert_no_vm_lost()


def test_non_live_move_of_a_teaming_vm_is_refused(lab: Path, stand_in: t.Callable[..., str]) -> None:
    vm = stand_in("teaming", 1)
    h1, h2 = uri(lab, "lab-h1"), uri(lab, "lab-h2")
    args = {"name": vm, "destination_uri": h2, "live": False}
    # Both runs in one ansible-playbook process; after the first, libvirt on lab-h1 is read in the same
    # run (domstate, domjobinfo), as the controller reads it after the second.
    check_run, state, job, real_run = run_tasks(
        lab,
        "lab-h1",
        [module_task(MIGRATE, args, check_mode=True), virsh_task("domstate", vm), virsh_task("domjobinfo", vm), module_task(MIGRATE, args)],
    )
    for check_mode, refused in ((True, check_run), (False, real_run)):
        assert refused.get("failed") is True and refused.get("changed") is not True, (check_mode, refused)
        assert "non-live move pauses the vCPUs" in refused["msg"] and VF_STANDIN_ALIAS in refused["msg"], refused["msg"]
        if check_mode:
            # Still running on lab-h1 (its domstate there answers), no migration job there.
            assert output(state) == "running" and not outgoing_job(output(job)), (output(state), output(job))
        else:
            assert vm_homes(vm) == {"lab-h1": "running"} and not migration_job(h1, vm)
            assert virsh(h1, "domstate", vm).stdout.strip() == "running"
    assert VF_STANDIN_ALIAS in live_aliases(h1, vm) and has_trio(vm)
    assert_no_vm_lost()


def test_bond_vf_unplugged_before_the_move_and_plugged_in_on_the_destination(lab: Path, stand_in: t.Callable[..., str]) -> None:
    vm = stand_in("bond", 1)
    marker = write_marker(vm)
    h1, h2 = uri(lab, "lab-h1"), uri(lab, "lab-h2")
    args = {"name": vm, "destination_uri": h2}
    planned = run_module(lab, "lab-h1", MIGRATE, args, check_mode=True)
    assert planned["plan"]["failover"] == {"bond_vfs": [PAIR], "primaries": []}, planned
    assert VF_STANDIN_ALIAS in live_aliases(h1, vm), "check mode unplugged nothing"

    start_ping(vm)
    began = time.monotonic()
    moved = run_module(lab, "lab-h1", MIGRATE, args)
    wall = time.monotonic() - began
    assert moved["changed"] is True and moved["vm_state"] == "running", moved
    names = event_names(moved)
    assert "vf_unplugged" in names and "vf_plugged" in names, names
    assert names.index("vf_unplugged") < names.index("started") < names.index("completed") < names.index("vf_plugged"), names
    unplugged, plugged = events_named(moved, "vf_unplugged")[0], events_named(moved, "vf_plugged")[0]
    assert unplugged["pair"] == PAIR and plugged["pair"] == PAIR and plugged["on"] == "destination", moved["events"]
    assert not moved.get("warnings"), moved.get("warnings")
    # libvirt's view: on lab-h2 alone, the VF in its live XML there.
    assert vm_homes(vm) == {"lab-h2": "running"}
    assert vm in active_vms(h2) and vm not in active_vms(h1)
    assert VF_STANDIN_ALIAS in live_aliases(h2, vm)
    assert VF_STANDIN_ALIAS in nic_xml(h2, vm), "the persistent definition keeps the VF"
    # The guest's view: bond0 runs on the vmxnet3 again.
    wait_until(lambda: bond_on_vf(vm), REPLUG_WAIT_S, "bond0 of %s is back on its VF: %s" % (vm, bond_state(vm)))
    lost, sent = lost_pings(vm)
    print(
        "bond move: wall %.1f s, unplug %.3f s, plug on destination %.3f s, module duration %.2f s, pings lost %d of %d"
        % (wall, unplugged["duration_s"], plugged["duration_s"], moved["duration_s"], lost, sent)
    )
    assert sent >= 10 * wall * 0.5 and lost <= MAX_LOST_PINGS, "pings lost across the bond move: %d of %d" % (lost, sent)
    assert read_marker(vm) == marker

    again = run_module(lab, "lab-h1", MIGRATE, args)
    assert again["changed"] is False and "vf_unplugged" not in event_names(again), again
    assert VF_STANDIN_ALIAS in live_aliases(h2, vm) and bond_on_vf(vm)
    assert_no_vm_lost()


def test_bond_vf_plugged_back_on_the_source_when_the_move_fails(lab: Path, stand_in: t.Callable[..., str], tmp_path: Path) -> None:
    vm = stand_in("bond", 1)
    h1, h2 = uri(lab, "lab-h1"), uri(lab, "lab-h2")
    broken = {"ansible_python_interpreter": failing_python(tmp_path, "migrateToURI3")}
    start_ping(vm)
    failed = run_module(lab, "lab-h1", MIGRATE, {"name": vm, "destination_uri": h2}, extra_vars=broken)
    assert failed.get("failed") is True and failed.get("changed") is not True, failed
    assert "injected by the lab test" in failed["msg"], failed["msg"]
    names = event_names(failed)
    assert names.index("vf_unplugged") < names.index("failed") < names.index("vf_plugged"), names
    unplugged, plugged = events_named(failed, "vf_unplugged"), events_named(failed, "vf_plugged")
    assert len(plugged) == 1 and plugged[0]["on"] == "source" and plugged[0]["host"] == unplugged[0]["host"], failed["events"]
    assert "vf_plug_failed" not in names, names
    # libvirt's view: running on lab-h1 alone, no job, the VF in the live XML again.
    assert vm_homes(vm) == {"lab-h1": "running"} and not migration_job(h1, vm)
    assert virsh(h1, "domstate", vm).stdout.strip() == "running"
    assert VF_STANDIN_ALIAS in live_aliases(h1, vm)
    # The guest's view: the bond took its VF back.
    wait_until(lambda: bond_on_vf(vm), REPLUG_WAIT_S, "bond0 of %s is back on its VF: %s" % (vm, bond_state(vm)))
    lost, sent = lost_pings(vm)
    print("bond failed move: VF plugged back on the source in %.3f s, pings lost %d of %d" % (plugged[0]["duration_s"], lost, sent))
    assert sent > 0 and lost <= MAX_LOST_PINGS, "pings lost around the failed bond move: %d of %d" % (lost, sent)
    assert_no_vm_lost()


def test_evacuation_moves_teaming_and_bond_vms_with_their_steps(lab: Path, stand_in: t.Callable[..., str]) -> None:
    teaming, bond = stand_in("teaming", 3), stand_in("bond", 3)
    markers = {vm: write_marker(vm) for vm in (teaming, bond)}
    h3 = uri(lab, "lab-h3")
    for vm in (teaming, bond):
        start_ping(vm)
    try:
        began = time.monotonic()
        done = run_module(lab, "lab-h3", MAINTENANCE, {"candidates": candidates(lab)})
        wall = time.monotonic() - began
        assert done["changed"] is True, done
        records = {record["vm"]: record for record in done["vms"]}
        assert all(record["outcome"] == "migrated" for record in records.values()), done["vms"]
        # libvirt's view: lab-h3 runs nothing and is marked; each stand-in runs elsewhere, with its VF.
        assert active_vms(h3) == []
        mark = maintenance_mark("lab-h3")
        assert mark is not None and mark["state"] == "maintenance", mark
        homes = {}
        for vm in (teaming, bond):
            where = vm_homes(vm)
            assert list(where.values()) == ["running"] and "lab-h3" not in where, (vm, where)
            homes[vm] = next(iter(where))
            assert records[vm]["to"] == homes[vm], (records[vm], where)
            assert VF_STANDIN_ALIAS in live_aliases(uri(lab, homes[vm]), vm), (vm, homes[vm])

        assert "unplug_timeout" not in event_names(records[teaming]), records[teaming]
        bond_events = records[bond].get("events")
        assert [(event["event"], event.get("on")) for event in bond_events] == [("vf_unplugged", None), ("vf_plugged", "destination")], bond_events
        assert not records[teaming].get("warnings") and not records[bond].get("warnings"), records

        # The guests' view: both have their primary again, and kept their network.
        wait_until(lambda: has_trio(teaming), REPLUG_WAIT_S, "%s sees its failover trio again: %s" % (teaming, trio(teaming)))
        wait_until(lambda: bond_on_vf(bond), REPLUG_WAIT_S, "bond0 of %s is back on its VF: %s" % (bond, bond_state(bond)))
        losses = {vm: lost_pings(vm) for vm in (teaming, bond)}
        print(
            "evacuation of lab-h3 (%d VMs): wall %.1f s; teaming -> %s, pings lost %d of %d, events %s; "
            "bond -> %s, pings lost %d of %d, events %s"
            % (
                len(records),
                wall,
                homes[teaming],
                *losses[teaming],
                json.dumps(records[teaming].get("events")),
                homes[bond],
                *losses[bond],
                json.dumps(bond_events),
            )
        )
        for vm, (lost, sent) in losses.items():
            assert sent > 0 and lost <= MAX_LOST_PINGS, "pings lost by %s over the evacuation: %d of %d" % (vm, lost, sent)
        assert {vm: read_marker(vm) for vm in (teaming, bond)} == markers
        assert_no_vm_lost()
    finally:
        back = run_module(lab, "lab-h3", MAINTENANCE, {"state": "active"})
        assert not back.get("failed"), back
    assert maintenance_mark("lab-h3") is None
    assert_no_vm_lost()
    # Last, so that everything above is checked whatever the runner reports: the teaming move's step event.
    released = events_named(records[teaming], "primary_released")
    assert [event["devices"] for event in released] == [[VF_STANDIN_ALIAS]], "no primary_released event: %s" % json.dumps(records[teaming])
