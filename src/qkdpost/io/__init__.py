"""Timestamp files: the native Arrow IPC format and importers for time taggers."""

from .model import Chunk, StreamInfo, pack_slot, unpack_slot

__all__ = ["Chunk", "StreamInfo", "pack_slot", "unpack_slot"]
