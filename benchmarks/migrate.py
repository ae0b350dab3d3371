"""Benchmark: live migration of lab guests with vm_migrate, side by side with plain virsh.

On one lab (two hosts) and fresh guests, measured in the same run:

1. Idle guests: ``virsh migrate --live --p2p --persistent --undefinesource`` against
   ``virtops.migration.vm_migrate`` (run on the source host over SSH, as users run it), alternating,
   several rounds. Prints the medians and the ratio of wall times (the price of the checks, the
   monitoring and Ansible's own start-up), and the downtime each reports.
2. A busy guest (a workload rewriting 24 MiB of memory about 10 times a second) under a 50 MiB/s
   bandwidth cap, with each policy: outcome, wall time, downtime, data moved, memory iterations and
   the schedule steps taken.

Every migration is followed by the lab's no-VM-lost check. Usage (as root, after ``make setup``):

    .venv/bin/python benchmarks/migrate.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import typing as t
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
os.environ.setdefault("ANSIBLE_COLLECTIONS_PATH", str(REPO / ".venv" / "collections"))
os.environ["PATH"] = "%s:%s" % (REPO / ".venv" / "bin", os.environ.get("PATH", ""))

from labkit import assert_no_vm_lost, load_hostvars, run_module, running_on, virsh_migrate, virtlab  # noqa: E402

MODULE = "virtops.migration.vm_migrate"
BUSY_CASES: t.List[t.Tuple[str, t.Dict[str, t.Any]]] = [
    ("legacy", {"timeout": 40}),
    ("minimal_downtime", {}),
    ("suspend_workload", {}),
    ("post_copy", {}),
]


def virsh_downtime(dest_uri: str, vm: str) -> t.Optional[int]:
    out = subprocess.run(
        ["virsh", "-c", dest_uri, "domjobinfo", vm, "--completed", "--keep-completed"], capture_output=True, text=True, check=False
    ).stdout
    for line in out.splitlines():
        if line.startswith("Total downtime:"):
            return int(line.split()[2])
    return None


def module_migrate(inventory: Path, source: str, dest_uri: str, vm: str, **options: t.Any) -> t.Tuple[float, t.Dict[str, t.Any]]:
    start = time.monotonic()
    result = run_module(inventory, source, MODULE, dict({"name": vm, "destination_uri": dest_uri}, **options))
    return time.monotonic() - start, result


def idle_rounds(inventory: Path, uris: t.Dict[str, str], rounds: int) -> None:
    """Alternate virsh and vm_migrate on the same idle guest, back and forth between the two hosts."""
    vm = "bench-idle"
    virtlab("add-vm", "%s:256@1" % vm)
    virsh_times: t.List[float] = []
    module_times: t.List[float] = []
    virsh_downtimes: t.List[int] = []
    module_downtimes: t.List[int] = []
    for index in range(rounds):
        # Each round moves the guest there and back, one move per method; which goes first alternates.
        methods = ("virsh", "module") if index % 2 == 0 else ("module", "virsh")
        for method, (src, dst) in zip(methods, (("lab-h1", "lab-h2"), ("lab-h2", "lab-h1"))):
            if method == "virsh":
                virsh_times.append(virsh_migrate(uris[src], uris[dst], vm))
                downtime = virsh_downtime(uris[dst], vm)
                if downtime is not None:
                    virsh_downtimes.append(downtime)
            else:
                elapsed, result = module_migrate(inventory, src, uris[dst], vm)
                assert result.get("changed") is True, result
                module_times.append(elapsed)
                if result.get("downtime_ms") is not None:
                    module_downtimes.append(result["downtime_ms"])
            assert_no_vm_lost()
    virtlab("remove-vm", vm)
    v, m = statistics.median(virsh_times), statistics.median(module_times)
    print("\n== Idle 256 MiB guest, %d rounds each, alternating" % rounds)
    print("%-34s %8s %14s" % ("", "wall s", "downtime ms"))
    print("%-34s %8.2f %14s" % ("virsh migrate --live --p2p", v, _median(virsh_downtimes)))
    print("%-34s %8.2f %14s" % ("vm_migrate (ansible, over SSH)", m, _median(module_downtimes)))
    print("ratio vm_migrate / virsh (median wall time): %.2f" % (m / v))


def _median(values: t.Sequence[float]) -> str:
    return "%.0f" % statistics.median(values) if values else "n/a"


def lost_writes(vm: str) -> str:
    """The lost writes the lab's workload counted; "restarted" or "crashed" when the guest did."""
    deadline = time.monotonic() + 30
    while True:
        stopped = virtlab("dirty", vm, "--stop", check=False)
        if stopped.returncode == 0:
            counts = stopped.stdout.split()
            return counts[counts.index("lost") + 1] if "lost" in counts else "?"
        if "no workload runs" in stopped.stderr:
            return "restarted"
        if time.monotonic() > deadline:
            return "crashed"
        time.sleep(2)


def busy_cases(inventory: Path, uris: t.Dict[str, str]) -> None:
    print("\n== Busy 256 MiB guest (24 MiB rewritten ~10x/s), bandwidth capped at 50 MiB/s")
    print("   lost: guest pages that lost a write in the move, counted by the lab's workload (should be 0);")
    print("   'restarted'/'crashed': the guest rebooted or stopped answering (tests/lab/README.md, Known limitations)")
    print(
        "%-18s %-10s %8s %12s %10s %6s %5s  %s"
        % ("policy", "outcome", "wall s", "downtime ms", "data MiB", "iters", "lost", "schedule steps")
    )
    for policy, extra in BUSY_CASES:
        vm = "bench-%s" % policy.replace("_", "")
        virtlab("add-vm", "%s:256@1" % vm)
        virtlab("dirty", vm, "--mib", "24")
        elapsed, result = module_migrate(inventory, "lab-h1", uris["lab-h2"], vm, policy=policy, bandwidth_mib=50, **extra)
        where = running_on(vm)
        if result.get("failed"):
            outcome = "aborted" if where == "lab-h1" else "FAILED"
        else:
            outcome = "moved" if where == "lab-h2" else "LOST?"
        steps = result.get("schedule_applied") or []
        summary = ", ".join(
            "%s%s@%.0fs" % (s["action"], "=%d" % s["downtime_ms"] if "downtime_ms" in s else "", s["at_s"]) for s in steps
        )
        lost = lost_writes(vm)
        print(
            "%-18s %-10s %8.1f %12s %10s %6s %5s  %s"
            % (
                policy,
                outcome,
                elapsed,
                result.get("downtime_ms", "-"),
                result.get("data_total_mib", "-"),
                result.get("memory_iterations", "-"),
                lost,
                summary or "-",
            )
        )
        assert_no_vm_lost()
        virtlab("remove-vm", vm)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="idle migrations per method (default 5)")
    args = parser.parse_args()
    inventory = REPO / "tests" / "output" / "bench" / "inventory.yml"
    inventory.parent.mkdir(parents=True, exist_ok=True)
    virtlab("up", "--hosts", "2", "--inventory", str(inventory), timeout=900)
    try:
        uris = {name: hv["virtops_libvirt_uri"] for name, hv in load_hostvars(inventory).items()}
        idle_rounds(inventory, uris, args.rounds)
        busy_cases(inventory, uris)
    finally:
        virtlab("down", check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
