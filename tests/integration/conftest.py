"""Lab fixtures: one real multi-host libvirt lab for the whole session, torn down at the end.

If the lab cannot start, the tests fail: they never skip.
"""

from __future__ import annotations

import os
import secrets
import typing as t
from pathlib import Path

import pytest

from labkit import REPO, lab_lock_held, run_playbook, virtlab
# The tally's hooks are this conftest's hooks (pytest finds them by name here).
from tally import TALLY, pytest_runtest_protocol, pytest_terminal_summary, session_phase  # noqa: F401 pylint: disable=unused-import

# Modules whose tests run Ansible inside lab guests (the Python guests, under TCG): while they run, the
# guest keeps one core busy and the lab leaves the other nearly idle. They run first, while `make test`
# runs its checks that need no lab beside the lab stages (at the lowest CPU priority): the checks then
# fill the other core, instead of the guests running alone on one core at the end.
PYTHON_GUEST_MARK = "python_guests"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "%s: the module runs Ansible in lab guests; it runs before the others" % PYTHON_GUEST_MARK)
    TALLY.install_shims()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move the tests marked python_guests before the others, each group in its own order."""
    items.sort(key=lambda item: item.get_closest_marker(PYTHON_GUEST_MARK) is None)


# The session's VMs: tiny (firmware only, under KVM where the host offers it): the tests that use them
# need domains to place, move and report, never a guest kernel.
LAB_VMS = ("web1:192:high", "db1:256:medium", "batch1:160:low", "web2:192:high@2", "cache1:160@3")


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[Path]:
    """Bring up hosts lab-h1..lab-h3 with a few VMs; yield the inventory path.

    With ``VIRTLAB_KEEP_UP=1`` (``make test``) the lab stays up at the end, with the session's VMs
    removed, for the molecule stage that follows; that stage tears it down.
    """
    # One lab per machine (fixed addresses and namespaces): a second test session waits for the first.
    with lab_lock_held():
        inventory = tmp_path_factory.mktemp("lab") / "inventory.yml"
        args = ["up", "--hosts", "3", "--inventory", str(inventory)]
        for spec in LAB_VMS:
            args += ["--tiny-vm", spec]
        keep_up = os.environ.get("VIRTLAB_KEEP_UP") == "1"
        try:
            with session_phase():
                virtlab(*args, timeout=900)
            # Every host enforces maintenance: the collection's libvirt hook, installed by its own playbook
            # (libvirtd restarted once per host through the inventory's restart command).
            with session_phase():
                setup = run_playbook(inventory, REPO / "playbooks" / "setup_hosts.yml", {"cluster": "lab"})
            assert setup.returncode == 0, "playbooks/setup_hosts.yml failed:\n%s%s" % (setup.stdout, setup.stderr)
            yield inventory
        finally:
            if keep_up:
                virtlab("remove-vm", *(spec.split(":", maxsplit=1)[0] for spec in LAB_VMS), check=False)
            else:
                virtlab("down", check=False)


class VmFactory:
    """Fresh lab VMs with random names, removed again after the test.

    Tiny VMs by default (firmware only: a domain to place, move, pause, define and refuse, at almost no
    CPU); ``guest=True`` boots the lab's real guest (TCG), for tests that read guest memory or a
    marker, run a workload or a ping, or shut down through ACPI. :meth:`many` boots several in one
    ``virtlab add-vm`` call.
    """

    def __init__(self) -> None:
        self.created: list[str] = []

    def __call__(self, memory_mib: int = 192, host_index: int = 1, priority: str = "medium", guest: bool = False) -> str:
        return self.many([(memory_mib, host_index, priority)], guest=guest)[0]

    def names(self, count: int) -> list[str]:
        """``count`` fresh VM names, removed after the test, for VMs the test adds itself (``virtlab add-vm`` options of its own)."""
        names = ["t%s" % secrets.token_hex(3) for _index in range(count)]
        self.created.extend(names)
        return names

    def many(self, specs: t.Sequence[tuple[int, int, str] | tuple[int, int]], guest: bool = False) -> list[str]:
        """One VM per (memory_mib, host_index[, priority]), all added by one ``virtlab add-vm``; their names in order."""
        names, args = [], []
        for spec in specs:
            memory_mib, host_index = spec[0], spec[1]
            priority = spec[2] if len(spec) > 2 else "medium"  # type: ignore[misc]
            name = "t%s" % secrets.token_hex(3)
            names.append(name)
            args.append("%s:%d:%s@%d" % (name, memory_mib, priority, host_index))
        self.created.extend(names)
        virtlab("add-vm", *([] if guest else ["--tiny"]), *args)
        return names


@pytest.fixture()
def new_vm(lab: Path) -> t.Iterator[VmFactory]:  # pylint: disable=unused-argument
    """Factory for fresh lab VMs (see :class:`VmFactory`), removed again after the test."""
    factory = VmFactory()
    yield factory
    if factory.created:
        virtlab("remove-vm", *factory.created, check=False)
