"""Atomic file writes: a temporary file beside the target, fsync, rename.

A process killed mid-write (SIGKILL, a power cut) cannot remove its
temporary file. Each temporary file's name says which host and process
wrote it, so the next save or load of the same path removes those whose
writer is gone, and never one that a live process is still writing.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import uuid

from lamina._src.core.errors import layer_error


def write_atomically(path: str, data: bytes, where: str) -> None:
    """Replaces `path` with `data` so that a failure at any point leaves the old file."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise layer_error(where, f"the folder {folder!r} does not exist", FileNotFoundError)
    remove_stale_temporaries(path)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{_writer()}.{uuid.uuid4().hex}.tmp")
    # 0o666 lets the umask decide the new file's mode, as for any other file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        try:
            _write_all(fd, data)
            # os.write has no user-space buffer to flush; fsync puts the
            # bytes on disk before the rename makes them visible.
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_folder(folder: str) -> None:
    # The rename is durable only once the folder's entry is on disk. Windows
    # cannot open a folder to fsync it.
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _writer() -> str:
    # Dots would blur the name's fields; a host name may hold them.
    return f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"


def remove_stale_temporaries(path: str) -> list[str]:
    """Removes the temporary files left beside `path` by writers that died; returns their names."""
    folder = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(re.escape(f".{os.path.basename(path)}.") + r"(.+)-(\d+)\.[0-9a-f]{32}\.tmp")
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    host = socket.gethostname().replace(".", "_")
    removed = []
    for name in names:
        match = pattern.fullmatch(name)
        if match is None or match.group(1) != host or _alive(int(match.group(2))):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(folder, name))
            removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of ours may be writing it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: leave its file alone
    return True
