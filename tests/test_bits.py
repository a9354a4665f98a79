import numpy as np
import pytest
from hypothesis import given, strategies as st

from qkdpost.bits import as_bits, binary_entropy, pack_bits, unpack_bits
from qkdpost.errors import InputError


@given(st.lists(st.integers(0, 1), max_size=300))
def test_pack_unpack_round_trip(bits):
    b = np.array(bits, dtype=np.uint8)
    words = pack_bits(b)
    assert words.dtype == np.uint64 and len(words) == (len(b) + 63) // 64
    np.testing.assert_array_equal(unpack_bits(words, len(b)), b)
    for i, v in enumerate(bits):  # oracle: bit i sits in word i//64 at position i%64
        assert (int(words[i // 64]) >> (i % 64)) & 1 == v


def test_as_bits_rejects_non_binary_and_float():
    with pytest.raises(InputError, match="not 0 or 1"):
        as_bits(np.array([0, 2]), "alice_bits")
    with pytest.raises(InputError, match="dtype"):
        as_bits(np.array([0.0, 1.0]), "alice_bits")


def test_binary_entropy_known_values():
    assert binary_entropy(0.5) == pytest.approx(1.0)
    assert binary_entropy(0.0) == 0.0 and binary_entropy(1.0) == 0.0
    assert binary_entropy(0.11) == pytest.approx(0.4999, abs=1e-3)


def test_pack_bits_packs_each_row_of_a_2d_array():
    rng = np.random.default_rng(3)
    b = rng.integers(0, 2, (5, 131), dtype=np.uint8)
    words = pack_bits(b)
    assert words.shape == (5, 3)
    for r in range(5):
        np.testing.assert_array_equal(words[r], pack_bits(b[r]))
        np.testing.assert_array_equal(unpack_bits(words[r], 131), b[r])
