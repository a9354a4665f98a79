"""Decoy-state BB84 end to end (issue 6): a benign simulated link gives identical, positive keys.

The link is chosen so that Lim et al. 2014 (PRA 89, 022307) certifies a key at
2^16-bit blocks (docs/finitekey.md, "Decoy BB84 end to end"): 6 dB to Bob,
balanced bases (p_Z = 1/2 on both sides, so the test basis is as large as the
key basis), intensities (0.5, 0.2, 0) with probabilities (0.4, 0.45, 0.15), a
1 MHz pulse rate (the slot count, not the rate, sets the cost).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from qkdpost import finitekey as fk
from qkdpost.config import Config
from qkdpost.keystore import KeyStore
from qkdpost.pipeline.run import run_local
from qkdpost.simulate import DecoyConfig, write_link
from pipeline_kit import same_stores

MU = (0.5, 0.2, 0.0)
P_MU = (0.4, 0.45, 0.15)
LINK = dict(rep_rate_hz=1e6, loss_db=6.0, p_z_alice=0.5, p_z_bob=0.5, intensities=MU, intensity_probs=P_MU)


def _cfg(**kw):
    base = dict(block_bits=1 << 16, seed=9, acquisition_s=0.5, decoy_mu=",".join(map(str, MU)),
                decoy_p_mu=",".join(map(str, P_MU)))
    base.update(kw)
    return Config().replace(**base)


@pytest.fixture(scope="module")
def benign(tmp_path_factory):
    d = tmp_path_factory.mktemp("decoy_benign")
    write_link(DecoyConfig(duration_s=7.0, **LINK), d, seed=5)  # 7e6 slots -> one 2^16-bit block
    return d


@pytest.fixture(scope="module")
def benign_run(benign, tmp_path_factory):
    out = tmp_path_factory.mktemp("decoy_out")
    rep = run_local(benign / "alice.arrow", benign / "bob.arrow", out, _cfg(), plot=False)
    return rep, out


def test_benign_decoy_link_gives_identical_positive_keys(benign_run):
    rep, out = benign_run
    sa, sb = same_stores(out)
    t = rep.totals()
    assert rep.info["front"]["topology"] == "decoy"
    assert t["blocks_ok"] >= 1 and t["final_bits"] > 0 and len(sb.ids()) == t["blocks_ok"]
    for bid in sb.ids():
        m = sb.meta(bid)
        assert m["bound"] == "lim2014" and 0 < m["final_length"] == m["secure_length"] < m["n_sifted"] == 1 << 16
        f = m["finitekey"]
        assert f["leak_ec"] == m["leakage"]["ec"] > 0 and f["verify_cost"] >= m["leakage"]["verify"]
        assert 0 < f["phi"] < 0.5 and 0 < f["s1"] <= 1 << 16 and f["v1_test"] >= 0
        # the bound never credits more than the sifted block minus what was disclosed
        assert m["final_length"] <= m["n_sifted"] - m["leakage"]["ec"] - m["leakage"]["verify"]


def test_block_counts_per_intensity_are_the_bounds_inputs(benign_run):
    """The block's per-intensity counts (sift/decoy.py, pipeline segments) add up and re-evaluate to its length."""
    rep, out = benign_run
    data = json.loads((out / "report.json").read_text())
    ok = [b for b in rep.blocks if b.status == "ok"]
    assert ok
    b = ok[0]
    st = b.extra["finitekey"]
    sift = data["front"]["sift"]["per_class"]
    # test-basis counts of the whole run (both parties know them) bound those handed to the block
    for c in range(3):
        assert sift[str(c)]["X"]["sifted"] > 0
    # re-evaluating Lim et al. on the block's public counts gives the same length
    stats = _block_stats(out, b.block_id)
    res = fk.lim2014([stats[f"n_key_c{c}"] for c in range(3)], [stats[f"n_test_c{c}"] for c in range(3)],
                     [stats[f"m_test_c{c}"] for c in range(3)], mu=MU, p_mu=P_MU, leak_ec=b.leak_ec,
                     eps_sec=Config().finitekey.eps_sec, eps_cor=b.extra["eps_cor"], tag_bits=b.leak_verify)
    assert res.length == b.secure_length and res.bounds["phi"] == pytest.approx(st["phi"])


def _block_stats(out, block_id):
    meta = KeyStore(out / "bob").meta(block_id)
    return meta["stats"]


def test_simulator_truth_inside_the_bounds_on_the_sifted_counts(benign, benign_run):
    """Issue 5: the simulator's true single-photon / vacuum counts respect Lim et al.'s bounds
    evaluated on the counts the sifting stage measured over the whole run (its per-class tally).

    Multi-photon pulses that click in both bases are sifted by the pipeline (random basis and
    bit, the squashing rule) but are not in the truth's per-photon-number tally; they need two
    or more photons, so the truth's single-photon and vacuum counts are those of the sifted set.
    """
    rep, out = benign_run
    truth = json.loads((benign / "truth.json").read_text())
    pc = json.loads((out / "report.json").read_text())["front"]["sift"]["per_class"]
    n_key = [pc[str(c)]["Z"]["sifted"] for c in range(3)]
    n_test = [pc[str(c)]["X"]["sifted"] for c in range(3)]
    m_test = [pc[str(c)]["X"]["test_errors"] for c in range(3)]
    res = fk.lim2014(n_key, n_test, m_test, mu=MU, p_mu=P_MU, leak_ec=0.0)

    def kept(basis, photons):
        tot = 0
        for name in truth["counts"]:
            e = truth["counts"][name][basis]["by_photon_number"][photons]
            tot += e["sifted"] + e["double_clicks"]
        return tot

    v1_true = sum(truth["counts"][c]["X"]["by_photon_number"]["1"]["errors"] for c in truth["counts"])
    assert kept("Z", "1") > 10_000
    assert 0 < res.bounds["s1"] <= kept("Z", "1")
    assert res.bounds["s0"] <= kept("Z", "0")
    assert 0 < res.bounds["s1_test"] <= kept("X", "1")
    assert res.bounds["v1_test"] >= v1_true
    assert res.bounds["s1"] >= 0.5 * kept("Z", "1")  # and not vacuous
    assert res.has_key


@pytest.mark.slow
@pytest.mark.parametrize("seed", [6, 7])
def test_benign_decoy_link_two_blocks_other_seeds(tmp_path, seed):
    write_link(DecoyConfig(duration_s=14.0, **LINK), tmp_path / "link", seed=seed)
    rep = run_local(tmp_path / "link/alice.arrow", tmp_path / "link/bob.arrow", tmp_path / "out", _cfg(), plot=False)
    same_stores(tmp_path / "out")
    t = rep.totals()
    assert t["blocks_ok"] >= 2 and t["final_bits"] > 0


def test_noisy_decoy_link_yields_no_key(tmp_path):
    """15 % misalignment: the bound itself (abort threshold lifted) gives no key; nothing is stored."""
    write_link(DecoyConfig(duration_s=7.0, **dict(LINK, misalignment_z=0.15, misalignment_x=0.15)),
               tmp_path / "link", seed=8)
    rep = run_local(tmp_path / "link/alice.arrow", tmp_path / "link/bob.arrow", tmp_path / "out",
                    _cfg(qber_abort=0.4), plot=False)
    t = rep.totals()
    assert t["blocks"] >= 1 and t["final_bits"] == 0 and "no_secure_length" in t["drop_reasons"]
    assert KeyStore(tmp_path / "out/alice").ids() == KeyStore(tmp_path / "out/bob").ids() == []
    assert np.all([b.secure_length == 0 for b in rep.blocks])


def test_one_decoy_link_gives_identical_positive_keys_with_rusca2018(tmp_path):
    """Two intensities: bound='auto' picks Rusca et al. 2018, fed with the key-basis errors per
    intensity that Bob counts from his corrections (labels carried with the block)."""
    mu1, p1 = (0.5, 0.2), (0.5, 0.5)
    write_link(DecoyConfig(duration_s=7.0, **dict(LINK, intensities=mu1, intensity_probs=p1)), tmp_path / "link",
               seed=5)
    cfg = _cfg(decoy_mu="0.5,0.2", decoy_p_mu="0.5,0.5")
    rep = run_local(tmp_path / "link/alice.arrow", tmp_path / "link/bob.arrow", tmp_path / "out", cfg, plot=False)
    sa, sb = same_stores(tmp_path / "out")
    assert rep.totals()["blocks_ok"] >= 1
    for bid in sb.ids():
        m = sb.meta(bid)
        assert m["bound"] == "rusca2018" and 0 < m["final_length"] == m["secure_length"]
        st, f = m["stats"], m["finitekey"]
        mk = f["m_key"]
        # Bob's corrections per intensity add up to the errors EC fixed in this block
        b = next(x for x in rep.blocks if x.block_id == bid)
        assert sum(mk) == b.errors_corrected > 0
        res = fk.rusca2018([st["n_key_c0"], st["n_key_c1"]], mk, [st["n_test_c0"], st["n_test_c1"]],
                           [st["m_test_c0"], st["m_test_c1"]], mu=mu1, p_mu=p1, leak_ec=b.leak_ec,
                           eps_sec=Config().finitekey.eps_sec, eps_cor=b.extra["eps_cor"], tag_bits=b.leak_verify)
        assert res.length == m["secure_length"]
    with pytest.raises(Exception, match="three for the two-decoy bound"):
        run_local(tmp_path / "link/alice.arrow", tmp_path / "link/bob.arrow", tmp_path / "out2",
                  cfg.replace(bound="lim2014"), plot=False)


def test_intercept_resend_on_the_decoy_link_yields_no_key(tmp_path):
    """The benign link above with every pulse intercepted and resent: the test basis shows ~25 %
    errors in every intensity class and the bound (abort threshold lifted) gives no key."""
    write_link(DecoyConfig(duration_s=7.0, **dict(LINK, intercept_resend=1.0)), tmp_path / "link", seed=5)
    rep = run_local(tmp_path / "link/alice.arrow", tmp_path / "link/bob.arrow", tmp_path / "out",
                    _cfg(qber_abort=0.45), plot=False)
    t = rep.totals()
    assert t["blocks"] >= 1 and t["final_bits"] == 0 and "no_secure_length" in t["drop_reasons"]
    assert KeyStore(tmp_path / "out/alice").ids() == KeyStore(tmp_path / "out/bob").ids() == []
    assert all(abs(b.qber_estimate - 0.25) < 0.04 for b in rep.blocks)
