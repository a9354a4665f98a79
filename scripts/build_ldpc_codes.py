#!/usr/bin/env python
"""Build (or check) the LDPC codes shipped in ``src/qkdpost/data/ldpc/``.

Every code is a PEG construction (qkdpost.reconcile.ldpc._kernels.peg_build)
from a published BSC degree distribution (qkdpost.reconcile.ldpc.codes.
DISTRIBUTIONS) at one frame length, with a seed derived from the code name,
so the output is a pure function of this script and the package source.
Files are MacKay alist, gzip level 9 with mtime 0; ``manifest.json`` records
provenance and the SHA-256 of each uncompressed alist text.

Usage
-----
    python scripts/build_ldpc_codes.py            # (re)build everything
    python scripts/build_ldpc_codes.py --check    # rebuild in memory, compare with shipped
    python scripts/build_ldpc_codes.py --only mm2012-r0.70-n16384 --check
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from qkdpost.reconcile.ldpc.codes import (
    DISTRIBUTIONS,
    alist_text,
    build_peg_code,
    has_four_cycle,
    write_alist,
)

OUT = Path(__file__).resolve().parent.parent / "src" / "qkdpost" / "data" / "ldpc"

# (frame length, distributions, PEG search bound in checks)
PLAN: list[tuple[int, tuple[str, ...], int]] = [
    (2**14, tuple(DISTRIBUTIONS), 2000),
    (2**16, tuple(DISTRIBUTIONS), 2000),
    # 2^18: the rates that cover Q = 2-9.5 % (package size); PEG takes 1.5-2
    # min per code here (the mm2012 codes shipped before took 4-26 min and
    # decoded at higher f in more iterations, docs/ldpc.md).
    (2**18, ("elk2009-r0.85", "elk2009-r0.80", "elk2009-r0.75", "elk2009-r0.65", "elk2009-r0.55"), 2000),
]


def code_seed(name: str) -> int:
    """64-bit nonzero PEG seed: first 8 bytes of SHA-256(name), odd."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") | 1


def entries() -> list[tuple[str, str, int, int]]:
    out = []
    for n, dists, reach in PLAN:
        for d in dists:
            out.append((f"{d}-n{n}", d, n, reach))
    return out


def build_one(name: str, dist: str, n: int, reach: int) -> tuple[dict, object]:
    t0 = time.perf_counter()
    code, four = build_peg_code(dist, n, seed=code_seed(name), max_reach=reach)
    secs = time.perf_counter() - t0
    text = alist_text(code).encode("ascii")
    cdeg = np.diff(code.row_ptr)
    entry = {
        "name": name,
        "file": f"{name}.alist.gz",
        "distribution": dist,
        "source": DISTRIBUTIONS[dist]["source"],
        "design_rate": DISTRIBUTIONS[dist]["rate"],
        "n": code.n,
        "m": code.m,
        "rate": round(code.rate, 6),
        "edges": code.n_edges,
        "check_degrees": [int(cdeg.min()), int(cdeg.max())],
        "peg_seed": code_seed(name),
        "peg_max_reach": reach,
        "four_cycle_edges": four,
        "untainted_max": int(code.punct_order.shape[0]),
        "sha256": hashlib.sha256(text).hexdigest(),
    }
    print(f"{name}: m={code.m} E={code.n_edges} 4-cycle edges={four} "
          f"untainted={entry['untainted_max']} ({secs:.1f} s)", flush=True)
    return entry, code


def adopt_one(name: str, dist: str, n: int, reach: int) -> tuple[dict, object]:
    from qkdpost.reconcile.ldpc.codes import read_alist

    code = read_alist(OUT / f"{name}.alist.gz", name=name)
    text = alist_text(code).encode("ascii")
    cdeg = np.diff(code.row_ptr)
    entry = {
        "name": name, "file": f"{name}.alist.gz", "distribution": dist,
        "source": DISTRIBUTIONS[dist]["source"], "design_rate": DISTRIBUTIONS[dist]["rate"],
        "n": code.n, "m": code.m, "rate": round(code.rate, 6), "edges": code.n_edges,
        "check_degrees": [int(cdeg.min()), int(cdeg.max())], "peg_seed": code_seed(name),
        "peg_max_reach": reach, "four_cycle_edges": int(has_four_cycle(code)),
        "untainted_max": int(code.punct_order.shape[0]), "sha256": hashlib.sha256(text).hexdigest(),
    }
    print(f"{name}: adopted from file, 4-cycles={entry['four_cycle_edges']}", flush=True)
    return entry, code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="rebuild in memory and compare with the shipped files")
    ap.add_argument("--only", action="append", default=[], help="limit to these code names")
    ap.add_argument("--girth-check", action="store_true", help="also verify no 4-cycles by brute force")
    ap.add_argument("--adopt", action="store_true",
                    help="record manifest entries for already written files of --only codes without "
                         "rebuilding (after an interrupted build; --check later proves them)")
    args = ap.parse_args(argv)
    todo = [e for e in entries() if not args.only or e[0] in args.only]
    if args.only and len(todo) != len(args.only):
        print(f"unknown names in --only; known: {[e[0] for e in entries()]}", file=sys.stderr)
        return 2
    manifest_path = OUT / "manifest.json"
    shipped = {}
    if manifest_path.exists():
        shipped = {c["name"]: c for c in json.loads(manifest_path.read_text())["codes"]}
    new_entries = {}
    bad = 0
    for name, dist, n, reach in todo:
        if args.adopt:
            entry, code = adopt_one(name, dist, n, reach)
        else:
            entry, code = build_one(name, dist, n, reach)
        if args.girth_check and has_four_cycle(code):
            print(f"{name}: has a 4-cycle", file=sys.stderr)
            bad += 1
        if args.check or args.adopt:
            if args.adopt:
                new_entries[name] = entry
                continue
            old = shipped.get(name)
            if old is None or old != entry:
                print(f"{name}: differs from the shipped manifest entry", file=sys.stderr)
                bad += 1
            else:
                import gzip

                shipped_text = gzip.decompress((OUT / old["file"]).read_bytes())
                if hashlib.sha256(shipped_text).hexdigest() != entry["sha256"]:
                    print(f"{name}: shipped alist file differs", file=sys.stderr)
                    bad += 1
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            write_alist(code, OUT / entry["file"])
        new_entries[name] = entry
    if not args.check:
        # re-read: another build process may have added entries meanwhile
        if manifest_path.exists():
            shipped = {c["name"]: c for c in json.loads(manifest_path.read_text())["codes"]}
        merged = dict(shipped)
        merged.update(new_entries)
        order = [e[0] for e in entries()]
        manifest = {
            "format": "alist (MacKay), gzip",
            "builder": "scripts/build_ldpc_codes.py",
            "codes": [merged[k] for k in order if k in merged],
        }
        manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    if bad:
        print(f"{bad} problem(s)", file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
