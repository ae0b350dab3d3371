"""Benchmark: evacuating a host with host_maintenance, side by side with other ways of moving the same VMs.

On one lab (three hosts) and the same VMs on lab-h1, measured in the same run, several rounds, each
method once per round; the order of the methods rotates from round to round (with 4 rounds or more,
each method goes first once):

(a) host_maintenance: the module ``virtops.migration.host_maintenance`` on lab-h1, run over SSH as
    users run it: the VMs move to lab-h2 and lab-h3, two at a time, highest priority first;
(b) raw parallel virsh: ``virsh migrate --live --p2p --persistent --undefinesource`` from the
    controller, two worker threads taking the VMs in the order the evacuation moves them (priority
    high, then medium, then low; larger memory first, then by name), destinations alternately lab-h2
    and lab-h3: the lab's practical limit at the evacuation's parallelism;
(c) sequential loop: the same virsh command, one VM after the other, same order and destinations;
(d) playbook: the operator's ``playbooks/maintenance.yml -e target=lab-h1`` (``max_outgoing=2``) through
    ``ansible-playbook``, from start to finish (the cluster's facts, the hook check, the evacuation,
    the report), with Ansible's JSON callback so that the module's own ``timings.total`` inside it
    is known;
(e) host_maintenance at QEMU's defaults: (a) with ``cluster_policy: {policy: legacy}`` (300 ms
    downtime, no auto-converge, as a plain ``virsh migrate``), so that its difference from (b) is the
    collection's own cost and not the default policy's shorter downtime (minimal_downtime: 100 ms, the
    downtime steps of oVirt), which makes busy guests take more iterations.

After (a), (d) and (e) the host is brought back to active (with the module, or ``playbooks/activate.yml``),
and after every method the VMs go back to lab-h1, two at a time; none of that is timed. Every round
ends with the lab's no-VM-lost check.

A run measures one or more VM sets, each on a lab of its own (``--sets``, default ``6,12t``): ``N``
is N real guests (six of them exist: a kernel and a guest agent, 192 to 320 MiB), ``Nt`` is N tiny
VMs of the lab (diskless, 32 MiB, no kernel, no guest agent), priorities spread over high, medium
and low, all on lab-h1.

Prints each round, then for each set the medians, these ratios of medians with their goals:

    playbook vs sequential loop              loop / playbook               >= 1.5 (the goal is for 12 VMs)
    host_maintenance vs raw parallel virsh   parallel / host_maintenance   >= 0.9
    host_maintenance vs sequential loop      loop / host_maintenance       >= 1.8
    host_maintenance at QEMU's defaults vs raw parallel virsh  (no goal: the collection's own cost)

the playbook's cost beyond the module's own ``timings.total`` (goal: at most 3 s), the cost per VM of
each method and of host_maintenance over raw parallel virsh (median seconds / VMs: it should stay
flat from 6 to 48 VMs), the median of each phase host_maintenance reports in its ``timings``, the
evacuation's effective throughput against a single virsh migration measured alone; then one table
of every set side by side, and last the planner alone on 10,000 synthetic VMs over 1,000 synthetic
hosts (``benchmarks/planner.py``). ``--json FILE`` also writes every raw number. Usage (as root,
after ``make setup``):

    .venv/bin/python benchmarks/evacuate.py [--sets 6,12t,48t] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import typing as t
from pathlib import Path

from benchkit import INVENTORY, REPO, median, migrate_all, ratio, ratio_line, timed_playbook
from labkit import assert_no_vm_lost, lab_status, load_hostvars, run_module, run_playbook_report, virsh_migrate, virtlab

SOURCE = "lab-h1"
DESTINATIONS = ("lab-h2", "lab-h3")
WORKERS = 2  # migrations at once: host_maintenance's max_outgoing (its default), given explicitly to both Ansible methods
PRIORITY_RANK = {"high": 0, "medium": 1, "low": 2}
TINY_MIB = 32


class Vm(t.NamedTuple):
    name: str
    memory_mib: int
    priority: str


GUESTS = [
    Vm("ev-web1", 256, "high"),
    Vm("ev-web2", 256, "high"),
    Vm("ev-db1", 320, "medium"),
    Vm("ev-app1", 256, "medium"),
    Vm("ev-batch1", 192, "low"),
    Vm("ev-batch2", 192, "low"),
]

# Method key, label; the order of the first round.
METHODS = (
    ("module", "host_maintenance"),
    ("parallel", "raw parallel virsh"),
    ("loop", "sequential loop"),
    ("playbook", "playbook"),
    ("module_qemu", "host_maintenance at QEMU's defaults"),
)
LABELS = dict(METHODS)
# Label, numerator, denominator, goal: ratios of medians, above 1 when the denominator is faster.
RATIOS = (
    ("playbook vs sequential loop (loop/playbook)", "loop", "playbook", 1.5),
    ("host_maintenance vs raw parallel virsh (parallel/ours)", "parallel", "module", 0.9),
    ("host_maintenance vs sequential loop (loop/ours)", "loop", "module", 1.8),
    ("host_maintenance at QEMU's defaults vs raw parallel virsh (parallel/ours)", "parallel", "module_qemu", None),
)
PLAYBOOK_BEYOND_MODULE_GOAL_S = 3.0
# The policy whose migration settings are QEMU's own defaults, as a plain virsh migrate uses them.
QEMU_DEFAULTS_POLICY = {"policy": "legacy"}


def lab_vms(count: int, tiny: bool) -> t.Tuple[t.List[Vm], t.List[str]]:
    """The VMs in the order the evacuation moves them, and the ``virtlab up`` arguments that create them on lab-h1."""
    if count == len(GUESTS) and not tiny:
        vms, option = list(GUESTS), "--vm"
    else:
        width = len(str(count))
        priorities = tuple(PRIORITY_RANK)
        vms = [Vm("ev-t%0*d" % (width, index + 1), TINY_MIB, priorities[index % len(priorities)]) for index in range(count)]
        option = "--tiny-vm"
    vms.sort(key=lambda vm: (PRIORITY_RANK[vm.priority], -vm.memory_mib, vm.name))
    spec: t.List[str] = []
    for vm in vms:
        spec += [option, "%s:%d:%s@1" % vm]
    return vms, spec


def evacuation_moves(vms: t.Sequence[Vm], uris: t.Mapping[str, str]) -> t.List[t.Tuple[str, str, str]]:
    """Each VM from lab-h1, in the evacuation's order, alternately to lab-h2 and lab-h3."""
    return [(uris[SOURCE], uris[DESTINATIONS[index % len(DESTINATIONS)]], vm.name) for index, vm in enumerate(vms)]


def gather_back(vms: t.Sequence[Vm], uris: t.Mapping[str, str]) -> None:
    """Move every VM running elsewhere back to lab-h1, two at a time (untimed)."""
    names = {vm.name for vm in vms}
    moves = [
        (uris[host["name"]], uris[SOURCE], vm["name"])
        for host in lab_status()["hosts"]
        if host["name"] != SOURCE
        for vm in host["vms"]
        if vm["name"] in names and vm["state"] == "running"
    ]
    migrate_all(moves, WORKERS)
    assert_no_vm_lost()


def run_virsh(vms: t.Sequence[Vm], uris: t.Mapping[str, str], workers: int) -> float:
    moves = evacuation_moves(vms, uris)
    start = time.monotonic()
    migrate_all(moves, workers)
    elapsed = time.monotonic() - start
    assert_no_vm_lost()
    return elapsed


def run_maintenance(uris: t.Mapping[str, str], cluster_policy: t.Optional[t.Mapping[str, t.Any]] = None) -> t.Tuple[float, t.Dict[str, float]]:
    """host_maintenance on lab-h1: its wall time and the phase timings it reports (empty if none)."""
    candidates = [{"name": host, "uri": uri} for host, uri in sorted(uris.items())]
    args: t.Dict[str, t.Any] = {"candidates": candidates, "max_outgoing": WORKERS}
    if cluster_policy:
        args["cluster_policy"] = dict(cluster_policy)
    start = time.monotonic()
    result = run_module(INVENTORY, SOURCE, "virtops.migration.host_maintenance", args)
    elapsed = time.monotonic() - start
    assert result.get("changed") is True and not result.get("failed"), result
    assert_no_vm_lost()
    activated = run_module(INVENTORY, SOURCE, "virtops.migration.host_maintenance", {"state": "active"})
    assert activated.get("changed") is True, activated
    timings = result.get("timings")
    return elapsed, {str(phase): float(seconds) for phase, seconds in timings.items()} if isinstance(timings, dict) else {}


def module_total(report: t.Mapping[str, t.Any]) -> t.Optional[float]:
    """The ``timings.total`` host_maintenance reported inside a playbook run (Ansible's JSON callback report)."""
    for play in report.get("plays") or []:
        for task in play.get("tasks") or []:
            result = (task.get("hosts") or {}).get(SOURCE) or {}
            timings = result.get("timings")
            if isinstance(timings, dict) and "total" in timings and "plan" in result:
                return float(timings["total"])
    return None


def run_maintenance_playbook() -> t.Tuple[float, t.Optional[float]]:
    """playbooks/maintenance.yml: its wall time, and the module's own ``timings.total`` inside it."""
    start = time.monotonic()
    extra_vars = {"target": SOURCE, "reason": "benchmarks/evacuate.py", "max_outgoing": WORKERS}
    proc, report = run_playbook_report(INVENTORY, REPO / "playbooks" / "maintenance.yml", extra_vars)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit("playbooks/maintenance.yml failed (exit %d):\n%s%s" % (proc.returncode, proc.stdout[-4000:], proc.stderr))
    assert_no_vm_lost()
    timed_playbook(REPO / "playbooks" / "activate.yml", {"target": SOURCE})
    return elapsed, module_total(report)


def rotated(index: int) -> t.List[str]:
    """The order of the methods in round ``index`` (from 0): the first round's order, rotated by ``index``."""
    keys = [key for key, _label in METHODS]
    shift = index % len(keys)
    return keys[shift:] + keys[:shift]


def round_line(index: int, order: t.Sequence[str], seconds: t.Mapping[str, float]) -> str:
    times = ", ".join("%s %.1f s" % (label, seconds[key]) for key, label in METHODS if key in seconds)
    return "round %d (%s first): %s" % (index + 1, LABELS[order[0]], times)


def phase_medians(rounds: t.Sequence[t.Mapping[str, float]]) -> t.Dict[str, float]:
    """The median of each phase over the rounds that report it, in the order the module reports them."""
    phases: t.Dict[str, t.List[float]] = {}
    for timings in rounds:
        for phase, seconds in timings.items():
            phases.setdefault(phase, []).append(seconds)
    return {phase: statistics.median(values) for phase, values in phases.items()}


def playbook_beyond_module(entries: t.Sequence[t.Mapping[str, t.Any]]) -> t.List[float]:
    """Per round: the playbook's wall time minus the module's own ``timings.total`` inside it."""
    return [entry["seconds"]["playbook"] - entry["playbook_module_total"] for entry in entries if entry.get("playbook_module_total") is not None]


def over_parallel_per_vm(times: t.Mapping[str, t.Sequence[float]], vm_count: int) -> t.Optional[float]:
    """host_maintenance's median minus raw parallel virsh's, per VM."""
    if not times.get("module") or not times.get("parallel"):
        return None
    return (statistics.median(times["module"]) - statistics.median(times["parallel"])) / vm_count


def summary(times: t.Mapping[str, t.Sequence[float]], vm_count: int, entries: t.Sequence[t.Mapping[str, t.Any]]) -> t.List[str]:
    """The lines after the rounds: medians, ratios against their goals, costs per VM, host_maintenance's phases."""
    lines = ["median: " + ", ".join("%s %s s" % (label, median(times.get(key, ()), "%.1f")) for key, label in METHODS)]
    lines += ["ratio " + ratio_line(label, times.get(top, ()), times.get(bottom, ()), goal) for label, top, bottom, goal in RATIOS]
    beyond = playbook_beyond_module(entries)
    if beyond:
        value = statistics.median(beyond)
        lines.append(
            "playbook beyond the module's own timings.total (median of %d): %.1f s (goal <= %.0f s: %s)"
            % (len(beyond), value, PLAYBOOK_BEYOND_MODULE_GOAL_S, "met" if value <= PLAYBOOK_BEYOND_MODULE_GOAL_S else "NOT met")
        )
    lines.append(
        "cost per VM (median s / %d VMs): " % vm_count
        + ", ".join("%s %s s" % (label, median([value / vm_count for value in times.get(key, ())], "%.2f")) for key, label in METHODS)
    )
    extra = over_parallel_per_vm(times, vm_count)
    if extra is not None:
        lines.append("host_maintenance over raw parallel virsh, per VM: %.2f s" % extra)
    by_phase = phase_medians([entry.get("module_timings") or {} for entry in entries])
    if by_phase:
        lines.append("host_maintenance phases (median s): " + ", ".join("%s %.2f" % item for item in by_phase.items()))
    return lines


def raw_numbers(
    vms: t.Sequence[Vm], rounds: t.Sequence[t.Mapping[str, t.Any]], times: t.Mapping[str, t.Sequence[float]], single: float
) -> t.Dict[str, t.Any]:
    """Everything measured for one VM set, for ``--json`` and the final table."""
    count = len(vms)
    beyond = playbook_beyond_module(rounds)
    return {
        "vms": [vm._asdict() for vm in vms],
        "vm_count": count,
        "ram_mib": sum(vm.memory_mib for vm in vms),
        "workers": WORKERS,
        "rounds": list(rounds),
        "single_virsh_migration_s": {"vm": vms[0].name, "memory_mib": vms[0].memory_mib, "seconds": single},
        "median_s": {key: statistics.median(values) for key, values in times.items() if values},
        "cost_per_vm_s": {key: statistics.median(values) / count for key, values in times.items() if values},
        "module_over_parallel_per_vm_s": over_parallel_per_vm(times, count),
        "playbook_beyond_module_s": statistics.median(beyond) if beyond else None,
        "ratios": [
            {"label": label, "numerator": top, "denominator": bottom, "goal": goal, "value": ratio(times.get(top, ()), times.get(bottom, ()))}
            for label, top, bottom, goal in RATIOS
        ],
        "module_phases_median_s": phase_medians([entry.get("module_timings") or {} for entry in rounds]),
    }


def table(sets: t.Mapping[str, t.Mapping[str, t.Any]]) -> t.List[str]:
    """Every set side by side: the ratios, the playbook's cost beyond the module, host_maintenance's cost per VM over raw parallel."""

    def cell(value: t.Optional[float], spec: str) -> str:
        return "n/a" if value is None else spec % value

    names = list(sets)
    header = "%-58s" % "set" + "".join("%12s" % name for name in names)
    rows = [header]
    for index, (label, _top, _bottom, goal) in enumerate(RATIOS):
        text = label if goal is None else "%s >= %.2g" % (label, goal)
        rows.append("%-58s" % text[:58] + "".join("%12s" % cell(sets[name]["ratios"][index]["value"], "%.2f") for name in names))
    for label, key, spec in (
        ("playbook beyond module s <= %.0f" % PLAYBOOK_BEYOND_MODULE_GOAL_S, "playbook_beyond_module_s", "%.1f"),
        ("host_maintenance over raw parallel, s per VM", "module_over_parallel_per_vm_s", "%.2f"),
    ):
        rows.append("%-58s" % label + "".join("%12s" % cell(sets[name][key], spec) for name in names))
    rows.append("%-58s" % "rounds" + "".join("%12d" % len(sets[name]["rounds"]) for name in names))
    return rows


def planner_line() -> str:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "planner.py"), "--vms", "10000", "--hosts", "1000"],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.strip()


def parse_sets(text: str) -> t.List[t.Tuple[int, bool]]:
    """``6,12t`` -> [(6, False), (12, True)]: a count, tiny when followed by ``t``; six is the most real guests there are."""
    sets = []
    for item in text.split(","):
        item = item.strip()
        tiny = item.endswith("t")
        count = int(item[:-1] if tiny else item)
        if count < 1 or (not tiny and count != len(GUESTS)):
            raise ValueError("a set is N tiny VMs (Nt, N >= 1) or the %d real guests (%d), got %r" % (len(GUESTS), len(GUESTS), item))
        sets.append((count, tiny))
    return sets


def parse_args(argv: t.Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each method per set (default 3; with 5 or more each method goes first once)")
    parser.add_argument("--sets", default="6,12t", help="VM sets, each on a lab of its own: 6 (the real guests) or Nt (N tiny VMs); default 6,12t")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every raw number to FILE")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    try:
        args.sets = parse_sets(args.sets)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def measure(vms: t.Sequence[Vm], rounds: int) -> t.Dict[str, t.Any]:
    """Runs the rounds on the lab that is up; prints as it goes and returns the raw numbers."""
    # The hosts enforce maintenance, as host_maintenance requires by default (untimed).
    timed_playbook(REPO / "playbooks" / "setup_hosts.yml", {"cluster": "lab"})
    uris = {name: hv["virtops_libvirt_uri"] for name, hv in load_hostvars(INVENTORY).items()}
    single = virsh_migrate(uris[SOURCE], uris[DESTINATIONS[0]], vms[0].name)
    gather_back(vms, uris)
    ram_mib = sum(vm.memory_mib for vm in vms)
    print("== Evacuating lab-h1: %d VMs, %d MiB of guest RAM, to lab-h2 and lab-h3, %d at a time" % (len(vms), ram_mib, WORKERS))
    times: t.Dict[str, t.List[float]] = {key: [] for key, _label in METHODS}
    done: t.List[t.Dict[str, t.Any]] = []
    for index in range(rounds):
        order = rotated(index)
        entry: t.Dict[str, t.Any] = {"order": order, "seconds": {}, "module_timings": None, "playbook_module_total": None}
        for method in order:
            if method == "module":
                elapsed, entry["module_timings"] = run_maintenance(uris)
            elif method == "module_qemu":
                elapsed, _timings = run_maintenance(uris, QEMU_DEFAULTS_POLICY)
            elif method == "playbook":
                elapsed, entry["playbook_module_total"] = run_maintenance_playbook()
            else:
                elapsed = run_virsh(vms, uris, WORKERS if method == "parallel" else 1)
            entry["seconds"][method] = elapsed
            times[method].append(elapsed)
            gather_back(vms, uris)
        done.append(entry)
        print(round_line(index, order, entry["seconds"]))
    for line in summary(times, len(vms), done):
        print(line)
    print(
        "throughput: host_maintenance %.0f MiB/s of guest RAM; one virsh migration alone %.0f MiB/s (%d MiB in %.1f s)"
        % (ram_mib / statistics.median(times["module"]), vms[0].memory_mib / single, vms[0].memory_mib, single)
    )
    return raw_numbers(vms, done, times, single)


def main() -> int:
    args = parse_args()
    INVENTORY.parent.mkdir(parents=True, exist_ok=True)
    numbers: t.Dict[str, t.Any] = {"sets": {}}
    for count, tiny in args.sets:
        name = "%d%s" % (count, " tiny" if tiny else " guests")
        vms, spec = lab_vms(count, tiny)
        print("\n== Set: %s" % name)
        virtlab("up", "--hosts", "3", "--inventory", str(INVENTORY), *spec, timeout=900 + 10 * len(vms))
        try:
            numbers["sets"][name] = measure(vms, args.rounds)
        finally:
            virtlab("down", check=False)
    print("\n== All sets (ratios of medians; goals as above)")
    for line in table(numbers["sets"]):
        print(line)
    print("\n== Planner alone")
    numbers["planner"] = planner_line()
    print(numbers["planner"])
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")
        print("raw numbers: %s" % args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
