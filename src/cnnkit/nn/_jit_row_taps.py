"""A thread's whole share of a row-tap convolution in one compiled call, GEMMs included.

Why: ``_conv_kernels._row_tap_conv`` runs each batch chunk as a handful of calls from
Python: the row-column copy, kh batched GEMMs, the bias and ReLU pass, the folded ReLU
backward. Each call returns to Python and takes the GIL back. With two threads doing the
same, a thread that finds the GIL taken goes to sleep, and on the VMs we measure on (their
idle vCPUs halt at once) waking it costs 40-90 us. The 4-conv network's inference kept
1.77 of its 2 cores busy and switched context 21 times per step.

Here the same steps run inside one Numba function without the GIL: the compiled copy
(``_jit_conv.row_columns``), MKL's ``cblas_sgemm`` called from machine code through its
address (one call per image and kernel row, beta = 1 from the second row on, as the
batched call does), and the compiled output pass (``_jit_epilogue``). The values are the
Python path's: the same copies, the same products on the same operands in the same order
of kernel rows, the same epilogue.

2 threads, batch 64, 3x3 'same' layers with bias and ReLU, ms (Python path / one call):
32 -> 32 at 28x28 4.14 / 3.66, 64 -> 64 at 14x14 3.69 / 3.44, 32 -> 64 at 14x14 2.61 / 2.17.

Used when MKL is the backend (its address is known and its LP64 interface fixed) and the
compiled kernels are on; ``_conv_kernels`` asks ``usable`` first.
"""

from __future__ import annotations

import threading

import numpy as np

from . import _jit, _jit_blas, _jit_conv, _jit_epilogue
from ._jit_blas import NO_TRANS, ROW_MAJOR, TRANS

_lock = threading.Lock()
_compiled = None         # the compiled ``_part``


def _part(x, rows, w_t, out, bias, add_bias, clip_low, capped, cap, mask, use_mask,
          n0, n1, chunk, kh, dh, pad_top, pad_left, stride_w, dilation_w, sgemm):
    """Images [n0, n1) of ``_row_tap_conv``, ``chunk`` images at a time.

    Shape: x (N, H, W, C) any strides; rows (chunk, Hp, Wo, kw, C) C-contiguous scratch;
    w_t (O, kh*kw*C) C-contiguous (the transposed weight matrix, rows (i, j, c));
    out (N, Ho, Wo, O) C-contiguous; bias (O,); mask out's shape (read when use_mask)."""
    n, ho, wo, o = out.shape
    hp, kw, c = rows.shape[1], rows.shape[3], rows.shape[4]
    kr = kw * c
    k_total = kh * kr
    rows_ptr, w_ptr, out_ptr = rows.ctypes.data, w_t.ctypes.data, out.ctypes.data
    image_rows = hp * wo * kr                     # row-column values per image
    image_out = ho * wo * o
    for c0 in range(n0, n1, chunk):
        c1 = min(n1, c0 + chunk)
        nb = c1 - c0
        _row_columns(x[c0:c1], rows[:nb], pad_top, pad_left, stride_w, dilation_w)
        for b in range(nb):
            dst = out_ptr + (c0 + b) * image_out * 4
            for i in range(kh):
                a = rows_ptr + (b * image_rows + i * dh * wo * kr) * 4
                beta = np.float32(1.0) if i > 0 else np.float32(0.0)
                # out_b (Ho*Wo, O) (+)= rows_b,i (Ho*Wo, kr) @ W_i (kr, O), W_i read transposed.
                sgemm(ROW_MAJOR, NO_TRANS, TRANS, ho * wo, o, kr, np.float32(1.0), a, kr,
                      w_ptr + i * kr * 4, k_total, beta, dst, o)
        block = out[c0:c1].reshape(nb * ho * wo, o)
        if add_bias or clip_low:
            _bias_clip(block, bias, add_bias, clip_low, capped, cap)
        if use_mask:
            _multiply_by_positive(block.reshape(nb * image_out), mask[c0:c1].reshape(nb * image_out))


def _build():
    """Compile ``_part`` (once per process; Numba's disk cache keeps the machine code)."""
    global _row_columns, _bias_clip, _multiply_by_positive
    _row_columns = _jit_conv.row_columns.dispatcher()
    _bias_clip = _jit_epilogue.bias_clip.dispatcher()
    _multiply_by_positive = _jit_epilogue.multiply_by_positive.dispatcher()
    return _jit._numba.njit(nogil=True, cache=True)(_part)


def _kernel():
    global _compiled
    if _compiled is None:
        with _lock:
            if _compiled is None:
                _compiled = _build()
    return _compiled


def usable(xt: np.ndarray, out: np.ndarray, relu_mask: np.ndarray | None) -> bool:
    """Whether ``conv`` can run this call: MKL callable from compiled code here
    (``_jit_blas.available``), float32 C-contiguous operands, sizes within 32-bit ints."""
    return (_jit_blas.available() and _jit_blas.fits(xt, out) and out.flags.c_contiguous
            and (relu_mask is None or (relu_mask.shape == out.shape and relu_mask.dtype == np.float32
                                       and relu_mask.flags.c_contiguous)))


def conv(xt, w_t, kh, dh, pads, stride_w, dilation_w, rows, out, start, stop, chunk, bias, relu_limits,
         relu_mask) -> None:
    """Images [start, stop) of ``_conv_kernels._row_tap_conv`` (after ``usable``).

    Args:
        xt: NHWC input (N, H, W, C); w_t: (O, kh*kw*C) C-contiguous float32, rows (i, j, c);
        kh, dh: kernel height and vertical dilation; pads: (top, bottom, left, right);
        stride_w, dilation_w: horizontal stride and dilation;
        rows: (chunk, Hp, Wo, kw, C) C-contiguous float32 scratch;
        out: NHWC output (N, Ho, Wo, O); chunk: images per row-column copy;
        bias: (O,) or None; relu_limits: ``_epilogue.relu_limits`` of the fused ReLU;
        relu_mask: out-shaped array whose non-positive entries zero the output, or None.
    """
    sgemm, kernel = _jit_blas.sgemm(), _kernel()
    clip_low, cap = relu_limits
    o = out.shape[3]
    bias_vec = np.zeros(o, np.float32) if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
    mask = out[:0] if relu_mask is None else relu_mask
    kernel(xt, rows, w_t, out, bias_vec, bias is not None, clip_low, cap < np.inf, float(cap),
           mask, relu_mask is not None, start, stop, chunk, kh, dh, pads[0], pads[2], stride_w, dilation_w, sgemm)
