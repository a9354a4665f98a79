"""The front halves (align + sift over the channel) take read-only, memory-mapped chunks as they are."""

import numpy as np
import pytest

import qkdpost.sift as sift_mod
from qkdpost.channel import LoopbackChannel, Responder
from qkdpost.config import Config
from qkdpost.io.model import Chunk
from qkdpost.pipeline.front import AliceFront, BobFront
from qkdpost.sift import seeded_bits
from qkdpost.simulate import BBM92Config, DecoyConfig, generate

LINKS = {
    "bbm92": (BBM92Config(duration_s=0.6), {}),
    "decoy": (DecoyConfig(duration_s=0.05, loss_db=10),
              {"decoy_mu": "0.5,0.1,0.0002", "decoy_p_mu": "0.7,0.2,0.1"}),
}


def _chunks(t, ch, n, readonly):
    edges = np.linspace(0, len(t), n + 1).astype(int)
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        tt, cc = t[a:b].copy(), ch[a:b].copy()
        if readonly:
            tt.flags.writeable = False
            cc.flags.writeable = False
        out.append(Chunk(tt, cc))
    return out


def _sift(link, cfg, readonly):
    segs_a = []
    af = AliceFront(cfg, link.alice.info, chunks=iter(_chunks(link.alice.t, link.alice.ch, 5, readonly)),
                    emit=segs_a.append, random_bits=seeded_bits(1))
    bf = BobFront(cfg, link.bob.info, LoopbackChannel(Responder(af.handlers())), random_bits=seeded_bits(2))
    segs_b = [bf.push(c.t, c.ch) for c in _chunks(link.bob.t, link.bob.ch, 7, readonly)]
    segs_b.append(bf.finish())
    cat = lambda segs: np.concatenate([s.bits for s in segs] + [np.zeros(0, np.uint8)])  # noqa: E731
    return cat(segs_a), cat(segs_b)


@pytest.mark.parametrize("topology", ["bbm92", "decoy"])
def test_read_only_chunks_sift_like_writable_ones_without_a_copy(topology, monkeypatch):
    lcfg, extra = LINKS[topology]
    link = generate(lcfg, seed=4)
    cfg = Config().replace(seed=3, acquisition_s=0.3, **extra)
    a_w, b_w = _sift(link, cfg, readonly=False)
    seen = []
    if topology == "bbm92":
        orig = sift_mod._Conditioner.feed

        def feed(self, t, ch, name):
            seen.append(not t.flags.writeable)  # the caller's read-only array itself, not a writable copy
            return orig(self, t, ch, name)

        monkeypatch.setattr(sift_mod._Conditioner, "feed", feed)
    a_r, b_r = _sift(link, cfg, readonly=True)
    assert b_w.size > 1000 and a_w.size == b_w.size
    np.testing.assert_array_equal(a_r, a_w)
    np.testing.assert_array_equal(b_r, b_w)
    if topology == "bbm92":
        assert seen and all(seen)
