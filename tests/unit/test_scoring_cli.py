"""``leadpilot scoring fit`` / ``evaluate``: JSON output, summaries, exit status 2 on bad input, no partial models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from leadpilot.cli.main import app
from tests.unit.test_scoring_tabular import make_leads, write_csv

runner = CliRunner()
FAST = [
    "--trees",
    "80",
    "--n-jobs",
    "1",
    "--params",
    '{"learning_rate": 0.15, "max_depth": 4, "early_stopping_rounds": 20}',
]
METRIC_KEYS = {"auc", "pr_auc", "log_loss", "brier", "lift", "gain", "n", "positives"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training CSV (with a leaky column) and, beside it, a fresh CSV of the same shape to evaluate on."""
    folder = tmp_path_factory.mktemp("scoring_cli")
    train = make_leads(2000, seed=2)
    train["days_to_close"] = np.where(train["outcome"] == "won", 3, 40) + np.arange(len(train)) % 3
    write_csv(train, folder / "train.csv")
    fresh = make_leads(800, seed=9)
    fresh["days_to_close"] = np.where(fresh["outcome"] == "won", 3, 40)
    write_csv(fresh, folder / "fresh.csv")
    return folder


@pytest.fixture(scope="module")
def model_dir(data: Path) -> Path:
    out = data / "model"
    args = ["scoring", "fit", "--csv", str(data / "train.csv"), "--target", "outcome", "--out", str(out)]
    result = runner.invoke(app, [*args, "--drop", "days_to_close", "--id-col", "lead_id", *FAST, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["model_dir"] == str(out)
    assert set(report["metrics"]) >= METRIC_KEYS
    assert set(report["baselines"]) == {"naive_bayes", "logistic_regression"}
    assert report["calibration_plot"] == "calibration.png"
    assert report["warnings"] == []
    return out


def _fit(data: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    args = ["scoring", "fit", "--csv", str(data / "train.csv"), "--target", "outcome", "--out", str(out)]
    result = runner.invoke(app, [*args, *FAST, *extra])
    return result.exit_code, result.stdout, result.stderr


def test_fit_writes_the_model_directory(model_dir: Path) -> None:
    names = {p.name for p in model_dir.iterdir()}
    assert names == {
        "model.json",
        "encoder.json",
        "calibrator.json",
        "baselines.json",
        "meta.json",
        "report.json",
        "calibration.png",
    }
    meta = json.loads((model_dir / "meta.json").read_text())
    assert meta["target"] == "outcome" and meta["positive_label"] == "won"
    assert "days_to_close" not in meta["input_columns"] and "lead_id" not in meta["input_columns"]


def test_fit_summary_and_leakage_warning(data: Path, tmp_path: Path) -> None:
    code, stdout, stderr = _fit(data, tmp_path / "leaky")
    assert code == 0, stderr
    assert stdout == ""
    assert "warning:" in stderr and "'days_to_close' alone predicts outcome" in stderr
    assert "--drop days_to_close" in stderr
    summary = stderr.strip().splitlines()[-1]
    assert summary.startswith("AUC ") and "naive Bayes" in summary and "logistic regression" in summary
    assert f"saved to {tmp_path / 'leaky'}" in " ".join(stderr.split())


def test_evaluate_json(model_dir: Path, data: Path) -> None:
    args = ["scoring", "evaluate", "--model", str(model_dir), "--csv", str(data / "fresh.csv"), "--target", "outcome"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out) >= METRIC_KEYS
    assert set(out["baselines"]) == {"naive_bayes", "logistic_regression"}
    for baseline in out["baselines"].values():
        assert set(baseline) >= METRIC_KEYS
    assert out["n"] == 800
    assert out["positives"] == int((pd.read_csv(data / "fresh.csv")["outcome"] == "won").sum())
    assert set(out["lift"]) == {"1%", "5%", "10%", "20%"} == set(out["gain"])
    assert out["auc"] > 0.75
    text = runner.invoke(app, args)
    assert text.exit_code == 0 and "AUC " in text.stderr and "lift@10%" in text.stderr


@pytest.mark.parametrize(
    ("target", "frame_change", "message"),
    [
        ("outcom", None, "target column 'outcom' is not in the data; did you mean 'outcome'?"),
        ("outcome", "one_class", "has only one value"),
        ("outcome", "three_classes", "has 3 values"),
        ("outcome", "empty", "is empty"),
    ],
)
def test_fit_bad_input_exits_2_and_writes_nothing(
    tmp_path: Path, target: str, frame_change: str | None, message: str
) -> None:
    frame = make_leads(300, seed=1)
    if frame_change == "one_class":
        frame["outcome"] = "lost"
    elif frame_change == "three_classes":
        frame.loc[:50, "outcome"] = "open"
    path = write_csv(frame, tmp_path / "in.csv")
    if frame_change == "empty":
        path.write_text("")
    out = tmp_path / "model"
    result = runner.invoke(app, ["scoring", "fit", "--csv", str(path), "--target", target, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr and message in " ".join(result.stderr.split())
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_evaluate_bad_input_exits_2(model_dir: Path, data: Path, tmp_path: Path) -> None:
    fresh = pd.read_csv(data / "fresh.csv").drop(columns=["job"])
    path = write_csv(fresh, tmp_path / "other.csv")
    base = ["scoring", "evaluate", "--target", "outcome"]
    result = runner.invoke(app, [*base, "--model", str(model_dir), "--csv", str(path)])
    assert result.exit_code == 2
    assert "does not match the model's schema: missing columns 'job'" in " ".join(result.stderr.split())
    result = runner.invoke(app, [*base, "--model", str(tmp_path / "none"), "--csv", str(path)])
    assert result.exit_code == 2 and "no model directory at" in result.stderr
    result = runner.invoke(app, [*base, "--model", str(model_dir), "--csv", str(tmp_path / "missing.csv")])
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_help_explains_the_commands() -> None:
    result = runner.invoke(app, ["scoring", "fit", "--help"])
    assert result.exit_code == 0
    for option in ("--csv", "--target", "--time-col", "--id-col", "--drop", "--positive", "--seed", "--out", "--json"):
        assert option in result.output
    result = runner.invoke(app, ["scoring", "--help"])
    assert result.exit_code == 0 and "fit" in result.output and "evaluate" in result.output
