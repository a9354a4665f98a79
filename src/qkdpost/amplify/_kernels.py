"""Numba kernels for exact Toeplitz hashing over GF(2) on packed uint64 words.

Representation
--------------
A bit string ``b`` of length ``L`` is packed LSB first into ``ceil(L/64)``
``uint64`` words (``qkdpost.bits.pack_bits``); word ``k`` holds the
coefficients of ``z^(64k) .. z^(64k+63)`` of the polynomial ``B(z)``.

Word-level Toeplitz product
---------------------------
For ``M`` output words, ``Nc`` input words and a seed of ``M + Nc`` words,
:func:`toeplitz_words` computes ``Y = (S(z) X(z))[Nc : Nc + M]`` (word
indices), i.e. ``y[i] = sum_j s[i - j + 64 Nc] x[j]`` over GF(2). The public
layer maps the bit-level convention ``T[i, j] = s[i - j + n - 1]`` onto this
by shifting the seed up by ``d = 64 Nc - n + 1`` bits (:func:`shift_up`).

Algorithm
---------
The square case ``M = Nc = N`` is the *middle product* of Hanrot, Quercia and
Zimmermann ("The middle product algorithm I", AAECC 14, 415 (2004),
doi:10.1007/s00200-003-0144-2), evaluated with the transposed Karatsuba
step: writing ``X = X0 + z^h X1`` and the seed as four quarters,

    Y0 = P0 + MP(S01 + S12, X1),   Y1 = P0 + MP(S12 + S23, X0),
    P0 = MP(S12, X0 + X1),

three half-size products instead of four (all sums are XORs, because a sum
of Toeplitz matrices is the Toeplitz matrix of the XORed seeds). Odd sizes
peel one row and one column (O(N) work). Rectangular products are split
into square blocks. Leaves (size <= ``LEAF_WORDS``) multiply words
schoolbook-style with a 64x64 -> 128-bit carry-less product: the x86
PCLMULQDQ instruction reached through the LLVM intrinsic
``llvm.x86.pclmulqdq`` when the CPU has it, or an exact portable
shift-and-xor loop otherwise. Both give identical bits.

Selecting the carry-less product
--------------------------------
Every kernel takes a ``mode`` argument whose *type* selects the product at
compile time: ``np.uint8`` -> PCLMULQDQ, ``np.int8`` -> portable. The
PCLMULQDQ code is therefore only compiled when asked for, and the two
variants are cached separately (Numba caches per signature).
"""

from __future__ import annotations

import functools
import os

import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .._jit import jit_disabled, kernel, register

register(__name__)

__all__ = [
    "HW",
    "HW2",
    "has_vpclmul",
    "SW",
    "has_pclmul",
    "default_mode",
    "clmul",
    "toeplitz_words",
    "workspace_words",
    "shift_up",
    "shift_down",
    "mask_tail",
    "LEAF_WORDS",
]

#: Square sizes (in 64-bit words) at or below which the schoolbook leaf runs.
LEAF_WORDS = 96  # measured: 48 / 64 / 96 / 128 words, see docs/amplify.md

#: Mode markers: the dtype of the marker selects the carry-less product:
#: uint16 -> 256-bit VPCLMULQDQ leaves, uint8 -> 128-bit PCLMULQDQ, int8 -> portable.
HW2 = np.uint16(2)
HW = np.uint8(1)
SW = np.int8(0)

ST_OK = 0
ST_WORKSPACE = -1
ST_STACK = -2


@functools.lru_cache(maxsize=1)
def _cpu_features() -> frozenset[str]:
    """CPU features Numba compiles for (honours NUMBA_CPU_NAME / NUMBA_CPU_FEATURES; read once)."""
    import numba

    feats = numba.config.CPU_FEATURES
    name = numba.config.CPU_NAME
    if feats is not None:
        return frozenset(f[1:] for f in feats.split(",") if f.startswith("+"))
    if name not in (None, "host"):
        return frozenset()  # a named generic target: assume nothing
    try:
        import llvmlite.binding as llb

        return frozenset(k for k, v in llb.get_host_cpu_features().items() if v)
    except Exception:  # pragma: no cover - exotic llvmlite builds
        return frozenset()


def has_pclmul() -> bool:
    """True when Numba compiles for a CPU with the PCLMULQDQ instruction.

    Honours ``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES`` (portable caches) and
    ``QKDPOST_NO_PCLMUL=1`` (force the portable path), and is False when the
    JIT is disabled.
    """
    if jit_disabled() or os.environ.get("QKDPOST_NO_PCLMUL", "0") not in ("", "0"):
        return False
    return "pclmul" in _cpu_features()


def has_vpclmul() -> bool:
    """True when 256-bit VPCLMULQDQ (with AVX) is available as well."""
    if not has_pclmul() or os.environ.get("QKDPOST_NO_VPCLMUL", "0") not in ("", "0"):
        return False
    f = _cpu_features()
    return "vpclmulqdq" in f and "avx" in f


def default_mode():
    """The fastest exact mode marker for this machine (``HW2``, ``HW`` or ``SW``)."""
    if has_vpclmul():
        return HW2
    return HW if has_pclmul() else SW


# --------------------------------------------------------------------------
# 64 x 64 -> 128-bit carry-less product
# --------------------------------------------------------------------------


@intrinsic
def _pclmul(typingctx, a, b):
    """(lo, hi) of the carry-less product a*b via ``llvm.x86.pclmulqdq``."""
    from llvmlite import ir

    sig = types.UniTuple(types.uint64, 2)(types.uint64, types.uint64)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        i32 = ir.IntType(32)
        v2 = ir.VectorType(i64, 2)
        undef = ir.Constant(v2, ir.Undefined)
        zero = ir.Constant(i32, 0)
        va = builder.insert_element(undef, args[0], zero)
        vb = builder.insert_element(undef, args[1], zero)
        fnty = ir.FunctionType(v2, [v2, v2, ir.IntType(8)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.pclmulqdq")
        r = builder.call(fn, [va, vb, ir.Constant(ir.IntType(8), 0)])
        lo = builder.extract_element(r, zero)
        hi = builder.extract_element(r, ir.Constant(i32, 1))
        return context.make_tuple(builder, signature.return_type, [lo, hi])

    return sig, codegen


@kernel(None)
def clmul_sw(a, b):
    """Portable exact 64x64 -> 128-bit carry-less product (lo, hi)."""
    a = np.uint64(a)
    b = np.uint64(b)
    lo = np.uint64(0)
    hi = np.uint64(0)
    one = np.uint64(1)
    if b & one:
        lo = a
    for i in range(1, 64):
        mask = np.uint64(0xFFFFFFFFFFFFFFFF) * ((b >> np.uint64(i)) & one)
        lo ^= (a << np.uint64(i)) & mask
        hi ^= (a >> np.uint64(64 - i)) & mask
    return lo, hi


def clmul(a, b, mode):
    """Carry-less product (lo, hi) of two uint64; ``mode`` type picks the method.

    In pure Python (``NUMBA_DISABLE_JIT=1``) this runs the portable loop.
    """
    return clmul_sw(a, b)


@overload(clmul)
def _clmul_overload(a, b, mode):
    if isinstance(mode, types.Integer) and mode.bitwidth in (8, 16) and not mode.signed:

        def impl_hw(a, b, mode):
            return _pclmul(a, b)

        return impl_hw

    def impl_sw(a, b, mode):
        return clmul_sw(a, b)

    return impl_sw


@intrinsic
def _pclmul_dot(typingctx, B, a0, b0, n):
    """XOR over j < n of clmul(B[a0 - j], B[b0 + j]) as (lo, hi), PCLMULQDQ.

    Written directly in LLVM IR so the 128-bit accumulator stays in a vector
    register (no per-product extraction, no negative-index wraparound).
    The caller guarantees 0 <= a0 - j and b0 + j < B.size.
    """
    from llvmlite import ir

    sig = types.UniTuple(types.uint64, 2)(B, types.int64, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        data = ary.data
        a0v, b0v, nv = args[1], args[2], args[3]
        i64 = ir.IntType(64)
        i32 = ir.IntType(32)
        v2 = ir.VectorType(i64, 2)
        zero32 = ir.Constant(i32, 0)
        undef = ir.Constant(v2, ir.Undefined)
        fnty = ir.FunctionType(v2, [v2, v2, ir.IntType(8)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.pclmulqdq")
        pre = builder.block
        head = builder.append_basic_block("cdot.head")
        body = builder.append_basic_block("cdot.body")
        done = builder.append_basic_block("cdot.done")
        builder.branch(head)
        builder.position_at_end(head)
        j = builder.phi(i64)
        acc = builder.phi(v2)
        j.add_incoming(ir.Constant(i64, 0), pre)
        acc.add_incoming(ir.Constant(v2, None), pre)
        builder.cbranch(builder.icmp_signed("<", j, nv), body, done)
        builder.position_at_end(body)
        pa = builder.gep(data, [builder.sub(a0v, j)])
        pb = builder.gep(data, [builder.add(b0v, j)])
        va = builder.insert_element(undef, builder.load(pa), zero32)
        vb = builder.insert_element(undef, builder.load(pb), zero32)
        r = builder.call(fn, [va, vb, ir.Constant(ir.IntType(8), 0)])
        acc2 = builder.xor(acc, r)
        j2 = builder.add(j, ir.Constant(i64, 1))
        j.add_incoming(j2, body)
        acc.add_incoming(acc2, body)
        builder.branch(head)
        builder.position_at_end(done)
        lo = builder.extract_element(acc, zero32)
        hi = builder.extract_element(acc, ir.Constant(i32, 1))
        return context.make_tuple(builder, signature.return_type, [lo, hi])

    return sig, codegen


@intrinsic
def _vpclmul_dot(typingctx, B, a0, b0, n):
    """Like :func:`_pclmul_dot` but four products per step with 256-bit VPCLMULQDQ.

    Per step j (multiple of 4): X = B[b0+j .. b0+j+3], S = B[a0-j-3 .. a0-j]
    reversed to (S[a0-j], S[a0-j-1], S[a0-j-2], S[a0-j-3]); VPCLMULQDQ with
    immediate 0x00 forms S[a0-j] X[j] (lane 0) and S[a0-j-2] X[j+2] (lane 1),
    with 0x11 S[a0-j-1] X[j+1] and S[a0-j-3] X[j+3]. The remainder n % 4
    uses the 128-bit instruction. Both 128-bit lanes are XORed at the end.
    """
    from llvmlite import ir

    sig = types.UniTuple(types.uint64, 2)(B, types.int64, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        data = ary.data
        a0v, b0v, nv = args[1], args[2], args[3]
        i8 = ir.IntType(8)
        i32 = ir.IntType(32)
        i64 = ir.IntType(64)
        v2 = ir.VectorType(i64, 2)
        v4 = ir.VectorType(i64, 4)
        p4 = v4.as_pointer()
        fn4 = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(v4, [v4, v4, i8]), "llvm.x86.pclmulqdq.256"
        )
        fn2 = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(v2, [v2, v2, i8]), "llvm.x86.pclmulqdq"
        )
        n4 = builder.and_(nv, ir.Constant(i64, -4))
        pre = builder.block
        head = builder.append_basic_block("vdot.head")
        body = builder.append_basic_block("vdot.body")
        tail_head = builder.append_basic_block("vdot.thead")
        tail_body = builder.append_basic_block("vdot.tbody")
        done = builder.append_basic_block("vdot.done")
        builder.branch(head)
        # 4-wide loop
        builder.position_at_end(head)
        j = builder.phi(i64)
        acc = builder.phi(v4)
        j.add_incoming(ir.Constant(i64, 0), pre)
        acc.add_incoming(ir.Constant(v4, None), pre)
        builder.cbranch(builder.icmp_signed("<", j, n4), body, tail_head)
        builder.position_at_end(body)
        px = builder.bitcast(builder.gep(data, [builder.add(b0v, j)]), p4)
        ps = builder.bitcast(builder.gep(data, [builder.sub(builder.sub(a0v, j), ir.Constant(i64, 3))]), p4)
        xv = builder.load(px, align=8)
        sv = builder.load(ps, align=8)
        srev = builder.shuffle_vector(sv, ir.Constant(v4, ir.Undefined), ir.Constant(ir.VectorType(i32, 4), [3, 2, 1, 0]))
        p0 = builder.call(fn4, [srev, xv, ir.Constant(i8, 0x00)])
        p1 = builder.call(fn4, [srev, xv, ir.Constant(i8, 0x11)])
        acc2 = builder.xor(acc, builder.xor(p0, p1))
        j2 = builder.add(j, ir.Constant(i64, 4))
        j.add_incoming(j2, body)
        acc.add_incoming(acc2, body)
        builder.branch(head)
        # fold the two lanes, then the 128-bit remainder loop
        builder.position_at_end(tail_head)
        lo_l = builder.shuffle_vector(acc, ir.Constant(v4, ir.Undefined), ir.Constant(ir.VectorType(i32, 2), [0, 1]))
        hi_l = builder.shuffle_vector(acc, ir.Constant(v4, ir.Undefined), ir.Constant(ir.VectorType(i32, 2), [2, 3]))
        acc_2 = builder.xor(lo_l, hi_l)
        tpre = builder.block
        tj_block = builder.append_basic_block("vdot.tloop")
        builder.branch(tj_block)
        builder.position_at_end(tj_block)
        tj = builder.phi(i64)
        tacc = builder.phi(v2)
        tj.add_incoming(j, tpre)
        tacc.add_incoming(acc_2, tpre)
        builder.cbranch(builder.icmp_signed("<", tj, nv), tail_body, done)
        builder.position_at_end(tail_body)
        zero32 = ir.Constant(i32, 0)
        undef2 = ir.Constant(v2, ir.Undefined)
        va = builder.insert_element(undef2, builder.load(builder.gep(data, [builder.sub(a0v, tj)])), zero32)
        vb = builder.insert_element(undef2, builder.load(builder.gep(data, [builder.add(b0v, tj)])), zero32)
        r = builder.call(fn2, [va, vb, ir.Constant(i8, 0)])
        tacc2 = builder.xor(tacc, r)
        tj.add_incoming(builder.add(tj, ir.Constant(i64, 1)), tail_body)
        tacc.add_incoming(tacc2, tail_body)
        builder.branch(tj_block)
        builder.position_at_end(done)
        lo = builder.extract_element(tacc, zero32)
        hi = builder.extract_element(tacc, ir.Constant(i32, 1))
        return context.make_tuple(builder, signature.return_type, [lo, hi])

    return sig, codegen


@kernel(None)
def clmul_dot_sw(B, a0, b0, n):
    """Portable XOR over j < n of clmul(B[a0 - j], B[b0 + j]) as (lo, hi)."""
    acc_lo = np.uint64(0)
    acc_hi = np.uint64(0)
    for j in range(n):
        lo, hi = clmul_sw(B[a0 - j], B[b0 + j])
        acc_lo ^= lo
        acc_hi ^= hi
    return acc_lo, acc_hi


def clmul_dot(B, a0, b0, n, mode):
    """XOR over j < n of clmul(B[a0 - j], B[b0 + j]); ``mode`` type picks the method."""
    return clmul_dot_sw(B, a0, b0, n)


@overload(clmul_dot)
def _clmul_dot_overload(B, a0, b0, n, mode):
    if isinstance(mode, types.Integer) and mode.bitwidth == 16 and not mode.signed:

        def impl_v256(B, a0, b0, n, mode):
            return _vpclmul_dot(B, a0, b0, n)

        return impl_v256
    if isinstance(mode, types.Integer) and mode.bitwidth in (8, 16) and not mode.signed:

        def impl_hw(B, a0, b0, n, mode):
            return _pclmul_dot(B, a0, b0, n)

        return impl_hw

    def impl_sw(B, a0, b0, n, mode):
        return clmul_dot_sw(B, a0, b0, n)

    return impl_sw


# --------------------------------------------------------------------------
# Toeplitz product on words
# --------------------------------------------------------------------------
# Everything lives in one caller-owned buffer B (seed, input, output and
# scratch at different offsets), so sub-products are pure offset arithmetic
# and the recursion runs on an explicit stack (Numba's cache cannot reload
# self-recursive functions reliably).


@kernel(None)
def _leaf(B, s0, x0, y0, M, Nc, mode):
    """Schoolbook: B[y0:y0+M] = (S X)[Nc : Nc+M], S = B[s0:], X = B[x0:x0+Nc].

    Output-stationary: word k of the result is the XOR of the low halves of
    S[Nc+k-j] x_j and the high halves of S[Nc+k-1-j] x_j over j, so each
    128-bit product serves word k (low half) and word k+1 (high half).
    """
    lo, carry = clmul_dot(B, s0 + Nc - 1, x0, Nc, mode)
    for k in range(M):
        acc_lo, acc_hi = clmul_dot(B, s0 + Nc + k, x0, Nc, mode)
        B[y0 + k] = acc_lo ^ carry
        carry = acc_hi


@kernel(None)
def _xor_into(dst, a, b):
    """dst[k] = a[k] ^ b[k] (views of one buffer; dst does not overlap a or b)."""
    for k in range(dst.size):
        dst[k] = a[k] ^ b[k]


@kernel(None)
def _xor_acc(y, p):
    """y[k] ^= p[k]."""
    for k in range(p.size):
        y[k] ^= p[k]


@kernel(None)
def _xor2_acc(y0, y1, p):
    """y0[k] ^= p[k]; y1[k] ^= p[k]."""
    for k in range(p.size):
        v = p[k]
        y0[k] ^= v
        y1[k] ^= v


# frame layout on the explicit stack
_F_S, _F_X, _F_Y, _F_M, _F_N, _F_W, _F_PH, _F_AUX = 0, 1, 2, 3, 4, 5, 6, 7
_MAX_DEPTH = 512


@kernel(None)
def toeplitz_words(B, s0, x0, y0, M, Nc, w0, mode):
    """Word-level Toeplitz product in one buffer: Y = (S X)[Nc : Nc+M] over GF(2).

    Parameters
    ----------
    B : uint64[:]
        Buffer holding the seed words ``B[s0 : s0+M+Nc]``, the input words
        ``B[x0 : x0+Nc]``, the output words ``B[y0 : y0+M]`` (overwritten)
        and scratch ``B[w0 : w0 + workspace_words(M, Nc)]``. The regions must
        not overlap.
    s0, x0, y0, w0 : int
        Offsets of seed, input, output and scratch.
    M, Nc : int
        Output and input length in words.
    mode : uint8 or int8 scalar
        Carry-less product selector (``HW`` / ``SW``).

    Returns
    -------
    int
        0 on success, -1 if the scratch region would overflow ``B``,
        -2 if the explicit stack would overflow.
    """
    if M <= 0:
        return ST_OK
    if Nc <= 0:
        for k in range(M):
            B[y0 + k] = 0
        return ST_OK
    st = np.zeros((_MAX_DEPTH, 8), dtype=np.int64)
    sp = 0
    st[0, _F_S] = s0
    st[0, _F_X] = x0
    st[0, _F_Y] = y0
    st[0, _F_M] = M
    st[0, _F_N] = Nc
    st[0, _F_W] = w0
    st[0, _F_PH] = 0
    st[0, _F_AUX] = 0
    sp = 1
    nb = B.size
    while sp > 0:
        f = sp - 1
        s = st[f, _F_S]
        x = st[f, _F_X]
        y = st[f, _F_Y]
        m = st[f, _F_M]
        nc = st[f, _F_N]
        w = st[f, _F_W]
        ph = st[f, _F_PH]
        child = False
        cs = 0
        cx = 0
        cy = 0
        cm = 0
        cn = 0
        cw = 0
        if m <= LEAF_WORDS or nc <= LEAF_WORDS:
            _leaf(B, s, x, y, m, nc, mode)
            sp -= 1
            continue
        if nc > m:
            # column blocks of width <= m; the block at column xc of width a
            # is Toeplitz(S[s + nc - xc - a:], X[x + xc:], m, a).
            if w + m > nb:
                return ST_WORKSPACE
            aux = st[f, _F_AUX]
            if ph == 0:
                a = min(m, nc)
                st[f, _F_AUX] = a
                st[f, _F_PH] = 1
                child = True
                cs, cx, cy, cm, cn, cw = s + nc - a, x, y, m, a, w + m
            elif ph == 1:
                if aux >= nc:
                    sp -= 1
                    continue
                a = min(m, nc - aux)
                st[f, _F_AUX] = aux + a
                st[f, _F_PH] = 2
                child = True
                cs, cx, cy, cm, cn, cw = s + nc - aux - a, x + aux, w, m, a, w + m
            else:
                _xor_acc(B[y : y + m], B[w : w + m])
                st[f, _F_PH] = 1
                continue
        elif m > nc:
            # row blocks of height <= nc: rows from yr use S[s + yr:]
            aux = st[f, _F_AUX]
            if aux >= m:
                sp -= 1
                continue
            r = min(nc, m - aux)
            st[f, _F_AUX] = aux + r
            child = True
            cs, cx, cy, cm, cn, cw = s + aux, x, y + aux, r, nc, w
        elif m & 1:
            # odd square: (N-1) square, then last column and last row
            if ph == 0:
                st[f, _F_PH] = 1
                child = True
                cs, cx, cy, cm, cn, cw = s + 1, x, y, m - 1, m - 1, w
            else:
                if w + m > nb:
                    return ST_WORKSPACE
                _leaf(B, s, x + m - 1, w, m - 1, 1, mode)
                _xor_acc(B[y : y + m - 1], B[w : w + m - 1])
                _leaf(B, s + m - 1, x, y + m - 1, 1, m, mode)
                sp -= 1
                continue
        else:
            # even square: transposed Karatsuba (middle product)
            h = m >> 1
            if w + 2 * h > nb:
                return ST_WORKSPACE
            if ph == 0:
                _xor_into(B[w : w + 2 * h], B[s : s + 2 * h], B[s + h : s + 3 * h])
                st[f, _F_PH] = 1
                child = True
                cs, cx, cy, cm, cn, cw = w, x + h, y, h, h, w + 2 * h
            elif ph == 1:
                _xor_into(B[w : w + 2 * h], B[s + h : s + 3 * h], B[s + 2 * h : s + 4 * h])
                st[f, _F_PH] = 2
                child = True
                cs, cx, cy, cm, cn, cw = w, x, y + h, h, h, w + 2 * h
            elif ph == 2:
                _xor_into(B[w : w + h], B[x : x + h], B[x + h : x + 2 * h])
                st[f, _F_PH] = 3
                child = True
                cs, cx, cy, cm, cn, cw = s + h, w, w + h, h, h, w + 2 * h
            else:
                _xor2_acc(B[y : y + h], B[y + h : y + 2 * h], B[w + h : w + 2 * h])
                sp -= 1
                continue
        if child:
            if sp >= _MAX_DEPTH:
                return ST_STACK
            st[sp, _F_S] = cs
            st[sp, _F_X] = cx
            st[sp, _F_Y] = cy
            st[sp, _F_M] = cm
            st[sp, _F_N] = cn
            st[sp, _F_W] = cw
            st[sp, _F_PH] = 0
            st[sp, _F_AUX] = 0
            sp += 1
    return ST_OK


def workspace_words(M: int, Nc: int) -> int:
    """Scratch words sufficient for :func:`toeplitz_words`: 3 (M + Nc) + 64.

    Each level of the square recursion uses N words and hands the rest to its
    children (<= 2N in total); a column split adds M words for the partial
    products (see docs/amplify.md).
    """
    return 3 * (M + Nc) + 64


@kernel(None)
def shift_up(src, nbits_src, d, dst):
    """dst = bits of ``src`` (first ``nbits_src`` bits) moved up by ``d`` bits.

    Bits below ``d`` and above ``d + nbits_src`` are zero. ``dst`` is fully
    overwritten. ``0 <= d``.
    """
    for k in range(dst.size):
        dst[k] = 0
    nw = (nbits_src + 63) >> 6
    q = d >> 6
    r = d & 63
    for k in range(nw):
        w = src[k]
        if k == nw - 1 and (nbits_src & 63) != 0:
            w &= (np.uint64(1) << np.uint64(nbits_src & 63)) - np.uint64(1)
        t = k + q
        if t < dst.size:
            dst[t] |= w << np.uint64(r)
        if r != 0 and t + 1 < dst.size:
            dst[t + 1] |= w >> np.uint64(64 - r)
    return 0


@kernel(None)
def shift_down(src, start, nbits, dst):
    """dst = bits ``start .. start+nbits-1`` of the packed words ``src``.

    ``dst`` (>= ceil(nbits/64) words) is fully overwritten; bits above
    ``nbits`` are zero. ``src`` must hold at least ``start + nbits`` bits.
    """
    q = start >> 6
    r = start & 63
    nw = (nbits + 63) >> 6
    ns = src.size
    for k in range(dst.size):
        if k >= nw:
            dst[k] = 0
            continue
        w = src[q + k] >> np.uint64(r)
        if r != 0 and q + k + 1 < ns:
            w |= src[q + k + 1] << np.uint64(64 - r)
        dst[k] = w
    if (nbits & 63) != 0 and nw > 0:
        dst[nw - 1] &= (np.uint64(1) << np.uint64(nbits & 63)) - np.uint64(1)
    return 0


@kernel(None)
def mask_tail(Y, nbits):
    """Zero every bit at position >= nbits in the packed words Y."""
    nw = (nbits + 63) >> 6
    for k in range(nw, Y.size):
        Y[k] = 0
    if (nbits & 63) != 0 and nw > 0:
        Y[nw - 1] &= (np.uint64(1) << np.uint64(nbits & 63)) - np.uint64(1)


# --------------------------------------------------------------------------
# Additive FFT over GF(2^64) (large blocks)
# --------------------------------------------------------------------------
# Field GF(2^64) = GF(2)[x] / (x^64 + x^4 + x^3 + x + 1); elements are uint64,
# bit i = coefficient of x^i.
#
# Product of two GF(2)[z] polynomials: cut both into 32-bit chunks, read each
# chunk as a field element (degree < 32), multiply the two polynomials over
# GF(2^64) by evaluation at the 2^L points of a subspace, pointwise products
# and interpolation. Each chunk product has degree <= 62 < 64, so the field
# reduction never acts on it and the GF(2^64) coefficients of the product are
# the exact carry-less chunk products; overlap-adding them at 32-bit offsets
# gives the GF(2)[z] product.
#
# Evaluation/interpolation is the additive FFT with a Cantor basis
# (D. G. Cantor, "On arithmetical algorithms over finite fields", J. Combin.
# Theory A 50, 285 (1989), doi:10.1016/0097-3165(89)90020-4; von zur Gathen
# and Gerhard, "Arithmetic and factorization of polynomials over F_2",
# ISSAC '96, doi:10.1145/236869.237081): with beta_0 = 1 and
# beta_i^2 + beta_i = beta_(i-1), the subspace polynomial of
# V_i = span(beta_0..beta_(i-1)) is s_i(x) = sum_j binom(i, j) x^(2^j) (mod 2)
# and s_i(beta_i) = 1. A block of 2^l coefficients that must be evaluated on
# the coset c + V_l is divided by s_(l-1)(x) + lam with lam = s_(l-1)(c): the
# remainder r0 is the polynomial to evaluate on c + V_(l-1), and r0 + q (q the
# quotient) the one for c + beta_(l-1) + V_(l-1) (there s_(l-1) takes the
# value lam + 1). For block t of level l, lam = sum_k bit_k(t) beta_(k+1)
# (since s_(l-1)(beta_i) = beta_(i-l+1)). The division by the sparse
# s_(l-1)(x) + lam works on two chunks of H/2 coefficients (H = 2^(l-1)):
# the terms x^(2^j), 2^j <= H/2, never feed back into the chunk being read,
# so each chunk is a few whole-slice XORs plus one multiply-accumulate by lam.
# Interpolation undoes the steps in reverse order.

#: Cantor basis of GF(2^64) for the modulus above: beta_0 = 1,
#: beta_i^2 + beta_i = beta_(i-1) (checked in tests/test_amplify.py with galois).
CANTOR_BASIS = np.array([
    0x0000000000000001,
    0x19c9369f278adc02,
    0xa181e7d66f5ff794,
    0x5db84357ce785d08,
    0xb973d466f5c9d0ca,
    0x521ac889831a075e,
    0x033ce8beddc8a656,
    0xb5846c4e07b91010,
    0x4087b8cbb37a32ec,
    0x00d0d3888c0ae17c,
    0xafd5ac70237f2222,
    0xe3f5af99cc3aaaf8,
    0x5a1db3b16a0b58b8,
    0x09947c54fe7ee248,
    0x0e8eaf0e0068f544,
    0xa2a113500b4b4f5a,
    0xe96f9805d6ce0bb0,
    0x53496f8b5c9edd4c,
    0xad325cb6f4ac2a9e,
    0x4a8dcf8bd7ede826,
    0xa3e9c552b6434210,
    0x5fa92ad9c9bc7ed0,
    0xa389f910cd7734de,
    0xe916f3dfca4609d8,
    0xf89578714bd28f96,
    0x564dda59237a3352,
    0xad33bc6cc75aed38,
    0x57a3104fcd0e5f34,
    0xb0f502e4cd60039a,
    0xeb42e79f91f49f8c,
    0x54e5bf3774b3f850,
    0xb66864e6ec14b4d2,
    0xed57ce778f0d6244,
    0x523aaf9d6148ba24,
    0xa8fcbfaac14940c6,
    0xe503eacfcef77780,
    0xf3746c7b5183a372,
    0xec50d77d2f416218,
    0xf9cdf54569fe87e6,
    0xe576269915705e2c,
    0xee2a197148fa8c72,
    0x49e31453575f365a,
    0xb86698d88add0bc0,
    0x4f35fb218e7f37c0,
    0xa306feea8a242832,
    0x5e5f06a9daead6e6,
    0xbe13089ecc784ea0,
    0xfe1a10738739c892,
    0xe2266ceb0c5bc774,
    0xf490e6ed40d1dd1a,
    0xf3f5f515077e92f0,
    0x467c20312e7eb0f0,
    0xb06caa4295d350c2,
    0x5c5916d98a583c16,
    0xa04de5b4c7a1ceac,
    0x41430183d6e85ec0,
    0xb361d8dabe3b3632,
    0x4357375d88b88b56,
    0xb057dcc8a19fbc9c,
    0xf26e1791be4b37c2,
    0xe9f744031bfe63e4,
    0xe50803875e9ab776,
    0x44ee098f4d56753e,
    0x9dc338f8399031b4

], dtype=np.uint64)

_R64 = np.uint64(0x1B)  # x^64 = x^4 + x^3 + x + 1


@kernel(None)
def gf64_mul(a, b, mode):
    """a * b in GF(2^64) = GF(2)[x]/(x^64 + x^4 + x^3 + x + 1)."""
    lo, hi = clmul(a, b, mode)
    # hi * x^64 = hi * (1 + x + x^3 + x^4); the bits shifted out (degree < 4)
    # fold once more and then fit in 8 bits.
    one, three, four = np.uint64(1), np.uint64(3), np.uint64(4)
    r = hi ^ (hi << one) ^ (hi << three) ^ (hi << four)
    t = (hi >> np.uint64(63)) ^ (hi >> np.uint64(61)) ^ (hi >> np.uint64(60))
    r ^= t ^ (t << one) ^ (t << three) ^ (t << four)
    return lo ^ r


def _ir_reduce4(builder, r0, r1):
    """LLVM IR: four 128-bit products in (r0, r1) lanes -> four GF(2^64) elements.

    ``r0`` holds the products of elements 0 and 2 and ``r1`` those of 1 and
    3 (as VPCLMULQDQ leaves them); the high words are folded with
    x^64 = 1 + x + x^3 + x^4 as in :func:`gf64_mul`.
    """
    from llvmlite import ir

    i32 = ir.IntType(32)
    v4 = ir.VectorType(ir.IntType(64), 4)

    def splat(c):
        return ir.Constant(v4, [c] * 4)

    lo = builder.shuffle_vector(r0, r1, ir.Constant(ir.VectorType(i32, 4), [0, 4, 2, 6]))
    hi = builder.shuffle_vector(r0, r1, ir.Constant(ir.VectorType(i32, 4), [1, 5, 3, 7]))
    r = builder.xor(builder.xor(hi, builder.shl(hi, splat(1))), builder.xor(builder.shl(hi, splat(3)), builder.shl(hi, splat(4))))
    t = builder.xor(builder.xor(builder.lshr(hi, splat(63)), builder.lshr(hi, splat(61))), builder.lshr(hi, splat(60)))
    r = builder.xor(r, builder.xor(builder.xor(t, builder.shl(t, splat(1))), builder.xor(builder.shl(t, splat(3)), builder.shl(t, splat(4)))))
    return builder.xor(lo, r)


@intrinsic
def _vmul_acc(typingctx, Y, P, lam):
    """y[k] ^= p[k] * lam in GF(2^64) for k < P.size, four at a time with VPCLMULQDQ.

    Lanes hold (p[k], p[k+1]) and (p[k+2], p[k+3]); immediates 0x00 and 0x01
    multiply the low and the high element of each lane by lam; the 128-bit
    products are split into low and high words and the high words folded with
    x^64 = 1 + x + x^3 + x^4 by vector shifts (as in :func:`gf64_mul`).
    """
    from llvmlite import ir

    sig = types.void(Y, P, types.uint64)

    def codegen(context, builder, signature, args):
        yary = context.make_array(signature.args[0])(context, builder, args[0])
        pary = context.make_array(signature.args[1])(context, builder, args[1])
        lamv = args[2]
        n = pary.nitems
        i8 = ir.IntType(8)
        i32 = ir.IntType(32)
        i64 = ir.IntType(64)
        v2 = ir.VectorType(i64, 2)
        v4 = ir.VectorType(i64, 4)
        p4 = v4.as_pointer()
        fn4 = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v4, [v4, v4, i8]), "llvm.x86.pclmulqdq.256")
        fn2 = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v2, [v2, v2, i8]), "llvm.x86.pclmulqdq")

        lam4 = ir.Constant(v4, ir.Undefined)
        for lane in range(4):
            lam4 = builder.insert_element(lam4, lamv if lane % 2 == 0 else ir.Constant(i64, 0), ir.Constant(i32, lane))
        n4 = builder.and_(n, ir.Constant(i64, -4))
        pre = builder.block
        head = builder.append_basic_block("vma.head")
        body = builder.append_basic_block("vma.body")
        thead = builder.append_basic_block("vma.thead")
        tbody = builder.append_basic_block("vma.tbody")
        done = builder.append_basic_block("vma.done")
        builder.branch(head)
        builder.position_at_end(head)
        k = builder.phi(i64)
        k.add_incoming(ir.Constant(i64, 0), pre)
        builder.cbranch(builder.icmp_signed("<", k, n4), body, thead)
        builder.position_at_end(body)
        pp = builder.bitcast(builder.gep(pary.data, [k]), p4)
        yp = builder.bitcast(builder.gep(yary.data, [k]), p4)
        pv = builder.load(pp, align=8)
        r0 = builder.call(fn4, [pv, lam4, ir.Constant(i8, 0x00)])
        r1 = builder.call(fn4, [pv, lam4, ir.Constant(i8, 0x01)])
        yv = builder.load(yp, align=8)
        builder.store(builder.xor(yv, _ir_reduce4(builder, r0, r1)), yp, align=8)
        k.add_incoming(builder.add(k, ir.Constant(i64, 4)), body)
        builder.branch(head)
        # scalar remainder
        builder.position_at_end(thead)
        tk = builder.phi(i64)
        tk.add_incoming(k, head)
        builder.cbranch(builder.icmp_signed("<", tk, n), tbody, done)
        builder.position_at_end(tbody)
        zero32 = ir.Constant(i32, 0)
        undef2 = ir.Constant(v2, ir.Undefined)
        pa = builder.gep(pary.data, [tk])
        ya = builder.gep(yary.data, [tk])
        va = builder.insert_element(undef2, builder.load(pa), zero32)
        vb = builder.insert_element(undef2, lamv, zero32)
        rr = builder.call(fn2, [va, vb, ir.Constant(i8, 0)])
        slo = builder.extract_element(rr, zero32)
        shi = builder.extract_element(rr, ir.Constant(i32, 1))
        c1, c3, c4 = ir.Constant(i64, 1), ir.Constant(i64, 3), ir.Constant(i64, 4)
        sr = builder.xor(builder.xor(shi, builder.shl(shi, c1)), builder.xor(builder.shl(shi, c3), builder.shl(shi, c4)))
        st_ = builder.xor(builder.xor(builder.lshr(shi, ir.Constant(i64, 63)), builder.lshr(shi, ir.Constant(i64, 61))),
                          builder.lshr(shi, ir.Constant(i64, 60)))
        sr = builder.xor(sr, builder.xor(builder.xor(st_, builder.shl(st_, c1)), builder.xor(builder.shl(st_, c3), builder.shl(st_, c4))))
        builder.store(builder.xor(builder.load(ya), builder.xor(slo, sr)), ya)
        tk.add_incoming(builder.add(tk, ir.Constant(i64, 1)), tbody)
        builder.branch(thead)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return sig, codegen


@kernel(None)
def _mul_acc_loop(y, p, lam, mode):
    """y[k] ^= p[k] * lam in GF(2^64) (scalar loop)."""
    for k in range(p.size):
        y[k] ^= gf64_mul(p[k], lam, mode)


def _mul_acc(y, p, lam, mode):
    """y[k] ^= p[k] * lam in GF(2^64); ``mode`` type picks the method (pure Python: loop)."""
    return _mul_acc_loop(y, p, lam, mode)


@overload(_mul_acc)
def _mul_acc_overload(y, p, lam, mode):
    if isinstance(mode, types.Integer) and mode.bitwidth == 16 and not mode.signed:

        def impl_v(y, p, lam, mode):
            _vmul_acc(y, p, lam)

        return impl_v

    def impl(y, p, lam, mode):
        _mul_acc_loop(y, p, lam, mode)

    return impl


@intrinsic
def _vmul_pointwise(typingctx, A, B):
    """A[k] <- A[k] * B[k] in GF(2^64) for k < 4 * (A.size // 4), four at a time.

    VPCLMULQDQ with immediate 0x00 multiplies elements 0 and 2 of the two
    vectors, 0x11 elements 1 and 3; the caller does the remainder.
    """
    from llvmlite import ir

    sig = types.void(A, B)

    def codegen(context, builder, signature, args):
        aary = context.make_array(signature.args[0])(context, builder, args[0])
        bary = context.make_array(signature.args[1])(context, builder, args[1])
        i8 = ir.IntType(8)
        i64 = ir.IntType(64)
        v4 = ir.VectorType(i64, 4)
        p4 = v4.as_pointer()
        fn4 = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v4, [v4, v4, i8]), "llvm.x86.pclmulqdq.256")
        n4 = builder.and_(aary.nitems, ir.Constant(i64, -4))
        pre = builder.block
        head = builder.append_basic_block("vpw.head")
        body = builder.append_basic_block("vpw.body")
        done = builder.append_basic_block("vpw.done")
        builder.branch(head)
        builder.position_at_end(head)
        k = builder.phi(i64)
        k.add_incoming(ir.Constant(i64, 0), pre)
        builder.cbranch(builder.icmp_signed("<", k, n4), body, done)
        builder.position_at_end(body)
        ap = builder.bitcast(builder.gep(aary.data, [k]), p4)
        av = builder.load(ap, align=8)
        bv = builder.load(builder.bitcast(builder.gep(bary.data, [k]), p4), align=8)
        r0 = builder.call(fn4, [av, bv, ir.Constant(i8, 0x00)])
        r1 = builder.call(fn4, [av, bv, ir.Constant(i8, 0x11)])
        builder.store(_ir_reduce4(builder, r0, r1), ap, align=8)
        k.add_incoming(builder.add(k, ir.Constant(i64, 4)), body)
        builder.branch(head)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return sig, codegen


@kernel(None)
def _afft_divide(F, base, H, lam, terms, t0, t1, mode, inverse):
    """Divide block F[base : base+2H] by s_(l-1)(x) + lam in place (or undo it)."""
    G = H >> 1
    for cc in range(2):
        c = cc if inverse else 1 - cc
        src = base + H + c * G
        dst = src - H
        s = F[src : src + G]
        for q in range(t0, t1):
            off = terms[q]
            _xor_acc(F[dst + off : dst + off + G], s)
        if lam != 0:
            _mul_acc(F[dst : dst + G], s, lam, mode)


#: Levels whose blocks hold at most 2^AFFT_BLOCK_LOG elements (64 KiB) run
#: depth-first, one block at a time, so they stay in the L2 cache; measured
#: 2^20-point transforms ~2x faster than level-by-level over the whole array.
AFFT_BLOCK_LOG = 13


#: Levels 1-5 run as fixed-size code (:func:`_afft_level5`,
#: :func:`_afft_level4`, :func:`_afft_bottom3`) unless L < 5; up to half-blocks
#: of 16 the generic level divides by plain index loops, cheaper there than
#: slicing and the vector kernel.
AFFT_SMALL_HALF = 16


@kernel(None)
def _afft_level(F, l, t_lo, t_hi, lam, terms, tstart, mode, inverse):
    """One level ``l`` of the transform (forward or inverse) on blocks t_lo <= t < t_hi of size 2^l."""
    H = 1 << (l - 1)
    t0 = tstart[l - 1]
    t1 = tstart[l]
    for t in range(t_lo, t_hi):
        base = t << l
        lm = lam[t]
        if H == 1:
            if inverse:
                F[base + 1] ^= F[base]
            if lm != 0:
                F[base] ^= gf64_mul(F[base + 1], lm, mode)
            if not inverse:
                F[base + 1] ^= F[base]
        elif H <= AFFT_SMALL_HALF:
            # _afft_divide and the final XOR, inlined as index loops
            if inverse:
                for i in range(H):
                    F[base + H + i] ^= F[base + i]
            G = H >> 1
            for cc in range(2):
                c = cc if inverse else 1 - cc
                src = base + H + c * G
                dst = src - H
                for q in range(t0, t1):
                    off = dst + terms[q]
                    for i in range(G):
                        F[off + i] ^= F[src + i]
                if lm != 0:
                    for i in range(G):
                        F[dst + i] ^= gf64_mul(F[src + i], lm, mode)
            if not inverse:
                for i in range(H):
                    F[base + H + i] ^= F[base + i]
        elif inverse:
            _xor_acc(F[base + H : base + 2 * H], F[base : base + H])
            _afft_divide(F, base, H, lm, terms, t0, t1, mode, True)
        else:
            _afft_divide(F, base, H, lm, terms, t0, t1, mode, False)
            _xor_acc(F[base + H : base + 2 * H], F[base : base + H])


@kernel(None)
def _afft_bottom3(F, b_lo, b_hi, lam, mode, inverse):
    """Levels 3, 2, 1 (forward) or 1, 2, 3 (inverse) on 8-element blocks b_lo <= b < b_hi.

    The same operations as :func:`_afft_level` (``s_1 = s_2 - x^4 + x``: one
    term at offset 1 on levels 2 and 3), written out on eight locals so the
    twelve independent field products of a block overlap in the pipeline
    (measured 8-10 ns per butterfly through the generic loops, see
    docs/amplify.md).
    """
    for b in range(b_lo, b_hi):
        o = b << 3
        f0, f1, f2, f3 = F[o], F[o + 1], F[o + 2], F[o + 3]
        f4, f5, f6, f7 = F[o + 4], F[o + 5], F[o + 6], F[o + 7]
        l3 = lam[b]
        l2a, l2b = lam[2 * b], lam[2 * b + 1]
        l1a, l1b, l1c, l1d = lam[4 * b], lam[4 * b + 1], lam[4 * b + 2], lam[4 * b + 3]
        if not inverse:
            f3 ^= f6
            f4 ^= f7
            f2 ^= gf64_mul(f6, l3, mode)
            f3 ^= gf64_mul(f7, l3, mode)
            f1 ^= f4
            f2 ^= f5
            f0 ^= gf64_mul(f4, l3, mode)
            f1 ^= gf64_mul(f5, l3, mode)
            f4 ^= f0
            f5 ^= f1
            f6 ^= f2
            f7 ^= f3
            f2 ^= f3
            f1 ^= gf64_mul(f3, l2a, mode)
            f1 ^= f2
            f0 ^= gf64_mul(f2, l2a, mode)
            f2 ^= f0
            f3 ^= f1
            f6 ^= f7
            f5 ^= gf64_mul(f7, l2b, mode)
            f5 ^= f6
            f4 ^= gf64_mul(f6, l2b, mode)
            f6 ^= f4
            f7 ^= f5
            f0 ^= gf64_mul(f1, l1a, mode)
            f1 ^= f0
            f2 ^= gf64_mul(f3, l1b, mode)
            f3 ^= f2
            f4 ^= gf64_mul(f5, l1c, mode)
            f5 ^= f4
            f6 ^= gf64_mul(f7, l1d, mode)
            f7 ^= f6
        else:
            f1 ^= f0
            f0 ^= gf64_mul(f1, l1a, mode)
            f3 ^= f2
            f2 ^= gf64_mul(f3, l1b, mode)
            f5 ^= f4
            f4 ^= gf64_mul(f5, l1c, mode)
            f7 ^= f6
            f6 ^= gf64_mul(f7, l1d, mode)
            f2 ^= f0
            f3 ^= f1
            f1 ^= f2
            f0 ^= gf64_mul(f2, l2a, mode)
            f2 ^= f3
            f1 ^= gf64_mul(f3, l2a, mode)
            f6 ^= f4
            f7 ^= f5
            f5 ^= f6
            f4 ^= gf64_mul(f6, l2b, mode)
            f6 ^= f7
            f5 ^= gf64_mul(f7, l2b, mode)
            f4 ^= f0
            f5 ^= f1
            f6 ^= f2
            f7 ^= f3
            f1 ^= f4
            f2 ^= f5
            f0 ^= gf64_mul(f4, l3, mode)
            f1 ^= gf64_mul(f5, l3, mode)
            f3 ^= f6
            f4 ^= f7
            f2 ^= gf64_mul(f6, l3, mode)
            f3 ^= gf64_mul(f7, l3, mode)
        F[o], F[o + 1], F[o + 2], F[o + 3] = f0, f1, f2, f3
        F[o + 4], F[o + 5], F[o + 6], F[o + 7] = f4, f5, f6, f7


@kernel(None)
def _afft_level4(F, b_lo, b_hi, lam, mode, inverse):
    """Level 4 on 16-element blocks b_lo <= b < b_hi (``s_3 = x^8 + x^4 + x^2 + x``).

    :func:`_afft_level` with the block size and the terms fixed, so every
    loop has a constant trip count and unrolls.
    """
    for b in range(b_lo, b_hi):
        o = b << 4
        lm = lam[b]
        if inverse:
            for i in range(8):
                F[o + 8 + i] ^= F[o + i]
        for cc in range(2):
            c = cc if inverse else 1 - cc
            src = o + 8 + 4 * c
            dst = src - 8
            for i in range(4):
                v = F[src + i]
                F[dst + 1 + i] ^= v
                F[dst + 2 + i] ^= v
                F[dst + 4 + i] ^= v
            for i in range(4):
                F[dst + i] ^= gf64_mul(F[src + i], lm, mode)
        if not inverse:
            for i in range(8):
                F[o + 8 + i] ^= F[o + i]


@kernel(None)
def _afft_level5(F, b_lo, b_hi, lam, mode, inverse):
    """Level 5 on 32-element blocks b_lo <= b < b_hi (``s_4 = x^16 + x``), fixed like :func:`_afft_level4`."""
    for b in range(b_lo, b_hi):
        o = b << 5
        lm = lam[b]
        if inverse:
            for i in range(16):
                F[o + 16 + i] ^= F[o + i]
        for cc in range(2):
            c = cc if inverse else 1 - cc
            src = o + 16 + 8 * c
            dst = src - 16
            for i in range(8):
                F[dst + 1 + i] ^= F[src + i]
            for i in range(8):
                F[dst + i] ^= gf64_mul(F[src + i], lm, mode)
        if not inverse:
            for i in range(16):
                F[o + 16 + i] ^= F[o + i]


@kernel(None)
def afft_forward(F, L, lam, terms, tstart, mode):
    """Evaluate the polynomial with coefficients F (2^L field elements) at
    omega_u = sum_i bit_i(u) beta_i, in place: F[u] <- f(omega_u).

    Levels L .. Lc+1 sweep the whole array; below, each block of 2^Lc
    elements runs all its remaining levels before the next block (the same
    operations in a cache-friendly order), the last five as fixed-size
    code.
    """
    Lc = min(L, AFFT_BLOCK_LOG)
    low = 5 if L >= 5 else 0
    for l in range(L, Lc, -1):
        _afft_level(F, l, 0, 1 << (L - l), lam, terms, tstart, mode, False)
    for b in range(1 << (L - Lc)):
        for l in range(Lc, low, -1):
            _afft_level(F, l, b << (Lc - l), (b + 1) << (Lc - l), lam, terms, tstart, mode, False)
        if low:
            _afft_level5(F, b << (Lc - 5), (b + 1) << (Lc - 5), lam, mode, False)
            _afft_level4(F, b << (Lc - 4), (b + 1) << (Lc - 4), lam, mode, False)
            _afft_bottom3(F, b << (Lc - 3), (b + 1) << (Lc - 3), lam, mode, False)


@kernel(None)
def afft_inverse(F, L, lam, terms, tstart, mode):
    """Inverse of :func:`afft_forward` (interpolation), in place, in the mirrored order."""
    Lc = min(L, AFFT_BLOCK_LOG)
    afft_inverse_low(F, L, lam, terms, tstart, mode, 0, 1 << (L - Lc))
    for l in range(Lc + 1, L + 1):
        _afft_level(F, l, 0, 1 << (L - l), lam, terms, tstart, mode, True)


@kernel(None)
def afft_inverse_low(F, L, lam, terms, tstart, mode, b_lo, b_hi):
    """The inverse's levels 1 .. Lc on the 2^Lc-element blocks b_lo <= b < b_hi (independent blocks)."""
    Lc = min(L, AFFT_BLOCK_LOG)
    low = 5 if L >= 5 else 0
    for b in range(b_lo, b_hi):
        if low:
            _afft_bottom3(F, b << (Lc - 3), (b + 1) << (Lc - 3), lam, mode, True)
            _afft_level4(F, b << (Lc - 4), (b + 1) << (Lc - 4), lam, mode, True)
            _afft_level5(F, b << (Lc - 5), (b + 1) << (Lc - 5), lam, mode, True)
        for l in range(low + 1, Lc + 1):
            _afft_level(F, l, b << (Lc - l), (b + 1) << (Lc - l), lam, terms, tstart, mode, True)


def _pointwise_head(A, B, mode):
    """Elements of A already multiplied by a vector loop (none in pure Python)."""
    return 0


@overload(_pointwise_head)
def _pointwise_head_overload(A, B, mode):
    if isinstance(mode, types.Integer) and mode.bitwidth == 16 and not mode.signed:

        def impl_v(A, B, mode):
            _vmul_pointwise(A, B)
            return A.size & ~3

        return impl_v
    return lambda A, B, mode: 0


@kernel(None)
def afft_pointwise(A, B, mode):
    """A[i] <- A[i] * B[i] in GF(2^64) (A and B of equal size)."""
    for i in range(_pointwise_head(A, B, mode), A.size):
        A[i] = gf64_mul(A[i], B[i], mode)


@kernel(None)
def chunks32_to_words(C, nwords, out):
    """Overlap-add 64-bit chunk products at 32-bit offsets: out = sum_k C[k] z^(32k)."""
    for w in range(nwords):
        v = np.uint64(0)
        if 2 * w < C.size:
            v ^= C[2 * w]
        if 2 * w + 1 < C.size:
            v ^= C[2 * w + 1] << np.uint64(32)
        if w > 0 and 2 * w - 1 < C.size:
            v ^= C[2 * w - 1] >> np.uint64(32)
        out[w] = v


def afft_tables(L: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lam, terms, tstart) for a transform of size 2^L.

    ``lam[t] = sum_k bit_k(t) beta_(k+1)``; ``terms[tstart[l-1]:tstart[l]]``
    are the offsets 2^j of the terms x^(2^j) of s_(l-1)(x) below the leading
    one (j a proper bit-subset of l-1, Lucas' theorem).
    """
    if not 1 <= L <= 63:
        raise ValueError(f"transform size 2^{L} out of range")
    lam = np.zeros(1 << (L - 1), dtype=np.uint64)
    size = 1
    k = 0
    while size < lam.size:
        lam[size : 2 * size] = lam[:size] ^ CANTOR_BASIS[k + 1]
        size *= 2
        k += 1
    terms: list[int] = []
    tstart = [0]
    for l in range(1, L + 1):
        e = l - 1
        terms.extend(1 << j for j in range(e) if (j & e) == j)
        tstart.append(len(terms))
    return lam, np.array(terms, dtype=np.int64), np.array(tstart, dtype=np.int64)


def _warmup() -> None:
    """Compile the Toeplitz kernels for this machine's mode."""
    mode = default_mode()
    rng = np.random.default_rng(0)
    for M, Nc in ((1, 1), (3, 70), (70, 3), (2 * LEAF_WORDS + 1, 2 * LEAF_WORDS + 1), (4 * LEAF_WORDS + 2, 2 * LEAF_WORDS + 1)):
        B = np.zeros(2 * (M + Nc) + workspace_words(M, Nc), np.uint64)
        B[: 2 * Nc + M] = rng.integers(0, 2**63, 2 * Nc + M, dtype=np.uint64)
        toeplitz_words(B, 0, M + Nc, M + 2 * Nc, M, Nc, 2 * (M + Nc), mode)
    lam, terms, tstart = afft_tables(4)
    F = rng.integers(0, 2**63, 16, dtype=np.uint64)
    afft_forward(F, 4, lam, terms, tstart, mode)
    afft_pointwise(F, F.copy(), mode)
    afft_inverse(F, 4, lam, terms, tstart, mode)
    chunks32_to_words(F, 8, np.zeros(8, np.uint64))
    dst = np.zeros(3, np.uint64)
    shift_up(np.ones(2, np.uint64), 100, 5, dst)
    mask_tail(dst, 70)
    shift_down(np.ones(3, np.uint64), 7, 100, dst)
