"""Tolerances for comparing two float32 computations of the same sums.

Two float32 evaluations of one sum of products agree only up to rounding, unless both run the
same code in the same order: another BLAS, another CPU's kernels, another blocking of the
GEMM, a folded BatchNorm or a thread split adds the terms in another order. The difference
is not relative to the value (a sum near zero after cancellation keeps the rounding of its
large terms), so an ``rtol`` alone, or a fixed ``atol`` such as 1e-6, holds on one machine
and fails on another.

Estimate: K terms of typical size t, added in any order, round at each add to within
eps/2 of partial sums about t*sqrt(K) in size; the K roundings have random signs, so the
sum's error is about eps*t*K/2 at worst-typical. The sums themselves are about t*sqrt(K)
(terms of random sign), so t*K is about sqrt(K) times the reference's RMS. Hence
``atol = margin * eps32 * sqrt(K) * rms(reference)``, the margin covering the tails and both
sides' errors. A stack of layers passes each layer's error on: ``n_terms`` is then the sum
of the layers' fan-ins (errors of the layers add up in the root-sum-of-squares sense).
"""

from __future__ import annotations

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)


def float32_atol(reference, n_terms: int, margin: float = 8.0) -> float:
    """Absolute tolerance between two float32 results of sums of ``n_terms`` products."""
    ref = np.asarray(reference, dtype=np.float64)
    rms = float(np.sqrt(np.mean(np.square(ref)))) if ref.size else 0.0
    return margin * EPS32 * float(np.sqrt(n_terms)) * rms


def assert_float32_close(got, reference, n_terms: int, margin: float = 8.0) -> None:
    """``got`` equals ``reference`` up to the float32 rounding of sums of ``n_terms`` products."""
    np.testing.assert_allclose(np.asarray(got), np.asarray(reference), rtol=0,
                               atol=float32_atol(reference, n_terms, margin))
