"""The lab's pure parts (tests/lab/virtlab_lib, tests/integration/labkit.py): the command line of the
fence agent and of the other failure commands, fence status codes, how down hosts count in `check`,
and reading a VM's name from a QEMU command line.

The commands themselves run on the lab (they need root, namespaces and libvirtd).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "lab"))
sys.path.insert(0, str(TESTS / "integration"))

import labkit  # noqa: E402 pylint: disable=wrong-import-position,import-error
from virtlab_lib import cli, hosts, perturbations  # noqa: E402 pylint: disable=wrong-import-position,import-error
from virtlab_lib.common import Host, Vm  # noqa: E402 pylint: disable=wrong-import-position,import-error


def parse(*argv: str) -> object:
    return cli.parser().parse_args(list(argv))


@pytest.mark.parametrize(
    ("argv", "action"),
    [
        (["fence", "lab-h1", "-o", "off"], "off"),
        (["fence", "lab-h1", "-ooff"], "off"),
        (["fence", "lab-h1", "--action=status"], "status"),
        (["fence", "lab-h1", "--action", "on"], "on"),
        (["fence", "-o", "reboot", "h2"], "reboot"),
        # fence agents reboot when no action is given
        (["fence", "lab-h1"], "reboot"),
    ],
)
def test_fence_takes_the_action_as_fence_agents_do(argv: list[str], action: str) -> None:
    args = parse(*argv)
    assert args.action == action
    assert args.handler is perturbations.cmd_fence


@pytest.mark.parametrize("argv", [["fence", "lab-h1", "-o", "cycle"], ["fence", "-o", "off"], ["crash"], ["partition"]])
def test_bad_fence_crash_and_partition_lines_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse(*argv)


def test_partition_crash_and_shared_disk_options() -> None:
    assert parse("partition", "h2").heal is False
    assert parse("partition", "h2", "--heal").heal is True
    assert parse("crash", "3").handler is perturbations.cmd_crash
    args = parse("add-vm", "--tiny", "--shared-disk", "64", "t1@2")
    assert (args.tiny, args.shared_disk, args.vm) == (True, 64, ["t1@2"])
    assert parse("add-vm", "a:128").shared_disk is None


@pytest.mark.parametrize(("power", "line", "code"), [("on", "Status: ON", 0), ("off", "Status: OFF", 2)])
def test_fence_status_follows_the_fence_agents_exit_codes(power: str, line: str, code: int) -> None:
    assert perturbations.fence_status(power) == (line, code)


def host(**fields: object) -> Host:
    base = {"name": "lab-h1", "index": 1, "address": "10.254.77.11", "netns": "n", "veth": "v", "dir": "/x", "host_uuid": "u"}
    return Host(**dict(base, **fields))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [({}, ""), ({"crashed": True}, "crashed"), ({"power": "off"}, "powered off"), ({"power": "off", "crashed": True}, "powered off")],
)
def test_a_host_is_down_when_crashed_or_powered_off(fields: dict[str, object], reason: str) -> None:
    assert host(**fields).down_reason == reason


@pytest.mark.parametrize(
    ("entry", "tag"),
    [
        ({"power": "on", "crashed": False, "link_up": True, "migration_link_up": True}, ""),
        ({"power": "on", "crashed": False, "link_up": False, "migration_link_up": False}, "PARTITIONED"),
        ({"power": "on", "crashed": False, "link_up": False, "migration_link_up": True}, ""),
        ({"power": "on", "crashed": True, "link_up": True, "migration_link_up": True}, "CRASHED"),
        ({"power": "off", "crashed": False, "link_up": False, "migration_link_up": False}, "POWERED OFF"),
    ],
)
def test_status_tags_a_host_by_its_condition(entry: dict[str, object], tag: str) -> None:
    assert hosts.power_tag(entry) == tag


def test_killed_summary_counts_qemu_processes() -> None:
    names = ["libvirtd", "qemu-system-x86", "virtlockd", "sshd", "qemu-system-x86"]
    assert perturbations.killed_summary(names) == "5 processes (libvirtd, sshd, virtlockd, 2 QEMU)"
    assert perturbations.killed_summary([]) == "nothing was running"


def test_a_vm_on_no_inspected_host_may_be_on_a_down_host() -> None:
    down = ["lab-h2 (crashed)"]
    problems = hosts.vm_invariant_problems([], [], False, [], down)
    assert problems == ["found on no inspected host (it may be on a host that is down: lab-h2 (crashed))"]
    assert not hosts.vm_invariant_problems([], [], True, [], down)
    # Without a down host, a VM found nowhere is lost, allowed to be stopped or not.
    assert hosts.vm_invariant_problems([], [], True, []) == ["defined on no host (lost)"]
    # A host that is up but cannot be read still fails the check.
    assert hosts.vm_invariant_problems([], [], True, ["lab-h3"], down) == [
        "not found on the hosts that could be inspected (not inspected: lab-h3, lab-h2 (crashed))"
    ]
    # A VM that runs on an inspected host is judged as before.
    assert not hosts.vm_invariant_problems(["lab-h1"], [("lab-h1", "running")], False, [], down)


def test_a_shared_disk_is_a_raw_virtio_disk_without_host_cache() -> None:
    vm = Vm(name="d1", memory_mib=32, priority="medium", host_index=1, tiny=True)
    assert hosts.shared_disk_xml(vm) == ""
    vm.shared_disk, vm.shared_disk_mib = "/var/tmp/virtops-lab/shared/disks/d1.img", 64
    xml = hosts.shared_disk_xml(vm)
    assert "<source file='/var/tmp/virtops-lab/shared/disks/d1.img'/>" in xml
    assert "<driver name='qemu' type='raw' cache='none'/>" in xml
    assert "<target dev='vda' bus='virtio'/>" in xml


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["/usr/bin/qemu-system-x86_64", "-name", "guest=t1,debug-threads=on", "-S"], "t1"),
        (["qemu", "-name", "guest=a,,b,debug-threads=on"], "a,b"),
        (["qemu", "-name", "guest=web"], "web"),
        (["qemu", "-machine", "pc"], None),
        (["qemu", "-name"], None),
    ],
)
def test_qemu_guest_name_reads_the_name_option(argv: list[str], name: str | None) -> None:
    assert labkit.qemu_guest_name(argv) == name
