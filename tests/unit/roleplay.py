# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Running one of the collection's roles with ansible-playbook against this machine (connection local).

For the role tests: each test gets a directory of its own that stands in for the guest's file system,
with the collection linked into a collections path of its own, and runs the play with its variables
as extra variables (which win over the role's own variables, so tests can redirect its paths).

A table of cases runs in one ansible-playbook process (``run_cases``): each case is a host of its own
(connection local, its own directory), so that a case that fails stops its own host only, and each
case's outcome is read from that host's results alone.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
RECAP = re.compile(r"^localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)

# The environment of every run: no colour, no retry files, no warning about the implicit localhost.
ANSIBLE_ENV = {
    "ANSIBLE_FORCE_COLOR": "0",
    "ANSIBLE_NOCOLOR": "1",
    "ANSIBLE_RETRY_FILES_ENABLED": "0",
    "ANSIBLE_LOCALHOST_WARNING": "0",
    "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
}

# The case's host variables: its variables are read in by the play's first task (include_vars, which
# wins over the role's own variables as extra variables do), from this file.
CASE_VARS = "roleplay_case_vars"
TAKE_CASE_VARS = "Take the case's variables"

# A callback that writes, for each host, the result of each task (with the results of its failed loop
# items) and the host's recap counts to the JSON file named by the environment variable ROLEPLAY_RESULTS;
# results as the default callback shows them: no_log results censored, internal keys removed.
CALLBACK_NAME = "roleplay_results"
CALLBACK = '''\
from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    """Each host's task results and recap counts, as JSON, into the file $ROLEPLAY_RESULTS."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "%s"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.hosts = {}
        self.failed_items = {}

    def _dump(self, result):
        return json.loads(self._dump_results(result.result))

    def _record(self, status, result):
        host = result.host.get_name()
        # The task's name as written: Ansible templates it with the first host's variables, not each host's.
        written = result.task.get_ds()
        name = (written.get("name") if isinstance(written, dict) else None) or result.task.get_name()
        entry = {"task": name, "status": status, "result": self._dump(result), "failed_items": self.failed_items.pop(host, [])}
        self.hosts.setdefault(host, []).append(entry)

    def v2_runner_item_on_failed(self, result):
        self.failed_items.setdefault(result.host.get_name(), []).append(self._dump(result))

    def v2_runner_on_ok(self, result):
        self._record("changed" if result.is_changed() else "ok", result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record("ignored" if ignore_errors else "failed", result)

    def v2_runner_on_skipped(self, result):
        self._record("skipped", result)

    def v2_runner_on_unreachable(self, result):
        self._record("unreachable", result)

    def v2_playbook_on_stats(self, stats):
        report = {
            host: {"tasks": self.hosts.get(host, []), "stats": stats.summarize(host)}
            for host in sorted(set(stats.processed) | set(self.hosts))
        }
        with open(os.environ["ROLEPLAY_RESULTS"], "w", encoding="utf-8") as handle:
            json.dump(report, handle)
''' % CALLBACK_NAME


class Recap(t.NamedTuple):
    """What a play did to localhost, from its recap line; ``output`` is everything it printed."""

    rc: int
    ok: int
    changed: int
    failed: int
    output: str


def require_root(role: str) -> None:
    """Fail (never skip) when not root: the roles make root the owner of what they write."""
    if os.geteuid() != 0:
        pytest.fail("the %s role tests must run as root: the role makes root the owner of what it writes" % role)


def link_collection(root: Path, stand_ins: t.Optional[t.Mapping[str, str]] = None) -> Path:
    """A collections path below ``root`` holding this repository as virtops.migration; returns it.

    ``stand_ins`` (module name: source) replace those of the collection's modules, for tests of what a
    role gives a module that needs a hypervisor: the collection is then a tree of links to this
    repository's files, with the stand-ins written in place of those modules.
    """
    collections = root / "collections"
    (collections / "ansible_collections" / "virtops").mkdir(parents=True)
    collection = collections / "ansible_collections" / "virtops" / "migration"
    if not stand_ins:
        collection.symlink_to(REPO, target_is_directory=True)
        return collections
    modules = Path("plugins") / "modules"
    for part in (Path("."), Path("plugins"), modules):
        (collection / part).mkdir(exist_ok=True)
        for entry in sorted((REPO / part).iterdir()):
            if entry.name.startswith(".") or (part / entry.name) in (Path("plugins"), modules):
                continue
            if part == modules and entry.suffix == ".py" and entry.stem in stand_ins:
                continue
            (collection / part / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    for name, source in stand_ins.items():
        (collection / modules / ("%s.py" % name)).write_text(source, encoding="utf-8")
    return collections


def write_role_play(path: Path, role: str) -> Path:
    """Write a playbook that applies the collection's role ``role`` to localhost; returns ``path``."""
    path.write_text(
        "- name: Apply the %s role to this machine\n  hosts: localhost\n  connection: local\n  gather_facts: false\n"
        "  roles:\n    - virtops.migration.%s\n" % (role, role),
        encoding="utf-8",
    )
    return path


def _environment(collections: Path, **extra: str) -> t.Dict[str, str]:
    """This process's environment for ansible-playbook: ANSIBLE_ENV, ``collections`` as the collections path, ``extra``."""
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections), **ANSIBLE_ENV, **extra)


def run_play(root: Path, collections: Path, playbook: Path, variables: t.Mapping[str, t.Any], *args: str) -> Recap:
    """Run ``playbook`` against localhost with ``variables`` as extra variables (written to ``root``)."""
    extra = root / "vars.json"
    extra.write_text(json.dumps(dict(variables)), encoding="utf-8")
    proc = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", str(playbook), "-e", "@%s" % extra, *args],
        capture_output=True, text=True, timeout=1200, check=False, env=_environment(collections), cwd=str(root),
    )
    output = proc.stdout + proc.stderr
    match = RECAP.search(proc.stdout)
    assert match, output
    ok, changed, _unreachable, failed = map(int, match.groups())
    return Recap(proc.returncode, ok, changed, failed, output)


class CaseRecap(t.NamedTuple):
    """What a play did to one case's host, from its recap (``rc`` as ansible-playbook would return it for
    that host alone: 0, 2 when a task failed, 4 when unreachable). ``messages`` are the messages of its
    failed task (and of that task's failed items), verbatim; ``output`` names the case, then each task the
    host ran with its status, and a failed task's messages and result."""

    rc: int
    ok: int
    changed: int
    failed: int
    output: str
    messages: t.List[str]
    # Each task the host ran, as the callback wrote it: task (its name as written), status, result.
    tasks: t.Sequence[t.Mapping[str, t.Any]] = ()


def _case_recap(case: str, stats: t.Mapping[str, int], tasks: t.Sequence[t.Mapping[str, t.Any]]) -> CaseRecap:
    """The ``CaseRecap`` of ``case`` from its host's recap counts and task results (as the callback wrote them)."""
    lines = ["case %s:" % case]
    messages = []
    for task in tasks:
        lines.append("TASK [%s] %s" % (task["task"], task["status"]))
        if task["status"] in ("failed", "unreachable"):
            result = task["result"]
            found = [message for message in [result.get("msg")] + [item.get("msg") for item in task["failed_items"]] if message]
            lines.extend("  msg: %s" % message for message in found)
            lines.append("  %s" % json.dumps(result, ensure_ascii=False, sort_keys=True))
            messages.extend(found)
    rc = 4 if stats["unreachable"] else 2 if stats["failures"] else 0
    return CaseRecap(rc, stats["ok"], stats["changed"], stats["failures"], "\n".join(lines), messages, list(tasks))


def run_cases(
    workdir: Path, role: str, cases: t.Mapping[str, t.Mapping[str, t.Any]], *args: str, stand_ins: t.Optional[t.Mapping[str, str]] = None
) -> t.Dict[str, CaseRecap]:
    """Apply the collection's role ``role`` once for each case of ``cases`` (name: its variables), all in one
    ansible-playbook process (``args`` added to its command line), and return each case's ``CaseRecap``.

    Each case is a host of its own (connection local, this interpreter): a case that fails stops its own
    host only. Its variables are read in by the play's first task (include_vars), so that, as extra
    variables do in ``run_play``, they win over the role's own variables; that task is left out of the
    case's counts and output. The inventory, the play and each case's variables are written to ``workdir``.
    ``stand_ins`` replace modules of the collection (see ``link_collection``).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    collections = link_collection(workdir, stand_ins)
    callbacks = workdir / "callback_plugins"
    callbacks.mkdir()
    (callbacks / ("%s.py" % CALLBACK_NAME)).write_text(CALLBACK, encoding="utf-8")
    hosts = {}
    names = {}
    for number, (case, variables) in enumerate(cases.items()):
        host = "case%d" % number
        case_vars = workdir / ("%s.json" % host)
        case_vars.write_text(json.dumps(dict(variables)), encoding="utf-8")
        hosts[host] = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, CASE_VARS: str(case_vars)}
        names[host] = case
    inventory = workdir / "inventory.yml"
    inventory.write_text(json.dumps({"all": {"hosts": hosts}}), encoding="utf-8")
    playbook = workdir / "play.yml"
    playbook.write_text(
        "- name: Apply the %s role to each case's host\n  hosts: all\n  gather_facts: false\n"
        "  pre_tasks:\n    - name: %s\n      ansible.builtin.include_vars:\n        file: \"{{ %s }}\"\n"
        "  roles:\n    - virtops.migration.%s\n" % (role, TAKE_CASE_VARS, CASE_VARS, role),
        encoding="utf-8",
    )
    results = workdir / "results.json"
    env = _environment(collections, ANSIBLE_CALLBACK_PLUGINS=str(callbacks), ANSIBLE_CALLBACKS_ENABLED=CALLBACK_NAME, ROLEPLAY_RESULTS=str(results))
    proc = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(inventory), str(playbook), *args],
        capture_output=True, text=True, timeout=1200, check=False, env=env, cwd=str(workdir),
    )
    output = proc.stdout + proc.stderr
    # 0: every case passed; 2: some case failed. Anything else is no outcome of the cases.
    assert proc.returncode in (0, 2) and results.exists(), output
    report = json.loads(results.read_text(encoding="utf-8"))
    assert sorted(report) == sorted(hosts), output
    recaps = {}
    for host, case in names.items():
        tasks = report[host]["tasks"]
        stats = dict(report[host]["stats"])
        assert tasks and tasks[0]["task"] == TAKE_CASE_VARS and tasks[0]["status"] == "ok", "case %s: %s" % (case, output)
        stats["ok"] -= 1
        recaps[case] = _case_recap(case, stats, tasks[1:])
    return recaps
