# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""Opening and closing libvirt connections: the one place a module gets a ``virConnect``.

The options are documented once in the ``virtops.migration.connection`` doc fragment, and their
argument spec is :data:`CONNECTION_ARGUMENT_SPEC`.
"""

from __future__ import annotations

import contextlib
import threading
import traceback
import typing as t

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.options import resolve_uri
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import (
    HostUnreachableError,
    authentication_failure,
    MigrationError,
    translate_libvirt_error,
    unexpected_error,
)

LIBVIRT_IMPORT_ERROR: t.Optional[str]
try:
    import libvirt
except ImportError:
    HAS_LIBVIRT = False
    LIBVIRT_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_LIBVIRT = True
    LIBVIRT_IMPORT_ERROR = None


# A host that does not answer the connection within this many seconds counts as unreachable.
CONNECT_TIMEOUT_S = 30.0
# libvirt keepalive: a probe every KEEPALIVE_INTERVAL_S seconds; after KEEPALIVE_COUNT unanswered
# probes the connection is closed and every call on it fails, instead of hanging on a dead peer.
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 6

_EVENT_LOOP_LOCK = threading.Lock()
_EVENT_LOOP_STARTED = False


def _run_event_loop() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


def ensure_event_loop() -> None:
    """Run libvirt's default event loop in a daemon thread (once per process): keepalive needs it."""
    global _EVENT_LOOP_STARTED  # pylint: disable=global-statement
    with _EVENT_LOOP_LOCK:
        if _EVENT_LOOP_STARTED:
            return
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_run_event_loop, name="libvirt-events", daemon=True).start()
        _EVENT_LOOP_STARTED = True


def _open(target: str, username: t.Optional[str], password: t.Optional[str], readonly: bool, timeout: float) -> t.Any:
    """``openAuth`` under ``timeout`` seconds; a connection that arrives too late is closed."""
    asked: t.List[t.Tuple[str, bool]] = []
    auth = [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE], _credential_callback(username, password, asked), None]
    flags = libvirt.VIR_CONNECT_RO if readonly else 0
    outcome: t.Dict[str, t.Any] = {}
    lock = threading.Lock()

    def opener() -> None:
        try:
            conn = libvirt.openAuth(target, auth, flags)
        except BaseException as exc:  # pylint: disable=broad-exception-caught
            with lock:
                outcome["error"] = exc
            return
        with lock:
            if outcome.get("abandoned"):
                with contextlib.suppress(libvirt.libvirtError):
                    conn.close()
                return
            outcome["conn"] = conn

    worker = threading.Thread(target=opener, name="libvirt-open", daemon=True)
    worker.start()
    worker.join(timeout)
    with lock:
        if "conn" not in outcome and "error" not in outcome:
            outcome["abandoned"] = True
            raise HostUnreachableError(
                "Cannot open a libvirt connection on %s: the host did not answer within %d s." % (target, timeout),
                uri=target,
            )
    if "error" in outcome:
        exc = outcome["error"]
        if isinstance(exc, libvirt.libvirtError):
            refused = authentication_failure(exc, target, username, asked)
            if refused is not None:
                raise refused from exc
            raise translate_libvirt_error(exc, "open a libvirt connection", uri=target, connecting=True) from exc
        raise unexpected_error(exc, "open a libvirt connection", uri=target) from exc
    return outcome["conn"]


def _ignore_libvirt_error(_userdata: t.Any, _error: t.Any) -> None:
    """libvirt error handler that drops the report: errors reach us as exceptions instead."""


def _credential_callback(
    username: t.Optional[str], password: t.Optional[str], asked: t.Optional[t.List[t.Tuple[str, bool]]] = None
) -> t.Callable[[t.List[t.List[t.Any]], t.Any], int]:
    """An ``openAuth`` callback answering SASL / SSH prompts with the module's credentials.

    What libvirt asked for is appended to ``asked`` as (what, whether a value was given), so that a
    refusal can say which credential was missing or rejected; the values themselves are never kept.
    """
    record = asked if asked is not None else []

    def callback(credentials: t.List[t.List[t.Any]], _userdata: t.Any) -> int:
        for credential in credentials:
            # Each entry is [type, prompt, challenge, default result, result (filled in here)].
            if credential[0] == libvirt.VIR_CRED_AUTHNAME:
                value = username or credential[3]
                what = "user name"
            elif credential[0] == libvirt.VIR_CRED_PASSPHRASE:
                value = password
                what = "password"
            else:
                record.append(("credential of type %d" % credential[0], False))
                return -1
            record.append((what, value is not None))
            if value is None:
                return -1
            credential[4] = value
        return 0

    return callback


@contextlib.contextmanager
def libvirt_connection(
    uri: t.Optional[str] = None,
    username: t.Optional[str] = None,
    password: t.Optional[str] = None,
    readonly: bool = False,
    connect_timeout: t.Optional[float] = None,
) -> t.Iterator[t.Any]:
    """Open a libvirt connection for the ``with`` block, and always close it.

    Failures to open become :class:`HostUnreachableError` naming the URI, and so does a host that
    does not answer within :data:`CONNECT_TIMEOUT_S`. The connection sends keepalive probes, so a
    peer that dies or drops off the network fails the calls on it within about
    ``KEEPALIVE_INTERVAL_S * KEEPALIVE_COUNT`` seconds instead of hanging. The libvirt error handler
    is replaced by a no-op, so libvirt prints nothing to stderr.
    """
    if not HAS_LIBVIRT:
        raise MigrationError("The libvirt Python bindings (libvirt-python) are not installed.")
    target = resolve_uri(uri)
    libvirt.registerErrorHandler(_ignore_libvirt_error, None)
    ensure_event_loop()
    conn = _open(target, username, password, readonly, CONNECT_TIMEOUT_S if connect_timeout is None else connect_timeout)
    try:
        conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
    except libvirt.libvirtError:
        pass  # drivers without a remote peer (test://, local embedded) have no keepalive
    try:
        yield conn
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
