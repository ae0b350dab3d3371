# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""ha_recover: find the failed hosts of a cluster, fence them, and restart their highly available VMs
elsewhere, never twice (the rules and the store are ``ha.py``'s).

One run, in this order:

1. Refuse bad input before anything: the shared storage, the hosts, fence programs that do not exist.
2. Check every host: a libvirt connection and a TCP connection to its SSH port. A host that answers
   neither is checked again, ``checks`` times in all, ``check_interval`` apart; only then has it failed.
3. Read every reachable host's VMs and bring the store up to date: each highly available VM's
   definition and host, and each host's list of VMs.
4. Clean each host that came back after a fence: the definitions of VMs restarted elsewhere meanwhile
   are removed there, once the VM is found defined on another host by UUID. Until that is done the host
   is no destination, and its maintenance hook refuses to start those VMs.
5. For each failed host with highly available VMs that run nowhere: fence it (its power state must read
   off), or, with ``without_fence: lease``, rely on lockd's disk leases. No fence and no lease: nothing
   of that host is restarted, and the result says why.
6. Restart those VMs in priority order through the one placement (memory, networks, pinning, affinity):
   define on the destination, mark the failed host's copy stale, start. A start libvirt refuses (a
   lease still held) is undone: the definition made on the destination is removed again.
7. Verify through libvirt on every reachable host where each VM now runs, and report that.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import re
import math
import shutil
import socket
import time
import typing as t

from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.connection import libvirt_connection
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.probe import probe_host
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import affinity, ha, placement, settings
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import domain as domxml
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import (
    MigrationError,
    libvirt_error_code,
    translate_libvirt_error,
    unexpected_error,
)
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.mark import now_iso
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.requests import HaRecoverRequest

try:
    import libvirt
except ImportError:  # reported by the module through missing_required_lib
    pass

# The libvirt error code of a start refused because a lock is held (lockd: the disk is in use elsewhere).
VIR_ERR_RESOURCE_BUSY = 87
# Words of libvirt's lock manager refusals (the code varies with the lock driver), each at the start of a
# word: QEMU's "-blockdev" in an unrelated start failure is no lock.
LEASE_WORDS = re.compile(r"\b(lock|resource busy|lease)", re.IGNORECASE)
# Removing a stale definition, or one made for a start that failed, never touches disks or NVRAM (possibly
# shared), and is not refused for a UEFI VM's NVRAM; its managed-save image and snapshot metadata are the host's own.
UNDEFINE_STALE_FLAGS = 1 | 2 | 8 | 16  # MANAGED_SAVE | SNAPSHOTS_METADATA | KEEP_NVRAM | CHECKPOINTS_METADATA
MAX_PARALLEL_CHECKS = 16
# coreutils' timeout: the command timed out, could not be run, or was not found.
TIMEOUT_EXIT = 124
TIMEOUT_CANNOT_RUN = 126
TIMEOUT_NOT_FOUND = 127
RunCommand = t.Callable[[t.List[str]], t.Tuple[int, str, str]]
FENCE_STATUS_INTERVAL_S = 1.0


@dataclasses.dataclass
class SeenVm:
    """One VM as a reachable host's libvirtd shows it."""

    name: str
    uuid: str
    host: str
    active: bool
    persistent: bool
    high_availability: bool
    priority: str
    xml: str

    def listing(self) -> t.Dict[str, t.Any]:
        return {"name": self.name, "uuid": self.uuid, "active": self.active, ha.SETTING: self.high_availability}


class HaRecovery:
    """One ``ha_recover`` run (see the module docstring)."""

    def __init__(
        self,
        req: HaRecoverRequest,
        check_mode: bool,
        log: t.Callable[[str], None] = lambda _message: None,
        sleep: t.Callable[[float], None] = time.sleep,
        which: t.Callable[[str], t.Optional[str]] = shutil.which,
        run_command: t.Optional[RunCommand] = None,
    ) -> None:
        self.req = req
        self.check_mode = check_mode
        self.log = log
        self.sleep = sleep
        self.which = which
        # The module's run_command (no shell): runs the fence commands.
        self.run_command = run_command
        self.store = ha.HaStore(req.shared_storage, dry_run=check_mode)
        self.conns: t.Dict[str, t.Any] = {}
        self.reach: t.Dict[str, ha.Reachability] = {}
        self.seen: t.Dict[str, t.List[SeenVm]] = {}
        self.warnings: t.List[str] = []
        self.events: t.List[t.Dict[str, str]] = []
        self.changed = False

    # -- 2. checks
    def _ssh_answers(self, host: ha.HaHost, errors: t.List[str]) -> bool:
        try:
            with socket.create_connection((host.ssh_host, host.ssh_port), timeout=self.req.connect_timeout):
                return True
        except OSError as exc:
            errors.append("SSH %s:%d: %s" % (host.ssh_host, host.ssh_port, exc))
            return False

    def _check_once(self, host: ha.HaHost, stack: contextlib.ExitStack) -> t.Tuple[t.Any, bool, t.List[str]]:
        """One check of ``host``: its libvirt and its SSH port at the same time, each within connect_timeout."""
        errors: t.List[str] = []
        ssh_errors: t.List[str] = []
        conn = None
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as ssh_pool:
            ssh_answer = ssh_pool.submit(self._ssh_answers, host, ssh_errors)
            opened = libvirt_connection(host.uri, self.req.username, self.req.password, connect_timeout=self.req.connect_timeout)
            try:
                conn = opened.__enter__()  # pylint: disable=unnecessary-dunder-call
                stack.push(opened.__exit__)
            except MigrationError as exc:
                errors.append("libvirt: %s" % exc.msg)
            except Exception as exc:  # pylint: disable=broad-exception-caught
                errors.append("libvirt: %s" % unexpected_error(exc, "open a libvirt connection", uri=host.uri).msg)
            ssh = ssh_answer.result()
        return conn, ssh, errors + ssh_errors

    def check_hosts(self, stack: contextlib.ExitStack) -> None:
        """Check each host until its libvirt answers, ``checks`` times at most; keep the libvirt connections.

        A host whose SSH answers is not failed, but is checked again for its libvirt (a busy host may
        answer late): only one whose libvirt never answers is left out as unreachable.
        """
        self.reach = {host.name: ha.Reachability() for host in self.req.hosts}
        pending = list(self.req.hosts)
        for round_ in range(self.req.checks):
            if round_:
                self.sleep(self.req.check_interval)
            with concurrent.futures.ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_CHECKS, len(pending))) as pool:
                outcomes = list(pool.map(lambda host: self._check_once(host, stack), pending))
            for host, (conn, ssh, errors) in zip(pending, outcomes):
                reach = self.reach[host.name]
                reach.checks += 1
                reach.ssh = reach.ssh or ssh
                reach.errors = errors
                if conn is not None:
                    reach.libvirt = True
                    self.conns[host.name] = conn
            pending = [host for host in pending if not self.reach[host.name].libvirt]
            if not pending:
                break

    # -- 3. reading the hosts and the store
    def read_host(self, host: str, conn: t.Any) -> t.List[SeenVm]:
        found = []
        try:
            domains = conn.listAllDomains(0)
        except libvirt.libvirtError as exc:
            raise translate_libvirt_error(exc, "list the VMs", uri=host) from exc
        for dom in domains:
            try:
                persistent = bool(dom.isPersistent())
                active = bool(dom.isActive())
                flags = libvirt.VIR_DOMAIN_XML_SECURE | (libvirt.VIR_DOMAIN_XML_INACTIVE if persistent else 0)
                xml = dom.XMLDesc(flags)
                uuid = dom.UUIDString().lower()
                name = dom.name()
            except libvirt.libvirtError:
                continue  # gone meanwhile
            facts = domxml.parse_domain_xml(xml)
            values = settings.effective(facts["migration_settings"], self.req.cluster_policy, self.req.global_policy)
            found.append(SeenVm(name, uuid, host, active, persistent, bool(values.get(ha.SETTING)), str(values.get("priority")), xml))
        return found

    def read_hosts(self) -> None:
        for name, conn in sorted(self.conns.items()):
            try:
                self.seen[name] = self.read_host(name, conn)
            except MigrationError as exc:
                self.warnings.append("cannot list the VMs of %s: %s; it is left out" % (name, exc.msg))

    def where(self, uuid: str) -> t.List[SeenVm]:
        """Every reachable host's copy of the VM ``uuid``."""
        return [vm for vms in self.seen.values() for vm in vms if vm.uuid == uuid]

    def sync_store(self, not_protected: t.List[t.Dict[str, t.Any]]) -> t.List[str]:
        """Bring the store up to date with what the reachable hosts show; what changed, described."""
        written: t.List[str] = []
        now = time.time()
        copies: t.Dict[str, t.List[SeenVm]] = {}
        for host, vms in sorted(self.seen.items()):
            if self.store.write_listing(host, [vm.listing() for vm in vms], now):
                written.append("hosts/%s.json" % host)
            for vm in vms:
                copies.setdefault(vm.uuid, []).append(vm)
        for uuid, found in sorted(copies.items()):
            current = next((vm for vm in found if vm.active), None) or next((vm for vm in found if vm.persistent), found[0])
            if not current.high_availability:
                if self.store.forget(uuid):
                    written.append("forgot %s (not highly available)" % current.name)
                continue
            outside = ha.disks_off_shared_storage(current.xml, self.req.shared_storage)
            if outside:
                reason = "disk(s) not on the shared storage: %s" % ", ".join(outside)
                not_protected.append({"vm": current.name, "uuid": uuid, "host": current.host, "reason": reason})
                if self.store.forget(uuid):
                    written.append("forgot %s (disks not on the shared storage)" % current.name)
                continue
            if self.store.write_definition(uuid, current.xml):
                written.append("vms/%s.xml (%s)" % (uuid, current.name))
            if self.store.write_location(uuid, current.host):
                written.append("vms/%s.host (%s on %s)" % (uuid, current.name, current.host))
        everyone = all(host.name in self.seen for host in self.req.hosts)
        if everyone:
            for uuid in self.store.uuids():
                if uuid not in copies and self.store.forget(uuid):
                    written.append("forgot %s (defined on no host)" % uuid)
        return written

    # -- 4. hosts back after a fence
    def clean_returned(self, host: str) -> t.Tuple[t.List[t.Dict[str, t.Any]], t.List[t.Dict[str, t.Any]]]:
        """Remove ``host``'s stale definitions (cleaned, kept: each with the reason)."""
        cleaned, kept = [], []
        conn = self.conns[host]
        for uuid, record in sorted(self.store.stale(host).items()):
            name = record.get("vm") or uuid
            here = [vm for vm in self.seen.get(host, []) if vm.uuid == uuid]
            elsewhere = [vm for vm in self.where(uuid) if vm.host != host]
            if not here:
                if not self.check_mode:
                    self.store.clear_stale(host, uuid)
                continue
            vm = here[0]
            if vm.active:
                kept.append({"host": host, "vm": vm.name, "uuid": uuid, "reason": "it runs on %s: its copy there is not touched; check both hosts" % host})
                continue
            if not elsewhere:
                kept.append({"host": host, "vm": vm.name, "uuid": uuid, "reason": "it is defined on no other reachable host"})
                continue
            entry = {"host": host, "vm": vm.name, "uuid": uuid, "runs_on": sorted({other.host for other in elsewhere if other.active}),
                     "defined_on": sorted({other.host for other in elsewhere})}
            if not self.check_mode:
                try:
                    dom = conn.lookupByUUIDString(uuid)
                    if dom.isActive():
                        kept.append(dict(entry, reason="it started on %s meanwhile" % host))
                        continue
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.setAutostart(0)
                    dom.undefineFlags(UNDEFINE_STALE_FLAGS)
                except libvirt.libvirtError as exc:
                    kept.append(dict(entry, reason="cannot remove it: %s" % exc.get_error_message()))
                    continue
                self.store.clear_stale(host, uuid)
                self.seen[host] = [other for other in self.seen[host] if other.uuid != uuid]
            cleaned.append(entry)
            self.log("removed the stale definition of %s (%s) on %s" % (name, uuid, host))
        return cleaned, kept

    # -- 5. fencing
    def _command(self, argv: t.Sequence[str], timeout: float) -> t.Tuple[t.Optional[int], str]:
        """Run a fence command, at most ``timeout`` seconds (coreutils' timeout stops it); its exit code and output."""
        if self.run_command is None:
            return None, "no command runner"
        limited = ["timeout", "--kill-after=5", "%d" % max(1, int(math.ceil(timeout)))] + list(argv)
        try:
            code, out, err = self.run_command(limited)
        except OSError as exc:
            return None, str(exc)
        output = ((out or "") + (err or "")).strip()
        if code == TIMEOUT_EXIT:
            return None, "timed out after %d s" % timeout
        if code in (TIMEOUT_CANNOT_RUN, TIMEOUT_NOT_FOUND):
            return None, output[-500:] or "cannot run %s" % argv[0]
        return code, output[-500:]

    def fence(self, host: ha.HaHost) -> t.Dict[str, t.Any]:
        """Power ``host`` off with its fence command and read the power state back until it says off."""
        deadline = time.monotonic() + self.req.fence_timeout
        code, output = self._command(ha.fence_argv(host.fence_command, "off"), self.req.fence_timeout)
        detail = "fence off exited %s%s" % (code, ": %s" % output if output else "")
        while True:
            left = max(1.0, deadline - time.monotonic())
            status, said = self._command(ha.fence_argv(host.fence_command, "status"), left)
            if ha.fence_status(status) is True:
                self.changed = True
                return {"outcome": ha.CONFIRMED_OFF, "detail": "%s; status reads off (exit %d)" % (detail, status)}
            if time.monotonic() >= deadline:
                words = {None: "unknown", False: "on"}[ha.fence_status(status)]
                return {
                    "outcome": ha.FENCE_FAILED,
                    "detail": "%s; status reads %s (exit %s%s) after %d s" % (detail, words, status, ": %s" % said if said else "", self.req.fence_timeout),
                }
            self.sleep(FENCE_STATUS_INTERVAL_S)

    # -- 6. restarting
    def destinations(self, vm_lease: bool, stale_hosts: t.Set[str]) -> t.Tuple[t.List[ha.HaHost], t.Dict[str, str]]:
        usable, excluded = [], {}
        for host in self.req.hosts:
            if host.name not in self.seen:
                continue
            if host.candidate.maintenance:
                excluded[host.name] = "is in maintenance"
            elif host.name in stale_hosts:
                excluded[host.name] = "still has stale definitions of VMs restarted elsewhere"
            elif vm_lease and self.store.locking(host.name) is None:
                excluded[host.name] = "does not use lockd on the shared lockspace (role ha_locking), so a lease cannot protect the VM"
            else:
                usable.append(host)
        return usable, excluded

    def start(self, vm: t.Dict[str, t.Any], host: str, failed_host: str) -> t.Optional[t.Tuple[str, str]]:
        """Define and start ``vm`` on ``host``; None when it runs, else (rule, reason) with nothing left behind."""
        conn = self.conns[host]
        uuid, xml = vm["uuid"], vm["xml"]
        existed = any(other.host == host for other in self.where(uuid))
        try:
            dom = conn.defineXML(xml)
        except libvirt.libvirtError as exc:
            return ha.RULE_START, "%s refused the definition: %s" % (host, exc.get_error_message())
        self.store.mark_stale(failed_host, uuid, {"vm": vm["vm"], "uuid": uuid, "restarted_on": host, "at": now_iso()})
        try:
            dom.create()
        except libvirt.libvirtError as exc:
            message = exc.get_error_message() or str(exc)
            lease = libvirt_error_code(exc) == VIR_ERR_RESOURCE_BUSY or LEASE_WORDS.search(message) is not None
            undone = ""
            if not existed:
                try:
                    if not dom.isActive():
                        dom.undefineFlags(UNDEFINE_STALE_FLAGS)
                except libvirt.libvirtError as undo:
                    undone = "; removing the definition made on %s failed too: %s" % (host, undo.get_error_message())
            self.store.clear_stale(failed_host, uuid)
            if lease:
                return ha.RULE_LEASE, "%s refused to start it: its disks are locked (the lease is held, the VM may still run on %s): %s%s" % (
                    host, failed_host, message, undone)
            return ha.RULE_START, "%s refused to start it: %s%s" % (host, message, undone)
        self.changed = True
        return None

    def run(self) -> t.Dict[str, t.Any]:
        req = self.req
        missing = ha.missing_fence_programs(req.hosts, self.which)
        if missing:
            raise ha.HaError("fence command not found for host(s) %s; nothing was done" % ", ".join(missing))
        self.store.check()
        result: t.Dict[str, t.Any] = {
            "failed_hosts": [], "restarted": [], "not_restarted": [], "left_down": [], "cleaned": [], "kept_stale": [],
            "not_protected": [], "plan": [], "unreachable": [], "store": [],
        }
        with contextlib.ExitStack() as stack:
            self.check_hosts(stack)
            self.read_hosts()
            result["store"] = self.sync_store(result["not_protected"])
            if result["store"]:
                self.changed = True
            for host in sorted(self.seen):
                cleaned, kept = self.clean_returned(host)
                result["cleaned"].extend(cleaned)
                result["kept_stale"].extend(kept)
            stale_hosts = {entry["host"] for entry in result["kept_stale"]}
            if result["cleaned"]:
                self.changed = True
            failed = [host for host in req.hosts if self.reach[host.name].failed(req.checks)]
            for host in req.hosts:
                reach = self.reach[host.name]
                if host.name not in self.conns and not reach.failed(req.checks):
                    result["unreachable"].append(
                        {"host": host.name, "checks": reach.checks, "libvirt": reach.libvirt, "ssh": reach.ssh, "errors": reach.errors}
                    )
            to_restart = []
            for host in failed:
                entry, vms = self.assess_failed(host, result)
                result["failed_hosts"].append(entry)
                to_restart.extend(vm for vm in vms if vm["uuid"] not in {other["uuid"] for other in to_restart})
            self.restart_all(to_restart, stale_hosts, result)
            self.verify(result)
            # The hosts this run changed, read again: a rerun finds the store current (libvirt completes a
            # definition when it takes it, so the restarted VMs' definitions are kept as their new hosts show them).
            touched = {entry["to"] for entry in result["restarted"]} | {entry["host"] for entry in result["cleaned"]}
            for host in sorted(touched & set(self.seen)):
                with contextlib.suppress(MigrationError):
                    self.seen[host] = self.read_host(host, self.conns[host])
            if touched:
                result["store"].extend(entry for entry in self.sync_store([]) if entry not in result["store"])
        restarted = len(result["restarted"])
        result["changed"] = self.changed
        result["events"] = self.events
        result["warnings"] = self.warnings
        result["check_mode"] = self.check_mode
        result["msg"] = self.summary(result, failed_count=len(result["failed_hosts"]), restarted=restarted)
        if result["not_restarted"] and not self.check_mode:
            raise ha.HaError(result["msg"], **{key: value for key, value in result.items() if key != "msg"})
        return result

    def assess_failed(self, host: ha.HaHost, result: t.Dict[str, t.Any]) -> t.Tuple[t.Dict[str, t.Any], t.List[t.Dict[str, t.Any]]]:
        """A failed host: its fence, and its highly available VMs that may restart now."""
        reach = self.reach[host.name]
        entry: t.Dict[str, t.Any] = {"name": host.name, "checks": reach.checks, "errors": reach.errors}
        listing = self.store.listing(host.name) or {}
        last_seen = {vm.get("uuid"): vm for vm in listing.get("vms") or [] if isinstance(vm, dict) and vm.get("uuid")}
        uuids = {uuid for uuid in self.store.uuids() if self.store.location(uuid) == host.name}
        # A VM the listing shows but the store places on another host moved there since: that host answers for it.
        uuids |= {uuid for uuid, vm in last_seen.items() if vm.get(ha.SETTING) and self.store.location(uuid) in (None, host.name)}
        vms = []
        for uuid in sorted(uuids):
            copies = self.where(uuid)
            name = (last_seen.get(uuid) or {}).get("name") or uuid
            if any(copy.active for copy in copies):
                continue  # runs on a reachable host: nothing to do (a rerun, or it moved before the failure)
            if uuid in last_seen and not last_seen[uuid].get("active"):
                # Shut off when the host was last read: it was down before the failure, and stays down.
                result["left_down"].append({"vm": name, "uuid": uuid, "from": host.name, "was_running": False})
                continue
            xml = self.store.definition(uuid)
            if xml is None:
                result["not_restarted"].append({"vm": name, "uuid": uuid, "from": host.name, "rule": ha.RULE_STORE,
                                                "reason": "no definition of it in the high-availability store (are its disks on the shared storage?)"})
                continue
            facts = domxml.parse_domain_xml(xml)
            values = settings.effective(facts["migration_settings"], self.req.cluster_policy, self.req.global_policy)
            vms.append({"vm": facts.get("name") or name, "uuid": uuid, "priority": values["priority"], "from": host.name, "xml": xml,
                        "facts": facts, "settings": values, "defined_on": sorted(copy.host for copy in copies)})
        for uuid, vm in sorted(last_seen.items()):
            if uuid in uuids or vm.get(ha.SETTING) or any(copy.active for copy in self.where(uuid)):
                continue
            result["left_down"].append({"vm": vm.get("name") or uuid, "uuid": uuid, "from": host.name, "was_running": bool(vm.get("active"))})
        if not vms:
            entry["fence"] = {"outcome": ha.NOT_NEEDED, "detail": "no highly available VM of it needs a restart"}
            return entry, []
        lease = False
        if host.fence_command:
            entry["fence"] = {"outcome": ha.WOULD_FENCE, "detail": "check mode"} if self.check_mode else self.fence(host)
            allowed = entry["fence"]["outcome"] in (ha.CONFIRMED_OFF, ha.WOULD_FENCE)
            why = "the fence of %s was not confirmed (%s); restarting could run it twice" % (host.name, entry["fence"]["detail"])
        else:
            entry["fence"] = {"outcome": ha.NOT_CONFIGURED, "detail": "no fence command for %s" % host.name}
            lease = True
            if self.req.without_fence != "lease":
                allowed = False
                why = "%s has no fence command and without_fence is refuse: restarting could run it twice" % host.name
            elif self.store.locking(host.name) is None:
                allowed = False
                why = "%s has no fence command and no lockd record (role ha_locking): no lease protects its disks" % host.name
            else:
                allowed, why = True, ""
        if not allowed:
            for vm in vms:
                result["not_restarted"].append({"vm": vm["vm"], "uuid": vm["uuid"], "priority": vm["priority"], "from": host.name,
                                                "rule": ha.RULE_FENCE, "reason": why})
            return entry, []
        when = now_iso()
        for vm in ha.restart_order(vms):
            vm["lease"] = lease
            if not self.check_mode:
                self.events.append(ha.event("failed", vm["vm"], host.name, when))
        return entry, vms

    def restart_all(self, vms: t.List[t.Dict[str, t.Any]], stale_hosts: t.Set[str], result: t.Dict[str, t.Any]) -> None:
        if not vms:
            return
        # A host that is not failed but cannot be read might run one of these VMs (moved there unnoticed): only
        # lockd leases, held there too, can then keep a second start out.
        unverified = sorted(host.name for host in self.req.hosts if host.name not in self.seen and not self.reach[host.name].failed(self.req.checks))
        if unverified and not all(self.store.locking(name) is not None for name in unverified):
            why = "host(s) %s cannot be read (not failed, libvirt does not answer) and use no lockd lease: the VM might run there" % ", ".join(unverified)
            for vm in ha.restart_order(vms):
                result["not_restarted"].append({"vm": vm["vm"], "uuid": vm["uuid"], "priority": vm["priority"], "from": vm["from"],
                                                "rule": ha.RULE_UNVERIFIED, "reason": why})
            return
        for vm in vms:
            vm["lease"] = vm["lease"] or bool(unverified)
        ordered = ha.restart_order(vms)
        shared = self.req.shared_storage
        needs = {}
        for vm in ordered:
            requirements = domxml.parse_requirements(vm["xml"])
            base = placement.needs_from_facts(vm["facts"], requirements, vm["settings"])
            local = frozenset(path for path in base.disk_paths if not ha.on_shared_storage(path, shared))
            needs[vm["uuid"]] = dataclasses.replace(base, disk_paths=local)
        probed: t.Dict[str, placement.HostState] = {}
        for host in self.req.hosts:
            if host.name in self.seen:
                try:
                    probed[host.name] = probe_host(self.conns[host.name], host.candidate, list(needs.values()), {}, self.req.memory_reserved_mib)
                except MigrationError as exc:
                    self.warnings.append("cannot read %s as a destination: %s" % (host.name, exc.msg))
        where = {vm.name: vm.host for vms in self.seen.values() for vm in vms if vm.active}
        groups = affinity.Affinity(self.req.groups, where) if self.req.groups else None
        pending = placement.PendingLoad()
        for vm in ordered:
            usable, excluded = self.destinations(vm["lease"], stale_hosts)
            if vm["defined_on"]:
                usable = [host for host in usable if host.name in vm["defined_on"]]
                excluded.update({name: "the VM is defined on %s" % ", ".join(vm["defined_on"]) for name in probed if name not in vm["defined_on"]})
            states = [probed[host.name] for host in usable if host.name in probed]
            chosen, rejected = placement.choose(needs[vm["uuid"]], states, None, pending, affinity=groups)
            if chosen is None:
                rejected.update({name: [why] for name, why in excluded.items()})
                result["not_restarted"].append({"vm": vm["vm"], "uuid": vm["uuid"], "priority": vm["priority"], "from": vm["from"],
                                                "rule": ha.RULE_PLACEMENT, "reason": placement.explain(vm["vm"], rejected)})
                continue
            result["plan"].append({"vm": vm["vm"], "uuid": vm["uuid"], "priority": vm["priority"], "from": vm["from"], "to": chosen.name})
            if self.check_mode:
                pending.add(chosen.name, needs[vm["uuid"]])
                self.changed = True
                continue
            refused = self.start(vm, chosen.name, vm["from"])
            if refused is not None:
                rule, reason = refused
                result["not_restarted"].append({"vm": vm["vm"], "uuid": vm["uuid"], "priority": vm["priority"], "from": vm["from"], "to": chosen.name,
                                                "rule": rule, "reason": reason})
                continue
            pending.add(chosen.name, needs[vm["uuid"]])
            if groups is not None:
                groups.move(vm["vm"], chosen.name)
            self.store.write_location(vm["uuid"], chosen.name)
            result["restarted"].append({"vm": vm["vm"], "uuid": vm["uuid"], "priority": vm["priority"], "from": vm["from"], "to": chosen.name})

    # -- 7. what libvirt shows
    def verify(self, result: t.Dict[str, t.Any]) -> None:
        """Each restarted VM as libvirt shows it now on every reachable host; a VM not running only there fails."""
        confirmed = []
        for entry in result["restarted"]:
            running = []
            for host, conn in sorted(self.conns.items()):
                try:
                    dom = conn.lookupByUUIDString(entry["uuid"])
                    if dom.isActive():
                        running.append(host)
                except libvirt.libvirtError:
                    continue
            entry["running_on"] = running
            if running == [entry["to"]]:
                confirmed.append(entry)
                self.events.append(ha.event("restarted", entry["vm"], entry["to"], now_iso()))
            else:
                reason = "after the start, libvirt shows it running on %s" % (", ".join(running) or "no host")
                result["not_restarted"].append(dict(entry, rule=ha.RULE_START, reason=reason))
        result["restarted"] = confirmed

    @staticmethod
    def summary(result: t.Mapping[str, t.Any], failed_count: int, restarted: int) -> str:
        if not failed_count:
            words = "no host has failed"
        else:
            words = "%d failed host(s) (%s)" % (failed_count, ", ".join("%s: fence %s" % (h["name"], h["fence"]["outcome"]) for h in result["failed_hosts"]))
        parts = [words]
        if result["plan"] and result.get("check_mode"):
            parts.append("would restart %d VM(s)" % len(result["plan"]))
        parts.append("restarted %d VM(s)" % restarted)
        if result["not_restarted"]:
            parts.append("could not restart %s" % "; ".join("%s (%s: %s)" % (vm["vm"], vm["rule"], vm["reason"]) for vm in result["not_restarted"]))
        if result["left_down"]:
            parts.append("left down (not highly available): %s" % ", ".join(vm["vm"] for vm in result["left_down"]))
        if result["cleaned"]:
            parts.append("removed %d stale definition(s)" % len(result["cleaned"]))
        return "; ".join(parts)
