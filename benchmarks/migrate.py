"""Benchmark: live migration of lab guests with vm_migrate, side by side with plain virsh.

On one lab (two hosts) and fresh guests, measured in the same run:

1. Idle guests: ``virsh migrate --live --p2p --persistent --undefinesource`` against
   ``virtops.migration.vm_migrate`` (run on the source host over SSH, as users run it), alternating,
   several rounds. Prints the medians and the ratio of wall times (the price of the checks, the
   monitoring and Ansible's own start-up), and the downtime each reports.
2. Both through ``ansible-playbook``: a generated playbook with one ``virtops.migration.vm_migrate``
   task (``name``, ``destination_uri``) on the source host, against one with an
   ``ansible.builtin.command`` task running the same ``virsh migrate --live --p2p --persistent
   --undefinesource`` on the same host (both connect to the host's default libvirt URI). Ansible's
   start-up, facts-free play and SSH are then the same on both sides, so the ratio command /
   vm_migrate of the medians (goal >= 0.9) is the price of the module itself. The playbooks are
   written under ``tests/output/bench/``.
3. A busy guest (a workload rewriting 24 MiB of memory about 10 times a second) under a 50 MiB/s
   bandwidth cap, with each policy: outcome, wall time, downtime, data moved, memory iterations and
   the schedule steps taken.

In 1 and 2 each round moves the guest from lab-h1 to lab-h2 with one method and back with the other;
which goes first alternates. Every migration is followed by a check that the guest runs where it was
sent and by the lab's no-VM-lost check. Usage (as root, after ``make setup``):

    .venv/bin/python benchmarks/migrate.py [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import yaml

from benchkit import BENCH_DIR, INVENTORY, median, ratio_line, timed_playbook
from labkit import assert_no_vm_lost, load_hostvars, run_module, running_on, virsh_migrate, virtlab

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


# A way of moving one guest: (its name, source host, destination host) -> wall seconds.
Move = t.Callable[[str, str, str], float]


def back_and_forth(vm: str, rounds: int, first: t.Tuple[str, Move], second: t.Tuple[str, Move]) -> t.Dict[str, t.List[float]]:
    """Wall times of two ways of moving a guest between lab-h1 and lab-h2, by name.

    Each round moves the guest from lab-h1 to lab-h2 with one method and back with the other; which
    goes first alternates. After each move the guest must run on the destination, and no VM be lost.
    """
    times: t.Dict[str, t.List[float]] = {first[0]: [], second[0]: []}
    for index in range(rounds):
        methods = (first, second) if index % 2 == 0 else (second, first)
        for (method, move), (src, dst) in zip(methods, (("lab-h1", "lab-h2"), ("lab-h2", "lab-h1"))):
            times[method].append(move(vm, src, dst))
            assert running_on(vm) == dst, "%s moved %s from %s but it does not run on %s" % (method, vm, src, dst)
            assert_no_vm_lost()
    return times


def idle_rounds(inventory: Path, uris: t.Dict[str, str], rounds: int) -> None:
    """Alternate virsh and vm_migrate on the same idle guest, back and forth between the two hosts."""
    virsh_downtimes: t.List[int] = []
    module_downtimes: t.List[int] = []

    def by_virsh(vm: str, src: str, dst: str) -> float:
        elapsed = virsh_migrate(uris[src], uris[dst], vm)
        downtime = virsh_downtime(uris[dst], vm)
        if downtime is not None:
            virsh_downtimes.append(downtime)
        return elapsed

    def by_module(vm: str, src: str, dst: str) -> float:
        elapsed, result = module_migrate(inventory, src, uris[dst], vm)
        assert result.get("changed") is True, result
        if result.get("downtime_ms") is not None:
            module_downtimes.append(result["downtime_ms"])
        return elapsed

    vm = "bench-idle"
    virtlab("add-vm", "%s:256@1" % vm)
    times = back_and_forth(vm, rounds, ("virsh", by_virsh), ("module", by_module))
    virtlab("remove-vm", vm)
    print("\n== Idle 256 MiB guest, %d rounds each, alternating" % rounds)
    print("%-34s %8s %14s" % ("", "wall s", "downtime ms"))
    print("%-34s %8s %14s" % ("virsh migrate --live --p2p", median(times["virsh"], "%.2f"), median(virsh_downtimes)))
    print("%-34s %8s %14s" % ("vm_migrate (ansible, over SSH)", median(times["module"], "%.2f"), median(module_downtimes)))
    print("ratio vm_migrate / virsh (median wall time): %.2f" % (statistics.median(times["module"]) / statistics.median(times["virsh"])))


# The task of each generated playbook (one play on the source host, no facts). Both connect to the
# host's default libvirt URI (LIBVIRT_DEFAULT_URI, else qemu:///system), as vm_migrate does without ``uri``.
PLAYBOOK_TASKS: t.Dict[str, t.Dict[str, t.Any]] = {
    "vm_migrate": {
        "name": "Migrate {{ vm }} with vm_migrate",
        MODULE: {"name": "{{ vm }}", "destination_uri": "{{ destination_uri }}"},
    },
    "command": {
        "name": "Migrate {{ vm }} with virsh",
        "ansible.builtin.command": {
            "argv": ["virsh", "migrate", "--live", "--p2p", "--persistent", "--undefinesource", "{{ vm }}", "{{ destination_uri }}"],
        },
    },
}


def write_playbook(method: str) -> Path:
    """The generated playbook of one method, under tests/output/bench/ (git-ignored)."""
    play = {
        "name": "Benchmark: live-migrate one VM (%s)" % method,
        "hosts": "{{ source }}",
        "gather_facts": False,
        "tasks": [PLAYBOOK_TASKS[method]],
    }
    path = BENCH_DIR / ("migrate_%s.yml" % method)
    path.write_text("---\n# Written by benchmarks/migrate.py; -e source=HOST -e vm=NAME -e destination_uri=URI\n" + yaml.safe_dump([play], sort_keys=False))
    return path


def playbook_rounds(uris: t.Dict[str, str], rounds: int) -> None:
    """Alternate the vm_migrate playbook and the virsh command playbook on the same idle guest."""

    def by_playbook(method: str) -> t.Tuple[str, Move]:
        path = write_playbook(method)

        def move(vm: str, src: str, dst: str) -> float:
            return timed_playbook(path, {"source": src, "vm": vm, "destination_uri": uris[dst]})

        return method, move

    vm = "bench-play"
    virtlab("add-vm", "%s:256@1" % vm)
    times = back_and_forth(vm, rounds, by_playbook("vm_migrate"), by_playbook("command"))
    virtlab("remove-vm", vm)
    print("\n== Idle 256 MiB guest through ansible-playbook (one task on the source host), %d rounds each, alternating" % rounds)
    print("%-52s %8s" % ("", "wall s"))
    print("%-52s %8s" % ("virtops.migration.vm_migrate", median(times["vm_migrate"], "%.2f")))
    print("%-52s %8s" % ("ansible.builtin.command: virsh migrate --live --p2p", median(times["command"], "%.2f")))
    print("ratio " + ratio_line("command / vm_migrate (median wall time)", times["command"], times["vm_migrate"], 0.9))


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
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each idle comparison, virsh and playbooks (default 5)")
    args = parser.parse_args()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    virtlab("up", "--hosts", "2", "--inventory", str(INVENTORY), timeout=900)
    try:
        uris = {name: hv["virtops_libvirt_uri"] for name, hv in load_hostvars(INVENTORY).items()}
        idle_rounds(INVENTORY, uris, args.rounds)
        playbook_rounds(uris, args.rounds)
        busy_cases(INVENTORY, uris)
    finally:
        virtlab("down", check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
