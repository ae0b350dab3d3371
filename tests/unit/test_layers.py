"""The layers of ``plugins/module_utils/_migration`` (see its ``__init__``): pure modules never need libvirt."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.virtops.migration.plugins.module_utils import _migration

PACKAGE = Path(_migration.__file__).parent
PURE = (
    "errors",
    "statefiles",
    "policy",
    "metadata",
    "settings",
    "domain",
    "hostinfo",
    "placement",
    "plan",
    "options",
    "evacuation",
    "mark",
    "failover",
)
LIBVIRT_IO = ("connection", "probe", "runner", "settings_store", "guest_agent", "failover_nic", "sriov_network")
ORCHESTRATION = ("vm_migration", "maintenance", "modulekit", "hibernation")


def test_every_file_of_the_package_has_a_layer_and_is_named_in_the_map() -> None:
    files = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")
    assert files == sorted(PURE + LIBVIRT_IO + ORCHESTRATION)
    layer_map = _migration.__doc__ or ""
    for name in files:
        assert name in layer_map, "%s is missing from the layer map in __init__.py" % name


@pytest.mark.parametrize("name", PURE)
def test_a_pure_module_imports_without_libvirt(name: str) -> None:
    # A fresh interpreter in which "import libvirt" fails, as on a controller without the bindings.
    code = (
        "import sys\n"
        "sys.modules['libvirt'] = None\n"
        "import importlib\n"
        "importlib.import_module('ansible_collections.virtops.migration.plugins.module_utils._migration.%s')\n"
        "loaded = sorted(m.rsplit('.', 1)[-1] for m in sys.modules if m.startswith('ansible_collections.virtops.migration.plugins.module_utils._migration.'))\n"
        "print(' '.join(loaded))\n" % name
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split())
    assert loaded <= set(PURE), "%s pulls in %s" % (name, sorted(loaded - set(PURE)))
