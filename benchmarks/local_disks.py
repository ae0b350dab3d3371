"""Benchmark: a live move that copies a local disk, ``vm_migrate storage=copy`` against ``virsh migrate --copy-storage-all``.

One lab guest on two hosts, with a thin qcow2 disk in each host's local pool (`virtops-local`, the same
path on both, different content), filled by the guest's block writer before the first move. Each round
moves the guest once with each method, back and forth between lab-h1 and lab-h2, in an order that
rotates from round to round:

1. ``virtops.migration.vm_migrate`` with ``storage: copy`` and ``remove_source_disks: true``, run on the
   source host over SSH, as users run it;
2. ``virsh migrate --live --p2p --persistent --undefinesource --copy-storage-all`` from the controller
   (libvirt creates the destination volume itself), then ``virsh vol-delete`` of the source volume.

Prints, per method, the medians of the wall time and of the migration job's time (libvirt's completed
job on the destination), each with the disk throughput it gives (the disk's allocated bytes over that
time), and the ratios of ours to virsh's: over the job (the copy itself; goal: at least 0.9), and over
the wall time, where our run also pays for Ansible over SSH. Every move
is followed by a check that the guest runs where it was sent and by the lab's no-VM-lost check; at the
end the guest's verifier must find every block it wrote. Usage (as root, after ``make setup``):

    .venv/bin/python benchmarks/local_disks.py [--rounds N] [--fill-mib M]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import typing as t

from benchkit import BENCH_DIR, INVENTORY, median, ratio_line
from labkit import assert_no_vm_lost, blocks_status, guest_exec, load_hostvars, run_module, running_on, virtlab

MODULE = "virtops.migration.vm_migrate"
VM = "bench-disk"
POOL = "virtops-local"
PATH = "/var/lib/libvirt/images/virtops-local/%s.qcow2" % VM
BLOCK = 4096
DEVICE = "/dev/disk/by-id/virtio-virtops-local"


def allocated_mib(uri: str) -> float:
    subprocess.run(["virsh", "-c", uri, "pool-refresh", POOL], check=True, capture_output=True)
    info = subprocess.run(["virsh", "-c", uri, "vol-info", "--bytes", PATH], check=True, capture_output=True, text=True).stdout
    found = re.search(r"^Allocation:\s+(\d+) bytes", info, re.MULTILINE)
    assert found, info
    return int(found.group(1)) / float(1 << 20)


def job_seconds(uri: str) -> float:
    """The last migration job's time, as libvirt keeps it for the VM on the destination (``domjobinfo --completed``)."""
    info = subprocess.run(["virsh", "-c", uri, "domjobinfo", "--completed", VM], check=True, capture_output=True, text=True).stdout
    found = re.search(r"^Time elapsed:\s+(\d+)\s+ms", info, re.MULTILINE)
    assert found, info
    return int(found.group(1)) / 1000.0


def ours(here: str, there: str, uris: t.Mapping[str, str]) -> float:
    start = time.monotonic()
    result = run_module(INVENTORY, here, MODULE, {"name": VM, "destination_uri": uris[there], "storage": "copy", "remove_source_disks": True})
    wall = time.monotonic() - start
    if result.get("failed") or result.get("changed") is not True:
        raise SystemExit("vm_migrate storage=copy from %s to %s failed: %s" % (here, there, result.get("msg", result)))
    return wall


def plain(here: str, there: str, uris: t.Mapping[str, str]) -> float:
    start = time.monotonic()
    subprocess.run(
        ["virsh", "-c", uris[here], "migrate", "--live", "--p2p", "--persistent", "--undefinesource", "--copy-storage-all", VM, uris[there]],
        check=True,
        capture_output=True,
    )
    wall = time.monotonic() - start
    subprocess.run(["virsh", "-c", uris[here], "vol-delete", PATH], check=True, capture_output=True)
    return wall


METHODS: t.List[t.Tuple[str, t.Callable[[str, str, t.Mapping[str, str]], float]]] = [
    ("vm_migrate storage=copy", ours),
    ("virsh --copy-storage-all", plain),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="moves with each method (default 3)")
    parser.add_argument("--fill-mib", type=int, default=96, help="how much the guest writes to its disk before the first move (default 96)")
    args = parser.parse_args()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    virtlab("up", "--hosts", "2", "--inventory", str(INVENTORY), timeout=900)
    walls: t.Dict[str, t.List[float]] = {label: [] for label, _run in METHODS}
    rates: t.Dict[str, t.List[float]] = {label: [] for label, _run in METHODS}
    jobs: t.Dict[str, t.List[float]] = {label: [] for label, _run in METHODS}
    job_rates: t.Dict[str, t.List[float]] = {label: [] for label, _run in METHODS}
    try:
        virtlab("add-vm", "--disk", "%dM" % (args.fill_mib * 2), "%s:256@1" % VM)
        uris = {host: str(vars_["virtops_libvirt_uri"]) for host, vars_ in load_hostvars(INVENTORY).items() if host.startswith("lab-h")}
        blocks = args.fill_mib * (1 << 20) // BLOCK
        guest_exec(VM, "virtlab-blocks", "write", DEVICE, "--rate", "0", "--count", str(blocks), "--background")
        deadline = time.monotonic() + 900
        while (blocks_status(VM)["acked"] or 0) + 1 < blocks:
            if time.monotonic() > deadline:
                raise SystemExit("the guest did not write %d MiB in 900 s" % args.fill_mib)
            time.sleep(2)
        mib = allocated_mib(uris["lab-h1"])
        here = "lab-h1"
        for index in range(args.rounds):
            shift = index % len(METHODS)
            for label, run in METHODS[shift:] + METHODS[:shift]:
                there = "lab-h2" if here == "lab-h1" else "lab-h1"
                wall = run(here, there, uris)
                assert running_on(VM) == there, "%s moved %s to %s but it does not run there" % (label, VM, there)
                assert_no_vm_lost()
                walls[label].append(wall)
                rates[label].append(mib / wall)
                jobs[label].append(job_seconds(uris[there]))
                job_rates[label].append(mib / jobs[label][-1])
                here = there
        verdict = virtlab("exec", "--timeout", "600", VM, "--", "virtlab-blocks", "verify", DEVICE, check=False, timeout=700)
        report = json.loads(verdict.stdout) if verdict.stdout.startswith("{") else {}
        if verdict.returncode != 0 or report.get("blocks", 0) < blocks:
            raise SystemExit("the guest's disk lost blocks after the moves: %s %s" % (verdict.stdout, verdict.stderr))
    finally:
        virtlab("down", check=False)
    print("\n== One guest with a thin qcow2 disk holding %.0f MiB, %d moves per method, order rotating" % (mib, args.rounds))
    print("%-26s %8s %10s %8s %10s" % ("", "wall s", "MiB/s", "job s", "MiB/s"))
    for label, _run in METHODS:
        print(
            "%-26s %8s %10s %8s %10s"
            % (label, median(walls[label], "%.2f"), median(rates[label], "%.1f"), median(jobs[label], "%.2f"), median(job_rates[label], "%.1f"))
        )
    ours_label, plain_label = METHODS[0][0], METHODS[1][0]
    print(ratio_line("copy throughput over the migration job, vm_migrate / virsh", job_rates[ours_label], job_rates[plain_label], 0.9))
    print(ratio_line("throughput over the wall time (Ansible over SSH included), vm_migrate / virsh", rates[ours_label], rates[plain_label], None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
