"""The few exception classes of qkdpost.

Messages name the argument (or file and offset), the value, the constraint and
the fix. They never contain key material. Every class also inherits from the
builtin a caller would naturally catch (``ValueError`` / ``OSError``), so
``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "QkdpostError",
    "ConfigError",
    "InputError",
    "FileFormatError",
    "AlignmentError",
    "ChannelError",
    "PeerDisconnected",
    "ProtocolError",
]


class QkdpostError(Exception):
    """Base class of every error raised on purpose by qkdpost."""


class ConfigError(QkdpostError, ValueError):
    """An impossible or inconsistent configuration value."""


class InputError(QkdpostError, ValueError):
    """A bad argument to a public function (shape, dtype, range, length)."""


class FileFormatError(QkdpostError, ValueError):
    """A file that is truncated, corrupt, of the wrong type or unit.

    Parameters
    ----------
    path : str
        The file.
    offset : int or None
        Byte offset (or record index, stated in the message) where the problem is.
    message : str
        What is wrong and how to fix it.
    """

    def __init__(self, path: object, offset: int | None, message: str):
        self.path = str(path)
        self.offset = offset
        where = f"{self.path}" if offset is None else f"{self.path} at byte {offset}"
        super().__init__(f"{where}: {message}")


class AlignmentError(QkdpostError, ValueError):
    """No significant correlation between the parties' timestamps."""


class ChannelError(QkdpostError, OSError):
    """The classical channel failed (timeout, framing, version)."""


class PeerDisconnected(ChannelError):
    """The peer closed the connection or stopped answering."""


class ProtocolError(QkdpostError, ValueError):
    """A peer's message does not follow the protocol (wrong kind or fields)."""
