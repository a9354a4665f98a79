"""Generate tests/vectors/toeplitz_kat.json: Toeplitz / modified-Toeplitz known answers.

Provenance: inputs and seeds are SHA-256 counter-mode bit streams of a
printable label (so anyone can regenerate them); outputs are computed here by
an explicit dense m x n matrix product over the integers, reduced mod 2, with
T[i, j] = s[i - j + n - 1] (Toeplitz) and [I_m | T'], T'[i, j] = s[i - j + n - m - 1]
(modified, Hayashi-Tsurumaru 2016). This script imports nothing from qkdpost.

Bits are stored as hex of np.packbits(bits, bitorder="little") plus the bit count.

    python tests/vectors/make_toeplitz_vectors.py
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

CASES = [(1, 1), (2, 1), (7, 3), (64, 32), (65, 1), (100, 100), (200, 77), (513, 256), (1000, 999)]


def stream_bits(label: str, nbits: int) -> np.ndarray:
    out = bytearray()
    counter = 0
    while len(out) * 8 < nbits:
        out += hashlib.sha256(f"{label}|{counter}".encode()).digest()
        counter += 1
    return np.unpackbits(np.frombuffer(bytes(out), dtype=np.uint8), bitorder="little")[:nbits].copy()


def toeplitz_matrix(seed: np.ndarray, m: int, n: int) -> np.ndarray:
    i = np.arange(m)[:, None]
    j = np.arange(n)[None, :]
    return seed[i - j + n - 1].astype(np.int64)


def hexbits(bits: np.ndarray) -> str:
    return np.packbits(bits.astype(np.uint8), bitorder="little").tobytes().hex()


def main() -> None:
    vectors = []
    for n, m in CASES:
        x = stream_bits(f"qkdpost toeplitz x n={n} m={m}", n)
        s = stream_bits(f"qkdpost toeplitz seed n={n} m={m}", n + m - 1)
        y = (toeplitz_matrix(s, m, n) @ x.astype(np.int64)) % 2
        vectors.append({"method": "toeplitz", "n": n, "m": m, "x": hexbits(x), "seed": hexbits(s),
                        "seed_bits": int(s.size), "y": hexbits(y)})
        s2 = stream_bits(f"qkdpost modified seed n={n} m={m}", n - 1)
        T = np.concatenate([np.eye(m, dtype=np.int64), toeplitz_matrix(s2, m, n - m)], axis=1)
        y2 = (T @ x.astype(np.int64)) % 2
        vectors.append({"method": "modified", "n": n, "m": m, "x": hexbits(x), "seed": hexbits(s2),
                        "seed_bits": int(s2.size), "y": hexbits(y2)})
    out = {
        "description": "Toeplitz and modified Toeplitz hashing known answers; see make_toeplitz_vectors.py",
        "bit_order": "np.packbits(bits, bitorder='little') as hex",
        "vectors": vectors,
    }
    path = Path(__file__).with_name("toeplitz_kat.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {len(vectors)} vectors to {path}")


if __name__ == "__main__":
    main()
