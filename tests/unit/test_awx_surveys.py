# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The AWX survey specs under extensions/awx/surveys: in sync with the argument specs and module docs
they are generated from, well formed, and every answer they can give is used as its type by the playbook."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GENERATOR = REPO / "scripts" / "awx_surveys.py"
SURVEY_DIR = REPO / "extensions" / "awx" / "surveys"
QUESTION_TYPES = {"text", "textarea", "password", "integer", "float", "multiplechoice", "multiselect"}


def _generator() -> t.Any:
    spec = importlib.util.spec_from_file_location("awx_surveys", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()


def test_the_files_are_what_the_generator_writes() -> None:
    proc = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert sorted(path.stem for path in SURVEY_DIR.glob("*.json")) == sorted(GEN.SURVEYS)


def test_a_changed_argument_spec_makes_the_check_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GEN, "OUT_DIR", tmp_path)
    assert GEN.main([]) == 0
    assert GEN.main(["--check"]) == 0
    stale = tmp_path / "maintenance.json"
    stale.write_text(stale.read_text(encoding="utf-8").replace("host_maintenance", "x"), encoding="utf-8")
    original = GEN.role_option

    def changed(role: str, option: str) -> dict[str, t.Any]:
        return dict(original(role, option), description="changed")

    monkeypatch.setattr(GEN, "role_option", changed)
    assert GEN.main(["--check"]) == 1


@pytest.mark.parametrize("name", sorted(GEN.SURVEYS))
def test_each_question_is_well_formed_and_used_as_its_type(name: str) -> None:
    survey = json.loads((SURVEY_DIR / ("%s.json" % name)).read_text(encoding="utf-8"))
    playbook = (REPO / GEN.SURVEYS[name]["playbook"]).read_text(encoding="utf-8")
    assert survey["spec"], survey
    variables = [question["variable"] for question in survey["spec"]]
    assert len(variables) == len(set(variables))
    for question in survey["spec"]:
        variable = question["variable"]
        assert question["type"] in QUESTION_TYPES, question
        assert isinstance(question["required"], bool) and question["question_name"] and question["question_description"], question
        assert "C(" not in question["question_description"] and "O(" not in question["question_description"], question
        assert re.search(r"\b%s\b" % re.escape(variable), playbook), "%s is not used by %s" % (variable, GEN.SURVEYS[name]["playbook"])
        if question["type"] == "multiplechoice":
            assert question["choices"] and all(isinstance(choice, str) for choice in question["choices"]), question
            assert question["default"] in [""] + question["choices"], question
        # AWX passes every answer as it was typed: a boolean as "true"/"false", so the playbook converts it.
        if question.get("choices") == ["true", "false"]:
            assert re.search(r"\b%s \| (default\([^)]*\) \| )?bool\b" % re.escape(variable), playbook), "%s is not converted with | bool" % variable
        if question["type"] == "integer":
            assert re.search(r"\b%s \| int\b" % re.escape(variable), playbook), "%s is not converted with | int" % variable
    # The playbook's required inputs are required questions.
    assert [q["variable"] for q in survey["spec"] if q["required"]], survey


def test_the_balance_survey_offers_the_modules_policies_and_asks_for_the_cluster() -> None:
    survey = json.loads((SURVEY_DIR / "balance_cluster.json").read_text(encoding="utf-8"))
    questions = {question["variable"]: question for question in survey["spec"]}
    assert list(questions) == ["cluster", "policy", "check", "options"]
    assert questions["cluster"]["required"] is True
    # The role's choices are the module's (its argument spec, from the options table).
    options = importlib.import_module("ansible_collections.virtops.migration.plugins.module_utils._migration.pure.options")
    assert questions["policy"]["choices"] == options.module_spec("cluster_balance")["policy"]["choices"]
    assert questions["check"]["choices"] == ["true", "false"] and questions["check"]["default"] == "false"
