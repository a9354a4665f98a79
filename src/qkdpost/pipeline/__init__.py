"""The pipeline: timestamps in, verified secret keys out, as a stream.

Layers (DESIGN.md): the front half (read → align → sift → estimate) turns
each party's timestamp chunks into sifted key :class:`~.segments.Segment` s;
:class:`~.segments.BlockCutter` cuts fixed-size key blocks; the back half
(:mod:`.blocks`: reconcile → verify → finite-key length → amplify → key
store) turns each block into a final key on both sides or drops it on both
sides with a reason. :class:`~.engine.BobEngine` drives,
:class:`~.engine.AliceEngine` answers; the stages are reached through a
:class:`~.stages.StageKit`.
"""

from __future__ import annotations

from .blocks import AliceBlocks, BobBlocks, SiftedBlock, block_id
from .engine import AliceEngine, BobEngine
from .segments import BlockCutter, KeyBuffer, Segment
from .session import Session
from .stages import StageKit

__all__ = [
    "AliceBlocks", "BobBlocks", "SiftedBlock", "block_id", "AliceEngine", "BobEngine",
    "BlockCutter", "KeyBuffer", "Segment", "Session", "StageKit",
]
