# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The collection's execution environment metadata and the example definition, through ansible-builder.

``ansible-builder create`` needs no container runtime: it writes the build context, whose Containerfile
is checked here. ``ansible-builder introspect`` reads the installed collection's meta/execution-environment.yml
as a build does, and its output is checked against what the collection needs.
"""

from __future__ import annotations

import subprocess
import sys
import typing as t
from pathlib import Path

import yaml
from bindep.depends import Depends
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
BUILDER = Path(sys.executable).parent / "ansible-builder"
EXAMPLE = REPO / "extensions" / "ee" / "execution-environment.yml"


def run(*args: str, cwd: Path = REPO) -> str:
    proc = subprocess.run([str(BUILDER), *args], capture_output=True, text=True, timeout=300, check=False, cwd=str(cwd))
    assert proc.returncode == 0, "ansible-builder %s failed:\n%s%s" % (" ".join(args), proc.stdout, proc.stderr)
    return proc.stdout


def test_the_collection_declares_its_python_and_system_needs() -> None:
    meta = yaml.safe_load((REPO / "meta" / "execution-environment.yml").read_text(encoding="utf-8"))
    assert meta["version"] == 1
    python = (REPO / meta["dependencies"]["python"]).read_text(encoding="utf-8")
    names = {Requirement(line).name for line in python.splitlines() if line.strip() and not line.startswith("#")}
    assert names == {"libvirt-python"}
    system = (REPO / meta["dependencies"]["system"]).read_text(encoding="utf-8")
    depends = Depends(system)  # raises on a line bindep cannot parse
    rules = {rule[0]: rule[1] for rule in depends._rules}  # pylint: disable=protected-access
    # Each run-time need in both package worlds; build-time needs only in the builder stage (compile).
    for rpm, deb in (("libvirt-libs", "libvirt0"), ("openssh-clients", "openssh-client")):
        assert rules[rpm] == [(True, "platform:rpm")] and rules[deb] == [(True, "platform:dpkg")], rules
    for name in ("libvirt-devel", "libvirt-dev", "gcc", "python3-devel", "python3-dev", "pkg-config", "pkgconf-pkg-config"):
        assert (True, "compile") in rules[name], (name, rules[name])


def test_introspect_reads_them_from_the_installed_collection(tmp_path: Path) -> None:
    collections = tmp_path / "collections"
    (collections / "ansible_collections" / "virtops").mkdir(parents=True)
    (collections / "ansible_collections" / "virtops" / "migration").symlink_to(REPO, target_is_directory=True)
    found = yaml.safe_load(run("introspect", "--sanitize", str(collections)))
    assert found["python"] == [
        "libvirt-python>=9.0  # from collection virtops.migration",
    ]
    assert "libvirt0 [platform:dpkg]  # from collection virtops.migration" in found["system"]
    assert "libvirt-devel [platform:rpm compile]  # from collection virtops.migration" in found["system"]


def test_create_writes_a_build_context_for_the_example(tmp_path: Path) -> None:
    context = tmp_path / "context"
    run("create", "-f", str(EXAMPLE), "-c", str(context))
    containerfile = next(path for path in (context / "Dockerfile", context / "Containerfile") if path.exists()).read_text(encoding="utf-8")
    definition: dict[str, t.Any] = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    assert definition["version"] == 3
    assert 'EE_BASE_IMAGE="%s"' % definition["images"]["base_image"]["name"] in containerfile
    assert "ansible-core==2.19.14" in containerfile and "ansible-runner==2.4.3" in containerfile
    assert "ansible-galaxy collection install" in containerfile
    assert "introspect" in containerfile and "install-from-bindep" in containerfile
    requirements = yaml.safe_load((context / "_build" / "requirements.yml").read_text(encoding="utf-8"))
    names = [entry["name"] for entry in requirements["collections"]]
    assert names[0].endswith("virtops/migration.git") and "community.libvirt" in names
