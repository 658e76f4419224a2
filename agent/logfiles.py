"""Job log files on the node: readable by the agent's user only (0600 in a 0700 directory).

A job's output may hold what its owner would not show other users of the node (tokens,
paths, data); the default umask would leave it 0644 in a 0755 directory.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> None:
    """Create `path` (and parents) and make it 0700 if this user owns it and it is wider."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
        path.chmod(DIR_MODE)


def open_log(path: Path) -> BinaryIO:
    """A new log file at `path`, 0600, never through a symlink planted there."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # an existing file keeps its mode on O_CREAT
    return os.fdopen(fd, "wb")
