"""Guest hooks on a real lab guest: the role installs them, the modules run them through the guest agent.

The guest is one of the lab's Python guests (`virtlab add-vm --python`): Debian's python3 in the initramfs, so
that Ansible reaches it through the ``community.libvirt.libvirt_qemu`` connection and the role's runner
(``/usr/local/sbin/virtops-run-hooks``, Python 3) runs in it. One guest serves every test of the module and is
removed at its end. The role's own test runs first, on the fresh guest: check mode, a run that installs the
runner, its configuration and the hooks, and a rerun. Each test after it states its hooks, which are then
written straight into the guest through its agent (the previous test's hooks removed, the records of the
recording hook cleared, the runner's per-hook timeout set in its configuration file); it then moves the
guest from the host it runs on at that moment to another lab host, or hibernates it there and evacuates
that host. The verdicts come from inside the guest (files the hooks wrote, the lines the runner added to
its log during the test, its processes, read through ``virtlab exec``), from each host's own copy of the
guest's serial console, and from libvirt (virsh, the lab's no-VM-lost check), not from the module's words
alone.

The hooks run as ``nobody`` (the role's ``guest_hooks_user``), which the Python guests have, so the role
creates no user.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import typing as t
from pathlib import Path

import pytest
import yaml

from labkit import (
    guest_exec,
    GUEST_PYTHON,
    assert_no_vm_lost,
    console_log,
    failing_python,
    guest_inventory,
    guest_uptime,
    read_marker,
    run_module,
    run_playbook_report,
    running_on,
    uri,
    virsh,
    virtlab,
    vm_homes,
    write_marker,
)

pytestmark = pytest.mark.python_guests

MIGRATE = "virtops.migration.vm_migrate"
HIBERNATE = "virtops.migration.vm_hibernate"
MAINTENANCE = "virtops.migration.host_maintenance"
HOSTS = ("lab-h1", "lab-h2", "lab-h3")
RUNNER = "/usr/local/sbin/virtops-run-hooks"
BASE_DIR = "/etc/virtops/hooks.d"
# The runner's configuration file (the role's guest_hooks_config_path): an INI file whose [hooks] section
# the role writes one "key = value" line per setting, among them "timeout = {{ guest_hooks_timeout }}".
RUNNER_CONFIG = "/etc/virtops/hooks.conf"
# The role's default guest_hooks_timeout, which the role test installs (seconds per hook).
RUNNER_TIMEOUT = 30
RUNNER_LOG = "/var/log/virtops-hooks.log"
HOOK_USER = "nobody"
# Where the recording hook writes, one file per event (the hook user may write in /tmp, mode 1777).
RECORDS = "/tmp/hook-records"
PYTHON_GUEST_MIB = 256

# A hook that records its run: one line per run with the event, the guest's uptime (a monotonic clock
# that only the guest keeps, carried over by a live migration) and the user it ran as; its output
# names the event and the uptime, so that the runner's log line for it can be found on the host.
RECORD_HOOK = r"""#!/bin/sh
read -r uptime _ < /proc/uptime
mkdir -p /tmp/hook-records
echo "$VIRTOPS_HOOK_EVENT $uptime $(id -un)" >> "/tmp/hook-records/$VIRTOPS_HOOK_EVENT"
echo "recorded $VIRTOPS_HOOK_EVENT at $uptime"
"""
FAILING_HOOK = r"""#!/bin/sh
echo "refusing $VIRTOPS_HOOK_EVENT: the application is busy"
exit 1
"""
# Hangs, with a second process in its group: the runner's per-hook timeout must stop both.
HANGING_HOOK = r"""#!/bin/sh
mkdir -p /tmp/hook-records
echo "$VIRTOPS_HOOK_EVENT started $$" >> "/tmp/hook-records/$VIRTOPS_HOOK_EVENT"
sleep 601 &
sleep 600
"""

PLAYBOOK = """---
- name: Guest hooks in the lab's Python guests
  hosts: guests
  gather_facts: false
  roles:
    - role: virtops.migration.guest_hooks
"""

# Sets one test's hooks in the guest, as root: removes every hook of every event, clears the recording
# hook's records, sets the runner's per-hook timeout, writes each hook (pairs of EVENT/NAME and content
# after the first three arguments) with mode 0755, and prints how many lines the runner's log has.
# Exits 3, changing nothing, when the role has not installed the runner and its configuration.
SET_HOOKS = r"""
set -e
base=$1 config=$2 timeout=$3
shift 3
[ -x "%(runner)s" ] && [ -f "$config" ] || exit 3
for dir in "$base"/*/; do rm -rf -- "$dir"*; done
rm -rf %(records)s
sed -i "s/^timeout = .*/timeout = $timeout/" "$config"
grep -qx "timeout = $timeout" "$config" || { echo "no line 'timeout = $timeout' in $config" >&2; exit 1; }
while [ $# -gt 0 ]; do
    printf '%%s' "$2" > "$base/$1"
    chmod 0755 "$base/$1"
    shift 2
done
if [ -f %(log)s ]; then wc -l < %(log)s; else echo 0; fi
""" % {"runner": RUNNER, "records": RECORDS, "log": RUNNER_LOG}


def hook(event: str, name: str, content: str) -> dict[str, str]:
    return {"event": event, "name": name, "content": content}


def recording(*events: str) -> list[dict[str, str]]:
    return [hook(event, "10-record", RECORD_HOOK) for event in events]


@pytest.fixture(scope="module")
def shared_guest(lab: Path) -> t.Iterator[str]:  # pylint: disable=unused-argument
    """The module's one Python guest, started on lab-h1; removed at the end of the module."""
    vm = "py%s" % secrets.token_hex(3)
    try:
        virtlab("add-vm", "--python", "%s:%d@1" % (vm, PYTHON_GUEST_MIB))
        yield vm
    finally:
        virtlab("remove-vm", vm, check=False)


def install(lab: Path, tmp_path: Path, guests: t.Mapping[str, t.Mapping[str, t.Any]], check_mode: bool = False) -> dict[str, t.Any]:
    """Run the guest_hooks role in the guests over libvirt_qemu; the play's stats per guest.

    ``guests`` maps each guest to its own role variables (its ``guest_hooks_hooks`` at least), written to
    the inventory as host variables, as a site keeps them.
    """
    playbook = tmp_path / "guest_hooks.yml"
    playbook.write_text(PLAYBOOK)
    inventory = guest_inventory(lab, tmp_path / "guests.yml", *guests)
    data = yaml.safe_load(inventory.read_text())
    for vm, role_vars in guests.items():
        data["all"]["children"]["guests"]["hosts"][vm].update(role_vars)
    inventory.write_text(yaml.safe_dump(data, default_flow_style=False, sort_keys=False))
    proc, report = run_playbook_report(inventory, playbook, {"guest_hooks_user": HOOK_USER}, check_mode=check_mode)
    failed = [task for play in report["plays"] for task in play["tasks"] for result in task["hosts"].values() if result.get("failed")]
    assert proc.returncode == 0 and not failed, "the role failed (exit %d): %s\n%s" % (proc.returncode, json.dumps(failed)[:4000], proc.stderr[-2000:])
    return report["stats"]


def guest(vm: str, *argv: str, check: bool = True) -> str:
    """Run a command in the guest through its agent; its standard output."""
    return guest_exec(vm, *argv, check=check).stdout


class HookCase:
    """The shared guest as one test set it up: its hooks, and the runner's log from the test's start on."""

    def __init__(self, vm: str, log_start: int) -> None:
        self.vm = vm
        self.log_start = log_start

    def runner_log(self) -> str:
        """The lines the runner added to its log in the guest since the test's hooks were set."""
        lines = guest(self.vm, "sh", "-c", "cat %s 2>/dev/null || true" % RUNNER_LOG).splitlines()
        return "\n".join(lines[self.log_start :])


def set_hooks(vm: str, hooks: t.Sequence[t.Mapping[str, str]], timeout: int) -> subprocess.CompletedProcess[str]:
    """Write ``hooks`` (and nothing else) into the guest with the runner's per-hook ``timeout`` (see SET_HOOKS)."""
    pairs = [item for entry in hooks for item in ("%s/%s" % (entry["event"], entry["name"]), entry["content"])]
    return virtlab("exec", vm, "--", "sh", "-c", SET_HOOKS, "sh", BASE_DIR, RUNNER_CONFIG, str(timeout), *pairs, check=False)


@pytest.fixture()
def hooks_case(lab: Path, shared_guest: str, tmp_path: Path) -> t.Iterator[t.Callable[..., HookCase]]:
    """Sets the shared guest's hooks for one test: ``hooks_case(hooks, timeout=RUNNER_TIMEOUT)``.

    ``hooks`` are role-style entries (:func:`hook`, :func:`recording`), written as root with mode 0755
    into ``BASE_DIR/EVENT/NAME`` through the guest agent, after the previous test's hooks and the
    recording hook's records are removed; ``timeout`` is the runner's per-hook timeout in its
    configuration file. When the role test did not leave the runner installed, the role installs it
    first. After the test, the guest runs again wherever it is defined (a test that stopped with the
    guest hibernated leaves it saved), and its hooks are removed and the timeout set back to the role's.
    """
    vm = shared_guest

    def make(hooks: t.Sequence[t.Mapping[str, str]], timeout: int = RUNNER_TIMEOUT) -> HookCase:
        proc = set_hooks(vm, hooks, timeout)
        if proc.returncode == 3:
            install(lab, tmp_path, {vm: {"guest_hooks_python_interpreter": GUEST_PYTHON}})
            proc = set_hooks(vm, hooks, timeout)
        assert proc.returncode == 0, "cannot set the guest's hooks (exit %d): %s%s" % (proc.returncode, proc.stdout, proc.stderr)
        return HookCase(vm, int(proc.stdout.split()[-1]))

    try:
        yield make
    finally:
        homes = vm_homes(vm)
        stopped = [host for host, state in homes.items() if state == "shut off"]
        if len(homes) == 1 and stopped:
            virsh(uri(lab, stopped[0]), "start", vm, check=False)
        set_hooks(vm, [], RUNNER_TIMEOUT)


def records(vm: str, event: str) -> list[list[str]]:
    """The lines the recording hook wrote for ``event`` in the guest, split into fields ([] when none)."""
    out = guest(vm, "sh", "-c", "cat %s/%s 2>/dev/null || true" % (RECORDS, event))
    return [line.split() for line in out.splitlines() if line.strip()]


def only_record(vm: str, event: str) -> tuple[str, str]:
    """The one line the recording hook wrote for ``event``: the guest uptime it ran at (as written) and its user."""
    lines = records(vm, event)
    assert len(lines) == 1 and lines[0][0] == event, "%s ran %d times: %s" % (event, len(lines), lines)
    return lines[0][1], lines[0][2]


def hook_events(result: t.Mapping[str, t.Any]) -> list[dict[str, t.Any]]:
    return [event for event in result.get("events", []) if event["event"] == "guest_hooks"]


def route(vm: str) -> tuple[str, str]:
    """Where the guest moves next: the host it runs on now, and the lab host after that one (lab-h3 wraps to lab-h1)."""
    source = running_on(vm)
    return source, HOSTS[(HOSTS.index(source) + 1) % len(HOSTS)]


def migrate(lab: Path, vm: str, source: str, destination: str, **options: t.Any) -> dict[str, t.Any]:
    """vm_migrate with guest hooks, the source named by its lab URI (so that the events name both hosts by URI)."""
    args = {"name": vm, "uri": uri(lab, source), "destination_uri": uri(lab, destination), "guest_hooks": True, **options}
    return run_module(lab, source, MIGRATE, args)


def warnings_of(result: t.Mapping[str, t.Any]) -> str:
    return " | ".join(str(item) for item in result.get("warnings", []))


# This test comes first in the module: its check mode needs the guest as it booted, with nothing installed.
def test_role_installs_hooks_over_the_guest_agent_check_run_rerun(lab: Path, shared_guest: str, tmp_path: Path) -> None:
    """Check mode on the fresh guest writes nothing, a run installs, a second run changes nothing. (A rerun in
    check mode is the unit tests' part: each role run over the guest agent costs about 45 s under TCG.)"""
    vm = shared_guest
    hooks = recording("before_migration", "after_migration")

    checked = install(lab, tmp_path, {vm: {"guest_hooks_hooks": hooks}}, check_mode=True)[vm]
    assert checked["changed"] > 0 and checked["failures"] == 0, checked
    assert guest(vm, "sh", "-c", "ls -d /etc/virtops %s 2>&1 || true" % RUNNER).count("No such file") == 2, "check mode wrote nothing"

    done = install(lab, tmp_path, {vm: {"guest_hooks_hooks": hooks}})[vm]
    assert done["changed"] > 0, done
    again = install(lab, tmp_path, {vm: {"guest_hooks_hooks": hooks}})[vm]
    assert again["changed"] == 0 and again["failures"] == 0, again

    # What the guest has: root's directories and hooks, not writable by the hook user, and the runner.
    listing = guest(
        vm,
        "stat",
        "-c",
        "%n %U %G %a %F",
        BASE_DIR,
        *("%s/%s" % (BASE_DIR, event) for event in ("before_migration", "after_migration", "before_hibernation", "after_hibernation")),
    )
    assert all(line.split()[1:4] == ["root", "root", "755"] and line.endswith("directory") for line in listing.splitlines()), listing
    hook_stat = guest(vm, "stat", "-c", "%U %G %a", "%s/before_migration/10-record" % BASE_DIR, RUNNER, RUNNER_CONFIG).split("\n")
    assert hook_stat[:3] == ["root root 755", "root root 755", "root root 644"], hook_stat
    assert guest(vm, "head", "-n", "1", RUNNER).startswith("#!/usr/bin/python3"), "the runner runs under the guest's Python"

    # The runner the modules call, run by hand: the hook runs as nobody, and its output comes back in the summary.
    before = guest_uptime(vm)
    summary = json.loads(guest(vm, RUNNER, "before_migration").splitlines()[-1])
    assert summary["event"] == "before_migration" and summary["refused"] is None and summary["failed"] == 0, summary
    assert [(entry["name"], entry["status"], entry["timed_out"]) for entry in summary["hooks"]] == [("10-record", 0, False)], summary
    [[event, uptime, user]] = records(vm, "before_migration")
    assert (event, user) == ("before_migration", HOOK_USER) and float(uptime) > before
    assert summary["hooks"][0]["output"] == "recorded before_migration at %s\n" % uptime
    assert records(vm, "after_migration") == [], "only the event's own hooks ran"
    assert "before_migration: hook 10-record: exit status 0" in guest(vm, "cat", RUNNER_LOG)
    assert_no_vm_lost()


def test_migration_runs_before_hooks_on_the_source_and_after_hooks_on_the_destination(lab: Path, hooks_case: t.Callable[..., HookCase]) -> None:
    """What proves where each hook ran: the guest cannot tell (its hostname is its own, its virtual
    hardware the same on every host), so the proof is the hosts' own record. The guest's system log
    writes the runner's lines, with each hook's output (the guest uptime at which it ran), to the serial
    console, and each lab host's QEMU writes the console of the guest while it runs there to that
    host's own console log. The before_migration line is in the source's log and not in the
    destination's; the after_migration line in the destination's and not in the source's. (Each line
    names an uptime of this test's own, so what earlier tests left in those logs cannot match it.) The
    guest's uptime, a clock that only the guest keeps and that a live migration carries over, orders the
    rest: read just before the task (on the source, as virsh shows), then the before hook, then the after
    hook, then read just after it (on the destination); each hook ran once.
    """
    vm = hooks_case(recording("before_migration", "after_migration")).vm
    source, destination = route(vm)
    marker = write_marker(vm)
    assert vm_homes(vm) == {source: "running"}
    started = guest_uptime(vm)

    moved = migrate(lab, vm, source, destination)
    ended = guest_uptime(vm)
    assert moved["changed"] is True and moved.get("failed") is not True, moved
    assert vm_homes(vm) == {destination: "running"}

    before, before_user = only_record(vm, "before_migration")
    after, after_user = only_record(vm, "after_migration")
    assert started < float(before) < float(after) < ended, (started, before, after, ended)
    assert before_user == after_user == HOOK_USER

    source_log, destination_log = console_log(source, vm), console_log(destination, vm)
    before_line, after_line = "recorded before_migration at %s" % before, "recorded after_migration at %s" % after
    assert before_line in source_log and before_line not in destination_log, "before_migration ran on %s" % source
    assert after_line in destination_log and after_line not in source_log, "after_migration ran on %s" % destination

    events = [event["event"] for event in moved["events"]]
    ran = hook_events(moved)
    assert [(event["hook_event"], event["host"], event["outcome"]) for event in ran] == [
        ("before_migration", uri(lab, source), "ok"),
        ("after_migration", uri(lab, destination), "ok"),
    ], ran
    hooks_at = [index for index, name in enumerate(events) if name == "guest_hooks"]
    assert hooks_at[0] < events.index("started") < hooks_at[1], "before hooks, then the job, then after hooks: %s" % events
    assert [(entry["name"], entry["status"]) for event in ran for entry in event["hooks"]] == [("10-record", 0), ("10-record", 0)]
    assert ran[0]["hooks"][0]["output"].strip() == before_line and ran[1]["hooks"][0]["output"].strip() == after_line
    assert not moved.get("warnings"), moved.get("warnings")
    assert read_marker(vm) == marker
    assert_no_vm_lost()


def test_a_failing_before_hook_aborts_the_move_or_warns(lab: Path, hooks_case: t.Callable[..., HookCase], tmp_path: Path) -> None:
    hooks = [hook("before_migration", "10-record", RECORD_HOOK), hook("before_migration", "20-fail", FAILING_HOOK), *recording("after_migration")]
    vm = hooks_case(hooks).vm
    source, destination = route(vm)
    marker = write_marker(vm)
    source_uri, destination_uri = uri(lab, source), uri(lab, destination)

    # A move that stops after the before_migration hooks ran gives the guest its after_migration hooks
    # where it still runs, so that nothing the hooks quiesced stays frozen.
    refused = migrate(lab, vm, source, destination, guest_hook_failure="abort")
    assert refused.get("failed") is True and refused.get("changed") is not True, refused
    assert "guest_hook_failure=abort" in refused["msg"] and "20-fail" in refused["msg"], refused["msg"]
    assert "ran on %s, where the VM still runs (ok)" % source in refused["guest_hooks_after"], refused
    assert vm_homes(vm) == {source: "running"}, "the VM stays on its source"
    assert virsh(destination_uri, "dominfo", vm, check=False).returncode != 0, "the destination never had it"
    assert "running" in virsh(source_uri, "domstate", vm).stdout
    assert len(records(vm, "before_migration")) == 1 and len(records(vm, "after_migration")) == 1, "both ran; nothing moved"

    broken = {"ansible_python_interpreter": failing_python(tmp_path, "migrateToURI3")}
    failed = run_module(lab, source, MIGRATE, {"name": vm, "destination_uri": destination_uri, "guest_hooks": True}, extra_vars=broken)
    assert failed.get("failed") is True and "injected by the lab test" in failed["msg"], failed
    assert "The guest's after_migration hooks ran on %s, where the VM still runs (ok)." % source in failed["msg"], failed["msg"]
    assert vm_homes(vm) == {source: "running"}
    assert len(records(vm, "before_migration")) == 2 and len(records(vm, "after_migration")) == 2
    assert read_marker(vm) == marker
    assert_no_vm_lost()

    moved = migrate(lab, vm, source, destination, guest_hook_failure="warn")
    assert moved["changed"] is True and moved.get("failed") is not True, moved
    assert vm_homes(vm) == {destination: "running"}
    before, after = hook_events(moved)
    assert (before["outcome"], before["failed_hooks"], before["exit_code"]) == ("failed", ["20-fail"], 1), before
    assert [(entry["name"], entry["status"]) for entry in before["hooks"]] == [("10-record", 0), ("20-fail", 1)]
    assert "the application is busy" in before["hooks"][1]["output"]
    assert (after["outcome"], after["host"]) == ("ok", destination_uri), after
    assert "before_migration hooks of VM '%s' did not succeed" % vm in warnings_of(moved) and "the move went on" in warnings_of(moved)
    assert len(records(vm, "before_migration")) == 3 and len(records(vm, "after_migration")) == 3
    assert read_marker(vm) == marker
    assert_no_vm_lost()


def test_a_hanging_hook_is_stopped_by_the_runners_timeout_and_the_move_goes_on(lab: Path, hooks_case: t.Callable[..., HookCase]) -> None:
    case = hooks_case([hook("before_migration", "10-hang", HANGING_HOOK)], timeout=3)
    vm = case.vm
    source, destination = route(vm)
    marker = write_marker(vm)

    moved = migrate(lab, vm, source, destination)
    assert moved["changed"] is True and moved.get("failed") is not True, moved
    assert vm_homes(vm) == {destination: "running"}
    [before, after] = hook_events(moved)
    assert before["outcome"] == "failed" and before["failed_hooks"] == ["10-hang"], before
    [entry] = before["hooks"]
    assert entry["timed_out"] is True and entry["signal"] == 15 and 3 <= entry["duration_s"] < 8, entry
    assert before["duration_s"] < 20, "the host did not wait for the hook, only for the runner"
    assert after["outcome"] == "ok" and after.get("hooks") == [], after
    assert "before_migration hooks of VM '%s' did not succeed" % vm in warnings_of(moved)

    assert len(records(vm, "before_migration")) == 1, "the hook had started"
    assert "before_migration: hook 10-hang: timed out after 3 s (stopped: signal 15)" in case.runner_log()
    processes = guest(vm, "ps", "-o", "pid,user,args")
    assert not re.search(r"\bsleep 60[01]\b", processes), "the hook's processes were all stopped:\n%s" % processes
    assert read_marker(vm) == marker
    assert_no_vm_lost()


def test_a_world_writable_hook_is_refused_and_not_run(lab: Path, hooks_case: t.Callable[..., HookCase]) -> None:
    case = hooks_case(recording("before_migration", "after_migration"))
    vm = case.vm
    source, destination = route(vm)
    tampered = "%s/before_migration/10-record" % BASE_DIR
    guest(vm, "chmod", "o+w", tampered)
    assert guest(vm, "stat", "-c", "%a", tampered).strip() == "757"

    moved = migrate(lab, vm, source, destination)
    assert moved["changed"] is True and vm_homes(vm) == {destination: "running"}, moved
    before, after = hook_events(moved)
    assert before["outcome"] == "refused" and before["exit_code"] == 2 and before["hooks"] == [], before
    assert "%s is writable by group or others (mode 0757)" % tampered in before["refused"], before
    assert after["outcome"] == "ok", "the after_migration hook is root's alone and runs"
    assert records(vm, "before_migration") == [], "the refused hook never ran"
    assert len(records(vm, "after_migration")) == 1
    assert "before_migration: refused: hook %s is writable" % tampered in case.runner_log()
    assert_no_vm_lost()


def test_hibernation_runs_its_hooks_and_an_evacuation_keeps_the_hibernated_vm(
    lab: Path, hooks_case: t.Callable[..., HookCase], new_vm: t.Callable[..., str]
) -> None:
    """vm_hibernate runs before_hibernation before the save and after_hibernation after the restore, and the
    guest continues where it was (a file in its tmpfs survives). While it is hibernated, an evacuation of its
    host keeps it there (its memory is in a managed save image only that host has) and moves the others.
    """
    vm = hooks_case(recording("before_hibernation", "after_hibernation")).vm
    host = running_on(vm)
    host_uri = uri(lab, host)
    other = new_vm(160, HOSTS.index(host) + 1)
    marker = write_marker(vm)
    awake = guest_uptime(vm)

    saved = run_module(lab, host, HIBERNATE, {"name": vm, "guest_hooks": True, "guest_hook_failure": "abort"})
    assert saved["changed"] is True and saved["state"] == "shut off" and saved["saved_image"] is True, saved
    assert [(event["event"], event.get("outcome")) for event in saved["events"]] == [("before_hibernation", "ok"), ("saved", None), ("verified", None)]
    assert virsh(host_uri, "domstate", "--reason", vm).stdout.strip() == "shut off (saved)"
    assert "recorded before_hibernation at" in console_log(host, vm)

    planned: dict[str, t.Any] = {}
    try:
        args = {"candidates": [{"name": candidate, "uri": uri(lab, candidate)} for candidate in HOSTS], "reason": "guest hooks lab test"}
        done = run_module(lab, host, MAINTENANCE, args)
        assert done["changed"] is True and done.get("failed") is not True, done
        planned = done["plan"]
        [kept] = planned["kept"]
        assert kept["vm"] == vm and "managed save image" in kept["reason"] and host in kept["reason"], kept
        assert vm not in [move["vm"] for move in planned["moves"]] and other in [move["vm"] for move in planned["moves"]]
        assert all(record["outcome"] == "migrated" for record in done["vms"]), done["vms"]
        assert vm_homes(vm) == {host: "shut off"}, "defined on %s only, nowhere else" % host
        assert virsh(host_uri, "domstate", "--reason", vm).stdout.strip() == "shut off (saved)"
        assert "Managed save:   yes" in virsh(host_uri, "dominfo", vm).stdout
        homes = vm_homes(other)
        assert list(homes.values()) == ["running"] and host not in homes, homes
        assert virsh(host_uri, "list", "--name").stdout.split() == [], "%s runs nothing" % host
        assert_no_vm_lost(vm)
    finally:
        activated = run_module(lab, host, MAINTENANCE, {"state": "active"})
        assert activated.get("failed") is not True, activated
    assert planned, "the evacuation ran"

    restored = run_module(lab, host, HIBERNATE, {"name": vm, "state": "running", "guest_hooks": True})
    assert restored["changed"] is True and restored["restored"] is True and restored["state"] == "running", restored
    assert [(event["event"], event.get("outcome")) for event in restored["events"]] == [("restored", None), ("after_hibernation", "ok"), ("verified", None)]
    assert virsh(host_uri, "domstate", "--reason", vm).stdout.strip() == "running (restored)"
    assert read_marker(vm) == marker, "the guest continued where it was: its tmpfs survived"
    before, before_user = only_record(vm, "before_hibernation")
    after, after_user = only_record(vm, "after_hibernation")
    assert awake < float(before) < float(after) < guest_uptime(vm) and before_user == after_user == HOOK_USER
    assert_no_vm_lost()
