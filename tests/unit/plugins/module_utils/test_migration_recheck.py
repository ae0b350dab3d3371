# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The check before every write to a domain (``domain.observe`` / ``domain.recheck``) and the writers that use it.

The guard's decisions against fakes that raise real libvirt errors: a VM still here, as read, with no
job, is written; one that left, changed state, runs a job (or whose job cannot be read), or whose
definition someone else changed, is not, and the message names the VM, the host and why.
"""

from __future__ import annotations

import typing as t

import libvirt
import pytest

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import domain
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io import settings_store
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import MigrationError, VmChangedError
from libvirt_fakes import FakeConnection, FakeDomain, libvirt_error

UUID = "5f0e7a53-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
XML = "<domain type='kvm'><name>web1</name><uuid>%s</uuid><devices><graphics type='vnc' passwd='s3cret'/></devices></domain>" % UUID
URI = "qemu+tcp://hv1.example.com/system"
RUNNING = (libvirt.VIR_DOMAIN_RUNNING, 1)
SHUT_OFF = (libvirt.VIR_DOMAIN_SHUTOFF, 1)
MIGRATING = {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "operation": libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT, "time_elapsed": 12345}


def host(state: t.Tuple[int, int] = RUNNING, persistent: bool = True) -> t.Tuple[FakeConnection, FakeDomain]:
    dom = FakeDomain(XML, state=state, persistent=persistent)
    conn = FakeConnection("<capabilities/>", domains=[dom], uri=URI)
    conn.hostname = "lab-h1"
    return conn, dom


def refusal(conn: FakeConnection, seen: domain.Seen, **kwargs: t.Any) -> VmChangedError:
    with pytest.raises(VmChangedError) as caught:
        domain.recheck(conn, seen, "write pair net1 into the persistent definition", URI, **kwargs)
    message = caught.value.msg
    assert message.startswith("Cannot write pair net1 into the persistent definition for VM 'web1' on host lab-h1 (%s): " % URI), message
    assert caught.value.details["vm"] == "web1" and caught.value.details["host"] == "lab-h1" and caught.value.details["uri"] == URI
    return caught.value


def test_the_constants_are_libvirts() -> None:
    assert domain.XML_SECURE == libvirt.VIR_DOMAIN_XML_SECURE
    assert domain.XML_INACTIVE == libvirt.VIR_DOMAIN_XML_INACTIVE
    assert domain.JOB_NONE == libvirt.VIR_DOMAIN_JOB_NONE
    for name in dir(libvirt):
        if name.startswith("VIR_DOMAIN_JOB_OPERATION_") and name != "VIR_DOMAIN_JOB_OPERATION_LAST":
            words = name[len("VIR_DOMAIN_JOB_OPERATION_") :].lower().replace("_", " ")
            assert getattr(libvirt, name) in domain.JOB_OPERATIONS, name
            if words not in ("unknown", "migration in", "migration out"):
                assert domain.JOB_OPERATIONS[getattr(libvirt, name)] == words
    assert domain.JOB_OPERATIONS[libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT] == "outgoing migration"
    assert domain.JOB_OPERATIONS[libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN] == "incoming migration"


@pytest.mark.parametrize("state, persistent", [(RUNNING, True), (SHUT_OFF, True), (RUNNING, False)], ids=["running", "shut-off", "transient"])
def test_a_vm_still_as_read_with_no_job_passes(state: t.Tuple[int, int], persistent: bool) -> None:
    conn, dom = host(state, persistent)
    seen = domain.observe(dom, URI)
    assert seen == domain.Seen(UUID, "web1", state == RUNNING, persistent)
    assert domain.recheck(conn, seen, "write", URI, definition=XML) is dom
    assert "lookupByUUIDString(%s)" % UUID in conn.calls


def test_a_vm_that_left_the_host_is_not_written() -> None:
    conn, dom = host()
    seen = domain.observe(dom, URI)
    conn.domains.clear()  # migrated away (or undefined)
    error = refusal(conn, seen)
    assert "it is no longer on this host (no domain with UUID %s: it was migrated away or undefined" % UUID in error.msg
    assert error.msg.endswith("Nothing was changed.") and error.details["reason"] == "gone"


def test_a_vm_that_vanishes_while_it_is_checked_counts_as_gone() -> None:
    conn, dom = host()
    seen = domain.observe(dom, URI)
    dom.vanished = True
    assert refusal(conn, seen).details["reason"] == "gone"


@pytest.mark.parametrize(
    "now, persistent, words",
    [
        (SHUT_OFF, True, "it was active and persistent, it is now shut off and persistent"),
        (RUNNING, False, "it was active and persistent, it is now active (running) and transient"),
        ((libvirt.VIR_DOMAIN_PAUSED, 2), False, "it is now active (paused) and transient"),
    ],
)
def test_a_vm_whose_state_changed_is_not_written(now: t.Tuple[int, int], persistent: bool, words: str) -> None:
    conn, dom = host()
    seen = domain.observe(dom, URI)
    dom._state, dom._persistent = now, persistent  # pylint: disable=protected-access
    error = refusal(conn, seen)
    assert words in error.msg and error.details["reason"] == "state", error.msg


def test_a_vm_that_was_shut_off_and_now_runs_is_not_written() -> None:
    conn, dom = host(SHUT_OFF)
    seen = domain.observe(dom, URI)
    dom._state = RUNNING  # pylint: disable=protected-access
    assert "it was shut off and persistent, it is now active (running) and persistent" in refusal(conn, seen).msg


def test_a_vm_with_a_migration_under_way_is_not_written() -> None:
    conn, dom = host()
    seen = domain.observe(dom, URI)
    dom.job = dict(MIGRATING)
    error = refusal(conn, seen)
    assert "a libvirt job runs on it (outgoing migration, running for 12 s)" in error.msg, error.msg
    assert error.details["reason"] == "job" and error.details["job_operation"] == "outgoing migration"


def test_any_job_counts_and_an_old_libvirt_is_asked_with_job_info() -> None:
    conn, dom = host()
    seen = domain.observe(dom, URI)

    def no_job_stats(flags: int = 0) -> t.Dict[str, t.Any]:
        raise libvirt_error(libvirt.VIR_ERR_NO_SUPPORT, "this function is not supported by the connection driver: virDomainGetJobStats")

    dom.jobStats = no_job_stats  # type: ignore[method-assign]
    dom.jobInfo = lambda: [libvirt.VIR_DOMAIN_JOB_BOUNDED, 3000, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]  # type: ignore[attr-defined]
    assert "a libvirt job runs on it (a job of unknown kind, running for 3 s)" in refusal(conn, seen).msg
    dom.jobInfo = lambda: [libvirt.VIR_DOMAIN_JOB_NONE] + [0] * 11  # type: ignore[attr-defined]
    assert domain.recheck(conn, seen, "write", URI) is dom


def test_a_job_that_cannot_be_read_counts_as_one() -> None:
    # What libvirt answers on the destination of an incoming migration, to jobStats and jobInfo alike.
    conn, dom = host()
    seen = domain.observe(dom, URI)
    refused = libvirt_error(libvirt.VIR_ERR_OPERATION_UNSUPPORTED, "Operation not supported: migration statistics are available only on the source host")

    def fail(*_args: t.Any) -> t.Any:
        raise refused

    dom.jobStats = fail  # type: ignore[method-assign]
    dom.jobInfo = fail  # type: ignore[attr-defined]
    error = refusal(conn, seen)
    assert "whether a libvirt job (a migration) runs on it cannot be read (libvirt: Operation not supported: migration statistics" in error.msg


def test_a_shut_off_vm_is_not_asked_for_jobs() -> None:
    # libvirt refuses jobStats on an inactive domain ("domain is not running").
    conn, dom = host(SHUT_OFF)
    seen = domain.observe(dom, URI)
    dom.job = dict(MIGRATING)
    assert domain.recheck(conn, seen, "write", URI) is dom


def test_a_definition_changed_by_someone_else_is_not_overwritten() -> None:
    conn, dom = host()
    seen = domain.observe(dom, URI)
    read = dom.XMLDesc(domain.XML_INACTIVE | domain.XML_SECURE)
    dom.xml = XML.replace("s3cret", "other")
    error = refusal(conn, seen, definition=read)
    assert "its persistent definition was changed by someone else since this run read it" in error.msg and error.details["reason"] == "definition"


def test_after_an_earlier_write_the_message_does_not_say_nothing_changed() -> None:
    conn, dom = host()
    seen = domain.observe(dom, URI)
    conn.domains.clear()
    with pytest.raises(VmChangedError) as caught:
        domain.recheck(conn, seen, "plug ua-net1-vf into the running VM", URI, nothing_changed=False)
    assert "Nothing was changed" not in caught.value.msg


def test_a_host_named_in_its_uri_is_named_once() -> None:
    conn, dom = host()
    conn.hostname = "hv1.example.com"
    seen = domain.observe(dom, URI)
    conn.domains.clear()
    with pytest.raises(VmChangedError, match=r"for VM 'web1' on qemu\+tcp://hv1.example.com/system: it is no longer"):
        domain.recheck(conn, seen, "write", URI)


def test_other_lookup_errors_are_translated() -> None:
    conn, dom = host()
    seen = domain.observe(dom, URI)

    def broken(uuid: str) -> t.Any:
        raise libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, "internal error: client socket is closed", libvirt.VIR_FROM_RPC)

    conn.lookupByUUIDString = broken  # type: ignore[method-assign]
    with pytest.raises(MigrationError, match="Cannot look up the VM again before it is changed for VM 'web1'") as caught:
        domain.recheck(conn, seen, "write", URI)
    assert not isinstance(caught.value, VmChangedError)


# --- settings_store: the migration settings are written only to a VM still here, with no job ---------


class MetadataDomain(FakeDomain):
    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self.written: t.List[t.Tuple[t.Any, ...]] = []

    def setMetadata(self, kind: int, xml: t.Optional[str], prefix: t.Optional[str], uri: str, flags: int) -> int:  # noqa: N802
        self.written.append((kind, xml, prefix, uri, flags))
        return 0


@pytest.fixture()
def store_host(monkeypatch: pytest.MonkeyPatch) -> t.Tuple[FakeConnection, MetadataDomain]:
    dom = MetadataDomain(XML, state=RUNNING)
    conn = FakeConnection("<capabilities/>", domains=[dom], uri=URI)
    conn.hostname = "lab-h1"

    class Opened:
        def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
            pass

        def __enter__(self) -> FakeConnection:
            return conn

        def __exit__(self, *args: t.Any) -> None:
            return None

    monkeypatch.setattr(settings_store, "libvirt_connection", Opened)
    return conn, dom


def test_settings_are_written_to_a_vm_still_here(store_host: t.Tuple[FakeConnection, MetadataDomain]) -> None:
    _conn, dom = store_host
    result = settings_store.SettingsStore(URI).apply("web1", "present", {"priority": "high"}, check_mode=False)
    assert result["changed"] and len(dom.written) == 1
    assert dom.written[0][4] == libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG


def test_settings_are_not_written_while_the_vm_migrates(store_host: t.Tuple[FakeConnection, MetadataDomain]) -> None:
    _conn, dom = store_host
    dom.job = dict(MIGRATING)
    with pytest.raises(VmChangedError, match="Cannot write the migration settings for VM 'web1' on host lab-h1 .*outgoing migration.*Nothing was changed"):
        settings_store.SettingsStore(URI).apply("web1", "present", {"priority": "high"}, check_mode=False)
    assert dom.written == []
    # Check mode writes nothing, so it needs no check.
    assert settings_store.SettingsStore(URI).apply("web1", "present", {"priority": "high"}, check_mode=True)["changed"]


def test_settings_are_not_written_to_a_vm_that_left(store_host: t.Tuple[FakeConnection, MetadataDomain], monkeypatch: pytest.MonkeyPatch) -> None:
    conn, dom = store_host
    read = settings_store.SettingsStore._stored  # pylint: disable=protected-access

    def read_then_leave(self: settings_store.SettingsStore, *args: t.Any) -> t.Any:
        stored = read(self, *args)
        conn.domains.clear()  # the migration ends between the read and the write
        return stored

    monkeypatch.setattr(settings_store.SettingsStore, "_stored", read_then_leave)
    with pytest.raises(VmChangedError, match="it is no longer on this host"):
        settings_store.SettingsStore(URI).apply("web1", "present", {"priority": "high"}, check_mode=False)
    assert dom.written == []
