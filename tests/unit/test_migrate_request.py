"""Turning vm_migrate's parameters into a request, and a request into libvirt flags (no hypervisor)."""

from __future__ import annotations

import json
import typing as t

import libvirt
import pytest

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import options, policy
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import requests as rq
from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io import runner
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.plan import LIVE, OFFLINE, PAUSED, Move
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.policy import PolicyError

BASE: dict[str, t.Any] = {"name": "web1", "uri": "qemu:///system", "destination_uri": "qemu+tcp://hv2/system", "state": "migrated"}


def params(**changes: t.Any) -> dict[str, t.Any]:
    return dict(BASE, **changes)


def flags_for(request: rq.MigrateRequest, running: bool, persistent: bool = False) -> t.Tuple[int, t.Dict[str, t.Any]]:
    """The libvirt flags of the move vm_migrate plans for a VM that is running or not, persistent or not."""
    kind = (LIVE if request.live else PAUSED) if running else OFFLINE
    move = Move(
        "web1", None, "medium", 1024, 1, "hv1", "qemu:///system", "hv2", "qemu+tcp://hv2/system", kind, request.policy, persistent or request.persistent
    )
    return runner.migration_flags_and_params(move, request.options)


def test_named_destination_becomes_the_only_candidate() -> None:
    request = rq.migrate_request(params(candidates=["qemu+tcp://hv3/system"]))
    assert [c.uri for c in request.candidates] == ["qemu+tcp://hv2/system"]
    assert request.policy.name == "minimal_downtime" and request.timeout is None
    # The other candidates are still searched for a VM a repeat run or a lost run's job already moved.
    assert [c.uri for c in request.elsewhere] == ["qemu+tcp://hv3/system"]


def test_candidates_as_uris_and_dicts() -> None:
    request = rq.migrate_request(
        params(destination_uri=None, destination="auto", candidates=["qemu+tcp://a/system", {"uri": "qemu+tcp://b/system", "name": "b", "maintenance": True}])
    )
    assert request.auto
    assert [(c.uri, c.name, c.maintenance) for c in request.candidates] == [("qemu+tcp://a/system", None, False), ("qemu+tcp://b/system", "b", True)]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"destination_uri": None, "destination": "auto"}, "destination=auto needs at least one host"),
        ({"destination_uri": None, "destination": "auto", "candidates": [{"name": "x"}]}, r"candidates\[0\] must be a libvirt URI"),
        ({"destination_uri": None, "destination": "auto", "candidates": [{"uri": "u", "zone": 1}]}, "unknown keys: zone"),
        ({"bandwidth_mib": -1}, "bandwidth_mib must be positive"),
        ({"bandwidth_mib": 2**70}, "bandwidth_mib must be at most 8796093022207, got %d" % 2**70),
        ({"max_downtime_ms": 2_000_001}, "max_downtime_ms must be at most 2000000, got 2000001"),
        ({"parallel_connections": 256}, "parallel_connections must be at most 255, got 256"),
        ({"timeout": 0}, "timeout must be at least 1 and at most 604800, got 0"),
        ({"timeout": 604801}, "timeout must be at least 1 and at most 604800, got 604801"),
        ({"timeout": 1.5}, "timeout must be a whole number, got 1.5"),
        ({"wait_sleep": 0}, "wait_sleep must be more than 0 and at most 60, got 0"),
        ({"wait_sleep": -1}, "wait_sleep must be more than 0 and at most 60, got -1"),
        ({"wait_sleep": 61}, "wait_sleep must be more than 0 and at most 60, got 61"),
        ({"wait_sleep": float("nan")}, "wait_sleep must be a number, got nan"),
        ({"wait_sleep": float("inf")}, "wait_sleep must be a number, got inf"),
        ({"monitor_interval": -2.0}, "monitor_interval must be more than 0 and at most 3600, got -2"),
        ({"monitor_interval": 0}, "monitor_interval must be more than 0 and at most 3600, got 0"),
        ({"monitor_interval": 3600.5}, "monitor_interval must be more than 0 and at most 3600, got 3600.5"),
        ({"memory_reserved_mib": -1}, "memory_reserved_mib must be at least 0 and at most 1099511627776, got -1"),
        ({"memory_reserved_mib": 2**40 + 1}, "memory_reserved_mib must be at least 0 and at most 1099511627776, got 1099511627777"),
        (
            {"destination_uri": None, "destination": "auto", "candidates": [{"uri": "qemu+tcp://hv3/system", "maintenance": "yes"}]},
            r"candidates\[0\].maintenance must be true or false, got 'yes'",
        ),
        (
            {"destination_uri": None, "destination": "auto", "candidates": [{"uri": "qemu+tcp://hv3/system", "name": ""}]},
            r"candidates\[0\].name must be a non-empty string, got ''",
        ),
        (
            {"destination_uri": None, "destination": "auto", "candidates": [{"uri": "qemu+tcp://hv3/system", "memory_reserved_mib": -5}]},
            r"candidates\[0\].memory_reserved_mib must be at least 0",
        ),
        ({"policy": "nope"}, "unknown migration policy 'nope'"),
        ({"post_copy": True, "parallel_connections": 2}, "post_copy cannot be combined"),
    ],
)
def test_bad_parameters_are_refused(changes: dict[str, t.Any], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        rq.migrate_request(params(**changes))


def test_cancel_needs_no_destination() -> None:
    request = rq.migrate_request({"name": "web1", "state": "cancelled"})
    assert request.candidates == [] and request.source_uri == "qemu:///system"


def test_live_flags_follow_the_policy() -> None:
    request = rq.migrate_request(params(policy="suspend_workload", bandwidth_mib=64, migrate_uri="tcp://10.0.0.2"))
    flags, typed = flags_for(request, running=True)
    for flag in (
        libvirt.VIR_MIGRATE_LIVE,
        libvirt.VIR_MIGRATE_PEER2PEER,
        libvirt.VIR_MIGRATE_PERSIST_DEST,
        libvirt.VIR_MIGRATE_UNDEFINE_SOURCE,
        libvirt.VIR_MIGRATE_AUTO_CONVERGE,
        libvirt.VIR_MIGRATE_COMPRESSED,
    ):
        assert flags & flag, flag
    assert not flags & libvirt.VIR_MIGRATE_POSTCOPY
    assert typed == {
        libvirt.VIR_MIGRATE_PARAM_COMPRESSION: ["xbzrle"],
        libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 64,
        libvirt.VIR_MIGRATE_PARAM_URI: "tcp://10.0.0.2",
    }


def test_post_copy_flag_for_policy_or_timeout_action() -> None:
    flags = flags_for(rq.migrate_request(params(policy="post_copy")), running=True)[0]
    assert flags & libvirt.VIR_MIGRATE_POSTCOPY
    flags = flags_for(rq.migrate_request(params(policy="legacy", timeout_action="post_copy")), running=True)[0]
    assert flags & libvirt.VIR_MIGRATE_POSTCOPY


def test_shut_off_vm_migrates_offline_and_persistently() -> None:
    flags, typed = flags_for(rq.migrate_request(params(persistent=False)), running=False)
    assert flags & libvirt.VIR_MIGRATE_OFFLINE and flags & libvirt.VIR_MIGRATE_PERSIST_DEST
    assert not flags & libvirt.VIR_MIGRATE_LIVE and typed == {}


@pytest.mark.parametrize(
    "changes, unsafe",
    [
        ({}, False),
        ({"allow_unsafe_cache": True}, False),  # the cache-mode override is checked by the module, not by libvirt
        ({"unsafe_storage": True}, True),
        ({"allow_unsafe_cache": True, "unsafe_storage": True}, True),
    ],
)
def test_only_unsafe_storage_switches_off_libvirts_safety_check(changes: dict[str, t.Any], unsafe: bool) -> None:
    request = rq.migrate_request(params(**changes))
    assert request.allow_unsafe_cache is changes.get("allow_unsafe_cache", False)
    for running in (True, False):
        flags = flags_for(request, running=running, persistent=True)[0]
        assert bool(flags & libvirt.VIR_MIGRATE_UNSAFE) is (unsafe and running)


@pytest.mark.parametrize("running", [True, False])
@pytest.mark.parametrize("requested", [True, False])
def test_a_persistent_vm_always_stays_persistent(running: bool, requested: bool) -> None:
    request = rq.migrate_request(params(persistent=requested))
    flags = flags_for(request, running=running, persistent=True)[0]
    assert flags & libvirt.VIR_MIGRATE_PERSIST_DEST


def test_a_transient_vm_may_move_as_a_transient_one() -> None:
    request = rq.migrate_request(params(persistent=False, undefine_source=False))
    flags = flags_for(request, running=True, persistent=False)[0]
    assert not flags & libvirt.VIR_MIGRATE_PERSIST_DEST and not flags & libvirt.VIR_MIGRATE_UNDEFINE_SOURCE


@pytest.mark.parametrize(
    "stats, expected",
    [
        ({"type": 3, "downtime": 40, "data_total": 1 << 28}, None),
        (
            {
                "compression_cache": 64 << 20,
                "compression_bytes": 3 << 19,
                "compression_pages": 900,
                "compression_cache_misses": 12,
                "compression_overflow": 0,
            },
            {"cache_mib": 64.0, "compressed_mib": 1.5, "compressed_pages": 900, "cache_misses": 12, "overflows": 0},
        ),
        (
            {"compression_cache": 64 << 20},
            {"cache_mib": 64.0, "compressed_mib": 0.0, "compressed_pages": None, "cache_misses": None, "overflows": None},
        ),
    ],
)
def test_compression_stats_only_when_xbzrle_reported(stats: dict[str, t.Any], expected: t.Any) -> None:
    assert runner.compression_stats(stats) == expected


@pytest.mark.parametrize("uri", [None, ""])
def test_an_empty_uri_means_libvirt_default_uri(monkeypatch: pytest.MonkeyPatch, uri: t.Optional[str]) -> None:
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "qemu+ssh://root@hv7/system")
    assert rq.migrate_request({"name": "web1", "state": "cancelled", "uri": uri}).source_uri == "qemu+ssh://root@hv7/system"
    request = rq.maintenance_request({"state": "active", "uri": uri})
    assert request.uri == "qemu+ssh://root@hv7/system"


def test_the_policy_overrides_are_one_list() -> None:
    # The option spec, the policy's rules and the doc fragment name the same settings.
    from ansible_collections.virtops.migration.plugins.doc_fragments.policy_overrides import ModuleDocFragment
    import yaml

    documented = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"]
    assert tuple(options.POLICY_OVERRIDES) == policy.OVERRIDES == tuple(documented)
    for name, spec in options.POLICY_OVERRIDES.items():
        assert documented[name]["type"] == spec.type


# -- tunnelled migration


@pytest.mark.parametrize("kind_running, live", [(True, True), (True, False)])
def test_tunnelled_adds_the_tunnel_to_peer_to_peer(kind_running: bool, live: bool) -> None:
    request = rq.migrate_request(params(tunnelled=True, live=live))
    assert request.options.tunnelled is True
    flags = flags_for(request, running=kind_running)[0]
    assert flags & libvirt.VIR_MIGRATE_TUNNELLED and flags & libvirt.VIR_MIGRATE_PEER2PEER
    assert not flags & (libvirt.VIR_MIGRATE_TLS | libvirt.VIR_MIGRATE_POSTCOPY | libvirt.VIR_MIGRATE_PARALLEL)


def test_tunnelled_keeps_compression_auto_converge_and_bandwidth() -> None:
    request = rq.migrate_request(params(tunnelled=True, policy="suspend_workload", bandwidth_mib=64))
    flags, typed = flags_for(request, running=True)
    for flag in (libvirt.VIR_MIGRATE_TUNNELLED, libvirt.VIR_MIGRATE_AUTO_CONVERGE, libvirt.VIR_MIGRATE_COMPRESSED):
        assert flags & flag, flag
    assert typed == {libvirt.VIR_MIGRATE_PARAM_COMPRESSION: ["xbzrle"], libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 64}


@pytest.mark.parametrize("changes", [{}, {"tunnelled": False}, {"tunnelled": None}])
def test_not_tunnelled_by_default(changes: dict[str, t.Any]) -> None:
    request = rq.migrate_request(params(**changes))
    assert request.options.tunnelled is False
    assert not flags_for(request, running=True)[0] & libvirt.VIR_MIGRATE_TUNNELLED


def test_a_shut_off_vm_never_moves_tunnelled() -> None:
    # libvirt refuses VIR_MIGRATE_TUNNELLED with VIR_MIGRATE_OFFLINE ("tunnelled offline migration does not make sense").
    flags = flags_for(rq.migrate_request(params(tunnelled=True)), running=False)[0]
    assert flags & libvirt.VIR_MIGRATE_OFFLINE and not flags & libvirt.VIR_MIGRATE_TUNNELLED


def test_tls_is_set_only_when_asked() -> None:
    assert flags_for(rq.migrate_request(params(tls=True)), running=True)[0] & libvirt.VIR_MIGRATE_TLS
    assert not flags_for(rq.migrate_request(params()), running=True)[0] & libvirt.VIR_MIGRATE_TLS


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"tls": True}, r"tunnelled=true cannot be combined with tls \(QEMU's own TLS needs its direct stream"),
        ({"migrate_uri": "tcp://10.0.10.2"}, r"tunnelled=true cannot be combined with migrate_uri \("),
        ({"listen_address": "10.0.10.2"}, r"tunnelled=true cannot be combined with listen_address \("),
        ({"timeout_action": "post_copy"}, r"tunnelled=true cannot be combined with timeout_action=post_copy \(libvirt does not support post-copy"),
        ({"tls": True, "migrate_uri": "tcp://10.0.10.2"}, r"with tls \(.*\); migrate_uri \("),
        ({"policy": "post_copy"}, r"with the task's policy 'post_copy': post_copy: true \(libvirt does not support post-copy"),
        ({"post_copy": True}, r"with the task's settings: post_copy: true"),
        ({"parallel_connections": 4}, r"with the task's settings: parallel_connections: 4 \(parallel connections are QEMU's own streams"),
        ({"policy": {"based_on": "legacy", "parallel_connections": 2}}, r"with the task's policy 'custom': parallel_connections: 2"),
    ],
)
def test_tunnelled_refuses_what_libvirt_refuses_with_it(changes: dict[str, t.Any], message: str) -> None:
    with pytest.raises(PolicyError, match=message) as caught:
        rq.migrate_request(params(tunnelled=True, **changes))
    assert caught.value.msg.endswith("Nothing was changed.")
    # Each of them alone is fine without the tunnel.
    rq.migrate_request(params(**changes))


@pytest.mark.parametrize(
    "changes",
    [
        {"tls": False},
        {"migrate_uri": ""},
        {"listen_address": None},
        {"timeout_action": "suspend"},
        {"post_copy": False, "parallel_connections": None},
    ],
)
def test_tunnelled_accepts_the_same_options_off(changes: dict[str, t.Any]) -> None:
    assert rq.migrate_request(params(tunnelled=True, **changes)).options.tunnelled is True


@pytest.mark.parametrize("check_mode", [False, True])
def test_vm_migrate_refuses_tunnelled_with_tls_before_any_connection(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], check_mode: bool
) -> None:
    from ansible.module_utils.testing import patch_module_args

    from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration import vm_migration
    from ansible_collections.virtops.migration.plugins.modules import vm_migrate

    def no_connection(*_args: t.Any, **_kwargs: t.Any) -> t.NoReturn:
        raise AssertionError("connected although the options conflict")

    monkeypatch.setattr(vm_migration, "libvirt_connection", no_connection)
    with patch_module_args(dict(params(tunnelled=True, tls=True), _ansible_check_mode=check_mode)), pytest.raises(SystemExit) as exited:
        vm_migrate.main()
    result = json.loads(capsys.readouterr().out)
    assert exited.value.code == 1 and result["failed"] is True
    assert result["msg"].startswith("tunnelled=true cannot be combined with tls (") and "changed" not in result


@pytest.mark.parametrize("synchronous", [False, True])
@pytest.mark.parametrize("migrate_uri, disks_uri", [(None, None), ("tcp://10.1.0.2:49152", "tcp://10.1.0.2"), ("tcp://[fd00::2]:49152", "tcp://[fd00::2]")])
def test_a_move_that_copies_disks_names_them_and_uses_the_migration_address(
    synchronous: bool, migrate_uri: t.Optional[str], disks_uri: t.Optional[str]
) -> None:
    request = rq.migrate_request(params(storage="copy", synchronous_writes=synchronous, migrate_uri=migrate_uri))
    move = Move("web1", None, "medium", 1024, 1, "hv1", "qemu:///system", "hv2", "qemu+tcp://hv2/system", LIVE, request.policy, copy_disks=("vda", "vdc"))
    flags, values = runner.migration_flags_and_params(move, request.options)
    assert flags & libvirt.VIR_MIGRATE_NON_SHARED_DISK
    assert bool(flags & libvirt.VIR_MIGRATE_NON_SHARED_SYNCHRONOUS_WRITES) is synchronous
    assert values[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] == ["vda", "vdc"]
    assert values.get(libvirt.VIR_MIGRATE_PARAM_DISKS_URI) == disks_uri


def test_a_move_that_copies_nothing_sets_no_disk_flag() -> None:
    flags, values = flags_for(rq.migrate_request(params(storage="auto", synchronous_writes=True)), running=True)
    assert not flags & (libvirt.VIR_MIGRATE_NON_SHARED_DISK | libvirt.VIR_MIGRATE_NON_SHARED_SYNCHRONOUS_WRITES)
    assert libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS not in values


def test_storage_options_reach_the_request() -> None:
    request = rq.migrate_request(params(storage="auto", shared_storage="/srv/shared/", remove_source_disks=True))
    assert (request.storage, request.shared_storage, request.options.remove_source_disks) == ("auto", "/srv/shared", True)
    with pytest.raises(PolicyError, match="shared_storage must be an absolute path"):
        rq.migrate_request(params(shared_storage="srv"))
    maintenance = rq.maintenance_request({"state": "active", "storage": "copy", "synchronous_writes": True, "shared_storage": "/srv//x"})
    assert (maintenance.storage, maintenance.synchronous_writes, maintenance.shared_storage) == ("copy", True, "/srv/x")


def test_job_summaries_carry_the_disk_copy_when_libvirt_gives_it() -> None:
    assert "disk_total_mib" not in runner.job_summary({"time_elapsed": 1000})
    summary = runner.job_summary({"disk_total": 2 * 1024**2, "disk_processed": 1024**2, "disk_remaining": 1024**2})
    assert (summary["disk_total_mib"], summary["disk_processed_mib"], summary["disk_remaining_mib"]) == (2.0, 1.0, 1.0)
