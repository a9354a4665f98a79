"""Pipeline orchestration (blocks, two-phase commit, drops, re-runs) with the toy kit."""

import threading

import numpy as np
import pytest

from qkdpost.channel import LoopbackChannel
from qkdpost.config import Config
from qkdpost.errors import ConfigError, PeerDisconnected, ProtocolError
from qkdpost.keystore import KeyStore
from qkdpost.pipeline.engine import AliceEngine, BobEngine
from qkdpost.pipeline.segments import BlockCutter, KeyBuffer, Segment
from qkdpost.report import Report

from pipeline_kit import ToyKit

BLOCK = 2048


def _cfg(**kw):
    # one block per batch unless a test says otherwise: the drop/resume tests
    # reason about single blocks (the default batches 4)
    return Config().replace(block_bits=BLOCK, seed=7, **{"batch_blocks": 1, **kw})


def _link(n, q, seed=1):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2, n, dtype=np.uint8)
    err = rng.random(n) < q
    return a, a ^ err.astype(np.uint8)


class _Pair:
    def __init__(self, tmp, cfg=None, kit=None, alice_cfg=None, bob_stream="bob-1", alice_stream="alice-1"):
        cfg = cfg or _cfg()
        self.kit = kit or ToyKit()
        self.sa, self.sb = KeyStore(tmp / "alice"), KeyStore(tmp / "bob")
        self.ra, self.rb = Report("alice", cfg.to_dict()), Report("bob", cfg.to_dict())
        self.alice = AliceEngine(alice_cfg or cfg, self.sa, self.ra, stream_id=alice_stream, kit=self.kit)
        self.chan = LoopbackChannel(self.alice)
        self.bob = BobEngine(cfg, self.chan, self.sb, self.rb, stream_id=bob_stream, kit=self.kit)

    def run(self, a, b, seg=3000, stats=None):
        self.bob.start()
        keys = []
        for i in range(0, len(a), seg):
            self.alice.push(Segment(a[i:i + seg]))
            keys += self.bob.push(Segment(b[i:i + seg], dict(stats or {})))
        keys += self.bob.finish()
        return keys


def test_both_stores_hold_identical_keys_under_identical_ids(tmp_path):
    a, b = _link(5 * BLOCK + 100, 0.002)
    p = _Pair(tmp_path)
    keys = p.run(a, b)
    assert len(keys) == 5 and p.sb.ids() == p.sa.ids() == [k.block_id for k in keys]
    for k in keys:
        ka, kb = p.sa.read(k.block_id), p.sb.read(k.block_id)
        np.testing.assert_array_equal(ka.bits, kb.bits)
        np.testing.assert_array_equal(ka.bits, k.bits)
        assert (tmp_path / "alice/keys" / k.block_id / "key.bin").read_bytes() == (
            tmp_path / "bob/keys" / k.block_id / "key.bin").read_bytes()
        assert kb.meta["leakage"]["verify"] == 64 and kb.meta["config"]["pipeline"]["block_bits"] == BLOCK
        assert kb.meta["final_length"] == len(kb.bits) == kb.meta["secure_length"]
    t = p.rb.totals()
    assert t["blocks_ok"] == 5 and t["final_bits"] == sum(len(k.bits) for k in keys)
    assert p.rb.info["unused_sifted_bits"] == 100
    assert p.ra.totals()["blocks_ok"] == 5
    assert p.sa.ids("pending") == [] and p.sb.ids("started") == [] and p.sa.ids("started") == []


def test_rerun_over_same_input_writes_nothing_new(tmp_path):
    a, b = _link(3 * BLOCK, 0.0)
    _Pair(tmp_path).run(a, b)
    before = sorted((tmp_path / "bob/keys").iterdir())
    p2 = _Pair(tmp_path)
    keys = p2.run(a, b)
    assert keys == [] and sorted((tmp_path / "bob/keys").iterdir()) == before
    assert p2.rb.totals()["drop_reasons"] == {"already_stored": 3}
    assert p2.ra.totals()["drop_reasons"] == {"already_stored": 3}
    # a different input (other stream id) makes new ids
    p3 = _Pair(tmp_path, bob_stream="bob-2")
    assert len(p3.run(a, b)) == 3 and len(p3.sb.ids()) == 6


def test_rerun_with_another_block_size_is_refused_on_both_sides(tmp_path):
    # Other block boundaries would mean new block ids over bits already keyed.
    a, b = _link(3 * BLOCK, 0.0)
    _Pair(tmp_path).run(a, b)
    p2 = _Pair(tmp_path, cfg=Config().replace(block_bits=BLOCK // 2, seed=7))
    with pytest.raises(ProtocolError, match="ConfigError.*correlated keys"):
        p2.bob.start()  # Alice refuses first, at hello (her errors reach Bob as ProtocolError)
    half = Config().replace(block_bits=BLOCK // 2, seed=7)
    fresh_alice = AliceEngine(half, KeyStore(tmp_path / "fresh"), Report("alice", {}), stream_id="alice-1", kit=ToyKit())
    with pytest.raises(ConfigError, match="correlated keys"):  # Bob's own store refuses too
        BobEngine(half, LoopbackChannel(fresh_alice), p2.sb, Report("bob", {}), stream_id="bob-1", kit=ToyKit()).start()


def test_drop_reasons_reach_both_reports(tmp_path):
    a, b = _link(4 * BLOCK, 0.0)
    kit = ToyKit()
    p = _Pair(tmp_path, kit=kit)
    p.bob.start()
    kit.fail_verify = {p.bob.run_id + "-0000001"}
    stats = [{}, {}, {"penalty": 10 ** 6}, {"n_test": 100, "test_errors": 20}]
    keys = []
    for i in range(4):
        p.alice.push(Segment(a[i * BLOCK:(i + 1) * BLOCK]))
        keys += p.bob.push(Segment(b[i * BLOCK:(i + 1) * BLOCK], stats[i]))
    keys += p.bob.finish()
    assert [k.block_id[-1] for k in keys] == ["0"]
    want = {"verify_failed": 1, "no_secure_length": 1, "qber_abort": 1}
    assert p.rb.totals()["drop_reasons"] == want and p.ra.totals()["drop_reasons"] == want
    assert p.sa.ids() == p.sb.ids() == [keys[0].block_id]
    for idx, why in ((1, "verify_failed"), (2, "no_secure_length"), (3, "qber_abort")):
        bid = f"{p.bob.run_id}-{idx:07d}"
        assert p.sb.drop_reason(bid) == why and p.sa.drop_reason(bid) == why


class _Flaky(LoopbackChannel):
    """Loopback that loses the connection on a chosen request."""

    def __init__(self, responder, die_on):
        super().__init__(responder)
        self.die_on = die_on
        self.n = 0

    def request(self, kind, body):
        self.n += 1
        if self.die_on(self.n, kind):
            raise PeerDisconnected(f"simulated loss at request {self.n} ({kind})")
        return super().request(kind, body)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("kind", ["toy.parity", "toy.verify", "toy.seed", "pipe.prepare", "pipe.commit"])
def test_disconnect_mid_block_drops_it_on_both_sides_and_next_session_goes_on(tmp_path, kind, workers):
    a, b = _link(4 * BLOCK, 0.001)
    cfg = _cfg(workers=workers)
    sa, sb = KeyStore(tmp_path / "alice"), KeyStore(tmp_path / "bob")
    kit = ToyKit()
    seen = {"count": 0}
    count_lock = threading.Lock()  # lanes may send at once (the loopback is concurrent)

    def die_on(n, k):
        # Die at the second message of this kind: block 0 has passed that step,
        # a later block is inside it. Counting messages (not finished blocks)
        # keeps the trigger independent of thread timing when workers=2.
        if k == kind:
            with count_lock:
                seen["count"] += 1
                return seen["count"] == 2
        return False

    ra, rb = Report("alice", {}), Report("bob", {})
    alice = AliceEngine(cfg, sa, ra, stream_id="A", kit=kit)
    chan = _Flaky(alice, die_on)
    p_bob = BobEngine(cfg, chan, sb, rb, stream_id="B", kit=kit)
    p_bob.start()
    got = []
    with pytest.raises(PeerDisconnected):
        for i in range(4):
            alice.push(Segment(a[i * BLOCK:(i + 1) * BLOCK]))
            got += p_bob.push(Segment(b[i * BLOCK:(i + 1) * BLOCK]))
        got += p_bob.finish()
    alice.abandon("peer_disconnected")
    lost = [r.block_id for r in rb.blocks if r.reason == "peer_disconnected"]
    assert lost or kind == "pipe.commit"  # a lost commit leaves Bob's key final: nothing is dropped
    # Restart both parties from the beginning of their inputs (new session).
    ra2, rb2 = Report("alice", {}), Report("bob", {})
    alice2 = AliceEngine(cfg, sa, ra2, stream_id="A", kit=kit)
    bob2 = BobEngine(cfg, LoopbackChannel(alice2), sb, rb2, stream_id="B", kit=kit)
    bob2.start()
    for i in range(4):
        alice2.push(Segment(a[i * BLOCK:(i + 1) * BLOCK]))
        got += bob2.push(Segment(b[i * BLOCK:(i + 1) * BLOCK]))
    got += bob2.finish()
    # Every block is final on both sides or on neither; an interrupted block is
    # dropped on both sides unless only its commit message was lost.
    assert sa.ids() == sb.ids()
    assert sa.ids("pending") == []
    for bid in sb.ids():
        np.testing.assert_array_equal(sa.read(bid).bits, sb.read(bid).bits)
    all_ids = [f"{bob2.run_id}-{i:07d}" for i in range(4)]
    for bid in all_ids:
        final_a, final_b = sa.state(bid) == "final", sb.state(bid) == "final"
        assert final_a == final_b, (bid, sa.state(bid), sb.state(bid))
    for bid in lost:
        assert sb.state(bid) in ("dropped", "started") and sa.state(bid) in ("dropped", "started", None)
    # only the blocks in flight are lost: one batch with workers=1; with the back
    # half and the store in their own threads, the batch being computed, the one
    # being stored and the two the store queue holds (maxsize 2).
    assert len(sb.ids()) == 4 - len(lost) and len(lost) <= (1 if workers == 1 else 4)
    if kind != "pipe.commit":
        assert lost


def test_config_mismatch_refused_at_hello(tmp_path):
    p = _Pair(tmp_path, alice_cfg=_cfg(ec_method="ldpc"))
    with pytest.raises(ProtocolError, match="reconcile.ec_method: alice='ldpc' bob='cascade'"):
        p.bob.start()


def test_requests_before_hello_refused(tmp_path):
    p = _Pair(tmp_path)
    with pytest.raises(ProtocolError, match="before pipe.hello"):
        p.chan.request("pipe.pending", {})


def test_block_cutter_and_key_buffer():
    c = BlockCutter(10)
    c.add(Segment(np.arange(7) % 2, {"n_test": 3, "test_errors": 1, "t_end_s": 0.5}))
    assert list(c.blocks()) == []
    c.add(Segment(np.ones(15, np.uint8), {"n_test": 2}, t_end_s=1.5))
    out = list(c.blocks())
    assert [(s, len(b)) for s, b, _, _, _ in out] == [(0, 10), (10, 10)]
    np.testing.assert_array_equal(out[0][1], np.r_[np.arange(7) % 2, 1, 1, 1])
    # second segment: 3 of its 15 bits went to block 0 -> floor(2 * 3/15) = 0 test bits,
    # then 10 of the remaining 12 to block 1 -> floor(2 * 10/12) = 1
    assert out[0][2]["n_test"] == 3 and out[0][2]["test_errors"] == 1 and out[1][2]["n_test"] == 1
    assert out[0][3] == 1.5
    assert c.pending_bits == 2


def test_block_cutter_shares_counters_conservatively():
    c = BlockCutter(100)
    c.add(Segment(np.zeros(0, np.uint8), {"n_test": 4, "test_errors": 1}))  # bit-less: goes to next block
    c.add(Segment(np.zeros(350, np.uint8), {"n_test": 350, "test_errors": 7}))
    out = list(c.blocks())
    assert len(out) == 3 and c.pending_bits == 50
    n_tests = [s["n_test"] for _, _, s, _, _ in out]
    errs = [s["test_errors"] for _, _, s, _, _ in out]
    # the bit-less counters join the next segment: 354 test bits, 8 errors over 350 key bits
    assert n_tests == [101, 101, 101]  # floor(354 * 100/350), ...; the rest stays with the last 50 bits
    assert errs == [3, 2, 2]  # ceil(8 * 100/350) = 3, ceil(5 * 100/250) = 2, ceil(3 * 100/150) = 2
    c.add(Segment(np.zeros(50, np.uint8), {}))
    (last,) = list(c.blocks())
    assert last[2]["n_test"] == 354 - sum(n_tests) == 51  # totals exact for n_test
    assert last[2]["test_errors"] == 1


    kb = KeyBuffer()
    kb.append(np.arange(20, dtype=np.uint8) % 2)
    np.testing.assert_array_equal(kb.take(0, 10), np.arange(10) % 2)
    np.testing.assert_array_equal(kb.take(10, 5), np.arange(10, 15) % 2)
    with pytest.raises(ProtocolError, match="already used"):
        kb.take(0, 5)
    with pytest.raises(ProtocolError, match="out of step"):
        kb.take(15, 10)


class _RefuseCommit(LoopbackChannel):
    """Loopback whose pipe.commit comes back as Alice's error reply (she did not commit)."""

    def request(self, kind, body):
        if kind == "pipe.commit":
            raise ProtocolError("simulated: Alice could not answer 'pipe.commit'")
        return super().request(kind, body)


def test_failed_commit_keeps_alices_pending_copy_for_recovery(tmp_path):
    # Bob's keys are final once he sends pipe.commit; if Alice then answers with
    # an error, Bob must not tell her to drop (abort) her pending copies, or the
    # key would exist on Bob's side only. Recovery at the next session commits them.
    a, b = _link(2 * BLOCK, 0.001)
    cfg = _cfg()
    sa, sb = KeyStore(tmp_path / "alice"), KeyStore(tmp_path / "bob")
    kit = ToyKit()
    alice = AliceEngine(cfg, sa, Report("alice", {}), stream_id="A", kit=kit)
    bob = BobEngine(cfg, _RefuseCommit(alice), sb, Report("bob", {}), stream_id="B", kit=kit)
    bob.start()
    alice.push(Segment(a[:BLOCK]))
    with pytest.raises(ProtocolError):
        bob.push(Segment(b[:BLOCK]))
        bob.finish()
    assert len(sb.ids()) == 1
    assert sa.ids("pending") == sb.ids()  # still pending on Alice's side, not aborted
    alice2 = AliceEngine(cfg, sa, Report("alice", {}), stream_id="A", kit=kit)
    BobEngine(cfg, LoopbackChannel(alice2), sb, Report("bob", {}), stream_id="B", kit=kit).start()
    assert sa.ids() == sb.ids() and sa.ids("pending") == []
    np.testing.assert_array_equal(sa.read(sb.ids()[0]).bits, sb.read(sb.ids()[0]).bits)


class _ShortKeysForBlock1(ToyKit):
    """Bob's amplification makes a key shorter than the length agreed at pipe.final for block 1."""

    def amplify_bob(self, channel, ids, bits, lengths, cfg, *, seed):
        keys = super().amplify_bob(channel, ids, bits, lengths, cfg, seed=seed)
        return [k[:-8] if bid.endswith("-0000001") else k for bid, k in zip(ids, keys)]


@pytest.mark.parametrize("batch_blocks", [1, 2])
def test_final_length_mismatch_drops_the_block_on_both_sides(tmp_path, batch_blocks):
    a, b = _link(4 * BLOCK, 0.0)
    # one lane: the block after the bad one is not yet started when the run stops
    # (with two lanes it may be in flight and dropped too; see test_lanes_* below)
    p = _Pair(tmp_path, cfg=_cfg(batch_blocks=batch_blocks, lanes=1), kit=_ShortKeysForBlock1())
    with pytest.raises(ProtocolError, match="pipe.final agreed"):  # Bob out of step: the run stops
        p.run(a, b)
    bad = f"{p.bob.run_id}-0000001"
    ids = p.sb.ids()
    assert bad not in ids and p.sa.ids() == ids  # nothing on one side only, nothing of another length
    assert ids == ([f"{p.bob.run_id}-0000000"] if batch_blocks == 1 else [])
    assert p.sb.drop_reason(bad) == p.sa.drop_reason(bad) == "protocol_error"
    assert p.sa.ids("pending") == [] and p.sa.state(bad) == p.sb.state(bad) == "dropped"
    for bid in ids:
        np.testing.assert_array_equal(p.sa.read(bid).bits, p.sb.read(bid).bits)
    # a re-run with a sound kit never reprocesses the dropped block and keys the rest
    p2 = _Pair(tmp_path, cfg=_cfg(batch_blocks=batch_blocks, lanes=1))
    keys = p2.run(a, b)
    assert bad not in p2.sb.ids() and p2.sa.ids() == p2.sb.ids() and len(p2.sb.ids()) == 4 - batch_blocks


def test_qkdpost_kit_alice_hashes_only_to_the_lengths_agreed_at_pipe_final():
    from qkdpost.pipeline.kit import QkdpostKit

    rng = np.random.default_rng(5)
    frames = {"run-0000003": rng.integers(0, 2, 4096, dtype=np.uint8),
              "run-0000004": rng.integers(0, 2, 4096, dtype=np.uint8)}
    agreed = {"run-0000003": 1000, "run-0000004": 1200}
    cfg = _cfg()
    routes, out = QkdpostKit().amplify_alice(frames, agreed, cfg)
    body = {"frame_ids": np.array([3, 4]), "lengths": np.array([1000, 1208]), "method": cfg.amplify.pa_method}
    with pytest.raises(ProtocolError, match="frame 4 asked with length 1208, but pipe.final agreed 1200"):
        routes["amplify.seeds"](body)
    with pytest.raises(ProtocolError, match="frame 4 asked with length None"):
        routes["amplify.seeds"]({**body, "frame_ids": np.array([3]), "lengths": np.array([1000])})
    routes["amplify.seeds"]({**body, "lengths": np.array([1000, 1200])})
    assert out("run-0000003").size == 1000 and out("run-0000004").size == 1200


def test_pipe_final_lengths_outside_the_block_are_refused(tmp_path):
    from qkdpost.pipeline.blocks import AliceBlocks

    al = AliceBlocks(_cfg(), KeyStore(tmp_path / "a"), Report("alice", {}),
                     key_bits=lambda s, n: np.zeros(n, np.uint8), kit=ToyKit())
    al._batch({"ids": "r-0000000", "starts": np.array([0]), "lengths": np.array([BLOCK]), "skip": "", "noisy": "",
               "method": "cascade", "ec_qber": 0.02})
    base = {"ids": "r-0000000", "dropped": "", "reasons": ""}
    with pytest.raises(ProtocolError, match="final length 2049, outside 1..2048"):
        al._final({**base, "lengths": np.array([BLOCK + 1])})
    with pytest.raises(ProtocolError, match="1 ids but 2 lengths"):
        al._final({**base, "lengths": np.array([5, 6])})


def test_rerun_with_another_alignment_setting_is_refused_on_both_sides(tmp_path):
    # Alignment decides which detections pair, so where every later block falls;
    # Alice fingerprints Bob's alignment settings (sent at hello), not her own.
    a, b = _link(3 * BLOCK, 0.0)
    _Pair(tmp_path, cfg=_cfg(acquisition_s=1.0)).run(a, b)
    # Alice's own alignment section may differ from Bob's: only his decides
    same = _Pair(tmp_path, cfg=_cfg(acquisition_s=1.0), alice_cfg=_cfg(acquisition_s=2.5))
    assert same.run(a, b) == []  # a re-run with the same cut: accepted, nothing new
    p2 = _Pair(tmp_path, cfg=_cfg(acquisition_s=0.7), alice_cfg=_cfg(acquisition_s=1.0))
    want = r"ConfigError.*differs: align.acquisition_s was 1.0, now 0.7\).*correlated keys"
    with pytest.raises(ProtocolError, match=want):
        p2.bob.start()  # Alice refuses first, at hello
    fresh_alice = AliceEngine(_cfg(), KeyStore(tmp_path / "fresh"), Report("alice", {}), stream_id="alice-1",
                              kit=ToyKit())
    with pytest.raises(ConfigError, match="correlated keys"):  # Bob's own store refuses too
        BobEngine(_cfg(acquisition_s=0.7), LoopbackChannel(fresh_alice), p2.sb, Report("bob", {}),
                  stream_id="bob-1", kit=ToyKit()).start()


def test_hello_without_bobs_alignment_settings_is_refused(tmp_path):
    from qkdpost.pipeline.engine import PROTOCOL, shared_config

    cfg = _cfg()
    alice = AliceEngine(cfg, KeyStore(tmp_path / "a"), Report("alice", {}), stream_id="alice-1", kit=ToyKit())
    body = {"protocol": PROTOCOL, "qkdpost": "x", "shared": shared_config(cfg), "bob_stream": "bob-1"}
    with pytest.raises(ProtocolError, match="alignment settings"):
        alice.handle("pipe.hello", body)
    with pytest.raises(ProtocolError, match="not JSON"):
        alice.handle("pipe.hello", {**body, "align": "{"})


def test_block_cutter_hands_out_each_blocks_labels():
    c = BlockCutter(6)
    c.add(Segment(np.zeros(4, np.uint8), {}, labels=np.array([0, 1, 1, 0], np.uint8)))
    c.add(Segment(np.ones(5, np.uint8), {}, labels=np.array([1, 1, 0, 0, 1], np.uint8)))
    ((start, bits, stats, _, labels),) = list(c.blocks())
    np.testing.assert_array_equal(labels, [0, 1, 1, 0, 1, 1])
    assert (stats["n_key_c0"], stats["n_key_c1"]) == (2, 4) and start == 0
    c.add(Segment(np.ones(3, np.uint8), {}))  # a segment without labels: the next block has none
    ((_, _, stats2, _, labels2),) = list(c.blocks())
    assert labels2 is None and "n_key_c0" not in stats2


def test_hello_accepts_parties_with_different_pa_threads(tmp_path):
    """pa_threads is how many threads one machine hashes with (like pipeline.workers): the keys are the same
    either way, so the parties may differ in it; the shared protocol settings are still compared."""
    import json

    from qkdpost.pipeline.engine import PROTOCOL, shared_config

    alice_cfg = _cfg().replace(pa_threads=1)
    bob_cfg = _cfg().replace(pa_threads=2)
    assert shared_config(alice_cfg) == shared_config(bob_cfg)
    alice = AliceEngine(alice_cfg, KeyStore(tmp_path / "a"), Report("alice", {}), stream_id="alice-1", kit=ToyKit())
    body = {"protocol": PROTOCOL, "qkdpost": "x", "shared": shared_config(bob_cfg), "bob_stream": "bob-1",
            "align": json.dumps(bob_cfg.to_dict()["align"], sort_keys=True)}
    alice.handle("pipe.hello", body)  # accepted
    other = _cfg().replace(pa_method="modified")  # a protocol setting still has to match
    with pytest.raises(ProtocolError, match="ConfigError.*amplify.pa_method"):
        AliceEngine(alice_cfg, KeyStore(tmp_path / "b"), Report("alice", {}), stream_id="alice-1",
                    kit=ToyKit()).handle("pipe.hello", {**body, "shared": shared_config(other)})


def test_block_objects_never_show_key_bits_in_their_repr():
    """House rule: key material never in reprs (a repr ends up in logs and tracebacks)."""
    from qkdpost.pipeline.blocks import SiftedBlock, StoreJob

    secret = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 1], dtype=np.uint8)
    shown = [repr(Segment(secret.copy(), {"n_test": 5})),
             repr(SiftedBlock(block_id="r-000001", index=1, start=0, bits=secret.copy(), labels=secret.copy())),
             repr(StoreJob(batch=[], recs={}, clock=None, items=[("r-000001", secret.copy(), {"final_length": 13})]))]
    for text in shown:
        assert "array" not in text and "1, 0, 1, 1" not in text, text
    assert "r-000001" in shown[1] and "n_test" in shown[0]  # the public fields are still shown


# -- back-half lanes (pipeline.lanes): batches in flight at once, one thread each ------------


class _MeetKit(ToyKit):
    """Reconciliation waits (up to 20 s) until ``lanes`` batches are inside it at once."""

    def __init__(self, lanes):
        super().__init__()
        import threading

        self.barrier = threading.Barrier(lanes, timeout=20)
        self.met = 0

    def reconcile_bob(self, channel, method, ids, bits, qber, cfg, *, seed):
        import threading

        if self.met < 2:  # the first batches only, so the run's end does not wait
            try:
                self.barrier.wait()
                self.met += 1
            except threading.BrokenBarrierError:
                pass
        return super().reconcile_bob(channel, method, ids, bits, qber, cfg, seed=seed)


@pytest.mark.parametrize("lanes", [1, 2, 3])
def test_lanes_give_identical_stores_in_block_order(tmp_path, lanes):
    a, b = _link(9 * BLOCK + 77, 0.003)
    p = _Pair(tmp_path, cfg=_cfg(lanes=lanes))
    keys = p.run(a, b, seg=5000)
    want = [f"{p.bob.run_id}-{i:07d}" for i in range(9)]
    assert [k.block_id for k in keys] == want  # handed out in the order the blocks were cut
    assert p.sb.ids() == p.sa.ids() == want
    assert [k.block_id for k in p.alice.take_finished()] == want  # Alice's commits in block order too
    for bid in want:
        np.testing.assert_array_equal(p.sa.read(bid).bits, p.sb.read(bid).bits)
    assert sorted(r.index for r in p.rb.blocks) == list(range(9)) and all(r.status == "ok" for r in p.rb.blocks)


def test_two_lanes_reconcile_two_batches_at_once(tmp_path):
    a, b = _link(6 * BLOCK, 0.003)
    kit = _MeetKit(2)
    p = _Pair(tmp_path, cfg=_cfg(lanes=2), kit=kit)
    p.run(a, b, seg=4 * BLOCK)
    assert kit.met == 2  # both lanes were inside reconciliation together
    assert p.sb.ids() == p.sa.ids() and len(p.sb.ids()) == 6


def test_one_lane_reconciles_one_batch_at_a_time(tmp_path):
    a, b = _link(4 * BLOCK, 0.003)
    kit = _MeetKit(2)
    kit.barrier = __import__("threading").Barrier(2, timeout=0.5)
    p = _Pair(tmp_path, cfg=_cfg(lanes=1), kit=kit)
    p.run(a, b, seg=4 * BLOCK)
    assert kit.met == 0 and len(p.sb.ids()) == 4


@pytest.mark.parametrize("lane", [-1, 16, "1", 1.0, True])
def test_alice_refuses_a_bad_lane_number(tmp_path, lane):
    a, _ = _link(BLOCK, 0.0)
    p = _Pair(tmp_path)
    p.bob.start()
    with pytest.raises(ProtocolError, match="_lane"):
        p.alice.handle("pipe.pending", {"_lane": lane})


def test_lanes_after_a_failed_batch_leave_nothing_on_one_side(tmp_path):
    a, b = _link(8 * BLOCK, 0.0)
    p = _Pair(tmp_path, cfg=_cfg(lanes=2), kit=_ShortKeysForBlock1())
    with pytest.raises(ProtocolError, match="pipe.final agreed"):
        p.run(a, b)
    ids = [f"{p.bob.run_id}-{i:07d}" for i in range(8)]
    assert p.sa.ids() == p.sb.ids() and ids[1] not in p.sb.ids()
    assert p.sa.ids("pending") == []
    for bid in ids:  # each block: final on both sides, dropped on both, or never started
        sa, sb = p.sa.state(bid), p.sb.state(bid)
        # ("started", "dropped"): in flight when the run stopped; Bob tells Alice at the re-run
        assert (sa, sb) in (("final", "final"), ("dropped", "dropped"), (None, None), ("started", "dropped")), bid
    p2 = _Pair(tmp_path, cfg=_cfg(lanes=2))
    p2.run(a, b)
    assert p2.sa.ids() == p2.sb.ids() and ids[1] not in p2.sb.ids()
    for bid in ids:
        assert p2.sb.state(bid) in ("final", "dropped") and p2.sa.state(bid) == p2.sb.state(bid)


def test_a_partial_batch_goes_once_its_oldest_block_waited_batch_wait_s(tmp_path):
    import time

    a, b = _link(4 * BLOCK, 0.002)
    p = _Pair(tmp_path, cfg=_cfg(batch_blocks=4, workers=1, batch_wait_s=0.3))
    p.bob.start()
    p.alice.push(Segment(a))
    got = p.bob.push(Segment(b[:BLOCK]))  # one block cut: waits for three more
    assert got == []
    got = p.bob.push(Segment(b[BLOCK:BLOCK + 10]))  # bits arrive, but the block has not waited long yet
    assert got == []
    time.sleep(0.35)
    got = p.bob.push(Segment(b[BLOCK + 10:BLOCK + 20]))  # now it has: a batch of one
    assert [k.block_id for k in got] == [f"{p.bob.run_id}-0000000"]
    got += p.bob.push(Segment(b[BLOCK + 20:]))  # three blocks at once fill no batch of 4 ...
    got += p.bob.finish()  # ... until the end of the input
    assert len(got) == 4 and p.sa.ids() == p.sb.ids() == [k.block_id for k in got]


def test_batch_wait_zero_sends_every_block_as_it_is_cut(tmp_path):
    a, b = _link(3 * BLOCK, 0.002)
    p = _Pair(tmp_path, cfg=_cfg(batch_blocks=4, workers=1, batch_wait_s=0.0))
    p.bob.start()
    p.alice.push(Segment(a))
    for i in range(3):
        got = p.bob.push(Segment(b[i * BLOCK:(i + 1) * BLOCK]))
        assert [k.block_id for k in got] == [f"{p.bob.run_id}-{i:07d}"]


def test_alice_answers_cascade_rounds_of_two_lanes_at_once_and_everything_else_in_turn(tmp_path):
    # Cascade's rounds (LANE_KINDS) touch one lane's state only: two lanes are
    # answered at once; two rounds of one lane, or any other kind, one at a time
    from qkdpost.pipeline.engine import LANE_FIELD, LANE_KINDS

    assert "cascade.parities" in LANE_KINDS
    alice = AliceEngine(_cfg(), KeyStore(tmp_path / "a"), Report("alice", {}), stream_id="A")
    alice.hello_done = True
    assert LoopbackChannel(alice).concurrent  # so a loopback lets Bob's lanes through together
    meet = threading.Barrier(2, timeout=1.0)

    def handler(body):
        meet.wait()
        return {}

    for lane in (0, 1):
        blocks = alice._lane({LANE_FIELD: lane})[0]
        blocks._routes = {"cascade.parities": handler, "toy.other": handler}

    def both(kind, lanes):
        meet.reset()
        out = []
        threads = [threading.Thread(target=lambda ln=ln: out.append(_try(alice.handle, kind, {LANE_FIELD: ln})))
                   for ln in lanes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out

    assert both("cascade.parities", (0, 1)) == ["ok", "ok"]
    assert "ok" not in both("cascade.parities", (1, 1))
    assert "ok" not in both("toy.other", (0, 1))


def _try(fn, *args):
    try:
        fn(*args)
        return "ok"
    except threading.BrokenBarrierError:
        return "serialised"
