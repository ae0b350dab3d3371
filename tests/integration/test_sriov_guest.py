"""The sriov_guest role in a real lab guest, over the guest agent (``community.libvirt.libvirt_qemu``).

The role runs as users run it, through ``playbooks/guest_setup.yml``. The guest is a Python bond
stand-in (`virtlab add-vm --python --failover bond`): an emulated vmxnet3 NIC standing in for the VF
and a virtio NIC with the same MAC, both enslaved by the lab's own bond0.
The role finds the two by MAC and driver in the guest's sysfs and writes the bond's configuration for
systemd-networkd plus the teaming udev rule; the verdicts are the files read back from inside the guest,
compared with the interfaces the guest itself shows (``guest_nics``). The other backends, the ifupdown
checks and hostile lists of files are the unit tests' (tests/unit/test_sriov_guest_role.py), which run
the same role on this machine.

What the lab cannot show: the guest has no udev, NetworkManager, systemd-networkd or ifupdown, so the
files are checked as written, not applied (the unit tests parse them; the bond's behaviour across a
migration is tested with the lab's own bond in test_sriov_failover.py).
"""

from __future__ import annotations

import json
import re
import secrets
import typing as t
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml

from labkit import assert_no_vm_lost, guest_exec, guest_inventory, guest_nics, nic_xml, run_playbook_report, uri, virtlab

pytestmark = pytest.mark.python_guests

# The playbook users run for guests; here only its sriov_guest part (hooks=false).
PLAYBOOK = Path(__file__).resolve().parents[2] / "playbooks" / "guest_setup.yml"
UDEV_RULE = "/etc/udev/rules.d/81-virtops-net-failover.rules"
MANIFEST = "/etc/virtops/sriov_guest.json"
NETWORKD = ["/etc/systemd/network/10-virtops-fo%s" % suffix for suffix in (".netdev", ".network", "-primary.network", "-backup.network")]
TEAM_MAC = "52:54:00:7e:a0:01"


@pytest.fixture(scope="module")
def bond_guest(lab: Path) -> t.Iterator[str]:
    vm = "sg%s" % secrets.token_hex(3)
    try:
        virtlab("add-vm", "--python", "--failover", "bond", "%s@1" % vm)
        yield vm
    finally:
        virtlab("remove-vm", vm, check=False)


def guest(vm: str, *argv: str) -> str:
    return guest_exec(vm, *argv).stdout


def guest_files(vm: str) -> dict[str, tuple[str, str]]:
    """The role's files in the guest (and any other virtops file in those directories): mode and content."""
    script = (
        "for f in /etc/udev/rules.d/*virtops* /etc/systemd/network/*virtops* /etc/NetworkManager/system-connections/*virtops* "
        "/etc/network/interfaces.d/*virtops* %s; do [ -f \"$f\" ] || continue; "
        "printf '=== %%s %%s\\n' \"$f\" \"$(stat -c '%%a %%u' \"$f\")\"; cat \"$f\"; done" % MANIFEST
    )
    out = guest(vm, "sh", "-c", script)
    files = {}
    for chunk in out.split("=== ")[1:]:
        header, _newline, body = chunk.partition("\n")
        path, mode, owner = header.split()
        assert owner == "0", "%s belongs to uid %s" % (path, owner)
        files[path] = (mode, body)
    return files


def play(lab: Path, tmp_path: Path, vm: str, role_vars: t.Mapping[str, t.Any], check_mode: bool = False) -> tuple[int, dict[str, t.Any], str]:
    """Run the role in the guest; its exit status, its stats for the guest and the messages of failed tasks."""
    inventory = guest_inventory(lab, tmp_path / "guests.yml", vm)
    data = yaml.safe_load(inventory.read_text())
    data["all"]["children"]["guests"]["hosts"][vm].update(role_vars)
    inventory.write_text(yaml.safe_dump(data, default_flow_style=False, sort_keys=False))
    proc, report = run_playbook_report(inventory, PLAYBOOK, {"guests": "guests", "hooks": False}, check_mode=check_mode)
    failures = [str(result.get("msg", "")) for play_ in report["plays"] for task in play_["tasks"] for result in task["hosts"].values() if result.get("failed")]
    failures += [str(item.get("msg", "")) for play_ in report["plays"] for task in play_["tasks"] for result in task["hosts"].values()
                 for item in result.get("results", []) if isinstance(item, dict) and item.get("failed")]
    return proc.returncode, report["stats"][vm], "\n".join(failures) or proc.stderr[-3000:]


def settings(text: str) -> list[tuple[str, str]]:
    """KEY=VALUE lines of a keyfile or networkd file, in order (comments and sections left out)."""
    return re.findall(r"^([\w-]+)=(.*)$", text, re.MULTILINE)


def test_role_configures_the_bond_of_the_guests_own_interfaces(lab: Path, tmp_path: Path, bond_guest: str) -> None:
    vm = bond_guest
    mac = ElementTree.fromstring(nic_xml(uri(lab, "lab-h1"), vm)).find("mac").get("address")  # type: ignore[union-attr]
    nics = guest_nics(vm)
    vf = [nic["name"] for nic in nics if nic["mac"] == mac and nic["driver"] == "vmxnet3"]
    backup = [nic["name"] for nic in nics if nic["mac"] == mac and nic["driver"] == "virtio_net"]
    assert len(vf) == 1 and len(backup) == 1, nics
    pairs = [
        {"name": "fo", "mode": "bond", "mac": mac.upper(), "bond": "bond1", "addresses": ["198.51.100.7/24"], "gateway": "198.51.100.1"},
        {"name": "team", "mode": "teaming", "mac": TEAM_MAC},
    ]
    role_vars = {"sriov_guest_pairs": pairs, "sriov_guest_backend": "networkd"}

    rc, stats, failures = play(lab, tmp_path, vm, role_vars, check_mode=True)
    assert rc == 0 and stats["changed"] > 0, failures
    assert guest_files(vm) == {}, "check mode wrote files"

    rc, stats, failures = play(lab, tmp_path, vm, role_vars)
    assert rc == 0 and stats["changed"] > 0, failures
    files = guest_files(vm)
    assert set(files) == {UDEV_RULE, MANIFEST, *NETWORKD}, sorted(files)
    assert sorted(json.loads(files[MANIFEST][1])["files"]) == sorted([UDEV_RULE, *NETWORKD])
    assert ("Name", vf[0]) in settings(files[NETWORKD[2]][1]) and ("PrimarySlave", "true") in settings(files[NETWORKD[2]][1])
    assert ("Name", backup[0]) in settings(files[NETWORKD[3]][1]) and ("Bond", "bond1") in settings(files[NETWORKD[3]][1])
    assert settings(files[NETWORKD[1]][1]) == [("Name", "bond1"), ("Address", "198.51.100.7/24"), ("Gateway", "198.51.100.1")]
    assert 'ATTR{address}=="%s", DRIVERS=="?*", ENV{NM_UNMANAGED}="1"' % TEAM_MAC in files[UDEV_RULE][1]

    rc, stats, failures = play(lab, tmp_path, vm, role_vars)
    assert rc == 0 and stats["changed"] == 0, "a second run changed something: %s" % failures

    # A MAC the guest does not have: refused with the interfaces it has, nothing changed.
    rc, stats, failures = play(lab, tmp_path, vm, {**role_vars, "sriov_guest_pairs": [dict(pairs[0], mac="52:54:00:00:de:ad")]})
    assert rc != 0 and "virtio_net interface(s) with MAC 52:54:00:00:de:ad" in failures, failures
    assert vf[0] in failures and backup[0] in failures, failures
    assert guest_files(vm) == files

    rc, stats, failures = play(lab, tmp_path, vm, {**role_vars, "sriov_guest_state": "absent"})
    assert rc == 0 and stats["changed"] > 0, failures
    assert guest_files(vm) == {}
    # The lab's own bond is untouched: the role only wrote files.
    assert {nic["name"]: nic["master"] for nic in guest_nics(vm) if nic["mac"] == mac and nic["driver"]} == {vf[0]: "bond0", backup[0]: "bond0"}
    assert_no_vm_lost()
