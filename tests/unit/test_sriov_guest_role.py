# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The sriov_guest role, run by ansible-playbook against this machine (connection local).

Everything the role writes is redirected into the test's own temporary directory: the udev rules directory
and the manifest through the role's variables, the backends' directories and ifupdown's files through
its internal variables (extra variables win over role variables, and so do the variables each case of a
table reads in when the cases run together). The bonds name their interfaces
(``primary_interface``, ``backup_interface``): finding them by MAC needs a guest with those interfaces,
which the lab test has. The tests need root (the role makes root the owner) and fail when not root.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import stat
import sys
import typing as t
from pathlib import Path

import pytest
from roleplay import CaseRecap, Recap, link_collection, require_root, run_cases, run_play, write_role_play

VF_MAC = "52:54:00:1A:2B:3C"
TEAM_MAC = "52:54:00:00:00:07"
BOND = {
    "name": "net1",
    "mode": "bond",
    "mac": VF_MAC,
    "bond": "bond7",
    "primary_interface": "enp7s0",
    "backup_interface": "enp1s0",
    "addresses": ["192.0.2.10/24", "2001:db8::10/64"],
    "gateway": "192.0.2.1",
    "dns": ["192.0.2.53", "2001:db8::53"],
}
TEAMING = {"name": "net0", "mode": "teaming", "mac": TEAM_MAC}


class Guest:
    """A directory standing in for a guest's /etc, and ansible-playbook runs of the role against it."""

    def __init__(self, root: Path) -> None:
        require_root("sriov_guest")
        self.root = root
        self.etc = self.root / "etc"
        self.dirs = {
            "udev": str(self.etc / "udev" / "rules.d"),
            "networkmanager": str(self.etc / "NetworkManager" / "system-connections"),
            "networkd": str(self.etc / "systemd" / "network"),
            "ifupdown": str(self.etc / "network" / "interfaces.d"),
        }
        self.manifest = self.etc / "virtops" / "sriov_guest.json"
        self.collections = link_collection(self.root)
        self.playbook = write_role_play(self.root / "play.yml", "sriov_guest")
        self.variables: dict[str, t.Any] = {
            "ansible_python_interpreter": sys.executable,
            "sriov_guest_udev_rules_dir": self.dirs["udev"],
            "sriov_guest_manifest_path": str(self.manifest),
            "__sriov_guest_dirs": self.dirs,
            "__sriov_guest_ifenslave_hook": str(self.etc / "network" / "if-pre-up.d" / "ifenslave"),
            "__sriov_guest_ifupdown_main": str(self.etc / "network" / "interfaces"),
        }

    def play(self, *args: str) -> Recap:
        return run_play(self.root, self.collections, self.playbook, self.variables, *args)

    def tree(self) -> dict[str, tuple[int, int, str]]:
        """Every file below the guest's etc/: its mode, owner and content."""
        found = {}
        for dirpath, _dirnames, filenames in os.walk(str(self.etc)):
            for name in filenames:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                found[os.path.relpath(path, str(self.root))] = (stat.S_IMODE(st.st_mode), st.st_uid, Path(path).read_text(encoding="utf-8"))
        return found

    def written(self) -> list[str]:
        return json.loads(self.manifest.read_text(encoding="utf-8"))["files"]


@pytest.fixture
def guest(tmp_path: Path) -> Guest:
    return Guest(tmp_path)


def ini(text: str) -> configparser.ConfigParser:
    """A NetworkManager keyfile or systemd-networkd file, parsed (keys keep their case; repeated keys are kept
    by systemd, so they are joined here with a newline)."""
    parser = configparser.ConfigParser(interpolation=None, strict=False, comment_prefixes=("#",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def test_teaming_rule_and_networkd_bond_then_networkmanager_then_absent(guest: Guest) -> None:
    guest.variables.update(sriov_guest_pairs=[TEAMING, BOND], sriov_guest_backend="networkd")

    planned = guest.play("--check", "--diff")
    assert planned.rc == 0 and planned.changed > 0, planned.output
    assert guest.tree() == {}, "check mode wrote files: %s" % sorted(guest.tree())

    first = guest.play()
    assert first.rc == 0 and first.changed > 0, first.output
    files = guest.tree()
    networkd = guest.dirs["networkd"]
    expected = {
        guest.dirs["udev"] + "/81-virtops-net-failover.rules",
        networkd + "/10-virtops-net1.netdev",
        networkd + "/10-virtops-net1.network",
        networkd + "/10-virtops-net1-primary.network",
        networkd + "/10-virtops-net1-backup.network",
    }
    assert set(guest.written()) == expected
    assert {str(guest.root / path) for path in files} == expected | {str(guest.manifest)}
    assert all(mode == 0o644 and uid == 0 for mode, uid, _content in files.values()), files

    rule = files[os.path.relpath(guest.dirs["udev"] + "/81-virtops-net-failover.rules", guest.root)][2]
    rules = [line for line in rule.splitlines() if line and not line.startswith("#")]
    # One rule for the one teaming pair: the slaves (devices with a driver) with its MAC, in lower case
    # as sysfs shows it; never the bond's MAC.
    assert rules == [
        'SUBSYSTEM=="net", ACTION=="add|change", ATTR{address}=="%s", DRIVERS=="?*", ENV{NM_UNMANAGED}="1", '
        'RUN+="/sbin/ip link set dev $name up"' % TEAM_MAC.lower()
    ]
    assert "UBSYSTEM" not in rule.replace("SUBSYSTEM", "")

    def read(name: str) -> configparser.ConfigParser:
        return ini(files[os.path.relpath(networkd + "/" + name, guest.root)][2])

    netdev = read("10-virtops-net1.netdev")
    assert dict(netdev["NetDev"]) == {"Name": "bond7", "Kind": "bond"}
    assert netdev["Bond"]["Mode"] == "active-backup" and netdev["Bond"]["MIIMonitorSec"] == "100ms"
    assert "FailOverMACPolicy" not in netdev["Bond"]
    assert read("10-virtops-net1-primary.network")["Match"]["Name"] == "enp7s0"
    assert dict(read("10-virtops-net1-primary.network")["Network"]) == {"Bond": "bond7", "PrimarySlave": "true"}
    assert dict(read("10-virtops-net1-backup.network")["Network"]) == {"Bond": "bond7"}
    bond_network = files[os.path.relpath(networkd + "/10-virtops-net1.network", guest.root)][2]
    assert re.findall(r"^(\w+)=(.*)$", bond_network, re.MULTILINE) == [
        ("Name", "bond7"),
        ("Address", "192.0.2.10/24"),
        ("Address", "2001:db8::10/64"),
        ("Gateway", "192.0.2.1"),
        ("DNS", "192.0.2.53"),
        ("DNS", "2001:db8::53"),
    ]

    again = guest.play()
    assert again.rc == 0 and again.changed == 0, again.output
    assert guest.play("--check").changed == 0

    # Another backend: the networkd files go, the keyfiles come (root, 0600, or NetworkManager ignores them).
    guest.variables["sriov_guest_backend"] = "networkmanager"
    guest.variables["sriov_guest_pairs"] = [TEAMING, dict(BOND, fail_over_mac=True, backup_mac="52:54:00:99:99:99", addresses=[], gateway="")]
    switched = guest.play()
    assert switched.rc == 0 and switched.changed > 0, switched.output
    files = guest.tree()
    nm = guest.dirs["networkmanager"]
    keyfiles = {nm + "/virtops-net1.nmconnection", nm + "/virtops-net1-primary.nmconnection", nm + "/virtops-net1-backup.nmconnection"}
    assert {str(guest.root / path) for path in files} == keyfiles | {guest.dirs["udev"] + "/81-virtops-net-failover.rules", str(guest.manifest)}
    assert all(files[os.path.relpath(path, guest.root)][:2] == (0o600, 0) for path in keyfiles)
    bond = ini(files[os.path.relpath(nm + "/virtops-net1.nmconnection", guest.root)][2])
    primary = ini(files[os.path.relpath(nm + "/virtops-net1-primary.nmconnection", guest.root)][2])
    backup = ini(files[os.path.relpath(nm + "/virtops-net1-backup.nmconnection", guest.root)][2])
    assert bond["connection"]["type"] == "bond" and bond["connection"]["interface-name"] == "bond7"
    assert dict(bond["bond"]) == {"mode": "active-backup", "miimon": "100", "primary": "enp7s0", "fail_over_mac": "active"}
    assert bond["ipv4"]["method"] == "auto" and bond["ipv6"]["method"] == "auto"
    for slave, name in ((primary, "enp7s0"), (backup, "enp1s0")):
        assert slave["connection"]["interface-name"] == name
        assert slave["connection"]["master"] == bond["connection"]["uuid"]
        assert slave["connection"]["slave-type"] == "bond"
    assert len({bond["connection"]["uuid"], primary["connection"]["uuid"], backup["connection"]["uuid"]}) == 3
    assert guest.play().changed == 0

    removed = guest.play("-e", "sriov_guest_state=absent")
    assert removed.rc == 0 and removed.changed > 0, removed.output
    assert guest.tree() == {}
    assert guest.play("-e", "sriov_guest_state=absent").changed == 0


def test_ifupdown_bond_needs_ifenslave_and_the_interfaces_d_source(guest: Guest) -> None:
    main = guest.etc / "network" / "interfaces"
    main.parent.mkdir(parents=True)
    main.write_text("auto lo\niface lo inet loopback\n", encoding="utf-8")
    guest.variables.update(sriov_guest_pairs=[BOND], sriov_guest_backend="ifupdown")

    refused = guest.play()
    assert refused.rc != 0 and refused.failed == 1, refused.output
    assert "the package ifenslave is not installed" in refused.output
    assert "does not source /etc/network/interfaces.d" in refused.output
    assert set(guest.tree()) == {"etc/network/interfaces"}

    hook = guest.etc / "network" / "if-pre-up.d" / "ifenslave"
    hook.parent.mkdir()
    hook.write_text("#!/bin/sh\n", encoding="utf-8")
    main.write_text("source /etc/network/interfaces.d/*\nauto lo\niface lo inet loopback\nauto enp1s0\niface enp1s0 inet dhcp\n", encoding="utf-8")
    clash = guest.play()
    assert clash.rc != 0 and "already configures enp1s0" in clash.output, clash.output
    assert not guest.manifest.exists()

    main.write_text("source /etc/network/interfaces.d/*\nauto lo\niface lo inet loopback\n", encoding="utf-8")
    done = guest.play()
    assert done.rc == 0 and done.changed > 0, done.output
    stanza = (Path(guest.dirs["ifupdown"]) / "virtops-net1").read_text(encoding="utf-8")
    body = [line.strip() for line in stanza.splitlines() if line.strip() and not line.startswith("#")]
    assert body == [
        "auto bond7",
        "iface bond7 inet static",
        "address 192.0.2.10/24",
        "gateway 192.0.2.1",
        "dns-nameservers 192.0.2.53 2001:db8::53",
        "bond-slaves none",
        "bond-mode active-backup",
        "bond-miimon 100",
        "bond-primary enp7s0",
        "iface bond7 inet6 static",
        "address 2001:db8::10/64",
        "allow-hotplug enp7s0",
        "iface enp7s0 inet manual",
        "bond-master bond7",
        "allow-hotplug enp1s0",
        "iface enp1s0 inet manual",
        "bond-master bond7",
    ]
    assert guest.play().changed == 0


def test_a_hostile_manifest_never_removes_other_files(guest: Guest) -> None:
    outside = guest.root / "precious"
    outside.write_text("keep\n", encoding="utf-8")
    someone_elses = Path(guest.dirs["networkd"]) / "20-wired.network"
    someone_elses.parent.mkdir(parents=True)
    someone_elses.write_text("[Match]\nName=en*\n", encoding="utf-8")
    guest.manifest.parent.mkdir(parents=True)
    guest.manifest.write_text(json.dumps({"files": [
        str(outside), "/etc/passwd", str(someone_elses), guest.dirs["networkd"] + "/10-virtops-x/../../../precious",
        guest.dirs["networkd"] + "/../virtops-x", 7, None,
    ]}), encoding="utf-8")

    result = guest.play("-e", "sriov_guest_state=absent")
    assert result.rc == 0, result.output
    assert outside.read_text(encoding="utf-8") == "keep\n" and someone_elses.exists() and Path("/etc/passwd").exists()

    guest.variables.update(sriov_guest_pairs=[TEAMING])
    assert guest.play().rc == 0
    assert someone_elses.exists()
    assert guest.written() == [guest.dirs["udev"] + "/81-virtops-net-failover.rules"]

    # A list that cannot be read stops the role before it changes anything: it could not know what to remove.
    guest.manifest.write_text("{not json", encoding="utf-8")
    before = guest.tree()
    damaged = guest.play("-e", "sriov_guest_state=absent")
    assert damaged.rc != 0 and "sriov_guest.json, cannot be read" in damaged.output, damaged.output
    assert guest.tree() == before


BAD_INPUT = [
    ([{"name": "net0", "mode": "teaming", "mac": "52:54:00:00:00"}], "six hexadecimal pairs"),
    ([{"name": "net0", "mode": "sriov", "mac": TEAM_MAC}], "value of mode must be one of: teaming, bond"),
    ([{"name": "../x", "mode": "teaming", "mac": TEAM_MAC}], "each pair needs a name"),
    ([dict(TEAMING, bond="bond0")], "apply to mode bond only"),
    ([dict(BOND, bond="a-bond-name-too-long")], "at most 15 characters"),
    ([dict(BOND, addresses=["192.0.2.10"])], "ADDRESS/PREFIX"),
    ([dict(BOND, addresses=[], gateway="192.0.2.1")], "only with addresses"),
    ([TEAMING, dict(TEAMING, name="net2")], "a MAC and (mode bond) a bond interface of its own"),
    ([BOND, dict(BOND, name="net2", mac="52:54:00:00:00:08")], "a bond interface of its own"),
]


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Guest, CaseRecap]]:
    """Every case of BAD_INPUT (by its pairs as JSON), each against a guest of its own, all in one
    ansible-playbook process."""
    guests = {}
    for pairs, _message in BAD_INPUT:
        guest = Guest(tmp_path_factory.mktemp("bad-input"))
        guest.variables.update(sriov_guest_pairs=pairs, sriov_guest_backend="networkd")
        guests[json.dumps(pairs)] = guest
    recaps = run_cases(tmp_path_factory.mktemp("bad-input-play"), "sriov_guest", {case: guest.variables for case, guest in guests.items()})
    return {case: (guest, recaps[case]) for case, guest in guests.items()}


@pytest.mark.parametrize(("pairs", "message"), BAD_INPUT)
def test_bad_input_fails_clearly_before_anything_changes(
    bad_input_runs: dict[str, tuple[Guest, CaseRecap]], pairs: list[dict[str, t.Any]], message: str
) -> None:
    guest, result = bad_input_runs[json.dumps(pairs)]
    assert result.rc != 0 and result.failed == 1, result.output
    assert message in result.output, result.output
    assert guest.tree() == {}
