#!/usr/bin/python
# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: migration_policy
short_description: Set a VM's own migration priority, mode, pinning and policy
version_added: 0.1.0
description:
  - Keeps a VM's migration settings in the VM's own domain XML C(<metadata>), in the live
    definition (if it runs) and the persistent one (if it has one), so they travel with the VM when
    it migrates and survive restarts. Nothing is kept elsewhere.
  - Settings are inherited VM, then cluster, then global, then the built-in default. This module
    sets the VM level; cluster and global levels are inventory variables that roles pass to
    modules as C(cluster_policy) and C(global_policy). V(inherit) removes a setting from the VM
    level so the wider level applies.
  - M(virtops.migration.vm_migrate) and the maintenance role read the effective settings.
    O(migration_mode=none) refuses every migration; V(manual) allows a migration asked for by name
    but keeps the VM out of evacuations unless confirmed; O(pinned_hosts) restricts destinations.
  - Invalid values are refused with a message naming the setting, and nothing is written.
  - Right before writing, the module checks again that the VM is still on the host, in the state it
    was read in (running or shut off, persistent or transient), and runs no libvirt job such as a live
    migration; otherwise it fails naming the VM, the host and the job or the change, and writes
    nothing (settings written on a host the VM is leaving would not travel with it).
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
      - The VM-level settings before and after.
  idempotent:
    support: full
options:
  state:
    description:
      - V(present) sets the settings given and keeps the others as they are.
      - V(absent) removes all of the VM's own migration settings (only the collection's metadata
        element; other metadata stays), so every setting is inherited.
    type: str
    choices: [present, absent]
    default: present
    version_added: 0.1.0
  priority:
    description:
      - Migration priority. Evacuations migrate V(high) VMs first, then V(medium), then V(low).
    type: str
    choices: [low, medium, high, inherit]
    version_added: 0.1.0
  migration_mode:
    description:
      - V(auto) allows automatic and manual migration, V(manual) only migrations asked for by name,
        V(none) no migration at all.
    type: str
    choices: [auto, manual, none, inherit]
    version_added: 0.1.0
  pinned_hosts:
    description:
      - Host names (as M(virtops.migration.host_info) reports them) the VM may run on. An empty list
        means any host. V(inherit) (as a string) removes the setting.
    type: raw
    version_added: 0.1.0
  policy:
    description:
      - Migration policy, a built-in name (see M(virtops.migration.vm_migrate)) or a custom policy
        as a dictionary, or V(inherit).
    type: raw
    version_added: 0.1.0
  auto_converge:
    description:
      - Throttle the VM's vCPUs when a migration does not converge. V(true), V(false) or V(inherit).
    type: raw
    version_added: 0.1.0
  compression:
    description:
      - Compression methods for the migration stream, for example V([xbzrle]), or V(inherit).
    type: raw
    version_added: 0.1.0
  bandwidth_mib:
    description:
      - Maximum migration bandwidth in MiB/s, or V(inherit).
    type: raw
    version_added: 0.1.0
  max_downtime_ms:
    description:
      - Initial maximum downtime in milliseconds, or V(inherit).
    type: raw
    version_added: 0.1.0
  guest_hooks:
    description:
      - Run the guest's own hooks around a migration (C(before_migration) in the guest on its source
        host, C(after_migration) on its destination), through the QEMU guest agent and the runner the
        role C(virtops.migration.guest_hooks) installs.
        RHV's equivalent is the migration policy's guest-events switch. V(true), V(false) or V(inherit).
      - The built-in default is V(false). The O(virtops.migration.vm_migrate#module:guest_hooks) and
        O(virtops.migration.host_maintenance#module:guest_hooks) options override it for one run.
    type: raw
    version_added: 0.2.0
  high_availability:
    description:
      - Restart the VM on another host when its host fails (M(virtops.migration.ha_recover)), as RHV's
        highly available VMs. V(true), V(false) or V(inherit); the built-in default is V(false).
      - V(true) needs O(shared_storage), and every disk of the VM on it (a file or block device under that
        path, or a network disk); otherwise the module fails naming the disks, and writes nothing.
    type: raw
    version_added: 0.2.0
  shared_storage:
    description:
      - The cluster's shared storage, a directory every host mounts at the same path, usually the inventory
        variable C(virtops_shared_storage). When given, the VM's definition is written into the
        high-availability store there when O(high_availability=true), and removed when V(false).
    type: path
    version_added: 0.2.0
notes:
  - The settings are stored under the namespace C(https://virtops.github.io/xmlns/migration/1).
seealso:
  - module: virtops.migration.migration_policy_info
  - module: virtops.migration.vm_migrate
"""

EXAMPLES = r"""
- name: Make db1 a high-priority VM that migrates only when asked, on hv2 or hv3
  virtops.migration.migration_policy:
    name: db1
    priority: high
    migration_mode: manual
    pinned_hosts: [hv2, hv3]

- name: Give batch7 its own migration policy with XBZRLE compression
  virtops.migration.migration_policy:
    name: batch7
    policy: suspend_workload
    compression: [xbzrle]
    bandwidth_mib: 256

- name: Let batch7 follow the cluster's bandwidth again
  virtops.migration.migration_policy:
    name: batch7
    bandwidth_mib: inherit

- name: Never migrate the licence server
  virtops.migration.migration_policy:
    name: licence1
    migration_mode: none

- name: Make web1 highly available (its disks are on the shared storage)
  virtops.migration.migration_policy:
    name: web1
    high_availability: true
    shared_storage: /srv/virtops-shared

- name: Drop every VM-level setting of web1
  virtops.migration.migration_policy:
    name: web1
    state: absent
"""

RETURN = r"""
vm:
  description: Name of the VM.
  returned: success
  type: str
  sample: db1
settings:
  description: The VM's own settings after the change (or as they would be, in check mode).
  returned: success
  type: dict
  sample: {priority: high, migration_mode: manual, pinned_hosts: [hv2, hv3]}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration import modulekit
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import options
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.settings import SETTING_NAMES
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.settings_store import SettingsStore


def argument_spec() -> dict:
    return options.module_spec("migration_policy")


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(),
        supports_check_mode=True,
        required_one_of=[("name", "uuid")],
        mutually_exclusive=[("name", "uuid")],
    )
    params = module.params

    def work() -> dict:
        wanted = {key: params[key] for key in SETTING_NAMES if params.get(key) is not None}
        store = SettingsStore(params["uri"], params["username"], params["password"])
        return store.apply(params["name"] or params["uuid"], params["state"], wanted, module.check_mode, params["shared_storage"])

    modulekit.run(module, work)


if __name__ == "__main__":
    main()
