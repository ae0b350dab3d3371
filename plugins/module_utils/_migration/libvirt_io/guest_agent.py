# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""Running programs inside a guest through its QEMU guest agent, and the guest hooks built on that.

The agent's ``guest-exec`` starts a program with an argument list (never a shell string) and
returns its guest PID at once; ``guest-exec-status`` tells whether it has exited. The agent has no
timeout of its own, so :func:`guest_exec` keeps a deadline on the host with a monotonic clock. At
the deadline it stops waiting and says so; the program may go on running in the guest.

Guest hooks are run by the in-guest runner :data:`RUNNER_PATH` (installed by the role
``virtops.migration.guest_hooks``): ``virtops-run-hooks EVENT`` runs the event's hooks in name order
as an unprivileged user, each under its own timeout, and exits 0 (every hook succeeded, or there
were none), 1 (a hook failed or timed out) or 2 (it refused: unknown event, a hook writable by
someone other than root). The last line of its standard output is a JSON summary
``{"event", "hooks": [{"name", "status", "signal", "timed_out", "duration_s", "output"}], "failed",
"refused"}``, where ``failed`` counts the hooks that failed (an exit status other than 0, or timed
out) and ``refused`` is null or the reason.

:func:`run_guest_hooks` never raises for what happens in the guest: it returns one result for the
``events`` of a move or a hibernation, whose ``outcome`` is one of :data:`OUTCOMES`. Only a
problem of the host (the connection lost, the VM gone) raises, translated by
:func:`~.errors.translate_libvirt_error`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import time
import typing as t

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.domain import _connection_uri, _domain_name
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import (
    LIBVIRT_ERROR_CODES,
    VIR_ERR_NO_DOMAIN,
    HostUnreachableError,
    MigrationError,
    error_class,
    libvirt_error_code,
    libvirt_error_domain,
    translate_libvirt_error,
)

try:
    import libvirt_qemu
except ImportError:  # reported by the module through missing_required_lib (libvirt-python ships both)
    libvirt_qemu = None

RUNNER_PATH = "/usr/local/sbin/virtops-run-hooks"
EVENTS = ("before_migration", "after_migration", "before_hibernation", "after_hibernation")

# What became of an event's hooks.
OK = "ok"  # the runner ran every hook of the event and all succeeded, or the event has none
FAILED = "failed"  # a hook failed or hit its own timeout in the guest
REFUSED = "refused"  # the runner refused to run (unknown event, a hook writable by others than root)
NO_AGENT = "no_agent"  # the guest agent did not answer (not configured, not running, VM not running)
NO_RUNNER = "no_runner"  # the agent answered, but the runner is not installed in the guest
TIMED_OUT = "timed_out"  # the runner did not finish before the host's deadline
ERROR = "error"  # anything else the guest or its agent did (guest-exec disabled, runner crashed)
OUTCOMES = (OK, FAILED, REFUSED, NO_AGENT, NO_RUNNER, TIMED_OUT, ERROR)
# Outcomes in which the hooks ran (or would have run) and did not all succeed.
HOOK_FAILURES = (FAILED, REFUSED, TIMED_OUT, ERROR)

# How long to wait for a guest agent to answer before counting it as absent (as vdsm did).
AGENT_WAIT_S = 10.0
# Longest wait for the agent's reply to one command; libvirt wants whole seconds.
COMMAND_TIMEOUT_S = 10
# Exit codes of the runner.
RUNNER_EXIT_FAILED = 1
RUNNER_EXIT_REFUSED = 2
# Characters of the runner's standard error kept in a result.
STDERR_KEPT = 2000

_AGENT_UNRESPONSIVE = LIBVIRT_ERROR_CODES["VIR_ERR_AGENT_UNRESPONSIVE"]
_OPERATION_INVALID = LIBVIRT_ERROR_CODES["VIR_ERR_OPERATION_INVALID"]
_OPERATION_TIMEOUT = LIBVIRT_ERROR_CODES["VIR_ERR_OPERATION_TIMEOUT"]
_ARGUMENT_UNSUPPORTED = LIBVIRT_ERROR_CODES["VIR_ERR_ARGUMENT_UNSUPPORTED"]
# libvirt errors that mean "no agent to talk to": not configured (no channel), not connected or not
# answering, or the VM not running (a paused VM's agent cannot answer either).
_NO_AGENT_CODES = frozenset((_AGENT_UNRESPONSIVE, _OPERATION_INVALID, _OPERATION_TIMEOUT, _ARGUMENT_UNSUPPORTED))
# Of those, the ones that waiting does not cure: no agent channel at all, the VM not running.
_AGENT_HOPELESS_CODES = frozenset((_OPERATION_INVALID, _ARGUMENT_UNSUPPORTED))
# qemu-ga's error when the program to run does not exist (glib's message for ENOENT).
_NOT_FOUND = "No such file or directory"


class GuestAgentError(MigrationError):
    """The guest agent could not do what was asked; ``reason`` is ``no_agent``, ``not_found`` or ``error``."""

    meaning = "the guest agent could not do it"

    def __init__(self, msg: str, reason: str, **details: t.Any) -> None:
        super().__init__(msg, **details)
        self.reason = reason


@dataclasses.dataclass
class ExecResult:
    """What one ``guest-exec`` gave: exit code or signal, decoded output, and whether the deadline passed."""

    pid: int
    exit_code: t.Optional[int] = None
    signal: t.Optional[int] = None
    out: str = ""
    err: str = ""
    out_truncated: bool = False
    err_truncated: bool = False
    timed_out: bool = False
    duration_s: float = 0.0


def _host_problem(exc: BaseException) -> bool:
    """True for libvirt errors that are the host's (connection lost, VM gone), not the guest's."""
    code = libvirt_error_code(exc)
    return code == VIR_ERR_NO_DOMAIN or error_class(code, libvirt_error_domain(exc)) is HostUnreachableError


def agent_command(dom: t.Any, command: str, arguments: t.Optional[t.Mapping[str, t.Any]] = None, timeout_s: float = COMMAND_TIMEOUT_S) -> t.Any:
    """Send one agent command and return its ``return`` value.

    Raises :class:`GuestAgentError` for the guest's side (no agent, the agent's own error) and a
    translated :class:`~.errors.MigrationError` for the host's (connection lost, VM gone).
    """
    if libvirt_qemu is None:
        raise MigrationError("The libvirt Python bindings (libvirt-python, module libvirt_qemu) are not installed.")
    payload: t.Dict[str, t.Any] = {"execute": command}
    if arguments is not None:
        payload["arguments"] = dict(arguments)
    try:
        reply = libvirt_qemu.qemuAgentCommand(dom, json.dumps(payload), max(1, int(timeout_s)), 0)
    except Exception as exc:  # pylint: disable=broad-exception-caught
        code = libvirt_error_code(exc)
        if code is None:
            raise
        if _host_problem(exc):
            raise translate_libvirt_error(exc, "run guest agent command %s" % command, vm=_domain_name(dom), uri=_connection_uri(dom.connect())) from exc
        text = str(exc).strip()
        if code in _NO_AGENT_CODES:
            raise GuestAgentError(text, "no_agent", libvirt_error_code=code) from exc
        if _NOT_FOUND in text:
            raise GuestAgentError(text, "not_found", libvirt_error_code=code) from exc
        raise GuestAgentError(text, "error", libvirt_error_code=code) from exc
    try:
        return json.loads(reply)["return"]
    except (ValueError, TypeError, KeyError) as exc:
        raise GuestAgentError("the guest agent's reply to %s is not what QEMU documents: %r" % (command, reply), "error") from exc


def wait_for_agent(dom: t.Any, timeout_s: float, poll_s: float = 0.5) -> t.Optional[str]:
    """Ping the agent until it answers or ``timeout_s`` passes: ``None`` once it answers, else why not.

    An agent that is not configured, or a VM that is not running, is not waited for.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            agent_command(dom, "guest-ping", timeout_s=min(COMMAND_TIMEOUT_S, max(1.0, remaining)))
        except GuestAgentError as exc:
            if exc.details.get("libvirt_error_code") in _AGENT_HOPELESS_CODES or time.monotonic() + poll_s >= deadline:
                return exc.msg
        else:
            return None
        time.sleep(poll_s)


def agent_ready(dom: t.Any, timeout_s: float) -> bool:
    """True when the guest agent answers a ping within ``timeout_s`` seconds."""
    return wait_for_agent(dom, timeout_s) is None


def _decode(data: t.Any) -> str:
    if not data:
        return ""
    try:
        return base64.b64decode(data).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError, TypeError):
        return "<undecodable output: %r>" % (data,)


def guest_exec(dom: t.Any, path: str, args: t.Sequence[str], deadline_s: float, poll_s: float = 0.2) -> ExecResult:
    """Run ``path`` with ``args`` in the guest and wait at most ``deadline_s`` seconds for it to exit.

    The program gets an argument list, never a shell. Its output is captured (QEMU keeps at most
    16 MiB per stream, then sets the ``*_truncated`` flags). At the deadline the result has
    ``timed_out`` set and no exit code: the agent cannot stop the program, which may still run in
    the guest. Raises :class:`GuestAgentError` when the program cannot be started (``reason``
    ``not_found`` when it does not exist) or the agent stops answering with a definite error.
    """
    start = time.monotonic()
    deadline = start + deadline_s
    started = agent_command(dom, "guest-exec", {"path": path, "arg": list(args), "capture-output": True})
    if not isinstance(started, t.Mapping) or not isinstance(started.get("pid"), int):
        raise GuestAgentError("the guest agent started %s but returned no PID: %r" % (path, started), "error")
    result = ExecResult(pid=started["pid"])
    sleep = min(0.05, poll_s)
    while True:
        remaining = deadline - time.monotonic()
        try:
            status = agent_command(dom, "guest-exec-status", {"pid": result.pid}, timeout_s=min(COMMAND_TIMEOUT_S, max(1.0, remaining)))
        except GuestAgentError as exc:
            # An agent busy or briefly away is asked again until the deadline; any other error is final.
            if exc.reason != "no_agent" or exc.details.get("libvirt_error_code") in _AGENT_HOPELESS_CODES:
                raise
            status = {}
        if isinstance(status, t.Mapping) and status.get("exited"):
            result.exit_code = status.get("exitcode")
            result.signal = status.get("signal")
            result.out = _decode(status.get("out-data"))
            result.err = _decode(status.get("err-data"))
            result.out_truncated = bool(status.get("out-truncated"))
            result.err_truncated = bool(status.get("err-truncated"))
            break
        if time.monotonic() >= deadline:
            result.timed_out = True
            break
        time.sleep(min(sleep, max(0.0, deadline - time.monotonic())))
        sleep = min(sleep * 2, poll_s)
    result.duration_s = round(time.monotonic() - start, 3)
    return result


def parse_summary(out: str) -> t.Optional[t.Dict[str, t.Any]]:
    """The runner's JSON summary: the last non-empty line of its standard output (``None`` if there is none)."""
    lines = [line for line in out.splitlines() if line.strip()]
    if not lines:
        return None
    try:
        summary = json.loads(lines[-1])
    except ValueError:
        return None
    return summary if isinstance(summary, dict) else None


def failed_hooks(summary: t.Optional[t.Mapping[str, t.Any]]) -> t.List[str]:
    """Names of the hooks the runner's summary shows as failed: an exit status other than 0, or timed out."""
    hooks = summary.get("hooks") if summary else None
    if not isinstance(hooks, list):
        return []
    return [str(hook.get("name")) for hook in hooks if isinstance(hook, t.Mapping) and (hook.get("timed_out") or hook.get("status") != 0)]


def _exec_outcome(result: ExecResult, summary: t.Optional[t.Mapping[str, t.Any]]) -> t.Tuple[str, str]:
    """Outcome and message for a runner that was started."""
    if result.timed_out:
        return TIMED_OUT, (
            "the hook runner did not finish within %s s (guest PID %d); it may still be running in the guest "
            "(its own per-hook timeouts stop the hooks)" % (_seconds(result.duration_s), result.pid)
        )
    if result.exit_code == 0:
        return OK, "every hook succeeded" if summary is None or summary.get("hooks") else "no hooks for this event"
    if result.exit_code == RUNNER_EXIT_FAILED:
        names = failed_hooks(summary)
        return FAILED, "hook(s) failed or timed out in the guest: %s" % (", ".join(names) if names else "see the runner's output")
    if result.exit_code == RUNNER_EXIT_REFUSED:
        refused = summary.get("refused") if summary else None
        return REFUSED, "the hook runner refused to run: %s" % (refused or result.err.strip() or "no reason given")
    if result.exit_code is None:
        return ERROR, "the hook runner was killed by signal %s" % result.signal
    return ERROR, "the hook runner exited %d: %s" % (result.exit_code, result.err.strip()[-STDERR_KEPT:] or "no output")


def _seconds(value: float) -> str:
    return ("%.1f" % value).rstrip("0").rstrip(".")


def run_guest_hooks(dom: t.Any, event: str, deadline_s: float, agent_wait_s: float = AGENT_WAIT_S) -> t.Dict[str, t.Any]:
    """Run the guest's hooks for ``event`` through the agent; the result for an ``events`` list.

    The result has ``event`` (the guest event, such as ``before_hibernation``), ``outcome`` (one of
    :data:`OUTCOMES`), ``message``, ``duration_s``, and, once the runner ran, ``exit_code``,
    ``hooks`` (each hook's name, status, signal, timed_out, duration_s and output), ``failed`` (how
    many failed) and ``refused`` from its summary, ``failed_hooks`` (the names of those that failed),
    and its standard error (``stderr``, the end of it) when not empty.
    """
    if event not in EVENTS:
        raise ValueError("unknown guest hook event %r (known: %s)" % (event, ", ".join(EVENTS)))
    start = time.monotonic()
    entry: t.Dict[str, t.Any] = {"event": event}

    def done(outcome: str, message: str) -> t.Dict[str, t.Any]:
        entry["outcome"] = outcome
        entry["message"] = message
        entry["duration_s"] = round(time.monotonic() - start, 3)
        return entry

    absent = wait_for_agent(dom, min(agent_wait_s, deadline_s))
    if absent is not None:
        return done(NO_AGENT, "the guest agent did not answer within %s s: %s" % (_seconds(min(agent_wait_s, deadline_s)), absent))
    remaining = max(0.0, deadline_s - (time.monotonic() - start))
    try:
        result = guest_exec(dom, RUNNER_PATH, [event], remaining)
    except GuestAgentError as exc:
        if exc.reason == "not_found":
            return done(NO_RUNNER, "the hook runner %s is not installed in the guest (agent: %s)" % (RUNNER_PATH, exc.msg))
        if exc.reason == "no_agent":
            return done(NO_AGENT, "the guest agent stopped answering: %s" % exc.msg)
        return done(ERROR, "the guest agent could not run the hook runner: %s" % exc.msg)
    summary = parse_summary(result.out)
    entry["exit_code"] = result.exit_code
    if result.signal is not None:
        entry["signal"] = result.signal
    if summary is not None:
        entry["hooks"] = summary.get("hooks") if isinstance(summary.get("hooks"), list) else []
        entry["failed"] = summary.get("failed")
        entry["failed_hooks"] = failed_hooks(summary)
        entry["refused"] = summary.get("refused")
    elif not result.timed_out:
        entry["hooks"] = []
        entry["summary_missing"] = True
    if result.err.strip():
        entry["stderr"] = result.err.strip()[-STDERR_KEPT:]
    return done(*_exec_outcome(result, summary))
