"""Can a folder be created at or under a path?  Tried for real, not asked of ``os.access``
(which passes for root on /proc, /sys and read-only file systems, where creating a
folder then fails).  One function for every command that names an output folder."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

_WHY = {errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.ENOENT: "it takes no new folders (a virtual file system, as /proc is)"}


def why_unwritable(path: Path) -> str | None:
    """None if a folder can be made at or under ``path``; else why not, in words naming
    the folder that refused.  A uniquely named folder, with an empty file in it, is
    created in the nearest existing folder of ``path`` and removed again."""
    probe = Path(path).absolute()
    while not os.path.exists(probe):  # (False also when it cannot be looked at: go up)
        if os.path.islink(probe):
            return f"{probe} is a broken symbolic link; remove it or choose another folder"
        if probe == probe.parent:
            break
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    made = None
    try:
        made = tempfile.mkdtemp(prefix=".p2pgame-write-test-", dir=probe)
        Path(made, "file").touch()
    except OSError as e:
        return (f"cannot create a folder in {probe}: "
                f"{_WHY.get(e.errno, e.strerror or type(e).__name__)}")
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
    return None
