#!/usr/bin/python
# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: host_info
short_description: Facts about a KVM/libvirt hypervisor host for migration and maintenance
version_added: 0.1.0
description:
  - Reads what a migration scheduler and an operator need to know about one hypervisor host from
    libvirt, and changes nothing.
  - The host itself (name, UUID, libvirt and hypervisor versions), its CPU (model, vendor, topology,
    features), its memory (total, free, a configurable reserve and what remains for guests), the
    migration transports it offers, the domain capabilities of each virtualization type it supports,
    its virtual networks and storage pools, and every VM on it with its state, size and the
    per-VM migration settings this collection stores in the domain metadata.
  - Parts of the information that the libvirt driver does not offer are returned empty, with a
    warning.
author:
  - virtops.migration contributors (@virtops)
extends_documentation_fragment:
  - virtops.migration.connection
  - virtops.migration.attributes
  - virtops.migration.attributes.INFO_MODULE
  - virtops.migration.attributes.ACTIONGROUP_LIBVIRT
options:
  memory_reserved_mib:
    description:
      - Memory, in MiB, kept back for the host's own processes (libvirt, QEMU overhead, the OS).
      - RV(host.memory.available_mib) is RV(host.memory.free_mib) less this reserve, and never
        negative.
      - The default of V(256) suits small lab hosts; production hosts usually keep back 1 to 4 GiB.
    type: int
    default: 256
    version_added: 0.1.0
  state_dir:
    description:
      - The collection's state directory on the managed node, where
        M(virtops.migration.host_maintenance) keeps the host's maintenance mark.
      - Read on the managed node the module runs on, so RV(host.maintenance) describes the host
        only when the module runs on it (the default O(uri)).
    type: path
    default: /var/lib/virtops-migration
    version_added: 0.1.0
  gather:
    description:
      - Which of the facts that cost libvirt calls per object to gather. RV(host.vms) (and
        RV(host.summary)), RV(host.networks), RV(host.storage_pools) and
        RV(host.domain_capabilities) not listed here come back empty.
      - The host's identity, CPU, memory, migration transports, guest types and maintenance state
        are always gathered.
      - V([]) is the cheapest reading, enough to place VMs and to find hosts in maintenance.
    type: list
    elements: str
    choices: [vms, networks, storage_pools, domain_capabilities]
    default: [vms, networks, storage_pools, domain_capabilities]
    version_added: 0.2.0
notes:
  - Free memory counts the kernel's free memory plus buffers and page cache, which the kernel gives
    back to guests on demand. When the libvirt driver has no node memory statistics, libvirt's free
    memory figure is used instead.
  - VMs that are undefined or migrated away while the module runs are left out of RV(host.vms).
seealso:
  - name: libvirt connection URIs
    description: The forms O(uri) can take.
    link: https://libvirt.org/uri.html
  - name: libvirt capabilities XML format
    description: Where the host, CPU, NUMA and migration transport facts come from.
    link: https://libvirt.org/formatcaps.html
  - name: libvirt domain capabilities XML format
    description: Where RV(host.domain_capabilities) comes from.
    link: https://libvirt.org/formatdomaincaps.html
  - module: community.libvirt.virt
    description: Manage the state of libvirt VMs.
"""

EXAMPLES = r"""
- name: Read the facts of the hypervisor the play runs on
  virtops.migration.host_info:
  register: hypervisor

- name: Show the memory left for guests
  ansible.builtin.debug:
    msg: "{{ hypervisor.host.hostname }} has {{ hypervisor.host.memory.available_mib }} MiB for guests"

- name: Read a remote host over SSH, keeping 2 GiB back for the host itself
  virtops.migration.host_info:
    uri: qemu+ssh://root@hv2.example.com/system
    memory_reserved_mib: 2048
  register: hv2

- name: List the running VMs of high migration priority
  ansible.builtin.debug:
    msg: >-
      {{ hv2.host.vms | selectattr('state', 'eq', 'running') | selectattr('priority', 'eq', 'high')
         | map(attribute='name') | list }}

- name: Only what placement needs (identity, memory, CPU, maintenance), without reading every VM
  virtops.migration.host_info:
    gather: []
  register: quick

- name: Set the connection once for every module of the collection
  module_defaults:
    group/virtops.migration.libvirt:
      uri: qemu+tcp://hv3.example.com/system
  block:
    - name: Read the facts of hv3
      virtops.migration.host_info:
      register: hv3
"""

RETURN = r"""
host:
  description: Facts about the hypervisor host.
  returned: success
  type: dict
  sample:
    uri: qemu:///system
    hostname: hv1
    uuid: 6602a019-2ed8-48f9-96a5-72c5036f7e06
    libvirt_version: 9.0.0
    hypervisor: {type: QEMU, version: 7.2.22}
  contains:
    uri:
      description: The canonical URI of the connection, as libvirt reports it.
      returned: success
      type: str
      sample: qemu:///system
    hostname:
      description: The host name of the hypervisor host.
      returned: success
      type: str
      sample: hv1
    uuid:
      description:
        - The host UUID libvirt reports (C(host_uuid) in C(libvirtd.conf) when set).
        - libvirt refuses to migrate between two hosts with the same UUID.
      returned: success
      type: str
      sample: 6602a019-2ed8-48f9-96a5-72c5036f7e06
    libvirt_version:
      description: The version of the libvirt daemon on the host.
      returned: success
      type: str
      sample: 9.0.0
    hypervisor:
      description: The hypervisor driver behind the connection.
      returned: success
      type: dict
      sample: {type: QEMU, version: 7.2.22}
      contains:
        type:
          description: The driver name, for example V(QEMU).
          returned: success
          type: str
          sample: QEMU
        version:
          description: The hypervisor version (for QEMU, the QEMU version); V(null) when the driver does not report one.
          returned: success
          type: str
          sample: 7.2.22
    cpu:
      description: The host CPU.
      returned: success
      type: dict
      sample:
        arch: x86_64
        model: EPYC-Milan
        vendor: AMD
        count: 2
        mhz: 2596
        sockets: 1
        dies: 1
        cores: 2
        threads: 1
        numa_nodes: 1
        features: [aes, avx2]
      contains:
        arch:
          description: The CPU architecture.
          returned: success
          type: str
          sample: x86_64
        model:
          description: The CPU model libvirt names for the host CPU.
          returned: success
          type: str
          sample: EPYC-Milan
        vendor:
          description: The CPU vendor.
          returned: success
          type: str
          sample: AMD
        count:
          description: The number of active logical CPUs.
          returned: success
          type: int
          sample: 2
        mhz:
          description: The CPU frequency in MHz.
          returned: success
          type: int
          sample: 2596
        sockets:
          description: CPU sockets, as the capabilities topology reports them.
          returned: success
          type: int
          sample: 1
        dies:
          description: Dies per socket; V(null) when libvirt does not report dies.
          returned: success
          type: int
          sample: 1
        cores:
          description: Cores per die.
          returned: success
          type: int
          sample: 2
        threads:
          description: Threads per core.
          returned: success
          type: int
          sample: 1
        numa_nodes:
          description: The number of NUMA nodes.
          returned: success
          type: int
          sample: 1
        features:
          description: The CPU features libvirt lists beyond those of RV(host.cpu.model), sorted.
          returned: success
          type: list
          elements: str
          sample: [aes, avx2, x2apic]
    memory:
      description: Host memory, in MiB.
      returned: success
      type: dict
      sample: {total_mib: 24105, free_mib: 23786, reserved_mib: 256, available_mib: 23530}
      contains:
        total_mib:
          description: Total host memory.
          returned: success
          type: int
          sample: 24105
        free_mib:
          description: Free memory, counting buffers and page cache (see the notes).
          returned: success
          type: int
          sample: 23786
        reserved_mib:
          description: The reserve kept for the host, O(memory_reserved_mib).
          returned: success
          type: int
          sample: 256
        available_mib:
          description:
            - Memory left for guests, RV(host.memory.free_mib) less RV(host.memory.reserved_mib), never negative.
          returned: success
          type: int
          sample: 23530
    migration:
      description: Migration support the host's capabilities declare.
      returned: success
      type: dict
      sample: {live: true, uri_transports: [tcp, rdma]}
      contains:
        live:
          description:
            - Whether the driver declares live migration.
            - Post-copy and compression depend on the QEMU and kernel of both hosts; libvirt does
              not declare them in advance, so a migration that asks for them finds out.
          returned: success
          type: bool
          sample: true
        uri_transports:
          description: The migration URI transports the driver accepts.
          returned: success
          type: list
          elements: str
          sample: [tcp, rdma]
    guests:
      description: The guest architectures the host can run, from the capabilities XML.
      returned: success
      type: list
      elements: dict
      sample:
        - os_type: hvm
          arch: x86_64
          wordsize: 64
          emulator: /usr/bin/qemu-system-x86_64
          domain_types: [qemu, kvm]
          machines: [pc-i440fx-7.2, pc, pc-q35-7.2, q35]
      contains:
        os_type:
          description: The OS type, V(hvm) for full virtualization.
          returned: success
          type: str
          sample: hvm
        arch:
          description: The guest architecture.
          returned: success
          type: str
          sample: x86_64
        wordsize:
          description: The word size of the architecture, in bits.
          returned: success
          type: int
          sample: 64
        emulator:
          description: The emulator binary.
          returned: success
          type: str
          sample: /usr/bin/qemu-system-x86_64
        domain_types:
          description: The virtualization types for this architecture, for example V(kvm) and V(qemu) (TCG).
          returned: success
          type: list
          elements: str
          sample: [qemu, kvm]
        machines:
          description: The machine types and their aliases; a VM can only move to a host that offers its machine type.
          returned: success
          type: list
          elements: str
          sample: [pc-i440fx-7.2, pc, pc-q35-7.2, q35]
    domain_capabilities:
      description:
        - The domain capabilities for the host's own architecture, keyed by virtualization type
          (V(kvm), V(qemu), ...), for the default emulator and machine type.
        - Empty when the driver does not offer domain capabilities.
      returned: success
      type: dict
      sample:
        kvm:
          domain_type: kvm
          emulator: /usr/bin/qemu-system-x86_64
          machine: pc-i440fx-7.2
          arch: x86_64
          max_vcpus: 255
          cpu_modes: [custom, host-model, host-passthrough, maximum]
          host_model: {supported: true, model: EPYC-Milan, vendor: AMD}
          host_passthrough_migratable: true
          usable_cpu_models: [qemu64, EPYC]
          features: {backup: true, sev: false}
      contains:
        domain_type:
          description: The virtualization type these capabilities are for.
          returned: success
          type: str
          sample: kvm
        emulator:
          description: The emulator binary.
          returned: success
          type: str
          sample: /usr/bin/qemu-system-x86_64
        machine:
          description: The machine type the capabilities were computed for (the emulator's default).
          returned: success
          type: str
          sample: pc-i440fx-7.2
        arch:
          description: The guest architecture.
          returned: success
          type: str
          sample: x86_64
        max_vcpus:
          description: The most vCPUs a guest may have.
          returned: success
          type: int
          sample: 255
        cpu_modes:
          description: The guest CPU modes the host supports, sorted.
          returned: success
          type: list
          elements: str
          sample: [custom, host-model, host-passthrough, maximum]
        host_model:
          description: What a guest with CPU mode C(host-model) gets on this host.
          returned: success
          type: dict
          sample: {supported: true, model: EPYC-Milan, vendor: AMD}
          contains:
            supported:
              description: Whether the C(host-model) mode is supported.
              returned: success
              type: bool
              sample: true
            model:
              description: The CPU model name.
              returned: success
              type: str
              sample: EPYC-Milan
            vendor:
              description: The CPU vendor.
              returned: success
              type: str
              sample: AMD
        host_passthrough_migratable:
          description: Whether C(host-passthrough) CPUs can be limited to migratable features.
          returned: success
          type: bool
          sample: true
        usable_cpu_models:
          description: The named CPU models (mode C(custom)) a guest can use on this host.
          returned: success
          type: list
          elements: str
          sample: [qemu64, EPYC]
        features:
          description: Guest features and whether the host supports them, for example V(backup) or V(sev).
          returned: success
          type: dict
          sample: {backup: true, sev: false, vmcoreinfo: true}
    networks:
      description: The virtual networks defined on the host, sorted by name.
      returned: success
      type: list
      elements: dict
      sample:
        - name: lab
          uuid: d4743fbb-bea7-4c6e-b38d-a986f5314549
          forward_mode: bridge
          bridge: labbr0
          active: true
          persistent: true
          autostart: true
      contains:
        name:
          description: The network name.
          returned: success
          type: str
          sample: lab
        uuid:
          description: The network UUID.
          returned: success
          type: str
          sample: d4743fbb-bea7-4c6e-b38d-a986f5314549
        forward_mode:
          description:
            - The forward mode, for example V(nat), V(bridge) or V(route); V(isolated) when the network has none.
          returned: success
          type: str
          sample: bridge
        bridge:
          description: The host bridge the network uses; V(null) when it has none.
          returned: success
          type: str
          sample: labbr0
        active:
          description: Whether the network is started.
          returned: success
          type: bool
          sample: true
        persistent:
          description: Whether the network is defined persistently.
          returned: success
          type: bool
          sample: true
        autostart:
          description: Whether the network starts with libvirt.
          returned: success
          type: bool
          sample: true
    storage_pools:
      description: The storage pools defined on the host, sorted by name.
      returned: success
      type: list
      elements: dict
      sample:
        - name: images
          uuid: ec758229-37db-4de3-b590-9917a5db29d0
          type: dir
          target_path: /var/lib/libvirt/images
          capacity_bytes: 107374182400
          allocation_bytes: 0
          available_bytes: 107374182400
          active: true
          persistent: true
          autostart: true
      contains:
        name:
          description: The pool name.
          returned: success
          type: str
          sample: images
        uuid:
          description: The pool UUID.
          returned: success
          type: str
          sample: ec758229-37db-4de3-b590-9917a5db29d0
        type:
          description: The pool type, for example V(dir), V(netfs), V(logical) or V(rbd).
          returned: success
          type: str
          sample: dir
        target_path:
          description: Where the pool's volumes appear on the host; V(null) for pools without one.
          returned: success
          type: str
          sample: /var/lib/libvirt/images
        capacity_bytes:
          description: The pool's size as libvirt last saw it (0 for an inactive pool).
          returned: success
          type: int
          sample: 107374182400
        allocation_bytes:
          description: The space allocated to volumes, as libvirt last saw it.
          returned: success
          type: int
          sample: 0
        available_bytes:
          description: The free space, as libvirt last saw it.
          returned: success
          type: int
          sample: 107374182400
        active:
          description: Whether the pool is started.
          returned: success
          type: bool
          sample: true
        persistent:
          description: Whether the pool is defined persistently.
          returned: success
          type: bool
          sample: true
        autostart:
          description: Whether the pool starts with libvirt.
          returned: success
          type: bool
          sample: true
    vms:
      description: Every VM on the host (running or not, persistent or transient), sorted by name.
      returned: success
      type: list
      elements: dict
      sample:
        - name: web1
          uuid: c37d14c9-efdf-4661-a34f-1a93303f980d
          id: 1
          state: running
          state_reason: booted
          active: true
          persistent: true
          autostart: false
          domain_type: kvm
          arch: x86_64
          machine: pc-q35-7.2
          cpu_mode: host-model
          vcpus: 2
          max_vcpus: 4
          memory_mib: 2048
          current_memory_mib: 2048
          migration_settings: {priority: high, migration_mode: auto}
          priority: high
      contains:
        name:
          description: The VM name.
          returned: success
          type: str
          sample: web1
        uuid:
          description: The VM UUID.
          returned: success
          type: str
          sample: c37d14c9-efdf-4661-a34f-1a93303f980d
        id:
          description: The libvirt domain ID while the VM is active, V(null) otherwise.
          returned: success
          type: int
          sample: 1
        state:
          description: The state, in the words C(virsh domstate) uses.
          returned: success
          type: str
          choices: [no state, running, idle, paused, in shutdown, shut off, crashed, pmsuspended]
          sample: running
        state_reason:
          description:
            - Why the VM is running, paused or shut off, for example V(booted), V(migrated), V(migration) (paused by an
              outgoing migration), V(post-copy) or V(destroyed); V(unknown) for other states.
          returned: success
          type: str
          sample: booted
        active:
          description: Whether the VM is active (running, paused or otherwise holding host resources).
          returned: success
          type: bool
          sample: true
        persistent:
          description: Whether the VM has a persistent definition (a transient VM disappears when it stops).
          returned: success
          type: bool
          sample: true
        autostart:
          description: Whether the VM starts with libvirt.
          returned: success
          type: bool
          sample: false
        domain_type:
          description: The virtualization type, for example V(kvm) or V(qemu) (TCG).
          returned: success
          type: str
          sample: kvm
        arch:
          description: The guest architecture.
          returned: success
          type: str
          sample: x86_64
        machine:
          description: The machine type.
          returned: success
          type: str
          sample: pc-q35-7.2
        cpu_mode:
          description:
            - The guest CPU mode (V(custom), V(host-model), V(host-passthrough) or V(maximum)).
            - V(null) when the VM has no C(<cpu>) element.
          returned: success
          type: str
          sample: host-model
        vcpus:
          description: The vCPUs the VM has now.
          returned: success
          type: int
          sample: 2
        max_vcpus:
          description: The most vCPUs the VM can have.
          returned: success
          type: int
          sample: 4
        memory_mib:
          description: The memory the VM is defined with (its C(<memory>)), which a destination host must provide.
          returned: success
          type: int
          sample: 2048
        current_memory_mib:
          description: The memory the VM has now (its C(<currentMemory>), lower when ballooned).
          returned: success
          type: int
          sample: 2048
        migration_settings:
          description:
            - The VM's own readable migration settings from the collection's domain metadata; V({}) when it has none.
            - Each setting is read on its own; unreadable ones are left out and listed in
              RV(host.vms[].migration_settings_problems). When the migration mode or the pinned hosts
              cannot be read, C(migration_mode) is V(none) here, so nothing moves the VM until the
              setting is fixed.
          returned: success
          type: dict
          sample: {priority: high, migration_mode: auto, pinned_hosts: [hv1, hv2]}
        priority:
          description: The migration priority, from RV(host.vms[].migration_settings) or V(medium) when unset.
          returned: success
          type: str
          choices: [low, medium, high]
          sample: high
        migration_settings_error:
          description: Every unreadable migration setting with its reason, as one sentence.
          returned: when some of the VM's migration metadata cannot be read
          type: str
          sample: "metadata.priority must be one of low, medium, high or inherit, got 'urgent'"
        migration_settings_problems:
          description: Per unreadable setting (V(metadata) for the whole element), why it cannot be read.
          returned: when some of the VM's migration metadata cannot be read
          type: dict
          sample: {priority: "metadata.priority must be one of low, medium, high or inherit, got 'urgent'"}
    summary:
      description: Counts over RV(host.vms).
      returned: success
      type: dict
      sample: {vms_total: 3, vms_running: 2, vcpus_running: 4, memory_running_mib: 4096}
      contains:
        vms_total:
          description: All VMs on the host.
          returned: success
          type: int
          sample: 3
        vms_running:
          description: Active VMs (running or paused), the ones that hold host memory and CPUs.
          returned: success
          type: int
          sample: 2
        vcpus_running:
          description: The vCPUs of the active VMs.
          returned: success
          type: int
          sample: 4
        memory_running_mib:
          description: The memory (RV(host.vms[].memory_mib)) of the active VMs.
          returned: success
          type: int
          sample: 4096
    maintenance:
      description:
        - The host's maintenance state, as M(virtops.migration.host_maintenance) recorded it in
          O(state_dir).
      returned: success
      type: dict
      sample: {active: true, since: "2026-11-26T04:20:00.000+00:00", reason: kernel update, by: awx, shutdown_vms: []}
      contains:
        active:
          description:
            - Whether the host is marked, in maintenance or preparing for it. Either way it
              refuses incoming migrations and VM starts when the collection's libvirt hook is loaded,
              and placement never chooses it.
          returned: success
          type: bool
          sample: true
        state:
          description:
            - V(preparing) while the host is being evacuated, V(maintenance) once it runs no VM,
              V(activating) while the VMs shut down for it start again, V(null) when active.
          returned: success
          type: str
          sample: maintenance
        since:
          description: When the host went into maintenance (ISO 8601, UTC).
          returned: success
          type: str
          sample: "2026-11-26T04:20:00.000+00:00"
        reason:
          description: Why, as given to M(virtops.migration.host_maintenance).
          returned: success
          type: str
          sample: kernel update
        by:
          description: Who asked, as given to M(virtops.migration.host_maintenance).
          returned: success
          type: str
          sample: awx
        shutdown_vms:
          description: VMs shut down for the maintenance, started again when the host is activated.
          returned: success
          type: list
          elements: str
          sample: [licence1]
        enforcement:
          description:
            - Whether the host enforces the mark through the collection's libvirt hook (installed by
              the role virtops.migration.maintenance_hook). C(loaded) is true when the hook is installed
              and the running libvirtd started after it was.
            - V(null) for C(loaded) when libvirtd's start time cannot be read.
            - C(trouble) says in words why the hook does not enforce maintenance, V(null) when it does.
          returned: success
          type: dict
          version_added: 0.2.0
          sample: {path: /etc/libvirt/hooks/qemu.d/virtops-maintenance, installed: true, loaded: true, trouble: null}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import mark, options
from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration import modulekit
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.connection import libvirt_connection
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.hostinfo import OPTIONAL_PARTS, HostInfoCollector
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.placement import DEFAULT_MEMORY_RESERVED_MIB
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.statefiles import DEFAULT_STATE_DIR


def argument_spec() -> dict:
    return options.spec(
        options.CONNECTION,
        memory_reserved_mib={"type": "int", "default": DEFAULT_MEMORY_RESERVED_MIB},
        state_dir={"type": "path", "default": DEFAULT_STATE_DIR},
        gather={"type": "list", "elements": "str", "choices": list(OPTIONAL_PARTS), "default": list(OPTIONAL_PARTS)},
    )


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    params = module.params

    def work() -> dict:
        with libvirt_connection(params["uri"], params["username"], params["password"]) as conn:
            collector = HostInfoCollector(conn, memory_reserved_mib=params["memory_reserved_mib"])
            host = collector.collect(params["gather"])
        host["maintenance"] = mark.status(params["state_dir"])
        return {"changed": False, "host": host, "warnings": collector.warnings}

    modulekit.run(module, work)


if __name__ == "__main__":
    main()
