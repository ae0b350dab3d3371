# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Translation of libvirt errors into the collection's exceptions (``_migration/pure/errors.py``)."""

from __future__ import annotations

import typing as t

import libvirt
import pytest

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import errors
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import (
    FeatureUnsupportedError,
    HostInMaintenanceError,
    HostUnreachableError,
    MigrationError,
    OperationCancelledError,
    OperationInvalidError,
    VmNotFoundError,
)
from libvirt_fakes import libvirt_error


@pytest.mark.parametrize("name", sorted(errors.LIBVIRT_ERROR_CODES))
def test_error_code_table_matches_the_installed_libvirt(name: str) -> None:
    assert errors.LIBVIRT_ERROR_CODES[name] == getattr(libvirt, name)


@pytest.mark.parametrize(
    ("name", "value"), [("VIR_FROM_RPC", errors.VIR_FROM_RPC), ("VIR_FROM_REMOTE", errors.VIR_FROM_REMOTE)]
)
def test_error_domain_values_match_the_installed_libvirt(name: str, value: int) -> None:
    assert getattr(libvirt, name) == value


# (libvirt error code, error domain, raised while connecting, expected class), with the messages
# libvirt 9.0 gives for them.
TRANSLATIONS = [
    pytest.param(
        libvirt.VIR_ERR_NO_DOMAIN,
        libvirt.VIR_FROM_QEMU,
        "Domain not found: no domain with matching name 'web1'",
        False,
        VmNotFoundError,
        id="no-domain-is-absent",
    ),
    pytest.param(
        libvirt.VIR_ERR_OPERATION_INVALID,
        libvirt.VIR_FROM_DOMAIN,
        "Requested operation is not valid: domain is not running",
        False,
        OperationInvalidError,
        id="not-running",
    ),
    pytest.param(
        libvirt.VIR_ERR_OPERATION_INVALID,
        libvirt.VIR_FROM_QEMU,
        "Requested operation is not valid: no job is active on the domain",
        False,
        OperationInvalidError,
        id="job-already-ended",
    ),
    pytest.param(
        libvirt.VIR_ERR_OPERATION_ABORTED,
        libvirt.VIR_FROM_QEMU,
        "operation aborted: migration out job: canceled by client",
        False,
        OperationCancelledError,
        id="cancelled",
    ),
    pytest.param(
        libvirt.VIR_ERR_NO_SUPPORT,
        libvirt.VIR_FROM_DOMAIN,
        "this function is not supported by the connection driver: virConnectGetDomainCapabilities",
        False,
        FeatureUnsupportedError,
        id="no-support",
    ),
    pytest.param(
        libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
        libvirt.VIR_FROM_QEMU,
        "Operation not supported: post-copy migration is not supported by QEMU binary",
        False,
        FeatureUnsupportedError,
        id="operation-unsupported",
    ),
    pytest.param(
        libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
        libvirt.VIR_FROM_QEMU,
        "argument unsupported: unsupported flags (0x1000000) in function qemuMigrationSrcPerform",
        False,
        FeatureUnsupportedError,
        id="flag-unsupported",
    ),
    pytest.param(
        libvirt.VIR_ERR_SYSTEM_ERROR,
        libvirt.VIR_FROM_RPC,
        "unable to connect to server at '127.0.0.1:1': Connection refused",
        False,
        HostUnreachableError,
        id="system-error-from-rpc",
    ),
    pytest.param(
        libvirt.VIR_ERR_SYSTEM_ERROR,
        libvirt.VIR_FROM_REMOTE,
        "Cannot recv data: Connection reset by peer",
        False,
        HostUnreachableError,
        id="system-error-from-remote",
    ),
    pytest.param(
        libvirt.VIR_ERR_SYSTEM_ERROR,
        libvirt.VIR_FROM_QEMU,
        "Cannot access storage file '/var/lib/libvirt/images/web1.qcow2': No such file or directory",
        False,
        MigrationError,
        id="system-error-elsewhere-is-generic",
    ),
    pytest.param(
        libvirt.VIR_ERR_INTERNAL_ERROR,
        libvirt.VIR_FROM_NONE,
        "internal error: unexpected qemu URI path '/nonsense', try qemu:///system",
        True,
        HostUnreachableError,
        id="anything-while-connecting",
    ),
    pytest.param(
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_FROM_NONE,
        "no connection driver available for bogus:///",
        False,
        HostUnreachableError,
        id="no-connect",
    ),
    pytest.param(
        libvirt.VIR_ERR_AUTH_FAILED,
        libvirt.VIR_FROM_AUTH,
        "authentication failed: Failed to collect auth credentials",
        False,
        HostUnreachableError,
        id="auth-failed",
    ),
    pytest.param(
        libvirt.VIR_ERR_AUTH_CANCELLED,
        libvirt.VIR_FROM_AUTH,
        "authentication cancelled: no password given",
        False,
        HostUnreachableError,
        id="auth-cancelled",
    ),
    pytest.param(
        libvirt.VIR_ERR_AUTH_UNAVAILABLE,
        libvirt.VIR_FROM_POLKIT,
        "authentication unavailable: no polkit agent available to authenticate action",
        False,
        HostUnreachableError,
        id="auth-unavailable",
    ),
    pytest.param(
        libvirt.VIR_ERR_INVALID_CONN,
        libvirt.VIR_FROM_RPC,
        "invalid connection pointer in virConnectListAllDomains",
        False,
        HostUnreachableError,
        id="invalid-conn",
    ),
    pytest.param(
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_FROM_RPC,
        "internal error: client socket is closed",
        False,
        HostUnreachableError,
        id="rpc",
    ),
    pytest.param(
        libvirt.VIR_ERR_OPERATION_FAILED,
        libvirt.VIR_FROM_QEMU,
        "operation failed: migration of disk vda failed",
        False,
        MigrationError,
        id="operation-failed-is-generic",
    ),
    pytest.param(
        libvirt.VIR_ERR_CPU_INCOMPATIBLE,
        libvirt.VIR_FROM_CPU,
        "the CPU is incompatible with host CPU: Host CPU does not provide required features: avx512f",
        False,
        MigrationError,
        id="cpu-incompatible-is-generic",
    ),
]


@pytest.mark.parametrize(("code", "domain", "text", "connecting", "expected"), TRANSLATIONS)
def test_libvirt_errors_are_translated_by_code(
    code: int, domain: int, text: str, connecting: bool, expected: t.Type[MigrationError]
) -> None:
    exc = libvirt_error(code, text, domain)
    translated = errors.translate_libvirt_error(
        exc, "migrate the VM", vm="web1", uri="qemu+tcp://hv1/system", connecting=connecting
    )
    assert translated.__class__ is expected
    assert isinstance(translated, MigrationError)
    assert translated.details["libvirt_error_code"] == code
    assert translated.details["libvirt_error_domain"] == domain
    assert translated.details["libvirt_message"] == text
    assert translated.details["vm"] == "web1"
    assert translated.details["uri"] == "qemu+tcp://hv1/system"


@pytest.mark.parametrize(("code", "domain", "text", "connecting", "expected"), TRANSLATIONS)
def test_messages_name_the_vm_the_host_libvirts_text_and_the_code(
    code: int, domain: int, text: str, connecting: bool, expected: t.Type[MigrationError]
) -> None:
    exc = libvirt_error(code, text, domain)
    msg = errors.translate_libvirt_error(exc, "migrate the VM", vm="web1", uri="qemu+tcp://hv1/system").msg
    assert msg.startswith("Cannot migrate the VM for VM 'web1' on qemu+tcp://hv1/system: ")
    assert text in msg
    name = errors.LIBVIRT_ERROR_NAMES.get(code)
    assert ("[%s]" % name if name else "[libvirt error code %d]" % code) in msg


def test_a_no_domain_message_reads_well() -> None:
    exc = libvirt_error(libvirt.VIR_ERR_NO_DOMAIN, "Domain not found: no domain with matching name 'web1'")
    translated = errors.translate_libvirt_error(exc, "look up the domain", vm="web1", uri="qemu:///system")
    assert translated.msg == (
        "Cannot look up the domain for VM 'web1' on qemu:///system: the VM does not exist there. "
        "libvirt: Domain not found: no domain with matching name 'web1' [VIR_ERR_NO_DOMAIN]"
    )


def test_result_gives_fail_json_keywords() -> None:
    exc = libvirt_error(libvirt.VIR_ERR_OPERATION_ABORTED, "operation aborted: canceled by client")
    result = errors.translate_libvirt_error(exc, "migrate the VM", vm="web1", uri="qemu:///system").result()
    assert result == {
        "msg": result["msg"],
        "vm": "web1",
        "uri": "qemu:///system",
        "libvirt_error_code": libvirt.VIR_ERR_OPERATION_ABORTED,
        "libvirt_error_name": "VIR_ERR_OPERATION_ABORTED",
        "libvirt_error_domain": libvirt.VIR_FROM_QEMU,
        "libvirt_message": "operation aborted: canceled by client",
    }


def test_unnamed_codes_are_shown_by_number() -> None:
    exc = libvirt_error(libvirt.VIR_ERR_HOOK_SCRIPT_FAILED, "Hook script execution failed: exit status 1")
    translated = errors.translate_libvirt_error(exc, "start the VM")
    assert translated.__class__ is MigrationError
    assert translated.msg == (
        "Cannot start the VM: the operation failed. libvirt: Hook script execution failed: exit status 1 "
        "[libvirt error code %d]" % libvirt.VIR_ERR_HOOK_SCRIPT_FAILED
    )
    assert "libvirt_error_name" not in translated.details
    assert "vm" not in translated.details


def test_a_libvirt_error_without_details_is_generic() -> None:
    libvirt.virResetLastError()
    exc = libvirt.libvirtError("virDomainGetXMLDesc() failed")
    assert exc.err is None
    translated = errors.translate_libvirt_error(exc, "read the domain", vm="web1")
    assert translated.__class__ is MigrationError
    assert (
        translated.msg
        == "Cannot read the domain for VM 'web1': the operation failed. libvirt: virDomainGetXMLDesc() failed"
    )
    assert translated.details == {"vm": "web1", "libvirt_message": "virDomainGetXMLDesc() failed"}


def test_a_real_libvirt_failure_translates() -> None:
    # Not a constructed error: the test driver raises this one itself.
    conn = libvirt.open("test:///default")
    try:
        with pytest.raises(libvirt.libvirtError) as caught:
            conn.lookupByName("no-such-vm")
    finally:
        conn.close()
    translated = errors.translate_libvirt_error(
        caught.value, "look up the domain", vm="no-such-vm", uri="test:///default"
    )
    assert isinstance(translated, VmNotFoundError)
    assert translated.details["libvirt_error_code"] == libvirt.VIR_ERR_NO_DOMAIN


def test_migration_error_keeps_message_and_drops_empty_details() -> None:
    exc = MigrationError("VM 'web1' cannot move", vm="web1", uri=None, hosts=["a", "b"])
    assert str(exc) == exc.msg == "VM 'web1' cannot move"
    assert exc.details == {"vm": "web1", "hosts": ["a", "b"]}
    assert exc.result() == {"msg": "VM 'web1' cannot move", "vm": "web1", "hosts": ["a", "b"]}


@pytest.mark.parametrize(
    ("exc", "unsupported", "not_found"),
    [
        (libvirt_error(libvirt.VIR_ERR_NO_SUPPORT, "not supported"), True, False),
        (libvirt_error(libvirt.VIR_ERR_NO_DOMAIN, "Domain not found"), False, True),
        (libvirt_error(libvirt.VIR_ERR_OPERATION_INVALID, "not valid"), False, False),
        (ValueError("plain"), False, False),
    ],
)
def test_predicates(exc: BaseException, unsupported: bool, not_found: bool) -> None:
    assert errors.is_unsupported(exc) is unsupported
    assert errors.is_not_found(exc) is not_found


def test_optional_call_returns_the_result_when_supported() -> None:
    assert errors.optional_call(lambda value: value * 2, 21) == 42


def test_optional_call_gives_none_when_the_driver_lacks_the_api() -> None:
    def unsupported() -> int:
        raise libvirt_error(libvirt.VIR_ERR_NO_SUPPORT, "this function is not supported by the connection driver")

    assert errors.optional_call(unsupported) is None


def test_optional_call_lets_other_errors_through() -> None:
    def broken() -> int:
        raise libvirt_error(libvirt.VIR_ERR_OPERATION_FAILED, "operation failed")

    with pytest.raises(libvirt.libvirtError):
        errors.optional_call(broken)


# -- the maintenance hook's refusal, and failures that are not libvirt errors

HOOK_FAILURE = (
    "Hook script execution failed: internal error: Child process (LC_ALL=C PATH=/usr/sbin:/usr/bin "
    "/etc/libvirt/hooks/qemu.d/virtops-maintenance web1 migrate begin -) unexpected exit status 1: "
    "virtops-maintenance: host lab-h2 is in preparing: refusing to migrate VM web1"
)


@pytest.mark.parametrize("domain", [libvirt.VIR_FROM_HOOK, libvirt.VIR_FROM_QEMU], ids=["from-hook", "relayed"])
def test_a_hook_refusal_names_the_host_in_maintenance(domain: int) -> None:
    # On the destination the hook's own error; relayed to the source by a peer-to-peer migration.
    exc = libvirt_error(libvirt.VIR_ERR_HOOK_SCRIPT_FAILED, HOOK_FAILURE, domain)
    translated = errors.translate_libvirt_error(exc, "migrate to qemu+tls://lab-h2/system", vm="web1", uri="qemu:///system")
    assert isinstance(translated, HostInMaintenanceError)
    assert translated.details["host_name"] == "lab-h2"
    assert translated.details["host_state"] == "preparing"
    assert translated.details["vm"] == "web1" and translated.details["uri"] == "qemu:///system"
    assert translated.details["libvirt_error_code"] == libvirt.VIR_ERR_HOOK_SCRIPT_FAILED
    assert translated.details["libvirt_message"] == HOOK_FAILURE
    assert translated.msg.startswith(
        "Cannot migrate to qemu+tls://lab-h2/system for VM 'web1': host lab-h2 is in preparing and refuses to migrate VMs"
    )
    assert translated.msg.endswith("libvirt: " + HOOK_FAILURE)


def test_a_hook_refusal_of_a_start_on_a_host_in_maintenance() -> None:
    exc = libvirt_error(
        libvirt.VIR_ERR_HOOK_SCRIPT_FAILED,
        "Hook script execution failed: unexpected exit status 1: virtops-maintenance: host lab-h1 is in maintenance: refusing to start VM db1",
        libvirt.VIR_FROM_HOOK,
    )
    translated = errors.translate_libvirt_error(exc, "start the VM")
    assert isinstance(translated, HostInMaintenanceError)
    assert (translated.details["host_name"], translated.details["host_state"]) == ("lab-h1", "maintenance")
    assert "refuses to start VMs" in translated.msg


def test_another_hook_failure_is_not_a_maintenance_refusal() -> None:
    exc = libvirt_error(libvirt.VIR_ERR_HOOK_SCRIPT_FAILED, "Hook script execution failed: some-other-hook: no", libvirt.VIR_FROM_HOOK)
    assert not isinstance(errors.translate_libvirt_error(exc, "start the VM"), HostInMaintenanceError)


def raised(exc: BaseException) -> BaseException:
    """``exc`` with a traceback, as an ``except`` clause receives it."""
    try:
        raise exc
    except BaseException as caught:  # noqa: B036 (the point is to get it back)
        return caught


def test_unexpected_error_names_the_exception_type() -> None:
    exc = raised(OverflowError("Python int too large to convert to C long"))
    translated = errors.unexpected_error(exc, "migrate to qemu+tcp://hv2/system", vm="web1", uri="qemu:///system")
    assert translated.__class__ is MigrationError
    assert translated.msg == (
        "Cannot migrate to qemu+tcp://hv2/system for VM 'web1' on qemu:///system: "
        "unexpected OverflowError: Python int too large to convert to C long"
    )
    assert translated.details == {"vm": "web1", "uri": "qemu:///system", "exception_type": "OverflowError"}


def test_unexpected_failure_gives_fail_json_keywords() -> None:
    exc = raised(KeyError("state"))
    result = errors.unexpected_failure(exc)
    assert set(result) == {"msg", "exception", "exception_type"}
    assert result["msg"].startswith("Unexpected KeyError: 'state'. This is a bug in virtops.migration")
    assert result["exception_type"] == "KeyError"
    assert result["exception"].startswith("Traceback (most recent call last):")
    assert "in raised" in result["exception"] and result["exception"].rstrip().endswith("KeyError: 'state'")


# -- authentication refusals (messages as libvirt 9.0 gives them)

SASL_URI = "qemu+tls://10.0.0.12/system?auth=sasl.SCRAM-SHA-256"


@pytest.mark.parametrize(
    ("uri", "mechanism"),
    [
        (SASL_URI, "SASL SCRAM-SHA-256 over TLS"),
        ("qemu+tls://hv2/system?auth=sasl.scram-sha-256", "SASL SCRAM-SHA-256 over TLS"),
        ("qemu+tcp://hv2/system", "SASL"),
        ("qemu+tcp://hv2/system?auth=sasl", "SASL"),
        ("qemu+ssh://root@hv2/system", "SSH"),
        ("qemu+libssh2://root@hv2/system", "SSH"),
        ("qemu+tls://hv2/system", "SASL over TLS"),
    ],
)
def test_the_mechanism_is_read_from_the_uri(uri: str, mechanism: str) -> None:
    assert errors.auth_mechanism(uri) == mechanism


def test_a_rejected_password_names_the_host_the_mechanism_and_the_user() -> None:
    exc = libvirt_error(libvirt.VIR_ERR_AUTH_FAILED, "authentication failed: authentication failed", libvirt.VIR_FROM_RPC)
    refused = errors.authentication_failure(exc, SASL_URI, "migrator", [("user name", True), ("password", True)])
    assert isinstance(refused, errors.AuthenticationError)
    assert isinstance(refused, HostUnreachableError)
    assert refused.msg.startswith("Authentication failed on host 10.0.0.12 with SASL SCRAM-SHA-256 over TLS: ")
    assert "rejected the credentials of user 'migrator'" in refused.msg
    assert refused.msg.endswith("libvirt: authentication failed: authentication failed [VIR_ERR_AUTH_FAILED]")
    assert refused.details["host"] == "10.0.0.12"
    assert refused.details["mechanism"] == "SASL SCRAM-SHA-256 over TLS"
    assert refused.details["libvirt_error_code"] == libvirt.VIR_ERR_AUTH_FAILED


def test_a_missing_password_says_what_was_missing() -> None:
    exc = libvirt_error(libvirt.VIR_ERR_AUTH_FAILED, "authentication failed: Failed to collect auth credentials", libvirt.VIR_FROM_RPC)
    refused = errors.authentication_failure(exc, SASL_URI, "migrator", [("user name", True), ("password", False)])
    assert refused is not None
    assert "asked for a password and none was given" in refused.msg


def test_a_refusal_before_any_question_points_at_auth_conf_and_the_transport() -> None:
    exc = libvirt_error(libvirt.VIR_ERR_AUTH_FAILED, "authentication failed: authentication failed", libvirt.VIR_FROM_RPC)
    refused = errors.authentication_failure(exc, "qemu+tcp://hv2/system", None, [])
    assert refused is not None
    assert refused.msg.startswith("Authentication failed on host hv2 with SASL: ")
    assert "auth.conf" in refused.msg and "qemu+tls://" in refused.msg


def test_an_untrusted_host_certificate_is_a_tls_refusal() -> None:
    exc = libvirt_error(libvirt.VIR_ERR_AUTH_FAILED, "authentication failed: Failed to verify peer's certificate", libvirt.VIR_FROM_RPC)
    refused = errors.authentication_failure(exc, "qemu+tls://hv2/system?pkipath=/etc/pki/other", None, [])
    assert refused is not None
    assert refused.msg.startswith("Authentication failed on host hv2 with TLS: ")
    assert "not signed by a CA this node trusts" in refused.msg


def test_a_missing_client_certificate_is_a_tls_refusal() -> None:
    exc = libvirt_error(libvirt.VIR_ERR_SYSTEM_ERROR, "Unable to read TLS confirmation: Input/output error", libvirt.VIR_FROM_RPC)
    refused = errors.authentication_failure(exc, "qemu+tls://hv2/system", None, [])
    assert refused is not None
    assert "client certificate" in refused.msg and "tls_no_verify_certificate = 0" in refused.msg
    assert refused.details["libvirt_error_name"] == "VIR_ERR_SYSTEM_ERROR"


@pytest.mark.parametrize(
    ("uri", "code", "message"),
    [
        ("qemu+tcp://hv2/system", libvirt.VIR_ERR_SYSTEM_ERROR, "unable to connect to server at 'hv2:16509': Connection refused"),
        ("qemu+tls://hv2/system", libvirt.VIR_ERR_SYSTEM_ERROR, "unable to connect to server at 'hv2:16514': Connection refused"),
        ("qemu+tcp://hv2/system", libvirt.VIR_ERR_NO_DOMAIN, "Domain not found"),
    ],
)
def test_other_failures_are_not_authentication_refusals(uri: str, code: int, message: str) -> None:
    assert errors.authentication_failure(libvirt_error(code, message, libvirt.VIR_FROM_RPC), uri, "u", [("password", True)]) is None


def test_an_own_certificate_the_trusted_ca_did_not_sign_is_a_tls_refusal() -> None:
    exc = libvirt_error(
        libvirt.VIR_ERR_SYSTEM_ERROR,
        "Our own certificate /pki/clientcert.pem failed validation against /pki/cacert.pem: The certificate hasn't got a known issuer",
        libvirt.VIR_FROM_RPC,
    )
    refused = errors.authentication_failure(exc, "qemu+tls://hv2/system?pkipath=/pki", None, [])
    assert refused is not None
    assert refused.msg.startswith("Authentication failed on host hv2 with TLS: this node's own client certificate is not signed")


def test_a_peer_to_peer_login_the_destination_refused_points_at_auth_conf() -> None:
    exc = libvirt_error(libvirt.VIR_ERR_AUTH_FAILED, "authentication failed: No authentication callback available", libvirt.VIR_FROM_RPC)
    refused = errors.peer_authentication_failure(exc, SASL_URI, "web1", "qemu:///system")
    assert refused is not None
    assert refused.msg.startswith(
        "Cannot migrate VM 'web1': the source host's libvirtd (qemu:///system) could not log in to the destination host "
        "10.0.0.12 with SASL SCRAM-SHA-256 over TLS. "
    )
    assert "/etc/libvirt/auth.conf, an [auth-libvirt-10.0.0.12] group" in refused.msg
    assert refused.msg.endswith("The VM was not moved. libvirt: authentication failed: No authentication callback available [VIR_ERR_AUTH_FAILED]")
    assert (refused.details["vm"], refused.details["host"], refused.details["destination_uri"]) == ("web1", "10.0.0.12", SASL_URI)


def test_a_peer_to_peer_tls_refusal_is_named_tls_and_other_failures_are_not_refusals() -> None:
    tls = libvirt_error(libvirt.VIR_ERR_AUTH_FAILED, "authentication failed: Failed to verify peer's certificate", libvirt.VIR_FROM_RPC)
    refused = errors.peer_authentication_failure(tls, "qemu+tls://hv2/system", "web1", "qemu:///system")
    assert refused is not None and refused.details["mechanism"] == "TLS"
    other = libvirt_error(libvirt.VIR_ERR_OPERATION_FAILED, "migration job: unexpectedly failed", libvirt.VIR_FROM_QEMU)
    assert errors.peer_authentication_failure(other, "qemu+tls://hv2/system", "web1", "qemu:///system") is None
