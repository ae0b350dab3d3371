# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The ``virtops.migration.host_info`` module, run through its ``main()``."""

from __future__ import annotations

import json
import typing as t

import libvirt
import pytest
from ansible.module_utils import _internal as module_utils_internal
from ansible.module_utils.common import warnings as module_warnings
from ansible.module_utils.testing import patch_module_args

from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration import modulekit
from ansible_collections.virtops.migration.plugins.modules import host_info
from libvirt_fakes import FakeConnection, FakeDomain, FakeObject, libvirt_error

Sample = t.Callable[[str], str]


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Module warnings are kept per process; give every test its own.

    A module runs on the target, where warnings go into the result. Importing controller code in
    the same process (another test file uses an Ansible filter plugin) switches ansible-core to
    controller mode, where warnings go to the display instead: switch it back for these tests.
    """
    if hasattr(module_warnings, "_global_warnings"):
        monkeypatch.setattr(module_warnings, "_global_warnings", {})
    monkeypatch.setattr(module_utils_internal, "is_controller", False)


def warning_texts(result: t.Mapping[str, t.Any]) -> t.List[str]:
    """The warning messages of a result (ansible-core 2.19 returns them as structured summaries)."""
    return [item["event"]["msg"] if isinstance(item, dict) else str(item) for item in result.get("warnings", [])]


def run_module(args: t.Dict[str, t.Any], capsys: pytest.CaptureFixture[str]) -> t.Dict[str, t.Any]:
    """Run ``main()`` with ``args`` and return the JSON it printed (it always exits)."""
    with patch_module_args(args), pytest.raises(SystemExit) as exited:
        host_info.main()
    result = t.cast(t.Dict[str, t.Any], json.loads(capsys.readouterr().out))
    assert (exited.value.code == 0) is not result.get("failed", False)
    return result


@pytest.fixture
def fake(sample: Sample, monkeypatch: pytest.MonkeyPatch) -> FakeConnection:
    """A fake QEMU host that ``libvirt.openAuth`` hands out; ``fake.opened`` records the URIs."""
    conn = FakeConnection(
        sample("capabilities-qemu.xml"),
        domain_capabilities={"kvm": sample("domcapabilities-kvm.xml"), "qemu": sample("domcapabilities-qemu.xml")},
        domains=[
            FakeDomain(sample("domain-running.xml")),
            FakeDomain(sample("domain-shutoff.xml").replace("probe-vm", "cold-vm"), (libvirt.VIR_DOMAIN_SHUTOFF, 1)),
        ],
        networks=[FakeObject(sample("network-bridge.xml"))],
        pools=[FakeObject(sample("pool-dir.xml"))],
    )
    opened: t.List[str] = []

    def open_auth(uri: str, auth: t.List[t.Any], flags: int) -> FakeConnection:
        opened.append(uri)
        return conn

    monkeypatch.setattr(libvirt, "openAuth", open_auth)
    conn.opened = opened  # type: ignore[attr-defined]
    return conn


def test_returns_the_host_facts(fake: FakeConnection, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_module({"uri": "qemu+tcp://hv1.example.com/system", "memory_reserved_mib": 512}, capsys)
    assert result["changed"] is False
    assert "failed" not in result
    assert warning_texts(result) == []
    host = result["host"]
    assert host["uri"] == "qemu+tcp://hv1.example.com/system"
    assert host["hostname"] == "hv1"
    assert host["libvirt_version"] == "9.0.0"
    assert host["hypervisor"] == {"type": "QEMU", "version": "7.2.22"}
    assert host["memory"] == {"total_mib": 24105, "free_mib": 23792, "reserved_mib": 512, "available_mib": 23280}
    assert sorted(host["domain_capabilities"]) == ["kvm", "qemu"]
    assert [(vm["name"], vm["state"], vm["priority"]) for vm in host["vms"]] == [
        ("cold-vm", "shut off", "high"),
        ("probe-vm", "running", "high"),
    ]
    assert host["summary"] == {"vms_total": 2, "vms_running": 1, "vcpus_running": 1, "memory_running_mib": 128}
    assert fake.closed is True
    assert fake.opened == ["qemu+tcp://hv1.example.com/system"]  # type: ignore[attr-defined]


def test_default_reserve_is_256_mib(fake: FakeConnection, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_module({}, capsys)
    assert result["host"]["memory"]["reserved_mib"] == 256
    assert result["host"]["memory"]["available_mib"] == 23792 - 256


def test_uri_defaults_to_the_system_uri(
    fake: FakeConnection, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI", raising=False)
    run_module({}, capsys)
    assert fake.opened == ["qemu:///system"]  # type: ignore[attr-defined]


def test_uri_falls_back_to_the_environment(
    fake: FakeConnection, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "qemu+ssh://root@hv2/system")
    run_module({}, capsys)
    run_module({"uri": ""}, capsys)
    run_module({"uri": "qemu+tcp://hv3/system"}, capsys)
    assert fake.opened == [  # type: ignore[attr-defined]
        "qemu+ssh://root@hv2/system",
        "qemu+ssh://root@hv2/system",
        "qemu+tcp://hv3/system",
    ]


def test_password_is_not_logged(fake: FakeConnection, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_module({"username": "alice", "password": "s3cret-pw", "_ansible_check_mode": True}, capsys)
    assert "s3cret-pw" not in json.dumps(result)
    assert result["changed"] is False


def test_check_mode_reads_the_same_facts(fake: FakeConnection, capsys: pytest.CaptureFixture[str]) -> None:
    normal = run_module({}, capsys)
    checked = run_module({"_ansible_check_mode": True}, capsys)
    assert checked["host"] == normal["host"]
    assert checked["changed"] is False


def test_warnings_are_returned(fake: FakeConnection, capsys: pytest.CaptureFixture[str]) -> None:
    del fake.domain_capabilities["kvm"]
    result = run_module({}, capsys)
    assert warning_texts(result) == [
        "qemu+tcp://hv1.example.com/system does not report domain capabilities for kvm (this function is not "
        "supported by the connection driver: virConnectGetDomainCapabilities)."
    ]


def test_an_unreachable_host_fails_with_the_libvirt_details(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(uri: str, auth: t.List[t.Any], flags: int) -> t.NoReturn:
        raise libvirt_error(
            libvirt.VIR_ERR_SYSTEM_ERROR,
            "unable to connect to server at 'hv9:16509': Connection refused",
            libvirt.VIR_FROM_RPC,
        )

    monkeypatch.setattr(libvirt, "openAuth", refuse)
    result = run_module({"uri": "qemu+tcp://hv9/system"}, capsys)
    assert result["failed"] is True
    assert result["msg"].startswith("Cannot open a libvirt connection on qemu+tcp://hv9/system")
    assert "Connection refused" in result["msg"]
    assert result["uri"] == "qemu+tcp://hv9/system"
    assert result["libvirt_error_code"] == libvirt.VIR_ERR_SYSTEM_ERROR
    assert result["libvirt_error_name"] == "VIR_ERR_SYSTEM_ERROR"
    assert result["libvirt_error_domain"] == libvirt.VIR_FROM_RPC


def test_a_connection_lost_midway_fails_and_closes(fake: FakeConnection, capsys: pytest.CaptureFixture[str]) -> None:
    fake.network_error = libvirt_error(
        libvirt.VIR_ERR_RPC, "internal error: client socket is closed", libvirt.VIR_FROM_RPC
    )
    result = run_module({}, capsys)
    assert result["failed"] is True
    assert result["msg"].startswith("Cannot list the virtual networks on qemu+tcp://hv1.example.com/system")
    assert result["libvirt_error_code"] == libvirt.VIR_ERR_RPC
    assert fake.closed is True


def test_a_negative_reserve_fails(fake: FakeConnection, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_module({"memory_reserved_mib": -5}, capsys)
    assert result["failed"] is True
    assert result["msg"] == "memory_reserved_mib must be 0 or more, got -5."
    assert result["memory_reserved_mib"] == -5


def test_unknown_options_are_refused(fake: FakeConnection, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_module({"state": "present"}, capsys)
    assert result["failed"] is True
    assert "Unsupported parameters" in result["msg"]


def test_missing_libvirt_python_is_reported(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(modulekit, "HAS_LIBVIRT", False)
    monkeypatch.setattr(modulekit, "LIBVIRT_IMPORT_ERROR", "Traceback: No module named 'libvirt'")
    result = run_module({}, capsys)
    assert result["failed"] is True
    assert result["msg"].startswith("Failed to import the required Python library (libvirt-python)")


def test_against_libvirts_test_driver(capsys: pytest.CaptureFixture[str]) -> None:
    # No fake: the real libvirt bindings, served by libvirt's in-process test driver.
    result = run_module({"uri": "test:///default", "memory_reserved_mib": 0}, capsys)
    host = result["host"]
    assert host["uri"] == "test:///default"
    assert host["hypervisor"]["type"] == "TEST"
    assert [vm["name"] for vm in host["vms"]] == ["test"]
    assert host["vms"][0]["migration_settings"] == {}
    assert host["vms"][0]["priority"] == "medium"


def test_gather_nothing_reads_no_vm(capsys: pytest.CaptureFixture[str]) -> None:
    # libvirt's test driver has one running VM and a network and a pool; gather: [] reads none of them.
    everything = run_module({"uri": "test:///default", "memory_reserved_mib": 0}, capsys)["host"]
    assert everything["vms"] and everything["networks"] and everything["storage_pools"]
    quick = run_module({"uri": "test:///default", "memory_reserved_mib": 0, "gather": []}, capsys)["host"]
    assert (quick["vms"], quick["networks"], quick["storage_pools"], quick["domain_capabilities"]) == ([], [], [], {})
    assert quick["uuid"] == everything["uuid"] and quick["memory"]["total_mib"] == everything["memory"]["total_mib"]
    assert quick["maintenance"]["active"] is False


def test_gather_refuses_an_unknown_part(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_module({"uri": "test:///default", "gather": ["vms", "secrets"]}, capsys)
    assert result["failed"] is True and "secrets" in result["msg"]
