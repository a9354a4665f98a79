"""Link simulator: BBM92 entanglement and decoy-state BB84 timestamp streams.

Reproducible from a seed, generated slice by slice with flat memory, with a
ground-truth dict (true clock offset and frequency, true pairs and errors,
photon-number statistics) for testing alignment, sifting and estimation.

>>> from qkdpost.simulate import BBM92Config, generate
>>> link = generate(BBM92Config(duration_s=0.01), seed=1)   # doctest: +SKIP
>>> link.alice.t, link.bob.ch, link.truth["coincidences"]["Z"]   # doctest: +SKIP

See ``docs/simulate.md``.
"""

from __future__ import annotations

from .config import DETECTOR_ROLES, BBM92Config, DecoyConfig, DetectorConfig
from .link import Link, LinkSimulation, Party, SliceOut, generate, joint_table, simulate, true_pairs, write_link

__all__ = [
    "BBM92Config",
    "DecoyConfig",
    "DetectorConfig",
    "DETECTOR_ROLES",
    "Link",
    "LinkSimulation",
    "Party",
    "SliceOut",
    "generate",
    "joint_table",
    "simulate",
    "true_pairs",
    "write_link",
]
