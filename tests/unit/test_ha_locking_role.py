# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The ha_locking role, run by ansible-playbook against this machine with libvirt's configuration directory,
the shared storage and virtlockd's socket in a temporary directory (the role makes root the owner of what it
writes: these tests need root, and fail when not root). libvirtd's restart is a command that counts restarts."""

from __future__ import annotations

import json
import socket
import stat
import sys
import typing as t
from pathlib import Path

import pytest

from roleplay import Recap, link_collection, require_root, run_play, write_role_play

QEMU_CONF = '# Master configuration file for the QEMU driver.\n#lock_manager = "lockd"\nuser = "root"\n'
LOCKD_CONF = "#auto_disk_leases = 0\n#require_lease_for_disks = 1\n#file_lockspace_dir = \"/var/lib/libvirt/lockd/files\"\n"


class LockHost:
    """A directory standing in for /etc/libvirt, the shared storage and virtlockd's socket, and runs of the role."""

    def __init__(self, root: Path) -> None:
        require_root("ha_locking")
        self.root = root
        self.etc = root / "etc-libvirt"
        self.etc.mkdir()
        (self.etc / "qemu.conf").write_text(QEMU_CONF, encoding="utf-8")
        (self.etc / "qemu.conf").chmod(0o600)
        (self.etc / "qemu-lockd.conf").write_text(LOCKD_CONF, encoding="utf-8")
        self.shared = root / "shared"
        self.shared.mkdir()
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(root / "virtlockd-sock"))
        self.restarts = root / "restarts"
        self.collections = link_collection(root)
        self.playbook = write_role_play(root / "play.yml", "ha_locking")
        self.variables: t.Dict[str, t.Any] = {
            "ansible_python_interpreter": sys.executable,
            "virtops_shared_storage": str(self.shared),
            "ha_locking_libvirt_config_dir": str(self.etc),
            "ha_locking_virtlockd_service": "",
            "ha_locking_virtlockd_socket": str(root / "virtlockd-sock"),
            "ha_locking_host_name": "lab-h1",
            "maintenance_hook_libvirtd_restart_command": ["/bin/sh", "-c", 'echo restarted >> "$0"', str(self.restarts)],
            "maintenance_hook_libvirtd_restart_delegate_to": "localhost",
        }

    def play(self, *args: str) -> Recap:
        return run_play(self.root, self.collections, self.playbook, self.variables, *args)

    def restarted(self) -> int:
        return len(self.restarts.read_text(encoding="utf-8").splitlines()) if self.restarts.exists() else 0

    def snapshot(self) -> t.Dict[str, t.Tuple[int, str]]:
        """libvirt's configuration and the shared storage: each entry's mode and a file's content."""
        found = {}
        for base in (self.etc, self.shared):
            for path in sorted(base.rglob("*")):
                content = path.read_text(encoding="utf-8") if path.is_file() else ""
                found[str(path.relative_to(self.root))] = (path.lstat().st_mode, content)
        return found


@pytest.fixture
def lock_host(tmp_path: Path) -> t.Iterator[LockHost]:
    host = LockHost(tmp_path)
    yield host
    host.listener.close()


def _mode(path: Path) -> t.Tuple[int, int, int]:
    st = path.lstat()
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def test_configures_lockd_with_the_shared_lockspace_and_writes_the_record(lock_host: LockHost) -> None:
    before = lock_host.snapshot()
    planned = lock_host.play("--check", "--diff")
    assert planned.rc == 0 and planned.changed > 0, planned.output
    assert lock_host.snapshot() == before and lock_host.restarted() == 0, "check mode changed something"
    assert '+lock_manager = "lockd"' in planned.output

    first = lock_host.play()
    assert first.rc == 0 and first.changed > 0, first.output
    assert (lock_host.etc / "qemu.conf").read_text(encoding="utf-8") == QEMU_CONF.replace(
        '#lock_manager = "lockd"\n', '#lock_manager = "lockd"\nlock_manager = "lockd"\n'
    )
    assert _mode(lock_host.etc / "qemu.conf") == (0o600, 0, 0)
    lockspace = lock_host.shared / "virtops-lockd"
    assert (lock_host.etc / "qemu-lockd.conf").read_text(encoding="utf-8") == (
        "#auto_disk_leases = 0\nauto_disk_leases = 1\n#require_lease_for_disks = 1\nrequire_lease_for_disks = 1\n"
        '#file_lockspace_dir = "/var/lib/libvirt/lockd/files"\nfile_lockspace_dir = "%s"\n' % lockspace
    )
    assert _mode(lockspace) == (0o700, 0, 0)
    record = lock_host.shared / "virtops-ha" / "locking" / "lab-h1.json"
    assert _mode(record.parent.parent) == (0o700, 0, 0) and _mode(record.parent) == (0o700, 0, 0) and _mode(record) == (0o600, 0, 0)
    written = json.loads(record.read_text(encoding="utf-8"))
    assert isinstance(written.pop("configured_at"), int)
    assert written == {"host": "lab-h1", "lock_manager": "lockd", "lockspace": str(lockspace)}
    assert lock_host.restarted() == 1

    configured = lock_host.snapshot()
    for args in ((), ("--check",)):
        again = lock_host.play(*args)
        assert again.rc == 0 and again.changed == 0, again.output
    assert lock_host.snapshot() == configured and lock_host.restarted() == 1


def test_absent_removes_the_settings_and_the_record(lock_host: LockHost) -> None:
    assert lock_host.play().rc == 0
    lock_host.variables["ha_locking_state"] = "absent"
    configured = lock_host.snapshot()
    planned = lock_host.play("--check")
    assert planned.rc == 0 and planned.changed > 0 and lock_host.snapshot() == configured, planned.output
    removed = lock_host.play()
    assert removed.rc == 0 and removed.changed > 0, removed.output
    assert (lock_host.etc / "qemu.conf").read_text(encoding="utf-8") == QEMU_CONF
    assert "auto_disk_leases = 1" not in (lock_host.etc / "qemu-lockd.conf").read_text(encoding="utf-8")
    assert not (lock_host.shared / "virtops-ha" / "locking" / "lab-h1.json").exists()
    # The lockspace stays: other hosts use it.
    assert (lock_host.shared / "virtops-lockd").is_dir()
    assert lock_host.restarted() == 2
    again = lock_host.play()
    assert again.rc == 0 and again.changed == 0 and lock_host.restarted() == 2, again.output


@pytest.mark.parametrize(
    "change, message",
    [
        ({"virtops_shared_storage": ""}, "ha_locking: no shared storage is set"),
        ({"virtops_shared_storage": "/nonexistent/shared"}, "ha_locking: the shared storage /nonexistent/shared is not an existing directory"),
        ({"ha_locking_virtlockd_socket": "/nonexistent/virtlockd-sock"}, "ha_locking: virtlockd does not run on localhost"),
    ],
    ids=["unset", "missing", "no-virtlockd"],
)
def test_refuses_and_changes_nothing(lock_host: LockHost, change: t.Dict[str, str], message: str) -> None:
    lock_host.variables.update(change)
    before = lock_host.snapshot()
    refused = lock_host.play()
    assert refused.rc != 0 and message in refused.output and "Nothing was changed." in refused.output, refused.output
    assert lock_host.snapshot() == before and lock_host.restarted() == 0
