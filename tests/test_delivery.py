"""ETSI GS QKD 014 key delivery (qkdpost.delivery): same keys on both sites, each delivered once."""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest

from qkdpost.bits import pack_bits
from qkdpost.delivery import ID_SECRET_BITS, DeliveryError, Kme, key_bits, key_id
from qkdpost.delivery.server import make_server, serve_in_thread
from qkdpost.errors import ConfigError
from qkdpost.keystore import KeyStore

IDS = ["run-000000", "run-000001", "run-000002"]


def _stores(tmp_path, nbits=(1000, 700, 900)):
    """Alice's and Bob's stores with identical blocks, as the pipeline leaves them."""
    rng = np.random.default_rng(4)
    blocks = {bid: rng.integers(0, 2, n, dtype=np.uint8) for bid, n in zip(IDS, nbits)}
    for side in ("alice", "bob"):
        st = KeyStore(tmp_path / side)
        for bid, bits in blocks.items():
            st.put(bid, bits, {"final_length": int(bits.size)})
    return blocks


def _kid(blocks, bid, i, key_size=256):
    """The key ID both KMEs derive: HMAC under the block's last 128 bits (its naming secret)."""
    return key_id(bid, key_size, i, pack_bits(blocks[bid][-ID_SECRET_BITS:]).tobytes())


def _kmes(tmp_path, **kw):
    common = dict(kme_id="KME_A", peer_kme_id="KME_B", master_sae_id="SAE_A", slave_sae_id="SAE_B", key_size=256)
    common.update(kw)
    master = Kme(tmp_path / "alice", role="master", **common)
    slave = Kme(tmp_path / "bob", role="slave", **dict(common, kme_id="KME_B", peer_kme_id="KME_A"))
    return master, slave


def test_master_and_slave_deliver_the_same_keys_once(tmp_path):
    blocks = _stores(tmp_path)
    master, slave = _kmes(tmp_path)
    # 1000 - 128 bits -> 3 keys, 700 - 128 -> 2, 900 - 128 -> 3 (naming secret and tail bits never delivered)
    assert master.status("SAE_B")["stored_key_count"] == 8 == slave.status("SAE_B")["stored_key_count"]
    got = master.enc_keys("SAE_B", number=4)["keys"]
    ids = [k["key_ID"] for k in got]
    assert ids == [_kid(blocks, IDS[0], i) for i in range(3)] + [_kid(blocks, IDS[1], 0)]
    assert all(uuid.UUID(i).version == 4 for i in ids)
    # the name depends on key bits nobody outside the two KMEs has: not guessable from the block id
    assert key_id(IDS[1], 256, 1, bytes(16)) != _kid(blocks, IDS[1], 1)
    # key i of a block is bits [256 i, 256 (i+1)) of the stored block
    np.testing.assert_array_equal(key_bits(got[1]["key"]), blocks[IDS[0]][256:512])
    np.testing.assert_array_equal(key_bits(got[3]["key"]), blocks[IDS[1]][:256])
    back = slave.dec_keys("SAE_A", [ids[3], ids[0]])["keys"]
    assert [k["key_ID"] for k in back] == [ids[3], ids[0]]
    assert back[0]["key"] == got[3]["key"] and back[1]["key"] == got[0]["key"]
    with pytest.raises(DeliveryError, match="already delivered") as e:
        slave.dec_keys("SAE_A", [ids[0]])
    assert e.value.status == 400
    more = master.enc_keys("SAE_B", number=4)["keys"]
    assert not {k["key_ID"] for k in more} & set(ids)  # never the same key twice
    with pytest.raises(DeliveryError) as e:
        master.enc_keys("SAE_B", number=1)
    assert e.value.status == 503  # out of stock
    # a fully delivered block leaves nothing behind on the master
    assert KeyStore(tmp_path / "alice").ids() == [] and not list((tmp_path / "alice/delivery").glob("*.key"))
    assert slave.status("SAE_B")["stored_key_count"] == 6


def test_refusals_name_the_problem(tmp_path):
    _stores(tmp_path)
    master, slave = _kmes(tmp_path)
    for call, status, match in [
        (lambda: master.enc_keys("SAE_X"), 401, "not served"),
        (lambda: master.enc_keys("SAE_B", number=0), 400, "number"),
        (lambda: master.enc_keys("SAE_B", size=128), 400, "256-bit keys only"),
        (lambda: master.enc_keys("SAE_B", additional_slave_sae_ids=["SAE_C"]), 400, "multicast"),
        (lambda: master.dec_keys("SAE_A", [str(uuid.uuid4())]), 400, "master side"),
        (lambda: slave.dec_keys("SAE_A", ["not-a-uuid"]), 400, "not a UUID"),
        (lambda: slave.dec_keys("SAE_A", [str(uuid.uuid4())]), 400, "is not here"),
    ]:
        with pytest.raises(DeliveryError, match=match) as e:
            call()
        assert e.value.status == status
    with pytest.raises(ConfigError, match="key_size"):
        _kmes(tmp_path, key_size=100)
    with pytest.raises(ConfigError, match="cut into 256-bit"):
        Kme(tmp_path / "alice", role="master", kme_id="A", peer_kme_id="B", master_sae_id="S", slave_sae_id="T",
            key_size=512)


def test_crash_between_pool_and_store_claim_neither_loses_nor_repeats(tmp_path, monkeypatch):
    blocks = _stores(tmp_path)
    master, _ = _kmes(tmp_path)

    def crash(*a, **k):
        raise SystemExit("power cut")

    monkeypatch.setattr(master.store, "consume", crash)
    with pytest.raises(SystemExit):
        master.enc_keys("SAE_B", number=1)  # pool copy + ledger written, store claim not done
    assert IDS[0] in KeyStore(tmp_path / "alice").ids()  # still in the store...
    master2, slave = _kmes(tmp_path)  # ...restart: recovery consumes it, the pool keeps it
    assert IDS[0] not in KeyStore(tmp_path / "alice").ids()
    first = master2.enc_keys("SAE_B", number=1)["keys"][0]
    assert first["key_ID"] == _kid(blocks, IDS[0], 0)  # nothing was handed out before the crash
    master3, _ = _kmes(tmp_path)  # restart after a delivery: it goes on, never repeats
    nxt = master3.enc_keys("SAE_B", number=1)["keys"][0]
    assert nxt["key_ID"] == _kid(blocks, IDS[0], 1)
    assert slave.dec_keys("SAE_A", [first["key_ID"]])["keys"][0]["key"] == first["key"]


def _cert(tmp_path, name, ca=None):
    """A key and certificate made by openssl: self-signed (CN=name, for 127.0.0.1), or signed by ``ca``."""
    key, crt = tmp_path / f"{name}.key", tmp_path / f"{name}.pem"
    if ca is None:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                        "-out", str(crt), "-days", "1", "-subj", f"/CN={name}",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    else:
        csr = tmp_path / f"{name}.csr"
        subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
                        "-subj", f"/CN={name}"], check=True, capture_output=True)
        subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey", str(ca[0]),
                        "-CAcreateserial", "-out", str(crt), "-days", "1"], check=True, capture_output=True)
    return key, crt


def _get(url, data=None, ctx=None):
    req = urllib.request.Request(url, data=None if data is None else json.dumps(data).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_rest_api_round_trip(tmp_path):
    _stores(tmp_path)
    master, slave = _kmes(tmp_path)
    sm, ss = make_server(master), make_server(slave)
    for s in (sm, ss):
        serve_in_thread(s)
    try:
        a = f"http://127.0.0.1:{sm.server_address[1]}/api/v1/keys"
        b = f"http://127.0.0.1:{ss.server_address[1]}/api/v1/keys"
        st, body = _get(f"{a}/SAE_B/status")
        assert st == 200 and body["stored_key_count"] == 8 and body["key_size"] == 256
        st, body = _get(f"{a}/SAE_B/enc_keys?number=2")
        assert st == 200 and len(body["keys"]) == 2
        st, body2 = _get(f"{a}/SAE_B/enc_keys", {"number": 1, "size": 256})
        assert st == 200
        ids = [k["key_ID"] for k in body["keys"] + body2["keys"]]
        st, dec = _get(f"{b}/SAE_A/dec_keys?key_ID={ids[0]}")
        assert st == 200 and dec["keys"][0]["key"] == body["keys"][0]["key"]
        st, dec = _get(f"{b}/SAE_A/dec_keys", {"key_IDs": [{"key_ID": i} for i in ids[1:]]})
        assert st == 200 and [k["key"] for k in dec["keys"]] == [k["key"] for k in body["keys"][1:] + body2["keys"]]
        assert len(base64.b64decode(dec["keys"][0]["key"])) == 32
        assert _get(f"{b}/SAE_A/dec_keys?key_ID={ids[0]}")[0] == 400  # once only
        assert _get(f"{a}/SAE_X/enc_keys")[0] == 401
        st, err = _get(f"{a}/SAE_B/enc_keys?number=abc")
        assert st == 400 and "number" in err["message"]
        assert _get(f"{a}/SAE_B/nothing")[0] == 404
    finally:
        for s in (sm, ss):
            s.shutdown()
            s.server_close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make test certificates")
def test_https_with_client_certificates_checks_the_sae(tmp_path):
    _stores(tmp_path)
    master, _ = _kmes(tmp_path)
    kme_key, kme_crt = _cert(tmp_path, "kme")
    ca = _cert(tmp_path, "sae-ca")
    sae_a, sae_x = _cert(tmp_path, "SAE_A", ca), _cert(tmp_path, "SAE_X", ca)
    srv = make_server(master, tls_cert=str(kme_crt), tls_key=str(kme_key), client_ca=str(ca[1]))
    serve_in_thread(srv)
    try:
        url = f"https://127.0.0.1:{srv.server_address[1]}/api/v1/keys/SAE_B/enc_keys"

        def ctx(client):
            c = ssl.create_default_context(cafile=str(kme_crt))
            c.load_cert_chain(str(client[1]), str(client[0]))
            return c

        st, body = _get(url, ctx=ctx(sae_a))
        assert st == 200 and len(body["keys"]) == 1
        st, body = _get(url, ctx=ctx(sae_x))  # a valid certificate, but of another SAE
        assert st == 401 and "SAE_X" in body["message"]
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):  # no client certificate
            _get(url, ctx=ssl.create_default_context(cafile=str(kme_crt)))
        st, body = _get(url, ctx=ctx(sae_a))  # the server is still up after refusing that handshake
        assert st == 200
    finally:
        srv.shutdown()
        srv.server_close()


def test_block_claimed_by_another_consumer_is_not_delivered_by_the_kme(tmp_path, monkeypatch):
    """KeyStore.consume() is the store's at-most-once claim: if another consumer of the store wins it
    between the KME's pool copy and its own claim, the KME must drop its pool copy, not serve it."""
    blocks = _stores(tmp_path)
    master, _ = _kmes(tmp_path)
    real_consume = master.store.consume
    other = {}

    def race(block_id=None):
        if block_id == IDS[0] and not other:
            other[IDS[0]] = KeyStore(tmp_path / "alice").consume(IDS[0])  # the other application wins
        return real_consume(block_id)

    monkeypatch.setattr(master.store, "consume", race)
    with pytest.raises(DeliveryError) as e:
        master.enc_keys("SAE_B", number=1)
    assert e.value.status == 503
    np.testing.assert_array_equal(other[IDS[0]].bits, blocks[IDS[0]])  # the other consumer has that block
    assert not (tmp_path / "alice/delivery" / f"{IDS[0]}.key").exists()  # no copy left in the pool
    taken = {_kid(blocks, IDS[0], i) for i in range(3)}
    got = master.enc_keys("SAE_B", number=5)["keys"]  # the rest of the stock: blocks 1 and 2
    assert not {k["key_ID"] for k in got} & taken
    master2, _ = _kmes(tmp_path)  # nor after a restart
    assert master2.status("SAE_B")["stored_key_count"] == 0


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make test certificates")
def test_a_silent_client_holds_neither_the_accept_loop_nor_a_thread(tmp_path):
    """The TLS handshake runs on the connection's own thread with a timeout: a peer that connects and
    sends nothing must not stop the KME from serving others, and is dropped after the timeout."""
    import socket

    _stores(tmp_path)
    master, _ = _kmes(tmp_path)
    kme_key, kme_crt = _cert(tmp_path, "kme")
    srv = make_server(master, tls_cert=str(kme_crt), tls_key=str(kme_key), request_timeout_s=1.0)
    serve_in_thread(srv)
    silent = socket.create_connection(("127.0.0.1", srv.server_address[1]))
    try:
        silent.settimeout(10)
        url = f"https://127.0.0.1:{srv.server_address[1]}/api/v1/keys/SAE_B/status"
        st, body = _get(url, ctx=ssl.create_default_context(cafile=str(kme_crt)))  # not stuck behind it
        assert st == 200 and body["stored_key_count"] == 8
        assert silent.recv(1) == b""  # the KME hung up on the silent peer after its timeout
    finally:
        silent.close()
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("length", ["-5", "abc", str(1 << 30)])
def test_a_bad_content_length_is_a_400_at_once(tmp_path, length):
    import socket

    _stores(tmp_path)
    master, _ = _kmes(tmp_path)
    srv = make_server(master)
    serve_in_thread(srv)
    try:
        with socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=5) as c:
            c.sendall(f"POST /api/v1/keys/SAE_B/enc_keys HTTP/1.1\r\nHost: kme\r\nContent-Length: {length}\r\n"
                      "Connection: close\r\n\r\n".encode())
            reply = b""
            while chunk := c.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 400"), reply[:80]
        assert b"Content-Length" in reply and master.status("SAE_B")["stored_key_count"] == 8  # nothing taken
    finally:
        srv.shutdown()
        srv.server_close()


def test_crash_after_a_lost_claim_or_before_the_ledger_never_serves_the_block(tmp_path, monkeypatch):
    """Review finding: a crash between a lost store claim and its rollback looked like our own claim at
    restart. Entries are marked claimed only after the claim: an unclaimed entry whose block is gone
    is dropped. A pool file without a ledger entry (crash before the ledger write) is shredded."""
    blocks = _stores(tmp_path)
    master, _ = _kmes(tmp_path)
    other = KeyStore(tmp_path / "alice")

    def lose_then_crash(block_id=None):
        other.consume(block_id)  # another consumer wins the claim...
        raise SystemExit("power cut")  # ...and we crash before rolling back

    monkeypatch.setattr(master.store, "consume", lose_then_crash)
    with pytest.raises(SystemExit):
        master.enc_keys("SAE_B", number=1)
    stray = tmp_path / "alice/delivery" / "run-999999.key"
    stray.write_bytes(b"\x01" * 64)
    master2, _ = _kmes(tmp_path)
    assert not stray.exists() and not (tmp_path / "alice/delivery" / f"{IDS[0]}.key").exists()
    got = master2.enc_keys("SAE_B", number=1)["keys"][0]
    assert got["key_ID"] == _kid(blocks, IDS[1], 0)  # block 0 went to the other consumer, never to us


def test_a_truncated_pool_file_is_a_clear_error_not_a_short_key(tmp_path):
    blocks = _stores(tmp_path)
    master, slave = _kmes(tmp_path)
    got = master.enc_keys("SAE_B", number=1)["keys"]  # pools block 0 (3 keys) on the master
    pool = master._pool_file(IDS[0])
    pool.write_bytes(pool.read_bytes()[:40])  # damaged outside qkdpost: key 1 ends at byte 64
    with pytest.raises(DeliveryError, match="short") as e:
        master.enc_keys("SAE_B", number=1)
    assert e.value.status == 500
    assert key_bits(got[0]["key"]).size == 256
