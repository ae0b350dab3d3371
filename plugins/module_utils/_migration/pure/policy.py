# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""Migration policies: the built-in ones, custom ones, and their convergence schedules.

A policy says how a live migration is run (auto-converge, compression, bandwidth, parallel
connections, post-copy allowed) and how it is pushed to converge: an initial maximum downtime, then
schedule steps applied as memory iterations go by without progress (the data remaining does not
shrink). A step raises the maximum downtime, switches to post-copy, suspends the VM, or aborts.

The built-in schedules are those of oVirt's engine (``MigrationPolicies``), whose steps vdsm
applies one at a time, at most one per monitor check that finds a new, stalling memory iteration.
Pure logic: no libvirt import.
"""

from __future__ import annotations

import dataclasses
import math
import typing as t

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import MigrationError

ACTIONS = ("downtime", "post_copy", "suspend", "abort")
TIMEOUT_ACTIONS = ("abort", "post_copy", "suspend")
COMPRESSION_METHODS = ("xbzrle", "mt", "zlib", "zstd")

# Largest values libvirt and QEMU can carry: libvirt's own bandwidth ceiling (INT64_MAX bytes/s in
# MiB/s), QEMU's 2000 s maximum downtime, QEMU's 255 multifd channels.
MAX_BANDWIDTH_MIB = (2**63 - 1) // (1024 * 1024)
MAX_DOWNTIME_MS = 2000 * 1000
MAX_PARALLEL_CONNECTIONS = 255
MAX_CONCURRENT = 64
MAX_STALLED = 10000

# Completion timeout per GiB of guest memory (KubeVirt's default), and a floor for small guests.
TIMEOUT_SECONDS_PER_GIB = 150
MIN_TIMEOUT_SECONDS = 120


class PolicyError(MigrationError):
    """A policy, a schedule or a migration option is invalid; nothing has been started."""


@dataclasses.dataclass(frozen=True)
class Step:
    """Apply ``action`` once ``stalled`` memory iterations have passed without progress."""

    stalled: int
    action: str
    downtime_ms: t.Optional[int] = None

    def as_dict(self) -> t.Dict[str, t.Any]:
        result: t.Dict[str, t.Any] = {"stalled": self.stalled, "action": self.action}
        if self.downtime_ms is not None:
            result["downtime_ms"] = self.downtime_ms
        return result


@dataclasses.dataclass(frozen=True)
class Policy:
    """The effective settings of one live migration."""

    name: str
    max_concurrent: int = 2
    auto_converge: bool = False
    compression: t.Tuple[str, ...] = ()
    bandwidth_mib: t.Optional[int] = None
    initial_downtime_ms: int = 300
    schedule: t.Tuple[Step, ...] = ()
    post_copy: bool = False
    parallel_connections: t.Optional[int] = None

    def as_dict(self) -> t.Dict[str, t.Any]:
        return {
            "name": self.name,
            "max_concurrent": self.max_concurrent,
            "auto_converge": self.auto_converge,
            "compression": list(self.compression),
            "bandwidth_mib": self.bandwidth_mib,
            "max_downtime_ms": self.initial_downtime_ms,
            "downtime_schedule": [step.as_dict() for step in self.schedule],
            "post_copy": self.post_copy,
            "parallel_connections": self.parallel_connections,
        }


def _downtimes(pairs: t.Sequence[t.Tuple[int, int]]) -> t.Tuple[Step, ...]:
    return tuple(Step(stalled, "downtime", ms) for stalled, ms in pairs)


_OVIRT_STEPS = ((1, 150), (2, 200), (3, 300), (4, 400), (6, 500))

BUILTIN_POLICIES: t.Dict[str, Policy] = {
    "minimal_downtime": Policy(
        name="minimal_downtime",
        max_concurrent=2,
        auto_converge=True,
        initial_downtime_ms=100,
        schedule=_downtimes(_OVIRT_STEPS) + (Step(7, "abort"),),
    ),
    "suspend_workload": Policy(
        name="suspend_workload",
        max_concurrent=1,
        auto_converge=True,
        compression=("xbzrle",),
        initial_downtime_ms=100,
        schedule=_downtimes(_OVIRT_STEPS + ((7, 5000),)) + (Step(8, "abort"),),
    ),
    "post_copy": Policy(
        name="post_copy",
        max_concurrent=2,
        auto_converge=True,
        initial_downtime_ms=100,
        schedule=_downtimes(((1, 150), (2, 200))) + (Step(3, "post_copy"),),
        post_copy=True,
    ),
    "very_large_vms": Policy(
        name="very_large_vms",
        max_concurrent=1,
        initial_downtime_ms=300,
        schedule=_downtimes(((1, 400), (2, 500), (3, 700), (4, 1000), (6, 1500), (7, 5000))) + (Step(8, "abort"),),
    ),
    "legacy": Policy(name="legacy", max_concurrent=2, initial_downtime_ms=300),
}
DEFAULT_POLICY = "minimal_downtime"

# The single settings a task may override on top of a policy.
OVERRIDES = (
    "auto_converge",
    "compression",
    "bandwidth_mib",
    "max_downtime_ms",
    "downtime_schedule",
    "post_copy",
    "parallel_connections",
)


def _positive_int(value: t.Any, what: str, allow_zero: bool = False, maximum: t.Optional[int] = None) -> int:
    if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
        raise PolicyError("%s must be a whole number, got %r" % (what, value))
    if isinstance(value, str):
        value = value.strip()
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise PolicyError("%s must be a whole number, got %r" % (what, value)) from None
    if number < 0 or (number == 0 and not allow_zero):
        raise PolicyError("%s must be %s, got %d" % (what, "zero or more" if allow_zero else "positive", number))
    if maximum is not None and number > maximum:
        raise PolicyError("%s must be at most %d, got %d" % (what, maximum, number))
    return number


def check_number(
    value: t.Any, what: str, minimum: float, maximum: float, whole: bool = False, exclusive_minimum: bool = False
) -> t.Any:
    """``value`` if it is a finite number in range, else :class:`PolicyError` naming ``what`` and the range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or isinstance(value, float) and not math.isfinite(value):
        raise PolicyError("%s must be a %s, got %r" % (what, "whole number" if whole else "number", value))
    if whole and isinstance(value, float) and not value.is_integer():
        raise PolicyError("%s must be a whole number, got %r" % (what, value))
    low_ok = value > minimum if exclusive_minimum else value >= minimum
    if not low_ok or value > maximum:
        raise PolicyError(
            "%s must be %s %s and at most %s, got %s"
            % (what, "more than" if exclusive_minimum else "at least", _plain(minimum), _plain(maximum), _plain(value))
        )
    return value


def _plain(number: float) -> str:
    if isinstance(number, int):
        return str(number)
    return str(int(number)) if number.is_integer() else str(number)


def parse_schedule(steps: t.Sequence[t.Mapping[str, t.Any]], what: str = "downtime_schedule") -> t.Tuple[Step, ...]:
    """Validate a schedule given as ``[{stalled: N, action: downtime|post_copy|suspend|abort, downtime_ms: M}]``.

    ``action`` defaults to ``downtime`` when ``downtime_ms`` is given. Steps must be in increasing
    order of ``stalled``; nothing may follow ``abort``.
    """
    result: t.List[Step] = []
    if isinstance(steps, (str, bytes)) or not isinstance(steps, t.Sequence):
        raise PolicyError("%s must be a list of steps, got %r" % (what, steps))
    for index, raw in enumerate(steps):
        where = "%s[%d]" % (what, index)
        if not isinstance(raw, t.Mapping):
            raise PolicyError("%s must be a mapping with 'stalled' and 'action', got %r" % (where, raw))
        unknown = sorted(set(raw) - {"stalled", "action", "downtime_ms"})
        if unknown:
            raise PolicyError("%s has unknown keys: %s" % (where, ", ".join(unknown)))
        action = raw.get("action") or ("downtime" if raw.get("downtime_ms") is not None else None)
        if action not in ACTIONS:
            raise PolicyError("%s.action must be one of %s, got %r" % (where, ", ".join(ACTIONS), raw.get("action")))
        stalled = _positive_int(raw.get("stalled"), where + ".stalled", maximum=MAX_STALLED)
        downtime = None
        if action == "downtime":
            if raw.get("downtime_ms") is None:
                raise PolicyError("%s raises the downtime but gives no downtime_ms" % where)
            downtime = _positive_int(raw["downtime_ms"], where + ".downtime_ms", maximum=MAX_DOWNTIME_MS)
        elif raw.get("downtime_ms") is not None:
            raise PolicyError("%s: downtime_ms goes only with action downtime, not %s" % (where, action))
        if result and stalled <= result[-1].stalled:
            raise PolicyError(
                "%s.stalled (%d) must be greater than the step before (%d)" % (where, stalled, result[-1].stalled)
            )
        if result and result[-1].action == "abort":
            raise PolicyError("%s follows an abort step and would never run" % where)
        result.append(Step(stalled, action, downtime))
    return tuple(result)


def _compression(value: t.Any) -> t.Tuple[str, ...]:
    if isinstance(value, str):
        methods = [value]
    elif isinstance(value, (list, tuple)):
        methods = list(value)
    else:
        raise PolicyError("compression must be a list of methods among %s, got %r" % (", ".join(COMPRESSION_METHODS), value))
    bad = [m for m in methods if not isinstance(m, str) or m not in COMPRESSION_METHODS]
    if bad:
        raise PolicyError(
            "compression methods must be among %s, got %s" % (", ".join(COMPRESSION_METHODS), ", ".join(map(str, bad)))
        )
    return tuple(methods)


def base_policy(policy: t.Union[None, str, t.Mapping[str, t.Any]]) -> Policy:
    """A built-in policy by name, or a custom one given as a mapping (optionally ``based_on`` a built-in)."""
    if policy is None:
        return BUILTIN_POLICIES[DEFAULT_POLICY]
    if isinstance(policy, str):
        if policy not in BUILTIN_POLICIES:
            raise PolicyError(
                "unknown migration policy %r; built-in policies: %s" % (policy, ", ".join(sorted(BUILTIN_POLICIES)))
            )
        return BUILTIN_POLICIES[policy]
    if not isinstance(policy, t.Mapping):
        raise PolicyError("policy must be a built-in policy name or a mapping, got %r" % (policy,))
    custom = dict(policy)
    based_on = custom.pop("based_on", "legacy")
    if not isinstance(based_on, str):
        raise PolicyError("policy.based_on must be a built-in policy name, got %r" % (based_on,))
    base = base_policy(based_on)
    name = custom.pop("name", "custom")
    if not isinstance(name, str) or not name:
        raise PolicyError("policy.name must be a non-empty string, got %r" % (name,))
    return apply_overrides(dataclasses.replace(base, name=name), custom)


def apply_overrides(policy: Policy, overrides: t.Mapping[str, t.Any]) -> Policy:
    """Return ``policy`` with the given settings replaced; ``None`` values leave a setting alone."""
    known = {"max_concurrent", *OVERRIDES}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise PolicyError("unknown policy settings: %s (known: %s)" % (", ".join(unknown), ", ".join(sorted(known))))
    changes: t.Dict[str, t.Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "max_concurrent":
            changes[key] = _positive_int(value, key, maximum=MAX_CONCURRENT)
        elif key in ("auto_converge", "post_copy"):
            if not isinstance(value, bool):
                raise PolicyError("%s must be true or false, got %r" % (key, value))
            changes[key] = value
        elif key == "compression":
            changes[key] = _compression(value)
        elif key == "bandwidth_mib":
            changes[key] = _positive_int(value, "bandwidth_mib", maximum=MAX_BANDWIDTH_MIB)
        elif key == "max_downtime_ms":
            changes["initial_downtime_ms"] = _positive_int(value, key, maximum=MAX_DOWNTIME_MS)
        elif key == "downtime_schedule":
            changes["schedule"] = parse_schedule(value)
        elif key == "parallel_connections":
            changes[key] = _positive_int(value, key, maximum=MAX_PARALLEL_CONNECTIONS)
    result = dataclasses.replace(policy, **changes)
    validate(result)
    return result


def validate(policy: Policy) -> None:
    """Refuse combinations libvirt/QEMU cannot run."""
    if policy.post_copy and policy.parallel_connections:
        raise PolicyError(
            "post_copy cannot be combined with parallel_connections (QEMU does not support post-copy with multifd)"
        )
    if any(step.action == "post_copy" for step in policy.schedule) and not policy.post_copy:
        raise PolicyError("policy %r switches to post-copy in its schedule but post_copy is not enabled" % policy.name)
    if policy.parallel_connections and "xbzrle" in policy.compression:
        raise PolicyError("xbzrle compression cannot be combined with parallel_connections (multifd)")


def default_timeout(memory_mib: int) -> int:
    """Completion timeout for a guest of ``memory_mib``: 150 s per GiB, at least 120 s."""
    return max(MIN_TIMEOUT_SECONDS, int(TIMEOUT_SECONDS_PER_GIB * memory_mib / 1024.0 + 0.5))


class ScheduleTracker:
    """Follows a migration job's statistics and says which schedule steps are due.

    Fed one reading per convergence check. A reading from a new memory iteration "stalls" when the
    data remaining is not lower than the lowest seen at any earlier check. At most one step is due
    per stalling reading, as vdsm applies them.
    """

    def __init__(self, schedule: t.Sequence[Step]) -> None:
        self.pending = list(schedule)
        self.iteration = -1
        self.lowest_remaining: t.Optional[int] = None
        self.stalled = 0

    def observe(self, iteration: t.Optional[int], remaining: t.Optional[int]) -> t.Optional[Step]:
        """Feed one poll of job stats; return the step to apply now, if any."""
        if iteration is None or remaining is None or iteration <= self.iteration:
            return None
        first = self.iteration < 0
        self.iteration = iteration
        if self.lowest_remaining is not None and remaining >= self.lowest_remaining:
            self.stalled += 1
        if self.lowest_remaining is None or remaining < self.lowest_remaining:
            self.lowest_remaining = remaining
        if first or not self.pending or self.pending[0].stalled > self.stalled:
            return None
        return self.pending.pop(0)
