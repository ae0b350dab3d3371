"""Who may move a VM: SASL, TLS and SSH on the lab's libvirtd, and files nobody else can redirect.

lab-h2 and lab-h3 run libvirtd with SASL (SCRAM-SHA-256) for the tests of this module (``virtlab auth``),
lab-h1 stays open on TCP; the lab is put back as it was at the end. Refusals are judged by what
libvirt shows afterwards (where each VM runs, the lab's no-VM-lost check) and by the files on the
hosts, never by the module's words alone.

The VMs whose moves are refused (wrong credentials, certificates, hostile files on the host) are tiny
VMs: a refusal needs a domain that stays where it is, never a guest. The VMs that really move (over
SASL, in the SASL evacuation, over SSH) are real guests: the marker written into their memory before
the move and read back after it proves the guest survived it, and the SSH moves also need memory
enough to copy for a migration job slow enough to be looked at while it runs. Each table of refusals
runs in one ``ansible-playbook`` process (``run_tasks``), every result asserted as before.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import subprocess
import typing as t
from pathlib import Path

import pytest

from labkit import (
    assert_no_vm_lost,
    load_hostvars,
    maintenance_mark,
    migration_connections,
    module_task,
    read_marker,
    run_module,
    run_tasks,
    uri,
    virtlab,
    vm_homes,
    wait_async,
    wait_until,
    write_marker,
)

if t.TYPE_CHECKING:
    from conftest import VmFactory

MIGRATE = "virtops.migration.vm_migrate"
MAINTENANCE = "virtops.migration.host_maintenance"
SASL_HOSTS = ("lab-h2", "lab-h3")
SASL_USER = "migrator"
# Characters a shell, a URI or a key file could trip on, so that each layer is shown to pass them intact.
SASL_PASSWORD = "Sc-%s-p#ss %%x;$" % secrets.token_hex(6)
WRONG_PASSWORD = "Wr0ng-%s" % secrets.token_hex(6)
AUTH_CONF = "/etc/libvirt/auth.conf"
# Where the collection and libvirt keep state and logs on a lab host (each its own mount per host).
HOST_DIRS = ("/var/log/virtops-migration", "/var/lib/virtops-migration", "/var/log/libvirt", "/var/lib/libvirt/qemu", "/etc/libvirt/qemu")


def address(lab: Path, host: str) -> str:
    return str(load_hostvars(lab)[host]["ansible_host"])


def sasl_uri(lab: Path, host: str) -> str:
    """The host's qemu+tls:// URI (the lab CA) asking for SASL SCRAM-SHA-256."""
    return "%s&auth=sasl.SCRAM-SHA-256" % load_hostvars(lab)[host]["virtops_lab_tls_uri"]


def host_sh(host: str, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return virtlab("ssh", host, "--", script, check=check)


@pytest.fixture(scope="module")
def sasl(lab: Path, tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[Path]:
    """SASL on lab-h2 and lab-h3 for this module; afterwards no authentication and no auth.conf again."""
    password_file = tmp_path_factory.mktemp("sasl") / "password"
    password_file.write_text(SASL_PASSWORD + "\n")
    password_file.chmod(0o600)
    try:
        virtlab("auth", *SASL_HOSTS, "--sasl", SASL_USER, "--password-file", str(password_file))
        yield lab
    finally:
        virtlab("auth", *SASL_HOSTS, "--none", check=False)
        for host in ("lab-h1", *SASL_HOSTS):
            host_sh(host, "rm -f %s" % AUTH_CONF, check=False)


def test_sasl_refusals_name_the_host_and_the_mechanism(sasl: Path, new_vm: t.Callable[..., str]) -> None:
    lab = sasl
    vm = new_vm()  # tiny: every move is refused before anything reaches the guest
    h2 = address(lab, "lab-h2")
    cases = [
        # (task arguments, what the message must say)
        ({"destination_uri": sasl_uri(lab, "lab-h2"), "username": SASL_USER, "password": WRONG_PASSWORD},
         "rejected the credentials of user '%s'" % SASL_USER),
        ({"destination_uri": sasl_uri(lab, "lab-h2"), "username": SASL_USER},
         "asked for a password and none was given"),
        # SCRAM has no security layer: libvirtd refuses it on plain TCP before asking anything.
        ({"destination_uri": uri(lab, "lab-h2"), "username": SASL_USER, "password": SASL_PASSWORD},
         "libvirtd refused before asking this module for credentials"),
    ]
    # The table in one run, each case in check mode and for real.
    results = iter(run_tasks(lab, "lab-h1", [module_task(MIGRATE, dict(args, name=vm), check_mode=check_mode)
                                             for args, _why in cases for check_mode in (True, False)]))
    for args, why in cases:
        for check_mode in (True, False):
            refused = next(results)
            assert refused.get("failed") is True, (check_mode, refused)
            mechanism = "SASL SCRAM-SHA-256 over TLS" if "auth=sasl" in args["destination_uri"] else "SASL"
            assert refused["msg"].startswith("Authentication failed on host %s with %s: " % (h2, mechanism)), refused["msg"]
            assert why in refused["msg"] and "[VIR_ERR_AUTH_FAILED]" in refused["msg"], refused["msg"]
            assert (refused["host"], refused["mechanism"]) == (h2, mechanism)
            # No Python traceback: ansible-core's "(traceback unavailable)" is all fail_json leaves.
            assert "Traceback" not in json.dumps(refused)
            text = json.dumps(refused)
            assert WRONG_PASSWORD not in text and SASL_PASSWORD not in text
    # A run that had moved or stopped the VM would leave it so (the refusals after it cannot bring it
    # back), so where it is after the table answers for every run of it.
    assert vm_homes(vm) == {"lab-h1": "running"}
    assert_no_vm_lost()


def test_tls_refusals_name_the_certificate_problem(sasl: Path, new_vm: t.Callable[..., str]) -> None:
    lab = sasl
    vm = new_vm()  # tiny: every move is refused before anything reaches the guest
    h2 = address(lab, "lab-h2")
    tls = str(load_hostvars(lab)["lab-h2"]["virtops_lab_tls_uri"])
    lab_pki = Path(tls.split("pkipath=", 1)[1].split("&", 1)[0])
    # The URI's pkipath is read on lab-h1, where /var/tmp is the machine's own.
    base = Path("/var/tmp/virtops-test-pki-%s" % secrets.token_hex(4))
    try:
        rogue, no_client, mismatched = base / "rogue", base / "no-client-cert", base / "mismatched"
        for directory in (rogue, no_client, mismatched):
            directory.mkdir(parents=True)
        # Another CA and no client certificate: the client checks lab-h2's certificate first, and rejects it.
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
             "-subj", "/CN=another CA", "-keyout", str(base / "rogue-key.pem"), "-out", str(rogue / "cacert.pem")],
            check=True, capture_output=True,
        )
        # The lab CA, but no client certificate: lab-h2 demands one (tls_no_verify_certificate = 0).
        shutil.copyfile(lab_pki / "cacert.pem", no_client / "cacert.pem")
        # Another CA with the lab's client certificate: libvirt finds its own certificate untrusted.
        shutil.copyfile(rogue / "cacert.pem", mismatched / "cacert.pem")
        for name in ("clientcert.pem", "clientkey.pem"):
            shutil.copyfile(lab_pki / name, mismatched / name)
        cases = [
            (rogue, "the host's certificate is not signed by a CA this node trusts"),
            (no_client, "after checking this node's client certificate: it has none"),
            (mismatched, "this node's own client certificate is not signed by the CA it trusts"),
        ]
        # The table in one run.
        tasks = [module_task(MIGRATE, {"name": vm, "destination_uri": tls.replace(str(lab_pki), str(pki)), "tls": True}) for pki, _why in cases]
        for (pki, why), refused in zip(cases, run_tasks(lab, "lab-h1", tasks)):
            assert refused.get("failed") is True, (pki, refused)
            assert refused["msg"].startswith("Authentication failed on host %s with TLS: " % h2), refused["msg"]
            assert why in refused["msg"], refused["msg"]
            assert "Traceback" not in json.dumps(refused)
        # A run that had moved or stopped the VM would leave it so: one look after the table answers for all.
        assert vm_homes(vm) == {"lab-h1": "running"}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert_no_vm_lost()


def vault_playbook(tmp_path: Path, lab: Path) -> t.Tuple[Path, Path, Path]:
    """A play installing auth.conf with the libvirt_auth role on every host and one migrating a VM from
    lab-h1, both taking the SASL user and password from an Ansible Vault file. (playbook, vars, vault password)."""
    secret = tmp_path / "vault-password"
    secret.write_text(secrets.token_hex(16) + "\n")
    secret.chmod(0o600)
    credentials = tmp_path / "credentials.yml"
    credentials.write_text(json.dumps({"sasl_username": SASL_USER, "sasl_password": SASL_PASSWORD}) + "\n")
    encrypted = subprocess.run(
        ["ansible-vault", "encrypt", "--vault-password-file", str(secret), str(credentials)], capture_output=True, text=True, check=False
    )
    assert encrypted.returncode == 0 and SASL_PASSWORD not in credentials.read_text(), encrypted.stderr
    hosts = sorted(address(lab, host) for host in ("lab-h1", "lab-h2", "lab-h3"))
    plays = [
        {
            "name": "Credentials for peer-to-peer migrations",
            "hosts": "lab-h1,lab-h2,lab-h3",
            "gather_facts": False,
            "roles": [
                {
                    "role": "virtops.migration.libvirt_auth",
                    "libvirt_auth_username": "{{ sasl_username }}",
                    "libvirt_auth_password": "{{ sasl_password }}",
                    "libvirt_auth_hosts": hosts,
                }
            ],
        },
        {
            "name": "Move the VM",
            "hosts": "lab-h1",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "Migrate the VM to lab-h2 over TLS with SASL",
                    "virtops.migration.vm_migrate": {
                        "name": "{{ vm }}",
                        "destination_uri": "{{ destination }}",
                        "username": "{{ sasl_username }}",
                        "password": "{{ sasl_password }}",
                    },
                    "register": "moved",
                },
                {"name": "Show the result", "ansible.builtin.debug": {"var": "moved"}},
            ],
        },
    ]
    playbook = tmp_path / "sasl.yml"
    playbook.write_text(json.dumps(plays, indent=2) + "\n")
    return playbook, credentials, secret


def test_peer_to_peer_migration_between_sasl_hosts(sasl: Path, new_vm: VmFactory, tmp_path: Path) -> None:
    lab = sasl
    # Real guests, both added by one add-vm: each one's marker proves it survived its move. The second
    # one, on lab-h3, is for the evacuation at the end.
    vm, evacuee = new_vm.many([(192, 1, "medium"), (160, 3, "medium")], guest=True)
    marker = write_marker(vm)
    destination = sasl_uri(lab, "lab-h2")
    args = {"name": vm, "destination_uri": destination, "username": SASL_USER, "password": SASL_PASSWORD}
    outputs: t.List[str] = []

    # The module logs in (its own connection), but the source libvirtd has no credentials yet.
    refused = run_module(lab, "lab-h1", MIGRATE, args)
    outputs.append(json.dumps(refused))
    assert refused.get("failed") is True, refused
    assert refused["msg"].startswith("Cannot migrate VM '%s': the source host's libvirtd (qemu:///system) could not log in" % vm), refused["msg"]
    assert "/etc/libvirt/auth.conf" in refused["msg"] and "virtops.migration.libvirt_auth" in refused["msg"], refused["msg"]
    assert vm_homes(vm) == {"lab-h1": "running"}
    assert_no_vm_lost()

    # The credentials from an Ansible Vault file: auth.conf on every host, then the migration.
    playbook, credentials, secret = vault_playbook(tmp_path, lab)
    command = ["ansible-playbook", "-vvv", "--diff", "-i", str(lab), str(playbook), "-e", "@%s" % credentials,
               "--vault-password-file", str(secret), "-e", json.dumps({"vm": vm, "destination": destination})]
    env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_NOCOLOR="1")
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    outputs += [run.stdout, run.stderr]
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    for host in ("lab-h1", "lab-h2", "lab-h3"):
        assert host_sh(host, "stat -c '%%U:%%G %%a %%F' %s" % AUTH_CONF).stdout.strip() == "root:root 600 regular file"
    assert vm_homes(vm) == {"lab-h2": "running"} and read_marker(vm) == marker
    assert_no_vm_lost()

    # Again, in check mode and for real (one run): already there. The same run again changes nothing on the hosts either.
    for check_mode, again in zip((True, False), run_tasks(lab, "lab-h1", [module_task(MIGRATE, args, check_mode=True), module_task(MIGRATE, args)])):
        outputs.append(json.dumps(again))
        assert again.get("failed") is not True and again["changed"] is False, (check_mode, again)
    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    outputs += [rerun.stdout, rerun.stderr]
    assert rerun.returncode == 0 and "changed=0" in rerun.stdout, rerun.stdout[-3000:]

    # The same auth.conf serves an evacuation: lab-h3 (SASL itself) into lab-h2, named by its SASL URI.
    # The module's connection to the candidate and lab-h3's libvirtd (peer to peer) both log in with it.
    outputs += evacuate_into_sasl_host(lab, evacuee)

    # The password is in no output of any of these runs, and in no file the collection or libvirt wrote
    # (the evacuation's audit log and progress file among them).
    for index, text in enumerate(outputs):
        assert SASL_PASSWORD not in text, "the password shows in output %d of the run" % index
    assert any('"changed": true' in text or "changed=1" in text for text in outputs)
    for host in ("lab-h1", "lab-h2", "lab-h3"):
        found = host_sh(host, "grep -rlF -- %s %s" % (shlex.quote(SASL_PASSWORD), " ".join(HOST_DIRS)), check=False)
        assert found.returncode == 1 and not found.stdout.strip(), "the password is in %s on %s" % (found.stdout.split(), host)
    assert_no_vm_lost()


def evacuate_into_sasl_host(lab: Path, vm: str) -> t.List[str]:
    """Put lab-h3 into maintenance with lab-h2 (SASL over TLS) as its only candidate, check mode, for real
    and again, then back to active; the results as text."""
    marker = write_marker(vm)
    args = {"candidates": [{"name": "lab-h2", "uri": sasl_uri(lab, "lab-h2")}], "reason": "SASL evacuation"}
    on_h3 = set(virtlab("ssh", "lab-h3", "--", "virsh", "list", "--name").stdout.split())
    assert vm in on_h3
    outputs: t.List[str] = []
    try:
        # Check mode, then for real, in one run.
        planned, done = run_tasks(lab, "lab-h3", [module_task(MAINTENANCE, args, check_mode=True), module_task(MAINTENANCE, args)])
        outputs += [json.dumps(planned), json.dumps(done)]
        assert planned["changed"] is True and {move["vm"] for move in planned["plan"]["moves"]} == on_h3, planned
        assert {move["to"] for move in planned["plan"]["moves"]} == {"lab-h2"}, planned["plan"]
        assert done["changed"] is True and done.get("failed") is not True, done
        assert {record["vm"]: record["outcome"] for record in done["vms"]} == dict.fromkeys(on_h3, "migrated"), done["vms"]
        assert virtlab("ssh", "lab-h3", "--", "virsh", "list", "--name").stdout.split() == [], "lab-h3 runs nothing"
        assert (maintenance_mark("lab-h3") or {}).get("state") == "maintenance"
        for moved in on_h3:
            assert vm_homes(moved) == {"lab-h2": "running"}, moved
        assert read_marker(vm) == marker
        assert_no_vm_lost()
        repeats = run_tasks(lab, "lab-h3", [module_task(MAINTENANCE, args, check_mode=True), module_task(MAINTENANCE, args)])
        for check_mode, again in zip((True, False), repeats):
            outputs.append(json.dumps(again))
            assert again.get("failed") is not True and again["changed"] is False, (check_mode, again)
    finally:
        activated = run_module(lab, "lab-h3", MAINTENANCE, {"state": "active"})
        outputs.append(json.dumps(activated))
        assert activated.get("failed") is not True, activated
    assert_no_vm_lost()
    return outputs


def outgoing_job(host: str, vm: str) -> bool:
    """libvirt shows an outgoing migration job for the VM on the host (virsh on the host itself)."""
    out = virtlab("ssh", host, "--", "virsh", "domjobinfo", vm, check=False).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return fields.get("Operation", "").strip() == "Outgoing migration" and fields.get("Job type", "").strip() == "Unbounded"


def ssh_move(lab: Path, vm: str, source: str, destination: str, tunnelled: bool) -> int:
    """Move the VM over qemu+ssh:// (slowly, so the job can be looked at); the most QEMU migration-port
    connections from the source seen on the destination at once while the job ran."""
    target = "qemu+ssh://root@%s/system" % destination
    args = {"name": vm, "destination_uri": target, "tunnelled": tunnelled, "bandwidth_mib": 8}
    # The plan in check mode, then the move started in the background (async, not waited for), in one run.
    planned, started = run_tasks(lab, source, [module_task(MIGRATE, args, check_mode=True), module_task(MIGRATE, args, **{"async": 600, "poll": 0})])
    assert planned["changed"] is True and planned["plan"]["destination"]["hostname"] == destination, planned
    assert started.get("failed") is not True and started.get("ansible_job_id"), started
    wait_until(lambda: outgoing_job(source, vm), 60, "an outgoing migration job of %s on %s" % (vm, source))
    # The source reaches the destination on the lab network or on the migration network: both count.
    peers = (address(lab, source), str(load_hostvars(lab)[source]["virtops_lab_migration_address"]))
    connections = 0
    while outgoing_job(source, vm):
        connections = max(connections, sum(migration_connections(destination, peer) for peer in peers))
    moved = wait_async(lab, source, started["ansible_job_id"])
    assert moved.get("failed") is not True and moved["changed"] is True, moved
    assert moved["plan"]["tunnelled"] is tunnelled, moved["plan"]
    assert vm_homes(vm) == {destination: "running"}
    assert_no_vm_lost()
    return connections


def test_ssh_uris_for_direct_and_tunnelled_migration(sasl: Path, new_vm: t.Callable[..., str]) -> None:
    # Host keys are known and root's lab key opens every host: nothing prompts. lab-h3 runs SASL on
    # TCP and TLS, which SSH does not touch.
    lab = sasl
    # A real guest: its marker proves it survived both moves, and its memory makes each migration at
    # 8 MiB/s last long enough for the job and its connections to be looked at.
    vm = new_vm(memory_mib=160, guest=True)
    marker = write_marker(vm)
    # Tunnelled: the memory goes through the SSH connection, no QEMU stream between the hosts.
    assert ssh_move(lab, vm, "lab-h1", "lab-h3", tunnelled=True) == 0
    assert read_marker(vm) == marker
    there = {"name": vm, "destination_uri": "qemu+ssh://root@lab-h3/system", "tunnelled": True}
    for check_mode, again in zip((True, False), run_tasks(lab, "lab-h1", [module_task(MIGRATE, there, check_mode=True), module_task(MIGRATE, there)])):
        assert again.get("failed") is not True and again["changed"] is False, (check_mode, again)
    assert vm_homes(vm) == {"lab-h3": "running"}
    # Direct: libvirt's connection over SSH, QEMU's stream straight to the destination's migration port.
    assert ssh_move(lab, vm, "lab-h3", "lab-h1", tunnelled=False) >= 1
    assert read_marker(vm) == marker
    again = run_module(lab, "lab-h3", MIGRATE, {"name": vm, "destination_uri": "qemu+ssh://root@lab-h1/system"})
    assert again.get("failed") is not True and again["changed"] is False, again
    assert_no_vm_lost()


# -- files: a hostile symbolic link or a directory others can write is refused, and nothing changes

VICTIM = "/root/virtops-victim"


def maintenance_refused(lab: Path, host: str, why: str) -> None:
    """host_maintenance on the host in check mode and for real (one run): both refused, saying why."""
    args = {"candidates": [{"name": name, "uri": uri(lab, name)} for name in ("lab-h1", "lab-h2", "lab-h3")], "reason": "hostile file"}
    for check_mode, refused in zip((True, False), run_tasks(lab, host, [module_task(MAINTENANCE, args, check_mode=True), module_task(MAINTENANCE, args)])):
        assert refused.get("failed") is True, (check_mode, refused)
        assert why in refused["msg"] and "Traceback" not in json.dumps(refused), refused["msg"]


HOSTILE_STATE = [
    # (what is planted on the host, how to put it back, what the refusal says)
    pytest.param(
        # (earlier evacuations on the lab may have left a real log: it is put back afterwards)
        "if [ -e {0} ]; then mv {0} {0}.keep; fi; ln -s {1} {0}".format("/var/log/virtops-migration/events.jsonl", VICTIM),
        "rm -f {0}; if [ -e {0}.keep ]; then mv {0}.keep {0}; fi".format("/var/log/virtops-migration/events.jsonl"),
        "events.jsonl: it is a symbolic link; refusing to follow it",
        id="audit-log-symlink",
    ),
    pytest.param(
        "test ! -e /var/lib/virtops-migration/maintenance.json && ln -s %s /var/lib/virtops-migration/maintenance.json" % VICTIM,
        "rm -f /var/lib/virtops-migration/maintenance.json",
        "maintenance.json: it is a symbolic link; refusing to follow it",
        id="mark-symlink",
    ),
    pytest.param(
        "stat -c %a /var/lib/virtops-migration > /root/virtops-mode && chmod 0777 /var/lib/virtops-migration",
        "chmod $(cat /root/virtops-mode) /var/lib/virtops-migration",
        "/var/lib/virtops-migration is writable by other users (mode 777); refusing to use it",
        id="world-writable-state-dir",
    ),
    pytest.param(
        "stat -c %a /var/log/virtops-migration > /root/virtops-mode && chmod 0777 /var/log/virtops-migration",
        "chmod $(cat /root/virtops-mode) /var/log/virtops-migration",
        "/var/log/virtops-migration is writable by other users (mode 777); refusing to use it",
        id="world-writable-log-dir",
    ),
]


@pytest.fixture(scope="module")
def h3_vm(lab: Path) -> t.Iterator[str]:
    """One VM on lab-h3 that the hostile-file tests must leave where it is (a tiny VM: it is never moved)."""
    name = "t%s" % secrets.token_hex(3)
    virtlab("add-vm", "--tiny", "%s:160@3" % name)
    yield name
    virtlab("remove-vm", name, check=False)


@pytest.mark.parametrize(("plant", "restore", "why"), HOSTILE_STATE)
def test_host_maintenance_refuses_hostile_files(lab: Path, h3_vm: str, plant: str, restore: str, why: str) -> None:
    vm = h3_vm
    host_sh("lab-h3", "mkdir -p /var/log/virtops-migration && printf 'precious\\n' > %s" % VICTIM)
    host_sh("lab-h3", plant)
    try:
        maintenance_refused(lab, "lab-h3", why)
        assert host_sh("lab-h3", "cat %s" % VICTIM).stdout == "precious\n"
        assert vm_homes(vm) == {"lab-h3": "running"}
    finally:
        host_sh("lab-h3", restore, check=False)
        host_sh("lab-h3", "rm -f %s" % VICTIM, check=False)
    assert maintenance_mark("lab-h3") is None
    assert_no_vm_lost()


def role_play(tmp_path: Path, role: str, variables: t.Mapping[str, t.Any]) -> Path:
    playbook = tmp_path / ("%s.yml" % role)
    play = {"name": "Run %s" % role, "hosts": "lab-h3", "gather_facts": False, "roles": [dict({"role": "virtops.migration." + role}, **variables)]}
    playbook.write_text(json.dumps([play]) + "\n")
    return playbook


def run_role(lab: Path, playbook: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_NOCOLOR="1")
    return subprocess.run(["ansible-playbook", "-i", str(lab), str(playbook)], capture_output=True, text=True, env=env, timeout=600, check=False)


def test_roles_refuse_hostile_files(lab: Path, tmp_path: Path) -> None:
    hooks = "/etc/libvirt/hooks/qemu.d"
    before = host_sh("lab-h3", "stat -c %%a %s && sha256sum %s/virtops-maintenance" % (hooks, hooks)).stdout
    # (auth.conf may be there from this module's SASL tests: it is put back afterwards.)
    host_sh("lab-h3", "if [ -e {0} ]; then mv {0} {0}.keep; fi; printf 'precious\\n' > {1} && ln -s {1} {0}".format(AUTH_CONF, VICTIM))
    try:
        # libvirt_auth: a symbolic link where auth.conf goes.
        auth = run_role(lab, role_play(tmp_path, "libvirt_auth", {"libvirt_auth_username": SASL_USER, "libvirt_auth_password": SASL_PASSWORD}))
        assert auth.returncode != 0, auth.stdout
        assert "%s is a symbolic link" % AUTH_CONF in auth.stdout, auth.stdout[-3000:]
        assert SASL_PASSWORD not in auth.stdout + auth.stderr
        assert host_sh("lab-h3", "readlink %s && cat %s" % (AUTH_CONF, VICTIM)).stdout == "%s\nprecious\n" % VICTIM
        # maintenance_hook: a hooks directory anyone can write to (a hook dropped there runs as root).
        host_sh("lab-h3", "chmod 0777 %s" % hooks)
        hook = run_role(lab, role_play(tmp_path, "maintenance_hook", {}))
        assert hook.returncode != 0, hook.stdout
        assert "%s is writable by group or others" % hooks in hook.stdout, hook.stdout[-3000:]
    finally:
        host_sh("lab-h3", "chmod {0} {1}; rm -f {2} {3}; if [ -e {2}.keep ]; then mv {2}.keep {2}; fi".format(before.split()[0], hooks, AUTH_CONF, VICTIM),
                check=False)
    assert host_sh("lab-h3", "stat -c %%a %s && sha256sum %s/virtops-maintenance" % (hooks, hooks)).stdout == before
