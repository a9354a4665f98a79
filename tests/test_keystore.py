"""Key store: atomic writes, owner-only files, never twice, consumed at most once."""

import json
import multiprocessing as mp
import os
import stat

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import qkdpost.keystore as ks_mod
from qkdpost.errors import InputError
from qkdpost.keystore import KeyStore


def _bits(n, seed=0):
    return np.random.default_rng(seed).integers(0, 2, n, dtype=np.uint8)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 2000), seed=st.integers(0, 2**32 - 1))
def test_put_read_round_trip_any_length(tmp_path_factory, n, seed):
    store = KeyStore(tmp_path_factory.mktemp("ks"))
    bits = _bits(n, seed)
    store.put("b1", bits, {"qber": 0.02})
    blk = store.read("b1")
    np.testing.assert_array_equal(blk.bits, bits)
    assert blk.meta["n_bits"] == n and blk.meta["qber"] == 0.02 and blk.meta["block_id"] == "b1"


def test_permissions_owner_only(tmp_path):
    store = KeyStore(tmp_path / "s")
    store.put("b1", _bits(100), {})
    assert stat.S_IMODE(os.stat(tmp_path / "s").st_mode) == 0o700
    d = tmp_path / "s" / "keys" / "b1"
    for f in ("key.bin", "meta.json"):
        assert stat.S_IMODE(os.stat(d / f).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_never_written_twice_even_after_consumption(tmp_path):
    store = KeyStore(tmp_path)
    store.put("b1", _bits(64), {})
    with pytest.raises(InputError, match="never written twice"):
        store.put("b1", _bits(64, 1), {})
    store.consume("b1")
    with pytest.raises(InputError, match="consumed"):
        store.put("b1", _bits(64, 2), {})
    with pytest.raises(InputError, match="never written twice"):
        store.prepare("b1", _bits(64, 2), {})


def test_crash_mid_write_leaves_nothing(tmp_path, monkeypatch):
    store = KeyStore(tmp_path)
    real = ks_mod._write_private
    calls = []

    def dying(path, data):
        calls.append(path)
        if len(calls) == 2:  # the key is on disk, the metadata write dies
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(ks_mod, "_write_private", dying)
    with pytest.raises(OSError):
        store.put("b1", _bits(64), {})
    monkeypatch.setattr(ks_mod, "_write_private", real)
    assert store.state("b1") is None and store.ids() == []
    assert list((tmp_path / "tmp").iterdir()) == []
    store.put("b1", _bits(64), {})  # id is free again: nothing was half-written
    assert store.ids() == ["b1"]


def test_leftover_tmp_from_kill_is_cleaned_on_open(tmp_path):
    KeyStore(tmp_path)
    junk = tmp_path / "tmp" / "b7.deadbeef"
    junk.mkdir()
    (junk / "key.bin").write_bytes(b"\x01")
    store = KeyStore(tmp_path)
    assert list((tmp_path / "tmp").iterdir()) == [] and store.ids() == []


def test_two_phase_commit_states(tmp_path):
    store = KeyStore(tmp_path)
    store.prepare("a", _bits(10), {})
    store.prepare("b", _bits(10), {})
    assert store.state("a") == "pending" and store.ids() == [] and store.ids("pending") == ["a", "b"]
    with pytest.raises(InputError):
        store.consume("a")  # pending keys are never deliverable
    assert store.commit("a") is True and store.commit("a") is False
    assert store.abort("b") is True and store.abort("b") is False
    assert store.ids() == ["a"] and store.state("b") == "dropped"  # aborted ids stay known
    with pytest.raises(InputError, match="never written twice"):
        store.prepare("b", _bits(10), {})
    with pytest.raises(InputError, match="never prepared"):
        store.commit("zzz")


def test_consume_at_most_once_and_erases(tmp_path):
    store = KeyStore(tmp_path)
    bits = _bits(300)
    store.put("b1", bits, {"x": 1})
    store.put("b2", _bits(300, 1), {})
    blk = store.consume()
    assert blk.block_id == "b1"
    np.testing.assert_array_equal(blk.bits, bits)
    assert not (tmp_path / "consumed" / "b1" / "key.bin").exists()
    assert "consumed_utc" in store.meta("b1")
    with pytest.raises(InputError):
        store.consume("b1")
    assert "1" not in repr(blk).replace("b1", "")  # no bits in repr


def _consumer(path, q):
    try:
        blk = KeyStore(path).consume("race")
        q.put(int(blk.bits.sum()))
    except InputError:
        q.put(-1)


def test_consume_race_between_processes_has_one_winner(tmp_path):
    store = KeyStore(tmp_path)
    store.put("race", np.ones(128, dtype=np.uint8), {})
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_consumer, args=(str(tmp_path), q)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    results = sorted(q.get(timeout=5) for _ in procs)
    assert results == [-1, -1, -1, 128]


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "x" * 129, 5])
def test_bad_ids_rejected(tmp_path, bad):
    with pytest.raises(InputError, match="block_id"):
        KeyStore(tmp_path).put(bad, _bits(8), {})


def test_non_binary_bits_rejected(tmp_path):
    with pytest.raises(InputError, match="not 0 or 1"):
        KeyStore(tmp_path).put("b", np.array([0, 2], dtype=np.uint8), {})


def test_meta_is_json_sidecar(tmp_path):
    store = KeyStore(tmp_path)
    store.put("b", _bits(9), {"eps_sec": 1e-10, "leak": {"ec": 5}})
    data = json.loads((tmp_path / "keys" / "b" / "meta.json").read_text())
    assert data["leak"] == {"ec": 5} and data["n_bits"] == 9 and store.total_bits() == 9


def test_started_journal(tmp_path):
    store = KeyStore(tmp_path)
    assert store.mark_started("j1") is True and store.mark_started("j1") is False
    assert store.state("j1") == "started" and store.known("j1") and store.ids("started") == ["j1"]
    store.prepare("j1", _bits(5), {})  # a started block may be prepared once
    assert store.state("j1") == "pending" and store.ids("started") == []
    store.commit("j1")
    assert store.state("j1") == "final"
    store.mark_started("j2")
    store.put("j2", _bits(5), {})
    assert store.state("j2") == "final"


def test_dropped_blocks_stay_known(tmp_path):
    store = KeyStore(tmp_path)
    store.mark_started("d")
    store.mark_dropped("d", "verify_failed")
    assert store.state("d") == "dropped" and store.drop_reason("d") == "verify_failed"
    with pytest.raises(InputError, match="never written twice"):
        store.put("d", _bits(5), {})
    assert store.mark_started("d") is False


def test_empty_journal_of_finished_block_is_cleaned_on_open(tmp_path):
    store = KeyStore(tmp_path)
    store.put("k", _bits(5), {})
    (tmp_path / "started" / "k").mkdir()  # as if killed right after the rename
    store = KeyStore(tmp_path)
    assert store.ids("started") == [] and store.state("k") == "final"


def test_opening_the_store_does_not_break_a_write_in_progress(tmp_path, monkeypatch):
    # A consumer opening the store (another KeyStore object, e.g. in another
    # process) while a writer is between its key file and its rename must not
    # delete the writer's work directory; leftovers of dead writers still go.
    store = KeyStore(tmp_path)
    real = ks_mod._write_private
    calls = []

    def opening_meanwhile(path, data):
        real(path, data)
        calls.append(path)
        if len(calls) == 1:
            KeyStore(tmp_path)  # the key is staged in tmp/, not yet renamed into place

    monkeypatch.setattr(ks_mod, "_write_private", opening_meanwhile)
    store.put("b1", _bits(64), {"k": 1})
    monkeypatch.setattr(ks_mod, "_write_private", real)
    assert store.ids() == ["b1"] and store.meta("b1")["k"] == 1
    dead = tmp_path / "tmp" / "p999999999_b2.0badf00d"  # pid beyond any kernel's pid_max
    dead.mkdir()
    (dead / "key.bin").write_bytes(b"\x01")
    KeyStore(tmp_path)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_damaged_key_file_is_an_error_not_zero_padding(tmp_path):
    from qkdpost.errors import FileFormatError

    store = KeyStore(tmp_path)
    store.put("b1", np.ones(100, dtype=np.uint8), {})
    store.put("b2", np.ones(100, dtype=np.uint8), {})
    for bid in ("b1", "b2"):
        key = tmp_path / "keys" / bid / "key.bin"
        key.write_bytes(key.read_bytes()[:-1])  # truncated: 12 of 13 bytes
    with pytest.raises(FileFormatError, match="damaged"):
        store.read("b1")
    with pytest.raises(FileFormatError, match="damaged"):
        store.consume("b2")
    assert not (tmp_path / "consumed" / "b2" / "key.bin").exists()  # claimed, never delivered, erased
    (tmp_path / "keys" / "b1" / "meta.json").write_text("{not json")
    with pytest.raises(FileFormatError, match="metadata is damaged"):
        store.read("b1")


def test_a_capture_cut_one_way_cannot_be_cut_another_way(tmp_path):
    from qkdpost.errors import ConfigError

    store = KeyStore(tmp_path / "s")
    store.claim_capture("c0123", "fp-a", "block_bits=1024")
    store.claim_capture("c0123", "fp-a", "block_bits=1024")  # same settings: a re-run, fine
    store.claim_capture("c9999", "fp-b", "block_bits=2048")  # another capture: independent
    with pytest.raises(ConfigError, match="correlated keys"):
        store.claim_capture("c0123", "fp-b", "block_bits=2048")
    # the record survives reopening the store
    with pytest.raises(ConfigError, match="block_bits=1024"):
        KeyStore(tmp_path / "s").claim_capture("c0123", "fp-b", "block_bits=2048")
    assert oct((tmp_path / "s" / "captures" / "c0123.json").stat().st_mode & 0o777) == "0o600"


def test_capture_record_of_an_older_version_is_accepted_by_its_settings_and_upgraded_once(tmp_path):
    # Records written before alignment was fingerprinted have no "version" and
    # the fingerprint of block_bits + sift only (legacy_fingerprint).
    import json

    from qkdpost.errors import ConfigError

    store = KeyStore(tmp_path / "s")
    rec = tmp_path / "s" / "captures" / "c0123.json"
    rec.parent.mkdir(parents=True, exist_ok=True)
    rec.write_text(json.dumps({"fingerprint": "old-a", "settings": "block_bits=1024",
                               "created_utc": "2026-01-01T00:00:00Z"}))
    with pytest.raises(ConfigError, match="block_bits=1024"):  # other block/sift settings: refused
        store.claim_capture("c0123", "new-b", "block_bits=2048 align=x", legacy_fingerprint="old-b")
    with pytest.raises(ConfigError, match="correlated keys"):  # no legacy fingerprint given: refused
        store.claim_capture("c0123", "new-a", "block_bits=1024 align=x")
    store.claim_capture("c0123", "new-a", "block_bits=1024 align=x", legacy_fingerprint="old-a")
    up = json.loads(rec.read_text())
    assert up["version"] == 2 and up["fingerprint"] == "new-a" and up["created_utc"] == "2026-01-01T00:00:00Z"
    assert up["legacy_settings"] == "block_bits=1024"
    assert oct(rec.stat().st_mode & 0o777) == "0o600"
    store.claim_capture("c0123", "new-a", "block_bits=1024 align=x", legacy_fingerprint="old-a")  # re-run: fine
    # upgraded once: from now on another alignment is refused even if the legacy part matches
    with pytest.raises(ConfigError, match="align=x"):
        store.claim_capture("c0123", "new-a2", "block_bits=1024 align=y", legacy_fingerprint="old-a")


def test_batch_writes_are_each_atomic_and_sync_each_directory_once(tmp_path, monkeypatch):
    import os as os_mod

    from qkdpost import keystore as ks

    store = KeyStore(tmp_path / "s")
    rng = np.random.default_rng(1)
    items = [(f"b{i}", rng.integers(0, 2, 1000 + i, dtype=np.uint8), {"i": i}) for i in range(4)]
    calls = []
    real = os_mod.fsync
    monkeypatch.setattr(ks.os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    assert store.mark_started_many([b for b, _, _ in items] + ["b0"]) == [True] * 4 + [False]
    assert len(calls) == 1  # one sync of started/ for the batch
    calls.clear()
    store.prepare_many(items)
    assert len(calls) == 4 * 3 + 1  # per block: key, meta, its directory; then pending/ once
    assert store.ids("pending") == ["b0", "b1", "b2", "b3"] and store.ids("started") == []
    calls.clear()
    assert store.commit_many(["b0", "b1", "b1", "b2", "b3"]) == [True, True, False, True, True]
    assert len(calls) == 1 and store.ids() == ["b0", "b1", "b2", "b3"]
    assert store.commit_many(["b0"]) == [False]  # idempotent on final
    for bid, bits, meta in items:
        got = store.read(bid)
        np.testing.assert_array_equal(got.bits, bits)
        assert got.meta["i"] == meta["i"]
        assert oct((tmp_path / "s" / "keys" / bid / "key.bin").stat().st_mode & 0o777) == "0o600"
    # a batch with one known id writes none of it and leaves nothing staged
    with pytest.raises(InputError, match="b2"):
        store.put_many([("c0", items[0][1], {}), ("b2", items[2][1], {})])
    assert not store.known("c0") and list((tmp_path / "s" / "tmp").iterdir()) == []
    with pytest.raises(InputError, match="at most once"):
        store.put_many([("c1", items[0][1], {}), ("c1", items[0][1], {})])
    assert not store.known("c1")
    with pytest.raises(InputError, match="never prepared"):
        store.commit_many(["zz"])
    store.put_many([])  # nothing to do, no error
