"""``open_stream``: one entry point for every timestamp file format.

The format is chosen by name, else by the file's magic bytes, else by its
extension. Every reader returns ``(StreamInfo, iterator of Chunk)`` in the
native model, streamed.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Iterator

from ..errors import ConfigError, FileFormatError
from .model import Chunk, StreamInfo

__all__ = ["open_stream", "FORMATS", "detect_format"]

#: Format name -> (module, reader function). Every reader takes
#: ``(path, **options)`` and returns ``(StreamInfo, Iterator[Chunk])``.
FORMATS: dict[str, tuple[str, str]] = {
    "arrow": ("qkdpost.io.arrow", "read_stream"),
    "ptu": ("qkdpost.io.ptu", "read_ptu"),
    "qcrypto": ("qkdpost.io.qcrypto", "read_qcrypto"),
    "qutag": ("qkdpost.io.qutag", "read_qutag"),
}

_ALIASES = {"native": "arrow", "ipc": "arrow", "feather": "arrow", "s15": "qcrypto"}

_EXTENSIONS = {
    ".arrow": "arrow",
    ".ipc": "arrow",
    ".feather": "arrow",
    ".ptu": "ptu",
}


def detect_format(path: str | os.PathLike[str]) -> str | None:
    """Guess a file's format from its magic bytes, then its extension; None if unknown."""
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError:
        head = b""
    if head[:6] == b"ARROW1":
        return "arrow"
    if head[:6] == b"PQTTTR":
        return "ptu"
    ext = os.path.splitext(p)[1].lower()
    return _EXTENSIONS.get(ext)


def open_stream(path: str | os.PathLike[str], format: str = "auto", **options: Any) -> tuple[StreamInfo, Iterator[Chunk]]:
    """Open any supported timestamp file as ``(info, chunks)`` in the native model.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    format : str
        ``"auto"`` (magic bytes, then extension) or one of :data:`FORMATS`
        (aliases: ``native``/``ipc``/``feather`` for ``arrow``).
    **options
        Passed to the format's reader (e.g. ``chunk_events``, ``channel_map``).

    Raises
    ------
    FileFormatError
        Missing file, unknown format, or any error of the reader.
    ConfigError
        An unknown format name or an option the reader does not take.
    """
    p = os.fspath(path)
    name = format.lower()
    if name == "auto":
        if not os.path.exists(p):
            raise FileFormatError(p, None, "no such file; check the path")
        found = detect_format(p)
        if found is None:
            raise FileFormatError(
                p, 0, f"cannot tell the format from magic bytes or extension; pass format= one of {sorted(FORMATS)}"
            )
        name = found
    name = _ALIASES.get(name, name)
    if name not in FORMATS:
        raise ConfigError(f"format={format!r}: unknown; choose 'auto' or one of {sorted(FORMATS)}")
    mod, fn = FORMATS[name]
    reader = getattr(importlib.import_module(mod), fn)
    try:
        return reader(p, **options)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise ConfigError(f"format {name!r} does not take option(s) {sorted(options)}: {exc}") from None
        raise
