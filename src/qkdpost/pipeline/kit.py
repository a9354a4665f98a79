"""qkdpost's own stages behind the pipeline's :class:`~.stages.StageKit`.

- Reconciliation: :mod:`qkdpost.reconcile.cascade` (any block length) or
  :mod:`qkdpost.reconcile.ldpc` (a block longer than the best LDPC frame at
  the block's QBER is cut into near-equal sub-frames, each reconciled on its own; the block's
  leakage is the sum and it succeeds only if every sub-frame does).
- Verification: :mod:`qkdpost.verify` (keyed universal hash, fresh key per block).
- Secure length: :mod:`qkdpost.finitekey` (bound chosen by config / topology).
- Privacy amplification: :mod:`qkdpost.amplify` (Toeplitz, seed from Alice).

Block ids (strings) map to the stages' integer frame ids by the block's index
in the run (``"<run>-0000042"`` → 42).
"""

from __future__ import annotations

import math
import secrets
import threading
from typing import Any, Callable, Mapping

import numpy as np

from ..channel import Channel
from ..config import Config
from ..errors import InputError, ProtocolError
from ..reconcile.result import ReconcileResult
from .stages import Handler, StageKit

__all__ = ["QkdpostKit", "frame_id"]

_SUB = 4096  # sub-frame ids of LDPC-split blocks: block_index * _SUB + j


def frame_id(block_id: str) -> int:
    """The stages' integer frame id of a block (its index in the run)."""
    try:
        return int(block_id.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        raise InputError(f"block_id={block_id!r}: expected '<run>-<index>'") from None


def ldpc_split(n: int, qber: float, max_code: int = 0) -> list[int]:
    """Sub-frame lengths for an LDPC-reconciled block of ``n`` bits at this QBER.

    The longest code (of at most ``max_code`` bits, if given) whose best
    frame at this QBER (:func:`..reconcile.ldpc.adapt.frame_length`: the
    longest that needs no puncturing) cuts the block into near-equal frames
    no longer than that and no shorter than ``MIN_FILL`` of the code is
    used; a frame a little shorter than the best is punctured a little
    (:func:`..reconcile.ldpc.adapt.plan_frame`). Without such a code (a
    QBER outside every code's range) frames of about 0.9 of the longest
    code that fits, and the plan then says what is wrong.
    """
    from ..reconcile.ldpc import available_codes
    from ..reconcile.ldpc.adapt import MIN_FILL, frame_length

    sizes = sorted({int(c["n"]) for c in available_codes()}, reverse=True)
    if max_code:
        if not any(size <= max_code for size in sizes):
            raise InputError(f"ldpc_code_bits={max_code}: no shipped LDPC code is that short "
                             f"(lengths {sorted(sizes)}); use 0 or one of them")
        sizes = [size for size in sizes if size <= max_code]

    def cut(k: int, size: int) -> list[int] | None:
        base, extra = divmod(n, k)
        if 1 <= k <= _SUB and base >= math.ceil(MIN_FILL * size) and base + (1 if extra else 0) <= size:
            return [base + 1] * extra + [base] * (k - extra)
        return None

    for size in sizes:
        try:
            best = frame_length(qber, size)
        except InputError:
            continue
        parts = cut(math.ceil(n / best), size)
        if parts:
            return parts
    for size in sizes:
        k_min, k_max = math.ceil(n / size), n // math.ceil(MIN_FILL * size)
        if k_min <= k_max:
            parts = cut(min(max(round(n / (0.9 * size)), k_min), k_max), size)
            if parts:
                return parts
    raise InputError(f"block of {n} bits cannot be cut into frames of any shipped LDPC code; "
                     "use ec_method='cascade' or another block_bits")


class QkdpostKit(StageKit):
    """The stages shipped with qkdpost.

    One kit serves one session. Cascade's permutations are public and depend
    only on (seed, block length), so the kit draws one permutation seed per
    session (OS CSPRNG) and both parties' permutation caches are reused from
    block to block instead of being rebuilt for every batch.

    Parameters
    ----------
    cascade_seed : int, optional
        A fixed public permutation seed instead of one drawn per session
        (e.g. a benchmark of the steady state of a long session, whose
        permutations are built once). The error pattern, not the
        permutations, must be fresh; reusing them is safe (docs/cascade.md).
    """

    def __init__(self, cascade_seed: int | None = None) -> None:
        if cascade_seed is not None and not (isinstance(cascade_seed, int) and 0 <= cascade_seed < 2**64):
            raise InputError(f"cascade_seed={cascade_seed!r}: must be an int in 0..2^64-1, or None")
        self._cascade_seed: int | None = cascade_seed
        self._seed_lock = threading.Lock()  # back-half lanes share the kit: one seed, drawn once

    # -- reconciliation -------------------------------------------------------------
    def reconcile_alice(self, method: str, frames: Mapping[str, np.ndarray], cfg: Config, *,
                        qber: float) -> dict[str, Handler]:
        if method == "cascade":
            from ..reconcile.cascade import CascadeAlice

            return CascadeAlice({frame_id(b): bits for b, bits in frames.items()}).handlers()
        if method == "ldpc":
            from ..reconcile.ldpc import LdpcAlice

            sub: dict[int, np.ndarray] = {}
            for b, bits in frames.items():
                off = 0
                for j, ln in enumerate(ldpc_split(bits.size, qber, cfg.reconcile.ldpc_code_bits)):
                    sub[frame_id(b) * _SUB + j] = bits[off : off + ln]
                    off += ln
            seed = None if cfg.pipeline.seed < 0 else cfg.pipeline.seed
            return LdpcAlice(sub, sim_seed=seed).handlers()
        raise InputError(f"ec_method={method!r}: choose 'cascade' or 'ldpc'")

    def reconcile_bob(self, channel: Channel, method: str, ids: list[str], bits: np.ndarray, qber: float,
                      cfg: Config, *, seed: int | None) -> ReconcileResult:
        fids = np.array([frame_id(b) for b in ids], dtype=np.int64)
        if method == "cascade":
            from ..reconcile.cascade import CascadeBob, CascadeConfig

            bob = CascadeBob(CascadeConfig(preset=cfg.reconcile.cascade_preset, passes=cfg.reconcile.cascade_passes))
            if seed is None:
                with self._seed_lock:
                    if self._cascade_seed is None:
                        self._cascade_seed = secrets.randbits(64)  # public; OS CSPRNG
                    seed = self._cascade_seed
            return bob.run(channel, fids, bits, qber, seed=seed)
        if method == "ldpc":
            return self._ldpc_bob(channel, fids, bits, qber, seed, cfg.reconcile.ldpc_code_bits)
        raise InputError(f"ec_method={method!r}: choose 'cascade' or 'ldpc'")

    def _ldpc_bob(self, channel: Channel, fids: np.ndarray, bits: np.ndarray, qber: float,
                  seed: int | None, max_code: int = 0) -> ReconcileResult:
        from ..reconcile.ldpc import LdpcBob

        N, n = bits.shape
        lens = ldpc_split(n, qber, max_code)
        offs = np.concatenate([[0], np.cumsum(lens)])
        out = bits.copy()
        leak = np.zeros(N, np.int64)
        ok = np.ones(N, bool)
        fixed = np.zeros(N, np.int64)
        rt0, by0 = channel.stats.snapshot()
        extra: dict[str, Any] = {"sub_frames": len(lens), "rounds": [], "iterations": []}
        for ln in sorted(set(lens)):
            js = [j for j, x in enumerate(lens) if x == ln]
            sub_ids = np.array([f * _SUB + j for f in fids for j in js], dtype=np.int64)
            sub = np.stack([bits[i, offs[j] : offs[j] + ln] for i in range(N) for j in js])
            res = LdpcBob(seed=seed).run(channel, sub_ids, sub, qber)
            corrected = np.asarray(res.bits).reshape(len(sub_ids), ln)
            for r, (i, j) in enumerate((i, j) for i in range(N) for j in js):
                out[i, offs[j] : offs[j] + ln] = corrected[r]
                leak[i] += int(res.leaked_bits[r])
                ok[i] &= bool(res.success[r])
                fixed[i] += int(res.errors_corrected[r])
            for key in ("rounds", "iterations"):
                if key in res.extra:
                    extra[key].append(np.asarray(res.extra[key]).tolist())
        rt1, by1 = channel.stats.snapshot()
        return ReconcileResult(bits=out, leaked_bits=leak, success=ok, errors_corrected=fixed,
                               round_trips=rt1 - rt0, bytes_sent=by1 - by0, method="ldpc", extra=extra)

    # -- verification -------------------------------------------------------------------
    def verify_alice(self, frames: Mapping[str, np.ndarray], cfg: Config) -> dict[str, Handler]:
        from ..verify import VerifyAlice

        return VerifyAlice({frame_id(b): bits for b, bits in frames.items()}).handlers()

    def verify_bob(self, channel: Channel, ids: list[str], bits: np.ndarray,
                   cfg: Config) -> tuple[np.ndarray, int, float]:
        from ..verify import VerifyBob

        res = VerifyBob(eps_cor=cfg.verify.eps_cor).run(channel, [frame_id(b) for b in ids], bits)
        return np.asarray(res.passed, dtype=bool), int(res.tag_bits), float(res.eps_cor)

    # -- finite-key length ---------------------------------------------------------------
    def secure_length(self, stats: Mapping[str, Any], n: int, leak_ec: int, leak_verify: int, eps_cor: float,
                      cfg: Config) -> tuple[int, str, dict[str, Any]]:
        from .. import finitekey

        return _secure_length(finitekey, stats, n, leak_ec, leak_verify, eps_cor, cfg)

    # -- privacy amplification ------------------------------------------------------------
    def amplify_alice(self, frames: Mapping[str, np.ndarray], lengths: Mapping[str, int],
                      cfg: Config) -> tuple[dict[str, Handler], Callable[[str], np.ndarray]]:
        from ..amplify import AmplifyAlice

        alice = AmplifyAlice({frame_id(b): bits for b, bits in frames.items()}, method=cfg.amplify.pa_method,
                             threads=cfg.amplify.pa_threads)
        agreed = {frame_id(b): int(m) for b, m in lengths.items()}
        on_seeds = alice.handlers()["amplify.seeds"]

        def seeds(body: dict[str, Any]) -> dict[str, Any]:
            # Alice hashes to the lengths agreed at pipe.final, never to other
            # ones Bob names later (a key of another length on one side).
            try:
                asked = dict(zip(np.asarray(body.get("frame_ids"), dtype=np.int64).tolist(),
                                 np.asarray(body.get("lengths"), dtype=np.int64).tolist()))
            except (TypeError, ValueError):
                raise ProtocolError("amplify.seeds: frame_ids and lengths must be integer arrays") from None
            if asked != agreed:
                bad = sorted(set(asked) ^ set(agreed)) or sorted(f for f in asked if asked[f] != agreed[f])
                f = bad[0]
                raise ProtocolError(f"amplify.seeds: frame {f} asked with length {asked.get(f)}, but pipe.final "
                                    f"agreed {agreed.get(f)} ({len(bad)} frame(s) differ); Bob is out of step")
            return on_seeds(body)

        return {"amplify.seeds": seeds}, lambda b: alice.keys[frame_id(b)]

    def amplify_bob(self, channel: Channel, ids: list[str], bits: np.ndarray, lengths: np.ndarray,
                    cfg: Config, *, seed: int | None) -> list[np.ndarray]:
        from ..amplify import AmplifyBob

        fids = [frame_id(b) for b in ids]
        keys = AmplifyBob(method=cfg.amplify.pa_method, threads=cfg.amplify.pa_threads).run(
            channel, fids, bits, [int(m) for m in lengths])
        return [keys[f] for f in fids]


def _secure_length(finitekey: Any, stats: Mapping[str, Any], n: int, leak_ec: int, leak_verify: int,
                   eps_cor: float, cfg: Config) -> tuple[int, str, dict[str, Any]]:
    """Evaluate the configured finite-key bound on a block's public counts.

    BBM92 blocks carry ``n_test`` and ``test_errors``: Tomamichel et al. 2012
    (Nat. Commun. 3, 634, Eq. 2). Decoy blocks also carry per-intensity
    counts (``n_key_c*`` exact per block, ``n_test_c*``/``m_test_c*``
    shared from the sifting windows, errors rounded up): Lim et al. 2014
    (PRA 89, 022307, Eqs. 1-5) with the three intensities of the config, or,
    with two intensities, Rusca et al. 2018 (APL 112, 171104, Eqs. A16-A25),
    which also needs the key-basis errors per intensity ``m_key_c0``,
    ``m_key_c1``: Bob counts them after error correction (the bits he
    flipped, by intensity class), so they are exact once verification passed.
    All get the actual EC leakage and the verification tag length; decoy
    bounds are evaluated monotone in every error count (docs/finitekey.md).
    """
    decoy = "n_key_c0" in stats
    bound = cfg.finitekey.bound
    mu, p = cfg.finitekey.floats("decoy_mu"), cfg.finitekey.floats("decoy_p_mu")
    if bound == "auto":
        bound = ("rusca2018" if len(mu) == 2 else "lim2014") if decoy else "tomamichel2012"
    eps_sec = cfg.finitekey.eps_sec
    if decoy and bound in ("lim2014", "rusca2018"):
        k_int = 3 if bound == "lim2014" else 2
        if len(mu) != k_int:
            raise InputError(
                f"decoy_mu={cfg.finitekey.decoy_mu!r}: {bound} needs {k_int} intensities, signal first, e.g. "
                + ("--decoy-mu 0.5,0.1,0.0002 --decoy-p-mu 0.7,0.2,0.1" if k_int == 3
                   else "--decoy-mu 0.5,0.15 --decoy-p-mu 0.7,0.3"))
        extra = [c for c in range(k_int, 4) if int(stats.get(f"n_key_c{c}", 0)) or int(stats.get(f"n_test_c{c}", 0))]
        if extra:
            raise InputError(f"block has detections in intensity class {extra[0]}, but decoy_mu="
                             f"{cfg.finitekey.decoy_mu!r} names {k_int} intensities; give every intensity of "
                             "Alice's log")
        nk = [int(stats.get(f"n_key_c{c}", 0)) for c in range(k_int)]
        nt = [int(stats.get(f"n_test_c{c}", 0)) for c in range(k_int)]
        mt = [min(int(stats.get(f"m_test_c{c}", 0)), nt[c]) for c in range(k_int)]
        if sum(nk) != n:
            raise InputError(f"block of {n} bits has key counts per intensity summing to {sum(nk)}")
        if bound == "lim2014":
            res = finitekey.lim2014(nk, nt, mt, mu=mu, p_mu=p, leak_ec=float(leak_ec), eps_sec=eps_sec,
                                    eps_cor=float(eps_cor), tag_bits=int(leak_verify))
        else:
            if not all(f"m_key_c{c}" in stats for c in range(2)):
                raise InputError("bound='rusca2018' needs the key-basis errors per intensity (block stats "
                                 "m_key_c0, m_key_c1, counted by Bob after error correction from the block's "
                                 "intensity labels); this block has none: sift it with Alice's decoy log")
            mk = [min(int(stats[f"m_key_c{c}"]), nk[c]) for c in range(2)]
            res = finitekey.rusca2018(nk, mk, nt, mt, mu=mu, p_mu=p, leak_ec=float(leak_ec), eps_sec=eps_sec,
                                      eps_cor=float(eps_cor), tag_bits=int(leak_verify))
    elif not decoy and bound == "tomamichel2012":
        k = int(stats.get("n_test", 0))
        e = int(stats.get("test_errors", 0))
        if k < 1:
            return 0, bound, {"reason": "no test-basis bits in this block: the phase error cannot be bounded"}
        res = finitekey.tomamichel2012(n, k, e, leak_ec=float(leak_ec), eps_sec=eps_sec,
                                       eps_cor=float(eps_cor), tag_bits=int(leak_verify),
                                       qber_tol=cfg.finitekey.qber_tol or None)
    else:
        kind = "decoy BB84 (per-intensity counts)" if decoy else "BBM92 (no intensities)"
        raise InputError(f"bound={bound!r} does not apply to {kind} blocks; use bound='auto', 'lim2014' "
                         "(two decoys) or 'rusca2018' (one decoy) for decoy BB84, 'tomamichel2012' for BBM92")
    details = {"reason": res.reason, "value": res.value, **{k_: v for k_, v in res.bounds.items()}}
    if res.bound == "rusca2018":
        details["m_key"] = [int(v) for v in res.params["m_key"]]  # Bob's count, not in the shared stats
    return int(res.length), res.bound, details
