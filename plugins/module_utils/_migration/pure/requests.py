# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""What one module run was asked to do: :class:`MigrateRequest` (``vm_migrate``),
:class:`MaintenanceRequest` (``host_maintenance``), :class:`HibernateRequest` (``vm_hibernate``),
:class:`ClusterBalanceRequest` (``cluster_balance``) and :class:`HaRecoverRequest` (``ha_recover``),
each built from the module's parameters by one function that refuses bad input before any connection.

An option missing from the parameters (or None) takes its default from the option tables of
``options.py``; so do the requests' own fields (a dictionary's as a fresh copy for each request). Pure logic: no libvirt import.
"""

from __future__ import annotations

import dataclasses
import typing as t

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import affinity, ha, settings, storage
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.options import (
    CLUSTER_BALANCE,
    CONNECTION,
    HA_RECOVER,
    HOST_MAINTENANCE,
    RESERVE_RANGE,
    RUN,
    STORAGE,
    VM_HIBERNATE,
    VM_MIGRATE,
    check_ranges,
    check_tunnelled,
    policy_overrides,
    resolve_uri,
    with_defaults,
)
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.plan import Candidate, RunOptions, tunnel_conflicts
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.policy import (
    Policy,
    PolicyError,
    apply_overrides,
    base_policy,
    check_number,
)


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
            check_number(reserve, "candidates[%d].memory_reserved_mib" % index, RESERVE_RANGE.minimum, RESERVE_RANGE.maximum, whole=RESERVE_RANGE.whole)
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


# The fields of the requests and of RunOptions hold the option of the same name, but for these.
OPTION_OF_FIELD = {"poll_interval": "wait_sleep", "policy_option": "policy"}

Built = t.TypeVar("Built")


def from_params(built: t.Type[Built], params: t.Mapping[str, t.Any], **computed: t.Any) -> Built:
    """A ``built`` (a dataclass) whose fields are the options in ``params`` (see :data:`OPTION_OF_FIELD`), but for ``computed``."""
    values = {
        field.name: params[OPTION_OF_FIELD.get(field.name, field.name)]
        for field in dataclasses.fields(t.cast(t.Any, built))
        if field.name not in computed
    }
    values.update(computed)
    return built(**values)


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
    policy_option: t.Any = VM_MIGRATE["policy"].default
    overrides: t.Dict[str, t.Any] = dataclasses.field(default_factory=dict)
    cluster_policy: t.Dict[str, t.Any] = dataclasses.field(default_factory=RUN["cluster_policy"].missing_value)
    global_policy: t.Dict[str, t.Any] = dataclasses.field(default_factory=RUN["global_policy"].missing_value)
    live: bool = VM_MIGRATE["live"].default
    persistent: bool = VM_MIGRATE["persistent"].default
    allow_unsafe_cache: bool = VM_MIGRATE["allow_unsafe_cache"].default
    timeout: t.Optional[int] = VM_MIGRATE["timeout"].default
    memory_reserved_mib: int = RUN["memory_reserved_mib"].default
    # Run the guest's hooks around the move; None: the VM's own setting decides.
    guest_hooks: t.Optional[bool] = RUN["guest_hooks"].default
    # The option affinity_groups, validated.
    groups: t.Tuple[affinity.AffinityGroup, ...] = ()
    # Which disks move with the VM (storage.py), and the cluster's shared storage (normalised) that auto leaves alone.
    storage: str = STORAGE["storage"].default
    shared_storage: t.Optional[str] = STORAGE["shared_storage"].default


def migrate_request(params: t.Mapping[str, t.Any]) -> MigrateRequest:
    """Validate ``vm_migrate``'s parameters into a :class:`MigrateRequest`; refuse bad input before any connection."""
    params = with_defaults("vm_migrate", params)
    overrides = policy_overrides(params)
    # Validated now, so that bad input fails before any connection; the VM's own settings join in later.
    policy = apply_overrides(base_policy(params["policy"]), overrides)
    check_tunnelled(params)
    # The task's own policy and settings; what the VM inherits is checked once it has been read.
    conflicts = tunnel_conflicts(policy) if params["tunnelled"] else []
    if conflicts:
        origin = "the task's settings" if params["policy"] is None else "the task's policy '%s'" % policy.name
        raise PolicyError("tunnelled=true cannot be combined with %s: %s. Nothing was changed." % (origin, "; ".join(conflicts)))
    cluster_policy = settings.validate(params["cluster_policy"], "cluster_policy")
    global_policy = settings.validate(params["global_policy"], "global_policy")
    check_ranges("vm_migrate", params)
    candidates = parse_candidates(params["candidates"])
    elsewhere: t.List[Candidate] = []
    auto = params["destination"] == "auto"
    if params["state"] == "migrated":
        if auto and not candidates:
            raise PolicyError("destination=auto needs at least one host in candidates")
        if params["destination_uri"]:
            named = [candidate for candidate in candidates if candidate.uri == params["destination_uri"]]
            elsewhere = [candidate for candidate in candidates if candidate.uri != params["destination_uri"]]
            # What the caller knows of the named host (maintenance, name, reserve) still applies.
            candidates = named[:1] or [Candidate(uri=params["destination_uri"])]
    return from_params(
        MigrateRequest,
        params,
        vm=params["name"] or params["uuid"],
        source_uri=resolve_uri(params["uri"]),
        candidates=candidates,
        elsewhere=elsewhere,
        policy=policy,
        options=from_params(RunOptions, params),
        auto=auto,
        overrides=overrides,
        cluster_policy=cluster_policy,
        global_policy=global_policy,
        groups=affinity.parse_groups(params["affinity_groups"]),
        shared_storage=storage.check_shared_storage(params["shared_storage"]),
    )


@dataclasses.dataclass
class MaintenanceRequest:
    """Everything one ``host_maintenance`` run was asked to do."""

    uri: str
    state: str
    candidates: t.List[Candidate]
    include_manual: bool = HOST_MAINTENANCE["include_manual"].default
    non_migratable: str = HOST_MAINTENANCE["non_migratable"].default
    shutdown_timeout: int = HOST_MAINTENANCE["shutdown_timeout"].default
    max_outgoing: int = HOST_MAINTENANCE["max_outgoing"].default
    max_incoming: int = HOST_MAINTENANCE["max_incoming"].default
    memory_reserved_mib: int = RUN["memory_reserved_mib"].default
    reason: t.Optional[str] = HOST_MAINTENANCE["reason"].default
    requested_by: t.Optional[str] = HOST_MAINTENANCE["requested_by"].default
    cluster_policy: t.Dict[str, t.Any] = dataclasses.field(default_factory=RUN["cluster_policy"].missing_value)
    global_policy: t.Dict[str, t.Any] = dataclasses.field(default_factory=RUN["global_policy"].missing_value)
    monitor_interval: float = RUN["monitor_interval"].default
    # The option wait_sleep.
    poll_interval: float = RUN["wait_sleep"].default
    state_dir: str = RUN["state_dir"].default
    log_dir: str = HOST_MAINTENANCE["log_dir"].default
    username: t.Optional[str] = CONNECTION["username"].default
    password: t.Optional[str] = CONNECTION["password"].default
    require_hook: bool = HOST_MAINTENANCE["require_hook"].default
    unplug_timeout: float = RUN["unplug_timeout"].default
    # Run the guests' hooks around their moves; None: each VM's own setting decides.
    guest_hooks: t.Optional[bool] = RUN["guest_hooks"].default
    guest_hook_failure: str = RUN["guest_hook_failure"].default
    guest_hook_timeout: float = RUN["guest_hook_timeout"].default
    # Live moves go through the libvirt connections (VIR_MIGRATE_TUNNELLED).
    tunnelled: bool = HOST_MAINTENANCE["tunnelled"].default
    # Move VMs whose writable disks use a cache mode that may hold writes the destination does not see.
    allow_unsafe_cache: bool = HOST_MAINTENANCE["allow_unsafe_cache"].default
    # The option affinity_groups, validated.
    groups: t.Tuple[affinity.AffinityGroup, ...] = ()
    # Which disks move with each VM (storage.py), the cluster's shared storage (normalised) that auto leaves alone,
    # the guests' writes sent to both copies of a disk being copied, and the copied source disks deleted after a verified move.
    storage: str = STORAGE["storage"].default
    shared_storage: t.Optional[str] = STORAGE["shared_storage"].default
    synchronous_writes: bool = STORAGE["synchronous_writes"].default
    remove_source_disks: bool = STORAGE["remove_source_disks"].default


def maintenance_request(params: t.Mapping[str, t.Any]) -> MaintenanceRequest:
    """Validate ``host_maintenance``'s parameters into a :class:`MaintenanceRequest` before any connection."""
    params = with_defaults("host_maintenance", params)
    check_ranges("host_maintenance", params)
    candidates = parse_candidates(params["candidates"])
    if params["state"] == "maintenance" and not candidates:
        raise PolicyError("state=maintenance needs the other hosts of the cluster in candidates")
    return from_params(
        MaintenanceRequest,
        params,
        uri=resolve_uri(params["uri"]),
        candidates=candidates,
        cluster_policy=settings.validate(params["cluster_policy"], "cluster_policy"),
        global_policy=settings.validate(params["global_policy"], "global_policy"),
        groups=affinity.parse_groups(params["affinity_groups"]),
        shared_storage=storage.check_shared_storage(params["shared_storage"]),
    )


@dataclasses.dataclass
class HibernateRequest:
    """Everything one ``vm_hibernate`` run was asked to do."""

    vm: str
    uri: str
    state: str = VM_HIBERNATE["state"].default
    guest_hooks: bool = VM_HIBERNATE["guest_hooks"].default
    guest_hook_failure: str = RUN["guest_hook_failure"].default
    guest_hook_timeout: float = RUN["guest_hook_timeout"].default
    username: t.Optional[str] = CONNECTION["username"].default
    password: t.Optional[str] = CONNECTION["password"].default


def hibernate_request(params: t.Mapping[str, t.Any]) -> HibernateRequest:
    """Validate ``vm_hibernate``'s parameters into a :class:`HibernateRequest`; refuse bad input before any connection."""
    params = with_defaults("vm_hibernate", params)
    check_ranges("vm_hibernate", params)
    return from_params(
        HibernateRequest,
        params,
        vm=params["name"] or params["uuid"],
        uri=resolve_uri(params["uri"]),
        guest_hook_timeout=float(params["guest_hook_timeout"]),
    )


@dataclasses.dataclass
class ClusterBalanceRequest:
    """Everything one ``cluster_balance`` run was asked to do."""

    hosts: t.List[Candidate]
    policy: str = CLUSTER_BALANCE["policy"].default
    cpu_high: float = CLUSTER_BALANCE["cpu_high"].default
    cpu_low: float = CLUSTER_BALANCE["cpu_low"].default
    memory_high: float = CLUSTER_BALANCE["memory_high"].default
    memory_low: float = CLUSTER_BALANCE["memory_low"].default
    vm_count_high: int = CLUSTER_BALANCE["vm_count_high"].default
    vm_count_threshold: int = CLUSTER_BALANCE["vm_count_threshold"].default
    max_moves: t.Optional[int] = CLUSTER_BALANCE["max_moves"].default
    min_improvement: float = CLUSTER_BALANCE["min_improvement"].default
    cooldown: int = CLUSTER_BALANCE["cooldown"].default
    samples: int = CLUSTER_BALANCE["samples"].default
    sample_interval: float = CLUSTER_BALANCE["sample_interval"].default
    failback_hosts: t.List[str] = dataclasses.field(default_factory=CLUSTER_BALANCE["failback_hosts"].missing_value)
    failback_vms: t.List[str] = dataclasses.field(default_factory=CLUSTER_BALANCE["failback_vms"].missing_value)
    max_outgoing: int = CLUSTER_BALANCE["max_outgoing"].default
    max_incoming: int = CLUSTER_BALANCE["max_incoming"].default
    reason: t.Optional[str] = CLUSTER_BALANCE["reason"].default
    requested_by: t.Optional[str] = CLUSTER_BALANCE["requested_by"].default
    log_dir: str = CLUSTER_BALANCE["log_dir"].default
    tunnelled: bool = CLUSTER_BALANCE["tunnelled"].default
    allow_unsafe_cache: bool = CLUSTER_BALANCE["allow_unsafe_cache"].default
    memory_reserved_mib: int = RUN["memory_reserved_mib"].default
    cluster_policy: t.Dict[str, t.Any] = dataclasses.field(default_factory=RUN["cluster_policy"].missing_value)
    global_policy: t.Dict[str, t.Any] = dataclasses.field(default_factory=RUN["global_policy"].missing_value)
    # Run the guests' hooks around their moves; None: each VM's own setting decides.
    guest_hooks: t.Optional[bool] = RUN["guest_hooks"].default
    groups: t.Tuple[affinity.AffinityGroup, ...] = ()
    options: RunOptions = dataclasses.field(default_factory=RunOptions)


def balance_request(params: t.Mapping[str, t.Any]) -> ClusterBalanceRequest:
    """Validate ``cluster_balance``'s parameters into a :class:`ClusterBalanceRequest` before any connection."""
    params = with_defaults("cluster_balance", params)
    check_ranges("cluster_balance", params)
    hosts = parse_candidates(params["hosts"])
    if not hosts:
        raise PolicyError("hosts must list every host of the cluster (cluster_facts_candidates); it is empty")
    names = [host.name for host in hosts if host.name]
    for low, high in (("cpu_low", "cpu_high"), ("memory_low", "memory_high")):
        if params[low] > params[high]:
            raise PolicyError("%s (%s) must not be above %s (%s)" % (low, params[low], high, params[high]))
    unknown = sorted(set(params["failback_hosts"]) - set(names)) if names else []
    if unknown:
        raise PolicyError("failback_hosts names host(s) that are not in hosts: %s" % ", ".join(unknown))
    options = RunOptions(
        poll_interval=params["wait_sleep"],
        monitor_interval=params["monitor_interval"],
        state_dir=params["state_dir"],
        username=params["username"],
        password=params["password"],
        unplug_timeout=params["unplug_timeout"],
        guest_hook_failure=params["guest_hook_failure"],
        guest_hook_timeout=params["guest_hook_timeout"],
        tunnelled=params["tunnelled"],
    )
    return from_params(
        ClusterBalanceRequest,
        params,
        hosts=hosts,
        failback_hosts=list(params["failback_hosts"]),
        failback_vms=list(params["failback_vms"]),
        cluster_policy=settings.validate(params["cluster_policy"], "cluster_policy"),
        global_policy=settings.validate(params["global_policy"], "global_policy"),
        groups=affinity.parse_groups(params["affinity_groups"], hosts=names if len(names) == len(hosts) else None),
        options=options,
    )


HA_HOST_KEYS = ("ssh_host", "ssh_port", "fence_command")


def parse_ha_hosts(raw: t.Any) -> t.List[ha.HaHost]:
    """The option ``hosts``: candidate dictionaries (``name`` required) with ``ssh_host``, ``ssh_port``, ``fence_command``."""
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ha.HaError("hosts must list every host of the cluster, got %r" % (raw,))
    result = []
    names: t.Set[str] = set()
    for index, item in enumerate(raw):
        if not isinstance(item, t.Mapping) or not item.get("name") or not isinstance(item.get("uri"), str) or not item["uri"]:
            raise ha.HaError("hosts[%d] must be a dictionary with a 'name' and a 'uri', got %r" % (index, item))
        candidate = parse_candidates([{key: value for key, value in item.items() if key not in HA_HOST_KEYS}])[0]
        name = ha.check_host_name(str(item["name"]))
        if name in names:
            raise ha.HaError("hosts: %s is listed twice" % name)
        names.add(name)
        port = item.get("ssh_port")
        port = 22 if port in (None, "") else port
        if isinstance(port, str) and port.isdigit():
            port = int(port)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ha.HaError("hosts[%d].ssh_port must be a TCP port, got %r" % (index, item.get("ssh_port")))
        fence = item.get("fence_command") or ()
        if isinstance(fence, str) or not isinstance(fence, (list, tuple)) or not all(isinstance(word, str) and word for word in fence):
            raise ha.HaError("hosts[%d].fence_command must be a list of words (the command and its arguments), got %r" % (index, fence))
        ssh_host = item.get("ssh_host") or name
        if not isinstance(ssh_host, str):
            raise ha.HaError("hosts[%d].ssh_host must be a host name or address, got %r" % (index, ssh_host))
        result.append(ha.HaHost(name=name, candidate=candidate, ssh_host=ssh_host, ssh_port=port, fence_command=tuple(fence)))
    return result


@dataclasses.dataclass
class HaRecoverRequest:
    """One ``ha_recover`` run: the cluster's hosts, its shared storage, how a failure is decided and fenced."""

    hosts: t.List[ha.HaHost]
    shared_storage: str
    checks: int = HA_RECOVER["checks"].default
    check_interval: float = HA_RECOVER["check_interval"].default
    connect_timeout: float = HA_RECOVER["connect_timeout"].default
    without_fence: str = HA_RECOVER["without_fence"].default
    fence_timeout: int = HA_RECOVER["fence_timeout"].default
    reason: t.Optional[str] = HA_RECOVER["reason"].default
    requested_by: t.Optional[str] = HA_RECOVER["requested_by"].default
    username: t.Optional[str] = CONNECTION["username"].default
    password: t.Optional[str] = CONNECTION["password"].default
    memory_reserved_mib: int = RUN["memory_reserved_mib"].default
    cluster_policy: t.Dict[str, t.Any] = dataclasses.field(default_factory=RUN["cluster_policy"].missing_value)
    global_policy: t.Dict[str, t.Any] = dataclasses.field(default_factory=RUN["global_policy"].missing_value)
    groups: t.Tuple[affinity.AffinityGroup, ...] = ()


def ha_recover_request(params: t.Mapping[str, t.Any]) -> HaRecoverRequest:
    """Validate ``ha_recover``'s parameters into a :class:`HaRecoverRequest` before any connection."""
    params = with_defaults("ha_recover", params)
    check_ranges("ha_recover", params)
    hosts = parse_ha_hosts(params["hosts"])
    return from_params(
        HaRecoverRequest,
        params,
        hosts=hosts,
        shared_storage=ha.check_shared_storage(params["shared_storage"]),
        cluster_policy=settings.validate(params["cluster_policy"], "cluster_policy"),
        global_policy=settings.validate(params["global_policy"], "global_policy"),
        groups=affinity.parse_groups(params["affinity_groups"], hosts=[host.name for host in hosts]),
    )
