"""LDPC reconciliation: kernels against dense oracles, protocol, leakage, bad inputs."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkdpost.bits import binary_entropy
from qkdpost.channel import Channel, LoopbackChannel, Responder
from qkdpost.errors import FileFormatError, InputError, ProtocolError
from qkdpost.reconcile import reconcile
from qkdpost.reconcile.ldpc import (
    LdpcAlice,
    LdpcBob,
    available_codes,
    load_code,
    plan_frame,
    read_alist,
    reconcile_ldpc,
)
from qkdpost.reconcile.ldpc import _kernels as K
from qkdpost.reconcile.ldpc.codes import (
    DISTRIBUTIONS,
    alist_text,
    build_peg_code,
    code_from_edges,
    degree_counts,
    has_four_cycle,
)

from oracles import ldpc as oracle


def tiny_regular(n: int, dv: int, dc: int, seed: int = 7):
    """A small regular PEG code (n*dv == m*dc)."""
    m = n * dv // dc
    var_deg = np.full(n, dv, dtype=np.int32)
    chk = np.full(m, dc, dtype=np.int32)
    vc = np.full(n * dv, -1, dtype=np.int32)
    four = K.peg_build(var_deg, chk, np.int64(10_000), np.uint64(seed), vc)
    assert four >= 0
    return code_from_edges("tiny", n, m, vc, np.repeat(np.arange(n), dv)), int(four)


def bsc(rng, x, q):
    return x ^ (rng.random(x.shape) < q).astype(np.uint8)


def llr_for(y, q, mask=None, vals=None):
    n = y.shape[-1]
    mask = np.zeros(n, np.uint8) if mask is None else mask
    vals = np.zeros(n, np.uint8) if vals is None else vals
    out = np.empty(n, np.float32)
    K.bsc_llr(y, q, mask, vals, out)
    return out


def decode_one(code, llr, syn, max_iter):
    """Cold-start decode of one frame: (iterations or negative, hard decision)."""
    it, dec = decode_many(code, np.asarray(llr)[None], np.asarray(syn)[None], max_iter)
    return int(it[0]), dec[0]


def decode_many(code, llr, syn, max_iter, patience=0, which=None, state=None, workers=1):
    """Decode frames with the shipped kernel; returns (iterations, hard decisions) or, with
    ``state=True``, also (L, R)."""
    L = np.array(llr, dtype=np.float32)
    R = np.zeros((L.shape[0], code.n_edges), np.float32)
    which = np.arange(L.shape[0], dtype=np.int64) if which is None else np.asarray(which, np.int64)
    it = np.empty(which.shape[0], np.int64)
    K.decode_batch(code.row_ptr, code.col_idx, np.ascontiguousarray(syn, dtype=np.uint8),
                   np.array([max_iter, patience, workers]), L, R, which, it, K.PHI_LUT)
    if state:
        return it, L, R
    return it, (L < 0).astype(np.uint8)


def scalar_decode(code, llr, syn, max_iter, patience=0):
    """The one-frame scalar reference decoder (oracle): (iterations, L, R)."""
    L = np.array(llr, dtype=np.float32)
    R = np.zeros(code.n_edges, np.float32)
    it = oracle.scalar_layered_decode(code.row_ptr, code.col_idx, np.asarray(syn, np.uint8), max_iter, patience,
                                      L, R, K.PHI_LUT)
    return int(it), L, R


# --------------------------------------------------------------------- codes
def test_degree_counts_sum_and_match_distribution():
    for name, d in DISTRIBUTIONS.items():
        var_deg, chk_deg = degree_counts(d["lam"], d["rho"], 16384)
        assert var_deg.shape == (16384,)
        assert var_deg.sum() == chk_deg.sum()
        assert chk_deg.max() - chk_deg.min() <= 1
        # design rate within 1 % of the published one
        assert abs((1 - chk_deg.shape[0] / 16384) - d["rate"]) < 0.01, name
        # edge fractions close to lambda
        for deg, lam in d["lam"].items():
            frac = (var_deg == deg).sum() * deg / var_deg.sum()
            assert abs(frac - lam) < 2e-3, (name, deg)


def test_peg_small_code_has_no_four_cycle_and_right_degrees():
    code, four = build_peg_code("mm2012-r0.50", 512, seed=3, max_reach=10_000)
    h = code.dense()
    var_deg, chk_deg = degree_counts(DISTRIBUTIONS["mm2012-r0.50"]["lam"], DISTRIBUTIONS["mm2012-r0.50"]["rho"], 512)
    assert np.array_equal(h.sum(axis=0), var_deg)
    assert (h.sum(axis=1) <= chk_deg + K.PEG_SLACK).all()
    # at n = 512 the degree-25 variables cannot avoid 4-cycles; the count is exact
    assert four > 0 and oracle.four_cycles(h) and has_four_cycle(code)
    reg, four = tiny_regular(512, 3, 6)
    assert four == 0
    assert not oracle.four_cycles(reg.dense())
    assert not has_four_cycle(reg)
    assert (reg.dense().sum(axis=0) == 3).all() and (reg.dense().sum(axis=1) <= 6 + K.PEG_SLACK).all()


def test_peg_is_deterministic_and_seed_dependent():
    a, _ = build_peg_code("mm2012-r0.70", 1024, seed=11, max_reach=500)
    b, _ = build_peg_code("mm2012-r0.70", 1024, seed=11, max_reach=500)
    c, _ = build_peg_code("mm2012-r0.70", 1024, seed=12, max_reach=500)
    assert alist_text(a) == alist_text(b)
    assert alist_text(a) != alist_text(c)


def test_untainted_puncturing_is_untainted():
    code, _ = build_peg_code("mm2012-r0.60", 1024, seed=5, max_reach=10_000)
    assert code.punct_order.shape[0] > 50
    assert oracle.untainted(code.dense(), code.punct_order)
    assert len(set(code.punct_order.tolist())) == code.punct_order.shape[0]


def test_alist_round_trip(tmp_path):
    code, _ = build_peg_code("mm2012-r0.80", 600, seed=9, max_reach=10_000)
    from qkdpost.reconcile.ldpc import write_alist

    for name in ("c.alist", "c.alist.gz"):
        digest = write_alist(code, tmp_path / name)
        back = read_alist(tmp_path / name, sha256=digest)
        assert np.array_equal(back.dense(), code.dense())
        assert np.array_equal(back.punct_order, code.punct_order)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-10**17, 10**17), max_size=30), st.lists(st.sampled_from([" ", "\n", "\t", "  ", "\r\n"]),
                                                                   min_size=31, max_size=31))
def test_parse_ints_matches_split_oracle(values, seps):
    """The alist tokenizer kernel gives what int(token) gives for every whitespace-separated token."""
    text = seps[0] + "".join(f"{v}{sep}" for v, sep in zip(values, seps[1:]))
    raw = np.frombuffer(text.encode(), dtype=np.uint8)
    out = np.empty(raw.shape[0] // 2 + 1, np.int64)
    cnt = K.parse_ints(raw, out)
    assert cnt == len(values) and out[:cnt].tolist() == [int(t) for t in text.split()]


@pytest.mark.parametrize("text", ["1 2 x", "1 - 2", "1 2.5", "3 4-", "1" * 19, "1,2", "0x10"])
def test_parse_ints_rejects_non_integers(text):
    raw = np.frombuffer(text.encode(), dtype=np.uint8)
    assert K.parse_ints(raw, np.empty(raw.shape[0] // 2 + 1, np.int64)) == -1


def _corrupt_variants(text: str):
    lines = text.splitlines()
    yield "truncated", "\n".join(lines[:-3])
    yield "bad header", "5 9\n" + "\n".join(lines[1:])
    toks = text.split("\n")
    toks[4] = toks[4].replace(toks[4].split()[0], str(10**6), 1)
    yield "index out of range", "\n".join(toks)
    yield "not numbers", text.replace("1", "x", 1)
    # swap two entries in one row list only: rows and columns disagree
    rows = lines[4 + int(lines[0].split()[0]):]
    r0 = rows[0].split()
    r0[0] = str(int(r0[0]) % int(lines[0].split()[0]) + 1) if r0[0] != "0" else r0[0]
    yield "lists disagree", "\n".join(lines[:4 + int(lines[0].split()[0])] + [" ".join(r0)] + rows[1:])


def test_corrupt_alist_raises_file_format_error(tmp_path):
    code, _ = build_peg_code("mm2012-r0.80", 300, seed=2, max_reach=10_000)
    text = alist_text(code)
    for label, bad in _corrupt_variants(text):
        p = tmp_path / "bad.alist"
        p.write_text(bad)
        with pytest.raises(FileFormatError):
            read_alist(p)
    good = tmp_path / "good.alist.gz"
    good.write_bytes(gzip.compress(text.encode())[:-20])
    with pytest.raises(FileFormatError, match="gzip"):
        read_alist(good)
    with pytest.raises(FileFormatError, match="SHA-256"):
        read_alist(text.encode(), sha256="0" * 64)
    with pytest.raises(FileFormatError):
        read_alist(tmp_path / "missing.alist")


# ----------------------------------------------------------------- shipped
def test_manifest_lists_three_lengths_and_files_exist():
    codes = available_codes()
    lengths = {c["n"] for c in codes}
    assert {2**14, 2**16}.issubset(lengths)
    for c in codes:
        assert c["four_cycle_edges"] == 0
        assert c["design_rate"] >= 0.5


def test_shipped_small_codes_load_and_have_girth_6():
    for c in available_codes():
        if c["n"] != 2**14:
            continue
        code = load_code(c["name"])
        assert code.n == c["n"] and code.m == c["m"] and code.n_edges == c["edges"]
        assert not has_four_cycle(code)
        assert code.punct_order.shape[0] == c["untainted_max"]


def test_shipped_code_regenerates_bit_for_bit():
    """The build script's recipe reproduces a shipped file exactly (one small code here, all under slow)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "build_ldpc_codes.py"
    spec = importlib.util.spec_from_file_location("build_ldpc_codes", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    entry = next(c for c in available_codes() if c["name"] == "mm2012-r0.50-n16384")
    new, _ = mod.build_one(entry["name"], entry["distribution"], entry["n"], entry["peg_max_reach"])
    assert new == entry
    shipped = gzip.decompress((mod.OUT / entry["file"]).read_bytes())
    assert hashlib.sha256(shipped).hexdigest() == entry["sha256"]


# ----------------------------------------------------------------- kernels
def test_syndrome_kernel_matches_dense_oracle():
    rng = np.random.default_rng(1)
    code, _ = tiny_regular(60, 3, 6)
    for nf in (0, 1, 5):
        x = rng.integers(0, 2, (nf, 60), dtype=np.uint8)
        assert np.array_equal(code.syndrome(x), oracle.dense_syndrome(code.dense(), x).reshape(nf, code.m))
    big = load_code("mm2012-r0.70-n16384")
    x = rng.integers(0, 2, (3, big.n), dtype=np.uint8)
    assert np.array_equal(big.syndrome(x), oracle.dense_syndrome(big.dense(), x))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_syndrome_is_linear(seed):
    rng = np.random.default_rng(seed)
    code, _ = tiny_regular(48, 3, 6)
    x, y = rng.integers(0, 2, (2, 48), dtype=np.uint8)
    assert np.array_equal(code.syndrome(x ^ y), code.syndrome(x) ^ code.syndrome(y))


def test_decoder_agrees_with_brute_force_ml_on_tiny_code():
    code, four = tiny_regular(16, 3, 6, seed=4)
    h = code.dense()
    rng = np.random.default_rng(2)
    agree = 0
    for _ in range(40):
        x = rng.integers(0, 2, 16, dtype=np.uint8)
        y = x.copy()
        y[rng.integers(0, 16)] ^= 1
        syn = oracle.dense_syndrome(h, x)
        it, dec = decode_one(code, llr_for(y, 0.05), syn, 50)
        ml = oracle.ml_decode(h, syn, y)
        if it >= 0:
            assert np.array_equal(oracle.dense_syndrome(h, dec), syn)
            if ml is not None:
                assert np.array_equal(dec, ml)
                agree += 1
    assert agree >= 10


def test_decoder_zero_errors_returns_immediately():
    code = load_code("mm2012-r0.50-n16384")
    x = np.random.default_rng(3).integers(0, 2, code.n, dtype=np.uint8)
    syn = code.syndrome(x[None])[0]
    it, dec = decode_one(code, llr_for(x, 0.03), syn, 10)
    assert it == 0
    assert np.array_equal(dec, x)


def test_decoder_matches_float64_flooding_oracle():
    """Layered float32 LUT decoder and exact float64 flooding decoder both recover x."""
    code, _ = build_peg_code("mm2012-r0.50", 400, seed=21, max_reach=10_000)
    h = code.dense()
    rng = np.random.default_rng(4)
    both = 0
    for _ in range(6):
        x = rng.integers(0, 2, code.n, dtype=np.uint8)
        y = bsc(rng, x, 0.03)
        syn = code.syndrome(x[None])[0]
        llr = llr_for(y, 0.03)
        ref, ok_ref = oracle.flooding_sum_product(h, llr, syn, 40)
        it, out = decode_many(code, llr[None], syn[None], 40)
        if ok_ref:
            assert it[0] >= 0
            assert np.array_equal(out[0], ref)
            both += np.array_equal(ref, x)
    assert both >= 4


def test_punctured_bits_decode():
    """Punctured positions (LLR 0) are recovered by the decoder."""
    code = load_code("mm2012-r0.60-n16384")
    rng = np.random.default_rng(5)
    x = rng.integers(0, 2, code.n, dtype=np.uint8)
    y = bsc(rng, x, 0.04)
    mask = np.zeros(code.n, np.uint8)
    mask[code.punct_order[: code.n // 20]] = 2
    syn = code.syndrome(x[None])
    it, out = decode_many(code, llr_for(y, 0.04, mask)[None], syn, 60)
    assert it[0] > 0
    assert np.array_equal(out[0], x)


def test_batch_equals_single_frames():
    code = load_code("mm2012-r0.70-n16384")
    rng = np.random.default_rng(6)
    x = rng.integers(0, 2, (4, code.n), dtype=np.uint8)
    y = bsc(rng, x, 0.045)
    syn = code.syndrome(x)
    llr = np.stack([llr_for(y[i], 0.045) for i in range(4)])
    it, out = decode_many(code, llr, syn, 40)
    for i in range(4):
        it1, out1 = decode_one(code, llr[i], syn[i], 40)
        assert it1 == it[i]
        assert np.array_equal(out1, out[i])


def test_warm_start_continues_where_it_stopped():
    """Two calls of k and j iterations equal one call of k + j (state is the messages)."""
    code = load_code("mm2012-r0.70-n16384")
    rng = np.random.default_rng(12)
    x = rng.integers(0, 2, (3, code.n), dtype=np.uint8)
    y = bsc(rng, x, 0.05)
    syn = code.syndrome(x)
    llr = np.stack([llr_for(y[i], 0.05) for i in range(3)])
    which = np.arange(3, dtype=np.int64)
    L1, L2 = llr.copy(), llr.copy()
    R1 = np.zeros((3, code.n_edges), np.float32)
    R2 = np.zeros((3, code.n_edges), np.float32)
    it = np.empty(3, np.int64)
    K.decode_batch(code.row_ptr, code.col_idx, syn, np.array([3, 0]), L1, R1, which, it, K.PHI_LUT)
    assert (it == -4).all()  # -(iterations used) - 1
    K.decode_batch(code.row_ptr, code.col_idx, syn, np.array([4, 0]), L1, R1, which, it, K.PHI_LUT)
    K.decode_batch(code.row_ptr, code.col_idx, syn, np.array([7, 0]), L2, R2, which, it, K.PHI_LUT)
    assert np.array_equal(L1, L2) and np.array_equal(R1, R2)


@pytest.mark.parametrize("name,q,nf,patience,workers", [
    ("mm2012-r0.70-n16384", 0.045, 11, 0, 1),   # 11 frames: lanes refilled as frames finish
    ("mm2012-r0.50-n16384", 0.095, 3, 4, 1),    # patience stops some lanes early; idle lanes
    ("elk2009-r0.85-n16384", 0.017, 19, 6, 2),  # two workers (prange) share the frames
])
def test_lane_decoder_equals_scalar_decoder_bit_for_bit(name, q, nf, patience, workers):
    """The frame-parallel kernel gives the scalar oracle's messages, decisions and iteration
    counts exactly, frame by frame, whatever the other frames in its group do."""
    code = load_code(name)
    rng = np.random.default_rng(int(q * 1e4) + nf)
    x = rng.integers(0, 2, (nf, code.n), dtype=np.uint8)
    y = bsc(rng, x, q * rng.uniform(0.8, 1.25, (nf, 1)))  # mixed difficulty inside a group
    mask = np.zeros(code.n, np.uint8)
    mask[code.punct_order[: code.n // 40]] = 2
    mask[rng.choice(np.flatnonzero(mask == 0), code.n // 50, replace=False)] = 1
    syn = code.syndrome(x)
    llr = np.stack([llr_for(y[i], q, mask, x[i]) for i in range(nf)])
    it, L, R = decode_many(code, llr, syn, 25, patience=patience, state=True, workers=workers)
    for i in range(nf):
        it1, L1, R1 = scalar_decode(code, llr[i], syn[i], 25, patience)
        assert it[i] == it1
        assert np.array_equal(L[i], L1) and np.array_equal(R[i], R1)
    assert (it > 0).any() and (it < 0).any()  # both outcomes occur, so masking is exercised


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 20), st.integers(0, 5))
def test_lane_decoder_equals_scalar_decoder_on_tiny_code(seed, nf, patience):
    """Any number of frames (padding, refills), any patience: bit-identical to the oracle
    (small enough to run under NUMBA_DISABLE_JIT=1 too)."""
    code, _ = tiny_regular(96, 3, 6, seed=3)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2, (nf, code.n), dtype=np.uint8)
    q = rng.uniform(0.02, 0.12)
    y = bsc(rng, x, q)
    syn = code.syndrome(x)
    llr = np.stack([llr_for(y[i], q) for i in range(nf)])
    it, L, R = decode_many(code, llr, syn, 12, patience=patience, state=True)
    for i in range(nf):
        it1, L1, R1 = scalar_decode(code, llr[i], syn[i], 12, patience)
        assert it[i] == it1
        assert np.array_equal(L[i], L1) and np.array_equal(R[i], R1)


def test_lane_decoder_subset_leaves_other_frames_untouched():
    code = load_code("mm2012-r0.70-n16384")
    rng = np.random.default_rng(14)
    x = rng.integers(0, 2, (5, code.n), dtype=np.uint8)
    y = bsc(rng, x, 0.04)
    syn = code.syndrome(x)
    llr = np.stack([llr_for(y[i], 0.04) for i in range(5)])
    it, L, R = decode_many(code, llr, syn, 30, which=[4, 1], state=True)
    for f in (0, 2, 3):
        assert np.array_equal(L[f], llr[f]) and not R[f].any()
    for i, f in enumerate((4, 1)):
        it1, L1, _ = scalar_decode(code, llr[f], syn[f], 30)
        assert it[i] == it1 and np.array_equal(L[f], L1)


def test_lane_phi_constants_match_table():
    from qkdpost.reconcile.ldpc import _lanes

    assert _lanes.LANES == K.LANES == 8
    assert float(_lanes._PHI_SCALE) == K.PHI_SCALE
    assert float(_lanes._PHI_XCLAMP) == (K.PHI_BINS - 1) / K.PHI_SCALE


# ----------------------------------------------------------------- protocol
class RecordingChannel(Channel):
    """Loopback that also records every decoded message, to count disclosed bits."""

    def __init__(self, responder):
        super().__init__()
        self.inner = LoopbackChannel(responder)
        self.stats = self.inner.stats
        self.log = []

    def request(self, kind, body):
        reply = self.inner.request(kind, body)
        self.log.append((kind, body, reply))
        return reply


def _frames(rng, nf, n_key, q):
    a = rng.integers(0, 2, (nf, n_key), dtype=np.uint8)
    return a, bsc(rng, a, q)


def _disclosed(log, max_rounds, chosen="trap", trap_checks=8):
    """LDPC leak per frame id recounted from the recorded messages alone.

    The rule (``protocol.leak_bits``), with exact binomials: with p = 0,
    m + revealed; with p > 0 the smaller of m + revealed key values and
    m - p + revealed + ceil(log2(max_rounds + 2) + choices), where each
    ``ldpc.reveal_at`` request adds log2 of the number of requests Bob could
    have made: ``chosen="trap"``, the sets of 1..trap_checks of the m checks;
    ``"reliability"``, the subsets of that size of the frame's columns not
    yet revealed; with trap reveals on (``trap_checks`` > 0), every request
    naming the frame adds one bit (trapped or not). Positions are classified
    from the public layout that the ``ldpc.syndromes`` request fixed.
    """
    import math

    from qkdpost.reconcile.ldpc.protocol import frame_layout

    frame = {}  # id -> dict of m, p, punctured mask, layout, counters
    for kind, body, _ in log:
        if kind == "ldpc.syndromes":
            code = load_code(str(body["code"]))
            lay = frame_layout(code, int(body["n_key"]), int(body["n_punct"]), bytes(body["layout_seed"]))
            punct = np.zeros(code.n, bool)
            punct[lay.punct_pos] = True
            cols = int(body["n_key"]) + int(body["n_punct"])  # the columns Bob decodes (not shortened)
            for f in np.asarray(body["frame_ids"]).tolist():
                frame[f] = dict(m=code.m, p=int(body["n_punct"]), punct=punct, lay=lay, cols=cols, rev=0, rev_p=0,
                                choice=0.0, adaptive=False)
        elif kind == "ldpc.reveal":
            for f in np.asarray(body["frame_ids"]).tolist():
                pos = frame[f]["lay"].reveal_order[body["start"]:body["stop"]]
                frame[f]["rev"] += pos.shape[0]
                frame[f]["rev_p"] += int(frame[f]["punct"][pos].sum())
                frame[f]["choice"] += 1 if trap_checks > 0 else 0
        elif kind == "ldpc.reveal_at":
            counts = np.asarray(body["counts"])
            parts = np.split(np.asarray(body["positions"], np.int64), np.cumsum(counts)[:-1])
            for f, pos in zip(np.asarray(body["frame_ids"]).tolist(), parts):
                fr = frame[f]
                fr["choice"] += 1 if trap_checks > 0 else 0
                if chosen == "trap":
                    fr["choice"] += math.log2(sum(math.comb(fr["m"], k) for k in range(1, trap_checks + 1)))
                else:
                    fr["choice"] += math.log2(math.comb(fr["cols"] - fr["rev"], pos.shape[0]))
                fr["rev"] += pos.shape[0]
                fr["rev_p"] += int(fr["punct"][pos].sum())
                fr["adaptive"] = True
    out = np.zeros(max(frame) + 1, np.int64)
    for f, fr in frame.items():
        if fr["p"] == 0:
            out[f] = fr["m"] + fr["rev"]
        else:
            public = fr["m"] - fr["p"] + fr["rev"] + math.ceil(math.log2(max_rounds + 2) + fr["choice"])
            out[f] = min(public, fr["m"] + fr["rev"] - fr["rev_p"])
    return out


@pytest.mark.parametrize("q", [0.02, 0.05, 0.09])
def test_reconcile_end_to_end_and_leakage_equals_disclosed(q):
    rng = np.random.default_rng(int(q * 1000))
    n_key = 14746
    a, b = _frames(rng, 6, n_key, q)
    alice = LdpcAlice({i: a[i] for i in range(6)}, sim_seed=1)
    chan = RecordingChannel(Responder(alice.handlers()))
    res = LdpcBob(seed=2).run(chan, np.arange(6), b, q)
    assert res.success.all()
    assert np.array_equal(res.bits, a)
    assert np.array_equal(res.errors_corrected, (a != b).sum(axis=1))
    # disclosed: the syndrome (m bits, of which n_punct are offset by Alice's private bits) + revealed values
    plan = res.extra
    for kind, body, reply in chan.log:
        if kind == "ldpc.syndromes":
            assert reply["syndromes"].shape == (6, (plan["m"] + 7) // 8)
    # plus Cascade's parities for a frame the blind rounds left to the fallback (Alice's own count)
    parities = np.array([alice.cascade_leaked.get(i, 0) for i in range(6)])
    assert np.array_equal(res.leaked_bits, _disclosed(chan.log, plan["max_rounds"]) + parities)
    assert res.round_trips == len(chan.log) >= 1 + int(plan["rounds"].max())
    assert res.bytes_sent == chan.stats.bytes_total
    f = res.efficiency(q)
    assert (f > 1.0).all() and (f[~res.extra["fallback"]] < 1.6).all()


def test_reconcile_entry_point_single_frame_and_decoded_reproduces_syndrome():
    rng = np.random.default_rng(8)
    a, b = _frames(rng, 1, 60000, 0.05)
    res = reconcile(a[0], b[0], method="ldpc", qber=0.05, seed=4)
    assert res.bits.shape == (60000,)
    assert res.success.shape == (1,) and res.success[0]
    assert np.array_equal(res.bits, a[0])
    assert res.preset.endswith("n65536")
    assert res.method == "ldpc"


def test_failed_frames_reported_and_left_unchanged():
    rng = np.random.default_rng(9)
    a, b = _frames(rng, 3, 14746, 0.05)
    b[1] = rng.integers(0, 2, 14746, dtype=np.uint8)  # uncorrelated frame: cannot decode
    res = reconcile_ldpc(a, b, qber=0.05, seed=3, fallback="drop")
    assert not res.success[1]
    assert not res.extra["fallback"].any()
    assert np.array_equal(res.bits[1], b[1])
    assert res.errors_corrected[1] == 0
    assert res.success[0] and res.success[2]
    assert res.leaked_bits[1] > res.leaked_bits[0] or res.extra["revealed"][1] > 0


def test_syndrome_match_contradicting_a_known_position_is_not_a_success(monkeypatch):
    """Review doubt: checks can outvote a revealed position's fixed LLR. Such a frame (syndrome matched,
    a disclosed value contradicted) must be reported failed, not reconciled. (Shortened positions are
    not in the decoder's graph any more: their values are folded into the syndrome.)"""
    from qkdpost.reconcile.ldpc import protocol as P

    real = P.K.decode_batch
    state = {"calls": 0}

    def outvoted(row_ptr, col_idx, syn, limits, L, R, todo, sub_it, lut):
        state["calls"] += 1
        if state["calls"] == 1:  # frame 0 is made to fail its first attempt, so a blind round reveals bits
            real(row_ptr, col_idx, syn, limits, L, R, todo, sub_it, lut)
            i = int(np.flatnonzero(todo == 0)[0])
            sub_it[i] = -abs(int(sub_it[i])) - 1
            state["prev"] = L[0].copy()
            return
        revealed = np.flatnonzero(np.abs(L[0] - state["prev"]) > K.LLR_KNOWN - 1)
        real(row_ptr, col_idx, syn, limits, L, R, todo, sub_it, lut)
        if 0 in todo and revealed.shape[0]:
            v = revealed[np.argmax(np.abs(L[0, revealed]))]
            L[0, v] = -L[0, v]  # decisions now contradict a revealed value

    monkeypatch.setattr(P.K, "decode_batch", outvoted)
    rng = np.random.default_rng(12)
    a, b = _frames(rng, 2, 14746, 0.03)
    res = reconcile_ldpc(a, b, qber=0.03, seed=5, fallback="drop")
    assert state["calls"] >= 2 and res.extra["revealed"][0] > 0
    assert not res.success[0] and res.success[1]


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 40))
def test_shortened_subgraph_folds_known_values_into_the_syndrome(seed, n_short):
    """H x = H_U x_U + H_S x_S (mod 2): the sub-graph's syndrome of the other positions plus the fold
    equals the full syndrome (dense oracle), and the sub-graph is H with the shortened columns removed."""
    from qkdpost.reconcile.ldpc.protocol import shortened_subgraph

    code, _ = tiny_regular(96, 3, 6, seed=3)
    h = np.zeros((code.m, code.n), dtype=np.uint8)
    h[np.repeat(np.arange(code.m), np.diff(code.row_ptr)), code.col_idx] = 1
    rng = np.random.default_rng(seed)
    short = rng.choice(code.n, n_short, replace=False)
    vals = rng.integers(0, 2, n_short, dtype=np.uint8)
    x = rng.integers(0, 2, (4, code.n), dtype=np.uint8)
    x[:, short] = vals
    row_ptr, col_idx, cols, inv, flip = shortened_subgraph(code, short, vals)
    assert np.array_equal(np.sort(np.concatenate([cols, short])), np.arange(code.n))
    assert np.all(inv[short] == -1) and np.array_equal(inv[cols], np.arange(cols.shape[0]))
    hu = np.zeros((code.m, cols.shape[0]), dtype=np.uint8)
    for j in range(code.m):
        hu[j, col_idx[row_ptr[j]:row_ptr[j + 1]]] = 1
    assert np.array_equal(hu, np.asarray(h)[:, cols])
    sub = oracle.dense_syndrome(hu, x[:, cols]) ^ flip[None, :]
    assert np.array_equal(sub, oracle.dense_syndrome(h, x))


@pytest.mark.parametrize("sub_batches", [False, True])
def test_failed_frames_go_to_cascade_and_its_parities_are_counted(sub_batches):
    """A QBER estimate far too low makes LDPC fail (no blind rounds): Cascade reconciles
    those frames over the same channel, and leaked_bits = syndrome + revealed + parities."""
    rng = np.random.default_rng(15)
    n_key, nf = 14746, 4
    a, b = _frames(rng, nf, n_key, 0.012)  # frames 0, 3: true Q 1.2 %, estimate 2 %: LDPC decodes
    b[1:3] = a[1:3] ^ (rng.random((2, n_key)) < 0.075)  # frames 1, 2: true Q 7.5 %: LDPC fails
    alice = LdpcAlice({i: a[i] for i in range(nf)}, sim_seed=1)
    chan = RecordingChannel(Responder(alice.handlers()))
    bob = LdpcBob(seed=2, max_rounds=1, max_state_bytes=1 if sub_batches else 256 << 20)
    res = bob.run(chan, np.arange(nf), b, 0.02)
    fb = res.extra["fallback"]
    assert fb[1] and fb[2] and not fb[0] and not fb[3]
    assert res.success.all() and np.array_equal(res.bits, a)
    assert np.array_equal(res.errors_corrected, (a != b).sum(axis=1))
    disclosed = _disclosed(chan.log, res.extra["max_rounds"])
    parities = np.array([alice.cascade_leaked.get(i, 0) for i in range(nf)])
    assert parities[1] > 0 and parities[2] > 0 and parities[0] == parities[3] == 0
    assert np.array_equal(res.extra["cascade_leaked"], parities)
    assert np.array_equal(res.leaked_bits, disclosed + parities)
    assert any(kind.startswith("cascade.") for kind, _, _ in chan.log)
    assert res.round_trips == len(chan.log) and res.bytes_sent == chan.stats.bytes_total


def test_reveal_options_are_validated():
    with pytest.raises(InputError, match="reveal"):
        LdpcBob(reveal="random")
    with pytest.raises(InputError, match="trap_checks"):
        LdpcBob(trap_checks=-1)


def test_fallback_option_is_validated():
    with pytest.raises(InputError, match="fallback"):
        LdpcBob(fallback="retry")


def test_bob_refuses_frame_ids_that_are_not_integers():
    """Float ids were truncated silently (0.2 and 0.9 both became frame 0 of Alice's)."""
    rng = np.random.default_rng(17)
    a, b = _frames(rng, 2, 14746, 0.04)
    alice = LdpcAlice({i: a[i] for i in range(2)}, sim_seed=1)
    for ids in ([0.2, 0.9], np.array([0.0, 1.0]), np.array([[0], [1]])):
        with pytest.raises(InputError, match="frame_ids"):
            LdpcBob(seed=1).run(LoopbackChannel(Responder(alice.handlers())), ids, b, 0.04)


def test_production_randomness_without_seed_gives_different_layouts():
    rng = np.random.default_rng(10)
    a, b = _frames(rng, 1, 14746, 0.04)
    r1 = reconcile_ldpc(a, b, qber=0.04)
    r2 = reconcile_ldpc(a, b, qber=0.04)
    assert r1.success.all() and r2.success.all()
    assert np.array_equal(r1.bits, a)


def test_plan_prefers_shortening_and_limits_puncturing():
    for q in (0.02, 0.03, 0.05, 0.07, 0.1):
        p = plan_frame(58982, q)
        assert p.n == 2**16
        assert p.n_punct <= 0.1 * p.n
        assert p.n_short >= 0 and p.n_short + p.n_punct + p.n_key == p.n
        assert p.leak_start >= 1.0 * p.n_key * binary_entropy(q)


def test_plan_takes_the_code_that_needs_least_puncturing():
    """The chosen code is of the preferred family (Elkouss et al. 2009) whenever one of its codes
    reaches the target, and every code of the chosen code's family and length that reaches the
    target needs at least as many punctured positions (shortening a higher-rate code is preferred)."""
    from qkdpost.reconcile.ldpc.adapt import PREFERRED_FAMILY

    for n_key in (14746, 58982):
        for q in (0.02, 0.025, 0.03, 0.04, 0.05, 0.055, 0.07, 0.09, 0.1):
            p = plan_frame(n_key, q)
            fam = p.code.startswith(PREFERRED_FAMILY)
            for c in available_codes():
                if c["n"] != p.n or c["name"] == p.code:
                    continue
                try:
                    other = plan_frame(n_key, q, code=c["name"])
                except InputError:  # this code cannot serve the QBER at all
                    continue
                if abs(other.leak_start - p.leak_start) > 1:  # does not reach the target
                    continue
                if c["name"].startswith(PREFERRED_FAMILY) == fam:
                    assert other.n_punct >= p.n_punct, (q, c["name"])
                else:
                    assert fam, (n_key, q, p.code, c["name"])  # a preferred code reaching it was skipped
    assert plan_frame(58982, 0.02).code == "elk2009-r0.85-n65536"
    assert plan_frame(58982, 0.05).code == "elk2009-r0.65-n65536"
    assert plan_frame(58982, 0.025).code == "elk2009-r0.80-n65536"  # punctured 3.5 %, under its 4 % cap


# ------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_clear_errors():
    rng = np.random.default_rng(11)
    a, b = _frames(rng, 2, 1000, 0.05)
    with pytest.raises(InputError, match="shape"):
        reconcile_ldpc(a, b[:, :999], qber=0.05)
    with pytest.raises(InputError, match="qber"):
        reconcile_ldpc(a, b, qber=0.0)
    with pytest.raises(InputError, match="qber"):
        reconcile_ldpc(a, b, qber=0.6)
    with pytest.raises(InputError, match="too high"):
        plan_frame(14746, 0.2)
    with pytest.raises(InputError, match="too low"):
        plan_frame(14746, 0.001)
    longest = max(c["n"] for c in available_codes())
    with pytest.raises(InputError, match="longer than every"):
        plan_frame(longest + 1, 0.05)
    with pytest.raises(InputError, match="supported range"):
        plan_frame(30000, 0.05)
    with pytest.raises(InputError, match="supported range"):
        reconcile_ldpc(a, b, qber=0.05)
    with pytest.raises(InputError, match="unknown LDPC option"):
        reconcile_ldpc(a, b, qber=0.05, bogus=1)
    with pytest.raises(InputError, match="code="):
        load_code("nope")
    with pytest.raises(InputError, match="not 0 or 1"):
        reconcile_ldpc(a * 2, b, qber=0.05)


def test_alice_rejects_malformed_requests():
    alice = LdpcAlice({0: np.zeros(100, np.uint8)}, sim_seed=0)
    h = alice.handlers()
    with pytest.raises(ProtocolError):
        h["ldpc.syndromes"]({"frame_ids": np.array([0])})
    with pytest.raises(ProtocolError, match="no frame"):
        h["ldpc.syndromes"]({"frame_ids": np.array([5]), "code": "mm2012-r0.50-n16384", "n_key": 100,
                             "n_punct": 0, "layout_seed": b"\0" * 16})
    with pytest.raises(ProtocolError, match="bits"):
        h["ldpc.syndromes"]({"frame_ids": np.array([0]), "code": "mm2012-r0.50-n16384", "n_key": 101,
                             "n_punct": 0, "layout_seed": b"\0" * 16})
    with pytest.raises(ProtocolError, match="no syndrome was sent"):
        h["ldpc.reveal"]({"frame_ids": np.array([0]), "start": 0, "stop": 4})
    req = {"code": "mm2012-r0.50-n16384", "n_key": 100, "n_punct": 0, "layout_seed": b"\0" * 16}
    for ids in (np.int64(0), np.zeros((1, 1), np.int64)):  # not a 1-D list of frame ids
        with pytest.raises(ProtocolError, match="frame_ids"):
            h["ldpc.syndromes"](dict(req, frame_ids=ids))
    h["ldpc.syndromes"](dict(req, frame_ids=np.array([0])))
    for ids in (np.int64(0), np.zeros((1, 1), np.int64)):
        with pytest.raises(ProtocolError, match="frame_ids"):
            h["ldpc.reveal"]({"frame_ids": ids, "start": 0, "stop": 4})


def test_alice_rejects_malformed_reveal_at_requests():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 2, 100, dtype=np.uint8)
    alice = LdpcAlice({0: x}, sim_seed=0)
    h = alice.handlers()
    with pytest.raises(ProtocolError, match="no syndrome was sent"):
        h["ldpc.reveal_at"]({"frame_ids": np.array([0]), "counts": np.array([1]), "positions": np.array([3])})
    h["ldpc.syndromes"]({"frame_ids": np.array([0]), "code": "mm2012-r0.50-n16384", "n_key": 100,
                         "n_punct": 0, "layout_seed": b"C" * 16})
    from qkdpost.reconcile.ldpc.protocol import frame_layout

    lay = frame_layout(load_code("mm2012-r0.50-n16384"), 100, 0, b"C" * 16)
    ok = {"frame_ids": np.array([0]), "counts": np.array([3]), "positions": lay.key_pos[[5, 0, 99]]}
    got = np.unpackbits(np.asarray(h["ldpc.reveal_at"](ok)["values"], np.uint8).reshape(-1), bitorder="little")[:3]
    np.testing.assert_array_equal(got, x[[5, 0, 99]])
    for bad in ({"frame_ids": np.array([0]), "counts": np.array([2]), "positions": lay.key_pos[:3]},   # count mismatch
                {"frame_ids": np.array([0]), "counts": np.array([0]), "positions": lay.key_pos[:0]},   # empty count
                {"frame_ids": np.array([0]), "counts": np.array([1]), "positions": lay.short_pos[:1]},  # public
                {"frame_ids": np.array([0]), "counts": np.array([1]), "positions": np.array([16384])},  # outside
                {"frame_ids": np.array([[0]]), "counts": np.array([1]), "positions": lay.key_pos[:1]},
                {"frame_ids": np.array([0]), "counts": np.array([1])}):
        with pytest.raises(ProtocolError, match="ldpc.reveal_at"):
            h["ldpc.reveal_at"](bad)


def test_trapped_columns_are_the_variables_of_the_unsatisfied_checks():
    """_trapped_columns against a dense recount: frames with 1..max unsatisfied checks, and the
    columns of those checks not yet known."""
    from qkdpost.reconcile.ldpc.protocol import _trapped_columns

    code, _ = tiny_regular(60, 3, 6, seed=3)
    h = code.dense()
    rng = np.random.default_rng(9)
    nf = 40
    L = rng.normal(0, 1, (nf, code.n)).astype(np.float32)
    syn = np.empty((nf, code.m), np.uint8)
    for f in range(nf):  # most frames a few checks away from their syndrome
        s = oracle.dense_syndrome(h, (L[f] < 0).astype(np.uint8))
        flip = rng.choice(code.m, rng.integers(0, 6), replace=False)
        s[flip] ^= 1
        syn[f] = s
    known = rng.random((nf, code.n)) < 0.2
    frames = np.arange(nf, dtype=np.int64)[::-1].copy()
    got = _trapped_columns(code.row_ptr, code.col_idx, syn, L, frames, known, 3)
    want = {}
    for f in range(nf):
        bad = np.flatnonzero(oracle.dense_syndrome(h, (L[f] < 0).astype(np.uint8)) != syn[f])
        if 1 <= bad.shape[0] <= 3:
            c = np.flatnonzero(h[bad].any(axis=0) & ~known[f])
            if c.shape[0]:
                want[f] = c
    assert want and sorted(got) == sorted(want)
    for f in want:
        np.testing.assert_array_equal(got[f], want[f])


def test_targeted_reveals_are_counted_and_frames_decode():
    """With trap_checks large every failed frame gets its unsatisfied checks' variables revealed
    (ldpc.reveal_at) instead of a blind step: the keys match and the leak recounted from the
    messages equals leaked_bits."""
    rng = np.random.default_rng(21)
    a, b = _frames(rng, 5, 14746, 0.05)
    alice = LdpcAlice({i: a[i] for i in range(5)}, sim_seed=1)
    chan = RecordingChannel(Responder(alice.handlers()))
    res = LdpcBob(seed=2, f_start=1.0, f_step=0.04, max_rounds=6, trap_checks=10**6,
                  fallback="drop").run(chan, np.arange(5), b, 0.05)
    kinds = [k for k, _, _ in chan.log]
    assert "ldpc.reveal_at" in kinds and "ldpc.reveal" not in kinds
    assert res.success.all() and np.array_equal(res.bits, a)
    revealed = np.zeros(5, np.int64)
    for kind, body, reply in chan.log:
        if kind == "ldpc.reveal_at":
            assert np.asarray(reply["values"]).shape == (1, (int(body["counts"].sum()) + 7) // 8)
            np.add.at(revealed, body["frame_ids"], body["counts"])
    assert np.array_equal(res.extra["revealed"], revealed)
    # any set of checks could have been named: log2(2^m - 1) ~ m bits of choice, so the count is
    # capped by granting Eve the punctured bits: m + revealed key bits (see protocol.leak_bits)
    assert np.array_equal(res.leaked_bits, _disclosed(chan.log, res.extra["max_rounds"], trap_checks=10**6))
    assert res.extra["n_punct"] > 0 and res.extra["adaptive_reveals"].any()
    ad = res.extra["adaptive_reveals"]
    assert np.array_equal(res.leaked_bits[ad], res.extra["m"] + (revealed - res.extra["revealed_punctured"])[ad])


def test_trap_reveal_costs_its_choices_when_cheaper_than_the_puncturing_credit():
    """A trap reveal among many frames: Bob named one of the sets of <= 80 unsatisfied checks
    (~600 bits of choice), fewer than the ~1400 punctured bits, so that frame is counted
    m - p + revealed + ceil(log2(rounds) + choices), below m + revealed key bits; the
    recount from the messages agrees."""
    rng = np.random.default_rng(21)
    a, b = _frames(rng, 6, 14746, 0.05)
    alice = LdpcAlice({i: a[i] for i in range(6)}, sim_seed=1)
    chan = RecordingChannel(Responder(alice.handlers()))
    res = LdpcBob(seed=2, f_start=1.03, max_rounds=6, trap_checks=80, fallback="drop").run(chan, np.arange(6), b, 0.05)
    ex = res.extra
    assert any(kind == "ldpc.reveal_at" for kind, _, _ in chan.log)
    assert np.array_equal(res.leaked_bits, _disclosed(chan.log, ex["max_rounds"], trap_checks=80))
    ad = ex["adaptive_reveals"]
    assert ad.any() and np.all(ex["choice_bits"][ad] > 80)  # ~600 bits of set, plus a bit per round
    granted = ex["m"] + ex["revealed"] - ex["revealed_punctured"]
    assert np.all(res.leaked_bits[ad] < granted[ad])
    assert np.all(res.leaked_bits >= ex["m"] - ex["n_punct"] + ex["revealed"])
    ok = res.success
    assert np.array_equal(res.bits[ok], a[ok])


def test_reliability_reveals_ask_for_the_least_reliable_positions_and_are_counted(monkeypatch):
    """reveal="reliability": a failed frame's next round asks (ldpc.reveal_at) for the ``step``
    positions of smallest |posterior LLR| among those not yet known; the leak recounted from the
    messages equals leaked_bits and the keys match."""
    from qkdpost.reconcile.ldpc import protocol as P

    rng = np.random.default_rng(23)
    a, b = _frames(rng, 4, 14746, 0.05)
    seen = {}
    real = P.K.decode_batch

    def spy(row_ptr, col_idx, syn, limits, L, R, which, it, lut):
        real(row_ptr, col_idx, syn, limits, L, R, which, it, lut)
        seen["L"] = L.copy()

    monkeypatch.setattr(P.K, "decode_batch", spy)
    alice = LdpcAlice({i: a[i] for i in range(4)}, sim_seed=1)
    chan = RecordingChannel(Responder(alice.handlers()))
    bob = LdpcBob(seed=2, f_start=1.0, f_step=0.04, max_rounds=8, trap_checks=0, reveal="reliability",
                  fallback="drop")
    # the first reveal_at must name, per frame, the step least reliable columns after the first attempt
    first = {}
    real_request = chan.request

    def request(kind, body):
        if kind == "ldpc.reveal_at" and not first:
            first.update(body=body, L=seen["L"].copy())
        return real_request(kind, body)

    chan.request = request
    res = bob.run(chan, np.arange(4), b, 0.05)
    assert res.success.all() and np.array_equal(res.bits, a)
    body, L = first["body"], first["L"]
    from qkdpost.reconcile.ldpc.protocol import frame_layout, shortened_subgraph

    plan = bob.plan(14746, 0.05)
    code = load_code(plan.code)
    lay = frame_layout(code, 14746, plan.n_punct, np.random.default_rng([2, 0xB0B]).bytes(16))
    cols = shortened_subgraph(code, lay.short_pos, lay.short_vals)[2]
    pos = np.split(np.asarray(body["positions"], np.int64), np.cumsum(body["counts"])[:-1])
    assert len(pos) >= 1
    for f, p in zip(np.asarray(body["frame_ids"]).tolist(), pos):
        want = cols[np.sort(np.argsort(np.abs(L[f]), kind="stable")[:plan.step])]
        np.testing.assert_array_equal(p, want)
    assert all(kind != "ldpc.reveal" for kind, _, _ in chan.log)
    assert np.array_equal(res.leaked_bits, _disclosed(chan.log, res.extra["max_rounds"], chosen="reliability",
                                                      trap_checks=0))


def test_alice_reveals_each_frame_in_the_layout_its_syndrome_used():
    """Review doubt: one layout kept for all frames answered a reveal for an earlier batch's frame at the
    latest batch's positions. Layouts are kept per frame now."""
    from qkdpost.reconcile.ldpc.protocol import frame_layout
    from qkdpost.reconcile.ldpc.codes import load_code

    rng = np.random.default_rng(17)
    x = rng.integers(0, 2, (2, 100), dtype=np.uint8)
    alice = LdpcAlice({0: x[0], 1: x[1]}, sim_seed=0)
    h = alice.handlers()
    req = {"code": "mm2012-r0.50-n16384", "n_key": 100, "n_punct": 0}
    h["ldpc.syndromes"](dict(req, frame_ids=np.array([0]), layout_seed=b"A" * 16))
    h["ldpc.syndromes"](dict(req, frame_ids=np.array([1]), layout_seed=b"B" * 16))
    got = h["ldpc.reveal"]({"frame_ids": np.array([0]), "start": 0, "stop": 50})["values"]
    lay = frame_layout(load_code("mm2012-r0.50-n16384"), 100, 0, b"A" * 16)
    word = np.zeros(16384, np.uint8)
    word[lay.key_pos] = x[0]
    word[lay.short_pos] = lay.short_vals
    want = word[lay.reveal_order[:50]]
    np.testing.assert_array_equal(np.unpackbits(np.asarray(got, np.uint8).reshape(-1), bitorder="little")[:50], want)


@pytest.mark.parametrize("kind,cut", [("ldpc.syndromes", "column"), ("ldpc.syndromes", "row"),
                                      ("ldpc.reveal", "column"), ("ldpc.reveal", "row"),
                                      ("ldpc.reveal_at", "column"), ("ldpc.reveal_at", "row")])
def test_bob_rejects_malformed_replies(kind, cut):
    """A reply of the wrong shape (a peer out of step, a truncated message) is a ProtocolError
    naming the message, never zero-padded into a wrong syndrome or revealed value."""
    rng = np.random.default_rng(16)
    a, b = _frames(rng, 2, 14746, 0.05)
    alice = LdpcAlice({i: a[i] for i in range(2)}, sim_seed=1)
    handlers = alice.handlers()
    field = "syndromes" if kind == "ldpc.syndromes" else "values"
    honest = handlers[kind]

    def tampered(body):
        reply = honest(body)
        v = np.asarray(reply[field])
        return {field: v[:, :-1] if cut == "column" else v[:-1]}

    handlers[kind] = tampered
    # f_start below 1 makes the first attempt fail, so a reveal round follows
    bob = LdpcBob(seed=2, f_start=0.9, max_rounds=2, fallback="drop",
                  reveal="punctured" if kind == "ldpc.reveal" else "reliability")
    with pytest.raises(ProtocolError, match=kind):
        bob.run(LoopbackChannel(Responder(handlers)), np.arange(2), b, 0.05)


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0.025, 0.045, 0.065, 0.09]))
def test_property_success_means_identical_keys_and_exact_leak(seed, q):
    """Whatever the frame: success => Bob's bits equal Alice's and reproduce her syndrome;
    leaked = protocol.leak_bits of its reveals, plus Cascade's parities for a frame LDPC gave up on
    (fallback); never less than m - p + revealed."""
    from qkdpost.reconcile.ldpc.protocol import leak_bits

    rng = np.random.default_rng(seed)
    a, b = _frames(rng, 2, 14746, q)
    res = reconcile_ldpc(a, b, qber=q, seed=seed)
    code = load_code(res.preset)
    for i in range(2):
        if res.success[i]:
            assert np.array_equal(res.bits[i], a[i])
    plan = plan_frame(14746, q)
    ex = res.extra
    ldpc_leak = leak_bits(plan, ex["revealed"], ex["revealed_punctured"], ex["choice_bits"])
    assert np.array_equal(res.leaked_bits, ldpc_leak + ex["cascade_leaked"])
    assert np.all(ldpc_leak >= code.m - ex["n_punct"] + ex["revealed"])
    assert np.all(res.extra["cascade_leaked"][~res.extra["fallback"]] == 0)
    assert res.extra["n_punct"] <= 0.1 * code.n


def test_large_batches_run_as_sub_batches_with_same_outcome():
    rng = np.random.default_rng(13)
    a, b = _frames(rng, 3, 14746, 0.04)
    alice = LdpcAlice({i: a[i] for i in range(3)}, sim_seed=1)
    chan = LoopbackChannel(Responder(alice.handlers()))
    bob = LdpcBob(seed=5, max_state_bytes=1)  # one frame per sub-batch
    res = bob.run(chan, np.arange(3), b, 0.04)
    assert res.success.all() and np.array_equal(res.bits, a)
    assert res.round_trips >= 3 and res.extra["rounds"].shape == (3,)
    assert res.leaked_bits.shape == (3,)


def test_leak_bits_known_answers():
    """protocol.leak_bits on hand-counted cases: m = 1000 checks, p = 50 punctured, 20 rounds
    (ceil(log2(22)) = 5 bits for the public round count)."""
    from qkdpost.reconcile.ldpc.adapt import FramePlan
    from qkdpost.reconcile.ldpc.protocol import leak_bits

    plan = FramePlan(code="x", n=2000, m=1000, n_key=1800, n_punct=50, n_short=150, step=10, max_rounds=20)
    rev = np.array([0, 30, 30, 60, 60])
    rev_p = np.array([0, 10, 10, 50, 50])
    choice = np.array([0.0, 0.0, 12.3, 40.0, 100.0])
    # 950 + revealed + ceil(log2(22) + choice) = 950 + revealed + 5, 5, 17, 45, 105 bits;
    # capped by 1000 + revealed key bits: 1020, 1010 for the last two
    assert leak_bits(plan, rev, rev_p, choice).tolist() == [955, 985, 997, 1010, 1010]
    plain = FramePlan(code="x", n=2000, m=1000, n_key=1850, n_punct=0, n_short=150, step=10, max_rounds=20)
    assert leak_bits(plain, rev, np.zeros(5, np.int64), choice).tolist() == [1000, 1030, 1030, 1060, 1060]
