"""``qkdpost config``: in-process CLI tests."""

import json

from qkdpost import config as C
from qkdpost.cli import main


def test_show_prints_loadable_toml(tmp_path, capsys):
    assert main(["config", "--show", "--block-bits", "4096", "--ec-method", "ldpc"]) == 0
    out = capsys.readouterr().out
    p = tmp_path / "shown.toml"
    p.write_text(out)
    cfg = C.load_config(p)
    assert cfg.pipeline.block_bits == 4096 and cfg.reconcile.ec_method == "ldpc"


def test_show_json_and_file(tmp_path, capsys):
    p = tmp_path / "c.toml"
    p.write_text("[finitekey]\neps_sec = 1e-6\n")
    assert main(["config", "--json", "--config", str(p)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["finitekey"]["eps_sec"] == 1e-6


def test_bad_value_exits_1_with_message(capsys):
    assert main(["config", "--block-bits", "7"]) == 1
    err = capsys.readouterr().err
    assert "block_bits=7" in err and "1048576" in err
