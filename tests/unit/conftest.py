# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared fixtures for the unit tests.

The tests import the collection by its FQCN (``ansible_collections.virtops.migration...``). When
that path is not importable already (``PYTHONPATH`` pointing at a directory whose
``ansible_collections/virtops/migration`` is this repository), a temporary one is made here, so a
plain ``pytest tests/unit`` works from a checkout too.
"""

from __future__ import annotations

import atexit
import importlib.util
import pathlib
import shutil
import sys
import tempfile
import typing as t

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA_DIR = pathlib.Path(__file__).resolve().parent / "data"


def _collection_importable() -> bool:
    try:
        return importlib.util.find_spec("ansible_collections.virtops.migration") is not None
    except ModuleNotFoundError:
        return False


def _make_collection_importable() -> None:
    if _collection_importable():
        return
    root = pathlib.Path(tempfile.mkdtemp(prefix="virtops-migration-unit-"))
    atexit.register(shutil.rmtree, root, True)
    namespace = root / "ansible_collections" / "virtops"
    namespace.mkdir(parents=True)
    (namespace / "migration").symlink_to(REPO_ROOT, target_is_directory=True)
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()


_make_collection_importable()


def read_sample(name: str) -> str:
    """The text of an XML sample in ``tests/unit/data``."""
    return (DATA_DIR / name).read_text(encoding="utf-8")


@pytest.fixture
def sample() -> t.Callable[[str], str]:
    """``sample("capabilities-qemu.xml")`` gives that sample's text."""
    return read_sample
