# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The libvirt_auth role, run by ansible-playbook against this machine (connection local).

The file the role writes is redirected into the test's own temporary directory (``libvirt_auth_file``), a
directory that stands in for /etc/libvirt. The tests need root (the role makes root the owner of the file)
and fail when not root.
"""

from __future__ import annotations

import base64
import configparser
import json
import os
import stat
import sys
import typing as t
from pathlib import Path

import pytest
from roleplay import CaseRecap, Recap, link_collection, require_root, run_cases, run_play, write_role_play

MARKER = "# Managed by virtops.migration.libvirt_auth"
# A password with the characters a key file value may hold; TOKEN is a part of it that no other output has.
TOKEN = "Zq7uXk2Lw9vB"
PASSWORD = "%s %%s#;=:'\"\\$ {x} w\u00f6rd" % TOKEN


class Host:
    """A directory standing in for a hypervisor's /etc/libvirt, and ansible-playbook runs of the role."""

    def __init__(self, root: Path) -> None:
        require_root("libvirt_auth")
        self.root = root
        root.chmod(0o755)
        self.etc = root / "etc-libvirt"
        self.etc.mkdir(mode=0o755)
        self.etc.chmod(0o755)
        self.auth = self.etc / "auth.conf"
        self.collections = link_collection(root)
        self.playbook = write_role_play(root / "play.yml", "libvirt_auth")
        self.variables: dict[str, t.Any] = {
            "ansible_python_interpreter": sys.executable,
            "libvirt_auth_file": str(self.auth),
            "libvirt_auth_username": "migrator",
            "libvirt_auth_password": PASSWORD,
        }

    def play(self, *args: str) -> Recap:
        return run_play(self.root, self.collections, self.playbook, self.variables, *args)

    def parsed(self) -> configparser.ConfigParser:
        """The file as a key file reader sees it (no interpolation: a value is the rest of its line)."""
        parser = configparser.ConfigParser(interpolation=None, delimiters=("=",), comment_prefixes=("#", ";"))
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(self.auth.read_text(encoding="utf-8"))
        return parser

    def snapshot(self) -> dict[str, tuple[int, int, str]]:
        """Every entry below the root but the play's own files: its type and mode, owner and content."""
        found = {}
        for dirpath, dirnames, filenames in os.walk(str(self.root)):
            dirnames[:] = [name for name in dirnames if name != "collections"]
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    content = "-> " + os.readlink(path)
                elif stat.S_ISREG(st.st_mode):
                    content = Path(path).read_text(encoding="utf-8")
                else:
                    content = ""
                found[os.path.relpath(path, str(self.root))] = (st.st_mode, st.st_uid, content)
        for own in ("play.yml", "vars.json"):
            found.pop(own, None)
        return found


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


def test_writes_the_default_group_root_only_then_changes_nothing(host: Host) -> None:
    planned = host.play("--check", "--diff")
    assert planned.rc == 0 and planned.changed == 1, planned.output
    assert not host.auth.exists(), "check mode wrote the file"

    first = host.play()
    assert first.rc == 0 and first.changed == 1, first.output
    st = host.auth.lstat()
    assert (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (stat.S_IFREG, 0o600, 0, 0)
    assert host.auth.read_text(encoding="utf-8").startswith(MARKER + "\n")
    assert host.auth.read_text(encoding="utf-8").endswith("\n")
    parsed = host.parsed()
    assert parsed.sections() == ["credentials-virtops", "auth-libvirt-default"]
    assert dict(parsed["credentials-virtops"]) == {"authname": "migrator", "password": PASSWORD}
    assert dict(parsed["auth-libvirt-default"]) == {"credentials": "virtops"}
    # libvirt takes a value as the rest of its line, exactly.
    assert "\npassword=%s\n" % PASSWORD in host.auth.read_text(encoding="utf-8")

    again = host.play()
    assert again.rc == 0 and again.changed == 0, again.output
    checked = host.play("--check", "--diff")
    assert checked.rc == 0 and checked.changed == 0, checked.output


def test_one_group_per_destination_host_and_a_changed_password_is_rewritten(host: Host) -> None:
    host.variables.update(
        libvirt_auth_hosts=["hv2.example.com", "192.0.2.12", "fe80::1", "hv2.example.com", "hv3"],
        libvirt_auth_credentials_name="lab_1.migration-x",
    )
    assert host.play().changed == 1
    parsed = host.parsed()
    assert parsed.sections() == [
        "credentials-lab_1.migration-x",
        "auth-libvirt-hv2.example.com",
        "auth-libvirt-192.0.2.12",
        "auth-libvirt-fe80::1",
        "auth-libvirt-hv3",
    ]
    assert all(dict(parsed[name]) == {"credentials": "lab_1.migration-x"} for name in parsed.sections()[1:])
    assert host.play().changed == 0

    host.variables["libvirt_auth_password"] = "another"
    planned = host.play("--check")
    assert planned.changed == 1 and host.parsed()["credentials-lab_1.migration-x"]["password"] == PASSWORD
    assert host.play().changed == 1
    assert host.parsed()["credentials-lab_1.migration-x"]["password"] == "another"
    assert stat.S_IMODE(host.auth.stat().st_mode) == 0o600


def test_a_wider_mode_or_another_owner_is_put_right(host: Host) -> None:
    assert host.play().changed == 1
    host.auth.chmod(0o644)
    os.chown(host.auth, 1234, 1234)
    assert host.play().changed == 1
    st = host.auth.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 0, 0)


def test_absent_removes_only_the_file_the_role_wrote(host: Host) -> None:
    host.variables["libvirt_auth_state"] = "absent"
    assert host.play().changed == 0, "nothing to remove"

    del host.variables["libvirt_auth_state"]
    assert host.play().changed == 1
    host.variables["libvirt_auth_state"] = "absent"
    planned = host.play("--check")
    assert planned.rc == 0 and planned.changed == 1 and host.auth.exists(), planned.output
    removed = host.play()
    assert removed.rc == 0 and removed.changed == 1 and not host.auth.exists(), removed.output
    assert host.play().changed == 0

    # An administrator's own file stays, whatever it holds.
    own = "[credentials-admin]\nauthname=admin\npassword=%s\n\n[auth-libvirt-default]\ncredentials=admin\n" % PASSWORD
    host.auth.write_text(own, encoding="utf-8")
    for args in ((), ("--check",)):
        refused = host.play(*args)
        assert refused.rc != 0 and refused.failed == 1, refused.output
        assert "refusing to remove %s: it does not start with the line '%s'" % (host.auth, MARKER) in refused.output
        assert host.auth.read_text(encoding="utf-8") == own
        assert TOKEN not in refused.output

    # Without a configuration directory there is nothing to remove.
    host.variables["libvirt_auth_file"] = str(host.root / "missing" / "auth.conf")
    assert host.play().changed == 0


def test_the_password_never_shows(host: Host) -> None:
    outputs = []
    host.variables["libvirt_auth_hosts"] = ["hv2"]
    outputs.append(host.play("-vvv", "--diff", "--check"))
    outputs.append(host.play("-vvv", "--diff"))
    content = host.auth.read_bytes()
    outputs.append(host.play("-vvv", "--diff"))
    outputs.append(host.play("-vvv", "--diff", "--check"))
    host.variables["libvirt_auth_password"] = TOKEN + "-changed"
    outputs.append(host.play("-vvv", "--diff", "--check"))
    outputs.append(host.play("-vvv", "--diff"))
    host.variables["libvirt_auth_password"] = TOKEN + " "
    outputs.append(host.play("-vvv", "--diff"))
    host.variables["libvirt_auth_state"] = "absent"
    outputs.append(host.play("-vvv", "--diff", "--check"))
    outputs.append(host.play("-vvv", "--diff"))
    assert [(o.rc == 0, o.changed) for o in outputs] == [
        (True, 1), (True, 1), (True, 0), (True, 0), (True, 1), (True, 1), (False, 0), (True, 1), (True, 1)
    ], [o.output for o in outputs]
    assert "libvirt_auth_password must not start or end with white space" in outputs[6].output
    forms = {
        TOKEN,
        json.dumps(PASSWORD)[1:-1],
        base64.b64encode(content).decode("ascii")[:40],
        base64.b64encode(PASSWORD.encode("utf-8")).decode("ascii")[:12],
    }
    for recap in outputs:
        assert "task path: " in recap.output, "the run was not verbose"
        for form in forms:
            assert form not in recap.output, recap.output


def test_the_username_may_hold_what_a_line_can(host: Host) -> None:
    host.variables["libvirt_auth_username"] = "migrator@EXAMPLE.COM with space=%s"
    assert host.play().changed == 1
    assert host.parsed()["credentials-virtops"]["authname"] == "migrator@EXAMPLE.COM with space=%s"


BAD_INPUT = [
    ({"libvirt_auth_username": ""}, "libvirt_auth_username is required (a non-empty string)"),
    ({"libvirt_auth_username": " migrator"}, "libvirt_auth_username must not start or end with white space"),
    ({"libvirt_auth_username": "migrator\t"}, "libvirt_auth_username must not start or end with white space"),
    ({"libvirt_auth_username": "mig\nrator"}, "libvirt_auth_username must not contain a line break or a NUL"),
    ({"libvirt_auth_username": "mig\rrator"}, "libvirt_auth_username must not contain a line break or a NUL"),
    ({"libvirt_auth_username": "mig\x00rator"}, "libvirt_auth_username must not contain a line break or a NUL"),
    ({"libvirt_auth_username": 1234}, "libvirt_auth_username is required (a non-empty string)"),
    ({"libvirt_auth_password": ""}, "libvirt_auth_password is required (a non-empty string)"),
    ({"libvirt_auth_password": None}, "libvirt_auth_password is required (a non-empty string)"),
    ({"libvirt_auth_password": "pass\nword"}, "libvirt_auth_password must not contain a line break or a NUL"),
    ({"libvirt_auth_password": "pass\x00word"}, "libvirt_auth_password must not contain a line break or a NUL"),
    ({"libvirt_auth_password": "\tpassword"}, "libvirt_auth_password must not start or end with white space"),
    ({"libvirt_auth_hosts": ["hv2]"]}, 'these are not: ["hv2]"]'),
    ({"libvirt_auth_hosts": ["hv1", "[fe80::1]"]}, 'these are not: ["[fe80::1]"]'),
    ({"libvirt_auth_hosts": ["hv 2"]}, 'these are not: ["hv 2"]'),
    ({"libvirt_auth_hosts": ["hv2\n"]}, 'these are not: ["hv2\\n"]'),
    ({"libvirt_auth_hosts": [""]}, 'these are not: [""]'),
    ({"libvirt_auth_hosts": ["h\u00f6st"]}, "these are not: "),
    ({"libvirt_auth_hosts": "hv2"}, 'libvirt_auth_hosts must be a list of host names'),
    ({"libvirt_auth_credentials_name": "my creds"}, "libvirt_auth_credentials_name must match ^[A-Za-z0-9_.-]+$"),
    ({"libvirt_auth_credentials_name": "a]b"}, "libvirt_auth_credentials_name must match"),
    ({"libvirt_auth_credentials_name": ""}, "libvirt_auth_credentials_name must match"),
    ({"libvirt_auth_file": "auth.conf"}, "libvirt_auth_file must be the absolute path of a file"),
]


class Run(t.NamedTuple):
    """One case of a table, run with the others in one ansible-playbook process: the host it ran against,
    every entry below the host's root before and after the run, and what the run did."""

    host: Host
    before: dict[str, tuple[int, int, str]]
    recap: CaseRecap
    after: dict[str, tuple[int, int, str]]


def run_table(workdir: Path, arranged: dict[str, Host]) -> dict[str, Run]:
    """Apply the role to each case's host (arranged, its variables set), all in one ansible-playbook process."""
    before = {case: host.snapshot() for case, host in arranged.items()}
    recaps = run_cases(workdir, "libvirt_auth", {case: host.variables for case, host in arranged.items()})
    return {case: Run(host, before[case], recaps[case], host.snapshot()) for case, host in arranged.items()}


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Every case of BAD_INPUT (by its variables as JSON), each against a host whose file the role wrote before."""
    arranged = {}
    for variables, _message in BAD_INPUT:
        host = Host(tmp_path_factory.mktemp("bad-input"))
        host.auth.write_text(MARKER + "\n[credentials-virtops]\nauthname=old\npassword=old\n", encoding="utf-8")
        host.auth.chmod(0o600)
        host.variables.update(variables)
        arranged[json.dumps(variables)] = host
    return run_table(tmp_path_factory.mktemp("bad-input-play"), arranged)


@pytest.mark.parametrize("variables, message", BAD_INPUT, ids=lambda value: json.dumps(value) if isinstance(value, dict) else "")
def test_bad_input_fails_clearly_and_changes_nothing(bad_input_runs: dict[str, Run], variables: dict[str, t.Any], message: str) -> None:
    run = bad_input_runs[json.dumps(variables)]
    refused = run.recap
    assert refused.rc != 0 and refused.failed == 1 and refused.changed == 0, refused.output
    assert message in refused.output, refused.output
    assert run.after == run.before


def test_absent_needs_no_credentials(host: Host) -> None:
    host.auth.write_text(MARKER + "\n", encoding="utf-8")
    host.variables.update(libvirt_auth_state="absent", libvirt_auth_username="", libvirt_auth_password="")
    removed = host.play()
    assert removed.rc == 0 and removed.changed == 1, removed.output
    assert not host.auth.exists()


def _symlink_to_file(host: Host) -> str:
    target = host.root / "elsewhere.conf"
    target.write_text("[credentials-x]\n", encoding="utf-8")
    host.auth.symlink_to(target)
    return "%s is a symbolic link" % host.auth


def _dangling_symlink(host: Host) -> str:
    host.auth.symlink_to(host.root / "nowhere.conf")
    return "%s is a symbolic link" % host.auth


def _directory_at_the_file(host: Host) -> str:
    host.auth.mkdir()
    return "%s is not a regular file" % host.auth


def _fifo_at_the_file(host: Host) -> str:
    os.mkfifo(host.auth)
    return "%s is not a regular file" % host.auth


def _directory_is_a_symlink(host: Host) -> str:
    link = host.root / "etc-link"
    link.symlink_to(host.etc, target_is_directory=True)
    host.variables["libvirt_auth_file"] = str(link / "auth.conf")
    return "%s is a symbolic link, not a directory" % link


def _directory_is_a_file(host: Host) -> str:
    plain = host.root / "plain"
    plain.write_text("", encoding="utf-8")
    host.variables["libvirt_auth_file"] = str(plain / "auth.conf")
    return "%s is not a directory" % plain


def _world_writable_directory(host: Host) -> str:
    host.etc.chmod(0o777)
    return "%s is writable by group or others (mode 0777)" % host.etc


def _group_writable_directory(host: Host) -> str:
    host.etc.chmod(0o775)
    return "%s is writable by group or others (mode 0775)" % host.etc


def _directory_owned_by_another_user(host: Host) -> str:
    os.chown(host.etc, 4321, 0)
    return "%s is owned by uid 4321, not by root" % host.etc


def _missing_directory(host: Host) -> str:
    host.variables["libvirt_auth_file"] = str(host.root / "missing" / "auth.conf")
    return "libvirt's configuration directory %s is missing" % (host.root / "missing")


UNSAFE_PATHS = [
    _symlink_to_file,
    _dangling_symlink,
    _directory_at_the_file,
    _fifo_at_the_file,
    _directory_is_a_symlink,
    _directory_is_a_file,
    _world_writable_directory,
    _group_writable_directory,
    _directory_owned_by_another_user,
    _missing_directory,
]


# Both states go through the same checks before either changes anything: every arrangement with
# state=present, a few with state=absent.
UNSAFE_CASES = [(arrange, "present") for arrange in UNSAFE_PATHS] + [
    (arrange, "absent") for arrange in (_symlink_to_file, _fifo_at_the_file, _world_writable_directory, _missing_directory)
]


def _unsafe_case(arrange: t.Callable[[Host], str], state: str) -> str:
    return "%s-%s" % (arrange.__name__.strip("_"), state)


@pytest.fixture(scope="module")
def unsafe_path_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, Run]]:
    """Every case of UNSAFE_CASES: the problem its arrangement made, and its run."""
    arranged = {}
    problems = {}
    for arrange, state in UNSAFE_CASES:
        host = Host(tmp_path_factory.mktemp("unsafe-path"))
        case = _unsafe_case(arrange, state)
        problems[case] = arrange(host)
        host.variables["libvirt_auth_state"] = state
        arranged[case] = host
    runs = run_table(tmp_path_factory.mktemp("unsafe-paths-play"), arranged)
    return {case: (problems[case], run) for case, run in runs.items()}


@pytest.mark.parametrize(
    ("arrange", "state"), UNSAFE_CASES, ids=lambda value: value if isinstance(value, str) else value.__name__.strip("_")
)
def test_unsafe_paths_are_refused_and_left_alone(
    unsafe_path_runs: dict[str, tuple[str, Run]], arrange: t.Callable[[Host], str], state: str
) -> None:
    problem, run = unsafe_path_runs[_unsafe_case(arrange, state)]
    host, refused = run.host, run.recap
    if state == "absent" and arrange is _missing_directory:
        assert refused.rc == 0 and refused.changed == 0, refused.output
    else:
        assert refused.rc != 0 and refused.failed == 1 and refused.changed == 0, refused.output
        verb = "write" if state == "present" else "remove"
        assert "refusing to %s %s: %s" % (verb, host.variables["libvirt_auth_file"], problem) in refused.output, refused.output
    assert run.after == run.before
    assert not (host.root / "missing").exists()
