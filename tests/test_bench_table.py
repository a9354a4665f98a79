"""`qkdpost bench`: every stage row is measured (a broken stage shows as failed, not as a number)."""

import math

from qkdpost.pipeline.bench import format_table, run_bench


def test_bench_rows_measure_every_stage_on_small_inputs():
    rows = run_bench(bits=16384, qber=0.02, repeat=1, chain=False)
    stages = [r.stage for r in rows]
    assert "reconcile: cascade" in stages and "reconcile: ldpc" in stages
    for r in rows:
        assert "failed" not in r.size, (r.stage, r.size)
        assert math.isfinite(r.ours_per_s) and r.ours_per_s > 0, r
    rec = {r.stage: r for r in rows if r.stage.startswith("reconcile")}
    # as a session runs them: several frames per call, f of the true error fraction
    assert rec["reconcile: cascade"].size.startswith("4 x n=16384")
    assert rec["reconcile: ldpc"].size.startswith("8 x n=16384")
    assert "reconcile: cascade" in format_table(rows)
