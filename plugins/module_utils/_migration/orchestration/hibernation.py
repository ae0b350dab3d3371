# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""``vm_hibernate``: save a VM's memory to disk on its host and stop it, or bring it back.

Hibernation is libvirt's managed save: the VM's memory goes to an image on its host
(``/var/lib/libvirt/qemu/save/NAME.save``) and the VM is shut off; the next start restores the image
(and deletes it), so the guest continues where it was. Before saving, the guest's
``before_hibernation`` hooks run through its agent; after a restore, its ``after_hibernation`` hooks
(``guest_agent.py``).

:func:`decide` chooses what to do from what libvirt shows, and refuses what cannot be done before
anything changes; :class:`Hibernation` reads the VM, acts, and verifies through libvirt afterwards.
"""

from __future__ import annotations

import time
import typing as t
import xml.etree.ElementTree as ET

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import domain as domxml
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import failover
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io import guest_agent
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.connection import libvirt_connection
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import MigrationError, translate_libvirt_error
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.requests import HibernateRequest

# The words of the options state and guest_hook_failure (options.VM_HIBERNATE, options.RUN) the run acts on.
HIBERNATED = "hibernated"
ABORT = "abort"

# What a run does.
NONE = "none"  # already as asked
SAVE = "save"  # before_hibernation hooks, then managed save
RESTORE = "restore"  # start from the saved image, then after_hibernation hooks
RESUME = "resume"  # a paused VM
ACTION_WORDS = {SAVE: "hibernate it", RESTORE: "restore it from its hibernation image", RESUME: "resume it"}

# libvirt's words for the states (domain.STATE_NAMES).
_RUNNING = "running"
_PAUSED = "paused"
_SHUT_OFF = "shut off"


class HibernationRefused(MigrationError):
    """The VM cannot be brought to the asked state; nothing was changed."""

    meaning = "the VM cannot be hibernated or restored as asked"


def decide(
    wanted: str, state: str, has_image: bool, persistent: bool, primaries: t.Sequence[str], vm: str = "the VM", host: str = "this host"
) -> str:
    """What to do to bring a VM in libvirt state ``state`` to ``wanted``; :class:`HibernationRefused` when it cannot be.

    ``primaries`` are the SR-IOV failover primaries plugged into the VM (``failover.failover_primaries``).
    ``running`` brings back only what hibernation stopped: a shut-off VM without a managed save image
    on this host was stopped by something else (or hibernated on another host, or shut down for a
    maintenance), and booting it is refused.
    """
    if wanted == HIBERNATED:
        if state == _SHUT_OFF:
            if has_image:
                return NONE
            raise HibernationRefused("VM '%s' is shut off and has no saved image; start it first." % vm)
        if state not in (_RUNNING, _PAUSED):
            raise HibernationRefused("VM '%s' is %s: only a running or paused VM can be hibernated." % (vm, state))
        if not persistent:
            raise HibernationRefused(
                "VM '%s' is transient (not persistently defined): libvirt keeps a saved image only for a persistent VM. "
                "Define it first. The VM keeps running." % vm
            )
        if primaries:
            raise HibernationRefused(
                "VM '%s' has SR-IOV failover primary device(s) %s: libvirt pauses the vCPUs before saving, so the guest "
                "cannot release them and the save would hang. Detach them first; the restored VM then runs on its "
                "virtio standby. The VM keeps running." % (vm, ", ".join(primaries))
            )
        return SAVE
    if state == _RUNNING:
        return NONE
    if state == _PAUSED:
        return RESUME
    if state == _SHUT_OFF and has_image:
        return RESTORE
    if state == _SHUT_OFF:
        raise HibernationRefused(
            "VM '%s' is shut off and has no hibernation image on host %s: state=running only restores a VM hibernated "
            "there, and nothing was changed. To boot it deliberately, start it (virsh start %s)." % (vm, host, vm)
        )
    raise HibernationRefused("VM '%s' is %s: it cannot be started or resumed from that state." % (vm, state))


def plugged_primaries(domain_xml: str) -> t.List[str]:
    """The failover primaries of a live domain XML that are plugged in now.

    A ``<qemu:override>`` keeps naming a primary's alias after the device has been detached; such
    a primary is gone, and no longer stands in the way of a save.
    """
    root = ET.fromstring(domain_xml)
    devices = root.find("devices")
    present = {alias.get("name") for alias in devices.iter("alias")} if devices is not None else set()
    overridden = {device.get("alias") for device in root.iter("{%s}device" % failover.QEMU_NS)}
    return [primary for primary in failover.failover_primaries(domain_xml) if primary in present or primary not in overridden]


def _seconds(value: float) -> str:
    return ("%.1f" % value).rstrip("0").rstrip(".")


class Hibernation:
    """One ``vm_hibernate`` run: :meth:`apply` returns the module result."""

    def __init__(self, request: HibernateRequest) -> None:
        self.request = request
        self.events: t.List[t.Dict[str, t.Any]] = []
        self.warnings: t.List[str] = []
        self.name = request.vm
        self._began = time.monotonic()

    # -- libvirt ------------------------------------------------------------------------------
    def _call(self, action: str, func: t.Callable[..., t.Any], *args: t.Any) -> t.Any:
        try:
            return func(*args)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            if getattr(exc, "get_error_code", None) is None:
                raise
            raise translate_libvirt_error(exc, action, vm=self.name, uri=self.request.uri) from exc

    def _observe(self, dom: t.Any) -> t.Dict[str, t.Any]:
        """What libvirt shows of the VM now."""
        state, reason = self._call("read the VM's state", dom.state)[:2]
        return {
            "state": domxml.state_name(state),
            "state_reason": domxml.state_reason(state, reason),
            "persistent": bool(self._call("read the VM's state", dom.isPersistent)),
            "has_saved_image": bool(self._call("read whether the VM has a saved image", dom.hasManagedSaveImage, 0)),
        }

    def _event(self, event: str, **details: t.Any) -> t.Dict[str, t.Any]:
        entry = {"at_s": round(time.monotonic() - self._began, 3), "event": event}
        entry.update(details)
        self.events.append(entry)
        return entry

    def _timed(self, event: str, action: str, func: t.Callable[..., t.Any], *args: t.Any) -> None:
        began = time.monotonic()
        self._call(action, func, *args)
        self._event(event, duration_s=round(time.monotonic() - began, 3))

    def _fail(self, msg: str, dom: t.Any, cls: t.Type[MigrationError] = MigrationError, **details: t.Any) -> MigrationError:
        """An error that also says what libvirt shows of the VM now, and carries the events so far."""
        observed: t.Optional[t.Dict[str, t.Any]] = None
        try:
            now = self._observe(dom)
        except MigrationError as exc:
            msg += " Its state could not be read afterwards: %s" % exc.msg
        else:
            observed = now
            msg += " libvirt now shows VM '%s' %s%s." % (
                self.name,
                now["state"],
                " with a saved image" if now["has_saved_image"] else " without a saved image",
            )
        return cls(msg, vm=self.name, uri=self.request.uri, observed=observed, events=self.events, **details)

    # -- hooks --------------------------------------------------------------------------------
    def _hooks(self, dom: t.Any, event: str, paused: bool = False) -> t.Dict[str, t.Any]:
        if paused:
            entry = {"event": event, "outcome": guest_agent.NO_AGENT, "message": "the VM is paused: its guest agent cannot answer", "duration_s": 0.0}
        else:
            entry = guest_agent.run_guest_hooks(dom, event, self.request.guest_hook_timeout)
        entry = dict({"at_s": round(time.monotonic() - self._began, 3)}, **entry)
        self.events.append(entry)
        return entry

    def _judge(self, entry: t.Dict[str, t.Any], dom: t.Any, can_abort: bool) -> None:
        """Warn about hooks that did not all succeed; with ``abort``, a failure before the save stops the run."""
        outcome = entry["outcome"]
        if outcome == guest_agent.OK:
            return
        what = "%s hooks of VM '%s': %s (%s)" % (entry["event"], self.name, outcome, entry.get("message", ""))
        if outcome not in guest_agent.HOOK_FAILURES:
            self.warnings.append("The %s were not run; going on." % what)
        elif not can_abort:
            self.warnings.append("The %s; the VM has been restored and keeps running." % what)
        elif self.request.guest_hook_failure == ABORT:
            raise self._fail("Not hibernated: the %s; guest_hook_failure=abort, so nothing was saved." % what, dom, hook_outcome=outcome)
        else:
            self.warnings.append("The %s; hibernating anyway (guest_hook_failure=warn)." % what)

    # -- the run ------------------------------------------------------------------------------
    def apply(self, check_mode: bool) -> t.Dict[str, t.Any]:
        req = self.request
        with libvirt_connection(req.uri, req.username, req.password) as conn:
            dom = domxml.lookup_domain(conn, req.vm)
            self.name = self._call("read the VM's name", dom.name)
            host = "%s (%s)" % (self._call("read the host name", conn.getHostname), req.uri)
            uuid = self._call("read the VM's UUID", dom.UUIDString)
            seen = domxml.observe(dom, req.uri)
            before = self._observe(dom)
            primaries: t.List[str] = []
            if req.state == HIBERNATED and before["state"] in (_RUNNING, _PAUSED):
                primaries = plugged_primaries(self._call("read the domain XML", dom.XMLDesc, 0))
            action = decide(req.state, before["state"], before["has_saved_image"], before["persistent"], primaries, self.name, host)
            after = before
            if action != NONE:
                # Another operator's job on the VM (a save, a restore, a migration) holds it: nothing is done
                # beside it (a VM paused by a running save must not be resumed, for one).
                domxml.recheck(conn, seen, ACTION_WORDS[action], req.uri)
            if action != NONE and not check_mode:
                steps = {SAVE: self._save, RESTORE: self._restore, RESUME: self._resume}
                steps[action](dom, before)
                after = self._observe(dom)
                self._verify(dom, after)
        predicted = _predicted(action, before)
        return {
            "changed": action != NONE,
            "vm": self.name,
            "uuid": uuid,
            "operation": action,
            "state": after["state"],
            "saved_image": after["has_saved_image"],
            "restored": action == RESTORE,
            "events": self.events,
            "warnings": self.warnings,
            "diff": {
                "before": {"state": before["state"], "has_saved_image": before["has_saved_image"]},
                "after": predicted if check_mode else {"state": after["state"], "has_saved_image": after["has_saved_image"]},
            },
        }

    def _verify(self, dom: t.Any, after: t.Mapping[str, t.Any]) -> None:
        if self.request.state == HIBERNATED:
            done = after["state"] == _SHUT_OFF and after["has_saved_image"]
            expected = "shut off with a saved image"
        else:
            done = after["state"] == _RUNNING and not after["has_saved_image"]
            expected = "running without a saved image"
        if not done:
            raise self._fail("VM '%s' is not %s after the run, as libvirt shows it." % (self.name, expected), dom)
        self._event("verified", state=after["state"], has_saved_image=after["has_saved_image"])

    def _save(self, dom: t.Any, before: t.Mapping[str, t.Any]) -> None:
        req = self.request
        if req.guest_hooks:
            self._judge(self._hooks(dom, "before_hibernation", paused=before["state"] == _PAUSED), dom, can_abort=True)
        began = time.monotonic()
        try:
            self._call("save the VM's memory and stop it (managed save)", dom.managedSave, 0)
        except MigrationError as exc:
            self._event("save_failed", duration_s=round(time.monotonic() - began, 3), reason=exc.msg)
            self._back_to(dom, before)
            raise self._fail("Not hibernated: %s" % exc.msg, dom, type(exc), **_libvirt_details(exc)) from exc
        self._event("saved", duration_s=round(time.monotonic() - began, 3))

    def _back_to(self, dom: t.Any, before: t.Mapping[str, t.Any]) -> None:
        """After a failed save: a VM that was running and is left paused is resumed."""
        try:
            now = self._observe(dom)
            if before["state"] == _RUNNING and now["state"] == _PAUSED:
                self._timed("resumed", "resume the VM after the failed save", dom.resume)
        except MigrationError as exc:
            self._event("resume_failed", reason=exc.msg)

    def _restore(self, dom: t.Any, before: t.Mapping[str, t.Any]) -> None:
        try:
            self._timed("restored", "restore the VM from its saved image", dom.create)
        except MigrationError as exc:
            raise self._fail("Not restored: %s" % exc.msg, dom, type(exc), **_libvirt_details(exc)) from exc
        # An image saved from a paused VM restores paused.
        if self._observe(dom)["state"] == _PAUSED:
            self._timed("resumed", "resume the restored VM", dom.resume)
        if self.request.guest_hooks:
            self._judge(self._hooks(dom, "after_hibernation"), dom, can_abort=False)

    def _resume(self, dom: t.Any, before: t.Mapping[str, t.Any]) -> None:
        try:
            self._timed("resumed", "resume the VM", dom.resume)
        except MigrationError as exc:
            raise self._fail("Not resumed: %s" % exc.msg, dom, type(exc), **_libvirt_details(exc)) from exc


def _libvirt_details(exc: MigrationError) -> t.Dict[str, t.Any]:
    return {key: value for key, value in exc.details.items() if key.startswith("libvirt_")}


def _predicted(action: str, before: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """The state and image an action leads to (for check mode's diff)."""
    if action == SAVE:
        return {"state": _SHUT_OFF, "has_saved_image": True}
    if action in (RESTORE, RESUME):
        return {"state": _RUNNING, "has_saved_image": False}
    return {"state": before["state"], "has_saved_image": before["has_saved_image"]}
