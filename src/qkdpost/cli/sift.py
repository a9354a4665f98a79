"""``qkdpost sift``: align and sift two timestamp files (BBM92), write both parties' bits.

Output directory (each file written atomically: temporary sibling + rename):

``alice_key.npy``, ``bob_key.npy``
    Each party's key-basis sifted bits, uint8 0/1, equal length, pair order.
``alice_test.npy``, ``bob_test.npy``
    Each party's disclosed test-basis bits (for estimation; not key).
``key_class.npy``, ``test_class.npy`` (decoy BB84 only)
    Intensity class of every key bit and test bit (0 = signal, 1 = decoy,
    2 = weak/vacuum), the same on both sides.
``report.json``
    Rates, clock offset/frequency/drift (BBM92) or slot offset (decoy),
    counts per basis (and intensity class), double clicks and dead-time
    losses, QBER with its bound, round trips and bytes, the configuration
    and versions.

The topology follows Alice's file: a slot log (``kind="slots"``) is sifted as
decoy BB84 against Bob's detections and sync ticks, timestamps as BBM92.

Both parties run in this process over a loopback channel that serialises and
counts every message; each party's object only sees its own file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def add_sift_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sifting and alignment (0 = automatic where stated)")
    g.add_argument("--coincidence-window-ps", type=float, default=0.0,
                   help="half-width of the coincidence window (default 0: 3 sigma of the measured peak)")
    g.add_argument("--multi-click-window-ps", type=float, default=0.0,
                   help="clicks of one party this close join one detection (default: the coincidence window, "
                        "else 1000)")
    g.add_argument("--dead-time-ps", type=float, default=0.0, help="common software dead time (default 0: off)")
    g.add_argument("--key-basis", choices=("Z", "X"), default="Z", help="basis whose bits become key")
    g.add_argument("--bob-flip", default="", help="bases in which Bob inverts his bits, e.g. Z,X for a singlet")
    g.add_argument("--window-s", type=float, default=0.05, help="Alice's time per sifting round trip")
    g.add_argument("--max-offset-s", type=float, default=0.6, help="largest clock offset searched")
    g.add_argument("--offset-prior-s", type=float, default=0.0, help="centre of the offset search")
    g.add_argument("--max-freq-ppm", type=float, default=120.0, help="largest frequency offset searched")
    g.add_argument("--acquisition-s", type=float, default=1.5, help="data used to acquire the alignment")
    g.add_argument("--chunk-events", type=int, default=1 << 20, help="events per chunk read")


def sift_config_from_args(args: argparse.Namespace) -> Any:
    from ..align import AlignConfig
    from ..sift import SiftConfig

    return SiftConfig(
        coincidence_window_ps=args.coincidence_window_ps,
        multi_click_window_ps=args.multi_click_window_ps,
        dead_time_ps=args.dead_time_ps,
        key_basis=args.key_basis,
        bob_flip=tuple(b.strip().upper() for b in args.bob_flip.split(",") if b.strip()),
        window_s=args.window_s,
        align=AlignConfig(max_offset_s=args.max_offset_s, offset_prior_s=args.offset_prior_s,
                          max_freq_ppm=args.max_freq_ppm, acquisition_s=args.acquisition_s),
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sift",
        help="align and sift two timestamp files (BBM92, or decoy BB84 from Alice's slot log); write both "
             "parties' sifted bits and a report",
        description="Find the clock offset, frequency and drift between Alice's and Bob's timestamp files, "
        "pair their detections and sift them as a two-party protocol over a counted loopback channel. "
        "Writes alice_key.npy, bob_key.npy, alice_test.npy, bob_test.npy and report.json into --out.",
    )
    p.add_argument("--alice", required=True, help="Alice's timestamp file (any format qkdpost info reads)")
    p.add_argument("--bob", required=True, help="Bob's timestamp file")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--format", default="auto", help="input format of both files (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    add_sift_arguments(p)
    p.set_defaults(func=run)


def _write_outputs(out: str, arrays: dict[str, Any], report: dict[str, Any]) -> None:
    """Write every output to a temporary sibling first, then rename them all.

    A failure while writing (disk full, an unserialisable report) leaves no
    output at all, so one party's key file never appears without the other's.
    """
    import numpy as np

    from ..io._atomic import AtomicPath

    staged: list[AtomicPath] = []
    try:
        for name, arr in arrays.items():
            ap = AtomicPath(os.path.join(out, name))
            staged.append(ap)
            with open(ap.tmp, "wb") as f:
                np.save(f, arr)
        ap = AtomicPath(os.path.join(out, "report.json"))
        staged.append(ap)
        with open(ap.tmp, "w") as f:
            json.dump(report, f, indent=2, default=_json_default)
            f.write("\n")
        for ap in staged:
            ap.commit()
    except BaseException:
        for ap in staged:
            ap.abort()
        raise


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sift_files(alice: str, bob: str, out: str, cfg: Any, *, fmt: str = "auto", chunk_events: int = 1 << 20,
               progress: bool = True) -> dict[str, Any]:
    """Library call behind ``qkdpost sift``: returns the report written to ``out/report.json``."""
    import dataclasses
    import platform

    import numba
    import numpy as np
    from tqdm import tqdm

    from .. import __version__
    from ..io import open_stream
    from ..sift import sift_streams

    info_a, chunks_a = open_stream(alice, format=fmt, chunk_events=chunk_events)
    info_b, chunks_b = open_stream(bob, format=fmt, chunk_events=chunk_events)
    bar = tqdm(unit="ev", unit_scale=True, desc="sift (Bob's events)", file=sys.stderr,
               disable=None if progress else True, leave=False)

    def counted(chunks: Any) -> Any:
        for c in chunks:
            bar.update(len(c.t))
            yield c

    try:
        run = sift_streams(info_a, chunks_a, info_b, counted(chunks_b), cfg)
    finally:
        bar.close()
    arrays = {"alice_key.npy": run.alice.key, "bob_key.npy": run.bob.key,
              "alice_test.npy": run.alice.test, "bob_test.npy": run.bob.test}
    if run.topology == "decoy":
        arrays["key_class.npy"] = run.bob.key_class
        arrays["test_class.npy"] = run.bob.test_class
    report = run.report()
    report["inputs"] = {"alice": os.path.abspath(alice), "bob": os.path.abspath(bob),
                        "alice_info": info_a.to_json(), "bob_info": info_b.to_json()}
    report["config"] = dataclasses.asdict(cfg)
    report["versions"] = {"qkdpost": __version__, "numpy": np.__version__, "numba": numba.__version__,
                          "python": platform.python_version()}
    report["outputs"] = {"alice_key": "alice_key.npy", "bob_key": "bob_key.npy", "alice_test": "alice_test.npy",
                         "bob_test": "bob_test.npy", "format": "NumPy .npy, uint8 0/1, pair order"}
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        from ..errors import InputError

        raise InputError(f"--out {out!r}: cannot create the output directory ({exc.strerror}); "
                         "give a writable directory path") from None
    _write_outputs(out, arrays, report)
    return report


def _summary_decoy(rep: dict[str, Any]) -> list[str]:
    off = rep["slot_offset"]
    q = rep["qber_test"]
    c = rep["channel"]
    lines = [f"slots      offset {off['slot_offset']} slots (significance {off['significance']:.1f}), phase "
             f"{off['phase_ticks']:.0f} ticks, Bob's slot period {off['slot_period_ticks_bob']:.3f} ticks"]
    lines.append(f"rates      Bob {rep['rates_hz']['bob_detections']:.4g} detections/s, sifted key "
                 f"{rep['rates_hz']['sifted_key']:.4g}/s")
    lines.append(f"sifted     {rep['key_bits']} key bits, {rep['test_bits']} test bits")
    for cls, d in rep["per_intensity_class"].items():
        qc = rep["qber_test_by_class"][cls]
        lines.append(f"class {cls}    sifted Z {d['Z']['sifted']}, X {d['X']['sifted']}; test QBER "
                     f"{qc['qber'] * 100 if qc['n'] else float('nan'):.2f} % of {qc['n']}")
    lines.append(f"QBER test  {q['qber'] * 100:.3f} %  (bound [{q['lower'] * 100:.3f}, {q['upper'] * 100:.3f}] % "
                 f"at eps {q['eps']:g}, {q['method']})")
    lines.append(f"channel    {c['round_trips']} round trips, {c['bytes_sent']} B to Alice, "
                 f"{c['bytes_received']} B to Bob")
    return lines


def summary_lines(rep: dict[str, Any]) -> list[str]:
    if rep.get("topology") == "decoy":
        return _summary_decoy(rep)
    al = rep.get("alignment") or {}
    r = rep["rates_hz"]
    q = rep["qber_test"]
    b = rep["bob"]
    lines = []
    if al:
        lines.append(f"clock      offset {al['offset_s']:+.9f} s, frequency {al['freq_ppm']:+.4f} ppm, "
                     f"drift {al['drift_ppm_per_s']:+.2g} ppm/s, peak sigma {al['sigma_ps']:.0f} ps")
    lines.append(f"rates      Alice {r['alice_detections']:.4g}/s, Bob {r['bob_detections']:.4g}/s, "
                 f"coincidences {r['coincidences']:.4g}/s (window +-{rep['coincidence_window_ps']:.0f} ps)")
    lines.append(f"sifted     {rep['key_bits']} key bits ({r['sifted_key']:.4g}/s), {rep['test_bits']} test bits, "
                 f"{b['basis_mismatch']} basis mismatches")
    lines.append(f"QBER test  {q['qber'] * 100:.3f} %  (bound [{q['lower'] * 100:.3f}, {q['upper'] * 100:.3f}] % "
                 f"at eps {q['eps']:g}, {q['method']})")
    c = rep["channel"]
    lines.append(f"channel    {c['round_trips']} round trips, {c['bytes_sent']} B to Alice, "
                 f"{c['bytes_received']} B to Bob")
    cond_a, cond_b = rep["alice"]["conditioning"], b["conditioning"]
    lines.append("losses     double clicks A/B {}/{}, dead time A/B {}/{}".format(
        cond_a["multi_click_same_basis"] + cond_a["multi_click_cross_basis"],
        cond_b["multi_click_same_basis"] + cond_b["multi_click_cross_basis"],
        cond_a["lost_dead_time"], cond_b["lost_dead_time"]))
    return lines


def run(args: argparse.Namespace) -> int:
    cfg = sift_config_from_args(args)
    rep = sift_files(args.alice, args.bob, args.out, cfg, fmt=args.format, chunk_events=args.chunk_events,
                     progress=not args.quiet)
    if not args.quiet:
        for line in summary_lines(rep):
            print(line)
        extra = ", key_class.npy, test_class.npy" if rep.get("topology") == "decoy" else ""
        print(f"wrote {args.out}/alice_key.npy, bob_key.npy, alice_test.npy, bob_test.npy{extra}, report.json")
    return 0
