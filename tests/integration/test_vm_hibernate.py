"""vm_hibernate on real lab guests: managed save and restore keep the guest's memory, as libvirt shows it.

The lab's busybox guests have a QEMU guest agent but no hook runner (it needs Python in the guest), so
hooks are either switched off or meet the real ``no_runner`` outcome; a tiny VM (no agent channel)
meets the real ``no_agent`` one.
"""

from __future__ import annotations

import secrets
import typing as t
from pathlib import Path

from labkit import VF_STANDIN_ALIAS, assert_no_vm_lost, nic_xml, read_marker, run_module, uri, virsh, virtlab, wait_until, write_marker

HIBERNATE = "virtops.migration.vm_hibernate"
HOST = "lab-h1"


def domstate(host_uri: str, vm: str) -> str:
    """``virsh domstate --reason``: libvirt's own word for the VM's state, and why."""
    return virsh(host_uri, "domstate", "--reason", vm).stdout.strip()


def dominfo(host_uri: str, vm: str) -> dict[str, str]:
    """``virsh dominfo`` as a dictionary ("Managed save" -> "yes", "Persistent" -> "no", ...)."""
    lines = virsh(host_uri, "dominfo", vm).stdout.splitlines()
    return {key.strip(): value.strip() for key, value in (line.split(":", 1) for line in lines if ":" in line)}


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


def hibernate(lab: Path, args: t.Mapping[str, t.Any], check_mode: bool = False) -> dict[str, t.Any]:
    result = run_module(lab, HOST, HIBERNATE, args, check_mode=check_mode, diff=True)
    assert result.get("failed") is not True, result
    return result


def test_hibernate_and_restore_four_runs_each_keep_the_guests_memory(lab: Path, new_vm: t.Callable[..., str]) -> None:
    vm = new_vm()
    h1 = uri(lab, HOST)
    marker = write_marker(vm)
    args = {"name": vm, "guest_hooks": False}

    checked = hibernate(lab, args, check_mode=True)
    assert checked["changed"] is True and checked["operation"] == "save" and checked["events"] == []
    assert checked["diff"] == {"before": {"state": "running", "has_saved_image": False}, "after": {"state": "shut off", "has_saved_image": True}}
    assert domstate(h1, vm).startswith("running") and not managed_save(h1, vm), "check mode saved nothing"

    saved = hibernate(lab, args)
    assert saved["changed"] is True and (saved["state"], saved["saved_image"], saved["restored"]) == ("shut off", True, False)
    assert [event["event"] for event in saved["events"]] == ["saved", "verified"], saved["events"]
    assert saved["events"][0]["duration_s"] > 0
    assert domstate(h1, vm) == "shut off (saved)"
    assert managed_save(h1, vm) and listed_as_saved(h1, vm)
    image = virtlab("ssh", HOST, "--", "stat", "-c", "%s", "/var/lib/libvirt/qemu/save/%s.save" % vm).stdout.strip()
    assert int(image) > 1024 * 1024, "the image holds the guest's memory (%s bytes)" % image

    for check_mode in (False, True):
        again = hibernate(lab, args, check_mode=check_mode)
        assert again["changed"] is False and again["operation"] == "none" and again["events"] == [], again
    assert domstate(h1, vm) == "shut off (saved)"
    assert_no_vm_lost(vm)

    wake = {"name": vm, "state": "running", "guest_hooks": False}
    checked = hibernate(lab, wake, check_mode=True)
    assert checked["changed"] is True and checked["restored"] is True and checked["state"] == "shut off"
    assert checked["diff"]["after"] == {"state": "running", "has_saved_image": False}
    assert managed_save(h1, vm), "check mode restored nothing"

    restored = hibernate(lab, wake)
    assert restored["changed"] is True and restored["restored"] is True
    assert (restored["state"], restored["saved_image"]) == ("running", False)
    assert [event["event"] for event in restored["events"]] == ["restored", "verified"], restored["events"]
    assert domstate(h1, vm) == "running (restored)"
    assert not managed_save(h1, vm) and not listed_as_saved(h1, vm)
    assert read_marker(vm) == marker, "the guest continued where it was: its tmpfs survived"

    for check_mode in (False, True):
        again = hibernate(lab, wake, check_mode=check_mode)
        assert again["changed"] is False and again["restored"] is False and again["operation"] == "none", again
    assert_no_vm_lost()


def test_hooks_without_a_runner_warn_and_hibernation_goes_on(lab: Path, new_vm: t.Callable[..., str]) -> None:
    vm = new_vm()
    h1 = uri(lab, HOST)
    marker = write_marker(vm)

    # abort applies to hooks that failed; a guest without the runner has none to run.
    saved = hibernate(lab, {"name": vm, "guest_hook_failure": "abort"})
    assert saved["changed"] is True and saved["state"] == "shut off"
    hooks = saved["events"][0]
    assert (hooks["event"], hooks["outcome"]) == ("before_hibernation", "no_runner"), saved["events"]
    assert "/usr/local/sbin/virtops-run-hooks" in hooks["message"] and "No such file or directory" in hooks["message"]
    assert hooks["duration_s"] < 5
    assert "before_hibernation hooks of VM '%s': no_runner" % vm in warnings_of(saved)
    assert domstate(h1, vm) == "shut off (saved)" and managed_save(h1, vm)

    restored = hibernate(lab, {"name": vm, "state": "running"})
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
    vm = new_vm()
    h1 = uri(lab, HOST)
    marker = write_marker(vm)
    virsh(h1, "suspend", vm)

    saved = hibernate(lab, {"name": vm})
    assert saved["changed"] is True and saved["state"] == "shut off"
    assert saved["events"][0]["outcome"] == "no_agent" and "paused" in saved["events"][0]["message"]
    assert domstate(h1, vm) == "shut off (saved)"

    restored = hibernate(lab, {"name": vm, "state": "running", "guest_hooks": False})
    assert [event["event"] for event in restored["events"]] == ["restored", "resumed", "verified"], restored["events"]
    assert domstate(h1, vm).startswith("running") and read_marker(vm) == marker
    assert_no_vm_lost()


def test_vm_without_an_agent_channel_is_hibernated_with_a_warning(lab: Path) -> None:
    vm = "tiny%s" % secrets.token_hex(3)
    h1 = uri(lab, HOST)
    virtlab("add-vm", "--tiny", "%s@1" % vm)
    try:
        saved = hibernate(lab, {"name": vm})
        hooks = saved["events"][0]
        assert (hooks["outcome"], saved["state"]) == ("no_agent", "shut off"), saved
        assert "not configured" in hooks["message"] and hooks["duration_s"] < 2, "no wait for an agent that cannot come"
        assert domstate(h1, vm) == "shut off (saved)"
        restored = hibernate(lab, {"name": vm, "state": "running"})
        assert restored["restored"] is True and restored["events"][1]["outcome"] == "no_agent"
        assert domstate(h1, vm) == "running (restored)"
    finally:
        virtlab("remove-vm", vm, check=False)
    assert_no_vm_lost()


def test_transient_and_shut_off_vms_are_refused_and_left_as_they_were(lab: Path, new_vm: t.Callable[..., str], tmp_path: Path) -> None:
    vm = new_vm()
    h1 = uri(lab, HOST)
    definition = tmp_path / ("%s.xml" % vm)
    definition.write_text(virsh(h1, "dumpxml", "--inactive", "--security-info", vm).stdout)
    virsh(h1, "undefine", vm)
    try:
        assert dominfo(h1, vm)["Persistent"] == "no"
        for check_mode in (True, False):
            refused = run_module(lab, HOST, HIBERNATE, {"name": vm}, check_mode=check_mode)
            assert refused.get("failed") is True and "is transient" in refused["msg"], refused
            assert domstate(h1, vm).startswith("running"), "the refused VM keeps running"
    finally:
        virsh(h1, "define", str(definition))
    assert dominfo(h1, vm)["Persistent"] == "yes"

    virsh(h1, "destroy", vm)
    refused = run_module(lab, HOST, HIBERNATE, {"name": vm})
    assert refused.get("failed") is True
    assert refused["msg"] == "VM '%s' is shut off and has no saved image; start it first." % vm
    assert domstate(h1, vm).startswith("shut off") and not managed_save(h1, vm)
    # state: running boots it (a plain start, not a restore).
    started = hibernate(lab, {"name": vm, "state": "running"})
    assert (started["operation"], started["restored"], started["state"]) == ("start", False, "running")
    assert domstate(h1, vm) == "running (booted)"
    assert_no_vm_lost()


def test_failover_primary_is_refused_until_it_is_detached(lab: Path, tmp_path: Path) -> None:
    """The lab's teaming stand-in: a vmxnet3 NIC that QEMU treats as a failover primary (failover_pair_id)."""
    vm = "fo%s" % secrets.token_hex(3)
    h1 = uri(lab, HOST)
    virtlab("add-vm", "--failover", "teaming", "%s@1" % vm)
    try:
        marker = write_marker(vm)
        for check_mode in (True, False):
            refused = run_module(lab, HOST, HIBERNATE, {"name": vm}, check_mode=check_mode)
            assert refused.get("failed") is True, refused
            assert "failover primary device(s) %s" % VF_STANDIN_ALIAS in refused["msg"] and "pauses the vCPUs" in refused["msg"]
            assert refused.get("events", []) == [], "no hook ran before the refusal"
            assert domstate(h1, vm).startswith("running") and not managed_save(h1, vm)

        # Detached (as the operator would before hibernating), it no longer stands in the way.
        device = tmp_path / "vf.xml"
        device.write_text(nic_xml(h1, vm))
        virsh(h1, "detach-device", vm, str(device), "--live")
        alias = "<alias name='%s'/>" % VF_STANDIN_ALIAS
        wait_until(lambda: alias not in virsh(h1, "dumpxml", vm).stdout, 30, "the guest released %s" % VF_STANDIN_ALIAS)
        saved = hibernate(lab, {"name": vm, "guest_hooks": False})
        assert saved["changed"] is True and domstate(h1, vm) == "shut off (saved)"
        restored = hibernate(lab, {"name": vm, "state": "running", "guest_hooks": False})
        assert restored["restored"] is True and domstate(h1, vm) == "running (restored)"
        assert read_marker(vm) == marker
    finally:
        virtlab("remove-vm", vm, check=False)
    assert_no_vm_lost()
