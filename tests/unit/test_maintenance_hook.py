"""The libvirt qemu hook of the maintenance_hook role, rendered from its template and run by a POSIX shell,
and the role itself, run by ansible-playbook against this machine with its hook directory in a temporary
directory (those tests need root, as the role makes root the owner, and fail when not root)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import typing as t
from pathlib import Path

import jinja2
import pytest

from ansible.plugins.filter.core import FilterModule
from ansible_collections.virtops.migration.plugins.module_utils._migration.orchestration import maintenance as mt
from roleplay import CaseRecap, Recap, link_collection, require_root, run_cases, run_play, write_role_play

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


def render(state_dir: Path, shared_storage: str = "", host_name: str = "localhost") -> str:
    """The script as the role's template task writes it (Ansible's own quote filter)."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, keep_trailing_newline=True)
    env.filters["quote"] = FilterModule().filters()["quote"]
    return env.from_string(TEMPLATE.read_text(encoding="utf-8")).render(
        maintenance_hook_state_dir=str(state_dir), maintenance_hook_shared_storage=shared_storage, maintenance_hook_host_name=host_name
    )


@pytest.fixture
def hook(tmp_path: Path) -> t.Tuple[Path, Path]:
    """A rendered hook script and the (empty) state directory it reads; a space in the path tests quoting."""
    state_dir = tmp_path / "state dir"
    state_dir.mkdir()
    script = tmp_path / "virtops-maintenance"
    script.write_text(render(state_dir), encoding="utf-8")
    script.chmod(0o755)
    return script, state_dir


def run(script: Path, vm: str, operation: str, sub_operation: str, xml: str = DOMAIN_XML) -> subprocess.CompletedProcess[str]:
    """Call the hook as libvirtd does: four arguments, the domain XML on stdin."""
    return subprocess.run(
        ["/bin/sh", str(script), vm, operation, sub_operation, "-"],
        input=xml,
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


# -- high availability: the HA store on the cluster's shared storage -----------------------------------
HA_UUID = "4f6c1a52-9d3e-4b7a-8c21-0e5d6f7a8b9c"
HA_METADATA = (
    "<metadata><virtops:migration xmlns:virtops='https://virtops.github.io/xmlns/migration/1'>"
    "<virtops:priority>high</virtops:priority><virtops:high_availability>%s</virtops:high_availability>"
    "</virtops:migration></metadata>"
)


def domain_xml(uuid: t.Optional[str] = HA_UUID, high_availability: t.Optional[bool] = True, name: str = "web1") -> str:
    """A domain XML as libvirtd gives the hook: one element a line, the VM's settings in its metadata."""
    lines = ["<domain type='kvm' id='7'>", "  <name>%s</name>" % name]
    if uuid is not None:
        lines.append("  <uuid>%s</uuid>" % uuid)
    if high_availability is not None:
        lines.append("  " + HA_METADATA % ("true" if high_availability else "false"))
    lines += ["  <memory unit='KiB'>1048576</memory>", "  <sysinfo type='smbios'><system><entry name='uuid'>%s</entry></system></sysinfo>" % HA_UUID]
    lines += ["  <devices><disk type='file' device='disk'><source file='/srv/shared/web1.qcow2'/></disk></devices>", "</domain>"]
    return "\n".join(lines) + "\n"


class HAHook(t.NamedTuple):
    script: Path
    state_dir: Path
    shared: Path  # the shared storage
    store: Path  # its HA store


@pytest.fixture
def ha_hook(tmp_path: Path) -> HAHook:
    """A hook rendered for host lab-h1 with shared storage (a space in the path tests quoting) whose HA store exists."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    shared = tmp_path / "shared storage"
    store = shared / "virtops-ha"
    store.mkdir(parents=True, mode=0o700)
    script = tmp_path / "virtops-maintenance"
    script.write_text(render(state_dir, str(shared), "lab-h1"), encoding="utf-8")
    script.chmod(0o755)
    return HAHook(script, state_dir, shared, store)


def tree(root: Path) -> t.Dict[str, t.Tuple[int, str]]:
    """Every entry below ``root``: its mode and, for a file, its content."""
    found = {}
    for path in sorted(root.rglob("*")):
        mode = stat.S_IMODE(path.lstat().st_mode)
        found[str(path.relative_to(root))] = (mode, path.read_text(encoding="utf-8") if path.is_file() else "")
    return found


def stale_marker(store: Path, host: str = "lab-h1", uuid: str = HA_UUID) -> Path:
    marker = store / "stale" / host / uuid
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"vm": "web1", "uuid": uuid, "restarted_on": "lab-h2", "at": 1796000000}), encoding="utf-8")
    return marker


def stale_refusal(vm: str = "web1", host: str = "lab-h1") -> str:
    return (
        "virtops-maintenance: VM %s was restarted on another host after %s was fenced: its definition here is stale; refusing to start it\n" % (vm, host)
    )


@pytest.mark.parametrize("high_availability", [True, False, None], ids=["ha", "not-ha", "no-setting"])
@pytest.mark.parametrize("operation", ["prepare", "migrate"])
def test_a_vm_restarted_elsewhere_after_this_host_was_fenced_is_refused(ha_hook: HAHook, operation: str, high_availability: t.Optional[bool]) -> None:
    stale_marker(ha_hook.store)
    result = run(ha_hook.script, "web1", operation, "begin", domain_xml(high_availability=high_availability))
    assert (result.returncode, result.stdout, result.stderr) == (1, "", stale_refusal())


def test_a_stale_marker_of_another_host_or_vm_refuses_nothing(ha_hook: HAHook) -> None:
    stale_marker(ha_hook.store, host="lab-h2")
    stale_marker(ha_hook.store, uuid="0f6c1a52-9d3e-4b7a-8c21-0e5d6f7a8b9c")
    for operation in ("prepare", "migrate"):
        result = run(ha_hook.script, "web1", operation, "begin", domain_xml())
        assert (result.returncode, result.stderr) == (0, "")


def test_the_maintenance_mark_is_still_checked_first(ha_hook: HAHook) -> None:
    stale_marker(ha_hook.store)
    write_mark(ha_hook.state_dir, {"state": "preparing"})
    result = run(ha_hook.script, "web1", "migrate", "begin", domain_xml())
    assert (result.returncode, result.stderr) == (1, refusal("preparing", "migrate"))
    # An activating host starts its own VMs, unless they are stale.
    write_mark(ha_hook.state_dir, {"state": "activating"})
    assert run(ha_hook.script, "web1", "prepare", "begin", domain_xml()).stderr == stale_refusal()
    assert run(ha_hook.script, "web1", "prepare", "begin", domain_xml(uuid="0f6c1a52-9d3e-4b7a-8c21-0e5d6f7a8b9c")).returncode == 0


@pytest.mark.parametrize("operation", ["prepare", "migrate"])
def test_a_highly_available_vm_is_refused_when_the_store_is_not_mounted(ha_hook: HAHook, operation: str) -> None:
    ha_hook.store.rmdir()
    result = run(ha_hook.script, "web1", operation, "begin", domain_xml())
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (
        "virtops-maintenance: VM web1 is highly available but the HA store %s is missing (shared storage not mounted): refusing to %s it\n"
        % (ha_hook.store, operation)
    )
    # Other VMs start and arrive, and nothing is written when one has started.
    for high_availability in (False, None):
        assert run(ha_hook.script, "web1", operation, "begin", domain_xml(high_availability=high_availability)).returncode == 0
    started = run(ha_hook.script, "web1", "started", "begin", domain_xml())
    assert (started.returncode, started.stderr) == (0, "")
    assert sorted(p.name for p in ha_hook.shared.iterdir()) == []


def test_a_started_highly_available_vm_is_written_into_the_store_for_root_only(ha_hook: HAHook) -> None:
    xml = domain_xml()
    for operation in ("prepare", "migrate"):
        assert run(ha_hook.script, "web1", operation, "begin", xml).returncode == 0
    assert tree(ha_hook.store) == {}
    started = run(ha_hook.script, "web1", "started", "begin", xml)
    assert (started.returncode, started.stdout, started.stderr) == (0, "", "")
    assert tree(ha_hook.store) == {
        "vms": (0o700, ""),
        "vms/%s.xml" % HA_UUID: (0o600, xml),
        "vms/%s.host" % HA_UUID: (0o600, "lab-h1\n"),
    }
    # A later start replaces both files; no temporary file is left behind.
    again = run(ha_hook.script, "web1", "started", "begin", xml.replace("1048576", "2097152"))
    assert again.returncode == 0
    assert tree(ha_hook.store)["vms/%s.xml" % HA_UUID] == (0o600, xml.replace("1048576", "2097152"))
    assert sorted(p.name for p in (ha_hook.store / "vms").iterdir()) == ["%s.host" % HA_UUID, "%s.xml" % HA_UUID]


@pytest.mark.parametrize("high_availability", [False, None], ids=["not-ha", "no-setting"])
def test_other_vms_are_left_alone(ha_hook: HAHook, high_availability: t.Optional[bool]) -> None:
    xml = domain_xml(high_availability=high_availability)
    for operation in ("prepare", "migrate", "started"):
        result = run(ha_hook.script, "web1", operation, "begin", xml)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert tree(ha_hook.store) == {}


def test_a_store_that_cannot_be_written_never_fails_the_start(ha_hook: HAHook) -> None:
    (ha_hook.store / "vms").write_text("not a directory", encoding="utf-8")
    result = run(ha_hook.script, "web1", "started", "begin", domain_xml())
    assert result.returncode == 0
    assert sorted(p.name for p in ha_hook.store.iterdir()) == ["vms"]


@pytest.mark.parametrize(
    "xml",
    [
        domain_xml(uuid=None),
        domain_xml(uuid=""),
        domain_xml(uuid="../../../escaped-000000000000000000000"),
        domain_xml(uuid="4f6c1a52/9d3e/4b7a/8c21/0e5d6f7a8b9c"),
        domain_xml(uuid="..%s" % HA_UUID[2:]),
        domain_xml(uuid="%s/../../x" % HA_UUID),
        domain_xml(uuid="$(touch injected)-0000000000000000000"),
        domain_xml(uuid=" %s" % HA_UUID[1:]),
        domain_xml(uuid="*"),
        "",
        "not xml at all\x01\x02",
        "<domain><uuid>%s" % HA_UUID,
    ],
    ids=["no-uuid", "empty", "dot-dot", "slashes", "dot-dot-prefix", "trailing-path", "command", "space", "glob", "no-input", "garbage", "unclosed"],
)
def test_weird_input_never_writes_outside_the_store_nor_refuses_by_a_made_up_name(ha_hook: HAHook, xml: str) -> None:
    # A marker for every name the input could make up: none of them may refuse (a UUID that is not one names no file).
    (ha_hook.store / "stale" / "lab-h1").mkdir(parents=True)
    for name in ("*", "..", "escaped-000000000000000000000"):
        (ha_hook.store / "stale" / "lab-h1" / name).mkdir(exist_ok=True)
    before = tree(ha_hook.shared.parent / "state") , sorted(p.name for p in ha_hook.shared.parent.iterdir())
    for operation in ("prepare", "migrate", "started"):
        result = run(ha_hook.script, "web1", operation, "begin", xml)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert not (ha_hook.store / "vms").exists()
    assert (tree(ha_hook.shared.parent / "state"), sorted(p.name for p in ha_hook.shared.parent.iterdir())) == before
    assert not (ha_hook.script.parent / "injected").exists()


def test_a_highly_available_vm_without_a_uuid_is_still_refused_when_the_store_is_not_mounted(ha_hook: HAHook) -> None:
    ha_hook.store.rmdir()
    assert run(ha_hook.script, "web1", "prepare", "begin", domain_xml(uuid="../x")).returncode == 1


def test_with_shared_storage_the_whole_domain_xml_is_read(ha_hook: HAHook) -> None:
    # libvirtd writes the XML, then closes stdin: a large one is read whole, the first <uuid> counts.
    xml = domain_xml().replace("</domain>", "<!-- padding -->" * 20000 + "<uuid>0f6c1a52-9d3e-4b7a-8c21-0e5d6f7a8b9c</uuid></domain>")
    stale_marker(ha_hook.store)
    assert run(ha_hook.script, "web1", "migrate", "begin", xml).stderr == stale_refusal()


def test_without_shared_storage_nothing_of_high_availability_happens(hook: t.Tuple[Path, Path]) -> None:
    script, state_dir = hook
    for operation in ("prepare", "migrate", "started"):
        result = run(script, "web1", operation, "begin", domain_xml())
        assert (result.returncode, result.stderr) == (0, "")
    assert sorted(p.name for p in state_dir.iterdir()) == []


def test_shellcheck_with_shared_storage(ha_hook: HAHook) -> None:
    result = subprocess.run(["shellcheck", "--shell=sh", str(ha_hook.script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


class HookHost:
    """A directory standing in for /etc/libvirt (hooks/qemu.d below it), and ansible-playbook runs of the role.

    libvirtd's restart is a command that appends a line to ``restarts``, so that the tests count restarts."""

    def __init__(self, root: Path) -> None:
        require_root("maintenance_hook")
        self.root = root
        root.chmod(0o755)
        self.etc = root / "etc-libvirt"
        self.etc.mkdir(mode=0o755)
        self.hooks = self.etc / "hooks"
        self.hooks_dir = self.hooks / "qemu.d"
        self.script = self.hooks_dir / "virtops-maintenance"
        self.restarts = root / "restarts"
        self.collections = link_collection(root)
        self.playbook = write_role_play(root / "play.yml", "maintenance_hook")
        self.variables: t.Dict[str, t.Any] = {
            "ansible_python_interpreter": sys.executable,
            "maintenance_hook_hooks_dir": str(self.hooks_dir),
            "maintenance_hook_state_dir": str(root / "state"),
            "maintenance_hook_libvirtd_restart_command": ["/bin/sh", "-c", 'echo restarted >> "$0"', str(self.restarts)],
            "maintenance_hook_libvirtd_restart_delegate_to": "localhost",
        }

    def play(self, *args: str) -> Recap:
        return run_play(self.root, self.collections, self.playbook, self.variables, *args)

    def restarted(self) -> int:
        return len(self.restarts.read_text(encoding="utf-8").splitlines()) if self.restarts.exists() else 0

    def snapshot(self) -> t.Dict[str, t.Tuple[int, int, str]]:
        """Every entry below etc-libvirt: its type and mode, owner, and content or link target."""
        found = {}
        for dirpath, dirnames, filenames in os.walk(str(self.etc)):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                content = ""
                if stat.S_ISLNK(st.st_mode):
                    content = "-> " + os.readlink(path)
                elif stat.S_ISREG(st.st_mode):
                    content = Path(path).read_text(encoding="utf-8")
                found[os.path.relpath(path, str(self.root))] = (st.st_mode, st.st_uid, content)
        return found


@pytest.fixture
def hook_host(tmp_path: Path) -> HookHost:
    return HookHost(tmp_path)


def _mode(path: Path) -> t.Tuple[int, int, int, int]:
    st = path.lstat()
    return stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def test_role_creates_the_directories_and_installs_the_hook_for_root_only(hook_host: HookHost) -> None:
    planned = hook_host.play("--check")
    assert planned.rc == 0 and planned.changed > 0, planned.output
    assert hook_host.snapshot() == {}, "check mode changed something"
    assert hook_host.restarted() == 0

    first = hook_host.play()
    assert first.rc == 0 and first.changed > 0, first.output
    assert _mode(hook_host.hooks) == (stat.S_IFDIR, 0o755, 0, 0)
    assert _mode(hook_host.hooks_dir) == (stat.S_IFDIR, 0o755, 0, 0)
    assert _mode(hook_host.script) == (stat.S_IFREG, 0o700, 0, 0)
    assert hook_host.script.read_text(encoding="utf-8") == render(hook_host.root / "state")
    assert hook_host.restarted() == 1
    assert mt.hook_status(str(hook_host.script), [], state_dir=str(hook_host.root / "state"))["installed"] is True

    for args in ((), ("--check",)):
        again = hook_host.play(*args)
        assert again.rc == 0 and again.changed == 0, again.output
    assert hook_host.restarted() == 1


def test_role_narrows_a_hook_installed_with_mode_0755(hook_host: HookHost) -> None:
    hook_host.hooks_dir.mkdir(parents=True)
    hook_host.script.write_text(render(hook_host.root / "state"), encoding="utf-8")
    hook_host.script.chmod(0o755)
    planned = hook_host.play("--check")
    assert planned.rc == 0 and planned.changed > 0 and _mode(hook_host.script)[1] == 0o755, planned.output
    narrowed = hook_host.play()
    assert narrowed.rc == 0 and narrowed.changed > 0, narrowed.output
    assert _mode(hook_host.script) == (stat.S_IFREG, 0o700, 0, 0)
    assert hook_host.play().changed == 0


def test_role_leaves_existing_directories_as_they_are_and_removes_the_hook(hook_host: HookHost) -> None:
    hook_host.hooks_dir.mkdir(parents=True)
    hook_host.hooks.chmod(0o700)
    hook_host.hooks_dir.chmod(0o711)
    own = hook_host.hooks_dir / "admin-hook"
    own.write_text("#!/bin/sh\n", encoding="utf-8")
    installed = hook_host.play()
    assert installed.rc == 0 and installed.changed > 0 and hook_host.restarted() == 1, installed.output
    assert (_mode(hook_host.hooks)[1], _mode(hook_host.hooks_dir)[1]) == (0o700, 0o711)

    hook_host.variables["maintenance_hook_state"] = "absent"
    planned = hook_host.play("--check")
    assert planned.rc == 0 and planned.changed > 0 and hook_host.script.exists(), planned.output
    removed = hook_host.play()
    assert removed.rc == 0 and removed.changed > 0, removed.output
    assert sorted(p.name for p in hook_host.hooks_dir.iterdir()) == ["admin-hook"]
    assert hook_host.restarted() == 2
    assert hook_host.play().changed == 0 and hook_host.restarted() == 2


def _hooks_dir_is_a_symlink(host: HookHost) -> str:
    elsewhere = host.root / "elsewhere"
    elsewhere.mkdir()
    host.hooks.mkdir()
    host.hooks_dir.symlink_to(elsewhere, target_is_directory=True)
    return "%s is a symbolic link, not a directory" % host.hooks_dir


def _parent_is_a_symlink(host: HookHost) -> str:
    elsewhere = host.root / "elsewhere"
    (elsewhere / "qemu.d").mkdir(parents=True)
    host.hooks.symlink_to(elsewhere, target_is_directory=True)
    return "%s is a symbolic link, not a directory" % host.hooks


def _parent_is_a_dangling_symlink(host: HookHost) -> str:
    host.hooks.symlink_to(host.root / "nowhere", target_is_directory=True)
    return "%s is a symbolic link, not a directory" % host.hooks


def _hooks_dir_is_a_file(host: HookHost) -> str:
    host.hooks.mkdir()
    host.hooks_dir.write_text("", encoding="utf-8")
    return "%s is not a directory" % host.hooks_dir


def _parent_is_a_file(host: HookHost) -> str:
    host.hooks.write_text("", encoding="utf-8")
    return "%s is not a directory" % host.hooks


def _hooks_dir_owned_by_another_user(host: HookHost) -> str:
    host.hooks_dir.mkdir(parents=True)
    os.chown(host.hooks_dir, 4321, 0)
    return "%s is owned by uid 4321, not by root" % host.hooks_dir


def _parent_owned_by_another_user(host: HookHost) -> str:
    host.hooks_dir.mkdir(parents=True)
    os.chown(host.hooks, 4321, 4321)
    return "%s is owned by uid 4321, not by root" % host.hooks


def _hooks_dir_world_writable(host: HookHost) -> str:
    host.hooks_dir.mkdir(parents=True)
    host.hooks_dir.chmod(0o777)
    return "%s is writable by group or others (mode 0777)" % host.hooks_dir


def _hooks_dir_group_writable(host: HookHost) -> str:
    host.hooks_dir.mkdir(parents=True)
    host.hooks_dir.chmod(0o775)
    return "%s is writable by group or others (mode 0775)" % host.hooks_dir


def _parent_group_writable_missing_hooks_dir(host: HookHost) -> str:
    host.hooks.mkdir()
    host.hooks.chmod(0o770)
    return "%s is writable by group or others (mode 0770)" % host.hooks


def _hook_is_a_symlink(host: HookHost) -> str:
    host.hooks_dir.mkdir(parents=True)
    target = host.root / "elsewhere.sh"
    target.write_text("#!/bin/sh\n", encoding="utf-8")
    host.script.symlink_to(target)
    return "%s is a symbolic link" % host.script


def _hook_is_a_dangling_symlink(host: HookHost) -> str:
    host.hooks_dir.mkdir(parents=True)
    host.script.symlink_to(host.root / "nowhere.sh")
    return "%s is a symbolic link" % host.script


def _hook_is_a_directory(host: HookHost) -> str:
    (host.script / "inside").mkdir(parents=True)
    return "%s is not a regular file" % host.script


def _hook_is_a_fifo(host: HookHost) -> str:
    host.hooks_dir.mkdir(parents=True)
    os.mkfifo(host.script)
    return "%s is not a regular file" % host.script


UNSAFE_PATHS = [
    _hooks_dir_is_a_symlink,
    _parent_is_a_symlink,
    _parent_is_a_dangling_symlink,
    _hooks_dir_is_a_file,
    _parent_is_a_file,
    _hooks_dir_owned_by_another_user,
    _parent_owned_by_another_user,
    _hooks_dir_world_writable,
    _hooks_dir_group_writable,
    _parent_group_writable_missing_hooks_dir,
    _hook_is_a_symlink,
    _hook_is_a_dangling_symlink,
    _hook_is_a_directory,
    _hook_is_a_fifo,
]


# Both states go through the same checks before either changes anything: every arrangement with
# state=present, a few with state=absent; each case is run in check mode, then for real.
UNSAFE_CASES = [(arrange, "present") for arrange in UNSAFE_PATHS] + [
    (arrange, "absent") for arrange in (_parent_is_a_symlink, _hooks_dir_world_writable, _hook_is_a_symlink, _hook_is_a_fifo)
]


def _unsafe_case(arrange: t.Callable[[HookHost], str], state: str) -> str:
    return "%s-%s" % (arrange.__name__.strip("_"), state)


class Refusal(t.NamedTuple):
    """One case of UNSAFE_CASES: the host it ran against, the problem its arrangement made, what was below
    etc-libvirt and the names in the host's root before the runs, then each run (check mode, then for
    real) with what was there after it."""

    host: HookHost
    problem: str
    before: t.Dict[str, t.Tuple[int, int, str]]
    outside: t.List[str]
    runs: t.List[t.Tuple[CaseRecap, t.Dict[str, t.Tuple[int, int, str]], t.List[str]]]


@pytest.fixture(scope="module")
def unsafe_path_refusals(tmp_path_factory: pytest.TempPathFactory) -> t.Dict[str, Refusal]:
    """Every case of UNSAFE_CASES, each against a host of its own: all the cases in one ansible-playbook
    process in check mode, then all in another for real."""
    refusals = {}
    for arrange, state in UNSAFE_CASES:
        host = HookHost(tmp_path_factory.mktemp("unsafe-path"))
        problem = arrange(host)
        before = host.snapshot()
        outside = sorted(p.name for p in host.root.iterdir())
        host.variables["maintenance_hook_state"] = state
        refusals[_unsafe_case(arrange, state)] = Refusal(host, problem, before, outside, [])
    variables = {case: refusal.host.variables for case, refusal in refusals.items()}
    for args in (("--check",), ()):
        recaps = run_cases(tmp_path_factory.mktemp("unsafe-paths-play"), "maintenance_hook", variables, *args)
        for case, refusal in refusals.items():
            refusal.runs.append((recaps[case], refusal.host.snapshot(), sorted(p.name for p in refusal.host.root.iterdir())))
    return refusals


@pytest.mark.parametrize(
    ("arrange", "state"), UNSAFE_CASES, ids=lambda value: value if isinstance(value, str) else value.__name__.strip("_")
)
def test_role_refuses_unsafe_paths_and_changes_nothing(
    unsafe_path_refusals: t.Dict[str, Refusal], arrange: t.Callable[[HookHost], str], state: str
) -> None:
    case = unsafe_path_refusals[_unsafe_case(arrange, state)]
    for refused, after, names in case.runs:
        assert refused.rc != 0 and refused.failed == 1 and refused.changed == 0, refused.output
        verb = "install" if state == "present" else "remove"
        assert "refusing to %s %s: %s. Nothing was changed." % (verb, case.host.script, case.problem) in refused.output, refused.output
        assert after == case.before
        assert names == case.outside
    assert case.host.restarted() == 0
