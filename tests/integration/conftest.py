"""Lab fixtures: one real multi-host libvirt lab for the whole session, torn down at the end.

If the lab cannot start, the tests fail: they never skip.
"""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest

from labkit import assert_no_vm_lost, virtlab

LAB_VMS = ("web1:192:high", "db1:256:medium", "batch1:160:low", "web2:192:high@2", "cache1:160@3")


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[Path]:
    """Bring up hosts lab-h1..lab-h3 with a few VMs; yield the inventory path."""
    inventory = tmp_path_factory.mktemp("lab") / "inventory.yml"
    args = ["up", "--hosts", "3", "--inventory", str(inventory)]
    for spec in LAB_VMS:
        args += ["--vm", spec]
    virtlab(*args, timeout=900)
    try:
        yield inventory
    finally:
        virtlab("down", check=False)


@pytest.fixture()
def no_vm_lost(lab: Path) -> t.Iterator[None]:
    """Every test that touches VMs ends with the lab's no-VM-lost check."""
    yield
    assert_no_vm_lost()
