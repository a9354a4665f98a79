"""Explicit 8-lane vector steps of the frame-parallel LDPC decoder.

The decoder of :mod:`._kernels` runs ``LANES`` = 8 frames at once with its
messages laid out [edge][lane] (float32), so one AVX2 register holds the
message of one edge for all eight frames. LLVM does not vectorise the plain
Numba lane loops by itself: it cannot prove that the posterior, message and
scratch arrays do not overlap, and the short fixed loops are unrolled into
scalar code (measured: no packed float instructions in the compiled loop,
same speed as one frame at a time). These Numba intrinsics emit the vector
IR directly: ``<8 x float>`` loads, arithmetic, compares, selects and
stores, the table lookups as one AVX2 gather (eight scalar loads on a
target without AVX2). Each intrinsic runs the loop over the edges of one
check (``row_*``): the running sum and sign of the check stay in registers
(with one intrinsic per edge they went through memory, since LLVM cannot
prove the arrays apart, and every edge waited for the previous edge's
store to be forwarded).

Each step performs, lane by lane, exactly the float32 operations of the
one-frame scalar layered decoder (``tests/oracles/ldpc.py``) in the same order (fsub,
fabs, clamp, multiply by the table scale, truncation, table load, fadd,
multiply by +-1), so the two decoders give bit-identical messages; the
tests check this. Under ``NUMBA_DISABLE_JIT=1`` the same steps run as NumPy
code on row views.

Array arguments are C-contiguous with a last axis of length 8 (``col_idx``
is the int32 CSR column index); the check's edges are ``lo:hi``, edge ``e``
joins variable ``col_idx[e]`` and uses scratch row ``k = e - lo``. Nothing
is bounds-checked: callers are kernels that pass valid rows.

Numba's on-disk cache is keyed on the calling kernel's source file, not on
this one: after editing this module, touch ``_kernels.py`` (or clear the
cache) so the kernels are recompiled.
"""

from __future__ import annotations

import numpy as np

from ..._jit import jit_disabled

LANES = 8

# phi table geometry, repeated from _kernels (a circular import otherwise)
_PHI_SCALE = np.float32(512.0)
_PHI_XCLAMP = np.float32((8192 - 1) / 512.0)

__all__ = ["LANES", "row_in", "row_in_keep", "row_out", "row_out_all", "row_parity", "prefetch_row"]

if jit_disabled():  # pragma: no cover - exercised by the NUMBA_DISABLE_JIT=1 run

    def _phi8(x: np.ndarray, lut: np.ndarray) -> np.ndarray:
        x = np.minimum(np.maximum(x, np.float32(0.0)), _PHI_XCLAMP)
        return lut[(x * _PHI_SCALE).astype(np.int32)]

    def row_in(L, R, T, P, SG, S, NEG, lut, col_idx, lo, hi):
        """First half of the update of the check whose edges are ``lo:hi``: for each edge e
        (variable v = col_idx[e], position k = e - lo) t = L[v] - R[e] into T[k], its sign
        into SG[k] and NEG, phi(|t|) into P[k] and its sum into S."""
        for e in range(lo, hi):
            k = e - lo
            t = L[col_idx[e]] - R[e]
            T[k] = t
            sg = (t < 0).astype(np.int32)
            SG[k] = sg
            NEG ^= sg
            p = _phi8(np.abs(t), lut)
            P[k] = p
            S += p

    def row_in_keep(L, R, T, P, SG, S, NEG, lut, LO, RO, col_idx, lo, hi):
        """row_in that also keeps the old rows L[v], R[e] in LO[k], RO[k] (for the masked row_out)."""
        for e in range(lo, hi):
            LO[e - lo] = L[col_idx[e]]
            RO[e - lo] = R[e]
        row_in(L, R, T, P, SG, S, NEG, lut, col_idx, lo, hi)

    def row_out(L, R, T, P, SG, S, NEG, lut, ACT, LO, RO, col_idx, lo, hi):
        """Second half: new message of each edge and posterior of its variable, on active lanes
        only (inactive lanes get back their old values LO[k], RO[k])."""
        act = ACT != 0
        for e in range(lo, hi):
            k = e - lo
            r = _phi8(S - P[k], lut) * (1 - 2 * (NEG ^ SG[k])).astype(np.float32)
            R[e] = np.where(act, r, RO[k])
            L[col_idx[e]] = np.where(act, T[k] + r, LO[k])

    def row_out_all(L, R, T, P, SG, S, NEG, lut, col_idx, lo, hi):
        """row_out when every lane is active (no masking)."""
        for e in range(lo, hi):
            k = e - lo
            r = _phi8(S - P[k], lut) * (1 - 2 * (NEG ^ SG[k])).astype(np.float32)
            R[e] = r
            L[col_idx[e]] = T[k] + r

    def row_parity(L, col_idx, lo, hi, acc):
        """acc ^= (L[v] < 0) lane by lane for the variables of edges lo:hi (hard decisions into a
        parity accumulator)."""
        for e in range(lo, hi):
            acc ^= (L[col_idx[e]] < 0).astype(np.int32)

    def prefetch_row(L, v):
        """Cache hint for row ``v`` of L (no effect on results; nothing to do without the JIT)."""

else:
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    def _target_has_avx2() -> bool:
        """True when Numba compiles for a CPU with AVX2 (host, or NUMBA_CPU_NAME/NUMBA_CPU_FEATURES)."""
        import llvmlite.binding as llb
        from numba.core import config

        if config.CPU_FEATURES is not None:
            return "+avx2" in str(config.CPU_FEATURES)
        if config.CPU_NAME not in (None, "host"):
            return False  # a named portable target (e.g. "generic"): no AVX2 intrinsics
        return "+avx2" in llb.get_host_cpu_features().flatten()

    # AVX2 has a hardware gather (vgatherdps); measured 1.1-1.2x faster than
    # eight scalar loads on this machine's decoder (znver3).
    _AVX2_GATHER = _target_has_avx2()

    _f32 = ir.FloatType()
    _i32 = ir.IntType(32)
    _i64 = ir.IntType(64)
    _vf = ir.VectorType(_f32, LANES)
    _vi = ir.VectorType(_i32, LANES)

    def _data(context, builder, aryty, ary):
        return context.make_array(aryty)(context, builder, ary).data

    def _row(builder, base, row, elty, vty):
        """Pointer to the 8 elements of row ``row`` (i64) of a (rows, 8) array."""
        p = builder.gep(base, [builder.mul(row, ir.Constant(_i64, LANES))], inbounds=True)
        return builder.bitcast(p, vty.as_pointer())

    def _load(builder, ptr):
        return builder.load(ptr, align=4)

    def _store(builder, val, ptr):
        builder.store(val, ptr, align=4)

    def _splat(c, vty):
        return ir.Constant(vty, [c] * LANES)

    def _phi_vec(builder, x, lut_base):
        """Clamp x to [0, XCLAMP], scale, truncate, and look the 8 indices up in the table."""
        zero = _splat(0.0, _vf)
        x = builder.select(builder.fcmp_ordered(">", x, zero), x, zero)
        hi = _splat(float(_PHI_XCLAMP), _vf)
        x = builder.select(builder.fcmp_ordered("<", x, hi), x, hi)
        idx = builder.fptosi(builder.fmul(x, _splat(float(_PHI_SCALE), _vf)), _vi)
        if _AVX2_GATHER:
            i8p = ir.IntType(8).as_pointer()
            fnty = ir.FunctionType(_vf, [_vf, i8p, _vi, _vf, ir.IntType(8)])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.avx2.gather.d.ps.256")
            allones = builder.bitcast(_splat(-1, _vi), _vf)
            return builder.call(fn, [_splat(0.0, _vf), builder.bitcast(lut_base, i8p), idx, allones,
                                     ir.Constant(ir.IntType(8), 4)])
        out = ir.Constant(_vf, ir.Undefined)
        for i in range(LANES):
            j = builder.extract_element(idx, ir.Constant(_i32, i))
            p = builder.gep(lut_base, [j], inbounds=True)
            out = builder.insert_element(out, builder.load(p, align=4), ir.Constant(_i32, i))
        return out

    def _fabs(builder, x):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_vf, [_vf]), "llvm.fabs.v8f32")
        return builder.call(fn, [x])

    def _idx(context, builder, ty, val):
        return context.cast(builder, val, ty, types.int64)

    def _edge_range(context, builder, tys, args, i):
        """(col_idx data pointer, lo, hi) from arguments i, i+1, i+2."""
        bC = _data(context, builder, tys[i], args[i])
        lo = _idx(context, builder, tys[i + 1], args[i + 1])
        hi = _idx(context, builder, tys[i + 2], args[i + 2])
        return bC, lo, hi

    def _var(builder, bC, e):
        """Variable of edge e: col_idx[e] (int32) as i64."""
        return builder.sext(builder.load(builder.gep(bC, [e], inbounds=True), align=4), _i64)

    def _row_in_ir(context, builder, tys, args, keep):
        """For each edge e in lo:hi of one check: t = L[v] - R[e] and its sign and phi into T, SG, P,
        accumulated into NEG and S (and, if ``keep``, the old rows of L and R into LO[k], RO[k]).

        The loop is emitted here, with the running S and NEG in stack slots that LLVM promotes to
        registers: per-edge intrinsics had to keep them in memory (the arrays may alias), so every
        edge waited for the store-to-load forwarding of the previous edge's sum."""
        bL, bR, bT, bP, bSG, bS, bNEG, bLUT = (_data(context, builder, tys[i], args[i]) for i in range(8))
        o = 10 if keep else 8
        bC, lo, hi = _edge_range(context, builder, tys, args, o)
        if keep:
            bLO, bRO = (_data(context, builder, tys[i], args[i]) for i in (8, 9))
        pS = builder.bitcast(bS, _vf.as_pointer())
        pNEG = builder.bitcast(bNEG, _vi.as_pointer())
        aS = cgutils.alloca_once(builder, _vf)
        aN = cgutils.alloca_once(builder, _vi)
        builder.store(_load(builder, pS), aS)
        builder.store(_load(builder, pNEG), aN)
        with cgutils.for_range_slice(builder, lo, hi, ir.Constant(_i64, 1), intp=_i64) as (e, _):
            k = builder.sub(e, lo)
            v = _var(builder, bC, e)
            lv = _load(builder, _row(builder, bL, v, _f32, _vf))
            rv = _load(builder, _row(builder, bR, e, _f32, _vf))
            if keep:
                _store(builder, lv, _row(builder, bLO, k, _f32, _vf))
                _store(builder, rv, _row(builder, bRO, k, _f32, _vf))
            t = builder.fsub(lv, rv)
            _store(builder, t, _row(builder, bT, k, _f32, _vf))
            sg = builder.zext(builder.fcmp_ordered("<", t, _splat(0.0, _vf)), _vi)
            _store(builder, sg, _row(builder, bSG, k, _i32, _vi))
            builder.store(builder.xor(builder.load(aN), sg), aN)
            p = _phi_vec(builder, _fabs(builder, t), bLUT)
            _store(builder, p, _row(builder, bP, k, _f32, _vf))
            builder.store(builder.fadd(builder.load(aS), p), aS)
        _store(builder, builder.load(aS), pS)
        _store(builder, builder.load(aN), pNEG)
        return context.get_dummy_value()

    @intrinsic
    def row_in_keep(typingctx, L, R, T, P, SG, S, NEG, lut, LO, RO, col_idx, lo, hi):
        """row_in that also keeps the old rows of L and R in LO[k], RO[k] for the masked row_out."""
        sig = types.void(L, R, T, P, SG, S, NEG, lut, LO, RO, col_idx, lo, hi)

        def codegen(context, builder, signature, args):
            return _row_in_ir(context, builder, signature.args, args, True)

        return sig, codegen

    @intrinsic
    def row_in(typingctx, L, R, T, P, SG, S, NEG, lut, col_idx, lo, hi):
        sig = types.void(L, R, T, P, SG, S, NEG, lut, col_idx, lo, hi)

        def codegen(context, builder, signature, args):
            return _row_in_ir(context, builder, signature.args, args, False)

        return sig, codegen

    def _row_out_ir(context, builder, tys, args, masked):
        """For each edge e in lo:hi: new message r of e and posterior T[k] + r of its variable, stored
        on active lanes (``masked``; old values kept elsewhere) or on all lanes."""
        bL, bR, bT, bP, bSG, bS, bNEG, bLUT = (_data(context, builder, tys[i], args[i]) for i in range(8))
        o = 11 if masked else 8
        bC, lo, hi = _edge_range(context, builder, tys, args, o)
        s = _load(builder, builder.bitcast(bS, _vf.as_pointer()))
        neg0 = _load(builder, builder.bitcast(bNEG, _vi.as_pointer()))
        if masked:
            bACT, bLO, bRO = (_data(context, builder, tys[i], args[i]) for i in (8, 9, 10))
            act = builder.icmp_signed("!=", _load(builder, builder.bitcast(bACT, _vi.as_pointer())),
                                      _splat(0, _vi))
        with cgutils.for_range_slice(builder, lo, hi, ir.Constant(_i64, 1), intp=_i64) as (e, _):
            k = builder.sub(e, lo)
            v = _var(builder, bC, e)
            x = builder.fsub(s, _load(builder, _row(builder, bP, k, _f32, _vf)))
            ph = _phi_vec(builder, x, bLUT)
            neg = builder.xor(neg0, _load(builder, _row(builder, bSG, k, _i32, _vi)))
            sgn = builder.sitofp(builder.sub(_splat(1, _vi), builder.mul(_splat(2, _vi), neg)), _vf)
            r = builder.fmul(ph, sgn)
            pR = _row(builder, bR, e, _f32, _vf)
            pL = _row(builder, bL, v, _f32, _vf)
            t = _load(builder, _row(builder, bT, k, _f32, _vf))
            if masked:
                # inactive lanes get back their old values, kept by row_in_keep in LO[k], RO[k]; selecting
                # against a load of pL / pR itself compiles to vmaskmovps, slow on AMD Zen
                _store(builder, builder.select(act, r, _load(builder, _row(builder, bRO, k, _f32, _vf))), pR)
                _store(builder, builder.select(act, builder.fadd(t, r),
                                               _load(builder, _row(builder, bLO, k, _f32, _vf))), pL)
            else:
                _store(builder, r, pR)
                _store(builder, builder.fadd(t, r), pL)
        return context.get_dummy_value()

    @intrinsic
    def row_out(typingctx, L, R, T, P, SG, S, NEG, lut, ACT, LO, RO, col_idx, lo, hi):
        sig = types.void(L, R, T, P, SG, S, NEG, lut, ACT, LO, RO, col_idx, lo, hi)

        def codegen(context, builder, signature, args):
            return _row_out_ir(context, builder, signature.args, args, True)

        return sig, codegen

    @intrinsic
    def row_out_all(typingctx, L, R, T, P, SG, S, NEG, lut, col_idx, lo, hi):
        """row_out with every lane active: plain stores. The masked form's L store compiles to
        vmaskmovps, which is slow on AMD Zen (and blocks store-to-load forwarding)."""
        sig = types.void(L, R, T, P, SG, S, NEG, lut, col_idx, lo, hi)

        def codegen(context, builder, signature, args):
            return _row_out_ir(context, builder, signature.args, args, False)

        return sig, codegen

    @intrinsic
    def row_parity(typingctx, L, col_idx, lo, hi, acc):
        """acc ^= (L[v] < 0) over the variables of edges lo:hi, accumulated in a register."""
        sig = types.void(L, col_idx, lo, hi, acc)

        def codegen(context, builder, signature, args):
            tys = signature.args
            bL = _data(context, builder, tys[0], args[0])
            bC, lo, hi = _edge_range(context, builder, tys, args, 1)
            pA = builder.bitcast(_data(context, builder, tys[4], args[4]), _vi.as_pointer())
            aA = cgutils.alloca_once(builder, _vi)
            builder.store(_load(builder, pA), aA)
            with cgutils.for_range_slice(builder, lo, hi, ir.Constant(_i64, 1), intp=_i64) as (e, _):
                lv = _load(builder, _row(builder, bL, _var(builder, bC, e), _f32, _vf))
                neg = builder.zext(builder.fcmp_ordered("<", lv, _splat(0.0, _vf)), _vi)
                builder.store(builder.xor(builder.load(aA), neg), aA)
            _store(builder, builder.load(aA), pA)
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def prefetch_row(typingctx, L, v):
        """Prefetch row ``v`` of a (rows, 8) array into the caches (a hint: no effect on results)."""
        sig = types.void(L, v)

        def codegen(context, builder, signature, args):
            tys = signature.args
            bL = _data(context, builder, tys[0], args[0])
            iv = _idx(context, builder, tys[1], args[1])
            i8p = ir.IntType(8).as_pointer()
            p = builder.bitcast(builder.gep(bL, [builder.mul(iv, ir.Constant(_i64, LANES))], inbounds=True), i8p)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, _i32, _i32, _i32]),
                                                "llvm.prefetch.p0")
            builder.call(fn, [p, ir.Constant(_i32, 1), ir.Constant(_i32, 3), ir.Constant(_i32, 1)])
            return context.get_dummy_value()

        return sig, codegen
