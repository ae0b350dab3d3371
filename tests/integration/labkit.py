"""Helpers the lab integration tests share: drive `virtlab` and run collection modules over SSH.

Modules run exactly as users run them: `ansible` / `ansible-playbook` against the inventory that
`virtlab up` wrote, reaching each lab host over SSH. Results come back through Ansible's JSON callback.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
import typing as t
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VIRTLAB = REPO / "tests" / "lab" / "virtlab"


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
    """Poll an async task until it finishes and return its final result."""
    deadline = time.monotonic() + timeout
    while True:
        result = run_module(inventory, host, "ansible.builtin.async_status", {"jid": job_id})
        if result.get("finished"):
            return result
        assert time.monotonic() < deadline, "async job %s on %s did not finish in %d s: %s" % (job_id, host, timeout, result)
        time.sleep(1)


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
    virtlab("exec", vm, "--", "sh", "-c", "echo %s > /tmp/marker" % marker)
    return marker


def read_marker(vm: str) -> str:
    """The marker :func:`write_marker` left in the guest, read through its agent."""
    return virtlab("exec", vm, "--", "cat", "/tmp/marker").stdout.strip()


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
