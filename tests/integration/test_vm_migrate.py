"""vm_migrate against real lab hosts: moves, idempotency, bad input, cancel, failures, convergence.

Every test makes fresh VMs of its own and ends with the lab's no-VM-lost check. The tests that move a
running VM boot a real guest (TCG), write a marker into its memory before the move and read it back
afterwards (a real loss is caught, not retried away); several also need the guest for a move slow
enough to watch, cancel or break (its memory is not all zero pages), for the dirtying workload, or for
the data `dd` writes into it. The tests that move nothing running use tiny VMs (firmware only, under
KVM), which need no marker: the bad-input table (run in one Ansible process), the shut-off VM whose
definition moves, and the disk with an unsafe cache mode, which is refused.
"""

from __future__ import annotations

import subprocess
import typing as t
from pathlib import Path

import pytest

from labkit import (
    assert_no_lost_writes,
    assert_no_vm_lost,
    migration_connections,
    migration_job,
    load_hostvars,
    maintenance_mark,
    module_task,
    read_marker,
    run_module,
    run_playbook,
    run_tasks,
    running_on,
    uri,
    virtlab,
    vm_homes,
    wait_async,
    wait_until,
    write_marker,
)

if t.TYPE_CHECKING:
    from conftest import VmFactory

MODULE = "virtops.migration.vm_migrate"
EVACUATE = "virtops.migration.host_maintenance"


def job_running(lab: Path, host: str, vm: str) -> bool:
    """Whether libvirt shows an outgoing migration job for the VM (``virsh domjobinfo``)."""
    return migration_job(uri(lab, host), vm)


def test_migrate_to_a_named_host_check_real_repeat(lab: Path, new_vm: VmFactory) -> None:
    vm = new_vm(guest=True)
    marker = write_marker(vm)
    args = {"name": vm, "destination_uri": uri(lab, "lab-h2")}

    planned = run_module(lab, "lab-h1", MODULE, args, check_mode=True)
    assert planned["changed"] is True, planned
    assert planned["plan"]["destination"]["hostname"] == "lab-h2"
    assert planned["plan"]["kind"] == "live"
    assert planned["policy"]["name"] == "minimal_downtime"
    assert running_on(vm) == "lab-h1", "check mode moved nothing"

    moved = run_module(lab, "lab-h1", MODULE, args, diff=True)
    assert moved["changed"] is True, moved
    assert moved["destination"]["hostname"] == "lab-h2"
    assert moved["diff"] == {"before": {"vm": vm, "host": "lab-h1"}, "after": {"vm": vm, "host": "lab-h2"}}
    assert isinstance(moved["downtime_ms"], int) and moved["downtime_ms"] >= 0
    assert moved["data_total_mib"] and moved["memory_iterations"] >= 1
    assert [e["event"] for e in moved["events"]][-2:] == ["completed", "verified"], moved["events"]
    assert moved["vm_state"] == "running" and moved["observed"]["source"] is None, moved["observed"]
    assert vm_homes(vm) == {"lab-h2": "running"}, "defined and running on the destination only"
    assert read_marker(vm) == marker

    again, again_checked = run_tasks(lab, "lab-h1", [module_task(MODULE, args), module_task(MODULE, args, check_mode=True)])
    assert again["changed"] is False, again
    assert again["destination"]["hostname"] == "lab-h2"
    assert again_checked["changed"] is False, again_checked
    assert_no_vm_lost()


def test_auto_destination_skips_source_and_maintenance(lab: Path, new_vm: VmFactory) -> None:
    vm = new_vm(host_index=1, guest=True)
    marker = write_marker(vm)
    candidates = [
        {"name": "lab-h1", "uri": uri(lab, "lab-h1")},
        {"name": "lab-h2", "uri": uri(lab, "lab-h2")},
        {"name": "lab-h3", "uri": uri(lab, "lab-h3"), "maintenance": True},
    ]
    args = {"name": vm, "destination": "auto", "candidates": candidates}
    # The plan and the move in one Ansible process, then the repeat and the repeat in check mode in another.
    planned, moved = run_tasks(lab, "lab-h1", [module_task(MODULE, args, check_mode=True), module_task(MODULE, args)])
    assert planned["changed"] is True, planned
    assert planned["plan"]["destination"]["hostname"] == "lab-h2"
    rejected = planned["plan"]["rejected_hosts"]
    assert "is the source host itself" in rejected["lab-h1"][0]
    assert rejected["lab-h3"] == ["is in maintenance"]

    assert moved["changed"] is True and moved["destination"]["hostname"] == "lab-h2", moved
    assert running_on(vm) == "lab-h2" and read_marker(vm) == marker
    again, again_checked = run_tasks(lab, "lab-h1", [module_task(MODULE, args), module_task(MODULE, args, check_mode=True)])
    assert again["changed"] is False, again
    assert again_checked["changed"] is False, again_checked
    assert_no_vm_lost()


def test_bad_input_is_refused_before_anything_moves(lab: Path, new_vm: VmFactory) -> None:
    vm = new_vm()
    h2 = uri(lab, "lab-h2")
    cases: list[tuple[dict[str, t.Any], str]] = [
        ({"name": "no-such-vm", "destination_uri": h2}, "VM 'no-such-vm' does not exist on the source"),
        ({"name": vm, "destination_uri": "qemu+nosuchtransport://x/system"}, "qemu+nosuchtransport://x/system"),
        ({"name": vm, "destination_uri": "qemu+tcp://127.0.0.1:1/system"}, "Cannot open a libvirt connection on qemu+tcp://127.0.0.1:1/system"),
        ({"name": vm, "destination_uri": uri(lab, "lab-h1")}, "is the source host itself"),
        ({"name": vm, "destination_uri": h2, "policy": "fastest"}, "unknown migration policy 'fastest'"),
        ({"name": vm, "destination_uri": h2, "bandwidth_mib": -5}, "bandwidth_mib must be positive"),
        ({"name": vm, "destination_uri": h2, "post_copy": True, "parallel_connections": 2}, "post_copy cannot be combined with parallel_connections"),
        ({"name": vm, "destination": "auto"}, "destination=auto needs at least one host in candidates"),
    ]
    # The whole table in one Ansible process, each case asserted on its own result; then nothing has moved.
    results = run_tasks(lab, "lab-h1", [module_task(MODULE, args) for args, _message in cases])
    for (args, message), result in zip(cases, results):
        assert result.get("failed") is True, (args, result)
        assert message in result["msg"], (args, result["msg"])
    assert vm_homes(vm) == {"lab-h1": "running"}, "nothing moved for any of %s" % [args for args, _message in cases]
    assert_no_vm_lost()


def test_shut_off_vm_moves_its_definition(lab: Path, new_vm: VmFactory) -> None:
    vm = new_vm()
    virtlab("ssh", "lab-h1", "--", "virsh", "destroy", vm)
    args = {"name": vm, "destination_uri": uri(lab, "lab-h3")}
    planned, moved = run_tasks(lab, "lab-h1", [module_task(MODULE, args, check_mode=True), module_task(MODULE, args)])
    assert planned["changed"] is True and planned["plan"]["kind"] == "offline", planned
    assert moved["changed"] is True, moved
    assert vm_homes(vm) == {"lab-h3": "shut off"}
    again, again_checked = run_tasks(lab, "lab-h1", [module_task(MODULE, args), module_task(MODULE, args, check_mode=True)])
    assert again["changed"] is False, again
    assert again_checked["changed"] is False, again_checked
    assert_no_vm_lost(vm)
    virtlab("ssh", "lab-h3", "--", "virsh", "start", vm)
    assert_no_vm_lost()


def test_cancel_a_slow_migration_started_with_async(lab: Path, new_vm: VmFactory) -> None:
    vm = new_vm(guest=True)
    marker = write_marker(vm)
    virtlab("dirty", vm, "--mib", "16")
    started = run_module(
        lab, "lab-h1", MODULE, {"name": vm, "destination_uri": uri(lab, "lab-h2"), "bandwidth_mib": 1, "policy": "legacy"}, background=300
    )
    job_id = started["ansible_job_id"]
    wait_until(lambda: job_running(lab, "lab-h1", vm), 60, "the migration job of %s runs" % vm)

    checked = run_module(lab, "lab-h1", MODULE, {"name": vm, "state": "cancelled"}, check_mode=True)
    assert checked["changed"] is True, checked
    assert job_running(lab, "lab-h1", vm), "check mode left the job running"
    cancelled = run_module(lab, "lab-h1", MODULE, {"name": vm, "state": "cancelled"})
    assert cancelled["changed"] is True, cancelled
    assert cancelled["state"] == "running"
    final = wait_async(lab, "lab-h1", job_id)
    # Which side's error libvirt reports for a cancelled job varies ("canceled by client", or the
    # destination's "load of migration failed"): the run failed, changed nothing, and saw the VM stay.
    assert final.get("failed") is True and final.get("changed") is not True, final
    assert final["observed"]["source"]["active"] is True and final["observed"]["destination"] is None, final["observed"]
    assert vm_homes(vm) == {"lab-h1": "running"}
    assert read_marker(vm) == marker
    assert not job_running(lab, "lab-h1", vm)
    cancel = {"name": vm, "state": "cancelled"}
    again, again_checked = run_tasks(lab, "lab-h1", [module_task(MODULE, cancel), module_task(MODULE, cancel, check_mode=True)])
    assert again["changed"] is False, again
    assert again_checked["changed"] is False, again_checked
    assert_no_lost_writes(vm)
    assert_no_vm_lost()


@pytest.mark.parametrize("failure", ["libvirtd-killed", "link-down"])
def test_destination_failure_mid_migration_leaves_vm_on_source(lab: Path, new_vm: VmFactory, failure: str) -> None:
    vm = new_vm(guest=True)
    marker = write_marker(vm)
    virtlab("dirty", vm, "--mib", "16")
    started = run_module(
        lab, "lab-h1", MODULE, {"name": vm, "destination_uri": uri(lab, "lab-h3"), "bandwidth_mib": 2, "policy": "legacy"}, background=300
    )
    wait_until(lambda: job_running(lab, "lab-h1", vm), 60, "the migration job of %s runs" % vm)
    try:
        if failure == "libvirtd-killed":
            virtlab("kill-libvirtd", "lab-h3")
        else:
            virtlab("link", "lab-h3", "down")
        final = wait_async(lab, "lab-h1", started["ansible_job_id"], timeout=180)
    finally:
        if failure == "libvirtd-killed":
            virtlab("start-libvirtd", "lab-h3")
        else:
            virtlab("link", "lab-h3", "up")
    assert final.get("failed") is True, final
    assert vm in final["msg"] and "libvirt:" in final["msg"], final["msg"]
    assert running_on(vm) == "lab-h1"
    assert read_marker(vm) == marker
    # The destination drops its half-received copy once it notices the source gave up.
    wait_until(lambda: set(vm_homes(vm)) == {"lab-h1"}, 120, "the destination has dropped its incoming copy of %s" % vm)
    assert_no_vm_lost()


CONVERGENCE = [
    # (policy, extra options, expected outcome)
    ("legacy", {"timeout": 25}, "aborted"),
    # A 3 s convergence check (the default is 10 s) brings the schedule's steps sooner and keeps the
    # test short.
    ("minimal_downtime", {"monitor_interval": 3}, "completed"),
    ("post_copy", {"monitor_interval": 3}, "post_copy"),
]


@pytest.mark.parametrize("policy, extra, outcome", CONVERGENCE, ids=[case[0] for case in CONVERGENCE])
def test_convergence_of_a_busy_guest_under_a_bandwidth_cap(
    lab: Path, new_vm: VmFactory, policy: str, extra: dict[str, t.Any], outcome: str
) -> None:
    vm = new_vm(memory_mib=256, guest=True)
    marker = write_marker(vm)
    virtlab("dirty", vm, "--mib", "24")
    args = dict({"name": vm, "destination_uri": uri(lab, "lab-h2"), "policy": policy, "bandwidth_mib": 50}, **extra)
    result = run_module(lab, "lab-h1", MODULE, args)
    if outcome == "aborted":
        assert result.get("failed") is True, result
        assert "timeout after 25 s" in result["msg"], result["msg"]
        assert running_on(vm) == "lab-h1"
    else:
        assert result.get("failed") is not True and result["changed"] is True, result
        assert running_on(vm) == "lab-h2"
        actions = [step["action"] for step in result["schedule_applied"]]
        if outcome == "post_copy":
            assert "post_copy" in actions, result["schedule_applied"]
            # libvirt keeps no completed-job statistics after post-copy: these come from the last poll.
            assert result["data_total_mib"] and result["memory_iterations"] >= 1, result
        else:
            assert "abort" not in actions
    assert read_marker(vm) == marker
    assert_no_lost_writes(vm)
    assert_no_vm_lost()


def test_parallel_connections_and_xbzrle_compression(lab: Path, new_vm: VmFactory) -> None:
    vm = new_vm(memory_mib=256, guest=True)
    marker = write_marker(vm)

    # Three parallel connections: QEMU opens the main channel and three multifd channels.
    args = {"name": vm, "destination_uri": uri(lab, "lab-h2"), "parallel_connections": 3, "bandwidth_mib": 10}
    started = run_module(lab, "lab-h1", MODULE, args, background=300)
    source_address = load_hostvars(lab)["lab-h1"]["ansible_host"]
    seen: list[int] = []
    wait_until(
        lambda: seen.append(migration_connections("lab-h2", source_address)) or seen[-1] >= 4,
        60,
        "lab-h2 has 4 incoming migration connections from lab-h1 (seen: %s)" % seen,
    )
    moved = wait_async(lab, "lab-h1", started["ansible_job_id"])
    assert moved.get("failed") is not True and moved["changed"] is True, moved
    assert moved["policy"]["parallel_connections"] == 3
    assert moved["compression"] is None
    assert running_on(vm) == "lab-h2" and read_marker(vm) == marker

    # XBZRLE: the pages the guest rewrites between memory passes go out as deltas against QEMU's page
    # cache. A light load keeps the move to a few passes: under TCG, long XBZRLE moves of a busier
    # guest crash it now and then (tests/lab/README.md, known limitations).
    virtlab("dirty", vm, "--mib", "8", "--rate", "5")
    args = {"name": vm, "destination_uri": uri(lab, "lab-h1"), "compression": ["xbzrle"], "bandwidth_mib": 50}
    back = run_module(lab, "lab-h2", MODULE, args)
    assert back.get("failed") is not True and back["changed"] is True, back
    assert back["policy"]["compression"] == ["xbzrle"]
    assert back["compression"]["compressed_pages"] > 0 and back["compression"]["cache_mib"] > 0, back["compression"]
    assert running_on(vm) == "lab-h1" and read_marker(vm) == marker
    assert_no_lost_writes(vm)
    assert_no_vm_lost()


def migration_parameters(lab: Path, host: str, vm: str) -> str:
    """QEMU's migration parameters of ``vm`` on ``host`` (QMP query-migrate-parameters), as JSON text."""
    command = ["virsh", "-c", uri(lab, host), "qemu-monitor-command", vm, '{"execute":"query-migrate-parameters"}']
    return subprocess.run(command, capture_output=True, text=True, check=False).stdout.replace(" ", "")


def test_tls_connection_and_encrypted_migration_stream(lab: Path, new_vm: VmFactory) -> None:
    # The destination over qemu+tls (the lab CA's certificates), and QEMU's stream under TLS too.
    vm = new_vm(guest=True)
    marker = write_marker(vm)
    tls_uri = load_hostvars(lab)["lab-h2"]["virtops_lab_tls_uri"]
    assert tls_uri.startswith("qemu+tls://")
    args = {"name": vm, "destination_uri": tls_uri, "tls": True}

    planned = run_module(lab, "lab-h1", MODULE, args, check_mode=True)
    assert planned["changed"] is True and planned["plan"]["destination"] == {"hostname": "lab-h2", "uri": tls_uri}, planned
    started = run_module(lab, "lab-h1", MODULE, dict(args, bandwidth_mib=10), background=300)
    # While it runs, the source QEMU sends the stream with libvirt's TLS credentials.
    wait_until(
        lambda: '"tls-creds":"objlibvirt_migrate_tls' in migration_parameters(lab, "lab-h1", vm),
        60,
        "the source QEMU of %s migrates with TLS credentials" % vm,
    )
    moved = wait_async(lab, "lab-h1", started["ansible_job_id"])
    assert moved.get("failed") is not True and moved["changed"] is True, moved
    assert vm_homes(vm) == {"lab-h2": "running"} and read_marker(vm) == marker
    again, again_checked = run_tasks(lab, "lab-h1", [module_task(MODULE, args), module_task(MODULE, args, check_mode=True)])
    assert again["changed"] is False, again
    assert again_checked["changed"] is False, again_checked
    assert_no_vm_lost()


def test_migrate_vm_playbook_plans_moves_and_repeats(lab: Path, new_vm: VmFactory) -> None:
    vm = new_vm(host_index=3, guest=True)
    marker = write_marker(vm)
    playbook = Path(__file__).resolve().parents[2] / "playbooks" / "migrate_vm.yml"
    extra = {"source": "lab-h3", "vm": vm}

    planned = run_playbook(lab, playbook, extra, check_mode=True)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert "%s: lab-h3 -> " % vm in planned.stdout and "(planned, check mode)" in planned.stdout
    assert running_on(vm) == "lab-h3"

    moved = run_playbook(lab, playbook, extra)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert "downtime" in moved.stdout
    assert running_on(vm) != "lab-h3" and read_marker(vm) == marker

    again = run_playbook(lab, playbook, extra)
    assert again.returncode == 0 and "(already there)" in again.stdout, again.stdout
    assert "changed=0" in again.stdout
    assert_no_vm_lost()


def test_migrate_vm_playbook_refuses_missing_inputs(lab: Path) -> None:
    playbook = Path(__file__).resolve().parents[2] / "playbooks" / "migrate_vm.yml"
    result = run_playbook(lab, playbook, {"source": "lab-h1"})
    assert result.returncode != 0
    assert "Give the VM to move with -e vm=NAME" in result.stdout


def test_timeout_action_suspend_completes_and_resumes_on_destination(lab: Path, new_vm: VmFactory) -> None:
    vm = new_vm(memory_mib=256, guest=True)
    marker = write_marker(vm)
    virtlab("dirty", vm, "--mib", "24")
    args = {"name": vm, "destination_uri": uri(lab, "lab-h2"), "policy": "legacy", "bandwidth_mib": 50, "timeout": 8, "timeout_action": "suspend"}
    result = run_module(lab, "lab-h1", MODULE, args)
    assert result.get("failed") is not True and result["changed"] is True, result
    assert [step["action"] for step in result["schedule_applied"]] == ["suspend"]
    assert "timeout" in [event["event"] for event in result["events"]]
    # Paused on the source to let the copy finish; running on the destination afterwards.
    assert vm_homes(vm) == {"lab-h2": "running"}
    assert read_marker(vm) == marker
    assert_no_lost_writes(vm)
    assert_no_vm_lost()


def test_dedicated_migration_address(lab: Path, new_vm: VmFactory) -> None:
    # The lab hosts have a second network for migration streams: the destination's QEMU must listen, and
    # the source's QEMU send, there. The proof is the destination's own view: its QEMU's sockets while the
    # stream runs, and the bytes its two NICs received.
    vm = new_vm(guest=True)
    marker = write_marker(vm)
    hostvars = load_hostvars(lab)
    source, destination = hostvars["lab-h1"], hostvars["lab-h3"]
    dedicated = destination["virtops_lab_migration_address"]
    assert dedicated != destination["ansible_host"]
    # 32 MiB of incompressible guest memory at 8 MiB/s: the stream runs for several seconds.
    virtlab("exec", vm, "--", "dd", "if=/dev/urandom", "of=/tmp/fill", "bs=1M", "count=32")

    def rx_bytes() -> dict[str, int]:
        read = "cat /sys/class/net/eth0/statistics/rx_bytes /sys/class/net/eth1/statistics/rx_bytes"
        eth0, eth1 = virtlab("ssh", "lab-h3", "--", read).stdout.split()
        return {"eth0": int(eth0), "eth1": int(eth1)}

    def qemu_connections() -> list[tuple[str, str]]:
        """(local, peer) addresses of the established TCP connections of QEMU processes on lab-h3."""
        lines = virtlab("ssh", "lab-h3", "--", "ss", "-tnpH", "state", "established").stdout.splitlines()
        return [(line.split()[2], line.split()[3]) for line in lines if '"qemu' in line]

    before = rx_bytes()
    args = {
        "name": vm,
        "destination_uri": uri(lab, "lab-h3"),
        "migrate_uri": "tcp://%s" % dedicated,
        "listen_address": dedicated,
        "bandwidth_mib": 8,
    }
    started = run_module(lab, "lab-h1", MODULE, args, background=600)
    assert started.get("failed") is not True, started
    seen: list[tuple[str, str]] = []
    wait_until(lambda: bool(seen.extend(qemu_connections()) or seen), 120, "lab-h3's QEMU receives the stream")
    seen.extend(qemu_connections())
    moved = wait_async(lab, "lab-h1", started["ansible_job_id"], timeout=300)
    after = rx_bytes()
    assert moved.get("failed") is not True and moved["changed"] is True, moved
    for local, peer in seen:
        assert local.rsplit(":", 1)[0] == dedicated, "QEMU on lab-h3 has a connection on %s (from %s)" % (local, peer)
        assert peer.rsplit(":", 1)[0] == source["virtops_lab_migration_address"], (local, peer)
        assert 49152 <= int(local.rsplit(":", 1)[1]) <= 49215, (local, peer)
    received = {nic: after[nic] - before[nic] for nic in before}
    assert received["eth1"] > 32 * 2**20, received
    assert received["eth0"] < 4 * 2**20, received
    assert vm_homes(vm) == {"lab-h3": "running"} and read_marker(vm) == marker
    assert_no_vm_lost()


def test_disk_with_unsafe_cache_is_refused_unless_allowed_by_a_move_and_an_evacuation_alike(lab: Path, new_vm: VmFactory) -> None:
    vm = new_vm()
    image = "/var/lib/libvirt/images/%s-data.raw" % vm
    virtlab("ssh", "lab-h1", "--", "truncate", "-s", "16M", image)
    virtlab("ssh", "lab-h1", "--", "virsh", "attach-disk", vm, image, "vdb", "--cache", "writeback", "--persistent")
    args = {"name": vm, "destination_uri": uri(lab, "lab-h2")}

    # Both refusals in one Ansible process: the cache mode, then (allowed) the disk lab-h2 cannot see.
    refused, unseen = run_tasks(
        lab, "lab-h1", [module_task(MODULE, args), module_task(MODULE, dict(args, allow_unsafe_cache=True), check_mode=True)]
    )
    assert refused.get("failed") is True, refused
    assert "vdb (cache=writeback)" in refused["msg"] and "allow_unsafe_cache" in refused["msg"], refused["msg"]

    # Allowed, the next check still holds: lab-h2 cannot see the disk (it is not on shared storage).
    assert unseen.get("failed") is True, unseen
    assert "cannot see the disk(s) %s" % image in unseen["msg"], unseen["msg"]
    assert vm_homes(vm) == {"lab-h1": "running"}

    # A local disk at the same path on lab-h2: the collection's checks pass, but the cache-mode
    # override does not switch off libvirt's own storage-safety check, which refuses the move.
    virtlab("ssh", "lab-h2", "--", "truncate", "-s", "16M", image)
    virtlab("ssh", "lab-h2", "--", "virsh", "pool-refresh", "lab")
    try:
        # An evacuation of lab-h1 judges the same VM by the same rule (check mode: nothing moves);
        # allowed, it plans the VM as a live move to the one host that has its disk.
        everyone = [{"name": host, "uri": uri(lab, host)} for host in ("lab-h1", "lab-h2", "lab-h3")]
        held, really_held, allowed = run_tasks(
            lab,
            "lab-h1",
            [
                module_task(EVACUATE, {"candidates": everyone}, check_mode=True),
                module_task(EVACUATE, {"candidates": everyone}),
                module_task(EVACUATE, {"candidates": everyone, "allow_unsafe_cache": True}, check_mode=True),
            ],
        )
        for refused in (held, really_held):
            assert refused.get("failed") is True and refused.get("changed") is not True, refused
            assert "VM '%s' has disks with a cache mode" % vm in refused["msg"] and "vdb (cache=writeback)" in refused["msg"], refused["msg"]
            blocked = {entry["vm"]: entry for entry in refused["plan"]["blocked"]}
            assert blocked[vm]["rule"] == "unsafe_cache", blocked
        moves = {move["vm"]: move for move in allowed["plan"]["moves"]}
        assert moves[vm]["to"] == "lab-h2" and moves[vm]["kind"] == "live", allowed["plan"]
        assert vm_homes(vm) == {"lab-h1": "running"} and maintenance_mark("lab-h1") is None

        unsafe = run_module(lab, "lab-h1", MODULE, dict(args, allow_unsafe_cache=True))
        assert unsafe.get("failed") is True and unsafe.get("changed") is not True, unsafe
        assert "VIR_ERR_MIGRATE_UNSAFE" in unsafe["msg"], unsafe["msg"]
        assert vm_homes(vm) == {"lab-h1": "running"}
    finally:
        virtlab("ssh", "lab-h2", "--", "rm", "-f", image)
    assert_no_vm_lost()
