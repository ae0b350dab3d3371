# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guest image: Debian's cloud kernel booted directly with an initramfs of busybox-static,
qemu-guest-agent and the lab's workloads (guest/virtlab-dirty.c, which dirties memory, and
guest/virtlab-blocks.c, which writes and verifies disk blocks; compiled here with gcc -static),
cached in CACHE_DIR/guest; the KVM probe that decides whether guests run under KVM or
TCG (cached per image and host kernel); and the `image` command.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import lzma
import os
import re
import selectors
import shutil
import stat
import subprocess
import tempfile
import time
import typing as t
from pathlib import Path

from .common import (
    CACHE_DIR,
    CLEAN_ENV,
    GUEST_DIR,
    LAB_DIR,
    LabError,
    lab_lock,
    require,
    require_root,
    run,
    say,
    sha256,
    tool,
    warn,
    write_atomic,
)

IMAGE_TOOLS = ("apt-get", "dpkg", "dpkg-deb", "busybox", "ldd", "gcc")

# Guest image: Debian's cloud kernel, plus an initramfs of busybox-static, qemu-guest-agent and the
# lab's own workloads, each compiled from guest/NAME.c and linked statically: virtlab-dirty rewrites
# guest memory, virtlab-blocks writes numbered, checksummed blocks to a disk and verifies them.
# IMAGE_FORMAT changes whenever what goes into the image changes, so that a cached image is rebuilt.
IMAGE_FORMAT = 4
DIRTIER_SOURCE = LAB_DIR / "guest" / "virtlab-dirty.c"
DIRTIER_PATH = "/usr/bin/virtlab-dirty"
BLOCKS_SOURCE = LAB_DIR / "guest" / "virtlab-blocks.c"
BLOCKS_PATH = "/usr/bin/virtlab-blocks"
GUEST_PROGRAMS = ((DIRTIER_SOURCE, DIRTIER_PATH), (BLOCKS_SOURCE, BLOCKS_PATH))
STATIC_LIBC = Path("/usr/lib/x86_64-linux-gnu/libc.a")
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
AGENT_PACKAGE = "qemu-guest-agent"
# Kernel modules the guest needs (dependencies are added from each module's own modinfo): virtio, its
# disks (virtio_blk: a VM's shared or local disk, see hosts.py), the failover driver pair virtio_net
# pulls in, vmxnet3 (the emulated NIC that stands in for an SR-IOV VF in the lab's failover guests:
# Debian's cloud kernel has no e1000e) and bonding (which needs tls).
GUEST_MODULES_REQUIRED = ("virtio_pci", "virtio_console", "virtio_blk")
GUEST_MODULES_OPTIONAL = ("virtio_net", "net_failover", "failover", "vmxnet3", "bonding")
# insmod parameters: bonding makes no bond0 of its own (a bond guest creates it through sysfs).
GUEST_MODULE_PARAMETERS = {"bonding": "max_bonds=0"}
GUEST_TREE = (
    "bin",
    "sbin",
    "usr/bin",
    "usr/sbin",
    "dev",
    "etc",
    "lib/modules",
    "proc",
    "sys",
    "tmp",
    "run",
    "var",
    "root",
)
AGENT_CHANNEL = "org.qemu.guest_agent.0"
GUEST_READY_MARKER = "virtlab guest ready"

# The Python variant of the guest image (`add-vm --python`): the normal initrd followed by a second
# gzip-compressed cpio archive (the kernel unpacks both, the second over the first) that adds Debian's
# python3 with a trimmed standard library, compiled ahead of time, so that Ansible modules run in the
# guest (the community.libvirt.libvirt_qemu connection). The normal image stays as it is. PYTHON_FORMAT
# changes whenever what goes into the variant changes; it is also rebuilt when the normal initrd changes.
PYTHON_FORMAT = 3
PYTHON_META_PACKAGE = "python3-minimal"
# The variant's first program (kernel parameter rdinit=): it starts the guest's system log once /init
# has mounted /dev, then becomes /init.
PYTHON_RDINIT = "/sbin/virtlab-python-init"
# Parts of the standard library the guest leaves out (top-level names under /usr/lib/python3.X): tests,
# tools and GUIs, and what Ansible's file, command and fact modules and the hooks runner never import.
PYTHON_STDLIB_LEFT_OUT = frozenset(
    {
        "__phello__",
        "_pydecimal.py",
        "_pyio.py",
        "asyncio",
        "ctypes",
        "curses",
        "dbm",
        "distutils",
        "doctest.py",
        "email",
        "ensurepip",
        "html",
        "http",
        "idlelib",
        "imaplib.py",
        "lib2to3",
        "mailbox.py",
        "nntplib.py",
        "pdb.py",
        "pickletools.py",
        "pydoc.py",
        "pydoc_data",
        "smtpd.py",
        "smtplib.py",
        "sqlite3",
        "test",
        "tkinter",
        "turtle.py",
        "turtledemo",
        "unittest",
        "venv",
        "wsgiref",
        "xmlrpc",
    }
)
# Codecs of East Asian encodings (they need the _codecs_* extensions, which are left out).
PYTHON_ENCODINGS_LEFT_OUT = re.compile(
    r"^(big5|big5hkscs|cp932|cp949|cp950|euc_.*|gb18030|gb2312|gbk|hz|iso2022_.*|johab|shift_jis.*)\.py$"
)
# Extension modules kept from lib-dynload: those that need no library beyond libc and libm (most of
# what a Python module needs is built into Debian's interpreter: zlib, pyexpat, _socket, select,
# fcntl, pwd, grp, _posixsubprocess, binascii, _struct, the hash functions).
PYTHON_EXTENSIONS = (
    "_contextvars",
    "_decimal",
    "_json",
    "_multiprocessing",
    "_posixshmem",
    "_queue",
    "_typing",
    "mmap",
    "resource",
    "termios",
)


GUEST_INIT = r"""#!/bin/sh
# PID 1 of a virtlab guest: a diskless Linux with busybox and the QEMU guest agent.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run
probe=
net=plain
address=
gateway=
vfmac=
rescan=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        virtlab.name=*) hostname "${arg#virtlab.name=}" ;;
        virtlab.probe=1) probe=1 ;;
        virtlab.ip=*) address="${arg#virtlab.ip=}" ;;
        virtlab.gw=*) gateway="${arg#virtlab.gw=}" ;;
        virtlab.net=*) net="${arg#virtlab.net=}" ;;
        virtlab.vfmac=*) vfmac="${arg#virtlab.vfmac=}" ;;
        virtlab.rescan=1) rescan=1 ;;
    esac
done
@INSMOD@
# No udev here: make the /dev/virtio-ports/NAME links the agent looks for.
mkdir -p /dev/virtio-ports
tries=0
while [ "$tries" -lt 100 ]; do
    for port in /sys/class/virtio-ports/*; do
        [ -r "$port/name" ] || continue
        name=$(cat "$port/name")
        [ -n "$name" ] && ln -sf "../${port##*/}" "/dev/virtio-ports/$name"
    done
    [ -e /dev/virtio-ports/@CHANNEL@ ] && break
    tries=$((tries + 1))
    sleep 0.1
done
# Nor the /dev/disk/by-id/virtio-SERIAL links of the virtio disks that have a serial (the local disk).
for disk in /sys/block/vd*; do
    serial=$(cat "$disk/serial" 2>/dev/null)
    [ -n "$serial" ] || continue
    mkdir -p /dev/disk/by-id
    ln -sf "../../${disk##*/}" "/dev/disk/by-id/virtio-$serial"
done

# The guest's network log: wall clock, seconds since boot, what happened.
log() {
    read -r uptime _ < /proc/uptime
    echo "$(date +%H:%M:%S) $uptime $*" >> /run/virtlab/net.log
}

# The failover master (net_failover): the interface that has lower_* links to its standby and primary.
failover_master() {
    for nic in /sys/class/net/*; do
        for lower in "$nic"/lower_*; do
            [ -e "$lower" ] && { echo "${nic##*/}"; return 0; }
        done
    done
    return 1
}

is_virtio() {
    read -r alias 2>/dev/null < "$1/device/modalias" || return 1
    case "$alias" in virtio:*) return 0 ;; esac
    return 1
}

# Enslave NIC to bond0; "primary" as second argument makes it the bond's primary.
bond_enslave() {
    ip link set "$1" down
    if echo "+$1" > /sys/class/net/bond0/bonding/slaves; then
        [ "$2" = primary ] && echo "$1" > /sys/class/net/bond0/bonding/primary
        log "bond0: enslaved $1${2:+ as $2}"
    else
        log "bond0: cannot enslave $1"
    fi
}

# An active-backup bond: the NIC that is not virtio (the VF, here its stand-in) is the primary and
# enslaved first, so the bond takes its MAC; the virtio NIC is the backup.
bond_setup() {
    echo +bond0 > /sys/class/net/bonding_masters || { log "bond0: cannot create"; return 1; }
    echo active-backup > /sys/class/net/bond0/bonding/mode
    echo 100 > /sys/class/net/bond0/bonding/miimon
    for pass in primary backup; do
        for nic in /sys/class/net/eth*; do
            [ -e "$nic/device" ] || continue
            if is_virtio "$nic"; then kind=backup; else kind=primary; fi
            [ "$kind" = "$pass" ] && bond_enslave "${nic##*/}" "$kind"
        done
    done
    ip link set bond0 up
}

# The bond's hotplug hook: a NIC with the VF's MAC that appears (is plugged again) joins the bond,
# as its primary unless it is virtio.
bond_watch() {
    while :; do
        for nic in /sys/class/net/eth*; do
            [ -e "$nic/device" ] && [ ! -e "$nic/master" ] || continue
            read -r mac < "$nic/address" || continue
            [ "$mac" = "$vfmac" ] || continue
            if is_virtio "$nic"; then bond_enslave "${nic##*/}" backup; else bond_enslave "${nic##*/}" primary; fi
        done
        sleep 0.2
    done
}

ip link set lo up
mkdir -p /run/virtlab
echo "$net" > /run/virtlab/net
echo "$address" > /run/virtlab/address
echo "$gateway" > /run/virtlab/gateway
device=
case "$net" in
    failover)
        tries=0
        until device=$(failover_master) || [ "$tries" -ge 50 ]; do
            tries=$((tries + 1))
            sleep 0.1
        done
        [ -n "$device" ] || log "no failover master (virtio_net with a standby NIC) found"
        # A guest without ACPI PCI hotplug does not see the primary QEMU plugs once the standby is
        # negotiated: find it by rescanning the PCI bus (it will never release it).
        tries=0
        while [ -n "$rescan" ] && [ -n "$device" ] && [ "$tries" -lt 50 ]; do
            lowers=0
            for lower in /sys/class/net/"$device"/lower_*; do [ -e "$lower" ] && lowers=$((lowers + 1)); done
            [ "$lowers" -ge 2 ] && { log "$device: primary found by a PCI rescan"; break; }
            echo 1 > /sys/bus/pci/rescan
            tries=$((tries + 1))
            sleep 0.1
        done
        ;;
    bond)
        bond_setup && device=bond0
        [ -n "$vfmac" ] && bond_watch &
        ;;
esac
for nic in /sys/class/net/eth*; do
    [ -e "$nic" ] && [ ! -e "$nic/master" ] && ip link set "${nic##*/}" up
done
[ -n "$device" ] || [ "$net" != plain ] || [ ! -e /sys/class/net/eth0 ] || device=eth0
if [ -n "$device" ] && [ -n "$address" ]; then
    ip link set "$device" up
    ip addr add "$address" dev "$device" && log "$device: $address"
fi
echo "$device" > /run/virtlab/device
echo "@READY@"
if [ -n "$probe" ]; then
    reboot -f
fi
mkdir -p /run/qemu-ga
(
    while :; do
        qemu-ga -m virtio-serial -p /dev/virtio-ports/@CHANNEL@ -t /run/qemu-ga
        echo "virtlab guest: qemu-ga exited, restarting it"
        sleep 1
    done
) &
while :; do
    sleep 3600
done
"""

# qemu-ga runs /sbin/shutdown for guest-shutdown (virsh shutdown/reboot); busybox has no such applet.
GUEST_SHUTDOWN = r"""#!/bin/sh
# virtlab guest: what the QEMU guest agent runs for guest-shutdown ("shutdown -h -P|-H|-r +0 MESSAGE").
action=poweroff
for arg in "$@"; do
    case "$arg" in
        -r) action=reboot ;;
        -H) action=halt ;;
    esac
done
( sleep 0.2; "$action" -f ) >/dev/null 2>&1 &
exit 0
"""


# The Python variant's first program: it starts the guest's system log once /init has mounted /dev,
# then becomes /init.
PYTHON_RDINIT_SCRIPT = r"""#!/bin/sh
# rdinit of a virtlab Python guest: the system log once /init has mounted /dev, then /init itself.
(
    tries=0
    until [ -d /dev/virtio-ports ] || [ "$tries" -ge 600 ]; do
        sleep 0.1
        tries=$((tries + 1))
    done
    exec @PYTHON@ -I @SYSLOG@
) </dev/null >/dev/null 2>&1 &
exec /init
"""

# The Python variant's system log: /dev/log, every message appended to /var/log/messages and, except the
# guest agent's own (one per guest-exec and per status poll), written to the serial console. Each host
# keeps the console of the guest while it runs there in its own console log, so a program in the guest
# leaves its log lines in the log of the host it runs on (the hooks runner logs every hook it runs).
PYTHON_SYSLOG = "/usr/lib/virtlab/syslog-console"
# Written by the system log once it listens: a Python guest is ready when its agent answers and this exists.
PYTHON_READY = "/run/virtlab/python-ready"
PYTHON_SYSLOG_SCRIPT = r'''"""virtlab Python guest: the system log (/dev/log) to /var/log/messages and the serial console."""
import os
import re
import socket

SOCKET = "/dev/log"
READY = "@READY@"
QUIET_TAGS = (b"qemu-ga",)
# "<PRIORITY>Mmm dd hh:mm:ss TAG[PID]: MESSAGE" (RFC 3164), or without the time stamp.
TAG = re.compile(rb"^<\d+>(?:\w{3} [ \d]\d \d\d:\d\d:\d\d )?([^:\[\s]+)")

if os.path.lexists(SOCKET):
    os.unlink(SOCKET)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(SOCKET)
os.chmod(SOCKET, 0o666)
console = os.open("/dev/console", os.O_WRONLY | os.O_NOCTTY)
messages = os.open("/var/log/messages", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
os.makedirs(os.path.dirname(READY), exist_ok=True)
open(READY, "w").close()
while True:
    data = sock.recv(65536).rstrip(b"\0\n")
    line = b"syslog: " + data.replace(b"\n", b" ") + b"\n"
    os.write(messages, line)
    tag = TAG.match(data)
    if tag is None or tag.group(1) not in QUIET_TAGS:
        os.write(console, line)
'''

# Accounts of the Python variant: root, and nobody/nogroup for unprivileged programs (guest hooks).
PYTHON_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
PYTHON_GROUP = "root:x:0:\nnogroup:x:65534:\n"


def apt_download(package: str, directory: Path) -> Path:
    """Download one Debian package with apt-get into ``directory``; return the .deb path."""
    before = set(directory.glob("*.deb"))
    result = run(
        [tool("apt-get"), "-q", "-o", "APT::Sandbox::User=root", "download", package],
        env=os.environ,
        cwd=directory,
        check=False,
        timeout=600,
    )
    if result.returncode != 0:
        raise LabError(
            "apt-get download %s failed: %s\n(if apt does not know the package, run `apt-get update` first)"
            % (package, (result.stderr or result.stdout).strip())
        )
    new = sorted(set(directory.glob("*.deb")) - before)
    if not new:
        raise LabError("apt-get download %s produced no .deb file" % package)
    return new[0]


def deb_field(deb: Path, field: str) -> str:
    """A control field of a .deb file."""
    return run([tool("dpkg-deb"), "-f", str(deb), field]).stdout.strip()


def kernel_package(meta_deb: Path) -> str:
    """The versioned kernel package the meta-package depends on, as NAME=VERSION when pinned."""
    for alternative in deb_field(meta_deb, "Depends").split(","):
        first = alternative.split("|")[0].strip()
        match = re.match(r"^(linux-image-[^\s(]+)(?:\s*\(\s*=\s*([^)\s]+)\s*\))?", first)
        if match:
            return match.group(1) + ("=" + match.group(2) if match.group(2) else "")
    raise LabError("%s does not depend on a linux-image package" % meta_deb.name)


def read_modinfo(ko: Path) -> dict[str, str]:
    """The name= and depends= fields of a kernel module (.ko or .ko.xz)."""
    data = ko.read_bytes()
    if ko.suffix == ".xz":
        data = lzma.decompress(data)
    info: dict[str, str] = {}
    for chunk in data.split(b"\0"):
        for key in (b"name=", b"depends="):
            if chunk.startswith(key) and key.decode()[:-1] not in info:
                info[key.decode()[:-1]] = chunk[len(key) :].decode(errors="replace")
    return info


def module_load_order(modules_dir: Path) -> tuple[list[str], dict[str, Path]]:
    """The guest's modules with their dependencies, in an order insmod can load them.

    Modules built into the kernel (listed in modules.builtin) are skipped; a required module that is
    neither a file nor built in is an error, an optional one is left out.
    """

    def normal(name: str) -> str:
        return name.replace("-", "_")

    files: dict[str, Path] = {}
    for ko in list(modules_dir.rglob("*.ko")) + list(modules_dir.rglob("*.ko.xz")):
        files[normal(ko.name.split(".ko")[0])] = ko
    builtin = set()
    builtin_list = modules_dir / "modules.builtin"
    if builtin_list.exists():
        builtin = {normal(Path(line.strip()).name.split(".ko")[0]) for line in builtin_list.read_text().splitlines()}

    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str, required: bool) -> None:
        if name in order or name in builtin:
            return
        if name not in files:
            if required:
                raise LabError("the guest kernel has no module %s (neither a .ko file nor built in)" % name)
            warn("the guest kernel has no module %s; leaving it out" % name)
            return
        if name in visiting:
            raise LabError("kernel module dependency loop at %s" % name)
        visiting.add(name)
        for dependency in filter(None, read_modinfo(files[name]).get("depends", "").split(",")):
            visit(normal(dependency), True)
        visiting.discard(name)
        order.append(name)

    for name in GUEST_MODULES_REQUIRED:
        visit(name, True)
    for name in GUEST_MODULES_OPTIONAL:
        visit(name, False)
    return order, files


def insmod_lines(order: t.Sequence[str]) -> str:
    """The guest's /init lines that load its modules, in ``order``, with their parameters."""
    lines = []
    for name in order:
        command = " ".join(filter(None, ("insmod /lib/modules/%s.ko" % name, GUEST_MODULE_PARAMETERS.get(name))))
        lines.append('%s || echo "virtlab guest: insmod %s failed"' % (command, name))
    return "\n".join(lines)


def shared_libraries(binary: Path) -> list[str]:
    """The shared libraries (and the loader) ``binary`` needs, resolved on this machine with ldd."""
    result = run([tool("ldd"), str(binary)], check=False)
    missing = re.findall(r"^\s*(\S+) => not found", result.stdout, re.MULTILINE)
    if missing:
        raise LabError(
            "%s needs libraries this machine lacks: %s (`apt-get install %s` pulls them in)"
            % (binary.name, ", ".join(missing), AGENT_PACKAGE)
        )
    if result.returncode != 0:
        raise LabError("ldd %s failed: %s" % (binary, result.stderr.strip()))
    return sorted(set(re.findall(r"(/\S+) \(0x", result.stdout)))


def copy_into(root: Path, source: Path, target: str, mode: int | None = None) -> None:
    """Copy ``source`` (following links) to the absolute path ``target`` inside ``root``."""
    destination = root / target.lstrip("/")
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.is_symlink() or destination.exists():
        destination.unlink()
    shutil.copyfile(source, destination)
    os.chmod(destination, mode if mode is not None else stat.S_IMODE(os.stat(source).st_mode))


def copy_text(root: Path, target: str, text: str, mode: int) -> None:
    """Write ``text`` to the absolute path ``target`` inside ``root``."""
    destination = root / target.lstrip("/")
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(text)
    os.chmod(destination, mode)


def build_initramfs(root: Path, output: Path) -> None:
    """Pack ``root`` as a gzip-compressed newc cpio archive with busybox cpio."""
    names = []
    for directory, subdirs, filenames in os.walk(root):
        subdirs.sort()
        relative = os.path.relpath(directory, root)
        if relative != ".":
            names.append(relative)
        names.extend(os.path.join(relative, name) if relative != "." else name for name in sorted(filenames))
    proc = subprocess.run(
        [tool("busybox"), "cpio", "-o", "-H", "newc"],
        input="\n".join(names).encode() + b"\n",
        capture_output=True,
        cwd=root,
        check=False,
    )
    if proc.returncode != 0:
        raise LabError("busybox cpio failed: %s" % proc.stderr.decode(errors="replace").strip())
    with gzip.open(output, "wb", compresslevel=6) as handle:
        handle.write(proc.stdout)


def write_description(described: Path, initrd: Path, description: dict[str, t.Any]) -> None:
    """Complete an image's description with its initrd's checksum, size and build time, and write it."""
    description["initrd_sha256"] = sha256(initrd)
    description["initrd_bytes"] = initrd.stat().st_size
    description["built"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_atomic(described, json.dumps(description, indent=2) + "\n")


def image_paths() -> tuple[Path, Path, Path]:
    """Kernel, initrd and description file of the cached guest image."""
    return GUEST_DIR / "vmlinuz", GUEST_DIR / "initrd.img", GUEST_DIR / "image.json"


def cached_image() -> dict[str, t.Any] | None:
    """The description of the cached image, or None if it is not (completely) built."""
    kernel, initrd, described = image_paths()
    if not (kernel.exists() and initrd.exists() and described.exists()):
        return None
    try:
        description: dict[str, t.Any] = json.loads(described.read_text())
    except ValueError:
        return None
    if description.get("format") != IMAGE_FORMAT:
        return None
    return description


def build_guest_program(source: Path, output: Path) -> None:
    """Compile one of the guest's workloads (GUEST_PROGRAMS), statically linked (the guest has no libc)."""
    if not STATIC_LIBC.exists():
        raise LabError("linking the guest workload statically needs %s: `apt-get install libc6-dev`" % STATIC_LIBC)
    proc = run([tool("gcc"), "-O2", "-static", "-Wall", "-o", str(output), str(source)], check=False)
    if proc.returncode != 0:
        raise LabError("compiling %s failed:\n%s" % (source, (proc.stdout + proc.stderr).strip()))


def build_image(force: bool = False) -> dict[str, t.Any]:
    """Build the guest kernel and initramfs into the cache (unless cached); return their description."""
    existing = cached_image()
    if existing is not None and not force:
        return existing
    require(IMAGE_TOOLS)
    busybox = Path(tool("busybox"))
    linkage = run([tool("ldd"), str(busybox)], check=False)
    if "not a dynamic executable" not in linkage.stdout + linkage.stderr:
        raise LabError("%s is not statically linked: install it with `apt-get install busybox-static`" % busybox)
    started = time.monotonic()
    say("building the guest image in %s" % GUEST_DIR)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE_DIR))
    try:
        debs = work / "debs"
        debs.mkdir()
        meta = apt_download(KERNEL_META_PACKAGE, debs)
        kernel_deb = apt_download(kernel_package(meta), debs)
        agent_deb = apt_download(AGENT_PACKAGE, debs)
        extracted = work / "extracted"
        for deb in (kernel_deb, agent_deb):
            run([tool("dpkg"), "-x", str(deb), str(extracted)])

        vmlinuz = sorted((extracted / "boot").glob("vmlinuz-*"))
        module_trees = sorted((extracted / "lib" / "modules").glob("*")) + sorted(
            (extracted / "usr" / "lib" / "modules").glob("*")
        )
        if not vmlinuz or not module_trees:
            raise LabError("%s holds no kernel or no modules" % kernel_deb.name)
        agent_binary = next(
            (p for p in (extracted / "usr/sbin/qemu-ga", extracted / "usr/bin/qemu-ga") if p.exists()), None
        )
        if agent_binary is None:
            raise LabError("%s holds no qemu-ga binary" % agent_deb.name)

        root = work / "root"
        for directory in GUEST_TREE:
            (root / directory).mkdir(parents=True, exist_ok=True)
        os.symlink("../run", root / "var" / "run")
        copy_into(root, busybox, "/bin/busybox", 0o755)
        for applet in run([str(busybox), "--list-full"]).stdout.split():
            link = root / applet
            if applet == "bin/busybox" or link.exists() or link.is_symlink():
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink("/bin/busybox", link)
        copy_into(root, agent_binary, "/usr/sbin/qemu-ga", 0o755)
        for source, target in GUEST_PROGRAMS:
            program = work / source.stem
            build_guest_program(source, program)
            copy_into(root, program, target, 0o755)
        libraries = shared_libraries(agent_binary)
        for library in libraries:
            copy_into(root, Path(library), library, 0o755)
        order, files = module_load_order(module_trees[0])
        for name in order:
            ko = files[name]
            data = ko.read_bytes()
            if ko.suffix == ".xz":
                data = lzma.decompress(data)
            (root / "lib" / "modules" / (name + ".ko")).write_bytes(data)
        init = GUEST_INIT.replace("@INSMOD@", insmod_lines(order)).replace("@CHANNEL@", AGENT_CHANNEL)
        (root / "init").write_text(init.replace("@READY@", GUEST_READY_MARKER))
        os.chmod(root / "init", 0o755)
        shutdown = root / "sbin" / "shutdown"
        if shutdown.is_symlink():
            shutdown.unlink()
        shutdown.write_text(GUEST_SHUTDOWN)
        os.chmod(shutdown, 0o755)
        (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (root / "etc" / "group").write_text("root:x:0:\n")
        (root / "etc" / "hostname").write_text("virtlab-guest\n")
        os.mknod(root / "dev" / "console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))
        os.mknod(root / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))

        GUEST_DIR.mkdir(parents=True, exist_ok=True)
        kernel_path, initrd_path, described = image_paths()
        (GUEST_DIR / "accel.json").unlink(missing_ok=True)
        new_initrd = work / "initrd.img"
        build_initramfs(root, new_initrd)
        shutil.copyfile(vmlinuz[0], work / "vmlinuz")
        os.replace(work / "vmlinuz", kernel_path)
        os.replace(new_initrd, initrd_path)
        description: dict[str, t.Any] = {
            "format": IMAGE_FORMAT,
            "kernel": str(kernel_path),
            "initrd": str(initrd_path),
            "kernel_package": "%s=%s" % (deb_field(kernel_deb, "Package"), deb_field(kernel_deb, "Version")),
            "kernel_release": module_trees[0].name,
            "agent_package": "%s=%s" % (AGENT_PACKAGE, deb_field(agent_deb, "Version")),
            "busybox": str(busybox),
            "modules": order,
            "libraries": libraries,
            "kernel_sha256": sha256(kernel_path),
        }
        write_description(described, initrd_path, description)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(
        "guest image ready in %.1f s: %s, initrd %.1f MB (modules: %s)"
        % (
            time.monotonic() - started,
            description["kernel_package"],
            description["initrd_bytes"] / 1e6,
            " ".join(order),
        )
    )
    return description


def python_image_paths() -> tuple[Path, Path]:
    """Initrd and description file of the cached Python variant (the kernel is the normal image's)."""
    return GUEST_DIR / "initrd-python.img", GUEST_DIR / "python.json"


def cached_python_image(base: dict[str, t.Any]) -> dict[str, t.Any] | None:
    """The description of the cached Python variant, or None if it is missing or built on another base."""
    initrd, described = python_image_paths()
    if not (initrd.exists() and described.exists()):
        return None
    try:
        description: dict[str, t.Any] = json.loads(described.read_text())
    except ValueError:
        return None
    if description.get("format") != PYTHON_FORMAT or description.get("base_initrd_sha256") != base["initrd_sha256"]:
        return None
    return description


def python_packages(debs: Path) -> tuple[str, list[Path]]:
    """Download Debian's python3 (the interpreter and its standard library); its X.Y and the .deb files."""
    meta = apt_download(PYTHON_META_PACKAGE, debs)
    relation = deb_field(meta, "Pre-Depends") + "," + deb_field(meta, "Depends")
    match = re.search(r"\bpython(3\.[0-9]+)-minimal\b", relation)
    if not match:
        raise LabError("%s names no python3.X-minimal package (%s)" % (meta.name, relation))
    version = match.group(1)
    names = ("python%s-minimal" % version, "libpython%s-minimal" % version, "libpython%s-stdlib" % version)
    return version, [apt_download(name, debs) for name in names]


def copy_stdlib(source: Path, target: Path) -> int:
    """Copy the standard library without the parts the guest leaves out; the number of files copied."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        left_out = {name for name in names if name == "__pycache__"}
        if Path(directory) == source:
            left_out |= {name for name in names if name in PYTHON_STDLIB_LEFT_OUT or name.startswith("config-")}
            left_out |= {name for name in names if name in ("lib-dynload", "site-packages", "dist-packages")}
        elif Path(directory) == source / "encodings":
            left_out |= {name for name in names if PYTHON_ENCODINGS_LEFT_OUT.match(name)}
        return left_out

    shutil.copytree(source, target, ignore=ignore, symlinks=True)
    dynload = target / "lib-dynload"
    dynload.mkdir()
    for name in PYTHON_EXTENSIONS:
        found = sorted((source / "lib-dynload").glob(name + ".cpython-*.so"))
        if not found:
            raise LabError("the Python package has no extension module %s in %s" % (name, source / "lib-dynload"))
        shutil.copy2(found[0], dynload / found[0].name)
    return sum(1 for path in target.rglob("*") if path.is_file())


def compile_stdlib(root: Path, version: str) -> None:
    """Compile the guest's standard library with its own interpreter, then drop the sources.

    Compiling in the guest would cost seconds at every first import under TCG (and be lost at every
    boot: the guest has no disk). The .pyc files replace the .py files (sourceless, which Python
    loads without checking any source); tracebacks show file and line, not the line's text.
    """
    stdlib = root / "usr" / "lib" / ("python" + version)
    python = root / "usr" / "bin" / ("python" + version)
    env = dict(CLEAN_ENV, PYTHONHOME=str(root / "usr"), PYTHONDONTWRITEBYTECODE="1")
    run(
        [
            str(python),
            "-m",
            "compileall",
            "-q",
            "-b",
            "-j",
            "0",
            "--invalidation-mode",
            "unchecked-hash",
            "-s",
            str(root),
            "-p",
            "/",
            str(stdlib),
        ],
        env=env,
        timeout=600,
        what="compiling the guest's Python standard library",
    )
    for source in stdlib.rglob("*.py"):
        compiled = source.with_suffix(".pyc")
        if not compiled.exists():
            raise LabError("compiling %s left no %s" % (source, compiled.name))
        source.unlink()


def build_python_image(base: dict[str, t.Any], force: bool = False) -> dict[str, t.Any]:
    """Build the Python variant over the normal image ``base`` (unless cached); return its description."""
    existing = cached_python_image(base)
    if existing is not None and not force:
        return existing
    require(IMAGE_TOOLS)
    started = time.monotonic()
    say("building the Python guest image in %s" % GUEST_DIR)
    work = Path(tempfile.mkdtemp(prefix="build-python-", dir=CACHE_DIR))
    try:
        debs = work / "debs"
        debs.mkdir()
        version, packages = python_packages(debs)
        extracted = work / "extracted"
        for deb in packages:
            run([tool("dpkg"), "-x", str(deb), str(extracted)])
        interpreter = extracted / "usr" / "bin" / ("python" + version)
        stdlib = extracted / "usr" / "lib" / ("python" + version)
        if not interpreter.exists() or not (stdlib / "os.py").exists():
            raise LabError("the python%s packages hold no interpreter or no standard library" % version)

        root = work / "root"
        for directory in ("usr/bin", "usr/lib", "usr/local/bin", "usr/local/sbin", "var/log", "etc", "sbin"):
            (root / directory).mkdir(parents=True, exist_ok=True)
        copy_into(root, interpreter, "/usr/bin/python" + version, 0o755)
        os.symlink("python" + version, root / "usr" / "bin" / "python3")
        files = copy_stdlib(stdlib, root / "usr" / "lib" / ("python" + version))
        # Libraries the interpreter and its extension modules need that the normal image does not have.
        needed: set[str] = set(shared_libraries(interpreter))
        for extension in (root / "usr" / "lib" / ("python" + version) / "lib-dynload").glob("*.so"):
            needed.update(shared_libraries(extension))
        libraries = sorted(needed - set(base["libraries"]))
        for library in libraries:
            copy_into(root, Path(library), library, 0o755)
        compile_stdlib(root, version)
        (root / "etc" / "passwd").write_text(PYTHON_PASSWD)
        (root / "etc" / "group").write_text(PYTHON_GROUP)
        rdinit = root / PYTHON_RDINIT.lstrip("/")
        python = "/usr/bin/python" + version
        rdinit.write_text(PYTHON_RDINIT_SCRIPT.replace("@PYTHON@", python).replace("@SYSLOG@", PYTHON_SYSLOG))
        os.chmod(rdinit, 0o755)
        copy_text(root, PYTHON_SYSLOG, PYTHON_SYSLOG_SCRIPT.replace("@READY@", PYTHON_READY), 0o644)

        overlay = work / "python.cpio.gz"
        build_initramfs(root, overlay)
        initrd_path, described = python_image_paths()
        new_initrd = work / "initrd-python.img"
        with new_initrd.open("wb") as output:
            for part in (Path(base["initrd"]), overlay):
                with part.open("rb") as handle:
                    shutil.copyfileobj(handle, output)
        os.replace(new_initrd, initrd_path)
        description: dict[str, t.Any] = {
            "format": PYTHON_FORMAT,
            "initrd": str(initrd_path),
            "base_initrd": base["initrd"],
            "base_initrd_sha256": base["initrd_sha256"],
            "python_packages": ["%s=%s" % (deb_field(deb, "Package"), deb_field(deb, "Version")) for deb in packages],
            "python": "/usr/bin/python" + version,
            "rdinit": PYTHON_RDINIT,
            "syslog": PYTHON_SYSLOG,
            "stdlib_files": files,
            "extensions": list(PYTHON_EXTENSIONS),
            "libraries": libraries,
            "overlay_bytes": overlay.stat().st_size,
        }
        write_description(described, initrd_path, description)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(
        "Python guest image ready in %.1f s: initrd %.1f MB (the normal %.1f MB and Python %.1f MB; %s)"
        % (
            time.monotonic() - started,
            description["initrd_bytes"] / 1e6,
            base["initrd_bytes"] / 1e6,
            description["overlay_bytes"] / 1e6,
            ", ".join(description["python_packages"]),
        )
    )
    return description


def probe_kvm(image: dict[str, t.Any], timeout: float = 30.0, silence: float = 10.0) -> tuple[bool, str]:
    """Boot the guest once under KVM (plain QEMU, no network); True if it reaches its /init.

    Where KVM cannot run the guest, QEMU either reports an internal error or the guest prints nothing
    at all; ``silence`` seconds without a line on the serial console count as failure.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not available"
    options = "-accel kvm -machine pc -m 192 -smp 1 -nodefaults -no-user-config -display none -no-reboot"
    argv = [tool("qemu-system-x86_64"), *options.split(), "-serial", "stdio"]
    argv += [
        "-kernel",
        image["kernel"],
        "-initrd",
        image["initrd"],
        "-append",
        "console=ttyS0 panic=-1 virtlab.probe=1",
    ]
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=CLEAN_ENV
    )
    assert proc.stdout is not None and proc.stderr is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ, "serial")
    selector.register(proc.stderr, selectors.EVENT_READ, "qemu")
    output = {"serial": b"", "qemu": b""}
    verdict: tuple[bool, str] | None = None
    started = time.monotonic()
    try:
        while verdict is None:
            elapsed = time.monotonic() - started
            if elapsed > timeout:
                verdict = (False, "the guest did not finish booting under KVM within %.0f s" % timeout)
            elif elapsed > silence and not output["serial"]:
                verdict = (False, "the guest printed nothing under KVM within %.0f s" % silence)
            for key, _events in selector.select(timeout=0.5):
                chunk = os.read(key.fileobj.fileno(), 65536)  # type: ignore[union-attr]
                output[key.data] += chunk
                if GUEST_READY_MARKER.encode() in output["serial"]:
                    verdict = (True, "the guest booted under KVM")
                elif b"KVM internal error" in output["qemu"]:
                    verdict = (False, "KVM cannot run the guest kernel (KVM internal error)")
                elif not chunk:
                    selector.unregister(key.fileobj)
                    if proc.poll() is not None or not selector.get_map():
                        verdict = verdict or (
                            False,
                            "QEMU with KVM exited: %s" % output["qemu"].decode(errors="replace").strip()[-300:],
                        )
                        break
    finally:
        selector.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return verdict


def choose_accel(image: dict[str, t.Any]) -> str:
    """Domain type for the guests: 'kvm' only if the guest boots under KVM, else 'qemu' (TCG).

    The probe runs once per image and its verdict is cached; VIRTLAB_ACCEL=qemu|kvm overrides it.
    """
    forced = os.environ.get("VIRTLAB_ACCEL")
    if forced:
        if forced not in ("qemu", "kvm"):
            raise LabError("VIRTLAB_ACCEL must be qemu or kvm, not %r" % forced)
        return forced
    verdict_file = GUEST_DIR / "accel.json"
    key = {"initrd_sha256": image["initrd_sha256"], "host_kernel": os.uname().release}
    with contextlib.suppress(OSError, ValueError):
        cached = json.loads(verdict_file.read_text())
        if cached.get("key") == key and cached.get("accel") in ("qemu", "kvm"):
            return str(cached["accel"])
    say("probing whether the guest boots under KVM (once per image)")
    usable, reason = probe_kvm(image)
    accel = "kvm" if usable else "qemu"
    say("guests run under %s: %s" % ("KVM" if usable else "TCG", reason))
    write_atomic(verdict_file, json.dumps({"key": key, "accel": accel, "reason": reason}, indent=2) + "\n")
    return accel


# ---------------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------------


def cmd_image(args: argparse.Namespace) -> int:
    """virtlab image: build the guest image (and with --python its Python variant) into the cache."""
    require_root()
    with lab_lock():
        cached = None if args.force else cached_image()
        if cached is not None:
            say(
                "guest image is cached (use --force to rebuild): %s, %s (%s)"
                % (cached["kernel"], cached["initrd"], cached["kernel_package"])
            )
        else:
            cached = build_image(force=True)
        if args.python:
            variant = None if args.force else cached_python_image(cached)
            if variant is not None:
                say(
                    "Python guest image is cached (use --force to rebuild): %s (%s)"
                    % (variant["initrd"], ", ".join(variant["python_packages"]))
                )
            else:
                build_python_image(cached, force=True)
    return 0
