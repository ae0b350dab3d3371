# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the host_maintenance, host_activate, cluster_balance and cluster_facts roles and the maintenance
and balance_cluster playbooks give their modules, run by ansible-playbook with stand-ins for the modules (they need a hypervisor).

Each stand-in checks its arguments against the real module's argument spec and returns them as
``received``. An option added to the module (``allow_unsafe_cache`` below, in the stand-in's spec only)
reaches it through the roles' options dictionary, the playbook's ``options`` extra var (also as the
JSON text an AWX survey's textarea gives) with no change to the roles; the named role variables still
work, a key of the options wins over them, and the arguments the roles set themselves are refused.
"""

from __future__ import annotations

import json
import sys
import typing as t
from pathlib import Path

import pytest

from roleplay import REPO, CaseRecap, link_collection, run_cases, run_play
from test_reachability import argument_spec

NEW_OPTION = {"allow_unsafe_cache": {"type": "bool", "default": False}}
# The option of every module that moves VMs for the cluster's affinity groups (the inventory's virtops_affinity_groups).
AFFINITY_GROUPS = {"affinity_groups": {"type": "list", "elements": "dict", "default": []}}

STAND_IN = '''\
#!/usr/bin/python
from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule, _load_params

SPEC = %(spec)s
RESULT = %(result)s


def main():
    module = AnsibleModule(argument_spec=SPEC, supports_check_mode=True)
    received = dict((key, value) for key, value in _load_params().items() if not key.startswith("_ansible_"))
    result = dict(RESULT, changed=False, received=received)
    if "plan" in result:
        result["check_mode"] = module.check_mode
    if "host" in result:
        result["host"] = dict(result["host"], memory={"reserved_mib": module.params["memory_reserved_mib"]})
    module.exit_json(**result)


if __name__ == "__main__":
    main()
'''


def stand_in_spec(module: str) -> t.Dict[str, t.Any]:
    """The stand-in's argument spec: the module's, with the options the tests add to it."""
    spec = dict(argument_spec(module), **(NEW_OPTION if module == "host_maintenance" else {}))
    if module in ("cluster_balance", "host_maintenance", "vm_migrate"):
        spec = dict(AFFINITY_GROUPS, **spec)
    return spec


def stand_in(module: str, result: t.Mapping[str, t.Any]) -> str:
    spec = stand_in_spec(module)
    # Without fallbacks (functions): the roles' arguments are what is checked.
    spec = {name: {key: value for key, value in option.items() if key != "fallback"} for name, option in spec.items()}
    return STAND_IN % {"spec": repr(spec), "result": repr(dict(result))}


# A balance of a cluster of three hosts: one move done, one not started, a VM kept in place, a host left out.
BALANCE_RESULT = {
    "policy": "evenly_distributed",
    "msg": "1 of 2 moves done",
    "plan": {
        "moves": [
            {"vm": "web3", "from": "h1", "to": "h2", "kind": "live", "priority": "high", "memory_mib": 1024},
            {"vm": "web4", "from": "h1", "to": "h2", "kind": "live", "priority": "low", "memory_mib": 512},
        ],
        "skipped": [{"vm": "db1", "host": "h1", "rule": "pinned", "reason": "pinned to h1"}],
        "hosts": {
            "h1": {"before": {"cpu_percent": 91.0, "memory_percent": 70.0, "vms": 3}, "after": {"cpu_percent": 40.5, "memory_percent": 35.0, "vms": 1}},
            "h2": {"before": {"cpu_percent": 10.0, "memory_percent": 20.0, "vms": 1}, "after": {"cpu_percent": 60.5, "memory_percent": 55.0, "vms": 3}},
        },
        "excluded_hosts": {"h3": "in maintenance"},
        "unmet": [],
    },
    "vms": [
        {"vm": "web3", "from": "h1", "to": "h2", "outcome": "migrated", "duration_s": 4.1},
        {"vm": "web4", "from": "h1", "to": "h2", "outcome": "not_started", "error": "web4 no longer runs on h1"},
    ],
    "emptied_hosts": [],
    "unmet": [{"group": "web-apart", "kind": "vm", "polarity": "negative", "enforcing": False, "message": "web1 and web2 both run on h2"}],
}

# host_info finds every host active and enforcing its mark (so the hook role is not run).
STAND_INS = {
    "host_info": stand_in("host_info", {"host": {"maintenance": {"active": False, "enforcement": {"loaded": True}}}}),
    "host_maintenance": stand_in("host_maintenance", {"vms": []}),
    "cluster_balance": stand_in("cluster_balance", BALANCE_RESULT),
}
EVACUATE = "Mark the host as in maintenance once empty, {{ inventory_hostname }}"
BALANCE = "Plan and carry out the moves of the policy, cluster {{ cluster_facts_cluster }}"
READ = "Read the facts of each host of cluster {{ __cluster_facts_group }}"


def result_of(recap: CaseRecap, task: str) -> t.Dict[str, t.Any]:
    found = [entry["result"] for entry in recap.tasks if entry["task"] == task]
    assert len(found) == 1, recap.output
    return found[0]


MAINTENANCE_CASES: t.Dict[str, t.Dict[str, t.Any]] = {
    "named": {
        "host_maintenance_include_manual": True, "host_maintenance_max_outgoing": 3, "host_maintenance_memory_reserved_mib": 512,
        "virtops_affinity_groups": [{"name": "db-apart", "vms": ["db1", "db2"], "vm_rule": "negative"}],
    },
    "options": {
        "host_maintenance_max_outgoing": 3,
        "host_maintenance_options": {"tunnelled": True, "allow_unsafe_cache": True, "max_outgoing": 1, "state_dir": "/srv/virtops"},
    },
    "refused": {"host_maintenance_options": {"state": "active"}},
    # In the background, watched: the watch's outcome is the role's result.
    "background": {"host_maintenance_progress_interval": 1, "host_maintenance_options": {"tunnelled": True}},
}


@pytest.fixture(scope="module")
def maintenance(tmp_path_factory: pytest.TempPathFactory) -> t.Dict[str, CaseRecap]:
    cases = {name: dict(variables, host_maintenance_reason=name, host_maintenance_install_hook=False) for name, variables in MAINTENANCE_CASES.items()}
    return run_cases(tmp_path_factory.mktemp("maintenance"), "host_maintenance", cases, stand_ins=STAND_INS)


def test_the_named_variables_reach_the_module_with_the_cluster_as_candidates(maintenance: t.Dict[str, CaseRecap]) -> None:
    recap = maintenance["named"]
    assert recap.rc == 0, recap.output
    received = result_of(recap, EVACUATE)["received"]
    assert {key: received[key] for key in ("state", "include_manual", "max_outgoing", "memory_reserved_mib", "reason", "state_dir")} == {
        "state": "maintenance", "include_manual": True, "max_outgoing": 3, "memory_reserved_mib": 512, "reason": "named",
        "state_dir": "/var/lib/virtops-migration",
    }
    assert "tunnelled" not in received and "allow_unsafe_cache" not in received
    # The cluster's affinity groups, from the inventory.
    assert received["affinity_groups"] == [{"name": "db-apart", "vms": ["db1", "db2"], "vm_rule": "negative"}]
    assert result_of(maintenance["options"], EVACUATE)["received"]["affinity_groups"] == []
    # The candidates: every host of the cluster (here every case's host), as cluster_facts publishes them.
    assert received["candidates"] == [
        {"name": "case%d" % number, "uri": "qemu+ssh://case%d/system" % number, "maintenance": False, "memory_reserved_mib": 512}
        for number in range(len(MAINTENANCE_CASES))
    ]
    # Placement needs no VM, network or pool of the cluster's hosts: each was read with gather [].
    reads = result_of(recap, READ)["results"]
    assert [read["received"]["gather"] for read in reads] == [[]] * len(MAINTENANCE_CASES)


def test_the_options_reach_the_module_a_new_one_too_and_win_over_the_named_variables(maintenance: t.Dict[str, CaseRecap]) -> None:
    recap = maintenance["options"]
    assert recap.rc == 0, recap.output
    received = result_of(recap, EVACUATE)["received"]
    assert (received["tunnelled"], received["allow_unsafe_cache"], received["max_outgoing"]) == (True, True, 1)
    # Its state directory is the cluster's: each host's mark is read there.
    assert received["state_dir"] == "/srv/virtops"
    assert [read["received"]["state_dir"] for read in result_of(recap, READ)["results"]] == ["/srv/virtops"] * len(MAINTENANCE_CASES)


def test_the_arguments_the_role_sets_are_refused_in_the_options(maintenance: t.Dict[str, CaseRecap]) -> None:
    recap = maintenance["refused"]
    assert recap.rc == 2 and EVACUATE not in [entry["task"] for entry in recap.tasks if entry["status"] != "failed"], recap.output
    assert any("host_maintenance_options may not set state or candidates" in message for message in recap.messages), recap.output


def test_a_background_evacuation_gets_the_same_arguments_and_its_outcome_is_kept(maintenance: t.Dict[str, CaseRecap], tmp_path: Path) -> None:
    recap = maintenance["background"]
    assert recap.rc == 0, recap.output
    watched = result_of(recap, "Show the evacuation's progress until it ends")
    assert watched["received"]["tunnelled"] is True and watched["received"]["reason"] == "background", recap.output
    assert [entry["status"] for entry in recap.tasks if entry["task"] == EVACUATE] == ["changed"]


def test_host_activate_gives_the_module_its_state_dir_and_options(tmp_path: Path) -> None:
    cases = {
        "named": {"host_activate_state_dir": "/srv/virtops"},
        "options": {"host_activate_options": {"log_dir": "/srv/log", "allow_unsafe_cache": True}},
        "refused": {"host_activate_options": {"state": "maintenance"}},
        "move back": {"host_activate_move_back": True, "host_activate_options": {"log_dir": "/srv/log", "shutdown_timeout": 5, "tunnelled": True}},
    }
    recaps = run_cases(tmp_path, "host_activate", cases, stand_ins=STAND_INS)
    task = "Bring the host back to active, {{ inventory_hostname }}"
    assert recaps["named"].rc == 0 and result_of(recaps["named"], task)["received"] == {"state": "active", "state_dir": "/srv/virtops"}
    # No move-back unless asked for.
    assert BALANCE not in [entry["task"] for entry in recaps["named"].tasks], recaps["named"].output
    # Asked for: after the activation, the VMs that left this host (case3) return, with the activation's options
    # that cluster_balance takes too.
    recap = recaps["move back"]
    assert recap.rc == 0, recap.output
    activated = result_of(recap, task)["received"]
    assert (activated["state"], activated["shutdown_timeout"], activated["tunnelled"]) == ("active", 5, True)
    received = result_of(recap, BALANCE)["received"]
    assert {key: received[key] for key in ("policy", "failback_hosts", "log_dir", "tunnelled", "state_dir")} == {
        "policy": "failback", "failback_hosts": ["case3"], "log_dir": "/srv/log", "tunnelled": True, "state_dir": "/var/lib/virtops-migration",
    }
    assert "shutdown_timeout" not in received and "state" not in received
    assert [host["name"] for host in received["hosts"]] == ["case%d" % number for number in range(len(cases))]
    assert recaps["options"].rc == 0 and result_of(recaps["options"], task)["received"] == {
        "state": "active", "state_dir": "/var/lib/virtops-migration", "log_dir": "/srv/log", "allow_unsafe_cache": True,
    }
    assert recaps["refused"].rc == 2 and any("host_activate_options may not set state" in message for message in recaps["refused"].messages)


# -- the cluster_balance role and balance_cluster.yml ------------------------------------------------------
AFFINITY = [{"name": "web-apart", "vms": ["web1", "web2"], "vm_rule": "negative", "vm_enforcing": False}]
BALANCE_CASES: t.Dict[str, t.Dict[str, t.Any]] = {
    "named": {
        "cluster_balance_policy": "power_saving", "cluster_balance_cpu_low": 10, "cluster_balance_max_moves": 3,
        "virtops_affinity_groups": AFFINITY, "virtops_cluster_policy": {"bandwidth_mib": 512},
    },
    "options": {
        "cluster_balance_cpu_high": 90,
        "cluster_balance_options": {"cpu_high": 75, "tunnelled": True, "state_dir": "/srv/virtops"},
        # A maintenance run's options: those cluster_balance takes reach it, the others are left out.
        "cluster_balance_maintenance_options": {"include_manual": True, "shutdown_timeout": 5, "max_outgoing": 3, "allow_unsafe": True, "cpu_high": 60},
    },
    "check": {"cluster_balance_check": True},
    "refused": {"cluster_balance_options": {"hosts": []}},
}


@pytest.fixture(scope="module")
def balance(tmp_path_factory: pytest.TempPathFactory) -> t.Dict[str, CaseRecap]:
    return run_cases(tmp_path_factory.mktemp("balance"), "cluster_balance", BALANCE_CASES, stand_ins=STAND_INS)


def test_cluster_balance_gives_the_module_the_cluster_its_named_variables_and_the_inventorys_groups(balance: t.Dict[str, CaseRecap]) -> None:
    recap = balance["named"]
    assert recap.rc == 0, recap.output
    received = result_of(recap, BALANCE)["received"]
    assert {key: received[key] for key in ("policy", "cpu_low", "max_moves", "affinity_groups", "cluster_policy", "global_policy", "state_dir")} == {
        "policy": "power_saving", "cpu_low": 10.0, "max_moves": 3, "affinity_groups": AFFINITY, "cluster_policy": {"bandwidth_mib": 512},
        "global_policy": {}, "state_dir": "/var/lib/virtops-migration",
    }
    # Unset named variables are the module's defaults: not given.
    assert "cpu_high" not in received and "failback_hosts" not in received and "tunnelled" not in received
    assert received["hosts"] == [
        {"name": "case%d" % number, "uri": "qemu+ssh://case%d/system" % number, "maintenance": False, "memory_reserved_mib": 256}
        for number in range(len(BALANCE_CASES))
    ]
    assert [read["received"]["gather"] for read in result_of(recap, READ)["results"]] == [[]] * len(BALANCE_CASES)
    assert result_of(recap, BALANCE)["check_mode"] is False


def test_cluster_balance_options_win_and_a_maintenance_runs_options_reach_it_when_it_takes_them(balance: t.Dict[str, CaseRecap]) -> None:
    recap = balance["options"]
    assert recap.rc == 0, recap.output
    received = result_of(recap, BALANCE)["received"]
    assert {key: received[key] for key in ("cpu_high", "tunnelled", "state_dir", "max_outgoing", "allow_unsafe")} == {
        "cpu_high": 75.0, "tunnelled": True, "state_dir": "/srv/virtops", "max_outgoing": 3, "allow_unsafe": True,
    }
    assert "include_manual" not in received and "shutdown_timeout" not in received
    assert [read["received"]["state_dir"] for read in result_of(recap, READ)["results"]] == ["/srv/virtops"] * len(BALANCE_CASES)


def test_cluster_balance_only_plans_when_asked_and_refuses_hosts_in_its_options(balance: t.Dict[str, CaseRecap]) -> None:
    assert balance["check"].rc == 0 and result_of(balance["check"], BALANCE)["check_mode"] is True, balance["check"].output
    recap = balance["refused"]
    assert recap.rc == 2 and BALANCE not in [entry["task"] for entry in recap.tasks if entry["status"] != "failed"], recap.output
    assert any("cluster_balance_options may not set hosts" in message for message in recap.messages), recap.output


def test_cluster_balance_reports_the_plan_the_outcomes_the_load_and_what_stays(balance: t.Dict[str, CaseRecap]) -> None:
    report = result_of(balance["named"], "Show the plan, the moves and each host's load")["msg"]
    assert report[0] == "cluster all, policy evenly_distributed: 1 of 2 moves done", report
    assert report[1:4] == [
        "2 moves planned:",
        "  web3: h1 -> h2 (live, priority high, 1024 MiB) migrated in 4.1 s",
        "  web4: h1 -> h2 (live, priority low, 512 MiB) not_started: web4 no longer runs on h1",
    ], report
    assert report[4:8] == [
        "load of each host, before -> after the plan:",
        "  host         CPU %            memory %         VMs",
        "  h1            91.0 -> 40.5     70.0 -> 35.0      3 -> 1",
        "  h2            10.0 -> 60.5     20.0 -> 55.0      1 -> 3",
    ], report
    assert report[-5:] == [
        "left out: h3 (in maintenance)",
        "stays: db1 on h1 (pinned: pinned to h1)",
        "emptied hosts: none",
        "unmet soft affinity rules:",
        "  web-apart (vm, negative): web1 and web2 both run on h2",
    ], report
    check = result_of(balance["check"], "Show the plan, the moves and each host's load")["msg"]
    assert check[0] == "cluster all, policy evenly_distributed (check mode, nothing moved): 1 of 2 moves done", check


def balance_playbook(tmp_path: Path, variables: t.Mapping[str, t.Any], *args: str) -> t.Tuple[t.Dict[str, t.Any], t.Dict[str, t.Any], str]:
    """Run balance_cluster.yml on a cluster of one host (cluster1: localhost); the module's result and the stats."""
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory = tmp_path / "inventory.yml"
    group_vars = {"virtops_cluster_policy": {"bandwidth_mib": 512}, "virtops_affinity_groups": AFFINITY}
    inventory.write_text(json.dumps({"all": {"children": {"cluster1": {"hosts": {"localhost": host}, "vars": group_vars}}}}), encoding="utf-8")
    recap = run_play(tmp_path, link_collection(tmp_path, STAND_INS), REPO / "playbooks" / "balance_cluster.yml", variables, "-i", str(inventory), "-v", *args)
    assert recap.rc == 0 and recap.failed == 0, recap.output
    results = [json.loads(line.split("=> ", 1)[1]) for line in recap.output.splitlines() if line.startswith("ok: [localhost] => {\"")]
    balanced = [result for result in results if "plan" in result]
    stats = [result["ansible_stats"]["data"] for result in results if "ansible_stats" in result]
    assert len(balanced) == 1 and len(stats) == 1, recap.output
    return balanced[0], stats[0], recap.output


@pytest.mark.parametrize(
    "check, args, check_mode",
    [("", (), False), ("true", (), True), ("false", ("--check",), True)],
    ids=["run", "check input", "check mode"],
)
def test_the_balance_playbook_gives_its_inputs_options_and_the_clusters_settings_to_the_module(
    tmp_path: Path, check: str, args: t.Tuple[str, ...], check_mode: bool
) -> None:
    # As an AWX survey gives them: strings, "" for a question not answered.
    variables = {"cluster": "cluster1", "policy": "", "check": check, "options": "cpu_high: 75\ntunnelled: true\n"}
    result, stats, _output = balance_playbook(tmp_path, variables, *args)
    received = result["received"]
    assert {key: received[key] for key in ("cpu_high", "tunnelled", "affinity_groups", "cluster_policy")} == {
        "cpu_high": 75.0, "tunnelled": True, "affinity_groups": AFFINITY, "cluster_policy": {"bandwidth_mib": 512},
    }
    assert "policy" not in received
    assert received["hosts"] == [{"name": "localhost", "uri": "qemu+ssh://localhost/system", "maintenance": False, "memory_reserved_mib": 256}]
    assert result["check_mode"] is check_mode
    assert stats == {"cluster_balance": {"cluster1": {
        "policy": "evenly_distributed", "check": check_mode, "planned": 2, "migrated": 1, "failed": 0, "not_started": 1, "skipped": 1,
        "emptied_hosts": [], "unmet": 1, "msg": "1 of 2 moves done",
    }}}


def test_the_balance_playbook_takes_the_policy(tmp_path: Path) -> None:
    result, _stats, _output = balance_playbook(tmp_path, {"cluster": "cluster1", "policy": "failback", "options": {"failback_hosts": ["hv2"]}})
    assert (result["received"]["policy"], result["received"]["failback_hosts"]) == ("failback", ["hv2"])


# As given with --extra-vars, and as the JSON or YAML text of the survey's textarea.
ANSWERS = [{"tunnelled": True, "allow_unsafe_cache": True}, '{"tunnelled": true, "allow_unsafe_cache": true}', "tunnelled: true\nallow_unsafe_cache: true\n"]


@pytest.mark.parametrize("options", ANSWERS)
def test_the_maintenance_playbook_gives_its_options_extra_var_to_the_module(tmp_path: Path, options: t.Any) -> None:
    variables = {
        "target": "localhost", "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "host_maintenance_install_hook": False, "max_outgoing": "4", "options": options,
    }
    recap = run_play(tmp_path, link_collection(tmp_path, STAND_INS), REPO / "playbooks" / "maintenance.yml", variables, "-v")
    assert recap.rc == 0, recap.output
    evacuation = [
        line for line in recap.output.splitlines() if line.startswith('ok: [localhost] => {"changed": false, "received"') and '"state": "maintenance"' in line
    ]
    assert len(evacuation) == 1, recap.output
    received = json.loads(evacuation[0].split("=> ", 1)[1])["received"]
    assert (received["tunnelled"], received["allow_unsafe_cache"], received["max_outgoing"]) == (True, True, 4)


# -- the rolling pipeline: the same options for every host's plan, evacuation and activation ------------
# A stand-in that keeps the mark as a file in the state directory (host_maintenance writes it, state=active
# removes it, host_info reports it), so that the pipeline's checks before the patch and after the turn
# pass, and logs every call.
ROLLING_STAND_IN = '''\
#!/usr/bin/python
from __future__ import annotations

import json
import os

from ansible.module_utils.basic import AnsibleModule, _load_params

SPEC = %(spec)s
NAME = %(name)r
LOG = %(log)r


def main():
    module = AnsibleModule(argument_spec=SPEC, supports_check_mode=True)
    received = dict((key, value) for key, value in _load_params().items() if not key.startswith("_ansible_"))
    with open(LOG, "a") as log:
        log.write(json.dumps({"module": NAME, "check_mode": module.check_mode, "received": received}) + "\\n")
    mark = os.path.join(module.params["state_dir"], "maintenance.json")
    if NAME == "cluster_balance":
        # The move-back: one VM returns, one is not started (the re-check before its move found it changed).
        module.exit_json(changed=True, policy=module.params["policy"], plan={"moves": [{"vm": "web1"}, {"vm": "web2"}]},
                         vms=[{"vm": "web1", "outcome": "migrated"}, {"vm": "web2", "outcome": "not_started", "error": "changed"}])
    if NAME == "host_maintenance":
        if not module.check_mode and module.params["state"] == "maintenance":
            open(mark, "w").close()
        elif not module.check_mode and os.path.exists(mark):
            os.remove(mark)
        # The evacuation moved two VMs (their UUIDs are what the move-back asks for).
        moved = [{"vm": "web1", "uuid": "u-web1", "outcome": "migrated"}, {"vm": "web2", "uuid": "u-web2", "outcome": "migrated"}]
        module.exit_json(changed=True, vms=moved if module.params["state"] == "maintenance" and not module.check_mode else [])
    marked = os.path.exists(mark)
    host = {"maintenance": {"active": marked, "state": "maintenance" if marked else None, "enforcement": {"loaded": True}},
            "memory": {"reserved_mib": module.params["memory_reserved_mib"]}, "vms": [], "networks": [], "storage_pools": []}
    module.exit_json(changed=False, host=host)


if __name__ == "__main__":
    main()
'''


def rolling_stand_in(module: str, log: Path) -> str:
    spec = stand_in_spec(module)
    spec = {name: {key: value for key, value in option.items() if key != "fallback"} for name, option in spec.items()}
    return ROLLING_STAND_IN % {"spec": repr(spec), "name": module, "log": str(log)}


def test_patch_cluster_gives_its_options_to_every_plan_evacuation_activation_and_move_back(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    stand_ins = {module: rolling_stand_in(module, log) for module in ("host_info", "host_maintenance", "cluster_balance")}
    collections = link_collection(tmp_path, stand_ins)
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory = tmp_path / "inventory.yml"
    # One host: local hosts share this machine's files, the mark of a finished turn too.
    inventory.write_text(json.dumps({"all": {"children": {"cluster1": {"hosts": {"localhost": host}}}}}), encoding="utf-8")
    patch = tmp_path / "patch.yml"
    patch.write_text("- name: Patch nothing\n  ansible.builtin.debug:\n    msg: patched\n", encoding="utf-8")
    (tmp_path / "state").mkdir()
    variables = {
        "cluster": "cluster1", "reboot": "never", "patch_tasks": str(patch), "progress_interval": "0",
        "rolling_maintenance_state_dir": str(tmp_path / "state"), "move_back": "true",
        "options": '{"tunnelled": true, "allow_unsafe_cache": true, "include_manual": true}',
    }
    recap = run_play(tmp_path, collections, REPO / "playbooks" / "patch_cluster.yml", variables, "-i", str(inventory), "-v")
    assert recap.rc == 0 and recap.failed == 0, recap.output
    calls = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    evacuations = [(call["check_mode"], call["received"]["state"]) for call in calls if call["module"] == "host_maintenance"]
    assert evacuations == [(True, "maintenance"), (False, "maintenance"), (False, "active")]
    for call in calls:
        if call["module"] == "host_maintenance":
            assert (call["received"]["tunnelled"], call["received"]["allow_unsafe_cache"]) == (True, True), call
            assert call["received"]["state_dir"] == str(tmp_path / "state"), call
    # Each host's mark read where the run keeps it; the VMs read before and after the turn.
    reads = [call["received"] for call in calls if call["module"] == "host_info" and "gather" in call["received"]]
    assert {read["state_dir"] for read in reads} == {str(tmp_path / "state")}
    assert [read["gather"] for read in reads].count(["vms"]) >= 2
    # The move-back: one cluster_balance call, policy failback for this host, after the activation, with the run's
    # options that cluster_balance takes too; the cluster read again first.
    names = [call["module"] + ":" + call["received"].get("state", call["received"].get("policy", "")) for call in calls]
    assert names.count("cluster_balance:failback") == 1 and names.index("cluster_balance:failback") > names.index("host_maintenance:active"), names
    received = next(call["received"] for call in calls if call["module"] == "cluster_balance")
    assert {key: received[key] for key in ("failback_hosts", "failback_vms", "tunnelled", "allow_unsafe_cache", "state_dir")} == {
        "failback_hosts": ["localhost"], "failback_vms": ["u-web1", "u-web2"], "tunnelled": True, "allow_unsafe_cache": True,
        "state_dir": str(tmp_path / "state"),
    }
    assert "include_manual" not in received
    assert received["hosts"] == [{"name": "localhost", "uri": "qemu+ssh://localhost/system", "maintenance": False, "memory_reserved_mib": 256}]
    assert calls[names.index("cluster_balance:failback") - 1]["module"] == "host_info"
    # moved_back counts the VMs the move-back returned.
    stats = [json.loads(line.split("=> ", 1)[1])["ansible_stats"]["data"] for line in recap.output.splitlines() if '{"ansible_stats"' in line]
    assert [data["rolling_maintenance"]["hosts"]["localhost"]["moved_back"] for data in stats] == [1], recap.output


def test_the_migrate_vm_playbook_gives_its_inputs_and_options_to_vm_migrate(tmp_path: Path) -> None:
    stand_ins = dict(STAND_INS, vm_migrate=stand_in("vm_migrate", {"source": {"hostname": "h1"}, "destination": {"hostname": "h2"}}))
    variables = {
        "source": "localhost", "vm": "web1", "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "memory_reserved_mib": "512", "guest_hooks": "true", "guest_hook_failure": "", "options": "tunnelled: true\npolicy: post_copy\n",
        "virtops_affinity_groups": [{"name": "web-apart", "vms": ["web1", "web2"], "vm_rule": "negative"}],
    }
    recap = run_play(tmp_path, link_collection(tmp_path, stand_ins), REPO / "playbooks" / "migrate_vm.yml", variables, "-v", "--check")
    assert recap.rc == 0, recap.output
    moves = [line for line in recap.output.splitlines() if line.startswith('ok: [localhost] => {"changed": false, "destination"')]
    assert len(moves) == 1, recap.output
    received = json.loads(moves[0].split("=> ", 1)[1])["received"]
    assert {key: received[key] for key in ("name", "destination", "memory_reserved_mib", "guest_hooks", "tunnelled", "policy")} == {
        "name": "web1", "destination": "auto", "memory_reserved_mib": 512, "guest_hooks": True, "tunnelled": True, "policy": "post_copy",
    }
    assert "guest_hook_failure" not in received
    assert received["affinity_groups"] == [{"name": "web-apart", "vms": ["web1", "web2"], "vm_rule": "negative"}]
    assert received["candidates"] == [{"name": "localhost", "uri": "qemu+ssh://localhost/system", "maintenance": False, "memory_reserved_mib": 512}]
