# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""Every module option, defined once: its type, default, choices, range, aliases and a line of doc.

Each group is a table of :class:`Option` records; the shared ones sit next to the doc fragment
that documents them:

* :data:`CONNECTION` -- ``uri``, ``username``, ``password`` (doc fragment ``connection``);
* :data:`VM` -- ``name`` / ``uuid`` (doc fragment ``vm``);
* :data:`RUN` -- inherited settings, monitoring, destination reserve, state directory, affinity
  groups (doc fragment ``migration_run``);
* :data:`STORAGE` -- how the disks of a VM move: ``storage``, ``synchronous_writes``,
  ``remove_source_disks`` and ``shared_storage`` (doc fragment ``storage``);
* :data:`POLICY_OVERRIDES` -- the single policy settings a task may override (doc fragment
  ``policy_overrides``); their names are ``policy.OVERRIDES`` and their value rules live in
  ``policy.apply_overrides``;
* one group per module for the options only that module takes (:data:`VM_MIGRATE`,
  :data:`HOST_MAINTENANCE`, ...), documented in the module itself.

:data:`MODULES` lists, for each module, the groups (or the named options of a group) it takes.
From these tables come each module's argument spec (:func:`module_spec`), the range checks of
its numeric options (:func:`check_ranges`), the values a request is built from
(:func:`with_defaults`, see ``requests.py``) and the defaults of ``plan.RunOptions``. Adding an
option touches its group here, the module's (or fragment's) DOCUMENTATION, and whatever reads it.
Everything here is checked before any connection is opened. Pure logic: no libvirt import.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import typing as t

from ansible.module_utils.basic import env_fallback
from ansible.module_utils.errors import AnsibleFallbackNotFound

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.hostinfo import OPTIONAL_PARTS
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.placement import DEFAULT_MEMORY_RESERVED_MIB
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.policy import PolicyError, check_number
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.statefiles import DEFAULT_LOG_DIR, DEFAULT_STATE_DIR

Spec = t.Dict[str, t.Dict[str, t.Any]]


class Range(t.NamedTuple):
    """The values a numeric option accepts (``policy.check_number`` words the refusal)."""

    minimum: float
    maximum: float
    whole: bool = False
    exclusive_minimum: bool = False


@dataclasses.dataclass(frozen=True)
class Option:
    """One module option: what ``AnsibleModule`` needs of it, its range, and a line saying what it is."""

    doc: str
    type: str = "str"
    default: t.Any = None
    choices: t.Optional[t.Tuple[t.Any, ...]] = None
    elements: t.Optional[str] = None
    range: t.Optional[Range] = None
    aliases: t.Tuple[str, ...] = ()
    no_log: bool = False
    required: bool = False
    fallback: t.Optional[t.Tuple[t.Any, ...]] = None

    def spec(self) -> t.Dict[str, t.Any]:
        """This option's entry in an argument spec (a fresh copy)."""
        result: t.Dict[str, t.Any] = {"type": self.type}
        if self.elements is not None:
            result["elements"] = self.elements
        if self.required:
            result["required"] = True
        if self.choices is not None:
            result["choices"] = list(self.choices)
        if self.default is not None:
            result["default"] = copy.deepcopy(self.default)
        if self.aliases:
            result["aliases"] = list(self.aliases)
        if self.no_log:
            result["no_log"] = True
        if self.fallback is not None:
            result["fallback"] = self.fallback
        return result

    def missing_value(self) -> t.Any:
        """The value of this option when a task does not set it: its fallback's, else its default (a fresh copy)."""
        if self.fallback is not None:
            args: t.Sequence[t.Any] = []
            kwargs: t.Mapping[str, t.Any] = {}
            for item in self.fallback[1:]:
                if isinstance(item, t.Mapping):
                    kwargs = item
                else:
                    args = item
            try:
                return self.fallback[0](*args, **kwargs)
            except AnsibleFallbackNotFound:
                pass
        return copy.deepcopy(self.default)


Group = t.Dict[str, Option]

DEFAULT_URI = "qemu:///system"
URI_ENVIRONMENT_VARIABLE = "LIBVIRT_DEFAULT_URI"
MAX_TIMEOUT_S = 7 * 24 * 3600
MAX_MEMORY_RESERVED_MIB = 2**40
# Memory a host keeps back for itself: the option memory_reserved_mib, and a candidate's own.
RESERVE_RANGE = Range(0, MAX_MEMORY_RESERVED_MIB, whole=True)
# Seconds a guest's hook runner may take for one event, at most (its own per-hook timeouts should be shorter).
MAX_HOOK_TIMEOUT_S = 3600.0

CONNECTION: Group = {
    "uri": Option("libvirt connection URI of the host", default=DEFAULT_URI, fallback=(env_fallback, [URI_ENVIRONMENT_VARIABLE])),
    "username": Option("user name given when libvirt asks for one"),
    "password": Option("password given when libvirt asks for one", no_log=True),
}

VM: Group = {
    "name": Option("name of the VM"),
    "uuid": Option("UUID of the VM, instead of its name"),
}

RUN: Group = {
    "cluster_policy": Option("cluster-level migration settings", type="dict", default={}),
    "global_policy": Option("global migration settings", type="dict", default={}),
    "monitor_interval": Option("seconds between two convergence checks", type="float", default=10.0, range=Range(0, 3600.0, exclusive_minimum=True)),
    "wait_sleep": Option("seconds between two readings of a job's statistics", type="float", default=0.5, range=Range(0, 60.0, exclusive_minimum=True)),
    "memory_reserved_mib": Option("MiB each destination keeps back for itself", type="int", default=DEFAULT_MEMORY_RESERVED_MIB, range=RESERVE_RANGE),
    "state_dir": Option("the collection's state directory on the host", type="path", default=DEFAULT_STATE_DIR),
    "unplug_timeout": Option("seconds a guest may take to release an SR-IOV VF", type="float", default=30.0, range=Range(0, 3600.0, exclusive_minimum=True)),
    "guest_hooks": Option("run the guest's hooks around each move; unset: the VM's setting decides", type="bool"),
    "guest_hook_failure": Option("what a failed before-hook does", choices=("warn", "abort"), default="warn"),
    "guest_hook_timeout": Option(
        "seconds one run of a guest's hooks may take", type="float", default=60.0, range=Range(0, MAX_HOOK_TIMEOUT_S, exclusive_minimum=True)
    ),
    # Checked by affinity.parse_groups, with its own messages.
    "affinity_groups": Option("VMs kept together or apart, and on or off hosts", type="list", elements="dict", default=[]),
}

POLICY_OVERRIDES: Group = {
    "auto_converge": Option("throttle the vCPUs when the migration does not converge", type="bool"),
    "compression": Option("compression methods of the migration stream", type="list", elements="str"),
    "bandwidth_mib": Option("maximum bandwidth in MiB/s", type="int"),
    "max_downtime_ms": Option("initial maximum downtime in ms", type="int"),
    "downtime_schedule": Option("the convergence schedule, replacing the policy's", type="list", elements="dict"),
    "post_copy": Option("allow switching to post-copy", type="bool"),
    "parallel_connections": Option("parallel connections (QEMU multifd)", type="int"),
}

# The cluster's shared storage, a directory every host mounts at the same path (inventory virtops_shared_storage).
SHARED_STORAGE = Option("the cluster's shared storage, a directory every host mounts at the same path", type="path")
STORAGE_MODES = ("shared", "copy", "auto")

STORAGE: Group = {
    "storage": Option(
        "shared: no disk is copied; copy: every local volume is copied; auto: the disks not on shared storage", choices=STORAGE_MODES, default="shared"
    ),
    "synchronous_writes": Option("the guest's writes go to both copies of a disk being copied", type="bool", default=False),
    "remove_source_disks": Option("delete the copied disks on the source after a verified move", type="bool", default=False),
    "shared_storage": SHARED_STORAGE,
}

# Options two modules take alike.
CANDIDATES = Option("the other hosts of the cluster, URIs or dictionaries", type="list", elements="raw", default=[])
TUNNELLED = Option("send memory through the libvirt connection to the destination", type="bool", default=False)
ALLOW_UNSAFE_CACHE = Option("move VMs whose writable disks use an unsafe cache mode", type="bool", default=False, aliases=("allow_unsafe",))

VM_MIGRATE: Group = {
    "state": Option("migrated or cancelled", choices=("migrated", "cancelled"), default="migrated"),
    "destination_uri": Option("libvirt URI of the destination"),
    "destination": Option("auto: choose the destination among the candidates", choices=("auto",)),
    "candidates": CANDIDATES,
    "migrate_uri": Option("address of the destination's QEMU for the migration stream"),
    "listen_address": Option("address the destination's QEMU listens on"),
    "live": Option("migrate a running VM live (else paused)", type="bool", default=True),
    "persistent": Option("define the VM persistently on the destination", type="bool", default=True),
    "undefine_source": Option("undefine the VM on the source once moved", type="bool", default=True),
    "policy": Option("migration policy name or definition", type="raw"),
    "tls": Option("QEMU's own TLS for the migration stream", type="bool", default=False),
    "tunnelled": TUNNELLED,
    "allow_unsafe_cache": ALLOW_UNSAFE_CACHE,
    "unsafe_storage": Option("switch off libvirt's storage-safety check", type="bool", default=False),
    "wait": Option("wait for the migration to end", type="bool", default=True),
    "timeout": Option("seconds the migration may take", type="int", range=Range(1, MAX_TIMEOUT_S, whole=True)),
    "timeout_action": Option("what a timeout does", choices=("abort", "post_copy", "suspend"), default="abort"),
}

MAX_OUTGOING = Option("migrations from one host at once", type="int", default=2, range=Range(1, 64, whole=True))
MAX_INCOMING = Option("migrations into any one destination at once", type="int", default=2, range=Range(1, 64, whole=True))
REQUESTED_BY = Option("who asks")
LOG_DIR = Option("the collection's log directory on the host", type="path", default=DEFAULT_LOG_DIR)
PERCENT = Range(0, 100.0)

HOST_MAINTENANCE: Group = {
    "state": Option("maintenance or active", choices=("maintenance", "active"), default="maintenance"),
    "candidates": CANDIDATES,
    "include_manual": Option("also migrate VMs with migration mode manual", type="bool", default=False),
    "non_migratable": Option("fail, or shut down the VMs that may not migrate", choices=("fail", "shutdown"), default="fail"),
    "shutdown_timeout": Option("seconds to wait for VMs being shut down", type="int", default=120, range=Range(1, 86400, whole=True)),
    "max_outgoing": MAX_OUTGOING,
    "max_incoming": MAX_INCOMING,
    "reason": Option("why the host goes into maintenance"),
    "requested_by": REQUESTED_BY,
    "log_dir": LOG_DIR,
    "require_hook": Option("refuse to evacuate unless the host enforces maintenance", type="bool", default=True),
    "tunnelled": TUNNELLED,
    "allow_unsafe_cache": ALLOW_UNSAFE_CACHE,
}

CLUSTER_BALANCE: Group = {
    "hosts": Option("every host of the cluster, URIs or dictionaries", type="list", elements="raw", required=True),
    "policy": Option(
        "the scheduling policy", choices=("evenly_distributed", "vm_evenly_distributed", "power_saving", "failback", "none"), default="evenly_distributed"
    ),
    "cpu_high": Option("CPU use (percent) above which a host is over-utilized", type="float", default=80.0, range=PERCENT),
    "cpu_low": Option("CPU use (percent) below which a host is under-utilized", type="float", default=20.0, range=PERCENT),
    "memory_high": Option("memory use (percent) above which a host is over-utilized", type="float", default=80.0, range=PERCENT),
    "memory_low": Option("memory use (percent) below which a host is under-utilized", type="float", default=20.0, range=PERCENT),
    "vm_count_high": Option("VM count above which a host sheds VMs", type="int", default=10, range=Range(0, 100000, whole=True)),
    "vm_count_threshold": Option("VM count difference tolerated between hosts", type="int", default=5, range=Range(1, 100000, whole=True)),
    "max_moves": Option("moves one run makes at most; unset: 5, no limit for failback", type="int", range=Range(1, 100000, whole=True)),
    "min_improvement": Option("percentage points a move must gain", type="float", default=5.0, range=PERCENT),
    "cooldown": Option("seconds before the balancer moves a VM again", type="int", default=3600, range=Range(0, 30 * 86400, whole=True)),
    "samples": Option("CPU samples in the window", type="int", default=3, range=Range(1, 60, whole=True)),
    "sample_interval": Option("seconds between two CPU samples", type="float", default=5.0, range=Range(0, 600.0, exclusive_minimum=True)),
    "failback_hosts": Option("failback: only VMs that left these hosts", type="list", elements="str", default=[]),
    "failback_vms": Option("failback: only these VMs (names or UUIDs)", type="list", elements="str", default=[]),
    "max_outgoing": MAX_OUTGOING,
    "max_incoming": MAX_INCOMING,
    "reason": Option("why the cluster is balanced"),
    "requested_by": REQUESTED_BY,
    "log_dir": LOG_DIR,
    "tunnelled": TUNNELLED,
    "allow_unsafe_cache": ALLOW_UNSAFE_CACHE,
}

HA_RECOVER: Group = {
    "hosts": Option("every host of the cluster, dictionaries", type="list", elements="dict", required=True),
    "shared_storage": Option("the cluster's shared storage, holding the high-availability store", type="path", required=True),
    "checks": Option("checks a host must fail before it counts as failed", type="int", default=3, range=Range(1, 100, whole=True)),
    "check_interval": Option("seconds between two checks of a host", type="float", default=5.0, range=Range(0, 600.0)),
    "connect_timeout": Option("seconds one check waits for libvirt or SSH", type="float", default=5.0, range=Range(0, 300.0, exclusive_minimum=True)),
    "without_fence": Option("what a failed host without a fence command allows", choices=("refuse", "lease"), default="refuse"),
    "fence_timeout": Option("seconds for a fence and for the host to read powered off", type="int", default=60, range=Range(1, 3600, whole=True)),
    "reason": Option("why the recovery runs"),
    "requested_by": REQUESTED_BY,
}

VM_HIBERNATE: Group = {
    "state": Option("hibernated or running", choices=("hibernated", "running"), default="hibernated"),
    "guest_hooks": Option("run the guest's hibernation hooks", type="bool", default=True),
}

HOST_INFO: Group = {
    # Checked by hostinfo.HostInfoCollector, with its own message.
    "memory_reserved_mib": Option("MiB kept back for the host's own processes", type="int", default=DEFAULT_MEMORY_RESERVED_MIB),
    "gather": Option("optional parts of the facts to gather", type="list", elements="str", choices=OPTIONAL_PARTS, default=list(OPTIONAL_PARTS)),
}

MIGRATION_POLICY: Group = {
    "state": Option("present or absent", choices=("present", "absent"), default="present"),
    "priority": Option("the VM's migration priority", choices=("low", "medium", "high", "inherit")),
    "migration_mode": Option("the VM's migration mode", choices=("auto", "manual", "none", "inherit")),
    "pinned_hosts": Option("hosts the VM may run on", type="raw"),
    "policy": Option("the VM's migration policy", type="raw"),
    "auto_converge": Option("the VM's auto-converge setting", type="raw"),
    "compression": Option("the VM's compression setting", type="raw"),
    "bandwidth_mib": Option("the VM's bandwidth setting", type="raw"),
    "max_downtime_ms": Option("the VM's maximum downtime setting", type="raw"),
    "guest_hooks": Option("the VM's guest hooks setting", type="raw"),
    "high_availability": Option("the VM's high availability setting", type="raw"),
    "shared_storage": SHARED_STORAGE,
}

MIGRATION_POLICY_INFO: Group = {
    "name": Option("only this VM"),
}

SRIOV_FAILOVER_NIC: Group = {
    "state": Option("present or absent", choices=("present", "absent"), default="present"),
    "pair": Option("name of the failover pair", required=True),
    "mode": Option("teaming or bond", choices=("teaming", "bond"), default="teaming"),
    "vf_network": Option("hostdev network the VF comes from"),
    "vf_address": Option("PCI address of the VF"),
    "backup_network": Option("network of the virtio backup NIC"),
    "backup_bridge": Option("bridge of the virtio backup NIC"),
    "mac": Option("MAC address of the pair"),
    "fail_over_mac": Option("bond's fail_over_mac=active", type="bool", default=False),
    "live": Option("also change the running VM", type="bool", default=True),
}

SRIOV_NETWORK: Group = {
    "name": Option("name of the libvirt network", required=True),
    "pf": Option("the physical function's interface"),
    "state": Option("present or absent", choices=("present", "absent"), default="present"),
    "autostart": Option("start the network with libvirtd", type="bool", default=True),
}


def only(group: Group, *names: str) -> Group:
    """The options ``names`` of ``group``."""
    return {name: group[name] for name in names}


# The options each module takes: whole groups, or some options of a group.
MODULES: t.Dict[str, t.Tuple[Group, ...]] = {
    "vm_migrate": (CONNECTION, VM, RUN, POLICY_OVERRIDES, STORAGE, VM_MIGRATE),
    "host_maintenance": (CONNECTION, RUN, STORAGE, HOST_MAINTENANCE),
    "cluster_balance": (only(CONNECTION, "username", "password"), RUN, CLUSTER_BALANCE),
    "ha_recover": (
        only(CONNECTION, "username", "password"),
        only(RUN, "cluster_policy", "global_policy", "memory_reserved_mib", "affinity_groups"),
        HA_RECOVER,
    ),
    "vm_hibernate": (CONNECTION, VM, only(RUN, "guest_hook_failure", "guest_hook_timeout"), VM_HIBERNATE),
    "host_info": (CONNECTION, only(RUN, "state_dir"), HOST_INFO),
    "migration_policy": (CONNECTION, VM, MIGRATION_POLICY),
    "migration_policy_info": (CONNECTION, MIGRATION_POLICY_INFO, only(RUN, "cluster_policy", "global_policy")),
    "sriov_failover_nic": (CONNECTION, VM, SRIOV_FAILOVER_NIC),
    "sriov_network": (CONNECTION, SRIOV_NETWORK),
}


def module_options(module: str) -> Group:
    """Every option ``module`` takes; an option name in two of its groups is a mistake in the tables."""
    result: Group = {}
    for group in MODULES[module]:
        for name, option in group.items():
            if name in result:
                raise ValueError("option %s of %s is in two of its groups" % (name, module))
            result[name] = option
    return result


def spec(*groups: Group) -> Spec:
    """The argument spec of ``groups`` (fresh copies)."""
    return {name: option.spec() for group in groups for name, option in group.items()}


def module_spec(module: str) -> Spec:
    """``module``'s argument spec."""
    return spec(module_options(module))


def with_defaults(module: str, params: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """``params`` with every option of ``module`` it lacks (or has as None) at its fallback or default."""
    result = dict(params)
    for name, option in module_options(module).items():
        if result.get(name) is None:
            result[name] = option.missing_value()
    return result


def check_ranges(module: str, params: t.Mapping[str, t.Any]) -> None:
    """Refuse, naming it, any numeric option of ``module`` set in ``params`` outside its range."""
    for name, option in module_options(module).items():
        if option.range is not None and params.get(name) is not None:
            low, high, whole, exclusive = option.range
            check_number(params[name], name, low, high, whole=whole, exclusive_minimum=exclusive)


def resolve_uri(uri: t.Optional[str], environ: t.Optional[t.Mapping[str, str]] = None) -> str:
    """The URI to open: ``uri`` if set, else ``$LIBVIRT_DEFAULT_URI``, else ``qemu:///system``."""
    if uri:
        return uri
    env = os.environ if environ is None else environ
    return env.get(URI_ENVIRONMENT_VARIABLE) or DEFAULT_URI


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
