#!/usr/bin/python
# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: sriov_network
short_description: A libvirt hostdev network that hands out the SR-IOV VFs of one PF
version_added: 0.2.0
description:
  - Defines C(<network><name/><forward mode='hostdev' managed='yes'><pf dev='PF'/></forward></network>), starts
    it and sets its autostart flag. M(virtops.migration.sriov_failover_nic) draws VFs from such a network
    (O(virtops.migration.sriov_failover_nic#module:vf_network)); give it the same name on every host.
  - A network of that name that already exists over the same PF is left as it is (started and its autostart
    set if needed). One over another PF, or in another forward mode, is refused with both named, and left alone.
  - When libvirt refuses to start the network (no such PF, or a PF with no VFs enabled, in libvirt's words
    C(No usable Vf's present on SRIOV PF <pf>)), the module fails with libvirt's reason and removes the
    definition it made in that run, so nothing is left behind.
  - V(absent) stops and removes a hostdev network that no running VM uses; it refuses a network in another
    forward mode, or one whose VFs are in use.
author:
  - virtops.migration contributors (@virtops)
extends_documentation_fragment:
  - virtops.migration.connection
  - virtops.migration.attributes
  - virtops.migration.attributes.ACTIONGROUP_LIBVIRT
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - The network's definition, whether it is active and its autostart flag, before and after.
  idempotent:
    support: full
options:
  name:
    description:
      - Name of the libvirt network.
    type: str
    required: true
    version_added: 0.2.0
  pf:
    description:
      - The SR-IOV physical function's network device name on the host (for example V(enp59s0f0)). Its VFs must
        be enabled (C(/sys/class/net/<pf>/device/sriov_numvfs)) before the network can start.
      - Required with O(state=present).
    type: str
    version_added: 0.2.0
  state:
    description:
      - V(present) defines and starts the network; V(absent) stops and removes it.
    type: str
    choices: [present, absent]
    default: present
    version_added: 0.2.0
  autostart:
    description:
      - Start the network when libvirtd starts.
    type: bool
    default: true
    version_added: 0.2.0
seealso:
  - module: virtops.migration.sriov_failover_nic
  - name: libvirt network XML, forward mode hostdev
    description: A pool of SR-IOV VFs as a libvirt network.
    link: https://libvirt.org/formatnetwork.html#connectivity
"""

EXAMPLES = r"""
- name: The VF pool of PF enp59s0f0 as network sriov-pf0, on every host
  virtops.migration.sriov_network:
    name: sriov-pf0
    pf: enp59s0f0

- name: Remove it
  virtops.migration.sriov_network:
    name: sriov-pf0
    state: absent
"""

RETURN = r"""
network:
  description: The network after the run (or as it would be, in check mode); C(null) when absent.
  returned: success
  type: dict
  contains:
    name:
      description: Name of the network.
      type: str
      sample: sriov-pf0
    forward_mode:
      description: Its forward mode.
      type: str
      sample: hostdev
    pf:
      description: The PF its VFs come from.
      type: str
      sample: enp59s0f0
    managed:
      description: Whether libvirt binds the VFs to vfio-pci itself.
      type: bool
      sample: true
    active:
      description: Whether it is started.
      type: bool
      sample: true
    persistent:
      description: Whether it has a persistent definition.
      type: bool
      sample: true
    autostart:
      description: Whether it starts with libvirtd.
      type: bool
      sample: true
    vfs:
      description: PCI addresses of the VFs the started network found on the PF.
      type: list
      elements: str
      sample: ["0000:3b:10.0", "0000:3b:10.2"]
    connections:
      description: How many VFs running VMs use.
      type: int
      sample: 0
uri:
  description: The libvirt URI the module used.
  returned: always
  type: str
  sample: qemu:///system
actions:
  description: What was done, in order (empty in check mode and when nothing changed).
  returned: always
  type: list
  elements: str
  sample: ["defined network sriov-pf0 over PF enp59s0f0", "started network sriov-pf0", "set autostart of network sriov-pf0 to True"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration import modulekit
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import options
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.sriov_network import SriovNetwork


def argument_spec() -> dict:
    return options.module_spec("sriov_network")


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(),
        supports_check_mode=True,
        required_if=[("state", "present", ("pf",))],
    )
    params = module.params

    def work() -> dict:
        network = SriovNetwork(options.resolve_uri(params["uri"]), params["username"], params["password"])
        return network.apply(params["name"], params["pf"], params["state"], params["autostart"], module.check_mode)

    modulekit.run(module, work)


if __name__ == "__main__":
    main()
