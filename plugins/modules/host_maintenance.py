#!/usr/bin/python
# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: host_maintenance
short_description: Put a KVM/libvirt host into maintenance by evacuating its VMs, or bring it back
version_added: 0.1.0
description:
  - With O(state=maintenance), moves every VM off the host the module runs on (O(uri)) to the other
    hosts of its cluster (O(candidates)), then marks the host as in maintenance.
  - Plan first, then act. The plan orders the VMs by effective priority (high, medium, low; then
    larger memory first) and places each on the best candidate that passes every check of
    M(virtops.migration.vm_migrate), counting the memory and vCPUs of VMs already planned there as
    pending load, so that placement spreads across the cluster. Hosts in maintenance, unreachable
    hosts and the host itself are never chosen.
  - Each VM's effective settings (see M(virtops.migration.migration_policy)) are honoured, under the
    same rules as M(virtops.migration.vm_migrate). A running VM that may not migrate (migration mode
    V(none), or V(manual) without O(include_manual=true), pinned to no other host, with assigned host
    devices that cannot migrate, or with writable disks whose cache mode is neither V(none) nor
    V(directsync)) blocks the maintenance; the module then fails before moving anything and lists those
    VMs, unless O(non_migratable=shutdown), which shuts them down cleanly once all other VMs have
    moved and starts them again when the host is activated. Shut-off VMs move their persistent
    definitions; shut-off VMs that may not move stay defined on the host.
  - At most O(max_outgoing) migrations run from the host at once and at most O(max_incoming) into
    any one destination; a VM of higher priority always starts before one of lower priority; each
    migration runs under the VM's effective policy. A policy's own limit of migrations at once
    (C(max_concurrent), which is 2 for V(minimal_downtime), V(post_copy) and V(legacy), and 1 for
    V(suspend_workload) and V(very_large_vms), which so run alone) lowers O(max_outgoing) while a VM
    with that policy moves or waits to start.
  - The host enforces its maintenance itself. Before the first move the host is marked V(preparing),
    and from then on the collection's libvirt hook (role C(virtops.migration.maintenance_hook))
    makes it refuse incoming migrations and VM starts. After the last move the module lists the
    host's VMs again. Only when none runs is the mark set to V(maintenance), because the next step is often
    a reboot. The mark is written atomically and durably (temporary file, fsync, rename), mode 0600.
  - Two evacuations started at the same moment on two hosts of a cluster cannot send VMs into each
    other. Each host refuses the other's VMs while it is preparing, so both fail clearly and go back
    to active. A second run on the same host while one runs is refused.
  - Every move is verified through libvirt afterwards (see M(virtops.migration.vm_migrate)). If any
    VM fails to move, the others still move, and the module fails with every VM's outcome. The host
    then goes back to how it was before the run. A host that was already in maintenance and still
    runs no VM keeps its mark. Any other host goes back to active (the mark is removed), and the VMs
    this run shut down are started again (RV(restarted)). A VM that cannot start again
    (RV(not_restarted)), or that was asked to shut down and still runs (RV(still_shutting_down), for
    example after O(shutdown_timeout)), stays listed in the mark, whose state is then V(activating),
    and the message names it; O(state=active) starts it. A rerun resumes. VMs already moved are no longer
    on the host, and a migration left running by a run that died is adopted.
  - A VM whose UUID is also defined on a candidate (a stale copy), a pmsuspended or crashed VM, a VM
    whose own migration settings cannot be read, and a transient VM that may not move (shutting it
    down would destroy it) block the maintenance before anything moves.
  - Each VM the evacuation shuts down is written to the mark before its shutdown is asked for, so that
    even when the module is killed the mark lists it and O(state=active) starts it again.
  - The mark is a small file in O(state_dir) on the host (state, since when, why, by whom). M(virtops.migration.host_info)
    reports it. Each migration is also logged as one JSON line in O(log_dir)C(/events.jsonl) on the
    host. The module must run on the host it evacuates, because the mark and the hook are local files.
  - With O(state=active), starts the VMs shut down for the maintenance, then clears the mark, so the
    host accepts VMs again. While they start the mark says V(activating), so the hook lets them start but
    still refuses incoming migrations. A VM that cannot start stays listed in the mark and the module
    fails; the next O(state=active) run tries it again.
author:
  - virtops.migration contributors (@virtops)
extends_documentation_fragment:
  - virtops.migration.connection
  - virtops.migration.migration_run
  - virtops.migration.storage
  - virtops.migration.attributes
  - virtops.migration.attributes.ACTIONGROUP_LIBVIRT
attributes:
  check_mode:
    support: full
    details:
      - Returns the full plan (order, destination per VM, expected load per host) and moves nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details:
      - A host already in maintenance with no VMs left, or already active, reports no change.
options:
  state:
    description:
      - V(maintenance) evacuates the host and marks it; V(active) brings it back.
    type: str
    choices: [maintenance, active]
    default: maintenance
    version_added: 0.1.0
  candidates:
    description:
      - The other hosts of the cluster, each a libvirt URI (as this host reaches it) or a dictionary
        with C(uri), C(name), C(maintenance) and C(memory_reserved_mib), as the
        C(virtops.migration.cluster_facts) role builds them. The host itself may be listed.
      - Required with O(state=maintenance).
    type: list
    elements: raw
    default: []
    version_added: 0.1.0
  include_manual:
    description:
      - Also migrate VMs whose migration mode is V(manual) (the confirmation RHV asks for).
    type: bool
    default: false
    version_added: 0.1.0
  non_migratable:
    description:
      - What to do with running VMs that may not migrate. V(fail) refuses the maintenance;
        V(shutdown) shuts them down cleanly (guest agent, then ACPI) after the other VMs have moved,
        and starts them again on O(state=active).
    type: str
    choices: [fail, shutdown]
    default: fail
    version_added: 0.1.0
  shutdown_timeout:
    description:
      - Seconds to wait for the VMs being shut down. When one still runs then, the evacuation fails
        naming it, and it stays listed in the mark for O(state=active) (see RV(still_shutting_down)).
    type: int
    default: 120
    version_added: 0.1.0
  max_outgoing:
    description:
      - Migrations running from this host at once (vdsm's default is 2).
      - The policies of the VMs moving may allow fewer; see the description.
    type: int
    default: 2
    version_added: 0.1.0
  max_incoming:
    description:
      - Migrations running into any one destination at once.
    type: int
    default: 2
    version_added: 0.1.0
  reason:
    description:
      - Why the host goes into maintenance; kept in the mark and in the event log.
    type: str
    version_added: 0.1.0
  requested_by:
    description:
      - Who asks; kept in the mark and in the event log.
    type: str
    version_added: 0.1.0
  state_dir:
    description:
      - The collection's state directory on the host, where the maintenance mark is kept. The hook
        installed by the role C(virtops.migration.maintenance_hook) must read the same directory.
      - Must belong to root and not be writable by other users.
    type: path
    default: /var/lib/virtops-migration
    version_added: 0.1.0
  require_hook:
    description:
      - Refuse to start an evacuation unless the host enforces maintenance. The collection's libvirt
        hook must be installed in C(/etc/libvirt/hooks/qemu.d/) and loaded, that is libvirtd must have
        started after the hook was installed. The role C(virtops.migration.maintenance_hook) installs it
        and restarts libvirtd once.
      - With V(false) the evacuation runs without it. Other migrations may then land on the host
        while it is evacuated; the final re-listing still keeps such a host active.
    type: bool
    default: true
    version_added: 0.1.0
  log_dir:
    description:
      - The collection's log directory on the host, where migrations are logged.
    type: path
    default: /var/log/virtops-migration
    version_added: 0.1.0
  tunnelled:
    description:
      - Send the memory of each running VM through the libvirt connection to its destination (libvirt's
        tunnelled migration), encrypted and authenticated by whatever that connection uses (C(qemu+ssh://),
        C(qemu+tls://), SASL), instead of a direct QEMU-to-QEMU stream. See O(virtops.migration.vm_migrate#module:tunnelled).
      - Slower than a direct stream. The data passes through both hosts' libvirtd and, with C(qemu+ssh://),
        through SSH's encryption.
      - libvirt refuses it with post-copy and parallel connections. When a VM to move has an effective policy
        with C(post_copy) or C(parallel_connections) (its own, O(cluster_policy) or O(global_policy)), that VM
        is blocked in the plan and the module fails before anything moves, also in check mode, naming each
        such VM, its policy and the setting.
      - Shut-off VMs move only their definitions, never tunnelled.
    type: bool
    default: false
    version_added: 0.2.0
  allow_unsafe_cache:
    description:
      - Also move running VMs whose writable disks use a cache mode other than C(none) or C(directsync).
        Such a cache may hold writes the destination does not see, so by default the evacuation refuses
        to move such a VM, as M(virtops.migration.vm_migrate) does; see
        O(virtops.migration.vm_migrate#module:allow_unsafe_cache).
    type: bool
    default: false
    aliases: [allow_unsafe]
    version_added: 0.2.0
notes:
  - Run the task on the host to evacuate (the default O(uri)); the mark and the event log are
    written on the managed node the module runs on.
  - The plan places a VM with an SR-IOV failover pair whose VF sits at a fixed PCI address
    (O(virtops.migration.sriov_failover_nic#module:vf_address)) only on a candidate where that address
    is a PCI device, is an SR-IOV virtual function and is not assigned to another running VM (the check
    of M(virtops.migration.vm_migrate)), running or shut off alike. When no candidate has it, the VM is
    unplaceable and the maintenance fails before anything moves, the reason naming the address.
  - With O(affinity_groups), the plan knows where every running VM of the cluster is (each reachable
    candidate's running VMs). A VM in a group is placed only where it breaks no hard rule, preferring
    hosts that break the fewest soft ones; the running VMs of this host that a hard positive VM rule
    keeps together go to one host that takes all of them at once. A VM only a broken hard rule could
    place is unplaceable with C(rule=affinity) (the reason naming the group), and the maintenance fails
    before anything moves. Rules the plan leaves unmet are in the plan's C(affinity.unmet) and the warnings.
  - With O(storage=copy) or O(storage=auto), the disks of each running VM are classified as for
    M(virtops.migration.vm_migrate), and each reachable candidate's storage pools are read once. A VM whose
    disks are copied goes only to a candidate with, for each copied disk, an active pool at the disk's
    directory, no volume at its path, and room for the copies beyond those of the VMs planned there before
    it; when none can take it, it is unplaceable with each candidate's reasons (memory and storage alike),
    and the maintenance fails before anything moves. A running VM whose disks cannot be copied (rule
    C(storage)) may not migrate (see O(non_migratable)).
  - A move that copies disks has its job timeout extended by the time its disks' allocated bytes take at
    32 MiB/s, and runs under the same O(max_outgoing) and O(max_incoming) limits. Its volumes are created on
    the destination right before its job, under a manifest in O(state_dir)C(/copies/), and deleted again if the
    move fails (the VM stays on this host); manifests a run that died left for this host's VMs are cleaned
    before the plan is made.
seealso:
  - module: virtops.migration.vm_migrate
  - module: virtops.migration.host_info
  - module: virtops.migration.migration_policy
"""

EXAMPLES = r"""
- name: Put hv1 into maintenance, its VMs spread over the rest of the cluster
  virtops.migration.host_maintenance:
    state: maintenance
    candidates: "{{ groups['cluster1'] | map('extract', hostvars, 'virtops_libvirt_uri') | list }}"
    reason: kernel update
    requested_by: "{{ lookup('ansible.builtin.env', 'USER') }}"
  when: inventory_hostname == 'hv1'

- name: Show the plan only
  virtops.migration.host_maintenance:
    candidates:
      - {name: hv2, uri: qemu+tls://hv2.example.com/system}
      - {name: hv3, uri: qemu+tls://hv3.example.com/system, memory_reserved_mib: 4096}
  check_mode: true
  register: plan

- name: Evacuate, migrating manual-mode VMs too and shutting down the pinned ones
  virtops.migration.host_maintenance:
    candidates: "{{ cluster_candidates }}"
    include_manual: true
    non_migratable: shutdown

- name: Evacuate a host whose VMs have their disks in its local dir pool, copying them during the moves
  virtops.migration.host_maintenance:
    candidates: "{{ cluster_candidates }}"
    storage: auto
    shared_storage: "{{ virtops_shared_storage | default(omit) }}"
    remove_source_disks: true

- name: Bring hv1 back (restarts the VMs shut down for the maintenance)
  virtops.migration.host_maintenance:
    state: active
"""

RETURN = r"""
host:
  description: Host name of the host.
  returned: always
  type: str
  sample: hv1
plan:
  description:
    - The evacuation plan, in check mode too. C(moves) in start order (C(vm), C(priority),
      C(memory_mib), C(from), C(to), C(to_uri), C(kind), C(policy)), C(blocked), C(shutdown), C(kept)
      and C(unplaceable) VMs with reasons, and C(load), the expected pending load per destination.
    - A C(blocked), C(shutdown) or C(kept) VM also has C(rule), the id of the rule that holds it (the same
      rules M(virtops.migration.vm_migrate) refuses a move for), for example C(mode_none) or C(unsafe_cache).
    - C(tunnelled) (added in 0.2.0) is O(tunnelled); live moves then go through the libvirt connections.
    - An C(unplaceable) VM has C(rule=affinity) when only breaking a hard rule of O(affinity_groups) could place it.
    - C(affinity) (added in 0.2.0, only with O(affinity_groups)) has C(unmet), the rules broken once the plan
      has run, each with C(group), C(kind) (V(vm) or V(host)), C(polarity), C(enforcing) and C(message).
    - A move that copies disks (added in 0.3.0, O(storage)) also has C(copy_disks) (the targets copied),
      C(timeout_s) (its job timeout, extended for the copy) and C(storage), its disks one by one (C(target),
      C(path), C(format), C(virtual_bytes), C(allocated_bytes), C(source_pool), C(destination_pool), C(create),
      C(action) V(copy); or C(action) V(shared) with C(why)); the C(load) of a destination that receives
      copies has C(copy_bytes_by_pool), the bytes each of its pools takes (margins included).
  returned: state=maintenance and the host had VMs
  type: dict
  sample: {ok: true, tunnelled: false, moves: [{vm: db1, priority: high, memory_mib: 4096, from: hv1, to: hv3, kind: live}], blocked: []}
vms:
  description:
    - One record per VM moved, in start order, also returned on failure. C(vm) is the VM's name and
      C(uuid) its UUID (what a later step should find it by).
    - A record also has C(events), the steps around that VM's move when there were any (guest hooks, the
      unplug and plug of an SR-IOV failover VF, a released or kept failover primary; named as in the
      RV(virtops.migration.vm_migrate#module:events) of M(virtops.migration.vm_migrate)), C(warnings) (also
      added to the task's warnings), C(error) and C(observed) for a move that failed.
    - A move that copied disks (added in 0.3.0) has C(storage) - C(disks) (as in the plan), C(destination_disks)
      (each disk's path on the destination, as libvirt shows the VM there), C(source_disks_removed) and
      C(source_disks_kept) (see O(remove_source_disks)) - and its C(events) include C(volumes_created),
      C(copies_cleaned) (after a failure) and C(source_disks_removed). A failed one whose volumes could not
      be deleted has C(copies_left), saying why; the next run deletes them.
  returned: state=maintenance and migrations ran
  type: list
  elements: dict
  sample:
    - {vm: db1, uuid: 0f3c9a52-54a1-4c1b-9f0e-6d2f6f1e2a11, priority: high, from: hv1, to: hv3,
       started: "2026-11-26T04:20:01.120+00:00", finished: "2026-11-26T04:20:04.310+00:00",
       started_at_s: 0.41, finished_at_s: 3.6, duration_s: 3.19, downtime_ms: 52, outcome: migrated,
       timings: {start: 0.04, migrate: 3.08, verify: 0.02}}
timings:
  description:
    - Seconds each phase of the run took, measured on the host, to see where the time goes.
    - C(connect), C(read_source) (every VM of the host, read once), C(probe) (every candidate, read
      at the same time), C(plan), C(moves) (all migrations, a few at a time), C(shutdown),
      C(recheck) (the host listed again), C(report) (the final load) and C(total).
    - Each record of RV(vms) has its own C(timings) too - C(start) (from the queue to the libvirt job,
      the re-checks included), C(migrate) (the job) and C(verify) (reading the VM back from both hosts).
  returned: state=maintenance, when the host was read
  type: dict
  version_added: 0.2.0
  sample: {connect: 0.004, read_source: 0.021, probe: 0.032, plan: 0.001, moves: 8.6, shutdown: 0.0, recheck: 0.006, report: 0.02, total: 8.68}
copies_cleaned:
  description:
    - The volumes of interrupted disk copies a run that died left for this host's VMs, cleaned before the plan
      was made (O(storage)), each with C(destination), C(deleted) and C(kept) (the VM is defined there).
  returned: when such volumes were found, not in check mode (check mode warns instead)
  type: list
  elements: dict
  version_added: 0.2.0
  sample: [{event: copies_cleaned, destination: "qemu+tls://hv2.example.com/system", deleted: [/var/lib/libvirt/images/db1.qcow2], kept: null}]
shutdown:
  description: VMs shut down for the maintenance.
  returned: state=maintenance and not in check mode
  type: list
  elements: str
  sample: [licence1]
load:
  description: Free memory for guests and running vCPUs of each reachable candidate, read after the evacuation.
  returned: state=maintenance and migrations ran
  type: dict
  sample: {hv2: {uri: "qemu+tls://hv2.example.com/system", available_mib: 20480, vcpus_running: 12}}
maintenance:
  description: The mark written (V(null) after O(state=active), and after a failed evacuation).
  returned: success
  type: dict
  sample: {state: maintenance, since: "2026-11-26T04:20:05.000+00:00", reason: kernel update, by: awx, shutdown_vms: []}
enforcement:
  description: Whether the host enforces maintenance through the collection's libvirt hook.
  returned: state=maintenance and the host had VMs to plan
  type: dict
  sample: {path: /etc/libvirt/hooks/qemu.d/virtops-maintenance, installed: true, loaded: true}
restarted:
  description: After a failed evacuation, the VMs this run had shut down and started again.
  returned: when an evacuation failed after shutting VMs down
  type: list
  elements: str
  sample: [licence1]
not_restarted:
  description:
    - After a failed evacuation, VMs this run had shut down that could not be started again, with libvirt's reason.
    - They stay listed in the mark, whose state is V(activating), for O(state=active).
  returned: when an evacuation failed after shutting VMs down
  type: dict
  sample: {licence1: "Cannot start ..."}
still_shutting_down:
  description:
    - After a failed evacuation, VMs this run asked to shut down that still run (the guest ignored the
      request or has not finished it, for example after O(shutdown_timeout)).
    - They stay listed in the mark, whose state is V(activating), so that O(state=active) starts them if
      they stop meanwhile.
  returned: when an evacuation failed while a VM asked to shut down still ran
  type: list
  elements: str
  sample: [licence1]
not_started:
  description: VMs O(state=active) could not start; they stay listed in the mark, whose state is V(activating).
  returned: when O(state=active) failed to start VMs
  type: list
  elements: str
  sample: [licence1]
started:
  description: VMs started again by O(state=active).
  returned: state=active and the host was in maintenance
  type: list
  elements: str
  sample: [licence1]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration import modulekit
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import options
from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration.maintenance import HostMaintenance
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.requests import maintenance_request


def argument_spec() -> dict:
    return options.module_spec("host_maintenance")


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)

    def work() -> dict:
        manager = HostMaintenance(maintenance_request(module.params), log=module.log)
        if module.params["state"] == "active":
            return manager.activate(module.check_mode)
        return manager.maintenance(module.check_mode)

    modulekit.run(module, work)


if __name__ == "__main__":
    main()
