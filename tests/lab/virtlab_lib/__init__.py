# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""virtlab: a small cluster of real libvirt hypervisor hosts on one machine.

Each lab host is a network namespace (a veth on the lab bridge and one on the migration bridge, an
address on each), a private mount namespace (per-host /etc/libvirt, /run/libvirt, /var/lib/libvirt, ...
bind-mounted from the lab state directory) and a UTS namespace (its own hostname), held open by one
long-lived "holder" process. Inside
run a real libvirtd (reachable as qemu+tcp://ADDRESS/system) and an sshd that accepts the lab key, so
Ansible reaches a lab host exactly as it reaches a production hypervisor. The guests are a tiny Linux
(Debian cloud kernel, busybox, qemu-guest-agent) booted directly from kernel and initrd files that
every host sees at the same path, so live migration copies memory only.

The command is tests/lab/virtlab; its code is here, one module per concern:

- common: paths, the lab state file, the lab lock, process and shell helpers, the libvirt/PyYAML import
- image: the guest kernel and initramfs (and the workload built into it), the KVM probe, `image`
- hosts: namespaces, daemons (virtlockd, libvirtd, sshd), networks, the shared storage, inventory, lab
  VMs and their shared disks, teardown; `up`, `down`, `status`, `check`, `add-vm`, `remove-vm`, `ssh`
- perturbations: libvirtd killed or restarted, links down, a host partitioned, crashed or fenced
  (its power off and on), commands and workloads in guests
- cli: the command line and main()

Run ``virtlab --help`` or read tests/lab/README.md.
"""
