"""Lab fixtures: one real multi-host libvirt lab for the whole session, torn down at the end.

If the lab cannot start, the tests fail: they never skip.
"""

from __future__ import annotations

import secrets
import typing as t
from pathlib import Path

import pytest

from labkit import REPO, run_playbook, virtlab

# Modules whose tests run Ansible inside lab guests (the Python guests, under TCG): while they run, the
# lab keeps both cores busy. They run last, so that what `make test` runs beside the lab stages (the
# checks that need no lab, at the lowest CPU priority) has the idle time of the other modules first.
PYTHON_GUEST_MARK = "python_guests"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "%s: the module runs Ansible in lab guests; it runs after the others" % PYTHON_GUEST_MARK)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move the tests marked python_guests after the others, each group in its own order."""
    items.sort(key=lambda item: item.get_closest_marker(PYTHON_GUEST_MARK) is not None)


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
        # Every host enforces maintenance: the collection's libvirt hook, installed by its own playbook
        # (libvirtd restarted once per host through the inventory's restart command).
        setup = run_playbook(inventory, REPO / "playbooks" / "setup_hosts.yml", {"cluster": "lab"})
        assert setup.returncode == 0, "playbooks/setup_hosts.yml failed:\n%s%s" % (setup.stdout, setup.stderr)
        yield inventory
    finally:
        virtlab("down", check=False)


@pytest.fixture()
def new_vm(lab: Path) -> t.Iterator[t.Callable[..., str]]:
    """Factory for fresh lab VMs (random names), removed again after the test."""
    created: list[str] = []

    def make(memory_mib: int = 192, host_index: int = 1, priority: str = "medium") -> str:
        name = "t%s" % secrets.token_hex(3)
        virtlab("add-vm", "%s:%d:%s@%d" % (name, memory_mib, priority, host_index))
        created.append(name)
        return name

    yield make
    if created:
        virtlab("remove-vm", *created, check=False)
