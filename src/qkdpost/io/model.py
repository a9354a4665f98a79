"""The timestamp data model shared by every reader, writer and stage.

A timestamp stream is two parallel arrays, ``t`` (int64 ticks, non-decreasing)
and ``ch`` (uint8 channel), delivered in chunks, plus a :class:`StreamInfo`.
Times are never floats; the tick length is metadata.

Prepare-and-measure Alice logs use the same two arrays with
``kind="slots"``: ``t`` is the pulse-slot index and ``ch`` the packed slot
byte (see :func:`pack_slot`); ``slot_period_ticks`` gives the slot spacing in
the ticks of ``tick_s``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Mapping, NamedTuple

import numpy as np

__all__ = ["StreamInfo", "Chunk", "ROLES", "pack_slot", "unpack_slot", "parse_channel_map"]

# Detector roles a channel can map to. "H"/"V" are the Z basis (bit 0/1),
# "D"/"A" the X basis (bit 0/1); "sync" and "marker" carry no key.
ROLES = ("H", "V", "D", "A", "sync", "marker", "unused")


class Chunk(NamedTuple):
    """One piece of a stream: ``t`` int64 ticks and ``ch`` uint8 channels."""

    t: np.ndarray
    ch: np.ndarray


@dataclass(frozen=True, kw_only=True)
class StreamInfo:
    """Metadata of a timestamp stream or slot log.

    Attributes
    ----------
    tick_s : float
        Length of one tick in seconds (e.g. 125e-12 for qcrypto's 1/8 ns).
    kind : {"timestamps", "slots"}
        Detector timestamps, or a prepare-and-measure emission log.
    party : str
        "alice", "bob" or "" when unknown.
    device : str
        Free text naming the time tagger or source.
    start_ns : int
        Wall-clock (UNIX epoch) time of tick 0 in nanoseconds, 0 if unknown.
    channel_map : mapping of int to str
        Channel number to detector role (one of :data:`ROLES`).
    slot_period_ticks : int
        For ``kind="slots"``: slot spacing in ticks; 0 otherwise.
    extra : mapping of str to str
        Anything else worth keeping (source file, format, options).
    """

    tick_s: float
    kind: str = "timestamps"
    party: str = ""
    device: str = ""
    start_ns: int = 0
    channel_map: Mapping[int, str] = field(default_factory=dict)
    slot_period_ticks: int = 0
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ..errors import ConfigError

        if not (self.tick_s > 0 and np.isfinite(self.tick_s)):
            raise ConfigError(f"tick_s={self.tick_s!r}: tick length must be a positive number of seconds")
        if self.kind not in ("timestamps", "slots"):
            raise ConfigError(f"kind={self.kind!r}: must be 'timestamps' or 'slots'")
        for chan, role in self.channel_map.items():
            if not (0 <= int(chan) <= 255) or role not in ROLES:
                raise ConfigError(
                    f"channel_map[{chan!r}]={role!r}: channels are 0..255 and roles one of {ROLES}"
                )
        if self.kind == "slots" and self.slot_period_ticks <= 0:
            raise ConfigError("slot logs need slot_period_ticks > 0")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["channel_map"] = {str(k): v for k, v in self.channel_map.items()}
        d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "StreamInfo":
        d = dict(d)
        d["channel_map"] = {int(k): v for k, v in d.get("channel_map", {}).items()}
        return cls(**d)


# Packed prepare-and-measure slot byte: bit 0 = key bit, bit 1 = basis
# (0 = Z, 1 = X), bits 2..3 = intensity class (0 = signal, 1 = decoy, 2 = vacuum/second decoy).
def pack_slot(bit: np.ndarray, basis: np.ndarray, intensity: np.ndarray) -> np.ndarray:
    """Pack per-slot bit, basis and intensity class into one uint8 per slot."""
    return (bit.astype(np.uint8) & 1) | ((basis.astype(np.uint8) & 1) << 1) | (
        (intensity.astype(np.uint8) & 3) << 2
    )


def unpack_slot(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`pack_slot`: (bit, basis, intensity) as uint8 arrays."""
    p = packed.astype(np.uint8)
    return p & 1, (p >> 1) & 1, (p >> 2) & 3


def iter_arrays(t: np.ndarray, ch: np.ndarray, chunk_events: int) -> Iterator[Chunk]:
    """Cut two in-memory arrays into chunks (for APIs that take streams)."""
    for start in range(0, len(t), chunk_events):
        yield Chunk(t[start : start + chunk_events], ch[start : start + chunk_events])


def parse_channel_map(spec: "str | Mapping[int, str] | None") -> dict[int, str]:
    """Parse a channel map given as text ``"0=H,1=V,2=D,3=A"`` or as a mapping.

    Channels are integers 0..255 (decimal or ``0x..``); roles are from
    :data:`ROLES`. ``None`` or ``""`` gives an empty map (every channel
    unused).
    """
    from ..errors import ConfigError

    if spec is None or spec == "":
        return {}
    if isinstance(spec, Mapping):
        items = [(k, v) for k, v in spec.items()]
    else:
        items = []
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            key, sep, role = part.partition("=")
            if not sep:
                raise ConfigError(f"channel_map entry {part!r}: expected CHANNEL=ROLE, e.g. '0=H,1=V,2=D,3=A'")
            items.append((key.strip(), role.strip()))
    out: dict[int, str] = {}
    for key, role in items:
        try:
            chan = int(key, 0) if isinstance(key, str) else int(key)
        except ValueError:
            raise ConfigError(f"channel_map channel {key!r}: not an integer 0..255") from None
        if not 0 <= chan <= 255:
            raise ConfigError(f"channel_map channel {chan}: out of range 0..255")
        if role not in ROLES:
            raise ConfigError(f"channel_map[{chan}]={role!r}: role must be one of {ROLES}")
        out[chan] = role
    return out
