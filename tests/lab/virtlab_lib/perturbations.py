# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Perturbations of a running lab, for failure and convergence tests: a host's libvirtd killed,
started or restarted, its links down or up, the whole host crashed, cut off the network or powered
off and on by its fence agent, and commands or the memory-dirtying workload run in a guest through
its agent (`kill-libvirtd`, `start-libvirtd`, `restart-libvirtd`, `link`, `partition`, `crash`,
`fence`, `exec`, `dirty`).
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import os
import shutil
import signal
import sys
import time
import typing as t
from pathlib import Path

from . import common
from .common import (
    HOST_TMPFS,
    Host,
    Lab,
    LabError,
    lab_lock,
    netns_inode,
    pid_alive,
    pid_netns_inode,
    pids_in_netns,
    require_lab,
    require_root,
    run,
    say,
    tool,
    wait_gone,
    warn,
)
from .hosts import (
    RUNNING,
    SASL_DB,
    edit_conf,
    agent_command,
    close_connection,
    domain_state,
    finish_libvirtd,
    launch_libvirtd,
    link_is_up,
    open_connection,
    start_sshd,
    start_virtlockd,
)
from .image import DIRTIER_PATH

# How long restart-libvirtd waits for libvirtd to exit after SIGTERM.
LIBVIRTD_STOP_TIMEOUT = 60.0
DIRTY_DIR = "/tmp/virtlab-dirty"
# `fence HOST -o ACTION`, as fence agents (fence-agents) name their actions; `-o status` exits
# FENCE_STATUS_ON or FENCE_STATUS_OFF (anything else means the state is unknown).
FENCE_ACTIONS = ("off", "on", "reboot", "status")
FENCE_STATUS_ON = 0
FENCE_STATUS_OFF = 2


@contextlib.contextmanager
def running_vm(lab: Lab, name: str) -> t.Iterator[tuple[Host, t.Any]]:
    """Find the host a VM currently runs on; yield that host and the domain."""
    seen = []
    for host in lab.hosts:
        try:
            conn = open_connection(host)
        except LabError as exc:
            seen.append(str(exc))
            continue
        try:
            dom = conn.lookupByName(name)
            if dom.state()[0] == RUNNING:
                break
            seen.append("%s on %s" % (domain_state(dom), host.name))
        except common.libvirt.libvirtError:
            pass
        close_connection(conn)
    else:
        raise LabError("VM %s is not running on any lab host%s" % (name, " (" + "; ".join(seen) + ")" if seen else ""))
    try:
        yield host, dom
    finally:
        close_connection(conn)


def guest_exec(dom: t.Any, argv: t.Sequence[str], timeout: float) -> tuple[int, bytes, bytes, bool]:
    """Run a command in the guest through the agent; return exit code, stdout, stderr, truncated flag."""
    started = agent_command(dom, "guest-exec", {"path": argv[0], "arg": list(argv[1:]), "capture-output": True})
    pid = started["pid"]
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        status = agent_command(dom, "guest-exec-status", {"pid": pid})
        if status.get("exited"):
            out = base64.b64decode(status.get("out-data", ""))
            err = base64.b64decode(status.get("err-data", ""))
            code = status.get("exitcode")
            if code is None:
                code = 128 + int(status.get("signal", 0))
            truncated = bool(status.get("out-truncated") or status.get("err-truncated"))
            return int(code), out, err, truncated
        if time.monotonic() > deadline:
            raise LabError(
                "command %s in the guest did not finish within %.0f s (guest pid %d)" % (argv[0], timeout, pid)
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


# ---------------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------------


def cmd_exec(args: argparse.Namespace) -> int:
    """virtlab exec: run a command in a guest, print its output, exit with its exit code."""
    require_root()
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise LabError("exec needs a command: virtlab exec VM -- CMD ARGS...")
    try:
        with running_vm(require_lab(), args.vm) as (host, dom):
            try:
                code, out, err, truncated = guest_exec(dom, command, args.timeout)
            except common.libvirt.libvirtError as exc:
                print("virtlab: %s on %s: %s" % (args.vm, host.name, exc.get_error_message()), file=sys.stderr)
                return 127
    except LabError as exc:
        print("virtlab: error: %s" % exc, file=sys.stderr)
        return 125
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    sys.stderr.buffer.write(err)
    if truncated:
        warn("the guest agent truncated the command's output")
    return code


def cmd_dirty(args: argparse.Namespace) -> int:
    """virtlab dirty: start (or stop) the memory-dirtying workload in a guest."""
    require_root()
    lab = require_lab()
    if args.stop:
        argv = [
            "/bin/sh",
            "-c",
            "d=%s; [ -f $d/pid ] || { echo 'no workload runs in this guest (restarted?)' >&2; exit 3; }; "
            "kill -- -$(cat $d/pid) 2>/dev/null; "
            'echo "passes $(cat $d/passes 2>/dev/null || echo 0) lost $(cat $d/lost 2>/dev/null || echo 0)"; rm -rf $d'
            % DIRTY_DIR,
        ]
    else:
        if args.mib is None or args.mib < 1:
            raise LabError("dirty needs --mib N (N >= 1), or --stop")
        if args.rate < 0:
            raise LabError("--rate must be >= 0 (0: as fast as the guest can)")
        if args.tlb_flush_us < 0:
            raise LabError("--tlb-flush-us must be >= 0 (0: no flushes)")
        # A workload already running is replaced; the new one starts counting from zero.
        argv = [
            "/bin/sh",
            "-c",
            "d=%s; [ -f $d/pid ] && kill -- -$(cat $d/pid) 2>/dev/null; rm -rf $d && mkdir -p $d || exit 1; "
            "pid=$(%s %d %g $d %d) || exit 1; echo $pid > $d/pid; echo $pid"
            % (DIRTY_DIR, DIRTIER_PATH, args.mib, args.rate, args.tlb_flush_us),
        ]
    with running_vm(lab, args.vm) as (host, dom):
        try:
            code, out, err, _truncated = guest_exec(dom, argv, timeout=120)
        except common.libvirt.libvirtError as exc:
            raise LabError("%s on %s: %s" % (args.vm, host.name, exc.get_error_message())) from exc
    if code != 0:
        raise LabError("the workload in %s failed: %s" % (args.vm, err.decode(errors="replace").strip()))
    if args.stop:
        say("stopped the workload in %s on %s: %s" % (args.vm, host.name, out.decode().strip()))
    else:
        say(
            "%s on %s: rewriting %d MiB of guest memory %s (guest pid %s; passes and lost writes counted in "
            "%s/passes and %s/lost; stop with `virtlab dirty %s --stop`)"
            % (
                args.vm,
                host.name,
                args.mib,
                "%g times a second at most" % args.rate if args.rate else "as fast as it can",
                out.decode().strip(),
                DIRTY_DIR,
                DIRTY_DIR,
                args.vm,
            )
        )
    return 0


def cmd_kill_libvirtd(args: argparse.Namespace) -> int:
    """virtlab kill-libvirtd: stop a host's libvirtd (its QEMU processes keep running)."""
    require_root()
    with lab_lock():
        lab = require_lab()
        host = lab.host(args.host)
        in_host = pid_netns_inode(host.libvirtd_pid) == netns_inode(host.netns)
        if not (pid_alive(host.libvirtd_pid, "libvirtd") and in_host):
            say("libvirtd on %s is not running" % host.name)
            return 0
        sig = signal.SIGKILL if args.signal == "KILL" else signal.SIGTERM
        os.kill(host.libvirtd_pid, sig)
        if wait_gone([host.libvirtd_pid], 15.0):
            raise LabError(
                "libvirtd on %s (pid %d) did not exit after SIG%s" % (host.name, host.libvirtd_pid, args.signal)
            )
        say("killed libvirtd on %s (pid %d, SIG%s)" % (host.name, host.libvirtd_pid, args.signal))
        host.libvirtd_pid = 0
        lab.save()
    return 0


def refuse_down(host: Host, what: str) -> None:
    """Refuse to ``what`` on a host that is crashed or powered off (its fence agent brings it back)."""
    if host.down_reason:
        raise LabError(
            "cannot %s on %s: the host is %s (bring it back with `virtlab fence %s -o %s`)"
            % (what, host.name, host.down_reason, host.name, "on" if host.power == "off" else "reboot")
        )


def host_daemon_alive(host: Host, pid: int, comm: str) -> bool:
    """Whether ``pid`` is a live ``comm`` inside the host's network namespace."""
    return pid_alive(pid, comm) and pid_netns_inode(pid) == netns_inode(host.netns)


def start_host_libvirtd(lab: Lab, host: Host) -> None:
    """Start the host's libvirtd in the host's namespaces and wait until it answers; record its PID.

    The host's virtlockd is started first when it does not run (libvirtd configured for lockd needs it).
    """
    if not host_daemon_alive(host, host.virtlockd_pid, "virtlockd"):
        try:
            start_virtlockd(host)
        finally:
            lab.save()
    host.libvirtd_pid = 0
    (host.host_root() / HOST_TMPFS.lstrip("/") / "libvirtd.pid").unlink(missing_ok=True)
    try:
        finish_libvirtd(host, launch_libvirtd(host))
    finally:
        lab.save()


def cmd_start_libvirtd(args: argparse.Namespace) -> int:
    """virtlab start-libvirtd: start a host's libvirtd again in the host's namespaces."""
    require_root()
    with lab_lock():
        lab = require_lab()
        host = lab.host(args.host)
        refuse_down(host, "start libvirtd")
        if pid_alive(host.libvirtd_pid, "libvirtd"):
            say("libvirtd on %s is already running (pid %d)" % (host.name, host.libvirtd_pid))
            return 0
        start_host_libvirtd(lab, host)
        say("started libvirtd on %s (pid %d)" % (host.name, host.libvirtd_pid))
    return 0


def restart_host_libvirtd(lab: Lab, host: Host) -> str:
    """Stop the host's libvirtd with SIGTERM (if it runs) and start it again; say what was stopped.

    The host's virtlockd keeps running (it holds the disk leases of the running guests).
    """
    refuse_down(host, "restart libvirtd")
    old = host.libvirtd_pid
    if pid_alive(old, "libvirtd") and pid_netns_inode(old) == netns_inode(host.netns):
        os.kill(old, signal.SIGTERM)
        if wait_gone([old], LIBVIRTD_STOP_TIMEOUT):
            raise LabError(
                "libvirtd on %s (pid %d) did not exit within %.0f s of SIGTERM" % (host.name, old, LIBVIRTD_STOP_TIMEOUT)
            )
        stopped = "stopped pid %d" % old
    else:
        stopped = "it was not running"
    host.libvirtd_pid = 0
    lab.save()
    start_host_libvirtd(lab, host)
    return stopped


def cmd_restart_libvirtd(args: argparse.Namespace) -> int:
    """virtlab restart-libvirtd: stop a host's libvirtd with SIGTERM and start it again (guests keep running).

    libvirtd reads the hook scripts in /etc/libvirt/hooks/ only when it starts: this is how a lab host
    picks up a new or changed hook (the lab hosts have no systemd).
    """
    require_root()
    with lab_lock():
        lab = require_lab()
        host = lab.host(args.host)
        stopped = restart_host_libvirtd(lab, host)
        say("restarted libvirtd on %s (%s; now pid %d)" % (host.name, stopped, host.libvirtd_pid))
    return 0


def cmd_auth(args: argparse.Namespace) -> int:
    """virtlab auth: how the hosts' libvirtd authenticates TCP and TLS clients (restarts libvirtd).

    --sasl USER: SASL with SCRAM-SHA-256 on both listeners, USER (password read from --password-file)
    added to the host's user database. libvirtd accepts a mechanism without a security layer, such as
    SCRAM, only on TLS connections: qemu+tcp:// clients are then refused. --none: no authentication.
    """
    require_root()
    if args.sasl and not args.password_file:
        raise LabError("--sasl needs --password-file")
    password = ""
    if args.sasl:
        password = Path(args.password_file).read_text().rstrip("\n")
        if not password or "\n" in password:
            raise LabError("the password file %s must hold one line" % args.password_file)
    mode = "sasl" if args.sasl else "none"
    with lab_lock():
        lab = require_lab()
        for name in args.host:
            host = lab.host(name)
            if args.sasl:
                saslpasswd = [tool("saslpasswd2"), "-p", "-c", "-a", "libvirt", "-f", SASL_DB, args.sasl]
                run(host.in_host(saslpasswd), what="saslpasswd2 on %s" % host.name, input_text=password)
                os.chmod(host.path / "etc-libvirt" / Path(SASL_DB).name, 0o600)
            edit_conf(host.path / "etc-libvirt" / "libvirtd.conf", {"auth_tcp": mode, "auth_tls": mode})
            restart_host_libvirtd(lab, host)
            say("libvirtd on %s: auth_tcp and auth_tls %s%s" % (host.name, mode, " (user %s)" % args.sasl if args.sasl else ""))
    return 0


def set_links(host: Host, state: str) -> None:
    """Set the host's veths (bridge side, lab and migration network) "down" or "up"."""
    for veth in (host.veth, host.migration_veth):
        if veth and Path("/sys/class/net", veth).exists():
            run([tool("ip"), "link", "set", veth, state])


def cmd_link(args: argparse.Namespace) -> int:
    """virtlab link: set a host's veths down or up (a network failure of that host, both networks)."""
    require_root()
    with lab_lock():
        lab = require_lab()
        host = lab.host(args.host)
        if args.state == "up" and host.power == "off":
            raise LabError("%s is powered off: power it on with `virtlab fence %s -o on`" % (host.name, host.name))
        set_links(host, args.state)
    say("link of %s is %s" % (host.name, args.state))
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    """virtlab partition: cut a host off both networks (or --heal it); everything in it keeps running."""
    require_root()
    with lab_lock():
        lab = require_lab()
        host = lab.host(args.host)
        if host.power == "off":
            raise LabError("%s is powered off: power it on with `virtlab fence %s -o on`" % (host.name, host.name))
        set_links(host, "up" if args.heal else "down")
    if args.heal:
        say("healed %s: its links are up" % host.name)
    else:
        say(
            "partitioned %s: its links are down, its guests, libvirtd and virtlockd keep running "
            "(heal it with `virtlab partition %s --heal`)" % (host.name, host.name)
        )
    return 0


# ---------------------------------------------------------------------------------------------------
# A host's crash and its power (the lab's fence agent)
# ---------------------------------------------------------------------------------------------------


def kill_host(host: Host) -> list[str]:
    """SIGKILL everything of the host but its namespace holder; the command names of what was killed."""
    inode = netns_inode(host.netns)
    targets = [pid for pid in pids_in_netns(inode) if pid != host.holder_pid] if inode is not None else []
    names = []
    for pid in targets:
        with contextlib.suppress(OSError):
            names.append(Path("/proc/%d/comm" % pid).read_text().strip())
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    still = wait_gone(targets, 15.0)
    if still:
        raise LabError("processes of %s still run after SIGKILL: %s" % (host.name, " ".join(map(str, still))))
    host.libvirtd_pid = host.sshd_pid = host.virtlockd_pid = 0
    return names


def killed_summary(names: t.Sequence[str]) -> str:
    """``kill_host``'s command names as one phrase: "3 processes (libvirtd, sshd, virtlockd, 1 QEMU)"."""
    if not names:
        return "nothing was running"
    counts = collections.Counter("QEMU" if name.startswith("qemu") else name for name in names)
    qemu = counts.pop("QEMU", 0)
    parts = sorted(counts) + (["%d QEMU" % qemu] if qemu else [])
    return "%d process%s (%s)" % (len(names), "" if len(names) == 1 else "es", ", ".join(parts))


def cmd_crash(args: argparse.Namespace) -> int:
    """virtlab crash: a hung host: everything of it killed (SIGKILL), its power and links left as they are."""
    require_root()
    with lab_lock():
        lab = require_lab()
        host = lab.host(args.host)
        if host.power == "off":
            say("%s is powered off: nothing of it runs" % host.name)
            return 0
        killed = kill_host(host)
        host.crashed = True
        lab.save()
    say(
        "crashed %s: killed %s; its power stays on, its links %s (bring it back with `virtlab fence %s -o reboot`)"
        % (host.name, killed_summary(killed), "up" if link_is_up(host.veth) else "down", host.name)
    )
    return 0


def fence_status(power: str) -> tuple[str, int]:
    """What `fence HOST -o status` prints and its exit code, for the host's power ("on" or "off")."""
    if power == "off":
        return "Status: OFF", FENCE_STATUS_OFF
    return "Status: ON", FENCE_STATUS_ON


def power_off(lab: Lab, host: Host) -> None:
    """Everything of the host killed, its links down, its power recorded off."""
    kill_host(host)
    set_links(host, "down")
    host.power = "off"
    host.crashed = False
    lab.save()


def power_on(lab: Lab, host: Host) -> None:
    """Boot a powered-off host: links up, a fresh /run/libvirt, virtlockd, libvirtd and sshd started.

    libvirtd then starts the domains marked autostart (it does so only with a fresh /run/libvirt, as
    after a real boot).
    """
    set_links(host, "up")
    host.power = "on"
    lab.save()
    run_dir = host.host_root() / HOST_TMPFS.lstrip("/")
    for entry in run_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    start_host_libvirtd(lab, host)
    start_sshd(host)
    lab.save()


def cmd_fence(args: argparse.Namespace) -> int:
    """virtlab fence: the host's fence agent (fence-agents conventions): -o off, on, reboot or status.

    `status` prints "Status: ON" (exit 0) or "Status: OFF" (exit 2). `off` kills everything of the
    host, as `crash` does, takes its links down and records its power off; `on` boots it (links up,
    virtlockd, libvirtd, sshd; libvirtd starts the autostart domains); `reboot` is off, then on.
    """
    require_root()
    if args.action == "status":
        line, code = fence_status(require_lab().host(args.host).power)
        print(line)
        return code
    with lab_lock():
        lab = require_lab()
        host = lab.host(args.host)
        if args.action == "off" and host.power == "off":
            print("Success: Already OFF")
        elif args.action == "on" and host.power == "on":
            print("Success: Already ON")
        else:
            if args.action in ("off", "reboot") and host.power == "on":
                power_off(lab, host)
            if args.action in ("on", "reboot"):
                power_on(lab, host)
            print({"off": "Success: Powered OFF", "on": "Success: Powered ON", "reboot": "Success: Rebooted"}[args.action])
    return 0
