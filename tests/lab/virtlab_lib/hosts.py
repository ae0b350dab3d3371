# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lab host lifecycle: each host's namespaces, virtlockd, libvirtd and sshd, the lab and migration
networks, the shared storage, the lab's TLS certificates, the Ansible inventory, lab VMs (domain XML,
define and start, waiting for their guest agents, removal, shared disks and local disks), teardown, and the commands `up`, `down`, `status`, `check`, `add-vm`,
`remove-vm` and `ssh`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import typing as t
import uuid
from pathlib import Path
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from . import common
from .common import (
    CAPABILITIES_CACHE,
    CLEAN_ENV,
    FAILED_LOGS,
    HOST_CAPABILITIES,
    HOST_TMPFS,
    MODULE_UTILS,
    PKI_DIR,
    SHARED_DIR,
    SHARED_DISKS,
    STATE_DIR,
    TOOL_PACKAGES,
    VIRTLAB,
    Host,
    Lab,
    LabError,
    Vm,
    count,
    lab_lock,
    netns_inode,
    pid_alive,
    pid_netns_inode,
    pids_in_netns,
    prepare_state_dir,
    remove_state_dir,
    require,
    require_lab,
    require_qemu_driver,
    require_root,
    run,
    say,
    signals_held,
    stop_pids,
    tail,
    tool,
    warn,
    write_atomic,
)
from .image import AGENT_CHANNEL, PYTHON_RDINIT, PYTHON_READY, build_image, build_python_image, choose_accel

SUBNET = ipaddress.IPv4Network("10.254.77.0/24")
GATEWAY = SUBNET.network_address + 1
FIRST_HOST_OFFSET = 10
LAB_BRIDGE = "virtlab0"
HOST_NIC = "eth0"
# The second lab network, for migration streams only (a dedicated migration network).
MIGRATION_SUBNET = ipaddress.IPv4Network("10.254.78.0/24")
MIGRATION_GATEWAY = MIGRATION_SUBNET.network_address + 1
MIGRATION_BRIDGE = "virtlab1"
HOST_MIGRATION_NIC = "eth1"
# The guests' network: every host's guest bridge `labnet` (inside the host) has the same gateway address
# and the same MAC, so a guest's gateway answers at once on whichever host it lands; the guests' own
# addresses are unique in the lab. Never reachable from the root namespace (only its blackhole route).
GUEST_SUBNET = ipaddress.IPv4Network("10.254.79.0/24")
GUEST_GATEWAY = GUEST_SUBNET.network_address + 1
GUEST_GATEWAY_MAC = "02:76:6c:61:62:01"
FIRST_GUEST_OFFSET = 10
LAB_SUBNETS = (SUBNET, MIGRATION_SUBNET, GUEST_SUBNET)
# While the lab is down (or half up), its subnets are blackhole routes of the root namespace, so that
# nothing meant for a lab address leaves the machine through the default route. The bridges' own
# connected routes (metric 0) win over them while the lab is up.
BLACKHOLE_METRIC = 4242
GUEST_BRIDGE = "labnet"
NETWORK_NAME = "lab"
POOL_NAME = "lab"
POOL_PATH = "/var/lib/libvirt/images"
# The storage pool of the VMs' local disks (`add-vm --disk`): a dir pool at the same path on every host,
# inside the host's private /var/lib/libvirt, so that the path is the same everywhere and the content is
# each host's own (a migration that copies a VM's storage finds the pool on its destination).
LOCAL_POOL_NAME = "virtops-local"
LOCAL_POOL_PATH = POOL_PATH + "/" + LOCAL_POOL_NAME
# A local disk's serial: the guest's /init links /dev/disk/by-id/virtio-SERIAL to it.
LOCAL_DISK_SERIAL = "virtops-local"
LOCAL_DISK_GUEST_PATH = "/dev/disk/by-id/virtio-" + LOCAL_DISK_SERIAL
# `add-vm --disk SIZE`: a whole number and a binary unit (256M, 1G, 512MiB), from DISK_MIN to DISK_MAX.
DISK_SIZE = re.compile(r"([1-9][0-9]{0,12})([KMGT])(iB)?")
DISK_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
DISK_MIN_BYTES = 1 << 20
DISK_MAX_BYTES = 1 << 40
SHARED_DISK_TARGET = "vda"
LIBVIRTD_PORT = 16509
LIBVIRTD_TLS_PORT = 16514
MAX_HOSTS = 32
# Hook scripts libvirtd runs for QEMU domains (read only when libvirtd starts; see restart-libvirtd).
HOOKS_DIR = "hooks/qemu.d"
# The collection's maintenance mark inside a host (its "state": "preparing", "maintenance" or
# "activating"; only "maintenance" forbids running VMs).
MAINTENANCE_MARK = Path("lib-virtops", "maintenance.json")
MAINTENANCE_STATES = ("preparing", "maintenance", "activating")

# Per-host directories under the host's state directory and where they appear inside the host.
HOST_DIR_MOUNTS: tuple[tuple[str, str], ...] = (
    ("etc-libvirt", "/etc/libvirt"),
    ("lib-libvirt", "/var/lib/libvirt"),
    ("cache-libvirt", "/var/cache/libvirt"),
    ("log-libvirt", "/var/log/libvirt"),
    ("lib-virtops", "/var/lib/virtops-migration"),
    ("log-virtops", "/var/log/virtops-migration"),
    ("run-sshd", "/run/sshd"),
    # Cyrus SASL's configuration (libvirt.conf: mechanisms and user database) for `virtlab auth`.
    ("etc-sasl2", "/etc/sasl2"),
    # root's SSH client files: the lab key and the lab hosts' keys, so that qemu+ssh:// between hosts
    # needs no password and no host key prompt.
    ("root-ssh", "/root/.ssh"),
)
# SASL as `virtlab auth --sasl` enables it: SCRAM-SHA-256 users in a per-host database.
SASL_MECHANISM = "scram-sha-256"
SASL_DB = "/etc/libvirt/passwd.db"
HOST_FILE_MOUNTS: tuple[tuple[str, str], ...] = (("hosts", "/etc/hosts"), ("resolv.conf", "/etc/resolv.conf"))

UP_TOOLS = tuple(TOOL_PACKAGES)

# NAME:MEMORY_MIB[:PRIORITY][@HOSTINDEX]; a tiny VM's memory may be left out (TINY_MEMORY_MIB).
VM_SPEC = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,62})(?::(?P<memory>[0-9]+))?"
    r"(?::(?P<priority>[a-z]+))?(?:@(?P<host>[0-9]+))?$"
)
GUEST_MIN_MEMORY_MIB = 64
FAILOVER_MEMORY_MIB = 256
TINY_MEMORY_MIB = 32
TINY_MIN_MEMORY_MIB = 16
CLUSTER_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")

DOMAIN_STATES = {
    0: "no state",
    1: "running",
    2: "blocked",
    3: "paused",
    4: "shutting down",
    5: "shut off",
    6: "crashed",
    7: "pmsuspended",
}
RUNNING = 1


# ---------------------------------------------------------------------------------------------------
# libvirt access
# ---------------------------------------------------------------------------------------------------


def open_connection(host: Host) -> t.Any:
    """Open the host's libvirtd through its UNIX socket; raise LabError if it does not answer."""
    if not pid_alive(host.holder_pid, "sleep"):
        raise LabError("host %s is broken: its namespace holder (pid %d) is gone" % (host.name, host.holder_pid))
    try:
        return common.libvirt.open(host.local_uri)
    except common.libvirt.libvirtError as exc:
        raise LabError("libvirtd on %s does not answer: %s" % (host.name, exc.get_error_message())) from exc


def close_connection(conn: t.Any) -> None:
    """Close a libvirt connection, ignoring a daemon that has gone away."""
    with contextlib.suppress(common.libvirt.libvirtError):
        conn.close()


@contextlib.contextmanager
def connect(host: Host) -> t.Iterator[t.Any]:
    """A libvirt connection to the host, closed afterwards."""
    conn = open_connection(host)
    try:
        yield conn
    finally:
        close_connection(conn)


def domain_state(dom: t.Any) -> str:
    """The domain state as a word (running, paused, shut off, ...)."""
    state = dom.state()[0]
    return DOMAIN_STATES.get(state, "state %d" % state)


def agent_command(dom: t.Any, command: str, arguments: dict[str, t.Any] | None = None, timeout: int = 10) -> t.Any:
    """Send one QEMU guest agent command and return its ``return`` value."""
    payload: dict[str, t.Any] = {"execute": command}
    if arguments is not None:
        payload["arguments"] = arguments
    reply = common.libvirt_qemu.qemuAgentCommand(dom, json.dumps(payload), timeout, 0)
    return json.loads(reply).get("return")


# ---------------------------------------------------------------------------------------------------
# Host configuration files
# ---------------------------------------------------------------------------------------------------


def conf_value(value: t.Any) -> str:
    """A value in libvirt's configuration syntax."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[ " + ", ".join(conf_value(item) for item in value) + " ]"
    return json.dumps(str(value))


def edit_conf(path: Path, settings: t.Mapping[str, t.Any]) -> None:
    """Set keys in a libvirt config file: earlier assignments of them are commented out, ours appended."""
    lines = path.read_text().splitlines() if path.exists() else []
    assignment = re.compile(r"^\s*(%s)\s*=" % "|".join(re.escape(key) for key in settings))
    edited = ["#(virtlab) " + line if assignment.match(line) else line for line in lines]
    edited.append("")
    edited.append("# virtlab lab host settings")
    edited.extend("%s = %s" % (key, conf_value(value)) for key, value in settings.items())
    path.write_text("\n".join(edited) + "\n")


def libvirtd_settings(host: Host) -> dict[str, t.Any]:
    """libvirtd.conf settings of a lab host: plain TCP and TLS on its own address, its own host UUID."""
    pki = host.path / "pki"
    return {
        "listen_tls": 1,
        "listen_tcp": 1,
        "listen_addr": host.address,
        "tcp_port": str(LIBVIRTD_PORT),
        "tls_port": str(LIBVIRTD_TLS_PORT),
        "auth_tcp": "none",
        "auth_tls": "none",
        "ca_file": str(pki / "cacert.pem"),
        "cert_file": str(pki / "servercert.pem"),
        "key_file": str(pki / "serverkey.pem"),
        # TLS clients must present a certificate signed by the lab CA (libvirt's default, said outright).
        "tls_no_verify_certificate": 0,
        "auth_unix_ro": "none",
        "auth_unix_rw": "none",
        "host_uuid": host.host_uuid,
        "log_outputs": "3:file:/var/log/libvirt/libvirtd.log",
    }


def qemu_settings(host: Host) -> dict[str, t.Any]:
    """qemu.conf settings of a lab host: no confinement, no virtlogd, migration on its own address."""
    return {
        "stdio_handler": "file",
        "security_driver": "none",
        "cgroup_controllers": [],
        "namespaces": [],
        "user": "root",
        "group": "root",
        "dynamic_ownership": 0,
        "remember_owner": 0,
        "migration_address": host.address,
        "migration_host": host.address,
        # Migrations with VIR_MIGRATE_TLS: QEMU's own TLS, with the host's certificates.
        "migrate_tls_x509_cert_dir": str(host.path / "pki"),
        "migrate_tls_x509_verify": 1,
    }


def virtlockd_settings() -> dict[str, t.Any]:
    """virtlockd.conf settings of a lab host: its log in the host's /var/log/libvirt (no syslog in a lab host)."""
    return {"log_outputs": "3:file:/var/log/libvirt/virtlockd.log"}


def sshd_config(host: Host) -> str:
    """sshd_config of a lab host: root by the lab key only, on the host's own address."""
    ssh = host.path / "ssh"
    return "\n".join(
        [
            "# sshd of virtlab host %s" % host.name,
            "ListenAddress %s" % host.address,
            "Port 22",
            "HostKey %s" % (ssh / "ssh_host_ed25519_key"),
            "PidFile %s" % (host.path / "sshd.pid"),
            "AuthorizedKeysFile %s" % (ssh / "authorized_keys"),
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "UseDNS no",
            "PrintMotd no",
            "MaxStartups 100",
            "MaxSessions 100",
            "Subsystem sftp internal-sftp",
            "",
        ]
    )


def hosts_file(lab: Lab) -> str:
    """/etc/hosts inside every lab host: loopback, the controller end of the bridge, all lab hosts."""
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback", "%s virtlab-controller" % GATEWAY]
    lines += ["%s %s" % (host.address, host.name) for host in lab.hosts]
    return "\n".join(lines) + "\n"


def ensure_accounts() -> None:
    """Create the libvirt-qemu user and group, which libvirtd's QEMU driver resolves at start."""
    if run(["getent", "group", "libvirt-qemu"], check=False).returncode != 0:
        run([tool("groupadd"), "--system", "libvirt-qemu"])
    if run(["getent", "passwd", "libvirt-qemu"], check=False).returncode != 0:
        home = ["--home-dir", "/var/lib/libvirt", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        run([tool("useradd"), "--system", "--gid", "libvirt-qemu", *home, "libvirt-qemu"])


def check_python_for_ansible() -> None:
    """Warn if the hosts' Python (the machine's /usr/bin/python3) cannot import libvirt."""
    python = Path("/usr/bin/python3")
    if not python.exists():
        warn("/usr/bin/python3 is missing: Ansible cannot run modules on the lab hosts (apt-get install python3)")
    elif run([str(python), "-c", "import libvirt"], check=False).returncode != 0:
        warn(
            "/usr/bin/python3 cannot import libvirt; collection modules will fail on the lab hosts "
            "(apt-get install python3-libvirt)"
        )


# ---------------------------------------------------------------------------------------------------
# Creating hosts
# ---------------------------------------------------------------------------------------------------


def new_lab(cluster: str, count: int, vms: list[Vm], inventory: Path, image: dict[str, t.Any], accel: str) -> Lab:
    """The state of a lab about to be created (names and addresses fixed up front)."""
    hosts = []
    for index in range(1, count + 1):
        name = "%s-h%d" % (cluster, index)
        hosts.append(
            Host(
                name=name,
                index=index,
                address=str(SUBNET.network_address + FIRST_HOST_OFFSET + index),
                netns="virtlab-" + name,
                veth="virtlab-h%d" % index,
                migration_address=str(MIGRATION_SUBNET.network_address + FIRST_HOST_OFFSET + index),
                migration_veth="virtlab-m%d" % index,
                dir=str(STATE_DIR / "hosts" / name),
                host_uuid=str(uuid.uuid4()),
            )
        )
    return Lab(
        cluster=cluster,
        phase="starting",
        accel=accel,
        key=str(STATE_DIR / "id_ed25519"),
        kernel=image["kernel"],
        initrd=image["initrd"],
        inventory=str(inventory.resolve()),
        created=time.time(),
        hosts=hosts,
        vms=vms,
    )


def blackhole_lab_subnets() -> None:
    """Make every lab subnet a blackhole route of the root namespace (idempotent).

    The route stays when the lab is down: anything reaching for a lab address then fails at once
    instead of leaving the machine through the default route. While the lab is up, the bridges'
    connected routes (metric 0) take precedence.
    """
    for subnet in LAB_SUBNETS:
        # "unreachable": the kernel drops the packets and answers EHOSTUNREACH ("No route to host").
        run([tool("ip"), "route", "replace", "unreachable", str(subnet), "metric", str(BLACKHOLE_METRIC)])


def is_lab_blackhole(route: t.Mapping[str, t.Any]) -> bool:
    """Whether a route (``ip -j route`` form) is one of the lab's own blackhole routes."""
    return (
        route.get("type") in ("blackhole", "unreachable")
        and route.get("dst") in {str(subnet) for subnet in LAB_SUBNETS}
        and route.get("metric") == BLACKHOLE_METRIC
    )


def check_network_free(lab: Lab) -> None:
    """Refuse to start if the lab's bridges, namespaces or subnets are already in use on this machine."""
    for bridge in (LAB_BRIDGE, MIGRATION_BRIDGE):
        if Path("/sys/class/net", bridge).exists():
            raise LabError(
                "network interface %s exists but no lab is recorded in %s (another lab with a different "
                "VIRTLAB_STATE?); remove it with `ip link del %s`" % (bridge, STATE_DIR, bridge)
            )
    for host in lab.hosts:
        if netns_inode(host.netns) is not None:
            raise LabError(
                "network namespace %s already exists; remove it with `ip netns del %s`" % (host.netns, host.netns)
            )
    routes = json.loads(run([tool("ip"), "-j", "-4", "route", "show", "table", "all"]).stdout or "[]")
    for route in routes:
        destination = route.get("dst", "")
        if destination in ("default", "") or route.get("type") in ("broadcast", "local") or is_lab_blackhole(route):
            continue
        for subnet in LAB_SUBNETS:
            with contextlib.suppress(ValueError):
                if ipaddress.IPv4Network(destination, strict=False).overlaps(subnet):
                    raise LabError("the lab subnet %s overlaps a route of this machine (%s)" % (subnet, destination))


def create_lab_bridges() -> None:
    """The lab bridge and the migration bridge in the root namespace, each with the controller's address."""
    ip = tool("ip")
    bridges = ((LAB_BRIDGE, GATEWAY, SUBNET), (MIGRATION_BRIDGE, MIGRATION_GATEWAY, MIGRATION_SUBNET))
    for bridge, gateway, subnet in bridges:
        run([ip, "link", "add", bridge, "type", "bridge"])
        run([ip, "addr", "add", "%s/%d" % (gateway, subnet.prefixlen), "dev", bridge])
        run([ip, "link", "set", bridge, "up"])


def create_host_network(host: Host) -> None:
    """The host's network namespace, its veths on the lab and migration bridges, and its guests' bridge."""
    ip = tool("ip")
    run([ip, "netns", "add", host.netns])
    nics = (
        (host.veth, HOST_NIC, LAB_BRIDGE, host.address, SUBNET),
        (host.migration_veth, HOST_MIGRATION_NIC, MIGRATION_BRIDGE, host.migration_address, MIGRATION_SUBNET),
    )
    for veth, nic, bridge, address, subnet in nics:
        run([ip, "link", "add", veth, "type", "veth", "peer", "name", nic, "netns", host.netns])
        run([ip, "link", "set", veth, "master", bridge, "up"])
        run([ip, "-n", host.netns, "addr", "add", "%s/%d" % (address, subnet.prefixlen), "dev", nic])
        run([ip, "-n", host.netns, "link", "set", nic, "up"])
    run([ip, "-n", host.netns, "link", "set", "lo", "up"])
    run([ip, "-n", host.netns, "link", "add", GUEST_BRIDGE, "address", GUEST_GATEWAY_MAC, "type", "bridge"])
    run([ip, "-n", host.netns, "addr", "add", "%s/%d" % (GUEST_GATEWAY, GUEST_SUBNET.prefixlen), "dev", GUEST_BRIDGE])
    run([ip, "-n", host.netns, "link", "set", GUEST_BRIDGE, "up"])


def openssl(*args: str) -> None:
    run([tool("openssl"), *args], what="openssl " + args[0])


def issue_certificate(directory: Path, name: str, subject: str, extensions: list[str]) -> tuple[Path, Path]:
    """A key and a certificate signed by the lab CA, as DIRECTORY/NAME-key.pem and NAME-cert.pem."""
    key, request, cert = directory / (name + "-key.pem"), directory / (name + ".csr"), directory / (name + "-cert.pem")
    config = directory / (name + ".ext")
    config.write_text("\n".join(extensions) + "\n")
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-subj", subject, "-out", str(request))
    openssl(
        "x509",
        "-req",
        "-in",
        str(request),
        "-CA",
        str(PKI_DIR / "ca-cert.pem"),
        "-CAkey",
        str(PKI_DIR / "ca-key.pem"),
        "-CAcreateserial",
        "-days",
        "30",
        "-sha256",
        "-extfile",
        str(config),
        "-out",
        str(cert),
    )
    request.unlink()
    config.unlink()
    return key, cert


def create_pki(lab: Lab) -> None:
    """The lab CA, one client certificate for every libvirtd, and a server certificate per host.

    libvirt's names (cacert.pem, servercert.pem, ...) and QEMU's (ca-cert.pem, server-cert.pem, ...)
    name the same files: libvirtd serves TLS with them, and QEMU encrypts migration streams with them.
    """
    PKI_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "30",
        "-sha256",
        "-subj",
        "/CN=virtlab CA",
        "-keyout",
        str(PKI_DIR / "ca-key.pem"),
        "-out",
        str(PKI_DIR / "ca-cert.pem"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    usage = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment"]
    key, cert = issue_certificate(PKI_DIR, "client", "/CN=virtlab client", usage + ["extendedKeyUsage=clientAuth"])
    shutil.copyfile(PKI_DIR / "ca-cert.pem", PKI_DIR / "cacert.pem")
    os.replace(key, PKI_DIR / "clientkey.pem")
    os.replace(cert, PKI_DIR / "clientcert.pem")
    for host in lab.hosts:
        pki = host.path / "pki"
        pki.mkdir(mode=0o700, parents=True, exist_ok=True)
        names = "subjectAltName=IP:%s,DNS:%s" % (host.address, host.name)
        key, cert = issue_certificate(
            pki, "server", "/CN=%s" % host.name, usage + ["extendedKeyUsage=serverAuth,clientAuth", names]
        )
        for copy in ("ca-cert.pem", "cacert.pem"):
            shutil.copyfile(PKI_DIR / "ca-cert.pem", pki / copy)
        shutil.copyfile(key, pki / "serverkey.pem")
        shutil.copyfile(cert, pki / "servercert.pem")
        # QEMU's client side of a TLS migration presents the host's own certificate.
        shutil.copyfile(key, pki / "client-key.pem")
        shutil.copyfile(cert, pki / "client-cert.pem")


def prepare_host_files(lab: Lab, host: Host) -> None:
    """The host's private directories, libvirt and sshd configuration, and name resolution files."""
    base = host.path
    for directory, _target in HOST_DIR_MOUNTS:
        (base / directory).mkdir(parents=True, exist_ok=True)
    os.chmod(base / "run-sshd", 0o755)
    os.chmod(base / "root-ssh", 0o700)
    (base / "etc-sasl2" / "libvirt.conf").write_text(
        "# virtlab host %s: libvirtd's SASL mechanisms and users (used once `virtlab auth --sasl` enables SASL)\n"
        "mech_list: %s\nsasldb_path: %s\n" % (host.name, SASL_MECHANISM, SASL_DB)
    )
    (base / "lib-libvirt" / "images").mkdir(exist_ok=True)
    (base / "log-libvirt" / "qemu").mkdir(exist_ok=True)
    (base / "etc-libvirt" / HOOKS_DIR).mkdir(parents=True, exist_ok=True)
    # Only the top-level configuration files: domains and networks defined on this machine stay out.
    system = Path("/etc/libvirt")
    if system.is_dir():
        for entry in system.iterdir():
            if entry.is_file():
                shutil.copy2(entry, base / "etc-libvirt" / entry.name)
    edit_conf(base / "etc-libvirt" / "libvirtd.conf", libvirtd_settings(host))
    edit_conf(base / "etc-libvirt" / "qemu.conf", qemu_settings(host))
    edit_conf(base / "etc-libvirt" / "virtlockd.conf", virtlockd_settings())
    (base / "hosts").write_text(hosts_file(lab))
    (base / "resolv.conf").write_text(
        "# virtlab host %s: no DNS; names come from /etc/hosts\nnameserver 127.0.0.1\n" % host.name
    )

    ssh = base / "ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    host_key = ssh / "ssh_host_ed25519_key"
    run([tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", "virtlab host " + host.name, "-f", str(host_key)])
    shutil.copyfile(lab.key + ".pub", ssh / "authorized_keys")
    (ssh / "sshd_config").write_text(sshd_config(host))
    client = base / "root-ssh"
    shutil.copyfile(lab.key, client / "id_ed25519")
    os.chmod(client / "id_ed25519", 0o600)
    shutil.copyfile(lab.key + ".pub", client / "id_ed25519.pub")


def write_known_hosts(lab: Lab) -> None:
    """Every host's root knows every lab host's key, by name and by address (for qemu+ssh:// URIs)."""
    lines = []
    for host in lab.hosts:
        key = (host.path / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()
        lines.append("%s,%s %s %s" % (host.name, host.address, key[0], key[1]))
    for host in lab.hosts:
        write_atomic(host.path / "root-ssh" / "known_hosts", "\n".join(lines) + "\n", 0o644)


def start_holder(host: Host) -> None:
    """Start the process that holds the host's mount and UTS namespaces (inside its network namespace)."""
    holder = [tool("unshare"), "--mount", "--uts", "--propagation", "private", "sleep", "infinity"]
    with open(host.path / "holder.log", "ab") as log:
        proc = subprocess.Popen(
            [tool("ip"), "netns", "exec", host.netns, *holder],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=CLEAN_ENV,
            start_new_session=True,
        )
    host.holder_pid = proc.pid
    deadline = time.monotonic() + 10
    own_uts = os.stat("/proc/self/ns/uts").st_ino
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError("the namespace holder of %s exited: %s" % (host.name, tail(host.path / "holder.log")))
        with contextlib.suppress(OSError):
            if pid_alive(proc.pid, "sleep") and os.stat("/proc/%d/ns/uts" % proc.pid).st_ino != own_uts:
                return
        time.sleep(0.01)
    raise LabError("the namespace holder of %s did not start within 10 s" % host.name)


def mount_host_dirs(host: Host) -> None:
    """Set the hostname and mount the host's private directories inside its mount namespace."""
    run(host.in_host([tool("hostname"), host.name]))
    mount = tool("mount")
    for directory, target in HOST_DIR_MOUNTS:
        Path(target).mkdir(parents=True, exist_ok=True)
        run(host.in_host([mount, "--bind", str(host.path / directory), target]))
    Path(HOST_TMPFS).mkdir(parents=True, exist_ok=True)
    run(host.in_host([mount, "-t", "tmpfs", "-o", "mode=0755", "tmpfs", HOST_TMPFS]))
    # The shared storage, at the path it has on the controller.
    run(host.in_host([mount, "--bind", str(SHARED_DIR), str(SHARED_DIR)]))
    for name, target in HOST_FILE_MOUNTS:
        if Path(target).is_file():
            run(host.in_host([mount, "--bind", str(host.path / name), target]))


def create_shared_storage() -> None:
    """The lab's shared storage directory (0700 root) and its directory of shared disks."""
    for directory in (SHARED_DIR, SHARED_DISKS):
        directory.mkdir(mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)


def start_virtlockd(host: Host, timeout: float = 15.0) -> None:
    """Start the host's virtlockd (libvirt's lock daemon) in its namespaces; wait for its socket; record its PID.

    Its socket is /run/libvirt/virtlockd-sock, in the host's own /run/libvirt. libvirtd uses it only
    when the host's qemu.conf says `lock_manager = "lockd"`, which the lab does not set.
    """
    run_dir = host.host_root() / HOST_TMPFS.lstrip("/")
    pidfile = run_dir / "virtlockd.pid"
    pidfile.unlink(missing_ok=True)
    host.virtlockd_pid = 0
    run(
        host.in_host([tool("virtlockd"), "--daemon", "--pid-file", HOST_TMPFS + "/virtlockd.pid"]),
        what="virtlockd on %s" % host.name,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            host.virtlockd_pid = int(pidfile.read_text().strip())
        if host.virtlockd_pid and not pid_alive(host.virtlockd_pid, "virtlockd"):
            break
        if host.virtlockd_pid and (run_dir / "virtlockd-sock").exists():
            return
        time.sleep(0.02)
    raise LabError(
        "virtlockd on %s did not start: %s" % (host.name, tail(host.path / "log-libvirt" / "virtlockd.log") or "no log")
    )


def launch_libvirtd(host: Host) -> subprocess.Popen[bytes]:
    """Start the host's libvirtd (it daemonises once initialised); return the launching process."""
    with open(host.path / "libvirtd.out", "ab") as log:
        return subprocess.Popen(
            host.in_host([tool("libvirtd"), "--listen", "--daemon", "--pid-file", HOST_TMPFS + "/libvirtd.pid"]),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=CLEAN_ENV,
            start_new_session=True,
        )


def seed_capabilities(host: Host) -> None:
    """Give the host's libvirtd the shared QEMU capabilities cache (libvirt revalidates it)."""
    target = host.path / HOST_CAPABILITIES
    target.mkdir(parents=True, exist_ok=True)
    for cached in CAPABILITIES_CACHE.glob("*.xml"):
        shutil.copy2(cached, target / cached.name)


def save_capabilities(host: Host) -> None:
    """Keep the host's QEMU capabilities cache for the next hosts and labs."""
    CAPABILITIES_CACHE.mkdir(parents=True, exist_ok=True)
    for probed in (host.path / HOST_CAPABILITIES).glob("*.xml"):
        write_atomic(CAPABILITIES_CACHE / probed.name, probed.read_text(), 0o600)


def finish_libvirtd(host: Host, launcher: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Wait until the host's libvirtd answers; record its PID."""

    def failure(reason: str) -> LabError:
        log = tail(host.path / "log-libvirt" / "libvirtd.log") or tail(host.path / "libvirtd.out")
        return LabError("libvirtd on %s %s%s" % (host.name, reason, ("; its log ends:\n" + log) if log else ""))

    try:
        code = launcher.wait(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        launcher.kill()
        raise failure("did not start within %.0f s" % timeout) from exc
    if code != 0:
        raise failure("failed to start (exit %d)" % code)
    pidfile = host.host_root() / HOST_TMPFS.lstrip("/") / "libvirtd.pid"
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError):
            host.libvirtd_pid = int(pidfile.read_text().strip())
        if host.libvirtd_pid and not pid_alive(host.libvirtd_pid, "libvirtd"):
            raise failure("exited")
        if host.libvirtd_pid:
            try:
                with connect(host) as conn:
                    conn.getVersion()
                return
            except LabError:
                pass
        if time.monotonic() > deadline:
            raise failure("does not answer after %.0f s" % timeout)
        time.sleep(0.05)


def start_sshd(host: Host, timeout: float = 15.0) -> None:
    """Start the host's sshd; wait until it accepts connections; record its PID."""
    pidfile = host.path / "sshd.pid"
    pidfile.unlink(missing_ok=True)
    run(
        host.in_host([tool("sshd"), "-f", str(host.path / "ssh" / "sshd_config"), "-E", str(host.path / "sshd.log")]),
        what="sshd on %s" % host.name,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            host.sshd_pid = int(pidfile.read_text().strip())
        if host.sshd_pid:
            with contextlib.suppress(OSError), socket.create_connection((host.address, 22), timeout=1):
                return
        time.sleep(0.05)
    raise LabError("sshd on %s does not accept connections: %s" % (host.name, tail(host.path / "sshd.log")))


def define_host_resources(host: Host) -> None:
    """Define, start and autostart the host's network `lab`, its storage pool `lab` and its pool `virtops-local`."""
    network_xml = "<network><name>%s</name><forward mode='bridge'/><bridge name='%s'/></network>" % (
        NETWORK_NAME,
        GUEST_BRIDGE,
    )
    pool_xml = "<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>" % (POOL_NAME, POOL_PATH)
    with connect(host) as conn:
        try:
            network = conn.networkDefineXML(network_xml)
            network.create()
            network.setAutostart(1)
            pool = conn.storagePoolDefineXML(pool_xml, 0)
            pool.build(0)
            pool.create(0)
            pool.setAutostart(1)
        except common.libvirt.libvirtError as exc:
            raise LabError(
                "defining network/pool %s on %s: %s" % (NETWORK_NAME, host.name, exc.get_error_message())
            ) from exc
        ensure_local_pool(conn, host)


def local_pool_xml() -> str:
    """The `virtops-local` dir pool of the VMs' local disks (the same path on every host)."""
    return "<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>" % (LOCAL_POOL_NAME, LOCAL_POOL_PATH)


def ensure_local_pool(conn: t.Any, host: Host) -> t.Any:
    """The host's pool `virtops-local`, defined, built, started and autostarted where it is not yet (idempotent)."""
    try:
        try:
            pool = conn.storagePoolLookupByName(LOCAL_POOL_NAME)
        except common.libvirt.libvirtError as exc:
            if exc.get_error_code() != common.libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise
            pool = conn.storagePoolDefineXML(local_pool_xml(), 0)
            pool.build(0)
        if not pool.isActive():
            pool.create(0)
        if not pool.autostart():
            pool.setAutostart(1)
    except common.libvirt.libvirtError as exc:
        raise LabError("storage pool %s on %s: %s" % (LOCAL_POOL_NAME, host.name, exc.get_error_message())) from exc
    return pool


def write_inventory(lab: Lab) -> None:
    """Write the Ansible inventory of the lab: one group named after the cluster."""
    hosts = {
        host.name: {
            "ansible_host": host.address,
            "virtops_libvirt_uri": host.uri,
            "virtops_lab_tls_uri": host.tls_uri,
            "virtops_lab_host_index": host.index,
            "virtops_lab_migration_address": host.migration_address,
            # Lab hosts have no systemd: the controller restarts a host's libvirtd with virtlab.
            "virtops_libvirtd_restart_command": [str(VIRTLAB), "restart-libvirtd", host.name],
            # The lab's stand-in for a reboot (rolling_maintenance): a restart of the host's libvirtd.
            "virtops_reboot_command": [str(VIRTLAB), "restart-libvirtd", host.name],
            # The host's fence agent (fence-agents conventions; ha_recover appends `-o off` / `-o status`).
            "virtops_fence_command": [str(VIRTLAB), "fence", host.name],
        }
        for host in lab.hosts
    }
    group = {
        "hosts": hosts,
        "vars": {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": lab.key,
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
            "ansible_python_interpreter": "/usr/bin/python3",
            # As production inventories should: one SSH round trip per task instead of several.
            "ansible_pipelining": True,
            "virtops_libvirtd_restart_delegate_to": "localhost",
            "virtops_reboot_delegate_to": "localhost",
            # The directory every lab host mounts at the same path (the HA store and lockspace live there).
            "virtops_shared_storage": str(SHARED_DIR),
            # Where ha_recover runs: the controller, which reaches every host and the fence commands.
            "virtops_ha_delegate_to": "localhost",
            # Lab hosts have no systemd: virtlab starts each host's virtlockd itself (ha_locking only checks its socket).
            "virtops_virtlockd_service": "",
        },
    }
    text = "# virtlab inventory of lab %r (written by `virtlab up`; do not edit)\n" % lab.cluster
    text += common.yaml.safe_dump(
        {"all": {"children": {lab.cluster: group}}}, default_flow_style=False, sort_keys=False
    )
    write_atomic(Path(lab.inventory), text)


# ---------------------------------------------------------------------------------------------------
# VMs
# ---------------------------------------------------------------------------------------------------


# Stand-ins for SR-IOV failover VMs. No SR-IOV NIC exists in the lab, so the "VF" is an emulated
# vmxnet3 NIC (a PCI Express device the guest can eject), not a VF: QEMU's failover path (teaming) and
# an in-guest bond (bond) run for real, vfio and VF pools do not.
#   teaming        q35; a virtio standby with <teaming type='persistent'/> listed first, and the vmxnet3
#                  with the same MAC alone on its own pcie-root-port, made the failover primary by
#                  failover_pair_id through <qemu:override> (libvirt allows a transient teaming
#                  element only on hostdev interfaces). QEMU unplugs it for a live migration and plugs
#                  it back on the destination; the guest's net_failover master keeps the address.
#   teaming-stuck  the same, but the guest kernel ignores ACPI hotplug (acpiphp.disable=1), so it never
#                  releases the primary: a migration waits in QEMU's wait-unplug state until aborted.
#   bond           q35; a virtio backup and the hot-pluggable vmxnet3, same MAC, in an active-backup
#                  bond0 in the guest (the vmxnet3 primary); whoever migrates it unplugs the vmxnet3
#                  first and plugs the same interface back afterwards, and the guest re-enslaves it.
FAILOVER_MODES = ("teaming", "teaming-stuck", "bond")
FAILOVER_PAIR = "fo"
STANDBY_ALIAS = "ua-%s-backup" % FAILOVER_PAIR
VF_STANDIN_ALIAS = "ua-%s-vf" % FAILOVER_PAIR
VF_STANDIN_MODEL = "vmxnet3"
# The pcie-root-port (controller index, which is its bus number) the stand-in sits alone on, and how
# many more root ports a failover guest gets (libvirt places its other PCI devices on two of them).
VF_STANDIN_PORT = 1
EXTRA_ROOT_PORTS = 10
QEMU_NAMESPACE = "http://libvirt.org/schemas/domain/qemu/1.0"


def guest_mac(vm: Vm) -> str:
    """The MAC a failover stand-in's NICs share: unique in the lab, derived from the guest's address."""
    address = ipaddress.IPv4Address(vm.guest_ip.split("/")[0])
    return "52:54:00:76:6c:%02x" % (int(address) & 0xFF)


def vf_standin_interface_xml(vm: Vm) -> str:
    """The <interface> of a failover stand-in's "VF": an emulated vmxnet3, not a VF.

    It is alone in slot 0 of its own pcie-root-port (an explicit address: libvirt would otherwise look
    for a conventional PCI slot), without option ROM (a destination QEMU refuses the ROM's RAM block).
    The same XML hot-plugs it again (bond mode).
    """
    return f"""<interface type='network'>
      <mac address='{guest_mac(vm)}'/>
      <source network='{NETWORK_NAME}'/>
      <model type='{VF_STANDIN_MODEL}'/>
      <rom enabled='no'/>
      <alias name='{VF_STANDIN_ALIAS}'/>
      <address type='pci' domain='0x0000' bus='{VF_STANDIN_PORT:#04x}' slot='0x00' function='0x0'/>
    </interface>"""


def failover_devices(vm: Vm) -> tuple[str, str]:
    """A failover stand-in's root ports and NICs (standby first), and its <qemu:override> (teaming)."""
    ports = "".join(
        "\n    <controller type='pci' index='%d' model='pcie-root-port'/>" % index
        for index in range(VF_STANDIN_PORT, VF_STANDIN_PORT + 1 + EXTRA_ROOT_PORTS)
    )
    teaming = vm.failover.startswith("teaming")
    teaming_element = "\n      <teaming type='persistent'/>" if teaming else ""
    standby = f"""
    <interface type='network'>
      <mac address='{guest_mac(vm)}'/>
      <source network='{NETWORK_NAME}'/>
      <model type='virtio'/>{teaming_element}
      <alias name='{STANDBY_ALIAS}'/>
    </interface>"""
    override = ""
    if teaming:
        override = f"""
  <qemu:override>
    <qemu:device alias='{VF_STANDIN_ALIAS}'>
      <qemu:frontend>
        <qemu:property name='failover_pair_id' type='string' value='{STANDBY_ALIAS}'/>
      </qemu:frontend>
    </qemu:device>
  </qemu:override>"""
    return ports + standby + "\n    " + vf_standin_interface_xml(vm), override


def guest_cmdline(vm: Vm) -> str:
    """The guest kernel's command line: its name, its address on the guest network, its network mode."""
    words = ["console=ttyS0", "panic=-1", "quiet", "virtlab.name=" + vm.name]
    if vm.guest_ip:
        words += ["virtlab.ip=" + vm.guest_ip, "virtlab.gw=%s" % GUEST_GATEWAY]
    if vm.failover.startswith("teaming"):
        words.append("virtlab.net=failover")
    elif vm.failover == "bond":
        words += ["virtlab.net=bond", "virtlab.vfmac=" + guest_mac(vm)]
    if vm.failover == "teaming-stuck":
        # No ACPI PCI hotplug in the guest: it never ejects the failover primary QEMU asks it to release
        # (and finds the primary QEMU plugged at boot only by rescanning the PCI bus).
        words += ["acpiphp.disable=1", "virtlab.rescan=1"]
    if vm.python:
        # The Python variant starts its system log first, then runs the normal /init.
        words.append("rdinit=" + PYTHON_RDINIT)
    return " ".join(words)


# The migration priorities the collection's settings accept (settings.PRIORITIES), and its default.
PRIORITIES = ("low", "medium", "high")
DEFAULT_PRIORITY = "medium"


def migration_metadata() -> t.Any:
    """The collection's metadata format owner (plugins/module_utils/_migration/pure/metadata.py)."""
    sys.path.insert(0, str(MODULE_UTILS))
    try:
        from _migration.pure import metadata
    except ImportError as exc:
        raise LabError("cannot import the collection's metadata format from %s: %s" % (MODULE_UTILS, exc)) from exc
    finally:
        sys.path.remove(str(MODULE_UTILS))
    return metadata


def parse_vm(spec: str, host_count: int, tiny: bool = False, failover: str = "", python: bool = False) -> Vm:
    """Parse NAME:MEMORY_MIB[:PRIORITY][@HOSTINDEX] (for a tiny VM or a failover stand-in, MEMORY_MIB may be
    left out). ``python``: the guest boots the Python variant of the initrd.
    """
    if failover and failover not in FAILOVER_MODES:
        raise LabError("bad failover mode %r: expected one of %s" % (failover, ", ".join(FAILOVER_MODES)))
    if tiny and failover:
        raise LabError("a tiny VM has no kernel, so it cannot be a failover stand-in")
    if tiny and python:
        raise LabError("a tiny VM has no kernel, so it cannot have Python")
    what = "tiny VM" if tiny else "failover VM" if failover else "--vm"
    match = VM_SPEC.match(spec)
    if not match or not (tiny or failover or match.group("memory")):
        syntax = (
            "NAME[:MEMORY_MIB][:PRIORITY][@HOSTINDEX], e.g. t1:32:high@2"
            if tiny or failover
            else "NAME:MEMORY_MIB[:PRIORITY][@HOSTINDEX], e.g. web:256:high@2"
        )
        raise LabError("bad %s %r: expected %s" % (what, spec, syntax))
    priority = match.group("priority") or DEFAULT_PRIORITY
    if priority not in PRIORITIES:
        raise LabError("bad %s %r: priority must be one of %s" % (what, spec, ", ".join(PRIORITIES)))
    memory = int(match.group("memory") or (TINY_MEMORY_MIB if tiny else FAILOVER_MEMORY_MIB))
    minimum = TINY_MIN_MEMORY_MIB if tiny else GUEST_MIN_MEMORY_MIB
    if memory < minimum:
        raise LabError("bad %s %r: the guest needs at least %d MiB" % (what, spec, minimum))
    index = int(match.group("host") or 1)
    if not 1 <= index <= host_count:
        raise LabError("bad %s %r: host index %d is not between 1 and %d" % (what, spec, index, host_count))
    return Vm(
        name=match.group("name"),
        memory_mib=memory,
        priority=priority,
        host_index=index,
        tiny=tiny,
        failover=failover,
        python=python,
    )


def assign_guest_addresses(existing: t.Sequence[Vm], new: t.Sequence[Vm]) -> None:
    """Give each new guest (not tiny VMs) the lowest address on the guest network no lab VM has."""
    taken = {vm.guest_ip.split("/")[0] for vm in existing if vm.guest_ip}
    candidates = (
        GUEST_SUBNET.network_address + offset for offset in range(FIRST_GUEST_OFFSET, GUEST_SUBNET.num_addresses - 1)
    )
    free = (address for address in candidates if str(address) not in taken)
    for vm in new:
        if vm.tiny or vm.guest_ip:
            continue
        address = next(free, None)
        if address is None:
            raise LabError("no free address left for %s on the guest network %s" % (vm.name, GUEST_SUBNET))
        vm.guest_ip = "%s/%d" % (address, GUEST_SUBNET.prefixlen)
        taken.add(str(address))


def tiny_domain_type(conn: t.Any) -> str:
    """'kvm' when the host's libvirt offers KVM for x86_64 guests, else 'qemu' (TCG): a tiny VM's domain type.

    A tiny VM runs only its firmware, so it does not depend on the guest kernel booting under KVM (the
    probe behind the lab's own accel, see image.choose_accel).
    """
    capabilities = ElementTree.fromstring(conn.getCapabilities())
    for guest in capabilities.findall("guest"):
        if guest.findtext("os_type") == "hvm" and guest.find("arch[@name='x86_64']/domain[@type='kvm']") is not None:
            return "kvm"
    return "qemu"


def domain_xml(lab: Lab, vm: Vm, domain_type: str) -> str:
    """The lab guest's domain: no disk, one NIC on network `lab`, the priority in the collection's metadata.

    A lab guest boots the lab's kernel and initrd directly and has the guest agent's channel. A tiny VM
    boots only its firmware, which finds nothing to boot and idles without rebooting; it has no agent
    channel, and its NIC no boot ROM (no network boot attempt). A VM with a shared disk has it as a
    virtio disk (raw, cache none: libvirt counts such a disk safe to migrate on any file system), and a
    VM with a local disk has its qcow2 volume as the next virtio disk.
    """
    metadata = migration_metadata()
    console_log = "/var/log/libvirt/qemu/%s-console.log" % vm.name
    if vm.tiny:
        boot = "<bios rebootTimeout='-1'/>"
        agent = ""
        nic_rom = "\n      <rom enabled='no'/>"
    else:
        if vm.python and not lab.python_initrd:
            raise LabError("VM %s needs the Python guest image, which this lab has not built" % vm.name)
        initrd = lab.python_initrd if vm.python else lab.initrd
        boot = f"""<kernel>{escape(lab.kernel)}</kernel>
    <initrd>{escape(initrd)}</initrd>
    <cmdline>{guest_cmdline(vm)}</cmdline>"""
        agent = f"""
    <channel type='unix'>
      <target type='virtio' name='{AGENT_CHANNEL}'/>
    </channel>"""
        nic_rom = ""
    machine, namespace, override = "pc", "", ""
    nics = f"""
    <interface type='network'>
      <source network='{NETWORK_NAME}'/>
      <model type='virtio'/>{nic_rom}
    </interface>"""
    if vm.failover:
        machine, namespace = "q35", " xmlns:qemu='%s'" % QEMU_NAMESPACE
        nics, override = failover_devices(vm)
    return f"""<domain type='{domain_type}'{namespace}>
  <name>{vm.name}</name>
  <metadata>
    {metadata.render({"priority": vm.priority})}
  </metadata>
  <memory unit='MiB'>{vm.memory_mib}</memory>
  <currentMemory unit='MiB'>{vm.memory_mib}</currentMemory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='{machine}'>hvm</type>
    {boot}
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{escape(tool("qemu-system-x86_64"))}</emulator>
    <controller type='usb' model='none'/>{shared_disk_xml(vm)}{local_disk_xml(vm)}{agent}{nics}
    <serial type='file'>
      <source path='{console_log}'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path='{console_log}'/>
      <target type='serial' port='0'/>
    </console>
    <memballoon model='none'/>
  </devices>{override}
</domain>
"""


def shared_disk_xml(vm: Vm) -> str:
    """The <disk> of a VM's shared disk file, or "" for a VM without one."""
    if not vm.shared_disk:
        return ""
    return f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source file='{escape(vm.shared_disk)}'/>
      <target dev='{SHARED_DISK_TARGET}' bus='virtio'/>
    </disk>"""


def create_shared_disk(vm: Vm, mib: int) -> None:
    """Give the VM a raw sparse disk file of ``mib`` MiB on the shared storage (0600 root); record it."""
    path = SHARED_DISKS / (vm.name + ".img")
    if path.exists():
        raise LabError("the shared disk %s exists already" % path)
    SHARED_DISKS.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, mib << 20)
    finally:
        os.close(fd)
    vm.shared_disk = str(path)
    vm.shared_disk_mib = mib


def parse_disk_size(text: str) -> int:
    """The bytes of `add-vm --disk SIZE`: a whole number and a binary unit (256M, 1G, 512MiB), 1M to 1T."""
    match = DISK_SIZE.fullmatch(text)
    size = int(match.group(1)) * DISK_UNITS[match.group(2)] if match else 0
    if not match or not DISK_MIN_BYTES <= size <= DISK_MAX_BYTES:
        raise LabError(
            "bad --disk %r: expected a whole number and a binary unit K, M, G or T (256M, 1G, 512MiB), from 1M to 1T"
            % text
        )
    return size


def free_disk_target(vm: Vm) -> str:
    """The first virtio target the VM's disks leave free (vda, or vdb next to a shared disk)."""
    taken = {SHARED_DISK_TARGET} if vm.shared_disk else set()
    return next("vd" + letter for letter in "abcdefghijklmnopqrstuvwxyz" if "vd" + letter not in taken)


def local_volume_xml(name: str, size: int) -> str:
    """The volume of a VM's local disk: NAME.qcow2, ``size`` bytes, nothing allocated (a thin qcow2)."""
    return f"""<volume type='file'>
  <name>{escape(name)}.qcow2</name>
  <capacity unit='bytes'>{size}</capacity>
  <allocation unit='bytes'>0</allocation>
  <target>
    <format type='qcow2'/>
    <permissions><mode>0600</mode></permissions>
  </target>
</volume>"""


def local_disk_xml(vm: Vm) -> str:
    """The <disk> of a VM's local disk (its qcow2 volume, cache none, serial LOCAL_DISK_SERIAL), or ""."""
    if not vm.local_disk:
        return ""
    return f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='{escape(vm.local_disk)}'/>
      <target dev='{vm.local_disk_target}' bus='virtio'/>
      <serial>{LOCAL_DISK_SERIAL}</serial>
    </disk>"""


def create_local_disk(lab: Lab, vm: Vm, size: int) -> None:
    """Give the VM a thin qcow2 volume NAME.qcow2 of ``size`` bytes in the pool `virtops-local` of its host
    (created by libvirt's storage API, so nothing is allocated); record it.
    """
    host = lab.host(str(vm.host_index))
    with connect(host) as conn:
        pool = ensure_local_pool(conn, host)
        try:
            # Files libvirt does not know yet (a leftover NAME.qcow2) count: creating over one fails.
            pool.refresh(0)
            path = pool.createXML(local_volume_xml(vm.name, size), 0).path()
        except common.libvirt.libvirtError as exc:
            raise LabError(
                "creating the local disk %s.qcow2 in pool %s on %s: %s"
                % (vm.name, LOCAL_POOL_NAME, host.name, exc.get_error_message())
            ) from exc
    vm.local_disk = path
    vm.local_disk_bytes = size
    vm.local_disk_target = free_disk_target(vm)


def host_file(host: Host, path: str) -> Path:
    """Where a path in one of the host's private directories (HOST_DIR_MOUNTS) is, seen from the root namespace."""
    for directory, target in HOST_DIR_MOUNTS:
        if path == target or path.startswith(target + "/"):
            return host.path / directory / path[len(target) :].lstrip("/")
    raise LabError("%s is in none of the private directories of %s" % (path, host.name))


def delete_local_volume(host: Host, name: str) -> bool:
    """Delete the volume ``name`` of the host's pool `virtops-local` through libvirt; False if there is none."""
    with connect(host) as conn:
        try:
            pool = conn.storagePoolLookupByName(LOCAL_POOL_NAME)
            pool.refresh(0)
            pool.storageVolLookupByName(name).delete(0)
        except common.libvirt.libvirtError as exc:
            if exc.get_error_code() in (common.libvirt.VIR_ERR_NO_STORAGE_POOL, common.libvirt.VIR_ERR_NO_STORAGE_VOL):
                return False
            raise LabError("deleting %s on %s: %s" % (name, host.name, exc.get_error_message())) from exc
    return True


def remove_local_disk(lab: Lab, vm: Vm) -> list[str]:
    """Delete the VM's local disk volume on every host that has one (after a move that copied it, the copy is
    on another host); return those hosts. Call it once the VM is defined nowhere.

    On a host that is down, or whose libvirtd does not answer, the volume is a file, deleted as such.
    """
    if not vm.local_disk:
        return []
    name = Path(vm.local_disk).name
    where = []
    for host in lab.hosts:
        deleted = False
        if not host.down_reason:
            with contextlib.suppress(LabError):
                deleted = delete_local_volume(host, name)
        path = host_file(host, LOCAL_POOL_PATH + "/" + name)
        if path.exists():
            path.unlink()
            deleted = True
        if deleted:
            where.append(host.name)
    return where


def start_vm(lab: Lab, vm: Vm) -> None:
    """Define the VM persistently on its host and start it."""
    host = lab.host(str(vm.host_index))
    with connect(host) as conn:
        try:
            dom = conn.defineXML(domain_xml(lab, vm, tiny_domain_type(conn) if vm.tiny else lab.accel))
        except common.libvirt.libvirtError as exc:
            raise LabError("defining VM %s on %s: %s" % (vm.name, host.name, exc.get_error_message())) from exc
        try:
            dom.create()
        except common.libvirt.libvirtError as exc:
            with contextlib.suppress(common.libvirt.libvirtError):
                dom.undefine()
            raise LabError("starting VM %s on %s: %s" % (vm.name, host.name, exc.get_error_message())) from exc


def python_ready(dom: t.Any) -> None:
    """Raise LabError until the Python guest's system log listens (it writes image.PYTHON_READY then)."""
    try:
        handle = agent_command(dom, "guest-file-open", {"path": PYTHON_READY, "mode": "r"}, timeout=2)
    except common.libvirt.libvirtError as exc:
        raise LabError("the guest's system log is not ready: %s" % exc.get_error_message()) from exc
    agent_command(dom, "guest-file-close", {"handle": handle}, timeout=2)


def wait_for_agents(lab: Lab, vms: t.Sequence[Vm], timeout: float) -> None:
    """Wait until every VM's guest agent (on the host it was started on) answers guest-ping (tiny VMs have none);
    for a Python guest, also until its system log listens.
    """
    started = time.monotonic()
    pending = {vm.name: lab.host(str(vm.host_index)) for vm in vms if not vm.tiny}
    python = {vm.name for vm in vms if vm.python}
    last_error: dict[str, str] = {}
    connections: dict[str, t.Any] = {}
    try:
        while pending:
            for name, host in list(pending.items()):
                try:
                    if host.name not in connections:
                        connections[host.name] = open_connection(host)
                    dom = connections[host.name].lookupByName(name)
                    agent_command(dom, "guest-ping", timeout=1)
                    if name in python:
                        python_ready(dom)
                except LabError as exc:
                    last_error[name] = str(exc)
                except common.libvirt.libvirtError as exc:
                    last_error[name] = exc.get_error_message()
                else:
                    del pending[name]
                    ready = "guest agent answers" + (" and Python guest ready" if name in python else "")
                    say("VM %s: %s (%.1f s)" % (name, ready, time.monotonic() - started))
            if pending and time.monotonic() - started > timeout:
                details = []
                for name, host in pending.items():
                    console = host.path / "log-libvirt" / "qemu" / ("%s-console.log" % name)
                    details.append(
                        "VM %s on %s: %s; console %s ends:\n%s"
                        % (name, host.name, last_error.get(name, "no answer"), console, tail(console, 5))
                    )
                raise LabError(
                    "guest agents did not answer guest-ping within %.0f s:\n%s" % (timeout, "\n".join(details))
                )
            if pending:
                time.sleep(0.2)
    finally:
        for conn in connections.values():
            close_connection(conn)


def remove_shared_disk(vm: Vm) -> None:
    """Delete the VM's shared disk file, if it has one."""
    if vm.shared_disk:
        Path(vm.shared_disk).unlink(missing_ok=True)


def remove_vm_everywhere(lab: Lab, name: str) -> list[str]:
    """Destroy and undefine a VM on every host; return where it was.

    On a host that is down (crashed or powered off) no libvirtd runs and no QEMU: the VM's persistent
    definition there is a file, removed as such, so that the host does not bring it back when it
    starts again.
    """
    where = []
    for host in lab.hosts:
        if host.down_reason:
            qemu_dir = host.path / "etc-libvirt" / "qemu"
            files = [qemu_dir / (name + ".xml"), qemu_dir / "autostart" / (name + ".xml")]
            if files[0].exists():
                where.append("%s, %s" % (host.name, host.down_reason))
            for path in files:
                path.unlink(missing_ok=True)
            continue
        with connect(host) as conn:
            try:
                dom = conn.lookupByName(name)
            except common.libvirt.libvirtError:
                continue
            where.append(host.name)
            with contextlib.suppress(common.libvirt.libvirtError):
                if dom.isActive():
                    dom.destroy()
            with contextlib.suppress(common.libvirt.libvirtError):
                if dom.isPersistent():
                    dom.undefineFlags(0)
    return where


# ---------------------------------------------------------------------------------------------------
# Tearing down
# ---------------------------------------------------------------------------------------------------


def qemu_pids(host: Host) -> list[int]:
    """PIDs of the QEMU processes the host's libvirtd records in its /run/libvirt/qemu."""
    pids = []
    for pidfile in (host.host_root() / HOST_TMPFS.lstrip("/") / "qemu").glob("*.pid"):
        with contextlib.suppress(OSError, ValueError):
            pids.append(int(pidfile.read_text().strip()))
    return pids


def lab_pids(host: Host, inode: int | None) -> dict[str, list[int]]:
    """The host's recorded processes that still run inside its network namespace, by role."""

    def ours(pid: int, comm: str) -> bool:
        return inode is not None and pid_alive(pid, comm) and pid_netns_inode(pid) == inode

    holder = [host.holder_pid] if ours(host.holder_pid, "sleep") else []
    return {
        "daemons": [
            pid
            for pid, comm in ((host.libvirtd_pid, "libvirtd"), (host.sshd_pid, "sshd"), (host.virtlockd_pid, "virtlockd"))
            if ours(pid, comm)
        ],
        "qemu": [pid for pid in qemu_pids(host) if ours(pid, "qemu")] if holder else [],
        "holder": holder,
    }


def teardown(lab: Lab) -> None:
    """Stop everything the lab started and remove its namespaces, interfaces and state.

    Phases run across all hosts at once: daemons (libvirtd, sshd, virtlockd) by recorded PID, then the guests'
    QEMU processes (by the PIDs their libvirtd recorded), then the namespace holders, then anything
    else still inside a lab network namespace. The lab subnets stay (or become) blackhole routes.
    """
    with signals_held():
        problems = stop_everything(lab)
    for problem in problems:
        warn(problem)


def stop_everything(lab: Lab) -> list[str]:
    """The work of teardown(); returns what could not be cleaned up."""
    problems = []
    inodes = {host.name: netns_inode(host.netns) for host in lab.hosts}
    recorded = {host.name: lab_pids(host, inodes[host.name]) for host in lab.hosts}
    stop_pids([pid for pids in recorded.values() for pid in pids["daemons"]])
    # The guests are thrown away: kill their QEMU processes outright (libvirt's destroy is slower).
    stop_pids([pid for pids in recorded.values() for pid in pids["qemu"]], sig=signal.SIGKILL)
    stop_pids([pid for pids in recorded.values() for pid in pids["holder"]], sig=signal.SIGKILL)
    leftovers = [pid for inode in inodes.values() if inode is not None for pid in pids_in_netns(inode)]
    stop_pids(leftovers, sig=signal.SIGKILL)
    still = [pid for pid in leftovers if pid_alive(pid)]
    if still:
        problems.append("processes still inside lab namespaces: %s" % " ".join(map(str, still)))
    ip = tool("ip")
    for host in lab.hosts:
        if inodes[host.name] is not None:
            result = run([ip, "netns", "del", host.netns], check=False)
            if result.returncode != 0:
                problems.append("ip netns del %s: %s" % (host.netns, result.stderr.strip()))
        for veth in (host.veth, host.migration_veth):
            if veth and Path("/sys/class/net", veth).exists():
                run([ip, "link", "del", veth], check=False)
    for bridge in (LAB_BRIDGE, MIGRATION_BRIDGE):
        if Path("/sys/class/net", bridge).exists():
            result = run([ip, "link", "del", bridge], check=False)
            if result.returncode != 0:
                problems.append("ip link del %s: %s" % (bridge, result.stderr.strip()))
    try:
        blackhole_lab_subnets()
    except LabError as exc:
        problems.append(str(exc))
    remove_state_dir()
    return problems


# ---------------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------------


def keep_logs(lab: Lab) -> None:
    """Copy the hosts' logs (libvirtd, QEMU, guest consoles, sshd) aside before a failed lab is removed."""
    shutil.rmtree(FAILED_LOGS, ignore_errors=True)
    for host in lab.hosts:
        target = FAILED_LOGS / host.name
        with contextlib.suppress(OSError):
            if (host.path / "log-libvirt").is_dir():
                shutil.copytree(host.path / "log-libvirt", target / "libvirt")
            for log in ("libvirtd.out", "sshd.log", "holder.log"):
                if (host.path / log).exists():
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(host.path / log, target / log)
    if FAILED_LOGS.exists():
        warn("logs of the failed lab kept in %s" % FAILED_LOGS)


def cmd_up(args: argparse.Namespace) -> int:
    """virtlab up: (re)create the lab."""
    require_root()
    require(UP_TOOLS)
    require_qemu_driver()
    if not CLUSTER_NAME.match(args.cluster):
        raise LabError("bad --cluster %r: use 1-12 lowercase letters and digits, starting with a letter" % args.cluster)
    if not 1 <= args.hosts <= MAX_HOSTS:
        raise LabError("--hosts must be between 1 and %d" % MAX_HOSTS)
    vms = [parse_vm(spec, args.hosts) for spec in args.vm]
    vms += [parse_vm(spec, args.hosts, tiny=True) for spec in args.tiny_vm]
    vms += [parse_vm(spec, args.hosts, python=True) for spec in args.python_vm]
    names = [vm.name for vm in vms]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise LabError("VM names must be unique: %s" % ", ".join(duplicates))
    assign_guest_addresses([], vms)
    started = time.monotonic()
    with lab_lock():
        # First of all, so that no lab address is ever reached through the default route.
        blackhole_lab_subnets()
        previous = Lab.load()
        if previous is not None:
            say("a lab is up (%s); tearing it down first" % previous.cluster)
            teardown(previous)
        image = build_image()
        accel = choose_accel(image)
        ensure_accounts()
        check_python_for_ansible()
        lab = new_lab(args.cluster, args.hosts, vms, Path(args.inventory), image, accel)
        if any(vm.python for vm in vms):
            lab.python_initrd = build_python_image(image)["initrd"]
        check_network_free(lab)
        prepare_state_dir()
        lab.save()
        try:
            create_lab(lab)
            if not args.no_wait and lab.vms:
                wait_for_agents(lab, lab.vms, args.wait_timeout)
            write_inventory(lab)
            lab.phase = "up"
            lab.save()
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                reason = "interrupted"
            else:
                reason = (str(exc) if isinstance(exc, LabError) else repr(exc)).splitlines()[0]
            warn("up failed, cleaning up: %s" % reason)
            keep_logs(lab)
            teardown(lab)
            if isinstance(exc, (LabError, KeyboardInterrupt)):
                raise
            raise LabError("up failed: %r" % exc) from exc
    say(
        "lab %s is up: %s, %s (%s) in %.1f s; inventory %s"
        % (
            lab.cluster,
            count(len(lab.hosts), "host"),
            count(len(lab.vms), "VM"),
            "KVM" if lab.accel == "kvm" else "TCG",
            time.monotonic() - started,
            lab.inventory,
        )
    )
    return 0


def create_lab(lab: Lab) -> None:
    """Create bridge, hosts, daemons, networks, pools and VMs, recording each in the state as it goes."""
    run([tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", "virtlab " + lab.cluster, "-f", lab.key])
    create_lab_bridges()
    create_pki(lab)
    create_shared_storage()
    for host in lab.hosts:
        create_host_network(host)
        prepare_host_files(lab, host)
        start_holder(host)
        lab.save()
        mount_host_dirs(host)
        start_virtlockd(host)
        lab.save()
    write_known_hosts(lab)
    # Without a shared capabilities cache, let one host probe QEMU before the others start.
    first = [] if any(CAPABILITIES_CACHE.glob("*.xml")) else lab.hosts[:1]
    for group in (first, [host for host in lab.hosts if host not in first]):
        for host in group:
            seed_capabilities(host)
        launchers = [(host, launch_libvirtd(host)) for host in group]
        for host, launcher in launchers:
            finish_libvirtd(host, launcher)
            lab.save()
        if group:
            save_capabilities(group[0])
    for host in lab.hosts:
        start_sshd(host)
        lab.save()
        define_host_resources(host)
    say("%s ready: %s" % (count(len(lab.hosts), "host"), ", ".join("%s %s" % (h.name, h.address) for h in lab.hosts)))
    for vm in lab.vms:
        start_vm(lab, vm)
    if lab.vms:
        say("started VMs: %s" % ", ".join("%s@%s" % (vm.name, lab.host(str(vm.host_index)).name) for vm in lab.vms))


def cmd_down(_args: argparse.Namespace) -> int:
    """virtlab down: stop and remove the lab."""
    require_root()
    with lab_lock():
        lab = Lab.load()
        if lab is None:
            blackhole_lab_subnets()
            say("nothing is up")
            return 0
        teardown(lab)
    say("lab %s is down" % lab.cluster)
    return 0


def link_is_up(veth: str) -> bool:
    """Whether a veth (bridge side) is administratively up."""
    with contextlib.suppress(OSError, ValueError):
        return bool(veth) and bool(int(Path("/sys/class/net", veth, "flags").read_text(), 16) & 1)
    return False


def maintenance_mark(host: Host) -> tuple[str | None, str | None]:
    """The state of the collection's maintenance mark on the host, and why it cannot be read.

    (None, None) when the host has no mark; ("preparing" or "maintenance", None) for a mark (one
    without "state" counts as "maintenance"); (None, REASON) for a mark that cannot be read.
    """
    path = host.path / MAINTENANCE_MARK
    try:
        mark = json.loads(path.read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, "cannot read maintenance mark %s: %s" % (path, exc)
    if not isinstance(mark, dict):
        return None, "cannot read maintenance mark %s: not a JSON object" % path
    state = mark.get("state")
    if state is None:
        return "maintenance", None
    if state not in MAINTENANCE_STATES:
        return None, "cannot read maintenance mark %s: unknown state %r (expected %s)" % (
            path,
            state,
            " or ".join(MAINTENANCE_STATES),
        )
    return str(state), None


def host_status(lab: Lab, host: Host) -> dict[str, t.Any]:
    """One host's state: power, daemons, links, maintenance mark and the domains defined or running on it.

    A host that is down (crashed or powered off) is not inspected: its domains are not listed.
    """
    known = {vm.name for vm in lab.vms}
    maintenance, maintenance_error = maintenance_mark(host)
    entry: dict[str, t.Any] = {
        "name": host.name,
        "index": host.index,
        "address": host.address,
        "migration_address": host.migration_address or None,
        "uri": host.uri,
        "libvirtd_alive": pid_alive(host.libvirtd_pid, "libvirtd"),
        "libvirtd_pid": host.libvirtd_pid,
        "sshd_alive": pid_alive(host.sshd_pid, "sshd"),
        "sshd_pid": host.sshd_pid,
        "virtlockd_alive": pid_alive(host.virtlockd_pid, "virtlockd"),
        "virtlockd_pid": host.virtlockd_pid,
        "power": host.power,
        "crashed": host.crashed,
        "down": host.down_reason or None,
        "inspected": not host.down_reason,
        "link_up": link_is_up(host.veth),
        "migration_link_up": link_is_up(host.migration_veth),
        "maintenance": maintenance,
        "maintenance_error": maintenance_error,
        "error": None,
        "vms": [],
    }
    if host.down_reason:
        return entry
    try:
        with connect(host) as conn:
            for dom in sorted(conn.listAllDomains(0), key=lambda d: d.name()):
                entry["vms"].append(
                    {
                        "name": dom.name(),
                        "state": domain_state(dom),
                        "persistent": bool(dom.isPersistent()),
                        "lab_vm": dom.name() in known,
                    }
                )
    except (LabError, common.libvirt.libvirtError) as exc:
        entry["error"] = str(exc)
    return entry


def cmd_status(args: argparse.Namespace) -> int:
    """virtlab status: hosts, daemons and VMs."""
    require_root()
    lab = Lab.load()
    if lab is None:
        if args.json:
            print(json.dumps({"up": False, "state_dir": str(STATE_DIR)}))
        else:
            print("no lab is up (state directory %s)" % STATE_DIR)
        return 1
    hosts = [host_status(lab, host) for host in lab.hosts]
    report = {
        "up": lab.phase == "up",
        "phase": lab.phase,
        "cluster": lab.cluster,
        "subnet": str(SUBNET),
        "bridge": LAB_BRIDGE,
        "migration_subnet": str(MIGRATION_SUBNET),
        "migration_bridge": MIGRATION_BRIDGE,
        "guest_subnet": str(GUEST_SUBNET),
        "guest_gateway": str(GUEST_GATEWAY),
        "accel": lab.accel,
        "key": lab.key,
        "inventory": lab.inventory,
        "state_dir": str(STATE_DIR),
        "hosts": hosts,
        "lab_vms": [dataclasses.asdict(vm) for vm in lab.vms],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        "lab %s (%s): %s on %s, guests under %s, key %s, inventory %s"
        % (
            lab.cluster,
            lab.phase,
            count(len(hosts), "host"),
            SUBNET,
            "KVM" if lab.accel == "kvm" else "TCG",
            lab.key,
            lab.inventory,
        )
    )
    for entry in hosts:
        print(
            "%-10s %-14s %-32s libvirtd %-16s sshd %-16s virtlockd %-16s link %s, migration %s %s%s%s"
            % (
                entry["name"],
                entry["address"],
                entry["uri"],
                "alive (%d)" % entry["libvirtd_pid"] if entry["libvirtd_alive"] else "DOWN",
                "alive (%d)" % entry["sshd_pid"] if entry["sshd_alive"] else "DOWN",
                "alive (%d)" % entry["virtlockd_pid"] if entry["virtlockd_alive"] else "DOWN",
                "up" if entry["link_up"] else "DOWN",
                entry["migration_address"],
                "up" if entry["migration_link_up"] else "DOWN",
                "  [%s]" % entry["maintenance"] if entry["maintenance"] else "",
                "  [%s]" % power_tag(entry) if power_tag(entry) else "",
            )
        )
        if entry["maintenance_error"]:
            print("    (%s)" % entry["maintenance_error"])
        if entry["down"]:
            print("    (not inspected: the host is %s)" % entry["down"])
            continue
        if entry["error"]:
            print("    (cannot list VMs: %s)" % entry["error"])
        for vm in entry["vms"]:
            print(
                "    %-20s %-10s %s%s"
                % (
                    vm["name"],
                    vm["state"],
                    "persistent" if vm["persistent"] else "transient",
                    "" if vm["lab_vm"] else "  (not a lab VM)",
                )
            )
        if not entry["vms"] and not entry["error"]:
            print("    (no VMs)")
    return 0


def power_tag(entry: t.Mapping[str, t.Any]) -> str:
    """A host's condition as `status` tags it: POWERED OFF, CRASHED, PARTITIONED (both links down), or ""."""
    if entry["power"] == "off":
        return "POWERED OFF"
    if entry["crashed"]:
        return "CRASHED"
    if not entry["link_up"] and not entry["migration_link_up"]:
        return "PARTITIONED"
    return ""


def vm_invariant_problems(
    homes: list[str],
    active: list[tuple[str, str]],
    may_be_stopped: bool,
    uninspected: list[str],
    down: t.Sequence[str] = (),
) -> list[str]:
    """What breaks the no-VM-lost invariant for one VM (empty when it holds).

    ``homes`` are the hosts where the VM is persistently defined, ``active`` the (host, state) pairs where
    it is active, ``uninspected`` the hosts whose libvirtd could not be read, ``down`` the hosts not
    inspected because they are down (crashed or powered off; "NAME (crashed)"). A VM found on no
    inspected host may be on a down host: allowed when it may be stopped.
    """

    def listing(pairs: list[tuple[str, str]]) -> str:
        return ", ".join("%s (%s)" % pair for pair in pairs)

    if len(homes) == 1:
        home = homes[0]
        wrong = []
        state = next((state for host, state in active if host == home), None)
        if state is None and not may_be_stopped:
            wrong.append("shut off on %s" % home)
        elif state not in (None, "running"):
            wrong.append("%s on %s, not running" % (state, home))
        others = [(host, state) for host, state in active if host != home]
        if others:
            wrong.append("defined on %s but also active on %s" % (home, listing(others)))
        return wrong
    if len(homes) > 1:
        return [
            "persistently defined on %d hosts: %s%s"
            % (len(homes), ", ".join(homes), "; active on " + listing(active) if active else "")
        ]
    if active:
        return ["not persistently defined on any host (transient, active on %s)" % listing(active)]
    if uninspected:
        return ["not found on the hosts that could be inspected (not inspected: %s)" % ", ".join([*uninspected, *down])]
    if down:
        if may_be_stopped:
            return []
        return ["found on no inspected host (it may be on a host that is down: %s)" % ", ".join(down)]
    return ["defined on no host (lost)"]


def cmd_check(args: argparse.Namespace) -> int:
    """virtlab check: every lab VM defined on exactly one host and running only there; no VM in maintenance."""
    require_root()
    lab = require_lab()
    allowed = set(args.allow_stopped)
    for name in allowed:
        lab.vm(name)
    persistent: dict[str, list[str]] = {vm.name: [] for vm in lab.vms}
    active: dict[str, list[tuple[str, str]]] = {vm.name: [] for vm in lab.vms}
    problems: list[str] = []
    uninspected: list[str] = []
    running_here: dict[str, list[str]] = {host.name: [] for host in lab.hosts}
    down = ["%s (%s)" % (host.name, host.down_reason) for host in lab.hosts if host.down_reason]
    for host in lab.hosts:
        if host.down_reason:
            continue
        try:
            with connect(host) as conn:
                for dom in conn.listAllDomains(0):
                    name = dom.name()
                    if dom.isActive():
                        running_here[host.name].append(name)
                    if name not in persistent:
                        continue
                    if dom.isPersistent():
                        persistent[name].append(host.name)
                    if dom.isActive():
                        active[name].append((host.name, domain_state(dom)))
        except (LabError, common.libvirt.libvirtError) as exc:
            uninspected.append(host.name)
            problems.append("cannot inspect %s, so its VMs cannot be verified: %s" % (host.name, exc))
    # A host marked in maintenance runs no VM at all (lab VM or not); "preparing" and "activating" may.
    in_maintenance = []
    for host in lab.hosts:
        state, error = maintenance_mark(host)
        if error:
            problems.append("%s: %s" % (host.name, error))
        elif state == "maintenance":
            in_maintenance.append(host.name)
            if running_here[host.name]:
                problems.append(
                    "%s is marked in maintenance but runs %s: %s"
                    % (host.name, count(len(running_here[host.name]), "VM"), ", ".join(sorted(running_here[host.name])))
                )
    placed = []
    for vm in lab.vms:
        wrong = vm_invariant_problems(persistent[vm.name], active[vm.name], vm.name in allowed, uninspected, down)
        if wrong:
            problems.append("%s: %s" % (vm.name, "; ".join(wrong)))
        elif not persistent[vm.name]:
            placed.append("%s@? (on no inspected host, allowed: it may be on a host that is down)" % vm.name)
        else:
            placed.append(
                "%s@%s%s" % (vm.name, persistent[vm.name][0], "" if active[vm.name] else " (shut off, allowed)")
            )
    if problems:
        for problem in problems:
            print("FAIL " + problem)
        print(
            "check failed: %s; %d of %s are fine"
            % (count(len(problems), "problem"), len(placed), count(len(lab.vms), "lab VM"))
        )
        return 1
    print(
        "OK: %s, each defined on exactly one host and running only there: %s%s"
        % (
            count(len(lab.vms), "lab VM"),
            " ".join(placed) or "-",
            "; in maintenance, running no VM: %s" % ", ".join(in_maintenance) if in_maintenance else "",
        )
        + ("; not inspected (down): %s" % ", ".join(down) if down else "")
    )
    return 0


def cmd_add_vm(args: argparse.Namespace) -> int:
    """virtlab add-vm: define and start more lab VMs on a running lab."""
    require_root()
    with lab_lock():
        lab = require_lab()
        if args.tiny and args.failover:
            raise LabError("--tiny and --failover exclude each other (a tiny VM has no kernel)")
        if args.tiny and args.python:
            raise LabError("--tiny and --python exclude each other (a tiny VM has no kernel)")
        if args.shared_disk is not None and args.shared_disk < 1:
            raise LabError("--shared-disk must be at least 1 MiB")
        disk_bytes = parse_disk_size(args.disk) if args.disk is not None else 0
        if disk_bytes:
            require(["qemu-img"])
        vms = [
            parse_vm(spec, len(lab.hosts), tiny=args.tiny, failover=args.failover or "", python=args.python)
            for spec in args.vm
        ]
        for vm in vms:
            host = lab.host(str(vm.host_index))
            if host.down_reason:
                raise LabError("cannot start %s on %s: the host is %s" % (vm.name, host.name, host.down_reason))
        existing = {vm.name for vm in lab.vms}
        for vm in vms:
            if vm.name in existing:
                raise LabError("%s is already a lab VM" % vm.name)
            existing.add(vm.name)
        assign_guest_addresses(lab.vms, vms)
        if args.python:
            # The variant of the image this lab boots (built over it the first time, then cached).
            lab.python_initrd = build_python_image(build_image())["initrd"]
            lab.save()
        for host in lab.hosts:
            if host.down_reason:
                # Its libvirtd does not run: its persistent definitions are files.
                taken = {vm.name for vm in vms if (host.path / "etc-libvirt" / "qemu" / (vm.name + ".xml")).exists()}
            else:
                with connect(host) as conn:
                    taken = {dom.name() for dom in conn.listAllDomains(0)} & {vm.name for vm in vms}
            if taken:
                raise LabError("%s already has a domain named %s" % (host.name, ", ".join(sorted(taken))))
            if disk_bytes and not host.down_reason:
                # Every host has the pool, so that a move that copies the disk finds it on its destination.
                with connect(host) as conn:
                    ensure_local_pool(conn, host)
        for vm in vms:
            if args.shared_disk:
                create_shared_disk(vm, args.shared_disk)
            try:
                if disk_bytes:
                    create_local_disk(lab, vm, disk_bytes)
                start_vm(lab, vm)
            except LabError:
                remove_shared_disk(vm)
                remove_local_disk(lab, vm)
                raise
            lab.vms.append(vm)
            lab.save()
        if not args.no_wait:
            wait_for_agents(lab, vms, args.wait_timeout)
    say("added %s" % ", ".join("%s@%s" % (vm.name, lab.host(str(vm.host_index)).name) for vm in vms))
    for vm in vms:
        if vm.failover:
            say(
                "%s: failover stand-in (%s), guest address %s, standby %s, VF stand-in %s (an emulated %s, not a VF)"
                % (vm.name, vm.failover, vm.guest_ip, STANDBY_ALIAS, VF_STANDIN_ALIAS, VF_STANDIN_MODEL)
            )
        if vm.shared_disk:
            say("%s: shared disk %s (%d MiB, raw, sparse)" % (vm.name, vm.shared_disk, vm.shared_disk_mib))
        if vm.local_disk:
            say(
                "%s: local disk %s (%s, thin qcow2, target %s; %s in the guest)"
                % (vm.name, vm.local_disk, args.disk, vm.local_disk_target, LOCAL_DISK_GUEST_PATH)
            )
    return 0


def cmd_remove_vm(args: argparse.Namespace) -> int:
    """virtlab remove-vm: destroy and undefine lab VMs wherever they are."""
    require_root()
    with lab_lock():
        lab = require_lab()
        for name in args.name:
            lab.vm(name)
        for name in args.name:
            where = remove_vm_everywhere(lab, name)
            remove_shared_disk(lab.vm(name))
            disks = remove_local_disk(lab, lab.vm(name))
            lab.vms = [vm for vm in lab.vms if vm.name != name]
            lab.save()
            say(
                "removed %s%s%s"
                % (
                    name,
                    " (from %s)" % ", ".join(where) if where else " (it was defined nowhere)",
                    " and its local disk (from %s)" % ", ".join(disks) if disks else "",
                )
            )
    return 0


def cmd_ssh(args: argparse.Namespace) -> int:
    """virtlab ssh: open an SSH session (or run a command) on a lab host with the lab key."""
    require_root()
    lab = require_lab()
    host = lab.host(args.host)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    ssh = tool("ssh")
    os.execv(
        ssh,
        [
            ssh,
            "-i",
            lab.key,
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "root@" + host.address,
            *command,
        ],
    )
    return 0
