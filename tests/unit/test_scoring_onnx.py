"""ONNX export of a scoring model's booster: same probabilities as XGBoost, clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leadpilot.models.onnx_export import OnnxModelError, OnnxScorer, export_onnx
from leadpilot.models.pipeline import ScoringModel, fit_model


def _table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n, 12)), columns=[f"x{i}" for i in range(12)])
    frame = frame.mask(rng.random(frame.shape) < 0.15)  # missing values the trees must route
    frame["budget"] = rng.lognormal(12, 1, n)
    frame["region"] = rng.choice(["Beijing", "Shanghai", "Chengdu", None], n)
    logit = frame.x0.fillna(-1) + 0.7 * frame.x1.fillna(0) + (frame.region == "Beijing") - 0.3
    frame["converted"] = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    return frame


@pytest.fixture(scope="module")
def model() -> ScoringModel:
    return fit_model(_table(2_000, 0), target="converted", params={"num_boost_round": 30}).model


def test_onnx_probabilities_equal_xgboost(model: ScoringModel, tmp_path: Path) -> None:
    path = export_onnx(model, tmp_path / "model.onnx")
    scorer = OnnxScorer.for_model(model, path, threads=1)
    matrix = model.transform(_table(1_000, 1).drop(columns=["converted"]))
    assert np.isnan(matrix).any()
    matrix[::7, :3] = np.nan  # whole rows of missing values in the strongest columns too
    want = model.predict_raw(matrix)
    got = scorer.predict_raw(matrix)
    assert got.shape == (1_000,)
    assert np.abs(got - want).max() < 1e-5
    assert np.abs(scorer.predict_proba(matrix) - model.calibrate(want)).max() < 1e-4
    assert scorer.predict_raw(matrix[:0]).shape == (0,)
    # A saved and reloaded model exports the same graph's answers.
    model.save(tmp_path / "dir")
    reloaded = ScoringModel.load(tmp_path / "dir")
    again = OnnxScorer(export_onnx(reloaded, tmp_path / "again.onnx"), threads=2)
    assert np.abs(again.predict_raw(matrix) - want).max() < 1e-5


def test_missing_corrupt_or_foreign_onnx_files_are_clear_errors(model: ScoringModel, tmp_path: Path) -> None:
    with pytest.raises(OnnxModelError, match="no ONNX model at"):
        OnnxScorer(tmp_path / "absent.onnx")
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07this is not a protobuf graph")
    with pytest.raises(OnnxModelError, match="not a readable ONNX model"):
        OnnxScorer(bad)
    path = export_onnx(model, tmp_path / "model.onnx")
    with pytest.raises(OnnxModelError, match=r"takes \d+ features but the model has 3"):
        OnnxScorer(path, expected_features=3)
    with pytest.raises(OnnxModelError, match="another feature schema"):
        OnnxScorer(path, expected_fingerprint="0123456789abcdef")
    scorer = OnnxScorer(path)
    with pytest.raises(ValueError, match="columns"):
        scorer.predict_raw(np.zeros((2, len(model.feature_names) + 1), dtype=np.float32))
    with pytest.raises(ValueError, match="calibrator"):
        scorer.predict_proba(np.zeros((2, len(model.feature_names)), dtype=np.float32))
