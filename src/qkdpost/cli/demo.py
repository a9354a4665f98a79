"""``qkdpost demo``: simulate a short link and run the whole chain on it.

The simulator (``qkdpost.simulate``) writes both parties' timestamp files
(Bob's clock has an offset, a frequency offset and drift); the pipeline then
runs both parties in one process over a counted loopback channel: align,
sift, estimate, reconcile, verify, finite-key length, privacy amplification
and the two key stores. The summary is printed next to the simulator's
ground truth. (First version by the sifting engineer; extended to keys by
the pipeline.)
"""

from __future__ import annotations

import argparse
import hmac
import tempfile
import time
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="simulate a short link and turn it into verified keys (no files needed)",
        description="Simulate a short link (entanglement-based BBM92 by default, or decoy BB84), then run "
        "the whole post-processing chain on it with both parties in this process: align, sift, estimate, "
        "reconcile, verify, finite-key length, privacy amplification, key stores. Prints a summary next "
        "to the simulator's truth.",
    )
    p.add_argument("--topology", choices=("bbm92", "decoy"), default="bbm92",
                   help="entanglement (default) or prepare-and-measure decoy BB84")
    p.add_argument("--duration", type=float, default=None,
                   help="simulated seconds (default 3 for bbm92, 7 for decoy: 7e6 pulse slots at 1 MHz)")
    p.add_argument("--seed", type=int, default=1, help="simulation seed (default 1)")
    p.add_argument("--bob-offset-s", type=float, default=0.2718281828, help="Bob's clock offset (s)")
    p.add_argument("--bob-freq-ppm", type=float, default=-42.0, help="Bob's clock frequency offset (ppm)")
    p.add_argument("--loss-db", type=float, default=None, help="channel loss to Bob (dB)")
    p.add_argument("--block-bits", type=int, default=1 << 16, help="sifted bits per key block (default 65536)")
    p.add_argument("--ec-method", choices=("cascade", "ldpc", "auto"), default="cascade",
                   help="reconciliation (default cascade)")
    p.add_argument("--out", default=None, help="keep the link files, key stores and report here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import Config
    from ..keystore import KeyStore
    from ..pipeline.run import run_local
    from ..simulate import BBM92Config, DecoyConfig, write_link

    decoy = args.topology == "decoy"
    duration = args.duration if args.duration is not None else (7.0 if decoy else 3.0)
    kw: dict[str, Any] = {"duration_s": duration, "bob_offset_s": args.bob_offset_s,
                          "bob_freq_ppm": args.bob_freq_ppm}
    if decoy:
        # a link where a 2^16-bit block already certifies key with Lim et al. 2014: balanced bases
        # and a strong, frequent decoy (docs/finitekey.md, "Decoy BB84 end to end")
        kw.update(rep_rate_hz=1e6, loss_db=6.0, p_z_alice=0.5, p_z_bob=0.5, intensities=(0.5, 0.2, 0.0),
                  intensity_probs=(0.4, 0.45, 0.15))
    if args.loss_db is not None:
        kw["loss_db"] = args.loss_db
    sim_cfg = DecoyConfig(**kw) if decoy else BBM92Config(**kw)
    overrides: dict[str, Any] = {"block_bits": args.block_bits, "ec_method": args.ec_method}
    if decoy:
        overrides.update(decoy_mu=",".join(str(x) for x in sim_cfg.intensities),
                         decoy_p_mu=",".join(str(x) for x in sim_cfg.intensity_probs), acquisition_s=0.5)
    cfg = Config().replace(**overrides)

    with tempfile.TemporaryDirectory(prefix="qkdpost-demo-") as tmp:
        root = Path(args.out) if args.out else Path(tmp)
        link_dir = root / "link"
        t0 = time.perf_counter()
        truth = write_link(sim_cfg, link_dir, seed=args.seed)
        t_sim = time.perf_counter() - t0
        what = "decoy BB84 (Alice's slot log + Bob's timestamps)" if decoy else "BBM92 (both parties' timestamps)"
        print(f"simulated  {duration:g} s of {what} in {t_sim:.1f} s -> {link_dir}")
        t0 = time.perf_counter()
        rep = run_local(link_dir / "alice.arrow", link_dir / "bob.arrow", root / "keys", cfg, plot=bool(args.out))
        t_run = time.perf_counter() - t0
        sa, sb = KeyStore(root / "keys/alice"), KeyStore(root / "keys/bob")
        # key comparisons are constant-time, even in a self-check (DESIGN.md)
        same = sa.ids() == sb.ids() and all(
            hmac.compare_digest((root / "keys/alice/keys" / b / "key.bin").read_bytes(),
                                (root / "keys/bob/keys" / b / "key.bin").read_bytes())
            for b in sb.ids())
        t = rep.totals()
        front = rep.info.get("front", {})
        al = front.get("alignment") or {}
        clock = truth["clock"]
        print(f"pipeline   {t_run:.1f} s for {t.get('detections_alice', 0)} + {t.get('detections_bob', 0)} detections "
              f"(first run includes Numba compilation; 'qkdpost warmup' does it ahead)")
        if al:
            print(f"alignment  offset {al.get('offset_s', float('nan')):+.9f} s, {al.get('freq_ppm', float('nan')):+.4f} ppm "
                  f"(truth {clock['offset_s']:+.9f} s, {clock['freq_ppm']:+.4f} ppm)")
        for line in rep.summary().splitlines():
            print(f"keys       {line}")
        if not decoy:
            z = truth["coincidences"]["Z"]
            print(f"truth      QBER of true Z pairs {z['qber'] * 100:.3f} %")
        for b in rep.blocks:
            note = "" if b.status == "ok" else f"  dropped: {b.reason}"
            print(f"block {b.index:3d}  {b.n_sifted} sifted -> {b.final_length} final bits, QBER {b.qber_observed * 100:.2f} %, "
                  f"leak EC {b.leak_ec} + tag {b.leak_verify}, bound {b.bound or '-'}{note}")
        print(f"check      Alice and Bob hold {t['final_bits']} final key bits each in {len(sb.ids())} blocks; "
              f"their key stores {'are identical' if same else 'DIFFER'}")
        if args.out:
            from ..report import write_json_atomic

            data = rep.to_dict()
            data["alignment"] = front.get("alignment")
            data["truth"] = truth
            write_json_atomic(root / "report.json", data)
            print(f"wrote      {root}/ (link/, keys/alice, keys/bob, report.json, keys/report.png)")
        return 0 if same else 1
