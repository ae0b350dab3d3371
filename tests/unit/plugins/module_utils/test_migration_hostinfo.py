# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Host facts: the XML parsers and the collector (``_migration/pure/hostinfo.py``)."""

from __future__ import annotations

import typing as t

import libvirt
import pytest

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import hostinfo
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import (
    HostUnreachableError,
    MigrationError,
)
from libvirt_fakes import FakeConnection, FakeDomain, FakeObject, libvirt_error

Sample = t.Callable[[str], str]


def test_parse_capabilities_of_a_qemu_host(sample: Sample) -> None:
    caps = hostinfo.parse_capabilities(sample("capabilities-qemu.xml"))
    assert caps["uuid"] == "685adf38-a605-49f0-b38b-31df0e753953"
    cpu = caps["cpu"]
    assert {key: cpu[key] for key in ("arch", "model", "vendor", "sockets", "dies", "cores", "threads")} == {
        "arch": "x86_64",
        "model": "kvm64",
        "vendor": "AMD",
        "sockets": 1,
        "dies": 1,
        "cores": 2,
        "threads": 1,
    }
    assert "avx2" in cpu["features"]
    assert cpu["features"] == sorted(cpu["features"])
    assert caps["numa_cells"] == [{"id": 0, "memory_mib": 5850, "cpus": 2}]
    assert caps["migration"] == {"live": True, "uri_transports": ["tcp", "rdma"]}
    assert caps["secmodels"] == ["none", "dac"]
    assert [(guest["arch"], guest["wordsize"], guest["domain_types"]) for guest in caps["guests"]] == [
        ("i686", 32, ["qemu", "kvm"]),
        ("x86_64", 64, ["qemu", "kvm"]),
    ]
    x86_64 = caps["guests"][1]
    assert x86_64["os_type"] == "hvm"
    assert x86_64["emulator"] == "/usr/bin/qemu-system-x86_64"
    assert {"pc", "q35", "pc-q35-7.2", "pc-i440fx-7.2"} <= set(x86_64["machines"])
    assert len(x86_64["machines"]) == len(set(x86_64["machines"]))


def test_parse_capabilities_of_the_test_driver(sample: Sample) -> None:
    caps = hostinfo.parse_capabilities(sample("capabilities-test.xml"))
    assert caps["uuid"] is None
    assert caps["cpu"]["arch"] == "i686"
    assert caps["cpu"]["model"] is None
    assert caps["cpu"]["sockets"] is None
    assert [cell["cpus"] for cell in caps["numa_cells"]] == [8, 8]
    assert [cell["memory_mib"] for cell in caps["numa_cells"]] == [2048, 4096]
    assert caps["migration"] == {"live": False, "uri_transports": []}
    assert caps["guests"][0]["domain_types"] == ["test"]


def test_parse_capabilities_tolerates_a_bare_document(sample: Sample) -> None:
    caps = hostinfo.parse_capabilities(sample("capabilities-minimal.xml"))
    assert caps == {
        "uuid": None,
        "cpu": {
            "arch": "aarch64",
            "model": None,
            "vendor": None,
            "sockets": None,
            "dies": None,
            "cores": None,
            "threads": None,
            "features": [],
        },
        "numa_cells": [],
        "migration": {"live": False, "uri_transports": []},
        "secmodels": [],
        "guests": [],
    }


def test_parse_capabilities_needs_a_host_element() -> None:
    with pytest.raises(ValueError, match="no <host> element"):
        hostinfo.parse_capabilities("<capabilities/>")


@pytest.mark.parametrize(
    ("name", "domain_type"), [("domcapabilities-kvm.xml", "kvm"), ("domcapabilities-qemu.xml", "qemu")]
)
def test_parse_domain_capabilities(sample: Sample, name: str, domain_type: str) -> None:
    caps = hostinfo.parse_domain_capabilities(sample(name))
    assert caps["domain_type"] == domain_type
    assert caps["emulator"] == "/usr/bin/qemu-system-x86_64"
    assert caps["machine"] == "pc-i440fx-7.2"
    assert caps["arch"] == "x86_64"
    assert caps["max_vcpus"] == 255
    assert caps["features"]["backup"] is True
    assert caps["features"]["sev"] is False


def test_domain_capabilities_cpu_facts_for_kvm(sample: Sample) -> None:
    caps = hostinfo.parse_domain_capabilities(sample("domcapabilities-kvm.xml"))
    assert caps["cpu_modes"] == ["custom", "host-model", "host-passthrough", "maximum"]
    assert caps["host_model"] == {"supported": True, "model": "kvm64", "vendor": "AMD"}
    assert caps["host_passthrough_migratable"] is True
    assert caps["usable_cpu_models"] == ["pentium3", "pentium2", "pentium", "486"]


def test_domain_capabilities_without_cpu_modes() -> None:
    caps = hostinfo.parse_domain_capabilities(
        "<domainCapabilities><domain>qemu</domain><cpu><mode name='host-passthrough' supported='no'/></cpu>"
        "<features><sev supported='no'/></features></domainCapabilities>"
    )
    assert caps["cpu_modes"] == []
    assert caps["host_model"] == {"supported": False, "model": None, "vendor": None}
    assert caps["host_passthrough_migratable"] is False
    assert caps["usable_cpu_models"] == []
    assert caps["max_vcpus"] is None
    assert caps["features"] == {"sev": False}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "network-bridge.xml",
            {
                "name": "lab",
                "uuid": "d4743fbb-bea7-4c6e-b38d-a986f5314549",
                "forward_mode": "bridge",
                "bridge": "labbr0",
            },
        ),
        (
            "network-nat.xml",
            {
                "name": "default",
                "uuid": "53730b30-a4f9-4b4f-8a26-ad7f84ce21f7",
                "forward_mode": "nat",
                "bridge": "virbr0",
            },
        ),
        (
            "network-isolated.xml",
            {
                "name": "storage-net",
                "uuid": "0f6a3c9e-4b8e-4d37-9a5e-2f1b3d4c5e6f",
                "forward_mode": "isolated",
                "bridge": "virbr5",
            },
        ),
        (
            "network-hostdev.xml",
            {
                "name": "sriov-pf0",
                "uuid": "7c1d2e3f-8a9b-4c5d-9e0f-1a2b3c4d5e6f",
                "forward_mode": "hostdev",
                "bridge": None,
            },
        ),
    ],
)
def test_parse_network_xml(sample: Sample, name: str, expected: t.Dict[str, t.Any]) -> None:
    assert hostinfo.parse_network_xml(sample(name)) == expected


def test_a_forward_element_without_mode_is_nat() -> None:
    assert hostinfo.parse_network_xml("<network><name>n</name><forward/></network>")["forward_mode"] == "nat"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "pool-dir.xml",
            {
                "name": "images",
                "uuid": "ec758229-37db-4de3-b590-9917a5db29d0",
                "type": "dir",
                "target_path": "/var/lib/libvirt/images",
                "capacity_bytes": 0,
                "allocation_bytes": 0,
                "available_bytes": 0,
            },
        ),
        (
            "pool-rbd.xml",
            {
                "name": "ceph-vms",
                "uuid": "3a4b5c6d-7e8f-4a1b-9c2d-3e4f5a6b7c8d",
                "type": "rbd",
                "target_path": None,
                "capacity_bytes": 1099511627776,
                "allocation_bytes": 214748364800,
                "available_bytes": 884763262976,
            },
        ),
    ],
)
def test_parse_pool_xml(sample: Sample, name: str, expected: t.Dict[str, t.Any]) -> None:
    assert hostinfo.parse_pool_xml(sample(name)) == expected


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (9000000, "9.0.0"),
        (7002022, "7.2.22"),
        (10010003, "10.10.3"),
        (2, "0.0.2"),
        (0, "0.0.0"),
        (None, None),
        (-1, None),
    ],
)
def test_version_string(number: t.Optional[int], text: t.Optional[str]) -> None:
    assert hostinfo.version_string(number) == text


@pytest.mark.parametrize(
    ("total_kib", "free_kib", "reserved", "expected"),
    [
        (8388608, 4194304, 0, {"total_mib": 8192, "free_mib": 4096, "reserved_mib": 0, "available_mib": 4096}),
        (8388608, 4194304, 1024, {"total_mib": 8192, "free_mib": 4096, "reserved_mib": 1024, "available_mib": 3072}),
        (8388608, 4194304, 4096, {"total_mib": 8192, "free_mib": 4096, "reserved_mib": 4096, "available_mib": 0}),
        (8388608, 1048576, 4096, {"total_mib": 8192, "free_mib": 1024, "reserved_mib": 4096, "available_mib": 0}),
        (8388608, 1023, 0, {"total_mib": 8192, "free_mib": 0, "reserved_mib": 0, "available_mib": 0}),
    ],
)
def test_memory_facts_never_go_negative(
    total_kib: int, free_kib: int, reserved: int, expected: t.Dict[str, int]
) -> None:
    assert hostinfo.memory_facts(total_kib, free_kib, reserved) == expected


@pytest.mark.parametrize(
    ("vms", "expected"),
    [
        ([], {"vms_total": 0, "vms_running": 0, "vcpus_running": 0, "memory_running_mib": 0}),
        (
            [
                {"active": True, "vcpus": 2, "memory_mib": 2048},
                {"active": True, "vcpus": 1, "memory_mib": 512},
                {"active": False, "vcpus": 8, "memory_mib": 16384},
            ],
            {"vms_total": 3, "vms_running": 2, "vcpus_running": 3, "memory_running_mib": 2560},
        ),
        (
            [{"active": True, "vcpus": None, "memory_mib": None}],
            {"vms_total": 1, "vms_running": 1, "vcpus_running": 0, "memory_running_mib": 0},
        ),
    ],
)
def test_summarize_vms_counts_active_ones(vms: t.List[t.Dict[str, t.Any]], expected: t.Dict[str, int]) -> None:
    assert hostinfo.summarize_vms(vms) == expected


@pytest.fixture
def conn(sample: Sample) -> FakeConnection:
    return FakeConnection(
        sample("capabilities-qemu.xml"),
        domain_capabilities={"kvm": sample("domcapabilities-kvm.xml"), "qemu": sample("domcapabilities-qemu.xml")},
        domains=[
            FakeDomain(sample("domain-running.xml"), (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED)),
            FakeDomain(
                sample("domain-transient.xml"),
                (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER),
                persistent=False,
            ),
            FakeDomain(
                sample("domain-custom.xml"),
                (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN),
                autostart=True,
            ),
        ],
        networks=[
            FakeObject(sample("network-nat.xml"), active=False),
            FakeObject(sample("network-bridge.xml"), autostart=True),
        ],
        pools=[FakeObject(sample("pool-rbd.xml")), FakeObject(sample("pool-dir.xml"), persistent=False)],
    )


def test_collector_gathers_everything(conn: FakeConnection) -> None:
    collector = hostinfo.HostInfoCollector(conn, memory_reserved_mib=1024)
    host = collector.collect()
    assert sorted(host) == [
        "cpu",
        "domain_capabilities",
        "guests",
        "hostname",
        "hypervisor",
        "libvirt_version",
        "memory",
        "migration",
        "networks",
        "storage_pools",
        "summary",
        "uri",
        "uuid",
        "vms",
    ]
    assert host["uri"] == "qemu+tcp://hv1.example.com/system"
    assert host["hostname"] == "hv1"
    assert host["uuid"] == "685adf38-a605-49f0-b38b-31df0e753953"
    assert host["libvirt_version"] == "9.0.0"
    assert host["hypervisor"] == {"type": "QEMU", "version": "7.2.22"}
    assert {key: value for key, value in host["cpu"].items() if key != "features"} == {
        "arch": "x86_64",
        "model": "kvm64",
        "vendor": "AMD",
        "count": 2,
        "mhz": 2596,
        "sockets": 1,
        "dies": 1,
        "cores": 2,
        "threads": 1,
        "numa_nodes": 1,
    }
    # free = MemFree + Buffers + Cached = 23513768 + 17856 + 831616 KiB
    assert host["memory"] == {"total_mib": 24105, "free_mib": 23792, "reserved_mib": 1024, "available_mib": 22768}
    assert conn.calls.count("getMemoryStats(-1)") == 1
    assert host["migration"] == {"live": True, "uri_transports": ["tcp", "rdma"]}
    assert sorted(host["domain_capabilities"]) == ["kvm", "qemu"]
    assert host["domain_capabilities"]["qemu"]["domain_type"] == "qemu"
    assert "getDomainCapabilities(x86_64, kvm)" in conn.calls
    assert [(n["name"], n["active"], n["persistent"], n["autostart"]) for n in host["networks"]] == [
        ("default", False, True, False),
        ("lab", True, True, True),
    ]
    assert [(p["name"], p["type"], p["persistent"]) for p in host["storage_pools"]] == [
        ("ceph-vms", "rbd", True),
        ("images", "dir", False),
    ]
    assert [
        (vm["name"], vm["state"], vm["state_reason"], vm["active"], vm["persistent"], vm["autostart"])
        for vm in host["vms"]
    ] == [
        ("db1", "shut off", "shutdown", False, True, True),
        ("probe-vm", "running", "booted", True, True, False),
        ("transient-vm", "paused", "user", True, False, False),
    ]
    assert [(vm["name"], vm["priority"], vm["migration_settings"]) for vm in host["vms"]] == [
        ("db1", "medium", {}),
        (
            "probe-vm",
            "high",
            {
                "auto_converge": True,
                "bandwidth_mib": 64,
                "migration_mode": "auto",
                "pinned_hosts": ["lab-h1", "lab-h2"],
                "priority": "high",
            },
        ),
        ("transient-vm", "medium", {}),
    ]
    assert host["summary"] == {"vms_total": 3, "vms_running": 2, "vcpus_running": 2, "memory_running_mib": 256}
    assert collector.warnings == [
        "VM 'db1' on qemu+tcp://hv1.example.com/system has unreadable migration settings, left out (an unreadable "
        "migration mode or pinning counts as migration_mode none): "
        "metadata.priority must be one of low, medium, high or inherit, got 'urgent'"
    ]


def test_collector_falls_back_when_memory_statistics_are_unsupported(conn: FakeConnection) -> None:
    conn.memory_stats = None
    conn.free_memory = 2 * 1024**3
    host = hostinfo.HostInfoCollector(conn, memory_reserved_mib=256).collect()
    assert host["memory"] == {"total_mib": 24105, "free_mib": 2048, "reserved_mib": 256, "available_mib": 1792}


def test_collector_reports_missing_domain_capabilities_as_a_warning(conn: FakeConnection) -> None:
    del conn.domain_capabilities["kvm"]
    collector = hostinfo.HostInfoCollector(conn)
    host = collector.collect()
    assert sorted(host["domain_capabilities"]) == ["qemu"]
    assert any("does not report domain capabilities for kvm" in warning for warning in collector.warnings)


def test_collector_reports_other_domain_capabilities_failures_as_warnings(conn: FakeConnection) -> None:
    conn.domain_capabilities_error = libvirt_error(
        libvirt.VIR_ERR_INVALID_ARG, "invalid argument: KVM is not supported on this host", libvirt.VIR_FROM_QEMU
    )
    collector = hostinfo.HostInfoCollector(conn)
    assert collector.collect()["domain_capabilities"] == {}
    # The first warning is about db1's metadata; then one per virtualization type.
    assert collector.warnings[1:] == [
        "Cannot read the qemu domain capabilities on qemu+tcp://hv1.example.com/system: the operation failed. "
        "libvirt: invalid argument: KVM is not supported on this host [VIR_ERR_INVALID_ARG]",
        "Cannot read the kvm domain capabilities on qemu+tcp://hv1.example.com/system: the operation failed. "
        "libvirt: invalid argument: KVM is not supported on this host [VIR_ERR_INVALID_ARG]",
    ]


def test_collector_fails_when_the_connection_drops_while_reading_domain_capabilities(conn: FakeConnection) -> None:
    conn.domain_capabilities_error = libvirt_error(
        libvirt.VIR_ERR_SYSTEM_ERROR, "Cannot write data: Broken pipe", libvirt.VIR_FROM_RPC
    )
    with pytest.raises(HostUnreachableError, match="Cannot read the qemu domain capabilities"):
        hostinfo.HostInfoCollector(conn).collect()


def test_collector_skips_vms_that_vanish_while_it_reads(conn: FakeConnection) -> None:
    conn.domains[0].vanished = True
    host = hostinfo.HostInfoCollector(conn).collect()
    assert [vm["name"] for vm in host["vms"]] == ["db1", "transient-vm"]
    assert host["summary"]["vms_total"] == 2


def test_collector_tolerates_a_driver_without_networks(conn: FakeConnection) -> None:
    conn.network_error = libvirt_error(
        libvirt.VIR_ERR_NO_SUPPORT, "this function is not supported by the connection driver: virConnectListAllNetworks"
    )
    collector = hostinfo.HostInfoCollector(conn)
    assert collector.collect()["networks"] == []
    assert any(
        warning.startswith("Cannot list the virtual networks on qemu+tcp://hv1.example.com/system")
        for warning in collector.warnings
    )


def test_collector_translates_a_lost_connection(conn: FakeConnection) -> None:
    conn.network_error = libvirt_error(
        libvirt.VIR_ERR_SYSTEM_ERROR, "Cannot recv data: Connection reset by peer", libvirt.VIR_FROM_RPC
    )
    with pytest.raises(HostUnreachableError) as caught:
        hostinfo.HostInfoCollector(conn).collect()
    assert caught.value.msg.startswith(
        "Cannot list the virtual networks on qemu+tcp://hv1.example.com/system: the host cannot be reached"
    )
    assert caught.value.details["uri"] == "qemu+tcp://hv1.example.com/system"


def test_collector_refuses_a_negative_reserve(conn: FakeConnection) -> None:
    with pytest.raises(MigrationError, match="memory_reserved_mib must be 0 or more, got -1"):
        hostinfo.HostInfoCollector(conn, memory_reserved_mib=-1)


def test_collector_on_libvirts_test_driver() -> None:
    # A real libvirt connection, served inside this process: no daemon needed.
    conn = libvirt.open("test:///default")
    try:
        collector = hostinfo.HostInfoCollector(conn, memory_reserved_mib=0)
        host = collector.collect()
    finally:
        conn.close()
    assert host["uri"] == "test:///default"
    assert host["hypervisor"] == {"type": "TEST", "version": "0.0.2"}
    assert host["cpu"]["arch"] == "i686"
    assert host["cpu"]["count"] == 16
    assert (host["cpu"]["sockets"], host["cpu"]["cores"], host["cpu"]["threads"]) == (2, 2, 2)
    assert host["memory"]["total_mib"] == 3072
    assert host["memory"]["available_mib"] == host["memory"]["free_mib"]
    assert host["domain_capabilities"] == {}
    assert [(vm["name"], vm["state"], vm["memory_mib"], vm["current_memory_mib"]) for vm in host["vms"]] == [
        ("test", "running", 8192, 2048)
    ]
    assert [network["name"] for network in host["networks"]] == ["default"]
    assert [pool["name"] for pool in host["storage_pools"]] == ["default-pool"]
    assert host["summary"] == {"vms_total": 1, "vms_running": 1, "vcpus_running": 2, "memory_running_mib": 8192}
    assert any("domain capabilities for test" in warning for warning in collector.warnings)
