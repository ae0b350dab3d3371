#!/usr/bin/python
# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: evacuation_watch
short_description: Wait for a host evacuation running in the background and show its progress
version_added: 0.2.0
description:
  - Waits for a M(virtops.migration.host_maintenance) run started with C(async) and C(poll=0) on the
    managed node, and returns that run's result once it ends, as M(ansible.builtin.async_status) would.
  - Every O(interval) seconds it looks at the job and, while the job runs, reads the evacuation's
    progress file and prints one line on the controller's standard error (moves ended out of the total,
    failures, the moves running now), as the role virtops.migration.host_maintenance shows it. The
    lines are also returned in RV(progress).
  - The whole wait is one task, however long the evacuation takes.
  - Runs on the controller (an action plugin) and runs M(ansible.builtin.async_status) and
    M(ansible.builtin.slurp) on the managed node.
options:
  jid:
    description: The job ID of the background M(virtops.migration.host_maintenance) run (C(ansible_job_id)).
    type: str
    required: true
    version_added: 0.2.0
  progress_file:
    description: The evacuation's progress file on the managed node (C(evacuation.json) in the state directory).
    type: path
    required: true
    version_added: 0.2.0
  interval:
    description: Seconds between two looks at the job.
    type: float
    default: 10
    version_added: 0.2.0
  timeout:
    description:
      - Seconds after which the watch gives up with a failure while the job still runs. The job itself
        goes on until its own C(async) limit.
    type: int
    default: 86400
    version_added: 0.2.0
  host:
    description: The name the progress lines start with; the inventory host name by default.
    type: str
    version_added: 0.2.0
extends_documentation_fragment:
  - virtops.migration.attributes
  - virtops.migration.attributes.INFO_MODULE
seealso:
  - module: virtops.migration.host_maintenance
  - module: ansible.builtin.async_status
author:
  - virtops.migration contributors (@virtops)
"""

EXAMPLES = r"""
- name: Evacuate the host in the background
  virtops.migration.host_maintenance:
    state: maintenance
    candidates: "{{ cluster_candidates }}"
  async: 86400
  poll: 0
  register: evacuation

- name: Show the evacuation's progress until it ends
  virtops.migration.evacuation_watch:
    jid: "{{ evacuation.ansible_job_id }}"
    progress_file: /var/lib/virtops-migration/evacuation.json
    interval: 10
  register: evacuation
"""

RETURN = r"""
finished:
  description: Always true once the module returns without a timeout; the job's own result keys come with it.
  returned: success
  type: bool
  sample: true
polls:
  description: How many times the job was looked at.
  returned: always
  type: int
  sample: 42
progress:
  description: The progress lines shown while the job ran, each one once (a repeated line is kept once).
  returned: always
  type: list
  elements: str
  sample: ["h1: 1 of 3 moves ended (0 failed); moving now: web1 -> h2"]
ansible_job_id:
  description: The job ID.
  returned: always
  type: str
  sample: "j123456789.1234"
"""
