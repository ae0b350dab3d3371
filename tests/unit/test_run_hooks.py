# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The in-guest hook runner ``virtops-run-hooks`` (roles/guest_hooks/files/virtops_run_hooks.py).

Each test runs the real script as root on this machine, against a hooks tree of its own in /tmp
(root-owned, so that the runner trusts it) with the hook user ``nobody``, and reads its JSON
summary, its exit status and what the hooks left behind. They need root (the runner switches to
the hook user) and fail when not run as root. Every scenario runs under this Python and, where
it is installed, under Python 3.6 (the oldest Python the runner supports: RHEL 8 guests).
"""

from __future__ import annotations

import fcntl
import glob
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import typing as t
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parents[2] / "roles" / "guest_hooks" / "files" / "virtops_run_hooks.py"
NOBODY = pwd.getpwnam("nobody")
EVENTS = ("before_migration", "after_migration", "before_hibernation", "after_hibernation")
SUMMARY_KEYS = {"event", "hooks", "failed", "refused"}
HOOK_KEYS = {"name", "status", "signal", "timed_out", "duration_s", "output"}


def _pythons() -> t.List[str]:
    """This Python, and Python 3.6 when this machine has one (pyenv's or the system's)."""
    found = [sys.executable]
    oldest = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.6*/bin/python3.6"))) + glob.glob("/usr/bin/python3.6")
    if oldest:
        found.append(oldest[0])
    return found


PYTHONS = _pythons()


@pytest.fixture(autouse=True)
def _needs_root() -> t.Iterator[None]:
    """Root is required; and no test may write this machine's own /var/log/virtops-hooks.log."""
    if os.geteuid() != 0:
        pytest.fail("the hook runner tests must run as root: the runner switches to the hook user 'nobody'")
    machine_log = Path("/var/log/virtops-hooks.log")
    before = machine_log.stat().st_size if machine_log.exists() else None
    yield
    assert (machine_log.stat().st_size if machine_log.exists() else None) == before, "a test wrote %s" % machine_log


class Run(t.NamedTuple):
    rc: int
    summary: t.Dict[str, t.Any]
    stdout: str
    stderr: str
    seconds: float

    @property
    def names(self) -> t.List[str]:
        return [hook["name"] for hook in self.summary["hooks"]]


class Tree:
    """A hooks tree in a root-owned directory of /tmp, its configuration file, and a place the hooks may write."""

    def __init__(self, python: str) -> None:
        self.python = python
        self.root = Path(tempfile.mkdtemp(prefix="virtops-hooks-test-", dir="/tmp"))
        self.root.chmod(0o755)
        self.base = self.root / "hooks.d"
        self.base.mkdir(mode=0o755)
        self.out = self.root / "out"
        self.out.mkdir()
        self.out.chmod(0o777)
        self.config = self.root / "hooks.conf"
        self.log_file = self.root / "hooks.log"
        self.settings = {
            "base_dir": str(self.base),
            "user": "nobody",
            "timeout": "10",
            "kill_grace": "1",
            "log_file": str(self.log_file),
            "syslog_socket": "",
        }

    def event_dir(self, event: str = "before_migration") -> Path:
        path = self.base / event
        if not path.exists():
            path.mkdir(mode=0o755)
        return path

    def hook(self, name: str, body: str, event: str = "before_migration", mode: int = 0o755) -> Path:
        """A shell hook; ``body`` may use $OUT (a directory the hook user may write)."""
        path = self.event_dir(event) / name
        path.write_text("#!/bin/sh\nOUT=%s\nexport OUT\n%s\n" % (self.out, body), encoding="utf-8")
        path.chmod(mode)
        return path

    def marker_hook(self, name: str, event: str = "before_migration", mode: int = 0o755) -> Path:
        """A hook that appends its name to $OUT/ran."""
        return self.hook(name, 'echo "%s" >> "$OUT/ran"' % name, event, mode)

    def ran(self) -> t.List[str]:
        path = self.out / "ran"
        return path.read_text(encoding="utf-8").split() if path.exists() else []

    def write_config(self) -> None:
        lines = ["[hooks]"] + ["%s = %s" % item for item in self.settings.items()]
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.config.chmod(0o644)

    def run(self, *args: str, event: t.Optional[str] = "before_migration", write_config: bool = True, **popen: t.Any) -> Run:
        """Run the runner as the guest agent would: as root, with no locale and a bare PATH."""
        if write_config:
            self.write_config()
        popen.setdefault("env", {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        argv = [self.python, str(RUNNER), "--config", str(self.config), *args] + ([event] if event is not None else [])
        start = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, **popen)
        seconds = time.monotonic() - start
        assert proc.stdout.endswith("\n"), (proc.stdout, proc.stderr)
        summary = json.loads(proc.stdout.splitlines()[-1])
        assert set(summary) == SUMMARY_KEYS
        for hook in summary["hooks"]:
            assert set(hook) == HOOK_KEYS
        return Run(proc.returncode, summary, proc.stdout, proc.stderr, seconds)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(params=PYTHONS, ids=["this-python", "python3.6"][: len(PYTHONS)])
def tree(request: pytest.FixtureRequest) -> t.Iterator[Tree]:
    made = Tree(request.param)
    yield made
    made.cleanup()


def _python_version(python: str) -> str:
    return subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True, check=True).stdout.strip()


def test_the_oldest_python_checked_is_3_6_where_there_is_one() -> None:
    """The second interpreter, when present, really is 3.6 (so the compatibility claim is tested)."""
    versions = [_python_version(python) for python in PYTHONS]
    assert versions[0] == "%d.%d" % sys.version_info[:2]
    assert versions[1:] in ([], ["3.6"])


# Which hooks run, and in what order.


def test_hooks_run_one_after_another_in_byte_order_of_their_names(tree: Tree) -> None:
    names = ["b", "a", "B", "10-x", "2-y", "_z", "a.sh", "\u00e9t\u00e9", "\ue000-private-use"]
    for name in names:
        tree.hook(name, 'echo "%s start" >> "$OUT/ran"; sleep 0.05; echo "%s end" >> "$OUT/ran"' % (name, name))
    # A name that is not UTF-8: it sorts by its bytes (0xff, last) and is shown with U+FFFD.
    raw = os.path.join(os.fsencode(tree.event_dir()), b"\xff-latin1")
    with open(raw, "w", encoding="utf-8") as handle:
        handle.write('#!/bin/sh\necho "latin1 start" >> %s/ran; sleep 0.05; echo "latin1 end" >> %s/ran\n' % (tree.out, tree.out))
    os.chmod(raw, 0o755)
    run = tree.run()
    expected = ["10-x", "2-y", "B", "_z", "a", "a.sh", "b", "\u00e9t\u00e9", "\ue000-private-use", "\ufffd-latin1"]
    assert run.rc == 0, run.stderr
    assert run.names == expected
    assert run.summary["failed"] == 0 and run.summary["refused"] is None and run.summary["event"] == "before_migration"
    lines = (tree.out / "ran").read_text(encoding="utf-8").splitlines()
    ran = expected[:-1] + ["latin1"]
    assert lines == [line for name in ran for line in ("%s start" % name, "%s end" % name)]
    for hook in run.summary["hooks"]:
        assert hook["status"] == 0 and hook["signal"] is None and hook["timed_out"] is False
        assert 0.04 <= hook["duration_s"] < 60


def test_only_executable_files_and_links_to_them_run(tree: Tree) -> None:
    elsewhere = tree.root / "lib"
    elsewhere.mkdir(mode=0o755)
    target = elsewhere / "shared-hook"
    target.write_text('#!/bin/sh\necho "$0" >> %s/ran\n' % tree.out, encoding="utf-8")
    target.chmod(0o755)
    not_executable = elsewhere / "plain"
    not_executable.write_text("#!/bin/sh\necho plain >> %s/ran\n" % tree.out, encoding="utf-8")
    not_executable.chmod(0o644)
    event_dir = tree.event_dir()
    tree.marker_hook("10-file")
    tree.marker_hook("20-not-executable", mode=0o644)
    tree.marker_hook(".30-hidden")
    (event_dir / "40-link").symlink_to(target)
    (event_dir / "50-relative-link").symlink_to(os.path.relpath(target, event_dir))
    (event_dir / "60-dangling").symlink_to(elsewhere / "missing")
    (event_dir / "70-link-to-plain").symlink_to(not_executable)
    (event_dir / "80-link-to-dir").symlink_to(elsewhere)
    (event_dir / "90-dir").mkdir(mode=0o755)
    os.mkfifo(event_dir / "95-fifo", 0o755)

    run = tree.run()

    assert run.rc == 0, run.stderr
    assert run.names == ["10-file", "40-link", "50-relative-link"]
    # A link runs under its own name in the event directory ($0).
    assert tree.ran() == ["10-file", str(event_dir / "40-link"), str(event_dir / "50-relative-link")]
    for passed_over in ("20-not-executable: not executable", "60-dangling: broken symbolic link", "70-link-to-plain: links to",
                        "80-link-to-dir: links to", "90-dir: not a file", "95-fifo: not a file"):
        assert "passed over " + passed_over in run.stderr
    assert "30-hidden" not in run.stderr


@pytest.mark.parametrize("layout", ["no base directory", "no event directory", "empty event directory", "only other events"])
def test_no_hooks_is_no_error(tree: Tree, layout: str) -> None:
    if layout == "no base directory":
        tree.base.rmdir()
    elif layout == "empty event directory":
        tree.event_dir()
    elif layout == "only other events":
        tree.marker_hook("10-other", event="after_migration")
    run = tree.run()
    assert run.rc == 0, run.stderr
    assert run.summary == {"event": "before_migration", "hooks": [], "failed": 0, "refused": None}
    assert tree.ran() == []


@pytest.mark.parametrize("event", EVENTS)
def test_each_event_runs_its_own_directory(tree: Tree, event: str) -> None:
    for other in EVENTS:
        tree.hook("10-hook", 'echo "%s $VIRTOPS_HOOK_EVENT" >> "$OUT/ran"' % other, event=other)
    run = tree.run(event=event)
    assert run.rc == 0 and run.names == ["10-hook"]
    assert tree.ran() == [event, event]


# Results: failures, signals, timeouts.


def test_a_failing_hook_fails_the_run_and_the_others_still_run(tree: Tree) -> None:
    tree.marker_hook("10-ok")
    tree.hook("20-fails", 'echo "flush failed" >&2; exit 3')
    tree.hook("30-killed", "kill -KILL $$")
    tree.marker_hook("40-ok")
    run = tree.run()
    assert run.rc == 1
    assert run.summary["failed"] == 2 and run.summary["refused"] is None
    assert tree.ran() == ["10-ok", "40-ok"]
    by_name = {hook["name"]: hook for hook in run.summary["hooks"]}
    assert by_name["20-fails"]["status"] == 3 and by_name["20-fails"]["signal"] is None
    assert by_name["20-fails"]["output"] == "flush failed\n"
    assert by_name["30-killed"]["status"] is None and by_name["30-killed"]["signal"] == signal.SIGKILL
    assert not by_name["30-killed"]["timed_out"]
    assert by_name["40-ok"]["status"] == 0


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent to read it counts as ended)."""
    try:
        with open("/proc/%d/stat" % pid, encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_hanging_hook_and_its_children_are_stopped_at_the_timeout(tree: Tree) -> None:
    tree.settings["timeout"] = "1"
    tree.hook("10-hangs", 'sleep 300 & echo $! > "$OUT/child"; echo waiting; sleep 300')
    tree.marker_hook("20-next")
    run = tree.run()
    assert run.rc == 1
    hang = run.summary["hooks"][0]
    assert hang["timed_out"] is True and hang["status"] is None and hang["signal"] == signal.SIGTERM
    assert 1.0 <= hang["duration_s"] < 60, hang  # the hook sleeps 300 s
    assert hang["output"] == "waiting\n"
    child = int((tree.out / "child").read_text(encoding="utf-8"))
    assert not _alive(child), "the hook's background child survived its timeout"
    assert run.summary["failed"] == 1 and run.names == ["10-hangs", "20-next"] and tree.ran() == ["20-next"]
    assert "hook 10-hangs: timed out after 1 s" in run.stderr


def test_a_hook_that_ignores_sigterm_is_killed_after_the_grace(tree: Tree) -> None:
    tree.settings["timeout"] = "1"
    tree.settings["kill_grace"] = "1"
    tree.hook("10-stubborn", "trap '' TERM; sh -c 'trap \"\" TERM; echo $$ > $OUT/child; sleep 300' & sleep 300")
    run = tree.run()
    hook = run.summary["hooks"][0]
    assert run.rc == 1 and hook["timed_out"] and hook["signal"] == signal.SIGKILL
    assert 2.0 <= hook["duration_s"] < 60, hook  # timeout, grace, then SIGKILL; the hook sleeps 300 s
    assert not _alive(int((tree.out / "child").read_text(encoding="utf-8")))


def test_a_hook_that_closes_its_output_and_goes_on_still_times_out(tree: Tree) -> None:
    tree.settings["timeout"] = "1"
    tree.hook("10-quiet", "exec >/dev/null 2>&1; sleep 300")
    run = tree.run()
    assert run.rc == 1 and run.summary["hooks"][0]["timed_out"] and run.summary["hooks"][0]["signal"] == signal.SIGTERM


def test_a_hook_that_leaves_a_child_holding_its_output_does_not_block_the_run(tree: Tree) -> None:
    tree.hook("10-daemonizes", 'sleep 300 & echo $! > "$OUT/child"; echo started')
    tree.marker_hook("20-next")
    run = tree.run()
    assert run.rc == 0, run.stderr
    # The child holds the hook's output for 300 s: a run that waited for it would take that long.
    assert run.summary["hooks"][0]["output"] == "started\n" and run.summary["hooks"][0]["duration_s"] < 60
    assert tree.ran() == ["20-next"] and run.seconds < 60
    os.kill(int((tree.out / "child").read_text(encoding="utf-8")), signal.SIGKILL)


def test_the_timeout_option_overrides_the_configuration(tree: Tree) -> None:
    tree.settings["timeout"] = "60"
    tree.hook("10-hangs", "sleep 300")
    run = tree.run("--timeout", "0.5")
    assert run.rc == 1 and run.summary["hooks"][0]["timed_out"] and run.summary["hooks"][0]["duration_s"] < 30


def test_a_hook_the_user_cannot_execute_fails_with_126(tree: Tree) -> None:
    tree.marker_hook("10-root-only", mode=0o744)
    tree.marker_hook("20-next")
    run = tree.run()
    assert run.rc == 1
    hook = run.summary["hooks"][0]
    assert hook["status"] == 126 and "Permission denied" in hook["output"] and "as nobody" in hook["output"]
    assert tree.ran() == ["20-next"]


def test_stopping_the_runner_stops_the_running_hook_and_runs_no_more(tree: Tree) -> None:
    # The hook is stopped by the signal alone: its timeout is far beyond what a slow machine takes to get there.
    tree.settings["timeout"] = "250"
    tree.hook("10-hangs", 'echo $$ > "$OUT/hook"; sleep 300')
    tree.marker_hook("20-never")
    tree.write_config()
    proc = subprocess.Popen(  # pylint: disable=consider-using-with
        [tree.python, str(RUNNER), "--config", str(tree.config), "before_migration"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 10
    while not (tree.out / "hook").exists() or not (tree.out / "hook").read_text(encoding="utf-8").strip():
        assert time.monotonic() < deadline, "the hook did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=20)
    summary = json.loads(stdout.splitlines()[-1])
    assert proc.returncode == 1, stderr
    assert summary["refused"] is None and summary["failed"] == 1
    assert [hook["name"] for hook in summary["hooks"]] == ["10-hangs"]
    assert summary["hooks"][0]["signal"] == signal.SIGTERM and not summary["hooks"][0]["timed_out"]
    assert not _alive(int((tree.out / "hook").read_text(encoding="utf-8")))
    assert tree.ran() == []
    assert "stopped by signal 15; 1 hook(s) not run" in stderr


def _runner_in_process() -> t.Any:
    """The runner loaded as a module of this process, its signal state fresh."""
    spec = importlib.util.spec_from_file_location("virtops_run_hooks_under_test", RUNNER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def runner_tree() -> t.Iterator[Tree]:
    made = Tree(sys.executable)
    yield made
    made.cleanup()


def test_a_signal_that_came_before_the_hook_wait_was_armed_stops_the_hook_at_once(runner_tree: Tree) -> None:
    # On a busy machine the signal can arrive after the hook started and before the runner waits for it:
    # the hook is stopped then, not left to its timeout.
    runner = _runner_in_process()
    runner_tree.settings["timeout"] = "250"
    path = runner_tree.hook("10-hangs", "sleep 300")
    runner.Stop.signum = signal.SIGTERM
    start = time.monotonic()
    entry = runner.run_hook(
        runner.Hook(path.name.encode(), bytes(path)), "before_migration", runner.HookUser("nobody"), runner.Settings(runner_tree.settings)
    )
    assert time.monotonic() - start < 60
    assert entry["signal"] in (signal.SIGTERM, signal.SIGKILL) and not entry["timed_out"], entry
    assert runner.Stop.armed is False


def test_a_signal_that_came_before_the_lock_wait_was_armed_ends_the_wait_at_once(runner_tree: Tree) -> None:
    runner = _runner_in_process()
    runner_tree.event_dir()
    holder = os.open(runner_tree.base, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    outcome: t.List[BaseException] = []

    def prepare() -> None:
        try:
            runner._prepare(runner.Settings(runner_tree.settings), "before_migration")  # pylint: disable=protected-access
        except BaseException as exc:  # pylint: disable=broad-exception-caught
            outcome.append(exc)

    runner.Stop.signum = signal.SIGTERM
    waiter = threading.Thread(target=prepare, daemon=True)
    waiter.start()
    waiter.join(timeout=30)
    still_waiting = waiter.is_alive()
    os.close(holder)  # releases the lock: a waiter left behind ends
    waiter.join(timeout=30)
    assert not still_waiting, "the runner kept waiting for the lock after the signal"
    assert isinstance(outcome[0], runner.Refused) and "stopped by signal 15 while waiting" in str(outcome[0])
    assert runner.Stop.armed is False


def test_runs_of_one_base_directory_do_not_overlap(tree: Tree) -> None:
    tree.hook("10-slow", 'echo "start $$" >> "$OUT/ran"; sleep 0.5; echo "end $$" >> "$OUT/ran"')
    tree.write_config()
    argv = [tree.python, str(RUNNER), "--config", str(tree.config), "before_migration"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _run in range(2)]  # pylint: disable=consider-using-with
    for proc in procs:
        proc.communicate(timeout=20)
        assert proc.returncode == 0
    words = tree.ran()
    assert words[0::4] == ["start", "start"] and words[2::4] == ["end", "end"]
    assert words[1] == words[3] and words[5] == words[7] and words[1] != words[5], words


# Who the hooks run as, and with what.


def test_hooks_run_as_the_hook_user_with_a_minimal_environment(tree: Tree) -> None:
    tree.hook("10-whoami", 'id -u > "$OUT/uid"; id -g > "$OUT/gid"; id -G > "$OUT/groups"; env > "$OUT/env"; pwd > "$OUT/cwd"; umask > "$OUT/umask"')
    # The runner starts with more supplementary groups and variables than the hooks may have.
    run = tree.run(env={"PATH": os.environ["PATH"], "SECRET_TOKEN": "leak"}, cwd=str(tree.root), preexec_fn=lambda: os.setgroups([0, 4, 27]))
    assert run.rc == 0, run.stderr
    assert int((tree.out / "uid").read_text()) == NOBODY.pw_uid
    assert int((tree.out / "gid").read_text()) == NOBODY.pw_gid
    assert sorted(map(int, (tree.out / "groups").read_text().split())) == sorted(os.getgrouplist("nobody", NOBODY.pw_gid))
    env = dict(line.split("=", 1) for line in (tree.out / "env").read_text().splitlines())
    assert env.pop("PWD") == "/"
    assert env.pop("OUT") == str(tree.out)  # the test's own, exported by the hook
    assert env == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": NOBODY.pw_dir,
        "USER": "nobody",
        "LOGNAME": "nobody",
        "SHELL": "/bin/sh",
        "LANG": "C",
        "VIRTOPS_HOOK_EVENT": "before_migration",
        "VIRTOPS_HOOK_NAME": "10-whoami",
    }
    assert (tree.out / "cwd").read_text().strip() == "/"
    assert (tree.out / "umask").read_text().strip() == "0022"


def test_the_hooks_own_processes_are_in_a_new_process_group(tree: Tree) -> None:
    tree.hook("10-pgid", 'cut -d " " -f 1,5,6 /proc/$$/stat > "$OUT/ids"')
    run = tree.run()
    assert run.rc == 0, run.stderr
    pid, pgid, sid = (tree.out / "ids").read_text().split()
    assert pid == pgid == sid


def test_the_user_option_overrides_the_configuration(tree: Tree) -> None:
    tree.settings["user"] = "root"
    tree.hook("10-whoami", 'id -un > "$OUT/user"')
    run = tree.run("--user", "nobody")
    assert run.rc == 0, run.stderr
    assert (tree.out / "user").read_text().strip() == "nobody"


def test_a_missing_hook_user_is_refused(tree: Tree) -> None:
    tree.marker_hook("10-hook")
    run = tree.run("--user", "virtops-no-such-user")
    assert run.rc == 2
    assert run.summary["refused"] == "the hook user virtops-no-such-user does not exist" and run.summary["hooks"] == []
    assert tree.ran() == []


def test_root_as_the_hook_user_is_refused(tree: Tree) -> None:
    """The hooks never run with root's rights. Pure logic on the runner's side (the lab's guests would run the
    same lines); the role refuses such a user too, before any guest is touched."""
    tree.marker_hook("10-hook")
    run = tree.run("--user", "root")
    _refused(tree, run, "the hook user root has uid 0 (root); hooks run as an unprivileged user only")


@pytest.mark.parametrize(
    ("gid", "groups", "words"),
    [
        (0, [0], "the hook user nobody has group 0 (root) as its primary group"),
        (NOBODY.pw_gid, [NOBODY.pw_gid, 0], "the hook user nobody is in group 0 (root) as a supplementary group"),
    ],
    ids=["primary group 0", "supplementary group 0"],
)
def test_a_hook_user_in_group_0_is_refused_and_nothing_runs(
    runner_tree: Tree, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], gid: int, groups: t.List[int], words: str
) -> None:
    """No user of this machine but root is in group 0: 'nobody' is looked up with group 0 added, in the
    runner's own process. Pure logic on the runner's side; the role's check runs before any guest is touched."""
    runner = _runner_in_process()
    runner_tree.marker_hook("10-hook")
    runner_tree.write_config()
    entry = pwd.struct_passwd(tuple(NOBODY)[:3] + (gid,) + tuple(NOBODY)[4:])
    monkeypatch.setattr(runner.pwd, "getpwnam", lambda name: entry if name == "nobody" else pwd.getpwnam(name))
    monkeypatch.setattr(runner.os, "getgrouplist", lambda name, base: list(groups))
    summary = {"event": None, "hooks": [], "failed": 0, "refused": None}  # type: t.Dict[str, t.Any]
    log = runner.Log()
    try:
        status = runner.run(["--config", str(runner_tree.config), "before_migration"], log, summary)
    finally:
        log.close()
    assert status == runner.EXIT_REFUSED == 2
    assert summary["refused"].startswith(words) and summary["hooks"] == [], summary
    assert words in capsys.readouterr().err
    assert runner_tree.ran() == []


# Output.


def test_output_is_captured_from_both_streams_and_cut_to_its_last_4_kib(tree: Tree) -> None:
    tree.hook("10-chatty", "i=0; while [ $i -lt 500 ]; do echo \"line $i of the hook's output\"; i=$((i+1)); done; echo END >&2")
    tree.hook("20-utf8", "printf 'x'; i=0; while [ $i -lt 3000 ]; do printf '\\303\\251'; i=$((i+1)); done; printf y")
    tree.hook("30-binary", "printf 'a\\377\\000b\\n'")
    run = tree.run()
    assert run.rc == 0, run.stderr
    chatty, utf8, binary = run.summary["hooks"]
    assert len(chatty["output"].encode("utf-8")) <= 4096 and chatty["output"].endswith("line 499 of the hook's output\nEND\n")
    assert len(chatty["output"]) == 4096
    # Cut inside a two-byte character: the half character is dropped, never shown as garbage.
    assert utf8["output"] == "\u00e9" * 2047 + "y"
    assert binary["output"] == "a\ufffd\x00b\n"
    assert "output (" in run.stderr and "bytes)" in run.stderr


def test_the_summary_is_the_last_line_and_one_json_object(tree: Tree) -> None:
    tree.hook("10-multiline", 'printf "one\\ntwo\\n{\\"not\\": \\"the summary\\"}\\n"')
    run = tree.run()
    assert run.stdout.count("\n") == 1, "only the summary goes to standard output"
    assert run.summary["hooks"][0]["output"] == 'one\ntwo\n{"not": "the summary"}\n'
    assert isinstance(run.summary["hooks"][0]["duration_s"], float)


# Refusals: nothing runs.


def _refused(tree: Tree, run: Run, words: str) -> None:
    assert run.rc == 2, (run.summary, run.stderr)
    assert run.summary["hooks"] == [] and run.summary["failed"] == 0
    assert words in run.summary["refused"], run.summary["refused"]
    assert words in run.stderr
    assert tree.ran() == []


@pytest.mark.parametrize("event", ["before_migrations", "../before_migration", "", "BEFORE_MIGRATION"])
def test_an_unknown_event_is_refused(tree: Tree, event: str) -> None:
    tree.marker_hook("10-hook")
    run = tree.run(event=event)
    _refused(tree, run, "unknown event %r" % event)
    assert run.summary["event"] == event


def test_a_bad_command_line_is_refused_with_a_summary(tree: Tree) -> None:
    run = tree.run("--no-such-option", event="before_migration")
    _refused(tree, run, "usage: unrecognized arguments: --no-such-option")
    assert run.summary["event"] is None
    _refused(tree, tree.run(event=None), "usage: the following arguments are required: event")
    _refused(tree, tree.run("--timeout", "-3"), "timeout must be a positive number of seconds")


@pytest.mark.parametrize(
    "what, mode",
    [
        ("hook", 0o777), ("hook", 0o775), ("hook", 0o757),
        ("event directory", 0o777), ("event directory", 0o775), ("event directory", 0o1777),
        ("base directory", 0o777), ("base directory", 0o775),
    ],
)
def test_anything_writable_by_others_than_root_is_refused(tree: Tree, what: str, mode: int) -> None:
    tree.marker_hook("10-good")
    bad = tree.marker_hook("20-writable")
    path = {"hook": bad, "event directory": tree.event_dir(), "base directory": tree.base}[what]
    path.chmod(mode)
    run = tree.run()
    _refused(tree, run, "%s %s is writable by group or others (mode %04o)" % (what, path, mode))


@pytest.mark.parametrize("what", ["hook", "event directory", "base directory", "hook link"])
def test_anything_owned_by_another_user_is_refused(tree: Tree, what: str) -> None:
    tree.marker_hook("10-good")
    bad = tree.marker_hook("20-owned")
    if what == "hook link":
        target = tree.root / "target"
        bad.rename(target)
        bad.symlink_to(target)
    path = {"hook": bad, "hook link": bad, "event directory": tree.event_dir(), "base directory": tree.base}[what]
    os.lchown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    _refused(tree, tree.run(), "%s %s is owned by uid %d, not root" % (what, path, NOBODY.pw_uid))


@pytest.mark.parametrize("problem", ["target owned by nobody", "target writable", "target in a writable directory", "target dir owned by nobody"])
def test_a_link_to_a_hook_others_can_change_is_refused(tree: Tree, problem: str) -> None:
    tree.marker_hook("10-good")
    lib = tree.root / "lib"
    lib.mkdir(mode=0o755)
    target = lib / "hook"
    target.write_text("#!/bin/sh\necho target >> %s/ran\n" % tree.out, encoding="utf-8")
    target.chmod(0o755)
    (tree.event_dir() / "20-link").symlink_to(target)
    if problem == "target owned by nobody":
        os.chown(target, NOBODY.pw_uid, NOBODY.pw_gid)
        words = "target of hook 20-link %s is owned by uid" % target
    elif problem == "target writable":
        target.chmod(0o757)
        words = "target of hook 20-link %s is writable by group or others" % target
    elif problem == "target in a writable directory":
        lib.chmod(0o777)
        words = "directory above the target of hook 20-link %s is writable by group or others" % lib
    else:
        os.chown(lib, NOBODY.pw_uid, NOBODY.pw_gid)
        words = "directory above the target of hook 20-link %s is owned by uid" % lib
    _refused(tree, tree.run(), words)


def test_a_base_directory_below_a_writable_directory_is_refused(tree: Tree) -> None:
    """Whoever can write the directory above the base directory could replace it: refused (a sticky one, as /tmp, is fine)."""
    parent = tree.root / "parent"
    parent.mkdir(mode=0o755)
    tree.base.rename(parent / "hooks.d")
    tree.base = parent / "hooks.d"
    tree.settings["base_dir"] = str(tree.base)
    tree.marker_hook("10-hook")
    parent.chmod(0o777)
    _refused(tree, tree.run(), "directory above the base directory %s is writable by group or others (mode 0777)" % parent)
    parent.chmod(0o1777)
    assert tree.run().rc == 0 and tree.ran() == ["10-hook"]


def test_a_non_executable_file_others_can_write_is_passed_over_not_refused(tree: Tree) -> None:
    tree.marker_hook("10-hook")
    notes = tree.event_dir() / "README"
    notes.write_text("notes\n", encoding="utf-8")
    notes.chmod(0o666)
    os.chown(notes, NOBODY.pw_uid, NOBODY.pw_gid)
    run = tree.run()
    assert run.rc == 0 and tree.ran() == ["10-hook"]


# The configuration file.


def test_the_configuration_file_gives_the_defaults_and_options_override_them(tree: Tree) -> None:
    other = tree.root / "other.d"
    (other / "before_migration").mkdir(parents=True, mode=0o755)
    other.chmod(0o755)
    script = other / "before_migration" / "10-other"
    script.write_text("#!/bin/sh\necho other >> %s/ran\n" % tree.out, encoding="utf-8")
    script.chmod(0o755)
    tree.marker_hook("10-configured")
    assert tree.run().names == ["10-configured"]
    assert tree.run("--base-dir", str(other)).names == ["10-other"]
    assert tree.ran() == ["10-configured", "other"]


def test_without_a_configuration_file_the_built_in_defaults_apply(tree: Tree) -> None:
    """No configuration file: the built-in defaults, the log file /var/log/virtops-hooks.log among them.

    Run in a mount namespace of its own with a tmpfs over /var/log, so this machine's is not written.
    """
    tree.marker_hook("10-hook")
    script = 'mount -t tmpfs virtops-test /var/log && "$@"; rc=$?; stat -c "%a %U" /var/log/virtops-hooks.log >&2; cat /var/log/virtops-hooks.log >&2; exit $rc'
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", tree.python, str(RUNNER),
            "--config", str(tree.config), "--base-dir", str(tree.base), "--user", "nobody", "before_migration"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert not tree.config.exists()
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["refused"] is None and tree.ran() == ["10-hook"]
    assert "640 root\n" in proc.stderr
    assert "running 1 hook(s) from %s/before_migration as nobody, 30 s each at most" % tree.base in proc.stderr.split("640 root\n")[1]


@pytest.mark.parametrize(
    "content, mode, words",
    [
        ("[hooks]\nuser = nobody\n", 0o666, "configuration file %(config)s is writable by group or others"),
        ("[hooks]\nusr = nobody\n", 0o644, "configuration file %(config)s: unknown setting 'usr'"),
        ("[other]\nuser = nobody\n", 0o644, "unknown section [other]"),
        ("user = nobody\n", 0o644, "cannot read the configuration file"),
        ("[hooks]\ntimeout = soon\n", 0o644, "timeout must be a number of seconds, not 'soon'"),
        ("[hooks]\nkill_grace = 0\n", 0o644, "kill_grace must be a positive number of seconds"),
        ("[hooks]\nbase_dir = hooks.d\n", 0o644, "the base directory 'hooks.d' is not an absolute path"),
    ],
)
def test_a_bad_configuration_file_is_refused(tree: Tree, content: str, mode: int, words: str) -> None:
    tree.marker_hook("10-hook")
    tree.config.write_text(content, encoding="utf-8")
    tree.config.chmod(mode)
    run = tree.run("--user", "nobody", write_config=False)
    _refused(tree, run, words % {"config": tree.config})


# Logs.


def test_each_hook_is_logged_to_the_log_file(tree: Tree) -> None:
    tree.hook("10-ok", "echo flushed")
    tree.hook("20-fails", "exit 4")
    tree.run()
    assert stat.S_IMODE(tree.log_file.stat().st_mode) == 0o640 and tree.log_file.stat().st_uid == 0
    lines = tree.log_file.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4
    assert all(" virtops-hooks[" in line for line in lines)
    assert "before_migration: running 2 hook(s) from %s/before_migration as nobody, 10 s each at most" % tree.base in lines[0]
    assert 'before_migration: hook 10-ok: exit status 0, ' in lines[1] and lines[1].endswith('output (8 bytes): "flushed\\n"')
    assert "before_migration: hook 20-fails: exit status 4, " in lines[2]
    assert lines[3].endswith("before_migration: 2 hook(s) run, 1 failed")
    # Appended to, never rewritten.
    tree.run(event="after_migration")
    assert tree.log_file.read_text(encoding="utf-8").splitlines()[:4] == lines
    _refused(tree, tree.run(event="during_migration"), "unknown event")
    last = tree.log_file.read_text(encoding="utf-8").splitlines()[-1]
    assert last.endswith("during_migration: refused: unknown event 'during_migration' (one of %s)" % ", ".join(EVENTS))


def test_a_log_file_that_is_a_symlink_is_not_followed(tree: Tree) -> None:
    victim = tree.root / "victim"
    victim.write_text("untouched\n", encoding="utf-8")
    tree.log_file.symlink_to(victim)
    tree.marker_hook("10-hook")
    run = tree.run()
    assert run.rc == 0 and tree.ran() == ["10-hook"]
    assert victim.read_text(encoding="utf-8") == "untouched\n"
    assert "cannot open the log file" in run.stderr


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM], ids=["datagram", "stream"])
def test_each_hook_is_logged_to_the_system_log(tree: Tree, kind: int) -> None:
    address = str(tree.root / "log.sock")
    server = socket.socket(socket.AF_UNIX, kind)
    server.bind(address)
    if kind == socket.SOCK_STREAM:
        server.listen(1)
    server.settimeout(10)
    tree.settings["syslog_socket"] = address
    tree.hook("10-ok", "echo flushed")
    tree.hook("20-fails", "exit 4")
    try:
        run = tree.run()
        if kind == socket.SOCK_STREAM:
            conn = server.accept()[0]
            data = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            conn.close()
            messages = [part.decode("utf-8") for part in data.split(b"\0") if part]
        else:
            server.setblocking(False)
            messages = []
            while True:
                try:
                    messages.append(server.recv(65536).decode("utf-8"))
                except BlockingIOError:
                    break
    finally:
        server.close()
    assert run.rc == 1
    assert len(messages) == 4, messages
    # <facility daemon (3) * 8 + severity>, then a BSD timestamp and the tag.
    assert messages[0].startswith("<30>") and " virtops-hooks[" in messages[0]
    assert messages[1].startswith("<30>") and "hook 10-ok: exit status 0" in messages[1] and '"flushed\\n"' in messages[1]
    assert messages[2].startswith("<28>") and "hook 20-fails: exit status 4" in messages[2]
    assert messages[3].startswith("<28>") and messages[3].endswith("2 hook(s) run, 1 failed")


def test_a_missing_system_log_does_not_stop_the_hooks(tree: Tree) -> None:
    tree.settings["syslog_socket"] = str(tree.root / "no-such.sock")
    tree.marker_hook("10-hook")
    run = tree.run()
    assert run.rc == 0 and tree.ran() == ["10-hook"]
    assert "no system log at %s" % tree.settings["syslog_socket"] in run.stderr


# Who may run it.


def test_the_runner_refuses_to_run_as_anyone_but_root(tree: Tree) -> None:
    """Run by the system's Python: nobody cannot reach a Python under /root."""
    copy = tree.root / "virtops-run-hooks"
    shutil.copy(RUNNER, copy)
    copy.chmod(0o755)
    tree.marker_hook("10-hook")
    tree.write_config()

    def become_nobody() -> None:
        os.setgroups([])
        os.setgid(NOBODY.pw_gid)
        os.setuid(NOBODY.pw_uid)

    proc = subprocess.run(  # pylint: disable=subprocess-popen-preexec-fn
        ["/usr/bin/python3", str(copy), "--config", str(tree.config), "before_migration"],
        capture_output=True, text=True, timeout=60, check=False, preexec_fn=become_nobody, cwd="/",
    )
    assert proc.returncode == 2
    assert json.loads(proc.stdout.splitlines()[-1])["refused"] == "must run as root, to run the hooks as the hook user"
    assert tree.ran() == []


def test_the_source_has_one_configuration_path_line_for_the_role_to_set() -> None:
    """The role installs the runner with CONFIG_FILE set to its configuration path (one line, replaced)."""
    lines = [line for line in RUNNER.read_text(encoding="utf-8").splitlines() if line.startswith("CONFIG_FILE = ")]
    assert lines == ['CONFIG_FILE = "/etc/virtops/hooks.conf"']
    assert not RUNNER.read_text(encoding="utf-8").startswith("#!"), "the role writes the interpreter line"
