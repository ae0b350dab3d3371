# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""The maintenance mark of a host, and how the host itself enforces it.

The mark is a small JSON file in the collection's state directory on the host (its state, since
when, why, by whom, and which VMs were shut down for it), written atomically by ``statefiles``.
While it exists, the collection's libvirt hook (role ``maintenance_hook``) makes libvirtd refuse
incoming migrations and VM starts; :func:`hook_status` tells whether the running libvirtd has that
hook loaded. A per-host lock file keeps two maintenance runs apart. No libvirt import here.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import re
import time
import typing as t

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import statefiles
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import MigrationError

MARK_FILE = "maintenance.json"
LOCK_FILE = "maintenance.lock"
# The mark's states: the host is being evacuated (it already refuses incoming VMs), or it is empty.
PREPARING = "preparing"
MAINTENANCE = "maintenance"
# Being brought back: it starts the VMs shut down for the maintenance, and still takes no incoming VM.
ACTIVATING = "activating"
# The collection's libvirt hook (role maintenance_hook), which makes the host refuse incoming
# migrations and VM starts while a mark exists, and the pid files libvirtd may use.
HOOK_PATH = "/etc/libvirt/hooks/qemu.d/virtops-maintenance"
# libvirtd, or the QEMU driver's own daemon where libvirt runs as split daemons (virtqemud).
LIBVIRTD_PID_FILES = (
    "/run/libvirt/libvirtd.pid",
    "/run/libvirtd.pid",
    "/var/run/libvirtd.pid",
    "/run/libvirt/virtqemud.pid",
    "/run/virtqemud.pid",
)


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def read_mark(state_dir: str) -> t.Optional[t.Dict[str, t.Any]]:
    """The host's maintenance mark, or None when the host is active.

    A mark without a ``state`` (older releases) counts as ``maintenance``; a mark that cannot be read
    is an error, never "active": the host may be about to be rebooted.
    """
    # A state directory others could write is refused even when it holds no mark: a mark planted
    # there, or one the next write would put there, could not be trusted.
    statefiles.check_directory(state_dir)
    if not statefiles.exists(state_dir, MARK_FILE):
        return None
    mark = statefiles.read_json(state_dir, MARK_FILE)
    if not isinstance(mark, dict):
        raise MigrationError("The maintenance mark %s is not a JSON object; fix or remove it." % os.path.join(state_dir, MARK_FILE))
    mark.setdefault("state", MAINTENANCE)
    return mark


def status(state_dir: str) -> t.Dict[str, t.Any]:
    """The host's maintenance state as host_info reports it, with whether its libvirt hook enforces it."""
    mark = read_mark(state_dir)
    enforcement = hook_status(state_dir=state_dir)
    enforcement["trouble"] = None if enforcement["loaded"] else hook_trouble(enforcement)
    if mark is None:
        return {"active": False, "state": None, "since": None, "reason": None, "by": None, "shutdown_vms": [], "enforcement": enforcement}
    return {
        "active": True,
        "state": mark.get("state"),
        "since": mark.get("since"),
        "reason": mark.get("reason"),
        "by": mark.get("by"),
        "shutdown_vms": list(mark.get("shutdown_vms") or []),
        "enforcement": enforcement,
    }


def read_mark_quietly(state_dir: str) -> t.Optional[t.Dict[str, t.Any]]:
    """The mark for a failure report: what is there, or a note that it cannot be read."""
    try:
        return read_mark(state_dir)
    except MigrationError as exc:
        return {"state": "unreadable", "error": exc.msg}


def write_mark(state_dir: str, mark: t.Mapping[str, t.Any]) -> None:
    """Write the mark atomically and durably (a reader sees the old file or the new one, never a part)."""
    statefiles.write_json(state_dir, MARK_FILE, dict(mark))


def clear_mark(state_dir: str) -> None:
    statefiles.remove(state_dir, MARK_FILE)


def _process_start(pid: int) -> t.Optional[float]:
    """When a process started, in seconds since the epoch (None when it cannot be read).

    The start is counted in clock ticks since boot (/proc/PID/stat), and the boot is placed on the
    wall clock from the uptime (/proc/uptime, hundredths of a second). The boot time /proc/stat gives
    (``btime``) is in whole seconds, cut down: a libvirtd restarted less than a second after the hook
    was written would seem to have started before it.
    """
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as handle:
            uptime = float(handle.read().split()[0])
        boot = time.time() - uptime
        return boot + int(fields[19]) / float(os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def hook_trouble(enforcement: t.Mapping[str, t.Any]) -> str:
    """Why the hook does not enforce maintenance, as words for a message."""
    if enforcement.get("problem"):
        return "not usable: %s" % enforcement["problem"]
    if enforcement.get("installed"):
        return "not loaded by the running libvirtd (installed after it started)"
    return "not installed"


def hook_status(
    hook_path: str = HOOK_PATH, pid_files: t.Sequence[str] = LIBVIRTD_PID_FILES, state_dir: t.Optional[str] = None
) -> t.Dict[str, t.Any]:
    """Whether this host enforces maintenance: the hook is installed, and libvirtd started after it was.

    libvirtd reads its hook scripts only when it starts, so a hook installed later is not used until
    the next restart (``loaded`` false). ``loaded`` is null when libvirtd's start time is unknown.
    With ``state_dir``, a hook that watches the mark of another state directory is not installed.
    """
    try:
        info = os.stat(hook_path)
        with open(hook_path, encoding="utf-8", errors="replace") as handle:
            script = handle.read(65536)
    except OSError:
        return {"path": hook_path, "installed": False, "loaded": False}
    installed = bool(info.st_mode & 0o111)
    if state_dir is not None:
        watched = re.search(r"^mark=(.*)$", script, re.MULTILINE)
        path = watched.group(1).strip().strip("'\"") if watched else None
        if path is None or os.path.normpath(path) != os.path.normpath(os.path.join(state_dir, MARK_FILE)):
            problem = "it watches %s, not %s" % (path or "no mark", os.path.join(state_dir, MARK_FILE))
            return {"path": hook_path, "installed": False, "loaded": False, "problem": problem}
    started = None
    for pid_file in pid_files:
        try:
            with open(pid_file, encoding="ascii") as handle:
                started = _process_start(int(handle.read().strip()))
        except (OSError, ValueError):
            continue
        if started is not None:
            break
    loaded = None if started is None else installed and info.st_mtime <= started
    return {"path": hook_path, "installed": installed, "loaded": loaded}


def locked(state_dir: str, func: t.Callable[[], t.Any]) -> t.Any:
    """Run ``func`` holding the host's maintenance lock; refuse at once when another run holds it."""
    statefiles.ensure_directory(state_dir)
    lock_path = os.path.join(state_dir, LOCK_FILE)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise MigrationError("Cannot open the maintenance lock %s: %s" % (lock_path, exc), path=lock_path) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise MigrationError(
                "Another host_maintenance run is working on this host (it holds %s); nothing was changed." % lock_path, path=lock_path
            ) from exc
        return func()
    finally:
        os.close(fd)
