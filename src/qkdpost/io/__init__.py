"""Timestamp files: the native Arrow IPC format and importers for time taggers.

``from qkdpost.io import StreamInfo`` stays cheap: the readers and writers
(and pyarrow, ~0.2 s to import) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .model import Chunk, StreamInfo, pack_slot, parse_channel_map, unpack_slot

_LAZY = {
    "write_stream": "qkdpost.io.arrow",
    "StreamWriter": "qkdpost.io.arrow",
    "read_stream": "qkdpost.io.arrow",
    "open_stream": "qkdpost.io.dispatch",
    "detect_format": "qkdpost.io.dispatch",
    "FORMATS": "qkdpost.io.dispatch",
    "read_qcrypto": "qkdpost.io.qcrypto",
    "read_ptu": "qkdpost.io.ptu",
    "read_ptu_header": "qkdpost.io.ptu",
    "read_qutag": "qkdpost.io.qutag",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'qkdpost.io' has no attribute {name!r}")


__all__ = [
    "Chunk",
    "StreamInfo",
    "pack_slot",
    "unpack_slot",
    "write_stream",
    "StreamWriter",
    "read_stream",
    "open_stream",
    "detect_format",
    "FORMATS",
    "parse_channel_map",
    "read_qcrypto",
    "read_ptu",
    "read_ptu_header",
    "read_qutag",
]
