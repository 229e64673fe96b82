"""Atomic file writes: a temporary file beside the target, fsync, rename."""

from __future__ import annotations

import contextlib
import os
import uuid

from lamina._src.core.errors import layer_error


def write_atomically(path: str, data: bytes, where: str) -> None:
    """Replaces `path` with `data` so that a failure at any point leaves the old file."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise layer_error(where, f"the folder {folder!r} does not exist", FileNotFoundError)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
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
