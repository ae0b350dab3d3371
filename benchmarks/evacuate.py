"""Benchmark: evacuating a host with host_maintenance, side by side with a sequential virsh loop.

On one lab (three hosts) and the same six guests, measured in the same run, several rounds,
alternating which method goes first:

(a) ``virtops.migration.host_maintenance`` on lab-h1 (run over SSH, as users run it): the guests
    move to lab-h2 and lab-h3, two at a time, highest priority first;
(b) a plain sequential loop of ``virsh migrate --live --p2p --persistent --undefinesource``, one
    guest after the other, alternately to lab-h2 and lab-h3.

Between rounds the guests go back to lab-h1 (not timed). Prints each round, the median ratio b/a
(above 1 means the evacuation was faster), the evacuation's effective throughput (guest RAM moved
per second of wall time) against the throughput of a single virsh migration measured alone, and
the planner alone on 10,000 synthetic VMs over 1,000 synthetic hosts. Every round ends with the
lab's no-VM-lost check. Usage (as root, after ``make setup``):

    .venv/bin/python benchmarks/evacuate.py [--rounds 3]
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

from labkit import REPO, assert_no_vm_lost, load_hostvars, run_module, run_playbook, virsh_migrate, virtlab, vm_homes  # noqa: E402

GUESTS = [
    ("ev-web1", 256, "high"),
    ("ev-web2", 256, "high"),
    ("ev-db1", 320, "medium"),
    ("ev-app1", 256, "medium"),
    ("ev-batch1", 192, "low"),
    ("ev-batch2", 192, "low"),
]


def gather_back(uris: t.Mapping[str, str]) -> None:
    """Move every guest back to lab-h1 (untimed)."""
    for name, _memory, _priority in GUESTS:
        for host, state in vm_homes(name).items():
            if host != "lab-h1" and state == "running":
                virsh_migrate(uris[host], uris["lab-h1"], name)
    assert_no_vm_lost()


def run_virsh_loop(uris: t.Mapping[str, str]) -> float:
    start = time.monotonic()
    for index, (name, _memory, _priority) in enumerate(GUESTS):
        virsh_migrate(uris["lab-h1"], uris["lab-h2" if index % 2 == 0 else "lab-h3"], name)
    elapsed = time.monotonic() - start
    assert_no_vm_lost()
    return elapsed


def run_maintenance(inventory: Path, uris: t.Mapping[str, str]) -> float:
    candidates = [{"name": host, "uri": uri} for host, uri in sorted(uris.items())]
    start = time.monotonic()
    result = run_module(inventory, "lab-h1", "virtops.migration.host_maintenance", {"candidates": candidates})
    elapsed = time.monotonic() - start
    assert result.get("changed") is True and not result.get("failed"), result
    assert_no_vm_lost()
    activated = run_module(inventory, "lab-h1", "virtops.migration.host_maintenance", {"state": "active"})
    assert activated.get("changed") is True, activated
    return elapsed


def planner_line() -> str:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "planner.py"), "--vms", "10000", "--hosts", "1000"],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each method (default 3)")
    args = parser.parse_args()
    inventory = REPO / "tests" / "output" / "bench" / "inventory.yml"
    inventory.parent.mkdir(parents=True, exist_ok=True)
    spec: t.List[str] = []
    for name, memory, priority in GUESTS:
        spec += ["--vm", "%s:%d:%s@1" % (name, memory, priority)]
    virtlab("up", "--hosts", "3", "--inventory", str(inventory), *spec, timeout=900)
    try:
        # The hosts enforce maintenance, as host_maintenance requires by default (untimed).
        setup = run_playbook(inventory, REPO / "playbooks" / "setup_hosts.yml", {"cluster": "lab"})
        if setup.returncode != 0:
            raise SystemExit("playbooks/setup_hosts.yml failed:\n%s%s" % (setup.stdout, setup.stderr))
        uris = {name: hv["virtops_libvirt_uri"] for name, hv in load_hostvars(inventory).items()}
        single = virsh_migrate(uris["lab-h1"], uris["lab-h2"], GUESTS[0][0])
        gather_back(uris)
        ram_mib = sum(memory for _name, memory, _priority in GUESTS)
        ours: t.List[float] = []
        loop: t.List[float] = []
        print("== Evacuating lab-h1: %d guests, %d MiB of guest RAM, to lab-h2 and lab-h3" % (len(GUESTS), ram_mib))
        for index in range(args.rounds):
            order = ("maintenance", "virsh") if index % 2 == 0 else ("virsh", "maintenance")
            for method in order:
                if method == "maintenance":
                    ours.append(run_maintenance(inventory, uris))
                else:
                    loop.append(run_virsh_loop(uris))
                gather_back(uris)
            print("round %d: host_maintenance %.1f s, sequential virsh loop %.1f s" % (index + 1, ours[-1], loop[-1]))
        a, b = statistics.median(ours), statistics.median(loop)
        print("median: host_maintenance %.1f s, virsh loop %.1f s, ratio b/a = %.2f" % (a, b, b / a))
        print(
            "throughput: evacuation %.0f MiB/s of guest RAM; one virsh migration alone %.0f MiB/s (%d MiB in %.1f s)"
            % (ram_mib / a, GUESTS[0][1] / single, GUESTS[0][1], single)
        )
    finally:
        virtlab("down", check=False)
    print("\n== Planner alone")
    print(planner_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
