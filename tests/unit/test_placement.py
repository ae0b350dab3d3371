"""Destination filters and ranking (pure logic)."""

from __future__ import annotations

import typing as t

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import affinity as af
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import placement as pl


def host(name: str, available: int = 4096, vcpus: int = 0, **kwargs: object) -> pl.HostState:
    kwargs.setdefault("uuid", "uuid-" + name)
    kwargs.setdefault("networks", frozenset({"lab"}))
    return pl.HostState(name=name, uri="qemu+tcp://%s/system" % name, available_mib=available, vcpus_running=vcpus, **kwargs)  # type: ignore[arg-type]


VM = pl.VmNeeds(name="web1", memory_mib=1024, vcpus=2, networks=frozenset({"lab"}))


def test_most_free_memory_wins() -> None:
    best, rejected = pl.choose(VM, [host("h2", 2048), host("h3", 8192)], source_uuid="uuid-h1")
    assert best is not None and best.name == "h3" and rejected == {}


def test_tie_broken_by_fewest_running_vcpus() -> None:
    best = pl.choose(VM, [host("h2", 4096, vcpus=8), host("h3", 4096, vcpus=2)], source_uuid="uuid-h1")[0]
    assert best is not None and best.name == "h3"


def test_every_filter_names_its_reason() -> None:
    vm = pl.VmNeeds(
        name="db1",
        memory_mib=2048,
        networks=frozenset({"lab", "storage"}),
        disk_paths=frozenset({"/s/db1.qcow2"}),
        pinned_hosts=frozenset({"h1", "h2", "h3", "h4"}),
    )
    hosts = [
        host("h1"),  # the source
        host("h2", maintenance=True, networks=frozenset({"lab", "storage"}), disk_paths=frozenset({"/s/db1.qcow2"})),
        host("h3", 1024, networks=frozenset({"lab"})),
        host("h5", networks=frozenset({"lab", "storage"}), disk_paths=frozenset({"/s/db1.qcow2"})),
        host("h4", error="connection refused"),
        host("h6", networks=frozenset({"lab", "storage"}), disk_paths=frozenset({"/s/db1.qcow2"}), cpu_incompatible={"db1": "no avx512"}),
    ]
    best, rejected = pl.choose(vm, hosts, source_uuid="uuid-h1")
    assert best is None
    assert "is the source host itself" in rejected["h1"][0]
    assert rejected["h2"] == ["is in maintenance"]
    assert any("lacks the active network(s) storage" in r for r in rejected["h3"])
    assert any("cannot see the disk(s) /s/db1.qcow2" in r for r in rejected["h3"])
    assert any("1024 MiB free" in r for r in rejected["h3"])
    assert rejected["h4"] == ["cannot be reached: connection refused"]
    assert any("not among the VM's pinned hosts" in r for r in rejected["h5"])
    assert any("cannot run the VM's CPU: no avx512" in r for r in rejected["h6"])
    text = pl.explain("db1", rejected)
    assert text.startswith("no host can take VM 'db1': h1 ") and "h6 " in text


def test_pending_load_spreads_consecutive_choices() -> None:
    hosts = [host("h2", 4096), host("h3", 3072)]
    pending = pl.PendingLoad()
    chosen = []
    for index in range(4):
        vm = pl.VmNeeds(name="vm%d" % index, memory_mib=1024)
        best = pl.choose(vm, hosts, source_uuid="uuid-h1", pending=pending)[0]
        assert best is not None
        pending.add(best.name, vm)
        chosen.append(best.name)
    # h2 starts 1 GiB ahead; once even, the tie goes to the host with fewer vCPUs planned.
    assert chosen == ["h2", "h3", "h2", "h3"]
    assert pending.memory_mib == {"h2": 2048, "h3": 2048}


def test_bridges_checked_only_where_the_host_can_tell() -> None:
    vm = pl.VmNeeds(name="web3", memory_mib=512, bridges=frozenset({"br-prod"}))
    best, rejected = pl.choose(vm, [host("h2", bridges=frozenset({"br0"})), host("h3", bridges=None)], source_uuid="uuid-h1")
    assert best is not None and best.name == "h3"
    assert rejected["h2"] == ["lacks the bridge(s) br-prod"]


def test_pending_load_counts_against_free_memory() -> None:
    pending = pl.PendingLoad()
    pending.add("h2", pl.VmNeeds(name="x", memory_mib=3500))
    best, rejected = pl.choose(VM, [host("h2", 4096)], source_uuid="uuid-h1", pending=pending)
    assert best is None and "596 MiB free" in rejected["h2"][0]


def test_vf_networks_need_free_vfs_counting_planned_placements() -> None:
    vm = pl.VmNeeds(name="sriov", memory_mib=256, vfs=(("vfnet", 1),))
    lacking = host("hv2")
    full = host("hv3", free_vfs={"vfnet": 0})
    one_left = host("hv4", free_vfs={"vfnet": 1})
    assert pl.rejections(vm, lacking, None) == ["lacks the active SR-IOV VF network vfnet (forward mode hostdev)"]
    assert pl.rejections(vm, full, None) == ["has 0 free VF(s) in network vfnet after planned migrations, the VM needs 1"]
    assert not pl.fits(vm, lacking, None) and not pl.fits(vm, full, None) and pl.fits(vm, one_left, None)
    pending = pl.PendingLoad()
    pending.add("hv4", vm)
    assert not pl.fits(vm, one_left, None, pending), "the one free VF is already planned for another VM"
    assert pl.choose(vm, [lacking, full, one_left], None)[0] is one_left


def test_needs_count_the_vfs_a_running_vm_draws() -> None:
    needs = pl.needs_from_facts({"name": "sriov", "memory_mib": 256}, {"vf_networks": {"vfnet": 2, "other": 1}}, {})
    assert needs.vfs == (("other", 1), ("vfnet", 2))


def _affinity(where: t.Mapping[str, str], *groups: t.Mapping[str, t.Any]) -> af.Affinity:
    return af.Affinity(af.parse_groups(list(groups)), where)


def test_a_hard_affinity_rule_rejects_the_host_naming_the_group() -> None:
    aff = _affinity({"web2": "h3"}, {"name": "web", "vms": ["web1", "web2"], "vm_rule": "negative"})
    hosts = [host("h2", 2048), host("h3", 8192)]
    assert pl.choose(VM, hosts, source_uuid="uuid-h1")[0].name == "h3"  # type: ignore[union-attr]
    best, rejected = pl.choose(VM, hosts, source_uuid="uuid-h1", affinity=aff)
    assert best is not None and best.name == "h2"
    assert rejected == {
        "h3": ["affinity group 'web' (hard negative VM rule) keeps VMs 'web1', 'web2' apart: VM 'web1' on h3 would share the host with 'web2' (on h3)"]
    }
    assert not pl.fits(VM, hosts[1], "uuid-h1", affinity=aff) and pl.fits(VM, hosts[1], "uuid-h1")
    assert pl.rejections(VM, hosts[0], "uuid-h1", affinity=aff) == []
    # Every other reason is still given, the affinity one among them.
    reasons = pl.rejections(VM, host("h3", 512), "uuid-h1", affinity=aff)
    assert any("affinity group 'web'" in reason for reason in reasons) and any("512 MiB free" in reason for reason in reasons)


def test_fewer_soft_breaches_rank_before_free_memory() -> None:
    aff = _affinity({"db1": "h2"}, {"name": "db", "vms": ["web1", "db1"], "vm_rule": "positive", "vm_enforcing": False})
    hosts = [host("h2", 2048), host("h3", 8192)]
    best, rejected = pl.choose(VM, hosts, source_uuid="uuid-h1", affinity=aff)
    assert best is not None and best.name == "h2" and rejected == {}
    # A soft rule never rejects: with no room on h2, h3 takes the VM.
    best = pl.choose(VM, [host("h2", 512), host("h3", 8192)], source_uuid="uuid-h1", affinity=aff)[0]
    assert best is not None and best.name == "h3"


def test_host_rules_filter_and_rank() -> None:
    aff = _affinity({}, {"name": "only", "vms": ["web1"], "hosts": ["h2", "h4"], "host_rule": "positive"},
                    {"name": "avoid", "vms": ["web1"], "hosts": ["h4"], "host_rule": "negative", "host_enforcing": False})
    best, rejected = pl.choose(VM, [host("h2", 2048), host("h3", 8192), host("h4", 4096)], source_uuid="uuid-h1", affinity=aff)
    assert best is not None and best.name == "h2"
    assert rejected == {"h3": ["affinity group 'only' (hard positive host rule) runs VM 'web1' only on hosts h2, h4, not on h3"]}


def test_no_affinity_keeps_the_plain_choice() -> None:
    aff = _affinity({"other": "h3"}, {"name": "g", "vms": ["other", "x"], "vm_rule": "negative"})
    hosts = [host("h2", 2048), host("h3", 8192)]
    assert pl.choose(VM, hosts, "uuid-h1", affinity=aff) == pl.choose(VM, hosts, "uuid-h1")
