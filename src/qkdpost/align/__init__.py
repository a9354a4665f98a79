"""Clock alignment of two timestamp streams: offset, frequency and drift.

Bob's clock is mapped onto Alice's by a :class:`ClockModel` (an anchor point
and a rate). :func:`find_alignment` acquires it from the first seconds of
both parties' detection times the way qcrypto's ``pfind`` and S-Fifteen's
``fpfind`` do (see /work/shared/reference/README.md, "Alignment"):

1. **Coarse**: folded histograms of both streams at a coarse bin (default
   32 us), mean subtracted, FFT cross-correlation; the peak significance is
   ``(max - mean) / std`` of the correlation. A frequency offset smears the
   peak by ``df * T`` over a window ``T``, so the coarse stage scans a grid of
   trial frequencies spaced ``bin / T`` and keeps the most significant.
2. **Fine**: an early and a late window, each cross-correlated at a finer
   bin, give the offset at two times; their difference over the separation
   gives the residual frequency (``df = (dt_late - dt_early) / Ts``, fpfind).
   Bins shrink by 128x per stage down to ``fine_bin_s``.
3. **Fit**: the coincidences of the whole acquisition span within a few
   fine bins are fitted with a quadratic (sigma-clipped least squares),
   which gives offset, frequency and drift well inside the detector jitter,
   and the width of the coincidence peak. The model returned is the tangent
   at the start of the span, where sifting begins.

Over a long run :class:`DriftTracker` keeps the model locked: a servo that
fits the residuals of each sifting window's coincidences and updates offset
and frequency (costream does the same for the offset only).

Time is int64 ticks throughout; the only float is the rate, applied to a tick
difference from the anchor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import AlignmentError, ConfigError, InputError

__all__ = [
    "AlignConfig",
    "ClockModel",
    "Alignment",
    "StageResult",
    "find_alignment",
    "fit_clock",
    "DriftTracker",
    "xcorr_peak",
]


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ClockModel:
    """Map Bob's clock onto Alice's: ``t_a = a_ref + frac + (t_b - b_ref) * rate``.

    Attributes
    ----------
    a_ref, b_ref : int
        Anchor point, in Alice's and Bob's ticks.
    frac : float
        Sub-tick part of Alice's anchor, in [-0.5, 0.5].
    rate : float
        Alice ticks per Bob tick (``tick_b / tick_a / (1 + freq)``).
    tick_a_s, tick_b_s : float
        Tick lengths of Alice's and Bob's time taggers in seconds.
    """

    a_ref: int
    b_ref: int
    frac: float
    rate: float
    tick_a_s: float
    tick_b_s: float

    @classmethod
    def from_offset(
        cls, offset_s: float, freq: float, tick_a_s: float, tick_b_s: float, at_a: int = 0
    ) -> "ClockModel":
        """Model for ``T_b = T_a * (1 + freq) + offset_s`` (times in seconds).

        The anchor is placed at Alice tick ``at_a``.
        """
        tb = (at_a * tick_a_s * (1.0 + freq) + offset_s) / tick_b_s
        b_ref = int(round(tb))
        rate = tick_b_s / tick_a_s / (1.0 + freq)
        # t_a(b_ref) = at_a + (b_ref - tb) * rate
        a_exact = (b_ref - tb) * rate
        a_int = int(round(a_exact))
        return cls(at_a + a_int, b_ref, float(a_exact - a_int), rate, tick_a_s, tick_b_s)

    @classmethod
    def anchored(cls, a: int, b: float, rate: float, tick_a_s: float, tick_b_s: float) -> "ClockModel":
        """Model through Alice tick ``a`` ↔ Bob tick ``b`` (may be fractional) with ``rate``."""
        b_int = int(round(b))
        a_exact = (b_int - b) * rate
        a_int = int(round(a_exact))
        return cls(int(a) + a_int, b_int, float(a_exact - a_int), float(rate), tick_a_s, tick_b_s)

    def to_alice(self, t_b: np.ndarray) -> np.ndarray:
        """Bob's int64 ticks mapped to Alice's int64 ticks (rounded)."""
        from ._kernels import map_clock

        t_b = np.ascontiguousarray(t_b, dtype=np.int64)
        out = np.empty_like(t_b)
        map_clock(t_b, self.b_ref, self.a_ref, self.frac, self.rate, out)
        return out

    def to_bob(self, t_a: int) -> float:
        """Bob's (fractional) tick at which the model reads Alice tick ``t_a``."""
        return self.b_ref + (t_a - self.a_ref - self.frac) / self.rate

    @property
    def freq(self) -> float:
        """Bob's clock frequency offset relative to Alice's (dimensionless)."""
        return self.tick_b_s / (self.rate * self.tick_a_s) - 1.0

    @property
    def freq_ppm(self) -> float:
        return self.freq * 1e6

    def offset_s(self, at_a: int = 0) -> float:
        """``T_b - T_a`` in seconds at Alice tick ``at_a`` (the same event's readings)."""
        return self.to_bob(at_a) * self.tick_b_s - at_a * self.tick_a_s

    def corrected(self, c0: float, c1: float, t_m: int) -> "ClockModel":
        """Remove a residual ``mapped - t_a = c0 + c1 * (t_a - t_m)`` (Alice ticks).

        Returns the model whose mapping is ``mapped - c0 - c1 * (mapped - t_m)``,
        re-anchored at Alice tick ``t_m``.
        """
        b_m = self.b_ref + (t_m + c0 - self.a_ref - self.frac) / self.rate
        b_int = int(round(b_m))
        rate = self.rate * (1.0 - c1)
        a_exact = (b_int - b_m) * rate
        a_int = int(round(a_exact))
        return replace(self, a_ref=int(t_m) + a_int, b_ref=b_int, frac=float(a_exact - a_int), rate=rate)

    def as_dict(self) -> dict[str, Any]:
        return {
            "a_ref": self.a_ref,
            "b_ref": self.b_ref,
            "frac": self.frac,
            "rate": self.rate,
            "offset_s": self.offset_s(0),
            "freq_ppm": self.freq_ppm,
        }


# --------------------------------------------------------------------------- config


@dataclass(frozen=True, kw_only=True)
class AlignConfig:
    """How to search for the clock offset and frequency.

    Attributes
    ----------
    max_offset_s : float
        Largest ``|T_b - T_a|`` searched, around ``offset_prior_s``.
    offset_prior_s : float
        Centre of the offset search (e.g. from host clocks).
    max_freq_ppm : float
        Largest ``|freq|`` searched (fpfind allows 2^-13 = 122 ppm).
    acquisition_s : float
        Length of each party's data used to acquire (from its first event).
    coarse_bin_s, fine_bin_s : float
        First and last cross-correlation bin widths (rounded to whole ticks).
    min_significance : float
        Smallest accepted peak significance ``(max - mean) / std`` in every
        stage. The coarse stage also needs the peak above the largest value
        expected from noise over all searched lags, ``sqrt(2 ln M) + 2``.
    """

    max_offset_s: float = 0.6
    offset_prior_s: float = 0.0
    max_freq_ppm: float = 120.0
    acquisition_s: float = 1.5
    coarse_bin_s: float = 32e-6
    fine_bin_s: float = 1e-9
    min_significance: float = 6.0

    def __post_init__(self) -> None:
        def bad(name: str, constraint: str) -> None:
            raise ConfigError(f"{name}={getattr(self, name)!r}: {constraint}")

        for name in ("max_offset_s", "acquisition_s", "coarse_bin_s", "fine_bin_s", "min_significance"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                bad(name, "must be a positive finite number")
        if not (math.isfinite(self.offset_prior_s)):
            bad("offset_prior_s", "must be finite")
        if not (0 <= self.max_freq_ppm <= 1000):
            bad("max_freq_ppm", "must be in [0, 1000] ppm")
        if self.fine_bin_s > self.coarse_bin_s:
            bad("fine_bin_s", f"must not exceed coarse_bin_s={self.coarse_bin_s}")
        if self.max_offset_s > 100:
            bad("max_offset_s", "must be at most 100 s; give offset_prior_s from the host clocks")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class StageResult:
    """One cross-correlation: bin width, lag found and its significance."""

    name: str
    bin_ticks: int
    nbins: int
    lag_ticks: float
    significance: float
    window_ticks: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Alignment:
    """Result of :func:`find_alignment`.

    Attributes
    ----------
    model : ClockModel
        Bob → Alice clock map.
    sigma_ticks : float
        Standard deviation of the coincidence residuals (combined timing
        jitter of both sides), Alice ticks.
    n_pairs : int
        Coincidences used in the final fit.
    pair_rate_hz : float
        Coincidence rate in the fit span.
    span_ticks : int
        Length of the fit span (Alice ticks).
    stages : list of StageResult
        The cross-correlations that led there.
    drift_ppm_per_s : float
        Rate of change of Bob's frequency offset over the fit span
        (the quadratic term of the fit).
    """

    model: ClockModel
    sigma_ticks: float
    n_pairs: int
    pair_rate_hz: float
    span_ticks: int
    stages: list[StageResult] = field(default_factory=list)
    drift_ppm_per_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        m = self.model
        return {
            "offset_s": m.offset_s(0),
            "freq_ppm": m.freq_ppm,
            "drift_ppm_per_s": self.drift_ppm_per_s,
            "anchor_s": m.a_ref * m.tick_a_s,
            "sigma_ps": self.sigma_ticks * m.tick_a_s * 1e12,
            "n_pairs": self.n_pairs,
            "pair_rate_hz": self.pair_rate_hz,
            "model": m.as_dict(),
            "stages": [s.as_dict() for s in self.stages],
        }


# --------------------------------------------------------------------------- cross-correlation


def xcorr_peak(
    hist_a: np.ndarray, hist_b: np.ndarray, max_lag: int | None = None
) -> tuple[float, float, np.ndarray]:
    """Circular cross-correlation peak of two folded histograms.

    ``C[k] = sum_i A'[i] B'[i + k]``, computed by FFT, where ``A'`` and ``B'``
    are the histograms minus their running mean over 33 bins (pfind subtracts
    the global mean; a running mean also removes the steps where one party's
    data starts or ends inside the folded period, which would otherwise
    dominate the correlation).

    ``max_lag`` (bins) restricts the peak search to ``|lag| <= max_lag``.

    Returns
    -------
    lag : float
        Peak position in bins, wrapped to ``[-N/2, N/2)``, refined to a
        fraction of a bin by a three-point centroid.
    significance : float
        ``(C_max - mean C) / std C`` (pfind's peak significance).
    corr : ndarray of float64, shape (N,)
        The correlation.
    """
    n = hist_a.shape[0]
    a = _highpass(hist_a)
    b = _highpass(hist_b)
    fa = np.fft.rfft(a)
    fb = np.fft.rfft(b)
    corr = np.fft.irfft(np.conj(fa) * fb, n)
    if max_lag is not None and 2 * max_lag + 1 < n:
        # only lags within +-max_lag bins are candidates
        allowed = np.concatenate([corr[: max_lag + 1], corr[n - max_lag:]])
        j = int(np.argmax(allowed))
        k = j if j <= max_lag else n - max_lag + (j - max_lag - 1)
    else:
        k = int(np.argmax(corr))
    sd = float(corr.std())
    sig = float((corr[k] - corr.mean()) / sd) if sd > 0 else 0.0
    # centroid of the peak and its neighbours above the mean (sub-bin lag)
    c0, cm, cp = corr[k], corr[(k - 1) % n], corr[(k + 1) % n]
    base = min(cm, cp, c0)
    w = np.array([cm - base, c0 - base, cp - base])
    delta = float((w[2] - w[0]) / w.sum()) if w.sum() > 0 else 0.0
    lag = k if k < n // 2 else k - n
    return lag + delta, sig, corr


_FINE_BINS = 1 << 17
#: Below this peak significance the data count as sparse: the acquisition adds
#: a second frequency grid and lets fine windows fold less (2^20 bins).
_SPARSE_SIG = 15.0


def _highpass(h: np.ndarray, half: int = 16) -> np.ndarray:
    """``h`` minus its circular running mean over ``2 * half + 1`` bins."""
    n = h.shape[0]
    if n <= 4 * half:
        return h - h.mean()
    ext = np.concatenate([h[n - half - 1 :], h, h[: half]])
    c = np.cumsum(ext)
    w = 2 * half + 1
    mean = (c[w:] - c[:-w]) / w
    return h - mean


def _next_pow2(x: float) -> int:
    return 1 << max(4, int(math.ceil(math.log2(max(x, 16.0)))))


def _fold_a(t_a: np.ndarray, lo: int, hi: int, origin: int, bin_ticks: int, nbins: int) -> np.ndarray:
    from ._kernels import fold_histogram

    out = np.zeros(nbins, dtype=np.float64)
    i0, i1 = np.searchsorted(t_a, [lo, hi])
    fold_histogram(t_a[i0:i1], lo, hi, origin, bin_ticks, nbins - 1, out)
    return out


def _fold_b(t_b: np.ndarray, model: ClockModel, lo: int, hi: int, origin: int, bin_ticks: int, nbins: int) -> np.ndarray:
    from ._kernels import fold_histogram_mapped

    out = np.zeros(nbins, dtype=np.float64)
    # Bob's events that can map into [lo, hi): a slightly wider index range
    margin = 2.0 + abs(model.rate) * 1e-3 * (hi - lo)
    b_lo = math.floor(model.to_bob(lo) - margin)
    b_hi = math.ceil(model.to_bob(hi) + margin)
    i0, i1 = np.searchsorted(t_b, [b_lo, b_hi])
    fold_histogram_mapped(
        t_b[i0:i1], model.b_ref, model.a_ref, model.frac, model.rate, lo, hi, origin, bin_ticks, nbins - 1, out
    )
    return out


# --------------------------------------------------------------------------- acquisition


def _check_times(name: str, t: Any) -> np.ndarray:
    arr = np.asarray(t)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name}: expected a 1-D integer array of ticks, got dtype {arr.dtype} shape {arr.shape}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        # the int64 conversion below would wrap these to negative ticks
        raise InputError(f"{name}: a uint64 tick count exceeds the int64 range; timestamps must fit in int64")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if arr.size > 1 and np.any(arr[1:] < arr[:-1]):
        i = int(np.flatnonzero(arr[1:] < arr[:-1])[0])
        raise InputError(f"{name}: times decrease at index {i + 1}; sort the stream (time order) first")
    return arr


def find_alignment(
    t_a: Any,
    t_b: Any,
    *,
    tick_a_s: float,
    tick_b_s: float,
    config: AlignConfig | None = None,
) -> Alignment:
    """Find the map from Bob's clock to Alice's from their detection times.

    Parameters
    ----------
    t_a, t_b : array_like of int64, shape (n_a,), (n_b,)
        Each party's detection times in its own ticks, sorted. Only the first
        ``config.acquisition_s`` (+ the offset range for Bob) are used.
    tick_a_s, tick_b_s : float
        Tick lengths in seconds.
    config : AlignConfig, optional

    Returns
    -------
    Alignment

    Raises
    ------
    AlignmentError
        If a stage finds no significant peak (e.g. the files are unrelated,
        the offset is outside the searched range, or there is too little data).
    InputError
        If the arrays are not sorted 1-D integer arrays.

    Notes
    -----
    The method is pfind/fpfind's (qcrypto, S-Fifteen): folded-histogram FFT
    cross-correlation with peak significance, coarse then fine, and the
    frequency from an early and a late window; then a least-squares fit of
    the coincidence residuals. See the module docstring.
    """
    cfg = config or AlignConfig()
    if not (tick_a_s > 0 and tick_b_s > 0 and math.isfinite(tick_a_s) and math.isfinite(tick_b_s)):
        raise InputError(f"tick_a_s={tick_a_s!r}, tick_b_s={tick_b_s!r}: tick lengths must be positive seconds")
    t_a = _check_times("t_a", t_a)
    t_b = _check_times("t_b", t_b)
    if t_a.size < 16 or t_b.size < 16:
        raise AlignmentError(
            f"too few events to align (Alice {t_a.size}, Bob {t_b.size}); need at least "
            f"{cfg.acquisition_s} s of detections from both parties"
        )
    sec = 1.0 / tick_a_s  # Alice ticks per second
    a0 = int(t_a[0])
    acq = int(cfg.acquisition_s * sec)
    a_hi = min(int(t_a[-1]) + 1, a0 + acq)
    t_a_acq = t_a[: np.searchsorted(t_a, a_hi)]
    span = a_hi - a0
    max_off = int(cfg.max_offset_s * sec)
    stages: list[StageResult] = []

    # ---- stage 1: coarse, grid of trial frequencies --------------------------------
    r1 = max(1, int(round(cfg.coarse_bin_s * sec)))
    # period long enough that Bob's searched range (span + 2 max_off) is not
    # folded onto itself: folding would double his background per bin
    n1 = _next_pow2((span + 2 * max_off + 8 * r1) / r1)
    step = r1 / max(span, 1)  # freq step: smear <= r1/2 over the span
    fmax = cfg.max_freq_ppm * 1e-6
    n_half = int(math.ceil(fmax / step)) if fmax > 0 else 0
    trial_freqs = [k * step for k in range(-n_half, n_half + 1)]
    hist_a = _fold_a(t_a_acq, a0, a_hi, a0, r1, n1)
    lo_b, hi_b = a0 - max_off - 2 * r1, a_hi + max_off + 2 * r1
    best = None
    b_anchor = (a0 * tick_a_s + cfg.offset_prior_s) / tick_b_s
    for f in trial_freqs:
        m = ClockModel.anchored(a0, b_anchor, tick_b_s / tick_a_s / (1.0 + f), tick_a_s, tick_b_s)
        hist_b = _fold_b(t_b, m, lo_b, hi_b, a0, r1, n1)
        lag, sig, corr = xcorr_peak(hist_a, hist_b, max_lag=max_off // r1 + 2)
        peak = float(corr[int(round(lag)) % n1])
        if best is None or peak > best[0]:
            best = (peak, f, lag, sig, m)
    assert best is not None
    _, f1, lag1, sig1, m1 = best
    stages.append(StageResult("coarse", r1, n1, lag1 * r1, sig1, span))
    noise_max = math.sqrt(2.0 * math.log(n1 * len(trial_freqs))) + 2.0
    need = max(cfg.min_significance, noise_max)
    if sig1 < need:
        raise AlignmentError(
            f"no significant coincidence peak in the coarse search: significance {sig1:.1f} < {need:.1f} "
            f"(offsets within {cfg.offset_prior_s:+g} +- {cfg.max_offset_s} s, frequencies within "
            f"+-{cfg.max_freq_ppm} ppm, {span * tick_a_s:.2f} s of Alice's data). Are the files from the "
            f"same link and overlapping in time? Otherwise widen max_offset_s/max_freq_ppm or give "
            f"offset_prior_s."
        )
    model = m1.corrected(lag1 * r1, 0.0, a0)
    u_t = float(r1)
    u_f = step / 2 + 1e-12

    r_fine = max(1, int(round(cfg.fine_bin_s * sec)))
    r = r1
    b_first = model.to_alice(t_b[:1])[0]
    b_last = model.to_alice(t_b[-1:])[0]
    ov_lo = max(a0, int(b_first))
    ov_hi = min(a_hi, int(b_last))
    if ov_hi - ov_lo < span // 4:
        raise AlignmentError(
            f"the parties' data overlap for only {(ov_hi - ov_lo) * tick_a_s:.3f} s of the "
            f"{span * tick_a_s:.3f} s acquisition window; give both parties' streams from the same period"
        )

    # ---- stage 2 (sparse data only): a finer frequency grid over the whole overlap ----
    # The first early/late windows can only be as long as the coarse frequency
    # step allows, which caps their significance near eta * sqrt(span / r1),
    # the coarse stage's own. When that was weak (< _SPARSE_SIG), a second grid at
    # r1 / 16 over the whole overlap narrows the frequency 16-fold first.
    r2 = max(r_fine, r1 // 16)
    if r2 < r1 and sig1 < _SPARSE_SIG:
        ov = ov_hi - ov_lo
        step2 = r2 / max(ov, 1)
        half = u_f + step2
        n2 = int(math.ceil(half / step2))
        pad = int(u_t + half * ov) + 2 * r2
        cap = 1 << 20  # sparse data: fold less (see below)
        nb = min(_next_pow2(max(4 * pad / r2 + 8, (ov + 2 * pad) / r2)), cap)
        ha = _fold_a(t_a, ov_lo, ov_hi, ov_lo, r2, nb)
        b_at = model.to_bob(ov_lo)
        best2 = None
        for k in range(-n2, n2 + 1):
            f = f1 + k * step2
            m = ClockModel.anchored(ov_lo, b_at, tick_b_s / tick_a_s / (1.0 + f), tick_a_s, tick_b_s)
            hb = _fold_b(t_b, m, ov_lo - pad, ov_hi + pad, ov_lo, r2, nb)
            lag, sig, corr = xcorr_peak(ha, hb)
            peak = float(corr.max())
            if best2 is None or peak > best2[0]:
                best2 = (peak, lag, sig, m)
        assert best2 is not None
        _, lag2, sig2, m2 = best2
        stages.append(StageResult("frequency grid", r2, nb, lag2 * r2, sig2, ov))
        if sig2 < cfg.min_significance:
            raise AlignmentError(
                f"coincidence peak lost at bin {r2 * tick_a_s * 1e9:.3g} ns over the whole overlap: significance "
                f"{sig2:.1f} < {cfg.min_significance}; the data may be too sparse (use a longer acquisition_s)"
            )
        model = m2.corrected(lag2 * r2, 0.0, ov_lo)
        u_t = float(r2)
        u_f = step2 / 2 + 1e-12
        r = r2

    # ---- stage 3..: early/late windows at finer bins -------------------------------
    while r > r_fine:
        r = max(r_fine, r // 128)
        t_w = int(min(r / (2 * u_f), (ov_hi - ov_lo) / 3))
        # The window is as long as the frequency uncertainty allows (smear
        # below half a bin). Folding it into fewer bins than it spans adds
        # background: the significance tends to eta * sqrt(nbins) once every
        # bin holds many events; 2^17 bins (pfind's size) give eta * 360.
        t_w = max(t_w, 64 * r)
        pad = int(u_t + u_f * t_w) + 2 * r
        # Sparse data (weak peaks so far) get up to 2^20 bins, so a window folds
        # less and its significance can reach eta * sqrt(window / bin).
        cap = _FINE_BINS if min(st.significance for st in stages) >= _SPARSE_SIG else 1 << 20
        nb = min(_next_pow2(max(4 * pad / r + 8, (t_w + 2 * pad) / r)), cap)
        lags = []
        centres = []
        for w_lo in (ov_lo, ov_hi - t_w):
            w_hi = w_lo + t_w
            ha = _fold_a(t_a, w_lo, w_hi, w_lo, r, nb)
            hb = _fold_b(t_b, model, w_lo - pad, w_hi + pad, w_lo, r, nb)
            lag, sig, _ = xcorr_peak(ha, hb)
            stages.append(StageResult(f"fine {'early' if w_lo == ov_lo else 'late'}", r, nb, lag * r, sig, t_w))
            if sig < cfg.min_significance:
                raise AlignmentError(
                    f"coincidence peak lost at bin {r * tick_a_s * 1e9:.3g} ns: significance {sig:.1f} < "
                    f"{cfg.min_significance} in a {t_w * tick_a_s * 1e3:.2f} ms window; the data may be too "
                    f"sparse (use a longer acquisition_s) or the clocks drift too fast"
                )
            lags.append(lag * r)
            centres.append(w_lo + t_w // 2)
        ts = centres[1] - centres[0]
        c1 = (lags[1] - lags[0]) / ts if ts > 0 else 0.0
        model = model.corrected(lags[0], c1, centres[0])
        u_t = float(r)
        u_f = 2.0 * r / max(ts, 1)

    # ---- final: follow the clock across the span, then fit a quadratic -------------
    # A drift bends the residual curve away from the early/late chord, so the
    # span is walked in short sub-windows with a line fit each (a servo); the
    # pairs found are then fitted with a quadratic relative to the chord
    # model, whose tangent at the start of the overlap (where sifting begins)
    # is returned, together with the drift.
    model, sigma, n_pairs, dslope = _track_fit(model, t_a, t_b, ov_lo, ov_hi, int(max(8 * r, 4 * u_t)) + 1,
                                               max(int(0.05 * sec), 64 * r))
    # The final peak must stand out of the accidentals expected in its width
    # (guards against a chain of stages that locked onto noise).
    n_a = int(np.searchsorted(t_a, ov_hi) - np.searchsorted(t_a, ov_lo))
    n_b = int(np.searchsorted(t_b, math.ceil(model.to_bob(ov_hi))) - np.searchsorted(t_b, math.floor(model.to_bob(ov_lo))))
    width = 2.0 * 4.0 * (sigma if math.isfinite(sigma) else 0.0) + 1.0
    n_acc = n_a * n_b * width / max(ov_hi - ov_lo, 1)
    z_final = (n_pairs - n_acc) / math.sqrt(n_acc + 1.0)
    stages.append(StageResult("fit", 1, 0, 0.0, z_final, ov_hi - ov_lo))
    if n_pairs < 16 or z_final < cfg.min_significance:
        raise AlignmentError(
            f"only {n_pairs} coincidences found after the fine search where {n_acc:.0f} accidentals are "
            f"expected (significance {z_final:.1f}); the data are too sparse to align (use a longer "
            f"acquisition_s) or the files are unrelated"
        )
    dur = (ov_hi - ov_lo) * tick_a_s
    # a residual slope growing by dslope per tick: Bob's clock gains frequency at that rate
    drift_ppm_per_s = dslope / tick_a_s * 1e6
    return Alignment(model, sigma, n_pairs, n_pairs / dur if dur > 0 else 0.0, ov_hi - ov_lo, stages,
                     drift_ppm_per_s=drift_ppm_per_s)


def _track_fit(
    model0: ClockModel, t_a: np.ndarray, t_b: np.ndarray, lo: int, hi: int, window: int, sub: int
) -> tuple[ClockModel, float, int, float]:
    from ._kernels import pair_residuals

    m = model0
    ta_parts, res_parts = [], []
    for s_lo in range(lo, hi, sub):
        s_hi = min(s_lo + sub, hi)
        ta_s = t_a[np.searchsorted(t_a, s_lo): np.searchsorted(t_a, s_hi)]
        if ta_s.size == 0:
            continue
        tb_s = t_b[np.searchsorted(t_b, math.floor(m.to_bob(s_lo - window)) - 2):
                   np.searchsorted(t_b, math.ceil(m.to_bob(s_hi + window)) + 2)]
        tb_map = m.to_alice(tb_s)
        cap = 2 * max(ta_s.size, tb_s.size) + 16
        ta_p = np.empty(cap, np.int64)
        res_p = np.empty(cap, np.int64)
        k = min(pair_residuals(ta_s, tb_map, window, ta_p, res_p), cap)
        if k < 8:
            continue
        ta_p, res = ta_p[:k], res_p[:k].astype(np.float64)
        med = float(np.median(res))
        mad = float(np.median(np.abs(res - med))) * 1.4826
        keep = np.abs(res - med) <= max(4.0 * mad, 1.0)
        ta_p, res = ta_p[keep], res[keep]
        # residual relative to model0: model0(m^-1(t)) - t added to the residual against m
        b = m.b_ref + (ta_p - m.a_ref - m.frac) / m.rate
        res0 = res + (model0.a_ref + model0.frac + (b - model0.b_ref) * model0.rate - ta_p)
        ta_parts.append(ta_p)
        res_parts.append(res0)
        got = _polyfit_clipped(ta_p, res, (s_lo + s_hi) // 2, 1, 4.0)
        if got is not None:
            m = m.corrected(got[0], got[1], (s_lo + s_hi) // 2)
    if not ta_parts:
        return model0, float("nan"), 0, 0.0
    ta_all = np.concatenate(ta_parts)
    res_all = np.concatenate(res_parts)
    got = _polyfit_clipped(ta_all, res_all, lo, 2, 4.0)
    if got is None:
        return model0, float("nan"), int(ta_all.size), 0.0
    c0, c1, c2, sigma, n = got
    return model0.corrected(c0, c1, lo), sigma, n, 2.0 * c2


def fit_clock(
    model: ClockModel,
    t_a: np.ndarray,
    t_b_mapped: np.ndarray,
    window: int,
    *,
    anchor: int | None = None,
    quadratic: bool = True,
    clip: float = 4.0,
) -> tuple[ClockModel, float, int, float]:
    """Refine ``model`` by a sigma-clipped polynomial fit of coincidence residuals.

    All pairs with ``|t_b_mapped - t_a| <= window`` are found; the residuals
    are clipped at ``clip`` robust standard deviations (1.4826 MAD) around
    the median and fitted by least squares with ``c0 + c1 x + c2 x^2``,
    ``x = t_a - anchor`` (``c2 = 0`` if not ``quadratic``); the fit is
    repeated once, clipping at ``clip`` standard deviations around the curve.
    The quadratic term absorbs a clock drift (frequency changing in time),
    which a straight line over a long window would turn into a bias.

    Returns
    -------
    model : ClockModel
        Tangent of the fitted curve at ``anchor`` (default: the median pair
        time), i.e. offset and frequency *at* the anchor.
    sigma : float
        Standard deviation of the kept residuals about the curve (ticks).
    n : int
        Number of kept pairs.
    dfreq_per_tick : float
        Change of the residual slope per Alice tick (``2 c2``); 0 for a line.
    """
    from ._kernels import pair_residuals

    t_a = _check_times("t_a", t_a)
    t_b_mapped = _check_times("t_b_mapped", t_b_mapped)
    if int(window) < 0:
        raise InputError(f"window={window!r}: the pairing half-width must be >= 0 ticks")
    cap = max(1024, 2 * min(len(t_a), len(t_b_mapped)))
    while True:
        ta = np.empty(cap, np.int64)
        res = np.empty(cap, np.int64)
        k = pair_residuals(t_a, t_b_mapped, int(window), ta, res)
        if k <= cap:
            break
        cap = k
    ta, res = ta[:k], res[:k].astype(np.float64)
    if k < 8:
        return model, float("nan"), k, 0.0
    med = float(np.median(res))
    mad = float(np.median(np.abs(res - med))) * 1.4826
    keep = np.abs(res - med) <= max(clip * mad, 1.0)
    ta, res = ta[keep], res[keep]
    if ta.size < 8:
        return model, float("nan"), int(ta.size), 0.0
    t0 = int(ta[ta.size // 2]) if anchor is None else int(anchor)
    got = _polyfit_clipped(ta, res, t0, 2 if quadratic else 1, clip)
    if got is None:
        return model, float("nan"), int(ta.size), 0.0
    c0, c1, c2, sigma, n = got
    return model.corrected(c0, c1, t0), sigma, n, 2.0 * c2


def _lsq(x: np.ndarray, y: np.ndarray, deg: int) -> np.ndarray:
    """Least-squares polynomial coefficients (low order first) by the normal equations.

    ``x`` is pre-scaled to [-1, 1] by the caller, so the 3x3 system is well
    conditioned; this avoids an SVD per window (``np.polyfit``).
    """
    n = x.size
    if deg == 1:
        xm, ym = float(x.mean()), float(y.mean())
        dx = x - xm
        sxx = float(np.sum(dx * dx))
        c1 = float(np.sum(dx * (y - ym)) / sxx) if sxx > 0 else 0.0
        return np.array([ym - c1 * xm, c1])
    x2 = x * x
    s = [float(n), float(x.sum()), float(x2.sum()), float((x2 * x).sum()), float((x2 * x2).sum())]
    a = np.array([[s[0], s[1], s[2]], [s[1], s[2], s[3]], [s[2], s[3], s[4]]])
    b = np.array([float(y.sum()), float((x * y).sum()), float((x2 * y).sum())])
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        return np.concatenate([_lsq(x, y, 1), [0.0]])


def _polyfit_clipped(
    ta: np.ndarray, res: np.ndarray, t0: int, deg: int, clip: float
) -> tuple[float, float, float, float, int] | None:
    """Least-squares ``res ~ c0 + c1 x + c2 x^2`` (``x = ta - t0``), refit once after clipping at ``clip`` sd."""
    x_all = (ta - t0).astype(np.float64)
    scale = float(np.max(np.abs(x_all))) or 1.0  # conditioning of the normal equations
    xs_all = x_all / scale
    keep = np.ones(ta.size, bool)
    coef = np.zeros(deg + 1)
    for _ in range(2):
        if keep.sum() < 8:
            return None
        coef = _lsq(xs_all[keep], res[keep], deg)
        fit = np.polynomial.polynomial.polyval(xs_all, coef)
        sd = float(np.std(res[keep] - fit[keep]))
        keep = np.abs(res - fit) <= max(clip * sd, 1.0)
    if keep.sum() < 8:
        return None
    fit = np.polynomial.polynomial.polyval(xs_all[keep], coef)
    sigma = float(np.std(res[keep] - fit))
    c2 = float(coef[2]) / scale**2 if deg == 2 else 0.0
    return float(coef[0]), float(coef[1]) / scale, c2, sigma, int(keep.sum())


# --------------------------------------------------------------------------- tracking


@dataclass
class DriftTracker:
    """Servo keeping a :class:`ClockModel` locked over a long run.

    After each sifting (sub-)window, :meth:`update` takes the Alice times and
    residuals (``mapped t_b - t_a``, Alice ticks) of that window's
    coincidences and fits them with a line ``c0 + c1 (t - t_m)`` (least
    squares, clipped at 5 sd). The tangent there gives the clock rate at
    ``t_m``; the rates of the last ``history_len`` windows give the drift
    (rate change per tick, least squares). The model is then replaced by the
    prediction for the centre of the *next* window, ``t_m + span``: offset
    and rate extrapolated with the drift. Offset-only servos (costream's) lag
    a frequency ramp; this one follows it. ``gain_offset`` and ``gain_freq``
    scale the offset and slope corrections (1 = dead-beat). A history of
    ``(t_m, offset_s, freq_ppm)`` is kept for the report.

    Attributes
    ----------
    model : ClockModel
    gain_offset, gain_freq : float
        Servo gains in (0, 1].
    min_pairs : int
        Windows with fewer coincidences leave the model unchanged.
    history_len : int
        Windows used to estimate the drift.
    """

    model: ClockModel
    gain_offset: float = 1.0
    gain_freq: float = 1.0
    min_pairs: int = 32
    history_len: int = 10
    history: list[tuple[int, float, float]] = field(default_factory=list)
    _rates: list[tuple[int, float]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        for name in ("gain_offset", "gain_freq"):
            g = getattr(self, name)
            if not (0 < g <= 1):
                raise ConfigError(f"{name}={g!r}: servo gain must be in (0, 1]")

    @property
    def drift_per_tick(self) -> float:
        """Estimated change of the rate (Alice ticks per Bob tick) per Alice tick."""
        if len(self._rates) < 3:
            return 0.0
        t = np.array([p[0] for p in self._rates], np.float64)
        y = np.array([p[1] for p in self._rates], np.float64)
        t -= t.mean()
        stt = float(np.sum(t * t))
        return float(np.sum(t * (y - y.mean())) / stt) if stt > 0 else 0.0

    def update(self, t_a: np.ndarray, residual: np.ndarray) -> ClockModel:
        """Fold one window of coincidence residuals into the model and return it."""
        n = int(t_a.size)
        if n < self.min_pairs:
            return self.model
        t_m = int(t_a[n // 2])
        got = _polyfit_clipped(np.asarray(t_a, np.int64), residual.astype(np.float64), t_m, 1, 5.0)
        if got is None:
            return self.model
        c0, c1 = got[0], got[1]
        m1 = self.model.corrected(self.gain_offset * c0, self.gain_freq * c1, t_m)
        self._rates.append((t_m, m1.rate))
        del self._rates[: -self.history_len]
        k = self.drift_per_tick
        d = float(int(t_a[-1]) - int(t_a[0]))  # predict to the centre of the next window
        if d > 0:
            r = m1.rate
            # A(B) - A_m = r dB + k r dB^2 / 2 (the rate changes by k per Alice
            # tick, i.e. k r per Bob tick); solved to first order for A = d
            db = d / r - 0.5 * k * (d / r) ** 2
            m1 = ClockModel.anchored(t_m + int(d), m1.to_bob(t_m) + db, r + k * d,
                                     m1.tick_a_s, m1.tick_b_s)
        self.model = m1
        self.history.append((t_m, self.model.offset_s(t_m), self.model.freq_ppm))
        return self.model
