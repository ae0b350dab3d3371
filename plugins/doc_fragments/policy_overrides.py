# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The single policy settings a task may override (argument spec: ``options.POLICY_OVERRIDES``)."""

from __future__ import annotations


class ModuleDocFragment:
    """Single settings on top of the migration policy, documented once."""

    DOCUMENTATION = r"""
options:
  auto_converge:
    description:
      - Throttle the VM's vCPUs when the migration does not converge.
    type: bool
    version_added: 0.1.0
  compression:
    description:
      - Compression methods for the migration stream, for example V([xbzrle]).
      - V(xbzrle) and V(mt) work with a single connection. V(zlib) and V(zstd) compress
        O(parallel_connections) streams; libvirt 9.0 (Debian 12) refuses them with "Unsupported
        compression method", and the VM stays where it is.
    type: list
    elements: str
    version_added: 0.1.0
  bandwidth_mib:
    description:
      - Maximum bandwidth of the migration, in MiB/s. By default the hypervisor's own limit.
    type: int
    version_added: 0.1.0
  max_downtime_ms:
    description:
      - The initial maximum downtime, in milliseconds.
    type: int
    version_added: 0.1.0
  downtime_schedule:
    description:
      - The convergence schedule, replacing the policy's. A list of steps, each with C(stalled)
        (the number of memory iterations without progress after which the step applies, increasing
        from step to step), C(action) (V(downtime), V(post_copy), V(suspend) or V(abort)) and, for
        V(downtime), C(downtime_ms).
    type: list
    elements: dict
    version_added: 0.1.0
  post_copy:
    description:
      - Allow switching to post-copy (by the schedule or by O(timeout_action=post_copy)).
      - Cannot be combined with O(parallel_connections).
    type: bool
    version_added: 0.1.0
  parallel_connections:
    description:
      - Send the memory over this many parallel connections (QEMU multifd).
    type: int
    version_added: 0.1.0
"""
