# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""The collection's one exception family, and the translation of libvirt errors into it.

Every failure a module reports is a :class:`MigrationError`; a module's ``main()`` turns it into
``fail_json(msg=..., **details)`` in one place. libvirt errors are translated here, by error code,
and nowhere else.

This file does not import libvirt: error codes are matched by their numeric values, which libvirt
keeps stable (they are part of its ABI). Each value is listed with its ``virErrorNumber`` name; the
unit tests compare the table with the constants of the installed libvirt-python.
"""

from __future__ import annotations

import re
import traceback
import typing as t
from urllib.parse import parse_qsl, urlsplit

T = t.TypeVar("T")

# The line the collection's libvirt hook (role maintenance_hook) writes when a host in maintenance
# refuses an incoming migration or a VM start; libvirt puts it into its error message.
HOOK_REFUSAL = re.compile(r"virtops-maintenance: host (?P<host>\S+) is in (?P<state>\w+): refusing to (?P<operation>\w+)")

# virErrorNumber values (libvirt's include/libvirt/virterror.h), by name.
LIBVIRT_ERROR_CODES: t.Dict[str, int] = {
    "VIR_ERR_INTERNAL_ERROR": 1,
    "VIR_ERR_NO_SUPPORT": 3,
    "VIR_ERR_UNKNOWN_HOST": 4,
    "VIR_ERR_NO_CONNECT": 5,
    "VIR_ERR_INVALID_CONN": 6,
    "VIR_ERR_INVALID_DOMAIN": 7,
    "VIR_ERR_INVALID_ARG": 8,
    "VIR_ERR_OPERATION_FAILED": 9,
    "VIR_ERR_XML_ERROR": 27,
    "VIR_ERR_DOM_EXIST": 28,
    "VIR_ERR_OPERATION_DENIED": 29,
    "VIR_ERR_SYSTEM_ERROR": 38,
    "VIR_ERR_RPC": 39,
    "VIR_ERR_GNUTLS_ERROR": 40,
    "VIR_ERR_NO_DOMAIN": 42,
    "VIR_ERR_NO_NETWORK": 43,
    "VIR_ERR_AUTH_FAILED": 45,
    "VIR_ERR_NO_STORAGE_POOL": 49,
    "VIR_ERR_OPERATION_INVALID": 55,
    "VIR_ERR_CONFIG_UNSUPPORTED": 67,
    "VIR_ERR_OPERATION_TIMEOUT": 68,
    "VIR_ERR_ARGUMENT_UNSUPPORTED": 74,
    "VIR_ERR_OPERATION_ABORTED": 78,
    "VIR_ERR_AUTH_CANCELLED": 79,
    "VIR_ERR_NO_DOMAIN_METADATA": 80,
    "VIR_ERR_MIGRATE_UNSAFE": 81,
    "VIR_ERR_OPERATION_UNSUPPORTED": 84,
    "VIR_ERR_SSH": 85,
    "VIR_ERR_AGENT_UNRESPONSIVE": 86,
    "VIR_ERR_RESOURCE_BUSY": 87,
    "VIR_ERR_ACCESS_DENIED": 88,
    "VIR_ERR_CPU_INCOMPATIBLE": 91,
    "VIR_ERR_AUTH_UNAVAILABLE": 94,
    "VIR_ERR_LIBSSH": 98,
    "VIR_ERR_MULTIPLE_DOMAINS": 110,
}
LIBVIRT_ERROR_NAMES: t.Dict[int, str] = {code: name for name, code in LIBVIRT_ERROR_CODES.items()}

# virErrorDomain values: where in libvirt an error was raised.
VIR_FROM_RPC = 7
VIR_FROM_REMOTE = 13

VIR_ERR_NO_DOMAIN = LIBVIRT_ERROR_CODES["VIR_ERR_NO_DOMAIN"]
VIR_ERR_NO_DOMAIN_METADATA = LIBVIRT_ERROR_CODES["VIR_ERR_NO_DOMAIN_METADATA"]
VIR_ERR_OPERATION_INVALID = LIBVIRT_ERROR_CODES["VIR_ERR_OPERATION_INVALID"]
VIR_ERR_OPERATION_ABORTED = LIBVIRT_ERROR_CODES["VIR_ERR_OPERATION_ABORTED"]
VIR_ERR_SYSTEM_ERROR = LIBVIRT_ERROR_CODES["VIR_ERR_SYSTEM_ERROR"]

# "The hypervisor (or this libvirt driver) lacks the feature."
UNSUPPORTED_CODES = frozenset(
    LIBVIRT_ERROR_CODES[name]
    for name in ("VIR_ERR_NO_SUPPORT", "VIR_ERR_OPERATION_UNSUPPORTED", "VIR_ERR_ARGUMENT_UNSUPPORTED")
)

# "The host cannot be reached or refused us": always a connection problem, whenever raised.
CONNECTION_CODES = frozenset(
    LIBVIRT_ERROR_CODES[name]
    for name in (
        "VIR_ERR_UNKNOWN_HOST",
        "VIR_ERR_NO_CONNECT",
        "VIR_ERR_INVALID_CONN",
        "VIR_ERR_RPC",
        "VIR_ERR_GNUTLS_ERROR",
        "VIR_ERR_AUTH_FAILED",
        "VIR_ERR_AUTH_CANCELLED",
        "VIR_ERR_AUTH_UNAVAILABLE",
        "VIR_ERR_SSH",
        "VIR_ERR_LIBSSH",
    )
)

# VIR_ERR_SYSTEM_ERROR is libvirt's "an OS call failed": a lost connection when it comes from the
# RPC or remote layers (or from opening the connection), but a missing file or the like otherwise.
CONNECTION_ERROR_DOMAINS = frozenset((VIR_FROM_RPC, VIR_FROM_REMOTE))


class MigrationError(Exception):
    """The one exception a module turns into ``fail_json``.

    ``msg`` is the sentence shown to the operator. ``details`` are extra result keys (for example
    ``vm``, ``uri``, ``libvirt_error_code``) returned next to ``msg``; their values must be
    JSON-serialisable.
    """

    meaning = "the operation failed"

    def __init__(self, msg: str, **details: t.Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.details: t.Dict[str, t.Any] = {key: value for key, value in details.items() if value is not None}

    def __str__(self) -> str:
        return self.msg

    def result(self) -> t.Dict[str, t.Any]:
        """Keyword arguments for ``fail_json``: ``msg`` and every detail."""
        result = dict(self.details)
        result["msg"] = self.msg
        return result


class VmNotFoundError(MigrationError):
    """The VM does not exist on that host: for a declarative module, it is absent."""

    meaning = "the VM does not exist there"


class OperationInvalidError(MigrationError):
    """libvirt refused the call in the VM's current state: it is not running, or the job already ended."""

    meaning = "the VM is not in a state that allows this (not running, or the job already ended)"


class OperationCancelledError(MigrationError):
    """The job was aborted (by us, by an operator, or by libvirt) before it completed."""

    meaning = "the operation was cancelled"


class FeatureUnsupportedError(MigrationError):
    """The hypervisor or its libvirt driver lacks the feature."""

    meaning = "the hypervisor does not support this"


class HostUnreachableError(MigrationError):
    """The host cannot be reached, or the connection was refused, failed to authenticate or was lost."""

    meaning = "the host cannot be reached or refused the connection"


class AuthenticationError(HostUnreachableError):
    """The host's libvirtd refused to authenticate the connection (SASL credentials, TLS certificates)."""

    meaning = "the host refused to authenticate the connection"


class HostInMaintenanceError(MigrationError):
    """The destination host is in maintenance (or preparing for it) and refused the VM."""

    meaning = "the host is in maintenance"


class VmChangedError(MigrationError):
    """Right before a write, the VM was no longer as it was read: it left the host, changed state, or runs a
    libvirt job (a migration under way). The write was not done."""

    meaning = "the VM changed under the run (it left the host, changed state, or runs a libvirt job)"


class DuplicateVmError(MigrationError):
    """The VM is defined on more than one host; moving it could leave two copies that both start."""

    meaning = "the VM is defined on more than one host"


def unexpected_error(exc: BaseException, action: str, vm: t.Optional[str] = None, uri: t.Optional[str] = None) -> MigrationError:
    """A failure that is not a libvirt error (a bug, a value libvirt-python cannot pass), as a MigrationError."""
    where = ""
    if vm is not None:
        where += " for VM '%s'" % vm
    if uri is not None:
        where += " on %s" % uri
    return MigrationError(
        "Cannot %s%s: unexpected %s: %s" % (action, where, type(exc).__name__, exc),
        vm=vm,
        uri=uri,
        exception_type=type(exc).__name__,
    )


def unexpected_failure(exc: BaseException) -> t.Dict[str, t.Any]:
    """``fail_json`` arguments for an exception no layer expected: a clear message, the traceback kept for -vvv."""
    return {
        "msg": "Unexpected %s: %s. This is a bug in virtops.migration; nothing else was attempted after it." % (type(exc).__name__, exc),
        "exception": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "exception_type": type(exc).__name__,
    }


def libvirt_error_code(exc: BaseException) -> t.Optional[int]:
    """The ``virErrorNumber`` of a ``libvirt.libvirtError`` (``None`` for anything else)."""
    getter = getattr(exc, "get_error_code", None)
    code = getter() if callable(getter) else None
    return code if isinstance(code, int) else None


def libvirt_error_domain(exc: BaseException) -> t.Optional[int]:
    """The ``virErrorDomain`` of a ``libvirt.libvirtError`` (``None`` for anything else)."""
    getter = getattr(exc, "get_error_domain", None)
    domain = getter() if callable(getter) else None
    return domain if isinstance(domain, int) else None


def is_unsupported(exc: BaseException) -> bool:
    """True when libvirt says the hypervisor or driver lacks the feature just called."""
    return libvirt_error_code(exc) in UNSUPPORTED_CODES


def is_not_found(exc: BaseException) -> bool:
    """True when libvirt says the domain does not exist (it is absent, or has just gone away)."""
    return libvirt_error_code(exc) == VIR_ERR_NO_DOMAIN


def error_class(code: t.Optional[int], domain: t.Optional[int], connecting: bool = False) -> t.Type[MigrationError]:
    """Which :class:`MigrationError` subclass a libvirt error code means."""
    if connecting or code in CONNECTION_CODES:
        return HostUnreachableError
    if code == VIR_ERR_SYSTEM_ERROR and domain in CONNECTION_ERROR_DOMAINS:
        return HostUnreachableError
    if code == VIR_ERR_NO_DOMAIN:
        return VmNotFoundError
    if code == VIR_ERR_OPERATION_INVALID:
        return OperationInvalidError
    if code == VIR_ERR_OPERATION_ABORTED:
        return OperationCancelledError
    if code in UNSUPPORTED_CODES:
        return FeatureUnsupportedError
    return MigrationError


def translate_libvirt_error(
    exc: BaseException,
    action: str,
    vm: t.Optional[str] = None,
    uri: t.Optional[str] = None,
    connecting: bool = False,
) -> MigrationError:
    """Turn a ``libvirt.libvirtError`` into the matching :class:`MigrationError`.

    ``action`` says what was being done, as a verb phrase ("read the domain XML"). ``vm`` and
    ``uri`` (the host's connection URI) are named in the message and returned as details. ``connecting``
    marks errors raised while opening the connection: whatever their code, the host is unreachable.

    Use as ``raise translate_libvirt_error(exc, ...) from exc`` so the libvirt traceback is kept.
    """
    code = libvirt_error_code(exc)
    domain = libvirt_error_domain(exc)
    cls = error_class(code, domain, connecting)
    libvirt_text = str(exc).strip() or exc.__class__.__name__
    code_name = LIBVIRT_ERROR_NAMES.get(code) if code is not None else None
    refusal = HOOK_REFUSAL.search(libvirt_text)
    if refusal is not None:
        return HostInMaintenanceError(
            "Cannot %s%s: host %s is in %s and refuses to %s VMs (its maintenance hook said no). libvirt: %s"
            % (action, " for VM '%s'" % vm if vm else "", refusal.group("host"), refusal.group("state"), refusal.group("operation"), libvirt_text),
            vm=vm,
            uri=uri,
            host_name=refusal.group("host"),
            host_state=refusal.group("state"),
            libvirt_error_code=code,
            libvirt_error_name=code_name,
            libvirt_message=libvirt_text,
        )

    where = ""
    if vm is not None:
        where += " for VM '%s'" % vm
    if uri is not None:
        where += " on %s" % uri
    msg = "Cannot %s%s: %s. libvirt: %s" % (action, where, cls.meaning, libvirt_text)
    if code is not None:
        msg += " [%s]" % (code_name or "libvirt error code %d" % code)

    return cls(
        msg,
        vm=vm,
        uri=uri,
        libvirt_error_code=code,
        libvirt_error_name=code_name,
        libvirt_error_domain=domain,
        libvirt_message=libvirt_text,
    )


# "Authentication failed" from libvirt's side of opening a connection.
AUTH_CODES = frozenset(
    LIBVIRT_ERROR_CODES[name] for name in ("VIR_ERR_AUTH_FAILED", "VIR_ERR_AUTH_CANCELLED", "VIR_ERR_AUTH_UNAVAILABLE")
)
# What the client side of libvirt says when the host closed a TLS session after checking the
# client's certificate (it has none, or one the host does not trust).
TLS_REFUSED = re.compile(r"TLS confirmation|certificate", re.IGNORECASE)


def auth_mechanism(uri: str) -> str:
    """The authentication a libvirt URI asks for, as words: "SASL SCRAM-SHA-256", "SASL", "TLS", "SSH"."""
    parts = urlsplit(uri)
    transport = parts.scheme.partition("+")[2].lower()
    requested = dict(parse_qsl(parts.query)).get("auth", "")
    if requested.lower().startswith("sasl."):
        mechanism = "SASL " + requested[len("sasl."):].upper()
    elif requested:
        mechanism = requested.upper()
    elif transport in ("ssh", "libssh", "libssh2"):
        return "SSH"
    else:
        mechanism = "SASL"
    return mechanism + (" over TLS" if transport == "tls" else "")


class _Refusal(t.NamedTuple):
    """What a libvirt error says about a refused login to the host of ``uri``."""

    code: t.Optional[int]
    name: t.Optional[str]
    text: str
    host: str
    # Why the TLS session was refused, or None when TLS was not the cause.
    tls_why: t.Optional[str]


def _refusal(exc: BaseException, uri: str) -> t.Optional[_Refusal]:
    """The facts of an authentication or TLS refusal by the host of ``uri``; None for any other error."""
    code = libvirt_error_code(exc)
    text = str(exc).strip() or exc.__class__.__name__
    parts = urlsplit(uri)
    tls_why = None
    if parts.scheme.partition("+")[2].lower() == "tls" and TLS_REFUSED.search(text) and (code in AUTH_CODES or code == VIR_ERR_SYSTEM_ERROR):
        if "Our own certificate" in text:
            tls_why = (
                "this node's own client certificate is not signed by the CA it trusts (clientcert.pem against "
                "cacert.pem in the URI's pkipath, else in /etc/pki/libvirt/ and /etc/pki/CA/): fix the files on this node"
            )
        elif "verify peer" in text:
            tls_why = (
                "the TLS handshake failed on a certificate: the host's certificate is not signed by a CA this node "
                "trusts (cacert.pem in the URI's pkipath, else /etc/pki/CA/cacert.pem), or names another host"
            )
        else:
            tls_why = (
                "the host closed the TLS session after checking this node's client certificate: it has none "
                "(clientcert.pem and clientkey.pem in the URI's pkipath, else /etc/pki/libvirt/), or one signed "
                "by a CA the host does not trust, while the host demands one (tls_no_verify_certificate = 0)"
            )
    elif code not in AUTH_CODES:
        return None
    name = LIBVIRT_ERROR_NAMES.get(code) if code is not None else None
    return _Refusal(code, name, text, parts.hostname or uri, tls_why)


def _authentication_error(msg: str, refusal: _Refusal, mechanism: str, **details: t.Any) -> AuthenticationError:
    return AuthenticationError(
        "%s. libvirt: %s%s" % (msg, refusal.text, " [%s]" % refusal.name if refusal.name else ""),
        host=refusal.host,
        mechanism=mechanism,
        libvirt_error_code=refusal.code,
        libvirt_error_name=refusal.name,
        libvirt_message=refusal.text,
        **details,
    )


def authentication_failure(
    exc: BaseException, uri: str, username: t.Optional[str], asked: t.Sequence[t.Tuple[str, bool]]
) -> t.Optional[AuthenticationError]:
    """The :class:`AuthenticationError` for a libvirt error raised while opening ``uri``, or None.

    ``asked`` lists what libvirt asked the module's credential callback for while connecting, as
    (``"user name"`` or ``"password"`` ..., whether the module had a value). The message names the
    host and the mechanism and never contains a credential.
    """
    refusal = _refusal(exc, uri)
    if refusal is None:
        return None
    missing = [what for what, given in asked if not given]
    if refusal.tls_why is not None:
        mechanism, why = "TLS", refusal.tls_why
    elif missing:
        mechanism = auth_mechanism(uri)
        why = "libvirtd asked for a %s and none was given (set the modules' username and password)" % " and a ".join(missing)
    elif asked:
        mechanism = auth_mechanism(uri)
        why = "libvirtd rejected the credentials of user '%s': wrong user name or password, or the user is not in the host's SASL database" % (
            username or "(libvirt's default)"
        )
    else:
        mechanism = auth_mechanism(uri)
        why = (
            "libvirtd refused before asking this module for credentials: they came from libvirt's auth.conf on this "
            "node and are wrong, or the host offers no mechanism this connection may use (libvirtd accepts SCRAM "
            "and other SASL mechanisms without a security layer only on TLS connections, qemu+tls://), or not the "
            "mechanism the URI's auth= asks for"
        )
    return _authentication_error(
        "Authentication failed on host %s with %s: %s. URI: %s" % (refusal.host, mechanism, why, uri), refusal, mechanism, uri=uri
    )


def peer_authentication_failure(exc: BaseException, destination_uri: str, vm: str, source_uri: str) -> t.Optional[AuthenticationError]:
    """The :class:`AuthenticationError` for a peer-to-peer migration the destination refused to authenticate, or None.

    In a peer-to-peer migration the source host's libvirtd opens the connection to the destination itself:
    the module's credentials do not reach it, libvirt's client authentication file on the source host does.
    """
    refusal = _refusal(exc, destination_uri)
    if refusal is None:
        return None
    mechanism = "TLS" if refusal.tls_why is not None else auth_mechanism(destination_uri)
    return _authentication_error(
        "Cannot migrate VM '%s': the source host's libvirtd (%s) could not log in to the destination host %s with %s. "
        "In a peer-to-peer migration the source libvirtd connects to the destination itself and takes its credentials "
        "from libvirt's client authentication file on the source host (/etc/libvirt/auth.conf, an [auth-libvirt-%s] "
        "group; the role virtops.migration.libvirt_auth writes it) and its certificates from /etc/pki or the URI's "
        "pkipath, not from the task's username and password. The VM was not moved"
        % (vm, source_uri, refusal.host, mechanism, refusal.host),
        refusal,
        mechanism,
        vm=vm,
        uri=source_uri,
        destination_uri=destination_uri,
    )


def optional_call(func: t.Callable[..., T], *args: t.Any) -> t.Optional[T]:
    """Call a libvirt API that the driver may lack; ``None`` when libvirt says it is unsupported.

    This is how features are probed: by asking, not by comparing version numbers. Other errors
    propagate unchanged.
    """
    try:
        return func(*args)
    except Exception as exc:  # pylint: disable=broad-exception-caught
        if is_unsupported(exc):
            return None
        raise
