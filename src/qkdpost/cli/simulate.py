"""``qkdpost simulate``: write a simulated link (alice.arrow, bob.arrow, truth.json)."""

from __future__ import annotations

import argparse
from typing import Any


def _floats(text: str) -> Any:
    """``0.6`` -> 0.6; ``0.6,0.58,0.6,0.61`` -> tuple of floats."""
    parts = [p for p in text.split(",") if p.strip()]
    try:
        vals = tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number or comma-separated numbers") from None
    return vals[0] if len(vals) == 1 else vals


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate a BBM92 or decoy-BB84 link: alice.arrow, bob.arrow, truth.json",
        description="Simulate a QKD link reproducibly from a seed and write Alice's and Bob's native timestamp "
        "files plus a ground-truth JSON. Unset options keep the library defaults (see docs/simulate.md); "
        "detector options apply to both parties' detectors.",
    )
    p.add_argument("--topology", choices=("bbm92", "decoy"), default="bbm92")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: fresh, recorded in truth.json)")
    p.add_argument("--duration", dest="duration_s", type=float, default=None, help="simulated seconds")
    p.add_argument("--rate", type=float, default=None,
                   help="bbm92: pairs emitted per second; decoy: pulse repetition rate (Hz)")
    p.add_argument("--loss-db", type=float, default=None, help="channel loss to Bob (dB)")
    p.add_argument("--alice-loss-db", type=float, default=None, help="bbm92: loss from source to Alice (dB)")
    p.add_argument("--tick-s", type=float, default=None, help="TDC bin (s), e.g. 1e-12")
    p.add_argument("--misalignment-z", type=float, default=None)
    p.add_argument("--misalignment-x", type=float, default=None)
    p.add_argument("--intercept-resend", type=float, default=None, metavar="F",
                   help="fraction of Bob's photons (pulses) an eavesdropper measures and resends (default 0)")
    p.add_argument("--p-z-alice", type=float, default=None, help="probability of the Z basis at Alice")
    p.add_argument("--p-z-bob", type=float, default=None, help="probability of the Z basis at Bob")
    p.add_argument("--pair-statistics", choices=("thermal", "poisson"), default=None)
    p.add_argument("--coherence-time-s", type=float, default=None)
    p.add_argument("--intensities", type=_floats, default=None, help="decoy: e.g. 0.5,0.1,0.0002 or 0.5,0.1")
    p.add_argument("--intensity-probs", type=_floats, default=None, help="decoy: e.g. 0.7,0.2,0.1")
    p.add_argument("--sync-every", type=int, default=None, help="decoy: slots between sync ticks (0: none)")
    p.add_argument("--sync-channel", type=int, default=None)
    p.add_argument("--efficiency", type=_floats, default=None, help="detector efficiency, one or four (H,V,D,A)")
    p.add_argument("--dark-rate-hz", type=_floats, default=None, help="dark counts/s, one or four")
    p.add_argument("--dead-time-s", type=float, default=None)
    p.add_argument("--afterpulse-prob", type=float, default=None)
    p.add_argument("--afterpulse-tau-s", type=float, default=None)
    p.add_argument("--jitter-s", type=float, default=None, help="Gaussian jitter sigma (s)")
    p.add_argument("--delay-s", type=_floats, default=None, help="fixed delay per detector (s), one or four")
    p.add_argument("--channels", type=_ints, default=None, help="channel numbers of H,V,D,A, e.g. 0,1,2,3")
    p.add_argument("--bob-offset-s", type=float, default=None)
    p.add_argument("--bob-freq-ppm", type=float, default=None)
    p.add_argument("--bob-drift-ppm-per-s", type=float, default=None)
    p.add_argument("--labels", action="store_true", help="also write alice_labels.npy/bob_labels.npy (truth per event)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> Any:
    """Turn parsed arguments into a BBM92Config or DecoyConfig (library defaults for unset flags)."""
    import dataclasses

    from ..simulate import BBM92Config, DecoyConfig

    cls = BBM92Config if args.topology == "bbm92" else DecoyConfig
    base = cls()
    det_fields = {f.name for f in dataclasses.fields(base.bob_detectors)}
    top: dict[str, Any] = {}
    det: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for key, val in vars(args).items():
        if val is None or key in ("topology", "out", "seed", "func", "command", "verbose", "labels", "no_progress"):
            continue
        if key == "rate":
            top["pair_rate_hz" if cls is BBM92Config else "rep_rate_hz"] = val
        elif key in det_fields:
            det[key] = val
        elif key in names:
            top[key] = val
        else:
            from ..errors import ConfigError

            raise ConfigError(f"--{key.replace('_', '-')}: not an option of --topology {args.topology}")
    for name in ("intensities", "intensity_probs"):
        if name in top and not isinstance(top[name], tuple):
            top[name] = (top[name],)
    if det:
        for name in ("alice_detectors", "bob_detectors"):
            if name in names:
                top[name] = dataclasses.replace(getattr(base, name), **det)
    return cls(**top)


def run(args: argparse.Namespace) -> int:
    import time

    from ..simulate import write_link

    cfg = build_config(args)
    start = time.perf_counter()
    truth = write_link(cfg, args.out, seed=args.seed, labels=args.labels, progress=not args.no_progress)
    wall = time.perf_counter() - start
    files = truth["files"]
    print(f"{truth['topology']} link, {cfg.duration_s:g} s simulated in {wall:.2f} s (seed {truth['seed']})")
    print(f"  alice.arrow: {files['alice_events']} events   bob.arrow: {files['bob_events']} events")
    if truth["topology"] == "bbm92":
        c = truth["coincidences"]
        for b in ("Z", "X"):
            q = c[b]["qber"]
            print(f"  true pairs {b}: {c[b]['sifted']} sifted, QBER {q if q is None else round(q, 5)}")
    else:
        for b in ("Z", "X"):
            q = truth["qber"][b]
            print(f"  true QBER {b}: {q if q is None else round(q, 5)}")
    clk = truth["clock"]
    print(f"  Bob clock: offset {clk['offset_s']} s, {clk['freq_ppm']} ppm, drift {clk['drift_ppm_per_s']} ppm/s")
    print(f"  wrote {args.out}/alice.arrow, bob.arrow, truth.json")
    return 0
