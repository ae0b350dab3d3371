# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The libvirt connection options every module of the collection shares."""

from __future__ import annotations


class ModuleDocFragment:
    """Options of ``plugins/module_utils/_migration/libvirt_io/connection.py``."""

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
      - libvirt first reads its client authentication file on the managed node the module runs on, the file
        named by the URI parameter C(authfile=) or the E(LIBVIRT_AUTH_FILE) environment variable, else
        C($XDG_CONFIG_HOME/libvirt/auth.conf), else C(/etc/libvirt/auth.conf). O(username) and O(password)
        are given only for what that file does not provide.
      - libvirtd accepts SCRAM-SHA-256 and other SASL mechanisms without a security layer only on TLS
        connections (V(qemu+tls://...)). On a plain V(qemu+tcp://...) connection it requires a SASL
        mechanism that encrypts, such as GSSAPI (Kerberos).
    type: str
    version_added: 0.1.0
  password:
    description:
      - Password or passphrase given when libvirt asks for one while connecting (SASL or SSH
        authentication).
      - Never logged. Prefer key-based SSH or TLS authentication where possible.
      - Asked for only when libvirt's client authentication file does not provide it, and for SASL
        mechanisms without encryption (SCRAM-SHA-256) only on V(qemu+tls://...) connections; see
        O(username).
    type: str
    version_added: 0.1.0
requirements:
  - libvirt-python (the C(libvirt) Python bindings) on the managed node.
"""
