"""The two parties of LDPC reconciliation and their messages.

Bob drives, Alice answers (DESIGN.md). One batch of N frames costs
``1 + rounds`` round trips:

``ldpc.syndromes``  Bob -> {frame_ids, code, n_key, n_punct, layout_seed}
                    Alice -> {syndromes: uint8 (N, ceil(m/8)) packed bits}
``ldpc.reveal``     Bob -> {frame_ids, start, stop}   (only failed frames)
                    Alice -> {values: uint8 (N', ceil((stop-start)/8)) packed}
``ldpc.reveal_at``  Bob -> {frame_ids, counts, positions}  (frames stuck on a few checks)
                    Alice -> {values: uint8 (1, ceil(sum(counts)/8)) packed}

A frame whose attempt ended with at most ``trap_checks`` unsatisfied checks
is stuck in a trapping set of the code: revealing more punctured bits (the
blind round) does not reach it, and such frames used to fail all 20 rounds
(docs/ldpc.md). In its next round Bob asks instead for the values of the
variables of those checks (``ldpc.reveal_at``, code positions; a round with
both kinds of frames costs two round trips). Which positions Bob asks for
depends on his decoder state, which belief propagation makes a function of
the error pattern *and of Alice's punctured bits*: such a choice may tell
Eve about those bits, on which the syndrome's puncturing credit rests, so a
frame with punctured positions pays for Bob's choices too: log2 of the
number of requests he could have made, at most the whole credit
(:func:`leak_bits`).

Frames that still fail after every blind round are, with
``fallback="cascade"`` (the default), reconciled by Cascade over the same
channel (``cascade.*`` messages, answered by the :class:`CascadeAlice` that
:class:`LdpcAlice` holds on the same frames); its parities are added to the
frame's leakage. With ``fallback="drop"`` they are reported as failed.

``layout_seed`` (16 public random bytes, from ``secrets`` unless a seed is
given) fixes which code positions carry the key, which are shortened and
their values, and the order in which positions are revealed; punctured
positions are the code's untainted ones. Alice's punctured bits are her
private randomness (``secrets`` unless a simulation seed is given).
"""

from __future__ import annotations

import math
import numbers
import secrets
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numba
import numpy as np

from ...bits import as_bits
from ...channel import Channel, Handler
from ...errors import InputError, ProtocolError
from ..cascade import CascadeAlice, CascadeBob, CascadeConfig
from ..result import ReconcileResult
from . import _kernels as K
from .adapt import DEFAULT_REVEAL, FramePlan, default_iterations, plan_frame
from .codes import LdpcCode, load_code

__all__ = ["LdpcAlice", "LdpcBob", "FrameLayout", "frame_layout", "leak_bits"]


@dataclass(frozen=True)
class FrameLayout:
    """Public placement of a frame inside a codeword (same on both sides).

    key_pos : int64 (n_key,)    code position of key bit i
    short_pos : int64 (s,)      shortened positions
    short_vals : uint8 (s,)     their public values
    punct_pos : int64 (p,)      punctured positions
    reveal_order : int64 (p + n_key,)  positions disclosed by blind rounds, in order
    """

    key_pos: np.ndarray
    short_pos: np.ndarray
    short_vals: np.ndarray
    punct_pos: np.ndarray
    reveal_order: np.ndarray


def frame_layout(code: LdpcCode, n_key: int, n_punct: int, layout_seed: bytes) -> FrameLayout:
    """Derive the layout from the shared public seed (PCG64 seeded by the 16 bytes)."""
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(layout_seed, "little")))
    punct = code.punct_order[:n_punct].astype(np.int64)
    free = np.ones(code.n, dtype=bool)
    free[punct] = False
    rest = np.flatnonzero(free)
    rest = rest[rng.permutation(rest.shape[0])]
    n_short = code.n - n_key - n_punct
    short_pos = rest[:n_short]
    key_pos = rest[n_short:]
    short_vals = rng.integers(0, 2, n_short, dtype=np.uint8)
    reveal = np.concatenate([punct, key_pos[rng.permutation(n_key)]])
    return FrameLayout(key_pos=key_pos, short_pos=short_pos, short_vals=short_vals, punct_pos=punct,
                       reveal_order=reveal)


def shortened_subgraph(code: LdpcCode, short_pos: np.ndarray,
                       short_vals: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The parity checks restricted to the positions that are not shortened.

    A shortened position carries a value both parties know, so its
    contribution to each of its checks is a known constant: with
    x_S fixed, H x = s  <=>  H_{:,U} x_U = s + H_{:,S} x_S (mod 2), U the
    other positions (the usual treatment of shortening, e.g. Elkouss et al.,
    Quantum Inf. Comput. 11, 226, 2011). Decoding the sub-graph is the exact form of
    giving the shortened positions an infinite LLR, with fewer edges.

    Returns
    -------
    row_ptr : int64 (m+1,), col_idx : int32 (E_U,)   the sub-graph by rows (same m)
    cols : int64 (|U|,)     code position of each sub-graph column, ascending
    inv : int64 (n,)        column of each code position, -1 if shortened
    flip : uint8 (m,)       H_{:,S} x_S mod 2, to be added to every syndrome
    """
    keep = np.ones(code.n, dtype=bool)
    keep[short_pos] = False
    cols = np.flatnonzero(keep)
    inv = np.full(code.n, -1, dtype=np.int64)
    inv[cols] = np.arange(cols.shape[0])
    val = np.zeros(code.n, dtype=np.int64)
    val[short_pos] = short_vals
    rows = np.repeat(np.arange(code.m), np.diff(code.row_ptr))
    kept = keep[code.col_idx]
    row_ptr = np.zeros(code.m + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows[kept], minlength=code.m), out=row_ptr[1:])
    col_idx = inv[code.col_idx[kept]].astype(np.int32)
    flip = (np.bincount(rows, weights=val[code.col_idx], minlength=code.m).astype(np.int64) & 1).astype(np.uint8)
    return row_ptr, col_idx, cols, inv, flip


def _trapped_columns(row_ptr: np.ndarray, col_idx: np.ndarray, syn: np.ndarray, L: np.ndarray,
                     frames: np.ndarray, known: np.ndarray, max_checks: int) -> dict[int, np.ndarray]:
    """Frames whose hard decision leaves between 1 and ``max_checks`` checks unsatisfied, each
    with the columns (not yet known) of the variables of those checks, ascending."""
    x = np.ascontiguousarray(L[frames] < 0, dtype=np.uint8)
    par = np.empty((frames.shape[0], syn.shape[1]), dtype=np.uint8)
    K.syndrome_batch(row_ptr, col_idx, x, par)
    par ^= syn[frames]
    u = par.sum(axis=1, dtype=np.int64)
    out = {}
    for i in np.flatnonzero((u > 0) & (u <= max_checks)).tolist():
        f = int(frames[i])
        checks = np.flatnonzero(par[i])
        c = np.unique(np.concatenate([col_idx[row_ptr[j]:row_ptr[j + 1]] for j in checks.tolist()])).astype(np.int64)
        c = c[~known[f, c]]
        if c.shape[0]:
            out[f] = c
    return out


def _log2_binom(n: int, k: int) -> float:
    """log2 C(n, k)."""
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)


def _log2_subsets(n: int, kmax: int) -> float:
    """log2 of the number of subsets of 1..kmax elements of an n-set (0 if kmax < 1)."""
    terms = [_log2_binom(n, k) for k in range(1, min(kmax, n) + 1)]
    if not terms:
        return 0.0
    top = max(terms)
    return top + math.log2(sum(2.0 ** (t - top) for t in terms))


def leak_bits(plan: FramePlan, revealed: np.ndarray, revealed_punct: np.ndarray,
              choice_bits: np.ndarray) -> np.ndarray:
    """Bits a frame's reconciliation discloses about Alice's key (int64 per frame).

    Let K be the key bits, P Alice's private bits on the p punctured
    positions and E the error pattern (independent of K and P). The syndrome
    S = H_K K + H_P P tells at most m - p bits about K, because P is uniform
    and H_P has rank p (untainted columns). That credit holds only while P
    stays hidden, and Bob's decoder state is a function of E *and P* (BP is
    symmetric: in error coordinates it decodes the syndrome H_K E + H_P P),
    so what he derives from it and sends may tell Eve about P. By the chain
    rule, I(K; S, rest) <= I(K; S) + (bits of everything else sent), so
    with p > 0 a frame leaks at most

        m - p + revealed + ceil(log2(max_rounds + 2) + choice_bits),

    the log2 term for the public round in which the frame stopped (0 ..
    max_rounds, or never), ``choice_bits`` the log2 of the number of choices
    behind the positions Bob named himself (``ldpc.reveal_at``: for a trap
    reveal the sets of 1..trap_checks unsatisfied checks, for reliability
    reveals the subsets of the unknown columns), plus, when trap reveals are
    on, one bit per blind round of the frame (trapped or not: decided from
    his decoder state too). Granting Eve P instead makes
    all of Bob's choices functions of E alone, so the frame also leaks at
    most m + its revealed key bits; the smaller bound is counted. With
    p = 0 the count is m + revealed (Bob's choices depend on E only, as in
    Cascade).
    """
    p = plan.n_punct
    public = plan.leak_start + np.asarray(revealed, dtype=np.int64)
    if p == 0:
        return public
    extra = np.ceil(math.log2(plan.max_rounds + 2) + np.asarray(choice_bits, dtype=np.float64)).astype(np.int64)
    granted = plan.m + (revealed - revealed_punct)
    return np.minimum(public + extra, granted).astype(np.int64)


def _pack(bits: np.ndarray) -> np.ndarray:
    return np.packbits(bits, axis=-1, bitorder="little")


def _unpack(packed: np.ndarray, count: int) -> np.ndarray:
    return np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=-1, count=count, bitorder="little")


def _reply_bits(reply: Mapping[str, Any], kind: str, field: str, rows: int, count: int) -> np.ndarray:
    """Alice's packed reply field as uint8 (rows, count) bits, or ProtocolError if its shape is wrong.

    np.unpackbits would zero-pad a short row silently (a wrong syndrome, not an error).
    """
    try:
        packed = np.asarray(reply[field])
    except (KeyError, TypeError):
        raise ProtocolError(f"{kind} reply: field {field!r} missing") from None
    want = (rows, (count + 7) // 8)
    if packed.dtype != np.uint8 or packed.shape != want:
        raise ProtocolError(f"{kind} reply: {field} is {packed.dtype} {packed.shape}, expected uint8 {want} "
                            "(Alice and Bob out of step)")
    return _unpack(packed, count)


class LdpcAlice:
    """Alice's side: answers syndrome and reveal requests for her frames.

    Parameters
    ----------
    frames : mapping frame_id -> uint8 0/1 array
        Her key frames.
    sim_seed : int, optional
        Seed of the private bits she puts on punctured positions. None (the
        default, and the only choice outside simulation) draws them from the
        OS CSPRNG.

    Her handlers also answer Cascade's messages on the same frames, for
    Bob's fallback on frames LDPC could not reconcile.
    """

    def __init__(self, frames: Mapping[int, np.ndarray], *, sim_seed: int | None = None):
        self._frames = {int(k): as_bits(v, f"alice frame {k}") for k, v in frames.items()}
        self._cascade = CascadeAlice(self._frames)
        self._sim_rng = None if sim_seed is None else np.random.default_rng([int(sim_seed), 0xA11CE])
        self._words: dict[int, np.ndarray] = {}
        self._layouts: dict[int, FrameLayout] = {}  # per frame: a reveal uses the layout its syndrome was sent with

    def handlers(self) -> dict[str, Handler]:
        return {"ldpc.syndromes": self._on_syndromes, "ldpc.reveal": self._on_reveal,
                "ldpc.reveal_at": self._on_reveal_at, **self._cascade.handlers()}

    @property
    def cascade_leaked(self) -> dict[int, int]:
        """Cascade parities she disclosed per frame id (fallback frames only)."""
        return dict(self._cascade.leaked)

    def forget(self, frame_ids: Sequence[int]) -> None:
        """Drop the codewords kept for reveal requests."""
        for f in frame_ids:
            self._words.pop(int(f), None)
            self._layouts.pop(int(f), None)

    def _private_bits(self, count: int) -> np.ndarray:
        if self._sim_rng is not None:
            return self._sim_rng.integers(0, 2, count, dtype=np.uint8)
        raw = np.frombuffer(secrets.token_bytes((count + 7) // 8), dtype=np.uint8)
        return np.unpackbits(raw, count=count, bitorder="little")

    def _on_syndromes(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            ids = np.asarray(body["frame_ids"], dtype=np.int64)
            code = load_code(str(body["code"]))
            n_key = int(body["n_key"])
            n_punct = int(body["n_punct"])
            seed = bytes(body["layout_seed"])
        except (KeyError, TypeError, ValueError) as exc:  # InputError is a ValueError (unknown code)
            raise ProtocolError(f"ldpc.syndromes: malformed request ({exc})") from None
        if ids.ndim != 1:
            raise ProtocolError(f"ldpc.syndromes: frame_ids must be a 1-D list of ids, got shape {ids.shape}")
        if not (0 <= n_punct <= code.punct_order.shape[0]) or not (0 < n_key <= code.n - n_punct):
            raise ProtocolError(f"ldpc.syndromes: n_key={n_key}, n_punct={n_punct} impossible for {code.name}")
        if len(seed) != 16:
            raise ProtocolError("ldpc.syndromes: layout_seed must be 16 bytes")
        layout = frame_layout(code, n_key, n_punct, seed)
        words = np.empty((ids.shape[0], code.n), dtype=np.uint8)
        for i, f in enumerate(ids.tolist()):
            x = self._frames.get(f)
            if x is None:
                raise ProtocolError(f"ldpc.syndromes: Alice has no frame {f}")
            if x.shape[0] != n_key:
                raise ProtocolError(f"ldpc.syndromes: frame {f} has {x.shape[0]} bits, Bob says {n_key}")
            w = words[i]
            w[layout.key_pos] = x
            w[layout.short_pos] = layout.short_vals
            w[layout.punct_pos] = self._private_bits(n_punct)
        for i, f in enumerate(ids.tolist()):
            self._words[f] = words[i]
            self._layouts[f] = layout
        syn = code.syndrome(words)
        return {"syndromes": _pack(syn)}

    def _on_reveal(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            ids = np.asarray(body["frame_ids"], dtype=np.int64)
            start, stop = int(body["start"]), int(body["stop"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"ldpc.reveal: malformed request ({exc})") from None
        if ids.ndim != 1:
            raise ProtocolError(f"ldpc.reveal: frame_ids must be a 1-D list of ids, got shape {ids.shape}")
        if not 0 <= start < stop:
            raise ProtocolError(f"ldpc.reveal: empty or negative range [{start}, {stop})")
        vals = np.empty((ids.shape[0], stop - start), dtype=np.uint8)
        for i, f in enumerate(ids.tolist()):
            w, lay = self._words.get(f), self._layouts.get(f)
            if w is None or lay is None:
                raise ProtocolError(f"ldpc.reveal: no syndrome was sent for frame {f}")
            if stop > lay.reveal_order.shape[0]:
                raise ProtocolError(f"ldpc.reveal: range [{start}, {stop}) outside 0..{lay.reveal_order.shape[0]}")
            vals[i] = w[lay.reveal_order[start:stop]]
        return {"values": _pack(vals)}

    def _on_reveal_at(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            ids = np.asarray(body["frame_ids"], dtype=np.int64)
            counts = np.asarray(body["counts"], dtype=np.int64)
            pos = np.asarray(body["positions"], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"ldpc.reveal_at: malformed request ({exc})") from None
        if ids.ndim != 1 or counts.shape != ids.shape or pos.ndim != 1:
            raise ProtocolError(f"ldpc.reveal_at: frame_ids {ids.shape}, counts {counts.shape} and positions "
                                f"{pos.shape} must be 1-D, one count per frame id")
        if np.any(counts < 1) or int(counts.sum()) != pos.shape[0]:
            raise ProtocolError(f"ldpc.reveal_at: counts must be >= 1 and sum to the {pos.shape[0]} positions")
        vals = np.empty(pos.shape[0], dtype=np.uint8)
        start = 0
        for f, c in zip(ids.tolist(), counts.tolist()):
            w, lay = self._words.get(f), self._layouts.get(f)
            if w is None or lay is None:
                raise ProtocolError(f"ldpc.reveal_at: no syndrome was sent for frame {f}")
            p = pos[start:start + c]
            # only key and punctured positions (the shortened ones are public already)
            allowed = np.zeros(w.shape[0], dtype=bool)
            allowed[lay.reveal_order] = True
            if np.any((p < 0) | (p >= w.shape[0])) or not np.all(allowed[np.clip(p, 0, w.shape[0] - 1)]):
                raise ProtocolError(f"ldpc.reveal_at: frame {f}: a position is outside the key and punctured "
                                    f"positions of its layout")
            vals[start:start + c] = w[p]
            start += c
        return {"values": _pack(vals[None, :])}


class LdpcBob:
    """Bob's side: drives syndrome decoding and blind rounds over a channel.

    Parameters
    ----------
    f_start : float, optional
        Target efficiency of the first attempt (default by code length and
        mother-code rate, :func:`adapt.default_f_start`).
    f_step : float, optional
        Efficiency added per blind round (positions revealed per round =
        round(f_step * n_key * h(qber))); default by code length,
        :data:`adapt.DEFAULT_F_STEP`.
    max_rounds : int, optional
        Blind rounds after the first attempt (default by code length,
        :data:`adapt.DEFAULT_MAX_ROUNDS`); frames still failing go to the
        ``fallback``.
    max_iter : int, optional
        Decoder iterations of the first attempt (default by code length,
        :func:`adapt.default_iterations`: 60, 200 at 2^18).
    max_iter_blind : int, optional
        Further iterations after each blind round (the decoder continues
        from its state if ``warm``, else restarts; default ``max_iter``).
    patience : int, optional
        Abandon an attempt (and go to the next blind round) when the number
        of unsatisfied checks has not improved for this many iterations;
        0 disables. Not applied in the last round. Default by code length
        (:func:`adapt.default_iterations`: 6, 20 at 2^18).
    trap_checks : int
        A frame whose attempt ends with at most this many unsatisfied
        checks (a trapping set) gets the values of those checks' variables
        revealed in its next round instead of the next blind step
        (``ldpc.reveal_at``); 0 disables.
    reveal : {"punctured", "reliability", "hybrid"}, optional
        Default "hybrid" (:data:`adapt.DEFAULT_REVEAL`). Positions a blind
        round reveals: the punctured ones, then key
        positions, in the public order of the layout (``ldpc.reveal``), or
        the ``step`` least reliable ones of each failed frame, chosen by Bob
        (``ldpc.reveal_at``; Kiktenko et al., Phys. Rev. Applied 8, 044017,
        2017). Where the plan punctures, positions Bob chooses cost the log2
        of his choices (about 12 bits per revealed bit at 2^16) or the
        frame's puncturing credit (:func:`leak_bits`), so "reliability" is
        less efficient there (``benchmarks/bench_ldpc.measure(58982, q, 32,
        seed=7, reveal=...)``: Q = 2 % f 1.185 against 1.105 for
        "punctured", 3.5 % 1.128 against 1.096). Frames that only shorten
        (p = 0, :func:`adapt.frame_length`) pay just the bits revealed.
        Trap reveals (``trap_checks``) cost log2 of the sets of up to
        ``trap_checks`` checks (~94 bits at 2^16). "hybrid": the punctured
        positions in the public order, and once all of them are revealed,
        the ``step`` least reliable key positions of each failed frame
        instead of key positions in the public order. It never costs more
        than "punctured": with P revealed the puncturing credit is spent
        either way, and the frame's leak is m + its revealed key bits
        (:func:`leak_bits`, the granted bound), whoever chose them; but a key
        bit Bob is least sure of is worth far more to him than a random one
        (docs/ldpc.md: n = 2^18, Q = 7 %).
    warm : bool
        Continue decoding from the failed attempt's messages after a blind
        round instead of restarting (measured at n = 2^16, Q = 5 %: same f,
        7 % fewer iterations).
    code : str, optional
        Force a mother code (name from :func:`available_codes`).
    seed : int, optional
        Seed for the public layout; None draws it from ``secrets``.
    max_state_bytes : int
        Bound on decoder state (4 (E + 2n) bytes per frame); larger batches
        run as several consecutive sub-batches (more round trips).
    fallback : {"cascade", "drop"}
        What happens to frames still failing after the blind rounds:
        reconciled by Cascade over the same channel (its parities are added
        to ``leaked_bits``; ``extra["fallback"]`` marks these frames), or
        reported with ``success=False`` and left as Bob had them.
    cascade : CascadeConfig, optional
        Settings of the Cascade fallback (default :class:`CascadeConfig()`).
    """

    def __init__(self, *, f_start: float | None = None, f_step: float | None = None, max_rounds: int | None = None,
                 max_iter: int | None = None, max_iter_blind: int | None = None, warm: bool = True,
                 patience: int | None = None, trap_checks: int = 8, reveal: str | None = None, code: str | None = None,
                 seed: int | None = None,
                 max_state_bytes: int = 256 << 20, fallback: str = "cascade",
                 cascade: CascadeConfig | None = None):
        if fallback not in ("cascade", "drop"):
            raise InputError(f"fallback={fallback!r}: choose 'cascade' (reconcile failed frames with Cascade) "
                             "or 'drop' (report them as failed)")
        self.fallback = fallback
        self.cascade = cascade if cascade is not None else CascadeConfig()
        if max_iter is not None and max_iter < 1:
            raise InputError(f"max_iter={max_iter!r}: must be >= 1")
        if max_iter_blind is not None and max_iter_blind < 1:
            raise InputError(f"max_iter_blind={max_iter_blind!r}: must be >= 1")
        self.warm = bool(warm)
        self.max_state_bytes = int(max_state_bytes)
        if patience is not None and patience < 0:
            raise InputError(f"patience={patience!r}: must be >= 0 (0 disables)")
        self.patience = None if patience is None else int(patience)
        if trap_checks < 0:
            raise InputError(f"trap_checks={trap_checks!r}: must be >= 0 (0 disables)")
        self.trap_checks = int(trap_checks)
        if reveal is not None and reveal not in ("punctured", "reliability", "hybrid"):
            raise InputError(f"reveal={reveal!r}: choose 'punctured' (blind rounds reveal the punctured "
                             "positions, then key positions, in the public order), 'reliability' (the "
                             "least reliable positions of each failed frame) or 'hybrid' (the punctured "
                             "positions in the public order, then the least reliable key positions)")
        self.reveal = reveal
        self.max_iter_blind = None if max_iter_blind is None else int(max_iter_blind)
        if f_start is not None and not (0.5 < f_start < 3.0):
            raise InputError(f"f_start={f_start!r}: must be in (0.5, 3)")
        self.f_start = f_start
        self.f_step = f_step
        self.max_rounds = max_rounds
        self.max_iter = None if max_iter is None else int(max_iter)
        self.code = code
        self.seed = seed

    def plan(self, n_key: int, qber: float) -> FramePlan:
        return plan_frame(n_key, qber, f_start=self.f_start, f_step=self.f_step,
                          max_rounds=self.max_rounds, code=self.code)

    def run(self, channel: Channel, frame_ids: Sequence[int], bob_bits: np.ndarray, qber: float) -> ReconcileResult:
        """Reconcile Bob's frames (uint8 (N, n_key)) with Alice's over ``channel``."""
        y = as_bits(bob_bits, "bob_bits", ndim=(2,))
        raw_ids = np.asarray(frame_ids)
        if raw_ids.size and not np.issubdtype(raw_ids.dtype, np.integer):
            raise InputError(f"frame_ids: dtype {raw_ids.dtype}, expected integers (one id per frame, as Alice "
                             "holds them); a float id would be truncated to another frame's id")
        ids = raw_ids.astype(np.int64)
        if ids.shape != (y.shape[0],):
            raise InputError(f"frame_ids: {ids.shape[0]} ids for {y.shape[0]} frames")
        if not isinstance(qber, numbers.Real) or not (0.0 < float(qber) < 0.5):
            raise InputError(f"qber={qber!r}: must be a real number in (0, 0.5); "
                             "pass the estimated QBER as a float, e.g. 0.03")
        qber = float(qber)
        nf, n_key = y.shape
        plan = self.plan(n_key, qber)
        code = load_code(plan.code)
        # decoder state is 4 (E + 2n) bytes per frame: bound it per batch
        chunk = max(1, self.max_state_bytes // (4 * (code.n_edges + 2 * code.n)))
        if nf <= chunk:
            return self._fall_back(channel, ids, y, qber, self._run_batch(channel, ids, y, qber, plan, code))
        parts = [self._run_batch(channel, ids[i:i + chunk], y[i:i + chunk], qber, plan, code)
                 for i in range(0, nf, chunk)]
        extra = dict(parts[0].extra)
        for k, v in extra.items():
            if isinstance(v, np.ndarray):
                extra[k] = np.concatenate([p.extra[k] for p in parts])
        res = ReconcileResult(
            bits=np.concatenate([p.bits for p in parts]),
            leaked_bits=np.concatenate([p.leaked_bits for p in parts]),
            success=np.concatenate([p.success for p in parts]),
            errors_corrected=np.concatenate([p.errors_corrected for p in parts]),
            round_trips=sum(p.round_trips for p in parts), bytes_sent=sum(p.bytes_sent for p in parts),
            method="ldpc", preset=plan.code, extra=extra)
        return self._fall_back(channel, ids, y, qber, res)

    def _apply_reveal(self, L: np.ndarray, R: np.ndarray, llr0: np.ndarray, known: np.ndarray,
                      frames: np.ndarray, columns: np.ndarray, bits: np.ndarray) -> None:
        """Give the revealed columns of the frames the LLR of Alice's revealed bits (warm: add the
        change to the posteriors; cold: restart those frames from their channel LLRs)."""
        new = np.where(bits == 1, -K.LLR_KNOWN, K.LLR_KNOWN).astype(np.float32)
        known[frames, columns] = True
        if self.warm:
            L[frames, columns] += new - llr0[frames, columns]
            llr0[frames, columns] = new
        else:
            llr0[frames, columns] = new
            u = np.unique(frames)
            L[u] = llr0[u]
            R[u] = 0.0

    def _fall_back(self, channel: Channel, ids: np.ndarray, y: np.ndarray, qber: float,
                   res: ReconcileResult) -> ReconcileResult:
        """Hand the frames LDPC did not reconcile to Cascade (``fallback="cascade"``)."""
        failed = np.flatnonzero(~res.success)
        extra = dict(res.extra)
        extra["fallback"] = np.zeros(res.success.shape[0], dtype=bool)
        extra["cascade_leaked"] = np.zeros(res.success.shape[0], dtype=np.int64)
        if self.fallback != "cascade" or failed.shape[0] == 0:
            return ReconcileResult(bits=res.bits, leaked_bits=res.leaked_bits, success=res.success,
                                   errors_corrected=res.errors_corrected, round_trips=res.round_trips,
                                   bytes_sent=res.bytes_sent, method=res.method, preset=res.preset, extra=extra)
        rt0, by0 = channel.stats.snapshot()
        # Cascade's permutation seed is public: from the simulation seed, else from secrets
        cseed = None if self.seed is None else int(np.random.default_rng([int(self.seed), 0xCA5CADE]).integers(2**63))
        # Bob's original bits (the decoder's failed guess may hold more errors than his input)
        cres = CascadeBob(self.cascade, seed=cseed).run(channel, ids[failed], y[failed], qber)
        rt1, by1 = channel.stats.snapshot()
        bits = res.bits.copy()
        bits[failed] = cres.bits
        leaked = res.leaked_bits.copy()
        leaked[failed] += cres.leaked_bits
        success = res.success.copy()
        success[failed] = cres.success
        corrected = res.errors_corrected.copy()
        corrected[failed] = np.count_nonzero(cres.bits != y[failed], axis=1)
        extra["fallback"][failed] = True
        extra["cascade_leaked"][failed] = cres.leaked_bits
        return ReconcileResult(bits=bits, leaked_bits=leaked, success=success, errors_corrected=corrected,
                               round_trips=res.round_trips + (rt1 - rt0), bytes_sent=res.bytes_sent + (by1 - by0),
                               method=res.method, preset=res.preset, extra=extra)

    def _run_batch(self, channel: Channel, ids: np.ndarray, y: np.ndarray, qber: float, plan: FramePlan,
                   code: LdpcCode) -> ReconcileResult:
        nf, n_key = y.shape
        if self.seed is None:
            seed = secrets.token_bytes(16)
        else:
            seed = np.random.default_rng([int(self.seed), 0xB0B]).bytes(16)
        lay = frame_layout(code, n_key, plan.n_punct, seed)
        reveal = self.reveal if self.reveal is not None else DEFAULT_REVEAL
        max_iter, patience = default_iterations(plan.n)
        max_iter = self.max_iter if self.max_iter is not None else max_iter
        patience = self.patience if self.patience is not None else patience
        max_iter_blind = self.max_iter_blind if self.max_iter_blind is not None else max_iter
        rt0, by0 = channel.stats.snapshot()

        reply = channel.request("ldpc.syndromes", {
            "frame_ids": ids, "code": plan.code, "n_key": n_key, "n_punct": plan.n_punct, "layout_seed": seed,
        })
        syn = np.ascontiguousarray(_reply_bits(reply, "ldpc.syndromes", "syndromes", nf, code.m))

        # The shortened positions are public: their values are folded into the syndrome and the
        # decoder runs on the columns that remain (the exact equivalent of infinite LLRs on them;
        # fewer edges to update). Decoder coordinates: column c of the sub-graph is code position
        # cols[c]; inv maps a code position to its column (-1 if shortened).
        row_ptr, col_idx, cols, inv, sflip = shortened_subgraph(code, lay.short_pos, lay.short_vals)
        syn ^= sflip[None, :]
        ns = cols.shape[0]
        # Bob's view of each codeword: mask (2 punctured), known values (none yet: revealed later).
        mask = np.zeros(ns, dtype=np.uint8)
        mask[inv[lay.punct_pos]] = 2
        vals = np.zeros(ns, dtype=np.uint8)
        word = np.zeros((nf, ns), dtype=np.uint8)
        key_col = inv[lay.key_pos]
        word[:, key_col] = y
        known = np.zeros((nf, ns), dtype=bool)  # columns whose value Bob knows (revealed)

        # Decoder state per frame (warm-started across blind rounds).
        llr0 = np.empty((nf, ns), dtype=np.float32)
        for f in range(nf):
            K.bsc_llr(word[f], qber, mask, vals, llr0[f])
        L = llr0.copy()
        R = np.zeros((nf, col_idx.shape[0]), dtype=np.float32)
        iters = np.zeros(nf, dtype=np.int64)
        rounds = np.zeros(nf, dtype=np.int64)
        revealed = np.zeros(nf, dtype=np.int64)
        revealed_punct = np.zeros(nf, dtype=np.int64)  # of which punctured positions
        adaptive = np.zeros(nf, dtype=bool)  # a position was chosen from Bob's decoder state (leak_bits)
        choice_bits = np.zeros(nf)  # log2 of the choices behind Bob's requests for the frame, summed (leak_bits)
        why: dict[int, float] = {}  # frame -> log2 of the choices behind its entry in `trapped`
        trap_choices = _log2_subsets(syn.shape[1], self.trap_checks)  # sets of 1..trap_checks checks
        # with trap reveals on, whether a failed frame is trapped is Bob's choice too: one bit per round
        flag = 1.0 if self.trap_checks > 0 else 0.0
        status = np.full(nf, -1, dtype=np.int64)
        todo = np.arange(nf, dtype=np.int64)
        trapped: dict[int, np.ndarray] = {}  # frame -> sub-graph columns to reveal (variables of its few unsatisfied checks)
        cursor = 0
        for rnd in range(plan.max_rounds + 1):
            if rnd > 0:
                blind = np.array([f for f in todo.tolist() if f not in trapped], dtype=np.int64)
                if trapped:
                    tf = np.array(sorted(trapped), dtype=np.int64)
                    tcols = [trapped[f] for f in tf.tolist()]
                    counts = np.array([c.shape[0] for c in tcols], dtype=np.int64)
                    flat = np.concatenate(tcols)
                    rep = channel.request("ldpc.reveal_at", {"frame_ids": ids[tf], "counts": counts,
                                                             "positions": cols[flat].astype(np.int32)})
                    got = _reply_bits(rep, "ldpc.reveal_at", "values", 1, flat.shape[0])[0]
                    self._apply_reveal(L, R, llr0, known, np.repeat(tf, counts), flat, got)
                    revealed[tf] += counts
                    revealed_punct[tf] += np.add.reduceat((mask[flat] == 2).astype(np.int64), np.cumsum(counts) - counts)
                    adaptive[tf] = True
                    choice_bits[tf] += [why[f] + flag for f in tf.tolist()]
                    rounds[tf] = rnd
                    trapped.clear()
                    why.clear()
                # "hybrid": the public order only up to the last punctured position
                end = plan.n_punct if reveal == "hybrid" else lay.reveal_order.shape[0]
                stop = min(cursor + plan.step, end)
                if blind.shape[0] and stop > cursor:
                    rep = channel.request("ldpc.reveal", {"frame_ids": ids[blind], "start": cursor, "stop": stop})
                    got = _reply_bits(rep, "ldpc.reveal", "values", blind.shape[0], stop - cursor)
                    pos = inv[lay.reveal_order[cursor:stop]]  # never shortened: punctured or key positions
                    self._apply_reveal(L, R, llr0, known, np.repeat(blind, pos.shape[0]),
                                       np.tile(pos, blind.shape[0]), got.ravel())
                    revealed[blind] += stop - cursor
                    revealed_punct[blind] += int(np.count_nonzero(mask[pos] == 2))
                    choice_bits[blind] += flag
                    rounds[blind] = rnd
                    cursor = stop
                elif blind.shape[0]:
                    todo = todo[~np.isin(todo, blind)]  # nothing left to reveal to these frames
                    if todo.shape[0] == 0:
                        break
            sub_it = np.empty(todo.shape[0], dtype=np.int64)
            budget = max_iter if rnd == 0 else max_iter_blind
            limits = np.array([budget, patience if rnd < plan.max_rounds else 0, numba.get_num_threads()],
                              dtype=np.int64)
            K.decode_batch(row_ptr, col_idx, syn, limits, L, R, todo, sub_it, K.PHI_LUT)
            iters[todo] += np.where(sub_it >= 0, sub_it, -sub_it - 1)
            status[todo] = sub_it
            todo = todo[sub_it < 0]
            if todo.shape[0] == 0:
                break
            if self.trap_checks > 0 and rnd < plan.max_rounds:
                trapped = _trapped_columns(row_ptr, col_idx, syn, L, todo, known, self.trap_checks)
                # the positions follow from the set of unsatisfied checks (and the public known columns)
                why = dict.fromkeys(trapped, trap_choices)
            # "hybrid": Bob's least reliable positions once every punctured one is known (then only key
            # positions are left, and the frame's leak is m + revealed key bits whoever chose them)
            if rnd < plan.max_rounds and (reveal == "reliability"
                                          or (reveal == "hybrid" and cursor >= plan.n_punct)):
                for f in todo.tolist():
                    if f not in trapped:
                        a = np.abs(L[f])
                        a[known[f]] = np.inf
                        c = np.argsort(a, kind="stable")[:plan.step]
                        c = c[np.isfinite(a[c])]
                        if c.shape[0]:
                            trapped[f] = np.sort(c).astype(np.int64)
                            why[f] = _log2_binom(ns - int(known[f].sum()), c.shape[0])

        # a syndrome match whose decisions contradict a known value is not a success (with high-degree
        # variables the checks can outvote a known position's LLR; verification would catch it anyway)
        success = (status >= 0) & ~np.any(known & ((L < 0) != (llr0 < 0)), axis=1)
        bits = y.copy()
        bits[success] = (L[success][:, key_col] < 0).astype(np.uint8)
        leaked = leak_bits(plan, revealed, revealed_punct, choice_bits)
        corrected = np.count_nonzero(bits != y, axis=1).astype(np.int64)
        rt1, by1 = channel.stats.snapshot()
        extra = {
            "code": plan.code, "n": plan.n, "m": plan.m, "n_punct": plan.n_punct, "n_short": plan.n_short,
            "step": plan.step, "max_rounds": plan.max_rounds, "rounds": rounds, "iterations": iters,
            "revealed": revealed, "revealed_punctured": revealed_punct, "adaptive_reveals": adaptive,
            "choice_bits": choice_bits,
            "f_start": plan.efficiency_start(qber), "qber_used": qber,
            "max_iter": max_iter, "edges": int(col_idx.shape[0]), "edges_code": code.n_edges,
        }
        return ReconcileResult(bits=bits, leaked_bits=leaked, success=success, errors_corrected=corrected,
                               round_trips=rt1 - rt0, bytes_sent=by1 - by0, method="ldpc", preset=plan.code,
                               extra=extra)
