# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Perturbations of a running lab, for failure and convergence tests: a host's libvirtd killed,
started or restarted, its links down or up, and commands or the memory-dirtying workload run in a
guest through its agent (`kill-libvirtd`, `start-libvirtd`, `restart-libvirtd`, `link`, `exec`, `dirty`).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
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
    open_connection,
)
from .image import DIRTIER_PATH

# How long restart-libvirtd waits for libvirtd to exit after SIGTERM.
LIBVIRTD_STOP_TIMEOUT = 60.0
DIRTY_DIR = "/tmp/virtlab-dirty"


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


def start_host_libvirtd(lab: Lab, host: Host) -> None:
    """Start the host's libvirtd in the host's namespaces and wait until it answers; record its PID."""
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
        if pid_alive(host.libvirtd_pid, "libvirtd"):
            say("libvirtd on %s is already running (pid %d)" % (host.name, host.libvirtd_pid))
            return 0
        start_host_libvirtd(lab, host)
        say("started libvirtd on %s (pid %d)" % (host.name, host.libvirtd_pid))
    return 0


def restart_host_libvirtd(lab: Lab, host: Host) -> str:
    """Stop the host's libvirtd with SIGTERM (if it runs) and start it again; say what was stopped."""
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


def cmd_link(args: argparse.Namespace) -> int:
    """virtlab link: set a host's veths down or up (a network failure of that host, both networks)."""
    require_root()
    with lab_lock():
        lab = require_lab()
        host = lab.host(args.host)
        for veth in (host.veth, host.migration_veth):
            if veth:
                run([tool("ip"), "link", "set", veth, args.state])
    say("link of %s is %s" % (host.name, args.state))
    return 0
