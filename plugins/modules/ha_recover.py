#!/usr/bin/python
# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: ha_recover
short_description: Restart the highly available VMs of a failed KVM/libvirt host on the other hosts, never twice
version_added: 0.2.0
description:
  - Checks every host of the cluster (O(hosts)) through libvirt and through a TCP connection to its SSH port.
    A host that answers neither is checked again, O(checks) times in all, O(check_interval) seconds apart;
    only then has it failed. A host that answers one of the two is not failed, and is listed in RV(unreachable).
  - Keeps the high-availability store on the cluster's shared storage (O(shared_storage)) up to date on every
    run, from every reachable host. It holds the definition of each highly available VM (setting
    C(high_availability), see M(virtops.migration.migration_policy)) and the host it last ran on, and the
    list of every host's VMs. The hosts' maintenance hook (role C(virtops.migration.maintenance_hook)) also
    writes a highly available VM's definition when it starts or arrives. Run this module often (an AWX
    schedule, a systemd timer) so that the store is current when a host fails.
  - Fences each failed host that has highly available VMs running nowhere else, before anything starts. Its
    C(fence_command) is run with C(-o off), then with C(-o status) until that exits 2 (powered off, the
    fence-agents convention) or O(fence_timeout) passes. Only a status that reads off confirms the fence.
    A fence that is not confirmed restarts nothing of that host.
  - A failed host without a fence command restarts nothing, unless O(without_fence=lease). Then its VMs
    restart relying on libvirt's disk leases, only when the failed host and the destination both use lockd
    on the shared lockspace (role C(virtops.migration.ha_locking)). libvirt then refuses the start while
    the old QEMU still holds the disks, and the result says so.
  - Restarts the highly available VMs of the failed hosts in priority order (high first), each on the
    host the collection's placement chooses (memory, networks, pinned hosts, affinity groups of
    O(affinity_groups)), leaving out hosts in maintenance. It defines the VM there, marks the failed host's copy as
    stale in the store, and starts it; a start libvirt refuses is undone. The other VMs of the failed host
    stay down and are listed in RV(left_down).
  - Removes, on a host that is back after a fence, the definitions of the VMs that were restarted elsewhere
    meanwhile, once each is found by UUID defined on another host. Until then that host is no destination,
    and its maintenance hook refuses to start those VMs.
  - Reports where libvirt shows each restarted VM running afterwards, and fails when a highly available VM
    of a failed host could not be restarted, saying why.
  - Runs on one machine that reaches every host's libvirt URI and SSH port and mounts the shared storage;
    the fence commands run there too. The role C(virtops.migration.ha_recover) chooses it.
author:
  - virtops.migration contributors (@virtops)
extends_documentation_fragment:
  - virtops.migration.attributes
attributes:
  check_mode:
    support: full
    details:
      - Checks the hosts, and returns the failed hosts, the plan of restarts and the stale definitions it
        would remove, without fencing, starting, removing or writing anything.
  diff_mode:
    support: none
  idempotent:
    support: full
    details:
      - A rerun restarts nothing that already runs, and fences no host again.
options:
  hosts:
    description:
      - Every host of the cluster, each a dictionary with C(name) (the inventory name, required), C(uri)
        (its libvirt URI as the machine running the module reaches it, required), C(ssh_host) and
        C(ssh_port) (default the name and 22), C(fence_command) (a list, the fence-agent style command
        that powers the host off, without its C(-o) action), C(maintenance) and C(memory_reserved_mib).
    type: list
    elements: dict
    required: true
  shared_storage:
    description:
      - The cluster's shared storage, a directory every host mounts at the same path, usually the inventory
        variable C(virtops_shared_storage). The store is its C(virtops-ha) directory.
    type: path
    required: true
  checks:
    description:
      - How many checks a host must fail, libvirt and SSH alike, before it counts as failed.
    type: int
    default: 3
  check_interval:
    description:
      - Seconds between two checks of a host that did not answer.
    type: float
    default: 5.0
  connect_timeout:
    description:
      - Seconds one check waits for libvirt, and for SSH.
    type: float
    default: 5.0
  without_fence:
    description:
      - What a failed host without a fence command allows. V(refuse) restarts nothing of it. V(lease)
        restarts its VMs relying on lockd's disk leases (see the description).
    type: str
    choices: [refuse, lease]
    default: refuse
  fence_timeout:
    description:
      - Seconds the fence command may take, and for the host's power state to read off.
    type: int
    default: 60
  reason:
    description:
      - Why the recovery runs.
    type: str
  requested_by:
    description:
      - Who asks.
    type: str
  username:
    description:
      - User name given when libvirt asks for one, on every host.
    type: str
  password:
    description:
      - Password given when libvirt asks for one, on every host.
    type: str
  cluster_policy:
    description:
      - Cluster-level migration settings, as for M(virtops.migration.vm_migrate); C(high_availability) and
        C(priority) here apply to every VM that does not set them itself.
    type: dict
    default: {}
  global_policy:
    description:
      - Global migration settings, below O(cluster_policy).
    type: dict
    default: {}
  memory_reserved_mib:
    description:
      - MiB each destination keeps back for itself, unless a host's C(memory_reserved_mib) says otherwise.
    type: int
    default: 256
  affinity_groups:
    description:
      - The cluster's affinity groups, as for M(virtops.migration.host_maintenance); a restart honours them
        as a migration does.
    type: list
    elements: dict
    default: []
notes:
  - The fence command must power the host off, not reboot it, and its C(-o status) must exit 0 when the host
    is on and 2 when it is off, as the fence agents (C(fence_ipmilan), C(fence_redfish), C(fence_apc), ...) do.
  - A host that comes back after a fence must not run the VMs restarted elsewhere. The maintenance hook refuses
    to start them, and the next run of this module removes their definitions there. Run it (or
    C(playbooks/ha_recover.yml)) before activating the host again.
seealso:
  - module: virtops.migration.migration_policy
  - module: virtops.migration.host_maintenance
"""

EXAMPLES = r"""
- name: Restart the highly available VMs of failed hosts (from a surviving host)
  virtops.migration.ha_recover:
    hosts:
      - name: kvm1
        uri: qemu+ssh://kvm1/system
        fence_command: [fence_ipmilan, --ip, 10.0.0.11, --username, admin, --password-script, /usr/local/bin/ipmi-pass]
      - name: kvm2
        uri: qemu+ssh://kvm2/system
        fence_command: [fence_ipmilan, --ip, 10.0.0.12, --username, admin, --password-script, /usr/local/bin/ipmi-pass]
    shared_storage: /srv/virtops-shared
    checks: 3
    check_interval: 10
  register: recovery

- name: Only look at what would happen
  virtops.migration.ha_recover:
    hosts: "{{ ha_hosts }}"
    shared_storage: /srv/virtops-shared
  check_mode: true
"""

RETURN = r"""
failed_hosts:
  description:
    - The hosts that failed every check, each with its fence. Its C(outcome) is V(confirmed_off), V(failed),
      V(not_configured), V(not_needed) or V(would_fence).
  returned: always
  type: list
  elements: dict
restarted:
  description: The VMs restarted, each with C(vm), C(uuid), C(priority), C(from), C(to) and C(running_on) as libvirt shows it afterwards.
  returned: always
  type: list
  elements: dict
not_restarted:
  description:
    - The highly available VMs of failed hosts that were not restarted, each with C(rule) (V(fence), V(lease),
      V(placement), V(start), V(store)) and C(reason).
  returned: always
  type: list
  elements: dict
left_down:
  description: The VMs of failed hosts that are not highly available, left down.
  returned: always
  type: list
  elements: dict
plan:
  description: Each restart chosen (in check mode, each restart that would be made), with its destination.
  returned: always
  type: list
  elements: dict
cleaned:
  description: The stale definitions removed on hosts that came back, each with the hosts the VM is defined and runs on.
  returned: always
  type: list
  elements: dict
kept_stale:
  description: Stale definitions left in place, with the reason; their host is no destination until they are gone.
  returned: always
  type: list
  elements: dict
not_protected:
  description: VMs set highly available whose disks are not all on the shared storage; they cannot be restarted elsewhere.
  returned: always
  type: list
  elements: dict
unreachable:
  description: Hosts whose libvirt did not answer, though they are not failed (their SSH answered, or not every check was made).
  returned: always
  type: list
  elements: dict
events:
  description: The audit events, each with C(time), C(event) (V(failed), V(restarted)), C(vm), C(host) and C(message).
  returned: always
  type: list
  elements: dict
  sample:
    - {time: "2026-12-07T10:00:00Z", event: failed, vm: web1, host: kvm2, message: Highly Available web1 failed. It will be restarted automatically.}
    - {time: "2026-12-07T10:00:05Z", event: restarted, vm: web1, host: kvm1, message: web1 was restarted on Host kvm1.}
store:
  description: What this run wrote in or removed from the high-availability store.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration import modulekit
from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration.ha_recovery import HaRecovery
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import options
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.requests import ha_recover_request


def argument_spec() -> dict:
    return options.module_spec("ha_recover")


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)

    def run_command(argv: list) -> tuple:
        return module.run_command(argv, handle_exceptions=False)

    modulekit.run(module, lambda: HaRecovery(ha_recover_request(module.params), module.check_mode, log=module.log, run_command=run_command).run())


if __name__ == "__main__":
    main()
