# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Options of the modules that run migrations (vm_migrate, host_maintenance)."""

from __future__ import annotations


class ModuleDocFragment:
    """Inherited settings, monitoring, destination reserve and affinity groups, documented once."""

    DOCUMENTATION = r"""
options:
  affinity_groups:
    description:
      - Affinity groups say which running VMs are kept together on one host or apart, and on which
        hosts VMs may run, as oVirt's affinity groups do; usually the variable C(virtops_affinity_groups)
        of the cluster's inventory group. Each group is a dictionary with the keys below (any other is refused).
      - C(name) (required) names the group; names are unique.
      - C(vms) (required) lists the VMs of the group by name, at least one.
      - C(vm_rule) is V(positive) (keep the group's running VMs together on one host), V(negative) (keep
        them apart, no two on one host) or V(disabled) (the default); a rule other than V(disabled) needs two VMs.
      - C(vm_enforcing) (default V(true)) makes the VM rule hard, never broken; V(false) makes it soft.
      - C(hosts) lists host names (the names of the candidates and the hosts' own names); C(host_rule) is
        V(positive) (the group's VMs run only on C(hosts)), V(negative) (never on C(hosts)) or
        V(disabled) (the default), with C(host_enforcing) (default V(true)) as C(vm_enforcing).
      - A move that would break a hard rule is refused (rule C(affinity), naming the group) before
        anything moves; an evacuation that cannot keep one lists the VM as unplaceable. Soft rules rank
        destinations (fewer soft rules broken first) and are reported as warnings when left unmet.
      - VM rules concern running VMs (a shut-off VM moved offline keeps only host rules). Groups that
        contradict each other are refused before anything moves, for example a pair of VMs both in a
        positive and in a negative VM group, a hard negative VM group with more VMs than the cluster
        has hosts, a hard positive VM group whose hard host rules leave its VMs no host in common, or
        hard host rules that leave a VM no host.
    type: list
    elements: dict
    default: []
    version_added: 0.2.0
  cluster_policy:
    description:
      - Cluster-level migration settings (C(priority), C(migration_mode), C(pinned_hosts), C(policy),
        C(auto_converge), C(compression), C(bandwidth_mib), C(max_downtime_ms), with the values
        M(virtops.migration.migration_policy) takes), usually a group variable of the cluster's
        inventory group. A VM's own settings win over them; O(global_policy) and the built-in
        defaults apply below them.
      - An effective C(migration_mode) of V(none) refuses a migration; effective C(pinned_hosts)
        restrict the destinations.
    type: dict
    default: {}
    version_added: 0.1.0
  global_policy:
    description:
      - Global migration settings, usually a variable of the C(all) group; see O(cluster_policy).
    type: dict
    default: {}
    version_added: 0.1.0
  guest_hooks:
    description:
      - Run the guest's own hooks around each move, C(before_migration) in the guest before the
        migration starts, C(after_migration) in the guest on its destination once the move is
        verified (and its agent answers). They run through the QEMU guest agent (C(guest-exec) of the
        runner the role C(virtops.migration.guest_hooks)
        installs, with an argument list, never a shell string), each bounded by O(guest_hook_timeout).
      - When not set, the VM's own C(guest_hooks) setting decides (see M(virtops.migration.migration_policy);
        the built-in default is V(false)).
      - Each run is an event of the move (C(guest_hooks), with the hooks' names, exit statuses and
        durations). A guest whose agent does not answer, or without the runner, is a warning; the move
        goes on. Offline moves of shut-off VMs run no hooks.
    type: bool
    version_added: 0.2.0
  guest_hook_failure:
    description:
      - What a failed C(before_migration) hook (or a runner that refused, or ran out of time) does.
      - V(warn) (as RHV) reports a warning and moves the VM; V(abort) leaves the VM where it is and
        fails the move. A failed C(after_migration) hook is always a warning (the VM has moved).
    type: str
    choices: [warn, abort]
    default: warn
    version_added: 0.2.0
  guest_hook_timeout:
    description:
      - Seconds one run of a guest's hooks may take, counted on the host (the agent has no deadline
        of its own). The runner in the guest also stops each hook at its own per-hook timeout.
    type: float
    default: 60.0
    version_added: 0.2.0
  unplug_timeout:
    description:
      - Seconds the guest of a VM with an SR-IOV failover pair (see M(virtops.migration.sriov_failover_nic))
        may take to release its VF when a move starts.
      - In O(virtops.migration.sriov_failover_nic#module:mode=teaming) QEMU unplugs the VF itself and waits for the
        guest without a deadline (the job's C(wait-unplug) phase), and libvirt adds none; when this time
        passes, the job is aborted and the VM keeps running on its source with its VF.
      - In O(virtops.migration.sriov_failover_nic#module:mode=bond) the VF is hot-unplugged before the move;
        a guest that does not release it in time keeps it, and the VM is not moved.
    type: float
    default: 30.0
    version_added: 0.2.0
  monitor_interval:
    description:
      - Seconds between two convergence checks of a migration. At each check, a new memory
        iteration that has not shrunk the data remaining counts as stalled and moves the policy's
        schedule on by at most one step.
      - The default of 10 seconds is vdsm's migration monitor interval; shorter intervals make the
        schedule (and its abort step) come sooner.
    type: float
    default: 10.0
    version_added: 0.1.0
  wait_sleep:
    description:
      - Seconds between two readings of a migration job's statistics (progress, timeout).
    type: float
    default: 0.5
    version_added: 0.1.0
  memory_reserved_mib:
    description:
      - Memory, in MiB, each destination keeps back for itself; a VM must fit in what remains.
    type: int
    default: 256
    version_added: 0.1.0
  state_dir:
    description:
      - Directory on the host the module runs on where the collection keeps its state, that is the
        maintenance mark of M(virtops.migration.host_maintenance), and a note for each VM a
        convergence schedule has paused, so that a later run resumes a VM an interrupted run left
        paused.
      - Must belong to root and not be writable by other users; files are written atomically,
        mode 0600, without following symbolic links.
    type: path
    default: /var/lib/virtops-migration
    version_added: 0.1.0
"""
