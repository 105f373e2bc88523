"""Compiled output pass of the convolution kernels, the optional Numba path of ``_epilogue``.

``finish_output`` adds the bias and clips each output chunk: in NumPy two or three calls
(the add, ``np.maximum`` or ``np.clip``), each a pass over the chunk and a hand-over of the
GIL between the pool's threads. Here it is one sweep with the same float32 arithmetic:
the same bits, NaN kept, and -0.0 cleared by the ReLU as ``np.maximum(x, 0)`` clears it
(and kept by the capped one, as ``np.clip`` keeps it). ``mask_by_positive`` (a folded ReLU
backward) is likewise one sweep instead of a comparison into a mask and a multiply.
See ``_jit`` for when these run.
"""

from __future__ import annotations

from ._jit import kernel


@kernel
def bias_clip(out, bias, add_bias, clip_low, capped, cap):
    """In place: ``out += bias`` (when ``add_bias``), then values <= 0 set to 0 (when
    ``clip_low``; with ``capped`` -0.0 is kept, as ``np.clip`` keeps it) and values above
    ``cap`` set to ``cap`` (when ``capped``).

    Shape: out (M, O) C-contiguous; bias (O,) (ignored unless ``add_bias``)."""
    m, o = out.shape
    zero = out.dtype.type(0)
    top = out.dtype.type(cap)
    for i in range(m):
        row = out[i]
        for k in range(o):
            v = row[k]
            if add_bias:
                v += bias[k]
            if clip_low:
                if capped:
                    if v < zero:
                        v = zero
                elif v <= zero:
                    v = zero
            if capped and v > top:
                v = top
            row[k] = v


@kernel
def multiply_by_positive(grad, ref):
    """In place: ``grad *= (ref > 0)``, as NumPy multiplies by the mask: by 1 or by 0, so
    that a negative gradient becomes -0.0 and NaN or inf stays NaN where the mask is 0.

    Shape: grad and ref (M,), C-contiguous."""
    one, zero = grad.dtype.type(1), grad.dtype.type(0)
    for i in range(grad.shape[0]):
        grad[i] *= one if ref[i] > 0 else zero
