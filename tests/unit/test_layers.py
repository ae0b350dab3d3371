"""The layers of ``plugins/module_utils/_migration`` (see its ``__init__``), checked from the source tree.

Each layer is a sub-package and imports only its own layer and the ones above it:
``pure`` -> nothing but ``pure``; ``libvirt_io`` -> ``pure``, ``libvirt_io``; ``orchestration`` -> all three.
Only ``libvirt_io`` and ``orchestration`` may import libvirt, and a pure module imports without it.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest

from ansible_collections.virtops.migration.plugins.module_utils import _migration

PACKAGE = Path(_migration.__file__).parent
PREFIX = "ansible_collections.virtops.migration.plugins.module_utils._migration"
# Each layer, and the layers it may import from.
LAYERS = {"pure": ("pure",), "libvirt_io": ("pure", "libvirt_io"), "orchestration": ("pure", "libvirt_io", "orchestration")}
MAY_IMPORT_LIBVIRT = ("libvirt_io", "orchestration")


def modules(layer: str) -> t.List[str]:
    return sorted(path.stem for path in (PACKAGE / layer).glob("*.py") if path.stem != "__init__")


def imports(path: Path) -> t.Iterator[t.Tuple[str, int]]:
    """Every module path ``path`` imports (``from X import a, b`` gives ``X.a`` and ``X.b``), with its line."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, node.lineno
            for alias in node.names:
                yield "%s.%s" % (node.module, alias.name), node.lineno


def test_the_package_holds_only_the_three_layers_and_the_map_names_every_module() -> None:
    assert sorted(path.name for path in PACKAGE.glob("*.py")) == ["__init__.py"]
    assert sorted(path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__") == sorted(LAYERS)
    layer_map = _migration.__doc__ or ""
    for layer in LAYERS:
        assert (PACKAGE / layer / "__init__.py").is_file()
        assert modules(layer), "layer %s is empty" % layer
        for name in modules(layer):
            assert name in layer_map, "%s is missing from the layer map in __init__.py" % name


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_a_layer_imports_only_its_own_layer_and_the_ones_above(layer: str) -> None:
    wrong = []
    for name in modules(layer):
        path = PACKAGE / layer / ("%s.py" % name)
        for imported, line in imports(path):
            if imported == "libvirt" and layer not in MAY_IMPORT_LIBVIRT:
                wrong.append("%s.%s:%d imports libvirt" % (layer, name, line))
            if not imported.startswith(PREFIX + "."):
                continue
            target = imported[len(PREFIX) + 1:].split(".")[0]
            if target not in LAYERS[layer]:
                wrong.append("%s.%s:%d imports %s" % (layer, name, line, imported[len(PREFIX) + 1:]))
    assert not wrong, wrong


def test_the_layer_check_sees_a_wrong_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from %s.orchestration.maintenance import HostMaintenance\nimport libvirt\n" % PREFIX)
    found = [name for name, _line in imports(bad)]
    assert PREFIX + ".orchestration.maintenance" in found and "libvirt" in found


@pytest.mark.parametrize("name", modules("pure"))
def test_a_pure_module_imports_without_libvirt(name: str) -> None:
    # A fresh interpreter in which "import libvirt" fails, as on a controller without the bindings.
    code = (
        "import sys\n"
        "sys.modules['libvirt'] = None\n"
        "import importlib\n"
        "importlib.import_module('%s.pure.%s')\n"
        "loaded = sorted(m[len('%s.'):] for m in sys.modules if m.startswith('%s.') and m.count('.') > %d)\n"
        "print(' '.join(loaded))\n" % (PREFIX, name, PREFIX, PREFIX, PREFIX.count(".") + 1)
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split())
    assert all(module.startswith("pure.") for module in loaded), "%s pulls in %s" % (name, sorted(loaded))
