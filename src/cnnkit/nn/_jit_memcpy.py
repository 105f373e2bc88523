"""``copy_run``: one contiguous run of values copied by the C library's ``memcpy``, from
compiled kernels.

Why: the row-block columns of the first layers (``_jit_block_conv``) are runs of 12-60
contiguous values. A compiled element loop copies them no faster than NumPy's strided
copy: LLVM vectorises a loop of unknown length in blocks of 64 floats and runs a shorter
one in its scalar remainder. ``memcpy`` has code for every small length. One thread,
LeNet's columns of 32 images (NumPy's strided copy / element loop / memcpy runs, us):
1 -> 10 channels, runs of 12 values: 56 / 67 / 21; 10 -> 20, runs of 60: 42 / 74 / 30.

In Python ``copy_run`` is the slice assignment it stands for; inside a Numba kernel it is
an LLVM ``memcpy`` of the same bytes (``register`` teaches Numba that, once, before the
first kernel that uses it is compiled).
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_registered = False


def copy_run(dst, dst_start, src, src_start, count):
    """``dst[dst_start:dst_start + count] = src[src_start:src_start + count]``.

    Shape: dst and src 1-D, C-contiguous, of one dtype, not overlapping."""
    dst[dst_start:dst_start + count] = src[src_start:src_start + count]


def register() -> None:
    """Give Numba its implementation of ``copy_run`` (idempotent; Numba imported here)."""
    global _registered
    if _registered:
        return
    with _lock:
        if _registered:
            return
        from numba import types
        from numba.core import cgutils
        from numba.extending import intrinsic, overload

        @intrinsic
        def _memcpy(typingctx, dst, dst_start, src, src_start, count):
            sig = types.void(dst, types.intp, src, types.intp, types.intp)

            def codegen(context, builder, signature, args):
                d = context.make_array(signature.args[0])(context, builder, args[0])
                s = context.make_array(signature.args[2])(context, builder, args[2])
                itemsize = context.get_abi_sizeof(context.get_data_type(signature.args[0].dtype))
                cgutils.raw_memcpy(builder, builder.gep(d.data, [args[1]]), builder.gep(s.data, [args[3]]),
                                   args[4], itemsize)
                return context.get_dummy_value()

            return sig, codegen

        @overload(copy_run, jit_options={"nogil": True})
        def _copy_run(dst, dst_start, src, src_start, count):
            if not (isinstance(dst, types.Array) and isinstance(src, types.Array) and dst.ndim == 1
                    and src.ndim == 1 and dst.layout == "C" and src.layout == "C" and dst.dtype == src.dtype):
                return None

            def impl(dst, dst_start, src, src_start, count):
                _memcpy(dst, dst_start, src, src_start, count)

            return impl

        _registered = True
