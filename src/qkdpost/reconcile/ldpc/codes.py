"""LDPC code family: degree distributions, alist files, shipped codes.

The shipped codes are built by ``scripts/build_ldpc_codes.py`` with
progressive edge growth (:func:`build_peg_code`) from published degree
distributions for the binary symmetric channel, and stored gzip-compressed
in MacKay's alist format under ``qkdpost/data/ldpc/`` together with
``manifest.json`` (distribution source, seed, PEG parameters, SHA-256 of the
uncompressed alist text, girth).
"""

from __future__ import annotations

import functools
import gzip
import hashlib

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import FileFormatError, InputError

__all__ = [
    "DISTRIBUTIONS",
    "LdpcCode",
    "available_codes",
    "build_peg_code",
    "code_from_edges",
    "degree_counts",
    "load_code",
    "read_alist",
    "write_alist",
    "has_four_cycle",
]

# Edge-perspective degree distributions {degree: coefficient} (lambda for
# variables, rho for checks) optimised for the BSC.
#  - "mm2012-*": Martinez-Mateo, Elkouss, Martin, "Blind reconciliation",
#    Quantum Inf. Comput. 12, 791 (2012), arXiv:1205.5729, Table 1
#    (as transcribed in docs/reference README).
#  - "elk2009-r0.85": Elkouss, Leverrier, Alleaume, Boutros, ISIT 2009,
#    doi:10.1109/ISIT.2009.5205475, Table I, R = 0.85 (x^4 coefficient
#    0.04274, the transcription that sums to 1), and R = 0.75, 0.65, 0.55
#    (coefficients of x^(i-1) in the table are degree i here; each set sums
#    to 1 within 2e-5 and gives the design rate within 1e-3). Not shipped:
#    the table's R = 0.70 and 0.60 (variable degrees up to 73 and 71); their
#    2^16 PEG codes needed more iterations at higher f than R = 0.65 and
#    0.55 punctured to the same rate (docs/ldpc.md).
DISTRIBUTIONS: dict[str, dict[str, Any]] = {
    "mm2012-r0.50": {
        "rate": 0.5,
        "lam": {2: 0.159673, 3: 0.121875, 4: 0.11261, 5: 0.190871, 10: 0.0770616, 25: 0.337909},
        "rho": {9: 0.360479, 10: 0.639521},
        "source": "Martinez-Mateo, Elkouss, Martin, QIC 12, 791 (2012), Table 1, R=0.5",
    },
    "mm2012-r0.60": {
        "rate": 0.6,
        "lam": {2: 0.11653, 3: 0.125646, 4: 0.108507, 5: 0.0534223, 7: 0.0727228, 8: 0.0347964,
                9: 0.0729986, 18: 0.0752607, 32: 0.117103, 45: 0.223013},
        "rho": {14: 0.582731, 15: 0.417269},
        "source": "Martinez-Mateo, Elkouss, Martin, QIC 12, 791 (2012), Table 1, R=0.6",
    },
    "mm2012-r0.70": {
        "rate": 0.7,
        "lam": {2: 0.091699, 3: 0.171401, 4: 0.0683878, 5: 0.120523, 11: 0.187471, 28: 0.208278,
                30: 0.152239},
        "rho": {19: 0.806453, 20: 0.193547},
        "source": "Martinez-Mateo, Elkouss, Martin, QIC 12, 791 (2012), Table 1, R=0.7",
    },
    "mm2012-r0.80": {
        "rate": 0.8,
        "lam": {2: 0.0667948, 3: 0.194832, 4: 0.0570523, 5: 0.0645024, 9: 0.204606, 15: 0.0964409,
                29: 0.23872, 35: 0.0770523},
        "rho": {30: 0.708874, 31: 0.291126},
        "source": "Martinez-Mateo, Elkouss, Martin, QIC 12, 791 (2012), Table 1, R=0.8",
    },
    "elk2009-r0.85": {
        "rate": 0.85,
        "lam": {2: 0.04528, 3: 0.20537, 4: 0.05878, 5: 0.04274, 6: 0.08454, 7: 0.01176, 9: 0.05137,
                21: 0.50015},
        "rho": {41: 0.54204, 42: 0.45795},
        "source": "Elkouss, Leverrier, Alleaume, Boutros, ISIT 2009, Table I, R=0.85",
    },
    # Intermediate rates from the same table (arXiv:0901.2140, Table I), so
    # that fewer QBERs fall between two mother codes and need heavy puncturing.
    "elk2009-r0.75": {
        "rate": 0.75,
        "lam": {2: 0.10805, 3: 0.09511, 4: 0.01449, 5: 0.13764, 6: 0.10667, 7: 0.05288, 28: 0.01107,
                31: 0.47408},
        "rho": {25: 0.74161, 26: 0.25839},
        "source": "Elkouss, Leverrier, Alleaume, Boutros, ISIT 2009 (arXiv:0901.2140), Table I, R=0.75",
    },
    "elk2009-r0.65": {
        "rate": 0.65,
        "lam": {2: 0.10451, 3: 0.15652, 4: 0.08057, 5: 0.00056, 9: 0.12151, 13: 0.10485, 15: 0.10719,
                21: 0.00771, 51: 0.31656},
        "rho": {2: 0.000578, 15: 0.06089, 16: 0.47001, 21: 0.46852},
        "source": "Elkouss, Leverrier, Alleaume, Boutros, ISIT 2009 (arXiv:0901.2140), Table I, R=0.65",
    },
    "elk2009-r0.80": {
        "rate": 0.8,
        "lam": {2: 0.09420, 3: 0.18088, 6: 0.11972, 7: 0.08550, 8: 0.09816, 17: 0.07194, 26: 0.34960},
        "rho": {29: 0.58807, 30: 0.41193},
        "source": "Elkouss, Leverrier, Alleaume, Boutros, ISIT 2009 (arXiv:0901.2140), Table I, R=0.80",
    },
    "elk2009-r0.50": {
        "rate": 0.5,
        "lam": {2: 0.14438, 3: 0.19026, 4: 0.01836, 5: 0.00233, 6: 0.04697, 8: 0.053943, 9: 0.05590,
                10: 0.01290, 11: 0.00162, 14: 0.06159, 15: 0.13115, 17: 0.01481, 47: 0.00879, 49: 0.00650,
                55: 0.00210, 56: 0.00099, 57: 0.11178, 58: 0.06238, 59: 0.05094, 66: 0.02230},
        "rho": {10: 0.47575, 12: 0.46847, 13: 0.02952, 14: 0.02626},
        "source": "Elkouss, Leverrier, Alleaume, Boutros, ISIT 2009 (arXiv:0901.2140), Table I, R=0.50",
    },
    "elk2009-r0.55": {
        "rate": 0.55,
        "lam": {2: 0.16880, 3: 0.20994, 6: 0.18095, 15: 0.03846, 16: 0.02635, 18: 0.23454, 19: 0.05815,
                31: 0.08280},
        "rho": {10: 0.27631, 11: 0.72369},
        "source": "Elkouss, Leverrier, Alleaume, Boutros, ISIT 2009 (arXiv:0901.2140), Table I, R=0.55",
    },
}


def degree_counts(lam: dict[int, float], rho: dict[int, float], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Node degrees for a length-``n`` code from edge-perspective distributions.

    The fraction of variables of degree i is Lambda_i = (lambda_i / i) /
    sum_j (lambda_j / j) (Richardson & Urbanke, Modern Coding Theory, CUP
    2008, Eq. 3.151). Counts are rounded by largest remainder so they sum to
    ``n``. The number of checks is m = round(E * sum_j rho_j / j), E the
    edge count, and check degrees are concentrated on floor(E/m) and
    floor(E/m) + 1 so they sum to E exactly.

    Returns
    -------
    var_deg : int32 (n,), ascending
    chk_deg : int32 (m,)
    """
    degs = sorted(lam)
    w = np.array([lam[d] / d for d in degs])
    frac = w / w.sum()
    raw = frac * n
    cnt = np.floor(raw).astype(np.int64)
    rem = n - int(cnt.sum())
    order = np.argsort(-(raw - cnt), kind="stable")
    cnt[order[:rem]] += 1
    var_deg = np.repeat(np.array(degs, dtype=np.int32), cnt)
    n_edges = int(var_deg.sum())
    inv_avg_c = sum(rho[d] / d for d in rho)
    m = int(round(n_edges * inv_avg_c))
    base = n_edges // m
    extra = n_edges - base * m
    chk_deg = np.full(m, base, dtype=np.int32)
    chk_deg[:extra] += 1
    return var_deg, chk_deg


@dataclass(frozen=True, eq=False)
class LdpcCode:
    """A binary LDPC code given by its parity-check matrix H (m x n).

    Attributes
    ----------
    name : str
    n, m : int
    row_ptr : int64 (m+1,), col_idx : int32 (E,)
        H by rows (variables of each check, ascending).
    col_ptr : int64 (n+1,), row_idx : int32 (E,)
        H by columns (checks of each variable, ascending).
    punct_order : int32 (p_max,)
        Untainted puncturing positions, in the order they are used.
    meta : dict
        Provenance from the manifest (source, seed, girth, ...).
    """

    name: str
    n: int
    m: int
    row_ptr: np.ndarray
    col_idx: np.ndarray
    col_ptr: np.ndarray
    row_idx: np.ndarray
    punct_order: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_edges(self) -> int:
        return int(self.col_idx.shape[0])

    @property
    def rate(self) -> float:
        """Design rate 1 - m/n."""
        return 1.0 - self.m / self.n

    @property
    def max_row_degree(self) -> int:
        return int(np.diff(self.row_ptr).max())

    def syndrome(self, x: np.ndarray) -> np.ndarray:
        """H x mod 2 for uint8 frames ``x`` of shape (N, n); returns uint8 (N, m)."""
        from ._kernels import syndrome_batch

        x2 = np.ascontiguousarray(x, dtype=np.uint8).reshape(-1, self.n)
        out = np.empty((x2.shape[0], self.m), dtype=np.uint8)
        syndrome_batch(self.row_ptr, self.col_idx, x2, out)
        return out

    def dense(self) -> np.ndarray:
        """H as a dense uint8 (m, n) array (for tests and small codes)."""
        h = np.zeros((self.m, self.n), dtype=np.uint8)
        rows = np.repeat(np.arange(self.m), np.diff(self.row_ptr))
        h[rows, self.col_idx] = 1
        return h


def code_from_edges(name: str, n: int, m: int, rows: np.ndarray, cols: np.ndarray,
                    meta: dict[str, Any] | None = None) -> LdpcCode:
    """Build an :class:`LdpcCode` from edge lists (check index, variable index)."""
    from ._kernels import untainted_order

    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    # stable sorts on one combined key: the order of lexsort((cols, rows)) and
    # lexsort((rows, cols)), in a tenth of the time
    o = np.argsort(rows * n + cols, kind="stable")
    row_ptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=m), out=row_ptr[1:])
    col_idx = cols[o].astype(np.int32)
    o2 = np.argsort(cols * m + rows, kind="stable")
    col_ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(cols, minlength=n), out=col_ptr[1:])
    row_idx = rows[o2].astype(np.int32)
    # untainted puncturing, smallest 2-hop neighbourhood first: with girth >= 6,
    # |N^2(v)| = 1 + sum_{c in N(v)} (deg c - 1) exactly.
    cdeg = np.diff(row_ptr)
    score = np.bincount(cols, weights=(cdeg[rows] - 1).astype(np.float64), minlength=n).astype(np.int64)
    score_order = np.argsort(score, kind="stable").astype(np.int32)
    buf = np.empty(n, dtype=np.int32)
    cnt = untainted_order(col_ptr, row_idx, row_ptr, col_idx, score_order, buf)
    return LdpcCode(name=name, n=n, m=m, row_ptr=row_ptr, col_idx=col_idx, col_ptr=col_ptr,
                    row_idx=row_idx, punct_order=buf[:cnt].copy(), meta=dict(meta or {}))


def build_peg_code(dist: str, n: int, *, seed: int, max_reach: int) -> tuple[LdpcCode, int]:
    """Construct a PEG code of length ``n`` from ``DISTRIBUTIONS[dist]``.

    Returns the code and the number of edges that closed a 4-cycle
    (0 means girth >= 6). Deterministic in (dist, n, seed, max_reach).
    """
    from ._kernels import peg_build

    d = DISTRIBUTIONS[dist]
    var_deg, chk_deg = degree_counts(d["lam"], d["rho"], n)
    vc = np.full(int(var_deg.sum()), -1, dtype=np.int32)
    four = int(peg_build(var_deg, chk_deg, np.int64(max_reach), np.uint64(seed), vc))
    if four < 0:
        raise InputError(f"PEG construction of {dist} n={n} failed: no admissible check for some edge")
    cols = np.repeat(np.arange(n), var_deg)
    name = f"{dist}-n{n}"
    meta = {"distribution": dist, "source": d["source"], "seed": seed, "max_reach": max_reach,
            "four_cycle_edges": four}
    return code_from_edges(name, n, len(chk_deg), vc, cols, meta), four


# ---------------------------------------------------------------------------
# alist format (D. J. C. MacKay, "Encyclopedia of sparse graph codes",
# http://www.inference.org.uk/mackay/codes/alist.html): n m / max col deg,
# max row deg / col degrees / row degrees / per column its rows (1-based,
# zero padded to the max) / per row its columns.
# ---------------------------------------------------------------------------
def _lists_text(ptr: np.ndarray, idx: np.ndarray, width: int) -> str:
    count = ptr.shape[0] - 1
    deg = np.diff(ptr)
    mat = np.zeros((count, width), dtype=np.int64)
    pos = np.arange(idx.shape[0]) - np.repeat(ptr[:-1], deg)
    mat[np.repeat(np.arange(count), deg), pos] = idx.astype(np.int64) + 1
    return "\n".join(" ".join(map(str, row)) for row in mat.tolist())


def alist_text(code: LdpcCode) -> str:
    """The alist text of ``code`` (canonical: ascending lists, zero padding, final newline)."""
    cdeg = np.diff(code.col_ptr)
    rdeg = np.diff(code.row_ptr)
    head = (f"{code.n} {code.m}\n{int(cdeg.max())} {int(rdeg.max())}\n"
            + " ".join(map(str, cdeg.tolist())) + "\n" + " ".join(map(str, rdeg.tolist())) + "\n")
    return (head + _lists_text(code.col_ptr, code.row_idx, int(cdeg.max())) + "\n"
            + _lists_text(code.row_ptr, code.col_idx, int(rdeg.max())) + "\n")


def write_alist(code: LdpcCode, path: str | Path) -> str:
    """Write ``code`` as alist (gzip if the name ends in .gz, mtime 0); return its SHA-256."""
    text = alist_text(code).encode("ascii")
    path = Path(path)
    if path.suffix == ".gz":
        with open(path, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
                gz.write(text)
    else:
        path.write_bytes(text)
    return hashlib.sha256(text).hexdigest()


def read_alist(source: str | Path | bytes, *, name: str = "", meta: dict[str, Any] | None = None,
               sha256: str | None = None) -> LdpcCode:
    """Parse an alist file (path, gzip or plain; or its bytes) into an :class:`LdpcCode`.

    Raises
    ------
    FileFormatError
        Truncated or inconsistent file, indices out of range, column and row
        lists that disagree, or a SHA-256 mismatch.
    """
    label = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    try:
        data = bytes(source) if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    except OSError as exc:
        raise FileFormatError(label, None, f"cannot read alist file: {exc}") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise FileFormatError(label, None, f"corrupt gzip stream: {exc}; rebuild with "
                                  "scripts/build_ldpc_codes.py") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise FileFormatError(label, None, "SHA-256 of the alist text differs from the manifest; the "
                              "file is corrupt or was replaced: rebuild with scripts/build_ldpc_codes.py")
    from ._kernels import parse_ints

    raw = np.frombuffer(data, dtype=np.uint8)
    tok = np.empty(raw.shape[0] // 2 + 1, dtype=np.int64)
    cnt = int(parse_ints(raw, tok))
    if cnt < 0:
        raise FileFormatError(label, None, "alist holds a non-integer token")
    tok = tok[:cnt]

    def bad(msg: str) -> FileFormatError:
        return FileFormatError(label, None, f"not a valid alist file: {msg}")

    if tok.shape[0] < 4:
        raise bad("shorter than its 4-number header")
    n, m, cmax, rmax = (int(t) for t in tok[:4])
    if n <= 0 or m <= 0 or m >= n or cmax <= 0 or rmax <= 0:
        raise bad(f"header n={n} m={m} max degrees {cmax},{rmax} (need 0 < m < n, degrees > 0)")
    pos = 4
    if tok.shape[0] < pos + n + m:
        raise bad("truncated in the degree lists")
    cdeg = tok[pos:pos + n]
    rdeg = tok[pos + n:pos + n + m]
    pos += n + m
    if cdeg.min() < 1 or cdeg.max() != cmax or rdeg.min() < 1 or rdeg.max() != rmax:
        raise bad("degree lists disagree with the header maxima or hold a zero degree")
    n_edges = int(cdeg.sum())
    if int(rdeg.sum()) != n_edges:
        raise bad(f"column degrees sum to {n_edges}, row degrees to {int(rdeg.sum())}")
    rest = tok[pos:]
    padded = n * cmax + m * rmax
    if rest.shape[0] == padded:
        cm = rest[:n * cmax].reshape(n, cmax)
        rm = rest[n * cmax:].reshape(m, rmax)
        cmask = np.arange(cmax)[None, :] < cdeg[:, None]
        rmask = np.arange(rmax)[None, :] < rdeg[:, None]
        if np.any(cm[~cmask] != 0) or np.any(rm[~rmask] != 0):
            raise bad("nonzero padding after a list's degree")
        col_rows = cm[cmask]
        row_cols = rm[rmask]
    elif rest.shape[0] == 2 * n_edges:
        col_rows = rest[:n_edges]
        row_cols = rest[n_edges:]
    else:
        raise bad(f"{rest.shape[0]} index tokens, expected {padded} (padded) or {2 * n_edges}")
    if col_rows.min() < 1 or col_rows.max() > m or row_cols.min() < 1 or row_cols.max() > n:
        raise bad("an index is out of range")
    cols_a = np.repeat(np.arange(n), cdeg)
    rows_a = col_rows - 1
    rows_b = np.repeat(np.arange(m), rdeg)
    cols_b = row_cols - 1
    ka = np.sort(rows_a * n + cols_a)
    kb = np.sort(rows_b * n + cols_b)
    if not np.array_equal(ka, kb):
        raise bad("column lists and row lists describe different matrices")
    if np.any(np.diff(ka) == 0):
        raise bad("a repeated edge (double entry in a list)")
    return code_from_edges(name or label, n, m, rows_a, cols_a, meta)


def has_four_cycle(code: LdpcCode) -> bool:
    """True if two checks share two or more variables (a 4-cycle in the Tanner graph)."""
    deg = np.diff(code.col_ptr)
    keys = []
    for d in np.unique(deg):
        if d < 2:
            continue
        vs = np.flatnonzero(deg == d)
        rows = code.row_idx[code.col_ptr[vs][:, None] + np.arange(d)[None, :]].astype(np.int64)
        a, b = np.triu_indices(int(d), 1)
        keys.append((rows[:, a] * code.m + rows[:, b]).ravel())
    if not keys:
        return False
    k = np.sort(np.concatenate(keys))
    return bool(np.any(k[1:] == k[:-1]))


# ---------------------------------------------------------------------------
# Shipped codes
# ---------------------------------------------------------------------------
def _data_dir() -> Path:
    return Path(str(resources.files("qkdpost") / "data" / "ldpc"))


@functools.lru_cache(maxsize=1)
def _manifest() -> dict[str, Any]:
    path = _data_dir() / "manifest.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FileFormatError(path, None, f"LDPC code manifest unreadable ({exc}); reinstall qkdpost "
                              "or run scripts/build_ldpc_codes.py") from None


def available_codes() -> list[dict[str, Any]]:
    """Manifest entries of the shipped codes (name, n, m, rate, source, ...)."""
    return [dict(c) for c in _manifest()["codes"]]


@functools.lru_cache(maxsize=32)
def load_code(name: str) -> LdpcCode:
    """Load a shipped code by name (e.g. ``"mm2012-r0.70-n65536"``), checking its SHA-256."""
    entry = next((c for c in _manifest()["codes"] if c["name"] == name), None)
    if entry is None:
        names = [c["name"] for c in _manifest()["codes"]]
        raise InputError(f"code={name!r}: no such shipped LDPC code; choose one of {names}")
    return read_alist(_data_dir() / entry["file"], name=name, meta=entry, sha256=entry["sha256"])


