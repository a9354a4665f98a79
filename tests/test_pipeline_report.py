"""Report: per-block records, totals, JSON without NaN, plots."""

import json
import math

import numpy as np

from qkdpost.bits import binary_entropy
from qkdpost.report import BlockRecord, Report, plot_report, write_json_atomic


def _rec(i, status="ok", reason="", n=1000, err=20, leak=170, final=500, t=1.0):
    return BlockRecord(block_id=f"r-{i:07d}", index=i, n_sifted=n, status=status, reason=reason,
                       errors_corrected=err, leak_ec=leak, leak_verify=64, final_length=final,
                       qber_observed=err / n, qber_estimate=0.021, stream_time_s=t,
                       times_s={"reconcile": 0.5, "amplify": 0.1}, round_trips={"reconcile": 7}, bytes={"reconcile": 900})


def test_efficiency_is_leak_over_n_h_of_corrected_error_fraction():
    r = _rec(0)
    assert math.isclose(r.efficiency, 170 / (1000 * binary_entropy(0.02)))
    assert math.isnan(_rec(1, err=-1).efficiency) and math.isnan(_rec(2, err=0).efficiency)


def test_totals_and_reasons(tmp_path):
    rep = Report("bob", {"pipeline": {"block_bits": 1000}}, stream_duration_s=4.0)
    rep.add_block(_rec(0, t=1.0))
    rep.add_block(_rec(1, "dropped", "verify_failed", final=0, t=2.0))
    rep.add_block(_rec(2, "dropped", "no_secure_length", final=0, t=3.0))
    rep.add_time("sift", 2.0, 3, 100)
    rep.add_count("detections_bob", 10_000)
    rep.finish()
    t = rep.totals()
    assert t["blocks_ok"] == 1 and t["blocks_dropped"] == 2 and t["final_bits"] == 500
    assert t["drop_reasons"] == {"verify_failed": 1, "no_secure_length": 1}
    assert t["round_trips"] == 3 * 7 + 3 and t["bytes"] == 3 * 900 + 100
    assert t["secret_key_rate_bps"] == 500 / 4.0 and t["detections_bob"] == 10_000
    assert math.isclose(t["time_per_stage_s"]["reconcile"], 1.5)
    rep.add_block(_rec(3, err=-1, leak=0, final=0, status="dropped", reason="qber_abort"))  # NaN efficiency
    path = rep.write(tmp_path)
    data = json.loads(path.read_text())  # strict JSON: NaN became null
    assert data["blocks"][3]["efficiency"] is None and data["versions"]["qkdpost"]
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert "1 kept, 3 dropped" in rep.summary()


def test_write_json_atomic_and_plot_of_empty_report(tmp_path):
    write_json_atomic(tmp_path / "x.json", {"a": np.float64("nan"), "b": np.int64(3), "c": np.arange(2)})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": 3, "c": [0, 1]}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
    plot_report(Report("alice", {}).to_dict(), tmp_path / "empty.png")
    assert (tmp_path / "empty.png").stat().st_size > 0


def test_write_json_atomic_leaves_nothing_behind_on_error(tmp_path):
    import pytest

    (tmp_path / "x.json").write_text('{"old": 1}\n')
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "x.json", {"a": 1, "b": object()})  # not JSON: fails mid-write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]  # no half-written temporary
    assert json.loads((tmp_path / "x.json").read_text()) == {"old": 1}
