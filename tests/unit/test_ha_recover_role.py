# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The ha_recover role through playbooks/ha_recover.yml, run by ansible-playbook on an inventory whose cluster has
a host that is down (its SSH port refuses), with a stand-in for the module (it needs a hypervisor).

The stand-in checks its arguments against the module's argument spec, writes them and the host it ran on to a file,
and returns a recovery: two VMs of the failed host restarted on a host of the cluster (connection local, its state
directory a temporary directory), one not restarted. No host is contacted to list the cluster, so the host that is
down fails nothing; the events are logged on the host each VM was restarted on."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest

from roleplay import ANSIBLE_ENV, ANSIBLE_PLAYBOOK, CALLBACK, CALLBACK_NAME, REPO, link_collection
from test_reachability import argument_spec

STAND_IN = '''\
#!/usr/bin/python
from __future__ import annotations

import json
import socket

from ansible.module_utils.basic import AnsibleModule, _load_params

SPEC = %(spec)s
RESULT = %(result)s


def main():
    module = AnsibleModule(argument_spec=SPEC, supports_check_mode=True)
    received = dict((key, value) for key, value in _load_params().items() if not key.startswith("_ansible_"))
    with open(%(received)r, "w") as handle:
        json.dump({"args": received, "check_mode": module.check_mode, "ran_on": socket.gethostname()}, handle)
    if received.get("reason") == "fail":
        module.fail_json(msg="ha_recover: the fence command of lab-h1 is not installed. Nothing was changed.", failed_hosts=[])
    module.exit_json(**dict(RESULT, changed=not module.check_mode))


if __name__ == "__main__":
    main()
'''

RESULT = {
    "msg": "lab-h1 failed and was fenced: 2 VMs restarted, 1 not restarted",
    "failed_hosts": [{"name": "lab-h1", "checks": 3, "fence": {"outcome": "confirmed_off", "detail": "power off"}}],
    "restarted": [
        {"vm": "web1", "uuid": "u-web1", "priority": "high", "from": "lab-h1", "to": "lab-h3"},
        {"vm": "db1", "uuid": "u-db1", "priority": "medium", "from": "lab-h1", "to": "lab-h3"},
    ],
    "not_restarted": [{"vm": "big1", "uuid": "u-big1", "priority": "low", "from": "lab-h1", "reason": "no host has 64 GiB free", "rule": "memory"}],
    "left_down": [{"vm": "scratch1", "uuid": "u-scratch1", "from": "lab-h1"}],
    "cleaned": [],
    "unreachable": [],
    "events": [
        {"time": "2026-12-07T20:00:00Z", "host": "lab-h1", "vm": "web1", "event": "failed",
         "message": "Highly Available VM web1 failed. It will be restarted automatically."},
        {"time": "2026-12-07T20:00:05Z", "host": "lab-h3", "vm": "web1", "event": "restarted", "message": "VM web1 was restarted on Host lab-h3."},
        {"time": "2026-12-07T20:00:06Z", "host": "lab-h3", "vm": "db1", "event": "restarted", "message": "VM db1 was restarted on Host lab-h3."},
        {"time": "2026-12-07T20:00:06Z", "host": "lab-h1", "vm": "big1", "event": "failed",
         "message": "Highly Available VM big1 failed. It will be restarted automatically."},
        {"time": "2026-12-07T20:00:07Z", "host": "lab-h1", "vm": "big1", "event": "fenced", "message": "lab-h1 was powered off."},
    ],
}


class Cluster(t.NamedTuple):
    root: Path
    collections: Path
    inventory: Path
    state_dir: Path
    received: Path


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    received = tmp_path / "received.json"
    spec = {name: {key: value for key, value in option.items() if key != "fallback"} for name, option in argument_spec("ha_recover").items()}
    source = STAND_IN % {"spec": repr(spec), "result": repr(RESULT), "received": str(received)}
    collections = link_collection(tmp_path, {"ha_recover": source})
    state_dir = tmp_path / "state"
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory = {
        "all": {
            "children": {
                "lab": {
                    "vars": {"virtops_shared_storage": str(tmp_path / "shared"), "virtops_cluster_policy": {"priority": "medium"}},
                    "hosts": {
                        # Down: nothing listens on its SSH port.
                        "lab-h1": {"ansible_host": "127.0.0.1", "ansible_port": 9, "ansible_connection": "ssh", "ansible_user": "nobody",
                                   "virtops_fence_command": ["/usr/sbin/fence_ipmilan", "--ip", "bmc1"], "ansible_ssh_common_args": "-o ConnectTimeout=3"},
                        "lab-h2": dict(local, virtops_libvirt_uri="qemu+tls://h2.example.com/system", virtops_memory_reserved_mib=1024),
                        "lab-h3": dict(local, ansible_host="h3.example.com"),
                    },
                }
            }
        }
    }
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(inventory), encoding="utf-8")
    return Cluster(tmp_path, collections, path, state_dir, received)


def play(cluster: Cluster, *args: str) -> t.Tuple[int, str, t.Dict[str, t.Any]]:
    """Run playbooks/ha_recover.yml on the cluster: its exit status, output and each task's results on lab-h1."""
    callbacks = cluster.root / "callback_plugins"
    callbacks.mkdir(exist_ok=True)
    (callbacks / ("%s.py" % CALLBACK_NAME)).write_text(CALLBACK, encoding="utf-8")
    results = cluster.root / "results.json"
    env = dict(
        os.environ, ANSIBLE_COLLECTIONS_PATH=str(cluster.collections), ANSIBLE_CALLBACK_PLUGINS=str(callbacks), ANSIBLE_CALLBACKS_ENABLED=CALLBACK_NAME,
        ROLEPLAY_RESULTS=str(results), ANSIBLE_SHOW_CUSTOM_STATS="1", ANSIBLE_HOST_KEY_CHECKING="0", **ANSIBLE_ENV
    )
    proc = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(cluster.inventory), str(REPO / "playbooks" / "ha_recover.yml"), "-e", "cluster=lab",
         "-e", "ha_recover_log_dir=%s" % cluster.state_dir, *args],
        capture_output=True, text=True, timeout=600, check=False, env=env, cwd=str(cluster.root),
    )
    report = json.loads(results.read_text(encoding="utf-8")) if results.exists() else {}
    tasks = {entry["task"]: entry for entry in report.get("lab-h1", {}).get("tasks", [])}
    return proc.returncode, proc.stdout + proc.stderr, tasks


def received(cluster: Cluster) -> t.Dict[str, t.Any]:
    return json.loads(cluster.received.read_text(encoding="utf-8"))


def events(cluster: Cluster) -> t.List[t.Dict[str, t.Any]]:
    path = cluster.state_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


# The module's task in the output, and the host it was delegated to.
MODULE_RAN_ON = r"TASK \[virtops.migration.ha_recover : Check the hosts, fence [^\n]*cluster lab\][^\n]*\n(?:changed|ok): \[lab-h1 -> %s[\]( ]"

EXPECTED_HOSTS = [
    {"name": "lab-h1", "uri": "qemu+ssh://127.0.0.1/system", "ssh_host": "127.0.0.1", "ssh_port": 9,
     "fence_command": ["/usr/sbin/fence_ipmilan", "--ip", "bmc1"]},
    {"name": "lab-h2", "uri": "qemu+tls://h2.example.com/system", "ssh_host": "lab-h2", "ssh_port": 22, "memory_reserved_mib": 1024},
    {"name": "lab-h3", "uri": "qemu+ssh://h3.example.com/system", "ssh_host": "h3.example.com", "ssh_port": 22},
]


def test_a_cluster_with_a_host_down_is_recovered_from_the_first_host_that_answers(cluster: Cluster) -> None:
    rc, output, tasks = play(cluster)
    assert rc == 0, output
    got = received(cluster)
    assert got["check_mode"] is False
    args = got["args"]
    assert args["hosts"] == EXPECTED_HOSTS
    assert args["shared_storage"] == str(cluster.root / "shared")
    assert "state_dir" not in args and "log_dir" not in args
    assert args["cluster_policy"] == {"priority": "medium"}
    # The first host of the cluster is down: lab-h2 answered first, and the module ran there.
    assert re.search(MODULE_RAN_ON % "lab-h2", output), output
    # The report, and the failed and restarted events of the VMs restarted, on the host they were restarted on.
    report = "\n".join(tasks["Show the failed hosts, the fencing and the VMs restarted"]["result"]["msg"])
    for line in ("failed host: lab-h1 (3 checks failed), fence confirmed_off: power off", "restarted: web1 (high) lab-h1 -> lab-h3",
                 "not restarted: big1 (low) from lab-h1: memory: no host has 64 GiB free", "left down (not highly available): scratch1 on lab-h1"):
        assert line in report, report
    assert events(cluster) == [event for event in RESULT["events"] if event["vm"] in ("web1", "db1")]
    assert oct((cluster.state_dir / "events.jsonl").stat().st_mode & 0o777) == "0o600"
    # The run's summary.
    stats = output.split("CUSTOM STATS:")[1]
    for key in ('"restarted"', '"not_restarted"', '"left_down"', '"failed_hosts"', '"cleaned"', '"events"', '"msg": "lab-h1 failed and was fenced'):
        assert key in stats, output


def test_check_mode_reports_and_logs_nothing(cluster: Cluster) -> None:
    rc, output, _tasks = play(cluster, "--check")
    assert rc == 0, output
    assert received(cluster)["check_mode"] is True
    assert events(cluster) == []
    rc, output, _tasks = play(cluster, "-e", "check=true")
    assert rc == 0 and received(cluster)["check_mode"] is True and events(cluster) == [], output


def test_the_inventorys_delegate_host_and_the_options_reach_the_module(cluster: Cluster) -> None:
    inventory = json.loads(cluster.inventory.read_text(encoding="utf-8"))
    inventory["all"]["children"]["lab"]["hosts"]["lab-h1"]["virtops_ha_delegate_to"] = "lab-h3"
    cluster.inventory.write_text(json.dumps(inventory), encoding="utf-8")
    rc, output, _tasks = play(cluster, "-e", '{"options": "{checks: 5, without_fence: lease, memory_reserved_mib: 512}"}')
    assert rc == 0, output
    args = received(cluster)["args"]
    assert (args["checks"], args["without_fence"], args["memory_reserved_mib"]) == (5, "lease", 512)
    # No host was asked: the inventory names where the module runs.
    assert "skipping: [lab-h1]" in output.split("Find the hosts of the cluster that answer")[1].split("TASK")[0], output
    assert re.search(MODULE_RAN_ON % "lab-h3", output), output


def test_hosts_in_the_options_are_refused_and_a_failure_is_shown(cluster: Cluster) -> None:
    rc, output, _tasks = play(cluster, "-e", '{"options": {"hosts": []}}')
    assert rc != 0 and "ha_recover_options may not set hosts" in output, output
    rc, output, tasks = play(cluster, "-e", '{"options": {"reason": "fail"}}')
    assert rc != 0, output
    assert tasks["Fail with the reason"]["result"]["msg"] == "ha_recover: the fence command of lab-h1 is not installed. Nothing was changed.", output
    assert events(cluster) == []


def test_without_shared_storage_the_role_refuses(cluster: Cluster) -> None:
    rc, output, _tasks = play(cluster, "-e", "virtops_shared_storage=")
    assert rc != 0 and "ha_recover: no shared storage is set for cluster lab" in output, output
    assert not cluster.received.exists()
