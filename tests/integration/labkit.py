"""Helpers the lab integration tests share: drive `virtlab` and run collection modules over SSH.

Modules run exactly as users run them: `ansible` / `ansible-playbook` against the inventory that
`virtlab up` wrote, reaching each lab host over SSH. Results come back through Ansible's JSON callback.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VIRTLAB = REPO / "tests" / "lab" / "virtlab"


# The machine's one lab: a session holds this lock from before its `virtlab up` until after its `virtlab down`.
LAB_LOCK = Path(os.environ.get("VIRTLAB_STATE", "/var/tmp/virtops-lab") + ".lock")


@contextlib.contextmanager
def lab_lock_held() -> t.Iterator[None]:
    """Hold the machine's lab lock (waiting for another session's lab to go first) for a whole session.

    The virtlab commands the session runs, itself or through Ansible (the inventory's restart
    command), know their session by ``VIRTLAB_SESSION_PID`` and serialise among themselves instead of
    waiting for the lock their own session holds.
    """
    with open(LAB_LOCK, "a", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("waiting for the lab lock (%s): another session's lab is up" % LAB_LOCK, file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        os.environ["VIRTLAB_SESSION_PID"] = str(os.getpid())
        try:
            yield
        finally:
            del os.environ["VIRTLAB_SESSION_PID"]


# The lab's state file (`virtlab` writes it; see tests/lab/virtlab_lib/common.py).
LAB_STATE_FILE = Path(os.environ.get("VIRTLAB_STATE", "/var/tmp/virtops-lab")) / "state.json"


def qemu_guest_name(argv: t.Sequence[str]) -> str | None:
    """The guest name of a QEMU command line (``-name guest=NAME,debug-threads=on``; ",," is a comma in NAME)."""
    for option, value in zip(argv, argv[1:]):
        if option != "-name":
            continue
        name, index = [], 0
        while index < len(value):
            if value[index] == ",":
                if value[index + 1 : index + 2] != ",":
                    break
                index += 1
            name.append(value[index])
            index += 1
        text = "".join(name)
        return text[len("guest=") :] if text.startswith("guest=") else text
    return None


def qemu_census() -> dict[str, list[str]]:
    """Which lab hosts run a QEMU process of which VM: VM name -> host names (sorted), from /proc only.

    No libvirt and no lab lock: a QEMU process belongs to the host whose network namespace it is in
    (each host's named namespace, /run/netns/NETNS, as the lab state file records it), and its
    VM is the ``-name guest=NAME`` of its command line. Cheap enough to call every second; a VM that
    runs on two hosts at once (a split brain) shows both.
    """
    try:
        hosts = json.loads(LAB_STATE_FILE.read_text()).get("hosts", [])
    except (OSError, ValueError):
        return {}
    by_inode: dict[int, str] = {}
    for host in hosts:
        with contextlib.suppress(OSError, KeyError):
            by_inode[os.stat("/run/netns/" + host["netns"]).st_ino] = host["name"]
    census: dict[str, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/comm" % entry, encoding="utf-8") as handle:
                if not handle.read().startswith("qemu-system"):
                    continue
            host = by_inode.get(os.stat("/proc/%s/ns/net" % entry).st_ino)
            if host is None:
                continue
            with open("/proc/%s/cmdline" % entry, "rb") as handle:
                argv = handle.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        name = qemu_guest_name(argv)
        if name is not None:
            census.setdefault(name, []).append(host)
    return {name: sorted(found) for name, found in census.items()}


# How long a guest's agent may not answer right after a move before a command in the guest fails.
AGENT_WAIT_S = 60.0


def virtlab(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run `virtlab ARGS`; with check=True a non-zero exit fails loudly with its output."""
    proc = subprocess.run([str(VIRTLAB), *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(
            "virtlab %s exited %d\nstdout:\n%s\nstderr:\n%s" % (" ".join(args), proc.returncode, proc.stdout, proc.stderr)
        )
    return proc


def lab_status() -> dict[str, t.Any]:
    return json.loads(virtlab("status", "--json").stdout)


def assert_no_vm_lost(*allow_stopped: str) -> None:
    """The no-VM-lost invariant: every lab VM defined on exactly one host and running only there."""
    args = ["check"]
    for name in allow_stopped:
        args += ["--allow-stopped", name]
    proc = virtlab(*args, check=False)
    assert proc.returncode == 0, "virtlab check failed:\n%s%s" % (proc.stdout, proc.stderr)


def _ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_HOST_KEY_CHECKING="False",
        ANSIBLE_RETRY_FILES_ENABLED="False",
        ANSIBLE_NOCOLOR="1",
        # The json callback then reports set_stats data (global_custom_stats), as AWX shows artifacts.
        ANSIBLE_SHOW_CUSTOM_STATS="1",
    )
    return env


def run_module(
    inventory: Path,
    host: str,
    module: str,
    args: t.Mapping[str, t.Any] | None = None,
    check_mode: bool = False,
    diff: bool = False,
    timeout: float = 900,
    background: int = 0,
    extra_vars: t.Mapping[str, t.Any] | None = None,
) -> dict[str, t.Any]:
    """Run one module on one lab host over SSH and return its result dict.

    ``background=N`` starts it as an async task allowed N seconds and returns at once with its
    ``ansible_job_id`` (read its outcome with :func:`wait_async`).
    """
    cmd = [
        "ansible",
        host,
        "-i",
        str(inventory),
        "-m",
        module,
    ]
    if args:
        cmd += ["-a", json.dumps(dict(args))]
    if check_mode:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    if background:
        cmd += ["-B", str(background), "-P", "0"]
    if extra_vars:
        cmd += ["-e", json.dumps(dict(extra_vars))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_ansible_env(), timeout=timeout, check=False)
    try:
        report = json.loads(proc.stdout)
        return report["plays"][0]["tasks"][0]["hosts"][host]
    except (ValueError, KeyError, IndexError) as exc:
        raise AssertionError(
            "no module result from %s on %s (exit %d): %s\nstdout:\n%s\nstderr:\n%s"
            % (module, host, proc.returncode, exc, proc.stdout, proc.stderr)
        ) from exc


def run_playbook(
    inventory: Path, playbook: Path, extra_vars: t.Mapping[str, t.Any] | None = None, check_mode: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run a playbook with the default callback; the caller asserts on the return code and output."""
    cmd = ["ansible-playbook", "-i", str(inventory), str(playbook)]
    if extra_vars:
        cmd += ["-e", json.dumps(dict(extra_vars))]
    if check_mode:
        cmd.append("--check")
    env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_NOCOLOR="1")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, check=False)


def wait_async(inventory: Path, host: str, job_id: str, timeout: float = 300) -> dict[str, t.Any]:
    """Wait for an async task to finish and return its final result.

    One ``ansible-playbook`` process polls the job once a second with ``async_status`` in an ``until``
    loop (one process start instead of one per poll). Fails the test when the job has not finished
    within ``timeout`` seconds.
    """
    retries = max(1, int(timeout))
    task = {
        "name": "wait for %s" % job_id,
        "ansible.builtin.async_status": {"jid": job_id},
        "register": "job",
        "until": "job.finished | bool",
        "retries": retries,
        "delay": 1,
    }
    [result] = run_tasks(inventory, host, [task], timeout=timeout + 120)
    assert result.get("finished"), "async job %s on %s did not finish in %d s: %s" % (job_id, host, timeout, result)
    return result


def run_tasks(inventory: Path, host: str, tasks: t.Sequence[t.Mapping[str, t.Any]], timeout: float = 1800) -> list[dict[str, t.Any]]:
    """Run several tasks on one lab host in one ``ansible-playbook`` process; each task's result, in order.

    For tables of cases (bad inputs, refusals, check/real/repeat sequences): one process start instead
    of one per case. Every task runs whatever the ones before it did (``ignore_errors``), so the caller
    gets a result for each and must assert on each one: a failed task is a result here, not a pass.
    Tasks are plain task mappings (module name as key, ``check_mode``/``diff`` keywords allowed).
    """
    import yaml  # pylint: disable=import-outside-toplevel

    play = [{"name": "lab tasks", "hosts": host, "gather_facts": False, "tasks": [dict(task, ignore_errors=True) for task in tasks]}]
    with tempfile.TemporaryDirectory(prefix="virtops-lab-tasks-") as work:
        playbook = Path(work) / "tasks.yml"
        playbook.write_text(yaml.safe_dump(play, sort_keys=False))
        proc, report = run_playbook_report(inventory, playbook, timeout=timeout)
    try:
        results = [task["hosts"][host] for task in report["plays"][0]["tasks"]]
    except (KeyError, IndexError) as exc:
        raise AssertionError("no task results on %s (exit %d): %s\nstderr:\n%s" % (host, proc.returncode, exc, proc.stderr)) from exc
    assert len(results) == len(tasks), "%d of %d tasks reported on %s:\n%s" % (len(results), len(tasks), host, proc.stderr[-3000:])
    return results


def module_task(
    module: str, args: t.Mapping[str, t.Any] | None = None, check_mode: bool = False, diff: bool = False, **keywords: t.Any
) -> dict[str, t.Any]:
    """One task for :func:`run_tasks`: ``module`` with ``args``, in check mode and/or with diff when asked."""
    task: dict[str, t.Any] = {"name": "%s%s" % (module, " (check mode)" if check_mode else ""), module: dict(args or {})}
    if check_mode:
        task["check_mode"] = True
    if diff:
        task["diff"] = True
    task.update(keywords)
    return task


def wait_until(predicate: t.Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> None:
    """Wait for a condition of the lab, failing the test with ``what`` when it never comes true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out after %d s waiting until %s" % (timeout, what)
        time.sleep(interval)


def load_hostvars(inventory: Path) -> dict[str, dict[str, t.Any]]:
    """Host variables from the YAML inventory `virtlab up` wrote (group vars merged under host vars)."""
    import yaml  # pylint: disable=import-outside-toplevel

    data = yaml.safe_load(inventory.read_text())
    result: dict[str, dict[str, t.Any]] = {}

    def walk(group: dict[str, t.Any], inherited: dict[str, t.Any]) -> None:
        merged = dict(inherited, **(group.get("vars") or {}))
        for name, hostvars in (group.get("hosts") or {}).items():
            result[name] = dict(merged, **(hostvars or {}))
        for child in (group.get("children") or {}).values():
            walk(child or {}, merged)

    walk(data["all"], {})
    return result


def vm_homes(name: str) -> dict[str, str]:
    """Host -> state for every lab host on which the VM is defined or active."""
    homes = {}
    for host in lab_status()["hosts"]:
        for vm in host["vms"]:
            if vm["name"] == name:
                homes[host["name"]] = vm["state"]
    return homes


def running_on(name: str) -> str:
    """The one host the VM runs on; fails the test if that is not exactly one."""
    running = [host for host, state in vm_homes(name).items() if state == "running"]
    assert len(running) == 1, "VM %s runs on %s" % (name, running or "no host")
    return running[0]


def uri(lab: Path, host: str) -> str:
    """The libvirt URI other lab hosts use to reach ``host``."""
    return load_hostvars(lab)[host]["virtops_libvirt_uri"]


def write_marker(vm: str) -> str:
    """Write a random marker into the guest's tmpfs (lost if the guest's memory is lost)."""
    marker = "marker-%s-%s" % (vm, secrets.token_hex(4))
    guest_exec(vm, "sh", "-c", "echo %s > /tmp/marker" % marker)
    return marker


def guest_exec(vm: str, *argv: str, check: bool = True, agent_wait: float = AGENT_WAIT_S) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in the guest through its QEMU guest agent (``virtlab exec``).

    Right after a move the guest's agent channel can take a moment to answer on the new host (QEMU
    reconnects it; under TCG on a busy machine, seconds). While the agent is not responding the
    command has not run, so it is tried again for ``agent_wait`` s; any other failure counts at once.
    """
    deadline = time.monotonic() + agent_wait
    while True:
        proc = virtlab("exec", vm, "--", *argv, check=False)
        if proc.returncode == 0 or "Guest agent is not responding" not in proc.stderr or time.monotonic() > deadline:
            break
        time.sleep(1)
    if check and proc.returncode != 0:
        raise AssertionError("in %s: %s exited %d\nstdout:\n%s\nstderr:\n%s" % (vm, " ".join(argv)[:200], proc.returncode, proc.stdout, proc.stderr))
    return proc


def read_marker(vm: str, agent_wait: float = AGENT_WAIT_S) -> str:
    """The marker :func:`write_marker` left in the guest, read through its agent (see :func:`guest_exec`)."""
    return guest_exec(vm, "cat", "/tmp/marker", agent_wait=agent_wait).stdout.strip()


def virsh_migrate(source_uri: str, dest_uri: str, vm: str) -> float:
    """Plain ``virsh migrate --live --p2p`` of one guest (the baseline benchmarks compare with); its wall time."""
    start = time.monotonic()
    subprocess.run(
        ["virsh", "-c", source_uri, "migrate", "--live", "--p2p", "--persistent", "--undefinesource", vm, dest_uri],
        check=True,
        capture_output=True,
    )
    return time.monotonic() - start


def virsh(host_uri: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``virsh -c HOST_URI ARGS`` from the controller: libvirt's own view, not the module's."""
    proc = subprocess.run(["virsh", "-c", host_uri, *args], capture_output=True, text=True, timeout=120, check=False)
    if check and proc.returncode != 0:
        raise AssertionError("virsh -c %s %s exited %d: %s%s" % (host_uri, " ".join(args), proc.returncode, proc.stdout, proc.stderr))
    return proc


def migration_job(host_uri: str, vm: str) -> bool:
    """Whether libvirt shows an outgoing migration job for the VM on that host (``virsh domjobinfo``)."""
    proc = virsh(host_uri, "domjobinfo", vm, check=False)
    fields = dict(line.split(":", 1) for line in proc.stdout.splitlines() if ":" in line)
    job = fields.get("Job type", "").strip()
    operation = fields.get("Operation", "").strip()
    return proc.returncode == 0 and job not in ("", "None", "Completed", "Failed", "Cancelled") and operation == "Outgoing migration"


def migration_connections(host: str, peer_address: str) -> int:
    """Established TCP connections from ``peer_address`` into the QEMU migration ports (49152-49215) of ``host``."""
    count = 0
    for line in virtlab("ssh", host, "--", "ss", "-tnH", "state", "established").stdout.splitlines():
        local, remote = line.split()[-2:]
        if 49152 <= int(local.rsplit(":", 1)[1]) <= 49215 and remote.rsplit(":", 1)[0] == peer_address:
            count += 1
    return count


def maintenance_mark(host: str) -> dict[str, t.Any] | None:
    """The host's maintenance mark as the file on the host says (None when there is none)."""
    proc = virtlab("ssh", host, "--", "cat", "/var/lib/virtops-migration/maintenance.json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def active_vms(host_uri: str) -> list[str]:
    """Names of the VMs active on a host, from ``virsh list``."""
    return sorted(virsh(host_uri, "list", "--name").stdout.split())


def stop_dirty(vm: str) -> tuple[int, int]:
    """Stop the guest's dirtying workload; (passes it made, writes it found lost). Fails if none runs."""
    out = virtlab("dirty", vm, "--stop").stdout
    found = re.search(r"passes (\d+) lost (\d+)", out)
    assert found, "no workload counters in: %s" % out
    return int(found.group(1)), int(found.group(2))


def assert_no_lost_writes(vm: str) -> None:
    """The busy guest's workload ran on across the move and found every one of its writes."""
    passes, lost = stop_dirty(vm)
    assert passes > 0 and lost == 0, "workload in %s: %d passes, %d lost writes" % (vm, passes, lost)


# The local disk of a VM added with `virtlab add-vm --disk SIZE`, as its guest names it (a link the
# guest's /init makes from the disk's serial), and the guest's block workload on it (virtlab-blocks).
LOCAL_DISK = "/dev/disk/by-id/virtio-virtops-local"


def start_blocks(vm: str, rate: float = 2.0, device: str = LOCAL_DISK) -> int:
    """Start the guest's block writer in the background, at most ``rate`` MiB/s from block 0 of ``device``; its PID."""
    return int(guest_exec(vm, "virtlab-blocks", "write", device, "--rate", "%g" % rate, "--background").stdout)


def blocks_status(vm: str) -> dict[str, t.Any]:
    """The guest's block writer: {"acked": last durable block or None, "running": ..., "pid": ..., "result": ...}."""
    return t.cast("dict[str, t.Any]", json.loads(guest_exec(vm, "virtlab-blocks", "status").stdout))


def assert_no_lost_blocks(vm: str, device: str = LOCAL_DISK, timeout: float = 300) -> dict[str, t.Any]:
    """Stop the guest's block writer and verify its disk: every acknowledged block is there, no block is bad,
    and no valid block follows a hole. Returns the verifier's report.
    """
    status = json.loads(guest_exec(vm, "virtlab-blocks", "stop").stdout)
    assert status["acked"] is not None and (status["result"] or {}).get("stopped") == "signal", "block writer in %s: %s" % (vm, status)
    proc = virtlab("exec", "--timeout", "%g" % timeout, vm, "--", "virtlab-blocks", "verify", device, check=False, timeout=timeout + 60)
    verdict: dict[str, t.Any] = json.loads(proc.stdout) if proc.stdout.startswith("{") else {}
    assert proc.returncode == 0 and verdict.get("blocks", 0) >= status["acked"] + 1, "disk of %s after %s acknowledged blocks: %s %s" % (
        vm,
        status["acked"] + 1,
        verdict or proc.stdout,
        proc.stderr,
    )
    return verdict


# ---------------------------------------------------------------------------------------------------
# The guest network and the lab's SR-IOV failover stand-ins (`virtlab add-vm --failover MODE`)
# ---------------------------------------------------------------------------------------------------

# Where start_ping() keeps the guest's ping (its output, and its PID for ping_stats()).
PING_OUTPUT = "/tmp/virtlab-ping.out"
PING_PID = "/tmp/virtlab-ping.pid"
# The aliases of a failover stand-in's NICs: the virtio standby / bond backup, and the "VF" (an
# emulated vmxnet3 NIC, not a VF).
STANDBY_ALIAS = "ua-fo-backup"
VF_STANDIN_ALIAS = "ua-fo-vf"


def start_ping(vm: str, interval: float = 0.1, target: str | None = None) -> None:
    """Start a busybox ping in the guest, in the background, every ``interval`` seconds (10 Hz by default).

    It pings the guest's gateway on the lab's guest network (the same address and MAC on every lab
    host, so it answers at once after a migration) unless ``target`` names another address. Read
    and stop it with :func:`ping_stats`; a ping already running in the guest is replaced.
    """
    where = target or "$(cat /run/virtlab/gateway)"
    script = (
        "[ -f {pid} ] && kill -INT $(cat {pid}) 2>/dev/null; rm -f {pid} {out}; "
        'to={where}; [ -n "$to" ] || {{ echo "the guest has no gateway (no address on the guest network)" >&2; exit 3; }}; '
        'ping -i {interval:g} "$to" > {out} 2>&1 < /dev/null & echo $! > {pid}'
    ).format(pid=PING_PID, out=PING_OUTPUT, where=where, interval=interval)
    guest_exec(vm, "sh", "-c", script)


def ping_stats(vm: str) -> tuple[int, int]:
    """Stop the guest's ping started by :func:`start_ping`; return (sent, received) as ping counted them.

    Fails the test when no ping runs in the guest (a restarted guest lost it) or its summary is missing.
    """
    script = (
        "[ -f {pid} ] || {{ echo 'no ping runs in this guest (restarted?)' >&2; exit 3; }}; "
        "pid=$(cat {pid}); kill -INT $pid; n=0; "
        "while kill -0 $pid 2>/dev/null && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done; "
        "rm -f {pid}; cat {out}"
    ).format(pid=PING_PID, out=PING_OUTPUT)
    out = guest_exec(vm, "sh", "-c", script).stdout
    found = re.search(r"(\d+) packets transmitted, (\d+) packets received", out)
    assert found, "no ping summary from %s:\n%s" % (vm, out[-2000:])
    return int(found.group(1)), int(found.group(2))


def guest_nics(vm: str) -> list[dict[str, t.Any]]:
    """The guest's network interfaces as the guest sees them (sysfs), loopback left out.

    Each: ``name``, ``mac``, ``state`` (operstate), ``driver`` (virtio_net, vmxnet3, or "" for a bond),
    ``master`` (the failover master or bond it is enslaved to, or ""), ``lower`` (the interfaces a
    net_failover master or a bond holds), ``active_slave`` (a bond's active slave, else ""), and
    ``addresses`` (its IPv4 addresses). A teaming guest shows the failover trio: a master whose
    ``lower`` are the virtio standby and, while it is plugged, the vmxnet3 primary.
    """
    script = r"""
for nic in /sys/class/net/*; do
    name=${nic##*/}
    [ -d "$nic" ] && [ "$name" != lo ] || continue
    read -r mac < $nic/address; read -r state < $nic/operstate
    driver=; [ -e $nic/device/driver ] && driver=$(basename $(readlink $nic/device/driver))
    master=; [ -e $nic/master ] && master=$(basename $(readlink $nic/master))
    lower=; for l in $nic/lower_*; do [ -e "$l" ] && lower="$lower ${l##*/lower_}"; done
    active=; [ -r $nic/bonding/active_slave ] && read -r active < $nic/bonding/active_slave
    addresses=$(ip -o -4 addr show dev $name | awk '{print $4}' | tr '\n' ' ')
    printf 'nic\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$mac" "$state" "$driver" "$master" "$lower" "$active" "$addresses"
done
"""
    out = guest_exec(vm, "sh", "-c", script).stdout
    nics = []
    for line in out.splitlines():
        fields = line.split("\t")
        if len(fields) != 9 or fields[0] != "nic":
            continue
        _tag, name, mac, state, driver, master, lower, active, addresses = fields
        nics.append(
            {
                "name": name,
                "mac": mac,
                "state": state,
                "driver": driver,
                "master": master,
                "lower": lower.split(),
                "active_slave": active,
                "addresses": addresses.split(),
            }
        )
    return nics


def nic_xml(host_uri: str, vm: str, alias: str = VF_STANDIN_ALIAS, inactive: bool = True) -> str:
    """The <interface> element with that alias in the VM's domain XML on that host (``virsh dumpxml``).

    By default the failover stand-in's "VF" as the persistent definition has it: the XML to
    hot-unplug and to plug back on another host (``virsh detach-device --live`` / ``attach-device
    --live``); the live XML (``inactive=False``) names this host's tap device and network port.
    Fails the test when there is no such interface.
    """
    from xml.etree import ElementTree  # pylint: disable=import-outside-toplevel

    domain = ElementTree.fromstring(virsh(host_uri, "dumpxml", *(["--inactive"] if inactive else []), vm).stdout)
    for interface in domain.findall("devices/interface"):
        found = interface.find("alias")
        if found is not None and found.get("name") == alias:
            return ElementTree.tostring(interface, encoding="unicode")
    raise AssertionError("%s on %s has no interface with alias %s" % (vm, host_uri, alias))


def patched_python(directory: Path, name: str, sitecustomize: str) -> str:
    """A Python for lab host modules that runs ``sitecustomize`` (Python code patching libvirt) first.

    Pass the returned path as the task's ``ansible_python_interpreter``: the lab hosts see this
    machine's file system outside their private directories, so the wrapper written under
    ``directory`` is what runs on the host.
    """
    home = directory / ("%s-%s" % (name, secrets.token_hex(3)))
    home.mkdir(parents=True)
    (home / "sitecustomize.py").write_text(sitecustomize)
    wrapper = home / "python3"
    wrapper.write_text('#!/bin/sh\nPYTHONPATH=%s exec /usr/bin/python3 "$@"\n' % home)
    wrapper.chmod(0o755)
    home.chmod(0o755)
    directory.chmod(0o755)
    return str(wrapper)


def failing_python(directory: Path, method: str = "migrateToURI3", after: bool = False) -> str:
    """A Python for lab host modules (:func:`patched_python`) in which every ``libvirt.virDomain.<method>`` call fails.

    It raises ``libvirt.libvirtError`` with a message naming this lab helper, as libvirt does when the
    call fails: before anything reaches libvirtd, or with ``after`` once the real call has returned
    (libvirt did the work, and the caller only hears of an error, as when its connection is lost at
    the end of a call).
    """
    return patched_python(
        directory,
        "failing-%s" % method,
        "import libvirt\n\n_REAL = libvirt.virDomain.%s\n\n\n"
        "def _fail(self, *args, **kwargs):\n"
        "    %s\n"
        "    raise libvirt.libvirtError('injected by the lab test: virDomain.%s failed%s')\n\n\n"
        "libvirt.virDomain.%s = _fail\n"
        % (method, "_REAL(self, *args, **kwargs)" if after else "pass", method, " after it returned" if after else "", method),
    )


# ---------------------------------------------------------------------------------------------------
# Guests with Python (`virtlab add-vm --python`): Ansible inside the guest, through its agent
# ---------------------------------------------------------------------------------------------------

# The Python of the lab's Python guests (Debian's python3 in their initramfs).
GUEST_PYTHON = "/usr/bin/python3"
GUEST_CONNECTION = "community.libvirt.libvirt_qemu"


def guest_inventory(lab: Path, path: Path, *vms: str, group: str = "guests") -> Path:
    """Write an inventory of lab guests that Ansible reaches through their QEMU guest agent.

    Each guest is a host of ``group`` with the ``community.libvirt.libvirt_qemu`` connection: its
    ``ansible_host`` is the domain name and its ``ansible_libvirt_uri`` the URI of the lab host it
    runs on now (write the inventory again after a move). Returns ``path``.
    """
    import yaml  # pylint: disable=import-outside-toplevel

    hostvars = load_hostvars(lab)
    hosts = {vm: {"ansible_host": vm, "ansible_libvirt_uri": hostvars[running_on(vm)]["virtops_libvirt_uri"]} for vm in vms}
    data = {
        "all": {
            "children": {
                group: {
                    "hosts": hosts,
                    "vars": {"ansible_connection": GUEST_CONNECTION, "ansible_python_interpreter": GUEST_PYTHON},
                }
            }
        }
    }
    path.write_text(yaml.safe_dump(data, default_flow_style=False, sort_keys=False))
    return path


def run_playbook_report(
    inventory: Path, playbook: Path, extra_vars: t.Mapping[str, t.Any] | None = None, check_mode: bool = False, timeout: float = 1800
) -> tuple[subprocess.CompletedProcess[str], dict[str, t.Any]]:
    """Run a playbook with Ansible's JSON callback; the process and the parsed report (``stats`` per host, ``plays``)."""
    cmd = ["ansible-playbook", "-i", str(inventory), str(playbook)]
    if extra_vars:
        cmd += ["-e", json.dumps(dict(extra_vars))]
    if check_mode:
        cmd.append("--check")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_ansible_env(), timeout=timeout, check=False)
    try:
        report = json.loads(proc.stdout)
    except ValueError as exc:
        raise AssertionError("no JSON report from %s (exit %d)\nstdout:\n%s\nstderr:\n%s" % (playbook, proc.returncode, proc.stdout, proc.stderr)) from exc
    return proc, report


def guest_uptime(vm: str) -> float:
    """The guest's own monotonic clock: seconds since it booted (``/proc/uptime``), read through its agent."""
    return float(guest_exec(vm, "cat", "/proc/uptime").stdout.split()[0])


def console_log(host: str, vm: str) -> str:
    """The guest's serial console as that lab host's QEMU wrote it (each host keeps its own; "" if none)."""
    path = "/var/log/libvirt/qemu/%s-console.log" % vm
    return virtlab("ssh", host, "--", "cat", path, check=False).stdout
