"""Where the lab stage's time goes: per test module, its wall time, the guests it booted, the Ansible processes it started.

A pytest plugin (loaded by ``conftest.py``). At the end of the run it prints one line per test module
and writes the same figures to ``tests/output/lab-tally.json``:

- ``seconds``: wall time of the module's tests (setup, call and teardown; module fixtures included);
  the session lab's own start is its own row, ``(session lab)``.
- ``tcg``, ``kvm``, ``python``: QEMU processes started to boot a guest, under TCG or KVM, and how many
  of them were Python guests; ``incoming``: QEMU processes started as a migration destination. These
  are read from each lab host's libvirt QEMU logs (one "starting up" record per QEMU process), so they
  count every guest the lab, the tests and the collection's modules started.
- ``ansible``: ``ansible`` and ``ansible-playbook`` processes, counted by shims put first on ``PATH``
  for the session; ``async_status`` polls are ``ansible`` processes too.

The JSON file also has every test's own seconds (``tests``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import time
import typing as t
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STATE_DIR = Path(os.environ.get("VIRTLAB_STATE", "/var/tmp/virtops-lab"))
OUTPUT = REPO / "tests" / "output" / "lab-tally.json"
SESSION_ROW = "(session lab)"
TALLY_AS = "VIRTOPS_TALLY_AS"
COUNTED = ("ansible", "ansible-playbook")
START_RECORD = re.compile(r"starting up libvirt version")


class Tally:
    """The counters of one pytest session."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, float]] = {}
        self.seen: dict[Path, int] = {}
        self.bin_dir = Path(tempfile.mkdtemp(prefix="virtops-tally-"))
        self.log = self.bin_dir / "ansible.log"
        self.log.touch()
        self.log_read = 0
        self.session_seconds = 0.0
        self.tests: dict[str, float] = {}

    def row(self, name: str) -> dict[str, float]:
        return self.rows.setdefault(name, {"tests": 0, "seconds": 0.0, "tcg": 0, "kvm": 0, "python": 0, "incoming": 0, "ansible": 0})

    def install_shims(self) -> None:
        """Put counting ``ansible``/``ansible-playbook`` shims first on PATH (for this process and its children)."""
        for name in COUNTED:
            real = shutil.which(name)
            real = os.path.abspath(real) if real else None
            if not real:
                continue
            shim = self.bin_dir / name
            shim.write_text(
                '#!/bin/sh\nprintf "%%s\\n" "${%s:-${PYTEST_CURRENT_TEST:-?}}" >> %s\nexec %s "$@"\n' % (TALLY_AS, self.log, real)
            )
            shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        os.environ["PATH"] = "%s%s%s" % (self.bin_dir, os.pathsep, os.environ.get("PATH", ""))

    def count_ansible(self) -> None:
        with self.log.open() as stream:
            stream.seek(self.log_read)
            lines = stream.readlines()
            self.log_read = stream.tell()
        for line in lines:
            who = line.strip()
            self.row(who if who == SESSION_ROW else module_of(who))["ansible"] += 1

    def count_guests(self, into: str) -> None:
        """Attribute the QEMU processes started since the last look to row ``into``."""
        row = self.row(into)
        for log in sorted(STATE_DIR.glob("hosts/*/log-libvirt/qemu/*.log")):
            if log.name.endswith("-console.log"):
                continue
            try:
                records = START_RECORD.split(log.read_text(errors="replace"))[1:]
            except OSError:
                continue
            done = self.seen.get(log, 0)
            if len(records) < done:  # a new lab reused the path
                done = 0
            for record in records[done:]:
                if "-incoming" in record:
                    row["incoming"] += 1
                    continue
                if re.search(r"accel[= ]kvm", record):
                    row["kvm"] += 1
                else:
                    row["tcg"] += 1
                if "initrd-python" in record:
                    row["python"] += 1
            self.seen[log] = len(records)

    def report(self) -> list[str]:
        self.count_ansible()
        order = sorted(self.rows.items(), key=lambda item: -item[1]["seconds"])
        lines = ["%-34s %5s %7s %5s %5s %6s %8s %7s" % ("lab tally: module", "tests", "seconds", "tcg", "kvm", "python", "incoming", "ansible")]
        total = {key: 0.0 for key in ("tests", "seconds", "tcg", "kvm", "python", "incoming", "ansible")}
        for name, row in order:
            lines.append(
                "%-34s %5d %7.0f %5d %5d %6d %8d %7d"
                % (name, row["tests"], row["seconds"], row["tcg"], row["kvm"], row["python"], row["incoming"], row["ansible"])
            )
            for key in total:
                total[key] += row[key]
        lines.append(
            "%-34s %5d %7.0f %5d %5d %6d %8d %7d"
            % ("(total)", total["tests"], total["seconds"], total["tcg"], total["kvm"], total["python"], total["incoming"], total["ansible"])
        )
        OUTPUT.parent.mkdir(parents=True, exist_ok=True)
        OUTPUT.write_text(json.dumps({"modules": self.rows, "total": total, "tests": self.tests}, indent=2, sort_keys=True) + "\n")
        return lines


def module_of(nodeid: str) -> str:
    """``tests/integration/test_x.py::test_y[p] (call)`` -> ``test_x.py``."""
    return nodeid.split("::", 1)[0].rsplit("/", 1)[-1] or "?"


TALLY = Tally()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> t.Iterator[None]:  # pylint: disable=unused-argument
    started = time.monotonic()
    session_before = TALLY.session_seconds
    yield
    row = TALLY.row(module_of(item.nodeid))
    row["tests"] += 1
    # The session lab's start (timed by session_phase) is its own row, not the first module's.
    seconds = time.monotonic() - started - (TALLY.session_seconds - session_before)
    row["seconds"] += seconds
    TALLY.tests[item.nodeid] = round(seconds, 1)
    TALLY.count_guests(module_of(item.nodeid))
    TALLY.count_ansible()


class session_phase:  # pylint: disable=invalid-name
    """Count what runs inside the ``with`` block (the session lab's start) as the ``(session lab)`` row."""

    def __enter__(self) -> None:
        self.started = time.monotonic()
        os.environ[TALLY_AS] = SESSION_ROW

    def __exit__(self, *exc: object) -> None:
        os.environ.pop(TALLY_AS, None)
        elapsed = time.monotonic() - self.started
        TALLY.session_seconds += elapsed
        TALLY.row(SESSION_ROW)["seconds"] += elapsed
        TALLY.count_guests(SESSION_ROW)
        TALLY.count_ansible()


def pytest_terminal_summary(terminalreporter: t.Any) -> None:
    if not TALLY.rows:
        return
    terminalreporter.section("lab tally (guests booted and Ansible processes per module)")
    for line in TALLY.report():
        terminalreporter.write_line(line)
    terminalreporter.write_line("written to %s" % OUTPUT.relative_to(REPO))
