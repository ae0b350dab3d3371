# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the host_maintenance, host_activate and cluster_facts roles and the maintenance playbook give
their modules, run by ansible-playbook with stand-ins for the modules (they need a hypervisor).

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
    if "host" in result:
        result["host"] = dict(result["host"], memory={"reserved_mib": module.params["memory_reserved_mib"]})
    module.exit_json(**result)


if __name__ == "__main__":
    main()
'''


def stand_in(module: str, result: t.Mapping[str, t.Any]) -> str:
    spec = dict(argument_spec(module), **(NEW_OPTION if module == "host_maintenance" else {}))
    # Without fallbacks (functions): the roles' arguments are what is checked.
    spec = {name: {key: value for key, value in option.items() if key != "fallback"} for name, option in spec.items()}
    return STAND_IN % {"spec": repr(spec), "result": repr(dict(result))}


# host_info finds every host active and enforcing its mark (so the hook role is not run).
STAND_INS = {
    "host_info": stand_in("host_info", {"host": {"maintenance": {"active": False, "enforcement": {"loaded": True}}}}),
    "host_maintenance": stand_in("host_maintenance", {"vms": []}),
}
EVACUATE = "Mark the host as in maintenance once empty, {{ inventory_hostname }}"
READ = "Read the facts of each host of cluster {{ __cluster_facts_group }}"


def result_of(recap: CaseRecap, task: str) -> t.Dict[str, t.Any]:
    found = [entry["result"] for entry in recap.tasks if entry["task"] == task]
    assert len(found) == 1, recap.output
    return found[0]


MAINTENANCE_CASES: t.Dict[str, t.Dict[str, t.Any]] = {
    "named": {"host_maintenance_include_manual": True, "host_maintenance_max_outgoing": 3, "host_maintenance_memory_reserved_mib": 512},
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
    }
    recaps = run_cases(tmp_path, "host_activate", cases, stand_ins=STAND_INS)
    task = "Bring the host back to active, {{ inventory_hostname }}"
    assert recaps["named"].rc == 0 and result_of(recaps["named"], task)["received"] == {"state": "active", "state_dir": "/srv/virtops"}
    assert recaps["options"].rc == 0 and result_of(recaps["options"], task)["received"] == {
        "state": "active", "state_dir": "/var/lib/virtops-migration", "log_dir": "/srv/log", "allow_unsafe_cache": True,
    }
    assert recaps["refused"].rc == 2 and any("host_activate_options may not set state" in message for message in recaps["refused"].messages)


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
    if NAME == "host_maintenance":
        if not module.check_mode and module.params["state"] == "maintenance":
            open(mark, "w").close()
        elif not module.check_mode and os.path.exists(mark):
            os.remove(mark)
        module.exit_json(changed=False, vms=[])
    marked = os.path.exists(mark)
    host = {"maintenance": {"active": marked, "state": "maintenance" if marked else None, "enforcement": {"loaded": True}},
            "memory": {"reserved_mib": module.params["memory_reserved_mib"]}, "vms": [], "networks": [], "storage_pools": []}
    module.exit_json(changed=False, host=host)


if __name__ == "__main__":
    main()
'''


def rolling_stand_in(module: str, log: Path) -> str:
    spec = dict(argument_spec(module), **(NEW_OPTION if module == "host_maintenance" else {}))
    spec = {name: {key: value for key, value in option.items() if key != "fallback"} for name, option in spec.items()}
    return ROLLING_STAND_IN % {"spec": repr(spec), "name": module, "log": str(log)}


def test_patch_cluster_gives_its_options_to_every_plan_evacuation_and_activation(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    stand_ins = {module: rolling_stand_in(module, log) for module in ("host_info", "host_maintenance")}
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
        "rolling_maintenance_state_dir": str(tmp_path / "state"), "options": '{"tunnelled": true, "allow_unsafe_cache": true}',
    }
    recap = run_play(tmp_path, collections, REPO / "playbooks" / "patch_cluster.yml", variables, "-i", str(inventory))
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


def test_the_migrate_vm_playbook_gives_its_inputs_and_options_to_vm_migrate(tmp_path: Path) -> None:
    stand_ins = dict(STAND_INS, vm_migrate=stand_in("vm_migrate", {"source": {"hostname": "h1"}, "destination": {"hostname": "h2"}}))
    variables = {
        "source": "localhost", "vm": "web1", "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "memory_reserved_mib": "512", "guest_hooks": "true", "guest_hook_failure": "", "options": "tunnelled: true\npolicy: post_copy\n",
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
    assert received["candidates"] == [{"name": "localhost", "uri": "qemu+ssh://localhost/system", "maintenance": False, "memory_reserved_mib": 512}]
