"""Benchmark: what tunnelled migration over SSH costs, against direct migration, side by side.

On one lab (two hosts) and one guest whose memory has been written over (so that migration moves
real data, not zero pages), measured in the same run with ``virtops.migration.vm_migrate`` run on the
source host over SSH, as users run it:

1. direct, libvirt connection over ``qemu+tcp://`` (QEMU's stream straight to the destination);
2. direct, libvirt connection over ``qemu+ssh://`` (only libvirt's control traffic goes through SSH);
3. tunnelled over ``qemu+ssh://`` (``tunnelled: true``: the memory goes through both libvirtd and SSH).

Each round moves the guest once with each method, back and forth between lab-h1 and lab-h2, in an
order that rotates from round to round. Prints, per method, the medians of the module's wall time,
the migration job's time, the data moved and the throughput (data / job time), then the ratios of
tunnelled to direct over SSH. Every move is followed by a check that the guest runs where it was sent
and by the lab's no-VM-lost check. Usage (as root, after ``make setup``):

    .venv/bin/python benchmarks/tunnelled.py [--rounds N] [--memory-mib M]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import typing as t

from benchkit import BENCH_DIR, INVENTORY, median
from labkit import assert_no_vm_lost, load_hostvars, run_module, running_on, virtlab

MODULE = "virtops.migration.vm_migrate"
VM = "bench-tunnel"
# (label, URI scheme of the destination, tunnelled)
METHODS: t.List[t.Tuple[str, str, bool]] = [
    ("direct, qemu+tcp://", "tcp", False),
    ("direct, qemu+ssh://", "ssh", False),
    ("tunnelled, qemu+ssh://", "ssh", True),
]


def destination_uri(hostvars: t.Mapping[str, t.Mapping[str, t.Any]], host: str, scheme: str) -> str:
    if scheme == "ssh":
        return "qemu+ssh://root@%s/system" % host
    return str(hostvars[host]["virtops_libvirt_uri"])


def fill_memory(mib: int) -> None:
    """Have the guest write over ``mib`` MiB of its memory for a few seconds, then stop."""
    virtlab("dirty", VM, "--mib", str(mib), "--rate", "2")
    time.sleep(4)
    virtlab("dirty", VM, "--stop")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="moves with each method (default 5)")
    parser.add_argument("--memory-mib", type=int, default=512, help="the guest's memory (default 512)")
    args = parser.parse_args()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    virtlab("up", "--hosts", "2", "--vm", "%s:%d@1" % (VM, args.memory_mib), "--inventory", str(INVENTORY), timeout=900)
    results: t.Dict[str, t.Dict[str, t.List[float]]] = {method[0]: {"wall": [], "job": [], "mib": [], "rate": []} for method in METHODS}
    try:
        hostvars = load_hostvars(INVENTORY)
        fill_memory(args.memory_mib * 3 // 5)
        here = "lab-h1"
        for index in range(args.rounds):
            shift = index % len(METHODS)
            for label, scheme, tunnelled in METHODS[shift:] + METHODS[:shift]:
                there = "lab-h2" if here == "lab-h1" else "lab-h1"
                start = time.monotonic()
                result = run_module(
                    INVENTORY, here, MODULE, {"name": VM, "destination_uri": destination_uri(hostvars, there, scheme), "tunnelled": tunnelled}
                )
                wall = time.monotonic() - start
                if result.get("failed") or result.get("changed") is not True:
                    raise SystemExit("%s from %s to %s failed: %s" % (label, here, there, result.get("msg", result)))
                assert running_on(VM) == there, "%s moved %s to %s but it does not run there" % (label, VM, there)
                assert_no_vm_lost()
                numbers = results[label]
                numbers["wall"].append(wall)
                if result.get("job_time_ms") and result.get("data_total_mib") is not None:
                    numbers["job"].append(result["job_time_ms"] / 1000.0)
                    numbers["mib"].append(float(result["data_total_mib"]))
                    numbers["rate"].append(result["data_total_mib"] / (result["job_time_ms"] / 1000.0))
                here = there
    finally:
        virtlab("down", check=False)
    print("\n== One %d MiB guest (memory written over), %d moves per method, order rotating" % (args.memory_mib, args.rounds))
    print("%-26s %8s %8s %10s %10s" % ("", "wall s", "job s", "data MiB", "MiB/s"))
    for label in results:
        numbers = results[label]
        print(
            "%-26s %8s %8s %10s %10s"
            % (label, median(numbers["wall"], "%.2f"), median(numbers["job"], "%.2f"), median(numbers["mib"]), median(numbers["rate"], "%.1f"))
        )
    direct, tunnel = results["direct, qemu+ssh://"], results["tunnelled, qemu+ssh://"]
    for key, what in (("job", "job time"), ("wall", "wall time")):
        if direct[key] and tunnel[key]:
            print("ratio tunnelled / direct over SSH (median %s): %.2f" % (what, statistics.median(tunnel[key]) / statistics.median(direct[key])))
    if direct["rate"] and tunnel["rate"]:
        print("ratio tunnelled / direct over SSH (median throughput): %.2f" % (statistics.median(tunnel["rate"]) / statistics.median(direct["rate"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
