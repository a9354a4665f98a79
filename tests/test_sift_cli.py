"""``qkdpost sift`` and ``qkdpost demo`` end to end on simulated files."""

import json
import os

import numpy as np
import pytest

from qkdpost.cli import main


@pytest.fixture(scope="module")
def link_dir(tmp_path_factory):
    from qkdpost.simulate import BBM92Config, write_link

    d = tmp_path_factory.mktemp("link")
    write_link(BBM92Config(duration_s=2.0, pair_rate_hz=2e6, bob_offset_s=-0.123, bob_freq_ppm=33.0), d, seed=5)
    return d


def test_sift_cli_writes_bits_and_report(link_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["sift", "--alice", str(link_dir / "alice.arrow"), "--bob", str(link_dir / "bob.arrow"),
               "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "QBER test" in text and "round trips" in text
    ka, kb = np.load(out / "alice_key.npy"), np.load(out / "bob_key.npy")
    ta, tb = np.load(out / "alice_test.npy"), np.load(out / "bob_test.npy")
    assert ka.dtype == np.uint8 and ka.shape == kb.shape and ta.shape == tb.shape and ka.size > 1000
    rep = json.loads((out / "report.json").read_text())
    truth = json.loads((link_dir / "truth.json").read_text())
    assert abs(rep["alignment"]["offset_s"] - truth["clock"]["offset_s"]) < 1e-9
    assert abs(rep["alignment"]["freq_ppm"] - truth["clock"]["freq_ppm"]) < 0.01
    assert rep["key_bits"] == ka.size and rep["bob"]["key_pairs"] == ka.size
    assert rep["qber_test"]["errors"] == int(np.count_nonzero(ta != tb))
    assert rep["channel"]["round_trips"] > 1 and rep["channel"]["bytes_received"] > 0
    # key-basis error rate close to the simulator's truth (plus a little from accidentals)
    assert abs(np.mean(ka != kb) - truth["coincidences"]["Z"]["qber"]) < 0.006
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_sift_cli_unrelated_files_fail_clearly(link_dir, tmp_path, capsys):
    from qkdpost.simulate import BBM92Config, write_link

    other = tmp_path / "other"
    write_link(BBM92Config(duration_s=2.0, pair_rate_hz=2e6), other, seed=99)
    out = tmp_path / "out"
    rc = main(["sift", "--alice", str(link_dir / "alice.arrow"), "--bob", str(other / "bob.arrow"),
               "--out", str(out), "--quiet"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "no significant coincidence peak" in err
    assert not out.exists()  # nothing written


def test_sift_cli_missing_file(tmp_path, capsys):
    rc = main(["sift", "--alice", str(tmp_path / "nope.arrow"), "--bob", str(tmp_path / "nope2.arrow"),
               "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 1
    assert "no such file" in capsys.readouterr().err


def test_demo_runs(capsys, tmp_path):
    rc = main(["demo", "--duration", "2", "--out", str(tmp_path / "d")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "truth" in text and "key bits each" in text
    rep = json.loads((tmp_path / "d" / "report.json").read_text())
    assert abs(rep["alignment"]["offset_s"] - rep["truth"]["clock"]["offset_s"]) < 1e-9


def test_sift_cli_decoy_files(tmp_path, capsys):
    from qkdpost.simulate import DecoyConfig, write_link

    d = tmp_path / "link"
    write_link(DecoyConfig(duration_s=0.05, bob_offset_s=0.41), d, seed=6)
    out = tmp_path / "out"
    assert main(["sift", "--alice", str(d / "alice.arrow"), "--bob", str(d / "bob.arrow"), "--out", str(out)]) == 0
    assert "class 0" in capsys.readouterr().out
    ka, kb, kc = np.load(out / "alice_key.npy"), np.load(out / "bob_key.npy"), np.load(out / "key_class.npy")
    assert ka.shape == kb.shape == kc.shape and ka.size > 1000
    rep = json.loads((out / "report.json").read_text())
    truth = json.loads((d / "truth.json").read_text())
    assert rep["topology"] == "decoy" and rep["slot_offset"]["slot_offset"] == 0
    assert abs(np.mean(ka != kb) - truth["qber"]["Z"]) < 0.01


def test_demo_decoy_gives_key(capsys):
    assert main(["demo", "--topology", "decoy"]) == 0
    out = capsys.readouterr().out
    assert "bound lim2014" in out and "their key stores are identical" in out
    kept = int(out.split("final key bits:")[1].split()[0])
    assert kept > 0


def test_sift_cli_failed_write_leaves_no_output(link_dir, tmp_path, monkeypatch):
    # a failure while writing Bob's key file (e.g. disk full) must not leave
    # Alice's key file (or any other output) behind
    from qkdpost.cli.sift import sift_config_from_args, sift_files
    from qkdpost.cli import build_parser

    real_save = np.save
    calls = []

    def failing_save(f, arr, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_save(f, arr, *a, **k)

    monkeypatch.setattr(np, "save", failing_save)
    args = build_parser().parse_args(["sift", "--alice", "a", "--bob", "b", "--out", "o"])
    out = tmp_path / "out"
    with pytest.raises(OSError):
        sift_files(str(link_dir / "alice.arrow"), str(link_dir / "bob.arrow"), str(out),
                   sift_config_from_args(args), progress=False)
    assert len(calls) == 2
    assert not out.exists() or os.listdir(out) == []


def test_sift_cli_unusable_out_dir_fails_clearly(link_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["sift", "--alice", str(link_dir / "alice.arrow"), "--bob", str(link_dir / "bob.arrow"),
               "--out", str(blocker / "out"), "--quiet"])
    assert rc == 1
    assert "--out" in capsys.readouterr().err
