"""The maintenance mark, host_maintenance's parameter checks, and the maintenance_report filter (no hypervisor)."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import threading
import time
import typing as t
import uuid
from pathlib import Path

import libvirt
import pytest

from ansible_collections.virtops.migration.plugins.filter.maintenance_report import FilterModule, maintenance_report
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import evacuation as ev
from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration import maintenance as mt
from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration import batch as batch_mod
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import mark as mk
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import requests as rq
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.plan import Candidate, Move
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.statefiles import DEFAULT_STATE_DIR
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import MigrationError
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.statefiles import StateFileError
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io import storage as disk_io
from libvirt_fakes import HV1_UUID, HV2_UUID, FakeCluster, FakeConnection, FakeDomain, FakePool, libvirt_error


def test_mark_round_trip_and_status(tmp_path: Path) -> None:
    state_dir = str(tmp_path / "state")
    assert mk.read_mark(state_dir) is None
    status = mk.status(state_dir)
    assert status.pop("enforcement")["path"] == mk.HOOK_PATH
    assert status == {"active": False, "state": None, "since": None, "reason": None, "by": None, "shutdown_vms": []}
    mark = {"state": "preparing", "since": "2026-11-26T04:20:00.000+00:00", "reason": "kernel", "by": "awx", "shutdown_vms": ["lic1"]}
    mk.write_mark(state_dir, mark)
    assert mk.read_mark(state_dir) == mark
    status = mk.status(state_dir)
    assert set(status.pop("enforcement")) == {"path", "installed", "loaded", "trouble"}
    assert status == dict(mark, active=True)
    mk.write_mark(state_dir, dict(mark, state=mk.MAINTENANCE))
    assert mk.status(state_dir)["state"] == "maintenance"
    assert sorted(path.name for path in (tmp_path / "state").iterdir()) == [mk.MARK_FILE], "written atomically, no temporary file left"
    assert (tmp_path / "state" / mk.MARK_FILE).stat().st_mode & 0o777 == 0o600
    mk.clear_mark(state_dir)
    mk.clear_mark(state_dir)
    assert mk.read_mark(state_dir) is None


def test_a_mark_without_a_state_is_in_maintenance(tmp_path: Path) -> None:
    # Marks written before the mark had a state meant "in maintenance".
    (tmp_path / mk.MARK_FILE).write_text(json.dumps({"since": "2026-11-26T04:20:00.000+00:00", "reason": "kernel"}))
    assert mk.read_mark(str(tmp_path))["state"] == mk.MAINTENANCE
    assert mk.status(str(tmp_path))["state"] == mk.MAINTENANCE


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "Cannot read .*maintenance.json"),
        ("[1, 2]", "The maintenance mark .*maintenance.json is not a JSON object"),
    ],
)
def test_unreadable_mark_is_a_clear_error(tmp_path: Path, content: str, message: str) -> None:
    # Never "active": a host whose mark cannot be read may be about to reboot.
    (tmp_path / mk.MARK_FILE).write_text(content)
    with pytest.raises(MigrationError, match=message):
        mk.read_mark(str(tmp_path))


def test_a_fifo_at_the_mark_path_is_an_error_not_a_hang(tmp_path: Path) -> None:
    # Opening a FIFO for reading waits for a writer: the mark's reader must not.
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    fifo = state_dir / mk.MARK_FILE
    os.mkfifo(fifo)
    outcome: t.Dict[str, BaseException] = {}

    def read() -> None:
        try:
            mk.read_mark(str(state_dir))
        except BaseException as exc:  # pylint: disable=broad-exception-caught
            outcome["error"] = exc

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(2)
    if reader.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # let the reader go
        pytest.fail("read_mark blocks on a FIFO at the mark's path")
    error = outcome["error"]
    assert isinstance(error, StateFileError) and error.msg == "Cannot read %s: it is not a regular file" % fifo
    assert mk.read_mark_quietly(str(state_dir)) == {"state": "unreadable", "error": error.msg}


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
    assert mk.hook_status(str(hook), [str(pid_file)]) == {"path": str(hook), "installed": True, "loaded": True}


def test_hook_newer_than_libvirtd_is_not_loaded(hook_files: t.Tuple[Path, Path]) -> None:
    # libvirtd reads its hooks when it starts: one installed (or changed) later is not used yet.
    hook, pid_file = hook_files
    set_mtime(hook, time.time() + A_DAY)  # after this process started
    assert mk.hook_status(str(hook), [str(pid_file)]) == {"path": str(hook), "installed": True, "loaded": False}


def _start_after(hook: Path, pid_file: Path, hook_first: bool) -> "subprocess.Popen[bytes]":
    """Write the hook and start a stand-in libvirtd 0.2 s apart, in the given order; the process."""
    if hook_first:
        set_mtime(hook, time.time())
        time.sleep(0.2)
    process = subprocess.Popen(["sleep", "30"])  # pylint: disable=consider-using-with
    if not hook_first:
        time.sleep(0.2)
        set_mtime(hook, time.time())
    pid_file.write_text("%d\n" % process.pid)
    return process


@pytest.mark.parametrize("hook_first", [True, False])
def test_libvirtd_restarted_right_after_the_hook_was_written_has_loaded_it(hook_files: t.Tuple[Path, Path], hook_first: bool) -> None:
    # A role writes the hook and restarts libvirtd at once: tenths of a second apart. The start time is
    # read to the clock tick, not to the whole second of the boot time in /proc/stat.
    hook, pid_file = hook_files
    libvirtd = _start_after(hook, pid_file, hook_first)
    try:
        assert mk.hook_status(str(hook), [str(pid_file)])["loaded"] is hook_first
    finally:
        libvirtd.kill()
        libvirtd.wait()


def test_missing_hook_is_not_installed(hook_files: t.Tuple[Path, Path]) -> None:
    hook, pid_file = hook_files
    hook.unlink()
    assert mk.hook_status(str(hook), [str(pid_file)]) == {"path": str(hook), "installed": False, "loaded": False}


def test_non_executable_hook_is_not_installed(hook_files: t.Tuple[Path, Path]) -> None:
    # libvirtd runs only executable hook scripts.
    hook, pid_file = hook_files
    hook.chmod(0o644)
    set_mtime(hook, time.time() - 365 * A_DAY)
    assert mk.hook_status(str(hook), [str(pid_file)]) == {"path": str(hook), "installed": False, "loaded": False}


@pytest.mark.parametrize("pid_text", [None, "", "not a pid\n", "999999999\n"])
def test_unknown_libvirtd_start_leaves_loaded_unknown(hook_files: t.Tuple[Path, Path], pid_text: t.Optional[str]) -> None:
    hook, pid_file = hook_files
    if pid_text is None:
        pid_file.unlink()
    else:
        pid_file.write_text(pid_text)
    assert mk.hook_status(str(hook), [str(pid_file)]) == {"path": str(hook), "installed": True, "loaded": None}


def test_the_first_readable_pid_file_counts(hook_files: t.Tuple[Path, Path], tmp_path: Path) -> None:
    hook, pid_file = hook_files
    set_mtime(hook, time.time() - 365 * A_DAY)
    missing = tmp_path / "nowhere" / "libvirtd.pid"
    assert mk.hook_status(str(hook), [str(missing), str(pid_file)])["loaded"] is True


def watch(hook: Path, state_dir: str) -> None:
    """The hook's text names the mark it watches, as the role's template writes it."""
    hook.write_text("#!/bin/sh\nmark='%s/maintenance.json'\n" % state_dir)
    set_mtime(hook, time.time() - 365 * A_DAY)


def test_a_hook_watching_another_state_directory_is_not_installed(hook_files: t.Tuple[Path, Path]) -> None:
    hook, pid_file = hook_files
    watch(hook, "/srv/virtops")
    assert mk.hook_status(str(hook), [str(pid_file)], state_dir=DEFAULT_STATE_DIR) == {
        "path": str(hook),
        "installed": False,
        "loaded": False,
        "problem": "it watches /srv/virtops/maintenance.json, not %s/maintenance.json" % DEFAULT_STATE_DIR,
    }
    loaded = {"path": str(hook), "installed": True, "loaded": True}
    assert mk.hook_status(str(hook), [str(pid_file)], state_dir="/srv/virtops") == loaded
    # The same directory written another way is the same; a directory that merely ends alike is not.
    assert mk.hook_status(str(hook), [str(pid_file)], state_dir="/srv/virtops/") == loaded
    assert mk.hook_status(str(hook), [str(pid_file)], state_dir="/srv//virtops") == loaded
    assert mk.hook_status(str(hook), [str(pid_file)], state_dir="/data/srv/virtops")["installed"] is False
    watch(hook, "/data/srv/virtops")
    assert mk.hook_status(str(hook), [str(pid_file)], state_dir="/srv/virtops")["installed"] is False
    assert mk.hook_status(str(hook), [str(pid_file)]) == loaded, "without a state directory the text is not checked"


def test_the_pid_file_of_virtqemud_counts_where_libvirt_runs_split_daemons(hook_files: t.Tuple[Path, Path], tmp_path: Path) -> None:
    assert {"/run/libvirt/virtqemud.pid", "/run/virtqemud.pid"} <= set(inspect.signature(mt.hook_status).parameters["pid_files"].default)
    hook, pid_file = hook_files
    virtqemud = pid_file.rename(tmp_path / "virtqemud.pid")
    pid_files = [str(tmp_path / "libvirtd.pid"), str(virtqemud)]  # no libvirtd on this host
    set_mtime(hook, time.time() - 365 * A_DAY)
    assert mk.hook_status(str(hook), pid_files)["loaded"] is True
    set_mtime(hook, time.time() + A_DAY)
    assert mk.hook_status(str(hook), pid_files)["loaded"] is False


# -- running host_maintenance against fake hosts: hv1 (the host itself) and hv2

HOST_URI = "qemu:///system"
HV2_URI = "qemu+tls://hv2/system"
RUNNING = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED)
SHUT_OFF = (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN)
MAINTENANCE_MARK: t.Dict[str, t.Any] = {
    "state": mk.MAINTENANCE,
    "since": "2026-11-26T04:20:00.000+00:00",
    "reason": "kernel",
    "by": "awx",
    "shutdown_vms": ["lic1"],
}


def domain(name: str, state: t.Tuple[int, int] = SHUT_OFF, persistent: bool = True, migration_mode: str = "auto") -> FakeDomain:
    metadata = (
        "<metadata><virtops:migration xmlns:virtops='https://virtops.github.io/xmlns/migration/1'>"
        "<virtops:migration_mode>%s</virtops:migration_mode></virtops:migration></metadata>" % migration_mode
    )
    return FakeDomain(
        "<domain type='kvm'><name>%s</name><uuid>%s</uuid>%s<memory unit='MiB'>1024</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os><devices/></domain>" % (name, uuid.uuid5(uuid.NAMESPACE_DNS, name), metadata),
        state,
        persistent,
    )


def starts(dom: FakeDomain) -> int:
    return dom.calls.count(("create",))


def start_failure(name: str) -> libvirt.libvirtError:
    return libvirt_error(
        libvirt.VIR_ERR_INTERNAL_ERROR,
        "internal error: process exited while connecting to monitor: qemu-system-x86_64: -blockdev {...}: "
        "Could not open '/var/lib/libvirt/images/%s.qcow2': Permission denied" % name,
    )


class Hosts(FakeCluster):
    """hv1 and hv2; migrations recorded, not run."""

    def __init__(self, capabilities: str) -> None:
        super().__init__(capabilities)
        self.hv1 = self.add_host(HOST_URI, "hv1", HV1_UUID)
        self.hv2 = self.add_host(HV2_URI, "hv2", HV2_UUID)
        self.migrations: t.List[Move] = []
        self.migration_error: t.Optional[MigrationError] = None

    def domain(self, name: str) -> FakeDomain:
        return next(dom for dom in self.hv1.domains if dom.name() == name)


@pytest.fixture
def hosts(sample: t.Callable[[str], str], monkeypatch: pytest.MonkeyPatch) -> Hosts:
    cluster = Hosts(sample("capabilities-qemu.xml"))

    def connect(_self: mt.HostMaintenance, uri: str, connect_timeout: t.Optional[float] = None) -> t.ContextManager[FakeConnection]:
        return cluster.connect(uri)

    class RecordingRunner:
        """Moves the VM from hv1 to hv2 as a completed migration would, or fails as told."""

        def __init__(self, _options: t.Any, _connect: t.Any, _vm: str, log: t.Callable[[str], None]) -> None:
            self.timings: t.Dict[str, float] = {}
            self.events: t.List[t.Dict[str, t.Any]] = []

        def carry_out(self, move: Move, _others: t.Sequence[Candidate] = ()) -> t.Dict[str, t.Any]:
            cluster.migrations.append(move)
            if cluster.migration_error is not None:
                raise cluster.migration_error
            dom = next(dom for dom in cluster.hv1.domains if dom.UUIDString() == move.uuid)
            cluster.hv1.domains.remove(dom)
            cluster.hv2.domains.append(dom)
            return {"outcome": "migrated", "changed": True, "vm_state": "running" if dom.isActive() else "shut off"}

    monkeypatch.setattr(mt.HostMaintenance, "connect", connect)
    monkeypatch.setattr(batch_mod, "JobRunner", RecordingRunner)
    monkeypatch.setattr(mt, "hook_status", lambda **_kwargs: {"path": mk.HOOK_PATH, "installed": True, "loaded": True})
    return cluster


def host_maintenance(tmp_path: Path) -> mt.HostMaintenance:
    return mt.HostMaintenance(
        mt.MaintenanceRequest(
            uri=HOST_URI,
            state="maintenance",
            candidates=[Candidate(uri=HV2_URI)],
            state_dir=str(tmp_path / "state"),
            log_dir=str(tmp_path / "log"),
            poll_interval=0.01,
        )
    )


def plan_shutting_down(*names: str) -> ev.EvacuationPlan:
    """An evacuation plan that shuts the VMs ``names`` down (they may not migrate)."""
    plan = ev.EvacuationPlan(source=ev.SourceHost(name="hv1", uuid=HV1_UUID, uri=HOST_URI), non_migratable="shutdown")
    reason = "VM '%s' may not be migrated (migration_mode none); it is shut down"
    plan.shutdown = [ev.HeldVm(name, None, "medium", 1024, True, reason % name) for name in names]
    return plan


def test_an_evacuation_moves_a_transient_vm_as_a_transient_vm(tmp_path: Path, hosts: Hosts) -> None:
    hosts.hv1.domains += [domain("scratch", RUNNING, persistent=False), domain("old1", SHUT_OFF)]
    result = host_maintenance(tmp_path).maintenance(check_mode=False)
    assert [(move["vm"], move["kind"]) for move in result["plan"]["moves"]] == [("old1", "offline"), ("scratch", "live")]
    names = {dom.UUIDString(): dom.name() for dom in hosts.hv2.domains}
    assert sorted((names[move.uuid], move.persistent) for move in hosts.migrations) == [("old1", True), ("scratch", False)]
    assert result["maintenance"]["state"] == mk.MAINTENANCE


def test_a_tunnelled_evacuation_plans_and_runs_its_moves_through_the_tunnel(tmp_path: Path, hosts: Hosts, monkeypatch: pytest.MonkeyPatch) -> None:
    hosts.hv1.domains += [domain("a1", RUNNING), domain("old1", SHUT_OFF)]
    seen: t.List[t.Any] = []
    recording = batch_mod.JobRunner

    def runner(run_options: t.Any, connect: t.Any, vm: str, log: t.Callable[[str], None]) -> t.Any:
        seen.append(run_options)
        return recording(run_options, connect, vm, log)

    monkeypatch.setattr(batch_mod, "JobRunner", runner)
    request = host_maintenance(tmp_path).request
    request.tunnelled = True
    planned = mt.HostMaintenance(request).maintenance(check_mode=True)
    assert planned["plan"]["tunnelled"] is True and not hosts.migrations and not seen
    result = mt.HostMaintenance(request).maintenance(check_mode=False)
    assert result["plan"]["tunnelled"] is True and len(hosts.migrations) == 2
    assert [run_options.tunnelled for run_options in seen] == [True, True]
    assert host_maintenance(tmp_path).request.tunnelled is False


@pytest.mark.parametrize("check_mode", [True, False])
def test_a_tunnelled_evacuation_refuses_inherited_policies_libvirt_cannot_tunnel_before_anything_moves(
    tmp_path: Path, hosts: Hosts, check_mode: bool
) -> None:
    hosts.hv1.domains += [domain("a1", RUNNING), domain("b2", RUNNING), domain("old1", SHUT_OFF)]
    request = host_maintenance(tmp_path).request
    request.tunnelled = True
    request.cluster_policy = {"policy": "post_copy"}
    with pytest.raises(MigrationError) as caught:
        mt.HostMaintenance(request).maintenance(check_mode=check_mode)
    message = caught.value.msg
    assert message.startswith("hv1 cannot go into maintenance, nothing was moved: ")
    # Each running VM is blocked, named with its policy and the setting; the shut-off one moves its definition only.
    inherited = "cannot migrate with tunnelled=true: its policy setting (from the cluster level), policy 'post_copy', has post_copy: true"
    assert "VM 'a1' %s (libvirt does not support post-copy" % inherited in message
    assert "VM 'b2' %s" % inherited in message and "old1" not in message
    plan = caught.value.details["plan"]
    assert plan["tunnelled"] is True and [move["vm"] for move in plan["moves"]] == ["old1"]
    assert [(held["vm"], held["rule"]) for held in plan["blocked"]] == [("a1", "tunnel_conflict"), ("b2", "tunnel_conflict")]
    assert not hosts.migrations and mk.read_mark(request.state_dir) is None


def test_host_maintenance_takes_tunnelled() -> None:
    assert rq.maintenance_request(dict(BASE, tunnelled=True)).tunnelled is True
    assert rq.maintenance_request(dict(BASE)).tunnelled is False


def test_the_progress_file_shows_the_moves_running_and_ended(tmp_path: Path, hosts: Hosts, monkeypatch: pytest.MonkeyPatch) -> None:
    hosts.hv1.domains += [domain("a1", RUNNING), domain("b2", RUNNING), domain("c3", RUNNING)]
    progress = tmp_path / "state" / mt.PROGRESS_FILE
    seen: t.List[t.Dict[str, t.Any]] = []
    carry_out = batch_mod.JobRunner.carry_out

    def watched(self: t.Any, move: Move, others: t.Sequence[Candidate] = ()) -> t.Dict[str, t.Any]:
        # What a watcher reads while this move runs (the file is rewritten before each move starts).
        seen.append(json.loads(progress.read_text(encoding="utf-8")))
        return carry_out(self, move, others)

    monkeypatch.setattr(batch_mod.JobRunner, "carry_out", watched)
    request = host_maintenance(tmp_path).request
    request.max_outgoing = 1
    result = mt.HostMaintenance(request).maintenance(check_mode=False)
    assert [record["outcome"] for record in result["vms"]] == ["migrated"] * 3
    # One move at a time: each move sees itself running and the moves before it ended.
    assert [(entry["ended"], [running["vm"] for running in entry["running"]], entry["done"]) for entry in seen] == [
        (0, [result["vms"][0]["vm"]], False),
        (1, [result["vms"][1]["vm"]], False),
        (2, [result["vms"][2]["vm"]], False),
    ]
    final = json.loads(progress.read_text(encoding="utf-8"))
    assert (final["host"], final["total"], final["ended"], final["failed"], final["running"], final["done"]) == ("hv1", 3, 3, 0, [], True)
    assert progress.stat().st_mode & 0o777 == 0o600


def test_a_failed_run_on_a_host_in_maintenance_that_runs_no_vm_leaves_it_in_maintenance(tmp_path: Path, hosts: Hosts) -> None:
    run = host_maintenance(tmp_path)
    state_dir = run.request.state_dir
    # lic1 was shut down for the maintenance; old1 was defined on the host since, and cannot move.
    hosts.hv1.domains += [domain("lic1", migration_mode="none"), domain("old1")]
    mk.write_mark(state_dir, MAINTENANCE_MARK)
    hosts.migration_error = MigrationError("Cannot migrate to %s for VM 'old1': operation failed: the storage is not shared" % HV2_URI)
    with pytest.raises(MigrationError) as caught:
        run.maintenance(check_mode=False)
    assert caught.value.msg.startswith("1 of 1 VMs could not leave hv1")
    assert caught.value.msg.endswith(" hv1 stays in maintenance, as before this run.")
    assert caught.value.details["maintenance"] == MAINTENANCE_MARK
    assert [record["outcome"] for record in caught.value.details["vms"]] == ["failed"]
    assert mk.read_mark(state_dir) == MAINTENANCE_MARK
    assert starts(hosts.domain("lic1")) == 0


def undo_base(*listed: str) -> t.Dict[str, t.Any]:
    """The mark as a failed run last wrote it (``_maintenance``'s ``base``), listing ``listed``."""
    return {"since": "2026-11-26T04:20:00.000+00:00", "reason": None, "by": None, "shutdown_vms": list(listed)}


def test_undo_keeps_the_previous_maintenance_mark_of_a_host_that_runs_no_vm(tmp_path: Path, hosts: Hosts) -> None:
    run = host_maintenance(tmp_path)
    state_dir = run.request.state_dir
    hosts.hv1.domains += [domain("lic1"), domain("lic2")]
    # lic2 started meanwhile, and this run shut it down again: the kept mark lists it too.
    mk.write_mark(state_dir, dict(MAINTENANCE_MARK, state=mk.PREPARING, shutdown_vms=["lic1", "lic2"]))  # what the failed run wrote
    undo = run._undo("hv1", MAINTENANCE_MARK, undo_base("lic1", "lic2"), ["lic2"])
    kept = dict(MAINTENANCE_MARK, shutdown_vms=["lic1", "lic2"])
    assert undo == {"maintenance": kept, "sentence": "hv1 stays in maintenance, as before this run."}
    assert mk.read_mark(state_dir) == kept
    assert starts(hosts.domain("lic1")) == 0


def test_undo_makes_a_host_that_was_active_active_again_and_starts_the_vms_it_shut_down(tmp_path: Path, hosts: Hosts) -> None:
    run = host_maintenance(tmp_path)
    state_dir = run.request.state_dir
    hosts.hv1.domains += [domain("lic1"), domain("lic2", RUNNING), domain("kept1"), domain("web1", RUNNING)]
    mk.write_mark(state_dir, dict(undo_base("lic1", "gone1"), state=mk.PREPARING))
    # lic2 was not asked to shut down when the run failed (not listed); gone1 was undefined meanwhile.
    undo = run._undo("hv1", None, undo_base("lic1", "gone1"), ["lic1", "gone1"])
    assert undo == {"maintenance": None, "restarted": ["lic1"], "not_restarted": {}, "sentence": "hv1 is active again. Started again: lic1."}
    assert mk.read_mark(state_dir) is None
    assert {name: starts(hosts.domain(name)) for name in ("lic1", "lic2", "kept1", "web1")} == {"lic1": 1, "lic2": 0, "kept1": 0, "web1": 0}
    assert hosts.domain("lic1").isActive()


def test_undo_keeps_listed_a_vm_that_cannot_start_or_still_shuts_down_and_the_host_activating(tmp_path: Path, hosts: Hosts) -> None:
    """A VM shut down for the maintenance is never forgotten: one that fails to start again, and one asked to
    shut down that still runs (a shutdown timeout; it may stop later), stay in an ``activating`` mark that
    ``state=active`` works from, and the message names them."""
    run = host_maintenance(tmp_path)
    state_dir = run.request.state_dir
    hosts.hv1.domains += [domain("lic1"), domain("lic2", RUNNING), domain("lic3"), domain("web1", RUNNING)]
    hosts.domain("lic3").errors["create"] = start_failure("lic3")
    mk.write_mark(state_dir, dict(undo_base("lic1", "lic2", "lic3"), state=mk.PREPARING))
    undo = run._undo("hv1", None, undo_base("lic1", "lic2", "lic3"), ["lic1", "lic2", "lic3"])
    why = undo["not_restarted"]["lic3"]
    assert why.startswith("Cannot start the VM shut down for maintenance for VM 'lic3'") and str(hosts.domain("lic3").errors["create"]) in why
    activating = dict(undo_base("lic2", "lic3"), state=mk.ACTIVATING)
    assert undo == {
        "maintenance": activating,
        "restarted": ["lic1"],
        "not_restarted": {"lic3": why},
        "still_shutting_down": ["lic2"],
        "sentence": "hv1 stays in state activating (it takes no incoming VM). Started again: lic1. Could not start again: lic3 (%s). "
        "Asked to shut down and still running: lic2. The mark lists them: run state=active to start them again "
        "(it leaves a running VM as it is) and end it." % why,
    }
    assert mk.read_mark(state_dir) == activating
    # lic2 finishes its shutdown late, lic3 can start now: the activation starts both and ends the mark.
    hosts.domain("lic2")._state = SHUT_OFF
    del hosts.domain("lic3").errors["create"]
    assert run.activate(check_mode=False) == {"changed": True, "host": "hv1", "started": ["lic2", "lic3"], "maintenance": None, "previous": activating}
    assert mk.read_mark(state_dir) is None
    assert all(hosts.domain(name).isActive() for name in ("lic1", "lic2", "lic3"))


def test_undo_without_vms_to_start_only_clears_the_mark(tmp_path: Path, hosts: Hosts) -> None:
    run = host_maintenance(tmp_path)
    mk.write_mark(run.request.state_dir, {"state": mk.PREPARING, "shutdown_vms": []})
    assert run._undo("hv1", None, undo_base(), []) == {"maintenance": None, "sentence": "hv1 is active again."}
    assert mk.read_mark(run.request.state_dir) is None


def read_only(path: str) -> t.Callable[..., None]:
    def refuse(*_args: t.Any) -> None:
        raise StateFileError("Cannot remove %s: [Errno 30] Read-only file system: %r" % (path, path), path=path)

    return refuse


@pytest.mark.parametrize("listed", [(), ("lic1",)], ids=["no VM listed", "a VM listed"])
@pytest.mark.parametrize("where", ["read-only", "directory-at-the-mark"])
def test_undo_that_cannot_change_the_mark_says_what_is_there(
    tmp_path: Path, hosts: Hosts, monkeypatch: pytest.MonkeyPatch, where: str, listed: t.Tuple[str, ...]
) -> None:
    """Without VMs to start, the mark cannot be removed; with one, not even made ``activating`` (nothing is
    started then: the hook would refuse it), and the sentence names the VM for ``state=active``."""
    run = host_maintenance(tmp_path)
    state_dir = run.request.state_dir
    path = os.path.join(state_dir, mk.MARK_FILE)
    hosts.hv1.domains.append(domain("lic1"))
    preparing = dict(undo_base(*listed), state=mk.PREPARING)
    if where == "read-only":
        mk.write_mark(state_dir, preparing)
        monkeypatch.setattr(mt, "write_mark" if listed else "clear_mark", read_only(path))
        there: t.Dict[str, t.Any] = preparing
    else:
        os.makedirs(path)
        there = {"state": "unreadable", "error": "Cannot read %s: it is not a regular file" % path}
    undo = run._undo("hv1", None, undo_base(*listed), list(listed))
    assert undo["maintenance"] == there
    if listed:
        assert undo["sentence"].startswith("The mark of hv1 stays (Cannot ")
        assert undo["sentence"].endswith("VM(s) shut down for the maintenance: lic1; run state=active to start them again and end it.")
    else:
        assert undo["sentence"].startswith("The mark of hv1 could not be removed (Cannot ")
        assert undo["sentence"].endswith("); fix it by hand.")
    assert "restarted" not in undo and starts(hosts.domain("lic1")) == 0


def test_a_vm_is_in_the_mark_before_its_shutdown_is_asked_for(tmp_path: Path, hosts: Hosts) -> None:
    """A killed module cannot forget a VM it shut down: the mark already lists it when libvirt is asked.
    (The lab kills a module mid-shutdown too; this pins the order for every VM.)"""
    run = host_maintenance(tmp_path)
    state_dir = run.request.state_dir
    hosts.hv1.domains += [domain(name, RUNNING, migration_mode="none") for name in ("lic1", "lic2")]
    seen: t.List[t.Tuple[str, str, t.List[str]]] = []
    for dom in hosts.hv1.domains:

        def shutdown(flags: int = 0, dom: FakeDomain = dom) -> int:
            now = mk.read_mark(state_dir) or {}
            seen.append((dom.name(), now.get("state"), now.get("shutdown_vms")))
            dom._state = SHUT_OFF  # the guest stops at once
            return 0

        dom.shutdownFlags = shutdown  # type: ignore[method-assign]
    run.request.non_migratable = "shutdown"
    result = run.maintenance(check_mode=False)
    assert seen == [("lic1", mk.PREPARING, ["lic1"]), ("lic2", mk.PREPARING, ["lic1", "lic2"])]
    assert result["shutdown"] == ["lic1", "lic2"] and mk.read_mark(state_dir)["shutdown_vms"] == ["lic1", "lic2"]
    # Each with its UUID, which the activation goes by.
    assert mk.read_mark(state_dir)["shutdown_uuids"] == {name: hosts.domain(name).UUIDString() for name in ("lic1", "lic2")}


def test_activation_starts_the_vms_it_shut_down_by_uuid_not_by_name(tmp_path: Path, hosts: Hosts) -> None:
    """A VM shut down for the maintenance is found by its UUID: renamed meanwhile, it is started under its
    new name; gone, and another VM defined under its name, that other VM is not started."""
    run = host_maintenance(tmp_path)
    state_dir = run.request.state_dir
    renamed, impostor = domain("web1-new"), domain("db1")
    hosts.hv1.domains += [renamed, impostor]
    mark = dict(MAINTENANCE_MARK, shutdown_vms=["db1", "web1"],
                shutdown_uuids={"web1": renamed.UUIDString(), "db1": "0b7e9a52-1c1d-4a55-8f40-4f0a3c1e9b02"})
    mk.write_mark(state_dir, mark)
    planned = run.activate(check_mode=True)
    assert planned["started"] == ["web1"]
    result = run.activate(check_mode=False)
    assert result["started"] == ["web1"] and mk.read_mark(state_dir) is None
    assert renamed.isActive() and not impostor.isActive()


def test_activation_of_a_mark_without_uuids_goes_by_name(tmp_path: Path, hosts: Hosts) -> None:
    run = host_maintenance(tmp_path)
    hosts.hv1.domains.append(domain("web1"))
    mk.write_mark(run.request.state_dir, dict(MAINTENANCE_MARK, shutdown_vms=["web1"]))
    assert run.activate(check_mode=False)["started"] == ["web1"] and hosts.domain("web1").isActive()


def test_a_shutdown_timeout_names_the_vm_and_leaves_it_listed_for_the_activation(tmp_path: Path, hosts: Hosts) -> None:
    """The lab shows this with a tiny VM that ignores ACPI; here a guest that never stops."""
    run = host_maintenance(tmp_path)
    state_dir = run.request.state_dir
    hosts.hv1.domains.append(domain("lic1", RUNNING, migration_mode="none"))
    hosts.domain("lic1").shutdownFlags = lambda flags=0: 0  # type: ignore[method-assign]
    run.request.non_migratable = "shutdown"
    run.request.shutdown_timeout = 0
    with pytest.raises(MigrationError) as caught:
        run.maintenance(check_mode=False)
    assert caught.value.msg.startswith("VM(s) lic1 on hv1 did not shut down within 0 s")
    assert "Asked to shut down and still running: lic1." in caught.value.msg
    assert caught.value.details["still_shutting_down"] == ["lic1"]
    assert mk.read_mark(state_dir)["state"] == mk.ACTIVATING and mk.read_mark(state_dir)["shutdown_vms"] == ["lic1"]


# -- activating: the VMs shut down for the maintenance start again while the host is "activating"


def test_a_vm_that_cannot_start_keeps_the_host_activating_until_a_rerun_starts_it(tmp_path: Path, hosts: Hosts) -> None:
    run = host_maintenance(tmp_path)
    state_dir = run.request.state_dir
    hosts.hv1.domains += [domain(name) for name in ("a", "b", "c")]
    hosts.domain("b").errors["create"] = start_failure("b")
    mark = dict(MAINTENANCE_MARK, shutdown_vms=["a", "b", "c"])
    mk.write_mark(state_dir, mark)
    seen: t.List[t.Tuple[str, str, t.List[str]]] = []
    for dom in hosts.hv1.domains:

        def create(dom: FakeDomain = dom) -> int:
            now = mk.read_mark(state_dir) or {}
            seen.append((dom.name(), now.get("state"), now.get("shutdown_vms")))
            return FakeDomain.create(dom)

        dom.create = create  # type: ignore[method-assign]

    with pytest.raises(MigrationError) as caught:
        run.activate(check_mode=False)
    activating = dict(mark, state=mk.ACTIVATING, shutdown_vms=["b"])
    assert caught.value.msg.startswith("hv1 stays in state activating (it takes no incoming VM): 1 VM(s) shut down for its maintenance could not start: ")
    assert "Could not open '/var/lib/libvirt/images/b.qcow2': Permission denied" in caught.value.msg
    assert caught.value.msg.endswith("Fix them, then run state=active again.")
    details = caught.value.details
    assert (details["changed"], details["started"], details["not_started"]) == (True, ["a", "c"], ["b"])
    assert details["maintenance"] == activating
    assert mk.read_mark(state_dir) == activating
    # Every start ran under an "activating" mark listing the VMs not started yet.
    assert seen == [("a", mk.ACTIVATING, ["a", "b", "c"]), ("b", mk.ACTIVATING, ["b", "c"]), ("c", mk.ACTIVATING, ["b", "c"])]

    assert run.activate(check_mode=True) == {"changed": True, "host": "hv1", "started": ["b"], "maintenance": None, "previous": activating}
    assert mk.read_mark(state_dir) == activating

    del hosts.domain("b").errors["create"]
    assert run.activate(check_mode=False) == {"changed": True, "host": "hv1", "started": ["b"], "maintenance": None, "previous": activating}
    assert mk.read_mark(state_dir) is None
    assert {name: starts(hosts.domain(name)) for name in "abc"} == {"a": 1, "b": 2, "c": 1}
    assert run.activate(check_mode=False) == {"changed": False, "host": "hv1", "maintenance": None, "msg": "hv1 is not in maintenance."}


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
        rq.maintenance_request(dict(BASE, **changes))


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
    assert getattr(rq.maintenance_request(dict(BASE, **{name: value})), attribute) == value


def test_active_needs_no_candidates() -> None:
    request = rq.maintenance_request({"state": "active"})
    assert request.candidates == [] and request.state_dir == DEFAULT_STATE_DIR and request.max_outgoing == 2


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


def test_report_ends_with_the_time_per_phase() -> None:
    lines = maintenance_report(dict(RESULT, timings={"connect": 0.01, "probe": 0.21, "moves": 6.43, "total": 7.0}))
    assert lines[-1] == "Time per phase: connect 0.0 s, probe 0.2 s, moves 6.4 s, total 7.0 s"


@pytest.mark.parametrize("check_mode", [True, False])
def test_an_audit_log_that_is_a_symlink_is_refused_before_anything_moves(tmp_path: Path, hosts: Hosts, check_mode: bool) -> None:
    hosts.hv1.domains += [domain("a1", RUNNING)]
    request = host_maintenance(tmp_path).request
    log_dir = Path(request.log_dir)
    log_dir.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (log_dir / mt.EVENT_LOG).symlink_to(victim)
    with pytest.raises(MigrationError, match="events.jsonl: it is a symbolic link; refusing to follow it"):
        mt.HostMaintenance(request).maintenance(check_mode=check_mode)
    assert not hosts.migrations and mk.read_mark(request.state_dir) is None
    assert victim.read_text() == "precious\n"


def test_the_audit_log_is_private(tmp_path: Path, hosts: Hosts) -> None:
    hosts.hv1.domains += [domain("a1", RUNNING)]
    request = host_maintenance(tmp_path).request
    mt.HostMaintenance(request).maintenance(check_mode=False)
    log = Path(request.log_dir) / mt.EVENT_LOG
    assert [json.loads(line)["vm"] for line in log.read_text().splitlines()] == ["a1"]
    assert log.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("check_mode", [True, False])
def test_a_state_directory_others_can_write_is_refused_even_without_a_mark(tmp_path: Path, hosts: Hosts, check_mode: bool) -> None:
    hosts.hv1.domains += [domain("a1", RUNNING)]
    request = host_maintenance(tmp_path).request
    state_dir = Path(request.state_dir)
    state_dir.mkdir()
    state_dir.chmod(0o777)
    with pytest.raises(MigrationError, match="is writable by other users .mode 777.; refusing to use it"):
        mt.HostMaintenance(request).maintenance(check_mode=check_mode)
    assert not hosts.migrations and list(state_dir.iterdir()) == []


# -- local disks copied with the moves (storage copy / auto)

IMAGES = "/var/lib/libvirt/images"
GIB = 1024**3


def disk_domain(name: str) -> FakeDomain:
    """A running VM with one qcow2 disk at IMAGES/<name>.qcow2."""
    dom = domain(name, RUNNING)
    dom.xml = dom.xml.replace(
        "<devices/>",
        "<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/><source file='%s/%s.qcow2'/>"
        "<target dev='vda' bus='virtio'/></disk></devices>" % (IMAGES, name),
    )
    return dom


@pytest.fixture
def copying(hosts: Hosts, monkeypatch: pytest.MonkeyPatch) -> t.Tuple[FakePool, FakePool]:
    """hv1's and hv2's dir pools at IMAGES; the job runner moves the VM inside ``around`` (the disk copies' create and cleanup)."""
    source_pool, dest_pool = FakePool("default"), FakePool("default")
    hosts.hv1.pools.append(source_pool)
    hosts.hv2.pools.append(dest_pool)

    class CopyingRunner:
        def __init__(self, _options: t.Any, _connect: t.Any, _vm: str, log: t.Callable[[str], None]) -> None:
            self.timings: t.Dict[str, float] = {}
            self.events: t.List[t.Dict[str, t.Any]] = []

        def event(self, name: str, **details: t.Any) -> None:
            self.events.append(dict(details, event=name))

        def carry_out(self, move: Move, _others: t.Sequence[Candidate] = (), around: t.Any = None) -> t.Dict[str, t.Any]:
            hosts.migrations.append(move)

            def job() -> t.Dict[str, t.Any]:
                # The volumes exist on hv2 by now: the job runs after they were created.
                assert all(any(vol.name() == "%s.qcow2" % move.vm for vol in dest_pool.volumes) for _disk in move.copy_disks)
                if hosts.migration_error is not None:
                    raise hosts.migration_error
                dom = next(dom for dom in hosts.hv1.domains if dom.UUIDString() == move.uuid)
                hosts.hv1.domains.remove(dom)
                hosts.hv2.domains.append(dom)
                return {"changed": True, "vm_state": "running"}

            result = around(job) if around is not None else job()
            return dict(result, outcome="migrated")

    monkeypatch.setattr(batch_mod, "JobRunner", CopyingRunner)
    return source_pool, dest_pool


def copy_request(tmp_path: Path, **changes: t.Any) -> mt.MaintenanceRequest:
    request = host_maintenance(tmp_path).request
    request.storage = "copy"
    for name, value in changes.items():
        setattr(request, name, value)
    return request


def copies_dir(tmp_path: Path) -> t.List[str]:
    directory = tmp_path / "state" / "copies"
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []


def test_an_evacuation_copies_local_disks_under_the_manifest_and_keeps_the_source_disks(
    tmp_path: Path, hosts: Hosts, copying: t.Tuple[FakePool, FakePool]
) -> None:
    source_pool, dest_pool = copying
    hosts.hv1.domains += [disk_domain("a1"), disk_domain("b2")]
    source_pool.add("a1.qcow2", 20 * GIB, 4 * GIB)
    source_pool.add("b2.qcow2", 20 * GIB, 2 * GIB)
    planned = mt.HostMaintenance(copy_request(tmp_path)).maintenance(check_mode=True)
    shown = {move["vm"]: move for move in planned["plan"]["moves"]}
    assert shown["a1"]["copy_disks"] == ["vda"] and shown["a1"]["storage"][0]["path"] == IMAGES + "/a1.qcow2"
    assert shown["a1"]["storage"][0]["action"] == "copy" and shown["a1"]["storage"][0]["allocated_bytes"] == 4 * GIB
    assert planned["plan"]["load"]["hv2"]["copy_bytes_by_pool"]["default"] > 6 * GIB
    assert not dest_pool.created and not hosts.migrations and not copies_dir(tmp_path)
    result = mt.HostMaintenance(copy_request(tmp_path)).maintenance(check_mode=False)
    assert [record["outcome"] for record in result["vms"]] == ["migrated", "migrated"]
    assert sorted(vol.path() for vol in dest_pool.volumes) == [IMAGES + "/a1.qcow2", IMAGES + "/b2.qcow2"]
    for record in result["vms"]:
        path = "%s/%s.qcow2" % (IMAGES, record["vm"])
        assert record["storage"]["destination_disks"] == {"vda": path}
        assert record["storage"]["source_disks_kept"] == [path] and record["storage"]["source_disks_removed"] == []
        assert [event["event"] for event in record["events"]] == ["volumes_created"]
    assert len(source_pool.volumes) == 2 and not copies_dir(tmp_path)
    assert result["maintenance"]["state"] == mk.MAINTENANCE


def test_remove_source_disks_deletes_the_copied_source_volumes_after_the_verified_move(
    tmp_path: Path, hosts: Hosts, copying: t.Tuple[FakePool, FakePool]
) -> None:
    source_pool, _dest_pool = copying
    hosts.hv1.domains.append(disk_domain("a1"))
    source_pool.add("a1.qcow2", 20 * GIB, 4 * GIB)
    result = mt.HostMaintenance(copy_request(tmp_path, remove_source_disks=True)).maintenance(check_mode=False)
    [record] = result["vms"]
    assert record["storage"]["source_disks_removed"] == [IMAGES + "/a1.qcow2"] and record["storage"]["source_disks_kept"] == []
    assert source_pool.deleted == [IMAGES + "/a1.qcow2"] and not source_pool.volumes


def test_a_failed_copy_move_deletes_its_volumes_and_the_vm_stays_on_the_source(
    tmp_path: Path, hosts: Hosts, copying: t.Tuple[FakePool, FakePool]
) -> None:
    source_pool, dest_pool = copying
    hosts.hv1.domains.append(disk_domain("a1"))
    source_pool.add("a1.qcow2", 20 * GIB, 4 * GIB)
    hosts.migration_error = MigrationError("operation failed: migration of disk vda failed: No space left on device", vm="a1")
    with pytest.raises(MigrationError) as caught:
        mt.HostMaintenance(copy_request(tmp_path, remove_source_disks=True)).maintenance(check_mode=False)
    [record] = caught.value.details["vms"]
    assert record["outcome"] == "failed" and "No space left" in record["error"]
    assert [event["event"] for event in record["events"]] == ["volumes_created", "copies_cleaned"]
    assert dest_pool.deleted == [IMAGES + "/a1.qcow2"] and not dest_pool.volumes
    assert [dom.name() for dom in hosts.hv1.domains] == ["a1"] and len(source_pool.volumes) == 1 and not source_pool.deleted
    assert not copies_dir(tmp_path) and mk.read_mark(str(tmp_path / "state")) is None


def test_no_room_for_the_copies_leaves_the_vm_unplaceable_before_anything_moves(
    tmp_path: Path, hosts: Hosts, copying: t.Tuple[FakePool, FakePool]
) -> None:
    source_pool, dest_pool = copying
    dest_pool.available = 3 * GIB
    hosts.hv1.domains.append(disk_domain("a1"))
    source_pool.add("a1.qcow2", 20 * GIB, 4 * GIB)
    with pytest.raises(MigrationError) as caught:
        mt.HostMaintenance(copy_request(tmp_path)).maintenance(check_mode=True)
    assert "the pool 'default' on hv2 has 3072 MiB free after planned copies" in caught.value.msg
    assert caught.value.details["plan"]["unplaceable"][0]["vm"] == "a1" and not hosts.migrations


@pytest.mark.parametrize("check_mode", [True, False])
def test_a_lost_runs_copies_are_cleaned_before_the_plan(tmp_path: Path, hosts: Hosts, copying: t.Tuple[FakePool, FakePool], check_mode: bool) -> None:
    source_pool, dest_pool = copying
    dom = disk_domain("a1")
    hosts.hv1.domains.append(dom)
    source_pool.add("a1.qcow2", 20 * GIB, 4 * GIB)
    dest_pool.add("a1.qcow2", 20 * GIB)  # created by a run that died before its job
    disk_io.CopyManifest(str(tmp_path / "state")).write("a1", dom.UUIDString(), HV2_URI, [IMAGES + "/a1.qcow2"])
    result = mt.HostMaintenance(copy_request(tmp_path)).maintenance(check_mode=check_mode)
    if check_mode:
        assert any("interrupted disk copy" in warning for warning in result["warnings"])
        assert result["plan"]["ok"] and not dest_pool.deleted and copies_dir(tmp_path)
    else:
        assert result["copies_cleaned"][0]["deleted"] == [IMAGES + "/a1.qcow2"] and dest_pool.deleted == [IMAGES + "/a1.qcow2"]
        assert [record["outcome"] for record in result["vms"]] == ["migrated"] and len(dest_pool.volumes) == 1 and not copies_dir(tmp_path)
