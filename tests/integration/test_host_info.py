"""host_info on real lab hosts, over SSH, exactly as users run it.

The VMs it reports need no guest: the session's VMs and the one given to an empty host are tiny VMs
(firmware only, under KVM), running domains like any other.
"""

from __future__ import annotations

import typing as t
from pathlib import Path

from labkit import assert_no_vm_lost, lab_status, load_hostvars, run_module

if t.TYPE_CHECKING:
    from conftest import VmFactory

MODULE = "virtops.migration.host_info"


def test_each_host_reports_its_own_vms_and_no_other(lab: Path, new_vm: VmFactory) -> None:
    # The lab is shared by the session: an earlier evacuation may have left a host empty. Give it a
    # (tiny) VM; all empty hosts get theirs from one `virtlab add-vm`.
    empty = [entry["index"] for entry in lab_status()["hosts"] if not entry["vms"]]
    if empty:
        new_vm.many([(160, index) for index in empty])
    status = lab_status()
    hostvars = load_hostvars(lab)
    uuids = set()
    for entry in status["hosts"]:
        result = run_module(lab, entry["name"], MODULE)
        assert result.get("failed") is not True, result
        assert result["changed"] is False
        facts = result["host"]
        assert facts["hostname"] == entry["name"]
        expected = sorted(vm["name"] for vm in entry["vms"])
        assert sorted(vm["name"] for vm in facts["vms"]) == expected
        assert expected, "every lab host starts with at least one VM"
        assert all(vm["state"] == "running" and vm["persistent"] for vm in facts["vms"])
        assert facts["summary"]["vms_running"] == len(expected)
        assert {"lab"} <= {net["name"] for net in facts["networks"] if net["active"]}
        assert hostvars[entry["name"]]["virtops_libvirt_uri"] == entry["uri"]
        uuids.add(facts["uuid"])
    assert len(uuids) == len(status["hosts"]), "every lab host has its own host UUID"
    assert_no_vm_lost()


def test_priorities_come_from_the_vm_metadata(lab: Path) -> None:
    result = run_module(lab, "lab-h1", MODULE)
    priorities = {vm["name"]: vm["priority"] for vm in result["host"]["vms"]}
    assert priorities["web1"] == "high"
    assert priorities["batch1"] == "low"
    assert priorities["db1"] == "medium"


def test_memory_reserve_and_check_mode(lab: Path) -> None:
    checked = run_module(lab, "lab-h2", MODULE, {"memory_reserved_mib": 1024}, check_mode=True)
    assert checked["changed"] is False
    memory = checked["host"]["memory"]
    assert memory["reserved_mib"] == 1024
    assert memory["available_mib"] == max(memory["free_mib"] - 1024, 0)
    assert 0 < memory["free_mib"] <= memory["total_mib"]


def test_unreachable_uri_is_a_clear_error(lab: Path) -> None:
    uri = "qemu+tcp://127.0.0.1:1/system"
    result = run_module(lab, "lab-h1", MODULE, {"uri": uri})
    assert result["failed"] is True
    assert result["msg"].startswith("Cannot open a libvirt connection on %s" % uri), result["msg"]
    assert result["uri"] == uri
    assert isinstance(result["libvirt_error_code"], int)


def test_malformed_uri_is_a_clear_error(lab: Path) -> None:
    uri = "qemu+nosuchtransport://somewhere/system"
    result = run_module(lab, "lab-h1", MODULE, {"uri": uri})
    assert result["failed"] is True
    assert uri in result["msg"] and "libvirt:" in result["msg"], result["msg"]
