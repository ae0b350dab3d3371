# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Domain lookup and domain XML reading (``_migration/pure/domain.py``)."""

from __future__ import annotations

import typing as t
import xml.etree.ElementTree as ET

import libvirt
import pytest

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import domain
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import (
    HostUnreachableError,
    VmNotFoundError,
)
from libvirt_fakes import FakeConnection, FakeDomain, libvirt_error

RUNNING_UUID = "c37d14c9-efdf-4661-a34f-1a93303f980d"
BAD_PRIORITY = "metadata.priority must be one of low, medium, high or inherit, got 'urgent'"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param(
            "domain-running.xml",
            {
                "name": "probe-vm",
                "uuid": RUNNING_UUID,
                "id": 1,
                "domain_type": "qemu",
                "arch": "x86_64",
                "machine": "pc-i440fx-7.2",
                "cpu_mode": "custom",
                "vcpus": 1,
                "max_vcpus": 2,
                "memory_mib": 128,
                "current_memory_mib": 128,
                "migration_settings": {
                    "auto_converge": True,
                    "bandwidth_mib": 64,
                    "migration_mode": "auto",
                    "pinned_hosts": ["lab-h1", "lab-h2"],
                    "priority": "high",
                },
                "priority": "high",
            },
            id="running-with-settings",
        ),
        pytest.param(
            "domain-shutoff.xml",
            {
                "name": "probe-vm",
                "uuid": RUNNING_UUID,
                "id": None,
                "domain_type": "qemu",
                "arch": "x86_64",
                "machine": "pc-i440fx-7.2",
                "cpu_mode": "custom",
                "vcpus": 1,
                "max_vcpus": 2,
                "memory_mib": 128,
                "current_memory_mib": 96,
                "migration_settings": {
                    "auto_converge": True,
                    "bandwidth_mib": 64,
                    "migration_mode": "auto",
                    "pinned_hosts": ["lab-h1", "lab-h2"],
                    "priority": "high",
                },
                "priority": "high",
            },
            id="shut-off-ballooned",
        ),
        pytest.param(
            "domain-transient.xml",
            {
                "name": "transient-vm",
                "uuid": "d71f0f47-6f1c-4b80-99df-3d0dcfb279bd",
                "id": 2,
                "domain_type": "qemu",
                "arch": "x86_64",
                "machine": "pc-i440fx-7.2",
                "cpu_mode": "custom",
                "vcpus": 1,
                "max_vcpus": 2,
                "memory_mib": 128,
                "current_memory_mib": 128,
                "migration_settings": {},
                "priority": "medium",
            },
            id="no-settings-default-priority",
        ),
        pytest.param(
            "domain-custom.xml",
            {
                "name": "db1",
                "uuid": "5b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e",
                "id": None,
                "domain_type": "kvm",
                "arch": "x86_64",
                "machine": "pc-q35-7.2",
                "cpu_mode": "host-model",
                "vcpus": 4,
                "max_vcpus": 4,
                "memory_mib": 4096,
                "current_memory_mib": 4096,
                "migration_settings": {},
                "priority": "medium",
                "migration_settings_problems": {"priority": BAD_PRIORITY},
                "migration_settings_error": BAD_PRIORITY,
            },
            id="unit-gib-and-bad-priority",
        ),
    ],
)
def test_parse_domain_xml(sample: t.Callable[[str], str], name: str, expected: t.Dict[str, t.Any]) -> None:
    assert domain.parse_domain_xml(sample(name)) == expected


def test_malformed_metadata_does_not_hide_the_other_facts() -> None:
    xml = (
        "<domain type='kvm'><name>x</name><memory unit='KiB'>1048576</memory><vcpu>2</vcpu><metadata>"
        '<v:migration xmlns:v="https://virtops.github.io/xmlns/migration/1"><v:priority>high</v:priority>'
        '<v:priority type="list"><v:item>low</v:item></v:priority></v:migration></metadata></domain>'
    )
    facts = domain.parse_domain_xml(xml)
    # Two <priority> elements: the last one wins and is a list, which is not a priority.
    assert facts["memory_mib"] == 1024
    assert facts["vcpus"] == 2
    assert facts["cpu_mode"] is None
    assert facts["migration_settings"] == {}
    assert facts["priority"] == "medium"
    assert facts["migration_settings_problems"] == {
        "priority": "metadata.priority must be one of low, medium, high or inherit, got ['low']"
    }
    assert facts["migration_settings_error"] == facts["migration_settings_problems"]["priority"]


def metadata_xml(*elements: str) -> str:
    """A small domain whose migration metadata holds the given (hand-written) elements."""
    return (
        "<domain type='kvm'><name>x</name><memory unit='KiB'>1048576</memory><vcpu>2</vcpu><metadata>"
        '<v:migration xmlns:v="https://virtops.github.io/xmlns/migration/1">%s</v:migration>'
        "</metadata></domain>" % "".join(elements)
    )


def test_a_bad_priority_keeps_the_other_settings_and_mode_none() -> None:
    facts = domain.parse_domain_xml(
        metadata_xml(
            "<v:priority>urgent</v:priority>",
            "<v:migration_mode>none</v:migration_mode>",
            "<v:bandwidth_mib>64</v:bandwidth_mib>",
        )
    )
    assert facts["migration_settings"] == {"migration_mode": "none", "bandwidth_mib": 64}
    assert facts["priority"] == "medium"
    assert set(facts["migration_settings_problems"]) == {"priority"}


@pytest.mark.parametrize(
    ("elements", "problem"),
    [
        (("<v:migration_mode>sometimes</v:migration_mode>", "<v:priority>high</v:priority>"), "migration_mode"),
        (('<v:pinned_hosts>lab-h2</v:pinned_hosts>', "<v:migration_mode>auto</v:migration_mode>"), "pinned_hosts"),
    ],
)
def test_an_unreadable_mode_or_pinning_reads_as_mode_none(elements: t.Tuple[str, ...], problem: str) -> None:
    facts = domain.parse_domain_xml(metadata_xml(*elements))
    assert facts["migration_settings"]["migration_mode"] == "none"
    assert set(facts["migration_settings_problems"]) == {problem}
    assert facts["migration_settings_error"].startswith("metadata.%s " % problem)


def test_inherited_priority_reads_as_the_default() -> None:
    facts = domain.parse_domain_xml(metadata_xml("<v:priority>inherit</v:priority>"))
    assert facts["priority"] == "medium"
    assert facts["migration_settings"] == {"priority": "inherit"}
    assert "migration_settings_problems" not in facts and "migration_settings_error" not in facts


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        ("<memory unit='KiB'>131072</memory>", 134217728),
        ("<memory>131072</memory>", 134217728),
        ("<memory unit='k'>1</memory>", 1024),
        ("<memory unit='KB'>1</memory>", 1000),
        ("<memory unit='b'>512</memory>", 512),
        ("<memory unit='bytes'>512</memory>", 512),
        ("<memory unit='M'>2</memory>", 2 * 1024**2),
        ("<memory unit='MiB'>2</memory>", 2 * 1024**2),
        ("<memory unit='MB'>2</memory>", 2 * 1000**2),
        ("<memory unit='GiB'>4</memory>", 4 * 1024**3),
        ("<memory unit='G'>4</memory>", 4 * 1024**3),
        ("<memory unit='GB'>4</memory>", 4 * 1000**3),
        ("<memory unit='TiB'>1</memory>", 1024**4),
        ("<memory unit='TB'>1</memory>", 1000**4),
        ("<memory unit='PiB'>1</memory>", 1024**5),
        ("<memory unit='EiB'>1</memory>", 1024**6),
        ("<memory unit='KiB'> 8 </memory>", 8192),
        ("<memory unit='KiB'></memory>", None),
    ],
)
def test_scaled_bytes_understands_libvirt_units(xml: str, expected: t.Optional[int]) -> None:
    assert domain.scaled_bytes(ET.fromstring(xml)) == expected


def test_scaled_bytes_of_a_missing_element_is_none() -> None:
    assert domain.scaled_bytes(None) is None


def test_scaled_bytes_refuses_unknown_units() -> None:
    with pytest.raises(ValueError, match="unknown unit 'parsecs' in <memory>"):
        domain.scaled_bytes(ET.fromstring("<memory unit='parsecs'>1</memory>"))


@pytest.mark.parametrize(("value", "mib"), [(None, None), (0, 0), (1048575, 0), (1048576, 1), (134217728, 128)])
def test_to_mib_rounds_down(value: t.Optional[int], mib: t.Optional[int]) -> None:
    assert domain.to_mib(value) == mib


@pytest.mark.parametrize(
    ("state", "name"),
    [
        (libvirt.VIR_DOMAIN_NOSTATE, "no state"),
        (libvirt.VIR_DOMAIN_RUNNING, "running"),
        (libvirt.VIR_DOMAIN_BLOCKED, "idle"),
        (libvirt.VIR_DOMAIN_PAUSED, "paused"),
        (libvirt.VIR_DOMAIN_SHUTDOWN, "in shutdown"),
        (libvirt.VIR_DOMAIN_SHUTOFF, "shut off"),
        (libvirt.VIR_DOMAIN_CRASHED, "crashed"),
        (libvirt.VIR_DOMAIN_PMSUSPENDED, "pmsuspended"),
        (99, "unknown (99)"),
    ],
)
def test_state_names_match_virsh(state: int, name: str) -> None:
    assert domain.state_name(state) == name


@pytest.mark.parametrize(
    ("state", "reason", "word"),
    [
        (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED, "booted"),
        (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_MIGRATED, "migrated"),
        (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_MIGRATION_CANCELED, "migration cancelled"),
        (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_POSTCOPY, "post-copy"),
        (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_POSTCOPY_FAILED, "post-copy failed"),
        (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER, "user"),
        (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION, "migration"),
        (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY, "post-copy"),
        (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED, "post-copy failed"),
        (libvirt.VIR_DOMAIN_PAUSED, 14, "API error"),  # VIR_DOMAIN_PAUSED_API_ERROR, libvirt 9.1+
        (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED, "destroyed"),
        (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED, "migrated"),
        (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DAEMON, "daemon"),
        (libvirt.VIR_DOMAIN_CRASHED, 1, "unknown"),
        (libvirt.VIR_DOMAIN_RUNNING, 99, "unknown"),
    ],
)
def test_state_reasons_follow_libvirts_enums(state: int, reason: int, word: str) -> None:
    assert domain.state_reason(state, reason) == word


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (RUNNING_UUID, True),
        (RUNNING_UUID.upper(), True),
        (RUNNING_UUID.replace("-", ""), True),
        ("probe-vm", False),
        (RUNNING_UUID + "0", False),
        ("", False),
    ],
)
def test_looks_like_uuid(text: str, expected: bool) -> None:
    assert domain.looks_like_uuid(text) is expected


@pytest.fixture
def conn(sample: t.Callable[[str], str]) -> FakeConnection:
    return FakeConnection(
        sample("capabilities-qemu.xml"),
        domains=[FakeDomain(sample("domain-running.xml")), FakeDomain(sample("domain-custom.xml"))],
    )


def test_lookup_by_name(conn: FakeConnection) -> None:
    assert domain.lookup_domain(conn, "db1").name() == "db1"
    assert conn.calls == ["lookupByName(db1)"]


def test_lookup_by_uuid_tries_the_uuid_first(conn: FakeConnection) -> None:
    assert domain.lookup_domain(conn, RUNNING_UUID).name() == "probe-vm"
    assert conn.calls == ["lookupByUUIDString(%s)" % RUNNING_UUID]


def test_a_uuid_shaped_string_is_looked_up_only_as_a_uuid(conn: FakeConnection, sample: t.Callable[[str], str]) -> None:
    # A VM whose name is shaped like a UUID is not the VM with that UUID: it is never found by it.
    odd = "00000000-0000-0000-0000-000000000001"
    conn.domains.append(FakeDomain(sample("domain-transient.xml").replace("transient-vm", odd)))
    assert domain.find_domain(conn, odd) is None
    assert conn.calls == ["lookupByUUIDString(%s)" % odd]
    with pytest.raises(VmNotFoundError, match=r"\(looked up by UUID\)"):
        domain.lookup_domain(conn, odd)


def test_find_domain_gives_none_when_absent(conn: FakeConnection) -> None:
    assert domain.find_domain(conn, "nope") is None


def test_lookup_domain_names_the_vm_and_the_uri_when_absent(conn: FakeConnection) -> None:
    with pytest.raises(VmNotFoundError) as caught:
        domain.lookup_domain(conn, "nope")
    assert caught.value.msg == "VM 'nope' does not exist on qemu+tcp://hv1.example.com/system (looked up by name)."
    assert caught.value.details == {"vm": "nope", "uri": "qemu+tcp://hv1.example.com/system"}


def test_lookup_failures_other_than_absence_are_translated(conn: FakeConnection) -> None:
    def lost(_name: str) -> FakeDomain:
        raise libvirt_error(
            libvirt.VIR_ERR_SYSTEM_ERROR, "Cannot recv data: Connection reset by peer", libvirt.VIR_FROM_RPC
        )

    conn.lookupByName = lost  # type: ignore[method-assign,assignment]
    with pytest.raises(HostUnreachableError) as caught:
        domain.lookup_domain(conn, "db1")
    assert "Cannot look up the domain for VM 'db1' on qemu+tcp://hv1.example.com/system" in caught.value.msg
    assert caught.value.details["libvirt_error_code"] == libvirt.VIR_ERR_SYSTEM_ERROR


@pytest.mark.parametrize(
    ("state", "persistent", "autostart", "expected"),
    [
        (
            (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_MIGRATED),
            True,
            True,
            {"state": "running", "state_reason": "migrated", "active": True, "persistent": True, "autostart": True},
        ),
        (
            (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION),
            False,
            True,
            {"state": "paused", "state_reason": "migration", "active": True, "persistent": False, "autostart": False},
        ),
        (
            (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN),
            True,
            False,
            {"state": "shut off", "state_reason": "shutdown", "active": False, "persistent": True, "autostart": False},
        ),
    ],
)
def test_describe_domain_adds_state_and_flags(
    sample: t.Callable[[str], str],
    state: t.Tuple[int, int],
    persistent: bool,
    autostart: bool,
    expected: t.Dict[str, t.Any],
) -> None:
    facts = domain.describe_domain(
        FakeDomain(sample("domain-running.xml"), state, persistent, autostart), "qemu:///system"
    )
    assert {key: facts[key] for key in expected} == expected
    assert facts["name"] == "probe-vm"


def test_describe_domain_of_a_vanished_domain_is_not_found(sample: t.Callable[[str], str]) -> None:
    with pytest.raises(VmNotFoundError) as caught:
        domain.describe_domain(FakeDomain(sample("domain-running.xml"), vanished=True), "qemu:///system")
    assert caught.value.details["vm"] == "probe-vm"
    assert caught.value.details["uri"] == "qemu:///system"
