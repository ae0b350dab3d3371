# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: maintenance_report
short_description: A readable table of a host_maintenance result
version_added: 0.1.0
description:
  - Turns the result of M(virtops.migration.host_maintenance) (success or failure, check mode or
    not) into lines of text. The plan, in start order, with each VM's priority, memory, source,
    destination, kind and policy; then, when migrations ran, the order they started in with their
    duration, downtime and outcome; then VMs blocked, shut down, kept or unplaceable with the
    reason; then the load per destination.
author:
  - virtops.migration contributors (@virtops)
options:
  _input:
    description: A registered result of M(virtops.migration.host_maintenance).
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Evacuate
  virtops.migration.host_maintenance:
    candidates: "{{ candidates }}"
  register: evacuation

- name: Show what happened
  ansible.builtin.debug:
    msg: "{{ evacuation | virtops.migration.maintenance_report }}"
"""

RETURN = r"""
_value:
  description: The report, one line per list item.
  type: list
  elements: str
"""

import typing as t


def _plan_lines(plan: t.Mapping[str, t.Any]) -> t.List[str]:
    lines = ["Plan for %s:" % (plan.get("source") or {}).get("name", "the host")]
    lines.append("  %-3s %-16s %-7s %8s  %-12s %-12s %-8s %s" % ("#", "VM", "prio", "MiB", "from", "to", "kind", "policy"))
    for index, move in enumerate(plan.get("moves") or [], 1):
        lines.append(
            "  %-3d %-16s %-7s %8s  %-12s %-12s %-8s %s"
            % (index, move.get("vm"), move.get("priority"), move.get("memory_mib"), move.get("from"), move.get("to"), move.get("kind"), move.get("policy"))
        )
    for key in ("blocked", "shutdown", "kept", "unplaceable"):
        for held in plan.get(key) or []:
            lines.append("  %s: %s" % (key, held.get("reason")))
    return lines


def _run_lines(vms: t.Sequence[t.Mapping[str, t.Any]]) -> t.List[str]:
    lines = ["Migrations, in the order they started:"]
    lines.append("  %-7s %-16s %-7s %-12s %-12s %8s %9s  %s" % ("start s", "VM", "prio", "from", "to", "took s", "down ms", "outcome"))
    for record in sorted(vms, key=lambda item: item.get("started_at_s") or 0):
        outcome = record.get("outcome") or "?"
        if record.get("error"):
            outcome += ": %s" % record["error"]
        lines.append(
            "  %7.1f %-16s %-7s %-12s %-12s %8s %9s  %s"
            % (
                record.get("started_at_s") or 0,
                record.get("vm"),
                record.get("priority"),
                record.get("from"),
                record.get("to"),
                record.get("duration_s", "-"),
                record.get("downtime_ms") if record.get("downtime_ms") is not None else "-",
                outcome,
            )
        )
    return lines


def _load_lines(plan: t.Mapping[str, t.Any], load: t.Mapping[str, t.Any]) -> t.List[str]:
    lines = ["Load per destination (planned VMs, MiB planned, MiB free for guests before -> after%s):" % (", now" if load else "")]
    for name, entry in sorted((plan.get("load") or {}).items()):
        now = load.get(name, {}).get("available_mib") if load else None
        before, after = entry.get("available_mib_before"), entry.get("available_mib_after")
        suffix = "" if now is None else ", now %s" % now
        lines.append("  %-12s %3s VMs %8s MiB  %8s -> %8s%s" % (name, entry.get("vms"), entry.get("memory_mib"), before, after, suffix))
    return lines


def maintenance_report(result: t.Mapping[str, t.Any]) -> t.List[str]:
    """Lines describing a host_maintenance result."""
    lines: t.List[str] = []
    if result.get("msg"):
        lines.append(str(result["msg"]))
    plan = result.get("plan") or {}
    if plan:
        lines.extend(_plan_lines(plan))
    if result.get("vms"):
        lines.extend(_run_lines(result["vms"]))
    if result.get("shutdown"):
        lines.append("Shut down for the maintenance: %s" % ", ".join(result["shutdown"]))
    if plan.get("load"):
        lines.extend(_load_lines(plan, result.get("load") or {}))
    if result.get("maintenance"):
        mark = result["maintenance"]
        lines.append("In maintenance since %s (reason: %s, by: %s)" % (mark.get("since"), mark.get("reason") or "-", mark.get("by") or "-"))
    if result.get("timings"):
        phases = ", ".join("%s %.1f s" % (name, seconds) for name, seconds in result["timings"].items())
        lines.append("Time per phase: %s" % phases)
    return lines


class FilterModule:
    """The collection's filters."""

    def filters(self) -> t.Dict[str, t.Callable[..., t.Any]]:
        return {"maintenance_report": maintenance_report}
