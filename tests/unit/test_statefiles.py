"""The collection's small state files: atomic, private, never through a symbolic link (no hypervisor)."""

from __future__ import annotations

import json
import os
import stat
import typing as t
from pathlib import Path

import pytest

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import statefiles as sf
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import MigrationError

DATA = {"state": "preparing", "since": "2026-11-26T04:20:00.000+00:00", "shutdown_vms": ["lic1"], "count": 3}


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def test_round_trip_private_and_no_temporary_file_left(state_dir: Path) -> None:
    sf.write_json(str(state_dir), "mark.json", DATA)
    assert sf.read_json(str(state_dir), "mark.json") == DATA
    assert stat.S_IMODE((state_dir / "mark.json").stat().st_mode) == 0o600
    assert [path.name for path in state_dir.iterdir()] == ["mark.json"]
    sf.write_json(str(state_dir), "mark.json", {"replaced": True})
    assert sf.read_json(str(state_dir), "mark.json") == {"replaced": True}
    assert [path.name for path in state_dir.iterdir()] == ["mark.json"]


def test_the_directory_is_created_with_its_parents(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b" / "suspended"
    sf.write_json(str(directory), "x.json", [1, 2])
    assert sf.read_json(str(directory), "x.json") == [1, 2]
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_an_existing_file_is_replaced_private_whatever_its_mode(state_dir: Path) -> None:
    state_dir.mkdir()
    (state_dir / "mark.json").write_text("{}")
    (state_dir / "mark.json").chmod(0o666)
    sf.write_json(str(state_dir), "mark.json", DATA)
    assert stat.S_IMODE((state_dir / "mark.json").stat().st_mode) == 0o600


def test_a_symlink_at_the_name_is_replaced_not_followed(state_dir: Path, tmp_path: Path) -> None:
    state_dir.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (state_dir / "mark.json").symlink_to(victim)
    sf.write_json(str(state_dir), "mark.json", DATA)
    assert victim.read_text() == "precious\n"
    assert not (state_dir / "mark.json").is_symlink()
    assert json.loads((state_dir / "mark.json").read_text()) == DATA


def test_reading_refuses_a_symlink(state_dir: Path, tmp_path: Path) -> None:
    state_dir.mkdir()
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(DATA))
    (state_dir / "mark.json").symlink_to(elsewhere)
    with pytest.raises(sf.StateFileError, match="Cannot read .*mark.json") as caught:
        sf.read_json(str(state_dir), "mark.json")
    assert caught.value.details["path"] == str(state_dir / "mark.json")


@pytest.mark.parametrize("content", ["{not json", "", '{"a": 1'])
def test_reading_a_broken_file_is_an_error(state_dir: Path, content: str) -> None:
    state_dir.mkdir()
    (state_dir / "mark.json").write_text(content)
    with pytest.raises(MigrationError, match="Cannot read .*mark.json"):
        sf.read_json(str(state_dir), "mark.json")


def test_reading_a_missing_file_gives_none(state_dir: Path) -> None:
    assert sf.read_json(str(state_dir), "mark.json") is None


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o757, 0o775, 0o770])
def test_a_directory_others_can_write_is_refused(state_dir: Path, mode: int) -> None:
    state_dir.mkdir()
    state_dir.chmod(mode)
    with pytest.raises(sf.StateFileError, match="is writable by other users .mode %o.; refusing to use it" % mode):
        sf.ensure_directory(str(state_dir))
    with pytest.raises(sf.StateFileError):
        sf.write_json(str(state_dir), "mark.json", DATA)
    assert list(state_dir.iterdir()) == []
    # Reading from it is refused too (anyone could have swapped the file).
    with pytest.raises(sf.StateFileError, match="is writable by other users"):
        sf.read_json(str(state_dir), "mark.json")


def test_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "state"
    link.symlink_to(real, target_is_directory=True)
    with pytest.raises(sf.StateFileError, match="is not a directory \\(a symbolic link or another file\\)"):
        sf.ensure_directory(str(link))
    with pytest.raises(sf.StateFileError):
        sf.write_json(str(link), "mark.json", DATA)
    assert list(real.iterdir()) == []


def test_a_file_in_place_of_the_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    with pytest.raises(sf.StateFileError, match="Cannot use the state directory"):
        sf.ensure_directory(str(tmp_path / "state"))


def test_a_directory_of_another_user_is_refused(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state_dir.mkdir()
    if os.geteuid() == 0:
        os.chown(state_dir, 4242, -1)
    else:  # the directory is ours: run as someone else
        monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)
    with pytest.raises(sf.StateFileError, match="belongs to uid [0-9]+, not to root; refusing to use it"):
        sf.ensure_directory(str(state_dir))


def test_remove_says_whether_the_file_was_there(state_dir: Path) -> None:
    assert sf.remove(str(state_dir), "mark.json") is False
    sf.write_json(str(state_dir), "mark.json", DATA)
    assert sf.remove(str(state_dir), "mark.json") is True
    assert sf.remove(str(state_dir), "mark.json") is False
    assert list(state_dir.iterdir()) == []


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(state_dir: Path) -> None:
    sf.write_json(str(state_dir), "mark.json", DATA)
    unserialisable: t.Dict[str, t.Any] = {"when": object()}
    with pytest.raises((TypeError, MigrationError)):
        sf.write_json(str(state_dir), "mark.json", unserialisable)
    assert sf.read_json(str(state_dir), "mark.json") == DATA
    assert [path.name for path in state_dir.iterdir()] == ["mark.json"]


def test_a_fifo_at_the_path_is_refused_without_blocking(state_dir: Path) -> None:
    state_dir.mkdir()
    os.mkfifo(state_dir / "mark.json")
    with pytest.raises(sf.StateFileError, match="not a regular file"):
        sf.read_json(str(state_dir), "mark.json")


# -- append-only logs (the host's audit log)


def test_a_log_is_created_private_and_appended_to(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    sf.append_line(str(log_dir), "events.jsonl", '{"n": 1}')
    sf.append_line(str(log_dir), "events.jsonl", '{"n": 2}')
    assert (log_dir / "events.jsonl").read_text() == '{"n": 1}\n{"n": 2}\n'
    assert stat.S_IMODE((log_dir / "events.jsonl").stat().st_mode) == 0o600
    assert stat.S_IMODE(log_dir.stat().st_mode) == 0o700
    sf.check_append(str(log_dir), "events.jsonl")


def test_a_symlink_at_the_log_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    log_dir.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (log_dir / "events.jsonl").symlink_to(victim)
    for attempt in (lambda: sf.check_append(str(log_dir), "events.jsonl"), lambda: sf.append_line(str(log_dir), "events.jsonl", "x")):
        with pytest.raises(MigrationError, match="events.jsonl: it is a symbolic link; refusing to follow it"):
            attempt()
    assert victim.read_text() == "precious\n"


def test_a_fifo_at_the_log_is_refused_without_blocking(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    log_dir.mkdir(mode=0o700)
    os.mkfifo(str(log_dir / "events.jsonl"))
    with pytest.raises(MigrationError, match="not a regular file"):
        sf.check_append(str(log_dir), "events.jsonl")
    with pytest.raises(MigrationError):
        sf.append_line(str(log_dir), "events.jsonl", "x")


def test_a_log_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    log_dir.chmod(0o777)
    with pytest.raises(MigrationError, match="writable by other users"):
        sf.check_append(str(log_dir), "events.jsonl")
    with pytest.raises(MigrationError, match="writable by other users"):
        sf.append_line(str(log_dir), "events.jsonl", "x")
    assert not (log_dir / "events.jsonl").exists()


def test_a_missing_log_directory_passes_the_check_and_is_not_created(tmp_path: Path) -> None:
    sf.check_append(str(tmp_path / "log"), "events.jsonl")
    assert not (tmp_path / "log").exists()


def test_a_symlink_at_a_state_file_is_named_when_reading(state_dir: Path, tmp_path: Path) -> None:
    state_dir.mkdir()
    (state_dir / "mark.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(MigrationError, match="mark.json: it is a symbolic link; refusing to follow it"):
        sf.read_json(str(state_dir), "mark.json")
