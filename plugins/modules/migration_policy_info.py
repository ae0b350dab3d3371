#!/usr/bin/python
# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: migration_policy_info
short_description: Effective migration settings of VMs, and where each comes from
version_added: 0.1.0
description:
  - For one VM, or every VM of the host, returns the VM's own migration settings (set with
    M(virtops.migration.migration_policy)) and the effective value of each setting with the level
    it came from, V(vm), V(cluster), V(global) or V(default), following the inheritance VM, then
    cluster, then global, then the built-in default (V(inherit) defers to the wider level).
  - Also returns the effective migration policy in full.
author:
  - virtops.migration contributors (@virtops)
extends_documentation_fragment:
  - virtops.migration.connection
  - virtops.migration.attributes
  - virtops.migration.attributes.INFO_MODULE
  - virtops.migration.attributes.ACTIONGROUP_LIBVIRT
options:
  name:
    description:
      - Name or UUID of one VM. Without it, every VM of the host.
    type: str
    version_added: 0.1.0
  cluster_policy:
    description:
      - Cluster-level settings, usually a group variable of the cluster's inventory group. Same keys
        and values as the options of M(virtops.migration.migration_policy).
    type: dict
    default: {}
    version_added: 0.1.0
  global_policy:
    description:
      - Global settings, usually a variable of the C(all) group. Same keys and values as the options
        of M(virtops.migration.migration_policy).
    type: dict
    default: {}
    version_added: 0.1.0
seealso:
  - module: virtops.migration.migration_policy
"""

EXAMPLES = r"""
- name: Effective settings of every VM on this host
  virtops.migration.migration_policy_info:
    cluster_policy: "{{ virtops_cluster_policy | default({}) }}"
    global_policy: "{{ virtops_global_policy | default({}) }}"
  register: policies

- name: VMs that never migrate
  ansible.builtin.debug:
    msg: "{{ policies.vms | selectattr('effective.migration_mode', 'eq', 'none') | map(attribute='name') | list }}"
"""

RETURN = r"""
vms:
  description: One entry per VM, sorted by name.
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: Name of the VM.
      returned: success
      type: str
      sample: db1
    uuid:
      description: UUID of the VM.
      returned: success
      type: str
      sample: 0e4c5a8e-1d35-4bde-9df6-2f3e3bd8f3a1
    own:
      description: The VM's own settings, as stored in its metadata (V({}) when the metadata cannot be read at all).
      returned: success
      type: dict
      sample: {priority: high}
    problems:
      description:
        - Per unreadable setting of the VM's own metadata (V(metadata) for the whole element), why it cannot be read.
          Such settings are left out of the resolution. An unreadable C(migration_mode) or C(pinned_hosts)
          makes the effective C(migration_mode) V(none).
      returned: when some of the VM's own settings cannot be read
      type: dict
      sample: {priority: "metadata.priority must be one of low, medium, high or inherit, got 'urgent'"}
    settings:
      description: Each setting with its effective C(value) and the C(source) level it came from.
      returned: success
      type: dict
      sample: {priority: {value: high, source: vm}, migration_mode: {value: auto, source: default}}
    effective:
      description: Each setting's effective value.
      returned: success
      type: dict
      sample: {priority: high, migration_mode: auto, pinned_hosts: [], policy: minimal_downtime}
    policy:
      description: The effective migration policy in full (see RV(virtops.migration.vm_migrate#module:policy)).
      returned: success
      type: dict
      sample: {name: minimal_downtime, auto_converge: true, max_downtime_ms: 100}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration import modulekit
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import options
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.settings_store import SettingsStore


def argument_spec() -> dict:
    return options.module_spec("migration_policy_info")


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    params = module.params

    def work() -> dict:
        store = SettingsStore(params["uri"], params["username"], params["password"])
        return {"changed": False, "vms": store.info(params["name"], params["cluster_policy"], params["global_policy"])}

    modulekit.run(module, work)


if __name__ == "__main__":
    main()
