"""``qkdpost run`` / ``qkdpost serve``: in-process CLI tests and one two-process smoke test over TCP."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from qkdpost.cli import main
from qkdpost.keystore import KeyStore
from qkdpost.simulate import BBM92Config, write_link

FLAGS = ["--block-bits", "32768", "--acquisition-s", "0.5", "--seed", "4"]


@pytest.fixture(scope="module")
def link(tmp_path_factory):
    d = tmp_path_factory.mktemp("clilink")
    write_link(BBM92Config(duration_s=1.2), d, seed=41)
    return d


def test_run_one_process(link, tmp_path, capsys):
    rc = main(["run", "--alice", str(link / "alice.arrow"), "--bob", str(link / "bob.arrow"),
               "--out", str(tmp_path), "--no-plot", *FLAGS])
    out = capsys.readouterr().out
    assert rc == 0 and "kept" in out and "report:" in out
    assert KeyStore(tmp_path / "alice").ids() == KeyStore(tmp_path / "bob").ids() != []
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["config"]["pipeline"]["block_bits"] == 32768 and data["totals"]["blocks_ok"] >= 1


def test_run_config_file_and_flag_layering(link, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[pipeline]\nblock_bits = 16384\n[align]\nacquisition_s = 0.5\n")
    rc = main(["run", "--alice", str(link / "alice.arrow"), "--bob", str(link / "bob.arrow"), "--out",
               str(tmp_path / "o"), "--no-plot", "--config", str(cfg), "--block-bits", "32768"])
    assert rc == 0
    data = json.loads((tmp_path / "o/report.json").read_text())
    assert data["config"]["pipeline"]["block_bits"] == 32768 and data["config"]["align"]["acquisition_s"] == 0.5


@pytest.mark.parametrize("argv, match", [
    (["run", "--bob", "b.arrow", "--out", "x"], "--alice FILE is required"),
    (["run", "--alice", "a", "--out", "x"], "--bob FILE"),
    (["run", "--role", "bob", "--bob", "b", "--out", "x"], "needs --peer"),
    (["run", "--role", "bob", "--bob", "b", "--peer", "h:99999", "--out", "x"], "HOST:PORT"),
    (["run", "--alice", "a", "--bob", "b", "--out", "x", "--ec-method", "turbo"], "ec_method='turbo'"),
])
def test_bad_arguments_exit_1_with_message(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    assert re.search(match, capsys.readouterr().err)


def test_missing_input_file_is_a_clear_error(tmp_path, capsys):
    rc = main(["run", "--alice", str(tmp_path / "nope.arrow"), "--bob", str(tmp_path / "nope2.arrow"),
               "--out", str(tmp_path / "o"), "--no-plot"])
    assert rc == 1 and "nope" in capsys.readouterr().err


def test_two_processes_over_tcp_smoke(link, tmp_path):
    """`qkdpost serve --role alice` and `qkdpost run --role bob` as real processes, the channel
    authenticated with a pre-shared key file: same keys."""
    exe = [sys.executable, "-c", "import sys; from qkdpost.cli import main; sys.exit(main(sys.argv[1:]))"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    key = tmp_path / "auth.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    auth = ["--auth-key-file", str(key)]
    alice = subprocess.Popen(exe + ["serve", "--role", "alice", "--input", str(link / "alice.arrow"),
                                    "--listen", "127.0.0.1:0", "--out", str(tmp_path / "alice"),
                                    "--sessions", "1", "--idle-timeout", "60", "--no-plot", *FLAGS, *auth],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        line = ""
        t0 = time.time()
        while "listening on" not in line and time.time() - t0 < 60:
            line = alice.stdout.readline()
            if not line and alice.poll() is not None:
                break
        port = int(line.rsplit(":", 1)[1])
        bob = subprocess.run(exe + ["run", "--role", "bob", "--input", str(link / "bob.arrow"),
                                    "--peer", f"127.0.0.1:{port}", "--out", str(tmp_path / "bob"), *FLAGS, *auth],
                             capture_output=True, text=True, timeout=300, env=env)
        assert bob.returncode == 0, bob.stderr[-3000:]
        alice.wait(60)
        assert alice.returncode == 0
    finally:
        if alice.poll() is None:
            alice.kill()
            alice.wait()
    sa, sb = KeyStore(tmp_path / "alice"), KeyStore(tmp_path / "bob")
    assert sa.ids() == sb.ids() != []
    for bid in sb.ids():
        assert (tmp_path / "alice/keys" / bid / "key.bin").read_bytes() == (tmp_path / "bob/keys" / bid / "key.bin").read_bytes()
    assert (tmp_path / "alice/report.json").exists() and (tmp_path / "bob/report.png").exists()
    assert not (tmp_path / "alice/report.png").exists()
