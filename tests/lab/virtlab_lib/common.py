# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's shared ground: where its files live, its recorded state, and process and shell helpers.

Owns the paths (state directory, cache, lock file, the lab CA, the `virtlab` command itself), the state
file (Lab, Host, Vm), the lab lock, LabError (which every command turns into a message), running
programs in a clean environment, processes and network namespaces by PID and inode, and the import of
libvirt-python and PyYAML: `libvirt`, `libvirt_qemu` and `yaml` here are set by import_dependencies(),
which re-runs virtlab under an interpreter that has them when this one does not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path

LAB_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = LAB_DIR.parent.parent
MODULE_UTILS = REPO_ROOT / "plugins" / "module_utils"
# The command itself, as other programs run it (the inventory names it for restarting libvirtd).
VIRTLAB = LAB_DIR / "virtlab"

STATE_DIR = Path(os.environ.get("VIRTLAB_STATE", "/var/tmp/virtops-lab"))
CACHE_DIR = Path(os.environ.get("VIRTLAB_CACHE", str(LAB_DIR / ".cache")))
STATE_FILE = STATE_DIR / "state.json"
STATE_MARKER = STATE_DIR / ".virtlab-state-dir"
# The lab's certificate authority, and the client certificate every host's libvirtd presents to the
# others (the `pkipath` of the TLS URIs); each host has its own server certificate under HOST/pki.
PKI_DIR = STATE_DIR / "pki"
# The lab's shared storage: one directory that every host mounts at this same path (a bind mount in
# its mount namespace), so a disk or file path means the same on the controller and on every host.
SHARED_DIR = STATE_DIR / "shared"
SHARED_DISKS = SHARED_DIR / "disks"
LOCK_FILE = STATE_DIR.parent / (STATE_DIR.name + ".lock")
# A test session holding LOCK_FILE for its whole run names its PID here; the virtlab commands it runs
# serialise among themselves on SESSION_LOCK_FILE (see lab_lock()).
SESSION_PID_ENV = "VIRTLAB_SESSION_PID"
SESSION_LOCK_FILE = STATE_DIR.parent / (STATE_DIR.name + ".session-commands.lock")
FAILED_LOGS = STATE_DIR.parent / (STATE_DIR.name + ".failed")
GUEST_DIR = CACHE_DIR / "guest"
# libvirtd probes QEMU's capabilities once per fresh cache (seconds under load); hosts share the result.
CAPABILITIES_CACHE = CACHE_DIR / "libvirt-qemu-capabilities"
HOST_CAPABILITIES = Path("cache-libvirt", "qemu", "capabilities")

# The environment given to every daemon and command the lab starts (nothing from the caller leaks in).
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}

# Inside each host, /run/libvirt is a tmpfs of its own (libvirtd's sockets and PID files).
HOST_TMPFS = "/run/libvirt"

# Binaries the lab runs, and the Debian package that provides each.
TOOL_PACKAGES = {
    "ip": "iproute2",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "mount": "mount",
    "hostname": "hostname",
    "libvirtd": "libvirt-daemon",
    "virtlockd": "libvirt-daemon",
    "virsh": "libvirt-clients",
    "qemu-system-x86_64": "qemu-system-x86",
    # libvirt's dir pools create qcow2 volumes (the VMs' local disks) with it.
    "qemu-img": "qemu-utils",
    "sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
    "ssh": "openssh-client",
    "busybox": "busybox-static",
    "apt-get": "apt",
    "dpkg": "dpkg",
    "dpkg-deb": "dpkg",
    "ldd": "libc-bin",
    "gcc": "gcc",
    "openssl": "openssl",
    "saslpasswd2": "sasl2-bin",
    "useradd": "passwd",
    "groupadd": "passwd",
}


class LabError(Exception):
    """A lab operation failed; the message says what and why (no traceback is shown)."""


class Interrupted(LabError):
    """The user or a signal stopped virtlab."""


# ---------------------------------------------------------------------------------------------------
# Python dependencies
# ---------------------------------------------------------------------------------------------------


def _interpreter_candidates() -> list[str]:
    """Interpreters that may have libvirt-python and PyYAML: the repository venv, then Debian's."""
    found = []
    for candidate in (REPO_ROOT / ".venv" / "bin" / "python", Path("/usr/bin/python3")):
        if candidate.exists() and os.path.realpath(candidate) != os.path.realpath(sys.executable):
            found.append(str(candidate))
    return found


def import_dependencies() -> None:
    """Import libvirt and yaml; if this interpreter lacks them, re-run under one that has them."""
    global libvirt, libvirt_qemu, yaml
    try:
        import libvirt
        # Module globals that hosts.py uses (common.libvirt_qemu, common.yaml).
        import libvirt_qemu  # pylint: disable=unused-import
        import yaml  # pylint: disable=unused-import
    except ImportError as exc:
        missing = exc.name or str(exc)
        if not os.environ.get("VIRTLAB_REEXEC"):
            for candidate in _interpreter_candidates():
                probe = subprocess.run(
                    [candidate, "-c", "import libvirt, libvirt_qemu, yaml"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    check=False,
                )
                if probe.returncode == 0:
                    os.environ["VIRTLAB_REEXEC"] = "1"
                    os.execv(candidate, [candidate, str(VIRTLAB), *sys.argv[1:]])
        sys.stderr.write(
            "virtlab: error: the Python module %r is missing in %s.\n"
            "virtlab needs libvirt-python and PyYAML: run it with the repository venv\n"
            "(%s tests/lab/virtlab ...) or install Debian's python3-libvirt and python3-yaml.\n"
            % (missing, sys.executable, REPO_ROOT / ".venv" / "bin" / "python")
        )
        sys.exit(1)
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


libvirt: t.Any = None
libvirt_qemu: t.Any = None
yaml: t.Any = None


# ---------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------


def say(message: str) -> None:
    """Print a progress line."""
    print("virtlab: " + message, flush=True)


def count(number: int, noun: str) -> str:
    """``number`` and ``noun``, plural unless the number is one ("1 host", "3 hosts")."""
    return "%d %s%s" % (number, noun, "" if number == 1 else "s")


def warn(message: str) -> None:
    """Print a warning line on stderr."""
    print("virtlab: warning: " + message, file=sys.stderr, flush=True)


def run(
    argv: t.Sequence[str],
    *,
    check: bool = True,
    env: t.Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120.0,
    what: str | None = None,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command and capture its output; with ``check`` a failure raises LabError with its stderr.

    ``input_text`` is written to the command's standard input (which is otherwise /dev/null).
    """
    try:
        result = subprocess.run(
            list(argv),
            input=input_text if input_text is not None else "",
            capture_output=True,
            text=True,
            env=dict(env if env is not None else CLEAN_ENV),
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise LabError("cannot run %s: %s" % (argv[0], exc.strerror)) from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError("%s timed out after %.0f s" % (what or " ".join(argv), timeout)) from exc
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise LabError(
            "%s failed (exit %d)%s" % (what or " ".join(argv), result.returncode, ": " + detail if detail else "")
        )
    return result


def tool(name: str) -> str:
    """Return the absolute path of a required binary, or raise naming the Debian package to install."""
    path = shutil.which(name, path=CLEAN_ENV["PATH"])
    if path is None:
        package = TOOL_PACKAGES.get(name, "?")
        raise LabError("required program %r is missing: install it with `apt-get install %s`" % (name, package))
    return path


def require(tools: t.Iterable[str]) -> None:
    """Check that every binary in ``tools`` exists; name all missing packages at once."""
    missing = [name for name in tools if shutil.which(name, path=CLEAN_ENV["PATH"]) is None]
    if missing:
        packages = sorted({TOOL_PACKAGES.get(name, "?") for name in missing})
        raise LabError(
            "required programs missing: %s; install them with `apt-get install %s`"
            % (", ".join(missing), " ".join(packages))
        )


def require_root() -> None:
    """Refuse to run without root: the lab creates namespaces, mounts and daemons."""
    if os.geteuid() != 0:
        raise LabError("virtlab must run as root (it creates network namespaces, mounts and daemons)")


def require_qemu_driver() -> None:
    """Check that libvirtd has its QEMU driver installed."""
    drivers = list(Path("/usr/lib").glob("*/libvirt/connection-driver/libvirt_driver_qemu.so"))
    drivers += list(Path("/usr/lib64").glob("libvirt/connection-driver/libvirt_driver_qemu.so"))
    if not drivers:
        raise LabError(
            "libvirtd's QEMU driver is missing: install it with `apt-get install libvirt-daemon-driver-qemu`"
        )


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a file through a temporary sibling and a rename, so readers never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tail(path: Path, lines: int = 8) -> str:
    """Last lines of a text file (empty if unreadable), for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def raise_on_sigterm() -> None:
    """Turn SIGTERM/SIGHUP into an exception, so an interrupted `up` still cleans up."""

    def handler(signum: int, _frame: t.Any) -> None:
        raise Interrupted("stopped by signal %s" % signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


@contextlib.contextmanager
def signals_held() -> t.Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP back while the lab is taken apart, so cleanup is never cut short."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def lab_lock() -> t.Iterator[None]:
    """Serialise the commands that change the lab (up, down, host and VM changes).

    A test session (the integration fixtures, the soak) holds the lab lock from before its `up` until
    after its `down`, and names itself in SESSION_PID_ENV: the commands it runs, directly or through
    Ansible, then serialise among themselves on SESSION_LOCK_FILE instead of waiting for their own
    session to end.
    """
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if session_holds_lab_lock():
                with open(SESSION_LOCK_FILE, "a+") as commands:
                    fcntl.flock(commands, fcntl.LOCK_EX)
                    yield
                return
            say("waiting for another virtlab command to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def session_holds_lab_lock() -> bool:
    """Whether the process named in SESSION_PID_ENV is an ancestor of this one and holds the lab lock."""
    holder = os.environ.get(SESSION_PID_ENV, "")
    if not holder.isdigit() or int(holder) not in ancestors():
        return False
    inode = os.stat(LOCK_FILE).st_ino
    with open("/proc/locks") as handle:
        for line in handle:
            # "3: FLOCK  ADVISORY  WRITE 4242 00:2b:1234 0 EOF" (a waiter's line has "->" after the number)
            fields = line.split()
            if fields[1:5] == ["FLOCK", "ADVISORY", "WRITE", holder] and fields[5].rsplit(":", 1)[-1] == str(inode):
                return True
    return False


def ancestors() -> set[int]:
    """The PIDs of this process's parent, its parent, and so on up to init."""
    found: set[int] = set()
    pid = os.getppid()
    while pid > 1 and pid not in found:
        found.add(pid)
        try:
            with open("/proc/%d/stat" % pid) as handle:
                pid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return found


# ---------------------------------------------------------------------------------------------------
# Processes and namespaces
# ---------------------------------------------------------------------------------------------------


def pid_alive(pid: int, comm: str | None = None) -> bool:
    """True if ``pid`` runs (zombies count as gone) and, when given, its command name starts with ``comm``."""
    if pid <= 0:
        return False
    try:
        with open("/proc/%d/stat" % pid) as handle:
            fields = handle.read()
        with open("/proc/%d/comm" % pid) as handle:
            name = handle.read().strip()
    except OSError:
        return False
    if fields[fields.rindex(")") + 2] in "ZX":
        return False
    return comm is None or name.startswith(comm[:15])


def netns_inode(netns: str) -> int | None:
    """Inode of a named network namespace, or None if it does not exist."""
    try:
        return os.stat("/run/netns/" + netns).st_ino
    except OSError:
        return None


def pid_netns_inode(pid: int) -> int | None:
    """Inode of the network namespace ``pid`` lives in, or None if it is gone."""
    try:
        return os.stat("/proc/%d/ns/net" % pid).st_ino
    except OSError:
        return None


def pids_in_netns(inode: int) -> list[int]:
    """Every process whose network namespace is ``inode`` (the lab host's processes)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and pid_netns_inode(int(entry)) == inode and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def wait_gone(pids: t.Iterable[int], timeout: float) -> list[int]:
    """Wait until the processes have exited; return those still running after ``timeout``."""
    remaining = [pid for pid in pids if pid_alive(pid)]
    deadline = time.monotonic() + timeout
    while remaining and time.monotonic() < deadline:
        time.sleep(0.05)
        remaining = [pid for pid in remaining if pid_alive(pid)]
    return remaining


def stop_pids(pids: t.Iterable[int], sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
    """Send ``sig`` to the processes, then SIGKILL whatever has not exited after ``timeout``."""
    targets = [pid for pid in pids if pid_alive(pid)]
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    for pid in wait_gone(targets, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_gone(targets, 2.0)


# ---------------------------------------------------------------------------------------------------
# Lab state
# ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Host:
    """One lab hypervisor host and the processes that make it."""

    name: str
    index: int
    address: str
    netns: str
    veth: str
    dir: str
    host_uuid: str
    migration_address: str = ""
    migration_veth: str = ""
    holder_pid: int = 0
    libvirtd_pid: int = 0
    sshd_pid: int = 0
    virtlockd_pid: int = 0
    # The host's "power": "on", or "off" after `fence HOST -o off` (nothing of it runs, links down).
    power: str = "on"
    # `crash HOST`: everything of the host was killed, its power stays on (a hung machine).
    crashed: bool = False

    @property
    def uri(self) -> str:
        """The URI other hosts and the controller use to reach this host's libvirtd."""
        return "qemu+tcp://%s/system" % self.address

    @property
    def tls_uri(self) -> str:
        """The same libvirtd over TLS (certificates of the lab's own CA)."""
        return "qemu+tls://%s/system?pkipath=%s" % (self.address, PKI_DIR)

    @property
    def local_uri(self) -> str:
        """virtlab's own way in: the host's libvirtd UNIX socket, seen through the holder's root.

        It works even while the host's link is down, so the lab can always inspect every host.
        """
        return "qemu+unix:///system?socket=/proc/%d/root%s/libvirt-sock" % (self.holder_pid, HOST_TMPFS)

    @property
    def down_reason(self) -> str:
        """Why nothing of the host runs ("crashed", "powered off"), or "" when it runs."""
        if self.power == "off":
            return "powered off"
        return "crashed" if self.crashed else ""

    @property
    def path(self) -> Path:
        """The host's directory under the lab state directory."""
        return Path(self.dir)

    def in_host(self, argv: t.Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside this host's mount, UTS and network namespaces."""
        return [tool("nsenter"), "-t", str(self.holder_pid), "-m", "-u", "-n", "--", *argv]

    def host_root(self) -> Path:
        """The host's file system view (its private mounts), reachable from the root namespace."""
        return Path("/proc/%d/root" % self.holder_pid)


@dataclasses.dataclass
class Vm:
    """A lab VM as `up` or `add-vm` created it."""

    name: str
    memory_mib: int
    priority: str
    host_index: int
    # A tiny VM boots only its firmware: no kernel, no disk, no guest agent (see hosts.domain_xml).
    tiny: bool = False
    # The guest's address on the guest network (ADDRESS/PREFIX; empty for a tiny VM, and for VMs
    # recorded before guests had addresses).
    guest_ip: str = ""
    # A stand-in for an SR-IOV failover VM ("teaming", "teaming-stuck" or "bond"; empty: a plain
    # guest). Its "VF" is an emulated vmxnet3, not a VF (see hosts.failover_devices).
    failover: str = ""
    # The guest boots the Python variant of the initrd (image.build_python_image; `add-vm --python`).
    python: bool = False
    # A raw sparse disk file on the shared storage (SHARED_DISKS/NAME.img; `add-vm --shared-disk`), and
    # its size; empty and 0 for a VM without disk.
    shared_disk: str = ""
    shared_disk_mib: int = 0
    # A thin qcow2 volume NAME.qcow2 in the storage pool `virtops-local` of the host it was created on
    # (`add-vm --disk`; the pool has the same path on every host, each host its own content): its path,
    # its capacity in bytes and its target device; empty and 0 for a VM without one.
    local_disk: str = ""
    local_disk_bytes: int = 0
    local_disk_target: str = ""


@dataclasses.dataclass
class Lab:
    """Everything the lab created, saved in the state file as it is created."""

    cluster: str
    phase: str
    accel: str
    key: str
    kernel: str
    initrd: str
    inventory: str
    created: float
    hosts: list[Host]
    vms: list[Vm]
    # The Python variant of the initrd (built when the first Python guest is added; empty before).
    python_initrd: str = ""

    def save(self) -> None:
        """Write the state file."""
        write_atomic(STATE_FILE, json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls) -> Lab | None:
        """Read the state file; None when no lab is up."""
        try:
            data = json.loads(STATE_FILE.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LabError("cannot read the lab state %s: %s" % (STATE_FILE, exc)) from exc
        data["hosts"] = [Host(**item) for item in data.get("hosts", [])]
        data["vms"] = [Vm(**item) for item in data.get("vms", [])]
        return cls(**data)

    def host(self, ref: str) -> Host:
        """Find a host by name (lab-h2), short name (h2) or index (2)."""
        for host in self.hosts:
            if ref in (host.name, str(host.index), "h%d" % host.index):
                return host
        raise LabError("no lab host %r (hosts: %s)" % (ref, ", ".join(h.name for h in self.hosts)))

    def vm(self, name: str) -> Vm:
        """Find a lab VM by name."""
        for vm in self.vms:
            if vm.name == name:
                return vm
        raise LabError("%r is not a lab VM (lab VMs: %s)" % (name, ", ".join(v.name for v in self.vms) or "none"))


def require_lab() -> Lab:
    """The lab that is up, or an error saying that none is."""
    lab = Lab.load()
    if lab is None:
        raise LabError("no lab is up (state directory %s); start one with `virtlab up`" % STATE_DIR)
    return lab


def prepare_state_dir() -> None:
    """Create the state directory, refusing to take over a non-empty directory that is not the lab's."""
    if STATE_DIR.exists() and any(STATE_DIR.iterdir()) and not STATE_MARKER.exists():
        raise LabError("%s exists and is not a virtlab state directory; set VIRTLAB_STATE elsewhere" % STATE_DIR)
    STATE_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    STATE_MARKER.write_text("This directory holds the state of a virtlab lab; `virtlab down` removes it.\n")


def remove_state_dir() -> None:
    """Remove the lab state directory (only if it is marked as the lab's)."""
    if STATE_MARKER.exists():
        shutil.rmtree(STATE_DIR, ignore_errors=True)
