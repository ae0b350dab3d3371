# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The ``attributes`` every module of the collection documents."""

from __future__ import annotations


class ModuleDocFragment:
    """Use ``virtops.migration.attributes`` and then one of the variants below."""

    # The attributes themselves; a module adds its support levels with a variant below.
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in C(check_mode) and return the changed status it predicts, without modifying the host.
  diff_mode:
    description: Returns the state before and after (or the predicted after, in C(check_mode)) when in diff mode.
  idempotent:
    description:
      - When run twice in a row outside check mode, with the same arguments, the second run reports no change.
      - This assumes that the hosts and VMs have not changed meanwhile in a way that matters to the module.
"""

    # A module that only reads.
    INFO_MODULE = r"""
options: {}
attributes:
  check_mode:
    support: full
    details:
      - This module does not change anything.
  diff_mode:
    support: N/A
    details:
      - This module does not change anything.
  idempotent:
    support: full
    details:
      - This module does not change anything.
"""

    # Membership of the action group declared in meta/runtime.yml.
    ACTIONGROUP_LIBVIRT = r"""
options: {}
attributes:
  action_group:
    description: Use C(group/virtops.migration.libvirt) in C(module_defaults) to set defaults for this module.
    support: full
    membership:
      - virtops.migration.libvirt
"""
