# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: survey_options
short_description: Module options given as a dictionary or as YAML or JSON text
version_added: 0.2.0
description:
  - The playbooks' extra variable C(options) - any options of the module a playbook runs, given to its role
    as one dictionary - arrives as a dictionary from C(--extra-vars) and as text from an AWX survey's
    textarea. This filter returns it as a dictionary either way, an empty answer as V({}).
  - Anything else (text that is not YAML, or YAML that is not a mapping) is an error that says what was given.
author:
  - virtops.migration contributors (@virtops)
options:
  _input:
    description: A dictionary, YAML or JSON text of one mapping, or nothing (V(null) or V("")).
    type: raw
    required: true
"""

EXAMPLES = r"""
- name: Evacuate with the options the survey's textarea gave
  ansible.builtin.include_role:
    name: virtops.migration.host_maintenance
  vars:
    host_maintenance_options: "{{ options | default({}) | virtops.migration.survey_options }}"
"""

RETURN = r"""
_value:
  description: The options, as a dictionary of option and value.
  type: dict
"""

import typing as t
from collections.abc import Mapping

import yaml

from ansible.errors import AnsibleFilterError


def survey_options(value: t.Any) -> t.Dict[str, t.Any]:
    """``value`` as a dictionary: itself when it is one, parsed when it is YAML or JSON text, {} when empty."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise AnsibleFilterError("options: not YAML or JSON (%s): %r" % (str(exc).splitlines()[0], value)) from exc
        if parsed is None:
            return {}
        if isinstance(parsed, Mapping):
            return dict(parsed)
        raise AnsibleFilterError("options: a mapping of option: value was expected, got %r" % value)
    raise AnsibleFilterError("options: a mapping of option: value was expected, got %r" % (value,))


class FilterModule:
    """The collection's filters."""

    def filters(self) -> t.Dict[str, t.Callable[..., t.Any]]:
        return {"survey_options": survey_options}
