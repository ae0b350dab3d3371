"""What the lab benchmarks share: the environment they run in, timed playbook runs and the summary lines.

Importing it makes ``tests/integration/labkit.py`` importable and puts the repository's virtual
environment first on ``PATH`` (``ansible``, ``ansible-playbook``), with the collection found through
``.venv/collections`` as ``make setup`` leaves it. Import it before ``labkit``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import typing as t
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
os.environ.setdefault("ANSIBLE_COLLECTIONS_PATH", str(REPO / ".venv" / "collections"))
os.environ["PATH"] = "%s:%s" % (REPO / ".venv" / "bin", os.environ.get("PATH", ""))

from labkit import run_playbook, virsh_migrate  # noqa: E402  pylint: disable=wrong-import-position

# Where the benchmarks keep the lab's inventory and the playbooks they generate (git-ignored).
BENCH_DIR = REPO / "tests" / "output" / "bench"
INVENTORY = BENCH_DIR / "inventory.yml"


def timed_playbook(playbook: Path, extra_vars: t.Mapping[str, t.Any] | None = None, inventory: Path = INVENTORY) -> float:
    """Run a playbook through ``ansible-playbook``; its wall time, from start to finish. A failed run stops the benchmark."""
    start = time.monotonic()
    proc = run_playbook(inventory, playbook, extra_vars)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(
            "%s %s failed (exit %d):\n%s%s" % (playbook.relative_to(REPO), dict(extra_vars or {}), proc.returncode, proc.stdout, proc.stderr)
        )
    return elapsed


def migrate_all(moves: t.Sequence[t.Tuple[str, str, str]], workers: int = 1) -> None:
    """``virsh migrate --live --p2p --persistent --undefinesource`` of each (source URI, destination URI, VM).

    ``workers`` threads take the moves in the given order, so at most that many run at once and they
    start in that order; any failed migration stops the benchmark once the others have ended.
    """
    if workers <= 1:
        for source, destination, vm in moves:
            virsh_migrate(source, destination, vm)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(virsh_migrate, source, destination, vm) for source, destination, vm in moves]
    for future in futures:
        future.result()


def median(values: t.Sequence[float], spec: str = "%.0f") -> str:
    """The median formatted with ``spec``, or "n/a" when nothing was measured."""
    return spec % statistics.median(values) if values else "n/a"


def ratio(numerator: t.Sequence[float], denominator: t.Sequence[float]) -> float | None:
    """The ratio of the two medians; None when either side has no measurement."""
    if not numerator or not denominator:
        return None
    return statistics.median(numerator) / statistics.median(denominator)


def ratio_line(label: str, numerator: t.Sequence[float], denominator: t.Sequence[float], goal: t.Optional[float]) -> str:
    """``label``: the ratio of the two medians, against its goal (a ratio at or above it meets it; None: no goal)."""
    value = ratio(numerator, denominator)
    if goal is None:
        return "%s: %s" % (label, "n/a" if value is None else "%.2f" % value)
    if value is None:
        return "%s: n/a (goal >= %.2g)" % (label, goal)
    return "%s: %.2f (goal >= %.2g: %s)" % (label, value, goal, "met" if value >= goal else "NOT met")
