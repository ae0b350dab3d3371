# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The rolling_maintenance role's pure checks, run by ansible-playbook on facts the test makes up.

The no-VM-lost check (tasks/no_vm_lost.yml) judges the cluster as cluster_facts read it; here it gets
clusters the lab cannot cheaply build (a VM renamed during a turn, two VMs of one name on two hosts, a
VM running twice), so each verdict is shown on the facts alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import typing as t
from pathlib import Path

import pytest

from roleplay import ANSIBLE_PLAYBOOK, link_collection, run_play

A = "6d3b0d36-3f5c-4c9e-9b43-6a0b8f6f6a01"
B = "0b7e9a52-1c1d-4a55-8f40-4f0a3c1e9b02"
PLAY = """\
- name: Check the cluster the test made up
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Check that no VM is lost or duplicated
      ansible.builtin.include_role:
        name: virtops.migration.rolling_maintenance
        tasks_from: no_vm_lost.yml
"""


def vm(name: str, uuid: str, active: bool = True, persistent: bool = True) -> t.Dict[str, t.Any]:
    return {"name": name, "uuid": uuid, "active": active, "persistent": persistent}


def host(name: str, *vms: t.Dict[str, t.Any], maintenance: bool = False) -> t.Dict[str, t.Any]:
    return {"name": name, "maintenance": maintenance, "host": {"vms": list(vms)}}


CASES = {
    # web1 (A) was undefined during the turn and another web1 (B) defined elsewhere: web1 is lost.
    "impostor of the same name": (
        [host("h1"), host("h2", vm("web1", B, active=False))],
        "no longer on any host: web1 (%s)" % A,
    ),
    # web1 (A) renamed during the turn: still there.
    "renamed": ([host("h1"), host("h2", vm("web1-new", A))], None),
    # Two VMs named web1 on two hosts, each running once: neither runs twice.
    "same name on two hosts": ([host("h1", vm("web1", B)), host("h2", vm("web1", A))], None),
    # One VM (A) running on two hosts under two names: it runs twice.
    "one VM on two hosts": (
        [host("h1", vm("web1", A, persistent=False)), host("h2", vm("web1-copy", A))],
        "running on more than one host: web1-copy (%s)" % A,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_vm_lost_tells_vms_apart_by_uuid(tmp_path: Path, case: str) -> None:
    hosts, failure = CASES[case]
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAY, encoding="utf-8")
    variables = {"cluster_facts_hosts": hosts, "__rolling_maintenance_vms_before": [{"name": "web1", "uuid": A}]}
    recap = run_play(tmp_path, link_collection(tmp_path), playbook, variables)
    if failure is None:
        assert recap.rc == 0 and recap.failed == 0, recap.output
    else:
        assert recap.rc != 0 and recap.failed == 1, recap.output
        assert failure in recap.output, recap.output


# -- the evacuation watch (host_maintenance's wait for a background evacuation) ---------------------
# The lab's evacuations end in seconds; an evacuation of an hour, looked at every 10 s, is 360 looks,
# and a watch that included a task file again for each look stopped with Python's RecursionError
# after a few hundred. Here the job and the progress file are fakes, so 1000 looks cost nothing.


class FakeEvacuation:
    """A background job that ends after ``polls`` looks, its progress file advancing every 100 looks."""

    def __init__(self, polls: int, result: t.Dict[str, t.Any]) -> None:
        self.polls = polls
        self.looks = 0
        self.result = result

    def job(self, jid: str, task_vars: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
        assert jid == "j1"
        self.looks += 1
        if self.looks < self.polls:
            return {"started": 1, "finished": 0, "ansible_job_id": jid}
        return dict(self.result, finished=1, ansible_job_id=jid)

    def progress(self, path: str, task_vars: t.Dict[str, t.Any]) -> t.Optional[t.Dict[str, t.Any]]:
        assert path == "/state/evacuation.json"
        if self.looks < 3:
            return None
        ended = min(self.looks // 100, 9)
        return {"total": 10, "ended": ended, "failed": 0, "running": [{"vm": "vm%d" % ended, "to": "h2"}], "done": False}


def watch(monkeypatch: pytest.MonkeyPatch, fake: FakeEvacuation, timeout: int = 86400) -> t.Tuple[t.Dict[str, t.Any], t.List[str]]:
    from ansible.plugins.action import ActionBase
    from ansible_collections.virtops.migration.plugins.action import evacuation_watch

    shown: t.List[str] = []
    args = {"jid": "j1", "progress_file": "/state/evacuation.json", "interval": 0.0, "timeout": timeout, "host": "h1"}
    monkeypatch.setattr(ActionBase, "run", lambda self, tmp=None, task_vars=None: {})
    monkeypatch.setattr(ActionBase, "validate_argument_spec", lambda self, argument_spec=None, **kw: (None, dict(args)))
    monkeypatch.setattr(evacuation_watch.display, "display", lambda msg, *a, **kw: shown.append(msg))
    action = evacuation_watch.ActionModule.__new__(evacuation_watch.ActionModule)
    monkeypatch.setattr(action, "_job", fake.job, raising=False)
    monkeypatch.setattr(action, "_progress", fake.progress, raising=False)
    return action.run(task_vars={"inventory_hostname": "h1"}), shown


def test_watch_follows_an_evacuation_of_a_thousand_looks_in_one_task(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeEvacuation(1000, {"changed": True, "host": "h1", "vms": [{"vm": "vm0", "outcome": "migrated"}]})
    result, shown = watch(monkeypatch, fake)
    assert fake.looks == 1000 and result["polls"] == 1000
    assert result["finished"] is True and result["changed"] is True and result["vms"] == [{"vm": "vm0", "outcome": "migrated"}]
    assert "started" not in result and not result.get("failed")
    # A line per look while the job ran and the file was there; the result keeps each distinct line once.
    assert len(shown) == 1000 - 3 and shown[0] == "h1: 0 of 10 moves ended (0 failed); moving now: vm0 -> h2"
    assert result["progress"] == ["h1: %d of 10 moves ended (0 failed); moving now: vm%d -> h2" % (n, n) for n in range(10)]


def test_watch_returns_a_failed_evacuation_as_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    result, _shown = watch(monkeypatch, FakeEvacuation(2, {"failed": True, "msg": "1 of 2 VMs could not leave h1"}))
    assert result["failed"] is True and result["msg"] == "1 of 2 VMs could not leave h1" and result["finished"] is True


def test_watch_gives_up_after_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    from ansible.errors import AnsibleActionFail

    times = iter(range(0, 10**6, 5))
    monkeypatch.setattr("time.monotonic", lambda: next(times))
    with pytest.raises(AnsibleActionFail, match="still runs after 20 s of watching"):
        watch(monkeypatch, FakeEvacuation(10**6, {}), timeout=20)


# A stdout callback that prints nothing but one JSON document with the play's stats at the end.
ONE_DOCUMENT_CALLBACK = '''
import json

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "one_document"

    def v2_playbook_on_stats(self, stats):
        hosts = sorted(stats.processed.keys())
        self._display.display(json.dumps({"stats": {host: stats.summarize(host) for host in hosts}}))
'''


def test_watch_follows_a_real_background_job(tmp_path: Path) -> None:
    """The watch against a real async job and a real progress file, through ansible-playbook."""
    progress = tmp_path / "evacuation.json"
    progress.write_text('{"total": 2, "ended": 1, "failed": 0, "running": [{"vm": "web1", "to": "h3"}], "done": false}')
    playbook = tmp_path / "watch.yml"
    playbook.write_text("""\
- name: Watch a background job
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
    - name: Start a job that takes a few looks
      ansible.builtin.command: sleep 8
      async: 60
      poll: 0
      register: job
      changed_when: true

    - name: Watch it
      virtops.migration.evacuation_watch:
        jid: "{{ job.ansible_job_id }}"
        progress_file: %s
        interval: 0.2
      register: watched

    - name: Check what the watch returned
      ansible.builtin.assert:
        that:
          - watched.finished
          - watched.rc == 0
          - watched.polls > 1
          - "watched.progress == ['localhost: 1 of 2 moves ended (0 failed); moving now: web1 -> h3']"
""" % progress)
    # With a stdout callback that prints one JSON document (as the lab tests and some CI read runs, with
    # ansible.posix's json; here a minimal one of the test's own, so that ansible-core alone runs it), the
    # progress lines go to stderr and stdout stays that document.
    callbacks = tmp_path / "callbacks"
    callbacks.mkdir()
    (callbacks / "one_document.py").write_text(ONE_DOCUMENT_CALLBACK)
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(link_collection(tmp_path)),
        ANSIBLE_CALLBACK_PLUGINS=str(callbacks),
        ANSIBLE_STDOUT_CALLBACK="one_document",
        ANSIBLE_NOCOLOR="1",
    )
    proc = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", "localhost,", str(playbook)], capture_output=True, text=True, timeout=300, check=False, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["stats"]["localhost"]["failures"] == 0, report["stats"]
    assert "localhost: 1 of 2 moves ended (0 failed); moving now: web1 -> h3" in proc.stderr, proc.stderr
