#!/usr/bin/python
# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: sriov_failover_nic
short_description: Give a VM an SR-IOV VF vNIC with a virtio backup that keeps its network up across live migration
version_added: 0.2.0
description:
  - Writes one I(failover pair) into a VM, made of a virtio NIC on a backup network or bridge, and an SR-IOV
    virtual function (VF) NIC, both named by the user aliases C(ua-<pair>-backup) and C(ua-<pair>-vf).
  - O(mode=teaming) is libvirt's failover pair (RHV's "minimal downtime" way). The virtio NIC carries
    C(<teaming type='persistent'/>) and is listed before the VF, the VF carries
    C(<teaming type='transient' persistent='ua-<pair>-backup'/>), and both share one MAC. QEMU unplugs the VF
    itself when a live migration starts and plugs one in on the destination; the guest's C(net_failover)
    driver (Linux 4.18 or later) keeps one interface up throughout.
  - O(mode=bond) is the in-guest active-backup bond way, with the VF (the bond's primary) and a virtio NIC (the
    backup) without C(<teaming>). M(virtops.migration.vm_migrate) and M(virtops.migration.host_maintenance)
    unplug the VF before a move and plug a VF from the same network in on the destination. The virtio NIC
    uses the VF's MAC, or its own MAC with O(fail_over_mac=true).
  - Changes the persistent definition of the VM. With O(live=true) a running VM also gets the change at
    once (backup plugged first, then the VF; removed in reverse order). A live step that fails is undone,
    and the previous persistent definition is restored.
  - The definition is read and written with its secure fields (C(VIR_DOMAIN_XML_SECURE)), so graphics
    passwords and the like are kept.
  - Right before each write (the definition, each live step, each step of an undo) the module checks
    again that the VM is still on the host, in the state it was read in (running or shut off,
    persistent), runs no libvirt job such as a live migration, and, before a definition is written,
    that nobody else changed its persistent definition meanwhile. Otherwise it writes nothing more and
    fails naming the VM, the host and the job or the change. An undo stopped this way never defines
    the VM on a host it has left; the failure then lists what was not undone (RV(not_undone)).
  - Refuses, changing nothing, a VF network that does not exist or is not in C(hostdev) forward mode, a
    backup network or bridge the host lacks, a MAC that another interface of the VM or another VM of the
    host uses, O(mode=teaming) on a machine type without PCI Express root ports (i440fx, C(pc)), a
    hypervisor without virtio-net failover (libvirt checks C(<teaming>) against QEMU's capabilities when
    the VM is defined), and a transient VM (one without a persistent definition).
  - A pair of the same name that differs (other mode, MAC, source) is replaced as a whole; the diff says so.
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
  diff_mode:
    support: full
    details:
      - The pair's interfaces in the persistent definition, before and after, as XML.
  idempotent:
    support: full
options:
  state:
    description:
      - V(present) makes the pair exist as described; V(absent) removes both of its interfaces and
        nothing else.
    type: str
    choices: [present, absent]
    default: present
    version_added: 0.2.0
  pair:
    description:
      - The pair's name. It becomes part of the aliases C(ua-<pair>-backup) and C(ua-<pair>-vf), so it may
        hold only letters, digits, C(_) and C(-) (48 characters at most).
    type: str
    required: true
    version_added: 0.2.0
  mode:
    description:
      - V(teaming) needs machine type q35 (the VF sits alone in a hot-pluggable PCI Express root port),
        libvirt 6.1 or later and QEMU 4.2 or later, and the guest's C(net_failover) driver.
      - V(bond) needs an active-backup bond in the guest with the VF as primary (role
        C(virtops.migration.sriov_guest)).
    type: str
    choices: [teaming, bond]
    default: teaming
    version_added: 0.2.0
  vf_network:
    description:
      - A libvirt network with C(<forward mode='hostdev' managed='yes'>) over a PF (see
        M(virtops.migration.sriov_network)); each start or plug takes a free VF from it. Use the same network
        name on every host, so that a VF is found on whichever host the VM lands on.
      - One of O(vf_network) and O(vf_address) is required with O(state=present).
    type: str
    version_added: 0.2.0
  vf_address:
    description:
      - The PCI address of one VF, V(DDDD:BB:SS.F) (for example V(0000:3b:10.1)). The same address is then
        used on every host the VM moves to. A warning is returned when the host has no such device.
      - M(virtops.migration.vm_migrate) and M(virtops.migration.host_maintenance) move the VM (live or
        shut off) only to a host where this address is a PCI device, is an SR-IOV virtual function, and is
        not assigned to another running VM; any other host is refused with a reason naming the address.
    type: str
    version_added: 0.2.0
  backup_network:
    description:
      - The libvirt network of the virtio backup NIC. It must exist on the host.
      - One of O(backup_network) and O(backup_bridge) is required with O(state=present).
    type: str
    version_added: 0.2.0
  backup_bridge:
    description:
      - A host bridge for the virtio backup NIC, instead of O(backup_network). It must exist on the host.
    type: str
    version_added: 0.2.0
  mac:
    description:
      - The pair's MAC address (the VF's, and in teaming mode the backup's too).
      - If not set, an existing pair keeps its MAC, and a new pair gets a free one in libvirt's C(52:54:00)
        range (not used by the VM or any other VM of the host); it is returned in RV(pair.mac).
    type: str
    version_added: 0.2.0
  fail_over_mac:
    description:
      - O(mode=bond) only. V(true) gives the virtio backup a MAC of its own, for a guest bond with
        C(fail_over_mac=active). V(false) gives it the VF's MAC.
    type: bool
    default: false
    version_added: 0.2.0
  live:
    description:
      - On a running VM, also plug in (or unplug) the interfaces at once. With V(false) only the persistent
        definition changes, and the VM gets the pair at its next cold boot.
    type: bool
    default: true
    version_added: 0.2.0
notes:
  - In bond mode with a shared MAC (O(fail_over_mac=false)) the backup NIC must not pass through a MAC-spoofing
    filter (as RHV's guide asks for the virtio vNIC profile). The module writes no C(<filterref>) on the backup;
    when the backup network or bridge applies an nwfilter such as C(clean-traffic) or C(no-mac-spoofing)
    (for example through a port group), remove it for this NIC, or use O(fail_over_mac=true) with a guest bond
    in C(fail_over_mac=active) mode.
  - A VF network's VFs get the MAC programmed on the host; switch-side anti-spoofing on the PF (C(spoofchk))
    is the host administrator's setting.
  - A VF drawn from a network is written with C(<model type='virtio'/>); libvirt ignores the model once the
    network hands out a VF but places the device by it, in a PCI Express root port of its own.
  - No SR-IOV hardware was available where this module was tested; see the collection's README for what was
    verified and how.
seealso:
  - module: virtops.migration.sriov_network
  - module: virtops.migration.vm_migrate
  - module: virtops.migration.host_maintenance
  - name: libvirt domain XML, teaming a virtio/hostdev NIC pair
    description: The C(<teaming>) element.
    link: https://libvirt.org/formatdomain.html#teaming-a-virtio-hostdev-nic-pair
"""

EXAMPLES = r"""
- name: A failover pair (teaming) for web1, its VF from the hostdev network sriov-pf0
  virtops.migration.sriov_failover_nic:
    name: web1
    pair: net1
    mode: teaming
    vf_network: sriov-pf0
    backup_network: prod

- name: A bond pair for db1 with a VF at a fixed address and a backup on bridge br0, the backup with its own MAC
  virtops.migration.sriov_failover_nic:
    name: db1
    pair: bond0
    mode: bond
    vf_address: "0000:3b:10.1"
    backup_bridge: br0
    fail_over_mac: true

- name: Only the persistent definition; the running VM gets the pair at its next cold boot
  virtops.migration.sriov_failover_nic:
    name: web1
    pair: net1
    vf_network: sriov-pf0
    backup_network: prod
    live: false

- name: Remove the pair
  virtops.migration.sriov_failover_nic:
    name: web1
    pair: net1
    state: absent
"""

RETURN = r"""
vm:
  description: Name of the VM.
  returned: success
  type: str
  sample: web1
pair:
  description:
    - The pair as the persistent definition holds it after the run (or would, in check mode).
    - C(null) with O(state=absent).
  returned: success
  type: dict
  contains:
    name:
      description: The pair's name.
      type: str
      sample: net1
    mode:
      description: V(teaming) or V(bond).
      type: str
      sample: teaming
    mac:
      description: The VF's MAC (in teaming mode the backup's too).
      type: str
      sample: "52:54:00:5d:11:22"
    backup_mac:
      description: The backup's MAC (differs from RV(pair.mac) only with O(fail_over_mac=true)).
      type: str
      sample: "52:54:00:5d:11:22"
    vf_alias:
      description: The VF interface's alias.
      type: str
      sample: ua-net1-vf
    backup_alias:
      description: The backup interface's alias.
      type: str
      sample: ua-net1-backup
    vf_network:
      description: The hostdev network the VF comes from (C(null) with O(vf_address)).
      type: str
      sample: sriov-pf0
    vf_address:
      description: The VF's PCI address (C(null) with O(vf_network)).
      type: str
      sample: null
    backup_network:
      description: The backup's network (C(null) with O(backup_bridge)).
      type: str
      sample: prod
    backup_bridge:
      description: The backup's bridge (C(null) with O(backup_network)).
      type: str
      sample: null
    vf_present:
      description: Whether the VF half is in the definition.
      type: bool
      sample: true
replaced_mode:
  description: The mode of a pair of the same name that this run replaced (or would replace), else C(null).
  returned: success
  type: str
  sample: bond
differences:
  description: How the VM differed from what was asked (empty when nothing had to change).
  returned: success
  type: list
  elements: str
  sample: ["pair net1 is absent"]
actions:
  description: What was done, in order (empty in check mode and when nothing changed).
  returned: always
  type: list
  elements: str
  sample: ["defined the persistent definition with the pair written", "plugged ua-net1-backup", "plugged ua-net1-vf"]
not_undone:
  description:
    - When a live step failed, what of this run's changes stays as it is because its undo failed, or was not
      attempted because the VM had left the host, changed state or started a libvirt job (empty when all was undone).
  returned: failure after a write
  type: list
  elements: str
  sample: ["ua-net1-backup stays plugged into the running VM"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration import modulekit
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import options
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.failover_nic import FailoverNic


def argument_spec() -> dict:
    return options.module_spec("sriov_failover_nic")


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(),
        supports_check_mode=True,
        required_one_of=[("name", "uuid")],
        mutually_exclusive=[("name", "uuid"), ("vf_network", "vf_address"), ("backup_network", "backup_bridge")],
        required_if=[
            ("state", "present", ("vf_network", "vf_address"), True),
            ("state", "present", ("backup_network", "backup_bridge"), True),
        ],
    )
    params = module.params

    def work() -> dict:
        nic = FailoverNic(options.resolve_uri(params["uri"]), params["username"], params["password"])
        return nic.apply(params["name"] or params["uuid"], params["state"], params, params["live"], module.check_mode)

    modulekit.run(module, work)


if __name__ == "__main__":
    main()
