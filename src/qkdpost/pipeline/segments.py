"""Sifted key as a stream of segments, cut into fixed-size key blocks.

The front half (read → align → sift → estimate) produces, per processed
chunk, a :class:`Segment`: this party's new sifted key bits and additive
public counters (test-basis size and errors, counts per basis and intensity).
:class:`BlockCutter` concatenates segments and cuts blocks of exactly
``block_bits``; a block's statistics are the counters accumulated since the
previous block was cut (the sample taken over the same stretch of the
capture). :class:`KeyBuffer` is Alice's side: her sifted key bits, served by
offset and forgotten once a later block has been taken.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from ..errors import InputError, ProtocolError

__all__ = ["Segment", "BlockCutter", "KeyBuffer", "qber_from_stats"]


@dataclass
class Segment:
    """New sifted key bits of one party plus public counters.

    ``stats`` values are added up across segments (counts); the key
    ``"t_end_s"`` is not a counter but the capture time at the segment's end.
    """

    bits: np.ndarray = field(repr=False)  # never show key bits
    stats: dict[str, Any] = field(default_factory=dict)
    t_end_s: float = float("nan")
    # per-bit class (decoy intensity), counted exactly per block
    labels: np.ndarray | None = field(default=None, repr=False)


def qber_from_stats(stats: dict[str, Any]) -> float:
    """QBER estimate of a block from its test-basis counters.

    Uses ``test_errors / n_test`` when present (the sampled error fraction;
    the finite-key bound adds its own statistical correction), else
    ``stats["qber"]``; NaN when neither is known.
    """
    n = stats.get("n_test", 0)
    if n:
        return float(stats.get("test_errors", 0)) / float(n)
    q = stats.get("qber")
    return float(q) if q is not None else float("nan")


class BlockCutter:
    """Concatenate :class:`Segment` bits and cut blocks of ``block_bits``.

    A block's counters come from the segments its bits came from: a segment
    split across blocks shares its counters in proportion to the key bits
    each block took (``n_test`` and other counts rounded down, the remainder
    staying with the segment's last block, so totals are exact), except
    ``test_errors``, which is rounded *up* (capped at the share of test
    bits), so no block is credited fewer errors than its proportional share.
    Counters of segments without key bits go to the next block. Memory is
    bounded by one block plus one segment.
    """

    _ROUND_UP = ("test_errors", "m_test")  # error counters: shares rounded up (prefix match)

    def __init__(self, block_bits: int):
        if block_bits <= 0:
            raise InputError(f"block_bits={block_bits}: must be positive")
        self.block_bits = int(block_bits)
        self._segs: list[list[Any]] = []  # [bits not yet in a block, counters not yet given out]
        self._loose: dict[str, Any] = {}  # counters of bit-less segments
        self._have = 0
        self._t_end = float("nan")
        self.offset = 0  # stream offset of the first bit not yet in a block
        self.total_bits = 0

    @staticmethod
    def _merge(into: dict[str, Any], stats: dict[str, Any]) -> None:
        for k, v in stats.items():
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
                into[k] = into.get(k, 0) + v
            else:
                into[k] = v

    def add(self, seg: Segment) -> None:
        bits = np.ascontiguousarray(seg.bits, dtype=np.uint8)
        if bits.ndim != 1:
            raise InputError(f"segment bits: {bits.ndim}-D array, expected 1-D uint8")
        if bits.size:
            stats = dict(self._loose)
            self._loose = {}
            self._merge(stats, seg.stats)
            labels = None
            if seg.labels is not None:
                labels = np.ascontiguousarray(seg.labels, dtype=np.uint8)
                if labels.shape != bits.shape:
                    raise InputError(f"segment labels: shape {labels.shape} != bits shape {bits.shape}")
            self._segs.append([bits, stats, labels])
            self._have += bits.size
            self.total_bits += bits.size
        else:
            self._merge(self._loose, seg.stats)
        if np.isfinite(seg.t_end_s):
            self._t_end = float(seg.t_end_s)

    def blocks(self) -> Iterator[tuple[int, np.ndarray, dict[str, Any], float, np.ndarray | None]]:
        """Yield every complete block: (start offset, bits, stats, capture time, labels).

        ``labels`` is the per-bit class (decoy intensity) when every segment
        carried one, else None.
        """
        while self._have >= self.block_bits:
            need = self.block_bits
            parts: list[np.ndarray] = []
            lparts: list[np.ndarray | None] = []
            stats: dict[str, Any] = {}
            while need:
                bits, sstats, labels = self._segs[0]
                if bits.size <= need:  # whole (rest of the) segment
                    parts.append(bits)
                    lparts.append(labels)
                    need -= bits.size
                    self._merge(stats, sstats)
                    self._segs.pop(0)
                    continue
                frac = need / bits.size
                share: dict[str, Any] = {}
                for k, v in sstats.items():
                    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
                        up = k.startswith(self._ROUND_UP)
                        share[k] = int(np.ceil(v * frac)) if up else int(np.floor(v * frac))
                    elif isinstance(v, (float, np.floating)):
                        share[k] = float(v) * frac
                    else:
                        share[k] = v
                if "test_errors" in share and "n_test" in share:
                    share["test_errors"] = min(share["test_errors"], share["n_test"])
                for k, v in share.items():
                    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
                        sstats[k] = sstats[k] - v
                # errors handed out rounded up may leave the remainder short: never below 0
                for k in list(sstats):
                    if k.startswith(self._ROUND_UP) and sstats[k] < 0:
                        sstats[k] = 0
                self._merge(stats, share)
                parts.append(bits[:need])
                lparts.append(None if labels is None else labels[:need])
                self._segs[0][0] = bits[need:]
                self._segs[0][2] = None if labels is None else labels[need:]
                need = 0
            block = np.concatenate(parts) if len(parts) > 1 else parts[0].copy()
            lab = None
            if all(lp is not None for lp in lparts):
                lab = np.concatenate(lparts) if len(lparts) > 1 else lparts[0].copy()  # type: ignore[union-attr]
                for c, cnt in enumerate(np.bincount(lab, minlength=3).tolist()):
                    stats[f"n_key_c{c}"] = int(cnt)
            self._have -= self.block_bits
            start = self.offset
            self.offset += self.block_bits
            yield start, block, stats, self._t_end, lab

    @property
    def pending_bits(self) -> int:
        """Sifted bits waiting for the next block (dropped at the end of a run)."""
        return self._have


class KeyBuffer:
    """Alice's sifted key stream: append bits, take ``[start, start + n)``.

    Bits before the last taken block's start are released, so memory stays
    bounded by the blocks in flight plus what the front half has sifted
    ahead of Bob's requests.
    """

    def __init__(self) -> None:
        self._parts: list[np.ndarray] = []
        self._base = 0  # stream offset of self._parts[0][0]
        self._have = 0

    @property
    def end(self) -> int:
        return self._base + self._have

    def append(self, bits: np.ndarray) -> None:
        bits = np.ascontiguousarray(bits, dtype=np.uint8)
        if bits.size:
            self._parts.append(bits)
            self._have += bits.size

    def take(self, start: int, n: int) -> np.ndarray:
        if start < self._base:
            raise ProtocolError(
                f"key bits [{start}, {start + n}) requested, but bits before {self._base} were already used"
            )
        if start + n > self.end:
            raise ProtocolError(
                f"key bits [{start}, {start + n}) requested, Alice has sifted only up to {self.end}; "
                "the parties' sifting is out of step"
            )
        joined = np.concatenate(self._parts) if len(self._parts) > 1 else (
            self._parts[0] if self._parts else np.zeros(0, np.uint8))
        lo = start - self._base
        out = joined[lo : lo + n].copy()
        rest = joined[lo:]
        self._parts = [rest] if rest.size else []
        self._base = start
        self._have = int(rest.size)
        return out
