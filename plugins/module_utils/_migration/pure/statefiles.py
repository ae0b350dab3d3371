# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""The small JSON files the collection keeps on a host, written so that a crash or a reboot never
leaves half a file, and never through a path another user could redirect.

A write goes to a new temporary file in the same directory (created exclusively, not following
links, mode 0600), is flushed to disk, renamed over the old file, and the directory is flushed too:
the next step after writing the maintenance mark is often a reboot. Reads do not follow a symbolic
link either. The directory must belong to root (or to the user the module runs as) and must not be
writable by its group or by others; directories the collection creates get mode 0700, files 0600.
Append-only logs are opened without following a link and must be regular files owned by root.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
import typing as t

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import MigrationError

# Where the collection keeps its state (maintenance mark, notes on paused VMs) and its audit log.
DEFAULT_STATE_DIR = "/var/lib/virtops-migration"
DEFAULT_LOG_DIR = "/var/log/virtops-migration"


class StateFileError(MigrationError):
    """A state file or its directory cannot be used safely."""


def _check_directory(directory: str) -> None:
    info = os.lstat(directory)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise StateFileError("%s is not a directory (a symbolic link or another file); refusing to use it" % directory, path=directory)
    if info.st_uid not in (0, os.geteuid()):
        raise StateFileError("%s belongs to uid %d, not to root; refusing to use it" % (directory, info.st_uid), path=directory)
    if info.st_mode & (stat.S_IWOTH | stat.S_IWGRP):
        raise StateFileError("%s is writable by other users (mode %o); refusing to use it" % (directory, stat.S_IMODE(info.st_mode)), path=directory)


def check_directory(directory: str) -> None:
    """Refuse an unsafe state or log directory (see the module docstring); a missing one is fine."""
    if os.path.lexists(directory):
        _check_directory(directory)


def ensure_directory(directory: str, mode: int = 0o700) -> None:
    """Create ``directory`` (and its parents) if missing, then check it is safe to write in."""
    try:
        os.makedirs(directory, mode=mode, exist_ok=True)
        _check_directory(directory)
    except OSError as exc:
        raise StateFileError("Cannot use the state directory %s: %s" % (directory, exc), path=directory) from exc


def exists(directory: str, name: str) -> bool:
    """Whether anything (a file, even a dangling link) is at ``directory/name``."""
    return os.path.lexists(os.path.join(directory, name))


def read_text(directory: str, name: str) -> t.Optional[str]:
    """The text of ``directory/name``, or None when the file does not exist."""
    path = os.path.join(directory, name)
    check_directory(directory)
    try:
        # Non-blocking, so that a FIFO planted at the path cannot hang the module.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError("Cannot read %s: %s" % (path, _why(exc)), path=path) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StateFileError("Cannot read %s: it is not a regular file" % path, path=path)
    try:
        with os.fdopen(fd, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, ValueError) as exc:
        raise StateFileError("Cannot read %s: %s" % (path, exc), path=path) from exc


def read_json(directory: str, name: str) -> t.Optional[t.Any]:
    """The JSON content of ``directory/name``, or None when the file does not exist."""
    text = read_text(directory, name)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        path = os.path.join(directory, name)
        raise StateFileError("Cannot read %s: %s" % (path, exc), path=path) from exc


def write_text(directory: str, name: str, text: str, mode: int = 0o600) -> None:
    """Replace ``directory/name`` with ``text`` atomically and durably (see the module docstring)."""
    ensure_directory(directory)
    path = os.path.join(directory, name)
    partial = os.path.join(directory, ".%s.%s.tmp" % (name, secrets.token_hex(6)))
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, path)
        except BaseException:
            try:
                os.unlink(partial)
            except OSError:
                pass
            raise
        _sync_directory(directory)
    except OSError as exc:
        raise StateFileError("Cannot write %s: %s" % (path, exc), path=path) from exc


def write_json(directory: str, name: str, data: t.Any, mode: int = 0o600) -> None:
    """Replace ``directory/name`` with ``data`` as JSON, atomically and durably."""
    write_text(directory, name, json.dumps(data, indent=2, sort_keys=True) + "\n", mode)


def _why(exc: OSError) -> str:
    """Why opening a path failed; a symbolic link (refused by O_NOFOLLOW) is named as such."""
    if exc.errno == errno.ELOOP:
        return "it is a symbolic link; refusing to follow it"
    return str(exc)


def _check_file(path: str, fd: int) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise StateFileError("Cannot use %s: it is not a regular file; refusing to write to it" % path, path=path)
    if info.st_uid not in (0, os.geteuid()):
        raise StateFileError("Cannot use %s: it belongs to uid %d, not to root; refusing to write to it" % (path, info.st_uid), path=path)


def check_append(directory: str, name: str) -> None:
    """Refuse now what :func:`append_line` would refuse later: an unsafe directory or a file that is not
    a root-owned regular file (a symbolic link, a FIFO ...). A missing directory or file is fine."""
    path = os.path.join(directory, name)
    check_directory(directory)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StateFileError("Cannot use %s: %s" % (path, _why(exc)), path=path) from exc
    try:
        _check_file(path, fd)
    finally:
        os.close(fd)


def append_line(directory: str, name: str, line: str, mode: int = 0o600) -> None:
    """Append ``line`` and a newline to ``directory/name``, creating it with ``mode``; never through a link."""
    ensure_directory(directory)
    path = os.path.join(directory, name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        raise StateFileError("Cannot write %s: %s" % (path, _why(exc)), path=path) from exc
    try:
        _check_file(path, fd)
        with os.fdopen(fd, "a", encoding="utf-8", closefd=False) as handle:
            handle.write(line + "\n")
    except OSError as exc:
        raise StateFileError("Cannot write %s: %s" % (path, exc), path=path) from exc
    finally:
        os.close(fd)


def remove(directory: str, name: str) -> bool:
    """Remove ``directory/name`` durably; False when it was not there. Never through a directory link."""
    path = os.path.join(directory, name)
    check_directory(directory)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StateFileError("Cannot remove %s: %s" % (path, exc), path=path) from exc
    _sync_directory(directory)
    return True


def _sync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
