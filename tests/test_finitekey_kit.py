"""The pipeline's choice and evaluation of the finite-key bound (pipeline.kit._secure_length).

One-decoy BB84 (Rusca et al. 2018) is wired: it needs the key-basis errors per
intensity, which Bob counts after error correction (block stats ``m_key_c0``,
``m_key_c1``). The pipeline passes them (tests/test_pipeline_decoy.py); the
check below runs the stages by hand on a longer link: simulate -> sift (both
parties, loopback) -> Cascade (qkdpost's kit, loopback) -> bound, with the
errors per intensity counted from Bob's corrections, and the simulator's
truth inside every bound.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from qkdpost import finitekey as fk
from qkdpost.channel import LoopbackChannel, Responder
from qkdpost.config import Config
from qkdpost.errors import InputError
from qkdpost.io.model import iter_arrays
from qkdpost.pipeline.kit import QkdpostKit, _secure_length
from qkdpost.sift import SiftConfig, seeded_bits, sift_streams
from qkdpost.simulate import DecoyConfig, generate

MU1 = (0.5, 0.2)
P1 = (0.5, 0.5)


def _cfg(**kw):
    return Config().replace(**kw)


def _stats(nk, nt, mt, mk=None):
    st = {f"n_key_c{c}": int(v) for c, v in enumerate(nk)}
    st.update({f"n_test_c{c}": int(v) for c, v in enumerate(nt)})
    st.update({f"m_test_c{c}": int(v) for c, v in enumerate(mt)})
    if mk is not None:
        st.update({f"m_key_c{c}": int(v) for c, v in enumerate(mk)})
    st["n_test"], st["test_errors"] = int(sum(nt)), int(sum(mt))
    return st


# counts of a 6 dB one-decoy link (from the run below), for the quick unit checks
NK, MK, NT, MT = [211440, 87389], [5972, 2210], [210557, 87536], [6857, 2652]


def test_rusca_wired_and_equal_to_the_direct_call():
    cfg = _cfg(bound="rusca2018", decoy_mu="0.5,0.2", decoy_p_mu="0.5,0.5")
    st = _stats(NK + [0], NT + [0], MT + [0], MK)
    n = sum(NK)
    ell, bound, det = _secure_length(fk, st, n, 65000, 65, 2.0**-65, cfg)
    want = fk.rusca2018(NK, MK, NT, MT, mu=MU1, p_mu=P1, leak_ec=65000.0, eps_sec=cfg.finitekey.eps_sec,
                        eps_cor=2.0**-65, tag_bits=65)
    assert bound == "rusca2018" and ell == want.length > 0 and det["phi"] == want.bounds["phi"]
    assert det["v1_test"] <= det["v1_test_published"]  # the one-intensity bound keeps the decoy gain here
    # "auto" with two intensities picks the one-decoy bound
    auto = _secure_length(fk, st, n, 65000, 65, 2.0**-65, _cfg(decoy_mu="0.5,0.2", decoy_p_mu="0.5,0.5"))
    assert auto[:2] == (ell, "rusca2018")
    # more key-basis errors at either intensity never lengthen the key
    for c in (0, 1):
        st2 = dict(st, **{f"m_key_c{c}": st[f"m_key_c{c}"] + 400})
        assert _secure_length(fk, st2, n, 65000, 65, 2.0**-65, cfg)[0] <= ell


def test_rusca_without_key_errors_per_intensity_is_a_clear_error():
    cfg = _cfg(bound="rusca2018", decoy_mu="0.5,0.2", decoy_p_mu="0.5,0.5")
    with pytest.raises(InputError, match="m_key_c0, m_key_c1"):
        _secure_length(fk, _stats(NK + [0], NT + [0], MT + [0]), sum(NK), 65000, 65, 2.0**-65, cfg)


def test_intensity_count_must_match_the_bound_and_the_data():
    st3 = _stats([40000, 20000, 100], [40000, 20000, 90], [1200, 500, 40])
    with pytest.raises(InputError, match="rusca2018 needs 2 intensities"):
        _secure_length(fk, st3, 60100, 10000, 65, 2.0**-65,
                       _cfg(bound="rusca2018", decoy_mu="0.5,0.2,0.0", decoy_p_mu="0.4,0.45,0.15"))
    with pytest.raises(InputError, match="lim2014 needs 3 intensities"):
        _secure_length(fk, st3, 60100, 10000, 65, 2.0**-65, _cfg(bound="lim2014", decoy_mu="0.5,0.2",
                                                                   decoy_p_mu="0.5,0.5"))
    with pytest.raises(InputError, match="intensity class 2"):
        _secure_length(fk, dict(st3, m_key_c0=1, m_key_c1=1), 60100, 10000, 65, 2.0**-65,
                       _cfg(bound="rusca2018", decoy_mu="0.5,0.2", decoy_p_mu="0.5,0.5"))
    with pytest.raises(InputError, match="summing to"):
        _secure_length(fk, st3, 60000, 10000, 65, 2.0**-65, _cfg(decoy_mu="0.5,0.2,0.0", decoy_p_mu="0.4,0.45,0.15"))
    with pytest.raises(InputError, match="does not apply to BBM92"):
        _secure_length(fk, {"n_test": 1000, "test_errors": 10}, 10000, 100, 65, 2.0**-65, _cfg(bound="lim2014"))
    with pytest.raises(InputError, match="does not apply to decoy"):
        _secure_length(fk, st3, 60100, 10000, 65, 2.0**-65, _cfg(bound="tomamichel2012"))


def test_lim_and_tomamichel_paths_equal_the_direct_calls():
    st3 = _stats([44516, 20919, 101], [44938, 20930, 79], [1514, 575, 40])
    cfg = _cfg(decoy_mu="0.5,0.2,0.0", decoy_p_mu="0.4,0.45,0.15")
    ell, bound, det = _secure_length(fk, st3, 65536, 12242, 65, 2.0**-65, cfg)
    want = fk.lim2014([44516, 20919, 101], [44938, 20930, 79], [1514, 575, 40], mu=(0.5, 0.2, 0.0),
                      p_mu=(0.4, 0.45, 0.15), leak_ec=12242.0, eps_cor=2.0**-65, tag_bits=65)
    assert (ell, bound) == (want.length, "lim2014") and ell > 0 and det["value"] == want.value
    ell, bound, det = _secure_length(fk, {"n_test": 10**5, "test_errors": 2000}, 10**6, 120_000, 65, 2.0**-65, _cfg())
    want = fk.tomamichel2012(10**6, 10**5, 2000, leak_ec=120_000.0, eps_cor=2.0**-65, tag_bits=65)
    assert (ell, bound) == (want.length, "tomamichel2012") and ell > 0
    assert _secure_length(fk, {"n_test": 0, "test_errors": 0}, 1000, 0, 65, 2.0**-65, _cfg())[0] == 0


@pytest.fixture(scope="module")
def one_decoy_run():
    """A 6 dB one-decoy link, 2e7 slots; sifted by both parties over the loopback channel."""
    link = generate(DecoyConfig(duration_s=20.0, rep_rate_hz=1e6, loss_db=6.0, p_z_alice=0.5, p_z_bob=0.5,
                                intensities=MU1, intensity_probs=P1), seed=11)
    run = sift_streams(link.alice.info, iter_arrays(link.alice.t, link.alice.ch, 1 << 20), link.bob.info,
                       iter_arrays(link.bob.t, link.bob.ch, 1 << 16), SiftConfig(), random_bits_bob=seeded_bits(2))
    return link, run


def test_one_decoy_sift_cascade_bound_positive_and_truth_inside(one_decoy_run):
    link, run = one_decoy_run
    a, b = run.alice, run.bob
    assert np.array_equal(a.key_class, b.key_class) and a.key.size > 200_000
    cfg = _cfg(bound="rusca2018", decoy_mu="0.5,0.2", decoy_p_mu="0.5,0.5", seed=9)
    kit = QkdpostKit()
    block_id = "r-0000000"
    chan = LoopbackChannel(Responder(kit.reconcile_alice("cascade", {block_id: a.key}, cfg, qber=0.02)))
    q = float(b.test_errors) / max(b.n_test, 1)
    res = kit.reconcile_bob(chan, "cascade", [block_id], b.key[None, :], q, cfg, seed=9)
    corrected = np.asarray(res.bits).reshape(-1)
    assert bool(res.success[0]) and np.array_equal(corrected, a.key)
    # what Bob counts after error correction: the bits he flipped, by intensity class
    flipped = corrected != b.key
    m_key = np.bincount(b.key_class[flipped], minlength=2)
    n_key = np.bincount(b.key_class, minlength=2)
    n_test = np.bincount(b.test_class, minlength=2)
    m_test = np.bincount(b.test_class[a.test != b.test], minlength=2)
    st = _stats(n_key, n_test, m_test, m_key)
    n = int(b.key.size)
    ell, bound, det = _secure_length(fk, st, n, int(res.leaked_bits[0]), 65, 2.0**-65, cfg)
    assert bound == "rusca2018" and ell > 0 and det["leak_ec"] == int(res.leaked_bits[0])
    assert ell < n - int(res.leaked_bits[0])
    # the simulator's truth (photon numbers of the sifted events) inside the bounds
    t = link.truth

    def kept(basis, photons):
        return sum(t["counts"][c][basis]["by_photon_number"][photons]["sifted"]
                   + t["counts"][c][basis]["by_photon_number"][photons]["double_clicks"] for c in t["counts"])

    v1_true = sum(t["counts"][c]["X"]["by_photon_number"]["1"]["errors"] for c in t["counts"])
    assert det["s0"] <= kept("Z", "0") <= det["s0_upper"]
    assert 0 < det["s1"] <= kept("Z", "1") and det["s1"] >= 0.4 * kept("Z", "1")
    assert 0 < det["s1_test"] <= kept("X", "1")
    assert det["v1_test"] >= v1_true
    json.dumps(det)  # report-ready
    assert math.isfinite(det["value"])


def test_bbm92_fixed_qber_tolerance_from_config():
    """qber_tol fixes Tomamichel's Q_tol: less key than the observed-rate default, none above it."""
    st = {"n_test": 50_000, "test_errors": 1_000}  # observed 2 %
    n = 1_000_000
    observed = _secure_length(fk, st, n, 150_000, 65, 2.0**-65, _cfg())
    fixed = _secure_length(fk, st, n, 150_000, 65, 2.0**-65, _cfg(qber_tol=0.03))
    want = fk.tomamichel2012(n, 50_000, 1_000, leak_ec=150_000.0, eps_sec=1e-10, eps_cor=2.0**-65, tag_bits=65,
                             qber_tol=0.03)
    assert 0 < fixed[0] == want.length < observed[0]
    above = _secure_length(fk, st, n, 150_000, 65, 2.0**-65, _cfg(qber_tol=0.015))
    assert above[0] == 0 and "exceeds qber_tol" in above[2]["reason"]
    with pytest.raises(Exception, match="qber_tol"):
        _cfg(qber_tol=0.6)
