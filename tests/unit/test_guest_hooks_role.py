# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The guest_hooks role, run by ansible-playbook against this machine (connection local).

Everything the role writes is redirected into a directory of its own in /tmp (base directory,
runner, configuration, log file), and the hook user is ``nobody``, so the tests never create a user
or write /etc. They need root (the role sets root as owner) and fail when not run as root.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import typing as t
from pathlib import Path

import pytest
from roleplay import REPO, CaseRecap, Recap, link_collection, require_root, run_cases, run_play, write_role_play

RUNNER_SOURCE = REPO / "roles" / "guest_hooks" / "files" / "virtops_run_hooks.py"
EVENTS = ("before_migration", "after_migration", "before_hibernation", "after_hibernation")


class Guest:
    """A directory standing in for a guest's file system, and ansible-playbook runs of the role against it."""

    def __init__(self) -> None:
        require_root("guest_hooks")
        self.root = Path(tempfile.mkdtemp(prefix="virtops-guest-hooks-role-", dir="/tmp"))
        self.root.chmod(0o755)  # the hook user runs the hooks below it
        self.base = self.root / "etc" / "virtops" / "hooks.d"
        self.runner = self.root / "usr" / "local" / "sbin" / "virtops-run-hooks"
        self.config = self.root / "etc" / "virtops" / "hooks.conf"
        self.log_dir = self.root / "var" / "log"
        self.log_dir.mkdir(parents=True)
        self.log_file = self.log_dir / "virtops-hooks.log"
        self.files = self.root / "controller"
        self.files.mkdir()
        (self.files / "notify.sh").write_text("#!/bin/sh\necho notified\n", encoding="utf-8")
        self.collections = link_collection(self.root)
        self.playbook = write_role_play(self.root / "play.yml", "guest_hooks")
        self.variables = {
            "ansible_python_interpreter": sys.executable,
            "guest_hooks_base_dir": str(self.base),
            "guest_hooks_runner_path": str(self.runner),
            "guest_hooks_config_path": str(self.config),
            "guest_hooks_log_file": str(self.log_file),
            "guest_hooks_syslog_socket": "",
            "guest_hooks_user": "nobody",
            "guest_hooks_timeout": 7,
        }  # type: t.Dict[str, t.Any]

    def play(self, *args: str, playbook: t.Optional[Path] = None) -> Recap:
        return run_play(self.root, self.collections, playbook or self.playbook, self.variables, *args)

    def tree(self) -> t.Dict[str, t.Tuple[str, int, int, str]]:
        """Every path below the guest's etc/ and usr/: its kind, mode, owner and content (or link target)."""
        found = {}
        for top in ("etc", "usr"):
            for dirpath, dirnames, filenames in os.walk(str(self.root / top)):
                for name in dirnames + filenames:
                    path = os.path.join(dirpath, name)
                    st = os.lstat(path)
                    if stat.S_ISLNK(st.st_mode):
                        kind, content = "link", os.readlink(path)
                    elif stat.S_ISDIR(st.st_mode):
                        kind, content = "dir", ""
                    else:
                        kind, content = "file", Path(path).read_text(encoding="utf-8", errors="replace")
                    found[os.path.relpath(path, str(self.root))] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, content)
        return found

    def run_runner(self, event: str) -> t.Tuple[int, t.Dict[str, t.Any], str]:
        """Run the installed runner as the host's guest agent does: by its path, with the event only."""
        proc = subprocess.run([str(self.runner), event], capture_output=True, text=True, timeout=60, check=False,
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, cwd="/")
        return proc.returncode, json.loads(proc.stdout.splitlines()[-1]), proc.stderr

    def manifest(self) -> t.List[str]:
        return json.loads((self.base / ".virtops-managed.json").read_text(encoding="utf-8"))["hooks"]

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def guest() -> t.Iterator[Guest]:
    made = Guest()
    yield made
    made.cleanup()


HOOKS = [
    {"event": "before_migration", "name": "10-flush", "content": "#!/bin/sh\nid -u\necho \"$VIRTOPS_HOOK_EVENT\"\n"},
    {"event": "before_migration", "name": "20-quiesce", "content": "#!/bin/sh\necho quiesced\n", "mode": "0555"},
    {"event": "after_migration", "name": "10-notify", "src": "REPLACED"},
    {"event": "before_hibernation", "name": "10-sync", "content": "#!/bin/sh\nsync\n"},
]


def _hooks(guest: Guest) -> t.List[t.Dict[str, str]]:
    hooks = [dict(hook) for hook in HOOKS]
    hooks[2]["src"] = str(guest.files / "notify.sh")
    return hooks


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_the_role_installs_updates_and_removes_hooks_idempotently(guest: Guest) -> None:
    guest.variables["guest_hooks_hooks"] = _hooks(guest)

    # Check mode on a fresh guest: would change, changes nothing, does not fail.
    run = guest.play("--check")
    assert run.rc == 0 and run.failed == 0, run.output
    assert run.changed > 0
    assert guest.tree() == {}

    # For real.
    run = guest.play("--diff")
    assert run.rc == 0 and run.changed > 0, run.output
    for directory in [guest.base] + [guest.base / event for event in EVENTS]:
        assert directory.is_dir() and _mode(directory) == 0o755 and directory.stat().st_uid == 0
    flush = guest.base / "before_migration" / "10-flush"
    assert flush.read_text(encoding="utf-8") == HOOKS[0]["content"] and _mode(flush) == 0o755 and flush.stat().st_uid == 0
    assert _mode(guest.base / "before_migration" / "20-quiesce") == 0o555
    assert (guest.base / "after_migration" / "10-notify").read_text(encoding="utf-8") == "#!/bin/sh\necho notified\n"
    assert guest.manifest() == ["after_migration/10-notify", "before_hibernation/10-sync", "before_migration/10-flush", "before_migration/20-quiesce"]
    assert _mode(guest.base / ".virtops-managed.json") == 0o644
    runner = guest.runner.read_text(encoding="utf-8")
    assert runner.splitlines()[0] == "#!%s -I" % sys.executable
    assert 'CONFIG_FILE = "%s"' % guest.config in runner
    assert runner.replace('CONFIG_FILE = "%s"' % guest.config, 'CONFIG_FILE = "/etc/virtops/hooks.conf"').endswith(RUNNER_SOURCE.read_text(encoding="utf-8"))
    assert _mode(guest.runner) == 0o755 and guest.runner.stat().st_uid == 0
    assert _mode(guest.config) == 0o644
    assert "\n[hooks]\nbase_dir = %s\nuser = nobody\ntimeout = 7\n" % guest.base in guest.config.read_text(encoding="utf-8")
    installed = guest.tree()

    # Again, and again in check mode: nothing changes.
    for args in ((), ("--check", "--diff")):
        run = guest.play(*args)
        assert run.rc == 0 and run.changed == 0, run.output
    assert guest.tree() == installed

    # The installed runner works as the host calls it: the event only, its defaults from the configuration.
    rc, summary, stderr = guest.run_runner("before_migration")
    assert rc == 0, stderr
    assert [hook["name"] for hook in summary["hooks"]] == ["10-flush", "20-quiesce"]
    assert summary["hooks"][0]["output"] == "%d\nbefore_migration\n" % pwd.getpwnam("nobody").pw_uid
    assert summary["hooks"][1]["output"] == "quiesced\n"
    assert "before_migration: hook 20-quiesce: exit status 0" in guest.log_file.read_text(encoding="utf-8")
    assert guest.run_runner("after_migration")[1]["hooks"][0]["output"] == "notified\n"

    # A hook dropped from the list is removed; a file the role did not install stays.
    foreign = guest.base / "before_migration" / "50-admins-own"
    foreign.write_text("#!/bin/sh\n", encoding="utf-8")
    foreign.chmod(0o755)
    guest.variables["guest_hooks_hooks"] = [hook for hook in _hooks(guest) if hook["name"] != "10-flush"]
    run = guest.play()
    assert run.rc == 0 and run.changed > 0, run.output
    assert not flush.exists() and foreign.exists()
    assert guest.manifest() == ["after_migration/10-notify", "before_hibernation/10-sync", "before_migration/20-quiesce"]
    run = guest.play()
    assert run.rc == 0 and run.changed == 0, run.output

    # A hook the role manages that was changed by hand is put back.
    sync = guest.base / "before_hibernation" / "10-sync"
    sync.write_text("#!/bin/sh\nrm -rf /\n", encoding="utf-8")
    sync.chmod(0o777)
    run = guest.play()
    assert run.rc == 0 and run.changed == 1, run.output
    assert sync.read_text(encoding="utf-8") == HOOKS[3]["content"] and _mode(sync) == 0o755

    # Absent: check mode changes nothing; then what the role installed goes, the foreign hook stays.
    guest.variables["guest_hooks_state"] = "absent"
    before = guest.tree()
    run = guest.play("--check")
    assert run.rc == 0 and run.changed > 0, run.output
    assert guest.tree() == before
    run = guest.play()
    assert run.rc == 0 and run.changed > 0, run.output
    assert not guest.runner.exists() and not guest.config.exists()
    assert not (guest.base / ".virtops-managed.json").exists()
    assert sorted(path for path in guest.tree() if path.startswith("etc/")) == [
        "etc/virtops", "etc/virtops/hooks.d", "etc/virtops/hooks.d/before_migration", "etc/virtops/hooks.d/before_migration/50-admins-own",
    ]
    # The directory of the runner is not the role's to remove, nor the log file.
    assert guest.runner.parent.is_dir() and guest.log_file.exists()

    # Once the foreign hook is gone, the empty directories go too.
    foreign.unlink()
    run = guest.play()
    assert run.rc == 0 and run.changed > 0, run.output
    assert not (guest.root / "etc").exists() or list((guest.root / "etc").iterdir()) == []
    run = guest.play()
    assert run.rc == 0 and run.changed == 0, run.output


def test_files_there_before_the_role_are_never_managed(guest: Guest) -> None:
    """An event directory's own files, present before the role ran, are never managed nor removed."""
    existing = guest.base / "before_migration" / "10-flush"
    existing.parent.mkdir(parents=True)
    existing.write_text("#!/bin/sh\necho admin\n", encoding="utf-8")
    existing.chmod(0o755)
    guest.variables["guest_hooks_hooks"] = [{"event": "after_migration", "name": "10-notify", "content": "#!/bin/sh\n"}]
    assert guest.play().rc == 0
    guest.variables["guest_hooks_hooks"] = []
    run = guest.play()
    assert run.rc == 0 and run.changed > 0, run.output
    assert existing.read_text(encoding="utf-8") == "#!/bin/sh\necho admin\n"
    assert not (guest.base / "after_migration" / "10-notify").exists()
    assert guest.manifest() == []


GOOD = {"event": "before_migration", "name": "10-good", "content": "#!/bin/sh\n"}
BAD_INPUT = [
    ({"hooks": [dict(GOOD, event="during_migration")]}, "during_migration"),
    ({"hooks": [dict(GOOD, name="sub/dir")]}, "guest_hooks_hooks[0]: each hook needs an event"),
    ({"hooks": [dict(GOOD, name=".hidden")]}, "guest_hooks_hooks[0]: each hook needs"),
    ({"hooks": [dict(GOOD, name="")]}, "guest_hooks_hooks[0]: each hook needs"),
    ({"hooks": [dict(GOOD, name="two\nlines")]}, "guest_hooks_hooks[0]: each hook needs"),
    ({"hooks": [dict(GOOD, name="newline\n")]}, "guest_hooks_hooks[0]: each hook needs"),
    ({"hooks": [dict(GOOD, src="/etc/hostname")]}, "exactly one of src or content"),
    ({"hooks": [{"event": "before_migration", "name": "10-empty"}]}, "guest_hooks_hooks[0]: each hook needs"),
    ({"hooks": [dict(GOOD, mode="0777")]}, "no write permission to group or others"),
    ({"hooks": [dict(GOOD, mode="0775")]}, "guest_hooks_hooks[0]: each hook needs"),
    ({"hooks": [dict(GOOD, mode="4755")]}, "no set-id bit"),
    ({"hooks": [dict(GOOD, mode=493)]}, "guest_hooks_hooks[0]: each hook needs"),
    ({"hooks": [GOOD, dict(GOOD, name="../escape")]}, "guest_hooks_hooks[1]: each hook needs"),
    ({"hooks": [GOOD, dict(GOOD, content="#!/bin/sh\necho twice\n")]}, "each event and name may be given once"),
    ({"base_dir": "relative/hooks.d"}, "must be absolute"),
    ({"base_dir": "/"}, "must be absolute"),
    # uid 0 and group 0; the group check is the same assert, on the groups ``id -G`` lists (primary first).
    ({"hooks": [GOOD], "user": "root"}, "the hook user root has uid 0 and groups 0"),
    ({"hooks": [GOOD]}, "no failure"),
]


def _case(case: t.Dict[str, t.Any]) -> str:
    return json.dumps(case)


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[t.Dict[str, t.Tuple[Guest, CaseRecap]]]:
    """Every case of BAD_INPUT (by the case as JSON), each against a guest of its own, all in one
    ansible-playbook process."""
    guests = {}
    try:
        for case, _words in BAD_INPUT:
            guest = guests[_case(case)] = Guest()
            guest.variables.update(guest_hooks_hooks=case.get("hooks", []), guest_hooks_base_dir=case.get("base_dir", str(guest.base)))
            guest.variables["guest_hooks_user"] = case.get("user", guest.variables["guest_hooks_user"])
        recaps = run_cases(tmp_path_factory.mktemp("bad-input-play"), "guest_hooks", {name: guest.variables for name, guest in guests.items()})
        yield {name: (guest, recaps[name]) for name, guest in guests.items()}
    finally:
        for guest in guests.values():
            guest.cleanup()


@pytest.mark.parametrize(("case", "words"), BAD_INPUT, ids=lambda value: _case(value) if isinstance(value, dict) else "")
def test_bad_input_fails_clearly_before_anything_changes(
    bad_input_runs: t.Dict[str, t.Tuple[Guest, CaseRecap]], case: t.Dict[str, t.Any], words: str
) -> None:
    """Each case fails with a message that names what is wrong, and changes nothing; the last, good case,
    for contrast, installs its hook."""
    guest, run = bad_input_runs[_case(case)]
    if words == "no failure":
        assert run.rc == 0 and run.failed == 0, run.output
        assert (guest.base / "before_migration" / "10-good").exists()
    else:
        assert run.rc != 0 and run.failed == 1, run.output
        assert words in " | ".join(run.messages), run.output
        # Not one of them changed anything.
        assert guest.tree() == {}, guest.tree()


def test_check_mode_would_create_a_missing_hook_user_and_creates_nothing(guest: Guest) -> None:
    """Only check mode here: a real run would add a user to this machine."""
    missing = "virtops-hooks-test-missing"
    with pytest.raises(KeyError):
        pwd.getpwnam(missing)
    guest.variables["guest_hooks_user"] = missing
    run = guest.play("--check")
    assert run.rc == 0 and run.failed == 0, run.output
    assert re.search(r"TASK \[virtops\.migration\.guest_hooks : Create the hook user %s\][^\n]*\nchanged: \[localhost\]" % missing, run.output), run.output
    with pytest.raises(KeyError):
        pwd.getpwnam(missing)
    assert guest.tree() == {}
