"""A small, obviously-correct stage kit for testing the pipeline's orchestration.

Each stage here is simple enough to check by eye, so tests of the pipeline
(two-phase commit, drops, recovery, re-runs, transport) do not depend on the
heavy stages; end-to-end tests with the real kit live in
tests/test_pipeline_e2e.py.

- reconcile: passes of 8-bit block parities under public permutations; Bob
  binary-searches each mismatching block (one round trip per level); stop
  after two quiet passes. Leak = parities sent.
- verify: HMAC-SHA256 of the block under a fresh key from Alice, 64-bit tag.
- amplify: key bits XOR a SHA-256 keystream of Alice's seed, truncated to m
  (not a universal hash: for orchestration tests only).
- secure length: n - leak_ec - leak_verify - stats["penalty"].
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import numpy as np

from qkdpost.pipeline.stages import StageKit
from qkdpost.reconcile.result import ReconcileResult

K = 8


def _stream(seed: bytes, n: int) -> np.ndarray:
    out = bytearray()
    i = 0
    while len(out) * 8 < n:
        out += hashlib.sha256(seed + i.to_bytes(8, "little")).digest()
        i += 1
    return np.unpackbits(np.frombuffer(bytes(out), np.uint8), count=n, bitorder="little")


def _tag(key: bytes, bits: np.ndarray) -> bytes:
    return hmac.new(key, np.packbits(bits).tobytes() + len(bits).to_bytes(8, "little"), "sha256").digest()[:8]


class ToyKit(StageKit):
    def __init__(self, fail_verify: set | None = None):
        self.fail_verify = fail_verify or set()

    def reconcile_alice(self, method, frames, cfg, *, qber):
        cache = {}

        def permuted(i, pseed):
            key = (i, pseed)
            if key not in cache:
                bits = frames[i]
                cache.clear()
                cache[key] = bits[np.random.default_rng(pseed).permutation(bits.size)] if pseed else bits
            return cache[key]

        def parities(body):
            ids = body["ids"].split()
            lo, hi, fr = body["lo"], body["hi"], body["frame"]
            out = np.zeros(len(lo), np.uint8)
            for j in range(len(lo)):
                out[j] = permuted(ids[fr[j]], body["perm"])[lo[j]:hi[j]].sum() & 1
            return {"p": out}

        return {"toy.parity": parities}

    def reconcile_bob(self, channel, method, ids, bits, qber, cfg, *, seed):
        """Passes of 8-bit block parities + bisection, under fresh public
        permutations, until two passes in a row find nothing."""
        bits = bits.copy()
        N, n = bits.shape
        leak = np.zeros(N, np.int64)
        fixed = np.zeros(N, np.int64)
        idsj = " ".join(ids)
        quiet = 0
        pseed = 0
        while quiet < 2:
            perm = np.random.default_rng(pseed).permutation(n) if pseed else np.arange(n)
            view = bits[:, perm]

            def ask(frame, lo, hi):
                p = channel.request("toy.parity", {"ids": idsj, "frame": frame, "lo": lo, "hi": hi, "perm": pseed})["p"]
                np.add.at(leak, frame, 1)
                mine = np.array([view[f, a:b].sum() & 1 for f, a, b in zip(frame, lo, hi)], np.uint8)
                return p != mine

            frame = np.repeat(np.arange(N), (n + K - 1) // K)
            lo = np.tile(np.arange(0, n, K), N)
            hi = np.minimum(lo + K, n)
            bad = ask(frame, lo, hi)
            quiet = quiet + 1 if not bad.any() else 0
            frame, lo, hi = frame[bad], lo[bad], hi[bad]  # intervals with odd error count
            while len(frame):
                single = hi - lo == 1
                for f, a in zip(frame[single], lo[single]):
                    view[f, a] ^= 1
                    fixed[f] += 1
                frame, lo, hi = frame[~single], lo[~single], hi[~single]
                if not len(frame):
                    break
                mid = (lo + hi) // 2
                left_bad = ask(frame, lo, mid)
                lo = np.where(left_bad, lo, mid)
                hi = np.where(left_bad, mid, hi)
            bits[:, perm] = view
            pseed += 1
        return ReconcileResult(bits=bits, leaked_bits=leak, success=np.ones(N, bool), errors_corrected=fixed,
                               round_trips=0, bytes_sent=0, method="toy")

    def verify_alice(self, frames, cfg):
        def tags(body):
            key = secrets.token_bytes(32)
            ids = body["ids"].split()
            return {"key": key, "tags": b"".join(_tag(key, frames[i]) for i in ids)}

        return {"toy.verify": tags}

    def verify_bob(self, channel, ids, bits, cfg):
        r = channel.request("toy.verify", {"ids": " ".join(ids)})
        ok = np.array([hmac.compare_digest(_tag(r["key"], bits[j]), r["tags"][8 * j: 8 * j + 8])
                       and ids[j] not in self.fail_verify for j in range(len(ids))])
        return ok, 64, 2.0**-64

    def secure_length(self, stats, n, leak_ec, leak_verify, eps_cor, cfg):
        ell = n - leak_ec - leak_verify - int(stats.get("penalty", 0))
        return ell, "toy", {"penalty": int(stats.get("penalty", 0))}

    def amplify_alice(self, frames, lengths, cfg):
        out = {}

        def seeds(body):
            ids = body["ids"].split()
            seed = secrets.token_bytes(16)
            for i in ids:
                m = lengths[i]
                out[i] = frames[i][:m] ^ _stream(seed + i.encode(), m)
            return {"seed": seed}

        return {"toy.seed": seeds}, lambda i: out[i]

    def amplify_bob(self, channel, ids, bits, lengths, cfg, *, seed):
        s = channel.request("toy.seed", {"ids": " ".join(ids)})["seed"]
        return [bits[j][: lengths[j]] ^ _stream(s + ids[j].encode(), int(lengths[j])) for j in range(len(ids))]


def same_stores(out):
    """Assert Alice's and Bob's stores under ``out`` hold byte-identical keys under the same ids."""
    from qkdpost.keystore import KeyStore

    sa, sb = KeyStore(out / "alice"), KeyStore(out / "bob")
    assert sa.ids() == sb.ids()
    for bid in sb.ids():
        assert (out / "alice/keys" / bid / "key.bin").read_bytes() == (out / "bob/keys" / bid / "key.bin").read_bytes()
        assert sa.meta(bid)["final_length"] == sb.meta(bid)["final_length"]
    return sa, sb
