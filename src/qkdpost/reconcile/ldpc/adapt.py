"""Rate adaptation: pick a mother code and the numbers of shortened and punctured bits.

A frame of ``n_key`` key bits is embedded in a codeword of length n of a
mother code with m checks: ``p`` positions are punctured (Alice fills them
with private random bits, Bob gives them LLR 0), ``s = n - n_key - p`` are
shortened (public values, known to Bob), the rest carry the key
(Elkouss, Martinez-Mateo, Martin, "Information reconciliation for quantum key
distribution", QIC 11, 226 (2011), arXiv:1007.1616, Sec. 3).

Leakage. Alice discloses the m syndrome bits. Because the punctured bits are
uniform and private and the punctured columns of H are untainted (disjoint
supports, so full column rank p), the syndrome tells at most m - p bits
about the key: I(X_key; S) = H(S) - rank(H_p) <= m - p, as long as the
punctured bits stay hidden. Every bit revealed in a blind round adds one,
and so does what Bob's own choices of positions tell
(:func:`.protocol.leak_bits`).

Blind rounds (Martinez-Mateo, Elkouss, Martin, "Blind reconciliation", QIC
12, 791 (2012), arXiv:1205.5729): the first attempt targets efficiency
``f_start``; each failed attempt reveals ``step`` (about
``f_step * n_key * h(Q)``) more positions: by default the punctured
positions in a public order and then key positions (at 2^18 then the
frame's least reliable key positions, Kiktenko et al., Phys. Rev. Applied
8, 044017 (2017), arXiv:1612.03673); see :class:`.protocol.LdpcBob`
``reveal`` and :func:`.protocol.leak_bits` for what each costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...bits import binary_entropy
from ...errors import InputError
from .codes import available_codes

__all__ = ["FramePlan", "plan_frame", "frame_length", "default_f_start", "DEFAULT_F_START", "F_START_BY_CODE",
           "DEFAULT_F_STEP", "DEFAULT_MAX_ROUNDS", "DEFAULT_REVEAL", "DEFAULT_ITERATIONS", "default_iterations",
           "MAX_PUNCT_FRACTION", "MAX_F_START", "PREFERRED_FAMILY", "PUNCT_CAP"]

# First-attempt efficiency by code length, set from measured f and
# iterations (docs/ldpc.md): longer codes work closer to capacity. With
# reliability reveals (session 5's default) a lower start pays (n = 2^16, 96 frames,
# seed 7, f_start 1.09 / 1.08 / 1.07: Q 5 % f 1.0901 / 1.0818 / 1.0759 in
# 36 / 48 / 69 iterations; Q 8 % 1.0902 / 1.0830 / 1.0780 in 36 / 54 / 75):
# 1.09 at 2^16 keeps the iterations (throughput) of the previous plan.
# (These figures were measured with session 5's reliability reveals, whose
# leak was undercounted where the plan punctures; docs/ldpc.md "Leakage".)
# n = 2^18 with frames of frame_length (p = 0, hybrid reveals; 8 frames,
# seed 7, benchmarks/bench_ldpc.measure(frame_length(Q, 2**18, f_start=fs),
# Q, 8, seed=7, f_start=fs)): f_start 1.05 -> 1.04 gave f 1.0569 -> 1.0557
# at Q = 3 %, 1.0606 -> 1.0562 at 5 %, 1.0663 -> 1.0631 at 8 % for 1.1-1.4x
# the iterations
# (docs/ldpc.md, "Frames sized to the code"). (At n_key 235930 with public
# reveals 1.04 had given only -0.001.)
# n = 2^14 (96 frames, seed 7), f_start / f_step 1.12 / 0.04 (6 rounds, set
# for punctured reveals) -> 1.09 / 0.01 (12 rounds): Q 2 / 3 / 5 / 7 / 8 /
# 10 % f 1.138 / 1.124 (40 frames) / 1.123 / 1.121 (40) / 1.120 / 1.122 (40)
# -> 1.112 / 1.100 / 1.096 / 1.098 / 1.095 / 1.096 in 38-50 instead of 20-26
# iterations (1.08 / 0.01: 1.094-1.109 in 43-60).
DEFAULT_F_START = {2**14: 1.09, 2**16: 1.09, 2**18: 1.04}
# Exceptions by (code length, design rate of the mother code). elk2009-r0.85
# at 2^16 (Q ~ 2 %) sits closest to the 1.10 goal: f_start 1.09 / 1.08 / 1.07
# -> f 1.0971 / 1.0923 / 1.0885 in 58 / 77 / 96 iterations (96 frames,
# seed 7). The R 0.5 code's exception (1.095, for punctured reveals) is gone:
# with reliability reveals at Q = 10 %, 1.095 / 1.09 -> f 1.0955 / 1.0910
# in 34 / 42 iterations.
F_START_BY_CODE = {(2**16, 0.85): 1.08}
# Efficiency added per blind round, by code length. At 2^16, 0.005 from
# f_start 1.09 instead of 0.01 from 1.08: f equal or lower at Q = 2, 3, 8,
# 10 % (+0.0025 at 5 %) in 8-20 % fewer iterations (32 frames, same seeds,
# docs/ldpc.md). At 2^18, 0.005 from 1.08 instead of 0.015 from 1.05: f lower
# by 0.003-0.011 at Q = 3, 5, 7, 8 % (8 frames each, same seeds), fewer
# iterations at 3, 5, 8 %.
# With frames of frame_length and hybrid reveals, 0.0025 at 2^18 (8 frames,
# seed 7, f_start 1.04): Q = 6 % f 1.0645 -> 1.0633, 8 % 1.0631 -> 1.0597
# for 1.3-1.6x the iterations (docs/ldpc.md, "Frames sized to the code").
DEFAULT_F_STEP = {2**14: 0.01, 2**16: 0.005, 2**18: 0.0025}
# Blind rounds by code length: the budget max_rounds * f_step stays >= 0.09
# (with 6 rounds of 0.01 a frame at Q = 2 % ran out and went to the fallback).
DEFAULT_MAX_ROUNDS = {2**14: 12, 2**16: 20, 2**18: 40}


# Blind-round reveals (:class:`.protocol.LdpcBob` ``reveal``): "hybrid" at
# every length (punctured positions in the public order, then Bob's least
# reliable key positions; never more leak than "punctured"). At 2^18,
# n_key 235930, 16 frames, seed 7, Q = 7 % (elk2009-r0.65, 1175 punctured):
# f 1.1000 -> 1.0702 in 215 -> 114 iterations. For frames that only shorten
# (:func:`frame_length`) it is what makes them efficient: Q = 2 %, n_key
# 64835 (p = 0), benchmarks/bench_ldpc.measure(64835, 0.02, 32, seed=7,
# reveal=...): "punctured" (key positions in the public order) f 1.663 with
# 16 of 32 frames failed, "hybrid" 1.088, 0 failed.
DEFAULT_REVEAL = "hybrid"


# Decoder limits by code length: (max_iter per attempt, patience). At 2^18
# frames near the code's threshold keep improving slowly; abandoning them
# after 6 iterations without a new minimum of unsatisfied checks sends them
# to a blind round they did not need. n_key 235930, 16 frames, seed 7,
# reveal "hybrid", (60, 6) -> (200, 20): f / iterations Q 3 % 1.0719 / 157
# -> 1.0695 / 240; 5 % 1.0709 / 165 -> 1.0679 / 268; 7 % 1.0702 / 114 ->
# 1.0699 / 190; 8 % 1.0820 / 186 -> 1.0797 / 306 (0 failed).
DEFAULT_ITERATIONS = {2**18: (200, 20)}


def default_iterations(n: int) -> tuple[int, int]:
    """(max_iter, patience) for a mother code of length n (:data:`DEFAULT_ITERATIONS`, else (60, 6))."""
    return DEFAULT_ITERATIONS.get(n, (60, 6))


def default_f_start(n: int, design_rate: float) -> float:
    """First-attempt efficiency for a mother code of length n and design rate (tables above)."""
    return F_START_BY_CODE.get((n, round(design_rate, 2)), DEFAULT_F_START.get(n, 1.05))
# Code family used when it has a code that reaches the target, even with
# more puncturing (measured at n = 2^16, 32 frames, same seeds,
# docs/ldpc.md: the Elkouss et al. 2009 codes at R 0.85, 0.8, 0.75, 0.65,
# 0.55, 0.5 need fewer iterations at equal or lower f than the
# Martinez-Mateo et al. 2012 codes, e.g. Q = 10 %: f 1.100 in 28 iterations
# against 1.114 in 90; Q = 5 %: R 0.65 punctured 6.9 % f 1.090 in 35
# against R 0.7 punctured 1.9 % f 1.0925 in 46); the other family serves
# the lengths and rates it alone has (2^18), or when forced with ``code=``.
PREFERRED_FAMILY = "elk2009-"
# Puncturing is kept to at most this fraction of the frame (issue 4).
MAX_PUNCT_FRACTION = 0.10
# Lower caps by distribution (n = 2^16, docs/ldpc.md): elk2009-r0.80
# punctured 3.5 % (Q = 2.5 %) left 2 of 96 frames undecoded after 20 blind
# rounds, f = 1.124, where mm2012-r0.80 punctured as much decoded all 96 at
# f = 1.111; elk2009-r0.75 punctured 6 % (Q = 3 %) gave f = 1.144 with 1 of
# 32 frames undecoded (3.6 % at Q = 3.5 %: f = 1.108, 1 of 96).
PUNCT_CAP = {"elk2009-r0.80": 0.04, "elk2009-r0.75": 0.04}
# Frames shorter than this fraction of a code's length are not placed in it
# (shortening more would leave a code that discloses nearly the whole frame).
# 0.75 -> 0.7 lets frame_length shorten instead of puncture where the 2^18
# codes leave a gap: Q = 6 %, 8 frames, seed 7 (measure(n_key, 0.06, 8,
# seed=7, code=...)): elk2009-r0.65 with 1 % punctured (n_key 258272) f
# 1.0645, elk2009-r0.75 shortened to n_key 193065 (0.74 n) f 1.0566
# (docs/ldpc.md, "Frames sized to the code").
MIN_FILL = 0.7
# A plan whose first attempt is less efficient than this is refused
# (QBER too low for the shipped family: use Cascade).
MAX_F_START = 1.6


@dataclass(frozen=True)
class FramePlan:
    """How one batch of frames is embedded in a mother code.

    Attributes
    ----------
    code : str          name of the shipped mother code
    n, m : int          code length and number of checks
    n_key : int         key bits per frame
    n_punct : int       punctured positions (untainted)
    n_short : int       shortened positions
    step : int          positions revealed per blind round
    max_rounds : int    blind rounds after the first attempt
    """

    code: str
    n: int
    m: int
    n_key: int
    n_punct: int
    n_short: int
    step: int
    max_rounds: int

    @property
    def leak_start(self) -> int:
        """Bits leaked by the syndrome alone (m - p)."""
        return self.m - self.n_punct

    def efficiency_start(self, qber: float) -> float:
        return self.leak_start / (self.n_key * float(binary_entropy(qber)))


def plan_frame(
    n_key: int,
    qber: float,
    *,
    f_start: float | None = None,
    f_step: float | None = None,
    max_rounds: int | None = None,
    code: str | None = None,
) -> FramePlan:
    """Choose mother code, puncturing and shortening for frames of ``n_key`` bits.

    Among shipped codes with MIN_FILL n <= n_key <= n (0.7 n), the shortest length that can reach
    the target leak m - p = f_start * n_key * h(qber) with
    0 <= p <= min(untainted positions, 10 % of n, n - n_key) is used; at
    that length, the code that needs the fewest punctured positions (the
    highest-rate code that reaches the target; shortening is preferred to
    puncturing): a plan that only shortens (p = 0) first, then the codes of
    :data:`PREFERRED_FAMILY` if any reaches the target. If no code reaches
    the target exactly, the one with the smallest
    start leak that is still >= the target is used.

    Raises
    ------
    InputError
        ``n_key`` outside every code's range [MIN_FILL n, n], or ``qber`` outside the
        range the codes cover for this length.
    """
    if not (0.0 < qber < 0.5):
        raise InputError(f"qber={qber!r}: must be in (0, 0.5)")
    if n_key < 1:
        raise InputError(f"frame length {n_key}: must be at least 1 bit")
    if max_rounds is not None and max_rounds < 0:
        raise InputError(f"max_rounds={max_rounds!r}: must be >= 0")
    if f_step is not None and not (0.0 < f_step < 1.0):
        raise InputError(f"f_step={f_step!r}: must be in (0, 1)")
    entries = available_codes()
    if code is not None:
        entries = [e for e in entries if e["name"] == code]
        if not entries:
            raise InputError(f"code={code!r}: no such shipped LDPC code; see qkdpost.reconcile.ldpc.available_codes()")
    fitting = [e for e in entries if MIN_FILL * e["n"] <= n_key <= e["n"]]
    if not fitting:
        longest = max(e["n"] for e in entries)
        ranges = ", ".join(f"{int(math.ceil(MIN_FILL * n))}..{n}" for n in sorted({e['n'] for e in entries}))
        what = "longer than every shipped LDPC code" if n_key > longest else "not in a supported range"
        raise InputError(f"frame length {n_key}: {what}; frames must be {ranges} bits "
                         f"(frame_length(qber, n) is best); split or regroup the key block")
    h = float(binary_entropy(qber))
    cands = []
    for e in sorted(fitting, key=lambda e: (e["n"], e["m"])):
        n, m = e["n"], e["m"]
        fs = f_start if f_start is not None else default_f_start(n, float(e.get("design_rate", 1.0 - m / n)))
        fst = f_step if f_step is not None else DEFAULT_F_STEP.get(n, 0.02)
        target = fs * n_key * h
        cap = PUNCT_CAP.get(e.get("distribution", ""), MAX_PUNCT_FRACTION)
        p_hi = min(e["untainted_max"], int(cap * n), n - n_key)
        p = max(0, min(p_hi, m - int(math.ceil(target))))
        leak = m - p
        if leak < target:
            continue  # code too weak for this QBER even without puncturing
        exact = m - int(math.ceil(target)) <= p_hi  # target reached, not clipped
        cands.append(((0 if exact else 1, n, p, leak, m), e, p, fs))
    if not cands:
        raise InputError(f"qber={qber:.4g}: too high for every shipped LDPC code that fits frames of "
                         f"{n_key} bits (needs more than the lowest-rate code discloses); use Cascade")
    # Least puncturing first: a highly punctured mother code decodes worse
    # than a higher-rate one shortened (measured at n = 2^16, Q = 2 %: R 0.8
    # with 6.3 % punctured f = 1.140, R 0.85 with 1.3 % f = 1.112;
    # docs/ldpc.md; measured with punctured reveals). Among the codes (of the
    # shortest length) that reach the target, those of the preferred family
    # first.
    # A plan that only shortens (p = 0) comes before the family preference:
    # Bob's reliability reveals then cost only the bits revealed
    # (:func:`.protocol.leak_bits`), see :func:`frame_length`.
    cands.sort(key=lambda c: (c[0][:2], c[2] > 0, 0 if c[1]["name"].startswith(PREFERRED_FAMILY) else 1, c[0][2:]))
    _, e, p, fs = cands[0]
    n, m = e["n"], e["m"]
    fst = f_step if f_step is not None else DEFAULT_F_STEP.get(n, 0.02)
    plan = FramePlan(code=e["name"], n=n, m=m, n_key=n_key, n_punct=p, n_short=n - n_key - p,
                     step=max(1, int(round(fst * n_key * h))),
                     max_rounds=DEFAULT_MAX_ROUNDS.get(n, 6) if max_rounds is None else int(max_rounds))
    if plan.efficiency_start(qber) > max(MAX_F_START, fs):
        raise InputError(f"qber={qber:.4g}: too low for the shipped LDPC codes at frame length {n_key} "
                         f"(first attempt would leak f={plan.efficiency_start(qber):.2f}); use Cascade "
                         "or longer frames")
    return plan


def frame_length(qber: float, code_bits: int, *, f_start: float | None = None) -> int:
    """Key bits per frame for which a shipped code of length ``code_bits`` needs no puncturing.

    A frame of ``n_key = floor(m / (f_start h(Q)))`` bits in a code with m
    checks reaches the first-attempt efficiency ``f_start`` by shortening
    alone (:func:`plan_frame` then gives p = 0). Such frames decode better
    than frames of a fixed length that a lower-rate code must puncture, and
    their blind rounds can reveal Bob's least reliable positions at the
    price of the bits revealed, since with p = 0 his choices depend on the
    error pattern only (:func:`.protocol.leak_bits`). Measured at 2^16,
    Q = 2 %, ``benchmarks/bench_ldpc.measure(n_key, 0.02, 40, seed=7)``:
    f 1.0876 at n_key 64835 (hybrid reveals) against 1.105 at n_key 58982
    (session 6, public-order reveals); docs/ldpc.md.

    Of the codes of that length, the one that leaves the longest frame in
    ``[MIN_FILL n, n]`` is chosen. If none can (e.g. a QBER below the
    highest-rate code's range), the frame is ``n - p`` for the smallest
    puncturing ``p`` (within the code's untainted positions and the
    puncturing cap) that reaches ``f_start`` with no shortening. A frame
    shorter than this is punctured a little to reach ``f_start``; pass the
    same ``f_start`` to :func:`plan_frame` as here.

    Raises
    ------
    InputError
        ``qber`` outside (0, 0.5), no shipped code of that length, or no
        code of that length reaches ``f_start`` at this QBER.
    """
    if not (0.0 < qber < 0.5):
        raise InputError(f"qber={qber!r}: must be in (0, 0.5)")
    entries = [e for e in available_codes() if e["n"] == code_bits]
    if not entries:
        sizes = sorted({e["n"] for e in available_codes()})
        raise InputError(f"code_bits={code_bits!r}: no shipped LDPC code has this length (lengths {sizes})")
    h = float(binary_entropy(qber))
    short, punct = 0, 0
    for e in entries:
        n, m = e["n"], e["m"]
        fh = (f_start if f_start is not None else default_f_start(n, float(e.get("design_rate", 1.0 - m / n)))) * h
        n_key = int(m / fh)
        if MIN_FILL * n <= n_key <= n:
            short = max(short, n_key)
        elif n_key > n and fh < 1.0:
            # m - p = fh (n - p): the least puncturing that fills the whole codeword
            p = int(math.ceil((m - fh * n) / (1.0 - fh)))
            cap = PUNCT_CAP.get(e.get("distribution", ""), MAX_PUNCT_FRACTION)
            if p <= min(e["untainted_max"], int(cap * n)):
                punct = max(punct, n - p)
    if short or punct:
        return short or punct
    raise InputError(f"qber={qber:.4g}: no shipped LDPC code of length {code_bits} reaches the target efficiency "
                     "at this QBER; use another code length or Cascade")
