"""Atomic output files: write to a temporary sibling, fsync, rename.

Every writer in :mod:`qkdpost.io` goes through :class:`AtomicPath`, so an
error (or a crash) at any point leaves either the old file or no file, never
a partial one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["AtomicPath"]


class AtomicPath:
    """A temporary path next to ``path`` that becomes ``path`` on :meth:`commit`.

    Parameters
    ----------
    path : str or os.PathLike
        The final destination. Its directory must exist and be writable.

    Notes
    -----
    The temporary file is created in the same directory (so the rename is
    atomic on POSIX filesystems) with a hidden name ``.NAME.<random>.tmp``.
    :meth:`commit` fsyncs the file, renames it over ``path`` and fsyncs the
    directory; :meth:`abort` removes it. Both are idempotent.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        directory = self.path.parent if str(self.path.parent) else Path(".")
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        os.close(fd)
        self.tmp = Path(tmp)
        self._done = False

    def commit(self) -> None:
        """Flush the temporary file to disk and rename it to the final path."""
        if self._done:
            return
        fd = os.open(self.tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.tmp, self.path)
        self._done = True
        try:  # make the rename itself durable
            dfd = os.open(self.path.parent if str(self.path.parent) else ".", os.O_RDONLY)
        except OSError:  # pragma: no cover - e.g. platforms without directory fds
            return
        try:
            os.fsync(dfd)
        except OSError:  # pragma: no cover
            pass
        finally:
            os.close(dfd)

    def abort(self) -> None:
        """Remove the temporary file (no output is left behind)."""
        if self._done:
            return
        self._done = True
        try:
            self.tmp.unlink()
        except FileNotFoundError:
            pass
