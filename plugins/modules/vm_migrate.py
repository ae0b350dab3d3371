#!/usr/bin/python
# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_migrate
short_description: Live-migrate a VM between KVM/libvirt hosts, or cancel its migration
version_added: 0.1.0
description:
  - Moves one VM from the host given by O(uri) (the source) to another host, keeping it running;
    its memory is copied while it runs, then it continues on the destination. Network connectivity
    is unchanged, so both hosts must offer its networks. Both hosts must see the VM's disks (shared
    storage), unless O(storage) copies the disks that live on the source host itself.
  - The destination is either named (O(destination_uri)) or chosen among O(candidates)
    (O(destination=auto)), which picks the candidate that passes every check with the most free memory after
    its reserve, ties broken by the fewest running vCPUs.
  - Before anything moves, also in check mode, the destination is checked. It must be reachable
    and not the source itself (host UUID), not in maintenance, able to run the VM's CPU definition
    (libvirt's hypervisor CPU comparison), offer every libvirt network the VM uses and see every
    disk path it does not copy (as a storage volume), and have the VM's memory free after its reserve. Disks must use
    C(cache='none') or C(cache='directsync') unless O(allow_unsafe_cache=true). The VM's UUID must not
    be defined on any destination checked already (a stale copy left by an interrupted move). A VM
    defined on two hosts is refused with both hosts named. Each failed check is an error naming the
    VM, the host and the reason, and nothing is started.
  - The migration runs under a policy with a convergence schedule. It starts with an initial
    maximum downtime. Every O(monitor_interval) seconds the job is checked, and a new memory
    iteration that has not shrunk the data remaining counts as stalled and moves the schedule on
    by one step (raise the maximum downtime, switch to post-copy, suspend the VM, or abort). See
    O(policy).
  - A VM that is shut off moves its persistent definition instead (offline migration).
  - With O(state=cancelled), aborts the VM's outgoing migration job; the VM keeps running on its
    source. Run the migration with C(async) to be able to cancel it from a later task.
  - A move is done only when libvirt shows it afterwards. The destination must have the domain
    (same UUID), active after a live move and persistent when it was persistent, and the source
    must no longer have it. Any other outcome, and any error of any kind, fails the task with
    what libvirt shows on both hosts (RV(observed)). A VM that did not move is never reported as
    changed.
  - Whatever happens, the VM keeps running on exactly one host. A failed, aborted or timed-out
    migration leaves it running on the source (resumed if the schedule had paused it), defined there
    only, and the module fails with libvirt's reason.
  - When libvirt completes the move but its last step leaves the VM's shut-off definition on the
    source (its libvirtd restarted during that step), that bare definition is removed, as the move
    asked, with a warning. One with a managed save image or snapshots stays, and the task fails naming it.
  - A failed migrate call (a lost connection, a keepalive timeout) is not taken for a failed move;
    a source libvirtd that went away is waited for (up to 60 s), both hosts are read again, a
    migration job that still runs is followed to its end, and a VM that then runs on the destination
    alone is reported as moved, with a warning naming the error.
  - A paused copy of the VM is resumed (after a failed move, from the record of a lost run, or with
    O(state=cancelled)) only after the destination and the other known hosts (O(candidates)) were
    read. When one of them runs or defines the VM, or the destination cannot be read, the copy stays
    paused and the failure names both hosts (C(kept_paused), C(hosts)), since resuming it could run two copies.
  - Once a move is verified, the task reports it as changed and says where the VM is; what fails after
    that (plugging bond VFs back in, the guest's C(after_migration) hooks, setting autostart) is a warning.
  - A VM with autostart on its source has autostart on its destination (RV(autostart)).
  - A VM moved by this module no longer returns to a host it left for a maintenance. The host it left is
    removed from its metadata, so the move back (M(virtops.migration.cluster_balance) policy V(failback))
    leaves it where it was put.
  - A move that fails after the guest's C(before_migration) hooks ran (see O(guest_hooks)) runs its
    C(after_migration) hooks where the VM still runs, so that an application the hooks quiesced is not
    left frozen; the failure message says so.
  - A rerun after a run that died mid-migration (task timeout, C(async) limit, lost SSH connection)
    finds libvirt's migration job still running for the VM and adopts it. It follows the job to its
    end under this run's schedule and timeout, then reports where the VM is (RV(adopted)). Use
    O(state=cancelled) to stop such a job instead. A VM that a lost run's schedule had paused is
    resumed by the next run, wherever it is.
  - VM states. A paused VM migrates and stays paused on the destination (RV(vm_state)). A
    pmsuspended VM, or a crashed VM kept for inspection, is refused. A VM busy with a libvirt job
    that is not an outgoing migration is refused.
  - Destinations in maintenance refuse the VM themselves, when the role C(virtops.migration.maintenance_hook)
    has installed the collection's libvirt hook there. That refusal fails the task with an error naming
    the host and its state (C(preparing) or C(maintenance)).
author:
  - virtops.migration contributors (@virtops)
extends_documentation_fragment:
  - virtops.migration.connection
  - virtops.migration.vm
  - virtops.migration.migration_run
  - virtops.migration.storage
  - virtops.migration.policy_overrides
  - virtops.migration.attributes
  - virtops.migration.attributes.ACTIONGROUP_LIBVIRT
attributes:
  check_mode:
    support: full
    details:
      - Runs every check and returns the RV(plan) without moving anything.
  diff_mode:
    support: full
    details:
      - Shows the host the VM runs on before and after.
  idempotent:
    support: full
    details:
      - A VM already running on the destination (or on any of the O(candidates)) reports no change.
options:
  state:
    description:
      - V(migrated) moves the VM (or confirms it has moved already).
      - V(cancelled) aborts the VM's ongoing outgoing migration on the source host O(uri). No change
        when none is running.
    type: str
    choices: [migrated, cancelled]
    default: migrated
    version_added: 0.1.0
  destination_uri:
    description:
      - libvirt URI of the destination host, as the source host reaches it, for example
        V(qemu+tls://hv2.example.com/system). The source host's libvirtd connects to it directly
        (peer-to-peer migration).
      - Mutually exclusive with O(destination).
    type: str
    version_added: 0.1.0
  destination:
    description:
      - V(auto) picks the destination among O(candidates).
      - One of O(destination) and O(destination_uri) is required with O(state=migrated).
    type: str
    choices: [auto]
    version_added: 0.1.0
  candidates:
    description:
      - The hosts O(destination=auto) chooses from. Each is a libvirt URI, or a dictionary with
        C(uri), optional C(name) (the host name used by pinning) and optional C(maintenance)
        (a host in maintenance is never chosen), as the roles build them from
        M(virtops.migration.host_info) facts.
      - The source host itself may be listed; it is never chosen.
      - Also searched, when the VM is not on the source, to recognise a VM that has already moved,
        and, with O(destination_uri), for a stale copy of the VM (same UUID), which refuses the move.
        What an entry says of the O(destination_uri) host (C(maintenance), C(name),
        C(memory_reserved_mib)) applies to it.
    type: list
    elements: raw
    default: []
    version_added: 0.1.0
  migrate_uri:
    description:
      - The address QEMU sends the migration stream to, for a dedicated migration network, for
        example V(tcp://10.0.10.2). By default the destination's own choice.
    type: str
    version_added: 0.1.0
  listen_address:
    description:
      - The address the destination's QEMU listens on for the migration stream.
    type: str
    version_added: 0.1.0
  live:
    description:
      - Keep the VM running while its memory is copied. With V(false), a running VM is paused for
        the whole copy.
      - A shut-off VM always moves its definition (offline), whatever this says.
    type: bool
    default: true
    version_added: 0.1.0
  persistent:
    description:
      - Define the VM persistently on the destination.
      - A persistent VM always moves as a persistent VM. V(false) is refused for it, because libvirt
        would then delete its definition, or leave it on the source while the VM runs elsewhere.
        V(false) only keeps a transient VM transient.
    type: bool
    default: true
    version_added: 0.1.0
  undefine_source:
    description:
      - Remove the VM's persistent definition from the source once the migration has completed, so
        that it is defined on exactly one host.
      - V(false) is refused for a persistent VM, because it would leave a second, shut-off definition that a
        later start would run twice.
    type: bool
    default: true
    version_added: 0.1.0
  policy:
    description:
      - The migration policy. A built-in name, or a dictionary with an optional C(based_on)
        (a built-in name, default V(legacy)), an optional C(name), and any of the settings below
        (C(auto_converge), C(compression), C(bandwidth_mib), C(max_downtime_ms),
        C(downtime_schedule), C(post_copy), C(parallel_connections), C(max_concurrent)).
      - V(minimal_downtime) (oVirt's default) auto-converges; maximum downtime 100 ms, raised to
        150, 200, 300, 400 ms after 1, 2, 3, 4 stalled memory iterations and 500 ms after 6, then
        aborts.
      - V(suspend_workload) auto-converges with XBZRLE compression; the same steps, then 5000 ms,
        then aborts.
      - V(post_copy) auto-converges; 100 ms, 150 ms and 200 ms, then switches to post-copy. Once in
        post-copy the VM runs on the destination; a network failure at that point can lose the VM.
      - V(very_large_vms) starts at 300 ms, then 400, 500, 700, 1000, 1500 and 5000 ms, then aborts.
      - V(legacy) keeps a fixed 300 ms maximum downtime and no auto-converge, so a busy VM may not
        converge and then runs into O(timeout).
      - The options below override single settings of the policy.
      - By default the VM's effective policy, from its own settings (see
        M(virtops.migration.migration_policy)), else O(cluster_policy), else O(global_policy), else
        V(minimal_downtime), together with the single settings kept at those levels. A policy given
        here ignores the inherited single settings; the options below apply in any case.
    type: raw
    version_added: 0.1.0
  tls:
    description:
      - Encrypt QEMU's migration stream with TLS. Both hosts need certificates in the directory that
        C(migrate_tls_x509_cert_dir) (or C(default_tls_x509_cert_dir)) names in C(qemu.conf); the
        destination's certificate must name the address the stream goes to.
      - Independent of a C(qemu+tls://) O(destination_uri), which encrypts libvirt's own connection.
    type: bool
    default: false
    version_added: 0.1.0
  tunnelled:
    description:
      - Send the memory of a running VM through the libvirt connection to the destination (libvirt's tunnelled
        migration, C(VIR_MIGRATE_TUNNELLED)), instead of a direct QEMU-to-QEMU TCP stream. The stream is then
        encrypted and authenticated by whatever that connection uses (C(qemu+ssh://), C(qemu+tls://), SASL),
        and needs no port opened for QEMU between the hosts.
      - Slower than a direct stream. The data passes through both hosts' libvirtd (an extra copy on each side)
        and, with C(qemu+ssh://), through SSH's encryption, so a busy VM converges less easily; the
        collection's README gives measured numbers.
      - libvirt refuses it with O(tls), O(migrate_uri), O(listen_address) and O(timeout_action=post_copy),
        which are refused before anything changes, and with post-copy or parallel connections. A policy
        with C(post_copy) or C(parallel_connections), the task's own or the one the VM inherits, is
        refused before anything moves, with the VM and the setting named. XBZRLE compression,
        auto-converge, bandwidth limits and the downtime schedule work as usual.
      - A shut-off VM moves only its definition, never tunnelled.
    type: bool
    default: false
    version_added: 0.2.0
  allow_unsafe_cache:
    description:
      - Migrate live even when writable disks use a cache mode other than C(none) or C(directsync).
        Such a cache may hold writes the destination does not see.
      - This is the collection's own check only. libvirt's storage-safety check stays on; see
        O(unsafe_storage).
    type: bool
    default: false
    aliases: [allow_unsafe]
    version_added: 0.1.0
  unsafe_storage:
    description:
      - Switch off libvirt's own storage-safety check (C(VIR_MIGRATE_UNSAFE)). libvirt then migrates even
        when it cannot tell that the disks are shared or safely cached. With a local disk at the same
        path on both hosts, the guest continues on a different disk.
      - Only for storage libvirt cannot recognise as shared but that is shared. Never implied by
        O(allow_unsafe_cache).
    type: bool
    default: false
    version_added: 0.1.0
  wait:
    description:
      - Wait for the migration to finish, applying the convergence schedule and O(timeout).
      - With V(false), return as soon as the source host has started the job. libvirt then carries
        it to its end with the initial settings, but no schedule step or timeout is applied. Prefer
        C(async) on the task to let a migration run in the background under its full policy (and
        O(state=cancelled) to stop it).
    type: bool
    default: true
    version_added: 0.1.0
  timeout:
    description:
      - Seconds after which O(timeout_action) is taken if the migration has not completed.
      - By default 150 seconds per GiB of guest memory, at least 120 seconds.
    type: int
    version_added: 0.1.0
  timeout_action:
    description:
      - What to do at O(timeout). V(abort) cancels the migration (the VM keeps running on the
        source); V(post_copy) switches to post-copy; V(suspend) pauses the VM so the migration
        completes, and resumes it on the destination.
    type: str
    choices: [abort, post_copy, suspend]
    default: abort
    version_added: 0.1.0
notes:
  - The task runs on the source host (or reaches it through O(uri)). Migration is peer-to-peer; the
    source host's libvirtd connects to the destination URI itself, with the source host's
    credentials. With O(tunnelled=true) that connection also carries the VM's memory.
  - Statistics of the completed job (downtime, data moved) are read on the destination.
  - A VM with an SR-IOV failover pair whose VF sits at a fixed PCI address
    (O(virtops.migration.sriov_failover_nic#module:vf_address)) in its definition moves, live or offline,
    only to a host where that address is a PCI device (libvirt node device), is an SR-IOV virtual function
    (its node device has a C(phys_function) capability) and is not assigned to another running VM. Any
    other destination is refused before anything moves, the reason naming the address. Only the VMs
    with such a pair make the check read node devices and running VMs' definitions on the candidates.
  - With O(affinity_groups), where the other running VMs are comes from the candidates and the source.
    O(destination=auto) chooses only a host where the VM breaks no hard rule, preferring the fewest soft
    rules broken; a named destination that breaks a hard rule is refused (C(rule=affinity), naming the
    group) before anything moves, and a soft rule it breaks is a warning. A shut-off VM keeps only host rules.
  - With O(storage=copy) or O(storage=auto), the disks to copy need not be visible on the destination; their
    copies are planned on the chosen destination (with O(destination=auto), on the host placement chose), and
    any reason it cannot take them refuses the move (C(rule=storage)). The copy goes over QEMU's NBD, on the
    address of O(migrate_uri) when given, under QEMU's TLS with O(tls=true).
seealso:
  - module: virtops.migration.host_info
  - name: libvirt migration guide
    description: How libvirt migrates VMs, and its URIs.
    link: https://libvirt.org/migration.html
"""

EXAMPLES = r"""
- name: Move web1 from this host to hv2
  virtops.migration.vm_migrate:
    name: web1
    destination_uri: qemu+tls://hv2.example.com/system

- name: Move db1 to the best host of its cluster, with auto-converge and XBZRLE, at most 256 MiB/s
  virtops.migration.vm_migrate:
    name: db1
    destination: auto
    candidates: "{{ groups['cluster1'] | map('extract', hostvars, 'virtops_libvirt_uri') | list }}"
    policy: suspend_workload
    bandwidth_mib: 256

- name: Plan only (check mode shows the chosen destination and policy)
  virtops.migration.vm_migrate:
    name: db1
    destination: auto
    candidates:
      - {name: hv2, uri: qemu+tls://hv2.example.com/system}
      - {name: hv3, uri: qemu+tls://hv3.example.com/system, maintenance: true}
  check_mode: true
  register: plan

- name: Move web3, whose disks live on hv1's local pool, copying them to hv2 and removing them on hv1 afterwards
  virtops.migration.vm_migrate:
    name: web3
    destination_uri: qemu+tls://hv2.example.com/system
    storage: auto
    shared_storage: /srv/virtops-shared
    synchronous_writes: true
    remove_source_disks: true

- name: Move web2 through libvirt's SSH connection to hv2 (no migration port open between the hosts)
  virtops.migration.vm_migrate:
    name: web2
    destination_uri: qemu+ssh://root@hv2.example.com/system
    tunnelled: true

- name: A custom schedule that gives up after three stalled iterations
  virtops.migration.vm_migrate:
    name: batch7
    destination_uri: qemu+tls://hv3.example.com/system
    policy:
      based_on: legacy
      auto_converge: true
      max_downtime_ms: 200
      downtime_schedule:
        - {stalled: 1, action: downtime, downtime_ms: 400}
        - {stalled: 3, action: abort}

- name: Start a slow migration in the background
  virtops.migration.vm_migrate:
    name: big1
    destination_uri: qemu+tls://hv2.example.com/system
    bandwidth_mib: 32
  async: 600
  poll: 0
  register: slow_migration

- name: Cancel it again (big1 keeps running here)
  virtops.migration.vm_migrate:
    name: big1
    state: cancelled

- name: Wait for the background job to report the cancellation
  ansible.builtin.async_status:
    jid: "{{ slow_migration.ansible_job_id }}"
  register: slow_result
  until: slow_result.finished
  retries: 60
  delay: 2
  failed_when: false
"""

RETURN = r"""
vm:
  description: Name of the VM.
  returned: always
  type: str
  sample: web1
source:
  description: The source host.
  returned: state=migrated
  type: dict
  sample: {hostname: hv1, uri: "qemu:///system"}
destination:
  description: The destination host (where the VM runs now, or would run in check mode).
  returned: state=migrated
  type: dict
  sample: {hostname: hv2, uri: "qemu+tls://hv2.example.com/system"}
plan:
  description:
    - What the module does or, in check mode, would do. Also the effective policy and, for
      O(destination=auto), why each other candidate was rejected.
    - C(tunnelled) (added in 0.2.0) is true when the VM's memory goes through the libvirt connection
      (O(tunnelled=true) and a running VM).
    - C(storage) (added in 0.3.0) lists the VM's disks when some are copied; see RV(storage).
  returned: state=migrated and the VM was not already on the destination
  type: dict
  sample:
    vm: web1
    kind: live
    source: {hostname: hv1, uri: "qemu:///system"}
    destination: {hostname: hv2, uri: "qemu+tls://hv2.example.com/system"}
    memory_mib: 4096
    timeout_s: 600
    timeout_action: abort
    tunnelled: false
    rejected_hosts: {hv3: [is in maintenance]}
storage:
  description:
    - The VM's disks with O(storage=copy) or O(storage=auto) when some are copied. C(mode) is O(storage); C(disks)
      lists each disk - the copied ones (C(action=copy)) with C(target), C(path), C(format), C(virtual_bytes),
      C(allocated_bytes), C(source_pool), C(destination_pool) and C(create) (the volume is created before the move),
      then the others (C(action=shared)) with C(why).
    - After the move, C(destination_disks) maps each disk target to its path as the destination's libvirt shows the VM;
      C(source_disks_removed) and C(source_disks_kept) list the copied volumes deleted on the source
      (O(remove_source_disks=true)) or kept there.
    - The same list of disks is in the plan (RV(plan)), under C(storage).
  returned: state=migrated and disks are copied (in check mode too)
  type: dict
  version_added: 0.2.0
  sample:
    mode: auto
    disks:
      - {target: vda, path: /var/lib/libvirt/images/web3.qcow2, format: qcow2, virtual_bytes: 21474836480,
         allocated_bytes: 3221225472, source_pool: default, destination_pool: default, create: true, action: copy}
      - {target: vdb, path: /srv/virtops-shared/web3-data.qcow2, action: shared, why: under shared_storage /srv/virtops-shared}
    destination_disks: {vda: /var/lib/libvirt/images/web3.qcow2, vdb: /srv/virtops-shared/web3-data.qcow2}
    source_disks_removed: [/var/lib/libvirt/images/web3.qcow2]
    source_disks_kept: []
policy:
  description: The effective migration policy.
  returned: state=migrated and the VM was not already on the destination
  type: dict
  sample:
    name: minimal_downtime
    auto_converge: true
    compression: []
    bandwidth_mib: null
    max_downtime_ms: 100
    downtime_schedule: [{stalled: 1, action: downtime, downtime_ms: 150}, {stalled: 7, action: abort}]
    post_copy: false
    parallel_connections: null
    max_concurrent: 2
timings:
  description:
    - Seconds each phase took - C(connect), C(read_vm), C(probe) (the candidates, read at the same
      time), C(migrate) (the libvirt job), C(verify) and C(total).
  returned: when a migration ran and was waited for
  type: dict
  version_added: 0.2.0
  sample: {connect: 0.003, read_vm: 0.012, probe: 0.03, migrate: 2.1, verify: 0.02, total: 2.17}
duration_s:
  description: Seconds the module spent, checks included.
  returned: when a migration ran
  type: float
  sample: 2.31
downtime_ms:
  description:
    - The VM's downtime at the switch-over, in milliseconds, as QEMU measured it.
    - Null after a switch to post-copy, for which libvirt keeps no completed-job statistics.
  returned: when a migration ran (null if the hypervisor did not report it)
  type: int
  sample: 38
data_total_mib:
  description:
    - Data the migration had to move, in MiB.
    - After a switch to post-copy, as of the last progress poll.
  returned: when a migration ran (null if the hypervisor did not report it)
  type: float
  sample: 257.3
memory_iterations:
  description:
    - Memory passes the migration made.
    - After a switch to post-copy, the passes made before the switch, as of the last progress poll.
  returned: when a migration ran (null if the hypervisor did not report it)
  type: int
  sample: 4
job_time_ms:
  description: Duration of the libvirt migration job, in milliseconds.
  returned: when a migration ran (null if the hypervisor did not report it)
  type: int
  sample: 2104
compression:
  description:
    - What XBZRLE compression did, from the completed job's statistics.
  returned: when a migration ran (null unless XBZRLE compression was used)
  type: dict
  contains:
    cache_mib:
      description: Size of the XBZRLE page cache, in MiB.
      type: float
    compressed_mib:
      description: Data sent compressed, in MiB.
      type: float
    compressed_pages:
      description: Pages sent compressed.
      type: int
    cache_misses:
      description: Dirty pages not found in the cache, sent whole.
      type: int
    overflows:
      description: Pages whose compressed form was larger than the page, sent whole.
      type: int
  sample: {cache_mib: 64.0, compressed_mib: 936.7, compressed_pages: 244408, cache_misses: 8032, overflows: 0}
schedule_applied:
  description: Every schedule step (or timeout action) applied, with when and why.
  returned: when a migration ran
  type: list
  elements: dict
  sample: [{at_s: 3.1, action: downtime, downtime_ms: 150, stalled: 1, memory_iteration: 3, reason: 1 stalled memory iteration(s)}]
events:
  description:
    - Notable steps of the run, in order, each with C(at_s) (seconds since the start) and C(event)
      (V(started), V(max_downtime), V(progress), V(schedule_step), V(timeout), V(completed),
      V(failed), V(verified), V(verification_failed), V(resumed_on_source), V(resumed_on_destination),
      V(adopted), V(resumed_after_lost_run), V(cancel_requested), V(cancelled)). V(progress) carries the percentage of data processed and the data remaining.
    - Steps around a move of a VM with an SR-IOV failover vNIC or guest hooks. V(guest_hooks) (C(hook_event),
      C(host), C(outcome), and the runner's summary), V(vf_unplugged), V(vf_unplug_timeout), V(vf_absent),
      V(vf_plugged), V(vf_plug_failed) (bond mode, each with C(pair), and C(duration_s) where measured),
      V(primary_released) (teaming mode, with C(devices) and either C(wait_unplug_s), the time QEMU waited
      for the guest, or, when the job ended between two polls, C(within_s), an upper bound), and
      V(unplug_timeout) (the guest did not release its primary in time and the job was aborted).
    - Also returned on failure.
  returned: when a migration ran or was cancelled
  type: list
  elements: dict
  sample: [{at_s: 0.05, event: started, kind: live}, {at_s: 2.2, event: completed}]
vm_state:
  description: The VM's state on the destination after the move, as libvirt shows it (a paused VM stays paused).
  returned: when a migration completed, or the VM was already on a destination
  type: str
  sample: running
autostart:
  description:
    - Whether the VM starts with its destination host, as libvirt shows it there after the move. It is
      set when the VM had autostart on its source. Null when it could not be set or read (a warning says why).
  returned: when a migration of a persistent VM completed
  type: bool
  sample: true
observed:
  description:
    - Where the VM is after the run, as libvirt shows it, per host (V(source), V(destination)).
      Each is null when that host does not have the VM, else its C(state), C(reason), C(active) and
      C(persistent), or C(error) when the host could not be read.
    - Also returned on failure.
  returned: when a migration ran
  type: dict
  sample: {source: null, destination: {state: running, reason: migrated, active: true, persistent: true}}
adopted:
  description: True when the run found a migration job of the VM already running (an earlier run died) and followed it to its end.
  returned: when such a job was found
  type: bool
  sample: true
state:
  description: The VM's state on the source after a cancellation.
  returned: state=cancelled and a job was cancelled
  type: str
  sample: running
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration import modulekit
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import options
from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration.vm_migration import VmMigration
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.requests import migrate_request


def argument_spec() -> dict:
    return options.module_spec("vm_migrate")


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(),
        supports_check_mode=True,
        required_one_of=[("name", "uuid")],
        mutually_exclusive=[("name", "uuid"), ("destination", "destination_uri")],
        required_if=[("state", "migrated", ("destination", "destination_uri"), True)],
    )

    def work() -> dict:
        migration = VmMigration(migrate_request(module.params), log=module.log)
        if module.params["state"] == "cancelled":
            return migration.cancel(module.check_mode)
        return migration.migrate(module.check_mode)

    modulekit.run(module, work)


if __name__ == "__main__":
    main()
