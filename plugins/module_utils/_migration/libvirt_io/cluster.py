# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""Reading a whole cluster for the balancer: every host and every VM, with the CPU its VMs use.

One libvirt connection per host, all hosts at the same time, kept open for the whole reading:

1. each host's identity, CPUs and memory, and every VM (its XML read once: facts, requirements,
   effective settings, placement record; whether a libvirt job runs for it), and a first reading of
   every running VM's CPU time (``getAllDomainStats``, one call per host);
2. ``samples`` more readings of the CPU time, ``interval`` seconds apart: each gives, per host, the
   share of its CPUs its VMs used over that interval (the window a policy's thresholds are judged
   over) and, per VM, the CPU it used (100 = one CPU);
3. what placement needs of each host as a destination for the cluster's running VMs
   (``probe.probe_host``: free memory after the reserve, networks, bridges, storage, CPU
   compatibility, SR-IOV VFs), on the same connection.

The CPU counted is the VMs' own, as libvirt accounts it, so the reading means the same on a host that
runs other work and in a lab whose hosts share one machine. A host that cannot be read comes back with
its error and no VMs (the balancer leaves it out).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
import typing as t
import xml.etree.ElementTree as ET

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import balance, placement, rules
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import domain as domxml
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import metadata
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import (
    MigrationError,
    VmNotFoundError,
    is_not_found,
    translate_libvirt_error,
    unexpected_error,
)
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.hostinfo import parse_capabilities
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.plan import Candidate
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.probe import MAX_PARALLEL_PROBES, Connect, CpuCheck, probe_host
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.runner import job_stats

try:
    import libvirt
except ImportError:  # reported by the module through missing_required_lib
    pass

NS_PER_S = 1e9


@dataclasses.dataclass
class _Host:
    """One host while it is read."""

    candidate: Candidate
    conn: t.Any = None
    error: t.Optional[str] = None
    error_details: t.Dict[str, t.Any] = dataclasses.field(default_factory=dict)
    name: str = ""
    uuid: t.Optional[str] = None
    cpus: int = 1
    memory_mib: int = 0
    vms: t.List[rules.VmToMove] = dataclasses.field(default_factory=list)
    records: t.Dict[str, t.Dict[str, t.Any]] = dataclasses.field(default_factory=dict)
    cpu_checks: t.Dict[str, CpuCheck] = dataclasses.field(default_factory=dict)
    migrating: t.List[str] = dataclasses.field(default_factory=list)
    # Per reading: (monotonic seconds, {VM UUID: CPU time in ns}).
    readings: t.List[t.Tuple[float, t.Dict[str, int]]] = dataclasses.field(default_factory=list)
    state: t.Optional[placement.HostState] = None


@dataclasses.dataclass
class ClusterReading:
    """The cluster as the balancer plans on it, and how long reading it took (seconds per phase)."""

    hosts: t.List[balance.BalanceHost]
    vms: t.List[balance.BalanceVm]
    timings: t.Dict[str, float]


def _cpu_times(conn: t.Any) -> t.Dict[str, int]:
    """Each running VM's CPU time so far (ns), by UUID, in one call."""
    stats = conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_CPU_TOTAL, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)
    times = {}
    for dom, values in stats:
        if "cpu.time" in values:
            times[dom.UUIDString()] = int(values["cpu.time"])
    return times


class ClusterReader:
    """Reads ``candidates`` (every host of the cluster) as the module docstring says."""

    def __init__(
        self,
        connect: Connect,
        candidates: t.Sequence[Candidate],
        reserve_mib: int,
        cluster_policy: t.Optional[t.Mapping[str, t.Any]] = None,
        global_policy: t.Optional[t.Mapping[str, t.Any]] = None,
    ) -> None:
        self.connect = connect
        self.hosts = [_Host(candidate) for candidate in candidates]
        self.reserve_mib = reserve_mib
        self.cluster_policy = cluster_policy
        self.global_policy = global_policy
        self.timings: t.Dict[str, float] = {}

    def _each(self, work: t.Callable[[_Host], None], hosts: t.Optional[t.Sequence[_Host]] = None) -> None:
        """``work`` on every readable host at the same time; a failure marks that host unreadable."""
        todo = [host for host in (self.hosts if hosts is None else hosts) if host.error is None]

        def one(host: _Host) -> None:
            try:
                work(host)
            except MigrationError as exc:
                host.error, host.error_details = exc.msg, dict(exc.details)
            except libvirt.libvirtError as exc:
                host.error = translate_libvirt_error(exc, "read the host", uri=host.candidate.uri).msg
            except Exception as exc:  # pylint: disable=broad-exception-caught
                host.error = unexpected_error(exc, "read the host", uri=host.candidate.uri).msg

        if len(todo) <= 1:
            for host in todo:
                one(host)
            return
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_PROBES, len(todo))) as pool:
            list(pool.map(one, todo))

    def _identity_and_vms(self, host: _Host) -> None:
        conn, uri = host.conn, host.candidate.uri
        host.uuid = parse_capabilities(conn.getCapabilities())["uuid"]
        host.name = host.candidate.name or conn.getHostname()
        node = conn.getInfo()
        host.memory_mib, host.cpus = int(node[1]), max(1, int(node[2]))
        for dom in conn.listAllDomains(0):
            try:
                xml = dom.XMLDesc(0)
                facts = domxml.describe_domain(dom, uri, xml=xml)
            except VmNotFoundError:
                continue  # gone since it was listed
            except libvirt.libvirtError as exc:
                if is_not_found(exc):
                    continue
                raise
            requirements = domxml.parse_requirements(xml)
            vm = rules.VmToMove.from_domain(facts, requirements, self.cluster_policy, self.global_policy)
            host.vms.append(vm)
            host.records[vm.name] = metadata.placement_record(ET.fromstring(xml))
            if vm.running and job_stats(dom) is not None:
                host.migrating.append(vm.name)
            cpu = CpuCheck.of(facts, requirements)
            if cpu is not None:
                host.cpu_checks[vm.name] = cpu
        host.readings.append((time.monotonic(), _cpu_times(conn)))

    def _sample(self, host: _Host) -> None:
        host.readings.append((time.monotonic(), _cpu_times(host.conn)))

    def _probe(self, host: _Host, needs: t.Sequence[placement.VmNeeds], cpus: t.Mapping[str, CpuCheck]) -> None:
        host.state = probe_host(host.conn, host.candidate, needs, cpus, self.reserve_mib)

    def read(self, samples: int, interval: float) -> ClusterReading:
        """The whole reading: ``samples`` CPU samples ``interval`` seconds apart."""
        began = time.monotonic()
        entered: t.List[t.Tuple[_Host, t.ContextManager[t.Any]]] = []

        def open_one(host: _Host) -> None:
            context = self.connect(host.candidate.uri)
            host.conn = context.__enter__()  # pylint: disable=unnecessary-dunder-call
            entered.append((host, context))

        try:
            self._each(open_one)
            self._each(self._identity_and_vms)
            self.timings["read_hosts"] = round(time.monotonic() - began, 3)
            mark = time.monotonic()
            for index in range(samples):
                time.sleep(max(0.0, mark + (index + 1) * interval - time.monotonic()))
                self._each(self._sample)
            self.timings["cpu_window"] = round(time.monotonic() - mark, 3)
            mark = time.monotonic()
            running = [vm for host in self.hosts if host.error is None for vm in host.vms if vm.running]
            needs = [vm.placement_needs for vm in running]
            cpus: t.Dict[str, CpuCheck] = {}
            for host in self.hosts:
                cpus.update(host.cpu_checks)
            self._each(lambda host: self._probe(host, needs, cpus))
            self.timings["probe"] = round(time.monotonic() - mark, 3)
        finally:
            for host, context in entered:
                try:
                    context.__exit__(None, None, None)
                except Exception:  # pylint: disable=broad-exception-caught
                    pass  # closing a connection that broke meanwhile
                host.conn = None
        return self._reading()

    def _reading(self) -> ClusterReading:
        hosts: t.List[balance.BalanceHost] = []
        vms: t.List[balance.BalanceVm] = []
        names_by_uuid = {host.uuid: host.name for host in self.hosts if host.error is None and host.uuid}
        defined: t.Dict[str, t.List[str]] = {}
        for host in self.hosts:
            if host.error is None:
                for vm in host.vms:
                    defined.setdefault(vm.uuid or "", []).append(host.name)
        for host in self.hosts:
            if host.error is not None or host.state is None:
                state = placement.HostState(
                    name=host.candidate.name or host.name or host.candidate.uri,
                    uri=host.candidate.uri,
                    error=host.error or "not read",
                    error_details=host.error_details,
                    maintenance=host.candidate.maintenance,
                )
                hosts.append(balance.BalanceHost(state=state, cpus=host.cpus, memory_mib=host.memory_mib))
                continue
            samples, per_vm, seconds = _cpu_use(host.readings, host.cpus)
            busy = None
            if host.migrating:
                busy = "a migration job runs for VM(s) %s" % ", ".join(sorted(host.migrating))
            hosts.append(balance.BalanceHost(state=host.state, cpus=host.cpus, memory_mib=host.memory_mib, cpu_samples=samples, busy=busy))
            for vm in host.vms:
                vm.duplicate_on = tuple(sorted(name for name in defined.get(vm.uuid or "", ()) if name != host.name))
                record = host.records.get(vm.name) or {}
                left = names_by_uuid.get(record.get("left_host_uuid")) or record.get("left_host")
                balanced = record.get("balanced_at")
                vms.append(
                    balance.BalanceVm(
                        vm=vm,
                        host=host.name,
                        cpu_percent=round(per_vm.get(vm.uuid or "", 0) * 100.0 / seconds, 1) if seconds > 0 else 0.0,
                        balanced_at=float(balanced) if isinstance(balanced, int) else None,
                        left_host=str(left) if left else None,
                        migrating=vm.name in host.migrating,
                    )
                )
        return ClusterReading(hosts=hosts, vms=vms, timings=self.timings)


def _cpu_use(readings: t.Sequence[t.Tuple[float, t.Mapping[str, int]]], cpus: int) -> t.Tuple[t.Tuple[float, ...], t.Dict[str, float], float]:
    """Per interval, the percent of ``cpus`` the VMs used; per VM, its CPU seconds over the window; the window's seconds.

    A VM counts in an interval only when it ran at both of its ends (one that arrived or left meanwhile is
    left out of that interval).
    """
    samples = []
    per_vm: t.Dict[str, float] = {}
    seconds = 0.0
    for (start, before), (end, after) in zip(readings, readings[1:]):
        span = end - start
        if span <= 0:
            continue
        used = 0.0
        for uuid, value in after.items():
            if uuid in before and value >= before[uuid]:
                delta = (value - before[uuid]) / NS_PER_S
                used += delta
                per_vm[uuid] = per_vm.get(uuid, 0.0) + delta
        samples.append(round(min(100.0, used * 100.0 / (span * cpus)), 1))
        seconds += span
    return tuple(samples), per_vm, seconds
