# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Opening and closing libvirt connections (``_migration/libvirt_io/connection.py``)."""

from __future__ import annotations

import threading
import time
import typing as t

import libvirt
import pytest

from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io import connection
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import options
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import (
    AuthenticationError,
    HostUnreachableError,
    MigrationError,
)
from libvirt_fakes import libvirt_error


class Recorder:
    """Stands in for libvirt.openAuth and records how it was called."""

    def __init__(self, result: t.Any = None, error: t.Optional[BaseException] = None) -> None:
        self.result = result
        self.error = error
        self.calls: t.List[t.Tuple[str, t.List[t.Any], int]] = []

    def __call__(self, uri: str, auth: t.List[t.Any], flags: int) -> t.Any:
        self.calls.append((uri, auth, flags))
        if self.error is not None:
            raise self.error
        return self.result


class ClosingConnection:
    def __init__(self, close_error: t.Optional[BaseException] = None) -> None:
        self.closed = 0
        self.close_error = close_error

    def setKeepAlive(self, interval: int, count: int) -> int:  # noqa: N802 (libvirt's name)
        self.keepalive = (interval, count)
        return 0

    def close(self) -> int:
        self.closed += 1
        if self.close_error is not None:
            raise self.close_error
        return 0


@pytest.mark.parametrize(
    ("uri", "environ", "expected"),
    [
        ("qemu+ssh://root@hv1/system", {"LIBVIRT_DEFAULT_URI": "test:///default"}, "qemu+ssh://root@hv1/system"),
        (None, {"LIBVIRT_DEFAULT_URI": "test:///default"}, "test:///default"),
        ("", {"LIBVIRT_DEFAULT_URI": "test:///default"}, "test:///default"),
        (None, {}, "qemu:///system"),
        ("", {"LIBVIRT_DEFAULT_URI": ""}, "qemu:///system"),
    ],
)
def test_resolve_uri_falls_back_to_the_environment_then_the_system_uri(
    uri: t.Optional[str], environ: t.Dict[str, str], expected: str
) -> None:
    assert options.resolve_uri(uri, environ) == expected


def test_resolve_uri_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "qemu+tcp://from-env/system")
    assert options.resolve_uri(None) == "qemu+tcp://from-env/system"


def test_argument_spec_copies_are_independent() -> None:
    spec = options.spec(options.CONNECTION)
    spec["uri"]["default"] = "changed"
    assert options.spec(options.CONNECTION)["uri"]["default"] == "qemu:///system"
    assert spec["password"]["no_log"] is True


def test_opens_with_open_auth_and_always_closes(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = ClosingConnection()
    recorder = Recorder(result=conn)
    monkeypatch.setattr(libvirt, "openAuth", recorder)
    with connection.libvirt_connection("qemu+tcp://hv1/system", "alice", "s3cret") as opened:
        assert opened is conn
        assert conn.closed == 0
    assert conn.closed == 1
    ((uri, auth, flags),) = recorder.calls
    assert (uri, flags) == ("qemu+tcp://hv1/system", 0)
    assert auth[0] == [libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE]


def test_closes_when_the_block_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = ClosingConnection()
    monkeypatch.setattr(libvirt, "openAuth", Recorder(result=conn))
    with pytest.raises(RuntimeError), connection.libvirt_connection("test:///default"):
        raise RuntimeError("boom")
    assert conn.closed == 1


def test_a_failing_close_does_not_hide_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = ClosingConnection(close_error=libvirt_error(libvirt.VIR_ERR_INVALID_CONN, "invalid connection pointer"))
    monkeypatch.setattr(libvirt, "openAuth", Recorder(result=conn))
    with connection.libvirt_connection("test:///default"):
        pass
    assert conn.closed == 1


def test_read_only_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(result=ClosingConnection())
    monkeypatch.setattr(libvirt, "openAuth", recorder)
    with connection.libvirt_connection("test:///default", readonly=True):
        pass
    assert recorder.calls[0][2] == libvirt.VIR_CONNECT_RO


def test_empty_uri_uses_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(result=ClosingConnection())
    monkeypatch.setattr(libvirt, "openAuth", recorder)
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "qemu+tcp://from-env/system")
    with connection.libvirt_connection(""):
        pass
    assert recorder.calls[0][0] == "qemu+tcp://from-env/system"


def test_installs_a_silent_error_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    installed: t.List[t.Any] = []

    def register(handler: t.Callable[[t.Any, t.Any], None], ctx: t.Any) -> int:
        installed.append((handler, ctx))
        return 1

    monkeypatch.setattr(libvirt, "registerErrorHandler", register)
    monkeypatch.setattr(libvirt, "openAuth", Recorder(result=ClosingConnection()))
    with connection.libvirt_connection("test:///default"):
        pass
    ((handler, ctx),) = installed
    assert ctx is None
    assert handler(None, (libvirt.VIR_ERR_NO_DOMAIN, 10, "Domain not found")) is None


def test_nothing_reaches_stderr_when_opening_fails(capfd: pytest.CaptureFixture[str]) -> None:
    # A real failure inside libvirt (no daemon listens on port 1), with the real error handler path.
    with pytest.raises(HostUnreachableError), connection.libvirt_connection("qemu+tcp://127.0.0.1:1/system"):
        pass  # pragma: no cover
    assert capfd.readouterr().err == ""


def test_open_failures_name_the_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    error = libvirt_error(
        libvirt.VIR_ERR_SYSTEM_ERROR,
        "unable to connect to server at 'hv9:16509': Connection refused",
        libvirt.VIR_FROM_RPC,
    )
    monkeypatch.setattr(libvirt, "openAuth", Recorder(error=error))
    with pytest.raises(HostUnreachableError) as caught, connection.libvirt_connection("qemu+tcp://hv9/system"):
        pass  # pragma: no cover
    assert caught.value.msg == (
        "Cannot open a libvirt connection on qemu+tcp://hv9/system: the host cannot be reached or refused the "
        "connection. libvirt: unable to connect to server at 'hv9:16509': Connection refused [VIR_ERR_SYSTEM_ERROR]"
    )
    assert caught.value.details["uri"] == "qemu+tcp://hv9/system"
    assert caught.value.details["libvirt_error_code"] == libvirt.VIR_ERR_SYSTEM_ERROR
    assert caught.value.__cause__ is error


def test_a_real_test_driver_connection() -> None:
    with connection.libvirt_connection("test:///default") as conn:
        assert conn.getURI() == "test:///default"
        assert conn.isAlive() == 1
    with pytest.raises(libvirt.libvirtError):
        conn.getURI()


def _callback(username: t.Optional[str], password: t.Optional[str]) -> t.Callable[[t.List[t.List[t.Any]], t.Any], int]:
    recorder = Recorder(result=ClosingConnection())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(libvirt, "openAuth", recorder)
        with connection.libvirt_connection("test:///default", username, password):
            pass
    return t.cast(t.Callable[[t.List[t.List[t.Any]], t.Any], int], recorder.calls[0][1][1])


def test_credential_callback_answers_username_and_password() -> None:
    callback = _callback("alice", "s3cret")
    credentials = [
        [libvirt.VIR_CRED_AUTHNAME, "Username:", "hv1", "root", None],
        [libvirt.VIR_CRED_PASSPHRASE, "Password:", "hv1", None, None],
    ]
    assert callback(credentials, None) == 0
    assert [credential[4] for credential in credentials] == ["alice", "s3cret"]


def test_credential_callback_takes_libvirts_default_user_name() -> None:
    callback = _callback(None, "s3cret")
    credentials = [[libvirt.VIR_CRED_AUTHNAME, "Username:", "hv1", "root", None]]
    assert callback(credentials, None) == 0
    assert credentials[0][4] == "root"


@pytest.mark.parametrize(
    "credential",
    [
        [libvirt.VIR_CRED_PASSPHRASE, "Password:", "hv1", None, None],
        [libvirt.VIR_CRED_ECHOPROMPT, "Accept the host key?", "hv1", None, None],
    ],
)
def test_credential_callback_fails_for_what_it_cannot_answer(credential: t.List[t.Any]) -> None:
    callback = _callback("alice", None)
    assert callback([credential], None) == -1


class AskingOpen:
    """Stands in for libvirt.openAuth on a SASL host: asks the callback, then refuses."""

    def __init__(self, credentials: t.List[t.List[t.Any]]) -> None:
        self.credentials = credentials

    def __call__(self, uri: str, auth: t.List[t.Any], flags: int) -> t.Any:
        auth[1](self.credentials, auth[2])
        raise libvirt_error(libvirt.VIR_ERR_AUTH_FAILED, "authentication failed: authentication failed", libvirt.VIR_FROM_RPC)


def _sasl_prompts() -> t.List[t.List[t.Any]]:
    return [
        [libvirt.VIR_CRED_AUTHNAME, "Username:", "hv2", "root", None],
        [libvirt.VIR_CRED_PASSPHRASE, "Password:", "hv2", None, None],
    ]


def test_a_rejected_password_is_an_authentication_error_without_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(libvirt, "openAuth", AskingOpen(_sasl_prompts()))
    uri = "qemu+tls://hv2/system?auth=sasl.SCRAM-SHA-256"
    with pytest.raises(AuthenticationError) as caught, connection.libvirt_connection(uri, "migrator", "Wr0ng-pass"):
        pass  # pragma: no cover
    assert caught.value.msg.startswith("Authentication failed on host hv2 with SASL SCRAM-SHA-256 over TLS: ")
    assert "rejected the credentials of user 'migrator'" in caught.value.msg
    assert "Wr0ng-pass" not in repr(caught.value.result())


def test_a_password_libvirt_asked_for_but_was_not_given_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(libvirt, "openAuth", AskingOpen(_sasl_prompts()))
    with pytest.raises(AuthenticationError) as caught, connection.libvirt_connection("qemu+tls://hv2/system", "migrator", None):
        pass  # pragma: no cover
    assert "asked for a password and none was given" in caught.value.msg


# -- keepalive and the connect timeout


def test_the_connection_sends_keepalive_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = ClosingConnection()
    monkeypatch.setattr(libvirt, "openAuth", Recorder(result=conn))
    with connection.libvirt_connection("qemu+tls://hv1/system"):
        assert conn.keepalive == (connection.KEEPALIVE_INTERVAL_S, connection.KEEPALIVE_COUNT)


def test_a_driver_without_keepalive_is_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoKeepAlive(ClosingConnection):
        def setKeepAlive(self, interval: int, count: int) -> int:  # noqa: N802 (libvirt's name)
            raise libvirt_error(libvirt.VIR_ERR_OPERATION_INVALID, "keepalive is not supported by this connection")

    conn = NoKeepAlive()
    monkeypatch.setattr(libvirt, "openAuth", Recorder(result=conn))
    with connection.libvirt_connection("test:///default") as opened:
        assert opened is conn
    assert conn.closed == 1


def test_a_host_that_does_not_answer_is_unreachable_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    late = ClosingConnection()

    def hanging_open(uri: str, auth: t.List[t.Any], flags: int) -> ClosingConnection:
        release.wait(30)  # a peer that takes the TCP connection and never answers
        return late

    monkeypatch.setattr(connection, "CONNECT_TIMEOUT_S", 0.2)
    monkeypatch.setattr(libvirt, "openAuth", hanging_open)
    started = time.monotonic()
    with pytest.raises(HostUnreachableError) as caught, connection.libvirt_connection("qemu+tcp://hv9/system"):
        pass  # pragma: no cover
    assert time.monotonic() - started < 5
    assert caught.value.msg.startswith("Cannot open a libvirt connection on qemu+tcp://hv9/system: the host did not answer within")
    assert caught.value.details == {"uri": "qemu+tcp://hv9/system"}
    # When the connection arrives after all, nobody uses it: it is closed.
    release.set()
    deadline = time.monotonic() + 5
    while not late.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert late.closed == 1


def test_an_exception_other_than_a_libvirt_error_while_opening_is_a_migration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(libvirt, "openAuth", Recorder(error=OverflowError("signed integer is greater than maximum")))
    with pytest.raises(MigrationError) as caught, connection.libvirt_connection("qemu+tcp://hv1/system"):
        pass  # pragma: no cover
    assert caught.value.msg == (
        "Cannot open a libvirt connection on qemu+tcp://hv1/system: unexpected OverflowError: signed integer is greater than maximum"
    )
    assert isinstance(caught.value.__cause__, OverflowError)
