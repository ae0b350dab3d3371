"""Affinity groups: validation, contradictions, breaches of each rule kind (pure logic), and what vm_migrate and
host_maintenance make of them in check mode (fake hosts)."""

from __future__ import annotations

import typing as t
from pathlib import Path

import libvirt
import pytest

from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration import maintenance as mt
from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration import vm_migration
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import affinity as af
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import mark as mk
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import requests as rq
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import MigrationError
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.policy import PolicyError
from libvirt_fakes import HV1_UUID, HV2_UUID, HV3_UUID, FakeCluster, FakeDomain


def group(name: str, vms: t.Sequence[str], **kwargs: t.Any) -> t.Dict[str, t.Any]:
    return dict(name=name, vms=list(vms), **kwargs)


def test_defaults_and_no_groups() -> None:
    assert af.parse_groups(None) == ()
    assert af.parse_groups([]) == ()
    (parsed,) = af.parse_groups([group("g", ["a"])])
    assert parsed == af.AffinityGroup(name="g", vms=frozenset({"a"}))
    assert parsed.vm_rule == parsed.host_rule == "disabled" and parsed.vm_enforcing and parsed.host_enforcing
    assert not af.Affinity([parsed], {"a": "h1"}).constrained("a")


@pytest.mark.parametrize(
    "value, words",
    [
        ("web", "must be a list of dictionaries"),
        ({"name": "g"}, "must be a list of dictionaries"),
        (["web"], "affinity_groups[0] must be a dictionary"),
        ([{"vms": ["a"]}], "affinity_groups[0].name must be a non-empty string"),
        ([group("g", ["a"], colour="red")], "affinity group 'g' has unknown keys: colour"),
        ([group("g", [])], "affinity group 'g': vms must name at least one VM"),
        ([{"name": "g"}], "affinity group 'g': vms must name at least one VM"),
        ([{"name": "g", "vms": "a"}], "affinity group 'g': vms must be a list of names"),
        ([group("g", ["a", ""])], "affinity group 'g': vms must hold non-empty names"),
        ([group("g", ["a", "a"], vm_rule="negative")], "affinity group 'g': vms lists 'a' twice"),
        ([group("g", ["a", "b"], vm_rule="together")], "affinity group 'g': vm_rule must be one of positive, negative, disabled"),
        ([group("g", ["a"], host_rule="never", hosts=["h1"])], "host_rule must be one of"),
        ([group("g", ["a", "b"], vm_rule="positive", vm_enforcing="yes")], "affinity group 'g': vm_enforcing must be true or false"),
        ([group("g", ["a"], vm_rule="positive")], "affinity group 'g': a positive VM rule needs at least two VMs, the group has 1"),
        ([group("g", ["a"], host_rule="negative")], "affinity group 'g': a negative host rule needs hosts, the group has none"),
        ([group("g", ["a"]), group("g", ["b"])], "affinity group 'g' is defined twice"),
    ],
)
def test_bad_groups_refused(value: t.Any, words: str) -> None:
    with pytest.raises(af.AffinityError) as caught:
        af.parse_groups(value)
    assert words in caught.value.msg
    assert caught.value.details["rule"] == af.RULE


def test_positive_and_negative_on_one_pair_refused() -> None:
    groups = [group("together", ["a", "b"], vm_rule="positive", vm_enforcing=False), group("apart", ["b", "c", "a"], vm_rule="negative")]
    with pytest.raises(af.AffinityError) as caught:
        af.parse_groups(groups)
    assert "group 'apart' (hard negative VM rule) keeps VMs 'a', 'b' apart, but positive VM group(s) 'together' keep them together" in caught.value.msg
    assert caught.value.details["groups"] == ["apart", "together"]


def test_positive_groups_joined_through_a_shared_vm_contradict_a_negative_one() -> None:
    groups = [group("ab", ["a", "b"], vm_rule="positive"), group("bc", ["b", "c"], vm_rule="positive"), group("apart", ["a", "c"], vm_rule="negative")]
    with pytest.raises(af.AffinityError, match="'ab', 'bc' keep them together"):
        af.parse_groups(groups)


def test_hard_negative_group_larger_than_the_cluster_refused_only_when_hosts_known() -> None:
    groups = [group("apart", ["a", "b", "c"], vm_rule="negative")]
    assert af.parse_groups(groups)
    assert af.parse_groups(groups, hosts=["h1", "h2", "h3"])
    with pytest.raises(af.AffinityError, match=r"group 'apart' \(hard negative VM rule\) keeps 3 VMs .* only 2 host\(s\) \(h1, h2\)"):
        af.parse_groups(groups, hosts=["h1", "h2"])
    # A soft one weighs only.
    assert af.parse_groups([group("apart", ["a", "b", "c"], vm_rule="negative", vm_enforcing=False)], hosts=["h1"])


def test_hard_positive_group_whose_host_rules_share_no_host_refused() -> None:
    groups = [
        group("pair", ["a", "b"], vm_rule="positive"),
        group("a-hosts", ["a"], hosts=["h1", "h2"], host_rule="positive"),
        group("b-hosts", ["b"], hosts=["h3"], host_rule="positive"),
    ]
    with pytest.raises(af.AffinityError) as caught:
        af.parse_groups(groups)
    assert "hard positive VM group(s) 'pair' keep VMs 'a', 'b' on one host" in caught.value.msg
    assert "group(s) 'a-hosts', 'b-hosts' leave them no host in common" in caught.value.msg
    # Soft host rules weigh only.
    groups[2]["host_enforcing"] = False
    assert len(af.parse_groups(groups)) == 3


def test_hard_positive_group_excluded_from_every_shared_host_refused() -> None:
    groups = [
        group("pair", ["a", "b"], vm_rule="positive"),
        group("a-hosts", ["a"], hosts=["h1", "h2"], host_rule="positive"),
        group("b-off", ["b"], hosts=["h1", "h2"], host_rule="negative"),
    ]
    with pytest.raises(af.AffinityError, match="leave them no host in common"):
        af.parse_groups(groups)
    # Without a positive host rule, the cluster's hosts are what a negative one excludes from.
    groups = [group("pair", ["a", "b"], vm_rule="positive"), group("a-off", ["a"], hosts=["h1"], host_rule="negative"),
              group("b-off", ["b"], hosts=["h2"], host_rule="negative")]
    assert af.parse_groups(groups)
    with pytest.raises(af.AffinityError, match="leave them no host in common"):
        af.parse_groups(groups, hosts=["h1", "h2"])


def test_vm_left_no_host_by_its_host_rules_refused() -> None:
    groups = [group("only", ["a"], hosts=["h1"], host_rule="positive"), group("never", ["a", "b"], hosts=["h1"], host_rule="negative")]
    with pytest.raises(af.AffinityError) as caught:
        af.parse_groups(groups)
    assert "leave VM 'a' no host: the hard host rules of group(s) 'never', 'only' exclude every host" in caught.value.msg
    assert caught.value.details["vm"] == "a"
    with pytest.raises(af.AffinityError, match="among the cluster's"):
        af.parse_groups([group("never", ["a"], hosts=["h1", "h2"], host_rule="negative")], hosts=["h1", "h2"])
    with pytest.raises(af.AffinityError, match="leave VM 'a' no host"):
        af.parse_groups([group("x", ["a"], hosts=["h1"], host_rule="positive"), group("y", ["a"], hosts=["h2"], host_rule="positive")])


GROUPS = af.parse_groups(
    [
        group("web", ["w1", "w2", "w3"], vm_rule="negative"),
        group("db", ["d1", "d2"], vm_rule="positive", vm_enforcing=False),
        group("db-hosts", ["d1", "d2"], hosts=["h1", "h2"], host_rule="positive"),
        group("not-h3", ["w3"], hosts=["h3"], host_rule="negative", host_enforcing=False),
        group("plain", ["w1", "x"]),
    ]
)


def test_negative_vm_rule() -> None:
    aff = af.Affinity(GROUPS, {"w1": "h1", "w2": "h2"})
    (breach,) = aff.breaches("w3", "h1")
    assert (breach.group, breach.kind, breach.polarity, breach.enforcing) == ("web", "vm", "negative", True)
    assert breach.message == (
        "affinity group 'web' (hard negative VM rule) keeps VMs 'w1', 'w2', 'w3' apart: VM 'w3' on h1 would share the host with 'w1' (on h1)"
    )
    assert aff.rejections("w3", "h1") == [breach.message]
    assert aff.breaches("w3", "h4") == []
    # A VM does not break the rule with itself where it already runs.
    assert aff.breaches("w1", "h1") == []
    # Members not running (absent from where) are ignored; a move updates the picture.
    aff.move("w1", None)
    assert aff.breaches("w3", "h1") == []
    aff.move("w3", "h4")
    assert aff.rejections("w1", "h4") and not aff.rejections("w1", "h1")


def test_positive_vm_rule_soft() -> None:
    aff = af.Affinity(GROUPS, {"d1": "h1"})
    (breach,) = aff.breaches("d2", "h2")
    assert (breach.group, breach.kind, breach.polarity, breach.enforcing) == ("db", "vm", "positive", False)
    assert "(soft positive VM rule) keeps VMs 'd1', 'd2' together: VM 'd2' on h2 would be apart from 'd1' (on h1)" in breach.message
    assert aff.rejections("d2", "h2") == [] and aff.penalty("d2", "h2") == 1
    assert aff.breaches("d2", "h1") == [] and aff.penalty("d2", "h1") == 0
    # The only member placed: nothing to be apart from.
    assert af.Affinity(GROUPS, {"d1": "h1"}).breaches("d1", "h2") == []


def test_host_rules() -> None:
    aff = af.Affinity(GROUPS, {})
    kinds = [(b.group, b.kind, b.polarity, b.enforcing) for b in aff.breaches("d1", "h3")]
    assert kinds == [("db-hosts", "host", "positive", True)]
    assert aff.rejections("d1", "h3") == ["affinity group 'db-hosts' (hard positive host rule) runs VM 'd1' only on hosts h1, h2, not on h3"]
    assert aff.rejections("d1", "h2") == []
    (soft,) = aff.breaches("w3", "h3")
    assert soft.message == "affinity group 'not-h3' (soft negative host rule) keeps VM 'w3' off hosts h3, h3 among them"
    assert aff.penalty("w3", "h3") == 1 and aff.rejections("w3", "h3") == []
    assert aff.constrained("w3") and aff.constrained("d1") and not aff.constrained("x") and not aff.constrained("nobody")


def test_host_rules_only_ignores_vm_rules() -> None:
    aff = af.Affinity(GROUPS, {"w1": "h1", "d1": "h1"})
    offline = aff.host_rules_only()
    assert offline.breaches("w2", "h1") == []
    assert offline.rejections("d2", "h3") and not offline.breaches("d2", "h2")


def test_unmet() -> None:
    aff = af.Affinity(GROUPS, {"w1": "h1", "w2": "h1", "w3": "h3", "d1": "h1", "d2": "h3"})
    unmet = {(b.group, b.kind): b for b in aff.unmet()}
    assert sorted(unmet) == [("db", "vm"), ("db-hosts", "host"), ("not-h3", "host"), ("web", "vm")]
    assert unmet[("web", "vm")].message.endswith("keeps VMs 'w1', 'w2', 'w3' apart, but some share a host: h1 ('w1', 'w2')")
    assert unmet[("db", "vm")].message.endswith("but they run apart: 'd1' (on h1), 'd2' (on h3)")
    assert unmet[("db-hosts", "host")].message.endswith("runs its VMs only on hosts h1, h2, but 'd2' (on h3) run elsewhere")
    assert unmet[("not-h3", "host")].as_dict() == {
        "group": "not-h3",
        "kind": "host",
        "polarity": "negative",
        "enforcing": False,
        "message": "affinity group 'not-h3' (soft negative host rule) keeps its VMs off hosts h3, but 'w3' (on h3) run there",
    }
    aff.move("w2", "h2")
    aff.move("d2", "h1")
    aff.move("w3", "h4")
    assert aff.unmet() == []
    assert aff.where["w2"] == "h2"


def test_checks_cost_the_vms_groups_not_the_cluster() -> None:
    groups = af.parse_groups([group("g%d" % i, ["a%d" % i, "b%d" % i], vm_rule="negative") for i in range(2000)])
    aff = af.Affinity(groups, {"a%d" % i: "h%d" % (i % 50) for i in range(2000)})
    assert len(aff.groups_of("b7")) == 1
    assert aff.rejections("b7", "h7") and not aff.rejections("b7", "h8")


# -- vm_migrate and host_maintenance (check mode, fake hosts)

SOURCE_URI = "qemu+tls://hv1/system"
HV2_URI = "qemu+tls://hv2/system"
HV3_URI = "qemu+tls://hv3/system"
RUNNING = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED)


def fake_vm(name: str, index: int, state: t.Tuple[int, int] = RUNNING) -> FakeDomain:
    xml = (
        "<domain type='kvm'><name>%s</name><uuid>4a0a3ad4-0d5b-4d47-9a6a-3b8a2f1c9e%02d</uuid><memory unit='MiB'>1024</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os><devices/></domain>" % (name, index)
    )
    return FakeDomain(xml, state)


@pytest.fixture
def hosts(sample: t.Callable[[str], str], monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    """hv1 runs web1 and db1, hv2 runs web2 (and has the most free memory), hv3 runs nothing."""
    cluster = FakeCluster(sample("capabilities-qemu.xml"))
    cluster.add_host(SOURCE_URI, "hv1", HV1_UUID).domains.extend([fake_vm("web1", 1), fake_vm("db1", 3)])
    cluster.add_host(HV2_URI, "hv2", HV2_UUID).domains.append(fake_vm("web2", 2))
    hv3 = cluster.add_host(HV3_URI, "hv3", HV3_UUID)
    hv3.memory_stats = dict(t.cast(t.Dict[str, int], hv3.memory_stats), free=8_000_000)
    monkeypatch.setattr(vm_migration, "libvirt_connection", cluster.connect)
    monkeypatch.setattr(mt.HostMaintenance, "connect", lambda _self, uri, connect_timeout=None: cluster.connect(uri))
    monkeypatch.setattr(mt, "hook_status", lambda **_kwargs: {"path": mk.HOOK_PATH, "installed": True, "loaded": True})
    return cluster


def migrate(tmp_path: Path, groups: t.Sequence[t.Mapping[str, t.Any]], vm: str = "web1", **params: t.Any) -> t.Dict[str, t.Any]:
    params.setdefault("destination_uri", HV2_URI)
    request = rq.migrate_request(dict(name=vm, uri=SOURCE_URI, affinity_groups=list(groups), state_dir=str(tmp_path), wait_sleep=0.01, **params))
    return vm_migration.VmMigration(request).migrate(check_mode=True)


APART = {"name": "web", "vms": ["web1", "web2"], "vm_rule": "negative"}


def test_vm_migrate_refuses_a_named_destination_that_breaks_a_hard_rule(hosts: FakeCluster, tmp_path: Path) -> None:
    assert migrate(tmp_path, [])["destination"]["hostname"] == "hv2"
    with pytest.raises(PolicyError) as caught:
        migrate(tmp_path, [APART])
    assert caught.value.msg == (
        "Cannot move VM 'web1' to hv2: affinity group 'web' (hard negative VM rule) keeps VMs 'web1', 'web2' apart: "
        "VM 'web1' on hv2 would share the host with 'web2' (on hv2). Nothing was moved."
    )
    assert caught.value.details["rule"] == "affinity" and caught.value.details["groups"] == ["web"]
    # A soft rule is a warning; the move is planned.
    result = migrate(tmp_path, [dict(APART, vm_enforcing=False)])
    assert result["destination"]["hostname"] == "hv2"
    assert result["warnings"] == [
        "affinity group 'web' (soft negative VM rule) keeps VMs 'web1', 'web2' apart: VM 'web1' on hv2 would share the host with "
        "'web2' (on hv2) (on the destination hv2)."
    ]


def test_vm_migrate_auto_destination_avoids_the_host(hosts: FakeCluster, tmp_path: Path) -> None:
    auto = dict(destination_uri=None, destination="auto", candidates=[HV2_URI, HV3_URI])
    assert migrate(tmp_path, [], **auto)["destination"]["hostname"] == "hv2"
    result = migrate(tmp_path, [APART], **auto)
    assert result["destination"]["hostname"] == "hv3" and "warnings" not in result
    assert result["plan"]["rejected_hosts"]["hv2"][0].startswith("affinity group 'web' (hard negative VM rule)")
    # The source's other running VMs count too: db1 must stay with web1... and cannot, on any candidate.
    with pytest.raises(PolicyError) as caught:
        migrate(tmp_path, [APART, {"name": "pair", "vms": ["web1", "db1"], "vm_rule": "positive"}], **auto)
    assert caught.value.msg.startswith("No candidate can take VM 'web1' without breaking a hard rule of affinity group(s) 'pair', 'web': ")
    assert caught.value.details["rule"] == "affinity"


def test_vm_migrate_offline_keeps_only_host_rules(hosts: FakeCluster, tmp_path: Path) -> None:
    hosts.hosts[SOURCE_URI].domains[0] = fake_vm("web1", 1, (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN))
    assert migrate(tmp_path, [APART])["destination"]["hostname"] == "hv2"
    with pytest.raises(PolicyError, match="hard negative host rule"):
        migrate(tmp_path, [{"name": "off-hv2", "vms": ["web1"], "hosts": ["hv2"], "host_rule": "negative"}])


def evacuate(tmp_path: Path, groups: t.Sequence[t.Mapping[str, t.Any]]) -> t.Dict[str, t.Any]:
    request = rq.maintenance_request(
        dict(uri=SOURCE_URI, candidates=[HV2_URI, HV3_URI], affinity_groups=list(groups), state_dir=str(tmp_path / "state"), log_dir=str(tmp_path / "log"))
    )
    return mt.HostMaintenance(request).maintenance(check_mode=True)


def test_host_maintenance_keeps_the_groups_and_warns_of_soft_rules_left_unmet(hosts: FakeCluster, tmp_path: Path) -> None:
    result = evacuate(tmp_path, [APART])
    assert {move["vm"]: move["to"] for move in result["plan"]["moves"]}["web1"] == "hv3"
    assert result["plan"]["affinity"] == {"unmet": []} and "warnings" not in result
    soft = {"name": "all", "vms": ["web1", "web2", "db1"], "vm_rule": "negative", "vm_enforcing": False}
    result = evacuate(tmp_path, [soft])
    assert len(result["plan"]["affinity"]["unmet"]) == 1
    assert result["warnings"][0].startswith("affinity group 'all' (soft negative VM rule) keeps VMs 'db1', 'web1', 'web2' apart, but some share a host")


def test_host_maintenance_refuses_before_anything_moves_when_a_hard_rule_cannot_be_kept(hosts: FakeCluster, tmp_path: Path) -> None:
    with pytest.raises(MigrationError) as caught:
        evacuate(tmp_path, [{"name": "all", "vms": ["web1", "web2", "db1"], "vm_rule": "negative"}])
    assert caught.value.msg.startswith("hv1 cannot go into maintenance, nothing was moved: VM '")
    (held,) = caught.value.details["plan"]["unplaceable"]
    assert held["rule"] == "affinity" and "affinity group(s) 'all'" in held["reason"]
    # A group larger than the cluster is refused as a contradiction first.
    with pytest.raises(af.AffinityError, match="only 3 host"):
        evacuate(tmp_path, [{"name": "big", "vms": ["a", "b", "c", "d"], "vm_rule": "negative"}])
