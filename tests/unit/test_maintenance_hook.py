"""The libvirt qemu hook of the maintenance_hook role, rendered from its template and run by a POSIX shell."""

from __future__ import annotations

import json
import os
import subprocess
import typing as t
from pathlib import Path

import jinja2
import pytest

from ansible.plugins.filter.core import FilterModule
from ansible_collections.virtops.migration.plugins.module_utils._migration import maintenance as mt

TEMPLATE = Path(__file__).resolve().parents[2] / "roles" / "maintenance_hook" / "templates" / "virtops-maintenance.j2"
HOSTNAME = os.uname().nodename
DOMAIN_XML = "<domain type='kvm'><name>web1</name>" + "<!-- padding -->" * 20000 + "</domain>\n"

# What libvirtd refuses while the host is marked, and calls the hook must let through even then
# (reconnect and attach run for VMs already running when libvirtd starts: refusing them would be harmful).
REFUSED = [("migrate", "begin"), ("prepare", "begin")]
ALLOWED = [
    ("migrate", "end"),
    ("prepare", "end"),
    ("start", "begin"),
    ("started", "begin"),
    ("stopped", "end"),
    ("release", "end"),
    ("reconnect", "begin"),
    ("attach", "begin"),
    ("restore", "begin"),
    ("migrate", "-"),
]


def render(state_dir: Path) -> str:
    """The script as the role's template task writes it (Ansible's own quote filter)."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, keep_trailing_newline=True)
    env.filters["quote"] = FilterModule().filters()["quote"]
    return env.from_string(TEMPLATE.read_text(encoding="utf-8")).render(maintenance_hook_state_dir=str(state_dir))


@pytest.fixture
def hook(tmp_path: Path) -> t.Tuple[Path, Path]:
    """A rendered hook script and the (empty) state directory it reads; a space in the path tests quoting."""
    state_dir = tmp_path / "state dir"
    state_dir.mkdir()
    script = tmp_path / "virtops-maintenance"
    script.write_text(render(state_dir), encoding="utf-8")
    script.chmod(0o755)
    return script, state_dir


def run(script: Path, vm: str, operation: str, sub_operation: str) -> subprocess.CompletedProcess[str]:
    """Call the hook as libvirtd does: four arguments, the domain XML on stdin."""
    return subprocess.run(
        ["/bin/sh", str(script), vm, operation, sub_operation, "-"],
        input=DOMAIN_XML,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
        cwd=script.parent,
    )


def refusal(state: str, operation: str, vm: str = "web1") -> str:
    return "virtops-maintenance: host %s is in %s: refusing to %s VM %s\n" % (HOSTNAME, state, operation, vm)


def write_mark(state_dir: Path, mark: t.Dict[str, t.Any], indent: t.Optional[int] = 2) -> None:
    """A mark as host_maintenance writes it (indented, sorted keys) or compact."""
    (state_dir / "maintenance.json").write_text(
        json.dumps(mark, indent=indent, sort_keys=True) + "\n", encoding="utf-8"
    )


def test_the_state_dir_is_quoted_in_the_script(hook: t.Tuple[Path, Path]) -> None:
    script, state_dir = hook
    assert "mark='%s/maintenance.json'" % state_dir in script.read_text(encoding="utf-8")


@pytest.mark.parametrize("operation, sub_operation", REFUSED + ALLOWED)
def test_no_mark_lets_everything_through(hook: t.Tuple[Path, Path], operation: str, sub_operation: str) -> None:
    script, _state_dir = hook
    result = run(script, "web1", operation, sub_operation)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize("indent", [2, None], ids=["as-written", "compact"])
@pytest.mark.parametrize("state", ["preparing", "maintenance"])
@pytest.mark.parametrize("operation, sub_operation", REFUSED)
def test_marked_host_refuses_incoming_and_starts(
    hook: t.Tuple[Path, Path], operation: str, sub_operation: str, state: str, indent: t.Optional[int]
) -> None:
    script, state_dir = hook
    write_mark(
        state_dir, {"state": state, "since": "2026-11-26T04:20:00.000+00:00", "reason": "kernel", "by": "awx"}, indent
    )
    result = run(script, "web1", operation, sub_operation)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", refusal(state, operation))


def test_an_activating_host_starts_its_vms_but_takes_no_incoming_one(hook: t.Tuple[Path, Path]) -> None:
    script, state_dir = hook
    mt.write_mark(str(state_dir), {"state": mt.ACTIVATING, "shutdown_vms": ["lic1"]})
    assert run(script, "lic1", "prepare", "begin").returncode == 0
    refused = run(script, "web1", "migrate", "begin")
    assert (refused.returncode, refused.stderr) == (1, refusal("activating", "migrate"))


def test_host_maintenance_recognises_the_rendered_hook_by_its_state_directory(hook: t.Tuple[Path, Path], tmp_path: Path) -> None:
    # host_maintenance's hook_status(state_dir=...) and the role's template agree on the mark's path.
    script, state_dir = hook
    assert mt.hook_status(str(script), [], state_dir=str(state_dir)) == {"path": str(script), "installed": True, "loaded": None}
    other = str(tmp_path / "other")
    assert mt.hook_status(str(script), [], state_dir=other) == {
        "path": str(script),
        "installed": False,
        "loaded": False,
        "problem": "it watches %s/maintenance.json, not %s/maintenance.json" % (state_dir, other),
    }


@pytest.mark.parametrize("state", [mt.PREPARING, mt.MAINTENANCE])
def test_reads_the_mark_as_host_maintenance_writes_it(hook: t.Tuple[Path, Path], state: str) -> None:
    script, state_dir = hook
    mt.write_mark(str(state_dir), {"state": state, "reason": 'kernel "state": "x"', "by": "awx", "shutdown_vms": []})
    result = run(script, "web1", "migrate", "begin")
    assert (result.returncode, result.stderr) == (1, refusal(state, "migrate"))
    mt.clear_mark(str(state_dir))
    assert run(script, "web1", "migrate", "begin").returncode == 0


@pytest.mark.parametrize("state", ["preparing", "maintenance"])
@pytest.mark.parametrize("operation, sub_operation", ALLOWED)
def test_marked_host_lets_other_calls_through(
    hook: t.Tuple[Path, Path], operation: str, sub_operation: str, state: str
) -> None:
    script, state_dir = hook
    write_mark(state_dir, {"state": state})
    result = run(script, "web1", operation, sub_operation)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "",
        "\x00\xff\xfe garbage\n",
        '{"since": "2026-11-26T04:20:00.000+00:00", "reason": "no state key"}\n',
        '{"state": "evacuating"}\n',
        '{"state": 3}\n',
        '{"state": "PREPARING"}\n',
        # A "state" inside another value is not the mark's state.
        json.dumps({"reason": 'fake, "state": "preparing"', "by": "x"}),
        json.dumps({"reason": '{"state": "preparing"}'}, indent=2),
    ],
    ids=[
        "truncated",
        "empty",
        "binary",
        "no-state",
        "unknown-state",
        "number",
        "upper-case",
        "faked",
        "faked-indented",
    ],
)
@pytest.mark.parametrize("operation, sub_operation", REFUSED)
def test_unreadable_state_still_refuses_as_maintenance(
    hook: t.Tuple[Path, Path], operation: str, sub_operation: str, content: str
) -> None:
    script, state_dir = hook
    (state_dir / "maintenance.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    result = run(script, "web1", operation, sub_operation)
    assert (result.returncode, result.stderr) == (1, refusal("maintenance", operation))


def test_real_state_wins_over_a_faked_one_in_the_reason(hook: t.Tuple[Path, Path]) -> None:
    script, state_dir = hook
    write_mark(state_dir, {"reason": 'x", "state": "preparing', "state": "maintenance"}, indent=None)
    assert run(script, "web1", "migrate", "begin").stderr == refusal("maintenance", "migrate")
    write_mark(state_dir, {"reason": '"state": "maintenance"', "state": "preparing"})
    assert run(script, "web1", "migrate", "begin").stderr == refusal("preparing", "migrate")


@pytest.mark.parametrize("kind", ["directory", "fifo", "dangling-symlink", "unreadable"])
def test_anything_at_the_mark_path_refuses_without_blocking(hook: t.Tuple[Path, Path], kind: str) -> None:
    script, state_dir = hook
    mark = state_dir / "maintenance.json"
    if kind == "directory":
        mark.mkdir()
    elif kind == "fifo":
        os.mkfifo(mark)  # reading it would block until a writer comes: the hook must not
    elif kind == "dangling-symlink":
        mark.symlink_to(state_dir / "nowhere")
    else:
        mark.write_text('{"state": "preparing"}\n', encoding="utf-8")
        mark.chmod(0)
        if os.access(mark, os.R_OK):
            # root reads it anyway (as libvirtd's hook does): the state is then known
            result = run(script, "web1", "prepare", "begin")
            assert (result.returncode, result.stderr) == (1, refusal("preparing", "prepare"))
            return
    result = run(script, "web1", "prepare", "begin")
    assert (result.returncode, result.stderr) == (1, refusal("maintenance", "prepare"))


def test_the_mark_symlinked_to_a_mark_is_read(hook: t.Tuple[Path, Path], tmp_path: Path) -> None:
    script, state_dir = hook
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text('{"state": "preparing"}\n', encoding="utf-8")
    (state_dir / "maintenance.json").symlink_to(elsewhere)
    result = run(script, "web1", "migrate", "begin")
    assert (result.returncode, result.stderr) == (1, refusal("preparing", "migrate"))


@pytest.mark.parametrize(
    "vm",
    [
        "web 1",
        'it\'s "quoted"',
        "$(touch injected) `touch injected`",
        "%s%d%n\\n\\c",
        "-n",
        "*",
        "",
    ],
)
def test_vm_name_is_printed_as_data(hook: t.Tuple[Path, Path], vm: str) -> None:
    script, state_dir = hook
    write_mark(state_dir, {"state": "maintenance"})
    result = run(script, vm, "migrate", "begin")
    assert (result.returncode, result.stderr) == (1, refusal("maintenance", "migrate", vm))
    assert sorted(p.name for p in script.parent.iterdir()) == ["state dir", "virtops-maintenance"]


def test_runs_through_its_shebang_as_libvirtd_does(hook: t.Tuple[Path, Path]) -> None:
    script, state_dir = hook
    assert script.read_text(encoding="utf-8").startswith("#!/bin/sh\n")
    write_mark(state_dir, {"state": "preparing"})
    result = subprocess.run(
        [str(script), "web1", "migrate", "begin", "-"],
        input=DOMAIN_XML,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert (result.returncode, result.stderr) == (1, refusal("preparing", "migrate"))


@pytest.mark.parametrize("operation", ["migrate", "prepare", "start"])
def test_does_not_wait_for_stdin(hook: t.Tuple[Path, Path], operation: str) -> None:
    script, state_dir = hook
    write_mark(state_dir, {"state": "maintenance"})
    with subprocess.Popen(
        ["/bin/sh", str(script), "web1", operation, "begin", "-"], stdin=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:  # stdin stays open, with nothing written: a hook that reads it would hang
        assert proc.wait(timeout=10) == (0 if operation == "start" else 1)
        assert proc.stdin is not None
        proc.stdin.close()


def test_shellcheck(hook: t.Tuple[Path, Path]) -> None:
    script, _state_dir = hook
    result = subprocess.run(["shellcheck", "--shell=sh", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
