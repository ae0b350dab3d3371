# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""Per-VM migration settings: what each may hold, and their inheritance VM > cluster > global.

A VM's own settings live in its domain metadata (see ``metadata.py``); cluster and global settings
come from inventory variables, passed to modules as ``cluster_policy`` and ``global_policy``. The
effective value of a setting is the VM's, else the cluster's, else the global one, else the built-in
default; the value ``inherit`` at any level defers to the next wider one. Pure logic: no libvirt.
"""

from __future__ import annotations

import typing as t

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import MigrationError
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.policy import (
    BUILTIN_POLICIES,
    COMPRESSION_METHODS,
    DEFAULT_POLICY,
    MAX_BANDWIDTH_MIB,
    MAX_DOWNTIME_MS,
    PolicyError,
    apply_overrides,
    base_policy,
    Policy,
)

INHERIT = "inherit"
LEVELS = ("vm", "cluster", "global")
PRIORITIES = ("low", "medium", "high")
PRIORITY_RANK = {"high": 0, "medium": 1, "low": 2}
MIGRATION_MODES = ("auto", "manual", "none")

# Built-in defaults; None means "the policy's own value".
DEFAULTS: t.Dict[str, t.Any] = {
    "priority": "medium",
    "migration_mode": "auto",
    "pinned_hosts": [],
    "policy": DEFAULT_POLICY,
    "auto_converge": None,
    "compression": None,
    "bandwidth_mib": None,
    "max_downtime_ms": None,
    "guest_hooks": False,
    # Restart the VM on another host when its host fails (ha_recover); needs every disk on shared storage.
    "high_availability": False,
}
SETTING_NAMES = tuple(DEFAULTS)
# The settings that make up a VM's effective migration policy.
POLICY_SETTINGS = ("policy", "auto_converge", "compression", "bandwidth_mib", "max_downtime_ms")


# Words a boolean setting may be given as (key=value task arguments arrive as strings).
_BOOLEAN_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


class SettingsError(MigrationError):
    """A migration setting has a value it cannot hold; nothing has been written."""


def _check_policy(value: t.Any, where: str) -> t.Any:
    if isinstance(value, str) and value not in BUILTIN_POLICIES:
        raise SettingsError("%s.policy: unknown migration policy %r; built-in policies: %s" % (where, value, ", ".join(sorted(BUILTIN_POLICIES))))
    try:
        base_policy(value)
    except PolicyError as exc:
        raise SettingsError("%s.policy: %s" % (where, exc.msg)) from None
    return value


def validate_value(name: str, value: t.Any, where: str = "settings") -> t.Any:
    """The normalised value of one setting, or :class:`SettingsError` naming the problem."""
    if name not in DEFAULTS:
        raise SettingsError("%s: unknown migration setting %r (known: %s)" % (where, name, ", ".join(SETTING_NAMES)))
    if value is None or value == INHERIT:
        return value
    label = "%s.%s" % (where, name)
    if name == "priority":
        if value not in PRIORITIES:
            raise SettingsError("%s must be one of low, medium, high or inherit, got %r" % (label, value))
    elif name == "migration_mode":
        if value not in MIGRATION_MODES:
            raise SettingsError("%s must be one of auto, manual, none or inherit, got %r" % (label, value))
    elif name == "pinned_hosts":
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(h, str) and h for h in value):
            raise SettingsError("%s must be a list of host names, got %r" % (label, value))
        value = sorted(set(value))
    elif name == "policy":
        value = _check_policy(value, where)
    elif name in ("auto_converge", "guest_hooks", "high_availability"):
        if isinstance(value, str) and value.lower() in _BOOLEAN_WORDS:
            value = _BOOLEAN_WORDS[value.lower()]
        if not isinstance(value, bool):
            raise SettingsError("%s must be true, false or inherit, got %r" % (label, value))
    elif name == "compression":
        methods = [value] if isinstance(value, str) else value
        if not isinstance(methods, (list, tuple)) or any(not isinstance(m, str) or m not in COMPRESSION_METHODS for m in methods):
            raise SettingsError("%s must be a list of %s (or inherit), got %r" % (label, ", ".join(COMPRESSION_METHODS), value))
        value = list(methods)
    elif name in ("bandwidth_mib", "max_downtime_ms"):
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        limit = MAX_BANDWIDTH_MIB if name == "bandwidth_mib" else MAX_DOWNTIME_MS
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value > limit:
            raise SettingsError("%s must be a positive whole number up to %d (or inherit), got %r" % (label, limit, value))
    return value


def validate(settings: t.Optional[t.Mapping[str, t.Any]], where: str) -> t.Dict[str, t.Any]:
    """Validate a whole level; ``None`` values are dropped (not set at this level)."""
    if settings is not None and not isinstance(settings, t.Mapping):
        raise SettingsError("%s must be a dictionary of migration settings, got %r" % (where, settings))
    result: t.Dict[str, t.Any] = {}
    for name, value in (settings or {}).items():
        checked = validate_value(name, value, where)
        if checked is not None:
            result[name] = checked
    return result


# Settings that decide whether and where a VM may move: when one cannot be read, the VM does not move.
MOVABILITY_SETTINGS = ("migration_mode", "pinned_hosts")
WHOLE_METADATA = "metadata"


def readable(
    stored: t.Optional[t.Mapping[str, t.Any]], metadata_error: t.Optional[str] = None
) -> t.Tuple[t.Dict[str, t.Any], t.Dict[str, str]]:
    """A VM's own settings as read from its metadata: the usable values, and why each other one is not.

    Each setting is judged on its own, so one bad value (a priority written by hand, say) does not
    drop the others. Unknown names are ignored (metadata written by a newer release). An unreadable
    setting never makes the VM more movable than its readable settings say: when its migration mode
    or its pinned hosts cannot be read, or the metadata as a whole cannot (``metadata_error``), the
    VM counts as ``migration_mode: none``. Problems are keyed by setting name (``metadata`` for the
    whole element).
    """
    problems: t.Dict[str, str] = {}
    values: t.Dict[str, t.Any] = {}
    if metadata_error is not None:
        problems[WHOLE_METADATA] = metadata_error
    for name, value in (stored or {}).items():
        if name not in DEFAULTS:
            continue
        try:
            checked = validate_value(name, value, "metadata")
        except SettingsError as exc:
            problems[name] = exc.msg
            continue
        if checked is not None:
            values[name] = checked
    if any(name in problems for name in MOVABILITY_SETTINGS + (WHOLE_METADATA,)):
        values["migration_mode"] = "none"
    return values, problems


def describe_problems(problems: t.Mapping[str, str]) -> str:
    """One sentence listing unreadable settings, for messages."""
    return "; ".join(problems[name] for name in sorted(problems))


def resolve(
    vm: t.Optional[t.Mapping[str, t.Any]],
    cluster: t.Optional[t.Mapping[str, t.Any]] = None,
    global_: t.Optional[t.Mapping[str, t.Any]] = None,
) -> t.Dict[str, t.Dict[str, t.Any]]:
    """Each setting's effective value and the level it came from (``vm``, ``cluster``, ``global``, ``default``).

    The VM level is read leniently (unknown keys in stored metadata are ignored, so metadata written
    by a newer release does not break an older one); cluster and global levels are validated.
    """
    levels = (
        ("vm", {k: v for k, v in (vm or {}).items() if k in DEFAULTS}),
        ("cluster", validate(cluster, "cluster_policy")),
        ("global", validate(global_, "global_policy")),
    )
    result: t.Dict[str, t.Dict[str, t.Any]] = {}
    for name in SETTING_NAMES:
        result[name] = {"value": DEFAULTS[name], "source": "default"}
        for level, values in levels:
            value = values.get(name)
            if value is not None and value != INHERIT:
                result[name] = {"value": value, "source": level}
                break
    return result


def effective(
    vm: t.Optional[t.Mapping[str, t.Any]],
    cluster: t.Optional[t.Mapping[str, t.Any]] = None,
    global_: t.Optional[t.Mapping[str, t.Any]] = None,
) -> t.Dict[str, t.Any]:
    """Each setting's effective value."""
    return {name: entry["value"] for name, entry in resolve(vm, cluster, global_).items()}


def effective_policy(
    values: t.Mapping[str, t.Any],
    policy: t.Any = None,
    overrides: t.Optional[t.Mapping[str, t.Any]] = None,
) -> Policy:
    """The migration policy for a VM's effective settings ``values``.

    ``policy`` (a task's own choice) replaces the effective policy and the single settings inherited
    with it; ``overrides`` (a task's own single settings) apply last.
    """
    result = base_policy(policy if policy is not None else values.get("policy"))
    if policy is None:
        result = apply_overrides(result, {name: values.get(name) for name in POLICY_SETTINGS if name != "policy"})
    return apply_overrides(result, overrides or {})
