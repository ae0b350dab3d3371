# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""What a migration run is handed: planned moves and the options every move runs under.

``vm_migrate`` plans one :class:`Move`, an evacuation plans many; both hand them to the one job
runner (``runner.py``), which carries each out as planned: it never probes or resolves again what a
move already holds. Pure data: no libvirt import.
"""

from __future__ import annotations

import dataclasses
import time
import typing as t

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.options import CONNECTION, RUN, STORAGE, VM_MIGRATE
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.policy import Policy

# How a VM moves: live (running VM, keeps running), paused (running VM, paused while it moves) or
# offline (a shut-off persistent VM: only its definition moves).
LIVE = "live"
PAUSED = "paused"
OFFLINE = "offline"
KINDS = (LIVE, PAUSED, OFFLINE)


@dataclasses.dataclass
class Candidate:
    """A possible destination: its libvirt URI as the source reaches it, and what the caller knows of it."""

    uri: str
    name: t.Optional[str] = None
    maintenance: bool = False
    memory_reserved_mib: t.Optional[int] = None


@dataclasses.dataclass(frozen=True)
class Move:
    """One planned move of one VM, with everything the job runner needs to carry it out.

    ``persistent`` is whether the VM is to be persistently defined on the destination; ``state`` is
    libvirt's word for the VM's state when it was planned (a VM that was running must run on the
    destination); ``timeout_s`` bounds the libvirt job.

    SR-IOV failover pairs (``failover.py``): ``bond_vfs`` names the bond-mode pairs whose VF the
    runner unplugs before the job and plugs in again afterwards (on the destination, or on the source
    when the move fails); ``failover_primaries`` lists the devices QEMU itself unplugs when a live
    migration starts (teaming mode), whose release the runner waits for under its own deadline.

    ``copy_disks`` are the targets of the disks libvirt copies to the destination during the move
    (``storage.py``; empty: every disk is shared storage).
    """

    vm: str
    uuid: t.Optional[str]
    priority: str
    memory_mib: int
    vcpus: int
    source: str
    source_uri: t.Optional[str]
    destination: str
    destination_uri: str
    kind: str
    policy: Policy
    persistent: bool = True
    state: t.Optional[str] = None
    timeout_s: t.Optional[int] = None
    bond_vfs: t.Tuple[str, ...] = ()
    failover_primaries: t.Tuple[str, ...] = ()
    # Run the guest's before_migration / after_migration hooks around the move (guest_agent.py).
    guest_hooks: bool = False
    copy_disks: t.Tuple[str, ...] = ()

    @property
    def running(self) -> bool:
        """The VM is active (running or paused) and holds memory on the source."""
        return self.kind != OFFLINE

    def as_dict(self) -> t.Dict[str, t.Any]:
        """The move for a module's result (``copy_disks`` only when some disks are copied)."""
        copied = {"copy_disks": list(self.copy_disks)} if self.copy_disks else {}
        return {
            "vm": self.vm,
            "uuid": self.uuid,
            "priority": self.priority,
            "memory_mib": self.memory_mib,
            "vcpus": self.vcpus,
            "from": self.source,
            "from_uri": self.source_uri,
            "to": self.destination,
            "to_uri": self.destination_uri,
            "kind": self.kind,
            "policy": self.policy.name,
            **copied,
        }


@dataclasses.dataclass
class RunOptions:
    """How the job runner carries out moves: libvirt flags, monitoring, timeout action, credentials.

    ``unplug_timeout`` bounds how long the guest may take to release an SR-IOV failover device: the
    primary QEMU unplugs when a live migration starts (QEMU and libvirt wait forever), and a bond's
    VF the runner unplugs before the move. ``guest_hook_failure`` says what a failed
    ``before_migration`` hook does (``warn``: the move goes on; ``abort``: the VM stays), and
    ``guest_hook_timeout`` bounds each run of a guest's hooks. ``tunnelled`` sends a live move's
    memory through the libvirtd connection to the destination instead of a direct QEMU-to-QEMU
    stream (see :func:`tunnel_conflicts` for what libvirt refuses with it; offline moves ignore it).
    ``synchronous_writes`` makes a move that copies disks send the guest's writes to both copies at
    once; ``remove_source_disks`` deletes the copied disks on the source after a verified move.
    """

    # Each default is the option's (options.py); poll_interval is the option wait_sleep.
    undefine_source: bool = VM_MIGRATE["undefine_source"].default
    tls: bool = VM_MIGRATE["tls"].default
    tunnelled: bool = VM_MIGRATE["tunnelled"].default
    unsafe_storage: bool = VM_MIGRATE["unsafe_storage"].default
    migrate_uri: t.Optional[str] = VM_MIGRATE["migrate_uri"].default
    listen_address: t.Optional[str] = VM_MIGRATE["listen_address"].default
    wait: bool = VM_MIGRATE["wait"].default
    timeout_action: str = VM_MIGRATE["timeout_action"].default
    poll_interval: float = RUN["wait_sleep"].default
    monitor_interval: float = RUN["monitor_interval"].default
    state_dir: str = RUN["state_dir"].default
    unplug_timeout: float = RUN["unplug_timeout"].default
    guest_hook_failure: str = RUN["guest_hook_failure"].default
    guest_hook_timeout: float = RUN["guest_hook_timeout"].default
    synchronous_writes: bool = STORAGE["synchronous_writes"].default
    remove_source_disks: bool = STORAGE["remove_source_disks"].default
    username: t.Optional[str] = CONNECTION["username"].default
    password: t.Optional[str] = CONNECTION["password"].default


# Why libvirt refuses a policy setting with a tunnelled migration (VIR_MIGRATE_TUNNELLED).
TUNNEL_REFUSES = {
    "post_copy": "libvirt does not support post-copy with tunnelled migration",
    "parallel_connections": "parallel connections are QEMU's own streams, which a tunnelled migration does not use",
}


def tunnel_conflicts(policy: Policy) -> t.List[str]:
    """The settings of ``policy`` that libvirt refuses with a tunnelled migration, each with its value and why."""
    found = []
    if policy.post_copy:
        found.append("post_copy: true (%s)" % TUNNEL_REFUSES["post_copy"])
    if policy.parallel_connections:
        found.append("parallel_connections: %d (%s)" % (policy.parallel_connections, TUNNEL_REFUSES["parallel_connections"]))
    return found


def record_phase(timings: t.Dict[str, float], phase: str, since: float) -> float:
    """Add the seconds since ``since`` (a ``time.monotonic()`` reading) to ``timings[phase]``; returns now."""
    now = time.monotonic()
    timings[phase] = round(timings.get(phase, 0.0) + now - since, 3)
    return now
