"""Benchmark: planning the evacuation of one host, or a cluster balance, with a synthetic cluster, no libvirt involved.

Builds VMs (mixed priorities, sizes, migration modes, some shut off, some pinned, some needing
networks, bridges or shared disks that only part of the cluster offers) on one source host, and
candidate hosts (mixed free memory and running vCPUs, networks, storage pools, a few in maintenance
or unreachable, the source itself among them). Times ``plan_evacuation`` (best of several runs) and
prints the plan's outcome and how evenly the memory it moves spread over the destinations.

With ``--compare`` the plan is also made by checking every host for every VM with
``placement.choose`` (the reference the fast path must match), and the two plans are compared.

With ``--balance POLICY`` it times ``plan_balance`` instead (best of several runs) on an uneven
cluster: ``--vms`` VMs spread over ``--hosts`` hosts with skewed weights (mixed CPUs and memory,
CPU samples of a window, a few hosts busy, in maintenance or unreachable; VMs of mixed CPU use
and memory, some manual, pinned, shut off, migrating, in their cooldown, in affinity groups, or
with a ``left_host`` to fail back to). It prints the moves, the skipped VMs, and the highest and
lowest load (and VM count) of the usable hosts before and after the plan.

Usage (no root, no lab needed; ``make setup`` first):

    .venv/bin/python benchmarks/planner.py [--vms 10000] [--hosts 1000] [--seed 1] [--compare]
    .venv/bin/python benchmarks/planner.py --balance evenly_distributed [--vms 10000] [--hosts 1000] [--max-moves 5] [--groups 50]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import tempfile
import time
import typing as t
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _collections_root() -> str:
    """A directory holding ``ansible_collections/virtops/migration`` pointing at this repository."""
    made = REPO / ".venv" / "collections"
    link = made / "ansible_collections" / "virtops" / "migration"
    if link.exists() and link.resolve() == REPO:
        return str(made)
    root = Path(tempfile.mkdtemp(prefix="virtops-planner-bench-"))
    (root / "ansible_collections" / "virtops").mkdir(parents=True)
    os.symlink(REPO, root / "ansible_collections" / "virtops" / "migration", target_is_directory=True)
    return str(root)


sys.path.insert(0, _collections_root())

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import affinity as af
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import balance as bl
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import evacuation as ev
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import placement as pl

POOLS = ("/pool-a", "/pool-b", "/pool-c", "/pool-d")
RACKS = 20
GIB = 1024


def build(vm_count: int, host_count: int, seed: int) -> t.Tuple[t.List[ev.VmToMove], t.List[pl.HostState], ev.SourceHost]:
    """A source host with ``vm_count`` VMs and ``host_count`` candidate hosts (the source among them)."""
    rng = random.Random(seed)
    source = ev.SourceHost(name="host0000", uuid="uuid-host0000", uri="qemu+tcp://host0000/system")

    vms: t.List[ev.VmToMove] = []
    disks_by_pool: t.Dict[str, t.Set[str]] = {pool: set() for pool in POOLS}
    host_names = ["host%04d" % index for index in range(host_count)]
    for index in range(vm_count):
        name = "vm%05d" % index
        networks = {"prod"} if rng.random() < 0.9 else {"mgmt"}
        if rng.random() < 0.15:
            networks.add("dmz")
        if rng.random() < 0.1:
            networks.add("rack%02d" % rng.randrange(RACKS))
        bridges = {"br-backup"} if rng.random() < 0.05 else set()
        disks: t.Set[str] = set()
        if rng.random() < 0.1:
            pool = rng.choice(POOLS)
            disks.add("%s/%s.qcow2" % (pool, name))
            disks_by_pool[pool] |= disks
        if rng.random() < 0.002:
            networks.add("nowhere")  # offered by no host: unplaceable
        roll = rng.random()
        mode = "none" if roll < 0.02 else "manual" if roll < 0.07 else "auto"
        pinned: t.List[str] = []
        roll = rng.random()
        if roll < 0.03:
            pinned = rng.sample(host_names, rng.randint(2, 4))
        elif roll < 0.035:
            pinned = [source.name]
        settings = {
            "priority": rng.choices(("high", "medium", "low"), (1, 3, 2))[0],
            "migration_mode": mode,
            "pinned_hosts": pinned,
            "policy": rng.choice(("minimal_downtime", "minimal_downtime", "post_copy", "very_large_vms")),
        }
        memory = rng.choices((512, 1024, 2048, 4096, 8192, 16384, 32768), (2, 4, 5, 5, 3, 2, 1))[0]
        vcpus = max(1, memory // 2048)
        running = rng.random() < 0.9
        needs = pl.VmNeeds(
            name=name,
            memory_mib=memory,
            vcpus=vcpus,
            networks=frozenset(networks),
            bridges=frozenset(bridges),
            disk_paths=frozenset(disks),
            pinned_hosts=frozenset(pinned),
        )
        vms.append(ev.VmToMove(name, "uuid-" + name, memory, vcpus, running, True, settings, needs))

    hosts: t.List[pl.HostState] = []
    for index, name in enumerate(host_names):
        total = rng.choice((128, 256, 512)) * GIB
        networks = {"mgmt", "rack%02d" % (index % RACKS)}
        if rng.random() < 0.95:
            networks.add("prod")
        if rng.random() < 0.3:
            networks.add("dmz")
        pools = rng.sample(POOLS, 3)
        hosts.append(
            pl.HostState(
                name=name,
                uri="qemu+tcp://%s/system" % name,
                uuid="uuid-" + name,
                available_mib=int(total * rng.uniform(0.1, 0.8)),
                vcpus_running=rng.randrange(8, 256),
                networks=frozenset(networks),
                bridges=frozenset({"br0", "br-backup"}) if rng.random() < 0.5 else None,
                disk_paths=frozenset(path for pool in pools for path in disks_by_pool[pool]),
                maintenance=index % 50 == 7,
                error="connection refused" if index % 100 == 13 else None,
            )
        )
    return vms, hosts, source


NOW = 1_700_000_000.0


def build_cluster(
    vm_count: int, host_count: int, group_count: int, seed: int
) -> t.Tuple[t.List[bl.BalanceHost], t.List[bl.BalanceVm], t.Tuple[af.AffinityGroup, ...]]:
    """An uneven cluster for the balancer: hosts, the VMs spread over them with skewed weights, and affinity groups."""
    rng = random.Random(seed)
    names = ["host%04d" % index for index in range(host_count)]
    weights = [rng.paretovariate(3.0) for _name in names]
    placed = rng.choices(range(host_count), weights, k=vm_count)
    vms: t.List[bl.BalanceVm] = []
    cpu_used = [0.0] * host_count
    memory_used = [0] * host_count
    for index, where in enumerate(placed):
        name = "vm%05d" % index
        roll = rng.random()
        mode = "none" if roll < 0.01 else "manual" if roll < 0.04 else "auto"
        pinned = rng.sample(names, 2) if rng.random() < 0.02 else []
        settings = {"priority": rng.choices(("high", "medium", "low"), (1, 3, 2))[0], "migration_mode": mode, "pinned_hosts": pinned}
        memory = rng.choices((512, 1024, 2048, 4096, 8192, 16384), (2, 4, 5, 5, 3, 1))[0]
        vcpus = max(1, memory // 2048)
        running = rng.random() < 0.95
        cpu = rng.uniform(0, 100.0 * vcpus) if running else 0.0
        needs = pl.VmNeeds(name=name, memory_mib=memory, vcpus=vcpus, networks=frozenset({"prod"}), pinned_hosts=frozenset(pinned))
        left = names[rng.randrange(host_count)] if rng.random() < 0.05 else None
        vms.append(
            bl.BalanceVm(
                vm=ev.VmToMove(name, "uuid-" + name, memory, vcpus, running, True, settings, needs),
                host=names[where],
                cpu_percent=cpu,
                balanced_at=NOW - rng.uniform(0, 7200) if rng.random() < 0.05 else None,
                left_host=left,
                migrating=rng.random() < 0.005,
            )
        )
        if running:
            cpu_used[where] += cpu
            memory_used[where] += memory
    hosts: t.List[bl.BalanceHost] = []
    for index, name in enumerate(names):
        # A few hot hosts, more cold ones, the rest in between: the CPUs and memory are sized to give that load.
        roll = rng.random()
        target = rng.uniform(82.0, 98.0) if roll < 0.1 else rng.uniform(2.0, 18.0) if roll < 0.35 else rng.uniform(25.0, 75.0)
        cpus = max(8, int(math.ceil(cpu_used[index] / target)))
        memory = max(64 * GIB, int(memory_used[index] * 100.0 / max(target + rng.uniform(-10.0, 5.0), 1.0)))
        load = cpu_used[index] / cpus
        samples = tuple(max(0.0, load + rng.uniform(-8.0, 8.0)) for _sample in range(6))
        hosts.append(
            bl.BalanceHost(
                state=pl.HostState(
                    name=name,
                    uri="qemu+tcp://%s/system" % name,
                    uuid="uuid-" + name,
                    available_mib=memory - memory_used[index] - pl.DEFAULT_MEMORY_RESERVED_MIB,
                    networks=frozenset({"prod", "mgmt"}) if rng.random() < 0.97 else frozenset({"mgmt"}),
                    maintenance=index % 97 == 5,
                    error="connection refused" if index % 101 == 7 else None,
                ),
                cpus=cpus,
                memory_mib=memory,
                cpu_samples=samples,
                busy="preparing maintenance" if index % 89 == 3 else None,
            )
        )
    running = [item.vm.name for item in vms if item.vm.running]
    groups = []
    for number in range(group_count):
        members = rng.sample(running, 3)
        if number % 2:
            groups.append({"name": "apart%03d" % number, "vms": members, "vm_rule": "negative", "vm_enforcing": number % 4 == 1})
        else:
            groups.append({"name": "off%03d" % number, "vms": members[:1], "hosts": rng.sample(names, 3), "host_rule": "negative"})
    return hosts, vms, af.parse_groups(groups)


def balance_main(args: argparse.Namespace) -> int:
    """Time ``plan_balance`` for ``args.balance`` on a synthetic uneven cluster and print what the plan does."""
    hosts, vms, groups = build_cluster(args.vms, args.hosts, args.groups, args.seed)
    request = bl.BalanceRequest(policy=args.balance, max_moves=args.max_moves, now=NOW, groups=groups)
    seconds, plan = timed(args.runs, lambda: bl.plan_balance(hosts, vms, request))
    usable = [name for name, entry in plan.hosts.items() if name not in plan.excluded_hosts]
    print("VMs: %d  hosts: %d  affinity groups: %d  seed: %d" % (args.vms, args.hosts, len(groups), args.seed))
    print("plan_balance %s: %.3f s (best of %d)" % (args.balance, seconds, args.runs))
    print("moves: %d  skipped: %d  emptied hosts: %d  unresolved hosts: %d  unmet affinity rules: %d  excluded hosts: %d" % (
        len(plan.moves), len(plan.skipped), len(plan.emptied_hosts), len(plan.unresolved), len(plan.unmet), len(plan.excluded_hosts)))
    for side in ("before", "after"):
        loads = [plan.hosts[name][side]["load"] for name in usable]
        counts = [plan.hosts[name][side]["vms"] for name in usable]
        print("%-6s load %%: max %.1f  min %.1f  stdev %.1f   VMs per host: max %d  min %d" % (
            side, max(loads), min(loads), statistics.pstdev(loads), max(counts), min(counts)))
    return 0


def timed(runs: int, func: t.Callable[[], t.Any]) -> t.Tuple[float, t.Any]:
    best = float("inf")
    plan = None
    for _run in range(runs):
        start = time.perf_counter()
        plan = func()
        best = min(best, time.perf_counter() - start)
    assert plan is not None
    return best, plan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=10000, help="VMs on the host being evacuated")
    parser.add_argument("--hosts", type=int, default=1000, help="candidate hosts, the source among them")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the synthetic cluster")
    parser.add_argument("--runs", type=int, default=3, help="time the best of this many plans")
    parser.add_argument("--include-manual", action="store_true", help="migrate VMs whose migration_mode is manual too")
    parser.add_argument("--compare", action="store_true", help="also plan by checking every host for every VM, and compare")
    parser.add_argument("--balance", choices=bl.POLICIES, help="time plan_balance with this policy instead of an evacuation")
    parser.add_argument("--max-moves", type=int, default=None, help="--balance: max_moves (default: the policy's)")
    parser.add_argument("--groups", type=int, default=50, help="--balance: affinity groups of the synthetic cluster")
    args = parser.parse_args()
    if args.balance:
        return balance_main(args)

    vms, hosts, source = build(args.vms, args.hosts, args.seed)
    seconds, plan = timed(
        args.runs, lambda: ev.plan_evacuation(vms, hosts, source, include_manual=args.include_manual, non_migratable="shutdown")
    )
    result = plan.as_dict()
    placed = len(plan.moves) + len(plan.unplaceable)
    print("VMs: %d  hosts: %d  seed: %d" % (args.vms, args.hosts, args.seed))
    print("plan_evacuation: %.3f s (best of %d), %.0f placements/s" % (seconds, args.runs, placed / seconds))
    print("outcome: " + ", ".join("%s %d" % item for item in result["summary"].items()))

    usable = list(plan.load.values())
    moved = [load for load in usable if load.vms]
    before = [load.available_mib_before for load in usable]
    after = [load.available_mib_after for load in usable]
    print("destinations: %d usable, %d received VMs" % (len(usable), len(moved)))
    print("free MiB before: min %d  max %d  stdev %.0f" % (min(before), max(before), statistics.pstdev(before)))
    print("free MiB after:  min %d  max %d  stdev %.0f" % (min(after), max(after), statistics.pstdev(after)))
    if moved:
        moved_after = [load.available_mib_after for load in moved]
        print(
            "free MiB after, on hosts that received VMs: min %d  max %d  stdev %.0f"
            % (min(moved_after), max(moved_after), statistics.pstdev(moved_after))
        )

    if args.compare:
        reference_seconds, reference = timed(
            1,
            lambda: ev.plan_evacuation(vms, hosts, source, include_manual=args.include_manual, non_migratable="shutdown", fast=False),
        )
        same = reference.as_dict() == result
        print("reference (every host for every VM): %.3f s, same plan: %s" % (reference_seconds, "yes" if same else "NO"))
        if not same:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
