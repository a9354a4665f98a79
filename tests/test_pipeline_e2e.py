"""End to end with qkdpost's own stages on simulated BBM92 links (loopback, one process)."""

import json
import math

import numpy as np
import pytest

from qkdpost.config import Config
from qkdpost.errors import ConfigError, FileFormatError
from qkdpost.keystore import KeyStore
from qkdpost.pipeline.kit import QkdpostKit
from qkdpost.pipeline.run import run_local
from qkdpost.simulate import BBM92Config, DecoyConfig, write_link
from pipeline_kit import same_stores

DUR = 1.5


def _cfg(**kw):
    base = dict(block_bits=1 << 15, seed=9, acquisition_s=0.5)
    base.update(kw)
    return Config().replace(**base)


@pytest.fixture(scope="module")
def benign(tmp_path_factory):
    d = tmp_path_factory.mktemp("benign")
    write_link(BBM92Config(duration_s=DUR), d, seed=31)
    return d


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    d = tmp_path_factory.mktemp("noisy")
    write_link(BBM92Config(duration_s=DUR, misalignment_z=0.15, misalignment_x=0.15), d, seed=32)
    return d


def test_benign_link_cascade_gives_identical_positive_keys(benign, tmp_path):
    rep = run_local(benign / "alice.arrow", benign / "bob.arrow", tmp_path, _cfg(), plot=False)
    sa, sb = same_stores(tmp_path)
    t = rep.totals()
    assert t["blocks_ok"] >= 2 and t["final_bits"] > 0 and t["blocks_ok"] == len(sb.ids())
    for bid in sb.ids():
        m = sb.meta(bid)
        assert 0 < m["final_length"] == m["secure_length"] < m["n_sifted"]
        assert m["bound"] == "tomamichel2012" and m["leakage"]["ec"] > 0 and m["leakage"]["verify"] >= 64
        assert m["config"]["pipeline"]["block_bits"] == 1 << 15 and m["versions"]["qkdpost"]
        assert m["finitekey"]["leak_ec"] == m["leakage"]["ec"]  # the bound used the actual leakage
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["totals"]["final_bits"] == t["final_bits"] and data["config"]["reconcile"]["ec_method"] == "cascade"
    for b in data["blocks"]:
        assert b["status"] == "ok" or b["reason"]
    assert 1.0 < t["mean_efficiency"] < 1.3


def test_noisy_link_15_percent_yields_no_key_and_says_why(noisy, tmp_path):
    rep = run_local(noisy / "alice.arrow", noisy / "bob.arrow", tmp_path, _cfg(), plot=False)
    t = rep.totals()
    assert t["final_bits"] == 0 and t["blocks_ok"] == 0 and t["blocks"] >= 1
    assert set(t["drop_reasons"]) == {"qber_abort"}
    assert KeyStore(tmp_path / "alice").ids() == KeyStore(tmp_path / "bob").ids() == []
    # without the abort threshold, the bound itself gives zero
    rep = run_local(noisy / "alice.arrow", noisy / "bob.arrow", tmp_path / "b", _cfg(qber_abort=0.4), plot=False)
    t = rep.totals()
    assert t["final_bits"] == 0 and set(t["drop_reasons"]) <= {"no_secure_length", "verify_failed", "ec_failed"}
    assert "no_secure_length" in t["drop_reasons"]


@pytest.mark.parametrize("fraction", [1.0, 0.45])
def test_intercept_resend_link_yields_no_key(tmp_path, fraction):
    """Eve measures a fraction of Bob's photons in a random basis and resends them (simulator):
    QBER about fraction/4 on top of the misalignment. Full interception trips the abort
    threshold; at 0.45 (QBER ~12 %, abort lifted) the finite-key bound itself gives zero."""
    write_link(BBM92Config(duration_s=DUR, intercept_resend=fraction), tmp_path / "link", seed=33)
    rep = run_local(tmp_path / "link/alice.arrow", tmp_path / "link/bob.arrow", tmp_path / "out",
                    _cfg(qber_abort=0.4 if fraction < 1 else 0.11), plot=False)
    t = rep.totals()
    assert t["blocks"] >= 1 and t["final_bits"] == 0 and t["blocks_ok"] == 0
    assert KeyStore(tmp_path / "out/alice").ids() == KeyStore(tmp_path / "out/bob").ids() == []
    q = np.mean([b.qber_estimate for b in rep.blocks])
    assert abs(q - (fraction / 4 + 0.0125)) < 0.03  # the attack shows in the test basis
    want = "qber_abort" if fraction == 1.0 else "no_secure_length"
    assert want in t["drop_reasons"]


class _MiscorrectOnce(QkdpostKit):
    """Flips one of Bob's corrected bits in the second block: verification must catch it."""

    def reconcile_bob(self, channel, method, ids, bits, qber, cfg, *, seed):
        res = super().reconcile_bob(channel, method, ids, bits, qber, cfg, seed=seed)
        for i, bid in enumerate(ids):  # the block may share its batch with others
            if bid.endswith("-0000001"):
                res.bits[i, 17] ^= 1
        return res


def test_verification_failure_drops_block_on_both_sides(benign, tmp_path):
    rep = run_local(benign / "alice.arrow", benign / "bob.arrow", tmp_path, _cfg(), plot=False,
                    kit=_MiscorrectOnce())
    sa, sb = same_stores(tmp_path)
    reasons = {b.index: b.reason for b in rep.blocks}
    assert reasons[1] == "verify_failed" and all(r == "" for i, r in reasons.items() if i != 1)
    bid = rep.blocks[1].block_id
    assert sb.state(bid) == sa.state(bid) == "dropped" and sb.drop_reason(bid) == "verify_failed"
    alice_rep = json.loads((tmp_path / "alice/report.json").read_text())
    assert {b["block_id"]: b["reason"] for b in alice_rep["blocks"]}[bid] == "verify_failed"


def test_corrupt_input_stops_with_clear_error_and_keeps_earlier_keys(benign, tmp_path):
    bad = tmp_path / "bob_bad.arrow"
    raw = bytearray((benign / "bob.arrow").read_bytes())
    pos = int(len(raw) * 0.8)
    raw[pos:pos + 64] = bytes(64)
    bad.write_bytes(bytes(raw))
    with pytest.raises(FileFormatError):
        run_local(benign / "alice.arrow", bad, tmp_path / "out", _cfg(), plot=False)
    data = json.loads((tmp_path / "out/report.json").read_text())
    assert "input_error" in data and str(bad) in data["input_error"]["file"]
    same_stores(tmp_path / "out")


def test_decoy_link_runs_end_to_end_with_lim2014(tmp_path):
    """Decoy BB84 (Alice's slot log, Bob's timestamps + sync): blocks go through every
    stage and the two-decoy bound of Lim et al. 2014 on per-intensity counts. On the
    simulator's default link shape (here 10 dB, p_Z = 0.8, weak decoys) a 2^16-bit
    block leaves no key (its small test basis; a balanced link gets a key at 2^16
    bits, tests/test_pipeline_decoy.py): the block is dropped on both sides with the
    bound's reason."""
    write_link(DecoyConfig(duration_s=0.05, loss_db=10), tmp_path / "link", seed=1)
    cfg = _cfg(block_bits=1 << 16, decoy_mu="0.5,0.1,0.0002", decoy_p_mu="0.7,0.2,0.1")
    rep = run_local(tmp_path / "link/alice.arrow", tmp_path / "link/bob.arrow", tmp_path / "out", cfg, plot=False)
    assert rep.info["front"]["topology"] == "decoy" and len(rep.blocks) >= 1
    b = rep.blocks[0]
    assert b.bound == "lim2014" and b.errors_corrected > 0 and b.leak_ec > 0
    fk = b.extra["finitekey"]
    assert {"s0", "s1", "v1_test", "phi"} <= set(fk) and fk["leak_ec"] == b.leak_ec
    assert b.status == "dropped" and b.reason == "no_secure_length"
    same_stores(tmp_path / "out")
    # the intensities are configuration; without them the bound cannot run
    with pytest.raises(ConfigError, match="decoy_mu=''"):
        run_local(tmp_path / "link/alice.arrow", tmp_path / "link/bob.arrow", tmp_path / "o2", _cfg(block_bits=1 << 16),
                  plot=False)


def test_topology_mismatch_is_a_config_error(benign, tmp_path):
    with pytest.raises(ConfigError, match="topology='decoy' needs Alice's emission log"):
        run_local(benign / "alice.arrow", benign / "bob.arrow", tmp_path, _cfg(topology="decoy"), plot=False)


def test_rerun_and_report_plot(benign, tmp_path):
    cfg = _cfg(block_bits=1 << 16, workers=1)
    run_local(benign / "alice.arrow", benign / "bob.arrow", tmp_path, cfg)
    same_stores(tmp_path)
    n = len(KeyStore(tmp_path / "bob").ids())
    assert n >= 1 and (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    rep = run_local(benign / "alice.arrow", benign / "bob.arrow", tmp_path, cfg, plot=False)
    assert rep.totals()["final_bits"] == 0 and len(KeyStore(tmp_path / "bob").ids()) == n
    assert set(rep.totals()["drop_reasons"]) == {"already_stored"}


def test_benign_link_ldpc_gives_identical_keys(benign, tmp_path):
    rep = run_local(benign / "alice.arrow", benign / "bob.arrow", tmp_path, _cfg(ec_method="ldpc", block_bits=40000),
                    plot=False)
    sa, sb = same_stores(tmp_path)
    assert rep.totals()["blocks_ok"] >= 1
    for bid in sb.ids():
        m = sb.meta(bid)
        assert m["ec_method"] == "ldpc" and m["leakage"]["ec"] > 0 and m["final_length"] > 0


def test_ldpc_split_covers_the_block_in_near_equal_frames():
    """Frames as long as the block allows up to the best frame at the QBER (adapt.frame_length:
    no puncturing), near-equal, within one code's range; a QBER no code serves still gets a cut
    (the LDPC plan then refuses it with its own error)."""
    from qkdpost.pipeline.kit import ldpc_split

    from qkdpost.errors import InputError
    from qkdpost.reconcile.ldpc import available_codes
    from qkdpost.reconcile.ldpc.adapt import MIN_FILL, frame_length

    sizes = sorted({int(c["n"]) for c in available_codes()})
    for q in (0.02, 0.05, 0.08, 0.3):
        for n in (14000, 40000, 58982, 10**6, 1 << 20, 10**7):
            parts = ldpc_split(n, q)
            assert sum(parts) == n and max(parts) - min(parts) <= 1
            size = min(s for s in sizes if max(parts) <= s)
            assert MIN_FILL * size <= min(parts)
            if q < 0.3 and n >= 10**6:
                assert size == 2**18 and max(parts) <= frame_length(q, size)
                assert len(parts) == math.ceil(n / frame_length(q, size))
    with pytest.raises(InputError, match="cannot be cut"):
        ldpc_split(1000, 0.05)
    # a cap on the code length (config reconcile.ldpc_code_bits) picks shorter, faster codes
    assert max(ldpc_split(10**6, 0.05)) > 65536 >= max(ldpc_split(10**6, 0.05, 65536)) > 0.8 * 65536
    assert sum(ldpc_split(10**6, 0.05, 65536)) == 10**6
    with pytest.raises(InputError, match="ldpc_code_bits=1000"):
        ldpc_split(10**6, 0.05, 1000)
