"""vm_hibernate on lab VMs: managed save and restore keep the guest's memory, as libvirt shows it.

The tests that prove the guest's memory survives hibernation (a marker written into its tmpfs before
the save and read back after the restore) run a real lab guest, and so does the one that meets the
real ``no_runner`` outcome: the lab's busybox guests have a QEMU guest agent but no hook runner (it
needs Python in the guest), so hooks are either switched off or meet that outcome. The failover
primary test runs the lab's teaming stand-in, whose guest kernel has to release the primary before it
can be saved. The refusals of a transient or shut-off VM need only a domain, and a tiny VM (firmware
only, no agent channel) also meets the real ``no_agent`` outcome: those use tiny VMs.

Runs of the module that follow each other with nothing but libvirt looked at in between go through one
``ansible-playbook`` process (``run_tasks``); libvirt is then read on the host (``virsh`` there) at the
same point of the run as before.
"""

from __future__ import annotations

import secrets
import typing as t
from pathlib import Path

from labkit import (
    VF_STANDIN_ALIAS,
    assert_no_vm_lost,
    module_task,
    nic_xml,
    read_marker,
    run_tasks,
    uri,
    virsh,
    virtlab,
    wait_until,
    write_marker,
)

HIBERNATE = "virtops.migration.vm_hibernate"
HOST = "lab-h1"


def domstate(host_uri: str, vm: str) -> str:
    """``virsh domstate --reason``: libvirt's own word for the VM's state, and why."""
    return virsh(host_uri, "domstate", "--reason", vm).stdout.strip()


def parse_dominfo(text: str) -> dict[str, str]:
    """``virsh dominfo`` output as a dictionary ("Managed save" -> "yes", "Persistent" -> "no", ...)."""
    return {key.strip(): value.strip() for key, value in (line.split(":", 1) for line in text.splitlines() if ":" in line)}


def dominfo(host_uri: str, vm: str) -> dict[str, str]:
    """``virsh dominfo`` of the VM on that host, as a dictionary."""
    return parse_dominfo(virsh(host_uri, "dominfo", vm).stdout)


def managed_save(host_uri: str, vm: str) -> bool:
    """Whether libvirt has a managed save image of the VM (``virsh dominfo``)."""
    return dominfo(host_uri, vm)["Managed save"] == "yes"


def listed_as_saved(host_uri: str, vm: str) -> bool:
    """Whether ``virsh list --all --with-managed-save --managed-save`` (only VMs with an image) lists the VM as saved."""
    for line in virsh(host_uri, "list", "--all", "--with-managed-save", "--managed-save").stdout.splitlines()[2:]:
        fields = line.split(None, 2)
        if len(fields) == 3 and fields[1] == vm:
            assert fields[2].strip() == "saved", line
            return True
    return False


def warnings_of(result: t.Mapping[str, t.Any]) -> str:
    return " | ".join(str(item) for item in result.get("warnings", []))


def hibernate_task(args: t.Mapping[str, t.Any], check_mode: bool = False) -> dict[str, t.Any]:
    """A ``run_tasks`` task running the module with diff; check its result with :func:`succeeded` (or as a refusal)."""
    return module_task(HIBERNATE, args, check_mode=check_mode, diff=True)


def succeeded(result: dict[str, t.Any]) -> dict[str, t.Any]:
    assert result.get("failed") is not True, result
    return result


def virsh_task(*args: str) -> dict[str, t.Any]:
    """A ``run_tasks`` task that reads libvirt on the host itself (``virsh ARGS`` there) and changes nothing:
    what ``domstate``/``dominfo`` on the controller would show at that point of the run."""
    return module_task("ansible.builtin.command", {"argv": ["virsh", "-c", "qemu:///system", *args]}, changed_when=False)


def output(result: t.Mapping[str, t.Any]) -> str:
    """What a :func:`virsh_task` printed, stripped; fails the test when virsh failed."""
    assert result.get("failed") is not True and result.get("rc") == 0, result
    return str(result["stdout"]).strip()


def has_saved_image(result: t.Mapping[str, t.Any]) -> bool:
    """Whether a :func:`virsh_task` of ``dominfo`` shows a managed save image (as :func:`managed_save`)."""
    return parse_dominfo(output(result))["Managed save"] == "yes"


def test_hibernate_and_restore_four_runs_each_keep_the_guests_memory(lab: Path, new_vm: t.Callable[..., str]) -> None:
    # A real guest: its marker, read back after the restore, is the proof that its memory survived.
    vm = new_vm(guest=True)
    h1 = uri(lab, HOST)
    marker = write_marker(vm)
    args = {"name": vm, "guest_hooks": False}

    checked, state, info, saved = run_tasks(
        lab, HOST, [hibernate_task(args, check_mode=True), virsh_task("domstate", "--reason", vm), virsh_task("dominfo", vm), hibernate_task(args)]
    )
    succeeded(checked)
    assert checked["changed"] is True and checked["operation"] == "save" and checked["events"] == []
    assert checked["diff"] == {"before": {"state": "running", "has_saved_image": False}, "after": {"state": "shut off", "has_saved_image": True}}
    assert output(state).startswith("running") and not has_saved_image(info), "check mode saved nothing"

    succeeded(saved)
    assert saved["changed"] is True and (saved["state"], saved["saved_image"], saved["restored"]) == ("shut off", True, False)
    assert [event["event"] for event in saved["events"]] == ["saved", "verified"], saved["events"]
    assert saved["events"][0]["duration_s"] > 0
    assert domstate(h1, vm) == "shut off (saved)"
    assert managed_save(h1, vm) and listed_as_saved(h1, vm)
    image = virtlab("ssh", HOST, "--", "stat", "-c", "%s", "/var/lib/libvirt/qemu/save/%s.save" % vm).stdout.strip()
    assert int(image) > 1024 * 1024, "the image holds the guest's memory (%s bytes)" % image

    for again in run_tasks(lab, HOST, [hibernate_task(args), hibernate_task(args, check_mode=True)]):
        succeeded(again)
        assert again["changed"] is False and again["operation"] == "none" and again["events"] == [], again
    assert domstate(h1, vm) == "shut off (saved)"
    assert_no_vm_lost(vm)

    wake = {"name": vm, "state": "running", "guest_hooks": False}
    checked, info, restored = run_tasks(lab, HOST, [hibernate_task(wake, check_mode=True), virsh_task("dominfo", vm), hibernate_task(wake)])
    succeeded(checked)
    assert checked["changed"] is True and checked["restored"] is True and checked["state"] == "shut off"
    assert checked["diff"]["after"] == {"state": "running", "has_saved_image": False}
    assert has_saved_image(info), "check mode restored nothing"

    succeeded(restored)
    assert restored["changed"] is True and restored["restored"] is True
    assert (restored["state"], restored["saved_image"]) == ("running", False)
    assert [event["event"] for event in restored["events"]] == ["restored", "verified"], restored["events"]
    assert domstate(h1, vm) == "running (restored)"
    assert not managed_save(h1, vm) and not listed_as_saved(h1, vm)
    assert read_marker(vm) == marker, "the guest continued where it was: its tmpfs survived"

    for again in run_tasks(lab, HOST, [hibernate_task(wake), hibernate_task(wake, check_mode=True)]):
        succeeded(again)
        assert again["changed"] is False and again["restored"] is False and again["operation"] == "none", again
    assert_no_vm_lost()


def test_hooks_without_a_runner_warn_and_hibernation_goes_on(lab: Path, new_vm: t.Callable[..., str]) -> None:
    # A real guest: its agent answers, and reports that the hook runner is missing (no_runner); its
    # marker proves its memory survived.
    vm = new_vm(guest=True)
    marker = write_marker(vm)

    # abort applies to hooks that failed; a guest without the runner has none to run.
    saved, state, info, restored = run_tasks(
        lab,
        HOST,
        [
            hibernate_task({"name": vm, "guest_hook_failure": "abort"}),
            virsh_task("domstate", "--reason", vm),
            virsh_task("dominfo", vm),
            hibernate_task({"name": vm, "state": "running"}),
        ],
    )
    succeeded(saved)
    assert saved["changed"] is True and saved["state"] == "shut off"
    hooks = saved["events"][0]
    assert (hooks["event"], hooks["outcome"]) == ("before_hibernation", "no_runner"), saved["events"]
    assert "/usr/local/sbin/virtops-run-hooks" in hooks["message"] and "No such file or directory" in hooks["message"]
    assert hooks["duration_s"] < 5
    assert "before_hibernation hooks of VM '%s': no_runner" % vm in warnings_of(saved)
    assert output(state) == "shut off (saved)" and has_saved_image(info)

    succeeded(restored)
    assert restored["changed"] is True and restored["restored"] is True and restored["state"] == "running"
    assert [(event["event"], event.get("outcome")) for event in restored["events"]] == [
        ("restored", None),
        ("after_hibernation", "no_runner"),
        ("verified", None),
    ]
    assert "after_hibernation hooks of VM '%s': no_runner" % vm in warnings_of(restored)
    assert read_marker(vm) == marker
    assert_no_vm_lost()


def test_paused_vm_hibernates_and_comes_back_running(lab: Path, new_vm: t.Callable[..., str]) -> None:
    # A real guest: its marker, read back after the restore, proves that the paused guest's memory survived.
    vm = new_vm(guest=True)
    h1 = uri(lab, HOST)
    marker = write_marker(vm)
    virsh(h1, "suspend", vm)

    saved, state, restored = run_tasks(
        lab,
        HOST,
        [hibernate_task({"name": vm}), virsh_task("domstate", "--reason", vm), hibernate_task({"name": vm, "state": "running", "guest_hooks": False})],
    )
    succeeded(saved)
    assert saved["changed"] is True and saved["state"] == "shut off"
    assert saved["events"][0]["outcome"] == "no_agent" and "paused" in saved["events"][0]["message"]
    assert output(state) == "shut off (saved)"

    succeeded(restored)
    assert [event["event"] for event in restored["events"]] == ["restored", "resumed", "verified"], restored["events"]
    assert domstate(h1, vm).startswith("running") and read_marker(vm) == marker
    assert_no_vm_lost()


def test_vm_without_an_agent_channel_is_hibernated_with_a_warning(lab: Path) -> None:
    vm = "tiny%s" % secrets.token_hex(3)
    h1 = uri(lab, HOST)
    virtlab("add-vm", "--tiny", "%s@1" % vm)
    try:
        saved, state, restored = run_tasks(
            lab, HOST, [hibernate_task({"name": vm}), virsh_task("domstate", "--reason", vm), hibernate_task({"name": vm, "state": "running"})]
        )
        succeeded(saved)
        hooks = saved["events"][0]
        assert (hooks["outcome"], saved["state"]) == ("no_agent", "shut off"), saved
        assert "not configured" in hooks["message"] and hooks["duration_s"] < 2, "no wait for an agent that cannot come"
        assert output(state) == "shut off (saved)"
        succeeded(restored)
        assert restored["restored"] is True and restored["events"][1]["outcome"] == "no_agent"
        assert domstate(h1, vm) == "running (restored)"
    finally:
        virtlab("remove-vm", vm, check=False)
    assert_no_vm_lost()


def test_transient_and_shut_off_vms_are_refused_and_left_as_they_were(lab: Path, new_vm: t.Callable[..., str], tmp_path: Path) -> None:
    # A tiny VM: refusals of a domain, nothing in the guest is looked at.
    vm = new_vm()
    h1 = uri(lab, HOST)
    definition = tmp_path / ("%s.xml" % vm)
    definition.write_text(virsh(h1, "dumpxml", "--inactive", "--security-info", vm).stdout)
    virsh(h1, "undefine", vm)
    try:
        assert dominfo(h1, vm)["Persistent"] == "no"
        tasks = []
        for check_mode in (True, False):
            tasks += [module_task(HIBERNATE, {"name": vm}, check_mode=check_mode), virsh_task("domstate", "--reason", vm)]
        results = iter(run_tasks(lab, HOST, tasks))
        for refused, state in zip(results, results):
            assert refused.get("failed") is True and "is transient" in refused["msg"], refused
            assert output(state).startswith("running"), "the refused VM keeps running"
    finally:
        virsh(h1, "define", str(definition))
    assert dominfo(h1, vm)["Persistent"] == "yes"

    virsh(h1, "destroy", vm)
    refused, state, info = run_tasks(
        lab,
        HOST,
        [module_task(HIBERNATE, {"name": vm}), virsh_task("domstate", "--reason", vm), virsh_task("dominfo", vm)],
    )
    assert refused.get("failed") is True
    assert refused["msg"] == "VM '%s' is shut off and has no saved image; start it first." % vm
    assert output(state).startswith("shut off") and not has_saved_image(info)
    assert_no_vm_lost(vm)


def test_running_refuses_to_boot_a_shut_off_vm_without_an_image(lab: Path, new_vm: t.Callable[..., str]) -> None:
    """state=running restores only what was hibernated on that host: a VM shut off without a managed save
    image there (shut down, or a stopped copy of a guest that runs elsewhere) is refused and stays shut off,
    in check mode and for real. A tiny VM: only its libvirt state matters."""
    vm = new_vm()
    h1 = uri(lab, HOST)
    virsh(h1, "destroy", vm)
    assert domstate(h1, vm) == "shut off (destroyed)" and not managed_save(h1, vm)
    tasks = []
    for check_mode in (True, False):
        tasks += [module_task(HIBERNATE, {"name": vm, "state": "running"}, check_mode=check_mode), virsh_task("domstate", "--reason", vm)]
    results = iter(run_tasks(lab, HOST, tasks))
    for refused, state in zip(results, results):
        assert refused.get("failed") is True and refused.get("changed") is not True, refused
        assert refused["msg"].startswith("VM '%s' is shut off and has no hibernation image on host " % vm), refused["msg"]
        assert "virsh start %s" % vm in refused["msg"]
        assert output(state) == "shut off (destroyed)", "the refused VM was not booted"
    assert domstate(h1, vm) == "shut off (destroyed)" and not managed_save(h1, vm)
    assert_no_vm_lost(vm)


def test_failover_primary_is_refused_until_it_is_detached(lab: Path, tmp_path: Path) -> None:
    """The lab's teaming stand-in: a vmxnet3 NIC that QEMU treats as a failover primary (failover_pair_id)."""
    vm = "fo%s" % secrets.token_hex(3)
    h1 = uri(lab, HOST)
    virtlab("add-vm", "--failover", "teaming", "%s@1" % vm)
    try:
        marker = write_marker(vm)
        tasks = []
        for check_mode in (True, False):
            tasks += [module_task(HIBERNATE, {"name": vm}, check_mode=check_mode), virsh_task("domstate", "--reason", vm), virsh_task("dominfo", vm)]
        results = iter(run_tasks(lab, HOST, tasks))
        for refused, state, info in zip(results, results, results):
            assert refused.get("failed") is True, refused
            assert "failover primary device(s) %s" % VF_STANDIN_ALIAS in refused["msg"] and "pauses the vCPUs" in refused["msg"]
            assert refused.get("events", []) == [], "no hook ran before the refusal"
            assert output(state).startswith("running") and not has_saved_image(info)

        # Detached (as the operator would before hibernating), it no longer stands in the way.
        device = tmp_path / "vf.xml"
        device.write_text(nic_xml(h1, vm))
        virsh(h1, "detach-device", vm, str(device), "--live")
        alias = "<alias name='%s'/>" % VF_STANDIN_ALIAS
        wait_until(lambda: alias not in virsh(h1, "dumpxml", vm).stdout, 30, "the guest released %s" % VF_STANDIN_ALIAS)
        saved, state, restored = run_tasks(
            lab,
            HOST,
            [
                hibernate_task({"name": vm, "guest_hooks": False}),
                virsh_task("domstate", "--reason", vm),
                hibernate_task({"name": vm, "state": "running", "guest_hooks": False}),
            ],
        )
        succeeded(saved)
        assert saved["changed"] is True and output(state) == "shut off (saved)"
        succeeded(restored)
        assert restored["restored"] is True and domstate(h1, vm) == "running (restored)"
        assert read_marker(vm) == marker
    finally:
        virtlab("remove-vm", vm, check=False)
    assert_no_vm_lost()
