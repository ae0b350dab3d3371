# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The ``virtops.migration.vm_hibernate`` module, run through its ``main()`` against a fake host and guest agent."""

from __future__ import annotations

import base64
import re
import json
import typing as t

import libvirt
import pytest
from ansible.module_utils import _internal as module_utils_internal
from ansible.module_utils.common import warnings as module_warnings
from ansible.module_utils.testing import patch_module_args

from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io import guest_agent
from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration import hibernation
from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration.hibernation import HibernationRefused, decide
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import options
from ansible_collections.virtops.migration.plugins.modules import vm_hibernate
from libvirt_fakes import FakeConnection, FakeDomain, libvirt_error

Sample = t.Callable[[str], str]

RUNNING = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED)
PAUSED = (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER)
SAVED = (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SAVED)
SHUT_OFF = (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN)
PMSUSPENDED = (libvirt.VIR_DOMAIN_PMSUSPENDED, 0)

NO_RUNNER = libvirt_error(
    libvirt.VIR_ERR_INTERNAL_ERROR,
    "internal error: unable to execute QEMU agent command 'guest-exec': Guest agent command failed, error was "
    "'Failed to execute child process \u201c/usr/local/sbin/virtops-run-hooks\u201d (No such file or directory)'",
)
NOT_CONFIGURED = libvirt_error(libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED, "argument unsupported: QEMU guest agent is not configured")
NOT_RUNNING = libvirt_error(libvirt.VIR_ERR_OPERATION_INVALID, "Requested operation is not valid: domain is not running")

# The VF half of a teaming pair, plugged in: QEMU unplugs it itself during a migration.
PRIMARY = """
    <interface type='hostdev' managed='yes'>
      <mac address='52:54:00:5d:11:22'/>
      <source><address type='pci' domain='0x0000' bus='0x3b' slot='0x02' function='0x3'/></source>
      <teaming type='transient' persistent='ua-net1-backup'/>
      <alias name='ua-net1-vf'/>
    </interface>
  </devices>"""


# A teaming pair of emulated NICs whose second one is the primary by a <qemu:override> (the lab's stand-in).
STANDIN = """<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>fo1</name>
  <devices>
    <interface type='network'>
      <mac address='52:54:00:76:6c:0a'/><source network='lab'/><model type='virtio'/>
      <teaming type='persistent'/><alias name='ua-fo-backup'/>
    </interface>
%s  </devices>
  <qemu:override>
    <qemu:device alias='ua-fo-vf'>
      <qemu:frontend><qemu:property name='failover_pair_id' type='string' value='ua-fo-backup'/></qemu:frontend>
    </qemu:device>
  </qemu:override>
</domain>"""
STANDIN_VF = """    <interface type='network'>
      <mac address='52:54:00:76:6c:0a'/><source network='lab'/><model type='vmxnet3'/><alias name='ua-fo-vf'/>
    </interface>
"""


class HibernateDomain(FakeDomain):
    """A domain with libvirt's managed save and a guest agent that runs the hook runner from a script."""

    def __init__(self, xml: str, state: t.Tuple[int, int] = RUNNING, persistent: bool = True, image: bool = False) -> None:
        super().__init__(xml, state, persistent)
        self.image = image
        self.saved_paused = False
        # The agent: None answers, a libvirtError is raised for every command.
        self.agent_error: t.Optional[libvirt.libvirtError] = None
        # The runner: None when not installed, else its exit ({"exitcode": N} or {"signal": N}) and stdout.
        self.runner: t.Optional[t.Dict[str, t.Any]] = {"exitcode": 0}
        self.runner_out = b""
        # What managedSave does: "save" (as libvirt), "no_image" (claims success, leaves no image).
        self.save_behaviour = "save"
        self.save_leaves_paused = False

    def connect(self) -> t.Any:
        class Conn:
            def getURI(self) -> str:  # noqa: N802 (libvirt's name)
                return "qemu+tcp://hv1.example.com/system"

        return Conn()

    def hasManagedSaveImage(self, flags: int = 0) -> int:  # noqa: N802 (libvirt's name)
        self._check()
        return int(self.image)

    def managedSave(self, flags: int = 0) -> int:  # noqa: N802 (libvirt's name)
        self._check()
        self.calls.append(("managedSave",))
        if "managedSave" in self.errors:
            if self.save_leaves_paused:
                self._state = (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_SAVE)
            raise self.errors["managedSave"]
        if self._state[0] not in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED):
            raise NOT_RUNNING
        self.saved_paused = self._state[0] == libvirt.VIR_DOMAIN_PAUSED
        self._state = SAVED
        self.image = self.save_behaviour == "save"
        return 0

    def create(self) -> int:
        if not self.image:
            return super().create()
        self._check()
        self.calls.append(("restore",))
        self.image = False
        self._state = PAUSED if self.saved_paused else (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_RESTORED)
        return 0

    def agent(self, payload: str) -> str:
        command = json.loads(payload)
        if self._state[0] != libvirt.VIR_DOMAIN_RUNNING:
            raise NOT_RUNNING
        if self.agent_error is not None:
            raise self.agent_error
        if command["execute"] == "guest-ping":
            return json.dumps({"return": {}})
        if command["execute"] == "guest-exec":
            if self.runner is None:
                raise NO_RUNNER
            self.calls.append(("hooks",) + tuple(command["arguments"]["arg"]))
            return json.dumps({"return": {"pid": 77}})
        reply = dict(self.runner or {}, exited=True)
        if self.runner_out:
            reply["out-data"] = base64.b64encode(self.runner_out).decode()
        return json.dumps({"return": reply})


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Module warnings are kept per process, and go to the result only in target mode: give every test its own."""
    if hasattr(module_warnings, "_global_warnings"):
        monkeypatch.setattr(module_warnings, "_global_warnings", {})
    monkeypatch.setattr(module_utils_internal, "is_controller", False)


def warning_texts(result: t.Mapping[str, t.Any]) -> t.List[str]:
    return [item["event"]["msg"] if isinstance(item, dict) else str(item) for item in result.get("warnings", [])]


def run_module(args: t.Dict[str, t.Any], capsys: pytest.CaptureFixture[str]) -> t.Dict[str, t.Any]:
    with patch_module_args(args), pytest.raises(SystemExit) as exited:
        vm_hibernate.main()
    result = t.cast(t.Dict[str, t.Any], json.loads(capsys.readouterr().out))
    assert (exited.value.code == 0) is not result.get("failed", False)
    return result


@pytest.fixture
def host(sample: Sample, monkeypatch: pytest.MonkeyPatch) -> t.Callable[..., HibernateDomain]:
    """``host(state=..., ...)`` puts one VM (``probe-vm``) on a fake host that ``libvirt.openAuth`` hands out."""

    def make(xml: t.Optional[str] = None, **kwargs: t.Any) -> HibernateDomain:
        dom = HibernateDomain(xml or sample("domain-running.xml"), **kwargs)
        conn = FakeConnection(sample("capabilities-qemu.xml"), domains=[dom])
        monkeypatch.setattr(libvirt, "openAuth", lambda uri, auth, flags: conn)
        return dom

    class FakeLibvirtQemu:
        @staticmethod
        def qemuAgentCommand(dom: HibernateDomain, payload: str, timeout: int, flags: int) -> str:  # noqa: N802 (libvirt's name)
            return dom.agent(payload)

    monkeypatch.setattr(guest_agent, "libvirt_qemu", FakeLibvirtQemu)
    return make


def runner_summary(event: str, failed: t.Sequence[str] = ()) -> bytes:
    hooks = [{"name": name, "status": 1, "signal": None, "timed_out": False, "duration_s": 0.1, "output": "no"} for name in failed]
    return (json.dumps({"event": event, "hooks": hooks, "failed": len(hooks), "refused": None}) + "\n").encode()


# -- what to do -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wanted", "state", "image", "expected"),
    [
        ("hibernated", "running", False, "save"),
        ("hibernated", "paused", False, "save"),
        ("hibernated", "shut off", True, "none"),
        ("running", "running", False, "none"),
        ("running", "paused", False, "resume"),
        ("running", "shut off", True, "restore"),
    ],
)
def test_decide(wanted: str, state: str, image: bool, expected: str) -> None:
    assert decide(wanted, state, image, True, []) == expected


@pytest.mark.parametrize(
    ("wanted", "state", "image", "persistent", "primaries", "message"),
    [
        ("hibernated", "shut off", False, True, [], "is shut off and has no saved image; start it first"),
        ("hibernated", "running", False, False, [], "is transient"),
        ("hibernated", "running", False, True, ["ua-net1-vf"], "SR-IOV failover primary device(s) ua-net1-vf"),
        ("hibernated", "pmsuspended", False, True, [], "is pmsuspended: only a running or paused VM"),
        ("hibernated", "crashed", False, True, [], "is crashed"),
        # Not hibernated here (shut down, hibernated elsewhere, a stopped copy): never booted.
        ("running", "shut off", False, True, [], "VM 'vm1' is shut off and has no hibernation image on host hv1 (qemu:///system)"),
        ("running", "shut off", False, False, [], "nothing was changed. To boot it deliberately, start it (virsh start vm1)."),
        ("running", "pmsuspended", False, True, [], "is pmsuspended: it cannot be started or resumed"),
        ("running", "in shutdown", False, True, [], "is in shutdown"),
    ],
)
def test_decide_refuses(wanted: str, state: str, image: bool, persistent: bool, primaries: t.List[str], message: str) -> None:
    with pytest.raises(HibernationRefused, match=re.escape(message)):
        decide(wanted, state, image, persistent, primaries, "vm1", "hv1 (qemu:///system)")


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        (STANDIN % STANDIN_VF, ["ua-fo-vf"]),
        # Detached: the override still names it, but no device has that alias any more.
        (STANDIN % "", []),
        ("<domain><name>v</name><devices>%s</devices></domain>" % PRIMARY.replace("</devices>", ""), ["ua-net1-vf"]),
        ("<domain><name>v</name><devices/></domain>", []),
    ],
    ids=["override, plugged in", "override, detached", "transient teaming hostdev", "none"],
)
def test_plugged_primaries(xml: str, expected: t.List[str]) -> None:
    assert hibernation.plugged_primaries(xml) == expected


# -- state: hibernated ----------------------------------------------------------------------------


def test_hibernate_runs_the_hooks_then_saves_and_verifies(host: t.Callable[..., HibernateDomain], capsys: pytest.CaptureFixture[str]) -> None:
    dom = host()
    dom.runner_out = runner_summary("before_hibernation")
    result = run_module({"name": "probe-vm"}, capsys)
    assert result["changed"] is True and "failed" not in result
    assert dom.calls == [("hooks", "before_hibernation"), ("managedSave",)]
    assert (result["operation"], result["state"], result["saved_image"], result["restored"]) == ("save", "shut off", True, False)
    assert result["uuid"] == "c37d14c9-efdf-4661-a34f-1a93303f980d"
    assert [event["event"] for event in result["events"]] == ["before_hibernation", "saved", "verified"]
    assert result["events"][0]["outcome"] == "ok" and result["events"][0]["exit_code"] == 0
    assert all(event["at_s"] >= 0 for event in result["events"]) and "duration_s" in result["events"][1]
    assert result["diff"] == {"before": {"state": "running", "has_saved_image": False}, "after": {"state": "shut off", "has_saved_image": True}}
    assert warning_texts(result) == []


def test_hibernate_check_mode_touches_nothing(host: t.Callable[..., HibernateDomain], capsys: pytest.CaptureFixture[str]) -> None:
    dom = host()
    result = run_module({"name": "probe-vm", "_ansible_check_mode": True, "_ansible_diff": True}, capsys)
    assert result["changed"] is True and result["operation"] == "save"
    assert dom.calls == [], "no hook run and no save in check mode"
    assert result["state"] == "running" and result["saved_image"] is False and result["events"] == []
    assert result["diff"]["after"] == {"state": "shut off", "has_saved_image": True}


def test_hibernated_vm_is_left_alone(host: t.Callable[..., HibernateDomain], capsys: pytest.CaptureFixture[str]) -> None:
    dom = host(state=SAVED, image=True)
    for check_mode in (False, True):
        result = run_module({"name": "probe-vm", "_ansible_check_mode": check_mode}, capsys)
        assert result["changed"] is False and result["operation"] == "none"
        assert result["state"] == "shut off" and result["saved_image"] is True
    assert dom.calls == []


def test_missing_runner_is_a_warning_and_hibernation_goes_on(host: t.Callable[..., HibernateDomain], capsys: pytest.CaptureFixture[str]) -> None:
    dom = host()
    dom.runner = None
    result = run_module({"name": "probe-vm", "guest_hook_failure": "abort"}, capsys)
    assert result["changed"] is True and result["state"] == "shut off"
    assert result["events"][0]["outcome"] == "no_runner"
    (warning,) = warning_texts(result)
    assert "before_hibernation hooks of VM 'probe-vm': no_runner" in warning and "were not run; going on" in warning


def test_no_agent_is_a_warning_and_hibernation_goes_on(host: t.Callable[..., HibernateDomain], capsys: pytest.CaptureFixture[str]) -> None:
    dom = host()
    dom.agent_error = NOT_CONFIGURED
    result = run_module({"name": "probe-vm", "guest_hook_failure": "abort"}, capsys)
    assert result["changed"] is True and result["state"] == "shut off"
    assert result["events"][0]["outcome"] == "no_agent"
    assert "not configured" in warning_texts(result)[0]


def test_failed_hook_with_abort_leaves_the_vm_running(host: t.Callable[..., HibernateDomain], capsys: pytest.CaptureFixture[str]) -> None:
    dom = host()
    dom.runner = {"exitcode": 1}
    dom.runner_out = runner_summary("before_hibernation", failed=["20-stop-app"])
    result = run_module({"name": "probe-vm", "guest_hook_failure": "abort"}, capsys)
    assert result["failed"] is True
    assert dom.calls == [("hooks", "before_hibernation")], "no save after an aborting hook"
    assert "Not hibernated" in result["msg"] and "20-stop-app" in result["msg"] and "guest_hook_failure=abort" in result["msg"]
    assert "libvirt now shows VM 'probe-vm' running without a saved image" in result["msg"]
    assert result["observed"]["state"] == "running" and result["hook_outcome"] == "failed"
    assert result["events"][0]["failed"] == 1 and result["events"][0]["failed_hooks"] == ["20-stop-app"]


def test_failed_hook_with_warn_hibernates_anyway(host: t.Callable[..., HibernateDomain], capsys: pytest.CaptureFixture[str]) -> None:
    dom = host()
    dom.runner = {"exitcode": 1}
    dom.runner_out = runner_summary("before_hibernation", failed=["20-stop-app"])
    result = run_module({"name": "probe-vm"}, capsys)
    assert result["changed"] is True and result["state"] == "shut off"
    assert "hibernating anyway (guest_hook_failure=warn)" in warning_texts(result)[0]


def test_guest_hooks_false_never_asks_the_agent(host: t.Callable[..., HibernateDomain], capsys: pytest.CaptureFixture[str]) -> None:
    dom = host()
    dom.agent_error = AssertionError("the agent must not be asked")  # type: ignore[assignment]
    result = run_module({"name": "probe-vm", "guest_hooks": False}, capsys)
    assert result["changed"] is True and dom.calls == [("managedSave",)]
    assert [event["event"] for event in result["events"]] == ["saved", "verified"]


def test_paused_vm_hibernates_and_comes_back_running(host: t.Callable[..., HibernateDomain], capsys: pytest.CaptureFixture[str]) -> None:
    dom = host(state=PAUSED)
    saved = run_module({"name": "probe-vm"}, capsys)
    assert saved["changed"] is True and saved["state"] == "shut off"
    assert saved["events"][0] == dict(saved["events"][0], event="before_hibernation", outcome="no_agent")
    assert "paused" in warning_texts(saved)[0]
    restored = run_module({"name": "probe-vm", "state": "running"}, capsys)
    assert restored["changed"] is True and restored["restored"] is True and restored["state"] == "running"
    assert [event["event"] for event in restored["events"]] == ["restored", "resumed", "after_hibernation", "verified"]
    assert dom.calls[-3:] == [("restore",), ("resume",), ("hooks", "after_hibernation")]


@pytest.mark.parametrize("check_mode", [False, True])
def test_transient_vm_is_refused(host: t.Callable[..., HibernateDomain], capsys: pytest.CaptureFixture[str], check_mode: bool) -> None:
    dom = host(persistent=False)
    result = run_module({"name": "probe-vm", "_ansible_check_mode": check_mode}, capsys)
    assert result["failed"] is True and "is transient" in result["msg"] and "keeps running" in result["msg"]
    assert dom.calls == []


def test_shut_off_vm_without_image_is_refused(host: t.Callable[..., HibernateDomain], capsys: pytest.CaptureFixture[str]) -> None:
    dom = host(state=SHUT_OFF)
    result = run_module({"name": "probe-vm"}, capsys)
    assert result["failed"] is True
    assert result["msg"] == "VM 'probe-vm' is shut off and has no saved image; start it first."
    assert dom.calls == []


@pytest.mark.parametrize("check_mode", [False, True])
def test_failover_primary_is_refused_by_name(
    host: t.Callable[..., HibernateDomain], sample: Sample, capsys: pytest.CaptureFixture[str], check_mode: bool
) -> None:
    dom = host(xml=sample("domain-running.xml").replace("</devices>", PRIMARY))
    result = run_module({"name": "probe-vm", "_ansible_check_mode": check_mode}, capsys)
    assert result["failed"] is True
    assert "SR-IOV failover primary device(s) ua-net1-vf" in result["msg"] and "pauses the vCPUs" in result["msg"]
    assert dom.calls == [], "not even the hooks ran"


@pytest.mark.parametrize("leaves_paused", [False, True], ids=["left running", "left paused, resumed"])
def test_libvirt_refusing_the_save_fails_with_its_reason(
    host: t.Callable[..., HibernateDomain], capsys: pytest.CaptureFixture[str], leaves_paused: bool
) -> None:
    dom = host()
    dom.errors["managedSave"] = libvirt_error(libvirt.VIR_ERR_OPERATION_FAILED, "operation failed: migration out job: unexpectedly failed")
    dom.save_leaves_paused = leaves_paused
    result = run_module({"name": "probe-vm", "guest_hooks": False}, capsys)
    assert result["failed"] is True
    assert result["msg"].startswith("Not hibernated: Cannot save the VM's memory and stop it (managed save) for VM 'probe-vm'")
    assert "unexpectedly failed" in result["msg"] and "libvirt now shows VM 'probe-vm' running without a saved image" in result["msg"]
    assert result["libvirt_error_code"] == libvirt.VIR_ERR_OPERATION_FAILED
    assert result["observed"]["state"] == "running"
    assert [event["event"] for event in result["events"]] == ["save_failed"] + (["resumed"] if leaves_paused else [])


def test_a_save_that_leaves_no_image_is_not_reported_done(host: t.Callable[..., HibernateDomain], capsys: pytest.CaptureFixture[str]) -> None:
    dom = host()
    dom.save_behaviour = "no_image"
    result = run_module({"name": "probe-vm", "guest_hooks": False}, capsys)
    assert result["failed"] is True
    assert "is not shut off with a saved image after the run" in result["msg"]
    assert result["observed"] == {"state": "shut off", "state_reason": "saved", "persistent": True, "has_saved_image": False}


# -- state: running -------------------------------------------------------------------------------


def test_restore_runs_the_after_hooks_and_is_idempotent(host: t.Callable[..., HibernateDomain], capsys: pytest.CaptureFixture[str]) -> None:
    dom = host(state=SAVED, image=True)
    checked = run_module({"name": "probe-vm", "state": "running", "_ansible_check_mode": True}, capsys)
    assert checked["changed"] is True and checked["restored"] is True and dom.calls == []
    assert checked["diff"]["after"] == {"state": "running", "has_saved_image": False}
    result = run_module({"name": "probe-vm", "state": "running"}, capsys)
    assert result["changed"] is True and result["restored"] is True
    assert (result["state"], result["saved_image"]) == ("running", False)
    assert dom.calls == [("restore",), ("hooks", "after_hibernation")]
    assert [event["event"] for event in result["events"]] == ["restored", "after_hibernation", "verified"]
    again = run_module({"name": "probe-vm", "state": "running"}, capsys)
    assert again["changed"] is False and again["operation"] == "none" and again["restored"] is False
    assert len(dom.calls) == 2


def test_after_hook_failure_is_only_a_warning(host: t.Callable[..., HibernateDomain], capsys: pytest.CaptureFixture[str]) -> None:
    dom = host(state=SAVED, image=True)
    dom.runner = {"exitcode": 1}
    dom.runner_out = runner_summary("after_hibernation", failed=["50-reregister"])
    result = run_module({"name": "probe-vm", "state": "running", "guest_hook_failure": "abort"}, capsys)
    assert result["changed"] is True and result["state"] == "running"
    assert "50-reregister" in warning_texts(result)[0] and "restored and keeps running" in warning_texts(result)[0]


@pytest.mark.parametrize("check_mode", [True, False])
def test_shut_off_vm_without_image_is_refused_not_booted(host: t.Callable[..., HibernateDomain], capsys: pytest.CaptureFixture[str], check_mode: bool) -> None:
    dom = host(state=SHUT_OFF)
    result = run_module({"name": "probe-vm", "state": "running", "_ansible_check_mode": check_mode}, capsys)
    assert result["failed"] is True and result.get("changed") is not True, result
    assert result["msg"].startswith("VM 'probe-vm' is shut off and has no hibernation image on host ")
    assert "virsh start probe-vm" in result["msg"]
    assert dom.calls == [] and dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF, "nothing was started"


def test_paused_vm_is_resumed(host: t.Callable[..., HibernateDomain], capsys: pytest.CaptureFixture[str]) -> None:
    dom = host(state=PAUSED)
    result = run_module({"name": "probe-vm", "state": "running"}, capsys)
    assert result["changed"] is True and result["operation"] == "resume" and result["state"] == "running"
    assert dom.calls == [("resume",)]


def test_restore_failure_says_the_image_is_kept(host: t.Callable[..., HibernateDomain], capsys: pytest.CaptureFixture[str]) -> None:
    dom = host(state=SAVED, image=True)
    unreadable = libvirt_error(libvirt.VIR_ERR_OPERATION_FAILED, "operation failed: cannot read the save image")

    def failing_create() -> int:
        raise unreadable

    dom.create = failing_create  # type: ignore[method-assign]
    result = run_module({"name": "probe-vm", "state": "running"}, capsys)
    assert result["failed"] is True and result["msg"].startswith("Not restored:")
    assert "cannot read the save image" in result["msg"] and "shut off with a saved image" in result["msg"]


# -- input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [0, -5, 3601])
def test_bad_hook_timeout_is_refused_before_connecting(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, timeout: float) -> None:
    monkeypatch.setattr(libvirt, "openAuth", lambda *args: pytest.fail("connected"))
    result = run_module({"name": "probe-vm", "guest_hook_timeout": timeout}, capsys)
    assert result["failed"] is True and result["msg"] == "guest_hook_timeout must be more than 0 and at most 3600, got %s" % timeout


def test_vm_found_by_uuid_and_missing_vm_fails(host: t.Callable[..., HibernateDomain], capsys: pytest.CaptureFixture[str]) -> None:
    host(state=SAVED, image=True)
    found = run_module({"uuid": "c37d14c9-efdf-4661-a34f-1a93303f980d"}, capsys)
    assert found["changed"] is False and found["vm"] == "probe-vm"
    missing = run_module({"name": "nope"}, capsys)
    assert missing["failed"] is True and "VM 'nope' does not exist" in missing["msg"]


def test_default_hook_timeout_is_the_documented_one() -> None:
    assert vm_hibernate.argument_spec()["guest_hook_timeout"]["default"] == options.RUN["guest_hook_timeout"].default == 60


@pytest.mark.parametrize("check_mode", [False, True])
def test_a_vm_busy_with_another_job_is_left_alone(host: t.Callable[..., HibernateDomain], capsys: pytest.CaptureFixture[str], check_mode: bool) -> None:
    # Two operators at once: a save libvirt is running pauses the VM; the other's restore must not resume it.
    dom = host(state=PAUSED)
    dom.job = {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "operation": libvirt.VIR_DOMAIN_JOB_OPERATION_SAVE, "time_elapsed": 3000}
    result = run_module({"name": "probe-vm", "state": "running", "_ansible_check_mode": check_mode}, capsys)
    assert result["failed"] is True and "a libvirt job runs on it (save, running for 3 s)" in result["msg"], result
    assert "Nothing was changed." in result["msg"] and dom.calls == []
