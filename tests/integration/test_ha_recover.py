"""High availability on the lab: a failed host's highly available VMs start again elsewhere, never twice.

The lab's shared storage is one directory bind-mounted into every host; the HA VMs are tiny VMs whose
only disk is a file on it (the guest's insides do not matter: what is judged is where QEMU runs, what
libvirt defines where, the leases and the disk's content). Every host runs virtlockd; the collection's
ha_locking role switches libvirtd to it at the start of this module and back at the end. lab-h3 is the
host that fails: `virtlab crash` (everything of the host killed), `virtlab partition` (network cut, QEMU
left running), and `virtlab fence` as the inventory's fence command. A poller records every second,
from the process table, on which hosts each VM's QEMU runs: no VM may ever run on two.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import typing as t
from pathlib import Path

import pytest
from labkit import (
    REPO,
    assert_no_vm_lost,
    lab_status,
    load_hostvars,
    module_task,
    qemu_census,
    run_module,
    run_playbook_report,
    run_tasks,
    uri,
    virsh,
    virtlab,
    vm_homes,
)

if t.TYPE_CHECKING:
    from conftest import VmFactory

HA = "virtops.migration.ha_recover"
POLICY = "virtops.migration.migration_policy"
HOSTS = ("lab-h1", "lab-h2", "lab-h3")
VICTIM = "lab-h3"
PLAYBOOK = REPO / "playbooks" / "ha_recover.yml"
# Quick failure detection for the lab: two checks a second apart (each waits up to 5 s: the machine may be busy).
FAST = {"checks": 2, "check_interval": 1, "connect_timeout": 5, "fence_timeout": 30}
FAILED_EVENT = "Highly Available %s failed. It will be restarted automatically."
RESTARTED_EVENT = "%s was restarted on Host %s."


class Poller:
    """Every second, the hosts each VM's QEMU runs on (process table); every VM seen on two hosts at once."""

    def __init__(self) -> None:
        self.twice: list[tuple[float, str, list[str]]] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for vm, hosts in qemu_census().items():
                if len(hosts) > 1:
                    self.twice.append((time.time(), vm, hosts))
            self.samples += 1
            self._stop.wait(1.0)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def assert_never_twice(self) -> None:
        assert self.samples > 0, "the poller took no sample"
        assert not self.twice, "VMs ran on two hosts at once: %s" % self.twice[:5]


def shared_storage(lab: Path) -> Path:
    return Path(load_hostvars(lab)["lab-h1"]["virtops_shared_storage"])


def ha_hosts(lab: Path, fence: t.Sequence[str] | None = None) -> list[dict[str, t.Any]]:
    """The module's hosts as the role builds them; ``fence`` replaces every host's fence command."""
    hostvars = load_hostvars(lab)
    return [
        {
            "name": host,
            "uri": hostvars[host]["virtops_libvirt_uri"],
            "ssh_host": hostvars[host]["ansible_host"],
            "fence_command": list(hostvars[host]["virtops_fence_command"] if fence is None else fence),
        }
        for host in HOSTS
    ]


def recover(lab: Path, check_mode: bool = False, **args: t.Any) -> dict[str, t.Any]:
    """ha_recover run on the controller (it mounts the lab's shared storage and runs the fence commands)."""
    params = dict(FAST, hosts=ha_hosts(lab), shared_storage=str(shared_storage(lab)))
    params.update(args)
    return run_module(lab, "localhost", HA, params, check_mode=check_mode)


def playbook(lab: Path, check_mode: bool = False, **extra: t.Any) -> tuple[t.Any, dict[str, t.Any]]:
    proc, report = run_playbook_report(lab, PLAYBOOK, dict({"cluster": "lab", "options": FAST}, **extra), check_mode=check_mode)
    return proc, report


def disk_digest(lab: Path, vm: str) -> str:
    return hashlib.sha256((shared_storage(lab) / "disks" / ("%s.img" % vm)).read_bytes()).hexdigest()


def fill_disk(lab: Path, vm: str) -> str:
    """Random data at the start of the VM's shared disk (tiny VMs never write to it); its digest."""
    path = shared_storage(lab) / "disks" / ("%s.img" % vm)
    with open(path, "r+b") as disk:
        disk.write(os.urandom(1 << 20))
    return disk_digest(lab, vm)


def events_on(host: str) -> list[dict[str, t.Any]]:
    proc = virtlab("ssh", host, "--", "cat", "/var/log/virtops-migration/events.jsonl", check=False)
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def lockd(lab: Path) -> t.Iterator[None]:
    """Every lab host runs libvirt's lockd lock manager on the shared lockspace for this module's tests."""
    play = REPO / "tests" / "integration" / "data" / "ha_locking.yml"
    proc, _report = run_playbook_report(lab, play, {"ha_locking_state": "present"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    for host in HOSTS:
        assert (shared_storage(lab) / "virtops-ha" / "locking" / ("%s.json" % host)).is_file()
    yield
    proc, _report = run_playbook_report(lab, play, {"ha_locking_state": "absent"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


@pytest.fixture()
def victim_back(lab: Path) -> t.Iterator[None]:
    """lab-h3 powered on and its session VM running again after the test, whatever happened."""
    yield
    host = {entry["name"]: entry for entry in lab_status()["hosts"]}[VICTIM]
    if host["power"] == "off":
        virtlab("fence", VICTIM, "-o", "on", check=False)
    elif host["crashed"] or not host["link_up"]:
        # Crashed or partitioned: a reboot, as an operator would.
        virtlab("fence", VICTIM, "-o", "reboot", check=False)
    # Whatever the host ran and runs nowhere else starts again there (the hook refuses stale copies).
    for entry in lab_status()["hosts"]:
        if entry["name"] != VICTIM:
            continue
        for vm in entry["vms"]:
            if vm["state"] == "shut off" and "running" not in vm_homes(vm["name"]).values():
                virsh(uri(lab, VICTIM), "start", vm["name"], check=False)


def test_a_crashed_host_s_ha_vms_restart_elsewhere_once_and_the_host_comes_back_clean(
    lab: Path, lockd: None, new_vm: VmFactory, victim_back: None
) -> None:
    low, high, plain = new_vm.names(3)
    virtlab("add-vm", "--tiny", "--shared-disk", "8", "%s:48:low@3" % low, "%s:48:high@3" % high, "%s:48@3" % plain)
    storage = str(shared_storage(lab))
    # Bad input first: a local disk cannot be made highly available; nothing is written.
    local = "/var/lib/libvirt/images/%s-local.img" % plain
    virsh(uri(lab, VICTIM), "vol-create-as", "lab", os.path.basename(local), "1M")
    virsh(uri(lab, VICTIM), "attach-disk", plain, local, "vdb", "--config")
    results = run_tasks(lab, VICTIM, [
        module_task(POLICY, {"name": plain, "high_availability": True, "shared_storage": storage}),
        module_task(POLICY, {"name": plain, "high_availability": True}),
        module_task(POLICY, {"name": high, "high_availability": True, "shared_storage": storage}),
        module_task(POLICY, {"name": low, "high_availability": True, "shared_storage": storage}),
        module_task(POLICY, {"name": low, "high_availability": True, "shared_storage": storage}),
    ])
    refused_local, refused_no_storage, made_high, made_low, again = results
    assert refused_local.get("failed") and local in refused_local["msg"] and "shared storage" in refused_local["msg"], refused_local
    assert refused_no_storage.get("failed") and "no shared storage" in refused_no_storage["msg"], refused_no_storage
    for result in (made_high, made_low):
        assert not result.get("failed") and result["changed"], result
    assert not again.get("failed") and not again["changed"], again
    store = shared_storage(lab) / "virtops-ha"
    uuids = {vm: virsh(uri(lab, VICTIM), "domuuid", vm).stdout.strip() for vm in (low, high, plain)}
    assert (store / "vms" / ("%s.xml" % uuids[high])).is_file() and not (store / "vms" / ("%s.xml" % uuids[plain])).exists()
    assert oct((store / "vms" / ("%s.xml" % uuids[high])).stat().st_mode & 0o777) == "0o600" and oct(store.stat().st_mode & 0o777) == "0o700"
    digest = fill_disk(lab, high)
    # A healthy cluster: the store is brought up to date, nothing is restarted.
    healthy = recover(lab)
    assert not healthy.get("failed") and not healthy["failed_hosts"] and not healthy["restarted"], healthy
    with Poller() as poller:
        virtlab("crash", VICTIM)
        check = recover(lab, check_mode=True)
        assert not check.get("failed") and [vm["vm"] for vm in check["plan"]] == [high, low], check
        assert vm_homes(high) == {} and vm_homes(low) == {}, "check mode started something"
        proc, report = playbook(lab)
        assert proc.returncode == 0, proc.stdout[-6000:]
        stats = report["global_custom_stats"]["ha_recover"]["lab"]
        restarted = {vm: [host for host, state in vm_homes(vm).items() if state == "running"] for vm in (high, low)}
        assert all(len(hosts) == 1 and hosts[0] != VICTIM for hosts in restarted.values()), restarted
        assert [entry["vm"] for entry in stats["restarted"]] == [high, low], stats
        assert {plain, "cache1"} <= {entry["vm"] for entry in stats["left_down"]}, stats
        assert [(entry["name"], entry["fence"]["outcome"]) for entry in stats["failed_hosts"]] == [(VICTIM, "confirmed_off")], stats
        assert {(event["event"], event["vm"]) for event in stats["events"]} == {(kind, vm) for kind in ("failed", "restarted") for vm in (high, low)}
        for vm in (high, low):
            dest = restarted[vm][0]
            messages = [event["message"] for event in events_on(dest) if event.get("vm") == vm]
            assert FAILED_EVENT % vm in messages and RESTARTED_EVENT % (vm, dest) in messages, (dest, messages)
        assert disk_digest(lab, high) == digest, "the shared disk changed"
        again = recover(lab)
        assert not again.get("failed") and not again["changed"] and not again["restarted"], json.dumps(again, indent=1)[:5000]
        assert again["failed_hosts"][0]["fence"]["outcome"] == "not_needed", again["failed_hosts"]
        # The host comes back: its copies are stale; its hook refuses to start them, the next run removes them.
        virtlab("fence", VICTIM, "-o", "on")
        assert vm_homes(high).get(VICTIM) == "shut off", vm_homes(high)
        refused = virsh(uri(lab, VICTIM), "start", high, check=False)
        assert refused.returncode != 0 and "stale" in refused.stderr, refused.stderr
        back = recover(lab)
        assert not back.get("failed") and {entry["vm"] for entry in back["cleaned"]} == {high, low}, back
        assert VICTIM not in vm_homes(high) and VICTIM not in vm_homes(low)
        # The VMs left down start again on their host, as an operator would start them.
        for entry in stats["left_down"]:
            if entry["was_running"]:
                virsh(uri(lab, VICTIM), "start", entry["vm"])
        assert_no_vm_lost()
    poller.assert_never_twice()


def test_a_partitioned_host_is_never_doubled_and_a_failed_or_missing_fence_restarts_nothing(
    lab: Path, lockd: None, new_vm: VmFactory, victim_back: None
) -> None:
    (vm,) = new_vm.names(1)
    virtlab("add-vm", "--tiny", "--shared-disk", "8", "%s:48:high@3" % vm)
    storage = str(shared_storage(lab))
    made = run_module(lab, VICTIM, POLICY, {"name": vm, "high_availability": True, "shared_storage": storage})
    assert not made.get("failed") and made["changed"], made
    # Bad input is refused before anything happens.
    missing = recover(lab, hosts=ha_hosts(lab, fence=["/nonexistent/fence_lab"]))
    assert missing.get("failed") and "fence command not found" in missing["msg"], missing
    nowhere = recover(lab, shared_storage="/nonexistent/shared")
    assert nowhere.get("failed") and "not a directory" in nowhere["msg"], nowhere
    assert recover(lab)["failed_hosts"] == []
    with Poller() as poller:
        virtlab("partition", VICTIM)
        # A fence that claims success but leaves the host on: nothing is restarted.
        fake = recover(lab, hosts=ha_hosts(lab, fence=["/bin/true"]), fence_timeout=3)
        assert fake.get("failed") and fake["failed_hosts"][0]["fence"]["outcome"] == "failed", fake
        assert [entry["rule"] for entry in fake["not_restarted"]] == ["fence"] and not fake["restarted"], fake
        # No fence command at all: refused, unless leases are asked for; then the lease held by the
        # partitioned host's QEMU makes libvirt refuse the start, and nothing is left behind.
        refused = recover(lab, hosts=ha_hosts(lab, fence=[]))
        assert refused.get("failed") and refused["not_restarted"][0]["rule"] == "fence", refused
        leased = recover(lab, hosts=ha_hosts(lab, fence=[]), without_fence="lease")
        assert leased.get("failed") and leased["not_restarted"][0]["rule"] == "lease", leased
        assert set(vm_homes(vm)) <= {VICTIM}, vm_homes(vm)
        # The real fence powers the partitioned host off first; then the VM starts elsewhere.
        fenced = recover(lab)
        assert not fenced.get("failed") and fenced["failed_hosts"][0]["fence"]["outcome"] == "confirmed_off", fenced
        assert [entry["vm"] for entry in fenced["restarted"]] == [vm], fenced
        assert [host for host, state in vm_homes(vm).items() if state == "running"] == [fenced["restarted"][0]["to"]]
        virtlab("fence", VICTIM, "-o", "on")
        back = recover(lab)
        assert not back.get("failed") and [entry["vm"] for entry in back["cleaned"]] == [vm], back
        for entry in fenced["left_down"]:
            if entry["was_running"]:
                virsh(uri(lab, VICTIM), "start", entry["vm"])
        assert_no_vm_lost()
    poller.assert_never_twice()
