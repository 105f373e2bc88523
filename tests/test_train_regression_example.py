"""examples/regression.py (the MSELoss example) runs and learns something: its errors beat
predicting the training mean."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "regression.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("regression_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_targets_are_centre_of_mass_and_brightness():
    ex = _load_example()
    img = np.zeros((1, 1, 5, 7), dtype=np.float32)
    img[0, 0, 1, 2] = 1.0
    img[0, 0, 3, 6] = 1.0
    np.testing.assert_allclose(ex.targets_of(img)[0], [2.0, 4.0, 2.0 / 35], rtol=1e-5)


def test_regression_example_learns(capsys):
    ex = _load_example()
    result = ex.main(["--synthetic", "--n-train", "512", "--n-test", "128", "--epochs", "3"])
    out = capsys.readouterr().out
    assert "val_loss" in out and "acc" not in out  # regression: losses only
    assert "MAE" in out
    assert np.all(result["mae"][:2] < 0.7 * result["baseline_mae"][:2])
