# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Guest agent calls and guest hooks, against a fake agent that answers as QEMU 7.2's qemu-ga does."""

from __future__ import annotations

import base64
import json
import typing as t

import libvirt
import pytest

from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io import guest_agent
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import HostUnreachableError, VmNotFoundError
from libvirt_fakes import libvirt_error

NOT_CONNECTED = libvirt_error(libvirt.VIR_ERR_AGENT_UNRESPONSIVE, "Guest agent is not responding: QEMU guest agent is not connected")
NOT_CONFIGURED = libvirt_error(libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED, "argument unsupported: QEMU guest agent is not configured")
NOT_RUNNING = libvirt_error(libvirt.VIR_ERR_OPERATION_INVALID, "Requested operation is not valid: domain is not running")
NO_RUNNER = libvirt_error(
    libvirt.VIR_ERR_INTERNAL_ERROR,
    "internal error: unable to execute QEMU agent command 'guest-exec': Guest agent command failed, error was "
    "'Failed to execute child process \u201c/usr/local/sbin/virtops-run-hooks\u201d (No such file or directory)'",
)
DISABLED = libvirt_error(
    libvirt.VIR_ERR_INTERNAL_ERROR,
    "internal error: unable to execute QEMU agent command 'guest-exec': The command guest-exec has been disabled for this instance",
)
CONNECTION_LOST = libvirt_error(libvirt.VIR_ERR_SYSTEM_ERROR, "End of file while reading data: Input/output error", libvirt.VIR_FROM_RPC)
VANISHED = libvirt_error(libvirt.VIR_ERR_NO_DOMAIN, "Domain not found: no domain with matching name 'vm1'")


class Clock:
    """time.monotonic and time.sleep for the module under test: sleeping advances the clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeAgentDomain:
    """A domain whose agent answers from a script: ``ping`` errors, the runner's exit, the polls it takes."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.ping_errors: t.List[libvirt.libvirtError] = []
        self.ping_error_forever: t.Optional[libvirt.libvirtError] = None
        self.exec_error: t.Optional[libvirt.libvirtError] = None
        self.status_errors: t.List[libvirt.libvirtError] = []
        # Polls answered "not exited yet" before the exit; None: it never exits.
        self.polls_before_exit: t.Optional[int] = 2
        self.exit: t.Dict[str, t.Any] = {"exitcode": 0}
        self.out = b""
        self.err = b""
        self.commands: t.List[t.Dict[str, t.Any]] = []
        self.timeouts: t.List[int] = []
        # Seconds one agent command takes.
        self.latency = 0.01

    def name(self) -> str:
        return "vm1"

    def connect(self) -> t.Any:
        class Conn:
            def getURI(self) -> str:  # noqa: N802 (libvirt's name)
                return "qemu+tcp://hv1/system"

        return Conn()

    def agent(self, payload: str, timeout: int, flags: int) -> str:
        command = json.loads(payload)
        self.commands.append(command)
        self.timeouts.append(timeout)
        self.clock.now += self.latency
        name = command["execute"]
        if name == "guest-ping":
            if self.ping_error_forever is not None:
                raise self.ping_error_forever
            if self.ping_errors:
                raise self.ping_errors.pop(0)
            return json.dumps({"return": {}})
        if name == "guest-exec":
            if self.exec_error is not None:
                raise self.exec_error
            return json.dumps({"return": {"pid": 4242}})
        if name == "guest-exec-status":
            if self.status_errors:
                raise self.status_errors.pop(0)
            if self.polls_before_exit is not None and self.polls_before_exit > 0:
                self.polls_before_exit -= 1
                return json.dumps({"return": {"exited": False}})
            if self.polls_before_exit is None:
                return json.dumps({"return": {"exited": False}})
            reply: t.Dict[str, t.Any] = dict(self.exit, exited=True)
            if self.out:
                reply["out-data"] = base64.b64encode(self.out).decode()
                reply["out-truncated"] = False
            if self.err:
                reply["err-data"] = base64.b64encode(self.err).decode()
                reply["err-truncated"] = False
            return json.dumps({"return": reply})
        raise AssertionError("unexpected agent command %s" % name)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(guest_agent, "time", fake)
    return fake


@pytest.fixture
def dom(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> FakeAgentDomain:
    domain = FakeAgentDomain(clock)

    class FakeLibvirtQemu:
        @staticmethod
        def qemuAgentCommand(target: FakeAgentDomain, payload: str, timeout: int, flags: int) -> str:  # noqa: N802 (libvirt's name)
            return target.agent(payload, timeout, flags)

    monkeypatch.setattr(guest_agent, "libvirt_qemu", FakeLibvirtQemu)
    return domain


def summary(event: str, hooks: t.List[t.Dict[str, t.Any]], failed: int = 0, refused: t.Optional[str] = None) -> bytes:
    """The runner's output: a log line, then its JSON summary as the last line."""
    return ("hook 10-flush: ok\n" + json.dumps({"event": event, "hooks": hooks, "failed": failed, "refused": refused}) + "\n").encode()


def test_guest_exec_sends_an_argument_list_and_decodes_the_output(dom: FakeAgentDomain, clock: Clock) -> None:
    dom.exit = {"exitcode": 3}
    dom.out = "h\u00e9llo\n".encode()
    dom.err = b"oops\n"
    result = guest_agent.guest_exec(dom, "/bin/prog", ["a b", "$(rm -rf /)"], deadline_s=30)
    assert dom.commands[0] == {
        "execute": "guest-exec",
        "arguments": {"path": "/bin/prog", "arg": ["a b", "$(rm -rf /)"], "capture-output": True},
    }
    assert [command["execute"] for command in dom.commands[1:]] == ["guest-exec-status"] * 3
    assert all(command["arguments"] == {"pid": 4242} for command in dom.commands[1:])
    assert (result.exit_code, result.signal, result.out, result.err, result.timed_out) == (3, None, "h\u00e9llo\n", "oops\n", False)
    assert 0 < result.duration_s < 1


def test_guest_exec_reports_a_signal(dom: FakeAgentDomain) -> None:
    dom.exit = {"signal": 9}
    result = guest_agent.guest_exec(dom, "/bin/prog", [], deadline_s=30)
    assert (result.exit_code, result.signal, result.out) == (None, 9, "")


def test_guest_exec_stops_waiting_at_its_own_deadline(dom: FakeAgentDomain, clock: Clock) -> None:
    dom.polls_before_exit = None  # never exits
    start = clock.now
    result = guest_agent.guest_exec(dom, "/bin/prog", [], deadline_s=5, poll_s=0.2)
    assert result.timed_out is True and result.exit_code is None
    assert 5 <= clock.now - start < 5.5
    assert 5 <= result.duration_s < 5.5
    # The polls back off up to poll_s, not beyond.
    assert 20 <= len(dom.commands) <= 40
    # No agent call may wait longer than the time left (libvirt's minimum is 1 s).
    assert max(dom.timeouts) <= guest_agent.COMMAND_TIMEOUT_S


def test_guest_exec_keeps_polling_an_agent_that_is_briefly_busy(dom: FakeAgentDomain) -> None:
    dom.status_errors = [NOT_CONNECTED]
    result = guest_agent.guest_exec(dom, "/bin/prog", [], deadline_s=30)
    assert result.exit_code == 0 and not result.timed_out


def test_guest_exec_missing_program_is_not_found(dom: FakeAgentDomain) -> None:
    dom.exec_error = NO_RUNNER
    with pytest.raises(guest_agent.GuestAgentError) as raised:
        guest_agent.guest_exec(dom, guest_agent.RUNNER_PATH, ["before_hibernation"], deadline_s=30)
    assert raised.value.reason == "not_found"
    assert "No such file or directory" in raised.value.msg


@pytest.mark.parametrize(
    ("error", "expected"),
    [(CONNECTION_LOST, HostUnreachableError), (VANISHED, VmNotFoundError)],
    ids=["connection lost", "vm gone"],
)
def test_host_problems_are_translated_not_swallowed(dom: FakeAgentDomain, error: libvirt.libvirtError, expected: type) -> None:
    dom.exec_error = error
    with pytest.raises(expected) as raised:
        guest_agent.run_guest_hooks(dom, "before_hibernation", 30)
    assert "vm1" in str(raised.value) and "qemu+tcp://hv1/system" in str(raised.value)


def test_agent_ready_waits_for_an_agent_that_connects_late(dom: FakeAgentDomain, clock: Clock) -> None:
    dom.ping_errors = [NOT_CONNECTED, NOT_CONNECTED, NOT_CONNECTED]
    start = clock.now
    assert guest_agent.agent_ready(dom, 10) is True
    assert len(dom.commands) == 4 and clock.now - start < 3


def test_agent_ready_gives_up_at_the_deadline(dom: FakeAgentDomain, clock: Clock) -> None:
    dom.ping_error_forever = NOT_CONNECTED
    start = clock.now
    assert guest_agent.agent_ready(dom, 10) is False
    assert 9 <= clock.now - start <= 10.5


@pytest.mark.parametrize("error", [NOT_CONFIGURED, NOT_RUNNING], ids=["no agent channel", "vm not running"])
def test_agent_ready_does_not_wait_for_what_waiting_cannot_cure(dom: FakeAgentDomain, clock: Clock, error: libvirt.libvirtError) -> None:
    dom.ping_error_forever = error
    start = clock.now
    assert guest_agent.agent_ready(dom, 10) is False
    assert len(dom.commands) == 1 and clock.now - start < 0.1


def test_hooks_ok_with_the_runners_summary(dom: FakeAgentDomain) -> None:
    hooks = [{"name": "10-flush", "status": 0, "signal": None, "timed_out": False, "duration_s": 0.2, "output": "flushed"}]
    dom.out = summary("before_hibernation", hooks)
    result = guest_agent.run_guest_hooks(dom, "before_hibernation", 60)
    assert dom.commands[1]["arguments"] == {"path": guest_agent.RUNNER_PATH, "arg": ["before_hibernation"], "capture-output": True}
    assert result["event"] == "before_hibernation"
    assert result["outcome"] == "ok" and result["exit_code"] == 0
    assert result["hooks"] == hooks and result["failed"] == 0 and result["failed_hooks"] == [] and result["refused"] is None
    assert "stderr" not in result and result["duration_s"] >= 0


def test_hooks_ok_without_hooks(dom: FakeAgentDomain) -> None:
    dom.out = summary("after_hibernation", [])
    result = guest_agent.run_guest_hooks(dom, "after_hibernation", 60)
    assert result["outcome"] == "ok" and result["message"] == "no hooks for this event"


def test_hooks_failed_names_the_failed_hooks(dom: FakeAgentDomain) -> None:
    hooks: t.List[t.Dict[str, t.Any]] = [
        {"name": "10-flush", "status": 0, "signal": None, "timed_out": False, "duration_s": 0.1, "output": ""},
        {"name": "20-stop-app", "status": None, "signal": 15, "timed_out": True, "duration_s": 30.0, "output": ""},
    ]
    dom.exit = {"exitcode": 1}
    dom.out = summary("before_migration", hooks, failed=1)
    dom.err = b"20-stop-app: timed out after 30 s\n"
    result = guest_agent.run_guest_hooks(dom, "before_migration", 60)
    assert result["outcome"] == "failed" and result["failed"] == 1 and result["failed_hooks"] == ["20-stop-app"]
    assert "20-stop-app" in result["message"]
    assert result["stderr"] == "20-stop-app: timed out after 30 s"


def test_hooks_refused_says_why(dom: FakeAgentDomain) -> None:
    dom.exit = {"exitcode": 2}
    dom.out = summary("before_hibernation", [], refused="/etc/virtops/hooks.d/before_hibernation/10-x is writable by others")
    result = guest_agent.run_guest_hooks(dom, "before_hibernation", 60)
    assert result["outcome"] == "refused" and "writable by others" in result["message"]


def test_no_runner_reads_the_agents_error(dom: FakeAgentDomain) -> None:
    dom.exec_error = NO_RUNNER
    result = guest_agent.run_guest_hooks(dom, "before_hibernation", 60)
    assert result["outcome"] == "no_runner"
    assert guest_agent.RUNNER_PATH in result["message"] and "No such file or directory" in result["message"]
    assert "exit_code" not in result


def test_no_agent_after_the_short_wait(dom: FakeAgentDomain, clock: Clock) -> None:
    dom.ping_error_forever = NOT_CONNECTED
    start = clock.now
    result = guest_agent.run_guest_hooks(dom, "before_hibernation", 120)
    assert result["outcome"] == "no_agent" and "not connected" in result["message"]
    assert guest_agent.AGENT_WAIT_S - 1 <= clock.now - start <= guest_agent.AGENT_WAIT_S + 0.5
    assert all(command["execute"] == "guest-ping" for command in dom.commands)


def test_no_agent_when_not_configured(dom: FakeAgentDomain) -> None:
    dom.ping_error_forever = NOT_CONFIGURED
    result = guest_agent.run_guest_hooks(dom, "after_migration", 120)
    assert result["outcome"] == "no_agent" and "not configured" in result["message"]


def test_timed_out_says_the_runner_may_still_run(dom: FakeAgentDomain, clock: Clock) -> None:
    dom.polls_before_exit = None
    start = clock.now
    result = guest_agent.run_guest_hooks(dom, "before_hibernation", 7)
    assert result["outcome"] == "timed_out"
    assert "may still be running" in result["message"] and "4242" in result["message"]
    assert 7 <= clock.now - start < 7.5
    assert result["exit_code"] is None and "hooks" not in result


@pytest.mark.parametrize(
    ("exit", "out", "err", "message"),
    [
        ({"exitcode": 127}, b"", b"setpriv: failed\n", "exited 127: setpriv: failed"),
        ({"signal": 9}, b"", b"", "killed by signal 9"),
    ],
)
def test_other_runner_ends_are_errors(dom: FakeAgentDomain, exit: t.Dict[str, int], out: bytes, err: bytes, message: str) -> None:
    dom.exit, dom.out, dom.err = exit, out, err
    result = guest_agent.run_guest_hooks(dom, "before_hibernation", 60)
    assert result["outcome"] == "error" and message in result["message"]


def test_guest_exec_disabled_is_an_error(dom: FakeAgentDomain) -> None:
    dom.exec_error = DISABLED
    result = guest_agent.run_guest_hooks(dom, "before_hibernation", 60)
    assert result["outcome"] == "error" and "has been disabled" in result["message"]


def test_ok_without_a_summary_line_is_marked(dom: FakeAgentDomain) -> None:
    dom.out = b"not json\n"
    result = guest_agent.run_guest_hooks(dom, "before_hibernation", 60)
    assert result["outcome"] == "ok" and result["summary_missing"] is True and result["hooks"] == []


def test_unknown_event_is_a_bug() -> None:
    with pytest.raises(ValueError, match="unknown guest hook event"):
        guest_agent.run_guest_hooks(object(), "before_reboot", 60)


@pytest.mark.parametrize(
    ("out", "expected"),
    [
        ("", None),
        ("log line\n", None),
        ('log\n{"event": "x", "hooks": []}\n\n', {"event": "x", "hooks": []}),
        ('{"event": "x"}\nlater log line\n', None),
        ("[1, 2]\n", None),
    ],
)
def test_parse_summary_reads_only_the_last_line(out: str, expected: t.Optional[t.Dict[str, t.Any]]) -> None:
    assert guest_agent.parse_summary(out) == expected
