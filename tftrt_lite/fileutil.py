"""Writing files so that a reader never sees half of one.

Why one helper: calibration tables, profile reports and the kernel cache are all read by
other processes (or a later run) while they may be rewritten; each must appear complete or
not at all, and a failed write must leave the old file and no temporary behind.
"""
from __future__ import annotations

import os
import uuid
from typing import Union


def write_atomically(path: Union[str, os.PathLike], data: bytes, durable: bool = True) -> None:
    """Write ``data`` to a temporary file beside ``path`` (flushed to disk when ``durable``;
    a cache whose lost entry is just rebuilt skips that cost), then rename it over ``path``
    in one step. The folder must exist."""
    directory, base = os.path.split(os.path.abspath(os.fspath(path)))
    tmp = os.path.join(directory, f".{base}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, like open()
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
