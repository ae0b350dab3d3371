# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Every option of a module reaches the module through the role that wraps it, the playbook built on that
role and the playbook's AWX survey, read from the files themselves.

A role forwards a module's options through ``module_defaults`` whose value is one dictionary built from
the role's ``ROLE_options`` variable (a playbook's from its extra var ``options``); the task's own
arguments are the few the role sets itself (``SETS`` below, each with the reason), or come from a
documented variable of the role. A role or playbook that includes a forwarding role passes its own
options on as that role's ``ROLE_options``. So an option added to a module reaches every user with no
change here or in the roles; one that a role sets by hand without a reason, or a wrapper that lists
options one by one instead, is named by the checker (shown on a made-up option below).
"""

from __future__ import annotations

import importlib
import json
import re
import typing as t
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
FQCN = "virtops.migration."
INCLUDE = ("ansible.builtin.include_role", "ansible.builtin.import_role")
IDENTIFIER = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")

# Arguments a wrapper sets itself, so that no variable of its user reaches them: (wrapper, module) ->
# {option: why}. Every other option of the module must reach it.
SETS: t.Dict[t.Tuple[str, str], t.Dict[str, str]] = {
    ("role host_maintenance", "host_maintenance"): {
        "state": "the role puts the host into maintenance (host_activate brings it back)",
        "candidates": "the other hosts of the cluster, as cluster_facts reads them (host_maintenance_cluster chooses the cluster)",
    },
    ("role host_activate", "host_maintenance"): {"state": "the role brings the host back to active"},
    ("role rolling_maintenance", "host_maintenance"): {
        "state": "the precheck plans each host's evacuation",
        "candidates": "the other hosts of the cluster, as cluster_facts reads them",
    },
    ("role cluster_facts", "host_info"): {},
    ("role cluster_balance", "cluster_balance"): {
        "hosts": "every host of the cluster, as cluster_facts reads them (cluster_balance_cluster chooses the cluster)",
    },
    ("role ha_recover", "ha_recover"): {
        "hosts": "every host of the cluster, from the inventory alone as cluster_facts lists them without probing (ha_recover_cluster chooses the cluster)",
    },
    ("playbook migrate_vm", "vm_migrate"): {
        "name": "the VM the play is asked to move (extra var vm)",
        "destination": "auto: the best host of the cluster",
        "candidates": "the other hosts of the cluster, as cluster_facts reads them (extra var cluster)",
    },
}

# Who wraps what: a role's tasks that run a module; a role or playbook that includes a forwarding role;
# the survey of each playbook.
ROLE_MODULES = {
    "host_maintenance": "host_maintenance",
    "host_activate": "host_maintenance",
    "cluster_facts": "host_info",
    "rolling_maintenance": "host_maintenance",
    "cluster_balance": "cluster_balance",
    "ha_recover": "ha_recover",
}
ROLE_INCLUDES = {"rolling_maintenance": ("host_maintenance", "host_activate", "cluster_balance"), "host_activate": ("cluster_balance",)}
# The variable a role hands its users' options on in, when it is not the included role's ROLE_options:
# the move-back of a maintenance run gets the run's host_maintenance options, and the cluster_balance role
# keeps those its module takes too.
HANDED_ON = {
    ("rolling_maintenance", "cluster_balance"): "cluster_balance_maintenance_options",
    ("host_activate", "cluster_balance"): "cluster_balance_maintenance_options",
}
PLAYBOOKS = {
    "maintenance": ("role", "host_maintenance"),
    "activate": ("role", "host_activate"),
    "patch_cluster": ("role", "rolling_maintenance"),
    "migrate_vm": ("module", "vm_migrate"),
    "balance_cluster": ("role", "cluster_balance"),
    "ha_recover": ("role", "ha_recover"),
}


def argument_spec(module: str) -> t.Dict[str, t.Any]:
    """The module's argument spec; every module's is its entry in the options table (options.module_spec), which
    stands in for it when the module's implementation cannot be imported."""
    try:
        return importlib.import_module("ansible_collections.virtops.migration.plugins.modules.%s" % module).argument_spec()
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("ansible_collections.virtops.migration."):
            raise
        return importlib.import_module("ansible_collections.virtops.migration.plugins.module_utils._migration.pure.options").module_spec(module)


def load(path: Path) -> t.Any:
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else None


def tasks_of(items: t.Any) -> t.Iterator[t.Dict[str, t.Any]]:
    """Every task of a task list, blocks opened (a block's module_defaults handed down to its tasks)."""
    for item in items or []:
        if not isinstance(item, dict):
            continue
        if any(key in item for key in ("block", "rescue", "always")):
            for key in ("block", "rescue", "always"):
                for task in tasks_of(item.get(key)):
                    if "module_defaults" in item and "module_defaults" not in task:
                        task = dict(task, module_defaults=item["module_defaults"])
                    yield task
        else:
            yield item


class Wrapper(t.NamedTuple):
    """A role or a playbook as the checker reads it."""

    name: str  # "role NAME" or "playbook NAME"
    tasks: t.List[t.Dict[str, t.Any]]
    variables: t.Dict[str, t.Any]  # its own variables (a role's defaults and vars, a play's vars)
    options_var: str  # the variable its users give any options in
    documented: t.FrozenSet[str]  # the variables its users may set


def role(name: str, root: Path = REPO) -> Wrapper:
    base = root / "roles" / name
    tasks = [task for path in sorted((base / "tasks").glob("*.yml")) for task in tasks_of(load(path))]
    variables = {**(load(base / "defaults" / "main.yml") or {}), **(load(base / "vars" / "main.yml") or {})}
    specs = (load(base / "meta" / "argument_specs.yml") or {}).get("argument_specs", {})
    documented = frozenset(option for spec in specs.values() for option in (spec.get("options") or {}))
    return Wrapper("role %s" % name, tasks, variables, "%s_options" % name, documented)


def playbook(name: str, root: Path = REPO) -> Wrapper:
    plays = load(root / "playbooks" / ("%s.yml" % name)) or []
    tasks = [task for play in plays for task in tasks_of(play.get("tasks"))]
    variables = {key: value for play in plays for key, value in (play.get("vars") or {}).items()}
    return Wrapper("playbook %s" % name, tasks, variables, "options", frozenset({"options"}))


def refers_to(wrapper: Wrapper, value: t.Any, wanted: t.Callable[[str], bool], depth: int = 4) -> bool:
    """Whether the template text of ``value`` names a variable ``wanted`` accepts, directly or through the
    wrapper's own variables."""
    text = json.dumps(value) if not isinstance(value, str) else value
    for name in IDENTIFIER.findall(text):
        if wanted(name):
            return True
        if depth and name in wrapper.variables and name != text and refers_to(wrapper, wrapper.variables[name], wanted, depth - 1):
            return True
    return False


def module_problems(wrapper: Wrapper, module: str, spec: t.Mapping[str, t.Any], sets: t.Mapping[str, str]) -> t.List[str]:
    """Why an option of ``module`` cannot reach it through ``wrapper`` (one line each), or nothing."""
    problems = []
    calls = [task for task in wrapper.tasks if FQCN + module in task]
    if not calls:
        return ["%s runs no %s%s task" % (wrapper.name, FQCN, module)]
    for task in calls:
        label = "%s, task %r" % (wrapper.name, task.get("name"))
        explicit = task[FQCN + module] or {}
        defaults = next((entry[FQCN + module] for entry in _listed(task.get("module_defaults")) if FQCN + module in entry), None)
        forwards = defaults is not None and refers_to(wrapper, defaults, lambda name: name == wrapper.options_var)
        for option in sorted(spec):
            if option in explicit:
                # Set by the task itself: the wrapper's own (with a reason), or from a variable its users set.
                if option in sets or refers_to(wrapper, explicit[option], lambda name: name in wrapper.documented):
                    continue
                problems.append("%s: option %s is set by the task, from no variable of its users and with no reason in SETS" % (label, option))
            elif not forwards:
                problems.append("%s: option %s cannot be given (no module_defaults from %s)" % (label, option, wrapper.options_var))
        for option in sorted(set(sets) - set(explicit)):
            problems.append("%s: SETS lists %s, which the task does not set" % (label, option))
    return problems


def include_problems(wrapper: Wrapper, included: str, variable: t.Optional[str] = None) -> t.List[str]:
    """Why ``wrapper`` does not hand its users' options on to the role ``included`` it includes (in ``variable``,
    by default ``included``'s ROLE_options), or nothing."""
    variable = variable or "%s_options" % included
    includes = [
        task for task in wrapper.tasks if any(isinstance(task.get(key), dict) and task[key].get("name") == FQCN + included for key in INCLUDE)
    ]
    if not includes:
        return ["%s includes no role %s%s" % (wrapper.name, FQCN, included)]
    problems = []
    for task in includes:
        given = (task.get("vars") or {}).get(variable)
        if given is None or not refers_to(wrapper, given, lambda name: name == wrapper.options_var):
            problems.append("%s, task %r: %s is not given from %s" % (wrapper.name, task.get("name"), variable, wrapper.options_var))
    return problems


def _listed(value: t.Any) -> t.List[t.Dict[str, t.Any]]:
    return [entry for entry in (value if isinstance(value, list) else [value]) if isinstance(entry, dict)]


def survey_problems(name: str, survey_dir: Path = REPO / "extensions" / "awx" / "surveys") -> t.List[str]:
    """Why the survey of playbook ``name`` cannot give the module's options, or nothing."""
    survey = json.loads((survey_dir / ("%s.json" % name)).read_text(encoding="utf-8"))
    questions = {question["variable"]: question for question in survey["spec"]}
    if "options" not in questions:
        return ["the survey %s has no options question" % name]
    if questions["options"]["type"] != "textarea" or questions["options"]["required"]:
        return ["the survey %s's options question is not an optional textarea" % name]
    return []


def all_problems() -> t.List[str]:
    problems = []
    for name, module in ROLE_MODULES.items():
        wrapper = role(name)
        spec = argument_spec(module)
        problems += module_problems(wrapper, module, spec, SETS[(wrapper.name, module)])
        if wrapper.options_var not in wrapper.documented:
            problems.append("%s does not document %s in meta/argument_specs.yml" % (wrapper.name, wrapper.options_var))
        for included in ROLE_INCLUDES.get(name, ()):
            problems += include_problems(wrapper, included, HANDED_ON.get((name, included)))
    for name, (kind, target) in PLAYBOOKS.items():
        wrapper = playbook(name)
        if kind == "role":
            problems += include_problems(wrapper, target)
        else:
            problems += module_problems(wrapper, target, argument_spec(target), SETS[(wrapper.name, target)])
        problems += survey_problems(name)
    return problems


def test_every_module_option_reaches_the_module_through_roles_playbooks_and_surveys() -> None:
    assert all_problems() == []


# -- the checker itself, on made-up wrappers ----------------------------------------------------------
SPEC = {"include_manual": {"type": "bool"}, "state": {"type": "str"}, "made_up": {"type": "bool"}}


def made_up_role(tasks: t.List[t.Dict[str, t.Any]], variables: t.Optional[t.Dict[str, t.Any]] = None) -> Wrapper:
    return Wrapper("role made_up", tasks, variables or {}, "made_up_options", frozenset({"made_up_include_manual", "made_up_options"}))


def test_a_role_that_lists_the_options_by_hand_misses_a_new_one() -> None:
    # The way the roles were written before: each option restated, so an option added later never reaches.
    task = {"name": "Evacuate", FQCN + "host_maintenance": {"state": "maintenance", "include_manual": "{{ made_up_include_manual | default(omit) }}"}}
    problems = module_problems(made_up_role([task]), "host_maintenance", SPEC, {"state": "the role's purpose"})
    assert problems == ["role made_up, task 'Evacuate': option made_up cannot be given (no module_defaults from made_up_options)"]


def test_a_forwarding_role_reaches_a_new_option_and_an_option_set_by_hand_is_named() -> None:
    task = {
        "name": "Evacuate",
        FQCN + "host_maintenance": {"state": "maintenance", "made_up": True},
        "module_defaults": {FQCN + "host_maintenance": "{{ __made_up_args }}"},
    }
    variables = {"__made_up_args": "{{ {'include_manual': made_up_include_manual | default(omit)} | combine(made_up_options) }}"}
    assert module_problems(made_up_role([task], variables), "host_maintenance", SPEC, {"state": "the role's purpose"}) == [
        "role made_up, task 'Evacuate': option made_up is set by the task, from no variable of its users and with no reason in SETS"
    ]
    del task[FQCN + "host_maintenance"]["made_up"]
    assert module_problems(made_up_role([task], variables), "host_maintenance", SPEC, {"state": "the role's purpose"}) == []
    # module_defaults that do not come from the users' options forward nothing.
    variables["__made_up_args"] = "{{ {'include_manual': made_up_include_manual | default(omit)} }}"
    assert module_problems(made_up_role([task], variables), "host_maintenance", SPEC, {"state": "the role's purpose"}) == [
        "role made_up, task 'Evacuate': option %s cannot be given (no module_defaults from made_up_options)" % option
        for option in ("include_manual", "made_up")
    ]


def test_an_include_that_does_not_hand_the_options_on_is_named() -> None:
    task = {"name": "Evacuate", "ansible.builtin.include_role": {"name": FQCN + "host_maintenance"}, "vars": {"host_maintenance_reason": "x"}}
    assert include_problems(made_up_role([task]), "host_maintenance") == [
        "role made_up, task 'Evacuate': host_maintenance_options is not given from made_up_options"
    ]
    task["vars"]["host_maintenance_options"] = "{{ made_up_options }}"
    assert include_problems(made_up_role([task]), "host_maintenance") == []


def test_a_survey_without_the_options_question_is_named(tmp_path: Path) -> None:
    (tmp_path / "made_up.json").write_text(json.dumps({"spec": [{"variable": "target", "type": "text", "required": True}]}), encoding="utf-8")
    assert survey_problems("made_up", tmp_path) == ["the survey made_up has no options question"]


# -- one owner for a role's private variables and for the cluster reading ------------------------------
ROLES = sorted(path.name for path in (REPO / "roles").iterdir() if (path / "tasks").is_dir())


@pytest.mark.parametrize("where", ROLES + ["playbooks"])
def test_nothing_reads_another_roles_private_variables(where: str) -> None:
    base = REPO / "playbooks" if where == "playbooks" else REPO / "roles" / where
    others = [name for name in ROLES if name != where]
    found = []
    for path in sorted(base.rglob("*.yml")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for name in others:
                if re.search(r"\b__%s_" % re.escape(name), line):
                    found.append("%s:%d: %s" % (path.relative_to(REPO), number, line.strip()))
    assert found == []


def test_the_candidate_projection_and_the_cluster_rule_have_one_owner() -> None:
    texts = {path: path.read_text(encoding="utf-8") for path in sorted((REPO / "roles").rglob("*.yml")) + sorted((REPO / "playbooks").glob("*.yml"))}
    cluster_facts = REPO / "roles" / "cluster_facts"
    assert [str(path.relative_to(REPO)) for path, text in texts.items() if "json_query" in text] == []
    assert [str(path.relative_to(REPO)) for path, text in texts.items() if "group_names" in text and cluster_facts not in path.parents] == []


def test_cluster_facts_reads_what_host_info_reads_by_default() -> None:
    # No default of its own: an unset cluster_facts_gather is host_info's default.
    assert "cluster_facts_gather" not in (load(REPO / "roles" / "cluster_facts" / "defaults" / "main.yml") or {})
    spec = load(REPO / "roles" / "cluster_facts" / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert "default" not in spec["cluster_facts_gather"]
    assert spec["cluster_facts_gather"]["choices"] == argument_spec("host_info")["gather"]["choices"]


def test_the_move_back_leaves_out_exactly_the_maintenance_options_cluster_balance_does_not_take() -> None:
    # The cluster_balance role keeps, of a maintenance run's options, those its module takes too: the list it
    # leaves out is what host_maintenance takes and cluster_balance does not (names and aliases).
    def names(module: str) -> t.Set[str]:
        return {name for option, spec in argument_spec(module).items() for name in [option, *spec.get("aliases", [])]}

    left_out = load(REPO / "roles" / "cluster_balance" / "vars" / "main.yml")["__cluster_balance_maintenance_only"]
    assert sorted(left_out) == sorted(names("host_maintenance") - names("cluster_balance"))
