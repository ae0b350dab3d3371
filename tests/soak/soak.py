"""Randomized soak of the collection on the lab: seeded operations and faults, judged through libvirt.

    python tests/soak/soak.py --seconds 300 [--seed N] [--steps N] [--stop-on-violation] [--keep-up]

It holds the machine's lab lock from before `virtlab up` until after `virtlab down`, brings up three
hosts with tiny VMs and one real guest (for moves slow enough to cancel), installs the collection's
hook (playbooks/setup_hosts.yml), then runs the plan of `soaklib.plan(seed)`: single moves, evacuations,
activations, cancels, hibernations and restores, sometimes two at once, sometimes with a fault
(libvirtd killed, link cut, controller killed, VM paused, transient VM, stale copy). After each step it
restores the lab and judges it through libvirt alone (`soaklib.judge`). It prints the figures at the
end and writes them to tests/output/soak.json; the exit code is 1 when any violation was found.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import typing as t
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

import labkit  # noqa: E402 pylint: disable=wrong-import-position
import soaklib as sl  # noqa: E402 pylint: disable=wrong-import-position

HOSTS = ("lab-h1", "lab-h2", "lab-h3")
# Index 0 is the real guest (TCG): the one slow enough to cancel (a tiny VM moves in about a second).
GUEST = "soakg1"
GUEST_SPEC = GUEST + ":160@3"
TINY_SPECS = ("soak1:32:high@1", "soak2:32@1", "soak3:48:low@2", "soak4:32@2", "soak5:32:high@3", "soak6:32@3")
VMS = (GUEST,) + tuple(spec.split(":", 1)[0] for spec in TINY_SPECS)
MIGRATE = "virtops.migration.vm_migrate"
MAINTENANCE = "virtops.migration.host_maintenance"
HIBERNATE = "virtops.migration.vm_hibernate"
OUTPUT = labkit.REPO / "tests" / "output" / "soak.json"
# A violation is a state that lasts: migrations still in flight (a killed controller's job runs on) end first.
SETTLE_S = 60.0
LINK_DOWN_S = 6.0
LIBVIRTD_DOWN_MAX_S = 20.0
MODULE_TIMEOUT_S = 300.0


class Running:
    """One operation of a step, resolved against the lab and run in its own thread."""

    def __init__(self, label: str, kind: str, vm: str | None, host: str, source: str, destination: str | None) -> None:
        self.label = label
        self.kind = kind
        self.vm = vm
        self.host = host  # where the module runs
        self.source = source
        self.destination = destination
        self.result: dict[str, t.Any] | None = None
        self.error = ""
        self.thread: threading.Thread | None = None

    def start(self, inventory: Path, module: str, args: dict[str, t.Any], delay: float = 0.0) -> None:
        def run() -> None:
            time.sleep(delay)
            try:
                self.result = labkit.run_module(inventory, self.host, module, args, timeout=MODULE_TIMEOUT_S, extra_vars={"soak_tag": self.label})
            except (AssertionError, subprocess.TimeoutExpired) as exc:
                self.error = str(exc).splitlines()[0][:300]

        self.thread = threading.Thread(target=run, name=self.label, daemon=True)
        self.thread.start()

    def join(self, timeout: float | None = None) -> bool:
        assert self.thread is not None
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def summary(self) -> str:
        if self.result is None:
            return "%s: no result (%s)" % (self.label, self.error or "killed")
        if self.result.get("failed"):
            return "%s: failed: %s" % (self.label, str(self.result.get("msg", ""))[:240])
        return "%s: ok changed=%s" % (self.label, self.result.get("changed"))


class Soak:
    """The soak run: the lab, the plan, the faults, the figures."""

    def __init__(self, args: argparse.Namespace, inventory: Path) -> None:
        self.args = args
        self.inventory = inventory
        self.uris: dict[str, str] = {}
        self.planted: set[tuple[str, str]] = set()
        self.transients: set[str] = set()
        self.operations: collections.Counter[str] = collections.Counter()
        self.faults: collections.Counter[str] = collections.Counter()
        self.violations: collections.Counter[str] = collections.Counter()
        # Two copies a failed operation kept (one paused) and named in its result: the documented outcome,
        # left to the operator; counted apart from violations, then cleaned up as an operator would.
        self.held_for_operator: collections.Counter[str] = collections.Counter()
        self.operator_actions = 0
        self.found: list[dict[str, t.Any]] = []
        self.log: list[str] = []
        self.steps = 0

    # --- the lab -------------------------------------------------------------------------------------

    def bring_up(self) -> None:
        args = ["up", "--hosts", str(len(HOSTS)), "--inventory", str(self.inventory), "--vm", GUEST_SPEC]
        for spec in TINY_SPECS:
            args += ["--tiny-vm", spec]
        labkit.virtlab(*args, timeout=900)
        setup = labkit.run_playbook(self.inventory, labkit.REPO / "playbooks" / "setup_hosts.yml", {"cluster": "lab"})
        if setup.returncode != 0:
            raise SystemExit("playbooks/setup_hosts.yml failed:\n%s%s" % (setup.stdout, setup.stderr))
        self.uris = {host: labkit.uri(self.inventory, host) for host in HOSTS}

    def snapshot(self) -> sl.Snapshot:
        status = labkit.lab_status()
        snap = sl.Snapshot(domains={})
        for host in status["hosts"]:
            name = host["name"]
            if host["error"] or not host["libvirtd_alive"]:
                snap.errors[name] = host["error"] or "libvirtd is not running"
            snap.marks[name] = host["maintenance"]
            domains = {}
            for vm in host["vms"]:
                saved = vm["state"] == "shut off" and vm["persistent"] and managed_save(self.uris[name], vm["name"])
                domains[vm["name"]] = sl.Domain(vm["state"], vm["persistent"], saved)
            snap.domains[name] = domains
        snap.qemu = qemu_processes()
        return snap

    def where(self, snap: sl.Snapshot, vm: str) -> str:
        """The host the VM is active on, else the one holding its (unplanted) definition, else the first host."""
        active = snap.active_on(vm)
        if active:
            return active[0]
        for host in HOSTS:
            if vm in snap.domains.get(host, {}) and (vm, host) not in self.planted:
                return host
        return HOSTS[0]

    def candidates(self, *leave_out: str) -> list[dict[str, str]]:
        return [{"name": host, "uri": self.uris[host]} for host in HOSTS if host not in leave_out]

    # --- one step ------------------------------------------------------------------------------------

    def resolve(self, step: sl.Step, snap: sl.Snapshot) -> list[tuple[Running, str, dict[str, t.Any], float]]:
        """Each operation as (Running, module, args, start delay), resolved against the snapshot."""
        launched = []
        for index, op in enumerate(step.operations, 1):
            label = "step%d-op%d-%s" % (step.number, index, op.kind)
            vm = VMS[op.vm] if op.vm is not None else None
            if op.kind in (sl.EVACUATE, sl.ACTIVATE):
                host = HOSTS[op.host] if op.host is not None else self.where(snap, VMS[t.cast(int, op.host_of_vm)])
                others = [h for h in HOSTS if h != host]
                run = Running(label, op.kind, None, host, host, others[step.number % len(others)])
                args: dict[str, t.Any] = {"candidates": self.candidates()} if op.kind == sl.EVACUATE else {"state": "active"}
                launched.append((run, MAINTENANCE, args, 0.0))
                continue
            source = self.where(snap, t.cast(str, vm))
            if op.kind in (sl.HIBERNATE, sl.RESTORE):
                run = Running(label, op.kind, vm, source, source, HOSTS[(HOSTS.index(source) + 1) % len(HOSTS)])
                state = "hibernated" if op.kind == sl.HIBERNATE else "running"
                launched.append((run, HIBERNATE, {"name": vm, "state": state}, 0.0))
                continue
            if op.dest_offset is None:
                run = Running(label, op.kind, vm, source, source, None)
                args = {"name": vm, "destination": "auto", "candidates": self.candidates(source)}
            else:
                destination = HOSTS[(HOSTS.index(source) + 1 + op.dest_offset) % len(HOSTS)]
                run = Running(label, op.kind, vm, source, source, destination)
                args = {"name": vm, "destination_uri": self.uris[destination]}
            if op.kind == sl.CANCEL:
                # A real guest at 4 MiB/s: a move of several seconds, cancelled during it.
                args.update(bandwidth_mib=4, policy="legacy")
                launched.append((run, MIGRATE, args, 0.0))
                cancel = Running("step%d-op%dr-cancelled" % (step.number, index), "cancelled", vm, source, source, None)
                # ansible itself takes about 2 s to reach the host
                launched.append((cancel, MIGRATE, {"name": vm, "state": "cancelled"}, 2.0 + op.cancel_after_s))
                continue
            launched.append((run, MIGRATE, args, 0.0))
        return launched

    def run_step(self, step: sl.Step) -> list[sl.Violation]:
        self.log.append(step.describe())
        before = self.snapshot()
        launched = self.resolve(step, before)
        first = launched[0][0]
        fault_host = first.source if step.fault_side == "source" or first.destination is None else first.destination
        restore: list[t.Callable[[], None]] = []
        if step.fault is not None and step.fault_delay_s < 0:
            restore += self.inject(step, first, fault_host, before)
        for run, module, args, delay in launched:
            run.start(self.inventory, module, args, delay)
            self.operations[run.kind if run.kind != "cancelled" else "cancel_request"] += 1
        if len(launched) > 1 and launched[1][0].kind != "cancelled":
            self.operations["concurrent"] += 1
        if step.fault is not None and step.fault_delay_s >= 0:
            time.sleep(step.fault_delay_s)
            restore += self.inject(step, first, fault_host, before)
        for run, _module, _args, _delay in launched:
            run.join(MODULE_TIMEOUT_S + 60)
        for undo in restore:
            undo()
        self.heal()
        self.log.extend("    " + run.summary() for run, _m, _a, _d in launched)
        # Claims about the soak's own transient VMs are not judged: the soak removes them before judging.
        claims = [claim for run, _m, _a, _d in launched for claim in claims_of(run, before) if claim.vm is None or claim.vm in VMS]
        found = self.settled_judgement(claims)
        named = {vm for run, _m, _a, _d in launched for vm in kept_paused_by(run)}
        held = [v for v in found if v.kind in (sl.ACTIVE_TWICE, sl.DEFINED_TWICE) and v.detail.split()[0] in named]
        for violation in held:
            self.held_for_operator[violation.kind] += 1
            self.log.append("    held for the operator, named by the result: %s: %s" % (violation.kind, violation.detail))
        if found:
            self.operator_cleanup()
        return [v for v in found if v not in held]

    def operator_cleanup(self) -> None:
        """What an operator does after a failure that left two copies: the stale one goes.

        A copy paused beside a running one, or a shut-off definition beside a running copy, is destroyed
        and undefined, so that the next steps are judged on a lab with one copy of each VM.
        """
        snap = self.snapshot()
        for vm in VMS:
            active = snap.active_on(vm)
            running = [h for h in active if snap.domains[h][vm].state == "running"]
            if len(running) != 1:
                continue
            for host, doms in snap.domains.items():
                if host == running[0] or vm not in doms or (vm, host) in self.planted:
                    continue
                labkit.virsh(self.uris[host], "destroy", vm, check=False)
                labkit.virsh(self.uris[host], "undefine", "--managed-save", vm, check=False)
                self.operator_actions += 1
                self.log.append("    operator: removed the %s copy of %s on %s (it runs on %s)" % (doms[vm].state, vm, host, running[0]))

    def settled_judgement(self, claims: list[sl.Claim]) -> list[sl.Violation]:
        deadline = time.monotonic() + SETTLE_S
        while True:
            found = sl.judge(self.snapshot(), VMS, self.planted, claims, self.transients)
            if not found or time.monotonic() > deadline:
                return found
            time.sleep(3)

    # --- faults and their undoing --------------------------------------------------------------------

    def inject(self, step: sl.Step, first: Running, host: str, snap: sl.Snapshot) -> list[t.Callable[[], None]]:
        """Inject the step's fault; the callables that undo it once the operations have ended."""
        fault = t.cast(str, step.fault)
        self.faults[fault] += 1
        self.log.append("    fault %s on %s" % (fault, host))
        if fault == sl.KILL_LIBVIRTD:
            labkit.virtlab("kill-libvirtd", host, check=False)
            # A module waiting on a dead libvirtd should give up; libvirtd comes back after at most 20 s.
            timer = threading.Timer(LIBVIRTD_DOWN_MAX_S, labkit.virtlab, ("start-libvirtd", host), {"check": False})
            timer.start()
            return [lambda: (timer.cancel(), labkit.virtlab("start-libvirtd", host, check=False))]
        if fault == sl.LINK_CUT:
            labkit.virtlab("link", host, "down", check=False)
            timer = threading.Timer(LINK_DOWN_S, labkit.virtlab, ("link", host, "up"), {"check": False})
            timer.start()
            return [lambda: (timer.join(), labkit.virtlab("link", host, "up", check=False))]
        if fault == sl.KILL_CONTROLLER:
            kill_controller(first.label)
            return [lambda: wait_no_module_left(HOSTS)]
        vm = first.vm or next((v for v in VMS[1:] if host in snap.active_on(v)), VMS[1])
        if fault == sl.PAUSE:
            home = self.where(self.snapshot() if step.fault_delay_s >= 0 else snap, vm)
            labkit.virsh(self.uris[home], "suspend", vm, check=False)
            return [lambda: self.resume(vm)]
        if fault == sl.TRANSIENT:
            name = "soakx%d" % step.number
            model = next((v for v in VMS[1:] if v in snap.domains.get(first.source, {})), VMS[1])
            dumped = labkit.virsh(self.uris[self.where(snap, model)], "dumpxml", "--inactive", model, check=False)
            if dumped.returncode != 0:
                self.log.append("    (transient VM not created: %s moved meanwhile)" % model)
                return []
            xml = dumped.stdout
            xml = re.sub(r"<uuid>[^<]*</uuid>|<mac address=[^/]*/>", "", xml).replace(model, name)
            created = virsh_with_xml(self.uris[first.source], "create", xml)
            if created.returncode == 0:
                self.transients.add(name)
            else:
                self.log.append("    (transient VM not created: %s)" % created.stderr.strip()[:200])
            return [lambda: self.remove_transient(name)]
        # STALE_COPY: the VM's definition on a host where it is not defined (read now: mid-step the
        # VM may have moved since the step began).
        now = self.snapshot() if step.fault_delay_s >= 0 else snap
        home = self.where(now, vm)
        others = [h for h in HOSTS if h != home and vm not in now.domains.get(h, {})]
        if not others:
            return []
        target = host if host in others else others[0]
        dumped = labkit.virsh(self.uris[home], "dumpxml", "--inactive", vm, check=False)
        if dumped.returncode != 0:
            self.log.append("    (stale copy not planted: %s left %s meanwhile)" % (vm, home))
            return []
        defined = virsh_with_xml(self.uris[target], "define", dumped.stdout)
        if defined.returncode == 0:
            self.planted.add((vm, target))
            self.log.append("    stale copy of %s defined on %s" % (vm, target))
        return [lambda: self.remove_planted(vm, target)]

    def resume(self, vm: str) -> None:
        for host, state in labkit.vm_homes(vm).items():
            if state == "paused":
                labkit.virsh(self.uris[host], "resume", vm, check=False)

    def remove_transient(self, name: str) -> None:
        for host in HOSTS:
            labkit.virsh(self.uris[host], "destroy", name, check=False)
            labkit.virsh(self.uris[host], "undefine", name, check=False)
        self.transients.discard(name)

    def remove_planted(self, vm: str, host: str) -> None:
        """Undefine the planted copy unless the VM itself now runs there (a move over it replaced it)."""
        if labkit.vm_homes(vm).get(host) == "shut off":
            labkit.virsh(self.uris[host], "undefine", vm, check=False)
        self.planted.discard((vm, host))

    def heal(self) -> None:
        """Whatever a fault left behind: a libvirtd down, a link down."""
        for host in labkit.lab_status()["hosts"]:
            if not host["libvirtd_alive"]:
                labkit.virtlab("start-libvirtd", host["name"], check=False)
            if not host["link_up"] or not host["migration_link_up"]:
                labkit.virtlab("link", host["name"], "up", check=False)

    # --- the run -------------------------------------------------------------------------------------

    def run(self) -> None:
        deadline = time.monotonic() + self.args.seconds
        for step in sl.plan(self.args.seed, len(VMS), len(HOSTS)):
            if time.monotonic() > deadline or (self.args.steps and step.number > self.args.steps):
                break
            print(step.describe(), flush=True)
            found = self.run_step(step)
            self.steps = step.number
            for violation in found:
                self.report(step, violation)
            if found and self.args.stop_on_violation:
                break

    def report(self, step: sl.Step, violation: sl.Violation) -> None:
        self.violations[violation.kind] += 1
        replay = "make soak SEED=%d STEPS=%d  (python tests/soak/soak.py --seed %d --steps %d)" % (self.args.seed, step.number, self.args.seed, step.number)
        self.found.append({"step": step.number, "kind": violation.kind, "detail": violation.detail, "replay": replay})
        print("VIOLATION (seed %d, step %d) %s: %s" % (self.args.seed, step.number, violation.kind, violation.detail), flush=True)
        print("  steps leading to it:\n    " + "\n    ".join(self.log[-30:]), flush=True)
        print("  replay: " + replay, flush=True)

    def figures(self) -> dict[str, t.Any]:
        return {
            "seed": self.args.seed,
            "seconds": self.args.seconds,
            "steps": self.steps,
            "operations": dict(self.operations),
            "faults": dict(self.faults),
            "violations": {kind: self.violations.get(kind, 0) for kind in sl.VIOLATIONS},
            "held_for_operator": dict(self.held_for_operator),
            "operator_actions": self.operator_actions,
            "found": self.found,
        }


def kept_paused_by(run: Running) -> list[str]:
    """The VMs a failed operation said it kept paused beside another copy, naming both hosts."""
    result = run.result or {}
    if result.get("kept_paused") and run.vm:
        return [run.vm]
    return [record["vm"] for record in result.get("vms") or [] if "left paused on" in str(record.get("error") or "")]


def claims_of(run: Running, before: sl.Snapshot) -> list[sl.Claim]:
    """What the operation's result says about the lab."""
    result = run.result
    if result is None:
        return []
    failed = bool(result.get("failed"))
    if run.kind in (sl.MIGRATE, sl.CANCEL):
        vm = t.cast(str, run.vm)
        destination = (result.get("destination") or {}).get("hostname")
        if not failed and destination and result.get("vm_state"):
            return [sl.Claim("on", vm, destination, run.label)]
        observed = result.get("observed") or {}
        if failed and not (observed.get("destination") or {}).get("active") and vm in before.active_on(run.source):
            return [sl.Claim("stayed", vm, run.source, run.label)]
        return []
    if run.kind == "cancelled":
        if not failed and result.get("changed") and result.get("state") in sl.ACTIVE_STATES:
            return [sl.Claim("on", run.vm, run.source, run.label)]
        return []
    if run.kind == sl.EVACUATE:
        claims = [sl.Claim("on", record["vm"], record["to"], run.label) for record in result.get("vms") or [] if record.get("outcome") == "migrated"]
        if failed and before.marks.get(run.host) is None:
            claims.append(sl.Claim("unmarked", None, run.host, run.label))
        return claims
    if run.kind == sl.ACTIVATE:
        return [] if failed else [sl.Claim("unmarked", None, run.host, run.label)]
    if failed:
        return []
    if run.kind == sl.HIBERNATE and result.get("state") == "shut off":
        return [sl.Claim("off", run.vm, run.source, run.label)]
    if run.kind == sl.RESTORE and result.get("state") in sl.ACTIVE_STATES:
        return [sl.Claim("on", run.vm, run.source, run.label)]
    return []


def virsh_with_xml(host_uri: str, command: str, xml: str) -> subprocess.CompletedProcess[str]:
    """``virsh create`` or ``define`` of a domain XML on that host."""
    return subprocess.run(["virsh", "-c", host_uri, command, "/dev/stdin"], input=xml, capture_output=True, text=True, timeout=60, check=False)


def managed_save(host_uri: str, vm: str) -> bool:
    out = labkit.virsh(host_uri, "dominfo", vm, check=False).stdout
    return bool(re.search(r"^Managed save:\s+yes", out, re.MULTILINE))


def qemu_processes() -> dict[str, int]:
    """QEMU processes per guest name, from the process table (libvirt's view can lag behind a dead libvirtd)."""
    counts: collections.Counter[str] = collections.Counter()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-system-x86_64"):
            for arg in argv:
                if arg.startswith(b"guest="):
                    counts[arg[6:].split(b",")[0].decode()] += 1
    return dict(counts)


def kill_controller(label: str) -> None:
    """SIGKILL the ansible process running the operation ``label`` (by its tag) and its children, by PID."""
    parents: dict[int, int] = {}
    tagged = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if label.encode() in (entry / "cmdline").read_bytes():
                tagged.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    victims = set(tagged)
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in victims} - victims
        grew = bool(children)
        victims |= children
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def wait_no_module_left(hosts: t.Sequence[str], timeout: float = 180) -> None:
    """Wait until no module of a killed controller runs on the hosts any more."""
    deadline = time.monotonic() + timeout
    for host in hosts:
        while time.monotonic() < deadline:
            # The brackets keep pgrep from finding its own command line.
            proc = labkit.virtlab("ssh", host, "--", "pgrep", "-f", "'AnsiballZ_[v]m_|AnsiballZ_[h]ost_'", check=False)
            if proc.returncode != 0:
                break
            time.sleep(2)


def main(argv: t.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=300, help="how long to run steps (default 300)")
    parser.add_argument("--seed", type=int, default=None, help="the plan's seed (default: a random one, printed)")
    parser.add_argument("--steps", type=int, default=0, help="stop after this many steps (a replay up to a violation)")
    parser.add_argument("--stop-on-violation", action="store_true", help="stop at the first step with a violation")
    parser.add_argument("--keep-up", action="store_true", help="leave the lab up at the end")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="the figures as JSON (default tests/output/soak.json)")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = secrets.randbelow(10**9)
    print("soak: seed %d, %d s" % (args.seed, args.seconds), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    soak = Soak(args, args.output.parent / "soak-inventory.yml")
    with labkit.lab_lock_held():
        try:
            soak.bring_up()
            soak.run()
        finally:
            if args.keep_up:
                print("soak: the lab stays up, inventory %s" % soak.inventory)
            else:
                labkit.virtlab("down", check=False)
    figures = soak.figures()
    args.output.write_text(json.dumps(figures, indent=2) + "\n")
    print("soak: seed %d, %d steps" % (args.seed, soak.steps))
    print("  operations: %s" % json.dumps(figures["operations"], sort_keys=True))
    print("  faults:     %s" % json.dumps(figures["faults"], sort_keys=True))
    print("  violations: %s" % json.dumps(figures["violations"]))
    print("  held for the operator (named by the result): %s; copies removed as an operator: %d"
          % (json.dumps(figures["held_for_operator"]), figures["operator_actions"]))
    print("  figures in %s" % args.output)
    return 1 if soak.found else 0


if __name__ == "__main__":
    sys.exit(main())
