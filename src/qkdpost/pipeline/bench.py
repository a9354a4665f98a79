"""A short throughput table of every stage and the whole chain on this machine.

Each stage is measured after a warm-up call (Numba compilation excluded) on
inputs of a chosen size, next to a simple reference: a plain NumPy/SciPy
implementation run live in the same process where one is short enough to
write here (coincidence matching, Toeplitz hashing by float64 FFT, keyed
tags by HMAC-SHA256), or the figure measured for a peer implementation on
this machine kind (/work/shared/reference/README.md) where it is not
(Cascade, LDPC). Used by ``qkdpost bench`` and docs/pipeline.md.
"""

from __future__ import annotations

import hashlib
import hmac
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["BenchRow", "run_bench", "format_table"]


@dataclass
class BenchRow:
    stage: str
    size: str
    ours_per_s: float
    unit: str
    reference: str
    ref_per_s: float | None

    def ratio(self) -> float | None:
        return self.ours_per_s / self.ref_per_s if self.ref_per_s else None


def _best(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up (JIT, caches)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _np_match(ta: np.ndarray, tb: np.ndarray, w: int) -> int:
    """Reference coincidence count: nearest Bob event per Alice event (no exclusivity)."""
    j = np.searchsorted(tb, ta)
    left = np.clip(j - 1, 0, tb.size - 1)
    right = np.clip(j, 0, tb.size - 1)
    d = np.minimum(np.abs(tb[left] - ta), np.abs(tb[right] - ta))
    return int(np.count_nonzero(d <= w))


def _fft_toeplitz(x: np.ndarray, s: np.ndarray, m: int) -> np.ndarray:
    """Reference Toeplitz hash by float64 FFT convolution (exact below ~10^8 bits)."""
    from scipy import fft

    n = x.size
    L = fft.next_fast_len(n + s.size - 1, real=True)
    conv = fft.irfft(fft.rfft(s.astype(np.float64), L) * fft.rfft(x.astype(np.float64), L), L)
    return (np.rint(conv[n - 1 : n - 1 + m]).astype(np.int64) & 1).astype(np.uint8)


def run_bench(bits: int = 1 << 20, qber: float = 0.02, seconds: float = 3.0, repeat: int = 3,
              chain: bool = True, log: Callable[[str], None] | None = None) -> list[BenchRow]:
    """Measure every stage (and the chain on a simulated link); returns table rows."""
    from ..reconcile import reconcile
    from ..reconcile.ldpc import frame_length

    say = log or (lambda s: None)
    rng = np.random.default_rng(7)
    rows: list[BenchRow] = []
    a = rng.integers(0, 2, bits, dtype=np.uint8)
    b = a ^ (rng.random(bits) < qber).astype(np.uint8)

    # sifting: coincidence matching kernel vs a NumPy nearest-neighbour reference
    from ..sift import match

    say("sift (coincidence matching)")
    n_ev = 4 * bits
    ta = np.cumsum(rng.integers(1, 2000, n_ev)).astype(np.int64)
    tb = np.sort(ta + rng.integers(-50, 50, n_ev)).astype(np.int64)
    t_ours = _best(lambda: match(ta, tb, 100), repeat)
    t_ref = _best(lambda: _np_match(ta, tb, 100), repeat)
    rows.append(BenchRow("sift: match", f"{n_ev:.0e} events", n_ev / t_ours, "events/s",
                         "NumPy searchsorted (live)", n_ev / t_ref))

    # reconciliation, as a session runs it: several frames per call (Cascade: the
    # pipeline's default batch; LDPC: one frame per SIMD lane), Cascade's public
    # permutations built once per session seed (the reference caches them too)
    for method, frames, ref_name, ref_bps in (
        ("cascade", 4, "cascade-cpp option7, n=1e6, Q=2%, permutations cached (reference README)", 4.1e6),
        ("ldpc", 8, "Numba layered SP yardstick (reference README)", 1.1e6),
    ):
        say(f"reconcile ({method})")
        try:
            q = qber if method == "cascade" else max(qber, 0.02)
            n = bits if method == "cascade" else min(bits, frame_length(q, 2**16))
            fa = np.stack([np.roll(a[:n], 7919 * i) for i in range(frames)])
            fb = fa ^ (rng.random(fa.shape) < q).astype(np.uint8)
            reconcile(fa[:1], fb[:1], method=method, qber=q, seed=1)
            t0 = time.perf_counter()
            r = reconcile(fa, fb, method=method, qber=q, seed=1)
            dt = time.perf_counter() - t0
            rows.append(BenchRow(f"reconcile: {method}",
                                 f"{frames} x n={n}, Q={q:.0%}, f={float(r.efficiency((fa != fb).mean(axis=1)).mean()):.3f}",
                                 frames * n / dt, "bits/s", ref_name, ref_bps))
        except Exception as exc:  # a stage that is missing or broken must not hide the others
            rows.append(BenchRow(f"reconcile: {method}", f"failed: {type(exc).__name__}", float("nan"),
                                 "bits/s", ref_name, ref_bps))

    # verification: keyed universal tag vs HMAC-SHA256 of the packed block
    from ..verify import draw_key, key_words, tags

    say("verify")
    t = 64
    keys = draw_key(bits, t).reshape(1, key_words(bits, t))
    blk = a.reshape(1, -1)
    t_ours = _best(lambda: tags(blk, keys, t), repeat)
    packed = np.packbits(a).tobytes()
    t_ref = _best(lambda: hmac.new(b"k" * 32, packed, hashlib.sha256).digest(), repeat)
    rows.append(BenchRow("verify: GF(2^128) poly + Toeplitz tag", f"n={bits}", bits / t_ours, "bits/s",
                         "HMAC-SHA256, not universal (live)", bits / t_ref))

    # privacy amplification: ours vs float64 FFT
    from ..amplify import draw_seed, toeplitz_hash

    say("amplify")
    m = bits // 2
    seed = draw_seed(bits + m - 1)
    t_ours = _best(lambda: toeplitz_hash(a, seed, m), repeat)
    t_ref = _best(lambda: _fft_toeplitz(a, seed, m), repeat)
    rows.append(BenchRow("amplify: Toeplitz m/n=0.5", f"n={bits}", bits / t_ours, "bits/s",
                         "scipy float64 FFT (live)", bits / t_ref))

    # key store: two-phase write of one block on both sides
    from ..keystore import KeyStore

    say("store")
    with tempfile.TemporaryDirectory() as tmp:
        sa, sb = KeyStore(Path(tmp) / "a"), KeyStore(Path(tmp) / "b")
        key = a[:m]
        k = [0]

        def store_once() -> None:
            bid = f"b{k[0]}"
            k[0] += 1
            sa.prepare(bid, key, {})
            sb.put(bid, key, {})
            sa.commit(bid)

        t_ours = _best(store_once, repeat)
    rows.append(BenchRow("store: 2PC, both parties, fsync", f"{m} bits", m / t_ours, "bits/s", "-", None))

    if chain:
        say("whole chain (simulated BBM92 link, one process)")
        rows.append(_chain_row(seconds))
    return rows


def _chain_row(seconds: float) -> BenchRow:
    from ..config import Config
    from ..simulate import BBM92Config, write_link
    from .run import run_local

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_link(BBM92Config(duration_s=seconds), d / "link", seed=5)
        cfg = Config().replace(block_bits=1 << 16, acquisition_s=min(1.5, seconds / 3))
        run_local(d / "link/alice.arrow", d / "link/bob.arrow", d / "warm", cfg, plot=False)
        t0 = time.perf_counter()
        rep = run_local(d / "link/alice.arrow", d / "link/bob.arrow", d / "out", cfg, plot=False)
        dt = time.perf_counter() - t0
        tot = rep.totals()
        det = tot.get("detections_bob", 0)
    return BenchRow("whole chain: files -> keys", f"{seconds:g} s link, {det} det., {tot['final_bits']} key bits",
                    det / dt, "events/s", "real time of the link", det / seconds)


def format_table(rows: list[BenchRow]) -> str:
    def fmt(x: float | None, unit: str) -> str:
        if x is None or not np.isfinite(x):
            return "-"
        return f"{x / 1e6:.2f} M{unit}"

    head = f"{'stage':38s} {'size':44s} {'ours':>16s} {'reference':>16s} {'x':>6s}  reference is"
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = r.ratio()
        lines.append(f"{r.stage:38s} {r.size:44s} {fmt(r.ours_per_s, r.unit):>16s} "
                     f"{fmt(r.ref_per_s, r.unit):>16s} {('%.1f' % ratio) if ratio else '-':>6s}  {r.reference}")
    return "\n".join(lines)
