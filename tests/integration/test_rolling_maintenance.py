"""playbooks/patch_cluster.yml on the 3-host lab: the N-1 check, the rolling pipeline, resume, failure.

The patch step is a task file of the test's (the default upgrades the machine's packages, which the lab
hosts share with it): it writes a file into the host's private state directory and says a reboot is
required; the lab's reboot is a restart of the host's libvirtd (the inventory's
``virtops_reboot_command``). The verdicts come from the hosts themselves (the files the patch step and
the role left there, read over SSH; libvirtd's process), from libvirt (the lab's no-VM-lost check, where
each VM runs), and from the run's set_stats data, as AWX would show it; one run goes through
ansible-runner with the private data directory laid out as AWX lays it out.

The VMs are tiny VMs (the session's, and the one the N-1 test adds): the pipeline plans, moves and
reports domains and never looks into a guest, and every verdict here is read from the hosts and from
libvirt, not from inside a VM.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest
import yaml

from labkit import assert_no_vm_lost, lab_status, maintenance_mark, run_module, run_playbook_report, running_on, uri, virsh, virtlab

REPO = Path(__file__).resolve().parents[2]
PATCH_CLUSTER = REPO / "playbooks" / "patch_cluster.yml"
ACTIVATE = REPO / "playbooks" / "activate.yml"
HOSTS = ("lab-h1", "lab-h2", "lab-h3")
STATE_DIR = "/var/lib/virtops-migration"
RUN_MARK = STATE_DIR + "/rolling-maintenance.json"
PATCHED = STATE_DIR + "/patched-by-test"
HOOK_FILE = STATE_DIR + "/hook-by-test"

PATCH_TASKS = """\
- name: Record the patch on the host
  ansible.builtin.shell: echo "{{ rolling_maintenance_run_id }}" >> %s
  changed_when: true

- name: Fail on the host the test names
  ansible.builtin.fail:
    msg: the test's patch step fails on {{ inventory_hostname }}
  when: inventory_hostname == (fail_on | default(''))

- name: Say that the host must reboot
  ansible.builtin.set_fact:
    rolling_maintenance_reboot_required: true
""" % PATCHED


def on_host(host: str, command: str) -> str:
    """A shell command's output on a lab host, over SSH as Ansible reaches it."""
    return virtlab("ssh", host, "--", command).stdout


def read_json(host: str, path: str) -> dict[str, t.Any] | None:
    out = on_host(host, "cat %s 2>/dev/null || true" % path).strip()
    return json.loads(out) if out else None


def placement() -> dict[str, str]:
    return {vm: running_on(vm) for vm in ("web1", "db1", "batch1", "web2", "cache1")}


def patch(inventory: Path, tmp_path: Path, check_mode: bool = False, **extra: t.Any) -> tuple[int, dict[str, t.Any], str]:
    tasks = tmp_path / "patch.yml"
    tasks.write_text(PATCH_TASKS)
    proc, report = run_playbook_report(inventory, PATCH_CLUSTER, {"cluster": "lab", "patch_tasks": str(tasks), "reboot": "when_required", **extra},
                                       check_mode=check_mode)
    failed = [
        "%s %s: %s" % (host, task["task"]["name"], result.get("msg", ""))
        for play in report["plays"]
        for task in play["tasks"]
        for host, result in task["hosts"].items()
        if result.get("failed")
    ]
    return proc.returncode, report, "\n".join(failed) or proc.stderr[-3000:]


def changed(report: dict[str, t.Any]) -> dict[str, int]:
    return {host: stats["changed"] for host, stats in report["stats"].items()}


def summary(report: dict[str, t.Any]) -> dict[str, t.Any]:
    return report.get("global_custom_stats", {}).get("rolling_maintenance", {})


def debug_lines(report: dict[str, t.Any], task_name: str) -> list[str]:
    for play in report["plays"]:
        for task in play["tasks"]:
            if task["task"]["name"].split(" : ")[-1] == task_name:
                for result in task["hosts"].values():
                    if "__rolling_maintenance_sequence" in result:
                        return list(result["__rolling_maintenance_sequence"])
    raise AssertionError("no task %r with the sequence in the report" % task_name)


def libvirtd_pid(host: str) -> int:
    """The pid of the host's libvirtd, as the lab knows it."""
    return {entry["name"]: entry["libvirtd_pid"] for entry in lab_status()["hosts"]}[host]


@pytest.fixture()
def clean_marks(lab: Path) -> t.Iterator[None]:
    """Every host without the run's mark or the patch file before and after the test, and active."""
    for host in HOSTS:
        on_host(host, "rm -f %s %s %s" % (RUN_MARK, PATCHED, HOOK_FILE))
    yield
    for host in HOSTS:
        if maintenance_mark(host):
            run_playbook_report(lab, ACTIVATE, {"target": host})
        on_host(host, "rm -f %s %s %s" % (RUN_MARK, PATCHED, HOOK_FILE))


def test_check_then_patch_then_rerun_changes_nothing(lab: Path, tmp_path: Path, clean_marks: None) -> None:
    before = placement()
    run_id = "t-%s" % secrets.token_hex(3)

    rc, report, failures = patch(lab, tmp_path, check_mode=True, run_id=run_id)
    assert rc == 0, failures
    sequence = debug_lines(report, "Show the sequence, host by host")
    assert [line.split(":")[0] for line in sequence] == ["1. lab-h1", "2. lab-h2", "3. lab-h3"], sequence
    # Each host's line names the lab VMs running on it now (earlier tests of the session may have moved them).
    for index, host in enumerate(HOSTS):
        for vm, where in before.items():
            assert ("%s -> " % vm in sequence[index]) == (where == host), (vm, where, sequence)
    assert placement() == before
    assert all(read_json(host, RUN_MARK) is None and maintenance_mark(host) is None for host in HOSTS)

    pids = {host: libvirtd_pid(host) for host in HOSTS}
    rc, report, failures = patch(lab, tmp_path, run_id=run_id, progress_interval="1")
    assert rc == 0, failures
    # Progress lines while the VMs moved (a look every second; each evacuation takes a few seconds).
    progress = [line for play in report["plays"] for task in play["tasks"] if task["task"]["name"].endswith("Show the evacuation's progress until it ends")
                for result in task["hosts"].values() for line in result.get("progress", [])]
    assert progress, "no progress line while the hosts were evacuated"
    for line in progress:
        assert re.fullmatch(r"lab-h\d: (planning|\d+ of \d+ moves ended \(\d+ failed\)(; moving now: \S+ -> lab-h\d(, \S+ -> lab-h\d)*)?)", line), line
    for host in HOSTS:
        mark = read_json(host, RUN_MARK)
        assert mark is not None and mark["run"] == run_id and mark["rebooted"] is True, (host, mark)
        assert on_host(host, "cat %s" % PATCHED).split() == [run_id], host
        assert maintenance_mark(host) is None, host
        assert libvirtd_pid(host) != pids[host], "%s: libvirtd was not restarted" % host
    stats = summary(report)
    assert stats["run"] == run_id and "failed" not in stats, stats
    assert {host: entry["status"] for host, entry in stats["hosts"].items()} == {host: "patched" for host in HOSTS}, stats
    assert_no_vm_lost()

    # A rerun of the same run passes over every host: nothing moves, nothing changes.
    after = placement()
    rc, report, failures = patch(lab, tmp_path, run_id=run_id)
    assert rc == 0, failures
    assert set(changed(report).values()) == {0}, changed(report)
    assert placement() == after
    assert all(on_host(host, "cat %s" % PATCHED).split() == [run_id] for host in HOSTS)
    assert_no_vm_lost()


def test_a_failing_patch_stops_the_pipeline_with_that_host_in_maintenance(lab: Path, tmp_path: Path, clean_marks: None) -> None:
    run_id = "t-%s" % secrets.token_hex(3)
    rc, report, failures = patch(lab, tmp_path, run_id=run_id, fail_on="lab-h2")
    assert rc != 0 and "the test's patch step fails on lab-h2" in failures, failures

    assert read_json("lab-h1", RUN_MARK)["run"] == run_id  # type: ignore[index]
    assert maintenance_mark("lab-h1") is None
    mark = maintenance_mark("lab-h2")
    assert mark is not None and mark["state"] == "maintenance", mark
    assert read_json("lab-h2", RUN_MARK) is None
    assert not [vm for vm, host in placement().items() if host == "lab-h2"]
    # lab-h3 was never touched.
    assert read_json("lab-h3", RUN_MARK) is None and maintenance_mark("lab-h3") is None
    assert on_host("lab-h3", "cat %s 2>/dev/null || true" % PATCHED).strip() == ""
    stats = summary(report)
    assert stats["failed"] == "lab-h2" and stats["hosts"]["lab-h2"]["status"] == "failed", stats
    assert stats["hosts"]["lab-h1"]["status"] == "patched" and "lab-h3" not in stats["hosts"], stats
    assert_no_vm_lost()

    # The rerun after the fix passes over lab-h1 and patches lab-h2 (in maintenance already) and lab-h3.
    rc, report, failures = patch(lab, tmp_path, run_id=run_id)
    assert rc == 0, failures
    assert on_host("lab-h1", "cat %s" % PATCHED).split() == [run_id]
    assert all(read_json(host, RUN_MARK)["run"] == run_id and maintenance_mark(host) is None for host in HOSTS)  # type: ignore[index]
    assert_no_vm_lost()


def test_a_cluster_that_cannot_lose_a_host_is_refused_before_anything_moves(lab: Path, tmp_path: Path, clean_marks: None) -> None:
    vm = "rm%s" % secrets.token_hex(3)
    virtlab("add-vm", "--tiny", "%s:160@3" % vm)  # a domain that must not move: no guest needed
    try:
        result = run_module(lab, "lab-h3", "virtops.migration.migration_policy", {"name": vm, "migration_mode": "none"})
        assert result.get("changed") is True, result
        before = placement()
        rc, report, failures = patch(lab, tmp_path, run_id="t-%s" % secrets.token_hex(3))
        assert rc != 0 and "cannot lose lab-h3" in failures and vm in failures, failures
        assert placement() == before and running_on(vm) == "lab-h3"
        assert all(read_json(host, RUN_MARK) is None and maintenance_mark(host) is None for host in HOSTS)
        assert all(on_host(host, "cat %s 2>/dev/null || true" % PATCHED).strip() == "" for host in HOSTS)
        assert summary(report) == {}
        assert_no_vm_lost()
    finally:
        virtlab("remove-vm", vm, check=False)


# A user's stage hook that starts a transient tiny VM on lab-h1 after its evacuation: the mark is switched
# to "activating" for the start (the maintenance hook lets VM starts through then) and put back, so that
# the host is marked, its hook loaded, and a domain runs on it all the same.
START_TRANSIENT = """\
- name: Start a transient VM on the evacuated host
  ansible.builtin.shell: |
    set -e
    mark={{ rolling_maintenance_state_dir }}/maintenance.json
    cp -p "$mark" "$mark.test"
    sed -i 's/"state": *"maintenance"/"state": "activating"/' "$mark"
    echo "<domain type='qemu'><name>%(vm)s</name><memory unit='MiB'>32</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>" > /tmp/%(vm)s.xml
    virsh -c qemu:///system create /tmp/%(vm)s.xml
    mv "$mark.test" "$mark"
  changed_when: true
  when: inventory_hostname == 'lab-h1'
"""

# A stage hook that removes lab-h1's maintenance mark, as someone activating it by hand would.
REMOVE_MARK = """\
- name: Remove the maintenance mark of the evacuated host
  ansible.builtin.file:
    path: "{{ rolling_maintenance_state_dir }}/maintenance.json"
    state: absent
  when: inventory_hostname == 'lab-h1'
"""


@pytest.mark.parametrize("stage, hook, named", [
    ("after_evacuation", START_TRANSIENT, "domains running on it: %(vm)s (1 transient)"),
    ("before_patch", REMOVE_MARK, "its maintenance mark is gone"),
])
def test_the_pipeline_reads_the_host_again_before_patching(lab: Path, tmp_path: Path, clean_marks: None, stage: str, hook: str, named: str) -> None:
    """A domain started on the evacuated host, or its mark removed, stops the pipeline before the patch and the reboot."""
    vm = "tr%s" % secrets.token_hex(3)
    hook_file = tmp_path / "hook.yml"
    hook_file.write_text(hook % {"vm": vm})
    pid = libvirtd_pid("lab-h1")
    try:
        rc, report, failures = patch(lab, tmp_path, run_id="t-%s" % secrets.token_hex(3), **{"rolling_maintenance_%s_tasks" % stage: str(hook_file)})
        assert rc != 0 and "lab-h1 is not safe for the patch" in failures and named % {"vm": vm} in failures, failures
        # Stopped before the patch and the reboot, lab-h1 left as the hook left it, never activated.
        assert on_host("lab-h1", "cat %s 2>/dev/null || true" % PATCHED).strip() == ""
        assert libvirtd_pid("lab-h1") == pid, "lab-h1's libvirtd was restarted (the lab's reboot)"
        assert read_json("lab-h1", RUN_MARK) is None
        mark = maintenance_mark("lab-h1")
        if stage == "after_evacuation":
            assert mark is not None and mark["state"] == "maintenance", mark
            assert virsh(uri(lab, "lab-h1"), "domstate", vm).stdout.strip() == "running"
        else:
            assert mark is None
        assert all(read_json(host, RUN_MARK) is None for host in HOSTS)
        assert summary(report)["failed"] == "lab-h1", summary(report)
    finally:
        on_host("lab-h1", "virsh -c qemu:///system destroy %s >/dev/null 2>&1; rm -f /tmp/%s.xml; true" % (vm, vm))
    assert_no_vm_lost()


INVENTORY_SCRIPT = """#!%s
# An inventory script as AWX gives one to ansible-runner: the lab's inventory, printed as JSON.
import json
import yaml

with open(%r) as handle:
    group = yaml.safe_load(handle)["all"]["children"]["lab"]
print(json.dumps({"lab": {"hosts": sorted(group["hosts"]), "vars": group["vars"]}, "_meta": {"hostvars": group["hosts"]}}))
"""


def test_patch_cluster_through_ansible_runner_as_awx_runs_it(lab: Path, tmp_path: Path, clean_marks: None) -> None:
    """The private data directory as AWX lays it out; answers typed as a survey gives them (strings)."""
    run_id = "t-%s" % secrets.token_hex(3)
    private = tmp_path / "private"
    for directory in ("env", "inventory", "project"):
        (private / directory).mkdir(parents=True)
    (private / "project" / "patch_cluster.yml").symlink_to(PATCH_CLUSTER)
    tasks = tmp_path / "patch.yml"
    tasks.write_text(PATCH_TASKS)
    hosts = private / "inventory" / "hosts"
    hosts.write_text(INVENTORY_SCRIPT % (sys.executable, str(lab)))
    hosts.chmod(0o755)
    hook = tmp_path / "before_patch.yml"
    hook.write_text("- name: Note the stage\n  ansible.builtin.copy:\n    content: before patch\n    dest: %s\n    mode: '0644'\n" % HOOK_FILE)
    before = placement()
    extravars = {"cluster": "lab", "patch_tasks": str(tasks), "reboot": "never", "move_back": "true", "force": "true", "run_id": run_id,
                 "host_order": "", "progress_interval": "", "rolling_maintenance_before_patch_tasks": str(hook)}
    (private / "env" / "extravars").write_text(yaml.safe_dump(extravars))
    (private / "env" / "cmdline").write_text("--forks 5")
    (private / "env" / "envvars").write_text(yaml.safe_dump({
        "ANSIBLE_COLLECTIONS_PATH": os.environ["ANSIBLE_COLLECTIONS_PATH"],
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_NOCOLOR": "1",
    }))
    runner = Path(sys.executable).parent / "ansible-runner"
    proc = subprocess.run([str(runner), "run", str(private), "-p", "patch_cluster.yml", "--ident", run_id],
                          capture_output=True, text=True, timeout=1800, check=False)
    artifacts = private / "artifacts" / run_id
    assert (artifacts / "rc").read_text().strip() == "0", proc.stdout[-4000:] + proc.stderr[-2000:]
    assert (artifacts / "status").read_text().strip() == "successful"
    events = [json.loads(path.read_text()) for path in sorted((artifacts / "job_events").glob("*.json"))]
    stats = [event for event in events if event.get("event") == "playbook_on_stats"]
    assert len(stats) == 1, [event.get("event") for event in events][-10:]
    data = stats[0]["event_data"]["artifact_data"]["rolling_maintenance"]
    assert data["run"] == run_id and {host: entry["status"] for host, entry in data["hosts"].items()} == {host: "patched" for host in HOSTS}, data
    assert all(entry["rebooted"] is False and entry["moved_back"] == entry["moved"] for entry in data["hosts"].values()), data
    assert sum(entry["moved"] for entry in data["hosts"].values()) >= len(before), data
    # Every VM went back to the host it ran on before its host's turn, and each host ran the stage hook.
    assert placement() == before
    assert all(on_host(host, "cat %s" % HOOK_FILE).strip() == "before patch" for host in HOSTS)
    assert all(read_json(host, RUN_MARK)["run"] == run_id for host in HOSTS)  # type: ignore[index]
    assert_no_vm_lost()
