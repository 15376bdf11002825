"""Modes of the state directory: mail bodies are readable by the gateway's user only.

Contract: `secure_state_dir` creates the state directory with mode 0700, and sets 0700 on it and
its subdirectories, and 0600 on every regular file directly in it (index.sqlite3, -wal, -shm,
locks, snapshots) and in its message directories (bodies/, spool/), whatever the process umask,
returning what it had to repair so that the caller can warn (an existing directory created by an
older version, or by hand under umask 022). `create_private` makes a file 0600 before anyone else
(SQLite, a lock) opens it. Symlinks are never followed or changed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
MESSAGE_DIRS = ("bodies", "spool")  # subdirectories holding mail (engine.store.sqlite): their files are checked too


def create_private(path: Path) -> None:
    """Create *path* (if missing) with mode 0600, whatever the umask; an existing file is left as is."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & ~FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def secure_state_dir(path: Path) -> list[str]:
    """Create *path* 0700 if missing and tighten it and its files; return one line per repair."""
    repaired: list[str] = []
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode != DIR_MODE:
        os.chmod(path, DIR_MODE)
        repaired.append(f"{path}: mode {mode:04o} -> {DIR_MODE:04o}")
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            mode = stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
            if mode != DIR_MODE:
                os.chmod(entry.path, DIR_MODE, follow_symlinks=False)
                repaired.append(f"{entry.path}: mode {mode:04o} -> {DIR_MODE:04o}")
            if entry.name in MESSAGE_DIRS:
                repaired += _private_files(Path(entry.path))
    return repaired + _private_files(path)


def _private_files(path: Path) -> list[str]:
    repaired: list[str] = []
    for entry in os.scandir(path):
        if not entry.is_file(follow_symlinks=False):
            continue
        mode = stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
        if mode & ~FILE_MODE:
            os.chmod(entry.path, FILE_MODE, follow_symlinks=False)
            repaired.append(f"{entry.path}: mode {mode:04o} -> {FILE_MODE:04o}")
    return repaired


def chown_state_dir(path: Path, uid: int, gid: int) -> None:
    """Give *path*, its regular files and directories, and their files (message bodies, spool) to
    uid:gid (before `serve --user` drops root)."""
    os.chown(path, uid, gid, follow_symlinks=False)
    for entry in os.scandir(path):
        if entry.is_file(follow_symlinks=False) or entry.is_dir(follow_symlinks=False):
            os.chown(entry.path, uid, gid, follow_symlinks=False)
        if entry.is_dir(follow_symlinks=False) and entry.name in MESSAGE_DIRS:
            for inner in os.scandir(entry.path):
                if inner.is_file(follow_symlinks=False):
                    os.chown(inner.path, uid, gid, follow_symlinks=False)
