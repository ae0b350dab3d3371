#!/usr/bin/python
# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: ha_recover
short_description: Restart the highly available VMs of failed KVM/libvirt hosts on the other hosts of the cluster
version_added: 0.2.0
description:
  - Checks every host of the cluster (O(hosts)) over libvirt and SSH. A host has failed only when both its libvirt
    URI and a TCP connection to its SSH port fail on every one of O(checks) checks, O(check_interval) seconds apart.
  - A failed host is fenced with its C(fence_command) (a fence-agent style command; the module appends
    C(-o off), then C(-o status) until the agent reports the power off, exit status 2, or O(fence_timeout)).
    Only a confirmed power-off lets its VMs be restarted, unless O(without_fence=lease) and the host has no
    fence command.
  - The highly available VMs (setting C(high_availability)) of a fenced host are restarted on the other hosts, in
    priority order, from their definitions in the HA store C(virtops-ha) of O(shared_storage), by the same placement
    rules as the other modules; a marker C(stale/HOST/UUID) in the store then makes the fenced host's maintenance hook
    refuse to start its stale copy, and the stale definition is removed once the host is back.
  - Runs on one machine that reaches every host's libvirt URI and mounts the shared storage.
author:
  - virtops.migration contributors (@virtops)
extends_documentation_fragment:
  - virtops.migration.attributes
attributes:
  check_mode:
    support: full
    details:
      - Checks the hosts and returns what would be fenced and restarted, and fences and starts nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details:
      - A cluster whose hosts all answer reports no change.
options:
  hosts:
    description:
      - Every host of the cluster, each a dictionary with C(name) (its inventory name, required), C(uri) (its libvirt
        URI, required), C(ssh_host), C(ssh_port) (default V(22)), C(fence_command) (a list of strings),
        C(maintenance) and C(memory_reserved_mib), as the C(virtops.migration.ha_recover) role builds them from the
        inventory.
    type: list
    elements: dict
    required: true
    version_added: 0.2.0
  shared_storage:
    description:
      - The directory every host of the cluster mounts at the same path, holding the HA store C(virtops-ha).
    type: path
    required: true
    version_added: 0.2.0
  checks:
    description:
      - Checks a host must fail, over libvirt and over SSH, to have failed.
    type: int
    default: 3
    version_added: 0.2.0
  check_interval:
    description:
      - Seconds between two checks.
    type: float
    default: 5.0
    version_added: 0.2.0
  connect_timeout:
    description:
      - Seconds one libvirt connection or SSH connection attempt may take.
    type: float
    default: 5.0
    version_added: 0.2.0
  without_fence:
    description:
      - What to do for a failed host that has no C(fence_command).
      - V(refuse) restarts none of its VMs.
      - V(lease) restarts them relying on libvirt's lockd leases, only onto hosts with a locking record (role
        C(virtops.migration.ha_locking)); libvirt refuses the start while the old QEMU still holds the disks.
    type: str
    choices: [refuse, lease]
    default: refuse
    version_added: 0.2.0
  fence_timeout:
    description:
      - Seconds for the fence command, and for the host's power state to read off.
    type: int
    default: 60
    version_added: 0.2.0
  cluster_policy:
    description:
      - Cluster-level migration settings (usually the variable C(virtops_cluster_policy)).
    type: dict
    default: {}
    version_added: 0.2.0
  global_policy:
    description:
      - Global migration settings (usually the variable C(virtops_global_policy)).
    type: dict
    default: {}
    version_added: 0.2.0
  affinity_groups:
    description:
      - The cluster's affinity groups (usually the variable C(virtops_affinity_groups)), kept when a destination is chosen.
    type: list
    elements: dict
    default: []
    version_added: 0.2.0
  memory_reserved_mib:
    description:
      - Memory, in MiB, each destination keeps back for itself, unless its entry in O(hosts) says otherwise.
    type: int
    default: 256
    version_added: 0.2.0
  state_dir:
    description:
      - The collection's state directory on the hosts.
    type: path
    default: /var/lib/virtops-migration
    version_added: 0.2.0
  reason:
    description:
      - Why the cluster is recovered (kept in the event log).
    type: str
    version_added: 0.2.0
  requested_by:
    description:
      - Who asks (kept in the event log).
    type: str
    version_added: 0.2.0
  log_dir:
    description:
      - The collection's log directory on the host the module runs on.
    type: path
    default: /var/log/virtops-migration
    version_added: 0.2.0
"""

EXAMPLES = r"""
- name: Restart the highly available VMs of the failed hosts of the cluster
  virtops.migration.ha_recover:
    hosts:
      - name: hv1
        uri: qemu+ssh://hv1.example.com/system
        ssh_host: hv1.example.com
        fence_command: [fence_ipmilan, --ip, hv1-bmc.example.com, --username, admin, --password-script, /etc/virtops/bmc-pass]
      - name: hv2
        uri: qemu+ssh://hv2.example.com/system
        ssh_host: hv2.example.com
    shared_storage: /srv/virtops-shared
  run_once: true
  register: recovery
"""

RETURN = r"""
failed_hosts:
  description: The hosts that failed every check, each with C(name), C(checks) and C(fence) (C(outcome), C(detail)).
  returned: always
  type: list
  elements: dict
restarted:
  description: The VMs restarted, each with C(vm), C(uuid), C(priority), C(from) and C(to).
  returned: always
  type: list
  elements: dict
not_restarted:
  description: The VMs of failed hosts that were not restarted, each with C(vm), C(uuid), C(priority), C(from), C(reason) and C(rule).
  returned: always
  type: list
  elements: dict
left_down:
  description: The VMs of failed hosts that are not highly available, each with C(vm), C(uuid) and C(from).
  returned: always
  type: list
  elements: dict
cleaned:
  description: The stale definitions removed from hosts that are back, each with C(host), C(vm) and C(uuid).
  returned: always
  type: list
  elements: dict
events:
  description: The events of the run, each with C(time), C(host), C(vm), C(event) and C(message).
  returned: always
  type: list
  elements: dict
unreachable:
  description: The hosts that failed at least one check but not all.
  returned: always
  type: list
  elements: str
msg:
  description: What the run did, in one sentence.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import options
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.policy import PolicyError


def argument_spec() -> dict:
    return options.module_spec("ha_recover")


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    try:
        options.check_ranges("ha_recover", module.params)
    except PolicyError as exc:
        module.fail_json(msg=str(exc))
    module.fail_json(msg="ha_recover: the recovery is not part of this build of the collection. Nothing was changed.")


if __name__ == "__main__":
    main()
