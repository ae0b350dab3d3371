"""cluster_balance below the lab: its request, the CPU window arithmetic, the placement record's format."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io import cluster
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import balance, metadata, options
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import requests as rq
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.policy import PolicyError

HOSTS = [{"name": "hv1", "uri": "qemu+tcp://hv1/system"}, {"name": "hv2", "uri": "qemu+tcp://hv2/system"}]


def test_the_option_table_offers_exactly_the_planner_policies() -> None:
    assert tuple(options.CLUSTER_BALANCE["policy"].choices or ()) == balance.POLICIES


def test_a_request_takes_the_hosts_thresholds_and_affinity_groups() -> None:
    request = rq.balance_request(
        {"hosts": HOSTS, "policy": "failback", "failback_hosts": ["hv2"], "affinity_groups": [{"name": "g", "vms": ["a", "b"], "vm_rule": "negative"}]}
    )
    assert [host.name for host in request.hosts] == ["hv1", "hv2"]
    assert request.policy == "failback" and request.failback_hosts == ["hv2"]
    assert [group.name for group in request.groups] == ["g"]
    assert request.cpu_high == 80.0 and request.max_moves is None and request.options.poll_interval == options.RUN["wait_sleep"].default


@pytest.mark.parametrize(
    "params, message",
    [
        ({"hosts": []}, "hosts must list every host"),
        ({"hosts": HOSTS, "cpu_low": 90, "cpu_high": 80}, "cpu_low .* must not be above cpu_high"),
        ({"hosts": HOSTS, "memory_low": 50, "memory_high": 40}, "memory_low .* must not be above memory_high"),
        ({"hosts": HOSTS, "failback_hosts": ["hv9"]}, "failback_hosts names host.*hv9"),
        ({"hosts": HOSTS, "cpu_high": 120}, "cpu_high must be"),
        ({"hosts": HOSTS, "samples": 0}, "samples must be"),
        ({"hosts": HOSTS, "max_moves": 0}, "max_moves must be"),
        # Three VMs kept apart by a hard rule on a cluster of two hosts.
        ({"hosts": HOSTS, "affinity_groups": [{"name": "g3", "vms": ["a", "b", "c"], "vm_rule": "negative"}]}, "g3"),
    ],
)
def test_bad_input_is_refused_naming_it(params: dict, message: str) -> None:
    with pytest.raises(Exception, match=message) as caught:
        rq.balance_request(params)
    assert isinstance(caught.value, (PolicyError, rq.affinity.AffinityError)) or hasattr(caught.value, "msg")


def test_cpu_use_per_interval_and_per_vm() -> None:
    second = 1_000_000_000
    readings = [
        (0.0, {"a": 0, "b": 0}),
        (2.0, {"a": 2 * second, "b": 1 * second}),  # a: one CPU busy, b: half of one
        (4.0, {"a": 4 * second, "c": 5 * second}),  # b left, c arrived: neither counts in this interval
    ]
    samples, per_vm, seconds = cluster._cpu_use(readings, cpus=2)  # pylint: disable=protected-access
    assert samples == (75.0, 50.0)
    assert per_vm == {"a": 4.0, "b": 1.0}
    assert seconds == 4.0


def test_cpu_use_ignores_a_counter_that_went_back_and_caps_at_the_host() -> None:
    readings = [(0.0, {"a": 10**10, "b": 0}), (1.0, {"a": 0, "b": 5 * 10**9})]
    samples, per_vm, _seconds = cluster._cpu_use(readings, cpus=1)  # pylint: disable=protected-access
    assert samples == (100.0,) and per_vm == {"b": 5.0}


def test_the_placement_record_is_its_own_element_beside_the_settings() -> None:
    record = {"left_host": "hv1", "left_host_uuid": "u-1", "left_at": "2026-12-07T10:00:00Z", "balanced_at": 1796637600}
    domain = "<domain><metadata>%s%s</metadata></domain>" % (metadata.render({"priority": "high"}), metadata.render(record, element=metadata.PLACEMENT))
    root = ET.fromstring(domain)
    assert metadata.placement_record(root) == record
    assert metadata.from_domain_element(root) == {"priority": "high"}
    bare = metadata.render({"left_host": "hv1"}, qualified=False, element=metadata.PLACEMENT)
    assert bare == "<placement><left_host>hv1</left_host></placement>"


def test_an_unreadable_placement_record_counts_as_none() -> None:
    domain = "<domain><metadata><p:placement xmlns:p='%s'><left_host><x/></left_host><item>1</item></p:placement></metadata></domain>"
    root = ET.fromstring(domain % metadata.PLACEMENT_URI)
    assert metadata.placement_record(root) == {}
    odd = "<domain><metadata><p:placement xmlns:p='%s'><left_host>hv1</left_host><balanced_at>soon</balanced_at></p:placement></metadata></domain>"
    assert metadata.placement_record(ET.fromstring(odd % metadata.PLACEMENT_URI)) == {"left_host": "hv1"}
    assert metadata.placement_record(ET.fromstring("<domain><metadata><p:other xmlns:p='%s'/></metadata></domain>" % metadata.PLACEMENT_URI)) == {}
