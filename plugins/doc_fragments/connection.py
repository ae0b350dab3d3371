# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The libvirt connection options every module of the collection shares."""

from __future__ import annotations


class ModuleDocFragment:
    """Options of ``plugins/module_utils/_migration/connection.py``."""

    DOCUMENTATION = r"""
options:
  uri:
    description:
      - The libvirt connection URI of the hypervisor host, for example V(qemu:///system) on the host
        itself, or V(qemu+ssh://root@host1/system) or V(qemu+tcp://host1/system) from elsewhere.
      - If not set, the E(LIBVIRT_DEFAULT_URI) environment variable of the managed node is used, and
        V(qemu:///system) when that is not set either. An empty string behaves the same way.
      - Set it once for all modules of the collection with C(module_defaults) and the
        C(group/virtops.migration.libvirt) action group.
    type: str
    default: qemu:///system
    version_added: 0.1.0
  username:
    description:
      - User name given when libvirt asks for one while connecting (SASL or SSH authentication).
      - If not set, libvirt's own default is used (for example the user in O(uri)).
    type: str
    version_added: 0.1.0
  password:
    description:
      - Password or passphrase given when libvirt asks for one while connecting (SASL or SSH
        authentication).
      - Never logged. Prefer key-based SSH or TLS authentication where possible.
    type: str
    version_added: 0.1.0
requirements:
  - libvirt-python (the C(libvirt) Python bindings) on the managed node.
"""
