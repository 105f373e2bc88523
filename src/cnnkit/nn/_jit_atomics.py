"""Atomic flag loads and stores, a cycle counter and the CPU's spin-wait hint for compiled
code, and the two spin loops of ``_jit_spin`` built from them. Imports Numba: imported only
when the compiled kernels are on.

x86-64 gets ``pause`` in its spin loops (it frees the core's resources for a sibling thread
and avoids a pipeline flush on exit) and reads the TSC for their time limits; other CPUs
spin in a plain loop and count its iterations. The limits are rough, which is all they
need to be.
"""

from __future__ import annotations

import platform

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


#: Cycles one spin iteration is taken for where no cycle counter is read (not x86-64).
CYCLES_PER_SPIN = 64


@intrinsic
def cycles(typingctx, spins):
    """A cycle count (int64): the TSC on x86-64; elsewhere ``spins * CYCLES_PER_SPIN``, the
    caller's count of its spin iterations (LLVM's ``readcyclecounter`` reads a register
    that user code may not read on AArch64)."""
    def codegen(context, builder, signature, args):
        if _X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(64), []),
                                                "llvm.readcyclecounter")
            return builder.call(fn, [])
        return builder.mul(args[0], ir.Constant(ir.IntType(64), CYCLES_PER_SPIN))
    return types.int64(types.int64), codegen


@intrinsic
def relax(typingctx):
    """The spin-wait hint (``pause`` on x86-64; nothing elsewhere)."""
    def codegen(context, builder, signature, args):
        if _X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def load(typingctx, flag):
    """``flag[0]`` (int64 array), an acquire load: never hoisted out of a loop."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.load_atomic(data, "acquire", 8)
    return types.int64(flag), codegen


@intrinsic
def store(typingctx, flag, value):
    """``flag[0] = value`` (int64 array), a release store: what came before is visible first."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        builder.store_atomic(args[1], data, "release", 8)
        return context.get_dummy_value()
    return types.void(flag, types.int64), codegen


@njit(nogil=True, cache=True)
def publish(flag, value, hold_cycles):
    """Store ``value`` into ``flag``, then spin for ``hold_cycles`` (without the GIL)."""
    store(flag, value)
    start = cycles(0)
    spins = 0
    while cycles(spins) - start < hold_cycles:
        relax()
        spins += 1


@njit(nogil=True, cache=True)
def wait_for(flag, value, max_cycles):
    """Spin until ``flag`` holds ``value`` (True) or ``max_cycles`` passed (False)."""
    start = cycles(0)
    spins = 0
    while load(flag) != value:
        if cycles(spins) - start > max_cycles:
            return False
        relax()
        spins += 1
    return True
