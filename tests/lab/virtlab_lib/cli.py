# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The virtlab command line: every subcommand and option (argparse), and main(), which runs one command
and turns lab errors into messages and exit codes.
"""

from __future__ import annotations

import argparse
import sys
import typing as t

from .common import CACHE_DIR, STATE_DIR, LabError, import_dependencies, raise_on_sigterm
from .hosts import (
    FAILOVER_MEMORY_MIB,
    FAILOVER_MODES,
    LOCAL_DISK_GUEST_PATH,
    LOCAL_POOL_NAME,
    LOCAL_POOL_PATH,
    STANDBY_ALIAS,
    VF_STANDIN_ALIAS,
    VF_STANDIN_MODEL,
    cmd_add_vm,
    cmd_check,
    cmd_down,
    cmd_remove_vm,
    cmd_ssh,
    cmd_status,
    cmd_up,
)
from .image import cmd_image
from .perturbations import (
    FENCE_ACTIONS,
    FENCE_STATUS_OFF,
    FENCE_STATUS_ON,
    cmd_auth,
    cmd_crash,
    cmd_dirty,
    cmd_exec,
    cmd_fence,
    cmd_kill_libvirtd,
    cmd_link,
    cmd_partition,
    cmd_restart_libvirtd,
    cmd_start_libvirtd,
)


def parser() -> argparse.ArgumentParser:
    """The virtlab command line."""
    top = argparse.ArgumentParser(
        prog="virtlab",
        description="A small cluster of real libvirt hosts on this machine (network, mount and UTS namespaces, "
        "each with its own libvirtd and sshd), for testing virtops.migration.",
        epilog="State: %s (VIRTLAB_STATE); guest image cache: %s (VIRTLAB_CACHE). See tests/lab/README.md."
        % (STATE_DIR, CACHE_DIR),
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: t.Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    sub = add("up", cmd_up, "create the lab (tearing down one that is up)")
    sub.add_argument("--hosts", type=int, required=True, metavar="N", help="number of hosts (CLUSTER-h1..hN)")
    sub.add_argument("--cluster", default="lab", help="cluster name: host prefix and inventory group (default: lab)")
    sub.add_argument(
        "--vm",
        action="append",
        default=[],
        metavar="NAME:MEMORY_MIB[:PRIORITY][@HOSTINDEX]",
        help="a VM to define and start (priority low|medium|high, default medium; host default 1)",
    )
    sub.add_argument(
        "--tiny-vm",
        action="append",
        default=[],
        metavar="NAME[:MEMORY_MIB][:PRIORITY][@HOSTINDEX]",
        help="a tiny VM to define and start: firmware only, no kernel, disk or guest agent (memory default 32 MiB)",
    )
    sub.add_argument(
        "--python-vm",
        action="append",
        default=[],
        metavar="NAME:MEMORY_MIB[:PRIORITY][@HOSTINDEX]",
        help="a VM to define and start whose guest has Python 3 (see add-vm --python)",
    )
    sub.add_argument("--inventory", required=True, metavar="FILE", help="where to write the Ansible inventory")
    sub.add_argument("--no-wait", action="store_true", help="do not wait for the guest agents to answer")
    sub.add_argument(
        "--wait-timeout",
        type=float,
        default=180.0,
        metavar="SECONDS",
        help="how long to wait for the guest agents (default 180)",
    )

    sub = add("down", cmd_down, "stop and remove the lab (when nothing is up, only sets the blackhole routes)")

    sub = add("image", cmd_image, "build the guest kernel and initramfs into the cache")
    sub.add_argument("--force", action="store_true", help="rebuild even if cached")
    sub.add_argument(
        "--python", action="store_true", help="also build the Python variant of the initramfs (see add-vm --python)"
    )

    sub = add("status", cmd_status, "show hosts, daemons and VMs (exit 1 when no lab is up)")
    sub.add_argument("--json", action="store_true", help="machine-readable output")

    sub = add(
        "check",
        cmd_check,
        "verify that no lab VM is lost (each defined on exactly one host and running there) and that no host "
        "marked in maintenance runs a VM",
    )
    sub.add_argument(
        "--allow-stopped",
        action="append",
        default=[],
        metavar="NAME",
        help="this VM may be shut off (still defined on exactly one host, running nowhere)",
    )

    sub = add("exec", cmd_exec, "run a command in a guest through its agent (exit code is the command's)")
    sub.add_argument("vm")
    sub.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the command (default 60)")
    sub.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")

    sub = add("dirty", cmd_dirty, "start a workload that rewrites guest memory (or --stop it)")
    sub.add_argument("vm")
    sub.add_argument("--mib", type=int, help="MiB of guest memory to rewrite on every pass")
    sub.add_argument("--rate", type=float, default=10.0, help="passes per second at most (default 10; 0: no pause)")
    sub.add_argument(
        "--tlb-flush-us",
        type=int,
        default=1000,
        help="make the guest flush its TLB this often, in microseconds (default 1000; 0: never, which lets "
        "QEMU 7.2 under TCG lose the guest's writes during a live migration)",
    )
    sub.add_argument("--stop", action="store_true", help="stop the workload")

    sub = add("kill-libvirtd", cmd_kill_libvirtd, "stop a host's libvirtd (QEMU processes keep running)")
    sub.add_argument("host", help="host name, hN or index")
    sub.add_argument("--signal", choices=("KILL", "TERM"), default="KILL", help="KILL (a crash, default) or TERM")

    sub = add("start-libvirtd", cmd_start_libvirtd, "start a host's libvirtd again")
    sub.add_argument("host", help="host name, hN or index")

    sub = add("restart-libvirtd", cmd_restart_libvirtd, "stop a host's libvirtd (SIGTERM) and start it again")
    sub.add_argument("host", help="host name, hN or index")

    sub = add(
        "auth",
        cmd_auth,
        "set how the hosts' libvirtd authenticates TCP and TLS clients, then restart it (guests keep running)",
    )
    sub.add_argument("host", nargs="+", help="host names, hN or indexes")
    which = sub.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--sasl",
        metavar="USER",
        help="SASL (SCRAM-SHA-256) for both listeners, with USER in the host's user database; libvirtd accepts "
        "SCRAM only on TLS connections, so qemu+tcp:// clients are refused",
    )
    which.add_argument("--none", action="store_true", help="no authentication (how a lab starts)")
    sub.add_argument("--password-file", metavar="FILE", help="the SASL user's password (one line)")
    sub = add("link", cmd_link, "set a host's network links (lab and migration network) down or up")
    sub.add_argument("host", help="host name, hN or index")
    sub.add_argument("state", choices=("down", "up"))

    sub = add(
        "partition",
        cmd_partition,
        "cut a host off the network (both links down, as `link HOST down`); its guests, libvirtd and virtlockd keep running",
    )
    sub.add_argument("host", help="host name, hN or index")
    sub.add_argument("--heal", action="store_true", help="set its links up again (as `link HOST up`)")

    sub = add(
        "crash",
        cmd_crash,
        "a hung host: SIGKILL everything of it (guests' QEMU, libvirtd, virtlockd, sshd); its power stays on",
    )
    sub.add_argument("host", help="host name, hN or index")

    sub = add(
        "fence",
        cmd_fence,
        "the host's fence agent (fence-agents conventions): off kills everything of it and takes its links down, "
        "on boots it (links, virtlockd, libvirtd, sshd; libvirtd starts the autostart domains), reboot is off then "
        "on, status prints \"Status: ON\" (exit %d) or \"Status: OFF\" (exit %d)" % (FENCE_STATUS_ON, FENCE_STATUS_OFF),
    )
    sub.add_argument("host", help="host name, hN or index")
    sub.add_argument(
        "-o",
        "--action",
        choices=FENCE_ACTIONS,
        default="reboot",
        help="off, on, reboot or status (default reboot, as fence agents)",
    )

    sub = add("add-vm", cmd_add_vm, "define and start more lab VMs")
    sub.add_argument("vm", nargs="+", metavar="NAME:MEMORY_MIB[:PRIORITY][@HOSTINDEX]")
    sub.add_argument(
        "--tiny",
        action="store_true",
        help="tiny VMs: firmware only, no kernel, disk or guest agent (MEMORY_MIB may be left out: 32 MiB); "
        "nothing waits for them",
    )
    sub.add_argument(
        "--failover",
        choices=FAILOVER_MODES,
        metavar="MODE",
        help='lab stand-ins for SR-IOV failover VMs (q35, MEMORY_MIB may be left out: %d MiB). Their "VF" is the '
        "lab stand-in for an SR-IOV VF: an emulated %s, not a VF (alias %s); the virtio backup is %s. "
        "MODE: teaming (QEMU's failover pair: "
        "the backup has <teaming type='persistent'/>, the %s is its primary through failover_pair_id), "
        "teaming-stuck (the same, but the guest never releases the primary: a live migration waits in "
        "wait-unplug), bond (an active-backup bond0 in the guest, the %s primary; unplug it before a "
        "migration, plug the same interface back after it)"
        % (FAILOVER_MEMORY_MIB, VF_STANDIN_MODEL, VF_STANDIN_ALIAS, STANDBY_ALIAS, VF_STANDIN_MODEL, VF_STANDIN_MODEL),
    )
    sub.add_argument(
        "--python",
        action="store_true",
        help="guests with Python 3 (Debian's python3, a trimmed standard library), so that Ansible modules run in "
        "them through the community.libvirt.libvirt_qemu connection; also the users nobody/nogroup and a system "
        "log written to the serial console. Boots slower than the normal guest; may be combined with --failover",
    )
    sub.add_argument(
        "--shared-disk",
        type=int,
        metavar="MIB",
        help="give each VM a raw sparse disk file of MIB MiB on the lab's shared storage "
        "(SHARED/disks/NAME.img, a virtio disk, cache none); remove-vm deletes it",
    )
    sub.add_argument(
        "--disk",
        metavar="SIZE",
        help="give each VM a local disk: a thin qcow2 volume NAME.qcow2 of SIZE (256M, 1G, 512MiB: binary units, "
        "1M to 1T) in the storage pool %s (%s on every host, each host's own) of its host, the next free virtio "
        "disk (cache none), %s in the guest; remove-vm deletes it on every host that has a copy"
        % (LOCAL_POOL_NAME, LOCAL_POOL_PATH, LOCAL_DISK_GUEST_PATH),
    )
    sub.add_argument("--no-wait", action="store_true", help="do not wait for the guest agents to answer")
    sub.add_argument("--wait-timeout", type=float, default=180.0, metavar="SECONDS")

    sub = add(
        "remove-vm", cmd_remove_vm, "destroy and undefine lab VMs wherever they are, and delete their shared and local disks"
    )
    sub.add_argument("name", nargs="+")

    sub = add("ssh", cmd_ssh, "SSH to a lab host as root with the lab key")
    sub.add_argument("host", help="host name, hN or index")
    sub.add_argument("command", nargs=argparse.REMAINDER, help="[-- CMD ARGS...]")
    return top


def main(argv: t.Sequence[str]) -> int:
    """Entry point: parse, run one command, turn lab errors into messages and exit codes."""
    args = parser().parse_args(argv)
    import_dependencies()
    raise_on_sigterm()
    try:
        handler: t.Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except KeyboardInterrupt:
        print("virtlab: interrupted", file=sys.stderr)
        return 130
    except LabError as exc:
        print("virtlab: error: %s" % exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
