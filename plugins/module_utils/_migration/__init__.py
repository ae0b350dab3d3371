# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""The collection's shared code, in three layers, one sub-package each; a layer imports only its own
and the ones above it (``tests/unit/test_layers.py`` checks it). A move is planned in ``pure``, carried
out and verified against libvirt in ``libvirt_io``, and each module's workflow joins them in
``orchestration``: plan -> run -> verify.

``pure`` (no libvirt import; unit-tested without a hypervisor):
  errors (exceptions, libvirt error codes), statefiles (state files on the host), policy (policies
  and schedules), metadata (the settings' XML format), settings (what a setting may hold, and the
  VM > cluster > global inheritance), domain (domain XML), hostinfo (host facts), placement (where
  a VM may and should go), plan (moves and run options), options (every module option once: the
  option tables, from which the argument specs, range checks and defaults come), requests (what a
  module run was asked to do, built from its parameters), evacuation (the evacuation plan and its
  queue), mark (the maintenance mark and its hook), failover (SR-IOV failover pairs and unmovable
  host devices in domain XML), rules (the one assessor: whether, how and why not a VM may move, for
  vm_migrate and for an evacuation alike), affinity (affinity groups: which VMs run together or
  apart, on which hosts), balance (the balancer's plan under a scheduling policy), ha (high availability:
  the restart rules, fencing conventions and the store of definitions on the shared storage).
``libvirt_io`` (reads and changes libvirt):
  connection (opening and closing), probe (reading destinations, where a VM is), runner (the one
  job runner: a move's libvirt job, its monitoring and verification), settings_store (settings
  and the placement record in domain metadata), cluster (every host of a cluster and its VMs' load,
  read at once, for the balancer), guest_agent (programs run in a guest through its QEMU guest agent, and the
  guest hooks), failover_nic (sriov_failover_nic: check the host, define a failover pair, plug it
  into the running VM), sriov_network (sriov_network: a hostdev network over a PF).
``orchestration`` (one module's whole run):
  vm_migration (vm_migrate: plan one move, run it), maintenance (host_maintenance: plan an
  evacuation, run its moves, mark the host), hibernation (vm_hibernate: guest hooks and libvirt's
  managed save, restore), batch (a plan's moves run several at a time), balancing (cluster_balance:
  read the cluster, plan under a policy, run the moves), ha_recovery (ha_recover: check the hosts, keep the
  store, fence failed hosts, restart their highly available VMs, clean hosts that come back), modulekit
  (a module's result or failure).
"""
