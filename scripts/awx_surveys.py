# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Write the AWX/Tower survey specs of the playbooks users run as job templates.

AWX does not build surveys from role argument specs, so each playbook's survey is generated here from
the documentation its inputs already have: the role's ``meta/argument_specs.yml`` or the module's
``DOCUMENTATION`` (with its doc fragments), through the table below, which names for each extra var
of a playbook where it is documented. Playbook-only inputs (the host to act on) are described here.

    python scripts/awx_surveys.py           write extensions/awx/surveys/*.json
    python scripts/awx_surveys.py --check   exit 1 (and name the files) when they are not what it would write

Types: a boolean becomes a multiple choice of "true"/"false" (AWX passes it as a string: the playbooks
apply ``| bool``), an integer an integer question (``| int`` in the playbooks), a string with choices a
multiple choice, any other string a text question.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import typing as t
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "extensions" / "awx" / "surveys"

# Where an input is documented: ("role", ROLE, OPTION), ("module", MODULE, OPTION), or a question of its own.
Source = t.Union[t.Tuple[str, str, str], t.Dict[str, t.Any]]


def asked(description: str, required: bool = True) -> dict[str, t.Any]:
    """A text question of a playbook's own, for an input no role or module documents."""
    return {"type": "text", "required": required, "question_description": description}


def module_options(module: str, *, questions: bool = True, example: str = "{tunnelled: true}") -> dict[str, t.Any]:
    """The textarea that carries any options of ``module`` (the playbook's extra var ``options``), so that
    every option, one added to the module later too, reaches it without a question of its own."""
    return {
        "type": "textarea",
        "required": False,
        "question_description": "Any %soptions of the module virtops.migration.%s, as YAML or JSON (option: value, for example"
        " %s); ansible-doc virtops.migration.%s describes them.%s"
        % ("other " if questions else "", module, example, module, " A key here wins over the questions above." if questions else ""),
    }


def from_role(role: str, *variables: str) -> dict[str, Source]:
    """Inputs documented by a role: the playbook passes each VARIABLE as the role's ROLE_VARIABLE."""
    return {variable: ("role", role, "%s_%s" % (role, variable)) for variable in variables}


SURVEYS: dict[str, dict[str, t.Any]] = {
    "maintenance": {
        "playbook": "playbooks/maintenance.yml",
        "description": "Put a host into maintenance: its VMs are live-migrated to the other hosts of its cluster.",
        "inputs": {
            "target": asked("Inventory name of the host to put into maintenance."),
            **from_role("host_maintenance", "reason", "include_manual", "non_migratable", "max_outgoing", "max_incoming", "progress_interval"),
            "options": module_options("host_maintenance"),
        },
    },
    "activate": {
        "playbook": "playbooks/activate.yml",
        "description": "Bring a host back from maintenance (restarts the VMs shut down for it).",
        "inputs": {
            "target": asked("Inventory name of the host to bring back."),
            **from_role("host_activate", "move_back", "cluster"),
            "options": module_options("host_maintenance", questions=False),
        },
    },
    "migrate_vm": {
        "playbook": "playbooks/migrate_vm.yml",
        "description": "Live-migrate one VM to the best other host of its cluster.",
        "inputs": {
            "source": asked("Inventory name of the host the VM runs on."),
            "vm": asked("The VM's name."),
            "cluster": asked("Inventory group of the cluster (default: the source's first group).", required=False),
            **{name: ("module", "vm_migrate", name) for name in ("memory_reserved_mib", "guest_hooks", "guest_hook_failure")},
            "options": module_options("vm_migrate"),
        },
    },
    "patch_cluster": {
        "playbook": "playbooks/patch_cluster.yml",
        "description": "Patch a cluster one host at a time: evacuate, patch, reboot, bring back and verify each host.",
        "inputs": {
            **from_role("rolling_maintenance", "cluster"),
            "host_order": asked(
                "The hosts to patch, comma-separated, in that order (default: every host of the cluster, in inventory order).", required=False
            ),
            **from_role("rolling_maintenance", "patch_tasks", "reboot", "move_back", "progress_interval", "force", "run_id"),
            "options": module_options("host_maintenance", questions=False),
        },
        # Without a cluster there is nothing to patch.
        "required": ["cluster"],
    },
    "balance_cluster": {
        "playbook": "playbooks/balance_cluster.yml",
        "description": "Balance a cluster under a scheduling policy, or move VMs back to the hosts they left (for a schedule).",
        "inputs": {
            "cluster": asked("Inventory group of the cluster to balance."),
            **from_role("cluster_balance", "policy", "check"),
            "options": module_options("cluster_balance"),
        },
    },
    "ha_recover": {
        "playbook": "playbooks/ha_recover.yml",
        "description": "Restart the highly available VMs of a cluster's failed hosts on its other hosts (for a schedule).",
        "inputs": {
            "cluster": asked("Inventory group of the cluster to recover."),
            **from_role("ha_recover", "check"),
            "options": module_options("ha_recover", questions=False, example="{checks: 5, without_fence: lease}"),
        },
    },
}

MARKUP = re.compile(r"\b[CIMOVBRU]\(([^)]*)\)")


def plain(text: t.Any) -> str:
    """Documentation text without Ansible's markup: C(x), O(x), V(x), M(x) become x."""
    if isinstance(text, list):
        text = " ".join(str(part) for part in text)
    text = MARKUP.sub(lambda match: match.group(1).split("#")[-1].split(":")[-1] if "#" in match.group(1) else match.group(1), str(text))
    return " ".join(text.split())


def _documentation(path: Path) -> dict[str, t.Any]:
    """The DOCUMENTATION YAML of a module or doc fragment file."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Assign) and any(isinstance(target, ast.Name) and target.id == "DOCUMENTATION" for target in node.targets):
            return yaml.safe_load(ast.literal_eval(node.value))
    raise SystemExit("%s has no DOCUMENTATION" % path)


def module_option(module: str, option: str) -> dict[str, t.Any]:
    doc = _documentation(REPO / "plugins" / "modules" / ("%s.py" % module))
    options = dict(doc.get("options") or {})
    for fragment in doc.get("extends_documentation_fragment") or []:
        name = fragment.split(".")[-1]
        path = REPO / "plugins" / "doc_fragments" / ("%s.py" % name)
        if path.exists():
            options.update(_documentation(path).get("options") or {})
    if option not in options:
        raise SystemExit("module %s documents no option %s" % (module, option))
    return options[option]


def role_option(role: str, option: str) -> dict[str, t.Any]:
    spec = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text(encoding="utf-8"))
    options = spec["argument_specs"]["main"]["options"]
    if option not in options:
        raise SystemExit("role %s documents no option %s" % (role, option))
    return options[option]


def question(variable: str, source: Source, required: bool) -> dict[str, t.Any]:
    """One survey question for the extra var ``variable``."""
    if isinstance(source, dict):
        return {"question_name": variable, "variable": variable, "default": "", **source}
    kind, owner, option = source
    doc = role_option(owner, option) if kind == "role" else module_option(owner, option)
    spec: dict[str, t.Any] = {
        "question_name": variable,
        "question_description": plain(doc.get("description", "")),
        "required": required or bool(doc.get("required", False)),
        "variable": variable,
    }
    default = doc.get("default")
    kind_of = doc.get("type", "str")
    if kind_of == "bool":
        spec.update(type="multiplechoice", choices=["true", "false"], default="" if default is None else str(bool(default)).lower())
    elif kind_of == "int":
        spec.update(type="integer", default="" if default is None else int(default))
    elif kind_of == "float":
        spec.update(type="float", default="" if default is None else float(default))
    elif doc.get("choices"):
        spec.update(type="multiplechoice", choices=[str(choice) for choice in doc["choices"]], default="" if default is None else str(default))
    else:
        spec.update(type="text", default="" if default is None else str(default))
    return spec


def survey(name: str) -> dict[str, t.Any]:
    entry = SURVEYS[name]
    required = set(entry.get("required", []))
    return {
        "name": "virtops.migration %s" % name,
        "description": "%s (%s)" % (entry["description"], entry["playbook"]),
        "spec": [question(variable, source, variable in required) for variable, source in entry["inputs"].items()],
    }


def render(name: str) -> str:
    return json.dumps(survey(name), indent=2, sort_keys=False) + "\n"


def main(argv: t.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="only compare: exit 1 when a file would change")
    args = parser.parse_args(argv)
    stale = []
    for name in SURVEYS:
        path = OUT_DIR / ("%s.json" % name)
        text = render(name)
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(path.name)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print("out of date (run python scripts/awx_surveys.py): %s" % ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
