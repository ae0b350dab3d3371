# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Running one of the collection's roles with ansible-playbook against this machine (connection local).

For the role tests: each test gets a directory of its own that stands in for the guest's file system,
with the collection linked into a collections path of its own, and runs the play with its variables
as extra variables (which win over the role's own variables, so tests can redirect its paths).
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


def link_collection(root: Path) -> Path:
    """A collections path below ``root`` holding this repository as virtops.migration; returns it."""
    collections = root / "collections"
    (collections / "ansible_collections" / "virtops").mkdir(parents=True)
    (collections / "ansible_collections" / "virtops" / "migration").symlink_to(REPO, target_is_directory=True)
    return collections


def write_role_play(path: Path, role: str) -> Path:
    """Write a playbook that applies the collection's role ``role`` to localhost; returns ``path``."""
    path.write_text(
        "- name: Apply the %s role to this machine\n  hosts: localhost\n  connection: local\n  gather_facts: false\n"
        "  roles:\n    - virtops.migration.%s\n" % (role, role),
        encoding="utf-8",
    )
    return path


def run_play(root: Path, collections: Path, playbook: Path, variables: t.Mapping[str, t.Any], *args: str) -> Recap:
    """Run ``playbook`` against localhost with ``variables`` as extra variables (written to ``root``)."""
    extra = root / "vars.json"
    extra.write_text(json.dumps(dict(variables)), encoding="utf-8")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1",
               ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    proc = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", str(playbook), "-e", "@%s" % extra, *args],
        capture_output=True, text=True, timeout=1200, check=False, env=env, cwd=str(root),
    )
    output = proc.stdout + proc.stderr
    match = RECAP.search(proc.stdout)
    assert match, output
    ok, changed, _unreachable, failed = map(int, match.groups())
    return Recap(proc.returncode, ok, changed, failed, output)
