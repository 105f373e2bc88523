"""`cnnkit info`, `cnnkit --version`, `--threads` and `cnnkit.set_num_threads`: what the
installation runs on and why, and the thread count as a user setting."""

import pytest

import cnnkit
from cnnkit.cli import _COMPUTING_COMMANDS, build_parser, main
from cnnkit.nn import _gemm, _jit, _parallel


def _lines(text):
    return dict(line.split(": ", 1) for line in text.strip().splitlines()[1:])


def test_info_says_what_runs_and_why(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"cnnkit {cnnkit.__version__} (Python ")
    rows = _lines(out)
    gemm, gemm_why = _gemm.backend()
    assert rows["GEMM backend"] == ("MKL" if gemm == "mkl" else "NumPy's BLAS") + f" ({gemm_why})"
    on, jit_why = _jit.status()
    assert rows["kernels"].startswith("compiled (Numba)" if on else "NumPy only") and jit_why in rows["kernels"]
    threads, threads_why = _parallel.threads_status()
    assert rows["threads"].startswith(f"{threads} ({threads_why}")
    assert "CPU" in rows


def test_version_prints_the_same_report(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"cnnkit {cnnkit.__version__}") and "GEMM backend: " in out


def test_info_reports_the_environment_settings(capsys, monkeypatch):
    monkeypatch.setenv("CNNKIT_NUM_THREADS", "3")
    monkeypatch.setenv("CNNKIT_JIT", "0")
    monkeypatch.setenv("CNNKIT_BLAS", "numpy")
    _jit.set_enabled(None)
    _gemm.set_backend(None)
    assert main(["info"]) == 0
    rows = _lines(capsys.readouterr().out)
    assert rows["threads"].startswith("3 (CNNKIT_NUM_THREADS")
    assert rows["kernels"] == "NumPy only (CNNKIT_JIT=0)"
    assert rows["GEMM backend"] == "NumPy's BLAS (CNNKIT_BLAS=numpy)"


def test_every_computing_command_takes_threads():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in _COMPUTING_COMMANDS:
        assert "--threads" in sub.choices[name].format_help(), name


def test_threads_option_sets_the_thread_count(tmp_path, capsys):
    # evaluate of a missing file: a user error after the option took effect.
    assert main(["evaluate", str(tmp_path / "missing.safetensors"), "--threads", "1"]) == 2
    assert cnnkit.get_num_threads() == 1
    assert "cnnkit: error: " in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_threads_option_rejects_what_is_not_a_positive_integer(value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "x.safetensors", "--threads", value])
    assert exc.value.code == 2
    assert f"argument --threads: expected a positive integer, got {value!r}" in capsys.readouterr().err


def test_set_num_threads_is_public_and_validated():
    cnnkit.set_num_threads(1)
    assert cnnkit.get_num_threads() == 1
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="set_num_threads: expected a positive int"):
            cnnkit.set_num_threads(bad)


def test_a_bad_thread_variable_names_itself(monkeypatch, capsys):
    monkeypatch.setenv("CNNKIT_NUM_THREADS", "many")
    assert main(["info"]) == 2
    assert capsys.readouterr().err.strip() == (
        "cnnkit: error: CNNKIT_NUM_THREADS: expected a positive integer, found 'many'")
