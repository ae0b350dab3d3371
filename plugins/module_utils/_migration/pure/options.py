# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""The option groups the modules share, each defined once with its constraints, and their parsing.

Each group's argument spec sits next to the doc fragment that documents it:

* :data:`CONNECTION` -- ``uri``, ``username``, ``password`` (doc fragment ``connection``);
* :data:`VM` -- ``name`` / ``uuid`` (doc fragment ``vm``);
* :data:`RUN` -- inherited settings, monitoring, destination reserve, state directory (doc
  fragment ``migration_run``), with the ranges in :data:`RUN_RANGES`;
* :data:`POLICY_OVERRIDES` -- the single policy settings a task may override (doc fragment
  ``policy_overrides``); their names are ``policy.OVERRIDES`` and their value rules live in
  ``policy.apply_overrides``.

Adding a policy setting touches ``policy.py`` (the setting and its rule), :data:`POLICY_OVERRIDES`
(its option type) and the doc fragment. Everything here is checked before any connection is
opened. Pure logic: no libvirt import.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import typing as t

from ansible.module_utils.basic import env_fallback

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import settings
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.plan import Candidate, RunOptions, tunnel_conflicts
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.placement import DEFAULT_MEMORY_RESERVED_MIB
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.policy import (
    Policy,
    PolicyError,
    apply_overrides,
    base_policy,
    check_number,
)
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.statefiles import DEFAULT_STATE_DIR

Spec = t.Dict[str, t.Dict[str, t.Any]]

DEFAULT_URI = "qemu:///system"
URI_ENVIRONMENT_VARIABLE = "LIBVIRT_DEFAULT_URI"

CONNECTION: Spec = {
    "uri": {"type": "str", "default": DEFAULT_URI, "fallback": (env_fallback, [URI_ENVIRONMENT_VARIABLE])},
    "username": {"type": "str"},
    "password": {"type": "str", "no_log": True},
}

VM: Spec = {"name": {"type": "str"}, "uuid": {"type": "str"}}

RUN: Spec = {
    "cluster_policy": {"type": "dict", "default": {}},
    "global_policy": {"type": "dict", "default": {}},
    "monitor_interval": {"type": "float", "default": 10.0},
    "wait_sleep": {"type": "float", "default": 0.5},
    "memory_reserved_mib": {"type": "int", "default": DEFAULT_MEMORY_RESERVED_MIB},
    "state_dir": {"type": "path", "default": DEFAULT_STATE_DIR},
    "unplug_timeout": {"type": "float", "default": 30.0},
    "guest_hooks": {"type": "bool"},
    "guest_hook_failure": {"type": "str", "choices": ["warn", "abort"], "default": "warn"},
    "guest_hook_timeout": {"type": "float", "default": 60.0},
}

MAX_TIMEOUT_S = 7 * 24 * 3600
MAX_MEMORY_RESERVED_MIB = 2**40
# (minimum, maximum, whole number, minimum excluded) of the numeric options of RUN.
RUN_RANGES: t.Dict[str, t.Tuple[float, float, bool, bool]] = {
    "wait_sleep": (0, 60.0, False, True),
    "monitor_interval": (0, 3600.0, False, True),
    "memory_reserved_mib": (0, MAX_MEMORY_RESERVED_MIB, True, False),
    "unplug_timeout": (0, 3600.0, False, True),
    "guest_hook_timeout": (0, 3600.0, False, True),
}

POLICY_OVERRIDES: Spec = {
    "auto_converge": {"type": "bool"},
    "compression": {"type": "list", "elements": "str"},
    "bandwidth_mib": {"type": "int"},
    "max_downtime_ms": {"type": "int"},
    "downtime_schedule": {"type": "list", "elements": "dict"},
    "post_copy": {"type": "bool"},
    "parallel_connections": {"type": "int"},
}


def spec(*groups: Spec, **own: t.Dict[str, t.Any]) -> Spec:
    """A module's argument spec: fresh copies of the shared groups, then its own options."""
    result: Spec = {}
    for group in groups:
        result.update(copy.deepcopy(group))
    result.update(own)
    return result


def resolve_uri(uri: t.Optional[str], environ: t.Optional[t.Mapping[str, str]] = None) -> str:
    """The URI to open: ``uri`` if set, else ``$LIBVIRT_DEFAULT_URI``, else ``qemu:///system``."""
    if uri:
        return uri
    env = os.environ if environ is None else environ
    return env.get(URI_ENVIRONMENT_VARIABLE) or DEFAULT_URI


def check_run_numbers(params: t.Mapping[str, t.Any]) -> None:
    """Range-check the numeric options of :data:`RUN`."""
    for name, (low, high, whole, exclusive) in RUN_RANGES.items():
        if params.get(name) is not None:
            check_number(params[name], name, low, high, whole=whole, exclusive_minimum=exclusive)


def run_options(params: t.Mapping[str, t.Any], **changes: t.Any) -> RunOptions:
    """The job runner's options from a module's parameters (only those the module has)."""
    values = {
        "poll_interval": params.get("wait_sleep") or RUN["wait_sleep"]["default"],
        "monitor_interval": params.get("monitor_interval") or RUN["monitor_interval"]["default"],
        "state_dir": params.get("state_dir") or DEFAULT_STATE_DIR,
        "unplug_timeout": params.get("unplug_timeout") or RUN["unplug_timeout"]["default"],
        "guest_hook_failure": params.get("guest_hook_failure") or RUN["guest_hook_failure"]["default"],
        "guest_hook_timeout": params.get("guest_hook_timeout") or RUN["guest_hook_timeout"]["default"],
        "username": params.get("username"),
        "password": params.get("password"),
        "tunnelled": bool(params.get("tunnelled")),
    }
    values.update(changes)
    return RunOptions(**values)


# The options libvirt refuses together with a tunnelled migration, and why.
TUNNEL_EXCLUDES = {
    "tls": "QEMU's own TLS needs its direct stream; a tunnelled stream is protected by the libvirt connection "
    "to the destination (qemu+ssh, qemu+tls, SASL) instead",
    "migrate_uri": "a tunnelled stream goes through the destination's libvirtd, not to an address of QEMU's",
    "listen_address": "the destination's QEMU does not listen for a tunnelled stream",
}


def check_tunnelled(params: t.Mapping[str, t.Any]) -> None:
    """Refuse, before any connection, the options libvirt refuses with ``tunnelled=true``."""
    if not params.get("tunnelled"):
        return
    refused = ["%s (%s)" % (name, why) for name, why in TUNNEL_EXCLUDES.items() if params.get(name)]
    if params.get("timeout_action") == "post_copy":
        refused.append("timeout_action=post_copy (libvirt does not support post-copy with tunnelled migration)")
    if refused:
        raise PolicyError("tunnelled=true cannot be combined with %s. Nothing was changed." % "; ".join(refused))


def policy_overrides(params: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """The single policy settings a task gave."""
    return {key: params.get(key) for key in POLICY_OVERRIDES if params.get(key) is not None}


def parse_candidates(raw: t.Optional[t.Sequence[t.Any]]) -> t.List[Candidate]:
    """Candidates given as URIs or as ``{uri, name, maintenance, memory_reserved_mib}`` dictionaries."""
    result = []
    known = ("uri", "name", "maintenance", "memory_reserved_mib")
    for index, item in enumerate(raw or []):
        if isinstance(item, str) and item:
            result.append(Candidate(uri=item))
            continue
        if not (isinstance(item, t.Mapping) and isinstance(item.get("uri"), str) and item["uri"]):
            raise PolicyError("candidates[%d] must be a libvirt URI or a dictionary with a 'uri', got %r" % (index, item))
        unknown = sorted(set(item) - set(known))
        if unknown:
            raise PolicyError("candidates[%d] has unknown keys: %s (known: %s)" % (index, ", ".join(unknown), ", ".join(known)))
        reserve = item.get("memory_reserved_mib")
        if reserve is not None:
            check_number(reserve, "candidates[%d].memory_reserved_mib" % index, 0, MAX_MEMORY_RESERVED_MIB, whole=True)
        maintenance = item.get("maintenance", False)
        if maintenance is None:
            maintenance = False
        if not isinstance(maintenance, bool):
            raise PolicyError("candidates[%d].maintenance must be true or false, got %r" % (index, maintenance))
        name = item.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            raise PolicyError("candidates[%d].name must be a non-empty string, got %r" % (index, name))
        result.append(Candidate(uri=item["uri"], name=name, maintenance=maintenance, memory_reserved_mib=reserve))
    return result


@dataclasses.dataclass
class MigrateRequest:
    """Everything one ``vm_migrate`` run was asked to do."""

    vm: str
    source_uri: str
    candidates: t.List[Candidate]
    policy: Policy
    options: RunOptions = dataclasses.field(default_factory=RunOptions)
    auto: bool = False
    # Other hosts the VM may already be on (a repeat run, or a job a lost run left running).
    elsewhere: t.List[Candidate] = dataclasses.field(default_factory=list)
    policy_option: t.Any = None
    overrides: t.Dict[str, t.Any] = dataclasses.field(default_factory=dict)
    cluster_policy: t.Dict[str, t.Any] = dataclasses.field(default_factory=dict)
    global_policy: t.Dict[str, t.Any] = dataclasses.field(default_factory=dict)
    live: bool = True
    persistent: bool = True
    allow_unsafe_cache: bool = False
    timeout: t.Optional[int] = None
    memory_reserved_mib: int = 0
    # Run the guest's hooks around the move; None: the VM's own setting decides.
    guest_hooks: t.Optional[bool] = None


def migrate_request(params: t.Mapping[str, t.Any]) -> MigrateRequest:
    """Validate ``vm_migrate``'s parameters into a :class:`MigrateRequest`; refuse bad input before any connection."""
    overrides = policy_overrides(params)
    # Validated now, so that bad input fails before any connection; the VM's own settings join in later.
    policy = apply_overrides(base_policy(params.get("policy")), overrides)
    check_tunnelled(params)
    # The task's own policy and settings; what the VM inherits is checked once it has been read.
    conflicts = tunnel_conflicts(policy) if params.get("tunnelled") else []
    if conflicts:
        origin = "the task's settings" if params.get("policy") is None else "the task's policy '%s'" % policy.name
        raise PolicyError("tunnelled=true cannot be combined with %s: %s. Nothing was changed." % (origin, "; ".join(conflicts)))
    cluster_policy = settings.validate(params.get("cluster_policy"), "cluster_policy")
    global_policy = settings.validate(params.get("global_policy"), "global_policy")
    if params.get("timeout") is not None:
        check_number(params["timeout"], "timeout", 1, MAX_TIMEOUT_S, whole=True)
    check_run_numbers(params)
    candidates = parse_candidates(params.get("candidates"))
    elsewhere: t.List[Candidate] = []
    auto = params.get("destination") == "auto"
    if params.get("state", "migrated") == "migrated":
        if auto and not candidates:
            raise PolicyError("destination=auto needs at least one host in candidates")
        if params.get("destination_uri"):
            named = [candidate for candidate in candidates if candidate.uri == params["destination_uri"]]
            elsewhere = [candidate for candidate in candidates if candidate.uri != params["destination_uri"]]
            # What the caller knows of the named host (maintenance, name, reserve) still applies.
            candidates = named[:1] or [Candidate(uri=params["destination_uri"])]
    options = run_options(
        params,
        undefine_source=params.get("undefine_source", True),
        tls=params.get("tls", False),
        unsafe_storage=params.get("unsafe_storage", False),
        migrate_uri=params.get("migrate_uri"),
        listen_address=params.get("listen_address"),
        wait=params.get("wait", True),
        timeout_action=params.get("timeout_action") or "abort",
    )
    return MigrateRequest(
        vm=params.get("name") or params.get("uuid") or "",
        source_uri=resolve_uri(params.get("uri")),
        candidates=candidates,
        elsewhere=elsewhere,
        policy=policy,
        options=options,
        auto=auto,
        policy_option=params.get("policy"),
        overrides=overrides,
        cluster_policy=cluster_policy,
        global_policy=global_policy,
        live=params.get("live", True),
        persistent=params.get("persistent", True),
        guest_hooks=params.get("guest_hooks"),
        allow_unsafe_cache=params.get("allow_unsafe_cache", False),
        timeout=params.get("timeout"),
        memory_reserved_mib=params.get("memory_reserved_mib") or 0,
    )
