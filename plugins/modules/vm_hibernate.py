#!/usr/bin/python
# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_hibernate
short_description: Hibernate a VM (save its memory to disk on its host and stop it), or restore it
version_added: 0.2.0
description:
  - With O(state=hibernated), saves the memory of a running or paused VM to an image on its host
    and stops it (libvirt managed save). Its host keeps the image under
    C(/var/lib/libvirt/qemu/save/); nothing else keeps a copy.
  - Before saving, runs the guest's C(before_hibernation) hooks through the QEMU guest agent
    (O(guest_hooks)). The hooks are installed in the guest by the role C(virtops.migration.guest_hooks),
    which also installs the runner C(/usr/local/sbin/virtops-run-hooks) that runs them.
  - With O(state=running), restores a hibernated VM from its image, so that the guest continues where
    it was (libvirt deletes the image), then runs its C(after_hibernation) hooks once its agent answers.
    An image saved from a paused VM restores paused; the VM is then resumed.
  - O(state=running) also resumes a paused VM, and leaves a running VM as it is. It never boots a VM that
    is shut off without a managed save image on this host. Such a VM was not hibernated here (it was
    shut down, hibernated on another host, or is a stopped copy), and starting it could run a second
    copy of a guest that runs elsewhere. The task is refused and nothing changes; start such a VM
    deliberately (for example C(virsh start)).
  - Done means done in libvirt's view. After a save the VM must be shut off with a saved image; after a
    restore or resume it must be running without one. Otherwise the task fails with what libvirt
    shows.
  - Refused before anything changes, with the VM left as it was. A transient VM (libvirt keeps a
    managed save image only for a persistent VM). A shut-off VM without an image, for O(state=hibernated)
    ("start it first"), or for O(state=running) (it has no hibernation image here). A VM that is
    neither running, paused nor shut off (pmsuspended, crashed, shutting down). A VM with a libvirt job
    running (another operator's save, restore or migration). A VM with an SR-IOV
    failover primary plugged in. libvirt pauses the vCPUs before it saves, so the guest cannot release
    the device and the save would hang. Detach the primary first (for example
    C(virsh detach-device --live)); the restored VM then runs on its virtio standby until a cold boot.
  - When libvirt refuses or fails the save, the task fails with libvirt's reason and says in what state
    libvirt shows the VM afterwards. A VM that was running and is left paused by the failed save is
    resumed.
  - A hibernated VM must be restored on the host that has its image. Migrating it as if it were simply
    shut off would move its definition and leave the image behind on the old host.
author:
  - virtops.migration contributors (@virtops)
extends_documentation_fragment:
  - virtops.migration.connection
  - virtops.migration.vm
  - virtops.migration.attributes
  - virtops.migration.attributes.ACTIONGROUP_LIBVIRT
attributes:
  check_mode:
    support: full
    details:
      - Reads the VM, runs every check (refusals included) and reports what would be done (RV(operation)),
        without running hooks or changing the VM.
  diff_mode:
    support: full
    details:
      - The VM's state and whether it has a saved image, before and after.
  idempotent:
    support: full
    details:
      - A VM already hibernated (shut off with a saved image), or already running, reports no change.
options:
  state:
    description:
      - V(hibernated) saves the VM's memory to disk on its host and stops it.
      - V(running) restores a hibernated VM (shut off with a saved image on this host), or resumes a
        paused one. A VM shut off without a saved image is refused, not booted.
    type: str
    choices: [hibernated, running]
    default: hibernated
    version_added: 0.2.0
  guest_hooks:
    description:
      - Run the guest's hooks through its QEMU guest agent, C(before_hibernation) before a save and
        C(after_hibernation) after a restore.
      - A guest whose agent does not answer within 10 seconds, or that lacks the hook runner, gets a
        warning, and the VM is hibernated or restored anyway. So does a paused VM, whose agent cannot
        answer.
    type: bool
    default: true
    version_added: 0.2.0
  guest_hook_failure:
    description:
      - What a failure of the C(before_hibernation) hooks does. A failure is a hook that failed or
        timed out, the runner refusing to run, the runner not finishing within O(guest_hook_timeout),
        or the agent failing to run it.
      - V(warn) warns and hibernates the VM anyway, as RHV did.
      - V(abort) fails the task and leaves the VM running, nothing saved.
      - A failure of the C(after_hibernation) hooks is always a warning, because the VM has been restored
        already.
    type: str
    choices: [warn, abort]
    default: warn
    version_added: 0.2.0
  guest_hook_timeout:
    description:
      - Seconds the hook runner may take for one event, counted on the host. The guest agent itself
        has no timeout.
      - When the time has passed, the run no longer waits and counts the hooks as failed (see
        O(guest_hook_failure)). The runner may still be running in the guest; its own per-hook
        timeouts stop the hooks, so keep those shorter than this.
      - At most one hour.
    type: float
    default: 60
    version_added: 0.2.0
notes:
  - The task runs on the VM's host, or reaches it through O(uri).
  - The VM must be persistent, and the host needs room for the image under
    C(/var/lib/libvirt/qemu/save/), about the size of the memory the guest uses.
seealso:
  - module: virtops.migration.vm_migrate
  - name: libvirt managed save
    description: virDomainManagedSave in the libvirt API reference.
    link: https://libvirt.org/html/libvirt-libvirt-domain.html#virDomainManagedSave
"""

EXAMPLES = r"""
- name: Hibernate batch7 before patching its host's firmware (its hooks quiesce the application first)
  virtops.migration.vm_hibernate:
    name: batch7
    state: hibernated

- name: Hibernate db1 only if its hooks succeed
  virtops.migration.vm_hibernate:
    name: db1
    state: hibernated
    guest_hook_failure: abort
    guest_hook_timeout: 300

- name: Bring batch7 back where it was
  virtops.migration.vm_hibernate:
    name: batch7
    state: running
  register: restored

- name: Show how long the restore and the hooks took
  ansible.builtin.debug:
    msg: "{{ restored.events | map(attribute='event') | zip(restored.events | map(attribute='duration_s', default=None)) | list }}"

- name: Hibernate a VM named by UUID on another host, without hooks
  virtops.migration.vm_hibernate:
    uri: qemu+tls://hv2.example.com/system
    uuid: 6d3a57c2-1c41-4a4c-9a1b-2f1c3d8e9f00
    guest_hooks: false
"""

RETURN = r"""
vm:
  description: Name of the VM.
  returned: success
  type: str
  sample: batch7
uuid:
  description: UUID of the VM.
  returned: success
  type: str
  sample: 6d3a57c2-1c41-4a4c-9a1b-2f1c3d8e9f00
operation:
  description:
    - What the run did, or in check mode would do. V(save) (hooks, then managed save), V(restore) (start from
      the saved image, then hooks), V(resume), or V(none).
  returned: success
  type: str
  sample: save
state:
  description:
    - The VM's state after the run, as libvirt shows it (V(running), V(paused), V(shut off), ...).
    - In check mode, its state now; the diff shows the state it would have.
  returned: success
  type: str
  sample: shut off
saved_image:
  description: Whether libvirt has a managed save image of the VM after the run (in check mode, now).
  returned: success
  type: bool
  sample: true
restored:
  description: True when the VM was restored from its saved image (in check mode, would be).
  returned: success
  type: bool
  sample: false
events:
  description:
    - The steps of the run, in order. Each has C(event) and C(at_s), the seconds since the run began
      when the step ended.
    - V(before_hibernation) and V(after_hibernation) are the guest's hooks. They have C(outcome)
      (V(ok), V(failed), V(refused), V(timed_out), V(error), V(no_agent) or V(no_runner)), C(message) and
      C(duration_s), and, once the runner has run, C(exit_code), C(hooks) (each hook's C(name),
      C(status), C(signal), C(timed_out), C(duration_s) and C(output)), C(failed) (how many failed),
      C(failed_hooks) (their names), C(refused) (null, or why the runner refused), and the end of its
      standard error (C(stderr)).
    - V(saved), V(restored), V(resumed) have C(duration_s). V(save_failed) has C(reason).
      V(verified) has the C(state) and C(has_saved_image) libvirt showed afterwards.
    - Also returned on failure.
  returned: success, and on failure once a step ran
  type: list
  elements: dict
  sample:
    - at_s: 0.41
      event: before_hibernation
      outcome: ok
      message: every hook succeeded
      duration_s: 0.4
      exit_code: 0
      hooks: [{name: 10-flush, status: 0, signal: null, timed_out: false, duration_s: 0.31, output: ""}]
      failed: 0
      failed_hooks: []
      refused: null
    - {at_s: 2.73, event: saved, duration_s: 2.32}
    - {at_s: 2.75, event: verified, state: shut off, has_saved_image: true}
observed:
  description: What libvirt showed of the VM when the run failed (C(state), C(state_reason), C(persistent), C(has_saved_image)).
  returned: on failure, once the VM was found
  type: dict
  sample: {state: running, state_reason: unpaused, persistent: true, has_saved_image: false}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration import modulekit
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import options
from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration.hibernation import Hibernation
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.requests import hibernate_request


def argument_spec() -> dict:
    return options.module_spec("vm_hibernate")


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(),
        supports_check_mode=True,
        required_one_of=[("name", "uuid")],
        mutually_exclusive=[("name", "uuid")],
    )

    def work() -> dict:
        return Hibernation(hibernate_request(module.params)).apply(module.check_mode)

    modulekit.run(module, work)


if __name__ == "__main__":
    main()
