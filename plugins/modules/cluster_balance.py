#!/usr/bin/python
# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: cluster_balance
short_description: Balance a KVM/libvirt cluster under a scheduling policy, or move VMs back to the host they left
version_added: 0.2.0
description:
  - Reads every host of the cluster (O(hosts)) at the same time, one libvirt connection per host, plans
    the moves the scheduling policy O(policy) asks for on a simulated copy of the cluster, and carries
    them out live, several at a time, like an evacuation by M(virtops.migration.host_maintenance).
  - V(evenly_distributed) relieves over-utilized hosts. A host is over-utilized when the CPU its VMs use
    stays above O(cpu_high) percent of its CPUs for every one of O(samples) samples taken O(sample_interval)
    seconds apart, or when its running VMs' memory is above O(memory_high) percent of its memory. Each
    move takes a VM from the most over-utilized host to the host where the busier of the two ends up
    least loaded, must lower that by at least O(min_improvement) percentage points, and must leave the
    destination at or under both high thresholds.
  - V(vm_evenly_distributed) evens out the count of running VMs. It moves VMs from the host with the most
    to the host with the fewest while the most is above O(vm_count_high) and the difference is above
    O(vm_count_threshold).
  - V(power_saving) empties under-utilized hosts (CPU under O(cpu_low) for the whole window and memory
    under O(memory_low)), least loaded first, onto the other hosts, keeping those at or under the high
    thresholds, and relieves over-utilized hosts as V(evenly_distributed) does. A host is emptied only
    when all its running VMs can leave in this run; RV(emptied_hosts) names the hosts the run empties, so
    that a play can put them into maintenance and power them off.
  - V(failback) moves VMs back to the host they left when that host went into maintenance
    (M(virtops.migration.host_maintenance) records it in each VM's metadata), when the host is active
    again and the rules and its capacity allow, in priority order. O(failback_hosts) limits it to the VMs
    that left some hosts. A VM that is back has the record removed.
  - V(none) plans nothing.
  - Every VM is judged by the same rules as M(virtops.migration.vm_migrate) and
    M(virtops.migration.host_maintenance) (migration mode, pinning, host devices, unsafe caches, stale
    copies, ...), and every destination by the same placement checks, including the affinity groups of
    O(affinity_groups). The balancer never moves VMs whose migration mode is not V(auto), pinned VMs
    (except back to a host among their pinned hosts under V(failback)), VMs that are not running, VMs
    with a migration job, VMs it moved less than O(cooldown) seconds ago (recorded in the VM's metadata),
    or any VM twice in one run. Hosts in maintenance (or preparing it, or being activated), hosts that
    cannot be read and hosts with a migration job running are neither sources nor destinations.
  - A balanced cluster gives an empty plan, and so does a second run right after a first one, since the plan
    is computed on the cluster as the moves leave it.
  - Right before each move starts, the VM and the destination are read again from libvirt (the VM still
    runs on its source with no job, the destination still has room); a move whose situation changed is not made and
    is reported. Every move is carried out and verified by the same job runner as
    M(virtops.migration.vm_migrate) and logged as one JSON line in O(log_dir)C(/events.jsonl) on the host
    the module runs on.
author:
  - virtops.migration contributors (@virtops)
extends_documentation_fragment:
  - virtops.migration.migration_run
  - virtops.migration.attributes
attributes:
  check_mode:
    support: full
    details:
      - Reads the cluster (including the CPU samples) and returns the plan, each host's load before and
        after it and the rules checked, and moves nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details:
      - A balanced cluster, or one a run has just balanced, reports no change.
options:
  hosts:
    description:
      - Every host of the cluster, each a libvirt URI (as the host the module runs on reaches it, which is
        also the URI the source hosts migrate to) or a dictionary with C(uri), C(name), C(maintenance) and
        C(memory_reserved_mib), as the C(virtops.migration.cluster_facts) role builds them
        (C(cluster_facts_candidates)).
    type: list
    elements: raw
    required: true
    version_added: 0.2.0
  policy:
    description:
      - The scheduling policy; see the description.
    type: str
    choices: [evenly_distributed, vm_evenly_distributed, power_saving, failback, none]
    default: evenly_distributed
    version_added: 0.2.0
  cpu_high:
    description:
      - Percent of a host's CPUs, used by its VMs, above which the host is over-utilized (sustained over the window).
    type: float
    default: 80.0
    version_added: 0.2.0
  cpu_low:
    description:
      - Percent of a host's CPUs under which the host is under-utilized (V(power_saving)).
    type: float
    default: 20.0
    version_added: 0.2.0
  memory_high:
    description:
      - Percent of a host's memory, held by its running VMs, above which the host is over-utilized.
    type: float
    default: 80.0
    version_added: 0.2.0
  memory_low:
    description:
      - Percent of a host's memory under which the host is under-utilized (V(power_saving)).
    type: float
    default: 20.0
    version_added: 0.2.0
  vm_count_high:
    description:
      - V(vm_evenly_distributed) moves VMs only off hosts running more VMs than this.
    type: int
    default: 10
    version_added: 0.2.0
  vm_count_threshold:
    description:
      - V(vm_evenly_distributed) tolerates this difference between the most and the fewest running VMs.
    type: int
    default: 5
    version_added: 0.2.0
  max_moves:
    description:
      - Moves one run makes at most. When not set, 5 for the load policies and no limit for V(failback).
    type: int
    version_added: 0.2.0
  min_improvement:
    description:
      - Percentage points by which a move must lower the load of the busier of its two hosts
        (V(evenly_distributed), V(power_saving)); a move that gains less is not made, which keeps VMs from
        moving back and forth.
    type: float
    default: 5.0
    version_added: 0.2.0
  cooldown:
    description:
      - Seconds during which the balancer does not move a VM it has moved (the time of its last move is
        kept in the VM's metadata). V(failback) ignores it.
    type: int
    default: 3600
    version_added: 0.2.0
  samples:
    description:
      - CPU samples in the window; each is the CPU time the host's VMs used over one O(sample_interval).
    type: int
    default: 3
    version_added: 0.2.0
  sample_interval:
    description:
      - Seconds between two CPU samples. Reading the cluster takes O(samples) times this.
    type: float
    default: 5.0
    version_added: 0.2.0
  failback_hosts:
    description:
      - With V(failback), only the VMs that left these hosts (inventory names) go back; empty means any host.
    type: list
    elements: str
    default: []
    version_added: 0.2.0
  failback_vms:
    description:
      - With V(failback), only these VMs (names or UUIDs) go back, for example the VMs one maintenance moved
        (RV(virtops.migration.host_maintenance#module:vms)); empty means every VM recorded as having left
        a host of O(failback_hosts).
    type: list
    elements: str
    default: []
    version_added: 0.2.0
  max_outgoing:
    description:
      - Migrations running from any one host at once.
    type: int
    default: 2
    version_added: 0.2.0
  max_incoming:
    description:
      - Migrations running into any one host at once.
    type: int
    default: 2
    version_added: 0.2.0
  reason:
    description:
      - Why the cluster is balanced; kept in the event log.
    type: str
    version_added: 0.2.0
  requested_by:
    description:
      - Who asks; kept in the event log.
    type: str
    version_added: 0.2.0
  log_dir:
    description:
      - The collection's log directory on the host the module runs on, where the moves are logged.
    type: path
    default: /var/log/virtops-migration
    version_added: 0.2.0
  tunnelled:
    description:
      - Send the memory of each VM through the libvirt connection to its destination; see
        O(virtops.migration.host_maintenance#module:tunnelled).
    type: bool
    default: false
    version_added: 0.2.0
  allow_unsafe_cache:
    description:
      - Also move VMs whose writable disks use a cache mode other than C(none) or C(directsync); see
        O(virtops.migration.vm_migrate#module:allow_unsafe_cache).
    type: bool
    default: false
    aliases: [allow_unsafe]
    version_added: 0.2.0
  username:
    description:
      - User name given when libvirt asks for one, on every host.
    type: str
    version_added: 0.2.0
  password:
    description:
      - Password given when libvirt asks for one, on every host.
    type: str
    version_added: 0.2.0
notes:
  - Run it once per cluster (C(run_once)), on a host that reaches every host of the cluster with the URIs in
    O(hosts), for example the first host of the cluster as C(playbooks/balance_cluster.yml) does; the source
    hosts migrate to the same URIs.
  - For a schedule, run C(playbooks/balance_cluster.yml) from an AWX/Tower schedule or a cron job or systemd
    timer (every few minutes; RHV balances every minute). Runs that overlap are safe, since a VM with a migration
    job and the hosts it moves between are left out.
seealso:
  - module: virtops.migration.host_maintenance
  - module: virtops.migration.vm_migrate
  - module: virtops.migration.migration_policy
"""

EXAMPLES = r"""
- name: Balance the cluster's CPU and memory (check mode shows the plan)
  virtops.migration.cluster_balance:
    hosts: "{{ cluster_facts_candidates }}"
    policy: evenly_distributed
    cpu_high: 75
    affinity_groups: "{{ virtops_affinity_groups | default([]) }}"
    cluster_policy: "{{ virtops_cluster_policy | default({}) }}"
  run_once: true
  register: balance

- name: Consolidate, then put the emptied hosts into maintenance
  virtops.migration.cluster_balance:
    hosts: "{{ cluster_facts_candidates }}"
    policy: power_saving
    cpu_low: 10
    memory_low: 15
  run_once: true
  register: consolidation

- name: Return the VMs that left hv2 for its maintenance
  virtops.migration.cluster_balance:
    hosts: "{{ cluster_facts_candidates }}"
    policy: failback
    failback_hosts: [hv2]
  run_once: true
"""

RETURN = r"""
policy:
  description: The policy applied.
  returned: always
  type: str
  sample: evenly_distributed
plan:
  description:
    - The plan, in check mode too. C(moves) (C(vm), C(uuid), C(priority), C(memory_mib), C(from), C(to), C(kind),
      C(policy)); C(skipped), the VMs the policy would have moved but the rules keep in place, each with C(rule)
      and C(reason); C(hosts), per host its load C(before) and C(after) the plan (C(cpu_percent),
      C(memory_percent), C(vms), C(load)); C(excluded_hosts), hosts left out and why; C(unmet), the soft
      affinity rules left unmet after the plan; C(rules_checked), the rule ids applied.
  returned: always
  type: dict
  sample: {policy: evenly_distributed, moves: [{vm: web3, from: hv1, to: hv2, kind: live}], skipped: [], emptied_hosts: []}
vms:
  description:
    - One record per move carried out, in start order (as RV(virtops.migration.host_maintenance#module:vms)),
      with C(outcome) (V(migrated), V(failed) or V(not_started) when the re-check before the move found the
      situation changed) and, for a failed or not started move, C(error).
  returned: when moves ran
  type: list
  elements: dict
  sample: [{vm: web3, from: hv1, to: hv2, outcome: migrated, duration_s: 4.1}]
emptied_hosts:
  description: V(power_saving) only, the hosts the run emptied (no VM runs there any more).
  returned: always
  type: list
  elements: str
  sample: [hv4]
unmet:
  description: The soft affinity rules left unmet (C(group), C(kind), C(polarity), C(message)).
  returned: always
  type: list
  elements: dict
  sample: [{group: web-apart, kind: vm, polarity: negative, enforcing: false, message: "..."}]
placement:
  description: Where each VM that the run moved runs now, read from libvirt afterwards (VM name to host name).
  returned: when moves ran
  type: dict
  sample: {web3: hv2}
msg:
  description: One sentence on what was done.
  returned: always
  type: str
  sample: "2 of 2 moves done; hv1 is no longer over-utilized."
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration import modulekit
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import options
from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration.balancing import ClusterBalance
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.requests import balance_request


def argument_spec() -> dict:
    return options.module_spec("cluster_balance")


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    modulekit.run(module, lambda: ClusterBalance(balance_request(module.params), log=module.log).run(module.check_mode))


if __name__ == "__main__":
    main()
