# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""virtops-run-hooks: run a guest's hooks for one event (installed by the guest_hooks role).

Usage: virtops-run-hooks [--base-dir DIR] [--user USER] [--timeout SECONDS] [--config FILE] EVENT

EVENT is one of before_migration, after_migration, before_hibernation, after_hibernation. Every
executable regular file, or symbolic link to one, in BASE/EVENT/ runs, one after another in byte
order of their names; names starting with "." are passed over. Each hook runs as the hook user
(its uid, gid and supplementary groups, HOME set, a minimal environment with VIRTOPS_HOOK_EVENT),
with standard input from /dev/null and standard output and error captured, in a process group of
its own that is sent SIGTERM at the per-hook timeout and SIGKILL after a grace.

Nothing runs (exit 2) when the event is unknown, the hook user does not exist, or the base
directory, the event directory, a hook or a hook's link target (or a directory above any of them)
can be changed by someone other than root. A missing or empty event directory runs nothing (exit 0).

Each hook's name, result, duration and output go to the system log (tag virtops-hooks) and to a
log file. The last line of standard output is one JSON object:
    {"event": ..., "hooks": [{"name", "status", "signal", "timed_out", "duration_s", "output"}],
     "failed": N, "refused": null or the reason}
Exit status: 0 every hook succeeded (or there was none), 1 a hook failed, was killed or timed out,
2 refused.

Defaults come from the configuration file (CONFIG_FILE, an INI file with a [hooks] section: base_dir,
user, timeout, kill_grace, log_file, syslog_socket); the options override them. Python 3.6 or later,
standard library only: guests may be old.
"""

import argparse
import configparser
import fcntl
import json
import os
import pwd
import select
import signal
import socket
import stat
import subprocess
import sys
import time
import typing as t

# The role replaces this line with the configuration path it writes.
CONFIG_FILE = "/etc/virtops/hooks.conf"

EVENTS = ("before_migration", "after_migration", "before_hibernation", "after_hibernation")
TAG = "virtops-hooks"
SETTINGS = {
    "base_dir": "/etc/virtops/hooks.d",
    "user": "virtops-hooks",
    "timeout": "30",
    "kill_grace": "5",
    "log_file": "/var/log/virtops-hooks.log",
    "syslog_socket": "/dev/log",
}
# Bytes of each hook's output kept (its tail) in the summary and the logs.
OUTPUT_LIMIT = 4096
# Bytes of the output tail that go into one system log message.
SYSLOG_OUTPUT_LIMIT = 1024
# How long output is still read after a hook exits while something it left behind holds its pipe.
DRAIN_S = 0.5
HOOK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2
# syslog facility and severities (RFC 5424).
FACILITY_DAEMON = 3
ERROR, WARNING, INFO = 3, 4, 6
WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH
EXECUTABLE = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH


class Refused(Exception):
    """The runner will not run anything; the message says why."""


class Interrupted(Exception):
    """The runner itself received a termination signal while waiting (see :class:`Stop`)."""


class Stop:
    """Termination signals (TERM, INT, HUP) received by the runner.

    The first one is remembered: no further hook starts. It interrupts only a wait that is armed
    (a hook running, the wait for another runner's lock); the running hook's group is then stopped.
    A signal that came before the wait was armed interrupts it as soon as it is armed.
    """

    signum = None  # type: t.Optional[int]
    armed = False

    @classmethod
    def arm(cls) -> None:
        """Let a termination signal interrupt the wait that follows (raises :class:`Interrupted`)."""
        cls.armed = True
        if cls.signum is not None:
            cls.armed = False
            raise Interrupted()

    @classmethod
    def handler(cls, signum: int, _frame: t.Any) -> None:
        if cls.signum is None:
            cls.signum = signum
        if cls.armed:
            cls.armed = False
            raise Interrupted()


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors become refusals (so the JSON summary is still printed)."""

    def error(self, message: str) -> "t.NoReturn":  # type: ignore[override]
        raise Refused("usage: %s" % message)


def parse_args(argv: t.Sequence[str]) -> argparse.Namespace:
    parser = Parser(prog="virtops-run-hooks", description="Run the guest hooks of one event as the hook user.")
    parser.add_argument("--base-dir", help="the hooks base directory (default from the configuration file)")
    parser.add_argument("--user", help="the user the hooks run as (default from the configuration file)")
    parser.add_argument("--timeout", help="seconds each hook may run (default from the configuration file)")
    parser.add_argument("--config", default=CONFIG_FILE, help="the configuration file (default %(default)s)")
    parser.add_argument("event", help="one of " + ", ".join(EVENTS))
    return parser.parse_args(argv)


# Trust: what only root can change.


def show(path: t.Union[str, bytes]) -> str:
    """A path for messages: file names are bytes, shown as UTF-8 (what is not UTF-8 as U+FFFD)."""
    return (path if isinstance(path, bytes) else os.fsencode(path)).decode("utf-8", "replace")


def _untrusted_reason(path: t.Union[str, bytes], st: os.stat_result, kind: str, sticky_ok: bool = False) -> t.Optional[str]:
    if st.st_uid != 0:
        return "%s %s is owned by uid %d, not root" % (kind, show(path), st.st_uid)
    if st.st_mode & WRITABLE_BY_OTHERS and not (sticky_ok and st.st_mode & stat.S_ISVTX):
        return "%s %s is writable by group or others (mode %04o)" % (kind, show(path), stat.S_IMODE(st.st_mode))
    return None


def check_trusted(path: t.Union[str, bytes], kind: str) -> bytes:
    """Resolve ``path`` and check that only root can change it or any directory above it.

    Directories above may be world-writable when sticky (as /tmp): others cannot replace root's
    entries there. Returns the resolved path; raises :class:`Refused` otherwise.
    """
    resolved = os.path.realpath(os.fsencode(path))
    parts = resolved.split(b"/")[1:]
    for depth in range(len(parts)):
        ancestor = b"/" + b"/".join(parts[:depth])
        reason = _untrusted_reason(ancestor, os.stat(ancestor), "directory above the " + kind, sticky_ok=True)
        if reason:
            raise Refused(reason)
    reason = _untrusted_reason(resolved, os.stat(resolved), kind)
    if reason:
        raise Refused(reason)
    return resolved


# Settings.


class Settings:
    """The effective settings: the configuration file, then the command line options."""

    def __init__(self, values: t.Mapping[str, str]) -> None:
        self.base_dir = values["base_dir"]
        self.user = values["user"]
        self.timeout = _positive(values["timeout"], "timeout")
        self.kill_grace = _positive(values["kill_grace"], "kill_grace")
        self.log_file = values["log_file"]
        self.syslog_socket = values["syslog_socket"]
        if not os.path.isabs(self.base_dir):
            raise Refused("the base directory %r is not an absolute path" % self.base_dir)


def _positive(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise Refused("%s must be a number of seconds, not %r" % (name, text)) from None
    if not 0 < value < 1e9:
        raise Refused("%s must be a positive number of seconds, not %r" % (name, text))
    return value


def load_settings(args: argparse.Namespace) -> Settings:
    values = dict(SETTINGS)
    config = args.config
    try:
        st = os.stat(config)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise Refused("cannot read the configuration file %s: %s" % (config, exc.strerror)) from None
    if st is not None:
        check_trusted(config, "configuration file")
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with open(config, encoding="utf-8") as handle:
                parser.read_file(handle)
        except (OSError, UnicodeDecodeError, configparser.Error) as exc:
            raise Refused("cannot read the configuration file %s: %s" % (config, exc)) from None
        for section in parser.sections():
            if section != "hooks":
                raise Refused("configuration file %s: unknown section [%s]" % (config, section))
        if parser.has_section("hooks"):
            for key, value in parser.items("hooks"):
                if key not in SETTINGS:
                    raise Refused("configuration file %s: unknown setting %r" % (config, key))
                values[key] = value.strip()
    for key in ("base_dir", "user", "timeout"):
        given = getattr(args, key)
        if given is not None:
            values[key] = given
    return Settings(values)


# Logging: the system log and the log file; neither may stop the hooks from running.


def _warn(message: str) -> None:
    sys.stderr.write("%s: %s\n" % (TAG, message))


class Log:
    """Messages to standard error, the system log (tag virtops-hooks, facility daemon) and the log file."""

    def __init__(self) -> None:
        self.fd = None  # type: t.Optional[int]
        self.syslog = None  # type: t.Optional[socket.socket]
        self.syslog_stream = False

    def open(self, settings: Settings) -> None:
        if settings.log_file:
            self._open_file(settings.log_file)
        if settings.syslog_socket:
            self._open_syslog(settings.syslog_socket)

    def _open_file(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            _warn("cannot open the log file %s: %s" % (path, exc.strerror))
            return
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            _warn("the log file %s is not a regular file" % path)
            return
        self.fd = fd

    def _open_syslog(self, address: str) -> None:
        """Connect to the local system log socket: datagrams (syslogd, journald), else a stream."""
        problem = None  # type: t.Optional[OSError]
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            sock = socket.socket(socket.AF_UNIX, kind)
            try:
                sock.connect(address)
            except OSError as exc:
                sock.close()
                problem = problem or exc
                continue
            self.syslog = sock
            self.syslog_stream = kind == socket.SOCK_STREAM
            return
        _warn("no system log at %s: %s" % (address, getattr(problem, "strerror", None) or problem))

    def write(self, message: str, severity: int = INFO, syslog_message: t.Optional[str] = None) -> None:
        _warn(message)
        if self.syslog is not None:
            self._send_syslog(severity, syslog_message or message)
        if self.fd is not None:
            line = "%s %s[%d]: %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S%z"), TAG, os.getpid(), message)
            try:
                os.write(self.fd, line.encode("utf-8", "backslashreplace"))
            except OSError as exc:
                _warn("cannot write the log file: %s" % exc.strerror)
                self.fd = None

    def _send_syslog(self, severity: int, message: str) -> None:
        now = time.localtime()
        stamp = "%s %2d %s" % (time.strftime("%b", now), now.tm_mday, time.strftime("%H:%M:%S", now))
        data = ("<%d>%s %s[%d]: %s" % (FACILITY_DAEMON * 8 + severity, stamp, TAG, os.getpid(), message)).encode(
            "utf-8", "backslashreplace"
        )
        try:
            if self.syslog_stream:
                self.syslog.sendall(data + b"\0")  # type: ignore[union-attr]
            else:
                self.syslog.send(data)  # type: ignore[union-attr]
        except OSError as exc:
            _warn("cannot write to the system log: %s" % exc.strerror)
            self.close_syslog()

    def close_syslog(self) -> None:
        if self.syslog is not None:
            self.syslog.close()
            self.syslog = None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.close_syslog()


# Finding the hooks.


class Hook:
    """One hook to run: its file name (bytes, as the directory has it), that name shown, and its path."""

    def __init__(self, raw: bytes, path: bytes) -> None:
        self.raw = raw
        self.name = show(raw)
        self.path = path


def find_hooks(event_dir: bytes) -> t.Tuple[t.List[Hook], t.List[str]]:
    """The hooks of an event directory in run order, and what was passed over (as messages).

    Names are bytes and sorted as bytes (the C locale's order). Raises :class:`Refused` when a hook
    (or its link target) is not root's alone.
    """
    hooks = []  # type: t.List[Hook]
    skipped = []  # type: t.List[str]
    for raw in sorted(os.listdir(event_dir)):
        name = show(raw)
        path = os.path.join(event_dir, raw)
        if raw.startswith(b"."):
            continue
        try:
            lst = os.lstat(path)
        except FileNotFoundError:  # removed since the listing
            continue
        if stat.S_ISLNK(lst.st_mode):
            try:
                target = os.stat(path)
            except OSError as exc:
                skipped.append("%s: broken symbolic link (%s)" % (name, exc.strerror))
                continue
            if not stat.S_ISREG(target.st_mode) or not target.st_mode & EXECUTABLE:
                skipped.append("%s: links to something that is not an executable file" % name)
                continue
            # A link's own mode means nothing (always 0777); its owner must still be root.
            if lst.st_uid != 0:
                raise Refused("hook link %s is owned by uid %d, not root" % (show(path), lst.st_uid))
            check_trusted(path, "target of hook " + name)
        elif stat.S_ISREG(lst.st_mode):
            if not lst.st_mode & EXECUTABLE:
                skipped.append("%s: not executable" % name)
                continue
            reason = _untrusted_reason(path, lst, "hook")
            if reason:
                raise Refused(reason)
        else:
            skipped.append("%s: not a file" % name)
            continue
        hooks.append(Hook(raw, path))
    return hooks, skipped


# Running one hook.


class HookUser:
    """Who the hooks run as, looked up once (before any fork).

    Never root: a user with uid 0, or with group 0 as its primary or a supplementary group, is refused,
    since the hooks would then run with root's rights (or write what only root should).
    """

    def __init__(self, name: str) -> None:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise Refused("the hook user %s does not exist" % name) from None
        self.name = name
        self.uid = entry.pw_uid
        self.gid = entry.pw_gid
        self.home = entry.pw_dir
        self.groups = os.getgrouplist(name, entry.pw_gid)
        if self.uid == 0:
            raise Refused("the hook user %s has uid 0 (root); hooks run as an unprivileged user only" % name)
        if self.gid == 0:
            raise Refused("the hook user %s has group 0 (root) as its primary group; hooks run as an unprivileged user only" % name)
        if 0 in self.groups:
            raise Refused("the hook user %s is in group 0 (root) as a supplementary group; hooks run as an unprivileged user only" % name)

    def environment(self, event: str, hook: str) -> t.Dict[str, str]:
        return {
            "PATH": HOOK_PATH,
            "HOME": self.home,
            "USER": self.name,
            "LOGNAME": self.name,
            "SHELL": "/bin/sh",
            "LANG": "C",
            "VIRTOPS_HOOK_EVENT": event,
            "VIRTOPS_HOOK_NAME": hook,
        }

    def become(self) -> None:
        """In the child, before exec: drop root for the hook user (groups first, uid last)."""
        os.setgroups(self.groups)
        os.setgid(self.gid)
        os.setuid(self.uid)
        os.umask(0o022)


class OutputTail:
    """The last OUTPUT_LIMIT bytes of a stream, and how many bytes it had in all."""

    def __init__(self) -> None:
        self.data = b""
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.data = (self.data + chunk)[-OUTPUT_LIMIT:]

    def text(self, limit: int = OUTPUT_LIMIT) -> str:
        data = self.data[-limit:]
        if len(data) < self.total:
            # Cut inside a UTF-8 sequence: drop its continuation bytes rather than show garbage.
            index = 0
            while index < min(3, len(data)) and 0x80 <= data[index] < 0xC0:
                index += 1
            data = data[index:]
        return data.decode("utf-8", "replace")


def _read_output(proc: "subprocess.Popen[bytes]", fd: int, tail: OutputTail, deadline: float) -> bool:
    """Read the hook's output until it ends or the deadline passes; True when the deadline passed.

    When the hook has exited but something it left running still holds the pipe, reading stops
    after DRAIN_S.
    """
    exited_at = None  # type: t.Optional[float]
    while True:
        now = time.monotonic()
        if now >= deadline:
            return True
        if exited_at is None and proc.poll() is not None:
            exited_at = now
        if exited_at is not None and now - exited_at >= DRAIN_S:
            return False
        wait = min(deadline - now, 0.1 if exited_at is not None else 0.5)
        if select.select([fd], [], [], wait)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            tail.add(chunk)
    try:
        proc.wait(timeout=max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        return True
    return False


def _drain(fd: int, tail: OutputTail) -> None:
    """Read what is left in the pipe once the hook's group was killed, without blocking for long."""
    while select.select([fd], [], [], 0.1)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            return
        tail.add(chunk)


def _kill_group(proc: "subprocess.Popen[bytes]", grace: float) -> None:
    """SIGTERM to the hook's process group, SIGKILL to what is left of it after ``grace`` seconds."""
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


def run_hook(hook: Hook, event: str, user: HookUser, settings: Settings) -> t.Dict[str, t.Any]:
    """Run one hook to its end, its timeout or the runner's own termination; its summary entry."""
    tail = OutputTail()
    start = time.monotonic()
    try:
        proc = subprocess.Popen(  # pylint: disable=subprocess-popen-preexec-fn
            [hook.path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd="/",
            env=user.environment(event, os.fsdecode(hook.raw)),
            close_fds=True,
            start_new_session=True,
            preexec_fn=user.become,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        text = "cannot start %s as %s: %s" % (show(hook.path), user.name, getattr(exc, "strerror", None) or exc)
        tail.add(text.encode("utf-8"))
        status = 127 if isinstance(exc, FileNotFoundError) else 126
        return _entry(hook.name, status, False, time.monotonic() - start, tail)
    # The hook leads its own process group (a new session): killing the group reaches its children.
    pipe = proc.stdout
    fd = pipe.fileno()  # type: ignore[union-attr]
    timed_out = interrupted = False
    try:
        try:
            Stop.arm()
            timed_out = _read_output(proc, fd, tail, start + settings.timeout)
        except Interrupted:
            interrupted = True
        finally:
            Stop.armed = False
        if timed_out or interrupted:
            _kill_group(proc, settings.kill_grace)
            _drain(fd, tail)
    finally:
        if proc.poll() is None:
            _kill_group(proc, 0)
        pipe.close()  # type: ignore[union-attr]
    return _entry(hook.name, proc.returncode, timed_out, time.monotonic() - start, tail)


def _entry(name: str, returncode: int, timed_out: bool, duration: float, tail: OutputTail) -> t.Dict[str, t.Any]:
    """A hook's summary entry (keys starting with "_" are for the logs and dropped from the summary)."""
    return {
        "name": name,
        "status": returncode if returncode >= 0 else None,
        "signal": -returncode if returncode < 0 else None,
        "timed_out": timed_out,
        "duration_s": round(duration, 3),
        "output": tail.text(),
        "_bytes": tail.total,
        "_syslog_output": tail.text(SYSLOG_OUTPUT_LIMIT),
    }


def failed(entry: t.Mapping[str, t.Any]) -> bool:
    return bool(entry["timed_out"] or entry["status"] != 0)


def describe(entry: t.Mapping[str, t.Any], timeout: float) -> str:
    if entry["timed_out"]:
        how = "timed out after %g s (stopped: signal %s)" % (timeout, entry["signal"] or "none, it exited")
    elif entry["signal"] is not None:
        how = "killed by signal %d" % entry["signal"]
    else:
        how = "exit status %d" % entry["status"]
    return "hook %s: %s, %.3f s" % (entry["name"], how, entry["duration_s"])


# The run.


def run(argv: t.Sequence[str], log: Log, summary: t.Dict[str, t.Any]) -> int:
    """Run the event's hooks, filling in the summary; the exit status."""
    lock_fd = None
    try:
        args = parse_args(argv)
        summary["event"] = event = args.event
        settings = load_settings(args)
        log.open(settings)
        if event not in EVENTS:
            raise Refused("unknown event %r (one of %s)" % (event, ", ".join(EVENTS)))
        if os.geteuid() != 0:
            raise Refused("must run as root, to run the hooks as the hook user")
        user = HookUser(settings.user)
        hooks, skipped, lock_fd = _prepare(settings, event)
        if Stop.signum is not None:
            raise Refused("stopped by signal %d before any hook ran" % Stop.signum)
    except OSError as exc:  # a path that vanished or cannot be read while being checked
        summary["refused"] = "cannot check %s: %s" % (show(exc.filename or ""), exc.strerror)
    except Refused as exc:
        summary["refused"] = str(exc)
    if summary["refused"] is not None:
        if lock_fd is not None:
            os.close(lock_fd)
        log.write("%s: refused: %s" % (summary["event"], summary["refused"]), ERROR)
        return EXIT_REFUSED
    stopped = False
    try:
        for message in skipped:
            log.write("%s: passed over %s" % (event, message))
        if hooks:
            log.write(
                "%s: running %d hook(s) from %s as %s, %g s each at most"
                % (event, len(hooks), show(os.path.join(settings.base_dir, event)), user.name, settings.timeout)
            )
        for index, hook in enumerate(hooks):
            if Stop.signum is not None:
                stopped = True
                log.write(
                    "%s: stopped by signal %d; %d hook(s) not run" % (event, Stop.signum, len(hooks) - index),
                    ERROR,
                )
                break
            _record(summary, run_hook(hook, event, user, settings), settings, log)
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
    log.write(
        "%s: %d hook(s) run, %d failed" % (event, len(summary["hooks"]), summary["failed"]),
        WARNING if summary["failed"] else INFO,
    )
    return EXIT_FAILED if summary["failed"] or stopped else EXIT_OK


def _prepare(settings: Settings, event: str) -> t.Tuple[t.List[Hook], t.List[str], t.Optional[int]]:
    """Check the directories and the hooks, and take the run lock: one runner at a time per base directory."""
    if not os.path.lexists(settings.base_dir):
        return [], [], None
    base_dir = check_trusted(settings.base_dir, "base directory")
    if not os.path.isdir(base_dir):
        raise Refused("the base directory %s is not a directory" % show(base_dir))
    lock_fd = os.open(base_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            Stop.arm()
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
        except Interrupted:
            raise Refused("stopped by signal %d while waiting for another run to end" % Stop.signum) from None
        finally:
            Stop.armed = False
        event_dir = os.path.join(base_dir, os.fsencode(event))
        if not os.path.lexists(event_dir):
            return [], [], lock_fd
        event_dir = check_trusted(event_dir, "event directory")
        if not os.path.isdir(event_dir):
            raise Refused("the event directory %s is not a directory" % show(event_dir))
        hooks, skipped = find_hooks(event_dir)
    except BaseException:
        os.close(lock_fd)
        raise
    return hooks, skipped, lock_fd


def _record(summary: t.Dict[str, t.Any], entry: t.Dict[str, t.Any], settings: Settings, log: Log) -> None:
    """Add a hook's entry to the summary and log it."""
    total = entry.pop("_bytes")
    syslog_output = entry.pop("_syslog_output")
    summary["hooks"].append(entry)
    if failed(entry):
        summary["failed"] += 1
    head = "%s: %s" % (summary["event"], describe(entry, settings.timeout))
    log.write(
        "%s; output (%d bytes): %s" % (head, total, json.dumps(entry["output"])),
        WARNING if failed(entry) else INFO,
        syslog_message="%s; output (%d bytes): %s" % (head, total, json.dumps(syslog_output)),
    )


def main(argv: t.Optional[t.Sequence[str]] = None) -> int:
    os.umask(0o022)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, Stop.handler)
    log = Log()
    summary = {"event": None, "hooks": [], "failed": 0, "refused": None}  # type: t.Dict[str, t.Any]
    try:
        status = run(sys.argv[1:] if argv is None else argv, log, summary)
    except Exception as exc:  # pylint: disable=broad-exception-caught
        # A fault of the runner itself: still end with a summary the host can read.
        status = EXIT_REFUSED
        summary["refused"] = "internal error: %s: %s" % (type(exc).__name__, exc)
        _warn(summary["refused"])
    finally:
        log.close()
    sys.stdout.write(json.dumps(summary) + "\n")
    sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
