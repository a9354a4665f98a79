"""Two processes over TCP on 127.0.0.1; kill -9 either one mid-run and restart it.

Invariants checked after the run completes: both stores hold byte-identical
keys under identical ids, nothing is left pending on Alice's side, no key is
written twice (each id is a single directory) and every block is either
final on both sides or dropped/started (never final on one side only).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qkdpost.keystore import KeyStore
from qkdpost.simulate import BBM92Config, write_link

HERE = Path(__file__).parent
PY = sys.executable


@pytest.fixture(scope="module")
def link(tmp_path_factory):
    d = tmp_path_factory.mktemp("killlink")
    write_link(BBM92Config(duration_s=2.0), d, seed=21)
    return d


def _start(role, link, out, where, kind="toy"):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([PY, str(HERE / "pipeline_proc.py"), role, str(link), str(out), str(where), kind],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def _wait_port(portfile, proc, timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if portfile.exists():
            return int(portfile.read_text())
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read().decode()[-3000:])
        time.sleep(0.05)
    raise AssertionError("alice did not start listening")


def _wait_keys(store_dir, n, proc, timeout=90):
    t0 = time.time()
    while time.time() - t0 < timeout:
        keys = store_dir / "keys"
        if keys.is_dir() and len(list(keys.iterdir())) >= n:
            return
        if proc.poll() is not None:
            return
        time.sleep(0.01)


def _check_invariants(a_dir, b_dir):
    sa, sb = KeyStore(a_dir), KeyStore(b_dir)
    assert sa.ids("pending") == []
    assert sa.ids() == sb.ids() and len(sb.ids()) > 0
    for bid in sb.ids():
        assert (a_dir / "keys" / bid / "key.bin").read_bytes() == (b_dir / "keys" / bid / "key.bin").read_bytes()
    for bid in sb.ids("started") + sa.ids("started"):
        assert sa.state(bid) != "final" and sb.state(bid) != "final"
    return sa, sb


def _finish(proc, timeout=120):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError("process did not finish: " + out.decode()[-3000:])
    return proc.returncode, out.decode()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["toy", "real"])
@pytest.mark.parametrize("victim", ["bob", "alice"])
def test_kill_9_and_restart_keeps_stores_equal(link, tmp_path, victim, kind):
    a_dir, b_dir = tmp_path / "alice", tmp_path / "bob"
    portfile = tmp_path / "port"
    alice = _start("alice", link, a_dir, portfile, kind)
    port = _wait_port(portfile, alice)
    bob = _start("bob", link, b_dir, port, kind)
    try:
        _wait_keys(b_dir, 2, bob)
        target = bob if victim == "bob" else alice
        os.kill(target.pid, signal.SIGKILL)
        target.wait(10)
        if victim == "bob":
            bob = _start("bob", link, b_dir, port, kind)
        else:
            portfile.unlink()
            # Alice comes back on a new port: Bob's reconnects go to the old one, so
            # restart Bob too once his retries are exhausted is not wanted; instead
            # restart Alice on the same port.
            alice = _start("alice", link, a_dir, f"{portfile}", kind)
            newport = _wait_port(portfile, alice)
            if newport != port:
                os.kill(bob.pid, signal.SIGKILL)
                bob.wait(10)
                bob = _start("bob", link, b_dir, newport, kind)
        rc, out = _finish(bob)
        if rc != 0 and alice.poll() is not None:
            out += "\n--- alice ---\n" + alice.stdout.read().decode()[-3000:]
        assert rc == 0, out[-6000:]
    finally:
        for p in (alice, bob):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
    sa, sb = _check_invariants(a_dir, b_dir)
    # a third run over the same inputs adds nothing
    before = sb.ids()
    portfile.unlink(missing_ok=True)
    alice = _start("alice", link, a_dir, portfile, kind)
    port = _wait_port(portfile, alice)
    bob = _start("bob", link, b_dir, port, kind)
    rc, out = _finish(bob)
    alice.send_signal(signal.SIGTERM)
    alice.wait(10)
    assert rc == 0, out[-3000:]
    assert KeyStore(b_dir).ids() == before == KeyStore(a_dir).ids()
