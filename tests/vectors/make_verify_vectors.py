"""Generate tests/vectors/verify_kat.json: GF(2^128) polynomial-hash known answers.

Provenance: blocks and keys are SHA-256 counter-mode streams of a printable
label; hash values are computed here with galois (GF(2^128) with irreducible
polynomial x^128 + x^7 + x^2 + x + 1, integer representation = coefficient of
x^i in bit i) by Horner's rule over the 128-bit chunks of the block (bit j of
the block is the coefficient of x^(j mod 128) of chunk j // 128, zero padded),
followed by the length chunk (n as an integer). Imports nothing from qkdpost.

    python tests/vectors/make_verify_vectors.py
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import galois
import numpy as np

CASES = [1, 2, 64, 127, 128, 129, 1000, 4096]


def stream_bits(label: str, nbits: int) -> np.ndarray:
    out = bytearray()
    counter = 0
    while len(out) * 8 < nbits:
        out += hashlib.sha256(f"{label}|{counter}".encode()).digest()
        counter += 1
    return np.unpackbits(np.frombuffer(bytes(out), dtype=np.uint8), bitorder="little")[:nbits].copy()


def to_int(bits: np.ndarray) -> int:
    return sum(int(b) << i for i, b in enumerate(bits.tolist()))


def main() -> None:
    GF = galois.GF(2**128, irreducible_poly=(1 << 128) | 0x87, verify=False)
    vectors = []
    for n in CASES:
        x = stream_bits(f"qkdpost poly128 x n={n}", n)
        kbits = stream_bits(f"qkdpost poly128 key n={n}", 128)
        k = GF(to_int(kbits))
        h = GF(0)
        for c in range(0, n, 128):
            h = (h + GF(to_int(x[c : c + 128]))) * k
        h = (h + GF(n)) * k
        vectors.append({"n": n, "x": np.packbits(x, bitorder="little").tobytes().hex(),
                        "key": f"{to_int(kbits):032x}", "hash": f"{int(h):032x}"})
    out = {"description": "GF(2^128) polynomial hash known answers; see make_verify_vectors.py",
           "bit_order": "x: np.packbits(bits, bitorder='little') hex; key/hash: big-endian hex of the integer "
                        "whose bit i is the coefficient of x^i",
           "vectors": vectors}
    path = Path(__file__).with_name("verify_kat.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {len(vectors)} vectors to {path}")


if __name__ == "__main__":
    main()
