"""``qkdpost convert`` and ``qkdpost info`` end to end, in-process."""

import json
import os

import numpy as np
import pytest

from oracles import io as O
from qkdpost.cli import main
from qkdpost.io import read_stream


def test_convert_ptu_then_info(tmp_path, capsys):
    src = tmp_path / "bob.ptu"
    events = [("sync", 10, 0), ("photon", 20, 0), ("photon", 35, 3), ("marker", 36, 2), ("photon", 1 << 26, 1)]
    O.write_ptu(src, events, "GenericT2", resolution=5e-12)
    out = tmp_path / "bob.arrow"
    assert main(["convert", str(src), str(out), "--channel-map", "1=H,2=V,3=D,4=A", "--party", "bob"]) == 0
    assert "wrote 5 events" in capsys.readouterr().out
    info, it = read_stream(out)
    chunks = list(it)
    assert info.party == "bob" and info.tick_s == 5e-12
    assert info.channel_map[1] == "H" and info.channel_map[4] == "A" and info.channel_map[0] == "sync"
    assert np.concatenate([c.t for c in chunks]).tolist() == [10, 20, 35, 36, 1 << 26]
    assert np.concatenate([c.ch for c in chunks]).tolist() == [0, 1, 4, 0x82, 2]

    assert main(["info", str(out), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["events"] == 5 and s["first_tick"] == 10 and s["last_tick"] == 1 << 26
    assert s["counts"] == {"0": [1, "sync"], "1": [1, "H"], "2": [1, "V"], "4": [1, "A"], "130": [1, "marker"]}
    assert abs(s["duration_s"] - ((1 << 26) - 10) * 5e-12) < 1e-18
    assert main(["info", str(src)]) == 0
    text = capsys.readouterr().out
    assert "events     5" in text and "marker records: 1" in text and "overflow records: 1" in text  # one v2 record counting 2 wraps


def test_convert_qcrypto_options_and_errors_leave_no_output(tmp_path, capsys):
    src = tmp_path / "alice.raw"
    src.write_bytes(O.encode_qcrypto([5, 9, 3_000_000, 10], [1, 2, 4, 8]))  # last one goes far back
    out = tmp_path / "alice.arrow"
    assert main(["convert", str(src), str(out)]) == 1  # format cannot be guessed
    assert "cannot tell the format" in capsys.readouterr().err
    assert main(["convert", str(src), str(out), "--format", "qcrypto"]) == 1
    err = capsys.readouterr().err
    assert "alice.raw at byte 24: record 3" in err and "goes" not in err
    assert sorted(os.listdir(tmp_path)) == ["alice.raw"]  # no partial or temporary output
    assert main(["convert", str(src), str(out), "--format", "qcrypto", "--reorder-window-s", "1e-3"]) == 0
    assert list(read_stream(out)[1])[0].t.tolist() == [5, 9, 10, 3_000_000]
    assert main(["convert", str(src), str(out), "--format", "qcrypto", "--no-markers"]) == 1
    assert "does not take" in capsys.readouterr().err


def test_summary_of_a_slot_log_counts_slot_periods(tmp_path):
    from qkdpost.io import StreamInfo, StreamWriter
    from qkdpost.io.tools import summarize

    info = StreamInfo(tick_s=1e-12, kind="slots", party="alice", slot_period_ticks=10_000)  # 100 MHz slots
    with StreamWriter(tmp_path / "a.arrow", info) as w:
        w.write(np.arange(1001, dtype=np.int64), np.zeros(1001, np.uint8))
    s = summarize(tmp_path / "a.arrow")
    assert s["duration_s"] == pytest.approx(1000 * 10_000 * 1e-12)  # 1000 slot periods = 10 us
    assert s["rate_hz"] == pytest.approx(1001 / 1e-5)
