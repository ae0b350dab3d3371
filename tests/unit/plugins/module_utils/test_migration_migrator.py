# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Planning, running and cancelling one migration (``vm_migration.VmMigration`` over ``runner.JobRunner``) against fake hosts.

A move counts only once libvirt shows it on both hosts afterwards; whatever ``migrateToURI3`` says
or raises, anything else is a failure that reports what each host shows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import typing as t
from pathlib import Path

import libvirt
import pytest

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import placement, rules
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import requests as rq
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io import probe, runner
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io import storage as disk_io
from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration import vm_migration
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.plan import Candidate, Move, RunOptions
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import (
    DuplicateVmError,
    HostUnreachableError,
    MigrationError,
    OperationCancelledError,
    VmNotFoundError,
)
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.policy import PolicyError, Step, base_policy
from libvirt_fakes import HV1_UUID, HV2_UUID, HV3_UUID, TEAMING_PAIR, USB_HOSTDEV, FakeCluster, FakeConnection, FakeDomain, FakeObject, FakePool, libvirt_error

SOURCE_URI = "qemu+tls://hv1/system"
DEST_URI = "qemu+tls://hv2/system"
HV3_URI = "qemu+tls://hv3/system"
# The source again, under another URI (as an inventory may list every host of the cluster).
SOURCE_ALIAS_URI = "qemu+ssh://root@hv1.example.com/system"
VM_UUID = "4a0a3ad4-0d5b-4d47-9a6a-3b8a2f1c9e01"
VM_XML = (
    "<domain type='kvm'><name>web1</name><uuid>%s</uuid><memory unit='MiB'>1024</memory><vcpu>1</vcpu>"
    "<os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os><devices/></domain>" % VM_UUID
)
MIB = 1024 * 1024


class MigratingDomain(FakeDomain):
    """The VM on the source: ``migrateToURI3`` runs ``on_migrate`` (what libvirt did, or raised)."""

    def __init__(self, on_migrate: t.Callable[[], t.Any], state: t.Tuple[int, int] = (libvirt.VIR_DOMAIN_RUNNING, 1)) -> None:
        super().__init__(VM_XML, state)
        self.on_migrate = on_migrate
        self.on_abort: t.Callable[[], t.Any] = lambda: 0
        self.on_post_copy: t.Callable[[], t.Any] = lambda: 0

    def migrateToURI3(self, uri: str, params: t.Dict[str, t.Any], flags: int) -> int:  # noqa: N802 (libvirt's name)
        self.calls.append(("migrateToURI3", uri, flags))
        self.on_migrate()
        return 0

    def migrateSetMaxDowntime(self, downtime: int, flags: int = 0) -> int:  # noqa: N802 (libvirt's name)
        self.calls.append(("migrateSetMaxDowntime", downtime))
        return 0

    def abortJob(self) -> int:  # noqa: N802 (libvirt's name)
        self.calls.append(("abortJob",))
        self.on_abort()
        return 0

    def migrateStartPostCopy(self, flags: int = 0) -> int:  # noqa: N802 (libvirt's name)
        self.calls.append(("migrateStartPostCopy",))
        self.on_post_copy()
        return 0


class Cluster(FakeCluster):
    """Two fake hosts, hv1 (the source, running the VM) and hv2."""

    def __init__(self, capabilities: str) -> None:
        super().__init__(capabilities)
        self.source = self.add_host(SOURCE_URI, "hv1", HV1_UUID)
        self.destination = self.add_host(DEST_URI, "hv2", HV2_UUID)
        self.vm = MigratingDomain(self.move)
        self.source.domains.append(self.vm)

    def leave_source(self) -> None:
        """The source forgets the VM, as after a completed migration with VIR_MIGRATE_UNDEFINE_SOURCE."""
        self.source.domains.remove(self.vm)
        self.vm.vanished = True

    def arrive(self, state: int = libvirt.VIR_DOMAIN_RUNNING, persistent: bool = True) -> FakeDomain:
        there = FakeDomain(VM_XML, (state, 1), persistent=persistent)
        there.completed_job = {
            "type": libvirt.VIR_DOMAIN_JOB_COMPLETED,
            "downtime": 40,
            "data_total": 256 * MIB,
            "memory_iteration": 3,
            "time_elapsed": 1200,
        }
        self.destination.domains.append(there)
        return there

    def move(self) -> None:
        """What a successful peer-to-peer migration leaves behind."""
        self.leave_source()
        self.arrive()


@pytest.fixture
def cluster(sample: t.Callable[[str], str], monkeypatch: pytest.MonkeyPatch) -> Cluster:
    hosts = Cluster(sample("capabilities-qemu.xml"))
    monkeypatch.setattr(vm_migration, "libvirt_connection", hosts.connect)
    return hosts


def request(tmp_path: Path, **changes: t.Any) -> rq.MigrateRequest:
    run_fields = set(RunOptions.__dataclass_fields__)  # pylint: disable=no-member
    run_values: t.Dict[str, t.Any] = {"poll_interval": 0.01, "state_dir": str(tmp_path / "state")}
    run_values.update({key: value for key, value in changes.items() if key in run_fields})
    values: t.Dict[str, t.Any] = {
        "vm": "web1",
        "source_uri": SOURCE_URI,
        "candidates": [Candidate(uri=DEST_URI)],
        "policy": base_policy(None),
        "options": RunOptions(**run_values),
    }
    values.update({key: value for key, value in changes.items() if key not in run_fields})
    return rq.MigrateRequest(**values)


def migrator(tmp_path: Path, **changes: t.Any) -> vm_migration.VmMigration:
    return vm_migration.VmMigration(request(tmp_path, **changes))


def event_names(details_or_result: t.Mapping[str, t.Any]) -> t.List[str]:
    return [event["event"] for event in details_or_result["events"]]


def running_job(cluster: Cluster) -> None:
    """The VM has an outgoing migration job on the source."""
    cluster.vm.job = {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "operation": libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT}


def after_the_job_is_seen(cluster: Cluster, delay: float, action: t.Callable[[], None]) -> threading.Timer:
    """Run ``action`` ``delay`` s after the run first reads the VM's job (and so decides to adopt it), however
    slowly the run gets there on a busy machine; the timer, to join."""
    timer = threading.Timer(delay, action)
    first_look = cluster.vm.jobStats

    def job_stats(flags: int = 0) -> t.Dict[str, t.Any]:
        stats = first_look(flags)
        if timer.ident is None:
            timer.start()
        return stats

    cluster.vm.jobStats = job_stats  # type: ignore[method-assign]
    return timer


RUNNING_ON_SOURCE = {"state": "running", "reason": "booted", "active": True, "persistent": True}
RUNNING_ON_DESTINATION = {"state": "running", "reason": "booted", "active": True, "persistent": True}


# -- migrate


def test_a_verified_move_is_a_change(cluster: Cluster, tmp_path: Path) -> None:
    result = migrator(tmp_path).migrate(check_mode=False)
    assert result["changed"] is True
    assert result["vm_state"] == "running"
    assert result["destination"] == {"hostname": "hv2", "uri": DEST_URI}
    assert result["observed"] == {"source": None, "destination": RUNNING_ON_DESTINATION}
    assert (result["downtime_ms"], result["data_total_mib"], result["memory_iterations"]) == (40, 256.0, 3)
    assert event_names(result) == ["started", "max_downtime", "completed", "verified"]
    (call,) = [call for call in cluster.vm.calls if call[0] == "migrateToURI3"]
    flags = call[2]
    for flag in (libvirt.VIR_MIGRATE_LIVE, libvirt.VIR_MIGRATE_PEER2PEER, libvirt.VIR_MIGRATE_PERSIST_DEST, libvirt.VIR_MIGRATE_UNDEFINE_SOURCE):
        assert flags & flag, flag
    assert call[1] == DEST_URI


def test_check_mode_plans_without_migrating(cluster: Cluster, tmp_path: Path) -> None:
    result = migrator(tmp_path).migrate(check_mode=True)
    assert result["changed"] is True and result["plan"]["kind"] == "live"
    assert result["diff"] == {"before": {"vm": "web1", "host": "hv1"}, "after": {"vm": "web1", "host": "hv2"}}
    assert not [call for call in cluster.vm.calls if call[0] == "migrateToURI3"]


def test_a_tunnelled_move_is_planned_and_run_through_the_tunnel(cluster: Cluster, tmp_path: Path) -> None:
    planned = migrator(tmp_path, tunnelled=True).migrate(check_mode=True)
    assert planned["plan"]["tunnelled"] is True and planned["plan"]["kind"] == "live"
    assert not [call for call in cluster.vm.calls if call[0] == "migrateToURI3"]
    assert migrator(tmp_path).migrate(check_mode=True)["plan"]["tunnelled"] is False
    result = migrator(tmp_path, tunnelled=True).migrate(check_mode=False)
    assert result["changed"] is True and result["plan"]["tunnelled"] is True
    (call,) = [call for call in cluster.vm.calls if call[0] == "migrateToURI3"]
    assert call[2] & libvirt.VIR_MIGRATE_TUNNELLED and call[2] & libvirt.VIR_MIGRATE_PEER2PEER


@pytest.mark.parametrize("check_mode", [True, False])
@pytest.mark.parametrize(
    "level, setting, message",
    [
        ("cluster_policy", {"policy": "post_copy"}, r"its policy setting \(from the cluster level\), policy 'post_copy', has post_copy: true"),
        (
            "global_policy",
            {"policy": {"based_on": "legacy", "parallel_connections": 4}},
            r"its policy setting \(from the global level\), policy 'custom', has parallel_connections: 4",
        ),
    ],
)
def test_a_tunnelled_move_under_an_inherited_policy_libvirt_cannot_tunnel_is_refused_before_anything_moves(
    cluster: Cluster, tmp_path: Path, check_mode: bool, level: str, setting: t.Dict[str, t.Any], message: str
) -> None:
    with pytest.raises(PolicyError, match="VM 'web1' cannot migrate with tunnelled=true: " + message) as caught:
        migrator(tmp_path, tunnelled=True, **{level: setting}).migrate(check_mode=check_mode)
    assert caught.value.msg.endswith("Nothing was moved.") and caught.value.details["vm"] == "web1"
    assert not [call for call in cluster.vm.calls if call[0] == "migrateToURI3"]
    # Without the tunnel the same policy migrates.
    assert migrator(tmp_path, **{level: setting}).migrate(check_mode=True)["plan"]["tunnelled"] is False


def test_a_repeat_run_finds_the_vm_moved(cluster: Cluster, tmp_path: Path) -> None:
    cluster.move()
    result = migrator(tmp_path).migrate(check_mode=False)
    assert result["changed"] is False
    assert result["destination"] == {"hostname": "hv2", "uri": DEST_URI} and result["vm_state"] == "running"


@pytest.mark.parametrize(
    "error",
    [
        OverflowError("Python int too large to convert to C long"),
        TypeError("migrateToURI3() argument 2 must be dict, not None"),
        KeyError("destination"),
    ],
    ids=["overflow", "type", "key"],
)
def test_any_exception_from_the_job_is_a_failure(cluster: Cluster, tmp_path: Path, error: Exception) -> None:
    def fail() -> None:
        raise error

    cluster.vm.on_migrate = fail
    with pytest.raises(MigrationError) as caught:
        migrator(tmp_path).migrate(check_mode=False)
    failure = caught.value
    assert failure.msg.startswith("Cannot migrate to %s for VM 'web1' on %s: unexpected %s: " % (DEST_URI, SOURCE_URI, type(error).__name__))
    assert failure.details["exception_type"] == type(error).__name__
    assert failure.details["observed"] == {"source": RUNNING_ON_SOURCE, "destination": None}
    assert failure.details.get("changed") is not True
    assert event_names(failure.details)[-1] == "failed"


def test_a_libvirt_error_from_the_job_is_translated_with_what_each_host_shows(cluster: Cluster, tmp_path: Path) -> None:
    def refuse() -> None:
        raise libvirt_error(
            libvirt.VIR_ERR_OPERATION_FAILED,
            "operation failed: migration out job: unexpectedly failed",
            libvirt.VIR_FROM_QEMU,
        )

    cluster.vm.on_migrate = refuse
    with pytest.raises(MigrationError) as caught:
        migrator(tmp_path).migrate(check_mode=False)
    assert "migration out job: unexpectedly failed" in caught.value.msg
    assert caught.value.details["libvirt_error_code"] == libvirt.VIR_ERR_OPERATION_FAILED
    assert caught.value.details["observed"] == {"source": RUNNING_ON_SOURCE, "destination": None}


def test_reported_complete_but_not_on_the_destination(cluster: Cluster, tmp_path: Path) -> None:
    cluster.vm.on_migrate = cluster.leave_source  # gone from the source, never arrived
    with pytest.raises(MigrationError) as caught:
        migrator(tmp_path).migrate(check_mode=False)
    assert caught.value.msg == (
        "libvirt reported the migration of VM 'web1' to %s complete, but the destination does not have it." % DEST_URI
    )
    assert caught.value.details["observed"] == {"source": None, "destination": None}
    assert caught.value.details["changed"] is False
    assert event_names(caught.value.details)[-2:] == ["completed", "verification_failed"]


def test_reported_complete_but_still_running_on_the_source(cluster: Cluster, tmp_path: Path) -> None:
    cluster.vm.on_migrate = cluster.arrive  # a copy arrived, the source still runs it
    with pytest.raises(MigrationError) as caught:
        migrator(tmp_path).migrate(check_mode=False)
    assert caught.value.msg == (
        "libvirt reported the migration of VM 'web1' to %s complete, but it is still running on the source." % DEST_URI
    )
    assert caught.value.details["observed"] == {"source": RUNNING_ON_SOURCE, "destination": RUNNING_ON_DESTINATION}
    assert caught.value.details["changed"] is True


@pytest.mark.parametrize(
    "state, persistent, leaves_source, problem",
    [
        (libvirt.VIR_DOMAIN_SHUTOFF, True, True, "it is shut off on the destination, not active"),
        (libvirt.VIR_DOMAIN_RUNNING, False, True, "it is not persistently defined on the destination"),
        (libvirt.VIR_DOMAIN_RUNNING, True, False, "it is still running on the source"),
    ],
)
def test_every_other_outcome_is_a_failure(
    cluster: Cluster, tmp_path: Path, state: int, persistent: bool, leaves_source: bool, problem: str
) -> None:
    def outcome() -> None:
        if leaves_source:
            cluster.leave_source()
        cluster.arrive(state, persistent)

    cluster.vm.on_migrate = outcome
    with pytest.raises(MigrationError, match="complete, but ") as caught:
        migrator(tmp_path).migrate(check_mode=False)
    assert caught.value.msg.endswith(", but %s." % problem)


def test_a_definition_libvirt_left_on_the_source_after_the_move_is_removed(cluster: Cluster, tmp_path: Path) -> None:
    # libvirt's confirm step did not undefine the source (its libvirtd restarted there, as the soak found).
    def outcome() -> None:
        cluster.vm._state = (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED)
        cluster.arrive()

    cluster.vm.on_migrate = outcome
    result = migrator(tmp_path).migrate(check_mode=False)
    assert result["changed"] is True and result["observed"] == {"source": None, "destination": RUNNING_ON_DESTINATION}
    assert "source_definition_removed" in event_names(result) and cluster.vm not in cluster.source.domains
    assert any("left its shut-off definition on hv1" in warning for warning in result["warnings"]), result["warnings"]


@pytest.mark.parametrize("keeps", ["managed save image", "snapshot", "undefine fails"])
def test_a_definition_left_on_the_source_with_more_than_a_definition_stays_and_fails_the_move(cluster: Cluster, tmp_path: Path, keeps: str) -> None:
    def outcome() -> None:
        cluster.vm._state = (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED)
        cluster.arrive()

    cluster.vm.on_migrate = outcome
    if keeps == "managed save image":
        cluster.vm.saved_image = True  # type: ignore[attr-defined]
    elif keeps == "snapshot":
        cluster.vm.snapshots = 1  # type: ignore[attr-defined]
    else:
        cluster.vm.errors["undefineFlags"] = libvirt_error(libvirt.VIR_ERR_OPERATION_INVALID, "cannot undefine domain with nvram")
    with pytest.raises(MigrationError) as caught:
        migrator(tmp_path).migrate(check_mode=False)
    assert caught.value.msg.endswith("complete, but it is still defined on the source (shut off).")
    assert caught.value.details["changed"] is True and cluster.vm in cluster.source.domains


@pytest.mark.parametrize(
    "state, message",
    [
        ((libvirt.VIR_DOMAIN_PMSUSPENDED, 1), "VM 'web1' is pmsuspended"),
        ((libvirt.VIR_DOMAIN_CRASHED, 1), "VM 'web1' has crashed and is kept for inspection"),
    ],
)
def test_vms_in_states_a_migration_cannot_carry_are_refused(cluster: Cluster, tmp_path: Path, state: t.Tuple[int, int], message: str) -> None:
    cluster.vm._state = state
    with pytest.raises(PolicyError, match=message):
        migrator(tmp_path).migrate(check_mode=False)
    assert not [call for call in cluster.vm.calls if call[0] == "migrateToURI3"]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"persistent": False}, "VM 'web1' is persistent: persistent=false would leave it defined nowhere"),
        ({"undefine_source": False}, "VM 'web1' is persistent: undefine_source=false would leave a second, shut-off definition on hv1"),
    ],
)
def test_a_persistent_vm_moves_only_as_a_persistent_vm(cluster: Cluster, tmp_path: Path, changes: t.Dict[str, t.Any], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        migrator(tmp_path, **changes).migrate(check_mode=True)


def test_a_vm_also_defined_on_the_destination_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    cluster.arrive(libvirt.VIR_DOMAIN_SHUTOFF)  # a stale, shut-off copy
    with pytest.raises(DuplicateVmError, match="VM 'web1' \\(UUID %s\\) is defined on hv1 and also on hv2" % VM_UUID) as caught:
        migrator(tmp_path).migrate(check_mode=False)
    assert caught.value.details["hosts"] == ["hv1", "hv2"]
    assert not [call for call in cluster.vm.calls if call[0] == "migrateToURI3"]


# -- a migration job already running (an earlier run died): adopted and followed to its end


def job_ending_after(cluster: Cluster, polls: int, outcome: t.Callable[[], None]) -> None:
    """The VM has an outgoing migration job that ends, doing ``outcome``, after ``polls`` reads of its statistics."""
    running_job(cluster)
    seen = {"polls": 0}
    read = cluster.vm.jobStats

    def job_stats(flags: int = 0) -> t.Dict[str, t.Any]:
        if not flags:
            seen["polls"] += 1
            if seen["polls"] == polls:
                cluster.vm.job = {"type": libvirt.VIR_DOMAIN_JOB_NONE}
                outcome()
        return read(flags)

    cluster.vm.jobStats = job_stats  # type: ignore[method-assign]


def test_a_running_job_is_adopted_and_its_move_verified(cluster: Cluster, tmp_path: Path) -> None:
    job_ending_after(cluster, 3, cluster.move)
    result = migrator(tmp_path).migrate(check_mode=False)
    assert (result["changed"], result["adopted"], result["vm_state"]) == (True, True, "running")
    assert result["destination"] == {"hostname": "hv2", "uri": DEST_URI}
    assert result["observed"] == {"source": None, "destination": RUNNING_ON_DESTINATION}
    assert event_names(result)[0] == "adopted" and event_names(result)[-1] == "verified"
    assert not [call for call in cluster.vm.calls if call[0] == "migrateToURI3"], "no second job is started"


def test_an_adopted_job_that_leaves_the_vm_on_the_source_is_a_failure(cluster: Cluster, tmp_path: Path) -> None:
    job_ending_after(cluster, 3, lambda: None)
    with pytest.raises(MigrationError, match="ended without moving it; it runs on the source") as caught:
        migrator(tmp_path).migrate(check_mode=False)
    assert caught.value.details["observed"] == {"source": RUNNING_ON_SOURCE}


def test_check_mode_reports_the_job_it_would_adopt(cluster: Cluster, tmp_path: Path) -> None:
    running_job(cluster)
    cluster.vm.job.update(time_elapsed=42_000, data_remaining=512 * MIB, memory_iteration=4)
    result = migrator(tmp_path).migrate(check_mode=True)
    assert (result["changed"], result["adopted"]) == (True, True)
    assert result["job"] == {"elapsed_s": 42.0, "data_remaining_mib": 512.0, "memory_iteration": 4}


# -- refusing duplicates


def candidate_host(name: str, uuid: str, vm_uuids: t.Iterable[str] = (), **kwargs: t.Any) -> placement.HostState:
    return placement.HostState(name=name, uri="qemu+tls://%s/system" % name, uuid=uuid, vm_uuids=frozenset(vm_uuids), **kwargs)


def duplicate_verdict(hosts: t.Sequence[placement.HostState]) -> rules.Verdict:
    """What the rules say of web1 on hv1 when ``hosts`` were probed."""
    vm = rules.VmToMove("web1", VM_UUID, 1024, duplicate_on=rules.defined_elsewhere(VM_UUID, HV1_UUID, hosts))
    return rules.Assessor(rules.MoveRequest(confirmed=True), rules.SourceHost("hv1", HV1_UUID, SOURCE_URI)).assess(vm)


def test_refuse_duplicates_names_both_hosts() -> None:
    hosts = [candidate_host("hv2", HV2_UUID), candidate_host("hv3", "uuid-hv3", [VM_UUID]), candidate_host("hv4", "uuid-hv4", [VM_UUID])]
    with pytest.raises(DuplicateVmError) as caught:
        vm_migration.refuse(duplicate_verdict(hosts), SOURCE_URI)
    assert caught.value.msg.startswith("VM 'web1' (UUID %s) is defined on hv1 and also on hv3, hv4: refusing to move it" % VM_UUID)
    assert caught.value.details == {"vm": "web1", "uuid": VM_UUID, "hosts": ["hv1", "hv3", "hv4"], "uri": SOURCE_URI, "rule": "duplicate"}


def test_refuse_duplicates_ignores_unreachable_hosts_and_the_source() -> None:
    hosts = [
        candidate_host("hv2", HV2_UUID),
        candidate_host("hv3", "uuid-hv3", [VM_UUID], error="connection refused"),
        candidate_host("hv1-alias", HV1_UUID, [VM_UUID]),  # the source itself, listed as a candidate
    ]
    vm_migration.refuse(duplicate_verdict(hosts), SOURCE_URI)


# -- cancel


def cancel_request(tmp_path: Path) -> vm_migration.VmMigration:
    return migrator(tmp_path, candidates=[])


@pytest.mark.parametrize(
    "state",
    [
        (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY),
        (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_POSTCOPY),
    ],
    ids=["paused-post-copy", "running-post-copy"],
)
def test_a_migration_in_post_copy_cannot_be_cancelled(cluster: Cluster, tmp_path: Path, state: t.Tuple[int, int]) -> None:
    running_job(cluster)
    cluster.vm._state = state
    with pytest.raises(MigrationError, match="VM 'web1' is in the post-copy phase of its migration") as caught:
        cancel_request(tmp_path).cancel(check_mode=False)
    assert "cannot be cancelled any more" in caught.value.msg
    assert ("abortJob",) not in cluster.vm.calls


def test_a_job_that_completes_before_the_cancellation_is_reported(cluster: Cluster, tmp_path: Path) -> None:
    running_job(cluster)

    def too_late() -> None:
        cluster.move()
        raise libvirt_error(libvirt.VIR_ERR_OPERATION_INVALID, "Requested operation is not valid: no job is active on the domain")

    cluster.vm.on_abort = too_late
    with pytest.raises(MigrationError) as caught:
        cancel_request(tmp_path).cancel(check_mode=False)
    assert caught.value.msg == (
        "The migration of VM 'web1' completed before the cancellation took effect: the VM is no longer active on %s." % SOURCE_URI
    )
    assert caught.value.details["observed"] == {"source": None}


def test_a_cancelled_job_leaves_the_vm_running_on_the_source(cluster: Cluster, tmp_path: Path) -> None:
    running_job(cluster)

    def stop() -> None:
        cluster.vm.job = {"type": libvirt.VIR_DOMAIN_JOB_NONE}

    cluster.vm.on_abort = stop
    result = cancel_request(tmp_path).cancel(check_mode=False)
    assert (result["changed"], result["vm"], result["state"]) == (True, "web1", "running")
    assert event_names(result) == ["cancel_requested", "cancelled"]


def test_cancel_in_check_mode_aborts_nothing(cluster: Cluster, tmp_path: Path) -> None:
    running_job(cluster)
    result = cancel_request(tmp_path).cancel(check_mode=True)
    assert result["changed"] is True and ("abortJob",) not in cluster.vm.calls


def test_cancel_without_a_job_changes_nothing(cluster: Cluster, tmp_path: Path) -> None:
    result = cancel_request(tmp_path).cancel(check_mode=False)
    assert result["changed"] is False and result["msg"] == "VM 'web1' has no migration job running on %s." % SOURCE_URI


def test_cancel_refuses_a_job_that_is_not_an_outgoing_migration(cluster: Cluster, tmp_path: Path) -> None:
    cluster.vm.job = {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "operation": libvirt.VIR_DOMAIN_JOB_OPERATION_SAVE}
    with pytest.raises(MigrationError, match="runs a job that is not an outgoing migration"):
        cancel_request(tmp_path).cancel(check_mode=False)
    assert ("abortJob",) not in cluster.vm.calls


# -- a VM a lost run's schedule paused (its suspend record is under request.state_dir)

RUNNING = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED)
PAUSED_BY_USER = (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER)
SHUT_OFF = (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN)


def changes_to(dom: FakeDomain) -> t.List[str]:
    """The state-changing calls made on a fake domain, in order."""
    return [call[0] for call in dom.calls if call[0] in ("create", "suspend", "resume")]


@pytest.mark.parametrize("state, events", [(PAUSED_BY_USER, ["would_resume_after_lost_run"]), (RUNNING, [])], ids=["paused", "running"])
def test_check_mode_migrate_leaves_a_vm_paused_by_a_lost_run_and_its_record(
    cluster: Cluster, tmp_path: Path, state: t.Tuple[int, int], events: t.List[str]
) -> None:
    run = migrator(tmp_path)
    run.runner.records.add(VM_UUID, "web1")
    cluster.vm._state = state
    result = run.migrate(check_mode=True)
    assert result["changed"] is True and result["plan"]["kind"] == "live"
    # The check-mode plan carries no events: they are read from the run itself.
    assert event_names({"events": run.events}) == events
    assert changes_to(cluster.vm) == [] and cluster.vm.state() == list(state)
    assert run.runner.records.has(VM_UUID), "the record stays for the real run"
    assert not [call for call in cluster.vm.calls if call[0] == "migrateToURI3"]


@pytest.mark.parametrize(
    "check_mode, state, events, resumed, record_kept",
    [
        (True, PAUSED_BY_USER, ["would_resume_after_lost_run"], [], True),
        (True, RUNNING, [], [], True),
        (False, PAUSED_BY_USER, ["resumed_after_lost_run"], ["resume"], False),
        (False, RUNNING, [], [], False),
    ],
    ids=["check-paused", "check-running", "real-paused", "real-running"],
)
def test_cancel_without_a_job_resumes_a_vm_paused_by_a_lost_run_only_for_real(
    cluster: Cluster,
    tmp_path: Path,
    check_mode: bool,
    state: t.Tuple[int, int],
    events: t.List[str],
    resumed: t.List[str],
    record_kept: bool,
) -> None:
    run = cancel_request(tmp_path)
    run.runner.records.add(VM_UUID, "web1")
    cluster.vm._state = state
    result = run.cancel(check_mode=check_mode)
    assert event_names(result) == events
    assert result["changed"] is bool(events)
    assert [event.get("host") for event in result["events"]] == [SOURCE_URI] * len(events)
    assert changes_to(cluster.vm) == resumed
    assert run.runner.records.has(VM_UUID) is record_kept


# -- the VM is no longer on the source (a repeat run): it must be on exactly one other known host

UNREACHABLE_URI = "qemu+tls://hv9/system"


def place_copy(conn: FakeConnection, state: t.Tuple[int, int] = RUNNING, persistent: bool = True) -> FakeDomain:
    """The VM (same UUID) on another host."""
    copy = FakeDomain(VM_XML, state, persistent=persistent)
    conn.domains.append(copy)
    return copy


def moved_away_run(tmp_path: Path) -> vm_migration.VmMigration:
    """hv2 is the destination; hv3 and an unreachable host are the cluster's other hosts."""
    return migrator(tmp_path, elsewhere=[Candidate(uri=HV3_URI), Candidate(uri=UNREACHABLE_URI)])


@pytest.mark.parametrize("check_mode", [False, True])
@pytest.mark.parametrize(
    "on_hv2, on_hv3, hosts",
    [
        ((RUNNING, True), (SHUT_OFF, True), ["hv2 (active)", "hv3 (defined)"]),
        ((RUNNING, False), (PAUSED_BY_USER, True), ["hv2 (active)", "hv3 (active)"]),
        ((SHUT_OFF, True), (SHUT_OFF, True), ["hv2 (defined)", "hv3 (defined)"]),
    ],
    ids=["running-and-defined", "transient-and-paused", "defined-twice"],
)
def test_a_vm_gone_from_the_source_but_on_two_hosts_is_a_duplicate(
    cluster: Cluster,
    tmp_path: Path,
    on_hv2: t.Tuple[t.Tuple[int, int], bool],
    on_hv3: t.Tuple[t.Tuple[int, int], bool],
    hosts: t.List[str],
    check_mode: bool,
) -> None:
    cluster.leave_source()
    place_copy(cluster.destination, *on_hv2)
    place_copy(cluster.add_host(HV3_URI, "hv3", HV3_UUID), *on_hv3)
    with pytest.raises(DuplicateVmError) as caught:
        moved_away_run(tmp_path).migrate(check_mode=check_mode)
    assert caught.value.msg == "VM 'web1' is not on the source %s but is on several hosts: %s. Remove the stale copy first." % (
        SOURCE_URI,
        ", ".join(hosts),
    )
    assert caught.value.details["hosts"] == hosts


@pytest.mark.parametrize(
    "where, uri, state, persistent, vm_state",
    [
        ("hv2", DEST_URI, RUNNING, True, "running"),
        ("hv2", DEST_URI, SHUT_OFF, True, "shut off"),  # after an offline move
        ("hv3", HV3_URI, RUNNING, True, "running"),  # where a lost run's job took it
        ("hv3", HV3_URI, PAUSED_BY_USER, False, "paused"),
    ],
)
def test_a_vm_gone_from_the_source_and_on_exactly_one_host_has_moved_already(
    cluster: Cluster, tmp_path: Path, where: str, uri: str, state: t.Tuple[int, int], persistent: bool, vm_state: str
) -> None:
    cluster.leave_source()
    hosts = {"hv2": cluster.destination, "hv3": cluster.add_host(HV3_URI, "hv3", HV3_UUID)}
    copy = place_copy(hosts[where], state, persistent)
    result = moved_away_run(tmp_path).migrate(check_mode=False)
    assert (result["changed"], result["vm_state"]) == (False, vm_state)
    assert result["destination"] == {"hostname": where, "uri": uri}
    assert result["msg"] == "VM 'web1' is already on %s (%s)." % (where, uri)
    assert changes_to(copy) == []


def test_a_vm_on_no_known_host_is_not_found(cluster: Cluster, tmp_path: Path) -> None:
    cluster.leave_source()
    cluster.add_host(HV3_URI, "hv3", HV3_UUID)
    with pytest.raises(VmNotFoundError) as caught:
        moved_away_run(tmp_path).migrate(check_mode=False)
    assert caught.value.msg == "VM 'web1' does not exist on the source %s, nor on any destination candidate." % SOURCE_URI


# -- a named destination that is also among the candidates


def vm_migrate_params(tmp_path: Path, **changes: t.Any) -> t.Dict[str, t.Any]:
    """vm_migrate's parameters naming hv2 as the destination."""
    values: t.Dict[str, t.Any] = {
        "name": "web1",
        "uri": SOURCE_URI,
        "state": "migrated",
        "destination_uri": DEST_URI,
        "wait_sleep": 0.01,
        "state_dir": str(tmp_path / "state"),
    }
    values.update(changes)
    return values


@pytest.mark.parametrize("check_mode", [False, True])
def test_a_named_destination_keeps_what_the_candidates_say_of_it(cluster: Cluster, tmp_path: Path, check_mode: bool) -> None:
    cluster.add_host(HV3_URI, "hv3", HV3_UUID)
    hv2 = {"uri": DEST_URI, "name": "hv2-prod", "maintenance": True, "memory_reserved_mib": 2048}
    req = rq.migrate_request(vm_migrate_params(tmp_path, candidates=[HV3_URI, hv2]))
    assert req.candidates == [Candidate(uri=DEST_URI, name="hv2-prod", maintenance=True, memory_reserved_mib=2048)]
    assert req.elsewhere == [Candidate(uri=HV3_URI)]
    with pytest.raises(MigrationError, match="in maintenance") as caught:
        vm_migration.VmMigration(req).migrate(check_mode=check_mode)
    assert caught.value.msg == "no host can take VM 'web1': hv2-prod is in maintenance"
    assert caught.value.details["rejected_hosts"] == {"hv2-prod": ["is in maintenance"]}
    assert not [call for call in cluster.vm.calls if call[0] == "migrateToURI3"]
    assert cluster.vm in cluster.source.domains


# -- a copy on another host the task knows of (request.elsewhere) blocks the move too


@pytest.mark.parametrize("check_mode", [False, True])
def test_a_copy_on_another_candidate_blocks_a_move_to_the_named_destination(cluster: Cluster, tmp_path: Path, check_mode: bool) -> None:
    place_copy(cluster.add_host(HV3_URI, "hv3", HV3_UUID), SHUT_OFF)
    req = rq.migrate_request(vm_migrate_params(tmp_path, candidates=[DEST_URI, HV3_URI]))
    with pytest.raises(DuplicateVmError) as caught:
        vm_migration.VmMigration(req).migrate(check_mode=check_mode)
    assert caught.value.msg.startswith("VM 'web1' (UUID %s) is defined on hv1 and also on hv3: refusing to move it" % VM_UUID)
    assert caught.value.details["hosts"] == ["hv1", "hv3"]
    assert not [call for call in cluster.vm.calls if call[0] == "migrateToURI3"]


def test_the_source_listed_among_the_candidates_is_no_duplicate(cluster: Cluster, tmp_path: Path) -> None:
    cluster.hosts[SOURCE_ALIAS_URI] = cluster.source  # hv1 under another URI: same host UUID, same VM
    req = rq.migrate_request(vm_migrate_params(tmp_path, candidates=[DEST_URI, SOURCE_ALIAS_URI, UNREACHABLE_URI]))
    result = vm_migration.VmMigration(req).migrate(check_mode=False)
    assert (result["changed"], result["destination"], result["vm_state"]) == (True, {"hostname": "hv2", "uri": DEST_URI}, "running")
    assert [call[1] for call in cluster.vm.calls if call[0] == "migrateToURI3"] == [DEST_URI]


# -- verification: a VM that ran before the move must run after it


@pytest.mark.parametrize(
    "before, after, problem",
    [
        (RUNNING, (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION), "it was running and is paused (migration) on the destination"),
        (PAUSED_BY_USER, PAUSED_BY_USER, None),
    ],
    ids=["was-running", "was-paused"],
)
def test_the_state_before_the_move_is_the_state_after_it(
    cluster: Cluster, tmp_path: Path, before: t.Tuple[int, int], after: t.Tuple[int, int], problem: t.Optional[str]
) -> None:
    cluster.vm._state = before

    def arrive_paused() -> None:
        cluster.leave_source()
        cluster.arrive()._state = after

    cluster.vm.on_migrate = arrive_paused
    paused_there = {"state": "paused", "reason": "migration" if problem else "user", "active": True, "persistent": True}
    if problem is None:
        result = migrator(tmp_path).migrate(check_mode=False)
        assert (result["changed"], result["vm_state"]) == (True, "paused")
        assert result["observed"] == {"source": None, "destination": paused_there}
        return
    with pytest.raises(MigrationError) as caught:
        migrator(tmp_path).migrate(check_mode=False)
    assert caught.value.msg == "libvirt reported the migration of VM 'web1' to %s complete, but %s." % (DEST_URI, problem)
    assert caught.value.details["changed"] is True
    assert caught.value.details["observed"] == {"source": None, "destination": paused_there}
    assert event_names(caught.value.details)[-1] == "verification_failed"


# -- the timeout: its action, an abort when the action fails, and giving up on a job that never ends


class HangingJob:
    """A migration job that runs until something ends it, then does ``outcome`` (by default: it was aborted)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.ended = threading.Event()
        self.outcome: t.Callable[[], None] = self.aborted
        cluster.vm.on_migrate = self.run

    def run(self) -> None:
        running_job(self.cluster)
        self.ended.wait(10)
        self.cluster.vm.job = {"type": libvirt.VIR_DOMAIN_JOB_NONE}
        self.outcome()

    def end(self, outcome: t.Callable[[], None]) -> None:
        self.outcome = outcome
        self.ended.set()

    def aborted(self) -> None:
        raise libvirt_error(libvirt.VIR_ERR_OPERATION_ABORTED, "operation aborted: migration out job: canceled by client")


@pytest.fixture
def hanging_job(cluster: Cluster) -> t.Iterator[HangingJob]:
    job = HangingJob(cluster)
    yield job
    job.ended.set()  # a job the run gave up on ends with the test


def timed_out(tmp_path: Path, **changes: t.Any) -> vm_migration.VmMigration:
    """A run with a 1 s timeout whose clock already reads 1 s: the timeout is due at the first poll."""
    run = migrator(tmp_path, timeout=1, **changes)
    run.runner.clock = runner.Clock(elapsed=1.0)
    return run


POST_COPY_REFUSED = libvirt_error(
    libvirt.VIR_ERR_INTERNAL_ERROR,
    "internal error: unable to execute QEMU command 'migrate-start-postcopy': Postcopy must be started after migration has been started",
)


def schedule_calls(dom: MigratingDomain) -> t.List[str]:
    return [call[0] for call in dom.calls if call[0] in ("migrateStartPostCopy", "abortJob", "suspend")]


def test_a_failed_post_copy_switch_at_the_timeout_aborts_the_job(cluster: Cluster, tmp_path: Path, hanging_job: HangingJob) -> None:
    cluster.vm.on_abort = lambda: hanging_job.end(hanging_job.aborted)

    def refuse() -> None:
        raise POST_COPY_REFUSED

    cluster.vm.on_post_copy = refuse
    started = time.monotonic()
    with pytest.raises(OperationCancelledError) as caught:
        timed_out(tmp_path, timeout_action="post_copy").migrate(check_mode=False)
    assert time.monotonic() - started < 2
    applied = caught.value.details["schedule_applied"]
    assert [(step["action"], step["reason"]) for step in applied] == [
        ("post_copy", "timeout after 1 s"),
        ("abort", "timeout after 1 s, and post_copy failed"),
    ]
    assert "Postcopy must be started after migration has been started" in applied[0]["error"] and "error" not in applied[1]
    assert schedule_calls(cluster.vm) == ["migrateStartPostCopy", "abortJob"]
    assert caught.value.msg.endswith("(aborted: timeout after 1 s, and post_copy failed)")
    assert caught.value.details["observed"] == {"source": RUNNING_ON_SOURCE, "destination": None}


def test_a_post_copy_switch_at_the_timeout_that_works_aborts_nothing(cluster: Cluster, tmp_path: Path, hanging_job: HangingJob) -> None:
    cluster.vm.on_post_copy = lambda: hanging_job.end(cluster.move)
    result = timed_out(tmp_path, timeout_action="post_copy").migrate(check_mode=False)
    assert (result["changed"], result["vm_state"]) == (True, "running")
    assert [(step["action"], step.get("error")) for step in result["schedule_applied"]] == [("post_copy", None)]
    assert schedule_calls(cluster.vm) == ["migrateStartPostCopy"]


@pytest.mark.parametrize("action", ["abort", "post_copy"])
def test_a_job_still_running_long_after_its_timeout_is_given_up(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hanging_job: HangingJob, action: str
) -> None:
    # The job heeds neither abortJob nor migrateStartPostCopy: it just goes on.
    monkeypatch.setattr(runner, "CANCEL_WAIT_S", 0.05)
    started = time.monotonic()
    with pytest.raises(MigrationError) as caught:
        timed_out(tmp_path, timeout_action=action).migrate(check_mode=False)
    assert time.monotonic() - started < 2
    assert caught.type is MigrationError, "a plain failure, not a cancellation or another subclass"
    assert caught.value.msg.startswith("The migration of VM 'web1' still runs ")
    assert "after its 1 s timeout, although it was told to %s; libvirt's job goes on without this run." % action in caught.value.msg
    assert [step["action"] for step in caught.value.details["schedule_applied"]] == [action]
    names = event_names(caught.value.details)
    assert names.count("timeout") == 1 and names[-1] == "gave_up"
    assert caught.value.details["events"][-1]["after_s"] >= 1.0 + 2 * 0.05
    assert hanging_job.cluster.vm.job["type"] != libvirt.VIR_DOMAIN_JOB_NONE, "the job still runs"


# -- the schedule's suspend step


@pytest.mark.parametrize(
    "state, suspended, note",
    [(RUNNING, True, None), (PAUSED_BY_USER, False, "already paused; left as it is")],
    ids=["running", "paused-before"],
)
def test_a_suspend_step_pauses_only_a_running_vm(tmp_path: Path, state: t.Tuple[int, int], suspended: bool, note: t.Optional[str]) -> None:
    # A VM its owner paused is no VM the schedule paused: no record, and nothing resumes it later.
    run = migrator(tmp_path)
    run.runner._uuid = VM_UUID
    dom = FakeDomain(VM_XML, state)
    run.runner._apply(dom, Step(3, "suspend"), {"memory_iteration": 7}, 3)
    assert changes_to(dom) == (["suspend"] if suspended else [])
    assert run.runner.records.has(VM_UUID) is suspended
    assert run.runner._suspended is suspended
    (record,) = run.runner.applied
    assert (record["action"], record["memory_iteration"], record.get("note")) == ("suspend", 7, note)
    assert "error" not in record


# -- resuming on the destination the VM the schedule paused


def test_a_vm_that_moved_but_cannot_be_resumed_there_is_a_changed_failure(cluster: Cluster, tmp_path: Path) -> None:
    run = migrator(tmp_path)
    run.runner.records.add(VM_UUID, "web1")  # an earlier, lost run paused it, and its job goes on
    cluster.vm._state = PAUSED_BY_USER
    arrived: t.List[FakeDomain] = []

    def move_paused() -> None:
        cluster.leave_source()
        there = cluster.arrive(libvirt.VIR_DOMAIN_PAUSED)
        there.errors["resume"] = libvirt_error(
            libvirt.VIR_ERR_INTERNAL_ERROR, "internal error: unable to execute QEMU command 'cont': Failed to get \"write\" lock"
        )
        arrived.append(there)

    job_ending_after(cluster, 3, move_paused)
    with pytest.raises(MigrationError) as caught:
        run.migrate(check_mode=False)
    assert 'Failed to get "write" lock' in caught.value.msg
    assert caught.value.details["libvirt_error_code"] == libvirt.VIR_ERR_INTERNAL_ERROR
    assert (caught.value.details["changed"], caught.value.details["moved_to"]) == (True, DEST_URI)
    assert changes_to(arrived[0]) == ["resume"]
    assert run.runner.records.has(VM_UUID), "the record stays: the next run resumes the VM"


def test_a_destination_unreachable_for_the_resume_still_reports_the_move(cluster: Cluster, tmp_path: Path) -> None:
    run = migrator(tmp_path)
    run.runner.records.add(VM_UUID, "web1")
    run.runner._suspended = True
    with pytest.raises(HostUnreachableError) as caught:
        run.runner._resume_on(HV3_URI, VM_UUID)  # hv3 cannot be reached
    assert (caught.value.details["changed"], caught.value.details["moved_to"]) == (True, HV3_URI)
    assert run.runner.records.has(VM_UUID) and run.runner._suspended


# -- a planned move, as an evacuation hands it to the job runner


def planned_move(**changes: t.Any) -> Move:
    values: t.Dict[str, t.Any] = {
        "vm": "web1",
        "uuid": VM_UUID,
        "priority": "medium",
        "memory_mib": 1024,
        "vcpus": 1,
        "source": "hv1",
        "source_uri": SOURCE_URI,
        "destination": "hv2",
        "destination_uri": DEST_URI,
        "kind": "live",
        "policy": base_policy(None),
        "state": "running",
        "timeout_s": 120,
    }
    values.update(changes)
    return Move(**values)


def job_runner(tmp_path: Path, cluster: Cluster) -> runner.JobRunner:
    return runner.JobRunner(RunOptions(poll_interval=0.01, state_dir=str(tmp_path / "state")), cluster.connect, "web1")


def test_a_planned_move_is_carried_out_and_verified(cluster: Cluster, tmp_path: Path) -> None:
    run = job_runner(tmp_path, cluster)
    outcome = run.carry_out(planned_move())
    assert outcome["outcome"] == "migrated" and outcome["vm_state"] == "running"
    assert outcome["observed"] == {"source": None, "destination": RUNNING_ON_DESTINATION}
    assert [event["event"] for event in run.events] == ["started", "max_downtime", "completed", "verified"]
    assert set(run.timings) == {"start", "migrate", "verify"}


def test_a_planned_move_rechecks_the_destinations_memory(cluster: Cluster, tmp_path: Path) -> None:
    # Since the plan, the destination's free memory went down to 512 MiB: the 1 GiB VM stays where it is.
    cluster.destination.memory_stats = {"total": 4 << 20, "free": 512 << 10, "buffers": 0, "cached": 0}
    with pytest.raises(MigrationError, match="hv2 has only 512 MiB free now, and VM 'web1' needs 1024 MiB"):
        job_runner(tmp_path, cluster).carry_out(planned_move())
    assert not [call for call in cluster.vm.calls if call[0] == "migrateToURI3"]
    assert cluster.vm in cluster.source.domains and not cluster.destination.domains


def test_an_offline_move_needs_no_free_memory(cluster: Cluster, tmp_path: Path) -> None:
    cluster.vm._state = (libvirt.VIR_DOMAIN_SHUTOFF, 1)  # pylint: disable=protected-access
    cluster.destination.memory_stats = {"total": 4 << 20, "free": 0, "buffers": 0, "cached": 0}

    def offline_move() -> None:
        cluster.leave_source()
        cluster.arrive(state=libvirt.VIR_DOMAIN_SHUTOFF)

    cluster.vm.on_migrate = offline_move
    outcome = job_runner(tmp_path, cluster).carry_out(planned_move(kind="offline", state="shut off"))
    assert outcome["outcome"] == "migrated" and outcome["vm_state"] == "shut off"


def test_a_planned_move_finds_the_vm_arrived_meanwhile(cluster: Cluster, tmp_path: Path) -> None:
    cluster.move()  # a lost earlier run's job completed after this run read the source
    outcome = job_runner(tmp_path, cluster).carry_out(planned_move())
    assert outcome == {"outcome": "already there", "vm_state": "running", "changed": False}


def test_a_planned_move_refuses_a_stale_copy_on_the_destination(cluster: Cluster, tmp_path: Path) -> None:
    cluster.arrive(state=libvirt.VIR_DOMAIN_SHUTOFF)  # a shut-off definition of the same UUID appeared on hv2
    with pytest.raises(MigrationError, match="has a definition of the same UUID"):
        job_runner(tmp_path, cluster).carry_out(planned_move())
    assert not [call for call in cluster.vm.calls if call[0] == "migrateToURI3"]


def test_a_planned_move_that_left_for_nowhere_is_a_failure(cluster: Cluster, tmp_path: Path) -> None:
    cluster.leave_source()
    with pytest.raises(MigrationError, match="left hv1 after the evacuation was planned, and hv2 does not have it"):
        job_runner(tmp_path, cluster).carry_out(planned_move())


def test_a_planned_move_adopts_a_job_a_lost_run_left(cluster: Cluster, tmp_path: Path) -> None:
    running_job(cluster)

    def finish() -> None:
        # As libvirt does: the VM is on the destination before the source's job ends.
        cluster.move()
        cluster.vm.job = {"type": libvirt.VIR_DOMAIN_JOB_NONE}

    timer = after_the_job_is_seen(cluster, 0.05, finish)
    outcome = job_runner(tmp_path, cluster).carry_out(planned_move())
    timer.join()
    assert outcome["adopted"] is True and outcome["outcome"] == "migrated"
    assert outcome["observed"]["destination"] == RUNNING_ON_DESTINATION
    assert not [call for call in cluster.vm.calls if call[0] == "migrateToURI3"]


# -- SR-IOV failover pairs: a bond's VF is unplugged around the move; QEMU's wait for a teaming primary is bounded

BOND_PAIR = (
    "<interface type='network'><mac address='52:54:00:aa:00:01'/><source network='lab'/><model type='virtio'/>"
    "<alias name='ua-fo-backup'/></interface>"
    "<interface type='network'><mac address='52:54:00:aa:00:01'/><source network='vfnet'/><actual type='hostdev'/>"
    "<alias name='ua-fo-vf'/></interface>"
)


def with_devices(cluster: Cluster, devices: str) -> None:
    cluster.vm.xml = VM_XML.replace("<devices/>", "<devices>%s</devices>" % devices)


def device_calls(dom: FakeDomain) -> t.List[t.Tuple[str, int]]:
    return [(call[0], call[2]) for call in dom.calls if call[0] in ("detachDeviceFlags", "attachDeviceFlags")]


def test_a_bond_vf_is_unplugged_before_the_move_and_plugged_in_on_the_destination(cluster: Cluster, tmp_path: Path) -> None:
    with_devices(cluster, BOND_PAIR)
    run = job_runner(tmp_path, cluster)
    outcome = run.carry_out(planned_move(bond_vfs=("fo",)))
    assert outcome["outcome"] == "migrated"
    assert device_calls(cluster.vm) == [("detachDeviceFlags", libvirt.VIR_DOMAIN_AFFECT_LIVE)]
    assert "ua-fo-vf" not in cluster.vm.xml
    there = cluster.destination.domains[0]
    assert device_calls(there) == [("attachDeviceFlags", libvirt.VIR_DOMAIN_AFFECT_LIVE)]
    plugged = [call[1] for call in there.calls if call[0] == "attachDeviceFlags"][0]
    assert "ua-fo-vf" in plugged and "vfnet" in plugged and "<actual" not in plugged
    names = [event["event"] for event in run.events]
    assert names.index("vf_unplugged") < names.index("started") < names.index("verified") < names.index("vf_plugged")


def test_a_failed_move_plugs_the_bond_vf_in_again_on_the_source(cluster: Cluster, tmp_path: Path) -> None:
    with_devices(cluster, BOND_PAIR)

    def refused() -> None:
        raise libvirt_error(libvirt.VIR_ERR_OPERATION_FAILED, "operation failed: migration failed")

    cluster.vm.on_migrate = refused
    run = job_runner(tmp_path, cluster)
    with pytest.raises(MigrationError, match="migration failed"):
        run.carry_out(planned_move(bond_vfs=("fo",)))
    assert [name for name, _flags in device_calls(cluster.vm)] == ["detachDeviceFlags", "attachDeviceFlags"]
    assert "ua-fo-vf" in cluster.vm.xml
    plugged = [event for event in run.events if event["event"] == "vf_plugged"]
    assert plugged and plugged[0]["on"] == "source"


def test_a_guest_that_keeps_its_bond_vf_is_not_moved(cluster: Cluster, tmp_path: Path) -> None:
    with_devices(cluster, BOND_PAIR)
    cluster.vm.keep_devices = True  # type: ignore[attr-defined]
    run = runner.JobRunner(RunOptions(poll_interval=0.01, state_dir=str(tmp_path / "state"), unplug_timeout=0.2), cluster.connect, "web1")
    with pytest.raises(MigrationError, match="did not release the VF of failover pair 'fo' within 0.2 s"):
        run.carry_out(planned_move(bond_vfs=("fo",)))
    assert not [call for call in cluster.vm.calls if call[0] == "migrateToURI3"]
    assert cluster.vm in cluster.source.domains and not cluster.destination.domains


def test_a_vf_that_cannot_be_plugged_in_on_the_destination_is_a_warning(cluster: Cluster, tmp_path: Path) -> None:
    with_devices(cluster, BOND_PAIR)

    def move() -> None:
        cluster.move()
        cluster.destination.domains[0].errors["attachDeviceFlags"] = libvirt_error(
            libvirt.VIR_ERR_INTERNAL_ERROR, "internal error: network 'vfnet' requires exclusive access to interfaces, but none are available"
        )

    cluster.vm.on_migrate = move
    outcome = job_runner(tmp_path, cluster).carry_out(planned_move(bond_vfs=("fo",)))
    assert outcome["outcome"] == "migrated"
    assert "without the VF of failover pair(s) fo" in outcome["warnings"][0]


class UnplugWait(HangingJob):
    """A live migration of a VM with a teaming primary: QEMU's wait-unplug phase shows a job without data counters."""

    def __init__(self, cluster: Cluster, released_after: t.Optional[int] = None) -> None:
        super().__init__(cluster)
        self.released_after = released_after

    def run(self) -> None:
        self.cluster.vm.job = {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "operation": libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT, "time_elapsed": 10}
        if self.released_after is not None:
            time.sleep(self.released_after * 0.01)
            self.cluster.vm.job = dict(self.cluster.vm.job, data_total=64 * MIB, data_processed=MIB, memory_iteration=1)
            time.sleep(0.1)
            self.cluster.vm.job = {"type": libvirt.VIR_DOMAIN_JOB_NONE}
            self.cluster.move()
            return
        self.ended.wait(10)
        self.cluster.vm.job = {"type": libvirt.VIR_DOMAIN_JOB_NONE}
        self.outcome()


def test_a_guest_that_never_releases_its_teaming_primary_is_aborted_and_stays(cluster: Cluster, tmp_path: Path) -> None:
    with_devices(cluster, TEAMING_PAIR)
    job = UnplugWait(cluster)
    cluster.vm.on_abort = lambda: job.end(job.aborted)
    run = runner.JobRunner(RunOptions(poll_interval=0.01, state_dir=str(tmp_path / "state"), unplug_timeout=0.2), cluster.connect, "web1")
    try:
        with pytest.raises(OperationCancelledError, match=r"did not release its failover primary \(ua-fo-vf\) within 0.2 s") as failure:
            run.carry_out(planned_move(failover_primaries=("ua-fo-vf",)))
    finally:
        job.ended.set()
    assert schedule_calls(cluster.vm) == ["abortJob"], "an abort only: a paused guest could not release the device"
    assert "unplug_timeout" in event_names(failure.value.details)
    assert failure.value.details["observed"]["source"]["active"]


def test_a_teaming_job_that_ignores_its_abort_is_given_up_naming_the_unplug(cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "CANCEL_WAIT_S", 0.05)
    with_devices(cluster, TEAMING_PAIR)
    job = UnplugWait(cluster)
    run = runner.JobRunner(RunOptions(poll_interval=0.01, state_dir=str(tmp_path / "state"), unplug_timeout=0.2), cluster.connect, "web1")
    try:
        with pytest.raises(MigrationError) as failure:
            run.carry_out(planned_move(failover_primaries=("ua-fo-vf",)))
    finally:
        job.ended.set()
    assert failure.value.msg.startswith("The migration of VM 'web1' still runs 0 s after its abort at "), failure.value.msg
    assert "the guest kept its failover primary past unplug_timeout" in failure.value.msg and "timeout_action" not in failure.value.msg
    names = event_names(failure.value.details)
    assert names.count("unplug_timeout") == 1 and "timeout" not in names and names[-1] == "gave_up"


def test_a_released_teaming_primary_lets_the_move_go_on(cluster: Cluster, tmp_path: Path) -> None:
    with_devices(cluster, TEAMING_PAIR)
    UnplugWait(cluster, released_after=5)
    run = runner.JobRunner(RunOptions(poll_interval=0.01, state_dir=str(tmp_path / "state"), unplug_timeout=5), cluster.connect, "web1")
    outcome = run.carry_out(planned_move(failover_primaries=("ua-fo-vf",)))
    assert outcome["outcome"] == "migrated"
    released = [event for event in run.events if event["event"] == "primary_released"]
    assert released and released[0]["devices"] == ["ua-fo-vf"] and released[0]["wait_unplug_s"] >= 0
    assert "abortJob" not in schedule_calls(cluster.vm)


def test_a_teaming_move_that_ends_between_two_polls_reports_an_upper_bound(cluster: Cluster, tmp_path: Path) -> None:
    with_devices(cluster, TEAMING_PAIR)
    UnplugWait(cluster, released_after=1)
    run = runner.JobRunner(RunOptions(poll_interval=5, state_dir=str(tmp_path / "state"), unplug_timeout=30), cluster.connect, "web1")
    outcome = run.carry_out(planned_move(failover_primaries=("ua-fo-vf",)))
    assert outcome["outcome"] == "migrated"
    released = [event for event in run.events if event["event"] == "primary_released"]
    assert len(released) == 1 and "wait_unplug_s" not in released[0], released
    assert 0 <= released[0]["within_s"] <= released[0]["at_s"], released


def test_a_running_vm_with_a_host_device_is_refused_up_front(cluster: Cluster, tmp_path: Path) -> None:
    with_devices(cluster, USB_HOSTDEV)
    with pytest.raises(PolicyError, match="uses assigned host device\\(s\\) that cannot migrate: USB") as failure:
        migrator(tmp_path).migrate(check_mode=True)
    assert failure.value.details["devices"]
    assert not [call for call in cluster.vm.calls if call[0] == "migrateToURI3"]


def test_a_non_live_move_with_a_teaming_primary_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    with_devices(cluster, TEAMING_PAIR)
    with pytest.raises(PolicyError, match="non-live move pauses the vCPUs"):
        migrator(tmp_path, live=False).migrate(check_mode=False)
    assert not [call for call in cluster.vm.calls if call[0] == "migrateToURI3"]


VF_ADDRESS = "0000:3b:02.1"  # the VF of TEAMING_PAIR


def pci_device(name: str, virtual_function: bool) -> FakeObject:
    """A PCI node device: a VF (phys_function capability) or a device of its own (here a PF with VFs)."""
    kind = (
        "<capability type='phys_function'><address domain='0x0000' bus='0x3b' slot='0x00' function='0x0'/></capability>"
        if virtual_function
        else "<capability type='virt_functions' maxCount='7'/>"
    )
    return FakeObject("<device><name>%s</name><capability type='pci'><domain>0</domain><bus>59</bus>%s</capability></device>" % (name, kind))


def with_free_vf(conn: FakeConnection) -> None:
    conn.networks.append(FakeObject("<network><name>lab</name></network>"))
    conn.node_devices.append(pci_device("pci_0000_3b_02_1", virtual_function=True))


def test_a_teaming_pair_migrates_live_and_the_plan_names_it(cluster: Cluster, tmp_path: Path) -> None:
    with_devices(cluster, TEAMING_PAIR)
    with_free_vf(cluster.destination)
    result = migrator(tmp_path).migrate(check_mode=True)
    assert result["plan"]["failover"] == {"bond_vfs": [], "primaries": ["ua-fo-vf"]}


# -- a failover pair with a fixed VF address (vf_address) moves only to a host with that address as a free VF
#
# The lab cannot show the accepted case: its hosts are namespaces of one machine sharing its PCI
# devices, none of which is an SR-IOV VF. So each case is shown here, with node devices of fake hosts.

BOND_PAIR_AT_ADDRESS = (
    "<interface type='network'><mac address='52:54:00:aa:00:01'/><source network='lab'/><model type='virtio'/>"
    "<alias name='ua-fo-backup'/></interface>"
    "<interface type='hostdev' managed='yes'><mac address='52:54:00:aa:00:01'/>"
    "<source><address type='pci' domain='0x0000' bus='0x3b' slot='0x02' function='0x1'/></source><alias name='ua-fo-vf'/></interface>"
)
OTHER_VM = (
    "<domain type='kvm'><name>db9</name><uuid>9f0e4c1a-2b3d-4e5f-8a7b-6c5d4e3f2a10</uuid><devices>"
    "<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x3b' slot='0x02' function='0x1'/></source>"
    "</hostdev></devices></domain>"
)


def vf_missing(conn: FakeConnection) -> None:
    conn.networks.append(FakeObject("<network><name>lab</name></network>"))


def vf_not_a_vf(conn: FakeConnection) -> None:
    vf_missing(conn)
    conn.node_devices.append(pci_device("pci_0000_3b_02_1", virtual_function=False))


def vf_in_use(conn: FakeConnection) -> None:
    with_free_vf(conn)
    conn.domains.append(FakeDomain(OTHER_VM))


VF_ADDRESS_REFUSALS = [
    (vf_missing, "hv2 has no PCI device 0000:3b:02.1 for the VM's fixed-address SR-IOV VF (vf_address)"),
    (vf_not_a_vf, "hv2 has PCI device 0000:3b:02.1, but it is not an SR-IOV virtual function (no phys_function capability)"),
    (vf_in_use, "hv2 has the VF 0000:3b:02.1 (the VM's vf_address) assigned to the active VM 'db9'"),
]


@pytest.mark.parametrize("running", [True, False], ids=["live", "offline"])
@pytest.mark.parametrize("destination, reason", VF_ADDRESS_REFUSALS, ids=["missing", "not-a-vf", "in-use"])
def test_a_named_destination_without_the_pairs_vf_address_as_a_free_vf_is_refused(
    cluster: Cluster, tmp_path: Path, destination: t.Callable[[FakeConnection], None], reason: str, running: bool
) -> None:
    """A running VM (QEMU plugs the VF in again there) and a shut-off one (it will start there) alike."""
    with_devices(cluster, TEAMING_PAIR)
    if not running:
        cluster.vm._state = SHUT_OFF
    destination(cluster.destination)
    req = rq.migrate_request(vm_migrate_params(tmp_path, candidates=[DEST_URI]))
    with pytest.raises(MigrationError) as caught:
        vm_migration.VmMigration(req).migrate(check_mode=False)
    assert caught.value.msg.startswith("no host can take VM 'web1': " + reason), caught.value.msg
    assert VF_ADDRESS in caught.value.details["rejected_hosts"]["hv2"][0]
    assert not [call for call in cluster.vm.calls if call[0] == "migrateToURI3"]
    assert cluster.vm in cluster.source.domains and "web1" not in [dom.name() for dom in cluster.destination.domains]


@pytest.mark.parametrize("running", [True, False], ids=["live", "offline"])
def test_a_free_vf_at_the_pairs_vf_address_takes_the_vm(cluster: Cluster, tmp_path: Path, running: bool) -> None:
    """The VF exists there, is a VF, and only a shut-off domain there names it: the move goes ahead."""
    with_devices(cluster, TEAMING_PAIR if running else BOND_PAIR_AT_ADDRESS)
    if not running:
        cluster.vm._state = SHUT_OFF
    with_free_vf(cluster.destination)
    cluster.destination.domains.append(FakeDomain(OTHER_VM, SHUT_OFF))
    req = rq.migrate_request(vm_migrate_params(tmp_path, candidates=[DEST_URI]))
    result = vm_migration.VmMigration(req).migrate(check_mode=True)
    assert result["destination"] == {"hostname": "hv2", "uri": DEST_URI}
    assert result["plan"]["kind"] == ("live" if running else "offline")


def test_the_probe_reads_no_node_devices_when_no_vm_has_a_vf_address(cluster: Cluster) -> None:
    """Reading a candidate stays cheap: no node device look-ups and no domain XML unless a VM needs an address."""
    with_free_vf(cluster.destination)
    cluster.destination.domains.append(FakeDomain(OTHER_VM))
    looked_up: t.List[str] = []

    def xml_desc(flags: int = 0) -> str:
        looked_up.append("XMLDesc")
        return OTHER_VM

    cluster.destination.nodeDeviceLookupByName = looked_up.append  # type: ignore[method-assign,assignment]
    cluster.destination.domains[0].XMLDesc = xml_desc  # type: ignore[method-assign]
    host = probe.probe_host(cluster.destination, Candidate(uri=DEST_URI), [placement.VmNeeds(name="web1", memory_mib=1)], {}, 0)
    assert looked_up == [] and host.pci_devices == {}


# -- the guest's own hooks around a move


def hooks_answer(monkeypatch: pytest.MonkeyPatch, outcomes: t.Mapping[str, str]) -> t.List[str]:
    """guest_agent.run_guest_hooks answers ``outcomes[event]``; returns the events run, in order."""
    ran: t.List[str] = []

    def fake(dom: t.Any, event: str, deadline_s: float) -> t.Dict[str, t.Any]:
        ran.append(event)
        return {"event": event, "outcome": outcomes[event], "message": "hook said %s" % outcomes[event], "duration_s": 0.1}

    monkeypatch.setattr(runner.guest_agent, "run_guest_hooks", fake)
    return ran


def test_guest_hooks_run_before_on_the_source_and_after_on_the_destination(cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran = hooks_answer(monkeypatch, {"before_migration": "ok", "after_migration": "ok"})
    run = job_runner(tmp_path, cluster)
    outcome = run.carry_out(planned_move(guest_hooks=True))
    assert outcome["outcome"] == "migrated" and "warnings" not in outcome
    assert ran == ["before_migration", "after_migration"]
    hooks = [event for event in run.events if event["event"] == "guest_hooks"]
    assert [(event["hook_event"], event["host"]) for event in hooks] == [("before_migration", SOURCE_URI), ("after_migration", DEST_URI)]


def test_a_failed_before_hook_with_abort_keeps_the_vm_on_its_source(cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hooks_answer(monkeypatch, {"before_migration": "failed", "after_migration": "ok"})
    options = RunOptions(poll_interval=0.01, state_dir=str(tmp_path / "state"), guest_hook_failure="abort")
    with pytest.raises(MigrationError, match="guest_hook_failure=abort: the VM was not moved and runs on hv1"):
        runner.JobRunner(options, cluster.connect, "web1").carry_out(planned_move(guest_hooks=True))
    assert not [call for call in cluster.vm.calls if call[0] == "migrateToURI3"]


@pytest.mark.parametrize("before", ["failed", "no_agent", "no_runner", "timed_out"])
def test_a_before_hook_problem_with_warn_moves_the_vm_and_says_so(cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, before: str) -> None:
    hooks_answer(monkeypatch, {"before_migration": before, "after_migration": "failed"})
    outcome = job_runner(tmp_path, cluster).carry_out(planned_move(guest_hooks=True))
    assert outcome["outcome"] == "migrated"
    assert len(outcome["warnings"]) == 2 and before in outcome["warnings"][0] and "after_migration" in outcome["warnings"][1]


def test_no_hooks_for_a_paused_vm_or_when_not_asked(cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran = hooks_answer(monkeypatch, {"before_migration": "ok", "after_migration": "ok"})
    job_runner(tmp_path, cluster).carry_out(planned_move())
    assert ran == []


def test_a_hibernated_vm_is_not_moved_offline(cluster: Cluster, tmp_path: Path) -> None:
    cluster.vm._state = (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SAVED)  # pylint: disable=protected-access
    cluster.vm.saved_image = True  # type: ignore[attr-defined]
    with pytest.raises(PolicyError, match="is hibernated: its memory is saved in a managed save image on hv1"):
        migrator(tmp_path).migrate(check_mode=True)


# -- what libvirt shows decides, not the migrate call: no resume beside a copy elsewhere, no failure after a verified move


def connection_lost() -> libvirt.libvirtError:
    return libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, "internal error: connection closed due to keepalive timeout", libvirt.VIR_FROM_RPC)


def test_a_failed_migrate_call_whose_job_completed_is_a_move(cluster: Cluster, tmp_path: Path) -> None:
    def moved_then_lost() -> None:
        cluster.move()
        raise connection_lost()

    cluster.vm.on_migrate = moved_then_lost
    result = migrator(tmp_path).migrate(check_mode=False)
    assert result["changed"] is True and result["observed"] == {"source": None, "destination": RUNNING_ON_DESTINATION}
    assert "completed_despite_error" in event_names(result) and event_names(result)[-1] == "verified"
    assert any("keepalive timeout" in warning and "its job completed" in warning for warning in result["warnings"]), result["warnings"]


def test_a_failed_migrate_call_whose_job_goes_on_is_followed_to_its_end(cluster: Cluster, tmp_path: Path) -> None:
    def lost_while_running() -> None:
        running_job(cluster)

        def finish() -> None:
            time.sleep(0.2)
            cluster.move()
            cluster.vm.job = {"type": libvirt.VIR_DOMAIN_JOB_NONE}

        threading.Thread(target=finish, daemon=True).start()
        raise connection_lost()

    cluster.vm.on_migrate = lost_while_running
    result = migrator(tmp_path).migrate(check_mode=False)
    names = event_names(result)
    assert names.index("job_continues") < names.index("completed_despite_error") < names.index("verified"), names
    assert result["changed"] is True and result["observed"]["source"] is None


def test_a_failed_last_step_with_the_vm_on_the_destination_leaves_the_source_paused(cluster: Cluster, tmp_path: Path) -> None:
    # libvirt leaves the source paused when the last step fails after the destination took over.
    def confirm_failed() -> None:
        cluster.arrive()
        cluster.vm._state = PAUSED_BY_USER
        raise libvirt_error(libvirt.VIR_ERR_OPERATION_FAILED, "operation failed: migration confirm step failed", libvirt.VIR_FROM_QEMU)

    run = migrator(tmp_path)
    run.runner._suspended = True  # a schedule step paused it as well: its recovery would resume it
    cluster.vm.on_migrate = confirm_failed
    with pytest.raises(MigrationError) as caught:
        run.migrate(check_mode=False)
    failure = caught.value
    assert changes_to(cluster.vm) == [], "never resumed"
    assert cluster.vm.state()[0] == libvirt.VIR_DOMAIN_PAUSED
    assert "left paused on hv1 and not resumed: %s (running) has it too" % DEST_URI in failure.msg
    assert failure.details["kept_paused"] is True and failure.details["hosts"][0] == "hv1 (paused)"
    assert "kept_paused" in event_names(failure.details)


@pytest.mark.parametrize("how", ["migrate", "cancel", "planned"])
def test_a_vm_a_lost_run_paused_stays_paused_while_another_host_has_it(cluster: Cluster, tmp_path: Path, how: str) -> None:
    hv3 = cluster.add_host("qemu+tls://hv3/system", "hv3", "7f0c2d3e-1b2a-4c5d-8e9f-0a1b2c3d4e5f")
    hv3.domains.append(FakeDomain(VM_XML.replace("<name>web1</name>", "<name>web1-copy</name>"), (libvirt.VIR_DOMAIN_RUNNING, 1), persistent=False))
    hv3_candidate = Candidate(uri="qemu+tls://hv3/system", name="hv3")
    run = job_runner(tmp_path, cluster)
    migration = migrator(tmp_path, elsewhere=[hv3_candidate])
    for records in (run.records, migration.runner.records):
        records.add(VM_UUID, "web1")
    cluster.vm._state = PAUSED_BY_USER
    with pytest.raises(MigrationError, match=r"left paused on hv1 and not resumed: hv3 \(running, transient\) has it too"):
        if how == "planned":
            run.carry_out(planned_move(), [hv3_candidate])
        elif how == "migrate":
            migration.migrate(check_mode=False)
        else:
            migration.cancel(check_mode=False)
    assert changes_to(cluster.vm) == [] and not [c for c in cluster.vm.calls if c[0] == "migrateToURI3"]


def test_a_paused_vm_alone_is_still_resumed_after_a_lost_run(cluster: Cluster, tmp_path: Path) -> None:
    migration = migrator(tmp_path)
    migration.runner.records.add(VM_UUID, "web1")
    cluster.vm._state = PAUSED_BY_USER
    result = migration.cancel(check_mode=False)
    assert event_names(result) == ["resumed_after_lost_run"] and changes_to(cluster.vm) == ["resume"]


@pytest.mark.parametrize("kind", ["live", "offline"])
def test_autostart_follows_the_vm_to_its_destination(cluster: Cluster, tmp_path: Path, kind: str) -> None:
    cluster.vm._autostart = True
    if kind == "offline":
        cluster.vm._state = (libvirt.VIR_DOMAIN_SHUTOFF, 1)
        cluster.vm.on_migrate = lambda: (cluster.leave_source(), cluster.arrive(libvirt.VIR_DOMAIN_SHUTOFF))
    result = migrator(tmp_path).migrate(check_mode=False)
    (arrived,) = cluster.destination.domains
    assert result["autostart"] is True and arrived.autostart() == 1 and ("setAutostart", 1) in arrived.calls
    assert "autostart_set" in event_names(result)


def test_a_vm_without_autostart_gets_none_on_its_destination(cluster: Cluster, tmp_path: Path) -> None:
    result = migrator(tmp_path).migrate(check_mode=False)
    (arrived,) = cluster.destination.domains
    assert result["autostart"] is False and not [call for call in arrived.calls if call[0] == "setAutostart"]


def test_what_fails_after_a_verified_move_is_a_warning(cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster.vm._autostart = True

    def arrive_without_autostart() -> None:
        cluster.leave_source()
        cluster.arrive().errors["setAutostart"] = libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, "cannot write autostart link")

    def hooks_crash(dom: t.Any, event: str, deadline_s: float) -> t.Dict[str, t.Any]:
        if event == "after_migration":
            raise RuntimeError("agent channel closed")
        return {"event": event, "outcome": "ok", "message": "", "duration_s": 0.1}

    monkeypatch.setattr(runner.guest_agent, "run_guest_hooks", hooks_crash)
    cluster.vm.on_migrate = arrive_without_autostart
    result = migrator(tmp_path, guest_hooks=True).migrate(check_mode=False)
    assert result["changed"] is True and result["destination"]["hostname"] == "hv2" and result["autostart"] is None
    assert any("after_migration hooks there: RuntimeError: agent channel closed" in warning for warning in result["warnings"]), result["warnings"]
    assert any("autostart flag could not be set there: cannot write autostart link" in warning for warning in result["warnings"]), result["warnings"]


def test_a_move_that_fails_after_the_before_hooks_runs_the_after_hooks_where_the_vm_runs(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = hooks_answer(monkeypatch, {"before_migration": "ok", "after_migration": "ok"})

    def refuse() -> None:
        raise libvirt_error(libvirt.VIR_ERR_OPERATION_FAILED, "operation failed: migration out job: unexpectedly failed", libvirt.VIR_FROM_QEMU)

    cluster.vm.on_migrate = refuse
    with pytest.raises(MigrationError) as caught:
        job_runner(tmp_path, cluster).carry_out(planned_move(guest_hooks=True))
    assert ran == ["before_migration", "after_migration"]
    assert "The guest's after_migration hooks ran on hv1, where the VM still runs (ok)." in caught.value.msg
    hooks = [event for event in caught.value.details["events"] if event["event"] == "guest_hooks"]
    assert [(event["hook_event"], event["host"]) for event in hooks] == [("before_migration", SOURCE_URI), ("after_migration", SOURCE_URI)]


def test_a_before_hook_abort_runs_the_after_hooks_on_the_source(cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran = hooks_answer(monkeypatch, {"before_migration": "failed", "after_migration": "ok"})
    options = RunOptions(poll_interval=0.01, state_dir=str(tmp_path / "state"), guest_hook_failure="abort")
    with pytest.raises(MigrationError) as caught:
        runner.JobRunner(options, cluster.connect, "web1").carry_out(planned_move(guest_hooks=True))
    assert ran == ["before_migration", "after_migration"]
    assert "ran on hv1" in caught.value.details["guest_hooks_after"]


def test_a_failed_vf_replug_after_a_failed_move_is_reported(cluster: Cluster, tmp_path: Path) -> None:
    """Not a lab test: the lab cannot make the source refuse a VF it has just released."""
    with_devices(cluster, BOND_PAIR)
    cluster.vm.errors["attachDeviceFlags"] = libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, "no free VF")

    def refuse() -> None:
        raise libvirt_error(libvirt.VIR_ERR_OPERATION_FAILED, "operation failed: migration out job: unexpectedly failed", libvirt.VIR_FROM_QEMU)

    cluster.vm.on_migrate = refuse
    with pytest.raises(MigrationError) as caught:
        job_runner(tmp_path, cluster).carry_out(planned_move(bond_vfs=("fo",)))
    assert "runs on its source without the VF of failover pair(s) fo (no free VF)" in caught.value.msg


def test_a_vf_whose_unplug_timed_out_but_then_went_is_plugged_in_again(cluster: Cluster, tmp_path: Path) -> None:
    """Not a lab test: the lab cannot make a guest release its VF after the runner's deadline and before its read-back."""
    with_devices(cluster, BOND_PAIR)
    cluster.vm.keep_devices = True  # type: ignore[attr-defined]
    full = cluster.vm.xml

    def late_release(flags: int = 0) -> str:
        # The guest releases the VF just after the runner's deadline: the read-back sees it gone.
        late = any(event["event"] == "vf_unplug_timeout" for event in run.events)
        return full.replace("<alias name='ua-fo-vf'/>", "").replace("vfnet", "gone") if late else full

    cluster.vm.XMLDesc = late_release  # type: ignore[method-assign]
    run = runner.JobRunner(RunOptions(poll_interval=0.01, state_dir=str(tmp_path / "state"), unplug_timeout=0.05), cluster.connect, "web1")
    with pytest.raises(MigrationError, match="did not release the VF of failover pair 'fo'"):
        run.carry_out(planned_move(bond_vfs=("fo",)))
    assert [call[0] for call in cluster.vm.calls if call[0].endswith("DeviceFlags")] == ["detachDeviceFlags", "attachDeviceFlags"]


def test_an_adopted_job_plugs_in_the_vfs_the_lost_run_unplugged(cluster: Cluster, tmp_path: Path) -> None:
    """Not a lab test: the lab's bond stand-ins are real guests under TCG; killing a run between its unplug and its
    job's end there is a matter of timing luck, and each try costs minutes of the suite's budget."""
    with_devices(cluster, BOND_PAIR)
    full = cluster.vm.xml
    running_job(cluster)

    def arrive_without_vf() -> None:
        there = FakeDomain(full)
        there.inactive_xml = full
        there.detachDeviceFlags("<interface><alias name='ua-fo-vf'/></interface>", 0)
        there.calls.clear()
        there.completed_job = {"type": libvirt.VIR_DOMAIN_JOB_COMPLETED, "downtime": 40, "data_total": 256 * MIB}
        cluster.destination.domains.append(there)
        cluster.leave_source()
        cluster.vm.job = {"type": libvirt.VIR_DOMAIN_JOB_NONE}  # the job ends once the VM is there

    timer = after_the_job_is_seen(cluster, 0.1, arrive_without_vf)
    result = migrator(tmp_path).migrate(check_mode=False)
    timer.join()
    (arrived,) = cluster.destination.domains
    assert result["adopted"] is True and device_calls(arrived) == [("attachDeviceFlags", libvirt.VIR_DOMAIN_AFFECT_LIVE)], arrived.calls
    assert "ua-fo-vf" in arrived.xml


def test_a_source_libvirtd_lost_at_the_end_of_a_move_is_waited_for_and_its_paused_copy_named(cluster: Cluster, tmp_path: Path) -> None:
    # The soak's case: the source libvirtd dies in the last step of a move; restarted, it shows the VM
    # paused (libvirt leaves that to the caller) while the destination runs it.
    def lost_in_the_last_step() -> None:
        cluster.arrive()
        cluster.vm._state = (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION)
        cluster.source.closed = True
        raise libvirt_error(libvirt.VIR_ERR_SYSTEM_ERROR, "End of file while reading data: Input/output error", libvirt.VIR_FROM_RPC)

    reconnects = []
    real_connect = cluster.connect

    @contextlib.contextmanager
    def connect(uri: str, *args: t.Any, **kwargs: t.Any) -> t.Iterator[FakeConnection]:
        if uri == SOURCE_URI and cluster.source.closed:
            reconnects.append(uri)
            if len(reconnects) < 3:  # libvirtd is still coming back
                raise HostUnreachableError("Cannot open a libvirt connection on %s" % uri, uri=uri)
            cluster.source.closed = False
        with real_connect(uri, *args, **kwargs) as conn:
            yield conn

    cluster.vm.on_migrate = lost_in_the_last_step
    run = migrator(tmp_path)
    run.connect = connect  # type: ignore[method-assign]
    run.runner.connect = connect
    run.runner.options = dataclasses.replace(run.runner.options, poll_interval=0.01)
    with pytest.raises(MigrationError) as caught:
        run.migrate(check_mode=False)
    assert len(reconnects) == 3 and "source_reconnected" in event_names(caught.value.details)
    assert "left paused on hv1 and not resumed: %s (running) has it too" % DEST_URI in caught.value.msg
    assert changes_to(cluster.vm) == [] and caught.value.details["kept_paused"] is True


# -- local disks copied with the move (storage copy / auto)

DISK_PATH = "/var/lib/libvirt/images/web1.qcow2"
DISK_VM_XML = VM_XML.replace(
    "<devices/>",
    "<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/><source file='%s'/><target dev='vda' bus='virtio'/></disk>"
    "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='sda' bus='sata'/><readonly/></disk></devices>" % DISK_PATH,
)


def with_local_disk(cluster: Cluster, destination_pool: bool = True) -> t.Tuple[FakePool, FakePool]:
    """The VM has one qcow2 disk in the source's dir pool; the destination has an empty pool at the same path (or none)."""
    cluster.vm.xml = DISK_VM_XML
    source_pool = FakePool("default")
    source_pool.add("web1.qcow2", 10 * 1024**3, 2 * 1024**3)
    cluster.source.pools.append(source_pool)
    dest_pool = FakePool("default")
    if destination_pool:
        cluster.destination.pools.append(dest_pool)

    def move() -> None:
        cluster.leave_source()
        cluster.arrive().xml = DISK_VM_XML

    cluster.vm.on_migrate = move
    return source_pool, dest_pool


def manifests(tmp_path: Path) -> t.List[str]:
    directory = tmp_path / "state" / "copies"
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []


def test_check_mode_shows_each_disk_copy_and_creates_nothing(cluster: Cluster, tmp_path: Path) -> None:
    _source, dest_pool = with_local_disk(cluster)
    result = migrator(tmp_path, storage="copy").migrate(check_mode=True)
    (disk,) = result["storage"]["disks"][:1]
    assert disk == {
        "target": "vda",
        "path": DISK_PATH,
        "format": "qcow2",
        "virtual_bytes": 10 * 1024**3,
        "allocated_bytes": 2 * 1024**3,
        "source_pool": "default",
        "destination_pool": "default",
        "create": True,
        "action": "copy",
    }
    assert result["plan"]["storage"] == result["storage"]["disks"]
    assert not dest_pool.created and not manifests(tmp_path)
    assert not [call for call in cluster.vm.calls if call[0] == "migrateToURI3"]


def test_a_move_copies_the_disk_into_a_volume_created_first_and_keeps_the_source_volume(cluster: Cluster, tmp_path: Path) -> None:
    source_pool, dest_pool = with_local_disk(cluster)
    result = migrator(tmp_path, storage="auto", synchronous_writes=True).migrate(check_mode=False)
    assert result["changed"] is True
    assert len(dest_pool.created) == 1 and "<allocation unit='bytes'>0</allocation>" in dest_pool.created[0]
    assert "<format type='qcow2'/>" in dest_pool.created[0] and "<capacity unit='bytes'>%d</capacity>" % (10 * 1024**3) in dest_pool.created[0]
    (call,) = [call for call in cluster.vm.calls if call[0] == "migrateToURI3"]
    assert call[2] & libvirt.VIR_MIGRATE_NON_SHARED_DISK and call[2] & libvirt.VIR_MIGRATE_NON_SHARED_SYNCHRONOUS_WRITES
    assert result["storage"]["destination_disks"]["vda"] == DISK_PATH
    assert result["storage"]["source_disks_kept"] == [DISK_PATH] and result["storage"]["source_disks_removed"] == []
    assert [volume.path() for volume in source_pool.volumes] == [DISK_PATH]
    assert not manifests(tmp_path)
    assert "volumes_created" in event_names(result)


def test_remove_source_disks_deletes_the_copied_source_volume_after_the_verified_move(cluster: Cluster, tmp_path: Path) -> None:
    source_pool, _dest = with_local_disk(cluster)
    result = migrator(tmp_path, storage="copy", remove_source_disks=True).migrate(check_mode=False)
    assert result["storage"]["source_disks_removed"] == [DISK_PATH] and result["storage"]["source_disks_kept"] == []
    assert source_pool.deleted == [DISK_PATH]


def test_a_failed_move_deletes_the_created_volume_and_its_manifest(cluster: Cluster, tmp_path: Path) -> None:
    source_pool, dest_pool = with_local_disk(cluster)

    def refuse() -> None:
        raise libvirt_error(libvirt.VIR_ERR_OPERATION_FAILED, "operation failed: migration of disk vda failed")

    cluster.vm.on_migrate = refuse
    with pytest.raises(MigrationError) as failure:
        migrator(tmp_path, storage="copy", remove_source_disks=True).migrate(check_mode=False)
    assert dest_pool.deleted == [DISK_PATH] and not dest_pool.volumes
    assert not manifests(tmp_path)
    assert [volume.path() for volume in source_pool.volumes] == [DISK_PATH]
    assert "copies_cleaned" in event_names(failure.value.details)


def test_a_destination_without_the_pool_is_refused_under_rule_storage_before_anything_is_created(cluster: Cluster, tmp_path: Path) -> None:
    with_local_disk(cluster, destination_pool=False)
    with pytest.raises(PolicyError, match="hv2 has no active storage pool whose target path is /var/lib/libvirt/images") as refusal:
        migrator(tmp_path, storage="copy").migrate(check_mode=True)
    assert refusal.value.details["rule"] == "storage"
    assert not manifests(tmp_path)


def test_a_file_in_no_pool_is_refused_in_auto(cluster: Cluster, tmp_path: Path) -> None:
    cluster.vm.xml = DISK_VM_XML
    with pytest.raises(PolicyError, match="cannot tell whether %s is shared" % DISK_PATH):
        migrator(tmp_path, storage="auto").migrate(check_mode=True)
    # Under shared_storage it is shared: placement then needs it visible on the destination.
    with pytest.raises(MigrationError, match="cannot see the disk"):
        migrator(tmp_path, storage="auto", shared_storage="/var/lib/libvirt").migrate(check_mode=True)


def test_a_leftover_manifest_is_cleaned_before_a_new_move(cluster: Cluster, tmp_path: Path) -> None:
    _source, dest_pool = with_local_disk(cluster)
    dest_pool.add("web1.qcow2", 10 * 1024**3)
    disk_io.CopyManifest(str(tmp_path / "state")).write("web1", VM_UUID, DEST_URI, [DISK_PATH])
    planned = migrator(tmp_path, storage="copy").migrate(check_mode=True)
    assert any("interrupted disk copy" in warning for warning in planned["warnings"]) and dest_pool.volumes
    result = migrator(tmp_path, storage="copy").migrate(check_mode=False)
    assert dest_pool.deleted == [DISK_PATH]
    assert event_names(result)[0] == "copies_cleaned"
    assert result["storage"]["destination_disks"]["vda"] == DISK_PATH and not manifests(tmp_path)


def test_a_leftover_manifest_keeps_the_volumes_of_a_vm_defined_on_its_destination(cluster: Cluster, tmp_path: Path) -> None:
    _source, dest_pool = with_local_disk(cluster)
    dest_pool.add("web1.qcow2", 10 * 1024**3)
    cluster.move()
    disk_io.CopyManifest(str(tmp_path / "state")).write("web1", VM_UUID, DEST_URI, [DISK_PATH])
    result = migrator(tmp_path, storage="copy").migrate(check_mode=False)
    assert "already on hv2" in result["msg"] and dest_pool.volumes and not dest_pool.deleted
    assert not manifests(tmp_path)


def test_destination_auto_passes_over_a_host_that_cannot_take_the_copies(cluster: Cluster, tmp_path: Path) -> None:
    with_local_disk(cluster, destination_pool=False)
    hv3 = cluster.add_host(HV3_URI, "hv3", HV3_UUID)
    candidates = [Candidate(uri=DEST_URI), Candidate(uri=HV3_URI)]
    with pytest.raises(PolicyError, match="No candidate can take the disk copies of VM 'web1'") as refusal:
        migrator(tmp_path, storage="copy", auto=True, candidates=candidates).migrate(check_mode=True)
    assert refusal.value.details["rule"] == "storage" and sorted(refusal.value.details["rejected_hosts"]) == ["hv2", "hv3"]
    hv3.pools.append(FakePool("default"))
    result = migrator(tmp_path, storage="copy", auto=True, candidates=candidates).migrate(check_mode=True)
    assert result["destination"]["hostname"] == "hv3"
    assert "hv2 has no active storage pool" in result["plan"]["rejected_hosts"]["hv2"][0]
    with pytest.raises(PolicyError, match="hv2 has no active storage pool"):
        migrator(tmp_path, storage="copy").migrate(check_mode=True)


def test_source_disks_stay_when_the_destination_does_not_name_the_copied_paths(cluster: Cluster, tmp_path: Path) -> None:
    source_pool, _dest = with_local_disk(cluster)

    def move() -> None:
        cluster.leave_source()
        cluster.arrive().xml = DISK_VM_XML.replace(DISK_PATH, "/elsewhere/web1.qcow2")

    cluster.vm.on_migrate = move
    result = migrator(tmp_path, storage="copy", remove_source_disks=True).migrate(check_mode=False)
    assert result["storage"]["source_disks_kept"] == [DISK_PATH] and not source_pool.deleted
    assert any("do not name the copied paths" in warning for warning in result["warnings"])
