"""``qkdpost demo``: simulate a short BBM92 link and sift it, printing a summary.

Everything runs in memory: the simulator (``qkdpost.simulate``) makes both
parties' timestamps with a clock offset, frequency offset and drift at Bob;
the two parties then align and sift over a counted loopback channel, and the
result is printed next to the simulator's ground truth.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="simulate a short link and sift it (no files needed)",
        description="Simulate a short link (entanglement-based BBM92 by default, or decoy BB84), align the "
        "two parties and sift the detections as a two-party protocol; print what was found next to the "
        "simulator's truth.",
    )
    p.add_argument("--topology", choices=("bbm92", "decoy"), default="bbm92",
                   help="entanglement (default) or prepare-and-measure decoy BB84")
    p.add_argument("--duration", type=float, default=None,
                   help="simulated seconds (default 3 for bbm92, 0.2 for decoy)")
    p.add_argument("--seed", type=int, default=1, help="simulation seed (default 1)")
    p.add_argument("--bob-offset-s", type=float, default=0.2718281828, help="Bob's clock offset (s)")
    p.add_argument("--bob-freq-ppm", type=float, default=-42.0, help="Bob's clock frequency offset (ppm)")
    p.add_argument("--loss-db", type=float, default=None, help="channel loss to Bob (dB)")
    p.add_argument("--out", default=None, help="also write the sifted bits and report.json here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io.model import iter_arrays
    from ..sift import SiftConfig, sift_streams
    from ..simulate import BBM92Config, DecoyConfig, generate
    from .sift import _save_json, _save_npy, summary_lines

    decoy = args.topology == "decoy"
    duration = args.duration if args.duration is not None else (0.2 if decoy else 3.0)
    kw: dict[str, Any] = {"duration_s": duration, "bob_offset_s": args.bob_offset_s,
                          "bob_freq_ppm": args.bob_freq_ppm}
    if args.loss_db is not None:
        kw["loss_db"] = args.loss_db
    cfg = DecoyConfig(**kw) if decoy else BBM92Config(**kw)
    t0 = time.perf_counter()
    link = generate(cfg, seed=args.seed)
    t_sim = time.perf_counter() - t0
    n_a, n_b = len(link.alice.t), len(link.bob.t)
    what = "decoy BB84: Alice's log" if decoy else "BBM92: Alice"
    print(f"simulated  {cfg.duration_s:g} s of {what} {n_a} events, Bob {n_b} events ({t_sim:.1f} s)")
    t0 = time.perf_counter()
    run_ = sift_streams(
        link.alice.info, iter_arrays(link.alice.t, link.alice.ch, 1 << 20),
        link.bob.info, iter_arrays(link.bob.t, link.bob.ch, 1 << 20),
        SiftConfig(),
    )
    t_sift = time.perf_counter() - t0
    rep = run_.report()
    for line in summary_lines(rep):
        print(line)
    truth = link.truth
    clock = truth["clock"]
    if decoy:
        tq = truth["qber"]
        sig = truth["counts"][next(iter(truth["counts"]))]
        print(f"truth      Bob's clock offset {clock['offset_s']:+.9f} s, {clock['freq_ppm']:+.4f} ppm (the sync "
              f"ticks absorb it); QBER Z {tq['Z'] * 100:.3f} %, X {tq['X'] * 100:.3f} %; signal sifted "
              f"Z {sig['Z']['sifted']}, X {sig['X']['sifted']}")
    else:
        z, x = truth["coincidences"]["Z"], truth["coincidences"]["X"]
        print(f"truth      offset {clock['offset_s']:+.9f} s, frequency {clock['freq_ppm']:+.4f} ppm, "
              f"drift {clock['drift_ppm_per_s']:+.2g} ppm/s; true pairs Z {z['sifted']} "
              f"(QBER {z['qber'] * 100:.3f} %), X {x['sifted']} (QBER {x['qber'] * 100:.3f} %)")
    key_err = int((run_.alice.key != run_.bob.key).sum())
    n_key = int(run_.alice.key.size)
    print(f"check      Alice and Bob hold {n_key} key bits each; {key_err} differ "
          f"({100 * key_err / max(n_key, 1):.3f} %, to be corrected by reconciliation)")
    print(f"time       sifted {(n_a + n_b) / t_sift / 1e6:.2f} M events/s ({t_sift:.2f} s, incl. alignment "
          f"and the serialised channel)")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        _save_npy(os.path.join(args.out, "alice_key.npy"), run_.alice.key)
        _save_npy(os.path.join(args.out, "bob_key.npy"), run_.bob.key)
        _save_npy(os.path.join(args.out, "alice_test.npy"), run_.alice.test)
        _save_npy(os.path.join(args.out, "bob_test.npy"), run_.bob.test)
        rep["truth"] = truth
        _save_json(os.path.join(args.out, "report.json"), rep)
        print(f"wrote      {args.out}/")
    return 0
