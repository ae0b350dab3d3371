"""Affinity groups: validation, contradictions, breaches of each rule kind (pure logic)."""

from __future__ import annotations

import typing as t

import pytest

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import affinity as af


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
    assert breach.message == "affinity group 'web' (hard negative VM rule) keeps VMs 'w1', 'w2', 'w3' apart: VM 'w3' on h1 would share the host with 'w1' (on h1)"
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
