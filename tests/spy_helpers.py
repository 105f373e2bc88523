"""Count the calls of module-level functions (to show that a code path really ran)."""


def count_calls(monkeypatch, module, *names) -> dict:
    """Wrap ``module.<name>`` for each name; returns a dict name -> calls so far (a name
    appears once it has been called)."""
    calls = {}
    for name in names:
        real = getattr(module, name)

        def counted(*args, _name=name, _real=real, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    return calls


def use_mkl_products(monkeypatch) -> None:
    """MKL as the GEMM backend, every product routed to it as inside the thread pool (no size
    threshold, BLAS taken as single-threaded); skips where MKL cannot load (a dependency on
    x86-64 only). The backend is put back after the test by conftest."""
    import pytest
    from cnnkit.nn import _gemm, _parallel
    try:
        _gemm.set_backend("mkl")
    except RuntimeError as e:
        _gemm.set_backend(None)
        pytest.skip(f"mkl not installed ({e})")
    monkeypatch.setattr(_gemm, "MIN_MACS", 0)
    monkeypatch.setattr(_parallel, "blas_single_threaded", lambda: True)


def route_products_to_mkl(monkeypatch) -> None:
    """``use_mkl_products``, and the few-channel kernels off so that the general ones run."""
    from cnnkit.nn import _conv_kernels, _small_channel_conv
    use_mkl_products(monkeypatch)
    monkeypatch.setattr(_conv_kernels, "SMALL_C", 0)
    monkeypatch.setattr(_small_channel_conv, "BLOCK_N", 0)         # no row blocks for few outputs
