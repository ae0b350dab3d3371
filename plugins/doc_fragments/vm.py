# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""How a module that acts on one VM names it."""

from __future__ import annotations


class ModuleDocFragment:
    """The O(name) / O(uuid) pair, one of which is required."""

    DOCUMENTATION = r"""
options:
  name:
    description:
      - Name of the VM (libvirt domain) on the host given by O(uri).
      - One of O(name) and O(uuid) is required.
    type: str
    version_added: 0.1.0
  uuid:
    description:
      - UUID of the VM, as an alternative to O(name).
    type: str
    version_added: 0.1.0
"""
