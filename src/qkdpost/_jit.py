"""The one place that sets Numba policy for every kernel in qkdpost.

Every ``_kernels.py`` module decorates its functions with :func:`kernel`, never
with ``numba.njit`` directly, so that caching, fastmath and threading choices
are made once and can be changed once.

Policy
------
- ``cache=True``: compiled machine code is stored next to the source (or in
  ``NUMBA_CACHE_DIR``) so a device wrapper pays compilation once, at install
  or at ``qkdpost warmup``, not on its first key block.
- ``fastmath=False``: key bits must be exact; a kernel may opt in only with a
  benchmark and an accuracy test that justify it (pass ``fastmath=True``).
- ``nogil=True``: kernels release the GIL so blocks can be processed by
  threads on both cores.
- ``error_model="numpy"``: no Python exception machinery in hot loops;
  kernels report failure as a returned status.
- Eager signatures where given, so the compile happens at import of the
  module that defines the kernel, which ``warmup`` triggers.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable

import numba

__all__ = ["kernel", "warmup", "KERNEL_MODULES", "jit_disabled", "prefetch"]

# Every module that defines Numba kernels; ``warmup`` imports and exercises them.
KERNEL_MODULES: list[str] = []


def jit_disabled() -> bool:
    """True when ``NUMBA_DISABLE_JIT=1`` (pure-Python run, e.g. for coverage)."""
    return os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0")


def kernel(
    signature: Any = None,
    *,
    parallel: bool = False,
    fastmath: bool = False,
    inline: str = "never",
    nrt: bool = True,
) -> Callable[[Callable[..., Any]], Any]:
    """Compile a function with qkdpost's Numba policy.

    Parameters
    ----------
    signature : numba signature or list of them, optional
        Eager signature(s). Hot kernels should give one, so compilation is
        paid at warm-up, not at first use.
    parallel : bool
        Enable ``prange``. Use for kernels that loop over many frames.
    fastmath : bool
        Off by default; turn on only with a benchmark and an accuracy test.
    inline : {"never", "always"}
        Numba IR inlining for tiny helpers called from other kernels.
    nrt : bool
        Numba's reference-counted runtime. ``False`` compiles the kernel
        without it (Numba's ``_nrt=False``): no atomic reference counts on
        the arrays it passes to helpers, but it must not allocate, return or
        store arrays, and every kernel it calls must be compiled the same
        way. For allocation-free hot kernels whose helpers take many arrays.
    """

    def wrap(fn: Callable[..., Any]) -> Any:
        opts = dict(
            cache=True,
            nogil=True,
            fastmath=fastmath,
            parallel=parallel,
            error_model="numpy",
            inline=inline,
        )
        if not nrt:
            opts["_nrt"] = False
        if signature is None:
            return numba.njit(**opts)(fn)
        return numba.njit(signature, **opts)(fn)

    return wrap


def _make_prefetch() -> Callable[..., Any]:
    """``prefetch(arr, idx)``: ask the CPU to bring ``arr[idx]`` into the caches.

    ``idx`` is an integer (1-D arrays) or a tuple of integers, one per
    dimension. A hint only: no effect on results, no bounds check, no fault
    on a bad address (LLVM's ``llvm.prefetch``: read, keep in every level).
    Kernels whose accesses are random but known a little ahead issue these
    first, so that the cache misses overlap instead of waiting one after the
    other. Without the JIT it does nothing.
    """
    if jit_disabled():

        def prefetch(arr: Any, idx: Any) -> None:
            return None

        return prefetch

    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def prefetch(typingctx: Any, arr: Any, idx: Any) -> Any:
        if not isinstance(arr, types.Array):
            return None
        if isinstance(idx, types.Integer):
            idx_types = [idx]
        elif isinstance(idx, types.BaseTuple) and all(isinstance(t, types.Integer) for t in idx):
            idx_types = list(idx)
        else:
            return None
        if len(idx_types) != arr.ndim:
            return None
        sig = types.void(arr, idx)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            aryty, idxty = signature.args
            ary = context.make_array(aryty)(context, builder, args[0])
            raw = [args[1]] if isinstance(idxty, types.Integer) else cgutils.unpack_tuple(builder, args[1])
            inds = [context.cast(builder, v, t, types.intp) for v, t in zip(raw, idx_types)]
            ptr = cgutils.get_item_pointer(context, builder, aryty, ary, inds, wraparound=False)
            i8p = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0"
            )
            # (address, 0 = read, 3 = keep in every cache level, 1 = data)
            builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return sig, codegen

    return prefetch


prefetch = _make_prefetch()


def register(module_name: str) -> None:
    """Declare that ``module_name`` holds kernels (called by each ``_kernels``)."""
    if module_name not in KERNEL_MODULES:
        KERNEL_MODULES.append(module_name)


def warmup(modules: list[str] | None = None) -> list[str]:
    """Import every kernel module and run its ``_warmup()`` hook if present.

    Returns the names of the modules that were compiled. Compiled code lands in
    Numba's cache, so later processes load it instead of compiling.
    """
    names = modules if modules is not None else _all_kernel_modules()
    done = []
    for name in names:
        mod = importlib.import_module(name)
        hook = getattr(mod, "_warmup", None)
        if hook is not None:
            hook()
        done.append(name)
    return done


def _all_kernel_modules() -> list[str]:
    """Find every ``qkdpost.*._kernels`` module in the installed package."""
    import pkgutil

    import qkdpost

    found = []
    for info in pkgutil.walk_packages(qkdpost.__path__, prefix="qkdpost."):
        if info.name.endswith("._kernels") or info.name.endswith("_kernels"):
            found.append(info.name)
    return sorted(set(found) | set(KERNEL_MODULES))
