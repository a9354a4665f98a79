"""Configuration of the link simulator: frozen keyword-only dataclasses.

Every field is validated in ``__post_init__`` and a bad value raises
:class:`~qkdpost.errors.ConfigError` naming the field, the value, the
constraint and the fix. Field names equal the ``qkdpost simulate`` flags
(``loss_db`` <-> ``--loss-db``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ConfigError

__all__ = ["DetectorConfig", "BBM92Config", "DecoyConfig", "DETECTOR_ROLES"]

#: Detector order used by every per-detector tuple: Z basis bit 0/1, X basis bit 0/1.
DETECTOR_ROLES = ("H", "V", "D", "A")


def _check(cond: bool, name: str, value: Any, constraint: str, fix: str = "") -> None:
    if not cond:
        msg = f"{name}={value!r}: {constraint}"
        if fix:
            msg += f"; {fix}"
        raise ConfigError(msg)


def _finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _four(obj: Any, name: str, value: Any, lo: float, hi: float, lo_open: bool = False) -> tuple[float, ...]:
    """Normalise a scalar or a 4-sequence of floats in [lo, hi] (or (lo, hi])."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        vals = (float(value),) * 4
    else:
        try:
            vals = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            vals = ()
    _check(len(vals) == 4, name, value, "needs one number or four (H, V, D, A)", "e.g. 0.6 or (0.6, 0.58, 0.6, 0.61)")
    for v in vals:
        ok = _finite(v) and v <= hi and (v > lo if lo_open else v >= lo)
        rng = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        _check(ok, name, value, f"every entry must lie in {rng}")
    object.__setattr__(obj, name, vals)
    return vals


@dataclass(frozen=True, kw_only=True)
class DetectorConfig:
    """Four single-photon detectors (H, V, D, A) behind a passive basis choice.

    Attributes
    ----------
    efficiency : float or 4 floats
        Detection efficiency per detector, in (0, 1]; unequal values model
        detector efficiency mismatch.
    dark_rate_hz : float or 4 floats
        Dark-count rate per detector (counts/s), Poisson in time.
    dead_time_s : float
        Non-paralysable dead time after each registered click (s).
    afterpulse_prob : float
        Probability that a registered click is followed by an afterpulse.
    afterpulse_tau_s : float
        Mean delay of an afterpulse after the end of the dead time (s).
    jitter_s : float
        Standard deviation of the Gaussian timing jitter (s), <= 1 us.
    delay_s : float or 4 floats
        Fixed delay of each detector's timestamps (cable and electronics
        skew), in [-1e-6, 1e-6] s; a sifter calibrates it per channel.
    channels : 4 ints
        Output channel numbers of H, V, D, A (distinct, 0..255).
    """

    efficiency: Any = 0.6
    dark_rate_hz: Any = 200.0
    dead_time_s: float = 50e-9
    afterpulse_prob: float = 0.01
    afterpulse_tau_s: float = 100e-9
    jitter_s: float = 50e-12
    delay_s: Any = 0.0
    channels: tuple[int, int, int, int] = (0, 1, 2, 3)

    def __post_init__(self) -> None:
        _four(self, "efficiency", self.efficiency, 0.0, 1.0, lo_open=True)
        _four(self, "dark_rate_hz", self.dark_rate_hz, 0.0, 1e8)
        _check(_finite(self.dead_time_s) and 0 <= self.dead_time_s <= 1e-3, "dead_time_s", self.dead_time_s,
               "must be a dead time in [0, 1e-3] s")
        _check(_finite(self.afterpulse_prob) and 0 <= self.afterpulse_prob <= 0.5, "afterpulse_prob",
               self.afterpulse_prob, "must be a probability in [0, 0.5]")
        _check(_finite(self.afterpulse_tau_s) and 0 < self.afterpulse_tau_s <= 1e-3, "afterpulse_tau_s",
               self.afterpulse_tau_s, "must be a delay in (0, 1e-3] s")
        _check(_finite(self.jitter_s) and 0 <= self.jitter_s <= 1e-6, "jitter_s", self.jitter_s,
               "must be a Gaussian sigma in [0, 1e-6] s", "detector jitter is ps to ns")
        _four(self, "delay_s", self.delay_s, -1e-6, 1e-6)
        try:
            ch = tuple(int(c) for c in self.channels)
        except (TypeError, ValueError):
            ch = ()
        _check(len(ch) == 4 and len(set(ch)) == 4 and all(0 <= c <= 255 for c in ch), "channels", self.channels,
               "needs four distinct channel numbers 0..255 for H, V, D, A")
        object.__setattr__(self, "channels", ch)


def _common(cfg: Any) -> None:
    _check(_finite(cfg.duration_s) and cfg.duration_s > 0, "duration_s", cfg.duration_s, "must be > 0 seconds")
    _check(_finite(cfg.tick_s) and 1e-15 <= cfg.tick_s <= 1e-6, "tick_s", cfg.tick_s,
           "the TDC bin must lie in [1e-15, 1e-6] s", "e.g. 1e-12 (1 ps) or 125e-12 (qcrypto)")
    _check(1 <= cfg.duration_s / cfg.tick_s < 2**62, "duration_s", cfg.duration_s,
           f"must span at least one tick and fit int64 ticks at tick_s={cfg.tick_s}")
    _check(_finite(cfg.loss_db) and 0 <= cfg.loss_db <= 100, "loss_db", cfg.loss_db,
           "channel loss must lie in [0, 100] dB")
    for name in ("misalignment_z", "misalignment_x"):
        v = getattr(cfg, name)
        _check(_finite(v) and 0 <= v <= 0.5, name, v, "must be an error probability in [0, 0.5]")
    _check(_finite(cfg.intercept_resend) and 0 <= cfg.intercept_resend <= 1, "intercept_resend",
           cfg.intercept_resend, "must be a fraction in [0, 1]")
    for name in ("p_z_alice", "p_z_bob"):
        v = getattr(cfg, name)
        _check(_finite(v) and 0 <= v <= 1, name, v, "must be a probability in [0, 1]")
    _check(_finite(cfg.bob_offset_s) and abs(cfg.bob_offset_s) <= 1000, "bob_offset_s", cfg.bob_offset_s,
           "must lie in [-1000, 1000] s")
    _check(_finite(cfg.bob_freq_ppm) and abs(cfg.bob_freq_ppm) <= 1000, "bob_freq_ppm", cfg.bob_freq_ppm,
           "must lie in [-1000, 1000] ppm")
    _check(_finite(cfg.bob_drift_ppm_per_s) and abs(cfg.bob_drift_ppm_per_s) <= 1, "bob_drift_ppm_per_s",
           cfg.bob_drift_ppm_per_s, "must lie in [-1, 1] ppm/s (slow drift)")
    _check(cfg.slice_s is None or (_finite(cfg.slice_s) and 1e-5 <= cfg.slice_s <= 10), "slice_s", cfg.slice_s,
           "must be None (automatic) or in [1e-5, 10] s")


@dataclass(frozen=True, kw_only=True)
class BBM92Config:
    """An entanglement-based (BBM92) link: SPDC source, two 4-detector receivers.

    Time is Alice's clock (true time, starting at 0). Bob's clock reads
    ``bob_offset_s + (1 + bob_freq_ppm*1e-6) t + 0.5 bob_drift_ppm_per_s*1e-6 t**2``;
    the offset includes any fibre delay between the parties.

    Attributes
    ----------
    duration_s : float
        Simulated time (s).
    tick_s : float
        TDC bin of both time taggers (s); times are quantised by ``floor``.
    pair_rate_hz : float
        Pairs emitted by the source per second.
    pair_statistics : {"thermal", "poisson"}
        Pair-number law per coherence window: Bose-Einstein (single mode) or Poisson.
    coherence_time_s : float
        Length of a coherence window (s); mu = pair_rate_hz * coherence_time_s.
    alice_loss_db, loss_db : float
        Transmission loss from the source to Alice's and to Bob's receiver (dB).
    misalignment_z, misalignment_x : float
        Probability that Bob's photon flips in the Z (H/V) or X (D/A) basis.
    intercept_resend : float
        Fraction of Bob's photons an eavesdropper measures in a random basis
        (Z or X, 1/2 each) and resends as she found them: sifted bits of an
        intercepted photon are wrong with probability 1/4 (an attack the
        finite-key bound must catch; 0 = no eavesdropper).
    p_z_alice, p_z_bob : float
        Probability that the passive beam splitter sends a photon to the Z analyser.
    alice_detectors, bob_detectors : DetectorConfig
        Each party's detectors.
    bob_offset_s, bob_freq_ppm, bob_drift_ppm_per_s : float
        Bob's clock relative to Alice's.
    slice_s : float or None
        Length of a generation slice (None: automatic, ~2**18 events). Part of
        the random stream: the same seed with a different slice gives other events.
    """

    duration_s: float = 1.0
    tick_s: float = 1e-12
    pair_rate_hz: float = 5e6
    pair_statistics: str = "thermal"
    coherence_time_s: float = 1e-12
    alice_loss_db: float = 3.0
    loss_db: float = 6.0
    misalignment_z: float = 0.01
    misalignment_x: float = 0.015
    intercept_resend: float = 0.0
    p_z_alice: float = 0.5
    p_z_bob: float = 0.5
    alice_detectors: DetectorConfig = field(default_factory=DetectorConfig)
    bob_detectors: DetectorConfig = field(default_factory=DetectorConfig)
    bob_offset_s: float = 0.0123456789
    bob_freq_ppm: float = 2.5
    bob_drift_ppm_per_s: float = 0.001
    slice_s: float | None = None

    def __post_init__(self) -> None:
        _common(self)
        _check(_finite(self.pair_rate_hz) and 0 < self.pair_rate_hz <= 1e10, "pair_rate_hz", self.pair_rate_hz,
               "must lie in (0, 1e10] pairs/s")
        _check(self.pair_statistics in ("thermal", "poisson"), "pair_statistics", self.pair_statistics,
               "must be 'thermal' or 'poisson'")
        _check(_finite(self.coherence_time_s) and 1e-15 <= self.coherence_time_s <= 1e-6, "coherence_time_s",
               self.coherence_time_s, "must lie in [1e-15, 1e-6] s")
        _check(self.pair_rate_hz * self.coherence_time_s <= 1.0, "pair_rate_hz", self.pair_rate_hz,
               f"mean pairs per coherence window pair_rate_hz*coherence_time_s must be <= 1 "
               f"(is {self.pair_rate_hz * self.coherence_time_s:.3g})", "lower the rate or the coherence time")
        _check(_finite(self.alice_loss_db) and 0 <= self.alice_loss_db <= 100, "alice_loss_db", self.alice_loss_db,
               "must lie in [0, 100] dB")
        for name in ("alice_detectors", "bob_detectors"):
            _check(isinstance(getattr(self, name), DetectorConfig), name, type(getattr(self, name)).__name__,
                   "must be a qkdpost.simulate.DetectorConfig")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field (recorded in the truth file)."""
        return {"topology": "bbm92", **asdict(self)}


@dataclass(frozen=True, kw_only=True)
class DecoyConfig:
    """A prepare-and-measure decoy-state BB84 link (weak coherent pulses).

    Alice emits one pulse per slot at ``rep_rate_hz``, choosing basis (Z with
    ``p_z_alice``), bit (uniform) and intensity class (``intensity_probs``).
    Slot ``s`` leaves at true time ``s / rep_rate_hz``; Bob's clock is as in
    :class:`BBM92Config` (its offset includes the fibre delay). A sync tick
    is sent with every ``sync_every``-th slot (slots 0, K, 2K, ...) and
    timestamped by Bob on ``sync_channel`` with ``sync_jitter_s``; it is a
    strong classical pulse (no loss, no dead time).

    Attributes
    ----------
    rep_rate_hz : float
        Pulse repetition rate; the slot period must be a whole number of ticks.
    intensities : 2 or 3 floats
        Mean photon numbers of the classes signal > decoy (> weak decoy or 0
        = vacuum): 3 values for the two-decoy protocol, 2 for one decoy.
    intensity_probs : floats
        Probability of each class (same length, sums to 1).
    loss_db, misalignment_z, misalignment_x, p_z_alice, p_z_bob : float
        As in :class:`BBM92Config` (p_z_bob: Bob's passive basis choice).
    intercept_resend : float
        Fraction of pulses an eavesdropper measures in a random basis and
        resends (same mean photon number) as she found them.
    bob_detectors : DetectorConfig
        Bob's detectors.
    sync_every : int
        Slots between sync ticks (0: no sync channel).
    sync_channel : int
        Bob's channel number of the sync ticks.
    sync_jitter_s : float
        Gaussian jitter of the sync ticks (s).
    """

    duration_s: float = 0.1
    tick_s: float = 1e-12
    rep_rate_hz: float = 1e8
    intensities: tuple[float, ...] = (0.5, 0.1, 0.0002)
    intensity_probs: tuple[float, ...] = (0.7, 0.2, 0.1)
    loss_db: float = 20.0
    misalignment_z: float = 0.01
    misalignment_x: float = 0.015
    intercept_resend: float = 0.0
    p_z_alice: float = 0.8
    p_z_bob: float = 0.8
    bob_detectors: DetectorConfig = field(
        default_factory=lambda: DetectorConfig(efficiency=(0.72, 0.68, 0.7, 0.7), dark_rate_hz=100.0,
                                               jitter_s=30e-12)
    )
    sync_every: int = 1000
    sync_channel: int = 4
    sync_jitter_s: float = 20e-12
    bob_offset_s: float = 0.0123456789
    bob_freq_ppm: float = 2.5
    bob_drift_ppm_per_s: float = 0.001
    slice_s: float | None = None

    def __post_init__(self) -> None:
        _common(self)
        _check(_finite(self.rep_rate_hz) and 1e3 <= self.rep_rate_hz <= 1e11, "rep_rate_hz", self.rep_rate_hz,
               "must lie in [1e3, 1e11] pulses/s")
        period = 1.0 / (self.rep_rate_hz * self.tick_s)
        _check(abs(period - round(period)) < 1e-6 * max(1.0, period) and round(period) >= 1, "rep_rate_hz",
               self.rep_rate_hz, f"the slot period must be a whole number of ticks (tick_s={self.tick_s}, "
               f"period={period:.6g} ticks)", "choose tick_s dividing 1/rep_rate_hz")
        try:
            mus = tuple(float(m) for m in self.intensities)
            ps = tuple(float(p) for p in self.intensity_probs)
        except (TypeError, ValueError):
            mus, ps = (), ()
        _check(len(mus) in (2, 3), "intensities", self.intensities,
               "needs 3 mean photon numbers (signal, decoy, weak/vacuum) or 2 (signal, decoy)")
        _check(all(_finite(m) and 0 <= m <= 10 for m in mus), "intensities", self.intensities,
               "mean photon numbers must lie in [0, 10]")
        _check(all(a > b for a, b in zip(mus, mus[1:])) and mus[-2] > 0, "intensities", self.intensities,
               "must be strictly decreasing (signal > decoy > weak >= 0), only the last may be 0")
        _check(len(ps) == len(mus) and all(_finite(p) and 0 < p <= 1 for p in ps) and abs(sum(ps) - 1) < 1e-9,
               "intensity_probs", self.intensity_probs,
               f"needs {len(mus)} probabilities in (0, 1] summing to 1, one per intensity")
        object.__setattr__(self, "intensities", mus)
        object.__setattr__(self, "intensity_probs", ps)
        _check(isinstance(self.bob_detectors, DetectorConfig), "bob_detectors", type(self.bob_detectors).__name__,
               "must be a qkdpost.simulate.DetectorConfig")
        _check(isinstance(self.sync_every, int) and 0 <= self.sync_every <= 2**31, "sync_every", self.sync_every,
               "must be an int >= 0 (0: no sync channel)")
        _check(isinstance(self.sync_channel, int) and 0 <= self.sync_channel <= 255
               and self.sync_channel not in self.bob_detectors.channels, "sync_channel", self.sync_channel,
               f"must be 0..255 and differ from the detector channels {self.bob_detectors.channels}")
        _check(_finite(self.sync_jitter_s) and 0 <= self.sync_jitter_s <= 1e-6, "sync_jitter_s",
               self.sync_jitter_s, "must be a Gaussian sigma in [0, 1e-6] s")

    @property
    def slot_period_ticks(self) -> int:
        """Slot spacing in ticks."""
        return int(round(1.0 / (self.rep_rate_hz * self.tick_s)))

    @property
    def intensity_names(self) -> tuple[str, ...]:
        """Names of the intensity classes, as used in the truth file."""
        if len(self.intensities) == 2:
            return ("signal", "decoy")
        return ("signal", "decoy", "vacuum" if self.intensities[2] == 0 else "weak")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field (recorded in the truth file)."""
        return {"topology": "decoy", **asdict(self)}
