"""Small fixes found in review: each test failed before its fix."""

import numpy as np
import pytest

from qkdpost.config import Config
from qkdpost.errors import ProtocolError
from qkdpost.keystore import KeyStore
from qkdpost.pipeline.blocks import AliceBlocks
from qkdpost.report import Report

from pipeline_kit import ToyKit


def _alice_blocks(tmp_path):
    cfg = Config().replace(block_bits=2048, seed=7)
    bits = np.random.default_rng(1).integers(0, 2, 4096, dtype=np.uint8)
    return AliceBlocks(cfg, KeyStore(tmp_path / "alice"), Report("alice", cfg.to_dict()),
                       lambda start, n: bits[start:start + n], kit=ToyKit())


def test_pipe_final_with_unknown_block_id_is_a_protocol_error(tmp_path):
    alice = _alice_blocks(tmp_path)
    h = alice.handlers()
    h["pipe.batch"]({"ids": "r-0000000", "starts": np.array([0], dtype=np.int64),
                     "lengths": np.array([2048], dtype=np.int64), "skip": "", "noisy": "", "method": "cascade",
                     "ec_qber": 0.02})
    with pytest.raises(ProtocolError, match="r-0000005"):
        h["pipe.final"]({"ids": "r-0000005", "lengths": np.array([10], dtype=np.int64),
                         "dropped": "", "reasons": ""})


@pytest.mark.parametrize("qber", ["0.05", None, [0.05], complex(0.05, 0)])
def test_ldpc_bob_run_rejects_non_numeric_qber_with_input_error(qber):
    from qkdpost.channel import LoopbackChannel, Responder
    from qkdpost.errors import InputError
    from qkdpost.reconcile.ldpc.protocol import LdpcAlice, LdpcBob

    bits = np.random.default_rng(2).integers(0, 2, (1, 1000), dtype=np.uint8)
    chan = LoopbackChannel(Responder(LdpcAlice({0: bits[0]}, sim_seed=1).handlers()))
    with pytest.raises(InputError, match="qber"):
        LdpcBob(seed=1).run(chan, [0], bits, qber)


@pytest.mark.parametrize("damage", [b'{"n_bits": 1', b"\xff\xfe not utf-8", b"[1, 2]"])
def test_keystore_meta_of_damaged_json_is_a_file_format_error(tmp_path, damage):
    from qkdpost.errors import FileFormatError

    store = KeyStore(tmp_path / "ks")
    store.put("r-0000000", np.ones(16, dtype=np.uint8), {"note": "x"})
    path = tmp_path / "ks" / "keys" / "r-0000000" / "meta.json"
    assert path.is_file()
    path.write_bytes(damage)
    with pytest.raises(FileFormatError, match="meta.json") as info:
        store.meta("r-0000000")
    assert "discard" in str(info.value)


def test_keystore_consume_none_takes_smallest_id_not_oldest_written(tmp_path):
    # documents consume(None): the smallest id in string order, whatever the write order
    store = KeyStore(tmp_path / "ks")
    store.put("run-0000010", np.ones(8, dtype=np.uint8), {})
    store.put("run-0000002", np.zeros(8, dtype=np.uint8), {})
    store.put("aaa-0000005", np.ones(8, dtype=np.uint8), {})
    assert [store.consume().block_id for _ in range(3)] == ["aaa-0000005", "run-0000002", "run-0000010"]


def test_silent_peer_holds_alices_accept_loop_only_for_the_handshake_timeout():
    # A peer that connects and sends nothing must be dropped after the short
    # handshake timeout, not the session timeout (here an hour), or it blocks
    # every later Bob. The join bound is a liveness check, not a speed claim.
    import socket
    import threading

    from qkdpost.transport import Server, TcpChannel

    with Server("127.0.0.1", 0, timeout_s=3600, handshake_timeout_s=0.3) as server:
        results = []
        t = threading.Thread(target=lambda: results.append(server.accept(60)), daemon=True)
        t.start()
        c = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        t.join(30)
        assert not t.is_alive() and results == [None]
        c.close()
        # a real Bob afterwards gets a session with the long per-request timeout
        t = threading.Thread(target=lambda: results.append(server.accept(60)), daemon=True)
        t.start()
        chan = TcpChannel("127.0.0.1", server.port, timeout_s=5, connect_timeout_s=5)
        t.join(30)
        assert results[-1] is not None and results[-1].gettimeout() == 3600
        results[-1].close()
        chan.close()


def test_server_rejects_non_positive_handshake_timeout():
    from qkdpost.errors import InputError
    from qkdpost.transport import Server

    with pytest.raises(InputError, match="handshake_timeout_s"):
        Server("127.0.0.1", 0, handshake_timeout_s=0)


def test_per_block_round_trips_and_bytes_add_up_to_the_batch_totals():
    from types import SimpleNamespace

    from qkdpost.pipeline.blocks import BobBlocks, SiftedBlock, block_id
    from qkdpost.report import BlockRecord

    batch = [SiftedBlock(block_id=block_id("r", i), index=i, start=0, bits=np.zeros(8, dtype=np.uint8),
                         stats={}, qber_estimate=0.01, stream_time_s=0.0) for i in range(3)]
    recs = {b.block_id: BlockRecord(block_id=b.block_id, index=b.index, n_sifted=8, status="ok") for b in batch}
    clock = SimpleNamespace(times={"reconcile": 1.0}, rt={"reconcile": 7, "verify": 2, "store": 3},
                            nbytes={"reconcile": 1001, "verify": 5, "store": 0})
    owner = SimpleNamespace(report=Report("bob", {}))
    BobBlocks._finish(owner, batch, recs, {}, clock)
    blocks = owner.report.blocks
    for stage, total in clock.rt.items():
        shares = [r.round_trips[stage] for r in blocks]
        assert sum(shares) == total and max(shares) - min(shares) <= 1
    for stage, total in clock.nbytes.items():
        shares = [r.bytes[stage] for r in blocks]
        assert sum(shares) == total and max(shares) - min(shares) <= 1
        assert all(type(s) is int for s in shares)


@pytest.mark.parametrize("bid, index", [("r-0000012", 12), ("run-a-7", 7), ("bad", -1), ("a-b", -1), ("", -1), ("x-", -1)])
def test_alice_block_index_parses_like_the_kit_frame_id(bid, index):
    # one parser for block ids (kit.frame_id); Alice's records use -1 for a malformed id
    from qkdpost.errors import InputError
    from qkdpost.pipeline.blocks import _index_of
    from qkdpost.pipeline.kit import frame_id

    assert _index_of(bid) == index
    if index >= 0:
        assert frame_id(bid) == index
    else:
        with pytest.raises(InputError):
            frame_id(bid)


@pytest.mark.parametrize("N, n", [(1, 1), (3, 63), (2, 64), (4, 65), (2, 300)])
def test_pack_bits_gives_the_cascade_engine_layout(N, n):
    # Cascade's engine takes pack_bits output as a caller-owned, written-to word buffer:
    # (N, ceil(n/64)) native uint64, C-contiguous, writable, bit i at word i // 64, bit i % 64.
    from qkdpost.bits import pack_bits

    bits = np.random.default_rng(N * 1000 + n).integers(0, 2, (N, n), dtype=np.uint8)
    words = pack_bits(bits)
    assert words.shape == (N, (n + 63) // 64) and words.dtype == np.uint64 and words.dtype.isnative
    assert words.flags.c_contiguous and words.flags.writeable
    for f in range(N):
        for i in range(n):
            assert (int(words[f, i // 64]) >> (i % 64)) & 1 == bits[f, i]
        assert int(words[f, -1]) >> (n % 64 or 64) == 0  # padding is zero


def test_reconcile_result_repr_leaves_out_the_corrected_bits():
    from qkdpost.reconcile.result import ReconcileResult

    bits = np.array([1, 0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0], dtype=np.uint8)
    r = ReconcileResult(bits=bits, leaked_bits=np.array([7]), success=np.array([True]),
                        errors_corrected=np.array([2]), round_trips=1, bytes_sent=10, method="cascade")
    assert "1, 0, 1, 1" not in repr(r) and "bits=" not in repr(r).replace("leaked_bits=", "")
